//! The run configuration, read from TOML.
//!
//! Every key has a default, so an empty file is a valid configuration; unknown
//! keys are rejected; [`RunConfig::validate`] checks every range and names the
//! offending key. `docs/config.example.toml` lists every key with its
//! documentation and default value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// A whole run: models, data, rollouts, filtering, packing, training, output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Teacher and student models and where they run.
    pub model: ModelConfig,
    /// Prompt data.
    pub data: DataConfig,
    /// The asynchronous rollout engine.
    pub rollout: RolloutConfig,
    /// How responses are sampled.
    pub sampling: SamplingConfig,
    /// Δ-IFD selection.
    pub filter: FilterConfig,
    /// Sequence packing.
    pub pack: PackConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Output folder, checkpoints and metrics.
    pub output: OutputConfig,
}

/// Teacher and student models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Folder of the teacher (Hugging Face layout: config.json, safetensors,
    /// tokenizer). Empty: the embedded demo teacher.
    pub teacher: PathBuf,
    /// Folder of the student, same layout. Empty: the embedded demo student.
    pub student: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Compute dtype: `f32`, `bf16` or `f16`.
    pub dtype: Dtype,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            teacher: PathBuf::new(),
            student: PathBuf::new(),
            device: "cpu".into(),
            dtype: Dtype::F32,
        }
    }
}

/// Floating-point type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

/// Prompt data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// JSONL file of prompts. Empty: the embedded demo task.
    pub prompts: PathBuf,
    /// Prompts longer than this many tokens are rejected (and counted).
    pub max_prompt_tokens: usize,
    /// Fraction of prompts held out for evaluation.
    pub eval_fraction: f64,
    /// Seed of the train/eval split and of data shuffling.
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            prompts: PathBuf::new(),
            max_prompt_tokens: 1024,
            eval_fraction: 0.05,
            seed: 0,
        }
    }
}

/// The asynchronous rollout engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Sparse refresh: generators swap to new student weights every this many
    /// optimizer steps.
    pub refresh_every: u64,
    /// Staleness bound, in refreshes: a rollout is not started if it would
    /// be trained on more than this many refreshes after the snapshot that
    /// writes it was replaced, so no trained sample is more than
    /// `max_lag * refresh_every` optimizer steps old (the unit the report's
    /// staleness histogram uses). At least 1.
    pub max_lag: u64,
    /// Finished rollouts buffered ahead of scoring; generators wait when full.
    pub queue_capacity: usize,
    /// Prompts a generator takes per batch.
    pub batch_size: usize,
    /// How many times each kept sample may be trained on.
    pub reuse: usize,
    /// libtorch intra-op threads of the generating thread; 0 picks one
    /// thread on CPU (generation overlaps training there).
    pub threads: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            refresh_every: 50,
            max_lag: 2,
            queue_capacity: 1024,
            batch_size: 64,
            reuse: 1,
            threads: 0,
        }
    }
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
    /// Sampler seed.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 512,
            seed: 0,
        }
    }
}

/// How an IFD score is formed from mean token losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IfdConvention {
    /// `s(y|x) / s(y)`, the ratio of mean cross-entropies (Li et al. 2023).
    LossRatio,
    /// `exp(s(y|x) - s(y))`, the ratio of perplexities.
    PerplexityRatio,
}

/// How the teacher's and student's IFD combine into the filter score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaForm {
    /// `IFD_teacher - IFD_student`.
    Difference,
    /// `IFD_teacher / IFD_student`.
    Ratio,
    /// `IFD_student_now - IFD_snapshot`: how far the current student has moved
    /// from the snapshot that wrote the response.
    Staleness,
}

/// Δ-IFD selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Turn filtering off to train on every well-formed sample.
    pub enabled: bool,
    /// IFD convention.
    pub convention: IfdConvention,
    /// Score form.
    pub form: DeltaForm,
    /// Drop scores below this percentile of the recent scores (0 keeps the
    /// lower tail).
    pub lower_percentile: f64,
    /// Drop scores above this percentile of the recent scores (1 keeps the
    /// upper tail).
    pub upper_percentile: f64,
    /// Number of recent scores the percentiles are taken over.
    pub window: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            convention: IfdConvention::LossRatio,
            form: DeltaForm::Difference,
            lower_percentile: 0.0,
            upper_percentile: 0.9,
            window: 4096,
        }
    }
}

/// What to do with a sample longer than a packed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OversizePolicy {
    /// Fail with an error naming the sample.
    Reject,
    /// Cut the response to fit.
    Truncate,
}

/// Sequence packing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackConfig {
    /// Tokens per packed row.
    pub capacity: usize,
    /// Samples longer than `capacity`.
    pub oversize: OversizePolicy,
    /// Streaming packing emits a row once this fraction of it is filled.
    pub min_fill: f64,
    /// Streaming packing keeps at most this many rows open; when one more is
    /// needed, the fullest is emitted.
    pub max_open_rows: usize,
}

