//! The run report: a Markdown table, the same data as JSON, and an SVG
//! chart of held-out accuracy against wall-clock.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use npd_core::Method;

use crate::outcome::Outcome;

/// Everything a run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// What was run (task, models, budget), one line each.
    pub setup: Vec<String>,
    /// Teacher held-out accuracy.
    pub teacher_accuracy: f64,
    /// Warm-start student held-out accuracy.
    pub warm_start_accuracy: f64,
    /// One outcome per method and seed.
    pub outcomes: Vec<Outcome>,
    /// Checks made outside the loops (for example the metrics stream
    /// counted against each ledger), one line each.
    #[serde(default)]
    pub checks: Vec<String>,
}

/// Mean over seeds of one method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean wall-clock seconds.
    pub wall_s: f64,
    /// Seeds.
    pub runs: usize,
}

/// NPD's busy time per role, from its stage times: what the disaggregated
/// schedule overlaps when each role has a device of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roles {
    /// Generation (colocated: the loop's `generate` stage; disaggregated:
    /// the generator's own busy time on the engine's thread or server).
    pub generate: f64,
    /// Teacher scoring and filtering.
    pub score: f64,
    /// Training, packing and publishing weights.
    pub train: f64,
}

impl Roles {
    /// The roles of an NPD outcome whose stages name generation (the
    /// colocated `generate` stage, or the disaggregated generator's busy
    /// time); `None` otherwise.
    pub fn of(o: &Outcome) -> Option<Self> {
        let stage = |k: &str| o.stages.get(k).copied().unwrap_or(0.0);
        let generate = *o
            .stages
            .get("generate")
            .or_else(|| o.stages.get(crate::near_policy::GENERATOR_BUSY))?;
        Some(Self {
            generate,
            score: stage("teacher") + stage("filter"),
            train: stage("train") + stage("pack") + stage("publish"),
        })
    }

    /// The wall-clock if the roles overlapped perfectly: the busiest one's.
    pub fn projected(&self) -> f64 {
        self.generate.max(self.score).max(self.train)
    }
}

/// When each method reaches the synchronous baseline's final accuracy
/// (see [`Report::time_to_accuracy`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TimeToAccuracy {
    /// On-policy's final held-out accuracy, mean over seeds.
    pub target: f64,
    /// On-policy's wall-clock, mean over seeds: when it reaches the target.
    pub baseline_s: f64,
    /// Every other method's mean time to the target (`None`: not reached
    /// by every seed), in report order.
    pub methods: Vec<(Method, Option<f64>)>,
}

