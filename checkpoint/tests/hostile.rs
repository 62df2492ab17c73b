//! The hostile-store corpus (issue 11 items 4–6, 10): dozens of stores a session could
//! write, each run through every reader — list, load (show), entries, read_file, diff,
//! file_diff, verify, restore. For each: no panic, a coded error from verify and restore,
//! memory bounded by the caps (`Limits`), and the restore target byte-for-byte untouched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use parhelia_checkpoint::raw::{
    RawEntry, RawMember, RawOptions, write_checkpoint, write_checkpoint_with, write_layer,
};
use parhelia_checkpoint::{BlobId, CheckpointId, Limits, Manifest, Store};

const TREE: &str = "w";

/// A store holding one honest checkpoint (the other side of diffs).
fn fresh() -> (tempfile::TempDir, Store, CheckpointId) {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(&ws, "a.txt", b"hello\n");
    write(&ws, "src/lib.rs", b"fn main() {}\n");
    let store = Store::open(&t.path().join("store")).unwrap();
    let good = created(store.create(&unknown(TREE, &ws)).unwrap()).id;
    (t, store, good)
}

/// A target with local state that a failed restore must leave exactly as it is.
fn dirty_target(root: &Path) -> PathBuf {
    let out = root.join("target");
    write(&out, "precious.txt", b"do not touch\n");
    write(&out, "src/lib.rs", b"local edit\n");
    write(&out, "deep/er/file", b"x");
    out
}

fn store_bytes(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            out.push((e.path().to_path_buf(), fs::read(e.path()).unwrap()));
        }
    }
    out
}

fn layer_file(store: &Store, id: &BlobId) -> PathBuf {
    store.root().join("layers").join(format!("{id}.tar.zst"))
}

