//! The distillation pipeline: datasets, evaluation and the three methods.

pub mod data;
pub mod drivers;
pub mod eval;
pub mod folder;
pub mod report;
pub mod resume;

pub use drivers::{Harness, Method, Outcome, Settings};
pub use resume::Checkpoints;
