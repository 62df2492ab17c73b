//! Layers: write-once tar+zstd files that hold blobs, and their index files.
//!
//! A layer is a tar stream (one regular-file member per blob, named by the blob's blake3
//! hex, followed by the end-of-archive marker) compressed as a sequence of independent
//! zstd frames, so `zstd -dc layer | tar -t` works and a reader can start decompressing at
//! any frame boundary. Small blobs are packed together into frames of about `FRAME_TARGET`
//! bytes; a large blob spans consecutive frames. A layer is named by the blake3 of its
//! compressed bytes (its checksum). Its index file lists, per blob, the layer offset of the
//! frame where the blob's tar header starts and the header's offset in that frame's
//! decompressed output, so a reader finds any blob without scanning.
//!
//! Promises: a layer and its index are fsync'd and renamed into `layers/` before any
//! manifest can reference them; a layer is never modified after that (prune writes new
//! layers and deletes old ones); every blob read is checked against its tar header and its
//! hash.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::codec::{BlobId, Cursor};
use crate::error::{CheckpointError, IoContext, Result};
use crate::limits::Deadline;

/// Uncompressed bytes per zstd frame.
pub const FRAME_TARGET: usize = 2 << 20;
/// A new layer is started once the current one reaches this many compressed bytes.
pub const LAYER_TARGET: u64 = 128 << 20;
/// Blobs up to this size are compressed in memory by the worker that read them.
pub const IN_MEMORY_BLOB_MAX: u64 = 64 << 20;
pub const ZSTD_LEVEL: i32 = 3;
/// Entry chunks are mostly hashes and nanosecond timestamps: level 3 shrinks them ~6% more
/// than level 1 at a third of the speed, and they are most of what an incremental
/// checkpoint compresses.
pub const CHUNK_ZSTD_LEVEL: i32 = 1;

const INDEX_MAGIC: &[u8; 8] = b"PHCKIDX\n";
const INDEX_VERSION: u32 = 1;
pub(crate) const INDEX_ENTRY_LEN: usize = 32 + 1 + 8 + 4 + 8;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A file's content.
    Content = 0,
    /// An encoded entry chunk (see `entry.rs`).
    Chunk = 1,
}

/// Where one blob sits inside a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub blob: BlobId,
    pub kind: BlobKind,
    /// Offset in the layer file of the zstd frame where the blob's tar header starts.
    pub frame_offset: u64,
    /// Offset of the tar header in the output of decompressing from `frame_offset`.
    pub header_offset: u32,
    /// The blob's length (its tar member's size).
    pub len: u64,
}

impl IndexEntry {
    /// Where the member's data ends in the output of decompressing from `frame_offset`:
    /// `header_offset + 512 + len`, or E620 if that overflows (a hostile index).
    pub fn end(&self) -> Result<u64> {
        u64::from(self.header_offset)
            .checked_add(512)
            .and_then(|x| x.checked_add(self.len))
            .ok_or_else(|| {
                CheckpointError::corrupt(format!(
                    "layer index entry for blob {} has an impossible length",
                    self.blob
                ))
            })
    }
}

/// The index of one layer as its writer builds it.
#[derive(Clone, Debug)]
pub struct LayerIndex {
    pub layer: BlobId,
    /// Bytes of zstd frames (the tar stream) before the index trailer.
    pub data_size: u64,
    pub entries: Vec<IndexEntry>,
}

pub fn layer_path(layers_dir: &Path, id: &BlobId) -> PathBuf {
    layers_dir.join(format!("{}.tar.zst", id.to_hex()))
}

/// A layer file, as `open_store_file`; a missing one keeps its old error ("open layer").
fn open_layer_file(path: &Path) -> Result<File> {
    match open_store_file(path, "layer") {
        Err(CheckpointError::Io { source, .. }) => Err(source).io("open layer", path),
        other => other,
    }
}

