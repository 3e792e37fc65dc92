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
//! - [`progress`]: bars on a terminal, log lines elsewhere.
//!
//! [`distill`] runs it; the example's `main.rs` only parses the command
//! line and handles signals.

pub mod checks;
pub mod config;
pub mod embedded;
pub mod inputs;
pub mod progress;
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
use npd_core::config::LossKind;
use npd_core::events::Event;
pub use npd_engine::EngineKind;
use npd_pipeline::Stages;
use npd_pipeline::{Checkpoints, Comparison, Method, Report, RunEnd, Settings};
use npd_train::TchStages;
use npd_train::served::ServedStages;
use npd_train::stages::Threads;

pub use crate::config::RunConfig;
use crate::embedded::prepare::Setup;
use crate::inputs::Inputs;
use crate::progress::Progress;
use crate::summary::{budget_line, served_line, settings_line};

/// What to run: the command line's choices over the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run configuration (TOML); `None` runs the embedded default.
    pub config: Option<PathBuf>,
    /// Output folder (overrides `output.dir`).
    pub out: Option<PathBuf>,
    /// Methods to run, in order.
    pub methods: Vec<Method>,
    /// Seeds per method; `None`: 2, or 1 with `quick`.
    pub seeds: Option<u64>,
    /// Optimizer steps per method (overrides `train.steps`).
    pub steps: Option<u64>,
    /// Turn the Δ-IFD filter off.
    pub no_filter: bool,
    /// NPD refresh interval (overrides `rollout.refresh_every`).
    pub refresh_every: Option<u64>,
    /// Training divergence (overrides `train.loss`).
    pub loss: Option<LossKind>,
    /// A small budget for smoke tests.
    pub quick: bool,
    /// Where rollouts and teacher scores come from (overrides
    /// `engine.kind`).
    pub engine: Option<EngineKind>,
    /// Folder caching the embedded teacher and warm start.
    pub cache: Option<PathBuf>,
    /// Continue the run in the output folder.
    pub resume: bool,
    /// Steps between checkpoints (overrides `output.checkpoint_every`).
    pub checkpoint_every: Option<u64>,
}

impl Default for Options {
    /// The embedded default: every method, the default seeds, nothing
    /// overridden.
    fn default() -> Self {
        Self {
            config: None,
            out: None,
            methods: Method::ALL.to_vec(),
            seeds: None,
            steps: None,
            no_filter: false,
            refresh_every: None,
            loss: None,
            quick: false,
            engine: None,
            cache: None,
            resume: false,
            checkpoint_every: None,
        }
    }
}

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

/// The embedded default's run configuration: the `[train]`, `[rollout]` and
/// `[sampling]` values that fit its tiny models and `c.embedded`'s task.
pub fn embedded_defaults(c: &mut RunConfig) {
    c.train.steps = 200;
    // Below the warm start's final 2e-4: a fresh optimizer at 3e-4 cost
    // every method 2-10 points in its first 40 steps (docs/reproduction.md).
    c.train.lr = 1e-4;
    c.train.min_lr = 1e-5;
    c.train.warmup_steps = 20;
    c.train.weight_decay = 0.0;
    c.train.micro_batch_rows = 64;
    c.train.rows_per_step = 64;
    c.train.top_k = 8;
    c.rollout.refresh_every = 10;
    c.rollout.max_lag = 2;
    c.rollout.batch_size = 64;
    c.rollout.reuse = 1;
    // 48 for the default task's chains of at most 8 steps.
    c.sampling.max_new_tokens = c.embedded.task_spec().response_budget();
    // Rollouts at 0.7: at 1.0 much of the signal goes to slips that the
    // greedy decoding of evaluation never makes (docs/reproduction.md).
    c.sampling.temperature = 0.7;
    c.pack.capacity = 512;
    c.rollout.queue_capacity = 128;
    c.filter.lower_percentile = 0.05;
    c.filter.upper_percentile = 0.9;
    c.output.checkpoint_every = 50;
}

