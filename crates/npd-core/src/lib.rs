//! Domain types, configuration and stage traits shared by every npd crate.
//!
//! `npd-core` has no heavy dependencies: the pure-Rust crates (`npd-filter`,
//! `npd-pack`, `npd-rollout`) and the libtorch-backed `npd-train` all speak in
//! the types defined here, and plug into each other through the traits in
//! [`traits`].
//!
//! Conventions used throughout:
//! - A sequence is `prompt ++ response` as token ids ([`TokenId`]).
//! - Per-token side arrays of a sample (sampled-token log-probs, teacher top-k,
//!   loss weights) cover the *response* tokens, index `i` describing response
//!   token `i` as a prediction target.
//! - In a [`PackedRow`], every per-token array is indexed like the row's
//!   tokens: entry `t` describes token `t` as the target predicted from
//!   position `t - 1` of the same segment.

pub mod answer;
pub mod batch;
pub mod config;
pub mod error;
pub mod events;
pub mod float;
pub mod fs;
pub mod ids;
pub mod method;
pub mod reward;
pub mod sample;
pub mod sampled;
pub mod select;
pub mod shuffle;
pub mod traits;

pub use batch::{PAD_SEGMENT, PackedRow, RowPolicy, RowTopK, Segment};
pub use error::{ConfigError, Error, Result};
pub use events::{Event, Observer};
pub use ids::{PolicyVersion, PromptId, SampleId, TokenId};
pub use method::Method;
pub use sample::{
    FinishReason, PolicyTargets, Prompt, ResponseLogProbs, Rollout, SamplingParams, TopKTargets,
    TrainSample,
};
pub use select::{DropReason, Verdict};
