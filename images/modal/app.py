"""The Modal app of Parhelia: the session image and two maintenance functions.

The session image is `images/Dockerfile`, built by Modal's image builder
(`modal.Image.from_dockerfile`): there is no second recipe here. Three things use this file:

- The bridge (`parhelia_bridge.py`, beside this file) imports `session_image()` to build
  the image of every session sandbox. The coordinator ships this file, the bridge and the
  Dockerfile together (all three beside each other; in the repository the Dockerfile is
  one directory up, `images/Dockerfile`).
- `modal run images/modal/app.py::health_check` and
  `modal run images/modal/app.py::init_volume_structure`, by hand. Both read
  `PARHELIA_AGENT_BIN` (the local `parhelia-agent` binary to bake in, required to build the
  image; build it with `cargo build --release -p parhelia-agent`), `PARHELIA_AGENT_VERSION`
  (its version; read from the binary's `--version` when unset) and optionally
  `PARHELIA_CLAUDE_CODE_VERSION`, `PARHELIA_MODAL_VOLUME_NAME` (default `parhelia-data`) and
  `PARHELIA_MODAL_SECRET_NAME` (default `anthropic-api-key`).
- The coordinator, which runs the same checks through the bridge's `sandbox.run` with the
  argv these functions return (so the checks need no Python in the sandbox):

  `HEALTH_CHECK_ARGV(volume_mount, agent_path=AGENT_PATH, claude_path="claude")` prints one
  JSON line and exits 0:
  `{"status": "ok" | "degraded", "volume_mounted": bool, "claude_installed": bool,
  "anthropic_key_set": bool, "claude_version": str | null, "agent_version": str | null}`.
  `status` is "ok" when the three booleans are true and the agent answered `--version`.
  `volume_mounted` means the path is a mount point (or, under the test stand-in, a
  symlink to a directory).

  `INIT_VOLUME_ARGV(volume_mount)` creates `sessions/`, `config/` and `images/` on the
  volume, each with a `README` (kept if present; the same files as the coordinator's
  `parhelia modal init-volume`, see `VOLUME_DIRS`), then prints
  `{"status": "ok", "volume": "<mount>", "dirs": ["sessions", "config", "images"]}`.

Importing this module has no side effects beyond building lazy SDK objects (no network;
for `modal run`, the agent named by PARHELIA_AGENT_BIN is staged into a build context and
asked its version), so the bridge can load it before credentials are known.
"""

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading

import modal

APP_NAME = "parhelia"
AGENT_PATH = "/usr/local/bin/parhelia-agent"
VOLUME_MOUNT = "/vol"
DEFAULT_CLAUDE_CODE_VERSION = "2.1.330"
# Modal Functions (the two below) need a Python in the image; sandboxes do not use it.
# Fixed rather than the local version, so the bridge and `modal run` share one cached image.
IMAGE_PYTHON = "3.11"
# The file the Dockerfile's `COPY` takes the agent from, in the build context.
CONTEXT_AGENT = "parhelia-agent"
HERE = os.path.dirname(os.path.abspath(__file__))

# Every SDK call this file makes: (callable under `modal.`, bound method?, positional
# arguments (-1: any number, through *args), keywords). `test_sdk_signatures.py` binds
# each against the pinned SDK's real signatures.
SDK_CALLS = (
    ("Image.from_dockerfile", False, 1, ("context_dir", "build_args", "ignore", "add_python", "force_build")),
    ("App", False, 1, ()),
    ("App.function", True, 0, ("image", "volumes", "secrets", "timeout")),
    ("Volume.from_name", False, 1, ("create_if_missing", "version")),
    ("Volume.commit", True, 0, ()),
    ("Secret.from_name", False, 1, ("required_keys",)),
)

_VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]*$")
_TAG_LABEL = re.compile(r'^LABEL\s+parhelia\.image\.tag="([^"]*)"\s*$')
_ARG_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def dockerfile_path() -> str:
    """The session image's Dockerfile: beside this file as the coordinator ships it, else
    the repository's `images/Dockerfile`."""
    beside = os.path.join(HERE, "Dockerfile")
    return beside if os.path.isfile(beside) else os.path.join(os.path.dirname(HERE), "Dockerfile")


def build_args(claude_code_version: str, agent_version: str) -> dict:
    """The Dockerfile's build arguments for these versions (each checked: they reach a
    shell in the build)."""
    for what, version in (("Claude Code", claude_code_version), ("agent", agent_version)):
        if not _VERSION_PATTERN.match(version or ""):
            raise ValueError(f"not a {what} version: {version!r}")
    return {"CLAUDE_CODE_VERSION": claude_code_version, "PARHELIA_AGENT_VERSION": agent_version}


