//! The output folder of a run: what it was started with, whether it
//! finished, its checkpoints, and `metrics.jsonl` cut back to them on
//! resume.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use npd_pipeline::{Checkpoints, Method};
use serde_json::{Value, json};

/// File recording what a run was started with.
const RUN_FILE: &str = "run.json";

/// An output folder.
pub struct RunDir {
    /// The folder.
    pub dir: PathBuf,
    /// What identifies the run: configuration and flags.
    identity: Value,
    /// The run continues one in the folder (`--resume`).
    resume: bool,
}

/// Writes `text` to `path` atomically.
pub fn write(path: &Path, text: &str) -> Result<()> {
    Ok(npd_core::fs::write_atomic(path, text.as_bytes())?)
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .with_context(|| format!("{}: not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

impl RunDir {
    /// Checks, without writing anything, that `dir` can take a run
    /// identified by `config_toml` and the flags that shape it: a fresh run
    /// refuses a folder holding an unfinished run; a resumed one requires
    /// one started the same way. Run before the teacher is prepared, so a
    /// mistake in `--out` or `--resume` costs nothing.
    pub fn check(
        dir: &Path,
        config_toml: &str,
        methods: &[Method],
        seeds: u64,
        quick: bool,
        resume: bool,
    ) -> Result<Self> {
        let identity = json!({
            "config": config_toml,
            "methods": methods.iter().map(|m| m.slug()).collect::<Vec<_>>(),
            "seeds": seeds,
            "quick": quick,
        });
        let run = Self {
            dir: dir.to_path_buf(),
            identity,
            resume,
        };
        let previous = read_json(&dir.join(RUN_FILE))?;
        let finished = previous
            .as_ref()
            .and_then(|p| p.get("finished"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if resume {
            let Some(previous) = previous else {
                bail!(
                    "--resume: {} holds no run to resume (no {RUN_FILE})",
                    dir.display()
                );
            };
            for key in ["config", "methods", "seeds", "quick"] {
                if previous.get(key) != run.identity.get(key) {
                    bail!(
                        "--resume: the run in {} was started with other {}; rerun with the \
                         configuration and flags it started with (see {})",
                        dir.display(),
                        if key == "config" {
                            "configuration values".to_string()
                        } else {
                            format!("--{key}")
                        },
                        dir.join(RUN_FILE).display()
                    );
                }
            }
        } else if previous.is_some() && !finished {
            bail!(
                "{} holds an unfinished run: continue it with --resume, or choose \
                 another --out (or delete the folder)",
                dir.display()
            );
        }
        Ok(run)
    }

    /// Claims the checked folder: creates it, and for a fresh run replaces
    /// a finished run's checkpoints; records the run as unfinished.
    pub fn claim(self) -> Result<Self> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        if !self.resume {
            let root = self.checkpoint_root();
            if root.exists() {
                std::fs::remove_dir_all(&root).with_context(|| root.display().to_string())?;
            }
        }
        self.record(false)?;
        Ok(self)
    }

    /// Where checkpoints go.
    pub fn checkpoint_root(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// Records the run and whether it finished.
    pub fn record(&self, finished: bool) -> Result<()> {
        let mut v = self.identity.clone();
        v["finished"] = finished.into();
        write(
            &self.dir.join(RUN_FILE),
            &serde_json::to_string_pretty(&v).expect("JSON values serialise"),
        )
    }

    /// Opens `metrics.jsonl` for appending. On resume it first keeps only
    /// the lines the checkpoints account for: every line of a finished
    /// method run, and the lines up to the newest checkpoint of an
    /// unfinished one (a line cut short by a kill is dropped).
    pub fn metrics(&self, checkpoints: &Checkpoints) -> Result<std::fs::File> {
        let path = self.dir.join("metrics.jsonl");
        if self.resume {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut kept = String::new();
            let mut limits = std::collections::BTreeMap::new();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let (Some(name), Some(seed), Some(step)) = (
                    v.get("method").and_then(Value::as_str),
                    v.get("seed").and_then(Value::as_u64),
                    v.get("step").and_then(Value::as_u64),
                ) else {
                    continue;
                };
                let Some(method) = Method::from_name(name) else {
                    continue;
                };
                let limit = match limits.get(&(method, seed)) {
                    Some(l) => *l,
                    None => {
                        let l = accounted_steps(checkpoints, method, seed)?;
                        limits.insert((method, seed), l);
                        l
                    }
                };
                if step <= limit {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            write(&path, &kept)?;
        }
        let mut open = std::fs::OpenOptions::new();
        if self.resume {
            open.append(true).create(true);
        } else {
            open.write(true).create(true).truncate(true);
        }
        open.open(&path).with_context(|| path.display().to_string())
    }
}

/// The last step of a method run that its checkpoints account for: all of
/// them once it finished, else its newest checkpoint's (0 without one).
fn accounted_steps(checkpoints: &Checkpoints, method: Method, seed: u64) -> Result<u64> {
    if checkpoints.finished(method, seed)?.is_some() {
        return Ok(u64::MAX);
    }
    Ok(checkpoints.latest(method, seed)?.map_or(0, |(s, _)| s))
}
