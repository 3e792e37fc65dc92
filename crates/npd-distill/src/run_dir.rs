//! The output folder of a run: what it was started with, whether it
//! finished, its checkpoints, and `metrics.jsonl` cut back to them on
//! resume.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use npd_pipeline::{Checkpoints, Method};
use serde_json::{Value, json};

use crate::fingerprint;

/// File recording what a run was started with.
const RUN_FILE: &str = "run.json";
/// File locked while a run uses the folder.
const LOCK_FILE: &str = ".lock";

/// Whether `dir` exists and holds anything.
fn folder_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|e| e.flatten().any(|e| e.file_name() != LOCK_FILE))
}

/// Refuses an output folder that is a symbolic link to nothing: creating
/// it would fail with a bare "File exists".
pub fn refuse_dangling_link(dir: &Path) -> Result<()> {
    let is_link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && std::fs::metadata(dir).is_err() {
        let target = std::fs::read_link(dir)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        bail!(
            "{} is a symbolic link to {target}, which does not exist; create the folder it \
             points to, or choose another --out",
            dir.display()
        );
    }
    Ok(())
}

/// Keys naming the files a run reads: they may move between a start and a
/// resume (another machine, a renamed folder), and the files they name
/// must have the content fingerprint the run started with.
pub const INPUT_KEYS: [&str; 4] = [
    "model.teacher",
    "model.student",
    "data.prompts",
    "data.eval",
];

/// Keys that say where a run's work happens or how it is divided, not
/// what it computes: devices, servers, threads, timeouts, memory-only
/// settings and checkpoint spacing. A resume may change them (a run moved
/// to another machine or GPU); the report lists what changed.
pub const LOCATION_KEYS: [&str; 28] = [
    "model.device",
    "model.teacher_device",
    "rollout.threads",
    "train.threads",
    "train.micro_batch_rows",
    "train.recompute",
    "train.loss_chunk_tokens",
    "sampling.eval_batch_size",
    "output.checkpoint_every",
    "engine.student_url",
    "engine.teacher_url",
    "engine.python",
    "engine.student_cpus",
    "engine.teacher_cpus",
    "engine.kv_cache_gib",
    "engine.startup_timeout_s",
    "engine.concurrency",
    "engine.timeout_s",
    "engine.retries",
    "engine.student_dtype",
    "engine.teacher_dtype",
    "engine.publish_dtype",
    "engine.probe_tolerance",
    "engine.student_probe_tolerance",
    "engine.teacher_probe_tolerance",
    "engine.teacher_check",
    "engine.publish_dir",
    "output.dir",
];

/// An output folder.
pub struct RunDir {
    /// The folder.
    pub dir: PathBuf,
    /// What identifies the run: configuration, flags and the fingerprints
    /// of its input files.
    identity: Value,
    /// What each resume changed, oldest first (one line per key).
    resumes: Vec<Vec<String>>,
    /// The run continues one in the folder (`--resume`).
    resume: bool,
    /// The lock held on the folder while the run uses it.
    lock: Option<std::fs::File>,
}

