//! Configuration: `config.toml` files, `PARHELIA_*` variables and `--set`
//! flags, layered, validated and typed. The format is documented in
//! `docs/formats/config.md`.
//!
//! Layers, later ones win: built-in defaults < the user file
//! (`$XDG_CONFIG_HOME/parhelia/config.toml`, else
//! `~/.config/parhelia/config.toml`) < the project file (`config.toml` in
//! the state directory, i.e. `.parhelia/config.toml`) < environment
//! variables < `--set section.key=value` flags. Every effective value
//! remembers which layer it came from (`parhelia config show`).
//!
//! Unknown keys and sections in a file are reported (a warning naming the
//! file and the key; `doctor` lists them), never silently dropped. A value of
//! the wrong type or out of range is an error (E100) naming the file (or
//! variable, or flag) and the key. An unknown key in `--set` is an error too:
//! a flag is typed by hand, a file may be newer than this build.
//!
//! [`resolve`] is pure (file contents and the environment are arguments);
//! [`load`] reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CodedError;
use crate::error_codes;

/// The type (and range) of one key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Bool,
    UInt {
        min: u64,
        max: u64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Str,
    OneOf(&'static [&'static str]),
    /// A path; relative ones are resolved against the directory that holds
    /// the state directory (the project root for `.parhelia/`).
    Path,
    /// A list of strings (a TOML array; comma-separated in the environment).
    StrList,
}

impl Kind {
    fn expected(&self) -> String {
        match self {
            Kind::Bool => "true or false".into(),
            Kind::UInt { min, max } if *max == u64::MAX => format!("an integer ≥ {min}"),
            Kind::UInt { min, max } => format!("an integer from {min} to {max}"),
            Kind::Float { min, max } if *max == f64::MAX => format!("a number ≥ {min}"),
            Kind::Float { min, max } => format!("a number from {min} to {max}"),
            Kind::Str => "a string".into(),
            Kind::OneOf(options) => format!("one of {}", options.join(", ")),
            Kind::Path => "a path".into(),
            Kind::StrList => "a list of strings".into(),
        }
    }
}

/// A typed value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    UInt(u64),
    Float(f64),
    Str(String),
    List(Vec<String>),
    /// No value (e.g. `orchestrator.db_path` by default).
    Unset,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::UInt(n) => write!(f, "{n}"),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 1e15 => write!(f, "{x:.1}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(items) => write!(f, "{items:?}"),
            Value::Unset => f.write_str("(unset)"),
        }
    }
}

impl Value {
    /// The value as TOML (what `config show` prints, so its output pastes
    /// into a config.toml); `None` when unset.
    pub fn toml_text(&self) -> Option<String> {
        let value = match self {
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::UInt(n) => match i64::try_from(*n) {
                Ok(n) => toml::Value::Integer(n),
                // TOML integers are 64-bit signed; no key allows more.
                Err(_) => toml::Value::Float(*n as f64),
            },
            Value::Float(x) => toml::Value::Float(*x),
            Value::Str(s) => toml::Value::String(s.clone()),
            Value::List(items) => {
                toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect())
            }
            Value::Unset => return None,
        };
        Some(value.to_string())
    }
}

/// One key of the schema.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    pub default: fn() -> Value,
    /// The environment variable, when it is not `PARHELIA_<SECTION>_<KEY>`.
    pub env_override: Option<&'static str>,
    pub doc: &'static str,
}

impl KeySpec {
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// The environment variable that sets this key.
    pub fn env_var(&self) -> String {
        match self.env_override {
            Some(name) => name.to_string(),
            None => format!(
                "PARHELIA_{}_{}",
                self.section.to_uppercase(),
                self.key.to_uppercase()
            ),
        }
    }
}

macro_rules! keys {
    ($( $section:literal . $key:literal : $kind:expr, $default:expr, $env:expr, $doc:literal; )*) => {
        /// Every key Parhelia reads, in documentation order.
        pub static KEYS: &[KeySpec] = &[
            $( KeySpec {
                section: $section,
                key: $key,
                kind: $kind,
                default: || $default,
                env_override: $env,
                doc: $doc,
            }, )*
        ];
    };
}

const ANY_UINT: u64 = u64::MAX;

