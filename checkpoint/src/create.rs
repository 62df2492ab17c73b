//! Creating a checkpoint: decide what changed, hash and store new content, re-chunk the
//! touched parts of each tree, and commit the manifest last.
//!
//! Promises:
//! - The entries of a new checkpoint are exactly what a from-scratch scan of the trees
//!   would record (given a `ChangeHint::Paths` that covers every change), whichever hint
//!   was used; the chunks are byte-identical too.
//! - Only content the store lacks is written; unchanged chunks are reused by reference.
//! - Commit order: layers and their indexes are written, fsync'd and renamed; then the
//!   manifest is written to `tmp/`, fsync'd, renamed into `manifests/`, and the directory
//!   fsync'd. A crash before the rename leaves no trace but unreferenced layers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use crate::codec::{BlobId, escape_path, unescape_path};
use crate::entry::{Chunker, RawKind, Record, bytes_path, content_digest, encode_chunk, rel_bytes};
use crate::error::{CheckpointError, IoContext, Result};
use crate::exclude::Excludes;
use crate::layer::{BlobKind, FrameBuilder, LayerIndex, LayerSink, sync_dir, write_file_synced};
use crate::limits::now_ns;
use crate::manifest::{
    CheckpointId, ChunkRef, CreateStats, MANIFEST_VERSION, Manifest, TreeManifest,
};
use crate::mindex::BlobMap;
use crate::scan::{
    HashJob, HashResult, StoreSession, hash_worker, lstat_record, scan_subtree, scan_tree_parallel,
    stat_unchanged,
};
use crate::store::{ChunkLoader, Store};

/// Content frames of at least this many bytes are flushed early (see `create_inner`).
const EARLY_FLUSH_MIN: u64 = 256 << 10;

/// A directory tree to capture, e.g. "workspace" or "conversation".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSpec {
    pub name: String,
    pub root: PathBuf,
    /// Gitignore-style patterns relative to `root`.
    pub excludes: Vec<String>,
}

/// What may have changed in a tree since the parent checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeHint {
    /// Full scan, compared against the parent with a stat fast path.
    Unknown,
    /// Paths (relative to the tree's root, or absolute under it) of files or directories
    /// that may have been created, modified, deleted or renamed. A hinted directory's
    /// direct entries are re-examined too; a directory that did not exist in the parent is
    /// scanned in full; everything else is taken from the parent.
    Paths(BTreeSet<PathBuf>),
}

#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub trees: Vec<(TreeSpec, ChangeHint)>,
    /// `None`: the store's latest checkpoint, if any.
    pub parent: Option<CheckpointId>,
    pub trigger: String,
    pub message: Option<String>,
    pub metadata: serde_json::Value,
    /// Return `Unchanged` when every tree's content equals the parent's (mtimes and the
    /// metadata are not compared).
    pub skip_if_unchanged: bool,
}

// A manifest is returned once per checkpoint; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum CreateOutcome {
    Created(Manifest),
    Unchanged(CheckpointId),
}

/// The parent's chunks of one tree, decoded on demand.
struct ParentView<'p> {
    chunks: &'p [ChunkRef],
    firsts: Vec<Vec<u8>>,
    loaded: HashMap<usize, Vec<Record>>,
}

impl<'p> ParentView<'p> {
    fn new(chunks: &'p [ChunkRef]) -> Result<Self> {
        let firsts = chunks
            .iter()
            .map(|c| unescape_path(&c.first))
            .collect::<Result<_>>()?;
        Ok(ParentView {
            chunks,
            firsts,
            loaded: HashMap::new(),
        })
    }

    fn covering(&self, key: &[u8]) -> usize {
        self.firsts
            .partition_point(|f| f.as_slice() <= key)
            .saturating_sub(1)
    }

    fn chunk(&mut self, i: usize, loader: &mut ChunkLoader<'_>) -> Result<&Vec<Record>> {
        if !self.loaded.contains_key(&i) {
            let records = loader.load(&self.chunks[i])?;
            self.loaded.insert(i, records);
        }
        Ok(&self.loaded[&i])
    }

    /// Chunk `i`'s records, which the view then no longer holds.
    fn take_chunk(&mut self, i: usize, loader: &mut ChunkLoader<'_>) -> Result<Vec<Record>> {
        match self.loaded.remove(&i) {
            Some(records) => Ok(records),
            None => loader.load(&self.chunks[i]),
        }
    }

    fn get(&mut self, key: &[u8], loader: &mut ChunkLoader<'_>) -> Result<Option<Record>> {
        if self.chunks.is_empty() {
            return Ok(None);
        }
        let i = self.covering(key);
        let c = self.chunk(i, loader)?;
        Ok(c.binary_search_by(|r| r.path.as_slice().cmp(key))
            .ok()
            .map(|j| c[j].clone()))
    }

