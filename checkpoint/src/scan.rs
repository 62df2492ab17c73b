//! Reading directory trees into records: full scans, single lstats, and parallel hashing
//! that stores new content as it goes.
//!
//! Promises: symlinks are recorded as symlinks and never followed; sockets, fifos and
//! devices in a tree are skipped; excluded paths are never descended into; a file that
//! vanishes between the scan and the hash is left out (as if the scan had run a moment
//! later); a file's recorded stat is the one taken around the read of the hashed content.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};

use walkdir::WalkDir;

use crate::codec::BlobId;
use crate::entry::{RawKind, Record, bytes_path};
use crate::error::{CheckpointError, IoContext, Result};
use crate::exclude::Excludes;
use crate::filemap::{CHUNKED_MIN, FileMap, chunk_slices, chunker};
use crate::layer::{BlobKind, FrameBuilder, IN_MEMORY_BLOB_MAX, LayerReader, LayerSink};
use crate::mindex::BlobMap;

/// Files modified less than this long before a scan started are re-hashed by the next scan
/// even if their stat is unchanged (timestamps are coarse; see "racy" in the format doc).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

fn ctime_ns(m: &fs::Metadata) -> i64 {
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// A record from an lstat result; `None` for kinds a checkpoint does not capture.
/// Files come back without content (to be hashed).
pub fn record_from_meta(rel: &[u8], m: &fs::Metadata, abs: &Path) -> Result<Option<Record>> {
    let ft = m.file_type();
    let mode = m.mode() & 0o7777;
    let base = Record {
        path: rel.to_vec(),
        kind: RawKind::Dir,
        mode,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 0,
        racy: false,
        content: None,
        chunked: false,
        link: Vec::new(),
    };
    if ft.is_dir() {
        // The inode lets a hinted parent notice a directory replaced by another one.
        Ok(Some(Record {
            ino: m.ino(),
            ..base
        }))
    } else if ft.is_file() {
        Ok(Some(Record {
            kind: RawKind::File,
            size: m.len(),
            mtime_ns: mtime_ns(m),
            ctime_ns: ctime_ns(m),
            ino: m.ino(),
            ..base
        }))
    } else if ft.is_symlink() {
        let link = match fs::read_link(abs) {
            Ok(l) => l.into_os_string().into_encoded_bytes(),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => {
                return Err(CheckpointError::Io {
                    op: "read symlink",
                    path: abs.to_path_buf(),
                    source: e,
                });
            }
        };
        Ok(Some(Record {
            kind: RawKind::Symlink,
            size: link.len() as u64,
            link,
            ..base
        }))
    } else {
        Ok(None)
    }
}

/// lstat of one relative path; `None` if it does not exist or is not capturable.
pub fn lstat_record(root: &Path, rel: &[u8]) -> Result<Option<Record>> {
    let abs = root.join(bytes_path(rel));
    match fs::symlink_metadata(&abs) {
        Ok(m) => record_from_meta(rel, &m, &abs),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(CheckpointError::Io {
            op: "stat",
            path: abs,
            source: e,
        }),
    }
}

fn rel_of(root: &Path, abs: &Path) -> Vec<u8> {
    abs.strip_prefix(root)
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .unwrap_or_default()
}

/// All records at and below `rel_dir` (everything below the root when it is empty), sorted.
pub fn scan_subtree(root: &Path, rel_dir: &[u8], excludes: &Excludes) -> Result<Vec<Record>> {
    scan_subtree_with(root, rel_dir, excludes, &mut |_| Ok(()))
}

/// `scan_subtree`, calling `on_record` for each record as it is found (so hashing can start
/// while the walk goes on).
pub fn scan_subtree_with(
    root: &Path,
    rel_dir: &[u8],
    excludes: &Excludes,
    on_record: &mut dyn FnMut(&mut Record) -> Result<()>,
) -> Result<Vec<Record>> {
    let start = if rel_dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(bytes_path(rel_dir))
    };
    let walker = WalkDir::new(&start)
        .follow_links(false)
        .min_depth(usize::from(rel_dir.is_empty()))
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || excludes.is_empty()
                || !excludes.matches(&rel_of(root, e.path()), e.file_type().is_dir())
        });
    let mut out = Vec::new();
    for e in walker {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                if err.io_error().is_some_and(is_gone) {
                    continue;
                }
                let path = err.path().unwrap_or(&start).to_path_buf();
                let source = err
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("filesystem loop"));
                return Err(CheckpointError::Io {
                    op: "scan",
                    path,
                    source,
                });
            }
        };
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(err) if err.io_error().is_some_and(is_gone) => continue,
            Err(err) => {
                let source = err
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("stat failed"));
                return Err(CheckpointError::Io {
                    op: "stat",
                    path: e.path().to_path_buf(),
                    source,
                });
            }
        };
        let rel = rel_of(root, e.path());
        if let Some(mut r) = record_from_meta(&rel, &meta, e.path())? {
            on_record(&mut r)?;
            out.push(r);
        }
    }
    out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Every record below `root` (not the root itself), found by `threads` threads at once
