//! The coordinator process: the control plane behind the CLI.
//!
//! One per state directory (an exclusive lock on `coordinator.lock`). It
//! serves the `Coordinator` gRPC service on `coordinator.sock` (mode 0600)
//! over the service layer ([`crate::service`]), runs one event follower per
//! live container (see [`crate::ingest`]), the dispatcher (a pass whenever a
//! task ends) and the reconciler (a pass every `poll_interval_seconds`; see
//! [`crate::reconciler`]). On start it re-attaches to every container whose
//! task is still running, so a restarted coordinator catches up from the
//! agents' journals.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use parhelia_proto::coordinator_server::{Coordinator, CoordinatorServer};
use parhelia_proto::{
    CancelTaskRequest, CancelTaskResponse, CheckpointSessionRequest, CheckpointSessionResponse,
    DeleteTasksRequest, DeleteTasksResponse, DispatchTasksRequest, DispatchTasksResponse,
    GetConfigRequest, GetConfigResponse, PingRequest, PingResponse, ReloadConfigRequest,
    ReloadConfigResponse, ResumeSessionRequest, ResumeSessionResponse, RetryTaskRequest,
    RetryTaskResponse, RunReconcilerRequest, RunReconcilerResponse, SetBudgetRequest,
    SetBudgetResponse, ShutdownRequest, ShutdownResponse, SubmitBudgetedTaskRequest,
    SubmitTaskProgress, SubmitTaskRequest, SubmitTaskResponse, TerminateContainerRequest,
    TerminateContainerResponse, TransferProgress, submit_task_progress,
};
use parhelia_proto::{DispatchTasksProgress, TaskTransferProgress, dispatch_tasks_progress};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::backend::local::LocalBackend;
use crate::db::Db;
use crate::error::{coded, find_coded};
use crate::error_codes;
use crate::plan::AgentSettings;
use crate::reconciler::PassOptions;
pub use crate::service::CoordinatorService;
use crate::state_dir::StateDir;

/// The configuration this process's coordinator runs with (one coordinator
/// per process): what `GetConfig` answers and what a reload compares with.
struct Effective {
    loaded: crate::config::LoadedConfig,
    loaded_at_ms: i64,
    flags: Vec<String>,
    /// The config files' contents when they were loaded (`None`: absent).
    files: Vec<(std::path::PathBuf, Option<String>)>,
}

static EFFECTIVE: std::sync::Mutex<Option<Effective>> = std::sync::Mutex::new(None);
/// A reload was asked for: [`run`] returns `RunEnd::Reload` after stopping.
static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The largest config file a reload reads (a config.toml is a few KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// How [`run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    Stopped,
    /// The configuration changed: run again to apply it.
    Reload,
}

fn effective() -> std::sync::MutexGuard<'static, Option<Effective>> {
    EFFECTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The config files a coordinator reads, with their contents now.
fn config_files(loaded: &crate::config::LoadedConfig) -> Vec<(std::path::PathBuf, Option<String>)> {
    loaded
        .files
        .iter()
        .map(|f| {
            let text = std::fs::metadata(&f.path)
                .ok()
                .filter(|m| m.len() <= MAX_CONFIG_BYTES)
                .and_then(|_| std::fs::read_to_string(&f.path).ok());
            (f.path.clone(), text)
        })
        .collect()
}

/// Loads the configuration again; `Ok(Some(text))` when its effective
/// values differ from the running ones (a reload is due).
fn reload_check(state: &StateDir) -> Result<Option<String>, crate::error::CodedError> {
    let flags = effective()
        .as_ref()
        .map(|e| e.flags.clone())
        .unwrap_or_default();
    let fresh = crate::config::load(state.root(), &flags)?;
    let text = crate::config::show_text(&fresh);
    let same = effective()
        .as_ref()
        .is_some_and(|e| e.loaded.settings == fresh.settings);
    Ok((!same).then_some(text))
}

