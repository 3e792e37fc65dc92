//! Configuration machinery shared by every crate's section, and the
//! sections of the stages `npd-core` defines.
//!
//! Each crate keeps its section type beside the component it configures
//! (`FilterConfig` in `npd-filter`, `PackConfig` in `npd-pack`,
//! `RolloutConfig` in `npd-rollout`, ...); a run's configuration file
//! composes them. Every key has a default; unknown keys are rejected; each
//! section's `validate` checks every range with a [`Check`], which names
//! the offending key (`train.lr`) and the file.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The longest time limit a configuration may set, in seconds.
pub const MAX_SECONDS: f64 = 1e6;

/// The most tokens of one sequence (prompt, response or packed row) a
/// configuration may ask for: 2^20, far beyond any model's context.
pub const MAX_TOKENS: usize = 1 << 20;

/// The most rows or prompts of one batch a configuration may ask for.
pub const MAX_BATCH: usize = 1 << 16;

/// The most threads a configuration may ask for.
pub const MAX_THREADS: usize = 1024;

/// The highest sampling or target temperature: above it every token is
/// about equally likely, and the sampler's arithmetic loses its meaning.
pub const MAX_TEMPERATURE: f64 = 100.0;

/// The smallest nucleus mass: below it top-p sampling is greedy decoding,
/// and the value no longer fits the sampler's single precision.
pub const MIN_TOP_P: f64 = 1e-6;

/// Range checks that build [`ConfigError::Invalid`], naming the file and
/// the dotted key.
#[derive(Debug, Clone)]
pub struct Check<'a> {
    origin: &'a str,
    section: String,
}

impl<'a> Check<'a> {
    /// Checks of values read from `origin` (a file name, or `flags`).
    pub fn new(origin: &'a str) -> Self {
        Self {
            origin,
            section: String::new(),
        }
    }

    /// The checks of one section: keys are named `section.key`.
    pub fn section(&self, name: &str) -> Self {
        Self {
            origin: self.origin,
            section: format!("{name}."),
        }
    }

    /// Fails unless `ok`, naming `key`, what was `expected` and what was
    /// `got`.
    pub fn that(
        &self,
        ok: bool,
        key: &str,
        expected: impl Into<String>,
        got: impl std::fmt::Display,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: self.origin.to_string(),
                key: format!("{}{key}", self.section),
                expected: expected.into(),
                got: got.to_string(),
            })
        }
    }

    /// `value >= min`.
    pub fn at_least<T: PartialOrd + std::fmt::Display>(
        &self,
        key: &str,
        value: T,
        min: T,
    ) -> Result<(), ConfigError> {
        let expected = format!("an integer >= {min}");
        self.that(value >= min, key, expected, value)
    }

    /// `min <= value <= max`: a size that is allocated, so an absurd one
    /// is an error here instead of an allocation failure later.
    pub fn between<T: PartialOrd + std::fmt::Display>(
        &self,
        key: &str,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), ConfigError> {
        let expected = format!("an integer from {min} to {max}");
        self.that(value >= min && value <= max, key, expected, value)
    }

    /// A time limit in seconds: finite, `> 0` and at most [`MAX_SECONDS`].
    pub fn seconds(&self, key: &str, value: f64) -> Result<(), ConfigError> {
        self.that(
            value.is_finite() && (0.001..=MAX_SECONDS).contains(&value),
            key,
            format!("a number of seconds from 0.001 to {MAX_SECONDS:e} (about 11 days)"),
            show(value),
        )
    }

    /// A finite `value > 0`.
    pub fn positive(&self, key: &str, value: f64) -> Result<(), ConfigError> {
        self.that(
            value.is_finite() && value > 0.0,
            key,
            "a finite number > 0",
            show(value),
        )
    }

    /// A finite `value >= 0`; `what` says what 0 means, if anything.
    pub fn non_negative(&self, key: &str, value: f64, what: &str) -> Result<(), ConfigError> {
        self.that(
            value.is_finite() && value >= 0.0,
            key,
            format!("a finite number >= 0{what}"),
            show(value),
        )
    }

    /// `value` in the unit interval, each end open or closed.
    pub fn fraction(
        &self,
        key: &str,
        value: f64,
        zero_ok: bool,
        one_ok: bool,
    ) -> Result<(), ConfigError> {
        let lo = if zero_ok { value >= 0.0 } else { value > 0.0 };
        let hi = if one_ok { value <= 1.0 } else { value < 1.0 };
        let expected = format!(
            "a number in {}0, 1{}",
            if zero_ok { "[" } else { "(" },
            if one_ok { "]" } else { ")" }
        );
        self.that(value.is_finite() && lo && hi, key, expected, show(value))
    }
}

