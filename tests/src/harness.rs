//! End-to-end harness: a private state directory, the real `parhelia`,
//! `parhelia-agent` and Claude Code binaries, and the scripted model stand-in.
//!
//! Every test gets its own temporary directory holding `.parhelia/`, so state
//! discovery (walking up from the working directory) finds exactly that one.
//! Dropping the harness stops the coordinator and SIGTERMs any agent it
//! started, so no process outlives a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{Script, StandIn};

/// A command's stderr without its progress lines (`--progress auto` prints them as JSON
/// lines when stderr is not a terminal, `docs/formats/cli-json-lines.md`): what is left
/// is what a person reads (warnings, `error[E…]: …` and its hint). Each progress line
/// must be one whole `{"type":"progress",…}` object.
pub fn without_progress(stderr: &str) -> String {
    let mut rest = String::new();
    for line in stderr.split_inclusive('\n') {
        if line.starts_with("{\"type\":\"progress\"") {
            let v: serde_json::Value = serde_json::from_str(line.trim_end())
                .unwrap_or_else(|e| panic!("a broken progress line ({e}): {line}\n{stderr}"));
            assert!(v["op"].is_string() && v["event"].is_string(), "{line}");
            continue;
        }
        rest.push_str(line);
    }
    rest
}

/// `target/<profile>/`, where cargo puts every workspace binary; or
/// `PARHELIA_E2E_BIN_DIR` when set (a private copy of the binaries, for a target directory
/// that other builds share and may overwrite during a run).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PARHELIA_E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `ANTHROPIC_API_KEY` every harness gives `parhelia` (the stand-in's key).
pub const TEST_API_KEY: &str = "test-key-not-a-secret";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub stand_in: StandIn,
    env: Vec<(String, String)>,
}

impl Harness {
    pub fn new(script: Script) -> Harness {
        Self::new_in(script, &std::env::temp_dir())
    }

    /// Like [`Self::new`], with the stand-in keeping every request's whole body
    /// (`LoggedRequest::body`), for tests that check what Claude Code sent the model.
    pub fn new_logging_bodies(script: Script) -> Harness {
        Self::build(
            script,
            &std::env::temp_dir(),
            crate::model_stand_in::StandInOptions {
                log_bodies: true,
                ..Default::default()
            },
        )
    }

    /// Like [`Self::new`], with the model stand-in accepting only `key` (the one the
    /// harness gives `parhelia`): a command run with another `ANTHROPIC_API_KEY` is
    /// refused 401 the way the API refuses a revoked key.
    pub fn new_accepting_only_its_key(script: Script) -> Harness {
        Self::build(
            script,
            &std::env::temp_dir(),
            crate::model_stand_in::StandInOptions {
                accepted_api_key: Some(TEST_API_KEY.into()),
                ..Default::default()
            },
        )
    }

    /// Like [`Self::new`], with the private directory (state dir, sessions, volumes) made
    /// under `parent`, e.g. a small tmpfs the chaos engine fills.
    pub fn new_in(script: Script, parent: &Path) -> Harness {
        Self::build(script, parent, Default::default())
    }

    fn build(
        script: Script,
        parent: &Path,
        options: crate::model_stand_in::StandInOptions,
    ) -> Harness {
        for b in ["parhelia", "parhelia-agent"] {
            assert!(
                bin_dir().join(b).exists(),
                "{b} is not built: run `cargo build --workspace --bins` first (scripts/test does)"
            );
        }
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        std::fs::create_dir(dir.path().join(".parhelia")).unwrap();
        // The user's home is the test's own: no test reads or writes the real one (its
        // Claude Code setup, dotfiles), and each can plant a setup of its own there.
        std::fs::create_dir(dir.path().join("home")).unwrap();
        // A test killed before its harness drops (a nextest timeout) leaks nothing.
        crate::procs::reap_when_killed(dir.path());
        let stand_in = StandIn::start_with(script, options).expect("start model stand-in");
        let claude = crate::claude_code::claude_bin().unwrap_or_else(|e| panic!("{e}"));
        let path = format!(
            "{}:{}:{}",
            bin_dir().display(),
            claude.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("PATH".into(), path),
            ("PARHELIA_CLAUDE_BIN".into(), claude.display().to_string()),
            (
                "PARHELIA_AGENT_BIN".into(),
                bin_dir().join("parhelia-agent").display().to_string(),
            ),
            ("ANTHROPIC_BASE_URL".into(), stand_in.base_url().to_string()),
            ("ANTHROPIC_API_KEY".into(), TEST_API_KEY.into()),
            ("CLAUDE_CODE_MAX_RETRIES".into(), "1".into()),
            ("HOME".into(), dir.path().join("home").display().to_string()),
            // Frequent heartbeats, so tests see some without waiting long.
            ("PARHELIA_HEARTBEAT_INTERVAL_MS".into(), "200".into()),
        ];
        Harness { dir, stand_in, env }
    }

