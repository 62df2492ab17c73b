//! Storage charges: what a session's data on a remote (Modal) volume costs
//! while it is held (`docs/cost.md`, "Storage").
//!
//! Basis (truthful and reproducible from the ledger alone): each pass lists
//! the session's directory on the volume (`sessions/<id>/`: its journals,
//! checkpoint store and specs) and charges the interval since the previous
//! measurement at the bytes *that* measurement found — a left Riemann sum
//! of bytes × time, exact while the size is constant, and never charging
//! data before it was seen. The first measurement starts from 0 bytes at the
//! session's first container on the volume. Each `storage` ledger row names
//! the bytes, the interval and the price. When the session's data is
//! deleted (`task delete` removes it from the volume) the last interval is
//! charged and the meter stops; data still listed keeps being charged, even
//! for a deleted task, because the provider keeps billing it.
//!
//! Local sessions live on the user's own disk: storage there is priced 0
//! and no meter runs.

use anyhow::Result;

use crate::db::Db;
use crate::error::CodedError;

/// The backend whose volumes are metered.
pub const BACKEND: &str = "modal";

/// Measures a session's bytes on its volume.
#[async_trait::async_trait]
pub trait VolumeSizes: Send + Sync {
    async fn session_bytes(&self, session_id: &str) -> Result<u64, CodedError>;
}

/// A session's directory on the volume (relative to its root).
pub fn session_prefix(session_id: &str) -> String {
    format!("sessions/{session_id}")
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassSummary {
    pub measured: usize,
    pub charged_usd: f64,
    pub stopped: usize,
    pub failed: usize,
}

impl PassSummary {
    pub fn is_empty(&self) -> bool {
        self.measured + self.stopped + self.failed == 0
    }
}

/// Whether a pass has anything to measure (meters to start or running):
/// only a database query, so the bridge is not started for nothing.
pub fn due(db: &Db) -> Result<bool> {
    db.start_storage_meters(BACKEND)?;
    Ok(!db.active_storage_meters()?.is_empty())
}

/// One pass at `now_ms`: measure every running meter and charge it at
/// `usd_per_gib_month`. A session that is deleted and whose directory is
/// empty stops its meter. A failed listing charges nothing now (the next
/// successful one charges the whole interval at the size last measured).
pub async fn meter(
    db: &Db,
    volumes: &dyn VolumeSizes,
    usd_per_gib_month: f64,
    now_ms: i64,
) -> Result<PassSummary> {
    db.start_storage_meters(BACKEND)?;
    let mut summary = PassSummary::default();
    for m in db.active_storage_meters()? {
        let bytes = match volumes.session_bytes(&m.session_id).await {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(session_id = %m.session_id, "measuring volume storage failed: {}", err.message);
                summary.failed += 1;
                continue;
            }
        };
        if let Some(charge) =
            db.record_storage_measurement(&m.session_id, now_ms, bytes, usd_per_gib_month)?
        {
            summary.measured += 1;
            summary.charged_usd += charge.amount_usd;
        }
        if bytes == 0
            && !db.session_exists(&m.session_id)?
            && db.stop_storage_meter(&m.session_id, now_ms)?
        {
            summary.stopped += 1;
        }
    }
    Ok(summary)
}

