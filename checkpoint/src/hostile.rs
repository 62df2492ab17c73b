//! The hostile-store corpus (issue 11 items 4–6, 10), shared by the engine's own test
//! (`checkpoint/tests/it/hostile.rs`) and the product's end-to-end test
//! (`tests/tests/e2e/hostile_store.rs`): stores a session could write — counts that
//! overflow, offsets that wrap, decompression bombs, sizes over the caps, contents that
//! do not match their hash, tar members of the wrong type, overlong paths, planted layers,
//! symlink tricks, damaged files — each built into a real store directory with valid
//! checksums where the format has them, so readers get past them to the hostile part.
//!
//! Test support only: compiled with the `test-support` feature, hidden from the docs.

use std::fs;
use std::path::PathBuf;

use crate::raw::{
    RawEntry, RawMember, RawOptions, write_checkpoint, write_checkpoint_with, write_layer,
};
use crate::{BlobId, CheckpointId, Limits, Manifest, Store};

pub fn layer_file(store: &Store, id: &BlobId) -> PathBuf {
    store.root().join("layers").join(format!("{id}.tar.zst"))
}

/// Makes a FIFO at `path` (with the system's `mkfifo`: no unsafe code here).
pub fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", path.display());
}

/// A zstd frame that inflates to `blocks` × 128 KiB: one raw block (`head`), then RLE
/// blocks of zeros (4 bytes each). 4096 blocks = 512 MiB from 16 KiB.
pub fn rle_bomb(head: &[u8], blocks: u32) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38];
    let raw = (head.len() as u32) << 3;
    f.extend_from_slice(&raw.to_le_bytes()[..3]);
    f.extend_from_slice(head);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let h = last | (1 << 1) | (128 << 10 << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// A tar header for a regular member named `name` of `size` bytes.
pub fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

/// Writes a layer file of raw frames plus an index of the given entries (valid
/// checksums); returns its id.
pub fn raw_layer(store: &Store, frames: &[u8], entries: &[(BlobId, u8, u64, u32, u64)]) -> BlobId {
    let mut index = b"PHCKIDX\n".to_vec();
    index.extend_from_slice(&1u32.to_le_bytes());
    index.extend_from_slice(&(frames.len() as u64).to_le_bytes());
    index.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| e.0);
    for (id, kind, fo, ho, len) in sorted {
        index.extend_from_slice(&id.0);
        index.push(kind);
        index.extend_from_slice(&fo.to_le_bytes());
        index.extend_from_slice(&ho.to_le_bytes());
        index.extend_from_slice(&len.to_le_bytes());
    }
    let sum = BlobId::of(&index);
    index.extend_from_slice(&sum.0);
    let mut file = frames.to_vec();
    file.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    file.extend_from_slice(&((index.len() + 16) as u32).to_le_bytes());
    file.extend_from_slice(&index);
    file.extend_from_slice(&(index.len() as u64).to_le_bytes());
    file.extend_from_slice(b"PHCKIDX\n");
    let id = BlobId::of(&file);
    fs::write(layer_file(store, &id), &file).unwrap();
    id
}

/// A checkpoint whose only file `f` names content `id` of `size` bytes held in `layer`.
pub fn file_in_layer(
    store: &Store,
    tree: &str,
    layer: BlobId,
    data_for_id: &[u8],
    size: u64,
) -> CheckpointId {
    let opts = RawOptions {
        skip_contents: true,
        extra_layers: vec![layer],
        sizes: vec![(0, size)],
        ..RawOptions::default()
    };
    write_checkpoint_with(
        store,
        tree,
        &[RawEntry::file("f", data_for_id)],
        &opts,
        |_| {},
    )
    .unwrap()
}

pub fn tweak(store: &Store, tree: &str, f: impl FnOnce(&mut Manifest)) -> CheckpointId {
    write_checkpoint_with(
        store,
        tree,
        &[RawEntry::dir("d"), RawEntry::file("d/x", b"content\n")],
        &RawOptions::default(),
        f,
    )
    .unwrap()
}

pub type Build = Box<dyn Fn(&Store, &CheckpointId) -> CheckpointId>;

