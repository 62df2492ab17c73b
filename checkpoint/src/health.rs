//! Whole-store checks: which files of a store are damaged and which checkpoints each
//! damaged file affects (`Store::check`), and the listing that names a damaged manifest
//! instead of hiding it (`Store::list_all`).
//!
//! A checkpoint needs every layer its manifest lists (restore and verify check each one
//! whole), so a damaged layer affects exactly the checkpoints whose manifests list it, and
//! a damaged manifest affects its own checkpoint. `Full` checks read every byte: each
//! layer's whole-file blake3, its index, every blob's hash, and every checkpoint's entry
//! chunks and entries (what `Store::verify` checks, with each shared layer read once).
//! `Quick` reads only manifests and layer indexes (a flipped byte inside a layer's data is
//! not seen; a missing, truncated or renamed layer is).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::BlobId;
use crate::error::{CheckpointError, Result};
use crate::layer::{BlobKind, IndexEntry, LayerReader, RawIndex, layer_path, read_index};
use crate::limits::Deadline;
use crate::manifest::{CheckpointId, Manifest};
use crate::store::{ChunkLoader, Store, Summary};

/// How much of a store `check` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckDepth {
    /// Manifests and layer indexes only.
    Quick,
    /// Every byte: layers' whole-file hashes, every blob, every entry chunk and entry.
    Full,
}

impl CheckDepth {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckDepth::Quick => "quick",
            CheckDepth::Full => "full",
        }
    }
}

/// One damaged file of a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    /// Relative to the store root: `manifests/<id>.manifest` or `layers/<hex>.tar.zst`.
    pub path: String,
    /// What is wrong with it (the E620 text).
    pub problem: String,
    /// The file is gone (a layer a manifest lists, not in `layers/`).
    pub missing: bool,
    /// For a layer whose index is readable: how many of its blobs fail their hash, of how many.
    pub bad_blobs: Option<(u64, u64)>,
    /// The checkpoints that cannot be restored because of it, oldest first.
    pub affects: Vec<CheckpointId>,
}

/// One checkpoint of a store, as `check` found it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointState {
    pub id: CheckpointId,
    /// `None` when its manifest cannot be read.
    pub summary: Option<Summary>,
    /// Why it cannot be restored (`None`: it checks out at this depth).
    pub damage: Option<String>,
    /// The error code of `damage` (E620 damage, E621 unsafe, E624 over a cap).
    pub code: Option<&'static str>,
    /// What the last `repair` recorded about it (it found no intact source), if anything.
    pub repair_note: Option<String>,
}

/// The result of `Store::check`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreHealth {
    pub depth: CheckDepth,
    /// Every manifest file, oldest first.
    pub checkpoints: Vec<CheckpointState>,
    /// Damaged files, manifests first, then layers (by name).
    pub damaged: Vec<DamagedFile>,
    pub layers_checked: u64,
    /// Bytes of layer files read whole (`Full`).
    pub bytes_read: u64,
    /// Files moved aside by earlier repairs (`damaged/…`, relative to the store root).
    pub quarantined: Vec<String>,
}

impl StoreHealth {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty() && self.checkpoints.iter().all(|c| c.damage.is_none())
    }

    pub fn damaged_checkpoints(&self) -> impl Iterator<Item = &CheckpointState> {
        self.checkpoints.iter().filter(|c| c.damage.is_some())
    }
}

/// A listed manifest: its summary, or why it cannot be read.
#[derive(Debug)]
pub struct Listed {
    pub id: CheckpointId,
    pub summary: std::result::Result<Summary, CheckpointError>,
}

/// What one layer check found (shared with `repair`).
pub(crate) struct LayerCheck {
    pub present: bool,
    pub problem: Option<String>,
    pub index: Option<Arc<RawIndex>>,
    /// Blobs whose bytes fail (Full, index readable).
    pub bad_blobs: BTreeSet<BlobId>,
    pub size: u64,
}

/// Where `repair` records what it could not repair (read back by `check`).
pub(crate) const REPAIR_RECORD: &str = "damaged/repair.json";
/// The quarantine directory (relative to the store root).
pub(crate) const QUARANTINE_DIR: &str = "damaged";
/// The largest `damaged/repair.json` a reader loads (it is a store file: hostile input).
const REPAIR_RECORD_MAX: u64 = 1 << 20;

/// `damaged/repair.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RepairRecord {
    pub format: String,
    pub version: u32,
    pub at_ms: i64,
    /// Checkpoint id → why it could not be repaired.
    pub unrepairable: BTreeMap<String, String>,
}

