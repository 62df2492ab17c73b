//! The coordinator's records as the database gives them back (tasks, sessions,
//! containers, heartbeats, orphans) and what a scope cost (`Spend`): plain data, read by
//! the views and the service, filled in by `db`. Pure: no IO, so the views that render
//! these import no adapter.

use serde::Serialize;

use crate::container_state::{ContainerState, Health};
use crate::task_state::TaskStatus;

/// A task as stored (never holds the secret).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub prompt: String,
    pub task_type: String,
    pub backend: String,
    pub workspace: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub status: TaskStatus,
    pub session_id: Option<String>,
    pub container_id: Option<String>,
    /// The task's cost and its breakdown, from the ledger (every attempt):
    /// `spend.cost_usd` is the figure every view calls cost.
    pub spend: Spend,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// `headless` or `interactive`.
    pub mode: String,
    /// Pending only: when it asked to be dispatched (queued); `None` while
    /// held (`--no-dispatch`).
    pub dispatch_requested_at_ms: Option<i64>,
    /// Sessions started for the task so far (a retry adds one).
    pub attempt: u32,
    /// Automatic resumes requested by the reconciler.
    pub auto_resumes: u32,
    /// Copy the workspace whatever its size (`--allow-large-workspace`).
    pub allow_large_workspace: bool,
    /// Start its sessions without the user's Claude Code setup (`--no-user-config`).
    pub no_user_config: bool,
    /// Its own `--set section.key=value` values, on top of the coordinator's
    /// configuration for its launches only (`config::task_config`).
    pub config_set: Vec<String>,
    /// The names of its secrets (`--secret`): environment variables taken
    /// from the submitter's environment (local) or Modal secrets (Modal).
    /// Never a value.
    pub secrets: Vec<String>,
    /// Its Modal region (`--region`); `None`: `modal.region`.
    pub region: Option<String>,
    /// The GPU type its latest launch got (the first of `--gpu`'s list Modal
    /// had capacity for); `None` before a launch or without a GPU.
    pub gpu_chosen: Option<String>,
}

/// A container as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub session_id: String,
    pub task_id: String,
    pub backend: String,
    pub state: ContainerState,
    pub health: Option<Health>,
    pub endpoint: Option<String>,
    pub pid: Option<u32>,
    pub heartbeat_interval_ms: Option<i64>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub terminated_at_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    pub state_changed_at_ms: i64,
    pub stop_requested_at_ms: Option<i64>,
    pub resume_requested_at_ms: Option<i64>,
}

/// A running session, for `parhelia status`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningSession {
    pub session_id: String,
    pub task_id: String,
    pub container_id: String,
    pub status: String,
    /// The session's cost from the ledger.
    pub spend: Spend,
    pub started_at_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    /// The interval the agent was asked to beat at, and the reconciler's last verdict.
    pub heartbeat_interval_ms: Option<i64>,
    pub container_health: Option<Health>,
}

/// A session as stored, without its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub task_id: String,
    pub claude_session_id: String,
    pub mode: String,
    pub status: String,
    pub outcome: Option<String>,
    pub workspace_dir: String,
    pub volume_dir: String,
    /// The session's cost from the ledger.
    pub spend: Spend,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The session's (latest) container.
    pub container_id: Option<String>,
    /// Which attempt of its task this session is (1 for the first).
    pub attempt: u32,
    /// The checkpoint to resume from, recorded when the session was
    /// interrupted or cancelled.
    pub resume_checkpoint_id: Option<String>,
    /// The latest container's state, health and last heartbeat.
    pub container_state: Option<ContainerState>,
    pub container_health: Option<Health>,
    pub last_heartbeat_ms: Option<i64>,
}

/// The latest heartbeat of a container.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatRecord {
    pub ts_ms: i64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub workspace_disk_bytes: u64,
    pub status: String,
}

/// A labelled container the coordinator has no record of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanRecord {
    pub container_id: String,
    pub session_id: String,
    pub pid: Option<u32>,
    pub endpoint: Option<String>,
    pub gone: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub terminate_requested_at_ms: Option<i64>,
}

/// What a scope (a task, a session, everything, a period) cost: the one
/// figure every view calls **cost** (`cost_usd`, the ledger total:
/// compute + model + storage) and its breakdown. Every view gets it from
/// [`Spend::add`] over the scope's ledger rows in id order ([`crate::db::spend_in`]),
/// so no two views can disagree.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spend {
    pub cost_usd: f64,
    pub compute_usd: f64,
    pub model_usd: f64,
    pub storage_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// Model requests Claude Code had sent and never wrote a reply for when it
    /// died: their spend, if the API answered, is in no figure above.
    pub unknown_model_requests: u64,
}

impl Spend {
    /// Adds one ledger row.
    pub fn add(&mut self, kind: &str, amount_usd: f64, tokens: [u64; 4]) {
        match kind {
            "compute" => self.compute_usd += amount_usd,
            "model" => self.model_usd += amount_usd,
            "storage" => self.storage_usd += amount_usd,
            _ => {}
        }
        self.cost_usd += amount_usd;
        self.input_tokens = self.input_tokens.saturating_add(tokens[0]);
        self.output_tokens = self.output_tokens.saturating_add(tokens[1]);
        self.cache_creation_input_tokens =
            self.cache_creation_input_tokens.saturating_add(tokens[2]);
        self.cache_read_input_tokens = self.cache_read_input_tokens.saturating_add(tokens[3]);
    }
}
