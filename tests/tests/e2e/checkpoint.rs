//! Checkpoints and resume end to end: the real `parhelia`, agent, tmux and
//! Claude Code against the scripted model. Nothing a session wrote is lost:
//! files written by `Write` and by shell commands are checkpointed together
//! with the conversation; a killed agent's session resumes on a fresh agent
//! with its history; a rollback removes newer files and can itself be undone.

use std::path::PathBuf;

use parhelia_testkit::git;
use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::RequestKind;
use parhelia_testkit::{Script, ToolCall, Turn};

fn create(h: &Harness, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["task", "create", prompt, "--json"];
    args.extend_from_slice(extra);
    let out = h.ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn workspace(h: &Harness, session_id: &str) -> PathBuf {
    h.state()
        .join("sessions")
        .join(session_id)
        .join("workspace")
}

fn checkpoints(h: &Harness, session_id: &str) -> Vec<serde_json::Value> {
    h.json(&["checkpoint", "list", session_id, "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The agent dies with SIGKILL. Its tmux server (and Claude Code, still
/// running `tail -f`) stays behind, as it would not in a real container; the
/// resume must end it before another agent takes the workspace.
fn kill_agent(h: &Harness, container_id: &str) -> PathBuf {
    let (pid, tmux_socket) = h.agent_pid_and_tmux(container_id);
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tmux_socket
}

fn tmux_alive(socket: &std::path::Path) -> bool {
    std::process::Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .arg("has-session")
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
#[test]
fn a_killed_session_resumes_from_its_checkpoint_with_its_conversation() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("written.txt", "by the Write tool\n")]),
        Turn::tool_use([ToolCall::bash("echo by-bash > shell.txt")]),
        // A risky command: checkpointed before it runs, then it hangs until killed.
        Turn::tool_use([ToolCall::bash("rm -rf scratch; tail -f /dev/null")]),
        // After the resume:
        Turn::text("Resumed and finished."),
    ]));
    // Unconfined, so a leftover tmux server can outlive its agent and the resume must
    // end it; under bubblewrap the sandbox dies with its agent
    // (e2e::sandbox_attacks::a_killed_agent_takes_its_sandbox_with_it).
    h.set_env("PARHELIA_ISOLATION", "none");
    let created = create(&h, "Write two files, then clean up", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();

    // The pre-tool checkpoint holds both files: the Write tool's and the shell's.
    let checkpoint = h.wait_for("the pre_tool checkpoint", || {
        h.task_events(&task_id, "checkpoint_created")
            .into_iter()
            .find(|e| e["kind"]["checkpoint_created"]["trigger"] == "pre_tool")
    });
    let checkpoint_id = checkpoint["kind"]["checkpoint_created"]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = checkpoints(&h, &session_id);
    assert!(
        listed.iter().any(|c| c["id"] == checkpoint_id.as_str()),
        "{listed:#?}"
    );
    // Its stats carry every phase as measured: the git capture (from the manifest) and
    // the commit (journaled by the agent: the manifest cannot hold it), and the event
    // says how long the PreToolUse hook waited for it.
    let created = &checkpoint["kind"]["checkpoint_created"];
    let row = listed
        .iter()
        .find(|c| c["id"] == checkpoint_id.as_str())
        .unwrap();
    let phases = &row["stats"]["phase_ms"];
    assert_eq!(phases["git"], created["git_ms"], "{row:#}\n{created:#}");
    assert_eq!(phases["fsync"], created["fsync_ms"], "{row:#}\n{created:#}");
    assert!(
        phases["git"].is_u64() && phases["fsync"].is_u64(),
        "{row:#}"
    );
    let waited = created["hook_wait_ms"].as_u64().expect("a hook waited");
    assert!(
        waited >= created["duration_ms"].as_u64().unwrap(),
        "the hook waited for the whole checkpoint: {created:#}"
    );
    let shown = h.json(&["checkpoint", "show", &checkpoint_id, "--json"]);
    assert_eq!(shown["checkpoint"]["stats"], row["stats"], "{shown:#}");
    let shown = h.ok(&["checkpoint", "show", &checkpoint_id]);
    assert!(
        shown.contains("written.txt") || shown.contains("files"),
        "{shown}"
    );

    // The container dies mid-task, and the work after the checkpoint is lost with it.
    // Its tmux server may still run (until the reconciler's next pass ends it,
    // e2e/procs.rs); either way the resume must not race it.
    let leftover_tmux = kill_agent(&h, &container_id);
    let ws = workspace(&h, &session_id);
    std::fs::write(ws.join("stray.txt"), "written after the checkpoint").unwrap();
    std::fs::remove_file(ws.join("written.txt")).unwrap();

    let requests_before = h.stand_in.requests().len();
    h.ok(&[
        "resume",
        &session_id,
        "--checkpoint",
        &checkpoint_id,
        "-m",
        "Please continue.",
    ]);
    assert!(
        !tmux_alive(&leftover_tmux),
        "the dead agent's tmux server (and Claude Code) outlived the resume"
    );
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" || t["status"] == "failed"
    });
    assert_eq!(task["status"], "completed", "{task:#}");

    // The workspace is exactly the checkpoint (plus what the resumed turn did).
    assert_eq!(
        std::fs::read_to_string(ws.join("written.txt")).unwrap(),
        "by the Write tool\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("shell.txt")).unwrap(),
        "by-bash\n"
    );
    assert!(
        !ws.join("stray.txt").exists(),
        "a file created after the checkpoint survived the restore"
    );

    // The resumed Claude Code sent the earlier conversation to the model.
    let resumed: Vec<_> = h.stand_in.requests()[requests_before..]
        .iter()
        .filter(|r| r.kind == RequestKind::Turn)
        .cloned()
        .collect();
    let first = resumed
        .first()
        .expect("the resumed session called the model");
    assert!(
        first.message_count > 3,
        "the resumed request carried only {} messages",
        first.message_count
    );
    assert_eq!(
        first.last_user_text.as_deref().map(str::trim),
        Some("Please continue.")
    );

    // A second container of the same session; the task's cost covers both.
    let restored = h.task_events(&task_id, "checkpoint_restored");
    assert_eq!(restored.len(), 1, "{restored:#?}");
}

