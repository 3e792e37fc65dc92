//! The GRPO loop on test doubles: groups, advantages, dropped groups,
//! sparse refresh within the staleness bound, determinism.

mod doubles;

use doubles::{EchoGenerator, HashLearner, prompts};
use npd_core::SamplingParams;
use npd_core::reward::Reward;
use npd_pack::PackOptions;
use npd_pipeline::grpo::{AdvantageScale, GrpoSettings, GrpoStep, run_grpo};

fn settings(refresh_every: u64) -> GrpoSettings {
    GrpoSettings {
        group_size: 4,
        prompts_per_step: 5,
        refresh_every,
        scale: AdvantageScale::GroupStd,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            max_new_tokens: 8,
            stop_ids: vec![2],
            seed: 7,
        },
        pack: PackOptions::new(64),
        max_draws: 2,
        seed: 3,
        overlong: Default::default(),
    }
}

/// Reward 1 for an odd response length: varies within a group, since
/// each member samples with its own seed.
fn odd_length(r: &npd_core::Rollout) -> Reward {
    Reward {
        value: (r.response.len() % 2) as f64,
        reason: String::new(),
    }
}

fn run(refresh_every: u64, steps: u64) -> (HashLearner, EchoGenerator, Vec<GrpoStep>) {
    let mut learner = HashLearner::default();
    let mut generator = EchoGenerator::default();
    let data = prompts(30);
    let out = run_grpo(
        &mut learner,
        &mut generator,
        None,
        &data,
        &odd_length,
        &settings(refresh_every),
        steps,
        &mut |_| {},
    )
    .unwrap();
    (learner, generator, out)
}

#[test]
fn groups_train_with_zero_sum_advantages_within_the_staleness_bound() {
    let (learner, generator, steps) = run(3, 12);
    assert_eq!(steps.len(), 12);
    // Refreshes at steps 0, 3, 6, 9: staleness cycles 0, 1, 2 and never
    // reaches K.
    let staleness: Vec<u64> = steps.iter().map(|s| s.staleness).collect();
    assert_eq!(staleness, [0, 1, 2].repeat(4));
    assert_eq!(generator.loads, vec![0, 3, 6, 9]);
    let kept: usize = steps.iter().map(|s| s.groups_kept).sum();
    assert!(
        kept > 0 && learner.steps as usize == steps.iter().filter(|s| s.stats.is_some()).count()
    );
    // Sample ids are given group by group: each group's advantages sum to
    // zero and are not all zero.
    for step in &learner.advantages {
        let mut by_id = step.clone();
        by_id.sort_by_key(|(id, _)| *id);
        assert_eq!(by_id.len() % 4, 0);
        for group in by_id.chunks(4) {
            let sum: f32 = group.iter().map(|(_, a)| a).sum();
            assert!(sum.abs() < 1e-4, "{group:?}");
            assert!(group.iter().any(|(_, a)| a.abs() > 0.1), "{group:?}");
        }
    }
    // Mean reward is a fraction of responses.
    assert!(steps.iter().all(|s| (0.0..=1.0).contains(&s.mean_reward)));
}

#[test]
fn groups_of_equal_rewards_are_dropped_and_counted() {
    let mut learner = HashLearner::default();
    let mut generator = EchoGenerator::default();
    let constant = |_: &npd_core::Rollout| Reward {
        value: 1.0,
        reason: String::new(),
    };
    let steps = run_grpo(
        &mut learner,
        &mut generator,
        None,
        &prompts(30),
        &constant,
        &settings(1),
        3,
        &mut |_| {},
    )
    .unwrap();
    for s in &steps {
        // Two draws of five prompts, every group dropped, no step taken.
        assert_eq!((s.groups_kept, s.groups_dropped), (0, 10));
        assert!(s.stats.is_none());
    }
    assert_eq!(learner.steps, 0);
}

#[test]
fn the_same_settings_train_the_same_samples_and_weights() {
    let (a, _, sa) = run(2, 8);
    let (b, _, sb) = run(2, 8);
    assert_eq!(sa, sb);
    assert_eq!((a.log, a.hash), (b.log, b.hash));
}

#[test]
fn a_reference_scorer_fills_every_samples_reference_log_probs() {
    let mut learner = HashLearner::default();
    let mut generator = EchoGenerator::default();
    let mut reference = doubles::FixedTeacher::default();
    let steps = run_grpo(
        &mut learner,
        &mut generator,
        Some(&mut reference),
        &prompts(30),
        &odd_length,
        &settings(1),
        4,
        &mut |_| {},
    )
    .unwrap();
    let trained = steps.iter().filter(|s| s.stats.is_some()).count();
    assert!(trained > 0);
    // One scoring call per step that trained.
    assert_eq!(reference.calls, trained);
}
