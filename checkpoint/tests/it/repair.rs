//! Damage is reported as damage and repaired from intact sources (`Store::check`,
//! `Store::list_all`, `Store::repair`), on stores written by the real engine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{listing, unknown};
use parhelia_checkpoint::{
    CheckDepth, CheckpointId, CreateOutcome, RepairOptions, RepairSource, Store,
};

const N: usize = 5;

/// Incompressible bytes, so a flipped byte early in a layer lands in this file's frame.
fn noise(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    store_root: PathBuf,
    ids: Vec<CheckpointId>,
    /// The layer every checkpoint shares (the first checkpoint's).
    shared: String,
    /// Each checkpoint's restored tree, before any damage.
    restored: BTreeMap<CheckpointId, BTreeMap<String, String>>,
    dir: PathBuf,
}

/// N checkpoints of a workspace that keeps its first files and adds a note each time:
/// all of them need the first checkpoint's layer.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let ws = base.join("ws");
    fs::create_dir_all(ws.join("src")).unwrap();
    fs::write(ws.join("big.bin"), noise(3 << 20, "big")).unwrap();
    fs::write(ws.join("src/a.txt"), b"alpha\n").unwrap();
    let store_root = base.join("store");
    let store = Store::open(&store_root).unwrap();
    let mut ids = Vec::new();
    for k in 1..=N {
        fs::write(ws.join(format!("note-{k}.txt")), format!("note {k}\n")).unwrap();
        match store.create(&unknown("workspace", &ws)).unwrap() {
            CreateOutcome::Created(m) => ids.push(m.id),
            CreateOutcome::Unchanged(_) => panic!("unchanged"),
        }
    }
    let first = store.load(&ids[0]).unwrap();
    assert_eq!(first.layers.len(), 1);
    let shared = first.layers[0].to_hex();
    for id in &ids {
        assert!(
            store
                .load(id)
                .unwrap()
                .layers
                .iter()
                .any(|l| l.to_hex() == shared)
        );
    }
    let mut restored = BTreeMap::new();
    for id in &ids {
        let target = base.join(format!("before-{id}"));
        store.restore_tree(id, "workspace", &target).unwrap();
        restored.insert(id.clone(), listing(&target));
    }
    Fixture {
        _dir: dir,
        ws,
        store_root,
        ids,
        shared,
        restored,
        dir: base,
    }
}

fn layer_path(f: &Fixture) -> PathBuf {
    f.store_root
        .join("layers")
        .join(format!("{}.tar.zst", f.shared))
}

fn flip(path: &Path, at: u64) {
    let mut data = fs::read(path).unwrap();
    data[at as usize] ^= 0x5a;
    fs::write(path, data).unwrap();
}

fn tree_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, fs::read(e.path()).unwrap());
        }
    }
    out
}

#[test]
fn a_flipped_byte_in_a_shared_layer_names_the_layer_and_every_affected_checkpoint() {
    let f = fixture();
    flip(&layer_path(&f), 1000);
    let store = Store::open(&f.store_root).unwrap();

    let health = store.check(CheckDepth::Full).unwrap();
    assert!(!health.is_ok());
    assert_eq!(health.damaged.len(), 1, "{:#?}", health.damaged);
    let d = &health.damaged[0];
    assert_eq!(d.path, format!("layers/{}.tar.zst", f.shared));
    assert_eq!(d.affects, f.ids, "every checkpoint that shares the layer");
    assert!(!d.missing);
    let (bad, total) = d.bad_blobs.unwrap();
    assert!(bad >= 1 && bad < total, "{bad} of {total}");
    for c in &health.checkpoints {
        assert_eq!(c.code, Some("E620"), "{c:?}");
        assert!(c.damage.as_deref().unwrap().contains(&f.shared));
        assert_eq!(store.verify(&c.id).unwrap_err().code(), "E620");
    }
    // A quick check reads no layer data: it does not see a flipped byte (and says so by
    // its depth), but it costs no layer reads.
    let quick = store.check(CheckDepth::Quick).unwrap();
    assert_eq!(quick.depth, CheckDepth::Quick);
    assert_eq!(quick.bytes_read, 0);
}

