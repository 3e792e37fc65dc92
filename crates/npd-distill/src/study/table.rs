//! The study's table: one row per regime, mean and spread over seeds.

use std::path::Path;

use anyhow::{Context, Result};

use super::{Cell, EARLY_STEPS, RunResult, StudyFile};

/// Mean and sample standard deviation.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn cell(c: Option<&Cell>) -> String {
    match c {
        Some(c) if !c.accuracy.is_empty() => {
            let (m, sd) = mean_sd(&c.accuracy);
            let lo = c.accuracy.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = c.accuracy.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!(
                "{:.1} ± {:.1} ({:.1}–{:.1})",
                100.0 * m,
                100.0 * sd,
                100.0 * lo,
                100.0 * hi
            )
        }
        _ => "–".into(),
    }
}

fn mean_of(c: Option<&Cell>) -> Option<f64> {
    c.filter(|c| !c.accuracy.is_empty())
        .map(|c| mean_sd(&c.accuracy).0)
}

/// The study's table: one row per regime.
pub fn table(grid: &StudyFile, results: &[RunResult]) -> String {
    let mut regimes: Vec<&str> = Vec::new();
    for r in results {
        if !regimes.contains(&r.regime.as_str()) {
            regimes.push(&r.regime);
        }
    }
    // Every grid's axis columns, in order of first appearance.
    let mut axes: Vec<String> = Vec::new();
    for (k, _) in results.iter().flat_map(|r| &r.axes) {
        if !axes.contains(k) {
            axes.push(k.clone());
        }
    }
    let mut header: Vec<String> = axes.clone();
    header.extend(
        [
            "teacher",
            "student at start",
            "SFT",
            "on-policy",
            "NPD",
            "NPD w/o Δ-IFD",
            "NPD − SFT",
            "NPD − on-policy",
            "Δ-IFD gain",
            "wall-clock s (SFT / on-policy / NPD / w/o Δ-IFD)",
            "NPD ÷ on-policy wall-clock",
        ]
        .map(String::from),
    );
    let mut s = format!(
        "Held-out accuracy, %: mean ± sample standard deviation (min–max) over {} seed(s); \
         differences in points between means.\n\n| {} |\n|{}|\n",
        grid.study.seeds,
        header.join(" | "),
        vec!["---"; header.len()].join("|")
    );
    for regime in regimes {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.regime == regime).collect();
        let find = |filter: bool, method: &str| {
            runs.iter()
                .find(|r| r.filter == filter && r.methods.contains_key(method))
                .and_then(|r| r.methods.get(method))
        };
        let main = runs[0];
        let method = |name: &str| {
            find(true, name).or_else(|| {
                (!runs.iter().any(|r| r.filter))
                    .then(|| find(false, name))
                    .flatten()
            })
        };
        let npd = find(true, "NPD");
        let npd_off = find(false, "NPD");
        let diff = |a: Option<&Cell>, b: Option<&Cell>| match (mean_of(a), mean_of(b)) {
            (Some(a), Some(b)) => format!("{:+.1}", 100.0 * (a - b)),
            _ => "–".into(),
        };
        let wall_mean = |c: Option<&Cell>| {
            c.filter(|c| !c.wall_s.is_empty())
                .map(|c| mean_sd(&c.wall_s).0)
        };
        let wall = |c: Option<&Cell>| wall_mean(c).map_or("–".into(), |w| format!("{w:.0}"));
        let mut row: Vec<String> = (axes.iter())
            .map(|a| {
                (main.axes.iter())
                    .find(|(k, _)| k == a)
                    .map_or("–".into(), |(_, v)| v.clone())
            })
            .collect();
        row.extend([
            format!("{:.1}", 100.0 * main.teacher_accuracy),
            format!("{:.1}", 100.0 * main.warm_start_accuracy),
            cell(method("SFT")),
            cell(method("on-policy")),
            cell(npd),
            cell(npd_off),
            diff(npd, method("SFT")),
            diff(npd, method("on-policy")),
            diff(npd, npd_off),
            format!(
                "{} / {} / {} / {}",
                wall(method("SFT")),
                wall(method("on-policy")),
                wall(npd),
                wall(npd_off)
            ),
            match (wall_mean(npd), wall_mean(method("on-policy"))) {
                (Some(a), Some(b)) => format!("{:.2}", a / b),
                _ => "–".into(),
            },
        ]);
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s
}

/// Each method against the student it started from: the change of the
/// final accuracy, the deepest fall in the first [`EARLY_STEPS`] steps and
/// over the whole run, and how many seeds end at least 3 points above the
/// start.
pub fn start_table(results: &[RunResult]) -> String {
    let mut s = format!(
        "Points against the student at start, mean over seeds (worst seed): final \
         accuracy, lowest evaluation in the first {EARLY_STEPS} steps, lowest evaluation of \
         the run; and the seeds that end at least 3 points above the start.\n\n\
         | regime | method | final − start | first-{EARLY_STEPS}-step low − start | \
         lowest − start | seeds ≥ +3 |\n|---|---|---|---|---|---|\n"
    );
    for r in results {
        for (name, c) in &r.methods {
            if c.accuracy.is_empty() {
                continue;
            }
            let start = r.warm_start_accuracy;
            let points = |v: &[f64]| {
                let d: Vec<f64> = v.iter().map(|a| 100.0 * (a - start)).collect();
                if d.is_empty() || d.iter().any(|x| x.is_nan()) {
                    return "–".to_string();
                }
                let worst = d.iter().copied().fold(f64::INFINITY, f64::min);
                format!("{:+.1} ({:+.1})", mean_sd(&d).0, worst)
            };
            let up = c.accuracy.iter().filter(|a| **a >= start + 0.03).count();
            s.push_str(&format!(
                "| {} | {name} | {} | {} | {} | {up} of {} |\n",
                r.name,
                points(&c.accuracy),
                points(&c.early_low),
                points(&c.lowest),
                c.accuracy.len()
            ));
        }
    }
    s
}

pub(super) fn write_tables(
    out: &Path,
    grid: &StudyFile,
    results: &[RunResult],
    total: usize,
) -> Result<()> {
    let mut md = format!(
        "# Study\n\n{} of {} runs finished.\n\n{}\n## Against the start\n\n{}\n\
         ## Warm starts\n\n",
        results.len(),
        total,
        table(grid, results),
        start_table(results)
    );
    for r in results.iter().filter(|r| r.filter) {
        md.push_str(&format!("- {}: {}\n", r.regime, r.warm_start));
    }
    crate::run_dir::write(&out.join("study.md"), &md)?;
    crate::run_dir::write(
        &out.join("study.json"),
        &serde_json::to_string_pretty(results).context("study.json")?,
    )
}
