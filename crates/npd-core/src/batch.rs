//! Packed rows: several samples laid side by side in one fixed-capacity row.

use serde::{Deserialize, Serialize};

use crate::ids::{SampleId, TokenId};

/// Segment id of padding positions.
pub const PAD_SEGMENT: u32 = u32::MAX;

/// Where one sample sits in a packed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The sample.
    pub sample_id: SampleId,
    /// First token's index in the row.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
    /// Number of leading prompt tokens.
    pub prompt_len: usize,
}

/// Teacher top-k targets laid out along a packed row: `k` entries per row
/// position (`capacity * k` in all), filled with id 0 and log-prob `-inf` at
/// positions that are not loss targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowTopK {
    /// Entries per position.
    pub k: usize,
    /// Token ids, `capacity * k`.
    pub ids: Vec<TokenId>,
    /// Log-probabilities, `capacity * k`.
    pub logprobs: Vec<f32>,
    /// Log of the mass outside the top k, one per position.
    pub tail_logprob: Vec<f32>,
}

/// Policy-gradient targets laid out along a packed row, one entry per row
/// position (0 at positions that are not loss targets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowPolicy {
    /// Behaviour log-probs of the tokens, `capacity`.
    pub behaviour_logprobs: Vec<f32>,
    /// Advantages of the tokens, `capacity`.
    pub advantages: Vec<f32>,
    /// Reference log-probs of the tokens, `capacity`, when the samples
    /// carried them.
    #[serde(default)]
    pub reference_logprobs: Option<Vec<f32>>,
}

/// One row of `capacity` tokens holding whole samples back to back, then
/// padding. Every per-token array has `capacity` entries (`* k` for top-k)
/// and entry `t` describes token `t`.
///
/// Attention must be causal within a segment and blocked across segments;
/// positions restart at 0 for each segment. Token `t` is a loss target
/// (`loss_mask[t]`) when it is a response token and not the first token of
/// its segment; it is predicted from the output at position `t - 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedRow {
    /// Token ids, padded with the packer's pad id.
    pub tokens: Vec<TokenId>,
    /// Position of each token within its segment (0 for padding).
    pub positions: Vec<u32>,
    /// Index of the token's segment in `segments`, or [`PAD_SEGMENT`].
    pub segment_ids: Vec<u32>,
    /// Whether token `t` is a loss target.
    pub loss_mask: Vec<bool>,
    /// Loss weight of token `t` (0 where `loss_mask` is false).
    pub weights: Vec<f32>,
    /// Teacher top-k targets, when the samples carried them.
    pub topk: Option<RowTopK>,
    /// Policy-gradient targets, when the samples carried them.
    #[serde(default)]
    pub policy: Option<RowPolicy>,
    /// The samples in the row, in order.
    pub segments: Vec<Segment>,
}

impl PackedRow {
    /// Row capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.tokens.len()
    }

    /// Tokens that belong to a sample (not padding).
    pub fn used(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Number of loss targets.
    pub fn targets(&self) -> usize {
        self.loss_mask.iter().filter(|m| **m).count()
    }

    /// Cumulative segment boundaries `[0, len0, len0 + len1, ..., used]`, the
    /// form variable-length attention kernels take.
    pub fn cu_seqlens(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.segments.len() + 1);
        out.push(0);
        for s in &self.segments {
            out.push((s.start + s.len) as u32);
        }
        out
    }

    /// Fraction of the row's tokens that are not padding.
    pub fn fill(&self) -> f64 {
        if self.capacity() == 0 {
            0.0
        } else {
            self.used() as f64 / self.capacity() as f64
        }
    }
}
