#![no_main]
//! `parhelia_checkpoint::fuzzing::parse_manifest_body` on arbitrary bytes: never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parhelia_checkpoint::fuzzing::parse_manifest_body(data);
});
