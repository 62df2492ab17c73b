//! Property test: random edit histories (files, dirs, renames, deletions, chmod, symlinks,
//! kind changes) interleaved with checkpoints using random hints (exact, supersets,
//! parent directories, or Unknown). Every checkpoint must record exactly what a
//! from-scratch scan records at that moment, and restoring any checkpoint into a dirty
//! target must reproduce the tree exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::common::*;
use parhelia_checkpoint::{ChangeHint, Entry, Store};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write(String, usize),
    Delete(String),
    Rename(String, String),
    Chmod(String, u32),
    Symlink(String, usize),
    Mkdir(String),
    Checkpoint(u8),
}

const CONTENTS: &[&[u8]] = &[b"", b"a", b"b", b"hello\n", b"hellp\n", b"0123456789abcdef"];
const TARGETS: &[&str] = &["a", "../x", "/tmp/outside", "b/c", "."];

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3)
        .prop_map(|v| v.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (rel_path(), 0..CONTENTS.len() + 1).prop_map(|(p, c)| Op::Write(p, c)),
        2 => rel_path().prop_map(Op::Delete),
        2 => (rel_path(), rel_path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (rel_path(), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o700, 0o444, 0o750])).prop_map(|(p, m)| Op::Chmod(p, m)),
        1 => (rel_path(), 0..TARGETS.len()).prop_map(|(p, t)| Op::Symlink(p, t)),
        1 => rel_path().prop_map(Op::Mkdir),
        2 => (0u8..4).prop_map(Op::Checkpoint),
    ]
}

fn ancestors(p: &str) -> Vec<String> {
    let parts: Vec<&str> = p.split('/').collect();
    (1..=parts.len()).map(|i| parts[..i].join("/")).collect()
}

