//! `Store::repair`: rewrites damaged manifests and layers from intact sources, the way
//! restic's `repair packs` / `repair snapshots` do (docs/formats/checkpoint.md, "Repair").
//!
//! Order of work, under the store's exclusive lock:
//! 1. a full `check` finds the damaged files;
//! 2. a damaged manifest is replaced by an intact copy of the same checkpoint from a
//!    source store (same id, its own checksum verified);
//! 3. a damaged or missing layer is replaced whole by a source store's file of the same
//!    name whose blake3 matches (layers are named by their hash);
//! 4. for layers still damaged, the blobs the checkpoints need from them are gathered —
//!    from the damaged layer itself (blobs that still hash right), the store's intact
//!    layers, source stores, and workspaces (a file whose content hashes to the blob) —
//!    and written into new layers; each affected manifest is rewritten to list the new
//!    layers instead of the damaged ones (same id, new checksum) only if the result
//!    verifies end to end; otherwise the checkpoint is recorded as unrepairable in
//!    `damaged/repair.json` and its manifest is left alone, so it stays reported;
//! 5. damaged files no manifest lists any more are moved to `damaged/` (never deleted);
//!    a damaged layer an unrepairable checkpoint still lists stays where it is.
//!
//! Nothing is deleted except new layers this run wrote that no manifest adopted, so a
//! second run changes nothing (idempotent). Every source is hostile input: blobs are
//! taken only once their bytes hash to their id, a source's files are never written, and
//! symlinks are never followed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::codec::BlobId;
use crate::entry::decode_chunk;
use crate::error::{CheckpointError, IoContext, Result};
use crate::filemap::decode_map;
use crate::health::{
    CheckDepth, DamagedFile, LayerCheck, QUARANTINE_DIR, REPAIR_FORMAT, REPAIR_RECORD,
    RepairRecord, layer_rel, manifest_rel, open_nofollow,
};
use crate::layer::{BlobKind, IndexEntry, LayerReader, LayerSink, read_index};
use crate::limits::{CHUNK_BLOB_MAX, Deadline};
use crate::manifest::{CheckpointId, Manifest};
use crate::mindex::BlobMap;
use crate::store::{PhaseTrace, Store};

/// Where `repair` may find intact copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepairSource {
    /// A directory tree whose files may hold lost content (a session's live workspace).
    Workspace(PathBuf),
    /// Another checkpoint store (a mirror of this one, another session's store): read
    /// only, never locked or written.
    Store(PathBuf),
}

#[derive(Clone, Debug, Default)]
pub struct RepairOptions {
    pub sources: Vec<RepairSource>,
    /// Say what would be done; change nothing.
    pub dry_run: bool,
}

/// One thing `repair` did (or, in a dry run, would do) to a file of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepairAction {
    /// Relative to the store root.
    pub path: String,
    pub action: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unrepairable {
    pub id: CheckpointId,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// What the check before the repair found.
    pub damaged: Vec<DamagedFile>,
    pub actions: Vec<RepairAction>,
    /// Checkpoints that verify again (dry run: would).
    pub repaired: Vec<CheckpointId>,
    /// Checkpoints still damaged, and why.
    pub unrepairable: Vec<Unrepairable>,
}

/// A store given as a source: its layer indexes, read once.
struct SourceStore {
    root: PathBuf,
    layers_dir: PathBuf,
    map: BlobMap,
}

/// Largest manifest file taken from a source.
const MANIFEST_MAX: u64 = 256 << 20;
/// Files of a workspace looked at, at most.
const WORKSPACE_MAX_FILES: usize = 2_000_000;

/// Blobs to gather: id → kind and length (when known).
type Wanted = BTreeMap<BlobId, (BlobKind, Option<u64>)>;

/// Where a wanted blob is written while it is being fetched.
enum Out {
    File(PathBuf),
    Memory(Vec<u8>),
    Discard,
}

impl Out {
    /// A fresh writer for one attempt (a failed attempt's bytes are dropped).
    fn writer(&mut self) -> Result<Box<dyn Write + '_>> {
        Ok(match self {
            Out::File(p) => Box::new(io::BufWriter::new(File::create(&*p).io("create", p)?)),
            Out::Memory(v) => {
                v.clear();
                Box::new(v)
            }
            Out::Discard => Box::new(io::sink()),
        })
    }
}

