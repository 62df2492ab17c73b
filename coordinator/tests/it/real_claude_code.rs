//! The control plane with the real Claude Code CLI (talking to the scripted
//! Messages API stand-in), the real agent, tmux and, where it works,
//! bubblewrap: cancelling a session in the middle of a Bash call.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

fn pid_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z') | Some('X') | None
        )
    })
}

/// `task cancel` on a session blocked in a Bash call (`tail -f /dev/null`;
/// Claude Code refuses a standalone `sleep 120` at times): the
/// agent stops Claude Code and takes its final checkpoint, the session ends
/// cancelled, and the container (the agent and its tmux server) is gone.
#[test]
fn cancelling_a_real_session_stops_it_with_a_final_checkpoint() {
    let h = Harness::new(Script::new([Turn::tool_use([ToolCall::bash(
        "tail -f /dev/null",
    )])]));
    let created = h.json(&["task", "create", "Wait a while", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the Bash call to start", || {
        h.events(&container_id)
            .iter()
            .any(|(_, t, _)| t == "tool_call")
            .then_some(())
    });
    let early: Vec<String> = h.events(&container_id).into_iter().map(|e| e.1).collect();
    assert!(
        !early.iter().any(|t| t == "tool_result"),
        "the Bash call must still be running: {early:?}"
    );
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            h.state()
                .join("containers")
                .join(&container_id)
                .join("runtime/agent.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let agent_pid = info["pid"].as_i64().unwrap();

    let cancelled = h.json(&["task", "cancel", &task_id, "--json"]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["container_state"], "terminated", "{cancelled:#}");
    assert!(
        cancelled["checkpoint_id"]
            .as_str()
            .is_some_and(|cp| cp.starts_with("cp-")),
        "a final checkpoint: {cancelled:#}"
    );
    assert!(!pid_alive(agent_pid), "the agent exited");
    let task = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["error_code"], "E601");
    let session = h.json(&[
        "session",
        "show",
        task["session_id"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(session["outcome"], "cancelled", "{session:#}");
    assert_eq!(
        session["resume_checkpoint_id"], cancelled["checkpoint_id"],
        "{session:#}"
    );
    let types: Vec<String> = h.events(&container_id).into_iter().map(|e| e.1).collect();
    for t in [
        "stop_requested",
        "claude_exited",
        "checkpoint_created",
        "session_finished",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} in {types:?}");
    }
}
