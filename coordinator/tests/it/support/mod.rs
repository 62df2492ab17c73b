//! A world for end-to-end tests of the control plane: a private state
//! directory, the real `parhelia` and `parhelia-agent` binaries, real tmux,
//! and a fake `claude` (a shell script speaking headless stream-json, like
//! the agent's own tests use) so sessions are fast and scripted.
//!
//! The prompt steers the fake: `hang` blocks the turn until the process is
//! signalled; `stream` prints many assistant lines slowly; `fail-once`
//! ends with an error result the first time (per world) and succeeds after;
//! anything else finishes one turn at once.

#![allow(dead_code)] // each test file uses a different part

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FAKE_CLAUDE: &str = r#"#!/bin/sh
# A stand-in for Claude Code in headless stream-json mode.
settings=""; prev=""
for arg in "$@"; do
  [ "$prev" = "--settings" ] && settings="$arg"
  prev="$arg"
done
hook_command=$(sed -n 's/^ *"command": "\(.*\)",\{0,1\}$/\1/p' "$settings" | head -n 1)
hook() { printf '{"hook_event_name":"%s","session_id":"fake"}' "$1" | eval "$hook_command"; }
trap 'kill "$sleeper" 2>/dev/null; exit 143' TERM
hook SessionStart
n=0
while IFS= read -r line; do
  n=$((n + 1))
  hook UserPromptSubmit
  printf '{"type":"system","subtype":"init","cwd":"%s","session_id":"fake","tools":["Bash"],"model":"fake-model","claude_code_version":"0.0.0-fake"}\n' "$PWD"
  error=false
  case "$line" in
    *hang-once*)
      if [ ! -e "$CLAUDE_CODE_FAKE_STATE/hung-once" ]; then
        touch "$CLAUDE_CODE_FAKE_STATE/hung-once"; sleep 1000 & sleeper=$!; wait "$sleeper"
      fi ;;
    *hang*) sleep 1000 & sleeper=$!; wait "$sleeper" ;;
    *stream*)
      i=0
      while [ $i -lt 120 ]; do
        i=$((i + 1))
        printf '{"type":"assistant","message":{"id":"msg_s%s","content":[{"type":"text","text":"chunk %s"}]}}\n' "$i" "$i"
        sleep 0.03
      done ;;
    *fail-once*)
      if [ ! -e "$CLAUDE_CODE_FAKE_STATE/failed-once" ]; then
        touch "$CLAUDE_CODE_FAKE_STATE/failed-once"; error=true
      fi ;;
  esac
  if [ "$error" = true ]; then
    printf '{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":1,"result":"it broke","total_cost_usd":0.01,"usage":{"input_tokens":10,"output_tokens":5}}\n'
  else
    printf '{"type":"assistant","message":{"id":"msg_%s","content":[{"type":"text","text":"turn %s"}]}}\n' "$n" "$n"
    printf '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"done %s","total_cost_usd":0.0%s,"usage":{"input_tokens":10,"output_tokens":5}}\n' "$n" "$n"
  fi
  hook Stop
done
hook SessionEnd
"#;

/// `target/<profile>/`, where cargo puts the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_parhelia"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

pub fn agent_bin() -> PathBuf {
    let agent = bin_dir().join("parhelia-agent");
    assert!(
        agent.exists(),
        "parhelia-agent is not built: run `cargo build --workspace --bins` first (scripts/test does)"
    );
    agent
}

