//! The `[rollout]` section: the asynchronous rollout engine.

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, MAX_BATCH, MAX_THREADS, Section};

/// The asynchronous rollout engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Sparse refresh: generators swap to new student weights every this many
    /// optimizer steps.
    pub refresh_every: u64,
    /// Staleness bound, in refreshes: a rollout is not started if it would
    /// be trained on more than this many refreshes after the snapshot that
    /// writes it was replaced, so no trained sample is more than
    /// `max_lag * refresh_every` optimizer steps old (the unit the report's
    /// staleness histogram uses). At least 1.
    pub max_lag: u64,
    /// Finished rollouts buffered ahead of scoring; generators wait when full.
    pub queue_capacity: usize,
    /// Prompts a generator takes per batch.
    pub batch_size: usize,
    /// How many times each kept sample may be trained on.
    pub reuse: usize,
    /// libtorch intra-op threads of the generating thread when generation
    /// runs on a thread of its own (the disaggregated schedule); 0 picks
    /// one thread on CPU.
    pub threads: usize,
    /// Where NPD generates: see [`Schedule`].
    pub schedule: Schedule,
}

/// Where NPD's student snapshot generates, relative to scoring and
/// training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Chosen by the backend: colocated when generation, scoring and
    /// training share one device or one set of cores, disaggregated when
    /// they run apart (inference servers).
    #[default]
    Auto,
    /// Phases in turn on the loop's thread, each with every thread:
    /// generate a pool with the current snapshot, score, filter, pack,
    /// train; refresh every K steps. Nothing to overlap, so nothing is
    /// shared.
    Colocated,
    /// Generation on the rollout engine's own thread, overlapping scoring
    /// and training, with admission control for the staleness bound.
    Disaggregated,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            refresh_every: 50,
            max_lag: 2,
            queue_capacity: 1024,
            batch_size: 64,
            reuse: 1,
            threads: 0,
            schedule: Schedule::Auto,
        }
    }
}

impl Section for RolloutConfig {
    const NAME: &'static str = "rollout";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between("refresh_every", self.refresh_every, 1, 1 << 20)?;
        c.between("max_lag", self.max_lag, 1, 1 << 20)?;
        c.between("queue_capacity", self.queue_capacity, 1, 1 << 20)?;
        c.between("batch_size", self.batch_size, 1, MAX_BATCH)?;
        c.between("reuse", self.reuse, 1, 1024)?;
        c.between("threads", self.threads, 0, MAX_THREADS)
    }
}