/// Asks the coordinator to stop and run again with the configuration as
/// it is now.
fn request_reload(service: &CoordinatorService) {
    RELOAD.store(true, std::sync::atomic::Ordering::SeqCst);
    service.request_shutdown();
}

/// Watches the config files: when their contents change and the new
/// configuration loads with different values, the coordinator reloads.
/// A file that does not load is reported (once per content) and the
/// running configuration stays.
async fn config_watch_loop(service: CoordinatorService) {
    let state = service.inner.state.clone();
    let mut reported: Option<Vec<(std::path::PathBuf, Option<String>)>> = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = {
            let guard = effective();
            let Some(e) = guard.as_ref() else { continue };
            let now = config_files(&e.loaded);
            if now == e.files {
                continue;
            }
            now
        };
        if reported.as_ref() == Some(&now) {
            continue;
        }
        match reload_check(&state) {
            Ok(Some(_)) => {
                tracing::info!("config.toml changed: reloading the configuration");
                request_reload(&service);
                return;
            }
            Ok(None) => {
                if let Some(e) = effective().as_mut() {
                    e.files = now;
                }
            }
            Err(err) => {
                tracing::error!(
                    "config.toml changed but does not load; keeping the running configuration: [{}] {}",
                    err.code.code,
                    err.message
                );
                reported = Some(now);
            }
        }
    }
}

/// The exclusive lock that makes this process the state directory's only
/// coordinator. Held until the process exits.
pub struct CoordinatorLock {
    _file: File,
}

