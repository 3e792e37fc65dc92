//! Per-token distillation losses on student logits.
//!
//! Teacher distributions come either in full (`[N, vocab]` log-probs) or as
//! the top k entries plus the remaining mass as one bucket. The student's
//! distribution is put on the same buckets (its probabilities of the k ids,
//! and the rest), and the divergence is taken over those `k + 1` buckets;
//! with a full teacher the buckets are the whole vocabulary.
//!
//! Every function returns one loss per token (`[N]`); callers weight and
//! normalise (see [`crate::train`]).

use tch::{Kind, Tensor};

/// Log-probs below this are treated as zero probability: it keeps `0 · log 0`
/// terms and their gradients finite.
const LOG_FLOOR: f64 = -1e4;

/// The teacher's distribution at each target position.
#[derive(Debug)]
pub enum TeacherDist<'a> {
    /// Log-probs over the whole vocabulary, `[N, vocab]`.
    Full(&'a Tensor),
    /// Top-k ids `[N, k]` (int64), their log-probs `[N, k]`, and the log of
    /// the remaining mass `[N]`.
    TopK {
        /// Token ids.
        ids: &'a Tensor,
        /// Log-probabilities of `ids`.
        logprobs: &'a Tensor,
        /// `log(1 - sum(exp(logprobs)))`.
        tail: &'a Tensor,
    },
}

/// Teacher and student log-probs on common buckets, `[N, B]` each, both
/// softened by `temperature` (1 leaves them as they are). A top-k teacher's
/// `k + 1` buckets are renormalised after softening, with the tail as one
/// bucket: exact when the top k hold nearly all the mass.
fn buckets(logits: &Tensor, teacher: &TeacherDist<'_>, temperature: f64) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let logits = if temperature == 1.0 {
        logits
    } else {
        logits / temperature
    };
    let soften = |lp: Tensor| {
        if temperature == 1.0 {
            lp
        } else {
            (lp.clamp_min(LOG_FLOOR) / temperature).log_softmax(-1, Kind::Float)
        }
    };
    match teacher {
        TeacherDist::Full(lp) => (
            soften(lp.to_kind(Kind::Float)).clamp_min(LOG_FLOOR),
            logits.log_softmax(-1, Kind::Float).clamp_min(LOG_FLOOR),
        ),
        TeacherDist::TopK {
            ids,
            logprobs,
            tail,
        } => {
            let lse = logits.logsumexp([-1], true);
            let top = logits.gather(1, ids, false) - &lse;
            let rest = logits
                .scatter_value(1, ids, f64::NEG_INFINITY)
                .logsumexp([-1], true)
                - &lse;
            let student = Tensor::cat(&[top, rest], 1).clamp_min(LOG_FLOOR);
            let teacher = soften(Tensor::cat(
                &[
                    logprobs.to_kind(Kind::Float),
                    tail.to_kind(Kind::Float).unsqueeze(1),
                ],
                1,
            ))
            .clamp_min(LOG_FLOOR);
            (teacher, student)
        }
    }
}

/// The bucket of each target token `[N]`: its place among the teacher's
/// top-k ids, or `k` (the tail) when it is not among them; with a full
/// teacher, the token itself.
fn bucket_of(teacher: &TeacherDist<'_>, tokens: &Tensor) -> Tensor {
    match teacher {
        TeacherDist::Full(_) => tokens.shallow_clone(),
        TeacherDist::TopK { ids, .. } => {
            let k = ids.size()[1];
            let hit = ids.eq_tensor(&tokens.unsqueeze(1));
            let place = hit.to_kind(Kind::Int64).argmax(1, false);
            place.where_self(&hit.any_dim(1, false), &place.full_like(k))
        }
    }
}

/// `KL(a ‖ b)` per row over buckets given as log-probs.
fn kl(log_a: &Tensor, log_b: &Tensor) -> Tensor {
    (log_a.exp() * (log_a - log_b)).sum_dim_intlist(-1, false, Kind::Float)
}

