"""The stand-in's `modal.Image`: builder methods return new images that record their
recipe; `build()` checks that the local files it would upload exist (as the real build
does) and records the recipe under `$ROOT/images/`. Nothing is run."""

import hashlib
import json
import os
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
        return Image([("from_dockerfile", [str(path)], {"add_python": repr(add_python)})])

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

    @property
    def object_id(self):
        digest = hashlib.sha256(json.dumps(self._steps, sort_keys=True).encode()).hexdigest()
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
        _local.write_json(os.path.join(root, "images", f"{self.object_id}.json"),
                          {"image_id": self.object_id, "steps": self._steps, "built_at": time.time(),
                           "app_id": getattr(app, "app_id", None)})
        return self
