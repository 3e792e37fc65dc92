//! `--plan`: what a run would do and what it would cost, before doing it.
//!
//! The plan states the work (prompts and rollouts per method, sequence
//! lengths), the memory plan per role, and an ETA: every method runs
//! [`PLAN_STEPS`] steps for real on a sample of the prompts, with the run's
//! own stages, settings and evaluation, and the measured time per step, per
//! evaluation and per SFT prompt is extrapolated to the whole budget.
//! Nothing is written to the output folder.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};

use npd_core::events::Event;
use npd_core::{Method, Prompt};
use npd_pipeline::{Comparison, Settings, Stages};

use crate::config::RunConfig;
use crate::inputs::Inputs;
use crate::{Control, Ended, memory_check, servers};
use npd_engine::EngineKind;
use npd_train::served::ServedStages;
use npd_train::stages::TchStages;

/// Steps each method runs to measure its cost.
pub const PLAN_STEPS: u64 = 2;

/// What one method's measured steps cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// The method measured.
    pub method: Method,
    /// Seconds per optimizer step (evaluation excluded).
    pub step_s: f64,
    /// Seconds per held-out evaluation.
    pub eval_s: f64,
    /// SFT: seconds the teacher took per training prompt it answered.
    pub prep_per_prompt_s: f64,
    /// NPD: the Δ-IFD filter's keep rate in the measured steps.
    pub keep_rate: Option<f64>,
}

/// Held-out evaluations of a run of `steps` steps evaluated every
/// `every`: at the start, at each multiple of `every`, and at the end.
pub fn evaluations(steps: u64, every: u64) -> u64 {
    let every = every.max(1);
    1 + steps / every + u64::from(!steps.is_multiple_of(every))
}

/// The ETA of one run of `method` of `steps` steps: its steps and
/// evaluations, and for the first SFT run the teacher's responses to
/// `prompts` training prompts.
pub fn eta(m: &Measured, steps: u64, eval_every: u64, prompts: usize, first: bool) -> f64 {
    let prep = if first && m.method == Method::Sft {
        m.prep_per_prompt_s * prompts as f64
    } else {
        0.0
    };
    steps as f64 * m.step_s + evaluations(steps, eval_every) as f64 * m.eval_s + prep
}

/// Runs each method (an RL method: the RL stage from the warm start)
/// [`PLAN_STEPS`] steps on the first prompts and measures it.
fn measure<S: Stages>(
    stages: &S,
    settings: &Settings,
    inputs: &Inputs,
    prompts: &[Prompt],
    methods: &[Method],
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<Measured>> {
    let mut s = settings.clone();
    s.steps = PLAN_STEPS;
    s.eval_every = PLAN_STEPS;
    s.rl.steps = PLAN_STEPS;
    s.rl.eval_every = PLAN_STEPS;
    let per_step = settings.samples_per_step.max(settings.rl.prompts_per_step);
    let n = prompts.len().min(2 * PLAN_STEPS as usize * per_step.max(1));
    let sample = &prompts[..n];
    // The starting score is not what the plan measures: no evaluation at
    // step 0, one at the last step.
    let mut comparison = Comparison::new(stages, &s, sample).with_start_score(Some(0.0));
    if let Some(responses) = &inputs.sft_responses {
        comparison = comparison.with_sft_responses(responses[..n].to_vec())?;
    }
    if let Some(teacher) = &inputs.teacher_train {
        comparison = comparison.with_teacher_prompts(teacher[..n].to_vec())?;
    }
    let mut out: Vec<Measured> = Vec::new();
    for &method in methods {
        // Every RL stage costs what the RL stage from the warm start does.
        let measured = if method.is_rl() { Method::Rl } else { method };
        if let Some(m) = out.iter().find(|m| m.method == measured) {
            out.push(Measured { method, ..*m });
            continue;
        }
        let started = Instant::now();
        let end = comparison
            .run(measured, 0, &mut |_: &Event| {}, stop)
            .with_context(|| format!("measuring {}", measured.name()))?;
        let elapsed = started.elapsed().as_secs_f64();
        let Some(o) = end.finished() else {
            anyhow::bail!("stopped on request while measuring {}", measured.name());
        };
        out.push(Measured {
            method,
            step_s: o.wall_s / PLAN_STEPS as f64,
            eval_s: (elapsed - o.wall_s - o.prep_s).max(0.0),
            prep_per_prompt_s: if o.prep_reused {
                0.0
            } else {
                o.prep_s / n as f64
            },
            keep_rate: o.filter.as_ref().map(|f| f.keep_rate()),
        });
    }
    Ok(out)
}

/// Minimum, median, 95th percentile and maximum.
fn spread(mut v: Vec<usize>) -> (usize, usize, usize, usize) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (v[0], at(0.5), at(0.95), v[v.len() - 1])
}