impl Default for PackConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            oversize: OversizePolicy::Reject,
            min_fill: 0.98,
            max_open_rows: 16,
        }
    }
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
    /// Abort after this many consecutive steps with a non-finite loss.
    pub max_nonfinite_steps: u32,
    /// libtorch intra-op threads of the training thread (teacher scoring
    /// and optimizer steps); 0 uses every core (NPD's generating thread
    /// runs beside it with `rollout.threads`).
    pub threads: usize,
    /// Seed of parameter initialisation and data order.
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
            max_nonfinite_steps: 5,
            threads: 0,
            seed: 0,
        }
    }
}

/// Output folder, checkpoints and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder for checkpoints, `metrics.jsonl` and the report.
    pub dir: PathBuf,
    /// Write a checkpoint every this many optimizer steps (and at the end).
    pub checkpoint_every: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/npd"),
            checkpoint_every: 100,
        }
    }
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

impl RunConfig {
    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads a TOML file whose keys override `base` key by key: a key the
    /// file leaves out keeps `base`'s value (not the general default).
    /// Unknown keys and wrong types are reported with the file's line and
    /// column; ranges are checked on the result.
    pub fn from_file_over(path: &Path, base: &RunConfig) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_over(&text, &path.display().to_string(), base)
    }

    /// [`RunConfig::from_file_over`] on TOML text; `origin` names it in
    /// errors.
    pub fn from_toml_over(text: &str, origin: &str, base: &RunConfig) -> Result<Self, ConfigError> {
        // Schema errors first, against the file alone, so they carry its
        // line and column.
        let _: RunConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let overrides: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut merged: toml::Table =
            toml::from_str(&base.to_toml()).expect("a serialized RunConfig parses");
        merge(&mut merged, overrides);
        let config: RunConfig =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_string(),
                    message: e.to_string().trim_end().to_string(),
                })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("RunConfig always serializes")
    }

    /// Checks every value's range; the error names the key.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let c = Check { origin };
        let m = &self.model;
        let device_ok = m.device == "cpu"
            || m.device == "cuda"
            || m.device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        c.that(
            device_ok,
            "model.device",
            "`cpu`, `cuda` or `cuda:N`",
            &m.device,
        )?;

        let d = &self.data;
        c.at_least("data.max_prompt_tokens", d.max_prompt_tokens, 1)?;
        c.fraction("data.eval_fraction", d.eval_fraction, true, false)?;

        let r = &self.rollout;
        c.at_least("rollout.refresh_every", r.refresh_every, 1)?;
        c.at_least("rollout.max_lag", r.max_lag, 1)?;
        c.at_least("rollout.queue_capacity", r.queue_capacity, 1)?;
        c.at_least("rollout.batch_size", r.batch_size, 1)?;
        c.at_least("rollout.reuse", r.reuse, 1)?;

        let s = &self.sampling;
        c.that(
            s.temperature.is_finite() && s.temperature >= 0.0,
            "sampling.temperature",
            "a finite number >= 0 (0 is greedy)",
            s.temperature,
        )?;
        c.fraction("sampling.top_p", s.top_p, false, true)?;
        c.at_least("sampling.max_new_tokens", s.max_new_tokens, 1)?;

        let f = &self.filter;
        c.fraction("filter.lower_percentile", f.lower_percentile, true, true)?;
        c.fraction("filter.upper_percentile", f.upper_percentile, true, true)?;
        c.that(
            f.lower_percentile < f.upper_percentile,
            "filter.upper_percentile",
            format!(
                "a value above filter.lower_percentile ({})",
                f.lower_percentile
            ),
            f.upper_percentile,
        )?;
        c.at_least("filter.window", f.window, 1)?;

        let p = &self.pack;
        c.at_least("pack.capacity", p.capacity, 2)?;
        c.fraction("pack.min_fill", p.min_fill, false, true)?;
        c.at_least("pack.max_open_rows", p.max_open_rows, 1)?;

        let t = &self.train;
        c.at_least("train.steps", t.steps, 1)?;
        c.at_least("train.micro_batch_rows", t.micro_batch_rows, 1)?;
        c.that(
            t.rows_per_step >= t.micro_batch_rows && t.rows_per_step % t.micro_batch_rows == 0,
            "train.rows_per_step",
            format!(
                "a multiple of train.micro_batch_rows ({})",
                t.micro_batch_rows
            ),
            t.rows_per_step,
        )?;
        c.positive("train.lr", t.lr)?;
        c.that(
            t.min_lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr,
            "train.min_lr",
            format!("a number in [0, train.lr = {}]", t.lr),
            t.min_lr,
        )?;
        c.that(
            t.weight_decay.is_finite() && t.weight_decay >= 0.0,
            "train.weight_decay",
            "a finite number >= 0",
            t.weight_decay,
        )?;
        c.fraction("train.beta1", t.beta1, true, false)?;
        c.fraction("train.beta2", t.beta2, true, false)?;
        c.that(
            t.grad_clip.is_finite() && t.grad_clip >= 0.0,
            "train.grad_clip",
            "a finite number >= 0 (0 turns clipping off)",
            t.grad_clip,
        )?;
        c.that(
            t.ce_weight.is_finite() && t.ce_weight >= 0.0,
            "train.ce_weight",
            "a finite number >= 0",
            t.ce_weight,
        )?;
        c.at_least("train.top_k", t.top_k, 1)?;
        c.fraction("train.jsd_beta", t.jsd_beta, false, false)?;
        c.at_least("train.max_nonfinite_steps", t.max_nonfinite_steps, 1)?;

        let o = &self.output;
        c.that(
            !o.dir.as_os_str().is_empty(),
            "output.dir",
            "a folder path",
            "\"\"",
        )?;
        c.at_least("output.checkpoint_every", o.checkpoint_every, 1)?;
        Ok(())
    }
}

