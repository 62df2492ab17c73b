"""The stand-in's `modal.Image`: builder methods return new images that record their
recipe; `build()` checks that the local files it would upload exist (as the real build
does) and records the recipe under `$ROOT/images/<image id>.json`, and the build itself,
one JSON line each, in `$ROOT/images/builds.jsonl`. Nothing is run.

`from_dockerfile` is read as the real SDK reads it when the image is built: the
Dockerfile's lines, and the files its `COPY` lines name, taken from `context_dir` (which
must hold them, and which they must not leave). Both go into the recipe, so the image id
changes with the Dockerfile and with the agent's bytes, as Modal's cache does."""

import hashlib
import json
import os
import re
import shlex
import time

from . import _local


class Image:
    def __init__(self, steps):
        self._steps = steps

    def _then(self, kind, *args, **kwargs):
        return Image(self._steps + [(kind, [str(a) for a in args], {k: repr(v) for k, v in kwargs.items()})])

    @staticmethod
    def from_registry(tag, secret=None, *, setup_dockerfile_commands=[], force_build=False, add_python=None, **kwargs):
        return Image([("from_registry", [tag], {"add_python": repr(add_python), "force_build": repr(force_build)})])

    @staticmethod
    def from_dockerfile(path, *, force_build=False, context_dir=None, ignore=(), build_args={}, registry_secret=None,
                        secrets=None, env=None, gpu=None, add_python=None):
        context = os.path.abspath(str(context_dir)) if context_dir is not None else os.getcwd()
        return Image([("from_dockerfile", [os.path.abspath(str(path))],
                       {"add_python": repr(add_python), "force_build": repr(force_build),
                        "context_dir": context, "build_args": repr(dict(sorted(build_args.items())))})])

    @staticmethod
    def debian_slim(python_version=None, force_build=False):
        return Image([("debian_slim", [], {"python_version": repr(python_version)})])

    def apt_install(self, *packages, force_build=False, env=None, secrets=None, gpu=None):
        return self._then("apt_install", *packages)

    def pip_install(self, *packages, **kwargs):
        return self._then("pip_install", *packages)

    def run_commands(self, *commands, env=None, secrets=None, volumes=None, gpu=None, force_build=False):
        return self._then("run_commands", *commands)

    def dockerfile_commands(self, *commands, **kwargs):
        return self._then("dockerfile_commands", *commands)

    def add_local_file(self, local_path, remote_path, *, copy=False):
        return self._then("add_local_file", local_path, remote_path, copy=copy)

    def add_local_dir(self, local_path, remote_path, *, copy=False, ignore=[]):
        return self._then("add_local_dir", local_path, remote_path, copy=copy)

    def env(self, vars):
        return self._then("env", *sorted(vars))

    def workdir(self, path):
        return self._then("workdir", path)

    def entrypoint(self, entrypoint_commands):
        return self._then("entrypoint", *entrypoint_commands)

    def cmd(self, cmd):
        return self._then("cmd", *cmd)

    def _resolved(self):
        """The recipe with what each `from_dockerfile` step reads: its lines and the
        sha256 of each file its COPY lines take from the context."""
        steps = []
        for kind, args, kwargs in self._steps:
            step = [kind, args, kwargs]
            if kind == "from_dockerfile":
                lines, copied = _read_dockerfile(args[0], kwargs["context_dir"])
                step.append({"dockerfile": lines, "context": copied})
            steps.append(step)
        return steps

    @property
    def object_id(self):
        """Named by content, as Modal's cache is: the recipe with what the Dockerfile
        steps read, but not where the build context was on this machine, nor whether the
        build was forced."""
        try:
            recipe = self._resolved()
        except (OSError, ValueError):
            recipe = self._steps
        recipe = [[kind, args, {k: v for k, v in kwargs.items() if k not in ("context_dir", "force_build")},
                   *rest] for kind, args, kwargs, *rest in recipe]
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        return "im-" + digest[:22]

    def check_local_files(self):
        """Raises what the real build raises for a local file that is not there."""
        for kind, args, _ in self._steps:
            if kind in ("add_local_file", "add_local_dir", "from_dockerfile"):
                local = os.path.abspath(args[0])
                if not os.path.exists(local):
                    raise FileNotFoundError(f"local file {local} does not exist")

    def build(self, app=None):
        root = _local.client()
        self.check_local_files()
        recipe = self._resolved()
        image_id = self.object_id
        record = os.path.join(root, "images", f"{image_id}.json")
        forced = any(kwargs.get("force_build") == "True" for _, _, kwargs in self._steps)
        # What Modal's builder would do: nothing for a recipe it has, unless forced.
        cached = os.path.exists(record) and not forced
        _local.write_json(record, {"image_id": image_id, "steps": recipe, "built_at": time.time(),
                                   "app_id": getattr(app, "app_id", None)})
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        with open(os.path.join(root, "images", "builds.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"image_id": image_id, "force_build": forced, "cached": cached,
                                "at": time.time()}) + "\n")
        return self


_COPY = re.compile(r"^\s*COPY\s+(.+)$", re.IGNORECASE)


def _read_dockerfile(path, context_dir):
    """(lines, {source: sha256}) of a Dockerfile and the context files its COPY lines
    name, joined over line continuations as the SDK's `extract_copy_command_patterns`
    does; `--from=` copies need no context. A source missing from the context, or
    outside it, raises as the real build fails."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    copied, command = {}, ""
    context = os.path.realpath(context_dir)
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        command = (command + " " if command else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        found, command = _COPY.match(command), ""
        if not found:
            continue
        words = shlex.split(found.group(1))
        if any(w.startswith("--from=") for w in words):
            continue
        parts = [w for w in words if not w.startswith("--")]
        for source in parts[:-1]:
            local = os.path.realpath(os.path.join(context, source.lstrip("/")))
            if os.path.commonpath([local, context]) != context:
                raise ValueError(f"COPY source {source!r} is outside the build context directory ({context_dir!r}).")
            if not os.path.isfile(local):
                raise FileNotFoundError(f"COPY source {source!r} does not exist in the build context {context_dir}")
            with open(local, "rb") as f:
                copied[source] = hashlib.sha256(f.read()).hexdigest()
    return lines, copied
