//! Fuzzes the front end with generated hostile build files (deep nesting,
//! expanding args, long chains, many errors): see
//! `bake_engine::fuzz::hostile`. A panic is a bug; so is an input that runs
//! for more than a second or allocates without bound, which libFuzzer reports
//! with `-timeout=` and `-malloc_limit_mb=`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bake_engine::fuzz::pipeline(&bake_engine::fuzz::hostile(data));
});
