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
//!
//! [`Grpo`] is the RL stage as a method of a run (checkpoints, resume,
//! events, evaluation); [`run_grpo`] is the same loop as a plain function.
//! Both sample with the generator's weights, refreshed every
//! `refresh_every` steps, so a step's responses are at most
//! `refresh_every - 1` steps old; the learner's clipped surrogate corrects
//! for the lag with the importance ratio against the sampling weights'
//! log-probs.

use serde::{Deserialize, Serialize};

use npd_core::config::AdvantageNorm;
use npd_core::events::RlStep;
use npd_core::reward::Reward;
use npd_core::traits::{
    Evaluator, Generator, Learner, Persist, ScoreOptions, ScoreRequest, Scorer, StepStats,
};
use npd_core::{Method, PolicyTargets, Prompt, Rollout, SampleId, SamplingParams, TrainSample};
use npd_pack::{PackOptions, pack_pool};

use crate::context::Loop;
use crate::error::Result;
use crate::outcome::{RlStepPoint, RunEnd};
use crate::run::{Next, Run, StepExtra};
use crate::settings::Settings;

mod advantages;

pub use advantages::{AdvantageScale, GroupBatch, batch_advantages, group_advantages};

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
    /// DAPO's soft overlong penalty.
    pub overlong: Overlong,
}

impl GrpoSettings {
    /// The settings of an RL method of a run with `seed`: `[rl]`, the
    /// run's stop tokens, length limit and packing.
    pub fn from_settings(s: &Settings, seed: u64) -> Self {
        let rl = &s.rl;
        Self {
            group_size: rl.group_size,
            prompts_per_step: rl.prompts_per_step,
            refresh_every: rl.refresh_every,
            scale: match rl.advantage {
                AdvantageNorm::GroupStd => AdvantageScale::GroupStd,
                AdvantageNorm::Centred => AdvantageScale::None,
            },
            sampling: SamplingParams {
                temperature: rl.temperature as f32,
                top_k: None,
                top_p: rl.top_p as f32,
                seed: s.sampling.seed,
                ..s.sampling.clone()
            },
            pack: PackOptions::from_config(&s.pack, s.pad_id),
            max_draws: rl.max_draws,
            seed: seed ^ s.order_seed,
            overlong: Overlong {
                max_tokens: s.sampling.max_new_tokens,
                buffer: rl.overlong_buffer,
                penalty: rl.overlong_penalty,
            },
        }
    }
}

/// DAPO's soft overlong punishment: a response within `buffer` tokens of
/// the length limit loses reward linearly, up to `penalty` at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Overlong {
    /// The length limit (`sampling.max_new_tokens`).
    pub max_tokens: usize,
    /// Tokens before the limit where the penalty starts; 0 turns it off.
    pub buffer: usize,
    /// The penalty at the limit.
    pub penalty: f64,
}

impl Overlong {
    /// The reward taken from a response of `len` tokens.
    pub fn penalty(&self, len: usize) -> f64 {
        if self.buffer == 0 {
            return 0.0;
        }
        let start = self.max_tokens.saturating_sub(self.buffer);
        if len <= start {
            return 0.0;
        }
        self.penalty * ((len - start) as f64 / self.buffer as f64).min(1.0)
    }
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

impl GrpoStep {
    fn event(&self) -> RlStep {
        RlStep {
            reward: self.mean_reward,
            response_tokens: self.mean_response_tokens,
            groups_kept: self.groups_kept,
            groups_dropped: self.groups_dropped,
            staleness: self.staleness,
        }
    }
}

/// The reward of a rollout (a verifier over its decoded response).
pub type RewardFn<'a> = dyn Fn(&Rollout) -> Reward + 'a;

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Where a GRPO run stands in its prompt order: what a checkpoint carries
/// besides the learner, so that a resumed run draws the same prompts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpoCursor {
    /// Passes over the prompts begun (each pass has its own seeded order).
    pub epoch: u64,
    /// Prompts of the current pass drawn so far.
    pub position: usize,
    /// Id of the next training sample.
    pub next_sample: u64,
}

/// The seeded prompt order, pass after pass.
struct Draws<'p> {
    prompts: &'p [Prompt],
    order: Vec<usize>,
    seed: u64,
    at: GrpoCursor,
}

impl<'p> Draws<'p> {
    fn new(prompts: &'p [Prompt], seed: u64, at: GrpoCursor) -> Self {
        let order = npd_core::shuffle::seeded_permutation(prompts.len(), mix(seed, at.epoch));
        Self {
            prompts,
            order,
            seed,
            at,
        }
    }

    fn batch(&mut self, n: usize) -> Vec<Prompt> {
        (0..n)
            .map(|_| {
                if self.at.position == self.order.len() {
                    self.at.epoch += 1;
                    self.at.position = 0;
                    self.order = npd_core::shuffle::seeded_permutation(
                        self.prompts.len(),
                        mix(self.seed, self.at.epoch),
                    );
                }
                self.at.position += 1;
                self.prompts[self.order[self.at.position - 1]].clone()
            })
            .collect()
    }
}

