//! The libtorch backend of a comparison: [`TchStages`] builds each method
//! run's learner, generator, teacher and evaluator from one teacher, one
//! warm-started student and the held-out prompts, for
//! [`npd_pipeline::Comparison`].

use std::collections::HashMap;

use npd_core::config::{LossKind, RlConfig, TrainConfig};
use npd_core::reward::Reward;
use npd_core::traits::{Generator, ScoreOptions, ScoreRequest, Scorer, SequenceScores};
use npd_core::{
    Error, Method, PolicyVersion, Prompt, PromptId, Result, Rollout, SamplingParams, TokenId,
};
use npd_pipeline::grpo::RewardFn;
use npd_pipeline::{RlStart, Stages};

use crate::config::ModelConfig;
use crate::data::Example;
use crate::eval::{AnswerFn, HeldOut};
use crate::generate::{Decoding, generate};
use crate::generator::{ModelGenerator, Weights, load_weights};
use crate::model::Llama;
use crate::score::ModelScorer;
use crate::train::{Layout, TrainOptions, Trainer};
use crate::weights::TensorStore;
use npd_pack::BaselineRows;

/// libtorch intra-op threads per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// The training thread (also SFT's and on-policy's generation and
    /// scoring, and every phase of NPD's colocated schedule, which run on
    /// it).
    pub train: i32,
    /// NPD's generation.
    pub generate: i32,
}

impl Threads {
    /// From `train.threads` (0: every core libtorch sees) and
    /// `rollout.threads` (0: one thread, since NPD's generation overlaps
    /// training), for NPD's disaggregated schedule.
    pub fn new(train: usize, generate: usize) -> Self {
        let cores = tch::get_num_threads().max(1);
        let threads = |n: usize, zero: i32| match n {
            0 => zero,
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        Self {
            train: threads(train, cores),
            generate: threads(generate, 1),
        }
    }

    /// As [`Threads::new`], for the schedule NPD runs: with `colocated`
    /// generation runs in turn with scoring and training on the training
    /// thread, so it gets the training thread's budget (`rollout.threads`
    /// is for a generating thread of its own).
    pub fn for_schedule(train: usize, generate: usize, colocated: bool) -> Self {
        let t = Self::new(train, generate);
        if colocated {
            Self {
                generate: t.train,
                ..t
            }
        } else {
            t
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

/// The teacher writing responses greedily (SFT's data).
pub struct TeacherWriter<'a> {
    model: &'a Llama,
}

impl Generator for TeacherWriter<'_> {
    type Weights = ();

    fn version(&self) -> PolicyVersion {
        0
    }

    fn load(&mut self, _: (), _: PolicyVersion) -> Result<()> {
        Err(Error::invalid("teacher", "its weights are fixed"))
    }

    fn generate(&mut self, prompts: &[Prompt], params: &SamplingParams) -> Result<Vec<Rollout>> {
        let tokens: Vec<Vec<TokenId>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        let out = tch::no_grad(|| generate(self.model, &tokens, params, Decoding::Cached))?;
        Ok(prompts
            .iter()
            .zip(out)
            .map(|(p, g)| Rollout {
                prompt_id: p.id,
                prompt: p.tokens.clone(),
                response: g.tokens,
                response_logprobs: g.logprobs,
                response_alone_logprobs: Vec::new(),
                policy_version: 0,
                finish: g.finish,
            })
            .collect())
    }
}

/// A teacher, a warm-started student and held-out prompts as the stages of
/// a comparison.
pub struct TchStages<'a> {
    teacher: &'a Llama,
    student: ModelConfig,
    warm_start: &'a Weights,
    eval: &'a [Example],
    answer: &'a AnswerFn<'a>,
    train: TrainOptions,
    /// `train.seed`, mixed into each run's libtorch seed.
    train_seed: u64,
    threads: Threads,
    eval_tokens: usize,
    eval_batch: usize,
    stop_ids: Vec<TokenId>,
    alone_prefix: Option<Vec<TokenId>>,
    student_config_json: Option<String>,
    student_files: std::sync::Arc<Vec<(String, Vec<u8>)>>,
    baselines: BaselineRows,
    /// The RL stage's optimizer and policy loss.
    rl: TrainOptions,
    /// Reference answers of the training prompts (the RL stage's reward).
    train_answers: HashMap<PromptId, String>,
    /// Where the student trains, generates and is evaluated (the teacher's
    /// device unless set).
    student_device: tch::Device,
}

/// The RL stage's settings as a trainer's options: `[rl]`'s learning rate
/// (constant after its warm-up), clip range and KL weight, no weight
/// decay, packed rows, the micro-batch of `train`.
pub fn rl_options(train: &TrainConfig, rl: &RlConfig) -> TrainOptions {
    let mut o = TrainOptions::from_config(&TrainConfig {
        steps: rl.steps,
        lr: rl.lr,
        min_lr: rl.lr,
        warmup_steps: rl.warmup_steps,
        weight_decay: 0.0,
        grad_clip: rl.grad_clip,
        ..train.clone()
    });
    o.layout = Layout::Packed;
    o.policy_clip = (rl.clip_low, rl.clip_high);
    o.policy_kl = rl.kl;
    o
}

/// A scorer over fixed weights it owns (the RL stage's reference).
pub struct Reference {
    model: Llama,
}

impl Scorer for Reference {
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        ModelScorer::new(&self.model).score(requests, options)
    }
}

