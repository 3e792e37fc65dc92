//! The openPangu-Embedded / Llama-family decoder.
//!
//! Pre-norm blocks of RMSNorm (computed in f32), attention with optional
//! q/k/v/o biases, grouped-query heads and NeoX-layout RoPE, and a SiLU-GLU
//! MLP; a final RMSNorm and an output projection tied to the embeddings or
//! not. Two forwards share the weights:
//! - [`Llama::forward_packed`]: training and scoring on packed sequences,
//!   attention computed per segment (cost Σ len², not row²), no cache;
//! - [`Llama::forward_cached`]: batched incremental decoding with a
//!   [`KvCache`].

use std::path::Path;

use tch::{Device, Kind, Tensor, nn};

use npd_core::{Error, Result};

use crate::config::ModelConfig;
use crate::segments::SegmentPlan;
use crate::weights::TensorStore;

/// A linear layer in `nn.Linear` layout: weight `[out, in]`, optional bias.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(p: nn::Path<'_>, inp: usize, out: usize, bias: bool) -> Self {
        let weight = p.var("weight", &[out as i64, inp as i64], nn::Init::Const(0.0));
        let bias = bias.then(|| p.var("bias", &[out as i64], nn::Init::Const(0.0)));
        Self { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// RMSNorm in f32, cast back, then scaled (as transformers' LlamaRMSNorm).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = (xf * (var + eps).rsqrt()).to_kind(kind);
    weight * normed
}

#[derive(Debug)]
struct Block {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Key/value cache for batched incremental decoding: per layer, keys and
/// values of shape `[batch, kv_heads, capacity, head_dim]`, filled up to
/// [`KvCache::len`].
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.keys.first().map_or(0, |k| k.size()[2] as usize)
    }

    /// Keeps only the batch rows `rows` (in that order): decoding drops
    /// finished rows instead of computing them to the end.
    pub fn retain_rows(&mut self, rows: &[i64]) {
        let Some(device) = self.keys.first().map(Tensor::device) else {
            return;
        };
        let index = Tensor::from_slice(rows).to_device(device);
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, &index);
        }
    }
}

/// The decoder, its weights in a [`nn::VarStore`] named exactly as in
/// Hugging Face checkpoints.
#[derive(Debug)]
pub struct Llama {
    config: ModelConfig,
    vs: nn::VarStore,
    embed: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
}