/// A number as an error message shows it: in scientific notation when it
/// is very large or very small, so that `1e300` is not 301 digits.
pub fn show(value: f64) -> String {
    let a = value.abs();
    if a != 0.0 && a.is_finite() && !(1e-6..1e9).contains(&a) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// A configuration section: a TOML table with defaults for every key and
/// range checks.
pub trait Section: Serialize + DeserializeOwned + Default {
    /// Its table name in the file (`train`, `filter`, ...).
    const NAME: &'static str;

    /// Checks every value's range; `check` is already scoped to the
    /// section.
    fn validate(&self, check: &Check<'_>) -> Result<(), ConfigError>;
}

/// Parses TOML text into `T`; schema errors (unknown keys, wrong types)
/// carry `origin`, the line and the column.
/// A UTF-8 byte-order mark at the start of `text` (as some editors write)
/// is skipped.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(strip_bom(text)).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// `text` without a leading UTF-8 byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Parses TOML text whose keys override `base` key by key: a key the text
/// leaves out keeps `base`'s value (not the general default). Schema
/// errors are checked against the text alone, so they carry its line and
/// column.
pub fn parse_over<T: Serialize + DeserializeOwned>(
    text: &str,
    origin: &str,
    base: &T,
) -> Result<T, ConfigError> {
    let _: T = parse(text, origin)?;
    let overrides: toml::Table = parse(text, origin)?;
    let mut merged: toml::Table =
        toml::from_str(&to_toml(base)).expect("a serialized value parses");
    merge(&mut merged, overrides);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
}

/// The keys whose values differ between two values of one section.
pub fn changed_keys<T: Serialize>(value: &T, base: &T) -> Vec<String> {
    let table =
        |v: &T| -> toml::Table { toml::from_str(&to_toml(v)).expect("a serialized value parses") };
    let (a, b) = (table(value), table(base));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// `value` as TOML text.
pub fn to_toml<T: Serialize>(value: &T) -> String {
    toml::to_string_pretty(value).expect("configuration values serialize")
}

/// Copies `over` into `base`, table by table, key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// What distillation does with a student response that hit
/// `sampling.max_new_tokens` before a stop id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncated {
    /// Train on it like any other response: the teacher's per-token
    /// targets are as valid on a prefix as on a whole response.
    #[default]
    Train,
    /// Leave it out (NPD closes its prompt as filtered, reason
    /// `truncated`; on-policy trains its step on the other samples).
    Drop,
}

/// How responses are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens before sampling; 0 keeps all.
    pub top_k: usize,
    /// Nucleus sampling mass; 1.0 keeps all.
    pub top_p: f64,
    /// Maximum response length in tokens.
    pub max_new_tokens: usize,
    /// Sampler seed, mixed (XOR) with each run's seed: runs with seeds 0, 1,
    /// ... sample differently, and a different value here changes them all.
    pub seed: u64,
    /// Sequences the in-process evaluation and the teacher's accuracy check
    /// decode at once (their KV cache grows with it).
    pub eval_batch_size: usize,
    /// Student responses that hit `max_new_tokens`: `train` or `drop` (NPD
    /// and on-policy; counted in the report either way).
    pub truncated: Truncated,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 512,
            seed: 0,
            eval_batch_size: 256,
            truncated: Truncated::Train,
        }
    }
}

impl Section for SamplingConfig {
    const NAME: &'static str = "sampling";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.that(
            (0.0..=MAX_TEMPERATURE).contains(&self.temperature),
            "temperature",
            format!("a number in [0, {MAX_TEMPERATURE}] (0 is greedy)"),
            show(self.temperature),
        )?;
        c.that(
            (MIN_TOP_P..=1.0).contains(&self.top_p),
            "top_p",
            format!("a number in [{MIN_TOP_P:e}, 1] (1 keeps every token)"),
            show(self.top_p),
        )?;
        c.between("max_new_tokens", self.max_new_tokens, 1, MAX_TOKENS)?;
        c.between("eval_batch_size", self.eval_batch_size, 1, MAX_BATCH)
    }
}

