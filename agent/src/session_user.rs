//! Uid separation: the agent stays root and everything the session runs (the tmux server,
//! Claude Code, its tools, attached tmux clients) runs as an unprivileged user.
//!
//! On Modal there is no bubblewrap: the sandbox is the container, and the agent shares it
//! with Claude Code. Run as the same user, Claude Code (and any command a prompt injection
//! makes it run) could read the agent's secret from `/proc/<agent>/environ`, and rewrite
//! the journal and the checkpoint store the coordinator trusts. With `session_user` in the
//! spec the agent keeps root and hands the session only what it must write:
//!
//! - given to the user (owner, recursively, without following links): the workspace,
//!   Claude Code's config dir, the container's run dir (stream, stderr, exit status), the
//!   sandbox runtime dir (`claude.pid`), the tmux socket's directory, the hook socket and
//!   the input FIFO;
//! - kept root-only (0700): the journal dir, the checkpoint store, the volume's
//!   `containers/` (every container's spec), the runtime dir's own files (agent log,
//!   `agent.json`) and the socket dir's listing — the runtime, socket, volume session and
//!   volume `sessions/` dirs are 0711, so the user can reach what it was given and list
//!   nothing else;
//! - readable (0644, root-owned): the hook settings and the launcher script.
//!
//! The hand-over walks directories by file descriptor (`openat` with `O_NOFOLLOW`), so a
//! link or a directory swapped for a link while it runs is never followed out of the tree.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::layout::Layout;
use crate::spec::LaunchSpec;

/// Deeper trees than this are not handed over (an error, never a stack overflow).
const MAX_DEPTH: usize = 512;

/// The unprivileged user the session runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionUserError {
    #[error("the session user {0:?} does not exist here")]
    Unknown(String),
    #[error("the session user {0:?} is root; a session user must be unprivileged")]
    IsRoot(String),
    #[error("the agent runs as uid {0}, not root: it cannot run the session as another user")]
    NotRoot(u32),
    #[error("cannot look up the session user {name:?}: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("cannot hand {path} to the session user: {source}")]
    HandOver {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is nested deeper than {MAX_DEPTH} directories; not handed over")]
    TooDeep { path: PathBuf },
}

impl SessionUser {
    /// Looks `name` up in the user database; the agent itself must be root.
    pub fn resolve(name: &str) -> Result<SessionUser, SessionUserError> {
        if !Uid::effective().is_root() {
            return Err(SessionUserError::NotRoot(Uid::effective().as_raw()));
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| SessionUserError::Lookup {
                name: name.into(),
                source,
            })?
            .ok_or_else(|| SessionUserError::Unknown(name.into()))?;
        if user.uid.is_root() {
            return Err(SessionUserError::IsRoot(name.into()));
        }
        Ok(SessionUser {
            name: name.into(),
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
        })
    }

