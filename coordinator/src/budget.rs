//! Budget arithmetic: compute rates, charges, estimates, ceilings and the
//! watchdog's verdict. Pure: no SQLite, no tonic, no processes; the service
//! layer gathers the figures from the ledger and carries the verdicts out.
//!
//! The ledger (`docs/formats/database.md`, table `ledger`) holds two kinds of
//! charges: **compute**, accrued on every heartbeat as elapsed time × the rate
//! of the container's resources ([`compute_rate_usd_per_second`]), and
//! **model**, the increase of the agent's `session_cost_usd` (the session's
//! model cost across every Claude Code process it ran), so the ledger sums to
//! what Claude Code reported without ever summing its cumulative totals.
//!
//! Why the overshoot past a ceiling is at most one heartbeat interval of
//! spend: the watchdog checks every ceiling each time the ledger grows (on
//! every heartbeat, which carries the compute charge for the interval since
//! the previous one, and on every `TurnResult`, which carries the model
//! charge). The check before the last charge found the spend below the
//! ceiling, so at the moment the watchdog stops the session the spend is past
//! the ceiling by less than the last charge: one interval of compute, plus
//! the model cost reported in that interval. Model cost inside one turn is
//! fenced by Claude Code itself (`--max-budget-usd`, set from the same
//! ceiling), which stops after the model request that crosses it.
//!
//! Compute on Modal is reconciled afterwards: the heartbeat charges are an
//! estimate at the `[rates]` table, good enough to enforce live, while Modal
//! bills what it measured at the workspace's actual rates and reports it
//! minutes late. Once a sandbox has ended and its figures have settled
//! (`modal.usage_settle_seconds`), [`crate::usage`] adds one `compute` row of
//! Modal's cost − what the heartbeats charged (negative when they charged
//! too much), so the container's compute total is Modal's own figure. That
//! row arrives after the container is gone, so the watchdog sees it at its
//! next check (the next heartbeat or turn of any session) rather than
//! stopping anything by it; the overshoot bound above holds for the
//! estimate, and the reconciliation moves the spend by the estimate's error.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Config, RatesConfig};

/// Milliseconds per UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// A task's budget and resources as stored (`tasks.max_cost_usd`, …).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskLimits {
    pub max_cost_usd: Option<f64>,
    /// As given, e.g. `A100` or `H100:2`.
    pub gpu: Option<String>,
    pub cpu: Option<f64>,
    pub memory_mb: Option<u64>,
    pub timeout_seconds: Option<u64>,
}

/// What this host can enforce for a local session (found by
/// [`crate::backend::capabilities::probe`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalCapabilities {
    /// `Err(why)`: `--cpu`/`--memory` cannot be written into a cgroup here.
    pub cgroup_limits: Result<(), String>,
    /// `nvidia-smi -L` lines (empty: no NVIDIA GPU, or no nvidia-smi).
    pub gpus: Vec<String>,
}

/// [`crate::backend::capabilities::refuse_unenforced`] given what the host can do (pure).
pub fn refuse_unenforced_on(
    limits: &TaskLimits,
    backend: &str,
    host: &LocalCapabilities,
) -> Result<(), crate::error::CodedError> {
    if backend != "local" {
        return Ok(());
    }
    if let Some(gpu) = &limits.gpu {
        if gpu_choices(gpu).len() > 1 {
            return Err(crate::error::CodedError::new(
                crate::error_codes::INVALID_INPUT,
                format!(
                    "--gpu {gpu}: a list of GPU types (tried in order when Modal has no capacity) applies to Modal only; a local session runs on this host's GPU: name one type, or add --backend modal"
                ),
            ));
        }
        refuse_missing_gpu(gpu, &host.gpus)?;
    }
    if (limits.cpu.is_some() || limits.memory_mb.is_some())
        && let Err(why) = &host.cgroup_limits
    {
        return Err(crate::error::CodedError::new(
            crate::error_codes::LIMIT_NOT_ENFORCEABLE,
            format!(
                "the local backend cannot enforce {} on this host: {why}. Nothing was started. Run it with `--backend modal`, or drop the flag",
                describe_cpu_memory(limits.cpu, limits.memory_mb)
            ),
        ));
    }
    Ok(())
}

/// `--cpu 2, --memory 512MiB` (what was asked, for messages).
pub fn describe_cpu_memory(cpu: Option<f64>, memory_mb: Option<u64>) -> String {
    let mut asked = Vec::new();
    if let Some(cpu) = cpu {
        asked.push(format!("--cpu {cpu}"));
    }
    if let Some(mb) = memory_mb {
        asked.push(format!("--memory {mb}MiB"));
    }
    asked.join(", ")
}

