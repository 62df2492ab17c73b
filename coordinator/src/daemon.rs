//! The coordinator process: the control plane behind the CLI.
//!
//! One per state directory (an exclusive lock on `coordinator.lock`). It
//! serves the `Coordinator` gRPC service on `coordinator.sock` (mode 0600),
//! records and dispatches submitted tasks through a [`Backend`], and runs one
//! event follower per live container (see [`crate::ingest`]). On start it
//! re-attaches to every container whose task is still running, so a
//! restarted coordinator catches up from the agents' journals.
//!
//! Architecture invariant: the environment a task is submitted with lives
//! only in memory, for the duration of the launch; it is never stored or
//! logged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use parhelia_proto::coordinator_server::{Coordinator, CoordinatorServer};
use parhelia_proto::{
    PingRequest, PingResponse, ShutdownRequest, ShutdownResponse, SubmitTaskRequest,
    SubmitTaskResponse,
};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::backend::isolation::{self, ISOLATION_ENV};
use crate::backend::local::LocalBackend;
use crate::backend::{Backend, LaunchRequest};
use crate::binaries::resolve_claude_bin;
use crate::db::{ContainerRef, Db, NewLaunch, TaskUpdate, container_state};
use crate::error::{CodedError, coded, find_coded};
use crate::error_codes;
use crate::ids::{self, SessionSecret};
use crate::ingest::{IngestContext, IngestSettings, follow_container};
use crate::plan::{self, LaunchIds, SessionRequest};
use crate::state_dir::StateDir;
use crate::task_state::TaskStatus;

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

/// The coordinator's shared state.
#[derive(Clone)]
pub struct CoordinatorService {
    inner: Arc<Inner>,
}

