"""Tests of parhelia_bridge.py against a recording fake `modal` (no real SDK needed).

    python3 -m unittest discover -s images/modal -p 'test_*.py' -v

The fake records every SDK call as (path, positional args, keywords); each test checks the
exact arguments, and tearDown checks that every recorded call is declared in the bridge's
(or app.py's) SDK_CALLS table, which test_sdk_signatures.py checks against the real SDK.
The subprocess tests run the real bridge script over pipes with the same fake installed.
"""

import dataclasses
import datetime
import decimal
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
BRIDGE = os.path.join(HERE, "parhelia_bridge.py")
sys.path.insert(0, HERE)

import parhelia_bridge  # noqa: E402

# ---- the fake SDK ------------------------------------------------------------------------

CALLS = []
CALLS_LOCK = threading.Lock()


class World:
    """What the fake Modal holds."""

    def reset(self):
        self.secrets = {"anthropic-api-key": {"ANTHROPIC_API_KEY"}}
        self.volumes = {"parhelia-data": {"sessions/s/checkpoints/store.json": b"{}\n",
                                          "sessions/s/checkpoints/layers/a.tar": b"0123456789"}}
        self.sandboxes = {}
        self.next_id = 1

    def add_sandbox(self, sandbox_id=None, name=None, app_id="ap-parhelia", tags=None, exit_code=None,
                    polls=0, stdout="", stderr=""):
        if sandbox_id is None:
            sandbox_id = f"sb-{self.next_id}"
            self.next_id += 1
        self.sandboxes[sandbox_id] = {"name": name, "app_id": app_id, "tags": dict(tags or {}),
                                      "exit_code": exit_code, "polls": polls,
                                      "stdout": stdout, "stderr": stderr}
        return sandbox_id


WORLD = World()
WORLD.reset()


def record(path, *args, **kwargs):
    with CALLS_LOCK:
        CALLS.append((path, args, kwargs))


def calls(path):
    with CALLS_LOCK:
        return [(a, k) for p, a, k in CALLS if p == path]


