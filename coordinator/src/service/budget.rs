//! The budget: the checks before a dispatch, Claude Code's own spend fence, the
//! watchdog's stop, and `budget set`.

use super::sessions::SessionStop;
use super::*;

impl CoordinatorService {
    /// E300 when a task estimated like `limits` would exceed what the
    /// global or daily budget has left.
    pub(super) fn check_budget_before_dispatch(
        &self,
        what: &str,
        limits: &TaskLimits,
        task_type: &str,
        backend: &str,
    ) -> Result<()> {
        let db = &self.inner.db;
        let history = db.similar_history(task_type, backend)?;
        let estimate = crate::budget::estimate(limits, backend, self.config(), history);
        let standing = db.standing(None, &self.config().budget, ids::now_ms())?;
        if let Some(crossing) = standing.refuses(estimate.high_usd) {
            return Err(coded(
                error_codes::BUDGET_EXCEEDED,
                crate::budget::refusal_message(what, &estimate, &crossing),
            ));
        }
        Ok(())
    }

    /// The pre-dispatch check for a recorded task (queued, held, retried).
    pub(super) fn check_task_budget(&self, task: &crate::db::TaskRecord) -> Result<()> {
        let limits = self
            .inner
            .db
            .task_limits(&task.id)?
            .map(|(l, _)| l)
            .unwrap_or_default();
        // The task's own ceiling covers every attempt: a retry of a task
        // that spent it would only be stopped at once.
        if let Some(max) = limits.max_cost_usd {
            let spent = self.inner.db.task_spent_usd(&task.id)?;
            if spent >= max {
                return Err(coded(
                    error_codes::BUDGET_EXCEEDED,
                    format!(
                        "{} has spent {} of its --max-cost {}; create a new task with a larger --max-cost",
                        task.id,
                        crate::budget::usd(spent),
                        crate::budget::usd(max)
                    ),
                ));
            }
        }
        self.check_budget_before_dispatch(&task.id, &limits, &task.task_type, &task.backend)
    }

    /// Claude Code's own `--max-budget-usd` for a session of `task_id`: what
    /// the session's model cost may reach before a ceiling would (its model
    /// cost so far plus what every ceiling has left). Claude Code compares it
    /// with its session-wide total, which includes earlier processes.
    pub(super) fn claude_budget_fence(
        &self,
        task_id: &str,
        session_id: Option<&str>,
    ) -> Result<Option<f64>> {
        let db = &self.inner.db;
        let standing = db.standing(Some(task_id), &self.config().budget, ids::now_ms())?;
        let allowance = standing.allowance_usd();
        if !allowance.is_finite() {
            return Ok(None);
        }
        let so_far = match session_id {
            Some(id) => db.session_model_usd(id)?,
            None => 0.0,
        };
        // Claude Code needs a positive amount; a spent budget is refused
        // before launch, so this floor only guards rounding.
        Ok(Some((so_far + allowance).max(0.000_001)))
    }

    /// The watchdog's stop: the task's session is stopped through the agent
    /// (Stop RPC: the agent takes a final checkpoint, trigger `stop`) and the
    /// task ends `failed` with E300. The budget stop was recorded on the task
    /// before this runs (`Db::request_budget_stop`), so the agent's CANCELLED
    /// end is read as the budget failure, as cancel and resume do with their
    /// own bookkeeping.
    pub async fn stop_for_budget(&self, task_id: &str) -> Result<()> {
        let db = &self.inner.db;
        let Some(task) = db.get_task(task_id)? else {
            return Ok(());
        };
        if task.status != TaskStatus::Running {
            return Ok(());
        }
        let message = db
            .budget_stop_message(task_id)?
            .unwrap_or_else(|| "stopped by the budget watchdog".into());
        let fail = |message: String| TaskUpdate {
            error_code: Some(error_codes::BUDGET_EXCEEDED.code.into()),
            error_message: Some(message),
            ..TaskUpdate::default()
        };
        let container = match &task.container_id {
            Some(id) => db.get_container(id)?,
            None => None,
        };
        let Some(container) = container.filter(|c| c.state.is_active()) else {
            db.transition_task(task_id, TaskStatus::Failed, &fail(message))?;
            self.inner.signals.task_ended.notify_one();
            return Ok(());
        };
        let target = ContainerRef {
            container_id: container.id.clone(),
            session_id: container.session_id.clone(),
            task_id: task_id.to_string(),
        };
        tracing::info!(%task_id, container_id = %container.id, "stopping for the budget");
        let how = SessionStop {
            reason: "budget ceiling reached",
            code: error_codes::BUDGET_EXCEEDED.code,
            record_checkpoint: true,
            catch_up_after_terminate: false,
        };
        self.stop_session(&target, how, |_| {
            if let Some(current) = db.get_task(task_id)?
                && current.status == TaskStatus::Running
            {
                db.transition_task(task_id, TaskStatus::Failed, &fail(message))?;
            }
            Ok(())
        })
        .await?;
        self.inner.signals.task_ended.notify_one();
        Ok(())
    }

