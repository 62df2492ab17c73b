//! Damaged and hostile stores, and crashes mid-checkpoint: errors are coded, the target is
//! untouched, nothing is written outside it, and checkpoints that do not need the damaged
//! data still restore.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::common::*;
use parhelia_checkpoint::raw::{RawEntry, write_checkpoint};
use parhelia_checkpoint::{CheckpointId, Manifest, Store};

struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    ws: PathBuf,
    store: Store,
    old: Manifest,
    new: Manifest,
}

/// Two checkpoints; the newer one's changed content lives in layers the older one lacks.
fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let ws = root.join("ws");
    write(&ws, "keep.txt", b"unchanged\n");
    write(&ws, "src/a.rs", b"fn a() {}\n");
    let store = Store::open(&root.join("store")).unwrap();
    let old = created(store.create(&unknown("w", &ws)).unwrap());
    write(&ws, "src/a.rs", &b"fn a() { /* changed */ }\n".repeat(100));
    let new = created(store.create(&paths("w", &ws, &["src/a.rs"])).unwrap());
    Setup {
        _t: t,
        root,
        ws,
        store,
        old,
        new,
    }
}

fn only_new_layer(s: &Setup) -> PathBuf {
    let l = s
        .new
        .layers
        .iter()
        .find(|l| !s.old.layers.contains(l))
        .expect("the new checkpoint wrote a layer");
    s.root.join("store/layers").join(format!("{l}.tar.zst"))
}

fn dirty_target(s: &Setup) -> PathBuf {
    let out = s.root.join("out");
    write(&out, "precious.txt", b"do not touch\n");
    write(&out, "src/a.rs", b"local edit\n");
    out
}

fn assert_refused_untouched(s: &Setup, id: &CheckpointId, code: &str) {
    let out = dirty_target(s);
    let before = listing(&out);
    assert_eq!(s.store.verify(id).unwrap_err().code(), code);
    assert_eq!(
        s.store.restore_tree(id, "w", &out).unwrap_err().code(),
        code
    );
    assert_eq!(
        listing(&out),
        before,
        "the target changed although restore was refused"
    );
}

fn restores_exactly(
    s: &Setup,
    id: &CheckpointId,
    expected: &std::collections::BTreeMap<String, String>,
) {
    let out = s.root.join("out-ok");
    s.store.restore_tree(id, "w", &out).unwrap();
    assert_eq!(&listing(&out), expected);
    fs::remove_dir_all(&out).unwrap();
}

fn old_listing(s: &Setup) -> std::collections::BTreeMap<String, String> {
    let mut l = listing(&s.ws);
    l.insert(
        "src/a.rs".into(),
        format!("F 644 {}", blake3::hash(b"fn a() {}\n").to_hex()),
    );
    l
}

#[test]
fn a_truncated_layer_is_e620_and_older_checkpoints_still_restore() {
    let s = setup();
    let layer = only_new_layer(&s);
    let data = fs::read(&layer).unwrap();
    fs::write(&layer, &data[..data.len() - 7]).unwrap();
    assert_refused_untouched(&s, &s.new.id, "E620");
    restores_exactly(&s, &s.old.id, &old_listing(&s));
}

#[test]
fn a_bit_flip_in_a_layer_is_e620() {
    let s = setup();
    let layer = only_new_layer(&s);
    let mut data = fs::read(&layer).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x04;
    fs::write(&layer, &data).unwrap();
    assert_refused_untouched(&s, &s.new.id, "E620");
    restores_exactly(&s, &s.old.id, &old_listing(&s));
}

