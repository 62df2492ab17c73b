//! The checkpoint engine: incremental, content-addressed, atomic snapshots of directory
//! trees (docs/formats/checkpoint.md is the on-disk contract, docs/dev/contracts.md the
//! API contract).
//!
//! A [`Store`] is one directory. [`Store::create`] captures trees (every file including
//! `.git`, symlinks as symlinks, modes, empty directories, file mtimes) into a checkpoint,
//! writing only content the store does not hold yet into tar+zstd layers and committing
//! the manifest last; [`Store::restore_tree`] makes a target directory exactly one tree of
//! a checkpoint after verifying everything it needs; [`Store::diff`],
//! [`Store::file_diff`] and [`Store::read_file`] read checkpoints; [`Store::prune`]
//! applies a [`Retention`] policy; [`Store::check`] says which files of a store are
//! damaged and which checkpoints each affects, and [`Store::repair`] rewrites them from
//! intact sources.
//!
//! Architecture invariants:
//! - A checkpoint is visible only once every byte it references is durable.
//! - Nothing a store contains can make a restore write outside its target (E621), and
//!   damage is reported (E620) before the target is touched.
//! - Whatever the change hint, a checkpoint records exactly what a full scan would.
//! - The engine does no networking and knows nothing of Claude Code, git or tmux.
//!
//! Errors are [`CheckpointError`], each with a stable [`CheckpointError::code`].
mod codec;
mod create;
mod diff;
pub mod durable;
mod entry;
mod error;
mod exclude;
mod filemap;
#[doc(hidden)]
pub mod fuzzing;
mod health;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod hostile;
mod layer;
mod limits;
mod lock_holder;
mod manifest;
mod mindex;
mod prune;
#[doc(hidden)]
pub mod raw;
mod repair;
mod restore;
mod scan;
mod store;
mod verify;

pub use codec::BlobId;
pub use create::{ChangeHint, CreateOutcome, CreateRequest, TreeSpec};
pub use diff::{Diff, DiffEntry};
pub use entry::{Entry, EntryKind};
pub use error::CheckpointError;
pub use health::{CheckDepth, CheckpointState, DamagedFile, Listed, StoreHealth};
pub use limits::Limits;
pub use lock_holder::flock_holders;
pub use manifest::{CheckpointId, ChunkRef, CreateStats, Manifest, PhaseMs, TreeManifest};
pub use prune::{PruneStats, Retention};
pub use repair::{RepairAction, RepairOptions, RepairReport, RepairSource, Unrepairable};
pub use restore::{OnRestoreProgress, RestoreProgress, RestoreStats};
pub use store::{DEFAULT_LOCK_WAIT, Store, Summary};
