//! The coordinator's service layer: every operation that changes something
//! (submit, dispatch, cancel, retry, delete, terminate; `reconcile` is the
//! reconciler's, [`crate::reconciler`]) is one method here, called by the gRPC front end ([`crate::daemon`]) and by
//! tests. The decisions are the pure modules' ([`crate::queue`],
//! [`crate::reconcile`], [`crate::task_state`]); this layer gathers inputs
//! and carries decisions out.
//!
//! Architecture invariant: the environment a task is submitted with lives
//! only in memory (`pending_env`) until its launch; it is never stored or
//! logged. A queued task dispatched after a coordinator restart gets the
//! environment of the `task dispatch` that dispatches it, else the
//! coordinator's own.
//!
//! The methods are split by capability, one file each (several `impl
//! CoordinatorService` blocks): `tasks.rs` (submit, dispatch, cancel, retry,
//! delete), `sessions.rs` (stopping a session, resume/rollback, checkpoints),
//! `budget.rs`, `containers.rs` (followers, waiting, terminate) and `modal.rs`
//! (the volume's data and the metering passes). This file holds the shared
//! state and what launches share. `spend.rs` is the read side of the ledger
//! every front shows (`budget history`'s groups, `budget show`, the
//! estimate), `stores.rs` which checkpoint store a session's checkpoints
//! are read from, and `dry_run.rs` what a launch would be (`task create
//! --dry-run`): free functions, so they need no coordinator.

mod budget;
mod containers;
pub mod dry_run;
mod modal;
mod resume;
mod sessions;
pub use sessions::session_not_running;
pub mod spend;
pub mod stores;
mod tasks;
pub use tasks::{Launching, Submitted};

pub use resume::RESUME_CONTINUE_MESSAGE;
pub use tasks::TaskTransfers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use parhelia_proto::{
    AgentEndpointResponse, CancelTaskResponse, CheckpointSessionResponse, DeleteTasksResponse,
    DispatchTasksResponse, DispatchedTask, QueuedTask, ResumeSessionRequest, ResumeSessionResponse,
    RetryTaskResponse, SetBudgetRequest, SetBudgetResponse, StopRequest, SubmitTaskRequest,
    SubmitTaskResponse, TaskFailure, TerminateContainerResponse,
};
use tokio::sync::watch;

