//! Fuzzes what bake decodes registry documents with: arbitrary bytes as an
//! image manifest, an index and an image config. See
//! `bake_engine::fuzz::manifest`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bake_engine::fuzz::manifest(data);
});
