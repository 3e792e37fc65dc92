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
        let logits = model.logits(&last).to_kind(Kind::Float);
        // Only the picked tokens and their log-probs reach the host.
        let (tokens, logprobs) = pick(&logits, params, &mut rng)?;
        for (b, (&tok, &logprob)) in tokens.iter().zip(&logprobs).enumerate() {
            let i = active[b];
            let next = if done[i] {
                pad_id
            } else {
                out[i].tokens.push(tok as TokenId);
                out[i].logprobs.push(logprob);
                if params.stop_ids.contains(&(tok as TokenId)) {
                    done[i] = true;
                    out[i].finish = FinishReason::Stop;
                }
                tok
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

/// Picks the next token of each row of `logits` (`[rows, vocab]` f32, on
/// the model's device), on the device: the argmax at temperature 0, else a
/// sample from the tempered distribution restricted to the top k and the
/// top-p nucleus (most likely first, ties by id), drawn with one uniform
/// number per row from `rng`. Returns each row's token and its log-prob at
/// temperature 1; only these cross to the host (one synchronisation).
fn pick(
    logits: &Tensor,
    params: &SamplingParams,
    rng: &mut StdRng,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let (rows, vocab) = logits.size2().map_err(|e| Error::Backend {
        context: "logits".into(),
        cause: Box::new(e),
    })?;
    let tokens = if params.temperature == 0.0 {
        logits.argmax(-1, false)
    } else {
        let scaled = logits.to_kind(Kind::Double) / params.temperature as f64;
        let top_k = params.top_k.map_or(vocab, |k| (k as i64).clamp(1, vocab));
        let restrict = top_k < vocab || params.top_p < 1.0;
        let (values, ids) = if restrict {
            let (v, i) = scaled.sort_stable(true, -1, true);
            (v.narrow(1, 0, top_k), Some(i.narrow(1, 0, top_k)))
        } else {
            (scaled, None)
        };
        let mut weights = (&values - values.max_dim(1, true).0).exp();
        if params.top_p < 1.0 {
            // Keep each candidate whose predecessors' mass is below top_p.
            let p = &weights / weights.sum_dim_intlist(1, true, Kind::Double);
            let before = p.cumsum(1, Kind::Double) - &p;
            weights *= before.lt(params.top_p as f64).to_kind(Kind::Double);
        }
        let cumulative = weights.cumsum(1, Kind::Double);
        let n = cumulative.size()[1];
        let total = cumulative.narrow(1, n - 1, 1);
        let uniforms: Vec<f64> = (0..rows).map(|_| rng.random::<f64>()).collect();
        let u = Tensor::from_slice(&uniforms)
            .to_device(logits.device())
            .unsqueeze(1)
            * total;
        // The first candidate whose cumulative weight exceeds u.
        let at = cumulative
            .le_tensor(&u)
            .sum_dim_intlist(1, false, Kind::Int64)
            .clamp_max(n - 1);
        match ids {
            Some(ids) => ids.gather(1, &at.unsqueeze(1), false).squeeze_dim(1),
            None => at,
        }
    };
    let logprobs = logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &tokens.unsqueeze(1), false)
        .squeeze_dim(1);
    let both = Tensor::stack(
        &[tokens.to_kind(Kind::Double), logprobs.to_kind(Kind::Double)],
        0,
    )
    .to_device(Device::Cpu);
    let flat = Vec::<f64>::try_from(both.flatten(0, -1)).map_err(|e| Error::Backend {
        context: "reading sampled tokens".into(),
        cause: Box::new(e),
    })?;
    let (tokens, logprobs) = flat.split_at(rows as usize);
    Ok((
        tokens.iter().map(|&t| t as i64).collect(),
        logprobs.iter().map(|&l| l as f32).collect(),
    ))
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

    /// `rows` copies of `row` as a logits tensor.
    fn batch(row: &[f32], rows: i64) -> Tensor {
        Tensor::from_slice(row).unsqueeze(0).repeat([rows, 1])
    }

    fn picks(row: &[f32], rows: i64, p: &SamplingParams, seed: u64) -> Vec<i64> {
        let mut rng = StdRng::seed_from_u64(seed);
        pick(&batch(row, rows), p, &mut rng).unwrap().0
    }

    #[test]
    fn top_k_one_and_temperature_zero_are_greedy() {
        let row = [0.1, 3.0, 2.9, -1.0];
        assert!(
            picks(&row, 50, &params(1.0, Some(1), 1.0), 3)
                .iter()
                .all(|&t| t == 1)
        );
        assert!(
            picks(&row, 50, &params(0.0, None, 1.0), 3)
                .iter()
                .all(|&t| t == 1)
        );
        // Ties go to the lowest id.
        let tie = [0.5, 2.0, 2.0];
        assert!(
            picks(&tie, 20, &params(1.0, Some(1), 1.0), 1)
                .iter()
                .all(|&t| t == 1)
        );
        assert!(
            picks(&tie, 20, &params(0.0, None, 1.0), 1)
                .iter()
                .all(|&t| t == 1)
        );
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps two.
        let mut seen = [0; 4];
        for t in picks(&[3.0, 2.0, 1.0, 0.0], 2000, &params(1.0, None, 0.8), 5) {
            seen[t as usize] += 1;
        }
        assert!(
            seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0,
            "{seen:?}"
        );
        // top_k 3 with top_p 1 never picks the fourth.
        let ids = picks(&[3.0, 2.0, 1.0, 0.5], 4000, &params(2.0, Some(3), 1.0), 6);
        assert!(ids.iter().all(|&t| t < 3) && ids.contains(&2));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let row = [0.0f32, (3.0f32).ln()];
        let n = 20_000;
        let ones = picks(&row, n, &params(1.0, None, 1.0), 7)
            .iter()
            .filter(|&&t| t == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
        // Temperature 2 flattens 3:1 into sqrt(3):1.
        let ones = picks(&row, n, &params(2.0, None, 1.0), 8)
            .iter()
            .filter(|&&t| t == 1)
            .count();
        let want = 3f64.sqrt() / (1.0 + 3f64.sqrt());
        assert!((ones as f64 / n as f64 - want).abs() < 0.02);
    }

    #[test]
    fn log_probs_are_at_temperature_one_and_sampling_is_seeded() {
        let row = [1.0f32, 2.0, 3.0];
        let mut rng = StdRng::seed_from_u64(9);
        let (ids, lps) = pick(&batch(&row, 64), &params(0.7, None, 1.0), &mut rng).unwrap();
        let norm = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (&t, &lp) in ids.iter().zip(&lps) {
            let want = (row[t as usize] as f64 - norm) as f32;
            assert!((lp - want).abs() < 1e-6, "{lp} against {want}");
        }
        assert_eq!(picks(&row, 64, &params(0.7, None, 1.0), 9), ids);
    }
}