/// The configuration as dotted keys and values.
fn identity_keys(config_toml: &str) -> std::collections::BTreeMap<String, String> {
    fn flatten(
        prefix: &str,
        v: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            v => {
                out.insert(prefix.to_string(), v.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if let Ok(t) = config_toml.parse::<toml::Table>() {
        flatten("", &toml::Value::Table(t), &mut out);
    }
    out
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
    /// identified by `config_toml`, the flags that shape it and the files
    /// it reads (`inputs`: [`INPUT_KEYS`] with their paths, empty ones
    /// left out): a fresh run refuses a folder holding an unfinished run; a
    /// resumed one requires one that computes the same thing: the same
    /// values of every key but [`LOCATION_KEYS`] and [`INPUT_KEYS`], and
    /// input files with the fingerprints it started with, wherever they
    /// are now. Run before the teacher is prepared, so a mistake in
    /// `--out` or `--resume` costs nothing.
    pub fn check(
        dir: &Path,
        config_toml: &str,
        (methods, seeds, quick): (&[Method], u64, bool),
        inputs: &[(&str, &Path)],
        resume: bool,
    ) -> Result<Self> {
        let fingerprints = inputs
            .iter()
            .map(|(key, path)| {
                let fp = fingerprint::of(path).with_context(|| format!("{key}: fingerprint"))?;
                Ok(((*key).to_string(), Value::from(fp)))
            })
            .collect::<Result<serde_json::Map<String, Value>>>()?;
        let identity = json!({
            "config": config_toml,
            "methods": methods.iter().map(|m| m.slug()).collect::<Vec<_>>(),
            "seeds": seeds,
            "quick": quick,
            "inputs": fingerprints,
        });
        refuse_dangling_link(dir)?;
        let mut run = Self {
            dir: dir.to_path_buf(),
            identity,
            resumes: Vec::new(),
            resume,
            lock: None,
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
            let changed = run.compare(&previous)?;
            run.resumes = serde_json::from_value(previous["resumes"].clone()).unwrap_or_default();
            run.resumes.push(changed);
            for key in ["methods", "seeds", "quick"] {
                if previous.get(key) != run.identity.get(key) {
                    bail!(
                        "--resume: the run in {} was started with other --{key}; rerun with \
                         the configuration and flags it started with (see {})",
                        dir.display(),
                        dir.join(RUN_FILE).display()
                    );
                }
            }
        } else if previous.is_none() && folder_has_entries(dir) {
            bail!(
                "{} is not empty and holds no run of this program (no {RUN_FILE}); \
                 choose a new or empty --out, so that no file of yours is overwritten",
                dir.display()
            );
        } else if let Some(previous) = previous.as_ref().filter(|_| !finished)
            && holds_work(dir, previous)?
        {
            bail!(
                "{} holds an unfinished run: continue it with --resume, or choose \
                 another --out (or delete the folder)",
                dir.display()
            );
        }
        Ok(run)
    }

    /// The keys whose values differ from the `previous` run's, as
    /// `key = now (was before)` lines: an error naming them where one
    /// would change what the run computes or an input file's content, else
    /// the changed [`LOCATION_KEYS`] and input paths.
    fn compare(&self, previous: &Value) -> Result<Vec<String>> {
        let keys = |v: &Value| identity_keys(v.get("config").and_then(Value::as_str).unwrap_or(""));
        let (was, now) = (keys(previous), keys(&self.identity));
        let show = |m: &std::collections::BTreeMap<String, String>, k: &str| {
            m.get(k).cloned().unwrap_or_else(|| "unset".into())
        };
        let differing: std::collections::BTreeSet<&String> = was
            .keys()
            .chain(now.keys())
            .filter(|k| was.get(*k) != now.get(*k))
            .collect();
        let fingerprint = |v: &Value, k: &str| v["inputs"][k].as_str().map(str::to_string);
        let mut refused = Vec::new();
        let mut changed = Vec::new();
        for key in differing {
            let line = format!("{key} = {} (was {})", show(&now, key), show(&was, key));
            let movable = LOCATION_KEYS.contains(&key.as_str())
                || (INPUT_KEYS.contains(&key.as_str())
                    && fingerprint(previous, key).is_some()
                    && fingerprint(&self.identity, key).is_some());
            if movable {
                changed.push(line);
            } else {
                refused.push(line);
            }
        }
        if !refused.is_empty() {
            bail!(
                "--resume: the run in {} was started with other configuration values: {}; \
                 rerun with the configuration it started with (see {}; only where things \
                 run may change: {})",
                self.dir.display(),
                refused.join(", "),
                self.dir.join(RUN_FILE).display(),
                LOCATION_KEYS.join(", ")
            );
        }
        for key in INPUT_KEYS {
            let (before, after) = (fingerprint(previous, key), fingerprint(&self.identity, key));
            if let (Some(before), Some(after)) = (before, after)
                && before != after
            {
                bail!(
                    "--resume: {key} = {} does not hold the files the run in {} started with \
                     (content fingerprint {} now, {} then); point {key} at a copy of them",
                    show(&now, key),
                    self.dir.display(),
                    &after[..12],
                    &before[..12]
                );
            }
        }
        Ok(changed)
    }

    /// What each resume of this run changed (see [`LOCATION_KEYS`]), oldest
    /// first, one `key = now (was before)` line per key.
    pub fn resumes(&self) -> &[Vec<String>] {
        &self.resumes
    }

    /// Claims the checked folder: creates it, and for a fresh run replaces
    /// a finished run's checkpoints; records the run as unfinished.
    pub fn claim(mut self) -> Result<Self> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        // One run at a time per folder: a second would tear metrics.jsonl
        // and the checkpoints. The lock goes with the process.
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            std::fs::File::create(&lock_path).with_context(|| lock_path.display().to_string())?;
        if let Err(e) = lock.try_lock() {
            bail!(
                "{} is in use by another run ({e}); wait for it to end or choose another --out",
                dir.display()
            );
        }
        self.lock = Some(lock);
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
        v["resumes"] = json!(self.resumes);
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
            // Lines are kept one by one: a damaged byte costs its own line
            // (it no longer parses), never the file.
            let text = match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| path.display().to_string()),
            };
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

/// Whether the unfinished run `previous` in `dir` left anything a resume
/// would continue from: a checkpoint of any of its methods and seeds. A
/// run that stopped before its first checkpoint (a server that never
/// answered, a wrong URL) holds nothing, so a corrected command may start
/// afresh in its folder.
fn holds_work(dir: &Path, previous: &Value) -> Result<bool> {
    let checkpoints = Checkpoints::new(dir.join("checkpoints"), 0);
    let seeds = previous.get("seeds").and_then(Value::as_u64).unwrap_or(0);
    let methods = previous
        .get("methods")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().and_then(Method::from_slug));
    for method in methods {
        for seed in 0..seeds.max(1) {
            if !checkpoints.list(method, seed)?.is_empty()
                || checkpoints.finished(method, seed)?.is_some()
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The last step of a method run that its checkpoints account for: all of
/// them once it finished, else its newest checkpoint's (0 without one).
fn accounted_steps(checkpoints: &Checkpoints, method: Method, seed: u64) -> Result<u64> {
    if checkpoints.finished(method, seed)?.is_some() {
        return Ok(u64::MAX);
    }
    Ok(checkpoints.latest(method, seed)?.map_or(0, |(s, _)| s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("npd-run-dir-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const CONFIG: &str = "[train]\nlr = 0.001\nsteps = 10\n\n[output]\ndir = \"a\"\n";

    fn check(dir: &Path, config: &str, resume: bool) -> Result<RunDir> {
        RunDir::check(dir, config, (&[Method::Sft], 1, false), &[], resume)
    }

    #[test]
    fn a_folder_of_other_files_is_refused_and_left_alone() {
        let dir = scratch("foreign");
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        std::fs::write(dir.join("report.md"), "mine").unwrap();
        let err = check(&dir, CONFIG, false).err().unwrap().to_string();
        assert!(err.contains("holds no run of this program"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("report.md")).unwrap(),
            "mine"
        );
        // An empty folder is fine.
        let empty = scratch("empty");
        std::fs::create_dir_all(&empty).unwrap();
        check(&empty, CONFIG, false).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&empty);
    }

    #[test]
    fn resume_names_each_differing_key_and_ignores_the_folder_path() {
        let dir = scratch("resume");
        let run = check(&dir, CONFIG, false).unwrap().claim().unwrap();
        drop(run);
        // The same run reached through another spelling of its folder.
        let moved = CONFIG.replace("dir = \"a\"", "dir = \"b/../a\"");
        check(&dir, &moved, true).unwrap();
        let other = CONFIG
            .replace("lr = 0.001", "lr = 0.002")
            .replace("steps = 10\n", "");
        let err = check(&dir, &other, true).err().unwrap().to_string();
        assert!(
            err.contains("train.lr = 0.002 (was 0.001)")
                && err.contains("train.steps = unset (was 10)"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_resume_elsewhere_may_move_files_and_devices_but_not_change_them() {
        let dir = scratch("moved");
        let (a, b) = (scratch("moved-a"), scratch("moved-b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("prompts.jsonl"), "{\"prompt\": \"1+1=\"}\n").unwrap();
        }
        let config = |at: &Path, device: &str| {
            format!(
                "[model]\ndevice = \"{device}\"\n[data]\nprompts = \"{}\"\n{CONFIG}",
                at.join("prompts.jsonl").display()
            )
        };
        let at = |d: &Path| d.join("prompts.jsonl");
        let check_at = |d: &Path, device: &str| {
            RunDir::check(
                &dir,
                &config(d, device),
                (&[Method::Sft], 1, false),
                &[("data.prompts", at(d).as_path())],
                true,
            )
        };
        let first = RunDir::check(
            &dir,
            &config(&a, "cpu"),
            (&[Method::Sft], 1, false),
            &[("data.prompts", at(&a).as_path())],
            false,
        );
        drop(first.unwrap().claim().unwrap());
        // A copy of the prompts elsewhere, on another device: allowed, and
        // both changes are recorded.
        let moved = check_at(&b, "cuda:1").unwrap().claim().unwrap();
        let changed = moved.resumes().last().unwrap().join("; ");
        assert!(
            changed.contains("model.device = \"cuda:1\" (was \"cpu\")")
                && changed.contains("data.prompts"),
            "{changed}"
        );
        drop(moved);
        // A second resume keeps the first one's record.
        let again = check_at(&b, "cuda:1").unwrap();
        assert_eq!(again.resumes().len(), 2);
        assert!(again.resumes()[1].is_empty());
        // Other content at the new path is refused.
        std::fs::write(at(&b), "{\"prompt\": \"2+2=\"}\n").unwrap();
        let err = check_at(&b, "cuda:1").err().unwrap().to_string();
        assert!(
            err.contains("data.prompts") && err.contains("does not hold the files"),
            "{err}"
        );
        // A key that changes the result is refused, and the refusal names
        // what may change.
        std::fs::write(at(&b), "{\"prompt\": \"1+1=\"}\n").unwrap();
        let other = config(&b, "cpu").replace("lr = 0.001", "lr = 0.01");
        let err = RunDir::check(
            &dir,
            &other,
            (&[Method::Sft], 1, false),
            &[("data.prompts", at(&b).as_path())],
            true,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("train.lr = 0.01 (was 0.001)")
                && !err.contains("model.device =")
                && err.contains("only where things run may change"),
            "{err}"
        );
        for d in [&dir, &a, &b] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn an_unfinished_run_without_a_checkpoint_can_start_afresh() {
        let dir = scratch("nothing-trained");
        drop(check(&dir, CONFIG, false).unwrap().claim().unwrap());
        // It trained nothing: the corrected command starts afresh.
        let corrected = CONFIG.replace("lr = 0.001", "lr = 0.002");
        drop(check(&dir, &corrected, false).unwrap().claim().unwrap());
        // Once a checkpoint exists, a fresh start is refused.
        let checkpoints = Checkpoints::new(dir.join("checkpoints"), 0);
        let step = checkpoints
            .run_dir(Method::Sft, 0)
            .join(npd_pipeline::checkpoints::checkpoint_name(1));
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(npd_pipeline::checkpoints::RUN_FILE), "{}").unwrap();
        assert_eq!(checkpoints.list(Method::Sft, 0).unwrap().len(), 1);
        let err = check(&dir, &corrected, false).err().unwrap().to_string();
        assert!(err.contains("unfinished run"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dangling_link_is_named_as_such() {
        let dir = scratch("dangling");
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("out");
        std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
        let err = check(&link, CONFIG, false).err().unwrap().to_string();
        assert!(
            err.contains("symbolic link") && err.contains("nowhere"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_runs_cannot_share_a_folder() {
        let dir = scratch("lock");
        let first = check(&dir, CONFIG, false).unwrap().claim().unwrap();
        let err = check(&dir, CONFIG, true)
            .unwrap()
            .claim()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("in use by another run"), "{err}");
        drop(first);
        check(&dir, CONFIG, true).unwrap().claim().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