    /// Whether `dir` is a directory in the parent. Every entry's parent directory is an entry
    /// too, so an entry below `dir` in the chunk covering `near` (a path below `dir`, whose
    /// chunk is needed anyway) answers without loading `dir`'s own chunk.
    fn known_dir(&mut self, dir: &[u8], near: &[u8], loader: &mut ChunkLoader<'_>) -> Result<bool> {
        if self.chunks.is_empty() {
            return Ok(false);
        }
        let prefix = [dir, b"/"].concat();
        let i = self.covering(near);
        let c = self.chunk(i, loader)?;
        let j = c.partition_point(|r| r.path.as_slice() < prefix.as_slice());
        if c.get(j).is_some_and(|r| r.path.starts_with(&prefix)) {
            return Ok(true);
        }
        Ok(self
            .get(dir, loader)?
            .is_some_and(|r| r.kind == RawKind::Dir))
    }

    /// Direct children of `dir` (`b""`: the root).
    fn children(&mut self, dir: &[u8], loader: &mut ChunkLoader<'_>) -> Result<Vec<Record>> {
        if self.chunks.is_empty() {
            return Ok(Vec::new());
        }
        let (lo, range) = if dir.is_empty() {
            (Vec::new(), 0..=self.chunks.len() - 1)
        } else {
            let lo = [dir, b"/"].concat();
            let hi = [dir, b"0"].concat();
            let r = self.covering(&lo)..=self.covering(&hi);
            (lo, r)
        };
        let mut out = Vec::new();
        for i in range {
            for r in self.chunk(i, loader)? {
                if let Some(rest) = r.path.strip_prefix(lo.as_slice())
                    && !rest.is_empty()
                    && !rest.contains(&b'/')
                {
                    out.push(r.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Changes to a parent tree: replaced or deleted paths and deleted subtrees.
#[derive(Default)]
struct Edits {
    /// `Some`: the entry at this path (files without content still need hashing);
    /// `None`: no entry at this path.
    set: BTreeMap<Vec<u8>, Option<Record>>,
    /// `dir/` prefixes whose parent entries are all dropped (unless in `set`).
    del_prefixes: BTreeSet<Vec<u8>>,
    /// Directories scanned in full; later hints under them are covered.
    scanned: Vec<Vec<u8>>,
}

impl Edits {
    fn put(&mut self, r: Record) {
        if let Some(Some(old)) = self.set.get(&r.path)
            && old.kind == RawKind::File
            && old.content.is_none()
            && r.kind == RawKind::File
        {
            return; // a forced re-hash wins over a fast-path result
        }
        self.set.insert(r.path.clone(), Some(r));
    }

    fn remove(&mut self, path: &[u8]) {
        self.set.insert(path.to_vec(), None);
        self.del_prefixes.insert([path, b"/"].concat());
    }

    fn deleted_by_prefix(&self, path: &[u8]) -> bool {
        // Every `dir/` prefix of the path, shortest first.
        !self.del_prefixes.is_empty()
            && path
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'/')
                .any(|(i, _)| self.del_prefixes.contains(&path[..=i]))
    }

    fn covered_by_scan(&self, path: &[u8]) -> bool {
        self.scanned.iter().any(|d| {
            path == d.as_slice() || (path.starts_with(d) && path.get(d.len()) == Some(&b'/'))
        })
    }
}

struct HintContext<'a, 'p, 'l> {
    /// Called for every file that needs hashing, as soon as that is known.
    needs_hash: &'a dyn Fn(&[u8]),
    root: &'a Path,
    excludes: &'a Excludes,
    view: ParentView<'p>,
    loader: &'a mut ChunkLoader<'l>,
    edits: Edits,
}

impl HintContext<'_, '_, '_> {
    fn put(&mut self, r: Record) {
        if r.kind == RawKind::File && r.content.is_none() {
            (self.needs_hash)(&r.path);
        }
        self.edits.put(r);
    }

    fn full_scan(&mut self, dir: &[u8]) -> Result<()> {
        self.edits.remove(dir);
        for r in scan_subtree(self.root, dir, self.excludes)? {
            self.put(r);
        }
        self.edits.scanned.push(dir.to_vec());
        Ok(())
    }

    fn hint(&mut self, p: &[u8]) -> Result<()> {
        if p.is_empty() {
            return self.children(b"");
        }
        if self.edits.covered_by_scan(p) || self.excludes.matches_with_parents(p, false) {
            return Ok(());
        }
        // Every ancestor must still be a directory the parent knew as one; the first that is
        // not is what really changed.
        for (i, _) in p.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let a = &p[..i];
            let is_dir = lstat_record(self.root, a)?.is_some_and(|r| r.kind == RawKind::Dir);
            let known = is_dir && self.view.known_dir(a, p, self.loader)?;
            if !is_dir || !known {
                return self.examine(a);
            }
        }
        self.examine(p)
    }

    fn examine(&mut self, p: &[u8]) -> Result<()> {
        if self.edits.covered_by_scan(p) {
            return Ok(());
        }
        let prev = self.view.get(p, self.loader)?;
        match lstat_record(self.root, p)? {
            None => self.edits.remove(p),
            Some(r) if r.kind == RawKind::Dir && self.excludes.matches(p, true) => {
                self.edits.remove(p)
            }
            Some(r) if r.kind != RawKind::Dir && self.excludes.matches(p, false) => {
                self.edits.remove(p)
            }
            Some(r) if r.kind == RawKind::Dir => {
                if prev.is_some_and(|x| x.kind == RawKind::Dir && x.ino == r.ino) {
                    self.put(r);
                    self.children(p)?;
                } else {
                    self.full_scan(p)?;
                }
            }
            Some(r) => {
                self.edits.remove(p);
                self.put(r); // files: no content, so always re-hashed
            }
        }
        Ok(())
    }

    fn children(&mut self, dir: &[u8]) -> Result<()> {
        let abs = if dir.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(bytes_path(dir))
        };
        let mut names: Vec<Vec<u8>> = Vec::new();
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return if dir.is_empty() {
                    Err(CheckpointError::Io {
                        op: "read directory",
                        path: abs,
                        source: e,
                    })
                } else {
                    self.examine(dir)
                };
            }
            Err(e) => {
                return Err(CheckpointError::Io {
                    op: "read directory",
                    path: abs,
                    source: e,
                });
            }
        };
        for e in rd {
            let e = e.io("read directory", &abs)?;
            let name = e.file_name().into_encoded_bytes();
            names.push(if dir.is_empty() {
                name
            } else {
                [dir, b"/", &name].concat()
            });
        }
        names.sort();
        let prev: HashMap<Vec<u8>, Record> = self
            .view
            .children(dir, self.loader)?
            .into_iter()
            .map(|r| (r.path.clone(), r))
            .collect();
        let present: HashSet<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        for p in prev.keys() {
            if !present.contains(p.as_slice()) {
                self.edits.remove(p);
            }
        }
        for c in &names {
            let Some(mut r) = lstat_record(self.root, c)? else {
                self.edits.remove(c);
                continue;
            };
            if self.excludes.matches(c, r.kind == RawKind::Dir) {
                continue;
            }
            let old = prev.get(c);
            match r.kind {
                RawKind::Dir => match old {
                    // Same inode: the same directory, whose contents are hinted separately.
                    Some(o) if o.kind == RawKind::Dir && o.ino == r.ino => {
                        if o.mode != r.mode {
                            self.put(r);
                        }
                    }
                    _ => self.full_scan(c)?,
                },
                _ => {
                    if let Some(o) = old {
                        if stat_unchanged(o, &r) {
                            r.content = o.content;
                            r.chunked = o.chunked;
                            r.racy = o.racy;
                        }
                        if *o == r {
                            continue;
                        }
                        if o.kind == RawKind::Dir {
                            self.edits.remove(c);
                        }
                    }
                    self.put(r);
                }
            }
        }
        Ok(())
    }
}

