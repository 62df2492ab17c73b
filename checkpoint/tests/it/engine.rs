//! The engine's everyday behaviour on real files: round trips, dedup, hints, excludes,
//! skip-if-unchanged, diff, locking.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use parhelia_checkpoint::{ChangeHint, CreateOutcome, EntryKind, Store};

fn sample_tree(root: &Path) {
    write(root, "README.md", b"# hello\n");
    write(root, "src/main.rs", b"fn main() {}\n");
    write(root, "src/lib/mod.rs", &b"pub mod x;\n".repeat(1000));
    write(root, ".git/HEAD", b"ref: refs/heads/main\n");
    write(root, "bin/run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(root.join("empty/nested")).unwrap();
    symlink("src/main.rs", root.join("link-to-main")).unwrap();
    symlink("/nonexistent/outside", root.join("dangling")).unwrap();
    write(
        root,
        "big.bin",
        &(0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
}

#[test]
fn full_checkpoint_round_trips_into_an_empty_and_a_dirty_target() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = created(store.create(&unknown("workspace", &ws)).unwrap());
    assert_eq!(m.tree("workspace").unwrap().file_count, 6);
    store.verify(&m.id).unwrap();

    let out = t.path().join("out");
    store.restore_tree(&m.id, "workspace", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));

    // Dirty the target every way a restore must undo.
    write(&out, "new-file", b"x");
    write(&out, "src/main.rs", b"changed, same len?\n");
    fs::remove_dir_all(out.join("empty")).unwrap();
    fs::remove_file(out.join("link-to-main")).unwrap();
    fs::create_dir(out.join("link-to-main")).unwrap();
    fs::remove_file(out.join("README.md")).unwrap();
    symlink("/etc", out.join("README.md")).unwrap();
    fs::set_permissions(out.join("bin/run.sh"), fs::Permissions::from_mode(0o600)).unwrap();
    let stats = store.restore_tree(&m.id, "workspace", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
    assert!(stats.files_unchanged >= 2, "{stats:?}");
}

#[test]
fn many_directories_and_shared_contents_restore_exactly() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    // Enough directories per level for them to be created in parallel, files sharing
    // contents (within a frame, across frames, and a large one spanning frames).
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    for d in 0..100 {
        for f in 0..6 {
            let content = format!("shared {}\n", f % 3).repeat(50 + f);
            write(
                &ws,
                &format!("d{d}/e{}/f{f}.txt", d % 7),
                content.as_bytes(),
            );
        }
        if d % 40 == 0 {
            write(&ws, &format!("d{d}/big.bin"), &big);
        }
    }
    fs::set_permissions(ws.join("d3/e3"), fs::Permissions::from_mode(0o500)).unwrap();
    let store = Store::open(&t.path().join("store"))
        .unwrap()
        .with_threads(4);
    let m = created(store.create(&unknown("w", &ws)).unwrap());
    let out = t.path().join("out");
    store.restore_tree(&m.id, "w", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
    // Into a dirty target: some copies changed, some gone, one replaced by a directory.
    fs::set_permissions(out.join("d3/e3"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&out, "d1/e1/f0.txt", b"changed");
    fs::remove_file(out.join("d2/e2/f1.txt")).unwrap();
    fs::remove_file(out.join("d40/big.bin")).unwrap();
    fs::create_dir(out.join("d40/big.bin")).unwrap();
    store.restore_tree(&m.id, "w", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
    fs::set_permissions(ws.join("d3/e3"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(out.join("d3/e3"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn restore_replaces_hard_links_instead_of_writing_through_them() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(&ws, "a.txt", b"checkpointed\n");
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = created(store.create(&unknown("w", &ws)).unwrap());
    let outside = t.path().join("outside.txt");
    fs::write(&outside, b"precious, sam").unwrap(); // same size as the checkpointed file
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::hard_link(&outside, out.join("a.txt")).unwrap();
    store.restore_tree(&m.id, "w", &out).unwrap();
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"checkpointed\n");
    assert_eq!(fs::read(&outside).unwrap(), b"precious, sam");
    assert_eq!(
        fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn unchanged_files_cost_nothing_and_reverted_content_is_not_stored_again() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m1 = created(store.create(&unknown("w", &ws)).unwrap());
    // big.bin (3 MB) is stored in chunks, and it repeats itself: its repeats cost nothing.
    assert!(m1.stats.new_bytes > 100_000, "{}", m1.stats.new_bytes);

    let m2 = created(store.create(&unknown("w", &ws)).unwrap());
    assert_eq!(m2.stats.new_bytes, 0);

    let original = fs::read(ws.join("src/main.rs")).unwrap();
    write(
        &ws,
        "src/main.rs",
        b"fn main() { println!(\"changed\"); }\n",
    );
    let m3 = created(store.create(&paths("w", &ws, &["src/main.rs"])).unwrap());
    assert_eq!(
        m3.stats.new_bytes,
        b"fn main() { println!(\"changed\"); }\n".len() as u64
    );

    write(&ws, "src/main.rs", &original);
    let m4 = created(store.create(&paths("w", &ws, &["src/main.rs"])).unwrap());
    assert_eq!(m4.stats.new_bytes, 0, "reverted content must dedup");
    // A copy of existing content under a new name costs nothing either.
    fs::copy(ws.join("big.bin"), ws.join("big-copy.bin")).unwrap();
    let m5 = created(store.create(&paths("w", &ws, &["big-copy.bin"])).unwrap());
    assert_eq!(m5.stats.new_bytes, 0);
    for m in [&m1, &m2, &m3, &m4, &m5] {
        store.verify(&m.id).unwrap();
    }
    let out = t.path().join("out");
    store.restore_tree(&m3.id, "w", &out).unwrap();
    assert_eq!(
        fs::read(out.join("src/main.rs")).unwrap(),
        b"fn main() { println!(\"changed\"); }\n"
    );
}

#[test]
fn skip_if_unchanged_ignores_mtimes_and_metadata() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m1 = created(store.create(&unknown("w", &ws)).unwrap());
    let mut req = unknown("w", &ws);
    req.skip_if_unchanged = true;
    req.metadata = serde_json::json!({"cost": 1.5});
    let f = fs::File::options()
        .write(true)
        .open(ws.join("README.md"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    match store.create(&req).unwrap() {
        CreateOutcome::Unchanged(id) => assert_eq!(id, m1.id),
        CreateOutcome::Created(m) => panic!("expected Unchanged, created {}", m.id),
    }
    fs::set_permissions(ws.join("README.md"), fs::Permissions::from_mode(0o600)).unwrap();
    let m2 = created(store.create(&req).unwrap());
    assert_eq!(m2.parent.as_ref(), Some(&m1.id));
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn hints_for_renamed_and_deleted_directories_match_a_full_scan() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    created(store.create(&unknown("w", &ws)).unwrap());
    fs::rename(ws.join("src"), ws.join("source")).unwrap();
    fs::remove_dir_all(ws.join("empty")).unwrap();
    write(&ws, "deep/new/dirs/file.txt", b"new\n");
    // The watcher reports the rename's two ends, the deleted dir and only the deepest file.
    let m = created(
        store
            .create(&paths(
                "w",
                &ws,
                &["src", "source", "empty", "deep/new/dirs/file.txt"],
            ))
            .unwrap(),
    );
    let scan = created(store.create(&unknown("w", &ws)).unwrap());
    let strip = |es: Vec<parhelia_checkpoint::Entry>| {
        es.into_iter()
            .map(|e| (e.path, e.kind, e.mode, e.content, e.link_target))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(store.entries(&m.id, "w").unwrap()),
        strip(store.entries(&scan.id, "w").unwrap())
    );
    let out = t.path().join("out");
    store.restore_tree(&m.id, "w", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
}

#[test]
fn excludes_are_not_captured_and_survive_restore() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    write(&ws, "target/debug/huge", b"build output");
    write(&ws, "logs/a.log", b"log");
    write(&ws, "logs/keep.log", b"keep");
    let store = Store::open(&t.path().join("store")).unwrap();
    let mut req = unknown("w", &ws);
    req.trees[0].0.excludes = vec!["target/".into(), "*.log".into(), "!keep.log".into()];
    let m = created(store.create(&req).unwrap());
    let paths: BTreeSet<PathBuf> = store
        .entries(&m.id, "w")
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(!paths.contains(Path::new("target")));
    assert!(!paths.contains(Path::new("logs/a.log")));
    assert!(paths.contains(Path::new("logs/keep.log")));
    let out = t.path().join("out");
    write(&out, "target/debug/other", b"keep me");
    write(&out, "stray.txt", b"remove me");
    store.restore_tree(&m.id, "w", &out).unwrap();
    assert_eq!(
        fs::read(out.join("target/debug/other")).unwrap(),
        b"keep me"
    );
    assert!(!out.join("stray.txt").exists());
    assert_eq!(
        listing_except(&out, &["target"]),
        listing_except(&ws, &["target", "logs/a.log"])
    );
}

#[test]
fn diff_reports_changes_with_sizes_and_a_unified_file_diff() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    let mut req = unknown("w", &ws);
    req.metadata = serde_json::json!({"git": {"head": "aaa"}});
    let a = created(store.create(&req).unwrap());
    write(
        &ws,
        "src/main.rs",
        b"fn main() {\n    println!(\"hi\");\n}\n",
    );
    write(&ws, "added.txt", b"12345");
    fs::remove_file(ws.join("README.md")).unwrap();
    req.metadata = serde_json::json!({"git": {"head": "bbb"}});
    let b = created(store.create(&req).unwrap());
    let d = store.diff(&a.id, &b.id).unwrap();
    assert_eq!(d.added.len(), 1);
    assert_eq!(d.added[0].path, Path::new("added.txt"));
    assert_eq!(d.added[0].new_size, Some(5));
    assert_eq!(d.removed[0].path, Path::new("README.md"));
    assert_eq!(d.modified.len(), 1);
    assert_eq!(
        (d.modified[0].old_size, d.modified[0].new_size),
        (Some(13), Some(34))
    );
    assert_eq!(d.modified[0].kind, EntryKind::File);
    assert_eq!(d.metadata_b["git"]["head"], "bbb");
    let u = store
        .file_diff(&a.id, &b.id, "w", Path::new("src/main.rs"))
        .unwrap();
    assert_eq!(
        u,
        "--- a/src/main.rs\n+++ b/src/main.rs\n@@ -1 +1,3 @@\n-fn main() {}\n+fn main() {\n+    println!(\"hi\");\n+}\n"
    );
    let added = store
        .file_diff(&a.id, &b.id, "w", Path::new("added.txt"))
        .unwrap();
    assert!(
        added.starts_with("--- /dev/null\n+++ b/added.txt\n"),
        "{added}"
    );
    assert_eq!(
        store.read_file(&b.id, "w", Path::new("added.txt")).unwrap(),
        b"12345"
    );
    assert_eq!(
        store
            .read_file(&b.id, "w", Path::new("nope"))
            .unwrap_err()
            .code(),
        "E205"
    );
}

#[test]
fn a_second_writer_gets_e622_when_it_will_not_wait() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    let holder = fs::File::open(t.path().join("store/lock")).unwrap();
    holder.lock().unwrap();
    let impatient = Store::open(&t.path().join("store"))
        .unwrap()
        .with_lock_wait(Duration::ZERO);
    assert_eq!(
        impatient.create(&unknown("w", &ws)).unwrap_err().code(),
        "E622"
    );
    assert_eq!(
        impatient.prune(&Default::default()).unwrap_err().code(),
        "E622"
    );
    holder.unlock().unwrap();
    created(store.create(&unknown("w", &ws)).unwrap());
}

#[test]
fn unknown_ids_and_trees_are_e203() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    sample_tree(&ws);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = created(store.create(&unknown("w", &ws)).unwrap());
    let missing = parhelia_checkpoint::CheckpointId("cp-0000000000001-deadbeef".into());
    assert_eq!(store.load(&missing).unwrap_err().code(), "E205");
    assert_eq!(
        store
            .restore_tree(&m.id, "nope", t.path())
            .unwrap_err()
            .code(),
        "E205"
    );
    let bad_hint = paths("w", &ws, &["../x"]);
    assert_eq!(store.create(&bad_hint).unwrap_err().code(), "E100");
    let _ = ChangeHint::Unknown;
}

/// `create_reporting` tells each regular file it reads, once, with its size: a first
/// checkpoint reads them all (the tree's file count and bytes, on one thread or many);
/// a hinted one after it reads only the changed file.
#[test]
fn create_reporting_tells_each_file_read_with_its_size() {
    for threads in [1, 4] {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        sample_tree(&ws);
        let store = Store::open(&t.path().join("store"))
            .unwrap()
            .with_threads(threads);
        let seen = std::sync::Mutex::new(Vec::new());
        let m = created(
            store
                .create_reporting(&unknown("workspace", &ws), &|size| {
                    seen.lock().unwrap().push(size)
                })
                .unwrap(),
        );
        let tree = m.tree("workspace").unwrap();
        let mut seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen.len() as u64, tree.file_count, "threads {threads}");
        assert_eq!(
            seen.iter().sum::<u64>(),
            tree.total_bytes,
            "threads {threads}"
        );
        seen.sort_unstable();
        assert_eq!(seen.last(), Some(&3_000_000), "threads {threads}: {seen:?}");

        let edited = b"fn main() { println!(\"hi\"); }\n";
        write(&ws, "src/main.rs", edited);
        let again = std::sync::Mutex::new(Vec::new());
        store
            .create_reporting(&paths("workspace", &ws, &["src/main.rs"]), &|size| {
                again.lock().unwrap().push(size)
            })
            .unwrap();
        assert_eq!(
            *again.lock().unwrap(),
            [edited.len() as u64],
            "threads {threads}"
        );
    }
}
