//! `cargo +nightly fuzz run normalize`: the property lives in `aalgate_policy::fuzzing::normalize_and_match`, so the checked-in
//! corpus (`fuzz/corpus/normalize/`) is replayed by the ordinary test suite too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aalgate_policy::fuzzing::normalize_and_match(data));
