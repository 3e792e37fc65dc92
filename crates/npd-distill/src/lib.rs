//! The `distill_openpangu` application as a library call: Near-Policy
//! Distillation of a teacher into a student, side by side with SFT and
//! synchronous on-policy distillation, from the same warm start, on the
//! same prompts and budget, with `report.md`, `report.json`,
//! `metrics.jsonl` and `accuracy.svg` in the output folder.
//!
//! - [`embedded`]: the embedded default (a seeded arithmetic task, its
//!   tokenizer, a teacher of the openPangu architecture trained and cached
//!   on first use, a warm-started student);
//! - [`inputs`]: the embedded default or the model folders and prompts
//!   file of a configuration;
//! - [`run_dir`]: the output folder (what a run started with, resume);
//! - [`checks`]: what can only be checked with the models, prompts or
//!   metrics in hand;
//! - [`memory_check`]: the memory plan per role that `--check` prints
//!   and refuses when it exceeds the device;
//! - [`progress`]: bars on a terminal, log lines elsewhere;
//! - [`configure`]: the embedded default's values, the file's and the
//!   command line's, checked as a whole.
//!
//! [`distill`] runs it; the example's `main.rs` only parses the command
//! line and handles signals.

pub mod checks;
pub mod config;
mod configure;
pub mod embedded;
pub mod fingerprint;
pub mod inputs;
pub mod memory_check;
pub mod plan;
pub mod progress;
pub mod publish_root;
pub mod run_dir;
pub mod servers;
pub mod signals;
pub mod study;
mod summary;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use npd_core::events::Event;
pub use npd_engine::EngineKind;
use npd_pipeline::Stages;
use npd_pipeline::{Checkpoints, Comparison, Method, Report, RunEnd, Settings};
use npd_train::TchStages;
use npd_train::served::ServedStages;
use npd_train::stages::Threads;

pub use crate::config::RunConfig;
pub use crate::configure::{Options, configure, embedded_defaults};
use crate::inputs::Inputs;
use crate::progress::Progress;
use crate::summary::{budget_line, served_line, settings_line};

/// Ctrl-C as the application sees it: `stop` asks the running method to
/// finish its step and checkpoint, or the preparation of the embedded
/// models to end after its current step; `in_run` tells whether a method
/// is running.
#[derive(Debug, Default)]
pub struct Control {
    /// Set by the signal handler.
    pub stop: AtomicBool,
    /// Set while methods run.
    pub in_run: AtomicBool,
    /// Set by the signal handler a moment after `stop` ([`STOP_GRACE`]):
    /// calls to servers and the wait for a server to start give up, so a
    /// server that hangs cannot hold a stop request.
    pub abandon_waits: std::sync::Arc<AtomicBool>,
}

/// How long a stop request lets calls to servers finish before they are
/// abandoned.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How [`distill`] ended.
#[derive(Debug)]
pub enum Ended {
    /// Every method and seed finished; the report is written.
    Finished {
        /// The results table.
        table: String,
        /// The targets line, when NPD and on-policy both ran.
        targets: Option<String>,
        /// `report.md`.
        report: PathBuf,
    },
    /// Stopped by [`Control::stop`] after a checkpoint.
    Stopped {
        /// The method that stopped.
        method: Method,
        /// Its seed.
        seed: u64,
        /// Steps it completed.
        step: u64,
        /// Its checkpoint.
        checkpoint: Option<PathBuf>,
    },
    /// `--print-config` or `--check`: nothing ran.
    Checked(String),
    /// Stopped by [`Control::stop`] before any method ran (while preparing
    /// the embedded models): why and what was kept.
    Interrupted(String),
}

/// An error and its causes on one line, as `{:#}` writes them, leaving out
/// a cause whose text the line already holds (errors that quote their
/// source, such as `path: reason`, would otherwise say it twice).
pub fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The OpenMP wait policy the options call for (see
/// [`signals::set_wait_policy`]): [`signals::SERVED_WAIT_POLICY`] when vLLM
/// servers share the machine, else [`signals::WAIT_POLICY`]. A
/// configuration that does not parse gets the default; its error is
/// reported when the run starts.
pub fn wait_policy(o: &Options) -> &'static str {
    match configure(o) {
        Ok((c, _, _)) if c.engine.kind == EngineKind::Vllm => signals::SERVED_WAIT_POLICY,
        _ => signals::WAIT_POLICY,
    }
}

