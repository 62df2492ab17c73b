//! The agent's integration tests, one binary (`it`) instead of one per file; each file is
//! a module (nextest: `parhelia-agent::it <module>::<test>`), sharing `support` (a fixture
//! directory with a spec, the real `parhelia-agent`, a fake `claude`, a gRPC follower).

mod fuzz_regressions;
mod headless_agent;
mod hostile_restore;
mod interactive_session;
mod real_claude_code;
mod session_user;
mod support;
