//! vLLM's OpenAI-compatible server: the requests npd sends and the parts of
//! the answers it reads.
//!
//! - Sampling: `POST /v1/completions` with the prompt as token ids, the
//!   sampled tokens' log-probs (`logprobs: 0`) and `return_token_ids`.
//! - Scoring: the same endpoint with `prompt_logprobs: k` and
//!   `max_tokens: 1`; position 0 is `null`, and a position whose actual
//!   token is outside the top k carries k + 1 entries.
//! - Weight refresh (`VLLM_SERVER_DEV_MODE=1`): `POST /pause`,
//!   `POST /collective_rpc` with `reload_weights`, `POST /resume`.

use std::path::Path;

use serde_json::{Value, json};

use npd_core::{Error, FinishReason, Result, SamplingParams, TokenId};

use crate::client::Client;

/// One vLLM server.
#[derive(Debug, Clone)]
pub struct Vllm {
    client: Client,
    model: String,
    max_model_len: usize,
}

/// A sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Sampled token ids, the stop id included when one ended it.
    pub tokens: Vec<TokenId>,
    /// Log-prob of each sampled token under the server's model.
    pub logprobs: Vec<f32>,
    /// Why sampling ended.
    pub finish: FinishReason,
}

/// Log-probs of a sequence's tokens after position 0.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprobs {
    /// Log-prob of each actual token `tokens[i + 1]`.
    pub actual: Vec<f32>,
    /// The top k `(token, log-prob)` at each position, best first (empty
    /// when k was 0).
    pub topk: Vec<Vec<(TokenId, f32)>>,
}

impl Vllm {
    /// Connects to the server behind `client`: reads the served model's
    /// name and context length from `GET /v1/models`.
    pub fn connect(client: Client) -> Result<Self> {
        let models = client.get("/v1/models")?;
        let first = models["data"]
            .get(0)
            .ok_or_else(|| invalid_answer(&client, "/v1/models", "no model in `data`", &models))?;
        let model = first["id"]
            .as_str()
            .ok_or_else(|| invalid_answer(&client, "/v1/models", "no `id`", first))?
            .to_string();
        let max_model_len = first["max_model_len"].as_u64().unwrap_or(u64::MAX) as usize;
        Ok(Self {
            client,
            model,
            max_model_len,
        })
    }

