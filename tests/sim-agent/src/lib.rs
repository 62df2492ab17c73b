//! Simulated agents for load tests of the real coordinator (issue 17).
//!
//! A simulated agent is the real agent minus Claude Code: the real gRPC service
//! (`parhelia_agent::server::AgentService`, so `StreamEvents` replays from the journal
//! and follows it with heartbeats exactly as in production), the real journal
//! (`parhelia_agent::journal::Journal`: every event `fdatasync`ed before it is
//! announced), the real session-secret check (`SessionAuth`), and a stand-in for the
//! supervisor that journals a scripted event mix ([`EventMix`]) at a configured rate and
//! answers `Stop` as the real one does (a `StopRequested`, then a `SessionFinished`).
//! Thousands run in one process on one tokio runtime, each on its own loopback port,
//! because the coordinator connects to every agent on its own (`agent_client.rs`).
//!
//! [`host`] serves the control socket the coordinator's `sim` backend talks to
//! (`parhelia_contract::sim`); [`bench`] is `scripts/bench-coordinator`'s driver.

pub mod bench;
pub mod host;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use parhelia_agent::journal::Journal;
use parhelia_agent::server::{AgentService, SessionAuth};
use parhelia_agent::supervisor::SupervisorMessage;
use parhelia_proto::event::Kind;
use parhelia_proto::{
    AgentInfo, AssistantText, CheckpointCreated, ClaudeExited, Heartbeat, ModelSpend,
    SessionFinished, SessionMode, SessionOutcome, SessionStarted, SessionStatus, StatusChanged,
    StopRequested, ToolCall, ToolResult, TurnResult, Usage,
};
use tokio::sync::{broadcast, mpsc, watch};

/// What one simulated turn journals, in order, and how fast.
///
/// The default is one turn of a real headless session as the agent journals it (see
/// `docs/benchmarks/coordinator.md`, "The event mix"): the prompt's status change, text,
/// a tool call and its result, a metered response, more text, a second metered
/// response, the turn's result, its `turn_end` checkpoint and the idle status change:
/// [`TURN_EVENTS`] events a turn, three of which (`ModelSpend`, `TurnResult`) move the
/// ledger and wake the budget watchdog.
#[derive(Clone, Debug, PartialEq)]
pub struct EventMix {
    /// Events each agent journals per second, on average (jittered ±50%).
    pub events_per_second: f64,
    /// Bytes of text in each `AssistantText` and `ToolResult`.
    pub text_bytes: usize,
}

/// The measured rate of a real session (`docs/benchmarks/coordinator.md`).
pub const DEFAULT_EVENTS_PER_SECOND: f64 = 3.9;

impl Default for EventMix {
    fn default() -> Self {
        EventMix {
            events_per_second: DEFAULT_EVENTS_PER_SECOND,
            text_bytes: 300,
        }
    }
}

/// Events in one simulated turn.
pub const TURN_EVENTS: u64 = 10;

/// The cost of one metered response in the mix (so ledgers and budgets move).
const RESPONSE_USD: f64 = 0.001;

