//! Retention: removing checkpoints outside a policy, then the content only they needed.
//!
//! Promises: the newest checkpoint is always kept; no blob that a kept checkpoint needs is
//! ever made unreachable (layers are rewritten to new files before kept manifests are
//! repointed, and old layers are deleted last); prune holds the store lock exclusively, so
//! it never runs during a `create` or a restore. A crash at any point leaves every kept
//! checkpoint restorable; the next prune finishes the clean-up.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::codec::BlobId;
use crate::error::{CheckpointError, IoContext, Result};
use crate::layer::{
    BlobKind, FrameBuilder, LayerReader, LayerSink, layer_path, read_index, sync_dir,
    write_file_synced,
};
use crate::limits::now_ns;
use crate::manifest::{CheckpointId, Manifest};
use crate::mindex::BlobMap;
use crate::store::{ChunkLoader, Store};

/// Which checkpoints to keep. A checkpoint is kept if any rule keeps it; with neither
/// `keep_last` nor `keep_within_ms`, all are kept. Then, while the store would exceed
/// `max_store_bytes`, the oldest kept checkpoint is dropped (never the newest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub keep_last: Option<usize>,
    pub keep_within_ms: Option<i64>,
    pub max_store_bytes: Option<u64>,
}

/// What a prune did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneStats {
    pub removed: Vec<CheckpointId>,
    pub kept: usize,
    pub layers_deleted: u64,
    pub layers_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A layer is rewritten once at least this share of its blob bytes is unreferenced.