/// The blobs to gather and where to find them.
struct Gatherer<'a> {
    store: &'a Store,
    /// Every layer of the store with a readable index (damaged ones too: a read hashes
    /// each blob, so a damaged copy is simply skipped).
    local: BlobMap,
    sources: Vec<SourceStore>,
    workspaces: Vec<PathBuf>,
    /// Workspace files by content (filled on first need).
    /// Workspace files by content, or (a chunk of a chunked file) by the range of a
    /// workspace file that held it: (path, offset); filled on first need.
    workspace_files: Option<HashMap<BlobId, (PathBuf, u64)>>,
    /// Sizes of the chunked files whose chunks are wanted: workspace files of these sizes
    /// are cut into chunks too when the workspaces are scanned.
    chunked_sizes: BTreeSet<u64>,
    deadline: Deadline,
}

impl Gatherer<'_> {
    /// Copies `blob` (of `kind`, `len` bytes if known) into `out` from the first source
    /// whose bytes hash right; the source's name, or `None`.
    fn fetch(
        &mut self,
        blob: &BlobId,
        kind: BlobKind,
        len: Option<u64>,
        out: &mut Out,
    ) -> Result<Option<String>> {
        // What is read into memory (entry chunks, chunk maps) is bounded before it is read.
        let in_memory = matches!(out, Out::Memory(_));
        let fits = |e: &IndexEntry| {
            e.kind == kind
                && len.is_none_or(|l| l == e.len)
                && ((kind != BlobKind::Chunk && !in_memory) || e.len <= CHUNK_BLOB_MAX)
        };
        let mut tries: Vec<(PathBuf, BlobId, IndexEntry, String)> = Vec::new();
        for (l, e) in self.local.get_all(blob) {
            if fits(&e) {
                tries.push((
                    self.store.layers_dir.clone(),
                    l,
                    e,
                    format!("this store's {}", layer_rel(&l)),
                ));
            }
        }
        for s in &self.sources {
            for (l, e) in s.map.get_all(blob) {
                if fits(&e) {
                    tries.push((
                        s.layers_dir.clone(),
                        l,
                        e,
                        format!("{}/{}", s.root.display(), layer_rel(&l)),
                    ));
                }
            }
        }
        for (dir, layer, e, origin) in tries {
            self.deadline.check("repairing")?;
            let Ok(mut reader) = LayerReader::open(&dir, &layer) else {
                continue;
            };
            let mut w = out.writer()?;
            let r = reader
                .frames_at(e.frame_offset, 256 << 10)
                .and_then(|s| s.with_deadline(self.deadline).read_member(&e, &mut w));
            let flushed = w.flush();
            drop(w);
            match r {
                Ok(()) => {
                    flushed.map_err(|x| CheckpointError::Io {
                        op: "write",
                        path: self.store.tmp_dir.clone(),
                        source: x,
                    })?;
                    return Ok(Some(origin));
                }
                Err(
                    e @ (CheckpointError::LimitExceeded { .. } | CheckpointError::Locked { .. }),
                ) => {
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        if kind != BlobKind::Content || self.workspaces.is_empty() {
            return Ok(None);
        }
        let Some(len) = len else { return Ok(None) };
        let Some((path, offset)) = self.workspace_file(blob, len)? else {
            return Ok(None);
        };
        // Read again while copying: the file may have changed since it was hashed.
        let mut w = out.writer()?;
        let ok = copy_if_hash(&path, offset, blob, len, &mut w);
        let flushed = w.flush();
        drop(w);
        if ok {
            flushed.io("write", &self.store.tmp_dir)?;
            return Ok(Some(format!("the file {}", path.display())));
        }
        Ok(None)
    }

    /// A workspace file whose content is `blob` (hashing only files of the right size,
    /// the first time for all wanted sizes at once: see `scan_workspaces`).
    fn workspace_file(&mut self, blob: &BlobId, _len: u64) -> Result<Option<(PathBuf, u64)>> {
        Ok(self
            .workspace_files
            .as_ref()
            .and_then(|m| m.get(blob).cloned()))
    }

    /// Hashes the workspaces' regular files whose size is one of `wanted`'s, once.
    fn scan_workspaces(&mut self, wanted: &BTreeMap<BlobId, u64>) -> Result<()> {
        let sizes: BTreeSet<u64> = wanted.values().copied().collect();
        let mut found = HashMap::new();
        let mut seen = 0usize;
        'outer: for root in &self.workspaces {
            for e in walkdir::WalkDir::new(root).follow_links(false) {
                let Ok(e) = e else { continue };
                seen += 1;
                if seen > WORKSPACE_MAX_FILES {
                    break 'outer;
                }
                if !e.file_type().is_file() {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                if self.chunked_sizes.contains(&meta.len())
                    && let Some(f) = open_nofollow(e.path())
                {
                    // The chunks of a file of a wanted chunked file's size.
                    for c in crate::filemap::chunker(f) {
                        self.deadline.check("repairing")?;
                        let Ok(c) = c else { break };
                        let id = BlobId(*blake3::hash(&c.data).as_bytes());
                        if wanted.contains_key(&id) {
                            found
                                .entry(id)
                                .or_insert_with(|| (e.path().to_path_buf(), c.offset));
                        }
                    }
                }
                if !sizes.contains(&meta.len()) {
                    continue;
                }
                self.deadline.check("repairing")?;
                if let Some(id) = hash_file(e.path())
                    && wanted.contains_key(&id)
                {
                    found
                        .entry(id)
                        .or_insert_with(|| (e.path().to_path_buf(), 0));
                }
            }
        }
        self.workspace_files = Some(found);
        Ok(())
    }
}

/// blake3 of a regular file (never through a symlink), or `None` if it cannot be read.
fn hash_file(path: &Path) -> Option<BlobId> {
    let mut f = open_nofollow(path)?;
    let mut h = blake3::Hasher::new();
    io::copy(&mut f, &mut h).ok()?;
    Some(BlobId(*h.finalize().as_bytes()))
}

/// Copies `len` bytes of `path` from `offset` into `out` if they hash to `blob` (a whole
/// file from offset 0, or a chunk of one).
fn copy_if_hash(path: &Path, offset: u64, blob: &BlobId, len: u64, out: &mut dyn Write) -> bool {
    let Some(mut f) = open_nofollow(path) else {
        return false;
    };
    if f.seek(io::SeekFrom::Start(offset)).is_err() {
        return false;
    }
    copy_exact_if_hash(f.take(len), blob, len, out)
}

/// Copies everything `r` gives into `out` if it is exactly `len` bytes hashing to `blob`.
fn copy_exact_if_hash(mut r: impl Read, blob: &BlobId, len: u64, out: &mut dyn Write) -> bool {
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let got = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(g) => g,
            Err(_) => return false,
        };
        n += got as u64;
        h.update(&buf[..got]);
        if out.write_all(&buf[..got]).is_err() {
            return false;
        }
    }
    n == len && h.finalize().as_bytes() == &blob.0
}

