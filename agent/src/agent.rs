//! The `run` subcommand: start every part of the agent, run the session, shut down.
//!
//! Order (contract, "Agent lifecycle"): validate the spec, open the journal, start the
//! gRPC server, write `agent.json`; then the supervisor journals `SessionStarted` and
//! launches Claude Code. On the way out the gRPC server drains its event streams, the
//! tmux server is stopped and `agent.json` is removed (it exists only while the agent
//! serves).
//!
//! Errors before the server is up are startup errors (exit status 2; nothing was
//! journaled); a journal failure later is a runtime error (exit status 1).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::change_tracker::ChangeTracker;
use crate::checkpointer::{CheckpointPaths, Checkpointer};
use crate::claude;
use crate::cost;
use crate::heartbeat;
use crate::hooks;
use crate::journal::{Journal, JournalError, now_ms};
use crate::layout::Layout;
use crate::server::{AgentService, SessionAuth};
use crate::spec::{LaunchSpec, SpecError};
use crate::supervisor::{Supervisor, SupervisorContext, SupervisorMessage};
use crate::tmux::TmuxServer;

/// The environment variable that carries the session secret.
pub const SECRET_ENV: &str = "PARHELIA_SESSION_SECRET";

/// How long the gRPC server may take to drain its streams on the way out.
const SERVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `parhelia-agent run` was given.
pub struct RunOptions {
    pub spec_path: PathBuf,
    /// `--label KEY=VALUE`: recorded in the log; they exist to tag the process (its
    /// command line) so a backend can find its own agents.
    pub labels: Vec<(String, String)>,
    pub secret: String,
}

