//! Packing a whole pool of samples at once.

use crate::config::OversizePolicy;
use npd_core::{Error, PackedRow, Result, TokenId, TrainSample};

use crate::plan::best_fit_decreasing;
use crate::row::RowLayout;

/// How samples are packed.
#[derive(Debug, Clone, PartialEq)]
pub struct PackOptions {
    /// Tokens per row.
    pub capacity: usize,
    /// Token id written into padding.
    pub pad_id: TokenId,
    /// What to do with samples longer than `capacity`.
    pub oversize: OversizePolicy,
}

impl PackOptions {
    /// Rows of `capacity` tokens, pad id 0, oversize samples rejected.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            pad_id: 0,
            oversize: OversizePolicy::Reject,
        }
    }

    /// From the `[pack]` section of a run configuration.
    pub fn from_config(config: &crate::config::PackConfig, pad_id: TokenId) -> Self {
        Self {
            capacity: config.capacity,
            pad_id,
            oversize: config.oversize,
        }
    }
}

/// Validates a sample and applies the oversize policy to it.
pub fn prepare(sample: &mut TrainSample, options: &PackOptions) -> Result<()> {
    sample.validate()?;
    if sample.tokens.len() > options.capacity {
        match options.oversize {
            OversizePolicy::Reject => {
                return Err(Error::invalid(
                    sample.id.to_string(),
                    format!(
                        "{} tokens do not fit a packed row of {} (pack.oversize = \"reject\"; \
                         \"truncate\" cuts the response instead)",
                        sample.tokens.len(),
                        options.capacity
                    ),
                ));
            }
            OversizePolicy::Truncate => sample.truncate(options.capacity)?,
        }
    }
    Ok(())
}

/// Remembers the side arrays of the first sample (top-k targets and their
/// `k`, policy targets) and checks the others against it: one row needs
/// every sample to carry the same ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopKShape {
    seen: Option<(Option<usize>, bool)>,
}

impl TopKShape {
    pub(crate) fn check(&mut self, sample: &TrainSample) -> Result<Option<usize>> {
        let k = sample.topk.as_ref().map(|t| t.k);
        let policy = sample.policy.is_some();
        match self.seen {
            None => {
                self.seen = Some((k, policy));
                Ok(k)
            }
            Some((first, p)) if first == k && p == policy => Ok(k),
            Some((first, p)) if first == k => Err(Error::invalid(
                sample.id.to_string(),
                format!(
                    "policy targets {}, but earlier samples {}; one packing run needs one shape",
                    if policy { "present" } else { "absent" },
                    if p { "carry them" } else { "do not" }
                ),
            )),
            Some((first, _)) => Err(Error::invalid(
                sample.id.to_string(),
                format!(
                    "top-k targets {}, but earlier samples {}; one packing run needs one shape",
                    describe(k),
                    describe(first)
                ),
            )),
        }
    }

    pub(crate) fn k(&self) -> Option<usize> {
        self.seen.and_then(|(k, _)| k)
    }

    pub(crate) fn policy(&self) -> bool {
        self.seen.is_some_and(|(_, p)| p)
    }
}

fn describe(k: Option<usize>) -> String {
    match k {
        Some(k) => format!("with k = {k}"),
        None => "absent".to_string(),
    }
}

/// Packs a pool with best-fit decreasing into rows of `options.capacity`.
///
/// Every sample is validated first; an invalid or (under
/// [`OversizePolicy::Reject`]) oversize sample fails the call with an error
/// naming it. Rows come out in the order best-fit opened them.
pub fn pack_pool(mut samples: Vec<TrainSample>, options: &PackOptions) -> Result<Vec<PackedRow>> {
    if options.capacity == 0 {
        return Err(Error::invalid("pack.capacity", "must be at least 1"));
    }
    let mut shape = TopKShape::default();
    for sample in &mut samples {
        prepare(sample, options)?;
        shape.check(sample)?;
    }
    let lengths: Vec<usize> = samples.iter().map(|s| s.tokens.len()).collect();
    let plan = best_fit_decreasing(&lengths, options.capacity);
    let layout = RowLayout {
        capacity: options.capacity,
        pad_id: options.pad_id,
        topk: shape.k(),
        policy: shape.policy(),
    };
    Ok(plan
        .iter()
        .map(|members| layout.build(members.iter().map(|&i| &samples[i])))
        .collect())
}
