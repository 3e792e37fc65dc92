//! The engine's guarantees, with a small deterministic generator.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use npd_core::traits::Generator;
use npd_core::{
    Error, FinishReason, PolicyVersion, Prompt, PromptId, Result, Rollout, SamplingParams,
};
use npd_rollout::{Delivery, EngineConfig, Ledger, PromptState, RolloutEngine};

/// Answers each prompt with its tokens reversed, tagged with the loaded
/// version; fails batches containing a listed prompt id.
struct Reverser {
    version: PolicyVersion,
    delay: Duration,
    fail: HashSet<u64>,
    /// Batches containing these prompts fail as a backend would (a server
    /// that stopped answering).
    down: HashSet<u64>,
    /// Loading these versions fails (a refresh that was not verified).
    bad_versions: HashSet<PolicyVersion>,
    generated: Arc<AtomicUsize>,
    batches: Arc<Mutex<Vec<(PolicyVersion, usize)>>>,
}

impl Reverser {
    fn new(delay_ms: u64) -> Self {
        Self {
            version: 0,
            delay: Duration::from_millis(delay_ms),
            fail: HashSet::new(),
            down: HashSet::new(),
            bad_versions: HashSet::new(),
            generated: Arc::default(),
            batches: Arc::default(),
        }
    }
}

impl Generator for Reverser {
    type Weights = PolicyVersion;

    fn version(&self) -> PolicyVersion {
        self.version
    }

    fn load(&mut self, weights: PolicyVersion, version: PolicyVersion) -> Result<()> {
        assert_eq!(weights, version);
        if self.bad_versions.contains(&version) {
            return Err(Error::invalid(
                format!("version {version}"),
                "probe mismatch",
            ));
        }
        self.version = version;
        Ok(())
    }

    fn generate(&mut self, prompts: &[Prompt], _: &SamplingParams) -> Result<Vec<Rollout>> {
        std::thread::sleep(self.delay);
        if prompts.iter().any(|p| self.down.contains(&p.id.0)) {
            return Err(Error::Backend {
                context: "POST http://server/v1/completions".into(),
                cause: "cannot reach the server".into(),
            });
        }
        if let Some(p) = prompts.iter().find(|p| self.fail.contains(&p.id.0)) {
            return Err(Error::invalid(
                p.id.to_string(),
                "refused by the test generator",
            ));
        }
        self.generated.fetch_add(prompts.len(), Ordering::SeqCst);
        self.batches
            .lock()
            .unwrap()
            .push((self.version, prompts.len()));
        Ok(prompts
            .iter()
            .map(|p| Rollout {
                prompt_id: p.id,
                prompt: p.tokens.clone(),
                response: p.tokens.iter().rev().copied().collect(),
                response_logprobs: vec![-1.0; p.tokens.len()],
                response_alone_logprobs: vec![],
                policy_version: self.version,
                finish: FinishReason::Stop,
            })
            .collect())
    }
}

fn prompts(n: u64) -> Vec<Prompt> {
    (0..n)
        .map(|i| Prompt {
            id: PromptId(i),
            tokens: vec![1, i as u32 + 2, 7],
        })
        .collect()
}

fn config(batch: usize, queue: usize, ahead: usize) -> EngineConfig {
    EngineConfig {
        batch_size: batch,
        queue_capacity: queue,
        max_ahead: ahead,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            max_new_tokens: 4,
            stop_ids: vec![],
            seed: 0,
        },
    }
}

#[test]
fn every_prompt_is_delivered_or_failed_exactly_once() {
    let mut g = Reverser::new(0);
    g.fail = [13, 40].into_iter().collect();
    let engine = RolloutEngine::spawn(g, 0, config(4, 8, 64));
    engine.submit(prompts(100));
    engine.close();
    let mut ledger = Ledger::new();
    for p in prompts(100) {
        ledger.open(p.id).unwrap();
    }
    while let Some(d) = engine.recv() {
        match d {
            Delivery::Rollout(r) => {
                assert_eq!(
                    r.response,
                    r.prompt.iter().rev().copied().collect::<Vec<_>>()
                );
                ledger.close(r.prompt_id, PromptState::Trained).unwrap();
            }
            Delivery::Failed { prompt, reason } => {
                assert!(reason.contains("refused"), "{reason}");
                ledger.close(prompt, PromptState::Failed(reason)).unwrap();
            }
        }
    }
    let c = ledger.counts();
    assert!(c.adds_up());
    assert_eq!(c.open, 0);
    // The two failing prompts take their batches of 4 with them.
    assert_eq!(c.failed.values().sum::<usize>(), 8);
    assert_eq!(c.trained, 92);
}

#[test]
fn weights_swap_only_between_batches_and_versions_never_go_back() {
    let g = Reverser::new(2);
    let batches = Arc::clone(&g.batches);
    let engine = RolloutEngine::spawn(g, 0, config(5, 4, 1000));
    engine.submit(prompts(200));
    engine.close();
    let mut seen = Vec::new();
    let mut n = 0;
    while let Some(Delivery::Rollout(r)) = engine.recv() {
        n += 1;
        if n % 20 == 0 {
            engine.publish(n as u64, n as u64);
        }
        seen.push(r.policy_version);
    }
    assert_eq!(n, 200);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "versions went back");
    assert!(seen.last().unwrap() > &0, "no swap happened");
    // Each batch was written by one version: deliveries come in runs of
    // whole batches per version.
    let mut per_version: BTreeMap<PolicyVersion, usize> = BTreeMap::new();
    for (v, len) in batches.lock().unwrap().iter() {
        *per_version.entry(*v).or_default() += len;
    }
    let mut delivered: BTreeMap<PolicyVersion, usize> = BTreeMap::new();
    for v in &seen {
        *delivered.entry(*v).or_default() += 1;
    }
    assert_eq!(per_version, delivered);
    assert!(engine.stats().swaps >= 1);
}

