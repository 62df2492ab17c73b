//! The launch spec: what the backend asks this agent to run.
//!
//! `spec.json` is written by the backend (see `docs/dev/contracts.md`) and read once at
//! start. This module promises that a [`LaunchSpec`] that came out of [`LaunchSpec::load`]
//! or [`LaunchSpec::from_json`] is valid: the version is 1, unknown fields were refused,
//! ids are safe to use in file names, paths are absolute and numbers are in range. It
//! does not look at the file system beyond reading the spec itself; whether the Claude
//! Code binary exists is decided at launch, so that a missing binary becomes a journaled
//! `SessionFinished{FAILED, E501}` instead of a silent startup failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The only spec version this agent understands.
pub const SPEC_VERSION: u32 = 1;

/// How Claude Code runs in this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// `claude -p` with stream-json on stdin and stdout.
    Headless,
    /// The Claude Code TUI in tmux.
    Interactive,
}

impl SessionMode {
    /// The wire enum value.
    pub fn to_proto(self) -> parhelia_proto::SessionMode {
        match self {
            SessionMode::Headless => parhelia_proto::SessionMode::Headless,
            SessionMode::Interactive => parhelia_proto::SessionMode::Interactive,
        }
    }
}

/// `spec.json`, exactly as the contract names its fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
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
    pub listen_addr: SocketAddr,
    pub heartbeat_interval_ms: u64,
    pub linger_after_finish_ms: u64,
    pub stop_grace_ms: u64,
    /// Restore this checkpoint (workspace and conversation) before Claude
    /// Code starts: a resume or a rollback. `"latest"` means the newest.
    #[serde(default)]
    pub restore_checkpoint: Option<String>,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Claude Code's own `--max-budget-usd` (headless), set by the coordinator from the
    /// task's and the global budget: a second fence behind the coordinator's watchdog.
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    /// The session's spend the coordinator has recorded before this container (a
    /// resume): the session's cost starts from at least this, whatever the volume's
    /// journals still hold (a deleted or damaged earlier journal never lowers it).
    #[serde(default)]
    pub prior_cost_usd: Option<f64>,
    /// The user's synced Claude Code configuration (the coordinator's config sync, on
    /// the volume): copied into `claude_config_dir` before Claude Code starts (see
    /// [`crate::config_seed`]). A missing directory is a journaled warning.
    #[serde(default)]
    pub claude_config_seed: Option<PathBuf>,
    /// Run Claude Code (its tmux server and all it starts) inside bubblewrap, seeing
    /// what this names plus the agent's own session directories (see [`crate::sandbox`]).
    /// Absent: no sandbox here (a Modal sandbox is one already, or isolation is off).
    #[serde(default)]
    pub sandbox: Option<crate::sandbox::SandboxSpec>,
    /// The task's `--timeout`: stop the session this long after the agent started
    /// (final checkpoint, then failed with E301). Absent: no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run the session (the tmux server, Claude Code and all it starts) as this
    /// unprivileged user while the agent stays root (see [`crate::session_user`]): on
    /// Modal, where no bubblewrap stands between them. Absent: the session runs as the
    /// agent's own user.
    #[serde(default)]
    pub session_user: Option<String>,
    /// Responses the coordinator charged from a dead agent's transcripts (no journal
    /// holds them): the meter counts them as charged, in the session total and never
    /// again.
    #[serde(default)]
    pub charged_elsewhere: Vec<ChargedElsewhere>,
    /// USD per million tokens by model name, for metering each model response from the
    /// transcript ([`crate::spend`]). A model not in it is metered unpriced (tokens only).
    #[serde(default)]
    pub model_prices: std::collections::BTreeMap<String, crate::spend::ModelPrice>,
}

/// One response the coordinator charged outside any journal.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargedElsewhere {
    pub message_id: String,
    pub cost_usd: f64,
}

/// When and how the agent checkpoints (all optional in `spec.json`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSpec {
    /// Periodic checkpoints (skipped when nothing changed); 0 turns them off.
    pub interval_ms: u64,
    /// Gitignore-style patterns (relative to the workspace) never captured
    /// and never touched by a restore.
    pub excludes: Vec<String>,
    /// Retention: keep at most this many checkpoints (None: all)...
    pub keep_last: Option<usize>,
    /// ...and/or those younger than this.
    pub keep_within_ms: Option<i64>,
    /// Quota for the session's checkpoint store.
    pub max_store_bytes: Option<u64>,
    /// Caps on reading checkpoints (restore); the store's defaults when absent.
    pub limits: ReadLimitsSpec,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval_ms: 600_000,
            excludes: Vec::new(),
            keep_last: None,
            keep_within_ms: None,
            max_store_bytes: None,
            limits: ReadLimitsSpec::default(),
        }
    }
}

