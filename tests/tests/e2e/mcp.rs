//! `parhelia mcp-server` driven by real MCP clients: the official MCP Python SDK (pinned in
//! tools/mcp-sdk/requirements.txt, installed by scripts/install-deps) over stdio and over
//! streamable HTTP with a bearer token, and Claude Code itself with the seeds' `mcpServers`
//! snippet. Also `parhelia integrate claude-code` into a test HOME, checked with the real
//! Claude Code. Every Claude Code here talks to the scripted model stand-in.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parhelia_testkit::harness::{Harness, bin_dir};
use parhelia_testkit::{Script, ToolCall, Turn};
use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> PathBuf {
    let py = workspace_root().join("tools/mcp-sdk/.venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/install-deps (it installs the pinned MCP Python SDK)",
        py.display()
    );
    py
}

/// A command with the harness's environment (PATH, the stand-in, HOME…), in its root.
fn with_harness_env(h: &Harness, program: &Path) -> Command {
    let template = h.command(&[]);
    let mut cmd = Command::new(program);
    cmd.current_dir(h.root())
        .env_remove("PARHELIA_HOME")
        .env_remove("CLAUDE_CONFIG_DIR");
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// Runs the Python client; returns its steps by name.
fn run_client(h: &Harness, args: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let script = workspace_root().join("tests/mcp/client.py");
    let out = with_harness_env(h, &python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "MCP client {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\ncoordinator log:\n{}",
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

fn assert_common_steps(steps: &std::collections::BTreeMap<String, Value>) {
    let tools = &steps["tools"];
    assert!(tools["count"].as_u64().unwrap() >= 24, "{tools}");
    let destructive: Vec<&str> = tools["destructive"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for d in [
        "parhelia_checkpoint_restore",
        "parhelia_task_delete",
        "parhelia_container_terminate",
        "parhelia_budget_set",
        "parhelia_cleanup",
    ] {
        assert!(
            destructive.contains(&d),
            "{d} not destructive: {destructive:?}"
        );
    }
    assert!(!destructive.contains(&"parhelia_task_list"));
    let nf = &steps["not_found"];
    assert_eq!(nf["code"], "E201", "{nf}");
    assert!(
        nf["hint"].as_str().unwrap().contains("parhelia task list"),
        "{nf}"
    );
    assert!(
        nf["text"].as_str().unwrap().starts_with("error[E201]"),
        "{nf}"
    );
    assert_eq!(
        steps["unconfirmed"]["code"], "E130",
        "{}",
        steps["unconfirmed"]
    );
}

#[test]
fn python_sdk_over_stdio_runs_a_task_through_checkpoints_restore_and_budget() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("first.txt", "one\n")]).with_usage(400, 40),
        Turn::text("First done.").with_usage(500, 20),
        Turn::tool_use([ToolCall::write("second.txt", "two\n")]).with_usage(600, 30),
        Turn::text("Second done.").with_usage(700, 20),
    ]));
    let parhelia = bin_dir().join("parhelia");
    let steps = run_client(&h, &["stdio", parhelia.to_str().unwrap()]);
    assert_common_steps(&steps);

    let created = &steps["created"]["created"];
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();

    // Followed to its end through events: the stream stopped because the task ended,
    // and its events also came as logging notifications and progress notifications.
    let streamed = &steps["streamed"];
    assert_eq!(streamed["stopped"], "task_ended", "{streamed}");
    let types: Vec<&str> = streamed["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(types.contains(&"session_finished"), "{types:?}");
    assert!(
        streamed["logged"].as_u64().unwrap() >= types.len() as u64,
        "{streamed}"
    );
    assert!(streamed["progress"].as_u64().unwrap() >= 1, "{streamed}");
    assert_eq!(steps["task"]["task"]["status"], "completed");

    // Diff saw the resumed session's new file; the restore took the workspace back.
    let diff = &steps["diff"]["diff"];
    assert_eq!(steps["diff"]["status"], "completed");
    let added: Vec<&str> = diff["added"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(added.contains(&"second.txt"), "{diff}");
    // One file's diff, and the conversation between the two, as `checkpoint diff --json`.
    let more = &steps["diff_more"];
    assert_eq!(more["file"]["path"], "second.txt", "{more}");
    assert!(
        more["file"]["unified_diff"]
            .as_str()
            .unwrap()
            .contains("+two"),
        "{more}"
    );
    let turns = more["conversation"]["result"].as_array().expect("turns");
    assert!(
        turns.iter().any(|t| t["text"]
            .as_str()
            .unwrap_or("")
            .contains("Now write second.txt")),
        "{more}"
    );
    let first = steps["diff"]["first"].as_str().unwrap();
    let second = steps["diff"]["second"].as_str().unwrap();
    for (args, key) in [
        (vec!["--file", "second.txt"], "file"),
        (vec!["--conversation"], "conversation"),
    ] {
        let mut argv = vec!["checkpoint", "diff", first, second, "--json"];
        argv.extend(args);
        let cli = h.json(&argv);
        let mcp = if key == "conversation" {
            &more[key]["result"]
        } else {
            &more[key]
        };
        assert_eq!(mcp, &cli, "{key}");
    }
    let unknown = &steps["diff_not_found"];
    assert_eq!(unknown["code"], "E205", "{unknown}");
    assert!(
        unknown["text"].as_str().unwrap().starts_with("error[E205]"),
        "{unknown}"
    );

    // The session's last five events, the `events list --json` objects; a task id
    // reads its current session's; an unknown session is E202.
    let logs = &steps["logs"];
    let lines = logs["logs"]["lines"].as_array().expect("lines");
    assert!(!lines.is_empty() && lines.len() <= 5, "{logs}");
    assert_eq!(logs["logs"], logs["logs_by_task"], "{logs}");
    let cli_events = h.json(&["events", "list", "--session", &session_id, "--json"]);
    for line in lines {
        assert_eq!(line["session_id"], session_id.as_str(), "{line}");
        let same = cli_events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == line["source"] && e["id"] == line["id"]);
        assert_eq!(same, Some(line), "{line}");
    }
    assert_eq!(logs["not_found_code"], "E202", "{logs}");
    assert!(
        logs["not_found_text"]
            .as_str()
            .unwrap()
            .starts_with("error[E202]"),
        "{logs}"
    );
    let ws = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    h.wait_for("the restore to remove second.txt", || {
        (!ws.join("second.txt").exists()).then_some(())
    });
    assert!(ws.join("first.txt").exists());

    // The numbers are the CLI's: the same JSON views.
    let final_ = &steps["final"];
    let cli_task = h.json(&["task", "show", &task_id, "--json"]);
    let mcp_task = final_["tasks"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task_id.as_str())
        .cloned()
        .expect("the task in parhelia_task_list");
    let cli_list = h.json(&["task", "list", "--json"]);
    let cli_listed = cli_list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task_id.as_str())
        .unwrap();
    assert_eq!(
        mcp_task["cost_usd"], cli_listed["cost_usd"],
        "{mcp_task}\n{cli_listed}"
    );
    assert!(cli_task["cost_usd"].as_f64().unwrap() > 0.0, "{cli_task}");
    let cli_budget = h.json(&["budget", "show", "--json"]);
    for key in [
        "cost_usd",
        "compute_usd",
        "model_usd",
        "input_tokens",
        "output_tokens",
        "ceiling_usd",
    ] {
        assert_eq!(final_["budget"][key], cli_budget[key], "budget {key}");
    }
    assert!(final_["budget"]["model_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(
        final_["health"]["status"]["coordinator"]["running"], true,
        "{}",
        final_["health"]
    );
    assert!(final_["reconciler"].is_object());
    // The estimate is the CLI's `--estimate-only`.
    let cli_estimate = h.json(&[
        "task",
        "create",
        "(estimate)",
        "--estimate-only",
        "--json",
        "--timeout",
        "1h",
        "--max-cost",
        "5",
    ]);
    assert_eq!(steps["estimate"]["estimate"], cli_estimate);
}