#[test]
fn a_bit_flip_in_a_manifest_is_e620_and_list_skips_it() {
    let s = setup();
    let path = s
        .root
        .join("store/manifests")
        .join(format!("{}.manifest", s.new.id));
    let mut data = fs::read(&path).unwrap();
    let i = data.iter().position(|b| *b == b'{').unwrap() + 10;
    data[i] ^= 0x01;
    fs::write(&path, &data).unwrap();
    assert_eq!(s.store.load(&s.new.id).unwrap_err().code(), "E620");
    assert_refused_untouched(&s, &s.new.id, "E620");
    let ids: Vec<_> = s.store.list().unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(ids, vec![s.old.id.clone()]);
    assert_eq!(s.store.latest().unwrap().unwrap().id, s.old.id);
    restores_exactly(&s, &s.old.id, &old_listing(&s));
    // The store stays usable: the next checkpoint builds on the newest readable one.
    let next = created(s.store.create(&unknown("w", &s.ws)).unwrap());
    assert_eq!(next.parent.as_ref(), Some(&s.old.id));
    restores_exactly(&s, &next.id, &listing(&s.ws));
}

#[test]
fn a_damaged_layer_index_is_e620() {
    let s = setup();
    let layer = only_new_layer(&s);
    let mut data = fs::read(&layer).unwrap();
    // The index trailer sits at the end of the layer, before its 16-byte footer.
    let at = data.len() - 16 - 40;
    data[at] ^= 0x80;
    fs::write(&layer, &data).unwrap();
    assert_refused_untouched(&s, &s.new.id, "E620");
    restores_exactly(&s, &s.old.id, &old_listing(&s));
}

#[test]
fn a_crash_before_the_manifest_commit_leaves_earlier_checkpoints_usable() {
    let s = setup();
    let before = listing(&s.ws);
    for point in ["before_manifest", "before_manifest_rename"] {
        write(&s.ws, "crash.bin", point.repeat(10_000).as_bytes());
        s.store.inject_failure(Some(point));
        let err = s.store.create(&unknown("w", &s.ws)).unwrap_err();
        assert_eq!(err.code(), "E520", "{err}");
        s.store.inject_failure(None);
        assert_eq!(
            s.store.list().unwrap().len(),
            2,
            "a crashed checkpoint must not be visible"
        );
        assert_eq!(s.store.latest().unwrap().unwrap().id, s.new.id);
        restores_exactly(&s, &s.new.id, &before);
        fs::remove_file(s.ws.join("crash.bin")).unwrap();
    }
    // The store stays usable and a later prune removes what the crashes left behind.
    write(&s.ws, "after.txt", b"after the crash\n");
    let next = created(s.store.create(&unknown("w", &s.ws)).unwrap());
    restores_exactly(&s, &next.id, &listing(&s.ws));
    let bytes = s.store.store_bytes();
    let stats = s.store.prune(&Default::default()).unwrap();
    assert!(stats.layers_deleted >= 1, "{stats:?}");
    assert!(s.store.store_bytes() < bytes);
    for m in [&s.old, &s.new, &next] {
        s.store.verify(&m.id).unwrap();
    }
}

fn hostile(entries: &[RawEntry], why: &str) {
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let id = write_checkpoint(&store, "w", entries).unwrap();
    let out = t.path().join("target/inner");
    write(&out, "precious.txt", b"mine\n");
    let before = listing(t.path());
    let err = store.restore_tree(&id, "w", &out).unwrap_err();
    assert_eq!(err.code(), "E621", "{why}: {err}");
    assert_eq!(store.verify(&id).unwrap_err().code(), "E621", "{why}");
    assert_eq!(listing(t.path()), before, "{why}: something was written");
    assert!(fs::read_dir(&sentinel).unwrap().next().is_none());
    assert!(!Path::new("/tmp/escape-from-parhelia").exists());
}

