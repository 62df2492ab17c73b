//! `parhelia session attach | send | logs | kill`: talking to a live session.
//!
//! The CLI reaches the session's agent directly, on any backend (the endpoint the
//! coordinator resolves through the backend that runs it — `AgentEndpoint` — and the
//! session's secret from the database); `kill` goes
//! through the coordinator's cancel path so the task's state stays the coordinator's.
//!
//! Promises of `attach`:
//! - The local terminal is raw only while attached, and is always put back as it was:
//!   by a guard (on every return path, errors and panics included) and on SIGINT,
//!   SIGTERM, SIGHUP and SIGQUIT, which end the attach.
//! - Window-size changes (SIGWINCH) are sent to the agent.
//! - tmux's detach key (Ctrl-b d) ends the attach and leaves the session running; with
//!   `--read-only` (where no keystroke is ever sent) the CLI recognises the same key,
//!   and Ctrl-c, itself.
//! - A headless session has no terminal: attaching to it follows its events, rendered
//!   as `task watch` renders them.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result};
use parhelia_proto::{
    AttachEndReason, AttachRequest, AttachStart, CancelTaskRequest, CaptureScreenRequest,
    SendInputRequest, StreamEventsRequest, WindowSize, attach_request, attach_response,
    stream_events_response,
};
use tokio::sync::mpsc;

use super::{Ctx, coordinator_error};
use crate::agent_client::{AuthedAgentClient, connect_agent};
use crate::db::SessionRecord;
use crate::error::coded;
use crate::error_codes;

/// tmux's prefix key (Ctrl-b).
const TMUX_PREFIX: u8 = 0x02;

/// A running session's record and a client for its agent.
pub(crate) struct LiveSession {
    session: SessionRecord,
    client: AuthedAgentClient,
}

fn find_session(ctx: &Ctx, session_id: &str) -> Result<(super::Opened, SessionRecord)> {
    let opened = ctx.open()?;
    let session = opened.db.get_session(session_id)?.ok_or_else(|| {
        coded(
            error_codes::SESSION_NOT_FOUND,
            format!("session not found: {session_id}"),
        )
    })?;
    Ok((opened, session))
}

fn not_running(session: &SessionRecord) -> anyhow::Error {
    coded(
        error_codes::AGENT_UNREACHABLE,
        crate::service::session_not_running(session),
    )
}

