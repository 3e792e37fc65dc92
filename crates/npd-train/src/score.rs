//! Scoring sequences with a model: per-token log-probs of the response,
//! with and without the prompt, and top-k distributions with tail mass.

use tch::{Kind, Tensor};

use npd_core::traits::{ScoreOptions, ScoreRequest, Scorer, SequenceScores};
use npd_core::{Error, ResponseLogProbs, Result, TokenId, TopKTargets};

use crate::model::Llama;

/// Scores sequences with a model, packing several sequences into one
/// forward pass and computing the `[tokens, vocab]` log-softmax in chunks so
/// that a large vocabulary never needs one huge tensor.
#[derive(Debug)]
pub struct ModelScorer<'a> {
    model: &'a Llama,
    /// Most tokens packed into one forward pass.
    pub max_tokens_per_pass: usize,
    /// Most logits (`rows × vocab`) materialised at once.
    pub max_logits: usize,
}

/// Logits a [`ModelScorer`] materialises at once unless set.
pub const MAX_LOGITS: usize = 1 << 24;

/// Tokens a [`ModelScorer`] packs into one forward pass unless set.
pub const MAX_TOKENS_PER_PASS: usize = 8192;

/// Response log-probs of one sequence, and its top-k targets if asked.
pub type ResponseScores = (Vec<f32>, Option<TopKTargets>);

impl<'a> ModelScorer<'a> {
    /// A scorer with 8192 tokens per pass and at most 2^24 logits at once.
    pub fn new(model: &'a Llama) -> Self {
        Self {
            model,
            max_tokens_per_pass: MAX_TOKENS_PER_PASS,
            max_logits: MAX_LOGITS,
        }
    }