/// Forward KL, `KL(teacher ‖ student)`: mode-covering; the usual
/// distillation loss.
pub fn forward_kl(logits: &Tensor, teacher: &TeacherDist<'_>) -> Tensor {
    distill(logits, teacher, None, &Divergence::Forward, 1.0)
}

/// Reverse KL, `KL(student ‖ teacher)`: mode-seeking.
pub fn reverse_kl(logits: &Tensor, teacher: &TeacherDist<'_>) -> Tensor {
    distill(logits, teacher, None, &Divergence::Reverse, 1.0)
}

/// Generalised Jensen-Shannon divergence with weight `beta` in (0, 1):
/// `beta · KL(p ‖ m) + (1 - beta) · KL(q ‖ m)` with `m = beta · p + (1 - beta) · q`.
pub fn jsd(logits: &Tensor, teacher: &TeacherDist<'_>, beta: f64) -> Tensor {
    distill(logits, teacher, None, &Divergence::Jsd(beta), 1.0)
}

/// `log(w · exp(a) + (1 - w) · exp(b))`, elementwise.
fn log_mix(a: &Tensor, b: &Tensor, w: f64) -> Tensor {
    Tensor::stack(&[a + w.ln(), b + (1.0 - w).ln()], 0).logsumexp([0], false)
}

/// A divergence between the teacher's and the student's distributions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    /// `KL(teacher ‖ student)`.
    Forward,
    /// `KL(student ‖ teacher)`.
    Reverse,
    /// Generalised JSD with this weight.
    Jsd(f64),
    /// DistiLLM's skew KL, `KL(p ‖ α·p + (1 − α)·q)`, with this α.
    SkewForward(f64),
    /// DistiLLM's skew reverse KL, `KL(q ‖ α·q + (1 − α)·p)`, with this α.
    SkewReverse(f64),
    /// Reverse KL estimated from the sampled token: its value is the
    /// token's log-ratio `log q(y) − log p(y)` (on the buckets), its
    /// gradient that log-ratio times `∇ log q(y)` (the score-function
    /// estimator of the reverse KL's gradient on samples from the student).
    SampledReverse,
}

/// The divergence `d` per token at `temperature`; `tokens` (the targets,
/// int64 `[N]`) are needed by [`Divergence::SampledReverse`] only.
pub fn distill(
    logits: &Tensor,
    teacher: &TeacherDist<'_>,
    tokens: Option<&Tensor>,
    d: &Divergence,
    temperature: f64,
) -> Tensor {
    let (p, q) = buckets(logits, teacher, temperature);
    match *d {
        Divergence::Forward => kl(&p, &q),
        Divergence::Reverse => kl(&q, &p),
        Divergence::Jsd(beta) => {
            let m = log_mix(&p, &q, beta);
            kl(&p, &m) * beta + kl(&q, &m) * (1.0 - beta)
        }
        Divergence::SkewForward(alpha) => kl(&p, &log_mix(&p, &q, alpha)),
        Divergence::SkewReverse(alpha) => kl(&q, &log_mix(&q, &p, alpha)),
        Divergence::SampledReverse => {
            let tokens = tokens.expect("the sampled-token estimator needs the target tokens");
            let at = bucket_of(teacher, tokens).unsqueeze(1);
            let lq = q.gather(1, &at, false).squeeze_dim(1);
            let lp = p.gather(1, &at, false).squeeze_dim(1);
            let ratio = (&lq - &lp).detach();
            &ratio + (&lq - lq.detach()) * &ratio
        }
    }
}

/// Cross-entropy of the target tokens `[N]` (int64).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    -logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &targets.unsqueeze(1), false)
        .squeeze_dim(1)
}

