//! The ledger: where every prompt of a run stands, so that a run can prove
//! it lost nothing and trained nothing twice, and can resume.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use npd_core::{DropReason, PromptId};

/// Where one prompt stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum PromptState {
    /// Accepted, not yet finished (waiting, generating, or generated and not
    /// yet trained on).
    Open,
    /// Its rollout was trained on.
    Trained,
    /// Its rollout was filtered out.
    Filtered(DropReason),
    /// Rejected or failed, with a reason (e.g. a prompt over the length
    /// limit, or a generation error).
    Failed(String),
}

/// The state of every prompt of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    states: BTreeMap<PromptId, PromptState>,
    /// Dataset records refused before the run (over the length limit, say),
    /// by their dataset id, with the reason. Kept apart from the run's
    /// prompts, whose ids count visits.
    #[serde(default)]
    rejected: BTreeMap<PromptId, String>,
}

/// Counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounts {
    /// Prompts the ledger knows.
    pub total: usize,
    /// Not finished.
    pub open: usize,
    /// Trained on.
    pub trained: usize,
    /// Filtered out, per reason.
    pub filtered: BTreeMap<String, usize>,
    /// Failed, per reason.
    pub failed: BTreeMap<String, usize>,
    /// Dataset records rejected before the run (not in `total`).
    #[serde(default)]
    pub rejected: usize,
}

impl LedgerCounts {
    /// Whether open + trained + filtered + failed equals the total.
    pub fn adds_up(&self) -> bool {
        self.open
            + self.trained
            + self.filtered.values().sum::<usize>()
            + self.failed.values().sum::<usize>()
            == self.total
    }
}

/// A ledger transition that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{prompt}: cannot go from {from:?} to {to:?}")]
pub struct LedgerError {
    /// The prompt.
    pub prompt: PromptId,
    /// Its state.
    pub from: Option<PromptState>,
    /// The state asked for.
    pub to: PromptState,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a new prompt as open. A prompt already known is an error.
    pub fn open(&mut self, prompt: PromptId) -> Result<(), LedgerError> {
        if let Some(s) = self.states.get(&prompt) {
            return Err(LedgerError {
                prompt,
                from: Some(s.clone()),
                to: PromptState::Open,
            });
        }
        self.states.insert(prompt, PromptState::Open);
        Ok(())
    }

    /// Closes an open prompt (or records a prompt rejected before opening,
    /// for `Failed`). Closing a prompt twice is an error: that is the
    /// "trained twice" the ledger exists to catch.
    pub fn close(&mut self, prompt: PromptId, to: PromptState) -> Result<(), LedgerError> {
        match self.states.get(&prompt) {
            Some(PromptState::Open) => {}
            None if matches!(to, PromptState::Failed(_)) => {}
            other => {
                return Err(LedgerError {
                    prompt,
                    from: other.cloned(),
                    to,
                });
            }
        }
        self.states.insert(prompt, to);
        Ok(())
    }

    /// The state of a prompt.
    pub fn state(&self, prompt: PromptId) -> Option<&PromptState> {
        self.states.get(&prompt)
    }

    /// Records a dataset record rejected before the run, with the reason.
    pub fn reject(&mut self, record: PromptId, reason: impl Into<String>) {
        self.rejected.insert(record, reason.into());
    }

    /// Dataset records rejected before the run, with reasons.
    pub fn rejected(&self) -> &BTreeMap<PromptId, String> {
        &self.rejected
    }

    /// Prompts still open, in id order.
    pub fn open_prompts(&self) -> Vec<PromptId> {
        self.states
            .iter()
            .filter(|(_, s)| **s == PromptState::Open)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Counts by state.
    pub fn counts(&self) -> LedgerCounts {
        let mut c = LedgerCounts {
            total: self.states.len(),
            rejected: self.rejected.len(),
            ..Default::default()
        };
        for s in self.states.values() {
            match s {
                PromptState::Open => c.open += 1,
                PromptState::Trained => c.trained += 1,
                PromptState::Filtered(r) => {
                    *c.filtered.entry(r.as_str().to_string()).or_default() += 1
                }
                PromptState::Failed(r) => *c.failed.entry(r.clone()).or_default() += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_and_counts() {
        let mut l = Ledger::new();
        for i in 0..4 {
            l.open(PromptId(i)).unwrap();
        }
        l.close(PromptId(0), PromptState::Trained).unwrap();
        l.close(PromptId(1), PromptState::Filtered(DropReason::AboveBand))
            .unwrap();
        l.close(PromptId(2), PromptState::Failed("generation error".into()))
            .unwrap();
        l.close(PromptId(9), PromptState::Failed("prompt too long".into()))
            .unwrap();
        let c = l.counts();
        assert_eq!((c.total, c.open, c.trained), (5, 1, 1));
        assert_eq!(c.filtered["above-band"], 1);
        assert!(c.adds_up());
        assert_eq!(l.open_prompts(), vec![PromptId(3)]);
        l.reject(
            PromptId(40),
            "prompt of 9 tokens exceeds data.max_prompt_tokens = 8",
        );
        assert_eq!(l.counts().rejected, 1);
        assert!(l.counts().adds_up());
        // Twice is refused.
        assert!(l.close(PromptId(0), PromptState::Trained).is_err());
        assert!(l.open(PromptId(1)).is_err());
        assert!(l.close(PromptId(7), PromptState::Trained).is_err());
        // Round trip through JSON for checkpoints.
        let back: Ledger = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }
}
