//! The run clock: wall-clock seconds of training work, with evaluation and
//! checkpoint writing left out, and time per named stage.

use std::collections::BTreeMap;
use std::time::Instant;

/// Wall-clock of a run and its stages.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    excluded: f64,
    stages: BTreeMap<String, f64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::resumed(0.0, BTreeMap::new())
    }
}

impl Clock {
    /// A clock that already shows `wall` seconds and these stage times (a
    /// resumed run).
    pub fn resumed(wall: f64, stages: BTreeMap<String, f64>) -> Self {
        Self {
            start: Instant::now(),
            excluded: -wall,
            stages,
        }
    }

    /// Runs `f`, adding its duration to `stage`.
    pub fn time<T>(&mut self, stage: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *self.stages.entry(stage.to_string()).or_default() += t.elapsed().as_secs_f64();
        out
    }

    /// Adds `secs` measured elsewhere (another thread's busy time) to
    /// `stage`, without counting it in the wall-clock.
    pub fn add(&mut self, stage: &str, secs: f64) {
        *self.stages.entry(stage.to_string()).or_default() += secs.max(0.0);
    }

    /// Runs `f` with the clock stopped (evaluation, checkpoints).
    pub fn pause<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.excluded += t.elapsed().as_secs_f64();
        out
    }

    /// Seconds so far.
    pub fn wall(&self) -> f64 {
        self.start.elapsed().as_secs_f64() - self.excluded
    }

    /// Seconds per stage so far.
    pub fn stages(&self) -> &BTreeMap<String, f64> {
        &self.stages
    }
}
