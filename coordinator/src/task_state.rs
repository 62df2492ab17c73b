//! The task state machine: which statuses exist and which changes are
//! allowed. Pure; every status change in the coordinator goes through
//! [`transition`].
//!
//! ```text
//! pending ──► running ──► completed
//!    │           ├──────► failed ─────┐
//!    │           ├──────► cancelled ──┤
//!    │           └──────► interrupted ┼──► running   (resume)
//!    ├──────────────────► failed      │
//!    └──────────────────► cancelled   └──► pending   (retry: a new attempt)
//! interrupted ──► failed | cancelled
//! completed | failed | cancelled ──► running   (resume or rollback: the same
//!                                               session continues on a new container)
//! ```
//!
//! A pending task is *held* (`--no-dispatch`) or *queued* (waiting for a
//! worker slot); `running` starts when the coordinator claims it for
//! dispatch (the claim and the session's records are one transaction, so a
//! task is never launched twice). `completed` is final. `failed` and
//! `cancelled` are final for their session; only `task retry` starts the
//! task again, as a new attempt with a new session. `interrupted` has ended
//! (nothing is running) but is resumable. `parhelia resume` and `checkpoint
//! rollback` continue an ended session (of any ending) from a checkpoint, so
//! its task runs again: "final" means nothing moves it *by itself*.

use std::fmt;
use std::str::FromStr;

use parhelia_proto::SessionOutcome;

use crate::error::CodedError;
use crate::error_codes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Recorded, not launched yet.
    Pending,
    /// Its container was launched; the session is (or is about to be) running.
    Running,
    /// The session finished successfully.
    Completed,
    /// The session or its launch failed; the task carries an error code.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// The session died or its container went away; resumable.
    Interrupted,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Interrupted => "interrupted",
        }
    }

    /// The session ended for good: nothing but a retry (failed, cancelled)
    /// moves the task again, and nothing at all moves a completed one.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// Nothing is running for the task any more (final, or interrupted).
    /// `task watch` stops here.
    pub fn has_ended(self) -> bool {
        self.is_final() || self == TaskStatus::Interrupted
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                CodedError::new(
                    error_codes::UNKNOWN_STATUS,
                    format!("unknown task status: {s}"),
                )
            })
    }
}

/// Whether the state machine allows `from → to`.
pub fn is_allowed(from: TaskStatus, to: TaskStatus) -> bool {
    use TaskStatus::*;
    matches!(
        (from, to),
        (Pending, Running | Failed | Cancelled)
            | (Running, Completed | Failed | Cancelled | Interrupted)
            | (Interrupted, Running | Failed | Cancelled | Pending)
            | (Failed | Cancelled, Pending)
            | (Completed | Failed | Cancelled, Running)
    )
}

/// The checked transition: `Ok(to)` when allowed, an E603 error otherwise.
pub fn transition(
    task_id: &str,
    from: TaskStatus,
    to: TaskStatus,
) -> Result<TaskStatus, CodedError> {
    if is_allowed(from, to) {
        Ok(to)
    } else {
        Err(CodedError::new(
            error_codes::ILLEGAL_TRANSITION,
            format!("task {task_id} cannot go from {from} to {to}"),
        ))
    }
}

/// The task status a finished session leads to.
pub fn status_for_outcome(outcome: SessionOutcome) -> TaskStatus {
    match outcome {
        SessionOutcome::Succeeded => TaskStatus::Completed,
        SessionOutcome::Cancelled => TaskStatus::Cancelled,
        SessionOutcome::Interrupted => TaskStatus::Interrupted,
        SessionOutcome::Failed | SessionOutcome::Unspecified => TaskStatus::Failed,
    }
}

/// The error code a task that ended in `status` reports when its session gave none.
pub fn default_error_code(status: TaskStatus) -> Option<&'static str> {
    match status {
        TaskStatus::Failed => Some(error_codes::CLAUDE_CODE_ERROR_RESULT.code),
        TaskStatus::Cancelled => Some(error_codes::SESSION_CANCELLED.code),
        TaskStatus::Interrupted => Some(error_codes::SESSION_INTERRUPTED.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::TaskStatus::*;
    use super::*;

    #[test]
    fn transition_table() {
        // Every pair, spelled out: (from, [allowed targets]).
        let allowed: [(TaskStatus, &[TaskStatus]); 6] = [
            (Pending, &[Running, Failed, Cancelled]),
            (Running, &[Completed, Failed, Cancelled, Interrupted]),
            (Completed, &[Running]),
            (Failed, &[Pending, Running]),
            (Cancelled, &[Pending, Running]),
            (Interrupted, &[Running, Failed, Cancelled, Pending]),
        ];
        for (from, targets) in allowed {
            for to in TaskStatus::ALL {
                let expected = targets.contains(&to);
                assert_eq!(is_allowed(from, to), expected, "{from} -> {to}");
                let result = transition("task-00000000", from, to);
                assert_eq!(result.is_ok(), expected, "{from} -> {to}");
                if let Err(err) = result {
                    assert_eq!(err.code.code, "E603");
                    assert_eq!(
                        err.message,
                        format!("task task-00000000 cannot go from {from} to {to}")
                    );
                }
            }
        }
    }

    #[test]
    fn final_states_have_no_way_out_and_have_ended() {
        for from in TaskStatus::ALL {
            if from.is_final() {
                assert!(from.has_ended());
                // Only a retry (back to pending) or a resume/rollback (the
                // session continues: running) leaves a final status.
                assert!(
                    TaskStatus::ALL
                        .iter()
                        .all(|to| !is_allowed(from, *to) || *to == Pending || *to == Running)
                );
            }
        }
        assert!(Interrupted.has_ended() && !Interrupted.is_final());
        assert!(!Running.has_ended() && !Pending.has_ended());
    }

    #[test]
    fn names_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
        }
        assert_eq!("done".parse::<TaskStatus>().unwrap_err().code.code, "E104");
    }

    #[test]
    fn outcomes_map_to_statuses() {
        assert_eq!(status_for_outcome(SessionOutcome::Succeeded), Completed);
        assert_eq!(status_for_outcome(SessionOutcome::Failed), Failed);
        assert_eq!(status_for_outcome(SessionOutcome::Cancelled), Cancelled);
        assert_eq!(status_for_outcome(SessionOutcome::Interrupted), Interrupted);
        assert_eq!(status_for_outcome(SessionOutcome::Unspecified), Failed);
        assert_eq!(default_error_code(Completed), None);
        assert_eq!(default_error_code(Interrupted), Some("E602"));
    }
}
