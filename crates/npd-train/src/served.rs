//! The libtorch trainer beside inference servers: [`ServedStages`] keeps
//! training and the held-out evaluation in-process and takes student
//! rollouts, teacher scores and SFT's teacher-written responses from vLLM
//! servers.
//!
//! Every published snapshot is written as a Hugging Face folder the student
//! server reloads, in the configured dtype (bfloat16 by default: half the
//! bytes of float32), with **untied** embeddings (`lm_head.weight` written
//! out, `tie_word_embeddings: false`) whatever the student's own layout:
//! after vLLM reloads a model with tied embeddings its log-probs do not
//! match the checkpoint, while the untied copy computes exactly the same
//! function and reloads exactly. Each snapshot carries a probe (a fixed
//! sequence's log-probs under the weights as written, computed as the
//! trainer computes) that the server must reproduce after loading it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use npd_core::traits::{Evaluator, Generator, Learner, Persist, StepStats};
use npd_core::{Error, Method, PackedRow, PolicyVersion, Result, TokenId};
use npd_engine::{Probe, ProbeLog, Published, ServedDtype, ServerGroup, VllmGenerator, VllmScorer};
use npd_pipeline::Stages;
use npd_rollout::Schedule;
use tch::Kind;

use crate::checkpoint::save_pretrained;
use crate::eval::HeldOut;
use crate::generator::load_weights;
use crate::model::Llama;
use crate::score::ModelScorer;
use crate::stages::TchStages;
use crate::train::Trainer;

