//! The asynchronous rollout engine and the run ledger.
//!
//! - [`engine`]: [`RolloutEngine`] runs a [`npd_core::traits::Generator`] on
//!   its own thread: prompts in, rollouts tagged with the `policy_version`
//!   that wrote them out, through a bounded queue (backpressure), with
//!   weights swapped only between batches (sparse refresh) and admission
//!   control for the staleness bound.
//! - [`ledger`]: [`Ledger`] accounts for every prompt (open, trained,
//!   filtered with the reason, failed with the reason), refuses to close a
//!   prompt twice, and is saved with checkpoints.

pub mod config;
pub mod engine;
pub mod ledger;

pub use config::{RolloutConfig, Schedule};
pub use engine::{Delivery, EngineConfig, EngineStats, RolloutEngine};
pub use ledger::{Ledger, LedgerCounts, LedgerError, PromptState};
