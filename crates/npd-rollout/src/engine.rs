//! The asynchronous rollout engine.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use npd_core::traits::Generator;
use npd_core::{PolicyVersion, Prompt, PromptId, Rollout, SamplingParams};

/// How the engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// Finished rollouts buffered for the consumer; the generator waits when
    /// the buffer is full (backpressure).
    pub queue_capacity: usize,
    /// Admission control: a batch is started only if the rollouts generated
    /// or in flight but not yet taken by the consumer, plus the batch, stay
    /// within this bound. Set it to what the trainer consumes in `max_lag`
    /// refresh intervals (`max_lag · K · rollouts per step`) and no rollout
    /// is consumed more than `max_lag` refreshes after the weights that
    /// wrote it were published. A batch is always admitted when nothing is
    /// ahead, so the engine never stalls.
    pub max_ahead: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
}

/// What the engine delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// A finished rollout.
    Rollout(Rollout),
    /// Generation failed for this prompt.
    Failed {
        /// The prompt.
        prompt: PromptId,
        /// The generator's error.
        reason: String,
    },
}

/// Counters of the engine's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Generation batches run.
    pub batches: u64,
    /// Weight swaps performed.
    pub swaps: u64,
    /// Times the generator waited for admission (staleness bound).
    pub admission_waits: u64,
}

struct State<W> {
    pending: VecDeque<Prompt>,
    in_flight: Vec<Prompt>,
    /// Generated or in flight, not yet received by the consumer.
    ahead: usize,
    next_weights: Option<(W, PolicyVersion)>,
    /// Version the generator has loaded.
    loaded: PolicyVersion,
    closed: bool,
    shutdown: bool,
    stats: EngineStats,
    /// Time the generator spent generating and loading weights.
    busy: Duration,
    /// The part of `busy` spent loading weights.
    loading: Duration,
    /// Why the generator thread stopped early, when it did.
    fatal: Option<String>,
}

struct Shared<W> {
    state: Mutex<State<W>>,
    wake: Condvar,
}

impl<W> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panic in the other thread must not hide the original error.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs a [`Generator`] on its own thread, turning submitted prompts into
/// rollouts tagged with the version of the weights that wrote them.
///
/// - **Sparse refresh**: [`RolloutEngine::publish`] hands new weights over;
///   the generator swaps to the newest ones between batches (a safe point),
///   so every rollout of a batch comes from one version.
/// - **Backpressure**: finished rollouts wait in a bounded queue; a full
///   queue pauses generation.
/// - **Staleness bound**: admission control (see
///   [`EngineConfig::max_ahead`]) keeps the generator from starting work
///   that would land too late; finished work is never thrown away.
pub struct RolloutEngine<W> {
    shared: Arc<Shared<W>>,
    rx: Option<Receiver<Delivery>>,
    worker: Option<JoinHandle<()>>,
}