#[test]
fn repair_from_the_workspace_makes_every_checkpoint_verify_and_restore_byte_identical() {
    let f = fixture();
    flip(&layer_path(&f), 1000);
    let store = Store::open(&f.store_root).unwrap();
    let opts = |dry_run| RepairOptions {
        sources: vec![RepairSource::Workspace(f.ws.clone())],
        dry_run,
    };

    // A dry run predicts and changes nothing.
    let before = tree_files(&f.store_root);
    let dry = store.repair(&opts(true)).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.repaired, f.ids, "{dry:#?}");
    assert!(dry.unrepairable.is_empty(), "{dry:#?}");
    assert_eq!(tree_files(&f.store_root), before, "a dry run wrote nothing");

    let report = store.repair(&opts(false)).unwrap();
    assert_eq!(report.repaired, f.ids, "{report:#?}");
    assert!(report.unrepairable.is_empty(), "{report:#?}");
    assert!(
        report
            .actions
            .iter()
            .any(|a| a.action.contains("from the workspace")),
        "{report:#?}"
    );
    // The damaged layer is kept, out of the way.
    assert!(!layer_path(&f).exists());
    assert!(
        f.store_root
            .join(format!("damaged/layers/{}.tar.zst", f.shared))
            .is_file()
    );
    let health = store.check(CheckDepth::Full).unwrap();
    assert!(health.is_ok(), "{health:#?}");
    assert_eq!(health.quarantined.len(), 1);
    for id in &f.ids {
        store.verify(id).unwrap();
        let target = f.dir.join(format!("after-{id}"));
        store.restore_tree(id, "workspace", &target).unwrap();
        assert_eq!(
            listing(&target),
            f.restored[id],
            "{id} restores byte-identical"
        );
    }

    // Idempotent: nothing left to do, nothing changes.
    let files = tree_files(&f.store_root);
    let again = store.repair(&opts(false)).unwrap();
    assert!(
        again.damaged.is_empty() && again.actions.is_empty(),
        "{again:#?}"
    );
    assert_eq!(tree_files(&f.store_root), files);

    // The store keeps working: a new checkpoint deduplicates against the repaired layer.
    fs::write(f.ws.join("later.txt"), b"later\n").unwrap();
    let CreateOutcome::Created(m) = store.create(&unknown("workspace", &f.ws)).unwrap() else {
        panic!("unchanged")
    };
    store.verify(&m.id).unwrap();
}

#[test]
fn without_a_source_the_checkpoints_are_marked_unrepairable_and_stay_reported() {
    let f = fixture();
    flip(&layer_path(&f), 1000);
    // The workspace no longer has the lost content.
    fs::write(f.ws.join("big.bin"), b"changed").unwrap();
    let store = Store::open(&f.store_root).unwrap();
    let opts = RepairOptions {
        sources: vec![RepairSource::Workspace(f.ws.clone())],
        dry_run: false,
    };
    let layers_before = tree_files(&f.store_root.join("layers"));
    let report = store.repair(&opts).unwrap();
    assert!(report.repaired.is_empty(), "{report:#?}");
    let ids: Vec<&CheckpointId> = report.unrepairable.iter().map(|u| &u.id).collect();
    assert_eq!(ids, f.ids.iter().collect::<Vec<_>>());
    assert!(
        report.unrepairable[0].reason.contains("no intact source"),
        "{report:#?}"
    );
    // Never the only copy: the damaged layer stays (its intact blobs are still the
    // only copy), and nothing new is left behind.
    assert_eq!(tree_files(&f.store_root.join("layers")), layers_before);
    assert!(f.store_root.join("damaged/repair.json").is_file());

    let health = store.check(CheckDepth::Full).unwrap();
    assert_eq!(health.damaged.len(), 1);
    for c in &health.checkpoints {
        assert!(c.damage.is_some());
        assert!(
            c.repair_note
                .as_deref()
                .is_some_and(|n| n.contains("no intact source")),
            "{c:?}"
        );
    }
    // Idempotent.
    let again = store.repair(&opts).unwrap();
    assert_eq!(again.unrepairable, report.unrepairable);
    assert_eq!(tree_files(&f.store_root.join("layers")), layers_before);
}

#[test]
fn a_damaged_manifest_is_listed_as_damaged_and_repaired_from_a_mirror() {
    let f = fixture();
    // An intact copy of the store (what a Modal mirror or another backend's volume is).
    let mirror = f.dir.join("mirror");
    for sub in ["layers", "manifests"] {
        fs::create_dir_all(mirror.join(sub)).unwrap();
        for e in fs::read_dir(f.store_root.join(sub)).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), mirror.join(sub).join(e.file_name())).unwrap();
        }
    }
    fs::copy(f.store_root.join("store.json"), mirror.join("store.json")).unwrap();

    let victim = &f.ids[N - 1];
    let mpath = f
        .store_root
        .join(format!("manifests/{}.manifest", victim.as_str()));
    flip(&mpath, 60);
    // And the shared layer's entry chunk, which no workspace can give back.
    let len = fs::metadata(layer_path(&f)).unwrap().len();
    flip(&layer_path(&f), len - 200);

    let store = Store::open(&f.store_root).unwrap();
    // `list` hides it; `list_all` and `has_manifest` do not; `load` says E620.
    assert!(!store.list().unwrap().iter().any(|s| &s.id == victim));
    let all = store.list_all().unwrap();
    assert_eq!(all.len(), N);
    let listed = all.iter().find(|l| &l.id == victim).unwrap();
    assert_eq!(listed.summary.as_ref().unwrap_err().code(), "E620");
    assert!(store.has_manifest(victim));
    assert_eq!(store.load(victim).unwrap_err().code(), "E620");

    let health = store.check(CheckDepth::Quick).unwrap();
    let d = health
        .damaged
        .iter()
        .find(|d| d.path.starts_with("manifests/"))
        .unwrap();
    assert_eq!(d.affects, vec![victim.clone()]);

    let report = store
        .repair(&RepairOptions {
            sources: vec![
                RepairSource::Workspace(f.ws.clone()),
                RepairSource::Store(mirror.clone()),
            ],
            dry_run: false,
        })
        .unwrap();
    assert_eq!(report.repaired, f.ids, "{report:#?}");
    assert!(report.unrepairable.is_empty(), "{report:#?}");
    assert!(store.check(CheckDepth::Full).unwrap().is_ok());
    for id in &f.ids {
        let target = f.dir.join(format!("after-{id}"));
        store.restore_tree(id, "workspace", &target).unwrap();
        assert_eq!(listing(&target), f.restored[id]);
    }
    // Both damaged files were kept aside.
    assert_eq!(
        store.check(CheckDepth::Quick).unwrap().quarantined.len(),
        2,
        "{:?}",
        tree_files(&f.store_root.join("damaged")).keys()
    );
}

