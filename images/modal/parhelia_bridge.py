#!/usr/bin/env python3
"""The Modal bridge: the coordinator's one way to reach Modal (docs/formats/modal-bridge.md).

JSON lines: a request per line on stdin, exactly one response per request on stdout, in
any order. Requests run on a thread pool; a watchdog answers `timeout` when a request's
deadline passes first (the late result is then dropped). Nothing but responses is written
to stdout: the SDK's own output goes to stderr. Credentials never appear on any stream.

Python 3.10+ (what modal==1.6.4 itself requires), the standard library and `modal` (pinned,
see requirements.txt) only. The
tests run this file against a recording fake SDK (test_bridge.py) and a local stand-in
(tests/modal_standin/); test_sdk_signatures.py checks `SDK_CALLS` against the real SDK.
"""

import collections
import dataclasses
import datetime
import decimal
import enum
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

PROTOCOL = 1
BRIDGE_NAME = "parhelia-modal-bridge"
PINNED_SDK_VERSION = "1.6.4"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DEADLINE_MS = 60_000
WORKERS = 64
# Sandboxes whose tags a bridge remembers (the oldest are forgotten first).
TAG_CACHE_MAX = 4096

# Modal's GPU names. A trailing "!" (`H100!`) forbids Modal a free upgrade to a better GPU;
# `B200+` lets Modal run a B200 request on a B300 (billed as a B200); the SDK passes both on.
GPU_PATTERN = re.compile(
    r"^(T4|L4|A10|A10G|L40S|A100|A100-40GB|A100-80GB|H100|H200|B200\+?)!?(:[1-9][0-9]*)?$")
