//! Containers and their events: which ones the coordinator attends, their
//! followers (event ingestion), waiting for one to end, and `container terminate`.

use super::*;

impl CoordinatorService {
    /// Containers the coordinator is launching or following right now.
    pub fn attended(&self) -> BTreeSet<String> {
        lock(&self.inner.attended).clone()
    }

    pub(super) fn attend(&self, container_id: &str) {
        lock(&self.inner.attended).insert(container_id.to_string());
    }

    pub(super) fn unattend(&self, container_id: &str) {
        lock(&self.inner.attended).remove(container_id);
    }

    /// Starts following a container's events (once at a time per container).
    pub async fn follow(&self, target: ContainerRef) {
        let ctx = self.inner.ingest.clone();
        let mut followers = self.inner.followers.lock().await;
        // Forget followers that are done, so the set does not grow forever.
        while followers.try_join_next().is_some() {}
        self.attend(&target.container_id);
        let service = self.clone();
        followers.spawn(async move {
            let container_id = target.container_id.clone();
            follow_container(ctx, target).await;
            service.unattend(&container_id);
        });
    }

    /// Re-attaches to every container whose task is still running.
    pub async fn reattach(&self) -> Result<usize> {
        let containers = self.inner.db.containers_to_follow()?;
        let n = containers.len();
        for c in containers {
            tracing::info!(container_id = %c.id, task_id = %c.task_id, "re-attaching");
            self.follow(ContainerRef {
                container_id: c.id,
                session_id: c.session_id,
                task_id: c.task_id,
            })
            .await;
        }
        Ok(n)
    }

    /// Stops the followers (agents keep running).
    pub async fn stop_followers(&self) {
        self.request_shutdown();
        let mut followers = self.inner.followers.lock().await;
        let wait = async { while followers.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("followers did not stop in time");
        }
    }

    /// How long a stopping agent may take (see `Config::policy`).
    pub(super) fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.policy("").stop_timeout_ms as u64)
    }

    /// Polls the backend until the container is no longer listed.
    ///
    /// Asks only the backend that runs the container (a local wait never lists
    /// Modal, and the reverse): a local list reads this machine, every 50 ms; a
    /// Modal list is a remote call, so its polls back off from 50 ms to 1 s.
    pub(super) async fn wait_until_gone(&self, container_id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let kind = self.inner.backends.kind_of(container_id);
        let backend = match self.inner.backends.get(kind) {
            Ok(backend) => backend,
            Err(_) => Arc::clone(&self.inner.backend),
        };
        let longest = match kind {
            crate::plan::BackendKind::Local => Duration::from_millis(50),
            _ => Duration::from_secs(1),
        };
        let mut pause = Duration::from_millis(50);
        loop {
            match backend.list().await {
                Ok(list) if !list.iter().any(|c| c.container_id == container_id) => return true,
                Ok(_) => {}
                Err(err) => tracing::warn!("listing containers failed: {err:#}"),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(longest);
        }
    }

    /// `container terminate`: SIGTERM one of our containers. A session it
    /// runs ends `interrupted` (resumable); an orphan just goes.
    pub async fn terminate_container(
        &self,
        container_id: &str,
    ) -> Result<TerminateContainerResponse> {
        let db = &self.inner.db;
        let listed = self.inner.backend.list().await?;
        let running = listed.iter().find(|c| c.container_id == container_id);
        let record = db.get_container(container_id)?;
        let orphan = db.get_orphan(container_id)?;
        if record.is_none() && orphan.is_none() && running.is_none() {
            return Err(coded(
                error_codes::CONTAINER_NOT_FOUND,
                format!("container not found: {container_id}"),
            ));
        }
        let mut response = TerminateContainerResponse {
            container_id: container_id.to_string(),
            known: record.is_some(),
            state: String::new(),
        };
        match &record {
            Some(c) => db.request_container_stop(&c.id)?,
            None => {
                if let Some(observed) = running {
                    db.upsert_orphan(observed)?;
                }
                db.orphan_terminate_requested(container_id)?;
            }
        }
        if running.is_some() {
            self.inner.backend.terminate(container_id).await?;
            db.note(NewCoordinatorEvent {
                task_id: record.as_ref().map(|c| c.task_id.clone()),
                session_id: record.as_ref().map(|c| c.session_id.clone()),
                ..NewCoordinatorEvent::new(
                    "container_terminated",
                    "warning",
                    format!("{container_id}: terminated on request (SIGTERM)"),
                )
                .container(container_id)
            });
        } else if let Some(c) = &record
            && c.state == ContainerState::Stopping
        {
            // Already gone: nothing to signal; the record can say so.
            db.set_container_state(container_id, ContainerState::Terminated)?;
        }
        response.state = match db.get_container(container_id)? {
            Some(c) => c.state.to_string(),
            None if running.is_some() => "terminating".into(),
            None => "gone".into(),
        };
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code_of, fixture, running_task};
    use super::*;

    #[tokio::test]
    async fn terminating_an_unknown_container_is_refused() {
        let f = fixture();
        let err = f
            .service
            .terminate_container("c-unknown")
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), error_codes::CONTAINER_NOT_FOUND.code);
    }

    #[tokio::test]
    async fn a_stopping_container_that_is_gone_is_recorded_terminated() {
        let f = fixture();
        let ids = running_task(f.db(), "task-t");
        f.db()
            .set_container_state(&ids.container_id, ContainerState::Stopping)
            .unwrap();
        let response = f
            .service
            .terminate_container(&ids.container_id)
            .await
            .unwrap();
        assert!(response.known);
        assert_eq!(response.state, ContainerState::Terminated.to_string());
        // Not listed by the backend: gone at once.
        assert!(
            f.service
                .wait_until_gone(&ids.container_id, Duration::from_secs(5))
                .await
        );
    }

    #[test]
    fn attended_containers_are_remembered_until_unattended() {
        let f = fixture();
        f.service.attend("c-1");
        f.service.attend("c-2");
        f.service.unattend("c-1");
        assert_eq!(f.service.attended(), BTreeSet::from(["c-2".to_string()]));
    }
}
