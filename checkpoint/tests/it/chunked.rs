//! Large files stored in content-defined chunks (store version 2): an append or an edit in
//! place costs the changed chunks, and every reader is as total on chunked files as on whole
//! ones (docs/formats/checkpoint.md, "Chunked files").

use std::fs;
use std::path::Path;

use crate::common::*;
use parhelia_checkpoint::{CheckDepth, Store};
use proptest::prelude::*;

/// Compressible, JSONL-like bytes (a transcript), deterministic in `seed`.
fn jsonl(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 200);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "{{\"type\":\"assistant\",\"uuid\":\"{x:016x}\",\"text\":\"turn {} says {:x}\"}}\n",
                x % 997,
                x >> 3
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    out
}

fn append(root: &Path, rel: &str, more: &[u8]) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(root.join(rel))
        .unwrap();
    f.write_all(more).unwrap();
}

#[test]
fn an_append_costs_the_appended_bytes_and_one_or_two_chunks() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(&ws, "t.jsonl", &jsonl(2 << 20, 1));
    write(&ws, "small.txt", b"small\n");
    let store = Store::open(&t.path().join("store")).unwrap();
    let m1 = created(store.create(&unknown("c", &ws)).unwrap());
    assert!(m1.stats.new_bytes >= 2 << 20);
    for (i, hinted) in [(2u64, false), (3, true)] {
        let more = jsonl(50_000, i);
        append(&ws, "t.jsonl", &more);
        let req = if hinted {
            paths("c", &ws, &["t.jsonl"])
        } else {
            unknown("c", &ws)
        };
        let m = created(store.create(&req).unwrap());
        // The appended bytes, the old last chunk (at most 256 KiB) and the chunk map.
        let bound = 50_000 + (256 << 10) + 40 * ((3 << 20) / (16 << 10));
        assert!(
            m.stats.new_bytes <= bound,
            "append {i}: {} new bytes (bound {bound})",
            m.stats.new_bytes
        );
        let out = t.path().join(format!("out-{i}"));
        store.restore_tree(&m.id, "c", &out).unwrap();
        assert_eq!(
            fs::read(out.join("t.jsonl")).unwrap(),
            fs::read(ws.join("t.jsonl")).unwrap()
        );
        assert_eq!(
            store.read_file(&m.id, "c", Path::new("t.jsonl")).unwrap(),
            fs::read(ws.join("t.jsonl")).unwrap()
        );
        store.verify(&m.id).unwrap();
    }
    // An unchanged chunked file costs nothing, and a copy of it under another name neither.
    fs::copy(ws.join("t.jsonl"), ws.join("copy.jsonl")).unwrap();
    let m = created(store.create(&unknown("c", &ws)).unwrap());
    assert_eq!(m.stats.new_bytes, 0);
    assert!(store.check(CheckDepth::Full).unwrap().is_ok());
}

#[test]
fn an_edit_in_place_costs_the_chunks_around_it() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    let mut data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 ^ (i >> 13) as u8)
        .collect();
    write(&ws, "model.bin", &data);
    let store = Store::open(&t.path().join("store")).unwrap();
    created(store.create(&unknown("w", &ws)).unwrap());
    for b in &mut data[3 << 20..(3 << 20) + (256 << 10)] {
        *b = !*b;
    }
    write(&ws, "model.bin", &data);
    let m = created(store.create(&unknown("w", &ws)).unwrap());
    // The rewritten 256 KiB, a chunk on each side, the map.
    assert!(
        m.stats.new_bytes <= (256 << 10) + 2 * (256 << 10) + 20_000,
        "{}",
        m.stats.new_bytes
    );
    let out = t.path().join("out");
    store.restore_tree(&m.id, "w", &out).unwrap();
    assert_eq!(fs::read(out.join("model.bin")).unwrap(), data);
}

#[test]
fn a_damaged_chunk_is_damage_naming_every_checkpoint_that_needs_it() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(&ws, "t.jsonl", &jsonl(3 << 20, 9));
    let store = Store::open(&t.path().join("store")).unwrap();
    let m1 = created(store.create(&unknown("c", &ws)).unwrap());
    append(&ws, "t.jsonl", &jsonl(10_000, 10));
    let m2 = created(store.create(&unknown("c", &ws)).unwrap());
    // The first layer holds the prefix's chunks, which the second checkpoint still needs.
    assert_eq!(m1.layers.len(), 1);
    assert!(m2.layers.contains(&m1.layers[0]));
    let layer = t
        .path()
        .join("store/layers")
        .join(format!("{}.tar.zst", m1.layers[0].to_hex()));
    let mut bytes = fs::read(&layer).unwrap();
    bytes[5000] ^= 0x5a;
    fs::write(&layer, bytes).unwrap();

    let health = store.check(CheckDepth::Full).unwrap();
    assert_eq!(health.damaged.len(), 1, "{health:#?}");
    assert_eq!(
        health.damaged[0].affects,
        vec![m1.id.clone(), m2.id.clone()]
    );
    for id in [&m1.id, &m2.id] {
        assert_eq!(store.verify(id).unwrap_err().code(), "E620");
        let target = t.path().join(format!("target-{id}"));
        write(&target, "keep.txt", b"untouched\n");
        assert_eq!(
            store.restore_tree(id, "c", &target).unwrap_err().code(),
            "E620"
        );
        assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"untouched\n");
    }
}

