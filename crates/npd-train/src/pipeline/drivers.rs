//! The three methods, run by one harness on the same model code, prompts,
//! step budget and evaluation, so their results compare:
//!
//! - [`Method::Sft`]: cross-entropy on teacher-written (greedy) responses;
//! - [`Method::OnPolicy`]: synchronous on-policy distillation: every step
//!   samples from the current student, the teacher scores, one padded batch;
//! - [`Method::NearPolicy`]: NPD: a student snapshot generates on its own
//!   thread (refreshed every K steps, staleness bounded by admission
//!   control), the teacher scores pools of rollouts, Δ-IFD filters them,
//!   samples are reused and packed.
//!
//! The baselines get every optimisation that does not define NPD (batched
//! KV-cache generation, the same kernels and training step); only
//! asynchrony, pooled generation with reuse, sparse refresh, filtering and
//! packing are NPD's own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use npd_core::config::{FilterConfig, PackConfig, RunConfig};
use npd_core::traits::{
    FilterInput, Learner, Packer, SampleFilter, ScoreOptions, ScoreRequest, Scorer,
};
use npd_core::{
    Error, PackedRow, PolicyVersion, Prompt, PromptId, Result, SampleId, SamplingParams, TokenId,
    TopKTargets, TrainSample, Verdict,
};
use npd_filter::{DeltaIfdFilter, FilterReport};
use npd_pack::{PackOptions, StreamingPacker, pack_pool};
use npd_rollout::{Delivery, EngineConfig, Ledger, LedgerCounts, PromptState, RolloutEngine};

use crate::checkpoint::{load_training, save_training};
use crate::config::ModelConfig;
use crate::generate::{Decoding, generate};
use crate::generator::{ModelGenerator, Weights, load_weights};
use crate::model::Llama;
use crate::pipeline::data::{Example, seeded_permutation};
use crate::pipeline::eval::{AnswerFn, accuracy};
use crate::pipeline::resume::{Checkpoints, SavedNpd, SavedRun};
use crate::score::ModelScorer;
use crate::train::{Layout, TrainOptions, Trainer};

/// Which method to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Supervised fine-tuning on teacher-written responses.
    Sft,
    /// Synchronous on-policy distillation.
    OnPolicy,
    /// Near-Policy Distillation.
    NearPolicy,
}

impl Method {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Sft => "SFT",
            Method::OnPolicy => "on-policy",
            Method::NearPolicy => "NPD",
        }
    }

    /// Every method, in report order.
    pub const ALL: [Method; 3] = [Method::Sft, Method::OnPolicy, Method::NearPolicy];

    /// The method named `slug` (see [`Method::slug`]).
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.slug() == slug)
    }

    /// The method with report name `name` (see [`Method::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Name in file names and on the command line.
    pub fn slug(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::OnPolicy => "on-policy",
            Method::NearPolicy => "npd",
        }
    }
}

/// Settings shared by every method.
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
    /// Optimisation; the layout is set per method.
    pub train: TrainOptions,
    /// Teacher top-k entries per position.
    pub topk: usize,
    /// Tokens before a response in the response-alone pass.
    pub alone_prefix: Vec<TokenId>,
    /// NPD: refresh the generating snapshot every this many steps.
    pub refresh_every: u64,
    /// NPD: staleness bound in refreshes.
    pub max_lag: u64,
    /// NPD: times each kept sample is trained on.
    pub reuse: usize,
    /// NPD: Δ-IFD filter.
    pub filter: FilterConfig,
    /// NPD: packing (row capacity, oversize policy, the streaming
    /// packer's fill threshold and open rows).
    pub pack: PackConfig,
    /// NPD: finished rollouts buffered ahead of scoring.
    pub queue_capacity: usize,
    /// NPD: rollouts scored together.
    pub pool_size: usize,
    /// NPD: libtorch threads of the generating thread.
    pub gen_threads: i32,
    /// libtorch threads of the training thread.
    pub train_threads: i32,
    /// Padding id.
    pub pad_id: TokenId,
}