    /// The value the harness gives `parhelia` for `key`, if it sets one.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an environment variable for every later `parhelia` invocation.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Leaves `key` out of every later `parhelia` invocation's environment.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The test's `$HOME` (`<root>/home`), where a test plants the user's setup.
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    pub fn state(&self) -> PathBuf {
        self.root().join(".parhelia")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_under(&[], args)
    }

    /// `parhelia ARGS` run by `wrapper` (e.g. `["unshare", "--pid", "--fork"]`), with
    /// the same environment and directory as [`Self::command`].
    pub fn command_under(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let parhelia = bin_dir().join("parhelia");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(&parhelia),
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&parhelia);
                cmd
            }
        };
        cmd.args(args)
            .current_dir(self.root())
            .env_remove("PARHELIA_HOME");
        for key in crate::procs::NOT_INHERITED {
            cmd.env_remove(key);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `parhelia ARGS` to completion.
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
        std::fs::read_to_string(self.state().join("coordinator.log")).unwrap_or_default()
    }

    /// What a failed wait prints: the coordinator's log, the model requests the stand-in
    /// answered, the stored events by container, and the end of each agent's log and
    /// tmux pane — so a failure seen once in CI says what the session was doing.
    pub fn diagnostics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!("coordinator log:\n{}", self.coordinator_log());
        let _ = writeln!(out, "model requests (seq kind turn reply tools):");
        for r in self.stand_in.requests() {
            let _ = writeln!(
                out,
                "  {} {:?} {:?} {} tools={}",
                r.seq, r.kind, r.turn_index, r.reply, r.has_tools
            );
        }
        if let Ok(db) = rusqlite::Connection::open_with_flags(
            self.state().join("parhelia.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) && let Ok(mut stmt) = db.prepare(
            "SELECT container_id, group_concat(type, ' ') FROM \
             (SELECT container_id, type FROM events ORDER BY container_id, seq) \
             GROUP BY container_id",
        ) && let Ok(rows) =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        {
            let _ = writeln!(out, "stored events:");
            for (container, types) in rows.flatten() {
                let _ = writeln!(out, "  {container}: {types}");
            }
        }
        let containers = std::fs::read_dir(self.state().join("containers"))
            .into_iter()
            .flatten()
            .flatten();
        for entry in containers {
            let runtime = entry.path().join("runtime");
            let log = std::fs::read_to_string(runtime.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let _ = writeln!(
                out,
                "agent log of {} (last {} lines):",
                entry.file_name().to_string_lossy(),
                tail.len()
            );
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "  {line}");
            }
            let socket = std::fs::read_to_string(runtime.join("agent.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["tmux_socket"].as_str().map(PathBuf::from));
            if let Some(socket) = socket
                && let Ok(pane) = Command::new("tmux")
                    .arg("-S")
                    .arg(&socket)
                    .args(["capture-pane", "-p", "-t", "claude"])
                    .output()
            {
                let _ = writeln!(
                    out,
                    "its tmux pane:\n{}",
                    String::from_utf8_lossy(&pane.stdout).trim_end()
                );
            }
        }
        out
    }

    /// Waits (bounded) until `parhelia task show ID --json` satisfies `done`.
    pub fn wait_task(
        &self,
        task_id: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let task = self.json(&["task", "show", task_id, "--json"]);
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} never reached the expected state; last: {task:#}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Points the coordinator's Modal backend at the SDK stand-in
    /// (`tests/modal_standin/`): the real bridge, with sandboxes that are
    /// local processes running the real agent and Claude Code, a volume that
    /// is a local directory mounted (by symlink) at `<root>/ctr/vol`, and a
    /// Modal secret holding the test key. Returns the stand-in's root.
    pub fn use_modal_stand_in(&mut self) -> PathBuf {
        let standin = self.root().join("modal-standin");
        std::fs::create_dir_all(standin.join("secrets")).unwrap();
        std::fs::write(
            standin.join("secrets/anthropic-api-key.json"),
            r#"{"ANTHROPIC_API_KEY": "test-key-not-a-secret"}"#,
        )
        .unwrap();
        let container = self.root().join("ctr");
        std::fs::create_dir_all(container.join("home")).unwrap();
        let run_as = match crate::session_user::session_user() {
            Some((name, _, _)) => {
                // The session user reaches its own directories through ours.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(self.root(), std::fs::Permissions::from_mode(0o711))
                    .unwrap();
                name
            }
            None => "root".to_string(),
        };
        let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("modal_standin");
        let claude = crate::claude_code::claude_bin().unwrap_or_else(|e| panic!("{e}"));
        let agent = bin_dir().join("parhelia-agent");
        for (key, value) in [
            ("PARHELIA_MODAL_STANDIN_ROOT", standin.display().to_string()),
            // The stand-in's tunnels are TLS under a CA of its own, made at its first
            // tunnel: the coordinator trusts it as a user behind an inspecting proxy would.
            (
                "PARHELIA_TLS_CA_FILE",
                standin.join("tls/ca.pem").display().to_string(),
            ),
            ("MODAL_TOKEN_ID", "ak-standin".to_string()),
            ("MODAL_TOKEN_SECRET", "as-standin".to_string()),
            (
                "PARHELIA_MODAL_BRIDGE_PYTHONPATH",
                package.display().to_string(),
            ),
            (
                "PARHELIA_MODAL_VOLUME_MOUNT",
                container.join("vol").display().to_string(),
            ),
            (
                "PARHELIA_MODAL_CONTAINER_HOME",
                container.join("home").display().to_string(),
            ),
            ("PARHELIA_MODAL_CLAUDE_PATH", claude.display().to_string()),
            ("PARHELIA_MODAL_AGENT_PATH", agent.display().to_string()),
            ("PARHELIA_MODAL_AGENT_BIN", agent.display().to_string()),
            ("PARHELIA_MODAL_AGENT_PORT", "0".to_string()),
            // As on Modal: the agent runs as root (the stand-in's sandboxes are this
            // user's processes) and the session as an unprivileged user when the tests
            // can make one; else one user for both.
            ("PARHELIA_MODAL_RUN_AS_USER", run_as),
        ] {
            self.set_env(key, &value);
        }
        standin
    }

    /// The stand-in volume's directory (after [`Self::use_modal_stand_in`]).
    pub fn modal_volume(&self) -> PathBuf {
        self.root()
            .join("modal-standin")
            .join("volumes")
            .join("parhelia-data")
    }

    /// Waits (bounded) until `probe` returns `Some`, polling every 100 ms.
    pub fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A consistent copy of the database (`VACUUM INTO <root>/NAME`), to put back later.
    pub fn snapshot_db(&self, name: &str) -> PathBuf {
        let older = self.root().join(name);
        self.db()
            .execute("VACUUM INTO ?1", [older.to_string_lossy()])
            .unwrap();
        older
    }

    /// Puts `older` back as the database, as a restored backup or a lost WAL does.
    pub fn put_back_db(&self, older: &Path) {
        let db = self.state().join("parhelia.db");
        for suffix in ["-wal", "-shm"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(name));
        }
        std::fs::rename(older, &db).unwrap();
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.state().join("parhelia.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open parhelia.db")
    }

    /// The payloads of a task's events of one type, across all its
    /// containers, in the order they were stored.
    pub fn task_events(&self, task_id: &str, kind: &str) -> Vec<serde_json::Value> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT payload FROM events WHERE task_id = ?1 AND type = ?2 ORDER BY id")
            .unwrap();
        stmt.query_map([task_id, kind], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
            .collect()
    }

    /// A running agent's pid and its private tmux socket, from its `agent.json`.
    pub fn agent_pid_and_tmux(&self, container_id: &str) -> (i32, PathBuf) {
        let runtime = self
            .state()
            .join("containers")
            .join(container_id)
            .join("runtime");
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(runtime.join("agent.json")).unwrap())
                .unwrap();
        let socket = PathBuf::from(info["tmux_socket"].as_str().unwrap());
        (info["pid"].as_i64().unwrap() as i32, socket)
    }

    /// Every stored event of a container: (seq, type, payload JSON), by seq.
    pub fn events(&self, container_id: &str) -> Vec<(u64, String, serde_json::Value)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT seq, type, payload FROM events WHERE container_id = ?1 ORDER BY seq")
            .unwrap();
        stmt.query_map([container_id], |r| {
            let payload: String = r.get(2)?;
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                serde_json::from_str(&payload).unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.command(&["coordinator", "stop"]).output();
        // Stand-in sandboxes are local process groups: end them.
        if let Ok(entries) = std::fs::read_dir(self.root().join("modal-standin/sandboxes")) {
            for entry in entries.flatten() {
                let meta = entry.path().join("sandbox.json");
                if let Ok(text) = std::fs::read_to_string(meta)
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(pid) = v["pid"].as_i64()
                {
                    let _ = Command::new("kill")
                        .args(["-TERM", "--", &format!("-{pid}")])
                        .status();
                }
            }
        }
        // SIGTERM every agent this test started (their tmux servers and
        // Claude Code go with them); agents are detached, so nothing else would.
        if let Ok(entries) = std::fs::read_dir(self.state().join("containers")) {
            for entry in entries.flatten() {
                let info = entry.path().join("runtime/agent.json");
                if let Ok(text) = std::fs::read_to_string(info)
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(pid) = v["pid"].as_i64()
                {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
                if let Ok(text) = std::fs::read_to_string(entry.path().join("runtime/agent.json"))
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(socket) = v["tmux_socket"].as_str()
                {
                    // A SIGKILLed agent's tmux server (and Claude Code) outlive it.
                    crate::procs::tmux_kill_server(Path::new(socket));
                }
            }
        }
    }
}
