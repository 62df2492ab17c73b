//! Entry points for the cargo-fuzz targets in `fuzz/` (and the stable regression test
//! that replays their corpus): each takes untrusted bytes the way a reader of a store
//! would and must return (an error or a value) without panicking, aborting or allocating
//! beyond the bounds the format and `Limits` allow. Checksums are filled in where the
//! format has them, so the fuzzer reaches the parsers behind them.
//!
//! Not part of the engine's API: hidden from the docs, stable only for the fuzz crate.

use std::fs;
use std::path::Path;

use crate::codec::BlobId;
use crate::entry::{decode_chunk, validate_tree};
use crate::layer::{FrameScratch, LayerReader, RawIndex, read_index};
use crate::limits::{Deadline, Limits};
use crate::manifest::Manifest;
use crate::mindex::BlobMap;

/// `Manifest::decode` on raw bytes (header, JSON, checksum line).
pub fn parse_manifest(data: &[u8]) -> bool {
    Manifest::decode(data).is_ok()
}

/// `Manifest::decode` of `body` as the JSON line of a manifest with a correct header and
/// checksum (so the JSON and the consistency checks behind the checksum are reached).
pub fn parse_manifest_body(body: &[u8]) -> bool {
    let mut out = b"PARHELIA-CHECKPOINT-MANIFEST 1\n".to_vec();
    out.extend_from_slice(body);
    out.push(b'\n');
    let sum = BlobId::of(&out).to_hex();
    out.extend_from_slice(format!("blake3 {sum}\n").as_bytes());
    match Manifest::decode(&out) {
        Ok(m) => {
            // What `list`/`show` compute from it.
            let _ = (m.file_count(), m.total_bytes());
            true
        }
        Err(_) => false,
    }
}

/// An entry chunk (tree records): decode, validate as a tree, and apply the limits
/// checks a restore applies. The same bytes are also decoded as a chunk map (store
/// version 2) of a file of every size its lengths could sum to, and of a few others.
pub fn parse_tree_records(data: &[u8]) -> bool {
    for size in [0, 1, data.len() as u64, u64::MAX] {
        let _ = crate::filemap::decode_map(data, size);
    }
    // The size its lengths claim, if they are well formed: the accepting path.
    let map_ok = sum_of_map_lengths(data)
        .and_then(|total| crate::filemap::decode_map(data, total))
        .map(|m| m.encode() == data)
        .unwrap_or(false);
    let Ok(records) = decode_chunk(data) else {
        return map_ok;
    };
    let limits = Limits::default();
    for r in &records {
        let _ = r.to_entry();
        let _ = crate::limits::check_path_len(&limits, &r.path, "path");
        let _ = crate::limits::check_components(&r.path);
    }
    validate_tree(&records).is_ok() || map_ok
}

/// A layer index body (everything before its checksum; the checksum is appended), parsed
/// for a layer of the size the body claims, then every entry decoded and looked up.
pub fn parse_layer_index(body: &[u8]) -> bool {
    let mut data = body.to_vec();
    let sum = BlobId::of(&data);
    data.extend_from_slice(&sum.0);
    let data_size = body
        .get(12..20)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0);
    let file_size = data_size.wrapping_add(8 + data.len() as u64 + 16);
    let Ok(ix) = RawIndex::parse(data, BlobId([7; 32]), file_size) else {
        return false;
    };
    for e in ix.entries() {
        let _ = e.end();
        let _ = ix.find(&e.blob);
    }
    let _ = ix.find(&BlobId([0; 32]));
    true
}

/// A whole layer file: `data` is split into the zstd frames (the first two bytes, LE,
/// give their length) and an index body; the trailer (skippable frame, checksum, footer)
/// is built around the body as a writer would, the file is written to `dir` under its
/// blake3 name, and every reader runs on it: the trailer, each blob through whole-frame
/// and streaming reads, and the verification a restore does first.
pub fn read_layer(dir: &Path, data: &[u8]) -> bool {
    if data.len() < 2 {
        return false;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (frames, body) = data[2..].split_at(n);
    let mut index = body.to_vec();
    // The data size field always tells the truth here (else nothing past it is reached).
    if index.len() >= 20 {
        index[12..20].copy_from_slice(&(frames.len() as u64).to_le_bytes());
    }
    let sum = BlobId::of(&index);
    index.extend_from_slice(&sum.0);
    let mut file = frames.to_vec();
    file.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    file.extend_from_slice(&((index.len() as u64 + 16) as u32).to_le_bytes());
    file.extend_from_slice(&index);
    file.extend_from_slice(&(index.len() as u64).to_le_bytes());
    file.extend_from_slice(b"PHCKIDX\n");
    let id = BlobId::of(&file);
    let _ = fs::create_dir_all(dir);
    let path = crate::layer::layer_path(dir, &id);
    if fs::write(&path, &file).is_err() {
        return false;
    }
    let ok = read_layer_file(dir, &id);
    let _ = fs::remove_file(&path);
    ok
}

fn read_layer_file(dir: &Path, id: &BlobId) -> bool {
    let Ok(ix) = read_index(dir, id) else {
        return false;
    };
    let _ = crate::layer::verify_layer(dir, id, ix.file_size);
    let Ok(mut reader) = LayerReader::open(dir, id) else {
        return false;
    };
    let mut scratch = FrameScratch::default();
    // In-memory reads only of blobs a reader would hold (entry chunks' cap).
    let entries: Vec<_> = ix.entries().collect();
    let mut any = false;
    for e in &entries {
        if e.len <= crate::limits::CHUNK_BLOB_MAX {
            any |= reader.read_blob_with(e, &mut scratch).is_ok();
        }
    }
    let mut map = BlobMap::default();
    map.add(ix.clone());
    let blobs: Vec<_> = entries
        .iter()
        .map(|e| (e.blob, map.get_all(&e.blob)))
        .filter(|(_, c)| !c.is_empty() && c[0].1.len <= 16 << 20)
        .collect();
    let deadline = Deadline::new(std::time::Duration::from_secs(10));
    let _ = crate::verify::verify_contents(&blobs, dir, 1, deadline);
    any
}

/// The sum of the lengths a chunk map's bytes list (an error when they are not well formed).
fn sum_of_map_lengths(data: &[u8]) -> crate::error::Result<u64> {
    let mut c = crate::codec::Cursor::new(data, "chunk map");
    c.u8()?;
    let n = c.varint()?;
    let mut total = 0u64;
    for _ in 0..n.min(data.len() as u64) {
        total = total.saturating_add(c.varint()?);
        c.array::<32>()?;
    }
    Ok(total)
}