impl<W: Send + 'static> RolloutEngine<W> {
    /// Starts the generator thread. `version` is the version of the weights
    /// the generator holds now.
    pub fn spawn<G>(generator: G, version: PolicyVersion, config: EngineConfig) -> Self
    where
        G: Generator<Weights = W> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                in_flight: Vec::new(),
                ahead: 0,
                next_weights: None,
                loaded: version,
                closed: false,
                shutdown: false,
                stats: EngineStats::default(),
                busy: Duration::ZERO,
                loading: Duration::ZERO,
                fatal: None,
            }),
            wake: Condvar::new(),
        });
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("npd-rollout".into())
            .spawn(move || run(generator, worker_shared, tx, config))
            .expect("spawning the rollout thread");
        Self {
            shared,
            rx: Some(rx),
            worker: Some(worker),
        }
    }

    /// Queues prompts for generation, in order.
    pub fn submit(&self, prompts: impl IntoIterator<Item = Prompt>) {
        let mut s = self.shared.lock();
        s.pending.extend(prompts);
        drop(s);
        self.shared.wake.notify_all();
    }

    /// Declares that no more prompts will be submitted: once the queue is
    /// drained, [`RolloutEngine::recv`] returns `None`.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// Hands new weights to the generator; it loads the newest published
    /// weights before its next batch.
    pub fn publish(&self, weights: W, version: PolicyVersion) {
        self.shared.lock().next_weights = Some((weights, version));
        self.shared.wake.notify_all();
    }

    /// Version the generator has loaded.
    pub fn loaded_version(&self) -> PolicyVersion {
        self.shared.lock().loaded
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.shared.lock().stats
    }

    /// Time the generator has spent generating and loading weights (its
    /// busy time; the rest of the run it waited for prompts or admission).
    pub fn busy(&self) -> Duration {
        self.shared.lock().busy
    }

    /// The part of [`RolloutEngine::busy`] spent loading published
    /// weights.
    pub fn loading(&self) -> Duration {
        self.shared.lock().loading
    }

    /// Why the generator thread stopped before it was asked to, when it
    /// did: a failed weight load (the generator must never write rollouts
    /// with weights other than those published), or a backend failure
    /// (a server that stopped answering). The batch it held stays
    /// undelivered, so [`RolloutEngine::shutdown`] returns its prompts.
    pub fn fatal(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// Prompts waiting to be generated.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Next delivery, waiting for it; `None` once the engine is closed and
    /// everything was delivered (or the generator thread ended).
    pub fn recv(&self) -> Option<Delivery> {
        let item = self.rx.as_ref()?.recv().ok();
        self.taken(item.is_some());
        item
    }

    /// Next delivery if one comes within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Delivery, RecvTimeoutError> {
        let rx = self.rx.as_ref().ok_or(RecvTimeoutError::Disconnected)?;
        let item = rx.recv_timeout(timeout);
        self.taken(item.is_ok());
        item
    }

    fn taken(&self, got: bool) {
        if got {
            let mut s = self.shared.lock();
            s.ahead = s.ahead.saturating_sub(1);
            drop(s);
            self.shared.wake.notify_all();
        }
    }

    /// Stops the engine and returns every prompt whose rollout was not
    /// delivered (waiting, in flight, or finished but not received), so a
    /// resumed run can submit them again; and the failures not yet received.
    pub fn shutdown(mut self) -> (Vec<Prompt>, Vec<Delivery>) {
        self.stop()
    }

    fn stop(&mut self) -> (Vec<Prompt>, Vec<Delivery>) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        let mut prompts = Vec::new();
        let mut failures = Vec::new();
        let mut drain = |rx: &Receiver<Delivery>| {
            while let Ok(d) = rx.try_recv() {
                match d {
                    Delivery::Rollout(r) => prompts.push(Prompt {
                        id: r.prompt_id,
                        tokens: r.prompt,
                    }),
                    failed => failures.push(failed),
                }
            }
        };
        if let (Some(rx), Some(worker)) = (self.rx.as_ref(), self.worker.as_ref()) {
            // Keep draining so a generator blocked on a full queue can finish.
            while !worker.is_finished() {
                drain(rx);
                std::thread::sleep(Duration::from_millis(1));
            }
            drain(rx);
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.rx = None;
        let mut s = self.shared.lock();
        prompts.append(&mut s.in_flight);
        prompts.extend(s.pending.drain(..));
        let mut seen = std::collections::HashSet::new();
        prompts.retain(|p| seen.insert(p.id));
        prompts.sort_by_key(|p| p.id);
        (prompts, failures)
    }
}

impl<W> Drop for RolloutEngine<W> {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn run<G: Generator>(
    mut generator: G,
    shared: Arc<Shared<G::Weights>>,
    tx: SyncSender<Delivery>,
    config: EngineConfig,
) {
    let batch_size = config.batch_size.max(1);
    loop {
        let (weights, batch) = {
            let mut s = shared.lock();
            let mut waited = false;
            loop {
                if s.shutdown || (s.closed && s.pending.is_empty()) {
                    return;
                }
                let n = batch_size.min(s.pending.len());
                // Always admit when nothing is ahead, so the engine progresses.
                if n > 0 && (s.ahead == 0 || s.ahead + n <= config.max_ahead) {
                    break;
                }
                if n > 0 && !waited {
                    s.stats.admission_waits += 1;
                    waited = true;
                }
                s = shared.wake.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            let n = batch_size.min(s.pending.len());
            let batch: Vec<Prompt> = s.pending.drain(..n).collect();
            s.in_flight = batch.clone();
            s.ahead += batch.len();
            s.stats.batches += 1;
            (s.next_weights.take(), batch)
        };
        if let Some((w, v)) = weights {
            let started = Instant::now();
            let loaded = generator.load(w, v);
            let mut s = shared.lock();
            s.busy += started.elapsed();
            s.loading += started.elapsed();
            match loaded {
                Ok(()) => {
                    s.loaded = v;
                    s.stats.swaps += 1;
                }
                Err(e) => {
                    s.fatal = Some(format!("loading the weights of version {v}: {e}"));
                    return;
                }
            }
        }
        let started = Instant::now();
        let generated = generator.generate(&batch, &config.sampling);
        shared.lock().busy += started.elapsed();
        match generated {
            Ok(rollouts) if rollouts.len() == batch.len() => {
                for r in rollouts {
                    if tx.send(Delivery::Rollout(r)).is_err() {
                        return;
                    }
                }
            }
            Ok(rollouts) => fail(
                &tx,
                &shared,
                &batch,
                &format!(
                    "generator returned {} rollouts for {} prompts",
                    rollouts.len(),
                    batch.len()
                ),
            ),
            Err(e @ npd_core::Error::Backend { .. }) => {
                shared.lock().fatal = Some(e.to_string());
                return;
            }
            Err(e) => fail(&tx, &shared, &batch, &e.to_string()),
        }
        shared.lock().in_flight.clear();
        shared.wake.notify_all();
    }
}

fn fail<W>(tx: &SyncSender<Delivery>, shared: &Shared<W>, batch: &[Prompt], reason: &str) {
    for p in batch {
        if tx
            .send(Delivery::Failed {
                prompt: p.id,
                reason: reason.to_string(),
            })
            .is_err()
        {
            return;
        }
    }
    shared.lock().in_flight.clear();
}