use crate::agent_client::connect_agent;
use crate::backend::isolation;
use crate::backend::router::Backends;
use crate::backend::{Backend, LaunchRequest, Resources};
use crate::binaries::resolve_claude_bin;
use crate::budget::TaskLimits;
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
    /// Held while a dispatch pass decides and claims (never during a launch).
    dispatch_lock: tokio::sync::Mutex<()>,
    /// Launches in flight (outside the dispatch lock).
    launches: Mutex<tokio::task::JoinSet<()>>,
    /// Woken whenever a follower's agent stream ends (`wait_until_gone` looks again).
    follower_ended: tokio::sync::Notify,
    pub(crate) reconcile_lock: tokio::sync::Mutex<()>,
    /// Environment of tasks not launched yet (memory only).
    pending_env: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Who follows the workspace copy of a task being submitted (the CLI's
    /// `SubmitBudgetedTaskWithProgress` stream), until its submit returns.
    pending_workspace_progress:
        Mutex<HashMap<String, crate::backend::workspace_copy::WorkspaceProgress>>,
    /// The durability pass's cursor and retries ([`stores::DurabilityQueue`]).
    pub(crate) durability: Mutex<stores::DurabilityQueue>,
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
                launches: Mutex::default(),
                follower_ended: tokio::sync::Notify::new(),
                reconcile_lock: tokio::sync::Mutex::default(),
                pending_env: Mutex::default(),
                pending_workspace_progress: Mutex::default(),
                durability: Mutex::default(),
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

    /// Everything a launch needs from the environment: Claude Code, the
    /// agent, isolation, and the agent's environment.
    ///
    /// `secrets` are the task's `--secret` names. Locally, each is an
    /// environment variable passed into the session: its value from `env`
    /// (the submitter's, held in memory only), else the coordinator's own
    /// environment; a name set in neither is E207. On Modal they are Modal
    /// secrets attached to the sandbox by the backend: no value passes here.
    fn resolve_launch(
        &self,
        env: &HashMap<String, String>,
        kind: plan::BackendKind,
        secrets: &[String],
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
        let mut agent_env = if env.is_empty() {
            // Dispatched without a submitter's environment (after a
            // restart, or automatically): the coordinator's own.
            plan::forwarded_env(own_env())
        } else {
            plan::request_env(env, own_env())
        };
        agent_env.extend(plan::secret_values(
            secrets,
            |name| env.get(name).cloned(),
            |name| std::env::var(name).ok(),
        )?);
        Ok(ResolvedLaunch {
            claude_bin,
            agent_bin,
            isolation,
            agent_env,
        })
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

    /// Records what a launch's GPU list came to: each type Modal had no
    /// capacity for as a `gpu_unavailable` event, the one it got on the task
    /// (`tasks.gpu_chosen`, shown by `task show`, billed by the ledger).
    fn gpu_hook(&self, ids: &LaunchIds) -> crate::backend::GpuHook {
        let inner = Arc::clone(&self.inner);
        let ids = ids.clone();
        crate::backend::GpuHook(Arc::new(move |outcome| {
            match outcome {
            crate::backend::GpuOutcome::Refused { gpu, message } => inner.db.note(
                NewCoordinatorEvent::new(
                    "gpu_unavailable",
                    "warning",
                    format!(
                        "{}: Modal has no capacity for {gpu}; trying the next GPU type of the list ({message})",
                        ids.task_id
                    ),
                )
                .task(&ids.task_id)
                .session(&ids.session_id)
                .container(&ids.container_id),
            ),
            crate::backend::GpuOutcome::Chosen { gpu } => {
                if let Err(err) = inner.db.set_gpu_chosen(&ids.task_id, Some(&gpu)) {
                    tracing::warn!(task_id = %ids.task_id, "cannot record the GPU chosen: {err:#}");
                }
            }
        }
        }))
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

/// The sandbox resources a task asks for (`--gpu`, `--cpu`, `--memory`,
/// `--timeout`), the GPU spelled as Modal spells it (`a100-80gb:2` →
/// `A100-80GB:2`; a trailing `!` is kept).
fn task_resources(limits: &TaskLimits, rates: &crate::config::RatesConfig) -> Resources {
    let spell = |given: &str| match crate::budget::parse_gpu(given, rates) {
        Ok(g) => {
            let strict = if given.contains('!') { "!" } else { "" };
            let upgrade = if given.trim_end_matches('!').contains('+') {
                "+"
            } else {
                ""
            };
            if g.count > 1 {
                format!("{}{upgrade}{strict}:{}", g.gpu_type, g.count)
            } else {
                format!("{}{upgrade}{strict}", g.gpu_type)
            }
        }
        Err(_) => given.to_string(),
    };
    // A list (`a100,a10g`) keeps its order: the backend tries each in turn.
    let gpu = limits
        .gpu
        .as_deref()
        .map(crate::budget::gpu_choices)
        .filter(|choices| !choices.is_empty())
        .map(|choices| choices.into_iter().map(spell).collect::<Vec<_>>().join(","));
    Resources {
        gpu,
        cpu: limits.cpu,
        memory_mb: limits.memory_mb,
        timeout_seconds: limits.timeout_seconds,
    }
}

/// A task's own agent settings when it has `--set` values (else `None`: the
/// backend's, which are the coordinator's).
fn task_agent_settings(task_config: &Config, config_set: &[String]) -> Option<plan::AgentSettings> {
    (!config_set.is_empty()).then(|| plan::AgentSettings::for_config(task_config))
}

#[cfg(test)]
pub(super) mod testing {
    //! What the service's unit tests share: a service over a real SQLite file and
    //! the local backend in a tempdir (nothing is launched), and tasks recorded
    //! the way `submit` and a dispatch record them.

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::state_dir::StateDirSource;

    pub(crate) struct Fixture {
        pub(crate) service: CoordinatorService,
        pub(crate) _dir: tempfile::TempDir,
    }

    impl Fixture {
        pub(crate) fn db(&self) -> &Db {
            &self.service.inner.db
        }
    }

    pub(crate) fn fixture() -> Fixture {
        fixture_with(Config::defaults())
    }

    /// [`fixture`] with a configuration of the test's own.
    pub(crate) fn fixture_with(config: Config) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let db = Arc::new(Db::open(&root.join("parhelia.db")).unwrap());
        // An id no agent on this machine carries: the backend lists nothing.
        let backend = Arc::new(LocalBackend::new(
            root.clone(),
            format!("coord-{}", crate::ids::random_hex(4)),
            "/bin/false".into(),
        ));
        let state = StateDir::new(root, StateDirSource::Explicit);
        Fixture {
            service: CoordinatorService::with_config(state, db, backend, config),
            _dir: dir,
        }
    }

    /// A task recorded held (`--no-dispatch`), as `submit` records it.
    pub(crate) fn held_task(db: &Db, task_id: &str, limits: TaskLimits) {
        db.insert_task(&NewTask {
            task_id: task_id.into(),
            prompt: "say hello".into(),
            task_type: "generic".into(),
            backend: "local".into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            dispatch: false,
            limits,
            allow_large_workspace: false,
            no_user_config: false,
            config_set: Vec::new(),
            secrets: Vec::new(),
            region: None,
        })
        .unwrap();
    }

    /// A task claimed by a dispatch (running, with a session and a container record
    /// not started yet), as a dispatch pass claims it (`claim_task`); returns its ids.
    pub(crate) fn running_task(db: &Db, task_id: &str) -> LaunchIds {
        held_task(db, task_id, TaskLimits::default());
        db.request_dispatch(&[task_id.to_string()]).unwrap();
        let ids = LaunchIds {
            task_id: task_id.into(),
            session_id: ids::new_session_id(),
            container_id: ids::new_container_id(),
            claude_session_id: ids::new_claude_session_id(),
        };
        db.claim_dispatch(
            task_id,
            &NewAttempt {
                session_id: ids.session_id.clone(),
                container_id: ids.container_id.clone(),
                claude_session_id: ids.claude_session_id.clone(),
                secret: SessionSecret::generate(),
                workspace_dir: "/nonexistent/workspace".into(),
                volume_dir: "/nonexistent/volume".into(),
                heartbeat_interval_ms: Some(1000),
            },
        )
        .unwrap();
        ids
    }

    /// The code of a service error (panics on an uncoded one).
    pub(crate) fn code_of(err: &anyhow::Error) -> &'static str {
        find_coded(err)
            .unwrap_or_else(|| panic!("not a coded error: {err:#}"))
            .code
            .code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_as_such_and_anything_else_is_infrastructure() {
        let full = anyhow::Error::new(std::io::Error::from_raw_os_error(
            nix::errno::Errno::ENOSPC as i32,
        ))
        .context("writing the spec");
        assert_eq!(as_coded(&full).code, error_codes::DISK_FULL);
        let other = anyhow::anyhow!("the bridge died");
        assert_eq!(as_coded(&other).code, error_codes::INFRASTRUCTURE_ERROR);
        let coded_err = coded(error_codes::TASK_NOT_FOUND, "task not found: t");
        assert_eq!(as_coded(&coded_err).code, error_codes::TASK_NOT_FOUND);
    }

    #[test]
    fn gpus_are_spelled_as_modal_spells_them() {
        let rates = Config::defaults().rates;
        let gpu = |g: &str| {
            let limits = TaskLimits {
                gpu: Some(g.into()),
                ..TaskLimits::default()
            };
            task_resources(&limits, &rates).gpu
        };
        assert_eq!(gpu("a100-80gb:2").as_deref(), Some("A100-80GB:2"));
        assert_eq!(gpu("h100!").as_deref(), Some("H100!"));
        assert_eq!(gpu(""), None);
    }

    #[test]
    fn the_service_reads_its_coordinator_id_from_the_database() {
        let f = testing::fixture();
        assert_eq!(f.service.coordinator_id(), f.db().coordinator_id().unwrap());
        assert!(!f.service.coordinator_id().is_empty());
    }
}
