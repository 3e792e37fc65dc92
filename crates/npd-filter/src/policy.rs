//! Selection rules over a scored pool.

use std::cmp::Ordering;

use npd_core::{DropReason, SampleId, Verdict};

/// A selection rule. Samples whose score could not be computed are dropped
/// with their reason by every rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Keep every well-formed sample.
    KeepAll,
    /// Keep the samples ranked in `[lower, upper)` of the pool by score:
    /// with `n` well-formed samples sorted by (score, id), ranks below
    /// `round(lower · n)` are dropped as below the band and ranks from
    /// `round(upper · n)` on as above it, so the band keeps
    /// `n · (upper - lower)` samples to within one.
    Band {
        /// Lower percentile in [0, 1].
        lower: f64,
        /// Upper percentile in [0, 1], above `lower`.
        upper: f64,
    },
    /// Keep scores within `[min, max]` (either end optional).
    Threshold {
        /// Lowest score kept.
        min: Option<f64>,
        /// Highest score kept.
        max: Option<f64>,
    },
    /// The classic IFD rule of Li et al. (2023), for plain IFD scores: drop
    /// IFD above `ceiling` (the prompt does not make the response easier),
    /// then keep the `keep_fraction` of the rest with the highest IFD.
    ClassicIfd {
        /// Highest IFD kept (1.0 in the original rule).
        ceiling: f64,
        /// Fraction of the remaining samples kept, hardest first.
        keep_fraction: f64,
    },
}

/// Total order of samples by score, ties by id: the basis of every
/// rank-based rule, so results do not depend on input order.
fn by_score_then_id(a: (f64, SampleId), b: (f64, SampleId)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

fn count(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64).round() as usize).min(n)
}

impl Policy {
    /// One verdict per sample, in input order. `ids` and `scores` have one
    /// entry per sample.
    ///
    /// # Panics
    /// If `ids` and `scores` differ in length.
    pub fn apply(&self, ids: &[SampleId], scores: &[Result<f64, DropReason>]) -> Vec<Verdict> {
        assert_eq!(ids.len(), scores.len(), "one id per score");
        let mut verdicts: Vec<Verdict> = scores
            .iter()
            .map(|s| match s {
                Ok(_) => Verdict::Keep,
                Err(reason) => Verdict::Drop(*reason),
            })
            .collect();
        let valid: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_ok()).collect();
        let score = |i: usize| scores[i].unwrap_or(f64::NAN);
        let sorted = |mut idx: Vec<usize>, descending: bool| {
            idx.sort_unstable_by(|&a, &b| {
                let (a, b) = if descending { (b, a) } else { (a, b) };
                by_score_then_id((score(a), ids[a]), (score(b), ids[b]))
            });
            idx
        };
        match *self {
            Policy::KeepAll => {}
            Policy::Band { lower, upper } => {
                let n = valid.len();
                let (lo, hi) = (count(lower, n), count(upper, n));
                for (rank, i) in sorted(valid, false).into_iter().enumerate() {
                    if rank < lo {
                        verdicts[i] = Verdict::Drop(DropReason::BelowBand);
                    } else if rank >= hi {
                        verdicts[i] = Verdict::Drop(DropReason::AboveBand);
                    }
                }
            }
            Policy::Threshold { min, max } => {
                for i in valid {
                    if min.is_some_and(|m| score(i) < m) {
                        verdicts[i] = Verdict::Drop(DropReason::BelowThreshold);
                    } else if max.is_some_and(|m| score(i) > m) {
                        verdicts[i] = Verdict::Drop(DropReason::AboveThreshold);
                    }
                }
            }
            Policy::ClassicIfd {
                ceiling,
                keep_fraction,
            } => {
                let (over, under): (Vec<usize>, Vec<usize>) =
                    valid.into_iter().partition(|&i| score(i) > ceiling);
                for i in over {
                    verdicts[i] = Verdict::Drop(DropReason::IfdAboveCeiling);
                }
                let keep = count(keep_fraction, under.len());
                for i in sorted(under, true).into_iter().skip(keep) {
                    verdicts[i] = Verdict::Drop(DropReason::OutsideTopFraction);
                }
            }
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<SampleId> {
        (0..n).map(SampleId).collect()
    }

    #[test]
    fn band_drops_both_tails() {
        let scores: Vec<_> = (0..10).map(|i| Ok(i as f64)).collect();
        let v = Policy::Band {
            lower: 0.2,
            upper: 0.7,
        }
        .apply(&ids(10), &scores);
        let kept: Vec<usize> = (0..10).filter(|&i| v[i].is_keep()).collect();
        assert_eq!(kept, vec![2, 3, 4, 5, 6]);
        assert_eq!(v[0], Verdict::Drop(DropReason::BelowBand));
        assert_eq!(v[9], Verdict::Drop(DropReason::AboveBand));
    }

    #[test]
    fn classic_rule_drops_above_ceiling_then_keeps_hardest() {
        let scores = vec![
            Ok(0.2),
            Ok(1.3),
            Ok(0.9),
            Ok(0.5),
            Err(DropReason::EmptyResponse),
        ];
        let v = Policy::ClassicIfd {
            ceiling: 1.0,
            keep_fraction: 0.5,
        }
        .apply(&ids(5), &scores);
        assert_eq!(
            v,
            vec![
                Verdict::Drop(DropReason::OutsideTopFraction),
                Verdict::Drop(DropReason::IfdAboveCeiling),
                Verdict::Keep,
                Verdict::Keep,
                Verdict::Drop(DropReason::EmptyResponse),
            ]
        );
    }

    #[test]
    fn thresholds_are_inclusive() {
        let scores = vec![Ok(-1.0), Ok(0.0), Ok(1.0), Ok(2.0)];
        let v = Policy::Threshold {
            min: Some(0.0),
            max: Some(1.0),
        }
        .apply(&ids(4), &scores);
        assert_eq!(v[0], Verdict::Drop(DropReason::BelowThreshold));
        assert!(v[1].is_keep() && v[2].is_keep());
        assert_eq!(v[3], Verdict::Drop(DropReason::AboveThreshold));
    }

    #[test]
    fn ties_are_broken_by_id() {
        let scores = vec![Ok(1.0); 4];
        let v = Policy::Band {
            lower: 0.0,
            upper: 0.5,
        }
        .apply(
            &[SampleId(9), SampleId(3), SampleId(7), SampleId(1)],
            &scores,
        );
        let kept: Vec<bool> = v.iter().map(|v| v.is_keep()).collect();
        assert_eq!(kept, vec![false, true, false, true]);
    }
}
