//! Outcomes of sample selection, shared by filters, ledgers and reports.

use serde::{Deserialize, Serialize};

/// Why a sample was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// The response has no tokens.
    EmptyResponse,
    /// Per-token arrays of the sample have different lengths.
    LengthMismatch,
    /// A log-prob or the resulting score is NaN or infinite.
    NonFiniteScore,
    /// Score below the lower percentile of the pool.
    BelowBand,
    /// Score above the upper percentile of the pool.
    AboveBand,
    /// Score below the absolute minimum.
    BelowThreshold,
    /// Score above the absolute maximum.
    AboveThreshold,
    /// IFD above the ceiling of the classic IFD rule (the prompt does not help).
    IfdAboveCeiling,
    /// Not among the top fraction kept by the classic IFD rule.
    OutsideTopFraction,
    /// The response hit the length limit and `sampling.truncated` says to
    /// drop such responses.
    Truncated,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 10] = [
        DropReason::EmptyResponse,
        DropReason::LengthMismatch,
        DropReason::NonFiniteScore,
        DropReason::BelowBand,
        DropReason::AboveBand,
        DropReason::BelowThreshold,
        DropReason::AboveThreshold,
        DropReason::IfdAboveCeiling,
        DropReason::OutsideTopFraction,
        DropReason::Truncated,
    ];

    /// Stable kebab-case name used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::EmptyResponse => "empty-response",
            DropReason::LengthMismatch => "length-mismatch",
            DropReason::NonFiniteScore => "non-finite-score",
            DropReason::BelowBand => "below-band",
            DropReason::AboveBand => "above-band",
            DropReason::BelowThreshold => "below-threshold",
            DropReason::AboveThreshold => "above-threshold",
            DropReason::IfdAboveCeiling => "ifd-above-ceiling",
            DropReason::OutsideTopFraction => "outside-top-fraction",
            DropReason::Truncated => "truncated",
        }
    }

    /// Whether the sample was malformed (as opposed to well-formed but
    /// outside the selection).
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            DropReason::EmptyResponse | DropReason::LengthMismatch | DropReason::NonFiniteScore
        )
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A filter's decision on one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Train on it.
    Keep,
    /// Leave it out, for this reason.
    Drop(DropReason),
}

impl Verdict {
    /// Whether the sample is kept.
    pub fn is_keep(self) -> bool {
        matches!(self, Verdict::Keep)
    }
}
