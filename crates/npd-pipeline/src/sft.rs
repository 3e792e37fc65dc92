//! SFT: cross-entropy on teacher-written responses, a step's samples in
//! packed rows or one padded batch (`pack.baselines`).

use npd_core::traits::{Evaluator, Generator, Learner, Persist};
use npd_core::{Method, Prompt, SamplingParams, TokenId, TrainSample};

use crate::context::Loop;
use crate::error::Result;
use crate::outcome::RunEnd;
use crate::run::{Next, Run, sample};

/// Prompts per call when a teacher writes SFT's responses.
const WRITE_CHUNK: usize = 256;

/// The responses a teacher writes for `prompts`, in order, greedily (the
/// temperature of `params` is ignored). They do not depend on the seed, so
/// a comparison writes them once for all seeds.
pub fn write_responses<G: Generator + ?Sized>(
    teacher: &mut G,
    prompts: &[Prompt],
    params: &SamplingParams,
) -> Result<Vec<Vec<TokenId>>> {
    write_responses_with_progress(teacher, prompts, params, &|_, _| {})
}

/// [`write_responses`], calling `progress(done, total)` after each chunk
/// of prompts.
pub fn write_responses_with_progress<G: Generator + ?Sized>(
    teacher: &mut G,
    prompts: &[Prompt],
    params: &SamplingParams,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Vec<TokenId>>> {
    let greedy = SamplingParams {
        temperature: 0.0,
        ..params.clone()
    };
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(WRITE_CHUNK) {
        let written = teacher.generate(chunk, &greedy)?;
        out.extend(written.into_iter().map(|r| r.response));
        progress(out.len(), prompts.len());
    }
    Ok(out)
}

/// Supervised fine-tuning on fixed responses: each step trains on the next
/// `samples_per_step` prompts of the seeded order with their responses.
/// The learner should be set up for cross-entropy.
pub struct Sft<'s, L, E: ?Sized> {
    learner: &'s mut L,
    evaluator: &'s mut E,
    responses: &'s [Vec<TokenId>],
}

impl<'s, L, E> Sft<'s, L, E>
where
    L: Learner + Persist,
    E: Evaluator<L> + ?Sized,
{
    /// SFT of `learner` on `responses`, one per prompt of the loop, in the
    /// loop's prompt order (see [`write_responses`]).
    pub fn new(learner: &'s mut L, evaluator: &'s mut E, responses: &'s [Vec<TokenId>]) -> Self {
        Self {
            learner,
            evaluator,
            responses,
        }
    }

    /// Runs the method with `seed` (or continues it from its checkpoint).
    pub fn run(self, cx: &mut Loop<'_>, seed: u64) -> Result<RunEnd> {
        let Self {
            learner,
            evaluator,
            responses,
        } = self;
        if responses.len() != cx.prompts.len() {
            return Err(npd_core::Error::invalid(
                "SFT responses",
                format!(
                    "{} responses for {} prompts; expected one per prompt",
                    responses.len(),
                    cx.prompts.len()
                ),
            )
            .into());
        }
        let s = cx.settings;
        let order = s.order(cx.prompts.len(), seed);
        let (mut run, _) = Run::start(cx, Method::Sft, seed, learner, evaluator)?;
        for step in run.first_step..s.steps {
            let per = s.samples_per_step as u64;
            let samples: Vec<TrainSample> = (0..per)
                .map(|j| {
                    let r = step * per + j;
                    let i = order[(r % cx.prompts.len() as u64) as usize];
                    sample(r, &cx.prompts[i].tokens, &responses[i], None)
                })
                .collect();
            let next = run.synchronous_step(cx, learner, evaluator, samples, step + 1)?;
            if let Next::Stop(end) = next {
                return Ok(end);
            }
        }
        Ok(RunEnd::Finished(Box::new(run.finish())))
    }
}
