//! `parhelia`: the local coordinator and CLI.
//!
//! Pure logic (no IO): [`task_state`], [`container_state`], [`reconcile`],
//! [`queue`], [`event_filter`], [`render`], [`plan`], [`views`],
//! [`error_codes`], [`spec`], [`ids`], and [`config`]'s resolution.
//! Adapters around it: [`db`] (SQLite), [`backend`] (processes and files),
//! [`agent_client`] and [`ingest`] (the agents' gRPC streams and journals),
//! [`service`] (the operations every front end calls), [`reconciler`] (the
//! reconcile step's inputs and actions), [`recovery`] and [`checkpoints`] (resume and the
//! sessions' checkpoint stores), [`daemon`] (the coordinator process
//! and its socket), [`coordinator_client`], [`watch`], [`doctor`] and
//! [`cli`] (the front end). `docs/dev/contracts.md` fixes the seams with the
//! agent.

pub mod agent_client;
pub mod agent_helpers;
pub mod backend;
pub mod binaries;
pub mod budget;
pub mod checkpoints;
pub mod checks;
pub mod cli;
pub mod config;
pub mod config_sync;
pub mod container_state;
pub mod control_auth;
pub mod coordinator_client;
pub mod daemon;
pub mod db;
pub mod disk_guard;
#[cfg(test)]
mod docs_drift;
pub mod doctor;
pub mod error;
pub mod error_codes;
pub mod event_filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod ingest;
pub mod modal_ops;
pub mod output_look;
pub mod plan;
pub mod progress;
pub mod pull;
pub mod queue;
pub mod rates;
pub mod reconcile;
pub mod reconciler;
pub mod records;
pub mod recovery;
pub mod render;
pub mod service;
pub mod spec;
pub mod spend_series;
pub mod state_dir;
pub mod storage;
pub mod store_health;
pub mod table;
pub mod task_state;
pub mod term;
pub mod usage;
pub mod views;
pub mod watch;
