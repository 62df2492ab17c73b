//! Restoring one tree of a checkpoint into a target directory.
//!
//! Promises:
//! - Nothing in the target changes until the manifest, every layer the tree needs, every
//!   layer index and every entry chunk have been checked, and every entry has passed
//!   `validate_tree` (no `..`, absolute paths, links that entries would be written through,
//!   hard links, devices, fifos, sockets).
//! - Nothing outside the target is written: existing symlinks in the target are removed,
//!   never followed; files are created with `O_EXCL`/`O_NOFOLLOW` or written to a fresh
//!   temp file and renamed over the old name, so an existing hard link to an outside file
//!   is replaced, not written through; modes are set on our own file descriptors.
//! - Afterwards the target holds exactly the tree (paths, kinds, permission bits `& 0o777`,
//!   contents, symlink targets, empty directories; file mtimes are set), except for paths
//!   matched by the tree's excludes, which are left alone unless they sit where the
//!   checkpoint needs something else.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walkdir::WalkDir;

use crate::codec::BlobId;
use crate::entry::{RawKind, Record, bytes_path};
use crate::error::{CheckpointError, IoContext, Result};
use crate::exclude::Excludes;
use crate::filemap::FileMap;
use crate::layer::{
    FRAME_TARGET, FrameScratch, IndexEntry, LayerReader, WHOLE_FRAME_MAX, check_member_header,
};
use crate::limits::now_ns;
use crate::limits::{Deadline, PATH_MAX};
use crate::manifest::CheckpointId;
use crate::mindex::BlobMap;
use crate::store::{FileMaps, Store};
use crate::verify::{Located, parallel_map};

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Files (re)written, and their bytes.
    pub files_written: u64,
    pub bytes_written: u64,
    /// Files already identical in the target.
    pub files_unchanged: u64,
    pub dirs_created: u64,
    pub symlinks_created: u64,
    /// Target paths removed because the checkpoint does not have them (or has another kind).
    pub removed: u64,
}

/// How far a restore has got: the tree's files (and their bytes) that are in place in
/// the target (found identical there, or written), of all the tree's files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Receives a restore's [`RestoreProgress`] (see [`Store::restore_tree_reporting`]).
pub type OnRestoreProgress<'a> = &'a (dyn Fn(RestoreProgress) + Sync);

/// Counts written files and hands each new total to the caller, one call at a time so
/// the figures it sees never go down (writers run on several threads).
struct ProgressCounter<'a> {
    on_progress: OnRestoreProgress<'a>,
    state: std::sync::Mutex<RestoreProgress>,
}

impl<'a> ProgressCounter<'a> {
    fn new(on_progress: OnRestoreProgress<'a>, start: RestoreProgress) -> Self {
        on_progress(start);
        Self {
            on_progress,
            state: std::sync::Mutex::new(start),
        }
    }

    fn add(&self, files: u64, bytes: u64) {
        let mut state = self.state.lock().expect("poisoned");
        state.files_done += files;
        state.bytes_done += bytes;
        (self.on_progress)(*state);
    }
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn perm(mode: u32) -> Permissions {
    Permissions::from_mode(mode & 0o777)
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Entries of the checkpoint inside excluded directories the walk left alone: each is
/// looked up without following links (its parents are directories of the tree, handled
/// first since records are sorted) and classified as the walk would have done.
fn classify_inside_excluded(
    target: &Path,
    records: &[Record],
    excluded_dirs: &HashSet<Vec<u8>>,
    existing_dirs: &mut HashSet<Vec<u8>>,
    existing_files: &mut HashMap<Vec<u8>, fs::Metadata>,
    existing_links: &mut HashSet<Vec<u8>>,
    stats: &mut RestoreStats,
) -> Result<()> {
    for r in records {
        let mut p = r.path.as_slice();
        let inside = loop {
            let parent = crate::entry::parent_of(p);
            if parent.is_empty() {
                break false;
            }
            if excluded_dirs.contains(parent) {
                break true;
            }
            p = parent;
        };
        if !inside {
            continue;
        }
        let abs = target.join(bytes_path(&r.path));
        let md = match fs::symlink_metadata(&abs) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(e) => {
                return Err(CheckpointError::Io {
                    op: "stat",
                    path: abs,
                    source: e,
                });
            }
        };
        let ft = md.file_type();
        let keep = match r.kind {
            RawKind::Dir if ft.is_dir() => {
                existing_dirs.insert(r.path.clone());
                true
            }
            RawKind::File if ft.is_file() => {
                existing_files.insert(r.path.clone(), md);
                true
            }
            RawKind::Symlink if ft.is_symlink() => {
                let same =
                    fs::read_link(&abs).is_ok_and(|l| l.as_os_str().as_encoded_bytes() == r.link);
                if same {
                    existing_links.insert(r.path.clone());
                }
                same
            }
            _ => false,
        };
        if !keep {
            remove_path(&abs, ft.is_dir()).io("remove", &abs)?;
            stats.removed += 1;
        }
    }
    Ok(())
}

fn remove_path(path: &Path, is_dir: bool) -> io::Result<()> {
    let attempt = || {
        if is_dir {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        }
    };
    match attempt() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // A read-only parent directory: make it writable for us (its final mode is set
            // again at the end if the checkpoint has it) and retry.
            if let Some(parent) = path.parent()
                && let Ok(m) = fs::symlink_metadata(parent)
                && m.is_dir()
            {
                fs::set_permissions(parent, perm(m.mode() | 0o700))?;
            }
            attempt()
        }
        r => r,
    }
}

