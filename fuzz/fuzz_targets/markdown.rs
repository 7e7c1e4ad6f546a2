#![no_main]
//! The `markdown` target: see `fuzz/src/harness.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| datafactory_fuzz::harness::run("markdown", data));
