//! The hostile-store corpus (issue 11 items 4–6, 10): dozens of stores a session could
//! write (built by `parhelia_checkpoint::hostile`, shared with the product's end-to-end
//! test), each run through every reader — list, load (show), entries, read_file, diff,
//! file_diff, verify, restore. For each: no panic, a coded error from verify and restore,
//! memory bounded by the caps (`Limits`), and the restore target byte-for-byte untouched.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;
use parhelia_checkpoint::hostile::cases as corpus;
use parhelia_checkpoint::raw::{
    RawEntry, RawMember, RawOptions, write_checkpoint, write_checkpoint_with, write_layer,
};
use parhelia_checkpoint::{CheckpointId, Limits, Store};

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

/// The store's regular files and their sizes (not read: a case may plant a sparse one).
fn store_files(root: &Path) -> Vec<(PathBuf, u64)> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), e.metadata().unwrap().len()))
        .collect()
}

/// Peak resident memory of this process (VmHWM), bytes.
fn peak_rss() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn every_reader_refuses_every_hostile_store_and_leaves_the_target_untouched() {
    let all = corpus(TREE);
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
        let store_before = store_files(store.root());

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
            store_files(store.root()).len(),
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
