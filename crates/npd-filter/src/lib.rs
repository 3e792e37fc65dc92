//! Δ-IFD scoring and sample selection, from per-token log-probs.
//!
//! - [`ifd`](mod@ifd): mean token losses and the IFD score of one response under one
//!   model, in either convention (loss ratio, perplexity ratio).
//! - [`score`]: the filter score of a sample (Δ-IFD as difference or ratio,
//!   or the staleness form), per sample or for a whole pool in a flat
//!   column layout with rayon.
//! - [`policy`]: selection rules over a pool (percentile band, absolute
//!   thresholds, the classic IFD rule) with deterministic tie-breaking.
//! - [`running`]: percentile thresholds over a sliding window of recent
//!   scores, so an asynchronous pipeline needs no global pass.
//! - [`report`]: keep rate, per-reason counts and score histograms.
//! - [`filter`]: [`DeltaIfdFilter`], the configured filter behind the
//!   [`npd_core::traits::SampleFilter`] trait.
//!
//! Malformed samples (empty response, misaligned arrays, non-finite
//! log-probs or scores) are dropped with a counted reason, never passed
//! through and never a panic.

pub mod config;
pub mod filter;
pub mod ifd;
pub mod policy;
pub mod report;
pub mod running;
pub mod score;

pub use config::{DeltaForm, FilterConfig, IfdConvention};
pub use filter::DeltaIfdFilter;
pub use ifd::{IfdTerms, ifd};
pub use policy::Policy;
pub use report::{FilterReport, Histogram};
pub use running::RunningBand;
pub use score::{DeltaScore, LogProbColumns};
