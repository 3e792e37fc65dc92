//! What every method of a run shares: the step budget, sampling, the
//! teacher's targets, and NPD's own knobs.

use npd_core::config::{RlConfig, SamplingConfig, TrainConfig, Truncated};
use npd_core::{SamplingParams, TokenId};
use npd_filter::FilterConfig;
use npd_pack::PackConfig;
use npd_rollout::{RolloutConfig, Schedule};

/// Settings of the loops. Backend concerns (threads, devices, the
/// optimizer) belong to the stages, not here.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Optimizer steps.
    pub steps: u64,
    /// Samples per optimizer step.
    pub samples_per_step: usize,
    /// Evaluate every this many steps (and at the start and end).
    pub eval_every: u64,
    /// Student sampling (temperature, top-k/p, max new tokens, stop ids).
    pub sampling: SamplingParams,
    /// NPD and on-policy: what to do with a student response that hit
    /// `max_new_tokens`.
    pub truncated: Truncated,
    /// Teacher top-k entries per position.
    pub topk: usize,
    /// Tokens before a response in the response-alone pass (BOS and the
    /// assistant-turn header).
    pub alone_prefix: Vec<TokenId>,
    /// NPD: refresh the generating snapshot every this many optimizer steps
    /// (K).
    pub refresh_every: u64,
    /// NPD: staleness bound, in refreshes: no rollout is trained on more
    /// than `max_lag` refreshes after the snapshot that wrote it was
    /// replaced. At least 1 (the configuration rejects 0).
    pub max_lag: u64,
    /// NPD: times each kept sample is trained on.
    pub reuse: usize,
    /// NPD: Δ-IFD filter.
    pub filter: FilterConfig,
    /// NPD: packing (row capacity, oversize policy, the streaming packer's
    /// fill threshold and open rows).
    pub pack: PackConfig,
    /// NPD: finished rollouts buffered ahead of scoring.
    pub queue_capacity: usize,
    /// NPD: rollouts scored together (and, colocated, generated together).
    pub pool_size: usize,
    /// NPD: where the snapshot generates; [`Schedule::Auto`] runs the
    /// disaggregated schedule unless a [`Comparison`](crate::Comparison)
    /// resolves it with its backend's placement.
    pub schedule: Schedule,
    /// On-policy: fraction of each step's samples that are teacher-written
    /// responses instead of the student's own (`train.teacher_fraction`;
    /// GKD's λ is `1 - teacher_fraction`).
    pub teacher_fraction: f64,
    /// Padding id.
    pub pad_id: TokenId,
    /// `train.seed`, mixed into every run's prompt order.
    pub order_seed: u64,
    /// The RL stage's settings (the `*+rl` methods).
    pub rl: RlConfig,
}

impl Settings {
    /// The settings the configuration sections describe. The tokens that
    /// come from the tokenizer start empty (padding id 0): set them with
    /// [`Settings::with_tokens`]. Held-out accuracy is measured ten times
    /// along a run (and at its start), often enough to read the time each
    /// method takes to reach a given accuracy.
    pub fn new(
        train: &TrainConfig,
        rollout: &RolloutConfig,
        sampling: &SamplingConfig,
        filter: &FilterConfig,
        pack: &PackConfig,
    ) -> Self {
        Self {
            steps: train.steps,
            samples_per_step: train.rows_per_step,
            eval_every: (train.steps / 10).max(1),
            sampling: SamplingParams {
                temperature: sampling.temperature as f32,
                top_k: (sampling.top_k > 0).then_some(sampling.top_k),
                top_p: sampling.top_p as f32,
                max_new_tokens: sampling.max_new_tokens,
                stop_ids: Vec::new(),
                seed: sampling.seed,
            },
            truncated: sampling.truncated,
            topk: train.top_k,
            alone_prefix: Vec::new(),
            refresh_every: rollout.refresh_every,
            max_lag: rollout.max_lag,
            reuse: rollout.reuse,
            filter: filter.clone(),
            pack: pack.clone(),
            queue_capacity: rollout.queue_capacity,
            pool_size: rollout.batch_size,
            schedule: rollout.schedule,
            teacher_fraction: train.teacher_fraction,
            pad_id: 0,
            order_seed: train.seed,
            rl: RlConfig::default(),
        }
    }

