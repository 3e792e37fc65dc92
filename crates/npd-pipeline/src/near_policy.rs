//! Near-Policy Distillation: a student snapshot, refreshed every K optimizer
//! steps, writes rollouts; the teacher scores pools of them, Δ-IFD filters
//! them, and the kept samples are reused and packed into rows. Where the
//! snapshot generates follows the [`Schedule`]: on the rollout engine's
//! thread, overlapping scoring and training, staleness bounded by admission
//! control, when the stages run apart (disaggregated: inference servers, a
//! device each); or on the loop's own thread in turn with training, each
//! phase with every thread, when they share the cores or the device
//! (colocated).
//!
//! One step of the loop, in named parts: `fill_pool` (take finished
//! rollouts from the engine, or generate a pool), `score_and_filter` (teacher targets,
//! Δ-IFD), `pack` (queue the kept samples), `take_step`
//! (exactly a step's worth of samples, packed into rows), training, `settle` (the ledger) and
//! `publish` (sparse refresh).

use std::collections::{BTreeMap, VecDeque};

use npd_core::config::Truncated;
use npd_core::events::{Event, LedgerEvent, RefreshEvent};
use npd_core::traits::{
    Evaluator, FilterInput, Generator, Learner, Persist, SampleFilter, ScoreOptions, ScoreRequest,
    Scorer, StepStats,
};
use npd_core::{
    DropReason, FinishReason, Method, PackedRow, PolicyVersion, Prompt, PromptId, ResponseLogProbs,
    Rollout, SampleId, TrainSample, Verdict,
};
use npd_filter::{DeltaIfdFilter, FilterReport};
use npd_pack::{PackOptions, pack_pool};
use npd_rollout::{Delivery, Ledger, PromptState, Schedule};

use crate::checkpoints::SavedNpd;
use crate::clock::Clock;
use crate::context::Loop;
use crate::error::{Error, Result};
use crate::outcome::RunEnd;
use crate::run::{Next, Run, StepExtra, sample, visit};
use crate::settings::Settings;
use crate::source::Source;

/// Steps' worth of rollouts scored in a row without keeping one sample
/// after which NPD gives up with [`Error::Starved`].
pub const STARVED_STEPS: usize = 20;

/// NPD over a learner, a generator that runs on its own thread, and a
/// teacher.
pub struct NearPolicy<'s, L, G, T, E: ?Sized> {
    learner: &'s mut L,
    generator: G,
    teacher: &'s mut T,
    evaluator: &'s mut E,
}

