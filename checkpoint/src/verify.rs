//! Checking a store's content blobs before anything uses them: every listed blob is
//! decompressed and hashed (frames in parallel), trying each candidate copy in turn, so a
//! restore (or a store's load) only ever writes bytes proven correct. Shared by
//! `store.rs` and `restore.rs`, so neither imports the other for it.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::codec::BlobId;
use crate::error::{CheckpointError, Result};
use crate::layer::{FrameScratch, IndexEntry, LayerReader, WHOLE_FRAME_MAX, check_member_header};
use crate::limits::Deadline;

/// Runs `f` over `items` on up to `threads` scoped threads; results in `items`' order,
/// the first error stops the rest.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    if threads <= 1 || items.len() == 1 {
        return items.iter().map(f).collect();
    }
    // Successive claims go to `workers` regions of the list far apart, so the workers
    // are usually busy in different parts of the tree: creating files in the same
    // directory (adjacent frames hold neighbouring files) serialises on its lock.
    let workers = threads.min(items.len());
    let per = items.len().div_ceil(workers);
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let parts: Vec<Result<Vec<(usize, R)>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while !abort.load(Ordering::Relaxed) {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= workers * per {
                            break;
                        }
                        let i = (k % workers) * per + k / workers;
                        if i >= items.len() {
                            continue;
                        }
                        match f(&items[i]) {
                            Ok(r) => out.push((i, r)),
                            Err(e) => {
                                abort.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("restore worker panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(items.len());
    for p in parts {
        all.extend(p?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Where each content blob of a restore is read from: a copy whose bytes were checked.
pub(crate) type Located = HashMap<BlobId, (BlobId, IndexEntry)>;

/// Whether an error condemns one copy of a blob (another copy may be good) rather than
/// the whole operation.
fn bad_copy(e: &CheckpointError) -> bool {
    matches!(
        e,
        CheckpointError::Corrupt { .. } | CheckpointError::UnsafeEntry { .. }
    )
}

/// Decompresses and hashes every listed content blob, checking each member's tar header
/// (a regular file named by its id, of the indexed size), frames in parallel: what a
/// restore will write is proven readable and correct before anything in the target
/// changes. Each blob comes with its candidate copies (`BlobMap::get_all`); the first
/// copy that checks out is the one returned (and the one a restore writes). Memory per
/// worker is one frame (`WHOLE_FRAME_MAX`) or a streaming buffer; a blob is never held
/// whole.
pub(crate) fn verify_contents(
    blobs: &[(BlobId, Vec<(BlobId, IndexEntry)>)],
    layers_dir: &Path,
    threads: usize,
    deadline: Deadline,
) -> Result<Located> {
    let mut by_frame: HashMap<(BlobId, u64), Vec<IndexEntry>> = HashMap::new();
    for (_, cands) in blobs {
        let (layer, e) = cands[0];
        by_frame.entry((layer, e.frame_offset)).or_default().push(e);
    }
    let mut tasks: Vec<((BlobId, u64), Vec<IndexEntry>)> = by_frame.into_iter().collect();
    tasks.sort_by_key(|t| t.0);
    for (_, es) in &mut tasks {
        es.sort_by_key(|e| e.header_offset);
        es.dedup_by_key(|e| e.blob);
    }
    type WorkerState = (HashMap<BlobId, LayerReader>, FrameScratch);
    let states: std::sync::Mutex<Vec<WorkerState>> = std::sync::Mutex::new(Vec::new());
    // Per task: the blobs whose first copy failed, with the error.
    let failed = parallel_map(
        &tasks,
        threads,
        |((layer, frame), es)| -> Result<Vec<(BlobId, CheckpointError)>> {
            deadline.check("verifying contents")?;
            let (mut cache, mut scratch) =
                states.lock().expect("poisoned").pop().unwrap_or_default();
            if !cache.contains_key(layer) {
                cache.insert(*layer, LayerReader::open(layers_dir, layer)?);
            }
            let reader = cache.get_mut(layer).expect("inserted");
            let mut failed = Vec::new();
            let mut end = 0;
            for e in es {
                end = end.max(e.end()?);
            }
            let whole = end <= WHOLE_FRAME_MAX
                && match reader.read_frame(*frame, end, &mut scratch) {
                    Ok(w) => w,
                    Err(e) if bad_copy(&e) => false,
                    Err(e) => return Err(e),
                }
                && scratch.frame.len() as u64 >= end;
            if whole {
                for e in es {
                    if let Err(err) = check_in_frame(&scratch.frame, e) {
                        failed.push((e.blob, err));
                    }
                }
            } else {
                let mut stream = reader.frames_at(*frame, 256 << 10)?.with_deadline(deadline);
                let mut broken = false;
                for e in es {
                    if broken {
                        failed.push((
                            e.blob,
                            CheckpointError::corrupt(format!(
                                "blob {} follows damaged data in its layer",
                                e.blob
                            )),
                        ));
                        continue;
                    }
                    match stream.read_member(e, &mut io::sink()) {
                        Ok(()) => {}
                        Err(err) if bad_copy(&err) => {
                            failed.push((e.blob, err));
                            broken = true;
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
            states.lock().expect("poisoned").push((cache, scratch));
            Ok(failed)
        },
    )?;
    let failed: HashMap<BlobId, CheckpointError> = failed.into_iter().flatten().collect();
    let mut located = Located::with_capacity(blobs.len());
    let mut readers: HashMap<BlobId, LayerReader> = HashMap::new();
    for (blob, cands) in blobs {
        let Some(first_err) = failed.get(blob) else {
            located.insert(*blob, cands[0]);
            continue;
        };
        // Other copies, one blob at a time (rare: only damaged or planted stores get here).
        let mut found = None;
        for (layer, e) in &cands[1..] {
            deadline.check("verifying contents")?;
            if !readers.contains_key(layer) {
                readers.insert(*layer, LayerReader::open(layers_dir, layer)?);
            }
            let reader = readers.get_mut(layer).expect("inserted");
            let mut stream = reader
                .frames_at(e.frame_offset, 64 << 10)?
                .with_deadline(deadline);
            match stream.read_member(e, &mut io::sink()) {
                Ok(()) => {
                    found = Some((*layer, *e));
                    break;
                }
                Err(err) if bad_copy(&err) => {}
                Err(err) => return Err(err),
            }
        }
        match found {
            Some(f) => {
                located.insert(*blob, f);
            }
            None => {
                return Err(match first_err {
                    CheckpointError::UnsafeEntry { path, reason } => {
                        CheckpointError::unsafe_entry(path.clone(), reason.clone())
                    }
                    other => CheckpointError::corrupt(other.to_string()),
                });
            }
        }
    }
    Ok(located)
}

/// Checks one member of a frame held in memory: its header and its bytes' hash.
fn check_in_frame(frame: &[u8], e: &IndexEntry) -> Result<()> {
    let at = e.header_offset as usize;
    let end = e.end()? as usize;
    let header: &[u8; 512] = frame[at..at + 512].try_into().expect("512 bytes");
    check_member_header(header, e)?;
    if blake3::hash(&frame[at + 512..end]).as_bytes() != &e.blob.0 {
        return Err(CheckpointError::corrupt(format!(
            "blob {} content does not match its hash",
            e.blob
        )));
    }
    Ok(())
}
