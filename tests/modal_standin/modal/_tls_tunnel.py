"""The stand-in's TLS tunnels: what Modal's tunnel front does, on this machine.

A Modal tunnel is TLS terminated by Modal, HTTP/2 chosen by ALPN, in front of a port the
sandbox listens on in the clear. The stand-in does the same: `ensure(sandbox_dir, pid,
start, target)` starts (once per sandbox and port) a small proxy process that accepts TLS
on a loopback port, offers ALPN `h2`, and forwards the decrypted bytes to `target`; it ends
when the sandbox does. Its certificate is issued by a stand-in CA made once per state root
(`$ROOT/tls/ca.pem`, with `openssl`): a client trusts the tunnel only through that file,
as the coordinator does through `PARHELIA_TLS_CA_FILE` (the e2e harness sets it).

Run as a module, this file is the proxy:
    python -m modal._tls_tunnel CERT KEY TARGET_PORT WATCH_PID WATCH_START PORT_FILE
"""

import fcntl
import json
import os
import subprocess
import sys
import time

from . import _local

CA_FILE = "ca.pem"


def _tls_dir():
    path = os.path.join(_local.root(), "tls")
    os.makedirs(path, exist_ok=True)
    return path


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ensure_certificates():
    """(ca, cert, key) paths, made once per state root (under a lock, written aside and
    renamed, so concurrent bridges agree)."""
    tls = _tls_dir()
    paths = tuple(os.path.join(tls, n) for n in (CA_FILE, "tunnel.pem", "tunnel.key"))
    if all(os.path.exists(p) for p in paths):
        return paths
    with open(os.path.join(tls, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(os.path.exists(p) for p in paths):
            return paths
        work = os.path.join(tls, f"new-{os.getpid()}")
        os.makedirs(work, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
                 "-subj", "/CN=parhelia modal stand-in CA", cwd=work)
        _openssl("req", "-new", *ec, "-keyout", "tunnel.key", "-out", "tunnel.csr",
                 "-subj", "/CN=127.0.0.1", cwd=work)
        with open(os.path.join(work, "ext.cnf"), "w") as ext:
            ext.write("basicConstraints=critical,CA:FALSE\n"
                      "keyUsage=critical,digitalSignature\n"
                      "extendedKeyUsage=serverAuth\n"
                      "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", "tunnel.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "tunnel.pem", "-days", "30", "-extfile", "ext.cnf",
                 cwd=work)
        # The key and certificate first, the CA last: its presence says all three are there.
        for name in ("tunnel.key", "tunnel.pem", CA_FILE):
            os.replace(os.path.join(work, name), os.path.join(tls, name))
        for name in os.listdir(work):
            os.remove(os.path.join(work, name))
        os.rmdir(work)
    return paths


def ensure(sandbox_dir, pid, start, target):
    """The loopback port of the TLS tunnel to `target` (a port of the sandbox whose
    supervisor is `pid`, started at `start`), starting its proxy if none is running."""
    _ca, cert, key = ensure_certificates()
    record = os.path.join(sandbox_dir, f"tls-tunnel-{target}.json")
    with open(os.path.join(sandbox_dir, "tls-tunnel.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = _local.read_json(record)
        if known is not None and _local.is_alive(known["pid"], known["start"]):
            return known["port"]
        port_file = record + ".port"
        try:
            os.remove(port_file)
        except FileNotFoundError:
            pass
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        with open(os.path.join(sandbox_dir, f"tls-tunnel-{target}.log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "modal._tls_tunnel", cert, key, str(target), str(pid),
                 str(start), port_file],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with open(port_file) as f:
                    text = f.read()
                if text.endswith("\n"):
                    port = int(text)
                    break
            except FileNotFoundError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TLS tunnel to port {target} did not start")
            time.sleep(0.02)
        started = (_local.proc_stat(proc.pid) or {}).get("start", -1)
        tmp = record + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": proc.pid, "start": started, "port": port}, f)
        os.replace(tmp, record)
        return port


def _serve(cert, key, target, watch_pid, watch_start, port_file):
    import asyncio
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])

    async def pipe(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, port_file)
        # Ends with the sandbox, as a Modal tunnel does.
        while _local.is_alive(watch_pid, watch_start):
            await asyncio.sleep(0.5)
        server.close()

    asyncio.run(main())


if __name__ == "__main__":
    cert, key, target, watch_pid, watch_start, port_file = sys.argv[1:7]
    _serve(cert, key, int(target), int(watch_pid), int(watch_start), port_file)
