//! Advice followed end to end (issue 14) for the codes whose cause is on the host, not
//! in a task: a checkpoint store's lock held by another process (E622), a coordinator
//! that does not answer or exits at start (E504), and cgroups the coordinator cannot
//! write (E113). Each test provokes the error as a user meets it, with the real
//! `parhelia`, agent, tmux and Claude Code on the scripted model, checks that the advice
//! printed under `error[Ennn]: ` names the action, takes it as printed, and asserts that
//! the work then succeeds. `docs/dev/advice-coverage.md` lists which test follows which
//! code.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use parhelia_testkit::git;
use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::WhenExhausted;
use parhelia_testkit::{Script, ToolCall, Turn};

/// What a person reads on stderr: the progress lines (`--progress auto` prints them
/// off a terminal) checked and left out.
fn stderr_of(out: &Output) -> String {
    parhelia_testkit::harness::without_progress(&String::from_utf8_lossy(&out.stderr))
}

/// `out` failed with `code`; returns its stderr.
fn refused_with(out: &Output, code: &str, what: &str) -> String {
    let stderr = stderr_of(out);
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.starts_with(&format!("error[{code}]: ")),
        "{what}:\n{stderr}"
    );
    stderr
}

/// The advice printed under the error (its `hint:` line).
fn hint(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("no hint under the error:\n{stderr}"))
}

fn finished(h: &Harness, task_id: &str) -> serde_json::Value {
    h.wait_task(task_id, |t| {
        matches!(
            t["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        )
    })
}

/// A process this test started, killed (and reaped) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// E622: another process holds a session's checkpoint store lock (here `sleep` under
/// `flock`, which takes it the way the store does: an exclusive `flock(2)` on
/// `checkpoints/lock`, as a long checkpoint, prune, verify or repair would). With `checkpoint.lock_wait_seconds
/// = 2` in config.toml, `session pull` and `checkpoint verify` give up after two seconds
/// (not the default minute) with E622 naming the holder; nothing is changed. Followed as
/// printed — the named process let finish, the same commands run again — both succeed.
#[test]
fn e622_a_held_store_lock_is_named_and_the_same_command_succeeds_once_it_is_let_go() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("notes.txt", "kept\n")]),
        Turn::text("Done."),
    ]));
    std::fs::write(
        h.state().join("config.toml"),
        "[checkpoint]\nlock_wait_seconds = 2\n",
    )
    .unwrap();
    let project = h.root().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("main.rs"), "fn main() {}\n").unwrap();
    git(&project, &["init", "--quiet", "--initial-branch", "main"]);
    git(&project, &["add", "--all"]);
    git(&project, &["commit", "--quiet", "-m", "start"]);
    let created = h.json(&[
        "task",
        "create",
        "Write notes.txt",
        "--workspace",
        "project",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");

    let lock = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("volume/checkpoints/lock");
    assert!(lock.is_file(), "the store's lock file: {}", lock.display());
    let holder = Child(
        // `--no-fork`: the process that takes the lock is the one that holds it (`sleep`),
        // so ending it lets go (a forked child would keep the lock after flock ended).
        Command::new("flock")
            .args(["--exclusive", "--no-fork"])
            .arg(&lock)
            .args(["sleep", "600"])
            .spawn()
            .expect("run flock"),
    );
    h.wait_for("flock to hold the store's lock", || {
        let free = Command::new("flock")
            .arg("--nonblock")
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success();
        (!free).then_some(())
    });

    let pull = ["session", "pull", &session_id, "--repo", "project"];
    let verify = ["checkpoint", "verify", "--session", &session_id];
    for args in [&pull[..], &verify[..]] {
        let started = Instant::now();
        let out = h.run(args);
        let stderr = refused_with(&out, "E622", &format!("{args:?}"));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the configured 2 s wait, not the default minute: {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains(&format!("(pid {} (sleep))", holder.0.id())),
            "the holder is named: {stderr}"
        );
        assert!(stderr.contains("waited 2."), "{stderr}");
        let advice = hint(&stderr);
        assert!(
            advice.contains("Let the process the message names finish")
                && advice.contains("run the same command again")
                && advice.contains("`checkpoint.lock_wait_seconds`"),
            "{advice}"
        );
    }
    assert!(
        git(&project, &["for-each-ref", "refs/heads/parhelia"]).is_empty(),
        "the refused pull made no branch"
    );

    // Followed: the process named lets go (it finishes), the same commands again.
    drop(holder);
    h.ok(&verify);
    let pulled = h.json(&[
        "session",
        "pull",
        &session_id,
        "--repo",
        "project",
        "--json",
    ]);
    let branch = format!("parhelia/{session_id}");
    assert_eq!(pulled["branch"], branch.as_str(), "{pulled:#}");
    assert_eq!(
        git(&project, &["show", &format!("{branch}:notes.txt")]),
        "kept"
    );
}

/// E622 from the agent: a running session's `checkpoint create` is taken by its agent,
/// which waits for the store's lock as the spec says (`checkpoint.lock_wait_seconds`,
/// carried as `checkpoint.lock_wait_ms`), so with another process holding it the
/// command is refused after two seconds, naming the holder. Followed as printed (the
/// holder let finish, the same command again), the checkpoint is taken.
#[test]
fn e622_a_checkpoint_the_agent_takes_waits_as_configured_and_is_taken_once_let_go() {
    let h = Harness::new(Script::new([Turn::tool_use([ToolCall::bash(
        "echo working > work.txt; sleep 600",
    )])]));
    std::fs::write(
        h.state().join("config.toml"),
        "[checkpoint]\nlock_wait_seconds = 2\n",
    )
    .unwrap();
    let created = h.json(&["task", "create", "Work a while", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the tool call", || {
        (!h.task_events(&task_id, "tool_call").is_empty()).then_some(())
    });
    let before = h.json(&["checkpoint", "list", &session_id, "--json"]);
    let lock = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("volume/checkpoints/lock");
    let holder = Child(
        Command::new("flock")
            .args(["--exclusive", "--no-fork"])
            .arg(&lock)
            .args(["sleep", "600"])
            .spawn()
            .expect("run flock"),
    );
    h.wait_for("flock to hold the store's lock", || {
        let free = Command::new("flock")
            .arg("--nonblock")
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success();
        (!free).then_some(())
    });

    let create = [
        "checkpoint",
        "create",
        &session_id,
        "-m",
        "before the change",
    ];
    let started = Instant::now();
    let stderr = refused_with(&h.run(&create), "E622", "checkpoint create");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the agent waited the configured 2 s, not the default minute: {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!("(pid {} (sleep))", holder.0.id())),
        "the holder is named: {stderr}"
    );
    assert!(
        hint(&stderr).contains("run the same command again"),
        "{stderr}"
    );
    assert_eq!(
        h.json(&["checkpoint", "list", &session_id, "--json"]),
        before,
        "nothing was added"
    );

    // Followed: the holder lets go, the same command again.
    drop(holder);
    h.ok(&create);
    let after = h.json(&["checkpoint", "list", &session_id, "--json"]);
    assert_eq!(
        after.as_array().unwrap().len(),
        before.as_array().unwrap().len() + 1,
        "{after:#}"
    );
    h.ok(&["task", "cancel", &task_id]);
}