/// The floating-point type the student trains in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 parameters and activations.
    F32,
    /// bf16 parameters and activations, with f32 master weights and
    /// AdamW moments.
    Bf16,
    /// IEEE half precision: refused for training (it needs loss scaling,
    /// which npd does not do).
    F16,
}

/// The divergence the student is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// KL(teacher ‖ student) over the teacher's top k plus a tail bucket.
    ForwardKl,
    /// KL(student ‖ teacher).
    ReverseKl,
    /// Generalised Jensen-Shannon divergence with weight `jsd_beta`.
    Jsd,
    /// Skew KL (DistiLLM): `KL(teacher ‖ α·teacher + (1 − α)·student)`
    /// with α = `skew_alpha`; bounded where the student puts no mass.
    SkewForwardKl,
    /// Skew reverse KL (DistiLLM): `KL(student ‖ α·student + (1 − α)·teacher)`.
    SkewReverseKl,
    /// Reverse KL estimated from the sampled token alone: the per-token
    /// log-ratio `log q(y) − log p(y)` of the student's own token as a
    /// policy-gradient reward (the on-policy distillation recipe of
    /// Thinking Machines and Qwen3), on the same top-k buckets.
    SampledReverseKl,
    /// Cross-entropy on the sampled tokens only.
    Ce,
}

/// Optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Packed rows per optimizer step (one accumulation window).
    pub rows_per_step: usize,
    /// Rows per forward/backward pass; `rows_per_step` must be a multiple.
    pub micro_batch_rows: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW first-moment decay.
    pub beta1: f64,
    /// AdamW second-moment decay.
    pub beta2: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    pub grad_clip: f64,
    /// Training divergence.
    pub loss: LossKind,
    /// Weight of an added cross-entropy term on the response tokens.
    pub ce_weight: f64,
    /// Teacher top-k entries kept per position.
    pub top_k: usize,
    /// Interpolation weight of the generalised JSD.
    pub jsd_beta: f64,
    /// Skew of the skew KL losses (DistiLLM's α).
    pub skew_alpha: f64,
    /// Temperature of the distillation targets: teacher and student
    /// distributions are both softened by it in the loss. Apart from
    /// `sampling.temperature`, which only shapes the rollouts.
    pub target_temperature: f64,
    /// Fraction of each on-policy step's samples that are teacher-written
    /// responses (greedy, as SFT's) instead of the student's own; GKD's
    /// student-data fraction λ is `1 - teacher_fraction`.
    pub teacher_fraction: f64,
    /// Abort after this many consecutive steps with a non-finite loss.
    pub max_nonfinite_steps: u32,
    /// The student's parameters and activations while training: `f32`, or
    /// `bf16` with f32 master weights and optimizer moments.
    pub precision: Precision,
    /// Recompute each decoder block's activations in the backward pass
    /// instead of keeping them (activation checkpointing per block): less
    /// memory, about one more forward of compute.
    pub recompute: bool,
    /// Loss targets whose logits are computed at once: the lm-head and
    /// loss run over chunks of this many targets, so `[targets, vocab]`
    /// logits never exist for a whole micro-batch; 0: all at once.
    pub loss_chunk_tokens: usize,
    /// libtorch intra-op threads of the training thread (teacher scoring
    /// and optimizer steps); 0 uses every core (NPD's generating thread
    /// runs beside it with `rollout.threads`).
    pub threads: usize,
    /// Seed of the prompt order, mixed (XOR) with each run's seed (and of
    /// libtorch's generator in the libtorch backend).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            rows_per_step: 8,
            micro_batch_rows: 1,
            lr: 2e-5,
            min_lr: 2e-6,
            warmup_steps: 200,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            loss: LossKind::ForwardKl,
            ce_weight: 0.0,
            top_k: 20,
            jsd_beta: 0.5,
            skew_alpha: 0.1,
            target_temperature: 1.0,
            teacher_fraction: 0.0,
            max_nonfinite_steps: 5,
            precision: Precision::F32,
            recompute: false,
            loss_chunk_tokens: 4096,
            threads: 0,
            seed: 0,
        }
    }
}