/// The `step`th event of a session following the mix (`step` from 0), and the
/// session's cost after it.
pub fn mix_event(mix: &EventMix, step: u64, cost_before: f64) -> (Kind, f64) {
    let turn = step / TURN_EVENTS;
    let text = |what: &str| {
        let mut s = format!("{what} {turn}: ");
        while s.len() < mix.text_bytes {
            s.push_str("simulated output ");
        }
        s.truncate(mix.text_bytes.max(1));
        s
    };
    let spend = |n: u64, cost: f64| {
        Kind::ModelSpend(ModelSpend {
            model: "claude-sim".into(),
            message_id: format!("msg-{turn}-{n}"),
            subagent: false,
            usage: Some(Usage {
                input_tokens: 1200,
                output_tokens: 150,
                ..Usage::default()
            }),
            cost_usd: RESPONSE_USD,
            session_cost_usd: cost,
            priced: true,
        })
    };
    match step % TURN_EVENTS {
        0 => (
            Kind::StatusChanged(StatusChanged {
                status: SessionStatus::Busy as i32,
                hook_event: "UserPromptSubmit".into(),
                detail: String::new(),
            }),
            cost_before,
        ),
        1 | 5 => (
            Kind::AssistantText(AssistantText {
                message_id: format!("msg-{turn}-{}", step % TURN_EVENTS),
                text: text("text"),
                ..AssistantText::default()
            }),
            cost_before,
        ),
        2 => (
            Kind::ToolCall(ToolCall {
                tool_use_id: format!("tool-{turn}"),
                name: "Bash".into(),
                input_json: r#"{"command":"cargo test"}"#.into(),
                ..ToolCall::default()
            }),
            cost_before,
        ),
        3 => (
            Kind::ToolResult(ToolResult {
                tool_use_id: format!("tool-{turn}"),
                is_error: false,
                content: text("result"),
                ..ToolResult::default()
            }),
            cost_before,
        ),
        4 | 6 => {
            let cost = cost_before + RESPONSE_USD;
            (spend(step % TURN_EVENTS, cost), cost)
        }
        7 => (
            Kind::TurnResult(TurnResult {
                subtype: "success".into(),
                result: text("done"),
                num_turns: turn as u32 + 1,
                session_cost_usd: cost_before,
                ..TurnResult::default()
            }),
            cost_before,
        ),
        8 => (
            Kind::CheckpointCreated(CheckpointCreated {
                checkpoint_id: format!("cp-sim-{turn}"),
                trigger: "turn_end".into(),
                file_count: 29,
                total_bytes: 160_000,
                new_bytes: 4_000,
                duration_ms: 30,
                ..CheckpointCreated::default()
            }),
            cost_before,
        ),
        _ => (
            Kind::StatusChanged(StatusChanged {
                status: SessionStatus::Idle as i32,
                hook_event: "Stop".into(),
                detail: String::new(),
            }),
            cost_before,
        ),
    }
}

/// Who a simulated agent is.
#[derive(Clone, Debug)]
pub struct AgentIdentity {
    pub container_id: String,
    pub session_id: String,
    pub task_id: String,
    pub coordinator_id: String,
}

/// One running simulated agent.
pub struct SimAgent {
    pub identity: AgentIdentity,
    pub uri: String,
    pub journal: Journal,
    /// Set when the session should end by itself (the benchmark's end).
    finish: Arc<AtomicBool>,
    /// Ends the agent (its server, its tasks).
    shutdown: watch::Sender<bool>,
    supervisor: mpsc::Sender<SupervisorMessage>,
    /// Becomes true once the agent has ended (it is no longer listed).
    ended: watch::Receiver<bool>,
}

