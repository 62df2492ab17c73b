//! Where sessions run. A [`Backend`] launches an agent for a container,
//! lists the containers that are really there, terminates them, and says how
//! to reach an agent. [`local::LocalBackend`] runs a detached local process
//! (loopback endpoint); [`modal::ModalBackend`] a Modal sandbox (TLS tunnel).
//! [`router::Backends`] holds both and sends each call to the backend that
//! owns the container.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use parhelia_proto::Event;

use crate::ids::SessionSecret;
use crate::plan::{LaunchIds, SessionRequest};

pub mod capabilities;
pub mod isolation;
pub mod local;
pub mod local_home;
pub mod modal;
pub mod router;
pub mod sim;
pub mod unit;
pub mod workspace_copy;

pub use modal::Resources;

/// Resolves once a container's agent process has exited (see [`Backend::exit_signal`]).
pub type ExitSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What a launch tells about its GPU as it goes (a `--gpu` list is tried in
/// order on capacity errors): each type Modal refused, then the one it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuOutcome {
    /// Modal had no capacity for this type (its message); the next is tried.
    Refused { gpu: String, message: String },
    /// The sandbox was created with this type.
    Chosen { gpu: String },
}

/// Told of each [`GpuOutcome`] of a launch (the service records them).
#[derive(Clone)]
pub struct GpuHook(pub std::sync::Arc<dyn Fn(GpuOutcome) + Send + Sync>);

impl std::fmt::Debug for GpuHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GpuHook")
    }
}

/// Everything a backend needs to launch one container.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub ids: LaunchIds,
    pub session: SessionRequest,
    /// The user's directory to copy into the session, or `None` for an
    /// empty workspace.
    pub workspace_source: Option<PathBuf>,
    /// Size limits the copy of `workspace_source` must stay within (E112).
    pub copy_limits: workspace_copy::CopyLimits,
    /// Told how far the transfers of `workspace_source` have got: the local
    /// backend's copy; the Modal backend's checkpoint of it and that checkpoint's
    /// upload to the volume. `None`: nobody follows them.
    pub workspace_progress: Option<workspace_copy::WorkspaceProgress>,
    /// Absolute path of the `claude` binary.
    pub claude_bin: PathBuf,
    /// Explicit agent binary (else the backend's default lookup).
    pub agent_bin: Option<PathBuf>,
    /// Environment for Claude Code (no `PARHELIA_*` entries). Held in memory only.
    pub env: BTreeMap<String, String>,
    pub secret: SessionSecret,
    /// The task's secrets by name (`--secret`). Local: environment variables
    /// whose values are already in `env`; Modal: named Modal secrets attached
    /// to the sandbox (with `modal.secrets`).
    pub secrets: Vec<String>,
    /// The task's Modal region (`--region`; `None`: `modal.region`). Remote
    /// backends only.
    pub region: Option<String>,
    /// Told of each GPU type refused for want of capacity and of the one
    /// chosen (remote backends); `None`: nobody listens.
    pub on_gpu: Option<GpuHook>,
    /// How the local backend confines the session (ignored by remote backends,
    /// whose container is the isolation).
    pub isolation: isolation::Isolation,
    /// Which backend runs it.
    pub backend: crate::plan::BackendKind,
    /// GPU, CPU, memory and time limit (remote backends).
    pub resources: Resources,
    /// Carry the user's Claude Code setup into the session (false:
    /// `--no-user-config`): locally, what the config-sync planner lets through
    /// of `~/.claude` now; on Modal, `parhelia config sync`'s copy on the volume.
    pub user_config: bool,
    /// The task's own agent settings (its `task create --set` values on top
    /// of the coordinator's configuration, `config::task_config`); `None`:
    /// the backend's, which are the coordinator's.
    pub agent_settings: Option<crate::plan::AgentSettings>,
}

/// What a launch started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerHandle {
    pub container_id: String,
    /// The agent's process id, where the backend has one.
    pub pid: Option<u32>,
    /// Where the session's workspace lives, as the backend sees it.
    pub workspace_dir: PathBuf,
    pub volume_dir: PathBuf,
    /// The provider's id of the container (a Modal sandbox id; `None`
    /// locally), kept to reconcile its cost with the provider's figures.
    pub remote_id: Option<String>,
}

/// A session unit whose agent is gone but which still holds processes.
pub use crate::reconcile::LeftoverUnit;
/// A container the backend observes running (ours only, found by our label).
pub use crate::reconcile::ObservedContainer;

/// What ending a unit's processes found: held (stopped) first, then ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitHold {
    /// What the unit is (`cgroup_v1`, `cgroup_v2`, `process_tree`).
    pub kind: String,
    /// The processes found and stopped.
    pub pids: Vec<u32>,
    /// The session's workspace, as the backend sees it (for the checkpoint).
    pub workspace_dir: Option<PathBuf>,
    /// The session's volume (its checkpoint store is `checkpoints/` in it).
    pub volume_dir: Option<PathBuf>,
    /// Checkpoint excludes from the container's spec.
    pub excludes: Vec<String>,
    pub session_id: String,
    /// Claude Code's config dir and session id (from the container's spec), where the
    /// transcripts are whose spend the dead agent never journaled.
    pub claude_config_dir: Option<PathBuf>,
    pub claude_session_id: Option<String>,
    /// The container's spec (the coordinator's own file), from which its agent's
    /// checkpoint of what the workspace and conversation hold is taken.
    pub spec_path: Option<PathBuf>,
}

