//! Held-out evaluation: greedy decoding and exact match of the final answer.

use npd_core::traits::Evaluator;
use npd_core::{Result, SamplingParams, TokenId};

use crate::data::Example;
use crate::generate::{Decoding, generate};
use crate::model::Llama;
use crate::train::Trainer;

/// Extracts the final answer from a response's token ids.
pub type AnswerFn<'a> = dyn Fn(&[TokenId]) -> Option<String> + Sync + 'a;

/// Fraction of `examples` whose greedy response's final answer equals the
/// expected one (examples without an expected answer are skipped).
pub fn accuracy(
    model: &Llama,
    examples: &[Example],
    answer: &AnswerFn<'_>,
    max_new_tokens: usize,
    stop_ids: &[TokenId],
) -> Result<f64> {
    let scored: Vec<&Example> = examples.iter().filter(|e| e.answer.is_some()).collect();
    if scored.is_empty() {
        return Ok(0.0);
    }
    let params = SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens,
        stop_ids: stop_ids.to_vec(),
        seed: 0,
    };
    let mut correct = 0;
    for chunk in scored.chunks(256) {
        let prompts: Vec<Vec<TokenId>> = chunk.iter().map(|e| e.prompt.clone()).collect();
        let out = tch::no_grad(|| generate(model, &prompts, &params, Decoding::Cached))?;
        for (g, e) in out.iter().zip(chunk) {
            if answer(&g.tokens).as_ref() == e.answer.as_ref() {
                correct += 1;
            }
        }
    }
    Ok(correct as f64 / scored.len() as f64)
}

/// Held-out accuracy of a [`Trainer`]'s model, read in place: greedy
/// responses to `examples`, compared by final answer.
pub struct HeldOut<'a> {
    examples: &'a [Example],
    answer: &'a AnswerFn<'a>,
    max_new_tokens: usize,
    stop_ids: Vec<TokenId>,
}

impl<'a> HeldOut<'a> {
    /// Evaluation on `examples` with answers extracted by `answer`.
    pub fn new(
        examples: &'a [Example],
        answer: &'a AnswerFn<'a>,
        max_new_tokens: usize,
        stop_ids: Vec<TokenId>,
    ) -> Self {
        Self {
            examples,
            answer,
            max_new_tokens,
            stop_ids,
        }
    }
}

impl Evaluator<Trainer> for HeldOut<'_> {
    fn evaluate(&mut self, learner: &Trainer) -> Result<f64> {
        accuracy(
            learner.model(),
            self.examples,
            self.answer,
            self.max_new_tokens,
            &self.stop_ids,
        )
    }
}