/// One file to write: where, and whether an old file must be replaced atomically.
struct FileJob<'r> {
    record: &'r Record,
    replace: bool,
}

impl Store {
    /// Makes `target` exactly the named tree of checkpoint `id` (see the module docs).
    pub fn restore_tree(
        &self,
        id: &CheckpointId,
        tree: &str,
        target: &Path,
    ) -> Result<RestoreStats> {
        self.restore_tree_reporting(id, tree, target, &|_| {})
    }

    /// [`Store::restore_tree`], telling `on_progress` how far it has got. Nothing is
    /// reported while the checkpoint is verified (the target has not changed yet); then
    /// once with the files already identical in the target counted as done, and after
    /// each group of files written (one compressed frame's worth). Calls come from the
    /// restore's worker threads one at a time, the figures never go down, and a restore
    /// that succeeds has reported `files_done == files_total` and `bytes_done ==
    /// bytes_total` last (the tree's file count and bytes, as its manifest records them).
    pub fn restore_tree_reporting(
        &self,
        id: &CheckpointId,
        tree: &str,
        target: &Path,
        on_progress: OnRestoreProgress<'_>,
    ) -> Result<RestoreStats> {
        let trace = crate::store::PhaseTrace::new();
        let _lock = self.lock(false)?;
        let m = self.load(id)?;
        let t = m
            .tree(tree)
            .ok_or_else(|| CheckpointError::NotInCheckpoint {
                id: m.id.0.clone(),
                what: format!("tree {tree:?}"),
            })?;
        // The time cap covers the verify phase only: everything slow (reading, inflating
        // and hashing every blob) happens there, before the target changes. The apply
        // phase below is bounded by the byte and entry caps and is never cut short, so a
        // time cap cannot leave a half-restored target.
        let deadline = Deadline::new(self.limits.max_time);
        let (records, map, located, maps) = self.prepare_tree_traced(&m, t, &trace, deadline)?;
        deadline.check("verifying the checkpoint before restoring it")?;
        // Paths the kernel would refuse (target + path over PATH_MAX) would fail mid-way.
        let longest = records.iter().map(|r| r.path.len()).max().unwrap_or(0);
        let prefix = target.as_os_str().len() + 1;
        if prefix + longest >= PATH_MAX {
            return Err(CheckpointError::limit(
                format!(
                    "a path of {longest} bytes under {} exceeds the system's path limit",
                    target.display()
                ),
                (PATH_MAX - prefix.min(PATH_MAX)) as u64,
            ));
        }
        match fs::metadata(target) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(CheckpointError::invalid(format!(
                    "restore target {} is not a directory",
                    target.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(target).io("create", target)?
            }
            Err(e) => {
                return Err(CheckpointError::Io {
                    op: "stat",
                    path: target.to_path_buf(),
                    source: e,
                });
            }
        }
        let excludes = Excludes::new(target, &t.excludes)?;
        restore_records(
            target,
            &records,
            (&map, &located, &maps, &self.layers_dir),
            &excludes,
            self.threads,
            &trace,
            on_progress,
        )
    }
}

fn restore_records(
    target: &Path,
    records: &[Record],
    (map, located, maps, layers_dir): (&BlobMap, &Located, &FileMaps, &Path),
    excludes: &Excludes,
    threads: usize,
    trace: &crate::store::PhaseTrace,
    on_progress: OnRestoreProgress<'_>,
) -> Result<RestoreStats> {
    let mut stats = RestoreStats::default();

    // A. Remove what the checkpoint does not have; remember what is already there (nothing
    //    to do for an empty target, the common case of a restore into a new directory).
    let mut existing_dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut existing_files: HashMap<Vec<u8>, fs::Metadata> = HashMap::new();
    let mut existing_links: HashSet<Vec<u8>> = HashSet::new();
    // Excluded directories the checkpoint also has: left alone (not walked), but entries
    // the checkpoint has inside them are looked up one by one below.
    let mut excluded_dirs: HashSet<Vec<u8>> = HashSet::new();
    let empty = fs::read_dir(target)
        .io("read directory", target)?
        .next()
        .is_none();
    let wanted: HashMap<&[u8], &Record> = if empty {
        HashMap::new()
    } else {
        records.iter().map(|r| (r.path.as_slice(), r)).collect()
    };
    let mut it = WalkDir::new(target)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    while let Some(e) = if empty { None } else { it.next() } {
        let e = match e {
            Ok(e) => e,
            Err(err)
                if err
                    .io_error()
                    .is_some_and(|x| x.kind() == io::ErrorKind::NotFound) =>
            {
                continue;
            }
            Err(err) => {
                let path = err.path().unwrap_or(target).to_path_buf();
                let source = err
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed"));
                return Err(CheckpointError::Io {
                    op: "scan target",
                    path,
                    source,
                });
            }
        };
        let rel = e
            .path()
            .strip_prefix(target)
            .expect("under target")
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        let ft = e.file_type();
        if !excludes.is_empty() && excludes.matches(&rel, ft.is_dir()) {
            match wanted.get(rel.as_slice()) {
                None => {
                    if ft.is_dir() {
                        it.skip_current_dir();
                    }
                    continue;
                }
                Some(r) if r.kind == RawKind::Dir && ft.is_dir() => {
                    existing_dirs.insert(rel.clone());
                    excluded_dirs.insert(rel);
                    it.skip_current_dir();
                    continue;
                }
                // The checkpoint needs this path: handled like any other (an existing file
                // of the same kind is compared or replaced, another kind is removed), not
                // left in the way of the write that would then fail.
                Some(_) => {}
            }
        }
        let w = wanted.get(rel.as_slice());
        let keep = match (w.map(|r| r.kind), ft) {
            (Some(RawKind::Dir), ft) if ft.is_dir() => {
                existing_dirs.insert(rel.clone());
                true
            }
            (Some(RawKind::File), ft) if ft.is_file() => {
                let md = e.metadata().map_err(|x| CheckpointError::Io {
                    op: "stat",
                    path: e.path().to_path_buf(),
                    source: x
                        .into_io_error()
                        .unwrap_or_else(|| io::Error::other("stat failed")),
                })?;
                existing_files.insert(rel.clone(), md);
                true
            }
            (Some(RawKind::Symlink), ft) if ft.is_symlink() => {
                let same = fs::read_link(e.path())
                    .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == w.expect("some").link);
                if same {
                    existing_links.insert(rel.clone());
                }
                same
            }
            _ => false,
        };
        if !keep {
            remove_path(e.path(), ft.is_dir()).io("remove", e.path())?;
            stats.removed += 1;
            if ft.is_dir() {
                it.skip_current_dir();
            }
        }
    }