/// How many of `nvidia-smi -L`'s devices are of type `gpu_type` (pure): every
/// `-`-separated part of the type (`A100-80GB`: `A100`, `80GB`) is a word of the
/// device's name (`GPU 0: NVIDIA A100-SXM4-80GB (UUID: …)`), case-insensitively.
pub fn matching_gpus(listing: &[String], gpu_type: &str) -> usize {
    let wanted: Vec<String> = gpu_type
        .trim()
        .trim_end_matches('!')
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    if wanted.is_empty() {
        return 0;
    }
    listing
        .iter()
        .filter(|line| {
            let name = line
                .split_once(": ")
                .map_or(line.as_str(), |(_, rest)| rest);
            let name = name.split(" (UUID").next().unwrap_or(name);
            let words: Vec<String> = name
                .split([' ', '-'])
                .map(str::to_ascii_uppercase)
                .collect();
            wanted.iter().all(|w| words.contains(w))
        })
        .count()
}

/// Refuses (E114) a `--gpu` (`A10G`, `H100:2`) this host does not have.
pub fn refuse_missing_gpu(gpu: &str, listing: &[String]) -> Result<(), crate::error::CodedError> {
    let (name, count) = match gpu.split_once(':') {
        Some((name, count)) => (name, count.trim().parse::<usize>().unwrap_or(1).max(1)),
        None => (gpu, 1),
    };
    let have = matching_gpus(listing, name);
    if have >= count {
        return Ok(());
    }
    Err(crate::error::CodedError::new(
        crate::error_codes::GPU_NOT_ON_HOST,
        format!(
            "--gpu {gpu}: this host has {} (nvidia-smi -L{}), so a local session would run without it. Nothing was started. Run it with `--backend modal`, which gives the GPU, or drop --gpu",
            if have == 0 {
                format!("no {name} GPU")
            } else {
                format!("only {have} {name} GPU(s)")
            },
            if listing.is_empty() {
                " lists none"
            } else {
                ""
            }
        ),
    ))
}

/// A GPU request: Modal's type name and a count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuRequest {
    pub gpu_type: String,
    pub count: u32,
}

/// The GPU types of a `--gpu` value, in the order they are tried: `A100` or a
/// comma-separated list (`A100,A10G,L4`), tried in order when Modal has no
/// capacity. Empty entries are dropped.
pub fn gpu_choices(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect()
}

/// Most GPU types one `--gpu` list may name.
pub const MAX_GPU_CHOICES: usize = 8;

/// Checks every entry of a `--gpu` list ([`parse_gpu`] each, at most
/// [`MAX_GPU_CHOICES`]).
pub fn parse_gpu_list(text: &str, rates: &RatesConfig) -> Result<Vec<GpuRequest>, String> {
    let choices = gpu_choices(text);
    if choices.is_empty() {
        return Err(format!("no GPU type in `{text}`"));
    }
    if choices.len() > MAX_GPU_CHOICES {
        return Err(format!(
            "{} GPU types: a list takes at most {MAX_GPU_CHOICES}",
            choices.len()
        ));
    }
    choices.iter().map(|g| parse_gpu(g, rates)).collect()
}