    /// For each `(tokens, prompt_len)`, the log-prob of every response token
    /// `tokens[prompt_len..]` given all tokens before it, and with `topk`
    /// the model's top-k ids and log-probs at each response position plus
    /// the log of the remaining mass.
    pub fn response_scores(
        &self,
        seqs: &[(&[TokenId], usize)],
        topk: Option<usize>,
    ) -> Result<Vec<ResponseScores>> {
        let vocab = self.model.config().vocab_size;
        for (i, (tokens, p)) in seqs.iter().enumerate() {
            if *p == 0 || *p >= tokens.len() {
                return Err(Error::invalid(
                    format!("score request {i}"),
                    format!(
                        "prompt_len {p} of a {}-token sequence: expected 1 <= prompt_len < length \
                         (the first response token needs a token before it)",
                        tokens.len()
                    ),
                ));
            }
        }
        if let Some(k) = topk
            && (k == 0 || k > vocab)
        {
            return Err(Error::invalid(
                "top-k",
                format!("{k}: expected 1..={vocab}"),
            ));
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        while start < seqs.len() {
            let mut end = start + 1;
            let mut tokens = seqs[start].0.len();
            while end < seqs.len() && tokens + seqs[end].0.len() <= self.max_tokens_per_pass {
                tokens += seqs[end].0.len();
                end += 1;
            }
            out.extend(tch::no_grad(|| self.pass(&seqs[start..end], topk))?);
            start = end;
        }
        Ok(out)
    }

    fn pass(
        &self,
        seqs: &[(&[TokenId], usize)],
        topk: Option<usize>,
    ) -> Result<Vec<ResponseScores>> {
        let device = self.model.device();
        let mut flat = Vec::new();
        let mut positions = Vec::new();
        let mut lengths = Vec::new();
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (tokens, p) in seqs {
            let offset = flat.len() as i64;
            flat.extend(tokens.iter().map(|&t| t as i64));
            positions.extend(0..tokens.len() as i64);
            lengths.push(tokens.len());
            for i in *p..tokens.len() {
                rows.push(offset + i as i64 - 1);
                targets.push(tokens[i] as i64);
            }
        }
        let hidden = self.model.forward_packed(
            &Tensor::from_slice(&flat).to_device(device),
            &Tensor::from_slice(&positions).to_device(device),
            &lengths,
        )?;
        let vocab = self.model.config().vocab_size;
        let chunk = (self.max_logits / vocab).max(1);
        let mut lp_all: Vec<f32> = Vec::with_capacity(rows.len());
        let k = topk.unwrap_or(0);
        let mut ids_all: Vec<i64> = Vec::with_capacity(rows.len() * k);
        let mut top_all: Vec<f32> = Vec::with_capacity(rows.len() * k);
        let mut tail_all: Vec<f32> = Vec::with_capacity(rows.len());
        for (r, t) in rows.chunks(chunk).zip(targets.chunks(chunk)) {
            let idx = Tensor::from_slice(r).to_device(device);
            let tgt = Tensor::from_slice(t).to_device(device);
            let lsm = self
                .model
                .logits(&hidden.index_select(0, &idx))
                .log_softmax(-1, Kind::Float);
            lp_all.extend(to_vec_f32(
                &lsm.gather(1, &tgt.unsqueeze(1), false).squeeze_dim(1),
            )?);
            if k > 0 {
                let (vals, ids) = lsm.topk(k as i64, -1, true, true);
                // The tail from the log-probs outside the top k, not as
                // `log(1 - Σ top-k)`: for a confident row the top-1
                // log-prob rounds to 0 in f32 and the difference cancels
                // to -inf, while the true tail is finite.
                let tail = lsm
                    .scatter_value(1, &ids, f64::NEG_INFINITY)
                    .logsumexp([-1], false);
                top_all.extend(to_vec_f32(&vals.flatten(0, -1))?);
                ids_all.extend(to_vec_i64(&ids.flatten(0, -1))?);
                tail_all.extend(to_vec_f32(&tail)?);
            }
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for (tokens, p) in seqs {
            let n = tokens.len() - p;
            let lp = lp_all[at..at + n].to_vec();
            let top = topk.map(|k| TopKTargets {
                k,
                ids: ids_all[at * k..(at + n) * k]
                    .iter()
                    .map(|&i| i as TokenId)
                    .collect(),
                logprobs: top_all[at * k..(at + n) * k].to_vec(),
                tail_logprob: tail_all[at..at + n].to_vec(),
            });
            out.push((lp, top));
            at += n;
        }
        Ok(out)
    }
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(tch::Device::Cpu)).map_err(|e| {
        Error::Backend {
            context: "reading scores".into(),
            cause: Box::new(e),
        }
    })
}

fn to_vec_i64(t: &Tensor) -> Result<Vec<i64>> {
    Vec::<i64>::try_from(t.to_device(tch::Device::Cpu)).map_err(|e| Error::Backend {
        context: "reading top-k ids".into(),
        cause: Box::new(e),
    })
}

impl Scorer for ModelScorer<'_> {
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        tch::no_grad(|| self.score_no_grad(requests, options))
    }
}

impl ModelScorer<'_> {
    fn score_no_grad(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        let seqs: Vec<(&[TokenId], usize)> =
            requests.iter().map(|r| (r.tokens, r.prompt_len)).collect();
        let conditioned = self.response_scores(&seqs, options.topk)?;
        let alone = match &options.alone_prefix {
            None => None,
            Some(prefix) if prefix.is_empty() => {
                return Err(Error::invalid(
                    "alone_prefix",
                    "empty: expected at least the token that starts a sequence (BOS)",
                ));
            }
            Some(prefix) => {
                let joined: Vec<Vec<TokenId>> = requests
                    .iter()
                    .map(|r| {
                        let mut v = prefix.clone();
                        v.extend_from_slice(&r.tokens[r.prompt_len..]);
                        v
                    })
                    .collect();
                let seqs: Vec<(&[TokenId], usize)> = joined
                    .iter()
                    .map(|v| (v.as_slice(), prefix.len()))
                    .collect();
                Some(self.response_scores(&seqs, None)?)
            }
        };
        Ok(conditioned
            .into_iter()
            .enumerate()
            .map(|(i, (lp, topk))| SequenceScores {
                logprobs: ResponseLogProbs {
                    conditioned: lp,
                    alone: alone.as_ref().map(|a| a[i].0.clone()).unwrap_or_default(),
                },
                topk,
            })
            .collect())
    }
}
