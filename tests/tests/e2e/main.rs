//! The `parhelia-tests` integration tests, one binary (`e2e`) so the workspace links one
//! test executable for this crate instead of one per file; each file is a module, and
//! nextest names a test `parhelia-tests::e2e <module>::<test>` (e.g. `budget::…`).
//!
//! End to end (the real `parhelia`, coordinator, agent, tmux and Claude Code on the
//! scripted model stand-in; `.config/nextest.toml` puts them in the `e2e` test group):
//! every module but the three below. Light: `fixtures` (the captured Claude Code samples),
//! `stand_in_http` (the stand-in over HTTP) and `tidy` (the source tree's shape).
//!
//! `chaos::chaos_rounds` is the long run behind `scripts/chaos` (ignored here).

mod advice_followed;
mod advice_host;
mod advice_modal;
mod attach;
mod budget;
mod chaos;
mod checkpoint;
mod completions;
mod conversation;
mod examples;
mod faults;
mod fixtures;
mod hostile_store;
mod isolation;
mod journal_db;
mod load;
mod mcp;
mod messages;
mod modal;
mod modal_image;
mod outcome;
mod procs;
mod readme;
mod sandbox_attacks;
mod secrets;
mod spend;
mod stand_in_claude;
mod stand_in_http;
mod store_damage;
mod task;
mod task_set;
mod tidy;
mod ui;
mod user_setup;
