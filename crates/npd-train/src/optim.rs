//! AdamW with decoupled weight decay, the warm-up + cosine schedule, and
//! global-norm gradient clipping. State is plain tensors so checkpoints can
//! save and restore it.
//!
//! Parameters in a low-precision dtype (bf16) are updated through f32
//! master copies: the moments, the clipping and the update are computed in
//! f32 on the master, which is then rounded into the parameter. Updated in
//! bf16 directly, an update smaller than half the spacing of bf16 numbers
//! near a weight (`|w| / 256`) is lost, which at language-model learning
//! rates is most of them, and `1 - lr · wd` rounds to 1.

use tch::{Kind, Tensor};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices (2-D and up) only; norms
    /// and biases are not decayed.
    pub weight_decay: f64,
}

/// AdamW over a fixed list of parameters.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Tensor>,
    /// The f32 master copy of each parameter that is not f32 itself.
    masters: Vec<Option<Tensor>>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    steps: u64,
    /// Factor of the next step's gradients (set by clipping).
    grad_scale: f64,
}

impl AdamW {
    /// An optimizer for `params` (tensors that require grad); parameters
    /// that are not f32 get f32 master copies of their current values.
    pub fn new(params: Vec<Tensor>, config: AdamWConfig) -> Self {
        let masters = params
            .iter()
            .map(|p| (p.kind() != Kind::Float).then(|| master_of(p)))
            .collect();
        Self::build(params, masters, config)
    }

    /// An optimizer for `params` whose f32 master values are `masters`
    /// (the f32 weights a model was cast to a lower precision from, so no
    /// precision is lost at the start); an f32 parameter's master is
    /// ignored.
    pub fn with_masters(params: Vec<Tensor>, masters: Vec<Tensor>, config: AdamWConfig) -> Self {
        let masters = params
            .iter()
            .zip(masters)
            .map(|(p, m)| (p.kind() != Kind::Float).then(|| master_of(&m)))
            .collect();
        Self::build(params, masters, config)
    }

    /// An optimizer that updates every parameter in its own dtype, without
    /// master copies: what the master weights prevent (updates lost in
    /// bf16), kept for comparison.
    pub fn without_masters(params: Vec<Tensor>, config: AdamWConfig) -> Self {
        let masters = params.iter().map(|_| None).collect();
        Self::build(params, masters, config)
    }

    fn build(params: Vec<Tensor>, masters: Vec<Option<Tensor>>, config: AdamWConfig) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().to_kind(Kind::Float);
        Self {
            config,
            first: params.iter().map(zeros).collect(),
            second: params.iter().map(zeros).collect(),
            params,
            masters,
            steps: 0,
            grad_scale: 1.0,
        }
    }

    /// The f32 master copies (`None` for f32 parameters, which are their
    /// own master), in parameter order.
    pub fn masters(&self) -> &[Option<Tensor>] {
        &self.masters
    }

    /// Restores the master copies from `values` (f32 weights in parameter
    /// order) and rounds them into the parameters; a parameter with a
    /// master but no value given takes its master from its own value.
    pub fn restore_masters(&mut self, values: Vec<Option<Tensor>>) {
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter().zip(&mut self.masters).zip(values) {
                if let Some(m) = m {
                    *m = master_of(
                        &v.map_or_else(|| p.shallow_clone(), |v| v.to_device(p.device())),
                    );
                    let mut p = p.shallow_clone();
                    p.copy_(m);
                }
            }
        });
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Global L2 norm of the gradients (0 for parameters without one),
    /// computed in f32 on the device with one host synchronisation.
    pub fn grad_norm(&self) -> f64 {
        let squares: Vec<Tensor> = self
            .params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float))
            .collect();
        if squares.is_empty() {
            return 0.0;
        }
        Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .double_value(&[])
            .sqrt()
    }

    /// Clips the gradients' global norm to at most `max_norm` (0: no
    /// clipping) for the next [`AdamW::step`], which scales them in f32.
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        self.grad_scale = if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        norm
    }

    /// One update with learning rate `lr`, then clears the gradients.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let scale = std::mem::replace(&mut self.grad_scale, 1.0);
        tch::no_grad(|| {
            for (((p, master), m), v) in self
                .params
                .iter()
                .zip(&self.masters)
                .zip(&mut self.first)
                .zip(&mut self.second)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut g = g.to_kind(Kind::Float);
                if scale != 1.0 {
                    g *= scale;
                }
                *m = &*m * c.beta1 + &g * (1.0 - c.beta1);
                *v = &*v * c.beta2 + g.pow_tensor_scalar(2) * (1.0 - c.beta2);
                let update = (&*m / bc1) / ((&*v / bc2).sqrt() + c.eps);
                // The f32 master where there is one, else the parameter.
                let mut w = master.as_ref().unwrap_or(p).shallow_clone();
                if c.weight_decay > 0.0 && p.dim() >= 2 {
                    let _ = w.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = w.g_sub_(&(update * lr).to_kind(w.kind()));
                if master.is_some() {
                    let mut p = p.shallow_clone();
                    p.copy_(&w);
                }
            }
        });
        self.zero_grad();
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Moment tensors, for checkpoints: `(first, second)` per parameter.
    pub fn state(&self) -> (&[Tensor], &[Tensor]) {
        (&self.first, &self.second)
    }

    /// Restores moments and the step count saved by [`AdamW::state`].
    pub fn restore(&mut self, first: Vec<Tensor>, second: Vec<Tensor>, steps: u64) {
        self.first = first;
        self.second = second;
        self.steps = steps;
    }
}

