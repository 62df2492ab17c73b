//! The reconciler's adapter: gathers the intended state (SQLite, plus what
//! the coordinator is attending in memory) and the observed state (the
//! backend's list of our containers), runs the pure step
//! ([`crate::reconcile::reconcile`]), and carries its actions out. Errors
//! are logged where they are handled: one failed action never stops the
//! others.
//!
//! Before deciding anything, every container that should be alive but is no
//! longer listed gets its journal read from the volume
//! ([`crate::ingest::catch_up_from_journal`]): an agent that finished and
//! exited before its events were streamed is finished, not lost, and no
//! event is ever lost.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::agent_helpers::{Salvaged, agent_helper_bin, salvage};
use crate::container_state::ContainerState;
use crate::db::{ContainerRef, LostContainer, NewCoordinatorEvent, ReconcileRow};
use crate::ids::now_ms;
use crate::ingest::catch_up_from_journal;
use crate::reconcile::{
    Action, ActionOutcome, Intended, IntendedContainer, Observation, PassReport, drift,
    leftover_actions, reconcile,
};
use crate::recovery;
use crate::service::CoordinatorService;

/// How a pass runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassOptions {
    /// `interval`, `startup`, `manual`, `cleanup`, `agent_gone`.
    pub trigger: String,
    /// Compute and report the actions; execute none (and read no journal).
    pub dry_run: bool,
    /// Terminate orphans whatever `auto_terminate_orphans` says
    /// (`cleanup --terminate`).
    pub terminate_orphans: bool,
}

fn intended_container(
    db: &crate::db::Db,
    row: &ReconcileRow,
    attended: &BTreeSet<String>,
) -> IntendedContainer {
    let c = &row.container;
    // Only a container that may be declared lost needs it.
    let latest_checkpoint_id = if c.state.is_active() {
        recovery::latest_checkpoint_id(db, &c.session_id, Path::new(&row.volume_dir))
    } else {
        None
    };
    IntendedContainer {
        container_id: c.id.clone(),
        session_id: c.session_id.clone(),
        task_id: c.task_id.clone(),
        backend: c.backend.clone(),
        state: c.state,
        health: c.health,
        heartbeat_interval_ms: c.heartbeat_interval_ms,
        created_at_ms: c.created_at_ms,
        started_at_ms: c.started_at_ms,
        last_heartbeat_ms: c.last_heartbeat_ms,
        state_changed_at_ms: c.state_changed_at_ms,
        stop_requested_at_ms: c.stop_requested_at_ms,
        attended: attended.contains(&c.id),
        task_status: row.task_status,
        is_latest_for_task: row.is_latest_for_task,
        task_auto_resumes: row.task_auto_resumes,
        resume_requested: c.resume_requested_at_ms.is_some(),
        latest_checkpoint_id,
    }
}

impl CoordinatorService {
    /// One reconciler pass (see [`crate::reconciler`]).
    pub async fn reconcile(&self, options: PassOptions) -> Result<PassReport> {
        run_pass(self, options).await
    }
}

