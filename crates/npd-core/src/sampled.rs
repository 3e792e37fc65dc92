//! Held-out scores of sampled responses: pass@k, the policy's entropy and
//! its response lengths, as the RL stage reports them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SamplingParams;

/// What a sampled held-out evaluation draws.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledEval {
    /// Responses per prompt (n of the pass@k estimator; at least the
    /// largest k).
    pub samples: usize,
    /// Held-out prompts evaluated (the first ones with an answer).
    pub prompts: usize,
    /// The k of pass@k.
    pub ks: Vec<usize>,
    /// How responses are sampled; its seed is mixed with the sample's index.
    pub sampling: SamplingParams,
}

/// Scores of `samples` responses to each of `prompts` held-out prompts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SampledScores {
    /// Prompts evaluated.
    pub prompts: usize,
    /// Responses per prompt.
    pub samples: usize,
    /// pass@k by k: the chance that at least one of k responses is right,
    /// by the unbiased estimator over the `samples` drawn ([`pass_at_k`]).
    pub pass_at: BTreeMap<usize, f64>,
    /// Mean negative log-probability (temperature 1) of the sampled
    /// tokens, in nats per token: an unbiased estimate of the policy's
    /// per-token entropy when sampled at temperature 1.
    pub entropy: f64,
    /// Mean response length in tokens.
    pub response_tokens: f64,
    /// Share of responses cut by the length limit.
    pub truncated: f64,
    /// Share of prompts whose responses give more than one distinct final
    /// answer (no answer counts as one).
    pub diverse: f64,
}

/// The unbiased pass@k estimate of one prompt from `n` samples of which
/// `correct` are right: `1 - C(n - c, k) / C(n, k)` (Chen et al., 2021).
/// With `k > n` it is the estimate at `k = n`.
pub fn pass_at_k(n: usize, correct: usize, k: usize) -> f64 {
    let k = k.min(n);
    if k == 0 || n == 0 {
        return 0.0;
    }
    let correct = correct.min(n);
    if n - correct < k {
        return 1.0;
    }
    // C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i).
    let miss: f64 = ((n - correct + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - miss
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binomial(n: u64, k: u64) -> f64 {
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    #[test]
    fn pass_at_k_matches_the_binomial_form() {
        for n in 1..=16usize {
            for c in 0..=n {
                for k in 1..=n {
                    let direct = if n - c < k {
                        1.0
                    } else {
                        1.0 - binomial((n - c) as u64, k as u64) / binomial(n as u64, k as u64)
                    };
                    let got = pass_at_k(n, c, k);
                    assert!(
                        (got - direct).abs() < 1e-12,
                        "n {n} c {c} k {k}: {got} {direct}"
                    );
                }
            }
        }
        // pass@1 is the share right; pass@n is whether any is.
        assert!((pass_at_k(16, 4, 1) - 0.25).abs() < 1e-12);
        assert_eq!(pass_at_k(16, 1, 16), 1.0);
        assert_eq!(pass_at_k(16, 0, 16), 0.0);
        assert_eq!(pass_at_k(4, 1, 16), 1.0);
    }
}
