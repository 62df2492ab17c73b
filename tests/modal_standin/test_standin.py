"""The real bridge (images/modal/parhelia_bridge.py) over JSON lines, against the stand-in.

    python3 -m unittest discover -s tests/modal_standin -p 'test_*.py' -v

Sandboxes here are real local processes; every test kills what it started.
"""

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BRIDGE = os.path.join(REPO, "images", "modal", "parhelia_bridge.py")
sys.path.insert(0, HERE)

from modal import _local  # noqa: E402  (the stand-in's /proc helpers, for cleanup)

# A tiny TCP server: listens on argv[2] (0: any port), then reports to argv[1].
SERVER = r"""
import json, os, socket, sys
report, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(8)
os.makedirs(os.path.dirname(report), exist_ok=True)
with open(report + ".tmp", "w") as f:
    json.dump({"port": s.getsockname()[1], "cwd": os.getcwd(), "env": dict(os.environ)}, f)
os.replace(report + ".tmp", report)
while True:
    conn, _ = s.accept()
    conn.sendall(b"hello from the sandbox\n")
    conn.close()
"""

TAGS = {"parhelia": "1", "parhelia.coordinator": "co-1", "parhelia.task": "t-1",
        "parhelia.session": "s-1", "parhelia.container": "ctr-1"}


class BridgeProcess:
    """One bridge subprocess; `call` sends a request and waits for its answer."""

    def __init__(self, env, cwd):
        # Run where the coordinator runs it: a directory of its own (the image's build
        # context is made there), not the source tree.
        self.proc = subprocess.Popen([sys.executable, "-u", BRIDGE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, text=True, cwd=cwd)
        self.greeting = json.loads(self.proc.stdout.readline())
        self.answers, self.cond, self.next_id = {}, threading.Condition(), 1
        self.stderr = []
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self):
        for line in self.proc.stdout:
            answer = json.loads(line)
            with self.cond:
                self.answers[answer["id"]] = answer
                self.cond.notify_all()

    def call(self, op, args, deadline_ms=30000):
        with self.cond:
            rid, self.next_id = self.next_id, self.next_id + 1
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, "args": args, "deadline_ms": deadline_ms}) + "\n")
        self.proc.stdin.flush()
        with self.cond:
            if not self.cond.wait_for(lambda: rid in self.answers, deadline_ms / 1000 + 5):
                raise AssertionError(f"no answer to {op}; stderr: {''.join(self.stderr)}")
            return self.answers.pop(rid)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self.readers:
            reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


class StandinTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="standin-")
        self.root = os.path.join(self.tmp, "root")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(os.path.join(self.root, "secrets"))
        os.makedirs(self.home)
        with open(os.path.join(self.root, "secrets", "anthropic-api-key.json"), "w") as f:
            json.dump({"ANTHROPIC_API_KEY": "sk-ant-test"}, f)
        self.mount = os.path.join(self.tmp, "mnt", "vol")
        self.agent_bin = os.path.join(self.tmp, "parhelia-agent")
        with open(self.agent_bin, "w") as f:
            f.write("#!/bin/sh\necho 'parhelia-agent 0.1.0'\n")
        os.chmod(self.agent_bin, 0o755)
        self.bridges = []
        self.addCleanup(self.cleanup)

    def cleanup(self):
        for bridge in self.bridges:
            bridge.close()
        os.environ["PARHELIA_MODAL_STANDIN_ROOT"] = self.root
        try:
            for name in os.listdir(os.path.join(self.root, "sandboxes")):
                meta = _local.read_json(os.path.join(self.root, "sandboxes", name, "sandbox.json"))
                if meta and _local.is_alive(meta["pid"], meta["start"]):
                    for pid in _local.process_tree(meta["pid"]):
                        os.kill(pid, signal.SIGKILL)
        except FileNotFoundError:
            pass
        finally:
            del os.environ["PARHELIA_MODAL_STANDIN_ROOT"]
        subprocess.run(["rm", "-rf", self.tmp])

    def env(self, **changes):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.home,
               "PYTHONPATH": HERE, "PARHELIA_MODAL_STANDIN_ROOT": self.root,
               "MODAL_TOKEN_ID": "ak-standin", "MODAL_TOKEN_SECRET": "as-standin",
               "PARHELIA_TEST_NOT_FOR_SANDBOXES": "leak"}
        env.update(changes)
        return {k: v for k, v in env.items() if v is not None}

    def bridge(self, **env_changes):
        cwd = os.path.join(self.tmp, "bridge")
        os.makedirs(cwd, exist_ok=True)
        bridge = BridgeProcess(self.env(**env_changes), cwd)
        self.bridges.append(bridge)
        self.assertTrue(bridge.greeting["ok"], bridge.greeting)
        return bridge

    def ok(self, bridge, op, args, **kw):
        answer = bridge.call(op, args, **kw)
        self.assertTrue(answer["ok"], f"{op}: {answer}")
        return answer["result"]

    def error(self, bridge, op, args, **kw):
        answer = bridge.call(op, args, **kw)
        self.assertFalse(answer["ok"], f"{op}: {answer}")
        return answer["error"]

    def through_tunnel(self, port, cafile="default"):
        """The first line the sandbox's server sends, read through its TLS tunnel."""
        if cafile == "default":
            cafile = os.path.join(self.root, "tls", "ca.pem")
        context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                self.assertEqual(conn.selected_alpn_protocol(), "h2")
                return conn.makefile().readline()

    def create_args(self, **changes):
        args = {"app": "parhelia", "name": "ctr-1",
                "image": {"agent_bin": self.agent_bin, "claude_code_version": "2.1.330", "agent_version": "0.1.0"},
                "argv": [sys.executable, "-c", SERVER, os.path.join(self.mount, "out", "ctr-1.json"), "0"],
                "env": {"ANTHROPIC_BASE_URL": "http://proxy.invalid", "HOME": self.home},
                "secrets": ["anthropic-api-key"], "inline_secret": {"PARHELIA_SESSION_SECRET": "session-secret"},
                "volumes": {self.mount: "parhelia-data"}, "workdir": os.path.join(self.tmp, "work"),
                "gpu": "A10G:1", "cpu": 2.0, "memory_mib": 4096, "timeout_s": 600, "idle_timeout_s": None,
                "h2_ports": [50051], "tags": TAGS}
        args.update(changes)
        return args

    def wait_for_file(self, bridge, path, dest):
        deadline = time.monotonic() + 15
        while True:
            answer = bridge.call("volume.get", {"volume": "parhelia-data", "path": path, "dest": dest})
            if answer["ok"]:
                with open(dest) as f:
                    return json.load(f)
            self.assertEqual(answer["error"]["kind"], "not_found")
            self.assertLess(time.monotonic(), deadline, f"{path} never appeared")
            time.sleep(0.1)

    def get_tags_calls(self):
        counts = _local.read_json(os.path.join(self.root, "sdk-calls.json"), {}) or {}
        return counts.get("Sandbox.get_tags", 0)

    def poll_until_done(self, bridge, sandbox_id, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            polled = self.ok(bridge, "sandbox.poll", {"sandbox_id": sandbox_id})
            if not polled["running"]:
                return polled["exit_code"]
            self.assertLess(time.monotonic(), deadline, f"{sandbox_id} kept running")
            time.sleep(0.1)


class SandboxLifecycleTests(StandinTestCase):
    def test_create_tunnel_list_restart_and_terminate(self):
        bridge = self.bridge()
        self.assertEqual(bridge.greeting["result"]["sdk_version"], "1.6.4")
        self.assertEqual(bridge.greeting["result"]["credentials"], "env")
        app_id = self.ok(bridge, "app.lookup", {"app": "parhelia"})["app_id"]
        self.assertTrue(app_id.startswith("ap-"))
        self.assertEqual(self.ok(bridge, "secret.check", {"name": "anthropic-api-key"}), {"exists": True})
        self.ok(bridge, "volume.ensure", {"volume": "parhelia-data", "create": True})

        created = self.ok(bridge, "sandbox.create", self.create_args())
        self.assertEqual((created["name"], created["existed"]), ("ctr-1", False))
        sandbox_id = created["sandbox_id"]
        self.assertTrue(sandbox_id.startswith("sb-"))

        # The tunnel fronts the port the server picked with TLS (ALPN h2, a certificate
        # the stand-in's CA issued for 127.0.0.1), and it answers through it.
        tunnels = self.ok(bridge, "sandbox.tunnels", {"sandbox_id": sandbox_id, "timeout_s": 20})["tunnels"]
        self.assertEqual(list(tunnels), ["50051"])
        port = tunnels["50051"]["port"]
        self.assertEqual(tunnels["50051"], {"host": "127.0.0.1", "port": port, "url": f"https://127.0.0.1:{port}"})
        self.assertEqual(self.through_tunnel(port), "hello from the sandbox\n")
        # Not in the clear, and not to a client that does not trust the stand-in's CA.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            try:
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\n")
                clear = conn.recv(100)
            except OSError:
                clear = b""
            self.assertNotIn(b"hello", clear)
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.through_tunnel(port, cafile=None)

        # What the process saw: the volume at its mount, its workdir, env + secrets, nothing else.
        report = self.wait_for_file(bridge, "out/ctr-1.json", os.path.join(self.tmp, "report.json"))
        # The tunnel's port is its TLS front's, not the sandbox's own.
        self.assertNotEqual(report["port"], port)
        self.assertEqual(report["cwd"], os.path.join(self.tmp, "work"))
        env = report["env"]
        self.assertEqual(env["ANTHROPIC_API_KEY"], "sk-ant-test")
        self.assertEqual(env["PARHELIA_SESSION_SECRET"], "session-secret")
        self.assertEqual(env["ANTHROPIC_BASE_URL"], "http://proxy.invalid")
        self.assertEqual(env["HOME"], self.home)
        self.assertNotIn("PARHELIA_TEST_NOT_FOR_SANDBOXES", env)
        self.assertNotIn("MODAL_TOKEN_SECRET", env)
        self.assertTrue(os.path.islink(self.mount))

        mine = {"parhelia.coordinator": "co-1"}
        listed = self.ok(bridge, "sandbox.list", {"app": "parhelia", "tags": mine})["sandboxes"]
        self.assertEqual(listed, [{"sandbox_id": sandbox_id, "tags": TAGS}])
        # The bridge that created it knows its tags: listing looks nothing up.
        self.assertEqual(self.get_tags_calls(), 0)
        self.assertEqual(self.ok(bridge, "sandbox.list", {"app": "parhelia", "tags": {"parhelia.coordinator": "co-2"}}),
                         {"sandboxes": []})
        self.assertEqual(self.ok(bridge, "sandbox.create", self.create_args()),
                         {"sandbox_id": sandbox_id, "name": "ctr-1", "existed": True})
        stats = self.ok(bridge, "sandbox.stats", {"sandbox_id": sandbox_id})
        self.assertTrue(stats["available"])
        self.assertTrue({"since", "until", "duration", "percentile_stats", "cost", "cost_by_resource",
                         "billed_cpu_core_seconds", "billed_memory_gib_seconds"} <= set(stats["stats"]))
        self.assertGreater(stats["stats"]["cost"], 0)

        # A new bridge (the coordinator restarted) sees and controls the same sandbox.
        bridge.close()
        second = self.bridge()
        before = self.get_tags_calls()
        for _ in range(3):
            listed = self.ok(second, "sandbox.list", {"app": "parhelia", "tags": mine})["sandboxes"]
            self.assertEqual([s["sandbox_id"] for s in listed], [sandbox_id])
            self.assertEqual(listed[0]["tags"], TAGS)
        # One lookup for a sandbox it had not seen, then none.
        self.assertEqual(self.get_tags_calls() - before, 1)
        self.assertEqual(self.ok(second, "sandbox.poll", {"sandbox_id": sandbox_id}), {"running": True, "exit_code": None})
        tunnels = self.ok(second, "sandbox.tunnels", {"sandbox_id": sandbox_id, "timeout_s": 5})["tunnels"]
        self.assertEqual(tunnels["50051"]["port"], port)

        refused = self.error(second, "sandbox.terminate",
                             {"sandbox_id": sandbox_id, "require_tags": {"parhelia.coordinator": "co-2"}})
        self.assertEqual(refused["kind"], "invalid")
        self.assertEqual(self.ok(second, "sandbox.poll", {"sandbox_id": sandbox_id})["running"], True)
        required = {"parhelia.coordinator": "co-1", "parhelia.container": "ctr-1"}
        self.assertEqual(self.ok(second, "sandbox.terminate", {"sandbox_id": sandbox_id, "require_tags": required}),
                         {"terminated": True})
        self.assertEqual(self.poll_until_done(second, sandbox_id), 137)
        # A finished sandbox's figures stay available and stop growing.
        final = self.ok(second, "sandbox.stats", {"sandbox_id": sandbox_id})
        later = self.ok(second, "sandbox.stats", {"sandbox_id": sandbox_id})
        for key in ("duration", "cost", "cost_by_resource", "billed_cpu_core_seconds"):
            self.assertEqual(later["stats"][key], final["stats"][key], key)
        self.assertAlmostEqual(final["stats"]["cost"], final["stats"]["duration"] * 0.001)
        # The tunnel ends with the sandbox (its proxy looks twice a second).
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                break
            self.assertLess(time.monotonic(), deadline, "the tunnel outlived its sandbox")
            time.sleep(0.1)
        self.assertEqual(self.ok(second, "sandbox.terminate", {"sandbox_id": sandbox_id, "require_tags": required}),
                         {"terminated": False})
        self.assertEqual(self.ok(second, "sandbox.list", {"app": "parhelia", "tags": mine}), {"sandboxes": []})
        self.assertEqual(self.ok(second, "sandbox.terminate", {"sandbox_id": "sb-doesnotexist", "require_tags": {}}),
                         {"terminated": False})
        self.assertEqual(self.error(second, "sandbox.poll", {"sandbox_id": "sb-doesnotexist"})["kind"], "not_found")

        # The name is free again once the sandbox is gone.
        again = self.ok(second, "sandbox.create", self.create_args())
        self.assertEqual(again["existed"], False)
        self.assertNotEqual(again["sandbox_id"], sandbox_id)
        self.ok(second, "sandbox.terminate", {"sandbox_id": again["sandbox_id"], "require_tags": required})

    def test_a_listening_declared_port_is_used_as_it_is(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        bridge = self.bridge()
        self.ok(bridge, "volume.ensure", {"volume": "parhelia-data", "create": True})
        argv = [sys.executable, "-c", SERVER, os.path.join(self.mount, "out", "fixed.json"), str(free)]
        created = self.ok(bridge, "sandbox.create", self.create_args(name="fixed", argv=argv, h2_ports=[free]))
        tunnels = self.ok(bridge, "sandbox.tunnels", {"sandbox_id": created["sandbox_id"], "timeout_s": 20})
        self.assertEqual(self.through_tunnel(tunnels["tunnels"][str(free)]["port"]), "hello from the sandbox\n")
        report = self.wait_for_file(bridge, "out/fixed.json", os.path.join(self.tmp, "fixed.json"))
        self.assertEqual(report["port"], free)

    def test_tunnels_time_out_when_nothing_listens(self):
        bridge = self.bridge()
        created = self.ok(bridge, "sandbox.create", self.create_args(argv=["sleep", "30"], volumes={}, secrets=[]))
        error = self.error(bridge, "sandbox.tunnels", {"sandbox_id": created["sandbox_id"], "timeout_s": 1})
        self.assertEqual(error["kind"], "timeout")

    def test_timeout_kills_the_sandbox_with_124(self):
        bridge = self.bridge()
        created = self.ok(bridge, "sandbox.create",
                          self.create_args(argv=["sh", "-c", "sleep 30 & sleep 30"], volumes={}, timeout_s=1))
        self.assertEqual(self.poll_until_done(bridge, created["sandbox_id"]), 124)

    def test_run_and_the_app_scripts(self):
        bridge = self.bridge()
        self.ok(bridge, "volume.ensure", {"volume": "parhelia-data", "create": True})
        image = {"agent_bin": self.agent_bin, "claude_code_version": "2.1.330", "agent_version": "0.1.0"}
        ran = self.ok(bridge, "sandbox.run", {"app": "parhelia", "image": image,
                                              "argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
        self.assertEqual(ran, {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"})

        sys.path.insert(0, os.path.dirname(BRIDGE))
        try:
            os.environ["PARHELIA_MODAL_STANDIN_ROOT"] = self.root
            import importlib.util

            spec = importlib.util.spec_from_file_location("app_scripts", os.path.join(os.path.dirname(BRIDGE), "app.py"))
            recipe = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(recipe)
        finally:
            del os.environ["PARHELIA_MODAL_STANDIN_ROOT"]
        common = {"app": "parhelia", "image": image, "volumes": {self.mount: "parhelia-data"},
                  "secrets": ["anthropic-api-key"], "workdir": os.path.join(self.tmp, "work"), "timeout_s": 60}
        ran = self.ok(bridge, "sandbox.run", dict(common, argv=recipe.INIT_VOLUME_ARGV(self.mount)))
        self.assertEqual(ran["exit_code"], 0, ran)
        self.assertEqual(json.loads(ran["stdout"])["status"], "ok")
        listed = self.ok(bridge, "volume.list", {"volume": "parhelia-data", "path": "", "recursive": True})["entries"]
        self.assertTrue({"sessions/README", "config/README", "images/README"}
                        <= {e["path"] for e in listed if e["type"] == "file"})
        ran = self.ok(bridge, "sandbox.run", dict(common, argv=recipe.HEALTH_CHECK_ARGV(self.mount, self.agent_bin)))
        report = json.loads(ran["stdout"])
        self.assertEqual((report["volume_mounted"], report["anthropic_key_set"], report["agent_version"]),
                         (True, True, "parhelia-agent 0.1.0"))

    def test_image_build(self):
        bridge = self.bridge()
        image = {"agent_bin": self.agent_bin, "claude_code_version": "2.1.330", "agent_version": "0.1.0"}
        built = self.ok(bridge, "image.build", {"app": "parhelia", "image": image, "force": False})
        self.assertTrue(built["image_id"].startswith("im-"))
        self.assertTrue(os.path.isfile(os.path.join(self.root, "images", built["image_id"] + ".json")))
        self.assertEqual(built["tag"], "cc2.1.330-agent0.1.0")
        missing = dict(image, agent_bin=os.path.join(self.tmp, "no-agent"))
        self.assertEqual(self.error(bridge, "image.build", {"app": "parhelia", "image": missing})["kind"], "invalid")
        # The recipe holds the Dockerfile as read and the agent's bytes (by digest).
        with open(os.path.join(self.root, "images", built["image_id"] + ".json")) as f:
            [step] = json.load(f)["steps"]
        self.assertEqual(step[0], "from_dockerfile")
        with open(os.path.join(REPO, "images", "Dockerfile")) as f:
            self.assertEqual(step[3]["dockerfile"], f.read().split("\n"))
        with open(self.agent_bin, "rb") as f:
            self.assertEqual(step[3]["context"], {"parhelia-agent": hashlib.sha256(f.read()).hexdigest()})
        # Built again: Modal's cache has it; forced: rebuilt, the same recipe.
        self.ok(bridge, "image.build", {"app": "parhelia", "image": image})
        forced = self.ok(bridge, "image.build", {"app": "parhelia", "image": image, "force": True})
        with open(os.path.join(self.root, "images", "builds.jsonl")) as f:
            builds = [json.loads(line) for line in f]
        self.assertEqual([(b["image_id"], b["force_build"], b["cached"]) for b in builds],
                         [(built["image_id"], False, False), (built["image_id"], False, True),
                          (forced["image_id"], True, False)])
        # Another agent (other bytes, same path): another image.
        with open(self.agent_bin, "ab") as f:
            f.write(b"\n# rebuilt\n")
        os.utime(self.agent_bin, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        other = self.ok(bridge, "image.build", {"app": "parhelia", "image": image})
        self.assertNotEqual(other["image_id"], built["image_id"])

    def test_a_dockerfile_whose_copy_source_is_not_in_the_context_fails_to_build(self):
        import modal
        from unittest import mock
        mock.patch.dict(os.environ, {"MODAL_TOKEN_ID": "ak-t", "MODAL_TOKEN_SECRET": "as-t",
                                     "PARHELIA_MODAL_STANDIN_ROOT": self.root}).start()
        self.addCleanup(mock.patch.stopall)
        context = os.path.join(self.tmp, "ctx")
        os.makedirs(context)
        dockerfile = os.path.join(self.tmp, "Dockerfile")
        with open(dockerfile, "w") as f:
            f.write("FROM debian:bookworm-slim\nCOPY parhelia-agent \\\n  /usr/local/bin/parhelia-agent\n")
        with self.assertRaises(FileNotFoundError):
            modal.Image.from_dockerfile(dockerfile, context_dir=context).build()
        with open(dockerfile, "w") as f:
            f.write("FROM debian:bookworm-slim\nCOPY ../escape /x\n")
        with self.assertRaises(ValueError):
            modal.Image.from_dockerfile(dockerfile, context_dir=context).build()


class VolumeTests(StandinTestCase):
    def test_put_list_get_remove(self):
        bridge = self.bridge()
        self.assertEqual(self.error(bridge, "volume.ensure", {"volume": "parhelia-data", "create": False})["kind"],
                         "not_found")
        self.assertEqual(self.ok(bridge, "volume.ensure", {"volume": "parhelia-data", "create": True}),
                         {"volume": "parhelia-data", "version": 2})
        srcs = {}
        for name, text in (("store.json", "{}\n"), ("layer", "x" * 200_000)):
            srcs[name] = os.path.join(self.tmp, name)
            with open(srcs[name], "w") as f:
                f.write(text)
        prefix = "sessions/s-1/checkpoints"
        files = [{"src": srcs["layer"], "path": f"{prefix}/layers/ab.tar"},
                 {"src": srcs["store.json"], "path": f"{prefix}/store.json"}]
        self.assertEqual(self.ok(bridge, "volume.put", {"volume": "parhelia-data", "files": files}), {"written": 2})
        self.assertEqual(self.ok(bridge, "volume.put", {"volume": "parhelia-data", "files": files}), {"written": 2})

        entries = self.ok(bridge, "volume.list", {"volume": "parhelia-data", "path": prefix, "recursive": True})["entries"]
        self.assertEqual([(e["path"], e["type"], e["size"]) for e in entries], [
            (f"{prefix}/layers", "directory", 0), (f"{prefix}/store.json", "file", 3),
            (f"{prefix}/layers/ab.tar", "file", 200_000)])
        self.assertTrue(all(isinstance(e["mtime"], float) for e in entries))
        shallow = self.ok(bridge, "volume.list", {"volume": "parhelia-data", "path": prefix})["entries"]
        self.assertEqual([e["path"] for e in shallow], [f"{prefix}/layers", f"{prefix}/store.json"])
        self.assertEqual(self.ok(bridge, "volume.list", {"volume": "parhelia-data", "path": "sessions/nope"}),
                         {"entries": []})
        self.assertEqual(self.error(bridge, "volume.list", {"volume": "absent", "path": ""})["kind"], "not_found")

        dest = os.path.join(self.tmp, "mirror", "ab.tar")
        self.assertEqual(self.ok(bridge, "volume.get", {"volume": "parhelia-data", "path": f"{prefix}/layers/ab.tar",
                                                        "dest": dest}), {"size": 200_000})
        with open(dest) as f:
            self.assertEqual(f.read(), "x" * 200_000)
        self.assertFalse(os.path.exists(dest + ".part"))
        missing = self.error(bridge, "volume.get", {"volume": "parhelia-data", "path": f"{prefix}/nope", "dest": dest + "2"})
        self.assertEqual(missing["kind"], "not_found")

        self.assertEqual(self.ok(bridge, "volume.remove", {"volume": "parhelia-data", "path": f"{prefix}/store.json"}),
                         {"removed": True})
        self.assertEqual(self.ok(bridge, "volume.remove", {"volume": "parhelia-data", "path": f"{prefix}/store.json"}),
                         {"removed": False})
        self.assertEqual(self.error(bridge, "volume.remove", {"volume": "parhelia-data", "path": prefix})["kind"],
                         "invalid")
        self.assertEqual(self.ok(bridge, "volume.remove", {"volume": "parhelia-data", "path": prefix, "recursive": True}),
                         {"removed": True})
        self.assertEqual(self.ok(bridge, "volume.list", {"volume": "parhelia-data", "path": prefix}), {"entries": []})


class FaultTests(StandinTestCase):
    """faults.json: what a test makes Modal do wrong (see modal/_local.py `fault`)."""

    def faults(self, value):
        with open(os.path.join(self.root, "faults.json"), "w") as f:
            json.dump(value, f)

    def bridge(self, **env_changes):
        bridge = super().bridge(**env_changes)
        self.ok(bridge, "volume.ensure", {"volume": "parhelia-data", "create": True})
        return bridge

    def test_too_many_gpus_are_invalid_as_modal_refuses_them(self):
        bridge = self.bridge()
        error = self.error(bridge, "sandbox.create", self.create_args(gpu="H100:9"))
        self.assertEqual(error["kind"], "invalid")
        self.assertIn("at most 8", error["message"])
        self.assertEqual(self.error(bridge, "sandbox.create", self.create_args(gpu="A10G:5"))["kind"], "invalid")

    def test_no_capacity_for_a_gpu_type(self):
        self.faults({"no_capacity": ["H100"]})
        bridge = self.bridge()
        error = self.error(bridge, "sandbox.create", self.create_args(gpu="H100!:2"))
        self.assertEqual(error["kind"], "capacity")
        self.assertFalse(os.path.isdir(os.path.join(self.root, "sandboxes")) and
                         os.listdir(os.path.join(self.root, "sandboxes")))
        self.ok(bridge, "sandbox.create", self.create_args(gpu="L40S"))

    def test_a_slow_gpu_outlives_the_deadline_and_the_sandbox_comes_late(self):
        self.faults({"schedule_seconds": {"H100": 2}})
        bridge = self.bridge()
        self.assertEqual(self.error(bridge, "sandbox.create", self.create_args(gpu="H100"),
                                    deadline_ms=500)["kind"], "timeout")
        sandboxes = os.path.join(self.root, "sandboxes")
        self.assertTrue(_local.wait_until(lambda: os.path.isdir(sandboxes) and os.listdir(sandboxes), 15))

    def test_a_crash_ends_the_bridge_once(self):
        self.faults({"crash": {"Sandbox.create": 1}})
        bridge = self.bridge()
        bridge.proc.stdin.write(json.dumps({"id": 1, "op": "sandbox.create", "args": self.create_args()}) + "\n")
        bridge.proc.stdin.flush()
        self.assertEqual(bridge.proc.wait(15), 70)
        self.ok(self.bridge(), "sandbox.create", self.create_args())


class CredentialsAndSecretsTests(StandinTestCase):
    def test_a_missing_secret(self):
        bridge = self.bridge()
        self.assertEqual(self.error(bridge, "secret.check", {"name": "nope"})["kind"], "secret_missing")
        error = self.error(bridge, "sandbox.create", self.create_args(secrets=["nope"], volumes={}))
        self.assertEqual(error["kind"], "secret_missing")
        self.assertFalse(os.path.isdir(os.path.join(self.root, "sandboxes")) and
                         os.listdir(os.path.join(self.root, "sandboxes")))

    def test_no_credentials_is_auth_missing(self):
        bridge = self.bridge(MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None)
        self.assertEqual(bridge.greeting["result"]["credentials"], "none")
        error = self.error(bridge, "app.lookup", {"app": "parhelia"})
        self.assertEqual(error["kind"], "auth_missing")
        self.assertIn("modal token new", error["hint"])
        self.assertEqual(self.error(bridge, "sandbox.list", {"app": "parhelia", "tags": {}})["kind"], "auth_missing")

    def test_a_config_file_counts_as_credentials(self):
        with open(os.path.join(self.home, ".modal.toml"), "w") as f:
            f.write('[default]\ntoken_id = "ak-x"\ntoken_secret = "as-x"\n')
        bridge = self.bridge(MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None)
        self.assertEqual(bridge.greeting["result"]["credentials"], "file")
        self.ok(bridge, "app.lookup", {"app": "parhelia"})

    def test_a_rejected_token_is_auth(self):
        bridge = self.bridge(MODAL_TOKEN_ID="rejected")
        self.assertEqual(self.error(bridge, "app.lookup", {"app": "parhelia"})["kind"], "auth")

    def test_a_rejected_token_in_the_config_file_is_auth(self):
        with open(os.path.join(self.home, ".modal.toml"), "w") as f:
            f.write('[default]\ntoken_id = "rejected"\ntoken_secret = "as-x"\nactive = true\n')
        bridge = self.bridge(MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None)
        self.assertEqual(self.error(bridge, "app.lookup", {"app": "parhelia"})["kind"], "auth")

    def test_the_config_file_is_read_once_when_the_sdk_is_imported(self):
        # As modal.config reads ~/.modal.toml at import: `modal token new` after the bridge
        # started does not reach it; a new bridge sees the new token.
        bridge = self.bridge(MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None)
        with open(os.path.join(self.home, ".modal.toml"), "w") as f:
            f.write('[default]\ntoken_id = "ak-new"\ntoken_secret = "as-new"\nactive = true\n')
        self.assertEqual(self.error(bridge, "app.lookup", {"app": "parhelia"})["kind"], "auth_missing")
        self.ok(self.bridge(MODAL_TOKEN_ID=None, MODAL_TOKEN_SECRET=None), "app.lookup", {"app": "parhelia"})

    def test_no_state_root_is_a_clear_internal_error(self):
        bridge = self.bridge(PARHELIA_MODAL_STANDIN_ROOT=None)
        error = self.error(bridge, "app.lookup", {"app": "parhelia"})
        self.assertEqual(error["kind"], "internal")
        self.assertIn("PARHELIA_MODAL_STANDIN_ROOT is not set", error["message"])


if __name__ == "__main__":
    unittest.main()
