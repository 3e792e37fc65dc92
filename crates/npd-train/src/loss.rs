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

/// Teacher and student log-probs on common buckets, `[N, B]` each.
fn buckets(logits: &Tensor, teacher: &TeacherDist<'_>) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    match teacher {
        TeacherDist::Full(lp) => (
            lp.to_kind(Kind::Float).clamp_min(LOG_FLOOR),
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
            let teacher = Tensor::cat(
                &[
                    logprobs.to_kind(Kind::Float),
                    tail.to_kind(Kind::Float).unsqueeze(1),
                ],
                1,
            )
            .clamp_min(LOG_FLOOR);
            (teacher, student)
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
    let (p, q) = buckets(logits, teacher);
    kl(&p, &q)
}

/// Reverse KL, `KL(student ‖ teacher)`: mode-seeking.
pub fn reverse_kl(logits: &Tensor, teacher: &TeacherDist<'_>) -> Tensor {
    let (p, q) = buckets(logits, teacher);
    kl(&q, &p)
}

/// Generalised Jensen-Shannon divergence with weight `beta` in (0, 1):
/// `beta · KL(p ‖ m) + (1 - beta) · KL(q ‖ m)` with `m = beta · p + (1 - beta) · q`.
pub fn jsd(logits: &Tensor, teacher: &TeacherDist<'_>, beta: f64) -> Tensor {
    let (p, q) = buckets(logits, teacher);
    let m = Tensor::stack(&[&p + beta.ln(), &q + (1.0 - beta).ln()], 0).logsumexp([0], false);
    kl(&p, &m) * beta + kl(&q, &m) * (1.0 - beta)
}

/// Cross-entropy of the target tokens `[N]` (int64).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    -logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &targets.unsqueeze(1), false)
        .squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