impl SimAgent {
    /// Starts an agent journaling to `<volume_dir>/journal/<container_id>.jsonl`, serving
    /// on a fresh loopback port.
    pub async fn start(
        identity: AgentIdentity,
        secret: &str,
        volume_dir: &Path,
        heartbeat_interval: Duration,
        mix: EventMix,
        seed: u64,
    ) -> Result<SimAgent> {
        let path = volume_dir
            .join("journal")
            .join(format!("{}.jsonl", identity.container_id));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (journal, _) = Journal::open(&path).context("opening the journal")?;
        let started_ms = parhelia_agent::journal::now_ms();
        if journal.last_seq() == 0 {
            journal
                .append_async(Kind::SessionStarted(SessionStarted {
                    claude_session_id: identity.session_id.clone(),
                    mode: SessionMode::Headless as i32,
                    workspace_path: String::new(),
                    model: "claude-sim".into(),
                    resumed: false,
                    agent_version: "sim".into(),
                }))
                .await?;
        }
        let (heartbeats, _) = broadcast::channel(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (supervisor, inbox) = mpsc::channel(16);
        let (ended_tx, ended) = watch::channel(false);
        let finish = Arc::new(AtomicBool::new(false));
        let service = AgentService::new(
            supervisor.clone(),
            journal.clone(),
            heartbeats.clone(),
            shutdown_rx.clone(),
        )
        .into_server(SessionAuth::new(secret));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let uri = format!("http://{}", listener.local_addr()?);
        let mut server_shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = server_shutdown.wait_for(|down| *down).await;
                    },
                )
                .await;
            if let Err(e) = served {
                eprintln!("sim agent server: {e}");
            }
            let _ = ended_tx.send(true);
        });
        let state = Arc::new(SessionState::default());
        tokio::spawn(supervise(
            identity.clone(),
            journal.clone(),
            inbox,
            shutdown.clone(),
            Arc::clone(&state),
            started_ms,
        ));
        tokio::spawn(beat(
            journal.clone(),
            heartbeats,
            heartbeat_interval,
            shutdown_rx.clone(),
            Arc::clone(&state),
            started_ms,
        ));
        tokio::spawn(generate(
            journal.clone(),
            mix,
            seed,
            shutdown_rx,
            Arc::clone(&finish),
            state,
        ));
        Ok(SimAgent {
            identity,
            uri,
            journal,
            finish,
            shutdown,
            supervisor,
            ended,
        })
    }

    /// Asks the session to end by itself (its script runs out: `ClaudeExited`, then
    /// `SessionFinished` succeeded).
    pub fn finish(&self) {
        self.finish.store(true, Ordering::SeqCst);
    }

    /// Ends the agent as SIGTERM ends a real one: an interrupted session, journaled.
    pub async fn terminate(&self) {
        let _ = self.supervisor.send(SupervisorMessage::Terminate).await;
    }

    /// Whether the agent has ended (its server is down).
    pub fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Ends the agent's server without journaling anything (the host is going away).
    pub fn abandon(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// What the session's stand-in supervisor and its generator share.
#[derive(Default)]
struct SessionState {
    /// `SessionFinished` is journaled (or being journaled): nothing more is generated.
    finished: AtomicBool,
    /// The session cost so far, as f64 bits.
    cost_bits: std::sync::atomic::AtomicU64,
    /// One writer of the session's last events at a time.
    ending: tokio::sync::Mutex<()>,
}

impl SessionState {
    fn cost(&self) -> f64 {
        f64::from_bits(self.cost_bits.load(Ordering::SeqCst))
    }
}

/// Journals the session's end once: `extra` first, then `SessionFinished`.
async fn end_session(
    journal: &Journal,
    state: &SessionState,
    extra: Option<Kind>,
    outcome: SessionOutcome,
    error_code: &str,
) {
    let _writing = state.ending.lock().await;
    if state.finished.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Some(kind) = extra {
        let _ = journal.append_async(kind).await;
    }
    let _ = journal
        .append_async(Kind::SessionFinished(SessionFinished {
            outcome: outcome as i32,
            error_code: error_code.to_string(),
            error_message: String::new(),
            result: "simulated".into(),
            session_cost_usd: state.cost(),
            unanswered_input_seqs: Vec::new(),
        }))
        .await;
}

async fn supervise(
    identity: AgentIdentity,
    journal: Journal,
    mut inbox: mpsc::Receiver<SupervisorMessage>,
    shutdown: watch::Sender<bool>,
    state: Arc<SessionState>,
    started_ms: i64,
) {
    while let Some(message) = inbox.recv().await {
        match message {
            SupervisorMessage::GetInfo { reply } => {
                let status = if state.finished.load(Ordering::SeqCst) {
                    SessionStatus::Finished
                } else {
                    SessionStatus::Busy
                };
                let _ = reply.send(AgentInfo {
                    agent_version: "sim".into(),
                    session_id: identity.session_id.clone(),
                    container_id: identity.container_id.clone(),
                    task_id: identity.task_id.clone(),
                    claude_session_id: identity.session_id.clone(),
                    mode: SessionMode::Headless as i32,
                    status: status as i32,
                    started_at_ms: started_ms,
                    last_seq: journal.last_seq(),
                    ..AgentInfo::default()
                });
            }
            SupervisorMessage::Stop {
                reason,
                limit_code,
                reply,
                ..
            } => {
                let (outcome, code) = match limit_code {
                    Some(code) => (SessionOutcome::Failed, code),
                    None => (SessionOutcome::Cancelled, ""),
                };
                end_session(
                    &journal,
                    &state,
                    Some(Kind::StopRequested(StopRequested { reason })),
                    outcome,
                    code,
                )
                .await;
                let _ = reply.send(());
                // The real agent exits once its session is over and the stop answered.
                exit_soon(shutdown.clone());
            }
            SupervisorMessage::Terminate => {
                end_session(
                    &journal,
                    &state,
                    Some(Kind::ClaudeExited(ClaudeExited {
                        exit_code: -15,
                        had_result: false,
                        request_in_flight: false,
                    })),
                    SessionOutcome::Interrupted,
                    "",
                )
                .await;
                exit_soon(shutdown.clone());
            }
            // Nothing else is simulated: the reply is dropped, which the service answers
            // as an agent shutting down (as a real agent does once its session is over).
            _ => {}
        }
    }
}

/// Ends the server shortly after, so the answer that ended the session goes out first.
fn exit_soon(shutdown: watch::Sender<bool>) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = shutdown.send(true);
    });
}

