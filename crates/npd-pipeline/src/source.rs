//! Where NPD's rollouts come from, by schedule: the rollout engine's thread
//! (disaggregated) or the loop's own thread, in turn with training
//! (colocated).

use std::collections::VecDeque;

use npd_core::traits::Generator;
use npd_core::{PolicyVersion, Prompt, SamplingParams};
use npd_rollout::{Delivery, EngineConfig, RolloutEngine};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// A generator and the prompts waiting for it.
pub(crate) enum Source<G: Generator> {
    /// The generator runs on the engine's thread, overlapping scoring and
    /// training (stages on their own devices or servers).
    Engine(RolloutEngine<G::Weights>),
    /// The loop generates a pool when it needs one, with every thread, then
    /// scores and trains (stages sharing one device or one set of cores).
    Inline {
        generator: G,
        queue: VecDeque<Prompt>,
        sampling: SamplingParams,
    },
}

impl<G> Source<G>
where
    G: Generator + Send + 'static,
    G::Weights: Send + 'static,
{
    /// The engine, started with `generator` at `version`.
    pub fn engine(s: &Settings, generator: G, version: PolicyVersion, seed: u64) -> Self {
        let reuse = s.reuse.max(1);
        let per_version = s.refresh_every as usize * s.samples_per_step / reuse;
        Source::Engine(RolloutEngine::spawn(
            generator,
            version,
            EngineConfig {
                batch_size: s.pool_size.min(s.samples_per_step).max(1),
                queue_capacity: s.queue_capacity.max(1),
                max_ahead: (s.max_lag.max(1) as usize * per_version).max(s.pool_size),
                sampling: s.sampling_for(seed),
            },
        ))
    }

    /// Generation on the loop's thread.
    pub fn inline(s: &Settings, generator: G, seed: u64) -> Self {
        Source::Inline {
            generator,
            queue: VecDeque::new(),
            sampling: s.sampling_for(seed),
        }
    }

    /// Queues prompts.
    pub fn submit(&mut self, prompts: Vec<Prompt>) {
        match self {
            Source::Engine(e) => e.submit(prompts),
            Source::Inline { queue, .. } => queue.extend(prompts),
        }
    }

    /// Prompts queued and not yet being generated.
    pub fn pending(&self) -> usize {
        match self {
            Source::Engine(e) => e.pending(),
            Source::Inline { queue, .. } => queue.len(),
        }
    }

    /// Up to `n` finished rollouts (or failures): waited for from the
    /// engine, or generated now. Fewer only when nothing more can come.
    ///
    /// A generator that cannot go on (a weight load that failed, a server
    /// that stopped answering) is an error: its prompts stay undelivered
    /// rather than being closed as failed.
    pub fn take(&mut self, n: usize, clock: &mut Clock) -> Result<Vec<Delivery>> {
        match self {
            Source::Engine(e) => {
                let pool = clock.time("wait for rollouts", || {
                    let mut pool = Vec::with_capacity(n);
                    while pool.len() < n {
                        match e.recv() {
                            Some(d) => pool.push(d),
                            None => break,
                        }
                    }
                    pool
                });
                match e.fatal() {
                    Some(reason) => Err(Error::Generator { reason }),
                    None => Ok(pool),
                }
            }
            Source::Inline {
                generator,
                queue,
                sampling,
            } => {
                let prompts: Vec<Prompt> = queue.drain(..n.min(queue.len())).collect();
                if prompts.is_empty() {
                    return Ok(Vec::new());
                }
                match clock.time("generate", || generator.generate(&prompts, sampling)) {
                    Ok(rollouts) => Ok(rollouts.into_iter().map(Delivery::Rollout).collect()),
                    Err(e @ npd_core::Error::Backend { .. }) => Err(Error::Generator {
                        reason: e.to_string(),
                    }),
                    Err(e) => {
                        let reason = e.to_string();
                        Ok((prompts.into_iter())
                            .map(|p| Delivery::Failed {
                                prompt: p.id,
                                reason: reason.clone(),
                            })
                            .collect())
                    }
                }
            }
        }
    }

    /// New weights for the generator: the engine swaps them in between
    /// batches; inline generation loads them now.
    pub fn publish(&mut self, weights: G::Weights, version: PolicyVersion) -> Result<()> {
        match self {
            Source::Engine(e) => e.publish(weights, version),
            Source::Inline { generator, .. } => generator.load(weights, version)?,
        }
        Ok(())
    }

    /// The generator's busy time when it runs on the engine's thread.
    pub fn busy_s(&self) -> Option<f64> {
        match self {
            Source::Engine(e) => Some(e.busy().as_secs_f64()),
            Source::Inline { .. } => None,
        }
    }

    /// The part of [`Source::busy_s`] the engine's thread spent loading
    /// published weights.
    pub fn loading_s(&self) -> Option<f64> {
        match self {
            Source::Engine(e) => Some(e.loading().as_secs_f64()),
            Source::Inline { .. } => None,
        }
    }

    /// Stops the engine; returns the failures it still held.
    pub fn finish(self) -> Vec<Delivery> {
        match self {
            Source::Engine(e) => e.shutdown().1,
            Source::Inline { .. } => Vec::new(),
        }
    }
}
