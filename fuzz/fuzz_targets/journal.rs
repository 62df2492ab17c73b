#![no_main]
//! A whole journal file through the agent's readers (`parhelia_agent::fuzzing::journal`):
//! `Journal::open`'s scan, `Journal::read_from`'s line parser and the lenient reader
//! behind the cost total. Properties: no panic; what the scan accepts, `read_from` reads
//! back with the same seqs from any seq and the lenient reader sees too; every event
//! survives the journal's encoding. The coordinator's reader is `journal_ingest`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parhelia_agent::fuzzing::journal(data);
});