/// A coordinator stopped with SIGSTOP, resumed and killed if the test ends first.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let pid = self.0.to_string();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
}

/// E504, a coordinator that does not answer: the running one is suspended (Ctrl-Z in
/// the shell that runs `parhelia coordinator run`, or SIGSTOP) and still holds the state
/// directory, so the one the next command starts exits at once. `task create` says so,
/// naming the process and `parhelia coordinator stop`. Followed as printed: the log
/// says why the new one stopped (E604, one is running), `coordinator run` in the
/// foreground says the same, `coordinator status` and `coordinator stop` see the silent
/// one (they used to say "not running", which no advice could get past), the stop ends
/// it, and the command run again starts a new coordinator and completes.
#[test]
fn e504_a_coordinator_that_does_not_answer_is_named_and_stopped_as_advised() {
    let h = Harness::new(Script::new([Turn::text("Done.")]));
    let held = h.json(&["task", "create", "later", "--no-dispatch", "--json"]);
    let held_id = held["task_id"].as_str().unwrap().to_string();
    let status = h.json(&["coordinator", "status", "--json"]);
    let pid = status["pid"].as_u64().expect("a running coordinator") as u32;
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let suspended = Stopped(pid);

    let out = h.run(&["task", "create", "Say hi", "--json"]);
    let stderr = refused_with(&out, "E504", "task create");
    assert!(
        stderr.contains(&format!("a coordinator (pid {pid}, stopped")),
        "the silent coordinator is named: {stderr}"
    );
    assert!(
        stderr.contains("`parhelia coordinator stop` ends it"),
        "{stderr}"
    );
    let advice = hint(&stderr);
    assert!(
        advice.contains("Read `.parhelia/coordinator.log`")
            && advice.contains("`parhelia coordinator run`")
            && advice.contains("`parhelia coordinator stop`")
            && advice.contains("run your command again"),
        "{advice}"
    );

    // "Read `.parhelia/coordinator.log`": the coordinator this command started says why
    // it stopped at once.
    let log = std::fs::read_to_string(h.state().join("coordinator.log")).unwrap();
    assert!(
        log.contains("error[E604]: a coordinator is already running"),
        "{log}"
    );
    // "run `parhelia coordinator run` in the foreground": the same, with E604's advice.
    let fg = h.run(&["coordinator", "run"]);
    let fg_err = refused_with(&fg, "E604", "coordinator run");
    assert!(
        fg_err.contains("`parhelia coordinator status`")
            && fg_err.contains("`parhelia coordinator stop`"),
        "{fg_err}"
    );
    // Which both see the silent one.
    let shown = h.ok(&["coordinator", "status"]);
    assert!(
        shown.contains(&format!("coordinator not answering (pid {pid}, stopped")),
        "{shown}"
    );
    let shown = h.json(&["coordinator", "status", "--json"]);
    assert_eq!(shown["running"], false, "{shown:#}");
    assert_eq!(shown["not_answering_pid"], pid, "{shown:#}");
    // `config show` cannot read what it runs with, and says so (it used to print the
    // files as if no coordinator ran).
    let config = h.ok(&["config", "show"]);
    assert!(
        config.starts_with(&format!("# a coordinator (pid {pid}, stopped")),
        "{config}"
    );
    let config = h.json(&["config", "show", "--json"]);
    assert_eq!(
        config["coordinator_not_answering"]["pid"], pid,
        "{config:#}"
    );
    assert_eq!(
        config["coordinator_not_answering"]["stopped"], true,
        "{config:#}"
    );
    let stopped = h.ok(&["coordinator", "stop"]);
    assert!(
        stopped.contains(&format!("coordinator stopped (pid {pid}")),
        "{stopped}"
    );
    h.wait_for("the silent coordinator to exit", || {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        });
        gone.then_some(())
    });
    drop(suspended);

    // Then the command again: a new coordinator starts and the task completes; the held
    // task is still recorded.
    let created = h.json(&["task", "create", "Say hi", "--json"]);
    let task = finished(&h, created["task_id"].as_str().unwrap());
    assert_eq!(task["status"], "completed", "{task:#}");
    let held = h.json(&["task", "show", &held_id, "--json"]);
    assert_eq!(held["status"], "pending", "{held:#}");
}

