//! The run report: a Markdown table, the same data as JSON, and an SVG
//! chart of held-out accuracy against wall-clock.

use std::collections::BTreeMap;
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

    /// The table of results.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let on_wall = self.summary(Method::OnPolicy).map(|s| s.wall_s);
        t.push_str("| method | seed | held-out accuracy | wall-clock | vs on-policy | tokens/s | token efficiency | Δ-IFD keep rate | time per stage |\n");
        t.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for o in &self.outcomes {
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
        let _ = writeln!(
            md,
            "- teacher held-out accuracy {:.1}%; warm-start student {:.1}%\n",
            100.0 * self.teacher_accuracy,
            100.0 * self.warm_start_accuracy
        );
        md.push_str("## Results\n\n");
        md.push_str(&self.table());
        md.push_str(
            "\nWall-clock excludes evaluation. ![accuracy against wall-clock](accuracy.svg)\n\n",
        );
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
            }
            None => md.push_str("- not evaluated: NPD or on-policy did not run\n"),
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

    /// Held-out accuracy against wall-clock, one line per run.
    pub fn svg(&self) -> String {
        let (w, h, ml, mb, mt, mr) = (720.0, 420.0, 60.0, 50.0, 20.0, 170.0);
        let max_t = self
            .outcomes
            .iter()
            .flat_map(|o| o.curve.iter().map(|c| c.wall_s))
            .fold(1e-9f64, f64::max);
        let x = |t: f64| ml + (w - ml - mr) * t / max_t;
        let y = |a: f64| mt + (h - mt - mb) * (1.0 - a);
        let colors: BTreeMap<Method, &str> = [
            (Method::Sft, "#2b8a3e"),
            (Method::OnPolicy, "#c92a2a"),
            (Method::NearPolicy, "#1864ab"),
        ]
        .into_iter()
        .collect();
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        for i in 0..=5 {
            let a = i as f64 / 5.0;
            let (x2, ya, tx, ty) = (w - mr, y(a), ml - 6.0, y(a) + 4.0);
            let pct = 100.0 * a;
            let _ = writeln!(
                s,
                "<line x1=\"{ml}\" x2=\"{x2}\" y1=\"{ya:.1}\" y2=\"{ya:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{pct:.0}%</text>"
            );
            let t = max_t * i as f64 / 5.0;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.0}s</text>",
                x(t),
                h - mb + 18.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">wall-clock (evaluation excluded)</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">held-out accuracy</text>",
            ml + (w - ml - mr) / 2.0,
            h - 12.0,
            mt + (h - mt - mb) / 2.0,
            mt + (h - mt - mb) / 2.0
        );
        for (i, o) in self.outcomes.iter().enumerate() {
            let color = colors[&o.method];
            let pts: Vec<String> = o
                .curve
                .iter()
                .map(|c| format!("{:.1},{:.1}", x(c.wall_s), y(c.accuracy)))
                .collect();
            let dash = if o.seed % 2 == 1 {
                " stroke-dasharray=\"5 3\""
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                pts.join(" ")
            );
            let ly = mt + 16.0 * i as f64 + 10.0;
            let _ = writeln!(
                s,
                "<line x1=\"{0}\" x2=\"{1}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{2}\" y=\"{3}\">{4} seed {5}: {6:.1}%</text>",
                w - mr + 10.0,
                w - mr + 30.0,
                w - mr + 36.0,
                ly + 4.0,
                o.method.name(),
                o.seed,
                100.0 * o.accuracy
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            staleness: BTreeMap::new(),
            ledger: None,
            resumed_at: Vec::new(),
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
}