/// The embedded default's cache: `$NPD_CACHE`, `$XDG_CACHE_HOME/npd` or
/// `~/.cache/npd`, under `embedded/`.
pub fn default_cache() -> PathBuf {
    let base = std::env::var_os("NPD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("npd")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/npd")))
        .unwrap_or_else(|| PathBuf::from(".npd-cache"));
    base.join("embedded")
}

/// Runs the comparison the options describe (or only checks it, see
/// `print_config` and `check`), writing the report into the output folder.
pub fn distill(o: &Options, control: &Control, print_config: bool, check: bool) -> Result<Ended> {
    let (config, setup, seeds) = configure(o)?;
    if print_config {
        return Ok(Ended::Checked(config.to_toml()));
    }
    if check {
        let (teacher, student) = memory_check::architectures(&config, &setup)?;
        let plan = memory_check::plan(&config, &teacher, &student);
        plan.check()?;
        let teacher_plan = memory_check::teacher_plan(&config, &teacher);
        if let Some(p) = &teacher_plan {
            p.check()?;
        }
        return Ok(Ended::Checked(format!(
            "configuration valid\n{}{}{}",
            npd_train::device::Libtorch::probe(),
            plan.table(),
            teacher_plan.map(|p| p.table()).unwrap_or_default()
        )));
    }
    let embedded = config.model.teacher.as_os_str().is_empty();
    let out = config.output.dir.clone();
    let methods = configure::run_order(&o.methods);
    // A wrong --out or --resume is refused before any training.
    let input_files = [
        ("model.teacher", config.model.teacher.as_path()),
        ("model.student", config.model.student.as_path()),
        ("data.prompts", config.data.prompts.as_path()),
        ("data.eval", config.data.eval.as_path()),
    ];
    let input_files: Vec<(&str, &std::path::Path)> = (input_files.into_iter())
        .filter(|(_, p)| !p.as_os_str().is_empty())
        .collect();
    // A plan writes nothing there.
    let run_dir = (!o.plan)
        .then(|| {
            run_dir::RunDir::check(
                &out,
                &config.to_toml(),
                (&methods, seeds, o.quick),
                &input_files,
                o.resume,
            )
        })
        .transpose()?;
    let started = Instant::now();
    let inputs = if embedded {
        let cache = (o.cache.clone())
            .unwrap_or_else(default_cache)
            .join(setup.cache_name());
        match inputs::embedded(&cache, &setup, &config.model.device, &control.stop) {
            Ok(inputs) => inputs,
            Err(e) if control.stop.load(Ordering::SeqCst) => {
                return Ok(Ended::Interrupted(format!(
                    "{e:#}; nothing was written to {} (the cache keeps what was finished)",
                    out.display()
                )));
            }
            Err(e) => return Err(e),
        }
    } else {
        inputs::folders(&config)?
    };
    let settings = Settings::new(
        &config.train,
        &config.rollout,
        &config.sampling,
        &config.filter,
        &config.pack,
    )
    .with_tokens(
        inputs.stop_ids.clone(),
        inputs.alone_prefix.clone(),
        inputs.pad_id,
    )
    .with_rl(&config.rl);
    // The in-process backend resolves `auto` to the colocated schedule.
    let colocated = config.rollout.schedule != npd_rollout::Schedule::Disaggregated;
    let stages = TchStages::new(
        &inputs.teacher,
        (inputs.student.clone(), &inputs.warm_start),
        (&inputs.eval, &*inputs.answer),
        &config.train,
        (config.sampling.max_new_tokens, inputs.stop_ids.clone()),
    )?
    .with_threads(Threads::for_schedule(
        config.train.threads,
        config.rollout.threads,
        colocated,
    ))
    .with_baselines(config.pack.baselines)
    .with_eval_batch(config.sampling.eval_batch_size)
    .with_alone_prefix(
        (config.filter.enabled && config.filter.form.needs_alone())
            .then(|| inputs.alone_prefix.clone()),
    )
    .with_student_device(npd_train::device::parse_device(&config.model.device)?)
    .with_student_config_json(inputs.student_config_json.clone())
    .with_student_files(inputs.student_files.clone())
    .with_rl(&config.train, &config.rl, &inputs.train);
    let prompts: Vec<npd_core::Prompt> = inputs
        .train
        .iter()
        .map(|e| npd_core::Prompt {
            id: e.id,
            tokens: e.prompt.clone(),
        })
        .collect();
    checks::check_fit(&config, &inputs, &methods)?;
    if control.stop.load(Ordering::SeqCst) {
        return Ok(Ended::Interrupted(format!(
            "stopped on request before any method ran; nothing was written to {}",
            out.display()
        )));
    }
    let Some(run_dir) = run_dir else {
        return plan::run(
            &config,
            &inputs,
            stages,
            (&settings, &prompts),
            &methods,
            seeds,
            started,
            control,
        );
    };
    // The folder is claimed only once the inputs passed their checks.
    let run_dir = run_dir.claim()?;
    let mut run = Prepared {
        control,
        config: &config,
        inputs: &inputs,
        methods: &methods,
        settings: &settings,
        prompts: &prompts,
        seeds,
        started,
        teacher_accuracy: inputs.teacher_accuracy,
    };
    match config.engine.kind {
        EngineKind::InProcess => {
            let threads = stages.threads();
            let line = move |c: &Comparison<'_, TchStages<'_>>, total_s: f64| {
                settings_line(c, threads, total_s)
            };
            run_methods(&stages, run, run_dir, Vec::new(), &line)
        }
        EngineKind::Vllm => {
            let running = match servers::start(&config, &inputs, &out, &control.abandon_waits) {
                Ok(running) => running,
                Err(e) if control.stop.load(Ordering::SeqCst) => {
                    return Ok(Ended::Interrupted(format!(
                        "{}; nothing was trained, and the same command starts afresh in {}",
                        describe(&e),
                        out.display()
                    )));
                }
                Err(e) => return Err(e),
            };
            let mut lines = running.lines.clone();
            if config.engine.teacher_check_on_server() == Some(true) {
                let (accuracy, line) = servers::check_teacher(&running.servers, &config, &inputs)?;
                lines.push(line);
                run.teacher_accuracy = accuracy;
            }
            let served = ServedStages::new(stages, running.servers.clone());
            let checks = running.servers.checks.clone();
            let line = move |c: &Comparison<'_, ServedStages<'_>>, total_s: f64| {
                served_line(c, &checks, total_s)
            };
            run_methods(&served, run, run_dir, lines, &line)
        }
    }
}

