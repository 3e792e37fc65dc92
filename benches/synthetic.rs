//! Seeded synthetic workloads for benchmarks: long-tailed sequence lengths
//! and log-prob pools.

use npd_core::{SampleId, TokenId, TrainSample};
use npd_filter::LogProbColumns;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};

/// `n` lengths from a log-normal distribution with the given mean and shape
/// `sigma`, rounded and clamped to `1..=max`: the long tail of response
/// lengths a sampling student produces.
pub fn lognormal_lengths(n: usize, mean: f64, sigma: f64, max: usize, seed: u64) -> Vec<usize> {
    let mu = mean.ln() - sigma * sigma / 2.0;
    let dist = LogNormal::new(mu, sigma).expect("finite mean > 0 and sigma >= 0");
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (dist.sample(&mut rng).round() as usize).clamp(1, max))
        .collect()
}

/// One training sample per length, with token ids spread over
/// `3..3 + vocab` and the first quarter of each as prompt (at least one
/// token of prompt and one of response where the length allows).
pub fn train_samples(lengths: &[usize], vocab: usize) -> Vec<TrainSample> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| TrainSample {
            id: SampleId(i as u64),
            tokens: (0..len)
                .map(|j| ((i * 31 + j * 7) % vocab + 3) as TokenId)
                .collect(),
            prompt_len: (len / 4).max(1).min(len.saturating_sub(1)),
            weights: None,
            topk: None,
            policy: None,
        })
        .collect()
}

/// A pool of `n` samples of `len` response tokens each, with random
/// log-probs in (-8, 0) for teacher and student, conditioned and alone.
pub fn logprob_pool(n: usize, len: usize, seed: u64) -> LogProbColumns {
    let mut rng = StdRng::seed_from_u64(seed);
    let total = n * len;
    let mut column = || -> Vec<f32> {
        (0..total)
            .map(|_| -8.0 * rng.random::<f32>() - 1e-3)
            .collect()
    };
    let mut pool = LogProbColumns::new(false);
    pool.teacher = [column(), column()];
    pool.student = [column(), column()];
    pool.ids = (0..n as u64).map(SampleId).collect();
    pool.offsets = (0..=n).map(|i| i * len).collect();
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_have_the_requested_mean() {
        let l = lognormal_lengths(200_000, 300.0, 1.0, 100_000, 1);
        let mean = l.iter().sum::<usize>() as f64 / l.len() as f64;
        assert!((mean - 300.0).abs() < 6.0, "{mean}");
    }

    #[test]
    fn pool_is_well_formed() {
        let p = logprob_pool(10, 7, 0);
        p.validate().unwrap();
        assert_eq!(p.bytes(), 10 * 7 * 4 * 4);
    }
}
