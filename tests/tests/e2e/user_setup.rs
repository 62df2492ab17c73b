//! The user's own Claude Code setup in local sessions (issue 14): a `CLAUDE.md`, a custom
//! slash command and an MCP server defined in the (test's) home reach the session's
//! Claude Code through the config-sync planner, while planted credentials do not; a
//! session created with `--no-user-config` gets none of it (nor the user's dotfiles);
//! and under bubblewrap a
//! write to `~` lands in the session's private home, never the user's, with a stale
//! shim lock in a `PATH` directory unable to get in the way.

use std::path::{Path, PathBuf};

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};
use serde_json::Value;

const MEMO: &str = "PARHELIA-USER-MEMO-7Q: the user's own CLAUDE.md";
const PLANTED: &str = "PLANTEDSECRET";

/// A minimal MCP server on stdio (newline-delimited JSON-RPC) with one tool, `ping`.
const MCP_SERVER: &str = r#"
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except Exception:
        continue
    i = m.get("id")
    if i is None:
        continue
    meth = m.get("method")
    if meth == "initialize":
        r = {"protocolVersion": m.get("params", {}).get("protocolVersion", "2024-11-05"),
             "capabilities": {"tools": {}}, "serverInfo": {"name": "probe", "version": "1"}}
    elif meth == "tools/list":
        r = {"tools": [{"name": "ping", "description": "Answers pong",
                        "inputSchema": {"type": "object", "properties": {}}}]}
    elif meth == "tools/call":
        r = {"content": [{"type": "text", "text": "pong"}]}
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": i,
                                     "error": {"code": -32601, "message": "unknown"}}) + "\n")
        sys.stdout.flush()
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": i, "result": r}) + "\n")
    sys.stdout.flush()
"#;

/// Plants a user's setup with credentials in every place the planner knows, plus a
/// `PATH` directory of shims holding a stale lock.
fn plant_setup(h: &mut Harness) {
    let home = h.home();
    let claude = home.join(".claude");
    std::fs::create_dir_all(claude.join("commands")).unwrap();
    std::fs::write(claude.join("CLAUDE.md"), format!("{MEMO}\n")).unwrap();
    std::fs::write(
        claude.join("commands/parhelia-probe.md"),
        "---\ndescription: Probe the user's setup\n---\nSay the probe word.\n",
    )
    .unwrap();
    let fake_key = format!("sk-ant-api03-{PLANTED}0123456789abcdefghij");
    std::fs::write(
        claude.join("settings.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "apiKeyHelper": format!("echo {fake_key}"),
            "env": {"ANTHROPIC_API_KEY": fake_key, "PARHELIA_PROBE_SETTING": "kept"},
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        claude.join(".credentials.json"),
        format!(
            r#"{{"claudeAiOauth":{{"accessToken":"sk-ant-oat01-{PLANTED}abcdefghij0123456789"}}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        home.join(".claude.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "primaryApiKey": fake_key,
            "oauthAccount": {"emailAddress": "planted@example.com"},
            "mcpServers": {"probe": {"command": "/usr/bin/python3", "args": ["-c", MCP_SERVER]}},
        }))
        .unwrap(),
    )
    .unwrap();
    // A tool's shims on PATH, with a lock a killed shell left behind.
    let shims = home.join(".tool/shims");
    std::fs::create_dir_all(&shims).unwrap();
    std::fs::write(shims.join("tool-probe"), "#!/bin/sh\necho tool-probe-ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        shims.join("tool-probe"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(shims.join(".pyenv-shim"), "").unwrap();
    // A profile that writes, like `pyenv init` (rehash takes the shims' lock) and tools
    // that keep caches: under a read-only home each write printed an error.
    std::fs::write(
        home.join(".bashrc"),
        "mkdir -p ~/.cache/probe && echo ran > ~/.cache/probe/stamp || echo PROFILE-WRITE-FAILED\n\
         set -o noclobber\n\
         if ( echo > ~/.tool/shims/.pyenv-shim ) 2>/dev/null; then rm -f ~/.tool/shims/.pyenv-shim; \
         else echo PROFILE-LOCK-STUCK; fi\n\
         set +o noclobber\n",
    )
    .unwrap();
    // The harness's own PATH (binaries, Claude Code) stays in front.
    let current = h
        .command(&["--version"])
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        .unwrap_or_default();
    h.set_env("PATH", &format!("{current}:{}", shims.display()));
}

