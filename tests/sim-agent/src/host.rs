//! The simulated-agent host: serves `parhelia_contract::sim`'s control protocol on a
//! Unix socket and runs the agents the coordinator's `sim` backend launches, all in
//! this process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use parhelia_contract::sim::{SIM_PROTOCOL_VERSION, SimContainer, SimOp, SimReply, SimRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::{AgentIdentity, EventMix, SimAgent};

/// The longest request line read.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// The host: its agents by container id.
#[derive(Clone)]
pub struct SimHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    socket: PathBuf,
    mix: EventMix,
    seed: u64,
    agents: Mutex<BTreeMap<String, Arc<SimAgent>>>,
}

impl SimHost {
    /// Binds `socket` and serves it on the current runtime until the host is dropped
    /// with [`SimHost::shutdown`].
    pub fn start(socket: &Path, mix: EventMix, seed: u64) -> Result<SimHost> {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
        let host = SimHost {
            inner: Arc::new(HostInner {
                socket: socket.to_path_buf(),
                mix,
                seed,
                agents: Mutex::new(BTreeMap::new()),
            }),
        };
        let serving = host.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let host = serving.clone();
                tokio::spawn(async move {
                    if let Err(e) = host.serve_one(stream).await {
                        eprintln!("sim host: {e:#}");
                    }
                });
            }
        });
        Ok(host)
    }

    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<SimAgent>>> {
        self.inner.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every agent launched so far (running or ended), by container id.
    pub fn all_agents(&self) -> Vec<Arc<SimAgent>> {
        self.agents().values().cloned().collect()
    }

    /// Asks every agent to end its session by itself.
    pub fn finish_all(&self) {
        for agent in self.all_agents() {
            agent.finish();
        }
    }

    /// Ends every agent's server (nothing journaled).
    pub fn shutdown(&self) {
        for agent in self.all_agents() {
            agent.abandon();
        }
    }

    async fn serve_one(&self, stream: tokio::net::UnixStream) -> Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read.take(MAX_REQUEST_BYTES))
            .read_line(&mut line)
            .await?;
        let reply = match serde_json::from_str::<SimRequest>(&line) {
            Ok(request) if request.version == SIM_PROTOCOL_VERSION => {
                self.handle(request.op).await.unwrap_or_else(|e| SimReply {
                    error: Some(format!("{e:#}")),
                    ..SimReply::default()
                })
            }
            Ok(request) => SimReply {
                error: Some(format!(
                    "protocol version {} (this host speaks {SIM_PROTOCOL_VERSION})",
                    request.version
                )),
                ..SimReply::default()
            },
            Err(e) => SimReply {
                error: Some(format!("not a request: {e}")),
                ..SimReply::default()
            },
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        Ok(())
    }

    async fn handle(&self, op: SimOp) -> Result<SimReply> {
        match op {
            SimOp::Launch {
                container_id,
                session_id,
                task_id,
                coordinator_id,
                secret,
                volume_dir,
                heartbeat_interval_ms,
            } => {
                if self.agents().contains_key(&container_id) {
                    anyhow::bail!("container {container_id} was launched before");
                }
                let seed = self.inner.seed ^ fxhash(&container_id);
                let agent = SimAgent::start(
                    AgentIdentity {
                        container_id: container_id.clone(),
                        session_id,
                        task_id,
                        coordinator_id,
                    },
                    &secret,
                    Path::new(&volume_dir),
                    Duration::from_millis(heartbeat_interval_ms.max(100)),
                    self.inner.mix.clone(),
                    seed,
                )
                .await?;
                let uri = agent.uri.clone();
                self.agents().insert(container_id, Arc::new(agent));
                Ok(SimReply {
                    uri: Some(uri),
                    ..SimReply::default()
                })
            }
            SimOp::List => Ok(SimReply {
                containers: self
                    .all_agents()
                    .into_iter()
                    .filter(|a| !a.has_ended())
                    .map(|a| SimContainer {
                        container_id: a.identity.container_id.clone(),
                        session_id: a.identity.session_id.clone(),
                        coordinator_id: a.identity.coordinator_id.clone(),
                        uri: a.uri.clone(),
                    })
                    .collect(),
                ..SimReply::default()
            }),
            SimOp::Terminate { container_id } => {
                let agent = self.agents().get(&container_id).cloned();
                if let Some(agent) = agent {
                    agent.terminate().await;
                }
                Ok(SimReply::default())
            }
            SimOp::Endpoint { container_id } => {
                let agent = self.agents().get(&container_id).cloned();
                match agent {
                    Some(agent) if !agent.has_ended() => Ok(SimReply {
                        uri: Some(agent.uri.clone()),
                        ..SimReply::default()
                    }),
                    Some(_) => anyhow::bail!("the agent of {container_id} has exited"),
                    None => anyhow::bail!("no agent of {container_id} was launched here"),
                }
            }
        }
    }
}

/// A stable per-container seed (FNV-1a).
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
