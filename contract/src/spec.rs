//! `spec.json`: what a backend asks an agent to run (`docs/dev/contracts.md`).
//!
//! The coordinator writes it (`containers/<container-id>/spec.json`, and on Modal the
//! volume's copy) and reads it back to rebuild ended work; the agent reads it once at
//! start. Both use these types, so the schema is defined once. The field order is the
//! contract's and is the order the coordinator writes. Every type refuses unknown
//! fields: the spec is versioned ([`SPEC_VERSION`]), and a field one side does not know
//! is an error, never silently dropped.
//!
//! This module only says what the JSON looks like. Which values are acceptable (ids
//! safe in file names, absolute paths, amounts in range) is the agent's to decide
//! (`parhelia_agent::spec::validate`), since it is the one that acts on them; the
//! conversions to and from the checkpoint engine's `Limits` are the checkpoint crate's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The only spec version there is: the coordinator writes it, the agent accepts only it.
pub const SPEC_VERSION: u32 = 1;

/// How Claude Code runs in the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// `claude -p` with stream-json on stdin and stdout.
    Headless,
    /// The Claude Code TUI in tmux.
    Interactive,
}

/// `spec.json`, exactly as the contract names and orders its fields.
///
/// `model` and `max_turns` are always written (null when unset); the other optional
/// fields are left out when unset, and default when absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    pub version: u32,
    pub session_id: String,
    pub task_id: String,
    pub container_id: String,
    pub prompt: String,
    pub mode: SessionMode,
    pub claude_session_id: String,
    pub resume: bool,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    pub claude_bin: PathBuf,
    pub workspace_dir: PathBuf,
    pub claude_config_dir: PathBuf,
    pub volume_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// Local: `127.0.0.1:0`; Modal: `0.0.0.0:<port>`, exposed as an h2 tunnel.
    pub listen_addr: SocketAddr,
    pub heartbeat_interval_ms: u64,
    pub linger_after_finish_ms: u64,
    pub stop_grace_ms: u64,
    /// A resume or rollback: restore this checkpoint (workspace and conversation)
    /// before Claude Code starts. `"latest"` means the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_checkpoint: Option<String>,
    /// Claude Code's own `--max-budget-usd` (headless), set by the coordinator from the
    /// task's and the global budget: a second fence behind the coordinator's watchdog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    /// The session's spend the coordinator has recorded before this container (a
    /// resume): the session's cost starts from at least this, whatever the volume's
    /// journals still hold (a deleted or damaged earlier journal never lowers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_cost_usd: Option<f64>,
    /// Responses the coordinator charged from a dead agent's transcripts (no journal
    /// holds them): the agent's meter counts them as charged, in the session total and
    /// never again. Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charged_elsewhere: Vec<ChargedElsewhere>,
    /// When the agent checkpoints and what it keeps (`[checkpoint]` config). The
    /// coordinator always writes it; absent, every field takes its default.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// The user's Claude Code configuration (`parhelia config sync`'s copy on a remote
    /// volume; locally the planner's copy): copied into `claude_config_dir` before
    /// Claude Code starts. A missing directory is a journaled warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude_config_seed: Option<PathBuf>,
    /// Local isolation: the agent runs Claude Code (its tmux server and all it starts)
    /// inside bubblewrap, hiding and exposing what this names (`docs/security.md`).
    /// Absent: no sandbox here (a Modal sandbox is one already, or isolation is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
    /// The task's `--timeout`: the agent stops the session this long after it started
    /// (final checkpoint, then `SessionFinished{FAILED, E301}`). Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Modal (`modal.run_as_user`): the unprivileged user the session (the tmux server,
    /// Claude Code and all it starts) runs as while the agent stays root. Absent: the
    /// session runs as the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_user: Option<String>,
    /// USD per million tokens by model name (`[rates.models]`): the agent meters each
    /// model response in the transcript with them (`docs/dev/cost-metering.md`). A model
    /// not in it is metered unpriced (tokens only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_prices: BTreeMap<String, ModelPrice>,
}

impl LaunchSpec {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn linger_after_finish(&self) -> Duration {
        Duration::from_millis(self.linger_after_finish_ms)
    }

    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }
}

/// One `charged_elsewhere` entry: a response the coordinator charged outside any journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargedElsewhere {
    pub message_id: String,
    pub cost_usd: f64,
}

/// USD per million tokens of each kind, for one model (`model_prices`; also the
/// coordinator's `[rates.models]` and `parhelia-agent meter`'s price table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    pub cache_write_usd_per_mtok: f64,
    pub cache_read_usd_per_mtok: f64,
}

