//! Tasks: submit, dispatch (the queue's passes and each launch), cancel, retry
//! and delete.

use super::sessions::SessionStop;
use super::*;

/// Told how far a task's workspace transfers have got (task id, stage, figures).
pub type TaskTransfers = Arc<
    dyn Fn(
            &str,
            crate::backend::workspace_copy::WorkspaceStage,
            crate::backend::workspace_copy::CopyProgress,
        ) + Send
        + Sync,
>;

impl CoordinatorService {
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
        Ok(self.submit_reporting(request, limits, None).await?.response)
    }

    /// [`Self::submit_with_limits`], telling `workspace_progress` how far the copy of
    /// the task's workspace has got when this submit's dispatch pass launches it (a
    /// queued task launched later by another pass reports nothing).
    ///
    /// Returns once the task is recorded and placed (claimed for a launch, queued or
    /// held): the launch itself runs outside the dispatch lock and outside this call
    /// ([`Submitted::launch`] says when it ends); its failure is the task's state
    /// and a `launch_failed` event, never this call's success.
    pub async fn submit_reporting(
        &self,
        request: SubmitTaskRequest,
        limits: TaskLimits,
        workspace_progress: Option<crate::backend::workspace_copy::WorkspaceProgress>,
    ) -> Result<Submitted> {
        plan::validate_prompt(&request.prompt)?;
        validate_limits(&limits, self.config())?;
        // The task's own `--set` values: parsed as `--set` is, per-task keys only (E119).
        let task_config = crate::config::task_config(self.config(), &request.config_set)?;
        let backend_kind = plan::parse_backend(&request.backend)?;
        crate::backend::capabilities::refuse_unenforced(&limits, backend_kind.as_str())?;
        self.inner.backends.get(backend_kind)?;
        if backend_kind == plan::BackendKind::Modal {
            // Nothing is recorded for a task Modal could never run: the
            // bridge must start (Python, the pinned SDK) and find a token.
            let bridge = self.inner.backends.modal()?;
            let mut greeting = bridge.bridge().greeting().await?;
            if greeting.credentials == "none" {
                // The SDK reads `~/.modal.toml` once: a token written since
                // (`modal token new`) needs a new bridge to be seen.
                greeting = bridge.bridge().restart().await?;
            }
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
        let secrets = plan::validate_secret_names(&request.secrets, backend_kind)?;
        let region = plan::validate_region(&request.region, backend_kind)?;
        // Fail before recording anything when the launch could never work
        // (locally: a `--secret` set nowhere is E207).
        self.resolve_launch(&request.env, backend_kind, &secrets)?;

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
            secrets,
            region,
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
            return Ok(Submitted {
                response,
                launch: None,
            });
        }
        if let Some(progress) = workspace_progress {
            lock(&self.inner.pending_workspace_progress).insert(task_id.clone(), progress);
        }
        let pass = self.dispatch_pass().await;
        let (outcome, launches) = match pass {
            Ok(pass) => pass,
            Err(err) => {
                lock(&self.inner.pending_workspace_progress).remove(&task_id);
                return Err(err);
            }
        };
        // This call's own launch, if its pass claimed the task (the launch drops
        // the copy's reader when it ends); the others' are not waited for.
        let launch = launches.into_iter().find(|l| l.placed.task_id == task_id);
        if launch.is_none() {
            lock(&self.inner.pending_workspace_progress).remove(&task_id);
        }
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
        Ok(Submitted { response, launch })
    }

    /// Where a dispatch pass left `task_id`; its launch error if it failed.
    pub(super) fn fill_placement(
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
        } else {
            // Another pass took it first (the daemon's dispatch loop, woken
            // by a task ending): what that pass did is in the task's row.
            let db = &self.inner.db;
            let Some(task) = db.get_task(task_id)? else {
                return Ok(());
            };
            if task.status == TaskStatus::Pending {
                let plan = queue::plan_dispatch(
                    &db.queued_tasks()?,
                    db.count_tasks_in(TaskStatus::Running)?,
                    self.inner.config.orchestrator.max_concurrent_workers,
                );
                let position = plan
                    .waiting
                    .iter()
                    .find(|(id, _)| id == task_id)
                    .map_or(1, |(_, p)| *p);
                fill(String::new(), String::new(), true, position);
            } else if let (Some(session), Some(container), Some(_)) =
                (task.session_id, task.container_id, task.started_at_ms)
            {
                // Started since this call queued it (a retry clears
                // `started_at_ms`); else it was cancelled while queued.
                let launch_failed = db
                    .get_container(&container)?
                    .is_some_and(|c| c.state == ContainerState::Failed)
                    && task.status == TaskStatus::Failed;
                if let (true, Some(code)) = (launch_failed, &task.error_code) {
                    return Err(CodedError::new(
                        error_codes::lookup_or_family(code),
                        format!(
                            "task {task_id} failed to launch: {}",
                            task.error_message.as_deref().unwrap_or("")
                        ),
                    )
                    .into());
                }
                fill(session, container, false, 0);
            }
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
        self.dispatch_tasks_reporting(task_ids, all, dry_run, env, None)
            .await
    }

    /// [`Self::dispatch_tasks`], telling `transfers` how far the workspace transfers
    /// of the tasks this call's pass launches have got, by task id (a task another
    /// pass launches reports nothing).
    pub async fn dispatch_tasks_reporting(
        &self,
        task_ids: &[String],
        all: bool,
        dry_run: bool,
        env: &HashMap<String, String>,
        transfers: Option<TaskTransfers>,
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
        if let Some(transfers) = &transfers {
            let mut followed = lock(&self.inner.pending_workspace_progress);
            for id in &wanted {
                let (transfers, task_id) = (transfers.clone(), id.clone());
                followed.insert(
                    id.clone(),
                    crate::backend::workspace_copy::WorkspaceProgress(Arc::new(move |stage, p| {
                        transfers(&task_id, stage, p)
                    })),
                );
            }
        }
        // `task dispatch` reports how each launch of its pass went (outside the
        // lock), its transfers followed until those launches end.
        let passed = self.dispatch_pass().await;
        let outcome = match passed {
            Ok((outcome, launches)) => Ok(Self::settled(outcome, launches, |_| true).await),
            Err(err) => Err(err),
        };
        if transfers.is_some() {
            let mut followed = lock(&self.inner.pending_workspace_progress);
            for id in &wanted {
                followed.remove(id);
            }
        }
        let outcome = outcome?;
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

    /// One dispatch pass, for the daemon's dispatch loop: queued tasks, oldest
    /// request first, while fewer than `max_concurrent_workers` tasks run. The
    /// tasks it places are launching when it returns (not waited for).
    pub async fn dispatch_pending(&self) -> Result<DispatchOutcome> {
        Ok(self.dispatch_pass().await?.0)
    }

    /// A dispatch pass: the placement decisions (capacity, each task's budget,
    /// queue order) and the claims that record them are made under the dispatch
    /// lock, so passes never place a task twice nor more tasks than there are
    /// slots (a claimed task is `running`: it holds its slot from the claim on).
    /// The launches run outside the lock, each on its own tokio task, so one slow
    /// launch (a Modal GPU sandbox) holds up no other dispatch. The outcome lists
    /// the claimed tasks as dispatched; [`Self::settled`] waits for launches.
    pub(super) async fn dispatch_pass(&self) -> Result<(DispatchOutcome, Vec<Launching>)> {
        let claims = self.claim_locked().await?;
        let mut outcome = DispatchOutcome {
            waiting: claims.waiting,
            failed: claims.failed,
            ..DispatchOutcome::default()
        };
        let launches: Vec<Launching> = claims
            .claimed
            .into_iter()
            .map(|claimed| self.spawn_launch(claimed))
            .collect();
        outcome.dispatched = launches.iter().map(|l| l.placed.clone()).collect();
        Ok((outcome, launches))
    }

    /// The decisions of a pass and their claims, under the dispatch lock.
    async fn claim_locked(&self) -> Result<Claims> {
        let _guard = self.inner.dispatch_lock.lock().await;
        self.claim_pass()
    }

    /// The decisions of a pass and their claims (the caller holds the dispatch lock).
    fn claim_pass(&self) -> Result<Claims> {
        let db = &self.inner.db;
        let running = db.count_tasks_in(TaskStatus::Running)?;
        let queued = db.queued_tasks()?;
        let plan = queue::plan_dispatch(
            &queued,
            running,
            self.inner.config.orchestrator.max_concurrent_workers,
        );
        let mut claims = Claims {
            claimed: Vec::new(),
            waiting: plan.waiting,
            failed: Vec::new(),
        };
        for task_id in plan.dispatch_now {
            match self.claim_task(&task_id) {
                Ok(Some(claimed)) => claims.claimed.push(claimed),
                Ok(None) => {}
                Err(err) => claims.failed.push((task_id, as_coded(&err))),
            }
        }
        Ok(claims)
    }

    /// The pass's outcome once the launches of the tasks `wait_for` names have
    /// ended: each is dispatched, gone (cancelled while launching) or failed with
    /// its launch's coded error. The others stay listed as dispatched (launching).
    pub(super) async fn settled(
        mut outcome: DispatchOutcome,
        launches: Vec<Launching>,
        wait_for: impl Fn(&str) -> bool,
    ) -> DispatchOutcome {
        for launch in launches {
            let task_id = launch.placed.task_id.clone();
            if !wait_for(&task_id) {
                continue;
            }
            let result = launch.result().await;
            outcome.dispatched.retain(|d| d.task_id != task_id);
            match result {
                Ok(Some(dispatched)) => outcome.dispatched.push(dispatched),
                Ok(None) => {}
                Err(err) => outcome.failed.push((task_id, err)),
            }
        }
        outcome
    }

    /// Claims a queued task for a launch: a new attempt (session and container
    /// ids, its secret) recorded with the task running. `Ok(None)` when the task
    /// is no longer pending (cancelled meanwhile); a task its budget refuses
    /// fails here (E300), before anything is claimed.
    fn claim_task(&self, task_id: &str) -> Result<Option<Claimed>> {
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
        // Attended from the claim on: the reconciler leaves a container being
        // launched alone.
        self.attend(&ids.container_id);
        let env = lock(&self.inner.pending_env)
            .remove(task_id)
            .unwrap_or_default();
        Ok(Some(Claimed {
            task,
            ids,
            env,
            secret,
        }))
    }

    /// Starts a claimed task's launch on its own tokio task (tracked, so a
    /// stopping coordinator lets launches in flight finish first).
    fn spawn_launch(&self, claimed: Claimed) -> Launching {
        let placed = DispatchedTask {
            task_id: claimed.ids.task_id.clone(),
            session_id: claimed.ids.session_id.clone(),
            container_id: claimed.ids.container_id.clone(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let service = self.clone();
        let launch = async move {
            let task_id = claimed.ids.task_id.clone();
            let result = service
                .launch_claimed(claimed)
                .await
                .map_err(|err| as_coded(&err));
            lock(&service.inner.pending_workspace_progress).remove(&task_id);
            // Nobody may be waiting (an async submit, the daemon's pass).
            let _ = tx.send(result);
        };
        let mut launches = lock(&self.inner.launches);
        while launches.try_join_next().is_some() {}
        launches.spawn(launch);
        Launching { placed, done: rx }
    }

    /// Launches a claimed task. `Ok(None)` when the task ended (cancelled) while
    /// it was launching: what was started is stopped. A failed launch fails the
    /// task (its coded error, a `launch_failed` event) and is returned.
    pub(super) async fn launch_claimed(&self, claimed: Claimed) -> Result<Option<DispatchedTask>> {
        let Claimed {
            task,
            ids,
            env,
            secret,
        } = claimed;
        let db = &self.inner.db;
        let task_id = ids.task_id.as_str();
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
                db.set_container_state(&ids.container_id, ContainerState::Failed)?;
                // Cancelled while it was launching: the task's end is the cancel's.
                if db.get_task(task_id)?.map(|t| t.status) != Some(TaskStatus::Running) {
                    db.note(
                        NewCoordinatorEvent::new(
                            "launch_failed",
                            "warning",
                            format!(
                                "{task_id}: the launch of a task that ended meanwhile failed [{}] {}",
                                coded_err.code.code, coded_err.message
                            ),
                        )
                        .task(task_id)
                        .session(&ids.session_id)
                        .container(&ids.container_id),
                    );
                    return Ok(None);
                }
                let update = TaskUpdate {
                    error_code: Some(coded_err.code.code.to_string()),
                    error_message: Some(coded_err.message.clone()),
                    ..TaskUpdate::default()
                };
                db.transition_task(task_id, TaskStatus::Failed, &update)?;
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

    pub(super) async fn start_container(
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
        let resolved = self.resolve_launch(env, backend, &task.secrets)?;
        let task_config = crate::config::task_config(self.config(), &task.config_set)?;
        let workspace_progress = lock(&self.inner.pending_workspace_progress)
            .get(&task.id)
            .cloned();
        let launch = LaunchRequest {
            workspace_progress,
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
            secrets: task.secrets.clone(),
            region: task.region.clone(),
            on_gpu: Some(self.gpu_hook(ids)),
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
        let how = SessionStop {
            reason: &reason,
            code: "",
            record_checkpoint: true,
            catch_up_after_terminate: false,
        };
        // The session's end normally cancelled the task; if it did not (no
        // answer, or the agent journaled another outcome first), record it.
        let stopped = self
            .stop_session(&target, how, |agent_answered| {
                if let Some(current) = db.get_task(task_id)?
                    && current.status == TaskStatus::Running
                {
                    db.transition_task(
                        task_id,
                        TaskStatus::Cancelled,
                        &TaskUpdate {
                            error_code: Some(error_codes::SESSION_CANCELLED.code.into()),
                            error_message: Some(if agent_answered {
                                format!("the task was cancelled: {reason}")
                            } else {
                                format!(
                                    "the task was cancelled: {reason}; the agent did not answer and its container was terminated"
                                )
                            }),
                            ..TaskUpdate::default()
                        },
                    )?;
                }
                Ok(())
            })
            .await?;
        if let Some(checkpoint) = stopped.checkpoint_id {
            response.checkpoint_id = checkpoint;
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
                "agent_answered": stopped.agent_answered,
                "checkpoint_id": Some(&response.checkpoint_id).filter(|c| !c.is_empty()),
            })),
        );
        self.inner.signals.task_ended.notify_one();
        Ok(response)
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
        // The new attempt's own launch is waited for (outside the dispatch lock),
        // so a retry that fails to launch says so; others of the pass are not.
        let (outcome, launches) = self.dispatch_pass().await?;
        let outcome = Self::settled(outcome, launches, |id| id == task_id).await;
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
}

/// What a submit did: the reply (the task recorded and placed), and the task's
/// own launch when this submit's pass claimed it (still running: wait on it to
/// know when the launch ended, e.g. to report the workspace copy until then).
pub struct Submitted {
    pub response: SubmitTaskResponse,
    pub launch: Option<Launching>,
}

/// A task a dispatch pass claimed under the dispatch lock (recorded running with
/// its new attempt), to be launched outside it.
pub(super) struct Claimed {
    task: crate::db::TaskRecord,
    ids: LaunchIds,
    env: HashMap<String, String>,
    secret: SessionSecret,
}

/// What a pass decided under the dispatch lock.
struct Claims {
    claimed: Vec<Claimed>,
    waiting: Vec<(String, u32)>,
    failed: Vec<(String, CodedError)>,
}

/// A launch running outside the dispatch lock.
pub struct Launching {
    /// Where the task was placed (its new attempt's ids).
    pub placed: DispatchedTask,
    done: tokio::sync::oneshot::Receiver<Result<Option<DispatchedTask>, CodedError>>,
}

impl Launching {
    /// Waits for the launch to end: dispatched, `None` when the task ended while it
    /// launched, or the launch's coded error (the task failed with it).
    pub async fn result(self) -> Result<Option<DispatchedTask>, CodedError> {
        self.done.await.unwrap_or_else(|_| {
            // Only a coordinator stopping drops a launch before it ends.
            Err(CodedError::new(
                error_codes::INFRASTRUCTURE_ERROR,
                format!(
                    "the launch of task {} was cut short: the coordinator stopped (its reconciler decides what became of it)",
                    self.placed.task_id
                ),
            ))
        })
    }
}

/// Budget and resource flags must make sense before anything is recorded.
pub(super) fn validate_limits(limits: &TaskLimits, config: &Config) -> Result<(), CodedError> {
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
        crate::budget::parse_gpu_list(gpu, &config.rates)
            .map_err(|e| invalid(format!("--gpu: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code_of, fixture, fixture_with, held_task, running_task};
    use super::*;

    /// Passes that run at once (submits, `task dispatch`, the daemon's loop) decide
    /// and claim one at a time: never a task twice, never more than the free slots,
    /// oldest request first; the rest stay queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_passes_claim_each_task_once_and_only_the_free_slots() {
        let mut config = Config::defaults();
        config.orchestrator.max_concurrent_workers = 3;
        let f = fixture_with(config);
        let ids: Vec<String> = (0..10).map(|i| format!("task-q{i:02}")).collect();
        for id in &ids {
            held_task(f.db(), id, TaskLimits::default());
        }
        f.db().request_dispatch(&ids).unwrap();
        let expected = queue::plan_dispatch(&f.db().queued_tasks().unwrap(), 0, 3).dispatch_now;
        let mut passes = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let service = f.service.clone();
            passes.spawn(async move { service.claim_locked().await.unwrap() });
        }
        let mut claimed = Vec::new();
        while let Some(claims) = passes.join_next().await {
            let claims = claims.unwrap();
            assert!(claims.failed.is_empty());
            claimed.extend(claims.claimed.into_iter().map(|c| c.ids.task_id));
        }
        claimed.sort();
        assert_eq!(claimed, expected, "the three oldest, once each");
        assert_eq!(f.db().count_tasks_in(TaskStatus::Running).unwrap(), 3);
        assert_eq!(f.db().queued_tasks().unwrap().len(), 7);
        // A claimed container is attended from its claim on (the reconciler waits).
        assert_eq!(f.service.attended().len(), 3);
    }

    /// A launch that has not ended is never reported as dispatched by those who
    /// wait for it: its failure (or a launch cut short) is the caller's error.
    #[tokio::test]
    async fn waiting_for_launches_reports_each_outcome_and_never_a_cut_launch_as_success() {
        let placed = |id: &str| DispatchedTask {
            task_id: id.into(),
            session_id: format!("sess-{id}"),
            container_id: format!("ctr-{id}"),
        };
        let launching = |id: &str, result: Option<Result<Option<DispatchedTask>, CodedError>>| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Some(result) = result {
                tx.send(result).unwrap();
            }
            Launching {
                placed: placed(id),
                done: rx,
            }
        };
        let failure = CodedError::new(error_codes::AGENT_FAILED_TO_START, "no agent");
        let all = || {
            vec![
                launching("ok", Some(Ok(Some(placed("ok"))))),
                launching("gone", Some(Ok(None))),
                launching("bad", Some(Err(failure.clone()))),
                launching("cut", None),
            ]
        };
        let outcome = || DispatchOutcome {
            dispatched: ["ok", "gone", "bad", "cut"].map(placed).to_vec(),
            ..DispatchOutcome::default()
        };
        let waited = CoordinatorService::settled(outcome(), all(), |_| true).await;
        let dispatched: Vec<&str> = waited
            .dispatched
            .iter()
            .map(|d| d.task_id.as_str())
            .collect();
        assert_eq!(dispatched, ["ok"]);
        let failed: Vec<(&str, &str)> = waited
            .failed
            .iter()
            .map(|(id, e)| (id.as_str(), e.code.code))
            .collect();
        assert_eq!(
            failed,
            [
                ("bad", error_codes::AGENT_FAILED_TO_START.code),
                ("cut", error_codes::INFRASTRUCTURE_ERROR.code)
            ]
        );
        // Not waited for: still listed where they were placed (launching).
        let unwaited = CoordinatorService::settled(outcome(), all(), |id| id == "ok").await;
        assert_eq!(unwaited.dispatched.len(), 4);
        assert!(unwaited.failed.is_empty());
    }

    #[tokio::test]
    async fn a_dry_run_dispatch_plans_without_launching() {
        let f = fixture();
        held_task(f.db(), "task-a", TaskLimits::default());
        let plan = f
            .service
            .dispatch_tasks(&["task-a".into()], false, true, &HashMap::new())
            .await
            .unwrap();
        assert_eq!(plan.dispatched.len(), 1);
        assert_eq!(plan.dispatched[0].task_id, "task-a");
        assert!(plan.dispatched[0].container_id.is_empty());
        assert_eq!(plan.running, 0);
        // Nothing was recorded: the task is still held.
        assert_eq!(f.db().held_tasks().unwrap(), vec!["task-a".to_string()]);
        let task = f.db().get_task("task-a").unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Pending);
    }

    /// What a pass left `task_id` as, from an outcome that does not name it.
    fn placement_of(
        f: &super::super::testing::Fixture,
        task_id: &str,
    ) -> (String, String, bool, u32) {
        let mut placed = (String::new(), String::new(), false, 0);
        f.service
            .fill_placement(task_id, &DispatchOutcome::default(), |s, c, q, p| {
                placed = (s, c, q, p)
            })
            .unwrap();
        placed
    }

    /// The daemon's dispatch loop may take a task between a submit's or a
    /// retry's queueing it and that call's own pass: the reply still says
    /// where it went, from the task's row (CI saw a retry answer no session).
    #[tokio::test]
    async fn a_task_another_pass_placed_is_reported_where_it_went() {
        let f = fixture();
        let ids = running_task(f.db(), "task-p");
        assert_eq!(
            placement_of(&f, "task-p"),
            (ids.session_id, ids.container_id, false, 0)
        );
        held_task(f.db(), "task-q", TaskLimits::default());
        f.db().request_dispatch(&["task-q".to_string()]).unwrap();
        let (session, container, queued, position) = placement_of(&f, "task-q");
        assert!(session.is_empty() && container.is_empty());
        assert!(queued, "still pending: queued");
        assert!(position >= 1);
        f.service.cancel_task("task-q", "").await.unwrap();
        assert_eq!(
            placement_of(&f, "task-q"),
            (String::new(), String::new(), false, 0),
            "cancelled while queued: placed nowhere"
        );
        // The other pass's launch failed: this call says so, with its code.
        let failed = running_task(f.db(), "task-f");
        f.db()
            .transition_task(
                "task-f",
                TaskStatus::Failed,
                &TaskUpdate {
                    error_code: Some(error_codes::CLAUDE_CODE_NOT_INSTALLED.code.into()),
                    error_message: Some("no claude here".into()),
                    ..TaskUpdate::default()
                },
            )
            .unwrap();
        f.db()
            .set_container_state(&failed.container_id, ContainerState::Failed)
            .unwrap();
        let err = f
            .service
            .fill_placement("task-f", &DispatchOutcome::default(), |_, _, _, _| {
                panic!("a failed launch is placed nowhere")
            })
            .unwrap_err();
        assert_eq!(code_of(&err), error_codes::CLAUDE_CODE_NOT_INSTALLED.code);
        assert!(format!("{err:#}").contains("no claude here"), "{err:#}");
    }

    #[tokio::test]
    async fn dispatching_an_unknown_or_running_task_is_refused() {
        let f = fixture();
        let err = f
            .service
            .dispatch_tasks(&["task-none".into()], false, true, &HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), error_codes::TASK_NOT_FOUND.code);
        running_task(f.db(), "task-r");
        let err = f
            .service
            .dispatch_tasks(&["task-r".into()], false, false, &HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), error_codes::ILLEGAL_TRANSITION.code);
    }

    #[tokio::test]
    async fn a_pending_task_is_cancelled_at_once_with_its_reason() {
        let f = fixture();
        held_task(f.db(), "task-c", TaskLimits::default());
        let response = f
            .service
            .cancel_task("task-c", "  not needed ")
            .await
            .unwrap();
        assert_eq!(response.status, "cancelled");
        assert!(response.container_id.is_empty());
        let task = f.db().get_task("task-c").unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Cancelled);
        assert_eq!(
            task.error_code.as_deref(),
            Some(error_codes::SESSION_CANCELLED.code)
        );
        assert_eq!(
            task.error_message.as_deref(),
            Some("the task was cancelled: not needed")
        );
        // Once ended, it cannot be cancelled again.
        let err = f.service.cancel_task("task-c", "").await.unwrap_err();
        assert_eq!(code_of(&err), error_codes::ILLEGAL_TRANSITION.code);
    }

    #[tokio::test]
    async fn deleting_is_all_or_nothing_and_only_for_ended_tasks() {
        let f = fixture();
        held_task(f.db(), "task-done", TaskLimits::default());
        f.service.cancel_task("task-done", "").await.unwrap();
        held_task(f.db(), "task-held", TaskLimits::default());
        let both = ["task-done".to_string(), "task-held".to_string()];
        let err = f.service.delete_tasks(&both).await.unwrap_err();
        assert_eq!(code_of(&err), error_codes::TASK_STILL_ACTIVE.code);
        assert!(f.db().get_task("task-done").unwrap().is_some());
        let deleted = f
            .service
            .delete_tasks(&["task-done".to_string()])
            .await
            .unwrap();
        assert_eq!(deleted.deleted, vec!["task-done".to_string()]);
        assert!(f.db().get_task("task-done").unwrap().is_none());
    }

    #[test]
    fn limits_that_make_no_sense_are_refused_before_anything_is_recorded() {
        let config = Config::defaults();
        let bad = [
            TaskLimits {
                max_cost_usd: Some(0.0),
                ..TaskLimits::default()
            },
            TaskLimits {
                cpu: Some(f64::NAN),
                ..TaskLimits::default()
            },
            TaskLimits {
                memory_mb: Some(0),
                ..TaskLimits::default()
            },
            TaskLimits {
                gpu: Some("warp-drive".into()),
                ..TaskLimits::default()
            },
        ];
        for limits in bad {
            let err = validate_limits(&limits, &config).unwrap_err();
            assert_eq!(err.code, error_codes::INVALID_INPUT, "{limits:?}");
        }
        validate_limits(&TaskLimits::default(), &config).unwrap();
    }
}