/// The session's agent, wherever it runs: the coordinator resolves its endpoint
/// through the backend that runs it (a local agent's loopback port, a Modal
/// sandbox's TLS tunnel); the secret comes from the database.
pub(crate) async fn connect_live(ctx: &Ctx, session_id: &str) -> Result<LiveSession> {
    let (opened, session) = find_session(ctx, session_id)?;
    if !matches!(
        (&session.container_id, session.container_state),
        (Some(_), Some(state)) if state.is_active()
    ) {
        return Err(not_running(&session));
    }
    let secret = opened
        .db
        .session_secret(session_id)?
        .context("the session has no secret")?;
    let mut coordinator = ctx.client(&opened.state).await?;
    let endpoint = coordinator
        .agent_endpoint(parhelia_proto::AgentEndpointRequest {
            session_id: session_id.to_string(),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    let client = connect_agent(&endpoint.uri, &secret).await?;
    Ok(LiveSession { session, client })
}

/// How a resume's or rollback's restore in the new container ended, as its agent's
/// `WatchRestore` told it.
pub(crate) enum RestoreWatched {
    /// The agent said so (`ok`; otherwise `error_code`, which the session's finish explains).
    Ended { ok: bool, error_code: String },
    /// The session restores nothing.
    Nothing,
    /// No answer to the end: the agent could not be reached, is older than
    /// `WatchRestore`, or went away first (`task watch` tells what happened).
    Unknown,
}

/// Follows the restore the session's new agent runs before Claude Code starts
/// (`WatchRestore`), showing files and bytes restored of the checkpoint's workspace
/// tree as `progress`, until it ends.
pub(crate) async fn watch_restore(
    ctx: &Ctx,
    session_id: &str,
    progress: &crate::progress::Progress,
) -> RestoreWatched {
    let Ok(mut live) = connect_live(ctx, session_id).await else {
        return RestoreWatched::Unknown;
    };
    let Ok(stream) = live
        .client
        .watch_restore(parhelia_proto::WatchRestoreRequest {})
        .await
    else {
        return RestoreWatched::Unknown;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(update)) = stream.message().await {
        if update.none {
            return RestoreWatched::Nothing;
        }
        if update.files_total > 0 || update.bytes_total > 0 || update.finished {
            progress.transfer(crate::progress::Transfer {
                files_done: update.files_done,
                files_total: update.files_total,
                bytes_done: update.bytes_done,
                bytes_total: update.bytes_total,
            });
        }
        if update.finished {
            return RestoreWatched::Ended {
                ok: update.ok,
                error_code: update.error_code,
            };
        }
    }
    RestoreWatched::Unknown
}

/// An agent's refusal as a coded error that says what to do.
fn agent_refusal(session_id: &str, status: &tonic::Status) -> anyhow::Error {
    crate::agent_client::refusal(status, &format!("session {session_id}"))
}

/// `session send`: one message, typed into an interactive session or queued for a
/// headless one's next turn.
/// `session send`'s call: the agent's `SendInput` (through the live session's
/// authenticated client); its `--json` value.
pub(crate) async fn send_call(
    ctx: &Ctx,
    session_id: &str,
    text: String,
) -> Result<serde_json::Value> {
    let mut live = connect_live(ctx, session_id).await?;
    let reply = live
        .client
        .send_input(SendInputRequest { text })
        .await
        .map_err(|status| agent_refusal(session_id, &status))?
        .into_inner();
    Ok(serde_json::json!({
        "session_id": session_id,
        "queued": reply.queued,
        "delivered": !reply.queued,
    }))
}

pub async fn send(ctx: &Ctx, session_id: &str, text: String, json: bool) -> Result<i32> {
    let sent = send_call(ctx, session_id, text).await?;
    if json {
        super::print_json(&sent)?;
    } else if sent["queued"] == true {
        outln!("queued: it goes to Claude when the current turn ends");
    } else {
        outln!("delivered");
    }
    Ok(0)
}

/// `session kill`'s call: the task's cancel (the coordinator's `CancelTask`: Stop to
/// the agent, final checkpoint, CANCELLED); its `--json` value.
pub(crate) async fn kill_call(
    ctx: &Ctx,
    session_id: &str,
    reason: Option<String>,
) -> Result<serde_json::Value> {
    let (opened, session) = find_session(ctx, session_id)?;
    let mut client = ctx.client(&opened.state).await?;
    let response = client
        .cancel_task(CancelTaskRequest {
            task_id: session.task_id.clone(),
            reason: reason.unwrap_or_else(|| format!("session kill {session_id}")),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    Ok(serde_json::json!({
        "session_id": session_id,
        "task_id": session.task_id,
        "status": response.status,
    }))
}

pub async fn kill(ctx: &Ctx, session_id: &str, reason: Option<String>, json: bool) -> Result<i32> {
    let killed = kill_call(ctx, session_id, reason).await?;
    if json {
        super::print_json(&killed)?;
    } else {
        let status = killed["status"].as_str().unwrap_or_default();
        outln!("{session_id} {status}");
    }
    Ok(0)
}

/// `session logs`' (and `parhelia_session_logs`') lines of history by default.
pub(crate) const DEFAULT_LOG_LINES: u32 = 200;

/// What `session logs` shows without `-f`: a live session's recent events (and
/// its screen, when interactive) from its agent, else a finished session's
/// history from the database.
pub(crate) enum Logs {
    Live {
        live: Box<LiveSession>,
        events: Vec<parhelia_proto::Event>,
        /// The screen's last lines (an interactive session whose agent answered).
        screen: Option<String>,
    },
    Stored(Vec<crate::event_filter::EventRow>),
}

/// `session logs`' call, the one the CLI and the MCP server's
/// `parhelia_session_logs` make: the live session's agent (`StreamEvents`,
/// `CaptureScreen`), else — unless following, which needs a live session —
/// the stored history (the agent's error when the session is unknown there too).
pub(crate) async fn logs_call(
    ctx: &Ctx,
    session_id: &str,
    lines: u32,
    follow: bool,
) -> Result<Logs> {
    let mut live = match connect_live(ctx, session_id).await {
        Ok(live) => live,
        Err(err) if !follow => {
            return stored_rows(ctx, session_id, lines)
                .map(Logs::Stored)
                .map_err(|_| err);
        }
        Err(err) => return Err(err),
    };
    let events = collect_events(&mut live.client, session_id, 1, false).await?;
    let screen = if live.session.mode == "interactive" {
        live.client
            .capture_screen(CaptureScreenRequest { lines })
            .await
            .ok()
            .map(|screen| screen.into_inner().text)
    } else {
        None
    };
    Ok(Logs::Live {
        live: Box::new(live),
        events,
        screen,
    })
}

/// `session logs --json`'s lines (without `-f`): the last `lines` events as
/// `task watch --json` prints them, then the screen (`{"type":"screen",
/// "text"}`) of an interactive session; a finished session's as `events list
/// --json` prints them.
pub(crate) fn logs_json(logs: &Logs, lines: u32) -> Vec<serde_json::Value> {
    let value = |v: serde_json::Result<serde_json::Value>| {
        v.unwrap_or_else(|err| serde_json::json!({"type": "error", "error": err.to_string()}))
    };
    match logs {
        Logs::Live { events, screen, .. } => {
            let mut out: Vec<serde_json::Value> = events
                .iter()
                .skip(events.len().saturating_sub(lines as usize))
                .map(|event| value(serde_json::to_value(crate::views::EventLine::new(event))))
                .collect();
            if let Some(text) = screen {
                out.push(serde_json::json!({"type": "screen", "text": text}));
            }
            out
        }
        Logs::Stored(rows) => rows
            .iter()
            .map(|row| {
                value(serde_json::to_value(crate::event_filter::EventView::from(
                    row,
                )))
            })
            .collect(),
    }
}

/// `session logs`: the recent screen (interactive) and event history; `-f` follows.
pub async fn logs(
    ctx: &Ctx,
    session_id: &str,
    follow: bool,
    lines: u32,
    json: bool,
) -> Result<i32> {
    let logs = logs_call(ctx, session_id, lines, follow).await?;
    if json {
        for line in logs_json(&logs, lines) {
            super::json_line(&line);
        }
    } else {
        match &logs {
            Logs::Live { events, screen, .. } => {
                let mut out = std::io::stdout().lock();
                let rendered: Vec<String> = events
                    .iter()
                    .filter_map(crate::render::render_event)
                    .collect();
                for line in rendered
                    .iter()
                    .skip(rendered.len().saturating_sub(lines as usize))
                {
                    writeln!(out, "{line}")?;
                }
                if let Some(text) = screen {
                    writeln!(out, "──── screen ────")?;
                    let screen_lines: Vec<&str> = text.trim_end().lines().collect();
                    for line in screen_lines
                        .iter()
                        .skip(screen_lines.len().saturating_sub(lines as usize))
                    {
                        writeln!(out, "{line}")?;
                    }
                }
                out.flush()?;
            }
            Logs::Stored(rows) => {
                outln!("{}", crate::event_filter::TABLE_HEADER);
                for row in rows {
                    outln!("{}", crate::event_filter::table_line(row));
                }
            }
        }
    }
    if follow
        && let Logs::Live {
            mut live, events, ..
        } = logs
    {
        let next = events.last().map(|e| e.seq + 1).unwrap_or(1);
        follow_rendered(&mut live.client, session_id, next, json).await?;
    }
    Ok(0)
}

/// A finished session's last `lines` events, from the database.
fn stored_rows(
    ctx: &Ctx,
    session_id: &str,
    lines: u32,
) -> Result<Vec<crate::event_filter::EventRow>> {
    let (opened, _) = find_session(ctx, session_id)?;
    let mut rows = opened.db.query_events(
        &crate::event_filter::EventFilter {
            session_id: Some(session_id.to_string()),
            ..Default::default()
        },
        None,
    )?;
    let skip = rows.len().saturating_sub(lines as usize);
    rows.drain(..skip);
    Ok(rows)
}

async fn collect_events(
    client: &mut AuthedAgentClient,
    session_id: &str,
    from_seq: u64,
    follow: bool,
) -> Result<Vec<parhelia_proto::Event>> {
    let mut stream = client
        .stream_events(StreamEventsRequest { from_seq, follow })
        .await
        .map_err(|status| agent_refusal(session_id, &status))?
        .into_inner();
    let mut events = Vec::new();
    while let Some(item) = stream
        .message()
        .await
        .map_err(|status| agent_refusal(session_id, &status))?
    {
        if let Some(stream_events_response::Item::Event(event)) = item.item {
            events.push(event);
        }
    }
    Ok(events)
}

/// Prints live events as `task watch` does, until the session finishes or Ctrl-c.
async fn follow_rendered(
    client: &mut AuthedAgentClient,
    session_id: &str,
    from_seq: u64,
    json: bool,
) -> Result<()> {
    let mut stream = client
        .stream_events(StreamEventsRequest {
            from_seq,
            follow: true,
        })
        .await
        .map_err(|status| agent_refusal(session_id, &status))?
        .into_inner();
    let mut interrupt = super::Interrupt::new();
    loop {
        let item = tokio::select! {
            item = stream.message() => item,
            interrupted = interrupt.sleep(Duration::from_secs(3600)) => {
                if interrupted {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(item) = item.map_err(|status| agent_refusal(session_id, &status))? else {
            return Ok(());
        };
        if let Some(stream_events_response::Item::Event(event)) = item.item {
            let finished = matches!(
                event.kind,
                Some(parhelia_proto::event::Kind::SessionFinished(_))
            );
            if json {
                super::json_line(&crate::views::EventLine::new(&event));
            } else if let Some(line) = crate::render::render_event(&event) {
                outln!("{line}");
            }
            if finished {
                return Ok(());
            }
        }
    }
}

/// `session attach`.
pub async fn attach(ctx: &Ctx, session_id: &str, read_only: bool) -> Result<i32> {
    let mut live = connect_live(ctx, session_id).await?;
    if live.session.mode != "interactive" {
        eprintln!(
            "session {session_id} is headless: following its events (Ctrl-c to leave; it keeps running)"
        );
        follow_rendered(&mut live.client, session_id, 1, false).await?;
        return Ok(0);
    }
    let (requests, request_stream) = mpsc::channel(64);
    let size = terminal_size();
    requests
        .send(AttachRequest {
            item: Some(attach_request::Item::Start(AttachStart {
                read_only,
                size: size.map(|(cols, rows)| WindowSize { cols, rows }),
                term: std::env::var("TERM").unwrap_or_default(),
            })),
        })
        .await
        .expect("the receiver is alive");
    let mut responses = live
        .client
        .attach(tokio_stream::wrappers::ReceiverStream::new(request_stream))
        .await
        .map_err(|status| agent_refusal(session_id, &status))?
        .into_inner();

    let guard = RawTerminal::enter()?;
    let ended = pump_attach(&mut responses, &requests, read_only).await;
    let clean = matches!(
        ended,
        Ok(AttachEnd::Agent(
            AttachEndReason::Detached | AttachEndReason::SessionEnded
        ))
    );
    let mut stdout = std::io::stdout().lock();
    if !clean {
        // tmux did not get to restore the screen: leave the alternate screen, show the
        // cursor, stop mouse and bracketed-paste reporting.
        let _ = stdout.write_all(
            b"\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\r\n",
        );
    }
    let _ = stdout.flush();
    drop(stdout);
    drop(guard);
    match ended? {
        AttachEnd::Agent(AttachEndReason::SessionEnded) => {
            eprintln!("session {session_id} ended");
        }
        AttachEnd::Agent(AttachEndReason::AgentStopping) => {
            eprintln!("the agent of session {session_id} is shutting down");
        }
        AttachEnd::Signal => eprintln!("left session {session_id}; it keeps running"),
        _ => eprintln!("detached from session {session_id}; it keeps running"),
    }
    Ok(0)
}

enum AttachEnd {
    Agent(AttachEndReason),
    /// The local user left (read-only detach key, or a signal).
    Local,
    Signal,
}

async fn pump_attach(
    responses: &mut tonic::Streaming<parhelia_proto::AttachResponse>,
    requests: &mpsc::Sender<AttachRequest>,
    read_only: bool,
) -> Result<AttachEnd> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change()).context("watching SIGWINCH")?;
    let mut stops = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ]
    .map(|kind| signal(kind).context("installing signal handlers"))
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let (stop_sender, mut stop) = mpsc::channel::<()>(1);
    for mut signal in stops.drain(..) {
        let stop_sender = stop_sender.clone();
        tokio::spawn(async move {
            signal.recv().await;
            let _ = stop_sender.send(()).await;
        });
    }
    let mut keystrokes = spawn_stdin_reader();
    let mut stdout = std::io::stdout();
    let mut prefix_pending = false;
    loop {
        tokio::select! {
            response = responses.message() => {
                let response = response.context("the attach stream broke (is the agent still running?)")?;
                match response.and_then(|r| r.item) {
                    Some(attach_response::Item::Output(bytes)) => {
                        stdout.write_all(&bytes)?;
                        stdout.flush()?;
                    }
                    Some(attach_response::Item::Ended(ended)) => {
                        return Ok(AttachEnd::Agent(
                            AttachEndReason::try_from(ended.reason).unwrap_or(AttachEndReason::Unspecified),
                        ));
                    }
                    None => anyhow::bail!("the agent ended the attach without saying why"),
                }
            }
            keys = keystrokes.recv() => {
                let Some(keys) = keys else { continue };
                if read_only {
                    for byte in &keys {
                        if *byte == 0x03 || (prefix_pending && *byte == b'd') {
                            return Ok(AttachEnd::Local);
                        }
                        prefix_pending = *byte == TMUX_PREFIX;
                    }
                } else if requests
                    .send(AttachRequest { item: Some(attach_request::Item::Input(keys)) })
                    .await
                    .is_err()
                {
                    anyhow::bail!("the attach stream closed");
                }
            }
            _ = winch.recv() => {
                if let Some((cols, rows)) = terminal_size() {
                    let _ = requests
                        .send(AttachRequest { item: Some(attach_request::Item::Resize(WindowSize { cols, rows })) })
                        .await;
                }
            }
            _ = stop.recv() => return Ok(AttachEnd::Signal),
        }
    }
}

/// Keystrokes from stdin, read on a thread of their own (a blocking read).
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (keys, received) = mpsc::channel(64);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 4096];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if keys.blocking_send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    received
}

/// The local terminal's size (columns, rows), from `stty size` on it: the safe way
/// (the ioctl would need unsafe code).
fn terminal_size() -> Option<(u32, u32)> {
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let output = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.split_whitespace().map(|n| n.parse::<u32>().ok());
    let rows = parts.next()??;
    let cols = parts.next()??;
    Some((cols, rows))
}

/// The local terminal in raw mode until dropped, which restores it exactly.
struct RawTerminal {
    original: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> Result<RawTerminal> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(original) = tcgetattr(stdin.as_fd()) else {
            // Not a terminal (a pipe): nothing to make raw or restore.
            return Ok(RawTerminal { original: None });
        };
        let mut raw = original.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("making the terminal raw")?;
        Ok(RawTerminal {
            original: Some(original),
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        if let Some(original) = &self.original {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, original);
        }
    }
}

/// A session's attach stream for another front (the dashboard's terminal,
/// `parhelia ui`): the same RPC `session attach` makes, started read-only or
/// not at `size` (cols, rows), then fed from `requests`. A headless session
/// has no terminal: E100.
pub(crate) async fn attach_stream(
    ctx: &Ctx,
    session_id: &str,
    read_only: bool,
    size: Option<(u32, u32)>,
    requests: mpsc::Receiver<AttachRequest>,
) -> Result<tonic::Streaming<parhelia_proto::AttachResponse>> {
    use tokio_stream::StreamExt as _;
    let mut live = connect_live(ctx, session_id).await?;
    if live.session.mode != "interactive" {
        return Err(coded(
            error_codes::INVALID_INPUT,
            format!(
                "session {session_id} is headless: it has no terminal to attach to (its events show what it does)"
            ),
        ));
    }
    let start = AttachRequest {
        item: Some(attach_request::Item::Start(AttachStart {
            read_only,
            size: size.map(|(cols, rows)| WindowSize { cols, rows }),
            term: "xterm-256color".into(),
        })),
    };
    let stream =
        tokio_stream::once(start).chain(tokio_stream::wrappers::ReceiverStream::new(requests));
    Ok(live
        .client
        .attach(stream)
        .await
        .map_err(|status| agent_refusal(session_id, &status))?
        .into_inner())
}
