//! GRPO's group arithmetic: advantages from the rewards of a group of
//! responses to one prompt, and which groups carry no signal.
//!
//! A group of `G` responses to one prompt gets advantages `r_i - mean(r)`
//! (they sum to zero); standard GRPO then divides by the group's standard
//! deviation, Dr. GRPO does not (the division weights prompts that are
//! almost always right or almost always wrong up, a difficulty bias). A
//! group whose rewards are all equal has zero advantages everywhere and is
//! dropped and counted (DAPO's dynamic sampling) instead of diluting the
//! step.

use npd_core::reward::Reward;
use npd_core::traits::{Generator, Learner, ScoreOptions, ScoreRequest, Scorer, StepStats};
use npd_core::{PolicyTargets, Prompt, Rollout, SampleId, SamplingParams, TrainSample};
use npd_pack::{PackOptions, pack_pool};

/// How a group's centred rewards are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdvantageScale {
    /// Divide by the group's standard deviation (GRPO).
    #[default]
    GroupStd,
    /// Centre only (Dr. GRPO).
    None,
}

/// Added to the standard deviation before dividing by it.
const STD_EPS: f64 = 1e-6;

/// The advantages of one group's rewards, in order; `None` when every
/// reward is equal (the group carries no signal and is dropped) or the
/// group has fewer than two members.
pub fn group_advantages(rewards: &[f64], scale: AdvantageScale) -> Option<Vec<f64>> {
    if rewards.len() < 2 || rewards.iter().any(|r| !r.is_finite()) {
        return None;
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    if rewards.iter().all(|r| (r - mean).abs() <= 1e-12) {
        return None;
    }
    let centred = rewards.iter().map(|r| r - mean);
    Some(match scale {
        AdvantageScale::None => centred.collect(),
        AdvantageScale::GroupStd => {
            let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
            let std = var.sqrt() + STD_EPS;
            centred.map(|a| a / std).collect()
        }
    })
}

/// Groups kept and dropped from a batch of groups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupBatch {
    /// Per kept group: its index in the input and its advantages.
    pub kept: Vec<(usize, Vec<f64>)>,
    /// Groups dropped because every reward was equal.
    pub dropped_equal: usize,
}