/// An f32 copy of `t`'s values, outside any graph.
fn master_of(t: &Tensor) -> Tensor {
    t.detach().to_kind(Kind::Float).copy()
}

/// Learning rate at optimizer step `step` (0-based): linear warm-up over
/// `warmup` steps to `peak`, then cosine decay to `floor` at `total`.
pub fn lr_at(step: u64, peak: f64, floor: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_floor() {
        assert!((lr_at(0, 1.0, 0.1, 10, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 1.0, 0.1, 10, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 1.0, 0.1, 10, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 1.0, 0.1, 10, 110) - 0.55).abs() < 1e-12);
        assert!((lr_at(110, 1.0, 0.1, 10, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(500, 1.0, 0.1, 10, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn one_step_follows_the_adamw_formula() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5])
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let loss = (&w * &w).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float);
        loss.backward();
        let c = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![w.shallow_clone(), b.shallow_clone()], c);
        opt.step(0.01);
        // First step: m̂ = g, v̂ = g², update = sign(g) (up to eps).
        let got: Vec<f32> = w.flatten(0, -1).try_into().unwrap();
        for (x0, x1) in [1.0f32, -2.0, 3.0, 0.5].iter().zip(&got) {
            let want = x0 * (1.0 - 0.01 * 0.1) - 0.01 * x0.signum();
            assert!((x1 - want).abs() < 1e-6, "{x1} vs {want}");
        }
        // The bias (1-D) is not decayed.
        assert!((b.double_value(&[0]) - (1.0 - 0.01)).abs() < 1e-6);
        assert_eq!(opt.grad_norm(), 0.0);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        (&w * &w).sum(Kind::Float).backward();
        let mut opt = AdamW::new(
            vec![w.shallow_clone()],
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        );
        assert!((opt.clip_grad_norm(1.0) - 10.0).abs() < 1e-5);
        // The step scales the gradients by 1 / 10 (in f32): its moments are
        // those of gradient (0.6, 0.8).
        opt.step(0.01);
        let (m, v) = opt.state();
        let m: Vec<f32> = m[0].shallow_clone().try_into().unwrap();
        let v: Vec<f32> = v[0].shallow_clone().try_into().unwrap();
        for ((m, v), g) in m.iter().zip(&v).zip([0.6f32, 0.8]) {
            assert!((m - 0.1 * g).abs() < 1e-6, "{m}");
            assert!((v - 0.05 * g * g).abs() < 1e-6, "{v}");
        }
    }

    /// A bf16 parameter keeps an f32 master: an update far below bf16's
    /// spacing accumulates in the master and reaches the parameter once it
    /// is large enough, while updated in bf16 directly it is lost.
    #[test]
    fn bf16_updates_accumulate_in_the_f32_master() {
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let run = |with_master: bool| {
            let w = Tensor::from_slice(&[1.0f32; 4])
                .to_kind(Kind::BFloat16)
                .set_requires_grad(true);
            let mut opt = if with_master {
                AdamW::new(vec![w.shallow_clone()], config)
            } else {
                AdamW::without_masters(vec![w.shallow_clone()], config)
            };
            for _ in 0..100 {
                w.sum(Kind::Float).backward();
                opt.step(1e-3);
            }
            let master = opt.masters()[0].as_ref().map(|m| m.double_value(&[0]));
            (w.to_kind(Kind::Float).double_value(&[0]), master)
        };
        // 100 steps of about lr each: 1 - 0.1. bf16's spacing at 1 is
        // 2^-7 (0.0078), so each 0.001 step alone rounds back to 1.
        let (plain, none) = run(false);
        assert_eq!(plain, 1.0);
        assert!(none.is_none());
        let (rounded, master) = run(true);
        let master = master.unwrap();
        assert!((master - 0.9).abs() < 1e-3, "{master}");
        assert!(
            (rounded - master).abs() < 4e-3,
            "{rounded} against {master}"
        );
    }
}