/// Opens a source store read-only: its layers' indexes (unreadable ones are skipped).
fn open_source(root: &Path) -> Option<SourceStore> {
    let layers_dir = root.join("layers");
    if !fs::symlink_metadata(root.join("store.json")).is_ok_and(|m| m.is_file())
        || !fs::symlink_metadata(&layers_dir).is_ok_and(|m| m.is_dir())
    {
        return None;
    }
    let mut map = BlobMap::default();
    for e in fs::read_dir(&layers_dir).ok()?.flatten().take(1_000_000) {
        let Some(id) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".tar.zst"))
            .and_then(BlobId::from_hex)
        else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Ok(ix) = read_index(&layers_dir, &id) {
            map.add(ix);
        }
    }
    Some(SourceStore {
        root: root.to_path_buf(),
        layers_dir,
        map,
    })
}

/// The manifest `id` from a source store, if it is intact and names itself.
fn source_manifest(root: &Path, id: &CheckpointId) -> Option<Vec<u8>> {
    let path = root.join(manifest_rel(id));
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MANIFEST_MAX {
        return None;
    }
    let data = fs::read(&path).ok()?;
    let m = Manifest::decode(&data).ok()?;
    (m.id == *id).then_some(data)
}

/// A source store's layer file named `id` whose bytes hash to `id`.
fn source_layer(root: &Path, id: &BlobId) -> Option<PathBuf> {
    let dir = root.join("layers");
    let path = crate::layer::layer_path(&dir, id);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    crate::layer::verify_layer(&dir, id, meta.len())
        .ok()
        .map(|()| path)
}

