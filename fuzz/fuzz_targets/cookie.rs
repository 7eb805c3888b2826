//! `cargo +nightly fuzz run cookie`: the property lives in `aalgate_session::cookie::fuzz_cookie_header`, so the checked-in
//! corpus (`fuzz/corpus/cookie/`) is replayed by the ordinary test suite too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aalgate_session::cookie::fuzz_cookie_header(data));
