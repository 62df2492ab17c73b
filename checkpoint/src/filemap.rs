//! Large files stored in content-defined chunks, and their chunk maps (store version 2).
//!
//! A regular file of at least `CHUNKED_MIN` bytes is cut with FastCDC (2020, normalization
//! level 1, seed 0; `CDC_MIN`/`CDC_AVG`/`CDC_MAX`): each chunk is an ordinary content blob,
//! and the file's entry names a *chunk map* blob (also an ordinary content blob) listing the
//! chunks in order. The cut points depend only on the bytes since the previous cut, so a
//! file that grows by appending keeps every chunk but its last, and a file edited in place
//! changes only the chunks around the edit: a new version costs the changed chunks and the
//! map. Identical chunks are stored once per store, whichever file or version they belong to.
//!
//! Promise: `decode_map` accepts only what `encode_map` can produce for a file of the
//! entry's size (every length bounded, the lengths summing exactly to the size, the count
//! checked before anything is allocated), and fails with E620 otherwise.

use crate::codec::{BlobId, Cursor, put_varint};
use crate::error::{CheckpointError, Result};

/// Files of at least this many bytes (one maximum chunk) are stored in chunks; smaller ones
/// stay whole. Low, because a file that crosses it is stored again once, whole: a
/// transcript that starts small pays for ~256 KiB once, not for ~1 MiB.
pub const CHUNKED_MIN: u64 = 256 << 10;
/// FastCDC sizes: a 50 KB append re-stores the old last chunk (≤ `CDC_MAX`, 64 KiB on
/// average) plus the appended bytes, and the map costs 33–36 bytes per chunk.
pub const CDC_MIN: u32 = 16 << 10;
pub const CDC_AVG: u32 = 64 << 10;
pub const CDC_MAX: u32 = 256 << 10;
/// Readers accept chunks up to this length (writers make them at most `CDC_MAX`).
pub const FILE_CHUNK_MAX: u64 = 4 << 20;
/// Readers accept chunk maps up to this length (a 64 GiB file of 64 KiB chunks needs ~36 MB).
pub const MAP_BLOB_MAX: u64 = 64 << 20;

const MAP_FORMAT: u8 = 1;
/// The smallest encoding of one chunk: a one-byte length and a 32-byte id.
const MIN_CHUNK_ENCODING: usize = 33;

/// A chunked file's chunks, in order: (blob id, length).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileMap {
    pub chunks: Vec<(BlobId, u64)>,
}

impl FileMap {
    /// The encoded map (docs/formats/checkpoint.md, "Chunked files").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.chunks.len() * 36);
        out.push(MAP_FORMAT);
        put_varint(&mut out, self.chunks.len() as u64);
        for (id, len) in &self.chunks {
            put_varint(&mut out, *len);
            out.extend_from_slice(&id.0);
        }
        out
    }
}

/// Decodes a chunk map of a file of `size` bytes (E620 for anything `encode` cannot make).
pub fn decode_map(data: &[u8], size: u64) -> Result<FileMap> {
    let bad = |why: &str| CheckpointError::corrupt(format!("chunk map {why}"));
    if data.len() as u64 > MAP_BLOB_MAX {
        return Err(bad("is too large"));
    }
    let mut c = Cursor::new(data, "chunk map");
    let format = c.u8()?;
    if format != MAP_FORMAT {
        return Err(bad(&format!("has unsupported format {format}")));
    }
    let count = c.varint()?;
    // Each chunk takes at least 33 bytes: a count beyond that is a lie, refused before any
    // allocation.
    if count == 0 || count > (data.len() / MIN_CHUNK_ENCODING) as u64 {
        return Err(bad(&format!("has an impossible chunk count {count}")));
    }
    let mut chunks = Vec::with_capacity(count as usize);
    let mut total = 0u64;
    for _ in 0..count {
        let len = c.varint()?;
        if len == 0 || len > FILE_CHUNK_MAX {
            return Err(bad(&format!("has a chunk of impossible length {len}")));
        }
        total = total
            .checked_add(len)
            .filter(|t| *t <= size)
            .ok_or_else(|| bad("is longer than its file"))?;
        chunks.push((BlobId(c.array::<32>()?), len));
    }
    if !c.is_empty() {
        return Err(bad("has trailing bytes"));
    }
    if total != size {
        return Err(bad(&format!(
            "covers {total} bytes of a file of {size} bytes"
        )));
    }
    Ok(FileMap { chunks })
}

/// The FastCDC chunker over a reader, with the store's parameters.
pub fn chunker<R: std::io::Read>(source: R) -> fastcdc::v2020::StreamCDC<R> {
    fastcdc::v2020::StreamCDC::new(source, CDC_MIN, CDC_AVG, CDC_MAX)
}

/// The same cut points over bytes in memory (`chunker` and this agree: a test proves it).
pub fn chunk_slices(data: &[u8]) -> fastcdc::v2020::FastCDC<'_> {
    fastcdc::v2020::FastCDC::new(data, CDC_MIN, CDC_AVG, CDC_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_lies_are_refused() {
        let m = FileMap {
            chunks: vec![(BlobId([1; 32]), 100), (BlobId([2; 32]), 70_000)],
        };
        let e = m.encode();
        assert_eq!(decode_map(&e, 70_100).unwrap(), m);
        assert!(decode_map(&e, 70_099).is_err());
        assert!(decode_map(&e, 70_101).is_err());
        assert!(decode_map(&e[..e.len() - 1], 70_100).is_err());
        let mut trailing = e.clone();
        trailing.push(0);
        assert!(decode_map(&trailing, 70_100).is_err());
        // A count far beyond the bytes: refused without allocating.
        let mut huge = vec![MAP_FORMAT];
        put_varint(&mut huge, u64::MAX);
        assert!(decode_map(&huge, 1).is_err());
        // A zero-length or over-long chunk.
        let mut zero = vec![MAP_FORMAT];
        put_varint(&mut zero, 1);
        put_varint(&mut zero, 0);
        zero.extend_from_slice(&[0; 32]);
        assert!(decode_map(&zero, 0).is_err());
        let mut long = vec![MAP_FORMAT];
        put_varint(&mut long, 1);
        put_varint(&mut long, FILE_CHUNK_MAX + 1);
        long.extend_from_slice(&[0; 32]);
        assert!(decode_map(&long, FILE_CHUNK_MAX + 1).is_err());
        assert!(decode_map(&[2, 1], 1).is_err());
    }

    #[test]
    fn an_append_keeps_every_chunk_but_the_last() {
        let mut data = Vec::new();
        let mut x = 7u64;
        while data.len() < 3 << 20 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.extend_from_slice(
                format!("{{\"turn\":{},\"text\":\"{:x}\"}}\n", x % 1000, x).as_bytes(),
            );
        }
        let cuts = |d: &[u8]| -> Vec<(u64, usize)> {
            chunker(d)
                .map(|c| c.map(|c| (c.offset, c.length)).unwrap())
                .collect()
        };
        let in_memory: Vec<(u64, usize)> = chunk_slices(&data)
            .map(|c| (c.offset as u64, c.length))
            .collect();
        assert_eq!(in_memory, cuts(&data), "streaming and in-memory cuts agree");
        let before = cuts(&data[..2 << 20]);
        let after = cuts(&data);
        assert!(before.len() > 8);
        assert_eq!(before[..before.len() - 1], after[..before.len() - 1]);
        assert!(before.iter().all(|(_, l)| *l as u32 <= CDC_MAX));
    }
}