    /// The RL stage's settings (`[rl]`; its defaults unless set).
    pub fn with_rl(mut self, rl: &RlConfig) -> Self {
        self.rl = rl.clone();
        self
    }

    /// The settings an RL method runs with: `rl.steps` steps, evaluated
    /// every `rl.eval_every`.
    pub fn for_rl(&self) -> Self {
        Self {
            steps: self.rl.steps,
            eval_every: self.rl.eval_every,
            ..self.clone()
        }
    }

    /// The tokenizer's part: the ids that end a response, the tokens before
    /// a response in the response-alone pass (BOS and the assistant-turn
    /// header), and the padding id.
    pub fn with_tokens(
        mut self,
        stop_ids: Vec<TokenId>,
        alone_prefix: Vec<TokenId>,
        pad_id: TokenId,
    ) -> Self {
        self.sampling.stop_ids = stop_ids;
        self.alone_prefix = alone_prefix;
        self.pad_id = pad_id;
        self
    }

    /// On-policy: how many of a step's samples are teacher-written.
    pub fn teacher_written_per_step(&self) -> usize {
        ((self.teacher_fraction * self.samples_per_step as f64).round() as usize)
            .min(self.samples_per_step)
    }

    /// The order in which a run with `seed` visits `n` prompts (repeated
    /// as the budget needs): a permutation seeded by the run's seed mixed
    /// with `train.seed`.
    pub fn order(&self, n: usize, seed: u64) -> Vec<usize> {
        npd_core::shuffle::seeded_permutation(n, seed ^ self.order_seed)
    }

    /// Sampling for a run with `seed`: the configured sampling, its seed
    /// (`sampling.seed`) mixed with the run's.
    pub fn sampling_for(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            seed: seed ^ self.sampling.seed,
            ..self.sampling.clone()
        }
    }

    /// The schedule NPD runs: [`Schedule::Auto`] not resolved by a
    /// backend runs the disaggregated one.
    pub fn running_schedule(&self) -> Schedule {
        match self.schedule {
            Schedule::Colocated => Schedule::Colocated,
            Schedule::Disaggregated | Schedule::Auto => Schedule::Disaggregated,
        }
    }

    /// The staleness bound in optimizer steps: `max_lag` refreshes of
    /// `refresh_every` steps each.
    pub fn staleness_bound(&self) -> u64 {
        self.max_lag * self.refresh_every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_run_configuration() {
        let train = TrainConfig {
            steps: 120,
            rows_per_step: 48,
            top_k: 5,
            ..TrainConfig::default()
        };
        let rollout = RolloutConfig {
            refresh_every: 7,
            max_lag: 3,
            reuse: 2,
            batch_size: 32,
            ..RolloutConfig::default()
        };
        let mut sampling = SamplingConfig {
            top_k: 0,
            temperature: 0.7,
            ..SamplingConfig::default()
        };
        let filter = FilterConfig {
            upper_percentile: 0.8,
            ..FilterConfig::default()
        };
        let pack = PackConfig {
            capacity: 256,
            ..PackConfig::default()
        };
        let s = Settings::new(&train, &rollout, &sampling, &filter, &pack).with_tokens(
            vec![2],
            vec![1, 9],
            0,
        );
        assert_eq!((s.steps, s.samples_per_step, s.eval_every), (120, 48, 12));
        assert_eq!((s.topk, s.refresh_every, s.max_lag, s.reuse), (5, 7, 3, 2));
        assert_eq!((s.pool_size, s.pack.capacity), (32, 256));
        assert_eq!(s.filter.upper_percentile, 0.8);
        assert_eq!(s.sampling.top_k, None);
        assert_eq!(s.sampling.temperature, 0.7);
        assert_eq!(s.sampling.stop_ids, vec![2]);
        assert_eq!(s.alone_prefix, vec![1, 9]);
        assert_eq!(s.staleness_bound(), 21);
        sampling.top_k = 20;
        let s = Settings::new(&train, &rollout, &sampling, &filter, &pack);
        assert_eq!(s.sampling.top_k, Some(20));
    }
}