impl Section for TrainConfig {
    const NAME: &'static str = "train";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between("steps", self.steps, 1, 1 << 40)?;
        c.between("micro_batch_rows", self.micro_batch_rows, 1, MAX_BATCH)?;
        c.between("rows_per_step", self.rows_per_step, 1, MAX_BATCH)?;
        c.that(
            self.rows_per_step >= self.micro_batch_rows
                && self.rows_per_step.is_multiple_of(self.micro_batch_rows),
            "rows_per_step",
            format!(
                "a multiple of train.micro_batch_rows ({})",
                self.micro_batch_rows
            ),
            self.rows_per_step,
        )?;
        c.positive("lr", self.lr)?;
        c.that(
            self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr,
            "min_lr",
            format!("a number in [0, train.lr = {}]", self.lr),
            self.min_lr,
        )?;
        c.non_negative("weight_decay", self.weight_decay, "")?;
        c.fraction("beta1", self.beta1, true, false)?;
        c.fraction("beta2", self.beta2, true, false)?;
        c.non_negative("grad_clip", self.grad_clip, " (0 turns clipping off)")?;
        c.non_negative("ce_weight", self.ce_weight, "")?;
        c.between("top_k", self.top_k, 1, MAX_TOKENS)?;
        c.between("loss_chunk_tokens", self.loss_chunk_tokens, 0, MAX_TOKENS)?;
        c.that(
            self.precision != Precision::F16,
            "precision",
            "\"f32\" or \"bf16\" (f16 training needs loss scaling, which npd does not do; \
             bf16 has f32's range and needs none)",
            "\"f16\"",
        )?;
        c.between("threads", self.threads, 0, MAX_THREADS)?;
        c.fraction("jsd_beta", self.jsd_beta, false, false)?;
        c.fraction("skew_alpha", self.skew_alpha, false, false)?;
        c.that(
            self.target_temperature > 0.0 && self.target_temperature <= MAX_TEMPERATURE,
            "target_temperature",
            format!("a number in (0, {MAX_TEMPERATURE}]"),
            self.target_temperature,
        )?;
        c.fraction("teacher_fraction", self.teacher_fraction, true, false)?;
        c.at_least("max_nonfinite_steps", self.max_nonfinite_steps, 1)
    }
}

/// How GRPO scales a group's centred rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvantageNorm {
    /// Divide by the group's standard deviation (GRPO, DAPO).
    #[default]
    GroupStd,
    /// Centre only (Dr. GRPO: no difficulty bias toward prompts that are
    /// almost always right or almost always wrong).
    Centred,
}

/// The RL stage after distillation: GRPO with a verifiable reward (the
/// methods `rl`, `sft+rl`, `on-policy+rl` and `npd+rl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// A model folder (`config.json` and safetensors of the run's student
    /// architecture) the method `rl` starts from instead of the warm start,
    /// for example a checkpoint's `model/` of an earlier run; empty: the
    /// warm start.
    pub from: std::path::PathBuf,
    /// Optimizer steps of the RL stage.
    pub steps: u64,
    /// Responses sampled per prompt (G).
    pub group_size: usize,
    /// Prompts per optimizer step.
    pub prompts_per_step: usize,
    /// Learning rate (constant after the warm-up).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    pub grad_clip: f64,
    /// Sampling temperature of the rollouts (the surrogate's ratios are
    /// taken at temperature 1, so other values train slightly off-policy).
    pub temperature: f64,
    /// Nucleus mass of the rollouts.
    pub top_p: f64,
    /// The generator gets the learner's weights every this many steps (1 is
    /// strictly on-policy; K > 1 trains on responses at most K - 1 steps
    /// old, the importance ratio correcting for the lag).
    pub refresh_every: u64,
    /// How a group's rewards become advantages.
    pub advantage: AdvantageNorm,
    /// Lower clip of the importance ratio: `1 - clip_low`.
    pub clip_low: f64,
    /// Upper clip of the importance ratio: `1 + clip_high` (DAPO's
    /// clip-higher when above `clip_low`).
    pub clip_high: f64,
    /// Weight of the KL penalty (k3 estimator) toward the stage's starting
    /// weights; 0 turns it off and no reference is scored.
    pub kl: f64,
    /// DAPO's soft overlong penalty: a response longer than
    /// `sampling.max_new_tokens - overlong_buffer` tokens loses up to
    /// `overlong_penalty` reward, linearly over the buffer; 0 turns it off.
    pub overlong_buffer: usize,
    /// The most reward the overlong penalty takes.
    pub overlong_penalty: f64,
    /// Prompt batches drawn for one step while every group of a batch had
    /// equal rewards; when all of them had, the step trains nothing.
    pub max_draws: usize,
    /// Steps between held-out evaluations (the last step is always
    /// evaluated).
    pub eval_every: u64,
    /// Responses sampled per held-out prompt for pass@k.
    pub eval_samples: usize,
    /// Held-out prompts of the sampled evaluation (greedy accuracy uses all).
    pub eval_prompts: usize,
    /// The k of pass@k in the report (each at most `eval_samples`).
    pub pass_k: Vec<usize>,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            from: std::path::PathBuf::new(),
            steps: 300,
            group_size: 8,
            prompts_per_step: 16,
            lr: 2e-5,
            warmup_steps: 10,
            grad_clip: 1.0,
            temperature: 1.0,
            top_p: 1.0,
            refresh_every: 1,
            advantage: AdvantageNorm::GroupStd,
            clip_low: 0.2,
            clip_high: 0.28,
            kl: 0.0,
            overlong_buffer: 0,
            overlong_penalty: 1.0,
            max_draws: 4,
            eval_every: 50,
            eval_samples: 16,
            eval_prompts: 256,
            pass_k: vec![1, 4, 16],
        }
    }
}