def image_tag(args: dict, dockerfile: str = None) -> str:
    """The image's tag as the Dockerfile's `LABEL parhelia.image.tag` spells it, with the
    build arguments put in (`cc2.1.330-agent0.1.0`)."""
    with open(dockerfile or dockerfile_path(), encoding="utf-8") as f:
        for line in f:
            found = _TAG_LABEL.match(line.strip())
            if found:
                return _ARG_REF.sub(lambda m: args.get(m.group(1), ""), found.group(1))
    raise ValueError("the Dockerfile has no LABEL parhelia.image.tag")


_contexts = {}
_contexts_lock = threading.Lock()


def _remove_contexts():
    for (*_, under), path in _contexts.items():
        if under is None:
            shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_contexts)


def build_context(agent_bin: str, under: str = None) -> str:
    """A directory holding only the agent, as `CONTEXT_AGENT`: the Dockerfile's build
    context (Modal uploads what its COPY names from there; a symlink out of the context
    would be dropped, so the file is hard-linked, or copied across filesystems). One per
    version of the binary (inode, size, mtime). `under` (the bridge's own directory):
    there, and the contexts of other versions are removed, so an old binary is not kept
    alive by its link; without it (`modal run`), a temporary directory removed when this
    process exits. A missing `agent_bin` gives its own directory, so the build fails
    naming it."""
    try:
        stat = os.stat(agent_bin)
    except OSError:
        return os.path.dirname(os.path.abspath(agent_bin))
    key = (os.path.abspath(agent_bin), stat.st_ino, stat.st_size, stat.st_mtime_ns, under)
    with _contexts_lock:
        if key in _contexts and os.path.isfile(os.path.join(_contexts[key], CONTEXT_AGENT)):
            return _contexts[key]
        if under is None:
            context = tempfile.mkdtemp(prefix="parhelia-image-")
        else:
            name = f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}"
            os.makedirs(under, exist_ok=True)
            for other in os.listdir(under):
                if other != name:
                    shutil.rmtree(os.path.join(under, other), ignore_errors=True)
            context = os.path.join(under, name)
            shutil.rmtree(context, ignore_errors=True)
            os.makedirs(context)
        target = os.path.join(context, CONTEXT_AGENT)
        try:
            os.link(agent_bin, target)
        except OSError:
            shutil.copy2(agent_bin, target)
        _contexts[key] = context
        return context


def session_image(agent_bin: str, claude_code_version: str, agent_version: str, *,
                  force_build: bool = False, context_root: str = None) -> "modal.Image":
    """The session image: `images/Dockerfile` (Debian bookworm-slim with Claude Code
    pinned, tmux, git, the user `parhelia`, the `/vol` mount point and the agent at
    /usr/local/bin/parhelia-agent), plus the Python Modal Functions need. Lazy: Modal
    reads the Dockerfile and uploads the agent when the image is built. `force_build`
    rebuilds every layer; `context_root` is where the build context is made (see
    `build_context`)."""
    return modal.Image.from_dockerfile(
        dockerfile_path(),
        context_dir=build_context(agent_bin, context_root),
        build_args=build_args(claude_code_version, agent_version),
        # The context holds only the agent: no .dockerignore to look for.
        ignore=[],
        add_python=IMAGE_PYTHON,
        force_build=force_build,
    )


# Shared by both scripts: strips what cannot go inside a JSON string.
_SHELL_HELPERS = r"""
clean() { head -n 1 | tr -d '\000-\037"\\' | cut -c 1-200; }
json_str() { if [ -n "$1" ]; then printf '"%s"' "$1"; else printf 'null'; fi; }
"""

_HEALTH_CHECK_SCRIPT = _SHELL_HELPERS + r"""
vol="$1"; agent="$2"; claude="$3"
if awk -v p="$vol" '$2 == p { found = 1 } END { exit !found }' /proc/mounts 2>/dev/null \
   || { [ -L "$vol" ] && [ -d "$vol/" ]; }; then
  volume_mounted=true
else
  volume_mounted=false
fi
if command -v "$claude" >/dev/null 2>&1; then
  claude_installed=true
  claude_version=$("$claude" --version 2>/dev/null | clean)
else
  claude_installed=false
  claude_version=
fi
if [ -x "$agent" ] || command -v "$agent" >/dev/null 2>&1; then
  agent_version=$("$agent" --version 2>/dev/null | clean)
else
  agent_version=
fi
if [ -n "${ANTHROPIC_API_KEY:-}" ]; then anthropic_key_set=true; else anthropic_key_set=false; fi
status=degraded
if $volume_mounted && $claude_installed && $anthropic_key_set && [ -n "$agent_version" ]; then
  status=ok
fi
printf '{"status":"%s","volume_mounted":%s,"claude_installed":%s,"anthropic_key_set":%s,"claude_version":%s,"agent_version":%s}\n' \
  "$status" "$volume_mounted" "$claude_installed" "$anthropic_key_set" \
  "$(json_str "$claude_version")" "$(json_str "$agent_version")"
"""