impl Llama {
    /// A model with all weights zero, on `device` in f32.
    pub fn new(config: ModelConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = &config;
        let (h, q_out, kv_out) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let model = &root / "model";
        let embed = (&model / "embed_tokens").var(
            "weight",
            &[c.vocab_size as i64, h as i64],
            nn::Init::Const(0.0),
        );
        let layers = (0..c.num_layers)
            .map(|i| {
                let p = &model / "layers" / i;
                let att = &p / "self_attn";
                let mlp = &p / "mlp";
                let b = c.attention_bias;
                Block {
                    input_norm: (&p / "input_layernorm").var(
                        "weight",
                        &[h as i64],
                        nn::Init::Const(1.0),
                    ),
                    q: Linear::new(&att / "q_proj", h, q_out, b),
                    k: Linear::new(&att / "k_proj", h, kv_out, b),
                    v: Linear::new(&att / "v_proj", h, kv_out, b),
                    o: Linear::new(&att / "o_proj", q_out, h, b),
                    post_norm: (&p / "post_attention_layernorm").var(
                        "weight",
                        &[h as i64],
                        nn::Init::Const(1.0),
                    ),
                    gate: Linear::new(&mlp / "gate_proj", h, c.intermediate_size, false),
                    up: Linear::new(&mlp / "up_proj", h, c.intermediate_size, false),
                    down: Linear::new(&mlp / "down_proj", c.intermediate_size, h, false),
                }
            })
            .collect();
        let norm = (&model / "norm").var("weight", &[h as i64], nn::Init::Const(1.0));
        let lm_head = (!c.tie_word_embeddings).then(|| {
            (&root / "lm_head").var(
                "weight",
                &[c.vocab_size as i64, h as i64],
                nn::Init::Const(0.0),
            )
        });
        let d = c.head_dim as i64;
        let exponent = Tensor::arange_start_step(0, d, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / d as f64;
        let inv_freq = Tensor::scalar_tensor(c.rope_theta, (Kind::Float, device))
            .pow(&exponent)
            .reciprocal();
        Self {
            config,
            vs,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        }
    }

    /// Loads `dir/config.json` and the safetensors weights beside it, and
    /// moves the model to `device` and `kind`. Every parameter must be in
    /// the checkpoint with its exact shape; RoPE `inv_freq` buffers and the
    /// `lm_head` of a tied model are ignored; any other tensor is an error.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = ModelConfig::from_file(&config_path)?;
        crate::memory::check_fits(
            &format!(
                "{}: `hidden_size`, `intermediate_size`, `vocab_size`, `num_hidden_layers`",
                config_path.display()
            ),
            &config,
            crate::memory::LOADED_BYTES_PER_PARAMETER,
            crate::memory::available(device),
        )?;
        let mut model = Self::new(config, device);
        let mut store = TensorStore::open(dir)?;
        model.load_from(&mut store)?;
        for name in store.remaining() {
            if name.ends_with("rotary_emb.inv_freq")
                || (name == "lm_head.weight" && model.config.tie_word_embeddings)
            {
                store.discard(&name);
            }
        }
        if let Some(extra) = store.remaining().first() {
            return Err(Error::invalid(
                format!("tensor {extra}"),
                format!(
                    "in {} is not a parameter of this {}-layer decoder",
                    dir.display(),
                    model.config.num_layers
                ),
            ));
        }
        model.set_kind(kind);
        Ok(model)
    }

    /// Initialises the weights randomly and reproducibly: matrices from a
    /// normal with standard deviation `std`, norm weights 1, biases 0.
    pub fn init_random(&mut self, seed: u64, std: f64) {
        tch::manual_seed(seed as i64);
        tch::no_grad(|| {
            for (name, mut var) in self.named_parameters() {
                if name.ends_with("norm.weight") {
                    let _ = var.fill_(1.0);
                } else if name.ends_with(".bias") {
                    let _ = var.zero_();
                } else {
                    let _ = var.normal_(0.0, std);
                }
            }
        });
    }

    /// Copies every parameter from `store`.
    pub fn load_from(&mut self, store: &mut TensorStore) -> Result<()> {
        let vars = self.vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        tch::no_grad(|| -> Result<()> {
            for name in names {
                let mut var = vars[name].shallow_clone();
                let t = store.take(name, &var.size())?;
                var.copy_(&t);
            }
            Ok(())
        })
    }

    /// Casts the weights to `kind` (f32, bf16, f16).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    /// Moves the weights to `device` (a model prepared on the CPU that
    /// runs on a GPU).
    pub fn set_device(&mut self, device: Device) {
        self.vs.set_device(device);
    }