    /// `budget set`: the global and/or daily ceiling, persisted.
    pub fn set_budget(&self, r: &SetBudgetRequest) -> Result<SetBudgetResponse> {
        let invalid = |what: &str, x: f64| {
            coded(
                error_codes::INVALID_INPUT,
                format!("{what} must be a non-negative amount in USD, got {x}"),
            )
        };
        if r.set_ceiling && !(r.ceiling_usd.is_finite() && r.ceiling_usd >= 0.0) {
            return Err(invalid("the ceiling", r.ceiling_usd));
        }
        if r.set_daily && !r.daily_ceiling_usd.is_finite() {
            return Err(invalid("the daily ceiling", r.daily_ceiling_usd));
        }
        if !r.task_id.is_empty() && !r.task_max_cost_usd.is_finite() {
            return Err(invalid("--max-cost", r.task_max_cost_usd));
        }
        let db = &self.inner.db;
        let task_ceiling = Some(r.task_max_cost_usd).filter(|x| *x > 0.0);
        if !r.task_id.is_empty() {
            if !db.set_task_max_cost(&r.task_id, task_ceiling)? {
                return Err(coded(
                    error_codes::TASK_NOT_FOUND,
                    format!("task not found: {}", r.task_id),
                ));
            }
            db.note(
                NewCoordinatorEvent::new(
                    "budget_set",
                    "info",
                    match task_ceiling {
                        Some(x) => format!("{}: ceiling {}", r.task_id, crate::budget::usd(x)),
                        None => format!("{}: ceiling removed", r.task_id),
                    },
                )
                .task(&r.task_id),
            );
        }
        db.set_ceilings(
            r.set_ceiling.then_some(r.ceiling_usd),
            r.set_daily
                .then_some(Some(r.daily_ceiling_usd).filter(|d| *d > 0.0)),
        )?;
        let ceilings = db.ceilings(&self.config().budget)?;
        if r.set_ceiling || r.set_daily {
            db.note(NewCoordinatorEvent::new(
                "budget_set",
                "info",
                format!(
                    "budget ceiling {}{}",
                    crate::budget::usd(ceilings.global_usd),
                    match ceilings.daily_usd {
                        Some(d) => format!(", daily {}", crate::budget::usd(d)),
                        None => String::new(),
                    }
                ),
            ));
        }
        Ok(SetBudgetResponse {
            ceiling_usd: ceilings.global_usd,
            has_daily: ceilings.daily_usd.is_some(),
            daily_ceiling_usd: ceilings.daily_usd.unwrap_or(0.0),
            has_task_ceiling: task_ceiling.is_some(),
            task_max_cost_usd: task_ceiling.unwrap_or(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code_of, fixture, held_task, running_task};
    use super::*;

    fn ceiling(usd: f64) -> SetBudgetRequest {
        SetBudgetRequest {
            set_ceiling: true,
            ceiling_usd: usd,
            ..SetBudgetRequest::default()
        }
    }

    #[test]
    fn a_ceiling_is_persisted_and_bounds_claude_codes_own_fence() {
        let f = fixture();
        held_task(f.db(), "task-b", TaskLimits::default());
        let set = f.service.set_budget(&ceiling(7.5)).unwrap();
        assert_eq!(set.ceiling_usd, 7.5);
        assert_eq!(
            f.db()
                .ceilings(&f.service.config().budget)
                .unwrap()
                .global_usd,
            7.5
        );
        let fence = f.service.claude_budget_fence("task-b", None).unwrap();
        assert!(fence.is_some_and(|x| x > 0.0 && x <= 7.5), "{fence:?}");
        // The task's own ceiling, lower, is the fence.
        let task = SetBudgetRequest {
            task_id: "task-b".into(),
            task_max_cost_usd: 2.0,
            ..SetBudgetRequest::default()
        };
        let set = f.service.set_budget(&task).unwrap();
        assert!(set.has_task_ceiling);
        let fence = f.service.claude_budget_fence("task-b", None).unwrap();
        assert!(fence.is_some_and(|x| x > 0.0 && x <= 2.0), "{fence:?}");
    }

    #[test]
    fn nonsense_amounts_and_unknown_tasks_are_refused() {
        let f = fixture();
        let err = f.service.set_budget(&ceiling(-1.0)).unwrap_err();
        assert_eq!(code_of(&err), error_codes::INVALID_INPUT.code);
        let err = f.service.set_budget(&ceiling(f64::INFINITY)).unwrap_err();
        assert_eq!(code_of(&err), error_codes::INVALID_INPUT.code);
        let unknown = SetBudgetRequest {
            task_id: "task-none".into(),
            task_max_cost_usd: 1.0,
            ..SetBudgetRequest::default()
        };
        let err = f.service.set_budget(&unknown).unwrap_err();
        assert_eq!(code_of(&err), error_codes::TASK_NOT_FOUND.code);
    }

    #[test]
    fn a_task_that_spent_its_max_cost_is_not_dispatched_again() {
        let f = fixture();
        let limits = TaskLimits {
            max_cost_usd: Some(1.0),
            ..TaskLimits::default()
        };
        held_task(f.db(), "task-m", limits);
        let task = f.db().get_task("task-m").unwrap().unwrap();
        f.service.check_task_budget(&task).unwrap();
        f.service.set_budget(&ceiling(0.0)).unwrap();
        let err = f.service.check_task_budget(&task).unwrap_err();
        assert_eq!(code_of(&err), error_codes::BUDGET_EXCEEDED.code);
    }

    #[tokio::test]
    async fn a_budget_stop_without_a_live_container_fails_the_task_with_e300() {
        let f = fixture();
        let ids = running_task(f.db(), "task-s");
        f.db()
            .set_container_state(&ids.container_id, ContainerState::Failed)
            .unwrap();
        f.db()
            .request_budget_stop("task-s", "the global ceiling is reached")
            .unwrap();
        f.service.stop_for_budget("task-s").await.unwrap();
        let task = f.db().get_task("task-s").unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(
            task.error_code.as_deref(),
            Some(error_codes::BUDGET_EXCEEDED.code)
        );
        assert_eq!(
            task.error_message.as_deref(),
            Some("the global ceiling is reached")
        );
        // An ended task is left alone.
        f.service.stop_for_budget("task-s").await.unwrap();
        f.service.stop_for_budget("task-none").await.unwrap();
    }
}
