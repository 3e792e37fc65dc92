//! Small deterministic stand-ins for every stage, so the loops run end to
//! end without model code.

#![allow(dead_code)]

use std::path::Path;

use npd_core::traits::{
    Evaluator, Generator, Learner, Persist, ScoreOptions, ScoreRequest, Scorer, SequenceScores,
    StepStats,
};
use npd_core::{
    Error, FinishReason, PackedRow, PolicyVersion, Prompt, PromptId, ResponseLogProbs, Result,
    Rollout, SamplingParams, TopKTargets,
};

/// A learner whose "weights" are a running hash of everything it trained
/// on, and that logs the sample ids of each step.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HashLearner {
    pub steps: u64,
    pub hash: u64,
    /// Sample ids per step taken by this instance.
    pub log: Vec<Vec<u64>>,
    /// Rows per step taken by this instance.
    pub rows: Vec<usize>,
    /// Calls to `step` (1-based) that report a non-finite loss and change
    /// nothing.
    pub skip: Vec<usize>,
    pub calls: usize,
    /// Per step, (sample id, advantage of its last token) of rows that
    /// carry policy targets.
    pub advantages: Vec<Vec<(u64, f32)>>,
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

impl Learner for HashLearner {
    type Weights = (u64, u64);

    fn step(&mut self, rows: &[PackedRow]) -> Result<StepStats> {
        self.calls += 1;
        if self.skip.contains(&self.calls) {
            return Ok(StepStats {
                loss: f64::NAN,
                skipped: true,
                ..StepStats::default()
            });
        }
        let mut ids = Vec::new();
        let mut advantages = Vec::new();
        for row in rows {
            for seg in &row.segments {
                ids.push(seg.sample_id.0);
                if let Some(p) = &row.policy {
                    advantages.push((seg.sample_id.0, p.advantages[seg.start + seg.len - 1]));
                }
            }
            for &t in &row.tokens {
                self.hash = mix(self.hash, u64::from(t));
            }
        }
        self.steps += 1;
        self.log.push(ids);
        if !advantages.is_empty() {
            self.advantages.push(advantages);
        }
        self.rows.push(rows.len());
        Ok(StepStats {
            loss: 1.0 / self.steps as f64,
            target_tokens: rows.iter().map(PackedRow::targets).sum(),
            tokens: rows.iter().map(PackedRow::used).sum(),
            grad_norm: 1.0,
            lr: 1e-3,
            skipped: false,
        })
    }

    fn version(&self) -> PolicyVersion {
        self.steps
    }

    fn publish(&self) -> Result<(u64, u64)> {
        Ok((self.steps, self.hash))
    }
}

impl Persist for HashLearner {
    fn save_state(&self, dir: &Path) -> Result<()> {
        let text = format!("{} {}", self.steps, self.hash);
        npd_core::fs::write_atomic(&dir.join("learner.txt"), text.as_bytes())
    }

    fn restore_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("learner.txt");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut it = text.split(' ').map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(s)), Some(Ok(h))) => {
                self.steps = s;
                self.hash = h;
                Ok(())
            }
            _ => Err(Error::invalid(path.display().to_string(), "malformed")),
        }
    }
}

/// Writes 1 to 4 tokens per prompt, depending on the prompt, the seed and
/// the weights it holds; ends with EOS (2), unless `max_new_tokens` cuts
/// the response first (finish `Length`).
#[derive(Debug, Default)]
pub struct EchoGenerator {
    pub version: PolicyVersion,
    pub weights_hash: u64,
    /// Versions it was loaded with, in order.
    pub loads: Vec<PolicyVersion>,
    /// Writes NaN log-probs (a broken student).
    pub nan: bool,
    /// Prompts answered so far.
    pub answered: usize,
    /// Refuses every batch with this invalid-input error (settings the
    /// generator cannot sample with).
    pub refuse: Option<&'static str>,
}

impl Generator for EchoGenerator {
    type Weights = (u64, u64);

    fn version(&self) -> PolicyVersion {
        self.version
    }