impl Settings {
    /// The settings a run configuration describes, with the tokens that
    /// come from the tokenizer: the ids that end a response, the tokens
    /// before a response in the response-alone pass (BOS and the
    /// assistant-turn header), and the padding id.
    ///
    /// Held-out accuracy is measured six times along a run (and at its
    /// start). `train.threads = 0` means every core libtorch sees;
    /// `rollout.threads = 0` means one thread for NPD's generator.
    pub fn from_config(
        config: &RunConfig,
        stop_ids: Vec<TokenId>,
        alone_prefix: Vec<TokenId>,
        pad_id: TokenId,
    ) -> Self {
        let (train, rollout, sampling) = (&config.train, &config.rollout, &config.sampling);
        let cores = tch::get_num_threads().max(1);
        let threads = |n: usize, zero: i32| match n {
            0 => zero,
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        Self {
            steps: train.steps,
            samples_per_step: train.rows_per_step,
            eval_every: (train.steps / 6).max(1),
            sampling: SamplingParams {
                temperature: sampling.temperature as f32,
                top_k: (sampling.top_k > 0).then_some(sampling.top_k),
                top_p: sampling.top_p as f32,
                max_new_tokens: sampling.max_new_tokens,
                stop_ids,
                seed: sampling.seed,
            },
            train: TrainOptions::from_config(train),
            topk: train.top_k,
            alone_prefix,
            refresh_every: rollout.refresh_every,
            max_lag: rollout.max_lag,
            reuse: rollout.reuse,
            filter: config.filter.clone(),
            pack: config.pack.clone(),
            queue_capacity: rollout.queue_capacity,
            pool_size: rollout.batch_size,
            gen_threads: threads(rollout.threads, 1),
            train_threads: threads(train.threads, cores),
            pad_id,
        }
    }
}

/// Everything the methods share: built with [`Harness::new`] and the
/// `with_*` setters, then [`Harness::run`] once per method and seed.
pub struct Harness<'a> {
    /// The teacher.
    teacher: &'a Llama,
    /// The student's architecture.
    student: ModelConfig,
    /// The student's starting weights (the warm start).
    warm_start: &'a Weights,
    /// Training prompts.
    train: &'a [Example],
    /// Held-out prompts with answers.
    eval: &'a [Example],
    /// The warm start's held-out accuracy on `eval`, when already measured
    /// (every run then starts its curve with it instead of evaluating the
    /// same weights again).
    warm_start_accuracy: Option<f64>,
    /// Final-answer extraction.
    answer: &'a AnswerFn<'a>,
    /// Settings.
    settings: Settings,
    /// Checkpoints and resuming; `None` runs without them.
    checkpoints: Option<Checkpoints>,
    /// Dataset records rejected before the run, with the reason (NPD's
    /// ledger records them).
    rejected: &'a [(PromptId, String)],
    /// The student's own `config.json`, written into its checkpoints so
    /// they keep its architecture name and keys (`None`: a transformers
    /// Llama config).
    student_config_json: Option<&'a str>,
    /// SFT's teacher-written responses, one per training prompt. They are
    /// greedy, hence the same for every seed: the first SFT run writes
    /// them and later ones reuse them.
    sft_responses: OnceLock<Vec<Vec<TokenId>>>,
}

/// One point of the accuracy curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps taken.
    pub step: u64,
    /// Wall-clock seconds of training so far (evaluation excluded).
    pub wall_s: f64,
    /// Held-out accuracy.
    pub accuracy: f64,
}

/// What a method run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Method.
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Accuracy at the end.
    pub accuracy: f64,
    /// Accuracy against wall-clock.
    pub curve: Vec<CurvePoint>,
    /// Wall-clock seconds, evaluation excluded.
    pub wall_s: f64,
    /// Seconds per stage (on the training thread; NPD's generation runs
    /// concurrently and its stage is the time spent waiting for rollouts).
    pub stages: BTreeMap<String, f64>,
    /// One-time preparation outside the timed run (SFT's teacher responses).
    pub prep_s: f64,
    /// The preparation was done by an earlier run of the same method and
    /// reused (SFT's greedy teacher responses do not depend on the seed).
    #[serde(default)]
    pub prep_reused: bool,
    /// Tokens trained on (padding excluded), over all steps.
    pub trained_tokens: usize,
    /// Fraction of computed token slots that were not padding.
    pub token_efficiency: f64,
    /// Steps skipped for a non-finite loss.
    pub skipped_steps: u64,
    /// NPD: the filter's account.
    pub filter: Option<FilterReport>,
    /// NPD: how many optimizer steps old each trained rollout's weights were.
    pub staleness: BTreeMap<u64, usize>,
    /// NPD: the prompt ledger.
    pub ledger: Option<LedgerCounts>,
    /// Steps at which the run was resumed from a checkpoint.
    #[serde(default)]
    pub resumed_at: Vec<u64>,
}

struct Clock {
    start: Instant,
    excluded: f64,
    stages: BTreeMap<String, f64>,
}

impl Clock {
    fn new() -> Self {
        Self::resumed(0.0, BTreeMap::new())
    }
    /// A clock that already shows `wall` seconds and these stage times.
    fn resumed(wall: f64, stages: BTreeMap<String, f64>) -> Self {
        Self {
            start: Instant::now(),
            excluded: -wall,
            stages,
        }
    }
    fn time<T>(&mut self, stage: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *self.stages.entry(stage.to_string()).or_default() += t.elapsed().as_secs_f64();
        out
    }
    fn wall(&self) -> f64 {
        self.start.elapsed().as_secs_f64() - self.excluded
    }
}

/// A finished optimizer step, as [`Run::after_step`] records it.
struct Done<'a> {
    /// Steps taken, this one included.
    step: u64,
    stats: &'a npd_core::traits::StepStats,
    rows: &'a [PackedRow],
    /// Method-specific metrics fields.
    extra: serde_json::Value,
}

/// Bookkeeping of one method run: the clock, the accuracy curve, token
/// counts and checkpoints, updated after every step the same way for every
/// method.
struct Run {
    method: Method,
    seed: u64,
    clock: Clock,
    curve: Vec<CurvePoint>,
    tokens: usize,
    slots: usize,
    /// Steps completed when this process took the run over.
    first_step: u64,
    resumed_at: Vec<u64>,
}

