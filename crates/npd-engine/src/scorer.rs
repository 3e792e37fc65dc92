//! A [`Scorer`] backed by a vLLM server (the teacher, usually).

use npd_core::traits::{ScoreOptions, ScoreRequest, Scorer, SequenceScores};
use npd_core::{Error, ResponseLogProbs, Result, TokenId, TopKTargets};

use crate::group::ServerGroup;
use crate::pool::map_bounded;
use crate::vllm::Vllm;

/// Scores sequences with `prompt_logprobs` requests, `concurrency` in
/// flight at once, spread over a group of servers (a member that stops
/// answering is left out).
#[derive(Debug, Clone)]
pub struct VllmScorer {
    servers: ServerGroup,
    concurrency: usize,
}

impl VllmScorer {
    /// A scorer over `servers` (one server or a group) with at most
    /// `concurrency` requests in flight.
    pub fn new(servers: impl Into<ServerGroup>, concurrency: usize) -> Self {
        Self {
            servers: servers.into(),
            concurrency: concurrency.max(1),
        }
    }

    /// The servers.
    pub fn servers(&self) -> &ServerGroup {
        &self.servers
    }

    /// Scores a chunk of requests in one server request (and their
    /// response-alone passes in a second).
    fn score_chunk(
        server: &Vllm,
        chunk: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        for r in chunk {
            if r.prompt_len == 0 || r.prompt_len > r.tokens.len() {
                return Err(Error::invalid(
                    "score request",
                    format!(
                        "prompt length {} for a sequence of {} tokens; at least one prompt token is needed",
                        r.prompt_len,
                        r.tokens.len()
                    ),
                ));
            }
        }
        let k = options.topk.unwrap_or(0);
        let seqs: Vec<&[TokenId]> = chunk.iter().map(|r| r.tokens).collect();
        let all = server.prompt_logprobs_many(&seqs, k)?;
        let alone = match &options.alone_prefix {
            Some(prefix) => {
                if prefix.is_empty() {
                    return Err(Error::invalid(
                        "score options",
                        "the response-alone prefix needs at least one token (BOS)",
                    ));
                }
                alone_logprobs(
                    server,
                    prefix,
                    chunk.iter().map(|r| &r.tokens[r.prompt_len..]),
                )?
            }
            None => vec![Vec::new(); chunk.len()],
        };
        Ok(chunk
            .iter()
            .zip(all)
            .zip(alone)
            .map(|((r, all), alone)| {
                let from = r.prompt_len - 1;
                SequenceScores {
                    logprobs: ResponseLogProbs {
                        conditioned: all.actual[from..].to_vec(),
                        alone,
                    },
                    topk: options.topk.map(|k| topk_targets(k, &all.topk[from..])),
                }
            })
            .collect())
    }
}

/// Sequences per scoring request: the server batches them.
pub const SEQUENCES_PER_REQUEST: usize = 16;

/// Log-probs of each response after `prefix` (empty responses get none),
/// in one request.
pub fn alone_logprobs<'r>(
    server: &Vllm,
    prefix: &[TokenId],
    responses: impl Iterator<Item = &'r [TokenId]>,
) -> Result<Vec<Vec<f32>>> {
    let seqs: Vec<Vec<TokenId>> = responses.map(|r| [prefix, r].concat()).collect();
    let nonempty: Vec<&[TokenId]> = seqs
        .iter()
        .filter(|s| s.len() > prefix.len())
        .map(Vec::as_slice)
        .collect();
    let mut scored = if nonempty.is_empty() {
        Vec::new()
    } else {
        server.prompt_logprobs_many(&nonempty, 0)?
    }
    .into_iter();
    Ok(seqs
        .iter()
        .map(|s| {
            if s.len() > prefix.len() {
                scored
                    .next()
                    .map(|p| p.actual[prefix.len() - 1..].to_vec())
                    .unwrap_or_default()
            } else {
                Vec::new()
            }
        })
        .collect())
}