/// (the scan path: no change hint), handed to `on_batch` in batches on the calling thread
/// as they are found, and returned sorted. `meanwhile` runs on the calling thread while
/// the walkers start (the caller loads the parent's records there). The same records as
/// [`scan_subtree`] of the whole tree: directories are read with `readdir` and each entry
/// is stat'ed relative to its directory (`fstatat`, never following a link), so a walk
/// of 100,000 entries costs the kernel's work and little else.
pub fn scan_tree_parallel<T>(
    root: &Path,
    excludes: &Excludes,
    threads: usize,
    meanwhile: impl FnOnce() -> Result<T>,
    on_batch: &mut dyn FnMut(&T, &mut [Record]) -> Result<()>,
) -> Result<(T, Vec<Record>)> {
    struct Queue {
        dirs: Vec<(PathBuf, Vec<u8>)>,
        busy: usize,
        failed: Option<CheckpointError>,
    }
    let queue = Mutex::new(Queue {
        dirs: vec![(root.to_path_buf(), Vec::new())],
        busy: 0,
        failed: None,
    });
    let ready = std::sync::Condvar::new();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Record>>();
    const BATCH: usize = 512;
    let walker = |tx: std::sync::mpsc::Sender<Vec<Record>>| {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let (dir, rel_dir) = {
                let mut q = queue.lock().expect("poisoned");
                loop {
                    if q.failed.is_some() {
                        return;
                    }
                    if let Some(d) = q.dirs.pop() {
                        q.busy += 1;
                        break d;
                    }
                    if q.busy == 0 {
                        ready.notify_all();
                        let _ = tx.send(std::mem::take(&mut batch));
                        return;
                    }
                    q = ready.wait(q).expect("poisoned");
                }
            };
            let mut found = Vec::new();
            let read = read_one_dir(&dir, &rel_dir, excludes, &mut batch, &mut found);
            let mut q = queue.lock().expect("poisoned");
            q.busy -= 1;
            match read {
                Ok(()) => {
                    let woke = !found.is_empty();
                    q.dirs.extend(found);
                    if woke || q.busy == 0 {
                        ready.notify_all();
                    }
                }
                Err(e) => {
                    q.failed.get_or_insert(e);
                    ready.notify_all();
                    return;
                }
            }
            drop(q);
            if batch.len() >= BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.send(full).is_err() {
                    return;
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            scope.spawn(move || walker(tx));
        }
        drop(tx);
        let meant = meanwhile();
        let mut out = Vec::new();
        let mut failed = None;
        for mut batch in rx {
            if failed.is_some() {
                continue;
            }
            if let Ok(t) = &meant
                && let Err(e) = on_batch(t, &mut batch)
            {
                // Stop the walkers; the receiver drains what they already sent.
                queue.lock().expect("poisoned").failed =
                    Some(CheckpointError::invalid("the scan stopped after an error"));
                ready.notify_all();
                failed = Some(e);
                continue;
            }
            out.append(&mut batch);
        }
        let meant = meant?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(e) = queue.lock().expect("poisoned").failed.take() {
            return Err(e);
        }
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok((meant, out))
    })
}

