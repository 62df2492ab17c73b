//! The `sim` backend: local sessions run as simulated agents in a separate host
//! process (`parhelia-sim-agents`, `tests/sim-agent/`), for load tests of the real
//! coordinator (issue 17). Each simulated agent is the real agent's gRPC service
//! (`parhelia_agent::server::AgentService`) over the real journal, behind the real
//! session-secret check, with a scripted stand-in for Claude Code; the coordinator
//! follows it exactly as it follows a real agent: this backend only replaces what a
//! container runtime does (start, list, stop, say where the agent listens), over the
//! host's control socket (`parhelia_contract::sim`, `docs/formats/sim-agents.md`).
//!
//! Opt-in only: the coordinator builds it instead of the local backend when
//! [`SIM_AGENTS_SOCKET_ENV`] names a socket, and says so in its log. Nothing else in
//! the coordinator knows it exists, so the code under test is the production code.

use std::path::PathBuf;

use anyhow::{Context, Result};
use async_trait::async_trait;
pub use parhelia_contract::sim::SIM_AGENTS_SOCKET_ENV;
use parhelia_contract::sim::{SIM_PROTOCOL_VERSION, SimOp, SimReply, SimRequest};
use parhelia_proto::Event;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Backend, ContainerHandle, Endpoint, LaunchRequest, ObservedContainer};
use crate::plan::local_layout;

/// The longest reply line read from the host (a `list` of 10,000 agents is ~2 MB).
const MAX_REPLY_BYTES: u64 = 64 << 20;

pub struct SimBackend {
    socket: PathBuf,
    state_root: PathBuf,
    coordinator_id: String,
    heartbeat_interval_ms: u64,
}

impl SimBackend {
    pub fn new(
        socket: PathBuf,
        state_root: PathBuf,
        coordinator_id: String,
        heartbeat_interval_ms: u64,
    ) -> SimBackend {
        SimBackend {
            socket,
            state_root,
            coordinator_id,
            heartbeat_interval_ms,
        }
    }

    /// The backend [`SIM_AGENTS_SOCKET_ENV`] asks for, if it does.
    pub fn from_env(
        state_root: PathBuf,
        coordinator_id: String,
        heartbeat_interval_ms: u64,
    ) -> Option<SimBackend> {
        let socket = std::env::var_os(SIM_AGENTS_SOCKET_ENV).filter(|v| !v.is_empty())?;
        Some(SimBackend::new(
            PathBuf::from(socket),
            state_root,
            coordinator_id,
            heartbeat_interval_ms,
        ))
    }

    async fn ask(&self, op: SimOp) -> Result<SimReply> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to the sim host at {}", self.socket.display()))?;
        let mut line = serde_json::to_vec(&SimRequest {
            version: SIM_PROTOCOL_VERSION,
            op,
        })?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut reply = String::new();
        BufReader::new(stream.take(MAX_REPLY_BYTES))
            .read_line(&mut reply)
            .await
            .context("reading the sim host's reply")?;
        let reply: SimReply =
            serde_json::from_str(&reply).context("the sim host's reply is not one")?;
        if let Some(error) = reply.error {
            anyhow::bail!("the sim host refused: {error}");
        }
        Ok(reply)
    }
}

#[async_trait]
impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerHandle> {
        let layout = local_layout(
            &self.state_root,
            &request.ids.session_id,
            &request.ids.container_id,
        );
        std::fs::create_dir_all(layout.volume_dir.join("journal"))
            .with_context(|| format!("creating {}", layout.volume_dir.display()))?;
        std::fs::create_dir_all(&layout.workspace_dir)?;
        self.ask(SimOp::Launch {
            container_id: request.ids.container_id.clone(),
            session_id: request.ids.session_id.clone(),
            task_id: request.ids.task_id.clone(),
            coordinator_id: self.coordinator_id.clone(),
            secret: request.secret.expose().to_string(),
            volume_dir: layout.volume_dir.to_string_lossy().into_owned(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        })
        .await?;
        Ok(ContainerHandle {
            container_id: request.ids.container_id.clone(),
            pid: None,
            workspace_dir: layout.workspace_dir,
            volume_dir: layout.volume_dir,
            remote_id: None,
        })
    }

    async fn list(&self) -> Result<Vec<ObservedContainer>> {
        let reply = self.ask(SimOp::List).await?;
        Ok(reply
            .containers
            .into_iter()
            .filter(|c| c.coordinator_id == self.coordinator_id)
            .map(|c| ObservedContainer {
                container_id: c.container_id,
                session_id: c.session_id,
                pid: None,
                endpoint: Some(c.uri),
                coordinator_label: c.coordinator_id,
            })
            .collect())
    }

    async fn terminate(&self, container_id: &str) -> Result<()> {
        self.ask(SimOp::Terminate {
            container_id: container_id.to_string(),
        })
        .await?;
        Ok(())
    }

    async fn read_journal(
        &self,
        container_id: &str,
        session_id: &str,
        from_seq: u64,
    ) -> Result<Vec<Event>> {
        let path = local_layout(&self.state_root, session_id, container_id)
            .volume_dir
            .join("journal")
            .join(format!("{container_id}.jsonl"));
        tokio::task::spawn_blocking(move || super::local::read_journal_file(&path, from_seq))
            .await
            .context("reading the journal panicked")?
    }

    async fn endpoint(&self, container_id: &str) -> Result<Endpoint> {
        let reply = self
            .ask(SimOp::Endpoint {
                container_id: container_id.to_string(),
            })
            .await?;
        Ok(Endpoint {
            uri: reply
                .uri
                .context("the sim host named no endpoint for the container")?,
            pid: None,
        })
    }
}