keys! {
    "modal"."volume_name": Kind::Str, Value::Str("parhelia-data".into()), None,
        "Modal volume holding session volumes (modal backend).";
    "modal"."cpu_count": Kind::UInt { min: 1, max: 64 }, Value::UInt(4), None,
        "CPUs per sandbox (modal backend).";
    "modal"."memory_mb": Kind::UInt { min: 256, max: ANY_UINT }, Value::UInt(16_384), None,
        "Memory per sandbox in MiB (modal backend).";
    "modal"."default_timeout_hours": Kind::Float { min: 0.01, max: 24.0 }, Value::Float(4.0), None,
        "Sandbox timeout (modal backend).";
    "modal"."app_name": Kind::Str, Value::Str("parhelia".into()), None,
        "The Modal app that owns Parhelia's sandboxes (modal backend).";
    "modal"."secret_name": Kind::Str, Value::Str("anthropic-api-key".into()), None,
        "The Modal secret that gives sandboxes ANTHROPIC_API_KEY (modal backend).";
    "modal"."secrets": Kind::StrList, Value::List(Vec::new()), None,
        "More Modal secrets attached to every sandbox, by name (a task adds its own with `--secret`).";
    "modal"."region": Kind::Str, Value::Unset, None,
        "The Modal region sandboxes run in (`--region` wins; unset: Modal's choice). Modal charges more for a pinned region.";
    "modal"."gpu": Kind::StrList, Value::List(Vec::new()), None,
        "GPU types for a Modal task without `--gpu`, tried in order when Modal has no capacity (empty: no GPU).";
    "modal"."idle_timeout_minutes": Kind::Float { min: 1.0, max: 1440.0 }, Value::Unset, None,
        "Stop a sandbox after this long without activity (unset: only the timeout).";
    "modal"."python": Kind::Str, Value::Str("python3".into()), None,
        "The Python that runs the Modal bridge (needs modal==1.6.4).";
    "modal"."bridge_pythonpath": Kind::Str, Value::Unset, None,
        "Extra PYTHONPATH for the bridge, searched before the installed packages (tests point it at the SDK stand-in).";
    "modal"."call_timeout_seconds": Kind::Float { min: 1.0, max: 3600.0 }, Value::Float(60.0), None,
        "Deadline of one Modal call (listing, tunnels, volume files).";
    "modal"."create_timeout_seconds": Kind::Float { min: 10.0, max: 7200.0 }, Value::Float(1500.0), None,
        "Deadline of creating a sandbox (scarce GPUs take up to ~21 minutes to schedule).";
    "modal"."agent_bin": Kind::Path, Value::Unset, None,
        "The Linux x86-64 parhelia-agent baked into the image (default: the one beside parhelia).";
    "modal"."claude_code_version": Kind::Str, Value::Str("2.1.330".into()), None,
        "The Claude Code version installed in the image.";
    "modal"."volume_mount": Kind::Path, Value::Str("/vol".into()), None,
        "Where the volume is mounted inside sandboxes.";
    "modal"."container_home": Kind::Path, Value::Str("/home/parhelia".into()), None,
        "HOME inside sandboxes; sessions live under it.";
    "modal"."claude_path": Kind::Path, Value::Str("/usr/local/bin/claude".into()), None,
        "Claude Code inside the image.";
    "modal"."agent_path": Kind::Path, Value::Str("/usr/local/bin/parhelia-agent".into()), None,
        "The agent inside the image.";
    "modal"."run_as_user": Kind::Str, Value::Str("parhelia".into()), None,
        "The image's non-root user the agent runs as (`root`: do not switch users).";
    "modal"."agent_port": Kind::UInt { min: 0, max: 65_535 }, Value::UInt(50_051), None,
        "The agent's gRPC port inside the sandbox, exposed as an h2 tunnel (0: any; the stand-in only).";
    "modal"."usage_poll_seconds": Kind::UInt { min: 1, max: 86_400 }, Value::UInt(60), None,
        "How often ended sandboxes' compute cost is reconciled with Modal's own usage figures.";
    "modal"."usage_settle_seconds": Kind::UInt { min: 0, max: 21_600 }, Value::UInt(600), None,
        "How long after a sandbox ended before its usage is reconciled (Modal reports usage minutes late).";
    "budget"."default_ceiling_usd": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(50.0), None,
        "Global spending ceiling.";
    "budget"."warning_threshold_percent": Kind::UInt { min: 1, max: 100 }, Value::UInt(80), None,
        "Warn when this share of a ceiling is spent.";
    "budget"."daily_ceiling_usd": Kind::Float { min: 0.0, max: f64::MAX }, Value::Unset, None,
        "Spending ceiling per UTC day (unset: none).";
    "rates"."cpu_core_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(crate::rates::embedded().compute.cpu_core_usd_per_second.usd), None,
        "Compute rate per CPU core (billed at max(request, usage)).";
    "rates"."memory_gib_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(crate::rates::embedded().compute.memory_gib_usd_per_second.usd), None,
        "Compute rate per GiB of memory (billed at max(request, usage)).";
    "rates"."gpu_t4_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("T4")), None,
        "Rate per T4 GPU.";
    "rates"."gpu_l4_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("L4")), None,
        "Rate per L4 GPU.";
    "rates"."gpu_a10_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("A10")), None,
        "Rate per A10 GPU.";
    "rates"."gpu_a10g_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("A10G")), None,
        "Rate per A10G GPU.";
    "rates"."gpu_l40s_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("L40S")), None,
        "Rate per L40S GPU.";
    "rates"."gpu_a100_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("A100")), None,
        "Rate per A100 40GB GPU.";
    "rates"."gpu_a100_80gb_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("A100-80GB")), None,
        "Rate per A100 80GB GPU.";
    "rates"."gpu_h100_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("H100")), None,
        "Rate per H100 GPU.";
    "rates"."gpu_h200_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("H200")), None,
        "Rate per H200 GPU.";
    "rates"."gpu_b200_usd_per_second": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(gpu_default("B200")), None,
        "Rate per B200 GPU.";
    "rates"."storage_gib_usd_per_month": Kind::Float { min: 0.0, max: f64::MAX }, Value::Float(crate::rates::embedded().storage.volume_gib_usd_per_month.usd), None,
        "Volume storage (Modal) per GiB held for a 30-day month; local storage is the user's own disk, priced 0.";
    "rates"."local_multiplier": Kind::Float { min: 0.0, max: 1.0e9 }, Value::Float(0.0), None,
        "The local backend's compute rate as a multiple of this table (0: local compute is free).";
    "orchestrator"."db_path": Kind::Path, Value::Unset, None,
        "The SQLite database (default: parhelia.db in the state directory).";
    "orchestrator"."max_concurrent_workers": Kind::UInt { min: 1, max: 10_000 }, Value::UInt(10), None,
        "Tasks running at once; further tasks wait in the queue.";
    "reconciler"."poll_interval_seconds": Kind::Float { min: 0.05, max: 86_400.0 }, Value::Float(60.0), None,
        "How often the coordinator reconciles.";
    "reconciler"."stale_threshold_seconds": Kind::Float { min: 0.1, max: f64::MAX }, Value::Float(300.0), None,
        "Silence after which a container is dead; a dead container the backend no longer lists is lost.";
    "reconciler"."degraded_after_missed_heartbeats": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(3), None,
        "Missed heartbeat intervals before a container is degraded.";
    "reconciler"."unhealthy_after_missed_heartbeats": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(6), None,
        "Missed heartbeat intervals before a container is unhealthy.";
    "reconciler"."auto_terminate_orphans": Kind::Bool, Value::Bool(false), None,
        "Terminate our labelled containers that no live record wants.";
    "reconciler"."auto_resume": Kind::Bool, Value::Bool(false), None,
        "Resume sessions of lost containers automatically.";
    "reconciler"."max_auto_resumes": Kind::UInt { min: 0, max: 100 }, Value::UInt(3), None,
        "Automatic resumes per task at most.";
    "local"."isolation": Kind::OneOf(&["auto", "required", "bwrap", "none"]), Value::Str("auto".into()), Some("PARHELIA_ISOLATION"),
        "Confine local sessions with bubblewrap: auto (when it works here; says so when not), required (or bwrap: launch nothing unconfined) or none.";
    "agent"."heartbeat_interval_ms": Kind::UInt { min: 100, max: 3_600_000 }, Value::UInt(5_000), Some("PARHELIA_HEARTBEAT_INTERVAL_MS"),
        "How often agents send heartbeats.";
    "agent"."stop_grace_ms": Kind::UInt { min: 0, max: 3_600_000 }, Value::UInt(10_000), None,
        "How long a stopping agent gives Claude Code after SIGTERM before SIGKILL.";
    "checkpoint"."interval_seconds": Kind::Float { min: 0.0, max: 604_800.0 }, Value::Float(600.0), None,
        "Periodic checkpoints (skipped when nothing changed); 0 turns them off.";
    "checkpoint"."excludes": Kind::StrList, Value::List(Vec::new()), None,
        "Gitignore-style patterns (relative to the workspace) never captured and never touched by a restore.";
    "checkpoint"."keep_last": Kind::UInt { min: 1, max: ANY_UINT }, Value::Unset, None,
        "Retention: keep at most this many checkpoints per session (unset: all).";
    "checkpoint"."keep_within_hours": Kind::Float { min: 0.0, max: f64::MAX }, Value::Unset, None,
        "Retention: keep checkpoints younger than this (unset: no age limit).";
    "checkpoint"."max_store_mb": Kind::UInt { min: 1, max: ANY_UINT }, Value::Unset, None,
        "Quota for one session's checkpoint store, in MiB (unset: none).";
    "checkpoint"."max_restore_bytes": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(64 << 30), None,
        "Caps reading a checkpoint: logical bytes one checkpoint may restore (E624 above).";
    "checkpoint"."max_restore_entries": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(10_000_000), None,
        "Caps reading a checkpoint: files, directories and links one checkpoint may hold (E624 above).";
    "checkpoint"."max_path_bytes": Kind::UInt { min: 1, max: 4096 }, Value::UInt(4096), None,
        "Caps reading a checkpoint: bytes of one stored path or link target (E624 above).";
    "checkpoint"."max_read_bytes": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(1 << 30), None,
        "Caps reading a checkpoint: bytes of one file read into memory (`checkpoint diff --file`; E624 above).";
    "checkpoint"."max_diff_bytes": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(16 << 20), None,
        "Files larger than this are shown as \"too large to diff\" instead of a line diff.";
    "checkpoint"."max_restore_seconds": Kind::Float { min: 0.001, max: 31_536_000.0 }, Value::Float(21_600.0), None,
        "Caps reading a checkpoint: wall-clock time of one restore, verify or diff (E624 above).";
    "checkpoint"."lock_wait_seconds": Kind::Float { min: 0.0, max: 86_400.0 }, Value::Float(60.0), None,
        "How long a command or an agent waits for another process's hold on a session's checkpoint store (a checkpoint, prune, verify or repair) before E622; 0: not at all.";
    "agent"."linger_after_finish_ms": Kind::UInt { min: 0, max: 86_400_000 }, Value::UInt(600_000), None,
        "How long an agent keeps serving after its session finished.";
    "workspace"."max_copy_bytes": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(10 << 30), None,
        "Largest `--workspace` copied into a session, in bytes (E112 beyond it unless `--allow-large-workspace`).";
    "workspace"."max_copy_files": Kind::UInt { min: 1, max: ANY_UINT }, Value::UInt(1_000_000), None,
        "Most files and directories in a `--workspace` copied into a session (E112 beyond it unless `--allow-large-workspace`).";
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Source {
    Default,
    User { path: PathBuf },
    Project { path: PathBuf },
    Env { var: String },
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::User { .. } => f.write_str("user file"),
            Source::Project { .. } => f.write_str("project file"),
            Source::Env { var } => write!(f, "env {var}"),
            Source::Flag => f.write_str("--set"),
        }
    }
}

/// One effective value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: Value,
    pub source: Source,
}

/// A key a file set that this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnknownKey {
    pub file: PathBuf,
    pub key: String,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown config key `{}` in {} (ignored)",
            self.key,
            self.file.display()
        )
    }
}

/// Which file a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    User,
    Project,
}

/// A config file as found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigFile {
    pub role: FileRole,
    pub path: PathBuf,
    pub found: bool,
}

/// The typed configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub modal: ModalConfig,
    pub budget: BudgetConfig,
    pub rates: RatesConfig,
    pub orchestrator: OrchestratorConfig,
    pub reconciler: ReconcilerConfig,
    pub local: LocalConfig,
    pub agent: AgentConfig,
    pub workspace: WorkspaceConfig,
}

