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
use crate::manifest::{
    CheckpointId, ChunkRef, CreateStats, MANIFEST_VERSION, Manifest, TreeManifest,
};
use crate::store::{Store, now_ns};

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
    let sink = Mutex::new(LayerSink::new(
        store.layers_dir.clone(),
        store.tmp_dir.clone(),
    )?);
    let mut fb = FrameBuilder::new()?;
    let mut seen = BTreeSet::new();
    let mut records = Vec::new();
    for e in entries {
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
            link: e.link.clone(),
        });
    }
    let enc = encode_chunk(&records);
    let blob = BlobId::of(&enc);
    fb.flush(&sink)?;
    fb.add(&sink, blob, BlobKind::Chunk, &enc, true)?;
    let mut s = sink.into_inner().expect("poisoned");
    s.finish()?;
    let layers: Vec<BlobId> = s.finished.iter().map(|l| l.layer).collect();
    let files: Vec<&Record> = records.iter().filter(|r| r.kind == RawKind::File).collect();
    let n_files = files.len() as u64;
    let bytes: u64 = files.iter().map(|r| r.size).sum();
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
            excludes: vec![],
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
    let bytes = m.encode();
    let tmp = store.tmp_dir.join("raw.manifest.tmp");
    write_file_synced(&tmp, &bytes)?;
    let dest = store.manifest_path(&m.id);
    fs::rename(&tmp, &dest).io("rename", &dest)?;
    sync_dir(&store.manifests_dir)?;
    Ok(m.id)
}
