//! One optimizer step on packed (or padded) rows: the distillation loss,
//! normalised over the accumulation window, AdamW, clipping, the schedule,
//! and the non-finite-loss guard.

use tch::{Kind, Tensor};

use npd_core::config::{LossKind, Precision, TrainConfig};
use npd_core::traits::{Learner, StepStats};
use npd_core::{Error, PackedRow, PolicyVersion, Result};

use crate::loss::{
    Divergence, TeacherDist, clipped_surrogate, cross_entropy, distill, kl_to_reference,
};
use crate::model::Llama;
use crate::optim::{AdamW, AdamWConfig, lr_at};
use crate::targets::{Targets, gather_packed, gather_padded};
use crate::weights::TensorStore;

/// How rows are laid out for the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Rows hold several samples; only their tokens are computed, attention
    /// per segment.
    Packed,
    /// Each row holds one sample, right-padded to the row capacity; the
    /// whole `[rows, capacity]` batch is computed (the baseline packing is
    /// measured against).
    Padded,
}

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Steps of the whole schedule.
    pub total_steps: u64,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip; 0 turns it off.
    pub grad_clip: f64,
    /// Divergence.
    pub loss: LossKind,
    /// Weight of an added cross-entropy term.
    pub ce_weight: f64,
    /// JSD interpolation weight.
    pub jsd_beta: f64,
    /// Skew of the skew KL losses.
    pub skew_alpha: f64,
    /// Temperature of the distillation targets (teacher and student).
    pub target_temperature: f64,
    /// Rows per forward/backward pass.
    pub micro_batch_rows: usize,
    /// Abort after this many consecutive non-finite steps.
    pub max_nonfinite_steps: u32,
    /// Row layout.
    pub layout: Layout,
    /// `(eps_low, eps_high)` of the clipped surrogate that rows carrying
    /// policy targets train with (GRPO; DAPO's clip-higher when
    /// `eps_high > eps_low`).
    pub policy_clip: (f64, f64),
    /// Weight of the KL penalty toward the reference log-probs that rows
    /// with policy targets carry ([`crate::loss::kl_to_reference`]); 0
    /// turns it off.
    pub policy_kl: f64,
    /// Recompute each block's activations in the backward pass
    /// ([`Llama::backward_packed`]).
    pub recompute: bool,
    /// Targets whose logits are computed at once (0: all of a micro-batch).
    pub loss_chunk_tokens: usize,
    /// The dtype the student trains in (f32 or bf16; bf16 with f32 master
    /// weights in the optimizer).
    pub precision: Kind,
}

/// The clip range of the policy objective unless one is set: DAPO's
/// clip-higher (0.2 below, 0.28 above), which keeps low-probability
/// tokens that turned out good from being clipped as early as the rest.
pub const POLICY_CLIP: (f64, f64) = (0.2, 0.28);

impl TrainOptions {
    /// From the `[train]` section.
    pub fn from_config(c: &TrainConfig) -> Self {
        Self {
            lr: c.lr,
            min_lr: c.min_lr,
            warmup_steps: c.warmup_steps,
            total_steps: c.steps,
            adamw: AdamWConfig {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: 1e-8,
                weight_decay: c.weight_decay,
            },
            grad_clip: c.grad_clip,
            loss: c.loss,
            ce_weight: c.ce_weight,
            jsd_beta: c.jsd_beta,
            skew_alpha: c.skew_alpha,
            target_temperature: c.target_temperature,
            micro_batch_rows: c.micro_batch_rows,
            max_nonfinite_steps: c.max_nonfinite_steps,
            layout: Layout::Packed,
            policy_clip: POLICY_CLIP,
            policy_kl: 0.0,
            recompute: c.recompute,
            loss_chunk_tokens: c.loss_chunk_tokens,
            precision: precision_kind(c.precision),
        }
    }
}

/// The libtorch kind of a training precision.
pub fn precision_kind(p: Precision) -> Kind {
    match p {
        Precision::F32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::F16 => Kind::Half,
    }
}

/// Prefix of the optimizer-state tensors holding f32 master weights.
const MASTER_PREFIX: &str = "master.";

/// Trains a student model.
#[derive(Debug)]
pub struct Trainer {
    model: Llama,
    /// Name of each optimizer parameter, in the optimizer's order.
    names: Vec<String>,
    opt: AdamW,
    options: TrainOptions,
    nonfinite_run: u32,
    skipped: u64,
    /// `config.json` written with the model in checkpoints.
    config_json: Option<String>,
    companions: std::sync::Arc<Vec<(String, Vec<u8>)>>,
}

