//! The RL stage's part of the run report: per run, accuracy, pass@k,
//! entropy, lengths and rewards at the start and the end; per method, the
//! means over seeds and the steps each takes to a common accuracy; and a
//! chart of reward and accuracy against steps.

use std::fmt::Write;

use npd_core::Method;
use npd_core::sampled::SampledScores;

use crate::outcome::Outcome;
use crate::report::{Report, color};

/// Steps averaged at each end of the reward curve.
const REWARD_WINDOW: usize = 10;

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = v
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// The mean reward of the first and the last [`REWARD_WINDOW`] steps, and
/// the least-squares slope of the reward per 100 steps.
pub fn reward_rise(o: &Outcome) -> Option<(f64, f64, f64)> {
    let steps = &o.rl.as_ref()?.steps;
    if steps.is_empty() {
        return None;
    }
    let first = mean(steps.iter().take(REWARD_WINDOW).map(|s| s.rl.reward));
    let last = mean(steps.iter().rev().take(REWARD_WINDOW).map(|s| s.rl.reward));
    let xs = mean(steps.iter().map(|s| s.step as f64));
    let ys = mean(steps.iter().map(|s| s.rl.reward));
    let (num, den) = steps.iter().fold((0.0, 0.0), |(n, d), s| {
        let dx = s.step as f64 - xs;
        (n + dx * (s.rl.reward - ys), d + dx * dx)
    });
    let slope = if den > 0.0 { 100.0 * num / den } else { 0.0 };
    Some((first, last, slope))
}

/// The sampled scores at the start and at the end of an RL run.
fn ends(o: &Outcome) -> Option<(&SampledScores, &SampledScores)> {
    let evals = &o.rl.as_ref()?.evals;
    Some((&evals.first()?.scores, &evals.last()?.scores))
}

fn arrow(a: Option<f64>, b: Option<f64>, f: impl Fn(f64) -> String) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{} → {}", f(a), f(b)),
        _ => "-".into(),
    }
}

/// The RL methods of the report, in report order, with their runs.
fn rl_methods(r: &Report) -> Vec<(Method, Vec<&Outcome>)> {
    Method::ALL
        .into_iter()
        .filter(|m| m.is_rl())
        .map(|m| (m, r.outcomes.iter().filter(|o| o.method == m).collect()))
        .filter(|(_, runs): &(Method, Vec<&Outcome>)| !runs.is_empty())
        .collect()
}

/// The common accuracy of [`steps_to`]: the lowest of the RL methods'
/// mean final accuracies, which each method reaches on average.
pub fn common_target(r: &Report) -> Option<f64> {
    rl_methods(r)
        .iter()
        .map(|(_, runs)| mean(runs.iter().map(|o| o.accuracy)))
        .reduce(f64::min)
}

/// The common pass@1 of [`steps_to_pass1`]: the lowest of the RL
/// methods' mean final pass@1 (`None` without sampled evaluations).
pub fn common_pass1(r: &Report) -> Option<f64> {
    rl_methods(r)
        .iter()
        .map(|(_, runs)| {
            let finals: Option<Vec<f64>> = runs
                .iter()
                .map(|o| ends(o).and_then(|(_, b)| b.pass_at.get(&1).copied()))
                .collect();
            finals.map(mean)
        })
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::min)
}

/// The first sampled evaluation at which a run's pass@1 reaches `target`.
pub fn steps_to_pass1(o: &Outcome, target: f64) -> Option<u64> {
    o.rl.as_ref()?
        .evals
        .iter()
        .find(|e| {
            e.scores
                .pass_at
                .get(&1)
                .is_some_and(|&p| p >= target - 1e-9)
        })
        .map(|e| e.step)
}

/// The first evaluated step at which a run's accuracy reaches `target`.
pub fn steps_to(o: &Outcome, target: f64) -> Option<u64> {
    o.curve
        .iter()
        .find(|c| c.accuracy >= target - 1e-9)
        .map(|c| c.step)
}