/// Parses `A100`, `a100-80gb`, `H100:2`, `H100!`, `B200+` against the rate
/// table's types (`B200+`, which Modal may run on a B300, is priced as a B200).
/// Of a list (`A100,A10G`), the first choice: what an estimate prices.
/// `Err` names the known types.
pub fn parse_gpu(text: &str, rates: &RatesConfig) -> Result<GpuRequest, String> {
    let text = gpu_choices(text).first().copied().unwrap_or(text);
    let (name, count) = match text.split_once(':') {
        Some((name, count)) => (
            name,
            count
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("invalid GPU count in `{text}`"))?,
        ),
        None => (text, 1),
    };
    let name = name.trim().trim_end_matches('!').trim_end_matches('+');
    let known = rates
        .gpu_usd_per_second
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned();
    match known {
        Some(gpu_type) => Ok(GpuRequest { gpu_type, count }),
        None => Err(format!(
            "unknown GPU type `{name}` (known: {})",
            rates
                .gpu_usd_per_second
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// What a container is billed for: its requested resources.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resources {
    pub cpu_cores: f64,
    pub memory_gib: f64,
    pub gpu: Option<GpuRequest>,
    /// The local backend pays `rates.local_multiplier` times the table.
    pub multiplier: f64,
}

/// The resources a task's containers request on `backend`: the task's own
/// (`--cpu`, `--memory`, `--gpu`), else the backend's defaults (Modal: the
/// `[modal]` section; local: nothing requested, usage is billed).
pub fn requested_resources(limits: &TaskLimits, backend: &str, config: &Config) -> Resources {
    let local = backend == "local";
    let cpu_cores = limits.cpu.unwrap_or(if local {
        0.0
    } else {
        config.modal.cpu_count as f64
    });
    let memory_mb = limits
        .memory_mb
        .unwrap_or(if local { 0 } else { config.modal.memory_mb });
    Resources {
        cpu_cores,
        memory_gib: memory_mb as f64 / 1024.0,
        // A Modal task without `--gpu` gets `modal.gpu`'s list: priced, as a
        // `--gpu` list is, at its first choice.
        gpu: limits
            .gpu
            .as_deref()
            .or_else(|| {
                (!local)
                    .then(|| config.modal.gpu.first().map(String::as_str))
                    .flatten()
            })
            .and_then(|g| parse_gpu(g, &config.rates).ok()),
        multiplier: if local {
            config.rates.local_multiplier
        } else {
            1.0
        },
    }
}

/// USD per second for `resources` using `used_cores` and `used_gib`: CPU
/// and memory are billed at max(request, usage), GPUs per GPU.
pub fn compute_rate_usd_per_second(
    resources: &Resources,
    used_cores: f64,
    used_gib: f64,
    rates: &RatesConfig,
) -> f64 {
    let cores = resources.cpu_cores.max(used_cores.max(0.0));
    let gib = resources.memory_gib.max(used_gib.max(0.0));
    let gpu = resources
        .gpu
        .as_ref()
        .map(|g| {
            rates
                .gpu_usd_per_second
                .get(&g.gpu_type)
                .copied()
                .unwrap_or(0.0)
                * g.count as f64
        })
        .unwrap_or(0.0);
    (cores * rates.cpu_core_usd_per_second + gib * rates.memory_gib_usd_per_second + gpu)
        * resources.multiplier
}

/// The compute charge for one heartbeat: `elapsed_ms` (since the previous
/// heartbeat, or the agent's uptime for the first) at the heartbeat's usage.
pub fn heartbeat_charge_usd(
    resources: &Resources,
    elapsed_ms: i64,
    cpu_percent: f64,
    memory_bytes: u64,
    rates: &RatesConfig,
) -> f64 {
    if elapsed_ms <= 0 {
        return 0.0;
    }
    let rate = compute_rate_usd_per_second(
        resources,
        cpu_percent / 100.0,
        memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0),
        rates,
    );
    rate * elapsed_ms as f64 / 1000.0
}

/// What similar tasks cost (same type and backend, ended).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct History {
    pub tasks: u64,
    pub min_usd: f64,
    pub avg_usd: f64,
    pub max_usd: f64,
    /// The largest model cost among them.
    pub max_model_usd: f64,
}

/// A task's estimated cost: a range and its basis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub backend: String,
    pub resources: Resources,
    /// Compute rate at the requested resources (a local task without
    /// `--cpu`/`--memory` is estimated at 1 core and 1 GiB).
    pub rate_usd_per_second: f64,
    pub timeout_seconds: u64,
    /// rate × timeout: the most compute the task can use.
    pub compute_max_usd: f64,
    pub history: Option<History>,
    /// No history: the model cost is unknown (bounded only by a ceiling).
    pub model_cost_unknown: bool,
    pub max_cost_usd: Option<f64>,
    pub low_usd: f64,
    pub high_usd: f64,
    /// The rate table that priced it (`coordinator/rates/<version>.toml`).
    pub rate_table_version: String,
    /// Figures of that table the config overrides (by key).
    pub rate_overrides: Vec<String>,
    /// What was priced, each with why (what the backend enforces, or the
    /// basis a local estimate assumes): nothing else is claimed.
    pub priced: Vec<String>,
}

/// Estimates a task: rates × timeout for compute, similar tasks' history for
/// the whole; `--max-cost` caps the high end (the watchdog stops it there).
pub fn estimate(
    limits: &TaskLimits,
    backend: &str,
    config: &Config,
    history: Option<History>,
) -> Estimate {
    let mut resources = requested_resources(limits, backend, config);
    let mut priced = Vec::new();
    if backend == "local" {
        // The local backend attaches no GPU: one is never priced (nor
        // launched: `backend::capabilities::refuse_unenforced`).
        resources.gpu = None;
        match limits.cpu {
            Some(c) => priced.push(format!("{c} CPU cores (--cpu)")),
            None => {
                resources.cpu_cores = 1.0;
                priced.push(
                    "1 CPU core (assumed usage: local compute is billed by use, no limit is set)"
                        .into(),
                );
            }
        }
        match limits.memory_mb {
            Some(m) => priced.push(format!("{m} MiB memory (--memory)")),
            None => {
                resources.memory_gib = 1.0;
                priced.push("1 GiB memory (assumed usage: no limit is set)".into());
            }
        }
    } else {
        priced.push(format!(
            "{} CPU cores ({})",
            resources.cpu_cores,
            if limits.cpu.is_some() {
                "--cpu"
            } else {
                "modal.cpu_count"
            }
        ));
        priced.push(format!(
            "{:.1} GiB memory ({})",
            resources.memory_gib,
            if limits.memory_mb.is_some() {
                "--memory"
            } else {
                "modal.memory_mb"
            }
        ));
        if let Some(g) = &resources.gpu {
            priced.push(format!("{}× {} (--gpu)", g.count, g.gpu_type));
        }
    }
    let rate = compute_rate_usd_per_second(&resources, 0.0, 0.0, &config.rates);
    let timeout_seconds = limits
        .timeout_seconds
        .unwrap_or((config.modal.default_timeout_hours * 3600.0).round() as u64);
    let compute_max_usd = rate * timeout_seconds as f64;
    let history = history.filter(|h| h.tasks > 0);
    let (low, mut high) = match &history {
        Some(h) => (
            h.min_usd,
            (compute_max_usd + h.max_model_usd).max(h.max_usd),
        ),
        None => (0.0, compute_max_usd),
    };
    if let Some(cap) = limits.max_cost_usd {
        high = if history.is_none() {
            cap.max(0.0)
        } else {
            high.min(cap)
        };
    }
    Estimate {
        backend: backend.to_string(),
        resources,
        rate_usd_per_second: rate,
        timeout_seconds,
        compute_max_usd,
        model_cost_unknown: history.is_none(),
        history,
        max_cost_usd: limits.max_cost_usd,
        low_usd: low.min(high),
        high_usd: high,
        rate_table_version: crate::rates::embedded().version.clone(),
        rate_overrides: crate::config::rate_overrides(crate::rates::embedded(), &config.rates, &[])
            .into_iter()
            .map(|o| o.key)
            .collect(),
        priced,
    }
}