pub struct Case {
    pub name: &'static str,
    /// Adds the hostile checkpoint to the store (the second argument is the honest one).
    pub build: Build,
    /// The caps the readers run under (most cases: the defaults).
    pub limits: Limits,
    /// Codes verify and restore may answer.
    pub codes: &'static [&'static str],
}

pub fn case(name: &'static str, codes: &'static [&'static str], build: Build) -> Case {
    Case {
        name,
        build,
        limits: Limits::default(),
        codes,
    }
}

pub fn with_limits(mut c: Case, limits: Limits) -> Case {
    c.limits = limits;
    c
}

/// The corpus; each case builds its checkpoint as tree `tree` of the store it is given
/// (the store already holds one honest checkpoint, the second argument, which some cases
/// damage in place).
pub fn cases(tree: &'static str) -> Vec<Case> {
    let e620: &'static [&'static str] = &["E620"];
    let e621: &'static [&'static str] = &["E621"];
    let e624: &'static [&'static str] = &["E624"];
    let e620_624: &'static [&'static str] = &["E620", "E624"];
    let unsafe_or_corrupt: &'static [&'static str] = &["E620", "E621"];
    let mut v = vec![
        // Item 4: counts from the manifest.
        case(
            "entry_count 2^40",
            e620,
            Box::new(move |s, _| tweak(s, tree, |m| m.trees[0].entry_count = 1 << 40)),
        ),
        case(
            "entry_count 2^62",
            e620,
            Box::new(move |s, _| tweak(s, tree, |m| m.trees[0].entry_count = 1 << 62)),
        ),
        case(
            "entry_count and chunk entries 2^62",
            e624,
            Box::new(move |s, _| {
                tweak(s, tree, |m| {
                    m.trees[0].entry_count = 1 << 62;
                    m.trees[0].chunks[0].entries = 1 << 62;
                })
            }),
        ),
        with_limits(
            case(
                "chunk entries 2^40 under an unlimited entry cap",
                e620,
                Box::new(move |s, _| {
                    tweak(s, tree, |m| {
                        m.trees[0].entry_count = 1 << 40;
                        m.trees[0].chunks[0].entries = 1 << 40;
                    })
                }),
            ),
            Limits {
                max_entries: u64::MAX,
                ..Limits::default()
            },
        ),
        case(
            "file_count disagrees with chunks",
            e620,
            Box::new(move |s, _| tweak(s, tree, |m| m.trees[0].file_count += 1)),
        ),
        case(
            "total_bytes overflows",
            e620,
            Box::new(move |s, _| {
                tweak(s, tree, |m| {
                    m.trees[0].total_bytes = u64::MAX;
                    m.trees[0].chunks[0].bytes = u64::MAX;
                    m.trees.push(m.trees[0].clone());
                    m.trees[1].name = "second".into();
                })
            }),
        ),
        case(
            "chunk names a layer not listed",
            e620,
            Box::new(move |s, _| tweak(s, tree, |m| m.trees[0].chunks[0].layers.push(99))),
        ),
        case(
            "chunk blob claims 2^40 bytes",
            e620,
            Box::new(move |s, _| {
                let fake = BlobId::of(b"chunk");
                let layer = raw_layer(
                    s,
                    &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                    &[(fake, 1, 0, 0, 1 << 40)],
                );
                tweak(s, tree, move |m| {
                    m.trees[0].chunks[0].blob = fake;
                    m.layers.push(layer);
                    let n = m.layers.len() as u32 - 1;
                    m.trees[0].chunks[0].layers = vec![n];
                })
            }),
        ),
        // Item 4: index lengths and offsets.
        with_limits(
            case(
                "index len wraps offset+512+len",
                e620,
                Box::new(move |s, _| {
                    let id = BlobId::of(b"wrap");
                    let layer = raw_layer(
                        s,
                        &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                        &[(id, 0, 0, 100, u64::MAX - 300)],
                    );
                    file_in_layer(s, tree, layer, b"wrap", u64::MAX - 300)
                }),
            ),
            // The byte cap (checked first) is lifted so the index itself is what fails.
            Limits {
                max_bytes: u64::MAX,
                ..Limits::default()
            },
        ),
        case(
            "header offset at u32::MAX",
            e620,
            Box::new(move |s, _| {
                let id = BlobId::of(b"off");
                let layer = raw_layer(
                    s,
                    &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                    &[(id, 0, 0, u32::MAX, 3)],
                );
                file_in_layer(s, tree, layer, b"off", 3)
            }),
        ),
        case(
            "frame offset past the data",
            e620,
            Box::new(move |s, _| {
                let id = BlobId::of(b"past");
                let layer = raw_layer(
                    s,
                    &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                    &[(id, 0, 1 << 40, 0, 4)],
                );
                file_in_layer(s, tree, layer, b"past", 4)
            }),
        ),
        case(
            "overlapping index entries",
            e620,
            Box::new(move |s, _| {
                let (a, b) = (b"first blob".as_slice(), b"second blob".as_slice());
                let mut frame = tar_header(&BlobId::of(a).to_hex(), a.len() as u64).to_vec();
                frame.extend_from_slice(a);
                frame.resize(1024 + 1024, 0);
                let frames = zstd::bulk::compress(&frame, 1).unwrap();
                let layer = raw_layer(
                    s,
                    &frames,
                    &[
                        (BlobId::of(a), 0, 0, 0, a.len() as u64),
                        (BlobId::of(b), 0, 0, 0, b.len() as u64),
                    ],
                );
                let opts = RawOptions {
                    skip_contents: true,
                    extra_layers: vec![layer],
                    ..RawOptions::default()
                };
                write_checkpoint_with(
                    s,
                    tree,
                    &[RawEntry::file("a", a), RawEntry::file("b", b)],
                    &opts,
                    |_| {},
                )
                .unwrap()
            }),
        ),
        // Item 6: content hashes and member types, checked before the target changes.
        case(
            "content does not match its hash",
            e620,
            Box::new(move |s, _| {
                let m = RawMember {
                    data: b"evil".to_vec(),
                    ..RawMember::content(b"good")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"good", 4)
            }),
        ),
        case(
            "tar size disagrees with the index",
            e620,
            Box::new(move |s, _| {
                let m = RawMember {
                    len: Some(5),
                    ..RawMember::content(b"four")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"four", 5)
            }),
        ),
        case(
            "member named for another blob",
            e620,
            Box::new(move |s, _| {
                let m = RawMember {
                    name: BlobId::of(b"x").to_hex().into_bytes(),
                    ..RawMember::content(b"named")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"named", 5)
            }),
        ),
        case(
            "symlink member",
            unsafe_or_corrupt,
            Box::new(move |s, _| {
                let m = RawMember {
                    entry_type: b'2',
                    ..RawMember::content(b"/etc/passwd")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"/etc/passwd", 11)
            }),
        ),
        case(
            "char device member",
            unsafe_or_corrupt,
            Box::new(move |s, _| {
                let m = RawMember {
                    entry_type: b'3',
                    ..RawMember::content(b"dev")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"dev", 3)
            }),
        ),
        case(
            "fifo member",
            unsafe_or_corrupt,
            Box::new(move |s, _| {
                let m = RawMember {
                    entry_type: b'6',
                    ..RawMember::content(b"fifo")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"fifo", 4)
            }),
        ),
        case(
            "content indexed as an entry chunk",
            e620,
            Box::new(move |s, _| {
                let m = RawMember {
                    kind: 1,
                    ..RawMember::content(b"kind")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, tree, layer, b"kind", 4)
            }),
        ),
        case(
            "content missing from every layer",
            e620,
            Box::new(move |s, _| {
                let opts = RawOptions {
                    skip_contents: true,
                    ..RawOptions::default()
                };
                write_checkpoint_with(s, tree, &[RawEntry::file("f", b"nowhere")], &opts, |_| {})
                    .unwrap()
            }),
        ),
        // Item 2: a layer that inflates far beyond its size, with a bad hash.
        case(
            "512 MiB bomb from 16 KiB (bad hash)",
            e620,
            Box::new(move |s, _| {
                let claimed = BlobId::of(b"something else");
                let size: u64 = 4096 * (128 << 10) - 512;
                let frames = rle_bomb(&tar_header(&claimed.to_hex(), size), 4096);
                let layer = raw_layer(s, &frames, &[(claimed, 0, 0, 0, size)]);
                file_in_layer(s, tree, layer, b"something else", size)
            }),
        ),
        case(
            "16 GiB declared, 1 MiB inflated",
            e620,
            Box::new(move |s, _| {
                let claimed = BlobId::of(b"sixteen");
                let size: u64 = 16 << 30;
                let frames = rle_bomb(&tar_header(&claimed.to_hex(), size), 8);
                let layer = raw_layer(s, &frames, &[(claimed, 0, 0, 0, size)]);
                file_in_layer(s, tree, layer, b"sixteen", size)
            }),
        ),
        with_limits(
            case(
                "16 GiB bomb over the byte cap",
                e624,
                Box::new(move |s, _| {
                    let claimed = BlobId::of(b"cap");
                    let size: u64 = 16 << 30;
                    let frames = rle_bomb(&tar_header(&claimed.to_hex(), size), 8);
                    let layer = raw_layer(s, &frames, &[(claimed, 0, 0, 0, size)]);
                    file_in_layer(s, tree, layer, b"cap", size)
                }),
            ),
            Limits {
                max_bytes: 1 << 30,
                ..Limits::default()
            },
        ),
        // Damaged files.
        case(
            "truncated layer",
            e620,
            Box::new(move |s, good| {
                let m = s.load(good).unwrap();
                for l in &m.layers {
                    let p = layer_file(s, l);
                    let d = fs::read(&p).unwrap();
                    fs::write(&p, &d[..d.len() - 10]).unwrap();
                }
                good.clone()
            }),
        ),
        case(
            "flipped byte in a layer",
            e620,
            Box::new(move |s, good| {
                let m = s.load(good).unwrap();
                for l in &m.layers {
                    let p = layer_file(s, l);
                    let mut d = fs::read(&p).unwrap();
                    d[20] ^= 0x40;
                    fs::write(&p, &d).unwrap();
                }
                good.clone()
            }),
        ),
        case(
            "flipped byte in the manifest",
            e620,
            Box::new(move |s, good| {
                let p = s.root().join("manifests").join(format!("{good}.manifest"));
                let mut d = fs::read(&p).unwrap();
                d[40] ^= 0x01;
                fs::write(&p, &d).unwrap();
                good.clone()
            }),
        ),
        case(
            "truncated manifest",
            e620,
            Box::new(move |s, good| {
                let p = s.root().join("manifests").join(format!("{good}.manifest"));
                let d = fs::read(&p).unwrap();
                fs::write(&p, &d[..d.len() / 2]).unwrap();
                good.clone()
            }),
        ),
        case(
            "layer missing",
            e620,
            Box::new(move |s, good| {
                let m = s.load(good).unwrap();
                fs::remove_file(layer_file(s, &m.layers[0])).unwrap();
                good.clone()
            }),
        ),
        // Entries.
        case(
            "duplicate paths",
            e620,
            Box::new(move |s, _| {
                write_checkpoint(
                    s,
                    tree,
                    &[RawEntry::file("a", b"1"), RawEntry::file("a", b"2")],
                )
                .unwrap()
            }),
        ),
        case(
            "'..' path",
            e621,
            Box::new(move |s, _| {
                write_checkpoint(s, tree, &[RawEntry::file("../escape", b"x")]).unwrap()
            }),
        ),
        case(
            "absolute path",
            e621,
            Box::new(move |s, _| {
                write_checkpoint(s, tree, &[RawEntry::file("/tmp/abs", b"x")]).unwrap()
            }),
        ),
        case(
            "symlink out, then a file through it",
            e621,
            Box::new(move |s, _| {
                write_checkpoint(
                    s,
                    tree,
                    &[RawEntry::link("l", 2, "/tmp"), RawEntry::file("l/x", b"x")],
                )
                .unwrap()
            }),
        ),
        case(
            "hard link entry",
            e621,
            Box::new(move |s, _| {
                write_checkpoint(s, tree, &[RawEntry::link("h", 3, "/etc/passwd")]).unwrap()
            }),
        ),
        case(
            "char device entry",
            e621,
            Box::new(move |s, _| {
                write_checkpoint(
                    s,
                    tree,
                    &[RawEntry {
                        kind: 4,
                        ..RawEntry::file("dev", b"")
                    }],
                )
                .unwrap()
            }),
        ),
        case(
            "fifo entry",
            e621,
            Box::new(move |s, _| {
                write_checkpoint(
                    s,
                    tree,
                    &[RawEntry {
                        kind: 6,
                        ..RawEntry::file("fifo", b"")
                    }],
                )
                .unwrap()
            }),
        ),
        // Item 3 / 10: caps known up front.
        case(
            "5000-byte path",
            e624,
            Box::new(move |s, _| {
                let mut entries = Vec::new();
                let mut p = String::new();
                while p.len() < 5000 {
                    if !p.is_empty() {
                        p.push('/');
                    }
                    p.push_str(&"d".repeat(200));
                    entries.push(RawEntry::dir(&p));
                }
                entries.push(RawEntry::file(&format!("{p}/f"), b"x"));
                write_checkpoint(s, tree, &entries).unwrap()
            }),
        ),
        case(
            "300-byte path component",
            e624,
            Box::new(move |s, _| {
                write_checkpoint(s, tree, &[RawEntry::file(&"n".repeat(300), b"x")]).unwrap()
            }),
        ),
        case(
            "5000-byte symlink target",
            e624,
            Box::new(move |s, _| {
                write_checkpoint(s, tree, &[RawEntry::link("l", 2, &"t".repeat(5000))]).unwrap()
            }),
        ),
        with_limits(
            case(
                "more entries than the cap",
                e624,
                Box::new(move |s, _| {
                    let entries: Vec<RawEntry> = (0..20)
                        .map(|i| RawEntry::file(&format!("f{i:02}"), b"x"))
                        .collect();
                    write_checkpoint(s, tree, &entries).unwrap()
                }),
            ),
            Limits {
                max_entries: 10,
                ..Limits::default()
            },
        ),
        with_limits(
            case(
                "declared sizes over the byte cap",
                e624,
                Box::new(move |s, _| {
                    let opts = RawOptions {
                        sizes: vec![(0, 2 << 30)],
                        ..RawOptions::default()
                    };
                    write_checkpoint_with(
                        s,
                        tree,
                        &[RawEntry::file("big", b"small")],
                        &opts,
                        |_| {},
                    )
                    .unwrap()
                }),
            ),
            Limits {
                max_bytes: 1 << 30,
                ..Limits::default()
            },
        ),
    ];
    // Store files that are not regular files: a reader that follows the link or opens
    // the FIFO reads forever or blocks forever (the coordinator with it).
    let manifest_of =
        |s: &Store, id: &CheckpointId| s.root().join("manifests").join(format!("{id}.manifest"));
    v.push(case(
        "manifest is a symlink to /dev/zero",
        e620,
        Box::new(move |s, _| {
            let id = tweak(s, tree, |_| {});
            let p = manifest_of(s, &id);
            fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
            id
        }),
    ));
    v.push(case(
        "manifest is a FIFO",
        e620,
        Box::new(move |s, _| {
            let id = tweak(s, tree, |_| {});
            let p = manifest_of(s, &id);
            fs::remove_file(&p).unwrap();
            mkfifo(&p);
            id
        }),
    ));
    v.push(case(
        "manifest is a sparse 4 GiB file",
        e620,
        Box::new(move |s, _| {
            let id = tweak(s, tree, |_| {});
            let f = fs::OpenOptions::new()
                .write(true)
                .open(manifest_of(s, &id))
                .unwrap();
            f.set_len(4 << 30).unwrap();
            id
        }),
    ));
    v.push(case(
        "layer is a FIFO",
        e620,
        Box::new(move |s, _| {
            let id = tweak(s, tree, |_| {});
            for l in &s.load(&id).unwrap().layers {
                let p = layer_file(s, l);
                fs::remove_file(&p).unwrap();
                mkfifo(&p);
            }
            id
        }),
    ));
    v.push(case(
        "layer is a symlink to /dev/zero",
        e620,
        Box::new(move |s, _| {
            let id = tweak(s, tree, |_| {});
            for l in &s.load(&id).unwrap().layers {
                let p = layer_file(s, l);
                fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
            }
            id
        }),
    ));
    // Declared sizes that differ from the content (without a cap) are corrupt.
    v.push(case(
        "declared size differs from content",
        e620_624,
        Box::new(move |s, _| {
            let opts = RawOptions {
                sizes: vec![(0, 1 << 40)],
                ..RawOptions::default()
            };
            write_checkpoint_with(s, tree, &[RawEntry::file("big", b"small")], &opts, |_| {})
                .unwrap()
        }),
    ));
    v
}
