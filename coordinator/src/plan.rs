//! Dispatch planning: validating a task request and deciding exactly what a
//! launch would do (the layout of the session on disk and the agent's spec).
//! Pure; the coordinator and `task create --dry-run` call the same functions,
//! so a dry run shows what a real launch writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::CodedError;
use crate::error_codes;
use crate::spec::{CheckpointSpec, LaunchSpec, SPEC_VERSION, SessionMode};

/// Defaults written into every spec.
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
pub const LINGER_AFTER_FINISH_MS: u64 = 600_000;
pub const STOP_GRACE_MS: u64 = 10_000;
/// Loopback, any free port: the agent announces the port it got in `agent.json`.
pub const LISTEN_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// What the coordinator's config says about agents: timing from `[agent]`,
/// checkpoint policy from `[checkpoint]`. Written into every spec.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSettings {
    pub heartbeat_interval_ms: u64,
    pub stop_grace_ms: u64,
    pub linger_after_finish_ms: u64,
    pub checkpoint: CheckpointSpec,
    /// `[rates.models]`, for the agent's per-response metering.
    pub model_prices: std::collections::BTreeMap<String, crate::config::ModelPrice>,
}

impl AgentSettings {
    /// `[agent]` and the model prices of `[rates]`.
    pub fn for_config(config: &crate::config::Config) -> Self {
        Self {
            model_prices: config.rates.models.clone(),
            ..Self::from(&config.agent)
        }
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            stop_grace_ms: STOP_GRACE_MS,
            linger_after_finish_ms: LINGER_AFTER_FINISH_MS,
            checkpoint: crate::spec::default_checkpoint_spec(),
            model_prices: crate::config::default_model_prices(),
        }
    }
}

impl From<&crate::config::AgentConfig> for AgentSettings {
    fn from(agent: &crate::config::AgentConfig) -> Self {
        Self {
            heartbeat_interval_ms: agent.heartbeat_interval_ms,
            stop_grace_ms: agent.stop_grace_ms,
            linger_after_finish_ms: agent.linger_after_finish_ms,
            checkpoint: crate::spec::checkpoint_spec(&agent.checkpoint),
            model_prices: crate::config::default_model_prices(),
        }
    }
}

/// The backends Parhelia knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Local,
    Modal,
}

impl BackendKind {
    /// Every backend, the one list behind `--backend`'s help and parsing.
    pub const ALL: [BackendKind; 2] = [BackendKind::Local, BackendKind::Modal];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Modal => "modal",
        }
    }
}

/// `--backend`: empty means `local`.
pub fn parse_backend(name: &str) -> Result<BackendKind, CodedError> {
    match name {
        "" | "local" => Ok(BackendKind::Local),
        "modal" => Ok(BackendKind::Modal),
        other => Err(CodedError::new(
            error_codes::UNKNOWN_BACKEND,
            format!(
                "unknown backend `{other}` (valid: {})",
                BackendKind::ALL.map(BackendKind::as_str).join(", ")
            ),
        )),
    }
}

/// A prompt must contain something other than whitespace.
pub fn validate_prompt(prompt: &str) -> Result<(), CodedError> {
    if prompt.trim().is_empty() {
        Err(CodedError::new(
            error_codes::EMPTY_PROMPT,
            "the task prompt is empty",
        ))
    } else {
        Ok(())
    }
}

/// Environment variables the CLI forwards from the user's shell to Claude
/// Code: exact names, plus everything starting with `CLAUDE_CODE_`.
pub const FORWARDED_ENV: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
    "CLAUDE_CODE_MAX_RETRIES",
    "DISABLE_TELEMETRY",
    "IS_SANDBOX",
    "HOME",
    "PATH",
];
pub const FORWARDED_ENV_PREFIX: &str = "CLAUDE_CODE_";

/// Most secrets one task may name (`--secret`, plus `modal.secrets` on Modal).
pub const MAX_SECRETS: usize = 32;

/// Environment variables a local `--secret` may not name: the launch's own
/// (the agent sets or drops them), and the dynamic loader's (they would shape
/// the agent, which runs outside the session's sandbox).
const RESERVED_SECRET_NAMES: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "CLAUDE_CONFIG_DIR",
    "DISABLE_TELEMETRY",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "IS_SANDBOX",
    "TMUX",
    "TMUX_PANE",
];

