//! Sequence packing: variable-length samples into fixed-capacity rows.
//!
//! - [`plan`] decides which samples share a row, from lengths alone:
//!   [`plan::best_fit_decreasing`] in O(n + C·n/64) time for the whole pool,
//!   and [`plan::first_fit`] for comparison.
//! - [`row`] lays the chosen samples into a [`PackedRow`]: token ids,
//!   positions restarting at 0 per segment, segment ids, the loss mask (prompt
//!   tokens and each segment's first token are never targets) and every
//!   per-token side array (teacher top-k, weights) aligned with its tokens.
//! - [`pack`] does both for a pool of samples ([`pack_pool`]); [`stream`]
//!   packs samples that arrive over time ([`StreamingPacker`]).
//! - [`stats`] measures packing efficiency, and the efficiency padded
//!   batches would have had.
//!
//! ```
//! use npd_core::{SampleId, TrainSample};
//! use npd_pack::{PackOptions, pack_pool};
//!
//! let sample = |id, len, prompt_len| TrainSample {
//!     id: SampleId(id),
//!     tokens: (0..len).collect(),
//!     prompt_len,
//!     weights: None,
//!     topk: None,
//!     policy: None,
//! };
//! let pool = vec![sample(0, 5, 2), sample(1, 3, 1), sample(2, 8, 4)];
//! let rows = pack_pool(pool, &PackOptions::new(8)).unwrap();
//! assert_eq!(rows.len(), 2);
//! assert_eq!(rows[0].used() + rows[1].used(), 16);
//! ```

pub mod config;
pub mod pack;
pub mod plan;
pub mod row;
pub mod stats;
pub mod stream;

pub use config::{BaselineRows, OversizePolicy, PackConfig};
pub use npd_core::PackedRow;
pub use pack::{PackOptions, pack_pool, prepare};
pub use stats::PackStats;
pub use stream::StreamingPacker;
