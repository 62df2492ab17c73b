//! Tree entries and their frozen binary encoding in entry chunks.
//!
//! A tree is the byte-sorted list of its entries (relative paths with `/` separators).
//! The list is cut into chunks at content-defined boundaries that depend only on each
//! entry's own path, so the chunking is a pure function of the list: an incremental
//! checkpoint that re-chunks only the region it touched produces byte-identical chunks to a
//! from-scratch checkpoint, and unchanged regions dedup against earlier checkpoints.
//!
//! Promise: `decode_chunk(encode_chunk(x)) == x`, and `validate_tree` rejects every entry
//! that could make a restore write outside its target (E621) before anything is written.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{BlobId, Cursor, put_varint, put_zigzag};
use crate::error::{CheckpointError, Result};

/// The kinds of entries a checkpoint captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a checkpointed tree, as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the tree's root, never empty, never absolute, no `..`.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits as captured (`st_mode & 0o7777`).
    pub mode: u32,
    /// File size in bytes (0 for directories; the target's length for symlinks).
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 for directories).
    pub mtime_ns: i64,
    /// The blake3 of the file's content (files only).
    pub content: Option<BlobId>,
    /// The symlink's target, verbatim (symlinks only).
    pub link_target: Option<PathBuf>,
}

/// The kind byte of the chunk encoding. Codes 3..=7 never come out of a scan; they exist so
/// a reader can name what a hostile or future store contains and refuse it precisely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawKind {
    File = 0,
    Dir = 1,
    Symlink = 2,
    HardLink = 3,
    CharDevice = 4,
    BlockDevice = 5,
    Fifo = 6,
    Socket = 7,
}

impl RawKind {
    fn from_u8(b: u8) -> Result<RawKind> {
        Ok(match b {
            0 => RawKind::File,
            1 => RawKind::Dir,
            2 => RawKind::Symlink,
            3 => RawKind::HardLink,
            4 => RawKind::CharDevice,
            5 => RawKind::BlockDevice,
            6 => RawKind::Fifo,
            7 => RawKind::Socket,
            _ => return Err(CheckpointError::corrupt(format!("unknown entry kind {b}"))),
        })
    }

    fn has_link(self) -> bool {
        matches!(self, RawKind::Symlink | RawKind::HardLink)
    }
}

/// An entry as stored: the caller-visible fields plus the stat cache used by the fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u8>,
    pub kind: RawKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    /// Stat cache: ctime and inode at capture time.
    pub ctime_ns: i64,
    pub ino: u64,
    /// Stat cache: the file was modified so close to the capture that a later change could
    /// keep the same stat; the next scan must re-hash it.
    pub racy: bool,
    pub content: Option<BlobId>,
    /// Files only: `content` names a chunk map (`filemap.rs`), not the content itself.
    pub chunked: bool,
    pub link: Vec<u8>,
}

impl Record {
    pub fn to_entry(&self) -> Entry {
        Entry {
            path: PathBuf::from(OsStr::from_bytes(&self.path)),
            kind: match self.kind {
                RawKind::Dir => EntryKind::Dir,
                RawKind::Symlink => EntryKind::Symlink,
                _ => EntryKind::File,
            },
            mode: self.mode,
            size: self.size,
            mtime_ns: self.mtime_ns,
            content: self.content,
            link_target: self
                .kind
                .has_link()
                .then(|| PathBuf::from(OsStr::from_bytes(&self.link))),
        }
    }

    /// Appends the fields the content digest covers (the same bytes, in one buffer, as
    /// hashing each record separately: blake3 is a stream).
    fn digest_into(&self, buf: &mut Vec<u8>) {
        put_varint(buf, self.path.len() as u64);
        buf.extend_from_slice(&self.path);
        buf.push(self.kind as u8);
        put_varint(buf, u64::from(self.mode));
        put_varint(buf, self.size);
        buf.extend_from_slice(&self.content.map(|c| c.0).unwrap_or([0; 32]));
        put_varint(buf, self.link.len() as u64);
        buf.extend_from_slice(&self.link);
        if self.chunked {
            // Only chunked files add a byte: whole files digest as in format 1.
            buf.push(1);
        }
    }
}

