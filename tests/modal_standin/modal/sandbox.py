"""The stand-in's `modal.Sandbox`: a sandbox is a local process tree.

`create` starts a small supervisor (Python, in a new session, so its pid is also the
process group) that runs argv as its child and acts like the container's init: it adopts
orphans (PR_SET_CHILD_SUBREAPER, so a daemonizing tmux is still ours), forwards SIGTERM
to the whole tree and SIGKILLs it after a grace period, enforces `timeout`, stops the
rest of the tree when argv exits, and writes the exit code to `exit.json` (124 after a
timeout, 137 after terminate, as Modal reports them). Everything about a sandbox lives in
`$ROOT/sandboxes/<id>/`, so another process (a restarted bridge) can list, poll and
terminate sandboxes it did not start. A sandbox is running while its supervisor is alive
and not a zombie; the start time from /proc guards against a reused pid.

Volumes are mounted by making the mount path a symlink to the volume's directory, and a
tunnel fronts the loopback port the sandbox's processes listen on (the declared port when
something listens on it, else the listening ports in ascending order) with TLS, as Modal's
does: its `url` is `https://127.0.0.1:<port>`, the port a proxy's (`_tls_tunnel`) whose
certificate the stand-in's own CA (`$ROOT/tls/ca.pem`) issued; `unencrypted_port` is the
sandbox's port itself.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Optional

from . import _local, _tls_tunnel
from .exception import (AlreadyExistsError, InvalidError, NotFoundError, ResourceExhaustedError,
                        SandboxTerminatedError, SandboxTimeoutError)

GRACE_SECONDS = 8  # the supervisor's SIGTERM -> SIGKILL delay
TERMINATE_KILL_AFTER = 10  # terminate()'s own SIGKILL, should the supervisor not finish

SUPERVISOR = r"""
import ctypes, json, os, signal, sys, time
sandbox_dir, timeout, grace, argv = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
os.umask(0o022)  # a container's usual umask, not the coordinator's private one
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
me = os.getpid()

