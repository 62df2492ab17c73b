//! Optional isolation of local sessions with bubblewrap (`bwrap`).
//!
//! Under bubblewrap the agent, tmux, Claude Code and every command Claude runs
//! see the machine's file system read-only, except the session's own
//! directories (workspace and volume) and the container's directory (config,
//! runtime, a private temp dir). The network is shared: the coordinator
//! reaches the agent on loopback and Claude Code reaches the model API. No PID
//! namespace, so the process ids the agent reports are real ones.
//!
//! The setting comes from `PARHELIA_ISOLATION` (`auto`, the default: use
//! bubblewrap when it is installed and works here; `bwrap`: require it;
//! `none`). "Works here" is a real probe, because bubblewrap can be installed
//! where user namespaces are not allowed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::CodedError;
use crate::error_codes;

/// The environment variable (and env-map key) that selects isolation.
pub const ISOLATION_ENV: &str = "PARHELIA_ISOLATION";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    None,
    Bubblewrap,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::None => "none",
            Isolation::Bubblewrap => "bwrap",
        }
    }
}

/// Decides the isolation for a launch from the setting (pure apart from
/// `bwrap_works`, which is only asked when the answer depends on it).
pub fn decide(
    setting: Option<&str>,
    bwrap_works: impl FnOnce() -> bool,
) -> Result<Isolation, CodedError> {
    match setting.map(str::trim).unwrap_or("") {
        "" | "auto" => Ok(if bwrap_works() {
            Isolation::Bubblewrap
        } else {
            Isolation::None
        }),
        "none" => Ok(Isolation::None),
        "bwrap" | "bubblewrap" => {
            if bwrap_works() {
                Ok(Isolation::Bubblewrap)
            } else {
                Err(CodedError::new(
                    error_codes::ISOLATION_UNAVAILABLE,
                    "bubblewrap isolation was requested but `bwrap` is not installed or cannot create a sandbox here",
                ))
            }
        }
        other => Err(CodedError::new(
            error_codes::INVALID_INPUT,
            format!("unknown {ISOLATION_ENV} value `{other}` (expected auto, bwrap or none)"),
        )),
    }
}

/// Whether `bwrap` is on PATH and can start a sandbox like the ones we make.
/// Probed once per process.
pub fn bwrap_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        std::process::Command::new("bwrap")
            .args([
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--",
                "true",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The `bwrap` arguments (before `--` and the agent's command line) that give
/// the session write access to `writable` only. Later binds win over the
/// read-only root, so every writable directory is bound after it.
pub fn bwrap_args(writable: &[&Path], cwd: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        .iter()
        .map(OsString::from)
        .collect();
    for dir in writable {
        args.push("--bind".into());
        args.push(dir.as_os_str().to_owned());
        args.push(dir.as_os_str().to_owned());
    }
    args.extend([
        "--unshare-ipc".into(),
        "--unshare-uts".into(),
        "--chdir".into(),
    ]);
    args.push(cwd.as_os_str().to_owned());
    args
}

/// The private temp directory of a container under isolation.
pub fn private_tmp(container_dir: &Path) -> PathBuf {
    container_dir.join("tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_decide_isolation() {
        assert_eq!(decide(None, || true).unwrap(), Isolation::Bubblewrap);
        assert_eq!(decide(Some("auto"), || false).unwrap(), Isolation::None);
        assert_eq!(
            decide(Some("none"), || panic!("not asked")).unwrap(),
            Isolation::None
        );
        assert_eq!(
            decide(Some("bwrap"), || true).unwrap(),
            Isolation::Bubblewrap
        );
        let err = decide(Some("bwrap"), || false).unwrap_err();
        assert_eq!(err.code, error_codes::ISOLATION_UNAVAILABLE);
        let err = decide(Some("docker"), || true).unwrap_err();
        assert_eq!(err.code, error_codes::INVALID_INPUT);
    }

    #[test]
    fn writable_dirs_are_bound_after_the_read_only_root() {
        let args = bwrap_args(&[Path::new("/s/ws"), Path::new("/c")], Path::new("/s/ws"));
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let root = text.iter().position(|a| a == "--ro-bind").unwrap();
        let bind = text.iter().position(|a| a == "--bind").unwrap();
        assert!(root < bind);
        assert_eq!(&text[bind..bind + 3], ["--bind", "/s/ws", "/s/ws"]);
        assert_eq!(text.last().unwrap(), "/s/ws");
    }
}