impl<'a> TchStages<'a> {
    /// Stages from `teacher` and a student of architecture `student` at
    /// `warm_start`, trained as `train` says, evaluated on `eval` with
    /// `answer` (greedy responses of at most `eval_tokens` tokens, ended by
    /// `stop_ids`). Teacher and student must share the vocabulary and
    /// special tokens, and `eval` must not be empty. Threads default to
    /// [`Threads::new`]`(0, 0)`.
    pub fn new(
        teacher: &'a Llama,
        (student, warm_start): (ModelConfig, &'a Weights),
        (eval, answer): (&'a [Example], &'a AnswerFn<'a>),
        train: &TrainConfig,
        (eval_tokens, stop_ids): (usize, Vec<TokenId>),
    ) -> Result<Self> {
        check_compatible(teacher.config(), &student)?;
        if eval.is_empty() {
            return Err(Error::invalid("dataset", "no evaluation prompts"));
        }
        Ok(Self {
            teacher,
            student,
            warm_start,
            eval,
            answer,
            train: TrainOptions::from_config(train),
            train_seed: train.seed,
            threads: Threads::new(0, 0),
            eval_tokens,
            eval_batch: crate::eval::EVAL_BATCH,
            stop_ids,
            alone_prefix: None,
            student_config_json: None,
            student_files: Default::default(),
            baselines: BaselineRows::default(),
            rl: rl_options(train, &RlConfig::default()),
            train_answers: HashMap::new(),
            student_device: teacher.device(),
        })
    }

    /// The student on `device`, the teacher staying on its own (for
    /// example the teacher on `cuda:0` and the student on `cuda:1`).
    pub fn with_student_device(mut self, device: tch::Device) -> Self {
        self.student_device = device;
        self
    }

    /// The RL stage: `rl`'s optimizer and loss (see [`rl_options`]), and
    /// the reward of a response to one of `train`: 1 when its final answer
    /// (as the evaluation extracts it) is the example's, else 0.
    pub fn with_rl(mut self, train: &TrainConfig, rl: &RlConfig, examples: &[Example]) -> Self {
        self.rl = rl_options(train, rl);
        self.train_answers = examples
            .iter()
            .filter_map(|e| e.answer.clone().map(|a| (e.id, a)))
            .collect();
        self
    }

    /// NPD's generator also scores each response alone after `prefix`
    /// (the student's Δ-IFD terms); set it when the filter is on.
    pub fn with_alone_prefix(mut self, prefix: Option<Vec<TokenId>>) -> Self {
        self.alone_prefix = prefix;
        self
    }

    /// Files written into every checkpoint's model folder beside
    /// `config.json` and the weights (the student folder's tokenizer and
    /// `auto_map` modules; see [`crate::folder::companion_files`]).
    pub fn with_student_files(mut self, files: Vec<(String, Vec<u8>)>) -> Self {
        self.student_files = std::sync::Arc::new(files);
        self
    }

    /// The student's own `config.json`, written into its checkpoints.
    pub fn with_student_config_json(mut self, json: Option<String>) -> Self {
        self.student_config_json = json;
        self
    }

    /// How the pipeline lays out SFT's and on-policy's rows
    /// (`pack.baselines`; packed unless set): their trainers read the same
    /// layout.
    pub fn with_baselines(mut self, rows: BaselineRows) -> Self {
        self.baselines = rows;
        self
    }

    /// Sequences evaluation decodes at once (`sampling.eval_batch_size`).
    pub fn with_eval_batch(mut self, batch: usize) -> Self {
        self.eval_batch = batch.max(1);
        self
    }

    /// The thread budget of each role.
    pub fn with_threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// The prefix of NPD's response-alone passes, when the filter needs
    /// them (see [`TchStages::with_alone_prefix`]).
    pub fn alone_prefix(&self) -> Option<&[TokenId]> {
        self.alone_prefix.as_deref()
    }

    /// See [`TchStages::with_threads`].
    pub fn threads(&self) -> Threads {
        self.threads
    }

    fn student(&self) -> Result<Llama> {
        let mut m = Llama::new(self.student.clone(), self.student_device);
        load_weights(&mut m, self.warm_start)?;
        Ok(m)
    }
}

impl<'a> Stages for TchStages<'a> {
    type Weights = Weights;
    type Learner = Trainer;
    type Generator = ModelGenerator;
    type Teacher = ModelScorer<'a>;
    type Writer = TeacherWriter<'a>;
    type Evaluator = HeldOut<'a>;
    type Reference = Reference;

    /// Sets the training thread's libtorch threads and seed, then builds a
    /// trainer at the warm start: packed rows for NPD, the layout of
    /// [`TchStages::with_baselines`] for SFT and on-policy; SFT trains with
    /// cross-entropy whatever the distillation loss.
    fn learner(&self, method: Method, seed: u64) -> npd_pipeline::Result<Trainer> {
        tch::set_num_threads(self.threads.train);
        tch::manual_seed((seed ^ self.train_seed) as i64);
        let mut options = self.train.clone();
        options.layout = match method {
            Method::NearPolicy => Layout::Packed,
            m if m.is_rl() => Layout::Packed,
            _ => match self.baselines {
                BaselineRows::Packed => Layout::Packed,
                BaselineRows::Padded => Layout::Padded,
            },
        };
        if method == Method::Sft {
            options.loss = LossKind::Ce;
            options.ce_weight = 0.0;
        }
        Ok(Trainer::new(self.student()?, options)
            .with_config_json(self.student_config_json.clone())
            .with_companion_files(self.student_files.clone()))
    }

    /// The generator runs in the student's training precision, so its
    /// log-probs are the policy the trainer holds.
    fn generator(&self, method: Method) -> npd_pipeline::Result<ModelGenerator> {
        let mut model = Llama::new(self.student.clone(), self.student_device);
        model.set_kind(self.train.precision);
        let generator = ModelGenerator::new(model, 0);
        Ok(match method {
            Method::NearPolicy => {
                let g = generator.with_threads(self.threads.generate);
                match &self.alone_prefix {
                    Some(prefix) => g.with_alone_prefix(prefix.clone()),
                    None => g,
                }
            }
            _ => generator,
        })
    }

    /// A trainer with [`TchStages::with_rl`]'s options and a fresh
    /// optimizer, at the warm start, a checkpoint's `model/` folder or a
    /// model folder, every tensor checked by name and shape against this
    /// run's student.
    fn rl_learner(
        &self,
        _method: Method,
        seed: u64,
        start: RlStart<'_>,
    ) -> npd_pipeline::Result<Trainer> {
        tch::set_num_threads(self.threads.train);
        tch::manual_seed((seed ^ self.train_seed) as i64);
        let folder = match start {
            RlStart::WarmStart => None,
            RlStart::Checkpoint(dir) => Some(dir.join(crate::checkpoint::MODEL_DIR)),
            RlStart::Model(dir) => Some(dir.to_path_buf()),
        };
        let model = match folder {
            Some(dir) => {
                let mut m = Llama::new(self.student.clone(), self.student_device);
                let mut store = TensorStore::open(&dir)?;
                m.load_from(&mut store)?;
                m
            }
            None => self.student()?,
        };
        Ok(Trainer::new(model, self.rl.clone())
            .with_config_json(self.student_config_json.clone())
            .with_companion_files(self.student_files.clone()))
    }

    fn reference(&self, learner: &Trainer) -> npd_pipeline::Result<Reference> {
        let mut model = Llama::new(self.student.clone(), self.student_device);
        model.set_kind(self.rl.precision);
        let weights: Weights = tch::no_grad(|| {
            (learner.model().named_parameters().into_iter())
                .map(|(n, t)| (n, t.detach().copy()))
                .collect()
        });
        load_weights(&mut model, &weights)?;
        Ok(Reference { model })
    }

    fn reward(&self) -> npd_pipeline::Result<Box<RewardFn<'_>>> {
        if self.train_answers.is_empty() {
            return Err(Error::invalid(
                "data.prompts",
                "the RL stage rewards answers, and no training prompt has one",
            )
            .into());
        }
        let answers = &self.train_answers;
        let answer = self.answer;
        Ok(Box::new(move |r: &Rollout| {
            let found = answer(&r.response);
            match answers.get(&r.prompt_id) {
                Some(want) if found.as_deref() == Some(want.as_str()) => Reward {
                    value: 1.0,
                    reason: format!("answer {want}"),
                },
                Some(want) => Reward {
                    value: 0.0,
                    reason: format!("answer {found:?}, expected {want}"),
                },
                None => Reward {
                    value: 0.0,
                    reason: format!("prompt {} has no reference answer", r.prompt_id),
                },
            }
        }))
    }

    fn teacher(&self) -> npd_pipeline::Result<ModelScorer<'a>> {
        Ok(ModelScorer::new(self.teacher))
    }