def make_fake_modal(version="1.6.4"):
    modal = types.ModuleType("modal")
    modal.__version__ = version
    exc = types.ModuleType("modal.exception")

    class Error(Exception):
        pass

    exc.Error = Error
    for name in ("AuthError", "NotFoundError", "ResourceExhaustedError", "AlreadyExistsError",
                 "InvalidError", "PermissionDeniedError", "VersionError", "ServiceError",
                 "TimeoutError"):
        setattr(exc, name, type(name, (Error,), {}))
    exc.ConflictError = type("ConflictError", (exc.InvalidError,), {})
    exc.SandboxTimeoutError = type("SandboxTimeoutError", (exc.TimeoutError,), {})
    modal.exception = exc

    def maybe_raise(value):
        """A name like "raise:NotFoundError:message" raises that exception."""
        if isinstance(value, str) and value.startswith("raise:"):
            _, name, *message = value.split(":", 2)
            cls = getattr(exc, name, None) or getattr(__builtins__, name, None) \
                or {"FileNotFoundError": FileNotFoundError, "TimeoutError": TimeoutError,
                    "RuntimeError": RuntimeError}[name]
            raise cls(message[0] if message else f"fake {name}")

    class App:
        def __init__(self, name=None, **kwargs):
            record("App", name, **kwargs)
            self.name, self.app_id = name, f"ap-{name}"

        @staticmethod
        def lookup(name, *, create_if_missing=False):
            record("App.lookup", name, create_if_missing=create_if_missing)
            maybe_raise(name)
            app = object.__new__(App)
            app.name, app.app_id = name, f"ap-{name}"
            return app

        def function(self, **kwargs):
            record("App.function", **kwargs)
            return lambda f: f

    class Secret:
        def __init__(self, name=None, values=None, required_keys=()):
            self.name, self.values, self.required_keys = name, values, list(required_keys)

        @staticmethod
        def from_name(name, required_keys=[]):
            record("Secret.from_name", name, required_keys=required_keys)
            return Secret(name=name, required_keys=required_keys)

        @staticmethod
        def from_dict(env_dict):
            record("Secret.from_dict", env_dict)
            return Secret(values=dict(env_dict))

        def hydrate(self):
            record("Secret.hydrate")
            if self.name not in WORLD.secrets:
                raise exc.NotFoundError(f"Secret '{self.name}' not found")
            missing = [k for k in self.required_keys if k not in WORLD.secrets[self.name]]
            if missing:
                raise exc.NotFoundError(f"Secret '{self.name}' is missing key(s): {', '.join(missing)}")
            return self

    class Entry:
        def __init__(self, path, kind, size):
            self.path, self.type, self.size, self.mtime = path, kind, size, 1700000000

    class EntryType:
        def __init__(self, name):
            self.name = name

    class Batch:
        def __init__(self, files):
            self.files, self.pending = files, []

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            if exc_info[0] is None:
                for src, path in self.pending:
                    with open(src, "rb") as f:
                        self.files[path] = f.read()

        def put_file(self, local_file, remote_path):
            record("volume.VolumeUploadContextManager2.put_file", local_file, remote_path)
            self.pending.append((local_file, remote_path))

    class Volume:
        def __init__(self, name, create):
            self.name, self.create = name, create

        @staticmethod
        def from_name(name, *, create_if_missing=False, version=None):
            record("Volume.from_name", name, create_if_missing=create_if_missing, version=version)
            return Volume(name, create_if_missing)

        def hydrate(self):
            record("Volume.hydrate")
            if self.name not in WORLD.volumes:
                if not self.create:
                    raise exc.NotFoundError(f"Volume '{self.name}' not found")
                WORLD.volumes[self.name] = {}
            return self

        def commit(self):
            record("Volume.commit")

        def listdir(self, path, *, recursive=False):
            record("Volume.listdir", path, recursive=recursive)
            files = WORLD.volumes[self.name]
            prefix = path.strip("/")
            found = [p for p in files if p == prefix or p.startswith(prefix + "/") or not prefix]
            if not found:
                raise exc.NotFoundError(f"No such file or directory: {path}")
            return [Entry("/" + p, EntryType("FILE"), len(files[p])) for p in sorted(found)]

        def read_file(self, path):
            record("Volume.read_file", path)
            data = WORLD.volumes[self.name].get(path)
            if data is None:
                raise FileNotFoundError(f"No such file: {path}")
            yield data[:4]
            yield data[4:]

        def batch_upload(self, force=False):
            record("Volume.batch_upload", force=force)
            return Batch(WORLD.volumes[self.name])

        def remove_file(self, path, recursive=False):
            record("Volume.remove_file", path, recursive=recursive)
            if WORLD.volumes[self.name].pop(path, None) is None:
                raise FileNotFoundError(path)

    class Image:
        def __init__(self, steps):
            self.steps = steps
            self.object_id = "im-" + str(abs(hash(repr(steps))) % 10 ** 8)

        @staticmethod
        def from_dockerfile(path, **kwargs):
            record("Image.from_dockerfile", path, **kwargs)
            return Image([("from_dockerfile", (path,), kwargs)])

        def _step(self, name, args, kwargs):
            record(f"Image.{name}", *args, **kwargs)
            return Image(self.steps + [(name, args, kwargs)])

        def build(self, app):
            record("Image.build", app)
            return self

    @dataclasses.dataclass(frozen=True)
    class Stats:
        since: datetime.datetime
        duration: datetime.timedelta
        cost: decimal.Decimal
        cost_by_resource: dict

    class Tunnel:
        def __init__(self, host, port):
            self.host, self.port, self.url = host, port, f"https://{host}"

    class Stream:
        def __init__(self, text):
            self.text = text

        def read(self):
            record("io_streams.StreamReader.read")
            return self.text

    class Sandbox:
        def __init__(self, sandbox_id):
            self.object_id = sandbox_id

        @property
        def _state(self):
            return WORLD.sandboxes[self.object_id]

        @staticmethod
        def create(*args, **kwargs):
            # Records exactly the keywords given (the real signature has many more).
            record("Sandbox.create", *args, **kwargs)
            app, name, tags = kwargs["app"], kwargs.get("name"), kwargs.get("tags")
            maybe_raise(name)
            for state in WORLD.sandboxes.values():
                if name and state["name"] == name and state["exit_code"] is None \
                        and state["app_id"] == app.app_id:
                    raise exc.AlreadyExistsError(f"Sandbox with name '{name}' already exists")
            if args[:1] == ("echo",):
                sandbox_id = WORLD.add_sandbox(exit_code=0, polls=1, stdout=" ".join(args[1:]) + "\n")
            elif args[:1] == ("exit",):
                sandbox_id = WORLD.add_sandbox(exit_code=int(args[1]), polls=2, stderr="failed\n")
            elif args[:1] == ("hang",):
                sandbox_id = WORLD.add_sandbox(polls=10 ** 9)
            else:
                sandbox_id = WORLD.add_sandbox(name=name, app_id=app.app_id, tags=tags)
            return Sandbox(sandbox_id)

        @staticmethod
        def from_id(sandbox_id):
            record("Sandbox.from_id", sandbox_id)
            if sandbox_id.startswith("sb-slow"):
                time.sleep(1.0)
            elif sandbox_id.startswith("sb-hang"):
                time.sleep(1.5)
            if sandbox_id not in WORLD.sandboxes:
                if sandbox_id.startswith(("sb-slow", "sb-hang")):
                    WORLD.add_sandbox(sandbox_id)
                else:
                    raise exc.NotFoundError(f"Sandbox {sandbox_id} not found")
            return Sandbox(sandbox_id)

        @staticmethod
        def from_name(app_name, name):
            record("Sandbox.from_name", app_name, name)
            for sandbox_id, state in WORLD.sandboxes.items():
                if state["name"] == name and state["exit_code"] is None:
                    return Sandbox(sandbox_id)
            raise exc.NotFoundError(f"Sandbox {name} not found")

        @staticmethod
        def list(*, app_id=None, tags=None):
            record("Sandbox.list", app_id=app_id, tags=tags)
            for sandbox_id, state in list(WORLD.sandboxes.items()):
                if state["exit_code"] is None and state["app_id"] == app_id and \
                        all(state["tags"].get(k) == v for k, v in (tags or {}).items()):
                    yield Sandbox(sandbox_id)

        def get_tags(self):
            record("Sandbox.get_tags")
            return dict(self._state["tags"])

        def set_tags(self, tags):
            record("Sandbox.set_tags", tags)
            self._state["tags"] = dict(tags)

        def tunnels(self, timeout=50):
            record("Sandbox.tunnels", timeout=timeout)
            return {50051: Tunnel("abc.h2.modal.host", 443)}

        def poll(self):
            record("Sandbox.poll")
            state = self._state
            if state["polls"] > 0:
                state["polls"] -= 1
                return None
            return state["exit_code"]

        @property
        def returncode(self):
            state = self._state
            return None if state["polls"] > 0 else state["exit_code"]

        def terminate(self):
            record("Sandbox.terminate")
            self._state.update(exit_code=137, polls=0)

        def _experimental_stats(self):
            record("Sandbox._experimental_stats")
            if self.object_id == "sb-nostats":
                raise NotImplementedError("Statistics aren't supported for persistent Sandboxes yet.")
            return Stats(since=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                         duration=datetime.timedelta(minutes=2), cost=decimal.Decimal("0.0125"),
                         cost_by_resource={"CPU": decimal.Decimal("0.01")})

        @property
        def stdout(self):
            return Stream(self._state["stdout"])

        @property
        def stderr(self):
            return Stream(self._state["stderr"])

    modal.App, modal.Secret, modal.Volume, modal.Image, modal.Sandbox = App, Secret, Volume, Image, Sandbox
    return modal


def install_fake_modal(version="1.6.4"):
    modal = make_fake_modal(version)
    sys.modules["modal"] = modal
    sys.modules["modal.exception"] = modal.exception
    return modal


def run_bridge_with_fake():
    """Entry point of the subprocess tests: the real bridge script over the fake SDK."""
    import runpy

    install_fake_modal(os.environ.get("FAKE_MODAL_VERSION", "1.6.4"))
    runpy.run_path(BRIDGE, run_name="__main__")


def fake_modules():
    """sys.modules entries that make `import modal` give the fake (for mock.patch.dict)."""
    return {"modal": FAKE, "modal.exception": FAKE.exception}