/// One step's training samples and what sampling them found.
struct Sampled {
    samples: Vec<TrainSample>,
    step: GrpoStep,
    /// Dataset ids of the prompts whose groups train, in draw order.
    trained: Vec<u64>,
    /// Dataset ids of the prompts whose groups were dropped (equal rewards).
    dropped: Vec<u64>,
}

/// Draws prompt batches (up to `max_draws`, until one has a group whose
/// rewards differ), samples `group_size` responses to each with the
/// generator's weights of version `version`, and turns the kept groups
/// into samples carrying their advantages and behaviour log-probs.
fn sample_groups<G: Generator>(
    generator: &mut G,
    draws: &mut Draws<'_>,
    reward: &RewardFn<'_>,
    s: &GrpoSettings,
    version: u64,
) -> npd_core::Result<Sampled> {
    let mut samples = Vec::new();
    let (mut trained, mut dropped) = (Vec::new(), Vec::new());
    let (mut rewards_sum, mut responses, mut tokens) = (0.0f64, 0usize, 0usize);
    for draw in 0..s.max_draws.max(1) {
        let batch = draws.batch(s.prompts_per_step);
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
            .map(|g| {
                g.iter()
                    .map(|r| reward(r).value - s.overlong.penalty(r.response.len()))
                    .collect()
            })
            .collect();
        rewards_sum += rewards.iter().flatten().sum::<f64>();
        responses += rewards.iter().map(Vec::len).sum::<usize>();
        tokens += groups
            .iter()
            .flatten()
            .map(|r| r.response.len())
            .sum::<usize>();
        let b = batch_advantages(&rewards, s.scale);
        let kept_at: Vec<usize> = b.kept.iter().map(|(i, _)| *i).collect();
        for (i, p) in batch.iter().enumerate() {
            if kept_at.contains(&i) {
                trained.push(p.id.0);
            } else {
                dropped.push(p.id.0);
            }
        }
        for (i, advantages) in b.kept {
            for (r, a) in groups[i].iter().zip(advantages) {
                if r.response.is_empty() {
                    continue;
                }
                let n = r.response.len();
                samples.push(TrainSample {
                    id: SampleId(draws.at.next_sample),
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
                draws.at.next_sample += 1;
            }
        }
        if !samples.is_empty() {
            break;
        }
    }
    Ok(Sampled {
        samples,
        step: GrpoStep {
            step: 0,
            mean_reward: rewards_sum / responses.max(1) as f64,
            groups_kept: trained.len(),
            groups_dropped: dropped.len(),
            staleness: 0,
            mean_response_tokens: tokens as f64 / responses.max(1) as f64,
            stats: None,
        },
        trained,
        dropped,
    })
}

/// Adds the reference's log-probs of every sample's response (the KL
/// penalty's other side).
fn add_reference(scorer: &mut dyn Scorer, samples: &mut [TrainSample]) -> npd_core::Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
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
    Ok(())
}

fn check_settings(prompts: &[Prompt], s: &GrpoSettings) -> npd_core::Result<()> {
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
    Ok(())
}

/// Runs `steps` GRPO steps: each draws `prompts_per_step` prompts (in a
/// seeded order, pass after pass), samples `group_size` responses to
/// each with the generator's weights (refreshed every `refresh_every`
/// steps), scores them with `reward`, turns the groups into advantages
/// (equal-reward groups dropped and counted), and trains the learner on
/// the clipped surrogate against the sampling snapshot's log-probs. With a
/// `reference` scorer (the RL stage's starting weights), every sample also
/// carries its tokens' reference log-probs, for the learner's KL penalty.
/// Without checkpoints or evaluation; [`Grpo`] is the method of a run.
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
    check_settings(prompts, s)?;
    let mut draws = Draws::new(prompts, s.seed, GrpoCursor::default());
    let mut out = Vec::new();
    for _ in 0..steps {
        let version = learner.version();
        if version.is_multiple_of(s.refresh_every.max(1)) || generator.version() > version {
            generator.load(learner.publish()?, version)?;
        }
        let Sampled {
            mut samples, step, ..
        } = sample_groups(generator, &mut draws, reward, s, version)?;
        if let Some(scorer) = reference.as_deref_mut() {
            add_reference(scorer, &mut samples)?;
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
            staleness,
            stats,
            ..step
        };
        observe(&step);
        out.push(step);
    }
    Ok(out)
}

