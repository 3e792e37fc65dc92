//! Tests of the report: tables, targets, time to accuracy, roles.
use super::*;
use crate::outcome::CurvePoint;
use crate::report_refresh::RefreshCost;
use std::collections::BTreeMap;

fn outcome(method: Method, seed: u64, accuracy: f64, wall_s: f64) -> Outcome {
    Outcome {
        method,
        seed,
        accuracy,
        curve: Vec::new(),
        wall_s,
        stages: BTreeMap::from([("train".to_string(), wall_s), ("pack".to_string(), 0.01)]),
        prep_s: 0.0,
        prep_reused: false,
        trained_tokens: 1000,
        token_efficiency: 0.9,
        skipped_steps: 0,
        filter: None,
        schedule: None,
        staleness: BTreeMap::new(),
        ledger: None,
        resumed_at: Vec::new(),
        refreshes: 0,
        truncated: 0,
        rl: None,
    }
}

#[test]
fn the_table_shows_each_run_and_the_targets_follow_the_means() {
    let mut sft = [
        outcome(Method::Sft, 0, 0.8, 10.0),
        outcome(Method::Sft, 1, 0.8, 10.0),
    ];
    sft[0].prep_s = 4.25;
    sft[1].prep_reused = true;
    let report = Report {
        setup: Vec::new(),
        checks: Vec::new(),
        teacher_accuracy: 0.97,
        warm_start_accuracy: 0.6,
        outcomes: [
            sft.to_vec(),
            vec![
                outcome(Method::OnPolicy, 0, 0.70, 60.0),
                outcome(Method::OnPolicy, 1, 0.72, 66.0),
                outcome(Method::NearPolicy, 0, 0.69, 20.0),
                outcome(Method::NearPolicy, 1, 0.70, 21.0),
            ],
        ]
        .concat(),
    };
    let table = report.table();
    assert!(table.contains("10.0s (+4.2s teacher data)"), "{table}");
    assert!(table.contains("10.0s (teacher data reused)"), "{table}");
    // Stages that round to 0.0 s are left out.
    assert!(
        table.contains("| train 60.0s |") && !table.contains("pack"),
        "{table}"
    );
    let (close, fast, gap, speedup) = report.targets().unwrap();
    assert!(close && fast);
    assert!((gap - 1.5).abs() < 1e-9 && (speedup - 63.0 / 20.5).abs() < 1e-9);
    let mut slow = report.clone();
    slow.outcomes[5].wall_s = 100.0;
    assert!(!slow.targets().unwrap().1);
}

#[test]
fn the_chart_has_a_line_and_a_legend_entry_per_run() {
    let mut runs = vec![
        outcome(Method::OnPolicy, 0, 0.5, 20.0),
        outcome(Method::NearPolicy, 0, 0.625, 12.0),
        outcome(Method::NearPolicy, 1, 0.6, 12.5),
    ];
    for o in &mut runs {
        o.curve = (0..=4)
            .map(|i| CurvePoint {
                step: i * 10,
                wall_s: o.wall_s * i as f64 / 4.0,
                accuracy: 0.3 + (o.accuracy - 0.3) * i as f64 / 4.0,
            })
            .collect();
    }
    let report = Report {
        setup: Vec::new(),
        teacher_accuracy: 0.9,
        warm_start_accuracy: 0.3,
        outcomes: runs,
        checks: Vec::new(),
    };
    let svg = report.svg();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    for label in [
        "on-policy seed 0: 50.0%",
        "NPD seed 0: 62.5%",
        "NPD seed 1: 60.0%",
    ] {
        assert!(svg.contains(label), "no legend entry {label:?}");
    }
    assert!(svg.contains("held-out accuracy") && svg.contains("wall-clock"));
    // Seed 0 runs are solid lines (one polyline each); seed 1 is dashed.
    assert!(svg.matches("<polyline").count() > 2);
    std::fs::write(std::env::temp_dir().join("npd-chart-test.svg"), &svg).unwrap();
}

#[test]
fn time_to_accuracy_reads_the_first_crossing_of_on_policys_accuracy() {
    let curve = |pts: &[(f64, f64)]| -> Vec<CurvePoint> {
        pts.iter()
            .enumerate()
            .map(|(i, &(wall_s, accuracy))| CurvePoint {
                step: i as u64,
                wall_s,
                accuracy,
            })
            .collect()
    };
    let mut on = outcome(Method::OnPolicy, 0, 0.6, 40.0);
    on.curve = curve(&[(0.0, 0.3), (20.0, 0.5), (40.0, 0.6)]);
    let mut npd = outcome(Method::NearPolicy, 0, 0.65, 30.0);
    npd.curve = curve(&[(0.0, 0.3), (10.0, 0.55), (20.0, 0.61), (30.0, 0.65)]);
    let mut sft = outcome(Method::Sft, 0, 0.5, 10.0);
    sft.curve = curve(&[(0.0, 0.3), (10.0, 0.5)]);
    let report = Report {
        setup: Vec::new(),
        teacher_accuracy: 0.9,
        warm_start_accuracy: 0.3,
        outcomes: vec![sft, on, npd],
        checks: Vec::new(),
    };
    let t = report.time_to_accuracy().unwrap();
    assert_eq!((t.target, t.baseline_s), (0.6, 40.0));
    assert_eq!(
        t.methods,
        vec![(Method::Sft, None), (Method::NearPolicy, Some(20.0))]
    );
    let md = report.markdown();
    assert!(md.contains("| NPD | 20.0s | 2.00x |"), "{md}");
    assert!(md.contains("| SFT | not reached | - |"), "{md}");
}

