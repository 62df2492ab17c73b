//! Caps on what reading a checkpoint may cost (a store is written by a session, so it is
//! hostile input): bytes a restore writes, entries in a tree, path lengths, bytes read into
//! memory, the size of a text diff and wall-clock time. Exceeding one is E624
//! (`CheckpointError::LimitExceeded`), reported before the target changes wherever the
//! quantity is known up front (sizes, counts and paths are known from the manifest and the
//! entry chunks; only time is not).
//!
//! The defaults are far above what a real workspace needs; callers that restore into small
//! sandboxes (and tests) lower them with `Store::with_limits`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{CheckpointError, Result};

/// Wall-clock nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Caps applied by `restore_tree`, `verify`, `entries`, `read_file`, `diff` and `file_diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Logical bytes of file content one tree may hold (a sparse file counts its full
    /// length): what a restore would write. Default 64 GiB.
    pub max_bytes: u64,
    /// Entries one tree may hold. Default 10 million.
    pub max_entries: u64,
    /// Bytes of an entry's relative path, and of a symlink's target. Default 4096
    /// (`PATH_MAX`). Each path component is also held to 255 bytes (`NAME_MAX`), and a
    /// restore checks that target + path stays under `PATH_MAX`.
    pub max_path_len: usize,
    /// Bytes of one blob read into memory (`read_file`, each side of `file_diff`).
    /// Default 1 GiB.
    pub max_read_bytes: u64,
    /// Bytes per side above which `file_diff` answers "too large to diff" instead of
    /// computing a line diff. Default 16 MiB.
    pub max_diff_bytes: u64,
    /// Time the line-diff algorithm may take before it settles for a coarser (still
    /// correct) diff. Default 5 s.
    pub diff_timeout: Duration,
    /// Wall-clock time of one verify or diff, and of the verify phase of a restore (which
    /// reads, decompresses and hashes everything the restore will write). A restore that
    /// trips it stops before the target changes; once the target starts changing the
    /// restore is not interrupted for time (its work is bounded by `max_bytes` and
    /// `max_entries`), so a time cap can never leave a half-restored target. Default 6 hours.
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 10_000_000,
            max_path_len: 4096,
            max_read_bytes: 1 << 30,
            max_diff_bytes: 16 << 20,
            diff_timeout: Duration::from_secs(5),
            max_time: Duration::from_secs(6 * 3600),
        }
    }
}

impl Limits {
    /// The caps `spec.json`'s `checkpoint.limits` asks for (the agent's restores): each
    /// field it leaves out keeps the default, and a path cap never exceeds [`PATH_MAX`].
    pub fn from_spec(spec: &parhelia_contract::spec::ReadLimitsSpec) -> Limits {
        let d = Limits::default();
        Limits {
            max_bytes: spec.max_bytes.unwrap_or(d.max_bytes),
            max_entries: spec.max_entries.unwrap_or(d.max_entries),
            max_path_len: spec
                .max_path_len
                .map_or(d.max_path_len, |n| n.min(d.max_path_len as u64) as usize),
            max_read_bytes: spec.max_read_bytes.unwrap_or(d.max_read_bytes),
            max_diff_bytes: spec.max_diff_bytes.unwrap_or(d.max_diff_bytes),
            max_time: spec.max_time_ms.map_or(d.max_time, Duration::from_millis),
            ..d
        }
    }

    /// These caps as `spec.json`'s `checkpoint.limits` (the coordinator writes every one).
    pub fn to_spec(&self) -> parhelia_contract::spec::ReadLimitsSpec {
        parhelia_contract::spec::ReadLimitsSpec {
            max_bytes: Some(self.max_bytes),
            max_entries: Some(self.max_entries),
            max_path_len: Some(self.max_path_len as u64),
            max_read_bytes: Some(self.max_read_bytes),
            max_diff_bytes: Some(self.max_diff_bytes),
            max_time_ms: Some(self.max_time.as_millis().min(u64::MAX as u128) as u64),
        }
    }
}

/// Longest path component Linux accepts.
pub const NAME_MAX: usize = 255;
/// Longest path a system call accepts, terminating NUL included.
pub const PATH_MAX: usize = 4096;

/// Entry chunks never exceed this many bytes: `CHUNK_MAX_ENTRIES` entries of the longest
/// paths and link targets the limits admit fit easily; a larger chunk blob is refused
/// before it is read into memory.
pub const CHUNK_BLOB_MAX: u64 = 64 << 20;

#[cfg(test)]
thread_local! {
    /// Tests move this thread's clock forward to force a time-cap trip at a chosen point
    /// of an operation (no timing involved).
    pub(crate) static CLOCK_SKEW: std::cell::Cell<Duration> =
        const { std::cell::Cell::new(Duration::ZERO) };
}

fn now() -> Instant {
    #[cfg(test)]
    {
        Instant::now() + CLOCK_SKEW.with(std::cell::Cell::get)
    }
    #[cfg(not(test))]
    {
        Instant::now()
    }
}

/// A wall-clock deadline for one operation.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    end: Option<Instant>,
    limit: Duration,
}

impl Deadline {
    pub fn new(limit: Duration) -> Self {
        Deadline {
            end: now().checked_add(limit),
            limit,
        }
    }

    /// E624 once the deadline has been reached (a zero limit trips at the first check).
    pub fn check(&self, what: &str) -> Result<()> {
        match self.end {
            Some(end) if now() >= end => Err(CheckpointError::limit(
                format!("{what} took longer than allowed"),
                self.limit.as_secs(),
            )),
            _ => Ok(()),
        }
    }
}

/// Checks one path (or link target) against the path limits (E624).
pub fn check_path_len(limits: &Limits, path: &[u8], what: &str) -> Result<()> {
    if path.len() > limits.max_path_len {
        return Err(CheckpointError::limit(
            format!(
                "{what} {:?}… is {} bytes long",
                String::from_utf8_lossy(&path[..64.min(path.len())]),
                path.len()
            ),
            limits.max_path_len as u64,
        ));
    }
    Ok(())
}

/// Checks each component of a relative path against `NAME_MAX` (E624).
pub fn check_components(path: &[u8]) -> Result<()> {
    if let Some(c) = path.split(|b| *b == b'/').find(|c| c.len() > NAME_MAX) {
        return Err(CheckpointError::limit(
            format!(
                "path component {:?}… is {} bytes long",
                String::from_utf8_lossy(&c[..64]),
                c.len()
            ),
            NAME_MAX as u64,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the coordinator writes into a spec is what the agent's restores then use;
    /// what a spec leaves out keeps the default, and a path cap stays under `PATH_MAX`.
    #[test]
    fn limits_round_trip_through_the_spec() {
        let limits = Limits {
            max_entries: 7,
            max_time: Duration::from_millis(1500),
            ..Limits::default()
        };
        assert_eq!(Limits::from_spec(&limits.to_spec()), limits);
        let empty = parhelia_contract::spec::ReadLimitsSpec::default();
        assert_eq!(Limits::from_spec(&empty), Limits::default());
        let long = parhelia_contract::spec::ReadLimitsSpec {
            max_path_len: Some(99_999),
            ..empty
        };
        assert_eq!(Limits::from_spec(&long).max_path_len, PATH_MAX);
    }
}