/// Opens a file of the store for reading: never through a symlink (a session could point
/// one at `/dev/zero` or a file outside), never blocking on a FIFO or device, and only if
/// it is a regular file (E620 otherwise; a missing file is the caller's `NotFound`, here
/// an `Io` error with kind `NotFound`).
pub(crate) fn open_store_file(path: &Path, what: &str) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(CheckpointError::corrupt(format!(
                "{what} {} is a symlink",
                path.display()
            )));
        }
        Err(e) => {
            return Err(CheckpointError::Io {
                op: "open",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let md = file.metadata().io("stat", path)?;
    if !md.file_type().is_file() {
        return Err(CheckpointError::corrupt(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Reads a whole small file of the store (`open_store_file`), refusing one over `max`
/// bytes (E620) before reading it.
pub(crate) fn read_small_store_file(path: &Path, what: &str, max: u64) -> Result<Vec<u8>> {
    let file = open_store_file(path, what)?;
    let len = file.metadata().io("stat", path)?.len();
    if len > max {
        return Err(CheckpointError::corrupt(format!(
            "{what} {} is {len} bytes, more than the {max} a reader accepts",
            path.display()
        )));
    }
    let mut data = Vec::with_capacity(len as usize);
    (&file)
        .take(max + 1)
        .read_to_end(&mut data)
        .io("read", path)?;
    if data.len() as u64 > max {
        return Err(CheckpointError::corrupt(format!(
            "{what} {} grew past {max} bytes while read",
            path.display()
        )));
    }
    Ok(data)
}

/// Encodes a layer index; entries are written sorted by blob id so readers can binary-search.
pub fn encode_index(index: &LayerIndex) -> Vec<u8> {
    let mut entries = index.entries.clone();
    entries.sort_by_key(|e| e.blob);
    entries.dedup_by(|a, b| a.blob == b.blob);
    let mut out = Vec::with_capacity(64 + entries.len() * INDEX_ENTRY_LEN);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&index.data_size.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in &entries {
        out.extend_from_slice(&e.blob.0);
        out.push(e.kind as u8);
        out.extend_from_slice(&e.frame_offset.to_le_bytes());
        out.extend_from_slice(&e.header_offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    let sum = BlobId::of(&out);
    out.extend_from_slice(&sum.0);
    out
}

/// zstd skippable-frame magic used for the index trailer (decoders ignore such frames).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const TRAILER_FOOTER_LEN: u64 = 16;

/// The bytes appended to a layer after its data: a skippable frame holding the index and a
/// footer (index length, magic) that lets a reader find it from the end of the file.
pub(crate) fn index_trailer(index: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(index.len() + 24);
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&((index.len() as u64 + TRAILER_FOOTER_LEN) as u32).to_le_bytes());
    out.extend_from_slice(index);
    out.extend_from_slice(&(index.len() as u64).to_le_bytes());
    out.extend_from_slice(INDEX_MAGIC);
    out
}

impl LayerIndex {
    pub fn to_raw(&self) -> Arc<RawIndex> {
        let enc = encode_index(self);
        let file_size = self.data_size + 8 + enc.len() as u64 + TRAILER_FOOTER_LEN;
        Arc::new(RawIndex::parse(enc, self.layer, file_size).expect("an index we encoded parses"))
    }
}

const INDEX_HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// A checked layer index kept as its bytes; lookups binary-search the sorted entries, so
/// loading costs one read and one hash, not a hash-map build.
#[derive(Debug)]
pub struct RawIndex {
    pub layer: BlobId,
    /// The whole layer file's size (data, index trailer and footer).
    pub file_size: u64,
    data_size: u64,
    data: Vec<u8>,
    count: usize,
    fanout: [u32; 257],
}

impl RawIndex {
    pub fn parse(data: Vec<u8>, layer: BlobId, file_size: u64) -> Result<RawIndex> {
        if data.len() < INDEX_HEADER_LEN + 32 {
            return Err(CheckpointError::corrupt("layer index is truncated"));
        }
        let body_len = data.len() - 32;
        if BlobId::of(&data[..body_len]).0 != data[body_len..] {
            return Err(CheckpointError::corrupt(format!(
                "layer {} index checksum mismatch",
                layer.to_hex()
            )));
        }
        let mut c = Cursor::new(&data[..body_len], "layer index");
        if c.bytes(8)? != INDEX_MAGIC {
            return Err(CheckpointError::corrupt("layer index has a bad magic"));
        }
        let version = c.u32_le()?;
        if version != INDEX_VERSION {
            return Err(CheckpointError::corrupt(format!(
                "unsupported layer index version {version}"
            )));
        }
        let data_size = c.u64_le()?;
        let count = c.u64_le()?;
        if count.checked_mul(INDEX_ENTRY_LEN as u64) != Some((body_len - INDEX_HEADER_LEN) as u64) {
            return Err(CheckpointError::corrupt(
                "layer index has a bad entry count",
            ));
        }
        if data_size
            .checked_add(8 + data.len() as u64 + TRAILER_FOOTER_LEN)
            .is_none_or(|n| n != file_size)
        {
            return Err(CheckpointError::corrupt(format!(
                "layer {} has the wrong size (truncated?)",
                layer.to_hex()
            )));
        }
        let mut raw = RawIndex {
            layer,
            file_size,
            data_size,
            data,
            count: count as usize,
            fanout: [0; 257],
        };
        for i in 1..raw.count {
            if raw.blob_slice(i - 1) >= raw.blob_slice(i) {
                return Err(CheckpointError::corrupt("layer index is not sorted"));
            }
        }
        // fanout[b] = index of the first entry whose id starts with a byte >= b.
        let mut next = 0;
        for b in 0..256usize {
            while next < raw.count && usize::from(raw.blob_slice(next)[0]) < b {
                next += 1;
            }
            raw.fanout[b] = next as u32;
        }
        raw.fanout[256] = raw.count as u32;
        Ok(raw)
    }

    fn blob_slice(&self, i: usize) -> &[u8] {
        let o = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
        &self.data[o..o + 32]
    }

    fn entry(&self, i: usize) -> Result<IndexEntry> {
        let o = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
        let mut c = Cursor::new(&self.data[o..o + INDEX_ENTRY_LEN], "layer index entry");
        let blob = BlobId(c.array()?);
        let kind = match c.u8()? {
            0 => BlobKind::Content,
            1 => BlobKind::Chunk,
            k => {
                return Err(CheckpointError::corrupt(format!(
                    "layer index has unknown blob kind {k}"
                )));
            }
        };
        let e = IndexEntry {
            blob,
            kind,
            frame_offset: c.u64_le()?,
            header_offset: c.u32_le()?,
            len: c.u64_le()?,
        };
        if e.frame_offset >= self.data_size {
            return Err(CheckpointError::corrupt(
                "layer index points past the end of its layer",
            ));
        }
        e.end()?;
        Ok(e)
    }

    pub fn find(&self, blob: &BlobId) -> Option<IndexEntry> {
        let b0 = usize::from(blob.0[0]);
        let (mut lo, mut hi) = (self.fanout[b0] as usize, self.fanout[b0 + 1] as usize);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.blob_slice(mid).cmp(&blob.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.entry(mid).ok(),
            }
        }
        None
    }

    /// Bytes of zstd frames in the layer (entries point below this).
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    pub fn entry_count(&self) -> usize {
        self.count
    }

    pub fn entries(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        (0..self.count).filter_map(|i| self.entry(i).ok())
    }
}

/// Reads a layer's index from the trailer at the end of the layer file.
pub fn read_index(layers_dir: &Path, id: &BlobId) -> Result<Arc<RawIndex>> {
    let path = layer_path(layers_dir, id);
    let mut file = open_layer_file(&path)?;
    let size = file.metadata().io("stat layer", &path)?.len();
    let bad = || {
        CheckpointError::corrupt(format!(
            "layer {} has no readable index (truncated?)",
            id.to_hex()
        ))
    };
    if size < 8 + TRAILER_FOOTER_LEN {
        return Err(bad());
    }
    let mut footer = [0u8; 16];
    file.seek(SeekFrom::Start(size - TRAILER_FOOTER_LEN))
        .io("seek layer", &path)?;
    file.read_exact(&mut footer).io("read layer", &path)?;
    let len = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    if &footer[8..] != INDEX_MAGIC || len > size - 8 - TRAILER_FOOTER_LEN {
        return Err(bad());
    }
    let start = size - TRAILER_FOOTER_LEN - len - 8;
    let mut buf = vec![0u8; (len + 8) as usize];
    file.seek(SeekFrom::Start(start)).io("seek layer", &path)?;
    file.read_exact(&mut buf).io("read layer", &path)?;
    let frame_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) != SKIPPABLE_MAGIC
        || u64::from(frame_len) != len + TRAILER_FOOTER_LEN
    {
        return Err(bad());
    }
    buf.drain(..8);
    Ok(Arc::new(RawIndex::parse(buf, *id, size)?))
}

/// Re-hashes a whole layer file and compares it with its name and indexed size.
pub fn verify_layer(layers_dir: &Path, layer: &BlobId, layer_size: u64) -> Result<()> {
    let path = layer_path(layers_dir, layer);
    let mut file = open_layer_file(&path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).io("read layer", &path)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    if size != layer_size {
        return Err(CheckpointError::corrupt(format!(
            "layer {} is {size} bytes, expected {layer_size} (truncated?)",
            layer.to_hex()
        )));
    }
    if hasher.finalize().as_bytes() != &layer.0 {
        return Err(CheckpointError::corrupt(format!(
            "layer {} checksum mismatch",
            layer.to_hex()
        )));
    }
    Ok(())
}

fn tar_header(blob: &BlobId, len: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    // A 64-character name always fits the 100-byte name field.
    h.set_path(blob.to_hex())
        .expect("hex name fits a tar header");
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

fn padding(len: u64) -> usize {
    ((512 - len % 512) % 512) as usize
}

/// A blob placed in a group of frames handed to the sink.
#[derive(Clone, Copy, Debug)]
pub struct PlacedBlob {
    pub blob: BlobId,
    pub kind: BlobKind,
    /// Index of the frame (within its group) where the header starts.
    pub frame: usize,
    pub header_offset: u32,
    pub len: u64,
}

struct OpenLayer {
    file: File,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    offset: u64,
    entries: Vec<IndexEntry>,
}

/// The single writer of new layers for one checkpoint (shared by workers behind a mutex).
pub struct LayerSink {
    layers_dir: PathBuf,
    tmp_dir: PathBuf,
    current: Option<OpenLayer>,
    /// Layers finished (sealed) by this sink; each is durable and in `layers/` once
    /// `wait_durable` (or `finish`) has returned.
    pub finished: Vec<LayerIndex>,
    /// Background fdatasync + rename of layers finished at the size limit: the workers
    /// appending to the next layer do not wait for the disk.
    flushing: Vec<std::thread::JoinHandle<Result<()>>>,
    /// `LAYER_TARGET` (tests use smaller layers).
    pub layer_target: u64,
    /// Compressed bytes written (layers and index files).
    pub written_bytes: u64,
    end_frame: Vec<u8>,
    tmp_counter: u64,
}

impl LayerSink {
    pub fn new(layers_dir: PathBuf, tmp_dir: PathBuf) -> Result<Self> {
        let end_frame =
            zstd::bulk::compress(&[0u8; 1024], ZSTD_LEVEL).map_err(|e| CheckpointError::Io {
                op: "compress",
                path: tmp_dir.clone(),
                source: e,
            })?;
        Ok(LayerSink {
            layers_dir,
            tmp_dir,
            current: None,
            finished: Vec::new(),
            flushing: Vec::new(),
            layer_target: LAYER_TARGET,
            written_bytes: 0,
            end_frame,
            tmp_counter: 0,
        })
    }

    fn open_layer(&mut self) -> Result<&mut OpenLayer> {
        if self.current.is_none() {
            self.tmp_counter += 1;
            let tmp = self.tmp_dir.join(format!(
                "layer-{}-{}-{}.tmp",
                std::process::id(),
                crate::limits::now_ns(),
                self.tmp_counter
            ));
            let file = File::create(&tmp).io("create layer", &tmp)?;
            self.current = Some(OpenLayer {
                file,
                tmp,
                hasher: blake3::Hasher::new(),
                offset: 0,
                entries: Vec::new(),
            });
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    /// Appends a group of frames that must stay contiguous, with the blobs they hold.
    pub fn append_group(&mut self, frames: &[Vec<u8>], blobs: &[PlacedBlob]) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let layer = self.open_layer()?;
        let mut frame_offsets = Vec::with_capacity(frames.len());
        for f in frames {
            frame_offsets.push(layer.offset);
            layer.file.write_all(f).io("write layer", &layer.tmp)?;
            layer.hasher.update(f);
            layer.offset += f.len() as u64;
        }
        for b in blobs {
            layer.entries.push(IndexEntry {
                blob: b.blob,
                kind: b.kind,
                frame_offset: frame_offsets[b.frame],
                header_offset: b.header_offset,
                len: b.len,
            });
        }
        let written: u64 = frames.iter().map(|f| f.len() as u64).sum();
        self.written_bytes += written;
        if self
            .current
            .as_ref()
            .is_some_and(|l| l.offset >= self.layer_target)
        {
            self.finish_layer()?;
        }
        Ok(())
    }

    /// Streams one large blob straight into the current layer (the caller holds the sink for
    /// the duration). Returns the blake3 of what was written; the blob is only indexed if
    /// it equals `blob` (the file may have changed since it was hashed).
    pub fn append_stream(
        &mut self,
        blob: BlobId,
        len: u64,
        reader: &mut dyn Read,
        compressor: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<bool> {
        self.append_stream_as(blob, BlobKind::Content, len, reader, compressor)
    }

    /// `append_stream` for a blob of either kind (`repair` rewrites entry chunks too; each
    /// streamed blob starts frames of its own, as entry chunks need).
    pub fn append_stream_as(
        &mut self,
        blob: BlobId,
        kind: BlobKind,
        len: u64,
        reader: &mut dyn Read,
        compressor: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<bool> {
        let header = tar_header(&blob, len);
        let target = self.layer_target;
        let layer = self.open_layer()?;
        let start = layer.offset;
        let mut hasher = blake3::Hasher::new();
        let mut buf = Vec::with_capacity(FRAME_TARGET);
        buf.extend_from_slice(&header);
        let mut remaining = len;
        let mut piece = vec![0u8; FRAME_TARGET];
        let tmp = layer.tmp.clone();
        let mut written = 0u64;
        loop {
            let want = (FRAME_TARGET - buf.len()).min(remaining as usize);
            let mut got = 0;
            while got < want {
                let n = reader.read(&mut piece[got..want]).io("read file", &tmp)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            hasher.update(&piece[..got]);
            buf.extend_from_slice(&piece[..got]);
            remaining -= got as u64;
            let short = got < want;
            if short {
                // The file shrank: pad so the tar stream stays well-formed; not indexed.
                buf.resize(buf.len() + want - got, 0);
                remaining -= (want - got) as u64;
            }
            if remaining == 0 {
                buf.resize(buf.len() + padding(len), 0);
            }
            if buf.len() >= FRAME_TARGET || remaining == 0 {
                let frame = compressor.compress(&buf).io("compress", &tmp)?;
                layer.file.write_all(&frame).io("write layer", &tmp)?;
                layer.hasher.update(&frame);
                layer.offset += frame.len() as u64;
                written += frame.len() as u64;
                buf.clear();
            }
            if remaining == 0 {
                break;
            }
        }
        let ok = hasher.finalize().as_bytes() == &blob.0;
        let full = layer.offset >= target;
        if ok {
            layer.entries.push(IndexEntry {
                blob,
                kind,
                frame_offset: start,
                header_offset: 0,
                len,
            });
        }
        self.written_bytes += written;
        if full {
            self.finish_layer()?;
        }
        Ok(ok)
    }

    /// Appends the end marker and the index trailer to the open layer and names it; the
    /// layer is not yet durable nor in `layers/`.
    fn seal_layer(&mut self) -> Result<Option<SealedLayer>> {
        let Some(mut layer) = self.current.take() else {
            return Ok(None);
        };
        layer
            .file
            .write_all(&self.end_frame)
            .io("write layer", &layer.tmp)?;
        layer.hasher.update(&self.end_frame);
        layer.offset += self.end_frame.len() as u64;
        let mut index = LayerIndex {
            layer: BlobId([0; 32]),
            data_size: layer.offset,
            entries: layer.entries,
        };
        let trailer = index_trailer(&encode_index(&index));
        layer
            .file
            .write_all(&trailer)
            .io("write layer", &layer.tmp)?;
        layer.hasher.update(&trailer);
        index.layer = BlobId(*layer.hasher.finalize().as_bytes());
        self.written_bytes += (self.end_frame.len() + trailer.len()) as u64;
        Ok(Some(SealedLayer {
            file: layer.file,
            tmp: layer.tmp,
            index,
        }))
    }

    /// Seals the open layer and makes it durable in the background.
    fn finish_layer(&mut self) -> Result<()> {
        if let Some(sealed) = self.seal_layer()? {
            self.finished.push(sealed.index.clone());
            let dir = self.layers_dir.clone();
            self.flushing.push(std::thread::spawn(move || {
                sealed.make_durable(&dir).map(|_| ())
            }));
        }
        Ok(())
    }

    /// Waits until every layer finished so far is fdatasync'd and renamed into `layers/`
    /// (the caller fsyncs the directory).
    pub fn wait_durable(&mut self) -> Result<()> {
        let mut first = Ok(());
        for h in self.flushing.drain(..) {
            let r = h.join().expect("layer flush thread panicked");
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Finishes the open layer and makes every finished layer and its rename durable.
    pub fn finish(&mut self) -> Result<()> {
        self.finish_layer()?;
        self.wait_durable()?;
        if !self.finished.is_empty() {
            sync_dir(&self.layers_dir)?;
        }
        Ok(())
    }

    /// Seals the open layer without waiting for the disk, so the caller can overlap its
    /// fsync with other work; layers finished earlier (at the size limit) are durable once
    /// `wait_durable` returns.
    pub fn seal(&mut self) -> Result<Option<SealedLayer>> {
        self.seal_layer()
    }

    /// A second handle on the open layer file and the bytes written to it so far.
    pub fn open_layer_file(&self) -> Option<(File, u64)> {
        let l = self.current.as_ref()?;
        Some((l.file.try_clone().ok()?, l.offset))
    }

    /// Drops the open layer's temp file (used when a checkpoint is abandoned). Layers
    /// already finished stay: complete, durable, referenced by no manifest (prune removes
    /// them).
    pub fn abandon(&mut self) {
        let _ = self.wait_durable();
        if let Some(layer) = self.current.take() {
            let _ = fs::remove_file(&layer.tmp);
        }
    }
}

/// A complete layer still in `tmp/`, not yet fsync'd.
pub struct SealedLayer {
    file: File,
    tmp: PathBuf,
    pub index: LayerIndex,
}

impl SealedLayer {
    /// fsyncs the layer and renames it into `layers/` (the caller fsyncs the directory).
    pub fn make_durable(self, layers_dir: &Path) -> Result<LayerIndex> {
        self.file.sync_data().io("fsync layer", &self.tmp)?;
        let dest = layer_path(layers_dir, &self.index.layer);
        fs::rename(&self.tmp, &dest).io("rename layer", &dest)?;
        Ok(self.index)
    }
}

/// Packs blobs into frames on one worker thread and hands finished groups to the sink.
pub struct FrameBuilder {
    buf: Vec<u8>,
    blobs: Vec<PlacedBlob>,
    pub compressor: zstd::bulk::Compressor<'static>,
    /// For entry chunks' own frames (`CHUNK_ZSTD_LEVEL`), made on first use.
    chunk_compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Nanoseconds spent compressing (for `CreateStats::phase_ms`).
    pub compress_ns: u64,
}

fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(level).map_err(|e| CheckpointError::Io {
        op: "create compressor",
        path: PathBuf::new(),
        source: e,
    })
}

impl FrameBuilder {
    pub fn new() -> Result<Self> {
        Ok(FrameBuilder {
            buf: Vec::with_capacity(FRAME_TARGET + 4096),
            blobs: Vec::new(),
            compressor: compressor(ZSTD_LEVEL)?,
            chunk_compressor: None,
            compress_ns: 0,
        })
    }

    fn compress(&mut self, data: &[u8], kind: BlobKind) -> Result<Vec<u8>> {
        let c = match kind {
            BlobKind::Content => &mut self.compressor,
            BlobKind::Chunk => match &mut self.chunk_compressor {
                Some(c) => c,
                slot => slot.insert(compressor(CHUNK_ZSTD_LEVEL)?),
            },
        };
        let t0 = std::time::Instant::now();
        let out = c.compress(data).map_err(|e| CheckpointError::Io {
            op: "compress",
            path: PathBuf::new(),
            source: e,
        });
        self.compress_ns += t0.elapsed().as_nanos() as u64;
        out
    }

    /// Adds a blob held in memory. `own_frame` puts it in frames of its own (entry chunks,
    /// so loading one decompresses nothing else).
    pub fn add(
        &mut self,
        sink: &Mutex<LayerSink>,
        blob: BlobId,
        kind: BlobKind,
        data: &[u8],
        own_frame: bool,
    ) -> Result<()> {
        let len = data.len() as u64;
        let member = 512 + data.len() + padding(len);
        if !own_frame && self.buf.len() + member <= FRAME_TARGET {
            self.blobs.push(PlacedBlob {
                blob,
                kind,
                frame: 0,
                header_offset: self.buf.len() as u32,
                len,
            });
            self.buf.extend_from_slice(&tar_header(&blob, len));
            self.buf.extend_from_slice(data);
            self.buf.resize(self.buf.len() + padding(len), 0);
            return Ok(());
        }
        self.flush(sink)?;
        if !own_frame && member <= FRAME_TARGET {
            return self.add(sink, blob, kind, data, false);
        }
        // A group of frames for this blob alone.
        let mut frames = Vec::new();
        let mut stream = Vec::with_capacity(member.min(FRAME_TARGET));
        stream.extend_from_slice(&tar_header(&blob, len));
        let mut rest = data;
        loop {
            let take = (FRAME_TARGET - stream.len()).min(rest.len());
            stream.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if rest.is_empty() {
                stream.resize(stream.len() + padding(len), 0);
            }
            if stream.len() >= FRAME_TARGET || rest.is_empty() {
                // Chunks in a group of their own get the chunk level; packed frames (and
                // large contents) the content level.
                let level_kind = if own_frame { kind } else { BlobKind::Content };
                frames.push(self.compress(&stream, level_kind)?);
                stream.clear();
            }
            if rest.is_empty() {
                break;
            }
        }
        let placed = [PlacedBlob {
            blob,
            kind,
            frame: 0,
            header_offset: 0,
            len,
        }];
        sink.lock()
            .expect("layer sink poisoned")
            .append_group(&frames, &placed)
    }

    /// Bytes of tar stream waiting in the open frame.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Compresses the open frame and hands it to the sink.
    pub fn flush(&mut self, sink: &Mutex<LayerSink>) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let frame = self.compress(&buf, BlobKind::Content);
        self.buf = buf;
        self.buf.clear();
        let frame = frame?;
        let blobs = std::mem::take(&mut self.blobs);
        sink.lock()
            .expect("layer sink poisoned")
            .append_group(&[frame], &blobs)
    }
}

pub fn write_file_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).io("create", path)?;
    f.write_all(data).io("write", path)?;
    f.sync_data().io("fsync", path)?;
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .io("fsync directory", dir)
}

/// Reads blobs of one layer by decompressing from their frames. Keeps the layer open.
pub struct LayerReader {
    path: PathBuf,
    file: File,
}

impl LayerReader {
    pub fn open(layers_dir: &Path, layer: &BlobId) -> Result<Self> {
        let path = layer_path(layers_dir, layer);
        let file = open_layer_file(&path)?;
        Ok(LayerReader { path, file })
    }

    /// Starts decompressing at a frame; the caller reads members in header_offset order.
    pub fn frames_at(&mut self, frame_offset: u64, buffer: usize) -> Result<FrameStream<'_>> {
        self.file
            .seek(SeekFrom::Start(frame_offset))
            .io("seek layer", &self.path)?;
        let decoder =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(buffer, &self.file))
                .map_err(|e| CheckpointError::Io {
                    op: "create decompressor",
                    path: self.path.clone(),
                    source: e,
                })?;
        Ok(FrameStream {
            decoder,
            pos: 0,
            path: &self.path,
            deadline: None,
        })
    }

    /// Decompresses the frame at `offset` whole into `scratch.frame` with at most two
    /// positional reads (the first of about `hint` bytes, the second of the frame's bound
    /// if that was short) and one bulk decompression, reusing the scratch buffers and
    /// context. `Ok(false)` if the frame does not record its content size, or it exceeds
    /// `WHOLE_FRAME_MAX` (the caller streams instead, which also reports damage precisely).
    pub fn read_frame(&self, offset: u64, hint: u64, scratch: &mut FrameScratch) -> Result<bool> {
        let max = WHOLE_FRAME_MAX;
        let mut want = (hint.min(max) as usize + 1024).next_multiple_of(4096);
        let frame_len = loop {
            let n = read_at_most(&self.file, &mut scratch.compressed, want, offset)
                .io("read layer", &self.path)?;
            let got = &scratch.compressed[..n];
            if let Ok(len) = zstd::zstd_safe::find_frame_compressed_size(got) {
                break len;
            }
            // Incomplete: the header says how large the frame can be.
            match zstd::zstd_safe::get_frame_content_size(got) {
                Ok(Some(size)) if size <= max && n == want => {
                    let bound = zstd::zstd_safe::compress_bound(size as usize) + 64;
                    if bound <= want {
                        return Ok(false);
                    }
                    want = bound;
                }
                _ => return Ok(false),
            }
        };
        let frame = &scratch.compressed[..frame_len];
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= max => size as usize,
            _ => return Ok(false),
        };
        let dctx =
            match &mut scratch.dctx {
                Some(d) => d,
                slot => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| {
                    CheckpointError::Io {
                        op: "create decompressor",
                        path: self.path.clone(),
                        source: e,
                    }
                })?),
            };
        scratch.frame.clear();
        scratch.frame.reserve(size);
        let n = dctx
            .decompress_to_buffer(frame, &mut scratch.frame)
            .map_err(|x| corrupt_read(&self.path, x))?;
        if n != size {
            return Err(CheckpointError::corrupt(format!(
                "layer {} has a frame shorter than it says",
                self.path.display()
            )));
        }
        Ok(true)
    }

    /// `read_blob` through whole-frame reads when the blob lies in one frame.
    pub fn read_blob_with(
        &mut self,
        e: &IndexEntry,
        scratch: &mut FrameScratch,
    ) -> Result<Vec<u8>> {
        let end = e.end()?;
        if end <= WHOLE_FRAME_MAX && self.read_frame(e.frame_offset, end, scratch)? {
            let frame = &scratch.frame;
            if frame.len() as u64 >= end {
                let at = e.header_offset as usize;
                let header: &[u8; 512] = frame[at..at + 512].try_into().expect("512 bytes");
                check_member_header(header, e)?;
                let data = &frame[at + 512..end as usize];
                if blake3::hash(data).as_bytes() != &e.blob.0 {
                    return Err(CheckpointError::corrupt(format!(
                        "blob {} content does not match its hash",
                        e.blob
                    )));
                }
                return Ok(data.to_vec());
            }
        }
        self.read_blob(e)
    }

    /// Reads and checks one whole blob into memory. The caller has checked `e.len`
    /// against what it is willing to hold (`ChunkLoader`).
    pub fn read_blob(&mut self, e: &IndexEntry) -> Result<Vec<u8>> {
        // Small reads for small blobs (entry chunks are loaded one at a time).
        let buffer = if e.len < (1 << 20) {
            32 << 10
        } else {
            256 << 10
        };
        let mut stream = self.frames_at(e.frame_offset, buffer)?;
        let mut out = Vec::with_capacity(e.len.min(IN_MEMORY_BLOB_MAX) as usize);
        stream.read_member(e, &mut out)?;
        Ok(out)
    }
}

/// Frames up to this size (decompressed) are read whole (`LayerReader::read_frame`).
pub const WHOLE_FRAME_MAX: u64 = 2 * FRAME_TARGET as u64 + 4096;

/// Reusable buffers and decompression context for whole-frame reads.
#[derive(Default)]
pub struct FrameScratch {
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    compressed: Vec<u8>,
    /// The last frame read, decompressed.
    pub frame: Vec<u8>,
}

/// Reads up to `want` bytes at `offset` into `buf` (resized to `want`); fewer only at EOF.
fn read_at_most(file: &File, buf: &mut Vec<u8>, want: usize, offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    buf.resize(want, 0);
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks a member's tar header against its index entry: a regular file named by the
/// blob's hex id, of the indexed size.
pub fn check_member_header(header: &[u8; 512], e: &IndexEntry) -> Result<()> {
    let h = tar::Header::from_byte_slice(header);
    if !h.entry_type().is_file() {
        return Err(CheckpointError::unsafe_entry(
            e.blob.to_hex(),
            format!(
                "layer member is not a regular file (tar type {:?})",
                h.entry_type()
            ),
        ));
    }
    let name_ok = h.path_bytes().as_ref() == e.blob.to_hex().as_bytes();
    let size_ok = h.entry_size().ok() == Some(e.len);
    if !name_ok || !size_ok {
        return Err(CheckpointError::corrupt(format!(
            "layer member for blob {} does not match its index",
            e.blob
        )));
    }
    Ok(())
}

/// A decompressing reader positioned inside a layer.
pub struct FrameStream<'a> {
    decoder: zstd::stream::read::Decoder<'static, BufReader<&'a File>>,
    pos: u64,
    path: &'a Path,
    /// Checked every buffer of a member: a huge (or hostile, highly compressible) blob
    /// cannot hold a reader past its time limit.
    deadline: Option<Deadline>,
}

fn corrupt_read(path: &Path, e: io::Error) -> CheckpointError {
    CheckpointError::corrupt(format!(
        "layer {} cannot be decompressed: {e}",
        path.display()
    ))
}

impl FrameStream<'_> {
    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Skips to `e.header_offset`, checks the tar header and copies the member's data into
    /// `out`, verifying its blake3. Members must be read in increasing offset order.
    pub fn read_member(&mut self, e: &IndexEntry, out: &mut dyn Write) -> Result<()> {
        let target = u64::from(e.header_offset);
        let end = e.end()?;
        if target < self.pos {
            return Err(CheckpointError::corrupt("layer index entries overlap"));
        }
        let skip = target - self.pos;
        let skipped = io::copy(&mut (&mut self.decoder).take(skip), &mut io::sink())
            .map_err(|x| corrupt_read(self.path, x))?;
        if skipped != skip {
            return Err(CheckpointError::corrupt(format!(
                "layer {} is truncated",
                self.path.display()
            )));
        }
        let mut header = [0u8; 512];
        self.decoder
            .read_exact(&mut header)
            .map_err(|x| corrupt_read(self.path, x))?;
        check_member_header(&header, e)?;
        let mut hasher = blake3::Hasher::new();
        let mut remaining = e.len;
        let mut buf = vec![0u8; (256 << 10).min(e.len.max(1) as usize)];
        while remaining > 0 {
            if let Some(d) = &self.deadline {
                d.check("reading a blob")?;
            }
            let n = buf.len().min(remaining as usize);
            self.decoder
                .read_exact(&mut buf[..n])
                .map_err(|x| corrupt_read(self.path, x))?;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|x| CheckpointError::Io {
                op: "write",
                path: self.path.to_path_buf(),
                source: x,
            })?;
            remaining -= n as u64;
        }
        if hasher.finalize().as_bytes() != &e.blob.0 {
            return Err(CheckpointError::corrupt(format!(
                "blob {} content does not match its hash",
                e.blob
            )));
        }
        self.pos = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u32, len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|x| (x.wrapping_mul(2654435761).wrapping_add(seed) >> (7 + seed % 5)) as u8)
            .collect()
    }

    /// A layer with packed contents, a content spanning frames and entry chunks in frames
    /// of their own; returns its index and every blob's data.
    fn layer(dir: &Path) -> (Arc<RawIndex>, Vec<(BlobId, Vec<u8>)>) {
        let (layers, tmp) = (dir.join("layers"), dir.join("tmp"));
        fs::create_dir_all(&layers).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        let sink = Mutex::new(LayerSink::new(layers.clone(), tmp).unwrap());
        let mut fb = FrameBuilder::new().unwrap();
        let mut blobs = Vec::new();
        for (i, (len, kind, own)) in [
            (100, BlobKind::Content, false),
            (70_000, BlobKind::Content, false),
            (3 * FRAME_TARGET + 17, BlobKind::Content, false),
            (30_000, BlobKind::Chunk, true),
            (0, BlobKind::Content, false),
            (5_000, BlobKind::Chunk, true),
        ]
        .into_iter()
        .enumerate()
        {
            let d = data(i as u32, len);
            let id = BlobId::of(&d);
            fb.add(&sink, id, kind, &d, own).unwrap();
            blobs.push((id, d));
        }
        fb.flush(&sink).unwrap();
        let mut s = sink.into_inner().unwrap();
        s.finish().unwrap();
        let id = s.finished[0].layer;
        (read_index(&layers, &id).unwrap(), blobs)
    }

    #[test]
    fn whole_frame_reads_match_streamed_reads_and_catch_damage() {
        let t = tempfile::tempdir().unwrap();
        let (ix, blobs) = layer(t.path());
        let layers = t.path().join("layers");
        let mut scratch = FrameScratch::default();
        let mut r = LayerReader::open(&layers, &ix.layer).unwrap();
        for (id, d) in &blobs {
            let e = ix.find(id).unwrap();
            assert_eq!(&r.read_blob_with(&e, &mut scratch).unwrap(), d);
            assert_eq!(&r.read_blob(&e).unwrap(), d);
        }
        let path = layer_path(&layers, &ix.layer);
        let good = fs::read(&path).unwrap();
        let data_size = ix.data_size() as usize;
        for at in (0..data_size)
            .step_by(data_size / 150)
            .chain([0, 4, 5, 9, data_size - 1])
        {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            let mut r = LayerReader::open(&layers, &ix.layer).unwrap();
            for (id, d) in &blobs {
                let e = ix.find(id).unwrap();
                match r.read_blob_with(&e, &mut scratch) {
                    Ok(got) => assert_eq!(&got, d, "flip at {at} returned wrong data"),
                    Err(err) => {
                        assert!(matches!(err.code(), "E620" | "E621"), "flip at {at}: {err}")
                    }
                }
            }
        }
    }
}
