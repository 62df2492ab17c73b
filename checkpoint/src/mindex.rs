//! The merged blob index (`index.cache`): every complete layer's index entries in one
//! sorted file, so `create` finds any blob without reading and checksumming every layer's
//! index trailer on each open (docs/formats/checkpoint.md, "Merged index cache").
//!
//! It is only a cache. No manifest refers to it; it is derived from the layers' own
//! indexes and is rebuilt whenever it is missing, damaged, or disagrees with `layers/`.
//! It records each layer's name, size and mtime, and an entry is used only while its layer
//! is still present with that size and mtime; layers it does not know are read from their
//! own trailers (the overlay, see `store.rs`). Readers of checkpoints (`restore_tree`,
//! `verify`, `read_file`, `diff`) never use it: they read the layers' own indexes.
//!
//! Promises: every part of the file is checksummed and checked before use (the header as a
//! whole when opened; each bucket of entries and the locator when first needed); a part
//! that fails its check is never used — lookups then fall back to the layers' own indexes
//! and the cache is rewritten after the next `create`. Lookups load only the buckets they
//! touch, so a checkpoint of a few files reads a few KiB of it, not the whole index.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::codec::BlobId;
use crate::error::{IoContext, Result};
use crate::layer::{BlobKind, IndexEntry, RawIndex, read_index};

pub const CACHE_FILE: &str = "index.cache";
const MAGIC: &[u8; 8] = b"PHCKMIX\n";
const VERSION: u32 = 1;
const FIXED_LEN: usize = 32;
const LAYER_LEN: usize = 64;
const ENTRY_LEN: usize = 57;
const LOC_LEN: usize = 12;
const BUCKET_SUM_LEN: usize = 16;
/// Average entries per bucket the writer aims for.
const BUCKET_TARGET: u64 = 64;
const MAX_BITS: u32 = 20;
/// A bucket of more than this many times the average (or `BUCKET_MIN_CAP` entries,
/// whichever is more) is refused before it is read: the writer spreads entries by hash, so
/// only a forged file comes near it, and it bounds what one lookup allocates.
const BUCKET_CAP_FACTOR: u64 = 64;
const BUCKET_MIN_CAP: u64 = 4096;
/// A cache naming more layers than are present by more than this is stale enough to
/// rebuild; it also bounds the header a forged file can make `open` read.
const STALE_LAYER_SLACK: u64 = 1024;

/// The bucket bits the writer chooses for `count` entries; `open` accepts no other.
fn bits_for(count: u64) -> u32 {
    let mut bits = 0;
    while bits < MAX_BITS && (count >> bits) > BUCKET_TARGET {
        bits += 1;
    }
    bits
}

/// The most entries a bucket may hold in a cache of `count` entries in `1 << bits` buckets.
fn bucket_cap(count: u64, bits: u32) -> u64 {
    ((count >> bits).max(1) * BUCKET_CAP_FACTOR).max(BUCKET_MIN_CAP)
}

/// Layer states in the cache's layer table.
const STATE_INDEXED: u8 = 0;
/// The layer's index could not be read when the cache was built: it has no entries (its
/// content is stored again by the next `create` that needs it, as before the cache).
const STATE_UNREADABLE: u8 = 1;

/// A layer as the cache knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedLayer {
    pub id: BlobId,
    pub file_size: u64,
    pub mtime_ns: i64,
    pub data_size: u64,
    pub unreadable: bool,
}

/// The stat identity of a layer file in `layers/`: (size, mtime in ns).
pub type LayerStat = (u64, i64);

