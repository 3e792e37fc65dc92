//! Methods side by side: one [`Stages`] backend builds every run's
//! components, and [`Comparison`] runs each method and seed on the same
//! prompts, budget and evaluation, skipping runs that already finished and
//! resuming those that have a checkpoint.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use npd_core::events::Observer;
use npd_core::traits::{Evaluator, Generator, Interrupt, Learner, Persist, Scorer};
use npd_core::{Method, Prompt, PromptId, TokenId};
use npd_rollout::Schedule;

use crate::checkpoints::Checkpoints;
use crate::context::Loop;
use crate::error::Result;
use crate::grpo::{Grpo, RewardFn};
use crate::near_policy::NearPolicy;
use crate::on_policy::OnPolicy;
use crate::outcome::RunEnd;
use crate::settings::Settings;
use crate::sft::{Sft, write_responses_with_progress};
use crate::teacher_prompts::{PromptMap, TeacherPrompts, prompt_map};

/// File under [`Checkpoints::root`] holding SFT's teacher-written responses,
/// so that a resumed run reuses them instead of writing them again.
pub const SFT_RESPONSES_FILE: &str = "sft-responses.json";

/// SFT's teacher-written responses as saved beside the checkpoints.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedResponses {
    /// [`prompts_digest`] of the prompts they answer.
    prompts: String,
    /// One response per prompt, in order.
    responses: Vec<Vec<TokenId>>,
}

/// A digest of prompts' ids and tokens (FNV-1a, hex): what saved responses
/// are checked against.
fn prompts_digest(prompts: &[Prompt]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for p in prompts {
        eat(p.id.0);
        eat(p.tokens.len() as u64);
        for &t in &p.tokens {
            eat(u64::from(t));
        }
    }
    format!("{h:016x}")
}

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
    /// The RL stage's reference for its KL penalty: a scorer over fixed
    /// weights.
    type Reference: Scorer;

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

    /// A student for an RL method, set up for the RL stage (`[rl]`'s
    /// optimizer, the policy loss) with a fresh optimizer, at the weights
    /// `start` names.
    fn rl_learner(&self, method: Method, seed: u64, start: RlStart<'_>) -> Result<Self::Learner>;

    /// The KL penalty's reference: the learner's current weights, fixed.
    fn reference(&self, learner: &Self::Learner) -> Result<Self::Reference>;

    /// The RL stage's reward of a rollout.
    fn reward(&self) -> Result<Box<RewardFn<'_>>>;

    /// Where NPD's generator runs relative to scoring and training, for
    /// `rollout.schedule = "auto"`: colocated when they share one device
    /// or one set of cores (the default), disaggregated when generation
    /// runs elsewhere (an inference server).
    fn schedule(&self) -> Schedule {
        Schedule::Colocated
    }
}

