//! The Agent gRPC service.
//!
//! Promises:
//! - Every RPC is refused with UNAUTHENTICATED unless its `authorization` metadata is
//!   exactly `Bearer <session secret>`, compared in constant time ([`SessionAuth`]). The
//!   secret is never logged or echoed.
//! - `StreamEvents(from_seq, follow)` sends journal events `from_seq..` in seq order with
//!   no gaps, then (with `follow`) live events as they become durable, interleaved with
//!   heartbeats. Events are read back from the journal, never from a lossy channel, so a
//!   slow subscriber only falls behind, it never misses an event (heartbeats may be
//!   skipped). When the agent shuts down, followers get every remaining event, then the
//!   stream ends.
//! - `GetInfo`, `SendInput` and `Stop` are answered by the supervisor.
//! - `Attach` bridges the stream to a tmux client on a pseudo-terminal
//!   ([`crate::terminal`]); it is refused (FAILED_PRECONDITION, saying what to do) for a
//!   headless session or one that is not running. A read-only attach never writes a byte
//!   to the terminal. The last response is `ended` with the reason; when the client left
//!   a running session (detach key or hang-up) the supervisor takes a `detach`
//!   checkpoint.

use std::sync::Arc;
use std::time::Duration;

use parhelia_proto::agent_server::{Agent, AgentServer};
use parhelia_proto::{
    AgentInfo, AttachEndReason, AttachEnded, AttachRequest, AttachResponse, CaptureScreenRequest,
    CaptureScreenResponse, CreateCheckpointRequest, CreateCheckpointResponse, GetInfoRequest,
    Heartbeat, JournalGap, RestoreProgressUpdate, SendInputRequest, SendInputResponse, StopRequest,
    StopResponse, StreamEventsRequest, StreamEventsResponse, WatchRestoreRequest,
    stream_events_response,
};
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ServiceError;
use crate::journal::Journal;
use crate::supervisor::{SupervisorMessage, TerminalGrant};
use crate::terminal::AttachedTerminal;
use crate::tmux::TMUX_SESSION_NAME;

/// How many events a subscriber reads from the journal at a time.
const REPLAY_BATCH: usize = 256;

/// The session secret, held as the exact metadata value it must arrive as.
#[derive(Clone)]
pub struct SessionAuth {
    expected: Arc<[u8]>,
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionAuth(<redacted>)")
    }
}

impl SessionAuth {
    pub fn new(secret: &str) -> SessionAuth {
        SessionAuth {
            expected: parhelia_proto::bearer(secret).into_bytes().into(),
        }
    }

    /// Whether `request` carries the session secret.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), ServiceError> {
        let presented = request
            .metadata()
            .get(parhelia_proto::AUTH_METADATA_KEY)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        // `ct_eq` on slices of different lengths is false without comparing contents;
        // the length of the expected value is not a secret worth hiding.
        if bool::from(presented.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(ServiceError::Unauthenticated)
        }
    }
}

impl tonic::service::Interceptor for SessionAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request).map_err(Status::from)?;
        Ok(request)
    }
}

/// The service's view of the agent.
#[derive(Clone)]
pub struct AgentService {
    supervisor: mpsc::Sender<SupervisorMessage>,
    journal: Journal,
    heartbeats: broadcast::Sender<Heartbeat>,
    shutdown: watch::Receiver<bool>,
    /// The restore before Claude Code starts, as the supervisor reports it
    /// (`WatchRestore`).
    restore: watch::Receiver<RestoreProgressUpdate>,
}

/// A session that restores nothing, as `WatchRestore` says it.
pub fn no_restore() -> RestoreProgressUpdate {
    RestoreProgressUpdate {
        none: true,
        finished: true,
        ok: true,
        ..Default::default()
    }
}