/// The advantages of every group, the equal-reward groups dropped and
/// counted.
pub fn batch_advantages(groups: &[Vec<f64>], scale: AdvantageScale) -> GroupBatch {
    let mut batch = GroupBatch::default();
    for (i, g) in groups.iter().enumerate() {
        match group_advantages(g, scale) {
            Some(a) => batch.kept.push((i, a)),
            None => batch.dropped_equal += 1,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_sum_to_zero_and_scale_as_specified() {
        let rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let centred = group_advantages(&rewards, AdvantageScale::None).unwrap();
        assert!(centred.iter().sum::<f64>().abs() < 1e-12);
        assert!((centred[0] - 0.625).abs() < 1e-12 && (centred[1] + 0.375).abs() < 1e-12);
        let scaled = group_advantages(&rewards, AdvantageScale::GroupStd).unwrap();
        assert!(scaled.iter().sum::<f64>().abs() < 1e-9);
        // Unit variance (up to the epsilon).
        let var = scaled.iter().map(|a| a * a).sum::<f64>() / rewards.len() as f64;
        assert!((var - 1.0).abs() < 1e-4, "{var}");
        let std = (0.625f64 * 0.375).sqrt();
        assert!((scaled[0] - 0.625 / (std + STD_EPS)).abs() < 1e-12);
    }

    #[test]
    fn a_group_of_equal_rewards_is_dropped_and_counted() {
        let groups = vec![
            vec![1.0; 4],
            vec![0.0, 1.0, 0.0, 0.0],
            vec![0.0; 4],
            vec![0.5],
        ];
        let b = batch_advantages(&groups, AdvantageScale::GroupStd);
        assert_eq!(b.dropped_equal, 3);
        assert_eq!(b.kept.len(), 1);
        assert_eq!(b.kept[0].0, 1);
        assert_eq!(
            group_advantages(&[1.0, f64::NAN], AdvantageScale::None),
            None
        );
    }
}

/// The settings of a GRPO run.
#[derive(Debug, Clone)]
pub struct GrpoSettings {
    /// Responses per prompt (G).
    pub group_size: usize,
    /// Prompts per optimizer step.
    pub prompts_per_step: usize,
    /// Sparse refresh: the generator gets the learner's weights every this
    /// many optimizer steps (1 is strictly on-policy).
    pub refresh_every: u64,
    /// How advantages are scaled.
    pub scale: AdvantageScale,
    /// Sampling; its seed is mixed with the run's seed, the step and the
    /// group member, so that the G responses to a prompt differ on every
    /// backend that honours seeds.
    pub sampling: SamplingParams,
    /// Packing of the step's samples.
    pub pack: PackOptions,
    /// More prompt batches drawn for a step whose groups all had equal
    /// rewards, before the step is skipped.
    pub max_draws: usize,
    /// Seed of the prompt order and of the samplers.
    pub seed: u64,
}

/// What one GRPO step did.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoStep {
    /// Optimizer steps completed after this one.
    pub step: u64,
    /// Mean reward of every response generated for the step.
    pub mean_reward: f64,
    /// Groups trained on.
    pub groups_kept: usize,
    /// Groups dropped because their rewards were all equal.
    pub groups_dropped: usize,
    /// Optimizer steps between the weights that sampled the step's
    /// responses and the weights they train.
    pub staleness: u64,
    /// Mean response length in tokens.
    pub mean_response_tokens: f64,
    /// The learner's statistics; `None` when every draw's groups were
    /// dropped and no step was taken.
    pub stats: Option<StepStats>,
}

/// The reward of a rollout (a verifier over its decoded response).
pub type RewardFn<'a> = dyn Fn(&Rollout) -> Reward + 'a;

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Runs `steps` GRPO steps: each draws `prompts_per_step` prompts (in a
/// seeded order, epoch after epoch), samples `group_size` responses to
/// each with the generator's weights (refreshed every `refresh_every`
/// steps), scores them with `reward`, turns the groups into advantages
/// (equal-reward groups dropped and counted), and trains the learner on
/// the clipped surrogate against the sampling snapshot's log-probs. With a
/// `reference` scorer (the RL stage's starting weights), every sample also
/// carries its tokens' reference log-probs, for the learner's KL penalty.
#[allow(clippy::too_many_arguments)]
pub fn run_grpo<L, G>(
    learner: &mut L,
    generator: &mut G,
    mut reference: Option<&mut dyn Scorer>,
    prompts: &[Prompt],
    reward: &RewardFn<'_>,
    s: &GrpoSettings,
    steps: u64,
    observe: &mut dyn FnMut(&GrpoStep),
) -> npd_core::Result<Vec<GrpoStep>>
where
    L: Learner<Weights = G::Weights>,
    G: Generator,
{
    if prompts.is_empty() || s.group_size < 2 || s.prompts_per_step == 0 {
        return Err(npd_core::Error::invalid(
            "GRPO settings",
            format!(
                "{} prompts, groups of {}, {} prompts per step: expected prompts, groups of at \
                 least 2 and at least one prompt per step",
                prompts.len(),
                s.group_size,
                s.prompts_per_step
            ),
        ));
    }
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    let mut epoch = 0u64;
    npd_core::shuffle::seeded_shuffle(&mut order, mix(s.seed, epoch));
    let mut cursor = 0;
    let mut next_id = 0u64;
    let mut out = Vec::new();
    for _ in 0..steps {
        let version = learner.version();
        if version.is_multiple_of(s.refresh_every.max(1)) || generator.version() > version {
            generator.load(learner.publish()?, version)?;
        }
        let mut samples = Vec::new();
        let (mut kept, mut dropped, mut rewards_sum, mut responses, mut tokens) =
            (0usize, 0usize, 0.0f64, 0usize, 0usize);
        for draw in 0..s.max_draws.max(1) {
            let batch: Vec<Prompt> = (0..s.prompts_per_step)
                .map(|_| {
                    if cursor == order.len() {
                        epoch += 1;
                        npd_core::shuffle::seeded_shuffle(&mut order, mix(s.seed, epoch));
                        cursor = 0;
                    }
                    cursor += 1;
                    prompts[order[cursor - 1]].clone()
                })
                .collect();
            let mut groups: Vec<Vec<Rollout>> = vec![Vec::new(); batch.len()];
            for member in 0..s.group_size {
                let params = SamplingParams {
                    seed: mix(
                        mix(s.sampling.seed ^ s.seed, version),
                        (draw * 1000 + member) as u64,
                    ),
                    ..s.sampling.clone()
                };
                let rollouts = generator.generate(&batch, &params)?;
                if rollouts.len() != batch.len() {
                    return Err(npd_core::Error::invalid(
                        "generator",
                        format!("{} rollouts for {} prompts", rollouts.len(), batch.len()),
                    ));
                }
                for (g, r) in groups.iter_mut().zip(rollouts) {
                    g.push(r);
                }
            }
            let rewards: Vec<Vec<f64>> = groups
                .iter()
                .map(|g| g.iter().map(|r| reward(r).value).collect())
                .collect();
            rewards_sum += rewards.iter().flatten().sum::<f64>();
            responses += rewards.iter().map(Vec::len).sum::<usize>();
            tokens += groups
                .iter()
                .flatten()
                .map(|r| r.response.len())
                .sum::<usize>();
            let b = batch_advantages(&rewards, s.scale);
            dropped += b.dropped_equal;
            kept += b.kept.len();
            for (i, advantages) in b.kept {
                for (r, a) in groups[i].iter().zip(advantages) {
                    if r.response.is_empty() {
                        continue;
                    }
                    let n = r.response.len();
                    samples.push(TrainSample {
                        id: SampleId(next_id),
                        tokens: [r.prompt.as_slice(), r.response.as_slice()].concat(),
                        prompt_len: r.prompt.len(),
                        weights: None,
                        topk: None,
                        policy: Some(PolicyTargets {
                            behaviour_logprobs: r.response_logprobs.clone(),
                            advantages: vec![a as f32; n],
                            reference_logprobs: None,
                        }),
                    });
                    next_id += 1;
                }
            }
            if !samples.is_empty() {
                break;
            }
        }
        if let Some(scorer) = reference.as_deref_mut()
            && !samples.is_empty()
        {
            let requests: Vec<ScoreRequest<'_>> = samples
                .iter()
                .map(|t| ScoreRequest {
                    tokens: &t.tokens,
                    prompt_len: t.prompt_len,
                })
                .collect();
            let scored = scorer.score(&requests, &ScoreOptions::default())?;
            if scored.len() != samples.len() {
                return Err(npd_core::Error::invalid(
                    "reference scorer",
                    format!("{} scores for {} samples", scored.len(), samples.len()),
                ));
            }
            for (t, sc) in samples.iter_mut().zip(scored) {
                if let Some(p) = &mut t.policy {
                    p.reference_logprobs = Some(sc.logprobs.conditioned);
                }
            }
        }
        let staleness = version - generator.version();
        let stats = if samples.is_empty() {
            None
        } else {
            let rows = pack_pool(samples, &s.pack)?;
            Some(learner.step(&rows)?)
        };
        let step = GrpoStep {
            step: learner.version(),
            mean_reward: rewards_sum / responses.max(1) as f64,
            groups_kept: kept,
            groups_dropped: dropped,
            staleness,
            mean_response_tokens: tokens as f64 / responses.max(1) as f64,
            stats,
        };
        observe(&step);
        out.push(step);
    }
    Ok(out)
}