/// An opened `index.cache`.
pub struct MergedIndex {
    layers_dir: PathBuf,
    file: File,
    layers: Vec<CachedLayer>,
    /// Per layer: still present in `layers/` with the recorded size and mtime.
    usable: Vec<bool>,
    bits: u32,
    starts: Vec<u32>,
    sums: Vec<[u8; BUCKET_SUM_LEN]>,
    locator_sum: [u8; 32],
    entries_at: u64,
    count: u64,
    buckets: Vec<OnceLock<Option<Box<[u8]>>>>,
    locator: OnceLock<Option<Box<[u8]>>>,
    damaged: AtomicBool,
    /// The layers' own indexes, read only if a part of the cache turns out damaged.
    fallback: OnceLock<Vec<Arc<RawIndex>>>,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn sum16(data: &[u8]) -> [u8; BUCKET_SUM_LEN] {
    let h = blake3::hash(data);
    h.as_bytes()[..BUCKET_SUM_LEN].try_into().expect("16 bytes")
}

fn bucket_of(bits: u32, blob: &[u8]) -> usize {
    if bits == 0 {
        0
    } else {
        (u32::from_be_bytes(blob[..4].try_into().expect("4 bytes")) >> (32 - bits)) as usize
    }
}

fn header_len(layers: usize, bits: u32) -> usize {
    let buckets = 1usize << bits;
    FIXED_LEN + layers * LAYER_LEN + (buckets + 1) * 4 + buckets * BUCKET_SUM_LEN + 32 + 32
}

impl MergedIndex {
    /// Opens the cache at `root/index.cache` and checks its header against the layers
    /// present now. `None` if it is missing or its header is damaged (the caller rebuilds).
    pub fn open(
        root: &Path,
        layers_dir: &Path,
        present: &std::collections::BTreeMap<BlobId, LayerStat>,
    ) -> Option<MergedIndex> {
        let file = crate::layer::open_store_file(&root.join(CACHE_FILE), "index cache").ok()?;
        let size = file.metadata().ok()?.len();
        let mut fixed = [0u8; FIXED_LEN];
        file.read_exact_at(&mut fixed, 0).ok()?;
        if &fixed[..8] != MAGIC || u32_at(&fixed, 8) != VERSION {
            return None;
        }
        let bits = u32_at(&fixed, 12);
        let nlayers = u64_at(&fixed, 16);
        let count = u64_at(&fixed, 24);
        // Only what the writer makes, and nothing a forged (sparse) file could inflate:
        // the bits the writer picks for the count, and a layer table about the size of
        // `layers/`.
        // Each entry names a blob in a present layer, whose own index spends
        // `INDEX_ENTRY_LEN` bytes of the layer file on it: more entries than the layers
        // could index is a forgery (or a cache of layers since removed: rebuilt either way).
        let indexable = present
            .values()
            .map(|(size, _)| size / crate::layer::INDEX_ENTRY_LEN as u64)
            .fold(0u64, u64::saturating_add);
        if bits > MAX_BITS
            || count > u64::from(u32::MAX)
            || count > indexable
            || bits != bits_for(count)
            || nlayers > present.len() as u64 + STALE_LAYER_SLACK
        {
            return None;
        }
        let hlen = header_len(nlayers as usize, bits);
        if size != hlen as u64 + count * (ENTRY_LEN + LOC_LEN) as u64 {
            return None;
        }
        let mut h = vec![0u8; hlen];
        file.read_exact_at(&mut h, 0).ok()?;
        if BlobId::of(&h[..hlen - 32]).0 != h[hlen - 32..] {
            return None;
        }
        let mut o = FIXED_LEN;
        let mut layers = Vec::with_capacity(nlayers as usize);
        for _ in 0..nlayers {
            let id = BlobId(h[o..o + 32].try_into().expect("32 bytes"));
            let state = h[o + 56];
            if state > STATE_UNREADABLE || layers.last().is_some_and(|l: &CachedLayer| l.id >= id) {
                return None;
            }
            layers.push(CachedLayer {
                id,
                file_size: u64_at(&h, o + 32),
                mtime_ns: u64_at(&h, o + 40) as i64,
                data_size: u64_at(&h, o + 48),
                unreadable: state == STATE_UNREADABLE,
            });
            o += LAYER_LEN;
        }
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        for i in 0..=buckets {
            starts.push(u32_at(&h, o + 4 * i));
        }
        o += (buckets + 1) * 4;
        if starts[0] != 0
            || u64::from(starts[buckets]) != count
            || starts.windows(2).any(|w| w[0] > w[1])
        {
            return None;
        }
        let sums = (0..buckets)
            .map(|i| {
                h[o + i * BUCKET_SUM_LEN..o + (i + 1) * BUCKET_SUM_LEN]
                    .try_into()
                    .expect("16 bytes")
            })
            .collect();
        o += buckets * BUCKET_SUM_LEN;
        let locator_sum = h[o..o + 32].try_into().expect("32 bytes");
        let usable = layers
            .iter()
            .map(|l| present.get(&l.id) == Some(&(l.file_size, l.mtime_ns)))
            .collect();
        Some(MergedIndex {
            layers_dir: layers_dir.to_path_buf(),
            file,
            layers,
            usable,
            bits,
            starts,
            sums,
            locator_sum,
            entries_at: hlen as u64,
            count,
            buckets: (0..buckets).map(|_| OnceLock::new()).collect(),
            locator: OnceLock::new(),
            damaged: AtomicBool::new(false),
            fallback: OnceLock::new(),
        })
    }