impl Trainer {
    /// A trainer over `model`'s parameters, cast to `options.precision`;
    /// a model cast down from f32 keeps its f32 values as the optimizer's
    /// master weights.
    pub fn new(mut model: Llama, options: TrainOptions) -> Self {
        let params = model.var_store().trainable_variables();
        let masters: Vec<Tensor> = tch::no_grad(|| params.iter().map(Tensor::copy).collect());
        model.set_kind(options.precision);
        let named = model.named_parameters();
        let names = params
            .iter()
            .map(|p| {
                named
                    .iter()
                    .find(|(_, t)| t.data_ptr() == p.data_ptr())
                    .map_or_else(String::new, |(n, _)| n.clone())
            })
            .collect();
        let opt = AdamW::with_masters(params, masters, options.adamw);
        Self {
            model,
            names,
            opt,
            options,
            nonfinite_run: 0,
            skipped: 0,
            config_json: None,
            companions: Default::default(),
        }
    }

    /// The `config.json` text written beside the model in checkpoints (for
    /// example the student folder's own, so an openPangu student keeps its
    /// architecture name and keys); without it a transformers Llama config
    /// is written.
    pub fn with_config_json(mut self, json: Option<String>) -> Self {
        self.config_json = json;
        self
    }

    /// Files every checkpoint's model folder carries beside `config.json`
    /// and the weights (tokenizer files, `auto_map` modules; see
    /// [`crate::folder::companion_files`]), as (file name, bytes).
    pub fn with_companion_files(mut self, files: std::sync::Arc<Vec<(String, Vec<u8>)>>) -> Self {
        self.companions = files;
        self
    }

    /// See [`Trainer::with_companion_files`].
    pub fn companion_files(&self) -> &[(String, Vec<u8>)] {
        &self.companions
    }

    /// See [`Trainer::with_config_json`].
    pub fn config_json(&self) -> Option<&str> {
        self.config_json.as_deref()
    }

    /// The model being trained.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Ends training and hands the model back.
    pub fn into_model(self) -> Llama {
        self.model
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The optimizer, mutably (to restore a checkpoint).
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// The optimizer state for a checkpoint, named like PyTorch's AdamW
    /// state: `exp_avg.<parameter>` and `exp_avg_sq.<parameter>`, and
    /// `master.<parameter>` for the f32 master weight of a parameter held
    /// in lower precision.
    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        let (first, second) = self.opt.state();
        let mut out = Vec::with_capacity(3 * first.len());
        for (((name, m), v), master) in self
            .names
            .iter()
            .zip(first)
            .zip(second)
            .zip(self.opt.masters())
        {
            out.push((format!("exp_avg.{name}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{name}"), v.shallow_clone()));
            if let Some(master) = master {
                out.push((format!("{MASTER_PREFIX}{name}"), master.shallow_clone()));
            }
        }
        out
    }

    /// Restores the weights from `weights`, the optimizer moments from
    /// `moments` (as written from [`Trainer::optimizer_state`]) and the
    /// step counters; every tensor is checked by name and shape.
    pub fn restore(
        &mut self,
        weights: &mut TensorStore,
        moments: &mut TensorStore,
        optimizer_steps: u64,
        skipped: u64,
    ) -> Result<()> {
        self.model.load_from(weights)?;
        let (first, second) = self.opt.state();
        let device = self.model.device();
        let mut m = Vec::with_capacity(first.len());
        let mut v = Vec::with_capacity(second.len());
        let mut masters = Vec::with_capacity(first.len());
        for (((name, f), s), master) in self
            .names
            .iter()
            .zip(first)
            .zip(second)
            .zip(self.opt.masters())
        {
            let key = format!("{MASTER_PREFIX}{name}");
            masters.push(match master {
                // A checkpoint written in f32 has no masters: its weights are.
                Some(_) if !moments.contains(&key) => None,
                Some(w) => Some(moments.take(&key, &w.size())?.to_kind(Kind::Float)),
                None => {
                    moments.discard(&key);
                    None
                }
            });
            m.push(
                moments
                    .take(&format!("exp_avg.{name}"), &f.size())?
                    .to_kind(Kind::Float)
                    .to_device(device),
            );
            v.push(
                moments
                    .take(&format!("exp_avg_sq.{name}"), &s.size())?
                    .to_kind(Kind::Float)
                    .to_device(device),
            );
        }
        if let Some(extra) = moments.remaining().first() {
            return Err(Error::invalid(
                format!("tensor {extra}"),
                "in the optimizer state is not a moment of this model's parameters",
            ));
        }
        self.opt.restore(m, v, optimizer_steps);
        self.opt.restore_masters(masters);
        self.skipped = skipped;
        self.nonfinite_run = 0;
        Ok(())
    }