/// How to reach an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub uri: String,
    pub pid: Option<u32>,
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name (`local`, `modal`).
    fn name(&self) -> &'static str;

    /// Prepares the session and starts its agent. Returns once the agent
    /// process has been started; it need not be answering yet.
    async fn launch(&self, request: &LaunchRequest) -> anyhow::Result<ContainerHandle>;

    /// Containers of this coordinator that are really running, found by our
    /// label only (`parhelia.coordinator=<id>`); never anything else.
    async fn list(&self) -> anyhow::Result<Vec<ObservedContainer>>;

    /// [`Backend::list`] per backend (`local`, `modal`), each with its own result:
    /// the reconciler acts on the containers of the backends that answered, and
    /// one that cannot list blinds only its own. A single backend is one entry.
    async fn list_each(&self) -> Vec<(&'static str, anyhow::Result<Vec<ObservedContainer>>)> {
        vec![(self.name(), self.list().await)]
    }

    /// Stops one container of ours (its agent journals the interruption and
    /// exits). A container that is not running, or is not ours, is left
    /// alone. There is deliberately no way to stop "everything".
    async fn terminate(&self, container_id: &str) -> anyhow::Result<()>;

    /// The container's journal from `from_seq` (inclusive) on, read from the
    /// session's volume without the agent: how the coordinator catches up
    /// with events an agent journaled before it went away. A torn last line
    /// is not an event (it was never announced). Empty when there is no
    /// journal.
    async fn read_journal(
        &self,
        container_id: &str,
        session_id: &str,
        from_seq: u64,
    ) -> anyhow::Result<Vec<Event>>;

    /// Session units whose agent is gone but whose processes still run (a
    /// killed agent's tmux server, Claude Code, its tools), recorded or not.
    /// Remote backends have none: a sandbox ends with its agent.
    async fn leftover_units(&self) -> anyhow::Result<Vec<LeftoverUnit>> {
        Ok(Vec::new())
    }

    /// Stops (without ending) every process of a container's unit so its
    /// workspace holds still for a checkpoint. Refused when the container's
    /// agent runs (then the unit is not left over).
    async fn hold_unit(&self, _container_id: &str) -> anyhow::Result<UnitHold> {
        Ok(UnitHold::default())
    }

    /// The spec of a container whose agent is gone and every process of whose
    /// unit has ended, while the backend still holds the container's files (local):
    /// the reconciler checkpoints what the workspace and conversation hold from it
    /// before it marks the container lost. `None` when the backend cannot reach them.
    async fn left_behind_spec(&self, _container_id: &str) -> Option<PathBuf> {
        None
    }

    /// Ends every process of a held unit and removes the unit; returns the
    /// processes that survived (none unless something escaped it).
    async fn end_unit(&self, _container_id: &str, _hold: &UnitHold) -> anyhow::Result<Vec<u32>> {
        Ok(Vec::new())
    }

    /// Waits (with a deadline) until the container's agent announces where
    /// it listens.
    async fn endpoint(&self, container_id: &str) -> anyhow::Result<Endpoint>;

    /// When this backend can tell without listing that the container's agent has
    /// exited, a future that resolves then (at once if it is not running); `None`
    /// when it cannot, and whoever waits polls [`Backend::list`] with a backoff.
    async fn exit_signal(&self, _container_id: &str) -> Option<ExitSignal> {
        None
    }

    /// Where a session and its container live, as the container sees them
    /// (recorded before launch). `None`: the local layout in the state
    /// directory.
    fn session_layout(
        &self,
        _session_id: &str,
        _container_id: &str,
    ) -> Option<crate::plan::LocalLayout> {
        None
    }

    /// A local directory holding the session's checkpoint store as its
    /// volume has it now (a remote backend fetches what is new), or `None`
    /// when the session has no store. `volume_dir` is the recorded one.
    async fn store_dir(
        &self,
        _session_id: &str,
        volume_dir: &std::path::Path,
    ) -> anyhow::Result<Option<PathBuf>> {
        let root = volume_dir.join("checkpoints");
        Ok(root.join("store.json").is_file().then_some(root))
    }

    /// A local directory holding *every* durable file of the session's store
    /// as the volume holds it now, read again in full (never a mirror that
    /// may hold an intact copy of what the volume has damaged), for `checkpoint
    /// verify` and `repair`; `None` when the session has no store. A local
    /// volume's copy is the store itself.
    async fn store_copy(
        &self,
        session_id: &str,
        volume_dir: &std::path::Path,
    ) -> anyhow::Result<Option<PathBuf>> {
        self.store_dir(session_id, volume_dir).await
    }

    /// Writes what a repair changed in a [`Self::store_copy`] back to the
    /// volume: the files in `put` (relative to the store root) replace the
    /// volume's, those in `remove` (moved aside by the repair) leave it. A
    /// local copy is the store: nothing to write back.
    async fn write_back_store(
        &self,
        _session_id: &str,
        _copy: &std::path::Path,
        _put: &[String],
        _remove: &[String],
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Copies the durable files of the store at `from` into the session's
    /// store on this backend's volume (what it lacks): how a session
    /// checkpointed on one backend resumes on another.
    async fn import_store(
        &self,
        _session_id: &str,
        volume_dir: &std::path::Path,
        from: &std::path::Path,
    ) -> anyhow::Result<()> {
        let (from, target) = (from.to_path_buf(), volume_dir.join("checkpoints"));
        tokio::task::spawn_blocking(move || {
            parhelia_checkpoint::durable::copy_missing(&from, &target)
        })
        .await
        .map_err(|e| anyhow::anyhow!("copying the checkpoint store panicked: {e}"))?
        .map_err(|e| crate::checkpoints::coded(&e).into())
    }
}
