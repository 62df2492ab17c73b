//! `parhelia budget …`, the budget lines of `parhelia status`, and
//! `task create --estimate-only`. Reads the ledger straight from SQLite;
//! `budget set` goes through the coordinator.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use parhelia_proto::SetBudgetRequest;
use serde::Serialize;

use super::{Ctx, coordinator_error, print_json};
use crate::budget::{self, Estimate, Standing, usd};
use crate::config::Config;
use crate::db::Db;
use crate::error::coded;
use crate::error_codes;
use crate::event_filter::parse_duration_ms;
use crate::ids::now_ms;
use crate::service::spend::{self, BudgetView, HistoryRow, RatesView};
use crate::table::{Cell, Table};

#[derive(Subcommand, Debug)]
pub enum BudgetCommand {
    /// The ceilings, what is spent and what remains, per task and per day
    Show {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Set the global spending ceiling in USD (persisted; wins over
    /// `[budget] default_ceiling_usd`), and optionally the daily one
    Set {
        /// The global ceiling, e.g. 50.00
        amount: Option<String>,
        /// The ceiling per UTC day, or `none` to remove it
        #[arg(long, value_name = "USD|none")]
        daily: Option<String>,
        /// Set one task's own ceiling instead (with `--max-cost`): a task its
        /// budget stopped can then be resumed or retried
        #[arg(long, value_name = "TASK_ID", requires = "max_cost")]
        task: Option<String>,
        /// The task's ceiling in USD, or `none` to remove it (with `--task`)
        #[arg(long, value_name = "USD|none", requires = "task")]
        max_cost: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Spend grouped by day or task; the rows add up to the total
    History {
        /// Group by
        #[arg(long, value_enum, default_value = "day")]
        by: HistoryBy,
        /// Only spend recorded within this long (e.g. 7d, 12h); default: all
        #[arg(long, value_name = "AGE")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryBy {
    Day,
    Task,
}

impl From<HistoryBy> for spend::HistoryBy {
    fn from(by: HistoryBy) -> Self {
        match by {
            HistoryBy::Day => spend::HistoryBy::Day,
            HistoryBy::Task => spend::HistoryBy::Task,
        }
    }
}

pub async fn run(ctx: &Ctx, command: BudgetCommand) -> Result<i32> {
    match command {
        BudgetCommand::Show { json } => show(ctx, json),
        BudgetCommand::Set {
            amount,
            daily,
            task,
            max_cost,
            json,
        } => {
            let task = task.as_deref().zip(max_cost.as_deref());
            set(ctx, amount.as_deref(), daily.as_deref(), task, json).await
        }
        BudgetCommand::History { by, since, json } => history(ctx, by, since.as_deref(), json),
    }
}

/// Parses `50`, `50.00`, `$50`.
pub(crate) fn parse_usd(flag: &str, text: &str) -> Result<f64> {
    let value = text
        .trim()
        .trim_start_matches('$')
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0);
    value.ok_or_else(|| {
        coded(
            error_codes::INVALID_INPUT,
            format!("{flag}: expected an amount in USD such as 2.00, got {text:?}"),
        )
    })
}

/// `budget show`'s view: the one read the CLI and the MCP server's
/// `parhelia_budget_status` make.
pub(crate) fn budget_view(ctx: &Ctx) -> Result<BudgetView> {
    let opened = ctx.open()?;
    spend::budget_view(&opened.db, &opened.config, now_ms())
}

fn show(ctx: &Ctx, json: bool) -> Result<i32> {
    let view = budget_view(ctx)?;
    if json {
        print_json(&view)?;
        return Ok(0);
    }
    out!("{}", show_text(&view));
    Ok(0)
}

fn show_text(v: &BudgetView) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "ceiling    {} ({})\nused       {} ({:.1}%), warning at {}%\nremaining  {}\n",
        usd(v.ceiling_usd),
        if v.ceiling_source == "config" {
            "[budget] default_ceiling_usd"
        } else {
            "parhelia budget set"
        },
        usd(v.used_usd),
        v.percent_used,
        v.warning_threshold_percent,
        usd(v.remaining_usd),
    ));
    out.push_str(&format!(
        "today      {} {}\n",
        usd(v.today.used_usd),
        match v.today.ceiling_usd {
            Some(c) => format!("of {} daily", usd(c)),
            None => "(no daily ceiling)".into(),
        }
    ));
    out.push_str(&format!(
        "cost       {} = compute {} + model {} + storage {}\ntokens     {} in, {} out, {} cache write, {} cache read\n",
        usd(v.totals.spend.cost_usd),
        usd(v.totals.spend.compute_usd),
        usd(v.totals.spend.model_usd),
        usd(v.totals.spend.storage_usd),
        v.totals.spend.input_tokens,
        v.totals.spend.output_tokens,
        v.totals.spend.cache_creation_input_tokens,
        v.totals.spend.cache_read_input_tokens,
    ));
    if !v.tasks.is_empty() {
        let mut t = Table::new(1)
            .whole("TASK", 15)
            .whole("STATUS", 11)
            .number("MAX", 9)
            .number("COMPUTE", 9)
            .number("MODEL", 9)
            .number("STORAGE", 9)
            .number("COST", 9);
        for task in v.tasks.iter().take(20) {
            t.row(vec![
                task.task_id.as_str().into(),
                Cell::status(task.status.as_deref().unwrap_or("deleted")),
                task.max_cost_usd
                    .map(usd)
                    .unwrap_or_else(|| "-".into())
                    .into(),
                usd(task.totals.spend.compute_usd).into(),
                usd(task.totals.spend.model_usd).into(),
                usd(task.totals.spend.storage_usd).into(),
                usd(task.totals.spend.cost_usd).into(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render_as(crate::output_look::stdout_look()));
        if v.tasks.len() > 20 {
            out.push_str(&format!(
                "… {} more (parhelia budget history --by task)\n",
                v.tasks.len() - 20
            ));
        }
    }
    if !v.days.is_empty() {
        let mut t = Table::new(1)
            .whole("DAY", 11)
            .number("COMPUTE", 9)
            .number("MODEL", 9)
            .number("STORAGE", 9)
            .number("COST", 9);
        for d in &v.days {
            t.row(vec![
                d.key.as_str().into(),
                usd(d.totals.spend.compute_usd).into(),
                usd(d.totals.spend.model_usd).into(),
                usd(d.totals.spend.storage_usd).into(),
                usd(d.totals.spend.cost_usd).into(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render_as(crate::output_look::stdout_look()));
    }
    out.push_str(&rates_text(&v.rates));
    out
}

/// The rate table lines of `budget show`.
fn rates_text(r: &RatesView) -> String {
    let mut out = format!(
        "\nrates      table {} (coordinator/rates/{}.toml){}\n",
        r.table_version,
        r.table_version,
        if r.overridden.is_empty() {
            ", no figure overridden".to_string()
        } else {
            format!(", {} figure(s) overridden by config:", r.overridden.len())
        }
    );
    for o in &r.overridden {
        out.push_str(&format!(
            "  {} = {} (table {}; from {})\n",
            o.key, o.effective_usd, o.table_usd, o.source
        ));
    }
    out.push_str(&format!(
        "storage    modal volume {}/GiB-month; local 0 (the user's own disk)\n",
        usd(r.storage_gib_usd_per_month)
    ));
    if r.local_multiplier != 1.0 {
        out.push_str(&format!(
            "local      compute at {}× the table (`rates.local_multiplier`)\n",
            r.local_multiplier
        ));
    }
    out
}

/// `budget set`'s call: the request checked and built here (E100 before anything is
/// asked), then the coordinator's `SetBudget`.
pub(crate) async fn set_call(
    ctx: &Ctx,
    amount: Option<&str>,
    daily: Option<&str>,
    task: Option<(&str, &str)>,
) -> Result<parhelia_proto::SetBudgetResponse> {
    if amount.is_none() && daily.is_none() && task.is_none() {
        return Err(coded(
            error_codes::INVALID_INPUT,
            "give a ceiling (`parhelia budget set 50.00`), `--daily USD|none`, or `--task ID --max-cost USD|none`",
        ));
    }
    let mut request = SetBudgetRequest::default();
    if let Some((task_id, max_cost)) = task {
        request.task_id = task_id.to_string();
        request.task_max_cost_usd = if max_cost.eq_ignore_ascii_case("none") {
            0.0
        } else {
            let x = parse_usd("--max-cost", max_cost)?;
            if x == 0.0 {
                return Err(coded(
                    error_codes::INVALID_INPUT,
                    "--max-cost: a task's ceiling must be positive (`none` removes it)",
                ));
            }
            x
        };
    }
    if let Some(a) = amount {
        request.set_ceiling = true;
        request.ceiling_usd = parse_usd("the ceiling", a)?;
    }
    if let Some(d) = daily {
        request.set_daily = true;
        request.daily_ceiling_usd = if d.eq_ignore_ascii_case("none") {
            0.0
        } else {
            let x = parse_usd("--daily", d)?;
            if x == 0.0 {
                return Err(coded(
                    error_codes::INVALID_INPUT,
                    "--daily: a daily ceiling must be positive (`none` removes it)",
                ));
            }
            x
        };
    }
    let opened = ctx.open()?;
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .set_budget(request)
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `budget set --json`'s value (`task_id`: the task whose ceiling was set).
pub(crate) fn set_json(
    r: &parhelia_proto::SetBudgetResponse,
    task_id: Option<&str>,
) -> serde_json::Value {
    let mut value = serde_json::json!({
        "ceiling_usd": r.ceiling_usd,
        "daily_ceiling_usd": r.has_daily.then_some(r.daily_ceiling_usd),
    });
    if let Some(task_id) = task_id {
        value["task_id"] = task_id.into();
        value["task_max_cost_usd"] = r.has_task_ceiling.then_some(r.task_max_cost_usd).into();
    }
    value
}

async fn set(
    ctx: &Ctx,
    amount: Option<&str>,
    daily: Option<&str>,
    task: Option<(&str, &str)>,
    json: bool,
) -> Result<i32> {
    let r = set_call(ctx, amount, daily, task).await?;
    if json {
        print_json(&set_json(&r, task.map(|(id, _)| id)))?;
    } else {
        if let Some((task_id, _)) = task {
            match r.has_task_ceiling {
                true => outln!("{task_id}: ceiling {}", usd(r.task_max_cost_usd)),
                false => outln!("{task_id}: no ceiling of its own"),
            }
        }
        outln!(
            "budget ceiling {}{}",
            usd(r.ceiling_usd),
            if r.has_daily {
                format!(", daily {}", usd(r.daily_ceiling_usd))
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

/// `budget history`'s rows and total: the one read the CLI and the MCP server's
/// `parhelia_budget_history` make.
pub(crate) fn history_view(
    ctx: &Ctx,
    by: HistoryBy,
    since: Option<&str>,
) -> Result<spend::BudgetHistory> {
    let since_ms = match since {
        Some(age) => Some(now_ms() - parse_duration_ms(age)?),
        None => None,
    };
    let opened = ctx.open()?;
    spend::history(&opened.db, by.into(), since_ms)
}

fn history(ctx: &Ctx, by: HistoryBy, since: Option<&str>, json: bool) -> Result<i32> {
    let history = history_view(ctx, by, since)?;
    if json {
        print_json(&history)?;
        return Ok(0);
    }
    let (rows, total) = (history.rows, history.total);
    let head = match by {
        HistoryBy::Day => "DAY",
        HistoryBy::Task => "TASK",
    };
    let mut t = Table::new(1)
        .whole(head, 15)
        .number("COMPUTE", 9)
        .number("MODEL", 9)
        .number("STORAGE", 9)
        .number("COST", 9)
        .number("IN TOK", 10)
        .number("OUT TOK", 10)
        .number("CW TOK", 10)
        .number("CR TOK", 10);
    for r in rows.iter().chain(std::iter::once(&HistoryRow {
        key: "total".into(),
        totals: total.clone(),
    })) {
        t.row(vec![
            r.key.as_str().into(),
            usd(r.totals.spend.compute_usd).into(),
            usd(r.totals.spend.model_usd).into(),
            usd(r.totals.spend.storage_usd).into(),
            usd(r.totals.spend.cost_usd).into(),
            r.totals.spend.input_tokens.to_string().into(),
            r.totals.spend.output_tokens.to_string().into(),
            r.totals
                .spend
                .cache_creation_input_tokens
                .to_string()
                .into(),
            r.totals.spend.cache_read_input_tokens.to_string().into(),
        ]);
    }
    out!("{}", t.render_as(crate::output_look::stdout_look()));
    Ok(0)
}

/// The budget part of `parhelia status`: JSON and text lines.
pub(crate) fn status_budget(db: &Db, config: &Config) -> Result<(serde_json::Value, String)> {
    let now = now_ms();
    let mut standing: Standing = db.standing(None, &config.budget, now)?;
    // The figures every view shows (the watchdog's are SQL sums of the same rows).
    standing.global_spent_usd = db.spent_since_usd(i64::MIN)?;
    standing.day_spent_usd = db.spent_since_usd(budget::day_start_ms(now))?;
    let ceilings = db.ceilings(&config.budget)?;
    let json = serde_json::json!({
        "ceiling_usd": standing.global_ceiling_usd,
        "used_usd": standing.global_spent_usd,
        "remaining_usd": standing.global_ceiling_usd - standing.global_spent_usd,
        "today_usd": standing.day_spent_usd,
        "daily_ceiling_usd": ceilings.daily_usd,
    });
    let mut text = format!(
        "budget     {} of {} used, {} left\n",
        usd(standing.global_spent_usd),
        usd(standing.global_ceiling_usd),
        usd(standing.global_ceiling_usd - standing.global_spent_usd)
    );
    text.push_str(&format!(
        "today      {}{}\n",
        usd(standing.day_spent_usd),
        match ceilings.daily_usd {
            Some(c) => format!(" of {} daily", usd(c)),
            None => String::new(),
        }
    ));
    Ok((json, text))
}

/// `task create --estimate-only` as text.
pub(crate) fn estimate_text(e: &Estimate, config: &Config, refusal: Option<&str>) -> String {
    let mut out = String::from("estimate only: nothing was launched or recorded\n");
    out.push_str(&format!(
        "range      {} – {}{}\n",
        usd(e.low_usd),
        usd(e.high_usd),
        match (e.max_cost_usd, e.model_cost_unknown) {
            (Some(cap), _) => format!(" (capped by --max-cost {})", usd(cap)),
            (None, true) =>
                " + model cost (unknown: no similar task yet; cap it with --max-cost)".into(),
            (None, false) => String::new(),
        }
    ));
    let r = &e.resources;
    out.push_str(&format!(
        "resources  {} backend: {} cores, {:.1} GiB{}\n",
        e.backend,
        r.cpu_cores,
        r.memory_gib,
        r.gpu
            .as_ref()
            .map(|g| format!(", {}× {}", g.count, g.gpu_type))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "compute    {}/s × {} s timeout = {}{}\n",
        usd(e.rate_usd_per_second),
        e.timeout_seconds,
        usd(e.compute_max_usd),
        if e.backend == "local" {
            format!(
                " (local: {}× the rate table, `rates.local_multiplier`)",
                config.rates.local_multiplier
            )
        } else {
            String::new()
        }
    ));
    if e.backend == "local" {
        let mut modal = config.clone();
        modal.rates.local_multiplier = 1.0;
        let priced = budget::estimate(
            &budget::TaskLimits {
                max_cost_usd: None,
                ..limits_of(e)
            },
            "local",
            &modal,
            None,
        );
        out.push_str(&format!(
            "           at the rate table's prices: {}/s, {} for the timeout\n",
            usd(priced.rate_usd_per_second),
            usd(priced.compute_max_usd)
        ));
    }
    out.push_str(&format!(
        "priced     {} by rate table {}{}\n",
        e.priced.join(", "),
        e.rate_table_version,
        if e.rate_overrides.is_empty() {
            String::new()
        } else {
            format!(" (overridden by config: {})", e.rate_overrides.join(", "))
        }
    ));
    match &e.history {
        Some(h) => out.push_str(&format!(
            "history    {} similar task(s): {} min, {} avg, {} max (model up to {})\n",
            h.tasks,
            usd(h.min_usd),
            usd(h.avg_usd),
            usd(h.max_usd),
            usd(h.max_model_usd)
        )),
        None => out.push_str("history    no similar task (same type and backend) has ended yet\n"),
    }
    if let Some(refusal) = refusal {
        out.push_str(&format!("dispatch   would be refused [E300]: {refusal}\n"));
    }
    out
}

fn limits_of(e: &Estimate) -> budget::TaskLimits {
    budget::TaskLimits {
        max_cost_usd: e.max_cost_usd,
        gpu: e
            .resources
            .gpu
            .as_ref()
            .map(|g| format!("{}:{}", g.gpu_type, g.count)),
        cpu: Some(e.resources.cpu_cores),
        memory_mb: Some((e.resources.memory_gib * 1024.0).round() as u64),
        timeout_seconds: Some(e.timeout_seconds),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Issue 13: `cost` was the model's share in `task list/show`, `--sync`
    /// and `status` (a GPU task showed $0.0006 of its $0.0279). A task with
    /// compute, model and storage spend now shows one total and one
    /// breakdown in every view.
    #[test]
    fn every_view_shows_the_same_cost_and_breakdown() {
        use crate::db::{ContainerRef, NewLaunch, SpendScope};
        use crate::task_state::TaskStatus;
        use crate::views;
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("v.db")).unwrap();
        let target = ContainerRef {
            task_id: "task-0000000a".into(),
            session_id: "sess-0000000a".into(),
            container_id: "ctr-0000000a".into(),
        };
        db.insert_launch(&NewLaunch {
            task_id: target.task_id.clone(),
            session_id: target.session_id.clone(),
            container_id: target.container_id.clone(),
            claude_session_id: "uuid".into(),
            prompt: "Train model".into(),
            task_type: "generic".into(),
            backend: "modal".into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            secret: crate::ids::SessionSecret::from_stored("s3cret".into()),
            workspace_dir: "/w".into(),
            volume_dir: "/v".into(),
        })
        .unwrap();
        db.transition_task(&target.task_id, TaskStatus::Running, &Default::default())
            .unwrap();
        // Two heartbeats of an A10G's compute, one model response, storage.
        db.charge_compute(&target, 1_000, 0.0150, 5.0, serde_json::json!({}))
            .unwrap();
        db.charge_compute(&target, 2_000, 0.0123, 5.0, serde_json::json!({}))
            .unwrap();
        // Per-response metering may add fields to `Usage`.
        #[allow(clippy::needless_update)]
        let usage = parhelia_proto::Usage {
            input_tokens: 470,
            output_tokens: 55,
            cache_creation_input_tokens: 7,
            cache_read_input_tokens: 11,
            ..Default::default()
        };
        db.charge_model(&target, 1_500, 0.0006, Some(&usage))
            .unwrap();
        assert!(db.start_storage_meters("modal").unwrap() == 1);
        let started = db.active_storage_meters().unwrap()[0].measured_at_ms;
        db.record_storage_measurement(&target.session_id, started, 1 << 30, 0.20)
            .unwrap();
        db.record_storage_measurement(&target.session_id, started + 3_600_000, 1 << 30, 0.20)
            .unwrap();

        let spend = db.spend(SpendScope::Task(&target.task_id)).unwrap();
        let storage = 0.20 / 720.0; // 1 GiB for one hour of a 30-day month
        assert!((spend.compute_usd - 0.0273).abs() < 1e-12, "{spend:?}");
        assert!((spend.model_usd - 0.0006).abs() < 1e-12);
        assert!((spend.storage_usd - storage).abs() < 1e-12);
        assert_eq!(
            spend.cost_usd,
            spend.compute_usd + spend.model_usd + spend.storage_usd
        );
        assert_eq!(
            (
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_creation_input_tokens,
                spend.cache_read_input_tokens
            ),
            (470, 55, 7, 11)
        );
        let fields = |v: &serde_json::Value| -> Vec<serde_json::Value> {
            [
                "cost_usd",
                "compute_usd",
                "model_usd",
                "storage_usd",
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ]
            .iter()
            .map(|k| {
                v.get(*k)
                    .cloned()
                    .unwrap_or_else(|| panic!("{k} missing in {v}"))
            })
            .collect()
        };
        let expected = fields(&serde_json::to_value(&spend).unwrap());

        // task show / task list / --sync --json (TaskView).
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(
            fields(&serde_json::to_value(views::TaskView::from(&task)).unwrap()),
            expected
        );
        let listed = db.list_tasks(None).unwrap();
        assert_eq!(
            fields(&serde_json::to_value(views::TaskView::from(&listed[0])).unwrap()),
            expected
        );
        // session show / list.
        let session = db.get_session(&target.session_id).unwrap().unwrap();
        assert_eq!(
            fields(&serde_json::to_value(views::SessionView::from(&session)).unwrap()),
            expected
        );
        // status: the running session, and the total (only this task).
        let running = db.running_sessions().unwrap();
        let thresholds = crate::config::Config::defaults().policy("").thresholds;
        let row = views::RunningSessionView::of(&running[0], 3_000, 5_000, &thresholds);
        assert_eq!(fields(&serde_json::to_value(&row).unwrap()), expected);
        assert_eq!(
            fields(&serde_json::to_value(db.total_spend().unwrap()).unwrap()),
            expected
        );
        // budget show / history: the task's row and the totals.
        let loaded =
            crate::config::resolve(&[], &BTreeMap::new(), &[], std::path::Path::new("/")).unwrap();
        let view = spend::budget_view(&db, &loaded, 3_000).unwrap();
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(fields(&json), expected);
        assert_eq!(fields(&json["tasks"][0]), expected);
        assert_eq!(json["used_usd"], expected[0]);
        assert_eq!(json["total_usd"], expected[0]);
        let (rows, total) = spend::group(
            &db.ledger_entries(i64::MIN).unwrap(),
            spend::HistoryBy::Task,
        );
        assert_eq!(fields(&serde_json::to_value(&rows[0]).unwrap()), expected);
        assert_eq!(fields(&serde_json::to_value(&total).unwrap()), expected);
        // The watchdog's figure is the same total.
        assert_eq!(db.task_spent_usd(&target.task_id).unwrap(), spend.cost_usd);

        // The text views show the same total and breakdown.
        let line = views::cost_breakdown(&spend);
        assert!(
            line.starts_with("$0.0282 (compute $0.0273, model $0.0006, storage $0.0003)"),
            "{line}"
        );
        assert!(views::task_detail(&task).contains(&format!("cost       {line}\n")));
        assert!(views::task_table(&listed, 3_000, crate::table::Look::PLAIN).contains("$0.0282"));
        assert!(views::session_detail(&session).contains(&line));
        let watched = crate::watch::WatchedTask {
            task: task.clone(),
            last_assistant_text: None,
        };
        assert!(
            watched.summary().contains(&format!("cost {line}")),
            "{}",
            watched.summary()
        );
        let text = show_text(&view);
        assert!(
            text.contains("cost       $0.0282 = compute $0.0273 + model $0.0006 + storage $0.0003"),
            "{text}"
        );
        // Storage was charged today (the meter runs on the real clock).
        let text = regex::Regex::new(r"\d{4}-\d{2}-\d{2}")
            .unwrap()
            .replace_all(&text, "<day>")
            .into_owned();
        insta::assert_snapshot!(text);
    }

    #[test]
    fn budget_show_names_the_rate_table_and_every_override() {
        let loaded = crate::config::resolve(
            &[],
            &BTreeMap::from([(
                "PARHELIA_RATES_GPU_H100_USD_PER_SECOND".to_string(),
                "0.002".to_string(),
            )]),
            &["rates.storage_gib_usd_per_month=0.5".into()],
            std::path::Path::new("/"),
        )
        .unwrap();
        let rates = RatesView::of(&loaded);
        assert_eq!(rates.table_version, crate::rates::embedded().version);
        let text = rates_text(&rates);
        assert!(text.contains("table 2026-12"), "{text}");
        assert!(text.contains("rates.gpu_h100_usd_per_second = 0.002 (table 0.001097; from env PARHELIA_RATES_GPU_H100_USD_PER_SECOND)"), "{text}");
        assert!(
            text.contains("rates.storage_gib_usd_per_month = 0.5 (table 0.2; from --set)"),
            "{text}"
        );
        assert!(text.contains("local 0 (the user's own disk)"), "{text}");
        let json = serde_json::to_value(&rates).unwrap();
        assert_eq!(json["overridden"].as_array().unwrap().len(), 2);
        assert_eq!(json["local_storage_usd_per_gib_month"], 0.0);
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_usd("x", "2.00").unwrap(), 2.0);
        assert_eq!(parse_usd("x", "$50").unwrap(), 50.0);
        assert!(parse_usd("x", "-1").is_err());
        assert!(parse_usd("x", "ten").is_err());
    }
}
