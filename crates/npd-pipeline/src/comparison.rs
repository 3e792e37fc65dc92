//! Methods side by side: one [`Stages`] backend builds every run's
//! components, and [`Comparison`] runs each method and seed on the same
//! prompts, budget and evaluation, skipping runs that already finished and
//! resuming those that have a checkpoint.

use std::sync::OnceLock;
use std::time::Instant;

use npd_core::events::Observer;
use npd_core::traits::{Evaluator, Generator, Interrupt, Learner, Persist, Scorer};
use npd_core::{Method, Prompt, PromptId, TokenId};
use npd_rollout::Schedule;

use crate::checkpoints::Checkpoints;
use crate::context::Loop;
use crate::error::Result;
use crate::near_policy::NearPolicy;
use crate::on_policy::OnPolicy;
use crate::outcome::RunEnd;
use crate::settings::Settings;
use crate::sft::{Sft, write_responses};

/// Builds the components of one method run: the backend seam of a
/// comparison (the libtorch backend implements it in `npd-train`).
pub trait Stages {
    /// Weights the learner publishes and the generator loads.
    type Weights: Send + 'static;
    /// The student being trained.
    type Learner: Learner<Weights = Self::Weights> + Persist;
    /// Student rollouts (NPD runs it on its own thread).
    type Generator: Generator<Weights = Self::Weights> + Send + 'static;
    /// The teacher's scores.
    type Teacher: Scorer;
    /// The teacher's own responses, for SFT.
    type Writer: Generator;
    /// Held-out evaluation of the learner.
    type Evaluator: Evaluator<Self::Learner>;

    /// A fresh student at the starting weights, set up for `method` (SFT
    /// trains with cross-entropy) and seeded with `seed`.
    fn learner(&self, method: Method, seed: u64) -> Result<Self::Learner>;

    /// A generator for `method` (its weights are loaded by the loop before
    /// it samples). For NPD with the filter on it fills each rollout's
    /// response-alone log-probs.
    fn generator(&self, method: Method) -> Result<Self::Generator>;

    /// The teacher as a scorer.
    fn teacher(&self) -> Result<Self::Teacher>;

    /// The teacher as a writer of SFT's responses.
    fn writer(&self) -> Result<Self::Writer>;

    /// The held-out evaluation.
    fn evaluator(&self) -> Result<Self::Evaluator>;

    /// Where NPD's generator runs relative to scoring and training, for
    /// `rollout.schedule = "auto"`: colocated when they share one device
    /// or one set of cores (the default), disaggregated when generation
    /// runs elsewhere (an inference server).
    fn schedule(&self) -> Schedule {
        Schedule::Colocated
    }
}

/// Runs methods and seeds over one set of [`Stages`].
pub struct Comparison<'a, S> {
    stages: &'a S,
    settings: &'a Settings,
    prompts: &'a [Prompt],
    checkpoints: Option<&'a Checkpoints>,
    rejected: &'a [(PromptId, String)],
    start_score: Option<f64>,
    /// SFT's teacher-written responses: greedy, hence the same for every
    /// seed; the first SFT run writes them and later ones reuse them.
    sft_responses: OnceLock<Vec<Vec<TokenId>>>,
}

impl<'a, S: Stages> Comparison<'a, S> {
    /// A comparison over `prompts` with these stages and settings.
    pub fn new(stages: &'a S, settings: &'a Settings, prompts: &'a [Prompt]) -> Self {
        Self {
            stages,
            settings,
            prompts,
            checkpoints: None,
            rejected: &[],
            start_score: None,
            sft_responses: OnceLock::new(),
        }
    }

    /// Checkpoints and resuming.
    pub fn with_checkpoints(mut self, checkpoints: &'a Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Dataset records rejected before the run (NPD's ledger counts them).
    pub fn with_rejected(mut self, rejected: &'a [(PromptId, String)]) -> Self {
        self.rejected = rejected;
        self
    }

