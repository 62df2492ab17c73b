//! Where Parhelia keeps its state, and the layout inside it.
//!
//! Discovery follows `docs/dev/contracts.md`: walk up from the current
//! directory for a `.parhelia/` directory (as git finds `.git`); if there is
//! none, `$PARHELIA_HOME`; else `~/.parhelia`. The directory is created on
//! demand (mode 0700, so the socket and the database inside are private even
//! before their own modes are set). `--state-dir` on the command line
//! overrides discovery; the CLI uses it to start the coordinator on exactly
//! the directory it discovered.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::CodedError;
use crate::error_codes;

/// The directory name looked for while walking up.
pub const STATE_DIR_NAME: &str = ".parhelia";

/// Longest Unix socket path we use (the kernel limit is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 100;

/// How the state directory was found (shown by `parhelia status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateDirSource {
    /// `--state-dir` on the command line.
    Explicit,
    /// A `.parhelia/` in the current directory or one of its parents.
    WalkedUp,
    /// `$PARHELIA_HOME`.
    ParheliaHome,
    /// `~/.parhelia`.
    UserHome,
}

/// A state directory (the `.parhelia/` itself, absolute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
    source: StateDirSource,
}

/// The inputs of discovery, so the decision itself is testable without a
/// process environment.
pub struct DiscoveryInputs<'a> {
    pub cwd: &'a Path,
    pub parhelia_home: Option<OsString>,
    pub user_home: Option<PathBuf>,
}

/// Pure discovery: `is_dir` answers whether a path is an existing directory.
pub fn discover_with(
    inputs: &DiscoveryInputs<'_>,
    is_dir: impl Fn(&Path) -> bool,
) -> Option<(PathBuf, StateDirSource)> {
    for dir in inputs.cwd.ancestors() {
        let candidate = dir.join(STATE_DIR_NAME);
        if is_dir(&candidate) {
            return Some((candidate, StateDirSource::WalkedUp));
        }
    }
    if let Some(home) = inputs.parhelia_home.as_ref().filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        let home = if home.is_absolute() {
            home
        } else {
            inputs.cwd.join(home)
        };
        return Some((home, StateDirSource::ParheliaHome));
    }
    let user_home = inputs.user_home.as_ref()?;
    Some((user_home.join(STATE_DIR_NAME), StateDirSource::UserHome))
}

impl StateDir {
    /// Finds the state directory for this process (`explicit` is `--state-dir`).
    /// Does not create it.
    pub fn discover(explicit: Option<&Path>) -> io::Result<Self> {
        let cwd = std::env::current_dir()?;
        if let Some(path) = explicit {
            let root = if path.is_absolute() {
                path.to_path_buf()
            } else {
                cwd.join(path)
            };
            return Ok(Self::new(root, StateDirSource::Explicit));
        }
        let inputs = DiscoveryInputs {
            cwd: &cwd,
            parhelia_home: std::env::var_os("PARHELIA_HOME"),
            user_home: std::env::var_os("HOME").map(PathBuf::from),
        };
        let (root, source) = discover_with(&inputs, Path::is_dir).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no .parhelia directory found, PARHELIA_HOME and HOME are unset",
            )
        })?;
        Ok(Self::new(root, source))
    }

    /// A state directory at a known path.
    pub fn new(root: PathBuf, source: StateDirSource) -> Self {
        // Resolve symlinks when the directory exists, so every process that
        // finds it derives the same socket path.
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        Self { root, source }
    }

    /// Creates the directory (mode 0700) and its `sessions/` and `containers/`.
    pub fn ensure(&mut self) -> io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(&self.root)?;
        builder.create(self.root.join("sessions"))?;
        builder.create(self.root.join("containers"))?;
        if let Ok(canonical) = std::fs::canonicalize(&self.root) {
            self.root = canonical;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn source(&self) -> StateDirSource {
        self.source
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("parhelia.db")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("coordinator.lock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("coordinator.log")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `coordinator.sock` in the state directory, or, when that would be too
    /// long for a Unix socket, a short path in this user's private directory
    /// `/tmp/parhelia-<uid>/`. The fallback deliberately ignores `$TMPDIR`:
    /// the CLI and a coordinator started from another shell must agree.
    pub fn socket_path(&self) -> PathBuf {
        socket_path_for(&self.root, nix::unistd::getuid().as_raw())
    }

    /// Makes sure the socket's directory is safe to use: the state directory
    /// itself, or the private fallback directory, created with mode 0700 and
    /// refused (E507) when another user owns it or others can enter it. The
    /// CLI sends Claude Code's credentials over this socket, so a directory
    /// someone else controls must never be trusted.
    pub fn prepare_socket_dir(&self) -> Result<PathBuf, CodedError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let socket = self.socket_path();
        let dir = socket.parent().expect("socket path has a parent");
        if dir == self.root {
            return Ok(socket);
        }
        let unsafe_dir = |why: String| {
            CodedError::new(
                error_codes::STATE_UNAVAILABLE,
                format!("unsafe socket directory {}: {why}", dir.display()),
            )
        };
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unsafe_dir(e.to_string())),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| unsafe_dir(e.to_string()))?;
        if !meta.is_dir() {
            return Err(unsafe_dir("not a directory".into()));
        }
        if meta.uid() != nix::unistd::getuid().as_raw() {
            return Err(unsafe_dir(format!("owned by uid {}", meta.uid())));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(unsafe_dir(format!(
                "mode {:o}",
                meta.permissions().mode() & 0o777
            )));
        }
        Ok(socket)
    }

    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.root.join("sessions").join(session_id)
    }

    pub fn container_dir(&self, container_id: &str) -> PathBuf {
        self.root.join("containers").join(container_id)
    }

    pub fn containers_root(&self) -> PathBuf {
        self.root.join("containers")
    }
}