/// One directory of [`scan_tree_parallel`]: its entries' records into `out`, its
/// subdirectories (not excluded) into `dirs`. A directory or entry that vanished is
/// skipped.
fn read_one_dir(
    dir: &Path,
    rel_dir: &[u8],
    excludes: &Excludes,
    out: &mut Vec<Record>,
    dirs: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if is_gone(&e) => return Ok(()),
        Err(e) => {
            return Err(CheckpointError::Io {
                op: "scan",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(err) if is_gone(&err) => continue,
            Err(err) => {
                return Err(CheckpointError::Io {
                    op: "scan",
                    path: dir.to_path_buf(),
                    source: err,
                });
            }
        };
        let name = e.file_name();
        let mut rel = Vec::with_capacity(rel_dir.len() + 1 + name.len());
        if !rel_dir.is_empty() {
            rel.extend_from_slice(rel_dir);
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        if !excludes.is_empty() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if excludes.matches(&rel, is_dir) {
                continue;
            }
        }
        // fstatat on the directory's descriptor; never follows a symlink.
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(err) if is_gone(&err) => continue,
            Err(err) => {
                return Err(CheckpointError::Io {
                    op: "stat",
                    path: e.path(),
                    source: err,
                });
            }
        };
        let ft = meta.file_type();
        // Only a symlink's record needs its absolute path (to read the link).
        let abs = if ft.is_symlink() {
            e.path()
        } else {
            PathBuf::new()
        };
        if let Some(mut r) = record_from_meta(b"", &meta, &abs)? {
            if ft.is_dir() {
                dirs.push((e.path(), rel.clone()));
            }
            r.path = rel;
            out.push(r);
        }
    }
    Ok(())
}

/// Whether the stat fast path may reuse `prev`'s content for `now`.
pub fn stat_unchanged(prev: &Record, now: &Record) -> bool {
    prev.kind == RawKind::File
        && now.kind == RawKind::File
        && !prev.racy
        && prev.content.is_some()
        && prev.size == now.size
        && prev.mtime_ns == now.mtime_ns
        && prev.ctime_ns == now.ctime_ns
        && prev.ino == now.ino
}

