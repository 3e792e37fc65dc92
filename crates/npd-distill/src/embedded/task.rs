//! The embedded tasks: evaluate operations modulo 47, writing every
//! intermediate value.
//!
//! A prompt is `r0 op1 d1 op2 d2 ... =`, with `r0` in 0..47 written with two
//! digits and each op `+d`, `-d` (d in 0..=9) or `*d` (d in 1..=9),
//! left-padded with spaces to a fixed width. The response writes each step
//! as the op, its digit and the running value (two digits), comma
//! separated, then `#` and the final value. Every op is a bijection modulo
//! 47, so one wrong intermediate value makes the final answer wrong.
//!
//! - [`TaskKind::Chain`]: the ops apply in the written order, so each prompt
//!   has exactly one correct response: `37*3-9-9+9 =` is answered by
//!   `*317,-908,-946,+908#08`.
//! - [`TaskKind::Orders`]: only multiplications `*d` (d in 2..=9) of a
//!   non-zero start, which commute, so the steps may be taken in any order:
//!   `37*3*9*5 =` is answered by `*317,*912,*513#13`, by
//!   `*904,*520,*313#13`, or by any other order of the three. The teacher
//!   learns from random orders, so its next-token distribution spreads over
//!   the ops not yet used.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// The modulus.
pub const MODULUS: u32 = 47;

/// Which task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Ops in the written order: one correct response per prompt.
    #[default]
    Chain,
    /// Commuting ops in any order: many correct responses per prompt.
    Orders,
}

impl TaskKind {
    /// Its name in configuration files and reports.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Chain => "chain",
            TaskKind::Orders => "orders",
        }
    }
}

/// A task and its chain lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    /// Which task.
    pub kind: TaskKind,
    /// Fewest ops in a prompt.
    pub min_ops: usize,
    /// Most ops in a prompt.
    pub max_ops: usize,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            kind: TaskKind::Chain,
            min_ops: 3,
            max_ops: 8,
        }
    }
}

impl TaskSpec {
    /// Width the prompt is padded to (the longest chain plus `=`).
    pub fn prompt_width(&self) -> usize {
        2 + 2 * self.max_ops + 1
    }

    /// Most response tokens: five per step (op, digit, two-digit value,
    /// comma or `#`), the final value and the end, and room for one
    /// repaired value (`dd!`) and two more: 48 for chains of 8.
    pub fn response_budget(&self) -> usize {
        5 * self.max_ops + 8
    }

    /// A random problem.
    pub fn random(&self, rng: &mut StdRng) -> Problem {
        let steps = rng.random_range(self.min_ops..=self.max_ops);
        let ops = (0..steps)
            .map(|_| match (self.kind, rng.random_range(0..3)) {
                (TaskKind::Chain, 0) => ('+', rng.random_range(0..=9)),
                (TaskKind::Chain, 1) => ('-', rng.random_range(0..=9)),
                (TaskKind::Chain, _) => ('*', rng.random_range(1..=9)),
                (TaskKind::Orders, _) => ('*', rng.random_range(2..=9)),
            })
            .collect();
        let start = match self.kind {
            TaskKind::Chain => rng.random_range(0..MODULUS),
            // Zero would absorb every product.
            TaskKind::Orders => rng.random_range(1..MODULUS),
        };
        Problem { start, ops }
    }

    /// The prompt text of `p`, padded to [`TaskSpec::prompt_width`].
    pub fn prompt(&self, p: &Problem) -> String {
        let mut s = format!("{:02}", p.start);
        for (op, d) in &p.ops {
            s.push(*op);
            s.push(char::from_digit(*d, 10).expect("a digit"));
        }
        format!("{s:<w$}=", w = self.prompt_width() - 1)
    }

    /// The order in which a reference response takes `p`'s steps: as
    /// written for [`TaskKind::Chain`], a random order for
    /// [`TaskKind::Orders`].
    pub fn reference_order(&self, p: &Problem, rng: &mut StdRng) -> Problem {
        let mut q = p.clone();
        if self.kind == TaskKind::Orders {
            q.ops.shuffle(rng);
        }
        q
    }

