//! The files the coordinator and the agent exchange on disk, as fixed by
//! `docs/dev/contracts.md`: the agent's `spec.json` (written by the backend,
//! never containing the secret) and `agent.json` (written by the agent once
//! its gRPC server listens).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The only `spec.json` version this coordinator writes.
pub const SPEC_VERSION: u32 = 1;

/// Headless (`claude -p` with stream-json) or the interactive TUI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecMode {
    Headless,
    Interactive,
}

/// `containers/<container-id>/spec.json`. Field order is the contract's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub version: u32,
    pub session_id: String,
    pub task_id: String,
    pub container_id: String,
    pub prompt: String,
    pub mode: SpecMode,
    pub claude_session_id: String,
    pub resume: bool,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub claude_bin: PathBuf,
    pub workspace_dir: PathBuf,
    pub claude_config_dir: PathBuf,
    pub volume_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub listen_addr: String,
    pub heartbeat_interval_ms: u64,
    pub linger_after_finish_ms: u64,
    pub stop_grace_ms: u64,
    /// A resume or rollback: restore this checkpoint before Claude Code starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_checkpoint: Option<String>,
    /// Claude Code's `--max-budget-usd`: the budget's second fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    /// The session's spend the coordinator has recorded (a resume): the
    /// agent's total starts from at least this, so a lost or damaged earlier
    /// journal never lowers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_cost_usd: Option<f64>,
    /// Responses the coordinator charged from a dead agent's transcripts, which
    /// no journal holds: the agent's meter counts them as charged (in its
    /// session total, never again). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charged_elsewhere: Vec<ChargedElsewhere>,
    /// When the agent checkpoints and what it keeps (`[checkpoint]` config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointPolicy>,
    /// Copy Claude Code's config from here first (`parhelia config sync`'s
    /// copy on a remote volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude_config_seed: Option<PathBuf>,
    /// Local isolation: the agent runs Claude Code inside bubblewrap, hiding and
    /// exposing what this names (see `docs/security.md`). Absent: no sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
    /// `--timeout`: the agent stops the session this long after it started (final
    /// checkpoint, then `SessionFinished{FAILED, E301}`). Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Modal: the unprivileged user the session runs as while the agent stays root
    /// (`modal.run_as_user`; see `agent/src/session_user.rs`). Absent: one user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_user: Option<String>,
    /// Model prices (`[rates.models]`): the agent meters each model response's spend
    /// with them (`docs/dev/cost-metering.md`). Empty: every response is unpriced.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub model_prices: std::collections::BTreeMap<String, crate::config::ModelPrice>,
}

/// One `spec.json` `charged_elsewhere` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargedElsewhere {
    pub message_id: String,
    pub cost_usd: f64,
}

/// `spec.json`'s `sandbox`: what the sandbox must not see (`hide`, covered by an
/// empty tmpfs) and what it may see again read-only or read-write. The agent adds
/// its own session directories (workspace, config dir, run dir, sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    pub hide: Vec<PathBuf>,
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
    /// Directories mounted at another path inside: the session's private home at the
    /// user's home path, its writable copies of `shims` directories
    /// (`backend/local_home.rs`). Absent in specs written before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<SandboxBind>,
}

/// One `spec.json` `sandbox.binds` entry: `source` (outside) seen at `target` (inside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxBind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub writable: bool,
}

/// `<runtime_dir>/agent.json`. Unknown fields are accepted: the agent may
/// announce more than this coordinator needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRuntimeInfo {
    pub version: u32,
    pub pid: u32,
    pub grpc_addr: String,
    #[serde(default)]
    pub started_at_ms: i64,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The agent's private tmux socket (older agents: `<socket dir>/tmux.sock`).
    #[serde(default)]
    pub tmux_socket: Option<PathBuf>,
}

impl AgentRuntimeInfo {
    /// The agent's gRPC endpoint URI.
    pub fn endpoint_uri(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }
}

