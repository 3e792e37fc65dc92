//! Checks of the model code on a CUDA device, for `scripts/gpu-check.sh`:
//!
//! 1. logits of a random openPangu-layout model on CUDA against CPU, in
//!    f32 and bf16 (largest absolute difference, against a tolerance);
//! 2. cached greedy decoding on CUDA equals uncached decoding (f32; the
//!    bf16 agreement is printed);
//! 3. bf16 training steps with recomputation on a randomly initialised
//!    model of openPangu-Embedded-1B's shape: tokens per second, and the
//!    attention kernel libtorch picks.
//!
//! Prints one line per check and exits non-zero when a check fails.
//! `cargo run --release --example gpu_check -- --help`

use std::time::Instant;

use clap::Parser;
use npd_core::config::{LossKind, Precision, TrainConfig};
use npd_core::traits::Learner;
use npd_core::{SampleId, SamplingParams, TokenId, TrainSample};
use npd_pack::{PackOptions, pack_pool};
use npd_train::device::{Libtorch, parse_device};
use npd_train::generate::{Decoding, generate};
use npd_train::tch::{Cuda, Device, Kind, Tensor};
use npd_train::train::{TrainOptions, Trainer};
use npd_train::{Llama, ModelConfig};

/// GPU checks of the model code.
#[derive(Debug, Parser)]
struct Args {
    /// Device to check: cuda, cuda:N, or cpu (the same checks against
    /// the CPU itself, to try the program where no GPU is).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Tokens of each training row.
    #[arg(long, default_value_t = 4096)]
    row: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Decoder layers of the 1B-shaped model (26 in openPangu-Embedded-1B).
    #[arg(long, default_value_t = 26)]
    layers: usize,
}