    /// `n` seeded problems.
    pub fn problems(&self, n: usize, seed: u64) -> Vec<Problem> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| self.random(&mut rng)).collect()
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self.kind {
            TaskKind::Chain => format!(
                "chains of {} to {} operations modulo 47, applied in the written order (one correct response per prompt)",
                self.min_ops, self.max_ops
            ),
            TaskKind::Orders => format!(
                "{} to {} multiplications modulo 47, taken in any order (many correct responses per prompt; the teacher learns from random orders)",
                self.min_ops, self.max_ops
            ),
        }
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Starting value.
    pub start: u32,
    /// Operations: `('+' | '-' | '*', digit)`.
    pub ops: Vec<(char, u32)>,
}

impl Problem {
    /// The running values after each op, in the written order.
    pub fn values(&self) -> Vec<u32> {
        let mut v = self.start;
        self.ops
            .iter()
            .map(|&(op, d)| {
                v = match op {
                    '+' => (v + d) % MODULUS,
                    '-' => (v + MODULUS - d) % MODULUS,
                    _ => (v * d) % MODULUS,
                };
                v
            })
            .collect()
    }

    /// The final value.
    pub fn answer(&self) -> u32 {
        *self.values().last().expect("at least one op")
    }

    /// The response taking the steps in the written order.
    pub fn response(&self) -> String {
        let steps: Vec<String> = self
            .ops
            .iter()
            .zip(self.values())
            .map(|((op, d), v)| format!("{op}{d}{v:02}"))
            .collect();
        format!("{}#{:02}", steps.join(","), self.answer())
    }
}

/// The final answer written in a response: the two digits after the last
/// `#`, if well-formed.
pub fn final_answer(response: &str) -> Option<u32> {
    let (_, tail) = response.rsplit_once('#')?;
    let digits: String = tail.chars().take(2).collect();
    if digits.len() == 2 && digits.chars().all(|c| c.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example() {
        let spec = TaskSpec::default();
        let p = Problem {
            start: 37,
            ops: vec![('*', 3), ('-', 9), ('-', 9), ('+', 9)],
        };
        assert_eq!(p.response(), "*317,-908,-946,+908#08");
        assert_eq!(spec.prompt(&p), "37*3-9-9+9        =");
        assert_eq!(spec.prompt(&p).len(), spec.prompt_width());
        assert_eq!(final_answer(&p.response()), Some(8));
        assert_eq!(final_answer("*317,-9"), None);
        assert_eq!(final_answer("#4"), None);
    }

    #[test]
    fn problems_are_seeded_and_within_limits() {
        for (kind, min, max) in [(TaskKind::Chain, 3, 8), (TaskKind::Orders, 20, 30)] {
            let spec = TaskSpec {
                kind,
                min_ops: min,
                max_ops: max,
            };
            let a = spec.problems(200, 3);
            assert_eq!(a, spec.problems(200, 3));
            assert_ne!(a, spec.problems(200, 4));
            for p in &a {
                assert!((min..=max).contains(&p.ops.len()) && p.start < MODULUS);
                assert!(p.ops.iter().all(|&(op, d)| d <= 9 && (op != '*' || d >= 1)));
                assert_eq!(spec.prompt(p).len(), spec.prompt_width());
                assert!(p.response().len() < spec.response_budget());
                if kind == TaskKind::Orders {
                    assert!(p.start > 0 && p.ops.iter().all(|&(op, d)| op == '*' && d >= 2));
                }
            }
        }
    }

    #[test]
    fn every_order_of_an_orders_problem_has_the_same_answer() {
        let spec = TaskSpec {
            kind: TaskKind::Orders,
            ..TaskSpec::default()
        };
        let mut rng = StdRng::seed_from_u64(5);
        let mut responses = std::collections::HashSet::new();
        for p in spec.problems(50, 9) {
            for _ in 0..6 {
                let q = spec.reference_order(&p, &mut rng);
                assert_eq!(q.answer(), p.answer());
                let mut sorted = q.ops.clone();
                sorted.sort_unstable();
                let mut original = p.ops.clone();
                original.sort_unstable();
                assert_eq!(sorted, original);
                responses.insert(q.response());
            }
        }
        // Orders differ: many distinct responses per prompt.
        assert!(responses.len() > 150, "{}", responses.len());
        let chain = TaskSpec::default();
        let p = chain.problems(1, 2).remove(0);
        assert_eq!(chain.reference_order(&p, &mut rng), p);
    }
}