# The same layout and texts as the coordinator's `modal init-volume`
# (coordinator/src/modal_ops.rs, VOLUME_DIRS): one README per directory.
VOLUME_DIRS = (
    ("sessions", "One directory per Parhelia session: journal/, checkpoints/, containers/.\n"),
    ("config", "Claude Code configuration uploaded by `parhelia config sync` (never credentials).\n"),
    ("images", "Reserved for image build artefacts.\n"),
)

_INIT_VOLUME_SCRIPT = _SHELL_HELPERS + r"""
set -eu
vol="$1"; shift
# The remaining arguments are pairs: a directory, then its README's text.
while [ "$#" -ge 2 ]; do
  mkdir -p "$vol/$1"
  if [ ! -e "$vol/$1/README" ]; then
    printf '%s' "$2" > "$vol/$1/README.tmp"
    mv "$vol/$1/README.tmp" "$vol/$1/README"
  fi
  shift 2
done
printf '{"status":"ok","volume":"%s","dirs":["sessions","config","images"]}\n' "$(printf '%s' "$vol" | clean)"
"""


def HEALTH_CHECK_ARGV(volume_mount: str, agent_path: str = AGENT_PATH, claude_path: str = "claude") -> list:
    """The argv of the health check (see the module's docs for its output)."""
    return ["sh", "-c", _HEALTH_CHECK_SCRIPT, "parhelia-health-check", volume_mount, agent_path, claude_path]


def INIT_VOLUME_ARGV(volume_mount: str) -> list:
    """The argv that lays out a fresh volume (see the module's docs for its output)."""
    pairs = [part for directory, text in VOLUME_DIRS for part in (directory, text)]
    return ["sh", "-c", _INIT_VOLUME_SCRIPT, "parhelia-init-volume", volume_mount, *pairs]


# What `modal run` uses. A missing PARHELIA_AGENT_BIN fails the image build naming
# "/PARHELIA_AGENT_BIN-is-not-set".
# The bridge loads this file for its functions, not to `modal run` it: it sets
# `_LOADED_BY_BRIDGE` first, and then PARHELIA_AGENT_BIN (which the coordinator's own
# environment may hold, for local sessions) is not read, nothing is staged and no agent
# is run at import.
_AGENT_BIN = (None if globals().get("_LOADED_BY_BRIDGE") else os.environ.get("PARHELIA_AGENT_BIN")) \
    or "/PARHELIA_AGENT_BIN-is-not-set/parhelia-agent"
_CLAUDE_CODE_VERSION = os.environ.get("PARHELIA_CLAUDE_CODE_VERSION") or DEFAULT_CLAUDE_CODE_VERSION
_VOLUME_NAME = os.environ.get("PARHELIA_MODAL_VOLUME_NAME") or "parhelia-data"
_SECRET_NAME = os.environ.get("PARHELIA_MODAL_SECRET_NAME") or "anthropic-api-key"


def _agent_version(agent_bin: str) -> str:
    """PARHELIA_AGENT_VERSION, else what the local agent answers to `--version`
    ("parhelia-agent 0.1.0"); "0" when there is no agent here (inside a Modal container,
    where the image is already built)."""
    given = os.environ.get("PARHELIA_AGENT_VERSION")
    if given:
        return given
    if not os.path.isfile(agent_bin):
        return "0"
    out = subprocess.run([agent_bin, "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.strip().rpartition(" ")[2]


_IMAGE = session_image(_AGENT_BIN, _CLAUDE_CODE_VERSION, _agent_version(_AGENT_BIN))
app = modal.App(APP_NAME)
_volume = modal.Volume.from_name(_VOLUME_NAME, create_if_missing=True, version=2)


def _run_json(argv: list) -> dict:
    import json
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[3]} exited with {done.returncode}: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    print(json.dumps(report, indent=2))
    return report


@app.function(
    image=_IMAGE,
    volumes={VOLUME_MOUNT: _volume},
    secrets=[modal.Secret.from_name(_SECRET_NAME, required_keys=["ANTHROPIC_API_KEY"])],
    timeout=300,
)
def health_check() -> dict:
    """Checks the volume, Claude Code, the Anthropic key and the agent in the session image."""
    return _run_json(HEALTH_CHECK_ARGV(VOLUME_MOUNT))


@app.function(
    image=_IMAGE,
    volumes={VOLUME_MOUNT: _volume},
    timeout=300,
)
def init_volume_structure() -> dict:
    """Creates `sessions/`, `config/` and `images/` and a README on the volume."""
    report = _run_json(INIT_VOLUME_ARGV(VOLUME_MOUNT))
    _volume.commit()
    return report