def load_app_recipe():
    """app.py, loaded under the fake."""
    import importlib.util

    with mock.patch.dict(sys.modules, fake_modules()):
        spec = importlib.util.spec_from_file_location("parhelia_modal_app_under_test", os.path.join(HERE, "app.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# Installed only while a test runs, so that test_sdk_signatures.py can import the real SDK.
FAKE = make_fake_modal()
app_recipe = load_app_recipe()

# ---- helpers -----------------------------------------------------------------------------

SDK_TABLE = {}
for _path, _method, _npos, _keywords in parhelia_bridge.SDK_CALLS + app_recipe.SDK_CALLS:
    _entry = SDK_TABLE.setdefault(_path, [_npos, set()])
    _entry[0] = -1 if -1 in (_npos, _entry[0]) else max(_npos, _entry[0])
    _entry[1].update(_keywords)

TAGS = {"parhelia": "1", "parhelia.coordinator": "co-1", "parhelia.task": "t-1",
        "parhelia.session": "s-1", "parhelia.container": "ctr-1a2b3c4d"}


class BridgeTestCase(unittest.TestCase):
    def setUp(self):
        patcher = mock.patch.dict(sys.modules, fake_modules())
        patcher.start()
        self.addCleanup(patcher.stop)
        WORLD.reset()
        self.lines, self.logged = [], []
        self.bridge = parhelia_bridge.Bridge(FAKE, self.lines.append)
        self.bridge.log = self.logged.append
        self.bridge.recipe()  # app.py's own module-level SDK calls are not under test here
        with CALLS_LOCK:
            CALLS.clear()
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.agent_bin = os.path.join(self.tmp.name, "parhelia-agent")
        with open(self.agent_bin, "wb") as f:
            f.write(b"\x7fELF fake agent")
        self.image = {"agent_bin": self.agent_bin, "claude_code_version": "2.1.330", "agent_version": "0.1.0"}

    def tearDown(self):
        with CALLS_LOCK:
            recorded = list(CALLS)
        for path, args, kwargs in recorded:
            self.assertIn(path, SDK_TABLE, f"{path} is not in any SDK_CALLS table")
            npos, keywords = SDK_TABLE[path]
            self.assertTrue(set(kwargs) <= keywords, f"{path} got undeclared keywords {set(kwargs) - keywords}")
            if npos != -1:
                self.assertLessEqual(len(args), npos, f"{path} got {len(args)} positional arguments")

    def call(self, op, args=None, **extra):
        request = {"id": 7, "op": op, "args": args if args is not None else {}}
        request.update(extra)
        response = self.bridge.handle(request)
        self.assertEqual(response["id"], 7)
        json.dumps(response, allow_nan=False)  # always JSON
        return response

    def ok(self, op, args=None):
        response = self.call(op, args)
        self.assertTrue(response["ok"], response)
        return response["result"]

    def error(self, op, args=None):
        response = self.call(op, args)
        self.assertFalse(response["ok"], response)
        self.assertEqual(set(response["error"]), {"kind", "message", "hint"})
        return response["error"]

    def create_args(self, **changes):
        args = {"app": "parhelia", "name": "ctr-1a2b3c4d", "image": self.image,
                "argv": ["/usr/local/bin/parhelia-agent", "run", "--spec", "/vol/s/spec.json",
                         "--label", "parhelia.coordinator=co-1"],
                "env": {"ANTHROPIC_BASE_URL": "http://proxy", "HOME": "/home/parhelia"},
                "secrets": ["anthropic-api-key"], "inline_secret": {"PARHELIA_SESSION_SECRET": "s3cr3t-value"},
                "volumes": {"/vol": "parhelia-data"}, "workdir": "/home/parhelia", "gpu": "A10G:1",
                "cpu": 2.0, "memory_mib": 4096, "timeout_s": 14400, "idle_timeout_s": None,
                "h2_ports": [50051], "tags": TAGS}
        args.update(changes)
        return args


class GreetingAndFramingTests(BridgeTestCase):
    def test_greeting_names_the_protocol_sdk_and_credentials_source(self):
        with mock.patch.dict(os.environ, {"MODAL_TOKEN_ID": "ak-123456", "MODAL_TOKEN_SECRET": "as-123456"}):
            result = self.ok("hello")
        self.assertEqual(result["bridge"], "parhelia-modal-bridge")
        self.assertEqual(result["protocol"], 1)
        self.assertEqual(result["sdk_version"], "1.6.4")
        self.assertEqual(result["credentials"], "env")
        self.assertNotIn("ak-123456", json.dumps(result))

    def test_credentials_source(self):
        with tempfile.TemporaryDirectory() as home:
            config = os.path.join(home, "modal.toml")
            self.assertEqual(parhelia_bridge.credentials_source({"HOME": home, "MODAL_CONFIG_PATH": config}), "none")
            open(config, "w").close()
            self.assertEqual(parhelia_bridge.credentials_source({"MODAL_CONFIG_PATH": config}), "file")
            self.assertEqual(parhelia_bridge.credentials_source(
                {"MODAL_TOKEN_ID": "a", "MODAL_TOKEN_SECRET": "b", "MODAL_CONFIG_PATH": config}), "env")

    def test_unknown_op_and_bad_requests_are_invalid(self):
        self.assertEqual(self.error("sandbox.explode")["kind"], "invalid")
        self.assertEqual(self.call("hello", args=[1])["error"]["kind"], "invalid")
        self.assertEqual(self.error("app.lookup", {})["kind"], "invalid")
        self.assertEqual(self.error("app.lookup", {"app": 3})["kind"], "invalid")
        self.bridge.submit("this is not json")
        self.bridge.wait_idle(5)
        self.assertEqual(json.loads(self.lines[-1])["error"]["kind"], "invalid")

    def test_deadline_answers_timeout_once_and_drops_the_late_answer(self):
        started = time.monotonic()
        self.bridge.submit(json.dumps({"id": 41, "op": "sandbox.poll", "args": {"sandbox_id": "sb-hang-1"},
                                       "deadline_ms": 200}))
        self.assertTrue(self.bridge.wait_idle(5))
        self.assertLess(time.monotonic() - started, 1.2)
        answers = [json.loads(line) for line in self.lines]
        self.assertEqual(answers, [{"id": 41, "ok": False, "error": {
            "kind": "timeout", "message": "sandbox.poll did not finish within 200 ms", "hint": ""}}])
        time.sleep(1.6)  # the call finishes; its answer must not be written
        self.assertEqual(len(self.lines), 1)

    def test_concurrent_requests_are_answered_out_of_order(self):
        self.bridge.submit(json.dumps({"id": 1, "op": "sandbox.poll", "args": {"sandbox_id": "sb-slow-1"}}))
        self.bridge.submit(json.dumps({"id": 2, "op": "hello", "args": {}}))
        self.assertTrue(self.bridge.wait_idle(5))
        answers = [json.loads(line) for line in self.lines]
        self.assertEqual([a["id"] for a in answers], [2, 1])
        self.assertEqual(answers[1]["result"], {"running": True, "exit_code": None})


class ErrorMappingTests(BridgeTestCase):
    CASES = [
        ("AuthError", "auth"),
        ("AuthError:Token missing. Could not authenticate client.", "auth_missing"),
        ("PermissionDeniedError", "auth"),
        ("VersionError", "sdk_version"),
        ("NotFoundError", "not_found"),
        ("ResourceExhaustedError", "capacity"),
        ("TimeoutError", "timeout"),
        ("SandboxTimeoutError", "timeout"),
        ("AlreadyExistsError", "conflict"),
        ("ConflictError", "conflict"),
        ("InvalidError", "invalid"),
        ("ServiceError", "internal"),
        ("FileNotFoundError", "not_found"),
        ("RuntimeError", "internal"),
    ]

    def test_each_exception_class_maps_to_its_kind(self):
        with mock.patch.dict(os.environ, {"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"}):
            for raised, kind in self.CASES:
                with self.subTest(raised=raised):
                    error = self.error("app.lookup", {"app": f"raise:{raised}"})
                    self.assertEqual(error["kind"], kind)
        self.assertEqual(self.error("app.lookup", {"app": "raise:ResourceExhaustedError"})["hint"],
                         parhelia_bridge.HINTS["capacity"])

    def test_an_auth_error_without_any_token_is_auth_missing(self):
        with tempfile.TemporaryDirectory() as home, mock.patch.dict(
                os.environ, {"HOME": home, "MODAL_CONFIG_PATH": os.path.join(home, "none.toml")}):
            os.environ.pop("MODAL_TOKEN_ID", None)
            self.assertEqual(self.error("app.lookup", {"app": "raise:AuthError"})["kind"], "auth_missing")

    def test_every_mapped_class_is_a_real_modal_exception_name(self):
        for name, _ in parhelia_bridge.EXCEPTION_KINDS:
            self.assertTrue(hasattr(FAKE.exception, name), name)

    def test_secrets_never_appear_in_messages(self):
        with mock.patch.dict(os.environ, {"MODAL_TOKEN_ID": "ak-visible-token", "MODAL_TOKEN_SECRET": "as-x1"}):
            bridge = parhelia_bridge.Bridge(FAKE, self.lines.append)
            bridge.log = self.logged.append
            response = bridge.handle({"id": 1, "op": "app.lookup", "args": {"app": "raise:RuntimeError:bad ak-visible-token"}})
        self.assertEqual(response["error"]["message"], "RuntimeError: bad [redacted]")


class AppAndSecretAndVolumeTests(BridgeTestCase):
    def test_app_lookup_creates_if_missing_and_is_cached(self):
        self.assertEqual(self.ok("app.lookup", {"app": "parhelia"}), {"app_id": "ap-parhelia"})
        self.ok("app.lookup", {"app": "parhelia"})
        self.assertEqual(calls("App.lookup"), [(("parhelia",), {"create_if_missing": True})])

    def test_secret_check(self):
        self.assertEqual(self.ok("secret.check", {"name": "anthropic-api-key"}), {"exists": True})
        self.assertEqual(calls("Secret.from_name"), [(("anthropic-api-key",), {"required_keys": []})])
        args = {"name": "anthropic-api-key", "required_keys": ["ANTHROPIC_API_KEY"]}
        self.assertEqual(self.ok("secret.check", args), {"exists": True})
        WORLD.secrets["anthropic-api-key"] = set()
        error = self.error("secret.check", args)
        self.assertEqual(error["kind"], "secret_missing")
        self.assertIn("modal secret create anthropic-api-key ANTHROPIC_API_KEY=...", error["hint"])
        error = self.error("secret.check", {"name": "nope"})
        self.assertEqual(error["kind"], "secret_missing")
        self.assertIn("modal secret create nope", error["hint"])

    def test_volume_ensure(self):
        self.assertEqual(self.ok("volume.ensure", {"volume": "fresh", "create": True}), {"volume": "fresh", "version": 2})
        self.assertEqual(calls("Volume.from_name"), [(("fresh",), {"create_if_missing": True, "version": 2})])
        self.assertEqual(len(calls("Volume.hydrate")), 1)
        self.assertEqual(self.error("volume.ensure", {"volume": "absent", "create": False})["kind"], "not_found")
        self.assertEqual(calls("Volume.from_name")[-1], (("absent",), {"create_if_missing": False, "version": 2}))

    def test_volume_list(self):
        result = self.ok("volume.list", {"volume": "parhelia-data", "path": "sessions/s/checkpoints", "recursive": True})
        self.assertEqual(result["entries"], [
            {"path": "sessions/s/checkpoints/layers/a.tar", "type": "file", "size": 10, "mtime": 1700000000.0},
            {"path": "sessions/s/checkpoints/store.json", "type": "file", "size": 3, "mtime": 1700000000.0}])
        self.assertEqual(calls("Volume.listdir"), [(("sessions/s/checkpoints",), {"recursive": True})])
        self.assertEqual(self.ok("volume.list", {"volume": "parhelia-data", "path": "nothing/here"}), {"entries": []})
        self.ok("volume.list", {"volume": "parhelia-data", "path": ""})
        self.assertEqual(calls("Volume.listdir")[-1], (("/",), {"recursive": False}))
        self.assertEqual(self.error("volume.list", {"volume": "gone", "path": "x"})["kind"], "not_found")
        self.assertEqual(self.error("volume.list", {"volume": "parhelia-data", "path": "../x"})["kind"], "invalid")

    def test_volume_get_streams_into_dest(self):
        dest = os.path.join(self.tmp.name, "mirror", "a.tar")
        result = self.ok("volume.get", {"volume": "parhelia-data", "path": "sessions/s/checkpoints/layers/a.tar",
                                        "dest": dest})
        self.assertEqual(result, {"size": 10})
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), b"0123456789")
        error = self.error("volume.get", {"volume": "parhelia-data", "path": "missing", "dest": dest + "2"})
        self.assertEqual(error["kind"], "not_found")
        self.assertFalse(os.path.exists(dest + "2"))
        # No part file is left behind, on success or failure.
        self.assertEqual(sorted(os.listdir(os.path.dirname(dest))), ["a.tar"])

    def test_two_gets_of_one_file_each_write_their_own_part_file(self):
        # Another bridge's fetch of the same file holds `dest.part` open (the
        # name every fetch used): this fetch must neither write into it nor
        # rename it, and leaves it alone.
        dest = os.path.join(self.tmp.name, "mirror", "a.tar")
        os.makedirs(os.path.dirname(dest))
        with open(dest + ".part", "wb") as other:
            other.write(b"half of another fetch")
            other.flush()
            result = self.ok("volume.get", {"volume": "parhelia-data",
                                            "path": "sessions/s/checkpoints/layers/a.tar", "dest": dest})
        self.assertEqual(result, {"size": 10})
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), b"0123456789")
        with open(dest + ".part", "rb") as f:
            self.assertEqual(f.read(), b"half of another fetch")

    def test_volume_put_is_one_forced_batch(self):
        srcs = []
        for i in range(2):
            srcs.append(os.path.join(self.tmp.name, f"f{i}"))
            with open(srcs[-1], "w") as f:
                f.write(f"file {i}")
        files = [{"src": srcs[0], "path": "sessions/s/layers/x"}, {"src": srcs[1], "path": "sessions/s/manifests/m"}]
        self.assertEqual(self.ok("volume.put", {"volume": "parhelia-data", "files": files}), {"written": 2})
        self.assertEqual(calls("Volume.batch_upload"), [((), {"force": True})])
        self.assertEqual(calls("volume.VolumeUploadContextManager2.put_file"),
                         [((srcs[0], "sessions/s/layers/x"), {}), ((srcs[1], "sessions/s/manifests/m"), {})])
        self.assertEqual(WORLD.volumes["parhelia-data"]["sessions/s/manifests/m"], b"file 1")
        bad = [{"src": os.path.join(self.tmp.name, "nope"), "path": "x"}]
        self.assertEqual(self.error("volume.put", {"volume": "parhelia-data", "files": bad})["kind"], "invalid")

    def test_volume_remove(self):
        path = "sessions/s/checkpoints/store.json"
        self.assertEqual(self.ok("volume.remove", {"volume": "parhelia-data", "path": path}), {"removed": True})
        self.assertEqual(calls("Volume.remove_file"), [((path,), {"recursive": False})])
        self.assertEqual(self.ok("volume.remove", {"volume": "parhelia-data", "path": path, "recursive": True}),
                         {"removed": False})
        self.assertEqual(self.error("volume.remove", {"volume": "parhelia-data", "path": "/"})["kind"], "invalid")

    def test_image_build_uses_the_recipe(self):
        result = self.ok("image.build", {"app": "parhelia", "image": self.image, "force": False})
        self.assertTrue(result["image_id"].startswith("im-"))
        # The tag as the Dockerfile's LABEL spells it.
        self.assertEqual(result["tag"], "cc2.1.330-agent0.1.0")
        # The one recipe: images/Dockerfile, with the versions as build arguments and a
        # context holding only the agent (hard-linked: the same bytes).
        [((path,), kwargs)] = calls("Image.from_dockerfile")
        self.assertEqual(os.path.realpath(path), os.path.realpath(os.path.join(HERE, "..", "Dockerfile")))
        self.assertEqual(kwargs["build_args"], {"CLAUDE_CODE_VERSION": "2.1.330", "PARHELIA_AGENT_VERSION": "0.1.0"})
        self.assertEqual((kwargs["add_python"], kwargs["force_build"], kwargs["ignore"]), ("3.11", False, []))
        self.assertEqual(os.listdir(kwargs["context_dir"]), ["parhelia-agent"])
        with open(os.path.join(kwargs["context_dir"], "parhelia-agent"), "rb") as f:
            self.assertEqual(f.read(), b"\x7fELF fake agent")
        self.assertEqual(len(calls("Image.build")), 1)
        # Cached per binary: a second build reuses the image; force makes a new one.
        self.ok("image.build", {"app": "parhelia", "image": self.image})
        self.assertEqual(len(calls("Image.from_dockerfile")), 1)
        forced = self.ok("image.build", {"app": "parhelia", "image": self.image, "force": True})
        self.assertEqual(calls("Image.from_dockerfile")[-1][1]["force_build"], True)
        # Sandboxes created afterwards get the image that was just rebuilt.
        self.ok("sandbox.create", self.create_args(name="after-force"))
        self.assertEqual(calls("Sandbox.create")[-1][1]["image"].object_id, forced["image_id"])
        self.assertEqual(len(calls("Image.from_dockerfile")), 2)
        missing = dict(self.image, agent_bin="/nonexistent/agent")
        self.assertEqual(self.error("image.build", {"app": "parhelia", "image": missing})["kind"], "invalid")
        for bad in ({"claude_code_version": "1; rm -rf /"}, {"agent_version": "$(id)"}, {"agent_version": ""}):
            self.assertEqual(self.error("image.build", {"app": "parhelia", "image": dict(self.image, **bad)})["kind"],
                             "invalid", bad)
        no_version = {k: v for k, v in self.image.items() if k != "agent_version"}
        self.assertEqual(self.error("image.build", {"app": "parhelia", "image": no_version})["kind"], "invalid")


