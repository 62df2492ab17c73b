//! Operating Parhelia: `reconciler`, `cleanup`, `doctor`, `config`,
//! `status`, `coordinator`.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use parhelia_proto::{RunReconcilerRequest, ShutdownRequest};
use serde::Serialize;

use super::{Ctx, Interrupt, coordinator_error, print_json};
use crate::coordinator_client;
use crate::doctor::{self, DoctorInputs, Repair, Verdict};
use crate::error::coded;
use crate::error_codes;
use crate::ids::{now_ms, rfc3339_ms};
use crate::reconcile::{Action, PassReport, Policy};
use crate::state_dir::StateDir;
use crate::table::{Cell, Look, Table, Tone};
use crate::views;

#[derive(Subcommand, Debug)]
pub enum ReconcilerCommand {
    /// The last pass, the drift it saw, the policy, recent actions
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A pass now (through the coordinator); without `--once`, then follows
    /// the coordinator's passes until interrupted (Ctrl-C)
    Run {
        /// One pass, then exit
        #[arg(long)]
        once: bool,
        /// Compute the actions; execute none
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct CleanupArgs {
    /// Terminate the orphans found (whatever `auto_terminate_orphans` says)
    #[arg(long)]
    pub terminate: bool,
    /// Report what would be done; change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Repair what can be repaired (permissions, a stale socket, containers
    /// on record whose agent is gone)
    #[arg(long)]
    pub fix: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Every setting's effective value and where it came from
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Upload your Claude Code settings, CLAUDE.md, commands, agents, skills,
    /// plugins and MCP servers to the Modal volume (only what changed);
    /// credentials never leave this machine
    Sync(super::modal::SyncArgs),
}

#[derive(Subcommand, Debug)]
pub enum CoordinatorCommand {
    /// Run the coordinator in the foreground
    Run {
        /// Leave the terminal's session (used when the CLI starts it)
        #[arg(long, hide = true)]
        detached: bool,
    },
    /// Ask the running coordinator to stop (sessions keep running); one that holds
    /// the state directory without answering (stopped, hung) is ended by signal
    Stop,
    /// Make the running coordinator read config.toml again now (it also
    /// does within a second of a change); sessions keep running
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Is the coordinator running?
    Status {
        #[arg(long)]
        json: bool,
    },
}

async fn run_pass(
    ctx: &Ctx,
    state: &StateDir,
    dry_run: bool,
    terminate_orphans: bool,
    trigger: &str,
) -> Result<PassReport> {
    let mut client = ctx.client(state).await?;
    let response = client
        .run_reconciler(RunReconcilerRequest {
            dry_run,
            terminate_orphans,
            trigger: trigger.into(),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    let report = response.report.ok_or_else(|| {
        coded(
            error_codes::INFRASTRUCTURE_ERROR,
            "the coordinator sent no reconciler report",
        )
    })?;
    Ok(PassReport::try_from(report)?)
}

/// `reconciler run --once`'s call: one manual pass (the coordinator's
/// `RunReconciler`), its report.
pub(crate) async fn reconciler_run_once(ctx: &Ctx, dry_run: bool) -> Result<PassReport> {
    let opened = ctx.open()?;
    run_pass(ctx, &opened.state, dry_run, false, "manual").await
}

/// One pass as text.
pub fn report_text(report: &PassReport) -> String {
    let mut out = format!(
        "pass {} ({}{}) · {} ms · observed {} · {} should run\n",
        rfc3339_ms(report.started_at_ms),
        report.trigger,
        if report.dry_run { ", dry run" } else { "" },
        report.finished_at_ms - report.started_at_ms,
        report
            .drift
            .observed
            .map(|n| n.to_string())
            .unwrap_or_else(|| "? (listing failed)".into()),
        report.drift.intended_active
    );
    if let Some(err) = &report.list_error {
        out.push_str(&format!("  listing failed: {err}\n"));
    }
    if report.journal_events_ingested > 0 {
        out.push_str(&format!(
            "  caught up {} event(s) from journals\n",
            report.journal_events_ingested
        ));
    }
    if report.actions.is_empty() {
        out.push_str("  no actions\n");
    }
    for a in &report.actions {
        out.push_str(&format!("  {:<12}{}\n", a.result, a.action.describe()));
        if let Some(detail) = &a.detail {
            out.push_str(&format!("  {:<12}{detail}\n", ""));
        }
    }
    out
}

#[derive(Serialize)]
pub(crate) struct ReconcilerStatusView {
    coordinator_running: bool,
    coordinator_id: String,
    poll_interval_seconds: f64,
    policy: Policy,
    last_run: Option<PassReport>,
    passes_last_hour: u64,
    actions_last_hour: u64,
    recent_actions: Vec<RecentAction>,
}

#[derive(Serialize)]
struct RecentAction {
    at: String,
    result: String,
    #[serde(flatten)]
    action: Action,
}

/// `reconciler status`'s view: the one read the CLI and the MCP server's
/// `parhelia_reconciler_status` make.
pub(crate) async fn reconciler_status(ctx: &Ctx) -> Result<ReconcilerStatusView> {
    let opened = ctx.open()?;
    let coordinator_id = opened.db.coordinator_id()?;
    let running = coordinator_client::ping_checked(&opened.state)
        .await?
        .is_some();
    let runs = opened.db.reconciler_runs(50)?;
    let (passes, actions) = opened.db.reconciler_totals(now_ms() - 3_600_000)?;
    let mut recent = Vec::new();
    for run in runs.iter().filter(|r| !r.dry_run) {
        for a in run
            .actions
            .iter()
            .filter(|a| !matches!(a.action, Action::SetHealth { from: None, .. }))
        {
            if recent.len() < 10 {
                recent.push(RecentAction {
                    at: rfc3339_ms(run.started_at_ms),
                    result: a.result.clone(),
                    action: a.action.clone(),
                });
            }
        }
    }
    let config = &opened.config.config;
    let view = ReconcilerStatusView {
        coordinator_running: running,
        policy: config.policy(&coordinator_id),
        coordinator_id,
        poll_interval_seconds: config.reconciler.poll_interval_seconds,
        last_run: runs.into_iter().find(|r| !r.dry_run),
        passes_last_hour: passes,
        actions_last_hour: actions,
        recent_actions: recent,
    };
    Ok(view)
}

pub async fn reconciler(ctx: &Ctx, command: ReconcilerCommand) -> Result<i32> {
    match command {
        ReconcilerCommand::Status { json } => {
            let view = reconciler_status(ctx).await?;
            if json {
                print_json(&view)?;
            } else {
                out!("{}", status_text(&view, crate::output_look::stdout_look()));
            }
            Ok(0)
        }
        ReconcilerCommand::Run {
            once,
            dry_run,
            json,
        } => {
            let opened = ctx.open()?;
            let report = reconciler_run_once(ctx, dry_run).await?;
            let print = |report: &PassReport| -> Result<()> {
                if json {
                    outln!("{}", serde_json::to_string(report)?);
                } else {
                    out!("{}", report_text(report));
                }
                Ok(())
            };
            print(&report)?;
            if once {
                return Ok(0);
            }
            let mut interrupt = Interrupt::new();
            let mut last = report.started_at_ms;
            loop {
                if interrupt.sleep(Duration::from_millis(500)).await {
                    return Ok(0);
                }
                let mut newer: Vec<PassReport> = opened
                    .db
                    .reconciler_runs(20)?
                    .into_iter()
                    .filter(|r| r.started_at_ms > last)
                    .collect();
                newer.reverse();
                for run in &newer {
                    last = last.max(run.started_at_ms);
                    print(run)?;
                }
            }
        }
    }
}

/// The tone of an action's result: `failed` red, `planned`/`unavailable`
/// yellow (not done), `done` green.
fn result_tone(result: &str) -> Option<Tone> {
    match result {
        "done" => Some(Tone::Good),
        "failed" => Some(Tone::Bad),
        "planned" | "unavailable" => Some(Tone::Busy),
        _ => None,
    }
}

/// `reconciler status` as text, laid out for `look`.
fn status_text(view: &ReconcilerStatusView, look: Look) -> String {
    let mut out = String::new();
    let field = |out: &mut String, name: &str, value: String| {
        out.push_str(&format!("{name:<11}{value}\n"));
    };
    field(
        &mut out,
        "reconciler",
        if view.coordinator_running {
            format!(
                "runs in the coordinator every {}s",
                view.poll_interval_seconds
            )
        } else {
            "idle: the coordinator is not running (commands start it)".into()
        },
    );
    let p = &view.policy;
    field(
        &mut out,
        "policy",
        format!(
            "dead after {}s · degraded/unhealthy after {}/{} missed",
            p.thresholds.stale_threshold_ms / 1000,
            p.thresholds.degraded_after_missed,
            p.thresholds.unhealthy_after_missed
        ),
    );
    field(
        &mut out,
        "",
        format!(
            "orphans: {} · auto-resume: {}",
            if p.auto_terminate_orphans {
                "terminate"
            } else {
                "report"
            },
            if p.auto_resume {
                format!("up to {} per task", p.max_auto_resumes)
            } else {
                "off".into()
            }
        ),
    );
    match &view.last_run {
        None => field(&mut out, "last pass", "none yet".into()),
        Some(run) => {
            field(
                &mut out,
                "last pass",
                format!(
                    "{} ({}) · {} action(s)",
                    rfc3339_ms(run.started_at_ms),
                    run.trigger,
                    run.actions.len()
                ),
            );
            let d = &run.drift;
            field(
                &mut out,
                "drift",
                format!(
                    "{} should run · {} observed",
                    d.intended_active,
                    d.observed
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
            );
            let list = |ids: &[String]| {
                if ids.is_empty() {
                    "-".to_string()
                } else {
                    ids.join(", ")
                }
            };
            field(&mut out, "", format!("missing: {}", list(&d.missing)));
            field(&mut out, "", format!("orphans: {}", list(&d.unexpected)));
            field(&mut out, "", format!("stale:   {}", list(&d.stale)));
        }
    }
    field(
        &mut out,
        "last hour",
        format!(
            "{} pass(es), {} action(s)",
            view.passes_last_hour, view.actions_last_hour
        ),
    );
    if !view.recent_actions.is_empty() {
        out.push_str("recent\n");
        let mut t = Table::new(2)
            .whole("TIME", 8)
            .whole("RESULT", 6)
            .text("ACTION");
        for a in &view.recent_actions {
            let clock = a.at.get(11..19).unwrap_or(&a.at);
            t.row(vec![
                clock.into(),
                Cell::toned(&a.result, result_tone(&a.result)),
                a.action.describe().into(),
            ]);
        }
        for line in t.render_as(look).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

#[derive(Serialize)]
struct CleanupView<'a> {
    dry_run: bool,
    terminate: bool,
    orphans: Vec<&'a Action>,
    terminated: Vec<&'a str>,
    report: &'a PassReport,
}

/// `cleanup`'s call: one reconciler pass that reports (and with `terminate`
/// ends) orphans (the coordinator's `RunReconciler`), its report.
pub(crate) async fn cleanup_call(ctx: &Ctx, dry_run: bool, terminate: bool) -> Result<PassReport> {
    let opened = ctx.open()?;
    run_pass(ctx, &opened.state, dry_run, terminate, "cleanup").await
}

/// `cleanup --json`'s value.
pub(crate) fn cleanup_json(
    report: &PassReport,
    dry_run: bool,
    terminate: bool,
) -> Result<serde_json::Value> {
    let orphans: Vec<&Action> = report
        .actions
        .iter()
        .map(|a| &a.action)
        .filter(|a| matches!(a, Action::ReportOrphan { .. }))
        .collect();
    let terminated: Vec<&str> = report
        .actions
        .iter()
        .filter(|a| matches!(a.action, Action::TerminateOrphan { .. }))
        .map(|a| a.action.container_id())
        .collect();
    Ok(serde_json::to_value(CleanupView {
        dry_run,
        terminate,
        orphans,
        terminated,
        report,
    })?)
}

pub async fn cleanup(ctx: &Ctx, args: CleanupArgs) -> Result<i32> {
    let report = cleanup_call(ctx, args.dry_run, args.terminate).await?;
    if args.json {
        print_json(&cleanup_json(&report, args.dry_run, args.terminate)?)?;
        return Ok(0);
    }
    let opened = ctx.open()?;
    // Orphans reported by earlier passes are still orphans.
    let known = opened.db.list_orphans(false)?;
    let orphaned_records = opened
        .db
        .list_containers(Some(crate::container_state::ContainerState::Orphaned), None)?;
    // Those whose stop or termination was asked for (by this pass or an earlier one).
    let mut requested: Vec<String> = known
        .iter()
        .filter(|o| o.terminate_requested_at_ms.is_some())
        .map(|o| o.container_id.clone())
        .collect();
    for id in &report.drift.unexpected {
        if let Some(c) = opened.db.get_container(id)?
            && c.stop_requested_at_ms.is_some()
        {
            requested.push(id.clone());
        }
    }
    requested.extend(
        orphaned_records
            .iter()
            .filter(|c| c.stop_requested_at_ms.is_some())
            .map(|c| c.id.clone()),
    );
    let known: Vec<String> = known.into_iter().map(|o| o.container_id).collect();
    let orphaned_records: Vec<String> = orphaned_records.into_iter().map(|c| c.id).collect();
    out!(
        "{}",
        cleanup_text(
            &report,
            &[&known, &orphaned_records],
            &requested,
            args.dry_run,
            args.terminate,
            crate::output_look::stdout_look()
        )
    );
    Ok(0)
}

/// `cleanup` as text, laid out for `look`: session processes the pass ended,
/// then every orphaned container (the pass's, and those `also` names:
/// earlier passes' and the records in state `orphaned`) with what became of it
/// (`requested`: those whose stop or termination was already asked for).
fn cleanup_text(
    report: &PassReport,
    also: &[&[String]],
    requested: &[String],
    dry_run: bool,
    terminate: bool,
    look: Look,
) -> String {
    let mut out = String::new();
    if dry_run {
        out.push_str("dry run: nothing was changed\n");
    }
    let terminated: Vec<&str> = report
        .actions
        .iter()
        .filter(|a| matches!(a.action, Action::TerminateOrphan { .. }))
        .map(|a| a.action.container_id())
        .collect();
    let mut ids: Vec<String> = report.drift.unexpected.clone();
    for id in also.iter().flat_map(|ids| ids.iter()) {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    // Session processes with no live agent (a killed agent's, or no record at all):
    // every pass ends them after a workspace checkpoint.
    for outcome in &report.actions {
        if let Action::EndSessionProcesses { .. } = &outcome.action {
            let verb = match outcome.result.as_str() {
                "done" => "ended",
                "planned" => "would end",
                _ => "could not end",
            };
            out.push_str(&format!(
                "session processes {verb}: {}{}\n",
                outcome.action.describe(),
                outcome
                    .detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
        }
    }
    if ids.is_empty() {
        out.push_str("no orphaned containers\n");
        return out;
    }
    out.push_str("orphaned containers (ours by label, no live record):\n");
    let mut t = Table::new(2).whole("CONTAINER", 12).text("WHAT");
    for id in &ids {
        let (what, tone) = if terminated.contains(&id.as_str()) {
            if dry_run {
                ("would be terminated", Some(Tone::Busy))
            } else {
                ("terminated", Some(Tone::Good))
            }
        } else if terminate && requested.contains(id) {
            ("termination already requested", Some(Tone::Busy))
        } else if terminate {
            // Its container ended less than a stop's grace ago (it may still be
            // stopping): a later pass terminates it.
            (
                "not yet: it ended moments ago; run again shortly",
                Some(Tone::Busy),
            )
        } else {
            ("kept (parhelia cleanup --terminate stops it)", None)
        };
        t.row(vec![id.as_str().into(), Cell::toned(what, tone)]);
    }
    for line in t.render_as(look).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

pub async fn doctor(ctx: &Ctx, args: DoctorArgs) -> Result<i32> {
    let state = ctx.state()?;
    let config = crate::config::load(state.root(), &ctx.set);
    let (pong, refused) = match coordinator_client::ping_checked(&state).await {
        Ok(pong) => (pong.map(|(_, p)| p), None),
        Err(err) => (None, Some(format!("{err:#}"))),
    };
    let inputs = DoctorInputs {
        state: &state,
        config: config.as_ref().map_err(|e| e.message.clone()),
        coordinator_pid: pong.as_ref().map(|p| p.pid),
        coordinator_refused: refused,
    };
    let mut checks = doctor::run_checks(&inputs).await;
    if args.fix {
        doctor::repair_locally(&state, &mut checks);
        if checks
            .iter()
            .any(|c| c.repair == Some(Repair::RunReconciler))
        {
            match run_pass(ctx, &state, false, false, "doctor").await {
                Ok(report) => {
                    for c in checks
                        .iter_mut()
                        .filter(|c| c.repair == Some(Repair::RunReconciler))
                    {
                        c.repaired = true;
                        c.detail.push_str(&format!(
                            " → reconciler: {} action(s)",
                            report.actions.len()
                        ));
                    }
                }
                Err(err) => eprintln!("the reconciler pass failed: {err:#}"),
            }
        }
    }
    if args.json {
        print_json(&checks)?;
    } else {
        out!("{}", doctor::report_text(&checks));
    }
    let failed = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail && !c.repaired)
        .count();
    if failed > 0 {
        return Err(coded(
            error_codes::INFRASTRUCTURE_ERROR,
            format!("doctor found {failed} failing check(s)"),
        ));
    }
    Ok(0)
}

pub async fn config(ctx: &Ctx, command: ConfigCommand) -> Result<i32> {
    let ConfigCommand::Show { json } = command else {
        unreachable!("config sync is dispatched to cli::modal");
    };
    let state = ctx.state()?;
    // With a coordinator running, its configuration is the one in effect.
    let mut effective = ctx.effective_config(&state, false).await;
    // A live coordinator holds the state directory while its control plane restarts
    // (a reload of config.toml): wait for it a little, rather than read the files.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while matches!(&effective, Ok(e) if e.coordinator.is_none())
        && coordinator_client::lock_holder(&state).is_some_and(|h| !h.stopped)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        effective = ctx.effective_config(&state, false).await;
    }
    if let Ok(super::EffectiveConfig {
        coordinator: Some((pid, reply)),
        ..
    }) = &effective
    {
        if json {
            let mut value: serde_json::Value = serde_json::from_str(&reply.config_json)?;
            value["coordinator"] = serde_json::json!({
                "pid": pid,
                "loaded_at": crate::ids::rfc3339_ms(reply.loaded_at_ms),
                "flags": reply.flags,
            });
            print_json(&value)?;
        } else {
            outln!("# in effect in the running coordinator (pid {pid})");
            out!("{}", reply.config_toml);
        }
        return Ok(0);
    }
    effective?;
    // A coordinator that holds the state directory but did not answer runs with a
    // configuration this command cannot read: the files are shown, saying so, never
    // as if none ran.
    let silent = coordinator_client::lock_holder(&state);
    let loaded = crate::config::load(state.root(), &ctx.set)?;
    if json {
        print_json(&serde_json::json!({
            "files": loaded.files,
            "settings": loaded.settings,
            "unknown_keys": loaded.unknown_keys,
            "coordinator_not_answering": silent.map(|h| serde_json::json!({
                "pid": h.pid,
                "stopped": h.stopped,
            })),
        }))?;
    } else {
        loaded.warn_unknown_keys();
        if let Some(holder) = silent {
            outln!(
                "# a coordinator ({}) holds the state directory and did not answer: what it \
                 runs with cannot be read; these are the files, as a coordinator started now \
                 would read them (`parhelia coordinator status`)",
                holder.describe()
            );
        }
        out!("{}", crate::config::show_text(&loaded));
    }
    Ok(0)
}

/// E406 (a coordinator that refuses us) is an error, never "not running".
async fn coordinator_view(state: &StateDir) -> Result<views::CoordinatorView> {
    let pong = coordinator_client::ping_checked(state)
        .await?
        .map(|(_, pong)| pong);
    Ok(views::CoordinatorView {
        running: pong.is_some(),
        pid: pong.as_ref().map(|p| p.pid),
        version: pong.map(|p| p.version),
        socket: state.socket_path().to_string_lossy().into_owned(),
    })
}

/// `status`'s view and its budget part (JSON and text): the one read the CLI and
/// the MCP server's `parhelia_health` make.
pub(crate) async fn status_view(
    ctx: &Ctx,
) -> Result<(views::StatusView, serde_json::Value, String)> {
    let opened = ctx.open()?;
    let db = &opened.db;
    let view = views::StatusView {
        state_dir: opened.state.root().to_string_lossy().into_owned(),
        coordinator: coordinator_view(&opened.state).await?,
        coordinator_id: db.coordinator_id()?,
        tasks: db.task_counts()?,
        queued: db.queued_tasks()?.len() as u64,
        held: db.held_tasks()?.len() as u64,
        // The running coordinator's limit, when one runs: it is what queues.
        max_concurrent_workers: ctx
            .effective_config(&opened.state, false)
            .await?
            .loaded
            .config
            .orchestrator
            .max_concurrent_workers,
        running_sessions: {
            let policy = opened.config.config.policy("");
            let now = crate::ids::now_ms();
            db.running_sessions()?
                .iter()
                .map(|s| {
                    views::RunningSessionView::of(
                        s,
                        now,
                        policy.default_heartbeat_interval_ms,
                        &policy.thresholds,
                    )
                })
                .collect()
        },
        spend: db.total_spend()?,
    };
    let (budget_json, budget_text) = super::budget::status_budget(db, &opened.config.config)?;
    Ok((view, budget_json, budget_text))
}

/// `status --json`'s value.
pub(crate) fn status_json(
    view: &views::StatusView,
    budget_json: serde_json::Value,
) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(view)?;
    value["budget"] = budget_json;
    Ok(value)
}

pub async fn status(ctx: &Ctx, json: bool) -> Result<i32> {
    let (view, budget_json, budget_text) = status_view(ctx).await?;
    if json {
        print_json(&status_json(&view, budget_json)?)?;
    } else {
        out!(
            "{}{budget_text}",
            views::status_text(&view, crate::output_look::stdout_look())
        );
    }
    Ok(0)
}

pub async fn coordinator(ctx: &Ctx, command: CoordinatorCommand) -> Result<i32> {
    match command {
        CoordinatorCommand::Run { .. } => {
            // A reload (config.toml changed, or `coordinator reload`) stops the
            // control plane and runs it again here with the new values.
            while crate::daemon::run(ctx.state()?, &ctx.set).await? == crate::daemon::RunEnd::Reload
            {
            }
            Ok(0)
        }
        CoordinatorCommand::Reload { json } => {
            let state = ctx.state()?;
            let Some((mut client, pong)) = coordinator_client::ping_checked(&state).await? else {
                if json {
                    print_json(&serde_json::json!({"running": false, "changed": false}))?;
                } else {
                    outln!("coordinator not running (it reads config.toml when it starts)");
                }
                return Ok(0);
            };
            let reply = client
                .reload_config(parhelia_proto::ReloadConfigRequest {})
                .await
                .map_err(coordinator_error)?
                .into_inner();
            if reply.changed {
                // Until the restarted coordinator answers, with a new pid.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some((_, now)) = coordinator_client::ping_checked(&state).await?
                        && now.pid == pong.pid
                        && coordinator_client::ping(&state).await.is_some()
                    {
                        // Same process (an in-place restart keeps the pid): it
                        // answers again once the new control plane listens.
                        let mut c = coordinator_client::connect_or_start(&state, &[]).await?;
                        if let Ok(r) = c.get_config(parhelia_proto::GetConfigRequest {}).await
                            && r.get_ref().config_toml == reply.config_toml
                        {
                            break;
                        }
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(coded(
                            error_codes::COORDINATOR_UNAVAILABLE,
                            "the coordinator did not come back with the new configuration within 30s",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if json {
                print_json(&serde_json::json!({"running": true, "changed": reply.changed}))?;
            } else if reply.changed {
                outln!("coordinator reloaded its configuration (pid {})", pong.pid);
            } else {
                outln!("configuration unchanged (pid {})", pong.pid);
            }
            Ok(0)
        }
        CoordinatorCommand::Stop => {
            let state = ctx.state()?;
            let Some((mut client, pong)) = coordinator_client::ping_checked(&state).await? else {
                // One that holds the state directory without answering (stopped, hung)
                // is ended by signal: a new one cannot start while it holds it.
                if let Some(holder) = coordinator_client::lock_holder(&state) {
                    let wait = Duration::from_secs(15);
                    if !coordinator_client::stop_unanswering(&state, holder, wait).await? {
                        return Err(coded(
                            error_codes::COORDINATOR_UNAVAILABLE,
                            format!(
                                "the coordinator ({}) does not answer and did not stop within \
                                 15s of SIGTERM: end it with `kill -9 {}`",
                                holder.describe(),
                                holder.pid
                            ),
                        ));
                    }
                    outln!(
                        "coordinator stopped ({}; it was not answering)",
                        holder.describe()
                    );
                    return Ok(0);
                }
                outln!("coordinator not running");
                return Ok(0);
            };
            client
                .shutdown(ShutdownRequest {})
                .await
                .map_err(coordinator_error)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while coordinator_client::ping(&state).await.is_some() {
                if std::time::Instant::now() > deadline {
                    return Err(coded(
                        error_codes::COORDINATOR_UNAVAILABLE,
                        format!("the coordinator (pid {}) did not stop within 15s", pong.pid),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outln!("coordinator stopped (pid {})", pong.pid);
            Ok(0)
        }
        CoordinatorCommand::Status { json } => {
            let state = ctx.state()?;
            let view = coordinator_view(&state).await?;
            // Not answering, yet holding the state directory: no new one can start.
            let holder = (!view.running)
                .then(|| coordinator_client::lock_holder(&state))
                .flatten();
            if json {
                print_json(&serde_json::json!({
                    "running": view.running,
                    "pid": view.pid,
                    "version": view.version,
                    "socket": view.socket,
                    "state_dir": state.root(),
                    "not_answering_pid": holder.map(|h| h.pid),
                }))?;
            } else if view.running {
                outln!(
                    "coordinator running (pid {}, version {})",
                    view.pid.unwrap_or_default(),
                    view.version.as_deref().unwrap_or("?")
                );
                outln!("  state   {}", state.root().display());
                outln!("  socket  {}", view.socket);
                outln!("  log     {}", state.log_path().display());
            } else if let Some(holder) = holder {
                outln!(
                    "coordinator not answering ({}): it holds the state directory, so none \
                     can start; `parhelia coordinator stop` ends it",
                    holder.describe()
                );
                outln!("  state   {}", state.root().display());
                outln!("  socket  {}", view.socket);
                outln!("  log     {}", state.log_path().display());
            } else {
                outln!("coordinator not running (commands start it on demand)");
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{ActionOutcome, Drift};

    fn outcome(action: Action, result: &str) -> ActionOutcome {
        ActionOutcome {
            action,
            result: result.into(),
            detail: None,
        }
    }

    fn pass(actions: Vec<ActionOutcome>, unexpected: &[&str]) -> PassReport {
        PassReport {
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_000_012,
            trigger: "cleanup".into(),
            dry_run: false,
            drift: Drift {
                intended_active: 1,
                observed: Some(1 + unexpected.len()),
                missing: Vec::new(),
                unexpected: unexpected.iter().map(|s| s.to_string()).collect(),
                stale: Vec::new(),
            },
            actions,
            journal_events_ingested: 0,
            list_error: None,
        }
    }

    const COLOR: Look = Look {
        color: true,
        ..Look::PLAIN
    };

    #[test]
    fn reconciler_status_lists_recent_actions_as_a_table() {
        let run = pass(
            vec![
                outcome(
                    Action::MarkLost {
                        container_id: "ctr-0000000a".into(),
                        session_id: "sess-0000000a".into(),
                        task_id: "task-0000000a".into(),
                        silence_ms: 95_000,
                        interrupt_task: true,
                        checkpoint_id: Some("cp-0001".into()),
                    },
                    "done",
                ),
                outcome(
                    Action::TerminateOrphan {
                        container_id: "ctr-0000000b".into(),
                        known: false,
                        pid: Some(4242),
                    },
                    "failed",
                ),
            ],
            &["ctr-0000000b"],
        );
        let view = ReconcilerStatusView {
            coordinator_running: true,
            coordinator_id: "coord-00000001".into(),
            poll_interval_seconds: 10.0,
            policy: crate::config::Config::defaults().policy("coord-00000001"),
            recent_actions: run
                .actions
                .iter()
                .map(|a| RecentAction {
                    at: rfc3339_ms(run.started_at_ms),
                    result: a.result.clone(),
                    action: a.action.clone(),
                })
                .collect(),
            last_run: Some(run),
            passes_last_hour: 3,
            actions_last_hour: 2,
        };
        insta::assert_snapshot!(status_text(&view, Look::PLAIN));
        let colored = status_text(&view, COLOR);
        assert!(colored.contains("\u{1b}[38;5;10mdone"), "{colored:?}");
        assert!(colored.contains("\u{1b}[38;5;9mfailed"), "{colored:?}");
    }

    #[test]
    fn cleanup_lists_orphans_as_a_table_with_what_became_of_each() {
        let report = pass(
            vec![
                outcome(
                    Action::TerminateOrphan {
                        container_id: "ctr-0000000b".into(),
                        known: false,
                        pid: Some(4242),
                    },
                    "done",
                ),
                outcome(
                    Action::EndSessionProcesses {
                        container_id: "ctr-0000000c".into(),
                        session_id: "sess-0000000c".into(),
                        kind: "cgroup".into(),
                        pids: vec![7, 8],
                        known: true,
                    },
                    "done",
                ),
            ],
            &["ctr-0000000b"],
        );
        let earlier = vec!["ctr-0000000d".to_string(), "ctr-0000000b".to_string()];
        let requested = vec!["ctr-0000000d".to_string()];
        let text = cleanup_text(&report, &[&earlier], &requested, false, true, Look::PLAIN);
        insta::assert_snapshot!(text);
        // Nothing asked to stop it yet (it ended within a stop's grace): not "requested".
        let early = cleanup_text(&report, &[&earlier], &[], false, true, Look::PLAIN);
        assert!(
            early.contains("ctr-0000000d  not yet: it ended moments ago; run again shortly"),
            "{early}"
        );
        let kept = cleanup_text(&report, &[&earlier], &[], false, false, Look::PLAIN);
        assert!(
            kept.contains("kept (parhelia cleanup --terminate stops it)"),
            "{kept}"
        );
        let dry = cleanup_text(&report, &[], &[], true, true, COLOR);
        assert!(dry.starts_with("dry run: nothing was changed\n"), "{dry}");
        assert!(
            dry.contains("\u{1b}[38;5;11mwould be terminated"),
            "{dry:?}"
        );
        let none = cleanup_text(&pass(Vec::new(), &[]), &[], &[], false, false, COLOR);
        assert_eq!(none, "no orphaned containers\n");
    }
}
