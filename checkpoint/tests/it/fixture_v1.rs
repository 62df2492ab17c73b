//! Compatibility: a store written by format version 1 (committed under
//! tests/fixtures/store-v1) must keep reading and restoring, whatever the format becomes.
//! Regenerate only when deliberately changing the fixture:
//! `PARHELIA_WRITE_FIXTURE=1 cargo test -p parhelia-checkpoint --test it fixture_v1::`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::common::*;
use parhelia_checkpoint::Store;

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub(crate) fn set_mtime(p: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// The two trees the fixture captured (deterministic, including file mtimes).
pub(crate) fn fixture_tree(root: &Path, round: u32) {
    write(root, "README.md", b"# fixture\n");
    write(
        root,
        "src/lib.rs",
        format!("pub fn round() -> u32 {{ {round} }}\n").as_bytes(),
    );
    write(root, ".git/HEAD", b"ref: refs/heads/main\n");
    write(root, "bin/tool", b"#!/bin/sh\nexit 0\n");
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    if round == 1 {
        symlink("src/lib.rs", root.join("lib-link")).unwrap();
        write(root, "new.txt", b"added in round 1\n");
    }
    for f in ["README.md", "src/lib.rs", ".git/HEAD", "bin/tool"] {
        set_mtime(&root.join(f), 1_700_000_000);
    }
    if round == 1 {
        set_mtime(&root.join("new.txt"), 1_700_000_100);
    }
}

pub(crate) fn with_mtimes(root: &Path) -> BTreeMap<String, String> {
    let mut l = listing(root);
    for (k, v) in l.iter_mut() {
        if v.starts_with('F') {
            let m = fs::metadata(root.join(k)).unwrap().modified().unwrap();
            v.push_str(&format!(
                " {}",
                m.duration_since(UNIX_EPOCH).unwrap().as_secs()
            ));
        }
    }
    l
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn regenerate() {
    let dir = fixtures();
    let _ = fs::remove_dir_all(dir.join("store-v1"));
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    let store = Store::open(&dir.join("store-v1")).unwrap();
    let mut expected = BTreeMap::new();
    for round in 0..2 {
        fixture_tree(&ws, round);
        let mut req = unknown("workspace", &ws);
        req.metadata = serde_json::json!({"git": {"head": format!("round-{round}")}});
        req.message = Some(format!("round {round}"));
        let m = created(store.create(&req).unwrap());
        expected.insert(m.id.to_string(), with_mtimes(&ws));
    }
    fs::remove_file(dir.join("store-v1/lock")).unwrap();
    fs::write(
        dir.join("store-v1.expected.json"),
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
}

#[test]
fn the_v1_fixture_store_still_reads_and_restores() {
    if std::env::var_os("PARHELIA_WRITE_FIXTURE").is_some() {
        regenerate();
    }
    let expected: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&fs::read(fixtures().join("store-v1.expected.json")).unwrap())
            .unwrap();
    // Work on a copy: opening and reading must not need to modify the committed fixture.
    let t = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("store-v1"), &t.path().join("store"));
    let store = Store::open(&t.path().join("store")).unwrap();
    let list = store.list().unwrap();
    assert_eq!(
        list.iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
        expected.keys().cloned().collect::<Vec<_>>()
    );
    assert_eq!(list[1].message.as_deref(), Some("round 1"));
    assert_eq!(list[1].metadata["git"]["head"], "round-1");
    assert_eq!(list[1].parent.as_ref(), Some(&list[0].id));
    for s in &list {
        store.verify(&s.id).unwrap();
        let out = t.path().join("out");
        store.restore_tree(&s.id, "workspace", &out).unwrap();
        assert_eq!(&with_mtimes(&out), &expected[s.id.as_str()]);
    }
    let d = store.diff(&list[0].id, &list[1].id).unwrap();
    let added: Vec<_> = d
        .added
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    assert_eq!(added, ["lib-link", "new.txt"]);
    assert_eq!(d.modified.len(), 1);
    assert_eq!(
        store
            .read_file(&list[1].id, "workspace", Path::new("new.txt"))
            .unwrap(),
        b"added in round 1\n"
    );
}
