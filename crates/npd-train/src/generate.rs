//! Batched generation with a KV cache: greedy, temperature, top-k and top-p
//! sampling, seeded and reproducible.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tch::{Device, Kind, Tensor};

use npd_core::{Error, FinishReason, Result, SamplingParams, TokenId};

use crate::model::{KvCache, Llama};

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Response tokens (the stop token included when one was sampled).
    pub tokens: Vec<TokenId>,
    /// Log-probability of each response token under the model at
    /// temperature 1, given everything before it.
    pub logprobs: Vec<f32>,
    /// Why generation ended.
    pub finish: FinishReason,
}

/// Whether decoding reuses keys and values of earlier positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// Incremental decoding with a KV cache (the normal mode).
    Cached,
    /// Recompute the whole sequence at every step (a reference for tests and
    /// benchmarks).
    Uncached,
}

/// Generates one response per prompt, in prompt order.
///
/// Prompts are left-padded into one batch; positions start at 0 at each
/// prompt's first token. Each response ends at a stop id (included) or after
/// `max_new_tokens`.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<TokenId>],
    params: &SamplingParams,
    decoding: Decoding,
) -> Result<Vec<Generation>> {
    validate(model, prompts, params)?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    tch::no_grad(|| run(model, prompts, params, decoding))
}

fn validate(model: &Llama, prompts: &[Vec<TokenId>], params: &SamplingParams) -> Result<()> {
    let vocab = model.config().vocab_size;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::invalid(format!("prompt {i}"), "is empty"));
        }
        if let Some(t) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                format!("prompt {i}"),
                format!("token {t} outside the vocabulary of {vocab}"),
            ));
        }
    }
    if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
        return Err(Error::invalid(
            "sampling.temperature",
            format!("{}: expected a finite number >= 0", params.temperature),
        ));
    }
    if !(params.top_p > 0.0 && params.top_p <= 1.0) {
        return Err(Error::invalid(
            "sampling.top_p",
            format!("{}: expected a number in (0, 1]", params.top_p),
        ));
    }
    if params.top_k == Some(0) {
        return Err(Error::invalid("sampling.top_k", "0: expected at least 1"));
    }
    Ok(())
}

struct Batch {
    device: Device,
    /// Left padding of each row.
    pad: Vec<i64>,
    /// Every token so far, per row, padding included.
    rows: Vec<Vec<i64>>,
}

impl Batch {
    /// Keeps the rows `keep` (batch indices, in order).
    fn retain(&mut self, keep: &[usize]) {
        self.rows = keep
            .iter()
            .map(|&b| std::mem::take(&mut self.rows[b]))
            .collect();
        self.pad = keep.iter().map(|&b| self.pad[b]).collect();
    }

    fn width(&self) -> i64 {
        self.rows[0].len() as i64
    }

    /// Positions and mask for queries `from..width` against keys
    /// `0..width`: causal, not attending to padding (a padding query attends
    /// to itself so no row is empty).
    fn inputs(&self, from: i64) -> (Tensor, Tensor, Tensor) {
        let w = self.width();
        let s = w - from;
        let b = self.rows.len() as i64;
        let mut tokens = Vec::with_capacity((b * s) as usize);
        let mut positions = Vec::with_capacity((b * s) as usize);
        let mut mask = Vec::with_capacity((b * s * w) as usize);
        for (row, &pad) in self.rows.iter().zip(&self.pad) {
            for q in from..w {
                tokens.push(row[q as usize]);
                positions.push((q - pad).max(0));
                mask.extend((0..w).map(|k| k <= q && (k >= pad || k == q)));
            }
        }
        let dev = self.device;
        (
            Tensor::from_slice(&tokens).view([b, s]).to_device(dev),
            Tensor::from_slice(&positions).view([b, s]).to_device(dev),
            Tensor::from_slice(&mask).view([b, 1, s, w]).to_device(dev),
        )
    }
}

