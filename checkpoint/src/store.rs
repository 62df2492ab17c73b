//! The store directory: opening it, its lock, reading manifests, and locating blobs.
//!
//! Layout (docs/formats/checkpoint.md): `store.json` (format marker), `lock` (flock),
//! `manifests/<id>.manifest`, `layers/<blake3>.tar.zst` (index in a trailer), `tmp/`.
//!
//! Promises: a checkpoint exists exactly when its manifest file exists and verifies;
//! `create` and `prune` hold the lock exclusively, every reader of layers holds it shared,
//! so prune never deletes a layer under a reader or a writer. Waiting for the lock is
//! bounded by `lock_wait` (default 60 s, `with_lock_wait`); after that the call fails with
//! E622, naming the holder when `/proc/locks` does (`lock_holder.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Entry;
use crate::codec::{BlobId, unescape_path};
use crate::entry::RawKind;
use crate::entry::{Record, bytes_path, decode_chunk, rel_bytes};
use crate::error::{CheckpointError, IoContext, Result};
use crate::filemap::{FileMap, decode_map};
use crate::layer::{
    BlobKind, FrameScratch, IndexEntry, LayerIndex, LayerReader, RawIndex, WHOLE_FRAME_MAX,
    read_index,
};
use crate::limits::{CHUNK_BLOB_MAX, Deadline, Limits};
use crate::manifest::{CheckpointId, ChunkRef, Manifest, TreeManifest};
use crate::mindex::{BlobMap, CachedLayer, LayerStat, MergedIndex};

/// How long a store waits for its lock unless told otherwise (`with_lock_wait`).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

const STORE_FORMAT: &str = "parhelia-checkpoint-store";
/// 2: files of at least 256 KiB may be stored in chunks (chunk maps, entry chunk format 2).
/// Version 1 stores are read as they are and marked 2 by their next `create`.
const STORE_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct StoreMarker {
    format: String,
    version: u32,
}

/// One session's checkpoint store (a directory). Cheap to share between threads.
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) layers_dir: PathBuf,
    pub(crate) manifests_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    lock_wait: Duration,
    pub(crate) threads: usize,
    /// The blob map over every complete layer, refreshed incrementally under the lock.
    index_cache: Mutex<Option<IndexCache>>,
    pub(crate) fail_point: Mutex<Option<String>>,
    /// Compressed bytes after which `create` starts a new layer (`LAYER_TARGET`).
    pub(crate) layer_target: u64,
    /// Caps on reading checkpoints (restore, verify, entries, read_file, diff).
    pub(crate) limits: Limits,
}

/// What this process knows about the store's blob index: the layers present when it was
/// loaded (with size and mtime), and the map over them.
struct IndexCache {
    present: BTreeMap<BlobId, LayerStat>,
    map: BlobMap,
    /// Present layers that the merged cache does not cover and whose index is unreadable.
    unreadable: Vec<BlobId>,
}

/// A layer file's identity for the merged cache: size and mtime (ns).
fn layer_stat(m: &fs::Metadata) -> LayerStat {
    (
        m.len(),
        m.mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
    )
}

/// Layers outside the merged cache that `create` reads from their own trailers before it
/// rewrites the cache.
const MAX_OVERLAY_LAYERS: usize = 16;

/// A list entry: what `parhelia checkpoint list` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: CheckpointId,
    pub parent: Option<CheckpointId>,
    pub created_at_ms: i64,
    pub trigger: String,
    pub message: Option<String>,
    /// Regular files across all trees and the sum of their sizes.
    pub file_count: u64,
    pub total_bytes: u64,
    /// Uncompressed bytes of file content this checkpoint stored (content the store lacked).
    pub new_bytes: u64,
    pub metadata: serde_json::Value,
    /// What making it cost (files hashed, bytes written, layers), from its manifest.
    pub stats: crate::CreateStats,
}

impl Summary {
    pub(crate) fn of(m: &Manifest) -> Summary {
        Summary {
            id: m.id.clone(),
            parent: m.parent.clone(),
            created_at_ms: m.created_at_ms,
            trigger: m.trigger.clone(),
            message: m.message.clone(),
            file_count: m.file_count(),
            total_bytes: m.total_bytes(),
            new_bytes: m.stats.new_bytes,
            metadata: m.metadata.clone(),
            stats: m.stats.clone(),
        }
    }
}

/// A test's hook on phase marks.
#[cfg(test)]
pub(crate) type MarkHook = Box<dyn FnMut(&str)>;

#[cfg(test)]
thread_local! {
    /// Called at each phase mark of an operation on this thread (tests use it to move the
    /// clock at a chosen phase).
    pub(crate) static MARK_HOOK: std::cell::RefCell<Option<MarkHook>> =
        const { std::cell::RefCell::new(None) };
}

