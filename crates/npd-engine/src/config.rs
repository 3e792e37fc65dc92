//! The `[engine]` section: where rollouts and teacher scores come from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, MAX_THREADS, Section};

/// Which engine generates and scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The libtorch models in npd's own process.
    #[default]
    InProcess,
    /// vLLM servers: student rollouts and teacher scores over HTTP, the
    /// trainer in-process.
    Vllm,
}

/// Where rollouts and teacher scores come from, and how npd talks to
/// inference servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `in-process` or `vllm`.
    pub kind: EngineKind,
    /// URL of a running vLLM server of the student (started with
    /// `VLLM_SERVER_DEV_MODE=1` so that it can reload weights, on a copy of
    /// the student with untied embeddings); empty: npd starts one.
    pub student_url: String,
    /// URL of a running vLLM server of the teacher; empty: npd starts one.
    pub teacher_url: String,
    /// Python with vLLM installed, for servers npd starts; empty: the one
    /// `scripts/vllm.sh` installs into the npd cache.
    pub python: PathBuf,
    /// Cores of the student server npd starts
    /// (`VLLM_CPU_OMP_THREADS_BIND`, e.g. `0` or `0-3`); empty: the first
    /// half of the cores.
    pub student_cpus: String,
    /// Cores of the teacher server npd starts; empty: the second half of
    /// the cores.
    pub teacher_cpus: String,
    /// KV-cache size of each CPU server npd starts, GiB.
    pub kv_cache_gib: usize,
    /// Seconds a server npd starts may take to answer `/health`.
    pub startup_timeout_s: f64,
    /// Requests in flight per server.
    pub concurrency: usize,
    /// Seconds one HTTP call may take.
    pub timeout_s: f64,
    /// Further tries of a call that failed in transport or with a server
    /// error (5xx); then the run stops with the error.
    pub retries: u32,
    /// After every weight refresh the student server scores a probe
    /// sequence; its log-probs must be within this many nats per token of
    /// the trainer's, or the run stops.
    pub probe_tolerance: f64,
    /// Folder for the snapshots the student server reloads (it must be able
    /// to read it); empty: `served/` in the output folder.
    pub publish_dir: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::InProcess,
            student_url: String::new(),
            teacher_url: String::new(),
            python: PathBuf::new(),
            student_cpus: String::new(),
            teacher_cpus: String::new(),
            kv_cache_gib: 1,
            startup_timeout_s: 600.0,
            concurrency: 16,
            timeout_s: 300.0,
            retries: 2,
            probe_tolerance: 1e-3,
            publish_dir: PathBuf::new(),
        }
    }
}

impl Section for EngineConfig {
    const NAME: &'static str = "engine";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between("kv_cache_gib", self.kv_cache_gib, 1, 1 << 20)?;
        c.seconds("startup_timeout_s", self.startup_timeout_s)?;
        c.between("concurrency", self.concurrency, 1, MAX_THREADS)?;
        c.seconds("timeout_s", self.timeout_s)?;
        c.between("retries", self.retries, 0, 100)?;
        c.positive("probe_tolerance", self.probe_tolerance)?;
        for (key, cpus) in [
            ("student_cpus", &self.student_cpus),
            ("teacher_cpus", &self.teacher_cpus),
        ] {
            c.that(
                cpus.is_empty() || is_cpu_list(cpus),
                key,
                "empty (npd picks) or a list of cores such as `0-3` or `0,2,4-7`",
                format!("{cpus:?}"),
            )?;
        }
        for (key, url) in [
            ("student_url", &self.student_url),
            ("teacher_url", &self.teacher_url),
        ] {
            c.that(
                url.is_empty() || url.starts_with("http://"),
                key,
                "empty (npd starts the server) or an http:// URL",
                format!("{url:?}"),
            )?;
        }
        Ok(())
    }
}

/// Whether `s` is a list of cores as `VLLM_CPU_OMP_THREADS_BIND` takes
/// it: numbers and ranges `a-b` (a <= b), separated by commas.
fn is_cpu_list(s: &str) -> bool {
    let core = |t: &str| !t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit());
    s.split(',').all(|part| match part.split_once('-') {
        Some((a, b)) => core(a) && core(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
        None => core(part),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let check = Check::new("run.toml");
        let c = EngineConfig {
            student_url: "localhost:8000".into(),
            ..EngineConfig::default()
        };
        let err = c
            .validate(&check.section("engine"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.student_url") && err.contains("http://"),
            "{err}"
        );
        let c = EngineConfig {
            concurrency: 0,
            ..EngineConfig::default()
        };
        assert!(c.validate(&check.section("engine")).is_err());
        EngineConfig::default()
            .validate(&check.section("engine"))
            .unwrap();
        for (cpus, ok) in [
            ("0-3", true),
            ("0,2,4-7", true),
            ("5", true),
            ("3-1", false),
            ("localhost:8000", false),
            ("0,,1", false),
        ] {
            let c = EngineConfig {
                teacher_cpus: cpus.into(),
                ..EngineConfig::default()
            };
            assert_eq!(c.validate(&check.section("engine")).is_ok(), ok, "{cpus}");
        }
    }
}