impl ModelPrice {
    /// Every figure is finite and not negative.
    pub fn is_valid(&self) -> bool {
        [
            self.input_usd_per_mtok,
            self.output_usd_per_mtok,
            self.cache_write_usd_per_mtok,
            self.cache_read_usd_per_mtok,
        ]
        .iter()
        .all(|p| p.is_finite() && *p >= 0.0)
    }
}

/// `checkpoint`: when and how the agent checkpoints. Every field is optional in the
/// JSON; the coordinator writes them all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSpec {
    /// Periodic checkpoints (skipped when nothing changed); 0 turns them off.
    pub interval_ms: u64,
    /// Gitignore-style patterns (relative to the workspace) never captured and never
    /// touched by a restore.
    pub excludes: Vec<String>,
    /// Retention: keep at most this many checkpoints (None: all)...
    pub keep_last: Option<u64>,
    /// ...and/or those younger than this.
    pub keep_within_ms: Option<i64>,
    /// Quota for the session's checkpoint store.
    pub max_store_bytes: Option<u64>,
    /// Caps on reading checkpoints (the agent's restores).
    pub limits: ReadLimitsSpec,
    /// How long the agent waits for another process's hold on the store's lock before
    /// E622 (`checkpoint.lock_wait_seconds`; None: the engine's default, 60 s, and not
    /// written, so a spec without it reads back to the same bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_wait_ms: Option<u64>,
}

/// The default period of checkpoints: ten minutes.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 600_000;

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            excludes: Vec::new(),
            keep_last: None,
            keep_within_ms: None,
            max_store_bytes: None,
            limits: ReadLimitsSpec::default(),
            lock_wait_ms: None,
        }
    }
}

/// `checkpoint.limits`: `parhelia_checkpoint::Limits` as JSON (the checkpoint crate
/// converts both ways). Every field is optional; a missing one keeps the engine's
/// default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadLimitsSpec {
    pub max_bytes: Option<u64>,
    pub max_entries: Option<u64>,
    pub max_path_len: Option<u64>,
    pub max_read_bytes: Option<u64>,
    pub max_diff_bytes: Option<u64>,
    pub max_time_ms: Option<u64>,
}

/// `sandbox`: what the sandbox must not see (`hide`, covered by an empty tmpfs) and
/// what it may see again read-only or read-write. The agent adds its own session
/// directories (workspace, config dir, run dir, sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// Directories replaced by an empty tmpfs inside the sandbox.
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// Paths visible read-only inside (after hiding); missing ones are skipped.
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Extra writable directories.
    #[serde(default)]
    pub writable: Vec<PathBuf>,
    /// Directories mounted at another path inside: the session's private home at the
    /// user's home path, its writable copies of `shims` directories. Absent in specs
    /// written before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<SandboxBind>,
}

/// One `sandbox.binds` entry: `source` (a path outside) mounted at `target` inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxBind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub writable: bool,
}

/// `<runtime_dir>/agent.json`: how to reach a running agent. The agent writes it once its
/// gRPC server listens and removes it when it exits; the coordinator reads it. Unknown
/// fields are accepted: a newer agent may announce more than a coordinator needs, and
/// the fields after `grpc_addr` default so an older agent's file still reads.
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
    /// Present when the sockets are not in the runtime dir (its path is too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_dir: Option<PathBuf>,
    /// The agent's private tmux socket (`<socket dir>/tmux/tmux.sock`; older agents:
    /// absent, `<socket dir>/tmux.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmux_socket: Option<PathBuf>,
}

