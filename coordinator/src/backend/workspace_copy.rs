//! Copying the user's workspace into a session: every file (including
//! `.git`), symlinks as symlinks (never followed), permission bits, and empty
//! directories. Paths listed in `exclude` (the state directory, when it sits
//! inside the workspace) are not copied, so a session never contains the
//! sessions directory itself.
//!
//! A session reads everything in its workspace, so what may become one is
//! checked before anything is copied:
//! - [`refuse_unsafe_root`]: never `/`, the user's home directory itself (or
//!   a directory containing it), or a system directory, judged on the
//!   canonical path (a symlink to `/` is `/`). E111.
//! - [`preflight`]: one walk that does not follow symlinks refuses special
//!   files (FIFOs, sockets, devices: a copy would block on a FIFO forever or
//!   reproduce device nodes; E111 naming the path) and counts bytes and
//!   entries against [`CopyLimits`] (E112).
//!
//! [`copy_tree`] runs the preflight itself, opens every file without
//! following symlinks and without blocking, copies only what is still a
//! regular file, and removes its partial copy when anything fails.
//!
//! The walk (directories and symlinks, in order) is one thread; regular files
//! are copied by [`COPY_THREADS`] workers it hands them to, each file whole by
//! `copy_file_range` (in the kernel; a reflink where the file system offers
//! one). A directory is created before any file inside it is handed out.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::CodedError;
use crate::error_codes;

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub skipped: u64,
    pub bytes: u64,
}

/// Size limits of a workspace copy (`workspace.max_copy_bytes`,
/// `workspace.max_copy_files`); `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyLimits {
    pub max_bytes: Option<u64>,
    pub max_entries: Option<u64>,
}

impl CopyLimits {
    pub const UNLIMITED: CopyLimits = CopyLimits {
        max_bytes: None,
        max_entries: None,
    };

    /// The configured limits, or none when the user passed
    /// `--allow-large-workspace`.
    pub fn from_config(config: &crate::config::WorkspaceConfig, allow_large: bool) -> Self {
        if allow_large {
            return Self::UNLIMITED;
        }
        CopyLimits {
            max_bytes: Some(config.max_copy_bytes),
            max_entries: Some(config.max_copy_files),
        }
    }
}

/// What a preflight counted (everything it would copy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    /// Bytes of regular files (their lengths; symlinks count nothing).
    pub bytes: u64,
    /// Files, directories and symlinks below the root.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
}

/// How far a copy has got: regular files (and their bytes) copied, of those the
/// preflight counted. A file that grows while it is copied can take `bytes_done`
/// past `bytes_total`; nothing here invents the difference away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Which transfer of a launch's workspace a [`CopyProgress`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkspaceStage {
    /// The local backend's copy into the session directory.
    Copy,
    /// The Modal backend's checkpoint of the workspace (the seed) in the local
    /// mirror: regular files read into it, of the preflight's totals.
    Checkpoint,
    /// The Modal backend's upload of the seed's store files the volume lacks:
    /// files (and bytes) whose upload batch the volume committed, of those it lacked.
    Upload,
}

impl WorkspaceStage {
    /// Every stage, in the order a launch goes through them.
    pub const ALL: [WorkspaceStage; 3] = [Self::Copy, Self::Checkpoint, Self::Upload];

    /// Its name in `TaskTransferProgress.stage` (`coordinator.proto`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Checkpoint => "checkpoint",
            Self::Upload => "upload",
        }
    }

    /// What a person is shown while it runs.
    pub fn step(self) -> &'static str {
        match self {
            Self::Copy => "copying the workspace into the session",
            Self::Checkpoint => "checkpointing the workspace (the Modal session's starting point)",
            Self::Upload => "uploading the workspace checkpoint to the Modal volume",
        }
    }
}

/// Told how far the transfers of a launch's workspace have got (the service hands
/// the submitting CLI's follower one, see `LaunchRequest::workspace_progress`).
#[derive(Clone)]
pub struct WorkspaceProgress(
    pub std::sync::Arc<dyn Fn(WorkspaceStage, CopyProgress) + Send + Sync>,
);

impl std::fmt::Debug for WorkspaceProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkspaceProgress")
    }
}

/// System directories that are never a workspace, nor is anything inside
/// them (they hold other users' data, credentials, or special files).
const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr", "/var",
];

