//! Event ingestion: one tokio task per live container follows its agent's
//! event stream into SQLite.
//!
//! The stream is resumed from `max(seq stored for the container) + 1`, every
//! event is stored with `INSERT OR IGNORE` on (container, seq), so a
//! reconnect (or an agent that replays too much) never loses or duplicates
//! an event. Heartbeats go to `heartbeats`. When `SessionFinished` arrives
//! the task's end is recorded (in the same transaction as the event), the
//! agent is told to stop, and the container is marked terminated.
//!
//! If the stream breaks, the follower reconnects with backoff. If the agent
//! is gone (the backend no longer lists the container), the follower reads
//! what the agent journaled but never sent from the journal on the volume
//! ([`catch_up_from_journal`]), so no event is lost. If that tail finishes
//! the session, the session's end is recorded as usual; otherwise the
//! follower stops and leaves the verdict (lost, after the heartbeats went
//! stale too) to the reconciler: one place decides that a container is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use anyhow::Result;
use parhelia_proto::{
    Event, StopRequest, StreamEventsRequest, event::Kind, stream_events_response::Item,
};
use tokio::sync::watch;

use crate::agent_client::{AuthedAgentClient, connect_agent, refusal};
use crate::backend::Backend;
use crate::budget;
use crate::db::{ContainerRef, ContainerState, Db, NewCoordinatorEvent, TaskUpdate};
use crate::error::find_coded;
use crate::error_codes;
use crate::ids::SessionSecret;
use crate::task_state::TaskStatus;

/// Reconnection policy.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive failed attempts before asking the backend whether the
    /// container still exists.
    pub failures_before_liveness_check: u32,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            failures_before_liveness_check: 3,
        }
    }
}

/// Who to tell when following changes what the control plane should do.
#[derive(Debug, Default)]
pub struct ControlSignals {
    /// A task ended: a worker slot is free (the dispatcher listens).
    pub task_ended: Notify,
    /// An agent is gone without finishing: reconcile soon.
    pub agent_gone: Notify,
    /// The budget watchdog decided to stop these tasks' sessions (the
    /// service stops them: see `CoordinatorService::stop_for_budget`).
    pub budget_stop: Notify,
    pub budget_stop_tasks: std::sync::Mutex<Vec<String>>,
}

impl ControlSignals {
    /// Queues a task for a budget stop and wakes the budget loop.
    pub fn request_budget_stop(&self, task_id: &str) {
        self.budget_stop_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task_id.to_string());
        self.budget_stop.notify_one();
    }

    /// The tasks queued for a budget stop (and forgets them).
    pub fn take_budget_stops(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .budget_stop_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// What a follower needs.
#[derive(Clone)]
pub struct IngestContext {
    pub db: Arc<Db>,
    pub backend: Arc<dyn Backend>,
    pub shutdown: watch::Receiver<bool>,
    pub settings: IngestSettings,
    pub signals: Arc<ControlSignals>,
    /// Rates and ceilings for the budget watchdog.
    pub config: Arc<crate::config::Config>,
}

/// How following a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowOutcome {
    /// The session finished; its end is recorded.
    SessionFinished,
    /// The coordinator is shutting down; the agent keeps running.
    Shutdown,
    /// The agent never started or refused us; the task was marked failed.
    Lost,
    /// The agent is gone without finishing; its journal was read up to its
    /// end, and the reconciler decides (it needs stale heartbeats too).
    AgentGone,
    /// The container's record ended elsewhere (reconciler, cancel).
    RecordEnded,
}

enum StreamEnd {
    Finished(Box<AuthedAgentClient>),
    Closed,
    Shutdown,
}

