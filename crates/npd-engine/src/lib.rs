//! Inference servers as npd pipeline stages.
//!
//! NPD's speed-up comes from decoupling generation from training: student
//! rollouts and teacher scores come from inference engines on their own
//! devices while the trainer runs apart. This crate drives vLLM's
//! OpenAI-compatible server behind the pipeline's traits, with no libtorch:
//!
//! - [`VllmGenerator`]: a [`Generator`](npd_core::traits::Generator) whose
//!   rollouts come from `POST /v1/completions` (prompts as token ids, the
//!   sampled tokens' log-probs, many requests in flight, bounded), and
//!   whose weight refresh reloads a published checkpoint between a pause
//!   and a resume and then **verifies** it: the server must reproduce the
//!   trainer's log-probs on a probe sequence, or the run stops.
//! - [`VllmScorer`]: a [`Scorer`](npd_core::traits::Scorer) from
//!   `prompt_logprobs` (top-k with tail mass, and the response-alone pass).
//! - [`Launched`]: servers npd starts itself as child processes.
//! - [`EngineConfig`]: the `[engine]` section.
//!
//! Every HTTP call has a timeout; failures are retried a bounded number of
//! times (a generation request carries its own seed, so a retry samples
//! the same response) and then reported with the URL.

pub mod client;
pub mod config;
pub mod generator;
pub mod group;
pub mod launch;
pub mod pool;
pub mod scorer;
pub mod vllm;

pub use client::Client;
pub use config::{EngineConfig, EngineKind, Role, ServedDtype, TeacherCheck, Urls};
pub use generator::{Probe, ProbeCheck, ProbeLog, Published, VllmGenerator};
pub use group::ServerGroup;
pub use launch::{LaunchSpec, Launched};
pub use scorer::VllmScorer;
pub use vllm::Vllm;