/// Where an RL method's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlStart<'p> {
    /// The warm start every method starts from.
    WarmStart,
    /// A checkpoint folder the learner wrote ([`Persist::save_state`]): a
    /// finished run's last checkpoint.
    Checkpoint(&'p Path),
    /// A model folder (`rl.from`).
    Model(&'p Path),
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
    /// seed; the first SFT run writes them and later ones reuse them (or
    /// given, [`Comparison::with_sft_responses`]).
    sft_responses: OnceLock<Vec<Vec<TokenId>>>,
    /// The teacher's wording of each prompt, where it differs.
    teacher_prompts: Option<Vec<Prompt>>,
    teacher_map: PromptMap,
    /// Told `(done, total)` as the teacher writes SFT's responses.
    prep_progress: Option<&'a dyn Fn(usize, usize)>,
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
            teacher_prompts: None,
            teacher_map: PromptMap::default(),
            prep_progress: None,
        }
    }

    /// Tells `progress(done, total)` how far the teacher is in writing
    /// SFT's responses (a progress bar's work).
    pub fn with_prep_progress(mut self, progress: &'a dyn Fn(usize, usize)) -> Self {
        self.prep_progress = Some(progress);
        self
    }

    /// The teacher's own wording of each prompt (one per prompt, in order;
    /// e.g. with a teacher-only suffix): the teacher scores student
    /// responses after it, and writes SFT's responses to it.
    pub fn with_teacher_prompts(mut self, teacher: Vec<Vec<TokenId>>) -> Result<Self> {
        self.teacher_map = prompt_map(self.prompts, &teacher)?;
        self.teacher_prompts = Some(
            self.prompts
                .iter()
                .zip(teacher)
                .map(|(p, tokens)| Prompt { id: p.id, tokens })
                .collect(),
        );
        Ok(self)
    }

    /// The teacher as a scorer, seeing the teacher's prompts.
    fn teacher(&self) -> Result<TeacherPrompts<S::Teacher>> {
        Ok(TeacherPrompts::new(
            self.stages.teacher()?,
            self.teacher_map.clone(),
        ))
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

    /// SFT's targets given rather than written by the teacher (a
    /// dataset's reference responses), one per prompt in order; on-policy's
    /// teacher-written share (`train.teacher_fraction`) uses them too.
    pub fn with_sft_responses(self, responses: Vec<Vec<TokenId>>) -> Result<Self> {
        if responses.len() != self.prompts.len() {
            return Err(npd_core::Error::invalid(
                "SFT responses",
                format!(
                    "{} responses for {} prompts: expected one per prompt",
                    responses.len(),
                    self.prompts.len()
                ),
            )
            .into());
        }
        let _ = self.sft_responses.set(responses);
        Ok(self)
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
        let mut reused = self.sft_responses.get().is_some();
        if !reused && let Some(saved) = self.saved_sft_responses()? {
            let _ = self.sft_responses.set(saved);
            reused = true;
        }
        if !reused {
            let mut writer = self.stages.writer()?;
            let prompts = self.teacher_prompts.as_deref().unwrap_or(self.prompts);
            let written = write_responses_with_progress(
                &mut writer,
                prompts,
                &self.settings.sampling,
                self.prep_progress.unwrap_or(&|_, _| {}),
            )?;
            if let Some(c) = self.checkpoints {
                std::fs::create_dir_all(&c.root).map_err(|source| npd_core::Error::Io {
                    path: c.root.clone(),
                    source,
                })?;
                let saved = SavedResponses {
                    prompts: prompts_digest(self.prompts),
                    responses: written.clone(),
                };
                let text = serde_json::to_string(&saved).expect("responses serialise");
                npd_core::fs::write_atomic(&c.root.join(SFT_RESPONSES_FILE), text.as_bytes())?;
            }
            let _ = self.sft_responses.set(written);
        }
        let responses = self.sft_responses.get().expect("written above");
        Ok((responses, reused, prep.elapsed().as_secs_f64()))
    }

    /// SFT's responses a previous process of this run wrote, when the
    /// checkpoints hold them for these prompts.
    fn saved_sft_responses(&self) -> Result<Option<Vec<Vec<TokenId>>>> {
        let Some(c) = self.checkpoints else {
            return Ok(None);
        };
        let path = c.root.join(SFT_RESPONSES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(npd_core::Error::Io { path, source }.into()),
        };
        let saved: SavedResponses =
            serde_json::from_str(&text).map_err(|e| crate::Error::State {
                path: path.clone(),
                message: format!("SFT's saved responses are malformed: {e}"),
            })?;
        if saved.prompts != prompts_digest(self.prompts)
            || saved.responses.len() != self.prompts.len()
        {
            return Err(crate::Error::State {
                path,
                message: "SFT's saved responses belong to other prompts; remove the file to \
                          write them again"
                    .into(),
            });
        }
        Ok(Some(saved.responses))
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
        let settings = if method.is_rl() {
            self.resolved().for_rl()
        } else {
            self.resolved()
        };
        let mut cx = Loop::new(&settings, self.prompts)
            .with_observer(observer)
            .with_interrupt(interrupt)
            .with_rejected(self.rejected)
            .with_start_score(self.start_score);
        if let Some(c) = self.checkpoints {
            cx = cx.with_checkpoints(c);
        }
        let st = self.stages;
        if method.is_rl() {
            return self.run_rl(cx, method, seed);
        }
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
                let mut teacher = self.teacher()?;
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
                let mut teacher = self.teacher()?;
                NearPolicy::new(&mut learner, generator, &mut teacher, &mut evaluator)
                    .run(&mut cx, seed)?
            }
            Method::Rl | Method::SftRl | Method::OnPolicyRl | Method::NearPolicyRl => {
                unreachable!("RL methods return above")
            }
        };
        self.record(end)
    }

    fn record(&self, end: RunEnd) -> Result<RunEnd> {
        if let (Some(c), RunEnd::Finished(o)) = (self.checkpoints, &end) {
            c.record(o)?;
        }
        Ok(end)
    }

    /// The checkpoint folder an RL method of `seed` starts from: the last
    /// checkpoint of its starting method's finished run of the same seed
    /// (`None`: the warm start, or `rl.from`).
    pub fn rl_start(&self, method: Method, seed: u64) -> Result<Option<std::path::PathBuf>> {
        let Some(Some(base)) = method.rl_start() else {
            return Ok(None);
        };
        let missing = |why: &str| -> crate::Error {
            npd_core::Error::invalid(
                "methods",
                format!(
                    "{method} seed {seed} starts from {base}'s final weights of seed {seed}, {why}; \
                     run {b} first (methods = [\"{b}\", \"{m}\"] runs both in order)",
                    b = base.slug(),
                    m = method.slug()
                ),
            )
            .into()
        };
        let Some(c) = self.checkpoints else {
            return Err(missing("which only a run with checkpoints keeps"));
        };
        let Some(done) = c.finished(base, seed)? else {
            return Err(missing("and that run has not finished"));
        };
        match c.latest(base, seed)? {
            Some((step, dir)) if done.curve.last().is_some_and(|p| p.step == step) => Ok(Some(dir)),
            _ => Err(missing("but its final checkpoint is missing")),
        }
    }

    fn run_rl(&self, mut cx: Loop<'_>, method: Method, seed: u64) -> Result<RunEnd> {
        let st = self.stages;
        let checkpoint = self.rl_start(method, seed)?;
        let from = &self.settings.rl.from;
        let start = match &checkpoint {
            Some(dir) => RlStart::Checkpoint(dir),
            None if !from.as_os_str().is_empty() => RlStart::Model(from),
            None => RlStart::WarmStart,
        };
        let mut learner = st.rl_learner(method, seed, start)?;
        let mut reference = if cx.settings.rl.kl > 0.0 {
            Some(st.reference(&learner)?)
        } else {
            None
        };
        let mut generator = st.generator(method)?;
        let mut evaluator = st.evaluator()?;
        let reward = st.reward()?;
        let mut grpo = Grpo::new(&mut learner, &mut generator, &*reward, &mut evaluator);
        if let Some(r) = reference.as_mut() {
            grpo = grpo.with_reference(r);
        }
        let end = grpo.run(&mut cx, method, seed)?;
        self.record(end)
    }
}
