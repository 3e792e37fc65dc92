//! Verifiable rewards: how good a response is for its prompt, as a number
//! and the reason for it, for reinforcement learning after distillation.
//!
//! A [`Verifier`] sees a prompt and a response's text; [`AnswerVerifier`]
//! rewards a response whose final answer is the prompt's reference answer,
//! compared as math answers ([`crate::answer::equivalent`]) or exactly.

use std::collections::HashMap;

use crate::ids::PromptId;

/// A response's reward and why it got it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reward {
    /// The reward, finite.
    pub value: f64,
    /// Why: the answer found and the reference, or what was missing.
    pub reason: String,
}

/// Scores a response to a prompt.
pub trait Verifier: Sync {
    /// The reward of `response` (its decoded text) to the prompt `prompt`.
    fn reward(&self, prompt: PromptId, response: &str) -> Reward;
}

/// How an [`AnswerVerifier`] compares answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// The same string (the embedded tasks' checker).
    Exact,
    /// The same math answer ([`crate::answer::equivalent`]).
    Math,
}

/// A final-answer extractor: the answer a response text states, if any.
pub type Extract = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Reward 1 for a response whose final answer is the prompt's reference
/// answer, else 0; a prompt without a reference gets 0 with that reason.
pub struct AnswerVerifier {
    answers: HashMap<PromptId, String>,
    extract: Extract,
    comparison: Comparison,
}

impl std::fmt::Debug for AnswerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerVerifier")
            .field("answers", &self.answers.len())
            .field("comparison", &self.comparison)
            .finish()
    }
}

impl AnswerVerifier {
    /// Reference answers by prompt, the response's final answer found by
    /// `extract`, compared by `comparison`.
    pub fn new(
        answers: impl IntoIterator<Item = (PromptId, String)>,
        extract: Extract,
        comparison: Comparison,
    ) -> Self {
        Self {
            answers: answers.into_iter().collect(),
            extract,
            comparison,
        }
    }
}

impl Verifier for AnswerVerifier {
    fn reward(&self, prompt: PromptId, response: &str) -> Reward {
        let Some(reference) = self.answers.get(&prompt) else {
            return Reward {
                value: 0.0,
                reason: format!("prompt {prompt} has no reference answer"),
            };
        };
        let Some(found) = (self.extract)(response) else {
            return Reward {
                value: 0.0,
                reason: "no final answer in the response".into(),
            };
        };
        let same = match self.comparison {
            Comparison::Exact => found == *reference,
            Comparison::Math => crate::answer::equivalent(&found, reference),
        };
        Reward {
            value: if same { 1.0 } else { 0.0 },
            reason: format!(
                "answer {found:?} {} the reference {reference:?}",
                if same { "matches" } else { "differs from" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_word() -> Extract {
        Box::new(|t: &str| t.split_whitespace().last().map(str::to_string))
    }

    #[test]
    fn a_matching_answer_gets_one_and_the_reason_says_why() {
        let v = AnswerVerifier::new(
            [(PromptId(1), "1000".to_string())],
            last_word(),
            Comparison::Math,
        );
        let r = v.reward(PromptId(1), "so it is 1,000");
        assert_eq!(r.value, 1.0, "{}", r.reason);
        assert_eq!(v.reward(PromptId(1), "so it is 999").value, 0.0);
        assert_eq!(v.reward(PromptId(1), "").value, 0.0);
        let none = v.reward(PromptId(2), "1000");
        assert!(none.value == 0.0 && none.reason.contains("no reference"));
        let exact = AnswerVerifier::new(
            [(PromptId(1), "08".to_string())],
            last_word(),
            Comparison::Exact,
        );
        assert_eq!(exact.reward(PromptId(1), "= 08").value, 1.0);
        assert_eq!(exact.reward(PromptId(1), "= 8").value, 0.0);
    }
}
