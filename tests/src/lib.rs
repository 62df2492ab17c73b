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

/// `git -C DIR ARGS` with an identity for commits, asserting success; returns stdout,
/// trimmed. (The end-to-end modules' one git helper.)
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@localhost"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