/// Follows a container until its session finishes, the agent is lost, or
/// the coordinator shuts down. Errors are logged here, where they are
/// handled.
pub async fn follow_container(ctx: IngestContext, target: ContainerRef) -> FollowOutcome {
    match follow(&ctx, &target).await {
        Ok(outcome) => {
            tracing::info!(container_id = %target.container_id, ?outcome, "stopped following");
            outcome
        }
        Err(err) => {
            tracing::error!(container_id = %target.container_id, "following failed: {err:#}");
            fail_task(
                &ctx,
                &target,
                &err,
                TaskStatus::Failed,
                ContainerState::Lost,
            );
            FollowOutcome::Lost
        }
    }
}

/// What catching up from a journal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Events stored that were not stored before.
    pub ingested: u64,
    /// The journal ends with `SessionFinished` (now stored).
    pub finished: bool,
    /// Gaps recorded (events the volume's journal no longer holds).
    pub gaps: u64,
}

/// Stores what `target`'s journal holds after the last stored event,
/// straight from the session's volume ([`Backend::read_journal`]).
pub async fn catch_up_from_journal(
    db: &Db,
    backend: &dyn Backend,
    target: &ContainerRef,
) -> Result<CatchUp> {
    let from_seq = db.resume_seq(&target.container_id)? + 1;
    let mut events = backend
        .read_journal(&target.container_id, &target.session_id, from_seq)
        .await?;
    // What is on the volume is hostile input: in order, once per seq.
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    let mut caught = CatchUp::default();
    let mut expected = from_seq;
    // Stored in batches through the ingest writer; a batch is stored before a gap
    // after it is recorded, since the stream resumes after the highest of either.
    let mut batch: Vec<Event> = Vec::new();
    let journal_was_empty = events.is_empty();
    for event in events {
        if event.seq < expected {
            continue;
        }
        if event.seq > expected {
            store_caught_up(db, target, std::mem::take(&mut batch), &mut caught).await?;
            // Lines the journal on the volume no longer holds (cut out,
            // damaged): named, never silently skipped.
            caught.gaps += 1;
            db.record_journal_gap(
                target,
                expected,
                event.seq - 1,
                "volume",
                "missing or unreadable in the journal on the session's volume",
            )?;
        }
        expected = event.seq + 1;
        if matches!(event.kind, Some(Kind::SessionFinished(_))) {
            caught.finished = true;
        }
        batch.push(event);
        if batch.len() >= CATCH_UP_BATCH {
            store_caught_up(db, target, std::mem::take(&mut batch), &mut caught).await?;
        }
    }
    store_caught_up(db, target, batch, &mut caught).await?;
    // The agent announced more than the volume holds (its last heartbeat
    // said so): the journal was deleted or cut short.
    if let Some(announced) = db.last_announced_seq(&target.container_id)?
        && announced >= expected
        && !caught.finished
    {
        caught.gaps += 1;
        db.record_journal_gap(
            target,
            expected,
            announced,
            "volume",
            if journal_was_empty {
                "the journal on the session's volume is missing or holds nothing new"
            } else {
                "the journal on the session's volume ends before what the agent announced"
            },
        )?;
    }
    if caught.ingested > 0 {
        tracing::info!(
            container_id = %target.container_id,
            events = caught.ingested,
            "caught up from the journal"
        );
    }
    Ok(caught)
}

/// Events of a journal's tail stored in one write of the ingest writer.
const CATCH_UP_BATCH: usize = 256;

async fn store_caught_up(
    db: &Db,
    target: &ContainerRef,
    batch: Vec<Event>,
    caught: &mut CatchUp,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let recorded = db.ingest()?.events(target, batch).await?;
    caught.ingested += recorded.iter().filter(|r| r.inserted).count() as u64;
    if recorded.iter().any(|r| r.task_finished.is_some()) {
        db.advance_generation();
    }
    Ok(())
}

