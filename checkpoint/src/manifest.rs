//! Checkpoint manifests: one small, self-checking JSON document per checkpoint.
//!
//! File layout (docs/formats/checkpoint.md): a magic/version line, the JSON body, and a
//! final line `blake3 <hex>` holding the hash of every byte before it. A manifest lists
//! the entry chunks of each tree (the entries themselves live in chunk blobs, named by
//! their blake3, so unchanged parts of a tree cost nothing in the next checkpoint) and every
//! layer those chunks and the files they name are stored in.
//!
//! Promise: `decode` accepts exactly what `encode` produced (or an older version of it),
//! and reports any other input as E620.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::BlobId;
use crate::error::{CheckpointError, Result};

/// The manifest format this code writes; it reads every version up to this one.
pub const MANIFEST_VERSION: u32 = 1;
const MAGIC: &str = "PARHELIA-CHECKPOINT-MANIFEST";

/// `cp-<unix-ms, 13 digits>-<8 hex>`; ids sort by creation time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(pub String);

impl CheckpointId {
    /// Checks the shape, so an id can be used as a file name safely.
    pub fn parse(s: &str) -> Result<CheckpointId> {
        let ok = s.len() == 25
            && s.starts_with("cp-")
            && s.as_bytes()[16] == b'-'
            && s[3..16].bytes().all(|b| b.is_ascii_digit())
            && s[17..]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(CheckpointId(s.to_string()))
        } else {
            Err(CheckpointError::NotFound { id: s.to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn new(created_at_ms: i64, salt: &[u8]) -> CheckpointId {
        let h = blake3::hash(salt);
        CheckpointId(format!("cp-{created_at_ms:013}-{}", &h.to_hex()[..8]))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of a tree's sorted entries, stored as a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The first entry's path (percent-escaped bytes, see `codec::escape_path`).
    pub first: String,
    /// The chunk blob (blake3 of its encoding).
    pub blob: BlobId,
    pub entries: u64,
    /// Regular files in the chunk and the sum of their sizes.
    pub files: u64,
    pub bytes: u64,
    /// blake3 over the entries' content fields (path, kind, mode, size, content, link),
    /// which is what "unchanged" compares.
    pub digest: BlobId,
    /// Indices into `Manifest::layers` of every layer holding this chunk or a file it names.
    pub layers: Vec<u32>,
}

/// One captured directory tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeManifest {
    pub name: String,
    /// The gitignore-style excludes in force when it was captured (restore leaves them alone).
    pub excludes: Vec<String>,
    pub entry_count: u64,
    pub file_count: u64,
    pub total_bytes: u64,
    pub chunks: Vec<ChunkRef>,
}

/// What one checkpoint cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateStats {
    /// Uncompressed bytes of file content this checkpoint stored that the store lacked.
    pub new_bytes: u64,
    /// Files whose content was read and hashed (the rest came from the stat fast path or the parent).
    pub hashed_files: u64,
    /// Bytes written to the store (layers, layer indexes, this manifest excluded).
    pub written_bytes: u64,
    /// Layers this checkpoint wrote.
    pub new_layers: u64,
    /// Wall milliseconds by phase (absent in manifests written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_ms: Option<PhaseMs>,
}

/// Where a checkpoint's time went, in wall milliseconds (docs/formats/checkpoint.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseMs {
    /// Walking the trees (or applying the change hint) to decide what changed.
    pub detect: u64,
    /// Hashing and storing the changed files, after the walk (it overlaps the walk).
    pub hash: u64,
    /// zstd compression, summed over the threads that compressed (inside `hash` and the
    /// storing of entry chunks).
    pub compress: u64,
    /// Making it durable: the layers' and the manifest's fdatasync, renames, directory
    /// fsyncs. Only in the value `create` returns: the manifest file is written before its
    /// own commit, so it cannot hold this (`None` in a loaded manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<u64>,
    /// Capturing the workspace's git state, measured by the caller before `create` (the
    /// agent: `Store::create_with_git_ms`); absent when the caller did not capture it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<u64>,
}

/// A checkpoint's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: CheckpointId,
    pub parent: Option<CheckpointId>,
    pub created_at_ms: i64,
    pub trigger: String,
    pub message: Option<String>,
    pub metadata: serde_json::Value,
    pub trees: Vec<TreeManifest>,
    /// blake3 ids of the layers this checkpoint needs (its chunks and their files).
    pub layers: Vec<BlobId>,
    pub stats: CreateStats,
    /// The blake3 of the encoded manifest (filled in on encode and decode; not part of the JSON).
    #[serde(skip)]
    pub checksum: String,
}

