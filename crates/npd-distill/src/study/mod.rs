//! A reproduction study: a grid of regimes (task, warm start, student size,
//! loss, temperature, Δ-IFD on or off, refresh interval K) from a TOML
//! file, each regime run by [`distill`](crate::distill) with every method
//! and seed, and one table of held-out accuracy (mean and spread over the
//! seeds) and wall-clock per regime.
//!
//! Each run has its own folder under `<out>/runs/`, so a study goes on
//! where it stopped: finished runs are read back from their `report.json`,
//! an unfinished one continues from its checkpoints, and the rest start.
//! `study.md` and `study.json` are rewritten after every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use npd_pipeline::Method;

use crate::{Control, Ended};

mod grid;
mod table;

pub use grid::{GRID_KEYS, Grid, StudyFile, StudyRun, StudySection, help};
use table::write_tables;
pub use table::{mean_sd, table};

/// One method's results in one run: accuracy and wall-clock per seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Held-out accuracy per seed.
    pub accuracy: Vec<f64>,
    /// Wall-clock seconds per seed (evaluation excluded).
    pub wall_s: Vec<f64>,
    /// Per seed, the lowest held-out accuracy of the evaluations in the
    /// first [`EARLY_STEPS`] steps (the start's own included).
    #[serde(default)]
    pub early_low: Vec<f64>,
    /// Per seed, the lowest held-out accuracy of any evaluation.
    #[serde(default)]
    pub lowest: Vec<f64>,
}

/// The steps over which [`Cell::early_low`] looks for a fall below the start.
pub const EARLY_STEPS: u64 = 40;

/// A finished run's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The run's name.
    pub name: String,
    /// Its regime.
    pub regime: String,
    /// Axis values.
    pub axes: Vec<(String, String)>,
    /// Δ-IFD on.
    pub filter: bool,
    /// Teacher held-out accuracy.
    pub teacher_accuracy: f64,
    /// Warm-start held-out accuracy.
    pub warm_start_accuracy: f64,
    /// How the warm start stopped (the report's line).
    pub warm_start: String,
    /// Per method (its name, e.g. `NPD`).
    pub methods: BTreeMap<String, Cell>,
}

/// Reads a finished run's `report.json`.
fn read_result(run: &StudyRun, dir: &Path) -> Result<RunResult> {
    let path = dir.join("report.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let number = |key: &str| report.get(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut methods: BTreeMap<String, Cell> = BTreeMap::new();
    for o in report
        .get("outcomes")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
    {
        let method: Method = serde_json::from_value(o.get("method").cloned().unwrap_or_default())
            .with_context(|| format!("{}: an outcome's method", path.display()))?;
        let cell = methods.entry(method.name().to_string()).or_default();
        let get = |k: &str| o.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        cell.accuracy.push(get("accuracy"));
        cell.wall_s.push(get("wall_s"));
        let curve: Vec<(u64, f64)> = (o.get("curve").and_then(|c| c.as_array()))
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.get("step")?.as_u64()?, p.get("accuracy")?.as_f64()?)))
            .collect();
        let low = |early: bool| {
            (curve.iter())
                .filter(|(step, _)| !early || *step <= EARLY_STEPS)
                .map(|&(_, a)| a)
                .fold(f64::NAN, f64::min)
        };
        cell.early_low.push(low(true));
        cell.lowest.push(low(false));
    }
    let warm_start = report
        .get("setup")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .find(|l| l.starts_with("warm start:"))
        .unwrap_or("")
        .to_string();
    Ok(RunResult {
        name: run.name.clone(),
        regime: run.regime.clone(),
        axes: (run.axes.iter())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        filter: run.filter,
        teacher_accuracy: number("teacher_accuracy"),
        warm_start_accuracy: number("warm_start_accuracy"),
        warm_start,
        methods,
    })
}

