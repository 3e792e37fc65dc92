//! Held-out evaluation: greedy decoding and exact match of the final answer.

use std::collections::{BTreeMap, BTreeSet};

use npd_core::sampled::{SampledEval, SampledScores, pass_at_k};
use npd_core::traits::Evaluator;
use npd_core::{FinishReason, Result, SamplingParams, TokenId};

use crate::data::Example;
use crate::generate::{Decoding, generate};
use crate::model::Llama;
use crate::train::Trainer;

/// Extracts the final answer from a response's token ids.
pub type AnswerFn<'a> = dyn Fn(&[TokenId]) -> Option<String> + Sync + 'a;

/// Fraction of `examples` whose greedy response's final answer equals the
/// expected one (examples without an expected answer are skipped).
/// Sequences decoded at once by [`HeldOut`] unless set
/// (`sampling.eval_batch_size`).
pub const EVAL_BATCH: usize = 256;

/// Fraction of `examples` whose greedy response's final answer equals the
/// expected one (examples without an expected answer are skipped),
/// decoding `batch` prompts at a time.
pub fn accuracy(
    model: &Llama,
    (examples, batch): (&[Example], usize),
    answer: &AnswerFn<'_>,
    max_new_tokens: usize,
    stop_ids: &[TokenId],
) -> Result<f64> {
    accuracy_with_progress(
        model,
        (examples, batch),
        answer,
        max_new_tokens,
        stop_ids,
        &mut |_, _| {},
    )
}

/// [`accuracy`], calling `progress(done, total)` after each batch with
/// the graded prompts so far.
pub fn accuracy_with_progress(
    model: &Llama,
    (examples, batch): (&[Example], usize),
    answer: &AnswerFn<'_>,
    max_new_tokens: usize,
    stop_ids: &[TokenId],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<f64> {
    let scored: Vec<&Example> = examples.iter().filter(|e| e.answer.is_some()).collect();
    if scored.is_empty() {
        return Ok(0.0);
    }
    let params = greedy(max_new_tokens, stop_ids);
    let mut correct = 0;
    let mut done = 0;
    for chunk in scored.chunks(batch.max(1)) {
        let prompts: Vec<Vec<TokenId>> = chunk.iter().map(|e| e.prompt.clone()).collect();
        let out = tch::no_grad(|| generate(model, &prompts, &params, Decoding::Cached))?;
        for (g, e) in out.iter().zip(chunk) {
            if answer(&g.tokens).as_ref() == e.answer.as_ref() {
                correct += 1;
            }
        }
        done += chunk.len();
        progress(done, scored.len());
    }
    Ok(correct as f64 / scored.len() as f64)
}

/// Greedy decoding of at most `max_new_tokens`, ending at `stop_ids`: how
/// held-out accuracy is measured.
pub fn greedy(max_new_tokens: usize, stop_ids: &[TokenId]) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens,
        stop_ids: stop_ids.to_vec(),
        seed: 0,
    }
}