async fn follow(ctx: &IngestContext, target: &ContainerRef) -> Result<FollowOutcome> {
    let secret = ctx.db.session_secret(&target.session_id)?.ok_or_else(|| {
        crate::error::coded(
            error_codes::SESSION_NOT_FOUND,
            format!("session not found: {}", target.session_id),
        )
    })?;
    let mut shutdown = ctx.shutdown.clone();
    // Hand-written, not `backon`: each retry first decides whether to retry at all, and
    // sleeps against shutdown (docs/ARCHITECTURE.md, "Dependencies").
    let mut backoff = ctx.settings.initial_backoff;
    let mut failures = 0u32;
    let mut first_attempt = true;
    loop {
        if *shutdown.borrow() {
            return Ok(FollowOutcome::Shutdown);
        }
        if let Some(container) = ctx.db.get_container(&target.container_id)?
            && container.state.has_ended()
        {
            return Ok(FollowOutcome::RecordEnded);
        }
        match stream_once(ctx, target, &secret).await {
            Ok(StreamEnd::Finished(mut client)) => {
                let stop = client
                    .stop(StopRequest {
                        reason: "session finished".into(),
                        grace_ms: 0,
                        ..StopRequest::default()
                    })
                    .await;
                if let Err(status) = stop {
                    tracing::warn!(container_id = %target.container_id, %status, "stop after finish failed; terminating");
                    if let Err(err) = ctx.backend.terminate(&target.container_id).await {
                        tracing::warn!(container_id = %target.container_id, "terminate failed: {err:#}");
                    }
                }
                // What the agent journaled after the session's end (its stop, a last
                // error) is stored before the container is ended: nothing reads an
                // ended container's journal again.
                if let Err(err) = catch_up_from_journal(&ctx.db, ctx.backend.as_ref(), target).await
                {
                    tracing::warn!(container_id = %target.container_id, "reading the journal's tail failed: {err:#}");
                }
                ctx.db
                    .set_container_state(&target.container_id, ContainerState::Terminated)?;
                ctx.signals.task_ended.notify_one();
                return Ok(FollowOutcome::SessionFinished);
            }
            Ok(StreamEnd::Shutdown) => return Ok(FollowOutcome::Shutdown),
            Ok(StreamEnd::Closed) => {
                tracing::info!(container_id = %target.container_id, "event stream closed; reconnecting");
                failures += 1;
            }
            Err(err) => {
                let code = find_coded(&err).map(|c| c.code.code);
                // An agent that never came up, or refuses our secret, will not
                // get better by retrying.
                if code == Some(error_codes::AGENT_FAILED_TO_START.code)
                    || code == Some(error_codes::AGENT_AUTH_REJECTED.code)
                {
                    let container_state = if first_attempt {
                        ContainerState::Failed
                    } else {
                        ContainerState::Lost
                    };
                    tracing::warn!(container_id = %target.container_id, "{err:#}");
                    fail_task(ctx, target, &err, TaskStatus::Failed, container_state);
                    return Ok(FollowOutcome::Lost);
                }
                tracing::info!(container_id = %target.container_id, "event stream failed: {err:#}");
                failures += 1;
            }
        }
        first_attempt = false;
        if failures >= ctx.settings.failures_before_liveness_check {
            let alive = match ctx.backend.list().await {
                Ok(list) => list.iter().any(|c| c.container_id == target.container_id),
                Err(err) => {
                    tracing::warn!("listing containers failed: {err:#}");
                    true
                }
            };
            if !alive {
                let caught = catch_up_from_journal(&ctx.db, ctx.backend.as_ref(), target).await?;
                if caught.finished {
                    // The agent journaled the session's end and exited
                    // before we saw it: the end is now stored.
                    ctx.db
                        .set_container_state(&target.container_id, ContainerState::Terminated)?;
                    ctx.signals.task_ended.notify_one();
                    return Ok(FollowOutcome::SessionFinished);
                }
                tracing::warn!(
                    container_id = %target.container_id,
                    "the agent is gone; its journal is ingested, the reconciler decides"
                );
                ctx.signals.agent_gone.notify_one();
                return Ok(FollowOutcome::AgentGone);
            }
            failures = 0;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(FollowOutcome::Shutdown),
        }
        backoff = (backoff * 2).min(ctx.settings.max_backoff);
    }
}

