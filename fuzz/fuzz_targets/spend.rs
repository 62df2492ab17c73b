#![no_main]
//! A Claude Code transcript as the spend meter reads it (`agent/src/spend.rs`): split
//! into lines across two reads, parsed, deduplicated by message id and priced.
//! Properties: no panic; bounded token counts and costs; the metered total never goes
//! down; the same lines again charge nothing; every `ModelSpend` survives the journal.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parhelia_agent::fuzzing::spend(data);
});