/// The Bash call every test makes: writes to `~`, a shim, and reads where credentials
/// would be.
fn script() -> Script {
    Script::new([
        Turn::tool_use([ToolCall::bash(
            "echo from-session > ~/written-by-session.txt; \
             ls -a ~/.tool/shims; \
             touch ~/.tool/shims/new-shim && echo SHIM-WRITABLE; \
             cat \"$CLAUDE_CONFIG_DIR/.credentials.json\" ~/.claude/.credentials.json 2>&1; \
             cat \"$CLAUDE_CONFIG_DIR/settings.json\"; echo; echo HOME-IS=$HOME; \
             cat ~/.cache/probe/stamp 2>&1; bash -ic true 2>&1; echo END",
        )]),
        Turn::text("Looked around."),
    ])
}

fn task_and_session(h: &Harness) -> (Value, PathBuf) {
    let task = h.json(&["task", "list", "--json"])[0].clone();
    let session = h
        .state()
        .join("sessions")
        .join(task["session_id"].as_str().unwrap());
    (task, session)
}

/// The raw `system/init` line Claude Code wrote in the session's stream.
fn init_line(session: &Path) -> Value {
    let runs = session.join("volume/runs");
    for run in std::fs::read_dir(&runs).unwrap().flatten() {
        let text = std::fs::read_to_string(run.path().join("stream.jsonl")).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v["type"] == "system"
                && v["subtype"] == "init"
            {
                return v;
            }
        }
    }
    panic!("no init line under {}", runs.display());
}

/// Every file's text under `dir` (links not followed), for looking for a secret.
fn all_text(dir: &Path) -> String {
    let mut all = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                all.push_str(&String::from_utf8_lossy(
                    &std::fs::read(entry.path()).unwrap_or_default(),
                ));
            }
        }
    }
    all
}

fn first_turn_body(h: &Harness) -> String {
    let request = h
        .stand_in
        .requests()
        .into_iter()
        .find(|r| r.turn_index == Some(0))
        .expect("the first turn was requested");
    request.body.expect("bodies are logged").to_string()
}

fn tool_output(h: &Harness) -> String {
    h.stand_in
        .requests()
        .into_iter()
        .find(|r| r.turn_index == Some(1))
        .expect("the second turn was requested")
        .tool_results
        .join("\n")
}

