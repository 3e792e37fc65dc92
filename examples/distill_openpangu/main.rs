//! Near-Policy Distillation of an openPangu-Embedded (or other Llama-family)
//! teacher into a student, side by side with SFT and synchronous on-policy
//! distillation, from the same warm start, on the same prompts and budget.
//!
//! With no arguments it runs the embedded default: a seeded arithmetic task,
//! a teacher of the openPangu architecture trained by the project and cached
//! after the first run, and a smaller warm-started student. It writes
//! `report.md`, `report.json`, `metrics.jsonl` and `accuracy.svg` into the
//! output folder and prints the results table. The work is
//! [`npd_distill::distill`]; this file is the command line.
//!
//! `cargo run --release --example distill_openpangu -- --help`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use npd_core::config::LossKind;
use npd_distill::EngineKind;
use npd_distill::{Control, Ended, Options};
use npd_pipeline::Method;

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

Progress shows as bars on a terminal and as log lines otherwise (RUST_LOG=warn \
silences them). Ctrl-C finishes the current step, writes a checkpoint and exits \
(status 130); the same command with --resume continues. A second Ctrl-C kills the \
process at once (status 137). Exit status 2: bad input, with the file, line or field \
named."
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

    /// Methods to run, comma separated, in this order. An RL method runs
    /// after the method it starts from, which runs even when not named.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sft,on-policy,npd"
    )]
    methods: Vec<MethodArg>,

    /// Seeds per method [default: 2, or 1 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: Option<u64>,

    /// Optimizer steps per method (overrides train.steps).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,

    /// Turn the Δ-IFD filter off (ablation).
    #[arg(long)]
    no_filter: bool,

    /// NPD refresh interval K in optimizer steps (overrides rollout.refresh_every).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    refresh_every: Option<u64>,

    /// Training divergence (overrides train.loss).
    #[arg(long, value_enum)]
    loss: Option<LossArg>,

    /// A small budget for smoke tests: fewer prompts, steps and seeds and
    /// smaller models, each only where the configuration and the other
    /// flags leave it unset (--print-config shows what runs).
    #[arg(long)]
    quick: bool,

    /// Where rollouts and teacher scores come from (overrides engine.kind):
    /// in-process libtorch models, or vLLM servers (started by npd from the
    /// cache `./npd vllm` fills, or the engine.student_url and
    /// engine.teacher_url servers) with the trainer in-process.
    #[arg(long, value_enum)]
    engine: Option<EngineArg>,

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

    /// Print what the run would do and cost, then exit without writing to
    /// the output folder: prompts and rollouts per method, sequence
    /// lengths, the memory plan per role, and an ETA extrapolated from two
    /// measured steps of every method on a sample of the prompts (after
    /// loading the models and checking the teacher, as a run does).
    #[arg(long)]
    plan: bool,
}

/// `--methods` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum MethodArg {
    /// Supervised fine-tuning on teacher-written responses.
    Sft,
    /// Synchronous on-policy distillation.
    OnPolicy,
    /// Near-Policy Distillation.
    Npd,
    /// GRPO ([rl]) from the warm start.
    Rl,
    /// SFT, then GRPO from its final weights.
    #[value(name = "sft+rl")]
    SftRl,
    /// On-policy distillation, then GRPO from its final weights.
    #[value(name = "on-policy+rl")]
    OnPolicyRl,
    /// NPD, then GRPO from its final weights (the paper's two stages).
    #[value(name = "npd+rl")]
    NpdRl,
}

/// `--engine` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineArg {
    /// The libtorch models in this process.
    InProcess,
    /// vLLM servers over HTTP.
    Vllm,
}

/// `--loss` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LossArg {
    /// KL(teacher ‖ student) on the teacher's top-k.
    ForwardKl,
    /// KL(student ‖ teacher) on the teacher's top-k.
    ReverseKl,
    /// Generalised Jensen-Shannon divergence (train.jsd_beta).
    Jsd,
    /// DistiLLM's skew KL (train.skew_alpha).
    SkewForwardKl,
    /// DistiLLM's skew reverse KL (train.skew_alpha).
    SkewReverseKl,
    /// Reverse KL from the sampled token's log-ratio (policy-gradient form).
    SampledReverseKl,
    /// Cross-entropy on the sampled tokens.
    Ce,
}

impl Args {
    fn options(&self) -> Options {
        Options {
            config: self.config.clone(),
            out: self.out.clone(),
            methods: (self.methods.iter())
                .map(|m| match m {
                    MethodArg::Sft => Method::Sft,
                    MethodArg::OnPolicy => Method::OnPolicy,
                    MethodArg::Npd => Method::NearPolicy,
                    MethodArg::Rl => Method::Rl,
                    MethodArg::SftRl => Method::SftRl,
                    MethodArg::OnPolicyRl => Method::OnPolicyRl,
                    MethodArg::NpdRl => Method::NearPolicyRl,
                })
                .collect(),
            seeds: self.seeds,
            steps: self.steps,
            no_filter: self.no_filter,
            refresh_every: self.refresh_every,
            loss: self.loss.map(|l| match l {
                LossArg::ForwardKl => LossKind::ForwardKl,
                LossArg::ReverseKl => LossKind::ReverseKl,
                LossArg::Jsd => LossKind::Jsd,
                LossArg::SkewForwardKl => LossKind::SkewForwardKl,
                LossArg::SkewReverseKl => LossKind::SkewReverseKl,
                LossArg::SampledReverseKl => LossKind::SampledReverseKl,
                LossArg::Ce => LossKind::Ce,
            }),
            quick: self.quick,
            engine: self.engine.map(|e| match e {
                EngineArg::InProcess => EngineKind::InProcess,
                EngineArg::Vllm => EngineKind::Vllm,
            }),
            cache: self.cache.clone(),
            resume: self.resume,
            checkpoint_every: self.checkpoint_every,
            plan: self.plan,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    npd_distill::signals::set_wait_policy(npd_distill::wait_policy(&args.options()));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let control = Arc::new(Control::default());
    npd_distill::signals::install(&control);
    match npd_distill::distill(&args.options(), &control, args.print_config, args.check) {
        Ok(Ended::Checked(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Ended::Finished {
            table,
            targets,
            report,
        }) => {
            println!("\n{table}");
            if let Some(t) = targets {
                println!("{t}");
            }
            println!("report: {}", report.display());
            ExitCode::SUCCESS
        }
        Ok(Ended::Interrupted(why)) => {
            eprintln!("interrupted: {why}");
            ExitCode::from(130)
        }
        Ok(Ended::Stopped {
            method,
            seed,
            step,
            checkpoint,
        }) => {
            let at = checkpoint.map_or_else(
                || "no checkpoint".to_string(),
                |c| format!("checkpoint {}", c.display()),
            );
            eprintln!(
                "interrupted: {method} seed {seed} stopped after step {step}; {at}. \
                 Continue with the same command and --resume."
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", npd_distill::describe(&e));
            ExitCode::from(2)
        }
    }
}