/// The effective configuration, the embedded setup and the seed count:
/// the embedded default's values, then the file's, then the options'.
pub fn configure(o: &Options) -> Result<(RunConfig, Setup, u64)> {
    if o.methods.is_empty() {
        anyhow::bail!("no method to run: name at least one of sft, on-policy, npd");
    }
    for (i, m) in o.methods.iter().enumerate() {
        if o.methods[..i].contains(m) {
            anyhow::bail!(
                "method {} is named twice: each method runs once per seed (use --seeds for \
                 more runs)",
                m.slug()
            );
        }
    }
    let mut config = RunConfig::default();
    embedded_defaults(&mut config);
    if let Some(path) = &o.config {
        // The file's keys override the embedded default's; a file naming
        // model folders starts from the general defaults instead.
        let over = RunConfig::from_file_over(path, &config)?;
        config = if over.model.teacher.as_os_str().is_empty() {
            // The response budget follows the file's task lengths unless
            // the file sets it.
            let mut base = RunConfig {
                embedded: over.embedded.clone(),
                ..config
            };
            embedded_defaults(&mut base);
            RunConfig::from_file_over(path, &base)?
        } else {
            RunConfig::from_file(path)?
        };
    }
    let explicit = crate::config::explicit_keys(o.config.as_deref())?;
    let explicit = |key: &str| explicit.contains(key);
    if let Some(s) = o.steps {
        config.train.steps = s;
    } else if o.quick && !explicit("train.steps") {
        config.train.steps = config.train.steps.min(20);
    }
    if o.quick && config.model.teacher.as_os_str().is_empty() {
        embedded::prepare::quick_keys(&mut config.embedded, &explicit);
    }
    if let Some(k) = o.refresh_every {
        config.rollout.refresh_every = k;
    }
    if o.no_filter {
        config.filter.enabled = false;
    }
    if let Some(l) = o.loss {
        config.train.loss = l;
    }
    if let Some(out) = &o.out {
        config.output.dir = out.clone();
    }
    if let Some(n) = o.checkpoint_every {
        config.output.checkpoint_every = n;
    }
    if let Some(e) = o.engine {
        config.engine.kind = e;
    }
    let mut setup = Setup::from_config(&config.embedded);
    let seeds = o.seeds.unwrap_or(if o.quick { 1 } else { 2 });
    if o.quick {
        setup = setup.quick();
    }
    if config.engine.kind == EngineKind::Vllm {
        // vLLM's CPU attention needs head sizes of 32 or more.
        setup = setup.with_head_dim(32);
    }
    config.validate("flags")?;
    if config.model.teacher.as_os_str().is_empty() {
        checks::refuse_ignored_keys(&config)?;
        setup.check_fits()?;
    } else {
        checks::refuse_embedded_keys(&config)?;
        checks::require_folder_keys(&config)?;
    }
    checks::refuse_server_keys(&config)?;
    checks::refuse_unsupported(&config)?;
    Ok((config, setup, seeds))
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
        return Ok(Ended::Checked("configuration valid\n".into()));
    }
    let embedded = config.model.teacher.as_os_str().is_empty();
    let out = config.output.dir.clone();
    // A wrong --out or --resume is refused before any training.
    let run_dir = run_dir::RunDir::check(
        &out,
        &config.to_toml(),
        &o.methods,
        seeds,
        o.quick,
        o.resume,
    )?;
    let started = Instant::now();
    let inputs = if embedded {
        let cache = (o.cache.clone())
            .unwrap_or_else(default_cache)
            .join(setup.cache_name());
        match inputs::embedded(&cache, &setup, &control.stop) {
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
    );
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
    .with_alone_prefix(
        (config.filter.enabled && config.filter.form.needs_alone())
            .then(|| inputs.alone_prefix.clone()),
    )
    .with_student_config_json(inputs.student_config_json.clone());
    let prompts: Vec<npd_core::Prompt> = inputs
        .train
        .iter()
        .map(|e| npd_core::Prompt {
            id: e.id,
            tokens: e.prompt.clone(),
        })
        .collect();
    checks::check_fit(&config, &inputs, &o.methods)?;
    if control.stop.load(Ordering::SeqCst) {
        return Ok(Ended::Interrupted(format!(
            "stopped on request before any method ran; nothing was written to {}",
            out.display()
        )));
    }
    // The folder is claimed only once the inputs passed their checks.
    let run_dir = run_dir.claim()?;
    let run = Prepared {
        options: o,
        control,
        config: &config,
        inputs: &inputs,
        settings: &settings,
        prompts: &prompts,
        seeds,
        started,
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
            let served = ServedStages::new(stages, running.servers.clone());
            let checks = running.servers.checks.clone();
            let line = move |c: &Comparison<'_, ServedStages<'_>>, total_s: f64| {
                served_line(c, &checks, total_s)
            };
            run_methods(&served, run, run_dir, running.lines.clone(), &line)
        }
    }
}