/// A tree's chunks as the new manifest will have them.
enum ChunkOut {
    /// The parent's chunk, unchanged (its layers resolved to ids).
    Reused(ChunkRef, Vec<BlobId>),
    New(Vec<Record>),
}

/// Re-chunks a parent tree with edits applied, re-encoding only touched chunks (and the
/// ones after them until the chunker is back in step with the parent's boundaries).
fn merge_edits(
    view: &mut ParentView<'_>,
    loader: &mut ChunkLoader<'_>,
    edits: &Edits,
    parent_layers: &[BlobId],
) -> Result<Vec<ChunkOut>> {
    let n = view.chunks.len();
    let mut out = Vec::new();
    let mut chunker = Chunker::default();
    if n == 0 {
        for r in edits.set.values().flatten() {
            chunker.push(r.clone());
        }
        chunker.finish();
        out.extend(chunker.done.drain(..).map(ChunkOut::New));
        return Ok(out);
    }
    let mut touched = vec![false; n];
    for k in edits.set.keys() {
        touched[view.covering(k)] = true;
    }
    for p in &edits.del_prefixes {
        let mut hi = p.clone();
        *hi.last_mut().expect("prefix ends with /") += 1;
        for t in &mut touched[view.covering(p)..=view.covering(&hi)] {
            *t = true;
        }
    }
    let mut pending_edits = edits.set.iter().peekable();
    for (i, &is_touched) in touched.iter().enumerate() {
        if !is_touched && chunker.pending.is_empty() {
            out.extend(chunker.done.drain(..).map(ChunkOut::New));
            let c = view.chunks[i].clone();
            let layers = c
                .layers
                .iter()
                .map(|l| parent_layers[*l as usize])
                .collect();
            out.push(ChunkOut::Reused(c, layers));
            continue;
        }
        let end: Option<Vec<u8>> = view.firsts.get(i + 1).cloned();
        let records = view.take_chunk(i, loader)?;
        let mut mine: Vec<(&Vec<u8>, &Option<Record>)> = Vec::new();
        while let Some((k, _)) = pending_edits.peek() {
            if end.as_ref().is_some_and(|e| *k >= e) {
                break;
            }
            mine.push(pending_edits.next().expect("peeked"));
        }
        let mut a = records
            .into_iter()
            .filter(|r| !edits.set.contains_key(&r.path) && !edits.deleted_by_prefix(&r.path))
            .peekable();
        let mut b = mine.into_iter().filter_map(|(_, v)| v.clone()).peekable();
        loop {
            let take_a = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => x.path < y.path,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let r = if take_a { a.next() } else { b.next() }.expect("peeked");
            chunker.push(r);
        }
        out.extend(chunker.done.drain(..).map(ChunkOut::New));
    }
    chunker.finish();
    out.extend(chunker.done.drain(..).map(ChunkOut::New));
    Ok(out)
}

