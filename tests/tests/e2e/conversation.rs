//! Conversation and resume end to end (issue 14): the real `parhelia`, agent, tmux and
//! Claude Code against the scripted model. A checkpoint taken at a turn's end holds the
//! whole turn; a resume without a message leaves the session waiting for input (and
//! says so); a running session resumes from the checkpoint its stop just took; a
//! session waiting for input is not `busy`; a subagent's events are its own.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::{LoggedRequest, RequestKind};
use parhelia_testkit::{Script, ToolCall, Turn};
use serde_json::Value;

fn create(h: &Harness, prompt: &str, extra: &[&str]) -> Value {
    let mut args = vec!["task", "create", prompt, "--json"];
    args.extend_from_slice(extra);
    let out = h.ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn ids(created: &Value) -> (String, String, String) {
    let s = |k: &str| created[k].as_str().unwrap().to_string();
    (s("task_id"), s("session_id"), s("container_id"))
}

fn ended(t: &Value) -> bool {
    ["completed", "failed", "cancelled", "interrupted"]
        .contains(&t["status"].as_str().unwrap_or(""))
}

/// The checkpoints of `task_id` taken with `trigger` (not skipped), oldest first.
fn checkpoints_of(h: &Harness, task_id: &str, trigger: &str) -> Vec<String> {
    h.task_events(task_id, "checkpoint_created")
        .into_iter()
        .map(|e| e["kind"]["checkpoint_created"].clone())
        .filter(|c| c["trigger"] == trigger && c["skipped"] != true)
        .map(|c| c["checkpoint_id"].as_str().unwrap().to_string())
        .collect()
}

/// The model requests (turns) made after the first `from` requests.
fn turns_since(h: &Harness, from: usize) -> Vec<LoggedRequest> {
    h.stand_in.requests()[from..]
        .iter()
        .filter(|r| r.kind == RequestKind::Turn)
        .cloned()
        .collect()
}

/// Every text and tool-result text of a request body's messages, as (role, kind, text).
fn blocks(request: &LoggedRequest) -> Vec<(String, String, String)> {
    let body = request.body.as_ref().expect("bodies are logged");
    let mut out = Vec::new();
    for message in body["messages"].as_array().into_iter().flatten() {
        let role = message["role"].as_str().unwrap_or("").to_string();
        match &message["content"] {
            Value::String(text) => out.push((role.clone(), "text".into(), text.clone())),
            Value::Array(items) => {
                for block in items {
                    let kind = block["type"].as_str().unwrap_or("").to_string();
                    let text = match kind.as_str() {
                        "text" => block["text"].as_str().unwrap_or("").to_string(),
                        "tool_result" => match &block["content"] {
                            Value::String(t) => t.clone(),
                            Value::Array(parts) => parts
                                .iter()
                                .filter_map(|p| p["text"].as_str())
                                .collect::<Vec<_>>()
                                .join("\n"),
                            _ => String::new(),
                        },
                        _ => continue,
                    };
                    out.push((role.clone(), kind, text));
                }
            }
            _ => {}
        }
    }
    out
}

/// A short turn (one Bash call, then the final reply). Resumed from exactly its
/// `turn_end` checkpoint, Claude Code sends the model the turn's tool result and its
/// final reply. Before, the checkpoint was taken before Claude Code had written them
/// to its transcript: the Bash call came back as "interrupted" and the reply was gone.
#[test]
fn a_turn_end_checkpoint_holds_the_whole_turn() {
    let h = Harness::new_logging_bodies(Script::new([
        Turn::tool_use([ToolCall::bash(
            "echo from-the-bash-call > made.txt; echo bash-said-hello",
        )]),
        Turn::text("Final reply: made.txt is written."),
        // After the resume:
        Turn::text("Resumed with the whole turn."),
    ]));
    let (task_id, session_id, _) = ids(&create(&h, "Make made.txt", &[]));
    let task = h.wait_task(&task_id, ended);
    assert_eq!(task["status"], "completed", "{task:#}");
    let turn_end = checkpoints_of(&h, &task_id, "turn_end");
    let turn_end = turn_end.last().expect("a turn_end checkpoint").clone();

    let before = h.stand_in.requests().len();
    let resumed = h.ok(&[
        "resume",
        &session_id,
        "--checkpoint",
        &turn_end,
        "-m",
        "What did you do?",
    ]);
    assert!(resumed.contains(&turn_end), "{resumed}");
    let task = h.wait_task(&task_id, |t| ended(t) && t["result"] != task["result"]);
    assert_eq!(task["status"], "completed", "{task:#}");
    let turns = turns_since(&h, before);
    let first = turns.first().expect("the resumed session called the model");
    let blocks = blocks(first);
    assert!(
        blocks.iter().any(|(role, kind, text)| role == "user"
            && kind == "tool_result"
            && text.contains("bash-said-hello")),
        "the Bash call's result is missing: {blocks:#?}"
    );
    assert!(
        blocks.iter().any(|(role, kind, text)| role == "assistant"
            && kind == "text"
            && text.contains("Final reply: made.txt is written.")),
        "the turn's final reply is missing: {blocks:#?}"
    );
    assert!(
        !blocks
            .iter()
            .any(|(_, _, text)| text.to_lowercase().contains("interrupted")),
        "{blocks:#?}"
    );
}

/// `parhelia task watch TASK` to its end, failing (not hanging) if it never returns.
fn watch(h: &Harness, task_id: &str) -> std::process::Output {
    let mut child = h
        .command(&["task", "watch", task_id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn task watch");
    h.wait_for("task watch to return", || {
        child.try_wait().expect("try_wait").map(|_| ())
    });
    child.wait_with_output().expect("task watch output")
}

/// The statuses a container's agent journaled, in order, as (status, hook_event, detail),
/// with the input it accepted in between as ("input", "", text).
fn status_trail(h: &Harness, container_id: &str) -> Vec<(String, String, String)> {
    const NAMES: [&str; 6] = [
        "unspecified",
        "starting",
        "busy",
        "idle",
        "needs_input",
        "finished",
    ];
    h.events(container_id)
        .into_iter()
        .filter_map(|(_, kind, payload)| match kind.as_str() {
            "status_changed" => {
                let s = &payload["kind"]["status_changed"];
                let status = s["status"].as_u64().unwrap_or(0) as usize;
                Some((
                    NAMES.get(status).copied().unwrap_or("?").to_string(),
                    s["hook_event"].as_str().unwrap_or("").to_string(),
                    s["detail"].as_str().unwrap_or("").to_string(),
                ))
            }
            "input_accepted" => Some((
                "input".to_string(),
                String::new(),
                payload["kind"]["input_accepted"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )),
            _ => None,
        })
        .collect()
}

/// `parhelia resume SESSION` without `-m` on a completed session (what `session recover`
/// suggests): the session waits for input and says so — `needs_input`, never `busy`
/// (Claude Code's SessionStart hook fires with no message yet) — and `task watch`
/// returns saying it waits, instead of hanging. A message then continues it.
#[test]
fn a_resume_without_a_message_waits_for_input_and_says_so() {
    let h = Harness::new(Script::new([
        Turn::text("First answer."),
        Turn::text("Second answer, after the message."),
    ]));
    let (task_id, session_id, _) = ids(&create(&h, "Answer once", &[]));
    let task = h.wait_task(&task_id, ended);
    assert_eq!(task["status"], "completed", "{task:#}");

    h.ok(&["resume", &session_id]);
    let watched = watch(&h, &task_id);
    let stdout = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert!(stdout.contains("waiting for input"), "{stdout}");
    assert!(
        stdout.contains(&format!("parhelia session send {session_id}")),
        "{stdout}"
    );
    let task = h.json(&["task", "show", &task_id, "--json"]);
    let container_id = task["container_id"].as_str().unwrap().to_string();
    // Claude Code is up (its SessionStart hook has run) before the message is sent,
    // so a SessionStart that set `busy` would be in the trail below.
    h.wait_for("Claude Code's SessionStart hook", || {
        std::fs::read_to_string(
            h.state()
                .join("containers")
                .join(&container_id)
                .join("runtime/agent.log"),
        )
        .ok()
        .filter(|log| log.contains("hook SessionStart"))
    });
    let shown = h.json(&["session", "show", &session_id, "--json"]);
    assert_ne!(shown["status"], "busy", "{shown:#}");

    h.ok(&["session", "send", &session_id, "Go on, please."]);
    let task = h.wait_task(&task_id, ended);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        task["result"], "Second answer, after the message.",
        "{task:#}"
    );

    let trail = status_trail(&h, &container_id);
    let sent = trail
        .iter()
        .position(|(s, _, text)| s == "input" && text == "Go on, please.")
        .unwrap_or_else(|| panic!("{trail:#?}"));
    assert_eq!(
        trail[..sent]
            .iter()
            .map(|(s, _, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["needs_input"],
        "{trail:#?}"
    );
    assert_eq!(trail[0].2, "waiting for input", "{trail:#?}");
}

/// Resuming a *running* session stops it (its stop takes a checkpoint) and continues
/// from that checkpoint, not from an older one chosen before the stop.
#[test]
fn resuming_a_running_session_continues_from_the_checkpoint_its_stop_took() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write(
            "before-stop.txt",
            "written before the stop\n",
        )]),
        // Claude Code waits here when the resume comes.
        Turn::hold("never delivered"),
        Turn::text("Continued after the resume."),
    ]));
    let (task_id, session_id, container_id) = ids(&create(&h, "Work, then wait", &[]));
    h.wait_for("the second request at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let out = h.ok(&["resume", &session_id, "-m", "Carry on."]);
    h.stand_in.release_hold();
    let stop = h
        .events(&container_id)
        .into_iter()
        .filter(|(_, kind, _)| kind == "checkpoint_created")
        .map(|(_, _, p)| p["kind"]["checkpoint_created"].clone())
        .rfind(|c| c["skipped"] != true)
        .expect("the stopped agent's last checkpoint");
    let stop_id = stop["checkpoint_id"].as_str().unwrap();
    assert_eq!(stop["trigger"], "stop", "{stop:#}");
    assert!(
        out.contains(&format!("resumed from {stop_id}")),
        "the resume restored another checkpoint than the one its stop took ({stop_id}):\n{out}"
    );
    let task = h.wait_task(&task_id, |t| {
        ended(t) && t["container_id"] != container_id.as_str()
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let restored = h.task_events(&task_id, "checkpoint_restored");
    assert_eq!(
        restored.last().unwrap()["kind"]["checkpoint_restored"]["checkpoint_id"],
        stop_id,
        "{restored:#?}"
    );
}

/// A session whose store holds no checkpoint (its agent died before taking even its
/// `start` one) resumes from its starting workspace with the task's prompt; before, the
/// resume failed with E205.
#[test]
fn a_session_lost_before_any_checkpoint_starts_over_from_its_workspace() {
    let h = Harness::new(Script::new([
        Turn::hold("too late"),
        Turn::text("Started over and finished."),
    ]));
    // A quick reconciler, so the dead agent's container is marked lost soon.
    std::fs::write(
        h.state().join("config.toml"),
        "[reconciler]\npoll_interval_seconds = 0.2\nstale_threshold_seconds = 1.0\n",
    )
    .unwrap();
    let source = h.root().join("project");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("seed.txt"), "from the user\n").unwrap();
    let (task_id, session_id, container_id) = ids(&create(
        &h,
        "Do the whole task",
        &["--workspace", source.to_str().unwrap()],
    ));
    h.wait_for("the first request at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let (pid, _) = h.agent_pid_and_tmux(&container_id);
    // As if the container were gone with its files (as a remote one is): nothing of it
    // left for the reconciler to checkpoint (`agent_gone`) when it marks it lost.
    std::fs::remove_file(
        h.state()
            .join("containers")
            .join(&container_id)
            .join("spec.json"),
    )
    .unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // As if the agent had died before its `start` checkpoint.
    let store = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("volume/checkpoints");
    assert!(store.is_dir(), "{}", store.display());
    remove_store(&h, &store);
    let lost = h.wait_task(&task_id, |t| t["status"] == "interrupted");
    let why = lost["error_message"].as_str().unwrap_or("");
    assert!(!why.contains("no checkpoint yet"), "{why}");
    assert!(why.contains("starting workspace"), "{why}");

    // `session recover` says what the resume will do, and does it.
    let offered = h.ok(&["session", "recover", &session_id]);
    assert!(offered.contains("starting workspace"), "{offered}");
    assert!(
        offered.contains(&format!("parhelia resume {session_id}")),
        "{offered}"
    );
    let before = h.stand_in.requests().len();
    let out = h.run(&["session", "recover", &session_id, "--yes"]);
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("E205"), "{said}");
    assert!(
        said.contains("resumed from its starting workspace"),
        "{said}"
    );
    h.stand_in.release_hold();
    let task = h.wait_task(&task_id, |t| {
        ended(t) && t["container_id"] != container_id.as_str()
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Started over and finished.", "{task:#}");
    let ws = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    assert_eq!(
        std::fs::read_to_string(ws.join("seed.txt")).unwrap(),
        "from the user\n"
    );
    let first = turns_since(&h, before);
    let first = first.first().expect("the session called the model again");
    assert!(
        first
            .last_user_text
            .as_deref()
            .is_some_and(|t| t.contains("Do the whole task")),
        "{:?}",
        first.last_user_text
    );
}

/// A subagent (the Task tool, in the foreground so the script's order is the requests'
/// order): it has its own start and finish events, both naming the Task call that
/// started it, the finish carrying its report; the main agent's reply is the main
/// agent's. (A background subagent's own text, which the stream does show, is tagged
/// with its parent: `stream_json` unit tests, on the real lines.)
#[test]
fn a_subagents_events_carry_their_parent_and_their_own_start_and_finish() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::new(
            "Task",
            serde_json::json!({
                "description": "Say hello",
                "prompt": "Say hello and stop.",
                "subagent_type": "general-purpose",
                "run_in_background": false,
            }),
        )]),
        // The subagent's own request.
        Turn::text("Hello from the subagent."),
        // The main agent again, with the Task call's result.
        Turn::text("Main agent: the subagent said hello."),
    ]));
    let (task_id, _, _) = ids(&create(&h, "Ask a subagent", &[]));
    let task = h.wait_task(&task_id, ended);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        task["result"], "Main agent: the subagent said hello.",
        "{task:#}"
    );

    let calls = h.task_events(&task_id, "tool_call");
    let task_call = calls
        .iter()
        .map(|e| &e["kind"]["tool_call"])
        .find(|c| c["name"] == "Task" || c["name"] == "Agent")
        .unwrap_or_else(|| panic!("no Task call: {calls:#?}"));
    let parent = task_call["tool_use_id"].as_str().unwrap();
    assert!(
        task_call.get("parent_tool_use_id").is_none(),
        "{task_call:#}"
    );

    let started = h.task_events(&task_id, "subagent_started");
    assert_eq!(started.len(), 1, "{started:#?}");
    let started = &started[0]["kind"]["subagent_started"];
    assert_eq!(started["tool_use_id"], parent, "{started:#}");
    assert_eq!(started["subagent_type"], "general-purpose", "{started:#}");
    assert_eq!(started["description"], "Say hello", "{started:#}");
    let finished = h.task_events(&task_id, "subagent_finished");
    assert_eq!(finished.len(), 1, "{finished:#?}");
    let finished = &finished[0]["kind"]["subagent_finished"];
    assert_eq!(finished["tool_use_id"], parent, "{finished:#}");
    assert_eq!(finished["subagent_type"], "general-purpose", "{finished:#}");
    assert_eq!(finished["is_error"], false, "{finished:#}");
    assert_eq!(
        finished["summary"], "Hello from the subagent.",
        "{finished:#}"
    );

    // No text of the subagent's is the main agent's.
    let texts: Vec<Value> = h
        .task_events(&task_id, "assistant_text")
        .into_iter()
        .map(|e| e["kind"]["assistant_text"].clone())
        .collect();
    for text in &texts {
        if text["text"] == "Hello from the subagent." {
            assert_eq!(text["parent_tool_use_id"], parent, "{texts:#?}");
        }
    }
    let main = texts
        .iter()
        .find(|t| t["text"] == "Main agent: the subagent said hello.")
        .unwrap_or_else(|| panic!("{texts:#?}"));
    assert!(main.get("parent_tool_use_id").is_none(), "{main:#}");

    // Order: the Task call, the subagent's start, its finish, the main agent's reply.
    let order: Vec<String> = {
        let db = h.db();
        let mut stmt = db
            .prepare("SELECT type, payload FROM events WHERE task_id = ?1 ORDER BY id")
            .unwrap();
        stmt.query_map([&task_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .filter(|(k, p)| {
            k.starts_with("subagent_")
                || (k == "tool_call" && p.contains("\"Task\""))
                || (k == "assistant_text" && p.contains("Main agent:"))
        })
        .map(|(k, _)| k)
        .collect()
    };
    assert_eq!(
        order,
        [
            "tool_call",
            "subagent_started",
            "subagent_finished",
            "assistant_text"
        ]
    );
}

/// The same in an interactive session, whose events come from the transcript: Claude
/// Code's TUI runs the subagent in the background, so its request and the main agent's
/// next one race; the script answers both with the same text, and exactly one of the two
/// texts may be the main agent's (issue 14: a subagent's text is never the main
/// agent's). The subagent's start and finish name the Task call. (What this cannot see:
/// a subagent text recorded only after the main agent's reply was read.)
#[test]
fn an_interactive_subagents_events_carry_their_parent_and_their_own_start_and_finish() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::new(
            "Task",
            serde_json::json!({
                "description": "Say hello",
                "prompt": "Say hello and stop.",
                "subagent_type": "general-purpose",
            }),
        )]),
        // The subagent's request and the main agent's next one, in either order.
        Turn::text("Same reply.").times(2),
        // The main agent, when the TUI hands it the background subagent's end (it does
        // not always ask again: nothing waits for this turn).
        Turn::text("Main agent: the subagent reported."),
    ]));
    let (task_id, _, _) = ids(&create(&h, "Ask a subagent", &["--interactive"]));
    let finished = h.wait_for("the subagent's finish", || {
        let finished = h.task_events(&task_id, "subagent_finished");
        (!finished.is_empty()).then_some(finished)
    });
    let calls = h.task_events(&task_id, "tool_call");
    let task_call = calls
        .iter()
        .map(|e| &e["kind"]["tool_call"])
        .find(|c| c["name"] == "Task" || c["name"] == "Agent")
        .unwrap_or_else(|| panic!("no Task call: {calls:#?}"));
    let parent = task_call["tool_use_id"].as_str().unwrap();
    assert!(
        task_call.get("parent_tool_use_id").is_none(),
        "{task_call:#}"
    );
    let started = h.task_events(&task_id, "subagent_started");
    assert_eq!(started.len(), 1, "{started:#?}");
    let started = &started[0]["kind"]["subagent_started"];
    assert_eq!(started["tool_use_id"], parent, "{started:#}");
    assert_eq!(started["description"], "Say hello", "{started:#}");
    assert_eq!(finished.len(), 1, "{finished:#?}");
    let finished = &finished[0]["kind"]["subagent_finished"];
    assert_eq!(finished["tool_use_id"], parent, "{finished:#}");

    // Once both racing requests were answered, and the main agent's reply is recorded,
    // exactly one "Same reply." is the main agent's.
    h.wait_for("both racing requests answered", || {
        (h.stand_in.turns_consumed() >= 3).then_some(())
    });
    let texts = h.wait_for("the main agent's reply", || {
        let texts: Vec<Value> = h
            .task_events(&task_id, "assistant_text")
            .into_iter()
            .map(|e| e["kind"]["assistant_text"].clone())
            .collect();
        texts
            .iter()
            .any(|t| t["text"] == "Same reply." && t.get("parent_tool_use_id").is_none())
            .then_some(texts)
    });
    let mains = texts
        .iter()
        .filter(|t| t["text"] == "Same reply." && t.get("parent_tool_use_id").is_none())
        .count();
    assert_eq!(
        mains, 1,
        "the subagent's text is the main agent's: {texts:#?}"
    );
}