#[test]
fn rollback_removes_newer_files_and_can_be_undone() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("first.txt", "one\n")]),
        Turn::text("First done."),
        Turn::tool_use([ToolCall::write("second.txt", "two\n")]),
        Turn::text("Second done."),
    ]));
    let created = create(&h, "Write first.txt", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let first_cp = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    h.ok(&["resume", &session_id, "-m", "Now write second.txt"]);
    let ws = workspace(&h, &session_id);
    h.wait_for("second.txt and the session's end", || {
        let t = h.json(&["task", "show", &task_id, "--json"]);
        (ws.join("second.txt").exists() && t["status"] == "completed").then_some(())
    });
    let second_cp = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first_cp, second_cp);

    // Diff shows what the second part added.
    let diff = h.json(&["checkpoint", "diff", &first_cp, &second_cp, "--json"]);
    let added: Vec<String> = diff["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert!(added.iter().any(|p| p == "second.txt"), "{diff:#}");
    let conversation = h.ok(&[
        "checkpoint",
        "diff",
        &first_cp,
        &second_cp,
        "--conversation",
    ]);
    assert!(
        conversation.contains("Now write second.txt"),
        "{conversation}"
    );

    // Rollback to the first checkpoint: second.txt goes away.
    h.ok(&["checkpoint", "rollback", &first_cp, "--yes"]);
    h.wait_for("the rollback's restore", || {
        (!ws.join("second.txt").exists()).then_some(())
    });
    assert!(ws.join("first.txt").exists());

    // And the rollback can be undone: the second checkpoint still restores.
    h.ok(&["checkpoint", "rollback", &second_cp, "--yes"]);
    h.wait_for("the undo", || ws.join("second.txt").exists().then_some(()));
    assert_eq!(
        std::fs::read_to_string(ws.join("second.txt")).unwrap(),
        "two\n"
    );
}

#[test]
fn a_corrupted_checkpoint_is_refused_and_changes_nothing() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("kept.txt", "kept\n")]),
        Turn::text("Done."),
    ]));
    let created = create(&h, "Write kept.txt", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let cp = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Flip one bit in every layer of the store.
    let store = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("volume/checkpoints");
    let mut flipped = 0;
    for entry in walk(&store) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if entry.is_file()
            && (name.contains("layer") || name.ends_with(".zst") || name.ends_with(".pack"))
        {
            let mut bytes = std::fs::read(&entry).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            std::fs::write(&entry, bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(
        flipped > 0,
        "no layer files found under {}",
        store.display()
    );
    let ws = workspace(&h, &session_id);
    std::fs::write(ws.join("newer.txt"), "must survive").unwrap();

    let out = h.run(&["checkpoint", "rollback", &cp, "--yes"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("E620"), "{stderr}");
    assert!(
        ws.join("newer.txt").exists(),
        "a refused restore changed the workspace"
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// `[checkpoint]` in `.parhelia/config.toml` reaches the agent: excluded
/// paths are never captured, and retention keeps only the newest checkpoints.
#[test]
fn checkpoint_excludes_and_retention_come_from_the_config() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash(
            "mkdir -p build && echo obj > build/out.o && echo src > src.txt",
        )]),
        Turn::text("Built."),
    ]));
    std::fs::write(
        h.state().join("config.toml"),
        "[checkpoint]\nexcludes = [\"build/\"]\nkeep_last = 1\n",
    )
    .unwrap();
    let created = create(&h, "Build it", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");

    // The spec carried the policy.
    let container_id = created["container_id"].as_str().unwrap();
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            h.state()
                .join("containers")
                .join(container_id)
                .join("spec.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(spec["checkpoint"]["excludes"][0], "build/", "{spec:#}");

    // turn_end and session_end were both taken; retention kept one.
    let made = h.task_events(&task_id, "checkpoint_created");
    assert!(made.len() >= 2, "{made:#?}");
    let listed = checkpoints(&h, &session_id);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let shown = h.json(&[
        "checkpoint",
        "show",
        listed[0]["id"].as_str().unwrap(),
        "--json",
    ]);
    let paths: Vec<&str> = shown["workspace_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(paths.contains(&"src.txt"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("build")), "{paths:?}");
}

/// With `reconciler.auto_resume`, a session whose agent died is marked lost,
/// resumed on a fresh container from its latest checkpoint and told to
/// continue, with nobody typing `parhelia resume`.
#[test]
fn a_lost_session_is_resumed_automatically_when_the_policy_says_so() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("a.txt", "a\n")]),
        Turn::tool_use([ToolCall::bash("rm -rf scratch; tail -f /dev/null")]),
        Turn::text("Continued after the crash."),
    ]));
    std::fs::write(
        h.state().join("config.toml"),
        "[reconciler]\nauto_resume = true\npoll_interval_seconds = 0.2\nstale_threshold_seconds = 1.0\n",
    )
    .unwrap();
    let created = create(&h, "Work until the crash", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the pre_tool checkpoint", || {
        h.task_events(&task_id, "checkpoint_created")
            .into_iter()
            .find(|e| e["kind"]["checkpoint_created"]["trigger"] == "pre_tool")
    });
    let leftover_tmux = kill_agent(&h, &container_id);

    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" || t["status"] == "failed"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_ne!(
        task["container_id"],
        container_id.as_str(),
        "a new container ran it"
    );
    assert_eq!(h.task_events(&task_id, "checkpoint_restored").len(), 1);
    assert!(
        !tmux_alive(&leftover_tmux),
        "the dead agent's processes were ended"
    );
    let last = h
        .stand_in
        .requests()
        .into_iter()
        .rfind(|r| r.kind == RequestKind::Turn)
        .unwrap();
    assert!(
        last.last_user_text
            .as_deref()
            .is_some_and(|t| t.contains("interrupted")),
        "the resumed session was told to continue: {:?}",
        last.last_user_text
    );
}

