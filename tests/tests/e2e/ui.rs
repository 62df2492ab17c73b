//! `parhelia ui` in a real browser: Playwright (pinned in tools/ui-test/requirements.txt,
//! installed by scripts/install-deps) driving Debian's Chromium against a running
//! coordinator whose sessions are real Claude Code on the scripted model
//! (tests/ui/dashboard.py does the clicking; this side starts everything and asserts).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use parhelia_testkit::harness::{Harness, bin_dir};
use parhelia_testkit::{Script, ToolCall, Turn};
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The server, stopped when the test ends however it ends.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `parhelia ui` on a free loopback port; returns it and the URL it printed.
fn serve(h: &Harness) -> (Served, String) {
    let mut child = h
        .command(&["ui", "--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start parhelia ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read the URL");
    let url = line.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/?token="),
        "{url:?}"
    );
    (Served(child), url)
}

/// The browser test's steps by name.
fn run_browser(
    h: &Harness,
    url: &str,
    out_dir: &Path,
) -> std::collections::BTreeMap<String, Value> {
    let python = workspace_root().join("tools/ui-test/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps (it installs Playwright and Debian's chromium)",
        python.display()
    );
    let template = h.command(&[]);
    let mut cmd = Command::new(&python);
    cmd.arg(workspace_root().join("tests/ui/dashboard.py"))
        .arg(bin_dir().join("parhelia"))
        .arg(url)
        .arg(out_dir)
        .current_dir(h.root());
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\ncoordinator log:\n{}",
        out.status,
        h.coordinator_log()
    );
    let steps: std::collections::BTreeMap<String, Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_str()?.to_string(), v)))
        .collect();
    assert!(
        steps.contains_key("done"),
        "no `done` step:\n{stdout}\n{stderr}"
    );
    steps
}

#[test]
fn the_dashboard_shows_sessions_spend_checkpoints_and_a_live_terminal_in_chromium() {
    let h = Harness::new(Script::new([
        // Task A, headless: two files, then done.
        Turn::tool_use([ToolCall::write("first.txt", "one\n")]).with_usage(400, 40),
        Turn::tool_use([ToolCall::write("second.txt", "two\n")]).with_usage(500, 30),
        Turn::text("Done.").with_usage(600, 20),
        // Task B, interactive: one answer, then it waits at its prompt.
        Turn::text("Ready when you are.").with_usage(300, 10),
    ]));
    let (_server, url) = serve(&h);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let steps = run_browser(&h, &url, &out_dir);

    // Only the dashboard's own page, with the token, drives it.
    let cases = &steps["refusals"]["cases"];
    for (case, status) in [
        ("no_token", 401),
        ("wrong_token", 401),
        ("page_without_token", 401),
        ("foreign_origin", 403),
        ("no_origin_post", 403),
        ("rebound_host", 421),
    ] {
        assert_eq!(cases[case]["status"], status, "{case}: {cases}");
        if case != "page_without_token" {
            assert_eq!(cases[case]["e411"], true, "{case}: {cases}");
        }
    }
    assert_eq!(cases["allowed"]["status"], 200, "{cases}");
    assert!(
        !steps["opened"]["url"].as_str().unwrap().contains("token="),
        "the token stayed in the address bar: {}",
        steps["opened"]
    );

    // The board showed the new task within 1 s of its first event (pushed, not polled).
    let after = steps["board_new_task"]["after_first_event_s"]
        .as_f64()
        .unwrap();
    assert!(after <= 1.0, "{}", steps["board_new_task"]);

    // The chart's last point is the task's cost, as `task show --json` says it.
    let spend = &steps["spend"];
    assert_eq!(spend["cli_cost"], spend["chart_last"], "{spend}");
    assert!(spend["cli_cost"].as_f64().unwrap() > 0.0, "{spend}");
    let task_id = steps["board_new_task"]["task_id"].as_str().unwrap();
    let series = h.json(&["task", "spend", task_id, "--json"]);
    let shown = h.json(&["task", "show", task_id, "--json"]);
    assert!(series["points"].as_array().unwrap().len() >= 2, "{series}");

    // Two checkpoints chosen: the files the session wrote between them.
    let diff = &steps["checkpoint_diff"];
    assert!(diff["checkpoints"].as_u64().unwrap() >= 2, "{diff}");
    let paths: Vec<&str> = diff["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(paths.contains(&"second.txt"), "{diff}");
    // The timeline says what each checkpoint changed since its parent.
    let changed: Vec<&str> = diff["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(changed.first(), Some(&"· first"), "{diff}");
    assert!(
        changed[1..].iter().all(|c| c.ends_with("files changed")),
        "{diff}"
    );

    // The terminal: read-only keys never reached the pane; allowed ones did.
    let terminal = &steps["terminal"];
    assert_eq!(terminal["read_only_reached"], false, "{terminal}");
    assert_eq!(terminal["typed_reached"], true, "{terminal}");

    assert!(steps.contains_key("needs_input"));
    for shot in ["board.png", "session.png", "board-phone.png"] {
        let len = std::fs::metadata(out_dir.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "{shot}: {len} bytes");
    }
    // The spend series the chart drew ends at the cost `task show` prints (before the
    // resume above started a new container, whose compute adds rows).
    assert!(shown["cost_usd"].as_f64().unwrap() >= spend["cli_cost"].as_f64().unwrap());
}