impl Run {
    /// Starts the clock and evaluates the warm start, or, when the run has
    /// a checkpoint, restores the trainer and the bookkeeping from it and
    /// returns NPD's saved state.
    fn start(
        h: &Harness<'_>,
        method: Method,
        seed: u64,
        trainer: &mut Trainer,
    ) -> Result<(Self, Option<SavedNpd>)> {
        let latest = match &h.checkpoints {
            Some(c) => c.latest(method, seed)?,
            None => None,
        };
        if let Some((_, dir)) = latest {
            let state = load_training(trainer, &dir)?;
            let saved = SavedRun::from_state(state, &dir, method, seed)?;
            let mut resumed_at = saved.resumed_at;
            resumed_at.push(saved.step);
            let run = Self {
                method,
                seed,
                clock: Clock::resumed(saved.wall_s, saved.stages),
                curve: saved.curve,
                tokens: saved.tokens,
                slots: saved.slots,
                first_step: saved.step,
                resumed_at,
            };
            return Ok((run, saved.npd));
        }
        let mut run = Self {
            method,
            seed,
            clock: Clock::new(),
            curve: Vec::new(),
            tokens: 0,
            slots: 0,
            first_step: 0,
            resumed_at: Vec::new(),
        };
        match h.warm_start_accuracy {
            Some(accuracy) => run.curve.push(CurvePoint {
                step: 0,
                wall_s: 0.0,
                accuracy,
            }),
            None => {
                h.evaluate(trainer.model(), &mut run.clock, 0, &mut run.curve)?;
            }
        }
        Ok((run, None))
    }

    /// Records a step, writes its metrics line, evaluates when due, and
    /// writes a checkpoint when due or asked to stop (then returns
    /// [`Error::Interrupted`]). `npd` gives NPD's state for the checkpoint.
    fn after_step(
        &mut self,
        h: &Harness<'_>,
        done: Done<'_>,
        trainer: &Trainer,
        metrics: &mut dyn FnMut(serde_json::Value),
        npd: impl FnOnce() -> Option<SavedNpd>,
    ) -> Result<()> {
        let Done {
            step,
            stats,
            rows,
            extra,
        } = done;
        self.tokens += stats.tokens;
        self.slots += rows.iter().map(PackedRow::capacity).sum::<usize>();
        let mut line = json!({"method": self.method.name(), "seed": self.seed, "step": step,
            "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
            "tokens": stats.tokens, "skipped": stats.skipped, "wall_s": self.clock.wall()});
        if let (Some(l), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
            l.extend(e);
        }
        metrics(line);
        let last = step == h.settings.steps;
        if step % h.settings.eval_every == 0 || last {
            h.evaluate(trainer.model(), &mut self.clock, step, &mut self.curve)?;
        }
        let Some(c) = &h.checkpoints else {
            return Ok(());
        };
        let stop = c.stop_requested() && !last;
        if !(last || stop || (c.every > 0 && step % c.every == 0)) {
            return Ok(());
        }
        let t = Instant::now();
        let saved = SavedRun {
            method: self.method,
            seed: self.seed,
            step,
            wall_s: self.clock.wall(),
            stages: self.clock.stages.clone(),
            curve: self.curve.clone(),
            tokens: self.tokens,
            slots: self.slots,
            resumed_at: self.resumed_at.clone(),
            npd: npd(),
        };
        let dir = c.step_dir(self.method, self.seed, step);
        let state = serde_json::to_value(&saved).expect("run state serialises");
        save_training(trainer, &dir, h.student_config_json, &state)?;
        c.prune(self.method, self.seed)?;
        self.clock.excluded += t.elapsed().as_secs_f64();
        if stop {
            return Err(Error::Interrupted {
                step,
                checkpoint: dir,
            });
        }
        Ok(())
    }

    /// One step of a synchronous method: `samples` as a padded batch,
    /// trained on and recorded as step `step`.
    fn padded_step(
        &mut self,
        h: &Harness<'_>,
        trainer: &mut Trainer,
        samples: Vec<TrainSample>,
        step: u64,
        metrics: &mut dyn FnMut(serde_json::Value),
    ) -> Result<()> {
        let rows = padded_rows(samples, h.settings.pad_id)?;
        let stats = self.clock.time("train", || trainer.step(&rows))?;
        let done = Done {
            step,
            stats: &stats,
            rows: &rows,
            extra: json!({}),
        };
        self.after_step(h, done, trainer, metrics, || None)
    }

    fn finish(self, trainer: &Trainer) -> Outcome {
        Outcome {
            method: self.method,
            seed: self.seed,
            accuracy: self.curve.last().map_or(0.0, |c| c.accuracy),
            wall_s: self.clock.wall(),
            stages: self.clock.stages,
            curve: self.curve,
            prep_s: 0.0,
            prep_reused: false,
            trained_tokens: self.tokens,
            token_efficiency: self.tokens as f64 / self.slots.max(1) as f64,
            skipped_steps: trainer.skipped_steps(),
            filter: None,
            staleness: BTreeMap::new(),
            ledger: None,
            resumed_at: self.resumed_at,
        }
    }
}