impl Store {
    /// Repairs what a full `check` finds damaged from `opts.sources` (see the module
    /// doc). Holds the lock exclusively (E622 after `lock_wait`).
    pub fn repair(&self, opts: &RepairOptions) -> Result<RepairReport> {
        let _lock = self.lock(true)?;
        let deadline = Deadline::new(self.limits.max_time);
        let dry = opts.dry_run;
        let me = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        let store_roots: Vec<PathBuf> = opts
            .sources
            .iter()
            .filter_map(|s| match s {
                RepairSource::Store(p) => Some(p.clone()),
                RepairSource::Workspace(_) => None,
            })
            .filter(|p| p.canonicalize().is_ok_and(|c| c != me))
            .collect();
        let workspaces: Vec<PathBuf> = opts
            .sources
            .iter()
            .filter_map(|s| match s {
                RepairSource::Workspace(p) => Some(p.clone()),
                RepairSource::Store(_) => None,
            })
            .collect();

        let (first, mut manifests, mut checks) = self.check_locked(CheckDepth::Full)?;
        let mut report = RepairReport {
            dry_run: dry,
            damaged: first.damaged.clone(),
            actions: Vec::new(),
            repaired: Vec::new(),
            unrepairable: Vec::new(),
        };
        if first.is_ok() {
            if !dry {
                self.write_repair_record(&BTreeMap::new())?;
            }
            return Ok(report);
        }
        let mut unrepairable: BTreeMap<CheckpointId, String> = BTreeMap::new();
        // Dry run: what would verify again.
        let mut repaired: BTreeSet<CheckpointId> = BTreeSet::new();

        // 2. Damaged manifests, whole, from a source store.
        let mut changed = false;
        for st in first.checkpoints.iter().filter(|c| c.summary.is_none()) {
            let found = store_roots
                .iter()
                .find_map(|r| source_manifest(r, &st.id).map(|d| (r, d)));
            match found {
                Some((root, data)) => {
                    let rel = manifest_rel(&st.id);
                    if !dry {
                        self.replace_file(&rel, &data)?;
                    }
                    report.actions.push(RepairAction {
                        path: rel,
                        action: format!(
                            "{} by the intact copy in {}",
                            if dry { "would be replaced" } else { "replaced" },
                            root.join("manifests").display()
                        ),
                    });
                    repaired.insert(st.id.clone());
                    changed = true;
                }
                None => {
                    unrepairable.insert(
                        st.id.clone(),
                        "its manifest is damaged and no source holds an intact copy".into(),
                    );
                }
            }
        }
        if changed && !dry {
            (_, manifests, checks) = self.check_locked(CheckDepth::Full)?;
        }

        // 3. Damaged layers, whole, from a source store.
        let mut changed = false;
        let mut replaced_whole = BTreeSet::new();
        for (l, c) in checks.iter().filter(|(_, c)| c.problem.is_some()) {
            if let Some(src) = store_roots.iter().find_map(|r| source_layer(r, l)) {
                if !dry {
                    self.replace_layer_from(l, &src, c.present)?;
                }
                report.actions.push(RepairAction {
                    path: layer_rel(l),
                    action: format!(
                        "{} by the intact copy {}",
                        match (dry, c.present) {
                            (true, _) => "would be replaced",
                            (false, true) => "replaced",
                            (false, false) => "restored",
                        },
                        src.display()
                    ),
                });
                replaced_whole.insert(*l);
                changed = true;
            }
        }
        if changed && !dry {
            (_, manifests, checks) = self.check_locked(CheckDepth::Full)?;
        }
        let damaged_layers: BTreeSet<BlobId> = checks
            .iter()
            .filter(|(l, c)| c.problem.is_some() && !replaced_whole.contains(*l))
            .map(|(l, _)| *l)
            .collect();

        // 4. Blob by blob, for the checkpoints that list a layer still damaged.
        let mut local = BlobMap::default();
        for c in checks.values() {
            if let Some(ix) = &c.index {
                local.add(ix.clone());
            }
        }
        let mut g = Gatherer {
            store: self,
            local,
            sources: store_roots.iter().filter_map(|r| open_source(r)).collect(),
            workspaces,
            workspace_files: None,
            chunked_sizes: BTreeSet::new(),
            deadline,
        };
        let affected: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| m.layers.iter().any(|l| damaged_layers.contains(l)))
            .collect();
        // Per checkpoint: the blobs it needs that its intact layers do not hold, or why
        // that cannot be known.
        let mut needs: BTreeMap<CheckpointId, std::result::Result<Wanted, String>> =
            BTreeMap::new();
        for m in &affected {
            needs.insert(
                m.id.clone(),
                self.needed_blobs(m, &damaged_layers, &checks, &mut g)?,
            );
        }
        let mut wanted: BTreeMap<BlobId, (BlobKind, Option<u64>)> = BTreeMap::new();
        for n in needs.values().flatten() {
            for (b, k) in n {
                wanted.entry(*b).or_insert(*k);
            }
        }
        let content_sizes: BTreeMap<BlobId, u64> = wanted
            .iter()
            .filter_map(|(b, (k, l))| (*k == BlobKind::Content).then_some((*b, (*l)?)))
            .collect();
        let mut fetched: BTreeMap<BlobId, (PathBuf, BlobKind, u64)> = BTreeMap::new();
        let mut found: BTreeSet<BlobId> = BTreeSet::new();
        let mut origins: BTreeMap<String, u64> = BTreeMap::new();
        let mut counter = 0u64;
        let mut scanned = false;
        for (blob, (kind, len)) in &wanted {
            counter += 1;
            let tmp = self
                .tmp_dir
                .join(format!("repair-{}-{counter}.blob", std::process::id()));
            let mut out = if dry {
                Out::Discard
            } else {
                Out::File(tmp.clone())
            };
            let mut origin = g.fetch(blob, *kind, *len, &mut out)?;
            if origin.is_none() && *kind == BlobKind::Content && !scanned {
                g.scan_workspaces(&content_sizes)?;
                scanned = true;
                origin = g.fetch(blob, *kind, *len, &mut out)?;
            }
            match origin {
                Some(o) => {
                    found.insert(*blob);
                    let from = if o.starts_with("the file ") {
                        "the workspace".to_string()
                    } else {
                        o.clone()
                    };
                    *origins.entry(from).or_default() += 1;
                    if !dry {
                        let size = fs::metadata(&tmp).io("stat", &tmp)?.len();
                        fetched.insert(*blob, (tmp, *kind, size));
                    }
                }
                None => {
                    let _ = fs::remove_file(&tmp);
                }
            }
        }

