//! The `[model]` and `[data]` sections: the model folders, their device and
//! dtype, and the prompts file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, Section};

/// The `[model]` section: teacher and student folders, and where they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
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

impl Default for ModelsConfig {
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

impl Section for ModelsConfig {
    const NAME: &'static str = "model";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        let device_ok = self.device == "cpu"
            || self.device == "cuda"
            || self
                .device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        c.that(
            device_ok,
            "device",
            "`cpu`, `cuda` or `cuda:N`",
            &self.device,
        )
    }
}

/// The `[data]` section: the prompts file.
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

impl Section for DataConfig {
    const NAME: &'static str = "data";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between(
            "max_prompt_tokens",
            self.max_prompt_tokens,
            1,
            npd_core::config::MAX_TOKENS,
        )?;
        c.fraction("eval_fraction", self.eval_fraction, true, false)
    }
}
