//! A trained openPangu-layout student's checkpoint loads elsewhere: its
//! `model/` folder carries the student folder's own `config.json`, its
//! tokenizer files and the `*.py` modules `auto_map` names, and
//! transformers (the vLLM install's, through `trust_remote_code`) loads it
//! and computes npd's logits within 1e-4.

mod common;
use common::python;

use std::path::{Path, PathBuf};
use std::process::Command;

use npd_core::traits::Persist;
use npd_train::Llama;
use npd_train::folder::{auto_map_modules, companion_files};
use npd_train::tch::{Device, Kind, Tensor};
use npd_train::train::Trainer;
use npd_train::weights::TensorStore;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The openPangu fixture as a real folder has it: `auto_map` in
/// `config.json` and its remote-code modules beside the weights.
fn student_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = fixtures().join("models/pangu-bf16");
    for f in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    for f in [
        "configuration_openpangu_dense.py",
        "modeling_openpangu_dense.py",
    ] {
        std::fs::copy(fixtures().join("remote_code").join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["auto_map"] = serde_json::json!({
        "AutoConfig": "configuration_openpangu_dense.PanguEmbeddedConfig",
        "AutoModelForCausalLM": "modeling_openpangu_dense.PanguEmbeddedForCausalLM",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join(".cache-marker"), "not copied").unwrap();
}

/// The logits of `tokens` (one sequence) under `m`.
fn logits(m: &Llama, tokens: &[i64]) -> Tensor {
    npd_train::tch::no_grad(|| {
        let positions: Vec<i64> = (0..tokens.len() as i64).collect();
        let h = m
            .forward_packed(
                &Tensor::from_slice(tokens),
                &Tensor::from_slice(&positions),
                &[tokens.len()],
            )
            .unwrap();
        m.logits(&h)
    })
}

#[test]
fn a_checkpoint_of_an_openpangu_student_loads_with_transformers_remote_code() {
    let dir = std::env::temp_dir().join(format!("npd-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let student = dir.join("student");
    student_folder(&student);
    let files = companion_files(&student).unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "configuration_openpangu_dense.py",
            "generation_config.json",
            "modeling_openpangu_dense.py"
        ],
        "weights, config.json and hidden files are not companions"
    );
    assert_eq!(
        auto_map_modules(&student),
        ["configuration_openpangu_dense", "modeling_openpangu_dense"]
    );

    // One training step, so the checkpoint holds weights of npd's own.
    let model = Llama::load(&student, Device::Cpu, Kind::Float).unwrap();
    let config_json = std::fs::read_to_string(student.join("config.json")).unwrap();
    let mut trainer = Trainer::new(model, common::ce_options())
        .with_config_json(Some(config_json))
        .with_companion_files(std::sync::Arc::new(files));
    common::one_step(&mut trainer, (0..24).map(|i| 3 + (i * 5) % 90).collect(), 2);
    let checkpoint = dir.join("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    trainer.save_state(&checkpoint).unwrap();
    let exported = checkpoint.join("model");
    for f in [
        "configuration_openpangu_dense.py",
        "modeling_openpangu_dense.py",
        "generation_config.json",
    ] {
        assert!(
            exported.join(f).is_file(),
            "{f} missing from the checkpoint"
        );
    }

    // npd's logits of a sequence against transformers' of the export.
    let tokens: Vec<i64> = vec![1, 17, 4, 60, 33, 8, 91, 2, 45];
    let ours = logits(trainer.model(), &tokens);
    let theirs = dir.join("theirs.safetensors");
    let script = format!(
        r#"
import os, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({exported:?}, trust_remote_code=True, dtype=torch.float32).eval()
assert type(m).__name__ == "PanguEmbeddedForCausalLM", type(m).__name__
with torch.no_grad():
    logits = m(torch.tensor([{tokens:?}])).logits[0].contiguous()
save_file({{"logits": logits}}, {theirs:?})
"#,
        exported = exported.display().to_string(),
        tokens = tokens,
        theirs = theirs.display().to_string(),
    );
    let out = Command::new(python())
        .arg("-c")
        .arg(&script)
        .env("HF_HOME", dir.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "transformers could not load the checkpoint:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut store = TensorStore::open_file(&theirs).unwrap();
    let theirs = store
        .take("logits", &ours.size())
        .unwrap()
        .to_kind(Kind::Float);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "max |logit diff| {diff:e}");
    // The weights moved from the fixture's: the export is the trained one.
    let fixture = Llama::load(&student, Device::Cpu, Kind::Float).unwrap();
    let before = logits(&fixture, &tokens);
    assert!((&before - &theirs).abs().max().double_value(&[]) > 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}
