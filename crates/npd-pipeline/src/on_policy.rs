//! Synchronous on-policy distillation: every step samples from the current
//! student, the teacher scores the samples, and the student trains on them
//! (packed rows, or one padded batch: `pack.baselines`).

use npd_core::traits::{
    Evaluator, Generator, Learner, Persist, ScoreOptions, ScoreRequest, Scorer,
};
use npd_core::{Method, TrainSample};

use crate::context::Loop;
use crate::error::Result;
use crate::outcome::RunEnd;
use crate::run::{Next, Run, sample, visit};

/// The synchronous baseline: generate, score, train, one step at a time.
/// The generator is loaded with the learner's weights before every step
/// in which they changed, so every sample comes from the current student.
pub struct OnPolicy<'s, L, G, T, E: ?Sized> {
    learner: &'s mut L,
    generator: &'s mut G,
    teacher: &'s mut T,
    evaluator: &'s mut E,
}

impl<'s, L, G, T, E> OnPolicy<'s, L, G, T, E>
where
    L: Learner + Persist,
    G: Generator<Weights = L::Weights>,
    T: Scorer,
    E: Evaluator<L> + ?Sized,
{
    /// On-policy distillation of `learner`, sampling with `generator` and
    /// scoring with `teacher`.
    pub fn new(
        learner: &'s mut L,
        generator: &'s mut G,
        teacher: &'s mut T,
        evaluator: &'s mut E,
    ) -> Self {
        Self {
            learner,
            generator,
            teacher,
            evaluator,
        }
    }

    /// Runs the method with `seed` (or continues it from its checkpoint).
    pub fn run(self, cx: &mut Loop<'_>, seed: u64) -> Result<RunEnd> {
        let Self {
            learner,
            generator,
            teacher,
            evaluator,
        } = self;
        let s = cx.settings;
        let order = s.order(cx.prompts.len(), seed);
        let (mut run, _) = Run::start(cx, Method::OnPolicy, seed, learner, evaluator)?;
        let options = ScoreOptions {
            topk: Some(s.topk),
            alone_prefix: None,
        };
        let mut synced = false;
        for step in run.first_step..s.steps {
            if !synced || generator.version() != learner.version() {
                let weights = run.clock.time("publish", || learner.publish())?;
                generator.load(weights, learner.version())?;
                synced = true;
            }
            let per = s.samples_per_step as u64;
            let prompts: Vec<_> = (0..per)
                .map(|j| visit(cx.prompts, &order, step * per + j))
                .collect();
            let params = s.sampling_for(seed);
            let rollouts = run
                .clock
                .time("generate", || generator.generate(&prompts, &params))?;
            // Empty responses have nothing to train on.
            let rollouts: Vec<_> = rollouts
                .into_iter()
                .filter(|r| !r.response.is_empty())
                .collect();
            let seqs: Vec<Vec<u32>> = rollouts
                .iter()
                .map(|r| [r.prompt.as_slice(), &r.response].concat())
                .collect();
            let requests: Vec<ScoreRequest<'_>> = seqs
                .iter()
                .zip(&rollouts)
                .map(|(t, r)| ScoreRequest {
                    tokens: t,
                    prompt_len: r.prompt.len(),
                })
                .collect();
            let scores = run
                .clock
                .time("teacher", || teacher.score(&requests, &options))?;
            let samples: Vec<TrainSample> = rollouts
                .iter()
                .zip(scores)
                .map(|(r, sc)| sample(r.prompt_id.0, &r.prompt, &r.response, sc.topk))
                .collect();
            let next = run.synchronous_step(cx, learner, evaluator, samples, step + 1)?;
            if let Next::Stop(end) = next {
                return Ok(end);
            }
        }
        Ok(RunEnd::Finished(Box::new(run.finish())))
    }
}
