//! Resume as a pure plan: what `resume`/`checkpoint rollback` will do, computed
//! from what the database and the session's store say, with every refusal and its
//! code. No IO here: [`CoordinatorService::resume_session`] gathers the inputs and
//! carries the plan out.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use parhelia_proto::{ResumeSessionRequest, SkippedCheckpoint};

use crate::budget::{Crossing, Scope, usd};
use crate::checkpoints::Skipped;
use crate::db::{ContainerRef, SessionRecord, TaskRecord};
use crate::error::{CodedError, coded};
use crate::error_codes;
use crate::plan::{self, BackendKind};
use crate::task_state::TaskStatus;

#[cfg(doc)]
use super::CoordinatorService;

/// What a resume does, decided before anything changes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ResumePlan {
    pub(super) task_id: String,
    pub(super) session_id: String,
    /// The backend it ran on, and the one it goes on on.
    pub(super) from_kind: BackendKind,
    pub(super) to_kind: BackendKind,
    /// The session's volume as recorded (its store is under it).
    pub(super) volume: PathBuf,
    /// It stays on its backend: its starting workspace is still where it ran.
    pub(super) workspace_kept: bool,
    /// A container that ended without a final whole checkpoint whose files become a
    /// checkpoint first (`agent_gone`), when the backend still holds them.
    pub(super) salvage_first: Option<String>,
    /// The live container to stop first (two agents never write one workspace).
    pub(super) stop_first: Option<ContainerRef>,
    /// A previous container that is not live but may have left processes behind.
    pub(super) clean_up: Option<String>,
    /// Told to the stopped agent: `rollback` or `resume`.
    pub(super) stop_reason: &'static str,
    pub(super) was_interrupted: bool,
    /// The user named no checkpoint: the newest restorable one is chosen (again,
    /// after a live container's stop took a final one).
    pub(super) newest: bool,
}

impl ResumePlan {
    /// `session_rolled_back` or `session_resumed`, and its verb.
    pub(super) fn event(rollback: bool) -> (&'static str, &'static str) {
        if rollback {
            ("session_rolled_back", "rolled back")
        } else {
            ("session_resumed", "resumed")
        }
    }
}