class BuildContextTests(BridgeTestCase):
    def test_the_context_lives_in_the_bridges_directory_one_version_at_a_time(self):
        root = os.path.join(self.tmp.name, "bridge", "image-context")
        self.bridge.context_root = root
        self.ok("image.build", {"app": "parhelia", "image": self.image})
        [first] = os.listdir(root)
        self.assertEqual(os.listdir(os.path.join(root, first)), ["parhelia-agent"])
        self.assertEqual(os.stat(os.path.join(root, first, "parhelia-agent")).st_ino, os.stat(self.agent_bin).st_ino)
        # A new build of the agent (a new file at the same path): its own context, and
        # the old one goes, so the old binary is not kept alive by the link.
        os.remove(self.agent_bin)
        with open(self.agent_bin, "wb") as f:
            f.write(b"\x7fELF another agent")
        self.ok("image.build", {"app": "parhelia", "image": self.image})
        [second] = os.listdir(root)
        self.assertNotEqual(first, second)
        with open(os.path.join(root, second, "parhelia-agent"), "rb") as f:
            self.assertEqual(f.read(), b"\x7fELF another agent")


class RecipeImportTests(BridgeTestCase):
    def test_the_bridge_loads_app_py_without_staging_or_running_an_agent(self):
        # The coordinator's environment may name its local agent; the bridge's app.py
        # must not stage it into /tmp or run it (that is for `modal run` only). This
        # agent is not even executable: running it would raise.
        with mock.patch.dict(os.environ, {"PARHELIA_AGENT_BIN": self.agent_bin}):
            bridge = parhelia_bridge.Bridge(FAKE, self.lines.append)
            recipe = bridge.recipe()
        self.assertEqual(recipe._contexts, {})
        self.assertEqual(recipe._AGENT_BIN, "/PARHELIA_AGENT_BIN-is-not-set/parhelia-agent")


