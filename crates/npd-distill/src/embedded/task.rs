//! The embedded task: evaluate a chain of operations modulo 47, writing
//! every intermediate value.
//!
//! A prompt is `r0 op1 d1 op2 d2 ... =`, with `r0` in 0..47 written with two
//! digits and each op `+d`, `-d` (d in 0..=9) or `*d` (d in 1..=9), 3 to 8
//! steps, left-padded with spaces to a fixed width. The response writes
//! each step as the op, its digit and the running value (two digits), comma
//! separated, then `#` and the final value: `37*3-9-9+9 =` is answered by
//! `*317,-908,-946,+908#08`. Every op is a bijection modulo 47, so one wrong
//! intermediate value makes the final answer wrong.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// The modulus.
pub const MODULUS: u32 = 47;
/// Width the prompt is padded to (the longest chain plus `=`).
pub const PROMPT_WIDTH: usize = 2 + 8 * 2 + 1;

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Starting value.
    pub start: u32,
    /// Operations: `('+' | '-' | '*', digit)`.
    pub ops: Vec<(char, u32)>,
}

impl Problem {
    /// A random problem with 3 to 8 steps.
    pub fn random(rng: &mut StdRng) -> Self {
        let steps = rng.random_range(3..=8);
        let ops = (0..steps)
            .map(|_| match rng.random_range(0..3) {
                0 => ('+', rng.random_range(0..=9)),
                1 => ('-', rng.random_range(0..=9)),
                _ => ('*', rng.random_range(1..=9)),
            })
            .collect();
        Self {
            start: rng.random_range(0..MODULUS),
            ops,
        }
    }

    /// The running values after each op.
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

    /// The prompt text, padded to [`PROMPT_WIDTH`].
    pub fn prompt(&self) -> String {
        let mut s = format!("{:02}", self.start);
        for (op, d) in &self.ops {
            s.push(*op);
            s.push(char::from_digit(*d, 10).expect("a digit"));
        }
        format!("{s:<w$}=", w = PROMPT_WIDTH - 1)
    }

    /// The reference response.
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

/// `n` seeded problems.
pub fn problems(n: usize, seed: u64) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| Problem::random(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example() {
        let p = Problem {
            start: 37,
            ops: vec![('*', 3), ('-', 9), ('-', 9), ('+', 9)],
        };
        assert_eq!(p.response(), "*317,-908,-946,+908#08");
        assert_eq!(p.prompt(), "37*3-9-9+9        =");
        assert_eq!(p.prompt().len(), PROMPT_WIDTH);
        assert_eq!(final_answer(&p.response()), Some(8));
        assert_eq!(final_answer("*317,-9"), None);
        assert_eq!(final_answer("#4"), None);
    }

    #[test]
    fn problems_are_seeded_and_within_limits() {
        let a = problems(200, 3);
        assert_eq!(a, problems(200, 3));
        assert_ne!(a, problems(200, 4));
        for p in &a {
            assert!((3..=8).contains(&p.ops.len()) && p.start < MODULUS);
            assert!(p.ops.iter().all(|&(op, d)| d <= 9 && (op != '*' || d >= 1)));
            assert_eq!(p.prompt().len(), PROMPT_WIDTH);
        }
    }
}
