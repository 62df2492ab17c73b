//! The coordinator's integration tests, one binary (`it`) instead of one per file; each
//! file is a module (nextest: `parhelia-coordinator::it <module>::<test>`), sharing
//! `support` (a private state directory, the real binaries, a fake `claude`).
//!
//! `state_perms` stays a binary of its own (`tests/state_perms.rs`): it sets the
//! process-wide umask, which would race every other test here under `cargo test`.

mod advice;
mod agent_tls;
mod backend_contract;
mod cli;
mod cli_color;
mod cli_control;
mod control_plane;
mod fuzz_regressions;
mod ingest;
mod modal_live;
mod real_claude_code;
mod storage_modal;
mod support;
