//! The real `parhelia-agent` running the real Claude Code (the pinned install, or
//! `$PARHELIA_CLAUDE_BIN`) against the scripted Anthropic API stand-in on loopback: a new
//! session with a tool call, then the same session resumed in a second container.
//! Fails (never skips) when Claude Code is missing.

use parhelia_proto::{SessionOutcome, SessionStatus, event};
use parhelia_testkit::claude_code::claude_bin;
use parhelia_testkit::{Script, StandIn, ToolCall, Turn};

use crate::support::*;

fn turn_results(journal: &[parhelia_proto::Event]) -> Vec<parhelia_proto::TurnResult> {
    journal
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::TurnResult(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn real_claude_code_runs_a_session_and_resumes_it_in_a_new_container() {
    let claude = claude_bin().unwrap();
    let stand_in = StandIn::start(Script::new([
        Turn::text_then_tool_use(
            "I'll create hello.txt.",
            [ToolCall::write("hello.txt", "hi\n")],
        )
        .with_usage(120, 30),
        Turn::text("done").with_usage(200, 5),
        Turn::text("resumed answer").with_usage(50, 5),
    ]))
    .unwrap();
    let fixture = Fixture::new();
    let run = |container_id: &str, resume: bool, prompt: &str| {
        let spec = fixture.write_spec(|s| {
            s["container_id"] = container_id.into();
            s["resume"] = resume.into();
            s["prompt"] = prompt.into();
            s["claude_bin"] = claude.to_string_lossy().into_owned().into();
            s["linger_after_finish_ms"] = 0.into();
        });
        let mut command = fixture.isolated_agent_command(&spec);
        command
            .env("ANTHROPIC_BASE_URL", stand_in.base_url())
            .env("ANTHROPIC_API_KEY", "test-key")
            .env("CLAUDE_CODE_MAX_RETRIES", "1");
        command.spawn().unwrap()
    };

    // A new session: Claude Code writes a file with a tool call and finishes.
    let mut child = run("ctr-1", false, "Create hello.txt saying hi");
    let status = wait_for_exit(&mut child).await;
    let output = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let first = fixture.journal_of("ctr-1");
    let finished = session_finished(&first);
    assert_eq!(
        finished.outcome,
        SessionOutcome::Succeeded as i32,
        "{finished:?}\n{first:#?}"
    );
    assert_eq!(finished.result, "done");
    assert_eq!(
        std::fs::read_to_string(fixture.path("workspace/hello.txt")).unwrap(),
        "hi\n"
    );
    let names = kind_names(&first);
    for expected in [
        "claude_init",
        "tool_call",
        "tool_result",
        "turn_result",
        "claude_exited",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let info = first
        .iter()
        .find_map(|e| match &e.kind {
            Some(event::Kind::ClaudeInit(init)) => Some(init.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        info.claude_session_id,
        "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e"
    );
    // Status came from Claude Code's own hooks.
    let statuses = statuses(&first);
    assert_eq!(
        statuses,
        vec![
            SessionStatus::Busy,
            SessionStatus::Idle,
            SessionStatus::Finished
        ],
        "{first:#?}"
    );
    let results = turn_results(&first);
    assert_eq!(results.len(), 1);
    assert!(results[0].claude_total_cost_usd > 0.0);
    assert!(close(
        results[0].session_cost_usd,
        results[0].claude_total_cost_usd
    ));
    assert!(close(
        finished.session_cost_usd,
        results[0].claude_total_cost_usd
    ));
    let first_cost = finished.session_cost_usd;

    // The same session resumed by a new container: the conversation continues and the
    // cost carries over without double counting. Claude Code's own total (restored from
    // the transcript) must agree with the agent's sum of turns.
    let mut child = run("ctr-2", true, "Anything else?");
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");
    let second = fixture.journal_of("ctr-2");
    let finished = session_finished(&second);
    assert_eq!(
        finished.outcome,
        SessionOutcome::Succeeded as i32,
        "{second:#?}"
    );
    assert_eq!(finished.result, "resumed answer");
    let results = turn_results(&second);
    assert_eq!(results.len(), 1);
    assert!(finished.session_cost_usd > first_cost);
    assert!(
        close(finished.session_cost_usd, results[0].claude_total_cost_usd),
        "agent {} vs claude code {}",
        finished.session_cost_usd,
        results[0].claude_total_cost_usd
    );
    let requests = stand_in.requests();
    let messages = |r: &parhelia_testkit::model_stand_in::LoggedRequest| format!("{r:?}");
    assert_eq!(
        stand_in.turns_consumed(),
        3,
        "{:#?}",
        requests.iter().map(messages).collect::<Vec<_>>()
    );
    fixture.assert_default_tmux_untouched();
}

fn checkpoints_created(
    journal: &[parhelia_proto::Event],
) -> Vec<parhelia_proto::CheckpointCreated> {
    journal
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::CheckpointCreated(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// A turn's end checkpoints the files Claude wrote (by `Write` and by a shell
/// command) with the conversation; a fresh container (new config dir, a dirty
/// workspace) restores it exactly and continues the same conversation.
#[tokio::test]
async fn checkpoints_capture_a_turn_and_a_fresh_container_restores_it() {
    let claude = claude_bin().unwrap();
    let stand_in = StandIn::start(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]),
        Turn::tool_use([ToolCall::bash("echo from-shell > shell.txt")]),
        Turn::text("done"),
        Turn::text("resumed answer"),
    ]))
    .unwrap();
    let fixture = Fixture::new();
    let run = |container_id: &str, config: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let spec = fixture.write_spec(|s| {
            s["container_id"] = container_id.into();
            s["claude_bin"] = claude.to_string_lossy().into_owned().into();
            s["claude_config_dir"] = fixture.path(config).to_string_lossy().into_owned().into();
            s["linger_after_finish_ms"] = 0.into();
            edit(s);
        });
        let mut command = fixture.isolated_agent_command(&spec);
        command
            .env("ANTHROPIC_BASE_URL", stand_in.base_url())
            .env("ANTHROPIC_API_KEY", "test-key")
            .env("CLAUDE_CODE_MAX_RETRIES", "1");
        command.spawn().unwrap()
    };

    let mut child = run("ctr-1", "config-1", &|s| {
        s["prompt"] = "Write two files".into();
    });
    assert!(wait_for_exit(&mut child).await.success());
    let first = fixture.journal_of("ctr-1");
    let made = checkpoints_created(&first);
    let turn_end = made
        .iter()
        .find(|c| c.trigger == "turn_end")
        .unwrap_or_else(|| panic!("no turn_end checkpoint: {made:#?}"));
    assert!(
        !turn_end.skipped && turn_end.file_count >= 2,
        "{turn_end:?}"
    );
    // The session's end is checkpointed too: Claude Code appends to the
    // transcript after the Stop hook, so there is always a little more to keep.
    let last = made.last().unwrap();
    assert_eq!(last.trigger, "session_end");

    let store = parhelia_checkpoint::Store::open(&fixture.path("volume/checkpoints")).unwrap();
    let id = parhelia_checkpoint::CheckpointId::parse(&turn_end.checkpoint_id).unwrap();
    let read = |tree: &str, path: &str| store.read_file(&id, tree, std::path::Path::new(path));
    assert_eq!(read("workspace", "hello.txt").unwrap(), b"hi\n");
    assert_eq!(read("workspace", "shell.txt").unwrap(), b"from-shell\n");
    let transcript = read("conversation", "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e.jsonl").unwrap();
    assert!(transcript.ends_with(b"\n") && transcript.len() > 100);
    let metadata = &store.load(&id).unwrap().metadata;
    assert_eq!(
        metadata["claude_session_id"],
        "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e"
    );
    assert_eq!(metadata["git"]["repository"], false);
    // The turn's cost is reported after the Stop hook; the final checkpoint has it.
    let final_id = parhelia_checkpoint::CheckpointId::parse(&last.checkpoint_id).unwrap();
    let final_metadata = store.load(&final_id).unwrap().metadata;
    assert!(final_metadata["session_cost_usd"].as_f64().unwrap() > 0.0);

    // A fresh container: another config dir (no transcript), a workspace that
    // drifted after the checkpoint.
    std::fs::write(fixture.path("workspace/stray.txt"), "after the checkpoint").unwrap();
    std::fs::remove_file(fixture.path("workspace/hello.txt")).unwrap();
    let before = stand_in.requests().len();
    let mut child = run("ctr-2", "config-2", &|s| {
        s["resume"] = true.into();
        s["prompt"] = "Anything else?".into();
        s["restore_checkpoint"] = turn_end.checkpoint_id.clone().into();
    });
    assert!(wait_for_exit(&mut child).await.success());
    let second = fixture.journal_of("ctr-2");
    assert_eq!(
        session_finished(&second).outcome,
        SessionOutcome::Succeeded as i32,
        "{second:#?}"
    );
    assert!(kind_names(&second).contains(&"checkpoint_restored"));
    // The drifted state was saved first (so nothing is lost), then replaced.
    let safety = checkpoints_created(&second);
    assert_eq!(safety[0].trigger, "pre_restore", "{safety:#?}");
    assert!(!safety[0].skipped);
    assert_eq!(
        std::fs::read_to_string(fixture.path("workspace/hello.txt")).unwrap(),
        "hi\n"
    );
    assert!(!fixture.path("workspace/stray.txt").exists());
    // The resumed request carried the whole earlier conversation.
    let resumed = &stand_in.requests()[before..];
    let turn = resumed
        .iter()
        .find(|r| r.has_tools)
        .expect("a resumed turn");
    assert!(
        turn.message_count >= 7,
        "only {} messages",
        turn.message_count
    );
}