impl CoordinatorLock {
    pub fn acquire(state: &StateDir) -> Result<Self> {
        let path = state.lock_path();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(coded(
                    error_codes::COORDINATOR_ALREADY_RUNNING,
                    format!(
                        "a coordinator is already running for {}",
                        state.root().display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        // The pid is informational (for people reading the file).
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

/// Maps any error to a gRPC status: coded errors keep their code; others
/// become INTERNAL (and are logged here, where they are handled).
fn to_status(err: anyhow::Error) -> Status {
    match find_coded(&err) {
        Some(coded) => coded.to_status(),
        None => {
            tracing::error!("internal error: {err:#}");
            Status::internal(format!("{err:#}"))
        }
    }
}

/// A request's limits as the service's (0 or empty: none).
fn task_limits(limits: parhelia_proto::TaskLimits) -> crate::budget::TaskLimits {
    crate::budget::TaskLimits {
        max_cost_usd: Some(limits.max_cost_usd).filter(|x| *x != 0.0),
        gpu: Some(limits.gpu).filter(|g| !g.is_empty()),
        cpu: Some(limits.cpu).filter(|x| *x != 0.0),
        memory_mb: Some(limits.memory_mb).filter(|x| *x != 0),
        timeout_seconds: Some(limits.timeout_seconds).filter(|x| *x != 0),
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            state_dir: self.inner.state.root().to_string_lossy().into_owned(),
            coordinator_id: self.coordinator_id().to_string(),
        }))
    }

    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        self.submit(request.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!("shutdown requested");
        self.request_shutdown();
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn dispatch_tasks(
        &self,
        request: Request<DispatchTasksRequest>,
    ) -> Result<Response<DispatchTasksResponse>, Status> {
        let r = request.into_inner();
        self.dispatch_tasks(&r.task_ids, r.all, r.dry_run, &r.env)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    type DispatchTasksWithProgressStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<DispatchTasksProgress, Status>> + Send>,
    >;

    async fn dispatch_tasks_with_progress(
        &self,
        request: Request<DispatchTasksRequest>,
    ) -> Result<Response<Self::DispatchTasksWithProgressStream>, Status> {
        use crate::backend::workspace_copy::{CopyProgress, WorkspaceStage};
        let r = request.into_inner();
        // As SubmitBudgetedTaskWithProgress: the transfers only replace the latest
        // figures of each (task, stage); this task sends the changed ones in order.
        type Latest = std::collections::BTreeMap<(String, WorkspaceStage), CopyProgress>;
        let (latest_tx, mut latest_rx) = tokio::sync::watch::channel(Latest::new());
        let transfers: crate::service::TaskTransfers = Arc::new(
            move |task_id: &str, stage: WorkspaceStage, p: CopyProgress| {
                latest_tx.send_modify(|latest| {
                    latest.insert((task_id.to_string(), stage), p);
                });
            },
        );
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let service = self.clone();
        tokio::spawn(async move {
            let dispatch = service.dispatch_tasks_reporting(
                &r.task_ids,
                r.all,
                r.dry_run,
                &r.env,
                Some(transfers),
            );
            tokio::pin!(dispatch);
            let mut sent = Latest::new();
            let unsent = |latest: &Latest, sent: &mut Latest| {
                let mut out = Vec::new();
                for (key, p) in latest {
                    if sent.get(key) != Some(p) {
                        sent.insert(key.clone(), *p);
                        out.push(DispatchTasksProgress {
                            event: Some(dispatch_tasks_progress::Event::Workspace(
                                TaskTransferProgress {
                                    task_id: key.0.clone(),
                                    stage: key.1.as_str().to_string(),
                                    figures: Some(TransferProgress {
                                        files_done: p.files_done,
                                        files_total: p.files_total,
                                        bytes_done: p.bytes_done,
                                        bytes_total: p.bytes_total,
                                    }),
                                },
                            )),
                        });
                    }
                }
                out
            };
            let result = loop {
                tokio::select! {
                    result = &mut dispatch => break result,
                    Ok(()) = latest_rx.changed() => {
                        let latest = latest_rx.borrow_and_update().clone();
                        for m in unsent(&latest, &mut sent) {
                            let _ = tx.send(Ok(m)).await;
                        }
                    }
                }
            };
            let latest = latest_rx.borrow_and_update().clone();
            for m in unsent(&latest, &mut sent) {
                let _ = tx.send(Ok(m)).await;
            }
            let last = match result {
                Ok(response) => Ok(DispatchTasksProgress {
                    event: Some(dispatch_tasks_progress::Event::Dispatched(response)),
                }),
                Err(err) => Err(to_status(err)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let r = request.into_inner();
        CoordinatorService::cancel_task(self, &r.task_id, &r.reason)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn resume_session(
        &self,
        request: Request<ResumeSessionRequest>,
    ) -> Result<Response<ResumeSessionResponse>, Status> {
        CoordinatorService::resume_session(self, request.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn checkpoint_session(
        &self,
        request: Request<CheckpointSessionRequest>,
    ) -> Result<Response<CheckpointSessionResponse>, Status> {
        let r = request.into_inner();
        CoordinatorService::checkpoint_session(self, &r.session_id, &r.message)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn agent_endpoint(
        &self,
        request: Request<parhelia_proto::AgentEndpointRequest>,
    ) -> Result<Response<parhelia_proto::AgentEndpointResponse>, Status> {
        let r = request.into_inner();
        CoordinatorService::agent_endpoint(self, &r.session_id, crate::service::session_not_running)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn push_store(
        &self,
        request: Request<parhelia_proto::PushStoreRequest>,
    ) -> Result<Response<parhelia_proto::PushStoreResponse>, Status> {
        let r = request.into_inner();
        CoordinatorService::push_store(
            self,
            &r.session_id,
            std::path::Path::new(&r.store_dir),
            &r.put,
            &r.remove,
        )
        .await
        .map(|()| Response::new(parhelia_proto::PushStoreResponse {}))
        .map_err(to_status)
    }

    async fn fetch_store(
        &self,
        request: Request<parhelia_proto::FetchStoreRequest>,
    ) -> Result<Response<parhelia_proto::FetchStoreResponse>, Status> {
        let r = request.into_inner();
        CoordinatorService::fetch_store(self, &r.session_id, r.fresh)
            .await
            .map(|dir| {
                Response::new(parhelia_proto::FetchStoreResponse {
                    store_dir: dir
                        .map(|d| d.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                })
            })
            .map_err(to_status)
    }

    async fn modal_op(
        &self,
        request: Request<parhelia_proto::ModalOpRequest>,
    ) -> Result<Response<parhelia_proto::ModalOpResponse>, Status> {
        crate::modal_ops::run(self, request.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    type ModalSetupWithProgressStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<parhelia_proto::ModalSetupProgress, Status>>
                + Send,
        >,
    >;

    async fn modal_setup_with_progress(
        &self,
        request: Request<parhelia_proto::ModalSetupRequest>,
    ) -> Result<Response<Self::ModalSetupWithProgressStream>, Status> {
        use parhelia_proto::modal_setup_progress::Event;
        let force_build = request.into_inner().force_build;
        let modal = self.modal_backend().map_err(to_status)?;
        // A few messages per setup: unbounded, so a step is never held up by the reader.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let started = tx.clone();
            let on_step = move |step: &str| {
                let _ = started.send(Ok(parhelia_proto::ModalSetupProgress {
                    event: Some(Event::StepStarted(step.to_string())),
                }));
            };
            let last = match crate::modal_ops::setup(&modal, force_build, &on_step).await {
                Ok(report) => Ok(parhelia_proto::ModalSetupProgress {
                    event: Some(Event::Report(report)),
                }),
                Err(err) => Err(to_status(err)),
            };
            let _ = tx.send(last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn retry_task(
        &self,
        request: Request<RetryTaskRequest>,
    ) -> Result<Response<RetryTaskResponse>, Status> {
        let r = request.into_inner();
        CoordinatorService::retry_task(self, &r.task_id, &r.env)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn delete_tasks(
        &self,
        request: Request<DeleteTasksRequest>,
    ) -> Result<Response<DeleteTasksResponse>, Status> {
        CoordinatorService::delete_tasks(self, &request.into_inner().task_ids)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn terminate_container(
        &self,
        request: Request<TerminateContainerRequest>,
    ) -> Result<Response<TerminateContainerResponse>, Status> {
        CoordinatorService::terminate_container(self, &request.into_inner().container_id)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn submit_budgeted_task(
        &self,
        request: Request<SubmitBudgetedTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let r = request.into_inner();
        let limits = task_limits(r.limits.unwrap_or_default());
        self.submit_with_limits(r.task.unwrap_or_default(), limits)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    type SubmitBudgetedTaskWithProgressStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<SubmitTaskProgress, Status>> + Send>,
    >;

    async fn submit_budgeted_task_with_progress(
        &self,
        request: Request<SubmitBudgetedTaskRequest>,
    ) -> Result<Response<Self::SubmitBudgetedTaskWithProgressStream>, Status> {
        let r = request.into_inner();
        let limits = task_limits(r.limits.unwrap_or_default());
        let task = r.task.unwrap_or_default();
        // The transfers (blocking threads) only replace the latest figures of
        // their stage; this task sends each stage's new values, in stage order,
        // so a slow reader never holds a transfer up and never gets a backlog,
        // yet always gets a stage's last figures (its completion) before the
        // next stage's.
        use crate::backend::workspace_copy::{CopyProgress, WorkspaceStage};
        type Latest = [Option<CopyProgress>; WorkspaceStage::ALL.len()];
        let (copied_tx, mut copied_rx) = tokio::sync::watch::channel::<Latest>(Latest::default());
        let progress = crate::backend::workspace_copy::WorkspaceProgress(Arc::new(
            move |stage: WorkspaceStage, p: CopyProgress| {
                copied_tx.send_modify(|latest| latest[stage as usize] = Some(p));
            },
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let service = self.clone();
        tokio::spawn(async move {
            let submit = service.submit_reporting(task, limits, Some(progress));
            tokio::pin!(submit);
            let message = |stage: WorkspaceStage, p: CopyProgress| {
                let figures = TransferProgress {
                    files_done: p.files_done,
                    files_total: p.files_total,
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                };
                SubmitTaskProgress {
                    event: Some(match stage {
                        WorkspaceStage::Copy => submit_task_progress::Event::WorkspaceCopy(figures),
                        WorkspaceStage::Checkpoint => {
                            submit_task_progress::Event::WorkspaceCheckpoint(figures)
                        }
                        WorkspaceStage::Upload => {
                            submit_task_progress::Event::WorkspaceUpload(figures)
                        }
                    }),
                }
            };
            let mut sent = Latest::default();
            // The figures of each stage that changed since they were last sent.
            let unsent = |latest: &Latest, sent: &mut Latest| {
                let mut out = Vec::new();
                for stage in WorkspaceStage::ALL {
                    let i = stage as usize;
                    if let Some(p) = latest[i]
                        && sent[i] != Some(p)
                    {
                        sent[i] = Some(p);
                        out.push(message(stage, p));
                    }
                }
                out
            };
            let result = loop {
                tokio::select! {
                    result = &mut submit => break result,
                    Ok(()) = copied_rx.changed() => {
                        let latest = *copied_rx.borrow_and_update();
                        for m in unsent(&latest, &mut sent) {
                            // A reader that went away does not stop the submit.
                            let _ = tx.send(Ok(m)).await;
                        }
                    }
                }
            };
            let submitted = match result {
                Ok(submitted) => submitted,
                Err(err) => {
                    let latest = *copied_rx.borrow_and_update();
                    for m in unsent(&latest, &mut sent) {
                        let _ = tx.send(Ok(m)).await;
                    }
                    let _ = tx.send(Err(to_status(err))).await;
                    return;
                }
            };
            // The transfers' figures so far, then the reply as soon as the task is
            // recorded and placed; a reader that stays (`task create --sync`) then
            // sees the transfers until the launch ends, when the stream ends. The
            // launch runs on whether anyone reads.
            let latest = *copied_rx.borrow_and_update();
            for m in unsent(&latest, &mut sent) {
                let _ = tx.send(Ok(m)).await;
            }
            let reply = SubmitTaskProgress {
                event: Some(submit_task_progress::Event::Submitted(submitted.response)),
            };
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
            let Some(launch) = submitted.launch else {
                return;
            };
            let ended = launch.result();
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    _ = &mut ended => break,
                    Ok(()) = copied_rx.changed() => {
                        let latest = *copied_rx.borrow_and_update();
                        for m in unsent(&latest, &mut sent) {
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            // The transfers' last figures, if the launch ended before they were sent.
            let latest = *copied_rx.borrow_and_update();
            for m in unsent(&latest, &mut sent) {
                let _ = tx.send(Ok(m)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn set_budget(
        &self,
        request: Request<SetBudgetRequest>,
    ) -> Result<Response<SetBudgetResponse>, Status> {
        CoordinatorService::set_budget(self, &request.into_inner())
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_config(
        &self,
        _request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let guard = effective();
        let e = guard
            .as_ref()
            .ok_or_else(|| Status::unavailable("the coordinator is starting"))?;
        let config_json = serde_json::to_string(&serde_json::json!({
            "files": e.loaded.files,
            "settings": e.loaded.settings,
            "unknown_keys": e.loaded.unknown_keys,
        }))
        .map_err(|err| Status::internal(format!("encoding the config: {err}")))?;
        Ok(Response::new(GetConfigResponse {
            config_toml: crate::config::show_text(&e.loaded),
            config_json,
            loaded_at_ms: e.loaded_at_ms,
            flags: e.flags.clone(),
        }))
    }

    async fn reload_config(
        &self,
        _request: Request<ReloadConfigRequest>,
    ) -> Result<Response<ReloadConfigResponse>, Status> {
        match reload_check(&self.inner.state) {
            Ok(Some(text)) => {
                tracing::info!("reload requested: the configuration changed");
                request_reload(self);
                Ok(Response::new(ReloadConfigResponse {
                    changed: true,
                    config_toml: text,
                }))
            }
            Ok(None) => Ok(Response::new(ReloadConfigResponse {
                changed: false,
                config_toml: effective()
                    .as_ref()
                    .map(|e| crate::config::show_text(&e.loaded))
                    .unwrap_or_default(),
            })),
            Err(err) => Err(err.to_status()),
        }
    }

    async fn run_reconciler(
        &self,
        request: Request<RunReconcilerRequest>,
    ) -> Result<Response<RunReconcilerResponse>, Status> {
        let r = request.into_inner();
        let report = self
            .reconcile(PassOptions {
                trigger: if r.trigger.is_empty() {
                    "manual".into()
                } else {
                    r.trigger
                },
                dry_run: r.dry_run,
                terminate_orphans: r.terminate_orphans,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(RunReconcilerResponse {
            report: Some((&report).into()),
        }))
    }
}

/// The dispatcher: a pass whenever a task ends (a slot frees up), and every
/// poll interval as a safety net.
/// The budget watchdog's hands: stops the sessions the watchdog decided to
/// stop (in `ingest`), each in its own task; at start, those a previous
/// coordinator decided to stop but did not finish stopping.
async fn budget_loop(service: CoordinatorService) {
    let shutdown = service.shutdown_requested();
    tokio::pin!(shutdown);
    let signals = Arc::clone(&service.inner.signals);
    let mut task_ids = service.db().pending_budget_stops().unwrap_or_else(|err| {
        tracing::warn!("cannot read pending budget stops: {err:#}");
        Vec::new()
    });
    loop {
        for task_id in task_ids.drain(..) {
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(err) = service.stop_for_budget(&task_id).await {
                    tracing::warn!(%task_id, "budget stop failed: {err:#}");
                }
            });
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = signals.budget_stop.notified() => task_ids = signals.take_budget_stops(),
        }
    }
}

async fn dispatch_loop(service: CoordinatorService) {
    let interval = service.config().reconciler.poll_interval();
    let shutdown = service.shutdown_requested();
    tokio::pin!(shutdown);
    let signals = Arc::clone(&service.inner.signals);
    loop {
        // First at start: tasks queued before a restart dispatch at once.
        if let Err(err) = service.dispatch_pending().await {
            tracing::warn!("dispatch pass failed: {err:#}");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = signals.task_ended.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The reconciler: a pass every poll interval, and soon after an agent is
/// reported gone.
async fn reconcile_loop(service: CoordinatorService) {
    let interval = service.config().reconciler.poll_interval();
    let shutdown = service.shutdown_requested();
    tokio::pin!(shutdown);
    let signals = Arc::clone(&service.inner.signals);
    let mut trigger = "startup";
    loop {
        if let Err(err) = service
            .reconcile(PassOptions {
                trigger: trigger.into(),
                ..PassOptions::default()
            })
            .await
        {
            tracing::warn!("reconciler pass failed: {err:#}");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = signals.agent_gone.notified() => trigger = "agent_gone",
            _ = tokio::time::sleep(interval) => trigger = "interval",
        }
    }
}

/// Watches the space on the database's disk ([`crate::disk_guard`]).
async fn disk_loop(service: CoordinatorService, db_path: std::path::PathBuf) {
    let shutdown = service.shutdown_requested();
    tokio::pin!(shutdown);
    let db = Arc::clone(&service.inner.db);
    let Ok(guard) =
        tokio::task::spawn_blocking(move || crate::disk_guard::DiskGuard::new(&db_path)).await
    else {
        return;
    };
    let guard = Arc::new(guard);
    loop {
        let (g, d) = (Arc::clone(&guard), Arc::clone(&db));
        let _ = tokio::task::spawn_blocking(move || g.check(&d)).await;
        service
            .inner
            .disk_full
            .store(guard.is_full(), std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(crate::disk_guard::CHECK_INTERVAL) => {}
        }
    }
}

/// How often checkpoints on remote volumes are read back and verified.
const DURABILITY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads remote checkpoints back until each is verified durable (a database
/// query when there is nothing to do).
async fn durability_loop(service: CoordinatorService) {
    let shutdown = service.shutdown_requested();
    tokio::pin!(shutdown);
    loop {
        match service.verify_durability().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(checkpoints = n, "checkpoints read back and verified"),
            Err(err) => tracing::warn!("durability pass failed: {err:#}"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(DURABILITY_INTERVAL) => {}
        }
    }
}

/// Reconciles ended Modal sandboxes' compute cost with Modal's own usage
/// figures every `modal.usage_poll_seconds` (`crate::usage`; a database
/// query when there is nothing to do: the bridge is never started for it).
async fn usage_loop(service: CoordinatorService) {
    let interval = std::time::Duration::from_secs(service.config().modal.usage_poll_seconds);
    let shutdown = service.shutdown_requested();
    tokio::pin!(shutdown);
    loop {
        match service.reconcile_usage().await {
            Ok(summary) if summary.is_empty() => {}
            Ok(summary) => tracing::info!(
                reconciled = summary.reconciled,
                given_up = summary.given_up,
                retrying = summary.retrying,
                "usage reconciliation pass"
            ),
            Err(err) => tracing::warn!("usage reconciliation pass failed: {err:#}"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Binds the control socket: removes a stale one (we hold the lock, so no
/// live coordinator owns it) and restricts it to the owner.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing the stale socket {}", path.display()));
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// `parhelia coordinator run`: serve until Shutdown, SIGINT or SIGTERM.
pub async fn run(mut state: StateDir, config_flags: &[String]) -> Result<RunEnd> {
    // E509 for a directory another user owns (or one that cannot be made private),
    // E507 when it cannot be created: before the token or any secret is written.
    state.ensure_private()?;
    let _lock = CoordinatorLock::acquire(&state)?;
    let loaded = crate::config::load(state.root(), config_flags)?;
    for unknown in &loaded.unknown_keys {
        tracing::warn!("{unknown}");
    }
    *effective() = Some(Effective {
        files: config_files(&loaded),
        loaded: loaded.clone(),
        loaded_at_ms: crate::ids::now_ms(),
        flags: config_flags.to_vec(),
    });
    RELOAD.store(false, std::sync::atomic::Ordering::SeqCst);
    let config = loaded.config;
    let db_path = config
        .orchestrator
        .db_path
        .clone()
        .unwrap_or_else(|| state.db_path());
    let db = Arc::new(Db::open(&db_path)?);
    // Before anything reads the coordinator id or the live containers: a
    // database behind the generation recorded beside it lost commits (E514);
    // it is reported and what the record proves is re-created.
    let rolled_back =
        crate::db::generation::check_at_start(&db, Some(&state.root().join("containers")))?
            .is_some();
    let coordinator_id = db.coordinator_id()?;
    let launcher = std::env::current_exe().context("finding the parhelia executable")?;
    // A database outside the state directory is hidden from sandboxes too.
    let private_dirs: Vec<_> = crate::backend::isolation::db_private_dir(state.root(), &db_path)?
        .into_iter()
        .collect();
    let mut backend =
        LocalBackend::new(state.root().to_path_buf(), coordinator_id.clone(), launcher)
            .with_agent_settings(AgentSettings::for_config(&config))
            .with_private_dirs(private_dirs);
    if let Some(ms) = std::env::var("PARHELIA_AGENT_START_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        backend = backend.with_endpoint_timeout(std::time::Duration::from_millis(ms));
    }
    let socket = state.prepare_socket_dir()?;
    // A fresh control token before the socket exists: nobody holds an old one.
    let token = crate::control_auth::issue_token(&crate::control_auth::token_path(&socket))
        .with_context(|| format!("writing the control token beside {}", socket.display()))?;
    let guard = crate::control_auth::Guard(Arc::new(crate::control_auth::Own::new(token)));
    let listener = bind_socket(&socket)?;
    let modal_factory: crate::backend::router::ModalFactory = {
        let (root, id, modal, timing) = (
            state.root().to_path_buf(),
            coordinator_id.clone(),
            config.modal.clone(),
            AgentSettings::for_config(&config),
        );
        Box::new(move || {
            Arc::new(crate::backend::modal::ModalBackend::new(
                root.clone(),
                id.clone(),
                modal.clone(),
                timing.clone(),
            ))
        })
    };
    // Load tests only (issue 17): local sessions as simulated agents in a host process.
    let backend: Arc<dyn crate::backend::Backend> = match crate::backend::sim::SimBackend::from_env(
        state.root().to_path_buf(),
        coordinator_id.clone(),
        config.agent.heartbeat_interval_ms,
    ) {
        Some(sim) => {
            tracing::warn!(
                "{} is set: local sessions run as simulated agents (a load test)",
                crate::backend::sim::SIM_AGENTS_SOCKET_ENV
            );
            Arc::new(sim)
        }
        None => Arc::new(backend),
    };
    let backends =
        crate::backend::router::Backends::new(backend, Some(modal_factory), Arc::clone(&db));
    let service = CoordinatorService::with_backends(state.clone(), db, Arc::new(backends), config);
    let reattached = service.reattach().await?;
    // Ended Modal work the rollback lost is on the volume, not under the state dir:
    // read back in the background (a slow or absent Modal must not hold the start).
    if rolled_back && state.root().join("modal").is_dir() {
        let service = service.clone();
        tokio::spawn(async move { service.rebuild_modal_from_specs().await });
    }
    tracing::info!(
        pid = std::process::id(),
        %coordinator_id,
        state_dir = %state.root().display(),
        socket = %socket.display(),
        reattached,
        max_concurrent_workers = service.config().orchestrator.max_concurrent_workers,
        poll_interval_seconds = service.config().reconciler.poll_interval_seconds,
        "coordinator listening"
    );
    let background = [
        tokio::spawn(reconcile_loop(service.clone())),
        tokio::spawn(dispatch_loop(service.clone())),
        tokio::spawn(budget_loop(service.clone())),
        tokio::spawn(durability_loop(service.clone())),
        tokio::spawn(usage_loop(service.clone())),
        tokio::spawn(disk_loop(service.clone(), db_path.clone())),
        tokio::spawn(config_watch_loop(service.clone())),
    ];

    let shutdown = {
        let requested = service.shutdown_requested();
        async move {
            let mut sigterm =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async {
                match sigterm.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = requested => {}
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
                _ = term => tracing::info!("terminated"),
            }
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::with_interceptor(service.clone(), guard))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    service.stop_followers().await;
    for task in background {
        task.abort();
    }
    // Remove the socket only if it is still ours.
    let _ = std::fs::remove_file(&socket);
    served.context("serving the coordinator socket")?;
    if RELOAD.swap(false, std::sync::atomic::Ordering::SeqCst) {
        tracing::info!("coordinator restarting with the new configuration");
        return Ok(RunEnd::Reload);
    }
    tracing::info!("coordinator stopped");
    Ok(RunEnd::Stopped)
}

/// Leaves the CLI's session so the terminal's signals never reach the
/// coordinator. Used by the auto-started (`--detached`) coordinator.
pub fn detach_from_terminal() {
    if let Err(e) = nix::unistd::setsid() {
        tracing::debug!("setsid: {e}");
    }
}
