//! Model benchmarks, each a ratio measured side by side in one run:
//!
//! 1. a training step on packed rows vs padded batches, on a long-tailed
//!    length mix (much padding) and a near-uniform one (little padding);
//! 2. decoding 256 new tokens with vs without the KV cache;
//! 3. with `--python`, the same padded training step in transformers
//!    (eager, through the project's PyTorch) vs ours, at the same thread count.
//!
//! `cargo run --release --example model_bench -- --help`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use npd_benches::{lognormal_lengths, train_samples};
use npd_core::config::{LossKind, TrainConfig};
use npd_core::traits::Learner;
use npd_core::{PackedRow, SamplingParams, TokenId, TrainSample};
use npd_pack::stats::PackStats;
use npd_pack::{PackOptions, pack_pool};
use npd_train::generate::{Decoding, generate};
use npd_train::tch::Device;
use npd_train::train::{Layout, TrainOptions, Trainer};
use npd_train::{Llama, ModelConfig};

/// Benchmarks of the model code; prints a table of ratios.
#[derive(Debug, Parser)]
struct Args {
    /// libtorch intra-op threads (also used for the Python run).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Samples per training measurement.
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// Also time transformers' training step (needs scripts/pyenv.sh).
    #[arg(long)]
    python: bool,
}

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 4096, "hidden_size": 256,
    "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8,
    "num_key_value_heads": 4, "attention_bias": true, "tie_word_embeddings": true,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096}"#;

fn model() -> Llama {
    let mut m = Llama::new(
        ModelConfig::from_json(CONFIG, "bench").unwrap(),
        Device::Cpu,
    );
    m.init_random(0, 0.02);
    m
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn options(layout: Layout) -> TrainOptions {
    let mut o = TrainOptions::from_config(&TrainConfig {
        loss: LossKind::Ce,
        lr: 1e-4,
        warmup_steps: 0,
        steps: 1000,
        micro_batch_rows: 1,
        rows_per_step: 1,
        ..Default::default()
    });
    o.layout = layout;
    o
}

/// Seconds per pass over all batches (one optimizer step per batch).
fn time_steps(layout: Layout, batches: &[Vec<PackedRow>], reps: usize) -> f64 {
    let mut trainer = Trainer::new(model(), options(layout));
    trainer.step(&batches[0]).unwrap();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for b in batches {
                    trainer.step(b).unwrap();
                }
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Padded batches of `batch` samples in arrival order, each padded to its
/// longest sample.
fn padded_batches(samples: &[TrainSample], batch: usize) -> Vec<Vec<PackedRow>> {
    samples
        .chunks(batch)
        .map(|chunk| {
            let width = chunk.iter().map(|s| s.tokens.len()).max().unwrap();
            chunk
                .iter()
                .flat_map(|s| pack_pool(vec![s.clone()], &PackOptions::new(width)).unwrap())
                .collect()
        })
        .collect()
}

fn train_comparison(name: &str, lengths: &[usize], capacity: usize, reps: usize) -> (f64, f64) {
    let s = train_samples(lengths, 4000);
    let tokens: usize = lengths.iter().sum();
    let padded = padded_batches(&s, 8);
    let pad_slots: usize = padded.iter().map(|b| b.len() * b[0].capacity()).sum();
    let rows = pack_pool(s.clone(), &PackOptions::new(capacity)).unwrap();
    // Packed steps hold about as many tokens as padded ones.
    let per_step = (rows.len() / padded.len()).max(1);
    let packed: Vec<Vec<PackedRow>> = rows.chunks(per_step).map(<[_]>::to_vec).collect();
    let eff = PackStats::of_rows(&rows).efficiency();
    let t_pad = time_steps(Layout::Padded, &padded, reps);
    let t_pack = time_steps(Layout::Packed, &packed, reps);
    println!(
        "| train step, {name} | {} samples, {tokens} tokens; padding wastes {:.0}%, packing {:.1}% | padded {:.0} tok/s | packed {:.0} tok/s | **{:.2}x** |",
        lengths.len(),
        100.0 * (1.0 - tokens as f64 / pad_slots as f64),
        100.0 * (1.0 - eff),
        tokens as f64 / t_pad,
        tokens as f64 / t_pack,
        t_pad / t_pack
    );
    (t_pad, t_pack)
}

fn decode_comparison(reps: usize) {
    let m = model();
    let prompts: Vec<Vec<TokenId>> = (0..4)
        .map(|i| {
            (0..32)
                .map(|j| ((i * 97 + j * 13) % 4000 + 3) as TokenId)
                .collect()
        })
        .collect();
    let params = SamplingParams {
        temperature: 1.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens: 256,
        stop_ids: vec![],
        seed: 1,
    };
    let time = |d: Decoding| {
        median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let out = generate(&m, &prompts, &params, d).unwrap();
                    assert_eq!(out[0].tokens.len(), 256);
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let cached = time(Decoding::Cached);
    let uncached = time(Decoding::Uncached);
    println!(
        "| decode 256 new tokens, batch 4, prompt 32 | | uncached {:.0} tok/s | cached {:.0} tok/s | **{:.2}x** |",
        1024.0 / uncached,
        1024.0 / cached,
        uncached / cached
    );
}

fn python_comparison(threads: i32, reps: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = std::process::Command::new(root.join("scripts/pyenv.sh"))
        .output()
        .expect("scripts/pyenv.sh runs");
    let py = String::from_utf8_lossy(&py.stdout).trim().to_string();
    let (batch, len) = (8usize, 512usize);
    let lengths = vec![len; batch];
    let s = train_samples(&lengths, 4000);
    let rows = padded_batches(&s, batch);
    let ours = time_steps(Layout::Padded, &rows, reps.max(3));
    let out = std::process::Command::new(&py)
        .arg(root.join("scripts/bench/train_step.py"))
        .args([
            CONFIG,
            &batch.to_string(),
            &len.to_string(),
            &threads.to_string(),
            &reps.max(3).to_string(),
        ])
        .output()
        .expect("the Python benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("seconds_per_step "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no timing from Python: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let tokens = (batch * len) as f64;
    println!(
        "| train step vs transformers (eager), batch {batch} x {len}, CE + AdamW | | transformers {:.0} tok/s | npd {:.0} tok/s | **{:.2}x** |",
        tokens / theirs,
        tokens / ours,
        theirs / ours
    );
}

fn main() {
    let args = Args::parse();
    npd_train::tch::set_num_threads(args.threads);
    println!(
        "model: hidden 256, 4 layers, 8 heads / 4 KV heads, vocab 4096 ({:.1} M parameters); {} threads; median of {}",
        model().num_parameters() as f64 / 1e6,
        args.threads,
        args.reps
    );
    println!("| measure | workload | baseline | npd | ratio |\n|---|---|---|---|---|");
    let long_tail = lognormal_lengths(args.samples, 160.0, 0.9, 1024, 3);
    train_comparison("long-tailed lengths", &long_tail, 1024, args.reps);
    let near_uniform: Vec<usize> = (0..args.samples).map(|i| 460 + (i * 37) % 52).collect();
    train_comparison("near-uniform lengths", &near_uniform, 1024, args.reps);
    // The embedded task's mix: prompts of about 20 tokens, responses of 20
    // to 45, rows of 512.
    let short: Vec<usize> = (0..args.samples).map(|i| 40 + (i * 7) % 26).collect();
    train_comparison("short samples (embedded task)", &short, 512, args.reps);
    decode_comparison(args.reps);
    if args.python {
        python_comparison(args.threads, args.reps);
    }
}