/// Directories that are never a workspace themselves (their subdirectories
/// may be: `/opt/project`, `/srv/site`, `/tmp/scratch`).
const SYSTEM_DIRS: &[&str] = &[
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/snap", "/srv", "/tmp", "/Users",
];

/// Why `canonical` (an absolute, symlink-free path) must not be copied into a
/// session, or `None`. `homes` are the user's home directories (canonical).
/// Pure.
pub fn unsafe_root_reason(canonical: &Path, homes: &[PathBuf]) -> Option<String> {
    if canonical == Path::new("/") {
        return Some("it is the whole filesystem".into());
    }
    for home in homes {
        if home == canonical {
            return Some("it is your home directory".into());
        }
        if home.starts_with(canonical) {
            return Some(format!(
                "it contains your home directory {}",
                home.display()
            ));
        }
    }
    if SYSTEM_DIRS.iter().any(|d| canonical == Path::new(d)) {
        return Some("it is a system directory".into());
    }
    if let Some(tree) = SYSTEM_TREES
        .iter()
        .find(|t| canonical.starts_with(Path::new(t)))
    {
        return Some(format!("it is inside the system directory {tree}"));
    }
    // Another user's home: /root unless it is ours (handled above as a
    // parent of, or equal to, the home).
    if canonical.starts_with("/root") && !homes.iter().any(|h| canonical.starts_with(h)) {
        return Some("it is inside another user's home directory /root".into());
    }
    None
}

/// The user's home directories, canonical: `$HOME` and the password
/// database's entry (they usually agree).
pub fn user_homes() -> Vec<PathBuf> {
    let mut homes = Vec::new();
    let env_home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let pw_home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir);
    for home in env_home.into_iter().chain(pw_home) {
        let home = fs::canonicalize(&home).unwrap_or(home);
        if home.is_absolute() && !homes.contains(&home) {
            homes.push(home);
        }
    }
    homes
}

/// E111 when `canonical` must not become a workspace (see
/// [`unsafe_root_reason`]). Call it on the canonicalized `--workspace`.
pub fn refuse_unsafe_root(canonical: &Path) -> Result<(), CodedError> {
    match unsafe_root_reason(canonical, &user_homes()) {
        None => Ok(()),
        Some(why) => Err(CodedError::new(
            error_codes::WORKSPACE_REFUSED,
            format!(
                "refusing to copy {} into a session: {why}",
                canonical.display()
            ),
        )),
    }
}

fn special_file_error(path: &Path, kind: &str) -> CodedError {
    CodedError::new(
        error_codes::WORKSPACE_REFUSED,
        format!(
            "the workspace holds a {kind}, which is never copied into a session: {}",
            crate::term::escape_untrusted(&path.to_string_lossy())
        ),
    )
}

fn special_kind(file_type: &fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        Some("FIFO")
    } else if file_type.is_socket() {
        Some("socket")
    } else if file_type.is_block_device() {
        Some("block device")
    } else if file_type.is_char_device() {
        Some("character device")
    } else if file_type.is_file() || file_type.is_dir() || file_type.is_symlink() {
        None
    } else {
        Some("special file")
    }
}

/// Walks `src` without following symlinks (skipping `exclude`): E111 at the
/// first special file, E112 as soon as the bytes or entries exceed `limits`
/// (so a huge tree is not walked to its end). Reads nothing but metadata.
pub fn preflight(src: &Path, exclude: &[PathBuf], limits: CopyLimits) -> Result<Preflight> {
    let mut counted = Preflight::default();
    let mut walker = walkdir::WalkDir::new(src)
        .follow_links(false)
        .min_depth(1)
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.with_context(|| format!("walking {}", src.display()))?;
        let path = entry.path();
        if exclude.iter().any(|e| e == path) {
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        if let Some(kind) = special_kind(&entry.file_type()) {
            return Err(special_file_error(path, kind).into());
        }
        counted.entries += 1;
        if entry.file_type().is_file() {
            counted.files += 1;
            let len = entry
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            counted.bytes = counted.bytes.saturating_add(len);
        }
        let over_bytes = limits.max_bytes.is_some_and(|max| counted.bytes > max);
        let over_entries = limits.max_entries.is_some_and(|max| counted.entries > max);
        if over_bytes || over_entries {
            let what = if over_bytes {
                format!(
                    "more than {} (workspace.max_copy_bytes)",
                    crate::render::bytes(limits.max_bytes.unwrap_or_default())
                )
            } else {
                format!(
                    "more than {} files and directories (workspace.max_copy_files)",
                    limits.max_entries.unwrap_or_default()
                )
            };
            return Err(CodedError::new(
                error_codes::WORKSPACE_TOO_LARGE,
                format!(
                    "the workspace {} holds {what}; nothing was copied",
                    src.display()
                ),
            )
            .into());
        }
    }
    Ok(counted)
}

