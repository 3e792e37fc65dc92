//! The asynchronous rollout engine (planned).
//!
//! This crate will hold the engine that turns prompts into rollouts over the
//! [`npd_core::traits::Generator`] trait: rollout workers that own a student
//! snapshot, a bounded queue for backpressure, sparse weight refresh every K
//! optimizer steps, admission control for the staleness bound, and the
//! ledger that accounts for every prompt. It has no public API yet.
