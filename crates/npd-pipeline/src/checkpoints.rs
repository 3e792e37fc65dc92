//! Checkpoints of method runs and resuming them.
//!
//! Each method and seed writes into its own folder under
//! [`Checkpoints::root`]: `step-NNNNNNNN/` checkpoints and `outcome.json`
//! once the run has finished. A checkpoint folder holds what the learner's
//! [`Persist::save_state`] writes (for the libtorch backend: the student
//! in the Hugging Face layout and the AdamW moments) and [`RUN_FILE`], the
//! loop's own [`SavedRun`]: the step, the accuracy curve, the clock and,
//! for NPD, the prompt ledger and the id of the next prompt. The folder is
//! written beside its final name and renamed into place, so a killed run
//! leaves either the previous checkpoint or the new one.
//!
//! A run started again with a checkpoint present continues from it; a
//! finished run is not run again.
//!
//! What a resumed NPD run does with work in flight: every prompt the ledger
//! holds as open (queued in the engine, being generated, scored or waiting
//! in the packer when the checkpoint was written) is submitted again before
//! any new prompt, so none is lost; prompts trained on after the checkpoint
//! are open in it and are trained on once more, by a student whose weights
//! went back to the checkpoint too, so none is trained twice by the weights
//! that finish the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use npd_core::fs::{is_partial, partial_dir, replace_dir, write_atomic};
use npd_core::traits::Persist;
use npd_core::{Method, PromptId};
use npd_filter::FilterReport;
use npd_rollout::Ledger;

use crate::error::{Error, Result};
use crate::outcome::{CurvePoint, Outcome};

/// File of a run folder recording a finished run's [`Outcome`].
pub const OUTCOME_FILE: &str = "outcome.json";
/// File of a checkpoint holding the loop's [`SavedRun`]; a folder without it
/// is not a complete checkpoint.
pub const RUN_FILE: &str = "run.json";

/// Where and how often method runs write checkpoints.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// Root folder; each method and seed writes under
    /// [`Checkpoints::run_dir`].
    pub root: PathBuf,
    /// Steps between checkpoints; 0 writes them only at the end and when
    /// stopped.
    pub every: u64,
    /// Checkpoints kept per run (older ones are deleted); at least 1.
    pub keep: usize,
    /// Keep the learner's resume-only files (see
    /// [`Persist::resume_only_files`]: the optimizer state) in every kept
    /// checkpoint; otherwise only the latest has them.
    pub resume_state_in_all: bool,
}

