//! Near-Policy Distillation of an openPangu-Embedded (or other Llama-family)
//! teacher into a student, side by side with SFT and synchronous on-policy
//! distillation, from the same warm start, on the same prompts and budget.
//!
//! With no arguments it runs the embedded default: a seeded arithmetic task,
//! a teacher of the openPangu architecture trained by the project and cached
//! after the first run, and a smaller warm-started student. It writes
//! `report.md`, `report.json`, `metrics.jsonl` and `accuracy.svg` into the
//! output folder and prints the results table.
//!
//! `cargo run --release --example distill_openpangu -- --help`

mod inputs;
mod run_dir;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use npd_core::RunConfig;
use npd_core::config::LossKind;
use npd_train::embedded::prepare::Setup;
use npd_train::pipeline::drivers::{Harness, Method, Settings};
use npd_train::pipeline::report::Report;
use npd_train::pipeline::resume::Checkpoints;

/// Distil a teacher into a student with Near-Policy Distillation, and
/// compare it with SFT and synchronous on-policy distillation in one run.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "\
Without a configuration naming model folders it runs the embedded default: a task, \
tokenizer, teacher and warm-started student made by the program and cached \
(--cache). A --config file with [model] teacher and student folders and [data] \
prompts runs your models (docs/pipeline.md).

Examples:
  distill_openpangu                               the embedded default, into runs/npd
  distill_openpangu --quick --out /tmp/smoke      a smoke test in seconds
  distill_openpangu --config run.toml --seeds 1   your teacher and student
  distill_openpangu --config run.toml --resume    go on after Ctrl-C or a crash

Ctrl-C finishes the current step, writes a checkpoint and exits (status 130); \
the same command with --resume continues. Exit status 2: bad input, with the \
file, line or field named."
)]
struct Args {
    /// Run configuration (TOML). Every key is optional; docs/config.example.toml
    /// documents each key and its default. Flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Output folder for report.md, report.json, metrics.jsonl, accuracy.svg
    /// and checkpoints (overrides output.dir, default runs/npd).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Methods to run, comma separated: sft, on-policy, npd.
    #[arg(long, value_delimiter = ',', default_value = "sft,on-policy,npd")]
    methods: Vec<String>,

    /// Seeds per method (at least 1).
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    seeds: u64,

    /// Optimizer steps per method (overrides train.steps).
    #[arg(long)]
    steps: Option<u64>,

    /// Turn the Δ-IFD filter off (ablation).
    #[arg(long)]
    no_filter: bool,

    /// NPD refresh interval K in optimizer steps (overrides rollout.refresh_every).
    #[arg(long, value_name = "K")]
    refresh_every: Option<u64>,

    /// Training divergence: forward-kl, reverse-kl, jsd or ce (overrides train.loss).
    #[arg(long)]
    loss: Option<String>,

    /// A small budget for smoke tests: fewer prompts, steps and seeds.
    #[arg(long)]
    quick: bool,

    /// Folder caching the embedded teacher and warm start
    /// (default: $NPD_CACHE or ~/.cache/npd, under embedded/).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,

    /// Continue the run in the output folder from its checkpoints (after
    /// Ctrl-C or a crash). Finished methods are not run again; the others
    /// continue from their newest checkpoint. The configuration and flags
    /// must be the ones the run started with.
    #[arg(long)]
    resume: bool,

    /// Write a checkpoint every this many optimizer steps (overrides
    /// output.checkpoint_every; 0: only at the end of each method and on
    /// Ctrl-C).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// The embedded default's run configuration: the `[train]`, `[rollout]` and
/// `[sampling]` values that fit its tiny models.
fn embedded_defaults(c: &mut RunConfig) {
    c.train.steps = 200;
    c.train.lr = 3e-4;
    c.train.min_lr = 3e-5;
    c.train.warmup_steps = 20;
    c.train.weight_decay = 0.0;
    c.train.micro_batch_rows = 64;
    c.train.rows_per_step = 64;
    c.train.top_k = 8;
    c.rollout.refresh_every = 10;
    c.rollout.max_lag = 2;
    c.rollout.batch_size = 64;
    c.rollout.reuse = 1;
    c.sampling.max_new_tokens = 48;
    c.sampling.temperature = 1.0;
    c.pack.capacity = 512;
    c.pack.min_fill = 0.95;
    c.pack.max_open_rows = 8;
    c.rollout.queue_capacity = 128;
    c.filter.lower_percentile = 0.05;
    c.filter.upper_percentile = 0.9;
    c.output.checkpoint_every = 50;
}

/// A count of at least one, for clap.
fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected an integer >= 1, got {text:?}")),
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

fn cache_dir(args: &Args) -> PathBuf {
    args.cache.clone().unwrap_or_else(|| {
        let base = std::env::var_os("NPD_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("npd")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/npd")))
            .unwrap_or_else(|| PathBuf::from(".npd-cache"));
        base.join("embedded")
    })
}

