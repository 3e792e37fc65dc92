//! The `[output]` section: where a run writes and how often it checkpoints.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, Section};

/// Output folder, checkpoints and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder for checkpoints, `metrics.jsonl` and the report.
    pub dir: PathBuf,
    /// Write a checkpoint every this many optimizer steps (and at the end);
    /// 0 writes one only at the end of each method and when stopped.
    pub checkpoint_every: u64,
    /// Keep the optimizer state (AdamW moments and f32 master weights:
    /// three times the student in f32) in both kept checkpoints; `false`:
    /// only the latest has it, the older one keeps the weights.
    pub optimizer_in_every_checkpoint: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/npd"),
            checkpoint_every: 100,
            optimizer_in_every_checkpoint: false,
        }
    }
}

impl Section for OutputConfig {
    const NAME: &'static str = "output";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.that(
            !self.dir.as_os_str().is_empty(),
            "dir",
            "a folder path",
            "\"\"",
        )
    }
}
