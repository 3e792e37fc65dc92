//! What every driver needs besides its stages: the settings, the training
//! prompts, and the optional checkpoints, observer and interrupt.

use npd_core::events::{Event, Observer};
use npd_core::traits::{Interrupt, Never};
use npd_core::{Prompt, PromptId};

use crate::checkpoints::Checkpoints;
use crate::settings::Settings;

/// The shared part of a method run, built with [`Loop::new`] and the
/// `with_*` setters and handed to a driver's `run`.
pub struct Loop<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) prompts: &'a [Prompt],
    pub(crate) checkpoints: Option<&'a Checkpoints>,
    pub(crate) observer: Option<&'a mut dyn Observer>,
    pub(crate) interrupt: &'a dyn Interrupt,
    pub(crate) rejected: &'a [(PromptId, String)],
    pub(crate) start_score: Option<f64>,
}

static NEVER: Never = Never;

impl<'a> Loop<'a> {
    /// A loop over `prompts` (visited in a seeded order, repeated as the
    /// budget needs), without checkpoints, events or interruption.
    pub fn new(settings: &'a Settings, prompts: &'a [Prompt]) -> Self {
        Self {
            settings,
            prompts,
            checkpoints: None,
            observer: None,
            interrupt: &NEVER,
            rejected: &[],
            start_score: None,
        }
    }

    /// Writes checkpoints and resumes from them.
    pub fn with_checkpoints(mut self, checkpoints: &'a Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Receives step, evaluation, refresh and ledger events.
    pub fn with_observer(mut self, observer: &'a mut dyn Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Polled after every step; a stop ends the run as
    /// [`RunEnd::Stopped`](crate::RunEnd::Stopped).
    pub fn with_interrupt(mut self, interrupt: &'a dyn Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    /// Dataset records rejected before the run (NPD's ledger records them).
    pub fn with_rejected(mut self, rejected: &'a [(PromptId, String)]) -> Self {
        self.rejected = rejected;
        self
    }

    /// The starting weights' held-out score, already measured: every run
    /// starts its curve with it instead of evaluating the same weights
    /// again.
    pub fn with_start_score(mut self, score: Option<f64>) -> Self {
        self.start_score = score;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        self.settings
    }

    pub(crate) fn emit(&mut self, event: Event) {
        if let Some(o) = self.observer.as_mut() {
            o.on_event(&event);
        }
    }
}