/// Range checks that build [`ConfigError::Invalid`].
struct Check<'a> {
    origin: &'a str,
}

impl Check<'_> {
    fn that(
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
                key: key.to_string(),
                expected: expected.into(),
                got: got.to_string(),
            })
        }
    }

    fn at_least<T: PartialOrd + std::fmt::Display>(
        &self,
        key: &str,
        value: T,
        min: T,
    ) -> Result<(), ConfigError> {
        let expected = format!("an integer >= {min}");
        self.that(value >= min, key, expected, value)
    }

    fn positive(&self, key: &str, value: f64) -> Result<(), ConfigError> {
        self.that(
            value.is_finite() && value > 0.0,
            key,
            "a finite number > 0",
            value,
        )
    }

    /// `value` in the unit interval, each end open or closed.
    fn fraction(
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
        self.that(value.is_finite() && lo && hi, key, expected, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/config.example.toml");

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            RunConfig::from_toml("", "t.toml").unwrap(),
            RunConfig::default()
        );
    }

    #[test]
    fn a_file_overrides_a_base_key_by_key() {
        let mut base = RunConfig::default();
        base.train.lr = 1e-3;
        base.train.steps = 300;
        let c = RunConfig::from_toml_over("[train]\nsteps = 50\n", "t.toml", &base).unwrap();
        assert_eq!((c.train.lr, c.train.steps), (1e-3, 50));
        let err = RunConfig::from_toml_over("[train]\nstepz = 5\n", "t.toml", &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stepz") && err.contains("line 2"), "{err}");
        let err = RunConfig::from_toml_over("[train]\nlr = -1.0\n", "t.toml", &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.lr"), "{err}");
    }

    #[test]
    fn example_config_states_the_defaults() {
        let parsed = RunConfig::from_toml(EXAMPLE, "docs/config.example.toml").unwrap();
        assert_eq!(parsed, RunConfig::default());
    }

    /// Every key of the schema appears in the example config, under its
    /// section, right after a comment line that documents it.
    #[test]
    fn example_config_documents_every_key() {
        let value: toml::Table = toml::from_str(&RunConfig::default().to_toml()).unwrap();
        let lines: Vec<&str> = EXAMPLE.lines().map(str::trim).collect();
        let mut missing = Vec::new();
        for (section, table) in &value {
            let table = table.as_table().expect("every top-level key is a section");
            let header = format!("[{section}]");
            let start = lines
                .iter()
                .position(|l| *l == header)
                .unwrap_or_else(|| panic!("section {header} missing from the example"));
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            for key in table.keys() {
                let found = (start + 1..end).find(|&i| {
                    lines[i]
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                match found {
                    Some(i) if lines[i - 1].starts_with('#') => {}
                    _ => missing.push(format!("{section}.{key}")),
                }
            }
        }
        assert!(
            missing.is_empty(),
            "undocumented keys in docs/config.example.toml: {missing:?}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = RunConfig::from_toml("[train]\nlr = 1e-4\nlearning_rate = 3\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("run.toml:"), "{err}");
        assert!(err.contains("learning_rate"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = RunConfig::from_toml("[trian]\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trian"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = RunConfig::from_toml("[pack]\ncapacity = \"big\"\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capacity") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let cases = [
            ("[train]\nlr = -1.0\n", "train.lr", "> 0"),
            ("[sampling]\ntop_p = 1.5\n", "sampling.top_p", "(0, 1]"),
            (
                "[filter]\nlower_percentile = 0.5\nupper_percentile = 0.4\n",
                "filter.upper_percentile",
                "above filter.lower_percentile",
            ),
            ("[pack]\ncapacity = 0\n", "pack.capacity", ">= 2"),
            (
                "[train]\nrows_per_step = 6\nmicro_batch_rows = 4\n",
                "train.rows_per_step",
                "multiple",
            ),
            ("[model]\ndevice = \"gpu\"\n", "model.device", "cuda:N"),
            ("[train]\nlr = nan\n", "train.lr", "finite"),
        ];
        for (text, key, expected) in cases {
            let err = RunConfig::from_toml(text, "run.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(expected),
                "{text:?} gave {err}"
            );
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = RunConfig::from_file(Path::new("/nonexistent/npd.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/npd.toml"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = RunConfig::default();
        c.train.loss = LossKind::Jsd;
        c.filter.form = DeltaForm::Staleness;
        c.pack.oversize = OversizePolicy::Truncate;
        c.model.dtype = Dtype::Bf16;
        let back = RunConfig::from_toml(&c.to_toml(), "<string>").unwrap();
        assert_eq!(back, c);
    }
}
