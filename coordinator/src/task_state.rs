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
                    format!(
                        "unknown task status `{s}` (valid: {})",
                        TaskStatus::ALL.map(TaskStatus::as_str).join(", ")
                    ),
                )
            })
    }
}

/// A status as `task list` shows it: a pending task shows as `held`
/// (waiting for `task dispatch`) or `queued` (waiting for a worker slot).
/// The one list behind both what the CLI prints and what `--status` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShownStatus {
    /// Any pending task (held or queued).
    Status(TaskStatus),
    Held,
    Queued,
}

impl ShownStatus {
    /// Every value `task list --status` accepts, in the order help lists them.
    pub const ALL: [ShownStatus; 8] = [
        ShownStatus::Status(TaskStatus::Pending),
        ShownStatus::Held,
        ShownStatus::Queued,
        ShownStatus::Status(TaskStatus::Running),
        ShownStatus::Status(TaskStatus::Completed),
        ShownStatus::Status(TaskStatus::Failed),
        ShownStatus::Status(TaskStatus::Cancelled),
        ShownStatus::Status(TaskStatus::Interrupted),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShownStatus::Status(s) => s.as_str(),
            ShownStatus::Held => "held",
            ShownStatus::Queued => "queued",
        }
    }

    /// What a task shows: `held`/`queued` for a pending one (by whether
    /// its dispatch was asked for), else its status.
    pub fn of(status: TaskStatus, dispatch_requested: bool) -> ShownStatus {
        match (status, dispatch_requested) {
            (TaskStatus::Pending, true) => ShownStatus::Queued,
            (TaskStatus::Pending, false) => ShownStatus::Held,
            (other, _) => ShownStatus::Status(other),
        }
    }

    /// Whether a task with this status and dispatch request passes the filter.
    pub fn matches(self, status: TaskStatus, dispatch_requested: bool) -> bool {
        match self {
            ShownStatus::Status(s) => s == status,
            shown => ShownStatus::of(status, dispatch_requested) == shown,
        }
    }

    /// The stored status to select by (held and queued are pending).
    pub fn stored(self) -> TaskStatus {
        match self {
            ShownStatus::Status(s) => s,
            ShownStatus::Held | ShownStatus::Queued => TaskStatus::Pending,
        }
    }

    /// `pending, held, queued, …` for help texts and errors.
    pub fn valid_list() -> String {
        ShownStatus::ALL.map(ShownStatus::as_str).join(", ")
    }
}

impl fmt::Display for ShownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ShownStatus {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        ShownStatus::ALL
            .into_iter()
            .find(|shown| shown.as_str() == wanted)
            .ok_or_else(|| {
                CodedError::new(
                    error_codes::UNKNOWN_STATUS,
                    format!(
                        "unknown task status `{s}` (valid: {})",
                        ShownStatus::valid_list()
                    ),
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
    fn every_shown_status_is_accepted_and_matches_what_shows_it() {
        for status in TaskStatus::ALL {
            for requested in [false, true] {
                let shown = ShownStatus::of(status, requested);
                let parsed: ShownStatus = shown.as_str().parse().expect("a shown status parses");
                assert_eq!(parsed, shown);
                assert!(
                    parsed.matches(status, requested),
                    "{shown} filter misses it"
                );
                assert_eq!(parsed.stored(), status);
            }
        }
        assert!(ShownStatus::Status(Pending).matches(Pending, true));
        assert!(!ShownStatus::Held.matches(Pending, true));
    }

    #[test]
    fn an_unknown_status_is_e104_listing_the_valid_ones() {
        let err = "nope".parse::<ShownStatus>().unwrap_err();
        assert_eq!(err.code, error_codes::UNKNOWN_STATUS);
        for shown in ShownStatus::ALL {
            assert!(err.message.contains(shown.as_str()), "{}", err.message);
        }
    }

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