/// Top-k entries per position as [`TopKTargets`], with the tail mass
/// `log(1 - Σ p)`, computed so that it does not cancel (see [`tail_logprob`]).
pub fn topk_targets(k: usize, positions: &[Vec<(TokenId, f32)>]) -> TopKTargets {
    let mut t = TopKTargets {
        k,
        ids: Vec::with_capacity(positions.len() * k),
        logprobs: Vec::with_capacity(positions.len() * k),
        tail_logprob: Vec::with_capacity(positions.len()),
    };
    for entries in positions {
        for &(id, lp) in entries {
            t.ids.push(id);
            t.logprobs.push(lp);
        }
        let lps: Vec<f32> = entries.iter().map(|&(_, lp)| lp).collect();
        t.tail_logprob.push(tail_logprob(&lps));
    }
    t
}

/// The log of the mass outside the top-k log-probs `lps` (a server returns
/// no more of the distribution). `1 - p_1` is taken as `-expm1(log p_1)` in
/// f64, so a confident row (top-1 log-prob near 0) keeps its small tail
/// instead of cancelling to `-inf`. When that leaves nothing (a top-1
/// log-prob of exactly 0 in f32), the tail is below f32's resolution near
/// 1 and is taken as `ln(2^-24)`, about -16.6 nats.
pub fn tail_logprob(lps: &[f32]) -> f32 {
    let floor = (f64::from(f32::EPSILON) / 2.0).ln();
    let Some(top) = (0..lps.len()).max_by(|&a, &b| lps[a].total_cmp(&lps[b])) else {
        return 0.0;
    };
    let others: f64 = (lps.iter().enumerate())
        .filter(|&(i, _)| i != top)
        .map(|(_, &x)| f64::from(x).exp())
        .sum();
    let tail = -f64::from(lps[top]).exp_m1() - others;
    if tail > 0.0 {
        tail.ln() as f32
    } else {
        floor as f32
    }
}

impl Scorer for VllmScorer {
    fn score(
        &mut self,
        requests: &[ScoreRequest<'_>],
        options: &ScoreOptions,
    ) -> Result<Vec<SequenceScores>> {
        let chunks: Vec<&[ScoreRequest<'_>]> = requests.chunks(SEQUENCES_PER_REQUEST).collect();
        let scored = map_bounded(&chunks, self.concurrency, |i, c| {
            self.servers
                .call(i as u64, |s| Self::score_chunk(s, c, options))
        })?;
        Ok(scored.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_mass_is_what_the_top_k_leave() {
        let half = 0.5f32.ln();
        let quarter = 0.25f32.ln();
        let t = topk_targets(
            2,
            &[vec![(3, half), (4, quarter)], vec![(5, half), (6, half)]],
        );
        t.validate("test", 2).unwrap();
        assert_eq!(t.ids, vec![3, 4, 5, 6]);
        assert!((t.tail_logprob[0] - quarter).abs() < 1e-6);
        // All the mass in the top k (up to rounding): the floor.
        assert!(t.tail_logprob[1] < -10.0, "{}", t.tail_logprob[1]);
    }

    #[test]
    fn a_confident_row_keeps_its_tail() {
        // p_1 = 1 - 1.5e-7, p_2 = 1e-7: the tail is 5e-8, but in f32
        // 1 - (p_1 + p_2) cancels to 0 or below.
        let lp1 = (1.0f64 - 1.5e-7).ln() as f32;
        let lp2 = (1e-7f64).ln() as f32;
        let got = f64::from(tail_logprob(&[lp2, lp1]));
        let want = (-f64::from(lp1).exp_m1() - f64::from(lp2).exp()).ln();
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        assert!(want > -17.0 && want < -16.0, "{want}");
        // A top-1 log-prob of exactly 0: below f32's resolution, floored.
        let floored = tail_logprob(&[0.0, lp2]);
        assert!(floored.is_finite() && floored < -16.0, "{floored}");
    }
}