/// Why a run ended early.
enum Failure {
    /// Bad input or a failed stage (exit status 2).
    Error(String),
    /// Stopped by Ctrl-C after writing a checkpoint (exit status 130).
    Interrupted(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Error(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Self {
        Failure::Error(e.to_string())
    }
}

fn run(args: Args, signals: &Signals) -> Result<(), Failure> {
    let mut config = RunConfig::default();
    embedded_defaults(&mut config);
    if let Some(path) = &args.config {
        // The file's keys override the embedded default's; a file naming
        // model folders starts from the general defaults instead.
        let over = RunConfig::from_file_over(path, &config).map_err(|e| e.to_string())?;
        config = if over.model.teacher.as_os_str().is_empty() {
            over
        } else {
            RunConfig::from_file(path).map_err(|e| e.to_string())?
        };
    }
    let embedded = config.model.teacher.as_os_str().is_empty();
    if let Some(s) = args.steps {
        config.train.steps = s;
    }
    if let Some(k) = args.refresh_every {
        config.rollout.refresh_every = k;
    }
    if args.no_filter {
        config.filter.enabled = false;
    }
    if let Some(l) = &args.loss {
        config.train.loss = match l.as_str() {
            "forward-kl" => LossKind::ForwardKl,
            "reverse-kl" => LossKind::ReverseKl,
            "jsd" => LossKind::Jsd,
            "ce" => LossKind::Ce,
            other => {
                return Err(
                    format!("--loss {other}: expected forward-kl, reverse-kl, jsd or ce").into(),
                );
            }
        };
    }
    if let Some(out) = &args.out {
        config.output.dir = out.clone();
    }
    if let Some(n) = args.checkpoint_every {
        config.output.checkpoint_every = n;
    }
    let mut setup = Setup::default();
    let mut seeds = args.seeds;
    if args.quick {
        if args.steps.is_none() {
            config.train.steps = config.train.steps.min(20);
        }
        setup.teacher_steps = 60;
        setup.warm_start_steps = 20;
        setup.train_prompts = 400;
        setup.eval_prompts = 64;
        setup.teacher = (64, 2, 4, 2);
        setup.student = (32, 1, 2, 1);
        seeds = seeds.min(1);
    }
    config.validate("flags").map_err(|e| e.to_string())?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if args.check {
        println!("configuration valid");
        return Ok(());
    }
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| {
            Method::from_slug(m).ok_or_else(|| {
                format!("--methods: unknown method {m:?}; expected sft, on-policy, npd")
            })
        })
        .collect::<Result<_, _>>()?;
    let out = config.output.dir.clone();
    // A wrong --out or --resume is refused before any training.
    let run_dir = run_dir::RunDir::check(
        &out,
        &config.to_toml(),
        &methods,
        seeds,
        args.quick,
        args.resume,
    )?;
    // The teacher, the warm start and the prompts.
    let started = Instant::now();
    let inputs = if embedded {
        let cache = cache_dir(&args).join(format!(
            "v3-{}",
            if args.quick { "quick" } else { "default" }
        ));
        inputs::embedded(&cache, &setup)?
    } else {
        inputs::folders(&config)?
    };

    let settings = Settings::from_config(
        &config,
        inputs.stop_ids.clone(),
        inputs.alone_prefix.clone(),
        inputs.pad_id,
    );
    let harness = Harness::new(
        &inputs.teacher,
        inputs.student.clone(),
        &inputs.warm_start,
        (&inputs.train, &inputs.eval),
        &*inputs.answer,
        settings,
    )
    .with_warm_start_accuracy(inputs.warm_start_accuracy)
    .with_rejected(&inputs.rejected)
    .with_student_config_json(inputs.student_config_json.as_deref());

    harness.check().map_err(|e| e.to_string())?;
    // The folder is claimed only once the inputs passed their checks.
    let run_dir = run_dir.claim()?;
    let mut checkpoints =
        Checkpoints::new(run_dir.checkpoint_root(), config.output.checkpoint_every);
    checkpoints.stop = Arc::clone(&signals.stop);
    let harness = harness.with_checkpoints(checkpoints.clone());
    let mut metrics = run_dir.metrics(&checkpoints)?;
    let mut outcomes = Vec::new();
    signals.in_run.store(true, Ordering::SeqCst);
    for &method in &methods {
        for seed in 0..seeds {
            let pb = bar(
                config.train.steps,
                &format!("{} seed {seed}", method.name()),
            );
            if let Some((step, _)) = checkpoints
                .latest(method, seed)
                .map_err(|e| e.to_string())?
            {
                pb.set_position(step);
            }
            let outcome = harness.run(method, seed, &mut |m| {
                let _ = writeln!(metrics, "{m}");
                let _ = metrics.flush();
                pb.inc(1);
            });
            pb.finish();
            match outcome {
                Ok(o) => outcomes.push(o),
                Err(npd_core::Error::Interrupted { step, checkpoint }) => {
                    return Err(Failure::Interrupted(format!(
                        "interrupted: {} seed {seed} stopped after step {step}; checkpoint {}. \
                         Continue with the same command and --resume.",
                        method.name(),
                        checkpoint.display()
                    )));
                }
                Err(e) => return Err(format!("{} seed {seed}: {e}", method.name()).into()),
            }
        }
    }
    signals.in_run.store(false, Ordering::SeqCst);
    let report = Report {
        setup: [
            inputs.setup.clone(),
            vec![
            format!(
                "budget: {} steps x {} samples per method and seed; loss {:?}, top-k {}; NPD K = {}, max lag {}, reuse {}, Δ-IFD {}",
                config.train.steps,
                config.train.rows_per_step,
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
            ),
            format!(
                "trained students, Hugging Face layout: {}",
                checkpoints
                    .root
                    .join(format!(
                        "<method>-seed<k>/{}/model",
                        npd_train::checkpoint::checkpoint_name(config.train.steps)
                    ))
                    .display()
            ),
            format!(
                "libtorch threads: {threads} for SFT and on-policy; NPD {threads} training + {gen_threads} generating; OMP_WAIT_POLICY={}; total run time {:.0}s",
                std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into()),
                started.elapsed().as_secs_f64(),
                threads = harness.settings().train_threads,
                gen_threads = harness.settings().gen_threads,
            ),
            ],
        ]
        .concat(),
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
        &serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
    )?;
    run_dir::write(&out.join("accuracy.svg"), &report.svg())?;
    println!("\n{}", report.table());
    if let Some((acc_ok, speed_ok, gap, speedup)) = report.targets() {
        println!(
            "targets: accuracy within 2 points of on-policy: {} ({gap:+.1}); >= 3x less wall-clock: {} ({speedup:.2}x)",
            if acc_ok { "met" } else { "NOT met" },
            if speed_ok { "met" } else { "NOT met" }
        );
    }
    run_dir.record(true)?;
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// libtorch's OpenMP runtime (libgomp) spin-waits idle threads by default;
/// when NPD's generating and training threads share a few cores, the
/// spinning steals their time. libgomp reads `OMP_WAIT_POLICY` only when
/// it loads, so unless the user chose a policy the example restarts itself
/// once, at the start, with `OMP_WAIT_POLICY=PASSIVE`.
#[cfg(unix)]
fn passive_openmp() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .exec();
    eprintln!("warning: could not restart with OMP_WAIT_POLICY=PASSIVE: {err}");
}

/// What Ctrl-C (or SIGTERM) does: during the method runs the first one asks
/// the running method to finish its step and write a checkpoint; outside
/// them, or a second time, the process exits at once.
struct Signals {
    stop: Arc<AtomicBool>,
    in_run: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let in_run = Arc::new(AtomicBool::new(false));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&in_run));
        let installed = ctrlc::set_handler(move || {
            if !r.load(Ordering::SeqCst) || s.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted");
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping: finishing the current step and writing a checkpoint \
                 (Ctrl-C again to quit at once)"
            );
        });
        if let Err(e) = installed {
            eprintln!("warning: Ctrl-C will not write a checkpoint: {e}");
        }
        Self { stop, in_run }
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    passive_openmp();
    let signals = Signals::install();
    match run(Args::parse(), &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Interrupted(e)) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
    }
}
