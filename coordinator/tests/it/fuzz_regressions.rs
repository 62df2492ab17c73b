//! Replays, on the stable toolchain, every input the coordinator's fuzz targets (`fuzz/`)
//! found to crash (`coordinator/tests/fuzz-regressions/<target>/`) and their seeds
//! (`fuzz/seeds/<target>/`), through the same `parhelia::fuzzing` entry points the
//! targets call: each must return without a panic (the entry points assert the targets'
//! properties). A new crash found by `scripts/fuzz` is fixed and its input dropped into
//! the target's directory here; nothing else needs to change.

use std::fs;
use std::path::{Path, PathBuf};

use parhelia::fuzzing;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Replays the regressions and seeds of `target`; both directories must hold inputs.
fn replay(target: &str, f: fn(&[u8])) {
    let regressions = files(&root().join("tests/fuzz-regressions").join(target));
    let seeds = files(&root().join("../fuzz/seeds").join(target));
    assert!(!regressions.is_empty(), "no regression inputs for {target}");
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for path in regressions.iter().chain(&seeds) {
        eprintln!("{target}: {}", path.display());
        f(&fs::read(path).unwrap());
    }
}

#[test]
fn journal_ingest_inputs_keep_their_properties() {
    replay("journal_ingest", fuzzing::journal_ingest);
}

#[test]
fn bridge_reply_inputs_keep_their_properties() {
    replay("bridge_reply", fuzzing::bridge_reply);
}

/// The seeds are real files, so the readers accept them: the fuzzers start from inputs
/// that reach past the JSON syntax.
#[test]
fn seeds_are_accepted() {
    let seeds = |t: &str| files(&root().join("../fuzz/seeds").join(t));
    for path in seeds("journal_ingest") {
        let text = fs::read_to_string(&path).unwrap();
        let parsed = parhelia::backend::local::parse_journal(&text, 0);
        assert!(
            parsed.damaged_lines.is_empty(),
            "{}: {parsed:?}",
            path.display()
        );
        let events = parsed.events;
        assert!(events.len() > 1, "{}", path.display());
    }
    let greeting =
        fs::read_to_string(root().join("../fuzz/seeds/bridge_reply/replies.jsonl")).unwrap();
    let first = greeting.lines().next().unwrap();
    assert_eq!(
        parhelia::backend::modal::bridge::parse_greeting(first)
            .unwrap()
            .protocol,
        parhelia::backend::modal::bridge::PROTOCOL
    );
}
