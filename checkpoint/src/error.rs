//! The engine's one error type. Every variant has a stable code (`code()`) from the
//! contract in docs/dev/contracts.md; messages are lowercase fragments that read after
//! "failed to …" in a caller's context.

use std::io;
use std::path::{Path, PathBuf};

use parhelia_contract::codes::{self, ErrorCode};

/// What can go wrong in the checkpoint engine.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A checkpoint id that the store does not hold (or whose manifest is gone).
    #[error("checkpoint {id} not found")]
    NotFound { id: String },

    /// A tree name or a path that the named checkpoint does not contain.
    #[error("{what} not found in checkpoint {id}")]
    NotInCheckpoint { id: String, what: String },

    /// Checksum mismatch, truncated or undecodable data, or a format this reader does not know.
    #[error("corrupt checkpoint store: {what}")]
    Corrupt { what: String },

    /// An entry that would write outside the target or create something unsafe.
    #[error("unsafe archive entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },

    /// Another process holds the store's lock for longer than we were willing to wait
    /// (`waited_ms`); `holder` names it when `/proc/locks` does.
    #[error(
        "checkpoint store {} is locked by another process{}; waited {:.1}s for it",
        root.display(),
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default(),
        *waited_ms as f64 / 1000.0
    )]
    Locked {
        root: PathBuf,
        holder: Option<String>,
        waited_ms: u64,
    },

    /// The store is larger than the retention policy allows even after pruning.
    #[error("checkpoint store needs {used} bytes but the quota is {limit} bytes")]
    QuotaExceeded { used: u64, limit: u64 },

    /// A restore, verify or diff cap (`Limits`) was exceeded: too many bytes, entries, too
    /// long a path, or too much time. Checked before the target changes wherever the
    /// quantity is known up front.
    #[error("checkpoint limit exceeded: {what} (limit {limit})")]
    LimitExceeded { what: String, limit: u64 },

    /// A request the engine refuses before touching anything (bad tree name, bad hint path).
    #[error("invalid request: {what}")]
    InvalidRequest { what: String },

    /// The operating system refused an operation (disk full, permission denied, ...).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl CheckpointError {
    /// The stable error code, a row of the one table (`parhelia_contract::codes`).
    pub fn code(&self) -> &'static str {
        self.error_code().code
    }

    /// The row of the error-code table this error is.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            CheckpointError::NotFound { .. } | CheckpointError::NotInCheckpoint { .. } => {
                codes::CHECKPOINT_NOT_FOUND
            }
            CheckpointError::Corrupt { .. } => codes::CHECKPOINT_CORRUPT,
            CheckpointError::UnsafeEntry { .. } => codes::CHECKPOINT_UNSAFE,
            CheckpointError::Locked { .. } => codes::CHECKPOINT_BUSY,
            CheckpointError::QuotaExceeded { .. } => codes::CHECKPOINT_QUOTA,
            CheckpointError::LimitExceeded { .. } => codes::CHECKPOINT_LIMIT,
            CheckpointError::InvalidRequest { .. } => codes::INVALID_INPUT,
            CheckpointError::Io { .. } => codes::CHECKPOINT_IO_FAILED,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        CheckpointError::Corrupt { what: what.into() }
    }

    pub(crate) fn unsafe_entry(path: impl Into<String>, reason: impl Into<String>) -> Self {
        CheckpointError::UnsafeEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn limit(what: impl Into<String>, limit: u64) -> Self {
        CheckpointError::LimitExceeded {
            what: what.into(),
            limit,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        CheckpointError::InvalidRequest { what: what.into() }
    }
}

/// Attaches the operation and path to an `io::Error` (`.io("read", &path)?`).
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: &Path) -> Result<T, CheckpointError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io(self, op: &'static str, path: &Path) -> Result<T, CheckpointError> {
        self.map_err(|source| CheckpointError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
