//! The memory a run needs, per role, before it allocates any: weights,
//! gradients, optimizer state, the activations of a training step at the
//! configured row length, and the KV cache of generation and evaluation.
//!
//! The activation terms count the tensors autograd keeps for the backward
//! pass of one decoder block as [`crate::Llama`] computes it (pre-norm
//! RMSNorm in f32, q/k/v/o projections, RoPE, KV heads repeated for the
//! fused attention kernel, SiLU-GLU MLP); `tests/memory_plan.rs` checks
//! the estimate of a training step against the peak memory measured on
//! CPU.

use tch::Kind;

use crate::ModelConfig;

/// Bytes of one element of `kind`.
fn bytes(kind: Kind) -> u64 {
    kind.elt_size_in_bytes() as u64
}

/// What one training step is shaped like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepShape {
    /// Tokens of one micro-batch (rows per micro-batch × row length).
    pub tokens: u64,
    /// Loss targets of one micro-batch (at most `tokens`).
    pub targets: u64,
    /// The student's training dtype (f32 or bf16).
    pub precision: Kind,
    /// Activation recomputation per block.
    pub recompute: bool,
    /// Targets whose logits exist at once (0: all).
    pub loss_chunk_tokens: u64,
}

/// The memory of one role, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoleMemory {
    /// Parameters.
    pub weights: u64,
    /// Parameter gradients.
    pub gradients: u64,
    /// Optimizer state: AdamW's two f32 moments, and f32 master weights
    /// for parameters held in lower precision.
    pub optimizer: u64,
    /// Activations live beside the logits at the step's peak: those kept
    /// for the backward pass and its transient tensors (with
    /// recomputation, the recomputed block's where it outgrows the
    /// logits, which are never live at the same time).
    pub activations: u64,
    /// Logits and loss tensors of one chunk of targets.
    pub logits: u64,
    /// KV cache of batched decoding.
    pub kv_cache: u64,
}

impl RoleMemory {
    /// All parts together.
    pub fn total(&self) -> u64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.kv_cache
    }
}

/// The student's memory during one training step of `shape`.
pub fn training(config: &ModelConfig, shape: &StepShape) -> RoleMemory {
    let params = config.parameter_count().unwrap_or(u64::MAX / 64);
    let s = bytes(shape.precision);
    let masters = if shape.precision == Kind::Float { 0 } else { 4 };
    let t = shape.tokens;
    let (h, l) = (config.hidden_size as u64, config.num_layers as u64);
    let per_block = block_activations(config, s);
    let chunk = match shape.loss_chunk_tokens {
        0 => shape.targets,
        c => c.min(shape.targets),
    };
    // f32 logits, their log-softmax and its gradient, for one chunk; the
    // chunk's hidden states and their gradient.
    let logits = chunk * (3 * config.vocab_size as u64 * 4 + 2 * h * 4);
    // The gradient flowing through a block and its transient tensors.
    let flowing = 4 * h * 4;
    let activations = if shape.recompute {
        // Each block's input stays; the loss's chunks and the recomputed
        // block (its graph and gradient) are live one after the other, so
        // the block counts only where it is larger than the logits.
        let block = t * (per_block + flowing);
        t * l * h * s + block.saturating_sub(logits)
    } else {
        t * (l * per_block + flowing)
    };
    RoleMemory {
        weights: params * s,
        gradients: params * s,
        optimizer: params * (8 + masters),
        activations,
        logits,
        kv_cache: 0,
    }
}

/// Bytes per token that one decoder block keeps for its backward pass,
/// with parameters and activations of `s` bytes.
fn block_activations(c: &ModelConfig, s: u64) -> u64 {
    let h = c.hidden_size as u64;
    let q = (c.num_heads * c.head_dim) as u64;
    let kv = (c.num_kv_heads * c.head_dim) as u64;
    let i = c.intermediate_size as u64;
    // Two RMSNorms: the f32 input and the normalised output each.
    let norms = 2 * (h * 4 + h * 4 + h * s);
    // q, k, v projections; RoPE keeps its input and the rotated half for
    // q and k; the repeated keys and values; the attention output and its
    // contiguous copy for the o projection; the attention's log-sum-exp.
    let attention = (3 * q + 3 * kv + kv + 2 * q + 2 * q) * s + c.num_heads as u64 * 4;
    // gate and up outputs, SiLU's output and the product.
    let mlp = 4 * i * s;
    norms + attention + mlp
}

/// A frozen model's memory while it scores rows of `tokens` tokens
/// (the teacher): weights, one block's transient activations and the
/// logits of a chunk of `targets` positions.
pub fn scoring(config: &ModelConfig, kind: Kind, tokens: u64, targets: u64) -> RoleMemory {
    let params = config.parameter_count().unwrap_or(u64::MAX / 64);
    let s = bytes(kind);
    RoleMemory {
        weights: params * s,
        activations: tokens * (block_activations(config, s) + 2 * config.hidden_size as u64 * s),
        logits: targets * 3 * config.vocab_size as u64 * 4,
        ..RoleMemory::default()
    }
}

/// A frozen model's memory while it decodes `batch` sequences of up to
/// `positions` positions each (generation or evaluation): weights, the KV
/// cache, and the logits of one step.
pub fn decoding(config: &ModelConfig, kind: Kind, batch: u64, positions: u64) -> RoleMemory {
    let params = config.parameter_count().unwrap_or(u64::MAX / 64);
    let s = bytes(kind);
    let kv = (2 * config.num_layers * config.num_kv_heads * config.head_dim) as u64;
    RoleMemory {
        weights: params * s,
        kv_cache: batch * positions * kv * s,
        logits: batch * 3 * config.vocab_size as u64 * 4,
        ..RoleMemory::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 256,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "eos_token_id": 2,
        });
        ModelConfig::from_json(&json.to_string(), "config.json").unwrap()
    }

    fn shape(tokens: u64, recompute: bool, chunk: u64) -> StepShape {
        StepShape {
            tokens,
            targets: tokens,
            precision: Kind::Float,
            recompute,
            loss_chunk_tokens: chunk,
        }
    }

    #[test]
    fn activations_grow_linearly_and_recompute_and_chunks_shrink_them() {
        let c = config();
        let a = |t, r, ch| training(&c, &shape(t, r, ch));
        assert_eq!(
            a(2048, false, 0).activations,
            2 * a(1024, false, 0).activations
        );
        assert!(a(1024, true, 0).activations < a(1024, false, 0).activations / 2);
        let total = |t, r, ch| {
            let m = training(&c, &shape(t, r, ch));
            m.activations + m.logits
        };
        assert!(total(4096, true, 256) < total(4096, false, 256) / 2);
        assert!(total(8192, true, 256) <= 2 * total(4096, true, 256));
        assert_eq!(a(4096, false, 512).logits, a(1024, false, 512).logits);
        assert!(a(4096, false, 512).logits < a(4096, false, 0).logits / 4);
    }

    #[test]
    fn bf16_halves_weights_and_keeps_f32_masters() {
        let c = config();
        let p = c.parameter_count().unwrap();
        let f = training(&c, &shape(8, false, 0));
        let b = training(
            &c,
            &StepShape {
                precision: Kind::BFloat16,
                ..shape(8, false, 0)
            },
        );
        assert_eq!((f.weights, b.weights), (4 * p, 2 * p));
        assert_eq!((f.optimizer, b.optimizer), (8 * p, 12 * p));
        assert_eq!(
            decoding(&c, Kind::BFloat16, 2, 10).kv_cache,
            2 * 10 * 2 * 4 * 2 * 16 * 2
        );
    }
}