    /// The starting weights' held-out score, already measured.
    pub fn with_start_score(mut self, score: Option<f64>) -> Self {
        self.start_score = score;
        self
    }

    /// The stages.
    pub fn stages(&self) -> &S {
        self.stages
    }

    /// The settings every run uses.
    pub fn settings(&self) -> &Settings {
        self.settings
    }

    /// The settings with `rollout.schedule = "auto"` resolved by the
    /// backend.
    pub fn resolved(&self) -> Settings {
        let mut s = self.settings.clone();
        if s.schedule == Schedule::Auto {
            s.schedule = self.stages.schedule();
        }
        s
    }

    /// The teacher's greedy responses to every training prompt (SFT's data,
    /// and on-policy's teacher-written share), written once per
    /// comparison: the responses, whether they were already written, and
    /// the seconds writing them took.
    fn teacher_written(&self) -> Result<(&[Vec<TokenId>], bool, f64)> {
        let prep = Instant::now();
        let reused = self.sft_responses.get().is_some();
        if !reused {
            let mut writer = self.stages.writer()?;
            let written = write_responses(&mut writer, self.prompts, &self.settings.sampling)?;
            let _ = self.sft_responses.set(written);
        }
        let responses = self.sft_responses.get().expect("written above");
        Ok((responses, reused, prep.elapsed().as_secs_f64()))
    }

    /// Runs one method with one seed from the starting weights (or from its
    /// checkpoint; a finished run returns its recorded outcome).
    pub fn run(
        &self,
        method: Method,
        seed: u64,
        observer: &mut dyn Observer,
        interrupt: &dyn Interrupt,
    ) -> Result<RunEnd> {
        if self.prompts.is_empty() {
            return Err(npd_core::Error::invalid("dataset", "no training prompts").into());
        }
        if let Some(c) = self.checkpoints
            && let Some(outcome) = c.finished(method, seed)?
        {
            return Ok(RunEnd::Finished(Box::new(outcome)));
        }
        let settings = self.resolved();
        let mut cx = Loop::new(&settings, self.prompts)
            .with_observer(observer)
            .with_interrupt(interrupt)
            .with_rejected(self.rejected)
            .with_start_score(self.start_score);
        if let Some(c) = self.checkpoints {
            cx = cx.with_checkpoints(c);
        }
        let st = self.stages;
        let mut learner = st.learner(method, seed)?;
        let mut evaluator = st.evaluator()?;
        let end = match method {
            Method::Sft => {
                let (responses, reused, prep_s) = self.teacher_written()?;
                let end = Sft::new(&mut learner, &mut evaluator, responses).run(&mut cx, seed)?;
                match end {
                    RunEnd::Finished(mut o) => {
                        o.prep_s = if reused { 0.0 } else { prep_s };
                        o.prep_reused = reused;
                        RunEnd::Finished(o)
                    }
                    stopped => stopped,
                }
            }
            Method::OnPolicy => {
                let mut generator = st.generator(method)?;
                let mut teacher = st.teacher()?;
                let on_policy =
                    OnPolicy::new(&mut learner, &mut generator, &mut teacher, &mut evaluator);
                if settings.teacher_written_per_step() > 0 {
                    let (responses, _, _) = self.teacher_written()?;
                    on_policy
                        .with_teacher_written(responses)
                        .run(&mut cx, seed)?
                } else {
                    on_policy.run(&mut cx, seed)?
                }
            }
            Method::NearPolicy => {
                let generator = st.generator(method)?;
                let mut teacher = st.teacher()?;
                NearPolicy::new(&mut learner, generator, &mut teacher, &mut evaluator)
                    .run(&mut cx, seed)?
            }
        };
        if let (Some(c), RunEnd::Finished(o)) = (self.checkpoints, &end) {
            c.record(o)?;
        }
        Ok(end)
    }
}
