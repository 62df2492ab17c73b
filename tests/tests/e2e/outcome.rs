//! A session's outcome is what happened to its last turn (issue 12, item 1).
//!
//! Turn 1 succeeds; a second message is queued while it runs; turn 2 is
//! started and the scripted model holds its answer, so Claude Code is
//! certainly mid-turn when the test kills it (or its tmux server). The old
//! agent reported the task `completed` with turn 1's result and dropped the
//! second message silently; now it is `interrupted` (E602) and says which
//! message went unanswered.

use std::path::PathBuf;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, Turn};

#[derive(Clone, Copy, Debug)]
enum Kill {
    ClaudeCode,
    TmuxServer,
}

fn runtime(h: &Harness, container_id: &str) -> PathBuf {
    h.state()
        .join("containers")
        .join(container_id)
        .join("runtime")
}

fn a_killed_second_turn_is_interrupted(kill: Kill) {
    let mut h = Harness::new(Script::new([
        Turn::hold("Turn one is done."),
        Turn::hold("Turn two never gets here."),
    ]));
    // Unconfined: Claude Code's pid file then holds a host pid the test can signal.
    h.set_env("PARHELIA_ISOLATION", "none");
    let created = h.json(&["task", "create", "First, say hello", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();

    // Turn 1 is at the model: the second message must queue behind it.
    h.wait_for("turn 1 at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let sent = h.ok(&["session", "send", &session_id, "Second, write more"]);
    assert!(sent.contains("queued"), "{sent}");
    h.stand_in.release_hold();

    // Turn 1's result is recorded, and turn 2 is at the model, held there.
    h.wait_for("turn 1's result", || {
        (!h.task_events(&task_id, "turn_result").is_empty()).then_some(())
    });
    h.wait_for("turn 2 at the model", || {
        (h.stand_in.holds_served() >= 2).then_some(())
    });
    let task = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(task["status"], "running", "{task:#}");

    let runtime = runtime(&h, &container_id);
    match kill {
        Kill::ClaudeCode => {
            let pid = std::fs::read_to_string(runtime.join("sandbox").join("claude.pid"))
                .expect("claude code's pid file");
            let status = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -9 {pid}");
        }
        Kill::TmuxServer => {
            let (_, socket) = h.agent_pid_and_tmux(&container_id);
            let status = parhelia_testkit::procs::tmux_kill_server(&socket);
            assert!(status.success(), "tmux kill-server");
        }
    }

    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    let journal: Vec<String> = h
        .events(&container_id)
        .iter()
        .map(|(seq, kind, payload)| format!("{seq} {kind} {}", payload["kind"]))
        .collect();
    assert_eq!(
        task["status"],
        "interrupted",
        "{kill:?}: {task:#}\n{}",
        journal.join("\n")
    );
    assert_eq!(task["error_code"], "E602", "{task:#}");
    let message = task["error_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the running turn got no result")
            && message.contains("1 message was not answered"),
        "{message}"
    );

    // The journal names the unanswered message: the InputAccepted of "Second, write more".
    let second = h
        .events(&container_id)
        .into_iter()
        .find(|(_, kind, payload)| {
            kind == "input_accepted"
                && payload["kind"]["input_accepted"]["text"] == "Second, write more"
        })
        .expect("the second message was accepted");
    assert_eq!(second.2["kind"]["input_accepted"]["queued"], true);
    let finished = h.task_events(&task_id, "session_finished");
    assert_eq!(finished.len(), 1, "{finished:#?}");
    let unanswered = &finished[0]["kind"]["session_finished"]["unanswered_input_seqs"];
    assert_eq!(unanswered, &serde_json::json!([second.0]), "{finished:#?}");
    let exited = h.task_events(&task_id, "claude_exited");
    assert_eq!(
        exited[0]["kind"]["claude_exited"]["had_result"], false,
        "{exited:#?}"
    );
    // Turn 2's request was at the model (held) when Claude Code died: what it
    // cost, if the API answered, is unknown, and every view says so (issue 13).
    assert_eq!(
        exited[0]["kind"]["claude_exited"]["request_in_flight"], true,
        "{exited:#?}"
    );
    let task = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(task["unknown_model_requests"], 1, "{task:#}");
    let shown = h.ok(&["task", "show", &task_id]);
    assert!(
        shown.contains("plus unknown: Claude Code died with 1 model request in flight"),
        "{shown}"
    );
}

#[test]
fn killing_claude_code_during_the_second_turn_interrupts_the_task() {
    a_killed_second_turn_is_interrupted(Kill::ClaudeCode);
}

#[test]
fn killing_the_tmux_server_during_the_second_turn_interrupts_the_task() {
    a_killed_second_turn_is_interrupted(Kill::TmuxServer);
}
