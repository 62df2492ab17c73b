#![no_main]
//! A Claude Code hook payload: `hooks::parse_report` (the hook client's stdin and the
//! listener's socket) and `status_for_hook`. Properties: no panic; the report the client
//! forwards reads back equal on the listener's side.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parhelia_agent::fuzzing::hook_payload(data);
});