#[test]
fn the_users_setup_reaches_a_local_session_and_credentials_do_not() {
    let mut h = Harness::new_logging_bodies(script());
    h.set_env("PARHELIA_ISOLATION", "bwrap");
    plant_setup(&mut h);
    h.ok(&["task", "create", "Look around", "--sync"]);
    let (task, session) = task_and_session(&h);
    assert_eq!(task["status"], "completed", "{task:#}");

    // Claude Code has the user's CLAUDE.md in its context, the MCP server's tool, and
    // the custom slash command.
    let body = first_turn_body(&h);
    assert!(
        body.contains("PARHELIA-USER-MEMO-7Q"),
        "CLAUDE.md is not in the request"
    );
    let init = init_line(&session);
    let tools = init["tools"].to_string();
    assert!(tools.contains("mcp__probe__ping"), "{init:#}");
    assert!(
        init["mcp_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "probe" && s["status"] == "connected"),
        "{init:#}"
    );
    assert!(
        init["slash_commands"]
            .to_string()
            .contains("parhelia-probe"),
        "{init:#}"
    );

    // No credential reached the session: not in what Claude Code saw, not in its
    // config dir, not in its home, not in what the model was sent.
    let output = tool_output(&h);
    assert!(!output.contains(PLANTED), "{output}");
    assert!(!body.contains(PLANTED));
    assert!(output.contains("PARHELIA_PROBE_SETTING"), "{output}");
    let container = h
        .state()
        .join("containers")
        .join(task["container_id"].as_str().unwrap());
    for dir in [container.clone(), session.clone()] {
        let text = all_text(&dir);
        assert!(!text.contains(PLANTED), "a credential in {}", dir.display());
        assert!(!text.contains("planted@example.com"), "{}", dir.display());
    }
    assert!(!container.join("claude-config/.credentials.json").exists());

    // The Bash call's writes went to the session's private home, not the user's.
    assert!(
        output.contains(&format!("HOME-IS={}", h.home().display())),
        "{output}"
    );
    let private = session.join("home");
    assert_eq!(
        std::fs::read_to_string(private.join("written-by-session.txt")).unwrap(),
        "from-session\n"
    );
    assert!(!h.home().join("written-by-session.txt").exists());
    // The shims are the session's writable copy, without the stale lock.
    assert!(output.contains("SHIM-WRITABLE"), "{output}");
    assert!(output.contains("tool-probe"), "{output}");
    assert!(!output.contains(".pyenv-shim"), "{output}");
    assert!(private.join(".tool/shims/new-shim").is_file());
    assert!(!h.home().join(".tool/shims/new-shim").exists());
    assert!(h.home().join(".tool/shims/.pyenv-shim").exists());
    // The profile was copied in (no secret in it), the shell read it, and its writes (a
    // cache, the shims' lock) worked without a word in the tool's output.
    assert!(private.join(".bashrc").is_file());
    assert!(output.contains("\nran\n"), "{output}");
    assert!(!output.contains("PROFILE-WRITE-FAILED"), "{output}");
    assert!(!output.contains("PROFILE-LOCK-STUCK"), "{output}");
    assert!(private.join(".cache/probe/stamp").is_file());
    assert!(!h.home().join(".cache").exists());
}

#[test]
fn no_user_config_starts_clean() {
    let mut h = Harness::new_logging_bodies(script());
    h.set_env("PARHELIA_ISOLATION", "bwrap");
    plant_setup(&mut h);
    h.ok(&[
        "task",
        "create",
        "Look around",
        "--sync",
        "--no-user-config",
    ]);
    let (task, session) = task_and_session(&h);
    assert_eq!(task["status"], "completed", "{task:#}");
    let body = first_turn_body(&h);
    assert!(!body.contains("PARHELIA-USER-MEMO-7Q"));
    let init = init_line(&session);
    assert!(
        !init["tools"].to_string().contains("mcp__probe"),
        "{init:#}"
    );
    assert!(
        !init["slash_commands"]
            .to_string()
            .contains("parhelia-probe"),
        "{init:#}"
    );
    let output = tool_output(&h);
    assert!(!output.contains("PARHELIA_PROBE_SETTING"), "{output}");
    let container = h
        .state()
        .join("containers")
        .join(task["container_id"].as_str().unwrap());
    assert!(!container.join("user-config").exists());
    // A private home still, but without the user's dotfiles.
    assert!(session.join("home").is_dir());
    assert!(!session.join("home/.bashrc").exists());
}

/// Without bubblewrap (isolation off) the session still gets its own writable home: its
/// `HOME` is `sessions/<sid>/home`, holding the copied dotfiles, and what a Bash call
/// writes to `~` (a cache) lands there, never in the user's (the test's) home. Before,
/// an unconfined session's tools wrote into the user's real home.
#[test]
fn an_unconfined_session_writes_its_home_privately() {
    let mut h = Harness::new_logging_bodies(Script::new([
        Turn::tool_use([ToolCall::bash(
            "mkdir -p ~/.cache && echo cached > ~/.cache/x; echo HOME-IS=$HOME; \
             test -f ~/.bashrc && echo BASHRC-COPIED; echo END",
        )]),
        Turn::text("Wrote a cache."),
    ]));
    h.set_env("PARHELIA_ISOLATION", "none");
    plant_setup(&mut h);
    h.ok(&["task", "create", "Write a cache", "--sync"]);
    let (task, session) = task_and_session(&h);
    assert_eq!(task["status"], "completed", "{task:#}");
    let output = tool_output(&h);
    let private = session.join("home");
    assert!(
        output.contains(&format!("HOME-IS={}", private.display())),
        "{output}"
    );
    assert!(output.contains("BASHRC-COPIED"), "{output}");
    assert_eq!(
        std::fs::read_to_string(private.join(".cache/x")).unwrap(),
        "cached\n"
    );
    assert!(!h.home().join(".cache/x").exists());
    assert!(!h.home().join(".cache").exists());
    // The copied profile holds no credential.
    assert!(!all_text(&private).contains(PLANTED));
}
