//! Where Parhelia keeps its state, and the layout inside it.
//!
//! Discovery follows `docs/dev/contracts.md`: walk up from the current
//! directory for a `.parhelia/` directory (as git finds `.git`); if there is
//! none, `$PARHELIA_HOME`; else `~/.parhelia`. The directory is created on
//! demand (mode 0700, so the socket and the database inside are private even
//! before their own modes are set). `--state-dir` on the command line
//! overrides discovery; the CLI uses it to start the coordinator on exactly
//! the directory it discovered.
//!
//! Everything in the state directory is private to its owner: the database
//! (and its `-wal`/`-shm`) holds every session's secret. [`StateDir::ensure`]
//! makes the directory (and `sessions/`, `containers/`) mode 0700 before
//! anything is written into it: a too-open directory (a `.parhelia/` made with
//! `mkdir` under umask 022 is 0755) is narrowed, and one owned by another
//! user is refused (E509). [`set_private_umask`] makes every file the
//! process creates owner-only whatever the user's umask.

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

    /// Creates the directory and its `sessions/` and `containers/`, and makes
    /// each private (mode 0700, see [`make_private_dir`]). A directory another
    /// user owns, or whose mode cannot be narrowed, is an error that carries
    /// an E509 [`CodedError`] (see [`Self::ensure_private`]).
    pub fn ensure(&mut self) -> io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(&self.root)?;
        if let Ok(canonical) = std::fs::canonicalize(&self.root) {
            self.root = canonical;
        }
        // The state directory first: nothing is created inside it while
        // others can still look in.
        make_private_dir(&self.root).map_err(io::Error::other)?;
        for sub in ["sessions", "containers"] {
            let dir = self.root.join(sub);
            builder.create(&dir)?;
            make_private_dir(&dir).map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// [`Self::ensure`] with its failure as a coded error: E509 when the
    /// directory is someone else's or cannot be made private, E507 when it
    /// cannot be created.
    pub fn ensure_private(&mut self) -> Result<(), CodedError> {
        self.ensure().map_err(|e| {
            if let Some(coded) = e.get_ref().and_then(|i| i.downcast_ref::<CodedError>()) {
                return coded.clone();
            }
            CodedError::new(
                error_codes::STATE_UNAVAILABLE,
                format!(
                    "cannot create the state directory {}: {e}",
                    self.root.display()
                ),
            )
        })
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

/// Makes every file and directory this process creates owner-only (umask
/// 0o077), whatever the user's umask: the state directory holds session
/// secrets (the database, its WAL and shared-memory files, the socket, logs),
/// and SQLite creates its `-wal`/`-shm` files itself. Called once at startup
/// by the CLI (and so by the coordinator it starts, which inherits it).
pub fn set_private_umask() {
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o077));
    // Keep whatever stricter bits the user asked for.
    umask(old | Mode::from_bits_truncate(0o077));
}

/// What to do with an existing directory that must be private (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateDirAction {
    /// Owned by us and closed to others: nothing to do.
    Keep,
    /// Owned by us but open to group or others: chmod 0700.
    Narrow,
    /// Owned by another user: refuse (E509).
    RefuseOwner,
}

/// The decision for a directory with owner `dir_uid` and `mode`, seen by a
/// process with effective uid `my_uid`.
pub fn private_dir_action(dir_uid: u32, my_uid: u32, mode: u32) -> PrivateDirAction {
    if dir_uid != my_uid {
        PrivateDirAction::RefuseOwner
    } else if mode & 0o077 != 0 {
        PrivateDirAction::Narrow
    } else {
        PrivateDirAction::Keep
    }
}

/// Makes the existing directory `dir` private: mode 0700 if it is ours and
/// open to others; E509 if another user owns it, it is not a directory, or
/// its mode cannot be narrowed.
pub fn make_private_dir(dir: &Path) -> Result<(), CodedError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let insecure = |why: String| {
        CodedError::new(
            error_codes::STATE_DIR_INSECURE,
            format!(
                "the state directory {} is not private: {why}",
                dir.display()
            ),
        )
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| insecure(e.to_string()))?;
    if !meta.is_dir() {
        return Err(insecure("not a directory".into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    match private_dir_action(meta.uid(), nix::unistd::geteuid().as_raw(), mode) {
        PrivateDirAction::Keep => Ok(()),
        PrivateDirAction::RefuseOwner => Err(insecure(format!(
            "it is owned by uid {}, not by this user (uid {})",
            meta.uid(),
            nix::unistd::geteuid()
        ))),
        PrivateDirAction::Narrow => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| insecure(format!("mode {mode:o} cannot be changed to 700: {e}")))?;
            let now = std::fs::symlink_metadata(dir)
                .map_err(|e| insecure(e.to_string()))?
                .permissions()
                .mode();
            if now & 0o077 != 0 {
                return Err(insecure(format!(
                    "mode {:o} stays open to others",
                    now & 0o777
                )));
            }
            tracing::info!(
                "narrowed {} from mode {mode:o} to 700 (it holds session secrets)",
                dir.display()
            );
            Ok(())
        }
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

    #[test]
    fn private_dir_decisions() {
        use PrivateDirAction::*;
        assert_eq!(private_dir_action(1000, 1000, 0o700), Keep);
        assert_eq!(private_dir_action(1000, 1000, 0o755), Narrow);
        assert_eq!(private_dir_action(1000, 1000, 0o710), Narrow);
        assert_eq!(private_dir_action(1000, 1000, 0o701), Narrow);
        assert_eq!(private_dir_action(0, 1000, 0o700), RefuseOwner);
        assert_eq!(private_dir_action(1001, 1000, 0o777), RefuseOwner);
        // Root is refused a user's directory too: it must not write secrets
        // into a tree that user controls.
        assert_eq!(private_dir_action(1000, 0, 0o700), RefuseOwner);
    }

    #[test]
    fn a_mkdir_made_state_dir_is_narrowed_before_use() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(".parhelia");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(root.join("sessions")).unwrap();
        std::fs::set_permissions(
            root.join("sessions"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let mut state = StateDir::new(root.clone(), StateDirSource::WalkedUp);
        state.ensure_private().unwrap();
        for dir in [&root, &root.join("sessions"), &root.join("containers")] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }

    #[test]
    fn a_state_dir_owned_by_someone_else_is_refused_with_e509() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can hand a directory to another user; the decision
            // itself is covered by `private_dir_decisions`.
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(".parhelia");
        std::fs::create_dir(&root).unwrap();
        nix::unistd::chown(&root, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let mut state = StateDir::new(root.clone(), StateDirSource::WalkedUp);
        let err = state.ensure_private().unwrap_err();
        assert_eq!(err.code, error_codes::STATE_DIR_INSECURE);
        assert!(
            err.message.contains("owned by uid 65534"),
            "{}",
            err.message
        );
        assert!(
            !root.join("sessions").exists(),
            "nothing is created in a refused directory"
        );
    }

    #[test]
    fn a_state_path_that_is_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = make_private_dir(&file).unwrap_err();
        assert_eq!(err.code, error_codes::STATE_DIR_INSECURE);
    }
}