/// Generous bounds that only stop a broken test from hanging; nothing
/// asserts on how fast anything is.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct World {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Processes a test started itself (look-alikes, hand-started agents).
    pub children: Vec<std::process::Child>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        // The e2e harness's reaper: a test killed before `Drop` (a nextest timeout, a ^C)
        // leaves no coordinator, agent or tmux server of its directory running.
        parhelia_testkit::procs::reap_when_killed(dir.path());
        let root = dir.path();
        for sub in [".parhelia", "bin", "fake-state", "tmux-tmpdir"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let fake = root.join("bin/claude");
        std::fs::write(&fake, FAKE_CLAUDE).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![
            ("PARHELIA_CLAUDE_BIN".into(), fake.display().to_string()),
            (
                "PARHELIA_AGENT_BIN".into(),
                agent_bin().display().to_string(),
            ),
            ("PARHELIA_HEARTBEAT_INTERVAL_MS".into(), "200".into()),
            ("PARHELIA_ISOLATION".into(), "none".into()),
            (
                "PARHELIA_RECONCILER_POLL_INTERVAL_SECONDS".into(),
                "0.2".into(),
            ),
            (
                "CLAUDE_CODE_FAKE_STATE".into(),
                root.join("fake-state").display().to_string(),
            ),
            (
                "TMUX_TMPDIR".into(),
                root.join("tmux-tmpdir").display().to_string(),
            ),
        ];
        World {
            dir,
            env,
            children: Vec::new(),
        }
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        std::fs::canonicalize(self.root().join(".parhelia")).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_parhelia"));
        cmd.args(args).current_dir(self.root());
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("PARHELIA_") || name.starts_with("ANTHROPIC_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("HOME", self.root());
        for key in parhelia_testkit::procs::NOT_INHERITED {
            cmd.env_remove(key);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run parhelia")
    }

    /// Runs `parhelia ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "parhelia {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}\ncoordinator log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.coordinator_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }

    pub fn coordinator_log(&self) -> String {
        std::fs::read_to_string(self.root().join(".parhelia/coordinator.log")).unwrap_or_default()
    }

    /// Polls `probe` (every 50 ms) until it returns `Some`.
    pub fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}\ncoordinator log:\n{}",
                self.coordinator_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn task(&self, task_id: &str) -> serde_json::Value {
        self.json(&["task", "show", task_id, "--json"])
    }

    pub fn wait_task(&self, task_id: &str, status: &str) -> serde_json::Value {
        self.wait_for(&format!("task {task_id} {status}"), || {
            let task = self.task(task_id);
            (task["status"] == status).then_some(task)
        })
    }

    pub fn create(&self, prompt: &str) -> serde_json::Value {
        self.json(&["task", "create", prompt, "--json"])
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.root().join(".parhelia/parhelia.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open parhelia.db")
    }

    /// A container's stored events, by storage order: (seq, payload).
    pub fn stored_events(&self, container_id: &str) -> Vec<(u64, serde_json::Value)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT seq, payload FROM events WHERE container_id = ?1 ORDER BY id")
            .unwrap();
        stmt.query_map([container_id], |r| {
            let payload: String = r.get(1)?;
            Ok((
                r.get::<_, i64>(0)? as u64,
                serde_json::from_str(&payload).unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    pub fn container_dir(&self, container_id: &str) -> PathBuf {
        self.state().join("containers").join(container_id)
    }

    /// The agent's pid from its `agent.json`.
    pub fn agent_pid(&self, container_id: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.container_dir(container_id).join("runtime/agent.json"))
                .ok()?;
        let info: serde_json::Value = serde_json::from_str(&text).ok()?;
        info["pid"].as_i64().map(|p| p as i32)
    }

    /// The journal of a container of `session_id`, as JSON lines.
    pub fn journal(&self, session_id: &str, container_id: &str) -> Vec<serde_json::Value> {
        let path = self
            .state()
            .join("sessions")
            .join(session_id)
            .join("volume/journal")
            .join(format!("{container_id}.jsonl"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn coordinator_pid(&self) -> Option<i32> {
        let status = self.json(&["coordinator", "status", "--json"]);
        status["pid"].as_i64().map(|p| p as i32)
    }

    pub fn coordinator_id(&self) -> String {
        self.json(&["status", "--json"])["coordinator_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Starts an agent by hand in `containers/<container_id>/`, with `label`
    /// (e.g. `parhelia.coordinator=<id>`): the coordinator has no record of it.
    pub fn start_unrecorded_agent(&mut self, container_id: &str, label: &str) -> u32 {
        let dir = self.container_dir(container_id);
        let session = self.root().join("unrecorded").join(container_id);
        for sub in ["runtime", "claude-config"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for sub in ["workspace", "volume"] {
            std::fs::create_dir_all(session.join(sub)).unwrap();
        }
        let p = |path: PathBuf| path.display().to_string();
        let spec = serde_json::json!({
            "version": 1,
            "session_id": format!("sess-of-{container_id}"),
            "task_id": format!("task-of-{container_id}"),
            "container_id": container_id,
            "prompt": "hang around",
            "mode": "headless",
            "claude_session_id": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e",
            "resume": false,
            "model": null,
            "max_turns": null,
            "claude_bin": p(self.root().join("bin/claude")),
            "workspace_dir": p(session.join("workspace")),
            "claude_config_dir": p(dir.join("claude-config")),
            "volume_dir": p(session.join("volume")),
            "runtime_dir": p(dir.join("runtime")),
            "listen_addr": "127.0.0.1:0",
            "heartbeat_interval_ms": 200,
            "linger_after_finish_ms": 600000,
            "stop_grace_ms": 2000
        });
        let spec_path = dir.join("spec.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let child = Command::new(agent_bin())
            .args(["run", "--spec"])
            .arg(&spec_path)
            .args(["--label", label])
            .env("PARHELIA_SESSION_SECRET", "an-unrecorded-secret")
            .env("TMUX_TMPDIR", self.root().join("tmux-tmpdir"))
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        self.wait_for("the unrecorded agent's agent.json", || {
            self.agent_pid(container_id).filter(|p| *p as u32 == pid)
        });
        pid
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still "exists", so look at its state.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

pub fn kill(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Reads `child`'s stdout lines (on a thread) until one satisfies `done`.
pub fn read_until(
    lines: &std::sync::mpsc::Receiver<String>,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if done(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("never saw {what}: {e}"),
        }
    }
}

pub fn spawn_lines(
    mut cmd: std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

pub fn interrupt_and_wait(mut child: std::process::Child) -> std::process::ExitStatus {
    kill(child.id() as i32, "INT");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not stop on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.command(&["coordinator", "stop"]).output();
        // Every agent (and its tmux server) this world started.
        if let Ok(entries) = std::fs::read_dir(self.root().join(".parhelia/containers")) {
            for entry in entries.flatten() {
                let runtime = entry.path().join("runtime");
                if let Ok(text) = std::fs::read_to_string(runtime.join("agent.json"))
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(pid) = v["pid"].as_i64()
                {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
                let _ = Command::new("tmux")
                    .arg("-S")
                    .arg(runtime.join("tmux").join("tmux.sock"))
                    .arg("kill-server")
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // SIGTERM first, so agents stop their tmux servers and scripts their
        // sleeps; SIGKILL whatever is left.
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = Command::new("kill").arg(child.id().to_string()).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