/// Manifests larger than this are refused (E620) before they are read: a real one is a
/// few hundred bytes per entry chunk (10 million entries: a few MiB).
const MANIFEST_MAX: u64 = 256 << 20;

/// Phase timings on stderr when `PARHELIA_CHECKPOINT_TRACE` is set (for profiling the
/// benchmark; never on by default).
pub(crate) struct PhaseTrace {
    start: Option<Instant>,
}

impl PhaseTrace {
    pub fn new() -> Self {
        PhaseTrace {
            start: std::env::var_os("PARHELIA_CHECKPOINT_TRACE").map(|_| Instant::now()),
        }
    }

    pub fn mark(&self, what: &str) {
        #[cfg(test)]
        MARK_HOOK.with(|h| {
            if let Some(hook) = h.borrow_mut().as_mut() {
                hook(what);
            }
        });
        if let Some(s) = self.start {
            // Minor page faults so far: fresh memory costs as much as computation here.
            let faults = fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|st| {
                    let rest = st.rsplit(')').next()?.to_string();
                    rest.split_whitespace().nth(7).map(str::to_string)
                })
                .unwrap_or_default();
            eprintln!(
                "parhelia-checkpoint: {:>8.2} ms {what} (minflt {faults})",
                s.elapsed().as_secs_f64() * 1000.0
            );
        }
    }

    /// A detail line (computed only when tracing).
    pub fn note(&self, what: impl FnOnce() -> String) {
        if self.start.is_some() {
            eprintln!("parhelia-checkpoint:             {}", what());
        }
    }
}