/// `config.json` of the served copy of `model` in `dtype`: the Llama
/// layout with attention biases and untied embeddings.
pub fn served_config(model: &Llama, dtype: Kind) -> Value {
    let mut v = model.config().to_llama_json();
    v["tie_word_embeddings"] = false.into();
    v["torch_dtype"] = dtype_name(dtype).into();
    v
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// The libtorch kind of a served dtype.
pub fn kind_of(dtype: ServedDtype) -> Kind {
    match dtype {
        ServedDtype::Float32 => Kind::Float,
        ServedDtype::Bfloat16 => Kind::BFloat16,
    }
}

/// The copy of `model` a server is given, with untied embeddings and
/// weights in `dtype`; `None` when `model` already is one.
fn served_copy(model: &Llama, dtype: Kind) -> Result<Option<Llama>> {
    let tied = model.config().tie_word_embeddings;
    if !tied && model.kind() == dtype {
        return Ok(None);
    }
    let mut config = model.config().clone();
    config.tie_word_embeddings = false;
    let mut copy = Llama::new(config, model.device());
    copy.set_kind(dtype);
    let mut weights = model.named_parameters();
    if tied {
        weights.push((
            "lm_head.weight".into(),
            model.output_weight().shallow_clone(),
        ));
    }
    load_weights(&mut copy, &weights)?;
    Ok(Some(copy))
}

/// Writes `model` for an inference server into `dir` (atomically): the
/// Llama layout with untied embeddings (both `embed_tokens` and `lm_head`
/// written), weights in `dtype`.
pub fn save_for_serving(model: &Llama, dir: &Path, dtype: Kind) -> Result<()> {
    write_served_copy(model, dir, dtype).map(drop)
}

/// [`save_for_serving`]; returns the copy it wrote when it needed one
/// (`None`: `model` itself was written).
fn write_served_copy(model: &Llama, dir: &Path, dtype: Kind) -> Result<Option<Llama>> {
    let config = served_config(model, dtype).to_string();
    let copy = served_copy(model, dtype)?;
    save_pretrained(
        copy.as_ref().unwrap_or(model),
        dir,
        Some(&config),
        usize::MAX,
    )?;
    Ok(copy)
}

/// [`save_for_serving`], then the probe of `tokens` on the weights as
/// written (rounded to `dtype`), computed in `model`'s own kind: what a
/// server that loaded the folder must reproduce.
pub fn publish_for_serving(
    model: &Llama,
    dir: &Path,
    dtype: Kind,
    tokens: &[TokenId],
) -> Result<Probe> {
    match write_served_copy(model, dir, dtype)? {
        None => probe(model, tokens),
        Some(mut copy) => {
            if copy.kind() != model.kind() {
                copy.set_kind(model.kind());
            }
            probe(&copy, tokens)
        }
    }
}

/// The folder name of the snapshot of `version`: `v` and six or more
/// digits.
pub fn snapshot_name(version: PolicyVersion) -> String {
    format!("v{version:06}")
}

/// Whether `name` is a folder name [`snapshot_name`] gives.
pub fn is_snapshot_name(name: &str) -> bool {
    name.strip_prefix('v')
        .is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Log-probs of `tokens[1..]` under `model`.
pub fn probe(model: &Llama, tokens: &[TokenId]) -> Result<Probe> {
    if tokens.len() < 2 {
        return Err(Error::invalid("probe", "needs at least two tokens"));
    }
    let scored = tch::no_grad(|| ModelScorer::new(model).response_scores(&[(tokens, 1)], None))?;
    let logprobs = scored
        .into_iter()
        .next()
        .map(|(lp, _)| lp)
        .unwrap_or_default();
    Ok(Probe {
        tokens: tokens.to_vec(),
        logprobs,
    })
}

/// A [`Trainer`] that publishes its snapshots as served folders under a
/// root (one sub-folder per version; older ones are removed once a newer
/// one is loaded).
pub struct PublishingTrainer {
    trainer: Trainer,
    root: PathBuf,
    probe_tokens: Vec<TokenId>,
    dtype: Kind,
    remove_on_drop: bool,
}

impl PublishingTrainer {
    /// Publishes `trainer`'s snapshots under `root` with weights in
    /// `dtype`, probed on `probe_tokens`.
    pub fn new(trainer: Trainer, root: PathBuf, probe_tokens: Vec<TokenId>, dtype: Kind) -> Self {
        Self {
            trainer,
            root,
            probe_tokens,
            dtype,
            remove_on_drop: false,
        }
    }

    /// Removes the snapshot folder when the trainer is dropped (the
    /// method ended and its snapshots are no longer read).
    pub fn removing_on_drop(mut self, remove: bool) -> Self {
        self.remove_on_drop = remove;
        self
    }

    /// The trainer.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }
}

impl Drop for PublishingTrainer {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Learner for PublishingTrainer {
    type Weights = Published;

    fn step(&mut self, rows: &[PackedRow]) -> Result<StepStats> {
        self.trainer.step(rows)
    }

    fn version(&self) -> PolicyVersion {
        self.trainer.version()
    }

    fn publish(&self) -> Result<Published> {
        let version = self.trainer.version();
        let dir = self.root.join(snapshot_name(version));
        let probe =
            publish_for_serving(self.trainer.model(), &dir, self.dtype, &self.probe_tokens)?;
        // Keep this snapshot and the one before (the server may still be
        // loading it); older ones are no longer read. Only folders named as
        // snapshots are removed: anything else in the folder is not npd's.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            let mut old: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p != &dir && p.is_dir())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| is_snapshot_name(&n.to_string_lossy()))
                })
                .collect();
            old.sort();
            old.pop();
            for p in old {
                let _ = std::fs::remove_dir_all(p);
            }
        }
        Ok(Published { dir, probe })
    }
}

impl Persist for PublishingTrainer {
    fn save_state(&self, dir: &Path) -> Result<()> {
        self.trainer.save_state(dir)
    }

    fn restore_state(&mut self, dir: &Path) -> Result<()> {
        self.trainer.restore_state(dir)
    }

    fn resume_only_files(&self) -> &'static [&'static str] {
        self.trainer.resume_only_files()
    }
}

/// The held-out evaluation of a [`ServedStages`] run: on evaluation
/// servers when the run has them (the learner's weights published to a
/// folder of their own, loaded by every evaluation server and probed, then
/// its greedy responses graded), else in-process. The RL stage's sampled
/// evaluation (pass@k) stays in-process.
pub struct ServedEval<'a> {
    local: HeldOut<'a>,
    remote: Option<EvalServers>,
}

