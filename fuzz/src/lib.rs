//! Fuzz targets of DataFactory (a workspace of its own, outside the main
//! one: built by `cargo fuzz`, see docs/RELIABILITY.md and scripts/fuzz.sh).

pub mod harness;

#[cfg(feature = "http")]
pub mod http;
