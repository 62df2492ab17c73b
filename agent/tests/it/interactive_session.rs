//! Interactive sessions: the real agent runs the real Claude Code TUI in its tmux against
//! the scripted model stand-in. The prompt is typed into the TUI, events come from hooks
//! and the transcript, `SendInput` types a multi-line message as one message, and the
//! `Attach` RPC bridges a terminal (keystrokes, resize, tmux's detach key, read-only).

use std::time::Duration;

use parhelia_proto::agent_client::AgentClient;
use parhelia_proto::{
    AttachEndReason, AttachRequest, AttachResponse, AttachStart, SendInputRequest, SessionOutcome,
    SessionStatus, StopRequest, WindowSize, attach_request, attach_response, event,
};
use parhelia_testkit::claude_code::claude_bin;
use parhelia_testkit::{Script, StandIn, ToolCall, Turn};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::support::*;

fn tmux(fixture: &Fixture, args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(fixture.tmux_socket())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `condition` until it holds (or the hang guard trips).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("never saw {what}"));
}

/// One attached terminal, driven from the test.
struct Attached {
    input: mpsc::Sender<AttachRequest>,
    responses: tonic::Streaming<AttachResponse>,
    /// Every byte received, for the failure message.
    screen: Vec<u8>,
    /// The terminal those bytes draw: tmux redraws only the cells that changed, so the
    /// words on screen are read from a terminal emulator, never from the raw stream.
    terminal: vt100::Parser,
}

impl Attached {
    async fn open(client: &mut AgentClient<Channel>, read_only: bool) -> Attached {
        let (input, requests) = mpsc::channel(16);
        input
            .send(AttachRequest {
                item: Some(attach_request::Item::Start(AttachStart {
                    read_only,
                    size: Some(WindowSize {
                        cols: 120,
                        rows: 40,
                    }),
                    term: "xterm-256color".into(),
                })),
            })
            .await
            .unwrap();
        let responses = client
            .attach(authed(tokio_stream::wrappers::ReceiverStream::new(
                requests,
            )))
            .await
            .unwrap()
            .into_inner();
        Attached {
            input,
            responses,
            screen: Vec::new(),
            terminal: vt100::Parser::new(40, 120, 0),
        }
    }

    async fn type_bytes(&self, bytes: &[u8]) {
        self.input
            .send(AttachRequest {
                item: Some(attach_request::Item::Input(bytes.to_vec())),
            })
            .await
            .unwrap();
    }

    async fn resize(&mut self, cols: u32, rows: u32) {
        self.terminal
            .screen_mut()
            .set_size(rows as u16, cols as u16);
        self.input
            .send(AttachRequest {
                item: Some(attach_request::Item::Resize(WindowSize { cols, rows })),
            })
            .await
            .unwrap();
    }

    fn received(&mut self, bytes: &[u8]) {
        self.screen.extend_from_slice(bytes);
        self.terminal.process(bytes);
    }

    /// The text the attached terminal shows now, without blanks (a wrapped or
    /// re-laid-out line still matches).
    fn shown(&self) -> String {
        let contents = self.terminal.screen().contents();
        contents
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '\u{a0}')
            .collect()
    }

    /// Reads screen output until `text` is on the attached terminal's screen.
    async fn until_screen_shows(&mut self, text: &str) {
        let wanted: String = text.split_whitespace().collect();
        let read = async {
            while !self.shown().contains(&wanted) {
                match self.responses.message().await.unwrap() {
                    Some(AttachResponse {
                        item: Some(attach_response::Item::Output(bytes)),
                    }) => self.received(&bytes),
                    other => panic!("the attach ended while waiting for {text:?}: {other:?}"),
                }
            }
        };
        if tokio::time::timeout(HANG_GUARD, read).await.is_err() {
            let screen = String::from_utf8_lossy(&self.screen);
            let tail: String = screen
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "the screen never showed {text:?}; it shows:\n{}\nlast bytes: {tail:?}",
                self.terminal.screen().contents()
            );
        }
    }

    /// Reads until the `ended` message and returns its reason.
    async fn until_ended(&mut self) -> AttachEndReason {
        let read = async {
            loop {
                match self.responses.message().await.unwrap() {
                    Some(AttachResponse {
                        item: Some(attach_response::Item::Output(bytes)),
                    }) => self.received(&bytes),
                    Some(AttachResponse {
                        item: Some(attach_response::Item::Ended(ended)),
                    }) => return AttachEndReason::try_from(ended.reason).unwrap(),
                    other => panic!("unexpected attach response {other:?}"),
                }
            }
        };
        tokio::time::timeout(HANG_GUARD, read)
            .await
            .expect("the attach never ended")
    }
}

