//! The report's setup lines on how a comparison ran: its budget, and what
//! each method ran with (threads, wait policy, NPD's schedule, and with vLLM
//! servers the probe checks of every weight refresh).

use npd_engine::ProbeLog;
use npd_pipeline::Comparison;
use npd_train::TchStages;
use npd_train::served::ServedStages;
use npd_train::stages::Threads;

use crate::config::RunConfig;

/// The report's line on what each method ran with: threads, wait policy,
/// and NPD's schedule.
pub(crate) fn settings_line(
    comparison: &Comparison<'_, TchStages<'_>>,
    threads: Threads,
    total_s: f64,
) -> String {
    let policy = std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into());
    let npd = match comparison.resolved().running_schedule() {
        npd_rollout::Schedule::Disaggregated => format!(
            "NPD disaggregated: generation on its own thread ({} libtorch threads) beside training",
            threads.generate
        ),
        _ => "NPD colocated: generation, scoring and training in turn, each with every thread"
            .to_string(),
    };
    format!(
        "every method: {} libtorch threads, OMP_WAIT_POLICY={policy}; {npd}; total run time {total_s:.0}s",
        threads.train
    )
}

/// The report's line on what each method ran with when vLLM servers
/// generate and score: the trainer's threads and wait policy, NPD's
/// schedule, and the probe checks of every weight refresh.
pub(crate) fn served_line(
    comparison: &Comparison<'_, ServedStages<'_>>,
    checks: &ProbeLog,
    total_s: f64,
) -> String {
    let policy = std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into());
    let checks = checks.lock().unwrap_or_else(|e| e.into_inner());
    let worst = checks.iter().map(|c| c.max_abs_diff).fold(0.0, f64::max);
    let failed = checks.iter().filter(|c| !c.passed).count();
    let servers = comparison.stages().servers();
    let group = |g: &npd_engine::ServerGroup| {
        let (n, live) = (g.members().len(), g.live());
        if live == n {
            format!("{n}")
        } else {
            format!("{n} ({} stopped answering during this process)", n - live)
        }
    };
    format!(
        "vLLM servers generate and score ({} student, {} teacher; held-out evaluation {}); the trainer runs {} libtorch threads, OMP_WAIT_POLICY={policy}; NPD {}; weight refreshes verified by probe: {} checks, {failed} failed, largest log-prob difference {worst:.2e}; total run time {total_s:.0}s",
        group(&servers.student),
        group(&servers.teacher),
        servers
            .eval
            .as_ref()
            .map_or("in-process".to_string(), |g| format!(
                "on {} server(s) loaded with the learner's weights at each evaluation",
                group(g)
            )),
        comparison.stages().local().threads().train,
        match comparison.resolved().running_schedule() {
            npd_rollout::Schedule::Disaggregated =>
                "disaggregated (generation on the student server, overlapping training)",
            _ => "colocated",
        },
        checks.len(),
    )
}

/// The report's budget line.
pub(crate) fn budget_line(config: &RunConfig) -> String {
    format!(
        "budget: {} steps x {} samples per method and seed, {}; loss {:?}, top-k {}; NPD K = {}, max lag {}, reuse {}, Δ-IFD {}",
        config.train.steps,
        config.train.rows_per_step,
        match config.pack.baselines {
            npd_pack::BaselineRows::Packed => "every method on packed rows",
            npd_pack::BaselineRows::Padded =>
                "SFT and on-policy on padded batches, NPD on packed rows",
        },
        config.train.loss,
        config.train.top_k,
        config.rollout.refresh_every,
        config.rollout.max_lag,
        config.rollout.reuse,
        if config.filter.enabled {
            format!(
                "band [{}, {}]",
                config.filter.lower_percentile, config.filter.upper_percentile
            )
        } else {
            "off".to_string()
        }
    )
}
