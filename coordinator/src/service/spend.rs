//! What every front shows of the ledger: `budget history`'s groups, `budget
//! show`'s view and `task create --estimate-only`'s estimate. Free functions
//! over the database (these read, so they need no running coordinator); the
//! CLI prints them and the MCP server's tools run the CLI.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::budget::{self, Estimate, TaskLimits};
use crate::config::Config;
use crate::db::{Ceilings, Db, LedgerEntry, Spend};

/// How `budget history` groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryBy {
    Day,
    Task,
}

/// Sums of ledger rows: the [`Spend`] every view shows (folded the same
/// way, row by row in id order), and how many rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    #[serde(flatten)]
    pub spend: Spend,
    /// `cost_usd` again, under the name older readers use.
    pub total_usd: f64,
    pub charges: u64,
}

impl Totals {
    fn add(&mut self, e: &LedgerEntry) {
        self.spend.add_entry(e);
        self.total_usd = self.spend.cost_usd;
        self.charges += 1;
    }
}

/// One group of `budget history`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryRow {
    pub key: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Ledger rows grouped by day (oldest first) or by task (in the order each
/// first spent); the rows add up to the total.
pub fn group(entries: &[LedgerEntry], by: HistoryBy) -> (Vec<HistoryRow>, Totals) {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut total = Totals::default();
    for e in entries {
        let key = match by {
            HistoryBy::Day => budget::day_of(e.ts_ms),
            HistoryBy::Task => e.task_id.clone(),
        };
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().add(e);
        total.add(e);
    }
    if by == HistoryBy::Day {
        order.sort();
    }
    let rows = order
        .into_iter()
        .map(|key| HistoryRow {
            totals: groups.remove(&key).unwrap_or_default(),
            key,
        })
        .collect();
    (rows, total)
}

/// `parhelia budget show` as data.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetView {
    pub ceiling_usd: f64,
    pub ceiling_source: &'static str,
    pub used_usd: f64,
    pub remaining_usd: f64,
    pub percent_used: f64,
    pub warning_threshold_percent: u64,
    pub today: DayView,
    #[serde(flatten)]
    pub totals: Totals,
    pub tasks: Vec<TaskSpendView>,
    pub days: Vec<HistoryRow>,
    /// The rate table in force and what config changed in it.
    pub rates: RatesView,
}

/// Which rate table priced the spend (`docs/cost.md`).
#[derive(Clone, Debug, Serialize)]
pub struct RatesView {
    /// The embedded table's version (`coordinator/rates/<version>.toml`).
    pub table_version: String,
    /// Every figure config sets (`[rates]`), with the table's value.
    pub overridden: Vec<crate::config::RateOverride>,
    /// Modal volume storage, USD per GiB per 30-day month, as in force.
    pub storage_gib_usd_per_month: f64,
    /// Local sessions' storage is the user's own disk: always 0.
    pub local_storage_usd_per_gib_month: f64,
    /// The local backend's compute as a multiple of the table.
    pub local_multiplier: f64,
}

