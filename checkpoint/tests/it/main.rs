//! The checkpoint engine's integration tests, one binary (`it`) instead of one per file;
//! each file is a module (nextest: `parhelia-checkpoint::it <module>::<test>`), sharing
//! `common` (tree listings and request builders).

mod chunked;
mod common;
mod engine;
mod fixture_v1;
mod fixture_v2;
mod fuzz_regressions;
mod history;
mod hostile;
mod index_cache;
mod prune;
mod repair;
mod safety;
