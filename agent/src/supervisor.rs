//! The supervisor: the one task that owns the session's state.
//!
//! The gRPC server, the hook listener, the stream follower, the heartbeat timer and the
//! signal handler only send it [`SupervisorMessage`]s; it alone decides, journals and
//! acts, so the journal's order is the order in which the supervisor saw things.
//!
//! Promises (headless mode; see `docs/dev/contracts.md`, "Agent lifecycle"):
//! - The journal starts with `SessionStarted`; a resume or rollback then records its
//!   safety checkpoint and `CheckpointRestored`; then `InputAccepted` for the spec's
//!   prompt (a resumed session without one waits for input, NEEDS_INPUT "waiting for input"; a headless SessionStart hook before any message does not make it BUSY).
//! - Checkpoints (see [`crate::checkpointer`]): at each turn's end (Stop hook, skipped
//!   when nothing changed), before risky tool calls (PreToolUse), periodically, on
//!   request, and a final one before `SessionFinished` whose trigger says why the
//!   session ended (`session_end`, `error`, `stop`, `sigterm`). Each is journaled as
//!   `CheckpointCreated` or `CheckpointFailed`.
//! - Every stream event is journaled in stream order. `ClaudeInit` is journaled when it
//!   differs from the previous one of the same process (Claude Code repeats it per turn).
//!   Every `TurnResult` carries `session_cost_usd`: the session's model cost so far
//!   ([`Supervisor::session_cost_usd`]), never lower than any earlier figure.
//! - Spend is metered per model response ([`crate::spend`]): the transcript and the
//!   subagent transcripts are polled (every [`SPEND_POLL_INTERVAL`], and before every
//!   `TurnResult` and the final `SessionFinished`), and each response's increment is
//!   journaled as `ModelSpend` at once — also in turns that never end, and in
//!   interactive mode. Responses that earlier agents of the session journaled are not
//!   charged again.
//! - After each `TurnResult` the next queued input is sent, or the input is closed so
//!   Claude Code exits. `SendInput` during a turn is queued (`queued: true`).
//! - A `StatusChanged` is journaled only when the status changes; statuses come from
//!   hooks, except the final FINISHED, which is also set (with an empty `hook_event`)
//!   when Claude Code exits without a `SessionEnd` hook.
//! - Claude Code's exit is journaled as `ClaudeExited`, then `SessionFinished` is always
//!   the last event. After it, the agent lingers for `linger_after_finish_ms` (or until
//!   `Stop`) and exits. `Stop` and SIGTERM exit as soon as `SessionFinished` is durable.
//! - Stop: `StopRequested`, input closed, SIGTERM to Claude Code, SIGKILL after the grace
//!   period; if even that is not reported within [`GIVE_UP_AFTER_KILL`], the tmux server
//!   is killed and the session finishes with exit code -1.
//!
//! Interactive mode (the TUI in the pane) differs only where it must: input is typed
//! into the TUI ([`crate::interactive_io`]) once its SessionStart hook has fired, events
//! come from following the transcript ([`crate::transcript`]), a message typed in an
//! attached terminal starts a turn (UserPromptSubmit), the TUI stays up between turns
//! until it exits or is stopped, and the cost is metered per response like headless
//! (Claude Code's own `cost-state` total, written as it exits, reconciles it). A client
//! leaving an `Attach` takes a `detach` checkpoint.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use parhelia_contract::codes;
use parhelia_proto::{
    AgentError, AgentInfo, CheckpointCreated, CheckpointFailed, CheckpointRestored, ClaudeExited,
    ClaudeInit, Heartbeat, InputAccepted, ModelSpend, SendInputResponse, SessionFinished,
    SessionOutcome, SessionStarted, SessionStatus, StatusChanged, StopRequested, StoreOverQuota,
    TurnResult, event,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checkpointer::{
    self, CheckpointDone, CheckpointFailure, CheckpointJob, CheckpointPaths, CheckpointReply,
    CheckpointSummary, SessionFacts,
};
use crate::claude::{self, LaunchError};
use crate::error::ServiceError;
use crate::headless_io::{self, StreamNews};
use crate::heartbeat::ResourceSample;
use crate::hooks::{self, HookDelivery};
use crate::journal::{Journal, JournalError, now_ms};
use crate::layout::Layout;
use crate::risky;
use crate::spec::LaunchSpec;
use crate::tmux::{TMUX_SESSION_NAME, TmuxError, TmuxServer};

/// After SIGKILL, how long to wait for the exit to be reported before giving up on it.
pub const GIVE_UP_AFTER_KILL: Duration = Duration::from_secs(5);

/// Subagents the supervisor follows at once (a session could start any number).
const MAX_OPEN_SUBAGENTS: usize = 1024;

/// The detail of the NEEDS_INPUT status of a session that has nothing to tell Claude Code.
pub const WAITING_FOR_INPUT: &str = "waiting for input";

/// Everything the supervisor is told.
#[derive(Debug)]
pub enum SupervisorMessage {
    GetInfo {
        reply: oneshot::Sender<AgentInfo>,
    },
    SendInput {
        text: String,
        reply: oneshot::Sender<Result<SendInputResponse, ServiceError>>,
    },
    /// The `Stop` RPC; `reply` is answered once `SessionFinished` is durable.
    Stop {
        reason: String,
        grace: Option<Duration>,
        /// A limit's code (E300, E301): the session fails with it, not cancelled.
        limit_code: Option<&'static str>,
        reply: oneshot::Sender<()>,
    },
    /// SIGTERM (or SIGINT) to the agent.
    Terminate,
    Hook(HookDelivery),
    Stream(StreamNews),
    Resources(ResourceSample),
    /// The `CreateCheckpoint` RPC.
    CreateCheckpoint {
        message: String,
        reply: CheckpointReply,
    },
    /// The periodic checkpoint timer fired.
    CheckpointTick,
    /// Time to read what the transcripts gained ([`SPEND_POLL_INTERVAL`]).
    SpendTick,
    /// The checkpointer finished a job.
    CheckpointDone(CheckpointDone),
    /// The `Attach` and `CaptureScreen` RPCs: how to reach the session's terminal.
    Terminal {
        reply: oneshot::Sender<TerminalGrant>,
    },
    /// An attached client left while the session was running (tmux's detach key, or
    /// it hung up): take a `detach` checkpoint.
    Detached,
}

/// What the server needs to attach to the session's terminal.
#[derive(Debug)]
pub struct TerminalGrant {
    pub tmux: TmuxServer,
    pub interactive: bool,
    /// Claude Code is running (not finished, not stopping).
    pub running: bool,
    pub session_id: String,
}

impl From<CheckpointDone> for SupervisorMessage {
    fn from(done: CheckpointDone) -> Self {
        SupervisorMessage::CheckpointDone(done)
    }
}

impl From<HookDelivery> for SupervisorMessage {
    fn from(delivery: HookDelivery) -> Self {
        SupervisorMessage::Hook(delivery)
    }
}

impl From<StreamNews> for SupervisorMessage {
    fn from(news: StreamNews) -> Self {
        SupervisorMessage::Stream(news)
    }
}

impl From<ResourceSample> for SupervisorMessage {
    fn from(sample: ResourceSample) -> Self {
        SupervisorMessage::Resources(sample)
    }
}

/// Why Claude Code could not be started. Each message reads after "failed to ".
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Tmux(#[from] TmuxError),
    #[error(transparent)]
    SessionUser(#[from] crate::session_user::SessionUserError),
    /// A file the launch needs could not be created.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why the session is being stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum StopIntent {
    /// The `Stop` RPC: the outcome is CANCELLED.
    Cancel { reason: String },
    /// SIGTERM to the agent: the outcome is INTERRUPTED (the session is resumable).
    Interrupt,
    /// No space left where the session writes (`what` says where): INTERRUPTED with
    /// E516, resumable once space is freed ([`crate::disk`]).
    DiskFull { what: String },
    /// The task's `--timeout` passed: FAILED with E301 (after a final checkpoint).
    Timeout { limit_ms: u64 },
    /// The coordinator stopped the session at one of the task's limits (the `Stop` RPC
    /// with a limit's code, e.g. the budget watchdog's E300): FAILED with that code.
    Limit { code: &'static str, reason: String },
}

/// The codes a `Stop` may end a session with instead of CANCELLED.
pub fn limit_code(code: &str) -> Option<&'static str> {
    [codes::BUDGET_EXCEEDED, codes::TASK_TIMEOUT]
        .into_iter()
        .find(|limit| limit.code == code.trim())
        .map(|limit| limit.code)
}

/// What the supervisor needs from the outside world.
pub struct SupervisorContext {
    pub spec: Arc<LaunchSpec>,
    pub layout: Layout,
    pub journal: Journal,
    pub tmux: TmuxServer,
    /// The path hooks run (`<agent_exe> hook --socket …`).
    pub agent_exe: PathBuf,
    /// What earlier Claude Code processes of this session cost ([`crate::cost`]).
    pub prior_cost_usd: f64,
    /// The responses earlier agents of this session charged (`ModelSpend`).
    pub prior_charges: Vec<(String, crate::spend::Tokens, f64)>,
    pub started_at: Instant,
    pub started_at_ms: i64,
    pub heartbeats: broadcast::Sender<Heartbeat>,
    pub tmux_server_pid: watch::Sender<Option<u32>>,
    /// The supervisor's own inbox, for the stream follower.
    pub inbox: mpsc::Sender<SupervisorMessage>,
    /// Jobs for the checkpointer task.
    pub checkpoint_jobs: mpsc::UnboundedSender<CheckpointJob>,
    /// The checkpoint store and paths, for the restore before Claude Code starts.
    pub checkpoint_store: Arc<parhelia_checkpoint::Store>,
    pub checkpoint_paths: Arc<CheckpointPaths>,
    pub change_tracker: Arc<crate::change_tracker::ChangeTracker>,
    /// The unprivileged user the session runs as (the agent stays root), if any.
    pub session_user: Option<crate::session_user::SessionUser>,
    /// Where the restore before Claude Code starts reports how far it has got
    /// (`WatchRestore`).
    pub restore_progress: watch::Sender<parhelia_proto::RestoreProgressUpdate>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Running,
    Finished,
}

pub struct Supervisor {
    context: SupervisorContext,
    phase: Phase,
    status: SessionStatus,
    claude_code_version: String,
    last_init: Option<ClaudeInit>,
    /// Messages waiting for the running turn to end: the `InputAccepted` seq and text.
    pending_inputs: VecDeque<(u64, String)>,
    input: Option<mpsc::UnboundedSender<String>>,
    turn_running: bool,
    /// The `InputAccepted` seq of the message the running turn answers (none for a
    /// message typed in an attached terminal).
    turn_input_seq: Option<u64>,
    /// The running turn reached Claude Code as a prompt: sent on headless stdin, or
    /// (interactive) its UserPromptSubmit hook fired. Text typed into the TUI that
    /// is no prompt (`/exit`) never starts a turn that could go unanswered.
    turn_submitted: bool,
    /// When the running turn reached Claude Code ([`Self::turn_submitted`]): a
    /// transcript not written since holds none of it (`on_claude_exited`).
    turn_submitted_at: Option<std::time::SystemTime>,
    last_result: Option<TurnResult>,
    /// What this Claude Code process's turns cost, summed turn by turn.
    process_spent_usd: f64,
    /// This process's last `total_cost_usd`, for Claude Codes that do not report turns.
    last_reported_total_usd: Option<f64>,
    stream_lines: u64,
    claude_pid: Option<i32>,
    stop: Option<StopIntent>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    kill_at: Option<Instant>,
    give_up_at: Option<Instant>,
    linger_until: Option<Instant>,
    /// When the task's `--timeout` runs out (from the agent's start).
    timeout_at: Option<Instant>,
    exit_now: bool,
    tasks: Vec<JoinHandle<()>>,
    writer_task: Option<JoinHandle<()>>,
    /// A periodic checkpoint is queued or running (ticks do not pile up).
    interval_checkpoint_in_flight: bool,
    /// The verdict waiting for the final checkpoint before `SessionFinished`.
    finishing: Option<Verdict>,
    /// Interactive mode: the TUI is ready for typed input (its SessionStart hook fired).
    prompt_ready: watch::Sender<bool>,
    /// Interactive mode: the transcript's last cost-state total before this process.
    baseline_reported_total_usd: f64,
    /// Claude Code's transcript for this session (set when it is launched).
    transcript: Option<PathBuf>,
    /// The latest assistant text, for an interactive turn's result.
    last_assistant_text: String,
    /// Subagents started (their Task call's tool_use id → subagent type) whose finish
    /// has not come yet; at most [`MAX_OPEN_SUBAGENTS`].
    open_subagents: std::collections::HashMap<String, String>,
    /// Per-response metering ([`crate::spend`]).
    meter: crate::spend::Meter,
    /// Follows the transcripts once Claude Code is started.
    spend_reader: Option<crate::spend::TranscriptReader>,
    /// Headless: where this run's stream-json begins in `stream.jsonl` (the file is
    /// appended to by every run of the session).
    stream_start: Option<u64>,
    /// The highest session cost ever reported: the figure never goes down.
    cost_high_water: std::cell::Cell<f64>,
}

/// How often the transcripts are read for spend: well under a heartbeat interval, so
/// a budget stop overshoots by at most about one response.
pub const SPEND_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The outcome of a session whose Claude Code process exited.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub outcome: SessionOutcome,
    pub error_code: &'static str,
    pub error_message: String,
}

/// Whether Claude Code may have died with a model request in flight: it printed
/// responses it never wrote (`stream_only`), its transcript (or its headless stream,
/// which it writes first) ends with a message that has no reply
/// (`transcript_awaits_reply`), or it was handed a turn and its
/// transcript was not written since (`unwritten_turn`: Claude Code writes its
/// transcript in batches, after it sends, so a SIGKILL can beat the write).
fn request_in_flight(
    stream_only: usize,
    transcript_awaits_reply: bool,
    unwritten_turn: bool,
) -> bool {
    stream_only > 0 || transcript_awaits_reply || unwritten_turn
}

/// What Claude Code was asked and never answered when it exited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Unanswered {
    /// A turn was started (its message sent) and no result for it arrived.
    pub turn_in_flight: bool,
    /// The `InputAccepted` seqs of the messages that got no result: the running
    /// turn's (when it came through the agent), then every queued one, in order.
    pub input_seqs: Vec<u64>,
}

