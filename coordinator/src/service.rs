//! The coordinator's service layer: every operation that changes something
//! (submit, dispatch, cancel, retry, delete, terminate, reconcile) is one
//! method here, called by the gRPC front end ([`crate::daemon`]) and by
//! tests. The decisions are the pure modules' ([`crate::queue`],
//! [`crate::reconcile`], [`crate::task_state`]); this layer gathers inputs
//! and carries decisions out.
//!
//! Architecture invariant: the environment a task is submitted with lives
//! only in memory (`pending_env`) until its launch; it is never stored or
//! logged. A queued task dispatched after a coordinator restart gets the
//! environment of the `task dispatch` that dispatches it, else the
//! coordinator's own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use parhelia_proto::{
    CancelTaskResponse, CheckpointSessionResponse, DeleteTasksResponse, DispatchTasksResponse,
    DispatchedTask, QueuedTask, ResumeSessionRequest, ResumeSessionResponse, RetryTaskResponse,
    SetBudgetRequest, SetBudgetResponse, SkippedCheckpoint, StopRequest, SubmitTaskRequest,
    SubmitTaskResponse, TaskFailure, TerminateContainerResponse,
};
use tokio::sync::watch;

use crate::agent_client::connect_agent;
use crate::backend::isolation;
use crate::backend::router::Backends;
use crate::backend::{Backend, LaunchRequest, Resources};
use crate::binaries::resolve_claude_bin;
use crate::budget::{self, TaskLimits};
use crate::checkpoints;
use crate::config::Config;
use crate::container_state::ContainerState;
use crate::db::{ContainerRef, Db, NewAttempt, NewCoordinatorEvent, NewTask, TaskUpdate};
use crate::error::{CodedError, coded, find_coded};
use crate::error_codes;
use crate::ids::{self, SessionSecret};
use crate::ingest::{
    ControlSignals, IngestContext, IngestSettings, catch_up_from_journal, follow_container,
};
use crate::plan::{self, LaunchIds, SessionRequest};
use crate::queue;
use crate::recovery;
use crate::state_dir::StateDir;
use crate::task_state::TaskStatus;

/// The coordinator's shared state.
#[derive(Clone)]
pub struct CoordinatorService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) state: StateDir,
    pub(crate) db: Arc<Db>,
    /// Every backend, routing each call to the container's own.
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) backends: Arc<Backends>,
    pub(crate) config: Config,
    pub(crate) coordinator_id: String,
    shutdown_tx: watch::Sender<bool>,
    ingest: IngestContext,
    pub(crate) signals: Arc<ControlSignals>,
    followers: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Containers being launched or followed right now.
    attended: Mutex<BTreeSet<String>>,
    dispatch_lock: tokio::sync::Mutex<()>,
    pub(crate) reconcile_lock: tokio::sync::Mutex<()>,
    /// Environment of tasks not launched yet (memory only).
    pending_env: Mutex<HashMap<String, HashMap<String, String>>>,
    /// The database's disk is full (`disk_guard`): nothing new is launched.
    pub(crate) disk_full: std::sync::atomic::AtomicBool,
}

/// What a dispatch pass did.
#[derive(Debug, Default)]
pub struct DispatchOutcome {
    pub dispatched: Vec<DispatchedTask>,
    pub waiting: Vec<(String, u32)>,
    pub failed: Vec<(String, CodedError)>,
}

