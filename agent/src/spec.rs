//! The launch spec: what the backend asks this agent to run.
//!
//! `spec.json` is written by the backend (see `docs/dev/contracts.md`) and read once at
//! start. Its schema is `parhelia_contract::spec`, the types the coordinator writes it
//! with; this module is the agent's judgement of the values. It promises that a
//! [`LaunchSpec`] that came out of [`load`] or [`from_json`] is valid: the version is
//! [`SPEC_VERSION`], unknown fields were refused,
//! ids are safe to use in file names, paths are absolute and numbers are in range. It
//! does not look at the file system beyond reading the spec itself; whether the Claude
//! Code binary exists is decided at launch, so that a missing binary becomes a journaled
//! `SessionFinished{FAILED, E501}` instead of a silent startup failure.

use std::path::{Path, PathBuf};

pub use parhelia_contract::spec::{
    ChargedElsewhere, CheckpointSpec, LaunchSpec, ReadLimitsSpec, SPEC_VERSION, SessionMode,
};

/// The wire enum value of a session mode.
pub fn mode_to_proto(mode: SessionMode) -> parhelia_proto::SessionMode {
    match mode {
        SessionMode::Headless => parhelia_proto::SessionMode::Headless,
        SessionMode::Interactive => parhelia_proto::SessionMode::Interactive,
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

/// Reads and validates a spec file.
pub fn load(path: &Path) -> Result<LaunchSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_json(&text)
}

/// Parses and validates a spec from its JSON text.
pub fn from_json(text: &str) -> Result<LaunchSpec, SpecError> {
    let spec: LaunchSpec = serde_json::from_str(text)?;
    validate(&spec)?;
    Ok(spec)
}

/// Checks every rule the contract states, and a few that keep paths safe.
pub fn validate(spec: &LaunchSpec) -> Result<(), SpecError> {
    if spec.version != SPEC_VERSION {
        return Err(SpecError::Version(spec.version));
    }
    check_file_name_safe("session_id", &spec.session_id)?;
    check_file_name_safe("task_id", &spec.task_id)?;
    // The container id names the journal file, the run directory and the fallback
    // socket directory, so it must never be able to escape them.
    check_file_name_safe("container_id", &spec.container_id)?;
    if uuid::Uuid::parse_str(&spec.claude_session_id).is_err() {
        return Err(field_error(
            "claude_session_id",
            "must be a UUID (Claude Code's --session-id and --resume take one)",
        ));
    }
    // A resumed session may start without a message: it waits for input.
    if spec.prompt.trim().is_empty() && !spec.resume {
        return Err(field_error("prompt", "must not be empty"));
    }
    if let Some(id) = &spec.restore_checkpoint {
        check_file_name_safe("restore_checkpoint", id)?;
    }
    if let Some(model) = &spec.model
        && (model.is_empty() || model.starts_with('-'))
    {
        return Err(field_error("model", "must be a model name or null"));
    }
    if spec.max_turns == Some(0) {
        return Err(field_error("max_turns", "must be at least 1 or null"));
    }
    if let Some(budget) = spec.max_budget_usd
        && !(budget.is_finite() && budget > 0.0)
    {
        return Err(field_error(
            "max_budget_usd",
            "must be a positive amount or null",
        ));
    }
    if let Some(prior) = spec.prior_cost_usd
        && !(prior.is_finite() && prior >= 0.0)
    {
        return Err(field_error(
            "prior_cost_usd",
            "must be a non-negative amount or null",
        ));
    }
    if spec.charged_elsewhere.len() > crate::spend::MAX_TRACKED_IDS
        || spec.charged_elsewhere.iter().any(|c| {
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
    for (model, price) in &spec.model_prices {
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
        ("claude_bin", &spec.claude_bin),
        ("workspace_dir", &spec.workspace_dir),
        ("claude_config_dir", &spec.claude_config_dir),
        ("volume_dir", &spec.volume_dir),
        ("runtime_dir", &spec.runtime_dir),
    ] {
        check_absolute(field, path)?;
    }
    if let Some(seed) = &spec.claude_config_seed {
        check_absolute("claude_config_seed", seed)?;
        if seed == &spec.claude_config_dir {
            return Err(field_error(
                "claude_config_seed",
                "must not be the claude_config_dir itself",
            ));
        }
    }
    for bind in spec.sandbox.iter().flat_map(|s| &s.binds) {
        check_absolute("sandbox.binds.source", &bind.source)?;
        check_absolute("sandbox.binds.target", &bind.target)?;
        if bind.target == Path::new("/") {
            return Err(field_error(
                "sandbox.binds.target",
                "must not be the root directory",
            ));
        }
    }
    if let Some(user) = &spec.session_user
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
    if spec.heartbeat_interval_ms < 100 {
        return Err(field_error(
            "heartbeat_interval_ms",
            "must be at least 100 milliseconds",
        ));
    }
    Ok(())
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
    use std::time::Duration;

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
        let got = match from_json(&value.to_string()) {
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
        let spec = from_json(&example_json().to_string()).unwrap();
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
        let spec = from_json(&value.to_string()).unwrap();
        let limits = parhelia_checkpoint::Limits::from_spec(&spec.checkpoint.limits);
        let default = parhelia_checkpoint::Limits::default();
        assert_eq!(limits.max_entries, 7);
        assert_eq!(limits.max_time, Duration::from_millis(1500));
        assert_eq!(limits.max_path_len, default.max_path_len);
        assert_eq!(limits.max_bytes, default.max_bytes);
        let plain = from_json(&example_json().to_string()).unwrap();
        assert_eq!(
            parhelia_checkpoint::Limits::from_spec(&plain.checkpoint.limits),
            default
        );
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
