//! What a filter did, as data for metrics and reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use npd_core::traits::Decision;
use npd_core::{DropReason, Verdict};

/// Counts of a histogram over equal-width bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub min: f64,
    /// Right edge of the last bin.
    pub max: f64,
    /// Samples per bin; the last bin includes `max`.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Histogram of the finite values in `bins` (>= 1) equal bins spanning
    /// their range; `None` when there are no finite values.
    pub fn of(values: impl IntoIterator<Item = f64>, bins: usize) -> Option<Self> {
        let finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        let (min, max) =
            finite
                .iter()
                .copied()
                .fold(None, |acc: Option<(f64, f64)>, v| match acc {
                    None => Some((v, v)),
                    Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
                })?;
        let bins = bins.max(1);
        let mut counts = vec![0u64; bins];
        let width = (max - min) / bins as f64;
        for v in finite {
            let b = if width > 0.0 {
                (((v - min) / width) as usize).min(bins - 1)
            } else {
                0
            };
            counts[b] += 1;
        }
        Some(Self { min, max, counts })
    }

    /// Number of values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A filter's account of one pool, or of many merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterReport {
    /// Samples judged.
    pub total: usize,
    /// Samples kept.
    pub kept: usize,
    /// Samples dropped, per reason.
    pub dropped: BTreeMap<DropReason, usize>,
    /// Lowest and highest score kept by the last pool's thresholds, when the
    /// policy has thresholds (infinite where a side is open).
    #[serde(default, with = "npd_core::float::pair")]
    pub thresholds: Option<(f64, f64)>,
    /// Histogram of the well-formed scores of the last pool.
    pub histogram: Option<Histogram>,
}

/// Bins of the score histogram in reports.
pub const HISTOGRAM_BINS: usize = 20;

impl FilterReport {
    /// Account of a list of decisions.
    pub fn of(decisions: &[Decision], thresholds: Option<(f64, f64)>) -> Self {
        let mut r = FilterReport {
            total: decisions.len(),
            thresholds,
            histogram: Histogram::of(decisions.iter().filter_map(|d| d.score), HISTOGRAM_BINS),
            ..Default::default()
        };
        for d in decisions {
            match d.verdict {
                Verdict::Keep => r.kept += 1,
                Verdict::Drop(reason) => *r.dropped.entry(reason).or_default() += 1,
            }
        }
        r
    }

    /// Fraction of samples kept (0 for an empty report).
    pub fn keep_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.kept as f64 / self.total as f64
        }
    }

    /// Adds another report's counts; thresholds and histogram become the
    /// other's (the latest pool's).
    pub fn merge(&mut self, other: &FilterReport) {
        self.total += other.total;
        self.kept += other.kept;
        for (reason, n) in &other.dropped {
            *self.dropped.entry(*reason).or_default() += n;
        }
        self.thresholds = other.thresholds;
        self.histogram = other.histogram.clone();
    }

    /// Whether kept plus dropped accounts for every sample.
    pub fn is_balanced(&self) -> bool {
        self.kept + self.dropped.values().sum::<usize>() == self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_every_finite_value() {
        let h = Histogram::of([0.0, 1.0, 2.0, 3.0, f64::NAN, 4.0], 4).unwrap();
        assert_eq!(h.counts, vec![1, 1, 1, 2]);
        assert_eq!(h.total(), 5);
        assert!(Histogram::of([f64::NAN], 3).is_none());
        assert_eq!(Histogram::of([2.0, 2.0], 3).unwrap().counts, vec![2, 0, 0]);
    }
}
