//! Modal operations: rebuilding lost rows from the volume's specs, a deleted
//! task's data on the volume, and the usage and storage metering passes.

use super::*;

impl CoordinatorService {
    /// After a rollback (E514): re-creates the rows of ended Modal containers the
    /// database lost, from their specs on the volume (see `db/rebuild.rs`); the
    /// reconciler then settles them from their journals. Reported as a
    /// `database_rebuilt` coordinator event; a volume that cannot be read is
    /// reported too, and nothing is invented.
    pub async fn rebuild_modal_from_specs(&self) {
        let db = &self.inner.db;
        let result = async {
            let modal = self.inner.backends.modal()?;
            let dir = modal
                .scratch_dir()?
                .join(format!("rebuild-{}", crate::ids::random_hex(4)));
            let copied = modal.copy_specs(&dir).await;
            let rebuilt = copied.and_then(|_| db.rebuild_from_specs_on(&dir, "modal"));
            let _ = std::fs::remove_dir_all(&dir);
            rebuilt
        }
        .await;
        let (level, message, details) = match &result {
            Ok(ids) if ids.is_empty() => return,
            Ok(ids) => (
                "warning",
                format!(
                    "{}: re-created {} Modal container(s) from their specs on the volume, whose journals now settle them",
                    error_codes::DATABASE_ROLLED_BACK.code,
                    ids.len()
                ),
                serde_json::json!({ "backend": "modal", "rebuilt_from_specs": ids }),
            ),
            Err(err) => (
                "error",
                format!(
                    "{}: the Modal volume could not be read to rebuild what the database lost: {err:#}",
                    error_codes::DATABASE_ROLLED_BACK.code
                ),
                serde_json::json!({ "backend": "modal", "error": format!("{err:#}") }),
            ),
        };
        tracing::warn!("{message}");
        db.note(
            crate::db::NewCoordinatorEvent::new("database_rebuilt", level, message)
                .details(details),
        );
    }

    /// `task delete` on a task with Modal sessions: their directories leave
    /// the volume, and their storage is charged up to now and stops. When
    /// the volume cannot be reached the data stays, and so does its meter
    /// (a later pass keeps charging what is still there).
    pub(super) async fn delete_remote_session_data(&self, task_id: &str) {
        let db = &self.inner.db;
        // A session no pass has measured yet still has data there.
        let _ = db.start_storage_meters(crate::storage::BACKEND);
        let Ok(meters) = db.active_storage_meters() else {
            return;
        };
        let mine: Vec<_> = meters
            .into_iter()
            .filter(|m| m.task_id == task_id)
            .collect();
        if mine.is_empty() {
            return;
        }
        let modal = match self.inner.backends.modal() {
            Ok(modal) => modal,
            Err(err) => {
                tracing::warn!(%task_id, "cannot remove the task's data from the Modal volume: {}", err.message);
                return;
            }
        };
        let rate = self.inner.config.rates.storage_gib_usd_per_month;
        for m in mine {
            match modal.remove_session_data(&m.session_id).await {
                Ok(_) => {
                    if let Err(err) =
                        crate::storage::data_deleted(db, &m.session_id, rate, crate::ids::now_ms())
                    {
                        tracing::warn!(session_id = %m.session_id, "stopping its storage meter: {err:#}");
                    }
                }
                Err(err) => tracing::warn!(
                    session_id = %m.session_id,
                    "its data stays on the Modal volume (and is charged): {}",
                    err.message
                ),
            }
        }
    }

    /// One usage pass (`crate::usage`): ended Modal containers' compute
    /// reconciled with Modal's own figures. Only a database query (the
    /// bridge is not started) while no ended Modal container is due.
    pub async fn reconcile_usage(&self) -> Result<crate::usage::PassSummary> {
        let policy = crate::usage::Policy::from_config(&self.inner.config.modal);
        let now = crate::ids::now_ms();
        if let Err(err) = self.meter_storage(now).await {
            tracing::warn!("storage metering pass failed: {err:#}");
        }
        let due = crate::usage::due(&self.inner.db, &policy, now)?;
        if due.is_empty() {
            return Ok(Default::default());
        }
        let modal = self.inner.backends.modal()?;
        crate::usage::reconcile(&self.inner.db, modal.as_ref(), due, &policy, now).await
    }

    /// One storage pass (`crate::storage`): Modal sessions' data on the
    /// volume charged for the time since the last pass. Only a database
    /// query (the bridge is not started) while no session has data there.
    pub async fn meter_storage(&self, now: i64) -> Result<crate::storage::PassSummary> {
        if !crate::storage::due(&self.inner.db)? {
            return Ok(Default::default());
        }
        let modal = self.inner.backends.modal()?;
        crate::storage::meter(
            &self.inner.db,
            modal.as_ref(),
            self.inner.config.rates.storage_gib_usd_per_month,
            now,
        )
        .await
    }

    /// The coordinator's Modal backend (built on first use).
    pub fn modal_backend(&self) -> Result<Arc<crate::backend::modal::ModalBackend>> {
        Ok(self.inner.backends.modal()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fixture, running_task};

    /// With no Modal session anywhere, the metering passes only ask the
    /// database: no bridge is started (this fixture has no Modal backend at
    /// all, so starting one would fail).
    #[tokio::test]
    async fn metering_passes_with_nothing_on_modal_start_no_bridge() {
        let f = fixture();
        running_task(f.db(), "task-local");
        let storage = f.service.meter_storage(crate::ids::now_ms()).await.unwrap();
        assert_eq!(
            format!("{storage:?}"),
            format!("{:?}", crate::storage::PassSummary::default())
        );
        let usage = f.service.reconcile_usage().await.unwrap();
        assert_eq!(
            format!("{usage:?}"),
            format!("{:?}", crate::usage::PassSummary::default())
        );
        // A deleted local task has no data on the volume to remove.
        f.service.delete_remote_session_data("task-local").await;
        assert!(f.service.modal_backend().is_err());
    }
}