/// The chunk of a manifest under construction.
struct BuiltChunk {
    chunk: ChunkRef,
    layers: BTreeSet<BlobId>,
    encoded: Option<Vec<u8>>,
    records: Option<Vec<Record>>,
}

fn build_chunk(records: Vec<Record>) -> BuiltChunk {
    let encoded = encode_chunk(&records);
    let files: Vec<&Record> = records.iter().filter(|r| r.kind == RawKind::File).collect();
    BuiltChunk {
        chunk: ChunkRef {
            first: escape_path(&records[0].path),
            blob: BlobId::of(&encoded),
            entries: records.len() as u64,
            files: files.len() as u64,
            bytes: files.iter().map(|r| r.size).sum(),
            digest: content_digest(&records),
            layers: Vec::new(),
        },
        layers: BTreeSet::new(),
        encoded: Some(encoded),
        records: Some(records),
    }
}

enum TreeWork {
    Full(Vec<Record>),
    Edited(Edits),
}

fn normalize_hint(root: &Path, p: &Path) -> Result<Vec<u8>> {
    let rel = if p.is_absolute() {
        p.strip_prefix(root).map_err(|_| {
            CheckpointError::invalid(format!(
                "hint {} is outside the tree root {}",
                p.display(),
                root.display()
            ))
        })?
    } else {
        p
    };
    rel_bytes(rel)
}

type Decided<'p> = (Vec<TreeWork>, Vec<Option<ParentView<'p>>>);

/// Works out, per tree, which entries to take from the parent and which to re-read; sends
/// every file that needs hashing to the workers as soon as it is known.
fn decide<'p>(
    req: &CreateRequest,
    parent: Option<&'p Manifest>,
    loader: &mut ChunkLoader<'_>,
    submit: &dyn Fn(HashJob),
    walkers: usize,
) -> Result<Decided<'p>> {
    let mut works = Vec::new();
    let mut views = Vec::new();
    for (ti, (spec, hint)) in req.trees.iter().enumerate() {
        let excludes = Excludes::new(&spec.root, &spec.excludes)?;
        let ptree = parent
            .and_then(|p| p.tree(&spec.name))
            .filter(|t| t.excludes == spec.excludes);
        // A failed send means the workers stopped on an error, which `create` reports.
        let send = |rel: &[u8]| submit((ti, rel.to_vec(), spec.root.join(bytes_path(rel))));
        match (hint, ptree) {
            (ChangeHint::Paths(paths), Some(pt)) => {
                let mut hints: Vec<Vec<u8>> = paths
                    .iter()
                    .map(|p| normalize_hint(&spec.root, p))
                    .collect::<Result<_>>()?;
                hints.sort();
                hints.dedup();
                let mut cx = HintContext {
                    needs_hash: &send,
                    root: &spec.root,
                    excludes: &excludes,
                    view: ParentView::new(&pt.chunks)?,
                    loader: &mut *loader,
                    edits: Edits::default(),
                };
                for h in &hints {
                    cx.hint(h)?;
                }
                views.push(Some(cx.view));
                works.push(TreeWork::Edited(cx.edits));
            }
            (_, ptree) => {
                // The walkers start at once; the parent's records load meanwhile on this
                // thread, which then takes the walkers' batches: the stat fast path, and
                // every file that needs it sent to the hash workers as soon as it is found.
                let load_parent = || -> Result<Vec<Record>> {
                    let mut prev = Vec::new();
                    if let Some(pt) = ptree {
                        // Capacity from a file: a hint, bounded (each chunk is checked on load).
                        prev.reserve(pt.entry_count.min(1 << 20) as usize);
                        for c in &pt.chunks {
                            prev.extend(loader.load(c)?);
                        }
                    }
                    Ok(prev)
                };
                let (_, records) = scan_tree_parallel(
                    &spec.root,
                    &excludes,
                    walkers,
                    load_parent,
                    &mut |prev: &Vec<Record>, batch: &mut [Record]| {
                        for r in batch.iter_mut().filter(|r| r.kind == RawKind::File) {
                            match prev.binary_search_by(|p| p.path.as_slice().cmp(&r.path)) {
                                Ok(j) if stat_unchanged(&prev[j], r) => {
                                    r.content = prev[j].content;
                                    r.chunked = prev[j].chunked;
                                }
                                _ => send(&r.path),
                            }
                        }
                        Ok(())
                    },
                )?;
                views.push(None);
                works.push(TreeWork::Full(records));
            }
        }
    }
    Ok((works, views))
}

impl Store {
    /// Creates a checkpoint of the request's trees (see the module docs for the protocol).
    pub fn create(&self, req: &CreateRequest) -> Result<CreateOutcome> {
        self.create_with(req, None, None)
    }