impl Manifest {
    pub fn tree(&self, name: &str) -> Option<&TreeManifest> {
        self.trees.iter().find(|t| t.name == name)
    }

    pub fn file_count(&self) -> u64 {
        self.trees
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.file_count))
    }

    pub fn total_bytes(&self) -> u64 {
        self.trees
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.total_bytes))
    }

    /// Serializes with the header line and checksum trailer; sets `self.checksum`.
    pub(crate) fn encode(&mut self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {}\n", self.format_version).into_bytes();
        serde_json::to_writer(&mut out, self).expect("a manifest always serializes");
        out.push(b'\n');
        let sum = BlobId::of(&out).to_hex();
        out.extend_from_slice(format!("blake3 {sum}\n").as_bytes());
        self.checksum = sum;
        out
    }

    pub fn decode(data: &[u8]) -> Result<Manifest> {
        let bad = |what: &str| CheckpointError::corrupt(format!("manifest {what}"));
        let body_end = data
            .strip_suffix(b"\n")
            .and_then(|d| d.iter().rposition(|b| *b == b'\n'))
            .map(|i| i + 1)
            .ok_or_else(|| bad("is truncated"))?;
        let (body, trailer) = data.split_at(body_end);
        let trailer = std::str::from_utf8(trailer).map_err(|_| bad("has a bad checksum line"))?;
        let sum = trailer
            .strip_prefix("blake3 ")
            .and_then(|s| s.strip_suffix('\n'))
            .ok_or_else(|| bad("is truncated"))?;
        let actual = BlobId::of(body).to_hex();
        if sum != actual {
            return Err(bad("checksum mismatch"));
        }
        let nl = body
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| bad("is truncated"))?;
        let header = std::str::from_utf8(&body[..nl]).map_err(|_| bad("has a bad header"))?;
        let version: u32 = header
            .strip_prefix(MAGIC)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("has a bad magic"))?;
        if version == 0 || version > MANIFEST_VERSION {
            return Err(CheckpointError::corrupt(format!(
                "manifest format version {version} is not supported (this reader knows 1..={MANIFEST_VERSION})"
            )));
        }
        let mut m: Manifest = serde_json::from_slice(&body[nl + 1..])
            .map_err(|e| CheckpointError::corrupt(format!("manifest is unreadable: {e}")))?;
        if m.format_version != version {
            return Err(bad("versions disagree"));
        }
        for t in &m.trees {
            // The tree's counts are the sums of its chunks' (as `create` writes them), so
            // a reader can trust `entry_count` as a bound once the chunks are loaded.
            let (mut entries, mut files, mut bytes) = (0u64, 0u64, 0u64);
            for c in &t.chunks {
                if c.layers.iter().any(|l| *l as usize >= m.layers.len()) {
                    return Err(bad("names a layer it does not list"));
                }
                if c.entries == 0 || c.files > c.entries {
                    return Err(bad("has a chunk with impossible counts"));
                }
                entries = entries
                    .checked_add(c.entries)
                    .ok_or_else(|| bad("has impossible entry counts"))?;
                files = files
                    .checked_add(c.files)
                    .ok_or_else(|| bad("has impossible file counts"))?;
                bytes = bytes
                    .checked_add(c.bytes)
                    .ok_or_else(|| bad("has impossible byte counts"))?;
            }
            if entries != t.entry_count || files != t.file_count || bytes != t.total_bytes {
                return Err(bad("tree counts disagree with its chunks"));
            }
        }
        m.checksum = actual;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            id: CheckpointId::new(1_700_000_000_000, b"x"),
            parent: None,
            created_at_ms: 1_700_000_000_000,
            trigger: "manual".into(),
            message: Some("hi".into()),
            metadata: serde_json::json!({"git": {"head": "abc"}}),
            trees: vec![],
            layers: vec![],
            stats: CreateStats::default(),
            checksum: String::new(),
        }
    }

    #[test]
    fn manifests_round_trip_and_detect_damage() {
        let mut m = sample();
        let enc = m.encode();
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            assert_eq!(
                Manifest::decode(&bad).unwrap_err().code(),
                "E620",
                "flip at {i}"
            );
        }
        for n in 0..enc.len() {
            assert_eq!(
                Manifest::decode(&enc[..n]).unwrap_err().code(),
                "E620",
                "truncated at {n}"
            );
        }
    }

    #[test]
    fn ids_have_a_fixed_shape() {
        let id = CheckpointId::new(1_700_000_000_000, b"x");
        assert_eq!(CheckpointId::parse(id.as_str()).unwrap(), id);
        assert!(CheckpointId::parse("cp-../../etc").is_err());
    }
}
