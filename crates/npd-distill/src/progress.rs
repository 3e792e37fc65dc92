//! Progress of long work: a bar on a terminal, and a plain log line every
//! few seconds when output goes to a file or a pipe (so `distill > log`
//! shows the run moving).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(15);

/// Progress of one counted task (steps of a method run, of a training
/// stage).
pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// Progress of `total` `unit`s of `what`.
    pub fn new(what: &str, total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:>24}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, eta {{eta}}"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            );
            pb.set_prefix(what.to_string());
            pb
        });
        Self {
            what: what.to_string(),
            total,
            done: 0,
            unit,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Sets the count done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        match &self.bar {
            Some(b) => b.set_position(done),
            None if self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = Instant::now();
                let elapsed = self.started.elapsed().as_secs_f64();
                tracing::info!(
                    "{}: {done}/{} {}, {elapsed:.0}s{}",
                    self.what,
                    self.total,
                    self.unit,
                    eta_text(elapsed, done, self.total)
                );
            }
            None => {}
        }
    }

    /// Adds one.
    pub fn inc(&mut self) {
        self.set(self.done + 1);
    }

    /// Ends the task.
    pub fn finish(self) {
        match self.bar {
            Some(b) => b.finish(),
            None => tracing::info!(
                "{}: {}/{} {} in {:.0}s",
                self.what,
                self.done,
                self.total,
                self.unit,
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}

/// A [`Progress`] made on the first report, when the total is known, and
/// finished when the count reaches it (work a library reports as `(done,
/// total)`, such as the teacher writing SFT's responses).
pub struct OnDemand {
    what: &'static str,
    unit: &'static str,
    bar: std::cell::RefCell<Option<Progress>>,
}

impl OnDemand {
    /// Progress of `what`, counted in `unit`s, once reported.
    pub fn new(what: &'static str, unit: &'static str) -> Self {
        Self {
            what,
            unit,
            bar: std::cell::RefCell::new(None),
        }
    }

    /// `done` of `total`.
    pub fn set(&self, done: usize, total: usize) {
        let mut slot = self.bar.borrow_mut();
        let bar = slot.get_or_insert_with(|| Progress::new(self.what, total as u64, self.unit));
        bar.set(done as u64);
        if done >= total
            && let Some(bar) = slot.take()
        {
            bar.finish();
        }
    }
}

/// `, eta Ns` from the pace so far (nothing before the first unit).
fn eta_text(elapsed: f64, done: u64, total: u64) -> String {
    if done == 0 || done >= total {
        return String::new();
    }
    let left = elapsed / done as f64 * (total - done) as f64;
    format!(", eta {left:.0}s")
}

/// A spinner for work without a count (loading a model folder).
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Starts a spinner showing `what` (a log line when not on a terminal).
    pub fn start(what: &str) -> Self {
        if std::io::stderr().is_terminal() {
            let pb = ProgressBar::new_spinner();
            pb.set_message(what.to_string());
            pb.enable_steady_tick(Duration::from_millis(200));
            Self(Some(pb))
        } else {
            tracing::info!("{what}");
            Self(None)
        }
    }

    /// Stops it.
    pub fn done(self) {
        if let Some(pb) = self.0 {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_follows_the_pace_so_far() {
        assert_eq!(eta_text(10.0, 2, 10), ", eta 40s");
        assert_eq!(eta_text(10.0, 0, 10), "");
        assert_eq!(eta_text(10.0, 10, 10), "");
    }
}