/// Which ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Task,
    Global,
    Day,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Task => "task",
            Scope::Global => "global",
            Scope::Day => "day",
        }
    }
}

/// Spend against each ceiling, and the ceilings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Standing {
    pub task_spent_usd: f64,
    pub task_ceiling_usd: Option<f64>,
    pub global_spent_usd: f64,
    pub global_ceiling_usd: f64,
    pub day_spent_usd: f64,
    pub day_ceiling_usd: Option<f64>,
}

/// One ceiling reached (or warned about).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Crossing {
    pub scope: Scope,
    pub ceiling_usd: f64,
    pub spent_usd: f64,
}

impl Standing {
    fn scopes(&self) -> Vec<(Scope, f64, f64)> {
        let mut out = Vec::new();
        if let Some(c) = self.task_ceiling_usd {
            out.push((Scope::Task, c, self.task_spent_usd));
        }
        out.push((
            Scope::Global,
            self.global_ceiling_usd,
            self.global_spent_usd,
        ));
        if let Some(c) = self.day_ceiling_usd {
            out.push((Scope::Day, c, self.day_spent_usd));
        }
        out
    }

    /// The first ceiling the spend has reached, task first.
    pub fn exceeded(&self) -> Option<Crossing> {
        self.scopes()
            .into_iter()
            .find(|(_, ceiling, spent)| spent >= ceiling)
            .map(|(scope, ceiling_usd, spent_usd)| Crossing {
                scope,
                ceiling_usd,
                spent_usd,
            })
    }

    /// Ceilings whose warning threshold the spend has reached.
    pub fn warnings(&self, threshold_percent: u64) -> Vec<Crossing> {
        self.scopes()
            .into_iter()
            .filter(|(_, ceiling, spent)| {
                *ceiling > 0.0 && *spent >= ceiling * threshold_percent as f64 / 100.0
            })
            .map(|(scope, ceiling_usd, spent_usd)| Crossing {
                scope,
                ceiling_usd,
                spent_usd,
            })
            .collect()
    }

    /// What may still be spent before some ceiling is reached.
    pub fn allowance_usd(&self) -> f64 {
        self.scopes()
            .into_iter()
            .map(|(_, ceiling, spent)| ceiling - spent)
            .fold(f64::INFINITY, f64::min)
    }

    /// Pre-dispatch: the ceiling a task estimated at `need_usd` would break
    /// (global or daily; the task's own ceiling caps the estimate instead).
    pub fn refuses(&self, need_usd: f64) -> Option<Crossing> {
        let mut candidates = vec![(
            Scope::Global,
            self.global_ceiling_usd,
            self.global_spent_usd,
        )];
        if let Some(c) = self.day_ceiling_usd {
            candidates.push((Scope::Day, c, self.day_spent_usd));
        }
        candidates
            .into_iter()
            .find(|(_, ceiling, spent)| ceiling - spent <= 0.0 || need_usd > ceiling - spent)
            .map(|(scope, ceiling_usd, spent_usd)| Crossing {
                scope,
                ceiling_usd,
                spent_usd,
            })
    }
}

