//! Bookkeeping of one method run, the same for every method: the clock, the
//! accuracy curve, token counts, evaluation, events and checkpoints.

use std::collections::BTreeMap;

use npd_core::events::{EvalEvent, Event, StepEvent};
use npd_core::traits::{Evaluator, Learner, Persist, StepStats};
use npd_core::{Method, PackedRow, Prompt, PromptId, TokenId};
use npd_pack::BaselineRows;

use crate::checkpoints::{SavedNpd, SavedRun};
use crate::clock::Clock;
use crate::context::Loop;
use crate::error::Result;
use crate::grpo::GrpoCursor;
use crate::outcome::{CurvePoint, Outcome, RlEvalPoint, RlTrace, RunEnd};

/// What a driver reports with a finished step.
#[derive(Debug, Default)]
pub(crate) struct StepExtra {
    pub samples: Option<usize>,
    pub keep_rate: Option<f64>,
    pub prompts_trained: Option<Vec<u64>>,
    pub prompts_filtered: Option<Vec<u64>>,
    pub prompts_failed: Option<Vec<u64>>,
    pub records_trained: Option<Vec<u64>>,
    pub records_filtered: Option<Vec<u64>>,
    pub records_failed: Option<Vec<u64>>,
    pub rl: Option<npd_core::events::RlStep>,
}

/// Whether the loop goes on after a step.
pub(crate) enum Next {
    Continue,
    Stop(RunEnd),
}

/// One method run's bookkeeping.
pub(crate) struct Run {
    pub method: Method,
    pub seed: u64,
    pub clock: Clock,
    curve: Vec<CurvePoint>,
    tokens: usize,
    slots: usize,
    skipped: u64,
    /// Steps completed when this process took the run over.
    pub first_step: u64,
    /// Weights published to the generator during the timed run (the load
    /// before the first step excluded), over every process of the run.
    pub refreshes: u64,
    /// Student responses that hit the length limit, over every process of
    /// the run.
    pub truncated: u64,
    resumed_at: Vec<u64>,
    /// RL: where the prompt order stands (saved with checkpoints).
    pub grpo: Option<GrpoCursor>,
    /// RL: rewards and sampled evaluations so far.
    pub rl: Option<RlTrace>,
    /// Checkpoints and stops land on steps that are multiples of this
    /// (RL's refresh interval, so that a resumed run's generator holds the
    /// same weights as an unstopped one's; 1 otherwise).
    boundary: u64,
}

impl Run {
    /// Starts the clock and evaluates the starting weights, or, when the
    /// run has a checkpoint, restores the learner and the bookkeeping from
    /// it and returns NPD's saved state.
    pub fn start<L, E>(
        cx: &mut Loop<'_>,
        method: Method,
        seed: u64,
        learner: &mut L,
        evaluator: &mut E,
    ) -> Result<(Self, Option<SavedNpd>)>
    where
        L: Persist,
        E: Evaluator<L> + ?Sized,
    {
        if let Some(c) = cx.checkpoints
            && let Some((_, dir)) = c.latest(method, seed)?
        {
            let saved = c.load(learner, &dir, method, seed)?;
            let mut resumed_at = saved.resumed_at;
            resumed_at.push(saved.step);
            let run = Self {
                grpo: saved.grpo,
                rl: saved.rl,
                boundary: boundary(cx, method),
                method,
                seed,
                clock: Clock::resumed(saved.wall_s, saved.stages),
                curve: saved.curve,
                tokens: saved.tokens,
                slots: saved.slots,
                skipped: saved.skipped,
                first_step: saved.step,
                refreshes: saved.refreshes,
                truncated: saved.truncated,
                resumed_at,
            };
            return Ok((run, saved.npd));
        }
        let mut run = Self {
            method,
            seed,
            clock: Clock::default(),
            curve: Vec::new(),
            tokens: 0,
            slots: 0,
            skipped: 0,
            first_step: 0,
            refreshes: 0,
            truncated: 0,
            resumed_at: Vec::new(),
            grpo: None,
            rl: method.rl_start().map(|start| RlTrace {
                start,
                ..RlTrace::default()
            }),
            boundary: boundary(cx, method),
        };
        match cx.start_score.filter(|_| !method.is_rl()) {
            Some(accuracy) => run.curve.push(CurvePoint {
                step: 0,
                wall_s: 0.0,
                accuracy,
            }),
            None => run.evaluate(cx, learner, evaluator, 0)?,
        }
        Ok((run, None))
    }

