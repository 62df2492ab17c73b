#![no_main]
//! A followed Claude Code output file: stream-json (headless) and transcript
//! (interactive) lines through `headless_io::news_of_line` with each parser, and the
//! transcript's last reported total. Properties: no panic; tool output stays cut to
//! its bound; costs are finite, non-negative and bounded; every event survives the
//! journal's encoding.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    parhelia_agent::fuzzing::stream_json(data);
});
