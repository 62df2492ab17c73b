//! Every code's advice, followed (issue 14): for each error code whose advice is an
//! action a user can take, a case provokes the error through the real `parhelia`
//! (a real coordinator and agent, a scripted fake Claude Code), checks that the
//! advice printed under it names the action, takes that action exactly as the
//! advice says, and asserts that it succeeds. The codes not covered here, and why,
//! are listed in `docs/dev/advice-coverage.md`.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::support::*;

fn stderr(out: &Output) -> String {
    without_progress(&String::from_utf8_lossy(&out.stderr))
}

/// What a person reads on stderr: `--progress auto` off a terminal (as here) also
/// prints JSON progress lines there, each `{"type":"progress",…}`; they are left out.
fn without_progress(stderr: &str) -> String {
    stderr
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("{\"type\":\"progress\""))
        .collect()
}

/// One code: how to provoke it, what its advice must say, how to follow it.
struct Case {
    code: &'static str,
    /// Text the advice (or the message) printed under the error must contain: the
    /// action the follow step takes.
    advice: &'static [&'static str],
    /// Provokes the error; returns the failing command's output.
    provoke: fn(&mut World) -> Output,
    /// Follows the advice; panics (through `World::ok` and asserts) unless it works.
    follow: fn(&mut World),
}