    /// [`Store::create`] for a caller that captured the tree's git state for the
    /// metadata first and timed it: the manifest's `stats.phase_ms.git` records `git_ms`.
    pub fn create_with_git_ms(
        &self,
        req: &CreateRequest,
        git_ms: Option<u64>,
    ) -> Result<CreateOutcome> {
        self.create_with(req, git_ms, None)
    }

    /// [`Store::create`], telling `on_file` the size of each regular file it reads
    /// (hashes, and stores when new) as soon as that file is done, from any of the
    /// hashing threads. Files the checkpoint takes from its parent without reading
    /// them are not reported, nor are files that vanished before they were read.
    pub fn create_reporting(
        &self,
        req: &CreateRequest,
        on_file: &(dyn Fn(u64) + Sync),
    ) -> Result<CreateOutcome> {
        self.create_with(req, None, Some(on_file))
    }

    fn create_with(
        &self,
        req: &CreateRequest,
        git_ms: Option<u64>,
        on_file: Option<&(dyn Fn(u64) + Sync)>,
    ) -> Result<CreateOutcome> {
        let mut names = HashSet::new();
        for (t, _) in &req.trees {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(CheckpointError::invalid(format!(
                    "tree name {:?} is empty or repeated",
                    t.name
                )));
            }
            if !fs::symlink_metadata(&t.root).is_ok_and(|m| m.is_dir())
                && !fs::metadata(&t.root).is_ok_and(|m| m.is_dir())
            {
                return Err(CheckpointError::invalid(format!(
                    "tree root {} is not a directory",
                    t.root.display()
                )));
            }
        }
        let trace = crate::store::PhaseTrace::new();
        let _lock = self.lock(true)?;
        self.clean_tmp()?;
        self.upgrade_marker()?;
        trace.mark("locked");
        let parent = match &req.parent {
            Some(id) => Some(self.load(id)?),
            None => self.latest_manifest()?,
        };
        trace.mark("parent loaded");
        let index = self.global_index()?;
        trace.mark("index loaded");
        let t0_ns = now_ns();
        let session = StoreSession {
            index: &index,
            claimed: Mutex::new(HashSet::new()),
            sink: Mutex::new({
                let mut sink = LayerSink::new(self.layers_dir.clone(), self.tmp_dir.clone())?;
                sink.layer_target = self.layer_target;
                sink
            }),
            new_bytes: AtomicU64::new(0),
            hashed_files: AtomicU64::new(0),
            taken: std::sync::atomic::AtomicUsize::new(0),
            t0_ns,
            layers_dir: self.layers_dir.clone(),
            checked: Mutex::new(HashMap::new()),
            trusted_layers: parent
                .as_ref()
                .map(|p| p.layers.iter().copied().collect())
                .unwrap_or_default(),
            maps: Mutex::new(HashMap::new()),
            compress_ns: AtomicU64::new(0),
            on_file,
        };
        let result = self.create_inner(req, parent.as_ref(), &index, &session, &trace, git_ms);
        if result.is_err() {
            session.sink.lock().expect("poisoned").abandon();
        }
        result
    }

    fn clean_tmp(&self) -> Result<()> {
        for e in fs::read_dir(&self.tmp_dir).io("list", &self.tmp_dir)? {
            let e = e.io("list", &self.tmp_dir)?;
            let _ = fs::remove_file(e.path());
        }
        Ok(())
    }

    fn create_inner(
        &self,
        req: &CreateRequest,
        parent: Option<&Manifest>,
        index: &BlobMap,
        session: &StoreSession<'_>,
        trace: &crate::store::PhaseTrace,
        git_ms: Option<u64>,
    ) -> Result<CreateOutcome> {
        let mut loader = ChunkLoader::new(&self.layers_dir, index);
        let started_ns = now_ns();
        let walked_ns = std::cell::Cell::new(started_ns);
        // 1+2. Decide what to (re-)read in each tree while workers hash (and store) every
        // file that needs it, as soon as the walk finds it.
        let (tx, rx) = mpsc::channel::<HashJob>();
        let rx = Mutex::new(rx);
        let abort = AtomicBool::new(false);
        let (decided, hashed) = std::thread::scope(|scope| {
            // Workers start as jobs queue up faster than the running ones take them, up to
            // `threads`: a hinted checkpoint of a few files should not pay for idle threads
            // and compression contexts (fresh memory is costly), a full scan gets them all.
            let workers = std::cell::RefCell::new(Vec::new());
            let sent = std::cell::Cell::new(0usize);
            let submit = |job: HashJob| {
                // A failed send means the workers stopped on an error, which is reported.
                let _ = tx.send(job);
                sent.set(sent.get() + 1);
                let mut w = workers.borrow_mut();
                let queued = sent.get() - session.taken.load(Ordering::Relaxed);
                if w.is_empty() || (w.len() < self.threads && queued > w.len()) {
                    w.push(scope.spawn(|| hash_worker(&rx, &abort, session)));
                }
            };
            let decided = decide(req, parent, &mut loader, &submit, self.threads.clamp(1, 8));
            trace.mark("trees examined");
            walked_ns.set(now_ns());
            drop(tx);
            if decided.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            let hashed: Result<Vec<Vec<HashResult>>> = workers
                .into_inner()
                .into_iter()
                .map(|h| h.join().expect("hash worker panicked"))
                .collect();
            (decided, hashed)
        });
        let (works, views) = decided?;
        let mut results: Vec<HashMap<Vec<u8>, Option<crate::scan::Hashed>>> =
            works.iter().map(|_| HashMap::new()).collect();
        for (ti, rel, h) in hashed?.into_iter().flatten() {
            results[ti].insert(rel, h);
        }
        trace.mark("files hashed");
        let hashed_ns = now_ns();
        // The layer's content frames are written: start flushing them to the disk while
        // the chunks are built, so the commit's fdatasync waits only for the rest.
        let early_flush = session
            .sink
            .lock()
            .expect("poisoned")
            .open_layer_file()
            .filter(|(_, written)| *written >= EARLY_FLUSH_MIN)
            .map(|(f, _)| std::thread::spawn(move || f.sync_data()));
        let apply = |r: &mut Record, h: &crate::scan::Hashed| {
            r.content = Some(h.content);
            r.chunked = h.chunked;
            r.mode = h.mode;
            r.size = h.size;
            r.mtime_ns = h.mtime_ns;
            r.ctime_ns = h.ctime_ns;
            r.ino = h.ino;
            r.racy = h.racy;
        };

        // 3. Chunk each tree.
        let mut outs_per_tree: Vec<Vec<ChunkOut>> = Vec::new();
        for (ti, (work, view)) in works.into_iter().zip(views).enumerate() {
            let res = &results[ti];
            let outs = match work {
                TreeWork::Full(mut records) => {
                    let mut gone = false;
                    for r in records.iter_mut() {
                        if let Some(h) = res.get(&r.path) {
                            match h {
                                Some(h) => apply(r, h),
                                None => gone = true,
                            }
                        }
                    }
                    if gone {
                        records.retain(|r| !(r.kind == RawKind::File && r.content.is_none()));
                    }
                    let mut chunker = Chunker::default();
                    for r in records {
                        chunker.push(r);
                    }
                    chunker.finish();
                    chunker.done.into_iter().map(ChunkOut::New).collect()
                }
                TreeWork::Edited(mut edits) => {
                    for (path, v) in edits.set.iter_mut() {
                        if let Some(h) = res.get(path) {
                            match (h, v.as_mut()) {
                                (Some(h), Some(r)) => apply(r, h),
                                _ => *v = None,
                            }
                        }
                    }
                    let mut view = view.expect("edited trees have a view");
                    let parent_layers = &parent.expect("edited trees have a parent").layers;
                    merge_edits(&mut view, &mut loader, &edits, parent_layers)?
                }
            };
            outs_per_tree.push(outs);
        }
        // Encoding, hashing and digesting new chunks is independent per chunk.
        let mut to_build = Vec::new();
        let mut shapes: Vec<Vec<Option<BuiltChunk>>> = Vec::new();
        for outs in outs_per_tree {
            shapes.push(
                outs.into_iter()
                    .map(|o| match o {
                        ChunkOut::Reused(c, layers) => Some(BuiltChunk {
                            chunk: c,
                            layers: layers.into_iter().collect(),
                            encoded: None,
                            records: None,
                        }),
                        ChunkOut::New(records) => {
                            to_build.push(records);
                            None
                        }
                    })
                    .collect(),
            );
        }
        let mut built = par_map(to_build, self.threads, build_chunk).into_iter();
        let mut trees_out: Vec<Vec<BuiltChunk>> = shapes
            .into_iter()
            .map(|t| {
                t.into_iter()
                    .map(|b| b.unwrap_or_else(|| built.next().expect("one per new chunk")))
                    .collect()
            })
            .collect();
        // A re-encoded chunk that came out byte for byte as one of the parent's (every
        // chunk of a scan of an unchanged region) names exactly the blobs that chunk names,
        // which the parent's layers hold: take its layers and store and locate nothing.
        if let Some(p) = parent {
            let known: HashMap<BlobId, &[u32]> = p
                .trees
                .iter()
                .flat_map(|t| t.chunks.iter().map(|c| (c.blob, c.layers.as_slice())))
                .collect();
            for built in trees_out.iter_mut().flatten() {
                if built.records.is_some()
                    && let Some(layers) = known.get(&built.chunk.blob)
                    && let Some(ids) = layers
                        .iter()
                        .map(|l| p.layers.get(*l as usize).copied())
                        .collect::<Option<BTreeSet<BlobId>>>()
                {
                    built.layers = ids;
                    built.records = None;
                    built.encoded = None;
                }
            }
        }

        trace.mark("chunked");
        trace.note(|| {
            let new: Vec<usize> = trees_out
                .iter()
                .flatten()
                .filter_map(|b| b.encoded.as_ref().map(Vec::len))
                .collect();
            format!(
                "{} chunks, {} new ({} bytes encoded), {} parent chunks decoded",
                trees_out.iter().map(Vec::len).sum::<usize>(),
                new.len(),
                new.iter().sum::<usize>(),
                loader.decoded
            )
        });
        // 4. Unchanged?
        let sink_empty = {
            let sink = session.sink.lock().expect("poisoned");
            sink.written_bytes == 0
        };
        if req.skip_if_unchanged
            && let Some(p) = parent
            && sink_empty
            && p.trees.len() == req.trees.len()
            && req.trees.iter().zip(&trees_out).all(|((spec, _), built)| {
                p.tree(&spec.name).is_some_and(|pt| {
                    pt.chunks.len() == built.len()
                        && pt
                            .chunks
                            .iter()
                            .zip(built)
                            .all(|(a, b)| a.digest == b.chunk.digest)
                })
            })
        {
            return Ok(CreateOutcome::Unchanged(p.id.clone()));
        }

        // 5. Store new chunk blobs and finish the layers while this thread works out which
        //    existing layers hold the files the new chunks name.
        let new_chunks: Vec<(BlobId, Vec<u8>)> = trees_out
            .iter_mut()
            .flatten()
            .filter_map(|b| b.encoded.take().map(|e| (b.chunk.blob, e)))
            .filter(|(blob, _)| session.claim(blob, BlobKind::Chunk))
            .collect();
        // Everything this checkpoint writes; the rest of what its chunks name is in the store.
        let written: HashSet<BlobId> = session.claimed.lock().expect("poisoned").clone();
        let writers = new_chunks.len().div_ceil(8).clamp(1, self.threads);
        let per_thread = new_chunks.len().div_ceil(writers).max(1);
        let vanished = |b: &BlobId| {
            CheckpointError::corrupt(format!("blob {b} vanished from the store during create"))
        };
        // The layer of a blob this checkpoint names but did not write: a copy checked by
        // `claim`, or one in the parent's layers (which the parent's checkpoint already
        // relies on); any other copy is hashed before it is trusted.
        let parent_layers: HashSet<BlobId> = parent
            .map(|p| p.layers.iter().copied().collect())
            .unwrap_or_default();
        let locate = |c: &BlobId, is_chunk: bool| -> Result<BlobId> {
            if let Some(Some(l)) = session.checked.lock().expect("poisoned").get(c) {
                return Ok(*l);
            }
            let l = index.layer_of(c).ok_or_else(|| vanished(c))?;
            if parent_layers.contains(&l) {
                return Ok(l);
            }
            let kind = if is_chunk {
                BlobKind::Chunk
            } else {
                BlobKind::Content
            };
            session.good_copy(c, kind).ok_or_else(|| {
                CheckpointError::corrupt(format!("blob {c} has no intact copy in the store"))
            })
        };
        let pending_new: Vec<Vec<BlobId>> = std::thread::scope(|scope| -> Result<_> {
            let handles: Vec<_> = new_chunks
                .chunks(per_thread)
                .map(|part| {
                    scope.spawn(move || -> Result<()> {
                        let mut fb = FrameBuilder::new()?;
                        for (blob, enc) in part {
                            fb.add(&session.sink, *blob, BlobKind::Chunk, enc, true)?;
                        }
                        let flushed = fb.flush(&session.sink);
                        session
                            .compress_ns
                            .fetch_add(fb.compress_ns, Ordering::Relaxed);
                        flushed
                    })
                })
                .collect();
            let located = (|| -> Result<Vec<Vec<BlobId>>> {
                let mut pending = Vec::new();
                for built in trees_out.iter_mut().flatten() {
                    let mut new = Vec::new();
                    if let Some(records) = &built.records {
                        let mut named: Vec<BlobId> = vec![built.chunk.blob];
                        for r in records {
                            let Some(c) = r.content else { continue };
                            named.push(c);
                            if r.chunked {
                                // A chunked file names its map and the map's chunks.
                                let known = session.maps.lock().expect("poisoned").get(&c).cloned();
                                match known {
                                    Some(parts) => named.extend(parts),
                                    None => named.extend(
                                        loader
                                            .read_map(&c, r.size)?
                                            .chunks
                                            .iter()
                                            .map(|(id, _)| *id),
                                    ),
                                }
                            }
                        }
                        for (i, c) in named.iter().enumerate() {
                            if written.contains(c) {
                                new.push(*c);
                            } else {
                                built.layers.insert(locate(c, i == 0)?);
                            }
                        }
                    }
                    new.sort_unstable();
                    new.dedup();
                    pending.push(new);
                }
                Ok(pending)
            })();
            let stored = handles
                .into_iter()
                .map(|h| h.join().expect("chunk writer panicked"))
                .collect::<Result<Vec<()>>>();
            stored?;
            located
        })?;
        trace.mark("chunks stored, layers of existing blobs located");
        let (finished, sealed, written_bytes) = {
            let mut sink = session.sink.lock().expect("poisoned");
            let sealed = sink.seal()?;
            (sink.finished.clone(), sealed, sink.written_bytes)
        };
        let sink = &session.sink;
        let finished: Vec<LayerIndex> = finished
            .into_iter()
            .chain(sealed.as_ref().map(|s| s.index.clone()))
            .collect();
        trace.mark("layers sealed");
        let sealed_ns = now_ns();
        let new_locations: HashMap<BlobId, BlobId> = finished
            .iter()
            .flat_map(|l| l.entries.iter().map(|e| (e.blob, l.layer)))
            .collect();
        for (built, new) in trees_out.iter_mut().flatten().zip(pending_new) {
            built.records = None;
            for b in &new {
                built
                    .layers
                    .insert(*new_locations.get(b).ok_or_else(|| vanished(b))?);
            }
        }
        trace.mark("chunk layers located");
        let all_layers: BTreeSet<BlobId> = trees_out
            .iter()
            .flatten()
            .flat_map(|b| b.layers.iter().copied())
            .collect();
        let layers: Vec<BlobId> = all_layers.into_iter().collect();
        let layer_pos: HashMap<BlobId, u32> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, i as u32))
            .collect();
        let mut trees = Vec::new();
        for ((spec, _), built) in req.trees.iter().zip(trees_out) {
            let chunks: Vec<ChunkRef> = built
                .into_iter()
                .map(|b| ChunkRef {
                    layers: b.layers.iter().map(|l| layer_pos[l]).collect(),
                    ..b.chunk
                })
                .collect();
            trees.push(TreeManifest {
                name: spec.name.clone(),
                excludes: spec.excludes.clone(),
                entry_count: chunks.iter().map(|c| c.entries).sum(),
                file_count: chunks.iter().map(|c| c.files).sum(),
                total_bytes: chunks.iter().map(|c| c.bytes).sum(),
                chunks,
            });
        }
        let ms = |ns: i64| (ns.max(0) / 1_000_000) as u64;
        let last_ms = self
            .manifest_ids()?
            .last()
            .and_then(|id| id.as_str()[3..16].parse::<i64>().ok())
            .unwrap_or(0);
        let created_at_ms = (now_ns() / 1_000_000).max(last_ms + 1);
        let salt = format!("{}-{}-{}", std::process::id(), now_ns(), trees.len());
        let mut manifest = Manifest {
            format_version: MANIFEST_VERSION,
            id: CheckpointId::new(created_at_ms, salt.as_bytes()),
            parent: parent.map(|p| p.id.clone()),
            created_at_ms,
            trigger: req.trigger.clone(),
            message: req.message.clone(),
            metadata: req.metadata.clone(),
            trees,
            layers,
            stats: CreateStats {
                new_bytes: session.new_bytes.load(Ordering::Relaxed),
                hashed_files: session.hashed_files.load(Ordering::Relaxed),
                written_bytes,
                new_layers: finished.len() as u64,
                phase_ms: Some(crate::manifest::PhaseMs {
                    detect: ms(walked_ns.get() - started_ns),
                    hash: ms(hashed_ns - walked_ns.get()),
                    compress: session.compress_ns.load(Ordering::Relaxed) / 1_000_000,
                    fsync: None,
                    git: git_ms,
                }),
            },
            checksum: String::new(),
        };
        let bytes = manifest.encode();
        let tmp = self.tmp_dir.join(format!("{}.manifest.tmp", manifest.id));
        // The last layer's fsync and the manifest's write+fsync overlap; only the manifest's
        // rename has to wait for the layers to be durable.
        let layers_dir = &self.layers_dir;
        let any_layer = !finished.is_empty();
        let (layers_durable, manifest_written) = std::thread::scope(|scope| {
            let h = scope.spawn(move || -> Result<()> {
                // Layers finished at the size limit are being made durable already.
                sink.lock().expect("poisoned").wait_durable()?;
                if let Some(sl) = sealed {
                    sl.make_durable(layers_dir)?;
                }
                if any_layer {
                    sync_dir(layers_dir)?;
                }
                Ok(())
            });
            let written = write_file_synced(&tmp, &bytes);
            (h.join().expect("layer fsync thread panicked"), written)
        });
        layers_durable?;
        manifest_written?;
        if let Some(h) = early_flush {
            // Only an optimisation: `make_durable` above did the fdatasync that counts.
            let _ = h.join();
        }
        self.check_fail_point("before_manifest")?;
        self.check_fail_point("before_manifest_rename")?;
        let dest = self.manifest_path(&manifest.id);
        fs::rename(&tmp, &dest).io("commit manifest", &dest)?;
        sync_dir(&self.manifests_dir)?;
        trace.mark("manifest committed");
        // The returned value also says how long the commit took (the file cannot).
        if let Some(p) = &mut manifest.stats.phase_ms {
            p.fsync = Some(ms(now_ns() - sealed_ns));
        }
        self.remember_layers(&finished);
        self.refresh_index_cache();
        trace.mark("index cache refreshed");
        Ok(CreateOutcome::Created(manifest))
    }
}

/// Maps `f` over `items` on up to `threads` threads (the calling one included, at least 8
/// items each: a thread costs ~50 us to start here), in order.
fn par_map<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = threads.min(items.len().div_ceil(8)).max(1);
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        parts.push(it.by_ref().take(per).collect());
    }
    let f = &f;
    let mine = parts.remove(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| scope.spawn(move || p.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = mine.into_iter().map(f).collect();
        for h in handles {
            out.extend(h.join().expect("worker panicked"));
        }
        out
    })
}