/// What every method run shares, prepared by [`distill`].
struct Prepared<'a> {
    options: &'a Options,
    control: &'a Control,
    config: &'a RunConfig,
    inputs: &'a Inputs,
    settings: &'a Settings,
    prompts: &'a [npd_core::Prompt],
    seeds: u64,
    started: Instant,
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
        options: o,
        control,
        config,
        inputs,
        settings,
        prompts,
        seeds,
        started,
    } = run;
    let out = config.output.dir.clone();
    let checkpoints = Checkpoints::new(run_dir.checkpoint_root(), config.output.checkpoint_every);
    let comparison = Comparison::new(stages, settings, prompts)
        .with_checkpoints(&checkpoints)
        .with_rejected(&inputs.rejected)
        .with_start_score(inputs.warm_start_accuracy);
    let mut metrics = run_dir.metrics(&checkpoints)?;
    let metrics_path = out.join("metrics.jsonl");
    let mut outcomes = Vec::new();
    control.in_run.store(true, Ordering::SeqCst);
    for &method in &o.methods {
        for seed in 0..seeds {
            let mut progress = Progress::new(
                &format!("{} seed {seed}", method.name()),
                config.train.steps,
                "steps",
            );
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
        checks: checks::ledger_checks(&metrics_path, &outcomes)?,
        teacher_accuracy: inputs.teacher_accuracy,
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

    fn options(config: Option<PathBuf>) -> Options {
        Options {
            config,
            seeds: Some(1),
            ..Options::default()
        }
    }

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

    fn configured(text: &str, o: impl FnOnce(&mut Options)) -> Result<(RunConfig, Setup, u64)> {
        let path = std::env::temp_dir().join(format!(
            "npd-configure-{}-{:x}.toml",
            std::process::id(),
            text.bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        ));
        std::fs::write(&path, text).unwrap();
        let mut options = options(Some(path.clone()));
        o(&mut options);
        let result = configure(&options);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn refused(text: &str, o: impl FnOnce(&mut Options)) -> String {
        describe(&configured(text, o).unwrap_err())
    }

    #[test]
    fn keys_that_would_be_ignored_or_cannot_run_are_refused_when_checked() {
        // A teacher without a student or prompts.
        let err = refused("[model]\nteacher = \"t\"\n", |_| {});
        assert!(err.contains("model.student"), "{err}");
        let err = refused("[model]\nteacher = \"t\"\nstudent = \"s\"\n", |_| {});
        assert!(err.contains("data.prompts"), "{err}");
        // Server keys with the in-process engine.
        let err = refused(
            "[engine]\nstudent_url = \"http://127.0.0.1:8000\"\n",
            |_| {},
        );
        assert!(
            err.contains("engine.student_url") && err.contains("in-process"),
            "{err}"
        );
        let text = "[engine]\nteacher_url = \"http://127.0.0.1:8000\"\n";
        configured(text, |o| o.engine = Some(EngineKind::Vllm)).unwrap();
        // A documented form no engine can run.
        let err = refused("[filter]\nform = \"staleness\"\n", |_| {});
        assert!(
            err.contains("filter.form") && err.contains("snapshot"),
            "{err}"
        );
        // Sampling values the sampler cannot represent.
        for (text, key) in [
            ("[sampling]\ntemperature = 1e300\n", "sampling.temperature"),
            ("[sampling]\ntop_p = 1e-300\n", "sampling.top_p"),
        ] {
            let err = refused(text, |_| {});
            assert!(err.contains(key), "{text}: {err}");
        }
        // Methods named twice.
        let err = refused("", |o| {
            o.methods = vec![Method::NearPolicy, Method::NearPolicy]
        });
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn a_student_too_big_for_memory_is_refused_naming_the_key() {
        for student in ["[131072, 1]", "[262144, 1]"] {
            let err = refused(&format!("[embedded]\nstudent = {student}\n"), |_| {});
            assert!(
                err.contains("embedded.student")
                    && (err.contains("GiB available") || err.contains("parameters")),
                "{student}: {err}"
            );
        }
    }

    #[test]
    fn quick_shrinks_only_what_the_file_leaves_unset() {
        let (c, setup, seeds) = configured("", |o| {
            o.quick = true;
            o.seeds = None;
        })
        .unwrap();
        assert_eq!((c.train.steps, c.embedded.student, seeds), (20, [32, 1], 1));
        assert_eq!(setup.student.0, 32);
        let text = "[embedded]\nstudent = [128, 3]\n[train]\nsteps = 30\n";
        let (c, setup, seeds) = configured(text, |o| {
            o.quick = true;
            o.seeds = Some(3);
        })
        .unwrap();
        assert_eq!(
            (c.train.steps, c.embedded.student, seeds),
            (30, [128, 3], 3)
        );
        assert_eq!((setup.student.0, setup.student.1), (128, 3));
    }

    #[test]
    fn the_embedded_default_refuses_keys_it_would_ignore() {
        let path =
            std::env::temp_dir().join(format!("npd-embedded-keys-{}.toml", std::process::id()));
        for (text, key) in [
            ("[data]\nprompts = \"p.jsonl\"\n", "data.prompts"),
            ("[model]\nstudent = \"s\"\n", "model.student"),
            ("[model]\ndevice = \"cuda\"\n", "model.device"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = configure(&options(Some(path.clone())))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("model.teacher"),
                "{text}: {err}"
            );
        }
        std::fs::write(
            &path,
            "[model]\nteacher = \"t\"\nstudent = \"s\"\n[embedded]\ntask = \"orders\"\n",
        )
        .unwrap();
        let err = configure(&options(Some(path.clone())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[embedded]"), "{err}");
        std::fs::write(&path, "[embedded]\nmax_ops = 24\n").unwrap();
        let (config, setup, _) = configure(&options(Some(path.clone()))).unwrap();
        // The response budget follows the task's lengths.
        assert_eq!(config.sampling.max_new_tokens, 5 * 24 + 8);
        assert_eq!(setup.max_ops, 24);
        std::fs::write(
            &path,
            "[embedded]\nmax_ops = 24\n[sampling]\nmax_new_tokens = 200\n",
        )
        .unwrap();
        let (config, _, _) = configure(&options(Some(path.clone()))).unwrap();
        assert_eq!(config.sampling.max_new_tokens, 200);
        std::fs::write(&path, "[train]\nsteps = 7\n").unwrap();
        let (config, _, _) = configure(&options(Some(path.clone()))).unwrap();
        assert_eq!(config.train.steps, 7);
        let _ = std::fs::remove_file(&path);
    }
}