/// The socket path for a state directory (pure). Long state paths get
/// `/tmp/parhelia-<uid>/<hash of the state dir>.sock`.
pub fn socket_path_for(root: &Path, uid: u32) -> PathBuf {
    let preferred = root.join("coordinator.sock");
    if preferred.as_os_str().len() <= MAX_SOCKET_PATH_BYTES {
        return preferred;
    }
    Path::new("/tmp")
        .join(format!("parhelia-{uid}"))
        .join(format!(
            "{:016x}.sock",
            fnv1a64(root.as_os_str().as_encoded_bytes())
        ))
}

/// FNV-1a, 64 bit: a hash that is stable across builds and Rust versions
/// (unlike `DefaultHasher`), so the CLI and the coordinator always agree.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover(cwd: &str, home_env: Option<&str>, existing: &[&str]) -> (PathBuf, StateDirSource) {
        let inputs = DiscoveryInputs {
            cwd: Path::new(cwd),
            parhelia_home: home_env.map(OsString::from),
            user_home: Some(PathBuf::from("/home/u")),
        };
        discover_with(&inputs, |p| existing.iter().any(|e| Path::new(e) == p)).unwrap()
    }

    #[test]
    fn discovery_order() {
        // A .parhelia above the cwd wins over everything else.
        assert_eq!(
            discover("/repo/a/b", Some("/ph"), &["/repo/.parhelia"]),
            (PathBuf::from("/repo/.parhelia"), StateDirSource::WalkedUp)
        );
        // The nearest one wins.
        assert_eq!(
            discover("/repo/a/b", None, &["/repo/.parhelia", "/repo/a/.parhelia"]).0,
            PathBuf::from("/repo/a/.parhelia")
        );
        assert_eq!(
            discover("/repo/a", Some("/ph"), &[]),
            (PathBuf::from("/ph"), StateDirSource::ParheliaHome)
        );
        assert_eq!(
            discover("/repo/a", Some("rel"), &[]).0,
            PathBuf::from("/repo/a/rel")
        );
        assert_eq!(
            discover("/repo/a", Some(""), &[]),
            (PathBuf::from("/home/u/.parhelia"), StateDirSource::UserHome)
        );
    }

    #[test]
    fn subdirectory_sees_the_same_state_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(".parhelia");
        std::fs::create_dir(&root).unwrap();
        let deep = tmp.path().join("x/y/z");
        std::fs::create_dir_all(&deep).unwrap();
        for cwd in [tmp.path().to_path_buf(), deep] {
            let inputs = DiscoveryInputs {
                cwd: &cwd,
                parhelia_home: Some("/elsewhere".into()),
                user_home: None,
            };
            let (found, source) = discover_with(&inputs, Path::is_dir).unwrap();
            assert_eq!(found, root);
            assert_eq!(source, StateDirSource::WalkedUp);
        }
    }

    #[test]
    fn long_state_dirs_get_a_short_stable_socket() {
        let short = Path::new("/home/u/.parhelia");
        assert_eq!(socket_path_for(short, 1000), short.join("coordinator.sock"));
        let long = PathBuf::from(format!("/{}/.parhelia", "d".repeat(120)));
        let a = socket_path_for(&long, 1000);
        assert_eq!(a, socket_path_for(&long, 1000));
        assert!(a.starts_with("/tmp/parhelia-1000/"), "{a:?}");
        assert!(a.as_os_str().len() <= MAX_SOCKET_PATH_BYTES);
        let other = PathBuf::from(format!("/{}/.parhelia", "e".repeat(120)));
        assert_ne!(socket_path_for(&other, 1000), a);
        assert_ne!(socket_path_for(&long, 1001), a);
    }

    #[test]
    fn a_fallback_socket_dir_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("d".repeat(110)).join(".parhelia");
        std::fs::create_dir_all(&long).unwrap();
        let state = StateDir::new(long.clone(), StateDirSource::Explicit);
        let socket = state.prepare_socket_dir().unwrap();
        let dir = socket.parent().unwrap();
        assert_eq!(
            std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = state.prepare_socket_dir().unwrap_err().to_string();
        assert!(err.contains("unsafe socket directory"), "{err}");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
