//! The three loops end to end on test doubles for every stage: the ledger
//! accounts for every prompt, staleness stays within its bound, NPD
//! refreshes every K steps, and a stopped run resumes where it stopped.

mod doubles;

use std::sync::atomic::{AtomicBool, Ordering};

use doubles::{EchoGenerator, FixedTeacher, HashLearner, StepsEval, prompts};
use npd_core::config::{SamplingConfig, TrainConfig};
use npd_core::events::Event;
use npd_core::{Method, Prompt, PromptId};
use npd_filter::FilterConfig;
use npd_pack::{BaselineRows, PackConfig};
use npd_pipeline::{
    Checkpoints, Comparison, Loop, NearPolicy, OnPolicy, RunEnd, Settings, Sft, Stages,
};
use npd_rollout::{RolloutConfig, Schedule};

const STEPS: u64 = 12;

fn settings(filter: bool) -> Settings {
    let train = TrainConfig {
        steps: STEPS,
        rows_per_step: 6,
        top_k: 2,
        ..TrainConfig::default()
    };
    let rollout = RolloutConfig {
        refresh_every: 3,
        max_lag: 2,
        batch_size: 4,
        queue_capacity: 8,
        ..RolloutConfig::default()
    };
    let pack = PackConfig {
        capacity: 32,
        ..PackConfig::default()
    };
    let filter = FilterConfig {
        enabled: filter,
        upper_percentile: 0.8,
        ..FilterConfig::default()
    };
    Settings::new(&train, &rollout, &SamplingConfig::default(), &filter, &pack).with_tokens(
        vec![2],
        vec![1, 9],
        0,
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("npd-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Events of a run, and a flag the observer raises after step `stop_at`.
struct Recorder<'a> {
    events: Vec<Event>,
    stop_at: Option<u64>,
    stop: &'a AtomicBool,
}

impl Recorder<'_> {
    fn steps(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Step(s) => Some(s.step),
                _ => None,
            })
            .collect()
    }
}

impl npd_core::events::Observer for Recorder<'_> {
    fn on_event(&mut self, event: &Event) {
        if let (Event::Step(s), Some(at)) = (event, self.stop_at)
            && s.step == at
        {
            self.stop.store(true, Ordering::SeqCst);
        }
        self.events.push(event.clone());
    }
}

#[test]
fn npd_accounts_for_every_prompt_bounds_staleness_and_refreshes_every_k_steps() {
    let cases = [
        (false, Schedule::Disaggregated),
        (true, Schedule::Disaggregated),
        (false, Schedule::Colocated),
        (true, Schedule::Colocated),
    ];
    for (filter, schedule) in cases {
        let mut s = settings(filter);
        s.schedule = schedule;
        // Dataset ids that are not positions, so that the records named in
        // the events must come from the dataset.
        let mut data = prompts(40);
        for p in &mut data {
            p.id = PromptId(1000 + p.id.0);
        }
        let stop = AtomicBool::new(false);
        let mut rec = Recorder {
            events: Vec::new(),
            stop_at: None,
            stop: &stop,
        };
        let mut learner = HashLearner::default();
        let mut cx = Loop::new(&s, &data).with_observer(&mut rec);
        let end = NearPolicy::new(
            &mut learner,
            EchoGenerator::default(),
            &mut FixedTeacher::default(),
            &mut StepsEval,
        )
        .run(&mut cx, 7)
        .unwrap();
        let out = end.finished().expect("finished");
        assert_eq!(out.schedule, Some(schedule));
        assert_eq!(learner.steps, STEPS);
        // Every step trained exactly the configured number of samples.
        assert!(
            learner
                .log
                .iter()
                .all(|ids| ids.len() == s.samples_per_step)
        );
        let ledger = out.ledger.clone().unwrap();
        assert!(ledger.adds_up(), "{ledger:?}");
        // Every prompt a step reported as trained is counted once.
        let trained: Vec<u64> = rec
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Step(st) => st.prompts_trained.clone(),
                _ => None,
            })
            .flatten()
            .collect();
        let order = npd_core::shuffle::seeded_permutation(data.len(), 7);
        for e in &rec.events {
            if let Event::Step(st) = e {
                let visits = st.prompts_trained.as_ref().unwrap();
                let records = st.records_trained.as_ref().unwrap();
                let want: Vec<u64> = visits
                    .iter()
                    .map(|&v| 1000 + order[(v % 40) as usize] as u64)
                    .collect();
                assert_eq!(records, &want);
            }
        }
        let mut unique = trained.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), trained.len(), "a prompt trained twice");
        assert_eq!(ledger.trained, trained.len());
        if filter {
            let f = out.filter.as_ref().unwrap();
            assert!(f.kept < f.total, "the filter dropped nothing: {f:?}");
        }
        // Staleness in optimizer steps stays within max_lag * K.
        let bound = s.staleness_bound();
        let worst = out.staleness.keys().max().copied().unwrap_or(0);
        assert!(worst <= bound, "staleness {worst} over {bound}");
        assert_eq!(out.staleness.values().sum::<usize>(), ledger.trained);
        // A refresh after every K-th step, with the learner's version.
        let refreshes: Vec<(u64, u64)> = rec
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Refresh(r) => Some((r.step, r.version)),
                _ => None,
            })
            .collect();
        let k = s.refresh_every;
        assert_eq!(
            refreshes,
            (1..=STEPS / k).map(|i| (i * k, i * k)).collect::<Vec<_>>()
        );
        assert_eq!(rec.steps(), (1..=STEPS).collect::<Vec<_>>());
        assert!(matches!(rec.events.last(), Some(Event::Ledger(_))));
    }
}

