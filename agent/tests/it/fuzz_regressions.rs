//! Replays, on the stable toolchain, every input the agent's fuzz targets (`fuzz/`) found
//! to crash (`agent/tests/fuzz-regressions/<target>/`) and their seeds
//! (`fuzz/seeds/<target>/`), through the same `parhelia_agent::fuzzing` entry points the
//! targets call: each must return without a panic (the entry points assert the targets'
//! properties). A new crash found by `scripts/fuzz` is fixed and its input dropped into
//! the target's directory here; nothing else needs to change.

use std::fs;
use std::path::{Path, PathBuf};

use parhelia_agent::fuzzing;

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
fn journal_inputs_keep_their_properties() {
    replay("journal", fuzzing::journal);
}

#[test]
fn stream_json_inputs_keep_their_properties() {
    replay("stream_json", fuzzing::stream_json);
}

#[test]
fn spend_inputs_keep_their_properties() {
    replay("spend", fuzzing::spend);
}

#[test]
fn hook_payload_inputs_keep_their_properties() {
    replay("hook_payload", fuzzing::hook_payload);
}

/// The seeds are real files, so the readers accept them: the fuzzers start from inputs
/// that reach past the JSON syntax.
#[test]
fn seeds_are_accepted() {
    let seeds = |t: &str| files(&root().join("../fuzz/seeds").join(t));
    for path in seeds("journal") {
        let data = fs::read(&path).unwrap();
        let scan = parhelia_agent::journal::scan(&data[..])
            .unwrap_or_else(|e| panic!("{} is refused: {e:?}", path.display()));
        assert!(scan.line_offsets.len() > 1, "{}", path.display());
    }
    for path in seeds("stream_json") {
        let text = fs::read_to_string(&path).unwrap();
        let events: usize = text
            .lines()
            .flat_map(|line| {
                [
                    parhelia_agent::stream_json::parse_line(line),
                    parhelia_agent::transcript::parse_line(line),
                ]
            })
            .map(|parsed| parsed.unwrap().kinds.len())
            .sum();
        assert!(events > 0, "{}", path.display());
    }
    for path in seeds("hook_payload") {
        let report = parhelia_agent::hooks::parse_report(&fs::read(&path).unwrap()).unwrap();
        assert!(
            parhelia_agent::hooks::status_for_hook(&report).is_some(),
            "{}",
            path.display()
        );
    }
}