/// One connection: find the endpoint, connect, stream from the next
/// unstored seq until the session finishes or the stream breaks.
async fn stream_once(
    ctx: &IngestContext,
    target: &ContainerRef,
    secret: &SessionSecret,
) -> Result<StreamEnd> {
    let mut shutdown = ctx.shutdown.clone();
    let endpoint = tokio::select! {
        endpoint = ctx.backend.endpoint(&target.container_id) => endpoint?,
        _ = shutdown.changed() => return Ok(StreamEnd::Shutdown),
    };
    ctx.db
        .set_container_running(&target.container_id, &endpoint.uri, endpoint.pid)?;
    let mut client = connect_agent(&endpoint.uri, secret).await?;
    let from_seq = ctx.db.resume_seq(&target.container_id)? + 1;
    tracing::debug!(container_id = %target.container_id, from_seq, "streaming events");
    let response = client
        .stream_events(StreamEventsRequest {
            from_seq,
            follow: true,
        })
        .await
        .map_err(|status| refusal(&status, &target.container_id))?;
    let mut stream = response.into_inner();
    loop {
        let message = tokio::select! {
            message = stream.message() => message
                .map_err(|status| refusal(&status, &target.container_id))?,
            _ = shutdown.changed() => return Ok(StreamEnd::Shutdown),
        };
        let Some(message) = message else {
            return Ok(StreamEnd::Closed);
        };
        match message.item {
            Some(Item::Event(event)) => {
                let moves_spend =
                    matches!(event.kind, Some(Kind::TurnResult(_) | Kind::ModelSpend(_)));
                let finishes = matches!(event.kind, Some(Kind::SessionFinished(_)));
                // Stored by the ingest writer's thread, batched with other
                // followers' writes; answered once committed.
                let recorded = ctx
                    .db
                    .ingest()?
                    .events(target, vec![event])
                    .await?
                    .pop()
                    .unwrap_or_default();
                if let Some(status) = recorded.task_finished {
                    ctx.db.advance_generation();
                    tracing::info!(task_id = %target.task_id, %status, "task ended");
                }
                // Spend moves with every metered response (`ModelSpend`) and
                // turn result: the watchdog looks at once, so a ceiling stops
                // a session within about one response (interactive ones too).
                if recorded.inserted && moves_spend {
                    watch_budget(ctx, target);
                }
                if finishes {
                    return Ok(StreamEnd::Finished(Box::new(client)));
                }
            }
            Some(Item::JournalGap(gap)) => {
                // The live agent cannot read these back (its journal was cut
                // short or overwritten under it): recorded, and the stream
                // goes on after them. The agent is answering: never lost.
                let to_seq = gap.to_seq.min(gap.from_seq.saturating_add(u32::MAX as u64));
                if gap.from_seq >= from_seq && to_seq >= gap.from_seq {
                    ctx.db.record_journal_gap(
                        target,
                        gap.from_seq,
                        to_seq,
                        "agent",
                        &gap.reason,
                    )?;
                }
            }
            Some(Item::Heartbeat(heartbeat)) => {
                // Stored, with the compute it charges, by the ingest writer.
                ctx.db
                    .ingest()?
                    .heartbeat(target, heartbeat, Arc::clone(&ctx.config))
                    .await?;
                watch_budget(ctx, target);
            }
            None => {}
        }
    }
}