/// Runs `method` through a comparison of the doubles, stopping after step
/// `stop_at` when given; returns the end, the events and the learner's
/// sample log as seen through the generator-free learner log.
struct Doubles;

impl Stages for Doubles {
    type Weights = (u64, u64);
    type Learner = HashLearner;
    type Generator = EchoGenerator;
    type Teacher = FixedTeacher;
    type Writer = EchoGenerator;
    type Evaluator = StepsEval;
    type Reference = FixedTeacher;

    fn learner(&self, _: Method, _: u64) -> npd_pipeline::Result<HashLearner> {
        Ok(HashLearner::default())
    }
    fn rl_learner(
        &self,
        _: Method,
        _: u64,
        start: npd_pipeline::RlStart<'_>,
    ) -> npd_pipeline::Result<HashLearner> {
        let mut l = HashLearner::default();
        if let npd_pipeline::RlStart::Checkpoint(dir) | npd_pipeline::RlStart::Model(dir) = start {
            // The start's weights with fresh counters.
            npd_core::traits::Persist::restore_state(&mut l, dir)?;
            l.steps = 0;
        }
        Ok(l)
    }
    fn reference(&self, _: &HashLearner) -> npd_pipeline::Result<FixedTeacher> {
        Ok(FixedTeacher::default())
    }
    fn reward(&self) -> npd_pipeline::Result<Box<npd_pipeline::grpo::RewardFn<'_>>> {
        Ok(Box::new(doubles::odd_length))
    }
    fn generator(&self, _: Method) -> npd_pipeline::Result<EchoGenerator> {
        Ok(EchoGenerator::default())
    }
    fn teacher(&self) -> npd_pipeline::Result<FixedTeacher> {
        Ok(FixedTeacher::default())
    }
    fn writer(&self) -> npd_pipeline::Result<EchoGenerator> {
        Ok(EchoGenerator::default())
    }
    fn evaluator(&self) -> npd_pipeline::Result<StepsEval> {
        Ok(StepsEval)
    }
}

fn run_with_stop(
    c: &Comparison<'_, Doubles>,
    method: Method,
    stop_at: Option<u64>,
) -> (RunEnd, Vec<Event>) {
    let stop = AtomicBool::new(false);
    let mut rec = Recorder {
        events: Vec::new(),
        stop_at,
        stop: &stop,
    };
    let end = c.run(method, 3, &mut rec, &stop).unwrap();
    (end, rec.events)
}