pub(crate) const REPAIR_FORMAT: &str = "parhelia-checkpoint-repair";

pub(crate) fn read_repair_record(root: &Path) -> RepairRecord {
    use std::io::Read;
    let path = root.join(REPAIR_RECORD);
    // Never through a link, never more than the cap.
    let mut data = Vec::new();
    let read = open_nofollow(&path)
        .and_then(|f| f.take(REPAIR_RECORD_MAX + 1).read_to_end(&mut data).ok());
    if read.is_none() || data.len() as u64 > REPAIR_RECORD_MAX {
        return RepairRecord::default();
    }
    serde_json::from_slice::<RepairRecord>(&data)
        .ok()
        .filter(|r| r.format == REPAIR_FORMAT && r.version == 1)
        .unwrap_or_default()
}

fn is_damage(e: &CheckpointError) -> bool {
    matches!(
        e,
        CheckpointError::Corrupt { .. } | CheckpointError::UnsafeEntry { .. }
    )
}

pub(crate) fn layer_rel(id: &BlobId) -> String {
    format!("layers/{}.tar.zst", id.to_hex())
}

pub(crate) fn manifest_rel(id: &CheckpointId) -> String {
    format!("manifests/{}.manifest", id.as_str())
}

/// Checks one layer file at `depth` (see the module doc). Io errors other than "not
/// found" are returned; damage is reported in the result.
pub(crate) fn check_layer(
    layers_dir: &Path,
    id: &BlobId,
    depth: CheckDepth,
    deadline: Deadline,
) -> Result<LayerCheck> {
    let path = layer_path(layers_dir, id);
    let mut out = LayerCheck {
        present: false,
        problem: None,
        index: None,
        bad_blobs: BTreeSet::new(),
        size: 0,
    };
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.problem = Some(format!("layer {} is missing", id.to_hex()));
            return Ok(out);
        }
        Err(e) => {
            return Err(CheckpointError::Io {
                op: "stat layer",
                path,
                source: e,
            });
        }
    };
    if !meta.is_file() {
        out.problem = Some(format!("layer {} is not a regular file", id.to_hex()));
        return Ok(out);
    }
    out.present = true;
    out.size = meta.len();
    let mut problems = Vec::new();
    if depth == CheckDepth::Full {
        match crate::layer::verify_layer(layers_dir, id, meta.len()) {
            Ok(()) => {}
            Err(e) if is_damage(&e) => problems.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    match read_index(layers_dir, id) {
        Ok(ix) => out.index = Some(ix),
        Err(e) if is_damage(&e) => problems.push(e.to_string()),
        Err(e) => return Err(e),
    }
    if depth == CheckDepth::Full
        && let Some(ix) = &out.index
    {
        out.bad_blobs = bad_blobs(layers_dir, ix, deadline)?;
        if !out.bad_blobs.is_empty() {
            problems.push(format!(
                "{} of its {} blobs fail their hash",
                out.bad_blobs.len(),
                ix.entry_count()
            ));
        }
    }
    if !problems.is_empty() {
        out.problem = Some(problems.join("; "));
    }
    Ok(out)
}

/// The blobs of a layer whose bytes do not check out (header, length, blake3), reading
/// each frame group once; after a failure the next blob is read from its own frame.
pub(crate) fn bad_blobs(
    layers_dir: &Path,
    ix: &RawIndex,
    deadline: Deadline,
) -> Result<BTreeSet<BlobId>> {
    let mut entries: Vec<IndexEntry> = ix.entries().collect();
    entries.sort_by_key(|e| (e.frame_offset, e.header_offset));
    let mut bad = BTreeSet::new();
    let mut reader = LayerReader::open(layers_dir, &ix.layer)?;
    let mut i = 0;
    while i < entries.len() {
        let frame = entries[i].frame_offset;
        let mut stream = reader.frames_at(frame, 256 << 10)?.with_deadline(deadline);
        let mut broken = false;
        while i < entries.len() && entries[i].frame_offset == frame && !broken {
            match stream.read_member(&entries[i], &mut io::sink()) {
                Ok(()) => {}
                Err(e) if is_damage(&e) => {
                    bad.insert(entries[i].blob);
                    broken = true;
                }
                Err(e) => return Err(e),
            }
            i += 1;
        }
        // After a failure the stream's position is unknown: the rest of this frame
        // group is read again from the frame, one blob at a time.
        while broken && i < entries.len() && entries[i].frame_offset == frame {
            deadline.check("checking a layer")?;
            let mut one = reader.frames_at(frame, 256 << 10)?.with_deadline(deadline);
            match one.read_member(&entries[i], &mut io::sink()) {
                Ok(()) => {}
                Err(e) if is_damage(&e) => {
                    bad.insert(entries[i].blob);
                }
                Err(e) => return Err(e),
            }
            i += 1;
        }
    }
    Ok(bad)
}

impl Store {
    /// Whether a manifest file exists for `id` (readable or not): a damaged checkpoint
    /// is still a checkpoint of this store, to be reported as damaged, never as absent.
    pub fn has_manifest(&self, id: &CheckpointId) -> bool {
        CheckpointId::parse(id.as_str()).is_ok()
            && fs::symlink_metadata(self.manifest_path(id)).is_ok()
    }

    /// Every manifest file, oldest first, with its summary or why it cannot be read
    /// (E620 damage). Like `list`, takes no lock; unlike it, hides nothing.
    pub fn list_all(&self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for id in self.manifest_ids()? {
            let summary = self.load(&id).map(|m| Summary::of(&m));
            if let Err(e) = &summary
                && !is_damage(e)
                && !matches!(e, CheckpointError::NotFound { .. })
            {
                return Err(summary.expect_err("checked"));
            }
            if matches!(summary, Err(CheckpointError::NotFound { .. })) {
                continue; // deleted (pruned) since the directory was read
            }
            out.push(Listed { id, summary });
        }
        Ok(out)
    }

    /// Checks the whole store at `depth` and says which checkpoints each damaged file
    /// affects. Holds the lock shared (a prune waits; E622 after `lock_wait`).
    pub fn check(&self, depth: CheckDepth) -> Result<StoreHealth> {
        let _lock = self.lock(false)?;
        Ok(self.check_locked(depth)?.0)
    }

    /// `check` under a lock the caller holds; also returns the readable manifests and the
    /// layer checks (for `repair`).
    pub(crate) fn check_locked(
        &self,
        depth: CheckDepth,
    ) -> Result<(StoreHealth, Vec<Manifest>, BTreeMap<BlobId, LayerCheck>)> {
        let deadline = Deadline::new(self.limits.max_time);
        let mut states = Vec::new();
        let mut manifests = Vec::new();
        let mut damaged = Vec::new();
        for id in self.manifest_ids()? {
            match self.load(&id) {
                Ok(m) => {
                    states.push(CheckpointState {
                        id: id.clone(),
                        summary: Some(Summary::of(&m)),
                        damage: None,
                        code: None,
                        repair_note: None,
                    });
                    manifests.push(m);
                }
                Err(CheckpointError::NotFound { .. }) => {}
                Err(e) if is_damage(&e) => {
                    let problem = format!("manifest is damaged: {e}");
                    damaged.push(DamagedFile {
                        path: manifest_rel(&id),
                        problem: problem.clone(),
                        missing: false,
                        bad_blobs: None,
                        affects: vec![id.clone()],
                    });
                    states.push(CheckpointState {
                        id,
                        summary: None,
                        damage: Some(problem),
                        code: Some(e.code()),
                        repair_note: None,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        // Layer → the checkpoints that list it.
        let mut users: BTreeMap<BlobId, Vec<CheckpointId>> = BTreeMap::new();
        for m in &manifests {
            for l in m.layers.iter().collect::<BTreeSet<_>>() {
                users.entry(*l).or_default().push(m.id.clone());
            }
        }
        let present = self.present_layers()?;
        let all: BTreeSet<BlobId> = present.keys().chain(users.keys()).copied().collect();
        let mut checks = BTreeMap::new();
        let mut bytes_read = 0u64;
        for l in &all {
            let c = check_layer(&self.layers_dir, l, depth, deadline)?;
            if depth == CheckDepth::Full {
                bytes_read = bytes_read.saturating_add(c.size);
            }
            if let Some(problem) = &c.problem {
                damaged.push(DamagedFile {
                    path: layer_rel(l),
                    problem: problem.clone(),
                    missing: !c.present,
                    bad_blobs: c
                        .index
                        .as_ref()
                        .filter(|_| depth == CheckDepth::Full)
                        .map(|ix| (c.bad_blobs.len() as u64, ix.entry_count() as u64)),
                    affects: users.get(l).cloned().unwrap_or_default(),
                });
            }
            checks.insert(*l, c);
        }
        // Each readable checkpoint: its layers, then (Full) its chunks and entries.
        for (state, m) in states
            .iter_mut()
            .filter(|s| s.summary.is_some())
            .zip(&manifests)
        {
            let bad_layer = m
                .layers
                .iter()
                .find(|l| checks.get(l).is_some_and(|c| c.problem.is_some()));
            if let Some(l) = bad_layer {
                state.damage = Some(format!(
                    "{}: {}",
                    layer_rel(l),
                    checks[l].problem.as_deref().unwrap_or("damaged")
                ));
                state.code = Some(parhelia_contract::codes::CHECKPOINT_CORRUPT.code);
                continue;
            }
            if depth == CheckDepth::Full
                && let Err(e) = self.check_structure(m, &checks)
            {
                if is_damage(&e) {
                    damaged.push(DamagedFile {
                        path: manifest_rel(&m.id),
                        problem: format!("does not match its layers: {e}"),
                        missing: false,
                        bad_blobs: None,
                        affects: vec![m.id.clone()],
                    });
                } else if !matches!(e, CheckpointError::LimitExceeded { .. }) {
                    return Err(e);
                }
                state.code = Some(e.code());
                state.damage = Some(e.to_string());
            }
        }
        let record = read_repair_record(&self.root);
        for s in &mut states {
            if s.damage.is_some()
                && let Some(why) = record.unrepairable.get(s.id.as_str())
            {
                s.repair_note = Some(why.clone());
            }
        }
        damaged.sort_by(|a, b| {
            let rank = |p: &str| !p.starts_with("manifests/");
            (rank(&a.path), &a.path).cmp(&(rank(&b.path), &b.path))
        });
        let health = StoreHealth {
            depth,
            checkpoints: states,
            damaged,
            layers_checked: all.len() as u64,
            bytes_read,
            quarantined: quarantined(&self.root),
        };
        Ok((health, manifests, checks))
    }

    /// What `verify` checks of a checkpoint beyond its layers' bytes (already checked
    /// whole by `check_layer`): entry chunks, entries, caps, and that every file's content
    /// is indexed in its layers with the right kind and size.
    fn check_structure(&self, m: &Manifest, checks: &BTreeMap<BlobId, LayerCheck>) -> Result<()> {
        for t in &m.trees {
            self.check_entry_count(t)?;
            let layers = Self::tree_layers(m, t);
            let mut map = crate::mindex::BlobMap::default();
            for l in &layers {
                match checks.get(l).and_then(|c| c.index.clone()) {
                    Some(ix) => map.add(ix),
                    None => {
                        return Err(CheckpointError::corrupt(format!(
                            "layer {} has no readable index",
                            l.to_hex()
                        )));
                    }
                }
            }
            let mut loader = ChunkLoader::new(&self.layers_dir, &map);
            let records = self.tree_records(t, &mut loader)?;
            crate::entry::validate_tree(&records)?;
            self.check_record_limits(t, &records)?;
            let mut maps_seen = std::collections::HashSet::new();
            for r in &records {
                let Some(c) = &r.content else { continue };
                let indexed = |blob: &BlobId, len: u64| {
                    map.get_all(blob)
                        .iter()
                        .any(|(_, e)| e.kind == BlobKind::Content && e.len == len)
                };
                let ok = if r.chunked {
                    // The map (read and hashed) and every chunk it lists, of its length.
                    !maps_seen.insert(*c) || {
                        let m = loader.read_map(c, r.size)?;
                        m.chunks.iter().all(|(id, len)| indexed(id, *len))
                    }
                } else {
                    indexed(c, r.size)
                };
                if !ok {
                    return Err(CheckpointError::corrupt(format!(
                        "content of {:?} is missing from the store",
                        String::from_utf8_lossy(&r.path)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Files under `damaged/` (relative to the store root), sorted; at most 10,000.
pub(crate) fn quarantined(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["manifests", "layers"] {
        let Ok(rd) = fs::read_dir(root.join(QUARANTINE_DIR).join(sub)) else {
            continue;
        };
        for e in rd.flatten().take(10_000) {
            if let Some(n) = e.file_name().to_str() {
                out.push(format!("{QUARANTINE_DIR}/{sub}/{n}"));
            }
        }
    }
    out.sort();
    out
}

impl Store {
    /// The checkpoints the last `repair` could not repair, with why (from
    /// `damaged/repair.json`; empty if there is none or it is unreadable).
    pub fn unrepairable(&self) -> BTreeMap<CheckpointId, String> {
        read_repair_record(&self.root)
            .unrepairable
            .into_iter()
            .filter_map(|(id, why)| CheckpointId::parse(&id).ok().map(|id| (id, why)))
            .collect()
    }
}
/// Opens a regular file for reading, never through a symlink (`None`: missing, a link,
/// not a regular file, unreadable).
pub(crate) fn open_nofollow(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    f.metadata().ok()?.is_file().then_some(f)
}
