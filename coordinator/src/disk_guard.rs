//! The coordinator's side of a full disk (issue 12): the database must still be able to
//! record what happened — a session stopped with E516, its `SessionFinished` — when the
//! disk it lives on is full.
//!
//! A ballast file (`.parhelia-db.reserve`, [`RESERVE_BYTES`] of real blocks) sits beside
//! the database. Every [`CHECK_INTERVAL`] the guard looks at the space free there: below
//! [`LOW_BYTES`] it gives the ballast back and records a `disk_full` coordinator event
//! (error); once [`SPACE_BACK_BYTES`] are free again it fills the ballast again and
//! records `disk_space_back`. Writes that failed meanwhile
//! (an event stream's ingest) are retried by their own loops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::db::Db;
use crate::db::NewCoordinatorEvent;

/// Bytes of the ballast: room for many thousands of events.
pub const RESERVE_BYTES: u64 = 8 << 20;
/// Below this many free bytes the database's filesystem counts as full.
pub const LOW_BYTES: u64 = 4 << 20;
/// What a session's agent needs free to keep going (`agent/src/disk.rs`,
/// `MIN_FREE_BYTES`): the ballast freed on a full disk stays below it.
pub const AGENT_MIN_FREE_BYTES: u64 = 16 << 20;
/// Free bytes that count as "space is back": the ballast refilled, and an agent
/// started then still has twice what it needs.
pub const SPACE_BACK_BYTES: u64 = RESERVE_BYTES + 2 * AGENT_MIN_FREE_BYTES;
/// How often the space is looked at (a `statvfs`).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What [`DiskGuard::check`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// The disk became full: the ballast was released.
    Full,
    /// Space came back: the ballast is whole again.
    SpaceBack,
}

pub struct DiskGuard {
    dir: PathBuf,
    reserve: PathBuf,
    full: AtomicBool,
}

impl DiskGuard {
    /// A guard for the database at `db_path`; fills the ballast if there is room.
    pub fn new(db_path: &Path) -> DiskGuard {
        let dir = db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let guard = DiskGuard {
            reserve: dir.join(".parhelia-db.reserve"),
            dir,
            full: AtomicBool::new(false),
        };
        if !fill(&guard.reserve, RESERVE_BYTES) {
            tracing::warn!(dir = %guard.dir.display(), "no room for the database's reserve: the disk is nearly full");
        }
        guard
    }

    /// Whether the guard last saw the disk full.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// One look at the free space, with `free` given (tests) or measured.
    pub fn check_with(&self, free: Option<u64>, db: &Db) -> Change {
        let Some(free) = free.or_else(|| free_bytes(&self.dir)) else {
            return Change::None;
        };
        let was_full = self.is_full();
        if !was_full && free < LOW_BYTES {
            let released = std::fs::remove_file(&self.reserve).is_ok();
            self.full.store(true, Ordering::SeqCst);
            tracing::error!(dir = %self.dir.display(), free, released, "the database's disk is full");
            db.note(
                NewCoordinatorEvent::new(
                    "disk_full",
                    "error",
                    format!(
                        "[E516] the disk holding the database ({}) is full: {free} bytes free; sessions writing there stop as interrupted and resume once space is freed",
                        self.dir.display()
                    ),
                )
                .details(serde_json::json!({"dir": self.dir, "free_bytes": free})),
            );
            return Change::Full;
        }
        if was_full && free >= SPACE_BACK_BYTES && fill(&self.reserve, RESERVE_BYTES) {
            self.full.store(false, Ordering::SeqCst);
            tracing::info!(dir = %self.dir.display(), free, "space is back on the database's disk");
            db.note(
                NewCoordinatorEvent::new(
                    "disk_space_back",
                    "info",
                    format!(
                        "space is back on the disk holding the database ({}): {free} bytes free",
                        self.dir.display()
                    ),
                )
                .details(serde_json::json!({"dir": self.dir, "free_bytes": free})),
            );
            return Change::SpaceBack;
        }
        Change::None
    }

    pub fn check(&self, db: &Db) -> Change {
        self.check_with(None, db)
    }
}

/// Bytes available to this user on the filesystem of `path`; `None` when unknown (a
/// filesystem that reports no size at all is not "full").
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    if stat.blocks() == 0 {
        return None;
    }
    Some((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
}

/// Makes `path` a regular file of `bytes` real blocks (not sparse); `false` when there
/// is no room, leaving nothing half-written. A link planted there is replaced.
fn fill(path: &Path, bytes: u64) -> bool {
    use std::io::Write;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == bytes) {
        return true;
    }
    let _ = std::fs::remove_file(path);
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        let block = vec![0u8; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            file.write_all(&block[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_releases_the_reserve_once_and_space_back_refills_it() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("parhelia.db");
        let db = Db::open(&db_path).unwrap();
        let guard = DiskGuard::new(&db_path);
        let reserve = dir.path().join(".parhelia-db.reserve");
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
        assert_eq!(guard.check_with(Some(LOW_BYTES * 10), &db), Change::None);
        assert_eq!(guard.check_with(Some(1000), &db), Change::Full);
        assert!(!reserve.exists() && guard.is_full());
        assert_eq!(guard.check_with(Some(1000), &db), Change::None, "once");
        // Not yet enough to refill and keep a margin.
        assert_eq!(guard.check_with(Some(RESERVE_BYTES), &db), Change::None);
        assert_eq!(
            guard.check_with(Some(SPACE_BACK_BYTES), &db),
            Change::SpaceBack
        );
        assert!(reserve.exists() && !guard.is_full());
        let kinds: Vec<String> = db
            .query_events(&Default::default(), None)
            .unwrap()
            .into_iter()
            .map(|r| r.event_type)
            .collect();
        assert!(kinds.contains(&"disk_full".to_string()), "{kinds:?}");
        assert!(kinds.contains(&"disk_space_back".to_string()), "{kinds:?}");
    }
}