/// The automatic resume (`reconciler.auto_resume`) of a session lost with no checkpoint
/// at all: it starts over from its starting workspace. Before, the lost container was
/// called "resumable (no checkpoint yet)" and the automatic resume failed with E205.
#[test]
fn a_session_lost_before_any_checkpoint_is_resumed_automatically() {
    let h = Harness::new(Script::new([
        Turn::hold("too late"),
        Turn::text("Started over automatically."),
    ]));
    std::fs::write(
        h.state().join("config.toml"),
        "[reconciler]\nauto_resume = true\npoll_interval_seconds = 0.2\nstale_threshold_seconds = 1.0\n",
    )
    .unwrap();
    let (task_id, session_id, container_id) = ids(&create(&h, "Do it all", &[]));
    h.wait_for("the first request at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let (pid, _) = h.agent_pid_and_tmux(&container_id);
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    remove_store(
        &h,
        &h.state()
            .join("sessions")
            .join(&session_id)
            .join("volume/checkpoints"),
    );
    h.stand_in.release_hold();
    let task = h.wait_task(&task_id, |t| {
        ended(t) && t["container_id"] != container_id.as_str()
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Started over automatically.", "{task:#}");
    let failed: Vec<String> = {
        let db = h.db();
        let mut stmt = db
            .prepare("SELECT message FROM coordinator_events WHERE type = 'resume_failed'")
            .unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(failed.is_empty(), "{failed:#?}");
}

/// The subagent events of an interactive session (Claude Code's TUI in tmux, no `-p`):
/// the agent reads them from the transcript — the Task call starts the subagent, and its
/// end (here the `task-notification` message: Claude Code 2.1.330's TUI launches every
/// Agent call in the background, `run_in_background: false` included — measured) finishes
/// it with its report, both naming the Task call — as headless mode gives them from
/// stream-json. Before, interactive sessions had neither. (The model stand-in answers in
/// request order and the subagent's request races the main thread's, so which of the two
/// texts is the report is not asserted, only that it is one of them.)
fn interactive_subagent(run_in_background: bool) {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::new(
            "Task",
            serde_json::json!({
                "description": "Say hello",
                "prompt": "Say hello and stop.",
                "subagent_type": "general-purpose",
                "run_in_background": run_in_background,
            }),
        )]),
        Turn::text("One of two."),
        Turn::text("Two of two."),
        Turn::text("Main agent: the subagent finished."),
    ]));
    let (task_id, _, _) = ids(&create(&h, "Ask a subagent", &["--interactive"]));
    let finished = h.wait_for("the subagent's finish", || {
        let finished = h.task_events(&task_id, "subagent_finished");
        (!finished.is_empty()).then_some(finished)
    });
    let calls = h.task_events(&task_id, "tool_call");
    let parent = calls
        .iter()
        .map(|e| &e["kind"]["tool_call"])
        .find(|c| c["name"] == "Task" || c["name"] == "Agent")
        .unwrap_or_else(|| panic!("no Task call: {calls:#?}"))["tool_use_id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = h.task_events(&task_id, "subagent_started");
    assert_eq!(started.len(), 1, "{started:#?}");
    let started = &started[0]["kind"]["subagent_started"];
    assert_eq!(started["tool_use_id"], parent.as_str(), "{started:#}");
    assert_eq!(started["subagent_type"], "general-purpose", "{started:#}");
    assert_eq!(started["description"], "Say hello", "{started:#}");
    assert_eq!(started["backgrounded"], true, "{started:#}");
    assert_eq!(finished.len(), 1, "{finished:#?}");
    let finished = &finished[0]["kind"]["subagent_finished"];
    assert_eq!(finished["tool_use_id"], parent.as_str(), "{finished:#}");
    assert_eq!(finished["subagent_type"], "general-purpose", "{finished:#}");
    assert_eq!(finished["is_error"], false, "{finished:#}");
    assert_eq!(finished["status"], "completed", "{finished:#}");
    let report = finished["summary"].as_str().unwrap();
    assert!(
        ["One of two.", "Two of two."].contains(&report),
        "the finish carries the subagent's report: {finished:#}"
    );
    // The finish is the notification's (the report above), not the launch's tool
    // result ("Async agent launched"), and it follows the start.
    let seq = |kind: &str| h.task_events(&task_id, kind)[0]["seq"].as_u64().unwrap();
    assert!(seq("subagent_started") < seq("subagent_finished"));
    h.ok(&["task", "cancel", &task_id]);
}

#[test]
fn an_interactive_sessions_subagent_has_its_start_and_finish() {
    interactive_subagent(false);
}

#[test]
fn an_interactive_sessions_background_subagent_ends_with_its_notification() {
    interactive_subagent(true);
}

/// Removes a session's checkpoint store, as if its agent had died before its first
/// checkpoint. The coordinator may be writing there at that moment (its salvage of a
/// session whose agent is gone), so a removal can meet a file made after the listing:
/// it is tried again until the directory is gone.
fn remove_store(h: &Harness, store: &std::path::Path) {
    h.wait_for(
        "the checkpoint store removed",
        || match std::fs::remove_dir_all(store) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(_) => None,
        },
    );
}