fn run(
    model: &Llama,
    prompts: &[Vec<TokenId>],
    params: &SamplingParams,
    decoding: Decoding,
) -> Result<Vec<Generation>> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad_id = model.config().pad_token_id.unwrap_or(0) as i64;
    let mut batch = Batch {
        device: model.device(),
        pad: prompts.iter().map(|p| (longest - p.len()) as i64).collect(),
        rows: prompts
            .iter()
            .map(|p| {
                let mut row = vec![pad_id; longest - p.len()];
                row.extend(p.iter().map(|&t| t as i64));
                row
            })
            .collect(),
    };
    let capacity = longest + params.max_new_tokens;
    let mut cache: Option<KvCache> = None;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; prompts.len()];
    // Prompt index of each batch row; finished rows leave the batch.
    let mut active: Vec<usize> = (0..prompts.len()).collect();

    for _ in 0..params.max_new_tokens {
        let hidden = match decoding {
            Decoding::Cached => {
                let c = cache.get_or_insert_with(|| model.new_cache(active.len(), capacity));
                let (t, p, m) = batch.inputs(c.len() as i64);
                model.forward_cached(&t, &p, &m, c)?
            }
            Decoding::Uncached => {
                let mut c = model.new_cache(active.len(), batch.width() as usize);
                let (t, p, m) = batch.inputs(0);
                model.forward_cached(&t, &p, &m, &mut c)?
            }
        };
        let last = hidden.select(1, hidden.size()[1] - 1);
        let logits = model
            .logits(&last)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        let vocab = logits.size()[1] as usize;
        let flat = Vec::<f32>::try_from(logits.flatten(0, -1)).map_err(|e| Error::Backend {
            context: "reading logits".into(),
            cause: Box::new(e),
        })?;
        for (b, row) in flat.chunks(vocab).enumerate() {
            let i = active[b];
            let next = if done[i] {
                pad_id
            } else {
                let tok = pick(row, params, &mut rng);
                out[i].tokens.push(tok as TokenId);
                out[i].logprobs.push(log_softmax_at(row, tok));
                if params.stop_ids.contains(&(tok as TokenId)) {
                    done[i] = true;
                    out[i].finish = FinishReason::Stop;
                }
                tok as i64
            };
            batch.rows[b].push(next);
        }
        let finished = active.iter().filter(|&&i| done[i]).count();
        if finished == active.len() {
            break;
        }
        // Drop finished rows once they are a quarter of the batch: each
        // drop copies the cache, so it is worth it only in bulk.
        if finished * 4 >= active.len() {
            let keep: Vec<usize> = (0..active.len()).filter(|&b| !done[active[b]]).collect();
            batch.retain(&keep);
            if let Some(c) = cache.as_mut() {
                c.retain_rows(&keep.iter().map(|&b| b as i64).collect::<Vec<_>>());
            }
            active = keep.iter().map(|&b| active[b]).collect();
        }
    }
    Ok(out)
}

/// `log softmax(row)[i]`.
fn log_softmax_at(row: &[f32], i: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    (row[i] - max) - sum.ln() as f32
}

/// Picks the next token: argmax at temperature 0, else a sample from the
/// tempered distribution restricted to the top k and the top-p nucleus.
fn pick(row: &[f32], params: &SamplingParams, rng: &mut StdRng) -> usize {
    if params.temperature == 0.0 {
        return argmax(row);
    }
    let inv_t = 1.0 / params.temperature as f64;
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let restrict = params.top_k.is_some_and(|k| k < row.len()) || params.top_p < 1.0;
    if restrict {
        // Most likely first, ties by id.
        idx.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        if let Some(k) = params.top_k {
            idx.truncate(k.max(1));
        }
    }
    let max = idx
        .iter()
        .map(|&i| row[i])
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut weights: Vec<f64> = idx
        .iter()
        .map(|&i| ((row[i] as f64 - max) * inv_t).exp())
        .collect();
    if params.top_p < 1.0 {
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut keep = weights.len();
        for (n, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= params.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        weights.truncate(keep);
    }
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (n, w) in weights.iter().enumerate() {
        u -= w;
        if u < 0.0 {
            return idx[n];
        }
    }
    idx[weights.len() - 1]
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            max_new_tokens: 1,
            stop_ids: vec![],
            seed: 0,
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let row = [0.1, 3.0, 2.9, -1.0];
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            assert_eq!(pick(&row, &params(1.0, Some(1), 1.0), &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps two.
        let row = [3.0, 2.0, 1.0, 0.0];
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[pick(&row, &params(1.0, None, 0.8), &mut rng)] += 1;
        }
        assert!(
            seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0,
            "{seen:?}"
        );
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let row = [0.0f32, (3.0f32).ln()];
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| pick(&row, &params(1.0, None, 1.0), &mut rng) == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn log_softmax_normalises() {
        let row = [1.0f32, 2.0, 3.0];
        let total: f32 = (0..3).map(|i| log_softmax_at(&row, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
