//! Replays, on the stable toolchain, every input the fuzz targets (`fuzz/`) found to crash
//! (`checkpoint/tests/fuzz-regressions/<target>/`) and their seeds (`fuzz/seeds/<target>/`),
//! through the same `parhelia_checkpoint::fuzzing` entry points: each must return without
//! a panic. A new crash found by `scripts/fuzz` is fixed and its input added here.

use std::fs;
use std::path::{Path, PathBuf};

use parhelia_checkpoint::fuzzing;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        root.join("tests/fuzz-regressions").join(target),
        root.join("../fuzz/seeds").join(target),
    ] {
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd {
                out.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str, f: impl Fn(&[u8]) -> bool) -> usize {
    let files = inputs(target);
    for p in &files {
        let data = fs::read(p).unwrap();
        eprintln!("{target}: {}", p.display());
        let _ = f(&data);
    }
    files.len()
}

#[test]
fn manifest_inputs_do_not_panic() {
    assert!(replay("manifest", fuzzing::parse_manifest) > 0);
}

#[test]
fn manifest_body_inputs_do_not_panic() {
    assert!(replay("manifest_body", fuzzing::parse_manifest_body) > 0);
}

#[test]
fn tree_records_inputs_do_not_panic() {
    assert!(replay("tree_records", fuzzing::parse_tree_records) > 0);
}

#[test]
fn layer_index_inputs_do_not_panic() {
    assert!(replay("layer_index", fuzzing::parse_layer_index) > 0);
}

#[test]
fn layer_inputs_do_not_panic() {
    let t = tempfile::tempdir().unwrap();
    assert!(replay("layer", |d| fuzzing::read_layer(t.path(), d)) > 0);
}

/// The seeds are real store files, so the parsers must accept them: the fuzzers start
/// from inputs that reach past the checksums.
#[test]
fn seeds_are_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let all = |t: &str, f: &dyn Fn(&[u8]) -> bool| {
        for e in fs::read_dir(root.join(t)).unwrap() {
            let p = e.unwrap().path();
            assert!(f(&fs::read(&p).unwrap()), "{} is refused", p.display());
        }
    };
    all("manifest", &fuzzing::parse_manifest);
    all("manifest_body", &fuzzing::parse_manifest_body);
    all("tree_records", &fuzzing::parse_tree_records);
    all("layer_index", &fuzzing::parse_layer_index);
    let t = tempfile::tempdir().unwrap();
    all("layer", &|d| fuzzing::read_layer(t.path(), d));
}
