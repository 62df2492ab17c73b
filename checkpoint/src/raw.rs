//! Test support: writes a checkpoint from hand-made entries, bypassing every check that
//! `create` and the scanner guarantee, with valid checksums throughout. Used to prove that
//! restore refuses hostile stores (E621) rather than trusting their writer.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Mutex;

use crate::codec::{BlobId, escape_path};
use crate::entry::{RawKind, Record, content_digest, encode_chunk};
use crate::error::{IoContext, Result};
use crate::layer::{BlobKind, FrameBuilder, LayerSink, sync_dir, write_file_synced};
use crate::limits::now_ns;
use crate::manifest::{
    CheckpointId, ChunkRef, CreateStats, MANIFEST_VERSION, Manifest, TreeManifest,
};
use crate::store::Store;

/// One hand-made entry. `kind`: 0 file, 1 dir, 2 symlink, 3 hard link, 4 char device,
/// 5 block device, 6 fifo, 7 socket.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub kind: u8,
    pub mode: u32,
    pub link: Vec<u8>,
    pub content: Vec<u8>,
}

impl RawEntry {
    pub fn file(path: &str, content: &[u8]) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind: 0,
            mode: 0o644,
            link: vec![],
            content: content.to_vec(),
        }
    }
    pub fn dir(path: &str) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind: 1,
            mode: 0o755,
            link: vec![],
            content: vec![],
        }
    }
    pub fn link(path: &str, kind: u8, target: &str) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind,
            mode: 0o777,
            link: target.into(),
            content: vec![],
        }
    }
}

/// Writes the entries (in the given order, one chunk) as tree `tree` of a new checkpoint.
pub fn write_checkpoint(store: &Store, tree: &str, entries: &[RawEntry]) -> Result<CheckpointId> {
    write_checkpoint_with(store, tree, entries, &RawOptions::default(), |_| {})
}

/// How `write_checkpoint_with` departs from an honest writer.
#[derive(Clone, Debug, Default)]
pub struct RawOptions {
    /// Do not store file contents (they are expected in `extra_layers`).
    pub skip_contents: bool,
    /// Layers listed in the manifest (and in the chunk's layer list) besides those written.
    pub extra_layers: Vec<BlobId>,
    /// Declared sizes that differ from the content's length: (entry index, size).
    pub sizes: Vec<(usize, u64)>,
    /// The tree's excludes.
    pub excludes: Vec<String>,
    /// Entries stored as chunked files: (entry index, chunk blobs to store). The entry's
    /// `content` is then its chunk map's bytes (its size defaults to their length: set the
    /// file's size with `sizes`).
    pub chunked: Vec<(usize, Vec<Vec<u8>>)>,
}

/// `write_checkpoint` with departures (`RawOptions`), then `tweak` applied to the manifest
/// before it is encoded (with a valid checksum).
pub fn write_checkpoint_with(
    store: &Store,
    tree: &str,
    entries: &[RawEntry],
    opts: &RawOptions,
    tweak: impl FnOnce(&mut Manifest),
) -> Result<CheckpointId> {
    let sink = Mutex::new(LayerSink::new(
        store.layers_dir.clone(),
        store.tmp_dir.clone(),
    )?);
    let mut fb = FrameBuilder::new()?;
    let mut seen = BTreeSet::new();
    let mut records = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let chunked = opts.chunked.iter().find(|(j, _)| *j == i);
        if let Some((_, chunks)) = chunked {
            for c in chunks {
                let id = BlobId::of(c);
                if seen.insert(id) {
                    fb.add(&sink, id, BlobKind::Content, c, false)?;
                }
            }
        }
        let kind = match e.kind {
            0 => RawKind::File,
            1 => RawKind::Dir,
            2 => RawKind::Symlink,
            3 => RawKind::HardLink,
            4 => RawKind::CharDevice,
            5 => RawKind::BlockDevice,
            6 => RawKind::Fifo,
            _ => RawKind::Socket,
        };
        let content = (kind == RawKind::File).then(|| BlobId::of(&e.content));
        if let Some(c) = content
            && !opts.skip_contents
            && seen.insert(c)
        {
            fb.add(&sink, c, BlobKind::Content, &e.content, false)?;
        }
        records.push(Record {
            path: e.path.clone(),
            kind,
            mode: e.mode,
            size: if kind == RawKind::File {
                e.content.len() as u64
            } else {
                0
            },
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            racy: true,
            content,
            chunked: chunked.is_some(),
            link: e.link.clone(),
        });
    }
    for (i, size) in &opts.sizes {
        records[*i].size = *size;
    }
    let enc = encode_chunk(&records);
    let blob = BlobId::of(&enc);
    fb.flush(&sink)?;
    fb.add(&sink, blob, BlobKind::Chunk, &enc, true)?;
    let mut s = sink.into_inner().expect("poisoned");
    s.finish()?;
    let mut layers: Vec<BlobId> = s.finished.iter().map(|l| l.layer).collect();
    layers.extend(opts.extra_layers.iter().copied());
    let files: Vec<&Record> = records.iter().filter(|r| r.kind == RawKind::File).collect();
    let n_files = files.len() as u64;
    let bytes: u64 = files.iter().fold(0u64, |b, r| b.saturating_add(r.size));
    let ms = now_ns() / 1_000_000;
    let mut m = Manifest {
        format_version: MANIFEST_VERSION,
        id: CheckpointId::new(ms, format!("raw-{}", now_ns()).as_bytes()),
        parent: None,
        created_at_ms: ms,
        trigger: "manual".into(),
        message: Some("hand-made".into()),
        metadata: serde_json::Value::Null,
        trees: vec![TreeManifest {
            name: tree.into(),
            excludes: opts.excludes.clone(),
            entry_count: records.len() as u64,
            file_count: n_files,
            total_bytes: bytes,
            chunks: vec![ChunkRef {
                first: escape_path(&records[0].path),
                blob,
                entries: records.len() as u64,
                files: n_files,
                bytes,
                digest: content_digest(&records),
                layers: (0..layers.len() as u32).collect(),
            }],
        }],
        layers,
        stats: CreateStats::default(),
        checksum: String::new(),
    };
    tweak(&mut m);
    write_manifest(store, &mut m)?;
    Ok(m.id)
}