/// Why the agent could not run the session. Each message reads after "failed to ".
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec is not acceptable.
    #[error("read the spec: {0}")]
    Spec(#[from] SpecError),
    /// No secret was given.
    #[error("start the agent: {SECRET_ENV} is not set or empty")]
    MissingSecret,
    /// A directory or file the agent needs is missing or cannot be written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The journal could not be opened.
    #[error("open the journal: {0}")]
    OpenJournal(JournalError),
    /// The gRPC server could not listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The journal failed while the session ran; the session could not be recorded.
    #[error("record the session: {0}")]
    Journal(JournalError),
    /// The session's checkpoint store cannot be opened.
    #[error("open the checkpoint store: {0}")]
    CheckpointStore(parhelia_checkpoint::CheckpointError),
    /// The spec's `session_user` cannot be used: the session never runs as the agent.
    #[error("run the session as its own user: {0}")]
    SessionUser(#[from] crate::session_user::SessionUserError),
}

impl RunError {
    /// The process exit status for this error: 2 for startup errors, 1 at runtime.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Journal(_) => 1,
            _ => 2,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::Io {
        action,
        path,
        source,
    }
}

/// `<runtime_dir>/agent.json`: how to reach this agent (format in `contracts.md`; the
/// type is the contract's, which the coordinator reads with).
pub use parhelia_contract::spec::AgentRuntimeInfo;

/// Runs one session from its spec to the agent's exit.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let started_at = Instant::now();
    let started_at_ms = now_ms();
    let spec = Arc::new(crate::spec::load(&options.spec_path)?);
    if options.secret.is_empty() {
        return Err(RunError::MissingSecret);
    }
    // Resolved before anything is created or run: a session that should run as its own
    // user never runs as the agent's. The directories the agent creates on the way to
    // the session's own must be passable for that user whatever umask the agent was
    // started with; what is private is closed explicitly (`SessionUser::hand_over`).
    let session_user = spec
        .session_user
        .as_deref()
        .map(crate::session_user::SessionUser::resolve)
        .transpose()?;
    if session_user.is_some() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    }
    // A remote backend cannot create directories on the container's disk
    // before the agent starts: a missing workspace is created (empty; a
    // restore or the session fills it). Something else at that path is an error.
    if !spec.workspace_dir.exists() {
        std::fs::create_dir_all(&spec.workspace_dir)
            .map_err(io_error("create the workspace", &spec.workspace_dir))?;
    }
    if !spec.workspace_dir.is_dir() {
        return Err(io_error("use the workspace", &spec.workspace_dir)(
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let layout = Layout::new(&spec, &std::env::temp_dir());
    layout
        .create_directories()
        .map_err(io_error("create the directories of", &spec.runtime_dir))?;
    init_logging(&layout.agent_log);
    tracing::info!(
        session_id = %spec.session_id,
        container_id = %spec.container_id,
        labels = ?options.labels,
        "parhelia-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );

    let (journal, report) = Journal::open(&layout.journal).map_err(RunError::OpenJournal)?;
    if report.truncated_bytes > 0 {
        tracing::warn!(
            bytes = report.truncated_bytes,
            "cut a torn last line off the journal"
        );
    }
    // Earlier containers of this session (and this container's agent, if it ran before).
    let prior_spend = cost::prior_spend(&layout.journal_dir);
    let journaled_cost_usd = prior_spend.session_cost_usd;
    let prior_cost_usd = match spec.prior_cost_usd {
        Some(recorded) if recorded.is_finite() && recorded > journaled_cost_usd => {
            tracing::warn!(
                journaled = journaled_cost_usd,
                recorded,
                "the session's journals hold less spend than the coordinator recorded; counting from the recorded figure"
            );
            recorded
        }
        _ => journaled_cost_usd,
    };

    // Installed before anything is started, so a SIGTERM at any point is handled.
    let signals = TerminationSignals::install().map_err(io_error(
        "install signal handlers for",
        Path::new("SIGTERM"),
    ))?;

    let listener = tokio::net::TcpListener::bind(spec.listen_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: spec.listen_addr,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: spec.listen_addr,
        source,
    })?;

    let (inbox, inbox_receiver) = mpsc::channel(256);
    let (heartbeats, _) = broadcast::channel(16);
    let (shutdown, shutdown_receiver) = watch::channel(false);
    let (tmux_server_pid, tmux_server_pid_receiver) = watch::channel(None);

    // The restore before Claude Code starts (a resume's or rollback's), as it goes.
    let (restore_progress, restore_watch) = watch::channel(match &spec.restore_checkpoint {
        None => crate::server::no_restore(),
        Some(_) => parhelia_proto::RestoreProgressUpdate::default(),
    });
    let service = AgentService::new(
        inbox.clone(),
        journal.clone(),
        heartbeats.clone(),
        shutdown_receiver.clone(),
    )
    .with_restore(restore_watch)
    .into_server(SessionAuth::new(&options.secret));
    let mut server_shutdown = shutdown_receiver.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            // Pings every connection, so one whose client vanished without a word (a
            // dropped tunnel) is closed within 10 s and its attach ends.
            .http2_keepalive_interval(Some(parhelia_proto::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(parhelia_proto::KEEPALIVE_TIMEOUT))
            .add_service(service)
            .serve_with_incoming_shutdown(
                // No Nagle delay: an attached terminal sends a few bytes at a time.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |stream| {
                        let stream = stream?;
                        stream.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(stream)
                    },
                ),
                async move {
                    let _ = server_shutdown.wait_for(|down| *down).await;
                },
            ),
    );
    tracing::info!(%grpc_addr, "serving the agent api");

    // Paths go in lossily, as they always did: a non-UTF-8 temp dir must not stop the
    // agent from announcing itself.
    let lossy = |path: &Path| PathBuf::from(path.to_string_lossy().into_owned());
    let agent_json = AgentRuntimeInfo {
        version: 1,
        pid: std::process::id(),
        grpc_addr: grpc_addr.to_string(),
        started_at_ms,
        container_id: spec.container_id.clone(),
        session_id: spec.session_id.clone(),
        socket_dir: layout
            .socket_dir_is_fallback
            .then(|| lossy(&layout.socket_dir)),
        tmux_socket: Some(lossy(&layout.tmux_socket)),
    };
    claude::write_atomically(
        &layout.agent_json,
        &serde_json::to_vec(&agent_json).expect("agent.json always serializes"),
    )
    .map_err(io_error("write", &layout.agent_json))?;

    let mut background = Vec::new();
    background.push(tokio::spawn(signals.forward(inbox.clone())));
    let hook_listener = hooks::bind_listener(&layout.hook_socket)
        .map_err(io_error("listen on", &layout.hook_socket))?;
    background.push(tokio::spawn(hooks::serve(hook_listener, inbox.clone())));
    background.push(tokio::spawn(heartbeat::run_heartbeat_timer(
        spec.heartbeat_interval(),
        spec.workspace_dir.clone(),
        tmux_server_pid_receiver,
        inbox.clone(),
    )));

    // Checkpoints: the store on the volume, the workspace watcher, and the
    // checkpointer task that takes them one at a time.
    let checkpoint_store = Arc::new(
        parhelia_checkpoint::Store::open(&layout.checkpoints)
            .map_err(RunError::CheckpointStore)?
            .with_limits(parhelia_checkpoint::Limits::from_spec(
                &spec.checkpoint.limits,
            ))
            .with_lock_wait(crate::checkpointer::lock_wait(&spec.checkpoint)),
    );
    let mut checkpoint_paths = CheckpointPaths::new(
        &spec,
        layout.checkpoints.clone(),
        layout.conversation_staging.clone(),
    );
    if let Some(user) = &session_user {
        checkpoint_paths.git_reader = crate::git_state::Reader::SessionUser {
            agent_exe: std::env::current_exe()
                .map_err(io_error("locate", Path::new("parhelia-agent")))?,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        };
    }
    let checkpoint_paths = Arc::new(checkpoint_paths);
    let change_tracker = Arc::new(ChangeTracker::start(&spec.workspace_dir));
    let (checkpoint_jobs, checkpoint_job_receiver) = mpsc::unbounded_channel();
    background.push(tokio::spawn(
        Checkpointer::new(
            Arc::clone(&checkpoint_store),
            Arc::clone(&checkpoint_paths),
            Arc::clone(&change_tracker),
        )
        .run::<SupervisorMessage>(checkpoint_job_receiver, inbox.clone()),
    ));
    if spec.checkpoint.interval_ms > 0 {
        let interval = Duration::from_millis(spec.checkpoint.interval_ms);
        let ticks = inbox.clone();
        background.push(tokio::spawn(async move {
            let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
            loop {
                timer.tick().await;
                if ticks.send(SupervisorMessage::CheckpointTick).await.is_err() {
                    return;
                }
            }
        }));
    }

    {
        let ticks = inbox.clone();
        background.push(tokio::spawn(async move {
            let interval = crate::supervisor::SPEND_POLL_INTERVAL;
            let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                if ticks.send(SupervisorMessage::SpendTick).await.is_err() {
                    return;
                }
            }
        }));
    }

    let agent_exe =
        std::env::current_exe().map_err(io_error("locate", Path::new("parhelia-agent")))?;
    let mut environment = claude::environment(
        std::env::vars_os().collect::<Vec<(OsString, OsString)>>(),
        &spec.claude_config_dir,
        nix::unistd::Uid::effective().is_root() && session_user.is_none(),
    );
    // The session unit's marker (set by the local backend): the tmux server, Claude
    // Code and everything it runs carry it, so the coordinator can find and end
    // them if this agent dies (`coordinator/src/backend/unit.rs`).
    if let Some(marker) = std::env::var_os(UNIT_ENV) {
        environment.push((UNIT_ENV.into(), marker));
    }
    let mut tmux = match &spec.sandbox {
        None => TmuxServer::new(&layout.tmux_socket, environment),
        Some(sandbox) => sandboxed_tmux(&spec, &layout, sandbox, &agent_exe, environment),
    };
    if let Some(user) = &session_user {
        tmux = tmux.with_user(user.uid.as_raw(), user.gid.as_raw());
        tracing::info!(user = %user.name, uid = user.uid.as_raw(), "the session runs as its own user");
    }
    let supervisor = Supervisor::new(SupervisorContext {
        spec: spec.clone(),
        layout: layout.clone(),
        journal,
        tmux,
        agent_exe,
        prior_cost_usd,
        prior_charges: prior_spend.charges,
        started_at,
        started_at_ms,
        heartbeats,
        tmux_server_pid,
        inbox,
        checkpoint_jobs,
        checkpoint_store,
        checkpoint_paths,
        change_tracker,
        session_user,
        restore_progress,
    });
    let outcome = supervisor.run(inbox_receiver).await;
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "the journal failed; stopping");
    }

    // Streams send what is left and end; then the server stops.
    shutdown.send_replace(true);
    match tokio::time::timeout(SERVER_DRAIN_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the grpc server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the grpc server task failed"),
        Err(_) => tracing::warn!("the grpc server did not drain in time"),
    }
    for task in background {
        task.abort();
    }
    for path in [&layout.agent_json, &layout.hook_socket, &layout.tmux_socket] {
        let _ = std::fs::remove_file(path);
    }
    if layout.socket_dir_is_fallback {
        let _ = std::fs::remove_dir_all(&layout.socket_dir);
    }
    tracing::info!("parhelia-agent exiting");
    outcome.map_err(RunError::Journal)
}

