//! Property tests of scoring and selection.

use std::collections::BTreeSet;

use npd_core::traits::{FilterInput, SampleFilter};
use npd_core::{DropReason, ResponseLogProbs, SampleId, Verdict};
use npd_filter::{DeltaForm, FilterConfig, IfdConvention};
use npd_filter::{DeltaIfdFilter, DeltaScore, LogProbColumns, Policy, RunningBand};
use proptest::prelude::*;

/// Scores with many ties (drawn from a small set) or spread out, plus
/// unique ids, in a random order.
fn scored_pool() -> impl Strategy<Value = Vec<(SampleId, Result<f64, DropReason>)>> {
    prop::collection::vec((0u8..12, any::<bool>(), -50i32..50), 0..120).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (kind, tied, x))| {
                let score = match kind {
                    0 => Err(DropReason::NonFiniteScore),
                    1 => Err(DropReason::EmptyResponse),
                    _ if tied => Ok((x % 4) as f64),
                    _ => Ok(x as f64 * 0.37 + i as f64 * 1e-3),
                };
                (SampleId(i as u64 * 7 + 3), score)
            })
            .collect()
    })
}

fn kept_ids(policy: &Policy, pool: &[(SampleId, Result<f64, DropReason>)]) -> BTreeSet<SampleId> {
    let ids: Vec<_> = pool.iter().map(|p| p.0).collect();
    let scores: Vec<_> = pool.iter().map(|p| p.1).collect();
    let v = policy.apply(&ids, &scores);
    for (verdict, score) in v.iter().zip(&scores) {
        if score.is_err() {
            assert!(!verdict.is_keep(), "a malformed sample was kept");
        }
    }
    ids.into_iter()
        .zip(v)
        .filter(|(_, v)| v.is_keep())
        .map(|(id, _)| id)
        .collect()
}

fn policies() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (0.0f64..1.0, 0.0f64..1.0).prop_map(|(a, b)| Policy::Band {
            lower: a.min(b),
            upper: a.max(b)
        }),
        (-5.0f64..5.0, 0.0f64..10.0).prop_map(|(m, w)| Policy::Threshold {
            min: Some(m),
            max: Some(m + w)
        }),
        (-5.0f64..20.0, 0.0f64..=1.0).prop_map(|(c, f)| Policy::ClassicIfd {
            ceiling: c,
            keep_fraction: f
        }),
        Just(Policy::KeepAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn band_keeps_the_expected_count_within_one(pool in scored_pool(), a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
        let (lower, upper) = (a.min(b), a.max(b));
        let n = pool.iter().filter(|p| p.1.is_ok()).count();
        let kept = kept_ids(&Policy::Band { lower, upper }, &pool).len();
        let expected = n as f64 * (upper - lower);
        prop_assert!((kept as f64 - expected).abs() <= 1.0, "kept {} expected {}", kept, expected);
    }

    #[test]
    fn selection_does_not_depend_on_input_order(
        pool in scored_pool(),
        policy in policies(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = pool.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(kept_ids(&policy, &pool), kept_ids(&policy, &shuffled));
    }

    /// With distinct scores and a window holding the whole pool, the running
    /// band keeps exactly what the pool band keeps.
    #[test]
    fn running_band_on_one_pool_equals_pool_band(n in 1usize..200, a in 0.0f64..=1.0, b in 0.0f64..=1.0, seed in any::<u64>()) {
        let (lower, upper) = (a.min(b), a.max(b));
        let mut x = seed | 1;
        let pool: Vec<(SampleId, Result<f64, DropReason>)> = (0..n)
            .map(|i| {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                (SampleId(i as u64), Ok((x >> 11) as f64 + i as f64 * 1e-9))
            })
            .collect();
        let scores: Vec<_> = pool.iter().map(|p| p.1).collect();
        let running = RunningBand::new(lower, upper, n).select(&scores);
        let kept: BTreeSet<SampleId> = pool.iter().zip(&running).filter(|(_, v)| v.is_keep()).map(|(p, _)| p.0).collect();
        prop_assert_eq!(kept, kept_ids(&Policy::Band { lower, upper }, &pool));
    }

    /// Malformed samples (empty, misaligned, non-finite) are always dropped
    /// with a malformed reason, through both input layouts, and the report
    /// accounts for every sample.
    #[test]
    fn malformed_samples_are_dropped_and_counted(specs in prop::collection::vec((0u8..6, 1usize..20, any::<u64>()), 0..80)) {
        let inputs: Vec<FilterInput> = specs.iter().enumerate().map(|(i, &(kind, len, seed))| {
            let mut x = seed | 1;
            let mut lp = |n: usize| -> Vec<f32> {
                (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; -((x % 1000) as f32 / 100.0) - 0.01 }).collect()
            };
            let mut r = |n| ResponseLogProbs { conditioned: lp(n), alone: lp(n) };
            let mut input = FilterInput { id: SampleId(i as u64), teacher: r(len), student: r(len), snapshot: None };
            match kind {
                0 => { input.teacher = ResponseLogProbs::default(); input.student = ResponseLogProbs::default(); }
                1 => { input.student.alone.pop(); }
                2 => { input.teacher.conditioned[0] = f32::NAN; }
                3 => { input.student.alone[len - 1] = f32::NEG_INFINITY; }
                _ => {}
            }
            input
        }).collect();
        let config = FilterConfig { lower_percentile: 0.1, upper_percentile: 0.9, ..Default::default() };
        let mut filter = DeltaIfdFilter::from_config(&config);
        let decisions = filter.select(&inputs).unwrap();
        let mut columns = LogProbColumns::new(false);
        for i in &inputs { columns.push(i); }
        let mut filter2 = DeltaIfdFilter::from_config(&config);
        let decisions2 = filter2.select_columns(&columns).unwrap();
        prop_assert_eq!(&decisions, &decisions2);
        for (d, &(kind, _, _)) in decisions.iter().zip(&specs) {
            if kind < 4 {
                match d.verdict {
                    Verdict::Drop(r) => prop_assert!(r.is_malformed(), "{:?}", r),
                    Verdict::Keep => prop_assert!(false, "malformed sample kept"),
                }
            }
        }
        let report = filter.last_report();
        prop_assert!(report.is_balanced());
        prop_assert_eq!(report.total, inputs.len());
    }
}