class OneRecipeTests(unittest.TestCase):
    """The Dockerfile is the only recipe: app.py builds nothing itself, and every build
    argument it passes is one the Dockerfile declares (and uses)."""

    def test_app_py_only_builds_the_dockerfile(self):
        image_calls = [c[0] for c in app_recipe.SDK_CALLS if c[0].startswith("Image.")]
        self.assertEqual(image_calls, ["Image.from_dockerfile"])

    def test_the_build_arguments_are_the_dockerfiles(self):
        with open(os.path.join(HERE, "..", "Dockerfile"), encoding="utf-8") as f:
            text = f.read()
        declared = set(re.findall(r"^ARG ([A-Z_]+)", text, re.MULTILINE))
        passed = set(app_recipe.build_args("2.1.330", "0.1.0"))
        self.assertEqual(passed, declared)
        for name in passed:
            self.assertIn("${" + name + "}", text, name)
        # The Claude Code pin's default there is app.py's default.
        self.assertIn(f"ARG CLAUDE_CODE_VERSION={app_recipe.DEFAULT_CLAUDE_CODE_VERSION}\n", text)
        # The COPY takes the file the build context holds.
        self.assertRegex(text, rf"(?m)^COPY {app_recipe.CONTEXT_AGENT} {app_recipe.AGENT_PATH}$")

    def test_the_tag_names_both_versions(self):
        self.assertEqual(app_recipe.image_tag({"CLAUDE_CODE_VERSION": "9.9.9", "PARHELIA_AGENT_VERSION": "1.2.3"}),
                         "cc9.9.9-agent1.2.3")