/// `[workspace]`: what `--workspace` may bring into a session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkspaceConfig {
    pub max_copy_bytes: u64,
    pub max_copy_files: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModalConfig {
    pub volume_name: String,
    pub cpu_count: u64,
    pub memory_mb: u64,
    pub default_timeout_hours: f64,
    pub app_name: String,
    pub secret_name: String,
    /// More named Modal secrets for every sandbox (`modal.secrets`).
    pub secrets: Vec<String>,
    /// `modal.region`; `None`: Modal's choice.
    pub region: Option<String>,
    /// `modal.gpu`: the GPU list of a Modal task without `--gpu`.
    pub gpu: Vec<String>,
    pub idle_timeout_minutes: Option<f64>,
    pub python: String,
    pub bridge_pythonpath: Option<String>,
    pub call_timeout_seconds: f64,
    pub create_timeout_seconds: f64,
    pub agent_bin: Option<PathBuf>,
    pub claude_code_version: String,
    pub volume_mount: PathBuf,
    pub container_home: PathBuf,
    pub claude_path: PathBuf,
    pub agent_path: PathBuf,
    pub agent_port: u64,
    pub run_as_user: String,
    pub usage_poll_seconds: u64,
    pub usage_settle_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetConfig {
    pub default_ceiling_usd: f64,
    pub warning_threshold_percent: u64,
    /// `None`: no daily ceiling (unless `parhelia budget set --daily`).
    pub daily_ceiling_usd: Option<f64>,
}

/// The rate table in force (`[rates]`): the embedded table
/// (`coordinator/rates/*.toml`, [`crate::rates`]) with config overrides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RatesConfig {
    pub cpu_core_usd_per_second: f64,
    pub memory_gib_usd_per_second: f64,
    /// By GPU type as Modal names it (`T4`, `A100`, `A100-80GB`, …).
    pub gpu_usd_per_second: BTreeMap<String, f64>,
    /// The local backend pays this multiple of the table.
    pub local_multiplier: f64,
    /// Modal volume storage, USD per GiB per 30-day month (local: 0).
    pub storage_gib_usd_per_month: f64,
    /// Model prices by model name as Claude Code requests it (`[rates.models."<name>"]`),
    /// for metering each response (see `docs/dev/cost-metering.md`).
    pub models: BTreeMap<String, ModelPrice>,
}

pub use crate::rates::ModelPrice;

/// A GPU type's price in the embedded rate table (0 when it has none; a
/// test keeps [`GPU_RATE_KEYS`] and the table the same set).
fn gpu_default(name: &str) -> f64 {
    crate::rates::embedded()
        .compute
        .gpu_usd_per_second
        .get(name)
        .map(|f| f.usd)
        .unwrap_or(0.0)
}

/// The built-in model prices: the embedded rate table's (`coordinator/rates/`), which
/// are what Claude Code 2.1.330 itself charges, measured (`docs/dev/claude-code-notes.md`).
pub fn default_model_prices() -> BTreeMap<String, ModelPrice> {
    crate::rates::embedded().model_prices()
}

/// `[rates.models]` of one file: each model's four prices, finite and not negative.
fn model_prices_from_toml(value: &toml::Value) -> Result<BTreeMap<String, ModelPrice>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        input_usd_per_mtok: f64,
        output_usd_per_mtok: f64,
        cache_write_usd_per_mtok: f64,
        cache_read_usd_per_mtok: f64,
    }
    let entries: BTreeMap<String, Entry> = value
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    let mut prices = BTreeMap::new();
    for (model, e) in entries {
        let figures = [
            e.input_usd_per_mtok,
            e.output_usd_per_mtok,
            e.cache_write_usd_per_mtok,
            e.cache_read_usd_per_mtok,
        ];
        if model.is_empty() || model.len() > 128 {
            return Err(format!("model name {model:?} must be 1 to 128 bytes"));
        }
        if !figures.iter().all(|p| p.is_finite() && *p >= 0.0) {
            return Err(format!(
                "the prices of {model:?} must be finite and not negative"
            ));
        }
        prices.insert(
            model,
            ModelPrice {
                input_usd_per_mtok: e.input_usd_per_mtok,
                output_usd_per_mtok: e.output_usd_per_mtok,
                cache_write_usd_per_mtok: e.cache_write_usd_per_mtok,
                cache_read_usd_per_mtok: e.cache_read_usd_per_mtok,
            },
        );
    }
    Ok(prices)
}

/// GPU types: (Modal's name, the `[rates]` key).
pub const GPU_RATE_KEYS: &[(&str, &str)] = &[
    ("T4", "rates.gpu_t4_usd_per_second"),
    ("L4", "rates.gpu_l4_usd_per_second"),
    ("A10", "rates.gpu_a10_usd_per_second"),
    ("A10G", "rates.gpu_a10g_usd_per_second"),
    ("L40S", "rates.gpu_l40s_usd_per_second"),
    ("A100", "rates.gpu_a100_usd_per_second"),
    ("A100-80GB", "rates.gpu_a100_80gb_usd_per_second"),
    ("H100", "rates.gpu_h100_usd_per_second"),
    ("H200", "rates.gpu_h200_usd_per_second"),
    ("B200", "rates.gpu_b200_usd_per_second"),
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OrchestratorConfig {
    /// Absolute; `None`: `parhelia.db` in the state directory.
    pub db_path: Option<PathBuf>,
    pub max_concurrent_workers: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReconcilerConfig {
    pub poll_interval_seconds: f64,
    pub stale_threshold_seconds: f64,
    pub degraded_after_missed_heartbeats: u64,
    pub unhealthy_after_missed_heartbeats: u64,
    pub auto_terminate_orphans: bool,
    pub auto_resume: bool,
    pub max_auto_resumes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalConfig {
    /// `auto`, `bwrap` or `none`.
    pub isolation: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentConfig {
    pub heartbeat_interval_ms: u64,
    pub stop_grace_ms: u64,
    pub linger_after_finish_ms: u64,
    pub checkpoint: CheckpointConfig,
}

/// `[checkpoint]`: when agents checkpoint, what they leave out, what they keep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointConfig {
    pub interval_seconds: f64,
    pub excludes: Vec<String>,
    pub keep_last: Option<u64>,
    pub keep_within_hours: Option<f64>,
    pub max_store_mb: Option<u64>,
    pub max_restore_bytes: u64,
    pub max_restore_entries: u64,
    pub max_path_bytes: u64,
    pub max_read_bytes: u64,
    pub max_diff_bytes: u64,
    pub max_restore_seconds: f64,
    /// How long a store's lock is waited for before E622 (`lock_wait`).
    pub lock_wait_seconds: f64,
}

impl CheckpointConfig {
    /// The caps on reading a checkpoint store (restore, verify, diff, show):
    /// the coordinator's and, through the spec, the agent's.
    pub fn read_limits(&self) -> parhelia_checkpoint::Limits {
        parhelia_checkpoint::Limits {
            max_bytes: self.max_restore_bytes,
            max_entries: self.max_restore_entries,
            max_path_len: self.max_path_bytes as usize,
            max_read_bytes: self.max_read_bytes,
            max_diff_bytes: self.max_diff_bytes,
            max_time: std::time::Duration::from_secs_f64(self.max_restore_seconds),
            ..parhelia_checkpoint::Limits::default()
        }
    }

    /// How long the coordinator, the CLI and (through the spec) the agent wait for
    /// another process's hold on a store's lock before E622.
    pub fn lock_wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.lock_wait_seconds)
    }
}

impl ReconcilerConfig {
    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.poll_interval_seconds)
    }

    pub fn stale_threshold_ms(&self) -> i64 {
        (self.stale_threshold_seconds * 1000.0) as i64
    }
}

impl Config {
    /// The built-in defaults.
    pub fn defaults() -> Config {
        resolve(&[], &BTreeMap::new(), &[], Path::new("/"))
            .expect("the defaults are valid")
            .config
    }