/// Format 1: files name their content blob. Format 2 (store version 2) adds, after each
/// file's content id, a byte saying what it names (0 the content, 1 a chunk map). A chunk
/// without chunked files is written in format 1, so the encoding stays a pure function of
/// the records and such chunks are the same blobs as before.
const CHUNK_FORMAT_WHOLE: u8 = 1;
const CHUNK_FORMAT_MAPS: u8 = 2;

/// Encodes sorted records as one entry chunk (docs/formats/checkpoint.md, "Entry chunks").
pub fn encode_chunk(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 80 + 8);
    let format = if records.iter().any(|r| r.chunked) {
        CHUNK_FORMAT_MAPS
    } else {
        CHUNK_FORMAT_WHOLE
    };
    out.push(format);
    put_varint(&mut out, records.len() as u64);
    let mut prev: &[u8] = &[];
    for r in records {
        let shared = prev.iter().zip(&r.path).take_while(|(a, b)| a == b).count();
        put_varint(&mut out, shared as u64);
        put_varint(&mut out, (r.path.len() - shared) as u64);
        out.extend_from_slice(&r.path[shared..]);
        out.push(r.kind as u8);
        put_varint(&mut out, u64::from(r.mode));
        put_varint(&mut out, r.size);
        put_zigzag(&mut out, r.mtime_ns);
        put_zigzag(&mut out, r.ctime_ns);
        put_varint(&mut out, r.ino);
        out.push(u8::from(r.racy));
        if r.kind == RawKind::File {
            out.extend_from_slice(&r.content.map(|c| c.0).unwrap_or([0; 32]));
            if format == CHUNK_FORMAT_MAPS {
                out.push(u8::from(r.chunked));
            }
        }
        if r.kind.has_link() {
            put_varint(&mut out, r.link.len() as u64);
            out.extend_from_slice(&r.link);
        }
        prev = &r.path;
    }
    out
}

/// Decodes one entry chunk; paths must be strictly increasing.
pub fn decode_chunk(data: &[u8]) -> Result<Vec<Record>> {
    let mut c = Cursor::new(data, "entry chunk");
    let format = c.u8()?;
    if format != CHUNK_FORMAT_WHOLE && format != CHUNK_FORMAT_MAPS {
        return Err(CheckpointError::corrupt(format!(
            "unsupported entry chunk format {format}"
        )));
    }
    let count = c.varint()?;
    let mut out: Vec<Record> = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let shared = c.varint()? as usize;
        let prev = out.last().map(|r| r.path.as_slice()).unwrap_or(&[]);
        if shared > prev.len() {
            return Err(CheckpointError::corrupt(
                "entry chunk has a bad path prefix",
            ));
        }
        let mut path = prev[..shared].to_vec();
        path.extend_from_slice(c.len_prefixed()?);
        if out.last().is_some_and(|r| r.path >= path) {
            return Err(CheckpointError::corrupt("entry chunk is not sorted"));
        }
        let kind = RawKind::from_u8(c.u8()?)?;
        let mode = u32::try_from(c.varint()?).map_err(|_| CheckpointError::corrupt("bad mode"))?;
        let size = c.varint()?;
        let mtime_ns = c.zigzag()?;
        let ctime_ns = c.zigzag()?;
        let ino = c.varint()?;
        let racy = c.u8()? != 0;
        let content = (kind == RawKind::File)
            .then(|| c.array::<32>().map(BlobId))
            .transpose()?;
        let chunked = kind == RawKind::File
            && format == CHUNK_FORMAT_MAPS
            && match c.u8()? {
                0 => false,
                1 => true,
                b => {
                    return Err(CheckpointError::corrupt(format!(
                        "entry chunk has an unknown content form {b}"
                    )));
                }
            };
        let link = if kind.has_link() {
            c.len_prefixed()?.to_vec()
        } else {
            Vec::new()
        };
        out.push(Record {
            path,
            kind,
            mode,
            size,
            mtime_ns,
            ctime_ns,
            ino,
            racy,
            content,
            chunked,
            link,
        });
    }
    if !c.is_empty() {
        return Err(CheckpointError::corrupt("entry chunk has trailing bytes"));
    }
    Ok(out)
}