fn create_held(w: &World, prompt: &str) -> String {
    w.json(&["task", "create", prompt, "--no-dispatch", "--json"])["task_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A task run to completion by the fake Claude Code: (task id, session id).
fn completed_task(w: &World) -> (String, String) {
    let created = w.create("finish at once");
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let task = w.wait_task(&task_id, "completed");
    (task_id, task["session_id"].as_str().unwrap().to_string())
}

fn coordinator_config(w: &World) -> String {
    let shown = w.ok(&["config", "show"]);
    assert!(
        shown.starts_with("# in effect in the running coordinator"),
        "{shown}"
    );
    shown
}

/// `git -C DIR ARGS` (with an identity for commits), asserting success; returns stdout.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@localhost"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A git repository `project` (one commit on `main`) and a task run to completion on
/// it: (task id, session id). The session's result is that commit.
fn git_task(w: &World) -> (String, String) {
    let project = w.root().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("main.rs"), "fn main() {}\n").unwrap();
    git(&project, &["init", "--quiet", "--initial-branch", "main"]);
    git(&project, &["add", "--all"]);
    git(&project, &["commit", "--quiet", "-m", "start"]);
    let created = w.json(&["task", "create", "x", "--workspace", "project", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let task = w.wait_task(&task_id, "completed");
    container_stopped(w, task["container_id"].as_str().unwrap());
    (task_id, task["session_id"].as_str().unwrap().to_string())
}

/// Waits until the container is no longer active (a pull of a live session first
/// checkpoints it, printing a note when it has just ended).
fn container_stopped(w: &World, container_id: &str) {
    w.wait_for("the container to stop", || {
        let state: String = w
            .db()
            .query_row(
                "SELECT state FROM containers WHERE id = ?1",
                [container_id],
                |r| r.get(0),
            )
            .unwrap();
        (!["created", "starting", "running", "stopping"].contains(&state.as_str())).then_some(())
    });
}

/// The session of the world's only task.
fn only_session(w: &World) -> String {
    let listed = w.json(&["task", "list", "--json"]);
    let task = w.task(listed[0]["id"].as_str().unwrap());
    task["session_id"].as_str().unwrap().to_string()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            code: "E100",
            advice: &["parhelia help"],
            provoke: |w| {
                w.run(&[
                    "--set",
                    "checkpoint.keep_last=many",
                    "task",
                    "create",
                    "x",
                    "--no-dispatch",
                ])
            },
            follow: |w| {
                // The arguments checked against the help: the key takes an integer.
                assert!(w.ok(&["help"]).contains("--set"));
                w.ok(&[
                    "--set",
                    "checkpoint.keep_last=3",
                    "task",
                    "create",
                    "x",
                    "--no-dispatch",
                ]);
            },
        },
        Case {
            code: "E101",
            advice: &["parhelia task create \"Fix the failing tests\""],
            provoke: |w| w.run(&["task", "create", "  "]),
            follow: |w| {
                create_held(w, "Fix the failing tests");
            },
        },
        Case {
            code: "E102",
            advice: &["leave it out"],
            provoke: |w| w.run(&["task", "create", "x", "--workspace", "no-such-dir"]),
            follow: |w| {
                create_held(w, "x");
            },
        },
        Case {
            code: "E103",
            advice: &["--backend local"],
            provoke: |w| w.run(&["task", "create", "x", "--backend", "k8s"]),
            follow: |w| {
                w.ok(&["task", "create", "x", "--backend", "local", "--no-dispatch"]);
            },
        },
        Case {
            code: "E104",
            advice: &["completed"],
            provoke: |w| w.run(&["task", "list", "--status", "done"]),
            follow: |w| {
                let (task_id, _) = completed_task(w);
                let listed = w.json(&["task", "list", "--status", "completed", "--json"]);
                assert_eq!(listed[0]["id"], task_id.as_str(), "{listed:#}");
            },
        },
        Case {
            code: "E107",
            advice: &["Run the command inside your repository", "--repo PATH"],
            provoke: |w| {
                let (_, session_id) = git_task(w);
                // The project moved after the task: the pull falls back to the
                // current directory (the world's root), which is no repository.
                std::fs::rename(w.root().join("project"), w.root().join("moved")).unwrap();
                w.run(&["session", "pull", &session_id])
            },
            follow: |w| {
                let session_id = only_session(w);
                let moved = w.root().join("moved");
                let start = git(&moved, &["rev-parse", "main"]);
                // Inside the repository.
                let out = w
                    .command(&["session", "pull", &session_id, "--json"])
                    .current_dir(&moved)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
                let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(pulled["commit"], start.as_str(), "{pulled:#}");
                // Or naming it with --repo.
                let pulled = w.json(&[
                    "session",
                    "pull",
                    &session_id,
                    "--repo",
                    "moved",
                    "--branch",
                    "again",
                    "--json",
                ]);
                assert_eq!(git(&moved, &["rev-parse", "again"]), start);
                assert_eq!(pulled["branch"], "again");
            },
        },
        Case {
            code: "E108",
            advice: &["--force", "--branch NAME"],
            provoke: |w| {
                let (_, session_id) = git_task(w);
                // The user already has a branch of that name, at another commit.
                let project = w.root().join("project");
                let branch = format!("parhelia/{session_id}");
                git(&project, &["checkout", "--quiet", "-b", &branch]);
                std::fs::write(project.join("mine.txt"), "mine\n").unwrap();
                git(&project, &["add", "--all"]);
                git(&project, &["commit", "--quiet", "-m", "mine"]);
                git(&project, &["checkout", "--quiet", "main"]);
                w.run(&["session", "pull", &session_id])
            },
            follow: |w| {
                let session_id = only_session(w);
                let project = w.root().join("project");
                let branch = format!("parhelia/{session_id}");
                let start = git(&project, &["rev-parse", "main"]);
                assert_ne!(git(&project, &["rev-parse", &branch]), start);
                // Another name: the existing branch is left alone.
                let theirs = git(&project, &["rev-parse", &branch]);
                w.ok(&["session", "pull", &session_id, "--branch", "result"]);
                assert_eq!(git(&project, &["rev-parse", "result"]), start);
                assert_eq!(git(&project, &["rev-parse", &branch]), theirs);
                // --force moves it to the session's result.
                w.ok(&["session", "pull", &session_id, "--force"]);
                assert_eq!(git(&project, &["rev-parse", &branch]), start);
                assert_eq!(git(&project, &["branch", "--show-current"]), "main");
            },
        },
        Case {
            code: "E109",
            advice: &[
                "--branch NAME",
                "switch away from this one first (then `--force`",
            ],
            provoke: |w| {
                let (_, session_id) = git_task(w);
                let branch = format!("parhelia/{session_id}");
                git(
                    &w.root().join("project"),
                    &["checkout", "--quiet", "-b", &branch],
                );
                w.run(&["session", "pull", &session_id])
            },
            follow: |w| {
                let session_id = only_session(w);
                let project = w.root().join("project");
                let branch = format!("parhelia/{session_id}");
                let start = git(&project, &["rev-parse", "main"]);
                w.ok(&["session", "pull", &session_id, "--branch", "result"]);
                assert_eq!(git(&project, &["rev-parse", "result"]), start);
                assert_eq!(git(&project, &["branch", "--show-current"]), branch);
                // Or switched away: the branch (now existing, E108) moves with --force.
                git(&project, &["checkout", "--quiet", "main"]);
                w.ok(&["session", "pull", &session_id, "--force"]);
                assert_eq!(git(&project, &["rev-parse", &branch]), start);
            },
        },
        Case {
            code: "E111",
            advice: &["Pass the project directory itself"],
            provoke: |w| {
                std::fs::create_dir_all(w.root().join("project")).unwrap();
                std::fs::write(w.root().join("project/main.rs"), "fn main() {}\n").unwrap();
                // The home directory itself (HOME is the world's root).
                let home = w.root().display().to_string();
                w.run(&["task", "create", "x", "--workspace", &home])
            },
            follow: |w| {
                let created = w.json(&["task", "create", "x", "--workspace", "project", "--json"]);
                let task = w.wait_task(created["task_id"].as_str().unwrap(), "completed");
                let ws = w
                    .state()
                    .join("sessions")
                    .join(task["session_id"].as_str().unwrap())
                    .join("workspace/main.rs");
                assert!(ws.is_file(), "{}", ws.display());
            },
        },
        Case {
            code: "E112",
            advice: &[
                "--allow-large-workspace",
                "--set workspace.max_copy_bytes=N",
            ],
            provoke: |w| {
                std::fs::create_dir_all(w.root().join("big")).unwrap();
                std::fs::write(w.root().join("big/data.bin"), vec![7u8; 4096]).unwrap();
                w.set_env("PARHELIA_WORKSPACE_MAX_COPY_BYTES", "1000");
                w.run(&["task", "create", "x", "--workspace", "big"])
            },
            follow: |w| {
                let created = w.json(&[
                    "task",
                    "create",
                    "x",
                    "--workspace",
                    "big",
                    "--allow-large-workspace",
                    "--json",
                ]);
                w.wait_task(created["task_id"].as_str().unwrap(), "completed");
                // Or this task's own larger limit.
                let created = w.json(&[
                    "--set",
                    "workspace.max_copy_bytes=100000",
                    "task",
                    "create",
                    "x",
                    "--workspace",
                    "big",
                    "--json",
                ]);
                w.wait_task(created["task_id"].as_str().unwrap(), "completed");
                // The next task without it is held to the limit again.
                let out = w.run(&["task", "create", "x", "--workspace", "big"]);
                assert!(stderr(&out).starts_with("error[E112]"), "{}", stderr(&out));
            },
        },
        Case {
            code: "E116",
            advice: &["remove it", "and resume"],
            provoke: |w| {
                let (_, session_id) = completed_task(w);
                // The session replaced its private home with a link (to the user's
                // real home, say): the next launch must not follow it.
                let home = w.state().join("sessions").join(&session_id).join("home");
                std::fs::remove_dir_all(&home).unwrap();
                std::fs::create_dir_all(w.root().join("elsewhere")).unwrap();
                std::os::unix::fs::symlink(w.root().join("elsewhere"), &home).unwrap();
                w.run(&["resume", &session_id, "-m", "go on"])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                let session_id = task["session_id"].as_str().unwrap();
                let home = w.state().join("sessions").join(session_id).join("home");
                std::fs::remove_file(&home).unwrap();
                w.ok(&["resume", session_id, "-m", "go on"]);
                w.wait_for("the resumed session to complete", || {
                    let t = w.task(task["id"].as_str().unwrap());
                    (t["status"] == "completed" && t["container_id"] != task["container_id"])
                        .then_some(())
                });
                assert!(home.is_dir() && !home.is_symlink());
                assert!(!w.root().join("elsewhere").read_dir().unwrap().any(|_| true));
            },
        },
        Case {
            code: "E117",
            advice: &["session_started"],
            provoke: |w| {
                completed_task(w);
                w.run(&["events", "list", "--type", "container_begun"])
            },
            follow: |w| {
                let events = w.json(&["events", "list", "--type", "session_started", "--json"]);
                assert!(
                    !events.as_array().unwrap().is_empty(),
                    "the followed filter finds the session's start"
                );
            },
        },
        Case {
            code: "E118",
            advice: &["config.toml", "parhelia coordinator reload"],
            provoke: |w| {
                create_held(w, "starts the coordinator");
                coordinator_config(w);
                w.run(&["--set", "orchestrator.max_concurrent_workers=3", "status"])
            },
            follow: |w| {
                std::fs::write(
                    w.state().join("config.toml"),
                    "[orchestrator]\nmax_concurrent_workers = 3\n",
                )
                .unwrap();
                w.ok(&["coordinator", "reload"]);
                w.wait_for("the reloaded value", || {
                    let status = w.json(&["status", "--json"]);
                    (status["max_concurrent_workers"] == 3).then_some(())
                });
                w.ok(&["--set", "orchestrator.max_concurrent_workers=3", "status"]);
            },
        },
        Case {
            code: "E119",
            advice: &["config.toml", "parhelia coordinator reload"],
            provoke: |w| {
                create_held(w, "starts the coordinator");
                w.run(&[
                    "--set",
                    "reconciler.auto_resume=true",
                    "task",
                    "create",
                    "x",
                    "--no-dispatch",
                ])
            },
            follow: |w| {
                std::fs::write(
                    w.state().join("config.toml"),
                    "[reconciler]\nauto_resume = true\n",
                )
                .unwrap();
                w.ok(&["coordinator", "reload"]);
                w.wait_for("the reloaded value", || {
                    coordinator_config(w)
                        .contains("auto_resume = true")
                        .then_some(())
                });
                create_held(w, "x");
            },
        },
        Case {
            code: "E201",
            advice: &["parhelia task list"],
            provoke: |w| {
                create_held(w, "a real one");
                w.run(&["task", "show", "task-00000000"])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let id = listed[0]["id"].as_str().unwrap();
                w.ok(&["task", "show", id]);
            },
        },
        Case {
            code: "E202",
            advice: &["parhelia status", "parhelia task show TASK_ID"],
            provoke: |w| {
                completed_task(w);
                w.run(&["session", "show", "sess-00000000"])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                w.ok(&["status"]);
                w.ok(&["session", "show", task["session_id"].as_str().unwrap()]);
            },
        },
        Case {
            code: "E203",
            advice: &["parhelia task show TASK_ID"],
            provoke: |w| {
                completed_task(w);
                w.run(&["container", "show", "ctr-00000000"])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                w.ok(&["container", "show", task["container_id"].as_str().unwrap()]);
            },
        },
        Case {
            code: "E204",
            advice: &["parhelia help codes"],
            provoke: |w| w.run(&["help", "no-such-topic"]),
            follow: |w| {
                assert!(w.ok(&["help", "codes"]).contains("E204"));
            },
        },
        Case {
            code: "E205",
            advice: &["parhelia checkpoint list"],
            provoke: |w| {
                completed_task(w);
                w.run(&["checkpoint", "show", "ckpt-00000000"])
            },
            follow: |w| {
                let listed = w.json(&["checkpoint", "list", "--json"]);
                let id = listed[0]["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{listed:#}"));
                w.ok(&["checkpoint", "show", id]);
            },
        },
        Case {
            code: "E300",
            advice: &["parhelia budget show", "parhelia budget set AMOUNT"],
            provoke: |w| {
                w.ok(&["budget", "set", "0"]);
                w.run(&["task", "create", "x"])
            },
            follow: |w| {
                w.ok(&["budget", "show"]);
                w.ok(&["budget", "set", "50"]);
                let created = w.create("x");
                w.wait_task(created["task_id"].as_str().unwrap(), "completed");
            },
        },
        Case {
            code: "E501",
            advice: &["PARHELIA_CLAUDE_BIN"],
            provoke: |w| {
                w.set_env("PARHELIA_CLAUDE_BIN", "/nonexistent/claude");
                w.run(&["task", "create", "x"])
            },
            follow: |w| {
                let fake = w.root().join("bin/claude").display().to_string();
                w.set_env("PARHELIA_CLAUDE_BIN", &fake);
                let created = w.create("x");
                w.wait_task(created["task_id"].as_str().unwrap(), "completed");
            },
        },
        Case {
            code: "E502",
            advice: &[
                "runtime/agent.log` in the state directory",
                "PARHELIA_AGENT_BIN",
                "parhelia coordinator stop",
                "parhelia task retry task-",
            ],
            provoke: |w| {
                // An agent binary that cannot start, and says why on stderr.
                let agent = w.root().join("bin/broken-agent");
                std::fs::write(
                    &agent,
                    "#!/bin/sh\necho 'broken-agent: cannot start: planted by the test' >&2\nexit 3\n",
                )
                .unwrap();
                std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
                w.set_env("PARHELIA_AGENT_BIN", &agent.display().to_string());
                let created = w.create("x");
                let task_id = created["task_id"].as_str().unwrap();
                w.wait_task(task_id, "failed");
                w.run(&["task", "watch", task_id])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                let task_id = task["id"].as_str().unwrap().to_string();
                // The log the advice names (relative to the state directory) says why.
                let container_id = task["container_id"].as_str().unwrap();
                let log = w
                    .state()
                    .join(format!("containers/{container_id}/runtime/agent.log"));
                let text = std::fs::read_to_string(&log)
                    .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
                assert!(text.contains("cannot start: planted by the test"), "{text}");
                // The agent lives elsewhere: set it, restart the coordinator, retry.
                w.set_env("PARHELIA_AGENT_BIN", &agent_bin().display().to_string());
                w.ok(&["coordinator", "stop"]);
                w.wait_for("the coordinator to stop", || {
                    w.ok(&["coordinator", "status"])
                        .contains("not running")
                        .then_some(())
                });
                w.ok(&["task", "retry", &task_id]);
                w.wait_task(&task_id, "completed");
            },
        },
        Case {
            code: "E503",
            advice: &[
                "runtime/agent.log` in the state directory",
                "parhelia resume sess-",
                "-m \"go on\"",
                "parhelia session recover sess-",
            ],
            provoke: |w| {
                // The agent is killed; the reconciler marks it lost once its
                // heartbeats are 2 s stale.
                w.set_env("PARHELIA_RECONCILER_STALE_THRESHOLD_SECONDS", "2");
                let created = w.create("hang-once here");
                let task_id = created["task_id"].as_str().unwrap();
                let container_id = created["container_id"].as_str().unwrap();
                w.wait_for("a heartbeat", || {
                    let c = w.json(&["container", "show", container_id, "--json"]);
                    (c["state"] == "running" && c["last_heartbeat_at"].is_string()).then_some(())
                });
                kill(w.agent_pid(container_id).unwrap(), "KILL");
                let task = w.wait_task(task_id, "interrupted");
                assert_eq!(task["error_code"], "E503", "{task:#}");
                w.run(&["task", "watch", task_id])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                let task_id = task["id"].as_str().unwrap().to_string();
                let session_id = task["session_id"].as_str().unwrap().to_string();
                let container_id = task["container_id"].as_str().unwrap();
                // The log the advice names shows what the agent did last.
                let log = w
                    .state()
                    .join(format!("containers/{container_id}/runtime/agent.log"));
                let text = std::fs::read_to_string(&log)
                    .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
                assert!(!text.trim().is_empty(), "{}", log.display());
                // `session recover` shows which checkpoint, then the advised resume.
                let recover = w.json(&["session", "recover", &session_id, "--json"]);
                assert_eq!(recover["resumable"], true, "{recover:#}");
                w.ok(&["resume", &session_id, "-m", "go on"]);
                w.wait_for("the resumed task to complete", || {
                    let t = w.task(&task_id);
                    (t["status"] == "completed" && t["container_id"] != container_id).then_some(())
                });
            },
        },
        Case {
            code: "E507",
            advice: &[
                "A newer Parhelia wrote this state directory",
                "--state-dir DIR",
            ],
            provoke: |w| {
                create_held(w, "recorded by 'a newer parhelia'");
                w.ok(&["coordinator", "stop"]);
                w.wait_for("the coordinator to stop", || {
                    w.ok(&["coordinator", "status"])
                        .contains("not running")
                        .then_some(())
                });
                // As a newer Parhelia leaves it: a schema version this one does not know.
                let db = rusqlite::Connection::open(w.state().join("parhelia.db")).unwrap();
                db.pragma_update(None, "user_version", 999).unwrap();
                drop(db);
                w.run(&["task", "list"])
            },
            follow: |w| {
                // Another state directory works with this Parhelia...
                let other = w.root().join("other-state");
                let other = other.to_str().unwrap();
                w.ok(&["--state-dir", other, "task", "create", "x", "--no-dispatch"]);
                let listed = w.json(&["--state-dir", other, "task", "list", "--json"]);
                assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
                w.ok(&["--state-dir", other, "coordinator", "stop"]);
                // ...and the newer one's was left as it was.
                let version: u32 = w
                    .db()
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(version, 999);
            },
        },
        Case {
            code: "E509",
            advice: &["chown", "chmod 700"],
            provoke: |w| {
                // Another user's state directory (the test runs as root: see the runner).
                std::os::unix::fs::chown(w.state(), Some(65534), Some(65534)).unwrap();
                w.run(&["task", "list"])
            },
            follow: |w| {
                let me = nix::unistd::geteuid().as_raw();
                std::os::unix::fs::chown(w.state(), Some(me), None).unwrap();
                let state = w.state();
                std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
                w.ok(&["task", "list"]);
            },
        },
        Case {
            code: "E600",
            advice: &["parhelia task watch", "parhelia resume sess-", "-m"],
            provoke: |w| {
                let created = w.create("fail-once please");
                let task_id = created["task_id"].as_str().unwrap();
                w.wait_task(task_id, "failed");
                w.run(&["task", "watch", task_id])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                // What the advice names: read what failed, then resume with the
                // work kept (the fake fails once).
                w.ok(&["events", "list", "--task", task["id"].as_str().unwrap()]);
                w.ok(&[
                    "resume",
                    task["session_id"].as_str().unwrap(),
                    "-m",
                    "go on",
                ]);
                w.wait_task(task["id"].as_str().unwrap(), "completed");
            },
        },
        Case {
            code: "E601",
            advice: &["parhelia resume sess-", "is kept"],
            provoke: |w| {
                // A turn that takes a few seconds (the fake streams), cancelled; its
                // resume (here from the starting workspace, as the fake writes no
                // transcript) runs it to the end.
                let created = w.create("stream please");
                let task_id = created["task_id"].as_str().unwrap();
                w.wait_task(task_id, "running");
                w.ok(&["task", "cancel", task_id]);
                w.wait_task(task_id, "cancelled");
                w.run(&["task", "watch", task_id])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task = w.task(listed[0]["id"].as_str().unwrap());
                let out = w.ok(&[
                    "resume",
                    task["session_id"].as_str().unwrap(),
                    "-m",
                    "go on",
                ]);
                assert!(out.contains("resumed"), "{out}");
                w.wait_task(task["id"].as_str().unwrap(), "completed");
            },
        },
        Case {
            code: "E603",
            advice: &["parhelia task show TASK_ID"],
            provoke: |w| {
                let (task_id, _) = completed_task(w);
                w.run(&["task", "dispatch", &task_id])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let shown = w.ok(&["task", "show", listed[0]["id"].as_str().unwrap()]);
                assert!(shown.contains("completed"), "{shown}");
            },
        },
        Case {
            code: "E604",
            advice: &["parhelia coordinator stop"],
            provoke: |w| {
                create_held(w, "starts the coordinator");
                w.run(&["coordinator", "run"])
            },
            follow: |w| {
                assert!(w.ok(&["coordinator", "status"]).contains("running"));
                w.ok(&["coordinator", "stop"]);
                w.wait_for("the coordinator to stop", || {
                    w.ok(&["coordinator", "status"])
                        .contains("not running")
                        .then_some(())
                });
                // And a new one starts on demand.
                create_held(w, "again");
            },
        },
        Case {
            code: "E605",
            advice: &["parhelia task cancel TASK_ID"],
            provoke: |w| {
                let created = w.create("hang here");
                let task_id = created["task_id"].as_str().unwrap();
                w.wait_task(task_id, "running");
                w.run(&["task", "delete", task_id])
            },
            follow: |w| {
                let listed = w.json(&["task", "list", "--json"]);
                let task_id = listed[0]["id"].as_str().unwrap().to_string();
                w.ok(&["task", "cancel", &task_id]);
                w.wait_task(&task_id, "cancelled");
                w.ok(&["task", "delete", &task_id]);
                assert_eq!(w.json(&["task", "list", "--json"]), serde_json::json!([]));
            },
        },
    ]
}