/// Issue 12: an agent killed mid-session before any checkpoint held the
/// conversation (in chaos: during the write of its first one) left Claude Code's
/// transcript in its container; the resume started the conversation over. Now the
/// reconciler checkpoints what the lost container left (`agent_gone`: workspace and
/// conversation, taken by the agent's own checkpoint code) before it marks it lost,
/// and the resume continues that conversation.
#[test]
fn a_lost_container_is_checkpointed_whole_and_the_resume_continues_its_conversation() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo one > one.txt")]),
        // Held: the agent dies while Claude Code waits for this answer.
        Turn::hold("too late"),
        Turn::text("Continued the same conversation."),
    ]));
    h.set_env("PARHELIA_ISOLATION", "none");
    std::fs::write(
        h.state().join("config.toml"),
        "[reconciler]\npoll_interval_seconds = 0.2\nstale_threshold_seconds = 1.0\n",
    )
    .unwrap();
    let created = create(&h, "Write one.txt, then wait", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the second request at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    // Only the start checkpoint so far: nothing the agent took holds the first turn.
    let before: Vec<String> = checkpoints(&h, &session_id)
        .iter()
        .map(|c| c["trigger"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(before, ["start"]);

    // The agent and everything it started die (as a container does).
    let tmux = kill_agent(&h, &container_id);
    parhelia_testkit::procs::tmux_kill_server(&tmux);
    h.stand_in.release_hold();
    let lost = h.wait_for("the container marked lost", || {
        h.json(&[
            "events",
            "list",
            "--task",
            &task_id,
            "--type",
            "container_lost",
            "--json",
        ])
        .as_array()
        .and_then(|a| a.first().cloned())
    });
    let salvaged = &lost["payload"]["salvaged"];
    assert_eq!(salvaged["conversation"], true, "{lost:#}");
    let salvaged_id = salvaged["checkpoint_id"].as_str().unwrap().to_string();
    assert!(
        lost["message"].as_str().unwrap().contains(&salvaged_id),
        "{lost:#}"
    );
    let listed = checkpoints(&h, &session_id);
    let taken = listed
        .iter()
        .find(|c| c["id"] == salvaged_id.as_str())
        .unwrap_or_else(|| panic!("{salvaged_id} not listed: {listed:#?}"));
    assert_eq!(taken["trigger"], "agent_gone", "{taken:#}");

    let requests_before = h.stand_in.requests().len();
    let resumed = h.ok(&["resume", &session_id, "-m", "Please go on."]);
    assert!(resumed.contains(&salvaged_id), "{resumed}");
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" || t["status"] == "failed"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        task["result"], "Continued the same conversation.",
        "{task:#}"
    );
    // The model sees the first turn: its Bash call's result, not a fresh start.
    let next = h.stand_in.requests()[requests_before..]
        .iter()
        .find(|r| r.kind == RequestKind::Turn)
        .cloned()
        .expect("the resumed session asked the model");
    assert_eq!(
        next.last_user_text.as_deref(),
        Some("Please go on."),
        "{next:#?}"
    );
    assert!(
        next.roles.len() > 2,
        "the conversation started over: {next:#?}"
    );
    assert!(
        next.roles.iter().filter(|r| *r == "assistant").count() >= 1,
        "{next:#?}"
    );
}

/// The caps on reading a store come from `[checkpoint]` (issue 11): they reach the
/// agent's spec, and a checkpoint over them is refused with E624 by the CLI's
/// readers and by a rollback, before the workspace changes.
#[test]
fn checkpoint_read_caps_come_from_the_config() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash(
            "mkdir -p a b && echo 1 > a/one && echo 2 > b/two && echo 3 > three",
        )]),
        Turn::text("Wrote."),
    ]));
    let config = h.state().join("config.toml");
    std::fs::write(&config, "[checkpoint]\nmax_restore_entries = 1000\n").unwrap();
    let created = create(&h, "Write files", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let container_id = created["container_id"].as_str().unwrap();
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            h.state()
                .join("containers")
                .join(container_id)
                .join("spec.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec["checkpoint"]["limits"]["max_entries"], 1000,
        "{spec:#}"
    );
    let cp = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(&["checkpoint", "show", &cp]);

    // Lower the cap below what the checkpoint holds; a new coordinator reads it.
    h.ok(&["coordinator", "stop"]);
    std::fs::write(&config, "[checkpoint]\nmax_restore_entries = 2\n").unwrap();
    let ws = workspace(&h, &session_id);
    std::fs::write(ws.join("newer.txt"), "must survive").unwrap();
    let out = h.run(&["checkpoint", "show", &cp]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("E624"), "{stderr}");
    let out = h.run(&["checkpoint", "rollback", &cp, "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("E624"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(ws.join("newer.txt")).unwrap(),
        "must survive",
        "a refused rollback changed the workspace"
    );
}

/// The session's conversation as Claude Code's transcript line count in a checkpoint.
fn conversation_files(h: &Harness, session_id: &str, checkpoint_id: &str) -> u64 {
    let store = parhelia_checkpoint::Store::open(
        &h.state()
            .join("sessions")
            .join(session_id)
            .join("volume")
            .join("checkpoints"),
    )
    .unwrap();
    let id = parhelia_checkpoint::CheckpointId::parse(checkpoint_id).unwrap();
    store
        .load(&id)
        .unwrap()
        .tree("conversation")
        .map_or(0, |t| t.file_count)
}

/// Issue 12, item 2: the safety checkpoint a restore takes first is a whole
/// checkpoint (rolling back to it continues the conversation), and the default
/// `resume` and `session recover` pass over a conversation-less checkpoint (as
/// older agents wrote them) for the newest restorable one, saying why.
#[test]
fn the_safety_checkpoint_has_the_conversation_and_resume_skips_incomplete_ones() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("first.txt", "one\n")]),
        Turn::text("First done."),
        Turn::tool_use([ToolCall::write("second.txt", "two\n")]),
        Turn::text("Second done."),
        Turn::text("Back at the safety checkpoint."),
        Turn::text("Resumed past the incomplete one."),
    ]));
    let created = create(&h, "Write first.txt", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");

    // A resume: the new container's safety checkpoint comes first, with the conversation.
    h.ok(&["resume", &session_id, "-m", "Now write second.txt"]);
    let ws = workspace(&h, &session_id);
    h.wait_for("second.txt and the session's end", || {
        let t = h.json(&["task", "show", &task_id, "--json"]);
        (ws.join("second.txt").exists() && t["status"] == "completed").then_some(())
    });
    let safety = h
        .task_events(&task_id, "checkpoint_created")
        .into_iter()
        .find(|e| e["kind"]["checkpoint_created"]["trigger"] == "pre_restore")
        .expect("the resume's safety checkpoint");
    let safety_id = safety["kind"]["checkpoint_created"]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        conversation_files(&h, &session_id, &safety_id) > 0,
        "the safety checkpoint {safety_id} has no conversation"
    );

    // Rolling back to it continues the conversation (it failed E600 "No conversation
    // found" when the safety checkpoint had none).
    let requests_before = h.stand_in.requests().len();
    h.ok(&[
        "checkpoint",
        "rollback",
        &safety_id,
        "--yes",
        "-m",
        "Carry on from here.",
    ]);
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Back at the safety checkpoint.", "{task:#}");
    assert!(!ws.join("second.txt").exists());
    let first = h.stand_in.requests()[requests_before..]
        .iter()
        .find(|r| r.kind == RequestKind::Turn)
        .cloned()
        .expect("the rolled-back session called the model");
    assert!(
        first.message_count > 3,
        "the rolled-back request carried only {} messages",
        first.message_count
    );

    // A double fault as older agents left it: the newest checkpoint has the
    // workspace but no conversation.
    let store_root = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("volume")
        .join("checkpoints");
    let empty = h.root().join("empty-conversation");
    std::fs::create_dir_all(&empty).unwrap();
    let store = parhelia_checkpoint::Store::open(&store_root).unwrap();
    let tree = |name: &str, root: &std::path::Path| {
        (
            parhelia_checkpoint::TreeSpec {
                name: name.into(),
                root: root.to_path_buf(),
                excludes: Vec::new(),
            },
            parhelia_checkpoint::ChangeHint::Unknown,
        )
    };
    let outcome = store
        .create(&parhelia_checkpoint::CreateRequest {
            trees: vec![tree("workspace", &ws), tree("conversation", &empty)],
            parent: None,
            trigger: "pre_restore".into(),
            message: None,
            metadata: serde_json::json!({}),
            skip_if_unchanged: false,
        })
        .unwrap();
    let parhelia_checkpoint::CreateOutcome::Created(incomplete) = outcome else {
        panic!("the planted checkpoint was not created");
    };
    let incomplete = incomplete.id.to_string();
    drop(store);
    let newest = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(newest, incomplete);

    // `session recover` names it and recommends an older, whole one (once the
    // rolled-back container has gone: until then it says the session still runs).
    let recover = h.wait_for("the rolled-back container's end", || {
        let recover = h.ok(&["session", "recover", &session_id]);
        (!recover.contains("the session is still running")).then_some(recover)
    });
    assert!(
        recover.contains(&format!("skipped    {incomplete} [E606]")),
        "{recover}"
    );
    assert!(recover.contains("to resume: parhelia resume"), "{recover}");
    assert!(
        !recover.contains(&format!("--checkpoint {incomplete}")),
        "{recover}"
    );

    // Naming it is refused before anything changes.
    let refused = h.run(&["checkpoint", "rollback", &incomplete, "--yes"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("E606"), "{stderr}");
    // Its advice (issue 14), followed below: the plain resume picks a restorable one.
    assert!(
        stderr.contains("plain `parhelia resume SESSION_ID` picks the newest restorable one"),
        "{stderr}"
    );

    // The default resume passes over it, says so, and continues the conversation.
    let resumed = h.ok(&["resume", &session_id, "-m", "Continue."]);
    assert!(
        resumed.contains(&format!("skipped    {incomplete} [E606]")),
        "{resumed}"
    );
    assert!(
        !resumed.contains(&format!("resumed from {incomplete}")),
        "{resumed}"
    );
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        task["result"], "Resumed past the incomplete one.",
        "{task:#}"
    );
}