    /// The reconcile policy for a coordinator id.
    pub fn policy(&self, coordinator_id: &str) -> crate::reconcile::Policy {
        crate::reconcile::Policy {
            coordinator_id: coordinator_id.to_string(),
            thresholds: crate::container_state::HealthThresholds {
                degraded_after_missed: self.reconciler.degraded_after_missed_heartbeats as u32,
                unhealthy_after_missed: self.reconciler.unhealthy_after_missed_heartbeats as u32,
                stale_threshold_ms: self.reconciler.stale_threshold_ms(),
            },
            default_heartbeat_interval_ms: self.agent.heartbeat_interval_ms as i64,
            auto_terminate_orphans: self.reconciler.auto_terminate_orphans,
            auto_resume: self.reconciler.auto_resume,
            max_auto_resumes: self.reconciler.max_auto_resumes as u32,
            // An agent asked to stop gets `stop_grace_ms` to stop Claude Code,
            // then flushes and exits; five more seconds cover that.
            stop_timeout_ms: self.agent.stop_grace_ms as i64 + 5_000,
        }
    }
}

/// The resolved configuration and how it came about.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadedConfig {
    pub config: Config,
    /// Every key, in schema order.
    pub settings: Vec<Setting>,
    pub unknown_keys: Vec<UnknownKey>,
    pub files: Vec<ConfigFile>,
}

impl LoadedConfig {
    pub fn setting(&self, dotted: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == dotted)
    }

    /// Prints one warning per unknown key to stderr.
    pub fn warn_unknown_keys(&self) {
        for unknown in &self.unknown_keys {
            eprintln!("warning: {unknown}");
        }
    }
}

fn invalid(message: String) -> CodedError {
    CodedError::new(error_codes::INVALID_INPUT, message)
}

fn find_key(section: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.section == section && k.key == key)
}

/// A value from a TOML file.
fn from_toml(spec: &KeySpec, value: &toml::Value) -> Result<Value, String> {
    let got = || format!("got {value}");
    let parsed = match (spec.kind, value) {
        (Kind::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
        (Kind::UInt { .. }, toml::Value::Integer(n)) if *n >= 0 => Value::UInt(*n as u64),
        (Kind::Float { .. }, toml::Value::Float(x)) => Value::Float(*x),
        (Kind::Float { .. }, toml::Value::Integer(n)) => Value::Float(*n as f64),
        (Kind::Str | Kind::OneOf(_) | Kind::Path, toml::Value::String(s)) => Value::Str(s.clone()),
        (Kind::StrList, toml::Value::Array(items)) => Value::List(
            items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(got)?,
        ),
        _ => return Err(got()),
    };
    check_range(spec, parsed).map_err(|_| got())
}

/// A value from an environment variable or a flag.
fn from_text(spec: &KeySpec, text: &str) -> Result<Value, String> {
    let got = || format!("got {text:?}");
    let text = text.trim();
    let parsed = match spec.kind {
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(got()),
        },
        Kind::UInt { .. } => Value::UInt(text.parse().map_err(|_| got())?),
        Kind::Float { .. } => {
            let x: f64 = text.parse().map_err(|_| got())?;
            if !x.is_finite() {
                return Err(got());
            }
            Value::Float(x)
        }
        Kind::Str | Kind::OneOf(_) | Kind::Path => Value::Str(text.to_string()),
        Kind::StrList => Value::List(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    };
    check_range(spec, parsed).map_err(|_| got())
}

fn check_range(spec: &KeySpec, value: Value) -> Result<Value, ()> {
    let ok = match (&spec.kind, &value) {
        (Kind::UInt { min, max }, Value::UInt(n)) => n >= min && n <= max,
        (Kind::Float { min, max }, Value::Float(x)) => x.is_finite() && x >= min && x <= max,
        (Kind::OneOf(options), Value::Str(s)) => options.contains(&s.as_str()),
        (Kind::Path, Value::Str(s)) => !s.is_empty(),
        _ => true,
    };
    if ok { Ok(value) } else { Err(()) }
}

/// One config file's text (or `None` when it does not exist).
pub struct FileLayer<'a> {
    pub role: FileRole,
    pub path: &'a Path,
    pub text: Option<&'a str>,
}