def tree():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    text = f.read()
            except OSError:
                continue
            children.setdefault(int(text[text.rindex(")") + 2:].split()[1]), []).append(int(name))
    found, todo = [], list(children.get(me, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found

def signal_tree(sig):
    for pid in tree():
        try:
            os.kill(pid, sig)
        except OSError:
            pass

state = {"reason": None, "kill_at": None}

def stop(reason):
    if state["reason"] is None:
        state["reason"] = reason
        state["kill_at"] = time.monotonic() + grace
    signal_tree(signal.SIGTERM)

signal.signal(signal.SIGTERM, lambda *_: stop("terminated"))
signal.signal(signal.SIGINT, lambda *_: stop("terminated"))
signal.signal(signal.SIGHUP, signal.SIG_IGN)

def finish(code, reason):
    tmp = os.path.join(sandbox_dir, "exit.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"exit_code": code, "reason": reason, "ended_at": time.time()}, f)
    os.replace(tmp, os.path.join(sandbox_dir, "exit.json"))
    sys.exit(0)

try:
    main = os.posix_spawnp(argv[0], argv, dict(os.environ),
                           setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
except OSError as e:
    sys.stderr.write("sandbox: cannot run %s: %s\n" % (argv[0], e))
    sys.stderr.flush()
    finish(126 if isinstance(e, PermissionError) else 127, "exec")
deadline = time.monotonic() + timeout if timeout > 0 else None
status = None
while status is None:
    try:
        pid, raw = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pid, raw = 0, 0
    if pid == main:
        status = raw
        break
    if pid:
        continue
    now = time.monotonic()
    if deadline is not None and now >= deadline and state["reason"] is None:
        stop("timeout")
    if state["kill_at"] is not None and now >= state["kill_at"]:
        signal_tree(signal.SIGKILL)
    time.sleep(0.05)
# argv has exited: like a container, the rest goes with it.
signal_tree(signal.SIGKILL)
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
            time.sleep(0.02)
    except ChildProcessError:
        break
code = os.waitstatus_to_exitcode(status)
if code < 0:
    code = 128 - code
if state["reason"] == "timeout":
    code = 124
elif state["reason"] == "terminated":
    code = 137
finish(code, state["reason"] or "exited")
"""

# What a stand-in sandbox costs per second of wall clock (Modal's `cost`), and how long after a
# sandbox ended its usage shows up (Modal reports usage minutes late; until then `cost` is None).
USD_PER_SECOND_VAR = "PARHELIA_MODAL_STANDIN_USD_PER_SECOND"
STATS_DELAY_VAR = "PARHELIA_MODAL_STANDIN_STATS_DELAY_SECONDS"

# Supervisors this process started: reaped by a thread each, so they never linger as zombies.
_children = {}
_children_lock = threading.Lock()


def _reap(proc):
    proc.wait()


@dataclass(frozen=True)
class Tunnel:
    host: str
    port: int
    unencrypted_host: str = ""
    unencrypted_port: int = 0

    @property
    def url(self):
        return f"https://{self.host}:{self.port}"

    @property
    def tls_socket(self):
        return (self.host, self.port)


@dataclass(frozen=True)
class StatsPercentile:
    percentile: float
    value: float


@dataclass(frozen=True)
class StatsPercentileDistribution:
    unit: str
    percentiles: list


@dataclass(frozen=True)
class SandboxStats:
    """As `modal.types.SandboxStats` in 1.6.4: what `_experimental_stats()` returns."""

    since: datetime
    until: datetime
    duration: timedelta
    percentile_stats: dict
    cost: Optional[Decimal]
    cost_by_resource: dict
    billed_cpu_core_seconds: float
    billed_memory_gib_seconds: float


def _requested(value, default):
    """A resource request as given to `create` (a number or (request, limit))."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return float(value) if value is not None else default


class StreamReader:
    def __init__(self, sandbox, name):
        self._sandbox, self._name = sandbox, name

    def read(self):
        """All of the stream: like Modal's, it ends when the sandbox does."""
        self._sandbox._wait_done()
        with open(os.path.join(self._sandbox._dir, self._name), encoding="utf-8", errors="replace") as f:
            return f.read()


def _sandboxes_dir():
    return _local.path("sandboxes")


def _load(sandbox_id):
    return _local.read_json(os.path.join(_sandboxes_dir(), sandbox_id, "sandbox.json"))


def _all():
    try:
        names = os.listdir(_sandboxes_dir())
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        meta = _load(name)
        if meta is not None:
            found.append(meta)
    return sorted(found, key=lambda m: m["created_at"], reverse=True)


def _running(meta):
    return _local.is_alive(meta["pid"], meta["start"])


# GPUs per container Modal's server accepts (its docs: up to 8, A10G up to 4); more is
# INVALID_ARGUMENT, which the SDK raises as InvalidError.
MAX_GPUS = {"A10G": 4}
MAX_GPUS_DEFAULT = 8


def _schedule_gpu(gpu):
    """What Modal's scheduler does with a GPU request before a sandbox exists: refuses a
    count past the limit, and, as `faults.json` asks (see _local.fault), has no capacity
    for a type or takes a while to find one."""
    if gpu is None:
        return
    name, _, count = str(gpu).partition(":")
    gpu_type = name.rstrip("!").upper()
    count = int(count) if count.isdigit() else 1
    most = MAX_GPUS.get(gpu_type, MAX_GPUS_DEFAULT)
    if count > most:
        raise InvalidError(f"GPU count {count} for {gpu_type} is not supported: at most {most} per container")
    if gpu_type in (_local.fault("no_capacity") or []):
        raise ResourceExhaustedError(f"No capacity for GPU type {gpu_type} right now (stand-in: faults.json)")
    delay = (_local.fault("schedule_seconds") or {}).get(gpu_type)
    if delay:
        time.sleep(float(delay))


def _mount(mount_path, target):
    mount_path = os.path.abspath(mount_path)
    if os.path.islink(mount_path):
        if os.path.realpath(mount_path) == os.path.realpath(target):
            return
        raise InvalidError(f"{mount_path} is a symlink to {os.readlink(mount_path)}, not to this volume")
    if os.path.lexists(mount_path):
        raise InvalidError(f"cannot mount a volume at {mount_path}: something is there")
    os.makedirs(os.path.dirname(mount_path), exist_ok=True)
    os.symlink(target, mount_path)


class Sandbox:
    def __init__(self, sandbox_id):
        self._id = sandbox_id
        self._dir = os.path.join(_sandboxes_dir(), sandbox_id)

    # ---- creating and finding ---------------------------------------------------------

    @staticmethod
    def create(*args, app=None, name=None, tags=None, image=None, env=None, secrets=None,
               network_file_systems={}, timeout=300, idle_timeout=None, workdir=None, gpu=None, cloud=None,
               region=None, cpu=None, memory=None, runtime=None, block_network=False, outbound_cidr_allowlist=None,
               outbound_domain_allowlist=None, _experimental_outbound_policy=None, inbound_cidr_allowlist=None,
               volumes={}, pty=False, encrypted_ports=[], h2_ports=[], unencrypted_ports=[], custom_domain=None,
               proxy=None, include_oidc_identity_token=False, readiness_probe=None, verbose=False,
               experimental_options=None, _experimental_enable_snapshot=False, _experimental_persistent=False,
               client=None, environment_name=None, pty_info=None, cidr_allowlist=None):
        _local.client()
        _local.crash_if_asked("Sandbox.create")
        if app is None or not getattr(app, "app_id", None):
            raise InvalidError("App is required when creating a Sandbox from outside a Modal container")
        if not args or not all(isinstance(a, str) for a in args):
            raise InvalidError("the stand-in needs a command of strings (it has no image CMD)")
        if workdir is not None and not os.path.isabs(workdir):
            raise InvalidError(f"workdir must be an absolute path, got {workdir!r}")
        if image is not None:
            image.check_local_files()
        process_env = {
            "PATH": (env or {}).get("PATH") or os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": (env or {}).get("HOME") or os.environ.get("HOME", "/"),
            "TMPDIR": (env or {}).get("TMPDIR") or os.environ.get("TMPDIR", "/tmp"),
        }
        process_env.update({k: v for k, v in (env or {}).items() if v is not None})
        for secret in secrets or []:
            process_env.update(secret.values())
        _schedule_gpu(gpu)
        mounts = {str(mount): vol.storage_dir() for mount, vol in volumes.items()}
        ports = [int(p) for p in list(h2_ports) + list(encrypted_ports) + list(unencrypted_ports)]
        with _local.locked():
            if name is not None:
                for meta in _all():
                    if meta["app_id"] == app.app_id and meta["name"] == name and _running(meta):
                        raise AlreadyExistsError(f"Sandbox with name '{name}' already exists in the app")
            for mount, target in mounts.items():
                _mount(mount, target)
            sandbox_id = _local.new_id("sb")
            directory = os.path.join(_sandboxes_dir(), sandbox_id)
            os.makedirs(directory)
            cwd = workdir or directory
            os.makedirs(cwd, exist_ok=True)
            with open(os.path.join(directory, "stdout"), "wb") as out, \
                    open(os.path.join(directory, "stderr"), "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", SUPERVISOR, directory, str(timeout or 0), str(GRACE_SECONDS), *args],
                    cwd=cwd, env=process_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True)
            stat = _local.proc_stat(proc.pid)
            meta = {
                "sandbox_id": sandbox_id, "name": name, "app_id": app.app_id, "app_name": app.name,
                "tags": dict(tags or {}), "pid": proc.pid, "start": stat["start"] if stat else -1,
                "argv": list(args), "env_keys": sorted(process_env),
                "env_arg_keys": sorted((env or {}).keys()),
                "secret_names": [getattr(s, "_name", None) or "(inline)" for s in secrets or []],
                "secret_required_keys": {s._name: list(s._required) for s in secrets or [] if getattr(s, "_name", None)},
                "region": region, "gpu": gpu, "cpu": cpu, "memory": memory,
                "timeout": timeout, "idle_timeout": idle_timeout, "workdir": workdir,
                "volumes": {m: getattr(v, "name", None) for m, v in volumes.items()}, "ports": ports,
                "h2_ports": list(h2_ports), "image_id": getattr(image, "object_id", None), "created_at": time.time(),
            }
            _local.write_json(os.path.join(directory, "sandbox.json"), meta)
        with _children_lock:
            _children[sandbox_id] = proc
        threading.Thread(target=_reap, args=(proc,), daemon=True, name=f"reap-{sandbox_id}").start()
        return Sandbox(sandbox_id)

    @staticmethod
    def from_id(sandbox_id, client=None):
        _local.client()
        if not isinstance(sandbox_id, str) or "/" in sandbox_id or _load(sandbox_id) is None:
            raise NotFoundError(f"Sandbox {sandbox_id} not found")
        return Sandbox(sandbox_id)

    @staticmethod
    def from_name(app_name, name, *, environment_name=None, include_terminated=False, client=None):
        _local.client()
        app = _local.read_json(_local.path("apps.json"), {}).get(app_name)
        if app is None:
            raise NotFoundError(f"App '{app_name}' not found in environment 'main'")
        for meta in _all():
            if meta["app_id"] == app["app_id"] and meta["name"] == name and (include_terminated or _running(meta)):
                return Sandbox(meta["sandbox_id"])
        raise NotFoundError(f"Sandbox with name '{name}' not found in app '{app_name}'")

    @staticmethod
    def list(*, app_id=None, tags=None, client=None):
        _local.client()
        for meta in _all():
            if app_id is not None and meta["app_id"] != app_id:
                continue
            if not all(meta["tags"].get(k) == v for k, v in (tags or {}).items()):
                continue
            if _running(meta):
                yield Sandbox(meta["sandbox_id"])

    # ---- a handle ---------------------------------------------------------------------

    @property
    def object_id(self):
        return self._id

    def _meta(self):
        meta = _load(self._id)
        if meta is None:
            raise NotFoundError(f"Sandbox {self._id} not found")
        return meta

    def _result(self):
        """(exit code, reason) once finished, else None."""
        meta = self._meta()
        if _running(meta):
            return None
        done = _local.read_json(os.path.join(self._dir, "exit.json"))
        if done is not None:
            return done["exit_code"], done["reason"]
        # The supervisor was killed before it could write: say what we know.
        if os.path.exists(os.path.join(self._dir, "terminated")):
            return 137, "terminated"
        return 255, "lost"

    def get_tags(self):
        _local.count_call("Sandbox.get_tags")
        return dict(self._meta()["tags"])

    def set_tags(self, tags, *, client=None):
        with _local.locked():
            meta = self._meta()
            meta["tags"] = dict(tags)
            _local.write_json(os.path.join(self._dir, "sandbox.json"), meta)

    def poll(self):
        return self.returncode

    @property
    def returncode(self):
        result = self._result()
        return None if result is None else result[0]

    def _wait_done(self):
        with _children_lock:
            proc = _children.get(self._id)
        if proc is not None:
            proc.wait()
        while self._result() is None:
            time.sleep(0.05)
        return self._result()

    def wait(self, raise_on_termination=True):
        code, reason = self._wait_done()
        if reason == "timeout":
            raise SandboxTimeoutError()
        if reason == "terminated" and raise_on_termination:
            raise SandboxTerminatedError()

    def terminate(self, *, wait=False):
        meta = self._meta()
        if _running(meta):
            open(os.path.join(self._dir, "terminated"), "w").close()
            try:
                os.killpg(meta["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            threading.Thread(target=self._kill_later, args=(meta,), daemon=True).start()
        if wait:
            self.wait(raise_on_termination=False)
            return self.returncode
        return None

    def _kill_later(self, meta):
        time.sleep(TERMINATE_KILL_AFTER)
        if _running(meta):
            for pid in _local.process_tree(meta["pid"]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def tunnels(self, timeout=50):
        meta = self._meta()
        declared = meta["ports"]
        if not declared:
            return {}
        deadline = time.monotonic() + timeout
        while True:
            if not _running(meta):
                raise SandboxTimeoutError(f"Sandbox {self._id} has finished: no tunnels")
            listening = sorted(_local.listening_ports(_local.process_tree(meta["pid"])))
            spare = [p for p in listening if p not in declared]
            found = {}
            for port in declared:
                if port in listening:
                    found[port] = port
                elif spare:
                    found[port] = spare.pop(0)
            if len(found) == len(declared):
                # Each behind a TLS front of its own, as Modal's tunnels are.
                return {port: Tunnel(host="127.0.0.1",
                                     port=_tls_tunnel.ensure(self._dir, meta["pid"], meta["start"], actual),
                                     unencrypted_host="127.0.0.1", unencrypted_port=actual)
                        for port, actual in found.items()}
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(f"no process of sandbox {self._id} listened within {timeout} s")
            time.sleep(0.1)

    def _experimental_stats(self, *, since=None, until=None):
        """Statistics over [since, until) (default: the sandbox's life so far), also for a
        finished sandbox. `cost` is the wall-clock seconds the sandbox ran in the range times
        $PARHELIA_MODAL_STANDIN_USD_PER_SECOND (default 0.001), all of it under `CPU`; it is
        None (no usage recorded) while the sandbox runs or ended less than
        $PARHELIA_MODAL_STANDIN_STATS_DELAY_SECONDS ago, when that is set (default 0: always)."""
        meta = self._meta()
        now = time.time()
        if since is not None and since.tzinfo is None:
            since = since.astimezone()
        if until is not None and until.tzinfo is None:
            until = until.astimezone()
        if since is not None and until is not None and since >= until:
            raise InvalidError("`since` must be before `until`.")
        start = since.timestamp() if since is not None else meta["created_at"]
        stop = until.timestamp() if until is not None else now
        done = _local.read_json(os.path.join(self._dir, "exit.json"))
        running = _running(meta)
        ended = done["ended_at"] if done else (None if running else self._gone_at(now))
        ran = max(0.0, min(ended if ended is not None else now, stop) - max(meta["created_at"], start))
        delay = float(os.environ.get(STATS_DELAY_VAR, "0"))
        reported = delay <= 0 or (ended is not None and now - ended >= delay)
        rate = float(os.environ.get(USD_PER_SECOND_VAR, "0.001"))
        cores = _requested(meta.get("cpu"), 0.125)
        gib = _requested(meta.get("memory"), 128.0) / 1024
        percentiles = {}
        if running and ran > 0:
            ticks = sum((_local.proc_stat(pid) or {"cpu_ticks": 0})["cpu_ticks"]
                        for pid in _local.process_tree(meta["pid"]))
            used = ticks / _local.CLOCK_TICKS / ran
            percentiles["CPU Usage (cores)"] = StatsPercentileDistribution(
                unit="cores", percentiles=[StatsPercentile(p, used) for p in (50.0, 90.0, 99.0)])
        cost = Decimal(ran * rate) if reported else None
        return SandboxStats(
            since=datetime.fromtimestamp(start, timezone.utc),
            until=datetime.fromtimestamp(stop, timezone.utc),
            duration=timedelta(seconds=ran),
            percentile_stats=percentiles if reported else {},
            cost=cost,
            cost_by_resource={"CPU": cost} if reported else {},
            billed_cpu_core_seconds=ran * cores if reported else 0.0,
            billed_memory_gib_seconds=ran * gib if reported else 0.0,
        )

    def _gone_at(self, default):
        """When a sandbox whose supervisor died without writing exit.json ended, roughly."""
        for name in ("terminated", "stderr", "stdout"):
            try:
                return os.path.getmtime(os.path.join(self._dir, name))
            except OSError:
                continue
        return default

    @property
    def stdout(self):
        return StreamReader(self, "stdout")

    @property
    def stderr(self):
        return StreamReader(self, "stderr")

    def detach(self):
        pass
