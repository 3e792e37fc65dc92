//! The `[embedded]` section: which task the embedded default runs, the
//! student's size and how its warm start stops. Ignored (and refused when
//! set) once `model.teacher` names a folder.

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, Section};

use crate::embedded::task::{TaskKind, TaskSpec};

/// When the student's warm start stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarmStart {
    /// After exactly `warm_start_steps` steps: a student trained part-way.
    #[default]
    Steps,
    /// When accuracy on a validation split stops improving (at most
    /// `plateau_max_steps` steps): a post-trained student.
    Plateau,
}

impl WarmStart {
    /// Its name in configuration files and reports.
    pub fn name(self) -> &'static str {
        match self {
            WarmStart::Steps => "steps",
            WarmStart::Plateau => "plateau",
        }
    }
}

/// The `[embedded]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// `chain` (ops in the written order) or `orders` (commuting ops in any
    /// order, so the teacher's distribution has real entropy).
    pub task: TaskKind,
    /// Fewest ops in a prompt.
    pub min_ops: usize,
    /// Most ops in a prompt (each adds 5 response tokens).
    pub max_ops: usize,
    /// Teacher training stops once held-out accuracy on a 128-prompt
    /// probe reaches this plus 0.02; unset: 0.95 for `chain`, 0.85 for
    /// `orders` (a good but not perfect teacher).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_target: Option<f64>,
    /// Student `[hidden, layers]` (heads of 16, half as many KV heads).
    pub student: [usize; 2],
    /// `steps` or `plateau`.
    pub warm_start: WarmStart,
    /// Most ops in the warm start's prompts; unset: `max_ops`. Fewer
    /// makes a student post-trained on easier data than it is then
    /// distilled on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_start_max_ops: Option<usize>,
    /// `steps`: warm-start steps.
    pub warm_start_steps: u64,
    /// `plateau`: the most warm-start steps.
    pub plateau_max_steps: u64,
    /// `plateau`: steps between validation checks.
    pub plateau_every: u64,
    /// `plateau`: stop after this many checks without a gain.
    pub plateau_patience: u64,
    /// `plateau`: a relative decrease of the validation loss smaller than
    /// this is no gain.
    pub plateau_min_gain: f64,
    /// `plateau`: the fewest warm-start steps.
    pub plateau_min_steps: u64,
    /// Fraction of the warm start's examples that show a wrong value, `!`
    /// and the correct value, as the teacher's 15% do: a student that can
    /// repair, like its teacher.
    pub warm_start_repair: f64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            task: TaskKind::Chain,
            min_ops: 3,
            max_ops: 8,
            teacher_target: None,
            student: [64, 2],
            warm_start: WarmStart::Steps,
            warm_start_max_ops: None,
            warm_start_steps: 1500,
            plateau_max_steps: 10_000,
            plateau_every: 200,
            plateau_patience: 4,
            plateau_min_gain: 0.01,
            plateau_min_steps: 2000,
            warm_start_repair: 0.0,
        }
    }
}

impl EmbeddedConfig {
    /// The task it describes.
    pub fn task_spec(&self) -> TaskSpec {
        TaskSpec {
            kind: self.task,
            min_ops: self.min_ops,
            max_ops: self.max_ops,
        }
    }

    /// The teacher's accuracy target.
    pub fn teacher_target(&self) -> f64 {
        self.teacher_target.unwrap_or(match self.task {
            TaskKind::Chain => 0.95,
            TaskKind::Orders => 0.85,
        })
    }
}

impl Section for EmbeddedConfig {
    const NAME: &'static str = "embedded";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.at_least("min_ops", self.min_ops, 1)?;
        c.that(
            (self.min_ops..=64).contains(&self.max_ops),
            "max_ops",
            format!("an integer from embedded.min_ops ({}) to 64", self.min_ops),
            self.max_ops,
        )?;
        if let Some(m) = self.warm_start_max_ops {
            c.that(
                (self.min_ops..=self.max_ops).contains(&m),
                "warm_start_max_ops",
                format!(
                    "an integer from embedded.min_ops ({}) to embedded.max_ops ({})",
                    self.min_ops, self.max_ops
                ),
                m,
            )?;
        }
        if let Some(t) = self.teacher_target {
            c.fraction("teacher_target", t, false, true)?;
        }
        let [hidden, layers] = self.student;
        c.that(
            hidden >= 16 && hidden.is_multiple_of(16),
            "student",
            "[hidden, layers] with hidden a multiple of 16",
            format!("{:?}", self.student),
        )?;
        c.that(
            layers >= 1,
            "student",
            "[hidden, layers] with layers >= 1",
            format!("{:?}", self.student),
        )?;
        // The embedded task's students learn it in thousands of steps.
        const MOST_STEPS: u64 = 10_000_000;
        c.between("warm_start_steps", self.warm_start_steps, 1, MOST_STEPS)?;
        c.between("plateau_max_steps", self.plateau_max_steps, 1, MOST_STEPS)?;
        c.between("plateau_every", self.plateau_every, 1, MOST_STEPS)?;
        c.between("plateau_patience", self.plateau_patience, 1, MOST_STEPS)?;
        c.that(
            self.plateau_min_steps <= self.plateau_max_steps,
            "plateau_min_steps",
            format!(
                "at most embedded.plateau_max_steps ({})",
                self.plateau_max_steps
            ),
            self.plateau_min_steps,
        )?;
        c.fraction("warm_start_repair", self.warm_start_repair, true, false)?;
        c.non_negative("plateau_min_gain", self.plateau_min_gain, "")
    }
}
