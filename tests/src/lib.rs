//! Test support for Parhelia: the scripted Anthropic Messages API stand-in that lets the real
//! Claude Code run offline ([`model_stand_in`]), and a way to find and run that Claude Code in
//! tests ([`claude_code`]), and the end-to-end harness that drives the real `parhelia` binaries
//! in a private state directory ([`harness`]).

pub mod chaos;
pub mod claude_code;
pub mod harness;
pub mod model_stand_in;
pub mod procs;
pub mod session_user;

pub use model_stand_in::{Script, StandIn, StandInOptions, ToolCall, Turn};