/// State shared by the hashing workers of one checkpoint.
pub struct StoreSession<'a> {
    pub index: &'a BlobMap,
    pub claimed: Mutex<HashSet<BlobId>>,
    pub sink: Mutex<LayerSink>,
    pub new_bytes: AtomicU64,
    pub hashed_files: AtomicU64,
    /// Jobs the workers have taken off the queue (so `create` starts workers as needed).
    pub taken: std::sync::atomic::AtomicUsize,
    pub t0_ns: i64,
    /// Where the store's copies live (to check one before deduplicating against it).
    pub layers_dir: PathBuf,
    /// Blobs already in the store whose copies were checked: the layer of a copy whose
    /// bytes hash to the id, or `None` if no copy does.
    pub checked: Mutex<HashMap<BlobId, Option<BlobId>>>,
    /// The parent checkpoint's layers: a copy in one of them is trusted without re-reading
    /// it (the parent already relies on it; `verify` and `restore` check it).
    pub trusted_layers: HashSet<BlobId>,
    /// The chunks of every chunk map hashed by this checkpoint, by map id.
    pub maps: Mutex<HashMap<BlobId, Vec<BlobId>>>,
    /// Nanoseconds spent compressing, summed over threads.
    pub compress_ns: AtomicU64,
    /// Told the size of each file read (hashed, and stored when new) as soon as it is
    /// done ([`Store::create_reporting`](crate::Store::create_reporting)).
    pub on_file: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl StoreSession<'_> {
    /// Whether this blob must be written (no intact copy in the store, not claimed by
    /// another worker). A copy found in the store is trusted only once its bytes have been
    /// hashed: a layer planted with someone else's blob id must not make a later
    /// checkpoint reference bytes that are not its content.
    pub fn claim(&self, blob: &BlobId, kind: BlobKind) -> bool {
        if self.index.contains(blob)
            && (self.trusted_copy(blob, kind) || self.good_copy(blob, kind).is_some())
        {
            return false;
        }
        self.claimed.lock().expect("poisoned").insert(*blob)
    }

    /// The layer of a copy of `blob` (of `kind`) whose bytes hash to its id, checked once
    /// per blob per checkpoint (decompressing and hashing it, streaming).
    pub fn good_copy(&self, blob: &BlobId, kind: BlobKind) -> Option<BlobId> {
        if let Some(r) = self.checked.lock().expect("poisoned").get(blob) {
            return *r;
        }
        let found = self
            .index
            .get_all(blob)
            .into_iter()
            .filter(|(_, e)| e.kind == kind)
            .find(|(layer, e)| {
                LayerReader::open(&self.layers_dir, layer)
                    .and_then(|mut r| {
                        r.frames_at(e.frame_offset, 64 << 10)?
                            .read_member(e, &mut io::sink())
                    })
                    .is_ok()
            })
            .map(|(layer, _)| layer);
        self.checked.lock().expect("poisoned").insert(*blob, found);
        found
    }

    /// Whether a copy of `blob` is in one of the parent's layers (then remembered as checked).
    fn trusted_copy(&self, blob: &BlobId, kind: BlobKind) -> bool {
        if self.trusted_layers.is_empty() {
            return false;
        }
        let found = self
            .index
            .get_all(blob)
            .into_iter()
            .find(|(layer, e)| e.kind == kind && self.trusted_layers.contains(layer));
        match found {
            Some((layer, _)) => {
                self.checked
                    .lock()
                    .expect("poisoned")
                    .entry(*blob)
                    .or_insert(Some(layer));
                true
            }
            None => false,
        }
    }

    fn unclaim(&self, blob: &BlobId) {
        self.claimed.lock().expect("poisoned").remove(blob);
    }
}