/// Resolves the layers (pure). `env` holds the process environment (only
/// the variables in [`KEYS`] are read); `flags` are `section.key=value`;
/// `base_dir` anchors relative paths.
pub fn resolve(
    files: &[FileLayer<'_>],
    env: &BTreeMap<String, String>,
    flags: &[String],
    base_dir: &Path,
) -> Result<LoadedConfig, CodedError> {
    let mut values: BTreeMap<String, (Value, Source)> = KEYS
        .iter()
        .map(|k| (k.dotted(), ((k.default)(), Source::Default)))
        .collect();
    let mut unknown_keys = Vec::new();
    let mut found = Vec::new();
    let mut model_prices = default_model_prices();

    for file in files {
        found.push(ConfigFile {
            role: file.role,
            path: file.path.to_path_buf(),
            found: file.text.is_some(),
        });
        let Some(text) = file.text else { continue };
        let source = match file.role {
            FileRole::User => Source::User {
                path: file.path.to_path_buf(),
            },
            FileRole::Project => Source::Project {
                path: file.path.to_path_buf(),
            },
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            invalid(format!(
                "{} is not valid TOML: {}",
                file.path.display(),
                e.message()
            ))
        })?;
        for (section, body) in &table {
            let Some(body) = body.as_table() else {
                unknown_keys.push(UnknownKey {
                    file: file.path.to_path_buf(),
                    key: section.clone(),
                });
                continue;
            };
            for (key, value) in body {
                if section == "rates" && key == "models" {
                    let prices = model_prices_from_toml(value).map_err(|got| {
                        invalid(format!(
                            "invalid value for `rates.models` in {}: {got}",
                            file.path.display()
                        ))
                    })?;
                    // A later file overrides (or adds) whole models.
                    model_prices.extend(prices);
                    continue;
                }
                let Some(spec) = find_key(section, key) else {
                    unknown_keys.push(UnknownKey {
                        file: file.path.to_path_buf(),
                        key: format!("{section}.{key}"),
                    });
                    continue;
                };
                let parsed = from_toml(spec, value).map_err(|got| {
                    invalid(format!(
                        "invalid value for `{}` in {}: expected {}, {got}",
                        spec.dotted(),
                        file.path.display(),
                        spec.kind.expected()
                    ))
                })?;
                values.insert(spec.dotted(), (parsed, source.clone()));
            }
        }
    }

    for spec in KEYS {
        let var = spec.env_var();
        let Some(text) = env.get(&var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let parsed = from_text(spec, text).map_err(|got| {
            invalid(format!(
                "invalid value for `{}` in the environment variable {var}: expected {}, {got}",
                spec.dotted(),
                spec.kind.expected()
            ))
        })?;
        values.insert(spec.dotted(), (parsed, Source::Env { var }));
    }

    for flag in flags {
        let (spec, parsed) = parse_flag(flag)?;
        values.insert(spec.dotted(), (parsed, Source::Flag));
    }

    // Paths are made absolute once, here.
    for spec in KEYS.iter().filter(|k| k.kind == Kind::Path) {
        if let Some((Value::Str(text), _)) = values.get_mut(&spec.dotted()) {
            let path = Path::new(text.as_str());
            if !path.is_absolute() {
                *text = base_dir.join(path).to_string_lossy().into_owned();
            }
        }
    }

    let settings: Vec<Setting> = KEYS
        .iter()
        .map(|k| {
            let (value, source) = values.remove(&k.dotted()).expect("every key has a value");
            Setting {
                key: k.dotted(),
                value,
                source,
            }
        })
        .collect();
    let mut config = typed(&settings)?;
    config.rates.models = model_prices;
    Ok(LoadedConfig {
        config,
        settings,
        unknown_keys,
        files: found,
    })
}

/// One `--set section.key=value`: its key and typed value (E100 for an
/// unknown key or a bad value).
fn parse_flag(flag: &str) -> Result<(&'static KeySpec, Value), CodedError> {
    let (dotted, text) = flag.split_once('=').ok_or_else(|| {
        invalid(format!(
            "`--set {flag}` is not of the form section.key=value"
        ))
    })?;
    let spec = dotted
        .split_once('.')
        .and_then(|(section, key)| find_key(section.trim(), key.trim()))
        .ok_or_else(|| {
            invalid(format!(
                "unknown config key `{dotted}` in `--set {flag}` (see `parhelia config show`)"
            ))
        })?;
    let parsed = from_text(spec, text).map_err(|got| {
        invalid(format!(
            "invalid value for `{}` in `--set {flag}`: expected {}, {got}",
            spec.dotted(),
            spec.kind.expected()
        ))
    })?;
    Ok((spec, parsed))
}

/// The keys `task create --set` may give one task: what only that task's
/// agent spec (its checkpoint policy, how long its agent lingers) and its
/// workspace copy use. Every other key is the coordinator's own — its queue,
/// database, reconciler and health judgement (heartbeats, stop grace), the
/// checkpoint read caps it restores with, isolation, rates, the Modal account
/// — and is refused for one task (E119).
pub const PER_TASK_KEYS: &[&str] = &[
    "agent.linger_after_finish_ms",
    "checkpoint.interval_seconds",
    "checkpoint.excludes",
    "checkpoint.keep_last",
    "checkpoint.keep_within_hours",
    "checkpoint.max_store_mb",
    "workspace.max_copy_bytes",
    "workspace.max_copy_files",
];

/// Most `--set` values one task may carry, and the longest one (they come
/// over the control socket and are stored with the task).
pub const MAX_TASK_FLAGS: usize = 64;
pub const MAX_TASK_FLAG_BYTES: usize = 4096;

/// The configuration one task launches with: `base` (the coordinator's)
/// with the task's own `--set` values on top, parsed exactly as `--set` is
/// everywhere (E100 for an unknown key or a bad value). A key that is not
/// in [`PER_TASK_KEYS`] is E119. Pure; `base` is never changed.
pub fn task_config(base: &Config, flags: &[String]) -> Result<Config, CodedError> {
    if flags.len() > MAX_TASK_FLAGS {
        return Err(invalid(format!(
            "{} `--set` values: a task takes at most {MAX_TASK_FLAGS}",
            flags.len()
        )));
    }
    let mut config = base.clone();
    for flag in flags {
        if flag.len() > MAX_TASK_FLAG_BYTES {
            return Err(invalid(format!(
                "a `--set` value of {} bytes: at most {MAX_TASK_FLAG_BYTES}",
                flag.len()
            )));
        }
        let (spec, value) = parse_flag(flag)?;
        let dotted = spec.dotted();
        if !PER_TASK_KEYS.contains(&dotted.as_str()) {
            return Err(CodedError::new(
                error_codes::SET_NOT_PER_TASK,
                format!(
                    "`--set {flag}`: `{dotted}` is the coordinator's own setting and cannot apply \
                     to one task; put it in config.toml and run `parhelia coordinator reload` \
                     (a task may set {})",
                    PER_TASK_KEYS.join(", ")
                ),
            ));
        }
        let checkpoint = &mut config.agent.checkpoint;
        match (dotted.as_str(), value) {
            ("agent.linger_after_finish_ms", Value::UInt(n)) => {
                config.agent.linger_after_finish_ms = n
            }
            ("checkpoint.interval_seconds", Value::Float(x)) => checkpoint.interval_seconds = x,
            ("checkpoint.excludes", Value::List(items)) => checkpoint.excludes = items,
            ("checkpoint.keep_last", Value::UInt(n)) => checkpoint.keep_last = Some(n),
            ("checkpoint.keep_within_hours", Value::Float(x)) => {
                checkpoint.keep_within_hours = Some(x)
            }
            ("checkpoint.max_store_mb", Value::UInt(n)) => checkpoint.max_store_mb = Some(n),
            ("workspace.max_copy_bytes", Value::UInt(n)) => config.workspace.max_copy_bytes = n,
            ("workspace.max_copy_files", Value::UInt(n)) => config.workspace.max_copy_files = n,
            (key, value) => {
                return Err(invalid(format!(
                    "`--set {flag}`: {key} cannot take {value} for one task"
                )));
            }
        }
    }
    Ok(config)
}

fn typed(settings: &[Setting]) -> Result<Config, CodedError> {
    let get = |key: &str| -> &Setting {
        settings
            .iter()
            .find(|s| s.key == key)
            .expect("key in schema")
    };
    let uint = |key: &str| match get(key).value {
        Value::UInt(n) => n,
        _ => unreachable!("{key} is an integer"),
    };
    let float = |key: &str| match get(key).value {
        Value::Float(x) => x,
        _ => unreachable!("{key} is a number"),
    };
    let boolean = |key: &str| matches!(get(key).value, Value::Bool(true));
    let path_opt = |key: &str| match &get(key).value {
        Value::Str(s) => Some(PathBuf::from(s)),
        _ => None,
    };
    let string = |key: &str| match &get(key).value {
        Value::Str(s) => s.clone(),
        _ => unreachable!("{key} is a string"),
    };
    let config = Config {
        modal: ModalConfig {
            volume_name: string("modal.volume_name"),
            cpu_count: uint("modal.cpu_count"),
            memory_mb: uint("modal.memory_mb"),
            default_timeout_hours: float("modal.default_timeout_hours"),
            app_name: string("modal.app_name"),
            secret_name: string("modal.secret_name"),
            secrets: match &get("modal.secrets").value {
                Value::List(items) => items.clone(),
                _ => Vec::new(),
            },
            region: match &get("modal.region").value {
                Value::Str(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                _ => None,
            },
            gpu: match &get("modal.gpu").value {
                Value::List(items) => items.clone(),
                _ => Vec::new(),
            },
            idle_timeout_minutes: match get("modal.idle_timeout_minutes").value {
                Value::Float(x) => Some(x),
                _ => None,
            },
            python: string("modal.python"),
            bridge_pythonpath: match &get("modal.bridge_pythonpath").value {
                Value::Str(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            },
            call_timeout_seconds: float("modal.call_timeout_seconds"),
            create_timeout_seconds: float("modal.create_timeout_seconds"),
            agent_bin: path_opt("modal.agent_bin"),
            claude_code_version: string("modal.claude_code_version"),
            volume_mount: path_opt("modal.volume_mount").expect("has a default"),
            container_home: path_opt("modal.container_home").expect("has a default"),
            claude_path: path_opt("modal.claude_path").expect("has a default"),
            agent_path: path_opt("modal.agent_path").expect("has a default"),
            agent_port: uint("modal.agent_port"),
            run_as_user: string("modal.run_as_user"),
            usage_poll_seconds: uint("modal.usage_poll_seconds"),
            usage_settle_seconds: uint("modal.usage_settle_seconds"),
        },
        budget: BudgetConfig {
            default_ceiling_usd: float("budget.default_ceiling_usd"),
            warning_threshold_percent: uint("budget.warning_threshold_percent"),
            daily_ceiling_usd: match get("budget.daily_ceiling_usd").value {
                Value::Float(x) => Some(x),
                _ => None,
            },
        },
        rates: RatesConfig {
            cpu_core_usd_per_second: float("rates.cpu_core_usd_per_second"),
            memory_gib_usd_per_second: float("rates.memory_gib_usd_per_second"),
            gpu_usd_per_second: GPU_RATE_KEYS
                .iter()
                .map(|(name, key)| (name.to_string(), float(key)))
                .collect(),
            local_multiplier: float("rates.local_multiplier"),
            storage_gib_usd_per_month: float("rates.storage_gib_usd_per_month"),
            models: default_model_prices(),
        },
        orchestrator: OrchestratorConfig {
            db_path: match &get("orchestrator.db_path").value {
                Value::Str(s) => Some(PathBuf::from(s)),
                _ => None,
            },
            max_concurrent_workers: uint("orchestrator.max_concurrent_workers"),
        },
        reconciler: ReconcilerConfig {
            poll_interval_seconds: float("reconciler.poll_interval_seconds"),
            stale_threshold_seconds: float("reconciler.stale_threshold_seconds"),
            degraded_after_missed_heartbeats: uint("reconciler.degraded_after_missed_heartbeats"),
            unhealthy_after_missed_heartbeats: uint("reconciler.unhealthy_after_missed_heartbeats"),
            auto_terminate_orphans: boolean("reconciler.auto_terminate_orphans"),
            auto_resume: boolean("reconciler.auto_resume"),
            max_auto_resumes: uint("reconciler.max_auto_resumes"),
        },
        local: LocalConfig {
            isolation: string("local.isolation"),
        },
        agent: AgentConfig {
            heartbeat_interval_ms: uint("agent.heartbeat_interval_ms"),
            stop_grace_ms: uint("agent.stop_grace_ms"),
            linger_after_finish_ms: uint("agent.linger_after_finish_ms"),
            checkpoint: CheckpointConfig {
                interval_seconds: float("checkpoint.interval_seconds"),
                excludes: match &get("checkpoint.excludes").value {
                    Value::List(items) => items.clone(),
                    _ => Vec::new(),
                },
                keep_last: match get("checkpoint.keep_last").value {
                    Value::UInt(n) => Some(n),
                    _ => None,
                },
                keep_within_hours: match get("checkpoint.keep_within_hours").value {
                    Value::Float(x) => Some(x),
                    _ => None,
                },
                max_store_mb: match get("checkpoint.max_store_mb").value {
                    Value::UInt(n) => Some(n),
                    _ => None,
                },
                max_restore_bytes: uint("checkpoint.max_restore_bytes"),
                max_restore_entries: uint("checkpoint.max_restore_entries"),
                max_path_bytes: uint("checkpoint.max_path_bytes"),
                max_read_bytes: uint("checkpoint.max_read_bytes"),
                max_diff_bytes: uint("checkpoint.max_diff_bytes"),
                max_restore_seconds: float("checkpoint.max_restore_seconds"),
                lock_wait_seconds: float("checkpoint.lock_wait_seconds"),
            },
        },
        workspace: WorkspaceConfig {
            max_copy_bytes: uint("workspace.max_copy_bytes"),
            max_copy_files: uint("workspace.max_copy_files"),
        },
    };
    let r = &config.reconciler;
    if r.unhealthy_after_missed_heartbeats < r.degraded_after_missed_heartbeats {
        let s = get("reconciler.unhealthy_after_missed_heartbeats");
        return Err(invalid(format!(
            "`reconciler.unhealthy_after_missed_heartbeats` ({}, from {}) must be at least `reconciler.degraded_after_missed_heartbeats` ({})",
            r.unhealthy_after_missed_heartbeats,
            describe_source(&s.source),
            r.degraded_after_missed_heartbeats
        )));
    }
    Ok(config)
}

/// The source with its file, for messages.
pub fn describe_source(source: &Source) -> String {
    match source {
        Source::User { path } | Source::Project { path } => {
            format!("{source} {}", path.display())
        }
        other => other.to_string(),
    }
}

/// The user config file's path.
pub fn user_config_path(xdg_config_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    let base = xdg_config_home
        .filter(|p| p.is_absolute())
        .map(Path::to_path_buf)
        .or_else(|| home.map(|h| h.join(".config")))?;
    Some(base.join("parhelia").join("config.toml"))
}

/// Reads the files and the environment and resolves them. `state_root` is
/// the state directory (its `config.toml` is the project file; its parent
/// anchors relative paths).
pub fn load(state_root: &Path, flags: &[String]) -> Result<LoadedConfig, CodedError> {
    let user = user_config_path(
        std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .as_deref(),
        std::env::var_os("HOME").map(PathBuf::from).as_deref(),
    );
    let project = state_root.join("config.toml");
    let read = |path: &Path| -> Result<Option<String>, CodedError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(invalid(format!("cannot read {}: {e}", path.display()))),
        }
    };
    let user_text = match &user {
        Some(path) => read(path)?,
        None => None,
    };
    let project_text = read(&project)?;
    let mut files = Vec::new();
    if let Some(path) = &user {
        files.push(FileLayer {
            role: FileRole::User,
            path,
            text: user_text.as_deref(),
        });
    }
    files.push(FileLayer {
        role: FileRole::Project,
        path: &project,
        text: project_text.as_deref(),
    });
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("PARHELIA_"))
        .collect();
    let base = state_root.parent().unwrap_or(state_root);
    resolve(&files, &env, flags, base)
}