/// A task's secret names, checked and in order without repeats: on the local
/// backend environment variable names (`[A-Za-z_][A-Za-z0-9_]*`, not one the
/// launch sets itself, no `PARHELIA_*` or `LD_*`); on Modal, Modal secret
/// names (letters, digits, `-`, `_`, `.`; at most 64). E100 otherwise.
pub fn validate_secret_names(
    names: &[String],
    backend: BackendKind,
) -> Result<Vec<String>, CodedError> {
    let invalid = |m: String| CodedError::new(error_codes::INVALID_INPUT, m);
    let mut out: Vec<String> = Vec::new();
    for raw in names {
        let name = raw.trim();
        let ok = match backend {
            BackendKind::Local => {
                name.len() <= 128
                    && name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            BackendKind::Modal => {
                !name.is_empty()
                    && name.len() <= 64
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            }
        };
        if !ok {
            return Err(invalid(format!(
                "--secret {:?}: {}",
                raw,
                match backend {
                    BackendKind::Local =>
                        "not an environment variable name (letters, digits and _, not starting with a digit)",
                    BackendKind::Modal =>
                        "not a Modal secret name (letters, digits, -, _ and ., at most 64)",
                }
            )));
        }
        if backend == BackendKind::Local
            && (RESERVED_SECRET_NAMES.contains(&name)
                || name.starts_with("PARHELIA_")
                || name.starts_with("LD_"))
        {
            return Err(invalid(format!(
                "--secret {name}: the launch sets or drops this variable itself; it cannot be a secret"
            )));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    if out.len() > MAX_SECRETS {
        return Err(invalid(format!(
            "{} secrets: a task takes at most {MAX_SECRETS}",
            out.len()
        )));
    }
    Ok(out)
}

/// The values of a local task's secrets: each name from `primary` (the
/// submitter's environment, carried in the request), else `fallback` (the
/// coordinator's own). A name set in neither is E207, before anything starts.
pub fn secret_values(
    names: &[String],
    primary: impl Fn(&str) -> Option<String>,
    fallback: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, CodedError> {
    let mut values = BTreeMap::new();
    for name in names {
        match primary(name).or_else(|| fallback(name)) {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None => {
                return Err(CodedError::new(
                    error_codes::SECRET_NOT_SET,
                    format!(
                        "--secret {name}: the environment variable {name} is not set (in the shell that ran parhelia, nor the coordinator's)"
                    ),
                ));
            }
        }
    }
    Ok(values)
}

/// A task's `--region`: empty is none; Modal only (the local backend runs on
/// this machine: E100); letters, digits, `-` and `_`, at most 64.
pub fn validate_region(region: &str, backend: BackendKind) -> Result<Option<String>, CodedError> {
    let region = region.trim();
    if region.is_empty() {
        return Ok(None);
    }
    let invalid = |m: String| CodedError::new(error_codes::INVALID_INPUT, m);
    if backend == BackendKind::Local {
        return Err(invalid(format!(
            "--region {region}: a region applies to Modal sandboxes only; the local backend runs on this machine (leave --region out, or add --backend modal)"
        )));
    }
    if region.len() > 64
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(invalid(format!(
            "--region {region:?}: not a Modal region name (letters, digits, - and _, e.g. us-east)"
        )));
    }
    Ok(Some(region.to_string()))
}

/// Launch overrides the CLI resolves and sends along in the env map; the
/// coordinator consumes them and never passes them to the agent.
pub const CLAUDE_BIN_ENV: &str = "PARHELIA_CLAUDE_BIN";
pub const AGENT_BIN_ENV: &str = "PARHELIA_AGENT_BIN";

/// Picks the variables Claude Code needs from an environment.
pub fn forwarded_env(vars: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| FORWARDED_ENV.contains(&k.as_str()) || k.starts_with(FORWARDED_ENV_PREFIX))
        .collect()
}

/// The environment a launch takes from a request: only what Claude Code needs to reach
/// its model (the [`FORWARDED_ENV`] names and `CLAUDE_CODE_*`), never `PATH`, `HOME` or
/// any `PARHELIA_*` override; those come from `own` (the coordinator's environment).
pub fn request_env(
    request: &std::collections::HashMap<String, String>,
    own: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    const OWN: &[&str] = &["PATH", "HOME"];
    let mut env: BTreeMap<String, String> = forwarded_env(
        request
            .iter()
            .filter(|(k, _)| !OWN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    env.extend(own.into_iter().filter(|(k, _)| OWN.contains(&k.as_str())));
    env
}

/// The identifiers of one launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchIds {
    pub task_id: String,
    pub session_id: String,
    pub container_id: String,
    pub claude_session_id: String,
}

impl LaunchIds {
    /// Placeholders for a dry run, which assigns nothing.
    pub fn placeholders() -> Self {
        Self {
            task_id: "<task-id>".into(),
            session_id: "<session-id>".into(),
            container_id: "<container-id>".into(),
            claude_session_id: "<claude-session-uuid>".into(),
        }
    }
}

/// Where a local session and its container live inside the state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalLayout {
    pub session_dir: PathBuf,
    pub workspace_dir: PathBuf,
    pub volume_dir: PathBuf,
    pub container_dir: PathBuf,
    pub spec_path: PathBuf,
    pub claude_config_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub agent_log_path: PathBuf,
    pub agent_json_path: PathBuf,
}

pub fn local_layout(state_root: &Path, session_id: &str, container_id: &str) -> LocalLayout {
    let session_dir = state_root.join("sessions").join(session_id);
    let container_dir = state_root.join("containers").join(container_id);
    let runtime_dir = container_dir.join("runtime");
    LocalLayout {
        workspace_dir: session_dir.join("workspace"),
        volume_dir: session_dir.join("volume"),
        session_dir,
        spec_path: container_dir.join("spec.json"),
        claude_config_dir: container_dir.join("claude-config"),
        agent_log_path: runtime_dir.join("agent.log"),
        agent_json_path: runtime_dir.join("agent.json"),
        runtime_dir,
        container_dir,
    }
}

/// What the task asks for, after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRequest {
    pub prompt: String,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub interactive: bool,
    /// Continue the session's Claude Code conversation (`--resume`).
    pub resume: bool,
    /// The checkpoint the agent restores first (resume, rollback).
    pub restore_checkpoint: Option<String>,
    /// Claude Code's own `--max-budget-usd` (the budget's second fence).
    pub max_budget_usd: Option<f64>,
    /// What the coordinator has recorded this session spending so far (a
    /// resume): the agent's cost total starts from at least this, whatever
    /// its volume's journals still hold.
    pub prior_cost_usd: Option<f64>,
    /// Responses the coordinator charged outside any journal (a dead agent's
    /// transcripts): id and amount, for the agent's meter (see `spec.json`).
    pub charged_elsewhere: Vec<(String, f64)>,
}

/// The spec a local launch writes.
pub fn agent_spec(
    request: &SessionRequest,
    ids: &LaunchIds,
    layout: &LocalLayout,
    claude_bin: &Path,
    timing: &AgentSettings,
) -> LaunchSpec {
    LaunchSpec {
        version: SPEC_VERSION,
        session_id: ids.session_id.clone(),
        task_id: ids.task_id.clone(),
        container_id: ids.container_id.clone(),
        prompt: request.prompt.clone(),
        mode: if request.interactive {
            SessionMode::Interactive
        } else {
            SessionMode::Headless
        },
        claude_session_id: ids.claude_session_id.clone(),
        resume: request.resume,
        model: request.model.clone().filter(|m| !m.is_empty()),
        max_turns: request.max_turns.filter(|n| *n > 0),
        claude_bin: claude_bin.to_path_buf(),
        workspace_dir: layout.workspace_dir.clone(),
        claude_config_dir: layout.claude_config_dir.clone(),
        volume_dir: layout.volume_dir.clone(),
        runtime_dir: layout.runtime_dir.clone(),
        listen_addr: LISTEN_ADDR,
        heartbeat_interval_ms: timing.heartbeat_interval_ms,
        linger_after_finish_ms: timing.linger_after_finish_ms,
        stop_grace_ms: timing.stop_grace_ms,
        restore_checkpoint: request.restore_checkpoint.clone(),
        checkpoint: timing.checkpoint.clone(),
        max_budget_usd: request.max_budget_usd,
        prior_cost_usd: request.prior_cost_usd.filter(|c| *c > 0.0),
        charged_elsewhere: request
            .charged_elsewhere
            .iter()
            .map(|(message_id, cost_usd)| crate::spec::ChargedElsewhere {
                message_id: message_id.clone(),
                cost_usd: *cost_usd,
            })
            .collect(),
        claude_config_seed: None,
        sandbox: None,
        timeout_ms: None,
        session_user: None,
        model_prices: timing.model_prices.clone(),
    }
}

/// What `task create --dry-run` reports.
#[derive(Clone, Debug, Serialize)]
pub struct DryRunPlan {
    pub dry_run: bool,
    pub backend: BackendKind,
    /// The directory copied into the session, or null for an empty workspace.
    pub workspace_source: Option<PathBuf>,
    pub claude_bin: PathBuf,
    pub agent_bin: Option<PathBuf>,
    pub model: Option<String>,
    pub task_type: String,
    pub state_dir: PathBuf,
    /// `none` or `bwrap` (see `backend::isolation`).
    pub isolation: Isolation,
    /// Names only: values are never shown.
    pub env_names: Vec<String>,
    /// The task's secrets, by name (never a value): environment variables
    /// passed into a local session, Modal secrets attached to a sandbox.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The Modal region the sandbox would run in (Modal only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// This task's own `--set` values (on the coordinator's configuration,
    /// for this task only; the spec already holds their effect).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_set: Vec<String>,
    pub spec: LaunchSpec,
}

/// How a local session is confined (`backend/isolation.rs` decides it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    None,
    Bubblewrap,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::None => "none",
            Isolation::Bubblewrap => "bwrap",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends() {
        assert_eq!(parse_backend("").unwrap(), BackendKind::Local);
        assert_eq!(parse_backend("local").unwrap(), BackendKind::Local);
        assert_eq!(parse_backend("modal").unwrap(), BackendKind::Modal);
        assert_eq!(parse_backend("k8s").unwrap_err().code.code, "E103");
    }

    #[test]
    fn prompts() {
        assert!(validate_prompt("do it").is_ok());
        for empty in ["", "   ", "\n\t"] {
            assert_eq!(validate_prompt(empty).unwrap_err().code.code, "E101");
        }
    }

    #[test]
    fn a_request_cannot_shape_the_launch() {
        let request: std::collections::HashMap<String, String> = [
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ("PATH", "/evil"),
            ("HOME", "/evil-home"),
            ("PARHELIA_ISOLATION", "none"),
            ("PARHELIA_CLAUDE_BIN", "/work/evil.sh"),
            ("PARHELIA_AGENT_BIN", "/work/evil-agent"),
            ("LD_PRELOAD", "/work/evil.so"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into_iter()
        .collect();
        let env = request_env(
            &request,
            [
                ("PATH", "/usr/bin"),
                ("HOME", "/home/u"),
                ("SHELL", "/bin/sh"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
                ("HOME", "/home/u"),
                ("PATH", "/usr/bin"),
            ]
        );
    }

    /// Secret names: environment variables locally (never one the launch
    /// owns), Modal secret names on Modal; repeats dropped; a value comes from
    /// the request, else the coordinator, else E207.
    #[test]
    fn secret_names_are_checked_per_backend_and_values_found_or_e207() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            validate_secret_names(
                &names(&["GITHUB_TOKEN", " GITHUB_TOKEN", "_X1"]),
                BackendKind::Local
            )
            .unwrap(),
            ["GITHUB_TOKEN", "_X1"]
        );
        for bad in [
            "PATH",
            "HOME",
            "PARHELIA_SESSION_SECRET",
            "LD_PRELOAD",
            "1X",
            "A-B",
            "",
            "A=B",
        ] {
            let err = validate_secret_names(&names(&[bad]), BackendKind::Local).unwrap_err();
            assert_eq!(err.code.code, "E100", "{bad}");
        }
        assert_eq!(
            validate_secret_names(&names(&["github-token", "aws.prod"]), BackendKind::Modal)
                .unwrap(),
            ["github-token", "aws.prod"]
        );
        assert!(validate_secret_names(&names(&["a b"]), BackendKind::Modal).is_err());
        let many: Vec<String> = (0..=MAX_SECRETS).map(|i| format!("S{i}")).collect();
        assert!(validate_secret_names(&many, BackendKind::Local).is_err());

        let wanted = names(&["A", "B"]);
        let values = secret_values(
            &wanted,
            |n| (n == "A").then(|| "from-request".to_string()),
            |n| (n != "C").then(|| format!("own-{n}")),
        )
        .unwrap();
        assert_eq!(values["A"], "from-request");
        assert_eq!(values["B"], "own-B");
        let err = secret_values(&names(&["C"]), |_| None, |_| None).unwrap_err();
        assert_eq!(err.code.code, "E207");
        assert!(!err.message.contains("own-"), "{}", err.message);
    }

    #[test]
    fn a_region_is_modal_only_and_a_plain_name() {
        assert_eq!(validate_region("", BackendKind::Local).unwrap(), None);
        assert_eq!(
            validate_region("us-east", BackendKind::Local)
                .unwrap_err()
                .code
                .code,
            "E100"
        );
        assert_eq!(
            validate_region(" us-east ", BackendKind::Modal)
                .unwrap()
                .as_deref(),
            Some("us-east")
        );
        assert!(validate_region("us east", BackendKind::Modal).is_err());
    }

    #[test]
    fn forwarded_env_keeps_only_what_claude_needs() {
        let env = forwarded_env(
            [
                ("ANTHROPIC_API_KEY", "k"),
                ("CLAUDE_CODE_MAX_RETRIES", "1"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("PATH", "/bin"),
                ("AWS_SECRET_ACCESS_KEY", "no"),
                ("PARHELIA_SESSION_SECRET", "no"),
                ("CLAUDE_CONFIG_DIR", "no"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let keys: Vec<_> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ANTHROPIC_API_KEY",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
                "CLAUDE_CODE_MAX_RETRIES",
                "PATH"
            ]
        );
    }

    #[test]
    fn spec_follows_the_layout() {
        let ids = LaunchIds {
            task_id: "task-00000001".into(),
            session_id: "sess-00000002".into(),
            container_id: "ctr-00000003".into(),
            claude_session_id: "uuid".into(),
        };
        let layout = local_layout(
            Path::new("/s/.parhelia"),
            &ids.session_id,
            &ids.container_id,
        );
        let request = SessionRequest {
            prompt: "p".into(),
            model: Some(String::new()),
            max_turns: Some(0),
            interactive: false,
            resume: false,
            restore_checkpoint: None,
            max_budget_usd: None,
            prior_cost_usd: None,
            charged_elsewhere: Vec::new(),
        };
        let spec = agent_spec(
            &request,
            &ids,
            &layout,
            Path::new("/bin/claude"),
            &AgentSettings {
                heartbeat_interval_ms: 250,
                ..AgentSettings::default()
            },
        );
        assert_eq!(spec.heartbeat_interval_ms, 250);
        assert_eq!(spec.stop_grace_ms, STOP_GRACE_MS);
        assert_eq!(
            spec.workspace_dir,
            Path::new("/s/.parhelia/sessions/sess-00000002/workspace")
        );
        assert_eq!(
            spec.volume_dir,
            Path::new("/s/.parhelia/sessions/sess-00000002/volume")
        );
        assert_eq!(
            spec.runtime_dir,
            Path::new("/s/.parhelia/containers/ctr-00000003/runtime")
        );
        assert_eq!(
            spec.claude_config_dir,
            Path::new("/s/.parhelia/containers/ctr-00000003/claude-config")
        );
        assert_eq!(
            layout.spec_path,
            Path::new("/s/.parhelia/containers/ctr-00000003/spec.json")
        );
        assert_eq!(
            spec.model, None,
            "an empty model means Claude Code's default"
        );
        assert_eq!(spec.max_turns, None, "0 means no limit");
        assert_eq!(spec.mode, SessionMode::Headless);
        assert_eq!(spec.version, 1);
    }
}