/// Evaluation servers and where their weights are published.
struct EvalServers {
    generator: VllmGenerator,
    root: PathBuf,
    probe_tokens: Vec<TokenId>,
    dtype: Kind,
    concurrency: usize,
    /// Evaluations so far (each gets a folder of its own).
    count: u64,
}

impl ServedEval<'_> {
    fn on_servers(&mut self, learner: &PublishingTrainer) -> Result<f64> {
        let r = self.remote.as_mut().expect("called with servers");
        let model = learner.trainer().model();
        r.count += 1;
        let dir = r
            .root
            .join(format!("{}-{}", snapshot_name(learner.version()), r.count));
        let probe = publish_for_serving(model, &dir, r.dtype, &r.probe_tokens)?;
        let loaded = r.generator.load(
            Published {
                dir: dir.clone(),
                probe,
            },
            learner.version(),
        );
        // The servers read the folder while loading; then it is not needed.
        let _ = std::fs::remove_dir_all(&dir);
        loaded?;
        let prompts: Vec<npd_core::Prompt> = self
            .local
            .graded()
            .iter()
            .enumerate()
            .map(|(i, e)| npd_core::Prompt {
                id: npd_core::PromptId(i as u64),
                tokens: e.prompt.clone(),
            })
            .collect();
        let params = self.local.greedy();
        let mut responses = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(4 * r.concurrency.max(1)) {
            let written = r.generator.generate(chunk, &params)?;
            responses.extend(written.into_iter().map(|w| w.response));
        }
        Ok(self.local.grade(&responses))
    }
}

impl Evaluator<PublishingTrainer> for ServedEval<'_> {
    fn evaluate(&mut self, learner: &PublishingTrainer) -> Result<f64> {
        if self.remote.is_some() {
            self.on_servers(learner)
        } else {
            self.local.evaluate(learner.trainer())
        }
    }

    fn sampled(
        &mut self,
        learner: &PublishingTrainer,
        eval: &npd_core::sampled::SampledEval,
    ) -> Result<Option<npd_core::sampled::SampledScores>> {
        self.local
            .sampled_model(learner.trainer().model(), eval)
            .map(Some)
    }
}

/// The inference servers of a [`ServedStages`] and how to talk to them.
#[derive(Debug, Clone)]
pub struct Servers {
    /// The servers of the student (rollouts; each refreshed with published
    /// snapshots).
    pub student: ServerGroup,
    /// The servers of the teacher (scores, SFT's responses).
    pub teacher: ServerGroup,
    /// Servers that evaluate the student on the held-out prompts (loaded
    /// with the learner's weights at each evaluation); `None`: evaluation
    /// in-process.
    pub eval: Option<ServerGroup>,
    /// Requests in flight per server.
    pub concurrency: usize,
    /// Largest difference, in nats per token, between a refreshed server's
    /// probe log-probs and the trainer's.
    pub tolerance: f64,
    /// Where the tolerance comes from (for the message of a failed check).
    pub tolerance_source: String,
    /// The dtype of published snapshots.
    pub publish_dtype: ServedDtype,
    /// Where published snapshots are written (the student server must be
    /// able to read this folder).
    pub publish_root: PathBuf,
    /// Remove a method's snapshots when it ends (a publish root in
    /// memory); otherwise its last two stay.
    pub remove_finished: bool,
    /// The probe sequence.
    pub probe_tokens: Vec<TokenId>,
    /// Every probe check of the run.
    pub checks: ProbeLog,
}

/// [`TchStages`] with generation and teacher scoring on vLLM servers:
/// NPD's disaggregated schedule.
pub struct ServedStages<'a> {
    local: TchStages<'a>,
    servers: Servers,
}

impl<'a> ServedStages<'a> {
    /// In-process training, evaluation and SFT data from `local`; rollouts
    /// and teacher scores from `servers`.
    pub fn new(local: TchStages<'a>, servers: Servers) -> Self {
        Self { local, servers }
    }