/// `parhelia config show` as text: TOML you could paste, with each value's
/// source as a comment.
pub fn show_text(loaded: &LoadedConfig) -> String {
    let mut out = String::new();
    for file in &loaded.files {
        out.push_str(&format!(
            "# {} config: {} ({})\n",
            match file.role {
                FileRole::User => "user",
                FileRole::Project => "project",
            },
            file.path.display(),
            if file.found { "found" } else { "not found" }
        ));
    }
    // Each section once (a TOML table may not repeat), in the order the
    // schema first names it; within it, the schema's order.
    let mut sections: Vec<&str> = Vec::new();
    for spec in KEYS {
        if !sections.contains(&spec.section) {
            sections.push(spec.section);
        }
    }
    for section in sections {
        out.push_str(&format!("\n[{section}]\n"));
        for (spec, setting) in KEYS.iter().zip(&loaded.settings) {
            if spec.section != section {
                continue;
            }
            let line = match setting.value.toml_text() {
                None => format!("# {} =", spec.key),
                Some(value) => format!("{} = {value}", spec.key),
            };
            out.push_str(&format!("{line:<42} # {}\n", setting.source));
        }
    }
    if !loaded.unknown_keys.is_empty() {
        out.push('\n');
        for unknown in &loaded.unknown_keys {
            out.push_str(&format!("# {unknown}\n"));
        }
    }
    out
}

// The effective rates against the table (`budget show`).

/// A figure the configuration sets to something other than the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateOverride {
    pub key: String,
    pub table_usd: f64,
    pub effective_usd: f64,
    /// Where the effective value came from (`user file /…/config.toml`,
    /// `env PARHELIA_RATES_…`, `--set`, or `config` for model prices).
    pub source: String,
}

/// Every figure whose effective value is not the table's, or that a config
/// layer sets (even to the table's value), in the table's order.
pub fn rate_overrides(
    table: &crate::rates::RateTable,
    rates: &RatesConfig,
    settings: &[Setting],
) -> Vec<RateOverride> {
    let setting = |key: &str| settings.iter().find(|s| s.key == key);
    let mut out = Vec::new();
    for (key, figure) in table.figures() {
        let effective = effective_figure(rates, &key);
        let set_by = setting(&key).filter(|s| s.source != Source::Default);
        let differs = effective.is_some_and(|e| e != figure.usd);
        if set_by.is_none() && !differs {
            continue;
        }
        out.push(RateOverride {
            effective_usd: effective.unwrap_or(figure.usd),
            table_usd: figure.usd,
            source: set_by
                .map(|s| describe_source(&s.source))
                .unwrap_or_else(|| "config".into()),
            key,
        });
    }
    out
}