#[test]
fn prune_keeps_the_chunks_a_kept_checkpoint_shares_with_a_dropped_one() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(&ws, "t.jsonl", &jsonl(2 << 20, 3));
    let store = Store::open(&t.path().join("store")).unwrap();
    created(store.create(&unknown("c", &ws)).unwrap());
    append(&ws, "t.jsonl", &jsonl(30_000, 4));
    created(store.create(&unknown("c", &ws)).unwrap());
    append(&ws, "t.jsonl", &jsonl(30_000, 5));
    let last = created(store.create(&unknown("c", &ws)).unwrap());
    store
        .prune(&parhelia_checkpoint::Retention {
            keep_last: Some(1),
            ..Default::default()
        })
        .unwrap();
    assert!(store.check(CheckDepth::Full).unwrap().is_ok());
    let out = t.path().join("out");
    store.restore_tree(&last.id, "c", &out).unwrap();
    assert_eq!(
        fs::read(out.join("t.jsonl")).unwrap(),
        fs::read(ws.join("t.jsonl")).unwrap()
    );
}

#[derive(Clone, Debug)]
enum Edit {
    Append(usize),
    Overwrite(usize, usize),
    Truncate(usize),
    Insert(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (1usize..300_000).prop_map(Edit::Append),
        (0usize..4_000_000, 1usize..200_000).prop_map(|(a, n)| Edit::Overwrite(a, n)),
        (0usize..4_000_000).prop_map(Edit::Truncate),
        (0usize..4_000_000, 1usize..5_000).prop_map(|(a, n)| Edit::Insert(a, n)),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the size (from below the 256 KiB threshold) and the edits, every checkpoint of a
    /// chunked file restores byte-identical, alone or after later ones were made.
    #[test]
    fn chunked_files_round_trip(size in 200_000usize..3_000_000, seed in 0u64..1000, edits in prop::collection::vec(edit(), 1..5)) {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        let mut data = jsonl(size, seed);
        write(&ws, "f", &data);
        let store = Store::open(&t.path().join("store")).unwrap();
        let mut versions = vec![(created(store.create(&unknown("w", &ws)).unwrap()).id, data.clone())];
        for (k, e) in edits.into_iter().enumerate() {
            let fresh = jsonl(300_000, seed + k as u64 + 1);
            match e {
                Edit::Append(n) => data.extend_from_slice(&fresh[..n.min(fresh.len())]),
                Edit::Overwrite(a, n) => {
                    let a = a.min(data.len());
                    let end = (a + n).min(data.len());
                    data[a..end].copy_from_slice(&fresh[..end - a]);
                }
                Edit::Truncate(n) => data.truncate(n.min(data.len())),
                Edit::Insert(a, n) => {
                    let a = a.min(data.len());
                    data.splice(a..a, fresh[..n].iter().copied());
                }
            }
            write(&ws, "f", &data);
            let hint = if k % 2 == 0 { paths("w", &ws, &["f"]) } else { unknown("w", &ws) };
            let m = created(store.create(&hint).unwrap());
            versions.push((m.id, data.clone()));
        }
        for (i, (id, want)) in versions.iter().enumerate() {
            let out = t.path().join(format!("out-{i}"));
            // Restore over the previous version's target too (the compare path).
            store.restore_tree(id, "w", &out).unwrap();
            prop_assert_eq!(&fs::read(out.join("f")).unwrap(), want);
            let again = t.path().join("over");
            store.restore_tree(id, "w", &again).unwrap();
            prop_assert_eq!(&fs::read(again.join("f")).unwrap(), want);
            prop_assert_eq!(&store.read_file(id, "w", Path::new("f")).unwrap(), want);
        }
        prop_assert!(store.check(CheckDepth::Full).unwrap().is_ok());
    }
}

mod hostile_maps {
    use super::*;
    use parhelia_checkpoint::raw::{RawEntry, RawOptions, write_checkpoint_with};

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A chunk map as the format describes it: format 1, count, (length, blake3) per chunk.
    fn map(count: u64, chunks: &[(u64, [u8; 32])]) -> Vec<u8> {
        let mut out = vec![1u8];
        varint(&mut out, count);
        for (len, id) in chunks {
            varint(&mut out, *len);
            out.extend_from_slice(id);
        }
        out
    }

    fn hash(d: &[u8]) -> [u8; 32] {
        *blake3::hash(d).as_bytes()
    }

