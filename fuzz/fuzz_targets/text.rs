#![no_main]
//! The `text` target: see `fuzz/src/harness.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| datafactory_fuzz::harness::run("text", data));