        // New layers with everything gathered.
        let mut new_layers: Vec<BlobId> = Vec::new();
        if !dry && !fetched.is_empty() {
            let mut sink = LayerSink::new(self.layers_dir.clone(), self.tmp_dir.clone())?;
            sink.layer_target = self.layer_target;
            let mut compressor = zstd::bulk::Compressor::new(crate::layer::ZSTD_LEVEL)
                .io("compress", &self.tmp_dir)?;
            for (blob, (path, kind, size)) in &fetched {
                let mut f = File::open(path).io("open", path)?;
                f.rewind().io("seek", path)?;
                if !sink.append_stream_as(*blob, *kind, *size, &mut f, &mut compressor)? {
                    return Err(CheckpointError::corrupt(format!(
                        "blob {blob} changed while it was being repaired"
                    )));
                }
            }
            sink.finish()?;
            new_layers = sink.finished.iter().map(|l| l.layer).collect();
            for (path, _, _) in fetched.values() {
                let _ = fs::remove_file(path);
            }
        }
        if !fetched.is_empty() || (dry && !found.is_empty()) {
            let from: Vec<String> = origins
                .iter()
                .map(|(o, n)| format!("{n} from {o}"))
                .collect();
            report.actions.push(RepairAction {
                path: if new_layers.is_empty() {
                    "layers/".into()
                } else {
                    new_layers
                        .iter()
                        .map(layer_rel)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                action: format!(
                    "{} {} blob(s) of damaged layers ({})",
                    if dry { "would rewrite" } else { "rewrote" },
                    found.len(),
                    from.join(", ")
                ),
            });
        }

        // Rewrite each affected manifest if the result verifies.
        let mut adopted = false;
        let mut still_listed: BTreeSet<BlobId> = BTreeSet::new();
        for m in &affected {
            let need = &needs[&m.id];
            let missing: Vec<&BlobId> = match need {
                Ok(n) => n.keys().filter(|b| !found.contains(b)).collect(),
                Err(_) => Vec::new(),
            };
            if let Err(why) = need {
                unrepairable.insert(m.id.clone(), why.clone());
                still_listed.extend(m.layers.iter().copied());
                continue;
            }
            if !missing.is_empty() {
                unrepairable.insert(
                    m.id.clone(),
                    format!(
                        "{} blob(s) it needs from {} have no intact source",
                        missing.len(),
                        m.layers
                            .iter()
                            .filter(|l| damaged_layers.contains(l))
                            .map(layer_rel)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                still_listed.extend(m.layers.iter().copied());
                continue;
            }
            if dry {
                repaired.insert(m.id.clone());
                continue;
            }
            let mut candidate = relayer(m, &damaged_layers, &new_layers);
            let trace = PhaseTrace::new();
            let verified = candidate.trees.iter().try_for_each(|t| {
                self.prepare_tree_traced(&candidate, t, &trace, deadline)
                    .map(|_| ())
            });
            match verified {
                Ok(()) => {
                    self.write_manifest_atomic(&mut candidate)?;
                    report.actions.push(RepairAction {
                        path: manifest_rel(&m.id),
                        action: "rewritten to list the repaired layers".into(),
                    });
                    repaired.insert(m.id.clone());
                    adopted = true;
                }
                Err(e) => {
                    unrepairable.insert(m.id.clone(), format!("still damaged after repair: {e}"));
                    still_listed.extend(m.layers.iter().copied());
                }
            }
        }
        if !dry {
            if !adopted {
                // Copies nobody needs: leave the store as it was.
                for l in &new_layers {
                    let _ = fs::remove_file(crate::layer::layer_path(&self.layers_dir, l));
                }
            }
            crate::layer::sync_dir(&self.manifests_dir)?;
        }

        // 5. Quarantine damaged layers no manifest lists any more.
        for l in &damaged_layers {
            let present = checks.get(l).is_some_and(|c| c.present);
            if !present || still_listed.contains(l) {
                continue;
            }
            let listed_elsewhere = manifests
                .iter()
                .any(|m| !affected.iter().any(|a| a.id == m.id) && m.layers.contains(l));
            if listed_elsewhere {
                continue;
            }
            let to = if dry {
                format!("{QUARANTINE_DIR}/{}", layer_rel(l))
            } else {
                self.quarantine(&layer_rel(l))?
            };
            report.actions.push(RepairAction {
                path: layer_rel(l),
                action: format!("{} to {to}", if dry { "would move" } else { "moved" }),
            });
        }

        if dry {
            // Checkpoints whose only damage is a layer a source holds whole.
            for m in &manifests {
                let listed_damage: Vec<&BlobId> = m
                    .layers
                    .iter()
                    .filter(|l| checks.get(l).is_some_and(|c| c.problem.is_some()))
                    .collect();
                if !listed_damage.is_empty()
                    && listed_damage.iter().all(|l| replaced_whole.contains(*l))
                {
                    repaired.insert(m.id.clone());
                }
            }
            for st in first.damaged_checkpoints() {
                if !repaired.contains(&st.id) && !unrepairable.contains_key(&st.id) {
                    unrepairable.insert(
                        st.id.clone(),
                        st.damage.clone().unwrap_or_else(|| "damaged".into()),
                    );
                }
            }
            report.repaired = repaired.into_iter().collect();
        } else {
            // What is true now, by a last full check.
            let (after, _, _) = self.check_locked(CheckDepth::Full)?;
            let still: BTreeMap<CheckpointId, String> = after
                .damaged_checkpoints()
                .map(|st| {
                    let why = unrepairable
                        .get(&st.id)
                        .cloned()
                        .or_else(|| st.damage.clone())
                        .unwrap_or_else(|| "damaged".into());
                    (st.id.clone(), why)
                })
                .collect();
            report.repaired = first
                .damaged_checkpoints()
                .filter(|st| !still.contains_key(&st.id))
                .map(|st| st.id.clone())
                .collect();
            unrepairable = still;
            let record: BTreeMap<String, String> = unrepairable
                .iter()
                .map(|(id, why)| (id.0.clone(), why.clone()))
                .collect();
            self.write_repair_record(&record)?;
            let _ = fs::remove_file(self.root.join("index.cache"));
            self.forget_index_cache();
        }
        report.unrepairable = unrepairable
            .into_iter()
            .map(|(id, reason)| Unrepairable { id, reason })
            .collect();
        Ok(report)
    }

    /// The blobs `m` needs that its intact layers do not hold: the entry chunks that
    /// list a damaged layer, and the contents of their entries. `Err` when an entry chunk
    /// cannot be read from anywhere (what it names is then unknown).
    fn needed_blobs(
        &self,
        m: &Manifest,
        damaged: &BTreeSet<BlobId>,
        checks: &BTreeMap<BlobId, LayerCheck>,
        g: &mut Gatherer<'_>,
    ) -> Result<std::result::Result<Wanted, String>> {
        let mut intact = BlobMap::default();
        for l in m.layers.iter().filter(|l| !damaged.contains(l)) {
            if let Some(ix) = checks.get(l).and_then(|c| c.index.clone()) {
                intact.add(ix);
            }
        }
        let damaged_idx: BTreeSet<u32> = m
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| damaged.contains(l))
            .map(|(i, _)| i as u32)
            .collect();
        let has = |b: &BlobId, kind: BlobKind, len: Option<u64>| {
            intact
                .get_all(b)
                .iter()
                .any(|(_, e)| e.kind == kind && len.is_none_or(|l| l == e.len))
        };
        let mut need = BTreeMap::new();
        for t in &m.trees {
            for c in &t.chunks {
                if !c.layers.iter().any(|i| damaged_idx.contains(i)) {
                    continue;
                }
                if !has(&c.blob, BlobKind::Chunk, None) {
                    need.insert(c.blob, (BlobKind::Chunk, None));
                }
                let mut out = Out::Memory(Vec::new());
                if g.fetch(&c.blob, BlobKind::Chunk, None, &mut out)?.is_none() {
                    return Ok(Err(format!(
                        "entry chunk {} (tree {:?}) has no intact copy, so what it names is unknown",
                        c.blob, t.name
                    )));
                }
                let Out::Memory(data) = out else {
                    unreachable!("memory")
                };
                let records = match decode_chunk(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        return Ok(Err(format!("entry chunk {} does not decode: {e}", c.blob)));
                    }
                };
                for r in records {
                    let Some(content) = r.content else { continue };
                    if !r.chunked {
                        if !has(&content, BlobKind::Content, Some(r.size)) {
                            need.insert(content, (BlobKind::Content, Some(r.size)));
                        }
                        continue;
                    }
                    // A chunked file: its map (of unknown length) and the chunks it lists.
                    if !has(&content, BlobKind::Content, None) {
                        need.insert(content, (BlobKind::Content, None));
                    }
                    let mut out = Out::Memory(Vec::new());
                    if g.fetch(&content, BlobKind::Content, None, &mut out)?
                        .is_none()
                    {
                        return Ok(Err(format!(
                            "the chunk map of {:?} (tree {:?}) has no intact copy, so its chunks are unknown",
                            String::from_utf8_lossy(&r.path),
                            t.name
                        )));
                    }
                    let Out::Memory(data) = out else {
                        unreachable!("memory")
                    };
                    let map = match decode_map(&data, r.size) {
                        Ok(m) => m,
                        Err(e) => {
                            return Ok(Err(format!("chunk map {content} does not decode: {e}")));
                        }
                    };
                    for (id, len) in map.chunks {
                        if !has(&id, BlobKind::Content, Some(len)) {
                            need.insert(id, (BlobKind::Content, Some(len)));
                            g.chunked_sizes.insert(r.size);
                        }
                    }
                }
            }
        }
        Ok(Ok(need))
    }