fn config(hidden: usize, layers: usize, heads: usize, kv: usize, mlp: usize) -> ModelConfig {
    let json = serde_json::json!({
        "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded",
        "vocab_size": 153376, "hidden_size": hidden, "intermediate_size": mlp,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "bias": true, "tie_word_embeddings": true,
        "rope_theta": 4000000.0, "eos_token_id": 45892, "max_position_embeddings": 32768,
    });
    ModelConfig::from_json(&json.to_string(), "gpu_check").expect("a valid config")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    print!("{}", Libtorch::probe());
    let device = parse_device(&args.device)?;
    let sync = || {
        if let Device::Cuda(n) = device {
            Cuda::synchronize(n as i64);
        }
    };
    let mut failed = 0;

    // 1. Logits on CUDA against CPU.
    let small = config(256, 2, 4, 2, 1024);
    let mut cpu = Llama::new(small.clone(), Device::Cpu);
    cpu.init_random(7, 0.02);
    let tokens: Vec<i64> = (0..96).map(|i| (i * 1237 + 11) % 153_000).collect();
    let lengths = [40usize, 56];
    let positions: Vec<i64> = lengths.iter().flat_map(|&l| 0..l as i64).collect();
    let reference = npd_train::tch::no_grad(|| -> npd_core::Result<Tensor> {
        let h = cpu.forward_packed(
            &Tensor::from_slice(&tokens),
            &Tensor::from_slice(&positions),
            &lengths,
        )?;
        Ok(cpu.logits(&h))
    })?;
    for (kind, tolerance) in [(Kind::Float, 1e-3), (Kind::BFloat16, 0.1)] {
        let mut gpu = Llama::new(small.clone(), device);
        npd_train::tch::no_grad(|| {
            for ((_, mut g), (_, c)) in gpu
                .named_parameters()
                .into_iter()
                .zip(cpu.named_parameters())
            {
                g.copy_(&c);
            }
        });
        gpu.set_kind(kind);
        let logits = npd_train::tch::no_grad(|| -> npd_core::Result<Tensor> {
            let h = gpu.forward_packed(
                &Tensor::from_slice(&tokens).to_device(device),
                &Tensor::from_slice(&positions).to_device(device),
                &lengths,
            )?;
            Ok(gpu.logits(&h).to_kind(Kind::Float).to_device(Device::Cpu))
        })?;
        let diff = (&logits - &reference).abs().max().double_value(&[]);
        let ok = diff <= tolerance;
        failed += usize::from(!ok);
        println!(
            "logits {kind:?} on {} vs f32 CPU: max |diff| {diff:.2e} (tolerance {tolerance:e}) {}",
            args.device,
            if ok { "ok" } else { "FAILED" }
        );

        // 2. Cached greedy decoding equals uncached.
        let prompts: Vec<Vec<TokenId>> = vec![vec![5, 17, 300, 9], vec![44, 2, 1000]];
        let params = SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            max_new_tokens: 32,
            stop_ids: vec![],
            seed: 0,
        };
        let cached = generate(&gpu, &prompts, &params, Decoding::Cached)?;
        let uncached = generate(&gpu, &prompts, &params, Decoding::Uncached)?;
        // Tokens before the first disagreement, per prompt. In f32 both
        // paths must agree on every token; in bf16 the two paths round
        // differently and a near tie may flip, so the agreement is printed.
        let agreeing: Vec<usize> = cached
            .iter()
            .zip(&uncached)
            .map(|(a, b)| {
                let n = a
                    .tokens
                    .iter()
                    .zip(&b.tokens)
                    .take_while(|(x, y)| x == y)
                    .count();
                if a.tokens.len() == b.tokens.len() && n == a.tokens.len() {
                    params.max_new_tokens
                } else {
                    n
                }
            })
            .collect();
        let same = agreeing.iter().all(|&n| n == params.max_new_tokens);
        let verdict = match (same, kind) {
            (true, _) => "ok",
            (false, Kind::Float) => "FAILED",
            (false, _) => "differs (bf16 rounding, not a failure)",
        };
        failed += usize::from(!same && kind == Kind::Float);
        println!(
            "cached greedy decoding {kind:?} vs uncached: tokens agreeing per prompt {agreeing:?} of {}: {verdict}",
            params.max_new_tokens
        );
    }

    // 3. bf16 training with recomputation, 1B-shaped.
    let one_b = config(1536, args.layers, 12, 6, 6144);
    let mut model = Llama::new(one_b.clone(), device);
    model.init_random(3, 0.02);
    println!("attention kernel at {} tokens in bf16: {}", args.row, {
        let mut probe = Llama::new(config(256, 1, 4, 2, 512), device);
        probe.set_kind(Kind::BFloat16);
        probe.attention_kernel(args.row)
    });
    let options = TrainOptions::from_config(&TrainConfig {
        loss: LossKind::Ce,
        precision: Precision::Bf16,
        recompute: true,
        loss_chunk_tokens: 2048,
        ..TrainConfig::default()
    });
    let mut trainer = Trainer::new(model, options);
    let sample = TrainSample {
        id: SampleId(0),
        tokens: (0..args.row)
            .map(|j| (3 + (j * 7919) % 153_000) as TokenId)
            .collect(),
        prompt_len: 64,
        weights: None,
        topk: None,
        policy: None,
    };
    let rows = pack_pool(vec![sample], &PackOptions::new(args.row))?;
    let first = trainer.step(&rows)?;
    sync();
    let start = Instant::now();
    let mut last = first.clone();
    for _ in 0..args.steps {
        last = trainer.step(&rows)?;
    }
    sync();
    let secs = start.elapsed().as_secs_f64();
    let finite = first.loss.is_finite() && last.loss.is_finite();
    failed += usize::from(!finite);
    println!(
        "bf16 training, recompute, {} layers, {} tokens per step: {:.0} tokens/s; loss {:.4} -> {:.4} {}",
        args.layers,
        args.row,
        (args.row * args.steps) as f64 / secs,
        first.loss,
        last.loss,
        if finite { "ok" } else { "FAILED" }
    );
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