const REWRITE_DEAD_SHARE: f64 = 0.2;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Store {
    /// Bytes the store occupies (layers, indexes, manifests).
    pub fn store_bytes(&self) -> u64 {
        dir_bytes(&self.layers_dir) + dir_bytes(&self.manifests_dir)
    }

    /// Removes checkpoints outside `policy` and every layer byte no kept checkpoint needs.
    /// Fails with E623 (after pruning) if the newest checkpoint alone exceeds the quota.
    pub fn prune(&self, policy: &Retention) -> Result<PruneStats> {
        let _lock = self.lock(true)?;
        for e in fs::read_dir(&self.tmp_dir)
            .io("list", &self.tmp_dir)?
            .flatten()
        {
            let _ = fs::remove_file(e.path());
        }
        self.forget_index_cache();
        let bytes_before = self.store_bytes();
        let index = self.global_index()?;
        let mut manifests: Vec<Manifest> = Vec::new();
        for id in self.manifest_ids()? {
            if let Ok(m) = self.load(&id) {
                manifests.push(m);
            }
        }
        let n = manifests.len();
        let now_ms = now_ns() / 1_000_000;
        let mut keep: Vec<bool> = manifests
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let rules = policy.keep_last.is_some() || policy.keep_within_ms.is_some();
                !rules
                    || i + 1 == n
                    || policy.keep_last.is_some_and(|k| i + k >= n)
                    || policy
                        .keep_within_ms
                        .is_some_and(|w| m.created_at_ms >= now_ms - w)
            })
            .collect();

        // Blobs each checkpoint needs (chunk blobs and file contents), decoded once per chunk.
        let mut loader = ChunkLoader::new(&self.layers_dir, &index);
        let mut chunk_contents: HashMap<BlobId, Vec<BlobId>> = HashMap::new();
        // A chunked file needs its map and every chunk the map lists.
        let mut map_chunks: HashMap<BlobId, Vec<BlobId>> = HashMap::new();
        let mut needs: Vec<HashSet<BlobId>> = Vec::with_capacity(n);
        for m in &manifests {
            let mut set = HashSet::new();
            for t in &m.trees {
                for c in &t.chunks {
                    if let std::collections::hash_map::Entry::Vacant(v) =
                        chunk_contents.entry(c.blob)
                    {
                        let mut blobs = Vec::new();
                        for r in loader.load(c)? {
                            let Some(content) = r.content else { continue };
                            blobs.push(content);
                            if r.chunked {
                                if let std::collections::hash_map::Entry::Vacant(v) =
                                    map_chunks.entry(content)
                                {
                                    let m = loader.read_map(&content, r.size)?;
                                    v.insert(m.chunks.iter().map(|(id, _)| *id).collect());
                                }
                                blobs.extend(map_chunks[&content].iter().copied());
                            }
                        }
                        v.insert(blobs);
                    }
                    set.insert(c.blob);
                    set.extend(chunk_contents[&c.blob].iter().copied());
                }
            }
            needs.push(set);
        }
        let layer_ids = self.complete_layers()?;
        let indexes: Vec<_> = layer_ids
            .iter()
            .filter_map(|l| read_index(&self.layers_dir, l).ok())
            .collect();
        let live_of = |keep: &[bool]| -> HashSet<BlobId> {
            keep.iter()
                .zip(&needs)
                .filter(|(k, _)| **k)
                .flat_map(|(_, s)| s.iter().copied())
                .collect()
        };
        let estimate = |live: &HashSet<BlobId>| -> u64 {
            let mut total = dir_bytes(&self.manifests_dir);
            for ix in &indexes {
                let all: u64 = ix.entries().map(|e| e.len + 512).sum();
                let used: u64 = ix
                    .entries()
                    .filter(|e| live.contains(&e.blob))
                    .map(|e| e.len + 512)
                    .sum();
                if all > 0 {
                    total += (ix.file_size as f64 * used as f64 / all as f64) as u64;
                }
            }
            total
        };
        let mut live = live_of(&keep);
        if let Some(max) = policy.max_store_bytes {
            while estimate(&live) > max {
                let Some(oldest) = keep.iter().position(|k| *k) else {
                    break;
                };
                if oldest + 1 >= n {
                    break;
                }
                keep[oldest] = false;
                live = live_of(&keep);
            }
        }

        // 1. Forget removed checkpoints.
        let mut stats = PruneStats::default();
        for (m, k) in manifests.iter().zip(&keep) {
            if !k {
                let p = self.manifest_path(&m.id);
                fs::remove_file(&p).io("remove manifest", &p)?;
                stats.removed.push(m.id.clone());
            }
        }
        sync_dir(&self.manifests_dir)?;
        let kept: Vec<&Manifest> = manifests
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(m, _)| m)
            .collect();
        stats.kept = kept.len();

        // 2. Decide per layer: keep, delete, or rewrite its live blobs into new layers.
        let mut doomed: BTreeSet<BlobId> = BTreeSet::new();
        let sink = Mutex::new(LayerSink::new(
            self.layers_dir.clone(),
            self.tmp_dir.clone(),
        )?);
        let mut fb = FrameBuilder::new()?;
        let mut written: HashSet<BlobId> = HashSet::new();
        for ix in &indexes {
            let all: u64 = ix.entries().map(|e| e.len + 512).sum();
            let used: u64 = ix
                .entries()
                .filter(|e| live.contains(&e.blob))
                .map(|e| e.len + 512)
                .sum();
            if used == 0 {
                doomed.insert(ix.layer);
                stats.layers_deleted += 1;
            } else if (all - used) as f64 >= REWRITE_DEAD_SHARE * all as f64 {
                let mut reader = LayerReader::open(&self.layers_dir, &ix.layer)?;
                let mut entries: Vec<_> = ix.entries().filter(|e| live.contains(&e.blob)).collect();
                entries.sort_by_key(|e| (e.frame_offset, e.header_offset));
                for e in entries {
                    if !written.insert(e.blob) {
                        continue;
                    }
                    let data = reader.read_blob(&e)?;
                    fb.add(&sink, e.blob, e.kind, &data, e.kind == BlobKind::Chunk)?;
                }
                doomed.insert(ix.layer);
                stats.layers_rewritten += 1;
            }
        }
        fb.flush(&sink)?;
        let new_layers = {
            let mut s = sink.lock().expect("poisoned");
            s.finish()?;
            s.finished.clone()
        };

        // 3. Repoint kept manifests whose layers change.
        if !doomed.is_empty() {
            let mut map = BlobMap::default();
            for l in &new_layers {
                map.add(l.to_raw());
            }
            for ix in &indexes {
                if !doomed.contains(&ix.layer) {
                    map.add(ix.clone());
                }
            }
            for m in &kept {
                if !m.layers.iter().any(|l| doomed.contains(l)) {
                    continue;
                }
                let mut m = (*m).clone();
                let locate = |b: &BlobId| {
                    map.get(b)
                        .map(|(l, _)| l)
                        .ok_or_else(|| CheckpointError::corrupt(format!("prune lost blob {b}")))
                };
                let mut per_chunk: Vec<Vec<BTreeSet<BlobId>>> = Vec::new();
                let mut all = BTreeSet::new();
                for t in &m.trees {
                    let mut v = Vec::new();
                    for c in &t.chunks {
                        let mut set = BTreeSet::new();
                        set.insert(locate(&c.blob)?);
                        for b in &chunk_contents[&c.blob] {
                            set.insert(locate(b)?);
                        }
                        all.extend(set.iter().copied());
                        v.push(set);
                    }
                    per_chunk.push(v);
                }
                m.layers = all.into_iter().collect();
                let pos: HashMap<BlobId, u32> = m
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (*l, i as u32))
                    .collect();
                for (t, sets) in m.trees.iter_mut().zip(per_chunk) {
                    for (c, set) in t.chunks.iter_mut().zip(sets) {
                        c.layers = set.iter().map(|l| pos[l]).collect();
                    }
                }
                let bytes = m.encode();
                let tmp = self.tmp_dir.join(format!("{}.manifest.tmp", m.id));
                write_file_synced(&tmp, &bytes)?;
                let dest = self.manifest_path(&m.id);
                fs::rename(&tmp, &dest).io("rewrite manifest", &dest)?;
            }
            sync_dir(&self.manifests_dir)?;
        }

        // 4. Delete dead layers and anything in `layers/` that is not a layer.
        for l in &doomed {
            let _ = fs::remove_file(layer_path(&self.layers_dir, l));
        }
        for e in fs::read_dir(&self.layers_dir)
            .io("list", &self.layers_dir)?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".tar.zst").and_then(BlobId::from_hex);
            if id.is_none_or(|id| {
                !layer_ids.contains(&id) && !new_layers.iter().any(|l| l.layer == id)
            }) {
                let _ = fs::remove_file(e.path());
            }
        }
        sync_dir(&self.layers_dir)?;
        self.forget_index_cache();
        // The merged index cache now names deleted layers and lacks the new ones: rewrite it
        // (best effort; `create` checks it against `layers/` anyway).
        if self.global_index().is_ok() {
            self.refresh_index_cache();
        }
        stats.bytes_before = bytes_before;
        stats.bytes_after = self.store_bytes();
        if let Some(max) = policy.max_store_bytes
            && stats.bytes_after > max
        {
            return Err(CheckpointError::QuotaExceeded {
                used: stats.bytes_after,
                limit: max,
            });
        }
        Ok(stats)
    }
}
