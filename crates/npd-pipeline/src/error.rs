//! The pipeline's errors: a stage's own error, kept with its source, or a
//! fault of the loop itself.

use npd_rollout::LedgerError;

/// Result with the pipeline [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stage (generator, scorer, filter, packer, learner, evaluator) or a
    /// file failed.
    #[error(transparent)]
    Stage(#[from] npd_core::Error),
    /// The prompt ledger refused a transition: a prompt would be finished
    /// twice, or finished without being started.
    #[error("prompt ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The rollout engine stopped delivering rollouts while the loop still
    /// needed some (its generator thread ended).
    #[error("rollout engine: stopped delivering rollouts after step {step}: {cause}")]
    EngineStopped {
        /// Steps completed.
        step: u64,
        /// Why: the generator's error for the last prompts, when it gave
        /// one.
        cause: String,
    },
    /// NPD's student generator cannot go on: a weight refresh failed (or
    /// was not verified), or its server stopped answering.
    #[error("student generator stopped: {reason}")]
    Generator {
        /// What failed.
        reason: String,
    },
    /// NPD kept no sample from many rollouts in a row, so no step could
    /// be filled (see [`STARVED_STEPS`](crate::near_policy::STARVED_STEPS)).
    #[error(
        "NPD made no progress after step {step}: none of the last {rollouts} rollouts was kept \
         (filtered so far: {filtered}; failed so far: {failed}); a student with non-finite \
         log-probs or a filter band that excludes every score does this"
    )]
    Starved {
        /// Steps completed.
        step: u64,
        /// Rollouts scored since the last kept sample.
        rollouts: usize,
        /// Prompts filtered out so far, per reason.
        filtered: String,
        /// Prompts failed so far, per reason.
        failed: String,
    },
    /// A saved file of the run (an outcome, a checkpoint's run state) could
    /// not be read back.
    #[error("{path}: {message}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        message: String,
    },
}
