//! The npd workspace's root package: the examples (`examples/`) and the
//! end-to-end tests (`tests/`) that run them as real processes.
//!
//! The library parts of npd live in the `npd-*` crates under `crates/`.