/// A new session's workspace is checkpointed before Claude Code starts (trigger
/// `start`): killed before its first turn ends, it is still resumable, and
/// the resume starts the conversation again, in that workspace, with the
/// task's prompt (the checkpoint has no conversation to continue) — never E205.
#[test]
fn a_session_killed_before_its_first_turn_ends_starts_over_from_its_start_checkpoint() {
    let mut h = Harness::new(Script::new([
        // Never answered: the agent is killed while Claude Code waits for it.
        Turn::hold("too late"),
        Turn::tool_use([ToolCall::write("after.txt", "done again\n")]),
        Turn::text("Started over and finished."),
    ]));
    h.set_env("PARHELIA_ISOLATION", "none");
    let source = h.root().join("project");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("seed.txt"), "from the user\n").unwrap();
    let created = create(
        &h,
        "Do the whole task",
        &["--workspace", source.to_str().unwrap()],
    );
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();

    h.wait_for("the first request at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let listed = checkpoints(&h, &session_id);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let start = h
        .task_events(&task_id, "checkpoint_created")
        .into_iter()
        .find(|e| e["kind"]["checkpoint_created"]["trigger"] == "start")
        .expect("a start checkpoint before Claude Code started");
    let start_id = start["kind"]["checkpoint_created"]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_string();

    let leftover_tmux = kill_agent(&h, &container_id);
    let ws = workspace(&h, &session_id);
    std::fs::write(ws.join("stray.txt"), "after the start checkpoint").unwrap();

    let requests_before = h.stand_in.requests().len();
    let resumed = h.ok(&["resume", &session_id]);
    assert!(resumed.contains(&start_id), "{resumed}");
    assert!(!tmux_alive(&leftover_tmux));
    // The old Claude Code is gone: its held answer can go nowhere now.
    h.stand_in.release_hold();
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" || t["status"] == "failed"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Started over and finished.", "{task:#}");
    assert_eq!(
        std::fs::read_to_string(ws.join("seed.txt")).unwrap(),
        "from the user\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("after.txt")).unwrap(),
        "done again\n"
    );
    assert!(!ws.join("stray.txt").exists());
    // A fresh conversation that starts with the task's own prompt.
    let first_again = h.stand_in.requests()[requests_before..]
        .iter()
        .find(|r| r.kind == RequestKind::Turn)
        .cloned()
        .expect("the resumed session asked the model");
    assert_eq!(
        first_again.last_user_text.as_deref(),
        Some("Do the whole task"),
        "{first_again:#?}"
    );
    assert_eq!(first_again.roles, ["user", "system"], "{first_again:#?}");
}