    /// Layers the cache covers and that are still usable (present, same size and mtime).
    pub fn usable_layers(&self) -> impl Iterator<Item = &CachedLayer> + '_ {
        self.layers
            .iter()
            .zip(&self.usable)
            .filter(|(_, u)| **u)
            .map(|(l, _)| l)
    }

    /// Whether the file no longer describes `layers/` exactly or a part of it is damaged:
    /// it should be rewritten.
    pub fn stale(&self) -> bool {
        self.damaged.load(Ordering::Relaxed) || self.usable.iter().any(|u| !u)
    }

    pub fn entry_count(&self) -> u64 {
        self.count
    }

    fn read_bucket(&self, b: usize) -> Option<Box<[u8]>> {
        let (s, e) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        if (e - s) as u64 > bucket_cap(self.count, self.bits) {
            return None;
        }
        let mut buf = vec![0u8; (e - s) * ENTRY_LEN];
        self.file
            .read_exact_at(&mut buf, self.entries_at + (s * ENTRY_LEN) as u64)
            .ok()?;
        if sum16(&buf) != self.sums[b] {
            return None;
        }
        // Entries sorted by blob (a blob may be in several layers), all in this bucket, each
        // naming a layer of the table with a frame inside its data.
        let mut prev: Option<&[u8]> = None;
        for e in buf.chunks_exact(ENTRY_LEN) {
            let blob = &e[..32];
            if prev.is_some_and(|p| p > blob) || bucket_of(self.bits, blob) != b {
                return None;
            }
            prev = Some(blob);
            let layer = u32_at(e, 33) as usize;
            let end = u64::from(u32_at(e, 45))
                .checked_add(512)
                .and_then(|x| x.checked_add(u64_at(e, 49)));
            if e[32] > 1
                || layer >= self.layers.len()
                || u64_at(e, 37) >= self.layers[layer].data_size
                || end.is_none()
            {
                return None;
            }
        }
        Some(buf.into_boxed_slice())
    }

    fn bucket(&self, b: usize) -> Option<&[u8]> {
        let r = self.buckets[b]
            .get_or_init(|| self.read_bucket(b))
            .as_deref();
        if r.is_none() {
            self.damaged.store(true, Ordering::Relaxed);
        }
        r
    }

    fn decode(&self, e: &[u8]) -> (usize, IndexEntry) {
        let layer = u32_at(e, 33) as usize;
        (
            layer,
            IndexEntry {
                blob: BlobId(e[..32].try_into().expect("32 bytes")),
                kind: if e[32] == 0 {
                    BlobKind::Content
                } else {
                    BlobKind::Chunk
                },
                frame_offset: u64_at(e, 37),
                header_offset: u32_at(e, 45),
                len: u64_at(e, 49),
            },
        )
    }