struct Inner {
    state: StateDir,
    db: Arc<Db>,
    backend: Arc<dyn Backend>,
    shutdown_tx: watch::Sender<bool>,
    ingest: IngestContext,
    followers: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl CoordinatorService {
    pub fn new(state: StateDir, db: Arc<Db>, backend: Arc<dyn Backend>) -> Self {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ingest = IngestContext {
            db: Arc::clone(&db),
            backend: Arc::clone(&backend),
            shutdown: shutdown_rx,
            settings: IngestSettings::default(),
        };
        Self {
            inner: Arc::new(Inner {
                state,
                db,
                backend,
                shutdown_tx,
                ingest,
                followers: tokio::sync::Mutex::default(),
            }),
        }
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

    /// Starts following a container's events.
    pub async fn follow(&self, target: ContainerRef) {
        let ctx = self.inner.ingest.clone();
        let mut followers = self.inner.followers.lock().await;
        // Forget followers that are done, so the set does not grow forever.
        while followers.try_join_next().is_some() {}
        followers.spawn(async move {
            follow_container(ctx, target).await;
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
        if tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("followers did not stop in time");
        }
    }

    /// Records a task and launches it. The one path every front end uses.
    pub async fn submit(&self, request: SubmitTaskRequest) -> Result<SubmitTaskResponse> {
        plan::validate_prompt(&request.prompt)?;
        let backend_kind = plan::parse_backend(&request.backend)?;
        if backend_kind.as_str() != self.inner.backend.name() {
            return Err(coded(
                error_codes::BACKEND_UNAVAILABLE,
                format!(
                    "this coordinator runs the {} backend only",
                    self.inner.backend.name()
                ),
            ));
        }
        let workspace_source = match request.workspace.as_str() {
            "" => None,
            path => Some(validate_workspace(Path::new(path))?),
        };
        let env = &request.env;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let path_var = env
            .get("PATH")
            .map(|p| p.clone().into())
            .or_else(|| std::env::var_os("PATH"));
        let claude_override = env
            .get(plan::CLAUDE_BIN_ENV)
            .map(|v| v.clone().into())
            .or_else(|| std::env::var_os(plan::CLAUDE_BIN_ENV));
        let claude_bin = resolve_claude_bin(claude_override.as_deref(), path_var.as_deref(), &cwd)?;
        let agent_bin = env
            .get(plan::AGENT_BIN_ENV)
            .map(PathBuf::from)
            .or_else(|| std::env::var_os(plan::AGENT_BIN_ENV).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty());
        let isolation_setting = env
            .get(ISOLATION_ENV)
            .cloned()
            .or_else(|| std::env::var(ISOLATION_ENV).ok());
        let isolation = isolation::decide(isolation_setting.as_deref(), isolation::bwrap_works)?;

        let ids = LaunchIds {
            task_id: ids::new_task_id(),
            session_id: ids::new_session_id(),
            container_id: ids::new_container_id(),
            claude_session_id: ids::new_claude_session_id(),
        };
        let secret = SessionSecret::generate();
        let layout =
            plan::local_layout(self.inner.state.root(), &ids.session_id, &ids.container_id);
        let session = SessionRequest {
            prompt: request.prompt.clone(),
            model: Some(request.model.clone()).filter(|m| !m.is_empty()),
            max_turns: Some(request.max_turns).filter(|n| *n > 0),
            interactive: request.interactive,
        };
        let task_type = if request.task_type.is_empty() {
            "generic".to_string()
        } else {
            request.task_type.clone()
        };
        self.inner.db.insert_launch(&NewLaunch {
            task_id: ids.task_id.clone(),
            session_id: ids.session_id.clone(),
            container_id: ids.container_id.clone(),
            claude_session_id: ids.claude_session_id.clone(),
            prompt: request.prompt.clone(),
            task_type,
            backend: backend_kind.as_str().into(),
            workspace: workspace_source
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            model: session.model.clone(),
            max_turns: session.max_turns,
            mode: if session.interactive {
                "interactive"
            } else {
                "headless"
            }
            .into(),
            secret: secret.clone(),
            workspace_dir: layout.workspace_dir.clone(),
            volume_dir: layout.volume_dir.clone(),
        })?;
        tracing::info!(task_id = %ids.task_id, session_id = %ids.session_id, container_id = %ids.container_id, "task recorded");

        let launch = LaunchRequest {
            ids: ids.clone(),
            session,
            workspace_source,
            claude_bin,
            agent_bin,
            env: agent_env(env),
            secret,
            isolation,
        };
        match self.inner.backend.launch(&launch).await {
            Ok(handle) => {
                if let Some(pid) = handle.pid {
                    self.inner.db.set_container_pid(&ids.container_id, pid)?;
                }
                self.inner.db.transition_task(
                    &ids.task_id,
                    TaskStatus::Running,
                    &TaskUpdate::default(),
                )?;
                self.follow(ContainerRef {
                    container_id: ids.container_id.clone(),
                    session_id: ids.session_id.clone(),
                    task_id: ids.task_id.clone(),
                })
                .await;
            }
            Err(err) => {
                tracing::warn!(task_id = %ids.task_id, "launch failed: {err:#}");
                let coded_err = find_coded(&err).cloned().unwrap_or_else(|| {
                    CodedError::new(
                        error_codes::INFRASTRUCTURE_ERROR,
                        format!("launch failed: {err:#}"),
                    )
                });
                let update = TaskUpdate {
                    error_code: Some(coded_err.code.code.to_string()),
                    error_message: Some(coded_err.message.clone()),
                    ..TaskUpdate::default()
                };
                self.inner
                    .db
                    .transition_task(&ids.task_id, TaskStatus::Failed, &update)?;
                self.inner
                    .db
                    .set_container_state(&ids.container_id, container_state::FAILED)?;
                return Err(CodedError::new(
                    coded_err.code,
                    format!(
                        "task {} failed to launch: {}",
                        ids.task_id, coded_err.message
                    ),
                )
                .into());
            }
        }
        Ok(SubmitTaskResponse {
            task_id: ids.task_id,
            session_id: ids.session_id,
            container_id: ids.container_id,
        })
    }
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
    if canonical.is_dir() {
        Ok(canonical)
    } else {
        Err(not_found())
    }
}

/// The agent's environment: the submitted env without `PARHELIA_*` entries
/// (those are launch overrides meant for the coordinator).
fn agent_env(env: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| !k.starts_with("PARHELIA_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            state_dir: self.inner.state.root().to_string_lossy().into_owned(),
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
pub async fn run(mut state: StateDir) -> Result<()> {
    state.ensure().map_err(|e| {
        CodedError::new(
            error_codes::STATE_UNAVAILABLE,
            format!(
                "cannot create the state directory {}: {e}",
                state.root().display()
            ),
        )
    })?;
    let _lock = CoordinatorLock::acquire(&state)?;
    let db = Arc::new(Db::open(&state.db_path())?);
    let coordinator_id = db.coordinator_id()?;
    let launcher = std::env::current_exe().context("finding the parhelia executable")?;
    let mut backend =
        LocalBackend::new(state.root().to_path_buf(), coordinator_id.clone(), launcher)
            .with_heartbeat_interval_ms(plan::heartbeat_interval_ms(
                std::env::var(plan::HEARTBEAT_INTERVAL_ENV).ok().as_deref(),
            ));
    if let Some(ms) = std::env::var("PARHELIA_AGENT_START_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        backend = backend.with_endpoint_timeout(std::time::Duration::from_millis(ms));
    }
    let socket = state.prepare_socket_dir()?;
    let listener = bind_socket(&socket)?;
    let service = CoordinatorService::new(state.clone(), db, Arc::new(backend));
    let reattached = service.reattach().await?;
    tracing::info!(
        pid = std::process::id(),
        %coordinator_id,
        state_dir = %state.root().display(),
        socket = %socket.display(),
        reattached,
        "coordinator listening"
    );

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
        .add_service(CoordinatorServer::new(service.clone()))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    service.stop_followers().await;
    // Remove the socket only if it is still ours.
    let _ = std::fs::remove_file(&socket);
    tracing::info!("coordinator stopped");
    served.context("serving the coordinator socket")?;
    Ok(())
}

/// Leaves the CLI's session so the terminal's signals never reach the
/// coordinator. Used by the auto-started (`--detached`) coordinator.
pub fn detach_from_terminal() {
    if let Err(e) = nix::unistd::setsid() {
        tracing::debug!("setsid: {e}");
    }
}
