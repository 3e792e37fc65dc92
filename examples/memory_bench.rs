//! Peak memory of one training step against the row length, with and
//! without activation recomputation and the chunked loss, in one run;
//! beside each measurement, the memory plan's estimate
//! (`npd_train::memory_plan::training`).
//!
//! Measured on CPU as the rise of the process's peak resident memory
//! during the step, above the weights, gradients and optimizer state
//! already allocated (one step runs first so they exist).
//!
//! `cargo run --release --example memory_bench -- --help`

use clap::Parser;
use npd_benches::train_samples;
use npd_core::config::{LossKind, TrainConfig};
use npd_core::traits::Learner;
use npd_pack::{PackOptions, pack_pool};
use npd_train::memory::{MMAP_THRESHOLD_ENV, mmap_threshold_fixed, peak_rise};
use npd_train::memory_plan::{StepShape, training};
use npd_train::tch::{Device, Kind};
use npd_train::train::{TrainOptions, Trainer};
use npd_train::{Llama, ModelConfig};

/// Peak memory of a training step by row length; prints a Markdown table.
#[derive(Debug, Parser)]
struct Args {
    /// Row lengths, in tokens.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8192")]
    lengths: Vec<usize>,
    /// Hidden size of the random model (its other sizes follow
    /// openPangu-Embedded-1B's proportions: 4 heads of 64 per 256, a
    /// quarter as many KV heads, MLP 3.5x hidden).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Vocabulary.
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// train.loss_chunk_tokens of the chunked runs.
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn model_config(a: &Args) -> ModelConfig {
    let heads = (a.hidden / 64).max(1);
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": a.vocab, "hidden_size": a.hidden,
        "intermediate_size": a.hidden * 7 / 2, "num_hidden_layers": a.layers,
        "num_attention_heads": heads, "num_key_value_heads": (heads / 4).max(1),
        "attention_bias": true, "tie_word_embeddings": false, "eos_token_id": 2,
        "max_position_embeddings": 1 << 20,
    });
    ModelConfig::from_json(&json.to_string(), "memory_bench").expect("a valid config")
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1u64 << 20) as f64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !mmap_threshold_fixed() {
        // Measurements need glibc's mmap threshold fixed from the start.
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(MMAP_THRESHOLD_ENV, "65536")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    npd_train::tch::set_num_threads(args.threads);
    let config = model_config(&args);
    println!(
        "Random model: hidden {}, {} layers, vocabulary {}, {} parameters; f32, CE on every \
         response token, one row per step.\n",
        config.hidden_size,
        config.num_layers,
        config.vocab_size,
        config.parameter_count().unwrap_or(0)
    );
    println!(
        "| row tokens | recompute | loss chunk | measured MiB | estimated MiB | estimate / measured |"
    );
    println!("|---|---|---|---|---|---|");
    let modes = [
        (false, 0),
        (true, 0),
        (false, args.chunk),
        (true, args.chunk),
    ];
    for &len in &args.lengths {
        let samples = train_samples(&[len], args.vocab - 4);
        let targets = samples[0].response_len() as u64;
        let rows = pack_pool(samples, &PackOptions::new(len))?;
        for (recompute, chunk) in modes {
            let mut options = TrainOptions::from_config(&TrainConfig {
                loss: LossKind::Ce,
                lr: 1e-4,
                min_lr: 1e-4,
                warmup_steps: 0,
                recompute,
                loss_chunk_tokens: chunk,
                ..TrainConfig::default()
            });
            options.max_nonfinite_steps = 100;
            let mut model = Llama::new(config.clone(), Device::Cpu);
            model.init_random(1, 0.02);
            let mut trainer = Trainer::new(model, options);
            trainer.step(&rows)?;
            let (step, rise) = peak_rise(|| trainer.step(&rows));
            step?;
            let estimate = training(
                &config,
                &StepShape {
                    tokens: len as u64,
                    targets,
                    precision: Kind::Float,
                    recompute,
                    loss_chunk_tokens: chunk as u64,
                },
            );
            let est = estimate.activations + estimate.logits;
            let measured = rise.unwrap_or(0);
            println!(
                "| {len} | {} | {} | {} | {} | {:.2} |",
                if recompute { "yes" } else { "no" },
                if chunk == 0 {
                    "all".to_string()
                } else {
                    chunk.to_string()
                },
                mib(measured),
                mib(est),
                est as f64 / measured.max(1) as f64
            );
        }
    }
    Ok(())
}
