//! Advice followed end to end (issue 14): each test provokes a coded error with the real
//! `parhelia`, agent, tmux and Claude Code on the scripted model, checks that the advice
//! printed under the error names the action, takes that action exactly as printed, and
//! asserts that it succeeds. These are the codes whose follow-up needs real Claude Code
//! (a conversation that continues after a resume, a session that acts on a message);
//! `coordinator/tests/it/advice.rs` follows the rest with a fake, and
//! `docs/dev/advice-coverage.md` lists which test follows which code.
//!
//! - E301: a local `--timeout` stop; the advised `resume … -m "go on"` finishes the task
//!   with its work (a resume without `-m` would wait for input until the limit stopped it
//!   again, so the advice says `-m`).
//! - E602: Claude Code killed mid-turn; `session recover` shows the checkpoint, the
//!   advised resume finishes the task.
//! - E110: the session put a link in its `.git`; `session pull` refuses, names it, and
//!   `checkpoint show` lists it; the session is asked to remove it (`session send`), and
//!   the pull then makes the branch.

use std::path::Path;
use std::process::Output;

use parhelia_testkit::git;
use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// What a person reads on stderr (progress lines left out).
fn stderr_of(out: &Output) -> String {
    parhelia_testkit::harness::without_progress(&String::from_utf8_lossy(&out.stderr))
}