impl Unanswered {
    pub fn is_empty(&self) -> bool {
        !self.turn_in_flight && self.input_seqs.is_empty()
    }

    /// `the running turn got no result; 2 messages were not answered (inputs #7, #9)`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.turn_in_flight {
            parts.push("the running turn got no result".to_string());
        }
        if !self.input_seqs.is_empty() {
            let n = self.input_seqs.len();
            let seqs: Vec<String> = self.input_seqs.iter().map(|s| format!("#{s}")).collect();
            parts.push(format!(
                "{n} message{} not answered (input{} {})",
                if n == 1 { " was" } else { "s were" },
                if n == 1 { "" } else { "s" },
                seqs.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// Decides the outcome from why we stopped (if we did), Claude Code's exit status, its
/// last `result` line, whether it wrote anything at all, and what it left unanswered.
/// The outcome is the last turn's: a turn (or a queued message) without its result is
/// never a success, whatever earlier turns returned. Mapping: `contracts.md`, "Error
/// codes".
pub fn verdict(
    stop: Option<&StopIntent>,
    exit_code: i32,
    last_result: Option<&TurnResult>,
    wrote_output: bool,
    unanswered: &Unanswered,
) -> Verdict {
    let failed = |code, message: String| Verdict {
        outcome: SessionOutcome::Failed,
        error_code: code,
        error_message: message,
    };
    match (stop, last_result) {
        (Some(StopIntent::Cancel { reason }), _) => Verdict {
            outcome: SessionOutcome::Cancelled,
            error_code: codes::SESSION_CANCELLED.code,
            error_message: if reason.is_empty() {
                "the session was stopped on request".into()
            } else {
                format!("the session was stopped on request: {reason}")
            },
        },
        (Some(StopIntent::DiskFull { what }), _) => Verdict {
            outcome: SessionOutcome::Interrupted,
            error_code: codes::DISK_FULL.code,
            error_message: format!(
                "no space left on the disk ({what}); free space, then resume the session"
            ),
        },
        (Some(StopIntent::Timeout { limit_ms }), _) => failed(
            codes::TASK_TIMEOUT.code,
            format!(
                "the task reached its time limit (--timeout {}); resume or retry it to go on",
                human_duration(*limit_ms)
            ),
        ),
        (Some(StopIntent::Limit { code, reason }), _) => failed(
            code,
            if reason.is_empty() {
                "the session was stopped at one of its limits".into()
            } else {
                format!("the session was stopped: {reason}")
            },
        ),
        (Some(StopIntent::Interrupt), _) => Verdict {
            outcome: SessionOutcome::Interrupted,
            error_code: codes::SESSION_INTERRUPTED.code,
            error_message: "the agent received SIGTERM; the session can be resumed".into(),
        },
        (None, None) if !wrote_output && (exit_code == 126 || exit_code == 127) => failed(
            codes::CLAUDE_CODE_NOT_INSTALLED.code,
            format!("claude code could not be started (exit status {exit_code})"),
        ),
        // The last turn was cut off: an earlier turn's result says nothing about it.
        (None, _) if !unanswered.is_empty() => Verdict {
            outcome: SessionOutcome::Interrupted,
            error_code: codes::SESSION_INTERRUPTED.code,
            error_message: format!(
                "claude code exited with status {exit_code} before answering: {}; the session can be resumed",
                unanswered.describe()
            ),
        },
        (None, Some(result)) if result.is_error || result.subtype.starts_with("error") => {
            let message = if result.result.is_empty() {
                format!("claude code finished with {}", result.subtype)
            } else {
                result.result.clone()
            };
            let code = match (result.subtype.as_str(), result.api_error_status) {
                ("error_max_budget_usd", _) => codes::BUDGET_EXCEEDED.code,
                (_, 401 | 403) => codes::MODEL_API_AUTH_REJECTED.code,
                (_, status) if status == 429 || status >= 500 => codes::MODEL_API_FAILED.code,
                _ => codes::CLAUDE_CODE_ERROR_RESULT.code,
            };
            failed(code, message)
        }
        (None, Some(_)) => Verdict {
            outcome: SessionOutcome::Succeeded,
            error_code: "",
            error_message: String::new(),
        },
        (None, None) => Verdict {
            outcome: SessionOutcome::Interrupted,
            error_code: codes::SESSION_INTERRUPTED.code,
            error_message: format!("claude code exited with status {exit_code} without a result"),
        },
    }
}

impl Supervisor {
    pub fn new(context: SupervisorContext) -> Supervisor {
        let mut meter = crate::spend::Meter::new(context.spec.model_prices.clone());
        for (id, tokens, cost) in &context.prior_charges {
            meter.remember(id, *tokens, *cost);
        }
        // Charged by the coordinator from a dead agent's transcripts: whole (their
        // lines add nothing), and counted in the metered total.
        let whole = crate::spend::Tokens {
            input: crate::spend::MAX_TOKENS,
            output: crate::spend::MAX_TOKENS,
            cache_write: crate::spend::MAX_TOKENS,
            cache_read: crate::spend::MAX_TOKENS,
        };
        for charged in &context.spec.charged_elsewhere {
            meter.remember(&charged.message_id, whole, charged.cost_usd);
        }
        let cost_high_water = std::cell::Cell::new(context.prior_cost_usd);
        Supervisor {
            context,
            phase: Phase::Running,
            status: SessionStatus::Starting,
            claude_code_version: String::new(),
            last_init: None,
            pending_inputs: VecDeque::new(),
            input: None,
            turn_running: false,
            turn_input_seq: None,
            turn_submitted: false,
            turn_submitted_at: None,
            last_result: None,
            process_spent_usd: 0.0,
            last_reported_total_usd: None,
            stream_lines: 0,
            claude_pid: None,
            stop: None,
            stop_waiters: Vec::new(),
            kill_at: None,
            give_up_at: None,
            linger_until: None,
            timeout_at: None,
            exit_now: false,
            tasks: Vec::new(),
            writer_task: None,
            interval_checkpoint_in_flight: false,
            finishing: None,
            prompt_ready: watch::channel(false).0,
            baseline_reported_total_usd: 0.0,
            transcript: None,
            last_assistant_text: String::new(),
            open_subagents: std::collections::HashMap::new(),
            meter,
            spend_reader: None,
            stream_start: None,
            cost_high_water,
        }
    }

    /// Runs the session to its end. An error means the journal failed: the session can
    /// no longer be recorded, so the agent stops.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<SupervisorMessage>,
    ) -> Result<(), JournalError> {
        let result = self.run_session(&mut inbox).await;
        self.clean_up().await;
        result
    }

    fn interactive(&self) -> bool {
        self.context.spec.mode == crate::spec::SessionMode::Interactive
    }

    async fn run_session(
        &mut self,
        inbox: &mut mpsc::Receiver<SupervisorMessage>,
    ) -> Result<(), JournalError> {
        let spec = self.context.spec.clone();
        self.journal(event::Kind::SessionStarted(SessionStarted {
            claude_session_id: spec.claude_session_id.clone(),
            mode: crate::spec::mode_to_proto(spec.mode) as i32,
            workspace_path: spec.workspace_dir.to_string_lossy().into_owned(),
            model: spec.model.clone().unwrap_or_default(),
            resumed: spec.resume,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }))
        .await?;
        if self.restore_before_launch().await? {
            self.launch().await?;
        }
        self.timeout_at = spec
            .timeout_ms
            .map(|ms| self.context.started_at + Duration::from_millis(ms));
        while !self.exit_now {
            let deadline = [
                self.kill_at,
                self.give_up_at,
                self.linger_until,
                self.timeout_at,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(message) => self.handle(message).await?,
                    None => break,
                },
                () = sleep_until(deadline) => self.on_deadline().await?,
            }
        }
        Ok(())
    }

    async fn journal(&self, kind: event::Kind) -> Result<u64, JournalError> {
        let event = self.context.journal.append_async(kind).await?;
        Ok(event.seq)
    }

    async fn launch(&mut self) -> Result<(), JournalError> {
        let spec = self.context.spec.clone();
        if let Some(reason) = claude::not_executable_reason(&spec.claude_bin) {
            return self
                .finish(Verdict {
                    outcome: SessionOutcome::Failed,
                    error_code: codes::CLAUDE_CODE_NOT_INSTALLED.code,
                    error_message: format!("claude code cannot be started: {reason}"),
                })
                .await;
        }
        if let Err(e) = self.seed_claude_config().await? {
            tracing::error!(error = %e, "failed to seed the claude code config dir");
            return self
                .finish(Verdict {
                    outcome: SessionOutcome::Failed,
                    error_code: codes::CLAUDE_CODE_NOT_INSTALLED.code,
                    error_message: format!("claude code cannot be started: {e}"),
                })
                .await;
        }
        if let Err(e) = self.start_claude().await {
            tracing::error!(error = %e, "failed to start claude code");
            self.context.tmux.kill_server().await.ok();
            return self
                .finish(Verdict {
                    outcome: SessionOutcome::Failed,
                    error_code: codes::CLAUDE_CODE_NOT_INSTALLED.code,
                    error_message: format!("claude code cannot be started: {e}"),
                })
                .await;
        }
        if spec.prompt.trim().is_empty() {
            // A resumed session without a message waits for input: it needs some.
            self.set_status(SessionStatus::NeedsInput, "", WAITING_FOR_INPUT.into())
                .await?;
        } else {
            let seq = self
                .journal(event::Kind::InputAccepted(InputAccepted {
                    text: spec.prompt.clone(),
                    queued: false,
                }))
                .await?;
            if self.turn_running {
                self.turn_input_seq = Some(seq);
            }
        }
        Ok(())
    }

    /// Copies the spec's `claude_config_seed` (the user's synced config) into the
    /// config dir, journaling what was skipped or missing as warnings (`AgentError`
    /// without a code). The outer error is the journal's; the inner one a config dir
    /// that could not be written.
    async fn seed_claude_config(&mut self) -> Result<Result<(), LaunchError>, JournalError> {
        let spec = self.context.spec.clone();
        let Some(seed) = &spec.claude_config_seed else {
            return Ok(Ok(()));
        };
        let protected = [self.context.layout.hooks_settings.as_path()];
        let warnings = match crate::config_seed::apply(seed, &spec.claude_config_dir, &protected) {
            Err(e) => return Ok(Err(e)),
            Ok(crate::config_seed::SeedOutcome::Missing { reason }) => vec![format!(
                "the claude config seed {} {reason}; claude code starts without the user's config",
                seed.display()
            )],
            Ok(crate::config_seed::SeedOutcome::Applied(report)) => {
                tracing::info!(
                    seed = %seed.display(),
                    files = report.files_copied,
                    mcp_servers = report.mcp_servers.len(),
                    "claude config seeded"
                );
                report.warnings
            }
        };
        for warning in warnings {
            tracing::warn!("{warning}");
            self.journal(event::Kind::AgentError(AgentError {
                code: String::new(),
                message: format!("warning: {warning}"),
            }))
            .await?;
        }
        Ok(Ok(()))
    }

    /// For a resume or a rollback (`restore_checkpoint` in the spec): a safety
    /// checkpoint of whatever the workspace holds now (so nothing is lost, and
    /// a rollback can be undone), then the restore. Returns whether Claude
    /// Code should start; a failed restore finishes the session instead.
    async fn restore_before_launch(&mut self) -> Result<bool, JournalError> {
        let Some(target) = self.context.spec.restore_checkpoint.clone() else {
            if !self.context.spec.resume {
                self.start_checkpoint().await?;
            }
            return Ok(true);
        };
        let store = Arc::clone(&self.context.checkpoint_store);
        let paths = Arc::clone(&self.context.checkpoint_paths);
        let tracker = Arc::clone(&self.context.change_tracker);
        let facts = self.session_facts();
        if checkpointer::workspace_has_content(&paths.workspace) {
            let (store, paths, facts) = (Arc::clone(&store), Arc::clone(&paths), facts.clone());
            let safety = tokio::task::spawn_blocking(move || {
                checkpointer::take_checkpoint(&store, &paths, None, "pre_restore", "", true, &facts)
            })
            .await
            .unwrap_or_else(|e| Err(panicked(e)));
            let failure = safety.as_ref().err().cloned();
            self.journal_checkpoint_result("pre_restore", "", &safety, None)
                .await?;
            if let Some(failure) = failure {
                // Never overwrite a workspace whose state could not be saved first. A
                // damaged or hostile store keeps its own code (the store, not the disk,
                // is what is wrong).
                let code = match failure.code {
                    codes::CHECKPOINT_CORRUPT
                    | codes::CHECKPOINT_UNSAFE
                    | codes::CHECKPOINT_BUSY
                    | codes::CHECKPOINT_QUOTA
                    | codes::CHECKPOINT_LIMIT => failure.code.code,
                    _ => codes::CHECKPOINT_IO_FAILED.code,
                };
                self.restore_ended(false, code);
                self.finish(Verdict {
                    outcome: SessionOutcome::Failed,
                    error_code: code,
                    error_message: format!(
                        "the workspace could not be checkpointed before the restore ({}); nothing was changed",
                        failure.message
                    ),
                })
                .await?;
                return Ok(false);
            }
        }
        let claude_session_id = self.context.spec.claude_session_id.clone();
        let progress = self.context.restore_progress.clone();
        let restored = tokio::task::spawn_blocking(move || {
            checkpointer::restore_checkpoint(
                &store,
                &paths,
                &target,
                &claude_session_id,
                &|id, p| {
                    progress.send_modify(|update| {
                        update.checkpoint_id = id.to_string();
                        update.files_done = p.files_done;
                        update.files_total = p.files_total;
                        update.bytes_done = p.bytes_done;
                        update.bytes_total = p.bytes_total;
                    });
                },
            )
        })
        .await
        .unwrap_or_else(|e| Err(panicked(e)));
        tracker.invalidate();
        match restored {
            Ok(summary) => {
                self.restore_ended(true, "");
                self.journal(event::Kind::CheckpointRestored(CheckpointRestored {
                    checkpoint_id: summary.checkpoint_id,
                    files: summary.files,
                    removed: summary.removed,
                }))
                .await?;
                Ok(true)
            }
            Err(failure) => {
                let code = match failure.code {
                    codes::CHECKPOINT_NOT_FOUND
                    | codes::CHECKPOINT_CORRUPT
                    | codes::CHECKPOINT_UNSAFE
                    | codes::CHECKPOINT_BUSY
                    | codes::CHECKPOINT_LIMIT => failure.code.code,
                    _ => codes::CHECKPOINT_IO_FAILED.code,
                };
                self.restore_ended(false, code);
                self.finish(Verdict {
                    outcome: SessionOutcome::Failed,
                    error_code: code,
                    error_message: format!("restoring the checkpoint failed: {}", failure.message),
                })
                .await?;
                Ok(false)
            }
        }
    }

    /// The restore ended (`WatchRestore`'s last message).
    fn restore_ended(&self, ok: bool, error_code: &str) {
        self.context.restore_progress.send_modify(|update| {
            update.finished = true;
            update.ok = ok;
            update.error_code = error_code.to_string();
        });
    }

    /// A new session's starting workspace, checkpointed before Claude Code starts (trigger
    /// `start`): a session lost before its first turn ends still has a checkpoint to resume
    /// from (a fresh conversation in that workspace). A failure is journaled, and the
    /// session goes on: it is no worse off than without the checkpoint.
    async fn start_checkpoint(&mut self) -> Result<(), JournalError> {
        let store = Arc::clone(&self.context.checkpoint_store);
        let paths = Arc::clone(&self.context.checkpoint_paths);
        let facts = self.session_facts();
        let tracker = Arc::clone(&self.context.change_tracker);
        // It takes the tracker's first hint (always Unknown: a full scan), so the next
        // checkpoint is told what changed since this one instead of rescanning (and,
        // with the workspace's files just copied, re-hashing) the whole tree. No other
        // checkpoint can run meanwhile: every job reaches the checkpointer through this
        // loop, which is here, and Claude Code has not started.
        let taken = tokio::task::spawn_blocking(move || {
            checkpointer::take_checkpoint(
                &store,
                &paths,
                Some(&tracker),
                "start",
                "",
                false,
                &facts,
            )
        })
        .await
        .unwrap_or_else(|e| Err(panicked(e)));
        self.journal_checkpoint_result("start", "", &taken, None)
            .await?;
        Ok(())
    }

    fn session_facts(&self) -> SessionFacts {
        let spec = &self.context.spec;
        SessionFacts {
            claude_session_id: spec.claude_session_id.clone(),
            model: self
                .last_init
                .as_ref()
                .map(|init| init.model.clone())
                .or_else(|| spec.model.clone())
                .unwrap_or_default(),
            session_cost_usd: self.session_cost_usd(),
            task_id: spec.task_id.clone(),
            container_id: spec.container_id.clone(),
            taken_by: None,
            reason: None,
        }
    }

    /// Queues a checkpoint job with the session's current facts.
    fn request_checkpoint(
        &mut self,
        trigger: &str,
        message: String,
        skip_if_unchanged: bool,
        reply: Option<CheckpointReply>,
        hook_ack: Option<oneshot::Sender<()>>,
        is_final: bool,
    ) -> bool {
        self.queue_checkpoint(
            trigger,
            message,
            skip_if_unchanged,
            reply,
            hook_ack,
            is_final,
            None,
        )
    }

    /// [`Self::request_checkpoint`], for a turn's end: the job first waits (bounded)
    /// until the transcript holds the whole turn ending in `turn_end_reply`.
    #[allow(clippy::too_many_arguments)]
    fn queue_checkpoint(
        &mut self,
        trigger: &str,
        message: String,
        skip_if_unchanged: bool,
        reply: Option<CheckpointReply>,
        hook_ack: Option<oneshot::Sender<()>>,
        is_final: bool,
        turn_end_reply: Option<String>,
    ) -> bool {
        let job = CheckpointJob {
            turn_end_reply,
            trigger: trigger.into(),
            message,
            skip_if_unchanged,
            facts: self.session_facts(),
            reply,
            hook_ack,
            is_final,
            queued_at: std::time::Instant::now(),
        };
        match self.context.checkpoint_jobs.send(job) {
            Ok(()) => true,
            Err(mpsc::error::SendError(job)) => {
                // The checkpointer is gone (shutting down): release any waiter.
                if let Some(ack) = job.hook_ack {
                    let _ = ack.send(());
                }
                false
            }
        }
    }

    async fn journal_checkpoint_result(
        &self,
        trigger: &str,
        message: &str,
        result: &Result<CheckpointSummary, CheckpointFailure>,
        hook_wait_ms: Option<u64>,
    ) -> Result<u64, JournalError> {
        match result {
            Ok(summary) => {
                let seq = self
                    .journal(event::Kind::CheckpointCreated(CheckpointCreated {
                        checkpoint_id: summary.checkpoint_id.clone(),
                        trigger: trigger.into(),
                        message: message.into(),
                        skipped: summary.skipped,
                        file_count: summary.file_count,
                        total_bytes: summary.total_bytes,
                        new_bytes: summary.new_bytes,
                        duration_ms: summary.duration_ms,
                        full_scan: summary.full_scan,
                        git_ms: summary.git_ms,
                        fsync_ms: summary.fsync_ms,
                        hook_wait_ms,
                        duration_us: Some(summary.duration_us),
                    }))
                    .await?;
                if let Some((store_bytes, quota_bytes)) = summary.over_quota {
                    self.journal(event::Kind::StoreOverQuota(StoreOverQuota {
                        checkpoint_id: summary.checkpoint_id.clone(),
                        store_bytes,
                        quota_bytes,
                        error_code: codes::CHECKPOINT_QUOTA.code.to_string(),
                    }))
                    .await?;
                }
                Ok(seq)
            }
            Err(failure) => {
                tracing::error!(trigger, code = failure.code.code, error = %failure.message, "checkpoint failed");
                self.journal(event::Kind::CheckpointFailed(CheckpointFailed {
                    trigger: trigger.into(),
                    error_code: failure.code.code.to_string(),
                    error_message: failure.message.clone(),
                }))
                .await
            }
        }
    }

    async fn on_checkpoint_done(&mut self, done: CheckpointDone) -> Result<(), JournalError> {
        if done.trigger == "interval" {
            self.interval_checkpoint_in_flight = false;
        }
        // A hook (Stop, PreToolUse) has waited since the job was queued: the turn's flush
        // wait, any job before it, and the checkpoint.
        let hook_wait_ms = done
            .hook_ack
            .is_some()
            .then(|| done.queued_at.elapsed().as_millis() as u64);
        let seq = self
            .journal_checkpoint_result(&done.trigger, &done.message, &done.result, hook_wait_ms)
            .await?;
        if let Err(failure) = &done.result
            && failure.code == codes::DISK_FULL
        {
            self.on_disk_full(format!("the checkpoint store: {}", failure.message))
                .await?;
        }
        if let Some(reply) = done.reply {
            let _ = reply.send(done.result.map(|summary| (summary, seq)));
        }
        if let Some(ack) = done.hook_ack {
            let _ = ack.send(());
        }
        if done.is_final
            && let Some(verdict) = self.finishing.take()
        {
            self.complete_finish(verdict).await?;
        }
        Ok(())
    }

    async fn start_claude(&mut self) -> Result<(), StartError> {
        let spec = self.context.spec.clone();
        let layout = self.context.layout.clone();
        // Read when Claude Code exits: was a model request in flight?
        self.transcript = Some(
            crate::conversation::project_dir(&spec.claude_config_dir, &spec.workspace_dir)
                .join(format!("{}.jsonl", spec.claude_session_id)),
        );
        let io = |action: &'static str, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| StartError::Io {
                action,
                path,
                source,
            }
        };

        let api_key = std::env::var("ANTHROPIC_API_KEY").ok();
        claude::prepare_config_dir(
            &spec.claude_config_dir,
            &spec.workspace_dir,
            api_key.as_deref(),
        )?;
        let hook_command = hooks::hook_command(&self.context.agent_exe, &layout.hook_socket);
        let settings = serde_json::to_vec_pretty(&hooks::settings_json(&hook_command))
            .expect("settings always serialize");
        claude::write_atomically(&layout.hooks_settings, &settings)
            .map_err(io("write", &layout.hooks_settings))?;
        // From the transcript's start: a restored transcript's responses that earlier
        // agents charged are remembered by the meter; any others (made after the last
        // journaled event) are charged now.
        self.spend_reader = Some(crate::spend::TranscriptReader::new(
            &crate::conversation::project_dir(&spec.claude_config_dir, &spec.workspace_dir),
            &spec.claude_session_id,
        ));
        if self.interactive() {
            return self.start_interactive_claude().await;
        }
        let plugin_dirs = crate::config_seed::plugin_dirs(&spec.claude_config_dir);
        let arguments = claude::headless_arguments(&spec, &layout.hooks_settings, &plugin_dirs);
        let script = claude::launcher_script(&spec, &layout, &arguments);
        claude::write_atomically(&layout.launcher_script, script.as_bytes())
            .map_err(io("write", &layout.launcher_script))?;

        for stale in [&layout.input_fifo, &layout.exit_status, &layout.claude_pid] {
            match std::fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove", stale)(e));
                }
                _ => {}
            }
        }
        nix::unistd::mkfifo(
            &layout.input_fifo,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("create the FIFO", &layout.input_fifo)(e.into()))?;
        let start_offset = std::fs::metadata(&layout.stream)
            .map(|m| m.len())
            .unwrap_or(0);
        self.stream_start = Some(start_offset);

        // The prompt is queued before Claude Code exists; the writer delivers it as soon
        // as Claude Code opens its stdin.
        let (input, lines) = mpsc::unbounded_channel();
        let has_prompt = !spec.prompt.trim().is_empty();
        if has_prompt {
            input
                .send(claude::user_message_line(&spec.prompt))
                .expect("the receiver is alive");
        }
        let shell_command = format!(
            "exec /bin/sh {}",
            claude::shell_quote(&layout.launcher_script.to_string_lossy())
        );
        // Restores and the config seed wrote as root: the session gets what it writes.
        if let Some(user) = &self.context.session_user {
            user.hand_over(&spec, &layout)?;
        }
        let launcher_pid = self
            .context
            .tmux
            .new_session(TMUX_SESSION_NAME, &spec.workspace_dir, &shell_command)
            .await?;
        tracing::info!(launcher_pid, socket = %self.context.tmux.socket().display(), "claude code launched in tmux");

        self.writer_task = Some(tokio::spawn(headless_io::run_input_writer(
            layout.input_fifo.clone(),
            lines,
        )));
        self.input = Some(input);
        self.turn_running = has_prompt;
        self.turn_submitted = has_prompt;
        self.turn_submitted_at = has_prompt.then(std::time::SystemTime::now);
        self.tasks.push(tokio::spawn(headless_io::follow_stream(
            layout.stream.clone(),
            start_offset,
            layout.exit_status.clone(),
            launcher_pid,
            self.context.inbox.clone(),
        )));
        match self.context.tmux.server_pid().await {
            Ok(pid) => {
                self.context.tmux_server_pid.send_replace(Some(pid));
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to learn the tmux server pid; heartbeats will not cover it")
            }
        }
        Ok(())
    }

    /// Interactive mode: the TUI in the tmux pane; input is typed into it once it is
    /// ready, and events come from following its transcript.
    async fn start_interactive_claude(&mut self) -> Result<(), StartError> {
        let spec = self.context.spec.clone();
        let layout = self.context.layout.clone();
        let io = |action: &'static str, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| StartError::Io {
                action,
                path,
                source,
            }
        };
        let plugin_dirs = crate::config_seed::plugin_dirs(&spec.claude_config_dir);
        let arguments = claude::interactive_arguments(&spec, &layout.hooks_settings, &plugin_dirs);
        let script = claude::launcher_script(&spec, &layout, &arguments);
        claude::write_atomically(&layout.launcher_script, script.as_bytes())
            .map_err(io("write", &layout.launcher_script))?;
        for stale in [&layout.exit_status, &layout.claude_pid] {
            match std::fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove", stale)(e));
                }
                _ => {}
            }
        }
        let transcript =
            crate::conversation::project_dir(&spec.claude_config_dir, &spec.workspace_dir)
                .join(format!("{}.jsonl", spec.claude_session_id));
        let start_offset = std::fs::metadata(&transcript).map(|m| m.len()).unwrap_or(0);
        self.baseline_reported_total_usd = crate::transcript::last_reported_total_usd(&transcript);
        self.transcript = Some(transcript.clone());

        let (input, texts) = mpsc::unbounded_channel();
        let has_prompt = !spec.prompt.trim().is_empty();
        if has_prompt {
            input
                .send(spec.prompt.clone())
                .expect("the receiver is alive");
        }
        let shell_command = format!(
            "exec /bin/sh {}",
            claude::shell_quote(&layout.launcher_script.to_string_lossy())
        );
        // Restores and the config seed wrote as root: the session gets what it writes.
        if let Some(user) = &self.context.session_user {
            user.hand_over(&spec, &layout)?;
        }
        let launcher_pid = self
            .context
            .tmux
            .new_session(TMUX_SESSION_NAME, &spec.workspace_dir, &shell_command)
            .await?;
        tracing::info!(launcher_pid, socket = %self.context.tmux.socket().display(), "claude code launched interactively in tmux");
        self.writer_task = Some(tokio::spawn(crate::interactive_io::run_prompt_typist(
            self.context.tmux.clone(),
            layout.runtime_dir.join("input-buffer.txt"),
            self.prompt_ready.subscribe(),
            texts,
        )));
        self.input = Some(input);
        self.turn_running = has_prompt;
        self.tasks.push(tokio::spawn(headless_io::follow_lines(
            transcript,
            start_offset,
            layout.exit_status.clone(),
            launcher_pid,
            self.context.inbox.clone(),
            crate::transcript::parse_line,
        )));
        match self.context.tmux.server_pid().await {
            Ok(pid) => {
                self.context.tmux_server_pid.send_replace(Some(pid));
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to learn the tmux server pid; heartbeats will not cover it")
            }
        }
        Ok(())
    }

    async fn handle(&mut self, message: SupervisorMessage) -> Result<(), JournalError> {
        match message {
            SupervisorMessage::GetInfo { reply } => {
                let _ = reply.send(self.info());
            }
            SupervisorMessage::SendInput { text, reply } => {
                let response = self.accept_input(text).await?;
                let _ = reply.send(response);
            }
            SupervisorMessage::Stop {
                reason,
                grace,
                limit_code,
                reply,
            } => {
                if self.phase == Phase::Finished {
                    let _ = reply.send(());
                    self.exit_now = true;
                } else {
                    self.stop_waiters.push(reply);
                    if self.stop.is_none() {
                        let grace = grace.unwrap_or_else(|| self.context.spec.stop_grace());
                        let intent = match limit_code {
                            Some(code) => StopIntent::Limit { code, reason },
                            None => StopIntent::Cancel { reason },
                        };
                        self.begin_stop(intent, grace).await?;
                    }
                }
            }
            SupervisorMessage::Terminate => {
                if self.phase == Phase::Finished {
                    self.exit_now = true;
                } else if self.stop.is_none() {
                    let grace = self.context.spec.stop_grace();
                    self.begin_stop(StopIntent::Interrupt, grace).await?;
                }
            }
            SupervisorMessage::Terminal { reply } => {
                let _ = reply.send(TerminalGrant {
                    tmux: self.context.tmux.clone(),
                    interactive: self.interactive(),
                    running: self.phase == Phase::Running
                        && self.stop.is_none()
                        && self.finishing.is_none(),
                    session_id: self.context.spec.session_id.clone(),
                });
            }
            SupervisorMessage::Detached => {
                if self.phase == Phase::Running && self.stop.is_none() && self.finishing.is_none() {
                    self.request_checkpoint("detach", String::new(), true, None, None, false);
                }
            }
            SupervisorMessage::Hook(delivery) => {
                let report = &delivery.report;
                tracing::info!("hook {}", one_line(&report.hook_event_name, 40));
                if self.interactive() {
                    match report.hook_event_name.as_str() {
                        "SessionStart" => {
                            self.prompt_ready.send_replace(true);
                        }
                        // A message typed in an attached terminal starts a turn too.
                        "UserPromptSubmit" => {
                            if !self.turn_running {
                                self.turn_running = true;
                                self.turn_input_seq = None;
                            }
                            if !self.turn_submitted {
                                self.turn_submitted = true;
                                self.turn_submitted_at = Some(std::time::SystemTime::now());
                            }
                        }
                        _ => {}
                    }
                }
                // Claude Code fires SessionStart as it starts, also when it has no
                // message yet: that is no turn, and the session still waits for input.
                let idle_start = report.hook_event_name == "SessionStart" && !self.turn_running;
                if let Some((status, detail)) = hooks::status_for_hook(report)
                    && self.phase != Phase::Finished
                    && !idle_start
                {
                    self.set_status(status, &report.hook_event_name, detail)
                        .await?;
                }
                // The hook waits for its acknowledgement: at a turn's end and
                // before a risky command, it waits for the checkpoint too.
                let checkpoint = match report.hook_event_name.as_str() {
                    _ if self.phase == Phase::Finished || self.stop.is_some() => None,
                    "Stop" => Some(("turn_end", String::new())),
                    "PreToolUse" => {
                        let tool = report.tool_name.as_deref().unwrap_or("");
                        let command = report
                            .tool_input
                            .as_ref()
                            .and_then(|i| i.command.as_deref());
                        risky::risky_reason(tool, command).map(|reason| {
                            let command = command.unwrap_or("");
                            (
                                "pre_tool",
                                format!("before {reason}: {}", one_line(command, 120)),
                            )
                        })
                    }
                    _ => None,
                };
                match checkpoint {
                    Some((trigger, message)) => {
                        let turn_end_reply = (trigger == "turn_end")
                            .then(|| report.last_assistant_message.clone().unwrap_or_default());
                        self.queue_checkpoint(
                            trigger,
                            message,
                            true,
                            None,
                            Some(delivery.handled),
                            false,
                            turn_end_reply,
                        );
                    }
                    None => {
                        let _ = delivery.handled.send(());
                    }
                }
            }
            SupervisorMessage::CreateCheckpoint { message, reply } => {
                if self.phase == Phase::Finished {
                    let _ = reply.send(Err(CheckpointFailure {
                        code: codes::SESSION_INTERRUPTED,
                        message: "the session has finished; its final checkpoint is the latest"
                            .into(),
                    }));
                } else {
                    self.request_checkpoint("manual", message, false, Some(reply), None, false);
                }
            }
            SupervisorMessage::CheckpointTick => {
                if self.phase == Phase::Running
                    && self.stop.is_none()
                    && !self.interval_checkpoint_in_flight
                {
                    self.interval_checkpoint_in_flight =
                        self.request_checkpoint("interval", String::new(), true, None, None, false);
                }
            }
            SupervisorMessage::CheckpointDone(done) => {
                self.on_checkpoint_done(done).await?;
            }
            SupervisorMessage::SpendTick => {
                self.meter_spend().await?;
            }
            SupervisorMessage::Stream(StreamNews::Line(line)) => {
                self.stream_lines += 1;
                if line
                    .kinds
                    .iter()
                    .any(|k| matches!(k, event::Kind::TurnResult(_)))
                {
                    // The turn's responses are charged before its result.
                    self.meter_spend().await?;
                }
                for kind in line.kinds {
                    self.record_stream_event(kind, line.turn_cost_usd).await?;
                }
                if let Some(total) = line.reported_total_usd {
                    // Interactive: Claude Code's session total, written as it exits;
                    // what this process added is its growth over the transcript's
                    // earlier total.
                    self.process_spent_usd = (total - self.baseline_reported_total_usd).max(0.0);
                    self.last_reported_total_usd = Some(total);
                    self.session_cost_usd();
                }
            }
            SupervisorMessage::Stream(StreamNews::ClaudeExited { exit_code }) => {
                self.on_claude_exited(exit_code).await?;
            }
            SupervisorMessage::Resources(sample) => {
                let spec = &self.context.spec;
                let heartbeat = Heartbeat {
                    ts_ms: now_ms(),
                    cpu_percent: sample.cpu_percent,
                    memory_bytes: sample.memory_bytes,
                    workspace_disk_bytes: sample.workspace_disk_bytes,
                    status: self.status as i32,
                    last_seq: self.context.journal.last_seq(),
                    uptime_ms: self.context.started_at.elapsed().as_millis() as u64,
                    interval_ms: spec.heartbeat_interval_ms.min(u32::MAX as u64) as u32,
                };
                // No subscribers is fine: heartbeats are observations, not journaled.
                let _ = self.context.heartbeats.send(heartbeat);
                // A full disk is noticed within one heartbeat, journaled or not.
                let full = if *self.context.journal.no_space().borrow() {
                    Some("the journal's volume".to_string())
                } else {
                    let spec = &self.context.spec;
                    crate::disk::low_space(
                        &[spec.workspace_dir.as_path(), spec.volume_dir.as_path()],
                        crate::disk::MIN_FREE_BYTES,
                    )
                    .map(|(path, free)| format!("{} has {free} bytes free", path.display()))
                };
                if let Some(what) = full {
                    self.on_disk_full(what).await?;
                }
            }
        }
        Ok(())
    }

    fn info(&self) -> AgentInfo {
        let spec = &self.context.spec;
        AgentInfo {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            session_id: spec.session_id.clone(),
            container_id: spec.container_id.clone(),
            task_id: spec.task_id.clone(),
            claude_session_id: spec.claude_session_id.clone(),
            mode: crate::spec::mode_to_proto(spec.mode) as i32,
            status: self.status as i32,
            started_at_ms: self.context.started_at_ms,
            last_seq: self.context.journal.last_seq(),
            workspace_path: spec.workspace_dir.to_string_lossy().into_owned(),
            claude_code_version: self.claude_code_version.clone(),
            pid: std::process::id(),
        }
    }

    async fn accept_input(
        &mut self,
        text: String,
    ) -> Result<Result<SendInputResponse, ServiceError>, JournalError> {
        if text.trim().is_empty() {
            return Ok(Err(ServiceError::InvalidArgument(
                "the input text is empty".into(),
            )));
        }
        let refusal = if self.phase == Phase::Finished {
            Some("the session has finished")
        } else if self.stop.is_some() {
            Some("the session is stopping")
        } else if self.input.is_none() {
            Some("claude code's input is closed; the session is finishing")
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Ok(Err(ServiceError::FailedPrecondition(refusal.into())));
        }
        // Headless Claude Code takes a new message only between turns, and between turns
        // the agent immediately sends the queue or closes the input, so input that
        // arrives while the process is alive always waits for the current turn.
        let queued = self.turn_running;
        let seq = self
            .journal(event::Kind::InputAccepted(InputAccepted {
                text: text.clone(),
                queued,
            }))
            .await?;
        if queued {
            self.pending_inputs.push_back((seq, text));
        } else {
            self.send_to_claude(seq, &text);
        }
        Ok(Ok(SendInputResponse { queued, seq }))
    }

    fn send_to_claude(&mut self, seq: u64, text: &str) {
        let line = if self.interactive() {
            text.to_string()
        } else {
            claude::user_message_line(text)
        };
        let interactive = self.interactive();
        if let Some(input) = &self.input {
            let _ = input.send(line);
            self.turn_running = true;
            self.turn_input_seq = Some(seq);
            // Interactive: a prompt once its UserPromptSubmit hook says so.
            self.turn_submitted = !interactive;
            self.turn_submitted_at = (!interactive).then(std::time::SystemTime::now);
        }
    }

    /// What Claude Code has been asked and not answered: the running turn and the queue.
    fn unanswered(&self) -> Unanswered {
        let turn_in_flight = self.turn_running && self.turn_submitted;
        let mut input_seqs: Vec<u64> = Vec::new();
        if turn_in_flight {
            input_seqs.extend(self.turn_input_seq);
        }
        input_seqs.extend(self.pending_inputs.iter().map(|(seq, _)| *seq));
        Unanswered {
            turn_in_flight,
            input_seqs,
        }
    }

    async fn record_stream_event(
        &mut self,
        kind: event::Kind,
        turn_cost_usd: Option<f64>,
    ) -> Result<(), JournalError> {
        match kind {
            event::Kind::ClaudeInit(init) => {
                if self.last_init.as_ref() == Some(&init) {
                    return Ok(());
                }
                self.claude_code_version = init.claude_code_version.clone();
                self.last_init = Some(init.clone());
                self.journal(event::Kind::ClaudeInit(init)).await?;
            }
            event::Kind::TurnResult(mut result) => {
                if self.interactive() && result.result.is_empty() {
                    result.result = std::mem::take(&mut self.last_assistant_text);
                    result.claude_total_cost_usd = self.last_reported_total_usd.unwrap_or(0.0);
                }
                // `total_cost_usd` is cumulative for the whole session as Claude Code
                // remembers it (restored from the transcript on --resume), so the agent
                // adds up turns instead; a Claude Code that does not report per-turn cost
                // falls back to the growth of its total within this process.
                let turn_cost = turn_cost_usd.unwrap_or_else(|| {
                    (result.claude_total_cost_usd - self.last_reported_total_usd.unwrap_or(0.0))
                        .max(0.0)
                });
                self.last_reported_total_usd = Some(result.claude_total_cost_usd);
                self.process_spent_usd += turn_cost;
                result.session_cost_usd = self.session_cost_usd();
                self.last_result = Some(result.clone());
                self.journal(event::Kind::TurnResult(result)).await?;
                self.turn_running = false;
                self.turn_input_seq = None;
                self.turn_submitted = false;
                self.turn_submitted_at = None;
                if self.stop.is_none() {
                    match self.pending_inputs.pop_front() {
                        Some((seq, next)) => self.send_to_claude(seq, &next),
                        // The TUI stays up, idle, until it is told to exit.
                        None if self.interactive() => {}
                        // Nothing more to say: closing stdin lets Claude Code exit.
                        None => self.input = None,
                    }
                }
            }
            event::Kind::SubagentStarted(started) => {
                if self.open_subagents.len() < MAX_OPEN_SUBAGENTS {
                    self.open_subagents
                        .insert(started.tool_use_id.clone(), started.subagent_type.clone());
                }
                self.journal(event::Kind::SubagentStarted(started)).await?;
            }
            event::Kind::SubagentFinished(mut finished) => {
                // Claude Code may notify more than once (a subagent sent another
                // message); one finish per start, and none for other background tasks.
                if let Some(kind) = self.open_subagents.remove(&finished.tool_use_id) {
                    finished.subagent_type = kind;
                    self.journal(event::Kind::SubagentFinished(finished))
                        .await?;
                }
            }
            other => {
                // A subagent's text is its own, never the main agent's reply.
                if let event::Kind::AssistantText(text) = &other
                    && text.parent_tool_use_id.is_empty()
                {
                    self.last_assistant_text = text.text.clone();
                }
                self.journal(other).await?;
            }
        }
        Ok(())
    }

    /// The session's model cost so far: the largest of what earlier agents recorded plus
    /// this process's turn costs, the metered total of every response charged (earlier
    /// agents' included), and Claude Code's latest session-cumulative `total_cost_usd`
    /// (which reconciles responses the price table cannot price). Never lower than any
    /// figure it gave before.
    fn session_cost_usd(&self) -> f64 {
        let now = (self.context.prior_cost_usd + self.process_spent_usd)
            .max(self.meter.metered_usd())
            .max(self.last_reported_total_usd.unwrap_or(0.0))
            .max(self.cost_high_water.get());
        let now = crate::spend::clamp_cost(now);
        self.cost_high_water.set(now);
        now
    }

    /// Reads what the transcripts gained and journals a `ModelSpend` per response that
    /// added tokens.
    async fn meter_spend(&mut self) -> Result<(), JournalError> {
        if self.phase == Phase::Finished {
            return Ok(());
        }
        let Some(reader) = self.spend_reader.as_mut() else {
            return Ok(());
        };
        for observation in reader.poll() {
            if let Some(charge) = self.meter.observe(&observation) {
                self.journal_charge(charge).await?;
            }
        }
        Ok(())
    }

    async fn journal_charge(&mut self, charge: crate::spend::Charge) -> Result<(), JournalError> {
        let session_cost_usd = self.session_cost_usd();
        self.journal(event::Kind::ModelSpend(ModelSpend {
            model: charge.model,
            message_id: charge.message_id,
            subagent: charge.subagent,
            usage: Some(charge.tokens.to_usage()),
            cost_usd: charge.cost_usd,
            session_cost_usd,
            priced: charge.priced,
        }))
        .await?;
        Ok(())
    }

    /// Headless, once Claude Code is gone and its transcript metered: charges the
    /// responses its stdout showed that its transcript never got (killed between
    /// printing a response and writing it), at the usage the stream shows, which is a
    /// lower bound ([`crate::spend::stream_observations`]). Returns how many there were:
    /// their full spend is unknown, and the exit says so.
    async fn charge_stream_only_responses(&mut self) -> Result<usize, JournalError> {
        let Some(start) = self.stream_start else {
            return Ok(0);
        };
        let mut stream_only = 0;
        for observation in crate::spend::stream_observations(&self.context.layout.stream, start) {
            if self.meter.knows(&observation.message_id) {
                continue;
            }
            stream_only += 1;
            if let Some(charge) = self.meter.observe(&observation) {
                self.journal_charge(charge).await?;
            }
        }
        Ok(stream_only)
    }

    async fn set_status(
        &mut self,
        status: SessionStatus,
        hook_event: &str,
        detail: String,
    ) -> Result<(), JournalError> {
        if self.status == status {
            return Ok(());
        }
        self.status = status;
        self.journal(event::Kind::StatusChanged(StatusChanged {
            status: status as i32,
            hook_event: hook_event.into(),
            detail,
        }))
        .await?;
        Ok(())
    }

    /// Claude Code's pid, from the pid file its launcher wrote. The file is written by
    /// the session (inside the sandbox, in its own PID namespace): read at most 32 bytes,
    /// never through a link, and translated to a host pid that must be inside the sandbox.
    fn claude_pid(&mut self) -> Option<i32> {
        if self.claude_pid.is_none() {
            let reported = crate::claude::read_small_file(&self.context.layout.claude_pid, 32)
                .and_then(|text| text.trim().parse::<u32>().ok())
                .filter(|pid| *pid > 0);
            self.claude_pid = reported
                .and_then(|pid| self.context.tmux.host_pid(pid))
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|pid| *pid > 1);
        }
        self.claude_pid
    }

    /// Waits up to 3 s for Claude Code's process to end once its launcher has, then
    /// kills it. Only a pid whose command line still names Claude Code is waited for
    /// or signalled (a pid can be reused).
    async fn wait_for_claude_to_end(&mut self) {
        let Some(pid) = self.claude_pid() else {
            return;
        };
        let is_claude = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.windows(6).any(|w| w == b"claude")
                    && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        stat.rsplit(')')
                            .next()
                            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
                    })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while is_claude(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if is_claude(pid) {
            tracing::warn!(pid, "claude code outlived its launcher; killing it");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    fn signal_claude(&mut self, signal: Signal) -> bool {
        let Some(pid) = self.claude_pid() else {
            return false;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => true,
            // Already gone: its exit is on its way from the follower.
            Err(nix::errno::Errno::ESRCH) => true,
            Err(e) => {
                tracing::warn!(pid, ?signal, error = %e, "failed to signal claude code");
                false
            }
        }
    }

    /// The disk is full: stop the session (once) as interrupted with E516. Nothing
    /// already written is touched; the journal's reserve pays for the final events.
    async fn on_disk_full(&mut self, what: String) -> Result<(), JournalError> {
        if self.stop.is_some() || self.phase == Phase::Finished {
            return Ok(());
        }
        tracing::error!(%what, "no space left: stopping the session");
        let grace = Duration::from_millis(self.context.spec.stop_grace_ms);
        self.begin_stop(StopIntent::DiskFull { what }, grace).await
    }

    async fn begin_stop(
        &mut self,
        intent: StopIntent,
        grace: Duration,
    ) -> Result<(), JournalError> {
        let reason = match &intent {
            StopIntent::Cancel { reason } | StopIntent::Limit { reason, .. } => reason.clone(),
            StopIntent::Interrupt => "SIGTERM".into(),
            StopIntent::DiskFull { what } => format!("disk full: {what}"),
            StopIntent::Timeout { limit_ms } => {
                format!(
                    "time limit reached (--timeout {})",
                    human_duration(*limit_ms)
                )
            }
        };
        tracing::info!(%reason, grace_ms = grace.as_millis() as u64, "stopping claude code");
        self.journal(event::Kind::StopRequested(StopRequested { reason }))
            .await?;
        self.stop = Some(intent);
        // The queue is never sent now (a turn's end sends it only without a stop);
        // it stays, so `SessionFinished` says which messages went unanswered.
        self.input = None;
        // A prompt not yet delivered must not start a turn now.
        if let Some(writer) = self.writer_task.take() {
            writer.abort();
        }
        if !self.signal_claude(Signal::SIGTERM) {
            // Claude Code has not exec'd yet: ending the tmux server ends its launcher.
            self.context.tmux.kill_server().await.ok();
        }
        self.kill_at = Some(Instant::now() + grace);
        Ok(())
    }

    async fn on_deadline(&mut self) -> Result<(), JournalError> {
        let now = Instant::now();
        if self.timeout_at.is_some_and(|at| at <= now) {
            self.timeout_at = None;
            if self.stop.is_none() && self.phase != Phase::Finished {
                let limit_ms = self.context.spec.timeout_ms.unwrap_or_default();
                tracing::warn!(limit_ms, "the task's time limit is reached; stopping");
                let grace = Duration::from_millis(self.context.spec.stop_grace_ms);
                self.begin_stop(StopIntent::Timeout { limit_ms }, grace)
                    .await?;
            }
        }
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            tracing::warn!("claude code outlived the stop grace period; killing it");
            if !self.signal_claude(Signal::SIGKILL) {
                self.context.tmux.kill_server().await.ok();
            }
            self.give_up_at = Some(now + GIVE_UP_AFTER_KILL);
        }
        if self.give_up_at.is_some_and(|at| at <= now) {
            self.give_up_at = None;
            tracing::error!("claude code's exit was never reported; ending its tmux server");
            self.context.tmux.kill_server().await.ok();
            self.on_claude_exited(-1).await?;
        }
        if self.linger_until.is_some_and(|at| at <= now) {
            self.linger_until = None;
            self.exit_now = true;
        }
        Ok(())
    }

    async fn on_claude_exited(&mut self, exit_code: i32) -> Result<(), JournalError> {
        if self.phase == Phase::Finished {
            return Ok(());
        }
        tracing::info!(exit_code, "claude code exited");
        // Its launcher can end before Claude Code does (the tmux server killed): it
        // may still write its transcript for a moment. Wait for it (bounded), so the
        // last meter and the in-flight check read the transcript it leaves.
        self.wait_for_claude_to_end().await;
        // What its transcript holds first (final usage), then what only its stdout showed.
        self.meter_spend().await?;
        let stream_only = self.charge_stream_only_responses().await?;
        self.input = None;
        if let Some(writer) = self.writer_task.take() {
            writer.abort();
        }
        self.kill_at = None;
        self.give_up_at = None;
        let unanswered = self.unanswered();
        self.journal(event::Kind::ClaudeExited(ClaudeExited {
            exit_code,
            // The last turn's result, not any earlier one.
            had_result: self.last_result.is_some() && !unanswered.turn_in_flight,
            // A request Claude Code sent and never wrote a reply for, or a reply it
            // printed and never wrote: its spend, or part of it, is unknown here (the
            // view says so).
            request_in_flight: request_in_flight(
                stream_only,
                self.transcript
                    .as_deref()
                    .is_some_and(crate::transcript::request_in_flight)
                    // A tool's result it printed (and sent) but had not yet written.
                    || self.stream_start.is_some_and(|start| {
                        crate::spend::stream_awaits_reply(&self.context.layout.stream, start)
                    }),
                // (Only once Claude Code was up: one that never started sent nothing.)
                unanswered.turn_in_flight
                    && (self.last_init.is_some() || *self.prompt_ready.borrow())
                    && self.turn_submitted_at.is_some_and(|at| {
                        !self
                            .transcript
                            .as_deref()
                            .is_some_and(|t| crate::transcript::written_since(t, at))
                    }),
            ),
        }))
        .await?;
        let mut verdict = verdict(
            self.stop.as_ref(),
            exit_code,
            self.last_result.as_ref(),
            self.stream_lines > 0,
            &unanswered,
        );
        // A TUI the user quit cleanly before any turn was asked for has nothing to report.
        if self.interactive()
            && self.stop.is_none()
            && self.last_result.is_none()
            && unanswered.is_empty()
            && exit_code == 0
        {
            verdict = Verdict {
                outcome: SessionOutcome::Succeeded,
                error_code: "",
                error_message: String::new(),
            };
        }
        if verdict.error_code == codes::CLAUDE_CODE_NOT_INSTALLED.code
            && let Some(tail) = stderr_tail(&self.context.layout.stderr)
        {
            verdict.error_message = format!("{}: {tail}", verdict.error_message);
        }
        self.finish(verdict).await
    }

    /// Ends the session: the final checkpoint (its trigger says why the
    /// session ended), then `SessionFinished` once it is journaled.
    async fn finish(&mut self, verdict: Verdict) -> Result<(), JournalError> {
        if self.finishing.is_some() || self.phase == Phase::Finished {
            return Ok(());
        }
        if matches!(self.stop, Some(StopIntent::DiskFull { .. })) {
            // No final checkpoint: it would spend on layers the little space the
            // journal's reserve freed for the events that say what happened.
            return self.complete_finish(verdict).await;
        }
        let trigger = match (&self.stop, verdict.outcome) {
            (Some(StopIntent::DiskFull { .. }), _) => "disk_full",
            (Some(StopIntent::Timeout { .. }), _) => "timeout",
            (Some(StopIntent::Interrupt), _) => "sigterm",
            (Some(StopIntent::Cancel { .. } | StopIntent::Limit { .. }), _) => "stop",
            (None, SessionOutcome::Succeeded) => "session_end",
            (None, _) => "error",
        };
        self.finishing = Some(verdict);
        if !self.request_checkpoint(trigger, String::new(), true, None, None, true) {
            let verdict = self.finishing.take().expect("just set");
            self.complete_finish(verdict).await?;
        }
        Ok(())
    }

    async fn complete_finish(&mut self, verdict: Verdict) -> Result<(), JournalError> {
        // The last responses' spend, before the end is recorded.
        self.meter_spend().await?;
        if self.status != SessionStatus::Finished {
            let detail = if verdict.error_message.is_empty() {
                "claude code exited".to_string()
            } else {
                verdict.error_message.clone()
            };
            self.set_status(SessionStatus::Finished, "", detail).await?;
        }
        let result = self
            .last_result
            .as_ref()
            .map(|r| r.result.clone())
            .unwrap_or_default();
        self.journal(event::Kind::SessionFinished(SessionFinished {
            outcome: verdict.outcome as i32,
            error_code: verdict.error_code.into(),
            error_message: verdict.error_message,
            result,
            session_cost_usd: self.session_cost_usd(),
            unanswered_input_seqs: self.unanswered().input_seqs,
        }))
        .await?;
        self.phase = Phase::Finished;
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
        // Stopped from outside (Stop, SIGTERM): whoever asked is there to read the end.
        // A stop of our own (a full disk, the time limit) lingers like a finish, so the
        // coordinator reads `SessionFinished` from us before we go.
        if matches!(
            self.stop,
            Some(StopIntent::Cancel { .. } | StopIntent::Limit { .. } | StopIntent::Interrupt)
        ) {
            self.exit_now = true;
        } else {
            self.linger_until = Some(Instant::now() + self.context.spec.linger_after_finish());
        }
        Ok(())
    }

    async fn clean_up(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(writer) = self.writer_task.take() {
            writer.abort();
        }
        if let Err(e) = self.context.tmux.kill_server().await {
            tracing::warn!(error = %e, "failed to stop the tmux server");
        }
        let _ = std::fs::remove_file(&self.context.layout.input_fifo);
    }
}

