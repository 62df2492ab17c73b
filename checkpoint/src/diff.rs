//! Comparing two checkpoints: per-tree added/removed/modified entries, a unified diff of
//! one file, and both sides' caller metadata (so callers can show git-state changes).
//!
//! Promise: an entry is "modified" when its kind, permission bits, content or symlink
//! target differ; mtime-only changes are not differences.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entry::{EntryKind, Record};
use crate::error::{CheckpointError, Result};
use crate::manifest::{CheckpointId, Manifest};
use crate::store::{ChunkLoader, FileRead, Store};

/// One differing path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    pub tree: String,
    pub path: PathBuf,
    /// The kind on the newer side (on the older side for removals).
    pub kind: EntryKind,
    /// Sizes on each side; `None` where the path does not exist.
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
}

/// The difference from checkpoint `a` to checkpoint `b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub added: Vec<DiffEntry>,
    pub removed: Vec<DiffEntry>,
    pub modified: Vec<DiffEntry>,
    pub metadata_a: serde_json::Value,
    pub metadata_b: serde_json::Value,
}

fn as_text(d: &[u8]) -> Option<&str> {
    if d.contains(&0) {
        None
    } else {
        std::str::from_utf8(d).ok()
    }
}

fn modified(a: &Record, b: &Record) -> bool {
    a.kind != b.kind
        || a.mode & 0o777 != b.mode & 0o777
        || a.content != b.content
        || a.link != b.link
}

impl Store {
    fn all_records(&self, m: &Manifest, tree: &str) -> Result<Vec<Record>> {
        let Some(t) = m.tree(tree) else {
            return Ok(Vec::new());
        };
        let map = self.blob_map_for(&Self::tree_layers(m, t))?;
        let mut loader = ChunkLoader::new(&self.layers_dir, &map);
        self.tree_records(t, &mut loader)
    }

    /// Added, removed and modified entries per tree, from `a` to `b`.
    pub fn diff(&self, a: &CheckpointId, b: &CheckpointId) -> Result<Diff> {
        let _lock = self.lock(false)?;
        let ma = self.load(a)?;
        let mb = self.load(b)?;
        let mut names: Vec<&str> = ma.trees.iter().map(|t| t.name.as_str()).collect();
        for t in &mb.trees {
            if !names.contains(&t.name.as_str()) {
                names.push(&t.name);
            }
        }
        let mut diff = Diff {
            added: vec![],
            removed: vec![],
            modified: vec![],
            metadata_a: ma.metadata.clone(),
            metadata_b: mb.metadata.clone(),
        };
        for name in names {
            let ta = ma.tree(name);
            let tb = mb.tree(name);
            if let (Some(x), Some(y)) = (ta, tb)
                && x.chunks
                    .iter()
                    .map(|c| c.digest)
                    .eq(y.chunks.iter().map(|c| c.digest))
            {
                continue;
            }
            let ra = self.all_records(&ma, name)?;
            let rb = self.all_records(&mb, name)?;
            let entry = |r: &Record, old: Option<&Record>, new: Option<&Record>| {
                let e = r.to_entry();
                DiffEntry {
                    tree: name.to_string(),
                    path: e.path,
                    kind: e.kind,
                    old_size: old.map(|o| o.size),
                    new_size: new.map(|n| n.size),
                }
            };
            let (mut i, mut j) = (0, 0);
            while i < ra.len() || j < rb.len() {
                let ord = match (ra.get(i), rb.get(j)) {
                    (Some(x), Some(y)) => x.path.cmp(&y.path),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                match ord {
                    std::cmp::Ordering::Less => {
                        diff.removed.push(entry(&ra[i], Some(&ra[i]), None));
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        diff.added.push(entry(&rb[j], None, Some(&rb[j])));
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if modified(&ra[i], &rb[j]) {
                            diff.modified
                                .push(entry(&rb[j], Some(&ra[i]), Some(&rb[j])));
                        }
                        i += 1;
                        j += 1;
                    }
                }
            }
        }
        Ok(diff)
    }

    /// A unified diff (3 lines of context) of one file between `a` and `b`; a side where
    /// the file does not exist counts as empty. Binary content gives a one-line summary.
    pub fn file_diff(
        &self,
        a: &CheckpointId,
        b: &CheckpointId,
        tree: &str,
        path: &Path,
    ) -> Result<String> {
        let _lock = self.lock(false)?;
        let ma = self.load(a)?;
        let mb = self.load(b)?;
        // Each side is read into memory only up to `max_diff_bytes`: beyond that the answer
        // is "too large to diff", so memory stays bounded whatever the file's size.
        let max = self.limits.max_diff_bytes;
        let side = |m: &Manifest| -> Result<Option<FileRead>> {
            match self.read_file_limited(m, tree, path, max) {
                Ok(d) => Ok(Some(d)),
                Err(CheckpointError::NotInCheckpoint { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let (old, new) = (side(&ma)?, side(&mb)?);
        if old.is_none() && new.is_none() {
            return Err(CheckpointError::NotInCheckpoint {
                id: format!("{a} or {b}"),
                what: format!("{tree}:{}", path.display()),
            });
        }
        let shown = path.display().to_string();
        let old_name = if old.is_some() {
            format!("a/{shown}")
        } else {
            "/dev/null".to_string()
        };
        let new_name = if new.is_some() {
            format!("b/{shown}")
        } else {
            "/dev/null".to_string()
        };
        let data = |f: Option<FileRead>| match f {
            None => Ok(Vec::new()),
            Some(FileRead::Data(d)) => Ok(d),
            Some(FileRead::TooLarge(n)) => Err(n),
        };
        let (old, new) = match (data(old), data(new)) {
            (Ok(o), Ok(n)) => (o, n),
            (o, n) => {
                let size = |r: &std::result::Result<Vec<u8>, u64>| match r {
                    Ok(d) => d.len() as u64,
                    Err(n) => *n,
                };
                return Ok(format!(
                    "Files {old_name} and {new_name} are too large to diff ({} and {} bytes; the limit is {max} bytes per side)\n",
                    size(&o),
                    size(&n)
                ));
            }
        };
        if old == new {
            return Ok(String::new());
        }
        match (as_text(&old), as_text(&new)) {
            // Myers with a deadline: past it, similar settles for a coarser (still correct)
            // diff, so two large, very different files cannot take quadratic time.
            (Some(o), Some(n)) => Ok(similar::TextDiff::configure()
                .timeout(self.limits.diff_timeout)
                .diff_lines(o, n)
                .unified_diff()
                .context_radius(3)
                .header(&old_name, &new_name)
                .to_string()),
            _ => Ok(format!("Binary files {old_name} and {new_name} differ\n")),
        }
    }
}
