//! A [`Generator`] backed by a vLLM server serving the student, refreshed
//! from checkpoints the trainer publishes, each refresh verified.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use npd_core::shuffle::derive_seed;
use npd_core::traits::Generator;
use npd_core::{Error, PolicyVersion, Prompt, Result, Rollout, SamplingParams, TokenId};

use crate::group::ServerGroup;
use crate::pool::map_bounded;
use crate::scorer::{SEQUENCES_PER_REQUEST, alone_logprobs};
use crate::vllm::Vllm;

/// A fixed token sequence and its log-probs under the trainer's model: the
/// check that a server holds the weights it was asked to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The sequence (at least two tokens).
    pub tokens: Vec<TokenId>,
    /// Log-prob of `tokens[i + 1]` after `tokens[..=i]`, by the trainer.
    pub logprobs: Vec<f32>,
}

/// Student weights as a Hugging Face folder the server can read, with the
/// probe the server must reproduce after loading them.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The folder (config.json and safetensors).
    pub dir: PathBuf,
    /// Log-probs the trainer computed with these weights.
    pub probe: Probe,
}

/// The outcome of one probe check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeCheck {
    /// Version of the weights checked.
    pub version: PolicyVersion,
    /// Largest absolute difference between the server's and the trainer's
    /// log-probs over the probe.
    pub max_abs_diff: f64,
    /// Whether it was within the tolerance.
    pub passed: bool,
    /// Largest difference between this version's probe and the previous
    /// check's, by the trainer: how far the weights moved on the probe. A
    /// refresh that did not take is caught only when this exceeds the
    /// tolerance (`None`: the first check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<f64>,
    /// Seconds the server took to reload the weights (`None`: no reload,
    /// the check at the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_s: Option<f64>,
}

/// Every probe check of a run, shared with whoever reports them.
pub type ProbeLog = Arc<Mutex<Vec<ProbeCheck>>>;

/// Student rollouts from vLLM servers (one or a group: each prompt goes to
/// one live member, and a member that stops answering is left out), one
/// request per prompt with `concurrency` in flight.
#[derive(Debug)]
pub struct VllmGenerator {
    servers: ServerGroup,
    concurrency: usize,
    version: PolicyVersion,
    tolerance: f64,
    alone_prefix: Option<Vec<TokenId>>,
    checks: ProbeLog,
    /// The probe of the weights the server holds (after the first check).
    last_probe: Option<Probe>,
    /// What the tolerance is and which key sets it, for messages.
    tolerance_source: String,
}

impl VllmGenerator {
    /// A generator over `servers` (one server or a group), which serve
    /// the weights of `version`; refreshes must reproduce their probe
    /// within `tolerance` (absolute, in nats per token) on every live
    /// member.
    pub fn new(
        servers: impl Into<ServerGroup>,
        concurrency: usize,
        version: PolicyVersion,
        tolerance: f64,
    ) -> Self {
        Self {
            servers: servers.into(),
            concurrency: concurrency.max(1),
            version,
            tolerance,
            alone_prefix: None,
            checks: ProbeLog::default(),
            last_probe: None,
            tolerance_source: format!("tolerance {tolerance:.1e}"),
        }
    }

    /// Names where the tolerance comes from in the error of a failed check
    /// (e.g. `engine.student_probe_tolerance = 1e-3`).
    pub fn with_tolerance_source(mut self, source: impl Into<String>) -> Self {
        self.tolerance_source = source.into();
        self
    }

    /// Also scores each response alone after `prefix` (BOS and the
    /// assistant header) on the same server, filling
    /// [`Rollout::response_alone_logprobs`].
    pub fn with_alone_prefix(mut self, prefix: Option<Vec<TokenId>>) -> Self {
        self.alone_prefix = prefix;
        self
    }

    /// Records probe checks into `log` (shared with a report).
    pub fn with_probe_log(mut self, log: ProbeLog) -> Self {
        self.checks = log;
        self
    }

    /// The servers.
    pub fn servers(&self) -> &ServerGroup {
        &self.servers
    }

    /// Checks that every live server reproduces `probe` within the
    /// tolerance, records the checks, and fails naming the server, the
    /// version and the difference otherwise.
    pub fn check(&self, probe: &Probe, version: PolicyVersion) -> Result<Vec<ProbeCheck>> {
        let mut out = Vec::new();
        for (i, server) in self.servers.members().iter().enumerate() {
            if self.servers.is_live(i) {
                out.push(self.check_reloaded(server, probe, version, None)?);
            }
        }
        Ok(out)
    }