impl RatesView {
    pub fn of(config: &crate::config::LoadedConfig) -> Self {
        let table = crate::rates::embedded();
        let rates = &config.config.rates;
        RatesView {
            table_version: table.version.clone(),
            overridden: crate::config::rate_overrides(table, rates, &config.settings),
            storage_gib_usd_per_month: rates.storage_gib_usd_per_month,
            local_storage_usd_per_gib_month: 0.0,
            local_multiplier: rates.local_multiplier,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DayView {
    pub day: String,
    pub used_usd: f64,
    pub ceiling_usd: Option<f64>,
    pub remaining_usd: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskSpendView {
    pub task_id: String,
    pub status: Option<String>,
    pub max_cost_usd: Option<f64>,
    #[serde(flatten)]
    pub totals: Totals,
}

/// `budget show`: the ceilings, what is spent and what remains, per task
/// (newest first) and per day (the last seven).
pub fn budget_view(db: &Db, loaded: &crate::config::LoadedConfig, now: i64) -> Result<BudgetView> {
    let config = &loaded.config;
    let ceilings: Ceilings = db.ceilings(&config.budget)?;
    let entries = db.ledger_entries(i64::MIN)?;
    let (by_task, totals) = group(&entries, HistoryBy::Task);
    let week_start = budget::day_start_ms(now) - 6 * budget::DAY_MS;
    let recent: Vec<LedgerEntry> = entries
        .iter()
        .filter(|e| e.ts_ms >= week_start)
        .cloned()
        .collect();
    let (days, _) = group(&recent, HistoryBy::Day);
    let today_used = db.spent_since_usd(budget::day_start_ms(now))?;
    let mut tasks = Vec::new();
    for row in by_task.into_iter().rev() {
        let task = db.get_task(&row.key)?;
        let limits = db.task_limits(&row.key)?;
        tasks.push(TaskSpendView {
            status: task.map(|t| t.status.to_string()),
            max_cost_usd: limits.and_then(|(l, _)| l.max_cost_usd),
            task_id: row.key,
            totals: row.totals,
        });
    }
    let used = totals.spend.cost_usd;
    Ok(BudgetView {
        ceiling_usd: ceilings.global_usd,
        ceiling_source: ceilings.global_source,
        used_usd: used,
        remaining_usd: ceilings.global_usd - used,
        percent_used: if ceilings.global_usd > 0.0 {
            used / ceilings.global_usd * 100.0
        } else {
            100.0
        },
        warning_threshold_percent: config.budget.warning_threshold_percent,
        today: DayView {
            day: budget::day_of(now),
            used_usd: today_used,
            ceiling_usd: ceilings.daily_usd,
            remaining_usd: ceilings.daily_usd.map(|c| c - today_used),
        },
        totals,
        tasks,
        days,
        rates: RatesView::of(loaded),
    })
}

/// `budget history`: spend since `since_ms` (`None`: all) grouped `by`.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetHistory {
    pub by: HistoryBy,
    pub since_ms: Option<i64>,
    pub rows: Vec<HistoryRow>,
    pub total: Totals,
}

pub fn history(db: &Db, by: HistoryBy, since_ms: Option<i64>) -> Result<BudgetHistory> {
    let entries = db.ledger_entries(since_ms.unwrap_or(i64::MIN))?;
    let (rows, total) = group(&entries, by);
    Ok(BudgetHistory {
        by,
        since_ms,
        rows,
        total,
    })
}

/// `task create --estimate-only`: the range and its basis, and why the
/// budget would refuse the dispatch (the same check as the service's before
/// a dispatch, E300), if it would.
#[derive(Clone, Debug, Serialize)]
pub struct EstimateReport {
    #[serde(flatten)]
    pub estimate: Estimate,
    /// Always true: nothing was launched or recorded.
    pub estimate_only: bool,
    pub would_be_refused: Option<String>,
}

pub fn estimate_task(
    db: &Db,
    config: &Config,
    task_type: &str,
    backend: &str,
    limits: &TaskLimits,
    now_ms: i64,
) -> Result<EstimateReport> {
    let history = db.similar_history(task_type, backend)?;
    let estimate = budget::estimate(limits, backend, config, history);
    let standing = db.standing(None, &config.budget, now_ms)?;
    let would_be_refused = standing
        .refuses(estimate.high_usd)
        .map(|c| budget::refusal_message("the task", &estimate, &c));
    Ok(EstimateReport {
        estimate,
        estimate_only: true,
        would_be_refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, ts_ms: i64, kind: &str, task: &str, amount: f64) -> LedgerEntry {
        LedgerEntry {
            id,
            ts_ms,
            kind: kind.into(),
            task_id: task.into(),
            session_id: None,
            container_id: None,
            amount_usd: amount,
            seconds: 0.0,
            input_tokens: 10,
            output_tokens: 1,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            unknown_request: false,
        }
    }

    #[test]
    fn history_rows_add_up_to_the_total() {
        let day = budget::DAY_MS;
        let entries = vec![
            entry(1, 5, "model", "task-a", 0.1),
            entry(2, day + 5, "compute", "task-b", 0.25),
            entry(3, day + 6, "model", "task-a", 0.05),
        ];
        for by in [HistoryBy::Day, HistoryBy::Task] {
            let (rows, total) = group(&entries, by);
            let sum: f64 = rows.iter().map(|r| r.totals.total_usd).sum();
            assert!((sum - total.total_usd).abs() < 1e-12);
            assert_eq!(rows.len(), 2);
            assert_eq!(total.spend.input_tokens, 30);
        }
        let (rows, _) = group(&entries, HistoryBy::Day);
        assert_eq!(rows[0].key, "1970-01-01");
        assert!((rows[1].totals.spend.compute_usd - 0.25).abs() < 1e-12);
        let (rows, _) = group(&entries, HistoryBy::Task);
        assert_eq!(rows[0].key, "task-a", "tasks in the order they first spent");
    }

    #[test]
    fn history_reads_only_the_ledger_since_the_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("h.db")).unwrap();
        let empty = history(&db, HistoryBy::Day, None).unwrap();
        assert!(empty.rows.is_empty());
        assert_eq!(empty.total.charges, 0);
        let json = serde_json::to_value(&empty).unwrap();
        assert_eq!(json["by"], "day");
        assert_eq!(json["since_ms"], serde_json::Value::Null);
        let cut = history(&db, HistoryBy::Task, Some(5)).unwrap();
        assert_eq!(serde_json::to_value(&cut).unwrap()["since_ms"], 5);
    }

    /// With no budget left, the estimate says the dispatch would be refused,
    /// in the words the service's own check (E300) uses.
    #[test]
    fn an_estimate_says_when_the_budget_would_refuse_it() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("e.db")).unwrap();
        let mut config = Config::defaults();
        let limits = TaskLimits {
            timeout_seconds: Some(3_600),
            ..Default::default()
        };
        let fits = estimate_task(&db, &config, "generic", "modal", &limits, 1_000).unwrap();
        assert!(
            fits.would_be_refused.is_none(),
            "{:?}",
            fits.would_be_refused
        );
        assert!(fits.estimate_only);
        config.budget.default_ceiling_usd = 0.0;
        let refused = estimate_task(&db, &config, "generic", "modal", &limits, 1_000).unwrap();
        let why = refused
            .would_be_refused
            .clone()
            .expect("refused with no budget");
        assert!(why.contains("the task"), "{why}");
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["estimate_only"], true);
        assert!(json["high_usd"].as_f64().unwrap() > 0.0, "{json}");
    }
}
