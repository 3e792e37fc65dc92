//! The distillation pipeline: datasets, evaluation and the three methods.

pub mod data;
pub mod drivers;
pub mod eval;
pub mod report;

pub use drivers::{Harness, Method, Outcome, Settings};