impl<'s, L, G, T, E> NearPolicy<'s, L, G, T, E>
where
    L: Learner + Persist,
    L::Weights: Send + 'static,
    G: Generator<Weights = L::Weights> + Send + 'static,
    T: Scorer,
    E: Evaluator<L> + ?Sized,
{
    /// NPD of `learner`; `generator` writes rollouts (on the engine's
    /// thread or the loop's, as the schedule says) and is loaded with the
    /// learner's weights every K steps. When the
    /// Δ-IFD filter is on, the generator must fill each rollout's
    /// `response_alone_logprobs` (the student's IFD denominator, after the
    /// settings' `alone_prefix`).
    pub fn new(learner: &'s mut L, generator: G, teacher: &'s mut T, evaluator: &'s mut E) -> Self {
        Self {
            learner,
            generator,
            teacher,
            evaluator,
        }
    }

    /// Runs the method with `seed` (or continues it from its checkpoint).
    pub fn run(self, cx: &mut Loop<'_>, seed: u64) -> Result<RunEnd> {
        let Self {
            learner,
            mut generator,
            teacher,
            evaluator,
        } = self;
        let (mut run, saved) = Run::start(cx, Method::NearPolicy, seed, learner, evaluator)?;
        // The generating snapshot starts from the learner's weights (the
        // warm start, or the checkpoint of a resumed run).
        generator.load(learner.publish()?, learner.version())?;
        let mut npd = Npd::start(cx, seed, generator, learner.version(), saved)?;
        let s = cx.settings;
        let mut step = run.first_step;
        while step < s.steps {
            // Rollouts scored in a row without a kept sample: a pipeline
            // that keeps nothing (a student whose log-probs are all NaN, a
            // band that excludes everything) ends with an error, not a hang.
            let mut dry = 0;
            while npd.samples_ready() < s.samples_per_step {
                let rollouts = npd.fill_pool(&mut run.clock, step)?;
                let n = rollouts.len();
                let kept = npd.score_and_filter(&mut run.clock, teacher, rollouts)?;
                run.truncated += std::mem::take(&mut npd.truncated);
                dry = if kept.is_empty() { dry + n } else { 0 };
                if dry >= STARVED_STEPS * s.samples_per_step.max(1) {
                    let counts = npd.ledger.counts();
                    return Err(Error::Starved {
                        step,
                        rollouts: dry,
                        filtered: format!("{:?}", counts.filtered),
                        failed: format!("{:?}", counts.failed),
                    });
                }
                npd.pack(kept);
            }
            let batch = npd.take_step(&mut run.clock)?;
            let samples = batch.iter().map(|r| r.segments.len()).sum();
            let stats = run.clock.time("train", || learner.step(&batch))?;
            step += 1;
            let trained = npd.settle(&batch, learner.version(), &stats)?;
            if step % s.refresh_every == 0 {
                let weights = run.clock.time(PUBLISH, || learner.publish())?;
                // Inline generation reloads now; the engine's thread reloads
                // before its next batch (timed there, see GENERATOR_RELOAD).
                run.clock
                    .time(RELOAD, || npd.publish(weights, learner.version()))?;
                run.refreshes += 1;
                cx.emit(Event::Refresh(RefreshEvent {
                    method: Method::NearPolicy,
                    seed,
                    step,
                    version: learner.version(),
                }));
            }
            let filtered = std::mem::take(&mut npd.filtered_ids);
            let failed = std::mem::take(&mut npd.failed_ids);
            let extra = StepExtra {
                samples: Some(samples),
                keep_rate: Some(npd.filter.total_report().keep_rate()),
                records_trained: Some(npd.records(&trained)),
                records_filtered: Some(npd.records(&filtered)),
                records_failed: Some(npd.records(&failed)),
                prompts_trained: Some(trained),
                prompts_filtered: Some(filtered),
                prompts_failed: Some(failed),
                rl: None,
            };
            if let Some(busy) = npd.source.busy_s() {
                // The generator's own thread (or server) was busy this long:
                // a role of the per-role report.
                run.clock.add(GENERATOR_BUSY, busy - npd.busy_seen);
                npd.busy_seen = busy;
            }
            if let Some(loading) = npd.source.loading_s() {
                run.clock.add(GENERATOR_RELOAD, loading - npd.loading_seen);
                npd.loading_seen = loading;
            }
            // Returning drops the engine, which stops its thread.
            let next =
                run.after_step(cx, learner, evaluator, step, &stats, &batch, extra, || {
                    Some(npd.saved())
                })?;
            if let Next::Stop(end) = next {
                return Ok(end);
            }
        }
        let (ledger, filter, staleness) = npd.finish()?;
        let counts = ledger.counts();
        cx.emit(Event::Ledger(LedgerEvent {
            method: Method::NearPolicy,
            seed,
            step,
            total: counts.total,
            trained: counts.trained,
            filtered: counts.filtered.values().sum(),
            failed: counts.failed.values().sum(),
            open: counts.open,
        }));
        let mut out = run.finish();
        out.schedule = Some(s.running_schedule());
        out.filter = filter;
        out.staleness = staleness;
        out.ledger = Some(counts);
        Ok(RunEnd::Finished(Box::new(out)))
    }
}

/// The stage under which a disaggregated run records its generator's busy
/// time (generation and weight loads on the engine's thread or server).
pub const GENERATOR_BUSY: &str = "generator busy";