    /// Steps skipped for a non-finite loss so far.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// The options.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// The loss over `rows` (normalised as [`Learner::step`] normalises
    /// it) and its gradient with respect to every parameter, by name,
    /// without updating anything.
    pub fn gradients(&mut self, rows: &[PackedRow]) -> Result<(f64, Vec<(String, Tensor)>)> {
        let n: usize = rows.iter().map(PackedRow::targets).sum();
        if n == 0 {
            return Err(Error::invalid("training rows", "no loss targets"));
        }
        self.opt.zero_grad();
        let mut total = 0.0;
        for chunk in rows.chunks(self.options.micro_batch_rows.max(1)) {
            total += self.pass(chunk, n as f64, true)?;
        }
        let grads = tch::no_grad(|| {
            self.model
                .named_parameters()
                .into_iter()
                .map(|(name, p)| (name, p.grad().copy()))
                .collect()
        });
        self.opt.zero_grad();
        Ok((total, grads))
    }

    /// Mean loss per target token over `rows` without updating anything.
    pub fn evaluate(&self, rows: &[PackedRow]) -> Result<f64> {
        let n: usize = rows.iter().map(PackedRow::targets).sum();
        if n == 0 {
            return Err(Error::invalid("evaluation rows", "no loss targets"));
        }
        tch::no_grad(|| -> Result<f64> {
            let mut total = 0.0;
            for chunk in rows.chunks(self.options.micro_batch_rows.max(1)) {
                total += self.pass(chunk, n as f64, false)?;
            }
            Ok(total)
        })
    }

    /// The weighted loss of `rows`, summed over targets and divided by
    /// `norm`, with its backward into the parameters' gradients when
    /// `backward` is set (then with recomputation when the options say).
    /// A non-finite loss is returned as soon as a chunk has one.
    fn pass(&self, rows: &[PackedRow], norm: f64, backward: bool) -> Result<f64> {
        let device = self.model.device();
        let recompute = self.options.recompute;
        match self.options.layout {
            Layout::Packed => {
                let (tokens, positions, lengths, targets) = gather_packed(rows, device)?;
                if backward {
                    let head = |h: &Tensor| self.head(h, &targets, norm, true);
                    self.model
                        .backward_packed((&tokens, &positions, &lengths), recompute, head)
                } else {
                    let h = self.model.forward_packed(&tokens, &positions, &lengths)?;
                    self.head(&h, &targets, norm, false)
                }
            }
            Layout::Padded => {
                let (tokens, positions, targets) = gather_padded(rows, device)?;
                if backward {
                    let head = |h: &Tensor| self.head(h, &targets, norm, true);
                    self.model
                        .backward_padded((&tokens, &positions), recompute, head)
                } else {
                    let h = self.model.forward_padded(&tokens, &positions)?;
                    let hs = h.size();
                    self.head(&h.view([hs[0] * hs[1], hs[2]]), &targets, norm, false)
                }
            }
        }
    }

    /// The loss of `targets` predicted from `hidden` (`[tokens, hidden]`),
    /// over chunks of `loss_chunk_tokens` targets, each chunk's backward
    /// run (when `backward`) before the next chunk's logits exist.
    fn head(&self, hidden: &Tensor, targets: &Targets, norm: f64, backward: bool) -> Result<f64> {
        let n = targets.len();
        let chunk = match self.options.loss_chunk_tokens {
            0 => n.max(1),
            c => c,
        };
        let mut total = 0.0;
        for start in (0..n).step_by(chunk) {
            let loss =
                self.chunk_loss(hidden, &targets.narrow(start, chunk.min(n - start)), norm)?;
            let v = loss.double_value(&[]);
            if !v.is_finite() {
                return Ok(v);
            }
            if backward {
                loss.backward();
            }
            total += v;
        }
        Ok(total)
    }