    /// The HTTP client (its URL names the server in errors).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The served model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The longest sequence the server accepts.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Samples one completion of `prompt` with its own `seed`, ended only
    /// by `params.stop_ids` or the token budget (the server's own EOS
    /// notion is ignored, so the trainer's special tokens decide).
    pub fn complete(
        &self,
        prompt: &[TokenId],
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Completion> {
        let body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k.map_or(-1, |k| k as i64),
            // vLLM's seed is a signed 64-bit integer.
            "seed": seed >> 1,
            "n": 1,
            "logprobs": 0,
            "return_token_ids": true,
            "ignore_eos": true,
            "stop_token_ids": params.stop_ids,
            "skip_special_tokens": false,
            "include_stop_str_in_output": true,
        });
        let path = "/v1/completions";
        let answer = self.client.post(path, &body)?;
        let choice = &answer["choices"][0];
        let bad = |what: &str| invalid_answer(&self.client, path, what, &answer);
        let tokens = token_ids(&choice["token_ids"]).ok_or_else(|| bad("no `token_ids`"))?;
        let logprobs: Vec<f32> = choice["logprobs"]["token_logprobs"]
            .as_array()
            .ok_or_else(|| bad("no `logprobs.token_logprobs`"))?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32).unwrap_or(f32::NEG_INFINITY))
            .collect();
        if logprobs.len() != tokens.len() {
            return Err(bad(&format!(
                "{} log-probs for {} tokens",
                logprobs.len(),
                tokens.len()
            )));
        }
        let finish = match choice["finish_reason"].as_str() {
            Some("length") => FinishReason::Length,
            Some("stop") => FinishReason::Stop,
            other => return Err(bad(&format!("finish_reason {other:?}"))),
        };
        Ok(Completion {
            tokens,
            logprobs,
            finish,
        })
    }

    /// Log-probs of every token of `tokens` after the first, with the top
    /// `k` at each position (k = 0: the actual tokens' only).
    pub fn prompt_logprobs(&self, tokens: &[TokenId], k: usize) -> Result<PromptLogprobs> {
        let mut all = self.prompt_logprobs_many(&[tokens], k)?;
        Ok(all.remove(0))
    }

    /// [`Vllm::prompt_logprobs`] of several sequences in one request (the
    /// server batches them).
    pub fn prompt_logprobs_many(
        &self,
        seqs: &[&[TokenId]],
        k: usize,
    ) -> Result<Vec<PromptLogprobs>> {
        for tokens in seqs {
            if tokens.len() > self.max_model_len {
                return Err(Error::invalid(
                    format!("scoring request to {}", self.client.base()),
                    format!(
                        "{} tokens; the server's max_model_len is {}",
                        tokens.len(),
                        self.max_model_len
                    ),
                ));
            }
        }
        let body = json!({
            "model": self.model,
            "prompt": seqs,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": k,
        });
        let path = "/v1/completions";
        let answer = self.client.post(path, &body)?;
        let choices = answer["choices"]
            .as_array()
            .filter(|c| c.len() == seqs.len())
            .ok_or_else(|| {
                invalid_answer(
                    &self.client,
                    path,
                    &format!("expected {} choices", seqs.len()),
                    &answer,
                )
            })?;
        let mut out: Vec<Option<PromptLogprobs>> = vec![None; seqs.len()];
        for (i, choice) in choices.iter().enumerate() {
            let index = choice["index"].as_u64().map_or(i, |x| x as usize);
            let tokens = seqs.get(index).ok_or_else(|| {
                invalid_answer(&self.client, path, &format!("choice index {index}"), choice)
            })?;
            out[index] =
                Some(self.parse_prompt_logprobs(path, tokens, k, &choice["prompt_logprobs"])?);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.ok_or_else(|| {
                    invalid_answer(
                        &self.client,
                        path,
                        &format!("no choice for sequence {i}"),
                        &Value::Null,
                    )
                })
            })
            .collect()
    }

    fn parse_prompt_logprobs(
        &self,
        path: &str,
        tokens: &[TokenId],
        k: usize,
        positions: &Value,
    ) -> Result<PromptLogprobs> {
        let positions = positions
            .as_array()
            .ok_or_else(|| invalid_answer(&self.client, path, "no `prompt_logprobs`", positions))?;
        if positions.len() != tokens.len() {
            return Err(invalid_answer(
                &self.client,
                path,
                &format!("{} positions for {} tokens", positions.len(), tokens.len()),
                &Value::Null,
            ));
        }
        let mut out = PromptLogprobs {
            actual: Vec::with_capacity(tokens.len().saturating_sub(1)),
            topk: Vec::new(),
        };
        for (pos, entry) in positions.iter().enumerate().skip(1) {
            let bad = |what: String| {
                invalid_answer(
                    &self.client,
                    path,
                    &format!("position {pos}: {what}"),
                    entry,
                )
            };
            let map = entry
                .as_object()
                .ok_or_else(|| bad("not a map of token id to log-prob".into()))?;
            let mut ranked: Vec<(TokenId, f32, u64)> = Vec::with_capacity(map.len());
            let mut actual = None;
            for (id, v) in map {
                let id: TokenId = id
                    .parse()
                    .map_err(|_| bad(format!("token id {id:?} is not a number")))?;
                let lp = v["logprob"]
                    .as_f64()
                    .map_or(f32::NEG_INFINITY, |x| x as f32);
                let rank = v["rank"].as_u64().unwrap_or(u64::MAX);
                if id == tokens[pos] {
                    actual = Some(lp);
                }
                ranked.push((id, lp, rank));
            }
            out.actual
                .push(actual.ok_or_else(|| {
                    bad(format!("no entry for the actual token {}", tokens[pos]))
                })?);
            if k > 0 {
                ranked.sort_by_key(|&(_, _, rank)| rank);
                ranked.retain(|&(_, _, rank)| rank as usize <= k);
                if ranked.len() != k {
                    return Err(bad(format!("{} top entries, expected {k}", ranked.len())));
                }
                out.topk
                    .push(ranked.into_iter().map(|(id, lp, _)| (id, lp)).collect());
            }
        }
        Ok(out)
    }

    /// Token strings of `ids` as the server's tokenizer writes them.
    pub fn detokenize(&self, ids: &[TokenId]) -> Result<Vec<String>> {
        ids.iter()
            .map(|&id| {
                let path = "/detokenize";
                let answer = self
                    .client
                    .post(path, &json!({"model": self.model, "tokens": [id]}))?;
                answer["prompt"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid_answer(&self.client, path, "no `prompt`", &answer))
            })
            .collect()
    }

    /// Loads the weights in `dir` (the served model's architecture and
    /// layout) between a pause and a resume, so no request is served by a
    /// mix of versions. Not retried: a reload that failed half-way is
    /// reported, and the caller's probe check decides.
    pub fn reload(&self, dir: &Path) -> Result<()> {
        let call = |path: &str, body: Value| -> Result<()> {
            match self.client.post_once(path, &body)? {
                Some(_) => Ok(()),
                None => Err(Error::Backend {
                    context: format!("POST {}{path}", self.client.base()),
                    cause: "cannot reach the server".into(),
                }),
            }
        };
        call("/pause", json!({}))?;
        let reloaded = call(
            "/collective_rpc",
            json!({"method": "reload_weights", "kwargs": {"weights_path": dir}}),
        );
        let resumed = call("/resume", json!({}));
        reloaded.and(resumed)
    }
}

fn token_ids(v: &Value) -> Option<Vec<TokenId>> {
    v.as_array()?
        .iter()
        .map(|t| t.as_u64().and_then(|x| TokenId::try_from(x).ok()))
        .collect()
}

fn invalid_answer(client: &Client, path: &str, what: &str, answer: &Value) -> Error {
    let mut text = answer.to_string();
    if text.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    Error::Backend {
        context: format!("POST {}{path}", client.base()),
        cause: format!("unexpected answer: {what}: {text}").into(),
    }
}