/// Copies `src` into `dst` (created if missing; must be empty or absent),
/// refusing special files (E111) and applying no size limit.
pub fn copy_tree(src: &Path, dst: &Path, exclude: &[PathBuf]) -> Result<CopyStats> {
    copy_tree_limited(src, dst, exclude, CopyLimits::UNLIMITED)
}

/// [`copy_tree`] with size limits checked before anything is copied (E112).
/// On any failure, what was copied so far is removed (`dst` too when this
/// call created it).
pub fn copy_tree_limited(
    src: &Path,
    dst: &Path,
    exclude: &[PathBuf],
    limits: CopyLimits,
) -> Result<CopyStats> {
    copy_tree_reporting(src, dst, exclude, limits, &|_| {})
}

/// [`copy_tree_limited`], telling `on_progress` how far it has got: once with the
/// preflight's totals before the first file, then after each file copied.
pub fn copy_tree_reporting(
    src: &Path,
    dst: &Path,
    exclude: &[PathBuf],
    limits: CopyLimits,
    on_progress: &dyn Fn(CopyProgress),
) -> Result<CopyStats> {
    let counted = preflight(src, exclude, limits)?;
    let existed = dst.exists();
    let mut progress = CopyProgress {
        files_total: counted.files,
        bytes_total: counted.bytes,
        ..CopyProgress::default()
    };
    on_progress(progress);
    let mut copied = |bytes: u64| {
        progress.files_done += 1;
        progress.bytes_done += bytes;
        on_progress(progress);
    };
    match copy_checked(src, dst, exclude, &mut copied) {
        Ok(stats) => Ok(stats),
        Err(e) => {
            if let Err(cleanup) = remove_partial_copy(dst, existed) {
                tracing::warn!(
                    "could not remove the partial copy {}: {cleanup}",
                    dst.display()
                );
            }
            Err(e)
        }
    }
}

/// Removes a failed copy: its contents, and `dst` itself unless it existed
/// before. Directories may already carry read-only modes: they are opened up
/// first (this is our own copy, never the source).
fn remove_partial_copy(dst: &Path, keep_dst: bool) -> io::Result<()> {
    if !dst.exists() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(dst).follow_links(false) {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
        }
    }
    if keep_dst {
        for entry in fs::read_dir(dst)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    } else {
        fs::remove_dir_all(dst)
    }
}

