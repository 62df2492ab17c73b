"""The Modal app of Parhelia: the session image recipe and two maintenance functions.

This file is the Modal counterpart of `images/Dockerfile` (same packages, same user, same
agent path). Three things use it:

- The bridge (`parhelia_bridge.py`, beside this file) imports `session_image()` to build
  the image of every session sandbox. The coordinator ships this file with the bridge.
- `modal run images/modal/app.py::health_check` and
  `modal run images/modal/app.py::init_volume_structure`, by hand. Both read
  `PARHELIA_AGENT_BIN` (the local `parhelia-agent` binary to bake in, required to build the
  image) and optionally `PARHELIA_CLAUDE_CODE_VERSION`, `PARHELIA_MODAL_VOLUME_NAME`
  (default `parhelia-data`) and `PARHELIA_MODAL_SECRET_NAME` (default `anthropic-api-key`).
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

Importing this module has no side effects beyond building lazy SDK objects: no network, no
file reads, so the bridge can load it before credentials are known.
"""

import os
import re

import modal

APP_NAME = "parhelia"
AGENT_PATH = "/usr/local/bin/parhelia-agent"
VOLUME_MOUNT = "/vol"
HOME_DIR = "/home/parhelia"
DEFAULT_CLAUDE_CODE_VERSION = "2.1.330"
BASE_IMAGE = "debian:bookworm-slim"
# Modal Functions (the two below) need a Python in the image; sandboxes do not use it.
# Fixed rather than the local version, so the bridge and `modal run` share one cached image.
IMAGE_PYTHON = "3.11"
APT_PACKAGES = ("ca-certificates", "git", "tmux", "nodejs", "npm", "procps")

# Every SDK call this file makes: (callable under `modal.`, bound method?, positional
# arguments (-1: any number, through *args), keywords). `test_sdk_signatures.py` binds
# each against the pinned SDK's real signatures.
SDK_CALLS = (
    ("Image.from_registry", False, 1, ("add_python", "force_build")),
    ("Image.apt_install", True, -1, ()),
    ("Image.run_commands", True, -1, ()),
    ("Image.add_local_file", True, 2, ("copy",)),
    ("App", False, 1, ()),
    ("App.function", True, 0, ("image", "volumes", "secrets", "timeout")),
    ("Volume.from_name", False, 1, ("create_if_missing", "version")),
    ("Volume.commit", True, 0, ()),
    ("Secret.from_name", False, 1, ()),
)

_VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]*$")


def session_image(agent_bin: str, claude_code_version: str, *, force_build: bool = False) -> "modal.Image":
    """The session image: Debian bookworm-slim with Claude Code (pinned), tmux, git, a
    non-root user `parhelia` (uid 1000, home /home/parhelia), the `/vol` mount point and
    the agent binary at /usr/local/bin/parhelia-agent. Lazy: nothing is read or built
    until the image is used. `force_build` rebuilds every layer."""
    if not _VERSION_PATTERN.match(claude_code_version or ""):
        raise ValueError(f"not a Claude Code version: {claude_code_version!r}")
    return (
        modal.Image.from_registry(BASE_IMAGE, add_python=IMAGE_PYTHON, force_build=force_build)
        .apt_install(*APT_PACKAGES)
        .run_commands(
            f"npm install -g @anthropic-ai/claude-code@{claude_code_version} && npm cache clean --force",
            f"useradd --create-home --home-dir {HOME_DIR} --uid 1000 --shell /bin/bash parhelia",
            f"mkdir -p {VOLUME_MOUNT} && chown parhelia:parhelia {HOME_DIR}",
        )
        .add_local_file(agent_bin, AGENT_PATH, copy=True)
        .run_commands(f"chmod 755 {AGENT_PATH}")
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


# What `modal run` uses. A missing PARHELIA_AGENT_BIN fails the image build with
# "local file /PARHELIA_AGENT_BIN-is-not-set/parhelia-agent does not exist".
_AGENT_BIN = os.environ.get("PARHELIA_AGENT_BIN") or "/PARHELIA_AGENT_BIN-is-not-set/parhelia-agent"
_CLAUDE_CODE_VERSION = os.environ.get("PARHELIA_CLAUDE_CODE_VERSION") or DEFAULT_CLAUDE_CODE_VERSION
_VOLUME_NAME = os.environ.get("PARHELIA_MODAL_VOLUME_NAME") or "parhelia-data"
_SECRET_NAME = os.environ.get("PARHELIA_MODAL_SECRET_NAME") or "anthropic-api-key"

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
    image=session_image(_AGENT_BIN, _CLAUDE_CODE_VERSION),
    volumes={VOLUME_MOUNT: _volume},
    secrets=[modal.Secret.from_name(_SECRET_NAME)],
    timeout=300,
)
def health_check() -> dict:
    """Checks the volume, Claude Code, the Anthropic key and the agent in the session image."""
    return _run_json(HEALTH_CHECK_ARGV(VOLUME_MOUNT))


@app.function(
    image=session_image(_AGENT_BIN, _CLAUDE_CODE_VERSION),
    volumes={VOLUME_MOUNT: _volume},
    timeout=300,
)
def init_volume_structure() -> dict:
    """Creates `sessions/`, `config/` and `images/` and a README on the volume."""
    report = _run_json(INIT_VOLUME_ARGV(VOLUME_MOUNT))
    _volume.commit()
    return report