impl AgentService {
    pub fn new(
        supervisor: mpsc::Sender<SupervisorMessage>,
        journal: Journal,
        heartbeats: broadcast::Sender<Heartbeat>,
        shutdown: watch::Receiver<bool>,
    ) -> AgentService {
        AgentService {
            supervisor,
            journal,
            heartbeats,
            shutdown,
            restore: watch::channel(no_restore()).1,
        }
    }

    /// The restore `WatchRestore` follows (otherwise: none).
    pub fn with_restore(mut self, restore: watch::Receiver<RestoreProgressUpdate>) -> Self {
        self.restore = restore;
        self
    }

    /// The tonic service with authentication in front of every method.
    pub fn into_server(
        self,
        auth: SessionAuth,
    ) -> tonic::service::interceptor::InterceptedService<AgentServer<AgentService>, SessionAuth>
    {
        AgentServer::with_interceptor(self, auth)
    }

    async fn ask<T>(
        &self,
        message: impl FnOnce(oneshot::Sender<T>) -> SupervisorMessage,
    ) -> Result<T, ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.supervisor
            .send(message(reply))
            .await
            .map_err(|_| ServiceError::ShuttingDown)?;
        answer.await.map_err(|_| ServiceError::ShuttingDown)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type AttachStream = ReceiverStream<Result<AttachResponse, Status>>;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use parhelia_proto::attach_request::Item;
        let mut inbound = request.into_inner();
        let start = match inbound.message().await?.and_then(|m| m.item) {
            Some(Item::Start(start)) => start,
            _ => {
                return Err(ServiceError::InvalidArgument(
                    "the first attach message must be `start`".into(),
                )
                .into());
            }
        };
        let grant = self
            .ask(|reply| SupervisorMessage::Terminal { reply })
            .await?;
        check_attachable(&grant)?;
        let size = start.size.unwrap_or_default();
        let term = if start.term.is_empty() {
            "xterm-256color".to_string()
        } else {
            start.term.clone()
        };
        let terminal = AttachedTerminal::spawn(
            &grant.tmux,
            TMUX_SESSION_NAME,
            start.read_only,
            clamp(size.cols, 80),
            clamp(size.rows, 24),
            &term,
        )
        .map_err(|e| Status::internal(format!("failed to {e}")))?;
        tracing::info!(
            read_only = start.read_only,
            client_pid = terminal.pid(),
            "attached"
        );
        let (responses, stream) = mpsc::channel(64);
        tokio::spawn(bridge_attach(
            terminal,
            inbound,
            start.read_only,
            grant,
            responses,
            self.supervisor.clone(),
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn capture_screen(
        &self,
        request: Request<CaptureScreenRequest>,
    ) -> Result<Response<CaptureScreenResponse>, Status> {
        let lines = request.into_inner().lines;
        let grant = self
            .ask(|reply| SupervisorMessage::Terminal { reply })
            .await?;
        let text = grant
            .tmux
            .capture_pane(TMUX_SESSION_NAME, lines)
            .await
            .map_err(|e| {
                ServiceError::FailedPrecondition(format!(
                    "the session's screen is gone (claude code is not running): {e}"
                ))
            })?;
        Ok(Response::new(CaptureScreenResponse { text }))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<AgentInfo>, Status> {
        let info = self
            .ask(|reply| SupervisorMessage::GetInfo { reply })
            .await?;
        Ok(Response::new(info))
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let request = request.into_inner();
        let (items, stream) = mpsc::channel(64);
        // Subscribe before replaying, so no live heartbeat is missed in between.
        let heartbeats = self.heartbeats.subscribe();
        tokio::spawn(send_events(
            self.journal.clone(),
            request.from_seq,
            request.follow,
            heartbeats,
            self.shutdown.clone(),
            items,
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type WatchRestoreStream = ReceiverStream<Result<RestoreProgressUpdate, Status>>;

    async fn watch_restore(
        &self,
        _request: Request<WatchRestoreRequest>,
    ) -> Result<Response<Self::WatchRestoreStream>, Status> {
        let (items, stream) = mpsc::channel(16);
        let mut restore = self.restore.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                // The latest figures (a slow reader skips to them, it never queues
                // every step); the last one sent says `finished`.
                let update = restore.borrow_and_update().clone();
                let finished = update.finished;
                if items.send(Ok(update)).await.is_err() || finished {
                    return;
                }
                tokio::select! {
                    changed = restore.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.wait_for(|down| *down) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn send_input(
        &self,
        request: Request<SendInputRequest>,
    ) -> Result<Response<SendInputResponse>, Status> {
        let text = request.into_inner().text;
        let response = self
            .ask(|reply| SupervisorMessage::SendInput { text, reply })
            .await??;
        Ok(Response::new(response))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        let request = request.into_inner();
        let grace = (request.grace_ms > 0).then(|| Duration::from_millis(request.grace_ms.into()));
        self.ask(|reply| SupervisorMessage::Stop {
            reason: request.reason,
            grace,
            limit_code: crate::supervisor::limit_code(&request.error_code),
            reply,
        })
        .await?;
        Ok(Response::new(StopResponse {}))
    }

    async fn create_checkpoint(
        &self,
        request: Request<CreateCheckpointRequest>,
    ) -> Result<Response<CreateCheckpointResponse>, Status> {
        let message = request.into_inner().message;
        let (summary, seq) = self
            .ask(|reply| SupervisorMessage::CreateCheckpoint { message, reply })
            .await?
            .map_err(|failure| ServiceError::Checkpoint {
                code: failure.code,
                message: failure.message,
            })?;
        Ok(Response::new(CreateCheckpointResponse {
            checkpoint_id: summary.checkpoint_id,
            seq,
        }))
    }
}

fn clamp(value: u32, default: u16) -> u16 {
    if value == 0 {
        default
    } else {
        value.min(u32::from(u16::MAX)) as u16
    }
}

/// Refuses an attach that cannot work, saying what to do instead.
fn check_attachable(grant: &TerminalGrant) -> Result<(), ServiceError> {
    if !grant.running {
        return Err(ServiceError::FailedPrecondition(format!(
            "session {} is not running; `parhelia resume {}` continues it",
            grant.session_id, grant.session_id
        )));
    }
    if !grant.interactive {
        return Err(ServiceError::FailedPrecondition(format!(
            "session {} is headless and has no terminal; follow it with `parhelia session logs -f {}`",
            grant.session_id, grant.session_id
        )));
    }
    Ok(())
}

/// Keystrokes the terminal has not taken yet beyond which the bridge stops reading
/// the client's stream (gRPC flow control then holds the client back).
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Copies screen bytes out and keystrokes in until the client or the tmux client ends.
/// One task does it all on the non-blocking terminal: no thread, no blocking write.
async fn bridge_attach(
    mut terminal: AttachedTerminal,
    mut inbound: tonic::Streaming<AttachRequest>,
    read_only: bool,
    grant: TerminalGrant,
    responses: mpsc::Sender<Result<AttachResponse, Status>>,
    supervisor: mpsc::Sender<SupervisorMessage>,
    mut shutdown: watch::Receiver<bool>,
) {
    use parhelia_proto::attach_request::Item;
    use parhelia_proto::attach_response;
    let mut client_open = true;
    // Keystrokes received and not yet written (the terminal's input queue was full).
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let reason = loop {
        tokio::select! {
            read = terminal.output.read(&mut buffer) => match read {
                Ok(n) if n > 0 => {
                    let response = AttachResponse { item: Some(attach_response::Item::Output(buffer[..n].to_vec())) };
                    if responses.send(Ok(response)).await.is_err() {
                        client_open = false;
                        break AttachEndReason::Detached;
                    }
                }
                // The tmux client exited: detached, or the session is gone.
                other => {
                    if let Err(e) = other {
                        tracing::warn!(error = %e, "failed to read the attached terminal");
                    }
                    break if grant.tmux.has_session(TMUX_SESSION_NAME).await {
                        AttachEndReason::Detached
                    } else {
                        AttachEndReason::SessionEnded
                    };
                }
            },
            written = terminal.input.write(&pending), if !pending.is_empty() => match written {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failed to pass keystrokes to tmux");
                    pending.clear();
                }
            },
            message = inbound.message(), if client_open && pending.len() < MAX_PENDING_INPUT => match message {
                Ok(Some(AttachRequest { item: Some(Item::Input(bytes)) })) => {
                    if !read_only {
                        pending.extend_from_slice(&bytes);
                    }
                }
                Ok(Some(AttachRequest { item: Some(Item::Resize(size)) })) => {
                    if let Err(e) = terminal.resize(clamp(size.cols, 80), clamp(size.rows, 24)) {
                        tracing::warn!(error = %e, "failed to resize the attached terminal");
                    }
                }
                Ok(Some(_)) => {}
                // The client hung up, or its connection broke (reset, or keepalive
                // pings unanswered): leave the session running.
                Ok(None) | Err(_) => {
                    client_open = false;
                    break AttachEndReason::Detached;
                }
            },
            () = async { let _ = shutdown.wait_for(|down| *down).await; } => break AttachEndReason::AgentStopping,
        }
    };
    drop(terminal);
    tracing::info!(?reason, "attach ended");
    if reason == AttachEndReason::Detached && grant.running {
        let _ = supervisor.send(SupervisorMessage::Detached).await;
    }
    if client_open {
        let ended = AttachResponse {
            item: Some(attach_response::Item::Ended(AttachEnded {
                reason: reason as i32,
                detail: match reason {
                    AttachEndReason::Detached => "detached; the session keeps running".into(),
                    AttachEndReason::SessionEnded => "claude code exited; the session ended".into(),
                    _ => "the agent is shutting down".into(),
                },
            })),
        };
        let _ = responses.send(Ok(ended)).await;
    }
}

/// One subscriber: replay from `from_seq`, then follow until shutdown or hang-up.
async fn send_events(
    journal: Journal,
    from_seq: u64,
    follow: bool,
    mut heartbeats: broadcast::Receiver<Heartbeat>,
    mut shutdown: watch::Receiver<bool>,
    items: mpsc::Sender<Result<StreamEventsResponse, Status>>,
) {
    let mut last_seq = journal.subscribe();
    let mut next = from_seq.max(1);
    let mut ending = false;
    loop {
        let durable = *last_seq.borrow_and_update();
        while next <= durable {
            let batch = match journal.read_from_async(next, REPLAY_BATCH).await {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => break,
                Err(e) => {
                    // Part of the journal no longer reads back (the file was cut short
                    // or overwritten under us): send what still reads, one event at a
                    // time, and name what does not as a gap instead of failing the
                    // stream forever.
                    tracing::error!(error = %e, "failed to read the journal for a subscriber; salvaging");
                    match salvage(&journal, next, durable, &items).await {
                        Some(after) => {
                            next = after;
                            continue;
                        }
                        None => return,
                    }
                }
            };
            for event in batch {
                next = event.seq + 1;
                let item = StreamEventsResponse {
                    item: Some(stream_events_response::Item::Event(event)),
                };
                if items.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        }
        if !follow || ending || *shutdown.borrow() {
            return;
        }
        tokio::select! {
            changed = last_seq.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            heartbeat = heartbeats.recv() => match heartbeat {
                Ok(heartbeat) => {
                    let item = StreamEventsResponse {
                        item: Some(stream_events_response::Item::Heartbeat(heartbeat)),
                    };
                    if items.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                // A slow subscriber skips heartbeats, never events.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // On shutdown, loop once more to send what is left, then end.
            _ = shutdown.changed() => ending = true,
            () = items.closed() => return,
        }
    }
}

/// Sends `from..=durable` one event at a time: readable events as events, each run of
/// unreadable ones as one [`JournalGap`]. Returns the next seq to send, or `None` when
/// the subscriber hung up.
async fn salvage(
    journal: &Journal,
    from: u64,
    durable: u64,
    items: &mpsc::Sender<Result<StreamEventsResponse, Status>>,
) -> Option<u64> {
    let mut gap: Option<(u64, String)> = None;
    let mut seq = from;
    while seq <= durable {
        match journal.read_from_async(seq, 1).await {
            Ok(mut one) if one.len() == 1 && one[0].seq == seq => {
                if let Some((gap_from, reason)) = gap.take() {
                    send_gap(items, gap_from, seq - 1, reason).await?;
                }
                let item = StreamEventsResponse {
                    item: Some(stream_events_response::Item::Event(one.remove(0))),
                };
                items.send(Ok(item)).await.ok()?;
            }
            Ok(_) => {
                gap.get_or_insert((seq, "the journal line holds another event".into()));
            }
            Err(e) => {
                gap.get_or_insert((seq, e.to_string()));
            }
        }
        seq += 1;
    }
    if let Some((gap_from, reason)) = gap {
        send_gap(items, gap_from, durable, reason).await?;
    }
    Some(seq)
}

async fn send_gap(
    items: &mpsc::Sender<Result<StreamEventsResponse, Status>>,
    from_seq: u64,
    to_seq: u64,
    reason: String,
) -> Option<()> {
    tracing::error!(from_seq, to_seq, %reason, "journal events lost; telling the subscriber");
    let item = StreamEventsResponse {
        item: Some(stream_events_response::Item::JournalGap(JournalGap {
            from_seq,
            to_seq,
            reason,
        })),
    };
    items.send(Ok(item)).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_proto::agent_client::AgentClient;
    use parhelia_proto::{AssistantText, event};
    use tonic::transport::Channel;

    struct Running {
        client: AgentClient<Channel>,
        journal: Journal,
        heartbeats: broadcast::Sender<Heartbeat>,
        shutdown: watch::Sender<bool>,
        /// The restore `WatchRestore` follows (one in progress, until a test ends it).
        restore: watch::Sender<RestoreProgressUpdate>,
        _dir: tempfile::TempDir,
    }

    fn text(n: u64) -> event::Kind {
        event::Kind::AssistantText(AssistantText {
            message_id: "m".into(),
            text: format!("e{n}"),
            ..Default::default()
        })
    }

    /// A real server on a real TCP port, with a stand-in supervisor that answers GetInfo.
    async fn start(events: u64) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.jsonl")).unwrap();
        for n in 1..=events {
            journal.append(text(n)).unwrap();
        }
        let (inbox, mut supervisor) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(message) = supervisor.recv().await {
                if let SupervisorMessage::GetInfo { reply } = message {
                    let _ = reply.send(AgentInfo {
                        session_id: "sess-1".into(),
                        ..Default::default()
                    });
                }
            }
        });
        let (heartbeats, _) = broadcast::channel(16);
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let (restore, restore_receiver) = watch::channel(RestoreProgressUpdate::default());
        let service = AgentService::new(
            inbox,
            journal.clone(),
            heartbeats.clone(),
            shutdown_receiver,
        )
        .with_restore(restore_receiver)
        .into_server(SessionAuth::new("right-secret"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = AgentClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Running {
            client,
            journal,
            heartbeats,
            shutdown,
            restore,
            _dir: dir,
        }
    }

    fn with_secret<T>(message: T, secret: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(secret) = secret {
            request.metadata_mut().insert(
                parhelia_proto::AUTH_METADATA_KEY,
                parhelia_proto::bearer(secret).parse().unwrap(),
            );
        }
        request
    }

    #[tokio::test]
    async fn every_rpc_needs_the_session_secret() {
        let mut running = start(3).await;
        for secret in [None, Some("wrong-secret"), Some(""), Some("right-secret ")] {
            let code = |r: Result<_, Status>| r.err().map(|s: Status| s.code());
            let client = &mut running.client;
            assert_eq!(
                code(
                    client
                        .get_info(with_secret(GetInfoRequest {}, secret))
                        .await
                        .map(|_| ())
                ),
                Some(tonic::Code::Unauthenticated),
                "{secret:?}"
            );
            let stream = StreamEventsRequest {
                from_seq: 1,
                follow: false,
            };
            assert_eq!(
                code(
                    client
                        .stream_events(with_secret(stream, secret))
                        .await
                        .map(|_| ())
                ),
                Some(tonic::Code::Unauthenticated)
            );
            let input = SendInputRequest { text: "x".into() };
            assert_eq!(
                code(
                    client
                        .send_input(with_secret(input, secret))
                        .await
                        .map(|_| ())
                ),
                Some(tonic::Code::Unauthenticated)
            );
            let stop = StopRequest::default();
            assert_eq!(
                code(client.stop(with_secret(stop, secret)).await.map(|_| ())),
                Some(tonic::Code::Unauthenticated)
            );
        }
        let info = running
            .client
            .get_info(with_secret(GetInfoRequest {}, Some("right-secret")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.session_id, "sess-1");
    }

    async fn collect(
        client: &mut AgentClient<Channel>,
        from_seq: u64,
        follow: bool,
        until_seq: Option<u64>,
    ) -> (Vec<u64>, usize) {
        let request = with_secret(
            StreamEventsRequest { from_seq, follow },
            Some("right-secret"),
        );
        let mut stream = client.stream_events(request).await.unwrap().into_inner();
        let mut seqs = Vec::new();
        let mut heartbeats = 0;
        while let Some(item) = stream.message().await.unwrap() {
            match item.item {
                Some(stream_events_response::Item::Event(event)) => seqs.push(event.seq),
                Some(stream_events_response::Item::Heartbeat(_)) => heartbeats += 1,
                Some(stream_events_response::Item::JournalGap(_)) | None => {}
            }
            if until_seq.is_some() && seqs.last().copied() == until_seq {
                break;
            }
        }
        (seqs, heartbeats)
    }

    /// Issue 12 item 6: the journal's file deleted under the live agent. The
    /// agent still streams everything it journaled (the old code re-opened
    /// the path and failed every stream from then on).
    #[tokio::test]
    async fn a_deleted_journal_is_still_streamed_in_full() {
        let mut running = start(5).await;
        std::fs::remove_file(running.journal.path()).unwrap();
        let (seqs, _) = collect(&mut running.client, 1, false, None).await;
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }

    /// Cut short in place: what no longer reads back is one `JournalGap`, in
    /// order, and the stream goes on with what still reads.
    #[tokio::test]
    async fn a_journal_cut_short_streams_a_gap_then_the_rest() {
        let mut running = start(3).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(running.journal.path())
            .unwrap()
            .set_len(0)
            .unwrap();
        running.journal.append_async(text(4)).await.unwrap();
        let request = with_secret(
            StreamEventsRequest {
                from_seq: 1,
                follow: false,
            },
            Some("right-secret"),
        );
        let mut stream = running
            .client
            .stream_events(request)
            .await
            .unwrap()
            .into_inner();
        let mut items = Vec::new();
        while let Some(item) = stream.message().await.unwrap() {
            match item.item {
                Some(stream_events_response::Item::Event(e)) => {
                    items.push(format!("event {}", e.seq))
                }
                Some(stream_events_response::Item::JournalGap(g)) => {
                    assert!(!g.reason.is_empty());
                    items.push(format!("gap {}-{}", g.from_seq, g.to_seq))
                }
                _ => {}
            }
        }
        assert_eq!(items, vec!["gap 1-3".to_string(), "event 4".to_string()]);
    }

    /// `WatchRestore` sends the figures as they are, then each change, and ends with
    /// the message that says the restore finished.
    #[tokio::test]
    async fn watch_restore_follows_the_restore_to_its_end() {
        let mut running = start(0).await;
        let mut stream = running
            .client
            .watch_restore(with_secret(WatchRestoreRequest {}, Some("right-secret")))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(!first.finished && !first.none, "{first:?}");
        running.restore.send_modify(|u| {
            u.checkpoint_id = "cp-1".into();
            u.files_total = 3;
            u.bytes_total = 30;
            u.files_done = 1;
            u.bytes_done = 10;
        });
        running.restore.send_modify(|u| {
            u.files_done = 3;
            u.bytes_done = 30;
            u.finished = true;
            u.ok = true;
        });
        let mut seen = vec![first];
        while let Some(update) = stream.message().await.unwrap() {
            seen.push(update);
        }
        let last = seen.last().unwrap();
        assert!(last.finished && last.ok, "{seen:?}");
        assert_eq!(
            (
                last.files_done,
                last.bytes_done,
                last.checkpoint_id.as_str()
            ),
            (3, 30, "cp-1")
        );
        // Nothing after the end; figures never go back.
        assert_eq!(seen.iter().filter(|u| u.finished).count(), 1, "{seen:?}");
        for pair in seen.windows(2) {
            assert!(pair[0].bytes_done <= pair[1].bytes_done, "{seen:?}");
        }
    }

    /// Without a restore (`AgentService::new` alone), it says so at once and ends.
    #[tokio::test]
    async fn watch_restore_without_a_restore_says_none() {
        let (inbox, _supervisor) = mpsc::channel(1);
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.jsonl")).unwrap();
        let (heartbeats, _) = broadcast::channel(1);
        let (_shutdown, shutdown_receiver) = watch::channel(false);
        let service = AgentService::new(inbox, journal, heartbeats, shutdown_receiver);
        let mut stream = service
            .watch_restore(Request::new(WatchRestoreRequest {}))
            .await
            .unwrap()
            .into_inner();
        let only = tokio_stream::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert!(only.none && only.finished, "{only:?}");
        assert!(tokio_stream::StreamExt::next(&mut stream).await.is_none());
    }

    #[tokio::test]
    async fn stream_events_resumes_from_the_requested_seq() {
        let mut running = start(300).await;
        let (seqs, _) = collect(&mut running.client, 4, false, None).await;
        assert_eq!(seqs, (4..=300).collect::<Vec<_>>());
        let (seqs, _) = collect(&mut running.client, 0, false, None).await;
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
        let (seqs, _) = collect(&mut running.client, 301, false, None).await;
        assert!(seqs.is_empty());
    }

    #[tokio::test]
    async fn following_streams_live_events_and_heartbeats_and_ends_at_shutdown() {
        let mut running = start(2).await;
        let request = with_secret(
            StreamEventsRequest {
                from_seq: 2,
                follow: true,
            },
            Some("right-secret"),
        );
        let mut stream = running
            .client
            .stream_events(request)
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(first.item, Some(stream_events_response::Item::Event(ref e)) if e.seq == 2)
        );

        running.journal.append_async(text(3)).await.unwrap();
        let live = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(live.item, Some(stream_events_response::Item::Event(ref e)) if e.seq == 3)
        );

        running
            .heartbeats
            .send(Heartbeat {
                last_seq: 3,
                ..Default::default()
            })
            .unwrap();
        let beat = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(beat.item, Some(stream_events_response::Item::Heartbeat(ref h)) if h.last_seq == 3)
        );

        // Shutdown: the follower gets what was journaled before it, then the stream ends.
        running.journal.append_async(text(4)).await.unwrap();
        running.shutdown.send_replace(true);
        let mut rest = Vec::new();
        while let Some(item) = stream.message().await.unwrap() {
            if let Some(stream_events_response::Item::Event(event)) = item.item {
                rest.push(event.seq);
            }
        }
        assert_eq!(rest, vec![4]);
    }
}