impl Section for RlConfig {
    const NAME: &'static str = "rl";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between("steps", self.steps, 1, 1 << 40)?;
        c.between("group_size", self.group_size, 2, MAX_BATCH)?;
        c.between("prompts_per_step", self.prompts_per_step, 1, MAX_BATCH)?;
        c.positive("lr", self.lr)?;
        c.between("warmup_steps", self.warmup_steps, 0, 1 << 40)?;
        c.non_negative("grad_clip", self.grad_clip, " (0 turns clipping off)")?;
        c.that(
            self.temperature > 0.0 && self.temperature <= MAX_TEMPERATURE,
            "temperature",
            format!("a number in (0, {MAX_TEMPERATURE}] (GRPO needs groups that differ)"),
            show(self.temperature),
        )?;
        c.that(
            (MIN_TOP_P..=1.0).contains(&self.top_p),
            "top_p",
            format!("a number in [{MIN_TOP_P:e}, 1]"),
            show(self.top_p),
        )?;
        c.between("refresh_every", self.refresh_every, 1, 1 << 20)?;
        c.fraction("clip_low", self.clip_low, false, true)?;
        c.that(
            self.clip_high > 0.0 && self.clip_high <= 10.0,
            "clip_high",
            "a number in (0, 10]",
            show(self.clip_high),
        )?;
        c.non_negative("kl", self.kl, " (0 turns the penalty off)")?;
        c.between("overlong_buffer", self.overlong_buffer, 0, MAX_TOKENS)?;
        c.non_negative("overlong_penalty", self.overlong_penalty, "")?;
        c.between("max_draws", self.max_draws, 1, 1024)?;
        c.between("eval_every", self.eval_every, 1, 1 << 40)?;
        c.between("eval_samples", self.eval_samples, 1, 4096)?;
        c.between("eval_prompts", self.eval_prompts, 1, MAX_BATCH)?;
        c.that(
            !self.pass_k.is_empty()
                && self
                    .pass_k
                    .iter()
                    .all(|&k| k >= 1 && k <= self.eval_samples),
            "pass_k",
            format!(
                "a non-empty list of k in [1, rl.eval_samples = {}]",
                self.eval_samples
            ),
            format!("{:?}", self.pass_k),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_check_names_the_dotted_key_and_the_file() {
        let t = TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        };
        let err = t
            .validate(&Check::new("run.toml").section("train"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("run.toml: `train.lr` = -1"), "{err}");
        let over: SamplingConfig =
            parse_over("top_k = 5\n", "t.toml", &SamplingConfig::default()).unwrap();
        assert_eq!((over.top_k, over.max_new_tokens), (5, 512));
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let t: TrainConfig = parse("\u{feff}lr = 0.5\n", "t.toml").unwrap();
        assert_eq!(t.lr, 0.5);
        let over: SamplingConfig =
            parse_over("\u{feff}top_k = 5\n", "t.toml", &SamplingConfig::default()).unwrap();
        assert_eq!(over.top_k, 5);
    }
}
