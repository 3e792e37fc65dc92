//! Prompts, rollouts and training samples.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{PolicyVersion, PromptId, SampleId, TokenId};

/// A tokenized prompt, already rendered in the model's chat format and ending
/// with the generation prompt (the assistant-turn header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Stable id of the prompt in the dataset.
    pub id: PromptId,
    /// Prompt tokens, BOS included.
    pub tokens: Vec<TokenId>,
}

/// How a generator samples responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` means greedy decoding.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens before sampling (`None`: all).
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability
    /// reaches `top_p` (`1.0`: all).
    pub top_p: f32,
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Token ids that end a response (the EOS id among them); the stop token
    /// is part of the response.
    pub stop_ids: Vec<TokenId>,
    /// Seed of the sampler; the same seed, weights and prompts reproduce the
    /// same responses.
    pub seed: u64,
}

/// Why a generated response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinishReason {
    /// A stop id (for example EOS) was sampled.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// One response written by a student snapshot, tagged with the snapshot's
/// version and the log-probs of the sampled tokens under that snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The prompt answered.
    pub prompt_id: PromptId,
    /// Prompt tokens.
    pub prompt: Vec<TokenId>,
    /// Sampled response tokens (stop token included when present).
    pub response: Vec<TokenId>,
    /// Log-probability of each response token under the generating snapshot,
    /// given the prompt and the preceding response tokens (temperature 1).
    pub response_logprobs: Vec<f32>,
    /// Log-probability of each response token under the generating snapshot
    /// with the prompt left out (the response after BOS and the assistant
    /// header only), when the generator computed it: the IFD denominator.
    /// Empty otherwise.
    #[serde(default)]
    pub response_alone_logprobs: Vec<f32>,
    /// Version of the snapshot that wrote the response.
    pub policy_version: PolicyVersion,
    /// Why generation stopped.
    pub finish: FinishReason,
}

