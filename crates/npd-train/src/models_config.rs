//! The `[model]` and `[data]` sections: the model folders, their device and
//! dtype, and the prompt files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, Section};

use crate::data::Fields;

/// The `[model]` section: teacher and student folders, and where they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Folder of the teacher (Hugging Face layout: config.json, safetensors,
    /// tokenizer). Empty: the embedded demo teacher.
    pub teacher: PathBuf,
    /// Folder of the student, same layout. Empty: the embedded demo student.
    pub student: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`: the student's device (training,
    /// generation, evaluation).
    pub device: String,
    /// The in-process teacher's device (scoring, SFT's responses, its
    /// accuracy check); empty: `device`.
    pub teacher_device: String,
    /// Compute dtype: `f32`, `bf16` or `f16`.
    pub dtype: Dtype,
}

impl ModelsConfig {
    /// The teacher's device: `teacher_device`, else `device`.
    pub fn teacher_device(&self) -> &str {
        if self.teacher_device.is_empty() {
            &self.device
        } else {
            &self.teacher_device
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            teacher: PathBuf::new(),
            student: PathBuf::new(),
            device: "cpu".into(),
            teacher_device: String::new(),
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
        let device_ok = |d: &str| {
            d == "cpu"
                || d == "cuda"
                || d.strip_prefix("cuda:")
                    .is_some_and(|n| n.parse::<usize>().is_ok())
        };
        c.that(
            device_ok(&self.device),
            "device",
            "`cpu`, `cuda` or `cuda:N`",
            &self.device,
        )?;
        c.that(
            self.teacher_device.is_empty() || device_ok(&self.teacher_device),
            "teacher_device",
            "empty (model.device) or `cpu`, `cuda` or `cuda:N`",
            &self.teacher_device,
        )
    }
}

/// The `[data]` section: the prompts file, its columns, the held-out
/// prompts and what SFT trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Prompts file, JSONL or parquet (`.parquet`). Empty: the embedded
    /// demo task.
    pub prompts: PathBuf,
    /// Held-out prompts file (JSONL or parquet, the same columns), for
    /// example a benchmark's test split. Empty: `eval_fraction` of
    /// `prompts` is held out instead.
    pub eval: PathBuf,
    /// The columns the files keep each field in; unset: npd's own names
    /// (`id`, `prompt`, `messages`, `answer`, `response`), other keys
    /// rejected. Set (even to `{}`): other columns are ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Fields>,
    /// What SFT trains on: the teacher's greedy responses, or the
    /// dataset's own `response` field (every training record needs one).
    pub sft_targets: SftTargets,
    /// How a record's `prompt` text reaches the model: `raw` (as is; the
    /// text must already be in the model's format) or `chat` (as the user
    /// turn of a conversation in the student's chat format).
    pub prompt_format: PromptFormat,
    /// System turn of every chat prompt the student sees (records whose
    /// `messages` have none); empty: none.
    pub student_system: String,
    /// System turn of every chat prompt the teacher sees; empty: none.
    pub teacher_system: String,
    /// Text appended to the last user turn of every chat prompt the student
    /// sees; empty: none.
    pub student_suffix: String,
    /// Text appended to the last user turn of every chat prompt the teacher
    /// sees (openPangu-Embedded-7B: `" /no_think"` for fast answers); the
    /// teacher scores student responses after its own prompt.
    pub teacher_suffix: String,
    /// Prompts longer than this many tokens are rejected (and counted).
    pub max_prompt_tokens: usize,
    /// Fraction of prompts held out for evaluation (without `eval`).
    pub eval_fraction: f64,
    /// Seed of the train/eval split and of data shuffling.
    pub seed: u64,
}

/// How `prompt` texts become model input (`data.prompt_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// The text as is.
    #[default]
    Raw,
    /// The text as a user turn, rendered with the chat format.
    Chat,
}

/// How one model sees a prompt: the format of `prompt` texts and a system
/// turn and a suffix of the last user turn (for chat prompts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptStyle<'a> {
    /// `prompt` texts as is or as a user turn.
    pub format: PromptFormat,
    /// System turn added where a conversation has none (empty: none).
    pub system: &'a str,
    /// Appended to the last user turn (empty: nothing).
    pub suffix: &'a str,
}

impl Default for PromptStyle<'_> {
    fn default() -> Self {
        Self {
            format: PromptFormat::Raw,
            system: "",
            suffix: "",
        }
    }
}

impl DataConfig {
    /// How the student sees prompts.
    pub fn student_style(&self) -> PromptStyle<'_> {
        PromptStyle {
            format: self.prompt_format,
            system: &self.student_system,
            suffix: &self.student_suffix,
        }
    }

    /// How the teacher sees prompts.
    pub fn teacher_style(&self) -> PromptStyle<'_> {
        PromptStyle {
            format: self.prompt_format,
            system: &self.teacher_system,
            suffix: &self.teacher_suffix,
        }
    }
}

/// SFT's training targets (`data.sft_targets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SftTargets {
    /// The teacher's greedy responses, written once per run.
    #[default]
    Teacher,
    /// The dataset's reference responses (`response`), each followed by
    /// the student's end-of-turn token.
    References,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            prompts: PathBuf::new(),
            eval: PathBuf::new(),
            fields: None,
            sft_targets: SftTargets::Teacher,
            prompt_format: PromptFormat::Raw,
            student_system: String::new(),
            teacher_system: String::new(),
            student_suffix: String::new(),
            teacher_suffix: String::new(),
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
        c.fraction("eval_fraction", self.eval_fraction, true, false)?;
        if let Some(f) = &self.fields {
            for (field, column) in [
                ("id", &f.id),
                ("prompt", &f.prompt),
                ("messages", &f.messages),
                ("answer", &f.answer),
                ("response", &f.response),
            ] {
                c.that(
                    !column.trim().is_empty(),
                    &format!("fields.{field}"),
                    "a column name",
                    column,
                )?;
            }
        }
        Ok(())
    }
}