/// The backquoted command in `text` that starts with `prefix`, split into `parhelia`'s
/// arguments (`-m "…"` kept as one argument, unquoted).
fn advised(text: &str, prefix: &str) -> Vec<String> {
    let command = text
        .split('`')
        .find(|s| s.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}…` in the advice:\n{text}"));
    let (head, message) = match command.split_once(" -m ") {
        Some((head, message)) => (head, Some(message.trim_matches('"'))),
        None => (command, None),
    };
    let mut args: Vec<String> = head.split_whitespace().skip(1).map(String::from).collect();
    if let Some(message) = message {
        args.extend(["-m".to_string(), message.to_string()]);
    }
    args
}

fn run_advised(h: &Harness, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    h.ok(&args)
}

fn workspace(h: &Harness, session_id: &str) -> std::path::PathBuf {
    h.state()
        .join("sessions")
        .join(session_id)
        .join("workspace")
}

#[test]
fn e301_a_timed_out_task_resumed_as_advised_finishes_with_its_work() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo started > progress.txt; sleep 600")]),
        // After the resume: one short turn, well inside the fresh limit.
        Turn::text("Picked up where I left off; done."),
    ]));
    // Long enough for the resumed Claude Code to start and answer one scripted turn;
    // the first session is stopped at it (its Bash call sleeps 600 s).
    let created = h.json(&[
        "task",
        "create",
        "Work slowly",
        "--timeout",
        "30s",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["error_code"], "E301", "{task:#}");

    let out = h.run(&["task", "watch", &task_id]);
    let stderr = stderr_of(&out);
    assert!(stderr.starts_with("error[E301]: "), "{stderr}");
    let resume = advised(&stderr, "parhelia resume ");
    assert_eq!(
        resume,
        ["resume", &session_id, "-m", "go on"],
        "the advice names this session's resume with a message: {stderr}"
    );
    assert!(
        stderr.contains(&format!("parhelia task retry {task_id}")),
        "{stderr}"
    );

    run_advised(&h, &resume);
    let task = h.wait_task(&task_id, |t| {
        t["container_id"] != created["container_id"]
            && (t["status"] == "completed" || t["status"] == "failed")
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        task["result"], "Picked up where I left off; done.",
        "{task:#}"
    );
    assert_eq!(
        std::fs::read_to_string(workspace(&h, &session_id).join("progress.txt")).unwrap(),
        "started\n",
        "the work before the stop was kept"
    );
    // The resumed Claude Code got the advised message.
    assert!(
        h.stand_in
            .requests()
            .iter()
            .any(|r| r.last_user_text.as_deref() == Some("go on")),
        "{:#?}",
        h.stand_in.requests()
    );
}

#[test]
fn e602_an_interrupted_session_recovered_as_advised_finishes() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("kept.txt", "kept\n")]),
        // Claude Code is killed while this answer is held.
        Turn::hold("never delivered"),
        // After the resume.
        Turn::text("Finished after the resume."),
    ]));
    // Unconfined: Claude Code's pid file then holds a host pid the test can signal.
    h.set_env("PARHELIA_ISOLATION", "none");
    let created = h.json(&["task", "create", "Write kept.txt", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the held answer at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let pid = std::fs::read_to_string(
        h.state()
            .join("containers")
            .join(&container_id)
            .join("runtime/sandbox/claude.pid"),
    )
    .expect("claude code's pid file");
    assert!(
        std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    h.stand_in.release_hold();
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "interrupted", "{task:#}");
    assert_eq!(task["error_code"], "E602", "{task:#}");

    let out = h.run(&["task", "watch", &task_id]);
    let stderr = stderr_of(&out);
    assert!(stderr.starts_with("error[E602]: "), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`parhelia session recover {session_id}` shows which"
        )),
        "{stderr}"
    );
    let resume = advised(&stderr, "parhelia resume ");
    assert_eq!(resume, ["resume", &session_id, "-m", "go on"], "{stderr}");

    // `session recover` shows which checkpoint the resume continues from, and the
    // same command.
    let recover = h.json(&["session", "recover", &session_id, "--json"]);
    assert_eq!(recover["resumable"], true, "{recover:#}");
    assert_eq!(recover["error_code"], "E602", "{recover:#}");
    let shown = h.ok(&["session", "recover", &session_id]);
    assert!(
        shown.contains(&format!("parhelia resume {session_id}")),
        "{shown}"
    );
    let listed = h.json(&["checkpoint", "list", &session_id, "--json"]);
    let newest = listed
        .as_array()
        .unwrap()
        .last()
        .unwrap_or_else(|| panic!("no checkpoint: {listed:#}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(shown.contains(&newest), "recover names {newest}:\n{shown}");

    let resumed = run_advised(&h, &resume);
    assert!(
        resumed.contains(&format!("resumed from {newest}")),
        "{resumed}"
    );
    let task = h.wait_task(&task_id, |t| {
        t["container_id"] != container_id.as_str()
            && (t["status"] == "completed" || t["status"] == "failed")
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Finished after the resume.", "{task:#}");
}

#[test]
fn e110_a_link_the_session_put_in_its_git_dir_is_removed_in_the_session_and_the_pull_succeeds() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("ln -s /etc .git/escape")]),
        Turn::text("Linked."),
        // After `session send`: the session removes it.
        Turn::tool_use([ToolCall::bash("rm .git/escape")]),
        Turn::text("Removed .git/escape."),
    ]));
    let project = h.root().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("main.rs"), "fn main() {}\n").unwrap();
    git(&project, &["init", "--quiet", "--initial-branch", "main"]);
    git(&project, &["add", "--all"]);
    git(&project, &["commit", "--quiet", "-m", "start"]);
    let start = git(&project, &["rev-parse", "main"]);
    // Interactive, so the session takes a second message after its first turn.
    let created = h.json(&[
        "task",
        "create",
        "Link /etc into .git",
        "--workspace",
        "project",
        "--interactive",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let ws = workspace(&h, &session_id);
    h.wait_for("the first turn's result", || {
        (!h.task_events(&task_id, "turn_result").is_empty()).then_some(())
    });
    assert!(
        std::fs::symlink_metadata(ws.join(".git/escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let out = h.run(&["session", "pull", &session_id, "--repo", "project"]);
    let stderr = stderr_of(&out);
    assert!(stderr.starts_with("error[E110]: "), "{stderr}");
    assert!(
        stderr.contains(".git/escape"),
        "the path is named: {stderr}"
    );
    assert!(
        stderr.contains("remove it inside the session") && stderr.contains("pull again"),
        "{stderr}"
    );
    assert!(
        git(&project, &["for-each-ref", "refs/heads/parhelia"]).is_empty(),
        "no branch was made"
    );
    // "Look at the named path (`parhelia checkpoint show`)": the refused checkpoint
    // (named in the message) lists it.
    let checkpoint = stderr
        .split("(checkpoint ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no checkpoint named: {stderr}"));
    let shown = h.ok(&["checkpoint", "show", checkpoint]);
    assert!(shown.contains(".git/escape"), "{shown}");

    // The session made it: it removes it, then the pull succeeds.
    h.ok(&["session", "send", &session_id, "Remove .git/escape"]);
    h.wait_for("the second turn's result", || {
        (h.task_events(&task_id, "turn_result").len() >= 2).then_some(())
    });
    assert!(std::fs::symlink_metadata(ws.join(".git/escape")).is_err());
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
    assert_eq!(git(&project, &["rev-parse", &branch]), start);
    assert!(
        std::fs::symlink_metadata(project.join(".git/escape")).is_err(),
        "nothing of the link reached the user's repository"
    );
}

/// Plants checkpoint `bad` in the session's store: `entries` as its workspace tree
/// (written raw, as a hostile session could), with the newest honest checkpoint's
/// conversation, so nothing but its workspace keeps it from being restored.
fn plant(h: &Harness, session_id: &str, entries: &[parhelia_checkpoint::raw::RawEntry]) -> String {
    use parhelia_checkpoint::raw::{RawOptions, write_checkpoint_with};
    let root = h
        .state()
        .join("sessions")
        .join(session_id)
        .join("volume/checkpoints");
    let store = parhelia_checkpoint::Store::open(&root).unwrap();
    let newest = store.list().unwrap().last().unwrap().id.clone();
    let honest = store.load(&newest).unwrap();
    let conversation = honest
        .tree("conversation")
        .expect("the honest checkpoint has a conversation")
        .clone();
    let id = write_checkpoint_with(&store, "workspace", entries, &RawOptions::default(), |m| {
        m.trees.push(conversation);
        for layer in &honest.layers {
            if !m.layers.contains(layer) {
                m.layers.push(*layer);
            }
        }
        m.trigger = "turn_end".into();
    })
    .unwrap();
    id.to_string()
}

/// E621 and E624: checkpoints the store refuses to restore (an entry that would write
/// outside the workspace; a path longer than the caps), planted as a session could
/// write them. A rollback to either is refused before anything is written, and the
/// advice, to pick another checkpoint, is followed both ways it names: plain `resume`
/// passes over both, naming them, and continues from the honest one; a rollback to the
/// honest one picked from `checkpoint list` restores it and the conversation continues.
#[test]
fn e621_e624_refused_checkpoints_advise_another_which_restores() {
    use parhelia_checkpoint::raw::RawEntry;
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("a.txt", "honest\n")]),
        Turn::text("Done."),
        // After the plain resume.
        Turn::text("Resumed past both."),
        // After the rollback to the honest checkpoint.
        Turn::text("Back at the honest checkpoint."),
    ]));
    let created = h.json(&["task", "create", "Write a.txt", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let ws = workspace(&h, &session_id);
    let listed = h.json(&["checkpoint", "list", &session_id, "--json"]);
    let honest = listed.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut long = String::new();
    let mut deep = Vec::new();
    while long.len() < 5000 {
        if !long.is_empty() {
            long.push('/');
        }
        long.push_str(&"d".repeat(200));
        deep.push(RawEntry::dir(&long));
    }
    deep.push(RawEntry::file(&format!("{long}/f"), b"x"));
    let unsafe_cp = plant(&h, &session_id, &[RawEntry::file("../escape", b"x")]);
    let oversized = plant(&h, &session_id, &deep);
    std::fs::write(ws.join("a.txt"), "changed since\n").unwrap();

    for (bad, code, advice) in [
        (
            &unsafe_cp,
            "E621",
            "pick another (`parhelia checkpoint list SESSION_ID`",
        ),
        (
            &oversized,
            "E624",
            "Pick another checkpoint (`parhelia checkpoint list SESSION_ID`)",
        ),
    ] {
        let out = h.run(&["checkpoint", "rollback", bad, "--yes"]);
        let stderr = stderr_of(&out);
        assert!(
            !out.status.success() && stderr.starts_with(&format!("error[{code}]: ")),
            "{bad}: {stderr}"
        );
        assert!(stderr.contains(advice), "{code}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(ws.join("a.txt")).unwrap(),
            "changed since\n",
            "{code}: nothing was written"
        );
        assert!(!ws.parent().unwrap().join("escape").exists());
    }

    // Followed: plain `resume` passes over both, naming them, and continues from the
    // honest one.
    let resumed = h.ok(&["resume", &session_id, "-m", "Continue."]);
    for (bad, code) in [(&unsafe_cp, "E621"), (&oversized, "E624")] {
        assert!(
            resumed.contains(&format!("skipped    {bad} [{code}]")),
            "{resumed}"
        );
    }
    assert!(
        resumed.contains(&format!("resumed from {honest}")),
        "{resumed}"
    );
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" && t["result"] != "Done."
    });
    assert_eq!(task["result"], "Resumed past both.", "{task:#}");
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "honest\n"
    );

    // Or picked from the list by hand: the rollback to the honest one restores it and
    // continues the conversation.
    std::fs::write(ws.join("a.txt"), "changed again\n").unwrap();
    let listed = h.ok(&["checkpoint", "list", &session_id]);
    assert!(listed.contains(&honest), "{listed}");
    h.ok(&[
        "checkpoint",
        "rollback",
        &honest,
        "--yes",
        "-m",
        "Carry on from here.",
    ]);
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" && t["result"] != "Resumed past both."
    });
    assert_eq!(task["result"], "Back at the honest checkpoint.", "{task:#}");
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "honest\n"
    );
}

/// E623: a session's store still over `checkpoint.max_store_mb` after pruning keeps its
/// newest checkpoint and says so: a `store_over_quota` event, a warning under `task
/// show` and `checkpoint list` (and `store_over_quota` in `task show --json`) that names
/// the fix. Followed as printed — the quota raised in config.toml, `coordinator reload`,
/// the advised `resume` — the session's next checkpoint fits and the warning is gone.
#[test]
fn e623_a_store_over_its_quota_is_reported_and_the_advised_raise_clears_it() {
    let h = Harness::new(Script::new([
        // 3 MiB that no compression shrinks: over a 1 MiB quota in any checkpoint.
        Turn::tool_use([ToolCall::bash(
            "head -c 3145728 /dev/urandom > blob.bin && echo written",
        )]),
        Turn::text("Wrote the blob."),
        Turn::text("Resumed with room to spare."),
    ]));
    let config = h.state().join("config.toml");
    std::fs::write(&config, "[checkpoint]\nmax_store_mb = 1\n").unwrap();
    let created = h.json(&["task", "create", "Write a blob", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(
        task["status"], "completed",
        "the quota refuses nothing: {task:#}"
    );

    // What happened is journaled: the store was over the quota after a checkpoint.
    let over = h.task_events(&task_id, "store_over_quota");
    assert!(!over.is_empty(), "no store_over_quota event");
    let last = &over.last().unwrap()["kind"]["store_over_quota"];
    assert_eq!(last["error_code"], "E623", "{last:#}");
    assert_eq!(last["quota_bytes"], 1024 * 1024, "{last:#}");
    assert!(
        last["store_bytes"].as_u64().unwrap() > 3 * 1024 * 1024,
        "{last:#}"
    );
    // The checkpoint it names was kept and restores the blob.
    let kept = last["checkpoint_id"].as_str().unwrap().to_string();
    let listed = h.json(&["checkpoint", "list", &session_id, "--json"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == kept.as_str()),
        "{listed:#}"
    );

    let shown = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(shown["store_over_quota"]["code"], "E623", "{shown:#}");
    assert_eq!(shown["store_over_quota"]["checkpoint_id"], kept.as_str());
    let text = h.ok(&["task", "show", &task_id]);
    assert!(text.contains("warning[E623]: "), "{text}");
    let listed_text = h.ok(&["checkpoint", "list", &session_id]);
    assert!(listed_text.contains("warning[E623]: "), "{listed_text}");
    assert!(text.contains("`checkpoint.max_store_mb`"), "{text}");
    assert!(text.contains("`parhelia coordinator reload`"), "{text}");

    // Followed as printed.
    std::fs::write(&config, "[checkpoint]\nmax_store_mb = 64\n").unwrap();
    run_advised(&h, &advised(&text, "parhelia coordinator reload"));
    let resume = advised(&text, "parhelia resume ");
    assert_eq!(resume, ["resume", &session_id, "-m", "go on"], "{text}");
    run_advised(&h, &resume);
    let task = h.wait_task(&task_id, |t| {
        t["container_id"] != created["container_id"]
            && (t["status"] == "completed" || t["status"] == "failed")
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Resumed with room to spare.", "{task:#}");
    assert!(
        task.get("store_over_quota").is_none(),
        "the store fits the raised quota: {task:#}"
    );
    let text = h.ok(&["task", "show", &task_id]);
    assert!(!text.contains("E623"), "{text}");
    let listed_text = h.ok(&["checkpoint", "list", &session_id]);
    assert!(!listed_text.contains("E623"), "{listed_text}");
}

/// E401: the model API refuses the key the task was created with (the stand-in accepts
/// only the harness's own key, as the API refuses a revoked one). The advice says to
/// export a valid key in the shell `parhelia` runs from and create the task again;
/// followed as printed, the new task reaches the model with that key and completes.
#[test]
fn e401_a_refused_key_replaced_as_advised_completes_the_task_again() {
    let mut h = Harness::new_accepting_only_its_key(Script::new([Turn::text("Hello.")]));
    h.set_env("ANTHROPIC_API_KEY", "sk-ant-revoked-not-a-secret");
    let out = h.run(&["task", "create", "Say hi", "--sync"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("error[E401]: "), "{stderr}");
    assert!(
        stderr.contains("Export a valid `ANTHROPIC_API_KEY` in the shell you run `parhelia` from"),
        "{stderr}"
    );
    assert!(stderr.contains("create the task again"), "{stderr}");
    assert_eq!(
        h.stand_in.turns_consumed(),
        0,
        "the refused key got no turn"
    );

    // Followed: the valid key exported, the task created again.
    h.set_env("ANTHROPIC_API_KEY", parhelia_testkit::harness::TEST_API_KEY);
    let created = h.json(&["task", "create", "Say hi", "--json"]);
    let task_id = created["task_id"].as_str().unwrap();
    let task = h.wait_task(task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Hello.", "{task:#}");
}

/// E508: `PARHELIA_ISOLATION=required` where `bwrap` cannot make a sandbox (a `bwrap`
/// first on PATH that fails, as on a host without unprivileged user namespaces). The
/// launch is refused and the advice names the ways out; followed as printed (isolation
/// set to `none`, the coordinator restarted so it sees the environment), the task
/// completes.
#[test]
fn e508_isolation_that_cannot_be_had_is_refused_and_the_advised_setting_runs() {
    let mut h = Harness::new(Script::new([Turn::text("Ran unconfined.")]));
    let fake = h.root().join("broken-bwrap");
    std::fs::create_dir(&fake).unwrap();
    let bwrap = fake.join("bwrap");
    std::fs::write(
        &bwrap,
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bwrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.display(), h.env_value("PATH").unwrap());
    h.set_env("PATH", &path);
    h.set_env("PARHELIA_ISOLATION", "required");

    let out = h.run(&["task", "create", "Say hi", "--json"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("error[E508]: "), "{stderr}");
    assert!(stderr.contains("`PARHELIA_ISOLATION=none`"), "{stderr}");
    let stop = advised(&stderr, "parhelia coordinator stop");

    // Followed: isolation off in the environment, the coordinator restarted.
    h.set_env("PARHELIA_ISOLATION", "none");
    run_advised(&h, &stop);
    let created = h.json(&["task", "create", "Say hi", "--json"]);
    let task_id = created["task_id"].as_str().unwrap();
    let task = h.wait_task(task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Ran unconfined.", "{task:#}");
}

/// E402: the session's secret in the database no longer matches its agent's (as after
/// a database edited or put back by hand). A session command is refused; the advice —
/// cancel the task (the stop needs no secret), then retry it (a new attempt, a new
/// secret) — followed as printed, finishes the task.
#[test]
fn e402_a_secret_the_agent_refuses_cancel_and_retry_as_advised_finish() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo started > started.txt; sleep 600")]),
        // The retry's turn.
        Turn::text("Done on the new attempt."),
    ]));
    let created = h.json(&["task", "create", "Work a while", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the first turn's tool call", || {
        (!h.task_events(&task_id, "tool_call").is_empty()).then_some(())
    });
    // Edited by hand, the way a user (or a restored copy) would change it.
    let db = rusqlite::Connection::open(h.state().join("parhelia.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE sessions SET secret = 'not-the-agents-secret' WHERE id = ?1",
        [&session_id],
    )
    .unwrap();
    drop(db);

    let out = h.run(&["session", "send", &session_id, "anything new?"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.starts_with("error[E402]: "), "{stderr}");
    let with_id = stderr.replace("TASK_ID", &task_id);
    let cancel = advised(&with_id, "parhelia task cancel ");
    let retry = advised(&with_id, "parhelia task retry ");

    run_advised(&h, &cancel);
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "cancelled", "{task:#}");
    run_advised(&h, &retry);
    let task = h.wait_task(&task_id, |t| {
        t["attempt"] == 2 && t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Done on the new attempt.", "{task:#}");
}

/// E406: a control request (`task cancel`) from another PID namespace (what a command
/// run inside a session sandbox is) is refused, whatever token it presents. The advice — run it as
/// the coordinator's user from your own shell — followed, the same command works.
/// Needs `unshare --pid` (root or CAP_SYS_ADMIN); else the test says SKIPPED.
#[test]
fn e406_a_request_from_another_pid_namespace_is_refused_and_works_from_the_users_shell() {
    let h = Harness::new(Script::new([]));
    // The coordinator runs (a held task starts it).
    let held = h.json(&["task", "create", "later", "--no-dispatch", "--json"]);
    let task_id = held["task_id"].as_str().unwrap();
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: `unshare --pid` is not permitted here");
        return;
    }
    let out = h
        .command_under(
            &["unshare", "--pid", "--fork"],
            &["task", "cancel", task_id],
        )
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.starts_with("error[E406]: "), "{stderr}");
    assert!(stderr.contains("another PID namespace"), "{stderr}");
    assert!(
        stderr.contains("Run `parhelia` as the coordinator's user from your own shell"),
        "{stderr}"
    );
    let task = h.json(&["task", "show", task_id, "--json"]);
    assert_eq!(
        task["status"], "pending",
        "the refused request changed nothing"
    );
    // Followed: the same command from the user's own shell.
    h.ok(&["task", "cancel", task_id]);
    let task = h.json(&["task", "show", task_id, "--json"]);
    assert_eq!(task["status"], "cancelled", "{task:#}");
}

/// E114: a local task asking for a GPU the host does not have is refused before
/// anything starts. Followed as advised for a local run (`--gpu` left out), the task
/// completes. (The `--backend modal` half needs Modal.) Skipped on a host that has the
/// GPU.
#[test]
fn e114_a_gpu_the_host_lacks_is_refused_and_the_task_without_it_runs_locally() {
    let has_gpu = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("H200"));
    if has_gpu {
        eprintln!("SKIPPED: this host has an H200");
        return;
    }
    let h = Harness::new(Script::new([Turn::text("Ran on the CPU.")]));
    let out = h.run(&["task", "create", "Train it", "--gpu", "H200", "--json"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.starts_with("error[E114]: "), "{stderr}");
    assert!(
        stderr.contains("leave `--gpu` out for a local run"),
        "{stderr}"
    );
    let listed = h.json(&["task", "list", "--json"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "nothing was started: {listed:#}"
    );

    let created = h.json(&["task", "create", "Train it", "--json"]);
    let task_id = created["task_id"].as_str().unwrap();
    let task = h.wait_task(task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
}

/// E115: the user's Claude Code setup cannot be read (`~/.claude` is a file, not the
/// directory Claude Code keeps). Nothing starts; the advice's three ways are followed:
/// `config sync --dry-run` names the path and why, `--no-user-config` starts without
/// the setup and completes, and with the named path fixed (a real `~/.claude` with a
/// `CLAUDE.md`) a task starts with the setup and completes.
#[test]
fn e115_an_unreadable_setup_is_refused_and_each_advised_way_runs() {
    let h = Harness::new(Script::new([
        Turn::text("Ran without your setup."),
        Turn::text("Ran with your setup."),
    ]));
    let claude_dir = h.home().join(".claude");
    std::fs::write(&claude_dir, "not a directory\n").unwrap();
    // Refused at the launch: --sync follows it (an async create returns first).
    let out = h.run(&["task", "create", "Say hi", "--sync", "--json"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.starts_with("error[E115]: "), "{stderr}");
    assert!(
        stderr.contains(&claude_dir.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("`parhelia config sync --dry-run`"),
        "{stderr}"
    );
    assert!(stderr.contains("`--no-user-config`"), "{stderr}");

    let dry = h.run(&["config", "sync", "--dry-run"]);
    let why = stderr_of(&dry);
    assert!(
        why.starts_with("error[E115]: "),
        "the same cause, the same code: {why}"
    );
    assert!(
        why.contains(&claude_dir.display().to_string()) && why.contains("not a directory"),
        "the dry run names the path and why: {why}"
    );

    let created = h.json(&["task", "create", "Say hi", "--no-user-config", "--json"]);
    let task = h.wait_task(created["task_id"].as_str().unwrap(), |t| {
        t["status"] != "running"
    });
    assert_eq!(task["status"], "completed", "{task:#}");

    // The named path fixed: the setup is read again.
    std::fs::remove_file(&claude_dir).unwrap();
    std::fs::create_dir(&claude_dir).unwrap();
    std::fs::write(claude_dir.join("CLAUDE.md"), "Be brief.\n").unwrap();
    let created = h.json(&["task", "create", "Say hi", "--json"]);
    let task = h.wait_task(created["task_id"].as_str().unwrap(), |t| {
        t["status"] != "running"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Ran with your setup.", "{task:#}");
}

/// The session's store bind-mounted read-only over itself for the test's lifetime.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> Option<ReadOnly> {
        let run = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["--bind"]) {
            return None;
        }
        let guard = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,bind,ro"]).then_some(guard)
    }

    fn lift(&self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        // A second umount of an unmounted dir fails harmlessly.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// E520: the session's checkpoint store turned read-only under a running session (a
/// failing or remounted volume). `checkpoint create` is refused with the file and the
/// system's error; followed as advised (the volume read-write again, then the same
/// command), the checkpoint is taken. Needs `mount` (CAP_SYS_ADMIN), else SKIPPED.
#[test]
fn e520_a_read_only_store_is_named_and_the_checkpoint_taken_once_fixed() {
    let h = Harness::new(Script::new([Turn::tool_use([ToolCall::bash(
        "echo working > work.txt; sleep 600",
    )])]));
    let created = h.json(&["task", "create", "Work a while", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the tool call", || {
        (!h.task_events(&task_id, "tool_call").is_empty()).then_some(())
    });
    let store = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("volume")
        .join("checkpoints");
    let before = h.json(&["checkpoint", "list", &session_id, "--json"]);
    let Some(read_only) = ReadOnly::mount(&store) else {
        eprintln!("SKIPPED: bind-mounting read-only is not permitted here (needs CAP_SYS_ADMIN)");
        h.ok(&["task", "cancel", &task_id]);
        return;
    };

    let out = h.run(&[
        "checkpoint",
        "create",
        &session_id,
        "-m",
        "before the change",
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.starts_with("error[E520]: "), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let again = advised(&stderr, "parhelia checkpoint create ");
    assert_eq!(again, ["checkpoint", "create", "SESSION_ID"], "{stderr}");

    // Followed: the volume read-write again, the same command.
    read_only.lift();
    assert_eq!(
        h.json(&["checkpoint", "list", &session_id, "--json"]),
        before,
        "earlier checkpoints are untouched"
    );
    let made = h.ok(&[
        "checkpoint",
        "create",
        &session_id,
        "-m",
        "before the change",
    ]);
    let after = h.json(&["checkpoint", "list", &session_id, "--json"]);
    assert_eq!(
        after.as_array().unwrap().len(),
        before.as_array().unwrap().len() + 1,
        "{made}\n{after:#}"
    );
    h.ok(&["task", "cancel", &task_id]);
}