impl AgentRuntimeInfo {
    /// The agent's gRPC endpoint URI.
    pub fn endpoint_uri(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec with every field set, in the bytes the coordinator has always written
    /// (field order, nulls for `model`/`max_turns`, optional fields present).
    const EVERY_FIELD: &str = concat!(
        r#"{"version":1,"session_id":"sess-1a2b3c4d","task_id":"task-5e6f7a8b","#,
        r#""container_id":"ctr-9c0d1e2f","prompt":"hi","mode":"interactive","#,
        r#""claude_session_id":"6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e","resume":true,"#,
        r#""model":"claude-sonnet-4-5","max_turns":3,"claude_bin":"/bin/claude","#,
        r#""workspace_dir":"/w","claude_config_dir":"/c","volume_dir":"/v","runtime_dir":"/r","#,
        r#""listen_addr":"0.0.0.0:50051","heartbeat_interval_ms":5000,"#,
        r#""linger_after_finish_ms":600000,"stop_grace_ms":10000,"#,
        r#""restore_checkpoint":"latest","max_budget_usd":2.5,"prior_cost_usd":0.25,"#,
        r#""charged_elsewhere":[{"message_id":"msg_1","cost_usd":0.0018}],"#,
        r#""checkpoint":{"interval_ms":600000,"excludes":["target/"],"keep_last":5,"#,
        r#""keep_within_ms":null,"max_store_bytes":1048576,"limits":{"max_bytes":68719476736,"#,
        r#""max_entries":10000000,"max_path_len":4096,"max_read_bytes":1073741824,"#,
        r#""max_diff_bytes":16777216,"max_time_ms":21600000},"lock_wait_ms":60000},"#,
        r#""claude_config_seed":"/vol/config/claude","#,
        r#""sandbox":{"hide":["/state"],"read_only":["/usr"],"writable":[],"#,
        r#""binds":[{"source":"/state/home","target":"/home/u","writable":true}]},"#,
        r#""timeout_ms":60000,"session_user":"parhelia","#,
        r#""model_prices":{"claude-opus-5-5":{"input_usd_per_mtok":4.0,"#,
        r#""output_usd_per_mtok":20.0,"cache_write_usd_per_mtok":5.0,"#,
        r#""cache_read_usd_per_mtok":0.2}}}"#
    );

    /// The fewest fields: what every optional field looks like when unset.
    const FEWEST_FIELDS: &str = concat!(
        r#"{"version":1,"session_id":"s","task_id":"t","container_id":"c","prompt":"p","#,
        r#""mode":"headless","claude_session_id":"u","resume":false,"model":null,"#,
        r#""max_turns":null,"claude_bin":"/b","workspace_dir":"/w","claude_config_dir":"/c","#,
        r#""volume_dir":"/v","runtime_dir":"/r","listen_addr":"127.0.0.1:0","#,
        r#""heartbeat_interval_ms":5000,"linger_after_finish_ms":0,"stop_grace_ms":0,"#,
        r#""checkpoint":{"interval_ms":600000,"excludes":[],"keep_last":null,"#,
        r#""keep_within_ms":null,"max_store_bytes":null,"limits":{"max_bytes":null,"#,
        r#""max_entries":null,"max_path_len":null,"max_read_bytes":null,"#,
        r#""max_diff_bytes":null,"max_time_ms":null}}}"#
    );

    #[test]
    fn a_spec_reads_back_to_the_same_bytes() {
        for text in [EVERY_FIELD, FEWEST_FIELDS] {
            let spec: LaunchSpec = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&spec).unwrap(), text);
        }
    }

    #[test]
    fn unset_optional_fields_default_and_unknown_fields_are_refused() {
        let minimal: serde_json::Value = serde_json::json!({
            "version": 1, "session_id": "s", "task_id": "t", "container_id": "c",
            "prompt": "p", "mode": "headless", "claude_session_id": "u", "resume": false,
            "claude_bin": "/b", "workspace_dir": "/w", "claude_config_dir": "/c",
            "volume_dir": "/v", "runtime_dir": "/r", "listen_addr": "127.0.0.1:0",
            "heartbeat_interval_ms": 5000, "linger_after_finish_ms": 0, "stop_grace_ms": 0
        });
        let spec: LaunchSpec = serde_json::from_value(minimal.clone()).unwrap();
        assert_eq!(spec.model, None);
        assert_eq!(spec.checkpoint, CheckpointSpec::default());
        assert_eq!(spec.checkpoint.interval_ms, DEFAULT_CHECKPOINT_INTERVAL_MS);
        assert_eq!(spec.stop_grace(), Duration::ZERO);
        for (path, field) in [
            (&[][..], "surprise"),
            (&["checkpoint"][..], "max_files"),
            (&["checkpoint", "limits"][..], "max_files"),
            (&["sandbox"][..], "mounts"),
        ] {
            let mut value = minimal.clone();
            value["checkpoint"] = serde_json::json!({"limits": {}});
            value["sandbox"] = serde_json::json!({});
            let mut at = &mut value;
            for key in path {
                at = &mut at[*key];
            }
            at[field] = 1.into();
            let err = serde_json::from_value::<LaunchSpec>(value).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("unknown field `{field}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn agent_json_reads_back_to_the_same_bytes_and_accepts_more() {
        let text = concat!(
            r#"{"version":1,"pid":12345,"grpc_addr":"127.0.0.1:40123","#,
            r#""started_at_ms":1700000000000,"container_id":"ctr-9c0d1e2f","#,
            r#""session_id":"sess-1a2b3c4d","tmux_socket":"/r/sockets/tmux/tmux.sock"}"#
        );
        let info: AgentRuntimeInfo = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&info).unwrap(), text);
        assert_eq!(info.endpoint_uri(), "http://127.0.0.1:40123");
        let older: AgentRuntimeInfo = serde_json::from_str(
            r#"{"version": 1, "pid": 1, "grpc_addr": "127.0.0.1:1", "socket_dir": "/tmp/x", "later": 1}"#,
        )
        .unwrap();
        assert_eq!(older.tmux_socket, None);
        assert_eq!(older.socket_dir, Some(PathBuf::from("/tmp/x")));
    }
}