    /// Writes `data` as `rel` (tmp, fsync, rename), first moving a file already there
    /// to the quarantine.
    fn replace_file(&self, rel: &str, data: &[u8]) -> Result<()> {
        let tmp = self
            .tmp_dir
            .join(format!("repair-{}.tmp", std::process::id()));
        crate::layer::write_file_synced(&tmp, data)?;
        if fs::symlink_metadata(self.root.join(rel)).is_ok() {
            self.quarantine(rel)?;
        }
        let dest = self.root.join(rel);
        fs::rename(&tmp, &dest).io("rename", &dest)?;
        if let Some(dir) = dest.parent() {
            crate::layer::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Copies a verified source layer into `layers/` (checked again as copied).
    fn replace_layer_from(&self, id: &BlobId, src: &Path, present: bool) -> Result<()> {
        let tmp = self
            .tmp_dir
            .join(format!("repair-{}.layer", std::process::id()));
        fs::copy(src, &tmp).io("copy", src)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .io("fsync", &tmp)?;
        let size = fs::metadata(&tmp).io("stat", &tmp)?.len();
        let tmp_name = format!("{}.tar.zst", id.to_hex());
        // Check the copy where it is: verify_layer wants `<dir>/<hex>.tar.zst`.
        let check_dir = self.tmp_dir.join(format!("repair-{}", std::process::id()));
        fs::create_dir_all(&check_dir).io("create", &check_dir)?;
        let checked = check_dir.join(&tmp_name);
        fs::rename(&tmp, &checked).io("rename", &checked)?;
        let ok = crate::layer::verify_layer(&check_dir, id, size);
        if let Err(e) = ok {
            let _ = fs::remove_dir_all(&check_dir);
            return Err(e);
        }
        let rel = layer_rel(id);
        if present {
            self.quarantine(&rel)?;
        }
        let dest = self.root.join(&rel);
        fs::rename(&checked, &dest).io("rename", &dest)?;
        let _ = fs::remove_dir_all(&check_dir);
        crate::layer::sync_dir(&self.layers_dir)?;
        Ok(())
    }

    /// Moves `rel` (a store file) into `damaged/`, under a name not taken yet; returns it.
    fn quarantine(&self, rel: &str) -> Result<String> {
        let base = format!("{QUARANTINE_DIR}/{rel}");
        let dir = self
            .root
            .join(&base)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.join(QUARANTINE_DIR));
        fs::create_dir_all(&dir).io("create", &dir)?;
        let mut name = base.clone();
        let mut n = 0;
        while fs::symlink_metadata(self.root.join(&name)).is_ok() {
            n += 1;
            name = format!("{base}.{n}");
        }
        let (from, to) = (self.root.join(rel), self.root.join(&name));
        fs::rename(&from, &to).io("quarantine", &from)?;
        crate::layer::sync_dir(&dir)?;
        if let Some(p) = from.parent() {
            crate::layer::sync_dir(p)?;
        }
        Ok(name)
    }

    fn write_manifest_atomic(&self, m: &mut Manifest) -> Result<()> {
        let bytes = m.encode();
        let tmp = self.tmp_dir.join(format!(
            "repair-{}-{}.manifest",
            std::process::id(),
            m.id.as_str()
        ));
        crate::layer::write_file_synced(&tmp, &bytes)?;
        let dest = self.manifest_path(&m.id);
        fs::rename(&tmp, &dest).io("rename", &dest)
    }

    fn write_repair_record(&self, unrepairable: &BTreeMap<String, String>) -> Result<()> {
        let path = self.root.join(REPAIR_RECORD);
        if unrepairable.is_empty() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CheckpointError::Io {
                        op: "remove",
                        path,
                        source: e,
                    });
                }
            }
            return Ok(());
        }
        let record = RepairRecord {
            format: REPAIR_FORMAT.into(),
            version: 1,
            at_ms: crate::limits::now_ns() / 1_000_000,
            unrepairable: unrepairable.clone(),
        };
        let dir = self.root.join(QUARANTINE_DIR);
        fs::create_dir_all(&dir).io("create", &dir)?;
        let tmp = self
            .tmp_dir
            .join(format!("repair-{}.json", std::process::id()));
        crate::layer::write_file_synced(
            &tmp,
            &serde_json::to_vec_pretty(&record).expect("serializes"),
        )?;
        fs::rename(&tmp, &path).io("rename", &path)?;
        crate::layer::sync_dir(&dir)
    }
}

