//! A reproduction study: runs a grid of regimes (task, warm start, student
//! size, loss, temperature, Δ-IFD on or off, refresh interval K) from a
//! TOML file, every method and seed in each, and writes one table of
//! held-out accuracy (mean and spread over seeds) and wall-clock per
//! regime to `<out>/study.md` and `<out>/study.json`. The work is
//! [`npd_distill::study::study`]; this file is the command line.
//!
//! `cargo run --release --example study -- docs/study.toml --out runs/study`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use npd_distill::Control;
use npd_distill::study::StudyEnd;

/// The help text after the grid file's keys.
const AFTER_HELP: &str = "\
Each run has its own folder under OUT/runs/ with the usual report. The study goes on \
where it stopped: run the same command again after Ctrl-C or a crash. Finished runs are \
read back, an unfinished one continues from its checkpoints.

Examples:
  study docs/study.toml --out runs/study
  study docs/study.toml --out runs/study     (again: continues)";

/// Run a grid of distillation regimes, every method and seed in each, and
/// tabulate held-out accuracy and wall-clock per regime.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = format!("{}\n\n{AFTER_HELP}", npd_distill::study::help())
)]
struct Args {
    /// The grid (TOML).
    grid: PathBuf,

    /// Output folder: study.md, study.json, a copy of the grid, and one
    /// folder per run under runs/.
    #[arg(long, value_name = "DIR", default_value = "runs/study")]
    out: PathBuf,

    /// Folder caching the embedded teachers and warm starts
    /// (default: $NPD_CACHE or ~/.cache/npd, under embedded/).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    npd_distill::signals::set_wait_policy(npd_distill::study::wait_policy(&args.grid));
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
    match npd_distill::study::study(&args.grid, &args.out, args.cache, &control) {
        Ok(StudyEnd::Finished { table, path }) => {
            println!("\n{table}\nstudy: {}", path.display());
            ExitCode::SUCCESS
        }
        Ok(StudyEnd::Stopped(why)) => {
            eprintln!("interrupted: {why}. Continue with the same command.");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", npd_distill::describe(&e));
            ExitCode::from(2)
        }
    }
}
