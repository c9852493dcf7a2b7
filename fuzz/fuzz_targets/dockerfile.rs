//! Fuzzes the Dockerfile parser: arbitrary text as a Dockerfile, parsed,
//! every word expanded, mounts read. Any panic is a bug: bad input must
//! become diagnostics that point at a line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        bake_engine::fuzz::dockerfile(text);
    }
});
