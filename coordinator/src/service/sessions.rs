//! Sessions and their checkpoints: stopping a session's agent, resume and
//! rollback, manual checkpoints, and reading a session's store back from its
//! volume (durability, `checkpoint verify`/`repair`).

use super::resume::{self, CheckpointChoice, ResumePlan, StoreFacts};
use super::*;

/// Why a session command cannot reach a session, and what continues it.
pub fn session_not_running(session: &crate::db::SessionRecord) -> String {
    format!(
        "session {id} is not running (it is {status}); `parhelia resume {id}` continues it",
        id = session.id,
        status = session.status
    )
}

impl CoordinatorService {
    /// Asks an agent to stop and waits for its reply (it replies once the
    /// session's end is journaled). The agent's `Stop`: a final checkpoint, then
    /// `SessionFinished`. With a limit's `code` (E300) the session ends failed
    /// with it, not cancelled.
    async fn stop_agent(
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

    /// Stopping a session's live container, written once for `task cancel`, the
    /// budget watchdog and resume: the stop is recorded on the container, its agent
    /// asked to stop (it takes a final checkpoint, then journals the session's end
    /// and replies), else the container is terminated; the journal tail is stored
    /// (the follower may be slower, or gone). Then `settle` does the caller's own
    /// bookkeeping (told whether the agent answered), the session's latest
    /// checkpoint is recorded on it (`how.record_checkpoint`), and the container
    /// is waited for, recorded terminated once it is gone.
    pub(super) async fn stop_session(
        &self,
        target: &ContainerRef,
        how: SessionStop<'_>,
        settle: impl FnOnce(bool) -> Result<()>,
    ) -> Result<SessionStopped> {
        let db = &self.inner.db;
        let container_id = &target.container_id;
        db.request_container_stop(container_id)?;
        let grace = Duration::from_millis(self.inner.config.agent.stop_grace_ms);
        let stopped = self.stop_agent(target, how.reason, grace, how.code).await;
        if let Err(err) = &stopped {
            tracing::warn!(task_id = %target.task_id, %container_id, "the agent did not stop on request ({err:#}); terminating its container");
            self.inner.backend.terminate(container_id).await?;
        }
        // The agent replied once its session's end was durable: store it now.
        if (stopped.is_ok() || how.catch_up_after_terminate)
            && let Err(err) = catch_up_from_journal(db, self.inner.backend.as_ref(), target).await
        {
            tracing::warn!(task_id = %target.task_id, %container_id, "reading the journal after stop failed: {err:#}");
        }
        let agent_answered = stopped.is_ok();
        settle(agent_answered)?;
        let mut checkpoint_id = None;
        if how.record_checkpoint {
            let session_volume = match db.get_session(&target.session_id)? {
                Some(s) => Some(
                    self.readable_volume(&s.id, PathBuf::from(&s.volume_dir))
                        .await,
                ),
                None => None,
            };
            if let Some(volume) = session_volume
                && let Some(checkpoint) =
                    recovery::latest_checkpoint_id(db, &target.session_id, &volume)
            {
                db.set_session_checkpoint(&target.session_id, &checkpoint)?;
                checkpoint_id = Some(checkpoint);
            }
        }
        let gone = self
            .wait_until_gone(container_id, grace + Duration::from_secs(5))
            .await;
        if gone {
            db.set_container_state(container_id, ContainerState::Terminated)?;
        }
        Ok(SessionStopped {
            agent_answered,
            checkpoint_id,
            gone,
        })
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
    pub(super) async fn mark_durable(
        &self,
        session_id: &str,
        store_dir: &Path,
        only: Option<&BTreeSet<String>>,
    ) -> Result<usize> {
        let db = Arc::clone(&self.inner.db);
        let known = db.durable_checkpoints(session_id)?;
        let (dir, sid) = (store_dir.to_path_buf(), session_id.to_string());
        let only = only.cloned();
        let checkpoint = &self.inner.config.agent.checkpoint;
        let (limits, lock_wait) = (checkpoint.read_limits(), checkpoint.lock_wait());
        let verified = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let store = checkpoints::open_store_at(&dir, &limits, lock_wait)?;
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
    /// commits in the background, so a checkpoint may need a few passes). Only
    /// the events stored since the last pass are read; the checkpoints not yet
    /// durable are kept and retried ([`super::stores::DurabilityQueue`]).
    pub async fn verify_durability(&self) -> Result<usize> {
        let backend = plan::BackendKind::Modal;
        let pending = {
            let mut queue = lock(&self.inner.durability);
            queue.refresh(&self.inner.db, backend.as_str())?;
            queue.pending().clone()
        };
        let mut total = 0;
        for (session_id, wanted) in pending {
            let on_backend = |s: &crate::db::SessionRecord| -> Result<bool> {
                Ok(self
                    .inner
                    .db
                    .get_task(&s.task_id)?
                    .is_some_and(|t| t.backend == backend.as_str()))
            };
            let session = match self.inner.db.get_session(&session_id)? {
                Some(session) if on_backend(&session)? => session,
                // Deleted, or moved to another backend: nothing to read back.
                _ => {
                    lock(&self.inner.durability).forget_session(&session_id);
                    continue;
                }
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
            let durable = self.inner.db.durable_checkpoints(&session_id)?;
            lock(&self.inner.durability).settled(&session_id, &durable);
        }
        Ok(total)
    }

    /// A local directory whose `checkpoints/` is the session's store as its
    /// volume has it (for a remote volume: the mirror, read back first).
    pub(super) async fn readable_volume(&self, session_id: &str, volume_dir: PathBuf) -> PathBuf {
        match self.inner.backend.store_dir(session_id, &volume_dir).await {
            Ok(Some(store)) => store.parent().map(Path::to_path_buf).unwrap_or(volume_dir),
            Ok(None) => volume_dir,
            Err(err) => {
                tracing::warn!(%session_id, "reading the checkpoint store back failed: {err:#}");
                volume_dir
            }
        }
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
        let session = db.get_session(&r.session_id)?;
        let task = match &session {
            Some(s) => db.get_task(&s.task_id)?,
            None => None,
        };
        // Where it ran, and where it goes on.
        let from_kind = self.inner.backends.kind_of_session(&r.session_id);
        let plan = resume::plan_resume(&r, session.as_ref(), task.as_ref(), from_kind)?;
        let (Some(session), Some(task)) = (session, task) else {
            unreachable!("plan_resume refuses a missing session or task");
        };
        let target_backend = self.inner.backends.get(plan.to_kind)?;

        // Its files become a checkpoint first when the backend still holds them (see
        // `ResumePlan::salvage_first`).
        if let Some(previous) = &plan.salvage_first
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
        // The checkpoint, verified before anything changes (for a remote volume: as
        // read back from it).
        let mut choice = self.resume_checkpoint(&plan, &r.checkpoint_id).await?;
        for s in &choice.skipped {
            tracing::warn!(session_id = %session.id, checkpoint_id = %s.checkpoint_id, code = s.code, "resume skips a checkpoint: {}", s.reason);
        }

        // A session continues only under a ceiling it has not reached.
        let standing = db.standing(Some(&task.id), &self.config().budget, ids::now_ms())?;
        if let Some(crossing) = standing.exceeded() {
            return Err(resume::budget_refusal(&task.id, &crossing).into());
        }
        let env: HashMap<String, String> = r.env.clone().into_iter().collect();
        let resolved = self.resolve_launch(&env, plan.to_kind, &task.secrets)?;
        let secret = db
            .session_secret(&session.id)?
            .context("the session has no secret")?;

        // A previous container that is not live may still have left
        // processes behind (a killed agent's tmux and Claude Code): end them
        // before another agent takes the workspace.
        if let Some(previous) = &plan.clean_up
            && let Err(err) = self.inner.backend.terminate(previous).await
        {
            tracing::warn!(container_id = %previous, "cleaning up the previous container failed: {err:#}");
        }

        let container_id = ids::new_container_id();
        // Another backend: its volume gets the store first (what it lacks).
        let moved = if plan.to_kind != plan.from_kind {
            let layout = self.layout_on(target_backend.as_ref(), &session.id, &container_id);
            let store_dir = self
                .inner
                .backend
                .store_dir(&session.id, &plan.volume)
                .await?
                .ok_or_else(|| {
                    coded(
                        error_codes::CHECKPOINT_NOT_FOUND,
                        resume::nothing_to_resume(&task.id, &session.id),
                    )
                })?;
            target_backend
                .import_store(&session.id, &layout.volume_dir, &store_dir)
                .await
                .with_context(|| {
                    format!(
                        "copying session {}'s checkpoints to the {} backend",
                        session.id,
                        plan.to_kind.as_str()
                    )
                })?;
            tracing::info!(session_id = %session.id, from = plan.from_kind.as_str(), to = plan.to_kind.as_str(), "session moves to another backend");
            Some(crate::db::SessionMove {
                backend: plan.to_kind.as_str().to_string(),
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
        if moved.is_some() {
            // Its checkpoints announced before the move are now the new backend's.
            lock(&self.inner.durability).rescan_session(&session.id);
        }
        self.attend(&container_id);
        let mut response = ResumeSessionResponse {
            task_id: task.id.clone(),
            session_id: session.id.clone(),
            container_id: container_id.clone(),
            checkpoint_id: choice.checkpoint_id.clone().unwrap_or_default(),
            stopped_container_id: String::new(),
            skipped: choice.skipped_wire(),
        };
        if let Some(old) = &plan.stop_first {
            // Two agents must never write one workspace: the old one goes first.
            let how = SessionStop {
                reason: plan.stop_reason,
                code: "",
                record_checkpoint: false,
                catch_up_after_terminate: true,
            };
            if !self.stop_session(old, how, |_| Ok(())).await?.gone {
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
            if plan.newest {
                choice = self.resume_checkpoint(&plan, "").await?;
                response.checkpoint_id = choice.checkpoint_id.clone().unwrap_or_default();
                response.skipped = choice.skipped_wire();
            }
        }

        let prompt = resume::resume_prompt(
            choice.starts_over,
            &task.prompt,
            &r.message,
            r.rollback,
            plan.was_interrupted,
        );
        let task_config = crate::config::task_config(self.config(), &task.config_set)?;
        let launch = LaunchRequest {
            backend: plan.to_kind,
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
                resume: !choice.starts_over,
                restore_checkpoint: choice.checkpoint_id.clone(),
                max_budget_usd,
                prior_cost_usd: Some(db.session_spend_usd(&session.id)?),
                charged_elsewhere: db.left_over_charges(&session.id)?,
            },
            // The session's workspace is already there; the checkpoint restores it.
            workspace_source: None,
            copy_limits: crate::backend::workspace_copy::CopyLimits::UNLIMITED,
            workspace_progress: None,
            claude_bin: resolved.claude_bin,
            agent_bin: resolved.agent_bin,
            env: resolved.agent_env,
            secret,
            secrets: task.secrets.clone(),
            region: task.region.clone(),
            on_gpu: None,
            isolation: resolved.isolation,
        };
        let launch = LaunchRequest {
            on_gpu: Some(self.gpu_hook(&launch.ids)),
            ..launch
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
                let (kind, verb) = ResumePlan::event(r.rollback);
                db.note(
                    NewCoordinatorEvent::new(
                        kind,
                        "info",
                        format!(
                            "{} {verb} from {} on {container_id}",
                            session.id,
                            choice
                                .checkpoint_id
                                .as_deref()
                                .unwrap_or("its starting workspace (no checkpoint was taken)"),
                        ),
                    )
                    .task(&task.id)
                    .session(&session.id)
                    .container(&container_id)
                    .details(serde_json::json!({
                        "checkpoint_id": choice.checkpoint_id,
                        "stopped_container_id": Some(&response.stopped_container_id).filter(|c| !c.is_empty()),
                        "skipped": choice.skipped,
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

    /// Reads what the session's store says about the checkpoint to restore
    /// (`named`, or the newest restorable one) and chooses it
    /// ([`resume::choose_checkpoint`]).
    async fn resume_checkpoint(&self, plan: &ResumePlan, named: &str) -> Result<CheckpointChoice> {
        let (task_id, session_id) = (&plan.task_id, &plan.session_id);
        let newest = named.trim().is_empty();
        let choose = |facts| {
            resume::choose_checkpoint(task_id, session_id, plan.workspace_kept, newest, facts)
                .map_err(anyhow::Error::from)
        };
        let Some(store_dir) = self
            .inner
            .backend
            .store_dir(session_id, &plan.volume)
            .await?
        else {
            return choose(StoreFacts::NoStore);
        };
        let store = checkpoints::open_store_at(
            &store_dir,
            &self.inner.config.agent.checkpoint.read_limits(),
            self.inner.config.agent.checkpoint.lock_wait(),
        )?;
        let has_conversation = |id: &parhelia_checkpoint::CheckpointId| {
            store
                .load(id)
                .is_ok_and(|m| checkpoints::has_conversation(&m))
        };
        let facts = if newest {
            let (chosen, skipped) = checkpoints::newest_restorable(&store)?;
            StoreFacts::Newest {
                chosen: chosen.map(|c| (c.id.to_string(), has_conversation(&c.id))),
                skipped,
            }
        } else {
            let id = checkpoints::parse_id(named.trim())?;
            let list = store.list().map_err(|e| checkpoints::coded(&e))?;
            let needs_conversation = checkpoints::session_has_conversation(&store, &list);
            let unrestorable = checkpoints::unrestorable(&store, &id, needs_conversation);
            StoreFacts::Named {
                id: id.to_string(),
                has_conversation: unrestorable.is_none() && has_conversation(&id),
                unrestorable,
            }
        };
        choose(facts)
    }

    /// Where a running session's agent answers, through the backend that runs its
    /// container (one resolver for every session command, on every backend).
    /// E202 for an unknown session, E503 when it is not running or its agent
    /// does not announce an endpoint.
    pub async fn agent_endpoint(
        &self,
        session_id: &str,
        not_running: impl FnOnce(&crate::db::SessionRecord) -> String,
    ) -> Result<AgentEndpointResponse> {
        let db = &self.inner.db;
        let session = db.get_session(session_id)?.ok_or_else(|| {
            coded(
                error_codes::SESSION_NOT_FOUND,
                format!("session not found: {session_id}"),
            )
        })?;
        let container_id = match (&session.container_id, session.container_state) {
            (Some(id), Some(state)) if state.is_active() => id.clone(),
            _ => return Err(coded(error_codes::AGENT_UNREACHABLE, not_running(&session))),
        };
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
        })?
        .map_err(|e| {
            if crate::error::find_coded(&e).is_some() {
                e
            } else {
                coded(error_codes::AGENT_UNREACHABLE, not_running(&session))
            }
        })?;
        Ok(AgentEndpointResponse {
            container_id,
            uri: endpoint.uri,
        })
    }

    /// `checkpoint create`: a manual checkpoint of a running session.
    pub async fn checkpoint_session(
        &self,
        session_id: &str,
        message: &str,
    ) -> Result<CheckpointSessionResponse> {
        let AgentEndpointResponse { container_id, uri } = self
            .agent_endpoint(session_id, |_| {
                format!(
                    "session {session_id} is not running; its final checkpoint is its latest (`parhelia checkpoint list {session_id}`); `parhelia resume {session_id}` continues it"
                )
            })
            .await?;
        let secret = self
            .inner
            .db
            .session_secret(session_id)?
            .context("the session has no secret")?;
        let mut client = connect_agent(&uri, &secret).await?;
        let reply = client
            .create_checkpoint(parhelia_proto::CreateCheckpointRequest {
                message: message.to_string(),
            })
            .await
            .map_err(|status| crate::agent_client::refusal(&status, &container_id))?
            .into_inner();
        Ok(CheckpointSessionResponse {
            checkpoint_id: reply.checkpoint_id,
            container_id,
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

/// How [`CoordinatorService::stop_session`] stops a session: what differs
/// between its callers.
pub(super) struct SessionStop<'a> {
    /// Told to the agent (and journaled with the session's end).
    pub(super) reason: &'a str,
    /// A limit's code (E300) the session ends failed with, or "" (cancelled).
    pub(super) code: &'a str,
    /// Record the session's latest checkpoint on it (cancel, budget stop).
    pub(super) record_checkpoint: bool,
    /// Read the journal tail even when the agent had to be terminated (resume:
    /// the old container's events are in before a new one starts).
    pub(super) catch_up_after_terminate: bool,
}

/// What [`CoordinatorService::stop_session`] did.
#[derive(Debug)]
pub(super) struct SessionStopped {
    /// The agent replied to Stop (else its container was terminated).
    pub(super) agent_answered: bool,
    /// The latest checkpoint recorded on the session, if asked for and found.
    pub(super) checkpoint_id: Option<String>,
    /// The container was gone before the wait ran out.
    pub(super) gone: bool,
}

#[cfg(test)]
mod tests {
    use super::super::testing::{code_of, fixture, running_task};
    use super::*;

    #[tokio::test]
    async fn unknown_sessions_are_refused_with_e201() {
        let f = fixture();
        let r = ResumeSessionRequest {
            session_id: "s-none".into(),
            ..ResumeSessionRequest::default()
        };
        let err = f.service.resume_session(r).await.unwrap_err();
        assert_eq!(code_of(&err), error_codes::SESSION_NOT_FOUND.code);
        let err = f.service.fetch_store("s-none", false).await.unwrap_err();
        assert_eq!(code_of(&err), error_codes::SESSION_NOT_FOUND.code);
    }

    #[tokio::test]
    async fn a_session_that_is_not_running_cannot_be_checkpointed() {
        let f = fixture();
        let ids = running_task(f.db(), "task-k");
        f.db()
            .set_container_state(&ids.container_id, ContainerState::Terminated)
            .unwrap();
        let err = f
            .service
            .checkpoint_session(&ids.session_id, "by hand")
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), error_codes::AGENT_UNREACHABLE.code);
    }

    /// A spent budget refuses the resume (E300) after the checkpoint was chosen
    /// and before anything changes: the task stays interrupted, no container is
    /// added.
    #[tokio::test]
    async fn a_spent_budget_refuses_a_resume_before_anything_changes() {
        let f = fixture();
        let ids = running_task(f.db(), "task-p");
        f.db()
            .set_container_state(&ids.container_id, ContainerState::Terminated)
            .unwrap();
        f.db()
            .transition_task("task-p", TaskStatus::Interrupted, &TaskUpdate::default())
            .unwrap();
        f.db().set_ceilings(Some(0.0), None).unwrap();
        let r = ResumeSessionRequest {
            session_id: ids.session_id.clone(),
            ..ResumeSessionRequest::default()
        };
        let err = f.service.resume_session(r).await.unwrap_err();
        assert_eq!(code_of(&err), error_codes::BUDGET_EXCEEDED.code, "{err:#}");
        let task = f.db().get_task("task-p").unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Interrupted);
        assert_eq!(
            task.container_id.as_deref(),
            Some(ids.container_id.as_str())
        );
        assert_eq!(f.db().list_containers(None, None).unwrap().len(), 1);
    }

    #[test]
    fn an_agents_coded_refusal_keeps_its_code() {
        use crate::agent_client::refusal;
        let mut status = tonic::Status::aborted("checkpoint cp-1 does not verify");
        status
            .metadata_mut()
            .insert(error_codes::METADATA_KEY, "E620".parse().unwrap());
        let err = refusal(&status, "ctr-1");
        assert_eq!(code_of(&err), "E620");
        assert_eq!(
            find_coded(&err).unwrap().message,
            "checkpoint cp-1 does not verify"
        );
        // A code only in the message is no code: one wire form.
        let err = refusal(&tonic::Status::aborted("[E620] checkpoint cp-1"), "ctr-1");
        assert_eq!(code_of(&err), error_codes::AGENT_UNREACHABLE.code);
        let err = refusal(&tonic::Status::unavailable("connection refused"), "ctr-1");
        assert_eq!(code_of(&err), error_codes::AGENT_UNREACHABLE.code);
        assert!(
            find_coded(&err)
                .unwrap()
                .message
                .contains("connection refused")
        );
        let err = refusal(&tonic::Status::unauthenticated("no"), "ctr-1");
        assert_eq!(code_of(&err), error_codes::AGENT_AUTH_REJECTED.code);
    }
}