/// Copies one regular file: the source is opened without following a
/// symlink and without blocking (a FIFO swapped in after the preflight does
/// not hang the copy), and copied only if it is still a regular file.
fn copy_file(path: &Path, target: &Path) -> Result<u64> {
    let mut source = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = source
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if let Some(kind) = special_kind(&meta.file_type()) {
        return Err(special_file_error(path, kind).into());
    }
    if !meta.is_file() {
        return Err(special_file_error(path, "non-regular file").into());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .with_context(|| format!("creating {}", target.display()))?;
    let copied = io::copy(&mut source, &mut out)
        .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
    // The source's permission bits, as `fs::copy` would carry them over (on the open
    // file: no second lookup of the path).
    out.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", target.display()))?;
    Ok(copied)
}

/// Workers that copy regular files while the walk goes on.
pub const COPY_THREADS: usize = 4;

/// The file copies of one tree: jobs in, each copy's bytes (or its error) out.
struct FileCopiers<'scope> {
    jobs: Option<std::sync::mpsc::SyncSender<(PathBuf, PathBuf)>>,
    done: std::sync::mpsc::Receiver<Result<u64>>,
    handed_out: u64,
    finished: u64,
    _workers: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> FileCopiers<'scope> {
    fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(PathBuf, PathBuf)>(256);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let (done_tx, done) = std::sync::mpsc::channel();
        let workers = (0..COPY_THREADS)
            .map(|_| {
                let queue = std::sync::Arc::clone(&queue);
                let done_tx = done_tx.clone();
                scope.spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((path, target)) = job else { return };
                        if done_tx.send(copy_file(&path, &target)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        FileCopiers {
            jobs: Some(jobs),
            done,
            handed_out: 0,
            finished: 0,
            _workers: workers,
        }
    }

    /// Hands a file to a worker; first takes in what has finished (its bytes to
    /// `copied`), failing at the first copy that failed.
    fn copy(&mut self, path: PathBuf, target: PathBuf, copied: &mut dyn FnMut(u64)) -> Result<()> {
        self.collect(copied, false)?;
        self.handed_out += 1;
        self.jobs
            .as_ref()
            .context("the file copiers have stopped")?
            .send((path, target))
            .map_err(|_| anyhow::anyhow!("the file copiers have stopped"))
    }

    /// Takes in finished copies: those done so far, or (`all`) every one handed out.
    fn collect(&mut self, copied: &mut dyn FnMut(u64), all: bool) -> Result<()> {
        if all {
            self.jobs = None;
        }
        while self.finished < self.handed_out {
            let result = if all {
                self.done
                    .recv()
                    .map_err(|_| anyhow::anyhow!("a file copier stopped"))?
            } else {
                match self.done.try_recv() {
                    Ok(result) => result,
                    Err(_) => return Ok(()),
                }
            };
            self.finished += 1;
            copied(result?);
        }
        Ok(())
    }
}

fn copy_checked(
    src: &Path,
    dst: &Path,
    exclude: &[PathBuf],
    copied: &mut dyn FnMut(u64),
) -> Result<CopyStats> {
    std::thread::scope(|scope| {
        let mut files = FileCopiers::start(scope);
        let mut stats = CopyStats::default();
        let mut counted = |bytes: u64| {
            stats.bytes += bytes;
            stats.files += 1;
            copied(bytes);
        };
        let walked = walk_and_copy(src, dst, exclude, &mut files, &mut counted);
        // Every file handed out is waited for, whatever the walk's outcome: a failed
        // copy is removed only once nothing writes into it any more.
        let finished = files.collect(&mut counted, true);
        let (dirs, symlinks, skipped) = walked?;
        finished?;
        stats.dirs = dirs;
        stats.symlinks = symlinks;
        stats.skipped = skipped;
        Ok(stats)
    })
}

/// The walk: directories and symlinks made in order, regular files handed to
/// `files`; directory modes applied once every file is in. Returns the
/// directories, symlinks and excluded entries.
fn walk_and_copy(
    src: &Path,
    dst: &Path,
    exclude: &[PathBuf],
    files: &mut FileCopiers<'_>,
    copied: &mut dyn FnMut(u64),
) -> Result<(u64, u64, u64)> {
    let (mut dirs, mut symlinks, mut skipped) = (0, 0, 0);
    fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    // Directory modes are applied last, so a read-only directory can still
    // be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let root_mode = fs::metadata(src)
        .with_context(|| format!("reading {}", src.display()))?
        .permissions()
        .mode();
    dir_modes.push((dst.to_path_buf(), root_mode));

    let mut walker = walkdir::WalkDir::new(src)
        .follow_links(false)
        .min_depth(1)
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.with_context(|| format!("walking {}", src.display()))?;
        let path = entry.path();
        if exclude.iter().any(|e| e == path) {
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            skipped += 1;
            continue;
        }
        let relative = path
            .strip_prefix(src)
            .context("walked outside the workspace")?;
        let target = dst.join(relative);
        let file_type = entry.file_type();
        if file_type.is_symlink() {
            let link =
                fs::read_link(path).with_context(|| format!("reading link {}", path.display()))?;
            std::os::unix::fs::symlink(&link, &target)
                .with_context(|| format!("creating link {}", target.display()))?;
            symlinks += 1;
        } else if file_type.is_dir() {
            fs::create_dir(&target).or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })?;
            let mode = entry.metadata()?.permissions().mode();
            dir_modes.push((target, mode));
            dirs += 1;
        } else if file_type.is_file() {
            files.copy(path.to_path_buf(), target, copied)?;
        } else {
            // The preflight refused these; one that appeared since is too.
            let kind = special_kind(&file_type).unwrap_or("special file");
            return Err(special_file_error(path, kind).into());
        }
    }
    files.collect(copied, true)?;
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok((dirs, symlinks, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_git_symlinks_modes_and_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join(".git/refs/heads")).unwrap();
        fs::write(src.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        fs::create_dir_all(src.join("empty/nested")).unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
        fs::create_dir(src.join("private")).unwrap();
        fs::write(src.join("private/x"), "x").unwrap();
        fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::create_dir_all(src.join(".parhelia/sessions")).unwrap();
        fs::write(src.join(".parhelia/parhelia.db"), "db").unwrap();

        let dst = tmp.path().join("dst");
        let stats = copy_tree(&src, &dst, &[src.join(".parhelia")]).unwrap();

        assert_eq!(
            fs::read_to_string(dst.join(".git/HEAD")).unwrap(),
            "ref: refs/heads/main\n"
        );
        assert!(dst.join(".git/refs/heads").is_dir());
        assert!(dst.join("empty/nested").is_dir());
        assert_eq!(
            fs::metadata(dst.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("run.sh")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
        assert_eq!(
            fs::metadata(dst.join("private"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o500
        );
        assert_eq!(fs::read_to_string(dst.join("private/x")).unwrap(), "x");
        assert!(
            !dst.join(".parhelia").exists(),
            "the state directory is never copied"
        );
        assert_eq!(stats.symlinks, 2);
        assert_eq!(stats.skipped, 1);

        // Let the temp dir clean up.
        fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dst.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    fn code_of(err: &anyhow::Error) -> &'static str {
        crate::error::find_coded(err)
            .map(|c| c.code.code)
            .unwrap_or("uncoded")
    }

    #[test]
    fn unsafe_roots_are_named() {
        let homes = [PathBuf::from("/home/u")];
        for refused in [
            "/",
            "/home",
            "/home/u",
            "/etc",
            "/etc/ssh",
            "/usr",
            "/usr/lib",
            "/bin",
            "/sbin",
            "/lib",
            "/lib64",
            "/boot",
            "/dev",
            "/dev/shm",
            "/proc",
            "/proc/self/root",
            "/sys",
            "/var",
            "/var/lib/docker",
            "/run",
            "/run/user/1000",
            "/root",
            "/root/project",
            "/tmp",
            "/opt",
            "/srv",
            "/mnt",
            "/media",
        ] {
            assert!(
                unsafe_root_reason(Path::new(refused), &homes).is_some(),
                "{refused} was accepted"
            );
        }
        for accepted in [
            "/home/u/project",
            "/home/u/.parhelia-work/x",
            "/home/other-user-project",
            "/tmp/scratch",
            "/opt/app",
            "/srv/site",
            "/work/repo",
        ] {
            assert_eq!(
                unsafe_root_reason(Path::new(accepted), &homes),
                None,
                "{accepted} was refused"
            );
        }
        // Root's own projects are fine; /root itself is its home.
        let root_home = [PathBuf::from("/root")];
        assert_eq!(
            unsafe_root_reason(Path::new("/root/project"), &root_home),
            None
        );
        assert!(unsafe_root_reason(Path::new("/root"), &root_home).is_some());
        // A home that lives in an unusual place: its parents are refused.
        let odd = [PathBuf::from("/data/users/u")];
        assert!(unsafe_root_reason(Path::new("/data/users"), &odd).is_some());
        assert!(unsafe_root_reason(Path::new("/data"), &odd).is_some());
        assert_eq!(unsafe_root_reason(Path::new("/data/users/u/p"), &odd), None);
    }

    #[test]
    fn a_symlink_to_the_root_is_refused_after_canonicalization() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("innocent");
        std::os::unix::fs::symlink("/", &link).unwrap();
        let canonical = fs::canonicalize(&link).unwrap();
        let err = refuse_unsafe_root(&canonical).unwrap_err();
        assert_eq!(err.code, error_codes::WORKSPACE_REFUSED);
        assert!(err.message.contains("whole filesystem"), "{}", err.message);
        let etc = tmp.path().join("etc-link");
        std::os::unix::fs::symlink("/etc", &etc).unwrap();
        let err = refuse_unsafe_root(&fs::canonicalize(&etc).unwrap()).unwrap_err();
        assert_eq!(err.code, error_codes::WORKSPACE_REFUSED);
    }

    #[test]
    fn a_fifo_is_refused_by_name_and_nothing_is_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        nix::unistd::mkfifo(
            &src.join("sub/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let dst = tmp.path().join("dst");
        // Without the refusal this would skip it today, or block forever on
        // open(2) if it were read as a file.
        let err = copy_tree(&src, &dst, &[]).unwrap_err();
        assert_eq!(code_of(&err), "E111");
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(err.to_string().contains("sub/pipe"), "{err}");
        assert!(!dst.exists(), "a refused copy leaves nothing behind");
    }

    #[test]
    fn a_socket_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(src.join("app.sock")).unwrap();
        let err = preflight(&src, &[], CopyLimits::UNLIMITED).unwrap_err();
        assert_eq!(code_of(&err), "E111");
        assert!(err.to_string().contains("socket"), "{err}");
        // An excluded directory (the state dir with its socket) is not looked into.
        let state = src.join(".parhelia");
        fs::create_dir(&state).unwrap();
        fs::remove_file(src.join("app.sock")).unwrap();
        let _state_sock =
            std::os::unix::net::UnixListener::bind(state.join("coordinator.sock")).unwrap();
        preflight(&src, &[state], CopyLimits::UNLIMITED).unwrap();
    }

    #[test]
    fn a_device_node_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can make device nodes; FIFOs and sockets cover the path
        }
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        // /dev/null's numbers: harmless even if it were copied.
        mknod(
            &src.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(1, 3),
        )
        .unwrap();
        let dst = tmp.path().join("dst");
        let err = copy_tree(&src, &dst, &[]).unwrap_err();
        assert_eq!(code_of(&err), "E111");
        assert!(err.to_string().contains("character device"), "{err}");
        assert!(!dst.exists());
    }

    /// The copy reports the preflight's totals first, then each file, and ends at what
    /// it copied: every regular file and its bytes (symlinks and directories count
    /// nothing).
    #[test]
    fn copy_progress_counts_each_file_up_to_the_totals() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        for (i, name) in ["a", "d/b", "d/e/c"].iter().enumerate() {
            fs::write(src.join(name), vec![b'x'; 10 * (i + 1)]).unwrap();
        }
        std::os::unix::fs::symlink("a", src.join("link")).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let stats = copy_tree_reporting(
            &src,
            &tmp.path().join("dst"),
            &[],
            CopyLimits::UNLIMITED,
            &|p| seen.lock().unwrap().push(p),
        )
        .unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len() as u64, stats.files + 1, "{seen:?}");
        assert_eq!((seen[0].files_done, seen[0].bytes_done), (0, 0));
        let last = *seen.last().unwrap();
        assert_eq!(
            last,
            CopyProgress {
                files_done: stats.files,
                files_total: stats.files,
                bytes_done: stats.bytes,
                bytes_total: stats.bytes,
            }
        );
        assert_eq!((stats.files, stats.bytes), (3, 60));
        assert!(seen.windows(2).all(|w| w[1].bytes_done > w[0].bytes_done));
    }

    /// Many files through the copy workers: every one arrives whole with its mode,
    /// under read-only directories too, and each is counted once.
    #[test]
    fn many_files_are_copied_whole_by_the_workers() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut expected = Vec::new();
        for d in 0..12 {
            let dir = src.join(format!("d{d}/inner"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..40 {
                let path = dir.join(format!("f{f}"));
                let body = format!("{d}/{f}\n").repeat(f + 1);
                fs::write(&path, &body).unwrap();
                let mode = if f % 3 == 0 { 0o755 } else { 0o640 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                expected.push((format!("d{d}/inner/f{f}"), body, mode));
            }
        }
        fs::set_permissions(src.join("d3/inner"), fs::Permissions::from_mode(0o555)).unwrap();
        let dst = tmp.path().join("dst");
        let stats = copy_tree(&src, &dst, &[]).unwrap();
        assert_eq!(stats.files, expected.len() as u64);
        assert_eq!(
            stats.bytes,
            expected.iter().map(|(_, b, _)| b.len() as u64).sum::<u64>()
        );
        for (path, body, mode) in &expected {
            assert_eq!(&fs::read_to_string(dst.join(path)).unwrap(), body, "{path}");
            let got = fs::metadata(dst.join(path)).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, *mode, "{path}");
        }
        for dir in [&src, &dst] {
            fs::set_permissions(dir.join("d3/inner"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// A file that cannot be read, met by a worker in the middle of the copy: the
    /// copy fails and what the other workers had written is removed with it.
    #[test]
    fn a_copy_that_fails_in_a_worker_leaves_nothing_behind() {
        if nix::unistd::geteuid().is_root() {
            // Root reads a mode-000 file: another way to fail a worker is needed.
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            fs::create_dir_all(src.join("a")).unwrap();
            for f in 0..50 {
                fs::write(src.join(format!("a/f{f}")), "x").unwrap();
            }
            // Occupied target: creating it fails (create_new).
            let dst = tmp.path().join("dst");
            fs::create_dir_all(dst.join("a")).unwrap();
            fs::write(dst.join("a/f25"), "already here").unwrap();
            assert!(copy_tree(&src, &dst, &[]).is_err());
            assert_eq!(fs::read_dir(&dst).unwrap().count(), 0, "emptied");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("a")).unwrap();
        for f in 0..50 {
            fs::write(src.join(format!("a/f{f}")), "x").unwrap();
        }
        fs::set_permissions(src.join("a/f25"), fs::Permissions::from_mode(0o000)).unwrap();
        let dst = tmp.path().join("dst");
        assert!(copy_tree(&src, &dst, &[]).is_err());
        assert!(!dst.exists());
    }

    #[test]
    fn the_size_preflight_stops_before_copying() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/big"), vec![7u8; 1000]).unwrap();
        fs::write(src.join("small"), "x").unwrap();
        // A symlink to a huge file outside is not followed, not counted.
        std::os::unix::fs::symlink("/proc/kcore", src.join("kcore")).unwrap();
        let counted = preflight(&src, &[], CopyLimits::UNLIMITED).unwrap();
        assert_eq!(
            counted,
            Preflight {
                bytes: 1001,
                entries: 4,
                files: 2,
            }
        );

        let dst = tmp.path().join("dst");
        let by_bytes = CopyLimits {
            max_bytes: Some(1000),
            max_entries: None,
        };
        let err = copy_tree_limited(&src, &dst, &[], by_bytes).unwrap_err();
        assert_eq!(code_of(&err), "E112");
        assert!(
            err.to_string().contains("workspace.max_copy_bytes"),
            "{err}"
        );
        assert!(!dst.exists(), "nothing was copied");

        let by_entries = CopyLimits {
            max_bytes: None,
            max_entries: Some(3),
        };
        let err = copy_tree_limited(&src, &dst, &[], by_entries).unwrap_err();
        assert_eq!(code_of(&err), "E112");
        assert!(
            err.to_string().contains("workspace.max_copy_files"),
            "{err}"
        );
        assert!(!dst.exists());

        // The flag lifts the limits.
        let config = crate::config::WorkspaceConfig {
            max_copy_bytes: 10,
            max_copy_files: 1,
        };
        assert_eq!(
            CopyLimits::from_config(&config, true),
            CopyLimits::UNLIMITED
        );
        let stats =
            copy_tree_limited(&src, &dst, &[], CopyLimits::from_config(&config, true)).unwrap();
        assert_eq!(stats.bytes, 1001);
        assert_eq!(
            CopyLimits::from_config(&config, false),
            CopyLimits {
                max_bytes: Some(10),
                max_entries: Some(1)
            }
        );
    }

    #[test]
    fn a_copy_that_fails_midway_removes_what_it_copied() {
        // Fails after the first directories were created: the source's
        // nested path fits PATH_MAX, the target's (under a long prefix)
        // does not.
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut deep = src.clone();
        for i in 0..15 {
            deep.push(format!("{i:02}{}", "d".repeat(198)));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), "f").unwrap();
        fs::write(src.join("top.txt"), "t").unwrap();
        let mut prefix = tmp.path().join("out");
        for i in 0..6 {
            prefix.push(format!("{i}{}", "p".repeat(199)));
        }
        fs::create_dir_all(&prefix).unwrap();
        let dst = prefix.join("dst");
        let err = copy_tree(&src, &dst, &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("File name too long")
                || format!("{err:#}").contains("name too long"),
            "{err:#}"
        );
        assert!(!dst.exists(), "the partial copy was removed");
        assert!(prefix.exists(), "nothing above the copy was touched");
    }
}
