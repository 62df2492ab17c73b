//! Finding the programs a launch needs: Claude Code (`claude`) and the agent
//! (`parhelia-agent`).
//!
//! Claude Code: `$PARHELIA_CLAUDE_BIN` if set (a path, or a name looked up on
//! PATH), else `claude` on PATH; always returned as an absolute path. Missing
//! or not executable is E501.
//!
//! The agent: an explicit path (`$PARHELIA_AGENT_BIN`), else
//! `parhelia-agent` next to the running `parhelia` executable, else on PATH.
//! Missing is E502.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::CodedError;
use crate::error_codes;

pub const CLAUDE_BIN_NAME: &str = "claude";
pub const AGENT_BIN_NAME: &str = "parhelia-agent";

/// True for an existing regular file (after symlinks) with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Looks `name` up on a PATH value; the result is absolute.
pub fn find_on_path(name: &str, path_var: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    // An empty entry means the current directory to `which` (as to sh); we never search it.
    let dirs: Vec<PathBuf> = std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    if dirs.is_empty() {
        return None;
    }
    let path_var = std::env::join_paths(dirs).ok()?;
    which::which_in(name, Some(path_var), cwd)
        .ok()
        .filter(|found| is_executable(found))
}

/// Resolves Claude Code from an override and a PATH value.
pub fn resolve_claude_bin(
    override_value: Option<&OsStr>,
    path_var: Option<&OsStr>,
    cwd: &Path,
) -> Result<PathBuf, CodedError> {
    let not_installed =
        |what: String| CodedError::new(error_codes::CLAUDE_CODE_NOT_INSTALLED, what);
    match override_value.filter(|v| !v.is_empty()) {
        Some(value) => {
            let given = PathBuf::from(value);
            if given.components().count() > 1 || given.is_absolute() {
                let absolute = if given.is_absolute() {
                    given
                } else {
                    cwd.join(given)
                };
                if is_executable(&absolute) {
                    Ok(absolute)
                } else {
                    Err(not_installed(format!(
                        "claude code not found: PARHELIA_CLAUDE_BIN={} is not an executable file",
                        absolute.display()
                    )))
                }
            } else {
                let name = given.to_string_lossy();
                find_on_path(&name, path_var, cwd).ok_or_else(|| {
                    not_installed(format!(
                        "claude code not found: PARHELIA_CLAUDE_BIN={name} is not on PATH"
                    ))
                })
            }
        }
        None => find_on_path(CLAUDE_BIN_NAME, path_var, cwd).ok_or_else(|| {
            not_installed("claude code not found: `claude` is not on PATH".to_string())
        }),
    }
}

/// Resolves the agent binary.
pub fn resolve_agent_bin(
    explicit: Option<&Path>,
    current_exe: Option<&Path>,
    path_var: Option<&OsStr>,
    cwd: &Path,
) -> Result<PathBuf, CodedError> {
    let failed = |what: String| CodedError::new(error_codes::AGENT_FAILED_TO_START, what);
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        };
        return if is_executable(&absolute) {
            Ok(absolute)
        } else {
            Err(failed(format!(
                "agent binary not found: PARHELIA_AGENT_BIN={} is not an executable file",
                absolute.display()
            )))
        };
    }
    if let Some(sibling) = current_exe
        .and_then(Path::parent)
        .map(|dir| dir.join(AGENT_BIN_NAME))
        && is_executable(&sibling)
    {
        return Ok(sibling);
    }
    find_on_path(AGENT_BIN_NAME, path_var, cwd).ok_or_else(|| {
        failed(format!(
            "agent binary not found: no {AGENT_BIN_NAME} next to parhelia or on PATH"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn claude_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let claude = executable(&bin, "claude");
        let other = executable(tmp.path(), "my-claude");
        std::fs::write(tmp.path().join("not-exec"), "").unwrap();
        let path = bin.as_os_str();
        let cwd = tmp.path();

        assert_eq!(resolve_claude_bin(None, Some(path), cwd).unwrap(), claude);
        assert_eq!(
            resolve_claude_bin(Some(other.as_os_str()), None, cwd).unwrap(),
            other
        );
        assert_eq!(
            resolve_claude_bin(Some(OsStr::new("./my-claude")), None, cwd).unwrap(),
            cwd.join("./my-claude")
        );
        assert_eq!(
            resolve_claude_bin(Some(OsStr::new("claude")), Some(path), cwd).unwrap(),
            claude
        );
        for bad in ["/nonexistent", "not-exec-but/x"] {
            let err = resolve_claude_bin(Some(OsStr::new(bad)), Some(path), cwd).unwrap_err();
            assert_eq!(err.code.code, "E501");
        }
        let err = resolve_claude_bin(None, Some(OsStr::new("/nowhere")), cwd).unwrap_err();
        assert_eq!(err.code.code, "E501");
        assert_eq!(
            resolve_claude_bin(None, None, cwd).unwrap_err().code.code,
            "E501"
        );
    }

    /// PATH lookup through `which` keeps the old rules: an empty entry (which sh, and
    /// `which`, read as the current directory) is never searched; a relative entry is
    /// taken from the current directory; a file without an execute bit is passed over.
    #[test]
    fn path_lookup_never_searches_the_current_directory_for_an_empty_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path();
        executable(cwd, "claude");
        let rel = cwd.join("rel");
        std::fs::create_dir(&rel).unwrap();
        for path in [":/nonexistent", "/nonexistent:", "/a::/b", ""] {
            assert_eq!(
                find_on_path("claude", Some(OsStr::new(path)), cwd),
                None,
                "{path:?}"
            );
        }
        let in_rel = executable(&rel, "claude");
        assert_eq!(
            find_on_path("claude", Some(OsStr::new("::rel")), cwd),
            Some(in_rel)
        );
        std::fs::write(rel.join("agent"), "").unwrap();
        assert_eq!(find_on_path("agent", Some(OsStr::new("rel")), cwd), None);
    }

    #[test]
    fn agent_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let exe_dir = tmp.path().join("target");
        std::fs::create_dir(&exe_dir).unwrap();
        let sibling = executable(&exe_dir, "parhelia-agent");
        let exe = exe_dir.join("parhelia");
        let cwd = tmp.path();
        assert_eq!(
            resolve_agent_bin(None, Some(&exe), None, cwd).unwrap(),
            sibling
        );
        let explicit = executable(tmp.path(), "fake-agent");
        assert_eq!(
            resolve_agent_bin(Some(&explicit), Some(&exe), None, cwd).unwrap(),
            explicit
        );
        let err =
            resolve_agent_bin(Some(Path::new("/nonexistent")), Some(&exe), None, cwd).unwrap_err();
        assert_eq!(err.code.code, "E502");
        let err =
            resolve_agent_bin(None, Some(&tmp.path().join("x/parhelia")), None, cwd).unwrap_err();
        assert_eq!(err.code.code, "E502");
    }
}
