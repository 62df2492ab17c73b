//! Isolation of local sessions with bubblewrap (`bwrap`).
//!
//! Under bubblewrap, Claude Code, its tmux server and every command Claude runs
//! live in a sandbox the agent starts (the agent itself, which holds the session
//! secret and writes the journal and the checkpoint store, stays outside): the
//! machine read-only, the session's workspace, config and run directories
//! writable, and the state directory, the user's home, shared temp directories
//! and every other process hidden (own PID namespace). [`sandbox_spec`] names
//! what is hidden; `agent/src/sandbox.rs` builds the command line. The network is
//! shared: Claude Code reaches the model API and the agent's hooks. The threat
//! model and its tests: `docs/security.md`.
//!
//! The setting is `local.isolation` (`auto`, the default: use bubblewrap when it
//! is installed and works here, and say plainly when it does not; `required`
//! (or `bwrap`): launch nothing without it; `none`). It comes from the
//! coordinator's own configuration, never from a request. "Works here" is a
//! real probe, because bubblewrap can be installed where user namespaces are
//! not allowed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::CodedError;
use crate::error_codes;

/// The environment variable (and env-map key) that selects isolation.
pub const ISOLATION_ENV: &str = "PARHELIA_ISOLATION";

pub use crate::plan::Isolation;

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
        "bwrap" | "bubblewrap" | "required" => {
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
            format!("unknown isolation setting `{other}` (expected auto, required, bwrap or none)"),
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

/// What a local session's sandbox hides and shows again (the agent adds the session's
/// own directories and builds the `bwrap` command line; see `agent/src/sandbox.rs`).
///
/// Hidden behind an empty tmpfs: the state directory (database, every session, the
/// coordinator socket and token, every agent's runtime and tmux socket), the user's home
/// (dotfiles with credentials: `~/.ssh`, `~/.aws`, `~/.claude.json`, …), `/tmp` and
/// `/var/tmp` (other tmux servers' and programs' sockets), and `/run/user` (the user's
/// session bus, ssh-agent and keyring sockets). Shown again read-only: the `PATH`
/// directories that sit in a hidden one (e.g. `~/.local/bin`, a Node install under
/// `~/.nvm`) and git's own configuration (`~/.gitconfig`, `~/.config/git`), so the tools
/// a session runs still work.
///
/// The local backend then gives the sandbox its private home
/// ([`super::local_home::apply_private_home`]): mounted over the hidden home, with the
/// `PATH` entries' tool directories shown and copies of the dotfiles.
///
/// `private` are further directories holding the coordinator's secrets outside
/// the state directory (the directory of a custom `orchestrator.db_path`):
/// hidden the same way.
pub fn sandbox_spec(
    state_root: &Path,
    private: &[PathBuf],
    home: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> crate::spec::SandboxSpec {
    let home = home.filter(|h| h.is_absolute() && *h != Path::new("/"));
    let mut hide: Vec<PathBuf> = vec![state_root.to_path_buf()];
    hide.extend(private.iter().filter(|p| p.is_absolute()).cloned());
    hide.extend(home.map(Path::to_path_buf));
    hide.extend(["/tmp", "/var/tmp", "/run/user"].iter().map(PathBuf::from));
    if let Ok(real) = std::fs::canonicalize(state_root)
        && real != state_root
    {
        hide.push(real);
    }
    let hidden = |p: &Path| hide.iter().any(|h| p.starts_with(h));
    let mut read_only: Vec<PathBuf> = path_var
        .map(|v| std::env::split_paths(v).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.is_absolute()
                && hidden(p)
                && !p.starts_with(state_root)
                && !private.iter().any(|d| p.starts_with(d))
        })
        .collect();
    if let Some(home) = home {
        read_only.push(home.join(".gitconfig"));
        read_only.push(home.join(".config/git"));
    }
    crate::spec::SandboxSpec {
        hide,
        read_only,
        writable: Vec::new(),
        binds: Vec::new(),
    }
}

/// The directory a sandbox must not see because it holds the database, when
/// `orchestrator.db_path` puts it outside the state directory (the database
/// and its WAL hold every session's secret). `None`: it is inside. A database
/// directly in `/` or a top-level directory (`/var/x.db`) cannot be hidden
/// without hiding the system, and is refused (E507).
pub fn db_private_dir(state_root: &Path, db_path: &Path) -> Result<Option<PathBuf>, CodedError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let root = canonical(state_root);
    let dir = match db_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => canonical(dir),
        _ => return Ok(None),
    };
    if dir.starts_with(&root) || dir.starts_with(state_root) {
        return Ok(None);
    }
    if dir.components().count() < 3 {
        return Err(CodedError::new(
            error_codes::STATE_UNAVAILABLE,
            format!(
                "orchestrator.db_path is in {}: the database holds session secrets and must be in a directory of its own that sessions can be kept out of (e.g. {})",
                dir.display(),
                state_root.join("parhelia.db").display()
            ),
        ));
    }
    Ok(Some(dir))
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
        let err = decide(Some("required"), || false).unwrap_err();
        assert_eq!(err.code, error_codes::ISOLATION_UNAVAILABLE);
        assert_eq!(
            decide(Some("required"), || true).unwrap(),
            Isolation::Bubblewrap
        );
        let err = decide(Some("docker"), || true).unwrap_err();
        assert_eq!(err.code, error_codes::INVALID_INPUT);
    }

    #[test]
    fn the_sandbox_hides_state_home_and_shared_temp_and_shows_tools_again() {
        let path = std::ffi::OsString::from("/home/u/.local/bin:/usr/bin:/home/u/.parhelia/bin");
        let spec = sandbox_spec(
            Path::new("/home/u/.parhelia"),
            &[],
            Some(Path::new("/home/u")),
            Some(&path),
        );
        for hidden in [
            "/home/u/.parhelia",
            "/home/u",
            "/tmp",
            "/var/tmp",
            "/run/user",
        ] {
            assert!(spec.hide.contains(&PathBuf::from(hidden)), "{hidden}");
        }
        assert!(
            spec.read_only
                .contains(&PathBuf::from("/home/u/.local/bin"))
        );
        assert!(
            spec.read_only
                .contains(&PathBuf::from("/home/u/.gitconfig"))
        );
        // Nothing in the state directory is shown again, not even through PATH.
        assert!(
            !spec
                .read_only
                .iter()
                .any(|p| p.starts_with("/home/u/.parhelia"))
        );
        assert!(!spec.read_only.contains(&PathBuf::from("/usr/bin")));
        // A home of `/` is not hidden (that would hide the system).
        let root_home = sandbox_spec(Path::new("/s"), &[], Some(Path::new("/")), None);
        assert!(!root_home.hide.contains(&PathBuf::from("/")));
    }

    #[test]
    fn a_database_outside_the_state_directory_is_hidden_too() {
        let state = Path::new("/home/u/.parhelia");
        assert_eq!(
            db_private_dir(state, &state.join("parhelia.db")).unwrap(),
            None
        );
        let dir = db_private_dir(state, Path::new("/srv/parhelia/db/p.db"))
            .unwrap()
            .unwrap();
        assert_eq!(dir, PathBuf::from("/srv/parhelia/db"));
        let path = std::ffi::OsString::from("/srv/parhelia/db/bin:/usr/bin");
        let spec = sandbox_spec(state, &[dir], Some(Path::new("/home/u")), Some(&path));
        assert!(spec.hide.contains(&PathBuf::from("/srv/parhelia/db")));
        assert!(
            !spec
                .read_only
                .iter()
                .any(|p| p.starts_with("/srv/parhelia/db")),
            "nothing in it is shown again through PATH"
        );
        for system in ["/p.db", "/var/p.db"] {
            let err = db_private_dir(state, Path::new(system)).unwrap_err();
            assert_eq!(err.code, error_codes::STATE_UNAVAILABLE, "{system}");
        }
    }
}