/// One pass. Passes never overlap.
pub async fn run_pass(service: &CoordinatorService, options: PassOptions) -> Result<PassReport> {
    let inner = &service.inner;
    let _guard = inner.reconcile_lock.lock().await;
    let db = &inner.db;
    let started_at_ms = now_ms();
    let trigger = if options.trigger.is_empty() {
        "manual".to_string()
    } else {
        options.trigger.clone()
    };

    // Each backend's list on its own: one that cannot list blinds only its own
    // containers (`Observation::unlisted`), the others are reconciled.
    let mut observation = Observation::unknown();
    let mut errors = Vec::new();
    for (backend, listed) in inner.backend.list_each().await {
        match listed {
            Ok(list) => observation
                .containers
                .get_or_insert_with(Vec::new)
                .extend(list),
            Err(err) => {
                tracing::warn!("the reconciler could not list {backend} containers: {err:#}");
                observation.unlisted.insert(backend.to_string());
                errors.push(format!("{backend}: {err:#}"));
            }
        }
    }
    let list_error = (!errors.is_empty()).then(|| errors.join("; "));
    let listed: Option<BTreeSet<String>> = observation
        .containers
        .as_ref()
        .map(|list| list.iter().map(|c| c.container_id.clone()).collect());

    // Catch up from the journals of containers that should be alive but
    // are not listed, before judging them.
    let mut journal_events_ingested = 0;
    if let Some(listed) = &listed
        && !options.dry_run
    {
        for row in db.reconcile_rows(&[])? {
            let c = &row.container;
            if !c.state.is_active() || listed.contains(&c.id) {
                continue;
            }
            let target = ContainerRef {
                container_id: c.id.clone(),
                session_id: c.session_id.clone(),
                task_id: c.task_id.clone(),
            };
            match catch_up_from_journal(db, inner.backend.as_ref(), &target).await {
                Ok(caught) => {
                    journal_events_ingested += caught.ingested;
                    if caught.finished {
                        db.set_container_state(&c.id, ContainerState::Terminated)?;
                        inner.signals.task_ended.notify_one();
                    }
                }
                Err(err) => {
                    tracing::warn!(container_id = %c.id, "reading the journal failed: {err:#}")
                }
            }
        }
    }

    let listed_ids: Vec<String> = listed.iter().flatten().cloned().collect();
    let attended = service.attended();
    let intended = Intended {
        containers: db
            .reconcile_rows(&listed_ids)?
            .iter()
            .map(|row| intended_container(db, row, &attended))
            .collect(),
        orphans: db.known_orphans()?,
    };
    let mut policy = inner.config.policy(&inner.coordinator_id);
    if options.terminate_orphans {
        policy.auto_terminate_orphans = true;
    }
    let now = now_ms();
    // Processes a dead agent left running come first: they still write the
    // workspace and spend; they are held, checkpointed and ended before anything
    // else is decided about their container.
    let leftovers = match inner.backend.leftover_units().await {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(
                "the reconciler could not look for left-over session processes: {err:#}"
            );
            Vec::new()
        }
    };
    let mut actions = leftover_actions(&leftovers, &intended, &observation, &policy);
    actions.extend(reconcile(&intended, &observation, now, &policy));
    let drift = drift(&intended, &observation, now, &policy);

    let mut outcomes = Vec::new();
    for action in actions {
        let (result, detail) = if options.dry_run {
            ("planned".to_string(), None)
        } else {
            match execute(service, &action, &observation).await {
                Ok(Executed::Done) => ("done".to_string(), None),
                Ok(Executed::Unavailable(why)) => ("unavailable".to_string(), Some(why)),
                Err(err) => {
                    tracing::warn!(
                        action = action.name(),
                        container_id = action.container_id(),
                        "reconciler action failed: {err:#}"
                    );
                    ("failed".to_string(), Some(format!("{err:#}")))
                }
            }
        };
        outcomes.push(ActionOutcome {
            action,
            result,
            detail,
        });
    }
    let report = PassReport {
        started_at_ms,
        finished_at_ms: now_ms(),
        trigger: trigger.clone(),
        dry_run: options.dry_run,
        drift,
        actions: outcomes,
        journal_events_ingested,
        list_error,
    };
    if !options.dry_run {
        db.record_reconciler_run(&report)?;
        // A container's first health is bookkeeping, not news.
        let notable: Vec<&ActionOutcome> = report
            .actions
            .iter()
            .filter(|a| !matches!(a.action, Action::SetHealth { from: None, .. }))
            .collect();
        if !notable.is_empty() || trigger != "interval" {
            let summary = if notable.is_empty() {
                "no drift to act on".to_string()
            } else {
                notable
                    .iter()
                    .map(|a| a.action.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            db.note(
                NewCoordinatorEvent::new(
                    "reconciler_run",
                    "info",
                    format!(
                        "reconciler ({trigger}): {} action(s): {summary}",
                        notable.len()
                    ),
                )
                .details(serde_json::json!({
                    "trigger": trigger,
                    "actions": report.actions.len(),
                    "observed": report.drift.observed,
                    "missing": report.drift.missing,
                    "unexpected": report.drift.unexpected,
                })),
            );
        }
    }
    if report.actions.iter().any(|a| {
        matches!(
            a.action,
            Action::MarkLost { .. } | Action::MarkTerminated { .. }
        )
    }) {
        inner.signals.task_ended.notify_one();
    }
    Ok(report)
}

enum Executed {
    Done,
    Unavailable(String),
}

/// Carries out one action; writes exactly what
/// [`crate::reconcile::apply`] models.
async fn execute(
    service: &CoordinatorService,
    action: &Action,
    observation: &Observation,
) -> Result<Executed> {
    let inner = &service.inner;
    let db = &inner.db;
    match action {
        Action::SetHealth {
            container_id,
            from,
            to,
            silence_ms,
        } => {
            db.set_container_health(container_id, *to)?;
            // The first health a container gets is not news.
            if from.is_some() {
                let record = db.get_container(container_id)?;
                db.note(NewCoordinatorEvent {
                    task_id: record.as_ref().map(|c| c.task_id.clone()),
                    session_id: record.as_ref().map(|c| c.session_id.clone()),
                    ..NewCoordinatorEvent::new("health_changed", to.level(), action.describe())
                        .container(container_id)
                        .details(serde_json::json!({
                            "from": from, "to": to, "silence_ms": silence_ms,
                        }))
                });
            }
        }
        Action::Follow {
            container_id,
            session_id,
            task_id,
        } => {
            service
                .follow(ContainerRef {
                    container_id: container_id.clone(),
                    session_id: session_id.clone(),
                    task_id: task_id.clone(),
                })
                .await;
        }
        Action::MarkLost {
            container_id,
            session_id,
            task_id,
            silence_ms,
            interrupt_task,
            checkpoint_id,
        } => {
            // The dead container's spec, when the backend still holds its files (local)
            // and nothing of it runs.
            let left_behind = inner.backend.left_behind_spec(container_id).await;
            // What its transcripts hold that no journal charged (the agent died between
            // a response and its record): charged now that nothing of it runs.
            let charged = match (&left_behind, task_id.is_empty()) {
                (Some(spec), false) => match spec_session_files(spec) {
                    Some(([config, workspace, volume], claude_session_id)) => Some(
                        charge_unjournaled_spend(
                            service,
                            [&config, &workspace, &volume],
                            &claude_session_id,
                            task_id,
                            session_id,
                            container_id,
                            "lost_container",
                        )
                        .await
                        .map_err(|e| format!("{e:#}")),
                    ),
                    None => None,
                },
                _ => None,
            };
            // What it left becomes a whole checkpoint before it is marked lost, so a
            // resume continues from it rather than from an older one or from nothing.
            // Only for the task's newest container while it runs: an older one's files
            // may sit beside a newer container's workspace, and must not be mixed.
            let salvaged = match left_behind.filter(|_| *interrupt_task) {
                Some(spec) => Some(
                    salvage(
                        &inner.db,
                        &spec,
                        session_id,
                        "the agent is gone; what its container left was checkpointed before it was marked lost",
                    )
                    .await,
                ),
                None => None,
            };
            let salvaged_id = match &salvaged {
                Some(Ok(taken)) => Some(taken.checkpoint_id.clone()),
                _ => None,
            };
            let checkpoint_id = &salvaged_id.or_else(|| checkpoint_id.clone());
            let resumable = match checkpoint_id {
                Some(cp) => format!("resumable from checkpoint {cp}"),
                None => {
                    "resumable from its starting workspace (no checkpoint was found)".to_string()
                }
            };
            let interrupted = db.mark_container_lost(&LostContainer {
                container_id,
                session_id,
                task_id,
                interrupt_task: *interrupt_task,
                checkpoint_id: checkpoint_id.as_deref(),
                error_message: format!(
                    "container {container_id} was lost: its agent is gone and nothing was heard for {}s; {resumable}",
                    silence_ms / 1000
                ),
            })?;
            let described = match action {
                Action::MarkLost { .. } if salvaged_taken(&salvaged).is_some() => {
                    let mut text = action.describe();
                    if let (Some(old), Some(new)) = (
                        text.rfind(", resumable").map(|i| i..text.len()),
                        salvaged_taken(&salvaged),
                    ) {
                        text.replace_range(
                            old,
                            &if new.unchanged {
                                format!(
                                    ", resumable from {}, which already held what it left ({})",
                                    new.checkpoint_id,
                                    new.what()
                                )
                            } else {
                                format!(
                                    ", resumable from {}, taken now of what it left ({})",
                                    new.checkpoint_id,
                                    new.what()
                                )
                            },
                        );
                    }
                    text
                }
                _ => action.describe(),
            };
            let described = match &charged {
                Some(Ok(Some(found))) => format!(
                    "{described}; charged {} for {} model response(s) its agent never recorded",
                    crate::budget::usd(found.usd),
                    found.message_ids.len()
                ),
                Some(Err(why)) => format!("{described}; its model spend could not be read: {why}"),
                _ => described,
            };
            db.note(
                NewCoordinatorEvent::new("container_lost", "error", described)
                    .container(container_id)
                    .session(session_id)
                    .task(task_id)
                    .details(serde_json::json!({
                        "silence_ms": silence_ms,
                        "task_interrupted": interrupted,
                        "checkpoint_id": checkpoint_id,
                        "salvaged": salvaged.as_ref().map(|r| match r {
                            Ok(taken) => serde_json::json!({
                                "checkpoint_id": taken.checkpoint_id,
                                "unchanged": taken.unchanged,
                                "conversation": taken.conversation,
                            }),
                            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                        }),
                        "charged_usd": charged.as_ref().and_then(|c| c.as_ref().ok()).and_then(Option::as_ref).map(|f| f.usd),
                        "charged_responses": charged.as_ref().and_then(|c| c.as_ref().ok()).and_then(Option::as_ref).map(|f| f.message_ids.len()),
                        "charge_error": charged.as_ref().and_then(|c| c.as_ref().err()),
                    })),
            );
        }
        Action::RequestResume {
            task_id,
            session_id,
            lost_container_id,
            checkpoint_id: _,
            attempt,
        } => {
            // From the newest restorable checkpoint, as `parhelia resume` chooses it:
            // the plan's id predates the checkpoint `MarkLost` may just have taken of
            // what the lost container left.
            let started = service
                .request_resume(task_id, session_id, lost_container_id, None, *attempt)
                .await?;
            if !started {
                return Ok(Executed::Unavailable(
                    "resume is not available in this build; the task stays interrupted".into(),
                ));
            }
        }
        Action::MarkTerminated { container_id } => {
            db.set_container_state(container_id, ContainerState::Terminated)?;
            let record = db.get_container(container_id)?;
            db.note(NewCoordinatorEvent {
                task_id: record.as_ref().map(|c| c.task_id.clone()),
                session_id: record.as_ref().map(|c| c.session_id.clone()),
                ..NewCoordinatorEvent::new("container_terminated", "info", action.describe())
                    .container(container_id)
            });
        }
        Action::TerminateStuck { container_id } => {
            db.request_container_stop(container_id)?;
            inner.backend.terminate(container_id).await?;
            db.note(
                NewCoordinatorEvent::new("container_stuck", "warning", action.describe())
                    .container(container_id),
            );
        }
        Action::ReportOrphan {
            container_id,
            known,
            pid,
        } => {
            if *known {
                db.set_container_state(container_id, ContainerState::Orphaned)?;
            } else if let Some(observed) = observation
                .containers
                .iter()
                .flatten()
                .find(|c| &c.container_id == container_id)
            {
                db.upsert_orphan(observed)?;
            }
            let record = db.get_container(container_id)?;
            db.note(NewCoordinatorEvent {
                task_id: record.as_ref().map(|c| c.task_id.clone()),
                session_id: record.as_ref().map(|c| c.session_id.clone()),
                ..NewCoordinatorEvent::new("orphan_detected", "warning", action.describe())
                    .container(container_id)
                    .details(serde_json::json!({ "known": known, "pid": pid }))
            });
        }
        Action::TerminateOrphan {
            container_id,
            known,
            pid,
        } => {
            if *known {
                db.request_container_stop(container_id)?;
            } else {
                db.orphan_terminate_requested(container_id)?;
            }
            inner.backend.terminate(container_id).await?;
            db.note(
                NewCoordinatorEvent::new("orphan_terminated", "warning", action.describe())
                    .container(container_id)
                    .details(serde_json::json!({ "known": known, "pid": pid })),
            );
        }
        Action::EndSessionProcesses {
            container_id,
            session_id,
            kind,
            pids,
            known,
        } => {
            return end_session_processes(service, container_id, session_id, kind, pids, *known)
                .await;
        }
        Action::ForgetOrphan { container_id } => {
            db.orphan_gone(container_id)?;
            db.note(
                NewCoordinatorEvent::new("orphan_gone", "info", action.describe())
                    .container(container_id),
            );
        }
    }
    Ok(Executed::Done)
}

/// Holds (stops) a dead agent's left-over processes, checkpoints the workspace
/// into the session's store, ends them, and says so in one coordinator event
/// (`session_processes_ended`: what was found, what was ended, what survived, the
/// checkpoint). Survivors are E517.
async fn end_session_processes(
    service: &CoordinatorService,
    container_id: &str,
    session_id: &str,
    kind: &str,
    found: &[u32],
    known: bool,
) -> Result<Executed> {
    let inner = &service.inner;
    let db = &inner.db;
    let hold = inner.backend.hold_unit(container_id).await?;
    let record = db.get_container(container_id).ok().flatten();
    let task_id = record.as_ref().map(|c| c.task_id.clone());
    let session_id = if hold.session_id.is_empty() {
        session_id.to_string()
    } else {
        hold.session_id.clone()
    };
    let checkpoint = match &hold.spec_path {
        Some(spec) => salvage(
            &inner.db,
            spec,
            &session_id,
            "the agent is gone; its left-over processes were held for this checkpoint and then ended",
        )
        .await
        .map_err(|e| format!("{e:#}")),
        None => Err("no spec on record for this container".to_string()),
    };
    let survivors = inner.backend.end_unit(container_id, &hold).await?;
    let ended: Vec<u32> = hold
        .pids
        .iter()
        .copied()
        .filter(|p| !survivors.contains(p))
        .collect();
    let (checkpoint_id, checkpoint_error) = match &checkpoint {
        Ok(taken) => (Some(taken.checkpoint_id.clone()), None),
        Err(why) => (None, Some(why.clone())),
    };
    // What the left-over processes spent after the agent's last journaled charge
    // (Claude Code kept calling the model): charged now, once they cannot spend more.
    let charged = match (&task_id, survivors.is_empty()) {
        (Some(task_id), true) => {
            charge_left_over_spend(service, &hold, task_id, &session_id, container_id)
                .await
                .map_err(|e| format!("{e:#}"))
        }
        _ => Ok(None),
    };
    let mut message = format!(
        "{container_id}: its agent was gone but {} session process(es) still ran ({kind}); ended {}",
        hold.pids.len().max(found.len()),
        ended.len()
    );
    match &checkpoint {
        Ok(taken) => message.push_str(&format!(", after checkpoint {}", taken.describe())),
        Err(why) => message.push_str(&format!("; no checkpoint: {why}")),
    }
    match &charged {
        Ok(Some(found)) => message.push_str(&format!(
            "; charged {} for {} model response(s) they made after the agent's last record",
            crate::budget::usd(found.usd),
            found.message_ids.len()
        )),
        Ok(None) => {}
        Err(why) => message.push_str(&format!("; their model spend could not be read: {why}")),
    }
    if !survivors.is_empty() {
        message.push_str(&format!(
            "; [{}] {} survived: {:?}",
            crate::error_codes::SESSION_PROCESSES_SURVIVED.code,
            survivors.len(),
            survivors
        ));
    }
    db.note(NewCoordinatorEvent {
        task_id: task_id.clone(),
        session_id: (!session_id.is_empty()).then(|| session_id.clone()),
        ..NewCoordinatorEvent::new(
            "session_processes_ended",
            if survivors.is_empty() {
                "warning"
            } else {
                "error"
            },
            message.clone(),
        )
        .container(container_id)
        .details(serde_json::json!({
            "unit": kind,
            "known": known,
            "found": hold.pids,
            "ended": ended,
            "survivors": survivors,
            "checkpoint_id": checkpoint_id,
            "checkpoint_error": checkpoint_error,
            "conversation": checkpoint.as_ref().ok().map(|t| t.conversation),
            "charged_usd": charged.as_ref().ok().and_then(Option::as_ref).map(|f| f.usd),
            "charged_responses": charged.as_ref().ok().and_then(Option::as_ref).map(|f| f.message_ids.len()),
            "charge_error": charged.as_ref().err(),
        }))
    });
    if !survivors.is_empty() {
        return Err(crate::error::coded(
            crate::error_codes::SESSION_PROCESSES_SURVIVED,
            message,
        ));
    }
    Ok(Executed::Done)
}

fn salvaged_taken(salvaged: &Option<Result<Salvaged>>) -> Option<&Salvaged> {
    match salvaged {
        Some(Ok(taken)) => Some(taken),
        _ => None,
    }
}

/// `parhelia-agent meter`'s answer: what the transcripts hold that no journal charged.
#[derive(Clone, Debug, Default, serde::Deserialize)]
struct LeftOverSpend {
    message_ids: Vec<String>,
    usd: f64,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    /// Claude Code's transcript ends with a request that has no reply.
    #[serde(default)]
    request_in_flight: bool,
}

/// Meters a dead agent's session transcripts for responses no journal charged (the
/// agent's own meter, run as `parhelia-agent meter`, so both price the same way) and
/// charges them to the ledger, their ids recorded so a later agent's `ModelSpend` for
/// them adds no tokens again. `None` when there was nothing to charge.
async fn charge_left_over_spend(
    service: &CoordinatorService,
    hold: &crate::backend::UnitHold,
    task_id: &str,
    session_id: &str,
    container_id: &str,
) -> Result<Option<LeftOverSpend>> {
    let (Some(config_dir), Some(workspace), Some(volume), Some(claude_session_id)) = (
        &hold.claude_config_dir,
        &hold.workspace_dir,
        &hold.volume_dir,
        &hold.claude_session_id,
    ) else {
        return Ok(None);
    };
    charge_unjournaled_spend(
        service,
        [config_dir, workspace, volume],
        claude_session_id,
        task_id,
        session_id,
        container_id,
        "left_over_processes",
    )
    .await
}

/// The session files a lost container's spec names (the coordinator's own file,
/// read bounded): Claude Code's config dir, the workspace, the volume, and Claude
/// Code's session id, for [`charge_unjournaled_spend`].
fn spec_session_files(spec: &std::path::Path) -> Option<([std::path::PathBuf; 3], String)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(spec)
        .ok()?
        .take(4 << 20)
        .read_to_end(&mut bytes)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let path = |key: &str| value.get(key)?.as_str().map(std::path::PathBuf::from);
    let id = value
        .get("claude_session_id")?
        .as_str()
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())?
        .to_string();
    Some((
        [
            path("claude_config_dir")?,
            path("workspace_dir")?,
            path("volume_dir")?,
        ],
        id,
    ))
}