/// pass@k, entropy and lengths of `eval.samples` responses sampled by
/// `model` for each of the first `eval.prompts` `examples` with an answer;
/// sample `j` of every prompt uses seed `eval.sampling.seed` mixed with
/// `j`; `batch` prompts are decoded at a time.
pub fn sampled_scores(
    model: &Llama,
    (examples, batch): (&[Example], usize),
    answer: &AnswerFn<'_>,
    eval: &SampledEval,
) -> Result<SampledScores> {
    let scored: Vec<&Example> = examples
        .iter()
        .filter(|e| e.answer.is_some())
        .take(eval.prompts)
        .collect();
    let n = eval.samples.max(1);
    let mut correct = vec![0usize; scored.len()];
    let mut answers: Vec<BTreeSet<Option<String>>> = vec![BTreeSet::new(); scored.len()];
    let (mut nll, mut tokens, mut truncated, mut responses) = (0.0f64, 0usize, 0usize, 0usize);
    for j in 0..n {
        let params = SamplingParams {
            seed: eval.sampling.seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..eval.sampling.clone()
        };
        let batch = batch.max(1);
        for (c, chunk) in scored.chunks(batch).enumerate() {
            let prompts: Vec<Vec<TokenId>> = chunk.iter().map(|e| e.prompt.clone()).collect();
            let out = tch::no_grad(|| generate(model, &prompts, &params, Decoding::Cached))?;
            for (i, (g, e)) in out.iter().zip(chunk).enumerate() {
                let found = answer(&g.tokens);
                if found.as_ref() == e.answer.as_ref() {
                    correct[c * batch + i] += 1;
                }
                answers[c * batch + i].insert(found);
                nll -= g.logprobs.iter().map(|&l| f64::from(l)).sum::<f64>();
                tokens += g.tokens.len();
                truncated += usize::from(g.finish == FinishReason::Length);
                responses += 1;
            }
        }
    }
    let p = scored.len().max(1) as f64;
    let pass_at: BTreeMap<usize, f64> = eval
        .ks
        .iter()
        .map(|&k| {
            let v = correct.iter().map(|&c| pass_at_k(n, c, k)).sum::<f64>() / p;
            (k, v)
        })
        .collect();
    Ok(SampledScores {
        prompts: scored.len(),
        samples: n,
        pass_at,
        entropy: nll / tokens.max(1) as f64,
        response_tokens: tokens as f64 / responses.max(1) as f64,
        truncated: truncated as f64 / responses.max(1) as f64,
        diverse: answers.iter().filter(|a| a.len() > 1).count() as f64 / p,
    })
}

/// Held-out accuracy of a [`Trainer`]'s model, read in place: greedy
/// responses to `examples`, compared by final answer.
pub struct HeldOut<'a> {
    examples: &'a [Example],
    answer: &'a AnswerFn<'a>,
    max_new_tokens: usize,
    stop_ids: Vec<TokenId>,
    batch: usize,
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
            batch: EVAL_BATCH,
        }
    }

    /// Decode `batch` prompts at a time (default [`EVAL_BATCH`]).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }
}

impl Evaluator<Trainer> for HeldOut<'_> {
    fn evaluate(&mut self, learner: &Trainer) -> Result<f64> {
        accuracy(
            learner.model(),
            (self.examples, self.batch),
            self.answer,
            self.max_new_tokens,
            &self.stop_ids,
        )
    }

    fn sampled(&mut self, learner: &Trainer, eval: &SampledEval) -> Result<Option<SampledScores>> {
        self.sampled_model(learner.model(), eval).map(Some)
    }
}

impl HeldOut<'_> {
    /// The greedy decoding the accuracy is measured with.
    pub fn greedy(&self) -> SamplingParams {
        greedy(self.max_new_tokens, &self.stop_ids)
    }

    /// The held-out prompts that have an answer (the graded ones), in
    /// order.
    pub fn graded(&self) -> Vec<&Example> {
        self.examples
            .iter()
            .filter(|e| e.answer.is_some())
            .collect()
    }

    /// The accuracy of `responses` to [`HeldOut::graded`]'s prompts, in
    /// order.
    pub fn grade(&self, responses: &[Vec<TokenId>]) -> f64 {
        let graded = self.graded();
        if graded.is_empty() {
            return 0.0;
        }
        let correct = graded
            .iter()
            .zip(responses)
            .filter(|(e, r)| (self.answer)(r).as_ref() == e.answer.as_ref())
            .count();
        correct as f64 / graded.len() as f64
    }

    /// [`sampled_scores`] of `model` on these examples, with this
    /// evaluation's stop tokens and length limit.
    pub fn sampled_model(&self, model: &Llama, eval: &SampledEval) -> Result<SampledScores> {
        let mut eval = eval.clone();
        eval.sampling.stop_ids = self.stop_ids.clone();
        eval.sampling.max_new_tokens = self.max_new_tokens;
        sampled_scores(model, (self.examples, self.batch), self.answer, &eval)
    }
}