/// Whether a run folder holds a finished run, an unfinished one, or none.
fn state(dir: &Path) -> Result<Option<bool>> {
    let path = dir.join("run.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| path.display().to_string())?;
            let finished = v.get("finished").and_then(|f| f.as_bool()) == Some(true);
            Ok(Some(finished && dir.join("report.json").exists()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// How [`study`] ended.
#[derive(Debug)]
pub enum StudyEnd {
    /// Every run finished; the table is written.
    Finished {
        /// `study.md`'s table.
        table: String,
        /// `study.md`.
        path: PathBuf,
    },
    /// Ctrl-C stopped a run; the same command continues it.
    Stopped(String),
}

/// Runs (or continues) the study of `file` into `out`; `cache` as
/// [`Options::cache`].
pub fn study(
    file: &Path,
    out: &Path,
    cache: Option<PathBuf>,
    control: &Control,
) -> Result<StudyEnd> {
    let grid = StudyFile::read(file)?;
    let runs = grid.runs();
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    // Every run's configuration is checked before anything is written, so
    // that a study refused for a bad value can be fixed and rerun into the
    // same folder.
    check_configs(file, &grid, &runs, out, &cache)?;
    claim(out, &text)?;
    let configs = out.join("configs");
    std::fs::create_dir_all(&configs).with_context(|| configs.display().to_string())?;
    let mut planned = Vec::new();
    for run in &runs {
        let path = configs.join(format!("{}.toml", run.name));
        crate::run_dir::write(&path, &run.config)?;
        planned.push(grid.options(run, path, out.join("runs").join(&run.name), cache.clone()));
    }
    let mut results = Vec::new();
    for (i, (run, mut options)) in runs.iter().zip(planned).enumerate() {
        let dir = options.out.clone().expect("set above");
        let what = format!("study run {}/{}: {}", i + 1, runs.len(), run.name);
        match state(&dir)? {
            Some(true) => {
                tracing::info!("{what}: finished earlier, read from {}", dir.display());
            }
            resumed => {
                options.resume = resumed.is_some();
                tracing::info!(
                    "{what}: {}",
                    if options.resume {
                        "continuing"
                    } else {
                        "starting"
                    }
                );
                match crate::distill(&options, control, false, false)
                    .with_context(|| format!("study run {}", run.name))?
                {
                    Ended::Finished { .. } => {}
                    Ended::Stopped {
                        method, seed, step, ..
                    } => {
                        return Ok(StudyEnd::Stopped(format!(
                            "{what}: {} seed {seed} stopped after step {step}",
                            method.name()
                        )));
                    }
                    Ended::Interrupted(why) => {
                        return Ok(StudyEnd::Stopped(format!("{what}: {why}")));
                    }
                    Ended::Checked(_) => unreachable!("neither printed nor checked"),
                }
            }
        }
        results.push(read_result(run, &dir)?);
        write_tables(out, &grid, &results, runs.len())?;
    }
    let table = table(&grid, &results);
    Ok(StudyEnd::Finished {
        table,
        path: out.join("study.md"),
    })
}

/// The file in a study's folder that holds a copy of its grid: the mark
/// of a folder the study owns.
const GRID_COPY: &str = "study.toml";

/// Configures every run from a scratch copy of its configuration, so that
/// nothing is written into `out` for a grid with a bad value.
fn check_configs(
    file: &Path,
    grid: &StudyFile,
    runs: &[StudyRun],
    out: &Path,
    cache: &Option<PathBuf>,
) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!(
        "npd-study-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    let checked = runs.iter().try_for_each(|run| {
        let path = scratch.join(format!("{}.toml", run.name));
        crate::run_dir::write(&path, &run.config)?;
        let options = grid.options(run, path, out.join("runs").join(&run.name), cache.clone());
        crate::configure(&options)
            .map(|_| ())
            .with_context(|| format!("{}: regime {}", file.display(), run.name))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    checked
}

/// Makes `out` the folder of the study whose grid file reads `text`: a
/// new or empty folder, or one holding this same study. A folder of other
/// files, or of another study, is refused and left as it is.
fn claim(out: &Path, text: &str) -> Result<()> {
    crate::run_dir::refuse_dangling_link(out)?;
    let copy = out.join(GRID_COPY);
    match std::fs::read_to_string(&copy) {
        Ok(was) if was != text => bail!(
            "{} holds a study of another grid ({}); continue it with that file, or choose \
             another --out",
            out.display(),
            copy.display()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let holds_files = std::fs::read_dir(out).is_ok_and(|mut e| e.next().is_some());
            if holds_files {
                bail!(
                    "{} is not empty and holds no study (no {GRID_COPY}); choose a new or \
                     empty --out, so that no file of yours is overwritten",
                    out.display()
                );
            }
            std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
            crate::run_dir::write(&copy, text)
        }
        Err(e) => Err(e).with_context(|| copy.display().to_string()),
    }
}

/// The OpenMP wait policy for a study (see [`crate::wait_policy`]): the
/// served one when any run uses vLLM servers. A file that does not parse
/// gets the default; its error is reported when the study starts.
pub fn wait_policy(file: &Path) -> &'static str {
    let served = StudyFile::read(file).is_ok_and(|g| {
        g.runs().iter().any(|r| {
            crate::RunConfig::from_toml(&r.config, &r.name)
                .is_ok_and(|c| c.engine.kind == crate::EngineKind::Vllm)
        })
    });
    if served {
        crate::signals::SERVED_WAIT_POLICY
    } else {
        crate::signals::WAIT_POLICY
    }
}

#[cfg(test)]
mod tests;
