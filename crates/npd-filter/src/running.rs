//! Percentile thresholds over a sliding window of recent scores.

use std::collections::VecDeque;

use npd_core::{DropReason, Verdict};

/// A percentile band whose thresholds come from the last `window` scores
/// seen, so pools arriving one after another (asynchronous rollouts) are
/// filtered without a pass over all data. Each pool's scores join the window
/// before its thresholds are read, so a single pool that fits the window is
/// cut at its own percentiles.
///
/// Scores equal to a threshold are kept; non-finite scores never enter the
/// window.
#[derive(Debug, Clone)]
pub struct RunningBand {
    lower: f64,
    upper: f64,
    window: usize,
    history: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl RunningBand {
    /// A band `[lower, upper)` over the last `window` (>= 1) scores.
    pub fn new(lower: f64, upper: f64, window: usize) -> Self {
        Self {
            lower,
            upper,
            window: window.max(1),
            history: VecDeque::new(),
            sorted: Vec::new(),
        }
    }

    /// Adds finite scores to the window, evicting the oldest beyond its size.
    pub fn observe(&mut self, scores: impl IntoIterator<Item = f64>) {
        for s in scores.into_iter().filter(|s| s.is_finite()) {
            if self.history.len() == self.window {
                let old = self.history.pop_front().expect("window >= 1");
                let at = self.sorted.partition_point(|x| x.total_cmp(&old).is_lt());
                self.sorted.remove(at);
            }
            self.history.push_back(s);
            let at = self.sorted.partition_point(|x| x.total_cmp(&s).is_le());
            self.sorted.insert(at, s);
        }
    }

    /// Scores in the window.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether no score has been seen.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `(lowest kept, highest kept)` for the current window: the scores at
    /// ranks `round(lower · m)` and `round(upper · m) - 1` of the `m`
    /// scores. `None` before any score is seen.
    pub fn thresholds(&self) -> Option<(f64, f64)> {
        let m = self.sorted.len();
        if m == 0 {
            return None;
        }
        let rank = |f: f64| ((f * m as f64).round() as usize).min(m);
        let (lo, hi) = (rank(self.lower), rank(self.upper));
        let low = if lo == 0 {
            f64::NEG_INFINITY
        } else if lo >= m {
            f64::INFINITY
        } else {
            self.sorted[lo]
        };
        let high = if hi == 0 {
            f64::NEG_INFINITY
        } else if hi >= m {
            f64::INFINITY
        } else {
            self.sorted[hi - 1]
        };
        Some((low, high))
    }

    /// Observes a pool's scores, then judges each against the updated
    /// thresholds.
    pub fn select(&mut self, scores: &[Result<f64, DropReason>]) -> Vec<Verdict> {
        self.observe(scores.iter().filter_map(|s| s.ok()));
        let (low, high) = self
            .thresholds()
            .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        scores
            .iter()
            .map(|s| match *s {
                Err(reason) => Verdict::Drop(reason),
                Ok(v) if v < low => Verdict::Drop(DropReason::BelowBand),
                Ok(v) if v > high => Verdict::Drop(DropReason::AboveBand),
                Ok(_) => Verdict::Keep,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_evicts_oldest() {
        let mut b = RunningBand::new(0.0, 0.5, 4);
        b.observe([10.0, 20.0, 30.0, 40.0, 1.0, 2.0]);
        assert_eq!(b.len(), 4);
        // Window now 30, 40, 1, 2: ranks [0, 2) keep up to 2.
        assert_eq!(b.thresholds(), Some((f64::NEG_INFINITY, 2.0)));
    }

    #[test]
    fn later_pools_use_earlier_history() {
        let mut b = RunningBand::new(0.0, 0.9, 1000);
        let first: Vec<_> = (0..100).map(|i| Ok(i as f64)).collect();
        b.select(&first);
        // 101 scores in the window; upper rank round(90.9) = 91 → keep <= 90.
        let v = b.select(&[Ok(95.0)]);
        assert_eq!(v, vec![Verdict::Drop(DropReason::AboveBand)]);
        let v = b.select(&[Ok(50.0), Err(DropReason::NonFiniteScore)]);
        assert_eq!(
            v,
            vec![Verdict::Keep, Verdict::Drop(DropReason::NonFiniteScore)]
        );
    }
}