    if !excluded_dirs.is_empty() {
        classify_inside_excluded(
            target,
            records,
            &excluded_dirs,
            &mut existing_dirs,
            &mut existing_files,
            &mut existing_links,
            &mut stats,
        )?;
    }
    trace.mark("target scanned");
    // B. Directories level by level (parents first; the directories of one level in
    //    parallel), then symlinks (every parent is a directory of the tree); decide per file.
    let mut levels: Vec<Vec<&Record>> = Vec::new();
    for r in records.iter().filter(|r| r.kind == RawKind::Dir) {
        let depth = r.path.iter().filter(|b| **b == b'/').count();
        if levels.len() <= depth {
            levels.resize_with(depth + 1, Vec::new);
        }
        levels[depth].push(r);
    }
    for level in &levels {
        let workers = if level.len() >= 64 { threads } else { 1 };
        let created = parallel_map(level, workers, |r| -> Result<bool> {
            let abs = target.join(bytes_path(&r.path));
            if existing_dirs.contains(&r.path) {
                let md = fs::symlink_metadata(&abs).io("stat", &abs)?;
                if md.mode() & 0o700 != 0o700 {
                    fs::set_permissions(&abs, perm(md.mode() | 0o700)).io("chmod", &abs)?;
                }
                Ok(false)
            } else {
                fs::create_dir(&abs).io("create directory", &abs)?;
                Ok(true)
            }
        })?;
        stats.dirs_created += created.iter().filter(|c| **c).count() as u64;
    }
    let mut writes: Vec<FileJob<'_>> = Vec::new();
    let mut compares: Vec<&Record> = Vec::new();
    let mut mode_fixes: Vec<&Record> = Vec::new();
    for r in records {
        match r.kind {
            RawKind::Dir => {}
            RawKind::Symlink => {
                let abs = target.join(bytes_path(&r.path));
                if !existing_links.contains(&r.path) {
                    std::os::unix::fs::symlink(bytes_path(&r.link), &abs)
                        .io("create symlink", &abs)?;
                    stats.symlinks_created += 1;
                }
            }
            RawKind::File => match existing_files.get(&r.path) {
                None => writes.push(FileJob {
                    record: r,
                    replace: false,
                }),
                Some(md) if md.nlink() > 1 || md.len() != r.size => writes.push(FileJob {
                    record: r,
                    replace: true,
                }),
                Some(md) => {
                    let same_stat = !r.racy
                        && md.ino() == r.ino
                        && mtime_ns(md) == r.mtime_ns
                        && md
                            .ctime()
                            .saturating_mul(1_000_000_000)
                            .saturating_add(md.ctime_nsec())
                            == r.ctime_ns;
                    if same_stat {
                        if md.mode() & 0o777 != r.mode & 0o777 {
                            mode_fixes.push(r);
                        }
                        stats.files_unchanged += 1;
                    } else {
                        compares.push(r);
                    }
                }
            },
            _ => unreachable!("validate_tree admits only files, dirs and symlinks"),
        }
    }

