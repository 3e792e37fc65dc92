//! When a plateau warm start stops: the rule, and the validation loss it
//! watches.

use serde::{Deserialize, Serialize};

use npd_core::{Result, TokenId, TrainSample};
use npd_train::model::Llama;
use npd_train::score::ModelScorer;

use crate::embedded::config::EmbeddedConfig;

/// When a plateau warm start stops: once `patience` checks in a row (one
/// every `every` steps) lowered the validation loss by less than the
/// fraction `min_gain` of the best loss before them, and at least
/// `fewest_steps` steps were taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlateauRule {
    /// Steps between checks.
    pub every: u64,
    /// Checks in a row without a gain.
    pub patience: u64,
    /// Smallest relative decrease of the validation loss that counts.
    pub min_gain: f64,
    /// Fewest steps.
    pub fewest_steps: u64,
}

impl Default for PlateauRule {
    fn default() -> Self {
        Self::from_config(&EmbeddedConfig::default())
    }
}

impl PlateauRule {
    /// The `[embedded]` section's rule.
    pub fn from_config(c: &EmbeddedConfig) -> Self {
        Self {
            every: c.plateau_every,
            patience: c.plateau_patience,
            min_gain: c.plateau_min_gain,
            fewest_steps: c.plateau_min_steps,
        }
    }
}

/// Mean negative log-likelihood per response token of `samples` under
/// `m`, teacher-forced.
pub(crate) fn validation_loss(m: &Llama, samples: &[TrainSample]) -> Result<f64> {
    let seqs: Vec<(&[TokenId], usize)> = (samples.iter())
        .map(|s| (s.tokens.as_slice(), s.prompt_len))
        .collect();
    let scores = ModelScorer::new(m).response_scores(&seqs, None)?;
    let (sum, n) = (scores.iter())
        .flat_map(|(lp, _)| lp)
        .fold((0.0f64, 0usize), |(s, n), &lp| (s - f64::from(lp), n + 1));
    Ok(sum / n.max(1) as f64)
}

/// The plateau rule ([`PlateauRule`]) over validation losses.
pub(crate) struct Plateau {
    rule: PlateauRule,
    best: f64,
    since_best: u64,
    pub(crate) checks: Vec<(u64, f64)>,
    pub(crate) stopped: bool,
}

impl Plateau {
    pub(crate) fn new(rule: PlateauRule) -> Self {
        Self {
            rule,
            best: f64::INFINITY,
            since_best: 0,
            checks: Vec::new(),
            stopped: false,
        }
    }

    /// Records a check; true when the warm start should stop.
    pub(crate) fn check(&mut self, step: u64, loss: f64) -> bool {
        self.checks.push((step, loss));
        if loss <= self.best * (1.0 - self.rule.min_gain) {
            self.best = loss;
            self.since_best = 0;
        } else {
            self.best = self.best.min(loss);
            self.since_best += 1;
        }
        self.stopped = self.since_best >= self.rule.patience && step >= self.rule.fewest_steps;
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plateau_rule_waits_for_patience_checks_without_a_gain() {
        let rule = PlateauRule {
            every: 100,
            patience: 3,
            min_gain: 0.01,
            fewest_steps: 0,
        };
        let run = |rule: PlateauRule, losses: &[f64]| -> Vec<bool> {
            let mut p = Plateau::new(rule);
            (losses.iter().enumerate())
                .map(|(i, &l)| p.check(100 * (i as u64 + 1), l))
                .collect()
        };
        // 0.995 is no gain over 1.0 (less than 1%); 0.98 is; then 0.979,
        // 0.975 and 0.972 are three checks within 1% of 0.98.
        let losses = [2.0, 1.5, 1.0, 0.995, 0.98, 0.979, 0.975, 0.972];
        assert_eq!(
            run(rule, &losses),
            [false, false, false, false, false, false, false, true]
        );
        // Not before fewest_steps.
        let late = PlateauRule {
            fewest_steps: 900,
            ..rule
        };
        assert!(!run(late, &losses).contains(&true));
        assert!(run(late, &[losses.as_slice(), &[0.971]].concat())[8]);
    }
}
