//! The configured Δ-IFD filter.

use rayon::prelude::*;

use crate::config::FilterConfig;
use npd_core::traits::{Decision, FilterInput, SampleFilter};
use npd_core::{DropReason, Error, Result};

use crate::policy::Policy;
use crate::report::FilterReport;
use crate::running::RunningBand;
use crate::score::{DeltaScore, LogProbColumns};

/// Scores each sample (Δ-IFD or staleness) and keeps a percentile band of
/// the recent scores, as set by the `[filter]` configuration section. With
/// filtering disabled it still drops malformed samples.
#[derive(Debug, Clone)]
pub struct DeltaIfdFilter {
    score: DeltaScore,
    band: Option<RunningBand>,
    last: FilterReport,
    total: FilterReport,
}

impl DeltaIfdFilter {
    /// A filter from the `[filter]` section.
    pub fn from_config(config: &FilterConfig) -> Self {
        Self {
            score: DeltaScore {
                convention: config.convention,
                form: config.form,
            },
            band: config.enabled.then(|| {
                RunningBand::new(
                    config.lower_percentile,
                    config.upper_percentile,
                    config.window,
                )
            }),
            last: FilterReport::default(),
            total: FilterReport::default(),
        }
    }

    /// The account of the last pool.
    pub fn last_report(&self) -> &FilterReport {
        &self.last
    }

    /// The account of every pool so far.
    pub fn total_report(&self) -> &FilterReport {
        &self.total
    }

    /// Continues the account of a resumed run from `total` (the band's
    /// window of recent scores starts empty again).
    pub fn resume_from(&mut self, total: FilterReport) {
        self.total = total;
    }

    /// Filters a pool held in flat columns.
    pub fn select_columns(&mut self, pool: &LogProbColumns) -> Result<Vec<Decision>> {
        let scores = self.score.score_pool(pool)?;
        Ok(self.decide(&pool.ids, scores))
    }

    fn decide(
        &mut self,
        ids: &[npd_core::SampleId],
        scores: Vec<Result<f64, DropReason>>,
    ) -> Vec<Decision> {
        let verdicts = match &mut self.band {
            Some(band) => band.select(&scores),
            None => Policy::KeepAll.apply(ids, &scores),
        };
        let decisions: Vec<Decision> = ids
            .iter()
            .zip(scores)
            .zip(verdicts)
            .map(|((&id, score), verdict)| Decision {
                id,
                score: score.ok(),
                verdict,
            })
            .collect();
        let thresholds = self.band.as_ref().and_then(RunningBand::thresholds);
        self.last = FilterReport::of(&decisions, thresholds);
        self.total.merge(&self.last);
        decisions
    }
}

impl SampleFilter for DeltaIfdFilter {
    fn select(&mut self, pool: &[FilterInput]) -> Result<Vec<Decision>> {
        if self.score.needs_snapshot()
            && let Some(input) = pool.iter().find(|i| i.snapshot.is_none())
        {
            return Err(Error::invalid(
                input.id.to_string(),
                "filter.form = \"staleness\" needs the generating snapshot's log-probs",
            ));
        }
        let scores: Vec<_> = pool
            .par_iter()
            .with_min_len(256)
            .map(|input| self.score.score_input(input))
            .collect();
        let ids: Vec<_> = pool.iter().map(|i| i.id).collect();
        Ok(self.decide(&ids, scores))
    }
}