/// The content digest of a run of records (what `skip_if_unchanged` compares).
pub fn content_digest(records: &[Record]) -> BlobId {
    let mut buf = Vec::with_capacity(records.len() * 96);
    for r in records {
        r.digest_into(&mut buf);
    }
    BlobId::of(&buf)
}

/// Average chunk length is 256 entries; a chunk never exceeds `CHUNK_MAX_ENTRIES`.
const CHUNK_BOUNDARY_MASK: u64 = 0xff;
pub const CHUNK_MAX_ENTRIES: usize = 2048;

/// Whether a chunk ends after the entry with this path (FNV-1a 64 with a final mix; frozen).
pub fn is_boundary(path: &[u8]) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in path {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h & CHUNK_BOUNDARY_MASK == CHUNK_BOUNDARY_MASK
}

/// Cuts a stream of sorted records into chunks. Its only state is the open chunk, so two
/// chunkers that are both empty at the same position produce the same chunks from there on.
#[derive(Default)]
pub struct Chunker {
    pub pending: Vec<Record>,
    pub done: Vec<Vec<Record>>,
}

impl Chunker {
    pub fn push(&mut self, r: Record) {
        let boundary = is_boundary(&r.path);
        self.pending.push(r);
        if boundary || self.pending.len() >= CHUNK_MAX_ENTRIES {
            self.done.push(std::mem::take(&mut self.pending));
        }
    }

    pub fn finish(&mut self) {
        if !self.pending.is_empty() {
            self.done.push(std::mem::take(&mut self.pending));
        }
    }
}

/// Checks a relative path for use under a restore target: non-empty components, no `.`,
/// `..`, NUL or leading `/`.
pub fn check_relative_path(path: &[u8]) -> std::result::Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path[0] == b'/' {
        return Err("absolute path");
    }
    if path.contains(&0) {
        return Err("path contains NUL");
    }
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" => return Err("empty path component"),
            b"." => return Err("path contains '.'"),
            b".." => return Err("path escapes the target ('..')"),
            _ => {}
        }
    }
    Ok(())
}

/// Parent of a relative path (`b""` for top-level entries).
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Rejects every entry a restore must not act on, before anything is written: escaping or
/// absolute paths, duplicates, entries whose parent is not a directory entry of the same
/// tree (which is what writing through a symlink needs), hard links, devices, fifos, sockets.
pub fn validate_tree(records: &[Record]) -> Result<()> {
    let mut dirs: HashSet<&[u8]> = HashSet::new();
    let mut prev: Option<&[u8]> = None;
    for r in records {
        let shown = || String::from_utf8_lossy(&r.path).into_owned();
        check_relative_path(&r.path).map_err(|why| CheckpointError::unsafe_entry(shown(), why))?;
        if prev.is_some_and(|p| p >= r.path.as_slice()) {
            return Err(CheckpointError::corrupt(format!(
                "tree entries unsorted or duplicated at {:?}",
                shown()
            )));
        }
        prev = Some(&r.path);
        let parent = parent_of(&r.path);
        if !parent.is_empty() && !dirs.contains(parent) {
            return Err(CheckpointError::unsafe_entry(
                shown(),
                "its parent is not a directory of the checkpoint (would write through a symlink or file)",
            ));
        }
        match r.kind {
            RawKind::File => {
                if r.content.is_none() {
                    return Err(CheckpointError::corrupt(format!(
                        "file {:?} has no content",
                        shown()
                    )));
                }
            }
            RawKind::Dir => {
                dirs.insert(&r.path);
            }
            RawKind::Symlink => {
                if r.link.is_empty() || r.link.contains(&0) {
                    return Err(CheckpointError::unsafe_entry(
                        shown(),
                        "symlink with an empty or NUL target",
                    ));
                }
            }
            RawKind::HardLink => {
                return Err(CheckpointError::unsafe_entry(
                    shown(),
                    format!("hard link to {:?}", String::from_utf8_lossy(&r.link)),
                ));
            }
            RawKind::CharDevice | RawKind::BlockDevice => {
                return Err(CheckpointError::unsafe_entry(shown(), "device file"));
            }
            RawKind::Fifo => return Err(CheckpointError::unsafe_entry(shown(), "fifo")),
            RawKind::Socket => return Err(CheckpointError::unsafe_entry(shown(), "socket")),
        }
    }
    Ok(())
}

