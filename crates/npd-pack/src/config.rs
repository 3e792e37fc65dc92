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
    /// Streaming packing emits a row once this fraction of it is filled.
    pub min_fill: f64,
    /// Streaming packing keeps at most this many rows open; when one more is
    /// needed, the fullest is emitted.
    pub max_open_rows: usize,
}

impl Default for PackConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            oversize: OversizePolicy::Reject,
            min_fill: 0.98,
            max_open_rows: 16,
        }
    }
}

impl Section for PackConfig {
    const NAME: &'static str = "pack";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.at_least("capacity", self.capacity, 2)?;
        c.fraction("min_fill", self.min_fill, false, true)?;
        c.at_least("max_open_rows", self.max_open_rows, 1)
    }
}