fn panicked(e: tokio::task::JoinError) -> CheckpointFailure {
    CheckpointFailure {
        code: codes::CHECKPOINT_IO_FAILED,
        message: format!("the checkpoint task panicked: {e}"),
    }
}

/// `90000` → `1m30s`, `7200000` → `2h`: a limit as the user wrote it.
fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The first line of `text`, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(max).collect::<String>())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The last few hundred bytes of Claude Code's stderr, for an error message.
fn stderr_tail(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let start = text.len().saturating_sub(512);
    let tail = String::from_utf8_lossy(&text[start..]).trim().to_string();
    (!tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(subtype: &str, is_error: bool, api_error_status: u32) -> TurnResult {
        TurnResult {
            subtype: subtype.into(),
            is_error,
            api_error_status,
            result: "text".into(),
            ..Default::default()
        }
    }

    #[track_caller]
    fn check(
        stop: Option<StopIntent>,
        exit_code: i32,
        last: Option<TurnResult>,
        wrote_output: bool,
        expect: (SessionOutcome, &str),
    ) {
        let got = verdict(
            stop.as_ref(),
            exit_code,
            last.as_ref(),
            wrote_output,
            &Unanswered::default(),
        );
        assert_eq!((got.outcome, got.error_code), expect, "{got:?}");
    }

    /// The agent's own stops: a full disk is resumable (E516), a time limit is a
    /// failure naming the limit (E301), whatever the last turn did.
    #[test]
    fn stops_of_the_agents_own_name_their_cause() {
        use SessionOutcome::*;
        let ok = || Some(result("success", false, 0));
        let full = StopIntent::DiskFull { what: "/v".into() };
        check(Some(full), -1, ok(), true, (Interrupted, "E516"));
        let timeout = StopIntent::Timeout { limit_ms: 90_000 };
        check(Some(timeout.clone()), 143, ok(), true, (Failed, "E301"));
        let v = verdict(Some(&timeout), 143, None, true, &Unanswered::default());
        assert!(v.error_message.contains("--timeout 1m30s"), "{v:?}");
        assert_eq!(human_duration(7_200_000), "2h");
        assert_eq!(human_duration(10_000), "10s");
        assert_eq!(human_duration(0), "0s");
        // The coordinator's limit stops fail with the limit's code; anything else
        // a Stop carries is a plain cancel.
        let budget = StopIntent::Limit {
            code: limit_code("E300").unwrap(),
            reason: "budget ceiling reached".into(),
        };
        check(Some(budget), 143, ok(), true, (Failed, "E300"));
        assert_eq!(limit_code("E301"), Some("E301"));
        assert_eq!(limit_code("E601"), None);
        assert_eq!(limit_code("rm -rf"), None);
    }

    /// The repro of issue 12: turn 1 succeeded, turn 2 (and a queued message) never got a
    /// result because Claude Code or its tmux server was killed. Old code: `Succeeded`.
    #[test]
    fn a_turn_killed_after_an_earlier_success_is_interrupted_and_names_what_was_lost() {
        let earlier = result("success", false, 0);
        for exit_code in [137, -1, 0, 1] {
            let unanswered = Unanswered {
                turn_in_flight: true,
                input_seqs: vec![7, 9],
            };
            let got = verdict(None, exit_code, Some(&earlier), true, &unanswered);
            assert_eq!(got.outcome, SessionOutcome::Interrupted, "{got:?}");
            assert_eq!(got.error_code, "E602");
            assert!(
                got.error_message
                    .contains("2 messages were not answered (inputs #7, #9)"),
                "{}",
                got.error_message
            );
            assert!(got.error_message.contains("the running turn got no result"));
        }
        // A queued message alone (the turn's result came, the next never started) is enough.
        let queued_only = Unanswered {
            turn_in_flight: false,
            input_seqs: vec![4],
        };
        let got = verdict(None, 0, Some(&earlier), true, &queued_only);
        assert_eq!(
            (got.outcome, got.error_code),
            (SessionOutcome::Interrupted, "E602")
        );
        assert!(
            got.error_message
                .contains("1 message was not answered (input #4)")
        );
    }

    fn arb_result() -> impl proptest::strategy::Strategy<Value = Option<TurnResult>> {
        use proptest::prelude::*;
        proptest::option::of(
            (
                prop_oneof![
                    Just("success"),
                    Just("error_max_turns"),
                    Just("error_max_budget_usd"),
                    Just("error_during_execution")
                ],
                any::<bool>(),
                prop_oneof![Just(0u32), Just(401), Just(429), Just(500)],
            )
                .prop_map(|(subtype, is_error, status)| result(subtype, is_error, status)),
        )
    }

    fn arb_stop() -> impl proptest::strategy::Strategy<Value = Option<StopIntent>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(None),
            Just(Some(StopIntent::Interrupt)),
            Just(Some(StopIntent::Cancel {
                reason: String::new()
            })),
        ]
    }

    proptest::proptest! {
        /// Whatever earlier turns returned, a session that left a turn or a message
        /// unanswered never succeeds; and one that left nothing unanswered, was not
        /// stopped, and whose last result is a success always does.
        #[test]
        fn the_outcome_is_the_last_turns(
            stop in arb_stop(),
            exit_code in proptest::prelude::any::<i32>(),
            last in arb_result(),
            wrote_output in proptest::prelude::any::<bool>(),
            turn_in_flight in proptest::prelude::any::<bool>(),
            input_seqs in proptest::collection::vec(0u64..1000, 0..4),
        ) {
            let unanswered = Unanswered { turn_in_flight, input_seqs };
            let got = verdict(stop.as_ref(), exit_code, last.as_ref(), wrote_output, &unanswered);
            if !unanswered.is_empty() {
                proptest::prop_assert_ne!(got.outcome, SessionOutcome::Succeeded);
                if stop.is_none() && last.is_some() {
                    proptest::prop_assert_eq!(got.outcome, SessionOutcome::Interrupted);
                    proptest::prop_assert_eq!(got.error_code, "E602");
                }
            }
            match &stop {
                Some(StopIntent::Cancel { .. }) => {
                    proptest::prop_assert_eq!(got.outcome, SessionOutcome::Cancelled)
                }
                Some(StopIntent::Interrupt) => {
                    proptest::prop_assert_eq!(got.outcome, SessionOutcome::Interrupted)
                }
                _ => {}
            }
            let clean_success = last
                .as_ref()
                .is_some_and(|r| !r.is_error && !r.subtype.starts_with("error"));
            if stop.is_none() && unanswered.is_empty() && clean_success {
                proptest::prop_assert_eq!(got.outcome, SessionOutcome::Succeeded);
            }
            // Every non-success carries a code.
            proptest::prop_assert_eq!(
                got.error_code.is_empty(),
                got.outcome == SessionOutcome::Succeeded
            );
        }
    }

    #[test]
    fn verdicts_follow_the_error_code_table() {
        use SessionOutcome::*;
        let ok = || Some(result("success", false, 0));
        check(None, 0, ok(), true, (Succeeded, ""));
        check(
            None,
            1,
            Some(result("success", true, 401)),
            true,
            (Failed, "E401"),
        );
        check(
            None,
            1,
            Some(result("success", true, 403)),
            true,
            (Failed, "E401"),
        );
        check(
            None,
            1,
            Some(result("success", true, 500)),
            true,
            (Failed, "E505"),
        );
        check(
            None,
            1,
            Some(result("success", true, 529)),
            true,
            (Failed, "E505"),
        );
        check(
            None,
            1,
            Some(result("success", true, 429)),
            true,
            (Failed, "E505"),
        );
        check(
            None,
            1,
            Some(result("success", true, 400)),
            true,
            (Failed, "E600"),
        );
        check(
            None,
            1,
            Some(result("error_max_turns", true, 0)),
            true,
            (Failed, "E600"),
        );
        check(
            None,
            1,
            Some(result("error_during_execution", true, 0)),
            true,
            (Failed, "E600"),
        );
        check(
            None,
            1,
            Some(result("error_max_budget_usd", true, 0)),
            true,
            (Failed, "E300"),
        );
        check(None, 127, None, false, (Failed, "E501"));
        check(None, 126, None, false, (Failed, "E501"));
        check(None, 143, None, true, (Interrupted, "E602"));
        check(None, -1, None, false, (Interrupted, "E602"));
        let cancel = || {
            Some(StopIntent::Cancel {
                reason: "user".into(),
            })
        };
        check(cancel(), 143, None, true, (Cancelled, "E601"));
        check(cancel(), 0, ok(), true, (Cancelled, "E601"));
        check(
            Some(StopIntent::Interrupt),
            143,
            None,
            true,
            (Interrupted, "E602"),
        );
    }
}