/// The RL stage as a method of a run: GRPO on the loop's prompts with
/// checkpoints, resume, events and evaluation (greedy accuracy, and
/// pass@k, entropy and lengths when the evaluator samples).
///
/// A resumed run continues exactly as an unstopped one: checkpoints and
/// stops land on refresh steps (so the generator's weights are the
/// checkpoint's), the prompt order's position is saved, and every
/// sampling seed is a function of the run's seed, the step and the group
/// member.
pub struct Grpo<'s, L, G, E: ?Sized> {
    learner: &'s mut L,
    generator: &'s mut G,
    reference: Option<&'s mut dyn Scorer>,
    reward: &'s RewardFn<'s>,
    evaluator: &'s mut E,
}

impl<'s, L, G, E> Grpo<'s, L, G, E>
where
    L: Learner + Persist,
    G: Generator<Weights = L::Weights>,
    E: Evaluator<L> + ?Sized,
{
    /// GRPO of `learner` (at the stage's starting weights), sampling with
    /// `generator` and rewarding with `reward`.
    pub fn new(
        learner: &'s mut L,
        generator: &'s mut G,
        reward: &'s RewardFn<'s>,
        evaluator: &'s mut E,
    ) -> Self {
        Self {
            learner,
            generator,
            reference: None,
            reward,
            evaluator,
        }
    }

    /// The KL penalty's reference (the stage's starting weights).
    pub fn with_reference(mut self, reference: &'s mut dyn Scorer) -> Self {
        self.reference = Some(reference);
        self
    }

    /// Runs `method` (an RL method) with `seed`, or continues it from its
    /// checkpoint. The loop's settings give the steps (`rl.steps`, see
    /// [`Settings::for_rl`]) and `[rl]`.
    pub fn run(self, cx: &mut Loop<'_>, method: Method, seed: u64) -> Result<RunEnd> {
        let Self {
            learner,
            generator,
            mut reference,
            reward,
            evaluator,
        } = self;
        if !method.is_rl() {
            return Err(npd_core::Error::invalid(
                "method",
                format!("{method} is not an RL method"),
            )
            .into());
        }
        let settings = cx.settings;
        let s = GrpoSettings::from_settings(settings, seed);
        check_settings(cx.prompts, &s)?;
        let (mut run, _) = Run::start(cx, method, seed, learner, evaluator)?;
        let mut draws = Draws::new(cx.prompts, s.seed, run.grpo.clone().unwrap_or_default());
        let mut loaded = false;
        for step in run.first_step + 1..=settings.steps {
            let done = step - 1;
            if !loaded || done.is_multiple_of(s.refresh_every.max(1)) {
                let weights = run
                    .clock
                    .time(crate::near_policy::PUBLISH, || learner.publish())?;
                run.clock
                    .time(crate::near_policy::RELOAD, || generator.load(weights, done))?;
                run.refreshes += 1;
                loaded = true;
            }
            let sampled = run.clock.time("generate", || {
                sample_groups(generator, &mut draws, reward, &s, done)
            })?;
            let Sampled {
                mut samples,
                step: mut record,
                trained,
                dropped,
            } = sampled;
            if let Some(scorer) = reference.as_deref_mut() {
                run.clock
                    .time("reference", || add_reference(scorer, &mut samples))?;
            }
            // A step whose every draw had equal rewards in every group
            // trains nothing (the report counts its groups as dropped).
            let (rows, stats) = if samples.is_empty() {
                (Vec::new(), StepStats::default())
            } else {
                let rows = run.clock.time("pack", || pack_pool(samples, &s.pack))?;
                let stats = run.clock.time("train", || learner.step(&rows))?;
                (rows, stats)
            };
            record.step = step;
            record.staleness = done - generator.version();
            let event = record.event();
            let wall_s = run.clock.wall();
            if let Some(trace) = &mut run.rl {
                trace.steps.push(RlStepPoint {
                    step,
                    wall_s,
                    rl: event.clone(),
                });
            }
            run.grpo = Some(draws.at.clone());
            let extra = StepExtra {
                samples: Some(rows.iter().map(|r| r.segments.len()).sum()),
                records_trained: Some(trained),
                records_filtered: Some(dropped),
                rl: Some(event),
                ..StepExtra::default()
            };
            let next =
                run.after_step(cx, learner, evaluator, step, &stats, &rows, extra, || None)?;
            if let Next::Stop(end) = next {
                return Ok(end);
            }
        }
        Ok(RunEnd::Finished(Box::new(run.finish())))
    }
}

#[cfg(test)]
mod overlong_tests {
    use super::*;

    #[test]
    fn the_overlong_penalty_rises_linearly_over_the_buffer() {
        let o = Overlong {
            max_tokens: 100,
            buffer: 20,
            penalty: 1.0,
        };
        assert_eq!(o.penalty(80), 0.0);
        assert!((o.penalty(90) - 0.5).abs() < 1e-12);
        assert_eq!(o.penalty(100), 1.0);
        assert_eq!(o.penalty(140), 1.0);
        assert_eq!(Overlong { buffer: 0, ..o }.penalty(100), 0.0);
    }
}