/// The plan for resuming `r.session_id`, given its session and task as the
/// database has them and the backend it ran on; or the refusal (E201 session not
/// found, E100 an earlier attempt, E103 a task queued again, or the backend name's
/// own error).
pub(super) fn plan_resume(
    r: &ResumeSessionRequest,
    session: Option<&SessionRecord>,
    task: Option<&TaskRecord>,
    from_kind: BackendKind,
) -> Result<ResumePlan> {
    let session = session.ok_or_else(|| {
        coded(
            error_codes::SESSION_NOT_FOUND,
            format!("session not found: {}", r.session_id),
        )
    })?;
    let task = task.ok_or_else(|| anyhow!("the task of session {} is gone", session.id))?;
    if task.session_id.as_deref() != Some(session.id.as_str()) {
        return Err(coded(
            error_codes::INVALID_INPUT,
            format!(
                "session {} is an earlier attempt of {}; resume its latest session {}",
                session.id,
                task.id,
                task.session_id.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    if task.status == TaskStatus::Pending {
        return Err(coded(
            error_codes::ILLEGAL_TRANSITION,
            format!(
                "task {} is queued for a new attempt; cancel it before resuming its old session",
                task.id
            ),
        ));
    }
    let to_kind = match r.backend.trim() {
        "" => from_kind,
        name => plan::parse_backend(name)?,
    };
    let workspace_kept = from_kind == to_kind;
    let newest = r.checkpoint_id.trim().is_empty();
    let live = session.container_state.is_some_and(|s| s.is_active());
    // A session that ended without a final whole checkpoint (stopped on a full disk,
    // a failed turn) left its conversation in its container: its files become a
    // checkpoint first, so the default resume continues that conversation.
    let salvage_first = session.container_id.clone().filter(|_| {
        newest
            && workspace_kept
            && matches!(
                task.status,
                TaskStatus::Failed | TaskStatus::Interrupted | TaskStatus::Cancelled
            )
            && !live
    });
    let stop_first = match (&session.container_id, session.container_state) {
        (Some(id), Some(state)) if state.is_active() => Some(ContainerRef {
            container_id: id.clone(),
            session_id: session.id.clone(),
            task_id: task.id.clone(),
        }),
        _ => None,
    };
    let clean_up = session
        .container_id
        .clone()
        .filter(|_| stop_first.is_none());
    Ok(ResumePlan {
        task_id: task.id.clone(),
        session_id: session.id.clone(),
        from_kind,
        to_kind,
        volume: PathBuf::from(&session.volume_dir),
        workspace_kept,
        salvage_first,
        stop_first,
        clean_up,
        stop_reason: if r.rollback { "rollback" } else { "resume" },
        was_interrupted: task.status == TaskStatus::Interrupted,
        newest,
    })
}

/// What the session's store says about the checkpoint to restore (read by the
/// executor).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum StoreFacts {
    /// The session has no store (no checkpoint was ever taken).
    NoStore,
    /// No checkpoint named: the newest restorable one (its id and whether it
    /// carries a conversation), and the newer ones passed over.
    Newest {
        chosen: Option<(String, bool)>,
        skipped: Vec<Skipped>,
    },
    /// A named checkpoint: why it cannot be restored (if it cannot), and whether it
    /// carries a conversation.
    Named {
        id: String,
        unrestorable: Option<Skipped>,
        has_conversation: bool,
    },
}

/// The checkpoint a resume restores (`None`: the starting workspace), the newer
/// ones passed over, and whether the conversation starts over (it carries none).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct CheckpointChoice {
    pub(super) checkpoint_id: Option<String>,
    pub(super) skipped: Vec<Skipped>,
    pub(super) starts_over: bool,
}

impl CheckpointChoice {
    pub(super) fn skipped_wire(&self) -> Vec<SkippedCheckpoint> {
        self.skipped
            .iter()
            .map(|s| SkippedCheckpoint {
                checkpoint_id: s.checkpoint_id.clone(),
                code: s.code.to_string(),
                reason: s.reason.clone(),
            })
            .collect()
    }
}

/// Chooses the checkpoint from `facts`; E205 when there is nothing to resume from,
/// a named checkpoint's own code (E205, E620, E606…) when it cannot be restored.
pub(super) fn choose_checkpoint(
    task_id: &str,
    session_id: &str,
    workspace_kept: bool,
    newest: bool,
    facts: StoreFacts,
) -> Result<CheckpointChoice, CodedError> {
    let none = || CheckpointChoice {
        checkpoint_id: None,
        skipped: Vec::new(),
        starts_over: true,
    };
    let not_found = |message: String| CodedError::new(error_codes::CHECKPOINT_NOT_FOUND, message);
    // A session lost before its agent took even its `start` checkpoint never ran
    // Claude Code (that checkpoint comes first): on the backend it ran on, it starts
    // over from its starting workspace, with the task's prompt.
    let start_over = workspace_kept && newest;
    match facts {
        StoreFacts::NoStore if start_over => Ok(none()),
        StoreFacts::NoStore => Err(not_found(nothing_to_resume(task_id, session_id))),
        StoreFacts::Newest {
            chosen: None,
            skipped,
        } => {
            if start_over && skipped.is_empty() {
                return Ok(none());
            }
            Err(not_found(if skipped.is_empty() {
                nothing_to_resume(task_id, session_id)
            } else {
                let reasons: Vec<String> = skipped.iter().map(|s| s.line()).collect();
                format!(
                    "session {} has no restorable checkpoint to resume from:\n{}",
                    session_id,
                    reasons.join("\n")
                )
            }))
        }
        StoreFacts::Newest {
            chosen: Some((id, has_conversation)),
            skipped,
        } => Ok(CheckpointChoice {
            checkpoint_id: Some(id),
            skipped,
            starts_over: !has_conversation,
        }),
        StoreFacts::Named {
            id,
            unrestorable: Some(why),
            ..
        } => {
            let code = error_codes::lookup(why.code)
                .copied()
                .unwrap_or(error_codes::CHECKPOINT_IO_FAILED);
            let message = if code == error_codes::CHECKPOINT_NOT_FOUND {
                format!("checkpoint {id} is not in session {session_id}'s store")
            } else {
                why.reason
            };
            Err(CodedError::new(code, message))
        }
        StoreFacts::Named {
            id,
            unrestorable: None,
            has_conversation,
        } => Ok(CheckpointChoice {
            checkpoint_id: Some(id),
            skipped: Vec::new(),
            starts_over: !has_conversation,
        }),
    }
}

/// E300: a session continues only under a ceiling it has not reached.
pub(super) fn budget_refusal(task_id: &str, crossing: &Crossing) -> CodedError {
    CodedError::new(
        error_codes::BUDGET_EXCEEDED,
        format!(
            "{} cannot continue: {} spent has reached {} ceiling of {}; raise it with `parhelia budget set …` (global or `--daily`){}",
            task_id,
            usd(crossing.spent_usd),
            crossing.scope.as_str(),
            usd(crossing.ceiling_usd),
            if crossing.scope == Scope::Task {
                ", or create a new task with a larger `--max-cost`"
            } else {
                ""
            }
        ),
    )
}

/// What the resumed Claude Code is told first. A checkpoint without a
/// conversation (the session's `start`, or a Modal workspace seed: it stopped
/// before any turn was saved) starts the conversation again in that workspace,
/// with the task's prompt.
pub(super) fn resume_prompt(
    starts_over: bool,
    task_prompt: &str,
    message: &str,
    rollback: bool,
    was_interrupted: bool,
) -> String {
    if starts_over {
        if message.trim().is_empty() {
            task_prompt.to_string()
        } else {
            format!("{task_prompt}\n\n{message}")
        }
    } else if !message.trim().is_empty() {
        message.to_string()
    } else if !rollback && was_interrupted {
        RESUME_CONTINUE_MESSAGE.to_string()
    } else {
        // Nothing to say yet: the session waits for input.
        String::new()
    }
}

/// What an interrupted session is told when it is resumed without a message.
pub const RESUME_CONTINUE_MESSAGE: &str =
    "Your previous session was interrupted. Continue the task from where you left off.";

/// E205's message for a session that has no checkpoint at all: it was stopped
/// before its first one (nothing of it can be resumed), and `task retry` is the
/// way on (it starts the task again from its original workspace).
pub(super) fn nothing_to_resume(task_id: &str, session_id: &str) -> String {
    format!(
        "session {session_id} has no checkpoint to resume from: it stopped before its first checkpoint was taken. `parhelia task retry {task_id}` runs the task again from its original workspace"
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code_of, fixture, running_task};
    use super::*;
    use crate::container_state::ContainerState;
    use crate::db::{Db, TaskUpdate};
    use proptest::prelude::*;

    fn request(session_id: &str) -> ResumeSessionRequest {
        ResumeSessionRequest {
            session_id: session_id.into(),
            ..ResumeSessionRequest::default()
        }
    }

    fn records(db: &Db, session_id: &str) -> (SessionRecord, TaskRecord) {
        let session = db.get_session(session_id).unwrap().unwrap();
        let task = db.get_task(&session.task_id).unwrap().unwrap();
        (session, task)
    }

    fn end(db: &Db, task_id: &str, container_id: &str, status: TaskStatus) {
        db.set_container_state(container_id, ContainerState::Terminated)
            .unwrap();
        db.transition_task(task_id, status, &TaskUpdate::default())
            .unwrap();
    }

    #[test]
    fn a_live_session_is_stopped_first_and_nothing_salvaged() {
        let f = fixture();
        let ids = running_task(f.db(), "task-1");
        let (session, task) = records(f.db(), &ids.session_id);
        let plan = plan_resume(
            &request(&ids.session_id),
            Some(&session),
            Some(&task),
            BackendKind::Local,
        )
        .unwrap();
        assert_eq!(
            plan.stop_first,
            Some(ContainerRef {
                container_id: ids.container_id.clone(),
                session_id: ids.session_id.clone(),
                task_id: "task-1".into(),
            })
        );
        assert_eq!(plan.clean_up, None);
        assert_eq!(plan.salvage_first, None);
        assert_eq!(plan.stop_reason, "resume");
        assert!(plan.workspace_kept && plan.newest && !plan.was_interrupted);
    }

    #[test]
    fn an_ended_session_salvages_and_cleans_up_its_previous_container() {
        let f = fixture();
        let ids = running_task(f.db(), "task-2");
        end(f.db(), "task-2", &ids.container_id, TaskStatus::Interrupted);
        let (session, task) = records(f.db(), &ids.session_id);
        let mut r = request(&ids.session_id);
        let plan = plan_resume(&r, Some(&session), Some(&task), BackendKind::Local).unwrap();
        assert_eq!(plan.stop_first, None);
        assert_eq!(plan.clean_up.as_deref(), Some(ids.container_id.as_str()));
        assert_eq!(
            plan.salvage_first.as_deref(),
            Some(ids.container_id.as_str())
        );
        assert!(plan.was_interrupted);
        // A named checkpoint, or another backend: nothing is salvaged.
        r.checkpoint_id = "cp-x".into();
        let plan = plan_resume(&r, Some(&session), Some(&task), BackendKind::Local).unwrap();
        assert_eq!(plan.salvage_first, None);
        assert!(!plan.newest);
        r.checkpoint_id.clear();
        r.backend = "modal".into();
        r.rollback = true;
        let plan = plan_resume(&r, Some(&session), Some(&task), BackendKind::Local).unwrap();
        assert_eq!(plan.to_kind, BackendKind::Modal);
        assert!(!plan.workspace_kept);
        assert_eq!(plan.salvage_first, None);
        assert_eq!(plan.stop_reason, "rollback");
    }

    #[test]
    fn refusals_keep_their_codes() {
        let f = fixture();
        let ids = running_task(f.db(), "task-3");
        let (session, task) = records(f.db(), &ids.session_id);
        let err = plan_resume(&request("s-none"), None, None, BackendKind::Local).unwrap_err();
        assert_eq!(code_of(&err), error_codes::SESSION_NOT_FOUND.code);
        let err = plan_resume(
            &request(&ids.session_id),
            Some(&session),
            None,
            BackendKind::Local,
        )
        .unwrap_err();
        assert!(err.to_string().contains("is gone"), "{err:#}");
        let mut r = request(&ids.session_id);
        r.backend = "mainframe".into();
        assert!(plan_resume(&r, Some(&session), Some(&task), BackendKind::Local).is_err());
        // A retried task: its old session is an earlier attempt (E100); while
        // the retry is queued, its task is pending (E603).
        end(f.db(), "task-3", &ids.container_id, TaskStatus::Failed);
        f.db().retry_task("task-3").unwrap();
        let (session, task) = records(f.db(), &ids.session_id);
        let err = plan_resume(&r, Some(&session), Some(&task), BackendKind::Local).unwrap_err();
        let code = code_of(&err);
        assert!(
            code == error_codes::ILLEGAL_TRANSITION.code || code == error_codes::INVALID_INPUT.code,
            "{err:#}"
        );
    }

    fn skipped(id: &str, code: &'static str) -> Skipped {
        Skipped {
            checkpoint_id: id.into(),
            code,
            reason: format!("{id} is damaged"),
        }
    }

    #[test]
    fn the_checkpoint_is_chosen_from_what_the_store_says() {
        let choose = |kept, newest, facts| choose_checkpoint("t", "s", kept, newest, facts);
        // No store: a session on its own backend starts over; elsewhere, E205.
        assert_eq!(
            choose(true, true, StoreFacts::NoStore).unwrap(),
            CheckpointChoice {
                checkpoint_id: None,
                skipped: vec![],
                starts_over: true
            }
        );
        let err = choose(false, true, StoreFacts::NoStore).unwrap_err();
        assert_eq!(err.code, error_codes::CHECKPOINT_NOT_FOUND);
        assert_eq!(err.message, nothing_to_resume("t", "s"));
        let err = choose(true, false, StoreFacts::NoStore).unwrap_err();
        assert_eq!(err.code, error_codes::CHECKPOINT_NOT_FOUND);
        // Every checkpoint damaged: E205 naming each.
        let err = choose(
            true,
            true,
            StoreFacts::Newest {
                chosen: None,
                skipped: vec![skipped("cp-2", "E620")],
            },
        )
        .unwrap_err();
        assert_eq!(err.code, error_codes::CHECKPOINT_NOT_FOUND);
        assert!(err.message.contains("cp-2 [E620]"), "{}", err.message);
        // The newest restorable, with the newer ones passed over.
        let chosen = choose(
            true,
            true,
            StoreFacts::Newest {
                chosen: Some(("cp-1".into(), true)),
                skipped: vec![skipped("cp-2", "E620")],
            },
        )
        .unwrap();
        assert_eq!(chosen.checkpoint_id.as_deref(), Some("cp-1"));
        assert!(!chosen.starts_over);
        assert_eq!(chosen.skipped_wire()[0].code, "E620");
        // A named one: its own code; not in the store is said so.
        let err = choose(
            true,
            false,
            StoreFacts::Named {
                id: "cp-9".into(),
                unrestorable: Some(skipped("cp-9", error_codes::CHECKPOINT_NOT_FOUND.code)),
                has_conversation: false,
            },
        )
        .unwrap_err();
        assert_eq!(err.message, "checkpoint cp-9 is not in session s's store");
        let err = choose(
            true,
            false,
            StoreFacts::Named {
                id: "cp-9".into(),
                unrestorable: Some(skipped("cp-9", "E620")),
                has_conversation: true,
            },
        )
        .unwrap_err();
        assert_eq!(err.code.code, "E620");
        assert_eq!(err.message, "cp-9 is damaged");
        let named = choose(
            false,
            false,
            StoreFacts::Named {
                id: "cp-start".into(),
                unrestorable: None,
                has_conversation: false,
            },
        )
        .unwrap();
        assert!(named.starts_over);
    }

    #[test]
    fn a_task_ceiling_refusal_says_how_to_go_on() {
        let crossing = Crossing {
            scope: Scope::Task,
            ceiling_usd: 1.0,
            spent_usd: 1.25,
        };
        let err = budget_refusal("task-x", &crossing);
        assert_eq!(err.code, error_codes::BUDGET_EXCEEDED);
        assert!(err.message.starts_with("task-x cannot continue: "));
        assert!(
            err.message.ends_with("a larger `--max-cost`"),
            "{}",
            err.message
        );
    }

    proptest! {
        /// What Claude Code is told first: the task's prompt when the conversation
        /// starts over (with the message after it), else the message, else the
        /// continue message for an interrupted resume, else nothing.
        #[test]
        fn the_resume_prompt(
            starts_over: bool,
            message in "( |hi|go on)",
            rollback: bool,
            interrupted: bool,
        ) {
            let prompt = resume_prompt(starts_over, "the task", &message, rollback, interrupted);
            let said = !message.trim().is_empty();
            if starts_over {
                prop_assert!(prompt.starts_with("the task"));
                prop_assert_eq!(prompt.ends_with(&message) && said, said);
            } else if said {
                prop_assert_eq!(prompt, message);
            } else if !rollback && interrupted {
                prop_assert_eq!(prompt, RESUME_CONTINUE_MESSAGE);
            } else {
                prop_assert!(prompt.is_empty());
            }
        }
    }
}