    trace.mark("directories and symlinks made");
    // C. Files of equal size: hash them; rewrite the ones that differ.
    let differ = parallel_map(&compares, threads, |r| -> Result<bool> {
        let abs = target.join(bytes_path(&r.path));
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&abs)
            .io("open", &abs)?;
        let content = r.content.expect("file");
        if r.chunked {
            let m = maps.get(&content).ok_or_else(|| missing_map(&content))?;
            return differs_from_map(&mut f, m).io("read", &abs);
        }
        let mut h = blake3::Hasher::new();
        io::copy(&mut f, &mut h).io("read", &abs)?;
        Ok(h.finalize().as_bytes() != &content.0)
    })?;
    for (r, d) in compares.iter().zip(differ) {
        if d {
            writes.push(FileJob {
                record: r,
                replace: true,
            });
        } else {
            let md = fs::symlink_metadata(target.join(bytes_path(&r.path))).io("stat", target)?;
            if md.mode() & 0o777 != r.mode & 0o777 || mtime_ns(&md) != r.mtime_ns {
                mode_fixes.push(r);
            }
            stats.files_unchanged += 1;
        }
    }

    // D. Write files, grouped by the frame their content starts in.
    let (files_total, bytes_total) = records
        .iter()
        .filter(|r| r.kind == RawKind::File)
        .fold((0, 0), |(n, b), r| (n + 1, b + r.size));
    let (files_pending, bytes_pending) = writes
        .iter()
        .fold((0, 0), |(n, b), j| (n + 1, b + j.record.size));
    let progress = ProgressCounter::new(
        on_progress,
        RestoreProgress {
            files_done: files_total - files_pending,
            files_total,
            bytes_done: bytes_total - bytes_pending,
            bytes_total,
        },
    );
    let (chunked, whole): (Vec<FileJob<'_>>, Vec<FileJob<'_>>) =
        writes.into_iter().partition(|j| j.record.chunked);
    let (written, bytes) =
        write_files(target, &whole, map, located, layers_dir, threads, &progress)?;
    stats.files_written += written;
    stats.bytes_written += bytes;
    let (written, bytes) = write_chunked_files(
        target, &chunked, maps, located, layers_dir, threads, &progress,
    )?;
    stats.files_written += written;
    stats.bytes_written += bytes;
    trace.mark("files written");

    // E. Modes and mtimes of unchanged files, then directory modes (deepest first).
    for r in mode_fixes {
        let abs = target.join(bytes_path(&r.path));
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&abs)
            .io("open", &abs)?;
        f.set_permissions(perm(r.mode)).io("chmod", &abs)?;
        f.set_modified(system_time(r.mtime_ns))
            .io("set mtime", &abs)?;
    }
    for r in records.iter().rev().filter(|r| r.kind == RawKind::Dir) {
        let abs = target.join(bytes_path(&r.path));
        let md = fs::symlink_metadata(&abs).io("stat", &abs)?;
        if md.is_dir() && md.mode() & 0o777 != r.mode & 0o777 {
            fs::set_permissions(&abs, perm(r.mode)).io("chmod", &abs)?;
        }
    }
    trace.mark("modes set");
    Ok(stats)
}