    /// Makes `path` and everything under it owned by the user (links themselves, never
    /// their targets). A missing `path` is fine.
    pub fn give_tree(&self, path: &Path) -> Result<(), SessionUserError> {
        let fail = |source: nix::Error| SessionUserError::HandOver {
            path: path.to_path_buf(),
            source: source.into(),
        };
        let root = match nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(()),
            // A link at the root itself (given, never what it points to), or a socket.
            Err(nix::Error::ELOOP | nix::Error::ENXIO) => {
                return nix::unistd::fchownat(
                    nix::fcntl::AT_FDCWD,
                    path,
                    Some(self.uid),
                    Some(self.gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(fail);
            }
            Err(e) => return Err(fail(e)),
        };
        nix::unistd::fchown(root.as_fd(), Some(self.uid), Some(self.gid)).map_err(fail)?;
        let is_dir = nix::sys::stat::fstat(root.as_fd())
            .map(|s| {
                nix::sys::stat::SFlag::from_bits_truncate(s.st_mode)
                    .intersection(nix::sys::stat::SFlag::S_IFMT)
                    == nix::sys::stat::SFlag::S_IFDIR
            })
            .map_err(fail)?;
        if is_dir {
            self.give_children(root, path, 0)?;
        }
        Ok(())
    }

    fn give_children(
        &self,
        dir_fd: OwnedFd,
        path: &Path,
        depth: usize,
    ) -> Result<(), SessionUserError> {
        if depth > MAX_DEPTH {
            return Err(SessionUserError::TooDeep {
                path: path.to_path_buf(),
            });
        }
        let fail = |source: nix::Error| SessionUserError::HandOver {
            path: path.to_path_buf(),
            source: source.into(),
        };
        let dup = dir_fd
            .try_clone()
            .map_err(|source| SessionUserError::HandOver {
                path: path.to_path_buf(),
                source,
            })?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(fail)?;
        let mut subdirs = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            nix::unistd::fchownat(
                dir_fd.as_fd(),
                name,
                Some(self.uid),
                Some(self.gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|source| SessionUserError::HandOver {
                path: path.join(OsStr::from_bytes(bytes)),
                source: source.into(),
            })?;
            let maybe_dir = matches!(entry.file_type(), Some(nix::dir::Type::Directory) | None);
            if maybe_dir {
                subdirs.push(name.to_owned());
            }
        }
        drop(dir);
        for name in subdirs {
            let child_path = path.join(OsStr::from_bytes(name.to_bytes()));
            match nix::fcntl::openat(
                dir_fd.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(child) => self.give_children(child, &child_path, depth + 1)?,
                // Gone, a link, or not a directory after all: nothing to descend into.
                Err(nix::Error::ENOENT | nix::Error::ELOOP | nix::Error::ENOTDIR) => {}
                Err(source) => {
                    return Err(SessionUserError::HandOver {
                        path: child_path,
                        source: source.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Gives the session what it writes and closes the rest (module docs). Run before
    /// every launch of Claude Code: restores and the config seed write as root.
    pub fn hand_over(&self, spec: &LaunchSpec, layout: &Layout) -> Result<(), SessionUserError> {
        for tree in [
            &spec.workspace_dir,
            &spec.claude_config_dir,
            &layout.run_dir,
            &layout.sandbox_runtime_dir,
            &tmux_dir(layout),
        ] {
            self.give_tree(tree)?;
        }
        for single in [&layout.hook_socket, &layout.input_fifo] {
            self.give_tree(single)?;
        }
        // Reachable, not listable.
        let mut passable = vec![
            spec.runtime_dir.clone(),
            layout.socket_dir.clone(),
            spec.volume_dir.clone(),
        ];
        passable.extend(layout.run_dir.parent().map(Path::to_path_buf));
        // The volume's `sessions/`: other sessions' ids are not listed, only reached.
        passable.extend(spec.volume_dir.parent().map(Path::to_path_buf));
        for dir in passable {
            set_mode(&dir, 0o711)?;
        }
        for private in [
            &layout.journal_dir,
            &layout.checkpoints,
            // Every container's spec.json.
            &spec.volume_dir.join("containers"),
            &layout.agent_log,
            &layout.agent_json,
        ] {
            set_mode(private, 0o700)?;
        }
        for readable in [&layout.hooks_settings, &layout.launcher_script] {
            set_mode(readable, 0o644)?;
        }
        Ok(())
    }
}

fn tmux_dir(layout: &Layout) -> PathBuf {
    layout
        .tmux_socket
        .parent()
        .unwrap_or(&layout.socket_dir)
        .to_path_buf()
}

/// chmod without following a link (a link is left alone); a missing path is fine.
fn set_mode(path: &Path, mode: u32) -> Result<(), SessionUserError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Ok(()),
        Ok(_) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
                |source| SessionUserError::HandOver {
                    path: path.to_path_buf(),
                    source,
                },
            )
        }
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn nobody() -> Option<SessionUser> {
        if !Uid::effective().is_root() {
            eprintln!("skipped: handing files over needs root");
            return None;
        }
        Some(SessionUser {
            name: "nobody".into(),
            uid: Uid::from_raw(65534),
            gid: Gid::from_raw(65534),
            home: "/nonexistent".into(),
        })
    }

    #[test]
    fn a_tree_is_handed_over_without_following_links_out_of_it() {
        let Some(user) = nobody() else { return };
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "root's").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link-to-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), tree.join("link-to-file")).unwrap();
        nix::unistd::mkfifo(&tree.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();

        user.give_tree(&tree).unwrap();

        for inside in [
            "",
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/file",
            "a/link-to-dir",
            "link-to-file",
            "fifo",
        ] {
            let meta = std::fs::symlink_metadata(tree.join(inside)).unwrap();
            assert_eq!(meta.uid(), 65534, "{inside}");
        }
        for untouched in [&outside, &outside.join("secret")] {
            assert_eq!(std::fs::metadata(untouched).unwrap().uid(), 0);
        }
        // A root that is itself a link: the link is given, its target is not.
        user.give_tree(&tree.join("link-to-file")).unwrap();
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().uid(), 0);
        // Missing: nothing to do.
        user.give_tree(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn a_tree_deeper_than_the_limit_is_refused_not_overflowed() {
        let Some(user) = nobody() else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().join("tree");
        std::fs::create_dir(&deep).unwrap();
        for _ in 0..=MAX_DEPTH + 1 {
            deep = deep.join("d");
            std::fs::create_dir(&deep).unwrap();
        }
        assert!(matches!(
            user.give_tree(&dir.path().join("tree")),
            Err(SessionUserError::TooDeep { .. })
        ));
    }

    #[test]
    fn root_and_unknown_users_are_refused() {
        if !Uid::effective().is_root() {
            assert!(matches!(
                SessionUser::resolve("nobody"),
                Err(SessionUserError::NotRoot(_))
            ));
            return;
        }
        assert!(matches!(
            SessionUser::resolve("root"),
            Err(SessionUserError::IsRoot(_))
        ));
        assert!(matches!(
            SessionUser::resolve("no-such-user-parhelia"),
            Err(SessionUserError::Unknown(_))
        ));
    }
}
