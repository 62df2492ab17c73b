//! Local sessions under bubblewrap: Claude Code's commands can write in the
//! session's workspace and nowhere else. The control case (isolation off)
//! shows the same command does write outside, so the check can fail.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// Claude's Bash runs in `<root>/.parhelia/sessions/<id>/workspace`, so
/// `../../../../outside.txt` is `<root>/outside.txt`: outside the session.
fn escape_attempt() -> Script {
    Script::new([
        Turn::tool_use([ToolCall::bash(
            "echo inside > inside.txt; echo escaped > ../../../../outside.txt; echo done",
        )]),
        Turn::text("Tried both."),
    ])
}

fn run_with(isolation: &str) -> (Harness, serde_json::Value) {
    let mut h = Harness::new(escape_attempt());
    h.set_env("PARHELIA_ISOLATION", isolation);
    h.ok(&["task", "create", "Write two files", "--sync"]);
    let task = h.json(&["task", "list", "--json"])[0].clone();
    (h, task)
}

fn workspace(h: &Harness, task: &serde_json::Value) -> std::path::PathBuf {
    h.state()
        .join("sessions")
        .join(task["session_id"].as_str().unwrap())
        .join("workspace")
}

#[test]
fn under_bubblewrap_commands_cannot_write_outside_the_session() {
    let (h, task) = run_with("bwrap");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(workspace(&h, &task).join("inside.txt").is_file());
    assert!(
        !h.root().join("outside.txt").exists(),
        "a command escaped the sandbox"
    );
    let dry = h.ok(&["task", "create", "x", "--dry-run"]);
    assert!(dry.contains("isolation  bwrap"), "{dry}");
}

#[test]
fn without_isolation_the_same_command_writes_outside() {
    let (h, task) = run_with("none");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(workspace(&h, &task).join("inside.txt").is_file());
    assert_eq!(
        std::fs::read_to_string(h.root().join("outside.txt")).unwrap(),
        "escaped\n"
    );
}

#[test]
fn an_unknown_isolation_setting_is_refused_before_anything_is_recorded() {
    let mut h = Harness::new(Script::new([]));
    h.set_env("PARHELIA_ISOLATION", "docker");
    let out = h.run(&["task", "create", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("E100"));
    assert!(!h.state().join("parhelia.db").exists());
}
