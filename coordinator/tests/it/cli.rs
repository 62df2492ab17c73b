//! The real `parhelia` binary: bad input gets coded errors and non-zero
//! exits, `--dry-run` launches and records nothing, state is found from a
//! subdirectory, and the coordinator starts on demand, launches a detached
//! agent over its Unix socket and records a failed start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PARHELIA: &str = env!("CARGO_BIN_EXE_parhelia");

/// An isolated world: its own HOME, state dir, PATH and working directory.
struct World {
    tmp: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        // The e2e harness's reaper: a coordinator a killed test started does not outlive it.
        parhelia_testkit::procs::reap_when_killed(tmp.path());
        let world = Self {
            tmp,
            env: Vec::new(),
        };
        std::fs::create_dir_all(world.work()).unwrap();
        std::fs::create_dir_all(world.bin()).unwrap();
        world
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn work(&self) -> PathBuf {
        self.root().join("work")
    }

    fn bin(&self) -> PathBuf {
        self.root().join("bin")
    }

    fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    fn with_env(mut self, key: &str, value: impl AsRef<Path>) -> Self {
        self.env
            .push((key.into(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// Writes an executable script into `bin/`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.bin().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn fake_claude(&self) -> PathBuf {
        self.script("claude", "echo fake claude; exit 0")
    }

    fn command_in(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(PARHELIA);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("HOME", self.root())
            .env("PARHELIA_HOME", self.state())
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin().display()))
            .env("TMPDIR", self.root())
            .env("PARHELIA_COORDINATOR_START_TIMEOUT_MS", "20000");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        self.command_in(cwd, args).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in(&self.work(), args)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Never leave a coordinator behind.
        if self.state().join("coordinator.sock").exists() {
            let _ = self.run(&["coordinator", "stop"]);
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a person reads on stderr: `--progress auto` off a terminal (as here) also
/// prints JSON progress lines there, each `{"type":"progress",…}`; they are left out.
fn without_progress(stderr: &str) -> String {
    stderr
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("{\"type\":\"progress\""))
        .collect()
}

/// Asserts a coded failure: `error[CODE]: …` then a hint, and the exit status.
fn assert_coded(out: &Output, code: &str, status: i32) {
    let err = without_progress(&stderr(out));
    assert_eq!(
        out.status.code(),
        Some(status),
        "stderr: {err}\nstdout: {}",
        stdout(out)
    );
    assert!(
        err.starts_with(&format!("error[{code}]: ")),
        "stderr: {err}"
    );
    assert!(err.contains("\n  hint: "), "stderr: {err}");
    assert!(
        err.contains(&format!("parhelia help {code}")),
        "stderr: {err}"
    );
}

#[test]
fn unknown_task_id_is_e201() {
    let world = World::new();
    let out = world.run(&["task", "show", "task-deadbeef"]);
    assert_coded(&out, "E201", 3);
    assert!(stderr(&out).starts_with("error[E201]: task not found: task-deadbeef\n"));
    assert_coded(
        &world.run(&["task", "show", "task-deadbeef", "--json"]),
        "E201",
        3,
    );
    assert_coded(&world.run(&["t", "watch", "task-deadbeef"]), "E201", 3);
    assert_coded(&world.run(&["session", "show", "sess-deadbeef"]), "E202", 3);
}

#[test]
fn empty_prompt_is_e101() {
    let world = World::new();
    world.fake_claude();
    assert_coded(&world.run(&["task", "create", ""]), "E101", 2);
    assert_coded(
        &world.run(&["task", "create", "   ", "--dry-run"]),
        "E101",
        2,
    );
}

#[test]
fn missing_workspace_is_e102() {
    let world = World::new();
    world.fake_claude();
    let out = world.run(&["task", "create", "do it", "--workspace", "no/such/dir"]);
    assert_coded(&out, "E102", 2);
    assert!(stderr(&out).contains("workspace not found: no/such/dir"));
    // A file is not a workspace either.
    std::fs::write(world.work().join("file"), "").unwrap();
    assert_coded(
        &world.run(&["task", "create", "do it", "--workspace", "file"]),
        "E102",
        2,
    );
}

#[test]
fn dangerous_workspaces_are_e111_before_anything_is_recorded() {
    let world = World::new();
    world.fake_claude();
    std::os::unix::fs::symlink("/", world.work().join("looks-fine")).unwrap();
    let home = world.root().to_str().unwrap().to_string();
    for (workspace, why) in [
        ("/", "whole filesystem"),
        ("looks-fine", "whole filesystem"),
        ("/etc", "system directory"),
        (home.as_str(), "home directory"),
    ] {
        let out = world.run(&["task", "create", "do it", "--workspace", workspace]);
        assert_coded(&out, "E111", 2);
        assert!(stderr(&out).contains(why), "{workspace}: {}", stderr(&out));
    }
    assert!(
        !world.state().join("parhelia.db").exists(),
        "nothing recorded"
    );
}

#[test]
fn a_workspace_with_a_fifo_is_e111_and_an_oversize_one_e112() {
    let world = World::new();
    world.fake_claude();
    let repo = world.work().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("data.bin"), vec![0u8; 4096]).unwrap();
    let create = |world: &World, extra: &[&str]| {
        let mut args = vec![
            "task",
            "create",
            "do it",
            "--workspace",
            "repo",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        world.run(&args)
    };
    // A `--set` of a per-task key is this task's own limit: the dry run
    // holds the workspace to it as the launch would (E112).
    let out = world.run(&[
        "--set",
        "workspace.max_copy_bytes=1000",
        "task",
        "create",
        "do it",
        "--workspace",
        "repo",
        "--dry-run",
    ]);
    assert_coded(&out, "E112", 2);
    // A coordinator-wide key cannot be one task's (E119, naming it).
    let out = world.run(&[
        "--set",
        "orchestrator.max_concurrent_workers=3",
        "task",
        "create",
        "do it",
        "--dry-run",
    ]);
    assert_coded(&out, "E119", 2);
    assert!(
        stderr(&out).contains("orchestrator.max_concurrent_workers"),
        "{}",
        stderr(&out)
    );
    let small = world.with_env("PARHELIA_WORKSPACE_MAX_COPY_BYTES", "1000");
    let out = create(&small, &[]);
    assert_coded(&out, "E112", 2);
    assert!(
        stderr(&out).contains("--allow-large-workspace"),
        "{}",
        stderr(&out)
    );
    let out = create(&small, &["--allow-large-workspace"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let world = small.with_env("PARHELIA_WORKSPACE_MAX_COPY_BYTES", "10737418240");

    nix::unistd::mkfifo(
        &repo.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = create(&world, &[]);
    assert_coded(&out, "E111", 2);
    assert!(stderr(&out).contains("repo/pipe"), "{}", stderr(&out));
}

/// The coordinator enforces the size limits itself (issue 11): a real submit
/// over `workspace.max_copy_bytes` is E112 with nothing recorded, and
/// `--allow-large-workspace` travels with the task, so a held task is still
/// copied whole when it is dispatched later.
#[test]
fn the_coordinator_refuses_an_oversize_workspace_unless_the_task_allows_it() {
    let world = World::new();
    world.fake_claude();
    let agent = world.script("parhelia-agent", "exit 3");
    let world = world
        .with_env("PARHELIA_AGENT_BIN", &agent)
        .with_env("PARHELIA_ISOLATION", "none")
        .with_env("PARHELIA_WORKSPACE_MAX_COPY_BYTES", "1000");
    let repo = world.work().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("data.bin"), vec![7u8; 4096]).unwrap();
    // The first command starts the coordinator, with the limit from the
    // environment (a one-off `--set` would not reach it: E118).
    let out = world.run(&["task", "create", "do it", "--workspace", "repo"]);
    assert_coded(&out, "E112", 2);
    let out = world.run(&["task", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // The copy at dispatch holds to the limit too: a held task whose
    // workspace grew past it fails E112 instead of copying it.
    let small = world.work().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("data.bin"), vec![1u8; 100]).unwrap();
    let out = world.run(&[
        "task",
        "create",
        "do it",
        "--workspace",
        "small",
        "--no-dispatch",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let held: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let held = held["task_id"].as_str().unwrap().to_string();
    std::fs::write(small.join("data.bin"), vec![1u8; 4096]).unwrap();
    let _ = world.run(&["task", "dispatch", &held]);
    let out = world.run(&["task", "show", &held, "--json"]);
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error_code"], "E112", "{task}");

    let out = world.run(&[
        "task",
        "create",
        "do it",
        "--workspace",
        "repo",
        "--allow-large-workspace",
        "--no-dispatch",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    let out = world.run(&["task", "dispatch", &task_id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = world.run(&["task", "show", &task_id, "--json"]);
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let session_id = task["session_id"].as_str().unwrap();
    let copied = world
        .state()
        .join("sessions")
        .join(session_id)
        .join("workspace/data.bin");
    assert_eq!(std::fs::read(&copied).unwrap(), vec![7u8; 4096]);
}

#[test]
fn claude_not_installed_is_e501() {
    let world = World::new();
    let empty_bin = world.root().join("empty-bin");
    std::fs::create_dir(&empty_bin).unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = world.command_in(&world.work(), &["task", "create", "do it"]);
        cmd.env("PATH", &empty_bin);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[("PARHELIA_CLAUDE_BIN", "/nonexistent")]);
    assert_coded(&out, "E501", 6);
    assert!(stderr(&out).contains("/nonexistent"), "{}", stderr(&out));
    assert_coded(&run(&[]), "E501", 6);
    assert!(
        !world.state().join("coordinator.sock").exists(),
        "nothing was started"
    );
}

#[test]
fn unknown_backend_and_status_are_input_errors() {
    let world = World::new();
    world.fake_claude();
    assert_coded(
        &world.run(&["task", "create", "x", "--backend", "k8s"]),
        "E103",
        2,
    );
    // Modal without its SDK: a coded error, and nothing recorded.
    let world = world.with_env("PARHELIA_MODAL_PYTHON", "/nonexistent/python3");
    assert_coded(
        &world.run(&["task", "create", "x", "--backend", "modal"]),
        "E510",
        6,
    );
    let listed = world.run(&["task", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    assert_coded(&world.run(&["task", "list", "--status", "done"]), "E104", 2);
}

#[test]
fn dry_run_launches_and_records_nothing() {
    let world = World::new();
    let claude = world.fake_claude();
    let workspace = world.work().join("repo");
    std::fs::create_dir_all(workspace.join(".git")).unwrap();
    let mut cmd = world.command_in(
        &world.work(),
        &[
            "task",
            "create",
            "Add a hello.txt",
            "--workspace",
            "repo",
            "--dry-run",
            "--model",
            "m1",
        ],
    );
    cmd.env("ANTHROPIC_API_KEY", "sk-test-never-shown");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("dry run: nothing was launched or recorded\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("claude     {}", claude.display())),
        "{text}"
    );
    assert!(text.contains("ANTHROPIC_API_KEY"), "{text}");
    assert!(
        !text.contains("sk-test-never-shown"),
        "env values are never shown: {text}"
    );
    assert!(text.contains(r#""claude_bin": ""#), "{text}");
    assert!(text.contains(r#""model": "m1""#), "{text}");

    let out = world.run(&["task", "create", "Add a hello.txt", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["backend"], "local");
    assert_eq!(plan["workspace_source"], serde_json::Value::Null);
    assert_eq!(plan["spec"]["version"], 1);
    assert_eq!(plan["spec"]["mode"], "headless");
    assert_eq!(
        plan["spec"]["claude_bin"],
        claude.to_string_lossy().as_ref()
    );

    // Nothing was created: no state directory at all, so no database, no
    // socket, no session.
    assert!(!world.state().exists(), "a dry run must not create state");
}

#[test]
fn state_is_found_from_a_subdirectory() {
    let world = World::new();
    let project = world.root().join("project");
    let deep = project.join("src/deeper");
    std::fs::create_dir_all(project.join(".parhelia")).unwrap();
    std::fs::create_dir_all(&deep).unwrap();
    let expected = std::fs::canonicalize(project.join(".parhelia")).unwrap();

    // Record a task in the project's state through the library.
    let db = parhelia::db::Db::open(&expected.join("parhelia.db")).unwrap();
    db.insert_launch(&parhelia::db::NewLaunch {
        task_id: "task-00c0ffee".into(),
        session_id: "sess-00c0ffee".into(),
        container_id: "ctr-00c0ffee".into(),
        claude_session_id: "9b2f6c1e-0000-4000-8000-000000000000".into(),
        prompt: "hello".into(),
        task_type: "generic".into(),
        backend: "local".into(),
        workspace: None,
        model: None,
        max_turns: None,
        mode: "headless".into(),
        secret: parhelia::ids::SessionSecret::from_stored("super-secret-value".into()),
        workspace_dir: "/w".into(),
        volume_dir: "/v".into(),
    })
    .unwrap();
    drop(db);

    for cwd in [&project, &deep] {
        let out = world.run_in(cwd, &["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["state_dir"], expected.to_string_lossy().as_ref());
        assert_eq!(status["tasks"]["pending"], 1);
        assert_eq!(status["coordinator"]["running"], false);

        let out = world.run_in(cwd, &["task", "show", "task-00c0ffee", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text.contains("super-secret-value"),
            "the secret is never printed"
        );
        let task: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "id",
            "status",
            "session_id",
            "backend",
            "workspace",
            "cost_usd",
            "created_at",
            "finished_at",
            "result",
        ] {
            assert!(task.get(key).is_some(), "missing {key}: {text}");
        }
        assert_eq!(task["status"], "pending");
        assert_eq!(task["finished_at"], serde_json::Value::Null);
    }
    // PARHELIA_HOME was not used.
    assert!(!world.state().exists());
    let out = world.run_in(&deep, &["t", "list"]);
    assert!(stdout(&out).contains("task-00c0ffee"), "{}", stdout(&out));
}

#[test]
fn help_explains_codes_and_commands() {
    let world = World::new();
    let out = world.run(&["help", "E201"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("E201 TASK_NOT_FOUND\n"), "{text}");
    for heading in ["What happened", "Why", "How to recover", "Exit status: 3"] {
        assert!(text.contains(heading), "{text}");
    }
    let out = world.run(&["help", "codes"]);
    for code in parhelia::error_codes::ALL {
        assert!(stdout(&out).contains(code.code), "{} missing", code.code);
    }
    let out = world.run(&["help", "task", "create"]);
    assert!(stdout(&out).contains("--dry-run"), "{}", stdout(&out));
    assert_coded(&world.run(&["help", "E999"]), "E204", 3);
    assert_coded(&world.run(&["help", "frobnicate"]), "E204", 3);
    // Usage errors are clap's, with exit status 2.
    assert_eq!(world.run(&["task", "create"]).status.code(), Some(2));
}

/// The coordinator starts on demand, answers on its socket, records the
/// task, lays out the session and starts the agent detached with the right
/// arguments and environment. The fake agent exits at once, so the task
/// fails with E502 and both async (`task watch`) and `--sync` report it.
#[test]
fn coordinator_starts_on_demand_and_records_a_failed_agent_start() {
    let world = World::new();
    world.fake_claude();
    // Named parhelia-agent like the real one. It records its arguments,
    // whether it got the secret, the rest of its environment, and its
    // session id (field 6 of /proc/self/stat) next to its pid.
    let agent = world.script(
        "parhelia-agent",
        r#"dir=$(dirname "$3")/runtime
echo "$@" > "$dir/args.txt"
env | sort > "$dir/env.txt"
head -c 4096 > "$dir/stdin.txt"
echo "pid=$$ sid=$(cut -d' ' -f6 /proc/$$/stat)" > "$dir/session.txt"
echo "fake agent refusing to start" >&2
exit 3"#,
    );
    // Without isolation the agent itself leads its new session (under
    // bubblewrap, bwrap does, and the agent is its child).
    let world = world
        .with_env("PARHELIA_AGENT_BIN", &agent)
        .with_env("PARHELIA_ISOLATION", "none");
    let workspace = world.work().join("repo");
    std::fs::create_dir_all(workspace.join(".git")).unwrap();
    std::fs::write(workspace.join("README"), "hi").unwrap();

    let mut cmd = world.command_in(
        &world.work(),
        &[
            "task",
            "create",
            "Add a hello.txt",
            "--workspace",
            "repo",
            "--json",
        ],
    );
    cmd.env("ANTHROPIC_API_KEY", "sk-test-key")
        .env("UNRELATED_SECRET", "nope");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    let session_id = submitted["session_id"].as_str().unwrap().to_string();
    let container_id = submitted["container_id"].as_str().unwrap().to_string();
    assert!(
        parhelia::ids::is_well_formed("task-", &task_id),
        "{task_id}"
    );

    // The coordinator is up and owns the state dir.
    let out = world.run(&["coordinator", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true, "{status}");
    let socket = world.state().join("coordinator.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = world.state().join("coordinator.token");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the control token is the user's alone");

    // `task watch` follows the task to its end and exits with its outcome.
    let out = world.run(&["task", "watch", &task_id]);
    assert_coded(&out, "E502", 6);
    assert!(stderr(&out).contains("exited"), "{}", stderr(&out));

    let out = world.run(&["task", "show", &task_id, "--json"]);
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error_code"], "E502");
    assert_eq!(task["session_id"], session_id.as_str());
    assert!(task["finished_at"].is_string());

    // Layout and spec per the contract.
    let state = std::fs::canonicalize(world.state()).unwrap();
    let session_dir = state.join("sessions").join(&session_id);
    let container_dir = state.join("containers").join(&container_id);
    assert_eq!(
        std::fs::read_to_string(session_dir.join("workspace/README")).unwrap(),
        "hi"
    );
    assert!(session_dir.join("workspace/.git").is_dir());
    assert!(session_dir.join("volume").is_dir());
    assert!(container_dir.join("claude-config").is_dir());
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(container_dir.join("spec.json")).unwrap())
            .unwrap();
    assert_eq!(spec["task_id"], task_id.as_str());
    assert_eq!(spec["container_id"], container_id.as_str());
    assert_eq!(
        spec["workspace_dir"],
        session_dir.join("workspace").to_string_lossy().as_ref()
    );
    assert_eq!(
        spec["runtime_dir"],
        container_dir.join("runtime").to_string_lossy().as_ref()
    );
    assert!(uuid::Uuid::parse_str(spec["claude_session_id"].as_str().unwrap()).is_ok());

    // The agent's command line, environment and session.
    let runtime = container_dir.join("runtime");
    let args = std::fs::read_to_string(runtime.join("args.txt")).unwrap();
    assert!(
        args.starts_with(&format!(
            "run --spec {} --label parhelia.coordinator=coord-",
            container_dir.join("spec.json").display()
        )),
        "{args}"
    );
    let env = std::fs::read_to_string(runtime.join("env.txt")).unwrap();
    assert!(
        !env.contains("PARHELIA_SESSION_SECRET"),
        "the secret never travels in the environment (any process of the user could read it in /proc): {env}"
    );
    assert!(env.contains("ANTHROPIC_API_KEY=sk-test-key"));
    assert!(
        !env.contains("UNRELATED_SECRET"),
        "only what Claude Code needs is passed: {env}"
    );
    assert!(
        !env.contains("PARHELIA_CLAUDE_BIN") && !env.contains("PARHELIA_AGENT_BIN"),
        "{env}"
    );
    let session = std::fs::read_to_string(runtime.join("session.txt")).unwrap();
    let (pid, sid) = session.trim().split_once(' ').unwrap();
    assert_eq!(
        pid.trim_start_matches("pid="),
        sid.trim_start_matches("sid="),
        "the agent leads its own session"
    );
    assert!(
        std::fs::read_to_string(runtime.join("agent.log"))
            .unwrap()
            .contains("fake agent refusing to start")
    );
    assert!(args.contains("--secret-stdin"), "{args}");
    let secret = std::fs::read_to_string(runtime.join("stdin.txt")).unwrap();
    let secret = secret.trim_end_matches('\n');
    assert_eq!(secret.len(), 64, "the agent gets its secret on stdin");
    assert!(
        !std::fs::read_to_string(container_dir.join("spec.json"))
            .unwrap()
            .contains(secret)
    );
    let log = std::fs::read_to_string(state.join("coordinator.log")).unwrap();
    assert!(
        !log.contains(secret) && !log.contains("sk-test-key"),
        "secrets never reach the log"
    );

    // --sync reports the same failure with the same exit status.
    let out = world.run(&["task", "create", "again", "--sync"]);
    assert_coded(&out, "E502", 6);

    // Two tasks, both failed; the status command sees the running coordinator.
    let out = world.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["tasks"]["failed"], 2, "{status}");
    assert_eq!(status["coordinator"]["running"], true);

    // Only one coordinator per state directory.
    let out = world.run(&["coordinator", "run"]);
    assert_coded(&out, "E604", 7);

    let out = world.run(&["coordinator", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("coordinator stopped"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!socket.exists());
    let out = world.run(&["coordinator", "status"]);
    assert!(stdout(&out).contains("not running"));
}

/// `config sync --dry-run` plans from local files alone (issue 11, item 7): no
/// coordinator, no Modal bridge (a `python3` on PATH that records being run), no
/// state directory; and it shows no secret, only where each one was and why.
#[test]
fn config_sync_dry_run_needs_no_modal_and_shows_no_secret() {
    let world = World::new();
    let marker = world.root().join("python-ran");
    for name in ["python3", "python", "modal"] {
        world.script(name, &format!("touch {}; exit 1", marker.display()));
    }
    let claude = world.root().join(".claude");
    std::fs::create_dir_all(claude.join("commands")).unwrap();
    std::fs::write(claude.join("CLAUDE.md"), "Be brief.\n").unwrap();
    std::fs::write(claude.join("commands/review.md"), "Review.\n").unwrap();
    std::fs::write(
        claude.join("settings.json"),
        r#"{"model":"opus","env":{"GITHUB_PAT":"PLANTED-cli-pat-1","X":"1"}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(world.root().join(".ssh")).unwrap();
    std::fs::write(
        world.root().join(".ssh/id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nPLANTED-cli-key-2\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        world.root().join(".ssh/id_ed25519"),
        claude.join("commands/key.md"),
    )
    .unwrap();
    std::fs::write(
        world.root().join(".claude.json"),
        r#"{"userID":"PLANTED-cli-user-3","mcpServers":{"gh":{"command":"gh-mcp","args":["--token","PLANTED-cli-token-4"]}}}"#,
    )
    .unwrap();

    let out = world.run(&["config", "sync", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "CLAUDE.md",
            "commands/review.md",
            "mcp-servers.json",
            "settings.json"
        ]
    );
    let withheld = report["withheld"].as_array().unwrap();
    assert!(withheld.iter().any(|w| w["path"] == "settings.json"
        && w["json_path"] == "env.GITHUB_PAT"
        && w["reason"].as_str().unwrap().contains("_PAT")));
    assert!(withheld.iter().any(
        |w| w["path"] == "commands/key.md" && w["reason"].as_str().unwrap().contains("outside")
    ));
    assert!(
        withheld
            .iter()
            .any(|w| w["path"] == ".claude.json" && w["json_path"] == "mcpServers.gh.args[1]")
    );

    let plain = world.run(&["config", "sync", "--dry-run"]);
    assert_eq!(plain.status.code(), Some(0), "stderr: {}", stderr(&plain));
    let plain = stdout(&plain);
    assert!(plain.contains("would upload CLAUDE.md"), "{plain}");
    assert!(plain.contains("settings.json: env.GITHUB_PAT: "), "{plain}");
    for secret in [
        "PLANTED-cli-pat-1",
        "PLANTED-cli-key-2",
        "PLANTED-cli-user-3",
        "PLANTED-cli-token-4",
    ] {
        assert!(
            !text.contains(secret) && !plain.contains(secret),
            "{secret}"
        );
    }
    assert!(!marker.exists(), "the dry run ran python/modal");
    assert!(
        !world.state().exists(),
        "the dry run made a state directory"
    );
}