fn checkpoint_triggers(journal: &[parhelia_proto::Event]) -> Vec<String> {
    journal
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::CheckpointCreated(c)) => Some(c.trigger.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_interactive_session_takes_typed_prompts_attaches_and_detaches() {
    let claude = claude_bin().unwrap();
    let stand_in = StandIn::start(Script::new([
        Turn::text_then_tool_use("I'll write it.", [ToolCall::write("hello.txt", "hi\n")]),
        Turn::text("wrote hello.txt"),
        Turn::text("noted both lines"),
        Turn::text_then_tool_use("Typed one.", [ToolCall::write("typed.txt", "t\n")]),
        Turn::text("wrote typed.txt"),
    ]))
    .unwrap();
    let fixture = Fixture::new();
    let spec = fixture.write_spec(|s| {
        s["mode"] = "interactive".into();
        s["prompt"] = "Create hello.txt".into();
        s["claude_bin"] = claude.to_string_lossy().into_owned().into();
    });
    let mut command = fixture.isolated_agent_command(&spec);
    command
        .env("ANTHROPIC_BASE_URL", stand_in.base_url())
        .env("ANTHROPIC_API_KEY", "test-key-0123456789abcdefghijklmnop")
        .env("CLAUDE_CODE_MAX_RETRIES", "1");
    let mut child = command.spawn().unwrap();
    let agent = wait_for_agent_json(&fixture, &mut child).await;
    let mut client = connect(&agent).await;
    let mut follower = Follower::open(&mut client, 1).await;

    // The spec's prompt is typed into the TUI; the transcript gives the events.
    follower
        .until("the first turn's result", |f| {
            f.has(|k| matches!(k, event::Kind::TurnResult(_)))
        })
        .await;
    assert_eq!(
        std::fs::read_to_string(fixture.path("workspace/hello.txt")).unwrap(),
        "hi\n"
    );
    assert!(follower.has(|k| matches!(k, event::Kind::ToolCall(c) if c.name == "Write")));
    assert!(follower.has(|k| matches!(k, event::Kind::ToolResult(_))));
    assert!(
        follower.has(|k| matches!(k, event::Kind::TurnResult(r) if r.result == "wrote hello.txt"))
    );
    assert_eq!(
        stand_in.requests()[0].last_user_text.as_deref(),
        Some("Create hello.txt")
    );
    follower
        .until("idle from the Stop hook", |f| {
            statuses(&f.events).last() == Some(&SessionStatus::Idle)
        })
        .await;
    assert_eq!(statuses(&follower.events)[0], SessionStatus::Busy);

    // A multi-line message arrives at the model as one user message.
    let reply = client
        .send_input(authed(SendInputRequest {
            text: "first line\nsecond line".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.queued);
    let requests = tokio::task::spawn_blocking(move || {
        stand_in
            .wait_for(HANG_GUARD, |log| log.len() >= 3)
            .map(|log| (log, stand_in))
    })
    .await
    .unwrap()
    .unwrap();
    let (log, stand_in) = requests;
    assert_eq!(
        log[2].last_user_text.as_deref(),
        Some("first line\nsecond line")
    );
    follower
        .until("the second turn's result", |f| {
            f.has(|k| matches!(k, event::Kind::TurnResult(r) if r.result == "noted both lines"))
        })
        .await;

    // Attach, type a prompt, watch it work, resize, detach with tmux's key.
    let mut attached = Attached::open(&mut client, false).await;
    attached.until_screen_shows("noted both lines").await;
    attached.resize(100, 30).await;
    eventually("the window follows the resize", || {
        tmux(
            &fixture,
            &["display", "-p", "-t", "claude", "#{window_width}"],
        ) == "100"
    })
    .await;
    attached.type_bytes(b"Create typed.txt").await;
    attached.until_screen_shows("Create typed.txt").await;
    attached.type_bytes(b"\r").await;
    eventually("typed.txt", || fixture.path("workspace/typed.txt").exists()).await;
    attached.until_screen_shows("wrote typed.txt").await;
    attached.type_bytes(b"\x02d").await;
    assert_eq!(attached.until_ended().await, AttachEndReason::Detached);
    follower
        .until("the detach checkpoint", |f| {
            checkpoint_triggers(&f.events).contains(&"detach".to_string())
        })
        .await;
    assert!(fixture.tmux_has_claude_session(), "the session runs on");

    // A read-only attach delivers no keystroke.
    let requests_before = stand_in.requests().len();
    let mut watcher = Attached::open(&mut client, true).await;
    watcher.until_screen_shows("wrote typed.txt").await;
    watcher.type_bytes(b"READONLY-TYPED\r").await;
    // Re-attach (read-write) alongside it: what the read-only one typed is nowhere.
    let mut again = Attached::open(&mut client, false).await;
    again.type_bytes(b"MARKER").await;
    again.until_screen_shows("MARKER").await;
    eventually("MARKER in the pane", || {
        tmux(&fixture, &["capture-pane", "-p", "-t", "claude"]).contains("MARKER")
    })
    .await;
    let screen = tmux(&fixture, &["capture-pane", "-p", "-t", "claude"]);
    assert!(!screen.contains("READONLY-TYPED"), "{screen}");
    assert_eq!(stand_in.requests().len(), requests_before);
    drop(watcher);
    again.type_bytes(b"\x02d").await;
    assert_eq!(again.until_ended().await, AttachEndReason::Detached);

    // Stop: the session ends cancelled, and a new attach is refused with what to do.
    client
        .stop(authed(StopRequest {
            reason: "test".into(),
            grace_ms: 0,
            ..StopRequest::default()
        }))
        .await
        .unwrap();
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");
    let journal = fixture.journal();
    let finished = session_finished(&journal);
    assert_eq!(finished.outcome, SessionOutcome::Cancelled as i32);
    // Claude Code writes its cost-state as it exits on SIGTERM too.
    assert!(finished.session_cost_usd > 0.0, "{finished:?}");
    fixture.assert_default_tmux_untouched();
}

#[tokio::test]
async fn attach_is_refused_for_a_headless_session_with_what_to_do() {
    let fixture = Fixture::new();
    let spec = fixture.write_spec(|s| s["prompt"] = "gate".into());
    let mut child = fixture.spawn_agent(&spec);
    let agent = wait_for_agent_json(&fixture, &mut child).await;
    let mut client = connect(&agent).await;
    let (input, requests) = mpsc::channel(4);
    input
        .send(AttachRequest {
            item: Some(attach_request::Item::Start(AttachStart::default())),
        })
        .await
        .unwrap();
    let refused = client
        .attach(authed(tokio_stream::wrappers::ReceiverStream::new(
            requests,
        )))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("session logs -f"), "{refused:?}");

    // Without the secret: UNAUTHENTICATED.
    let (_input, requests) = mpsc::channel::<AttachRequest>(4);
    let refused = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    std::fs::write(fixture.path("workspace/gate"), "").unwrap();
    client.stop(authed(StopRequest::default())).await.unwrap();
    wait_for_exit(&mut child).await;
}

#[tokio::test]
async fn an_interactive_session_ends_when_claude_code_exits_with_its_cost_known() {
    let claude = claude_bin().unwrap();
    let stand_in = StandIn::start(Script::new([Turn::text("hello").with_usage(100, 10)])).unwrap();
    let fixture = Fixture::new();
    let spec = fixture.write_spec(|s| {
        s["mode"] = "interactive".into();
        s["prompt"] = "Say hello".into();
        s["claude_bin"] = claude.to_string_lossy().into_owned().into();
        s["linger_after_finish_ms"] = 0.into();
    });
    let mut command = fixture.isolated_agent_command(&spec);
    command
        .env("ANTHROPIC_BASE_URL", stand_in.base_url())
        .env("ANTHROPIC_API_KEY", "test-key-0123456789abcdefghijklmnop")
        .env("CLAUDE_CODE_MAX_RETRIES", "1");
    let mut child = command.spawn().unwrap();
    let agent = wait_for_agent_json(&fixture, &mut child).await;
    let mut client = connect(&agent).await;
    let mut follower = Follower::open(&mut client, 1).await;
    follower
        .until("the turn's result", |f| {
            f.has(|k| matches!(k, event::Kind::TurnResult(_)))
        })
        .await;
    client
        .send_input(authed(SendInputRequest {
            text: "/exit".into(),
        }))
        .await
        .unwrap();
    let status = wait_for_exit(&mut child).await;
    assert!(status.success(), "{status}");
    let journal = fixture.journal();
    let finished = session_finished(&journal);
    assert_eq!(
        finished.outcome,
        SessionOutcome::Succeeded as i32,
        "{journal:#?}"
    );
    assert_eq!(finished.result, "hello");
    // 100 input + 10 output tokens on the default model: 100*4e-6 + 10*20e-6.
    assert!(
        (finished.session_cost_usd - 0.0006).abs() < 1e-9,
        "{}",
        finished.session_cost_usd
    );
    assert_eq!(claude_exited(&journal).exit_code, 0);
}