/// A relative `Path` as the bytes used in entries (rejecting anything not plainly relative).
pub fn rel_bytes(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for comp in path.components() {
        match comp {
            std::path::Component::Normal(c) => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c.as_bytes());
            }
            std::path::Component::CurDir => {}
            _ => {
                return Err(CheckpointError::invalid(format!(
                    "path {} is not relative",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

pub fn bytes_path(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, kind: RawKind) -> Record {
        Record {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            size: 3,
            mtime_ns: -7,
            ctime_ns: 1_700_000_000_000_000_000,
            ino: 42,
            racy: true,
            content: (kind == RawKind::File).then(|| BlobId::of(b"abc")),
            chunked: false,
            link: if kind == RawKind::Symlink {
                b"../x".to_vec()
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn chunks_round_trip() {
        let rs = vec![
            rec("a", RawKind::Dir),
            rec("a/b", RawKind::File),
            rec("a/c", RawKind::Symlink),
        ];
        assert_eq!(decode_chunk(&encode_chunk(&rs)).unwrap(), rs);
    }

    #[test]
    fn chunks_with_chunked_files_use_format_2_and_others_stay_format_1() {
        let whole = vec![rec("a", RawKind::Dir), rec("a/b", RawKind::File)];
        let enc = encode_chunk(&whole);
        assert_eq!(enc[0], 1);
        let mut mapped = whole.clone();
        mapped[1].chunked = true;
        let enc2 = encode_chunk(&mapped);
        assert_eq!(enc2[0], 2);
        assert_eq!(decode_chunk(&enc2).unwrap(), mapped);
        // The digest tells a chunked file from a whole one naming the same blob.
        assert_ne!(content_digest(&whole), content_digest(&mapped));
        // The content form byte is the last byte of this chunk: 2 is unknown.
        let mut bad = enc2.clone();
        *bad.last_mut().unwrap() = 2;
        assert_eq!(decode_chunk(&bad).unwrap_err().code(), "E620");
        for n in 0..enc2.len() {
            assert_eq!(decode_chunk(&enc2[..n]).unwrap_err().code(), "E620");
        }
    }

    #[test]
    fn truncated_chunks_are_corrupt() {
        let rs = vec![rec("a", RawKind::Dir), rec("a/b", RawKind::File)];
        let enc = encode_chunk(&rs);
        for n in 0..enc.len() {
            assert_eq!(decode_chunk(&enc[..n]).unwrap_err().code(), "E620");
        }
    }

    #[test]
    fn validation_rejects_escapes() {
        let cases: Vec<Vec<Record>> = vec![
            vec![rec("../x", RawKind::File)],
            vec![rec("/abs", RawKind::File)],
            vec![rec("a/./b", RawKind::File)],
            vec![
                rec("link", RawKind::Symlink),
                rec("link/file", RawKind::File),
            ],
            vec![rec("dev", RawKind::CharDevice)],
        ];
        for c in cases {
            assert_eq!(validate_tree(&c).unwrap_err().code(), "E621", "{c:?}");
        }
        validate_tree(&[rec("a", RawKind::Dir), rec("a/b", RawKind::File)]).unwrap();
    }
}
