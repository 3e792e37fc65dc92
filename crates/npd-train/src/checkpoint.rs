//! Saving a model in the Hugging Face layout, and training checkpoints
//! (model, optimizer state and the run's own state) that a killed run
//! resumes from; every folder appears atomically.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tch::Tensor;

use npd_core::{Error, Result};

use crate::model::Llama;
use crate::train::Trainer;
use crate::weights::{INDEX_FILE, SINGLE_FILE, TensorStore, write_atomic, write_safetensors};

/// Largest shard written before splitting into `model-0000N-of-0000M`
/// files with an index (transformers' default is 5 GB).
pub const DEFAULT_SHARD_BYTES: usize = 5_000_000_000;

/// Writes `model` into folder `dir` as `config.json` plus safetensors
/// (sharded with `model.safetensors.index.json` above `shard_bytes`), in the
/// model's current dtype, with the upstream tensor names; a tied model has
/// no `lm_head.weight`.
///
/// `config_json` is written as `config.json` when given (for example the
/// source model's own file, so an openPangu student keeps its config);
/// otherwise a transformers Llama config is written.
///
/// The folder appears atomically: everything is written into a sibling
/// temporary folder, synced, and renamed over `dir` (a previous `dir` is
/// replaced only once the new one is complete).
pub fn save_pretrained(
    model: &Llama,
    dir: &Path,
    config_json: Option<&str>,
    shard_bytes: usize,
) -> Result<()> {
    let tmp = sibling_tmp(dir)?;
    write_model_files(model, &tmp, config_json, shard_bytes)?;
    replace_dir(&tmp, dir)
}

/// Writes `config.json` and the safetensors files of `model` into the
/// existing folder `dir` (see [`save_pretrained`]).
fn write_model_files(
    model: &Llama,
    tmp: &Path,
    config_json: Option<&str>,
    shard_bytes: usize,
) -> Result<()> {
    let config = match config_json {
        Some(text) => text.to_string(),
        None => {
            let mut v = model.config().to_llama_json();
            let dtype = match model.kind() {
                tch::Kind::BFloat16 => "bfloat16",
                tch::Kind::Half => "float16",
                _ => "float32",
            };
            v["torch_dtype"] = dtype.into();
            serde_json::to_string_pretty(&v).expect("JSON values serialise")
        }
    };
    write_atomic(&tmp.join("config.json"), config.as_bytes())?;

    let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
        model
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect()
    });
    let shards = split(tensors, shard_bytes);
    if shards.len() == 1 {
        write_safetensors(&tmp.join(SINGLE_FILE), &shards[0])?;
    } else {
        let total_size: usize = shards.iter().flatten().map(|(_, t)| bytes(t)).sum();
        let mut weight_map = Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
            for (n, _) in shard {
                weight_map.insert(n.clone(), Value::from(file.clone()));
            }
            write_safetensors(&tmp.join(&file), shard)?;
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": weight_map,
        });
        write_json(&tmp.join(INDEX_FILE), &index)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    write_atomic(path, text.as_bytes())
}

/// Creates an empty temporary folder beside `dir` (and `dir`'s parent),
/// to be renamed over it once complete.
fn sibling_tmp(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = parent.join(format!(".{name}.partial.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    Ok(tmp)
}

fn bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Splits tensors, in order, into shards of at most `limit` bytes (a single
/// larger tensor gets a shard of its own).
fn split(tensors: Vec<(String, Tensor)>, limit: usize) -> Vec<Vec<(String, Tensor)>> {
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0;
    for (n, t) in tensors {
        let b = bytes(&t);
        if size + b > limit && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            size = 0;
        }
        size += b;
        shards.last_mut().expect("at least one shard").push((n, t));
    }
    shards
}

/// Renames the finished folder `tmp` to `dir`, moving an existing `dir`
/// aside first and deleting it only after the rename.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path: PathBuf = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let old = tmp.with_extension("old");
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(tmp, dir).map_err(io(dir))?;
    if let Some(parent) = dir.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Sub-folder of a training checkpoint holding the student in the Hugging
/// Face layout (loadable by transformers and by [`Llama::load`]).
pub const MODEL_DIR: &str = "model";
/// File of a training checkpoint holding the AdamW moments, named
/// `exp_avg.<parameter>` and `exp_avg_sq.<parameter>`.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File of a training checkpoint holding the step counters and the run's
/// own state (JSON).
pub const STATE_FILE: &str = "state.json";

/// Writes a training checkpoint into folder `dir`, atomically (a sibling
/// temporary folder, synced, renamed): the student under [`MODEL_DIR`], the
/// optimizer moments in [`OPTIMIZER_FILE`], and in [`STATE_FILE`] the
/// optimizer step, the skipped-step count and `run_state`, whatever the
/// caller needs to continue (its step, RNG seeds, queues, ledger).
pub fn save_training(
    trainer: &Trainer,
    dir: &Path,
    config_json: Option<&str>,
    run_state: &Value,
) -> Result<()> {
    let tmp = sibling_tmp(dir)?;
    let model_dir = tmp.join(MODEL_DIR);
    std::fs::create_dir_all(&model_dir).map_err(|source| Error::Io {
        path: model_dir.clone(),
        source,
    })?;
    write_model_files(
        trainer.model(),
        &model_dir,
        config_json,
        DEFAULT_SHARD_BYTES,
    )?;
    write_safetensors(&tmp.join(OPTIMIZER_FILE), &trainer.optimizer_state())?;
    let state = serde_json::json!({
        "optimizer_steps": trainer.optimizer().steps(),
        "skipped_steps": trainer.skipped_steps(),
        "run": run_state,
    });
    write_json(&tmp.join(STATE_FILE), &state)?;
    replace_dir(&tmp, dir)
}

/// Restores a checkpoint written by [`save_training`] into `trainer` (same
/// architecture: every tensor is checked by name and shape) and returns the
/// run state it was saved with.
pub fn load_training(trainer: &mut Trainer, dir: &Path) -> Result<Value> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|source| Error::Io {
        path: state_path.clone(),
        source,
    })?;
    let state: Value = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            state_path.display().to_string(),
            format!("not valid JSON: {e}"),
        )
    })?;
    let counter = |key: &str| {
        state.get(key).and_then(Value::as_u64).ok_or_else(|| {
            Error::invalid(
                state_path.display().to_string(),
                format!("`{key}` missing or not a non-negative integer"),
            )
        })
    };
    let (steps, skipped) = (counter("optimizer_steps")?, counter("skipped_steps")?);
    let mut weights = TensorStore::open(&dir.join(MODEL_DIR))?;
    let mut moments = TensorStore::open_file(&dir.join(OPTIMIZER_FILE))?;
    trainer.restore(&mut weights, &mut moments, steps, skipped)?;
    Ok(state.get("run").cloned().unwrap_or(Value::Null))
}

/// Name of the checkpoint folder of `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The complete checkpoints under `root` (folders named by
/// [`checkpoint_name`] holding a [`STATE_FILE`]), oldest first. Partial
/// folders left by a killed writer are not listed.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: root.to_path_buf(),
                source,
            });
        }
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
        if entry.path().join(STATE_FILE).is_file() {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the newest `keep` checkpoints under `root`, and partial
/// folders left by killed writers.
pub fn prune_checkpoints(root: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(root)?;
    let drop = all.len().saturating_sub(keep.max(1));
    for (_, dir) in &all[..drop] {
        std::fs::remove_dir_all(dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".partial.") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}