/// `checkpoint.limits`: `parhelia_checkpoint::Limits` as JSON. Every field is
/// optional; a missing one keeps the store's default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadLimitsSpec {
    pub max_bytes: Option<u64>,
    pub max_entries: Option<u64>,
    pub max_path_len: Option<u64>,
    pub max_read_bytes: Option<u64>,
    pub max_diff_bytes: Option<u64>,
    pub max_time_ms: Option<u64>,
}

impl ReadLimitsSpec {
    pub fn to_limits(&self) -> parhelia_checkpoint::Limits {
        let d = parhelia_checkpoint::Limits::default();
        parhelia_checkpoint::Limits {
            max_bytes: self.max_bytes.unwrap_or(d.max_bytes),
            max_entries: self.max_entries.unwrap_or(d.max_entries),
            max_path_len: self
                .max_path_len
                .map_or(d.max_path_len, |n| n.min(d.max_path_len as u64) as usize),
            max_read_bytes: self.max_read_bytes.unwrap_or(d.max_read_bytes),
            max_diff_bytes: self.max_diff_bytes.unwrap_or(d.max_diff_bytes),
            max_time: self
                .max_time_ms
                .map_or(d.max_time, std::time::Duration::from_millis),
            ..d
        }
    }
}

/// Why a spec was refused. Each message reads after "invalid spec: ".
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The spec is not the JSON the contract describes (this includes unknown fields).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The version is not one this agent understands.
    #[error("version {0} is not supported (this agent reads version {SPEC_VERSION})")]
    Version(u32),
    /// A field is present but its value is not acceptable.
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field_error(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        reason: reason.into(),
    }
}

impl LaunchSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<LaunchSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        LaunchSpec::from_json(&text)
    }

    /// Parses and validates a spec from its JSON text.
    pub fn from_json(text: &str) -> Result<LaunchSpec, SpecError> {
        let spec: LaunchSpec = serde_json::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every rule the contract states, and a few that keep paths safe.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(SpecError::Version(self.version));
        }
        check_file_name_safe("session_id", &self.session_id)?;
        check_file_name_safe("task_id", &self.task_id)?;
        // The container id names the journal file, the run directory and the fallback
        // socket directory, so it must never be able to escape them.
        check_file_name_safe("container_id", &self.container_id)?;
        if uuid::Uuid::parse_str(&self.claude_session_id).is_err() {
            return Err(field_error(
                "claude_session_id",
                "must be a UUID (Claude Code's --session-id and --resume take one)",
            ));
        }
        // A resumed session may start without a message: it waits for input.
        if self.prompt.trim().is_empty() && !self.resume {
            return Err(field_error("prompt", "must not be empty"));
        }
        if let Some(id) = &self.restore_checkpoint {
            check_file_name_safe("restore_checkpoint", id)?;
        }
        if let Some(model) = &self.model
            && (model.is_empty() || model.starts_with('-'))
        {
            return Err(field_error("model", "must be a model name or null"));
        }
        if self.max_turns == Some(0) {
            return Err(field_error("max_turns", "must be at least 1 or null"));
        }
        if let Some(budget) = self.max_budget_usd
            && !(budget.is_finite() && budget > 0.0)
        {
            return Err(field_error(
                "max_budget_usd",
                "must be a positive amount or null",
            ));
        }
        if let Some(prior) = self.prior_cost_usd
            && !(prior.is_finite() && prior >= 0.0)
        {
            return Err(field_error(
                "prior_cost_usd",
                "must be a non-negative amount or null",
            ));
        }
        if self.charged_elsewhere.len() > crate::spend::MAX_TRACKED_IDS
            || self.charged_elsewhere.iter().any(|c| {
                c.message_id.is_empty()
                    || c.message_id.len() > crate::spend::MAX_ID_BYTES
                    || !(c.cost_usd.is_finite() && c.cost_usd >= 0.0)
            })
        {
            return Err(field_error(
                "charged_elsewhere",
                "must be at most 65,536 entries of a message id (1-256 bytes) and a non-negative amount",
            ));
        }
        for (model, price) in &self.model_prices {
            if model.is_empty() || model.len() > crate::spend::MAX_MODEL_BYTES {
                return Err(field_error(
                    "model_prices",
                    "model names must be 1 to 128 bytes",
                ));
            }
            if !price.is_valid() {
                return Err(field_error(
                    "model_prices",
                    format!("the prices of {model:?} must be finite and not negative"),
                ));
            }
        }
        for (field, path) in [
            ("claude_bin", &self.claude_bin),
            ("workspace_dir", &self.workspace_dir),
            ("claude_config_dir", &self.claude_config_dir),
            ("volume_dir", &self.volume_dir),
            ("runtime_dir", &self.runtime_dir),
        ] {
            check_absolute(field, path)?;
        }
        if let Some(seed) = &self.claude_config_seed {
            check_absolute("claude_config_seed", seed)?;
            if seed == &self.claude_config_dir {
                return Err(field_error(
                    "claude_config_seed",
                    "must not be the claude_config_dir itself",
                ));
            }
        }
        for bind in self.sandbox.iter().flat_map(|s| &s.binds) {
            check_absolute("sandbox.binds.source", &bind.source)?;
            check_absolute("sandbox.binds.target", &bind.target)?;
            if bind.target == Path::new("/") {
                return Err(field_error(
                    "sandbox.binds.target",
                    "must not be the root directory",
                ));
            }
        }
        if let Some(user) = &self.session_user
            && (user.is_empty()
                || user == "root"
                || user.starts_with('-')
                || !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(field_error(
                "session_user",
                "must be the name of an unprivileged user (letters, digits, `_`, `-`, `.`)",
            ));
        }
        if self.heartbeat_interval_ms < 100 {
            return Err(field_error(
                "heartbeat_interval_ms",
                "must be at least 100 milliseconds",
            ));
        }
        Ok(())
    }

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

