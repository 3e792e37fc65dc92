//! The `[pack]` section: sequence packing.

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, Section};

/// What to do with a sample longer than a packed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OversizePolicy {
    /// Fail with an error naming the sample.
    Reject,
    /// Cut the response to fit.
    Truncate,
}

/// How the synchronous methods (SFT, on-policy) lay out a step's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineRows {
    /// Packed into rows of `capacity` tokens by best-fit decreasing, as NPD
    /// trains: every method trains on the same row layout.
    #[default]
    Packed,
    /// One sample per row, every row as wide as the step's longest sample.
    Padded,
}

/// Sequence packing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackConfig {
    /// Tokens per packed row.
    pub capacity: usize,
    /// Samples longer than `capacity`.
    pub oversize: OversizePolicy,
    /// How SFT and on-policy lay out each step's samples (NPD always packs).
    pub baselines: BaselineRows,
}

impl Default for PackConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            oversize: OversizePolicy::Reject,
            baselines: BaselineRows::Packed,
        }
    }
}

impl Section for PackConfig {
    const NAME: &'static str = "pack";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between("capacity", self.capacity, 2, npd_core::config::MAX_TOKENS)
    }
}