/// Teacher and student must agree on the vocabulary size and the BOS, EOS
/// and padding ids; the error names the field and both values.
pub fn check_compatible(teacher: &ModelConfig, student: &ModelConfig) -> Result<()> {
    let fields = [
        (
            "vocab_size",
            format!("{}", teacher.vocab_size),
            format!("{}", student.vocab_size),
        ),
        (
            "bos_token_id",
            format!("{:?}", teacher.bos_token_id),
            format!("{:?}", student.bos_token_id),
        ),
        (
            "eos_token_id",
            format!("{:?}", teacher.eos_token_ids),
            format!("{:?}", student.eos_token_ids),
        ),
        (
            "pad_token_id",
            format!("{:?}", teacher.pad_token_id),
            format!("{:?}", student.pad_token_id),
        ),
    ];
    for (field, t, st) in fields {
        if t != st {
            return Err(Error::invalid(
                "teacher and student",
                format!(
                    "`{field}` differs: teacher {t}, student {st}; token-level distillation needs one vocabulary"
                ),
            ));
        }
    }
    Ok(())
}

/// Order in which prompts are visited: a seeded permutation, repeated.
fn prompt_order(n: usize, seed: u64) -> impl Fn(u64) -> usize {
    let order = seeded_permutation(n, seed);
    move |r: u64| order[(r % n as u64) as usize]
}

fn sample(
    id: u64,
    prompt: &[TokenId],
    response: &[TokenId],
    topk: Option<TopKTargets>,
) -> TrainSample {
    let mut tokens = prompt.to_vec();
    tokens.extend_from_slice(response);
    TrainSample {
        id: SampleId(id),
        tokens,
        prompt_len: prompt.len(),
        weights: None,
        topk,
    }
}

/// One sample per row, each row as wide as the longest sample of the step:
/// the padded batch of the baselines.
fn padded_rows(samples: Vec<TrainSample>, pad_id: TokenId) -> Result<Vec<PackedRow>> {
    let width = samples.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
    let mut options = PackOptions::new(width);
    options.pad_id = pad_id;
    let mut rows = Vec::with_capacity(samples.len());
    for s in samples {
        rows.extend(pack_pool(vec![s], &options)?);
    }
    Ok(rows)
}

impl<'a> Harness<'a> {
    /// A harness with what every run needs; the optional parts (a measured
    /// warm-start accuracy, checkpoints, rejected records, the student's
    /// own `config.json`) start empty and are set with the `with_*`
    /// methods.
    pub fn new(
        teacher: &'a Llama,
        student: ModelConfig,
        warm_start: &'a Weights,
        data: (&'a [Example], &'a [Example]),
        answer: &'a AnswerFn<'a>,
        settings: Settings,
    ) -> Self {
        let (train, eval) = data;
        Self {
            teacher,
            student,
            warm_start,
            train,
            eval,
            warm_start_accuracy: None,
            answer,
            settings,
            checkpoints: None,
            rejected: &[],
            student_config_json: None,
            sft_responses: OnceLock::new(),
        }
    }

    /// The warm start's held-out accuracy, already measured on `eval`.
    pub fn with_warm_start_accuracy(mut self, accuracy: Option<f64>) -> Self {
        self.warm_start_accuracy = accuracy;
        self
    }