fn parent(p: &str) -> String {
    p.rsplit_once('/')
        .map(|(a, _)| a.to_string())
        .unwrap_or_else(|| ".".to_string())
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Removes whatever is at `rel`, adding it and everything below it to `touched` (what a
/// watcher reports for a recursive delete).
fn remove_any_at(ws: &Path, rel: &str, touched: &mut BTreeSet<String>) {
    let p = ws.join(rel);
    if is_real_dir(&p) {
        for e in walkdir::WalkDir::new(&p).min_depth(1) {
            let e = e.unwrap();
            touched.insert(format!(
                "{rel}/{}",
                e.path().strip_prefix(&p).unwrap().display()
            ));
        }
    }
    if fs::symlink_metadata(&p).is_ok() {
        touched.insert(rel.to_string());
    }
    remove_any(&p);
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// Makes the parent directories of `rel` real directories (replacing files or symlinks in
/// the way), recording what changed.
fn make_parents(ws: &Path, rel: &str, touched: &mut BTreeSet<String>) {
    let anc = ancestors(rel);
    for a in &anc[..anc.len() - 1] {
        let p = ws.join(a);
        if !is_real_dir(&p) {
            remove_any_at(ws, a, touched);
            fs::create_dir(&p).unwrap();
            touched.insert(a.clone());
        }
    }
}

/// Whether every ancestor of `rel` is a real directory (so the path does not lead through
/// a symlink to somewhere else in the tree).
fn plain(ws: &Path, rel: &str) -> bool {
    let anc = ancestors(rel);
    anc[..anc.len() - 1]
        .iter()
        .all(|a| is_real_dir(&ws.join(a)))
}

/// Applies an edit, adding the paths it changed to `touched`.
fn apply(ws: &Path, op: &Op, touched: &mut BTreeSet<String>) {
    match op {
        Op::Delete(p) | Op::Chmod(p, _) | Op::Rename(p, _) if !plain(ws, p) => {}
        Op::Write(p, c) => {
            make_parents(ws, p, touched);
            let path = ws.join(p);
            if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                remove_any_at(ws, p, touched);
            }
            let content: Vec<u8> = if *c == CONTENTS.len() {
                b"large ".repeat(3000)
            } else {
                CONTENTS[*c].to_vec()
            };
            if fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o200 == 0) {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            }
            fs::write(&path, content).unwrap();
            touched.insert(p.clone());
        }
        Op::Delete(p) => {
            remove_any_at(ws, p, touched);
            touched.insert(p.clone());
        }
        Op::Rename(a, b) => {
            let (pa, pb) = (ws.join(a), ws.join(b));
            if fs::symlink_metadata(&pa).is_err()
                || b.starts_with(&format!("{a}/"))
                || a.starts_with(&format!("{b}/"))
                || a == b
            {
                return;
            }
            make_parents(ws, b, touched);
            if fs::symlink_metadata(&pa).is_err() || !plain(ws, a) {
                return; // make_parents replaced an ancestor of `a`
            }
            remove_any_at(ws, b, touched);
            // Everything below `a` moves: a watcher reports the moved directory's both names.
            fs::rename(&pa, &pb).unwrap();
            touched.insert(a.clone());
            touched.insert(b.clone());
        }
        Op::Chmod(p, m) => {
            let path = ws.join(p);
            if let Ok(md) = fs::symlink_metadata(&path)
                && !md.file_type().is_symlink()
            {
                let mode = if md.is_dir() { m | 0o700 } else { *m };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                touched.insert(p.clone());
            }
        }
        Op::Symlink(p, t) => {
            make_parents(ws, p, touched);
            remove_any_at(ws, p, touched);
            symlink(TARGETS[*t], ws.join(p)).unwrap();
            touched.insert(p.clone());
        }
        Op::Mkdir(p) => {
            make_parents(ws, p, touched);
            if !is_real_dir(&ws.join(p)) {
                remove_any_at(ws, p, touched);
                fs::create_dir(ws.join(p)).unwrap();
            }
            touched.insert(p.clone());
        }
        Op::Checkpoint(_) => {}
    }
}

fn with_mtimes(root: &Path) -> BTreeMap<String, String> {
    let mut l = listing(root);
    for (k, v) in l.iter_mut() {
        if v.starts_with('F') {
            let m = fs::symlink_metadata(root.join(k))
                .unwrap()
                .modified()
                .unwrap();
            v.push_str(&format!(" {m:?}"));
        }
    }
    l
}

fn strip(es: Vec<Entry>) -> Vec<(PathBuf, String)> {
    es.into_iter()
        .map(|e| {
            (
                e.path,
                format!(
                    "{:?} {:o} {} {} {:?} {:?}",
                    e.kind, e.mode, e.size, e.mtime_ns, e.content, e.link_target
                ),
            )
        })
        .collect()
}

/// `seed_files` extra files under a/, b/ and c/ make trees of several entry chunks, so
/// hinted checkpoints re-chunk some chunks and reuse others.
fn run(ops: Vec<Op>, seed_files: usize) {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    fs::create_dir(&ws).unwrap();
    write(&ws, "seed/file", b"seed");
    for i in 0..seed_files {
        write(
            &ws,
            &format!("{}/s{:02}/f{i:04}", ["a", "b", "c"][i % 3], i % 17),
            format!("seed {}", i % 50).as_bytes(),
        );
    }
    let store = Store::open(&t.path().join("store"))
        .unwrap()
        .with_threads(2);
    let scratch_root = t.path().join("scratch");
    let mut touched = BTreeSet::new();
    let mut history = Vec::new();
    let mut first = true;
    let mut ops = ops;
    ops.push(Op::Checkpoint(1));
    for op in &ops {
        apply(&ws, op, &mut touched);
        let Op::Checkpoint(mode) = op else { continue };
        let hint = if first || *mode == 0 {
            ChangeHint::Unknown
        } else {
            let mut set: BTreeSet<PathBuf> = match mode {
                1 => touched.iter().map(PathBuf::from).collect(),
                2 => touched.iter().map(|p| PathBuf::from(parent(p))).collect(),
                _ => touched
                    .iter()
                    .map(PathBuf::from)
                    .chain(["a", "b/c", "zzz", "c/a/b"].map(PathBuf::from))
                    .collect(),
            };
            if set.is_empty() && *mode == 2 {
                set.insert(PathBuf::from("."));
            }
            ChangeHint::Paths(set)
        };
        first = false;
        touched.clear();
        let m = created(
            store
                .create(&request(vec![(spec("w", &ws), hint.clone())]))
                .unwrap(),
        );
        // The same tree scanned from scratch by a fresh store must record the same entries.
        let _ = fs::remove_dir_all(&scratch_root);
        let scratch = Store::open(&scratch_root).unwrap();
        let s = created(scratch.create(&unknown("w", &ws)).unwrap());
        assert_eq!(
            strip(store.entries(&m.id, "w").unwrap()),
            strip(scratch.entries(&s.id, "w").unwrap()),
            "hint {hint:?} diverged from a full scan"
        );
        history.push((m.id.clone(), with_mtimes(&ws)));
    }
    let out = t.path().join("out");
    write(&out, "junk/x", b"junk");
    symlink("/tmp", out.join("a")).unwrap();
    // Restore every checkpoint, newest to oldest and back, into the same dirty target.
    let order: Vec<usize> = (0..history.len()).rev().chain(0..history.len()).collect();
    for i in order {
        let (id, expected) = &history[i];
        store.restore_tree(id, "w", &out).unwrap();
        assert_eq!(&with_mtimes(&out), expected, "restore of checkpoint {i}");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_checkpoint_restores_exactly(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 8 + 1, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_checkpoint_of_a_many_chunk_tree_restores_exactly(ops in prop::collection::vec(op(), 1..25)) {
        run(ops, 800);
    }
}

#[test]
fn kind_changes_through_hints() {
    use Op::*;
    run(
        vec![
            Write("a/b".into(), 1),
            Checkpoint(1),
            Delete("a".into()),
            Write("a".into(), 2),
            Checkpoint(1),
            Delete("a".into()),
            Mkdir("a/b/c".into()),
            Checkpoint(2),
            Rename("a".into(), "c".into()),
            Symlink("a".into(), 0),
            Checkpoint(3),
            Chmod("c/b".into(), 0o750),
            Checkpoint(2),
        ],
        0,
    );
}