class SandboxTests(BridgeTestCase):
    def test_create_passes_exactly_these_arguments(self):
        result = self.ok("sandbox.create", self.create_args())
        self.assertEqual(result, {"sandbox_id": "sb-1", "name": "ctr-1a2b3c4d", "existed": False})
        [(argv, kwargs)] = calls("Sandbox.create")
        self.assertEqual(argv, ("/usr/local/bin/parhelia-agent", "run", "--spec", "/vol/s/spec.json",
                                "--label", "parhelia.coordinator=co-1"))
        self.assertEqual(kwargs["app"].app_id, "ap-parhelia")
        self.assertEqual(kwargs["name"], "ctr-1a2b3c4d")
        self.assertEqual(kwargs["tags"], TAGS)
        self.assertEqual(kwargs["env"], {"ANTHROPIC_BASE_URL": "http://proxy", "HOME": "/home/parhelia"})
        named, inline = kwargs["secrets"]
        self.assertEqual((named.name, named.values), ("anthropic-api-key", None))
        self.assertEqual(inline.values, {"PARHELIA_SESSION_SECRET": "s3cr3t-value"})
        self.assertEqual(calls("Secret.from_dict"), [(({"PARHELIA_SESSION_SECRET": "s3cr3t-value"},), {})])
        self.assertEqual(list(kwargs["volumes"]), ["/vol"])
        self.assertEqual(kwargs["volumes"]["/vol"].name, "parhelia-data")
        self.assertEqual(calls("Volume.from_name"), [(("parhelia-data",), {"create_if_missing": False, "version": 2})])
        self.assertEqual((kwargs["gpu"], kwargs["cpu"], kwargs["memory"]), ("A10G:1", 2.0, 4096))
        self.assertEqual((kwargs["timeout"], kwargs["idle_timeout"]), (14400, None))
        self.assertEqual(kwargs["workdir"], "/home/parhelia")
        self.assertEqual(kwargs["h2_ports"], [50051])
        self.assertIsInstance(kwargs["cpu"], float)
        self.assertEqual(kwargs["image"].steps[0][0], "from_dockerfile")
        self.assertEqual(calls("App.lookup"), [(("parhelia",), {"create_if_missing": True})])
        self.assertEqual(sorted(kwargs), ["app", "cpu", "env", "gpu", "h2_ports", "idle_timeout", "image", "memory",
                                          "name", "secrets", "tags", "timeout", "volumes", "workdir"])
        self.assertEqual(calls("Sandbox.set_tags"), [])  # tags go in with create

    def test_create_options(self):
        self.ok("sandbox.create", self.create_args(name="c2", gpu=None, cpu=1, idle_timeout_s=600, h2_ports=[]))
        [(_, kwargs)] = calls("Sandbox.create")
        self.assertEqual((kwargs["gpu"], kwargs["cpu"], kwargs["idle_timeout"], kwargs["h2_ports"]),
                         (None, 1.0, 600, []))

    def test_gpu_strings_are_validated(self):
        for gpu in ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200",
                    "B200+", "B200+:2", "H100:8", "T4:1", "H100!", "H100!:2"):
            with self.subTest(gpu=gpu):
                self.ok("sandbox.create", self.create_args(name=f"ctr-{gpu}", gpu=gpu))
        for gpu in ("X100", "h100", "A10G:0", "A10G:", "H100:two", "A10G:1:2", "", "H100+", "A10+"):
            with self.subTest(gpu=gpu):
                self.assertEqual(self.error("sandbox.create", self.create_args(gpu=gpu))["kind"], "invalid")

    def test_create_is_idempotent_by_name(self):
        first = self.ok("sandbox.create", self.create_args())
        again = self.ok("sandbox.create", self.create_args())
        self.assertEqual(again, {"sandbox_id": first["sandbox_id"], "name": "ctr-1a2b3c4d", "existed": True})
        self.assertEqual(calls("Sandbox.from_name"), [(("parhelia", "ctr-1a2b3c4d"), {})])

    def test_an_untagged_namesake_gets_our_tags_and_a_foreign_one_is_a_conflict(self):
        untagged = WORLD.add_sandbox(name="ctr-1a2b3c4d", tags={})
        self.assertEqual(self.ok("sandbox.create", self.create_args())["sandbox_id"], untagged)
        self.assertEqual(calls("Sandbox.set_tags"), [((TAGS,), {})])
        WORLD.add_sandbox(name="ctr-other", tags=dict(TAGS, **{"parhelia.coordinator": "co-2"}))
        self.assertEqual(self.error("sandbox.create", self.create_args(name="ctr-other"))["kind"], "conflict")

    def test_named_secrets_carry_their_required_keys_and_a_region_passes_through(self):
        WORLD.secrets["github"] = {"GITHUB_TOKEN"}
        secrets = [{"name": "anthropic-api-key", "required_keys": ["ANTHROPIC_API_KEY"]}, "github"]
        self.ok("sandbox.create", self.create_args(secrets=secrets, region="us-east"))
        [(_, kwargs)] = calls("Sandbox.create")
        self.assertEqual(kwargs["region"], "us-east")
        self.assertEqual(calls("Secret.from_name"), [(("anthropic-api-key",), {"required_keys": ["ANTHROPIC_API_KEY"]}),
                                                     (("github",), {"required_keys": []})])
        self.assertEqual(self.error("sandbox.create", self.create_args(name="c3", region="us east!"))["kind"],
                         "invalid")

    def test_a_secret_without_its_required_key_is_secret_missing(self):
        WORLD.secrets["anthropic-api-key"] = {"SOMETHING_ELSE"}
        secrets = [{"name": "anthropic-api-key", "required_keys": ["ANTHROPIC_API_KEY"]}]
        error = self.error("sandbox.create", self.create_args(secrets=secrets))
        self.assertEqual(error["kind"], "secret_missing")
        self.assertIn("ANTHROPIC_API_KEY", error["message"])
        self.assertEqual(calls("Sandbox.create"), [])

    def test_create_with_a_missing_secret_creates_nothing(self):
        error = self.error("sandbox.create", self.create_args(secrets=["anthropic-api-key", "nope"]))
        self.assertEqual(error["kind"], "secret_missing")
        self.assertEqual(calls("Sandbox.create"), [])

    def test_create_capacity_and_missing_volume(self):
        self.assertEqual(self.error("sandbox.create", self.create_args(name="raise:ResourceExhaustedError"))["kind"],
                         "capacity")
        self.assertEqual(self.error("sandbox.create", self.create_args(volumes={"/vol": "gone"}))["kind"], "not_found")
        self.assertEqual(self.error("sandbox.create", self.create_args(volumes={"vol": "parhelia-data"}))["kind"],
                         "invalid")

    def test_inline_secret_values_are_redacted_afterwards(self):
        self.ok("sandbox.create", self.create_args())
        response = self.call("app.lookup", {"app": "raise:RuntimeError:leaked s3cr3t-value"})
        self.assertNotIn("s3cr3t-value", json.dumps(response))

    def test_list_by_tags(self):
        mine = WORLD.add_sandbox(name="a", tags=TAGS)
        WORLD.add_sandbox(name="b", tags={"parhelia.coordinator": "co-2"})
        WORLD.add_sandbox(name="c", tags=TAGS, exit_code=0)
        result = self.ok("sandbox.list", {"app": "parhelia", "tags": {"parhelia.coordinator": "co-1"}})
        self.assertEqual(result, {"sandboxes": [{"sandbox_id": mine, "tags": TAGS}]})
        self.assertEqual(calls("Sandbox.list"), [((), {"app_id": "ap-parhelia", "tags": {"parhelia.coordinator": "co-1"}})])

    def test_list_looks_each_sandbox_up_once(self):
        # A sandbox this bridge created: its tags are known, no lookup.
        created = self.ok("sandbox.create", self.create_args())["sandbox_id"]
        mine = {"parhelia.coordinator": "co-1"}
        self.assertEqual(self.ok("sandbox.list", {"app": "parhelia", "tags": mine}),
                         {"sandboxes": [{"sandbox_id": created, "tags": TAGS}]})
        self.assertEqual(calls("Sandbox.get_tags"), [])
        # Two it did not create (another bridge's, before a restart): one lookup each, once.
        other_tags = dict(TAGS, **{"parhelia.container": "ctr-2"})
        second = WORLD.add_sandbox(name="b", tags=other_tags)
        third = WORLD.add_sandbox(name="c", tags=dict(TAGS, **{"parhelia.container": "ctr-3"}))
        for _ in range(3):
            listed = self.ok("sandbox.list", {"app": "parhelia", "tags": mine})["sandboxes"]
            self.assertEqual(sorted(s["sandbox_id"] for s in listed), sorted([created, second, third]))
        self.assertEqual(len(calls("Sandbox.get_tags")), 2)
        # Tags changed behind our back so that Modal's filter no longer matches what is
        # remembered: looked up again rather than answered wrongly.
        WORLD.sandboxes[second]["tags"] = dict(other_tags, **{"parhelia.task": "t-9"})
        listed = self.ok("sandbox.list", {"app": "parhelia", "tags": {"parhelia.task": "t-9"}})
        self.assertEqual(listed["sandboxes"], [{"sandbox_id": second,
                                                "tags": dict(other_tags, **{"parhelia.task": "t-9"})}])
        self.assertEqual(len(calls("Sandbox.get_tags")), 3)
        # Termination always checks the tags afresh.
        self.ok("sandbox.terminate", {"sandbox_id": created, "require_tags": mine})
        self.assertEqual(len(calls("Sandbox.get_tags")), 4)

    def test_tunnels(self):
        sandbox_id = WORLD.add_sandbox(name="a", tags=TAGS)
        result = self.ok("sandbox.tunnels", {"sandbox_id": sandbox_id, "timeout_s": 30})
        self.assertEqual(result, {"tunnels": {"50051": {"host": "abc.h2.modal.host", "port": 443,
                                                        "url": "https://abc.h2.modal.host"}}})
        self.assertEqual(calls("Sandbox.tunnels"), [((), {"timeout": 30})])
        self.assertEqual(self.error("sandbox.tunnels", {"sandbox_id": "sb-missing"})["kind"], "not_found")

    def test_poll(self):
        running = WORLD.add_sandbox(tags=TAGS)
        done = WORLD.add_sandbox(tags=TAGS, exit_code=3)
        self.assertEqual(self.ok("sandbox.poll", {"sandbox_id": running}), {"running": True, "exit_code": None})
        self.assertEqual(self.ok("sandbox.poll", {"sandbox_id": done}), {"running": False, "exit_code": 3})
        self.assertEqual(calls("Sandbox.from_id")[0], ((running,), {}))

    def test_terminate_checks_tags_first(self):
        theirs = WORLD.add_sandbox(tags=dict(TAGS, **{"parhelia.coordinator": "co-2"}))
        error = self.error("sandbox.terminate", {"sandbox_id": theirs, "require_tags": {"parhelia.coordinator": "co-1"}})
        self.assertEqual(error["kind"], "invalid")
        self.assertIn("parhelia.coordinator", error["message"])
        self.assertEqual(calls("Sandbox.terminate"), [])
        self.assertIsNone(WORLD.sandboxes[theirs]["exit_code"])
        mine = WORLD.add_sandbox(tags=TAGS)
        required = {"parhelia.coordinator": "co-1", "parhelia.container": "ctr-1a2b3c4d"}
        self.assertEqual(self.ok("sandbox.terminate", {"sandbox_id": mine, "require_tags": required}),
                         {"terminated": True})
        self.assertEqual(calls("Sandbox.terminate"), [((), {})])
        self.assertEqual(self.ok("sandbox.terminate", {"sandbox_id": mine, "require_tags": required}),
                         {"terminated": False})
        self.assertEqual(self.ok("sandbox.terminate", {"sandbox_id": "sb-missing", "require_tags": required}),
                         {"terminated": False})

    def test_stats(self):
        sandbox_id = WORLD.add_sandbox(tags=TAGS)
        self.assertEqual(self.ok("sandbox.stats", {"sandbox_id": sandbox_id}), {"available": True, "stats": {
            "since": "2024-01-02T03:04:05+00:00", "duration": 120.0, "cost": 0.0125,
            "cost_by_resource": {"CPU": 0.01}}})
        WORLD.add_sandbox("sb-nostats")
        result = self.ok("sandbox.stats", {"sandbox_id": "sb-nostats"})
        self.assertEqual(result["available"], False)
        self.assertIn("NotImplementedError", result["reason"])

    def test_run(self):
        args = {"app": "parhelia", "image": self.image, "argv": ["echo", "hello"], "env": {"A": "1"},
                "secrets": ["anthropic-api-key"], "volumes": {"/vol": "parhelia-data"}, "workdir": "/home/parhelia",
                "timeout_s": 120}
        self.assertEqual(self.ok("sandbox.run", args), {"exit_code": 0, "stdout": "hello\n", "stderr": ""})
        [(argv, kwargs)] = calls("Sandbox.create")
        self.assertEqual(argv, ("echo", "hello"))
        self.assertEqual(sorted(kwargs), ["app", "env", "image", "secrets", "timeout", "volumes", "workdir"])
        self.assertEqual((kwargs["timeout"], kwargs["env"], kwargs["workdir"]), (120, {"A": "1"}, "/home/parhelia"))
        self.assertEqual([s.name for s in kwargs["secrets"]], ["anthropic-api-key"])
        self.assertEqual(kwargs["volumes"]["/vol"].name, "parhelia-data")
        self.assertEqual(self.ok("sandbox.run", dict(args, argv=["exit", "3"])),
                         {"exit_code": 3, "stdout": "", "stderr": "failed\n"})

    def test_run_past_its_deadline_terminates_the_sandbox(self):
        args = {"app": "parhelia", "image": self.image, "argv": ["hang"]}
        response = self.bridge.handle({"id": 1, "op": "sandbox.run", "args": args}, time.monotonic() + 0.3)
        self.assertEqual(response["error"]["kind"], "timeout")
        self.assertEqual(len(calls("Sandbox.terminate")), 1)