#[test]
fn hostile_entries_are_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().to_str().unwrap().to_string();
    hostile(&[RawEntry::file("../escape", b"x")], "parent escape");
    hostile(
        &[RawEntry::file("a/../../escape-from-parhelia", b"x")],
        "nested escape",
    );
    hostile(
        &[RawEntry::file("/tmp/escape-from-parhelia", b"x")],
        "absolute path",
    );
    hostile(
        &[
            RawEntry::link("link", 2, &outside),
            RawEntry::file("link/file", b"x"),
        ],
        "write through a symlink",
    );
    hostile(
        &[RawEntry::link("passwd", 3, "/etc/passwd")],
        "hard link out",
    );
    hostile(
        &[RawEntry {
            kind: 4,
            ..RawEntry::file("dev", b"")
        }],
        "character device",
    );
    hostile(
        &[RawEntry {
            kind: 5,
            ..RawEntry::file("blk", b"")
        }],
        "block device",
    );
    hostile(
        &[RawEntry {
            kind: 6,
            ..RawEntry::file("fifo", b"")
        }],
        "fifo",
    );
    hostile(
        &[RawEntry::file("a", b"x"), RawEntry::file("a/b", b"y")],
        "file used as a directory",
    );
}

#[test]
fn symlinks_out_are_restored_as_links_and_never_written_through() {
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let s = sentinel.to_str().unwrap();
    let id = write_checkpoint(
        &store,
        "w",
        &[
            RawEntry::dir("d"),
            RawEntry::file("d/x", b"inside\n"),
            RawEntry::link("out", 2, s),
        ],
    )
    .unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    // The target already has `d` as a symlink to the sentinel: restore must not follow it.
    symlink(&sentinel, out.join("d")).unwrap();
    store.restore_tree(&id, "w", &out).unwrap();
    assert!(fs::read_dir(&sentinel).unwrap().next().is_none());
    assert_eq!(fs::read(out.join("d/x")).unwrap(), b"inside\n");
    assert!(fs::symlink_metadata(out.join("d")).unwrap().is_dir());
    assert_eq!(fs::read_link(out.join("out")).unwrap(), sentinel);
}

#[test]
fn checkpoints_of_many_layers_commit_only_when_all_are_durable() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    // Incompressible content (xorshift), so the layers really fill up.
    let noise = |seed: u32, len: usize| -> Vec<u8> {
        let mut x = (u64::from(seed) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for i in 0..24 {
        write(&ws, &format!("d{}/f{i}.bin", i % 4), &noise(i, 700_000));
    }
    // Small layers: layers fill up (and are made durable in the background) mid-create.
    let store = Store::open(&t.path().join("store"))
        .unwrap()
        .with_layer_target(64 << 10);
    let first = created(store.create(&unknown("w", &ws)).unwrap());
    assert!(first.stats.new_layers >= 6, "{:?}", first.stats);
    store.verify(&first.id).unwrap();
    let out = t.path().join("out");
    store.restore_tree(&first.id, "w", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
    let expected_first = listing(&ws);

    // A crash just before the commit, after several layers were finished.
    for i in 0..24 {
        write(
            &ws,
            &format!("d{}/f{i}.bin", i % 4),
            &noise(1000 + i, 700_000),
        );
    }
    let layers_before = fs::read_dir(t.path().join("store/layers")).unwrap().count();
    store.inject_failure(Some("before_manifest"));
    assert_eq!(store.create(&unknown("w", &ws)).unwrap_err().code(), "E520");
    store.inject_failure(None);
    let layers_after = fs::read_dir(t.path().join("store/layers")).unwrap().count();
    assert!(
        layers_after >= layers_before + 5,
        "finished layers stay, complete"
    );
    assert_eq!(store.list().unwrap().len(), 1);
    store.verify(&first.id).unwrap();

    // The next checkpoint deduplicates against those layers; prune drops what is unused.
    let second = created(store.create(&unknown("w", &ws)).unwrap());
    assert_eq!(second.stats.new_bytes, 0, "{:?}", second.stats);
    store.verify(&second.id).unwrap();
    fs::remove_dir_all(&out).unwrap();
    store.restore_tree(&second.id, "w", &out).unwrap();
    assert_eq!(listing(&out), listing(&ws));
    store.prune(&Default::default()).unwrap();
    for (m, expected) in [(&first, &expected_first), (&second, &listing(&ws))] {
        store.verify(&m.id).unwrap();
        fs::remove_dir_all(&out).unwrap();
        store.restore_tree(&m.id, "w", &out).unwrap();
        assert_eq!(&listing(&out), expected);
    }
}
