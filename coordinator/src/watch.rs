//! Following a task from the database: `task watch` and `task create
//! --sync`. The database is the source of truth, so this works whether or
//! not the CLI started the task, and across coordinator restarts.
//!
//! The loop reads the task's status first and then its events after the
//! last one printed; it stops once the status has ended and a read after
//! that returned nothing new. Since a task's end is stored in the same
//! transaction as the event that ended it, no event is ever missed.
//!
//! A running task whose session waits for input (its last status is `needs_input`, and
//! no input was accepted since) will not end on its own: the loop returns then too,
//! once it has caught up, and the summary says what the session waits for.

use std::time::Duration;

use anyhow::Result;
use parhelia_proto::SessionStatus;
use parhelia_proto::event::Kind;

use crate::db::{Db, TaskRecord};
use crate::error::{CodedError, coded};
use crate::error_codes;
use crate::render::{duration, labelled, render_event};
use crate::task_state::TaskStatus;

/// How often the database is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(150);
const BATCH: u32 = 500;

/// Prints a task's events (through `emit`) until the task has ended;
/// returns the ended task.
pub async fn watch_task(db: &Db, task_id: &str, mut emit: impl FnMut(&str)) -> Result<WatchedTask> {
    watch_task_events(db, task_id, |stored| {
        if let Some(line) = render_event(&stored.event) {
            emit(&line);
        }
    })
    .await
}

/// As [`watch_task`], handing over each stored event (`--json` prints them).
pub async fn watch_task_events(
    db: &Db,
    task_id: &str,
    mut emit: impl FnMut(&crate::db::StoredEvent),
) -> Result<WatchedTask> {
    let mut last_rowid = 0;
    let mut last_assistant_text = None;
    let mut waiting_for_input = false;
    loop {
        let task = db.get_task(task_id)?.ok_or_else(|| {
            coded(
                error_codes::TASK_NOT_FOUND,
                format!("task not found: {task_id}"),
            )
        })?;
        let events = db.task_events_after(task_id, last_rowid, BATCH)?;
        for stored in &events {
            last_rowid = stored.rowid;
            match &stored.event.kind {
                Some(Kind::AssistantText(text)) => {
                    last_assistant_text = Some(text.text.trim().to_string());
                }
                Some(Kind::StatusChanged(status)) => {
                    waiting_for_input = status.status == SessionStatus::NeedsInput as i32;
                }
                Some(Kind::InputAccepted(_) | Kind::SessionFinished(_)) => {
                    waiting_for_input = false;
                }
                _ => {}
            }
            emit(stored);
        }
        let waits = waiting_for_input && task.status == TaskStatus::Running;
        if events.is_empty() && (task.status.has_ended() || waits) {
            return Ok(WatchedTask {
                task,
                last_assistant_text,
            });
        }
        if (events.len() as u32) < BATCH {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A task that has ended (or whose session waits for input: it is still running), plus
/// what the watcher saw.
#[derive(Clone, Debug)]
pub struct WatchedTask {
    pub task: TaskRecord,
    pub last_assistant_text: Option<String>,
}

impl WatchedTask {
    /// The closing lines: the result (unless it was just printed as
    /// Claude's last message) and a summary with the cost.
    pub fn summary(&self) -> String {
        let task = &self.task;
        let mut out = String::new();
        if let Some(result) = task
            .result
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            && task.status == TaskStatus::Completed
            && self.last_assistant_text.as_deref() != Some(result)
        {
            out.push_str(&labelled("result", result));
            out.push('\n');
        }
        let took = match (task.started_at_ms, task.finished_at_ms) {
            (Some(start), Some(end)) => format!(" in {}", duration((end - start).max(0) as u64)),
            _ => String::new(),
        };
        let waiting = if self.waits_for_input() {
            let session = task.session_id.as_deref().unwrap_or("<session>");
            format!(
                " · waiting for input (`parhelia session send {session} \"…\"` continues it, `parhelia task cancel {}` ends it)",
                task.id
            )
        } else {
            String::new()
        };
        out.push_str(&labelled(
            "task",
            &format!(
                "{} {}{took}{waiting} · cost {}",
                task.id,
                task.status,
                crate::views::cost_breakdown(&task.spend)
            ),
        ));
        out
    }

    /// The watch returned because the session waits for input, not because the task ended.
    pub fn waits_for_input(&self) -> bool {
        !self.task.status.has_ended()
    }

    /// `Ok(())` when the task completed, else its error (coded).
    pub fn outcome(&self) -> Result<(), CodedError> {
        let task = &self.task;
        if task.status == TaskStatus::Completed || self.waits_for_input() {
            return Ok(());
        }
        let code = task
            .error_code
            .as_deref()
            .or(crate::task_state::default_error_code(task.status))
            .map(error_codes::lookup_or_family)
            .unwrap_or(error_codes::CLAUDE_CODE_ERROR_RESULT);
        let detail = task.error_message.as_deref().unwrap_or(code.what);
        Err(CodedError::new(
            code,
            format!("task {} {}: {detail}", task.id, task.status),
        ))
    }
}
