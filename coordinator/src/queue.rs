//! The task queue's decisions: which queued tasks dispatch now, which wait,
//! and which ended tasks a cleanup removes. Pure.
//!
//! A pending task is either *held* (created with `--no-dispatch`: it waits
//! for an explicit `task dispatch`) or *queued* (it asked to run and waits
//! for a worker slot). Queued tasks dispatch oldest request first (FIFO),
//! as long as fewer than `max_concurrent_workers` tasks are running.

use serde::Serialize;

use crate::error::CodedError;
use crate::error_codes;
use crate::task_state::TaskStatus;

/// A pending task that asked to be dispatched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTask {
    pub task_id: String,
    pub dispatch_requested_at_ms: i64,
    pub created_at_ms: i64,
}

/// What a dispatch pass does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DispatchPlan {
    /// Dispatch these now, in this order.
    pub dispatch_now: Vec<String>,
    /// These keep waiting; `(task_id, position)` with position 1 next.
    pub waiting: Vec<(String, u32)>,
}

/// FIFO order: by dispatch request, then creation, then id (so the order
/// is total and stable).
pub fn queue_order(queued: &[QueuedTask]) -> Vec<&QueuedTask> {
    let mut ordered: Vec<&QueuedTask> = queued.iter().collect();
    ordered.sort_by(|a, b| {
        (a.dispatch_requested_at_ms, a.created_at_ms, &a.task_id).cmp(&(
            b.dispatch_requested_at_ms,
            b.created_at_ms,
            &b.task_id,
        ))
    });
    ordered
}

/// Decides a dispatch pass: `running` tasks hold slots out of `max`.
pub fn plan_dispatch(queued: &[QueuedTask], running: u64, max: u64) -> DispatchPlan {
    let free = max.saturating_sub(running) as usize;
    let ordered = queue_order(queued);
    let mut plan = DispatchPlan::default();
    for (i, task) in ordered.into_iter().enumerate() {
        if i < free {
            plan.dispatch_now.push(task.task_id.clone());
        } else {
            plan.waiting
                .push((task.task_id.clone(), (i - free + 1) as u32));
        }
    }
    plan
}

/// The statuses `task cleanup` removes when none is given.
pub const DEFAULT_CLEANUP_STATUSES: [TaskStatus; 3] = [
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// The fields of a task a cleanup looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupCandidate {
    pub task_id: String,
    pub status: TaskStatus,
    pub finished_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// The tasks `task cleanup --status S --older-than D` removes: ended, in one
/// of `statuses`, finished more than `older_than_ms` ago. A status that has
/// not ended is refused (E100).
pub fn select_for_cleanup(
    candidates: &[CleanupCandidate],
    statuses: &[TaskStatus],
    older_than_ms: Option<i64>,
    now_ms: i64,
) -> Result<Vec<String>, CodedError> {
    let statuses: &[TaskStatus] = if statuses.is_empty() {
        &DEFAULT_CLEANUP_STATUSES
    } else {
        statuses
    };
    if let Some(active) = statuses.iter().find(|s| !s.has_ended()) {
        return Err(CodedError::new(
            error_codes::INVALID_INPUT,
            format!("cleanup removes ended tasks only; `{active}` tasks have not ended"),
        ));
    }
    Ok(candidates
        .iter()
        .filter(|t| statuses.contains(&t.status))
        .filter(|t| {
            older_than_ms
                .is_none_or(|age| now_ms - t.finished_at_ms.unwrap_or(t.created_at_ms) > age)
        })
        .map(|t| t.task_id.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str, requested: i64, created: i64) -> QueuedTask {
        QueuedTask {
            task_id: id.into(),
            dispatch_requested_at_ms: requested,
            created_at_ms: created,
        }
    }

    #[test]
    fn dispatch_is_fifo_up_to_the_free_slots() {
        let tasks = [
            queued("t-c", 30, 1),
            queued("t-a", 10, 5),
            queued("t-b", 10, 6),
            queued("t-d", 40, 0),
        ];
        // (running, max) → (dispatched now, waiting with positions)
        type Row<'a> = (u64, u64, &'a [&'a str], &'a [(&'a str, u32)]);
        let table: [Row; 4] = [
            (0, 10, &["t-a", "t-b", "t-c", "t-d"], &[]),
            (1, 3, &["t-a", "t-b"], &[("t-c", 1), ("t-d", 2)]),
            (3, 3, &[], &[("t-a", 1), ("t-b", 2), ("t-c", 3), ("t-d", 4)]),
            (5, 3, &[], &[("t-a", 1), ("t-b", 2), ("t-c", 3), ("t-d", 4)]),
        ];
        for (running, max, now, waiting) in table {
            let plan = plan_dispatch(&tasks, running, max);
            assert_eq!(plan.dispatch_now, now, "{running}/{max}");
            let waiting: Vec<(String, u32)> =
                waiting.iter().map(|(t, p)| (t.to_string(), *p)).collect();
            assert_eq!(plan.waiting, waiting, "{running}/{max}");
        }
        assert_eq!(plan_dispatch(&[], 0, 1), DispatchPlan::default());
    }

    #[test]
    fn cleanup_selects_ended_tasks_by_status_and_age() {
        let t = |id: &str, status, finished: Option<i64>| CleanupCandidate {
            task_id: id.into(),
            status,
            finished_at_ms: finished,
            created_at_ms: 0,
        };
        let tasks = [
            t("done-old", TaskStatus::Completed, Some(1_000)),
            t("done-new", TaskStatus::Completed, Some(9_500)),
            t("failed-old", TaskStatus::Failed, Some(1_000)),
            t("int-old", TaskStatus::Interrupted, Some(1_000)),
            t("running", TaskStatus::Running, None),
        ];
        let pick = |statuses: &[TaskStatus], older| {
            select_for_cleanup(&tasks, statuses, older, 10_000).unwrap()
        };
        assert_eq!(pick(&[], None), ["done-old", "done-new", "failed-old"]);
        assert_eq!(pick(&[], Some(5_000)), ["done-old", "failed-old"]);
        assert_eq!(pick(&[TaskStatus::Interrupted], None), ["int-old"]);
        let err = select_for_cleanup(&tasks, &[TaskStatus::Running], None, 0).unwrap_err();
        assert_eq!(err.code.code, "E100");
    }
}
