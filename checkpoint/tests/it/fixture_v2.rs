//! A store written by format version 2 (a file stored in chunks, then appended to), committed
//! under `tests/fixtures/store-v2/`, must keep reading and restoring; and a version-1 store
//! takes version-2 checkpoints beside its old ones. Regenerate only on a deliberate format
//! change: `PARHELIA_WRITE_FIXTURE=1 cargo test -p parhelia-checkpoint --test it fixture_v2::`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::common::*;
use crate::fixture_v1::{copy_dir, fixture_tree, fixtures, set_mtime, with_mtimes};
use parhelia_checkpoint::Store;

/// A compressible transcript-like file: `lines` numbered JSON lines.
fn transcript(lines: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..lines {
        out.extend_from_slice(
            format!("{{\"type\":\"user\",\"turn\":{i},\"text\":\"line {i} of the fixture transcript\"}}\n")
                .as_bytes(),
        );
    }
    out
}

fn v2_tree(root: &Path, round: u32) {
    fixture_tree(root, round);
    // 1.3 MB, then 1.3 MB + ~40 KB appended: both chunked.
    write(root, "conv/t.jsonl", &transcript(18_000 + round * 500));
    set_mtime(&root.join("conv/t.jsonl"), 1_700_000_200 + u64::from(round));
}

fn regenerate() {
    let dir = fixtures();
    let _ = fs::remove_dir_all(dir.join("store-v2"));
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    let store = Store::open(&dir.join("store-v2")).unwrap();
    let mut expected = BTreeMap::new();
    for round in 0..2 {
        v2_tree(&ws, round);
        let mut req = unknown("workspace", &ws);
        req.message = Some(format!("round {round}"));
        let m = created(store.create(&req).unwrap());
        expected.insert(m.id.to_string(), with_mtimes(&ws));
    }
    fs::remove_file(dir.join("store-v2/lock")).unwrap();
    fs::write(
        dir.join("store-v2.expected.json"),
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
}

#[test]
fn the_v2_fixture_store_still_reads_and_restores() {
    if std::env::var_os("PARHELIA_WRITE_FIXTURE").is_some() {
        regenerate();
    }
    let expected: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&fs::read(fixtures().join("store-v2.expected.json")).unwrap())
            .unwrap();
    let marker = fs::read_to_string(fixtures().join("store-v2/store.json")).unwrap();
    assert!(marker.contains("\"version\": 2"), "{marker}");
    let t = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("store-v2"), &t.path().join("store"));
    let store = Store::open(&t.path().join("store")).unwrap();
    let list = store.list().unwrap();
    assert_eq!(
        list.iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
        expected.keys().cloned().collect::<Vec<_>>()
    );
    for s in &list {
        store.verify(&s.id).unwrap();
        let out = t.path().join("out");
        store.restore_tree(&s.id, "workspace", &out).unwrap();
        assert_eq!(&with_mtimes(&out), &expected[s.id.as_str()]);
    }
    let d = store.diff(&list[0].id, &list[1].id).unwrap();
    let modified: Vec<_> = d
        .modified
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    assert!(
        modified.contains(&"conv/t.jsonl".to_string()),
        "{modified:?}"
    );
    assert_eq!(
        store
            .read_file(&list[1].id, "workspace", Path::new("conv/t.jsonl"))
            .unwrap(),
        transcript(18_500)
    );
    assert!(
        store
            .check(parhelia_checkpoint::CheckDepth::Full)
            .unwrap()
            .is_ok()
    );
}

#[test]
fn a_v1_store_takes_chunked_checkpoints_and_is_marked_v2() {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("store-v1"), &t.path().join("store"));
    let store = Store::open(&t.path().join("store")).unwrap();
    let old = store.list().unwrap();
    let ws = t.path().join("ws");
    v2_tree(&ws, 1);
    let m = created(store.create(&unknown("workspace", &ws)).unwrap());
    let marker = fs::read_to_string(t.path().join("store/store.json")).unwrap();
    assert!(marker.contains("\"version\": 2"), "{marker}");
    for id in old.iter().map(|s| &s.id).chain([&m.id]) {
        store.verify(id).unwrap();
    }
    let out = t.path().join("out");
    store.restore_tree(&m.id, "workspace", &out).unwrap();
    assert_eq!(with_mtimes(&out), with_mtimes(&ws));
}
