//! AdamW with decoupled weight decay, the warm-up + cosine schedule, and
//! global-norm gradient clipping. State is plain tensors so checkpoints can
//! save and restore it.

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
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    steps: u64,
}

impl AdamW {
    /// An optimizer for `params` (tensors that require grad).
    pub fn new(params: Vec<Tensor>, config: AdamWConfig) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().to_kind(Kind::Float);
        Self {
            config,
            first: params.iter().map(zeros).collect(),
            second: params.iter().map(zeros).collect(),
            params,
            steps: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Global L2 norm of the gradients (0 for parameters without one).
    pub fn grad_norm(&self) -> f64 {
        let sq: f64 = self
            .params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.to_kind(Kind::Float)
                        .pow_tensor_scalar(2)
                        .sum(Kind::Float)
                        .double_value(&[])
                } else {
                    0.0
                }
            })
            .sum();
        sq.sqrt()
    }

    /// Scales gradients so their global norm is at most `max_norm` (0: no
    /// clipping). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for p in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
        norm
    }

    /// One update with learning rate `lr`, then clears the gradients.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        tch::no_grad(|| {
            for ((p, m), v) in self
                .params
                .iter()
                .zip(&mut self.first)
                .zip(&mut self.second)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                *m = &*m * c.beta1 + &g * (1.0 - c.beta1);
                *v = &*v * c.beta2 + g.pow_tensor_scalar(2) * (1.0 - c.beta2);
                let update = (&*m / bc1) / ((&*v / bc2).sqrt() + c.eps);
                let mut p = p.shallow_clone();
                if c.weight_decay > 0.0 && p.dim() >= 2 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = p.g_sub_(&(update * lr).to_kind(p.kind()));
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
        assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
    }
}
