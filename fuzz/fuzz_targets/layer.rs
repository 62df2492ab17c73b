#![no_main]
//! `parhelia_checkpoint::fuzzing::read_layer`: a whole layer file (frames + index) through
//! every reader. The file lives in a per-process directory under the temp dir.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("parhelia-fuzz-layer-{}", std::process::id()));
    let _ = parhelia_checkpoint::fuzzing::read_layer(&dir, data);
});