/// The environment variable marking every process of a local session's unit.
pub const UNIT_ENV: &str = "PARHELIA_UNIT";

/// SIGTERM and SIGINT, caught from the moment [`TerminationSignals::install`] returns.
struct TerminationSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    fn install() -> std::io::Result<TerminationSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(TerminationSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Turns each signal into [`SupervisorMessage::Terminate`](crate::supervisor::SupervisorMessage::Terminate).
    async fn forward(mut self, inbox: mpsc::Sender<crate::supervisor::SupervisorMessage>) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => tracing::info!("received SIGTERM"),
                _ = self.interrupt.recv() => tracing::info!("received SIGINT"),
            }
            if inbox
                .send(crate::supervisor::SupervisorMessage::Terminate)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Logs to `<runtime_dir>/agent.log` (level from `RUST_LOG`, default info) and warnings
/// to stderr. A second call (tests) keeps the first subscriber.
fn init_logging(agent_log: &Path) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(agent_log)
        .ok()
        .map(|file| {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
        });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}

/// The tmux server inside the session sandbox: writable are the workspace, Claude Code's
/// config dir, this container's run dir (stream, stderr, exit status), the tmux socket's
/// directory and the sandbox's corner of the runtime dir; read-only the runtime dir
/// (launcher, hook settings, input FIFO), the hook socket's directory and the binaries.
fn sandboxed_tmux(
    spec: &LaunchSpec,
    layout: &Layout,
    sandbox: &crate::sandbox::SandboxSpec,
    agent_exe: &Path,
    mut environment: Vec<(OsString, OsString)>,
) -> TmuxServer {
    let tmux_dir = layout
        .tmux_socket
        .parent()
        .unwrap_or(&layout.socket_dir)
        .to_path_buf();
    let writable = [
        spec.workspace_dir.as_path(),
        spec.claude_config_dir.as_path(),
        layout.run_dir.as_path(),
        tmux_dir.as_path(),
        layout.sandbox_runtime_dir.as_path(),
    ];
    let mut read_only = vec![layout.runtime_dir.clone(), layout.socket_dir.clone()];
    read_only.extend(crate::sandbox::program_dirs(&spec.claude_bin));
    read_only.extend(crate::sandbox::program_dirs(agent_exe));
    let read_only: Vec<&Path> = read_only.iter().map(PathBuf::as_path).collect();
    let args = crate::sandbox::bwrap_args(sandbox, &writable, &read_only, &spec.workspace_dir);
    // The sandbox has a private, empty /tmp; a host TMPDIR is not visible inside.
    environment.retain(|(k, _)| k != "TMPDIR");
    environment.push(("TMPDIR".into(), "/tmp".into()));
    TmuxServer::sandboxed(&layout.tmux_socket, environment, args)
}