/// The configured value of one of the table's figures (by its dotted key).
fn effective_figure(rates: &RatesConfig, key: &str) -> Option<f64> {
    match key {
        "rates.cpu_core_usd_per_second" => Some(rates.cpu_core_usd_per_second),
        "rates.memory_gib_usd_per_second" => Some(rates.memory_gib_usd_per_second),
        crate::rates::STORAGE_KEY => Some(rates.storage_gib_usd_per_month),
        _ => {
            if let Some(rest) = key.strip_prefix("rates.models.\"") {
                let (model, field) = rest.split_once("\".")?;
                let price = rates.models.get(model)?;
                return match field {
                    "input_usd_per_mtok" => Some(price.input_usd_per_mtok),
                    "output_usd_per_mtok" => Some(price.output_usd_per_mtok),
                    "cache_write_usd_per_mtok" => Some(price.cache_write_usd_per_mtok),
                    "cache_read_usd_per_mtok" => Some(price.cache_read_usd_per_mtok),
                    _ => None,
                };
            }
            rates
                .gpu_usd_per_second
                .iter()
                .find(|(gpu, _)| crate::rates::gpu_key(gpu) == key)
                .map(|(_, usd)| *usd)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's `--set` gives exactly what the same `--set` gives a whole
    /// configuration, for every per-task key; the base is left alone.
    #[test]
    fn task_config_matches_resolve_for_every_per_task_key() {
        let samples = [
            ("agent.linger_after_finish_ms", "1234"),
            ("checkpoint.interval_seconds", "7.5"),
            ("checkpoint.excludes", "target/, *.log"),
            ("checkpoint.keep_last", "3"),
            ("checkpoint.keep_within_hours", "2"),
            ("checkpoint.max_store_mb", "50"),
            ("workspace.max_copy_bytes", "1000"),
            ("workspace.max_copy_files", "10"),
        ];
        assert_eq!(samples.len(), PER_TASK_KEYS.len());
        let base = Config::defaults();
        for (key, text) in samples {
            assert!(PER_TASK_KEYS.contains(&key), "{key}");
            let flag = format!("{key}={text}");
            let whole = resolve(
                &[],
                &BTreeMap::new(),
                std::slice::from_ref(&flag),
                Path::new("/"),
            )
            .unwrap()
            .config;
            let task = task_config(&base, std::slice::from_ref(&flag)).unwrap();
            assert_eq!(task, whole, "{flag}");
            assert_ne!(task, base, "{flag} changes something");
        }
        assert_eq!(base, Config::defaults());
    }

    #[test]
    fn task_config_refuses_coordinator_keys_unknown_keys_and_bad_values() {
        let base = Config::defaults();
        for key in KEYS.iter().map(KeySpec::dotted) {
            if PER_TASK_KEYS.contains(&key.as_str()) {
                continue;
            }
            let default = KEYS
                .iter()
                .find(|k| k.dotted() == key)
                .map(|k| (k.default)())
                .unwrap();
            let text = match default {
                Value::Unset => continue,
                Value::List(items) => items.join(","),
                Value::Str(s) => s,
                other => other.to_string(),
            };
            let err = task_config(&base, &[format!("{key}={text}")]).unwrap_err();
            assert_eq!(err.code.code, "E119", "{key}: {}", err.message);
            assert!(err.message.contains(&key), "{}", err.message);
            assert!(
                err.message.contains("coordinator reload"),
                "{}",
                err.message
            );
        }
        for flag in [
            "checkpoint.nope=1",
            "checkpoint.keep_last=-1",
            "no-equals",
            "x=1",
        ] {
            let err = task_config(&base, &[flag.to_string()]).unwrap_err();
            assert_eq!(err.code.code, "E100", "{flag}: {}", err.message);
        }
        let many = vec!["checkpoint.keep_last=1".to_string(); MAX_TASK_FLAGS + 1];
        assert_eq!(task_config(&base, &many).unwrap_err().code.code, "E100");
        let long = format!("checkpoint.excludes={}", "a".repeat(MAX_TASK_FLAG_BYTES));
        assert_eq!(task_config(&base, &[long]).unwrap_err().code.code, "E100");
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve_with(
        user: Option<&str>,
        project: Option<&str>,
        vars: &[(&str, &str)],
        flags: &[&str],
    ) -> Result<LoadedConfig, CodedError> {
        let files = [
            FileLayer {
                role: FileRole::User,
                path: Path::new("/home/u/.config/parhelia/config.toml"),
                text: user,
            },
            FileLayer {
                role: FileRole::Project,
                path: Path::new("/p/.parhelia/config.toml"),
                text: project,
            },
        ];
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        resolve(&files, &env(vars), &flags, Path::new("/p"))
    }

    /// `config show`'s text, pasted into a config.toml, gives the same
    /// values (and each section appears once).
    fn assert_show_round_trips(loaded: &LoadedConfig) {
        let text = show_text(loaded);
        for spec in KEYS {
            let header = format!("\n[{}]\n", spec.section);
            assert_eq!(text.matches(&header).count(), 1, "{header:?} in\n{text}");
        }
        let pasted = resolve_with(None, Some(&text), &[], &[])
            .unwrap_or_else(|e| panic!("config show does not paste: {e}\n{text}"));
        assert!(pasted.unknown_keys.is_empty(), "{:?}", pasted.unknown_keys);
        for (a, b) in loaded.settings.iter().zip(&pasted.settings) {
            assert_eq!(a.value, b.value, "{} in\n{text}", a.key);
        }
    }

    #[test]
    fn config_show_round_trips_through_config_toml() {
        assert_show_round_trips(&resolve_with(None, None, &[], &[]).unwrap());
        let set = [
            "agent.stop_grace_ms=0",
            "checkpoint.excludes=target/, a \"quoted\" \u{e9}\u{1b}",
            "orchestrator.db_path=db/x.db",
            "budget.daily_ceiling_usd=1e300",
            "modal.volume_name=v\\w\n",
        ];
        let loaded = resolve_with(None, None, &[], &set).unwrap();
        assert_show_round_trips(&loaded);
        insta::assert_snapshot!(
            "config_show_defaults",
            show_text(&resolve_with(None, None, &[], &[]).unwrap())
        );
    }

    proptest::proptest! {
        #[test]
        fn config_show_round_trips_any_values(
            workers in 1u64..=10_000,
            poll in 0.05f64..86_400.0,
            name in "\\PC{0,12}",
            excludes in proptest::collection::vec("\\PC{0,8}", 0..3),
            auto_resume: bool,
        ) {
            let mut project = toml::Table::new();
            let mut orchestrator = toml::Table::new();
            orchestrator.insert("max_concurrent_workers".into(), toml::Value::Integer(workers as i64));
            project.insert("orchestrator".into(), orchestrator.into());
            let mut reconciler = toml::Table::new();
            reconciler.insert("poll_interval_seconds".into(), toml::Value::Float(poll));
            reconciler.insert("auto_resume".into(), toml::Value::Boolean(auto_resume));
            project.insert("reconciler".into(), reconciler.into());
            let mut modal = toml::Table::new();
            modal.insert("app_name".into(), toml::Value::String(name));
            project.insert("modal".into(), modal.into());
            let mut checkpoint = toml::Table::new();
            checkpoint.insert("excludes".into(), toml::Value::Array(excludes.into_iter().map(toml::Value::String).collect()));
            project.insert("checkpoint".into(), checkpoint.into());
            let text = toml::to_string(&project).unwrap();
            let loaded = resolve_with(None, Some(&text), &[], &[]).unwrap();
            assert_show_round_trips(&loaded);
        }
    }

    #[test]
    fn defaults_match_the_seeds() {
        let c = Config::defaults();
        assert_eq!(c.orchestrator.max_concurrent_workers, 10);
        assert_eq!(c.reconciler.poll_interval_seconds, 60.0);
        assert_eq!(c.reconciler.stale_threshold_seconds, 300.0);
        assert!(!c.reconciler.auto_terminate_orphans);
        assert_eq!(c.budget.default_ceiling_usd, 50.0);
        assert_eq!(c.modal.volume_name, "parhelia-data");
        assert_eq!(c.local.isolation, "auto");
        assert_eq!(c.agent.heartbeat_interval_ms, 5_000);
        assert_eq!(c.orchestrator.db_path, None);
    }

    #[test]
    fn layers_apply_in_order_and_remember_their_source() {
        let user = "[orchestrator]\nmax_concurrent_workers = 2\n[reconciler]\npoll_interval_seconds = 5\nauto_resume = true\n";
        let project = "[orchestrator]\nmax_concurrent_workers = 3\ndb_path = \".parhelia/orchestrator.db\"\n[reconciler]\nstale_threshold_seconds = 30.5\n";
        let vars = [
            ("PARHELIA_RECONCILER_STALE_THRESHOLD_SECONDS", "2"),
            ("PARHELIA_ISOLATION", "none"),
            ("PARHELIA_HEARTBEAT_INTERVAL_MS", "250"),
            ("PARHELIA_NOT_A_CONFIG_KEY", "x"),
        ];
        let loaded = resolve_with(
            Some(user),
            Some(project),
            &vars,
            &["orchestrator.max_concurrent_workers=7"],
        )
        .unwrap();
        let c = &loaded.config;
        // (key, value, source) for every layer.
        assert_eq!(c.orchestrator.max_concurrent_workers, 7);
        assert_eq!(
            loaded
                .setting("orchestrator.max_concurrent_workers")
                .unwrap()
                .source,
            Source::Flag
        );
        assert_eq!(c.reconciler.stale_threshold_seconds, 2.0);
        assert_eq!(
            loaded
                .setting("reconciler.stale_threshold_seconds")
                .unwrap()
                .source,
            Source::Env {
                var: "PARHELIA_RECONCILER_STALE_THRESHOLD_SECONDS".into()
            }
        );
        assert_eq!(
            c.orchestrator.db_path.as_deref(),
            Some(Path::new("/p/.parhelia/orchestrator.db"))
        );
        assert!(matches!(
            loaded.setting("orchestrator.db_path").unwrap().source,
            Source::Project { .. }
        ));
        assert_eq!(c.reconciler.poll_interval_seconds, 5.0);
        assert!(matches!(
            loaded
                .setting("reconciler.poll_interval_seconds")
                .unwrap()
                .source,
            Source::User { .. }
        ));
        assert!(c.reconciler.auto_resume);
        assert_eq!(c.local.isolation, "none");
        assert_eq!(c.agent.heartbeat_interval_ms, 250);
        assert_eq!(
            loaded.setting("budget.default_ceiling_usd").unwrap().source,
            Source::Default
        );
        assert!(loaded.unknown_keys.is_empty());
        let text = show_text(&loaded);
        assert!(
            text.contains("max_concurrent_workers = 7") && text.contains("# --set"),
            "{text}"
        );
        assert!(text.contains("# env PARHELIA_ISOLATION"), "{text}");
    }

    #[test]
    fn model_prices_default_and_override_per_model() {
        let loaded = resolve_with(None, None, &[], &[]).unwrap();
        assert_eq!(loaded.config.rates.models, default_model_prices());
        assert_eq!(
            loaded.config.rates.models["claude-opus-5-5"].output_usd_per_mtok,
            20.0
        );
        let file = "[rates.models.\"claude-opus-5-5\"]\ninput_usd_per_mtok = 5.0\noutput_usd_per_mtok = 25.0\ncache_write_usd_per_mtok = 6.25\ncache_read_usd_per_mtok = 0.5\n[rates.models.\"my-model\"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\ncache_write_usd_per_mtok = 0\ncache_read_usd_per_mtok = 0\n";
        let loaded = resolve_with(None, Some(file), &[], &[]).unwrap();
        let models = &loaded.config.rates.models;
        assert_eq!(models["claude-opus-5-5"].input_usd_per_mtok, 5.0);
        assert_eq!(models["my-model"].output_usd_per_mtok, 2.0);
        assert_eq!(models["claude-haiku-4-5"].input_usd_per_mtok, 1.0);
        assert!(loaded.unknown_keys.is_empty());
        for bad in [
            "[rates.models.m]\ninput_usd_per_mtok = -1.0\noutput_usd_per_mtok = 2\ncache_write_usd_per_mtok = 0\ncache_read_usd_per_mtok = 0\n",
            "[rates.models.m]\ninput_usd_per_mtok = nan\noutput_usd_per_mtok = 2\ncache_write_usd_per_mtok = 0\ncache_read_usd_per_mtok = 0\n",
            "[rates.models.m]\ninput_usd_per_mtok = 1.0\n",
            "[rates.models.m]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\ncache_write_usd_per_mtok = 0\ncache_read_usd_per_mtok = 0\nsurprise = 1\n",
        ] {
            let err = resolve_with(None, Some(bad), &[], &[]).unwrap_err();
            assert_eq!(err.code.code, "E100", "{bad}");
            assert!(err.to_string().contains("rates.models"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_reported_with_their_file() {
        let loaded = resolve_with(
            None,
            Some("toplevel = true\n[reconciler]\npoll_interval = 5\n[frobnicate]\nx = 1\n"),
            &[],
            &[],
        )
        .unwrap();
        let unknown: Vec<String> = loaded.unknown_keys.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            unknown,
            [
                "unknown config key `frobnicate.x` in /p/.parhelia/config.toml (ignored)",
                "unknown config key `reconciler.poll_interval` in /p/.parhelia/config.toml (ignored)",
                "unknown config key `toplevel` in /p/.parhelia/config.toml (ignored)",
            ]
        );
        // The rest still applies.
        assert_eq!(loaded.config.reconciler.poll_interval_seconds, 60.0);
    }

    #[test]
    fn invalid_values_are_e100_naming_file_and_key() {
        type Case<'a> = (
            Option<&'a str>,
            &'a [(&'a str, &'a str)],
            &'a [&'a str],
            &'a str,
        );
        let cases: [Case; 8] = [
            (
                Some("[orchestrator]\nmax_concurrent_workers = \"ten\"\n"),
                &[],
                &[],
                "invalid value for `orchestrator.max_concurrent_workers` in /p/.parhelia/config.toml: expected an integer from 1 to 10000, got \"ten\"",
            ),
            (
                Some("[orchestrator]\nmax_concurrent_workers = 0\n"),
                &[],
                &[],
                "invalid value for `orchestrator.max_concurrent_workers` in /p/.parhelia/config.toml: expected an integer from 1 to 10000, got 0",
            ),
            (
                Some("[local]\nisolation = \"docker\"\n"),
                &[],
                &[],
                "invalid value for `local.isolation` in /p/.parhelia/config.toml: expected one of auto, required, bwrap, none, got \"docker\"",
            ),
            (
                Some("[reconciler\n"),
                &[],
                &[],
                "/p/.parhelia/config.toml is not valid TOML",
            ),
            (
                None,
                &[("PARHELIA_HEARTBEAT_INTERVAL_MS", "soon")],
                &[],
                "invalid value for `agent.heartbeat_interval_ms` in the environment variable PARHELIA_HEARTBEAT_INTERVAL_MS: expected an integer from 100 to 3600000, got \"soon\"",
            ),
            (
                None,
                &[],
                &["reconciler.auto_resume=maybe"],
                "invalid value for `reconciler.auto_resume` in `--set reconciler.auto_resume=maybe`: expected true or false, got \"maybe\"",
            ),
            (
                None,
                &[],
                &["reconciler.nope=1"],
                "unknown config key `reconciler.nope` in `--set reconciler.nope=1`",
            ),
            (
                Some(
                    "[reconciler]\ndegraded_after_missed_heartbeats = 5\nunhealthy_after_missed_heartbeats = 4\n",
                ),
                &[],
                &[],
                "`reconciler.unhealthy_after_missed_heartbeats` (4, from project file /p/.parhelia/config.toml) must be at least",
            ),
        ];
        for (project, vars, flags, expected) in cases {
            let err = resolve_with(None, project, vars, flags).unwrap_err();
            assert_eq!(err.code.code, "E100", "{err}");
            assert!(
                err.message.starts_with(expected),
                "{}\n  expected: {expected}",
                err.message
            );
        }
    }

    #[test]
    fn user_config_location() {
        assert_eq!(
            user_config_path(Some(Path::new("/x")), Some(Path::new("/h"))),
            Some(PathBuf::from("/x/parhelia/config.toml"))
        );
        assert_eq!(
            user_config_path(Some(Path::new("rel")), Some(Path::new("/h"))),
            Some(PathBuf::from("/h/.config/parhelia/config.toml"))
        );
        assert_eq!(user_config_path(None, None), None);
    }

    #[test]
    fn every_key_has_a_valid_default_and_env_name() {
        for spec in KEYS {
            let default = (spec.default)();
            if default != Value::Unset {
                assert_eq!(
                    check_range(spec, default.clone()),
                    Ok(default),
                    "{}",
                    spec.dotted()
                );
            }
            assert!(spec.env_var().starts_with("PARHELIA_"));
            assert!(spec.doc.ends_with('.'), "{}", spec.dotted());
        }
        let policy = Config::defaults().policy("coord-1");
        assert_eq!(policy.thresholds.stale_threshold_ms, 300_000);
        assert_eq!(policy.stop_timeout_ms, 15_000);
    }

    #[test]
    fn overrides_name_what_config_changed_and_where() {
        let table = crate::rates::embedded();
        let loaded = resolve(
            &[],
            &BTreeMap::new(),
            &[
                "rates.gpu_a100_usd_per_second=0.001".into(),
                "rates.storage_gib_usd_per_month=0.2".into(),
            ],
            std::path::Path::new("/"),
        )
        .unwrap();
        let mut rates = loaded.config.rates.clone();
        rates
            .models
            .get_mut("claude-haiku-4-5")
            .unwrap()
            .output_usd_per_mtok = 6.0;
        let found = rate_overrides(table, &rates, &loaded.settings);
        let keys: Vec<(&str, f64, &str)> = found
            .iter()
            .map(|o| (o.key.as_str(), o.effective_usd, o.source.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("rates.gpu_a100_usd_per_second", 0.001, "--set"),
                // Set, though to the table's own value: still named.
                (crate::rates::STORAGE_KEY, 0.2, "--set"),
                (
                    "rates.models.\"claude-haiku-4-5\".output_usd_per_mtok",
                    6.0,
                    "config"
                ),
            ]
        );
        let defaults = resolve(&[], &BTreeMap::new(), &[], std::path::Path::new("/")).unwrap();
        assert!(rate_overrides(table, &defaults.config.rates, &defaults.settings).is_empty());
    }

    #[test]
    fn every_gpu_type_of_the_config_schema_is_in_the_table_and_back() {
        let table = crate::rates::embedded();
        let names: Vec<&str> = GPU_RATE_KEYS.iter().map(|(n, _)| *n).collect();
        let mut in_table: Vec<&str> = table
            .compute
            .gpu_usd_per_second
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(sorted, in_table);
        for (name, key) in GPU_RATE_KEYS {
            assert_eq!(crate::rates::gpu_key(name), *key);
        }
    }
}