/// The outcome of hashing one file.
pub struct Hashed {
    /// The content blob, or for a chunked file its chunk map.
    pub content: BlobId,
    pub chunked: bool,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub racy: bool,
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn same_stat(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len()
        && mtime_ns(a) == mtime_ns(b)
        && ctime_ns(a) == ctime_ns(b)
        && a.ino() == b.ino()
}

/// Hashes one file and stores its content if the store lacks it. `None`: the file is gone
/// (or is no longer a regular file).
fn hash_one(
    path: &Path,
    fb: &mut FrameBuilder,
    buf: &mut Vec<u8>,
    s: &StoreSession<'_>,
) -> Result<Option<Hashed>> {
    let mut file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if is_gone(&e) || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => {
            return Err(CheckpointError::Io {
                op: "open",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    for attempt in 0..4 {
        let before = file.metadata().io("stat", path)?;
        if !before.file_type().is_file() {
            return Ok(None);
        }
        if attempt > 0 {
            file.seek(SeekFrom::Start(0)).io("seek", path)?;
        }
        let stable_last_try = attempt == 3;
        let chunked = before.len() >= CHUNKED_MIN;
        let (content, after) = if chunked {
            let mut map = FileMap::default();
            let mut len = 0u64;
            let mut take = |data: &[u8]| -> Result<()> {
                let id = BlobId(*blake3::hash(data).as_bytes());
                if s.claim(&id, BlobKind::Content) {
                    fb.add(&s.sink, id, BlobKind::Content, data, false)?;
                    s.new_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                len += data.len() as u64;
                map.chunks.push((id, data.len() as u64));
                Ok(())
            };
            if before.len() <= IN_MEMORY_BLOB_MAX {
                // Cut in place: the same cut points as the streaming chunker, no copies.
                buf.clear();
                file.read_to_end(buf).io("read", path)?;
                for c in chunk_slices(buf) {
                    take(&buf[c.offset..c.offset + c.length])?;
                }
            } else {
                for c in chunker(&mut file) {
                    let c = c.map_err(|e| CheckpointError::Io {
                        op: "read",
                        path: path.to_path_buf(),
                        source: e.into(),
                    })?;
                    take(&c.data)?;
                }
            }
            let after = file.metadata().io("stat", path)?;
            if !same_stat(&before, &after) || len != after.len() {
                if stable_last_try {
                    return Err(CheckpointError::Io {
                        op: "read",
                        path: path.to_path_buf(),
                        source: io::Error::other("the file keeps changing while it is read"),
                    });
                }
                continue;
            }
            let encoded = map.encode();
            let content = BlobId::of(&encoded);
            if s.claim(&content, BlobKind::Content) {
                fb.add(&s.sink, content, BlobKind::Content, &encoded, false)?;
                s.new_bytes
                    .fetch_add(encoded.len() as u64, Ordering::Relaxed);
            }
            s.maps
                .lock()
                .expect("poisoned")
                .insert(content, map.chunks.iter().map(|(id, _)| *id).collect());
            (content, after)
        } else if before.len() <= IN_MEMORY_BLOB_MAX {
            buf.clear();
            file.read_to_end(buf).io("read", path)?;
            let after = file.metadata().io("stat", path)?;
            if (!same_stat(&before, &after) || buf.len() as u64 != after.len()) && !stable_last_try
            {
                continue;
            }
            let content = BlobId(*blake3::hash(buf).as_bytes());
            if s.claim(&content, BlobKind::Content) {
                fb.add(&s.sink, content, BlobKind::Content, buf, false)?;
                s.new_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            (content, after)
        } else {
            let mut hasher = blake3::Hasher::new();
            let mut len = 0u64;
            let mut piece = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut piece).io("read", path)?;
                if n == 0 {
                    break;
                }
                hasher.update(&piece[..n]);
                len += n as u64;
            }
            let after = file.metadata().io("stat", path)?;
            if !same_stat(&before, &after) || len != after.len() {
                if stable_last_try {
                    return Err(CheckpointError::Io {
                        op: "read",
                        path: path.to_path_buf(),
                        source: io::Error::other("the file keeps changing while it is read"),
                    });
                }
                continue;
            }
            let content = BlobId(*hasher.finalize().as_bytes());
            if s.claim(&content, BlobKind::Content) {
                file.seek(SeekFrom::Start(0)).io("seek", path)?;
                let mut sink = s.sink.lock().expect("layer sink poisoned");
                let ok = sink.append_stream(content, len, &mut file, &mut fb.compressor)?;
                drop(sink);
                if !ok {
                    s.unclaim(&content);
                    continue;
                }
                s.new_bytes.fetch_add(len, Ordering::Relaxed);
            }
            (content, after)
        };
        let mtime = mtime_ns(&after);
        return Ok(Some(Hashed {
            content,
            chunked,
            mode: after.mode() & 0o7777,
            size: after.len(),
            mtime_ns: mtime,
            ctime_ns: ctime_ns(&after),
            ino: after.ino(),
            racy: mtime >= s.t0_ns - RACY_WINDOW_NS || !same_stat(&before, &after),
        }));
    }
    unreachable!("the last attempt always returns")
}

/// A worker that finds the queue empty compresses its pending frame if it holds at least
/// this much (smaller ones wait, so small files still share frames).
const IDLE_FLUSH_MIN: usize = 256 << 10;

/// One file to hash: (tree index, relative path, absolute path).
pub type HashJob = (usize, Vec<u8>, PathBuf);
pub type HashResult = (usize, Vec<u8>, Option<Hashed>);

/// A hashing worker: takes jobs until the channel closes (or another worker failed).
pub fn hash_worker(
    jobs: &Mutex<Receiver<HashJob>>,
    abort: &AtomicBool,
    s: &StoreSession<'_>,
) -> Result<Vec<HashResult>> {
    let mut fb = FrameBuilder::new()?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let job = {
            let queue = jobs.lock().expect("job queue poisoned");
            match queue.try_recv() {
                Ok(job) => Ok(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if fb.pending_bytes() >= IDLE_FLUSH_MIN => {
                    // Nothing to hash right now: compress what is pending while idle
                    // instead of after the last job (small checkpoints wait for that).
                    drop(queue);
                    fb.flush(&s.sink)?;
                    continue;
                }
                Err(TryRecvError::Empty) => queue.recv(),
            }
        };
        let Ok((tree, rel, abs)) = job else { break };
        s.taken.fetch_add(1, Ordering::Relaxed);
        match hash_one(&abs, &mut fb, &mut buf, s) {
            Ok(h) => {
                if let (Some(on_file), Some(h)) = (s.on_file, &h) {
                    on_file(h.size);
                }
                out.push((tree, rel, h))
            }
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
    fb.flush(&s.sink)?;
    s.hashed_files
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    s.compress_ns.fetch_add(fb.compress_ns, Ordering::Relaxed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A tree of files, directories and symlinks (one dangling, one to a directory,
    /// which is never followed) from `shape`: (depth-ish directory index, kind, name).
    fn build(root: &Path, shape: &[(u8, u8, u8)]) {
        let dirs = ["", "a", "a/b", "a/b/c", "d", "d/target", "e.log"];
        for d in &dirs[1..] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (i, (dir, kind, name)) in shape.iter().enumerate() {
            let dir = root.join(dirs[*dir as usize % dirs.len()]);
            let path = dir.join(format!(
                "n{name}-{i}{}",
                if i % 3 == 0 { ".log" } else { "" }
            ));
            match kind % 4 {
                0 | 1 => fs::write(&path, vec![b'x'; i]).unwrap(),
                2 => fs::create_dir_all(&path).unwrap(),
                _ => std::os::unix::fs::symlink(if i % 2 == 0 { "a" } else { "missing" }, &path)
                    .unwrap(),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..Default::default() })]
        /// The parallel walk finds exactly what the sequential one finds, excludes and all,
        /// with any number of walkers, and hands every record to the batch callback once.
        #[test]
        fn the_parallel_walk_equals_the_sequential_one(
            shape in proptest::collection::vec((0u8..7, 0u8..4, 0u8..5), 0..60),
            threads in 1usize..5,
            excluded in any::<bool>(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("t");
            fs::create_dir(&root).unwrap();
            build(&root, &shape);
            let patterns: Vec<String> = if excluded {
                vec!["*.log".into(), "target/".into(), "!keep.log".into()]
            } else {
                Vec::new()
            };
            let ex = Excludes::new(&root, &patterns).unwrap();
            let sequential = scan_subtree(&root, b"", &ex).unwrap();
            let mut seen = 0usize;
            let (meant, parallel) = scan_tree_parallel(&root, &ex, threads, || Ok(7u8), &mut |m, batch| {
                assert_eq!(*m, 7);
                seen += batch.len();
                Ok(())
            }).unwrap();
            prop_assert_eq!(meant, 7);
            prop_assert_eq!(seen, parallel.len());
            prop_assert_eq!(parallel, sequential);
        }
    }

    #[test]
    fn an_error_in_the_batch_callback_stops_the_walk_and_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), &[(1, 0, 1), (2, 0, 2), (4, 0, 3)]);
        let ex = Excludes::new(tmp.path(), &[]).unwrap();
        let err = scan_tree_parallel(tmp.path(), &ex, 2, || Ok(()), &mut |_, _| {
            Err(CheckpointError::invalid("no"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("no"), "{err}");
    }
}