impl Report {
    /// Mean accuracy and wall-clock per method.
    pub fn summary(&self, method: Method) -> Option<Summary> {
        let runs: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.method == method)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let n = runs.len() as f64;
        Some(Summary {
            accuracy: runs.iter().map(|o| o.accuracy).sum::<f64>() / n,
            wall_s: runs.iter().map(|o| o.wall_s).sum::<f64>() / n,
            runs: runs.len(),
        })
    }

    /// The targets: NPD within 2 points of on-policy's accuracy at no more
    /// than a third of its wall-clock. `None` when either is missing.
    pub fn targets(&self) -> Option<(bool, bool, f64, f64)> {
        let npd = self.summary(Method::NearPolicy)?;
        let on = self.summary(Method::OnPolicy)?;
        let gap = 100.0 * (on.accuracy - npd.accuracy);
        let speedup = on.wall_s / npd.wall_s.max(1e-9);
        Some((gap <= 2.0, speedup >= 3.0, gap, speedup))
    }

    /// NPD's schedule in this report's runs (the first NPD outcome's), and
    /// the mean over NPD seeds of the wall-clock projected with each role
    /// on a device of its own (see [`Roles::projected`]).
    pub fn schedules(&self) -> Option<(Option<npd_rollout::Schedule>, Option<f64>)> {
        let runs: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.method == Method::NearPolicy)
            .collect();
        let first = runs.first()?;
        let projected: Vec<f64> = runs
            .iter()
            .filter_map(|o| Roles::of(o))
            .map(|r| r.projected())
            .collect();
        let mean =
            (!projected.is_empty()).then(|| projected.iter().sum::<f64>() / projected.len() as f64);
        Some((first.schedule, mean))
    }

    /// Time to the baseline's accuracy: the target is on-policy's final
    /// held-out accuracy (mean over seeds), which on-policy reaches at its
    /// mean wall-clock; every other method's time is the wall-clock at
    /// which its accuracy curve first reaches the target (mean over seeds;
    /// `None` when a seed never does).
    pub fn time_to_accuracy(&self) -> Option<TimeToAccuracy> {
        let on = self.summary(Method::OnPolicy)?;
        let target = on.accuracy;
        let mut out = Vec::new();
        for m in Method::DISTILLATION
            .into_iter()
            .filter(|&m| m != Method::OnPolicy)
        {
            let runs: Vec<&Outcome> = self.outcomes.iter().filter(|o| o.method == m).collect();
            if runs.is_empty() {
                continue;
            }
            // Curves are sampled at evaluations; accuracies equal to the
            // target up to rounding count as reaching it.
            let times: Option<Vec<f64>> = runs
                .iter()
                .map(|o| {
                    o.curve
                        .iter()
                        .find(|c| c.accuracy >= target - 1e-9)
                        .map(|c| c.wall_s)
                })
                .collect();
            let mean = times.map(|t| t.iter().sum::<f64>() / t.len() as f64);
            out.push((m, mean));
        }
        Some(TimeToAccuracy {
            target,
            baseline_s: on.wall_s,
            methods: out,
        })
    }

    /// How many student responses hit the length limit, per method (mean
    /// over seeds); `None` when none did.
    pub fn truncated_line(&self) -> Option<String> {
        let parts: Vec<String> = Method::ALL
            .into_iter()
            .filter_map(|m| {
                let runs: Vec<&Outcome> = self.outcomes.iter().filter(|o| o.method == m).collect();
                let total: u64 = runs.iter().map(|o| o.truncated).sum();
                (total > 0).then(|| format!("{} {:.1}", m.name(), total as f64 / runs.len() as f64))
            })
            .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "Student responses that hit `sampling.max_new_tokens`, mean per run (trained on or dropped as `sampling.truncated` says; NPD's dropped ones are filtered as `truncated` in its ledger): {}.",
                parts.join(", ")
            )
        })
    }

    /// The table of results.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let on_wall = self.summary(Method::OnPolicy).map(|s| s.wall_s);
        t.push_str("| method | seed | held-out accuracy | wall-clock | vs on-policy | tokens/s | token efficiency | Δ-IFD keep rate | time per stage |\n");
        t.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for o in self.outcomes.iter().filter(|o| !o.method.is_rl()) {
            // Stages that round to 0.0 s (NPD's filter, packing and
            // publishing) would only crowd the column.
            let stages: Vec<String> = o
                .stages
                .iter()
                .filter(|&(_, &v)| v >= 0.05)
                .map(|(k, v)| format!("{k} {v:.1}s"))
                .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {:.1}% | {:.1}s{} | {} | {:.0} | {:.1}% | {} | {} |",
                o.method.name(),
                o.seed,
                100.0 * o.accuracy,
                o.wall_s,
                if o.prep_reused {
                    " (teacher data reused)".to_string()
                } else if o.prep_s > 0.0 {
                    format!(" (+{:.1}s teacher data)", o.prep_s)
                } else {
                    String::new()
                },
                on_wall.map_or("-".into(), |w| format!("{:.2}x", o.wall_s / w)),
                o.trained_tokens as f64 / o.wall_s.max(1e-9),
                100.0 * o.token_efficiency,
                o.filter
                    .as_ref()
                    .map_or("-".into(), |f| format!("{:.1}%", 100.0 * f.keep_rate())),
                stages.join(", "),
            );
        }
        t
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# NPD run report\n\n");
        for line in &self.setup {
            let _ = writeln!(md, "- {line}");
        }
        let teacher = if self.teacher_accuracy.is_finite() {
            format!("{:.1}%", 100.0 * self.teacher_accuracy)
        } else {
            "not measured (engine.teacher_check = \"skip\")".to_string()
        };
        let _ = writeln!(
            md,
            "- teacher held-out accuracy {teacher}; warm-start student {:.1}%\n",
            100.0 * self.warm_start_accuracy
        );
        md.push_str("## Results\n\n");
        md.push_str(&self.table());
        md.push_str(
            "\nWall-clock excludes evaluation. ![accuracy against wall-clock](accuracy.svg)\n\n",
        );
        if let Some(line) = self.truncated_line() {
            let _ = writeln!(md, "{line}\n");
        }
        if let Some(refresh) = crate::report_refresh::section(self) {
            md.push_str(&refresh);
        }
        if let Some(rl) = crate::report_rl::section(self) {
            md.push_str(&rl);
        }
        if !self.checks.is_empty() {
            md.push_str("## Checks\n\n");
            for line in &self.checks {
                let _ = writeln!(md, "- {line}");
            }
            md.push('\n');
        }
        md.push_str("## Targets\n\n");
        match self.targets() {
            Some((acc_ok, speed_ok, gap, speedup)) => {
                let _ = writeln!(
                    md,
                    "- NPD within 2 points of on-policy accuracy: **{}** (on-policy minus NPD: {gap:+.1} points, mean over seeds)",
                    if acc_ok { "met" } else { "not met" }
                );
                let _ = writeln!(
                    md,
                    "- NPD at least 3x less wall-clock than on-policy: **{}** ({speedup:.2}x)",
                    if speed_ok { "met" } else { "not met" }
                );
                if let Some((schedule, projected)) = self.schedules() {
                    let on = self
                        .summary(Method::OnPolicy)
                        .map_or(f64::NAN, |o| o.wall_s);
                    let measured = match schedule {
                        Some(npd_rollout::Schedule::Disaggregated) => {
                            "disaggregated (generation apart from training, overlapping it)"
                        }
                        _ => "colocated (generation, scoring and training in turn)",
                    };
                    let projection = projected.map_or_else(
                        || "no per-role projection (no generation time recorded)".to_string(),
                        |p| format!(
                            "with each role on a device of its own the same work would take about {p:.1}s, {:.2}x on-policy's wall-clock (a projection from measured busy times, not a measurement)",
                            on / p.max(1e-9)
                        ),
                    );
                    let _ = writeln!(
                        md,
                        "- NPD's schedule in these runs: {measured}, measured above at {speedup:.2}x on-policy's wall-clock; {projection}"
                    );
                }
            }
            None => md.push_str("- not evaluated: NPD or on-policy did not run\n"),
        }
        if let Some(TimeToAccuracy {
            target,
            baseline_s: on_s,
            methods: times,
        }) = self.time_to_accuracy()
        {
            let _ = writeln!(
                md,
                "\n## Time to on-policy's accuracy\n\nThe wall-clock at which each method's accuracy curve first reaches on-policy's final held-out accuracy ({:.1}%, mean over seeds; on-policy: its own wall-clock, {on_s:.1}s), mean over seeds; curves are sampled at the evaluations.\n\n| method | reached at | speed-up over on-policy |\n|---|---|---|",
                100.0 * target
            );
            for (m, t) in times {
                let _ = match t {
                    Some(t) if t <= 0.0 => writeln!(
                        md,
                        "| {} | at the start (the starting weights already score it) | - |",
                        m.name()
                    ),
                    Some(t) => writeln!(md, "| {} | {t:.1}s | {:.2}x |", m.name(), on_s / t),
                    None => writeln!(md, "| {} | not reached | - |", m.name()),
                };
            }
        }
        for o in self.outcomes.iter().filter(|o| !o.resumed_at.is_empty()) {
            let _ = writeln!(
                md,
                "- {} seed {} was resumed from checkpoints after steps {:?} (its wall-clock \
                 counts the work done before each stop and after each resume; steps after \
                 the checkpoint that were lost to the stop are done again and counted once)",
                o.method.name(),
                o.seed,
                o.resumed_at
            );
        }
        md.push_str("\n## NPD details\n\n");
        for o in self
            .outcomes
            .iter()
            .filter(|o| o.method == Method::NearPolicy)
        {
            let _ = writeln!(md, "Seed {}:", o.seed);
            if let Some(f) = &o.filter {
                let _ = writeln!(
                    md,
                    "- Δ-IFD: {} judged, {} kept, dropped {:?}",
                    f.total, f.kept, f.dropped
                );
            }
            if let Some(r) = Roles::of(o) {
                let idle = |busy: f64| (o.wall_s - busy).max(0.0);
                // Apart from training, generation is its own role (the
                // student's thread or server), as is the teacher.
                let (generator, scorer, trainer) = match o.schedule {
                    Some(npd_rollout::Schedule::Disaggregated) => (
                        "student generator (thread or server)",
                        "teacher and filter",
                        "trainer",
                    ),
                    _ => ("generation", "scoring", "training"),
                };
                let against_on_policy = match self.summary(Method::OnPolicy) {
                    Some(on) => format!(
                        "{:.2}x on-policy's mean wall-clock",
                        on.wall_s / r.projected().max(1e-9)
                    ),
                    None => "no ratio to on-policy, which did not run".to_string(),
                };
                let _ = writeln!(
                    md,
                    "- busy (idle) time per role over {:.1}s: {generator} {:.1}s ({:.1}s), {scorer} {:.1}s ({:.1}s), {trainer} {:.1}s ({:.1}s; packing and publishing included); with each role on a device of its own the run would take about {:.1}s, the busiest role's time ({against_on_policy}; a projection from measured busy times, not a measurement)",
                    o.wall_s,
                    r.generate,
                    idle(r.generate),
                    r.score,
                    idle(r.score),
                    r.train,
                    idle(r.train),
                    r.projected(),
                );
            }
            let hist: Vec<String> = o
                .staleness
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                md,
                "- staleness (optimizer steps behind → samples): {}",
                hist.join(", ")
            );
            if let Some(l) = &o.ledger {
                let _ = writeln!(
                    md,
                    "- ledger: {} prompts; trained {}, filtered {:?}, failed {:?}, unfinished at the end {}; adds up: {}; dataset records rejected before the run: {}",
                    l.total,
                    l.trained,
                    l.filtered,
                    l.failed,
                    l.open,
                    l.adds_up(),
                    l.rejected
                );
            }
        }
        md
    }

    /// Held-out accuracy against wall-clock, one line per run (dashed for
    /// odd seeds), as SVG.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        if let Err(e) = self.draw(&mut out) {
            // Drawing into a string cannot fail for want of a file; an
            // error here is a bug in the chart, so the report shows it.
            return format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"20\">chart: {e}</text></svg>\n"
            );
        }
        out
    }

    fn draw(&self, out: &mut String) -> Result<(), Box<dyn std::error::Error + '_>> {
        use plotters::prelude::*;
        let max_t = self
            .outcomes
            .iter()
            .filter(|o| !o.method.is_rl())
            .flat_map(|o| o.curve.iter().map(|c| c.wall_s))
            .fold(1e-9f64, f64::max);
        let root = SVGBackend::with_string(out, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_t * 1.02, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("wall-clock, s (evaluation excluded)")
            .y_desc("held-out accuracy")
            .y_label_formatter(&|a| format!("{:.0}%", 100.0 * a))
            .x_label_formatter(&|t| format!("{t:.0}"))
            .light_line_style(WHITE)
            .draw()?;
        for o in self.outcomes.iter().filter(|o| !o.method.is_rl()) {
            let c = color(o.method);
            let points = o.curve.iter().map(|p| (p.wall_s, p.accuracy));
            let label = format!(
                "{} seed {}: {:.1}%",
                o.method.name(),
                o.seed,
                100.0 * o.accuracy
            );
            let style = c.stroke_width(2);
            let dashed = o.seed % 2 == 1;
            let series = if dashed {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?
            } else {
                chart.draw_series(LineSeries::new(points, style))?
            };
            // A dashed legend sample for a dashed line: two segments.
            let (gap_from, gap_to) = if dashed { (7, 11) } else { (20, 20) };
            series.label(label).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (gap_from, 0)], style)
                    + PathElement::new(vec![(gap_to, 0), (20, 0)], style)
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// The colour of a method's lines in the charts.
pub(crate) fn color(m: Method) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match m {
        Method::Sft => RGBColor(0x2b, 0x8a, 0x3e),
        Method::OnPolicy => RGBColor(0xc9, 0x2a, 0x2a),
        Method::NearPolicy => RGBColor(0x18, 0x64, 0xab),
        Method::Rl => RGBColor(0x86, 0x8e, 0x96),
        Method::SftRl => RGBColor(0x74, 0xb8, 0x16),
        Method::OnPolicyRl => RGBColor(0xf0, 0x8c, 0x00),
        Method::NearPolicyRl => RGBColor(0x7b, 0x2c, 0xbf),
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