/// The spec's `checkpoint` object (`docs/dev/contracts.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    pub interval_ms: u64,
    pub excludes: Vec<String>,
    pub keep_last: Option<u64>,
    pub keep_within_ms: Option<i64>,
    pub max_store_bytes: Option<u64>,
    /// Caps on reading checkpoints (the agent's restores).
    pub limits: ReadLimits,
}

/// The spec's `checkpoint.limits` object: `parhelia_checkpoint::Limits` as
/// JSON (`docs/dev/contracts.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_path_len: u64,
    pub max_read_bytes: u64,
    pub max_diff_bytes: u64,
    pub max_time_ms: u64,
}

impl From<&parhelia_checkpoint::Limits> for ReadLimits {
    fn from(l: &parhelia_checkpoint::Limits) -> Self {
        ReadLimits {
            max_bytes: l.max_bytes,
            max_entries: l.max_entries,
            max_path_len: l.max_path_len as u64,
            max_read_bytes: l.max_read_bytes,
            max_diff_bytes: l.max_diff_bytes,
            max_time_ms: l.max_time.as_millis().min(u64::MAX as u128) as u64,
        }
    }
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            interval_ms: 600_000,
            excludes: Vec::new(),
            keep_last: None,
            keep_within_ms: None,
            max_store_bytes: None,
            limits: ReadLimits::from(&parhelia_checkpoint::Limits::default()),
        }
    }
}

impl From<&crate::config::CheckpointConfig> for CheckpointPolicy {
    fn from(c: &crate::config::CheckpointConfig) -> Self {
        CheckpointPolicy {
            interval_ms: (c.interval_seconds * 1000.0) as u64,
            excludes: c.excludes.clone(),
            keep_last: c.keep_last,
            keep_within_ms: c.keep_within_hours.map(|h| (h * 3_600_000.0) as i64),
            max_store_bytes: c.max_store_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
            limits: ReadLimits::from(&c.read_limits()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_json_from_the_contract_parses() {
        let info: AgentRuntimeInfo = serde_json::from_str(
            r#"{"version": 1, "pid": 12345, "grpc_addr": "127.0.0.1:40123", "started_at_ms": 1700000000000,
                "container_id": "ctr-9c0d1e2f", "session_id": "sess-1a2b3c4d", "socket_dir": "/tmp/x"}"#,
        )
        .unwrap();
        assert_eq!(info.endpoint_uri(), "http://127.0.0.1:40123");
        assert_eq!(info.pid, 12345);
    }

    #[test]
    fn spec_rejects_unknown_fields_and_keeps_contract_names() {
        let spec = AgentSpec {
            version: 1,
            session_id: "sess-1a2b3c4d".into(),
            task_id: "task-5e6f7a8b".into(),
            container_id: "ctr-9c0d1e2f".into(),
            prompt: "hi".into(),
            mode: SpecMode::Headless,
            claude_session_id: "6f1c".into(),
            resume: false,
            model: None,
            max_turns: None,
            claude_bin: "/bin/claude".into(),
            workspace_dir: "/w".into(),
            claude_config_dir: "/c".into(),
            volume_dir: "/v".into(),
            runtime_dir: "/r".into(),
            listen_addr: "127.0.0.1:0".into(),
            heartbeat_interval_ms: 5000,
            linger_after_finish_ms: 600_000,
            stop_grace_ms: 10_000,
            restore_checkpoint: None,
            max_budget_usd: None,
            prior_cost_usd: None,
            charged_elsewhere: Vec::new(),
            checkpoint: None,
            claude_config_seed: None,
            sandbox: None,
            timeout_ms: None,
            session_user: None,
            model_prices: Default::default(),
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json.get("max_budget_usd").is_none());
        // Optional fields the agent defaults are left out, not written as null.
        assert!(json.get("restore_checkpoint").is_none());
        assert_eq!(json["mode"], "headless");
        assert_eq!(json["model"], serde_json::Value::Null);
        let mut extra = json.clone();
        extra["surprise"] = 1.into();
        assert!(serde_json::from_value::<AgentSpec>(extra).is_err());
        assert_eq!(serde_json::from_value::<AgentSpec>(json).unwrap(), spec);
    }
}