    fn load(&mut self, (steps, hash): (u64, u64), version: PolicyVersion) -> Result<()> {
        assert_eq!(steps, version, "weights of another version");
        self.version = version;
        self.weights_hash = hash;
        self.loads.push(version);
        Ok(())
    }

    fn generate(&mut self, prompts: &[Prompt], params: &SamplingParams) -> Result<Vec<Rollout>> {
        if let Some(why) = self.refuse {
            return Err(npd_core::Error::invalid("sampling.temperature", why));
        }
        self.answered += prompts.len();
        Ok(prompts
            .iter()
            .map(|p| {
                let h = mix(mix(params.seed, p.id.0), self.weights_hash);
                let n = 1 + (h % 4) as usize;
                let mut response: Vec<u32> =
                    (0..n - 1).map(|i| 3 + ((h >> i) % 5) as u32).collect();
                response.push(2);
                let (n, finish) = if n > params.max_new_tokens {
                    response.truncate(params.max_new_tokens);
                    (params.max_new_tokens, FinishReason::Length)
                } else {
                    (n, FinishReason::Stop)
                };
                Rollout {
                    prompt_id: p.id,
                    prompt: p.tokens.clone(),
                    response_logprobs: vec![if self.nan { f32::NAN } else { -0.5 }; n],
                    response_alone_logprobs: vec![-1.0 - (h % 7) as f32 / 10.0; n],
                    response,
                    policy_version: self.version,
                    finish,
                }
            })
            .collect())
    }
}

/// A teacher with fixed log-probs and a top-2 distribution per position.
#[derive(Debug, Default)]
pub struct FixedTeacher {
    pub calls: usize,
}

impl Scorer for FixedTeacher {
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        self.calls += 1;
        Ok(requests
            .iter()
            .map(|r| {
                let n = r.tokens.len() - r.prompt_len;
                let alone = if options.alone_prefix.is_some() {
                    r.tokens[r.prompt_len..]
                        .iter()
                        .map(|&t| -1.0 - t as f32 / 20.0)
                        .collect()
                } else {
                    Vec::new()
                };
                SequenceScores {
                    logprobs: ResponseLogProbs {
                        conditioned: vec![-0.3; n],
                        alone,
                    },
                    topk: options.topk.map(|k| TopKTargets {
                        k,
                        ids: (0..n * k).map(|i| (i % 7) as u32).collect(),
                        logprobs: vec![-1.0; n * k],
                        tail_logprob: vec![-2.0; n],
                    }),
                }
            })
            .collect())
    }
}

/// Scores a learner by its step count.
#[derive(Debug, Default)]
pub struct StepsEval;

impl Evaluator<HashLearner> for StepsEval {
    fn evaluate(&mut self, learner: &HashLearner) -> Result<f64> {
        Ok(learner.steps as f64 / 1000.0)
    }

    /// pass@k of k / 100 plus the steps, so that points differ by k and
    /// step.
    fn sampled(
        &mut self,
        learner: &HashLearner,
        eval: &npd_core::sampled::SampledEval,
    ) -> Result<Option<npd_core::sampled::SampledScores>> {
        Ok(Some(npd_core::sampled::SampledScores {
            prompts: eval.prompts,
            samples: eval.samples,
            pass_at: (eval.ks.iter())
                .map(|&k| (k, k as f64 / 100.0 + learner.steps as f64 / 1000.0))
                .collect(),
            ..Default::default()
        }))
    }
}

/// Reward 1 for an odd response length: varies within a group, since
/// each member samples with its own seed.
pub fn odd_length(r: &npd_core::Rollout) -> npd_core::reward::Reward {
    npd_core::reward::Reward {
        value: (r.response.len() % 2) as f64,
        reason: String::new(),
    }
}

/// `n` prompts of 2 to 5 tokens.
pub fn prompts(n: u64) -> Vec<Prompt> {
    (0..n)
        .map(|i| Prompt {
            id: PromptId(i),
            tokens: (0..2 + i % 4).map(|j| 1 + ((i + j) % 9) as u32).collect(),
        })
        .collect()
}
