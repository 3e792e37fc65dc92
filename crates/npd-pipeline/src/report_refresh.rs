//! The report's weight-refresh section: what handing the learner's weights
//! to the generator cost each method, and how the on-policy vs NPD
//! comparison reads with and without that cost.

use std::fmt::Write;

use npd_core::Method;

use crate::near_policy::{GENERATOR_RELOAD, PUBLISH, RELOAD};
use crate::report::Report;

/// One method's weight refreshes, mean over its seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshCost {
    /// Method.
    pub method: Method,
    /// Seeds averaged.
    pub runs: usize,
    /// Refreshes per run.
    pub refreshes: f64,
    /// Seconds per run writing the weights (the loop waits).
    pub publish_s: f64,
    /// Seconds per run the loop waited for the generator to load them.
    pub reload_s: f64,
    /// Seconds per run the generator's own thread or server spent loading
    /// them while the loop went on (disaggregated NPD).
    pub overlapped_s: f64,
    /// Wall-clock per run.
    pub wall_s: f64,
}

impl RefreshCost {
    /// The mean refresh cost of `method` in `report`; `None` when it did
    /// not run or never refreshed a generator.
    pub fn of(report: &Report, method: Method) -> Option<Self> {
        let runs: Vec<_> = report
            .outcomes
            .iter()
            .filter(|o| o.method == method && o.refreshes > 0)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let n = runs.len() as f64;
        let mean = |f: &dyn Fn(&crate::Outcome) -> f64| runs.iter().map(|o| f(o)).sum::<f64>() / n;
        let stage = |o: &crate::Outcome, k: &str| o.stages.get(k).copied().unwrap_or(0.0);
        Some(Self {
            method,
            runs: runs.len(),
            refreshes: mean(&|o| o.refreshes as f64),
            publish_s: mean(&|o| stage(o, PUBLISH)),
            reload_s: mean(&|o| stage(o, RELOAD)),
            overlapped_s: mean(&|o| stage(o, GENERATOR_RELOAD)),
            wall_s: mean(&|o| o.wall_s),
        })
    }

    /// Seconds of the loop's wall-clock spent on refreshes.
    pub fn paid_s(&self) -> f64 {
        self.publish_s + self.reload_s
    }

    /// The wall-clock without the refreshes the loop waited for.
    pub fn without_s(&self) -> f64 {
        (self.wall_s - self.paid_s()).max(0.0)
    }
}

/// The section, when any method refreshed a generator.
pub(crate) fn section(report: &Report) -> Option<String> {
    let costs: Vec<RefreshCost> = Method::ALL
        .into_iter()
        .filter_map(|m| RefreshCost::of(report, m))
        .collect();
    if costs.is_empty() {
        return None;
    }
    let mut md = String::from(
        "## Weight refresh\n\nWriting the learner's weights for the generator (publish) and the generator loading them (reload; for a disaggregated NPD the generator's thread or server reloads while the trainer goes on), mean per run over seeds.\n\n| method | refreshes | publish per refresh | reload per refresh | loop time on refreshes | wall-clock | without refreshes |\n|---|---|---|---|---|---|---|\n",
    );
    for c in &costs {
        let per = |s: f64| s / c.refreshes.max(1.0);
        let reload = if c.overlapped_s > 0.0 {
            format!(
                "{:.3}s on the generator, overlapped",
                per(c.overlapped_s + c.reload_s)
            )
        } else {
            format!("{:.3}s", per(c.reload_s))
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.3}s | {reload} | {:.1}s ({:.0}%) | {:.1}s | {:.1}s |",
            c.method.name(),
            c.refreshes,
            per(c.publish_s),
            c.paid_s(),
            100.0 * c.paid_s() / c.wall_s.max(1e-9),
            c.wall_s,
            c.without_s(),
        );
    }
    let find = |m: Method| costs.iter().find(|c| c.method == m);
    if let (Some(on), Some(npd)) = (find(Method::OnPolicy), find(Method::NearPolicy)) {
        let _ = writeln!(
            md,
            "\nOn-policy over NPD wall-clock: {:.2}x as measured, {:.2}x without the time the loop spent on refreshes (on-policy refreshes every step; NPD every `rollout.refresh_every` steps).",
            on.wall_s / npd.wall_s.max(1e-9),
            on.without_s() / npd.without_s().max(1e-9),
        );
    }
    md.push('\n');
    Some(md)
}
