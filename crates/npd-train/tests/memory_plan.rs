//! The memory plan's estimate of a training step against the peak memory
//! the step takes on CPU: within 25%, with and without recomputation and
//! the chunked loss.
//!
//! The measurement needs glibc's mmap threshold fixed from the process's
//! start (see `npd_train::memory::MMAP_THRESHOLD_ENV`), so the test runs
//! itself again in a child process with it set, alone (`--exact`), so
//! nothing else allocates beside it.

use npd_core::config::{LossKind, TrainConfig};
use npd_core::traits::Learner;
use npd_core::{SampleId, TokenId, TrainSample};
use npd_pack::{PackOptions, pack_pool};
use npd_train::memory::{MMAP_THRESHOLD_ENV, mmap_threshold_fixed, peak_rise};
use npd_train::memory_plan::{StepShape, training};
use npd_train::tch::{Device, Kind};
use npd_train::train::{TrainOptions, Trainer};
use npd_train::{Llama, ModelConfig};

#[test]
fn the_training_estimate_is_within_a_quarter_of_the_measured_peak() {
    if !cfg!(target_os = "linux") {
        return;
    }
    if !mmap_threshold_fixed() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_training_estimate_is_within_a_quarter_of_the_measured_peak",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(MMAP_THRESHOLD_ENV, "65536")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("measured"),
            "the child measured nothing: {text}"
        );
        return;
    }
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 8000, "hidden_size": 128, "intermediate_size": 448,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
        "attention_bias": true, "tie_word_embeddings": false, "eos_token_id": 2,
        "max_position_embeddings": 4096,
    });
    let config = ModelConfig::from_json(&json.to_string(), "test").unwrap();
    let len = 1536;
    let sample = TrainSample {
        id: SampleId(0),
        tokens: (0..len).map(|j| (3 + (j * 7) % 7990) as TokenId).collect(),
        prompt_len: 16,
        weights: None,
        topk: None,
        policy: None,
    };
    let targets = sample.response_len() as u64;
    let rows = pack_pool(vec![sample], &PackOptions::new(len)).unwrap();
    for (recompute, chunk) in [(false, 0), (true, 0), (false, 256), (true, 256)] {
        let mut model = Llama::new(config.clone(), Device::Cpu);
        model.init_random(1, 0.02);
        let options = TrainOptions::from_config(&TrainConfig {
            loss: LossKind::Ce,
            recompute,
            loss_chunk_tokens: chunk,
            ..TrainConfig::default()
        });
        let mut trainer = Trainer::new(model, options);
        // The first step allocates the gradients.
        trainer.step(&rows).unwrap();
        let (step, rise) = peak_rise(|| trainer.step(&rows));
        step.unwrap();
        let measured = rise.expect("/proc/self/status and clear_refs are readable") as f64;
        let plan = training(
            &config,
            &StepShape {
                tokens: len as u64,
                targets,
                precision: Kind::Float,
                recompute,
                loss_chunk_tokens: chunk as u64,
            },
        );
        let estimate = (plan.activations + plan.logits) as f64;
        eprintln!(
            "recompute {recompute}, chunk {chunk}: measured {:.1} MiB, estimated {:.1} MiB",
            measured / 1048576.0,
            estimate / 1048576.0
        );
        assert!(
            (estimate / measured - 1.0).abs() <= 0.25,
            "recompute {recompute}, chunk {chunk}: estimated {estimate} bytes, measured {measured}"
        );
    }
}

/// Grouped-query attention reaches a fused kernel (its KV heads are
/// repeated for it) in f32 and bf16 on CPU (libtorch 2.13 picks flash).
#[test]
fn training_attention_uses_a_fused_kernel() {
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 64, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1,
        "eos_token_id": 2,
    });
    let config = ModelConfig::from_json(&json.to_string(), "test").unwrap();
    for kind in [Kind::Float, Kind::BFloat16] {
        let mut model = Llama::new(config.clone(), Device::Cpu);
        model.set_kind(kind);
        let kernel = model.attention_kernel(1024);
        eprintln!("{kind:?}: {kernel}");
        assert_ne!(kernel, "math", "{kind:?}");
    }
}