/// Encodes `m` (with a fresh checksum) into the store, replacing any manifest of its id.
pub fn write_manifest(store: &Store, m: &mut Manifest) -> Result<()> {
    let bytes = m.encode();
    let tmp = store.tmp_dir.join("raw.manifest.tmp");
    write_file_synced(&tmp, &bytes)?;
    let dest = store.manifest_path(&m.id);
    fs::rename(&tmp, &dest).io("rename", &dest)?;
    sync_dir(&store.manifests_dir)?;
    Ok(())
}

/// One tar member of a hand-made layer and the index entry that describes it.
#[derive(Clone, Debug)]
pub struct RawMember {
    /// The id the index claims (need not be the data's hash).
    pub id: BlobId,
    /// The member's name in its tar header (normally `id` in hex).
    pub name: Vec<u8>,
    /// The tar type flag (`b'0'` regular file, `b'2'` symlink, `b'3'` char device, …).
    pub entry_type: u8,
    pub data: Vec<u8>,
    /// Index entry: blob kind (0 content, 1 entry chunk), and overrides of the length
    /// and header offset the writer would record.
    pub kind: u8,
    pub len: Option<u64>,
    pub header_offset: Option<u32>,
}

impl RawMember {
    /// An honest content member: named and indexed by the data's hash.
    pub fn content(data: &[u8]) -> RawMember {
        let id = BlobId::of(data);
        RawMember {
            id,
            name: id.to_hex().into_bytes(),
            entry_type: b'0',
            data: data.to_vec(),
            kind: 0,
            len: None,
            header_offset: None,
        }
    }
}

/// Writes a layer of the given members (one zstd frame of tar stream, the end marker, the
/// index trailer with a valid checksum) into `layers/` under its blake3 name. Index
/// entries are sorted by id; duplicates are kept (a reader must refuse them).
pub fn write_layer(store: &Store, members: &[RawMember]) -> Result<BlobId> {
    let mut stream = Vec::new();
    let mut entries = Vec::new();
    for m in members {
        let at = stream.len() as u32;
        let mut h = [0u8; 512];
        let n = m.name.len().min(100);
        h[..n].copy_from_slice(&m.name[..n]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", m.data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = m.entry_type;
        h[257..265].copy_from_slice(b"ustar  \0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        stream.extend_from_slice(&h);
        stream.extend_from_slice(&m.data);
        stream.resize(stream.len().next_multiple_of(512), 0);
        entries.push(crate::layer::IndexEntry {
            blob: m.id,
            kind: if m.kind == 0 {
                BlobKind::Content
            } else {
                BlobKind::Chunk
            },
            frame_offset: 0,
            header_offset: m.header_offset.unwrap_or(at),
            len: m.len.unwrap_or(m.data.len() as u64),
        });
    }
    stream.extend_from_slice(&[0u8; 1024]);
    let mut file = zstd::bulk::compress(&stream, 3).io("compress", &store.tmp_dir)?;
    let data_size = file.len() as u64;
    entries.sort_by_key(|e| e.blob);
    let mut index = Vec::new();
    index.extend_from_slice(b"PHCKIDX\n");
    index.extend_from_slice(&1u32.to_le_bytes());
    index.extend_from_slice(&data_size.to_le_bytes());
    index.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in &entries {
        index.extend_from_slice(&e.blob.0);
        index.push(e.kind as u8);
        index.extend_from_slice(&e.frame_offset.to_le_bytes());
        index.extend_from_slice(&e.header_offset.to_le_bytes());
        index.extend_from_slice(&e.len.to_le_bytes());
    }
    let sum = BlobId::of(&index);
    index.extend_from_slice(&sum.0);
    file.extend_from_slice(&crate::layer::index_trailer(&index));
    let id = BlobId::of(&file);
    let path = crate::layer::layer_path(&store.layers_dir, &id);
    fs::write(&path, &file).io("write layer", &path)?;
    Ok(id)
}
