//! Synchronous on-policy distillation: every step samples from the current
//! student, the teacher scores the samples, and the student trains on them
//! (packed rows, or one padded batch: `pack.baselines`).

use npd_core::config::Truncated;
use npd_core::traits::{
    Evaluator, Generator, Learner, Persist, ScoreOptions, ScoreRequest, Scorer,
};
use npd_core::{FinishReason, Method, Rollout, TokenId, TrainSample};

use crate::context::Loop;
use crate::error::Result;
use crate::near_policy::{PUBLISH, RELOAD};
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
    written: Option<&'s [Vec<TokenId>]>,
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
            written: None,
        }
    }

    /// Teacher-written responses, one per prompt of the loop in its order
    /// (as SFT's, see [`crate::write_responses`]): with
    /// `train.teacher_fraction` > 0 that fraction of each step's prompts
    /// is answered by them instead of the student (GKD's mixture), and the
    /// teacher still scores every sample.
    pub fn with_teacher_written(mut self, responses: &'s [Vec<TokenId>]) -> Self {
        self.written = Some(responses);
        self
    }

    /// Runs the method with `seed` (or continues it from its checkpoint).
    pub fn run(self, cx: &mut Loop<'_>, seed: u64) -> Result<RunEnd> {
        let Self {
            learner,
            generator,
            teacher,
            evaluator,
            written,
        } = self;
        let s = cx.settings;
        let from_teacher = s.teacher_written_per_step();
        let written = match written {
            Some(w) if w.len() == cx.prompts.len() => w,
            Some(w) => {
                return Err(npd_core::Error::invalid(
                    "teacher-written responses",
                    format!(
                        "{} responses for {} prompts; expected one per prompt",
                        w.len(),
                        cx.prompts.len()
                    ),
                )
                .into());
            }
            None if from_teacher > 0 => {
                return Err(npd_core::Error::invalid(
                    "train.teacher_fraction",
                    "needs teacher-written responses (OnPolicy::with_teacher_written)",
                )
                .into());
            }
            None => &[][..],
        };
        let order = s.order(cx.prompts.len(), seed);
        let (mut run, _) = Run::start(cx, Method::OnPolicy, seed, learner, evaluator)?;
        let options = ScoreOptions {
            topk: Some(s.topk),
            alone_prefix: None,
        };
        let mut synced = false;
        for step in run.first_step..s.steps {
            if !synced || generator.version() != learner.version() {
                let weights = run.clock.time(PUBLISH, || learner.publish())?;
                run.clock
                    .time(RELOAD, || generator.load(weights, learner.version()))?;
                run.refreshes += 1;
                synced = true;
            }
            let per = s.samples_per_step as u64;
            // The step's first prompts take the teacher's responses, the
            // rest the student's.
            let first = step * per;
            let taught = from_teacher as u64;
            let prompts: Vec<_> = (taught..per)
                .map(|j| visit(cx.prompts, &order, first + j))
                .collect();
            let params = s.sampling_for(seed);
            let rollouts = if prompts.is_empty() {
                Vec::new()
            } else {
                run.clock
                    .time("generate", || generator.generate(&prompts, &params))?
            };
            // (id, prompt, response); empty responses have nothing to
            // train on.
            let mut answered: Vec<(u64, &[TokenId], &[TokenId])> = (0..taught)
                .map(|j| {
                    let i = order[((first + j) % cx.prompts.len() as u64) as usize];
                    (
                        first + j,
                        cx.prompts[i].tokens.as_slice(),
                        written[i].as_slice(),
                    )
                })
                .collect();
            let cut = |r: &&Rollout| r.finish == FinishReason::Length;
            run.truncated += rollouts.iter().filter(cut).count() as u64;
            let drop_cut = s.truncated == Truncated::Drop;
            answered.extend(
                (rollouts.iter())
                    .filter(|r| !(drop_cut && cut(r)))
                    .map(|r| (r.prompt_id.0, r.prompt.as_slice(), &r.response[..])),
            );
            answered.retain(|(_, _, response)| !response.is_empty());
            let seqs: Vec<Vec<u32>> = (answered.iter())
                .map(|(_, p, r)| [*p, *r].concat())
                .collect();
            let requests: Vec<ScoreRequest<'_>> = seqs
                .iter()
                .zip(&answered)
                .map(|(t, (_, p, _))| ScoreRequest {
                    tokens: t,
                    prompt_len: p.len(),
                })
                .collect();
            let scores = run
                .clock
                .time("teacher", || teacher.score(&requests, &options))?;
            let samples: Vec<TrainSample> = answered
                .iter()
                .zip(scores)
                .map(|((id, p, r), sc)| sample(*id, p, r, sc.topk))
                .collect();
            let next = run.synchronous_step(cx, learner, evaluator, samples, step + 1)?;
            if let Next::Stop(end) = next {
                return Ok(end);
            }
        }
        Ok(RunEnd::Finished(Box::new(run.finish())))
    }
}