/// A zstd frame that inflates to `blocks` × 128 KiB: one raw block (`head`), then RLE
/// blocks of zeros (4 bytes each). 4096 blocks = 512 MiB from 16 KiB.
fn rle_bomb(head: &[u8], blocks: u32) -> Vec<u8> {
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
fn tar_header(name: &str, size: u64) -> [u8; 512] {
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
fn raw_layer(store: &Store, frames: &[u8], entries: &[(BlobId, u8, u64, u32, u64)]) -> BlobId {
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
fn file_in_layer(store: &Store, layer: BlobId, data_for_id: &[u8], size: u64) -> CheckpointId {
    let opts = RawOptions {
        skip_contents: true,
        extra_layers: vec![layer],
        sizes: vec![(0, size)],
        ..RawOptions::default()
    };
    write_checkpoint_with(
        store,
        TREE,
        &[RawEntry::file("f", data_for_id)],
        &opts,
        |_| {},
    )
    .unwrap()
}

fn tweak(store: &Store, f: impl FnOnce(&mut Manifest)) -> CheckpointId {
    write_checkpoint_with(
        store,
        TREE,
        &[RawEntry::dir("d"), RawEntry::file("d/x", b"content\n")],
        &RawOptions::default(),
        f,
    )
    .unwrap()
}

type Build = Box<dyn Fn(&Store, &CheckpointId) -> CheckpointId>;

struct Case {
    name: &'static str,
    build: Build,
    limits: Limits,
    /// Codes verify and restore may answer.
    codes: &'static [&'static str],
}

fn case(name: &'static str, codes: &'static [&'static str], build: Build) -> Case {
    Case {
        name,
        build,
        limits: Limits::default(),
        codes,
    }
}

fn with_limits(mut c: Case, limits: Limits) -> Case {
    c.limits = limits;
    c
}

/// Peak resident memory of this process (VmHWM), bytes.
fn peak_rss() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn cases() -> Vec<Case> {
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
            Box::new(|s, _| tweak(s, |m| m.trees[0].entry_count = 1 << 40)),
        ),
        case(
            "entry_count 2^62",
            e620,
            Box::new(|s, _| tweak(s, |m| m.trees[0].entry_count = 1 << 62)),
        ),
        case(
            "entry_count and chunk entries 2^62",
            e624,
            Box::new(|s, _| {
                tweak(s, |m| {
                    m.trees[0].entry_count = 1 << 62;
                    m.trees[0].chunks[0].entries = 1 << 62;
                })
            }),
        ),
        with_limits(
            case(
                "chunk entries 2^40 under an unlimited entry cap",
                e620,
                Box::new(|s, _| {
                    tweak(s, |m| {
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
            Box::new(|s, _| tweak(s, |m| m.trees[0].file_count += 1)),
        ),
        case(
            "total_bytes overflows",
            e620,
            Box::new(|s, _| {
                tweak(s, |m| {
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
            Box::new(|s, _| tweak(s, |m| m.trees[0].chunks[0].layers.push(99))),
        ),
        case(
            "chunk blob claims 2^40 bytes",
            e620,
            Box::new(|s, _| {
                let fake = BlobId::of(b"chunk");
                let layer = raw_layer(
                    s,
                    &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                    &[(fake, 1, 0, 0, 1 << 40)],
                );
                tweak(s, move |m| {
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
                Box::new(|s, _| {
                    let id = BlobId::of(b"wrap");
                    let layer = raw_layer(
                        s,
                        &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                        &[(id, 0, 0, 100, u64::MAX - 300)],
                    );
                    file_in_layer(s, layer, b"wrap", u64::MAX - 300)
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
            Box::new(|s, _| {
                let id = BlobId::of(b"off");
                let layer = raw_layer(
                    s,
                    &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                    &[(id, 0, 0, u32::MAX, 3)],
                );
                file_in_layer(s, layer, b"off", 3)
            }),
        ),
        case(
            "frame offset past the data",
            e620,
            Box::new(|s, _| {
                let id = BlobId::of(b"past");
                let layer = raw_layer(
                    s,
                    &zstd::bulk::compress(&[0u8; 2048], 1).unwrap(),
                    &[(id, 0, 1 << 40, 0, 4)],
                );
                file_in_layer(s, layer, b"past", 4)
            }),
        ),
        case(
            "overlapping index entries",
            e620,
            Box::new(|s, _| {
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
                    TREE,
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
            Box::new(|s, _| {
                let m = RawMember {
                    data: b"evil".to_vec(),
                    ..RawMember::content(b"good")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"good", 4)
            }),
        ),
        case(
            "tar size disagrees with the index",
            e620,
            Box::new(|s, _| {
                let m = RawMember {
                    len: Some(5),
                    ..RawMember::content(b"four")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"four", 5)
            }),
        ),
        case(
            "member named for another blob",
            e620,
            Box::new(|s, _| {
                let m = RawMember {
                    name: BlobId::of(b"x").to_hex().into_bytes(),
                    ..RawMember::content(b"named")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"named", 5)
            }),
        ),
        case(
            "symlink member",
            unsafe_or_corrupt,
            Box::new(|s, _| {
                let m = RawMember {
                    entry_type: b'2',
                    ..RawMember::content(b"/etc/passwd")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"/etc/passwd", 11)
            }),
        ),
        case(
            "char device member",
            unsafe_or_corrupt,
            Box::new(|s, _| {
                let m = RawMember {
                    entry_type: b'3',
                    ..RawMember::content(b"dev")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"dev", 3)
            }),
        ),
        case(
            "fifo member",
            unsafe_or_corrupt,
            Box::new(|s, _| {
                let m = RawMember {
                    entry_type: b'6',
                    ..RawMember::content(b"fifo")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"fifo", 4)
            }),
        ),
        case(
            "content indexed as an entry chunk",
            e620,
            Box::new(|s, _| {
                let m = RawMember {
                    kind: 1,
                    ..RawMember::content(b"kind")
                };
                let layer = write_layer(s, &[m]).unwrap();
                file_in_layer(s, layer, b"kind", 4)
            }),
        ),
        case(
            "content missing from every layer",
            e620,
            Box::new(|s, _| {
                let opts = RawOptions {
                    skip_contents: true,
                    ..RawOptions::default()
                };
                write_checkpoint_with(s, TREE, &[RawEntry::file("f", b"nowhere")], &opts, |_| {})
                    .unwrap()
            }),
        ),
        // Item 2: a layer that inflates far beyond its size, with a bad hash.
        case(
            "512 MiB bomb from 16 KiB (bad hash)",
            e620,
            Box::new(|s, _| {
                let claimed = BlobId::of(b"something else");
                let size: u64 = 4096 * (128 << 10) - 512;
                let frames = rle_bomb(&tar_header(&claimed.to_hex(), size), 4096);
                let layer = raw_layer(s, &frames, &[(claimed, 0, 0, 0, size)]);
                file_in_layer(s, layer, b"something else", size)
            }),
        ),
        case(
            "16 GiB declared, 1 MiB inflated",
            e620,
            Box::new(|s, _| {
                let claimed = BlobId::of(b"sixteen");
                let size: u64 = 16 << 30;
                let frames = rle_bomb(&tar_header(&claimed.to_hex(), size), 8);
                let layer = raw_layer(s, &frames, &[(claimed, 0, 0, 0, size)]);
                file_in_layer(s, layer, b"sixteen", size)
            }),
        ),
        with_limits(
            case(
                "16 GiB bomb over the byte cap",
                e624,
                Box::new(|s, _| {
                    let claimed = BlobId::of(b"cap");
                    let size: u64 = 16 << 30;
                    let frames = rle_bomb(&tar_header(&claimed.to_hex(), size), 8);
                    let layer = raw_layer(s, &frames, &[(claimed, 0, 0, 0, size)]);
                    file_in_layer(s, layer, b"cap", size)
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
            Box::new(|s, good| {
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
            Box::new(|s, good| {
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
            Box::new(|s, good| {
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
            Box::new(|s, good| {
                let p = s.root().join("manifests").join(format!("{good}.manifest"));
                let d = fs::read(&p).unwrap();
                fs::write(&p, &d[..d.len() / 2]).unwrap();
                good.clone()
            }),
        ),
        case(
            "layer missing",
            e620,
            Box::new(|s, good| {
                let m = s.load(good).unwrap();
                fs::remove_file(layer_file(s, &m.layers[0])).unwrap();
                good.clone()
            }),
        ),
        // Entries.
        case(
            "duplicate paths",
            e620,
            Box::new(|s, _| {
                write_checkpoint(
                    s,
                    TREE,
                    &[RawEntry::file("a", b"1"), RawEntry::file("a", b"2")],
                )
                .unwrap()
            }),
        ),
        case(
            "'..' path",
            e621,
            Box::new(|s, _| {
                write_checkpoint(s, TREE, &[RawEntry::file("../escape", b"x")]).unwrap()
            }),
        ),
        case(
            "absolute path",
            e621,
            Box::new(|s, _| {
                write_checkpoint(s, TREE, &[RawEntry::file("/tmp/abs", b"x")]).unwrap()
            }),
        ),
        case(
            "symlink out, then a file through it",
            e621,
            Box::new(|s, _| {
                write_checkpoint(
                    s,
                    TREE,
                    &[RawEntry::link("l", 2, "/tmp"), RawEntry::file("l/x", b"x")],
                )
                .unwrap()
            }),
        ),
        case(
            "hard link entry",
            e621,
            Box::new(|s, _| {
                write_checkpoint(s, TREE, &[RawEntry::link("h", 3, "/etc/passwd")]).unwrap()
            }),
        ),
        case(
            "char device entry",
            e621,
            Box::new(|s, _| {
                write_checkpoint(
                    s,
                    TREE,
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
            Box::new(|s, _| {
                write_checkpoint(
                    s,
                    TREE,
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
            Box::new(|s, _| {
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
                write_checkpoint(s, TREE, &entries).unwrap()
            }),
        ),
        case(
            "300-byte path component",
            e624,
            Box::new(|s, _| {
                write_checkpoint(s, TREE, &[RawEntry::file(&"n".repeat(300), b"x")]).unwrap()
            }),
        ),
        case(
            "5000-byte symlink target",
            e624,
            Box::new(|s, _| {
                write_checkpoint(s, TREE, &[RawEntry::link("l", 2, &"t".repeat(5000))]).unwrap()
            }),
        ),
        with_limits(
            case(
                "more entries than the cap",
                e624,
                Box::new(|s, _| {
                    let entries: Vec<RawEntry> = (0..20)
                        .map(|i| RawEntry::file(&format!("f{i:02}"), b"x"))
                        .collect();
                    write_checkpoint(s, TREE, &entries).unwrap()
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
                Box::new(|s, _| {
                    let opts = RawOptions {
                        sizes: vec![(0, 2 << 30)],
                        ..RawOptions::default()
                    };
                    write_checkpoint_with(
                        s,
                        TREE,
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
    // Declared sizes that differ from the content (without a cap) are corrupt.
    v.push(case(
        "declared size differs from content",
        e620_624,
        Box::new(|s, _| {
            let opts = RawOptions {
                sizes: vec![(0, 1 << 40)],
                ..RawOptions::default()
            };
            write_checkpoint_with(s, TREE, &[RawEntry::file("big", b"small")], &opts, |_| {})
                .unwrap()
        }),
    ));
    v
}

#[test]
fn every_reader_refuses_every_hostile_store_and_leaves_the_target_untouched() {
    let all = cases();
    assert!(all.len() >= 35, "{} cases", all.len());
    for c in all {
        eprintln!("case: {}", c.name);
        let (t, store, good) = fresh();
        let bad = (c.build)(&store, &good);
        let store = Store::open(store.root())
            .unwrap()
            .with_limits(c.limits.clone());
        let target = dirty_target(t.path());
        let before = listing(&target);
        let store_before = store_bytes(store.root());

        // list/latest never fail on a damaged manifest (they skip it) and never panic.
        store.list().unwrap();
        store.latest().unwrap();
        // show: loading either works or is E620.
        if let Err(e) = store.load(&bad) {
            assert_eq!(e.code(), "E620", "{}: load: {e}", c.name);
        }
        // Readers that do not promise to check everything still must not panic.
        let _ = store.entries(&bad, TREE);
        let _ = store.diff(&good, &bad);
        let _ = store.diff(&bad, &good);
        for p in ["f", "a", "a.txt", "d/x", "big", "dev", "h"] {
            let _ = store.read_file(&bad, TREE, Path::new(p));
            let _ = store.file_diff(&good, &bad, TREE, Path::new(p));
        }
        // verify and restore: a coded error, and nothing changed.
        let e = store.verify(&bad).expect_err(c.name);
        assert!(
            c.codes.contains(&e.code()),
            "{}: verify gave {}: {e}",
            c.name,
            e.code()
        );
        let e = store.restore_tree(&bad, TREE, &target).expect_err(c.name);
        assert!(
            c.codes.contains(&e.code()),
            "{}: restore gave {}: {e}",
            c.name,
            e.code()
        );
        assert_eq!(listing(&target), before, "{}: the target changed", c.name);
        assert_eq!(
            store_bytes(store.root()).len(),
            store_before.len(),
            "{}: the store changed",
            c.name
        );
        // Nothing was written next to the target either.
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            3,
            "{}: something appeared beside the target",
            c.name
        );
    }
    // The bombs were streamed, never held: far less than the 512 MiB one inflates to.
    assert!(peak_rss() < 400 << 20, "peak RSS {} bytes", peak_rss());
}

/// Item 5: a layer planted with someone else's blob id (bytes that do not hash to it)
/// does not make a later, legitimate checkpoint of that content unrestorable.
#[test]
fn a_planted_layer_does_not_poison_dedup_of_new_content() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let content = b"the user's real file\n".repeat(50);
    let planted = RawMember {
        data: b"attacker bytes".to_vec(),
        ..RawMember::content(&content)
    };
    write_layer(&store, &[planted]).unwrap();
    let ws = t.path().join("ws");
    write(&ws, "real.txt", &content);
    let m = created(store.create(&unknown(TREE, &ws)).unwrap());
    store.verify(&m.id).unwrap();
    let out = t.path().join("out");
    store.restore_tree(&m.id, TREE, &out).unwrap();
    assert_eq!(fs::read(out.join("real.txt")).unwrap(), content);
}

/// Item 5, the other path: content already stored honestly, then a planted copy under the
/// same id; an incremental checkpoint that re-encodes the chunk must still name the good
/// copy.
#[test]
fn a_planted_copy_of_stored_content_does_not_poison_an_incremental_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let ws = t.path().join("ws");
    let content = b"stored honestly first\n".repeat(40);
    write(&ws, "a.txt", &content);
    write(&ws, "b.txt", b"one\n");
    created(store.create(&unknown(TREE, &ws)).unwrap());
    let planted = RawMember {
        data: vec![b'!'; content.len()],
        ..RawMember::content(&content)
    };
    write_layer(&store, &[planted]).unwrap();
    write(&ws, "b.txt", b"two\n");
    write(&ws, "c.txt", &content);
    let m = created(
        store
            .create(&paths(TREE, &ws, &["b.txt", "c.txt"]))
            .unwrap(),
    );
    store.verify(&m.id).unwrap();
    let out = t.path().join("out");
    store.restore_tree(&m.id, TREE, &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
}

/// Item 10: an excluded path that exists in the target where the checkpoint also has it
/// (a directory, a file) no longer fails the restore with E520; the excluded directory's
/// other contents are left alone.
#[test]
fn excluded_existing_paths_the_checkpoint_also_has_do_not_fail_a_restore() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let opts = RawOptions {
        excludes: vec!["node_modules/".into(), "*.log".into()],
        ..RawOptions::default()
    };
    let id = write_checkpoint_with(
        &store,
        TREE,
        &[
            RawEntry::dir("node_modules"),
            RawEntry::file("node_modules/a", b"from the checkpoint"),
            RawEntry::file("x.log", b"log from the checkpoint"),
        ],
        &opts,
        |_| {},
    )
    .unwrap();
    let out = t.path().join("out");
    write(&out, "node_modules/a", b"local a");
    write(&out, "node_modules/b", b"local b, excluded: kept");
    write(&out, "x.log", b"local log");
    store.verify(&id).unwrap();
    store.restore_tree(&id, TREE, &out).unwrap();
    assert_eq!(
        fs::read(out.join("node_modules/a")).unwrap(),
        b"from the checkpoint"
    );
    assert_eq!(
        fs::read(out.join("node_modules/b")).unwrap(),
        b"local b, excluded: kept"
    );
    assert_eq!(
        fs::read(out.join("x.log")).unwrap(),
        b"log from the checkpoint"
    );
}

/// Item 3: a small store holding a large sparse file counts its logical size against
/// the byte cap, before anything in the target changes.
#[test]
fn a_sparse_file_counts_its_logical_bytes_against_the_cap() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    let f = fs::File::create(ws.join("sparse")).unwrap();
    f.set_len(1_100_000_000).unwrap();
    drop(f);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = created(store.create(&unknown(TREE, &ws)).unwrap());
    let stored: u64 = store_bytes(store.root())
        .iter()
        .map(|(_, d)| d.len() as u64)
        .sum();
    assert!(stored < 1 << 20, "the store is {stored} bytes");
    let store = Store::open(store.root()).unwrap().with_limits(Limits {
        max_bytes: 1 << 30,
        ..Limits::default()
    });
    let target = dirty_target(t.path());
    let before = listing(&target);
    assert_eq!(store.verify(&m.id).unwrap_err().code(), "E624");
    let e = store.restore_tree(&m.id, TREE, &target).unwrap_err();
    assert_eq!(e.code(), "E624", "{e}");
    assert_eq!(listing(&target), before);
}

/// Item 10: a path that would exceed the system's limit under this target fails up front.
#[test]
fn paths_too_long_for_the_target_fail_before_it_changes() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let p = format!("{}/{}", "a".repeat(250), "b".repeat(250));
    let id = write_checkpoint(
        &store,
        TREE,
        &[RawEntry::dir(&"a".repeat(250)), RawEntry::file(&p, b"x")],
    )
    .unwrap();
    store.verify(&id).unwrap();
    let mut target = t.path().to_path_buf();
    while target.as_os_str().len() < 3800 {
        target = target.join("t".repeat(200));
    }
    write(&target, "precious.txt", b"keep");
    let before = listing(&target);
    let e = store.restore_tree(&id, TREE, &target).unwrap_err();
    assert_eq!(e.code(), "E624", "{e}");
    assert_eq!(listing(&target), before);
}

/// Item 3: `file_diff` of files over the diff cap answers "too large to diff" without
/// reading them; two large, entirely different texts still get a diff (the diff has a
/// deadline, so it cannot go quadratic).
#[test]
fn file_diff_is_bounded() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    let store = Store::open(&t.path().join("store"))
        .unwrap()
        .with_limits(Limits {
            max_diff_bytes: 4 << 20,
            diff_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        });
    let lines = |seed: u32| -> Vec<u8> {
        (0..80_000u32)
            .map(|i| format!("{:08x}\n", i.wrapping_mul(2_654_435_761).wrapping_add(seed)))
            .collect::<String>()
            .into_bytes()
    };
    write(&ws, "text", &lines(1));
    write(&ws, "big", &vec![b'a'; 5 << 20]);
    let a = created(store.create(&unknown(TREE, &ws)).unwrap()).id;
    write(&ws, "text", &lines(2));
    write(&ws, "big", &vec![b'b'; 5 << 20]);
    let b = created(store.create(&unknown(TREE, &ws)).unwrap()).id;
    let d = store.file_diff(&a, &b, TREE, Path::new("big")).unwrap();
    assert!(d.contains("too large to diff"), "{d}");
    let d = store.file_diff(&a, &b, TREE, Path::new("text")).unwrap();
    assert!(d.starts_with("--- a/text\n+++ b/text\n"), "{}", &d[..100]);
}
