//! Identifier types.

use serde::{Deserialize, Serialize};

/// A token id in the model's vocabulary.
pub type TokenId = u32;

/// Version of the student weights that produced a rollout. The trainer's
/// initial weights are version 0; each publication of new weights increments it.
pub type PolicyVersion = u64;

/// Identifies a prompt of the dataset (its position in the input, or a
/// user-given number) across rollouts, ledgers and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PromptId(pub u64);

/// Identifies one training sample (for example one rollout of a prompt) in a
/// pool, a packed row, or a filter decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SampleId(pub u64);

impl std::fmt::Display for PromptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "prompt {}", self.0)
    }
}

impl std::fmt::Display for SampleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sample {}", self.0)
    }
}
