//! What a method run produced, and how a run ends.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use npd_core::Method;
use npd_filter::FilterReport;
use npd_rollout::LedgerCounts;

/// One point of the accuracy curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps taken.
    pub step: u64,
    /// Wall-clock seconds of training so far (evaluation excluded).
    pub wall_s: f64,
    /// Held-out accuracy.
    pub accuracy: f64,
}

/// What a finished method run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Method.
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Accuracy at the end.
    pub accuracy: f64,
    /// Accuracy against wall-clock.
    pub curve: Vec<CurvePoint>,
    /// Wall-clock seconds, evaluation and checkpoints excluded.
    pub wall_s: f64,
    /// Seconds per stage (on the loop's thread; NPD's generation runs
    /// concurrently and its stage is the time spent waiting for rollouts).
    pub stages: BTreeMap<String, f64>,
    /// One-time preparation outside the timed run (SFT's teacher responses).
    pub prep_s: f64,
    /// The preparation was done by an earlier run of the same method and
    /// reused (SFT's greedy teacher responses do not depend on the seed).
    #[serde(default)]
    pub prep_reused: bool,
    /// Tokens trained on (padding excluded), over all steps.
    pub trained_tokens: usize,
    /// Fraction of computed token slots that were not padding.
    pub token_efficiency: f64,
    /// Steps skipped for a non-finite loss.
    pub skipped_steps: u64,
    /// NPD: the filter's account.
    #[serde(default)]
    pub filter: Option<FilterReport>,
    /// NPD: how many optimizer steps old each trained rollout's weights were.
    #[serde(default)]
    pub staleness: BTreeMap<u64, usize>,
    /// NPD: where the snapshot generated (colocated: in turn with
    /// training; disaggregated: on its own thread or server).
    #[serde(default)]
    pub schedule: Option<npd_rollout::Schedule>,
    /// NPD: the prompt ledger.
    #[serde(default)]
    pub ledger: Option<LedgerCounts>,
    /// Steps at which the run was resumed from a checkpoint.
    #[serde(default)]
    pub resumed_at: Vec<u64>,
    /// Weights published to the generator during the timed run (stages
    /// `publish` and `reload`, and a disaggregated NPD's
    /// `generator reload`); 0 for SFT.
    #[serde(default)]
    pub refreshes: u64,
    /// NPD and on-policy: student responses that hit
    /// `sampling.max_new_tokens` (trained on or dropped, as
    /// `sampling.truncated` says).
    #[serde(default)]
    pub truncated: u64,
    /// RL: rewards, groups and sampled evaluations along the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl: Option<RlTrace>,
}

/// What an RL run recorded along the way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RlTrace {
    /// The method whose final weights the run started from (`None`: the
    /// warm start).
    pub start: Option<Method>,
    /// Every step's rewards and groups.
    pub steps: Vec<RlStepPoint>,
    /// The sampled held-out evaluations (pass@k, entropy, lengths), at the
    /// same steps as the accuracy curve.
    pub evals: Vec<RlEvalPoint>,
}

/// One RL step of an [`RlTrace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlStepPoint {
    /// Steps taken, this one included.
    pub step: u64,
    /// Wall-clock seconds of training so far.
    pub wall_s: f64,
    /// What the step sampled and kept.
    #[serde(flatten)]
    pub rl: npd_core::events::RlStep,
}

/// One sampled held-out evaluation of an [`RlTrace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlEvalPoint {
    /// Steps taken.
    pub step: u64,
    /// Wall-clock seconds of training so far.
    pub wall_s: f64,
    /// The scores.
    pub scores: npd_core::sampled::SampledScores,
}

/// How a method run ended.
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// It took every step.
    Finished(Box<Outcome>),
    /// An [`Interrupt`](npd_core::traits::Interrupt) asked it to stop; it
    /// finished its step and wrote a checkpoint when checkpoints are on.
    Stopped {
        /// Method.
        method: Method,
        /// Seed.
        seed: u64,
        /// Steps completed.
        step: u64,
        /// The checkpoint a resumed run continues from.
        checkpoint: Option<PathBuf>,
    },
}

impl RunEnd {
    /// The outcome of a finished run.
    pub fn finished(self) -> Option<Outcome> {
        match self {
            RunEnd::Finished(o) => Some(*o),
            RunEnd::Stopped { .. } => None,
        }
    }
}
