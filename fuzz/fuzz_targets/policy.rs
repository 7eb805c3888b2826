//! `cargo +nightly fuzz run policy`: the property lives in `aalgate_policy::fuzzing::policy`, so the checked-in
//! corpus (`fuzz/corpus/policy/`) is replayed by the ordinary test suite too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aalgate_policy::fuzzing::policy(data));