#[test]
fn roles_project_the_busiest_one() {
    let mut o = outcome(Method::NearPolicy, 0, 0.7, 60.0);
    o.stages = BTreeMap::from([
        ("generate".to_string(), 20.0),
        ("teacher".to_string(), 25.0),
        ("filter".to_string(), 1.0),
        ("train".to_string(), 12.0),
        ("pack".to_string(), 0.5),
    ]);
    let r = Roles::of(&o).unwrap();
    assert_eq!(
        (r.generate, r.score, r.train, r.projected()),
        (20.0, 26.0, 12.5, 26.0)
    );
    // Without a generate stage (disaggregated, or a baseline) there is
    // nothing to project from.
    assert_eq!(Roles::of(&outcome(Method::OnPolicy, 0, 0.7, 60.0)), None);
    let report = Report {
        setup: Vec::new(),
        checks: Vec::new(),
        teacher_accuracy: 0.9,
        warm_start_accuracy: 0.3,
        outcomes: vec![outcome(Method::OnPolicy, 0, 0.7, 52.0), o],
    };
    let md = report.markdown();
    assert!(
        md.contains("about 26.0s") && md.contains("2.00x on-policy"),
        "{md}"
    );
    // Without on-policy there is no ratio to print, and no NaN either.
    let alone = Report {
        outcomes: vec![report.outcomes[1].clone()],
        ..report.clone()
    };
    let md_alone = alone.markdown();
    assert!(
        !md_alone.contains("NaN") && md_alone.contains("no ratio to on-policy"),
        "{md_alone}"
    );
    // The targets name the schedule that ran, its measured figure and
    // the other schedule's projection.
    let targets = &md[md.find("## Targets").unwrap()..];
    assert!(
        targets.contains("NPD's schedule in these runs: colocated")
            && targets.contains("measured above at 0.87x")
            && targets.contains("about 26.0s, 2.00x on-policy's wall-clock (a projection"),
        "{targets}"
    );
}

#[test]
fn a_disaggregated_run_is_named_as_such_in_the_targets() {
    let mut o = outcome(Method::NearPolicy, 0, 0.7, 40.0);
    o.schedule = Some(npd_rollout::Schedule::Disaggregated);
    o.stages
        .insert(crate::near_policy::GENERATOR_BUSY.into(), 30.0);
    let report = Report {
        setup: Vec::new(),
        checks: Vec::new(),
        teacher_accuracy: 0.9,
        warm_start_accuracy: 0.3,
        outcomes: vec![outcome(Method::OnPolicy, 0, 0.7, 60.0), o],
    };
    let md = report.markdown();
    assert!(
        md.contains("student generator (thread or server) 30.0s (10.0s), teacher and filter 0.0s (40.0s), trainer 40.0s (0.0s;"),
        "{md}"
    );
    let targets = &md[md.find("## Targets").unwrap()..];
    assert!(
        targets.contains("schedule in these runs: disaggregated")
            && targets.contains("measured above at 1.50x")
            && targets.contains("about 40.0s"),
        "{targets}"
    );
}

#[test]
fn the_refresh_section_shows_per_refresh_costs_and_the_ratio_without_them() {
    let mut on = outcome(Method::OnPolicy, 0, 0.5, 100.0);
    on.refreshes = 50;
    on.stages.insert("publish".into(), 20.0);
    on.stages.insert("reload".into(), 30.0);
    let mut npd = outcome(Method::NearPolicy, 0, 0.5, 25.0);
    npd.refreshes = 5;
    npd.stages.insert("publish".into(), 2.0);
    npd.stages
        .insert(crate::near_policy::GENERATOR_RELOAD.into(), 3.0);
    let sft = outcome(Method::Sft, 0, 0.5, 10.0);
    on.truncated = 4;
    let report = Report {
        setup: Vec::new(),
        teacher_accuracy: 0.9,
        warm_start_accuracy: 0.1,
        outcomes: vec![sft, on, npd],
        checks: Vec::new(),
    };
    let c = RefreshCost::of(&report, Method::OnPolicy).unwrap();
    assert_eq!((c.refreshes, c.paid_s(), c.without_s()), (50.0, 50.0, 50.0));
    let n = RefreshCost::of(&report, Method::NearPolicy).unwrap();
    // The generator's own reload overlaps the loop: only publishing is paid.
    assert_eq!((n.paid_s(), n.without_s()), (2.0, 23.0));
    assert!(RefreshCost::of(&report, Method::Sft).is_none());
    let md = report.markdown();
    assert!(md.contains("## Weight refresh"), "{md}");
    assert!(
        md.contains("| on-policy | 50 | 0.400s | 0.600s | 50.0s (50%) | 100.0s | 50.0s |"),
        "{md}"
    );
    assert!(
        md.contains("| NPD | 5 | 0.400s | 0.600s on the generator, overlapped | 2.0s (8%)"),
        "{md}"
    );
    assert!(md.contains("4.00x as measured, 2.17x without"), "{md}");
    assert!(
        md.contains("hit `sampling.max_new_tokens`") && md.contains(": on-policy 4.0."),
        "{md}"
    );
}