/// Reads the server's "serving MCP at http://…/mcp" line from its stderr.
fn start_http_server(
    h: &Harness,
    addr: &str,
    token: Option<&str>,
) -> (std::process::Child, String) {
    let mut cmd = h.command(&["mcp-server", "--http", addr]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match token {
        Some(t) => cmd.env("PARHELIA_MCP_TOKEN", t),
        None => cmd.env_remove("PARHELIA_MCP_TOKEN"),
    };
    let mut child = cmd.spawn().expect("spawn mcp-server --http");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let line = lines.next().expect("server stderr ended").unwrap();
        if let Some(url) = line.split("serving MCP at ").nth(1) {
            break url.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no address line");
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn http_status(url: &str, auth: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(hostport).unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn python_sdk_over_streamable_http_needs_the_bearer_token() {
    let h = Harness::new(Script::new([Turn::text("unused")]));
    let token = "0123456789abcdef0123456789abcdef";
    let (mut server, url) = start_http_server(&h, "127.0.0.1:0", Some(token));

    let (status, body) = http_status(&url, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("E410"), "{body}");
    let (status, body) = http_status(&url, Some("wrong-token-wrong-token"));
    assert_eq!(status, 401, "{body}");

    let steps = run_client(&h, &["http", &url, token]);
    assert_common_steps(&steps);
    let health = &steps["health"];
    assert!(health["health"]["status"].is_object(), "{health}");
    assert_eq!(health["tasks"]["tasks"], json!([]));
    let _ = server.kill();
    let _ = server.wait();

    // A non-loopback address without a token is refused before listening.
    let out = h
        .command(&["mcp-server", "--http", "0.0.0.0:0"])
        .env_remove("PARHELIA_MCP_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("error[E410]"), "{stderr}");
    assert!(stderr.contains("PARHELIA_MCP_TOKEN"), "{stderr}");
}

/// Claude Code's environment for a headless run against the harness's stand-in.
fn claude_command(h: &Harness, claude_config_dir: Option<&Path>) -> Command {
    let claude = parhelia_testkit::claude_code::claude_bin().unwrap();
    let mut cmd = with_harness_env(h, &claude);
    cmd.env("IS_SANDBOX", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::null());
    if let Some(dir) = claude_config_dir {
        cmd.env("CLAUDE_CONFIG_DIR", dir);
    }
    cmd
}

fn stream_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn claude_code_calls_parhelia_through_the_seeds_mcp_servers_snippet() {
    // One stand-in answers both Claude Codes: the user's (turns 0, 1 and 3) and the
    // session Parhelia starts (turn 2). `wait: true` keeps them in that order: the
    // user's Claude Code asks again only once the task (and its session) has ended.
    let h = Harness::new_logging_bodies(Script::new([
        Turn::tool_use([ToolCall::new(
            "mcp__parhelia__parhelia_task_list",
            json!({}),
        )]),
        Turn::tool_use([ToolCall::new(
            "mcp__parhelia__parhelia_task_create",
            json!({"prompt": "Say hello from inside Parhelia", "wait": true}),
        )]),
        Turn::text("Hello from inside Parhelia."),
        Turn::text("Parhelia ran the task."),
    ]));
    // The seeds' snippet, exactly.
    let config = h.root().join("mcp.json");
    std::fs::write(
        &config,
        r#"{"mcpServers": {"parhelia": {"command": "parhelia", "args": ["mcp-server"]}}}"#,
    )
    .unwrap();
    let out = claude_command(&h, None)
        .args(["-p", "List my Parhelia tasks, then start one."])
        .args(["--output-format", "stream-json", "--verbose"])
        .args(["--dangerously-skip-permissions", "--strict-mcp-config"])
        .arg("--mcp-config")
        .arg(&config)
        .output()
        .expect("run claude");
    let lines = stream_lines(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let init = lines
        .iter()
        .find(|l| l["type"] == "system" && l["subtype"] == "init")
        .unwrap_or_else(|| {
            panic!(
                "no init line:\n{}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    assert!(
        init["mcp_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "parhelia" && s["status"] == "connected"),
        "{}",
        init["mcp_servers"]
    );
    let result = lines
        .iter()
        .find(|l| l["type"] == "result")
        .expect("a result line");
    assert_eq!(
        result["is_error"],
        false,
        "{result}\n{stderr}\n{}",
        h.coordinator_log()
    );

    // The calls reached Parhelia: the task exists and completed.
    let tasks = h.json(&["task", "list", "--json"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        tasks[0]["prompt"], "Say hello from inside Parhelia",
        "{}",
        tasks[0]
    );
    assert_eq!(tasks[0]["status"], "completed", "{}", tasks[0]);
    let task_id = tasks[0]["id"].as_str().unwrap();

    // And the results came back to the model: the request after each tool call carries
    // its tool_result (the empty list, then the finished task with its id).
    let turns: Vec<_> = h
        .stand_in
        .requests()
        .into_iter()
        .filter(|r| r.has_tools && r.turn_index.is_some())
        .collect();
    let after_list = turns
        .iter()
        .find(|r| r.turn_index == Some(1))
        .expect("the request answered by turn 1");
    assert!(
        after_list
            .tool_results
            .iter()
            .any(|t| t.contains("\"tasks\"")),
        "{:?}",
        after_list.tool_results
    );
    let after_create = turns
        .iter()
        .find(|r| r.turn_index == Some(3))
        .expect("the request answered by turn 3");
    assert!(
        after_create
            .tool_results
            .iter()
            .any(|t| t.contains(task_id)),
        "{:?}",
        after_create.tool_results
    );
}

#[test]
fn integrate_claude_code_installs_commands_skills_and_the_mcp_server() {
    let h = Harness::new(Script::new([Turn::text("ok")]));
    let claude_dir = h.home().join(".claude");
    let claude_json = h.home().join(".claude.json");
    std::fs::write(
        &claude_json,
        r#"{"hasCompletedOnboarding": true, "mcpServers": {}}"#,
    )
    .unwrap();

    // --dry-run writes nothing.
    let dry = h.json(&["integrate", "claude-code", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert!(
        !claude_dir.exists(),
        "dry run wrote {}",
        claude_dir.display()
    );
    assert_eq!(
        std::fs::read_to_string(&claude_json).unwrap(),
        r#"{"hasCompletedOnboarding": true, "mcpServers": {}}"#
    );
    let dry_text = h.ok(&["integrate", "claude-code", "--dry-run"]);
    assert!(dry_text.contains("would create"), "{dry_text}");

    let first = h.json(&["integrate", "claude-code", "--json"]);
    let actions: Vec<&str> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["action"].as_str())
        .collect();
    assert!(
        actions.iter().all(|a| *a == "create" || *a == "merge"),
        "{actions:?}"
    );
    for name in [
        "submit",
        "status",
        "attach",
        "session",
        "checkpoint",
        "budget",
    ] {
        assert!(
            claude_dir
                .join(format!("commands/parhelia-{name}.md"))
                .is_file()
        );
    }
    assert!(
        claude_dir
            .join("skills/discover-parhelia/SKILL.md")
            .is_file()
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&claude_json).unwrap()).unwrap();
    assert_eq!(
        doc["mcpServers"]["parhelia"],
        json!({"command": "parhelia", "args": ["mcp-server"]})
    );
    assert_eq!(doc["hasCompletedOnboarding"], true);

    // Idempotent.
    let second = h.json(&["integrate", "claude-code", "--json"]);
    assert!(
        second["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["action"] == "unchanged"),
        "{second}"
    );

    // Claude Code, with this HOME, lists the slash commands and the skill, and starts
    // the MCP server from ~/.claude.json.
    let out = claude_command(&h, None)
        .args(["-p", "hi", "--output-format", "stream-json", "--verbose"])
        .arg("--dangerously-skip-permissions")
        .output()
        .expect("run claude");
    let lines = stream_lines(&out.stdout);
    let init = lines
        .iter()
        .find(|l| l["type"] == "system" && l["subtype"] == "init")
        .unwrap_or_else(|| panic!("no init:\n{}", String::from_utf8_lossy(&out.stderr)));
    let slash: Vec<&str> = init["slash_commands"]
        .as_array()
        .unwrap_or_else(|| panic!("no slash_commands in {init}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "submit",
        "status",
        "attach",
        "session",
        "checkpoint",
        "budget",
    ] {
        let cmd = format!("parhelia-{name}");
        assert!(slash.contains(&cmd.as_str()), "{cmd} not in {slash:?}");
    }
    assert!(
        init["mcp_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "parhelia" && s["status"] == "connected"),
        "{}",
        init["mcp_servers"]
    );

    // A user's own edit survives a later run.
    let status = claude_dir.join("commands/parhelia-status.md");
    std::fs::write(&status, "my own\n").unwrap();
    let third = h.ok(&["integrate", "claude-code"]);
    assert!(third.contains("skipped"), "{third}");
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "my own\n");
}
