//! What a running pipeline reports as it goes: typed events for an
//! [`Observer`] (a metrics file, a progress bar, a dashboard).
//!
//! Every event serialises to one flat JSON object, so an observer that
//! writes `serde_json::to_string(&event)` per line produces a JSONL metrics
//! stream; [`Event::kind`] tells the kinds apart.

use serde::{Deserialize, Serialize};

use crate::method::{Method, by_name};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    /// Method.
    #[serde(with = "by_name")]
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Steps taken, this one included.
    pub step: u64,
    /// Loss averaged over the step's target tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens trained on, padding excluded.
    pub tokens: usize,
    /// The step was skipped for a non-finite loss.
    pub skipped: bool,
    /// Wall-clock seconds of the run so far, evaluation and checkpoints
    /// excluded.
    pub wall_s: f64,
    /// NPD: samples in the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// NPD: the Δ-IFD filter's keep rate so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_rate: Option<f64>,
    /// NPD: prompts whose rollouts were trained on for the first time in
    /// this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_trained: Option<Vec<u64>>,
    /// NPD: prompts closed without training since the previous step
    /// (filtered out, or an empty response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_filtered: Option<Vec<u64>>,
    /// NPD: prompts whose generation failed since the previous step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_failed: Option<Vec<u64>>,
    /// NPD: the dataset record id of each of `prompts_trained` (prompt ids
    /// count visits of the seeded prompt order, so a record visited in two
    /// epochs has two prompt ids and one record id). RL: the dataset ids of
    /// the prompts whose groups the step trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_trained: Option<Vec<u64>>,
    /// NPD: the dataset record id of each of `prompts_filtered`. RL: the
    /// dataset ids of the prompts whose groups were dropped (equal
    /// rewards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_filtered: Option<Vec<u64>>,
    /// NPD: the dataset record id of each of `prompts_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_failed: Option<Vec<u64>>,
    /// RL: the step's rollouts (every group, dropped ones included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl: Option<RlStep>,
}

/// What an RL step sampled and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlStep {
    /// Mean reward of every response sampled for the step.
    pub reward: f64,
    /// Mean response length in tokens.
    pub response_tokens: f64,
    /// Groups trained on.
    pub groups_kept: usize,
    /// Groups dropped because every reward in them was equal.
    pub groups_dropped: usize,
    /// Optimizer steps between the sampling weights and the trained ones.
    pub staleness: u64,
}

/// A held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalEvent {
    /// Method.
    #[serde(with = "by_name")]
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Steps taken.
    pub step: u64,
    /// Wall-clock seconds of the run at the evaluation.
    pub wall_s: f64,
    /// Held-out score (accuracy for the bundled evaluators).
    pub accuracy: f64,
    /// RL: pass@k, entropy and lengths of sampled responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<crate::sampled::SampledScores>,
}

/// New weights handed to the generator (NPD's sparse refresh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshEvent {
    /// Method.
    #[serde(with = "by_name")]
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Steps taken.
    pub step: u64,
    /// Version of the published weights.
    pub version: u64,
}

/// Where the prompts of a run stand, at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEvent {
    /// Method.
    #[serde(with = "by_name")]
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Steps taken.
    pub step: u64,
    /// Prompts started.
    pub total: usize,
    /// Trained on.
    pub trained: usize,
    /// Filtered out.
    pub filtered: usize,
    /// Failed.
    pub failed: usize,
    /// Not finished when the run ended.
    pub open: usize,
}

/// Everything a pipeline reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// An optimizer step.
    Step(StepEvent),
    /// A held-out evaluation.
    Eval(EvalEvent),
    /// A weight refresh of the generator.
    Refresh(RefreshEvent),
    /// The prompt ledger at the end of a run.
    Ledger(LedgerEvent),
}

impl Event {
    /// `"step"`, `"eval"`, `"refresh"` or `"ledger"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Step(_) => "step",
            Event::Eval(_) => "eval",
            Event::Refresh(_) => "refresh",
            Event::Ledger(_) => "ledger",
        }
    }
}

/// Receives a pipeline's events as they happen.
///
/// Any `FnMut(&Event)` closure is an observer:
///
/// ```
/// use npd_core::events::{Event, Observer};
/// let mut steps = 0;
/// let mut count = |e: &Event| if let Event::Step(_) = e { steps += 1 };
/// fn takes(o: &mut dyn Observer) { let _ = o; }
/// takes(&mut count);
/// ```
pub trait Observer {
    /// Called once per event, on the thread that runs the loop.
    fn on_event(&mut self, event: &Event);
}

impl<F: FnMut(&Event)> Observer for F {
    fn on_event(&mut self, event: &Event) {
        self(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_serialises_flat_with_its_kind_and_reads_back() {
        let e = Event::Step(StepEvent {
            method: Method::NearPolicy,
            seed: 1,
            step: 3,
            loss: 0.5,
            lr: 1e-3,
            grad_norm: 2.0,
            tokens: 100,
            skipped: false,
            wall_s: 1.5,
            samples: Some(4),
            keep_rate: None,
            prompts_trained: Some(vec![7, 8]),
            prompts_filtered: Some(vec![]),
            prompts_failed: None,
            records_trained: Some(vec![3, 4]),
            records_filtered: None,
            records_failed: None,
            rl: None,
        });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "step");
        assert_eq!(v["method"], "NPD");
        assert_eq!(v["prompts_trained"], serde_json::json!([7, 8]));
        assert!(v.get("keep_rate").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind(), "step");
    }
}