/// The token-level clipped surrogate of PPO and GRPO, to be minimised:
/// `-min(ρ·A, clip(ρ, 1 - eps_low, 1 + eps_high)·A)` per token, with
/// `ρ = exp(logp - behaviour)` the importance ratio of the current policy's
/// log-prob of the sampled token against the behaviour policy's (the
/// snapshot that sampled it) and `A` the token's advantage. Where the
/// clipped term binds, the gradient is zero: the update stops once the
/// policy has moved `eps` away from the behaviour policy in the direction
/// the advantage favours. `eps_high > eps_low` is DAPO's clip-higher.
/// All inputs `[N]`; `behaviour` and `advantages` carry no gradient.
pub fn clipped_surrogate(
    logp: &Tensor,
    behaviour: &Tensor,
    advantages: &Tensor,
    eps_low: f64,
    eps_high: f64,
) -> Tensor {
    let logp = logp.to_kind(Kind::Float);
    let ratio = (&logp - behaviour.to_kind(Kind::Float).detach()).exp();
    let adv = advantages.to_kind(Kind::Float).detach();
    let unclipped = &ratio * &adv;
    let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * &adv;
    -unclipped.minimum(&clipped)
}

/// The per-token KL penalty toward a reference policy, Schulman's
/// unbiased, non-negative estimator of `KL(policy ‖ reference)` from
/// sampled tokens: `exp(ref - logp) - (ref - logp) - 1`. Its gradient with
/// respect to `logp` is `1 - exp(ref - logp)`: zero where the policy
/// agrees with the reference. `reference` carries no gradient; all `[N]`.
pub fn kl_to_reference(logp: &Tensor, reference: &Tensor) -> Tensor {
    let d = reference.to_kind(Kind::Float).detach() - logp.to_kind(Kind::Float);
    d.exp() - &d - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kl_penalty_is_zero_at_the_reference_and_its_gradient_as_derived() {
        let reference = Tensor::from_slice(&[-1.0f32, -2.0, -0.5]);
        let logp = Tensor::from_slice(&[-1.0f32, -1.5, -0.9]).set_requires_grad(true);
        let kl = kl_to_reference(&logp, &reference);
        kl.sum(Kind::Float).backward();
        let grad = logp.grad();
        for (i, (r, l)) in [(-1.0f64, -1.0f64), (-2.0, -1.5), (-0.5, -0.9)]
            .into_iter()
            .enumerate()
        {
            let d = r - l;
            let want = d.exp() - d - 1.0;
            assert!((kl.double_value(&[i as i64]) - want).abs() < 1e-6);
            assert!(kl.double_value(&[i as i64]) >= 0.0);
            assert!((grad.double_value(&[i as i64]) - (1.0 - d.exp())).abs() < 1e-6);
        }
        assert_eq!(kl.double_value(&[0]), 0.0);
    }

    /// The surrogate's gradient with respect to the log-probs is `-A·ρ`
    /// where the ratio is inside the clip range (or the clip does not
    /// bind), and zero where the clipped term binds.
    #[test]
    fn the_clipped_surrogates_gradient_is_zero_where_the_clip_binds() {
        let (eps_low, eps_high) = (0.2, 0.28);
        // (log ratio, advantage): inside, above for A > 0 (binds), above
        // for A < 0 (does not bind), below for A < 0 (binds), below for
        // A > 0 (does not bind).
        let cases: [(f64, f64, bool); 5] = [
            (0.05, 1.0, false),
            (0.4, 1.0, true),
            (0.4, -1.0, false),
            (-0.5, -2.0, true),
            (-0.5, 0.5, false),
        ];
        let behaviour = Tensor::from_slice(&[-1.0f32; 5]);
        let logp =
            Tensor::from_slice(&cases.map(|(d, _, _)| -1.0 + d as f32)).set_requires_grad(true);
        let adv = Tensor::from_slice(&cases.map(|(_, a, _)| a as f32));
        let loss = clipped_surrogate(&logp, &behaviour, &adv, eps_low, eps_high);
        loss.sum(Kind::Float).backward();
        let grad = logp.grad();
        for (i, (d, a, binds)) in cases.iter().enumerate() {
            let g = grad.double_value(&[i as i64]);
            let want = if *binds { 0.0 } else { -a * d.exp() };
            assert!((g - want).abs() < 1e-5, "case {i}: {g} against {want}");
            let v = loss.double_value(&[i as i64]);
            let r = d.exp();
            let want_v = -(r * a).min(r.clamp(1.0 - eps_low, 1.0 + eps_high) * a);
            assert!((v - want_v).abs() < 1e-5, "case {i}: {v} against {want_v}");
        }
    }

    /// On a tiny softmax policy, the gradient of the token-mean surrogate
    /// with respect to its logits equals central finite differences.
    #[test]
    fn the_surrogates_gradient_matches_finite_differences() {
        tch::manual_seed(3);
        let logits = Tensor::randn([4, 6], (Kind::Double, tch::Device::Cpu));
        let tokens = Tensor::from_slice(&[1i64, 4, 0, 5]);
        let behaviour = Tensor::from_slice(&[-1.9f64, -1.6, -2.2, -1.7]);
        let adv = Tensor::from_slice(&[0.8f64, -1.1, 0.3, -0.4]);
        let loss_of = |l: &Tensor| {
            let logp = l
                .log_softmax(-1, Kind::Double)
                .gather(1, &tokens.unsqueeze(1), false)
                .squeeze_dim(1);
            let ratio = (&logp - &behaviour).exp();
            let unclipped = &ratio * &adv;
            let clipped = ratio.clamp(0.8, 1.28) * &adv;
            (-unclipped.minimum(&clipped)).mean(Kind::Double)
        };
        let x = logits.copy().set_requires_grad(true);
        let logp = x
            .log_softmax(-1, Kind::Double)
            .gather(1, &tokens.unsqueeze(1), false)
            .squeeze_dim(1);
        clipped_surrogate(&logp, &behaviour, &adv, 0.2, 0.28)
            .mean(Kind::Float)
            .backward();
        let grad = x.grad();
        let h = 1e-6;
        for i in 0..4 {
            for j in 0..6 {
                let bump = |d: f64| {
                    let l = logits.copy();
                    let _ = l.get(i).get(j).fill_(logits.double_value(&[i, j]) + d);
                    loss_of(&l).double_value(&[])
                };
                let fd = (bump(h) - bump(-h)) / (2.0 * h);
                let g = grad.double_value(&[i, j]);
                assert!((g - fd).abs() < 1e-4, "[{i}, {j}]: {g} against {fd}");
            }
        }
    }

    /// Rows of probabilities as plain vectors.
    fn rows(t: &Tensor) -> Vec<Vec<f64>> {
        let (n, v) = t.size2().unwrap();
        (0..n)
            .map(|i| (0..v).map(|j| t.double_value(&[i, j])).collect())
            .collect()
    }

    fn softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    fn kl_direct(p: &[f64], q: &[f64]) -> f64 {
        p.iter()
            .zip(q)
            .map(|(a, b)| if *a > 0.0 { a * (a / b).ln() } else { 0.0 })
            .sum()
    }

    fn setup() -> (Tensor, Tensor) {
        tch::manual_seed(0);
        let student = Tensor::randn([3, 7], (Kind::Float, tch::Device::Cpu)) * 2.0;
        let teacher = Tensor::randn([3, 7], (Kind::Float, tch::Device::Cpu)) * 2.0;
        (student, teacher)
    }

    #[test]
    fn full_distribution_losses_match_direct_sums() {
        let (s, t) = setup();
        let tl = t.log_softmax(-1, Kind::Float);
        let full = TeacherDist::Full(&tl);
        let fkl = forward_kl(&s, &full);
        let rkl = reverse_kl(&s, &full);
        let js = jsd(&s, &full, 0.3);
        for (i, (sr, tr)) in rows(&s).iter().zip(rows(&t)).enumerate() {
            let (q, p) = (softmax(sr), softmax(&tr));
            let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| 0.3 * a + 0.7 * b).collect();
            let want_js = 0.3 * kl_direct(&p, &m) + 0.7 * kl_direct(&q, &m);
            let i = i as i64;
            assert!((fkl.double_value(&[i]) - kl_direct(&p, &q)).abs() < 1e-5);
            assert!((rkl.double_value(&[i]) - kl_direct(&q, &p)).abs() < 1e-5);
            assert!((js.double_value(&[i]) - want_js).abs() < 1e-5);
        }
    }

    #[test]
    fn topk_losses_match_bucketed_direct_sums() {
        let (s, t) = setup();
        let tl = t.log_softmax(-1, Kind::Float);
        let (vals, ids) = tl.topk(3, -1, true, true);
        let tail = (-vals.logsumexp([-1], false).exp()).log1p();
        let dist = TeacherDist::TopK {
            ids: &ids,
            logprobs: &vals,
            tail: &tail,
        };
        let fkl = forward_kl(&s, &dist);
        let rkl = reverse_kl(&s, &dist);
        for (i, (sr, tr)) in rows(&s).iter().zip(rows(&t)).enumerate() {
            let (q, p) = (softmax(sr), softmax(&tr));
            let top: Vec<usize> = (0..3)
                .map(|r| ids.int64_value(&[i as i64, r]) as usize)
                .collect();
            let bucket = |d: &[f64]| {
                let mut b: Vec<f64> = top.iter().map(|&j| d[j]).collect();
                b.push(1.0 - b.iter().sum::<f64>());
                b
            };
            let (pb, qb) = (bucket(&p), bucket(&q));
            assert!((fkl.double_value(&[i as i64]) - kl_direct(&pb, &qb)).abs() < 1e-5);
            assert!((rkl.double_value(&[i as i64]) - kl_direct(&qb, &pb)).abs() < 1e-5);
        }
    }

    #[test]
    fn losses_vanish_when_student_equals_teacher_and_gradients_stay_finite() {
        let (_, t) = setup();
        let s = t.copy().set_requires_grad(true);
        let tl = t.log_softmax(-1, Kind::Float);
        // One-hot-like teacher rows exercise the zero-probability buckets.
        let sharp = (t * 100.0).log_softmax(-1, Kind::Float);
        let full = TeacherDist::Full(&tl);
        assert!(forward_kl(&s, &full).abs().max().double_value(&[]) < 1e-5);
        let loss = forward_kl(&s, &TeacherDist::Full(&sharp)).sum(Kind::Float)
            + reverse_kl(&s, &TeacherDist::Full(&sharp)).sum(Kind::Float)
            + jsd(&s, &TeacherDist::Full(&sharp), 0.5).sum(Kind::Float);
        loss.backward();
        assert!(bool::try_from(s.grad().isfinite().all()).unwrap());
    }

    #[test]
    fn cross_entropy_matches_direct() {
        let (s, _) = setup();
        let targets = Tensor::from_slice(&[0i64, 6, 3]);
        let ce = cross_entropy(&s, &targets);
        for (i, r) in rows(&s).iter().enumerate() {
            let want = -softmax(r)[[0, 6, 3][i]].ln();
            assert!((ce.double_value(&[i as i64]) - want).abs() < 1e-5);
        }
    }

    #[test]
    fn skew_and_softened_losses_match_direct_sums() {
        let (s, t) = setup();
        let tl = t.log_softmax(-1, Kind::Float);
        let full = TeacherDist::Full(&tl);
        let skf = distill(&s, &full, None, &Divergence::SkewForward(0.1), 1.0);
        let skr = distill(&s, &full, None, &Divergence::SkewReverse(0.1), 1.0);
        let soft = distill(&s, &full, None, &Divergence::Forward, 2.0);
        for (i, (sr, tr)) in rows(&s).iter().zip(rows(&t)).enumerate() {
            let (q, p) = (softmax(sr), softmax(&tr));
            let mix = |a: &[f64], b: &[f64]| -> Vec<f64> {
                a.iter().zip(b).map(|(x, y)| 0.1 * x + 0.9 * y).collect()
            };
            let i = i as i64;
            assert!((skf.double_value(&[i]) - kl_direct(&p, &mix(&p, &q))).abs() < 1e-5);
            assert!((skr.double_value(&[i]) - kl_direct(&q, &mix(&q, &p))).abs() < 1e-5);
            let half = |x: &[f64]| softmax(&x.iter().map(|v| v / 2.0).collect::<Vec<_>>());
            let tr_logp: Vec<f64> = p.iter().map(|v| v.ln()).collect();
            let want = kl_direct(&half(&tr_logp), &half(sr));
            assert!((soft.double_value(&[i]) - want).abs() < 1e-5);
        }
    }

    /// The sampled-token estimator: its value is the token's log-ratio, and
    /// its gradient, averaged over tokens drawn from the student, is the
    /// analytic reverse KL's gradient (on the full vocabulary and on
    /// top-k buckets).
    #[test]
    fn sampled_reverse_kl_is_unbiased_for_the_reverse_kl_gradient() {
        let (s, t) = setup();
        let v = s.size()[1];
        let tl = t.log_softmax(-1, Kind::Float);
        let (vals, ids) = tl.topk(3, -1, true, true);
        let tail = tl
            .scatter_value(1, &ids, f64::NEG_INFINITY)
            .logsumexp([-1], false);
        for top in [false, true] {
            let x = s.get(0).unsqueeze(0).copy().set_requires_grad(true);
            let row = |r: &Tensor| r.get(0).unsqueeze(0).repeat([v, 1]);
            let tl0 = row(&tl);
            let (ids0, vals0, tail0) = (row(&ids), row(&vals), tail.narrow(0, 0, 1).repeat([v]));
            let dist = |top: bool| {
                if top {
                    TeacherDist::TopK {
                        ids: &ids0,
                        logprobs: &vals0,
                        tail: &tail0,
                    }
                } else {
                    TeacherDist::Full(&tl0)
                }
            };
            // Every token once, weighted by the student's probability of it
            // (its bucket's probability shared among the tail's tokens).
            let xs = x.repeat([v, 1]);
            let tokens = Tensor::arange(v, (Kind::Int64, tch::Device::Cpu));
            let q = x.detach().softmax(-1, Kind::Float).squeeze_dim(0);
            let est = distill(
                &xs,
                &dist(top),
                Some(&tokens),
                &Divergence::SampledReverse,
                1.0,
            );
            // The value is the log-ratio of the token's bucket.
            let (p_b, q_b) = buckets(&xs, &dist(top), 1.0);
            let at = bucket_of(&dist(top), &tokens).unsqueeze(1);
            let want = (q_b.gather(1, &at, false) - p_b.gather(1, &at, false)).squeeze_dim(1);
            assert!((&est - &want).abs().max().double_value(&[]) < 1e-5);
            (est * &q).sum(Kind::Float).backward();
            let g_est = x.grad().copy();
            let x2 = s.get(0).unsqueeze(0).copy().set_requires_grad(true);
            let one = |r: &Tensor| r.get(0).unsqueeze(0);
            let (ids1, vals1, tail1) = (one(&ids), one(&vals), tail.narrow(0, 0, 1));
            let tl1 = one(&tl);
            let d1 = if top {
                TeacherDist::TopK {
                    ids: &ids1,
                    logprobs: &vals1,
                    tail: &tail1,
                }
            } else {
                TeacherDist::Full(&tl1)
            };
            reverse_kl(&x2, &d1).sum(Kind::Float).backward();
            let diff = (g_est - x2.grad()).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "top-k {top}: gradients differ by {diff}");
        }
    }
}