impl Rollout {
    /// Checks that the per-token arrays line up and that the prompt is
    /// non-empty.
    pub fn validate(&self) -> Result<()> {
        if self.prompt.is_empty() {
            return Err(Error::invalid(
                format!("rollout of {}", self.prompt_id),
                "empty prompt: expected at least one token (BOS)",
            ));
        }
        if self.response_logprobs.len() != self.response.len() {
            return Err(Error::invalid(
                format!("rollout of {}", self.prompt_id),
                format!(
                    "response_logprobs has {} entries, expected one per response token ({})",
                    self.response_logprobs.len(),
                    self.response.len()
                ),
            ));
        }
        if !self.response_alone_logprobs.is_empty()
            && self.response_alone_logprobs.len() != self.response.len()
        {
            return Err(Error::invalid(
                format!("rollout of {}", self.prompt_id),
                format!(
                    "response_alone_logprobs has {} entries, expected none or one per response \
                     token ({})",
                    self.response_alone_logprobs.len(),
                    self.response.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Per-token log-probs of one response under one model: conditioned on the
/// prompt, and alone (after BOS and the assistant-turn header only). These
/// are the two terms of the IFD score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseLogProbs {
    /// `log p(y_i | x, y_<i)` for each response token.
    pub conditioned: Vec<f32>,
    /// `log p(y_i | y_<i)` for each response token.
    pub alone: Vec<f32>,
}

/// A teacher's top-k distribution at each response position, plus the
/// probability mass outside the top k as one bucket.
///
/// Position `p` (of `positions()`) holds the `k` ids and log-probs at
/// `[p * k, (p + 1) * k)` and the tail at `tail_logprob[p]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopKTargets {
    /// Entries per position.
    pub k: usize,
    /// Token ids, `positions * k`, most likely first.
    pub ids: Vec<TokenId>,
    /// Log-probabilities matching `ids`.
    pub logprobs: Vec<f32>,
    /// `log(1 - sum(exp(logprobs)))` per position; `-inf` when the top k
    /// hold all the mass.
    pub tail_logprob: Vec<f32>,
}

impl TopKTargets {
    /// Number of positions described.
    pub fn positions(&self) -> usize {
        self.tail_logprob.len()
    }

    /// Checks internal consistency and that it covers `positions` positions.
    pub fn validate(&self, what: &str, positions: usize) -> Result<()> {
        if self.k == 0 {
            return Err(Error::invalid(what, "top-k targets with k = 0"));
        }
        let expect = positions * self.k;
        if self.tail_logprob.len() != positions
            || self.ids.len() != expect
            || self.logprobs.len() != expect
        {
            return Err(Error::invalid(
                what,
                format!(
                    "top-k targets for {positions} positions with k = {} need {expect} ids, \
                     {expect} log-probs and {positions} tail entries; found {}, {} and {}",
                    self.k,
                    self.ids.len(),
                    self.logprobs.len(),
                    self.tail_logprob.len()
                ),
            ));
        }
        Ok(())
    }
}

/// What a policy-gradient objective (GRPO, PPO) needs per response token:
/// the log-prob the behaviour policy (the snapshot that sampled the token)
/// gave it, and the token's advantage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyTargets {
    /// Behaviour log-probs of the sampled tokens, one per response token.
    pub behaviour_logprobs: Vec<f32>,
    /// Advantages, one per response token.
    pub advantages: Vec<f32>,
    /// Log-probs of the tokens under a reference policy (the RL stage's
    /// starting weights), for a KL penalty toward it; `None`: no penalty.
    #[serde(default)]
    pub reference_logprobs: Option<Vec<f32>>,
}

impl PolicyTargets {
    /// Checks that both arrays cover `positions` tokens with finite values
    /// (behaviour log-probs at most 0).
    pub fn validate(&self, what: &str, positions: usize) -> Result<()> {
        let reference = self
            .reference_logprobs
            .iter()
            .map(|r| ("reference_logprobs", r));
        for (name, v) in [
            ("behaviour_logprobs", &self.behaviour_logprobs),
            ("advantages", &self.advantages),
        ]
        .into_iter()
        .chain(reference)
        {
            if v.len() != positions {
                return Err(Error::invalid(
                    what,
                    format!(
                        "{name} has {} entries, expected one per response token ({positions})",
                        v.len()
                    ),
                ));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(
                    what,
                    format!("{name}[{i}] = {}: expected a finite value", v[i]),
                ));
            }
        }
        if let Some(i) = self.behaviour_logprobs.iter().position(|x| *x > 0.0) {
            return Err(Error::invalid(
                what,
                format!(
                    "behaviour_logprobs[{i}] = {}: expected a log-probability (<= 0)",
                    self.behaviour_logprobs[i]
                ),
            ));
        }
        Ok(())
    }
}

/// A sequence ready for training: prompt and response tokens, with optional
/// per-response-token side arrays that travel with the tokens into packed rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSample {
    /// Sample id, carried into the packed row's segment table.
    pub id: SampleId,
    /// `prompt ++ response`.
    pub tokens: Vec<TokenId>,
    /// Number of leading prompt tokens (never loss targets).
    pub prompt_len: usize,
    /// Loss weight per response token (`None`: 1.0 each).
    pub weights: Option<Vec<f32>>,
    /// Teacher top-k targets per response token.
    pub topk: Option<TopKTargets>,
    /// Behaviour log-probs and advantages per response token, for a
    /// policy-gradient objective; `None` for distillation.
    #[serde(default)]
    pub policy: Option<PolicyTargets>,
}

impl TrainSample {
    /// Number of response tokens.
    pub fn response_len(&self) -> usize {
        self.tokens.len().saturating_sub(self.prompt_len)
    }