#[test]
fn a_missing_layer_is_reported_with_its_checkpoints_and_restored_from_a_mirror() {
    let f = fixture();
    let mirror = f.dir.join("mirror");
    fs::create_dir_all(mirror.join("layers")).unwrap();
    fs::copy(f.store_root.join("store.json"), mirror.join("store.json")).unwrap();
    fs::copy(
        layer_path(&f),
        mirror.join("layers").join(format!("{}.tar.zst", f.shared)),
    )
    .unwrap();
    fs::remove_file(layer_path(&f)).unwrap();
    let store = Store::open(&f.store_root).unwrap();
    let quick = store.check(CheckDepth::Quick).unwrap();
    assert_eq!(quick.damaged.len(), 1);
    assert!(quick.damaged[0].missing);
    assert_eq!(quick.damaged[0].affects, f.ids);
    let report = store
        .repair(&RepairOptions {
            sources: vec![RepairSource::Store(mirror)],
            dry_run: false,
        })
        .unwrap();
    assert_eq!(report.repaired, f.ids, "{report:#?}");
    assert!(store.check(CheckDepth::Full).unwrap().is_ok());
}

/// Sources are hostile input: links are never followed (not to a genuine copy, not to
/// an endless file), and a store's own `damaged/repair.json` cannot hang a reader.
#[test]
fn links_in_sources_and_in_the_repair_record_are_not_followed() {
    use std::os::unix::fs::symlink;
    let f = fixture();
    let genuine = f.dir.join("genuine");
    fs::create_dir_all(&genuine).unwrap();
    fs::copy(layer_path(&f), genuine.join("layer")).unwrap();
    fs::copy(f.ws.join("big.bin"), genuine.join("big.bin")).unwrap();
    flip(&layer_path(&f), 1000);
    let victim = &f.ids[0];
    flip(
        &f.store_root
            .join(format!("manifests/{}.manifest", victim.as_str())),
        60,
    );

    // A source store whose files are links, and a workspace whose big.bin is a link.
    let evil = f.dir.join("evil");
    fs::create_dir_all(evil.join("layers")).unwrap();
    fs::create_dir_all(evil.join("manifests")).unwrap();
    fs::copy(f.store_root.join("store.json"), evil.join("store.json")).unwrap();
    symlink(
        genuine.join("layer"),
        evil.join(format!("layers/{}.tar.zst", f.shared)),
    )
    .unwrap();
    symlink(
        "/dev/zero",
        evil.join(format!("manifests/{}.manifest", victim.as_str())),
    )
    .unwrap();
    fs::remove_file(f.ws.join("big.bin")).unwrap();
    symlink(genuine.join("big.bin"), f.ws.join("big.bin")).unwrap();

    let store = Store::open(&f.store_root).unwrap();
    let report = store
        .repair(&RepairOptions {
            sources: vec![
                RepairSource::Workspace(f.ws.clone()),
                RepairSource::Store(evil),
            ],
            dry_run: false,
        })
        .unwrap();
    assert!(report.repaired.is_empty(), "{report:#?}");
    assert_eq!(report.unrepairable.len(), N, "{report:#?}");

    // The record becomes an endless file: readers ignore it.
    let record = f.store_root.join("damaged/repair.json");
    fs::remove_file(&record).unwrap();
    symlink("/dev/zero", &record).unwrap();
    let health = store.check(CheckDepth::Quick).unwrap();
    assert!(health.checkpoints.iter().all(|c| c.repair_note.is_none()));
    assert!(store.unrepairable().is_empty());
}