    fn evaluate<L, E>(
        &mut self,
        cx: &mut Loop<'_>,
        learner: &L,
        evaluator: &mut E,
        step: u64,
    ) -> Result<()>
    where
        E: Evaluator<L> + ?Sized,
    {
        let wall_s = self.clock.wall();
        let accuracy = self.clock.pause(|| evaluator.evaluate(learner))?;
        self.curve.push(CurvePoint {
            step,
            wall_s,
            accuracy,
        });
        let sampled = match &mut self.rl {
            Some(trace) => {
                let eval = sampled_eval(cx, self.seed);
                let scores = self.clock.pause(|| evaluator.sampled(learner, &eval))?;
                if let Some(scores) = &scores {
                    trace.evals.push(RlEvalPoint {
                        step,
                        wall_s,
                        scores: scores.clone(),
                    });
                }
                scores
            }
            None => None,
        };
        cx.emit(Event::Eval(EvalEvent {
            method: self.method,
            seed: self.seed,
            step,
            wall_s,
            accuracy,
            sampled,
        }));
        Ok(())
    }

    /// Records step `step` (this one included), reports it, evaluates when
    /// due, and writes a checkpoint when due or asked to stop. `npd` gives
    /// NPD's state for the checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub fn after_step<L, E>(
        &mut self,
        cx: &mut Loop<'_>,
        learner: &L,
        evaluator: &mut E,
        step: u64,
        stats: &StepStats,
        rows: &[PackedRow],
        extra: StepExtra,
        npd: impl FnOnce() -> Option<SavedNpd>,
    ) -> Result<Next>
    where
        L: Learner + Persist,
        E: Evaluator<L> + ?Sized,
    {
        self.tokens += stats.tokens;
        self.slots += rows.iter().map(PackedRow::capacity).sum::<usize>();
        self.skipped += u64::from(stats.skipped);
        cx.emit(Event::Step(StepEvent {
            method: self.method,
            seed: self.seed,
            step,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            tokens: stats.tokens,
            skipped: stats.skipped,
            wall_s: self.clock.wall(),
            samples: extra.samples,
            keep_rate: extra.keep_rate,
            prompts_trained: extra.prompts_trained,
            prompts_filtered: extra.prompts_filtered,
            prompts_failed: extra.prompts_failed,
            records_trained: extra.records_trained,
            records_filtered: extra.records_filtered,
            records_failed: extra.records_failed,
            rl: extra.rl,
        }));
        let last = step == cx.settings.steps;
        if step.is_multiple_of(cx.settings.eval_every.max(1)) || last {
            self.evaluate(cx, learner, evaluator, step)?;
        }
        let on_boundary = step.is_multiple_of(self.boundary);
        let stop = cx.interrupt.requested() && !last && on_boundary;
        let Some(c) = cx.checkpoints else {
            return Ok(if stop {
                Next::Stop(self.stopped(step, None))
            } else {
                Next::Continue
            });
        };
        if !(stop || (c.due(step, last) && (on_boundary || last))) {
            return Ok(Next::Continue);
        }
        let saved = SavedRun {
            method: self.method,
            seed: self.seed,
            step,
            wall_s: self.clock.wall(),
            stages: self.clock.stages().clone(),
            curve: self.curve.clone(),
            tokens: self.tokens,
            slots: self.slots,
            skipped: self.skipped,
            resumed_at: self.resumed_at.clone(),
            refreshes: self.refreshes,
            truncated: self.truncated,
            npd: npd(),
            grpo: self.grpo.clone(),
            rl: self.rl.clone(),
        };
        let dir = self.clock.pause(|| c.save(learner, &saved))?;
        Ok(if stop {
            Next::Stop(self.stopped(step, Some(dir)))
        } else {
            Next::Continue
        })
    }

    /// One step of a synchronous method: `samples` laid out as
    /// `pack.baselines` says (packed rows, or a padded batch), trained on and
    /// recorded as step `step`.
    pub fn synchronous_step<L, E>(
        &mut self,
        cx: &mut Loop<'_>,
        learner: &mut L,
        evaluator: &mut E,
        samples: Vec<npd_core::TrainSample>,
        step: u64,
    ) -> Result<Next>
    where
        L: Learner + Persist,
        E: Evaluator<L> + ?Sized,
    {
        let rows = self
            .clock
            .time("pack", || match cx.settings.pack.baselines {
                BaselineRows::Packed => Ok(npd_pack::pack_pool(
                    samples,
                    &npd_pack::PackOptions::from_config(&cx.settings.pack, cx.settings.pad_id),
                )?),
                BaselineRows::Padded => padded_rows(samples, cx.settings.pad_id),
            })?;
        let stats = self.clock.time("train", || learner.step(&rows))?;
        let extra = StepExtra::default();
        self.after_step(cx, learner, evaluator, step, &stats, &rows, extra, || None)
    }

    fn stopped(&self, step: u64, checkpoint: Option<std::path::PathBuf>) -> RunEnd {
        RunEnd::Stopped {
            method: self.method,
            seed: self.seed,
            step,
            checkpoint,
        }
    }

    /// The outcome of the finished run.
    pub fn finish(self) -> Outcome {
        Outcome {
            method: self.method,
            seed: self.seed,
            accuracy: self.curve.last().map_or(0.0, |c| c.accuracy),
            wall_s: self.clock.wall(),
            stages: self.clock.stages().clone(),
            curve: self.curve,
            prep_s: 0.0,
            prep_reused: false,
            trained_tokens: self.tokens,
            token_efficiency: self.tokens as f64 / self.slots.max(1) as f64,
            skipped_steps: self.skipped,
            filter: None,
            schedule: None,
            staleness: BTreeMap::new(),
            ledger: None,
            resumed_at: self.resumed_at,
            refreshes: self.refreshes,
            truncated: self.truncated,
            rl: self.rl,
        }
    }
}