/// The RL section of the Markdown report; `None` when no RL method ran.
pub fn section(r: &Report) -> Option<String> {
    let methods = rl_methods(r);
    if methods.is_empty() {
        return None;
    }
    let ks: Vec<usize> = methods
        .iter()
        .flat_map(|(_, runs)| runs.iter())
        .find_map(|o| ends(o).map(|(a, _)| a.pass_at.keys().copied().collect()))
        .unwrap_or_default();
    let mut md = String::from("\n## RL after distillation\n\n");
    md.push_str(
        "GRPO from each start (its method's final weights of the same seed). Start → end: held-out \
         greedy accuracy; pass@k of sampled responses (unbiased estimate); entropy, nats per \
         token of the sampling policy; reward, mean of the first and the last 10 steps, and its \
         least-squares rise per 100 steps.\n\n",
    );
    let mut head = String::from("| method | seed | accuracy |");
    for k in &ks {
        let _ = write!(head, " pass@{k} |");
    }
    head.push_str(
        " entropy | response tokens | reward | rise / 100 steps | groups dropped | wall-clock |\n",
    );
    md.push_str(&head);
    md.push_str(&"|---".repeat(ks.len() + 9));
    md.push_str("|\n");
    for (_, runs) in &methods {
        for o in runs {
            let first = o.curve.first().map(|c| c.accuracy);
            let e = ends(o);
            let _ = write!(
                md,
                "| {} | {} | {} |",
                o.method.name(),
                o.seed,
                arrow(first, Some(o.accuracy), pct)
            );
            for k in &ks {
                let at = |s: &SampledScores| s.pass_at.get(k).copied();
                let _ = write!(
                    md,
                    " {} |",
                    arrow(e.and_then(|(a, _)| at(a)), e.and_then(|(_, b)| at(b)), pct)
                );
            }
            let (kept, dropped) = o.rl.as_ref().map_or((0, 0), |t| {
                t.steps.iter().fold((0, 0), |(k, d), s| {
                    (k + s.rl.groups_kept, d + s.rl.groups_dropped)
                })
            });
            let rise = reward_rise(o);
            let _ = writeln!(
                md,
                " {} | {} | {} | {} | {} | {:.1}s |",
                arrow(
                    e.map(|(a, _)| a.entropy),
                    e.map(|(_, b)| b.entropy),
                    |v| format!("{v:.3}")
                ),
                arrow(
                    e.map(|(a, _)| a.response_tokens),
                    e.map(|(_, b)| b.response_tokens),
                    |v| format!("{v:.1}")
                ),
                arrow(rise.map(|r| r.0), rise.map(|r| r.1), |v| format!("{v:.3}")),
                rise.map_or("-".into(), |r| format!("{:+.3}", r.2)),
                if kept + dropped == 0 {
                    "-".into()
                } else {
                    format!("{dropped} of {}", kept + dropped)
                },
                o.wall_s
            );
        }
    }
    if let Some(target) = common_target(r) {
        let pass1 = common_pass1(r);
        let _ = writeln!(
            md,
            "\nMeans over seeds. Steps to {}: the first evaluation at which a run's greedy accuracy reaches the lowest of the methods' mean final accuracies{}; the mean over seeds, \"not reached\" when a seed never does.\n",
            pct(target),
            pass1.map_or(String::new(), |p| format!(
                "; steps to pass@1 {}: the same for pass@1",
                pct(p)
            ))
        );
        let mut head = String::from("| method | seeds | accuracy gain (min) |");
        for k in &ks {
            let _ = write!(head, " pass@{k} gain |");
        }
        head.push_str(&format!(" start entropy | steps to {} |", pct(target)));
        if let Some(p) = pass1 {
            let _ = write!(head, " steps to pass@1 {} |", pct(p));
        }
        head.push('\n');
        md.push_str(&head);
        md.push_str(&"|---".repeat(ks.len() + 5 + usize::from(pass1.is_some())));
        md.push_str("|\n");
        for (m, runs) in &methods {
            let gains: Vec<f64> = runs
                .iter()
                .map(|o| o.accuracy - o.curve.first().map_or(f64::NAN, |c| c.accuracy))
                .collect();
            let min = gains.iter().copied().fold(f64::INFINITY, f64::min);
            let _ = write!(
                md,
                "| {} | {} | {:+.1} ({:+.1}) |",
                m.name(),
                runs.len(),
                100.0 * mean(gains.iter().copied()),
                100.0 * min
            );
            for k in &ks {
                let g = mean(runs.iter().filter_map(|o| {
                    let (a, b) = ends(o)?;
                    Some(b.pass_at.get(k)? - a.pass_at.get(k)?)
                }));
                let _ = write!(md, " {:+.1} |", 100.0 * g);
            }
            let entropy = mean(runs.iter().filter_map(|o| ends(o).map(|(a, _)| a.entropy)));
            let steps = |f: &dyn Fn(&Outcome) -> Option<u64>| -> String {
                let s: Option<Vec<u64>> = runs.iter().map(|o| f(o)).collect();
                s.map_or("not reached".into(), |s| {
                    format!("{:.0}", mean(s.iter().map(|&v| v as f64)))
                })
            };
            let _ = write!(md, " {entropy:.3} | {} |", steps(&|o| steps_to(o, target)));
            if let Some(p) = pass1 {
                let _ = write!(md, " {} |", steps(&|o| steps_to_pass1(o, p)));
            }
            md.push('\n');
        }
    }
    md.push_str(&curves(&methods, &ks));
    md.push_str("\n![reward and accuracy against RL steps](rl.svg)\n\n");
    Some(md)
}