GPU_NAMES = "T4 L4 A10 A10G L40S A100 A100-40GB A100-80GB H100 H200 B200 B200+"
# The region(s) a sandbox may run in: Modal's names (`us-east`, `eu-west-1`, …).
REGION_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Every SDK call the bridge makes: (callable under `modal.`, bound method?, positional
# arguments (-1: any number, through *args), keywords). test_sdk_signatures.py binds each
# against modal==1.6.4; test_bridge.py checks that every call the bridge makes against its
# fake SDK is listed here.
SDK_CALLS = (
    ("App.lookup", False, 1, ("create_if_missing",)),
    ("Secret.from_name", False, 1, ("required_keys",)),
    ("Secret.from_dict", False, 1, ()),
    ("Secret.hydrate", True, 0, ()),
    ("Volume.from_name", False, 1, ("create_if_missing", "version")),
    ("Volume.hydrate", True, 0, ()),
    ("Volume.listdir", True, 1, ("recursive",)),
    ("Volume.read_file", True, 1, ()),
    ("Volume.batch_upload", True, 0, ("force",)),
    ("Volume.remove_file", True, 1, ("recursive",)),
    ("volume.VolumeUploadContextManager2.put_file", True, 2, ()),
    ("Image.build", True, 1, ()),
    ("Sandbox.create", False, -1, (
        "app", "name", "tags", "image", "env", "secrets", "volumes", "timeout",
        "idle_timeout", "workdir", "gpu", "cpu", "memory", "h2_ports", "region")),
    ("Sandbox.from_name", False, 2, ()),
    ("Sandbox.from_id", False, 1, ()),
    ("Sandbox.list", False, 0, ("app_id", "tags")),
    ("Sandbox.get_tags", True, 0, ()),
    ("Sandbox.set_tags", True, 1, ()),
    ("Sandbox.tunnels", True, 0, ("timeout",)),
    ("Sandbox.poll", True, 0, ()),
    ("Sandbox.terminate", True, 0, ()),
    ("Sandbox._experimental_stats", True, 0, ()),
    ("io_streams.StreamReader.read", True, 0, ()),
)
# Attributes read from SDK objects (also checked against the real SDK).
SDK_ATTRIBUTES = ("App.app_id", "Image.object_id", "Sandbox.object_id", "Sandbox.returncode",
                  "Sandbox.stdout", "Sandbox.stderr")

# modal.exception classes -> error kinds, most specific first (ConflictError is an
# InvalidError, SandboxTimeoutError a TimeoutError). AuthError is `auth_missing` when the
# SDK found no token at all (see `classify`).
EXCEPTION_KINDS = (
    ("AuthError", "auth"),
    ("PermissionDeniedError", "auth"),
    ("VersionError", "sdk_version"),
    ("NotFoundError", "not_found"),
    ("ResourceExhaustedError", "capacity"),
    ("SandboxTimeoutError", "timeout"),
    ("TimeoutError", "timeout"),
    ("AlreadyExistsError", "conflict"),
    ("ConflictError", "conflict"),
    ("InvalidError", "invalid"),
)
# Python exceptions the SDK raises itself (`FileNotFoundError` from read_file/remove_file,
# `FileExistsError` from batch_upload without force).
BUILTIN_KINDS = (
    (FileNotFoundError, "not_found"),
    (FileExistsError, "conflict"),
    (TimeoutError, "timeout"),
    (ValueError, "invalid"),
)
HINTS = {
    "sdk_missing": "install the pinned SDK: pip install modal==" + PINNED_SDK_VERSION,
    "sdk_version": "install the pinned SDK: pip install modal==" + PINNED_SDK_VERSION,
    "auth_missing": "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET",
    "auth": "the Modal token was refused: run `modal token new`",
    "secret_missing": "create it: modal secret create NAME KEY=VALUE",
    "capacity": "no capacity right now: retry later or choose another GPU type",
}


class BridgeError(Exception):
    """An error with its protocol kind."""

    def __init__(self, kind, message, hint=""):
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint


def credentials_source(environ=None):
    """Where the SDK will find a token: "env", "file" or "none" (never the token)."""
    environ = os.environ if environ is None else environ
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return "env"
    home = environ.get("HOME") or os.path.expanduser("~")
    path = environ.get("MODAL_CONFIG_PATH") or os.path.join(home, ".modal.toml")
    return "file" if os.path.isfile(path) else "none"


def load_sdk():
    """(modal module, None) or (None, greeting error)."""
    try:
        import modal
        import modal.exception  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return None, {"kind": "sdk_missing", "message": f"cannot import the Modal SDK: {e}",
                      "hint": HINTS["sdk_missing"]}
    version = getattr(modal, "__version__", "unknown")
    if version != PINNED_SDK_VERSION:
        return None, {"kind": "sdk_version",
                      "message": f"modal {version} is installed; the bridge needs {PINNED_SDK_VERSION}",
                      "hint": HINTS["sdk_version"]}
    return modal, None


def jsonable(value):
    """SDK values (dataclasses, Decimal, datetime, enums) as plain JSON values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def entry_type(entry):
    kind = getattr(entry, "type", None)
    name = getattr(kind, "name", None) or {1: "FILE", 2: "DIRECTORY", 3: "SYMLINK"}.get(kind, "OTHER")
    return {"FILE": "file", "DIRECTORY": "directory", "SYMLINK": "symlink"}.get(name, "other")


# ---- argument helpers -------------------------------------------------------------------

_MISSING = object()


def arg(args, name, kind, default=_MISSING):
    """args[name], checked against `kind` (a type or tuple); None counts as absent."""
    value = args.get(name)
    if value is None:
        if default is _MISSING:
            raise BridgeError("invalid", f"missing argument `{name}`")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise BridgeError("invalid", f"argument `{name}` has the wrong type ({type(value).__name__})")
    return value


def str_map(args, name):
    value = arg(args, name, dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BridgeError("invalid", f"argument `{name}` must map strings to strings")
    return value


def str_list(args, name, default=_MISSING):
    value = arg(args, name, list, default)
    if not all(isinstance(v, str) for v in value):
        raise BridgeError("invalid", f"argument `{name}` must be a list of strings")
    return value


def volume_path(path):
    path = path.strip().lstrip("/")
    if any(part == ".." for part in path.split("/")):
        raise BridgeError("invalid", f"volume path {path!r} leaves the volume")
    return path


class Bridge:
    """Serves requests against one `modal` module (the real SDK, a fake or the stand-in).
    `write_line(str)` receives each response line; calls to it are serialized."""

    def __init__(self, modal, write_line, workers=WORKERS):
        self.modal = modal
        self.errors = modal.exception
        self._write_line = write_line
        self._write_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge")
        self._cache_lock = threading.Lock()
        self._apps, self._volumes, self._images = {}, {}, {}
        # Tags by sandbox id, of sandboxes this process created or looked up: `Sandbox.list`
        # in modal 1.6.4 yields sandboxes without their tags (the list response's `tags`
        # field is not exposed by the SDK), so each would otherwise cost a `get_tags` call
        # per listing. Sandbox ids are never reused and our tags are set once at create.
        self._tags = collections.OrderedDict()
        self._recipe = None
        # Where image build contexts are made (app.py's build_context); None: a
        # temporary directory. main() sets the bridge's own directory.
        self.context_root = None
        self._secrets = set()  # strings never to print
        for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
            if len(os.environ.get(name, "")) >= 4:
                self._secrets.add(os.environ[name])
        self._pending = 0
        self._idle = threading.Condition()
        self.ops = {
            "hello": self.op_hello, "app.lookup": self.op_app_lookup,
            "secret.check": self.op_secret_check, "volume.ensure": self.op_volume_ensure,
            "image.build": self.op_image_build, "sandbox.create": self.op_sandbox_create,
            "sandbox.list": self.op_sandbox_list, "sandbox.tunnels": self.op_sandbox_tunnels,
            "sandbox.poll": self.op_sandbox_poll, "sandbox.terminate": self.op_sandbox_terminate,
            "sandbox.stats": self.op_sandbox_stats, "sandbox.run": self.op_sandbox_run,
            "volume.list": self.op_volume_list, "volume.get": self.op_volume_get,
            "volume.put": self.op_volume_put, "volume.remove": self.op_volume_remove,
        }

    # ---- framing ------------------------------------------------------------------------

    def greeting(self):
        return {"bridge": BRIDGE_NAME, "protocol": PROTOCOL,
                "sdk_version": getattr(self.modal, "__version__", "unknown"),
                "python": platform.python_version(), "credentials": credentials_source()}

    def redact(self, text):
        for secret in list(self._secrets):
            text = text.replace(secret, "[redacted]")
        return text

    def log(self, text):
        sys.stderr.write(self.redact(text).rstrip("\n") + "\n")
        sys.stderr.flush()

    def write(self, response):
        try:
            line = json.dumps(response, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            line = json.dumps({"id": response.get("id"), "ok": False, "error": {
                "kind": "internal", "message": f"the result is not JSON: {e}", "hint": ""}})
        with self._write_lock:
            self._write_line(line)

    def submit(self, line):
        """Parses one request line and runs it on the pool; the answer comes via write_line."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as e:
            self.write({"id": None, "ok": False, "error": {"kind": "invalid",
                        "message": f"unreadable request: {e}", "hint": ""}})
            return
        rid = request.get("id")
        deadline_ms = request.get("deadline_ms")
        if not isinstance(deadline_ms, (int, float)) or isinstance(deadline_ms, bool) or deadline_ms <= 0:
            deadline_ms = DEFAULT_DEADLINE_MS
        deadline = time.monotonic() + deadline_ms / 1000.0
        answered = threading.Event()
        answer_lock = threading.Lock()
        with self._idle:
            self._pending += 1

        def answer(response):
            with answer_lock:
                if answered.is_set():
                    return False
                answered.set()
            self.write(response)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            return True

        def on_deadline():
            op = request.get("op")
            hint = ("the sandbox may still start; creating it again with the same name returns it"
                    if op == "sandbox.create" else "")
            if answer({"id": rid, "ok": False, "error": {"kind": "timeout", "hint": hint,
                       "message": f"{op} did not finish within {int(deadline_ms)} ms"}}):
                self.log(f"request {rid} ({op}): deadline passed, still running")

        def work():
            response = self.handle(request, deadline)
            timer.cancel()
            if not answer(response):
                self.log(f"request {rid}: finished after its deadline; answer dropped")

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), on_deadline)
        timer.daemon = True
        timer.start()
        self._pool.submit(work)

    def wait_idle(self, timeout=None):
        """Blocks until every submitted request has been answered."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def handle(self, request, deadline=None):
        """Runs one request to completion and returns its response (never raises)."""
        rid = request.get("id")
        if deadline is None:
            deadline = time.monotonic() + DEFAULT_DEADLINE_MS / 1000.0
        try:
            op = request.get("op")
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise BridgeError("invalid", f"unknown op {op!r}")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise BridgeError("invalid", "`args` must be an object")
            result = handler(args, deadline)
            return {"id": rid, "ok": True, "result": result}
        except Exception as e:  # every failure becomes an error response
            kind, message, hint = self.classify(e)
            if kind == "internal":
                self.log(f"request {rid} failed:\n{traceback.format_exc()}")
            return {"id": rid, "ok": False, "error": {"kind": kind, "message": self.redact(message),
                                                      "hint": hint}}

    def classify(self, exc):
        """(kind, message, hint) for an exception."""
        if isinstance(exc, BridgeError):
            return exc.kind, exc.message, exc.hint or HINTS.get(exc.kind, "")
        message = str(exc) or type(exc).__name__
        for name, kind in EXCEPTION_KINDS:
            cls = getattr(self.errors, name, None)
            if isinstance(cls, type) and isinstance(exc, cls):
                if name == "AuthError" and ("token missing" in message.lower()
                                            or credentials_source() == "none"):
                    kind = "auth_missing"
                return kind, message, HINTS.get(kind, "")
        for cls, kind in BUILTIN_KINDS:
            if isinstance(exc, cls):
                return kind, message, HINTS.get(kind, "")
        return "internal", f"{type(exc).__name__}: {message}", ""

    # ---- cached handles -----------------------------------------------------------------

    def app(self, name):
        with self._cache_lock:
            cached = self._apps.get(name)
        if cached is None:
            cached = self.modal.App.lookup(name, create_if_missing=True)
            with self._cache_lock:
                self._apps[name] = cached
        return cached

    def volume(self, name, create=False):
        """A hydrated v2 volume handle; a missing volume is `not_found`."""
        with self._cache_lock:
            cached = self._volumes.get(name)
        if cached is None:
            if create:
                handle = self.modal.Volume.from_name(name, create_if_missing=True, version=2)
            else:
                handle = self.modal.Volume.from_name(name, version=2)
            try:
                handle.hydrate()
            except self.errors.NotFoundError:
                raise BridgeError("not_found", f"volume {name!r} does not exist",
                                  "create it with `parhelia modal setup`")
            with self._cache_lock:
                cached = self._volumes.setdefault(name, handle)
        return cached

    def image(self, args, force=False):
        """The session image for an IMAGE description (`app.py`'s `session_image`) and its
        tag: (cache key, image, tag)."""
        spec = arg(args, "image", dict)
        agent_bin = arg(spec, "agent_bin", str)
        version = arg(spec, "claude_code_version", str)
        agent_version = arg(spec, "agent_version", str)
        if not os.path.isabs(agent_bin) or not os.path.isfile(agent_bin):
            raise BridgeError("invalid", f"agent_bin {agent_bin!r} is not an existing file (absolute path)")
        try:
            build_args = self.recipe().build_args(version, agent_version)
            tag = self.recipe().image_tag(build_args)
        except (ValueError, OSError) as e:
            raise BridgeError("invalid", str(e))
        stat = os.stat(agent_bin)
        key = (agent_bin, version, agent_version, stat.st_size, stat.st_mtime_ns)
        with self._cache_lock:
            cached = None if force else self._images.get(key)
        if cached is None:
            cached = self.recipe().session_image(agent_bin, version, agent_version, force_build=force,
                                                 context_root=self.context_root)
            with self._cache_lock:
                # A forced image replaces the cached one once it has built (op_image_build).
                cached = cached if force else self._images.setdefault(key, cached)
        return key, cached, tag

    def recipe(self):
        """app.py (beside this file), loaded once."""
        with self._cache_lock:
            if self._recipe is None:
                spec = importlib.util.spec_from_file_location("parhelia_modal_app", os.path.join(HERE, "app.py"))
                module = importlib.util.module_from_spec(spec)
                module._LOADED_BY_BRIDGE = True  # app.py then stages nothing for `modal run`
                spec.loader.exec_module(module)
                self._recipe = module
            return self._recipe

    def secrets(self, args):
        """Named secrets (each checked to exist and hold its required keys) plus the inline one.

        An entry of `secrets` is a name, or `{"name": ..., "required_keys": [...]}`."""
        handles = []
        for entry in arg(args, "secrets", list, []):
            if isinstance(entry, str):
                name, required = entry, []
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                name = entry["name"]
                required = str_list(entry, "required_keys", [])
            else:
                raise BridgeError("invalid", "a `secrets` entry must be a name or {name, required_keys}")
            handle = self.modal.Secret.from_name(name, required_keys=required)
            try:
                handle.hydrate()
            except self.errors.NotFoundError as e:
                keys = " ".join(f"{k}=..." for k in required) or "KEY=VALUE"
                why = (f"does not exist or lacks a required key ({', '.join(required)})" if required
                       else "does not exist")
                raise BridgeError("secret_missing", f"Modal secret {name!r} {why}: {e}",
                                  f"create it: modal secret create {name} {keys}")
            handles.append(handle)
        inline = str_map(args, "inline_secret")
        if inline:
            self._secrets.update(v for v in inline.values() if len(v) >= 4)
            handles.append(self.modal.Secret.from_dict(inline))
        return handles

    def volumes(self, args):
        mounts = str_map(args, "volumes")
        for mount in mounts:
            if not mount.startswith("/"):
                raise BridgeError("invalid", f"mount path {mount!r} is not absolute")
        return {mount: self.volume(name) for mount, name in mounts.items()}

    def remember_tags(self, sandbox_id, tags):
        with self._cache_lock:
            self._tags[sandbox_id] = dict(tags)
            self._tags.move_to_end(sandbox_id)
            while len(self._tags) > TAG_CACHE_MAX:
                self._tags.popitem(last=False)

    def forget_tags(self, sandbox_id):
        with self._cache_lock:
            self._tags.pop(sandbox_id, None)

    def tags_of(self, sb):
        """A sandbox's tags: remembered, else looked up once (`get_tags`) and remembered."""
        with self._cache_lock:
            known = self._tags.get(sb.object_id)
        if known is not None:
            return dict(known)
        tags = sb.get_tags()
        self.remember_tags(sb.object_id, tags)
        return dict(tags)

    def sandbox(self, sandbox_id):
        return self.modal.Sandbox.from_id(sandbox_id)

    # ---- operations ---------------------------------------------------------------------

    def op_hello(self, args, deadline):
        return self.greeting()

    def op_app_lookup(self, args, deadline):
        return {"app_id": self.app(arg(args, "app", str)).app_id}

    def op_secret_check(self, args, deadline):
        self.secrets({"secrets": [{"name": arg(args, "name", str),
                                   "required_keys": str_list(args, "required_keys", [])}]})
        return {"exists": True}

    def op_volume_ensure(self, args, deadline):
        name = arg(args, "volume", str)
        self.volume(name, create=arg(args, "create", bool, False))
        return {"volume": name, "version": 2}

    def op_image_build(self, args, deadline):
        app = self.app(arg(args, "app", str))
        key, image, tag = self.image(args, force=arg(args, "force", bool, False))
        image.build(app)
        with self._cache_lock:
            self._images[key] = image  # built: later sandboxes use exactly this image
        return {"image_id": image.object_id, "tag": tag}

    def create_kwargs(self, args):
        """Sandbox.create's keywords shared by sandbox.create and sandbox.run."""
        kwargs = {
            "app": self.app(arg(args, "app", str)),
            "image": self.image(args)[1],
            "env": str_map(args, "env"),
            "secrets": self.secrets(args),
            "volumes": self.volumes(args),
            "workdir": arg(args, "workdir", str, None),
            "timeout": arg(args, "timeout_s", int, 300),
        }
        tags = str_map(args, "tags")
        if tags:
            kwargs["tags"] = tags
        return kwargs

    def op_sandbox_create(self, args, deadline):
        argv = str_list(args, "argv")
        name = arg(args, "name", str)
        app_name = arg(args, "app", str)
        gpu = arg(args, "gpu", str, None)
        if gpu is not None and not GPU_PATTERN.match(gpu):
            raise BridgeError("invalid", f"unknown GPU {gpu!r}",
                              f"one of {GPU_NAMES}, optionally with ! and :N")
        region = arg(args, "region", str, None)
        if region is not None and not REGION_PATTERN.match(region):
            raise BridgeError("invalid", f"not a Modal region: {region!r}")
        kwargs = self.create_kwargs(args)
        if region is not None:
            kwargs["region"] = region
        kwargs.update(name=name, gpu=gpu, cpu=arg(args, "cpu", float, None),
                      memory=arg(args, "memory_mib", int, None),
                      idle_timeout=arg(args, "idle_timeout_s", int, None),
                      h2_ports=[int(p) for p in arg(args, "h2_ports", list, [])])
        tags = kwargs.get("tags", {})
        for attempt in range(3):
            if attempt:
                time.sleep(1.0)  # a namesake that is just ending
            try:
                sb = self.modal.Sandbox.create(*argv, **kwargs)
                self.remember_tags(sb.object_id, tags)
                return {"sandbox_id": sb.object_id, "name": name, "existed": False}
            except self.errors.AlreadyExistsError:
                pass
            try:
                sb = self.modal.Sandbox.from_name(app_name, name)
            except self.errors.NotFoundError:
                continue  # it ended in between: create again
            existing = sb.get_tags()
            if not existing and tags:
                sb.set_tags(tags)  # created by a bridge that died before tagging it
                existing = tags
            elif any(existing.get(k) != v for k, v in tags.items()):
                raise BridgeError("conflict", f"a running sandbox named {name!r} carries other tags",
                                  "it belongs to someone else: choose another name")
            self.remember_tags(sb.object_id, existing)
            return {"sandbox_id": sb.object_id, "name": name, "existed": True}
        raise BridgeError("conflict", f"sandbox {name!r} kept appearing and vanishing")

    def op_sandbox_list(self, args, deadline):
        app = self.app(arg(args, "app", str))
        found = []
        wanted = str_map(args, "tags")
        for sb in self.modal.Sandbox.list(app_id=app.app_id, tags=wanted or None):
            # Modal filtered by `wanted` itself; the tags are only read for the ids they carry.
            try:
                tags = self.tags_of(sb)
            except self.errors.NotFoundError:
                continue
            if any(tags.get(k) != v for k, v in wanted.items()):
                # Remembered tags that no longer match what Modal filtered on (changed
                # by someone since): look them up again.
                self.forget_tags(sb.object_id)
                try:
                    tags = self.tags_of(sb)
                except self.errors.NotFoundError:
                    continue
            found.append({"sandbox_id": sb.object_id, "tags": tags})
        return {"sandboxes": found}

    def op_sandbox_tunnels(self, args, deadline):
        sb = self.sandbox(arg(args, "sandbox_id", str))
        wait = min(arg(args, "timeout_s", (int, float), 50), max(1.0, deadline - time.monotonic()))
        tunnels = sb.tunnels(timeout=max(1, int(wait)))
        return {"tunnels": {str(port): {"host": t.host, "port": t.port, "url": t.url}
                            for port, t in tunnels.items()}}

    def op_sandbox_poll(self, args, deadline):
        code = self.sandbox(arg(args, "sandbox_id", str)).poll()
        return {"running": code is None, "exit_code": code}

    def op_sandbox_terminate(self, args, deadline):
        required = str_map(args, "require_tags")
        try:
            sb = self.sandbox(arg(args, "sandbox_id", str))
            tags = sb.get_tags()  # looked up afresh: nothing is stopped on remembered tags
        except self.errors.NotFoundError:
            return {"terminated": False}
        self.remember_tags(sb.object_id, tags)
        differing = sorted(k for k, v in required.items() if tags.get(k) != v)
        if differing:
            raise BridgeError("invalid", f"refusing to terminate: tag(s) {', '.join(differing)} differ",
                              "the sandbox was not created by this coordinator")
        if sb.poll() is not None:
            return {"terminated": False}
        sb.terminate()
        return {"terminated": True}

    def op_sandbox_stats(self, args, deadline):
        sb = self.sandbox(arg(args, "sandbox_id", str))
        try:
            return {"available": True, "stats": jsonable(sb._experimental_stats())}
        except self.errors.NotFoundError:
            raise
        except Exception as e:
            return {"available": False, "reason": self.redact(f"{type(e).__name__}: {e}")}

    def op_sandbox_run(self, args, deadline):
        # `script` names one of app.py's commands, so `parhelia modal health-check` and
        # `modal run images/modal/app.py::health_check` run the very same check.
        script = arg(args, "script", str, None)
        if script is None:
            argv = str_list(args, "argv")
        elif script == "health_check":
            argv = self.recipe().HEALTH_CHECK_ARGV(*str_list(args, "script_args", []))
        elif script == "init_volume":
            argv = self.recipe().INIT_VOLUME_ARGV(*str_list(args, "script_args", []))
        else:
            raise BridgeError("invalid", f"unknown script {script!r}", "health_check or init_volume")
        sb = self.modal.Sandbox.create(*argv, **self.create_kwargs(args))
        try:
            delay = 0.1
            while sb.poll() is None:
                if time.monotonic() >= deadline:
                    raise BridgeError("timeout", f"{argv[0]} did not finish before the deadline")
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        except BaseException:
            try:
                sb.terminate()
            except Exception as e:
                self.log(f"could not terminate sandbox {sb.object_id}: {e}")
            raise
        code = sb.returncode
        return {"exit_code": code, "stdout": sb.stdout.read(), "stderr": sb.stderr.read()}

    def op_volume_list(self, args, deadline):
        vol = self.volume(arg(args, "volume", str))
        path = volume_path(arg(args, "path", str, ""))
        try:
            entries = vol.listdir(path or "/", recursive=arg(args, "recursive", bool, False))
        except (self.errors.NotFoundError, FileNotFoundError):
            return {"entries": []}
        return {"entries": [{"path": e.path.lstrip("/"), "type": entry_type(e), "size": e.size,
                             "mtime": float(e.mtime)} for e in entries]}

    def op_volume_get(self, args, deadline):
        vol = self.volume(arg(args, "volume", str))
        path = volume_path(arg(args, "path", str))
        dest = arg(args, "dest", str)
        if not os.path.isabs(dest):
            raise BridgeError("invalid", f"dest {dest!r} is not an absolute path")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        # A part file of its own: two bridges (two coordinators' mirrors, a pull
        # beside a write-back) fetching the same file must not write into one
        # `dest.part` and rename each other's half-written bytes into place.
        fd, part = tempfile.mkstemp(
            dir=os.path.dirname(dest), prefix=os.path.basename(dest) + ".", suffix=".part"
        )
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in vol.read_file(path):
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, dest)
        except self.errors.NotFoundError:
            raise BridgeError("not_found", f"{path!r} is not on volume {args['volume']!r}")
        finally:
            if os.path.exists(part):
                os.unlink(part)
        return {"size": size}

    def op_volume_put(self, args, deadline):
        vol = self.volume(arg(args, "volume", str))
        files = arg(args, "files", list)
        pairs = []
        for item in files:
            if not isinstance(item, dict):
                raise BridgeError("invalid", "each file must be {\"src\", \"path\"}")
            src, path = arg(item, "src", str), volume_path(arg(item, "path", str))
            if not os.path.isabs(src) or not os.path.isfile(src):
                raise BridgeError("invalid", f"src {src!r} is not an existing file (absolute path)")
            pairs.append((src, path))
        if pairs:
            with vol.batch_upload(force=True) as batch:
                for src, path in pairs:
                    batch.put_file(src, path)
        return {"written": len(pairs)}

    def op_volume_remove(self, args, deadline):
        vol = self.volume(arg(args, "volume", str))
        path = volume_path(arg(args, "path", str))
        if not path:
            raise BridgeError("invalid", "refusing to remove the volume's root")
        try:
            vol.remove_file(path, recursive=arg(args, "recursive", bool, False))
        except (self.errors.NotFoundError, FileNotFoundError):
            return {"removed": False}
        return {"removed": True}


def main():
    # Keep the protocol stream to ourselves: anything else printing to fd 1 (the SDK, a
    # child process) lands on stderr instead.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def write_line(line):
        try:
            out.write(line + "\n")
            out.flush()
        except OSError:  # the coordinator is gone
            os._exit(0)

    modal, failure = load_sdk()
    if modal is None:
        write_line(json.dumps({"id": 0, "ok": False, "error": failure}))
        sys.stderr.write(failure["message"] + "\n")
        sys.stderr.flush()
        os._exit(3)
    bridge = Bridge(modal, write_line)
    # The coordinator starts the bridge in its own directory (state/modal/bridge): the
    # build context of the image lives there, not in /tmp (this process leaves by
    # os._exit, so nothing it made in /tmp would be removed).
    bridge.context_root = os.path.join(os.getcwd(), "image-context")
    bridge.write({"id": 0, "ok": True, "result": bridge.greeting()})
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", errors="replace").strip()
        if line:
            bridge.submit(line)
    # stdin closed: answer what is in flight (each has a deadline), then leave without
    # waiting for SDK calls that outlived theirs.
    bridge.wait_idle()
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