    /// The loss of one chunk of targets, as a tensor.
    fn chunk_loss(&self, hidden: &Tensor, targets: &Targets, norm: f64) -> Result<Tensor> {
        let logits = self
            .model
            .logits(&hidden.index_select(0, &targets.rows))
            .to_kind(Kind::Float);
        let o = &self.options;
        if let Some((behaviour, advantages, reference)) = &targets.policy {
            // Rows with policy targets train the policy objective (the
            // distillation loss is not used).
            let logp = logits
                .log_softmax(-1, Kind::Float)
                .gather(1, &targets.tokens.unsqueeze(1), false)
                .squeeze_dim(1);
            let (lo, hi) = o.policy_clip;
            let mut per_token = clipped_surrogate(&logp, behaviour, advantages, lo, hi);
            if o.policy_kl > 0.0 {
                let reference = reference.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "training rows",
                        "a KL penalty is set but the rows carry no reference log-probs for \
                         every target",
                    )
                })?;
                per_token += kl_to_reference(&logp, reference) * o.policy_kl;
            }
            return Ok((per_token * &targets.weights).sum(Kind::Float) / norm);
        }
        let mut per_token = match o.loss {
            LossKind::Ce => cross_entropy(&logits, &targets.tokens),
            kind => {
                let (ids, lp, tail) = targets.topk.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "training rows",
                        format!(
                            "train.loss = {kind:?} needs teacher top-k targets in the rows, \
                             which have none"
                        ),
                    )
                })?;
                let teacher = TeacherDist::TopK {
                    ids,
                    logprobs: lp,
                    tail,
                };
                let d = match kind {
                    LossKind::ForwardKl => Divergence::Forward,
                    LossKind::ReverseKl => Divergence::Reverse,
                    LossKind::SkewForwardKl => Divergence::SkewForward(o.skew_alpha),
                    LossKind::SkewReverseKl => Divergence::SkewReverse(o.skew_alpha),
                    LossKind::SampledReverseKl => Divergence::SampledReverse,
                    LossKind::Jsd | LossKind::Ce => Divergence::Jsd(o.jsd_beta),
                };
                distill(
                    &logits,
                    &teacher,
                    Some(&targets.tokens),
                    &d,
                    o.target_temperature,
                )
            }
        };
        if o.ce_weight > 0.0 && o.loss != LossKind::Ce {
            per_token = &per_token + cross_entropy(&logits, &targets.tokens) * o.ce_weight;
        }
        Ok((per_token * &targets.weights).sum(Kind::Float) / norm)
    }
}

impl Learner for Trainer {
    type Weights = Vec<(String, Tensor)>;

    /// One optimizer step over `rows` (one accumulation window), processed
    /// `micro_batch_rows` at a time. The loss is normalised by the number of
    /// target tokens in the whole window. A non-finite loss skips the step
    /// (counted); too many in a row is an error.
    fn step(&mut self, rows: &[PackedRow]) -> Result<StepStats> {
        let targets: usize = rows.iter().map(PackedRow::targets).sum();
        if targets == 0 {
            return Err(Error::invalid(
                "training rows",
                "no loss targets in the step",
            ));
        }
        let mut loss_sum = 0.0;
        let mut finite = true;
        for chunk in rows.chunks(self.options.micro_batch_rows.max(1)) {
            let v = self.pass(chunk, targets as f64, true)?;
            if !v.is_finite() {
                finite = false;
                break;
            }
            loss_sum += v;
        }
        let lr = lr_at(
            self.opt.steps(),
            self.options.lr,
            self.options.min_lr,
            self.options.warmup_steps,
            self.options.total_steps,
        );
        let tokens = rows.iter().map(PackedRow::used).sum();
        let grad_norm = if finite {
            self.opt.clip_grad_norm(self.options.grad_clip)
        } else {
            f64::NAN
        };
        if !finite || !grad_norm.is_finite() {
            self.opt.zero_grad();
            self.skipped += 1;
            self.nonfinite_run += 1;
            if self.nonfinite_run >= self.options.max_nonfinite_steps {
                return Err(Error::invalid(
                    "training",
                    format!(
                        "{} consecutive steps had a non-finite loss or gradient \
                         (train.max_nonfinite_steps = {})",
                        self.nonfinite_run, self.options.max_nonfinite_steps
                    ),
                ));
            }
            return Ok(StepStats {
                loss: f64::NAN,
                target_tokens: targets,
                tokens,
                grad_norm,
                lr,
                skipped: true,
            });
        }
        self.nonfinite_run = 0;
        self.opt.step(lr);
        Ok(StepStats {
            loss: loss_sum,
            target_tokens: targets,
            tokens,
            grad_norm,
            lr,
            skipped: false,
        })
    }

    fn version(&self) -> PolicyVersion {
        self.opt.steps()
    }

    fn publish(&self) -> Result<Self::Weights> {
        Ok(tch::no_grad(|| {
            self.model
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.detach().copy()))
                .collect()
        }))
    }
}