fn check_file_name_safe(field: &'static str, value: &str) -> Result<(), SpecError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if value.is_empty() || value.len() > 64 {
        return Err(field_error(field, "must be 1 to 64 characters"));
    }
    if value.starts_with('.') || !value.chars().all(allowed) {
        return Err(field_error(
            field,
            "may contain only ASCII letters, digits, '-', '_' and '.', and must not start with '.'",
        ));
    }
    Ok(())
}

fn check_absolute(field: &'static str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(field_error(field, "must be an absolute path"));
    }
    let text = path.to_string_lossy();
    // Paths end up in a shell script (quoted) and in tmux arguments; a newline or NUL in
    // them is never legitimate and would make both harder to reason about.
    if text.contains('\n') || text.contains('\0') || path.to_str().is_none() {
        return Err(field_error(field, "must be valid UTF-8 without newlines"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn example_json() -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "session_id": "sess-1a2b3c4d",
            "task_id": "task-5e6f7a8b",
            "container_id": "ctr-9c0d1e2f",
            "prompt": "Add a hello.txt that says hi",
            "mode": "headless",
            "claude_session_id": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e",
            "resume": false,
            "model": null,
            "max_turns": null,
            "claude_bin": "/usr/local/bin/claude",
            "workspace_dir": "/srv/s/workspace",
            "claude_config_dir": "/srv/c/claude-config",
            "volume_dir": "/srv/s/volume",
            "runtime_dir": "/srv/c/runtime",
            "listen_addr": "127.0.0.1:0",
            "heartbeat_interval_ms": 5000,
            "linger_after_finish_ms": 600000,
            "stop_grace_ms": 10000
        })
    }

    /// Applies `edit` to the contract's example and returns the validation outcome as
    /// `"ok"` or the error message.
    fn check(edit: impl FnOnce(&mut serde_json::Value), expect: &str) {
        let mut value = example_json();
        edit(&mut value);
        let got = match LaunchSpec::from_json(&value.to_string()) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            got.contains(expect),
            "expected {expect:?} in {got:?} for {value}"
        );
    }

    #[test]
    fn the_contract_example_is_valid() {
        let spec = LaunchSpec::from_json(&example_json().to_string()).unwrap();
        assert_eq!(spec.mode, SessionMode::Headless);
        assert_eq!(spec.model, None);
        assert_eq!(spec.heartbeat_interval(), Duration::from_secs(5));
    }

    /// `checkpoint.limits` reaches the store's `Limits`; what it leaves out
    /// keeps the engine's default, and a path cap never exceeds `PATH_MAX`.
    #[test]
    fn checkpoint_read_limits_come_from_the_spec() {
        let mut value = example_json();
        value["checkpoint"] = serde_json::json!({
            "limits": {"max_entries": 7, "max_time_ms": 1500, "max_path_len": 99999}
        });
        let spec = LaunchSpec::from_json(&value.to_string()).unwrap();
        let limits = spec.checkpoint.limits.to_limits();
        let default = parhelia_checkpoint::Limits::default();
        assert_eq!(limits.max_entries, 7);
        assert_eq!(limits.max_time, Duration::from_millis(1500));
        assert_eq!(limits.max_path_len, default.max_path_len);
        assert_eq!(limits.max_bytes, default.max_bytes);
        let plain = LaunchSpec::from_json(&example_json().to_string()).unwrap();
        assert_eq!(plain.checkpoint.limits.to_limits(), default);
        check(
            |v| v["checkpoint"] = serde_json::json!({"limits": {"max_files": 1}}),
            "unknown field `max_files`",
        );
    }

    #[test]
    fn validation_rules() {
        check(|_| {}, "ok");
        check(|v| v["model"] = "claude-sonnet-4-5".into(), "ok");
        check(|v| v["max_turns"] = 3.into(), "ok");
        check(|v| v["mode"] = "interactive".into(), "ok");
        check(
            |v| {
                v.as_object_mut().unwrap().remove("model");
                v.as_object_mut().unwrap().remove("max_turns");
            },
            "ok",
        );
        check(|v| v["surprise"] = 1.into(), "unknown field `surprise`");
        check(|v| v["version"] = 2.into(), "version 2 is not supported");
        check(
            |v| {
                v.as_object_mut().unwrap().remove("stop_grace_ms");
            },
            "missing field `stop_grace_ms`",
        );
        check(|v| v["mode"] = "tui".into(), "unknown variant `tui`");
        check(|v| v["container_id"] = "../etc".into(), "container_id:");
        check(|v| v["container_id"] = "".into(), "container_id:");
        check(|v| v["session_id"] = "a/b".into(), "session_id:");
        check(|v| v["claude_session_id"] = "nope".into(), "must be a UUID");
        check(|v| v["prompt"] = "  ".into(), "prompt: must not be empty");
        check(|v| v["model"] = "--evil".into(), "model:");
        check(|v| v["max_turns"] = 0.into(), "max_turns:");
        check(|v| v["max_budget_usd"] = 1.5.into(), "ok");
        check(|v| v["max_budget_usd"] = 0.into(), "max_budget_usd:");
        check(
            |v| v["claude_config_seed"] = "/vol/config/claude".into(),
            "ok",
        );
        check(|v| v["claude_config_seed"] = serde_json::Value::Null, "ok");
        check(
            |v| v["claude_config_seed"] = "config/claude".into(),
            "claude_config_seed: must be an absolute path",
        );
        check(
            |v| v["claude_config_seed"] = "/srv/c/claude-config".into(),
            "claude_config_seed: must not be",
        );
        check(
            |v| v["workspace_dir"] = "rel/ws".into(),
            "workspace_dir: must be an absolute path",
        );
        let bind = |source: &str, target: &str| {
            serde_json::json!({"hide": [], "read_only": [], "writable": [],
                "binds": [{"source": source, "target": target, "writable": true}]})
        };
        check(|v| v["sandbox"] = bind("/s/home", "/home/u"), "ok");
        check(
            |v| v["sandbox"] = bind("s/home", "/home/u"),
            "sandbox.binds.source: must be an absolute path",
        );
        check(
            |v| v["sandbox"] = bind("/s/home", "/"),
            "sandbox.binds.target: must not be the root",
        );
        check(
            |v| v["claude_bin"] = "claude".into(),
            "claude_bin: must be an absolute path",
        );
        check(
            |v| v["listen_addr"] = "localhost".into(),
            "invalid socket address",
        );
        check(
            |v| v["heartbeat_interval_ms"] = 5.into(),
            "heartbeat_interval_ms:",
        );
        let price = |input: f64| {
            serde_json::json!({"input_usd_per_mtok": input, "output_usd_per_mtok": 20.0,
                "cache_write_usd_per_mtok": 5.0, "cache_read_usd_per_mtok": 0.2})
        };
        check(
            |v| v["model_prices"] = serde_json::json!({"claude-opus-5-5": price(4.0)}),
            "ok",
        );
        check(
            |v| v["model_prices"] = serde_json::json!({"claude-opus-5-5": price(-4.0)}),
            "model_prices: the prices of \"claude-opus-5-5\" must be finite and not negative",
        );
        check(
            |v| v["model_prices"] = serde_json::json!({"": price(4.0)}),
            "model_prices: model names",
        );
        check(
            |v| v["model_prices"] = serde_json::json!({"m": {"input_usd_per_mtok": 1.0}}),
            "missing field",
        );
    }
}