/// `m` with the `damaged` layers dropped and `new` layers listed instead: every chunk
/// that listed a damaged layer lists all the new ones.
fn relayer(m: &Manifest, damaged: &BTreeSet<BlobId>, new: &[BlobId]) -> Manifest {
    let mut out = m.clone();
    let mut layers = Vec::new();
    let mut remap: HashMap<u32, u32> = HashMap::new();
    for (i, l) in m.layers.iter().enumerate() {
        if !damaged.contains(l) {
            remap.insert(i as u32, layers.len() as u32);
            layers.push(*l);
        }
    }
    let mut new_idx = Vec::new();
    for l in new {
        match layers.iter().position(|x| x == l) {
            Some(i) => new_idx.push(i as u32),
            None => {
                new_idx.push(layers.len() as u32);
                layers.push(*l);
            }
        }
    }
    for t in &mut out.trees {
        for c in &mut t.chunks {
            let touched = c.layers.iter().any(|i| !remap.contains_key(i));
            let mut set: BTreeSet<u32> = c
                .layers
                .iter()
                .filter_map(|i| remap.get(i).copied())
                .collect();
            if touched {
                set.extend(new_idx.iter().copied());
            }
            c.layers = set.into_iter().collect();
        }
    }
    out.layers = layers;
    out
}