/// The report's lines on the resumes of a run: how many, and what each
/// changed of where the run happens.
fn resume_lines(resumes: &[Vec<String>]) -> Vec<String> {
    resumes
        .iter()
        .enumerate()
        .map(|(i, changed)| {
            let what = if changed.is_empty() {
                "nothing changed".to_string()
            } else {
                format!("changed {}", changed.join(", "))
            };
            format!("resume {}: {what}", i + 1)
        })
        .collect()
}

/// What every method run shares, prepared by [`distill`].
struct Prepared<'a> {
    control: &'a Control,
    config: &'a RunConfig,
    inputs: &'a Inputs,
    methods: &'a [Method],
    settings: &'a Settings,
    prompts: &'a [npd_core::Prompt],
    seeds: u64,
    started: Instant,
    /// The teacher's held-out accuracy (NaN: not measured).
    teacher_accuracy: f64,
}

/// Runs every method and seed over `stages` and writes the report;
/// `setup` lines are added to the report's setup, and `line` writes the
/// line on what each method ran with.
fn run_methods<S: Stages>(
    stages: &S,
    run: Prepared<'_>,
    run_dir: run_dir::RunDir,
    setup: Vec<String>,
    line: &dyn Fn(&Comparison<'_, S>, f64) -> String,
) -> Result<Ended> {
    let Prepared {
        control,
        config,
        inputs,
        methods,
        settings,
        prompts,
        seeds,
        started,
        teacher_accuracy: run_teacher_accuracy,
    } = run;
    let out = config.output.dir.clone();
    let checkpoints = Checkpoints::new(run_dir.checkpoint_root(), config.output.checkpoint_every)
        .with_resume_state_in_all(config.output.optimizer_in_every_checkpoint);
    // The teacher writing SFT's responses (once per run) shows progress.
    let sft_data = progress::OnDemand::new("SFT data (teacher)", "prompts");
    let prep_progress = |done: usize, total: usize| sft_data.set(done, total);
    let mut comparison = Comparison::new(stages, settings, prompts)
        .with_prep_progress(&prep_progress)
        .with_checkpoints(&checkpoints)
        .with_rejected(&inputs.rejected)
        .with_start_score(inputs.warm_start_accuracy);
    if let Some(responses) = &inputs.sft_responses {
        comparison = comparison.with_sft_responses(responses.clone())?;
    }
    if let Some(teacher) = &inputs.teacher_train {
        comparison = comparison.with_teacher_prompts(teacher.clone())?;
    }
    let mut metrics = run_dir.metrics(&checkpoints)?;
    let metrics_path = out.join("metrics.jsonl");
    let mut outcomes = Vec::new();
    control.in_run.store(true, Ordering::SeqCst);
    for &method in methods {
        for seed in 0..seeds {
            let steps = if method.is_rl() {
                config.rl.steps
            } else {
                config.train.steps
            };
            let mut progress =
                Progress::new(&format!("{} seed {seed}", method.name()), steps, "steps");
            if let Some((step, _)) = checkpoints.latest(method, seed)? {
                progress.set(step);
            }
            let mut written = Ok(());
            let mut observer = |e: &Event| {
                if let Event::Step(s) = e {
                    progress.set(s.step);
                }
                if written.is_ok() {
                    let line = serde_json::to_string(e).expect("events serialise");
                    written = writeln!(metrics, "{line}").and_then(|()| metrics.flush());
                }
            };
            let end = match comparison.run(method, seed, &mut observer, &control.stop) {
                Ok(end) => end,
                Err(e) if control.abandon_waits.load(Ordering::SeqCst) => {
                    return Ok(Ended::Interrupted(format!(
                        "{} seed {seed} stopped on request while waiting on a server ({e}); \
                         continue with the same command and --resume, from its last checkpoint",
                        method.name()
                    )));
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("{} seed {seed}", method.name()))
                    );
                }
            };
            written.with_context(|| format!("writing {}", metrics_path.display()))?;
            progress.finish();
            match end {
                RunEnd::Finished(o) => outcomes.push(*o),
                RunEnd::Stopped {
                    method,
                    seed,
                    step,
                    checkpoint,
                } => {
                    return Ok(Ended::Stopped {
                        method,
                        seed,
                        step,
                        checkpoint,
                    });
                }
            }
        }
    }
    control.in_run.store(false, Ordering::SeqCst);
    let report = Report {
        setup: [
            inputs.setup.clone(),
            setup,
            resume_lines(run_dir.resumes()),
            vec![
                budget_line(config),
                format!(
                    "trained students, Hugging Face layout: {}",
                    checkpoints
                        .root
                        .join(format!(
                            "<method>-seed<k>/{}/model",
                            npd_pipeline::checkpoints::checkpoint_name(config.train.steps)
                        ))
                        .display()
                ),
                line(&comparison, started.elapsed().as_secs_f64()),
            ],
        ]
        .concat(),
        checks: [
            checks::ledger_checks(&metrics_path, &outcomes)?,
            checks::rl_checks(&metrics_path, &outcomes)?,
        ]
        .concat(),
        teacher_accuracy: run_teacher_accuracy,
        warm_start_accuracy: outcomes
            .first()
            .and_then(|o| o.curve.first())
            .map_or(f64::NAN, |c| c.accuracy),
        outcomes,
    };
    run_dir::write(&out.join("report.md"), &report.markdown())?;
    run_dir::write(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&report).context("report.json")?,
    )?;
    run_dir::write(&out.join("accuracy.svg"), &report.svg())?;
    if let Some(svg) = npd_pipeline::report_rl::svg(&report) {
        run_dir::write(&out.join("rl.svg"), &svg)?;
    }
    let targets = report.targets().map(|(acc_ok, speed_ok, gap, speedup)| {
        let reached = match report.time_to_accuracy() {
            Some(t) => {
                let on_s = t.baseline_s;
                let npd = t.methods.iter().find(|(m, _)| *m == Method::NearPolicy);
                let target = format!("{:.1}%", 100.0 * t.target);
                match npd.and_then(|(_, t)| *t) {
                    Some(t) if t <= 0.0 => {
                        format!("the starting weights already score {target}")
                    }
                    Some(t) => format!(
                        "NPD reaches {target} in {t:.1}s against on-policy's {on_s:.1}s ({:.2}x)",
                        on_s / t
                    ),
                    None => format!("NPD does not reach {target}"),
                }
            }
            None => "not measured".into(),
        };
        format!(
            "targets: accuracy within 2 points of on-policy: {} ({gap:+.1}); >= 3x less wall-clock: {} ({speedup:.2}x); time to on-policy's accuracy: {reached}",
            if acc_ok { "met" } else { "NOT met" },
            if speed_ok { "met" } else { "NOT met" }
        )
    });
    run_dir.record(true)?;
    Ok(Ended::Finished {
        table: report.table(),
        targets,
        report: out.join("report.md"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(npd_core::Error::Io {
            path: "/x/config.json".into(),
            source: io,
        })
        .context("loading the teacher");
        assert_eq!(
            describe(&e),
            "loading the teacher: /x/config.json: no such file"
        );
        assert_eq!(format!("{e:#}").matches("no such file").count(), 2);
    }
}
