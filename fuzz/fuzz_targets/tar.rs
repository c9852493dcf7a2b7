//! Fuzzes the layer reader: arbitrary bytes as a tar stream (and as gzip or
//! zstd when they start like one), every entry checked against what
//! `layer::Entry` promises. See `bake_engine::fuzz::tar`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bake_engine::fuzz::tar(data);
});