/// The session's data was removed from the volume at `now_ms`: charge the
/// last interval at the size last measured and stop the meter.
pub fn data_deleted(db: &Db, session_id: &str, usd_per_gib_month: f64, now_ms: i64) -> Result<()> {
    db.record_storage_measurement(session_id, now_ms, 0, usd_per_gib_month)?;
    db.stop_storage_meter(session_id, now_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::db::{ContainerRef, NewLaunch, SpendScope};
    use crate::error_codes;
    use crate::ids::SessionSecret;

    const GIB: u64 = 1 << 30;
    const DAY_MS: i64 = 86_400_000;

    /// Bytes by session; a missing session is an unreachable volume.
    struct Fake(Mutex<HashMap<String, u64>>);

    impl Fake {
        fn set(&self, session: &str, bytes: Option<u64>) {
            let mut map = self.0.lock().unwrap();
            match bytes {
                Some(b) => map.insert(session.to_string(), b),
                None => map.remove(session),
            };
        }
    }

    #[async_trait::async_trait]
    impl VolumeSizes for Fake {
        async fn session_bytes(&self, session_id: &str) -> Result<u64, CodedError> {
            self.0
                .lock()
                .unwrap()
                .get(session_id)
                .copied()
                .ok_or_else(|| {
                    CodedError::new(error_codes::MODAL_OBJECT_NOT_FOUND, "volume unreachable")
                })
        }
    }

    fn launch(db: &Db, n: u32, backend: &str) -> ContainerRef {
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
            backend: backend.into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            secret: SessionSecret::from_stored("s3cret".into()),
            workspace_dir: "/w".into(),
            volume_dir: "/v".into(),
        })
        .unwrap();
        ids
    }

    fn storage_rows(db: &Db) -> Vec<(String, f64, f64)> {
        db.ledger_entries(i64::MIN)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "storage")
            .map(|e| (e.task_id, e.amount_usd, e.seconds))
            .collect()
    }

    #[tokio::test]
    async fn modal_data_is_charged_by_size_and_time_until_it_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("s.db")).unwrap();
        let modal = launch(&db, 1, "modal");
        let local = launch(&db, 2, "local");
        let fake = Fake(Mutex::new(HashMap::new()));
        fake.set(&modal.session_id, Some(GIB));
        fake.set(&local.session_id, Some(50 * GIB));

        // Local sessions are the user's own disk: no meter, no charge.
        assert!(due(&db).unwrap());
        let meters = db.active_storage_meters().unwrap();
        assert_eq!(meters.len(), 1);
        assert_eq!(meters[0].session_id, modal.session_id);
        let t0 = meters[0].started_at_ms;

        // The first measurement charges nothing: the volume held 0 bytes
        // of the session when it started.
        let s = meter(&db, &fake, 0.20, t0 + DAY_MS).await.unwrap();
        assert_eq!((s.measured, s.charged_usd), (1, 0.0));
        // 1 GiB for 15 days at $0.20/GiB-month (30 days) = $0.10.
        let s = meter(&db, &fake, 0.20, t0 + 16 * DAY_MS).await.unwrap();
        assert!((s.charged_usd - 0.10).abs() < 1e-12, "{s:?}");
        // An unreachable volume charges nothing now…
        fake.set(&modal.session_id, None);
        let s = meter(&db, &fake, 0.20, t0 + 31 * DAY_MS).await.unwrap();
        assert_eq!((s.failed, s.charged_usd), (1, 0.0));
        // …and the next listing charges the whole interval at the size
        // last measured (1 GiB × 30 days), then the new size holds.
        fake.set(&modal.session_id, Some(2 * GIB));
        let s = meter(&db, &fake, 0.20, t0 + 46 * DAY_MS).await.unwrap();
        assert!((s.charged_usd - 0.20).abs() < 1e-12, "{s:?}");

        // A clock that went back charges nothing, never a refund.
        let s = meter(&db, &fake, 0.20, t0 + 40 * DAY_MS).await.unwrap();
        assert_eq!(s.charged_usd, 0.0);
        assert!(storage_rows(&db).iter().all(|(_, usd, _)| *usd >= 0.0));

        // The task's cost includes its storage.
        let spend = db.spend(SpendScope::Task(&modal.task_id)).unwrap();
        assert!((spend.storage_usd - 0.30).abs() < 1e-12, "{spend:?}");
        assert!((spend.cost_usd - 0.30).abs() < 1e-12);
        assert_eq!(
            db.spend(SpendScope::Task(&local.task_id)).unwrap().cost_usd,
            0.0
        );

        // `task delete` removes the data: the last interval (2 GiB × 15 days
        // from t0+46d) is charged and the meter stops.
        db.set_container_state(&modal.container_id, crate::db::ContainerState::Terminated)
            .unwrap();
        data_deleted(&db, &modal.session_id, 0.20, t0 + 61 * DAY_MS).unwrap();
        assert!(db.active_storage_meters().unwrap().is_empty());
        let total: f64 = storage_rows(&db).iter().map(|r| r.1).sum();
        assert!((total - 0.50).abs() < 1e-12, "{:?}", storage_rows(&db));
        let s = meter(&db, &fake, 0.20, t0 + 90 * DAY_MS).await.unwrap();
        assert!(
            s.is_empty(),
            "nothing is metered after the data is gone: {s:?}"
        );
        assert!((storage_rows(&db).iter().map(|r| r.1).sum::<f64>() - 0.50).abs() < 1e-12);
    }

    #[tokio::test]
    async fn a_deleted_task_whose_data_is_still_listed_keeps_being_charged() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("s.db")).unwrap();
        let modal = launch(&db, 1, "modal");
        let fake = Fake(Mutex::new(HashMap::new()));
        fake.set(&modal.session_id, Some(GIB));
        assert!(due(&db).unwrap());
        let t0 = db.active_storage_meters().unwrap()[0].started_at_ms;
        meter(&db, &fake, 0.20, t0 + DAY_MS).await.unwrap();
        // The rows go (as `task delete` does, the volume unreachable)…
        db.set_container_state(&modal.container_id, crate::db::ContainerState::Terminated)
            .unwrap();
        db.transition_task(
            &modal.task_id,
            crate::task_state::TaskStatus::Cancelled,
            &Default::default(),
        )
        .unwrap();
        db.delete_task(&modal.task_id).unwrap();
        // …but the volume still holds the data: the provider bills it, so do we.
        let s = meter(&db, &fake, 0.20, t0 + 31 * DAY_MS).await.unwrap();
        assert!((s.charged_usd - 0.20).abs() < 1e-12, "{s:?}");
        // Once it is gone from the volume, the meter stops.
        fake.set(&modal.session_id, Some(0));
        let s = meter(&db, &fake, 0.20, t0 + 32 * DAY_MS).await.unwrap();
        assert_eq!(s.stopped, 1);
        assert!(!due(&db).unwrap());
    }
}