fn as_coded(err: &anyhow::Error) -> CodedError {
    find_coded(err).cloned().unwrap_or_else(|| {
        // A write that found the disk full is named as such (E516), not E500.
        let no_space = err.chain().any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                io.kind() == std::io::ErrorKind::StorageFull
                    || io.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32)
            })
        });
        let code = if no_space {
            error_codes::DISK_FULL
        } else {
            error_codes::INFRASTRUCTURE_ERROR
        };
        CodedError::new(code, format!("{err:#}"))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CoordinatorService {
    /// A service with the default configuration.
    pub fn new(state: StateDir, db: Arc<Db>, backend: Arc<dyn Backend>) -> Self {
        Self::with_config(state, db, backend, Config::defaults())
    }

    /// A service whose only backend is `backend` (for every kind asked).
    pub fn with_config(
        state: StateDir,
        db: Arc<Db>,
        backend: Arc<dyn Backend>,
        config: Config,
    ) -> Self {
        Self::with_backends(state, db, Arc::new(Backends::single(backend)), config)
    }

    pub fn with_backends(
        state: StateDir,
        db: Arc<Db>,
        backends: Arc<Backends>,
        config: Config,
    ) -> Self {
        let backend: Arc<dyn Backend> = Arc::clone(&backends) as Arc<dyn Backend>;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let signals = Arc::new(ControlSignals::default());
        let ingest = IngestContext {
            db: Arc::clone(&db),
            backend: Arc::clone(&backend),
            shutdown: shutdown_rx,
            settings: IngestSettings::default(),
            signals: Arc::clone(&signals),
            config: Arc::new(config.clone()),
        };
        let coordinator_id = db.coordinator_id().unwrap_or_else(|err| {
            tracing::error!("cannot read the coordinator id: {err:#}");
            String::new()
        });
        Self {
            inner: Arc::new(Inner {
                state,
                db,
                backend,
                backends,
                config,
                coordinator_id,
                shutdown_tx,
                ingest,
                signals,
                followers: tokio::sync::Mutex::default(),
                attended: Mutex::default(),
                dispatch_lock: tokio::sync::Mutex::default(),
                reconcile_lock: tokio::sync::Mutex::default(),
                pending_env: Mutex::default(),
                disk_full: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// E516 while the database's disk is full: a launch now would only fail
    /// later, or eat the space kept for recording what happened.
    fn refuse_when_disk_full(&self) -> Result<(), CodedError> {
        use crate::disk_guard::{SPACE_BACK_BYTES, free_bytes};
        // The flag is at most a second old; space freed since counts at once.
        if self
            .inner
            .disk_full
            .load(std::sync::atomic::Ordering::SeqCst)
            && free_bytes(self.inner.state.root()).is_none_or(|free| free < SPACE_BACK_BYTES)
        {
            return Err(CodedError::new(
                error_codes::DISK_FULL,
                format!(
                    "the disk holding {} is full: free space, then try again",
                    self.inner.state.root().display()
                ),
            ));
        }
        Ok(())
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.inner.db
    }

    pub fn coordinator_id(&self) -> &str {
        &self.inner.coordinator_id
    }

    /// Resolves when a shutdown was requested.
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + use<> {
        let mut rx = self.inner.shutdown_tx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    pub fn request_shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    /// Containers the coordinator is launching or following right now.
    pub fn attended(&self) -> BTreeSet<String> {
        lock(&self.inner.attended).clone()
    }

    fn attend(&self, container_id: &str) {
        lock(&self.inner.attended).insert(container_id.to_string());
    }

    fn unattend(&self, container_id: &str) {
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

    /// Records a task and (unless held) dispatches it if a worker slot is
    /// free. The one path every front end uses to create tasks.
    pub async fn submit(&self, request: SubmitTaskRequest) -> Result<SubmitTaskResponse> {
        self.submit_with_limits(request, TaskLimits::default())
            .await
    }

    /// [`Self::submit`] with a budget and resources. A task to dispatch now
    /// whose estimate exceeds what the budget has left is refused (E300)
    /// before anything is recorded.
    pub async fn submit_with_limits(
        &self,
        request: SubmitTaskRequest,
        limits: TaskLimits,
    ) -> Result<SubmitTaskResponse> {
        plan::validate_prompt(&request.prompt)?;
        validate_limits(&limits, self.config())?;
        // The task's own `--set` values: parsed as `--set` is, per-task keys only (E119).
        let task_config = crate::config::task_config(self.config(), &request.config_set)?;
        let backend_kind = plan::parse_backend(&request.backend)?;
        budget::refuse_unenforced(&limits, backend_kind.as_str())?;
        self.inner.backends.get(backend_kind)?;
        if backend_kind == plan::BackendKind::Modal {
            // Nothing is recorded for a task Modal could never run: the
            // bridge must start (Python, the pinned SDK) and find a token.
            let greeting = self.inner.backends.modal()?.bridge().greeting().await?;
            if greeting.credentials == "none" {
                return Err(coded(
                    error_codes::MODAL_CREDENTIALS_MISSING,
                    "no Modal token: run `modal token new` or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET",
                ));
            }
        }
        let workspace = match request.workspace.as_str() {
            "" => None,
            path => Some(validate_workspace(Path::new(path))?),
        };
        if let Some(dir) = &workspace {
            // Before anything is recorded: no special files, and within the
            // coordinator's size limits unless the user said so (E112).
            let dir = dir.clone();
            let exclude = vec![self.inner.state.root().to_path_buf()];
            let limits = crate::backend::workspace_copy::CopyLimits::from_config(
                &task_config.workspace,
                request.allow_large_workspace,
            );
            tokio::task::spawn_blocking(move || {
                crate::backend::workspace_copy::preflight(&dir, &exclude, limits)
            })
            .await
            .map_err(|e| anyhow::anyhow!("the workspace preflight panicked: {e}"))??;
        }
        // Fail before recording anything when the launch could never work.
        self.resolve_launch(&request.env, backend_kind)?;

        let task_id = ids::new_task_id();
        let task_type = if request.task_type.is_empty() {
            "generic".to_string()
        } else {
            request.task_type.clone()
        };
        if !request.no_dispatch {
            self.check_budget_before_dispatch(
                "the task",
                &limits,
                &task_type,
                backend_kind.as_str(),
            )?;
        }
        self.inner.db.insert_task(&NewTask {
            task_id: task_id.clone(),
            prompt: request.prompt.clone(),
            task_type,
            backend: backend_kind.as_str().into(),
            workspace: workspace.map(|p| p.to_string_lossy().into_owned()),
            model: Some(request.model.clone()).filter(|m| !m.is_empty()),
            max_turns: Some(request.max_turns).filter(|n| *n > 0),
            mode: if request.interactive {
                "interactive"
            } else {
                "headless"
            }
            .into(),
            dispatch: !request.no_dispatch,
            limits,
            allow_large_workspace: request.allow_large_workspace,
            no_user_config: request.no_user_config,
            config_set: request.config_set.clone(),
        })?;
        lock(&self.inner.pending_env).insert(task_id.clone(), request.env.clone());
        tracing::info!(%task_id, held = request.no_dispatch, "task recorded");
        self.inner.db.note(
            NewCoordinatorEvent::new(
                "task_created",
                "info",
                format!(
                    "{task_id} created{}",
                    if request.no_dispatch {
                        " (held: dispatch with `parhelia task dispatch`)"
                    } else {
                        ""
                    }
                ),
            )
            .task(&task_id),
        );
        let mut response = SubmitTaskResponse {
            task_id: task_id.clone(),
            ..SubmitTaskResponse::default()
        };
        if request.no_dispatch {
            response.held = true;
            return Ok(response);
        }
        let outcome = self.dispatch_pending().await?;
        self.fill_placement(
            &task_id,
            &outcome,
            |session, container, queued, position| {
                response.session_id = session;
                response.container_id = container;
                response.queued = queued;
                response.queue_position = position;
            },
        )?;
        Ok(response)
    }

    /// Where a dispatch pass left `task_id`; its launch error if it failed.
    fn fill_placement(
        &self,
        task_id: &str,
        outcome: &DispatchOutcome,
        mut fill: impl FnMut(String, String, bool, u32),
    ) -> Result<()> {
        if let Some(d) = outcome.dispatched.iter().find(|d| d.task_id == task_id) {
            fill(d.session_id.clone(), d.container_id.clone(), false, 0);
        } else if let Some((_, err)) = outcome.failed.iter().find(|(id, _)| id == task_id) {
            return Err(CodedError::new(
                err.code,
                format!("task {task_id} failed to launch: {}", err.message),
            )
            .into());
        } else if let Some((_, position)) = outcome.waiting.iter().find(|(id, _)| id == task_id) {
            fill(String::new(), String::new(), true, *position);
        }
        Ok(())
    }

    /// `task dispatch`: queues the named (or all held) pending tasks and
    /// runs a dispatch pass. With `dry_run`, reports what a pass would do.
    pub async fn dispatch_tasks(
        &self,
        task_ids: &[String],
        all: bool,
        dry_run: bool,
        env: &HashMap<String, String>,
    ) -> Result<DispatchTasksResponse> {
        let db = &self.inner.db;
        let mut wanted: Vec<String> = task_ids.to_vec();
        if all {
            wanted.extend(db.held_tasks()?);
        }
        for id in task_ids {
            let task = db.get_task(id)?.ok_or_else(|| {
                coded(error_codes::TASK_NOT_FOUND, format!("task not found: {id}"))
            })?;
            if task.status != TaskStatus::Pending {
                return Err(coded(
                    error_codes::ILLEGAL_TRANSITION,
                    format!(
                        "task {id} is {}; only pending tasks can be dispatched",
                        task.status
                    ),
                ));
            }
        }
        let max = self.inner.config.orchestrator.max_concurrent_workers;
        let running = db.count_tasks_in(TaskStatus::Running)? as u32;
        if dry_run {
            let mut queued = db.queued_tasks()?;
            let now = ids::now_ms();
            for id in &wanted {
                if !queued.iter().any(|q| &q.task_id == id)
                    && let Some(task) = db.get_task(id)?
                {
                    queued.push(queue::QueuedTask {
                        task_id: id.clone(),
                        dispatch_requested_at_ms: now,
                        created_at_ms: task.created_at_ms,
                    });
                }
            }
            let plan = queue::plan_dispatch(&queued, running as u64, max);
            return Ok(DispatchTasksResponse {
                dispatched: plan
                    .dispatch_now
                    .into_iter()
                    .map(|task_id| DispatchedTask {
                        task_id,
                        ..DispatchedTask::default()
                    })
                    .collect(),
                queued: plan
                    .waiting
                    .into_iter()
                    .map(|(task_id, position)| QueuedTask { task_id, position })
                    .collect(),
                failed: Vec::new(),
                running,
                max_concurrent_workers: max as u32,
            });
        }
        if !env.is_empty() {
            let mut pending = lock(&self.inner.pending_env);
            for id in &wanted {
                pending.insert(id.clone(), env.clone());
            }
        }
        db.request_dispatch(&wanted)?;
        let outcome = self.dispatch_pending().await?;
        let running = db.count_tasks_in(TaskStatus::Running)? as u32;
        Ok(DispatchTasksResponse {
            dispatched: outcome.dispatched,
            queued: outcome
                .waiting
                .into_iter()
                .map(|(task_id, position)| QueuedTask { task_id, position })
                .collect(),
            failed: outcome
                .failed
                .into_iter()
                .map(|(task_id, err)| TaskFailure {
                    task_id,
                    error_code: err.code.code.to_string(),
                    message: err.message,
                })
                .collect(),
            running,
            max_concurrent_workers: max as u32,
        })
    }

    /// One dispatch pass: queued tasks, oldest request first, while fewer
    /// than `max_concurrent_workers` tasks run. Passes never overlap.
    pub async fn dispatch_pending(&self) -> Result<DispatchOutcome> {
        let _guard = self.inner.dispatch_lock.lock().await;
        let db = &self.inner.db;
        let running = db.count_tasks_in(TaskStatus::Running)?;
        let queued = db.queued_tasks()?;
        let plan = queue::plan_dispatch(
            &queued,
            running,
            self.inner.config.orchestrator.max_concurrent_workers,
        );
        let mut outcome = DispatchOutcome {
            waiting: plan.waiting,
            ..DispatchOutcome::default()
        };
        for task_id in plan.dispatch_now {
            match self.launch_task(&task_id).await {
                Ok(Some(dispatched)) => outcome.dispatched.push(dispatched),
                Ok(None) => {}
                Err(err) => outcome.failed.push((task_id, as_coded(&err))),
            }
        }
        Ok(outcome)
    }

    /// Everything a launch needs from the environment: Claude Code, the
    /// agent, isolation, and the agent's environment.
    fn resolve_launch(
        &self,
        env: &HashMap<String, String>,
        kind: plan::BackendKind,
    ) -> Result<ResolvedLaunch> {
        if kind == plan::BackendKind::Modal {
            // Claude Code and the agent are the image's; the sandbox is the isolation.
            return Ok(ResolvedLaunch {
                claude_bin: self.inner.config.modal.claude_path.clone(),
                agent_bin: None,
                isolation: isolation::Isolation::None,
                agent_env: plan::request_env(env, std::iter::empty()),
            });
        }
        // Everything that shapes what runs on this machine (Claude Code's binary, the
        // agent's, PATH, isolation) is the coordinator's own: its environment and its
        // configuration, never a request's. A request only brings what Claude Code
        // needs to reach its model (see `plan::request_env`).
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let path_var = std::env::var_os("PATH");
        let claude_override = std::env::var_os(plan::CLAUDE_BIN_ENV).filter(|v| !v.is_empty());
        let claude_bin = resolve_claude_bin(claude_override.as_deref(), path_var.as_deref(), &cwd)?;
        let agent_bin = std::env::var_os(plan::AGENT_BIN_ENV)
            .map(PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty());
        let isolation = isolation::decide(
            Some(&self.inner.config.local.isolation),
            isolation::bwrap_works,
        )?;
        let own_env = || {
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        };
        let agent_env = if env.is_empty() {
            // Dispatched without a submitter's environment (after a
            // restart, or automatically): the coordinator's own.
            plan::forwarded_env(own_env())
        } else {
            plan::request_env(env, own_env())
        };
        Ok(ResolvedLaunch {
            claude_bin,
            agent_bin,
            isolation,
            agent_env,
        })
    }

    /// Claims a queued task and launches it. `Ok(None)` when the task was
    /// no longer pending (cancelled meanwhile).
    async fn launch_task(&self, task_id: &str) -> Result<Option<DispatchedTask>> {
        let db = &self.inner.db;
        let Some(task) = db.get_task(task_id)? else {
            return Ok(None);
        };
        if task.status != TaskStatus::Pending {
            return Ok(None);
        }
        if let Err(err) = self.check_task_budget(&task) {
            let coded_err = as_coded(&err);
            db.transition_task(
                task_id,
                TaskStatus::Failed,
                &TaskUpdate {
                    error_code: Some(coded_err.code.code.to_string()),
                    error_message: Some(coded_err.message.clone()),
                    ..TaskUpdate::default()
                },
            )?;
            db.note(
                NewCoordinatorEvent::new(
                    "budget_refused",
                    "error",
                    format!("{task_id}: not dispatched: {}", coded_err.message),
                )
                .task(task_id),
            );
            self.inner.signals.task_ended.notify_one();
            return Err(coded_err.into());
        }
        let env = lock(&self.inner.pending_env)
            .remove(task_id)
            .unwrap_or_default();
        let ids = LaunchIds {
            task_id: task_id.to_string(),
            session_id: ids::new_session_id(),
            container_id: ids::new_container_id(),
            claude_session_id: ids::new_claude_session_id(),
        };
        let secret = SessionSecret::generate();
        let kind = plan::parse_backend(&task.backend)?;
        let layout = self.layout_on(
            self.inner.backends.get(kind)?.as_ref(),
            &ids.session_id,
            &ids.container_id,
        );
        db.claim_dispatch(
            task_id,
            &NewAttempt {
                session_id: ids.session_id.clone(),
                container_id: ids.container_id.clone(),
                claude_session_id: ids.claude_session_id.clone(),
                secret: secret.clone(),
                workspace_dir: layout.workspace_dir.clone(),
                volume_dir: layout.volume_dir.clone(),
                heartbeat_interval_ms: Some(self.inner.config.agent.heartbeat_interval_ms as i64),
            },
        )?;
        self.attend(&ids.container_id);
        let target = ContainerRef {
            container_id: ids.container_id.clone(),
            session_id: ids.session_id.clone(),
            task_id: task_id.to_string(),
        };
        match self.start_container(&task, &ids, &env, secret).await {
            Ok(handle) => {
                db.set_container_starting(&ids.container_id, handle.pid)?;
                db.set_container_remote_id(&ids.container_id, handle.remote_id.as_deref())?;
                db.note(
                    NewCoordinatorEvent::new(
                        "task_dispatched",
                        "info",
                        format!(
                            "{task_id} dispatched (attempt {}) to {}",
                            task.attempt + 1,
                            ids.container_id
                        ),
                    )
                    .task(task_id)
                    .session(&ids.session_id)
                    .container(&ids.container_id),
                );
                // Cancelled while it was launching: stop what was started.
                let now = db.get_task(task_id)?.map(|t| t.status);
                if now != Some(TaskStatus::Running) {
                    tracing::info!(%task_id, "the task ended while launching; terminating");
                    db.request_container_stop(&ids.container_id)?;
                    if let Err(err) = self.inner.backend.terminate(&ids.container_id).await {
                        tracing::warn!(%task_id, "terminate failed: {err:#}");
                    }
                    self.unattend(&ids.container_id);
                    return Ok(None);
                }
                self.follow(target).await;
                tracing::info!(%task_id, session_id = %ids.session_id, container_id = %ids.container_id, "task dispatched");
                Ok(Some(DispatchedTask {
                    task_id: task_id.to_string(),
                    session_id: ids.session_id,
                    container_id: ids.container_id,
                }))
            }
            Err(err) => {
                self.unattend(&ids.container_id);
                tracing::warn!(%task_id, "launch failed: {err:#}");
                let coded_err = as_coded(&err);
                let update = TaskUpdate {
                    error_code: Some(coded_err.code.code.to_string()),
                    error_message: Some(coded_err.message.clone()),
                    ..TaskUpdate::default()
                };
                db.transition_task(task_id, TaskStatus::Failed, &update)?;
                db.set_container_state(&ids.container_id, ContainerState::Failed)?;
                db.note(
                    NewCoordinatorEvent::new(
                        "launch_failed",
                        "error",
                        format!(
                            "{task_id}: launch failed [{}] {}",
                            coded_err.code.code, coded_err.message
                        ),
                    )
                    .task(task_id)
                    .session(&ids.session_id)
                    .container(&ids.container_id),
                );
                self.inner.signals.task_ended.notify_one();
                Err(coded_err.into())
            }
        }
    }

    async fn start_container(
        &self,
        task: &crate::db::TaskRecord,
        ids: &LaunchIds,
        env: &HashMap<String, String>,
        secret: SessionSecret,
    ) -> Result<crate::backend::ContainerHandle> {
        self.refuse_when_disk_full()?;
        let workspace_source = match &task.workspace {
            Some(path) => Some(validate_workspace(Path::new(path))?),
            None => None,
        };
        let backend = plan::parse_backend(&task.backend)?;
        let resolved = self.resolve_launch(env, backend)?;
        let task_config = crate::config::task_config(self.config(), &task.config_set)?;
        let launch = LaunchRequest {
            backend,
            resources: self.resources_of(&task.id)?,
            user_config: !task.no_user_config,
            agent_settings: task_agent_settings(&task_config, &task.config_set),
            ids: ids.clone(),
            session: SessionRequest {
                prompt: task.prompt.clone(),
                model: task.model.clone(),
                max_turns: task.max_turns,
                interactive: task.mode == "interactive",
                resume: false,
                restore_checkpoint: None,
                max_budget_usd: self.claude_budget_fence(&task.id, None)?,
                prior_cost_usd: None,
                charged_elsewhere: Vec::new(),
            },
            workspace_source,
            copy_limits: crate::backend::workspace_copy::CopyLimits::from_config(
                &task_config.workspace,
                task.allow_large_workspace,
            ),
            claude_bin: resolved.claude_bin,
            agent_bin: resolved.agent_bin,
            env: resolved.agent_env,
            secret,
            isolation: resolved.isolation,
        };
        self.inner.backend.launch(&launch).await
    }

    /// `task cancel`. A pending or interrupted task is cancelled at once. A
    /// running one: its agent is asked to stop (Stop RPC; the agent stops
    /// Claude Code and journals `SessionFinished{CANCELLED}`), the journal
    /// tail is stored, and the container is waited for; an agent that does
    /// not answer is terminated (SIGTERM) and the task marked cancelled.
    ///
    /// HOOK (checkpoints): the final checkpoint is the agent's to take when
    /// it handles `Stop` (agent/src/supervisor.rs, `begin_stop`); once the
    /// Stop reply is in, the latest checkpoint on the volume is recorded on
    /// the session here (`recovery::latest_checkpoint_id`).
    pub async fn cancel_task(&self, task_id: &str, reason: &str) -> Result<CancelTaskResponse> {
        let db = &self.inner.db;
        let task = db.check_transition(task_id, TaskStatus::Cancelled)?;
        let reason = if reason.trim().is_empty() {
            "cancelled by the user".to_string()
        } else {
            reason.trim().to_string()
        };
        lock(&self.inner.pending_env).remove(task_id);
        let mut response = CancelTaskResponse {
            task_id: task_id.to_string(),
            ..CancelTaskResponse::default()
        };
        let container = match (&task.status, &task.container_id) {
            (TaskStatus::Running, Some(id)) => db.get_container(id)?,
            _ => None,
        };
        let Some(container) = container else {
            db.transition_task(
                task_id,
                TaskStatus::Cancelled,
                &TaskUpdate {
                    error_code: Some(error_codes::SESSION_CANCELLED.code.into()),
                    error_message: Some(format!("the task was cancelled: {reason}")),
                    ..TaskUpdate::default()
                },
            )?;
            db.note(
                NewCoordinatorEvent::new(
                    "task_cancelled",
                    "info",
                    format!("{task_id} cancelled ({reason})"),
                )
                .task(task_id),
            );
            self.inner.signals.task_ended.notify_one();
            response.status = TaskStatus::Cancelled.to_string();
            return Ok(response);
        };
        let target = ContainerRef {
            container_id: container.id.clone(),
            session_id: container.session_id.clone(),
            task_id: task_id.to_string(),
        };
        response.container_id = container.id.clone();
        db.request_container_stop(&container.id)?;
        let stop_grace = Duration::from_millis(self.inner.config.agent.stop_grace_ms);
        let stopped = self.stop_agent(&target, &reason, stop_grace).await;
        match &stopped {
            Ok(()) => {
                // The agent replied once SessionFinished was durable: store
                // it now (the follower may be slower, or gone).
                if let Err(err) =
                    catch_up_from_journal(db, self.inner.backend.as_ref(), &target).await
                {
                    tracing::warn!(%task_id, "reading the journal after stop failed: {err:#}");
                }
            }
            Err(err) => {
                tracing::warn!(%task_id, "the agent did not stop on request ({err:#}); terminating its container");
                self.inner.backend.terminate(&container.id).await?;
            }
        }
        // The session's end normally cancelled the task; if it did not (no
        // answer, or the agent journaled another outcome first), record it.
        if let Some(current) = db.get_task(task_id)?
            && current.status == TaskStatus::Running
        {
            db.transition_task(
                task_id,
                TaskStatus::Cancelled,
                &TaskUpdate {
                    error_code: Some(error_codes::SESSION_CANCELLED.code.into()),
                    error_message: Some(match &stopped {
                        Ok(()) => format!("the task was cancelled: {reason}"),
                        Err(_) => format!(
                            "the task was cancelled: {reason}; the agent did not answer and its container was terminated"
                        ),
                    }),
                    ..TaskUpdate::default()
                },
            )?;
        }
        let session_volume = match db.get_session(&container.session_id)? {
            Some(s) => Some(
                self.readable_volume(&s.id, PathBuf::from(&s.volume_dir))
                    .await,
            ),
            None => None,
        };
        if let Some(volume) = session_volume
            && let Some(checkpoint) =
                recovery::latest_checkpoint_id(db, &container.session_id, &volume)
        {
            db.set_session_checkpoint(&container.session_id, &checkpoint)?;
            response.checkpoint_id = checkpoint;
        }
        let gone = self
            .wait_until_gone(&container.id, stop_grace + Duration::from_secs(5))
            .await;
        if gone {
            db.set_container_state(&container.id, ContainerState::Terminated)?;
        }
        let final_task = db.get_task(task_id)?;
        response.status = final_task.map(|t| t.status.to_string()).unwrap_or_default();
        response.container_state = db
            .get_container(&container.id)?
            .map(|c| c.state.to_string())
            .unwrap_or_default();
        db.note(
            NewCoordinatorEvent::new(
                "task_cancelled",
                "info",
                format!(
                    "{task_id} cancelled ({reason}); container {} {}",
                    container.id, response.container_state
                ),
            )
            .task(task_id)
            .session(&container.session_id)
            .container(&container.id)
            .details(serde_json::json!({
                "reason": reason,
                "agent_answered": stopped.is_ok(),
                "checkpoint_id": Some(&response.checkpoint_id).filter(|c| !c.is_empty()),
            })),
        );
        self.inner.signals.task_ended.notify_one();
        Ok(response)
    }

    /// Asks an agent to stop and waits for its reply (it replies once the
    /// session's end is journaled).
    /// The agent's `Stop`: a final checkpoint, then `SessionFinished`. With a
    /// limit's `code` (E300) the session ends failed with it, not cancelled.
    async fn stop_agent(&self, target: &ContainerRef, reason: &str, grace: Duration) -> Result<()> {
        self.stop_agent_with(target, reason, grace, "").await
    }

    async fn stop_agent_with(
        &self,
        target: &ContainerRef,
        reason: &str,
        grace: Duration,
        code: &str,
    ) -> Result<()> {
        let secret = self
            .inner
            .db
            .session_secret(&target.session_id)?
            .context("the session has no secret")?;
        let endpoint = tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.backend.endpoint(&target.container_id),
        )
        .await
        .context("the agent did not announce its endpoint")??;
        let mut client = connect_agent(&endpoint.uri, &secret).await?;
        let mut request = tonic::Request::new(StopRequest {
            reason: reason.to_string(),
            grace_ms: grace.as_millis() as u32,
            error_code: code.to_string(),
        });
        request.set_timeout(grace + Duration::from_secs(15));
        client.stop(request).await.map_err(anyhow::Error::new)?;
        Ok(())
    }

    /// How long a stopping agent may take (see `Config::policy`).
    fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.policy("").stop_timeout_ms as u64)
    }

    /// Polls the backend until the container is no longer listed.
    async fn wait_until_gone(&self, container_id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.inner.backend.list().await {
                Ok(list) if !list.iter().any(|c| c.container_id == container_id) => return true,
                Ok(_) => {}
                Err(err) => tracing::warn!("listing containers failed: {err:#}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A local directory holding `session_id`'s checkpoint store as its
    /// volume has it now (`None`: it has none). Remote volumes are mirrored.
    /// `fresh`: every durable file read again from the volume into a new copy
    /// (what `checkpoint verify` and `repair` look at), not the mirror.
    pub async fn fetch_store(&self, session_id: &str, fresh: bool) -> Result<Option<PathBuf>> {
        let session = self.inner.db.get_session(session_id)?.ok_or_else(|| {
            coded(
                error_codes::SESSION_NOT_FOUND,
                format!("session not found: {session_id}"),
            )
        })?;
        let volume_dir = Path::new(&session.volume_dir);
        let dir = if fresh {
            self.inner
                .backend
                .store_copy(&session.id, volume_dir)
                .await?
        } else {
            self.inner
                .backend
                .store_dir(&session.id, volume_dir)
                .await?
        };
        if let Some(dir) = &dir
            && !fresh
            && self.inner.backends.kind_of_session(&session.id) != plan::BackendKind::Local
        {
            self.mark_durable(&session.id, dir, None).await?;
        }
        Ok(dir)
    }

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

    /// Writes what a repair changed in a `fresh` [`Self::fetch_store`] copy
    /// back to the session's volume.
    pub async fn push_store(
        &self,
        session_id: &str,
        copy: &Path,
        put: &[String],
        remove: &[String],
    ) -> Result<()> {
        let session = self.inner.db.get_session(session_id)?.ok_or_else(|| {
            coded(
                error_codes::SESSION_NOT_FOUND,
                format!("session not found: {session_id}"),
            )
        })?;
        self.inner
            .backend
            .write_back_store(&session.id, copy, put, remove)
            .await
    }

    /// Verifies the checkpoints read back into `store_dir` (all, or only
    /// `only`) and records each that verifies as durable, once, with a
    /// `checkpoint_durable` event. Returns how many were newly recorded.
    async fn mark_durable(
        &self,
        session_id: &str,
        store_dir: &Path,
        only: Option<&BTreeSet<String>>,
    ) -> Result<usize> {
        let db = Arc::clone(&self.inner.db);
        let known = db.durable_checkpoints(session_id)?;
        let (dir, sid) = (store_dir.to_path_buf(), session_id.to_string());
        let only = only.cloned();
        let limits = self.inner.config.agent.checkpoint.read_limits();
        let verified = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let store = checkpoints::open_store_at(&dir, &limits)?;
            let mut ok = Vec::new();
            for summary in store.list().map_err(|e| checkpoints::coded(&e))? {
                let id = summary.id.to_string();
                if known.contains(&id) || only.as_ref().is_some_and(|o| !o.contains(&id)) {
                    continue;
                }
                match store.verify(&summary.id) {
                    Ok(()) => ok.push(id),
                    Err(e) => tracing::warn!(session_id = %sid, checkpoint_id = %id, "read back but does not verify (yet): {e}"),
                }
            }
            Ok(ok)
        })
        .await
        .context("verifying checkpoints panicked")??;
        let mut n = 0;
        for id in verified {
            if db.mark_checkpoint_durable(session_id, &id)? {
                n += 1;
                db.note(
                    NewCoordinatorEvent::new(
                        "checkpoint_durable",
                        "info",
                        format!("{id} read back from the volume and verified"),
                    )
                    .session(session_id)
                    .details(serde_json::json!({"checkpoint_id": id})),
                );
            }
        }
        Ok(n)
    }

    /// One durability pass: checkpoints that agents on remote backends
    /// announced are read back from their volume and verified (a volume
    /// commits in the background, so a checkpoint may need a few passes).
    pub async fn verify_durability(&self) -> Result<usize> {
        let pending = self.inner.db.checkpoints_awaiting_durability("modal")?;
        let mut by_session: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (session_id, checkpoint_id) in pending {
            by_session
                .entry(session_id)
                .or_default()
                .insert(checkpoint_id);
        }
        let mut total = 0;
        for (session_id, wanted) in by_session {
            let Some(session) = self.inner.db.get_session(&session_id)? else {
                continue;
            };
            let dir = match self
                .inner
                .backend
                .store_dir(&session_id, Path::new(&session.volume_dir))
                .await
            {
                Ok(Some(dir)) => dir,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(%session_id, "reading checkpoints back failed: {err:#}");
                    continue;
                }
            };
            total += self.mark_durable(&session_id, &dir, Some(&wanted)).await?;
        }
        Ok(total)
    }

    /// A local directory whose `checkpoints/` is the session's store as its
    /// volume has it (for a remote volume: the mirror, read back first).
    async fn readable_volume(&self, session_id: &str, volume_dir: PathBuf) -> PathBuf {
        match self.inner.backend.store_dir(session_id, &volume_dir).await {
            Ok(Some(store)) => store.parent().map(Path::to_path_buf).unwrap_or(volume_dir),
            Ok(None) => volume_dir,
            Err(err) => {
                tracing::warn!(%session_id, "reading the checkpoint store back failed: {err:#}");
                volume_dir
            }
        }
    }

    /// `task delete` on a task with Modal sessions: their directories leave
    /// the volume, and their storage is charged up to now and stops. When
    /// the volume cannot be reached the data stays, and so does its meter
    /// (a later pass keeps charging what is still there).
    async fn delete_remote_session_data(&self, task_id: &str) {
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

    /// Where a session and its container live on `backend` (recorded
    /// before launch): the backend's own layout, else the local one.
    fn layout_on(
        &self,
        backend: &dyn Backend,
        session_id: &str,
        container_id: &str,
    ) -> plan::LocalLayout {
        backend
            .session_layout(session_id, container_id)
            .unwrap_or_else(|| {
                plan::local_layout(self.inner.state.root(), session_id, container_id)
            })
    }

    /// The sandbox resources a task asked for.
    fn resources_of(&self, task_id: &str) -> Result<Resources> {
        let limits = self
            .inner
            .db
            .task_limits(task_id)?
            .map(|(limits, _)| limits)
            .unwrap_or_default();
        Ok(task_resources(&limits, &self.config().rates))
    }

    /// The coordinator's Modal backend (built on first use).
    pub fn modal_backend(&self) -> Result<Arc<crate::backend::modal::ModalBackend>> {
        Ok(self.inner.backends.modal()?)
    }

    /// `resume` and `checkpoint rollback`: the session continues on a fresh
    /// container from a checkpoint (default: its latest). The checkpoint is
    /// verified here first, so a damaged one changes nothing (E620). The new
    /// container becomes the task's current one before a live old one is
    /// stopped (its agent takes a final checkpoint on Stop), so the old
    /// container's end does not move the task. The new agent saves whatever
    /// the workspace holds (a safety checkpoint: a rollback can be undone),
    /// restores the checkpoint and continues the same Claude conversation.
    pub async fn resume_session(&self, r: ResumeSessionRequest) -> Result<ResumeSessionResponse> {
        self.refuse_when_disk_full()?;
        let db = &self.inner.db;
        let session = db.get_session(&r.session_id)?.ok_or_else(|| {
            coded(
                error_codes::SESSION_NOT_FOUND,
                format!("session not found: {}", r.session_id),
            )
        })?;
        let task = db
            .get_task(&session.task_id)?
            .with_context(|| format!("the task of session {} is gone", session.id))?;
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

        // Where it ran, and where it goes on.
        let from_kind = self.inner.backends.kind_of_session(&session.id);
        let to_kind = match r.backend.trim() {
            "" => from_kind,
            name => plan::parse_backend(name)?,
        };
        let target_backend = self.inner.backends.get(to_kind)?;

        // The checkpoint, verified before anything changes (for a remote
        // volume: as read back from it).
        let volume = PathBuf::from(&session.volume_dir);
        // Its starting workspace is still where it ran: locally the session's workspace
        // dir, on Modal the store (a `--workspace` is shipped as a checkpoint, so a store
        // without any means the session started empty).
        let workspace_kept = from_kind == to_kind;
        // A session that ended without a final whole checkpoint (stopped on a full disk,
        // a failed turn) left its conversation in its container: when the backend still
        // holds that container's files, they become a checkpoint first (`agent_gone`,
        // skipped when nothing changed since the newest), so the default resume continues
        // that conversation instead of an older one, or starting over.
        if r.checkpoint_id.trim().is_empty()
            && workspace_kept
            && matches!(
                task.status,
                TaskStatus::Failed | TaskStatus::Interrupted | TaskStatus::Cancelled
            )
            && let Some(previous) = &session.container_id
            && !session.container_state.is_some_and(|s| s.is_active())
            && let Some(spec) = self.inner.backend.left_behind_spec(previous).await
        {
            match crate::agent_helpers::salvage(
                db,
                &spec,
                &session.id,
                "the session ended without a final checkpoint; what its container left was checkpointed before the resume",
            )
            .await
            {
                Ok(taken) => {
                    tracing::info!(session_id = %session.id, checkpoint_id = %taken.checkpoint_id, unchanged = taken.unchanged, "the previous container's files checkpointed before the resume")
                }
                Err(err) => {
                    tracing::warn!(session_id = %session.id, "checkpointing the previous container's files failed: {err:#}")
                }
            }
        }
        let (mut checkpoint_id, mut skipped, mut starts_over) = self
            .resume_checkpoint(
                &task.id,
                &session.id,
                &volume,
                &r.checkpoint_id,
                workspace_kept,
            )
            .await?;
        for s in &skipped {
            tracing::warn!(session_id = %session.id, checkpoint_id = %s.checkpoint_id, code = s.code, "resume skips a checkpoint: {}", s.reason);
        }

        // A session continues only under a ceiling it has not reached.
        let standing = db.standing(Some(&task.id), &self.config().budget, ids::now_ms())?;
        if let Some(crossing) = standing.exceeded() {
            return Err(coded(
                error_codes::BUDGET_EXCEEDED,
                format!(
                    "{} cannot continue: {} spent has reached {} ceiling of {}; raise it with `parhelia budget set …` (global or `--daily`){}",
                    task.id,
                    crate::budget::usd(crossing.spent_usd),
                    crossing.scope.as_str(),
                    crate::budget::usd(crossing.ceiling_usd),
                    if crossing.scope == crate::budget::Scope::Task {
                        ", or create a new task with a larger `--max-cost`"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let env: HashMap<String, String> = r.env.clone().into_iter().collect();
        let resolved = self.resolve_launch(&env, to_kind)?;
        let secret = db
            .session_secret(&session.id)?
            .context("the session has no secret")?;
        let was_interrupted = task.status == TaskStatus::Interrupted;
        let old = match (&session.container_id, session.container_state) {
            (Some(id), Some(state)) if state.is_active() => Some(ContainerRef {
                container_id: id.clone(),
                session_id: session.id.clone(),
                task_id: task.id.clone(),
            }),
            _ => None,
        };

        // A previous container that is not live may still have left
        // processes behind (a killed agent's tmux and Claude Code): end them
        // before another agent takes the workspace.
        if old.is_none()
            && let Some(previous) = &session.container_id
            && let Err(err) = self.inner.backend.terminate(previous).await
        {
            tracing::warn!(container_id = %previous, "cleaning up the previous container failed: {err:#}");
        }

        let container_id = ids::new_container_id();
        // Another backend: its volume gets the store first (what it lacks).
        let moved = if to_kind != from_kind {
            let layout = self.layout_on(target_backend.as_ref(), &session.id, &container_id);
            let store_dir = self
                .inner
                .backend
                .store_dir(&session.id, &volume)
                .await?
                .ok_or_else(|| {
                    coded(
                        error_codes::CHECKPOINT_NOT_FOUND,
                        nothing_to_resume(&task.id, &session.id),
                    )
                })?;
            target_backend
                .import_store(&session.id, &layout.volume_dir, &store_dir)
                .await
                .with_context(|| {
                    format!(
                        "copying session {}'s checkpoints to the {} backend",
                        session.id,
                        to_kind.as_str()
                    )
                })?;
            tracing::info!(session_id = %session.id, from = from_kind.as_str(), to = to_kind.as_str(), "session moves to another backend");
            Some(crate::db::SessionMove {
                backend: to_kind.as_str().to_string(),
                workspace_dir: layout.workspace_dir,
                volume_dir: layout.volume_dir,
            })
        } else {
            None
        };
        let max_budget_usd = self.claude_budget_fence(&task.id, Some(&session.id))?;
        db.clear_budget_stop(&task.id)?;
        db.begin_resume(
            &task.id,
            &session.id,
            &container_id,
            Some(self.inner.config.agent.heartbeat_interval_ms as i64),
            moved.as_ref(),
        )?;
        self.attend(&container_id);
        let mut response = ResumeSessionResponse {
            task_id: task.id.clone(),
            session_id: session.id.clone(),
            container_id: container_id.clone(),
            checkpoint_id: checkpoint_id.clone().unwrap_or_default(),
            stopped_container_id: String::new(),
            skipped: skipped
                .iter()
                .map(|s| SkippedCheckpoint {
                    checkpoint_id: s.checkpoint_id.clone(),
                    code: s.code.to_string(),
                    reason: s.reason.clone(),
                })
                .collect(),
        };
        if let Some(old) = &old {
            // Two agents must never write one workspace: the old one goes first.
            let reason = if r.rollback { "rollback" } else { "resume" };
            db.request_container_stop(&old.container_id)?;
            let grace = Duration::from_millis(self.inner.config.agent.stop_grace_ms);
            if let Err(err) = self.stop_agent(old, reason, grace).await {
                tracing::warn!(container_id = %old.container_id, "the agent did not stop on request ({err:#}); terminating");
                self.inner.backend.terminate(&old.container_id).await?;
            }
            if let Err(err) = catch_up_from_journal(db, self.inner.backend.as_ref(), old).await {
                tracing::warn!(container_id = %old.container_id, "reading the journal after stop failed: {err:#}");
            }
            if self
                .wait_until_gone(&old.container_id, grace + Duration::from_secs(5))
                .await
            {
                db.set_container_state(&old.container_id, ContainerState::Terminated)?;
            } else {
                self.unattend(&container_id);
                return Err(coded(
                    error_codes::AGENT_UNREACHABLE,
                    format!(
                        "container {} did not stop; nothing was restored",
                        old.container_id
                    ),
                ));
            }
            response.stopped_container_id = old.container_id.clone();
            // Its stop took a final checkpoint, newer than the one chosen above: a
            // running session continues from where it was stopped.
            if r.checkpoint_id.trim().is_empty() {
                (checkpoint_id, skipped, starts_over) = self
                    .resume_checkpoint(&task.id, &session.id, &volume, "", workspace_kept)
                    .await?;
                response.checkpoint_id = checkpoint_id.clone().unwrap_or_default();
                response.skipped = skipped
                    .iter()
                    .map(|s| SkippedCheckpoint {
                        checkpoint_id: s.checkpoint_id.clone(),
                        code: s.code.to_string(),
                        reason: s.reason.clone(),
                    })
                    .collect();
            }
        }

        // A checkpoint without a conversation (the session's `start`, or a
        // Modal workspace seed: it stopped before any turn was saved) starts
        // the conversation again in that workspace, with the task's prompt.
        let prompt = if starts_over {
            if r.message.trim().is_empty() {
                task.prompt.clone()
            } else {
                format!("{}\n\n{}", task.prompt, r.message)
            }
        } else if !r.message.trim().is_empty() {
            r.message.clone()
        } else if !r.rollback && was_interrupted {
            RESUME_CONTINUE_MESSAGE.to_string()
        } else {
            // Nothing to say yet: the session waits for input.
            String::new()
        };
        let task_config = crate::config::task_config(self.config(), &task.config_set)?;
        let launch = LaunchRequest {
            backend: to_kind,
            resources: self.resources_of(&task.id)?,
            user_config: !task.no_user_config,
            agent_settings: task_agent_settings(&task_config, &task.config_set),
            ids: LaunchIds {
                task_id: task.id.clone(),
                session_id: session.id.clone(),
                container_id: container_id.clone(),
                claude_session_id: session.claude_session_id.clone(),
            },
            session: SessionRequest {
                prompt,
                model: task.model.clone(),
                max_turns: task.max_turns,
                interactive: task.mode == "interactive",
                resume: !starts_over,
                restore_checkpoint: checkpoint_id.clone(),
                max_budget_usd,
                prior_cost_usd: Some(db.session_spend_usd(&session.id)?),
                charged_elsewhere: db.left_over_charges(&session.id)?,
            },
            // The session's workspace is already there; the checkpoint restores it.
            workspace_source: None,
            copy_limits: crate::backend::workspace_copy::CopyLimits::UNLIMITED,
            claude_bin: resolved.claude_bin,
            agent_bin: resolved.agent_bin,
            env: resolved.agent_env,
            secret,
            isolation: resolved.isolation,
        };
        let target = ContainerRef {
            container_id: container_id.clone(),
            session_id: session.id.clone(),
            task_id: task.id.clone(),
        };
        match self.inner.backend.launch(&launch).await {
            Ok(handle) => {
                db.set_container_starting(&container_id, handle.pid)?;
                db.set_container_remote_id(&container_id, handle.remote_id.as_deref())?;
                db.note(
                    NewCoordinatorEvent::new(
                        if r.rollback { "session_rolled_back" } else { "session_resumed" },
                        "info",
                        format!(
                            "{} {} from {} on {container_id}",
                            session.id,
                            if r.rollback { "rolled back" } else { "resumed" },
                            checkpoint_id
                                .as_deref()
                                .unwrap_or("its starting workspace (no checkpoint was taken)"),
                        ),
                    )
                    .task(&task.id)
                    .session(&session.id)
                    .container(&container_id)
                    .details(serde_json::json!({
                        "checkpoint_id": checkpoint_id,
                        "stopped_container_id": Some(&response.stopped_container_id).filter(|c| !c.is_empty()),
                        "skipped": skipped,
                    })),
                );
                self.follow(target).await;
                Ok(response)
            }
            Err(err) => {
                self.unattend(&container_id);
                let coded_err = as_coded(&err);
                db.transition_task(
                    &task.id,
                    TaskStatus::Failed,
                    &TaskUpdate {
                        error_code: Some(coded_err.code.code.to_string()),
                        error_message: Some(coded_err.message.clone()),
                        ..TaskUpdate::default()
                    },
                )?;
                db.set_container_state(&container_id, ContainerState::Failed)?;
                self.inner.signals.task_ended.notify_one();
                Err(coded_err.into())
            }
        }
    }

    /// The checkpoint a resume restores: `named`, or the newest restorable one (with the
    /// newer ones passed over and why); and whether it starts the conversation over (it
    /// carries none).
    async fn resume_checkpoint(
        &self,
        task_id: &str,
        session_id: &str,
        volume: &std::path::Path,
        named: &str,
        workspace_kept: bool,
    ) -> Result<(Option<String>, Vec<checkpoints::Skipped>, bool)> {
        let volume = volume.to_path_buf();
        // A session lost before its agent took even its `start` checkpoint never ran
        // Claude Code (that checkpoint comes first): on the backend it ran on, it starts
        // over from its starting workspace, with the task's prompt.
        let start_over = workspace_kept && named.trim().is_empty();
        let Some(store_dir) = self.inner.backend.store_dir(session_id, &volume).await? else {
            if start_over {
                return Ok((None, Vec::new(), true));
            }
            return Err(coded(
                error_codes::CHECKPOINT_NOT_FOUND,
                nothing_to_resume(task_id, session_id),
            ));
        };
        // The newest *restorable* checkpoint (it verifies, and carries the
        // conversation the session has), saying why newer ones were passed
        // over; a named one must be restorable itself.
        let chosen = {
            let store = checkpoints::open_store_at(
                &store_dir,
                &self.inner.config.agent.checkpoint.read_limits(),
            )?;
            if named.trim().is_empty() {
                let (chosen, skipped) = checkpoints::newest_restorable(&store)?;
                let Some(chosen) = chosen else {
                    if start_over && skipped.is_empty() {
                        return Ok((None, Vec::new(), true));
                    }
                    let reasons: Vec<String> = skipped.iter().map(|s| s.line()).collect();
                    return Err(coded(
                        error_codes::CHECKPOINT_NOT_FOUND,
                        if skipped.is_empty() {
                            nothing_to_resume(task_id, session_id)
                        } else {
                            format!(
                                "session {} has no restorable checkpoint to resume from:\n{}",
                                session_id,
                                reasons.join("\n")
                            )
                        },
                    ));
                };
                let starts_over = !store
                    .load(&chosen.id)
                    .is_ok_and(|m| checkpoints::has_conversation(&m));
                (Some(chosen.id.to_string()), skipped, starts_over)
            } else {
                let id = checkpoints::parse_id(named.trim())?;
                let list = store.list().map_err(|e| checkpoints::coded(&e))?;
                let needs_conversation = checkpoints::session_has_conversation(&store, &list);
                if let Some(why) = checkpoints::unrestorable(&store, &id, needs_conversation) {
                    let code = error_codes::lookup(why.code)
                        .copied()
                        .unwrap_or(error_codes::CHECKPOINT_IO_FAILED);
                    let message = if code == error_codes::CHECKPOINT_NOT_FOUND {
                        format!("checkpoint {id} is not in session {}'s store", session_id)
                    } else {
                        why.reason
                    };
                    return Err(coded(code, message));
                }
                let starts_over = !store
                    .load(&id)
                    .is_ok_and(|m| checkpoints::has_conversation(&m));
                (Some(id.to_string()), Vec::new(), starts_over)
            }
        };
        Ok(chosen)
    }

    /// `checkpoint create`: a manual checkpoint of a running session.
    pub async fn checkpoint_session(
        &self,
        session_id: &str,
        message: &str,
    ) -> Result<CheckpointSessionResponse> {
        let db = &self.inner.db;
        let session = db.get_session(session_id)?.ok_or_else(|| {
            coded(
                error_codes::SESSION_NOT_FOUND,
                format!("session not found: {session_id}"),
            )
        })?;
        let container_id = match (&session.container_id, session.container_state) {
            (Some(id), Some(state)) if state.is_active() => id.clone(),
            _ => {
                return Err(coded(
                    error_codes::AGENT_UNREACHABLE,
                    format!(
                        "session {session_id} is not running; its final checkpoint is its latest (`parhelia checkpoint list {session_id}`); `parhelia resume {session_id}` continues it"
                    ),
                ));
            }
        };
        let secret = db
            .session_secret(session_id)?
            .context("the session has no secret")?;
        let endpoint = tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.backend.endpoint(&container_id),
        )
        .await
        .map_err(|_| {
            coded(
                error_codes::AGENT_UNREACHABLE,
                format!("the agent of {container_id} did not announce its endpoint"),
            )
        })??;
        let mut client = connect_agent(&endpoint.uri, &secret).await?;
        let reply = client
            .create_checkpoint(parhelia_proto::CreateCheckpointRequest {
                message: message.to_string(),
            })
            .await
            .map_err(|status| agent_error(&status))?
            .into_inner();
        Ok(CheckpointSessionResponse {
            checkpoint_id: reply.checkpoint_id,
            container_id,
        })
    }

    /// `task retry`: a new attempt (new session) for a failed, cancelled or
    /// interrupted task; queued like a new task.
    pub async fn retry_task(
        &self,
        task_id: &str,
        env: &HashMap<String, String>,
    ) -> Result<RetryTaskResponse> {
        let db = &self.inner.db;
        let before = db.check_transition(task_id, TaskStatus::Pending)?;
        if let Some(container_id) = &before.container_id {
            // An agent whose session just ended is on its way out: give it
            // the stop timeout before refusing.
            if !self
                .wait_until_gone(container_id, self.stop_timeout())
                .await
            {
                return Err(coded(
                    error_codes::TASK_STILL_ACTIVE,
                    format!(
                        "task {task_id}'s container {container_id} is still running; terminate it first (parhelia container terminate {container_id})"
                    ),
                ));
            }
        }
        let task = db.retry_task(task_id)?;
        db.clear_budget_stop(task_id)?;
        if !env.is_empty() {
            lock(&self.inner.pending_env).insert(task_id.to_string(), env.clone());
        }
        db.note(
            NewCoordinatorEvent::new(
                "task_retried",
                "info",
                format!(
                    "{task_id} queued again (was {}; attempt {} next)",
                    before.status,
                    task.attempt + 1
                ),
            )
            .task(task_id),
        );
        let outcome = self.dispatch_pending().await?;
        let mut response = RetryTaskResponse {
            task_id: task_id.to_string(),
            attempt: task.attempt + 1,
            ..RetryTaskResponse::default()
        };
        self.fill_placement(task_id, &outcome, |session, container, queued, position| {
            response.session_id = session;
            response.container_id = container;
            response.queued = queued;
            response.queue_position = position;
        })?;
        Ok(response)
    }

    /// `task delete`: ended tasks only, all or nothing (every id is checked
    /// first); removes their rows and their session and container directories.
    pub async fn delete_tasks(&self, task_ids: &[String]) -> Result<DeleteTasksResponse> {
        let db = &self.inner.db;
        for id in task_ids {
            let task = db.get_task(id)?.ok_or_else(|| {
                coded(error_codes::TASK_NOT_FOUND, format!("task not found: {id}"))
            })?;
            if !task.status.has_ended() {
                return Err(coded(
                    error_codes::TASK_STILL_ACTIVE,
                    format!(
                        "task {id} is {}; only ended tasks can be deleted",
                        task.status
                    ),
                ));
            }
            for container in db
                .list_containers(None, None)?
                .iter()
                .filter(|c| &c.task_id == id)
            {
                if !self
                    .wait_until_gone(&container.id, self.stop_timeout())
                    .await
                {
                    return Err(coded(
                        error_codes::TASK_STILL_ACTIVE,
                        format!(
                            "task {id}'s container {} is still running; terminate it first (parhelia container terminate {})",
                            container.id, container.id
                        ),
                    ));
                }
            }
        }
        let mut response = DeleteTasksResponse::default();
        for id in task_ids {
            self.delete_remote_session_data(id).await;
            let deleted = db.delete_task(id)?;
            lock(&self.inner.pending_env).remove(id);
            let root = self.inner.state.root();
            let dirs = deleted
                .session_ids
                .iter()
                .map(|s| self.inner.state.session_dir(s))
                .chain(
                    deleted
                        .container_ids
                        .iter()
                        .map(|c| self.inner.state.container_dir(c)),
                );
            for dir in dirs {
                // Only ever inside the state directory.
                if !dir.starts_with(root) || !dir.exists() {
                    continue;
                }
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => response.removed_dirs += 1,
                    Err(err) => tracing::warn!("cannot remove {}: {err}", dir.display()),
                }
            }
            db.note(
                NewCoordinatorEvent::new(
                    "task_deleted",
                    "info",
                    format!(
                        "{id} deleted ({} session(s), {} container(s))",
                        deleted.session_ids.len(),
                        deleted.container_ids.len()
                    ),
                )
                .details(serde_json::json!({
                    "task_id": id,
                    "sessions": deleted.session_ids,
                    "containers": deleted.container_ids,
                })),
            );
            response.deleted.push(id.clone());
        }
        Ok(response)
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


    /// E300 when a task estimated like `limits` would exceed what the
    /// global or daily budget has left.
    fn check_budget_before_dispatch(
        &self,
        what: &str,
        limits: &TaskLimits,
        task_type: &str,
        backend: &str,
    ) -> Result<()> {
        let db = &self.inner.db;
        let history = db.similar_history(task_type, backend)?;
        let estimate = budget::estimate(limits, backend, self.config(), history);
        let standing = db.standing(None, &self.config().budget, ids::now_ms())?;
        if let Some(crossing) = standing.refuses(estimate.high_usd) {
            return Err(coded(
                error_codes::BUDGET_EXCEEDED,
                budget::refusal_message(what, &estimate, &crossing),
            ));
        }
        Ok(())
    }

    /// The pre-dispatch check for a recorded task (queued, held, retried).
    fn check_task_budget(&self, task: &crate::db::TaskRecord) -> Result<()> {
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
                        budget::usd(spent),
                        budget::usd(max)
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
    fn claude_budget_fence(&self, task_id: &str, session_id: Option<&str>) -> Result<Option<f64>> {
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
        db.request_container_stop(&container.id)?;
        let grace = Duration::from_millis(self.inner.config.agent.stop_grace_ms);
        let stopped = self
            .stop_agent_with(
                &target,
                "budget ceiling reached",
                grace,
                error_codes::BUDGET_EXCEEDED.code,
            )
            .await;
        match &stopped {
            Ok(()) => {
                if let Err(err) =
                    catch_up_from_journal(db, self.inner.backend.as_ref(), &target).await
                {
                    tracing::warn!(%task_id, "reading the journal after stop failed: {err:#}");
                }
            }
            Err(err) => {
                tracing::warn!(%task_id, "the agent did not stop on request ({err:#}); terminating its container");
                self.inner.backend.terminate(&container.id).await?;
            }
        }
        if let Some(current) = db.get_task(task_id)?
            && current.status == TaskStatus::Running
        {
            db.transition_task(task_id, TaskStatus::Failed, &fail(message))?;
        }
        let session_volume = match db.get_session(&container.session_id)? {
            Some(s) => Some(
                self.readable_volume(&s.id, PathBuf::from(&s.volume_dir))
                    .await,
            ),
            None => None,
        };
        if let Some(volume) = session_volume
            && let Some(checkpoint) =
                recovery::latest_checkpoint_id(db, &container.session_id, &volume)
        {
            db.set_session_checkpoint(&container.session_id, &checkpoint)?;
        }
        if self
            .wait_until_gone(&container.id, grace + Duration::from_secs(5))
            .await
        {
            db.set_container_state(&container.id, ContainerState::Terminated)?;
        }
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
                        Some(x) => format!("{}: ceiling {}", r.task_id, budget::usd(x)),
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
                    budget::usd(ceilings.global_usd),
                    match ceilings.daily_usd {
                        Some(d) => format!(", daily {}", budget::usd(d)),
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

    /// The reconciler's automatic resume after a lost container: the request
    /// is recorded first (so it is not repeated), then the session resumes
    /// like `parhelia resume`; a failure is a `resume_failed` event. Returns
    /// whether a resume started.
    pub(crate) async fn request_resume(
        &self,
        task_id: &str,
        session_id: &str,
        lost_container_id: &str,
        checkpoint_id: Option<&str>,
        attempt: u32,
    ) -> Result<bool> {
        let db = &self.inner.db;
        db.record_resume_request(lost_container_id, task_id)?;
        // The resume picks the newest restorable checkpoint itself (the one seen
        // when the container was marked lost may be older, or gone): with none, the
        // session starts over from its starting workspace.
        let request = ResumeSessionRequest {
            session_id: session_id.to_string(),
            checkpoint_id: String::new(),
            message: String::new(),
            rollback: false,
            env: Default::default(),
            backend: String::new(),
        };
        match Box::pin(self.resume_session(request)).await {
            Ok(resumed) => {
                tracing::info!(%task_id, %session_id, attempt, container_id = %resumed.container_id, "automatic resume started");
                Ok(true)
            }
            Err(err) => {
                let coded_err = as_coded(&err);
                tracing::warn!(%task_id, %session_id, attempt, "automatic resume failed: {err:#}");
                db.note(
                    NewCoordinatorEvent::new(
                        "resume_failed",
                        "warning",
                        format!(
                            "{task_id}: automatic resume (attempt {attempt}) failed: [{}] {}",
                            coded_err.code.code, coded_err.message
                        ),
                    )
                    .task(task_id)
                    .session(session_id)
                    .container(lost_container_id)
                    .details(
                        serde_json::json!({ "checkpoint_id": checkpoint_id, "attempt": attempt }),
                    ),
                );
                Ok(false)
            }
        }
    }
}

/// What an interrupted session is told when it is resumed without a message.
pub const RESUME_CONTINUE_MESSAGE: &str =
    "Your previous session was interrupted. Continue the task from where you left off.";

/// An agent's refusal as a coded error: the agent puts `[Ennn]` in front of
/// checkpoint failures; anything else is the agent being unreachable.
fn agent_error(status: &tonic::Status) -> anyhow::Error {
    let message = status.message();
    if let Some(rest) = message.strip_prefix('[')
        && let Some((code, text)) = rest.split_once("] ")
        && let Some(known) = error_codes::lookup(code)
    {
        return coded(*known, text.to_string());
    }
    coded(
        error_codes::AGENT_UNREACHABLE,
        format!("the agent refused: {message}"),
    )
}

/// What a launch resolved from the environment.
struct ResolvedLaunch {
    claude_bin: PathBuf,
    agent_bin: Option<PathBuf>,
    isolation: isolation::Isolation,
    agent_env: BTreeMap<String, String>,
}

/// The workspace to copy must be an existing directory (absolute path).
fn validate_workspace(path: &Path) -> Result<PathBuf, CodedError> {
    let not_found = || {
        CodedError::new(
            error_codes::WORKSPACE_NOT_FOUND,
            format!("workspace not found: {}", path.display()),
        )
    };
    if !path.is_absolute() {
        return Err(CodedError::new(
            error_codes::INVALID_INPUT,
            format!("the workspace path must be absolute: {}", path.display()),
        ));
    }
    let canonical = std::fs::canonicalize(path).map_err(|_| not_found())?;
    crate::backend::workspace_copy::refuse_unsafe_root(&canonical)?;
    if canonical.is_dir() {
        Ok(canonical)
    } else {
        Err(not_found())
    }
}

/// Budget and resource flags must make sense before anything is recorded.
fn validate_limits(limits: &TaskLimits, config: &Config) -> Result<(), CodedError> {
    let invalid = |message: String| CodedError::new(error_codes::INVALID_INPUT, message);
    if let Some(x) = limits.max_cost_usd
        && !(x.is_finite() && x > 0.0)
    {
        return Err(invalid(format!(
            "--max-cost must be a positive amount, got {x}"
        )));
    }
    if let Some(x) = limits.cpu
        && !(x.is_finite() && x > 0.0)
    {
        return Err(invalid(format!(
            "--cpu must be a positive number of cores, got {x}"
        )));
    }
    if limits.memory_mb == Some(0) {
        return Err(invalid("--memory must be positive".into()));
    }
    if limits.timeout_seconds == Some(0) {
        return Err(invalid("--timeout must be positive".into()));
    }
    if let Some(gpu) = &limits.gpu {
        budget::parse_gpu(gpu, &config.rates).map_err(|e| invalid(format!("--gpu: {e}")))?;
    }
    Ok(())
}

/// The sandbox resources a task asks for (`--gpu`, `--cpu`, `--memory`,
/// `--timeout`), the GPU spelled as Modal spells it (`a100-80gb:2` →
/// `A100-80GB:2`; a trailing `!` is kept).
fn task_resources(limits: &TaskLimits, rates: &crate::config::RatesConfig) -> Resources {
    let gpu = limits
        .gpu
        .as_deref()
        .filter(|g| !g.is_empty())
        .map(|given| match budget::parse_gpu(given, rates) {
            Ok(g) => {
                let strict = if given.contains('!') { "!" } else { "" };
                if g.count > 1 {
                    format!("{}{strict}:{}", g.gpu_type, g.count)
                } else {
                    format!("{}{strict}", g.gpu_type)
                }
            }
            Err(_) => given.to_string(),
        });
    Resources {
        gpu,
        cpu: limits.cpu,
        memory_mb: limits.memory_mb,
        timeout_seconds: limits.timeout_seconds,
    }
}

/// E205's message for a session that has no checkpoint at all: it was stopped
/// before its first one (nothing of it can be resumed), and `task retry` is the
/// way on (it starts the task again from its original workspace).
/// A task's own agent settings when it has `--set` values (else `None`: the
/// backend's, which are the coordinator's).
fn task_agent_settings(task_config: &Config, config_set: &[String]) -> Option<plan::AgentSettings> {
    (!config_set.is_empty()).then(|| plan::AgentSettings::for_config(task_config))
}

fn nothing_to_resume(task_id: &str, session_id: &str) -> String {
    format!(
        "session {session_id} has no checkpoint to resume from: it stopped before its first checkpoint was taken. `parhelia task retry {task_id}` runs the task again from its original workspace"
    )
}
