//! `cargo +nightly fuzz run differential`: the property lives in `aalgate_policy::fuzzing::differential`, so the checked-in
//! corpus (`fuzz/corpus/differential/`) is replayed by the ordinary test suite too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aalgate_policy::fuzzing::differential(data));