    /// Checks that the prompt fits in the tokens, that there is at least one
    /// response token, and that every side array covers the response.
    pub fn validate(&self) -> Result<()> {
        let what = self.id.to_string();
        if self.prompt_len > self.tokens.len() {
            return Err(Error::invalid(
                what,
                format!(
                    "prompt_len {} exceeds the sequence length {}",
                    self.prompt_len,
                    self.tokens.len()
                ),
            ));
        }
        let n = self.response_len();
        if n == 0 {
            return Err(Error::invalid(
                what,
                "empty response: expected at least one response token",
            ));
        }
        if let Some(w) = &self.weights {
            if w.len() != n {
                return Err(Error::invalid(
                    what,
                    format!(
                        "weights has {} entries, expected one per response token ({n})",
                        w.len()
                    ),
                ));
            }
            if let Some(i) = w.iter().position(|x| !x.is_finite() || *x < 0.0) {
                return Err(Error::invalid(
                    what,
                    format!("weights[{i}] = {}: expected a finite value >= 0", w[i]),
                ));
            }
        }
        if let Some(t) = &self.topk {
            t.validate(&what, n)?;
        }
        if let Some(p) = &self.policy {
            p.validate(&what, n)?;
        }
        Ok(())
    }

    /// Cuts the sample to at most `max_len` tokens, dropping response tokens
    /// (and their side arrays) from the end. Returns an error when the prompt
    /// alone leaves no room for a response token.
    pub fn truncate(&mut self, max_len: usize) -> Result<()> {
        if self.tokens.len() <= max_len {
            return Ok(());
        }
        if self.prompt_len >= max_len {
            return Err(Error::invalid(
                self.id.to_string(),
                format!(
                    "prompt of {} tokens leaves no room for a response in {max_len} tokens",
                    self.prompt_len
                ),
            ));
        }
        let keep = max_len - self.prompt_len;
        self.tokens.truncate(max_len);
        if let Some(w) = &mut self.weights {
            w.truncate(keep);
        }
        if let Some(t) = &mut self.topk {
            t.ids.truncate(keep * t.k);
            t.logprobs.truncate(keep * t.k);
            t.tail_logprob.truncate(keep);
        }
        if let Some(p) = &mut self.policy {
            p.behaviour_logprobs.truncate(keep);
            p.advantages.truncate(keep);
            if let Some(r) = &mut p.reference_logprobs {
                r.truncate(keep);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(prompt_len: usize, len: usize) -> TrainSample {
        TrainSample {
            id: SampleId(3),
            tokens: (0..len as u32).collect(),
            prompt_len,
            weights: Some(vec![1.0; len - prompt_len]),
            topk: Some(TopKTargets {
                k: 2,
                ids: vec![0; 2 * (len - prompt_len)],
                logprobs: vec![-1.0; 2 * (len - prompt_len)],
                tail_logprob: vec![-2.0; len - prompt_len],
            }),
            policy: None,
        }
    }

    #[test]
    fn truncate_keeps_side_arrays_aligned() {
        let mut s = sample(3, 10);
        s.truncate(6).unwrap();
        assert_eq!(s.tokens.len(), 6);
        s.validate().unwrap();
        assert_eq!(s.topk.as_ref().unwrap().positions(), 3);
    }

    #[test]
    fn truncate_rejects_prompt_that_fills_everything() {
        let mut s = sample(6, 10);
        let err = s.truncate(6).unwrap_err().to_string();
        assert!(err.contains("sample 3"), "{err}");
    }

    #[test]
    fn misaligned_side_array_is_named() {
        let mut s = sample(2, 5);
        s.weights = Some(vec![1.0; 2]);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("weights has 2 entries"), "{err}");
        s.weights = None;
        s.topk.as_mut().unwrap().tail_logprob.pop();
        assert!(s.validate().is_err());
    }

    #[test]
    fn empty_response_is_rejected() {
        let s = TrainSample {
            id: SampleId(1),
            tokens: vec![1, 2],
            prompt_len: 2,
            weights: None,
            topk: None,
            policy: None,
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("empty response")
        );
    }

    #[test]
    fn rollout_checks_logprob_count() {
        let r = Rollout {
            prompt_id: PromptId(4),
            prompt: vec![1],
            response: vec![5, 6],
            response_logprobs: vec![-0.5],
            response_alone_logprobs: vec![],
            policy_version: 0,
            finish: FinishReason::Length,
        };
        let err = r.validate().unwrap_err().to_string();
        assert!(
            err.contains("prompt 4") && err.contains("response_logprobs"),
            "{err}"
        );
    }
}
