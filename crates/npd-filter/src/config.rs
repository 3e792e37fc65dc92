//! The `[filter]` section: Δ-IFD selection.

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, Section};

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
    /// `s_teacher(y|x) - s_student(y|x)`: the gap between the teacher's and
    /// the student's mean token cross-entropy of the response given the
    /// prompt. Not Δ-IFD: it needs no response-alone pass, so it costs
    /// nothing beyond the passes that run anyway.
    ConditionedGap,
}

impl DeltaForm {
    /// Whether the score needs log-probs of the response alone (the IFD
    /// denominators), which cost an extra pass per model.
    pub fn needs_alone(self) -> bool {
        self != DeltaForm::ConditionedGap
    }
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

impl Section for FilterConfig {
    const NAME: &'static str = "filter";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.fraction("lower_percentile", self.lower_percentile, true, true)?;
        c.fraction("upper_percentile", self.upper_percentile, true, true)?;
        c.that(
            self.lower_percentile < self.upper_percentile,
            "upper_percentile",
            format!(
                "a value above filter.lower_percentile ({})",
                self.lower_percentile
            ),
            self.upper_percentile,
        )?;
        c.between("window", self.window, 1, 1 << 24)
    }
}
