//! The simulated-agent host's control protocol (`docs/formats/sim-agents.md`): what the
//! coordinator's `sim` backend (`coordinator/src/backend/sim.rs`, opted into with
//! [`SIM_AGENTS_SOCKET_ENV`]) asks the host (`parhelia-sim-agents`, `tests/sim-agent/`)
//! over its Unix socket. One JSON object per line, one request and one reply per
//! connection. The agents themselves speak the real `agent.proto` with real session
//! secrets; this protocol only stands in for what a container runtime does (start,
//! list, stop, say where an agent listens).

use serde::{Deserialize, Serialize};

/// The environment variable that makes a coordinator run its local sessions as simulated
/// agents in the host listening on this Unix socket (load tests only).
pub const SIM_AGENTS_SOCKET_ENV: &str = "PARHELIA_SIM_AGENTS_SOCKET";

/// The protocol's version, sent with every request; a host refuses another.
pub const SIM_PROTOCOL_VERSION: u32 = 1;

/// A request to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRequest {
    pub version: u32,
    #[serde(flatten)]
    pub op: SimOp,
}

/// What the host is asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SimOp {
    /// Start one simulated agent: it journals to
    /// `<volume_dir>/journal/<container_id>.jsonl` (the real agent's journal) and serves
    /// `agent.proto` on a loopback port, refusing any call without `secret`.
    Launch {
        container_id: String,
        session_id: String,
        task_id: String,
        /// The launching coordinator's id: `list` reports it, as a label.
        coordinator_id: String,
        secret: String,
        volume_dir: String,
        heartbeat_interval_ms: u64,
    },
    /// The agents running now.
    List,
    /// Ends one agent as SIGTERM ends a real one (it journals an interrupted session).
    Terminate { container_id: String },
    /// Where one agent listens.
    Endpoint { container_id: String },
}

/// One running simulated agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimContainer {
    pub container_id: String,
    pub session_id: String,
    pub coordinator_id: String,
    pub uri: String,
}

/// The host's answer. `error` set: refused (its message); else the fields the
/// operation fills.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `launch`, `endpoint`: the agent's gRPC endpoint (`http://127.0.0.1:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<SimContainer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_one_flat_json_object() {
        let request = SimRequest {
            version: SIM_PROTOCOL_VERSION,
            op: SimOp::Terminate {
                container_id: "ctr-1".into(),
            },
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(
            line,
            r#"{"version":1,"op":"terminate","container_id":"ctr-1"}"#
        );
        assert_eq!(serde_json::from_str::<SimRequest>(&line).unwrap(), request);
    }
}
