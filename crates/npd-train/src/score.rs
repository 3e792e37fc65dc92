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

/// Response log-probs of one sequence, and its top-k targets if asked.
pub type ResponseScores = (Vec<f32>, Option<TopKTargets>);

impl<'a> ModelScorer<'a> {
    /// A scorer with 8192 tokens per pass and at most 2^24 logits at once.
    pub fn new(model: &'a Llama) -> Self {
        Self {
            model,
            max_tokens_per_pass: 8192,
            max_logits: 1 << 24,
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
        let with: Vec<Seq<'_>> = seqs
            .iter()
            .map(|&(tokens, prompt_len)| Seq {
                tokens,
                prompt_len,
                topk: topk.is_some(),
            })
            .collect();
        self.scores(&with, topk.unwrap_or(0))
    }

    /// Scores of `seqs`, packed into as few forward passes as
    /// `max_tokens_per_pass` allows; the top-`k` targets only where a
    /// sequence asks for them.
    fn scores(&self, seqs: &[Seq<'_>], k: usize) -> Result<Vec<ResponseScores>> {
        let vocab = self.model.config().vocab_size;
        for (i, s) in seqs.iter().enumerate() {
            let (p, len) = (s.prompt_len, s.tokens.len());
            if p == 0 || p >= len {
                return Err(Error::invalid(
                    format!("score request {i}"),
                    format!(
                        "prompt_len {p} of a {len}-token sequence: expected 1 <= prompt_len < length \
                         (the first response token needs a token before it)"
                    ),
                ));
            }
        }
        if seqs.iter().any(|s| s.topk) && (k == 0 || k > vocab) {
            return Err(Error::invalid(
                "top-k",
                format!("{k}: expected 1..={vocab}"),
            ));
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        while start < seqs.len() {
            let mut end = start + 1;
            let mut tokens = seqs[start].tokens.len();
            while end < seqs.len() && tokens + seqs[end].tokens.len() <= self.max_tokens_per_pass {
                tokens += seqs[end].tokens.len();
                end += 1;
            }
            out.extend(tch::no_grad(|| self.pass(&seqs[start..end], k))?);
            start = end;
        }
        Ok(out)
    }

    fn pass(&self, seqs: &[Seq<'_>], k: usize) -> Result<Vec<ResponseScores>> {
        let device = self.model.device();
        let mut flat = Vec::new();
        let mut positions = Vec::new();
        let mut lengths = Vec::new();
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        // Whether each target row needs top-k targets.
        let mut wants = Vec::new();
        for s in seqs {
            let offset = flat.len() as i64;
            flat.extend(s.tokens.iter().map(|&t| t as i64));
            positions.extend(0..s.tokens.len() as i64);
            lengths.push(s.tokens.len());
            for i in s.prompt_len..s.tokens.len() {
                rows.push(offset + i as i64 - 1);
                targets.push(s.tokens[i] as i64);
                wants.push(s.topk);
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
        let mut ids_all: Vec<i64> = Vec::new();
        let mut top_all: Vec<f32> = Vec::new();
        let mut tail_all: Vec<f32> = Vec::new();
        let mut at = 0;
        while at < rows.len() {
            let end = (at + chunk).min(rows.len());
            let idx = Tensor::from_slice(&rows[at..end]).to_device(device);
            let tgt = Tensor::from_slice(&targets[at..end]).to_device(device);
            let lsm = self
                .model
                .logits(&hidden.index_select(0, &idx))
                .log_softmax(-1, Kind::Float);
            lp_all.extend(to_vec_f32(
                &lsm.gather(1, &tgt.unsqueeze(1), false).squeeze_dim(1),
            )?);
            let top_rows: Vec<i64> = (at..end)
                .filter(|&r| wants[r])
                .map(|r| (r - at) as i64)
                .collect();
            if !top_rows.is_empty() {
                let lsm = if top_rows.len() == end - at {
                    lsm
                } else {
                    lsm.index_select(0, &Tensor::from_slice(&top_rows).to_device(device))
                };
                let (vals, ids) = lsm.topk(k as i64, -1, true, true);
                let mass = vals.logsumexp([-1], false).exp();
                let tail = (-mass).clamp_min(-1.0).log1p();
                top_all.extend(to_vec_f32(&vals.flatten(0, -1))?);
                ids_all.extend(to_vec_i64(&ids.flatten(0, -1))?);
                tail_all.extend(to_vec_f32(&tail)?);
            }
            at = end;
        }
        let mut out = Vec::with_capacity(seqs.len());
        let (mut at, mut top_at) = (0, 0);
        for s in seqs {
            let n = s.tokens.len() - s.prompt_len;
            let lp = lp_all[at..at + n].to_vec();
            let top = s.topk.then(|| {
                let t = TopKTargets {
                    k,
                    ids: ids_all[top_at * k..(top_at + n) * k]
                        .iter()
                        .map(|&i| i as TokenId)
                        .collect(),
                    logprobs: top_all[top_at * k..(top_at + n) * k].to_vec(),
                    tail_logprob: tail_all[top_at..top_at + n].to_vec(),
                };
                top_at += n;
                t
            });
            out.push((lp, top));
            at += n;
        }
        Ok(out)
    }
}

/// One sequence to score: response tokens from `prompt_len` on, top-k
/// targets if `topk`.
struct Seq<'s> {
    tokens: &'s [TokenId],
    prompt_len: usize,
    topk: bool,
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(tch::Device::Cpu)).map_err(|e| {
        Error::Backend {
            context: "reading scores".into(),
            source: Box::new(e),
        }
    })
}

fn to_vec_i64(t: &Tensor) -> Result<Vec<i64>> {
    Vec::<i64>::try_from(t.to_device(tch::Device::Cpu)).map_err(|e| Error::Backend {
        context: "reading top-k ids".into(),
        source: Box::new(e),
    })
}

impl Scorer for ModelScorer<'_> {
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        if options.alone_prefix.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid(
                "alone_prefix",
                "empty: expected at least the token that starts a sequence (BOS)",
            ));
        }
        // The response-alone sequences ride in the same forward passes as
        // the conditioned ones.
        let alone: Vec<Vec<TokenId>> = match &options.alone_prefix {
            None => Vec::new(),
            Some(prefix) => requests
                .iter()
                .map(|r| {
                    let mut v = prefix.clone();
                    v.extend_from_slice(r.tokens.get(r.prompt_len..).unwrap_or_default());
                    v
                })
                .collect(),
        };
        let prefix_len = options.alone_prefix.as_ref().map_or(0, Vec::len);
        let seqs: Vec<Seq<'_>> = requests
            .iter()
            .map(|r| Seq {
                tokens: r.tokens,
                prompt_len: r.prompt_len,
                topk: options.topk.is_some(),
            })
            .chain(alone.iter().map(|v| Seq {
                tokens: v,
                prompt_len: prefix_len,
                topk: false,
            }))
            .collect();
        let mut scores = self.scores(&seqs, options.topk.unwrap_or(0))?;
        let alone = scores.split_off(requests.len());
        let conditioned = scores;
        Ok(conditioned
            .into_iter()
            .enumerate()
            .map(|(i, (lp, topk))| SequenceScores {
                logprobs: ResponseLogProbs {
                    conditioned: lp,
                    alone: alone.get(i).map(|a| a.0.clone()).unwrap_or_default(),
                },
                topk,
            })
            .collect())
    }
}