class AppScriptTests(unittest.TestCase):
    """The shell scripts app.py exports, run here with sh."""

    def run_json(self, argv, env=None):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def test_health_check(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "data"))
            os.symlink(os.path.join(tmp, "data"), os.path.join(tmp, "vol"))
            agent = os.path.join(tmp, "agent")
            with open(agent, "w") as f:
                f.write('#!/bin/sh\necho \'parhelia-agent 0.1.0 "quoted"\'\n')
            os.chmod(agent, 0o755)
            claude = os.path.join(tmp, "claude")
            with open(claude, "w") as f:
                f.write('#!/bin/sh\necho "2.1.330 (Claude Code)"\necho second line\n')
            os.chmod(claude, 0o755)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ANTHROPIC_API_KEY": "k"}
            report = self.run_json(app_recipe.HEALTH_CHECK_ARGV(os.path.join(tmp, "vol"), agent, claude), env)
            self.assertEqual(report, {"status": "ok", "volume_mounted": True, "claude_installed": True,
                                      "anthropic_key_set": True, "claude_version": "2.1.330 (Claude Code)",
                                      "agent_version": "parhelia-agent 0.1.0 quoted"})
            env.pop("ANTHROPIC_API_KEY")
            report = self.run_json(app_recipe.HEALTH_CHECK_ARGV(os.path.join(tmp, "data"), "/nonexistent/agent",
                                                                "no-such-claude"), env)
            self.assertEqual(report, {"status": "degraded", "volume_mounted": False, "claude_installed": False,
                                      "anthropic_key_set": False, "claude_version": None, "agent_version": None})

    def test_init_volume(self):
        with tempfile.TemporaryDirectory() as tmp:
            report = self.run_json(app_recipe.INIT_VOLUME_ARGV(tmp))
            self.assertEqual(report, {"status": "ok", "volume": tmp, "dirs": ["sessions", "config", "images"]})
            for directory, text in app_recipe.VOLUME_DIRS:
                with open(os.path.join(tmp, directory, "README")) as f:
                    self.assertEqual(f.read(), text)
            with open(os.path.join(tmp, "config", "README"), "w") as f:
                f.write("mine")
            self.run_json(app_recipe.INIT_VOLUME_ARGV(tmp))
            with open(os.path.join(tmp, "config", "README")) as f:
                self.assertEqual(f.read(), "mine")


