//! A full disk, noticed and named (issue 12): when the volume or the workspace runs out
//! of space the session stops as `interrupted` with E516 (resumable once space is back),
//! instead of the agent dying on its first failed journal write.
//!
//! Two pieces:
//! - [`Reserve`]: a ballast file beside the journal (real blocks, not sparse). When an
//!   append fails for lack of space, the journal gives the ballast back and retries, so
//!   the events that say what happened — the stop, Claude Code's exit,
//!   `SessionFinished{E516}` — still reach the disk. Nothing earlier is touched.
//! - [`low_space`]: the heartbeat's check of the filesystems the session writes to, so
//!   a disk that fills while nothing is journaled is noticed within one heartbeat.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes the ballast holds: room for thousands of events.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Below this many free bytes a filesystem the session writes to counts as full. It is
/// above what the coordinator's database ballast frees (8 MiB, plus its own 4 MiB
/// threshold), so a coordinator giving its ballast back on the same disk never makes a
/// full disk look usable to a session (`coordinator/src/disk_guard.rs`).
pub const MIN_FREE_BYTES: u64 = 16 << 20;

/// Whether an IO error means "no space" (a full filesystem or an exhausted quota).
pub fn is_no_space(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == libc_enospc() || code == libc_edquot())
        || err.kind() == std::io::ErrorKind::StorageFull
        || err.kind() == std::io::ErrorKind::QuotaExceeded
}

/// Whether any error in `err`'s source chain is [`is_no_space`].
pub fn chain_is_no_space(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && is_no_space(io)
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

fn libc_edquot() -> i32 {
    nix::errno::Errno::EDQUOT as i32
}

/// The ballast file; see the module documentation.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// Where the ballast of the journal at `journal` lives (same directory, so the
    /// same filesystem; a name no journal reader picks up).
    pub fn path_for(journal: &Path) -> PathBuf {
        let name = journal
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        journal.with_file_name(format!(".{name}.reserve"))
    }

    pub fn new(path: PathBuf, bytes: u64) -> Reserve {
        Reserve { path, bytes }
    }

    /// Makes sure the ballast is there and whole. `false`: there was no room for it
    /// (the disk is already nearly full); nothing is left half-written.
    pub fn fill(&self) -> bool {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_file() && m.len() == self.bytes)
        {
            return true;
        }
        let written = (|| -> std::io::Result<()> {
            // A link planted where the ballast goes is replaced, never followed.
            let _ = std::fs::remove_file(&self.path);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.path)?;
            let block = vec![0u8; 64 << 10];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                file.write_all(&block[..n])?;
                left -= n as u64;
            }
            file.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        written.is_ok()
    }

    /// Gives the ballast's space back. `true` when there was one to give.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The first of `paths` whose filesystem has less than `min_free` bytes available to
/// this user, with what is free there. Paths that cannot be examined, or whose
/// filesystem reports no size, are skipped.
pub fn low_space(paths: &[&Path], min_free: u64) -> Option<(PathBuf, u64)> {
    paths.iter().find_map(|path| {
        let stat = nix::sys::statvfs::statvfs(*path).ok()?;
        // A filesystem that reports no size at all (some network and FUSE mounts, e.g.
        // a Modal volume may) says nothing about space: never read it as full.
        if stat.blocks() == 0 {
            return None;
        }
        let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
        (free < min_free).then(|| (path.to_path_buf(), free))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_fills_releases_and_refills() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("ctr-1.jsonl");
        let reserve = Reserve::new(Reserve::path_for(&journal), 100_000);
        assert_eq!(reserve.path(), dir.path().join(".ctr-1.reserve"));
        assert!(reserve.fill());
        assert_eq!(std::fs::metadata(reserve.path()).unwrap().len(), 100_000);
        assert!(reserve.release());
        assert!(!reserve.release(), "nothing left to give");
        // A planted link is replaced, not written through.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, reserve.path()).unwrap();
        assert!(reserve.fill());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(
            !std::fs::symlink_metadata(reserve.path())
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn no_space_is_recognised_through_a_source_chain() {
        let enospc = std::io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        assert!(is_no_space(&enospc));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::EACCES as i32
        )));
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert!(chain_is_no_space(&Outer(enospc)));
        assert!(!chain_is_no_space(&Outer(std::io::Error::other("x"))));
    }

    #[test]
    fn low_space_names_a_full_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(low_space(&[dir.path()], 1).is_none());
        let (path, _) = low_space(&[dir.path()], u64::MAX).unwrap();
        assert_eq!(path, dir.path());
    }
}