/// The E300 message for a refused dispatch: by how much, and what to do.
pub fn refusal_message(task: &str, estimate: &Estimate, crossing: &Crossing) -> String {
    let remaining = (crossing.ceiling_usd - crossing.spent_usd).max(0.0);
    let short = (estimate.high_usd - remaining).max(0.0);
    let ceiling_name = match crossing.scope {
        Scope::Day => "today's",
        _ => "the global",
    };
    let raise = match crossing.scope {
        Scope::Day => format!(
            "`parhelia budget set --daily {}`",
            usd_arg(crossing.spent_usd + estimate.high_usd)
        ),
        _ => format!(
            "`parhelia budget set {}`",
            usd_arg(crossing.spent_usd + estimate.high_usd)
        ),
    };
    let cap = if remaining > 0.0 {
        format!(
            ", or cap the task with `--max-cost {}`",
            usd_arg_down(remaining)
        )
    } else {
        String::new()
    };
    format!(
        "{task} is estimated at up to {} but only {} of {ceiling_name} {} ceiling remains ({} spent): {} short; raise the ceiling with {raise}{cap}",
        usd(estimate.high_usd),
        usd(remaining),
        usd(crossing.ceiling_usd),
        usd(crossing.spent_usd),
        usd(short.max(if remaining <= 0.0 {
            estimate.high_usd
        } else {
            0.0
        })),
    )
}

/// The E300 message for a watchdog stop.
pub fn stop_message(crossing: &Crossing) -> String {
    let what = match crossing.scope {
        Scope::Task => "the task's ceiling (--max-cost)",
        Scope::Global => "the global budget",
        Scope::Day => "today's budget",
    };
    format!(
        "stopped by the budget watchdog: {} spent reached {what} of {}; raise it (`parhelia budget set …`, or `--max-cost` on a new task) and `parhelia resume` the session to continue",
        usd(crossing.spent_usd),
        usd(crossing.ceiling_usd)
    )
}

/// Dollars for people: `$0.0123`, `$12.50`.
pub fn usd(x: f64) -> String {
    if x.abs() < 1.0 && x != 0.0 {
        format!("${x:.4}")
    } else {
        format!("${x:.2}")
    }
}

/// An amount for a command line, rounded up to the cent.
fn usd_arg(x: f64) -> String {
    format!("{:.2}", (x * 100.0).ceil() / 100.0)
}

/// An amount for a command line, rounded down to the cent.
fn usd_arg_down(x: f64) -> String {
    format!("{:.2}", (x * 100.0).floor() / 100.0)
}

/// The UTC day of a time, `YYYY-MM-DD`.
pub fn day_of(ts_ms: i64) -> String {
    let days = ts_ms.div_euclid(DAY_MS);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", if m <= 2 { y + 1 } else { y })
}

/// Start of the UTC day holding `ts_ms`.
pub fn day_start_ms(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS) * DAY_MS
}

/// One ledger row as the running totals see it.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerRow {
    pub id: i64,
    pub task_id: String,
    pub ts_ms: i64,
    pub amount_usd: f64,
}

/// Running totals of the ledger, for the budget watchdog (issue 17): the whole
/// ledger, per task and per UTC day, folded row by row in id order from the rows
/// after [`LedgerTotals::last_id`], so a check costs the rows added since the last
/// one instead of a scan of the whole ledger. The ledger is append-only (no row is
/// updated or deleted, and a row becomes visible only with every lower id: SQLite has
/// one writer at a time), so folding the new rows keeps the totals equal to a full
/// scan; a restarted coordinator rebuilds them from the ledger (`last_id` 0).
///
/// Sums are in id order, the order every view's [`crate::records::Spend`] folds in;
/// SQLite's `sum()` of the same rows may differ in the last bits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LedgerTotals {
    /// The highest row id folded in.
    pub last_id: i64,
    pub global_usd: f64,
    /// By day number (`ts_ms.div_euclid(DAY_MS)`: UTC days since the epoch).
    pub by_day: BTreeMap<i64, f64>,
    pub by_task: std::collections::HashMap<String, f64>,
}

impl LedgerTotals {
    /// Folds one row in; a row at or below [`Self::last_id`] is already counted.
    pub fn add(&mut self, row: &LedgerRow) {
        if row.id <= self.last_id {
            return;
        }
        self.last_id = row.id;
        self.global_usd += row.amount_usd;
        *self
            .by_day
            .entry(row.ts_ms.div_euclid(DAY_MS))
            .or_insert(0.0) += row.amount_usd;
        *self.by_task.entry(row.task_id.clone()).or_insert(0.0) += row.amount_usd;
    }

    /// What the ledger holds for a task.
    pub fn task_usd(&self, task_id: &str) -> f64 {
        self.by_task.get(task_id).copied().unwrap_or(0.0)
    }

    /// What the ledger holds dated at or after `since_ms`'s day (rows dated in later
    /// days included, as `ts_ms >= day_start_ms(now)` counts them).
    pub fn since_day_usd(&self, since_ms: i64) -> f64 {
        self.by_day
            .range(since_ms.div_euclid(DAY_MS)..)
            .map(|(_, usd)| usd)
            .sum()
    }
}

