//! Packing efficiency, and what padding would have cost.

use serde::{Deserialize, Serialize};

use npd_core::PackedRow;

/// How well rows are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PackStats {
    /// Rows.
    pub rows: usize,
    /// Samples.
    pub samples: usize,
    /// Sample tokens (not padding).
    pub tokens: usize,
    /// Row slots, `rows * capacity`.
    pub slots: usize,
}

impl PackStats {
    /// Statistics of packed rows.
    pub fn of_rows(rows: &[PackedRow]) -> Self {
        Self {
            rows: rows.len(),
            samples: rows.iter().map(|r| r.segments.len()).sum(),
            tokens: rows.iter().map(PackedRow::used).sum(),
            slots: rows.iter().map(PackedRow::capacity).sum(),
        }
    }

    /// Statistics of a row plan over sample lengths.
    pub fn of_plan(plan: &[Vec<usize>], lengths: &[usize], capacity: usize) -> Self {
        Self {
            rows: plan.len(),
            samples: plan.iter().map(Vec::len).sum(),
            tokens: plan.iter().flatten().map(|&i| lengths[i]).sum(),
            slots: plan.len() * capacity,
        }
    }

    /// Fraction of slots holding sample tokens.
    pub fn efficiency(&self) -> f64 {
        if self.slots == 0 {
            0.0
        } else {
            self.tokens as f64 / self.slots as f64
        }
    }
}

/// Efficiency of padded batches: samples taken `batch_size` at a time in the
/// given order, each batch padded to its longest sample. This is what a
/// trainer without packing computes on.
pub fn padded_efficiency(lengths: &[usize], batch_size: usize) -> f64 {
    let batch_size = batch_size.max(1);
    let tokens: usize = lengths.iter().sum();
    let slots: usize = lengths
        .chunks(batch_size)
        .map(|b| b.len() * b.iter().copied().max().unwrap_or(0))
        .sum();
    if slots == 0 {
        0.0
    } else {
        tokens as f64 / slots as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_efficiency_of_known_batches() {
        // Batches [2, 4] and [4]: 10 tokens in 8 + 4 slots.
        let e = padded_efficiency(&[2, 4, 4], 2);
        assert!((e - 10.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn plan_stats_count_tokens_and_slots() {
        let s = PackStats::of_plan(&[vec![0, 1], vec![2]], &[3, 4, 5], 8);
        assert_eq!((s.rows, s.samples, s.tokens, s.slots), (2, 3, 12, 16));
        assert!((s.efficiency() - 0.75).abs() < 1e-12);
    }
}