/// The codes this file follows (checked against the table, so the list in
/// `docs/dev/advice-coverage.md` cannot drift from what runs).
const COVERED: &[&str] = &[
    "E100", "E101", "E102", "E103", "E104", "E107", "E108", "E109", "E111", "E112", "E116", "E117",
    "E118", "E119", "E201", "E202", "E203", "E204", "E205", "E300", "E501", "E502", "E503", "E507",
    "E509", "E600", "E601", "E603", "E604", "E605",
];

#[test]
fn every_covered_codes_advice_followed_succeeds() {
    let cases = cases();
    let codes: Vec<&str> = cases.iter().map(|c| c.code).collect();
    assert_eq!(codes, COVERED);
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dev/advice-coverage.md"),
    )
    .unwrap();
    let only = std::env::var("ADVICE_CASE").ok();
    let mut failed = Vec::new();
    for case in cases {
        assert!(
            doc.contains(&format!("| {} |", case.code)),
            "{} missing from advice-coverage.md",
            case.code
        );
        if only.as_deref().is_some_and(|o| o != case.code) {
            continue;
        }
        if case.code == "E509" && !nix::unistd::geteuid().is_root() {
            // Only root can give the state directory to another user.
            eprintln!("advice case E509 skipped: not root");
            continue;
        }
        eprintln!("advice case {}", case.code);
        let mut world = World::new();
        let code = case.code;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let out = (case.provoke)(&mut world);
            let err = stderr(&out);
            assert!(
                !out.status.success() && err.starts_with(&format!("error[{code}]: ")),
                "{code}: expected the error, got ({}):\n{err}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
            for words in case.advice {
                assert!(
                    err.contains(words),
                    "{code}: the advice does not say `{words}`:\n{err}"
                );
            }
            (case.follow)(&mut world);
        }));
        if result.is_err() {
            failed.push(code);
        }
        let _ = world.run(&["coordinator", "stop"]);
    }
    assert!(
        failed.is_empty(),
        "advice not followed to success: {failed:?}"
    );
}