/// A held store lock; released on drop.
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens the store at `root`, creating it if missing.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).io("create store", root)?;
        let marker_path = root.join("store.json");
        let mut created = false;
        match crate::layer::read_small_store_file(&marker_path, "store.json", 64 << 10) {
            Ok(data) => {
                let marker: StoreMarker = serde_json::from_slice(&data).map_err(|e| {
                    CheckpointError::corrupt(format!("store.json is unreadable: {e}"))
                })?;
                if marker.format != STORE_FORMAT
                    || marker.version == 0
                    || marker.version > STORE_VERSION
                {
                    return Err(CheckpointError::corrupt(format!(
                        "store.json names format {} version {}, this reader knows {STORE_FORMAT} 1..={STORE_VERSION}",
                        marker.format, marker.version
                    )));
                }
            }
            Err(CheckpointError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let marker = StoreMarker {
                    format: STORE_FORMAT.into(),
                    version: STORE_VERSION,
                };
                let tmp = root.join(format!("store.json.{}.tmp", std::process::id()));
                crate::layer::write_file_synced(
                    &tmp,
                    &serde_json::to_vec_pretty(&marker).expect("serializes"),
                )?;
                fs::rename(&tmp, &marker_path).io("rename", &marker_path)?;
                created = true;
            }
            Err(e) => return Err(e),
        }
        let store = Store {
            root: root.to_path_buf(),
            layers_dir: root.join("layers"),
            manifests_dir: root.join("manifests"),
            tmp_dir: root.join("tmp"),
            lock_wait: DEFAULT_LOCK_WAIT,
            // Two workers per core: hashing workers block on reads (cold caches, network
            // volumes) and restore workers on file creation, so one per core leaves cores idle.
            threads: std::thread::available_parallelism()
                .map(|n| n.get() * 2)
                .unwrap_or(4)
                .clamp(2, 16),
            index_cache: Mutex::new(None),
            fail_point: Mutex::new(None),
            layer_target: crate::layer::LAYER_TARGET,
            limits: Limits::default(),
        };
        for d in [&store.layers_dir, &store.manifests_dir, &store.tmp_dir] {
            fs::create_dir_all(d).io("create store directory", d)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("lock"))
            .io("create lock file", root)?;
        if created {
            crate::layer::sync_dir(root)?;
        }
        Ok(store)
    }

    /// How long `create`, `prune` and readers of layers wait for the store lock before E622
    /// (`Duration::ZERO`: fail at once; default [`DEFAULT_LOCK_WAIT`]). Callers take it
    /// from `checkpoint.lock_wait_seconds`.
    pub fn with_lock_wait(mut self, wait: Duration) -> Store {
        self.lock_wait = wait;
        self
    }

    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// Worker threads for hashing, compression and restore (default: two per available core).
    pub fn with_threads(mut self, threads: usize) -> Store {
        self.threads = threads.max(1);
        self
    }

    /// The caps on reading checkpoints (see `Limits`; exceeding one is E624).
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Test hook: the layer size at which `create` starts a new layer (default 128 MiB),
    /// so tests can make checkpoints of many layers cheaply.
    #[doc(hidden)]
    pub fn with_layer_target(mut self, bytes: u64) -> Store {
        self.layer_target = bytes.max(1);
        self
    }

    /// Test hook: makes `create` fail at a named point, simulating a crash there. Both
    /// "before_manifest" and "before_manifest_rename" stop after the new layers are durable
    /// and the manifest's temp file is written, before the rename that commits it.
    #[doc(hidden)]
    pub fn inject_failure(&self, point: Option<&str>) {
        *self.fail_point.lock().expect("poisoned") = point.map(str::to_string);
    }

    pub(crate) fn check_fail_point(&self, point: &str) -> Result<()> {
        if self.fail_point.lock().expect("poisoned").as_deref() == Some(point) {
            return Err(CheckpointError::Io {
                op: "simulated crash at",
                path: PathBuf::from(point),
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .io("open lock file", &path)?;
        let start = Instant::now();
        loop {
            let r = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match r {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if start.elapsed() >= self.lock_wait {
                        return Err(CheckpointError::Locked {
                            root: self.root.clone(),
                            holder: crate::lock_holder::describe(&file),
                            waited_ms: start.elapsed().as_millis() as u64,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(CheckpointError::Io {
                        op: "lock",
                        path,
                        source: e,
                    });
                }
            }
        }
    }

    pub(crate) fn manifest_path(&self, id: &CheckpointId) -> PathBuf {
        self.manifests_dir.join(format!("{}.manifest", id.as_str()))
    }

    /// Checkpoint ids with a manifest file, oldest first (not yet verified).
    pub(crate) fn manifest_ids(&self) -> Result<Vec<CheckpointId>> {
        let mut ids = Vec::new();
        for e in fs::read_dir(&self.manifests_dir).io("list", &self.manifests_dir)? {
            let e = e.io("list", &self.manifests_dir)?;
            let name = e.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".manifest")) else {
                continue;
            };
            if let Ok(id) = CheckpointId::parse(stem) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Loads and checksum-verifies a manifest (E205 if missing, E620 if damaged).
    pub fn load(&self, id: &CheckpointId) -> Result<Manifest> {
        let id = CheckpointId::parse(id.as_str())?;
        let path = self.manifest_path(&id);
        let data = match crate::layer::read_small_store_file(&path, "manifest", MANIFEST_MAX) {
            Ok(d) => d,
            Err(CheckpointError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(CheckpointError::NotFound { id: id.0 });
            }
            Err(e) => return Err(e),
        };
        let m = Manifest::decode(&data)?;
        if m.id != id {
            return Err(CheckpointError::corrupt(format!(
                "manifest {} holds checkpoint {}",
                id, m.id
            )));
        }
        Ok(m)
    }

    /// Every readable checkpoint, oldest first. Manifests that fail their checksum are
    /// skipped here (`load`/`verify` report them with E620).
    pub fn list(&self) -> Result<Vec<Summary>> {
        let mut out = Vec::new();
        for id in self.manifest_ids()? {
            match self.load(&id) {
                Ok(m) => out.push(Summary::of(&m)),
                Err(CheckpointError::Corrupt { .. } | CheckpointError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The newest readable checkpoint.
    pub fn latest(&self) -> Result<Option<Summary>> {
        Ok(self.latest_manifest()?.map(|m| Summary::of(&m)))
    }

    pub(crate) fn latest_manifest(&self) -> Result<Option<Manifest>> {
        for id in self.manifest_ids()?.iter().rev() {
            match self.load(id) {
                Ok(m) => return Ok(Some(m)),
                Err(CheckpointError::Corrupt { .. } | CheckpointError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Layer files present in `layers/` (complete: they are renamed in only once durable).
    pub(crate) fn complete_layers(&self) -> Result<BTreeSet<BlobId>> {
        Ok(self.present_layers()?.into_keys().collect())
    }

    /// Layer files present in `layers/`, with their size and mtime.
    pub(crate) fn present_layers(&self) -> Result<BTreeMap<BlobId, LayerStat>> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(&self.layers_dir).io("list", &self.layers_dir)? {
            let e = e.io("list", &self.layers_dir)?;
            let name = e.file_name();
            if let Some(h) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".tar.zst"))
                .and_then(BlobId::from_hex)
            {
                match e.metadata() {
                    Ok(m) if m.is_file() => {
                        out.insert(h, layer_stat(&m));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(CheckpointError::Io {
                            op: "stat",
                            path: self.layers_dir.join(name),
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The blob map over every complete layer (for dedup in `create`): the merged index
    /// cache for the layers it covers, plus the own indexes of layers it does not (new,
    /// changed, or all of them when there is no usable cache). Layers whose index fails its
    /// checksum are left out, so their content is simply stored again.
    pub(crate) fn global_index(&self) -> Result<BlobMap> {
        let present = self.present_layers()?;
        let mut cache = self.index_cache.lock().expect("index cache poisoned");
        if let Some(c) = cache.as_ref()
            && c.present == present
        {
            return Ok(c.map.clone());
        }
        let merged = MergedIndex::open(&self.root, &self.layers_dir, &present).map(Arc::new);
        let covered: BTreeSet<BlobId> = merged
            .iter()
            .flat_map(|m| m.usable_layers().map(|l| l.id))
            .collect();
        let missing: Vec<BlobId> = present
            .keys()
            .filter(|l| !covered.contains(l))
            .copied()
            .collect();
        // Reading and checksumming the indexes is most of a small checkpoint's fixed cost
        // when the cache does not cover them; spread it over the worker threads.
        let per_thread = missing.len().div_ceil(self.threads).max(1);
        let loaded: Vec<Vec<(BlobId, Option<Arc<RawIndex>>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = missing
                .chunks(per_thread)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|l| (*l, read_index(&self.layers_dir, l).ok()))
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("index loader panicked"))
                .collect()
        });
        let mut overlays = Vec::new();
        let mut unreadable = Vec::new();
        for (l, ix) in loaded.into_iter().flatten() {
            match ix {
                Some(ix) => overlays.push(ix),
                None => unreadable.push(l),
            }
        }
        let map = BlobMap::new(merged, overlays);
        *cache = Some(IndexCache {
            present,
            map: map.clone(),
            unreadable,
        });
        Ok(map)
    }

    /// Adds layers this process just wrote to the in-memory index state.
    pub(crate) fn remember_layers(&self, new_layers: &[LayerIndex]) {
        let mut cache = self.index_cache.lock().expect("index cache poisoned");
        let Some(c) = cache.as_mut() else { return };
        for l in new_layers {
            let path = crate::layer::layer_path(&self.layers_dir, &l.layer);
            let Ok(m) = fs::metadata(&path) else {
                // Cannot describe it: start over from the directory next time.
                *cache = None;
                return;
            };
            let stat = layer_stat(&m);
            let known = c.present.insert(l.layer, stat).is_some();
            if !known {
                c.map.add(l.to_raw());
            }
        }
    }

    pub(crate) fn forget_index_cache(&self) {
        *self.index_cache.lock().expect("index cache poisoned") = None;
    }

    /// Rewrites `index.cache` from the in-memory index state when it is missing, stale or
    /// damaged, or when the layers it does not cover have grown (more than
    /// `MAX_OVERLAY_LAYERS` layers, or more entries than a quarter of the cache's). Best
    /// effort: the cache is an optimisation, and a failure leaves the previous file, which
    /// is still checked against `layers/` on every open.
    pub(crate) fn refresh_index_cache(&self) {
        let mut cache = self.index_cache.lock().expect("index cache poisoned");
        let Some(c) = cache.as_mut() else { return };
        let merged = c.map.merged().cloned();
        let overlay_entries: u64 = c
            .map
            .indexes()
            .iter()
            .map(|ix| ix.entry_count() as u64)
            .sum();
        let cached = merged.as_ref().map_or(0, |m| m.entry_count());
        let needed = merged.as_ref().is_none_or(|m| m.stale())
            || !c.unreadable.is_empty()
            || c.map.indexes().len() > MAX_OVERLAY_LAYERS
            || overlay_entries > (cached / 4).max(4096);
        if !needed {
            return;
        }
        let mut layers = Vec::new();
        let mut entries = Vec::new();
        if let Some(m) = &merged {
            match m.usable_entries() {
                Some(es) => {
                    layers.extend(m.usable_layers().copied());
                    entries = es;
                }
                None => {
                    for l in m.usable_layers() {
                        match (!l.unreadable)
                            .then(|| read_index(&self.layers_dir, &l.id).ok())
                            .flatten()
                        {
                            Some(ix) => {
                                layers.push(*l);
                                entries.extend(ix.entries().map(|e| (l.id, e)));
                            }
                            None => layers.push(CachedLayer {
                                unreadable: true,
                                ..*l
                            }),
                        }
                    }
                }
            }
        }
        for ix in c.map.indexes() {
            let Some(&(size, mtime_ns)) = c.present.get(&ix.layer) else {
                continue;
            };
            layers.push(CachedLayer {
                id: ix.layer,
                file_size: size,
                mtime_ns,
                data_size: ix.data_size(),
                unreadable: false,
            });
            entries.extend(ix.entries().map(|e| (ix.layer, e)));
        }
        for l in &c.unreadable {
            if let Some(&(size, mtime_ns)) = c.present.get(l) {
                layers.push(CachedLayer {
                    id: *l,
                    file_size: size,
                    mtime_ns,
                    data_size: 0,
                    unreadable: true,
                });
            }
        }
        if crate::mindex::write_cache(&self.root, &self.tmp_dir, layers, entries).is_err() {
            return;
        }
        if let Some(m) = MergedIndex::open(&self.root, &self.layers_dir, &c.present) {
            c.map = BlobMap::new(Some(Arc::new(m)), Vec::new());
            c.unreadable.clear();
        }
    }

    /// The blob map over the given layers of a manifest, read from their index files.
    pub(crate) fn blob_map_for(&self, layers: &[BlobId]) -> Result<BlobMap> {
        let mut map = BlobMap::default();
        for l in layers {
            let index = read_index(&self.layers_dir, l).map_err(|e| match e {
                CheckpointError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    CheckpointError::corrupt(format!("layer {} is missing", l.to_hex()))
                }
                e => e,
            })?;
            map.add(index);
        }
        Ok(map)
    }

    /// The layers one tree of a manifest needs.
    pub(crate) fn tree_layers(m: &Manifest, tree: &TreeManifest) -> Vec<BlobId> {
        let set: BTreeSet<u32> = tree
            .chunks
            .iter()
            .flat_map(|c| c.layers.iter().copied())
            .collect();
        set.into_iter().map(|i| m.layers[i as usize]).collect()
    }

    /// Decoded records of one tree, with every chunk checked against its ref.
    pub(crate) fn tree_records(
        &self,
        tree: &TreeManifest,
        loader: &mut ChunkLoader<'_>,
    ) -> Result<Vec<Record>> {
        // `entry_count` is the sum of the chunks' counts (checked by `Manifest::decode`),
        // and each loaded chunk must hold exactly its count: the capacity is bounded by the
        // entry limit, never taken from the file as is.
        self.check_entry_count(tree)?;
        let mut out = Vec::with_capacity(tree.entry_count.min(1 << 20) as usize);
        for c in &tree.chunks {
            out.extend(loader.load(c)?);
        }
        Ok(out)
    }

    /// E624 if a tree declares more entries than `Limits::max_entries`.
    pub(crate) fn check_entry_count(&self, tree: &TreeManifest) -> Result<()> {
        if tree.entry_count > self.limits.max_entries {
            return Err(CheckpointError::limit(
                format!("tree {:?} has {} entries", tree.name, tree.entry_count),
                self.limits.max_entries,
            ));
        }
        Ok(())
    }

    /// Everything about a tree's records that a restore would trip on and that `Limits`
    /// caps: path and link lengths, path components, and the logical bytes of its files.
    pub(crate) fn check_record_limits(
        &self,
        tree: &TreeManifest,
        records: &[Record],
    ) -> Result<()> {
        let l = &self.limits;
        let mut bytes = 0u64;
        for r in records {
            crate::limits::check_path_len(l, &r.path, "path")?;
            crate::limits::check_components(&r.path)?;
            crate::limits::check_path_len(l, &r.link, "symlink target")?;
            if r.kind == crate::entry::RawKind::File {
                bytes = bytes.saturating_add(r.size);
            }
        }
        if bytes > l.max_bytes {
            return Err(CheckpointError::limit(
                format!("tree {:?} holds {bytes} bytes of file content", tree.name),
                l.max_bytes,
            ));
        }
        Ok(())
    }

    fn find_tree<'m>(m: &'m Manifest, tree: &str) -> Result<&'m TreeManifest> {
        m.tree(tree)
            .ok_or_else(|| CheckpointError::NotInCheckpoint {
                id: m.id.0.clone(),
                what: format!("tree {tree:?}"),
            })
    }

    /// Every entry of one tree of a checkpoint, sorted by path.
    pub fn entries(&self, id: &CheckpointId, tree: &str) -> Result<Vec<Entry>> {
        let _lock = self.lock(false)?;
        let m = self.load(id)?;
        let t = Self::find_tree(&m, tree)?;
        self.check_entry_count(t)?;
        let map = self.blob_map_for(&Self::tree_layers(&m, t))?;
        let mut loader = ChunkLoader::new(&self.layers_dir, &map);
        Ok(self
            .tree_records(t, &mut loader)?
            .iter()
            .map(Record::to_entry)
            .collect())
    }

    /// Checks a checkpoint end to end — everything a restore of any of its trees would
    /// trip on: the manifest's checksum, every layer it needs (whole-file blake3 and size),
    /// every layer index, every entry chunk, that no entry is unsafe to restore, the
    /// `Limits` (entries, bytes, path lengths), and every file's content (decompressed and
    /// hashed, its tar member a regular file of the indexed size).
    pub fn verify(&self, id: &CheckpointId) -> Result<()> {
        let _lock = self.lock(false)?;
        let m = self.load(id)?;
        let deadline = Deadline::new(self.limits.max_time);
        for t in &m.trees {
            self.prepare_tree_traced(&m, t, &PhaseTrace::new(), deadline)?;
        }
        Ok(())
    }

    /// Verifies what restoring one tree needs (everything `verify` checks) and returns its
    /// records and blob map.
    pub(crate) fn prepare_tree_traced(
        &self,
        m: &Manifest,
        t: &TreeManifest,
        trace: &PhaseTrace,
        deadline: Deadline,
    ) -> Result<Prepared> {
        self.check_entry_count(t)?;
        let layers = Self::tree_layers(m, t);
        let map = self.blob_map_for(&layers)?;
        trace.mark("layer indexes read");
        // Whole-file checksums, one layer per worker (each is one sequential hash).
        let all: Vec<(BlobId, u64)> = map.layers().collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = (0..self.threads.min(all.len()))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((l, size)) = all.get(i) else {
                                return Ok(());
                            };
                            crate::layer::verify_layer(&self.layers_dir, l, *size)?;
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("layer verifier panicked"))
        })?;
        trace.mark("layers verified");
        let mut loader = ChunkLoader::new(&self.layers_dir, &map);
        let records = self.tree_records(t, &mut loader)?;
        trace.mark("entry chunks read");
        crate::entry::validate_tree(&records)?;
        self.check_record_limits(t, &records)?;
        trace.mark("entries validated");
        deadline.check("verifying")?;
        // Every copy of each content blob that matches its entry (kind and size), in
        // lookup order; `verify_contents` keeps the first that hashes right.
        let mut seen = std::collections::HashSet::new();
        let mut contents: Vec<(BlobId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
        let mut maps: FileMaps = HashMap::new();
        for r in &records {
            let Some(c) = &r.content else { continue };
            let shown = || String::from_utf8_lossy(&r.path).into_owned();
            // (blob, length) of every blob this file's restore reads.
            let mut parts: Vec<(BlobId, u64)> = Vec::new();
            if r.chunked {
                if !maps.contains_key(c) {
                    // The map is read and hashed here; its chunks are checked below.
                    let m = loader.read_map(c, r.size).map_err(|e| match e {
                        CheckpointError::Corrupt { what } => {
                            CheckpointError::corrupt(format!("{what} (file {:?})", shown()))
                        }
                        e => e,
                    })?;
                    deadline.check("verifying")?;
                    parts.extend(m.chunks.iter().copied());
                    maps.insert(*c, m);
                }
            } else {
                parts.push((*c, r.size));
            }
            for (blob, len) in parts {
                if !seen.insert(blob) {
                    continue;
                }
                let all = map.get_all(&blob);
                if all.is_empty() {
                    return Err(CheckpointError::corrupt(format!(
                        "content of {:?} is missing from the store",
                        shown()
                    )));
                }
                let cands: Vec<(BlobId, IndexEntry)> = all
                    .into_iter()
                    .filter(|(_, e)| e.kind == BlobKind::Content && e.len == len)
                    .collect();
                if cands.is_empty() {
                    return Err(CheckpointError::corrupt(format!(
                        "content of {:?} does not match its index entry",
                        shown()
                    )));
                }
                contents.push((blob, cands));
            }
        }
        contents.sort_unstable_by_key(|(b, _)| *b);
        let located =
            crate::verify::verify_contents(&contents, &self.layers_dir, self.threads, deadline)?;
        trace.mark("contents verified");
        Ok((records, map, located, maps))
    }

    /// The content of one file (or a symlink's target) in a checkpoint.
    pub fn read_file(&self, id: &CheckpointId, tree: &str, path: &Path) -> Result<Vec<u8>> {
        let _lock = self.lock(false)?;
        let m = self.load(id)?;
        self.read_file_in(&m, tree, path)
    }

    pub(crate) fn read_file_in(&self, m: &Manifest, tree: &str, path: &Path) -> Result<Vec<u8>> {
        let max = self.limits.max_read_bytes;
        match self.read_file_limited(m, tree, path, max)? {
            FileRead::Data(d) => Ok(d),
            FileRead::TooLarge(size) => Err(CheckpointError::limit(
                format!(
                    "{} is {size} bytes, too large to read into memory",
                    path.display()
                ),
                max,
            )),
        }
    }

    /// The content of one file (or a symlink's target), unless it is larger than `max`
    /// bytes (`TooLarge`, nothing read). Entries of other kinds (a hostile store's hard
    /// links, devices, …) are E621.
    pub(crate) fn read_file_limited(
        &self,
        m: &Manifest,
        tree: &str,
        path: &Path,
        max: u64,
    ) -> Result<FileRead> {
        let t = Self::find_tree(m, tree)?;
        let rel = rel_bytes(path)?;
        let not_found = || CheckpointError::NotInCheckpoint {
            id: m.id.0.clone(),
            what: format!("{}:{}", tree, path.display()),
        };
        let map = self.blob_map_for(&Self::tree_layers(m, t))?;
        let mut loader = ChunkLoader::new(&self.layers_dir, &map).with_max_content(max);
        let Some(ci) = covering_chunk(&t.chunks, &rel)? else {
            return Err(not_found());
        };
        let records = loader.load(&t.chunks[ci])?;
        let r = records
            .iter()
            .find(|r| r.path == rel)
            .ok_or_else(not_found)?;
        let shown = || bytes_path(&rel).display().to_string();
        match (r.kind, &r.content) {
            (RawKind::File, Some(_)) => {
                if r.size > max {
                    return Ok(FileRead::TooLarge(r.size));
                }
                let data = loader.read_file_content(r)?;
                if data.len() as u64 != r.size {
                    return Err(CheckpointError::corrupt(format!(
                        "content of {} does not match its entry",
                        shown()
                    )));
                }
                Ok(FileRead::Data(data))
            }
            (RawKind::Symlink, _) => Ok(FileRead::Data(r.link.clone())),
            (RawKind::Dir, _) => Err(CheckpointError::invalid(format!(
                "{} is a directory",
                shown()
            ))),
            (RawKind::File, None) => Err(CheckpointError::corrupt(format!(
                "file {} has no content",
                shown()
            ))),
            (k, _) => Err(CheckpointError::unsafe_entry(
                shown(),
                format!("entry of kind {k:?} cannot be read"),
            )),
        }
    }
}

/// The chunk maps of a tree's chunked files, by map id.
pub(crate) type FileMaps = HashMap<BlobId, FileMap>;

/// A tree checked end to end: its records, blob map, the checked copy of every content
/// blob (chunks included), and its chunk maps.
pub(crate) type Prepared = (Vec<Record>, BlobMap, crate::verify::Located, FileMaps);

/// What `read_file_limited` found.
pub(crate) enum FileRead {
    Data(Vec<u8>),
    /// The file's size; larger than the caller's limit, so not read.
    TooLarge(u64),
}

/// Index of the chunk whose range covers `key` (the last chunk whose first path ≤ key).
pub(crate) fn covering_chunk(chunks: &[ChunkRef], key: &[u8]) -> Result<Option<usize>> {
    if chunks.is_empty() {
        return Ok(None);
    }
    let firsts: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| unescape_path(&c.first))
        .collect::<Result<_>>()?;
    let n = firsts.partition_point(|f| f.as_slice() <= key);
    Ok(Some(n.saturating_sub(1)))
}

/// Loads chunk blobs (and file contents) through a blob map, keeping layers open.
pub(crate) struct ChunkLoader<'a> {
    layers_dir: &'a Path,
    map: &'a BlobMap,
    readers: HashMap<BlobId, LayerReader>,
    scratch: FrameScratch,
    /// Chunks decoded so far (for tracing).
    pub decoded: usize,
    /// The largest file content `read_content` reads into memory (E624 beyond).
    max_content: u64,
}

impl<'a> ChunkLoader<'a> {
    pub fn new(layers_dir: &'a Path, map: &'a BlobMap) -> Self {
        ChunkLoader {
            layers_dir,
            map,
            readers: HashMap::new(),
            scratch: FrameScratch::default(),
            decoded: 0,
            max_content: Limits::default().max_read_bytes,
        }
    }

    pub fn with_max_content(mut self, max: u64) -> Self {
        self.max_content = max;
        self
    }

    fn read_blob(&mut self, blob: &BlobId, what: &str, chunk: bool) -> Result<Vec<u8>> {
        let candidates = self.map.get_all(blob);
        if candidates.is_empty() {
            return Err(CheckpointError::corrupt(format!(
                "{what} {blob} is missing from the store"
            )));
        }
        // The first copy whose bytes hash to the id wins: a damaged or planted copy in
        // one layer does not hide a good one in another.
        let mut first_err = None;
        for (layer, entry) in candidates {
            match self.read_blob_at(layer, &entry, what, chunk) {
                Ok(d) => return Ok(d),
                Err(e @ CheckpointError::LimitExceeded { .. }) => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.expect("at least one candidate"))
    }

    fn read_blob_at(
        &mut self,
        layer: BlobId,
        entry: &IndexEntry,
        what: &str,
        chunk: bool,
    ) -> Result<Vec<u8>> {
        let blob = entry.blob;
        // Sizes come from an index a session could have written: check them before
        // anything is allocated or decompressed.
        if chunk && entry.len > CHUNK_BLOB_MAX {
            return Err(CheckpointError::corrupt(format!(
                "{what} {blob} claims {} bytes (at most {CHUNK_BLOB_MAX} are read)",
                entry.len
            )));
        }
        if !chunk && entry.len > self.max_content {
            return Err(CheckpointError::limit(
                format!(
                    "{what} {blob} is {} bytes, too large to read into memory",
                    entry.len
                ),
                self.max_content,
            ));
        }
        if !self.readers.contains_key(&layer) {
            let r = LayerReader::open(self.layers_dir, &layer)?;
            self.readers.insert(layer, r);
        }
        let reader = self.readers.get_mut(&layer).expect("inserted");
        // A blob larger than a frame is streamed through its hash first, so memory is
        // spent only on bytes known to be the blob (a small layer can inflate to any
        // size it declares).
        if entry.end()? > WHOLE_FRAME_MAX {
            reader
                .frames_at(entry.frame_offset, 256 << 10)?
                .read_member(entry, &mut std::io::sink())?;
        }
        reader.read_blob_with(entry, &mut self.scratch)
    }

    pub fn load(&mut self, c: &ChunkRef) -> Result<Vec<Record>> {
        self.decoded += 1;
        let data = self.read_blob(&c.blob, "entry chunk", true)?;
        let records = decode_chunk(&data)?;
        let first = unescape_path(&c.first)?;
        let files = records
            .iter()
            .filter(|r| r.kind == crate::entry::RawKind::File);
        let (n_files, bytes) =
            files.fold((0u64, 0u64), |(n, b), r| (n + 1, b.saturating_add(r.size)));
        if records.len() as u64 != c.entries
            || n_files != c.files
            || bytes != c.bytes
            || records.first().map(|r| r.path.as_slice()) != Some(first.as_slice())
        {
            return Err(CheckpointError::corrupt(format!(
                "entry chunk {} does not match the manifest",
                c.blob
            )));
        }
        Ok(records)
    }

    pub fn read_content(&mut self, blob: &BlobId) -> Result<Vec<u8>> {
        self.read_blob(blob, "file content", false)
    }

    /// The chunk map of a chunked file of `size` bytes (E620 if it is missing, damaged,
    /// longer than `MAP_BLOB_MAX` or does not describe exactly `size` bytes).
    pub fn read_map(&mut self, blob: &BlobId, size: u64) -> Result<FileMap> {
        let data = self.read_blob(blob, "chunk map", true)?;
        decode_map(&data, size)
    }

    /// A file's content, whole or chunked, into memory (the caller bounds `r.size`; every
    /// chunk is checked against its hash and the map's lengths).
    pub fn read_file_content(&mut self, r: &Record) -> Result<Vec<u8>> {
        let c = r
            .content
            .ok_or_else(|| CheckpointError::corrupt("a file has no content"))?;
        if !r.chunked {
            return self.read_content(&c);
        }
        let map = self.read_map(&c, r.size)?;
        let mut out = Vec::with_capacity(r.size.min(self.max_content) as usize);
        for (id, len) in &map.chunks {
            let part = self.read_content(id)?;
            if part.len() as u64 != *len {
                return Err(CheckpointError::corrupt(format!(
                    "chunk {id} does not match its chunk map"
                )));
            }
            out.extend_from_slice(&part);
        }
        Ok(out)
    }
}

impl Store {
    /// Marks a store written by an older engine with this engine's version, before a
    /// `create` (under the exclusive lock) writes anything an older reader would misread;
    /// older engines then refuse the store (E620, "not supported") instead of misreading it.
    pub(crate) fn upgrade_marker(&self) -> Result<()> {
        let marker_path = self.root.join("store.json");
        let data = crate::layer::read_small_store_file(&marker_path, "store.json", 64 << 10)?;
        let marker: StoreMarker = serde_json::from_slice(&data)
            .map_err(|e| CheckpointError::corrupt(format!("store.json is unreadable: {e}")))?;
        if marker.version >= STORE_VERSION {
            return Ok(());
        }
        let marker = StoreMarker {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
        };
        let tmp = self.tmp_dir.join("store.json.tmp");
        crate::layer::write_file_synced(
            &tmp,
            &serde_json::to_vec_pretty(&marker).expect("serializes"),
        )?;
        fs::rename(&tmp, &marker_path).io("rename", &marker_path)?;
        crate::layer::sync_dir(&self.root)
    }
}