    /// Checkpoints and resuming.
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Dataset records rejected before the run (NPD's ledger counts them).
    pub fn with_rejected(mut self, rejected: &'a [(PromptId, String)]) -> Self {
        self.rejected = rejected;
        self
    }

    /// The student's own `config.json`, written into its checkpoints.
    pub fn with_student_config_json(mut self, json: Option<&'a str>) -> Self {
        self.student_config_json = json;
        self
    }

    /// The settings every run uses.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl Harness<'_> {
    fn student(&self) -> Result<Llama> {
        let mut m = Llama::new(self.student.clone(), self.teacher.device());
        load_weights(&mut m, self.warm_start)?;
        Ok(m)
    }

    fn trainer(&self, layout: Layout) -> Result<Trainer> {
        let mut options = self.settings.train.clone();
        options.layout = layout;
        options.total_steps = self.settings.steps;
        Ok(Trainer::new(self.student()?, options))
    }

    fn evaluate(
        &self,
        model: &Llama,
        clock: &mut Clock,
        step: u64,
        curve: &mut Vec<CurvePoint>,
    ) -> Result<f64> {
        let t = Instant::now();
        let wall = clock.wall();
        let s = &self.settings.sampling;
        let acc = accuracy(model, self.eval, self.answer, s.max_new_tokens, &s.stop_ids)?;
        curve.push(CurvePoint {
            step,
            wall_s: wall,
            accuracy: acc,
        });
        clock.excluded += t.elapsed().as_secs_f64();
        Ok(acc)
    }

    /// Teacher top-k targets for `(prompt, response)` pairs, and the
    /// teacher's IFD terms when `alone` is set.
    fn teacher_scores(
        &self,
        pairs: &[(Vec<TokenId>, usize)],
        alone: bool,
    ) -> Result<Vec<npd_core::traits::SequenceScores>> {
        let requests: Vec<ScoreRequest<'_>> = pairs
            .iter()
            .map(|(t, p)| ScoreRequest {
                tokens: t,
                prompt_len: *p,
            })
            .collect();
        let options = ScoreOptions {
            topk: Some(self.settings.topk),
            alone_prefix: alone.then(|| self.settings.alone_prefix.clone()),
        };
        tch::no_grad(|| ModelScorer::new(self.teacher).score(&requests, &options))
    }

    /// Checks, before any work, that teacher and student share the
    /// vocabulary and special tokens (token-level distillation needs no
    /// mapping, so a mismatch is an error), and that there are prompts.
    pub fn check(&self) -> Result<()> {
        if self.train.is_empty() || self.eval.is_empty() {
            return Err(Error::invalid(
                "dataset",
                "no training or no evaluation prompts",
            ));
        }
        check_compatible(self.teacher.config(), &self.student)
    }

    /// Runs one method from the warm start; `metrics` receives one JSON
    /// object per step.
    pub fn run(
        &self,
        method: Method,
        seed: u64,
        metrics: &mut dyn FnMut(serde_json::Value),
    ) -> Result<Outcome> {
        self.check()?;
        if let Some(c) = &self.checkpoints {
            if let Some(outcome) = c.finished(method, seed)? {
                return Ok(outcome);
            }
        }
        tch::set_num_threads(self.settings.train_threads);
        tch::manual_seed(seed as i64);
        let outcome = match method {
            Method::Sft => self.run_sft(seed, metrics),
            Method::OnPolicy => self.run_on_policy(seed, metrics),
            Method::NearPolicy => self.run_npd(seed, metrics),
        }?;
        if let Some(c) = &self.checkpoints {
            c.record(&outcome)?;
        }
        Ok(outcome)
    }

    fn run_sft(&self, seed: u64, metrics: &mut dyn FnMut(serde_json::Value)) -> Result<Outcome> {
        let s = &self.settings;
        // Teacher-written responses for every training prompt, once for
        // all seeds.
        let prep = Instant::now();
        let reused = self.sft_responses.get().is_some();
        if !reused {
            let greedy = SamplingParams {
                temperature: 0.0,
                seed,
                ..s.sampling.clone()
            };
            let mut responses = Vec::with_capacity(self.train.len());
            for chunk in self.train.chunks(256) {
                let prompts: Vec<Vec<TokenId>> = chunk.iter().map(|e| e.prompt.clone()).collect();
                let written = generate(self.teacher, &prompts, &greedy, Decoding::Cached)?;
                responses.extend(written.into_iter().map(|g| g.tokens));
            }
            let _ = self.sft_responses.set(responses);
        }
        let responses = self.sft_responses.get().expect("written above");
        let prep_s = prep.elapsed().as_secs_f64();
        // SFT trains on the teacher's text with cross-entropy, whatever the
        // distillation loss.
        let mut options = self.settings.train.clone();
        options.layout = Layout::Padded;
        options.total_steps = s.steps;
        options.loss = npd_core::config::LossKind::Ce;
        options.ce_weight = 0.0;
        let mut trainer = Trainer::new(self.student()?, options);
        let order = prompt_order(self.train.len(), seed);
        let (mut run, _) = Run::start(self, Method::Sft, seed, &mut trainer)?;
        for step in run.first_step..s.steps {
            let samples: Vec<TrainSample> = (0..s.samples_per_step as u64)
                .map(|j| {
                    let r = step * s.samples_per_step as u64 + j;
                    let i = order(r);
                    sample(r, &self.train[i].prompt, &responses[i], None)
                })
                .collect();
            run.padded_step(self, &mut trainer, samples, step + 1, metrics)?;
        }
        let mut out = run.finish(&trainer);
        out.prep_s = if reused { 0.0 } else { prep_s };
        out.prep_reused = reused;
        Ok(out)
    }

    fn run_on_policy(
        &self,
        seed: u64,
        metrics: &mut dyn FnMut(serde_json::Value),
    ) -> Result<Outcome> {
        let s = &self.settings;
        let mut trainer = self.trainer(Layout::Padded)?;
        let order = prompt_order(self.train.len(), seed);
        let (mut run, _) = Run::start(self, Method::OnPolicy, seed, &mut trainer)?;
        for step in run.first_step..s.steps {
            let ids: Vec<u64> = (0..s.samples_per_step as u64)
                .map(|j| step * s.samples_per_step as u64 + j)
                .collect();
            let prompts: Vec<Vec<TokenId>> = ids
                .iter()
                .map(|&r| self.train[order(r)].prompt.clone())
                .collect();
            let params = SamplingParams {
                seed: seed ^ step.wrapping_mul(0x9E37),
                ..s.sampling.clone()
            };
            let gens = run.clock.time("generate", || {
                tch::no_grad(|| generate(trainer.model(), &prompts, &params, Decoding::Cached))
            })?;
            // Empty responses have nothing to train on; each pair keeps
            // its prompt's id.
            let (kept, pairs): (Vec<u64>, Vec<(Vec<TokenId>, usize)>) = ids
                .iter()
                .zip(prompts.iter().zip(&gens))
                .filter(|(_, (_, g))| !g.tokens.is_empty())
                .map(|(&r, (p, g))| (r, ([p.as_slice(), &g.tokens].concat(), p.len())))
                .unzip();
            let scores = run
                .clock
                .time("teacher", || self.teacher_scores(&pairs, false))?;
            let samples: Vec<TrainSample> = pairs
                .iter()
                .zip(scores)
                .zip(kept)
                .map(|(((t, p), sc), r)| sample(r, &t[..*p], &t[*p..], sc.topk))
                .collect();
            run.padded_step(self, &mut trainer, samples, step + 1, metrics)?;
        }
        Ok(run.finish(&trainer))
    }

    fn run_npd(&self, seed: u64, metrics: &mut dyn FnMut(serde_json::Value)) -> Result<Outcome> {
        let s = &self.settings;
        let mut trainer = self.trainer(Layout::Packed)?;
        let order = prompt_order(self.train.len(), seed);
        let (mut run, saved) = Run::start(self, Method::NearPolicy, seed, &mut trainer)?;
        let reuse = s.reuse.max(1);
        let per_version = s.refresh_every as usize * s.samples_per_step / reuse;
        // The generating snapshot starts from the trainer's weights (the
        // warm start, or the checkpoint of a resumed run).
        let mut snapshot = Llama::new(self.student.clone(), self.teacher.device());
        load_weights(&mut snapshot, &trainer.publish()?)?;
        let mut generator =
            ModelGenerator::new(snapshot, trainer.version()).with_threads(s.gen_threads);
        if s.filter.enabled {
            // The student's IFD terms come from the generating snapshot: the
            // sampled tokens' log-probs and a response-alone pass, both on
            // the generating thread.
            generator = generator.with_alone_prefix(s.alone_prefix.clone());
        }
        let engine = RolloutEngine::spawn(
            generator,
            trainer.version(),
            EngineConfig {
                batch_size: s.pool_size.min(s.samples_per_step).max(1),
                queue_capacity: s.queue_capacity.max(1),
                max_ahead: (s.max_lag.max(1) as usize * per_version).max(s.pool_size),
                sampling: SamplingParams {
                    seed,
                    ..s.sampling.clone()
                },
            },
        );
        let prompt = |id: PromptId| Prompt {
            id,
            tokens: self.train[order(id.0)].prompt.clone(),
        };
        let submit = |engine: &RolloutEngine<Weights>,
                      ledger: &mut Ledger,
                      next_request: &mut u64,
                      n: usize|
         -> Result<()> {
            let mut batch = Vec::with_capacity(n);
            for _ in 0..n {
                let id = PromptId(*next_request);
                *next_request += 1;
                ledger
                    .open(id)
                    .map_err(|e| Error::invalid("ledger", e.to_string()))?;
                batch.push(prompt(id));
            }
            engine.submit(batch);
            Ok(())
        };
        let mut filter = DeltaIfdFilter::from_config(&s.filter);
        let mut ledger = Ledger::new();
        let mut next_request = 0u64;
        let mut staleness: BTreeMap<u64, usize> = BTreeMap::new();
        for (id, reason) in self.rejected {
            ledger.reject(*id, reason.clone());
        }
        if let Some(saved) = saved {
            // Work in flight at the checkpoint goes first.
            ledger = saved.ledger;
            next_request = saved.next_request;
            staleness = saved.staleness;
            filter.resume_from(saved.filter);
            let open = ledger.open_prompts();
            if !open.is_empty() {
                engine.submit(open.into_iter().map(prompt).collect::<Vec<_>>());
            }
        }
        // No sample waits in an open row for more than a step's worth of
        // samples: its weights keep ageing while it waits.
        let mut packer = StreamingPacker::from_config(&s.pack, s.pad_id)?
            .with_max_wait(s.samples_per_step as u64);
        let mut rows: VecDeque<PackedRow> = VecDeque::new();
        let mut reused: Vec<TrainSample> = Vec::new();
        let mut versions: BTreeMap<u64, PolicyVersion> = BTreeMap::new();
        submit(&engine, &mut ledger, &mut next_request, s.pool_size * 4)?;
        let mut step = run.first_step;
        // Prompts closed without training since the last step's metrics.
        let mut filtered_ids: Vec<u64> = Vec::new();
        let mut failed_ids: Vec<u64> = Vec::new();
        while step < s.steps {
            // Fill rows until they hold a step's worth of samples.
            while rows.iter().map(|r| r.segments.len()).sum::<usize>() < s.samples_per_step {
                if engine.pending() < s.pool_size * 2 {
                    submit(&engine, &mut ledger, &mut next_request, s.pool_size * 2)?;
                }
                let mut pool = Vec::with_capacity(s.pool_size);
                run.clock.time("wait for rollouts", || {
                    while pool.len() < s.pool_size {
                        match engine.recv() {
                            Some(d) => pool.push(d),
                            None => break,
                        }
                    }
                });
                let mut rollouts = Vec::new();
                for d in pool {
                    match d {
                        Delivery::Rollout(r) if !r.response.is_empty() => rollouts.push(r),
                        Delivery::Rollout(r) => {
                            ledger
                                .close(
                                    r.prompt_id,
                                    PromptState::Filtered(npd_core::DropReason::EmptyResponse),
                                )
                                .map_err(|e| Error::invalid("ledger", e.to_string()))?;
                            filtered_ids.push(r.prompt_id.0);
                        }
                        Delivery::Failed { prompt, reason } => {
                            ledger
                                .close(prompt, PromptState::Failed(reason))
                                .map_err(|e| Error::invalid("ledger", e.to_string()))?;
                            failed_ids.push(prompt.0);
                        }
                    }
                }
                if rollouts.is_empty() {
                    return Err(Error::invalid(
                        "rollout engine",
                        "stopped delivering rollouts",
                    ));
                }
                let pairs: Vec<(Vec<TokenId>, usize)> = rollouts
                    .iter()
                    .map(|r| ([r.prompt.as_slice(), &r.response].concat(), r.prompt.len()))
                    .collect();
                let teacher = run
                    .clock
                    .time("teacher", || self.teacher_scores(&pairs, s.filter.enabled))?;
                let kept: Vec<bool> = if s.filter.enabled {
                    let inputs: Vec<FilterInput> = rollouts
                        .iter()
                        .zip(&teacher)
                        .map(|(r, t)| FilterInput {
                            id: SampleId(r.prompt_id.0),
                            teacher: t.logprobs.clone(),
                            student: npd_core::ResponseLogProbs {
                                conditioned: r.response_logprobs.clone(),
                                alone: r.response_alone_logprobs.clone(),
                            },
                            snapshot: None,
                        })
                        .collect();
                    let decisions = run.clock.time("filter", || filter.select(&inputs))?;
                    let mut keep = Vec::with_capacity(decisions.len());
                    for (d, r) in decisions.iter().zip(&rollouts) {
                        if let Verdict::Drop(reason) = d.verdict {
                            ledger
                                .close(r.prompt_id, PromptState::Filtered(reason))
                                .map_err(|e| Error::invalid("ledger", e.to_string()))?;
                            filtered_ids.push(r.prompt_id.0);
                        }
                        keep.push(d.verdict.is_keep());
                    }
                    keep
                } else {
                    vec![true; rollouts.len()]
                };
                let mut fresh = Vec::new();
                for ((r, t), k) in rollouts.iter().zip(teacher).zip(kept) {
                    if k {
                        versions.insert(r.prompt_id.0, r.policy_version);
                        fresh.push(sample(r.prompt_id.0, &r.prompt, &r.response, t.topk));
                    }
                }
                run.clock.time("pack", || -> Result<()> {
                    // Samples kept from the previous pool get their next use now.
                    for smp in std::mem::take(&mut reused)
                        .into_iter()
                        .chain(fresh.iter().cloned())
                    {
                        rows.extend(packer.push(smp)?);
                    }
                    if reuse > 1 {
                        reused = fresh;
                    }
                    Ok(())
                })?;
                if rows.is_empty() && packer.open_rows() > 0 && engine.pending() == 0 {
                    rows.extend(packer.flush());
                }
            }
            // Take rows holding at least a step's worth of samples.
            let mut batch = Vec::new();
            let mut n = 0;
            while n < s.samples_per_step {
                let Some(row) = rows.pop_front() else { break };
                n += row.segments.len();
                batch.push(row);
            }
            let stats = run.clock.time("train", || trainer.step(&batch))?;
            let mut first_use = Vec::new();
            for row in &batch {
                for seg in &row.segments {
                    let id = seg.sample_id.0;
                    if let Some(v) = versions.remove(&id) {
                        *staleness
                            .entry(trainer.version().saturating_sub(v + 1))
                            .or_default() += 1;
                        ledger
                            .close(PromptId(id), PromptState::Trained)
                            .map_err(|e| Error::invalid("ledger", e.to_string()))?;
                        first_use.push(id);
                    }
                }
            }
            step += 1;
            if step % s.refresh_every == 0 {
                let weights = run.clock.time("publish", || trainer.publish())?;
                engine.publish(weights, trainer.version());
            }
            let extra = json!({"samples": n, "keep_rate": filter.total_report().keep_rate(),
                "prompts_trained": first_use,
                "prompts_filtered": std::mem::take(&mut filtered_ids),
                "prompts_failed": std::mem::take(&mut failed_ids)});
            let done = Done {
                step,
                stats: &stats,
                rows: &batch,
                extra,
            };
            let state = || {
                Some(SavedNpd {
                    next_request,
                    open_prompts: ledger.open_prompts(),
                    ledger: ledger.clone(),
                    staleness: staleness.clone(),
                    filter: filter.total_report().clone(),
                })
            };
            if let Err(e) = run.after_step(self, done, &trainer, metrics, state) {
                let _ = engine.shutdown();
                return Err(e);
            }
        }
        let (_unfinished, failures) = engine.shutdown();
        for f in failures {
            if let Delivery::Failed { prompt, reason } = f {
                ledger
                    .close(prompt, PromptState::Failed(reason))
                    .map_err(|e| Error::invalid("ledger", e.to_string()))?;
            }
        }
        let mut out = run.finish(&trainer);
        out.filter = s.filter.enabled.then(|| filter.total_report().clone());
        out.staleness = staleness;
        out.ledger = Some(ledger.counts());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::model_config;

    #[test]
    fn mismatched_vocabularies_are_refused_by_name() {
        let teacher = model_config(64, 2, 4, 2);
        let student = model_config(32, 1, 2, 1);
        check_compatible(&teacher, &student).unwrap();
        let mut other = student.clone();
        other.vocab_size += 1;
        let err = check_compatible(&teacher, &other).unwrap_err().to_string();
        assert!(
            err.contains("vocab_size") && err.contains("teacher 32") && err.contains("student 33"),
            "{err}"
        );
        let mut other = student.clone();
        other.eos_token_ids = vec![45892];
        let err = check_compatible(&teacher, &other).unwrap_err().to_string();
        assert!(
            err.contains("eos_token_id") && err.contains("45892"),
            "{err}"
        );
    }

    #[test]
    fn settings_follow_the_run_configuration() {
        let mut c = RunConfig::default();
        c.train.steps = 120;
        c.train.rows_per_step = 48;
        c.train.top_k = 5;
        c.rollout.refresh_every = 7;
        c.rollout.max_lag = 3;
        c.rollout.reuse = 2;
        c.rollout.batch_size = 32;
        c.sampling.top_k = 0;
        c.sampling.temperature = 0.7;
        c.filter.upper_percentile = 0.8;
        c.pack.capacity = 256;
        let s = Settings::from_config(&c, vec![2], vec![1, 9], 0);
        assert_eq!((s.steps, s.samples_per_step, s.eval_every), (120, 48, 20));
        assert_eq!((s.topk, s.refresh_every, s.max_lag, s.reuse), (5, 7, 3, 2));
        assert_eq!((s.pool_size, s.pack.capacity), (32, 256));
        assert_eq!(s.filter.upper_percentile, 0.8);
        assert_eq!(s.sampling.top_k, None);
        assert_eq!(s.sampling.temperature, 0.7);
        assert_eq!(s.sampling.stop_ids, vec![2]);
        assert_eq!(s.alone_prefix, vec![1, 9]);
        assert_eq!(s.train.total_steps, 120);
        // 0 threads: every core for training, one for generation.
        assert_eq!(s.gen_threads, 1);
        assert_eq!(s.train_threads, tch::get_num_threads().max(1));
        c.train.threads = 3;
        c.rollout.threads = 2;
        c.sampling.top_k = 20;
        let s = Settings::from_config(&c, vec![2], vec![1], 0);
        assert_eq!((s.train_threads, s.gen_threads), (3, 2));
        assert_eq!(s.sampling.top_k, Some(20));
    }

    #[test]
    fn sft_writes_the_teacher_data_once_for_all_seeds() {
        let mut teacher = Llama::new(model_config(32, 1, 2, 1), tch::Device::Cpu);
        teacher.init_random(0, 0.02);
        let mut student = Llama::new(model_config(16, 1, 2, 1), tch::Device::Cpu);
        student.init_random(1, 0.02);
        let warm = student.named_parameters();
        let prompts = |ids: std::ops::Range<u64>| -> Vec<Example> {
            ids.map(|i| Example {
                id: PromptId(i),
                prompt: vec![1, 3 + (i % 10) as TokenId, 4],
                answer: Some("00".into()),
            })
            .collect()
        };
        let (train, eval) = (prompts(0..8), prompts(8..10));
        let answer = |_: &[TokenId]| None;
        let mut c = RunConfig::default();
        c.train.steps = 2;
        c.train.rows_per_step = 4;
        c.sampling.max_new_tokens = 3;
        let settings = Settings::from_config(&c, vec![2], vec![1], 0);
        let config = student.config().clone();
        let h = Harness::new(&teacher, config, &warm, (&train, &eval), &answer, settings);
        let first = h.run(Method::Sft, 0, &mut |_| {}).unwrap();
        let written = h.sft_responses.get().unwrap().clone();
        assert_eq!(written.len(), train.len());
        assert!(!first.prep_reused && first.prep_s > 0.0);
        let second = h.run(Method::Sft, 1, &mut |_| {}).unwrap();
        assert!(second.prep_reused && second.prep_s == 0.0);
        assert_eq!(h.sft_responses.get().unwrap(), &written);
    }

    #[test]
    fn prompt_order_visits_every_prompt_once_per_epoch() {
        let order = prompt_order(10, 3);
        let mut seen: Vec<usize> = (0..10).map(&order).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(order(3), order(13));
    }
}