    /// The in-process stages.
    pub fn local(&self) -> &TchStages<'a> {
        &self.local
    }

    /// The servers.
    pub fn servers(&self) -> &Servers {
        &self.servers
    }

    fn publishing(&self, trainer: Trainer, method: Method, seed: u64) -> PublishingTrainer {
        let root = self
            .servers
            .publish_root
            .join(format!("{}-seed{seed}", method.name()));
        PublishingTrainer::new(
            trainer,
            root,
            self.servers.probe_tokens.clone(),
            kind_of(self.servers.publish_dtype),
        )
        .removing_on_drop(self.servers.remove_finished)
    }
}

impl<'a> Stages for ServedStages<'a> {
    type Weights = Published;
    type Learner = PublishingTrainer;
    type Generator = VllmGenerator;
    type Teacher = VllmScorer;
    type Writer = VllmGenerator;
    type Evaluator = ServedEval<'a>;
    type Reference = crate::stages::Reference;

    fn learner(&self, method: Method, seed: u64) -> npd_pipeline::Result<PublishingTrainer> {
        let trainer = self.local.learner(method, seed)?;
        Ok(self.publishing(trainer, method, seed))
    }

    fn rl_learner(
        &self,
        method: Method,
        seed: u64,
        start: npd_pipeline::RlStart<'_>,
    ) -> npd_pipeline::Result<PublishingTrainer> {
        let trainer = self.local.rl_learner(method, seed, start)?;
        Ok(self.publishing(trainer, method, seed))
    }

    fn reference(&self, learner: &PublishingTrainer) -> npd_pipeline::Result<Self::Reference> {
        self.local.reference(learner.trainer())
    }

    fn reward(&self) -> npd_pipeline::Result<Box<npd_pipeline::grpo::RewardFn<'_>>> {
        self.local.reward()
    }

    fn generator(&self, method: Method) -> npd_pipeline::Result<VllmGenerator> {
        let s = &self.servers;
        let g = VllmGenerator::new(s.student.clone(), s.concurrency, 0, s.tolerance)
            .with_tolerance_source(s.tolerance_source.clone())
            .with_probe_log(s.checks.clone());
        Ok(match method {
            Method::NearPolicy => g.with_alone_prefix(self.local.alone_prefix().map(<[_]>::to_vec)),
            _ => g,
        })
    }

    fn teacher(&self) -> npd_pipeline::Result<VllmScorer> {
        Ok(VllmScorer::new(
            self.servers.teacher.clone(),
            self.servers.concurrency,
        ))
    }

    /// SFT's responses come from the teacher server (greedy), not from
    /// the in-process teacher.
    fn writer(&self) -> npd_pipeline::Result<VllmGenerator> {
        let s = &self.servers;
        Ok(VllmGenerator::new(
            s.teacher.clone(),
            s.concurrency,
            0,
            s.tolerance,
        ))
    }

    fn evaluator(&self) -> npd_pipeline::Result<ServedEval<'a>> {
        let s = &self.servers;
        Ok(ServedEval {
            local: self.local.evaluator()?,
            remote: s.eval.as_ref().map(|group| EvalServers {
                generator: VllmGenerator::new(group.clone(), s.concurrency, 0, s.tolerance)
                    .with_tolerance_source(s.tolerance_source.clone())
                    .with_probe_log(s.checks.clone()),
                root: s.publish_root.join("eval"),
                probe_tokens: s.probe_tokens.clone(),
                dtype: kind_of(s.publish_dtype),
                concurrency: s.concurrency,
                count: 0,
            }),
        })
    }

    fn schedule(&self) -> Schedule {
        Schedule::Disaggregated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshot_folders_are_recognised_as_npds() {
        assert_eq!(snapshot_name(7), "v000007");
        assert!(is_snapshot_name(&snapshot_name(7)));
        assert!(is_snapshot_name(&snapshot_name(12_345_678)));
        for other in ["keepme", "v12", "v00001a", "student-start", "v"] {
            assert!(!is_snapshot_name(other), "{other}");
        }
    }
}