    /// Compute dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters, for optimizers and checkpoints.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The parameters, mutably (for loading a copy of other weights).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Parameters with their checkpoint names, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum()
    }

    /// Output projection weight `[vocab, hidden]`.
    pub fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Logits `[..., vocab]` of final hidden states `[..., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(self.output_weight(), None)
    }

    /// cos and sin of RoPE angles for `positions`, shape `positions.size() + [head_dim]`.
    fn rope(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// Applies RoPE to `x` of shape `[..., heads, head_dim]` with cos/sin of
    /// shape `[..., head_dim]` (broadcast over heads).
    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[x.dim() - 1] / 2;
        let x1 = x.narrow(-1, 0, half);
        let x2 = x.narrow(-1, half, half);
        let rotated = Tensor::cat(&[&(-x2), &x1], -1);
        x * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)
    }

    fn mlp(block: &Block, x: &Tensor) -> Tensor {
        let g = block.gate.forward(x).silu();
        block.down.forward(&(g * block.up.forward(x)))
    }

    /// Runs every block over `x` (`[..., tokens, hidden]`), with `attend`
    /// computing attention from rotated queries and keys and the values,
    /// shaped `[..., tokens, heads, head_dim]`, into `[..., tokens, heads * head_dim]`.
    fn blocks(
        &self,
        mut x: Tensor,
        positions: &Tensor,
        mut attend: impl FnMut(usize, Tensor, Tensor, Tensor) -> Tensor,
    ) -> Tensor {
        let rope = self.rope(positions, x.kind());
        for i in 0..self.layers.len() {
            x = self.block(i, &x, &rope, &mut attend);
        }
        rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// Decoder block `i` over `x`, with RoPE's `(cos, sin)`.
    fn block(
        &self,
        i: usize,
        x: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        attend: &mut impl FnMut(usize, Tensor, Tensor, Tensor) -> Tensor,
    ) -> Tensor {
        let c = &self.config;
        let block = &self.layers[i];
        let (nh, nkv, hd) = (c.num_heads as i64, c.num_kv_heads as i64, c.head_dim as i64);
        let lead: Vec<i64> = x.size()[..x.dim() - 1].to_vec();
        let heads = |n: i64| [lead.as_slice(), &[n, hd]].concat();
        let h = rms_norm(x, &block.input_norm, c.rms_norm_eps);
        let q = Self::rotate(&block.q.forward(&h).view(heads(nh).as_slice()), cos, sin);
        let k = Self::rotate(&block.k.forward(&h).view(heads(nkv).as_slice()), cos, sin);
        let v = block.v.forward(&h).view(heads(nkv).as_slice());
        // Not `+=`: that adds in place and corrupts tensors autograd saved.
        let x = x + block.o.forward(&attend(i, q, k, v));
        let h = rms_norm(&x, &block.post_norm, c.rms_norm_eps);
        &x + Self::mlp(block, &h)
    }

    /// Checks packed rows' shapes and tokens and plans their attention.
    fn packed_attention(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        lengths: &[usize],
    ) -> Result<Attention> {
        let t = tokens.size1().map_err(|e| shape_err("tokens", e))?;
        if lengths.iter().sum::<usize>() as i64 != t || positions.size() != [t] {
            return Err(Error::invalid(
                "packed forward",
                format!(
                    "tokens [{t}], positions {:?} and segment lengths summing to {} disagree",
                    positions.size(),
                    lengths.iter().sum::<usize>()
                ),
            ));
        }
        self.check_tokens(tokens)?;
        let plan = (lengths.len() > 1).then(|| SegmentPlan::new(lengths, self.device()));
        Ok(Attention::Packed { t, plan })
    }

    /// Checks a padded batch's shapes and tokens.
    fn padded_attention(&self, tokens: &Tensor, positions: &Tensor) -> Result<Attention> {
        let (b, l) = tokens.size2().map_err(|e| shape_err("tokens", e))?;
        if positions.size() != [b, l] {
            return Err(Error::invalid(
                "padded forward",
                format!(
                    "tokens [{b}, {l}] need positions [{b}, {l}], got {:?}",
                    positions.size()
                ),
            ));
        }
        self.check_tokens(tokens)?;
        Ok(Attention::Padded { b, l })
    }

    /// Causal attention of `q`, `k`, `v` (`[..., tokens, heads, head_dim]`)
    /// laid out as `how` says, into `[..., tokens, heads * head_dim]`.
    fn attend(&self, how: &Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor {
        let nh = self.config.num_heads as i64;
        let hd = self.config.head_dim as i64;
        match how {
            Attention::Padded { b, l } => self
                .causal(&q.transpose(1, 2), &k.transpose(1, 2), &v.transpose(1, 2))
                .transpose(1, 2)
                .reshape([*b, *l, nh * hd]),
            Attention::Packed { t, plan: None } => self
                .causal(
                    &q.transpose(0, 1).unsqueeze(0),
                    &k.transpose(0, 1).unsqueeze(0),
                    &v.transpose(0, 1).unsqueeze(0),
                )
                .squeeze_dim(0)
                .transpose(0, 1)
                .reshape([*t, nh * hd]),
            Attention::Packed {
                plan: Some(plan), ..
            } => {
                let nkv = self.config.num_kv_heads as i64;
                let parts: Vec<Tensor> = plan
                    .groups
                    .iter()
                    .map(|(idx, n, len)| {
                        let pick = |x: &Tensor, heads: i64| {
                            x.index_select(0, idx)
                                .view([*n, *len, heads, hd])
                                .transpose(1, 2)
                        };
                        self.causal(&pick(&q, nh), &pick(&k, nkv), &pick(&v, nkv))
                            .transpose(1, 2)
                            .reshape([n * len, nh * hd])
                    })
                    .collect();
                Tensor::cat(&parts, 0).index_select(0, &plan.gather)
            }
        }
    }

    /// Causal attention on `[batch, heads, len, head_dim]`, keys and values
    /// with the model's KV heads. Each KV head is repeated for the query
    /// heads that share it (as transformers' `repeat_kv`), so the call
    /// reaches a fused kernel (flash or memory-efficient, whose memory
    /// grows linearly with the length) in f32 and bf16 alike: asked to
    /// broadcast the heads itself (`enable_gqa`), libtorch's CUDA fused
    /// kernels refuse f32 and fall back to the math kernel, which
    /// materialises every `[len, len]` score matrix. The cost is a copy of
    /// the keys and values per query group.
    fn causal(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (k, v) = self.repeat_kv(k, v);
        sdpa_causal(q, &k, &v)
    }

    /// Keys and values `[batch, kv_heads, len, head_dim]` with each KV head
    /// repeated for its query heads: `[batch, heads, len, head_dim]`.
    fn repeat_kv(&self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let rep = (self.config.num_heads / self.config.num_kv_heads) as i64;
        if rep == 1 {
            return (k.shallow_clone(), v.shallow_clone());
        }
        let r = |x: &Tensor| x.repeat_interleave_self_int(rep, 1, None);
        (r(k), r(v))
    }

    /// The fused-attention kernel libtorch picks for a training forward of
    /// `len` tokens in the model's dtype on its device (`math`, `flash`,
    /// `efficient`, `cudnn`, ...), as [`Llama::forward_packed`] calls it.
    pub fn attention_kernel(&self, len: usize) -> &'static str {
        let c = &self.config;
        let q = Tensor::zeros(
            [1, c.num_heads as i64, len as i64, c.head_dim as i64],
            (self.kind(), self.device()),
        );
        let choice =
            Tensor::internal_fused_sdp_choice::<Tensor>(&q, &q, &q, None, 0.0, true, None, false);
        match choice {
            0 => "math",
            1 => "flash",
            2 => "efficient",
            3 => "cudnn",
            4 => "overrideable",
            _ => "none",
        }
    }

    /// Final hidden states `[T, hidden]` of packed sequences.
    ///
    /// `tokens` and `positions` are `[T]` int64; `lengths` are the segment
    /// lengths, summing to `T`. Attention is causal within each segment and
    /// blocked across segments, computed per group of equal-length segments,
    /// so its cost grows with Σ len², not T².
    pub fn forward_packed(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        lengths: &[usize],
    ) -> Result<Tensor> {
        let how = self.packed_attention(tokens, positions, lengths)?;
        let x = Tensor::embedding(&self.embed, tokens, -1, false, false);
        Ok(self.blocks(x, positions, |_, q, k, v| self.attend(&how, q, k, v)))
    }

    /// Final hidden states `[B, L, hidden]` of a right-padded batch: one
    /// sequence per row, causal attention over the whole row. Padding comes
    /// after each sequence, so real tokens never attend to it; its cost is
    /// the full `B · L²` that packing avoids.
    pub fn forward_padded(&self, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let how = self.padded_attention(tokens, positions)?;
        let x = Tensor::embedding(&self.embed, tokens, -1, false, false);
        Ok(self.blocks(x, positions, |_, q, k, v| self.attend(&how, q, k, v)))
    }

    /// A training pass over packed rows (`tokens`, `positions`, `lengths`
    /// as [`Llama::forward_packed`] takes them): the forward, then `head`,
    /// then the backward into every parameter's gradient (accumulated).
    ///
    /// `head` gets the final hidden states `[T, hidden]` as a leaf that
    /// requires grad, computes the loss from them and calls `backward` on
    /// it, as often as it likes (a loss computed in chunks calls it once
    /// per chunk, so only one chunk's logits exist at a time); it returns
    /// the loss. When that is not finite nothing more is propagated.
    ///
    /// With `recompute`, the forward keeps only each decoder block's input;
    /// the backward recomputes one block at a time (activation
    /// checkpointing per block): activation memory is one block's plus
    /// `layers × [T, hidden]`, at the cost of a second forward.
    pub fn backward_packed(
        &self,
        (tokens, positions, lengths): (&Tensor, &Tensor, &[usize]),
        recompute: bool,
        head: impl FnOnce(&Tensor) -> Result<f64>,
    ) -> Result<f64> {
        let how = self.packed_attention(tokens, positions, lengths)?;
        self.backward(tokens, positions, &how, recompute, head)
    }

    /// [`Llama::backward_packed`] for a right-padded batch `[B, L]` (as
    /// [`Llama::forward_padded`] takes it); `head` gets `[B · L, hidden]`.
    pub fn backward_padded(
        &self,
        (tokens, positions): (&Tensor, &Tensor),
        recompute: bool,
        head: impl FnOnce(&Tensor) -> Result<f64>,
    ) -> Result<f64> {
        let how = self.padded_attention(tokens, positions)?;
        self.backward(tokens, positions, &how, recompute, head)
    }

    fn backward(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        how: &Attention,
        recompute: bool,
        head: impl FnOnce(&Tensor) -> Result<f64>,
    ) -> Result<f64> {
        let hidden = self.config.hidden_size as i64;
        let mut attend = |_: usize, q, k, v| self.attend(how, q, k, v);
        // The head's loss and the gradient of the final hidden states.
        let run_head = |h: &Tensor| -> Result<(f64, Option<Tensor>)> {
            let leaf = h.view([-1, hidden]).detach().set_requires_grad(true);
            let loss = head(&leaf)?;
            let grad = leaf.grad();
            Ok((loss, (loss.is_finite() && grad.defined()).then_some(grad)))
        };
        if !recompute {
            let x = Tensor::embedding(&self.embed, tokens, -1, false, false);
            let h = self.blocks(x, positions, &mut attend);
            let (loss, grad) = run_head(&h)?;
            if let Some(g) = grad {
                backward_from(&h.view([-1, hidden]), &g);
            }
            return Ok(loss);
        }
        // Forward without a graph, keeping each block's input.
        let kind = self.embed.kind();
        let rope = self.rope(positions, kind);
        let inputs: Vec<Tensor> = tch::no_grad(|| {
            let mut x = Tensor::embedding(&self.embed, tokens, -1, false, false);
            let mut inputs = Vec::with_capacity(self.layers.len() + 1);
            for i in 0..self.layers.len() {
                let next = self.block(i, &x, &rope, &mut attend);
                inputs.push(x);
                x = next;
            }
            inputs.push(x);
            inputs
        });
        let last = inputs[self.layers.len()].detach().set_requires_grad(true);
        let h = rms_norm(&last, &self.norm, self.config.rms_norm_eps);
        let (loss, grad) = run_head(&h)?;
        let Some(g) = grad else {
            return Ok(loss);
        };
        backward_from(&h.view([-1, hidden]), &g);
        let mut g = last.grad();
        // Backward one block at a time, recomputing its forward.
        for i in (0..self.layers.len()).rev() {
            let x = inputs[i].detach().set_requires_grad(true);
            let out = self.block(i, &x, &rope, &mut attend);
            backward_from(&out, &g);
            g = x.grad();
        }
        let x = Tensor::embedding(&self.embed, tokens, -1, false, false);
        if x.requires_grad() {
            backward_from(&x, &g);
        }
        Ok(loss)
    }

    /// An empty cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> KvCache {
        let c = &self.config;
        let shape = [
            batch as i64,
            c.num_kv_heads as i64,
            capacity as i64,
            c.head_dim as i64,
        ];
        let opts = (self.kind(), self.device());
        KvCache {
            keys: (0..c.num_layers)
                .map(|_| Tensor::zeros(shape, opts))
                .collect(),
            values: (0..c.num_layers)
                .map(|_| Tensor::zeros(shape, opts))
                .collect(),
            len: 0,
        }
    }

    /// Runs `s` new positions of a batch through the model, appending their
    /// keys and values to `cache`; returns final hidden states `[B, s, hidden]`.
    ///
    /// `tokens` and `positions` are `[B, s]` int64; `mask` is `[B, 1, s,
    /// cache.len() + s]` bool, true where a query may attend to a key. Each
    /// query row must allow at least one key.
    pub fn forward_cached(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, s) = tokens.size2().map_err(|e| shape_err("tokens", e))?;
        let total = cache.len + s;
        if total as usize > cache.capacity() {
            return Err(Error::invalid(
                "KV cache",
                format!("{total} positions exceed its capacity {}", cache.capacity()),
            ));
        }
        if mask.size() != [b, 1, s, total] || positions.size() != [b, s] {
            return Err(Error::invalid(
                "cached forward",
                format!(
                    "tokens [{b}, {s}] need positions [{b}, {s}] and mask [{b}, 1, {s}, {total}]; \
                     got {:?} and {:?}",
                    positions.size(),
                    mask.size()
                ),
            ));
        }
        self.check_tokens(tokens)?;
        let c = &self.config;
        let (nh, gqa) = (c.num_heads as i64, c.num_kv_heads != c.num_heads);
        let x = Tensor::embedding(&self.embed, tokens, -1, false, false);
        let at = cache.len;
        let hidden = self.blocks(x, positions, |i, q, k, v| {
            let hd = q.size()[3];
            cache.keys[i].narrow(2, at, s).copy_(&k.transpose(1, 2));
            cache.values[i].narrow(2, at, s).copy_(&v.transpose(1, 2));
            let keys = cache.keys[i].narrow(2, 0, total);
            let values = cache.values[i].narrow(2, 0, total);
            Tensor::scaled_dot_product_attention(
                &q.transpose(1, 2),
                &keys,
                &values,
                Some(mask),
                0.0,
                false,
                None,
                gqa,
            )
            .transpose(1, 2)
            .reshape([b, s, nh * hd])
        });
        cache.len = total;
        Ok(hidden)
    }

    fn check_tokens(&self, tokens: &Tensor) -> Result<()> {
        if tokens.numel() == 0 {
            return Ok(());
        }
        let max = tokens.max().int64_value(&[]);
        let min = tokens.min().int64_value(&[]);
        if min < 0 || max >= self.config.vocab_size as i64 {
            return Err(Error::invalid(
                "token ids",
                format!(
                    "range [{min}, {max}] outside the vocabulary of {}",
                    self.config.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// How a training or scoring forward attends.
enum Attention {
    /// `t` packed tokens; segments grouped by `plan` (one segment: none).
    Packed { t: i64, plan: Option<SegmentPlan> },
    /// A right-padded batch of `b` rows of `l` tokens.
    Padded { b: i64, l: i64 },
}

/// Propagates `grad` (the gradient of a loss with respect to `out`) back
/// through `out`'s graph: the backward of `Σ out · grad`.
fn backward_from(out: &Tensor, grad: &Tensor) {
    (out * grad.detach()).sum(Kind::Float).backward();
}

/// Causal scaled-dot-product attention on `[batch, heads, len, head_dim]`.
fn sdpa_causal(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, true, None, false)
}

fn shape_err(what: &str, e: tch::TchError) -> Error {
    Error::invalid(what, format!("unexpected shape: {e}"))
}
