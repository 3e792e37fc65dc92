//! Helpers of the end-to-end tests that run the examples as processes.

use std::path::{Path, PathBuf};

use npd_train::checkpoint::save_pretrained;
use npd_train::tch::{Device, Kind};
use npd_train::{Llama, ModelConfig};
use serde_json::{Value, json};

/// The built `distill_openpangu` example beside this test binary:
/// target/<profile>/deps/<test> → target/<profile>/examples/<example>.
#[allow(dead_code)]
pub fn example() -> PathBuf {
    example_named("distill_openpangu")
}

/// The built example `name` beside this test binary.
pub fn example_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

/// An empty scratch path, unique to this test process, named `what`.
#[allow(dead_code)]
pub fn scratch(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("npd-e2e-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Sends SIGINT (what Ctrl-C sends) to a running example. (Not every test
/// binary that includes this module sends signals.)
#[allow(dead_code)]
pub fn interrupt(child: &std::process::Child) {
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -INT {pid} failed");
}

/// The step events of a run folder's `metrics.jsonl` (none while it does
/// not exist).
#[allow(dead_code)]
pub fn step_events(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .collect()
}

/// The SentencePiece fixture the folder tests tokenize with.
#[allow(dead_code)]
pub fn spm_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/npd-train/tests/fixtures/tokenizers/spm-unigram-identity/tokenizer.model")
}

/// An openPangu-Embedded config.json (the upstream keys: `bias`,
/// top-level `rope_theta`, `torch_dtype`), scaled down.
#[allow(dead_code)]
pub fn pangu_config(vocab: usize, hidden: usize, layers: usize, eos: u32, tied: bool) -> Value {
    json!({
        "architectures": ["PanguEmbeddedForCausalLM"],
        "model_type": "PanguEmbedded",
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 4000000.0,
        "bias": true,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": eos,
        "pad_token_id": 0,
        "torch_dtype": "bfloat16",
        "use_cache": true
    })
}

/// Writes a random model folder with `config` and the SentencePiece
/// tokenizer, in bf16, sharded above `shard_bytes`.
#[allow(dead_code)]
pub fn model_folder(dir: &Path, config: &Value, seed: u64, shard_bytes: usize) {
    let text = serde_json::to_string_pretty(config).unwrap();
    let mut model = Llama::new(ModelConfig::from_json(&text, "test").unwrap(), Device::Cpu);
    model.init_random(seed, 0.05);
    model.set_kind(Kind::BFloat16);
    save_pretrained(&model, dir, Some(&text), shard_bytes).unwrap();
    std::fs::copy(spm_model(), dir.join("tokenizer.model")).unwrap();
}

/// Copies a folder tree (a run folder moved to another machine), leaving
/// out its lock.
#[allow(dead_code)]
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else if entry.file_name() != ".lock" {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