#[test]
fn a_full_queue_pauses_generation() {
    let g = Reverser::new(0);
    let generated = Arc::clone(&g.generated);
    let (batch, queue) = (2, 3);
    let engine = RolloutEngine::spawn(g, 0, config(batch, queue, 1000));
    engine.submit(prompts(50));
    std::thread::sleep(Duration::from_millis(100));
    // Nothing received: at most the queue plus one blocked batch is made.
    let made = generated.load(Ordering::SeqCst);
    assert!(
        made <= queue + batch,
        "generated {made} with nobody consuming"
    );
    for received in 1..=10 {
        engine.recv().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let made = generated.load(Ordering::SeqCst);
        assert!(
            made <= received + queue + batch,
            "{made} generated after {received} received"
        );
    }
}

/// A trainer taking `per_step` rollouts per optimizer step and publishing
/// every `k` steps: with `max_ahead = max_lag · k · per_step`, no
/// rollout is trained on more than `max_lag` refreshes after its weights.
#[test]
fn admission_control_bounds_staleness() {
    let (k, per_step, max_lag) = (3u64, 4usize, 1u64);
    let g = Reverser::new(0);
    let ahead = max_lag as usize * k as usize * per_step;
    let engine = RolloutEngine::spawn(g, 0, config(4, 64, ahead));
    engine.submit(prompts(400));
    engine.close();
    let (mut step, mut published, mut worst) = (0u64, 0u64, 0u64);
    let mut received = 0;
    'train: loop {
        for _ in 0..per_step {
            let Some(Delivery::Rollout(r)) = engine.recv() else {
                break 'train;
            };
            received += 1;
            let lag = (published - r.policy_version) / k;
            worst = worst.max(lag);
        }
        step += 1;
        if step % k == 0 {
            published = step;
            engine.publish(step, step);
            // Give the generator time to run ahead as far as it is allowed.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(received, 400);
    assert!(
        worst <= max_lag,
        "a rollout landed {worst} refreshes behind"
    );
    assert!(
        engine.stats().admission_waits > 0,
        "the bound never had to act"
    );
}

#[test]
fn shutdown_returns_every_undelivered_prompt() {
    let g = Reverser::new(1);
    let engine = RolloutEngine::spawn(g, 0, config(3, 4, 1000));
    engine.submit(prompts(60));
    let mut got = HashSet::new();
    for _ in 0..10 {
        match engine.recv().unwrap() {
            Delivery::Rollout(r) => assert!(got.insert(r.prompt_id)),
            other => panic!("{other:?}"),
        }
    }
    let (rest, failures) = engine.shutdown();
    assert!(failures.is_empty());
    let rest: HashSet<PromptId> = rest.into_iter().map(|p| p.id).collect();
    assert_eq!(rest.len() + got.len(), 60, "lost or duplicated prompts");
    assert!(rest.is_disjoint(&got));
}

#[test]
fn a_failed_weight_load_stops_the_engine_and_keeps_its_batch() {
    let mut g = Reverser::new(0);
    g.bad_versions = [2].into_iter().collect();
    let engine = RolloutEngine::spawn(g, 0, config(4, 64, 1000));
    engine.submit(prompts(8));
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(engine.recv().unwrap());
    }
    assert!(engine.fatal().is_none());
    engine.publish(2, 2);
    engine.submit(prompts(16).into_iter().skip(8));
    // No rollout is written with weights other than those published.
    assert!(engine.recv().is_none());
    let why = engine.fatal().expect("the engine says why it stopped");
    assert!(
        why.contains("version 2") && why.contains("probe mismatch"),
        "{why}"
    );
    let (undelivered, failures) = engine.shutdown();
    assert!(failures.is_empty(), "nothing is closed as failed");
    assert_eq!(
        undelivered.iter().map(|p| p.id.0).collect::<Vec<_>>(),
        (8..16).collect::<Vec<_>>(),
        "the batch it held and the queue come back for a resume"
    );
}

#[test]
fn a_backend_failure_stops_the_engine_but_a_bad_prompt_does_not() {
    let mut g = Reverser::new(0);
    g.fail = [1].into_iter().collect();
    g.down = [9].into_iter().collect();
    let engine = RolloutEngine::spawn(g, 0, config(4, 64, 1000));
    engine.submit(prompts(16));
    let mut delivered = Vec::new();
    while let Some(d) = engine.recv() {
        delivered.push(d);
    }
    // Prompts 0-3 fail (a refused prompt), 4-7 are written, then the
    // server goes down at the batch of 8-11.
    let failed = delivered
        .iter()
        .filter(|d| matches!(d, Delivery::Failed { .. }))
        .count();
    assert_eq!((delivered.len(), failed), (8, 4));
    let why = engine.fatal().unwrap();
    assert!(why.contains("cannot reach"), "{why}");
    let (undelivered, _) = engine.shutdown();
    assert_eq!(
        undelivered.iter().map(|p| p.id.0).collect::<Vec<_>>(),
        (8..16).collect::<Vec<_>>()
    );
}