#[test]
fn difference_and_ratio_forms_rank_by_teacher_over_student_difficulty() {
    let r = |c: f32, a: f32| ResponseLogProbs {
        conditioned: vec![c; 3],
        alone: vec![a; 3],
    };
    // Teacher finds sample 1's response far harder to justify than the student does.
    let inputs = [
        FilterInput {
            id: SampleId(0),
            teacher: r(-1.0, -2.0),
            student: r(-1.0, -2.0),
            snapshot: None,
        },
        FilterInput {
            id: SampleId(1),
            teacher: r(-3.0, -2.0),
            student: r(-0.5, -2.0),
            snapshot: None,
        },
    ];
    for form in [DeltaForm::Difference, DeltaForm::Ratio] {
        let d = DeltaScore {
            convention: IfdConvention::LossRatio,
            form,
        };
        let s0 = d.score_input(&inputs[0]).unwrap();
        let s1 = d.score_input(&inputs[1]).unwrap();
        assert!(s1 > s0, "{form:?}: {s0} {s1}");
    }
    // Upper tail dropped: the band [0, 0.5) keeps sample 0 only.
    let config = FilterConfig {
        upper_percentile: 0.5,
        ..Default::default()
    };
    let decisions = DeltaIfdFilter::from_config(&config)
        .select(&inputs)
        .unwrap();
    assert!(decisions[0].verdict.is_keep());
    assert_eq!(decisions[1].verdict, Verdict::Drop(DropReason::AboveBand));
}

#[test]
fn staleness_form_requires_snapshot_logprobs() {
    let config = FilterConfig {
        form: DeltaForm::Staleness,
        ..Default::default()
    };
    let r = ResponseLogProbs {
        conditioned: vec![-1.0],
        alone: vec![-2.0],
    };
    let input = FilterInput {
        id: SampleId(5),
        teacher: r.clone(),
        student: r,
        snapshot: None,
    };
    let err = DeltaIfdFilter::from_config(&config)
        .select(&[input])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sample 5") && err.contains("staleness"),
        "{err}"
    );
}
