#![no_main]
//! Lines the Modal bridge writes: `bridge::parse_greeting`, `bridge::parse_reply` and
//! `reply_outcome` (a result or a coded error), and the `volume.list` result reader.
//! Properties: no panic; a failure is a coded error; every store file the mirror would
//! fetch is a plain relative path.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parhelia::fuzzing::bridge_reply(data);
});