fn duration(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{s:.2}s"),
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Everything the plan needs from the run being planned.
pub struct Planned<'a> {
    /// The configuration.
    pub config: &'a RunConfig,
    /// The models and prompts.
    pub inputs: &'a Inputs,
    /// The loops' settings.
    pub settings: &'a Settings,
    /// The training prompts.
    pub prompts: &'a [Prompt],
    /// Methods, in run order.
    pub methods: &'a [Method],
    /// Seeds per method.
    pub seeds: u64,
    /// Seconds the inputs took (loading, the teacher's accuracy check).
    pub inputs_s: f64,
    /// The memory plan table.
    pub memory: String,
}

/// The plan as text: the work, the memory plan and the ETA.
pub fn plan<S: Stages>(
    stages: &S,
    p: &Planned<'_>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<String> {
    let (c, s) = (p.config, p.settings);
    let mut out = String::from("# Plan\n\n");
    let lengths: Vec<usize> = p.inputs.train.iter().map(|e| e.prompt.len()).collect();
    let (min, median, p95, max) = spread(lengths);
    let _ = writeln!(
        out,
        "- {} training prompts, {} held out; prompt tokens min {min}, median {median}, 95th \
         percentile {p95}, max {max}; responses up to {} tokens (sampling.max_new_tokens), so \
         sequences up to {} tokens; rows of {} tokens (pack.capacity)",
        p.prompts.len(),
        p.inputs.eval.len(),
        c.sampling.max_new_tokens,
        max + c.sampling.max_new_tokens,
        c.pack.capacity
    );
    let _ = writeln!(
        out,
        "- {} method(s) x {} seed(s); inputs loaded in {}{}",
        p.methods.len(),
        p.seeds,
        duration(p.inputs_s),
        match c.engine.teacher_check_on_server() {
            Some(false) => ", the teacher's accuracy check included",
            Some(true) => " (the teacher's accuracy check on its servers is not part of the plan)",
            None => " (engine.teacher_check = \"skip\")",
        }
    );
    let measured = measure(stages, s, p.inputs, p.prompts, p.methods, stop)?;
    out.push_str(
        "\n| method | steps | prompts per seed | epochs | rollouts per seed | measured per step | per evaluation | evaluations | ETA per seed |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut total = 0.0;
    let mut sft_seen = false;
    for m in &measured {
        let (steps, every, prompts_per_step) = if m.method.is_rl() {
            (c.rl.steps, c.rl.eval_every, c.rl.prompts_per_step)
        } else {
            (c.train.steps, s.eval_every, c.train.rows_per_step)
        };
        let prompts = steps as usize * prompts_per_step;
        let rollouts = match m.method {
            Method::Sft => "- (teacher-written)".to_string(),
            Method::NearPolicy => {
                let keep = m.keep_rate.filter(|k| *k > 0.0).unwrap_or(1.0);
                format!(
                    "about {:.0} (keep rate {:.0}% measured, reuse {})",
                    prompts as f64 / keep / c.rollout.reuse.max(1) as f64,
                    100.0 * keep,
                    c.rollout.reuse
                )
            }
            r if r.is_rl() => format!(
                "{} ({} per prompt)",
                prompts * c.rl.group_size,
                c.rl.group_size
            ),
            _ => prompts.to_string(),
        };
        let mut per_seed = Vec::new();
        for seed in 0..p.seeds {
            let first = m.method == Method::Sft && !sft_seen && seed == 0;
            per_seed.push(eta(m, steps, every, p.prompts.len(), first));
        }
        sft_seen |= m.method == Method::Sft;
        total += per_seed.iter().sum::<f64>();
        let _ = writeln!(
            out,
            "| {}{} | {steps} | {prompts} | {:.1} | {rollouts} | {} | {} | {} | {}{} |",
            m.method.name(),
            if m.method.is_rl() && m.method != Method::Rl {
                " (RL stage)"
            } else {
                ""
            },
            prompts as f64 / p.prompts.len().max(1) as f64,
            duration(m.step_s),
            duration(m.eval_s),
            evaluations(steps, every),
            duration(per_seed.first().copied().unwrap_or(0.0)),
            if m.method == Method::Sft && m.prep_per_prompt_s > 0.0 {
                format!(
                    " (first seed: {} of it the teacher writing {} responses)",
                    duration(m.prep_per_prompt_s * p.prompts.len() as f64),
                    p.prompts.len()
                )
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(
        out,
        "\nETA of the whole run: about {} (from {PLAN_STEPS} measured steps per method on {} \
         prompts, extrapolated; the first steps include warm-up, and NPD's keep rate and \
         response lengths change as the student learns: an estimate, not a promise)\n",
        duration(total),
        p.prompts
            .len()
            .min(2 * PLAN_STEPS as usize * s.samples_per_step.max(1)),
    );
    out.push_str(&p.memory);
    Ok(out)
}

/// `--plan`: the plan of the run, measured with its own stages (on its
/// servers, which write their logs to a scratch folder); nothing is written
/// to the output folder.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    config: &RunConfig,
    inputs: &Inputs,
    stages: TchStages<'_>,
    (settings, prompts): (&Settings, &[npd_core::Prompt]),
    methods: &[Method],
    seeds: u64,
    started: Instant,
    control: &Control,
) -> Result<Ended> {
    let memory = memory_check::plan(config, inputs.teacher.config(), &inputs.student).table()
        + &memory_check::teacher_plan(config, inputs.teacher.config())
            .map(|p| p.table())
            .unwrap_or_default();
    let planned = Planned {
        config,
        inputs,
        settings,
        prompts,
        methods,
        seeds,
        inputs_s: started.elapsed().as_secs_f64(),
        memory,
    };
    let text = match config.engine.kind {
        EngineKind::InProcess => plan(&stages, &planned, &control.stop)?,
        EngineKind::Vllm => {
            let scratch = std::env::temp_dir().join(format!("npd-plan-{}", std::process::id()));
            let running = servers::start(config, inputs, &scratch, &control.abandon_waits)?;
            let served = ServedStages::new(stages, running.servers.clone());
            let text = plan(&served, &planned, &control.stop);
            drop(running);
            let _ = std::fs::remove_dir_all(&scratch);
            text?
        }
    };
    Ok(Ended::Checked(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_count_the_start_every_interval_and_the_end() {
        assert_eq!(evaluations(100, 10), 11);
        assert_eq!(evaluations(105, 10), 12);
        assert_eq!(evaluations(2, 2), 2);
        assert_eq!(evaluations(3, 0), 4);
    }

    #[test]
    fn the_eta_adds_steps_evaluations_and_sft_data_once() {
        let m = Measured {
            method: Method::Sft,
            step_s: 2.0,
            eval_s: 10.0,
            prep_per_prompt_s: 0.5,
            keep_rate: None,
        };
        // 100 steps, 11 evaluations, 40 prompts answered by the teacher.
        assert_eq!(eta(&m, 100, 10, 40, true), 200.0 + 110.0 + 20.0);
        assert_eq!(eta(&m, 100, 10, 40, false), 310.0);
        let npd = Measured {
            method: Method::NearPolicy,
            ..m
        };
        assert_eq!(eta(&npd, 100, 10, 40, true), 310.0);
    }
}
