//! Examples and benchmarks of the npd workspace.
//!
//! The library parts of npd live in the `npd-*` crates; this package holds
//! what the examples and benchmarks share.

pub mod synthetic;