/// The stage under which a disaggregated run records the part of its
/// generator's busy time spent loading refreshed weights (on the
/// generator's thread or server, overlapping the loop).
pub const GENERATOR_RELOAD: &str = "generator reload";

/// The stage of writing the learner's weights for the generator (every
/// method that refreshes a generator).
pub const PUBLISH: &str = "publish";

/// The stage of the generator loading published weights while the loop
/// waits (on-policy, RL, colocated NPD).
pub const RELOAD: &str = "reload";

/// NPD's state between steps.
struct Npd<'c, G: Generator> {
    settings: &'c Settings,
    prompts: &'c [Prompt],
    order: Vec<usize>,
    source: Source<G>,
    filter: DeltaIfdFilter,
    ledger: Ledger,
    pack: PackOptions,
    next_request: u64,
    staleness: BTreeMap<u64, usize>,
    /// Kept samples waiting for a step, oldest first.
    ready: VecDeque<TrainSample>,
    /// Samples kept from the previous pool, waiting for their next use.
    reused: Vec<TrainSample>,
    /// The version that wrote each kept sample not yet trained on.
    versions: BTreeMap<u64, PolicyVersion>,
    /// Prompts closed without training since the last step's event.
    filtered_ids: Vec<u64>,
    failed_ids: Vec<u64>,
    /// The generator's busy time already added to the run clock.
    busy_seen: f64,
    /// The generator's weight-loading time already added to the run clock.
    loading_seen: f64,
    /// Responses that hit the length limit since the run took the count.
    truncated: u64,
}