/// Name of the checkpoint folder of `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        Error::Stage(npd_core::Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Checkpoints {
    /// Checkpoints under `root` every `every` steps, keeping two, the
    /// older one without the learner's resume-only files.
    pub fn new(root: impl Into<PathBuf>, every: u64) -> Self {
        Self {
            root: root.into(),
            every,
            keep: 2,
            resume_state_in_all: false,
        }
    }

    /// Whether every kept checkpoint has the learner's resume-only files.
    pub fn with_resume_state_in_all(mut self, all: bool) -> Self {
        self.resume_state_in_all = all;
        self
    }

    /// The folder of one method and seed.
    pub fn run_dir(&self, method: Method, seed: u64) -> PathBuf {
        self.root.join(format!("{}-seed{seed}", method.slug()))
    }

    /// Whether a checkpoint is due after `step` (the last step always is).
    pub fn due(&self, step: u64, last: bool) -> bool {
        last || (self.every > 0 && step.is_multiple_of(self.every))
    }

    /// The complete checkpoints of a run, oldest first, as (step, folder).
    /// Partial folders left by a killed writer are not listed.
    pub fn list(&self, method: Method, seed: u64) -> Result<Vec<(u64, PathBuf)>> {
        let root = self.run_dir(method, seed);
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io(&root)(source)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if entry.path().join(RUN_FILE).is_file() {
                found.push((step, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// The newest complete checkpoint of a run: its step and folder.
    pub fn latest(&self, method: Method, seed: u64) -> Result<Option<(u64, PathBuf)>> {
        Ok(self.list(method, seed)?.pop())
    }

    /// Writes the checkpoint of `saved.step`: the learner's state and the
    /// run state, into a folder that appears whole. Older checkpoints
    /// beyond [`Checkpoints::keep`] and partial folders are deleted, and,
    /// unless [`Checkpoints::resume_state_in_all`], the learner's
    /// resume-only files of every checkpoint but the new one (once the new
    /// one is in place, so a resume always finds one complete checkpoint).
    pub fn save<L: Persist + ?Sized>(&self, learner: &L, saved: &SavedRun) -> Result<PathBuf> {
        let run_dir = self.run_dir(saved.method, saved.seed);
        let dir = run_dir.join(checkpoint_name(saved.step));
        let tmp = partial_dir(&dir)?;
        learner.save_state(&tmp)?;
        let text = serde_json::to_string_pretty(saved).expect("run state serialises");
        write_atomic(&tmp.join(RUN_FILE), text.as_bytes())?;
        replace_dir(&tmp, &dir)?;
        self.prune(saved.method, saved.seed)?;
        if !self.resume_state_in_all {
            for (_, older) in self.list(saved.method, saved.seed)? {
                if older == dir {
                    continue;
                }
                for file in learner.resume_only_files() {
                    let path = older.join(file);
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io(&path)(e));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(dir)
    }

    /// Restores the learner from checkpoint folder `dir` and returns the
    /// run state, checked to belong to `method` and `seed`.
    pub fn load<L: Persist + ?Sized>(
        &self,
        learner: &mut L,
        dir: &Path,
        method: Method,
        seed: u64,
    ) -> Result<SavedRun> {
        let path = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let saved: SavedRun = serde_json::from_str(&text).map_err(|e| Error::State {
            path: path.clone(),
            message: format!("run state in the checkpoint is malformed: {e}"),
        })?;
        if saved.method != method || saved.seed != seed {
            return Err(Error::State {
                path,
                message: format!(
                    "checkpoint of {} seed {}, expected {method} seed {seed}",
                    saved.method, saved.seed
                ),
            });
        }
        learner.restore_state(dir)?;
        Ok(saved)
    }

    fn prune(&self, method: Method, seed: u64) -> Result<()> {
        let all = self.list(method, seed)?;
        let drop = all.len().saturating_sub(self.keep.max(1));
        for (_, dir) in &all[..drop] {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        if let Ok(entries) = std::fs::read_dir(self.run_dir(method, seed)) {
            for entry in entries.flatten() {
                if is_partial(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }

    /// The outcome of a run that finished, if it did.
    pub fn finished(&self, method: Method, seed: u64) -> Result<Option<Outcome>> {
        let path = self.run_dir(method, seed).join(OUTCOME_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::State {
                    path,
                    message: format!("not an outcome: {e}"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io(&path)(source)),
        }
    }

    /// Records a finished run.
    pub fn record(&self, outcome: &Outcome) -> Result<()> {
        let dir = self.run_dir(outcome.method, outcome.seed);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let text = serde_json::to_string_pretty(outcome).expect("outcomes serialise");
        Ok(write_atomic(&dir.join(OUTCOME_FILE), text.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A learner whose state is a weights file and an optimizer file.
    struct Files;

    impl Persist for Files {
        fn save_state(&self, dir: &Path) -> npd_core::Result<()> {
            std::fs::write(dir.join("weights"), "w").unwrap();
            std::fs::write(dir.join("optimizer"), "o").unwrap();
            Ok(())
        }

        fn restore_state(&mut self, _: &Path) -> npd_core::Result<()> {
            Ok(())
        }

        fn resume_only_files(&self) -> &'static [&'static str] {
            &["optimizer"]
        }
    }

    fn saved(step: u64) -> SavedRun {
        SavedRun {
            method: Method::NearPolicy,
            seed: 0,
            step,
            wall_s: 0.0,
            stages: BTreeMap::new(),
            curve: Vec::new(),
            tokens: 0,
            slots: 0,
            skipped: 0,
            resumed_at: Vec::new(),
            refreshes: 0,
            truncated: 0,
            npd: None,
            grpo: None,
            rl: None,
        }
    }

    #[test]
    fn only_the_latest_checkpoint_keeps_resume_only_files_unless_asked() {
        for all in [false, true] {
            let root =
                std::env::temp_dir().join(format!("npd-ckpt-slim-{all}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let c = Checkpoints::new(&root, 1).with_resume_state_in_all(all);
            for step in 1..=3 {
                c.save(&Files, &saved(step)).unwrap();
            }
            let kept = c.list(Method::NearPolicy, 0).unwrap();
            assert_eq!(kept.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3]);
            let (_, older) = &kept[0];
            let (_, latest) = &kept[1];
            assert!(older.join("weights").is_file() && latest.join("weights").is_file());
            assert!(latest.join("optimizer").is_file());
            assert_eq!(older.join("optimizer").is_file(), all);
            let _ = std::fs::remove_dir_all(&root);
        }
    }
}

/// The loop's state that a checkpoint carries besides the learner's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    /// Method.
    pub method: Method,
    /// Seed.
    pub seed: u64,
    /// Optimizer steps completed.
    pub step: u64,
    /// Wall-clock seconds so far, evaluation excluded.
    pub wall_s: f64,
    /// Seconds per stage so far.
    pub stages: BTreeMap<String, f64>,
    /// Accuracy curve so far.
    pub curve: Vec<CurvePoint>,
    /// Tokens trained on so far.
    pub tokens: usize,
    /// Token slots computed so far.
    pub slots: usize,
    /// Steps skipped for a non-finite loss so far.
    #[serde(default)]
    pub skipped: u64,
    /// Steps at which the run was resumed before.
    pub resumed_at: Vec<u64>,
    /// Weights published to the generator so far.
    #[serde(default)]
    pub refreshes: u64,
    /// Student responses that hit the length limit so far.
    #[serde(default)]
    pub truncated: u64,
    /// NPD's own state.
    pub npd: Option<SavedNpd>,
    /// RL: where the prompt order stands.
    #[serde(default)]
    pub grpo: Option<crate::grpo::GrpoCursor>,
    /// RL: rewards and sampled evaluations so far.
    #[serde(default)]
    pub rl: Option<crate::outcome::RlTrace>,
}

/// NPD's state in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedNpd {
    /// Id of the next new prompt (ids are visit numbers of the seeded
    /// prompt order).
    pub next_request: u64,
    /// Prompts accepted and not finished: queued in the engine, being
    /// generated, or generated and not yet trained on. They are submitted
    /// again on resume.
    pub open_prompts: Vec<PromptId>,
    /// Where every prompt stands.
    pub ledger: Ledger,
    /// Staleness histogram of trained samples so far.
    pub staleness: BTreeMap<u64, usize>,
    /// The filter's account so far.
    pub filter: FilterReport,
}
