//! `parhelia`: the local coordinator and CLI.
//!
//! Pure logic (no IO): [`task_state`], [`render`], [`plan`], [`views`],
//! [`error_codes`], [`spec`], [`ids`]. Adapters around it: [`db`] (SQLite),
//! [`backend`] (processes and files), [`agent_client`] and [`ingest`] (the
//! agents' gRPC streams), [`daemon`] (the coordinator process and its
//! socket), [`coordinator_client`], [`watch`] and [`cli`] (the front end).
//! `docs/dev/contracts.md` fixes the seams with the agent.

pub mod agent_client;
pub mod backend;
pub mod binaries;
pub mod cli;
pub mod coordinator_client;
pub mod daemon;
pub mod db;
pub mod error;
pub mod error_codes;
pub mod ids;
pub mod ingest;
pub mod plan;
pub mod render;
pub mod spec;
pub mod state_dir;
pub mod task_state;
pub mod views;
pub mod watch;
