//! Fuzzes the whole front end: parse -> resolve -> plan -> keys, on arbitrary
//! text as `build.kdl`. Any panic is a bug: bad input must become diagnostics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        bake_engine::fuzz::pipeline(text);
    }
});
