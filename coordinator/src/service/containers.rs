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
            // Its agent stream ended: whoever waits for a container to go looks again.
            service.inner.follower_ended.notify_waiters();
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

    /// Stops the followers (agents keep running), once the launches in flight
    /// have ended (up to 5 s: a launch cut short is the reconciler's to judge).
    pub async fn stop_followers(&self) {
        let mut launches = std::mem::take(&mut *lock(&self.inner.launches));
        let wait = async { while launches.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("launches in flight did not end in time");
            launches.detach_all();
        }
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

    /// Waits until the container is no longer listed by the backend that runs it
    /// (a local wait never lists Modal, and the reverse), or `timeout`.
    ///
    /// Between two lists it sleeps, woken early by what says the container may be
    /// gone: its agent's exit ([`Backend::exit_signal`]: locally the agent this
    /// coordinator started, or a pidfd on it) and the end of a follower's agent
    /// stream. When the exit will wake it the lists only confirm: their sleeps go
    /// from 1 s to 4 s. Else they back off from 50 ms to 500 ms locally (a list
    /// reads this machine's process table) and to 1 s on Modal (a remote call).
    pub(super) async fn wait_until_gone(&self, container_id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let kind = self.inner.backends.kind_of(container_id);
        let backend = match self.inner.backends.get(kind) {
            Ok(backend) => backend,
            Err(_) => Arc::clone(&self.inner.backend),
        };
        let mut exit = backend.exit_signal(container_id).await;
        let polling = match kind {
            crate::plan::BackendKind::Local => Duration::from_millis(500),
            _ => Duration::from_secs(1),
        };
        let first = Duration::from_millis(50);
        let mut pause = if exit.is_some() {
            Duration::from_secs(1)
        } else {
            first
        };
        loop {
            let follower_ended = self.inner.follower_ended.notified();
            tokio::pin!(follower_ended);
            follower_ended.as_mut().enable();
            match backend.list().await {
                Ok(list) if !list.iter().any(|c| c.container_id == container_id) => return true,
                Ok(_) => {}
                Err(err) => tracing::warn!("listing containers failed: {err:#}"),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let longest = if exit.is_some() {
                Duration::from_secs(4)
            } else {
                polling
            };
            let nap = tokio::time::sleep(pause.min(deadline - now));
            let exited = async {
                match exit.as_mut() {
                    Some(signal) => signal.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = nap => pause = (pause * 2).min(longest),
                _ = exited => {
                    // Gone, or about to be (a wrapper such as bwrap ends just after):
                    // confirmed by the next list, then polled from the start.
                    exit = None;
                    pause = first;
                }
                _ = follower_ended => {}
            }
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

    /// A backend whose one container is a real child process (`sleep`), listed while
    /// it runs; it counts its lists, and says when the child exits if told to.
    struct ChildBackend {
        alive: tokio::sync::watch::Receiver<bool>,
        lists: std::sync::atomic::AtomicUsize,
        signals_exit: bool,
    }

    const CHILD: &str = "ctr-child";

    impl ChildBackend {
        fn start(seconds: &str, signals_exit: bool) -> Arc<Self> {
            let mut child = tokio::process::Command::new("sleep")
                .arg(seconds)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let (tx, alive) = tokio::sync::watch::channel(true);
            tokio::spawn(async move {
                let _ = child.wait().await;
                tx.send_replace(false);
            });
            Arc::new(Self {
                alive,
                lists: std::sync::atomic::AtomicUsize::new(0),
                signals_exit,
            })
        }

        fn lists(&self) -> usize {
            self.lists.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl Backend for ChildBackend {
        fn name(&self) -> &'static str {
            "local"
        }
        async fn launch(&self, _: &LaunchRequest) -> Result<crate::backend::ContainerHandle> {
            anyhow::bail!("nothing is launched here")
        }
        async fn list(&self) -> Result<Vec<crate::reconcile::ObservedContainer>> {
            self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(if *self.alive.borrow() {
                vec![crate::reconcile::ObservedContainer {
                    container_id: CHILD.into(),
                    session_id: String::new(),
                    pid: None,
                    endpoint: None,
                    coordinator_label: String::new(),
                }]
            } else {
                Vec::new()
            })
        }
        async fn terminate(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn read_journal(
            &self,
            _: &str,
            _: &str,
            _: u64,
        ) -> Result<Vec<parhelia_proto::Event>> {
            Ok(Vec::new())
        }
        async fn endpoint(&self, _: &str) -> Result<crate::backend::Endpoint> {
            anyhow::bail!("no agent here")
        }
        async fn exit_signal(&self, _: &str) -> Option<crate::backend::ExitSignal> {
            let mut alive = self.alive.clone();
            self.signals_exit.then(|| -> crate::backend::ExitSignal {
                Box::pin(async move {
                    let _ = alive.wait_for(|a| !*a).await;
                })
            })
        }
    }

    fn service_over(backend: Arc<ChildBackend>) -> (CoordinatorService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("parhelia.db")).unwrap());
        let state = StateDir::new(
            dir.path().to_path_buf(),
            crate::state_dir::StateDirSource::Explicit,
        );
        (CoordinatorService::new(state, db, backend), dir)
    }

    /// Waiting for a container to go is woken by its agent's exit: one list
    /// before, one to confirm (not a list every 50 ms: about 20 in that second).
    #[tokio::test]
    async fn waiting_for_a_container_wakes_on_its_exit_and_lists_it_a_bounded_number_of_times() {
        let backend = ChildBackend::start("1", true);
        let (service, _dir) = service_over(Arc::clone(&backend));
        assert!(
            service
                .wait_until_gone(CHILD, Duration::from_secs(30))
                .await
        );
        assert!(backend.lists() <= 3, "{} lists", backend.lists());
    }

    /// Without an exit signal the polls back off: a handful of lists in the child's
    /// second, and a container that outlives the wait is reported as still there.
    #[tokio::test]
    async fn without_an_exit_signal_the_polls_back_off() {
        let backend = ChildBackend::start("1", false);
        let (service, _dir) = service_over(Arc::clone(&backend));
        assert!(
            service
                .wait_until_gone(CHILD, Duration::from_secs(30))
                .await
        );
        let lists = backend.lists();
        assert!((2..=8).contains(&lists), "{lists} lists");

        let backend = ChildBackend::start("30", true);
        let (service, _dir) = service_over(Arc::clone(&backend));
        assert!(
            !service
                .wait_until_gone(CHILD, Duration::from_millis(300))
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
