//! Retention: prune removes checkpoints outside the policy and content only they needed,
//! and every kept checkpoint still restores exactly.

use std::collections::BTreeMap;
use std::fs;

use crate::common::*;
use parhelia_checkpoint::{CheckpointId, Retention, Store};

fn history(
    store: &Store,
    ws: &std::path::Path,
    n: usize,
) -> Vec<(CheckpointId, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for i in 0..n {
        // Every round replaces a large file (so old layers become mostly dead) and adds one.
        let big: Vec<u8> = (0..400_000u32)
            .map(|x| (x.wrapping_mul(2654435761).wrapping_add(i as u32 * 7919) >> 11) as u8)
            .collect();
        write(ws, "big.bin", &big);
        write(
            ws,
            &format!("notes/{i}.txt"),
            format!("round {i}\n").as_bytes(),
        );
        if i == 3 {
            fs::remove_file(ws.join("notes/1.txt")).unwrap();
        }
        let m = created(store.create(&unknown("w", ws)).unwrap());
        out.push((m.id, listing(ws)));
    }
    out
}

fn assert_restores(
    store: &Store,
    root: &std::path::Path,
    kept: &[(CheckpointId, BTreeMap<String, String>)],
) {
    for (id, expected) in kept {
        store.verify(id).unwrap();
        let out = root.join("out");
        store.restore_tree(id, "w", &out).unwrap();
        assert_eq!(&listing(&out), expected, "restore of {id} after prune");
    }
}

#[test]
fn prune_keep_last_removes_old_content_and_kept_checkpoints_restore() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    write(
        &ws,
        "base.txt",
        &b"base content shared by all\n".repeat(1000),
    );
    let store = Store::open(&t.path().join("store")).unwrap();
    let hist = history(&store, &ws, 6);
    let before = store.store_bytes();
    let stats = store
        .prune(&Retention {
            keep_last: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        stats.removed,
        hist[..4]
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(stats.kept, 2);
    assert!(
        stats.layers_deleted + stats.layers_rewritten > 0,
        "{stats:?}"
    );
    assert!(
        store.store_bytes() < before,
        "{before} -> {}",
        store.store_bytes()
    );
    assert_eq!(store.list().unwrap().len(), 2);
    assert_restores(&store, t.path(), &hist[4..]);
    assert_eq!(store.verify(&hist[0].0).unwrap_err().code(), "E205");
    // The store keeps working after a prune, and a second prune changes nothing.
    write(&ws, "later.txt", b"later\n");
    let later = created(store.create(&unknown("w", &ws)).unwrap());
    let again = store
        .prune(&Retention {
            keep_last: Some(3),
            ..Default::default()
        })
        .unwrap();
    assert!(again.removed.is_empty());
    let mut kept = hist[4..].to_vec();
    kept.push((later.id, listing(&ws)));
    assert_restores(&store, t.path(), &kept);
}

#[test]
fn prune_without_rules_keeps_everything_and_keep_within_keeps_recent() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    let store = Store::open(&t.path().join("store")).unwrap();
    let hist = history(&store, &ws, 3);
    assert!(
        store
            .prune(&Retention::default())
            .unwrap()
            .removed
            .is_empty()
    );
    let within = store
        .prune(&Retention {
            keep_within_ms: Some(3_600_000),
            ..Default::default()
        })
        .unwrap();
    assert!(within.removed.is_empty());
    assert_restores(&store, t.path(), &hist);
}

#[test]
fn quota_drops_oldest_first_and_never_the_newest() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    let store = Store::open(&t.path().join("store")).unwrap();
    let hist = history(&store, &ws, 4);
    let err = store
        .prune(&Retention {
            max_store_bytes: Some(1000),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), "E623");
    let ids: Vec<_> = store.list().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![hist[3].0.clone()]);
    assert_restores(&store, t.path(), &hist[3..]);
}
