//! Reconciling the compute cost of Modal sandboxes with Modal's own usage
//! figures.
//!
//! While a sandbox runs, the ledger charges its compute per heartbeat at the
//! `[rates]` table (`crate::budget`): that is what the watchdog enforces.
//! Modal bills what it measured (CPU and memory at max(request, usage),
//! sampled, per second, at the workspace's actual rates), and reports it for
//! a sandbox through `sandbox.stats` (`sb._experimental_stats()`), minutes
//! late. Once a sandbox has ended and its figures have settled, one `compute`
//! row of Modal's cost − what the heartbeats charged makes the container's
//! compute total equal Modal's figure (the row may be negative).
//!
//! The pass ([`reconcile`]) runs in the coordinator every
//! `modal.usage_poll_seconds`, over ended containers (`terminated`, `lost`,
//! `failed`) with a sandbox id and no `usage_reconciled_at_ms`, each at least
//! `modal.usage_settle_seconds` after it ended. What to do with one container
//! is [`decide`] (pure). When Modal has no cost yet (stats unavailable, the
//! sandbox not found, `cost` null) the container is retried on later passes,
//! and given up [`GIVE_UP_AFTER_MS`] after it ended: it is marked reconciled
//! without a row (its heartbeat charges stand) and a `usage_unreported`
//! warning is recorded. The database work is in `db/ledger.rs`.

use anyhow::Result;
use async_trait::async_trait;
use serde::Serialize;

use crate::backend::modal::{ModalBackend, SandboxStats};
use crate::budget::usd;
use crate::config::ModalConfig;
use crate::db::{Db, NewCoordinatorEvent, UsagePending};
use crate::error::CodedError;
use crate::error_codes;

/// How long after a container ended Modal may take to report its usage
/// before the coordinator stops asking.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3_600_000;

/// The backend whose containers are reconciled, and the `ledger.details` key
/// prefix (`modal_cost_usd`).
pub const PROVIDER: &str = "modal";

/// When to reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Wait this long after a container ended before asking (Modal's
    /// figures for a sandbox still change shortly after it finished).
    pub settle_ms: i64,
    /// Stop asking this long after it ended.
    pub give_up_after_ms: i64,
}

impl Policy {
    pub fn from_config(config: &ModalConfig) -> Self {
        Policy {
            settle_ms: config.usage_settle_seconds as i64 * 1000,
            give_up_after_ms: GIVE_UP_AFTER_MS,
        }
    }

    /// Whether a container that ended at `ended_at_ms` is worth asking about.
    pub fn due(&self, ended_at_ms: i64, now_ms: i64) -> bool {
        now_ms - ended_at_ms >= self.settle_ms
    }
}

/// What to do with one ended container.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Too soon after its end: Modal's figures may still grow.
    Wait,
    /// Record one `compute` row of this amount (Modal's cost − charged;
    /// negative when the heartbeats charged more than Modal billed).
    Charge { amount_usd: f64 },
    /// Modal has no cost yet: ask again on a later pass.
    Retry,
    /// Modal never reported a cost: stop asking, keep the heartbeat charges.
    GiveUp,
}

/// The decision for one container: `cost_usd` is Modal's figure (`None`:
/// not reported, unavailable or unreadable), `charged_usd` what the ledger
/// holds for the container's compute.
pub fn decide(
    cost_usd: Option<f64>,
    charged_usd: f64,
    ended_at_ms: i64,
    now_ms: i64,
    policy: &Policy,
) -> Action {
    if !policy.due(ended_at_ms, now_ms) {
        return Action::Wait;
    }
    match cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
        Some(cost) => Action::Charge {
            amount_usd: cost - charged_usd,
        },
        None if now_ms - ended_at_ms >= policy.give_up_after_ms => Action::GiveUp,
        None => Action::Retry,
    }
}

/// Where the figures come from (Modal; a fake in tests).
#[async_trait]
pub trait UsageSource: Send + Sync {
    async fn sandbox_stats(&self, sandbox_id: &str) -> Result<SandboxStats, CodedError>;
}

