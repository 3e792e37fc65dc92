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

/// Sequence packing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackConfig {
    /// Tokens per packed row.
    pub capacity: usize,
    /// Samples longer than `capacity`.
    pub oversize: OversizePolicy,
}

impl Default for PackConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            oversize: OversizePolicy::Reject,
        }
    }
}

impl Section for PackConfig {
    const NAME: &'static str = "pack";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.at_least("capacity", self.capacity, 2)
    }
}