/// Records that a task ended without its session finishing.
fn fail_task(
    ctx: &IngestContext,
    target: &ContainerRef,
    err: &anyhow::Error,
    status: TaskStatus,
    state: ContainerState,
) {
    let (code, message) = match find_coded(err) {
        Some(coded) => (coded.code.code.to_string(), coded.message.clone()),
        None => (
            error_codes::INFRASTRUCTURE_ERROR.code.to_string(),
            format!("{err:#}"),
        ),
    };
    let update = TaskUpdate {
        error_code: Some(code),
        error_message: Some(message),
        ..TaskUpdate::default()
    };
    if let Err(e) = ctx.db.transition_task(&target.task_id, status, &update) {
        tracing::warn!(task_id = %target.task_id, "cannot record the task's end: {e:#}");
    }
    if let Err(e) = ctx.db.set_container_state(&target.container_id, state) {
        tracing::warn!(container_id = %target.container_id, "cannot record the container's end: {e:#}");
    }
    ctx.signals.task_ended.notify_one();
}

/// The budget watchdog, run each time the ledger may have grown (every
/// heartbeat and every `TurnResult`): warns once per ceiling at the warning
/// threshold, and when a ceiling is reached records the budget stop on the
/// task *before* asking the service to stop the session, so the session's
/// CANCELLED end is recorded as `failed` with E300. Errors are logged here.
pub fn watch_budget(ctx: &IngestContext, target: &ContainerRef) {
    if let Err(err) = try_watch_budget(ctx, target) {
        tracing::warn!(task_id = %target.task_id, "budget check failed: {err:#}");
    }
}

fn try_watch_budget(ctx: &IngestContext, target: &ContainerRef) -> Result<()> {
    let now = crate::ids::now_ms();
    let standing = ctx
        .db
        .standing(Some(&target.task_id), &ctx.config.budget, now)?;
    for warning in standing.warnings(ctx.config.budget.warning_threshold_percent) {
        let scope_key = match warning.scope {
            budget::Scope::Task => format!("task:{}:{}", target.task_id, warning.ceiling_usd),
            budget::Scope::Global => format!("global:{}", warning.ceiling_usd),
            budget::Scope::Day => format!("day:{}:{}", budget::day_of(now), warning.ceiling_usd),
        };
        if ctx.db.alert_once(&scope_key)? {
            let what = match warning.scope {
                budget::Scope::Task => format!("{}'s ceiling", target.task_id),
                budget::Scope::Global => "the global budget".into(),
                budget::Scope::Day => "today's budget".into(),
            };
            ctx.db.note(
                NewCoordinatorEvent::new(
                    "budget_warning",
                    "warning",
                    format!(
                        "{} spent: {}% of {what} ({})",
                        budget::usd(warning.spent_usd),
                        (warning.spent_usd / warning.ceiling_usd * 100.0).floor(),
                        budget::usd(warning.ceiling_usd)
                    ),
                )
                .task(&target.task_id)
                .session(&target.session_id)
                .container(&target.container_id)
                .details(serde_json::json!({
                    "scope": warning.scope,
                    "ceiling_usd": warning.ceiling_usd,
                    "spent_usd": warning.spent_usd,
                    "threshold_percent": ctx.config.budget.warning_threshold_percent,
                })),
            );
        }
    }
    if let Some(crossing) = standing.exceeded() {
        let message = budget::stop_message(&crossing);
        if ctx.db.request_budget_stop(&target.task_id, &message)? {
            let last_charge_usd = ctx.db.last_charge_usd(&target.task_id)?;
            tracing::warn!(task_id = %target.task_id, "{message}");
            ctx.db.note(
                NewCoordinatorEvent::new(
                    "budget_exceeded",
                    "error",
                    format!("{}: {message}", target.task_id),
                )
                .task(&target.task_id)
                .session(&target.session_id)
                .container(&target.container_id)
                .details(serde_json::json!({
                    "scope": crossing.scope,
                    "ceiling_usd": crossing.ceiling_usd,
                    "spent_usd": crossing.spent_usd,
                    "overshoot_usd": crossing.spent_usd - crossing.ceiling_usd,
                    "last_charge_usd": last_charge_usd,
                })),
            );
            ctx.signals.request_budget_stop(&target.task_id);
        }
    }
    Ok(())
}
