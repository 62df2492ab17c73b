#![no_main]
//! A whole journal file as the coordinator reads it to catch up (`read_journal_file`,
//! local and Modal): `parhelia::fuzzing::journal_ingest`. Properties: no panic; a later
//! `from_seq` gives exactly the matching events; every event survives the payload
//! encoding `db` stores and reads back (`db/control.rs`, `db/event_log.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parhelia::fuzzing::journal_ingest(data);
});