/// Per RL method, the means over seeds at each evaluation: steps,
/// wall-clock, greedy accuracy, pass@k, entropy, response length and the
/// training reward of the steps since the previous evaluation.
fn curves(methods: &[(Method, Vec<&Outcome>)], ks: &[usize]) -> String {
    let mut md = String::from(
        "\nAlong the runs, means over seeds at each evaluation (reward: the training steps \
         since the previous evaluation):\n\n| method | step | wall-clock | accuracy |",
    );
    for k in ks {
        let _ = write!(md, " pass@{k} |");
    }
    md.push_str(" entropy | response tokens | reward |\n");
    md.push_str(&"|---".repeat(ks.len() + 7));
    md.push_str("|\n");
    for (m, runs) in methods {
        let Some(first) = runs.first() else { continue };
        for (i, point) in first.curve.iter().enumerate() {
            let at: Vec<_> = runs
                .iter()
                .filter_map(|o| {
                    let c = o.curve.get(i).filter(|c| c.step == point.step)?;
                    let e = o.rl.as_ref()?.evals.iter().find(|e| e.step == point.step);
                    let prev = i
                        .checked_sub(1)
                        .and_then(|j| o.curve.get(j))
                        .map_or(0, |c| c.step);
                    let reward = mean(
                        o.rl.as_ref()?
                            .steps
                            .iter()
                            .filter(|s| s.step > prev && s.step <= point.step)
                            .map(|s| s.rl.reward),
                    );
                    Some((c, e, reward))
                })
                .collect();
            if at.is_empty() {
                continue;
            }
            let _ = write!(
                md,
                "| {} | {} | {:.1}s | {} |",
                m.name(),
                point.step,
                mean(at.iter().map(|(c, _, _)| c.wall_s)),
                pct(mean(at.iter().map(|(c, _, _)| c.accuracy)))
            );
            for k in ks {
                let v = mean(
                    at.iter()
                        .filter_map(|(_, e, _)| e.and_then(|e| e.scores.pass_at.get(k).copied())),
                );
                let _ = write!(md, " {} |", if v.is_nan() { "-".into() } else { pct(v) });
            }
            let entropy = mean(
                at.iter()
                    .filter_map(|(_, e, _)| e.map(|e| e.scores.entropy)),
            );
            let length = mean(
                at.iter()
                    .filter_map(|(_, e, _)| e.map(|e| e.scores.response_tokens)),
            );
            let reward = mean(at.iter().map(|(_, _, r)| *r).filter(|r| !r.is_nan()));
            let num = |v: f64, d: usize| {
                if v.is_nan() {
                    "-".to_string()
                } else {
                    format!("{v:.d$}")
                }
            };
            let _ = writeln!(
                md,
                " {} | {} | {} |",
                num(entropy, 3),
                num(length, 1),
                num(reward, 3)
            );
        }
    }
    md
}

/// Reward (10-step moving mean) and held-out accuracy against RL steps,
/// one line per run, as SVG; `None` when no RL method ran.
pub fn svg(r: &Report) -> Option<String> {
    let methods = rl_methods(r);
    if methods.is_empty() {
        return None;
    }
    let mut out = String::new();
    if let Err(e) = draw(&methods, &mut out) {
        return Some(format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"20\">chart: {e}</text></svg>\n"
        ));
    }
    Some(out)
}

type Series = Vec<(f64, f64)>;

/// A chart's curve of one run.
type Curve<'f> = &'f dyn Fn(&Outcome) -> Series;

fn draw(
    methods: &[(Method, Vec<&Outcome>)],
    out: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let runs: Vec<&Outcome> = methods
        .iter()
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    let max_step = runs
        .iter()
        .flat_map(|o| o.curve.iter().map(|c| c.step as f64))
        .fold(1.0f64, f64::max);
    let reward = |o: &Outcome| -> Series {
        let steps = o.rl.as_ref().map(|t| t.steps.as_slice()).unwrap_or(&[]);
        (0..steps.len())
            .map(|i| {
                let from = i.saturating_sub(REWARD_WINDOW - 1);
                let w = &steps[from..=i];
                (
                    steps[i].step as f64,
                    w.iter().map(|s| s.rl.reward).sum::<f64>() / w.len() as f64,
                )
            })
            .collect()
    };
    let accuracy = |o: &Outcome| -> Series {
        o.curve
            .iter()
            .map(|c| (c.step as f64, c.accuracy))
            .collect()
    };
    let root = SVGBackend::with_string(out, (1080, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let charts: [(&str, Curve<'_>); 2] = [
        ("training reward (10-step mean)", &reward),
        ("held-out accuracy", &accuracy),
    ];
    for (area, (label, series)) in panels.iter().zip(charts) {
        let lo = runs
            .iter()
            .flat_map(|o| series(o).into_iter().map(|p| p.1))
            .fold(1.0f64, f64::min);
        let hi = runs
            .iter()
            .flat_map(|o| series(o).into_iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let (lo, hi) = ((lo - 0.02).max(0.0), (hi + 0.02).min(1.0).max(lo + 0.05));
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_step * 1.02, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("RL steps")
            .y_desc(label)
            .y_label_formatter(&|a| format!("{:.0}%", 100.0 * a))
            .light_line_style(WHITE)
            .draw()?;
        for o in &runs {
            let style = color(o.method).stroke_width(2);
            let points = series(o);
            let s = if o.seed % 2 == 1 {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?
            } else {
                chart.draw_series(LineSeries::new(points, style))?
            };
            s.label(format!("{} seed {}", o.method.name(), o.seed))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