    fn writer(&self) -> npd_pipeline::Result<TeacherWriter<'a>> {
        Ok(TeacherWriter {
            model: self.teacher,
        })
    }

    fn evaluator(&self) -> npd_pipeline::Result<HeldOut<'a>> {
        Ok(HeldOut::new(
            self.eval,
            self.answer,
            self.eval_tokens,
            self.stop_ids.clone(),
        )
        .with_batch(self.eval_batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_config(hidden: usize, layers: usize, heads: usize, kv: usize) -> ModelConfig {
        let json = format!(
            r#"{{"model_type": "PanguEmbedded", "vocab_size": 32, "hidden_size": {hidden},
            "intermediate_size": {}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
            "num_key_value_heads": {kv}, "bias": true, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}}"#,
            hidden * 4
        );
        ModelConfig::from_json(&json, "test").unwrap()
    }

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
    fn threads_follow_the_configuration() {
        let t = Threads::new(0, 0);
        assert_eq!(t.generate, 1);
        assert_eq!(t.train, tch::get_num_threads().max(1));
        assert_eq!(
            Threads::new(3, 2),
            Threads {
                train: 3,
                generate: 2
            }
        );
    }

    #[test]
    fn colocated_generation_gets_the_training_threads() {
        let t = Threads::for_schedule(2, 0, true);
        assert_eq!(
            t,
            Threads {
                train: 2,
                generate: 2
            }
        );
        let t = Threads::for_schedule(2, 0, false);
        assert_eq!(
            t,
            Threads {
                train: 2,
                generate: 1
            }
        );
    }

    /// Each stage reads its own budget: generation with the generator's,
    /// and whatever runs after it on the same thread (scoring, training)
    /// with the thread's own again.
    #[test]
    fn each_stage_runs_with_its_own_threads() {
        tch::set_num_threads(2);
        let mut model = Llama::new(model_config(32, 1, 2, 1), tch::Device::Cpu);
        model.init_random(0, 0.02);
        let scorer_model = Llama::new(model_config(32, 1, 2, 1), tch::Device::Cpu);
        let mut g = ModelGenerator::new(model, 0).with_threads(1);
        let prompt = Prompt {
            id: npd_core::PromptId(0),
            tokens: vec![1, 5, 6],
        };
        let params = SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            max_new_tokens: 3,
            stop_ids: vec![2],
            seed: 0,
        };
        g.generate(std::slice::from_ref(&prompt), &params).unwrap();
        assert_eq!(g.last_threads(), Some(1), "generation's budget");
        assert_eq!(tch::get_num_threads(), 2, "the thread's budget is back");
        // The scorer (the teacher stage) and the trainer run on the
        // caller's budget.
        let seq: Vec<TokenId> = vec![1, 5, 6, 7];
        ModelScorer::new(&scorer_model)
            .response_scores(&[(seq.as_slice(), 2)], Some(2))
            .unwrap();
        assert_eq!(tch::get_num_threads(), 2);
    }
}
