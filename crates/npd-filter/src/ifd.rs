//! Instruction-following difficulty (IFD) of one response under one model.

use crate::config::IfdConvention;
use npd_core::DropReason;

/// Mean negative log-likelihood of a response, given the prompt and alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IfdTerms {
    /// `s(y|x)`: mean token cross-entropy of the response given the prompt.
    pub conditioned: f64,
    /// `s(y)`: mean token cross-entropy of the response alone.
    pub alone: f64,
}

impl IfdTerms {
    /// Computes both means from per-token log-probs.
    ///
    /// Drops the sample when the response is empty, the two arrays differ in
    /// length, or a mean is not finite.
    pub fn from_logprobs(conditioned: &[f32], alone: &[f32]) -> Result<Self, DropReason> {
        if conditioned.is_empty() {
            return Err(DropReason::EmptyResponse);
        }
        if conditioned.len() != alone.len() {
            return Err(DropReason::LengthMismatch);
        }
        let terms = IfdTerms {
            conditioned: mean_nll(conditioned),
            alone: mean_nll(alone),
        };
        if terms.conditioned.is_finite() && terms.alone.is_finite() {
            Ok(terms)
        } else {
            Err(DropReason::NonFiniteScore)
        }
    }
}

/// IFD in the given convention:
/// - [`IfdConvention::LossRatio`]: `s(y|x) / s(y)`;
/// - [`IfdConvention::PerplexityRatio`]: `exp(s(y|x) - s(y))`.
///
/// A zero `s(y)` makes the loss ratio non-finite, which callers drop.
pub fn ifd(terms: IfdTerms, convention: IfdConvention) -> f64 {
    match convention {
        IfdConvention::LossRatio => terms.conditioned / terms.alone,
        IfdConvention::PerplexityRatio => (terms.conditioned - terms.alone).exp(),
    }
}

/// Mean of `-logprobs`, accumulated in f64 over independent lanes so the
/// loop vectorises. Non-finite inputs make the result non-finite.
pub fn mean_nll(logprobs: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let chunks = logprobs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for &x in rest {
        sum += x as f64;
    }
    -sum / logprobs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_matches_direct_sum() {
        let lp: Vec<f32> = (0..37).map(|i| -(i as f32) * 0.1).collect();
        let direct = -lp.iter().map(|&x| x as f64).sum::<f64>() / 37.0;
        assert!((mean_nll(&lp) - direct).abs() < 1e-12);
    }

    #[test]
    fn conventions_follow_their_definitions() {
        let t = IfdTerms::from_logprobs(&[-1.0, -2.0], &[-2.0, -4.0]).unwrap();
        assert_eq!(t.conditioned, 1.5);
        assert_eq!(t.alone, 3.0);
        assert_eq!(ifd(t, IfdConvention::LossRatio), 0.5);
        assert!((ifd(t, IfdConvention::PerplexityRatio) - (-1.5f64).exp()).abs() < 1e-15);
    }

    #[test]
    fn conventions_can_rank_samples_differently() {
        // a: 0.2 / 0.4 = 0.5, ppl ratio e^-0.2; b: 2 / 3 = 0.67, ppl ratio e^-1.
        let a = IfdTerms {
            conditioned: 0.2,
            alone: 0.4,
        };
        let b = IfdTerms {
            conditioned: 2.0,
            alone: 3.0,
        };
        assert!(ifd(a, IfdConvention::LossRatio) < ifd(b, IfdConvention::LossRatio));
        assert!(ifd(a, IfdConvention::PerplexityRatio) > ifd(b, IfdConvention::PerplexityRatio));
    }

    #[test]
    fn malformed_inputs_have_reasons() {
        assert_eq!(
            IfdTerms::from_logprobs(&[], &[]),
            Err(DropReason::EmptyResponse)
        );
        assert_eq!(
            IfdTerms::from_logprobs(&[-1.0], &[]),
            Err(DropReason::LengthMismatch)
        );
        assert_eq!(
            IfdTerms::from_logprobs(&[-1.0, f32::NAN], &[-1.0, -1.0]),
            Err(DropReason::NonFiniteScore)
        );
        assert_eq!(
            IfdTerms::from_logprobs(&[-1.0], &[f32::NEG_INFINITY]),
            Err(DropReason::NonFiniteScore)
        );
    }
}