#[async_trait]
impl UsageSource for ModalBackend {
    async fn sandbox_stats(&self, sandbox_id: &str) -> Result<SandboxStats, CodedError> {
        ModalBackend::sandbox_stats(self, sandbox_id).await
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassSummary {
    pub reconciled: usize,
    pub given_up: usize,
    /// Asked about, no cost yet.
    pub retrying: usize,
}

impl PassSummary {
    pub fn is_empty(&self) -> bool {
        self.reconciled + self.given_up + self.retrying == 0
    }
}

/// The containers a pass should ask about (a database query; no bridge).
pub fn due(db: &Db, policy: &Policy, now_ms: i64) -> Result<Vec<UsagePending>> {
    Ok(db
        .containers_awaiting_usage(PROVIDER)?
        .into_iter()
        .filter(|p| policy.due(p.ended_at_ms, now_ms))
        .collect())
}

/// One pass over `due` containers. A failure of the bridge itself (not a
/// sandbox Modal does not know) ends the pass early; the rest wait for the
/// next one.
pub async fn reconcile(
    db: &Db,
    source: &dyn UsageSource,
    due: Vec<UsagePending>,
    policy: &Policy,
    now_ms: i64,
) -> Result<PassSummary> {
    let mut summary = PassSummary::default();
    for pending in due {
        let (cost, why, bridge_failed) = match source.sandbox_stats(&pending.remote_id).await {
            Ok(stats) => {
                let why = match (&stats.reason, stats.available) {
                    (Some(reason), _) => reason.clone(),
                    (None, true) => "no cost recorded yet".to_string(),
                    (None, false) => "statistics unavailable".to_string(),
                };
                (stats.cost_usd, why, false)
            }
            Err(err) => {
                let not_found = err.code == error_codes::MODAL_OBJECT_NOT_FOUND;
                if !not_found {
                    tracing::warn!(sandbox_id = %pending.remote_id, "reading Modal usage failed: {}", err.message);
                }
                (
                    None,
                    format!("{}: {}", err.code.code, err.message),
                    !not_found,
                )
            }
        };
        let target = &pending.target;
        let charged = db.container_compute_usd(&target.container_id)?;
        match decide(cost, charged, pending.ended_at_ms, now_ms, policy) {
            Action::Charge { .. } => {
                let cost = cost.expect("a charge has a cost");
                if let Some(done) =
                    db.reconcile_container_usage(&pending, PROVIDER, cost, now_ms)?
                {
                    summary.reconciled += 1;
                    db.note(
                        NewCoordinatorEvent::new(
                            "usage_reconciled",
                            "info",
                            format!(
                                "Modal reports {} for {} ({}); heartbeats had charged {}: {}{} recorded",
                                usd(done.provider_cost_usd),
                                target.container_id,
                                pending.remote_id,
                                usd(done.charged_usd),
                                if done.amount_usd < 0.0 { "-" } else { "+" },
                                usd(done.amount_usd.abs()),
                            ),
                        )
                        .task(&target.task_id)
                        .session(&target.session_id)
                        .container(&target.container_id)
                        .details(serde_json::json!({
                            "sandbox_id": pending.remote_id,
                            "modal_cost_usd": done.provider_cost_usd,
                            "charged_usd": done.charged_usd,
                            "amount_usd": done.amount_usd,
                        })),
                    );
                }
            }
            Action::GiveUp => {
                if db.give_up_container_usage(&target.container_id, now_ms)? {
                    summary.given_up += 1;
                    db.note(
                        NewCoordinatorEvent::new(
                            "usage_unreported",
                            "warning",
                            format!(
                                "Modal never reported usage for {} ({}) within {} h of its end ({why}); its compute stays as charged from heartbeats ({})",
                                target.container_id,
                                pending.remote_id,
                                policy.give_up_after_ms / 3_600_000,
                                usd(charged),
                            ),
                        )
                        .task(&target.task_id)
                        .session(&target.session_id)
                        .container(&target.container_id)
                        .details(serde_json::json!({
                            "sandbox_id": pending.remote_id,
                            "charged_usd": charged,
                            "reason": why,
                        })),
                    );
                }
            }
            Action::Retry | Action::Wait => {
                tracing::debug!(container_id = %target.container_id, sandbox_id = %pending.remote_id, "no Modal usage yet: {why}");
                summary.retrying += 1;
            }
        }
        if bridge_failed {
            break;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::db::{ContainerRef, ContainerState, NewLaunch};
    use crate::ids::SessionSecret;

    const MIN: i64 = 60_000;
    const POLICY: Policy = Policy {
        settle_ms: 10 * MIN,
        give_up_after_ms: GIVE_UP_AFTER_MS,
    };

    #[test]
    fn a_reported_cost_is_charged_as_the_difference() {
        let ended = 1_000 * MIN;
        assert_eq!(
            decide(Some(0.30), 0.25, ended, ended + 10 * MIN, &POLICY),
            Action::Charge {
                amount_usd: 0.30 - 0.25
            }
        );
        // Heartbeats charged more than Modal billed: a refund.
        match decide(Some(0.10), 0.25, ended, ended + 11 * MIN, &POLICY) {
            Action::Charge { amount_usd } => assert!((amount_usd + 0.15).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        // Reported late, even past the give-up time: still charged.
        assert_eq!(
            decide(
                Some(0.25),
                0.25,
                ended,
                ended + GIVE_UP_AFTER_MS + MIN,
                &POLICY
            ),
            Action::Charge { amount_usd: 0.0 }
        );
    }

    #[test]
    fn too_soon_after_the_end_waits_whatever_modal_says() {
        let ended = 1_000 * MIN;
        assert_eq!(
            decide(Some(0.3), 0.0, ended, ended + 9 * MIN, &POLICY),
            Action::Wait
        );
        assert_eq!(decide(None, 0.0, ended, ended, &POLICY), Action::Wait);
        let eager = Policy {
            settle_ms: 0,
            ..POLICY
        };
        assert_eq!(
            decide(Some(0.3), 0.0, ended, ended, &eager),
            Action::Charge { amount_usd: 0.3 }
        );
    }

    #[test]
    fn no_cost_retries_then_gives_up_a_day_after_the_end() {
        let ended = 1_000 * MIN;
        assert_eq!(
            decide(None, 0.2, ended, ended + 60 * MIN, &POLICY),
            Action::Retry
        );
        assert_eq!(
            decide(None, 0.2, ended, ended + GIVE_UP_AFTER_MS - 1, &POLICY),
            Action::Retry
        );
        assert_eq!(
            decide(None, 0.2, ended, ended + GIVE_UP_AFTER_MS, &POLICY),
            Action::GiveUp
        );
        // A nonsensical figure counts as none.
        for bogus in [f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(
                decide(Some(bogus), 0.2, ended, ended + 60 * MIN, &POLICY),
                Action::Retry
            );
        }
    }

    /// Stats by sandbox id; a missing id is Modal's `not_found`.
    struct Fake(Mutex<HashMap<String, serde_json::Value>>);

    #[async_trait]
    impl UsageSource for Fake {
        async fn sandbox_stats(&self, sandbox_id: &str) -> Result<SandboxStats, CodedError> {
            match self.0.lock().unwrap().get(sandbox_id) {
                Some(reply) => Ok(SandboxStats::from_reply(reply.clone())),
                None => Err(CodedError::new(
                    error_codes::MODAL_OBJECT_NOT_FOUND,
                    format!("Sandbox {sandbox_id} not found"),
                )),
            }
        }
    }

    fn modal_container(db: &Db, n: u32, sandbox: &str) -> ContainerRef {
        let ids = ContainerRef {
            task_id: format!("task-0000000{n}"),
            session_id: format!("sess-0000000{n}"),
            container_id: format!("ctr-0000000{n}"),
        };
        db.insert_launch(&NewLaunch {
            task_id: ids.task_id.clone(),
            session_id: ids.session_id.clone(),
            container_id: ids.container_id.clone(),
            claude_session_id: "uuid".into(),
            prompt: "p".into(),
            task_type: "generic".into(),
            backend: "modal".into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            secret: SessionSecret::from_stored("s3cret".into()),
            workspace_dir: "/w".into(),
            volume_dir: "/v".into(),
        })
        .unwrap();
        db.set_container_remote_id(&ids.container_id, Some(sandbox))
            .unwrap();
        ids
    }

    fn compute_rows(db: &Db, container_id: &str) -> Vec<f64> {
        db.ledger_entries(i64::MIN)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "compute" && e.container_id.as_deref() == Some(container_id))
            .map(|e| e.amount_usd)
            .collect()
    }

    #[tokio::test]
    async fn a_pass_reconciles_ended_containers_once_and_retries_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let policy = Policy {
            settle_ms: 0,
            ..POLICY
        };
        let a = modal_container(&db, 1, "sb-a");
        let b = modal_container(&db, 2, "sb-b");
        let running = modal_container(&db, 3, "sb-running");
        db.charge_compute(&a, 10, 0.004, 4.0, json!({})).unwrap();
        db.charge_compute(&a, 20, 0.006, 6.0, json!({})).unwrap();
        for c in [&a, &b] {
            db.set_container_state(&c.container_id, ContainerState::Terminated)
                .unwrap();
        }
        let source = Fake(Mutex::new(HashMap::from([
            (
                "sb-a".to_string(),
                json!({"available": true, "stats": {"cost": 0.0125}}),
            ),
            (
                "sb-b".to_string(),
                json!({"available": true, "stats": {"cost": null}}),
            ),
            (
                "sb-running".to_string(),
                json!({"available": true, "stats": {"cost": 1.0}}),
            ),
        ])));
        let now = crate::ids::now_ms();
        let pending = due(&db, &policy, now).unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|p| p.remote_id.as_str())
                .collect::<Vec<_>>(),
            ["sb-a", "sb-b"],
            "a running container is not reconciled"
        );
        let summary = reconcile(&db, &source, pending, &policy, now)
            .await
            .unwrap();
        assert_eq!((summary.reconciled, summary.retrying), (1, 1));
        let rows = compute_rows(&db, &a.container_id);
        assert_eq!(rows.len(), 3);
        assert!(
            (rows.iter().sum::<f64>() - 0.0125).abs() < 1e-12,
            "{rows:?}"
        );
        assert!((db.container_compute_usd(&a.container_id).unwrap() - 0.0125).abs() < 1e-12);
        let details: String = rusqlite::Connection::open(db.path())
            .unwrap()
            .query_row(
                "SELECT details FROM ledger WHERE container_id = ?1 ORDER BY id DESC LIMIT 1",
                [&a.container_id],
                |r| r.get(0),
            )
            .unwrap();
        let details: serde_json::Value = serde_json::from_str(&details).unwrap();
        assert_eq!(details["reconciled_with"], "modal");
        assert_eq!(details["modal_cost_usd"], 0.0125);
        assert_eq!(details["sandbox_id"], "sb-a");
        assert!((details["charged_usd"].as_f64().unwrap() - 0.01).abs() < 1e-12);

        // Again: a is done; b still has no cost; once it has, it is charged
        // (from nothing: its heartbeats charged nothing).
        let summary = reconcile(&db, &source, due(&db, &policy, now).unwrap(), &policy, now)
            .await
            .unwrap();
        assert_eq!((summary.reconciled, summary.retrying), (0, 1));
        source.0.lock().unwrap().insert(
            "sb-b".into(),
            json!({"available": true, "stats": {"cost": 0.5}}),
        );
        reconcile(&db, &source, due(&db, &policy, now).unwrap(), &policy, now)
            .await
            .unwrap();
        assert_eq!(compute_rows(&db, &b.container_id), [0.5]);
        assert!(due(&db, &policy, now).unwrap().is_empty());
        assert!(compute_rows(&db, &running.container_id).is_empty());
        let events = db
            .query_events(&crate::event_filter::EventFilter::default(), None)
            .unwrap();
        let reconciled = events
            .iter()
            .filter(|e| e.event_type == "usage_reconciled")
            .count();
        assert_eq!(reconciled, 2);
    }

    #[tokio::test]
    async fn a_sandbox_modal_never_reports_is_given_up_after_a_day() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let gone = modal_container(&db, 1, "sb-gone");
        db.charge_compute(&gone, 10, 0.2, 4.0, json!({})).unwrap();
        db.set_container_state(&gone.container_id, ContainerState::Lost)
            .unwrap();
        let source = Fake(Mutex::new(HashMap::new()));
        let ended = due(&db, &POLICY, i64::MAX).unwrap()[0].ended_at_ms;
        assert!(
            due(&db, &POLICY, ended + 5 * MIN).unwrap().is_empty(),
            "settling"
        );
        let soon = ended + 60 * MIN;
        let summary = reconcile(
            &db,
            &source,
            due(&db, &POLICY, soon).unwrap(),
            &POLICY,
            soon,
        )
        .await
        .unwrap();
        assert_eq!(summary.retrying, 1);
        let late = ended + GIVE_UP_AFTER_MS;
        let summary = reconcile(
            &db,
            &source,
            due(&db, &POLICY, late).unwrap(),
            &POLICY,
            late,
        )
        .await
        .unwrap();
        assert_eq!(summary.given_up, 1);
        assert!(due(&db, &POLICY, late).unwrap().is_empty());
        assert_eq!(compute_rows(&db, &gone.container_id), [0.2]);
        let events = db
            .query_events(&crate::event_filter::EventFilter::default(), None)
            .unwrap();
        let warning = events
            .iter()
            .find(|e| e.event_type == "usage_unreported")
            .expect("a usage_unreported event");
        assert!(
            warning.message.contains("never reported"),
            "{}",
            warning.message
        );
    }
}