/// See [`Run::boundary`].
fn boundary(cx: &Loop<'_>, method: Method) -> u64 {
    if method.is_rl() {
        cx.settings.rl.refresh_every.max(1)
    } else {
        1
    }
}

/// The RL stage's sampled held-out evaluation: the same seeds at every
/// evaluation of a run, so that its points differ by the weights only.
fn sampled_eval(cx: &Loop<'_>, seed: u64) -> npd_core::sampled::SampledEval {
    let s = cx.settings;
    npd_core::sampled::SampledEval {
        samples: s.rl.eval_samples,
        prompts: s.rl.eval_prompts,
        ks: s.rl.pass_k.clone(),
        sampling: npd_core::SamplingParams {
            temperature: s.rl.temperature as f32,
            top_k: None,
            top_p: s.rl.top_p as f32,
            seed: s.sampling.seed ^ seed ^ 0x5A3D_0E7A,
            ..s.sampling.clone()
        },
    }
}

/// Visit `r` of a seeded order over `prompts`, repeated: the prompt with id
/// `r` (ids of a run's prompts count visits).
pub(crate) fn visit(prompts: &[Prompt], order: &[usize], r: u64) -> Prompt {
    Prompt {
        id: PromptId(r),
        tokens: prompts[order[(r % prompts.len() as u64) as usize]]
            .tokens
            .clone(),
    }
}

/// `prompt ++ response` as a training sample with id `id`.
pub(crate) fn sample(
    id: u64,
    prompt: &[TokenId],
    response: &[TokenId],
    topk: Option<npd_core::TopKTargets>,
) -> npd_core::TrainSample {
    let mut tokens = prompt.to_vec();
    tokens.extend_from_slice(response);
    npd_core::TrainSample {
        id: npd_core::SampleId(id),
        tokens,
        prompt_len: prompt.len(),
        weights: None,
        topk,
        policy: None,
    }
}

/// One sample per row, each row as wide as the longest sample of the step:
/// the baselines' padded batch (`pack.baselines = "padded"`).
fn padded_rows(samples: Vec<npd_core::TrainSample>, pad_id: TokenId) -> Result<Vec<PackedRow>> {
    let width = samples.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
    let mut options = npd_pack::PackOptions::new(width);
    options.pad_id = pad_id;
    let mut rows = Vec::with_capacity(samples.len());
    for s in samples {
        rows.extend(npd_pack::pack_pool(vec![s], &options)?);
    }
    Ok(rows)
}
