//! Fuzzes layer extraction: arbitrary bytes unpacked as a layer into a
//! scratch folder, as root and confined by a chroot, and nothing outside that
//! folder may be created, removed or changed. See `bake_engine::fuzz::unpack`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bake_engine::fuzz::unpack(data);
});