class SubprocessTests(unittest.TestCase):
    """The real script over pipes: greeting first, JSON lines, exit statuses."""

    def start(self, env_extra=None, python_args=(), code=None):
        env = dict(os.environ, PYTHONPATH=HERE)
        env.update(env_extra or {})
        code = code or "import test_bridge; test_bridge.run_bridge_with_fake()"
        return subprocess.Popen([sys.executable, *python_args, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, cwd=HERE)

    def test_greeting_then_out_of_order_answers_over_pipes(self):
        proc = self.start()
        greeting = json.loads(proc.stdout.readline())
        self.assertEqual(greeting["id"], 0)
        self.assertTrue(greeting["ok"])
        self.assertEqual(greeting["result"]["protocol"], 1)
        self.assertEqual(greeting["result"]["sdk_version"], "1.6.4")
        requests = [
            {"id": 1, "op": "sandbox.poll", "args": {"sandbox_id": "sb-slow-1"}, "deadline_ms": 10000},
            {"id": 2, "op": "hello", "args": {}},
            {"id": 3, "op": "sandbox.poll", "args": {"sandbox_id": "sb-hang-1"}, "deadline_ms": 300},
            {"id": 4, "op": "no.such.op", "args": {}},
        ]
        out, err = proc.communicate("".join(json.dumps(r) + "\n" for r in requests), timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        answers = [json.loads(line) for line in out.splitlines()]
        ids = [a["id"] for a in answers]
        self.assertEqual(sorted(ids), [1, 2, 3, 4])
        self.assertLess(ids.index(2), ids.index(1))
        self.assertLess(ids.index(3), ids.index(1))
        by_id = {a["id"]: a for a in answers}
        self.assertEqual(by_id[1]["result"], {"running": True, "exit_code": None})
        self.assertEqual(by_id[3]["error"]["kind"], "timeout")
        self.assertEqual(by_id[4]["error"]["kind"], "invalid")

    def test_stray_prints_do_not_reach_the_protocol_stream(self):
        code = ("import test_bridge, builtins; m = test_bridge.install_fake_modal(); "
                "orig = m.App.lookup\n"
                "def noisy(*a, **k):\n    print('noise from the SDK'); return orig(*a, **k)\n"
                "m.App.lookup = staticmethod(noisy)\n"
                "import runpy; runpy.run_path(test_bridge.BRIDGE, run_name='__main__')")
        proc = self.start(code=code)
        out, err = proc.communicate(json.dumps({"id": 5, "op": "app.lookup", "args": {"app": "parhelia"}}) + "\n",
                                    timeout=30)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertEqual(json.loads(lines[1]), {"id": 5, "ok": True, "result": {"app_id": "ap-parhelia"}})
        self.assertIn("noise from the SDK", err)

    def test_sdk_missing(self):
        with tempfile.TemporaryDirectory() as empty:
            env = dict(os.environ, PYTHONPATH=empty)
            proc = subprocess.run([sys.executable, "-S", BRIDGE], input="", capture_output=True, text=True,
                                  env=env, timeout=30)
        self.assertEqual(proc.returncode, 3)
        [line] = proc.stdout.splitlines()
        greeting = json.loads(line)
        self.assertEqual((greeting["id"], greeting["ok"], greeting["error"]["kind"]), (0, False, "sdk_missing"))
        self.assertIn("modal==1.6.4", greeting["error"]["hint"])

    def test_sdk_version(self):
        proc = self.start({"FAKE_MODAL_VERSION": "1.0.0"})
        out, err = proc.communicate("", timeout=30)
        self.assertEqual(proc.returncode, 3)
        greeting = json.loads(out.splitlines()[0])
        self.assertEqual(greeting["error"]["kind"], "sdk_version")
        self.assertIn("1.0.0", greeting["error"]["message"])


if __name__ == "__main__":
    unittest.main()
