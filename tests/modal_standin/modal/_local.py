"""What every part of the stand-in shares: the state root, the credentials check, atomic
JSON files, a cross-process lock and reading processes from /proc (Linux only).

State under $PARHELIA_MODAL_STANDIN_ROOT:

    apps.json                      app name -> {"app_id", "created_at"}
    secrets/<name>.json            a secret: a JSON object of environment variables
    volumes/<name>/                a volume's files
    volume-meta/<name>.json        {"volume_id", "version"}
    images/<image_id>.json         a built image's recipe
    sandboxes/<sandbox_id>/        sandbox.json, stdout, stderr, exit.json, terminated
    lock                           flock()ed around changes that must not interleave
    faults.json                    what a test makes Modal do wrong (written by the test; see `fault`)

Credentials are read as the SDK reads them: `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET` from the
environment at each call, `MODAL_CONFIG_PATH` or `~/.modal.toml` once, when the package is
imported (modal.config's `_user_config`), so a process started before `modal token new`
keeps the token it found. A token id `rejected` (from either) plays a token Modal refuses.
"""

import contextlib
import fcntl
import json
import os
import secrets
import sys
import threading
import time

from .exception import AuthError

ROOT_ENV = "PARHELIA_MODAL_STANDIN_ROOT"
_thread_lock = threading.RLock()


def _read_user_config():
    """The active profile of MODAL_CONFIG_PATH or ~/.modal.toml: {"token_id", "token_secret"}
    (what is there), {} without a file."""
    config = os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml")
    try:
        with open(config, "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    try:
        import tomllib
        profiles = tomllib.loads(raw.decode("utf-8"))
    except ImportError:  # Python < 3.11: the flat `key = "value"` lines `modal token new` writes
        profiles, current = {}, None
        for line in raw.decode("utf-8").splitlines():
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                current = profiles.setdefault(line[1:-1].strip(), {})
            elif "=" in line and current is not None:
                key, value = (part.strip() for part in line.split("=", 1))
                current[key] = value.strip('"') if value not in ("true", "false") else value == "true"
    except ValueError:
        return {}
    tables = {name: table for name, table in profiles.items() if isinstance(table, dict)}
    name = os.environ.get("MODAL_PROFILE") or next(
        (n for n, t in tables.items() if t.get("active") is True), None) or (
        next(iter(tables)) if len(tables) == 1 else "default")
    profile = tables.get(name, {})
    return {k: str(profile[k]) for k in ("token_id", "token_secret") if profile.get(k)}


_user_config = _read_user_config()


def root():
    """The state root (created if needed)."""
    path = os.environ.get(ROOT_ENV)
    if not path:
        raise RuntimeError(
            f"{ROOT_ENV} is not set: the modal stand-in (tests/modal_standin) keeps its apps, "
            "volumes, secrets and sandboxes under that directory; set it to an absolute path")
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    return path


def client():
    """What `Client.from_env()` checks before any call reaches Modal; returns the root."""
    token_id = os.environ.get("MODAL_TOKEN_ID") or _user_config.get("token_id")
    token_secret = os.environ.get("MODAL_TOKEN_SECRET") or _user_config.get("token_secret")
    if token_id == "rejected":
        raise AuthError("Token validation failed: the token was rejected (stand-in: token id `rejected`)")
    if not (token_id and token_secret):
        raise AuthError(
            "Token missing. Could not authenticate client. If you have token credentials, see "
            "modal.com/docs/sdk/py/latest/config for setup help. If you are a new user, register "
            "an account at modal.com, then run `modal token new`.")
    return root()


def fault(name, default=None):
    """One entry of `$ROOT/faults.json`, which a test writes to make Modal misbehave (read at
    each call, so a test changes it while the bridge runs):

        {"no_capacity": ["H100"],        Sandbox.create with that GPU type: ResourceExhaustedError
         "schedule_seconds": {"H100": 30}, Sandbox.create with that GPU type blocks this long
                                          before it creates the sandbox (a scarce GPU)
         "crash": {"Sandbox.create": 1}}  the calling process exits (status 70) at that call,
                                          this many times (a bridge killed mid-call)
    """
    faults = read_json(os.path.join(root(), "faults.json"), {}) or {}
    return faults.get(name, default)


def crash_if_asked(call):
    """Ends this process at `call` when faults.json asks for it (counting down)."""
    with locked():
        file = path("faults.json")
        faults = read_json(file, {}) or {}
        left = (faults.get("crash") or {}).get(call, 0)
        if not left:
            return
        faults["crash"][call] = left - 1
        write_json(file, faults)
    sys.stderr.write(f"modal stand-in: crashing at {call}, as faults.json asks\n")
    sys.stderr.flush()
    os._exit(70)


def count_call(name):
    """Stand-in only: counts SDK calls a test wants to bound (`$ROOT/sdk-calls.json`,
    {name: count}), across every process using the root."""
    with locked():
        file = path("sdk-calls.json")
        counts = read_json(file, {}) or {}
        counts[name] = counts.get(name, 0) + 1
        write_json(file, counts)


def path(*parts):
    return os.path.join(root(), *parts)


def new_id(prefix):
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "-" + "".join(secrets.choice(alphabet) for _ in range(22))


def read_json(file, default=None):
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def write_json(file, value):
    """Atomic: readers see the old or the new file, never a torn one."""
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, file)


@contextlib.contextmanager
def locked():
    """Excludes other threads and other processes using the same root."""
    with _thread_lock:
        fd = os.open(path("lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# ---- /proc -----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """{"state", "ppid", "pgrp", "session", "start", "cpu_ticks"} of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2:].split()
    return {"state": fields[0], "ppid": int(fields[1]), "pgrp": int(fields[2]), "session": int(fields[3]),
            "cpu_ticks": int(fields[11]) + int(fields[12]), "start": int(fields[19])}


def is_alive(pid, start):
    """The process exists, is the one started at `start` (not a reused pid), and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat["start"] == start and stat["state"] not in ("Z", "X", "x")


def all_processes():
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None:
                found[int(name)] = stat
    return found


def process_tree(top):
    """`top` and all its descendants, plus anything still in its session."""
    processes = all_processes()
    children = {}
    for pid, stat in processes.items():
        children.setdefault(stat["ppid"], []).append(pid)
    tree, todo = set(), [top]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    tree.update(pid for pid, stat in processes.items() if stat["session"] == top)
    return {pid for pid in tree if pid in processes and processes[pid]["state"] not in ("Z", "X", "x")}


def listening_ports(pids):
    """TCP ports on which any of `pids` has a LISTEN socket."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    # Every process of a sandbox shares the network namespace: one's tables are all of them.
    for pid in sorted(pids)[:1] + ["self"]:
        if ports:
            break
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{table}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                # local_address is HEX_IP:HEX_PORT; st 0A is LISTEN; the inode is column 9.
                if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def wait_until(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def makedirs_public(path):
    """os.makedirs, with every directory it creates world-passable (0755) whatever the
    umask: a real Modal volume's directories can be entered by every user of the
    container (the session user included)."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    os.makedirs(path, exist_ok=True)
    for directory in missing:
        os.chmod(directory, 0o755)