fn step_losses(events: &[Event]) -> Vec<(u64, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some((s.step, s.tokens)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stopped_run_resumes_where_it_stopped_for_every_method() {
    let data: Vec<Prompt> = prompts(30);
    // Every state file is written and read back for every method, with the
    // optional parts present (the filter's account, with an open lower
    // threshold of -inf) and absent (no filter).
    for (method, schedule, filter) in [
        (Method::Sft, Schedule::Auto, true),
        (Method::OnPolicy, Schedule::Auto, true),
        (Method::NearPolicy, Schedule::Auto, true),
        (Method::NearPolicy, Schedule::Disaggregated, true),
        (Method::NearPolicy, Schedule::Colocated, false),
    ] {
        let mut s = settings(filter);
        s.schedule = schedule;
        let root = scratch(method.slug());
        let checkpoints = Checkpoints::new(&root, 5);
        let c = Comparison::new(&Doubles, &s, &data).with_checkpoints(&checkpoints);
        // Uninterrupted reference, in a folder of its own.
        let ref_root = scratch(&format!("{}-ref", method.slug()));
        let ref_ckpt = Checkpoints::new(&ref_root, 0);
        let reference = Comparison::new(&Doubles, &s, &data).with_checkpoints(&ref_ckpt);
        let (ref_end, ref_events) = run_with_stop(&reference, method, None);
        let ref_out = ref_end.finished().unwrap();

        let (end, first) = run_with_stop(&c, method, Some(7));
        let RunEnd::Stopped {
            step, checkpoint, ..
        } = end
        else {
            panic!("{method}: not stopped");
        };
        assert_eq!(step, 7, "{method}");
        let checkpoint = checkpoint.expect("a checkpoint on stop");
        assert!(checkpoint.ends_with("step-00000007"), "{checkpoint:?}");
        assert_eq!(step_losses(&first).last().unwrap().0, 7);

        let (end, second) = run_with_stop(&c, method, None);
        let out = end.finished().expect("finished after resume");
        assert_eq!(out.resumed_at, vec![7], "{method}");
        // The resumed run takes steps 8.. and never repeats one.
        let steps: Vec<u64> = step_losses(&second).iter().map(|s| s.0).collect();
        assert_eq!(steps, (8..=STEPS).collect::<Vec<_>>(), "{method}");
        if method != Method::NearPolicy {
            // The synchronous methods resume exactly: the same work per step
            // as the uninterrupted run.
            let all: Vec<(u64, usize)> = [step_losses(&first), step_losses(&second)].concat();
            assert_eq!(all, step_losses(&ref_events), "{method}");
            assert_eq!(out.trained_tokens, ref_out.trained_tokens, "{method}");
        } else {
            let ledger = out.ledger.unwrap();
            assert!(ledger.adds_up(), "{ledger:?}");
            // The doubles' backend shares one set of cores: auto is colocated.
            let expected = match schedule {
                Schedule::Auto => Schedule::Colocated,
                other => other,
            };
            assert_eq!(out.schedule, Some(expected));
        }
        // A finished run is not run again: its outcome is read back.
        let (again, events) = run_with_stop(&c, method, None);
        assert!(events.is_empty());
        assert_eq!(again.finished().unwrap().accuracy, out.accuracy);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&ref_root);
    }
}

#[test]
fn the_configured_seeds_take_effect() {
    let data = prompts(20);
    let run = |s: &Settings, method: Method| -> HashLearner {
        let mut learner = HashLearner::default();
        let mut cx = Loop::new(s, &data);
        match method {
            Method::Sft => {
                let responses: Vec<Vec<u32>> =
                    (0..data.len()).map(|i| vec![3 + i as u32, 2]).collect();
                Sft::new(&mut learner, &mut StepsEval, &responses)
                    .run(&mut cx, 0)
                    .unwrap();
            }
            _ => {
                OnPolicy::new(
                    &mut learner,
                    &mut EchoGenerator::default(),
                    &mut FixedTeacher::default(),
                    &mut StepsEval,
                )
                .run(&mut cx, 0)
                .unwrap();
            }
        }
        learner
    };
    let base = settings(false);
    // train.seed changes the prompt order.
    let mut other = base.clone();
    other.order_seed = 5;
    // (The learner's hash covers the tokens it trained on, in order.)
    assert_ne!(run(&base, Method::Sft).hash, run(&other, Method::Sft).hash);
    assert_eq!(run(&base, Method::Sft).hash, run(&base, Method::Sft).hash);
    // sampling.seed changes what the generator samples.
    let mut other = base.clone();
    other.sampling.seed = 9;
    assert_ne!(
        run(&base, Method::OnPolicy).hash,
        run(&other, Method::OnPolicy).hash
    );
}

#[test]
fn the_baselines_train_the_same_samples_in_packed_or_padded_rows() {
    let data = prompts(20);
    let responses = npd_pipeline::write_responses(
        &mut EchoGenerator::default(),
        &data,
        &settings(false).sampling,
    )
    .unwrap();
    // Sample ids and rows per step of on-policy and SFT.
    let run = |rows: BaselineRows| {
        let mut s = settings(false);
        s.pack.baselines = rows;
        let mut on = HashLearner::default();
        OnPolicy::new(
            &mut on,
            &mut EchoGenerator::default(),
            &mut FixedTeacher::default(),
            &mut StepsEval,
        )
        .run(&mut Loop::new(&s, &data), 0)
        .unwrap();
        let mut sft = HashLearner::default();
        Sft::new(&mut sft, &mut StepsEval, &responses)
            .run(&mut Loop::new(&s, &data), 0)
            .unwrap();
        [(on.log, on.rows), (sft.log, sft.rows)]
    };
    let sorted = |ids: &[Vec<u64>]| -> Vec<Vec<u64>> {
        ids.iter()
            .map(|v| {
                let mut v = v.clone();
                v.sort_unstable();
                v
            })
            .collect()
    };
    let samples = settings(false).samples_per_step;
    for ((ids_packed, rows_packed), (ids_padded, rows_padded)) in run(BaselineRows::Packed)
        .into_iter()
        .zip(run(BaselineRows::Padded))
    {
        assert_eq!(ids_packed.len() as u64, STEPS);
        // The same samples every step, laid out differently: one per row
        // padded, several per row packed.
        assert_eq!(sorted(&ids_packed), sorted(&ids_padded));
        assert!(rows_padded.iter().all(|&r| r == samples), "{rows_padded:?}");
        assert!(rows_packed.iter().all(|&r| r < samples), "{rows_packed:?}");
    }
}

/// GKD's mixture: `teacher_fraction` of each on-policy step's samples are
/// the teacher's written responses, the rest the student's own; the step
/// still trains `samples_per_step` samples.
#[test]
fn on_policy_takes_its_teacher_fraction_from_the_written_responses() {
    let mut s = settings(false);
    s.teacher_fraction = 0.5;
    assert_eq!(s.teacher_written_per_step(), 3);
    let data = prompts(20);
    let written: Vec<Vec<u32>> = (0..data.len()).map(|_| vec![7, 7, 2]).collect();
    let mut learner = HashLearner::default();
    let mut generator = EchoGenerator::default();
    let mut teacher = FixedTeacher::default();
    let end = OnPolicy::new(&mut learner, &mut generator, &mut teacher, &mut StepsEval)
        .with_teacher_written(&written)
        .run(&mut Loop::new(&s, &data), 0)
        .unwrap();
    assert!(end.finished().is_some());
    assert_eq!(generator.answered as u64, STEPS * 3);
    assert!(learner.log.iter().all(|ids| ids.len() == 6));
    // Another mixture trains other tokens.
    let mut other = HashLearner::default();
    OnPolicy::new(
        &mut other,
        &mut EchoGenerator::default(),
        &mut teacher,
        &mut StepsEval,
    )
    .run(&mut Loop::new(&settings(false), &data), 0)
    .unwrap();
    assert_ne!(other.hash, learner.hash);
    // A fraction without the responses is refused by its key.
    let err = OnPolicy::new(
        &mut HashLearner::default(),
        &mut EchoGenerator::default(),
        &mut teacher,
        &mut StepsEval,
    )
    .run(&mut Loop::new(&s, &data), 0)
    .unwrap_err();
    assert!(err.to_string().contains("train.teacher_fraction"), "{err}");
}

#[test]
fn on_policy_samples_from_the_current_student_and_sft_from_the_writer() {
    let s = settings(false);
    let data = prompts(20);
    let mut learner = HashLearner::default();
    let mut generator = EchoGenerator::default();
    let mut teacher = FixedTeacher::default();
    let end = OnPolicy::new(&mut learner, &mut generator, &mut teacher, &mut StepsEval)
        .run(&mut Loop::new(&s, &data), 0)
        .unwrap();
    assert!(end.finished().is_some());
    // Loaded before every step, each time with the learner's new version.
    assert_eq!(generator.loads, (0..STEPS).collect::<Vec<_>>());
    assert_eq!(teacher.calls as u64, STEPS);
    assert!(
        learner
            .log
            .iter()
            .all(|ids| ids.len() == s.samples_per_step)
    );

    let responses =
        npd_pipeline::write_responses(&mut EchoGenerator::default(), &data, &s.sampling).unwrap();
    let mut learner = HashLearner::default();
    let wrong = Sft::new(&mut learner, &mut StepsEval, &responses[1..])
        .run(&mut Loop::new(&s, &data), 0)
        .unwrap_err();
    assert!(
        wrong.to_string().contains("19 responses for 20 prompts"),
        "{wrong}"
    );
    let out = Sft::new(&mut learner, &mut StepsEval, &responses)
        .run(&mut Loop::new(&s, &data), 0)
        .unwrap()
        .finished()
        .unwrap();
    assert_eq!(out.curve.first().unwrap().step, 0);
    assert_eq!(out.curve.last().unwrap().step, STEPS);
    assert!(out.token_efficiency > 0.0);
}

#[test]
fn truncated_responses_are_counted_and_trained_or_dropped_as_configured() {
    use npd_core::config::Truncated;
    for policy in [Truncated::Train, Truncated::Drop] {
        let mut s = settings(false);
        // Responses of 3 or 4 tokens hit the limit.
        s.sampling.max_new_tokens = 2;
        s.truncated = policy;
        let data = prompts(40);
        let mut learner = HashLearner::default();
        let out = NearPolicy::new(
            &mut learner,
            EchoGenerator::default(),
            &mut FixedTeacher::default(),
            &mut StepsEval,
        )
        .run(&mut Loop::new(&s, &data), 3)
        .unwrap()
        .finished()
        .unwrap();
        assert!(out.truncated > 0, "{policy:?}");
        let ledger = out.ledger.clone().unwrap();
        assert!(ledger.adds_up(), "{ledger:?}");
        let dropped = ledger.filtered.get("truncated").copied().unwrap_or(0);
        match policy {
            Truncated::Train => assert_eq!(dropped, 0),
            // Every truncated response of the run was dropped, none trained.
            Truncated::Drop => assert_eq!(dropped as u64, out.truncated, "{ledger:?}"),
        }
        assert!(
            learner
                .log
                .iter()
                .all(|ids| ids.len() == s.samples_per_step)
        );
        assert_eq!(out.refreshes, STEPS / s.refresh_every);

        let mut learner = HashLearner::default();
        let mut generator = EchoGenerator::default();
        let out = OnPolicy::new(
            &mut learner,
            &mut generator,
            &mut FixedTeacher::default(),
            &mut StepsEval,
        )
        .run(&mut Loop::new(&s, &data), 3)
        .unwrap()
        .finished()
        .unwrap();
        assert!(out.truncated > 0, "{policy:?}");
        let trained: usize = learner.log.iter().map(Vec::len).sum();
        let all = STEPS as usize * s.samples_per_step;
        match policy {
            Truncated::Train => assert_eq!(trained, all),
            Truncated::Drop => assert_eq!(trained as u64, all as u64 - out.truncated),
        }
        // On-policy refreshes before every step; both halves are timed.
        assert_eq!(out.refreshes, STEPS);
        assert!(out.stages.contains_key("publish") && out.stages.contains_key("reload"));
    }
}

#[test]
fn npd_that_cannot_generate_says_why() {
    let s = settings(true);
    let data = prompts(40);
    let mut learner = HashLearner::default();
    let refusing = EchoGenerator {
        refuse: Some("inf: expected a finite number >= 0"),
        ..EchoGenerator::default()
    };
    let err = NearPolicy::new(
        &mut learner,
        refusing,
        &mut FixedTeacher::default(),
        &mut StepsEval,
    )
    .run(&mut Loop::new(&s, &data), 0)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stopped delivering rollouts")
            && err.contains("sampling.temperature")
            && err.contains("expected a finite number"),
        "{err}"
    );
}

