#![no_main]
//! The `http` target: see `fuzz/src/http.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| datafactory_fuzz::http::run(data));
