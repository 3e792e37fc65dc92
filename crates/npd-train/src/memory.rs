//! Whether a model fits in memory before its weights are allocated: an
//! allocation libtorch cannot make aborts or panics inside it, so sizes
//! are checked against the memory the device has first.

use tch::Device;

use npd_core::{Error, Result};

use crate::ModelConfig;

/// Bytes per parameter a trained model holds on its device: f32 weights,
/// their gradients and AdamW's two moments.
pub const TRAINED_BYTES_PER_PARAMETER: u64 = 16;

/// Bytes per parameter of a model whose f32 weights are only read.
pub const LOADED_BYTES_PER_PARAMETER: u64 = 4;

/// Bytes the device can still allocate: `MemAvailable` of
/// `/proc/meminfo` on CPU; `None` where it is not known (CUDA devices,
/// systems without `/proc`), in which case no check is made.
pub fn available(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => {
            let text = std::fs::read_to_string("/proc/meminfo").ok()?;
            meminfo_available(&text)
        }
        _ => None,
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Fails unless `config`'s parameters, at `bytes_per_parameter` each, fit
/// in `available` bytes; the error names `what` (the keys or file that set
/// the sizes), the memory needed and the memory there is.
pub fn check_fits(
    what: &str,
    config: &ModelConfig,
    bytes_per_parameter: u64,
    available: Option<u64>,
) -> Result<()> {
    let needed = config
        .parameter_count()
        .and_then(|n| n.checked_mul(bytes_per_parameter));
    let Some(available) = available else {
        return Ok(());
    };
    match needed {
        Some(n) if n <= available => Ok(()),
        _ => Err(Error::invalid(
            what,
            format!(
                "a model of {} parameters (hidden {}, {} layers, vocabulary {}) needs {} \
                 ({bytes_per_parameter} bytes per parameter); the device has {} available",
                config
                    .parameter_count()
                    .map_or("too many".to_string(), |n| n.to_string()),
                config.hidden_size,
                config.num_layers,
                config.vocab_size,
                needed.map_or("more than 16 EiB".to_string(), gib),
                gib(available)
            ),
        )),
    }
}

/// Resident memory of this process now and its peak since the last reset,
/// in bytes (`VmRSS` and `VmHWM` of `/proc/self/status`); `None` where
/// they cannot be read.
pub fn resident() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()?
            .checked_mul(1024)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// glibc's tunable (an environment variable read at start) that fixes
/// its mmap threshold: set to 65536, every tensor-sized block is mapped on
/// allocation and returned to the OS on free. Left adaptive, glibc keeps
/// freed blocks for reuse, and memory an earlier step freed hides the next
/// step's allocations from [`peak_rise`].
pub const MMAP_THRESHOLD_ENV: &str = "MALLOC_MMAP_THRESHOLD_";

/// Whether this process started with [`MMAP_THRESHOLD_ENV`] set.
pub fn mmap_threshold_fixed() -> bool {
    std::env::var_os(MMAP_THRESHOLD_ENV).is_some()
}

/// Runs `f` and returns its result and how far the process's resident
/// memory rose above where it was before `f` at its peak (the peak is
/// reset first through `/proc/self/clear_refs`). `None` for the rise where
/// Linux's counters are not available, or where the process did not start
/// with [`MMAP_THRESHOLD_ENV`] set (the rise would be too low). Other
/// threads' allocations count too: measure with nothing else running.
pub fn peak_rise<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = resident();
    let out = f();
    let after = resident();
    let rise = match (reset && mmap_threshold_fixed(), before, after) {
        (true, Some((base, _)), Some((_, peak))) => Some(peak.saturating_sub(base)),
        _ => None,
    };
    (out, rise)
}

/// `bytes` in GiB, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hidden: usize) -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 1000, "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "eos_token_id": 2,
        });
        ModelConfig::from_json(&json.to_string(), "config.json").unwrap()
    }

    #[test]
    fn a_model_larger_than_memory_is_named_with_what_it_needs() {
        let c = config(4096);
        let n = c.parameter_count().unwrap();
        check_fits("embedded.student", &c, 16, Some(16 * n)).unwrap();
        let err = check_fits("embedded.student", &c, 16, Some(16 * n - 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("embedded.student") && err.contains("GiB available"),
            "{err}"
        );
        check_fits("x", &c, 16, None).unwrap();
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_available(text), Some(2 << 20));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(available(Device::Cpu).is_some_and(|b| b > 0));
        }
    }
}

#[cfg(test)]
mod folder_tests {
    use crate::Llama;

    /// A folder whose `config.json` describes a model larger than memory
    /// fails naming the file and its size keys, before any allocation.
    #[test]
    fn a_folder_too_big_for_memory_is_refused_before_allocation() {
        let dir = std::env::temp_dir().join(format!("npd-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 153376, "hidden_size": 131072, "intermediate_size": 8192,
            "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 8,
            "eos_token_id": 2,
        });
        std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
        let err = Llama::load(&dir, tch::Device::Cpu, tch::Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("hidden_size") && err.contains("GiB"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