/// Sums rows by key, keeping first-seen order.
pub fn group_sum<K: Ord + Clone>(rows: impl IntoIterator<Item = (K, f64)>) -> BTreeMap<K, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in rows {
        *out.entry(k).or_insert(0.0) += v;
    }
    out
}

#[cfg(test)]
mod tests {

    fn local_host(cgroups: Result<(), String>, gpus: &[&str]) -> LocalCapabilities {
        LocalCapabilities {
            cgroup_limits: cgroups,
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// Limits are real or refused: a GPU the host lacks is E114 naming
    /// `--backend modal`; CPU/memory are refused (E113) only without a writable
    /// cgroup; other backends are not judged here.
    #[test]
    fn local_limits_are_refused_only_when_they_cannot_hold() {
        let a10g = ["GPU 0: NVIDIA A10G (UUID: GPU-1234)"];
        let gpu = TaskLimits {
            gpu: Some("A10G".into()),
            ..TaskLimits::default()
        };
        let err = refuse_unenforced_on(&gpu, "local", &local_host(Ok(()), &[])).unwrap_err();
        assert_eq!(err.code.code, "E114");
        assert!(err.message.contains("--backend modal"), "{}", err.message);
        assert!(refuse_unenforced_on(&gpu, "local", &local_host(Ok(()), &a10g)).is_ok());
        assert!(refuse_unenforced_on(&gpu, "modal", &local_host(Ok(()), &[])).is_ok());
        let two = TaskLimits {
            gpu: Some("A10G:2".into()),
            ..TaskLimits::default()
        };
        assert!(refuse_unenforced_on(&two, "local", &local_host(Ok(()), &a10g)).is_err());

        let cpu = TaskLimits {
            cpu: Some(2.0),
            memory_mb: Some(512),
            ..TaskLimits::default()
        };
        assert!(refuse_unenforced_on(&cpu, "local", &local_host(Ok(()), &[])).is_ok());
        let err = refuse_unenforced_on(&cpu, "local", &local_host(Err("read-only".into()), &[]))
            .unwrap_err();
        assert_eq!(err.code.code, "E113");
        assert!(err.message.contains("--cpu 2") && err.message.contains("--memory 512MiB"));
        assert!(err.message.contains("read-only"));
    }

    #[test]
    fn gpu_types_match_whole_words_of_the_device_name() {
        let listing: Vec<String> = [
            "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-a)",
            "GPU 1: NVIDIA A10 (UUID: GPU-b)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(matching_gpus(&listing, "A100"), 1);
        assert_eq!(matching_gpus(&listing, "a100-80gb"), 1);
        assert_eq!(matching_gpus(&listing, "A10G"), 0);
        assert_eq!(matching_gpus(&listing, "A10"), 1);
        assert_eq!(matching_gpus(&listing, "H100"), 0);
        assert_eq!(matching_gpus(&listing, ""), 0);
    }
    use super::*;

    fn config() -> Config {
        Config::defaults()
    }

    /// A `--gpu` list: every type checked, the first one priced; `B200+` is
    /// priced as a B200 and `A10` has its own row; a list is Modal's only.
    #[test]
    fn a_gpu_list_is_checked_whole_and_priced_at_its_first_choice() {
        let c = config();
        let list = parse_gpu_list("a100, A10G ,L4:2", &c.rates).unwrap();
        let types: Vec<_> = list
            .iter()
            .map(|g| (g.gpu_type.as_str(), g.count))
            .collect();
        assert_eq!(types, [("A100", 1), ("A10G", 1), ("L4", 2)]);
        assert!(
            parse_gpu_list("A100,Z9", &c.rates)
                .unwrap_err()
                .contains("Z9")
        );
        assert!(parse_gpu_list(",", &c.rates).is_err());
        assert!(parse_gpu_list(&["T4"; 9].join(","), &c.rates).is_err());
        assert_eq!(parse_gpu("A100,L4", &c.rates).unwrap().gpu_type, "A100");
        assert_eq!(parse_gpu("B200+", &c.rates).unwrap().gpu_type, "B200");
        assert_eq!(parse_gpu("A10", &c.rates).unwrap().gpu_type, "A10");
        let limits = TaskLimits {
            gpu: Some("A100,L4".into()),
            ..TaskLimits::default()
        };
        let priced = requested_resources(&limits, "modal", &c);
        assert_eq!(priced.gpu.unwrap().gpu_type, "A100");
        let err = refuse_unenforced_on(&limits, "local", &local_host(Ok(()), &[])).unwrap_err();
        assert_eq!(err.code.code, "E100");
        // `modal.gpu` for a Modal task without `--gpu`; never locally.
        let mut c = config();
        c.modal.gpu = vec!["L4".into(), "T4".into()];
        let none = TaskLimits::default();
        let priced = requested_resources(&none, "modal", &c);
        assert_eq!(priced.gpu.unwrap().gpu_type, "L4");
        assert!(requested_resources(&none, "local", &c).gpu.is_none());
    }

    #[test]
    fn modal_rates_match_the_facts_example() {
        // H100 + 4 cores + 32 GiB ≈ $0.00147/s.
        let c = config();
        let limits = TaskLimits {
            gpu: Some("h100".into()),
            cpu: Some(4.0),
            memory_mb: Some(32 * 1024),
            ..TaskLimits::default()
        };
        let r = requested_resources(&limits, "modal", &c);
        let rate = compute_rate_usd_per_second(&r, 0.0, 0.0, &c.rates);
        assert!((rate - 0.00147).abs() < 0.00001, "{rate}");
        // Usage above the request is billed.
        let busier = compute_rate_usd_per_second(&r, 8.0, 0.0, &c.rates);
        assert!(busier > rate);
    }

    #[test]
    fn local_compute_is_free_by_default_and_configurable() {
        let mut c = config();
        let r = requested_resources(&TaskLimits::default(), "local", &c);
        assert_eq!(
            heartbeat_charge_usd(&r, 1000, 100.0, 1 << 30, &c.rates),
            0.0
        );
        c.rates.local_multiplier = 1.0;
        let r = requested_resources(&TaskLimits::default(), "local", &c);
        let charge = heartbeat_charge_usd(&r, 2000, 100.0, 1 << 30, &c.rates);
        assert!((charge - 2.0 * (0.00003942 + 0.00000672)).abs() < 1e-12);
    }

    #[test]
    fn gpu_names() {
        let c = config();
        assert_eq!(parse_gpu("A100", &c.rates).unwrap().gpu_type, "A100");
        assert_eq!(
            parse_gpu("a100-80gb:2", &c.rates).unwrap(),
            GpuRequest {
                gpu_type: "A100-80GB".into(),
                count: 2
            }
        );
        assert_eq!(parse_gpu("H100!", &c.rates).unwrap().gpu_type, "H100");
        assert!(parse_gpu("Z9", &c.rates).unwrap_err().contains("known"));
        assert!(parse_gpu("T4:0", &c.rates).is_err());
    }

    #[test]
    fn estimates_use_rates_times_timeout_and_history() {
        let c = config();
        let limits = TaskLimits {
            gpu: Some("A100".into()),
            timeout_seconds: Some(3600),
            ..TaskLimits::default()
        };
        let e = estimate(&limits, "modal", &c, None);
        let rate = 4.0 * 0.00003942 + 16.0 * 0.00000672 + 0.000583;
        assert!((e.rate_usd_per_second - rate).abs() < 1e-12);
        assert!((e.compute_max_usd - rate * 3600.0).abs() < 1e-9);
        assert_eq!((e.low_usd, e.high_usd), (0.0, e.compute_max_usd));
        assert!(e.model_cost_unknown);

        let h = History {
            tasks: 3,
            min_usd: 0.5,
            avg_usd: 1.0,
            max_usd: 2.0,
            max_model_usd: 1.5,
        };
        let e = estimate(&limits, "modal", &c, Some(h));
        assert_eq!(e.low_usd, 0.5);
        assert!((e.high_usd - (rate * 3600.0 + 1.5)).abs() < 1e-9);

        let capped = TaskLimits {
            max_cost_usd: Some(1.0),
            ..limits
        };
        assert_eq!(estimate(&capped, "modal", &c, None).high_usd, 1.0);
    }

    /// Issue 13: a local estimate priced "1× A100" the backend never gave.
    /// An estimate prices only what the backend enforces, says what it
    /// priced and which rate table priced it.
    #[test]
    fn an_estimate_claims_only_what_the_backend_enforces_and_names_its_table() {
        let mut c = config();
        c.rates.local_multiplier = 1.0;
        let gpu = TaskLimits {
            gpu: Some("A100".into()),
            timeout_seconds: Some(60),
            ..TaskLimits::default()
        };
        let local = estimate(&gpu, "local", &c, None);
        assert_eq!(local.resources.gpu, None);
        assert!(
            (local.rate_usd_per_second - (0.00003942 + 0.00000672)).abs() < 1e-12,
            "no GPU in the rate: {}",
            local.rate_usd_per_second
        );
        assert!(
            !local.priced.iter().any(|p| p.contains("A100")),
            "{:?}",
            local.priced
        );
        assert!(
            local
                .priced
                .iter()
                .all(|p| p.contains("assumed usage") || p.contains("--"))
        );
        assert_eq!(local.rate_table_version, crate::rates::embedded().version);
        assert!(local.rate_overrides.is_empty());

        let modal = estimate(&gpu, "modal", &c, None);
        assert_eq!(
            modal.priced,
            vec![
                "4 CPU cores (modal.cpu_count)".to_string(),
                "16.0 GiB memory (modal.memory_mb)".to_string(),
                "1× A100 (--gpu)".to_string(),
            ]
        );
        c.rates.gpu_usd_per_second.insert("A100".into(), 0.001);
        let overridden = estimate(&gpu, "modal", &c, None);
        assert_eq!(
            overridden.rate_overrides,
            vec!["rates.gpu_a100_usd_per_second"]
        );
    }

    #[test]
    fn ceilings_warnings_and_refusals() {
        let s = Standing {
            task_spent_usd: 0.9,
            task_ceiling_usd: Some(1.0),
            global_spent_usd: 10.0,
            global_ceiling_usd: 50.0,
            day_spent_usd: 0.0,
            day_ceiling_usd: None,
        };
        assert_eq!(s.exceeded(), None);
        let w = s.warnings(80);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].scope, Scope::Task);
        assert!((s.allowance_usd() - 0.1).abs() < 1e-12);
        let over = Standing {
            task_spent_usd: 1.0,
            ..s.clone()
        };
        assert_eq!(over.exceeded().unwrap().scope, Scope::Task);
        assert_eq!(s.refuses(39.0), None);
        assert_eq!(s.refuses(41.0).unwrap().scope, Scope::Global);
        let spent = Standing {
            global_spent_usd: 50.0,
            ..s
        };
        assert!(spent.refuses(0.0).is_some(), "nothing remains");
    }

    #[test]
    fn refusal_says_by_how_much_and_what_to_do() {
        let c = config();
        let limits = TaskLimits {
            max_cost_usd: Some(5.0),
            ..TaskLimits::default()
        };
        let e = estimate(&limits, "local", &c, None);
        let crossing = Crossing {
            scope: Scope::Global,
            ceiling_usd: 3.0,
            spent_usd: 1.0,
        };
        let m = refusal_message("task-1", &e, &crossing);
        assert!(m.contains("$5.00"), "{m}");
        assert!(m.contains("only $2.00"), "{m}");
        assert!(m.contains("$3.00 short"), "{m}");
        assert!(m.contains("parhelia budget set 6.00"), "{m}");
        assert!(m.contains("--max-cost 2.00"), "{m}");
    }

    #[test]
    fn days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_700_000_000_000), "2023-11-14");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_start_ms(DAY_MS + 5), DAY_MS);
    }

    /// A ledger row from proptest's choices: a few tasks, days around the epoch's
    /// 20,000th, amounts from refunds to charges.
    fn ledger_rows(picks: &[(u8, i64, f64)]) -> Vec<LedgerRow> {
        picks
            .iter()
            .enumerate()
            .map(|(i, &(task, ts_offset, amount_usd))| LedgerRow {
                id: i as i64 + 1,
                task_id: format!("task-{}", task % 4),
                ts_ms: 20_000 * DAY_MS + ts_offset,
                amount_usd,
            })
            .collect()
    }

    proptest::proptest! {
        /// The running totals equal a full scan of the ledger after any sequence of
        /// rows, however the checks split it (each check folds the rows since the last,
        /// and rows already folded are ignored).
        #[test]
        fn running_totals_equal_a_full_scan(
            picks in proptest::collection::vec(
                (0u8..8, -3 * DAY_MS..3 * DAY_MS, -5.0f64..50.0),
                0..200,
            ),
            splits in proptest::collection::vec(0usize..200, 0..10),
            now_offset in -3 * DAY_MS..3 * DAY_MS,
        ) {
            let rows = ledger_rows(&picks);
            let mut totals = LedgerTotals::default();
            let mut cuts: Vec<usize> = splits.into_iter().map(|c| c.min(rows.len())).collect();
            cuts.push(rows.len());
            cuts.sort_unstable();
            let mut from = 0usize;
            for cut in cuts {
                // A check folds what is new, and may see an older row again.
                for row in &rows[from.saturating_sub(1)..cut] {
                    totals.add(row);
                }
                from = cut;
            }
            // The full scan, as the views fold it: in id order.
            let scan = |keep: &dyn Fn(&LedgerRow) -> bool| {
                rows.iter().filter(|r| keep(r)).fold(0.0, |sum, r| sum + r.amount_usd)
            };
            proptest::prop_assert_eq!(totals.global_usd, scan(&|_| true));
            for task in 0..4 {
                let id = format!("task-{task}");
                proptest::prop_assert_eq!(totals.task_usd(&id), scan(&|r| r.task_id == id));
            }
            let since = day_start_ms(20_000 * DAY_MS + now_offset);
            let day = scan(&|r| r.ts_ms >= since);
            // Summed per day, then over the days: the same rows, another order.
            proptest::prop_assert!((totals.since_day_usd(since) - day).abs() <= 1e-9 * (1.0 + day.abs()));
            proptest::prop_assert_eq!(totals.last_id, rows.len() as i64);
        }
    }
}