    fn fallback_get(&self, blob: &BlobId) -> Option<(BlobId, IndexEntry)> {
        let indexes = self.fallback.get_or_init(|| {
            self.usable_layers()
                .filter(|l| !l.unreadable)
                .filter_map(|l| read_index(&self.layers_dir, &l.id).ok())
                .collect()
        });
        indexes
            .iter()
            .find_map(|ix| ix.find(blob).map(|e| (ix.layer, e)))
    }

    /// Where a blob is, in a usable layer.
    pub fn get(&self, blob: &BlobId) -> Option<(BlobId, IndexEntry)> {
        let b = bucket_of(self.bits, &blob.0);
        let Some(data) = self.bucket(b) else {
            return self.fallback_get(blob);
        };
        let n = data.len() / ENTRY_LEN;
        let at = |i: usize| &data[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if at(mid)[..32] < blob.0[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo..n)
            .map(at)
            .take_while(|e| e[..32] == blob.0[..])
            .map(|e| self.decode(e))
            .find(|(l, _)| self.usable[*l])
            .map(|(l, e)| (self.layers[l].id, e))
    }

    /// Every usable location of a blob (a blob may be in several layers).
    pub fn get_all(&self, blob: &BlobId) -> Vec<(BlobId, IndexEntry)> {
        let b = bucket_of(self.bits, &blob.0);
        let Some(data) = self.bucket(b) else {
            return self.fallback_get(blob).into_iter().collect();
        };
        data.chunks_exact(ENTRY_LEN)
            .filter(|e| e[..32] == blob.0[..])
            .map(|e| self.decode(e))
            .filter(|(l, _)| self.usable[*l])
            .map(|(l, e)| (self.layers[l].id, e))
            .collect()
    }

    fn read_locator(&self) -> Option<Box<[u8]>> {
        let mut buf = vec![0u8; self.count as usize * LOC_LEN];
        self.file
            .read_exact_at(&mut buf, self.entries_at + self.count * ENTRY_LEN as u64)
            .ok()?;
        if BlobId::of(&buf).0 != self.locator_sum {
            return None;
        }
        if buf
            .chunks_exact(LOC_LEN)
            .any(|e| u32_at(e, 8) as usize >= self.layers.len())
        {
            return None;
        }
        Some(buf.into_boxed_slice())
    }

    /// The layer holding a blob **known to be in the store** (the contents of a parent
    /// checkpoint's entries). Uses the locator — each entry's first 8 id bytes and its
    /// layer, 12 bytes per blob instead of 57 — so locating thousands of blobs reads a
    /// fraction of the index. A prefix shared by several entries, or a layer that is no
    /// longer usable, falls back to the exact lookup. (A blob absent from the store could
    /// only be mislocated if another blob shared its 64-bit prefix; restore checks every
    /// blob against its layer's own index anyway.)
    pub fn layer_of(&self, blob: &BlobId) -> Option<BlobId> {
        let loc = self.locator.get_or_init(|| self.read_locator()).as_deref();
        let Some(loc) = loc else {
            self.damaged.store(true, Ordering::Relaxed);
            return self.get(blob).map(|(l, _)| l);
        };
        let b = bucket_of(self.bits, &blob.0);
        let (s, e) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        let prefix = &blob.0[..8];
        let at = |i: usize| &loc[i * LOC_LEN..(i + 1) * LOC_LEN];
        let (mut lo, mut hi) = (s, e);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if &at(mid)[..8] < prefix {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < e && &at(lo)[..8] == prefix && (lo + 1 >= e || &at(lo + 1)[..8] != prefix) {
            let layer = u32_at(at(lo), 8) as usize;
            if self.usable[layer] {
                return Some(self.layers[layer].id);
            }
        }
        self.get(blob).map(|(l, _)| l)
    }

    /// Every entry of a usable layer, for rewriting the cache; `None` if a part is damaged.
    pub fn usable_entries(&self) -> Option<Vec<(BlobId, IndexEntry)>> {
        let mut out = Vec::with_capacity(self.count as usize);
        for b in 0..self.buckets.len() {
            let data = self.bucket(b)?;
            for e in data.chunks_exact(ENTRY_LEN) {
                let (l, entry) = self.decode(e);
                if self.usable[l] {
                    out.push((self.layers[l].id, entry));
                }
            }
        }
        Some(out)
    }
}

/// Writes a new `index.cache` for `layers` (any order) and `entries` (layer id, entry),
/// via a temp file in `tmp_dir` and a rename. Not fsync'd: a cache torn by a crash fails
/// its checksums and is rebuilt.
pub fn write_cache(
    root: &Path,
    tmp_dir: &Path,
    mut layers: Vec<CachedLayer>,
    entries: Vec<(BlobId, IndexEntry)>,
) -> Result<()> {
    layers.sort_by_key(|l| l.id);
    layers.dedup_by_key(|l| l.id);
    let pos = |id: &BlobId| layers.binary_search_by_key(id, |l| l.id).ok();
    let mut rows: Vec<(u32, IndexEntry)> = entries
        .into_iter()
        .filter_map(|(l, e)| pos(&l).map(|p| (p as u32, e)))
        .filter(|(p, e)| e.frame_offset < layers[*p as usize].data_size)
        .collect();
    rows.sort_unstable_by(|a, b| a.1.blob.cmp(&b.1.blob).then(a.0.cmp(&b.0)));
    rows.dedup_by(|a, b| a.0 == b.0 && a.1.blob == b.1.blob);
    let count = rows.len() as u64;
    let bits = bits_for(count);
    let buckets = 1usize << bits;
    let hlen = header_len(layers.len(), bits);
    let mut out = Vec::with_capacity(hlen + rows.len() * (ENTRY_LEN + LOC_LEN));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(&(layers.len() as u64).to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for l in &layers {
        out.extend_from_slice(&l.id.0);
        out.extend_from_slice(&l.file_size.to_le_bytes());
        out.extend_from_slice(&(l.mtime_ns as u64).to_le_bytes());
        out.extend_from_slice(&(if l.unreadable { 0 } else { l.data_size }).to_le_bytes());
        out.push(if l.unreadable {
            STATE_UNREADABLE
        } else {
            STATE_INDEXED
        });
        out.extend_from_slice(&[0u8; 7]);
    }
    let mut starts = vec![0u32; buckets + 1];
    for (_, e) in &rows {
        starts[bucket_of(bits, &e.blob.0) + 1] += 1;
    }
    for i in 0..buckets {
        starts[i + 1] += starts[i];
    }
    for s in &starts {
        out.extend_from_slice(&s.to_le_bytes());
    }
    let mut entries = Vec::with_capacity(rows.len() * ENTRY_LEN);
    let mut locator = Vec::with_capacity(rows.len() * LOC_LEN);
    for (p, e) in &rows {
        entries.extend_from_slice(&e.blob.0);
        entries.push(e.kind as u8);
        entries.extend_from_slice(&p.to_le_bytes());
        entries.extend_from_slice(&e.frame_offset.to_le_bytes());
        entries.extend_from_slice(&e.header_offset.to_le_bytes());
        entries.extend_from_slice(&e.len.to_le_bytes());
        locator.extend_from_slice(&e.blob.0[..8]);
        locator.extend_from_slice(&p.to_le_bytes());
    }
    for b in 0..buckets {
        let (s, e) = (starts[b] as usize, starts[b + 1] as usize);
        out.extend_from_slice(&sum16(&entries[s * ENTRY_LEN..e * ENTRY_LEN]));
    }
    out.extend_from_slice(&BlobId::of(&locator).0);
    let sum = BlobId::of(&out);
    out.extend_from_slice(&sum.0);
    debug_assert_eq!(out.len(), hlen);
    out.extend_from_slice(&entries);
    out.extend_from_slice(&locator);
    let tmp = tmp_dir.join(format!("{CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &out).io("write index cache", &tmp)?;
    let dest = root.join(CACHE_FILE);
    std::fs::rename(&tmp, &dest).io("rename index cache", &dest)?;
    Ok(())
}

/// The blob → location map over a set of layers: their own indexes (searched in order),
/// then, for `create`, the store's merged index cache (`mindex.rs`).
#[derive(Default, Clone)]
pub struct BlobMap {
    indexes: Vec<Arc<RawIndex>>,
    merged: Option<Arc<MergedIndex>>,
}

impl BlobMap {
    pub fn new(merged: Option<Arc<MergedIndex>>, indexes: Vec<Arc<RawIndex>>) -> Self {
        BlobMap { indexes, merged }
    }

    pub fn add(&mut self, index: Arc<RawIndex>) {
        self.indexes.push(index);
    }

    pub fn get(&self, blob: &BlobId) -> Option<(BlobId, IndexEntry)> {
        self.indexes
            .iter()
            .find_map(|ix| ix.find(blob).map(|e| (ix.layer, e)))
            .or_else(|| self.merged.as_ref()?.get(blob))
    }

    /// Every location of a blob: its layers' own indexes in order, then the merged
    /// cache's. A blob's id is only a claim until its bytes are hashed, so readers that
    /// find one copy damaged (or planted) try the others.
    pub fn get_all(&self, blob: &BlobId) -> Vec<(BlobId, IndexEntry)> {
        let mut out: Vec<(BlobId, IndexEntry)> = self
            .indexes
            .iter()
            .filter_map(|ix| ix.find(blob).map(|e| (ix.layer, e)))
            .collect();
        if let Some(m) = &self.merged {
            for c in m.get_all(blob) {
                if !out.iter().any(|(l, _)| *l == c.0) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The layer holding a blob that is known to be in the store (see
    /// `MergedIndex::layer_of`); cheaper than `get` for many lookups.
    pub fn layer_of(&self, blob: &BlobId) -> Option<BlobId> {
        self.indexes
            .iter()
            .find_map(|ix| ix.find(blob).map(|_| ix.layer))
            .or_else(|| self.merged.as_ref()?.layer_of(blob))
    }

    pub fn contains(&self, blob: &BlobId) -> bool {
        self.get(blob).is_some()
    }

    /// (layer id, layer file size) of every layer whose own index is in the map (not the
    /// layers covered by the merged cache).
    pub fn layers(&self) -> impl Iterator<Item = (BlobId, u64)> + '_ {
        self.indexes.iter().map(|ix| (ix.layer, ix.file_size))
    }

    /// The layers' own indexes in the map.
    pub fn indexes(&self) -> &[Arc<RawIndex>] {
        &self.indexes
    }

    pub fn merged(&self) -> Option<&Arc<MergedIndex>> {
        self.merged.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn layer(n: u8, data_size: u64) -> CachedLayer {
        CachedLayer {
            id: BlobId([n; 32]),
            // Large enough to hold the index entries the tests put in it, as a real
            // layer file does (`open` refuses more entries than its layers could index).
            file_size: 1_000_000 + u64::from(n),
            mtime_ns: 7 * i64::from(n),
            data_size,
            unreadable: false,
        }
    }

    fn entry(i: u32, kind: BlobKind) -> IndexEntry {
        IndexEntry {
            blob: BlobId::of(&i.to_le_bytes()),
            kind,
            frame_offset: u64::from(i % 50),
            header_offset: i,
            len: u64::from(i) * 3,
        }
    }

    fn present(layers: &[CachedLayer]) -> BTreeMap<BlobId, LayerStat> {
        layers
            .iter()
            .map(|l| (l.id, (l.file_size, l.mtime_ns)))
            .collect()
    }

    #[test]
    fn every_entry_is_found_at_every_size() {
        for n in [0u32, 1, 2, 63, 64, 65, 200, 5000] {
            let t = tempfile::tempdir().unwrap();
            let layers = vec![layer(1, 100), layer(2, 100), layer(3, 100)];
            let entries: Vec<(BlobId, IndexEntry)> = (0..n)
                .map(|i| {
                    let kind = if i % 7 == 0 {
                        BlobKind::Chunk
                    } else {
                        BlobKind::Content
                    };
                    (layers[(i % 3) as usize].id, entry(i, kind))
                })
                .collect();
            write_cache(t.path(), t.path(), layers.clone(), entries.clone()).unwrap();
            let m = MergedIndex::open(t.path(), t.path(), &present(&layers)).unwrap();
            assert!(!m.stale());
            assert_eq!(m.entry_count(), u64::from(n));
            for (l, e) in &entries {
                assert_eq!(m.get(&e.blob), Some((*l, *e)), "n={n}");
                assert_eq!(m.layer_of(&e.blob), Some(*l), "n={n}");
            }
            for i in n..n + 50 {
                assert_eq!(m.get(&entry(i, BlobKind::Content).blob), None);
            }
            let mut all = m.usable_entries().unwrap();
            all.sort_by_key(|(_, e)| e.blob);
            let mut want = entries.clone();
            want.sort_by_key(|(_, e)| e.blob);
            assert_eq!(all, want);
        }
    }

    #[test]
    fn entries_of_changed_or_missing_layers_are_not_used() {
        let t = tempfile::tempdir().unwrap();
        let layers = vec![layer(1, 100), layer(2, 100)];
        let e = entry(9, BlobKind::Content);
        // The same blob in both layers, and one blob only in layer 1.
        let only1 = entry(10, BlobKind::Content);
        let entries = vec![(layers[0].id, e), (layers[1].id, e), (layers[0].id, only1)];
        write_cache(t.path(), t.path(), layers.clone(), entries).unwrap();
        let m = MergedIndex::open(t.path(), t.path(), &present(&layers)).unwrap();
        assert_eq!(m.get(&e.blob).unwrap().0, layers[0].id);
        // Layer 1 rewritten since (another mtime) and layer 2 still there.
        let mut now = present(&layers);
        now.get_mut(&layers[0].id).unwrap().1 += 1;
        let m = MergedIndex::open(t.path(), t.path(), &now).unwrap();
        assert!(m.stale());
        assert_eq!(m.get(&e.blob).unwrap().0, layers[1].id);
        assert_eq!(m.layer_of(&e.blob), Some(layers[1].id));
        assert_eq!(m.get(&only1.blob), None);
        assert_eq!(m.layer_of(&only1.blob), None);
        // Layer 2 gone.
        let mut now = present(&layers);
        now.remove(&layers[1].id);
        let m = MergedIndex::open(t.path(), t.path(), &now).unwrap();
        assert_eq!(m.usable_layers().count(), 1);
        assert_eq!(m.get(&e.blob).unwrap().0, layers[0].id);
    }

    #[test]
    fn any_damage_is_detected_and_never_used() {
        let t = tempfile::tempdir().unwrap();
        let layers = vec![layer(1, 100), layer(2, 100)];
        let entries: Vec<(BlobId, IndexEntry)> = (0..300)
            .map(|i| (layers[(i % 2) as usize].id, entry(i, BlobKind::Content)))
            .collect();
        write_cache(t.path(), t.path(), layers.clone(), entries.clone()).unwrap();
        let path = t.path().join(CACHE_FILE);
        let good = std::fs::read(&path).unwrap();
        for at in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            // Damage is either refused at open, or detected when the damaged part is read:
            // lookups then come from the layers' own indexes, which do not exist here.
            let Some(m) = MergedIndex::open(t.path(), t.path(), &present(&layers)) else {
                continue;
            };
            for (l, e) in &entries {
                if let Some(found) = m.get(&e.blob) {
                    assert_eq!(found, (*l, *e), "flip at {at}");
                }
                if let Some(found) = m.layer_of(&e.blob) {
                    assert_eq!(found, *l, "flip at {at}");
                }
            }
            assert!(
                m.stale() || m.usable_entries().is_none(),
                "flip at {at} went unnoticed"
            );
        }
        for n in [0, 10, 32, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..n]).unwrap();
            assert!(MergedIndex::open(t.path(), t.path(), &present(&layers)).is_none());
        }
    }
}