#[test]
fn npd_ends_with_an_error_when_it_keeps_nothing_instead_of_hanging() {
    let s = settings(true);
    let data = prompts(40);
    let mut learner = HashLearner::default();
    let broken = EchoGenerator {
        nan: true,
        ..EchoGenerator::default()
    };
    let err = NearPolicy::new(
        &mut learner,
        broken,
        &mut FixedTeacher::default(),
        &mut StepsEval,
    )
    .run(&mut Loop::new(&s, &data), 0)
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, npd_pipeline::Error::Starved { step: 0, .. }),
        "{text}"
    );
    assert!(text.contains("non-finite-score"), "{text}");
    assert_eq!(learner.calls, 0);
}

#[test]
fn a_skipped_step_trains_no_prompt_and_the_ledger_says_so() {
    let s = settings(false);
    let data = prompts(40);
    let stop = AtomicBool::new(false);
    let mut rec = Recorder {
        events: Vec::new(),
        stop_at: None,
        stop: &stop,
    };
    let mut learner = HashLearner {
        skip: vec![3, 4],
        ..HashLearner::default()
    };
    let out = NearPolicy::new(
        &mut learner,
        EchoGenerator::default(),
        &mut FixedTeacher::default(),
        &mut StepsEval,
    )
    .run(&mut Loop::new(&s, &data).with_observer(&mut rec), 0)
    .unwrap()
    .finished()
    .unwrap();
    assert_eq!(out.skipped_steps, 2);
    let mut trained = 0;
    let mut failed = 0;
    for e in &rec.events {
        if let Event::Step(st) = e {
            let n = st.prompts_trained.as_ref().unwrap().len();
            if st.skipped {
                assert_eq!(
                    n, 0,
                    "step {} skipped but reported trained prompts",
                    st.step
                );
            }
            trained += n;
            failed += st.prompts_failed.as_ref().unwrap().len();
        }
    }
    let ledger = out.ledger.unwrap();
    assert!(ledger.adds_up());
    assert_eq!(ledger.trained, trained);
    let skipped: usize = ledger
        .failed
        .iter()
        .filter(|(reason, _)| reason.contains("skipped"))
        .map(|(_, n)| n)
        .sum();
    assert!(skipped >= 2 * s.samples_per_step, "{ledger:?}");
    assert_eq!(skipped, failed);
}