async fn beat(
    journal: Journal,
    heartbeats: broadcast::Sender<Heartbeat>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    state: Arc<SessionState>,
    started_ms: i64,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        let now = parhelia_agent::journal::now_ms();
        let status = if state.finished.load(Ordering::SeqCst) {
            SessionStatus::Finished
        } else {
            SessionStatus::Busy
        };
        // No subscriber is not an error: the coordinator may be away.
        let _ = heartbeats.send(Heartbeat {
            ts_ms: now,
            cpu_percent: 12.5,
            memory_bytes: 180 << 20,
            workspace_disk_bytes: 4 << 20,
            status: status as i32,
            last_seq: journal.last_seq(),
            uptime_ms: (now - started_ms).max(0) as u64,
            interval_ms: interval.as_millis() as u32,
        });
    }
}

async fn generate(
    journal: Journal,
    mix: EventMix,
    seed: u64,
    mut shutdown: watch::Receiver<bool>,
    finish: Arc<AtomicBool>,
    state: Arc<SessionState>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mean = if mix.events_per_second > 0.0 {
        Duration::from_secs_f64(1.0 / mix.events_per_second)
    } else {
        Duration::from_secs(3600)
    };
    let mut step = 0u64;
    loop {
        // ±50% around the mean, so thousands of agents do not journal in lockstep.
        let wait = mean.mul_f64(0.5 + rng.f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        if finish.load(Ordering::SeqCst) {
            end_session(
                &journal,
                &state,
                Some(Kind::ClaudeExited(ClaudeExited {
                    exit_code: 0,
                    had_result: true,
                    request_in_flight: false,
                })),
                SessionOutcome::Succeeded,
                "",
            )
            .await;
            return;
        }
        let _writing = state.ending.lock().await;
        if state.finished.load(Ordering::SeqCst) {
            return;
        }
        let (kind, cost) = mix_event(&mix, step, state.cost());
        state.cost_bits.store(cost.to_bits(), Ordering::SeqCst);
        if let Err(e) = journal.append_async(kind).await {
            eprintln!("sim agent journal: {e}");
            return;
        }
        step += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_moves_the_cost_only_with_metered_responses() {
        let mix = EventMix::default();
        let mut cost = 0.0;
        let mut kinds = Vec::new();
        for step in 0..2 * TURN_EVENTS {
            let (kind, after) = mix_event(&mix, step, cost);
            assert!(after >= cost);
            if after > cost {
                assert!(matches!(kind, Kind::ModelSpend(_)));
            }
            cost = after;
            kinds.push(parhelia_proto::event_type_name(&kind));
        }
        assert_eq!(kinds[..TURN_EVENTS as usize], kinds[TURN_EVENTS as usize..]);
        assert!((cost - 4.0 * RESPONSE_USD).abs() < 1e-12);
    }
}
