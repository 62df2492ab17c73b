//! Entry points for the cargo-fuzz targets in `fuzz/` (and the stable regression test
//! `tests/fuzz_regressions.rs` that replays their inputs): each takes bytes a session (or
//! the Modal bridge relaying what a session wrote) can produce, runs them through the same
//! functions the coordinator's readers use, and panics only when a property below is
//! broken (or when the code under test panics).
//!
//! Not part of the coordinator's API: hidden from the docs, stable only for the fuzz crate.

use std::path::{Component, Path};

use parhelia_proto::Event;

use crate::backend::local::parse_journal;
use crate::backend::modal::bridge::{self, PROTOCOL};
use crate::backend::modal::{SandboxStats, volume_files};
use crate::error_codes;
use parhelia_checkpoint::durable::is_durable_file as is_durable_store_file;

/// A journal file as the coordinator reads it to catch up (local volume or downloaded
/// from Modal): the events from a later seq are exactly the matching part of the whole,
/// and every event reads back equal from the payload `db` stores for it.
pub fn journal_ingest(data: &[u8]) {
    // `read_journal_file` reads the file lossily as UTF-8 text (bad bytes damage their line only).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let all = parse_journal(text, 0).events;
    if let Some(middle) = all.get(all.len() / 2) {
        let from = middle.seq;
        let later = parse_journal(text, from).events;
        let want: Vec<Event> = all.iter().filter(|e| e.seq >= from).cloned().collect();
        assert_eq!(later, want);
    }
    for event in &all {
        let payload = serde_json::to_string(event).expect("wire types encode");
        let back: Event = serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("a stored payload does not read back ({e}): {payload}"));
        assert_eq!(&back, event, "{payload}");
    }
}

/// Lines the Modal bridge writes: each read as its greeting and as a call's reply, and a
/// successful result as the `volume.list` and `sandbox.stats` readers take it. A failure
/// is always a coded error of the Modal family; every store file the mirror would fetch
/// is a plain relative path.
pub fn bridge_reply(data: &[u8]) {
    // The coordinator reads the bridge's stdout as UTF-8 lines.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        match bridge::parse_greeting(line) {
            Ok(greeting) => assert_eq!(greeting.protocol, PROTOCOL),
            Err(e) => assert!(error_codes::ALL.contains(&e.code), "{}", e.code.code),
        }
        let Ok(reply) = bridge::parse_reply(line) else {
            continue;
        };
        match bridge::reply_outcome(reply, "volume.list") {
            Ok(result) => {
                for (rel, _) in volume_files(&result, "sessions/s/checkpoints") {
                    if is_durable_store_file(&rel) {
                        assert!(
                            Path::new(&rel)
                                .components()
                                .all(|c| matches!(c, Component::Normal(_))),
                            "{rel}"
                        );
                    }
                }
                let stats = SandboxStats::from_reply(result);
                if let Some(cost) = stats.cost_usd {
                    assert!(cost.is_finite());
                }
            }
            Err(e) => assert!(error_codes::ALL.contains(&e.code), "{}", e.code.code),
        }
    }
}