fn rl_settings() -> Settings {
    let mut s = settings(false);
    s.rl = npd_core::config::RlConfig {
        steps: 12,
        group_size: 4,
        prompts_per_step: 5,
        refresh_every: 2,
        eval_every: 4,
        eval_samples: 4,
        pass_k: vec![1, 4],
        ..npd_core::config::RlConfig::default()
    };
    s
}

/// The final learner state a run's last checkpoint holds.
fn final_state(root: &std::path::Path, method: Method, steps: u64) -> String {
    let dir = root
        .join(format!("{}-seed3", method.slug()))
        .join(format!("step-{steps:08}"));
    std::fs::read_to_string(dir.join("learner.txt")).unwrap()
}

/// (step, sample ids' tokens, the RL step's record) of every step event.
fn rl_steps(events: &[Event]) -> Vec<(u64, usize, Option<npd_core::events::RlStep>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some((s.step, s.tokens, s.rl.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn rl_after_npd_starts_from_its_final_weights_and_a_stopped_run_resumes_exactly() {
    let data = prompts(30);
    let s = rl_settings();
    // The RL stage needs its start's finished run.
    let root = scratch("rl-missing");
    let checkpoints = Checkpoints::new(&root, 5);
    let c = Comparison::new(&Doubles, &s, &data).with_checkpoints(&checkpoints);
    let stop = AtomicBool::new(false);
    let err = c
        .run(Method::NearPolicyRl, 3, &mut |_: &Event| {}, &stop)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("starts from NPD's final weights") && err.contains("run npd first"),
        "{err}"
    );

    // Unstopped: NPD, then RL from it.
    let (npd, _) = run_with_stop(&c, Method::NearPolicy, None);
    assert!(npd.finished().is_some());
    let (end, whole) = run_with_stop(&c, Method::NearPolicyRl, None);
    let out = end.finished().expect("finished");
    let trace = out.rl.as_ref().expect("an RL trace");
    assert_eq!(trace.start, Some(Method::NearPolicy));
    assert_eq!(trace.steps.len(), 12);
    // Evaluated at the start, every 4 steps, with the sampled scores.
    let evals: Vec<u64> = trace.evals.iter().map(|e| e.step).collect();
    assert_eq!(evals, [0, 4, 8, 12]);
    assert_eq!(out.curve.len(), 4);
    assert!(trace.steps.iter().all(|p| p.rl.staleness < 2));
    assert!(trace.steps.iter().any(|p| p.rl.staleness == 1));
    let unstopped = final_state(&root, Method::NearPolicyRl, 12);

    // From the warm start instead, the same steps train other weights.
    let (_, _) = run_with_stop(&c, Method::Rl, None);
    assert_ne!(final_state(&root, Method::Rl, 12), unstopped);

    // Stopped after step 5: the stop lands on the next refresh step (6),
    // and the resumed run continues exactly as the unstopped one.
    let root2 = scratch("rl-resume");
    let checkpoints2 = Checkpoints::new(&root2, 5);
    let c2 = Comparison::new(&Doubles, &s, &data).with_checkpoints(&checkpoints2);
    run_with_stop(&c2, Method::NearPolicy, None);
    let (first, before) = run_with_stop(&c2, Method::NearPolicyRl, Some(5));
    match first {
        RunEnd::Stopped { step, .. } => assert_eq!(step, 6),
        RunEnd::Finished(_) => panic!("did not stop"),
    }
    let (second, after) = run_with_stop(&c2, Method::NearPolicyRl, None);
    let resumed = second.finished().expect("finished");
    assert_eq!(resumed.resumed_at, vec![6]);
    let mut joined = rl_steps(&before);
    joined.extend(rl_steps(&after));
    assert_eq!(joined, rl_steps(&whole));
    assert_eq!(final_state(&root2, Method::NearPolicyRl, 12), unstopped);
    // The outcome's trace holds every step once, as the unstopped one's.
    let records = |t: &npd_pipeline::RlTrace| -> Vec<_> {
        t.steps.iter().map(|p| (p.step, p.rl.clone())).collect()
    };
    assert_eq!(records(resumed.rl.as_ref().unwrap()), records(trace));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&root2);
}

#[test]
fn sft_responses_are_written_once_and_reused_by_a_resumed_run() {
    let s = settings(false);
    let data = prompts(20);
    let root = scratch("sft-saved");
    let checkpoints = Checkpoints::new(&root, 0);
    let stop = AtomicBool::new(false);
    let first = Comparison::new(&Doubles, &s, &data).with_checkpoints(&checkpoints);
    let out = first
        .run(Method::Sft, 0, &mut |_: &Event| {}, &stop)
        .unwrap()
        .finished()
        .unwrap();
    assert!(!out.prep_reused);
    let file = root.join(npd_pipeline::comparison::SFT_RESPONSES_FILE);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let written =
        npd_pipeline::write_responses(&mut EchoGenerator::default(), &data, &s.sampling).unwrap();
    assert_eq!(saved["responses"], serde_json::json!(written));

    // Another process of the same run (a resume) reads them back.
    let again = Comparison::new(&Doubles, &s, &data).with_checkpoints(&checkpoints);
    let out = again
        .run(Method::Sft, 1, &mut |_: &Event| {}, &stop)
        .unwrap()
        .finished()
        .unwrap();
    assert!(out.prep_reused && out.prep_s == 0.0);

    // Responses saved for other prompts are refused, naming the file.
    let other = prompts(19);
    let wrong = Comparison::new(&Doubles, &s, &other).with_checkpoints(&checkpoints);
    let err = wrong
        .run(Method::Sft, 2, &mut |_: &Event| {}, &stop)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sft-responses.json") && err.contains("other prompts"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
