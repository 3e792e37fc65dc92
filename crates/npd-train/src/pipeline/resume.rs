//! Checkpoints of method runs and resuming them.
//!
//! Each method and seed writes into its own folder under
//! [`Checkpoints::root`]: `step-NNNNNNNN/` training checkpoints (the
//! student in the Hugging Face layout, AdamW moments, and a [`SavedRun`]
//! with the step, the accuracy curve, the clock and, for NPD, the prompt
//! ledger and the id of the next prompt), and `outcome.json` once the run
//! has finished. A run started again with a checkpoint present continues
//! from it; a finished run is not run again.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use npd_core::{Error, PromptId, Result};
use npd_filter::FilterReport;
use npd_rollout::Ledger;

use crate::checkpoint::{checkpoint_name, list_checkpoints, prune_checkpoints};
use crate::pipeline::drivers::{CurvePoint, Method, Outcome};
use crate::weights::write_atomic;

/// File of a run folder recording a finished run's [`Outcome`].
pub const OUTCOME_FILE: &str = "outcome.json";

/// Where and how often method runs write checkpoints, and the flag that
/// asks a run to stop.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// Root folder; each method and seed writes under
    /// [`Checkpoints::run_dir`].
    pub root: PathBuf,
    /// Steps between checkpoints; 0 writes them only at the end and when
    /// stopped.
    pub every: u64,
    /// Checkpoints kept per run (older ones are deleted).
    pub keep: usize,
    /// When set (by a Ctrl-C handler, say), the run finishes its current
    /// step, writes a checkpoint and returns [`Error::Interrupted`].
    pub stop: Arc<AtomicBool>,
}

impl Checkpoints {
    /// Checkpoints under `root` every `every` steps, keeping two.
    pub fn new(root: impl Into<PathBuf>, every: u64) -> Self {
        Self {
            root: root.into(),
            every,
            keep: 2,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The folder of one method and seed.
    pub fn run_dir(&self, method: Method, seed: u64) -> PathBuf {
        self.root.join(format!("{}-seed{seed}", method.slug()))
    }

    /// The newest complete checkpoint of a run: its step and folder.
    pub fn latest(&self, method: Method, seed: u64) -> Result<Option<(u64, PathBuf)>> {
        Ok(list_checkpoints(&self.run_dir(method, seed))?.pop())
    }

    /// The outcome of a run that finished, if it did.
    pub fn finished(&self, method: Method, seed: u64) -> Result<Option<Outcome>> {
        let path = self.run_dir(method, seed).join(OUTCOME_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                Error::invalid(path.display().to_string(), format!("not an outcome: {e}"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Where the checkpoint of `step` goes.
    pub(crate) fn step_dir(&self, method: Method, seed: u64, step: u64) -> PathBuf {
        self.run_dir(method, seed).join(checkpoint_name(step))
    }

    /// Deletes checkpoints beyond [`Checkpoints::keep`].
    pub(crate) fn prune(&self, method: Method, seed: u64) -> Result<()> {
        prune_checkpoints(&self.run_dir(method, seed), self.keep)
    }

    /// Records a finished run.
    pub(crate) fn record(&self, outcome: &Outcome) -> Result<()> {
        let dir = self.run_dir(outcome.method, outcome.seed);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let text = serde_json::to_string_pretty(outcome).expect("outcomes serialise");
        write_atomic(&dir.join(OUTCOME_FILE), text.as_bytes())
    }
}

/// The state of a method run that a checkpoint carries besides the model
/// and optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Steps at which the run was resumed before.
    pub resumed_at: Vec<u64>,
    /// NPD's own state.
    pub npd: Option<SavedNpd>,
}

/// NPD's state in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

impl SavedRun {
    /// Reads the run state of a checkpoint, checking it belongs to `method`
    /// and `seed`.
    pub(crate) fn from_state(
        value: serde_json::Value,
        dir: &Path,
        method: Method,
        seed: u64,
    ) -> Result<Self> {
        let saved: SavedRun = serde_json::from_value(value).map_err(|e| {
            Error::invalid(
                dir.display().to_string(),
                format!("run state in the checkpoint is malformed: {e}"),
            )
        })?;
        if saved.method != method || saved.seed != seed {
            return Err(Error::invalid(
                dir.display().to_string(),
                format!(
                    "checkpoint of {} seed {}, expected {} seed {seed}",
                    saved.method.name(),
                    saved.seed,
                    method.name()
                ),
            ));
        }
        Ok(saved)
    }
}