    /// Writes a hand-made checkpoint with one chunked file `f` (map `m`, chunks stored,
    /// declared size `size`), and checks every reader: verify, check, restore (target
    /// untouched), read_file, diff; `want` is `None` for an honest store.
    fn readers(m: Vec<u8>, chunks: Vec<Vec<u8>>, size: u64, want: Option<&str>) {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let entries = vec![RawEntry::file("f", &m)];
        let opts = RawOptions {
            chunked: vec![(0, chunks.clone())],
            sizes: vec![(0, size)],
            ..Default::default()
        };
        let id = write_checkpoint_with(&store, "w", &entries, &opts, |_| {}).unwrap();
        let target = t.path().join("target");
        write(&target, "keep.txt", b"untouched\n");
        match want {
            Some(code) => {
                assert_eq!(store.verify(&id).unwrap_err().code(), code);
                assert_eq!(
                    store.restore_tree(&id, "w", &target).unwrap_err().code(),
                    code
                );
                assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"untouched\n");
                assert!(store.read_file(&id, "w", Path::new("f")).is_err());
                let health = store.check(CheckDepth::Full).unwrap();
                assert_eq!(health.checkpoints[0].code, Some(code), "{health:#?}");
            }
            None => {
                store.verify(&id).unwrap();
                store.restore_tree(&id, "w", &target).unwrap();
                assert_eq!(fs::read(target.join("f")).unwrap(), chunks.concat());
                assert_eq!(
                    store.read_file(&id, "w", Path::new("f")).unwrap(),
                    chunks.concat()
                );
                assert!(store.check(CheckDepth::Full).unwrap().is_ok());
            }
        }
        // A diff against itself reads only entries: never a panic.
        let _ = store.diff(&id, &id);
    }

    #[test]
    fn an_honest_hand_made_chunked_file_restores() {
        let (a, b) = (vec![1u8; 70_000], vec![2u8; 5]);
        let m = map(2, &[(70_000, hash(&a)), (5, hash(&b))]);
        readers(m, vec![a, b], 70_005, None);
    }

    #[test]
    fn lying_chunk_maps_are_damage_never_a_panic_or_an_allocation() {
        let a = vec![7u8; 1000];
        let ha = hash(&a);
        // A count far beyond the map's bytes (refused before allocating).
        readers(
            map(u64::MAX >> 1, &[(1000, ha)]),
            vec![a.clone()],
            1000,
            Some("E620"),
        );
        readers(
            map(1 << 40, &[(1000, ha)]),
            vec![a.clone()],
            1000,
            Some("E620"),
        );
        // Lengths that do not add up to the entry's size, either way.
        readers(map(1, &[(1000, ha)]), vec![a.clone()], 999, Some("E620"));
        readers(
            map(1, &[(1000, ha)]),
            vec![a.clone()],
            1_000_000,
            Some("E620"),
        );
        // A chunk the map says is longer than it is indexed (and one over the bound).
        readers(map(1, &[(1001, ha)]), vec![a.clone()], 1001, Some("E620"));
        // (A file declaring u64::MAX bytes is over the tree's byte cap first: E624.)
        readers(
            map(1, &[(u64::MAX, ha)]),
            vec![a.clone()],
            u64::MAX,
            Some("E624"),
        );
        readers(
            map(1, &[(u64::MAX, ha)]),
            vec![a.clone()],
            1 << 30,
            Some("E620"),
        );
        readers(
            map(2, &[(u64::MAX / 2 + 1, ha), (u64::MAX / 2 + 1, ha)]),
            vec![a.clone()],
            0,
            Some("E620"),
        );
        // A zero-length chunk, a missing chunk, trailing bytes, an unknown map format.
        readers(map(1, &[(0, ha)]), vec![a.clone()], 0, Some("E620"));
        readers(
            map(1, &[(1000, [9; 32])]),
            vec![a.clone()],
            1000,
            Some("E620"),
        );
        let mut trailing = map(1, &[(1000, ha)]);
        trailing.push(0);
        readers(trailing, vec![a.clone()], 1000, Some("E620"));
        let mut v2 = map(1, &[(1000, ha)]);
        v2[0] = 2;
        readers(v2, vec![a.clone()], 1000, Some("E620"));
        // A map that is not a map at all.
        readers(b"hello".to_vec(), vec![a], 5, Some("E620"));
    }
}

#[test]
fn a_checkpoint_records_where_its_time_went() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(&ws, "t.jsonl", &jsonl(1 << 20, 12));
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = created(store.create(&unknown("c", &ws)).unwrap());
    let p = m.stats.phase_ms.expect("phases recorded");
    assert!(
        p.fsync.is_some(),
        "the returned value has the commit's time"
    );
    let loaded = store
        .load(&m.id)
        .unwrap()
        .stats
        .phase_ms
        .expect("in the file");
    assert_eq!(
        (loaded.detect, loaded.hash, loaded.compress),
        (p.detect, p.hash, p.compress)
    );
    assert_eq!(
        loaded.fsync, None,
        "the file cannot hold its own commit's time"
    );
    assert_eq!(loaded.git, None, "no git state was captured");
    // A caller that captured the git state first has its time recorded in the file.
    write(&ws, "t.jsonl", &jsonl(1 << 20, 13));
    let m = created(
        store
            .create_with_git_ms(&unknown("d", &ws), Some(7))
            .unwrap(),
    );
    let loaded = store.load(&m.id).unwrap().stats.phase_ms.unwrap();
    assert_eq!(loaded.git, Some(7));
}
