//! The seams between pipeline stages.
//!
//! ```text
//! prompts ─▶ Generator ─(Rollout)─▶ Scorer ─▶ SampleFilter ─▶ Packer ─(PackedRow)─▶ Learner
//!               ▲                                                                  │
//!               └──────────────── weights, every K optimizer steps ───────────────┘
//! ```
//!
//! Around the loop: an [`Evaluator`] measures the student on held-out
//! prompts, [`Persist`] saves and restores a stage's state for resume, an
//! [`Interrupt`] asks the loop to stop, and an
//! [`Observer`](crate::events::Observer) receives its events.
//!
//! Model-backed implementations live in `npd-train`; the pure-Rust ones in
//! `npd-filter` and `npd-pack`; the loops that drive them in
//! `npd-pipeline`. Each trait is small so that a test double, a remote
//! backend or another model family can stand in for any stage.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::batch::PackedRow;
use crate::error::Result;
use crate::ids::{PolicyVersion, SampleId, TokenId};
use crate::sample::{Prompt, ResponseLogProbs, Rollout, SamplingParams, TopKTargets, TrainSample};
use crate::select::Verdict;

/// Writes responses to prompts with a snapshot of the student.
pub trait Generator {
    /// Weights a [`Learner`] publishes and this generator can load.
    type Weights;

    /// Version of the weights now loaded.
    fn version(&self) -> PolicyVersion;

    /// Swaps in new weights. Called between `generate` calls only, so a
    /// rollout is always written by one version.
    fn load(&mut self, weights: Self::Weights, version: PolicyVersion) -> Result<()>;

    /// Samples one response per prompt, in prompt order, each tagged with
    /// [`Generator::version`] and carrying its sampled-token log-probs.
    fn generate(&mut self, prompts: &[Prompt], params: &SamplingParams) -> Result<Vec<Rollout>>;
}

/// One sequence for a [`Scorer`] to score.
#[derive(Debug, Clone, Copy)]
pub struct ScoreRequest<'a> {
    /// `prompt ++ response`.
    pub tokens: &'a [TokenId],
    /// Number of leading prompt tokens.
    pub prompt_len: usize,
}

/// What a [`Scorer`] should compute besides the conditioned log-probs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreOptions {
    /// Also return the top-k distribution at each response position.
    pub topk: Option<usize>,
    /// Also score each response alone, after these tokens (BOS and the
    /// assistant-turn header), for the IFD denominator.
    pub alone_prefix: Option<Vec<TokenId>>,
}

/// A [`Scorer`]'s output for one sequence. Arrays cover response tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceScores {
    /// Conditioned log-probs, and response-alone log-probs when
    /// [`ScoreOptions::alone_prefix`] was set (else `alone` is empty).
    pub logprobs: ResponseLogProbs,
    /// Top-k targets when [`ScoreOptions::topk`] was set.
    pub topk: Option<TopKTargets>,
}

/// Scores sequences under a fixed model (the teacher, or a student snapshot).
pub trait Scorer {
    /// Scores each request; the output is in request order.
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>>;
}

/// The IFD terms of one sample under the models a filter compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterInput {
    /// The sample.
    pub id: SampleId,
    /// Teacher log-probs of the response.
    pub teacher: ResponseLogProbs,
    /// Student log-probs of the response (current student, or the snapshot
    /// that wrote it, as configured).
    pub student: ResponseLogProbs,
    /// Log-probs under the generating snapshot, for the staleness form.
    pub snapshot: Option<ResponseLogProbs>,
}

/// A filter's decision on one sample, with the score it was based on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The sample.
    pub id: SampleId,
    /// The score (`None` when it could not be computed).
    pub score: Option<f64>,
    /// Keep or drop, with the reason.
    pub verdict: Verdict,
}

/// Decides which samples of a pool to train on.
pub trait SampleFilter {
    /// One decision per input, in input order.
    fn select(&mut self, pool: &[FilterInput]) -> Result<Vec<Decision>>;
}

/// Lays samples into fixed-capacity rows as they arrive.
pub trait Packer {
    /// Adds a sample; returns the rows that became ready.
    fn push(&mut self, sample: TrainSample) -> Result<Vec<PackedRow>>;

    /// Returns every row still open, however full.
    fn flush(&mut self) -> Vec<PackedRow>;
}

/// Statistics of one optimizer step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Loss averaged over the step's target tokens.
    pub loss: f64,
    /// Target tokens in the step.
    pub target_tokens: usize,
    /// Tokens processed, padding excluded.
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Whether the step was skipped for a non-finite loss.
    pub skipped: bool,
}

/// Trains the student on packed rows and publishes its weights.
pub trait Learner {
    /// Weights handed to a [`Generator`].
    type Weights;

    /// One optimizer step over the rows (one accumulation window).
    fn step(&mut self, rows: &[PackedRow]) -> Result<StepStats>;

    /// Number of optimizer steps taken; also the version of
    /// [`Learner::publish`]'s weights.
    fn version(&self) -> PolicyVersion;

    /// A copy of the current weights for generators.
    fn publish(&self) -> Result<Self::Weights>;
}

/// Measures a learner on held-out prompts (higher is better), for the
/// accuracy curves of a run. Generic over the learner so that an
/// implementation can read its weights in place, without a copy.
pub trait Evaluator<L: ?Sized> {
    /// The held-out score of the learner's current weights.
    fn evaluate(&mut self, learner: &L) -> Result<f64>;

    /// pass@k, entropy and lengths of responses sampled as `eval` says,
    /// for the RL stage's report; `None` (the default) when the evaluator
    /// has no sampled evaluation.
    fn sampled(
        &mut self,
        learner: &L,
        eval: &crate::sampled::SampledEval,
    ) -> Result<Option<crate::sampled::SampledScores>> {
        let _ = (learner, eval);
        Ok(None)
    }
}

/// A stage whose state a checkpoint carries: a learner's weights and
/// optimizer moments, a generator's sampling state, and so on.
pub trait Persist {
    /// Writes the state into `dir`, an existing empty folder that the
    /// caller moves into place atomically once every stage wrote its part.
    fn save_state(&self, dir: &Path) -> Result<()>;

    /// Restores the state [`Persist::save_state`] wrote into `dir`; a
    /// mismatch (another architecture, a missing file) is an error naming
    /// the file and the tensor or field.
    fn restore_state(&mut self, dir: &Path) -> Result<()>;

    /// Files of a checkpoint folder that only a resume from it reads (for
    /// a trainer: the optimizer state), not a use of its weights; a
    /// checkpointer may drop them from checkpoints older than the latest.
    fn resume_only_files(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Asks a running loop to stop. The loop polls it after every optimizer
/// step; a stop finishes the step, writes a checkpoint when checkpoints are
/// on, and ends the run as stopped (an outcome, not an error).
pub trait Interrupt: Sync {
    /// Whether a stop was asked for.
    fn requested(&self) -> bool;
}

impl Interrupt for AtomicBool {
    fn requested(&self) -> bool {
        self.load(Ordering::SeqCst)
    }
}

impl<I: Interrupt + Send + ?Sized> Interrupt for Arc<I> {
    fn requested(&self) -> bool {
        (**self).requested()
    }
}

/// An [`Interrupt`] that never asks to stop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Never;

impl Interrupt for Never {
    fn requested(&self) -> bool {
        false
    }
}