    fn check_reloaded(
        &self,
        server: &Vllm,
        probe: &Probe,
        version: PolicyVersion,
        reload_s: Option<f64>,
    ) -> Result<ProbeCheck> {
        let mut check = verify(server, probe, version, self.tolerance)?;
        check.reload_s = reload_s;
        check.moved = self
            .last_probe
            .as_ref()
            .filter(|p| p.tokens == probe.tokens)
            .map(|p| max_abs_diff(&p.logprobs, &probe.logprobs));
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(check.clone());
        if !check.passed {
            return Err(Error::invalid(
                format!("student server {}", server.client().base()),
                format!(
                    "after loading version {version} its log-probs differ from the trainer's by up to {:.3e} \
                     ({}): the server does not hold the trained weights",
                    check.max_abs_diff, self.tolerance_source
                ),
            ));
        }
        Ok(check)
    }

    fn rollout(&self, p: &Prompt, params: &SamplingParams) -> Result<Rollout> {
        let seed = derive_seed(params.seed, p.id.0);
        let c = self
            .servers
            .call(p.id.0, |s| s.complete(&p.tokens, params, seed))?;
        Ok(Rollout {
            prompt_id: p.id,
            prompt: p.tokens.clone(),
            response: c.tokens,
            response_logprobs: c.logprobs,
            response_alone_logprobs: Vec::new(),
            policy_version: self.version,
            finish: c.finish,
        })
    }
}

/// Scores `probe` on `server` and compares it with the trainer's log-probs.
pub fn verify(
    server: &Vllm,
    probe: &Probe,
    version: PolicyVersion,
    tolerance: f64,
) -> Result<ProbeCheck> {
    let got = server.prompt_logprobs(&probe.tokens, 0)?.actual;
    if got.len() != probe.logprobs.len() {
        return Err(Error::invalid(
            "probe",
            format!(
                "{} log-probs from the server, {} from the trainer",
                got.len(),
                probe.logprobs.len()
            ),
        ));
    }
    let max_abs_diff = max_abs_diff(&got, &probe.logprobs);
    Ok(ProbeCheck {
        version,
        max_abs_diff,
        passed: max_abs_diff <= tolerance,
        moved: None,
        reload_s: None,
    })
}

/// Largest absolute difference of two log-prob sequences of one length (a
/// NaN counts as infinitely far).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let d = f64::from(*a) - f64::from(*b);
            if d.is_nan() { f64::INFINITY } else { d.abs() }
        })
        .fold(0.0, f64::max)
}

impl Generator for VllmGenerator {
    type Weights = Published;

    fn version(&self) -> PolicyVersion {
        self.version
    }

    /// Reloads every live server from `weights.dir` (each paused
    /// meanwhile) and checks the probe on each; a failed check ends the run
    /// with an error (a server with other weights must never write
    /// rollouts), while a server that stops answering is left out.
    fn load(&mut self, weights: Published, version: PolicyVersion) -> Result<()> {
        let mut last = None;
        for (i, server) in self.servers.members().iter().enumerate() {
            if !self.servers.is_live(i) {
                continue;
            }
            let started = std::time::Instant::now();
            let checked = server.reload(&weights.dir).and_then(|()| {
                let reload_s = started.elapsed().as_secs_f64();
                self.check_reloaded(server, &weights.probe, version, Some(reload_s))
            });
            match checked {
                Ok(_) => {}
                Err(e @ Error::Backend { .. }) => {
                    self.servers.lose(i, &e);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if self.servers.live() == 0 {
            return Err(last.unwrap_or_else(|| Error::Backend {
                context: "student servers".into(),
                cause: "none left to load the weights".into(),
            }));
        }
        self.last_probe = Some(weights.probe);
        self.version = version;
        Ok(())
    }

    fn generate(&mut self, prompts: &[Prompt], params: &SamplingParams) -> Result<Vec<Rollout>> {
        let mut rollouts = map_bounded(prompts, self.concurrency, |_, p| self.rollout(p, params))?;
        if let Some(prefix) = &self.alone_prefix {
            let chunks: Vec<&[Rollout]> = rollouts.chunks(SEQUENCES_PER_REQUEST).collect();
            let alone = map_bounded(&chunks, self.concurrency, |i, c| {
                self.servers.call(i as u64, |s| {
                    alone_logprobs(s, prefix, c.iter().map(|r| r.response.as_slice()))
                })
            })?;
            for (r, a) in rollouts.iter_mut().zip(alone.into_iter().flatten()) {
                r.response_alone_logprobs = a;
            }
        }
        Ok(rollouts)
    }
}
