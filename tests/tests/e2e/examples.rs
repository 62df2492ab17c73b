//! `parhelia examples TOPIC` run as printed (issue 16): each topic's script, taken from
//! the real binary's output, runs under `sh -e` in a harness directory with the real
//! `parhelia`, agent and Claude Code on the scripted model (local backend). The Modal and
//! GPU examples plan through `--dry-run` / `--estimate-only`; lines shown as `# $ …` wait
//! for a terminal or a client and are only parsed (the coordinator's guide test).
//!
//! Also here: the gateway's short commands by task id: `parhelia attach TASK` and
//! `session attach TASK` (the seeds' own example, E202 before), and the coded errors
//! for a wrong id.

use std::process::{Command, Output};
use std::time::Duration;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// Runs `parhelia examples TOPIC`'s script with `sh -e` in the harness's directory and
/// environment (PATH holds the built `parhelia`).
fn run_example(h: &Harness, topic: &str) -> Output {
    let script = h.ok(&["examples", topic]);
    let template = h.command(&[]);
    let mut sh = Command::new("sh");
    sh.arg("-ec").arg(&script).current_dir(h.root());
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    sh.output().expect("run sh")
}

fn assert_example_runs(h: &Harness, topic: &str) -> String {
    let out = run_example(h, topic);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "`parhelia examples {topic}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\ncoordinator log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        h.coordinator_log()
    );
    stdout
}

#[test]
fn examples_gpu_plan_on_modal_without_launching() {
    let h = Harness::new(Script::new([]));
    let out = assert_example_runs(&h, "gpu");
    assert!(out.contains("1× A100"), "{out}");
    assert!(
        out.contains("dry run: nothing was launched or recorded"),
        "{out}"
    );
    assert!(
        h.json(&["task", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn examples_modal_plan_without_launching() {
    let h = Harness::new(Script::new([]));
    let out = assert_example_runs(&h, "modal");
    assert!(out.contains("[modal]"), "{out}");
    assert!(out.contains("backend    modal"), "{out}");
}

#[test]
fn examples_mcp_cli_twins_print_json() {
    let h = Harness::new(Script::new([]));
    let out = assert_example_runs(&h, "mcp");
    assert!(out.contains('{') && out.contains('['), "{out}");
}

#[test]
fn examples_budget_cap_a_task_and_read_the_spend() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hello\n")]),
        Turn::text("Wrote hello.txt."),
    ]));
    let out = assert_example_runs(&h, "budget");
    assert!(
        out.contains("\"ceiling") || out.contains("ceiling"),
        "{out}"
    );
    let tasks = h.json(&["task", "list", "--json"]);
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks:#}");
    assert_eq!(tasks[0]["status"], "completed", "{tasks:#}");
}

#[test]
fn examples_parallel_dispatch_three_tasks_together() {
    let h = Harness::new(Script::new([]));
    assert_example_runs(&h, "parallel");
    let tasks = h.json(&["task", "list", "--json"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    assert!(
        tasks.iter().all(|t| t["status"] == "completed"),
        "{tasks:#?}"
    );
}

#[test]
fn examples_checkpoint_list_diff_resume_rollback() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hello\n")]),
        Turn::text("Wrote hello.txt."),
        Turn::tool_use([ToolCall::write("bye.txt", "bye\n")]),
        Turn::text("Wrote bye.txt."),
    ]));
    let out = assert_example_runs(&h, "checkpoint");
    assert!(out.contains("hello.txt"), "{out}");
}

#[test]
fn examples_interactive_send_logs_kill_by_task_id() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("notes.txt", "notes\n")]),
        Turn::text("Waiting for you."),
        Turn::tool_use([ToolCall::write("todo.txt", "todo\n")]),
        Turn::text("Wrote todo.txt."),
    ]));
    let out = assert_example_runs(&h, "interactive");
    let tasks = h.json(&["task", "list", "--json"]);
    assert_eq!(tasks[0]["status"], "cancelled", "{tasks:#}\n{out}");
}

#[test]
fn attach_by_task_id_follows_a_headless_session() {
    let h = Harness::new(Script::new([Turn::hold("Done, after a while.")]));
    let task = h.ok(&["submit", "Say something"]);
    let task = task.lines().next().unwrap().trim().to_string();
    // Both forms, while the turn is held (the session is certainly running).
    h.stand_in
        .wait_for(Duration::from_secs(120), |r| {
            r.iter().any(|r| r.reply == "hold")
        })
        .expect("the held turn is requested");
    let top = h.command(&["attach", &task]).spawn().unwrap();
    let session = h
        .command(&["session", "attach", &task])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    h.stand_in.release_hold();
    let out = session.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(
        stderr.contains("is headless: following its events"),
        "{stderr}"
    );
    let top = top.wait_with_output().unwrap();
    assert!(top.status.success(), "{}", top.status);
    h.wait_task(&task, |t| t["status"] == "completed");

    // The task id names its session for show and logs too.
    let shown = h.json(&["session", "show", &task, "--json"]);
    let db_session = h.json(&["task", "show", &task, "--json"])["session_id"].clone();
    assert_eq!(shown["id"], db_session, "{shown:#}");
}

#[test]
fn a_wrong_id_gives_the_coded_error() {
    let h = Harness::new(Script::new([]));
    let cases: [(&[&str], &str); 4] = [
        (&["attach", "task-00000000"], "error[E201]"),
        (&["session", "attach", "task-00000000"], "error[E201]"),
        (&["session", "logs", "sess-00000000"], "error[E202]"),
        (&["session", "kill", "task-00000000"], "error[E201]"),
    ];
    for (args, code) in cases {
        let out = h.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains(code), "{args:?}: {stderr}");
    }
    // A task that has no session yet: E202, saying why.
    let held = h.ok(&["submit", "Later", "--no-dispatch"]);
    let held = held.lines().next().unwrap().trim();
    let out = h.run(&["session", "send", held, "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error[E202]") && stderr.contains("no session yet"),
        "{stderr}"
    );
}