/// Meters a dead agent's session transcripts (`[config dir, workspace, volume]`) for
/// responses no journal charged and charges them (see [`charge_left_over_spend`]);
/// `source` names the path in the ledger row.
async fn charge_unjournaled_spend(
    service: &CoordinatorService,
    [config_dir, workspace, volume]: [&std::path::PathBuf; 3],
    claude_session_id: &str,
    task_id: &str,
    session_id: &str,
    container_id: &str,
    source: &str,
) -> Result<Option<LeftOverSpend>> {
    let inner = &service.inner;
    let agent_bin = agent_helper_bin()?;
    let prices = serde_json::to_string(&inner.config.rates.models)?;
    let mut run = tokio::process::Command::new(&agent_bin)
        .arg("meter")
        .arg("--config-dir")
        .arg(config_dir)
        .arg("--workspace")
        .arg(workspace)
        .arg("--claude-session-id")
        .arg(claude_session_id)
        .arg("--journal-dir")
        .arg(volume.join("journal"))
        .arg("--prices")
        .arg(prices)
        .arg("--charged-ids-stdin")
        // A headless run's stdout: responses it printed and never wrote to a transcript.
        .arg("--stream")
        .arg(volume.join("runs").join(container_id).join("stream.jsonl"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // What this ledger already charged from these transcripts (an earlier pass, or the
    // other path for the same container) is not charged again.
    let charged = serde_json::to_vec(&inner.db.left_over_message_ids(session_id)?)?;
    if let Some(mut stdin) = run.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(&charged).await?;
    }
    let run = run.wait_with_output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .map_err(|_| anyhow::anyhow!("parhelia-agent meter did not finish in 120 s"))??;
    anyhow::ensure!(
        output.status.success(),
        "parhelia-agent meter failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let found: LeftOverSpend = serde_json::from_slice(&output.stdout)?;
    if found.request_in_flight {
        // Nobody journaled Claude Code's end: its transcript says a request had no
        // reply. Spend unknown, said once per container.
        inner.db.note_unknown_request(&ContainerRef {
            container_id: container_id.to_string(),
            session_id: session_id.to_string(),
            task_id: task_id.to_string(),
        })?;
    }
    let tokens = found.input_tokens
        + found.output_tokens
        + found.cache_creation_input_tokens
        + found.cache_read_input_tokens;
    if found.message_ids.is_empty() || (found.usd <= 0.0 && tokens == 0) {
        return Ok(None);
    }
    let db = &inner.db;
    let recorded = db.session_model_usd(session_id)?;
    let target = ContainerRef {
        container_id: container_id.to_string(),
        session_id: session_id.to_string(),
        task_id: task_id.to_string(),
    };
    db.charge_model_with(
        &target,
        crate::ids::now_ms(),
        recorded + found.usd.clamp(0.0, 1e9),
        Some(&parhelia_proto::Usage {
            input_tokens: found.input_tokens,
            output_tokens: found.output_tokens,
            cache_creation_input_tokens: found.cache_creation_input_tokens,
            cache_read_input_tokens: found.cache_read_input_tokens,
        }),
        Some(serde_json::json!({
            "source": source,
            // All of them (the meter keeps at most 65,536, `spend::MAX_TRACKED_IDS`): an id
            // left out would have its tokens counted again by a later agent's event.
            "left_over_message_ids": found.message_ids.iter().take(65_536).collect::<Vec<_>>(),
        })),
    )?;
    Ok(Some(found))
}
