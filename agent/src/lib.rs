//! `parhelia-agent`: runs one Claude Code session inside a private tmux server, turns what
//! it does into a durable, sequenced event journal, and serves that journal, heartbeats
//! and control over an authenticated gRPC API (`parhelia.v1.Agent`).
//!
//! Architecture: one supervisor task ([`supervisor`]) owns the session's state. The gRPC
//! server ([`server`]), the hook listener ([`hooks`]), the stream follower
//! ([`headless_io`]), the heartbeat timer ([`heartbeat`]) and the signal handler only
//! send it messages. tmux is reached only through [`tmux`]; Claude Code's command line,
//! environment and config only through [`claude`]. Checkpoints are taken by their own
//! task ([`checkpointer`]) from the workspace (changes tracked by [`change_tracker`]),
//! the staged conversation ([`conversation`]) and the git state ([`git_state`]). The binary (`main.rs`) is a thin
//! wrapper over [`cli::main`].

pub mod agent;
pub mod change_tracker;
pub mod checkpointer;
pub mod claude;
pub mod cli;
pub mod config_seed;
pub mod conversation;
pub mod cost;
pub mod disk;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod git_state;
pub mod headless_io;
pub mod heartbeat;
pub mod hooks;
pub mod interactive_io;
pub mod journal;
pub mod layout;
pub mod risky;
pub mod sandbox;
pub mod server;
pub mod session_file;
pub mod session_user;
pub mod spec;
pub mod spend;
pub mod stream_json;
pub mod supervisor;
pub mod terminal;
pub mod tmux;
pub mod transcript;