/// Issue 19: a file the session (or the previous checkpoint) only read is not a
/// change. A turn that reads 300 workspace files and writes one: the `turn_end`
/// checkpoint, told by the watcher what changed, hashes the written file and the
/// conversation, not the 300 it read (`stats.hashed_files` in `checkpoint list --json`).
#[test]
fn a_checkpoint_after_reads_hashes_only_what_was_written() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash(
            "cat src/*.txt > /dev/null && echo new > new.txt",
        )]),
        Turn::text("Read them all."),
    ]));
    let project = h.root().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    for i in 0..300 {
        std::fs::write(
            project.join(format!("src/f{i:03}.txt")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    let created = create(
        &h,
        "Read everything",
        &["--workspace", project.to_str().unwrap()],
    );
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");

    let listed = checkpoints(&h, &session_id);
    let turn_end = listed
        .iter()
        .find(|c| c["trigger"] == "turn_end")
        .unwrap_or_else(|| panic!("no turn_end checkpoint: {listed:#?}"));
    assert!(
        turn_end["file_count"].as_u64().unwrap() > 300,
        "{turn_end:#}"
    );
    let hashed = turn_end["stats"]["hashed_files"].as_u64().unwrap();
    assert!(
        hashed < 30,
        "the turn_end checkpoint hashed {hashed} files; the turn wrote one: {turn_end:#}\n{:#?}",
        h.task_events(&task_id, "checkpoint_created")
    );
    let shown = h.json(&[
        "checkpoint",
        "show",
        turn_end["id"].as_str().unwrap(),
        "--json",
    ]);
    assert!(
        shown["workspace_paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "new.txt"),
        "{shown:#}"
    );
}

/// `session pull --progress json` counts the restore of the checkpoint's workspace:
/// its `advance` lines (on stderr, stdout keeping only the `--json` result) end at the
/// file count and bytes `checkpoint show` gives for that checkpoint's workspace tree.
#[test]
fn session_pull_reports_the_checkpoints_files_and_bytes() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("result.txt", "made in the session\n")]),
        Turn::text("Done."),
    ]));
    let project = h.root().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    for i in 0..5 {
        std::fs::write(project.join(format!("src/m{i}.rs")), format!("// {i}\n")).unwrap();
    }
    git(&project, &["init", "--quiet", "--initial-branch", "main"]);
    git(&project, &["add", "--all"]);
    git(&project, &["commit", "--quiet", "-m", "start"]);
    let created = create(&h, "Write result.txt", &["--workspace", "project"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let checkpoint = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let out = h.run(&[
        "session",
        "pull",
        &session_id,
        "--repo",
        "project",
        "--checkpoint",
        &checkpoint,
        "--progress",
        "json",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pulled["checkpoint_id"], checkpoint.as_str(), "{pulled:#}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["type"] == "progress" && l["op"] == "session_pull"),
        "{stderr}"
    );
    let advances: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "advance").collect();
    let last = advances
        .last()
        .unwrap_or_else(|| panic!("no advance: {stderr}"));
    assert_eq!(lines.last().unwrap()["event"], "finish", "{stderr}");
    assert_eq!(lines.last().unwrap()["ok"], true, "{stderr}");

    let shown = h.json(&["checkpoint", "show", &checkpoint, "--json"]);
    let tree = shown["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "workspace")
        .unwrap_or_else(|| panic!("{shown:#}"));
    assert_eq!(last["files_total"], tree["files"], "{stderr}\n{shown:#}");
    assert_eq!(last["files_done"], tree["files"], "{stderr}\n{shown:#}");
    assert_eq!(last["total"], tree["bytes"], "{stderr}\n{shown:#}");
    assert_eq!(last["done"], tree["bytes"], "{stderr}\n{shown:#}");
    // The five source files, what the session wrote and the repository's .git.
    assert!(tree["files"].as_u64().unwrap() > 6, "{shown:#}");
    for pair in advances.windows(2) {
        assert!(
            pair[1]["done"].as_u64() >= pair[0]["done"].as_u64(),
            "{stderr}"
        );
    }
}

/// The progress lines of `op` on a command's stderr (`--progress auto` off a terminal,
/// as here, prints them as JSON lines): every one parses, and the last is `finish`.
fn progress_lines(stderr: &str, op: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"progress\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["op"] == op), "{stderr}");
    assert_eq!(
        lines.last().map(|l| &l["event"]),
        Some(&"finish".into()),
        "{stderr}"
    );
    lines
}

/// The last `advance` of a restore equals the checkpoint's workspace tree, as
/// `checkpoint show --json` gives its file count and bytes.
fn assert_restored_whole_tree(h: &Harness, lines: &[serde_json::Value], checkpoint: &str) {
    let shown = h.json(&["checkpoint", "show", checkpoint, "--json"]);
    let tree = shown["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "workspace")
        .unwrap_or_else(|| panic!("{shown:#}"))
        .clone();
    let advances: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "advance").collect();
    let last = advances
        .last()
        .unwrap_or_else(|| panic!("no advance: {lines:#?}"));
    assert_eq!(last["files_total"], tree["files"], "{lines:#?}\n{shown:#}");
    assert_eq!(last["files_done"], tree["files"], "{lines:#?}\n{shown:#}");
    assert_eq!(last["total"], tree["bytes"], "{lines:#?}\n{shown:#}");
    assert_eq!(last["done"], tree["bytes"], "{lines:#?}\n{shown:#}");
    assert_eq!(last["unit"], "bytes");
    for pair in advances.windows(2) {
        assert!(
            pair[0]["done"].as_u64() <= pair[1]["done"].as_u64(),
            "{lines:#?}"
        );
    }
}

/// `resume` and `checkpoint rollback` show the restore their new container's agent runs
/// (`WatchRestore`): files and bytes restored, ending at the restored checkpoint's
/// workspace tree. Off a terminal `--progress auto` prints them as JSON lines on stderr;
/// stdout keeps only the `--json` result.
#[test]
fn resume_and_rollback_report_the_restores_files_and_bytes() {
    let h = Harness::new(Script::new([
        Turn::tool_use([
            ToolCall::write("a.txt", "alpha\n"),
            ToolCall::write("b/b.txt", "beta beta\n"),
            ToolCall::write("c.txt", "gamma gamma gamma\n"),
        ]),
        Turn::text("First done."),
        Turn::tool_use([ToolCall::write("second.txt", "two\n")]),
        Turn::text("Second done."),
    ]));
    let created = create(&h, "Write three files", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let first_cp = checkpoints(&h, &session_id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let out = h.run(&[
        "resume",
        &session_id,
        "-m",
        "Now write second.txt",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let restored = resumed["checkpoint_id"].as_str().unwrap().to_string();
    let lines = progress_lines(&stderr, "resume");
    assert_eq!(lines.last().unwrap()["ok"], true, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l["step"].as_str().is_some_and(|s| s.contains(&restored))),
        "{stderr}"
    );
    assert_restored_whole_tree(&h, &lines, &restored);

    let ws = workspace(&h, &session_id);
    h.wait_for("second.txt and the session's end", || {
        let t = h.json(&["task", "show", &task_id, "--json"]);
        (ws.join("second.txt").exists() && t["status"] == "completed").then_some(())
    });

    // The rollback to the first checkpoint, with `--progress json` asked for.
    let out = h.run(&[
        "checkpoint",
        "rollback",
        &first_cp,
        "--yes",
        "--json",
        "--progress",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let rolled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rolled["checkpoint_id"], first_cp.as_str(), "{rolled:#}");
    let lines = progress_lines(&stderr, "rollback");
    assert_eq!(lines.last().unwrap()["ok"], true, "{stderr}");
    assert_restored_whole_tree(&h, &lines, &first_cp);
    // The restore has ended by the time the command returns.
    assert!(!ws.join("second.txt").exists());
    assert!(ws.join("b/b.txt").exists());

    // `--progress never` prints nothing on stderr.
    let out = h.run(&[
        "checkpoint",
        "rollback",
        &first_cp,
        "--yes",
        "--json",
        "--progress",
        "never",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
