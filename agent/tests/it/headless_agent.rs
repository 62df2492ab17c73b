//! Runs the real `parhelia-agent run` binary with real tmux, real files and real gRPC,
//! against a fake `claude`: a shell script that speaks headless stream-json (one turn per
//! stdin line, a `result` per turn with a cumulative cost, exit at EOF) and calls the
//! hook command from `--settings` the way Claude Code does. This exercises the agent's
//! tmux, FIFO, hook, journal, heartbeat, Stop and SIGTERM paths without a model.
//!
//! Prompts steer the fake: `gate` makes a turn wait until a `gate` file appears in the
//! workspace; `hang` makes it block until it is signalled.

use std::process::{Command, Stdio};

use parhelia_proto::{
    GetInfoRequest, SendInputRequest, SessionOutcome, SessionStatus, StopRequest, event,
    stream_events_response,
};

use crate::support::*;

#[tokio::test]
async fn a_headless_session_runs_queues_input_and_finishes() {
    let fixture = Fixture::new();
    let spec = fixture.write_spec(|s| s["prompt"] = "first turn waits at the gate".into());
    let mut child = fixture.spawn_agent(&spec);
    let agent = wait_for_agent_json(&fixture, &mut child).await;
    assert_eq!(agent.version, 1);
    assert_eq!(agent.pid, child.id());
    assert_eq!(agent.container_id, "ctr-1");
    assert_eq!(agent.session_id, "sess-1");
    assert_eq!(agent.socket_dir, None);
    let mut client = connect(&agent).await;

    let info = client
        .get_info(authed(GetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.session_id.as_str(), info.task_id.as_str()),
        ("sess-1", "task-1")
    );
    assert_eq!(info.pid, child.id());

    // Turn one is running (Claude Code has said init) and waits at the gate.
    let mut follower = Follower::open(&mut client, 1).await;
    follower
        .until("claude init", |f| {
            f.has(|k| matches!(k, event::Kind::ClaudeInit(_)))
        })
        .await;
    let input = client
        .send_input(authed(SendInputRequest {
            text: "and a second turn".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        input.queued,
        "input during a turn waits for the turn to end"
    );
    follower
        .until("a heartbeat that measured the tmux tree", |f| {
            f.heartbeats
                .iter()
                .any(|h| h.memory_bytes > 0 && h.workspace_disk_bytes > 0)
        })
        .await;
    assert!(
        fixture.tmux_has_claude_session(),
        "claude runs in our private tmux server"
    );
    let info = client
        .get_info(authed(GetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.claude_code_version, "0.0.0-fake");
    assert_eq!(info.status, SessionStatus::Busy as i32);

    std::fs::write(fixture.path("workspace/gate"), "open").unwrap();
    follower
        .until("session finished", |f| {
            f.has(|k| matches!(k, event::Kind::SessionFinished(_)))
        })
        .await;

    // What was streamed is exactly the journal, gap-free from 1.
    let journal = fixture.journal();
    assert_eq!(follower.events, journal);
    let seqs: Vec<u64> = journal.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=journal.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        journal
            .iter()
            .find(|e| e.seq == input.seq)
            .and_then(|e| e.kind.clone()),
        Some(event::Kind::InputAccepted(parhelia_proto::InputAccepted {
            text: "and a second turn".into(),
            queued: true
        }))
    );

    let names = kind_names(&journal);
    assert_eq!(
        &names[..3],
        &["session_started", "checkpoint_created", "input_accepted"]
    );
    assert_eq!(
        names.iter().filter(|n| **n == "claude_init").count(),
        1,
        "{names:?}"
    );
    let costs: Vec<(f64, f64)> = journal
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::TurnResult(r)) => Some((r.claude_total_cost_usd, r.session_cost_usd)),
            _ => None,
        })
        .collect();
    assert_eq!(costs, vec![(0.1, 0.1), (0.2, 0.2)]);
    let exited = claude_exited(&journal);
    assert_eq!((exited.exit_code, exited.had_result), (0, true));
    let finished = session_finished(&journal);
    assert_eq!(finished.outcome, SessionOutcome::Succeeded as i32);
    assert_eq!(finished.error_code, "");
    assert_eq!(finished.result, "done 2");
    assert_eq!(finished.session_cost_usd, 0.2);

    // Statuses come from the hooks, change every time, and end FINISHED.
    let statuses = statuses(&journal);
    assert_eq!(statuses.first(), Some(&SessionStatus::Busy));
    assert_eq!(statuses.last(), Some(&SessionStatus::Finished));
    assert!(statuses.contains(&SessionStatus::Idle), "{statuses:?}");
    assert!(statuses.windows(2).all(|w| w[0] != w[1]), "{statuses:?}");

    // How Claude Code was started.
    let args = std::fs::read_to_string(fixture.path("workspace/.fake-claude-args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    for expected in [
        "-p",
        "--verbose",
        "--dangerously-skip-permissions",
        "stream-json",
    ] {
        assert!(args.contains(&expected), "{args:?}");
    }
    let session_id = args.iter().position(|a| *a == "--session-id").unwrap();
    assert_eq!(args[session_id + 1], "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e");
    assert!(
        !args.iter().any(|a| a.contains("gate")),
        "no prompt on the command line"
    );
    let env = std::fs::read_to_string(fixture.path("workspace/.fake-claude-env")).unwrap();
    assert!(!env.contains(SECRET) && !env.contains("PARHELIA_"), "{env}");
    let config_dir = fixture.path("claude-config");
    assert!(env.contains(&format!("CLAUDE_CONFIG_DIR={}", config_dir.display())));
    assert!(env.contains("DISABLE_TELEMETRY=1"));
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_dir.join("settings.json")).unwrap()).unwrap();
    assert_eq!(settings["cleanupPeriodDays"], 36500);

    // After the end the agent lingers, serving, until Stop.
    let late = client
        .send_input(authed(SendInputRequest {
            text: "too late".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    client
        .stop(authed(StopRequest {
            reason: "done reading".into(),
            grace_ms: 0,
            ..StopRequest::default()
        }))
        .await
        .unwrap();
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        fixture.journal(),
        journal,
        "nothing is journaled after SessionFinished"
    );
    assert!(!fixture.path("runtime/agent.json").exists());
    assert!(!fixture.tmux_has_claude_session());
    fixture.assert_default_tmux_untouched();
}

#[tokio::test]
async fn sigterm_stops_claude_and_the_session_is_interrupted() {
    let fixture = Fixture::new();
    let spec = fixture.write_spec(|s| s["prompt"] = "hang in there".into());
    let mut child = fixture.spawn_agent(&spec);
    let agent = wait_for_agent_json(&fixture, &mut child).await;
    let mut client = connect(&agent).await;
    let mut follower = Follower::open(&mut client, 1).await;
    follower
        .until("claude init", |f| {
            f.has(|k| matches!(k, event::Kind::ClaudeInit(_)))
        })
        .await;
    assert!(fixture.tmux_has_claude_session());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for_exit(&mut child).await;
    assert!(
        status.success(),
        "a SIGTERM'd agent exits cleanly: {status}"
    );

    let journal = fixture.journal();
    let names = kind_names(&journal);
    let tail = &names[names.len() - 5..];
    // On SIGTERM (a preempted container) the session is checkpointed after Claude
    // Code stopped and before it ends, so it can be resumed from exactly there.
    assert_eq!(
        tail,
        &[
            "stop_requested",
            "claude_exited",
            "checkpoint_created",
            "status_changed",
            "session_finished"
        ],
        "{names:?}"
    );
    match &journal[journal.len() - 5].kind {
        Some(event::Kind::StopRequested(stop)) => assert_eq!(stop.reason, "SIGTERM"),
        other => panic!("{other:?}"),
    }
    match &journal[journal.len() - 3].kind {
        Some(event::Kind::CheckpointCreated(c)) => assert_eq!(c.trigger, "sigterm"),
        other => panic!("{other:?}"),
    }
    let exited = claude_exited(&journal);
    assert_eq!((exited.exit_code, exited.had_result), (143, false));
    let finished = session_finished(&journal);
    assert_eq!(finished.outcome, SessionOutcome::Interrupted as i32);
    assert_eq!(finished.error_code, "E602");
    assert!(
        !fixture.tmux_has_claude_session(),
        "the private tmux server is gone"
    );
    assert!(!fixture.tmux_socket().exists());
    fixture.assert_default_tmux_untouched();
}

#[tokio::test]
async fn the_stop_rpc_cancels_the_session_and_the_agent_exits() {
    let fixture = Fixture::new();
    let spec = fixture.write_spec(|s| s["prompt"] = "hang on".into());
    let mut child = fixture.spawn_agent(&spec);
    let agent = wait_for_agent_json(&fixture, &mut child).await;
    let mut client = connect(&agent).await;
    let mut follower = Follower::open(&mut client, 1).await;
    follower
        .until("claude init", |f| {
            f.has(|k| matches!(k, event::Kind::ClaudeInit(_)))
        })
        .await;

    client
        .stop(authed(StopRequest {
            reason: "the user cancelled".into(),
            grace_ms: 5000,
            ..StopRequest::default()
        }))
        .await
        .unwrap();
    // The follower sees the end of the session, then the stream ends with the agent.
    follower
        .until("session finished", |f| {
            f.has(|k| matches!(k, event::Kind::SessionFinished(_)))
        })
        .await;
    while let Some(item) = follower.stream.message().await.unwrap() {
        assert!(
            matches!(item.item, Some(stream_events_response::Item::Heartbeat(_))),
            "nothing is journaled after SessionFinished: {item:?}"
        );
    }
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");

    let journal = fixture.journal();
    assert_eq!(follower.events, journal);
    let finished = session_finished(&journal);
    assert_eq!(finished.outcome, SessionOutcome::Cancelled as i32);
    assert_eq!(finished.error_code, "E601");
    assert!(finished.error_message.contains("the user cancelled"));
    assert_eq!(claude_exited(&journal).exit_code, 143);
    assert!(journal.iter().any(|e| matches!(&e.kind,
        Some(event::Kind::StopRequested(s)) if s.reason == "the user cancelled")));
}

#[tokio::test]
async fn a_missing_claude_binary_fails_fast_with_e501() {
    let fixture = Fixture::new();
    let missing = fixture.path("no-such-claude");
    let spec = fixture.write_spec(|s| {
        s["claude_bin"] = missing.to_string_lossy().into_owned().into();
        s["linger_after_finish_ms"] = 0.into();
    });
    let mut child = fixture.spawn_agent(&spec);
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");
    let journal = fixture.journal();
    // The starting workspace is checkpointed before the launch is tried; the final
    // checkpoint (trigger "error") is taken before the session ends.
    assert_eq!(
        kind_names(&journal),
        vec![
            "session_started",
            "checkpoint_created",
            "checkpoint_created",
            "status_changed",
            "session_finished"
        ]
    );
    let triggers: Vec<String> = journal
        .iter()
        .filter_map(|e| match &e.kind {
            Some(parhelia_proto::event::Kind::CheckpointCreated(c)) => Some(c.trigger.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(triggers, ["start", "error"]);
    let finished = session_finished(&journal);
    assert_eq!(finished.outcome, SessionOutcome::Failed as i32);
    assert_eq!(finished.error_code, "E501");
    assert!(
        finished.error_message.contains("no-such-claude"),
        "{}",
        finished.error_message
    );
    fixture.assert_default_tmux_untouched();
}

/// A Claude Code that exits at once (127: its interpreter missing) never sent a
/// request: its turn went unanswered, but no spend is unknown.
#[tokio::test]
async fn a_claude_code_that_never_started_had_no_request_in_flight() {
    let fixture = Fixture::new();
    let broken = fixture.path("broken-claude");
    std::fs::write(&broken, "#!/bin/sh\nexit 127\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = fixture.write_spec(|s| {
        s["claude_bin"] = broken.to_string_lossy().into_owned().into();
        s["linger_after_finish_ms"] = 0.into();
    });
    let mut child = fixture.spawn_agent(&spec);
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");
    let journal = fixture.journal();
    let exited = claude_exited(&journal);
    assert_eq!(exited.exit_code, 127, "{exited:?}");
    assert!(!exited.request_in_flight, "{exited:?}");
    assert_eq!(session_finished(&journal).error_code, "E501");
}

#[test]
fn startup_errors_exit_2_with_a_message() {
    let fixture = Fixture::new();
    // A missing workspace is created (a remote backend cannot make it
    // first); a path that is something else is an error.
    let not_a_dir = fixture.path("a-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let bad_workspace = fixture
        .write_spec(|s| s["workspace_dir"] = not_a_dir.to_string_lossy().into_owned().into());
    let output = fixture.agent_command(&bad_workspace).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a-file"), "{stderr}");

    let headless = fixture.write_spec(|_| {});
    let output = fixture
        .agent_command(&headless)
        .env_remove("PARHELIA_SESSION_SECRET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PARHELIA_SESSION_SECRET"), "{stderr}");

    let unknown_field = fixture.write_spec(|s| s["surprise"] = true.into());
    let output = fixture.agent_command(&unknown_field).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field"));
    assert!(!fixture.path("volume/journal/ctr-1.jsonl").exists());
}

#[test]
fn the_hook_subcommand_exits_0_even_when_the_agent_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "hook",
            "--socket",
            &*dir.path().join("gone.sock").to_string_lossy(),
        ],
        vec!["hook", "--bad-flag"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parhelia-agent"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        // The bad-flag run may exit before reading its stdin.
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"hook_event_name":"PreToolUse","session_id":"s"}"#);
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(
            output.stdout.is_empty(),
            "a hook's stdout could steer Claude Code"
        );
    }
}
