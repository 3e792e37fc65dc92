//! Near-Policy Distillation of an openPangu-Embedded (or other Llama-family)
//! teacher into a student.
//!
//! `cargo run --release --example distill_openpangu -- --help`
//!
//! This version validates the run configuration, reports the libtorch
//! backend and checks the packing and Δ-IFD stages on a synthetic pool
//! shaped by the configuration. The model-backed stages (rollouts, teacher
//! scoring, training) are not part of this version, and the program says so
//! rather than pretending to distil.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use npd::synthetic::{lognormal_lengths, logprob_pool};
use npd_core::RunConfig;
use npd_filter::DeltaIfdFilter;
use npd_pack::plan::best_fit_decreasing;
use npd_pack::stats::{PackStats, padded_efficiency};

/// Distil a teacher into a student with Near-Policy Distillation.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run configuration (TOML). Every key is optional; see
    /// docs/config.example.toml for each key, its meaning and its default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match RunConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => RunConfig::default(),
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let origin = args
        .config
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    println!("configuration: {origin} (valid)");
    if args.check {
        return ExitCode::SUCCESS;
    }

    let backend = npd_train::backend_info();
    println!(
        "libtorch: {} CPU threads, {} CUDA device(s); requested device {}",
        backend.cpu_threads, backend.cuda_devices, config.model.device
    );

    // Stage check on a synthetic pool shaped like the configuration.
    let n = 20_000;
    let capacity = config.pack.capacity;
    let mean = (config.sampling.max_new_tokens as f64 / 2.0).min(capacity as f64 / 4.0);
    let lengths = lognormal_lengths(n, mean, 1.0, capacity, config.data.seed);
    let plan = best_fit_decreasing(&lengths, capacity);
    let stats = PackStats::of_plan(&plan, &lengths, capacity);
    println!(
        "packing check: {n} synthetic samples (mean {mean:.0} tokens) into {} rows of {capacity}: \
         {:.2}% filled (padded batches of 8: {:.2}%)",
        stats.rows,
        100.0 * stats.efficiency(),
        100.0 * padded_efficiency(&lengths, 8)
    );
    let pool = logprob_pool(4096, 64, config.data.seed);
    let mut filter = DeltaIfdFilter::from_config(&config.filter);
    match filter.select_columns(&pool) {
        Ok(_) => {
            let r = filter.last_report();
            println!(
                "Δ-IFD check: {} synthetic samples, {:.1}% kept, dropped {:?}",
                r.total,
                100.0 * r.keep_rate(),
                r.dropped
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    println!(
        "The model-backed stages (rollouts, teacher scoring, training) are not in this \
         version: nothing was distilled."
    );
    ExitCode::SUCCESS
}