fn open_dest(abs: &Path, replace: bool) -> Result<(File, PathBuf)> {
    let path = if replace {
        let name = format!(".parhelia-restore-{}-{}", std::process::id(), now_ns());
        abs.with_file_name(name)
    } else {
        abs.to_path_buf()
    };
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .io("create", &path)?;
    Ok((f, path))
}

fn finish_dest(f: File, tmp: &Path, abs: &Path, r: &Record, replace: bool) -> Result<()> {
    f.set_permissions(perm(r.mode)).io("chmod", tmp)?;
    f.set_modified(system_time(r.mtime_ns))
        .io("set mtime", tmp)?;
    drop(f);
    if replace {
        fs::rename(tmp, abs).io("replace", abs)?;
    }
    Ok(())
}

/// Blobs to read from one frame on: each with the files that need it.
type FrameBlobs<'j, 'r> = Vec<(IndexEntry, Vec<&'j FileJob<'r>>)>;
type FrameTask<'j, 'r> = ((BlobId, u64), FrameBlobs<'j, 'r>);

/// Writes every job's content; returns (files, bytes) written.
fn write_files(
    target: &Path,
    jobs: &[FileJob<'_>],
    map: &BlobMap,
    located: &Located,
    layers_dir: &Path,
    threads: usize,
    progress: &ProgressCounter<'_>,
) -> Result<(u64, u64)> {
    // blob -> jobs needing it; tasks = (layer, frame) -> blobs in header order.
    let mut by_blob: HashMap<BlobId, Vec<&FileJob<'_>>> = HashMap::new();
    for j in jobs {
        by_blob
            .entry(j.record.content.expect("file"))
            .or_default()
            .push(j);
    }
    let mut by_frame: HashMap<(BlobId, u64), FrameBlobs<'_, '_>> = HashMap::new();
    for (blob, js) in by_blob {
        let (layer, e) = *located
            .get(&blob)
            .ok_or_else(|| CheckpointError::corrupt(format!("content {blob} is missing")))?;
        by_frame
            .entry((layer, e.frame_offset))
            .or_default()
            .push((e, js));
    }
    let mut tasks: Vec<FrameTask<'_, '_>> = by_frame.into_iter().collect();
    tasks.sort_by_key(|t| t.0);
    for (_, blobs) in &mut tasks {
        blobs.sort_by_key(|(e, _)| e.header_offset);
    }
    // Where each frame ends (the next indexed frame of its layer, or the layer's data end),
    // so a frame is read with one exact positional read.
    let mut frame_ends: HashMap<BlobId, Vec<u64>> = HashMap::new();
    for ix in map.indexes() {
        let mut offsets: Vec<u64> = ix.entries().map(|e| e.frame_offset).collect();
        offsets.push(ix.data_size());
        offsets.sort_unstable();
        offsets.dedup();
        frame_ends.insert(ix.layer, offsets);
    }
    let span = |layer: &BlobId, frame: u64| -> u64 {
        frame_ends
            .get(layer)
            .and_then(|o| o.get(o.partition_point(|x| *x <= frame)))
            .map_or(FRAME_TARGET as u64, |end| end - frame)
    };
    let files = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    type WorkerState = (HashMap<BlobId, LayerReader>, FrameScratch);
    let states: std::sync::Mutex<Vec<WorkerState>> = std::sync::Mutex::new(Vec::new());
    parallel_map(&tasks, threads, |((layer, frame), blobs)| -> Result<()> {
        let (mut cache, mut scratch) = states.lock().expect("poisoned").pop().unwrap_or_default();
        if !cache.contains_key(layer) {
            cache.insert(*layer, LayerReader::open(layers_dir, layer)?);
        }
        let reader = cache.get_mut(layer).expect("inserted");
        // Files and bytes this frame's group wrote, reported when it is done.
        let mut group = (0u64, 0u64);
        let mut end = 0;
        for (e, _) in blobs {
            end = end.max(e.end()?);
        }
        let whole = end <= WHOLE_FRAME_MAX
            && reader.read_frame(*frame, span(layer, *frame), &mut scratch)?
            && scratch.frame.len() as u64 >= end;
        if whole {
            // The frame is in memory: check each member, then write it to every file that
            // has that content (no file is written from unverified bytes).
            for (e, js) in blobs {
                let at = e.header_offset as usize;
                let header: &[u8; 512] = scratch.frame[at..at + 512].try_into().expect("512 bytes");
                check_member_header(header, e)?;
                let data = &scratch.frame[at + 512..e.end()? as usize];
                if blake3::hash(data).as_bytes() != &e.blob.0 {
                    return Err(CheckpointError::corrupt(format!(
                        "blob {} content does not match its hash",
                        e.blob
                    )));
                }
                for j in js {
                    let abs = target.join(bytes_path(&j.record.path));
                    let (mut f, tmp) = open_dest(&abs, j.replace)?;
                    if let Err(err) = f.write_all(data) {
                        let _ = fs::remove_file(&tmp);
                        return Err(CheckpointError::Io {
                            op: "write",
                            path: abs,
                            source: err,
                        });
                    }
                    finish_dest(f, &tmp, &abs, j.record, j.replace)?;
                }
                files.fetch_add(js.len() as u64, Ordering::Relaxed);
                bytes.fetch_add(e.len * js.len() as u64, Ordering::Relaxed);
                group.0 += js.len() as u64;
                group.1 += e.len * js.len() as u64;
            }
        } else {
            let mut stream = reader.frames_at(*frame, 256 << 10)?;
            for (e, js) in blobs {
                let first = js[0];
                let abs = target.join(bytes_path(&first.record.path));
                let (mut f, tmp) = open_dest(&abs, first.replace)?;
                if let Err(err) = stream.read_member(e, &mut f) {
                    let _ = fs::remove_file(&tmp);
                    return Err(err);
                }
                finish_dest(f, &tmp, &abs, first.record, first.replace)?;
                for j in &js[1..] {
                    let dest = target.join(bytes_path(&j.record.path));
                    let (mut out, tmp2) = open_dest(&dest, j.replace)?;
                    let mut src = File::open(&abs).io("open", &abs)?;
                    io::copy(&mut src, &mut out).io("copy", &dest)?;
                    finish_dest(out, &tmp2, &dest, j.record, j.replace)?;
                }
                files.fetch_add(js.len() as u64, Ordering::Relaxed);
                bytes.fetch_add(e.len * js.len() as u64, Ordering::Relaxed);
                group.0 += js.len() as u64;
                group.1 += e.len * js.len() as u64;
            }
        }
        progress.add(group.0, group.1);
        states.lock().expect("poisoned").push((cache, scratch));
        Ok(())
    })?;
    Ok((files.into_inner(), bytes.into_inner()))
}

fn missing_map(content: &BlobId) -> CheckpointError {
    CheckpointError::corrupt(format!("chunk map {content} was not verified"))
}

/// Whether a file's bytes differ from what its chunk map describes (read once, hashed chunk
/// by chunk at the map's boundaries).
fn differs_from_map(f: &mut File, m: &FileMap) -> io::Result<bool> {
    use std::io::Read;
    let mut buf = vec![0u8; 256 << 10];
    for (id, len) in &m.chunks {
        let mut h = blake3::Hasher::new();
        let n = io::copy(&mut (&mut *f).take(*len), &mut h)?;
        if n != *len || h.finalize().as_bytes() != &id.0 {
            return Ok(true);
        }
    }
    // Anything after the last chunk is a difference too.
    Ok(f.read(&mut buf[..1])? != 0)
}

/// Writes chunked files, one file per task, each chunk from its checked copy (a frame
/// holding several consecutive chunks is decompressed once per file), every chunk hashed
/// again as it is written.
fn write_chunked_files(
    target: &Path,
    jobs: &[FileJob<'_>],
    maps: &FileMaps,
    located: &Located,
    layers_dir: &Path,
    threads: usize,
    progress: &ProgressCounter<'_>,
) -> Result<(u64, u64)> {
    if jobs.is_empty() {
        return Ok((0, 0));
    }
    let files = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    parallel_map(jobs, threads, |j| -> Result<()> {
        let content = j.record.content.expect("file");
        let m = maps.get(&content).ok_or_else(|| missing_map(&content))?;
        let abs = target.join(bytes_path(&j.record.path));
        let (mut f, tmp) = open_dest(&abs, j.replace)?;
        let written = (|| -> Result<()> {
            let mut readers: HashMap<BlobId, LayerReader> = HashMap::new();
            let mut scratch = FrameScratch::default();
            // The (layer, frame) now in `scratch.frame`.
            let mut held: Option<(BlobId, u64)> = None;
            for (id, len) in &m.chunks {
                let (layer, e) = *located
                    .get(id)
                    .ok_or_else(|| CheckpointError::corrupt(format!("content {id} is missing")))?;
                if e.len != *len {
                    return Err(CheckpointError::corrupt(format!(
                        "chunk {id} does not match its chunk map"
                    )));
                }
                let reader = match readers.entry(layer) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(LayerReader::open(layers_dir, &layer)?)
                    }
                };
                let end = e.end()?;
                let whole = end <= WHOLE_FRAME_MAX
                    && (held == Some((layer, e.frame_offset))
                        || reader.read_frame(e.frame_offset, end, &mut scratch)?)
                    && scratch.frame.len() as u64 >= end;
                if whole {
                    held = Some((layer, e.frame_offset));
                    let at = e.header_offset as usize;
                    let header: &[u8; 512] =
                        scratch.frame[at..at + 512].try_into().expect("512 bytes");
                    check_member_header(header, &e)?;
                    let data = &scratch.frame[at + 512..end as usize];
                    if blake3::hash(data).as_bytes() != &id.0 {
                        return Err(CheckpointError::corrupt(format!(
                            "blob {id} content does not match its hash"
                        )));
                    }
                    f.write_all(data).io("write", &abs)?;
                } else {
                    held = None;
                    reader
                        .frames_at(e.frame_offset, 256 << 10)?
                        .read_member(&e, &mut f)?;
                }
            }
            Ok(())
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        finish_dest(f, &tmp, &abs, j.record, j.replace)?;
        files.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(j.record.size, Ordering::Relaxed);
        progress.add(1, j.record.size);
        Ok(())
    })?;
    Ok((files.into_inner(), bytes.into_inner()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::limits::CLOCK_SKEW;
    use crate::store::MARK_HOOK;
    use crate::{ChangeHint, CreateOutcome, CreateRequest, Limits, Store, TreeSpec};

    use super::*;

    fn listing(root: &Path) -> BTreeMap<String, Vec<u8>> {
        WalkDir::new(root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                let data = if e.file_type().is_file() {
                    fs::read(e.path()).unwrap()
                } else {
                    b"<dir>".to_vec()
                };
                (rel, data)
            })
            .collect()
    }

    /// A store (one thread, so every phase runs on the test's thread) with a checkpoint
    /// of a small tree, and a target with local state that differs from it.
    fn setup(
        t: &Path,
    ) -> (
        Store,
        crate::CheckpointId,
        PathBuf,
        BTreeMap<String, Vec<u8>>,
    ) {
        let ws = t.join("ws");
        fs::create_dir_all(ws.join("src")).unwrap();
        for i in 0..20 {
            fs::write(ws.join(format!("src/f{i}.rs")), format!("fn f{i}() {{}}\n")).unwrap();
        }
        fs::write(ws.join("README"), "hello\n").unwrap();
        let store = Store::open(&t.join("store")).unwrap().with_threads(1);
        let request = CreateRequest {
            trees: vec![(
                TreeSpec {
                    name: "w".into(),
                    root: ws.clone(),
                    excludes: vec![],
                },
                ChangeHint::Unknown,
            )],
            parent: None,
            trigger: "manual".into(),
            message: None,
            metadata: serde_json::json!({}),
            skip_if_unchanged: false,
        };
        let CreateOutcome::Created(m) = store.create(&request).unwrap() else {
            panic!("unchanged")
        };
        let target = t.join("target");
        fs::create_dir_all(target.join("src")).unwrap();
        fs::write(target.join("precious.txt"), "local only\n").unwrap();
        fs::write(target.join("src/f1.rs"), "a local edit\n").unwrap();
        let store = Store::open(store.root())
            .unwrap()
            .with_threads(1)
            .with_limits(Limits {
                max_time: Duration::from_secs(60),
                ..Limits::default()
            });
        (store, m.id, target, listing(&ws))
    }

    /// Restores with this thread's clock moved two minutes forward (past the one-minute
    /// cap) at phase `at`.
    fn restore_with_clock_jump_at(
        store: &Store,
        id: &crate::CheckpointId,
        target: &Path,
        at: &'static str,
    ) -> Result<RestoreStats> {
        MARK_HOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |what: &str| {
                if what == at {
                    CLOCK_SKEW.with(|c| c.set(Duration::from_secs(120)));
                }
            }));
        });
        let out = store.restore_tree(id, "w", target);
        MARK_HOOK.with(|h| *h.borrow_mut() = None);
        CLOCK_SKEW.with(|c| c.set(Duration::ZERO));
        out
    }

    /// The time cap trips at the end of the verify phase: E624, the target untouched.
    #[test]
    fn a_time_cap_reached_while_verifying_leaves_the_target_untouched() {
        let t = tempfile::tempdir().unwrap();
        let (store, id, target, _) = setup(t.path());
        let before = listing(&target);
        let e = restore_with_clock_jump_at(&store, &id, &target, "contents verified").unwrap_err();
        assert_eq!(e.code(), "E624", "{e}");
        assert_eq!(listing(&target), before);
    }

    /// The cap passes once the target has started changing (local files already removed):
    /// the restore is not cut short half-way, it completes.
    #[test]
    fn a_time_cap_reached_after_the_target_started_changing_does_not_half_restore() {
        let t = tempfile::tempdir().unwrap();
        let (store, id, target, wanted) = setup(t.path());
        for at in ["target scanned", "directories and symlinks made"] {
            fs::write(target.join("precious.txt"), "local only\n").unwrap();
            fs::write(target.join("src/f1.rs"), "a local edit\n").unwrap();
            restore_with_clock_jump_at(&store, &id, &target, at)
                .unwrap_or_else(|e| panic!("clock jump at {at:?}: {e}"));
            assert_eq!(listing(&target), wanted, "clock jump at {at:?}");
        }
    }

    /// A zero cap is a forced trip: refused before anything changes.
    #[test]
    fn a_zero_time_cap_refuses_before_the_target_changes() {
        let t = tempfile::tempdir().unwrap();
        let (store, id, target, _) = setup(t.path());
        let store = store.with_limits(Limits {
            max_time: Duration::ZERO,
            ..Limits::default()
        });
        let before = listing(&target);
        let e = store.restore_tree(&id, "w", &target).unwrap_err();
        assert_eq!(e.code(), "E624", "{e}");
        assert_eq!(listing(&target), before);
    }

    /// The progress a restore reports: the target's identical files first, then what was
    /// written, never going down, ending at the tree's file count and bytes as the
    /// manifest records them; the increments are what the restore says it wrote.
    #[test]
    fn progress_counts_end_at_the_trees_totals() {
        for threads in [1, 4] {
            let t = tempfile::tempdir().unwrap();
            let (store, id, target, wanted) = setup(t.path());
            let store = store.with_threads(threads);
            let tree = store.load(&id).unwrap().tree("w").unwrap().clone();
            // Most of the tree already in place, one file edited since.
            store.restore_tree(&id, "w", &target).unwrap();
            fs::write(target.join("src/f1.rs"), "an edit after the restore\n").unwrap();
            let seen = std::sync::Mutex::new(Vec::new());
            let stats = store
                .restore_tree_reporting(&id, "w", &target, &|p| seen.lock().unwrap().push(p))
                .unwrap();
            assert_eq!(listing(&target), wanted);
            let seen = seen.into_inner().unwrap();
            let first = seen[0];
            let last = *seen.last().unwrap();
            assert_eq!(
                (last.files_done, last.bytes_done),
                (tree.file_count, tree.total_bytes),
                "threads {threads}: {seen:?}"
            );
            assert_eq!(
                (last.files_total, last.bytes_total),
                (tree.file_count, tree.total_bytes)
            );
            assert_eq!(first.files_done, stats.files_unchanged, "{seen:?}");
            assert_eq!(
                last.files_done - first.files_done,
                stats.files_written,
                "{seen:?}"
            );
            assert_eq!(
                last.bytes_done - first.bytes_done,
                stats.bytes_written,
                "{seen:?}"
            );
            assert!(
                stats.files_written > 0 && stats.files_unchanged > 0,
                "{stats:?}"
            );
            for pair in seen.windows(2) {
                assert!(
                    pair[1].files_done >= pair[0].files_done
                        && pair[1].bytes_done >= pair[0].bytes_done,
                    "{seen:?}"
                );
                assert_eq!(pair[0].files_total, pair[1].files_total);
            }
        }
    }
}