impl<'c, G> Npd<'c, G>
where
    G: Generator + Send + 'static,
    G::Weights: Send + 'static,
{
    fn start(
        cx: &Loop<'c>,
        seed: u64,
        generator: G,
        version: PolicyVersion,
        saved: Option<SavedNpd>,
    ) -> Result<Self> {
        let s = cx.settings;
        let source = match s.running_schedule() {
            Schedule::Colocated => Source::inline(s, generator, seed),
            _ => Source::engine(s, generator, version, seed),
        };
        let mut npd = Self {
            settings: s,
            prompts: cx.prompts,
            order: s.order(cx.prompts.len(), seed),
            source,
            filter: DeltaIfdFilter::from_config(&s.filter),
            ledger: Ledger::new(),
            pack: PackOptions::from_config(&s.pack, s.pad_id),
            next_request: 0,
            staleness: BTreeMap::new(),
            ready: VecDeque::new(),
            reused: Vec::new(),
            versions: BTreeMap::new(),
            filtered_ids: Vec::new(),
            failed_ids: Vec::new(),
            busy_seen: 0.0,
            loading_seen: 0.0,
            truncated: 0,
        };
        for (id, reason) in cx.rejected {
            npd.ledger.reject(*id, reason.clone());
        }
        if let Some(saved) = saved {
            // Work in flight at the checkpoint goes first.
            npd.ledger = saved.ledger;
            npd.next_request = saved.next_request;
            npd.staleness = saved.staleness;
            npd.filter.resume_from(saved.filter);
            let open = npd.ledger.open_prompts();
            if !open.is_empty() {
                let prompts: Vec<Prompt> = open.into_iter().map(|id| npd.prompt(id)).collect();
                npd.source.submit(prompts);
            }
        }
        npd.submit(s.pool_size * 4)?;
        Ok(npd)
    }

    /// The dataset record id of each prompt id.
    fn records(&self, ids: &[u64]) -> Vec<u64> {
        ids.iter()
            .map(|&r| {
                self.prompts[self.order[(r % self.prompts.len() as u64) as usize]]
                    .id
                    .0
            })
            .collect()
    }

    fn prompt(&self, id: PromptId) -> Prompt {
        visit(self.prompts, &self.order, id.0)
    }

    /// Opens `n` new prompts in the ledger and hands them to the engine.
    fn submit(&mut self, n: usize) -> Result<()> {
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let id = PromptId(self.next_request);
            self.next_request += 1;
            self.ledger.open(id)?;
            batch.push(self.prompt(id));
        }
        self.source.submit(batch);
        Ok(())
    }

    /// Kept samples waiting for a step.
    fn samples_ready(&self) -> usize {
        self.ready.len()
    }

    /// Takes a pool of finished rollouts from the engine (keeping it fed
    /// with prompts); empty responses and failures are closed in the
    /// ledger here.
    fn fill_pool(&mut self, clock: &mut Clock, step: u64) -> Result<Vec<Rollout>> {
        let s = self.settings;
        if self.source.pending() < s.pool_size * 2 {
            self.submit(s.pool_size * 2)?;
        }
        let pool = self.source.take(s.pool_size, clock)?;
        let mut rollouts = Vec::new();
        let mut last_failure = None;
        let delivered = pool.len();
        for d in pool {
            match d {
                Delivery::Rollout(r) if !r.response.is_empty() => rollouts.push(r),
                Delivery::Rollout(r) => {
                    let state = PromptState::Filtered(DropReason::EmptyResponse);
                    self.ledger.close(r.prompt_id, state)?;
                    self.filtered_ids.push(r.prompt_id.0);
                }
                Delivery::Failed { prompt, reason } => {
                    last_failure = Some(reason.clone());
                    self.ledger.close(prompt, PromptState::Failed(reason))?;
                    self.failed_ids.push(prompt.0);
                }
            }
        }
        if rollouts.is_empty() {
            let cause = match last_failure {
                Some(reason) => format!("generation failed for every prompt of the pool: {reason}"),
                None if delivered > 0 => {
                    format!("all {delivered} responses of the pool were empty")
                }
                None => "the generator delivered nothing".to_string(),
            };
            return Err(Error::EngineStopped { step, cause });
        }
        Ok(rollouts)
    }

    /// Teacher targets for the pool and the Δ-IFD decisions; returns the
    /// kept samples and closes the dropped prompts in the ledger.
    fn score_and_filter<T: Scorer + ?Sized>(
        &mut self,
        clock: &mut Clock,
        teacher: &mut T,
        rollouts: Vec<Rollout>,
    ) -> Result<Vec<TrainSample>> {
        let s = self.settings;
        let cut = |r: &Rollout| r.finish == FinishReason::Length;
        self.truncated += rollouts.iter().filter(|r| cut(r)).count() as u64;
        let rollouts = if s.truncated == Truncated::Drop {
            let (dropped, whole): (Vec<Rollout>, Vec<Rollout>) =
                rollouts.into_iter().partition(cut);
            for r in dropped {
                let state = PromptState::Filtered(DropReason::Truncated);
                self.ledger.close(r.prompt_id, state)?;
                self.filtered_ids.push(r.prompt_id.0);
            }
            whole
        } else {
            rollouts
        };
        if rollouts.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<Vec<u32>> = rollouts
            .iter()
            .map(|r| [r.prompt.as_slice(), &r.response].concat())
            .collect();
        let requests: Vec<ScoreRequest<'_>> = seqs
            .iter()
            .zip(&rollouts)
            .map(|(t, r)| ScoreRequest {
                tokens: t,
                prompt_len: r.prompt.len(),
            })
            .collect();
        let options = ScoreOptions {
            topk: Some(s.topk),
            alone_prefix: (s.filter.enabled && s.filter.form.needs_alone())
                .then(|| s.alone_prefix.clone()),
        };
        let scores = clock.time("teacher", || teacher.score(&requests, &options))?;
        let keep: Vec<bool> = if s.filter.enabled {
            let inputs: Vec<FilterInput> = rollouts
                .iter()
                .zip(&scores)
                .map(|(r, t)| FilterInput {
                    id: SampleId(r.prompt_id.0),
                    teacher: t.logprobs.clone(),
                    student: ResponseLogProbs {
                        conditioned: r.response_logprobs.clone(),
                        alone: r.response_alone_logprobs.clone(),
                    },
                    snapshot: None,
                })
                .collect();
            let decisions = clock.time("filter", || self.filter.select(&inputs))?;
            let mut keep = Vec::with_capacity(decisions.len());
            for (d, r) in decisions.iter().zip(&rollouts) {
                if let Verdict::Drop(reason) = d.verdict {
                    self.ledger
                        .close(r.prompt_id, PromptState::Filtered(reason))?;
                    self.filtered_ids.push(r.prompt_id.0);
                }
                keep.push(d.verdict.is_keep());
            }
            keep
        } else {
            vec![true; rollouts.len()]
        };
        let mut kept = Vec::new();
        for ((r, t), k) in rollouts.iter().zip(scores).zip(keep) {
            if k {
                self.versions.insert(r.prompt_id.0, r.policy_version);
                kept.push(sample(r.prompt_id.0, &r.prompt, &r.response, t.topk));
            }
        }
        Ok(kept)
    }

    /// Queues the kept samples for training, after the previous pool's
    /// (their next use, when samples are reused).
    fn pack(&mut self, fresh: Vec<TrainSample>) {
        let reuse = self.settings.reuse.max(1);
        let again = std::mem::take(&mut self.reused);
        self.ready.extend(again);
        self.ready.extend(fresh.iter().cloned());
        if reuse > 1 {
            self.reused = fresh;
        }
    }

    /// Exactly a step's worth of samples (the configured number, as every
    /// method trains on), oldest first, packed into rows by best-fit
    /// decreasing.
    fn take_step(&mut self, clock: &mut Clock) -> Result<Vec<PackedRow>> {
        let n = self.settings.samples_per_step.min(self.ready.len());
        let samples: Vec<TrainSample> = self.ready.drain(..n).collect();
        Ok(clock.time("pack", || pack_pool(samples, &self.pack))?)
    }

    /// Closes the prompts first used in `batch` (the learner now at
    /// `version`): as trained, with their staleness recorded, when the
    /// step updated the weights; as failed when it was skipped for a
    /// non-finite loss (nothing was learned from them). Returns the ids
    /// trained on.
    fn settle(
        &mut self,
        batch: &[PackedRow],
        version: PolicyVersion,
        stats: &StepStats,
    ) -> Result<Vec<u64>> {
        let mut first_use = Vec::new();
        for row in batch {
            for seg in &row.segments {
                let id = seg.sample_id.0;
                let Some(v) = self.versions.remove(&id) else {
                    continue;
                };
                if stats.skipped {
                    let reason = "the step that took it was skipped for a non-finite loss";
                    self.ledger
                        .close(PromptId(id), PromptState::Failed(reason.into()))?;
                    self.failed_ids.push(id);
                } else {
                    *self
                        .staleness
                        .entry(version.saturating_sub(v + 1))
                        .or_default() += 1;
                    self.ledger.close(PromptId(id), PromptState::Trained)?;
                    first_use.push(id);
                }
            }
        }
        Ok(first_use)
    }

    /// Hands new weights to the generator.
    fn publish(&mut self, weights: G::Weights, version: PolicyVersion) -> Result<()> {
        self.source.publish(weights, version)
    }

    /// The state a checkpoint carries.
    fn saved(&self) -> SavedNpd {
        SavedNpd {
            next_request: self.next_request,
            open_prompts: self.ledger.open_prompts(),
            ledger: self.ledger.clone(),
            staleness: self.staleness.clone(),
            filter: self.filter.total_report().clone(),
        }
    }

    /// Stops the engine and closes the prompts it failed on; returns the
    /// ledger, the filter's account and the staleness histogram.
    fn finish(self) -> Result<(Ledger, Option<FilterReport>, BTreeMap<u64, usize>)> {
        let Self {
            settings,
            source,
            mut ledger,
            filter,
            staleness,
            ..
        } = self;
        let failures = source.finish();
        for f in failures {
            if let Delivery::Failed { prompt, reason } = f {
                ledger.close(prompt, PromptState::Failed(reason))?;
            }
        }
        let report = settings
            .filter
            .enabled
            .then(|| filter.total_report().clone());
        Ok((ledger, report, staleness))
    }
}