/// E504, a coordinator that exits at start: something other than a socket sits at the
/// control socket's path (a directory, as a copy or restore of the state directory can
/// leave). The coordinator started on demand cannot bind and exits; the E504 message
/// quotes the error it logged, the log holds it, and `coordinator run` in the
/// foreground prints it. Followed (the path it names removed), the command run again
/// completes.
#[test]
fn e504_a_coordinator_that_exits_at_start_says_why_and_starts_once_the_cause_is_fixed() {
    let h = Harness::new(Script::new([Turn::text("Done.")]));
    let socket = h.state().join("coordinator.sock");
    std::fs::create_dir(&socket).unwrap();

    let out = h.run(&["task", "create", "Say hi", "--json"]);
    let stderr = refused_with(&out, "E504", "task create");
    let why = format!(
        "removing the stale socket {}: Is a directory",
        socket.display()
    );
    assert!(
        stderr.contains("it exited") && stderr.contains(&why),
        "the message says why: {stderr}"
    );
    assert!(
        hint(&stderr).contains("Read `.parhelia/coordinator.log`"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(h.state().join("coordinator.log")).unwrap();
    assert!(log.contains(&why), "{log}");
    let fg = h.run(&["coordinator", "run"]);
    assert!(!fg.status.success());
    assert!(stderr_of(&fg).contains(&why), "{}", stderr_of(&fg));

    // Followed: what it names fixed, the command again.
    std::fs::remove_dir(&socket).unwrap();
    let created = h.json(&["task", "create", "Say hi", "--json"]);
    let task = finished(&h, created["task_id"].as_str().unwrap());
    assert_eq!(task["status"], "completed", "{task:#}");
}

/// `sh -c` that remounts every cgroup file system read-only (a bind remount, in this
/// mount namespace only), then runs its arguments: a host whose cgroups cannot be
/// written, as in a container that mounts `/sys/fs/cgroup` read-only.
const READ_ONLY_CGROUPS: &str = r#"
for m in $(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts); do
    mount -o remount,bind,ro "$m" || exit 97
done
exec "$@"
"#;

fn read_only_cgroups() -> Vec<&'static str> {
    vec!["unshare", "--mount", "sh", "-c", READ_ONLY_CGROUPS, "sh"]
}

/// E113: `--cpu`/`--memory` for a local task on a host whose cgroups cannot be written
/// (every `parhelia` command of the test, and so the coordinator they start, runs in a
/// mount namespace with the cgroup file systems read-only; needs `unshare --mount`,
/// else SKIPPED). The task is refused before anything starts, and so are its
/// `--estimate-only` and `--dry-run` (neither claims a limit a run would not get).
/// Followed both ways that can be followed here: the flags left out, the task runs
/// (its unit a process tree, saying why) and completes; `--backend modal` (the SDK
/// stand-in) gives the sandbox the cores and memory asked for, and completes.
#[test]
fn e113_limits_on_a_host_without_writable_cgroups_are_refused_and_each_advised_way_runs() {
    let probe = Command::new(read_only_cgroups()[0])
        .args(&read_only_cgroups()[1..])
        .arg("true")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: remounting the cgroup file systems read-only in a mount namespace is not permitted here"
        );
        return;
    }
    let mut h =
        Harness::new(Script::new([]).when_exhausted(WhenExhausted::Default(Turn::text("Done."))));
    // Before the first command starts the coordinator: it reads its environment once.
    let standin = h.use_modal_stand_in();
    let under = |args: &[&str]| {
        h.command_under(&read_only_cgroups(), args)
            .output()
            .expect("run parhelia")
    };
    let ok_under = |args: &[&str]| {
        let out = under(args);
        assert!(
            out.status.success(),
            "parhelia {args:?} failed:\n{}\ncoordinator log:\n{}",
            stderr_of(&out),
            h.coordinator_log()
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };

    let limited = [
        "task", "create", "Build it", "--cpu", "2", "--memory", "512MiB",
    ];
    let stderr = refused_with(&under(&limited), "E113", "task create --cpu --memory");
    assert!(
        stderr.contains("--cpu 2, --memory 512MiB") && stderr.contains("Read-only file system"),
        "what and why: {stderr}"
    );
    assert!(stderr.contains("Nothing was started"), "{stderr}");
    let advice = hint(&stderr);
    assert!(
        advice.contains("`--backend modal`") && advice.contains("leave those flags out"),
        "{advice}"
    );
    for extra in ["--estimate-only", "--dry-run"] {
        let mut args = limited.to_vec();
        args.push(extra);
        refused_with(&under(&args), "E113", extra);
    }
    let listed = ok_under(&["task", "list", "--json"]);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "nothing was recorded: {listed:#}"
    );

    // Followed: the flags left out, the task runs here (this coordinator is on the
    // read-only host too: its unit is a process tree, and says why) and completes.
    let created = ok_under(&["task", "create", "Build it", "--json"]);
    let task = finished(&h, created["task_id"].as_str().unwrap());
    assert_eq!(task["status"], "completed", "{task:#}");
    let unit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            h.state()
                .join("containers")
                .join(task["container_id"].as_str().unwrap())
                .join("unit.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(unit["kind"], "process_tree", "{unit:#}");
    assert!(
        unit["fallback_reason"]
            .as_str()
            .is_some_and(|r| r.contains("Read-only file system")),
        "{unit:#}"
    );

    // Followed: `--backend modal`, which gives the cores and memory asked for.
    ok_under(&["modal", "setup"]);
    ok_under(&["budget", "set", "10000"]);
    let mut args = limited.to_vec();
    args.extend(["--backend", "modal", "--json"]);
    let created = ok_under(&args);
    let task = finished(&h, created["task_id"].as_str().unwrap());
    assert_eq!(task["status"], "completed", "{task:#}");
    let container = task["container_id"].as_str().unwrap();
    let sandbox = std::fs::read_dir(standin.join("sandboxes"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("sandbox.json")).ok())
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
        .find(|s| s["tags"]["parhelia.container"] == container)
        .unwrap_or_else(|| panic!("no sandbox for {container}"));
    assert_eq!(sandbox["cpu"], 2.0, "{sandbox:#}");
    assert_eq!(sandbox["memory"], 512, "{sandbox:#}");
}