/// An RL outcome whose accuracy and pass@1 rise linearly from `start` by
/// `per_eval` at each evaluation (steps 0, 10, 20), and whose reward rises
/// by 0.01 a step.
fn rl_outcome(method: Method, seed: u64, start: f64, per_eval: f64) -> Outcome {
    use crate::outcome::{RlEvalPoint, RlStepPoint, RlTrace};
    use npd_core::events::RlStep;
    use npd_core::sampled::SampledScores;
    let at = |i: u64| start + per_eval * i as f64;
    let mut o = outcome(method, seed, at(2), 5.0);
    o.curve = (0..3)
        .map(|i| CurvePoint {
            step: 10 * i,
            wall_s: i as f64,
            accuracy: at(i),
        })
        .collect();
    o.rl = Some(RlTrace {
        start: method.rl_start().flatten(),
        steps: (1..=20)
            .map(|s| RlStepPoint {
                step: s,
                wall_s: s as f64 / 4.0,
                rl: RlStep {
                    reward: 0.2 + 0.01 * s as f64,
                    response_tokens: 30.0,
                    groups_kept: 3,
                    groups_dropped: 1,
                    staleness: 0,
                },
            })
            .collect(),
        evals: (0..3)
            .map(|i| RlEvalPoint {
                step: 10 * i,
                wall_s: i as f64,
                scores: SampledScores {
                    prompts: 8,
                    samples: 4,
                    pass_at: BTreeMap::from([(1, at(i) - 0.3), (4, at(i) - 0.1)]),
                    entropy: 0.2 - 0.05 * i as f64,
                    response_tokens: 30.0,
                    ..SampledScores::default()
                },
            })
            .collect(),
    });
    o
}

#[test]
fn the_rl_section_shows_gains_rises_and_steps_to_a_common_accuracy() {
    let report = Report {
        setup: Vec::new(),
        checks: Vec::new(),
        teacher_accuracy: 0.97,
        warm_start_accuracy: 0.6,
        outcomes: vec![
            outcome(Method::NearPolicy, 0, 0.70, 20.0),
            rl_outcome(Method::NearPolicyRl, 0, 0.70, 0.02),
            rl_outcome(Method::SftRl, 0, 0.72, 0.005),
        ],
    };
    // The distillation table leaves RL runs out.
    assert!(!report.table().contains("NPD+RL"));
    let md = report.markdown();
    assert!(md.contains("## RL after distillation"), "{md}");
    // NPD+RL: 70% -> 74%, pass@1 40% -> 44%, entropy 0.200 -> 0.100.
    assert!(
        md.contains(
            "| NPD+RL | 0 | 70.0% → 74.0% | 40.0% → 44.0% | 60.0% → 64.0% | 0.200 → 0.100 |"
        ),
        "{md}"
    );
    // Reward: mean of steps 1-10 and 11-20, and 1 point per 100 steps.
    assert!(md.contains("| 0.255 → 0.355 | +1.000 | 20 of 80 |"), "{md}");
    // The common accuracy is the lower final mean (SFT+RL's 73%): NPD+RL
    // reaches it at step 20, SFT+RL at 20 too; the common pass@1 is 43%.
    assert_eq!(crate::report_rl::common_target(&report), Some(0.73));
    let p1 = crate::report_rl::common_pass1(&report).unwrap();
    assert!((p1 - 0.43).abs() < 1e-12);
    assert!(
        md.contains("| NPD+RL | 1 | +4.0 (+4.0) | +4.0 | +4.0 | 0.200 | 20 | 20 |"),
        "{md}"
    );
    assert!(
        md.contains("| SFT+RL | 1 | +1.0 (+1.0) | +1.0 | +1.0 | 0.200 | 20 | 20 |"),
        "{md}"
    );
    // Along the run: at step 10, NPD+RL's accuracy 72%, pass@1 42%, and
    // the reward of steps 1-10.
    assert!(
        md.contains("| NPD+RL | 10 | 1.0s | 72.0% | 42.0% | 62.0% | 0.150 | 30.0 | 0.255 |"),
        "{md}"
    );
    assert!(crate::report_rl::svg(&report).unwrap().contains("<svg"));
}
