//! A [`Generator`] backed by a [`Llama`] student snapshot.

use tch::Tensor;

use npd_core::shuffle::derive_seed;
use npd_core::traits::Generator;
use npd_core::{Error, PolicyVersion, Prompt, Result, Rollout, SamplingParams, TokenId};

use crate::score::ModelScorer;

use crate::generate::{Decoding, generate};
use crate::model::Llama;

/// Weights as published by [`crate::train::Trainer`]: name and tensor.
pub type Weights = Vec<(String, Tensor)>;

/// A student snapshot that writes rollouts with the KV-cache decoder.
#[derive(Debug)]
pub struct ModelGenerator {
    model: Llama,
    version: PolicyVersion,
    threads: Option<i32>,
    alone_prefix: Option<Vec<TokenId>>,
    last_threads: Option<i32>,
}

/// Sets libtorch's intra-op thread count for a scope and puts the caller's
/// back when dropped, so that a stage's budget never leaks into the stage
/// that runs next on the same thread.
#[derive(Debug)]
pub struct ThreadScope {
    before: i32,
}

impl ThreadScope {
    /// Runs the scope with `threads` intra-op threads.
    pub fn new(threads: i32) -> Self {
        let before = tch::get_num_threads();
        if threads != before {
            tch::set_num_threads(threads);
        }
        Self { before }
    }
}

impl Drop for ThreadScope {
    fn drop(&mut self) {
        if tch::get_num_threads() != self.before {
            tch::set_num_threads(self.before);
        }
    }
}

impl ModelGenerator {
    /// Wraps a model holding the weights of `version`.
    pub fn new(model: Llama, version: PolicyVersion) -> Self {
        Self {
            model,
            version,
            threads: None,
            alone_prefix: None,
            last_threads: None,
        }
    }

    /// Also scores each response alone after `prefix` (BOS and the
    /// assistant header) with the same snapshot, filling
    /// [`Rollout::response_alone_logprobs`]: the student's IFD terms then
    /// come from the generating thread, overlapped with training.
    pub fn with_alone_prefix(mut self, prefix: Vec<TokenId>) -> Self {
        self.alone_prefix = Some(prefix);
        self
    }

    /// Generates each batch with this many libtorch intra-op threads (the
    /// thread budget of generation); the calling thread's own count is
    /// restored after the batch.
    pub fn with_threads(mut self, threads: i32) -> Self {
        self.threads = Some(threads);
        self
    }

    /// The intra-op threads the last batch ran with.
    pub fn last_threads(&self) -> Option<i32> {
        self.last_threads
    }

    /// The snapshot.
    pub fn model(&self) -> &Llama {
        &self.model
    }
}

/// Copies named weights into a model with the same architecture.
pub fn load_weights(model: &mut Llama, weights: &Weights) -> Result<()> {
    let vars = model.var_store().variables();
    if vars.len() != weights.len() {
        return Err(Error::invalid(
            "published weights",
            format!("{} tensors for a model of {}", weights.len(), vars.len()),
        ));
    }
    tch::no_grad(|| {
        for (name, t) in weights {
            let mut var = vars
                .get(name)
                .ok_or_else(|| Error::invalid(format!("tensor {name}"), "not in the model"))?
                .shallow_clone();
            if var.size() != t.size() {
                return Err(Error::invalid(
                    format!("tensor {name}"),
                    format!("shape {:?}, the model has {:?}", t.size(), var.size()),
                ));
            }
            var.copy_(t);
        }
        Ok(())
    })
}

impl Generator for ModelGenerator {
    type Weights = Weights;

    fn version(&self) -> PolicyVersion {
        self.version
    }

    fn load(&mut self, weights: Weights, version: PolicyVersion) -> Result<()> {
        load_weights(&mut self.model, &weights)?;
        self.version = version;
        Ok(())
    }

    fn generate(&mut self, prompts: &[Prompt], params: &SamplingParams) -> Result<Vec<Rollout>> {
        let _scope = self.threads.map(ThreadScope::new);
        self.last_threads = Some(tch::get_num_threads());
        let tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        // Each batch draws from its own stream, named by its first prompt:
        // batches never repeat one another's noise, and a resumed run
        // samples a prompt batch as the interrupted one would have.
        let params = SamplingParams {
            seed: derive_seed(params.seed, prompts.first().map_or(0, |p| p.id.0)),
            ..params.clone()
        };
        let out = tch::no_grad(|| generate(&self.model, &tokens, &params, Decoding::Cached))?;
        let alone: Vec<Vec<f32>> = match &self.alone_prefix {
            None => vec![Vec::new(); out.len()],
            Some(prefix) => {
                let seqs: Vec<Vec<TokenId>> = out
                    .iter()
                    .map(|g| [prefix.as_slice(), &g.tokens].concat())
                    .collect();
                let nonempty: Vec<(&[TokenId], usize)> = seqs
                    .iter()
                    .filter(|s| s.len() > prefix.len())
                    .map(|s| (s.as_slice(), prefix.len()))
                    .collect();
                let mut scored = tch::no_grad(|| {
                    ModelScorer::new(&self.model).response_scores(&nonempty, None)
                })?
                .into_iter();
                seqs.iter()
                    .map(|s| {
                        if s.len() > prefix.len() {
                            scored.next().map(|(lp, _)| lp).unwrap_or_default()
                        } else {
                            Vec::new()
                        }
                    })
                    .collect()
            }
        };
        Ok(prompts
            .iter()
            .zip(out)
            .zip(alone)
            .map(|((p, g), alone)| Rollout {
                prompt_id: p.id,
                prompt: p.tokens.clone(),
                response: g.tokens,
                response_logprobs: g.logprobs,
                response_alone_logprobs: alone,
                policy_version: self.version,
                finish: g.finish,
            })
            .collect())
    }
}
