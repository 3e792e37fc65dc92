//! Saving a model in the Hugging Face layout, and training checkpoints
//! (model and optimizer state, through [`Persist`]) that a killed run
//! resumes from; every folder appears atomically.

use std::path::Path;

use serde_json::{Map, Value};
use tch::Tensor;

use npd_core::fs::{partial_dir, replace_dir};
use npd_core::traits::Persist;
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
    let tmp = partial_dir(dir)?;
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
    let dtype = match model.kind() {
        tch::Kind::BFloat16 => "bfloat16",
        tch::Kind::Half => "float16",
        _ => "float32",
    };
    // The config states the dtype the weights are written in.
    let config = match config_json.map(serde_json::from_str::<Value>) {
        Some(Ok(mut v)) if v.is_object() => {
            v["torch_dtype"] = dtype.into();
            if v.get("dtype").is_some() {
                v["dtype"] = dtype.into();
            }
            serde_json::to_string_pretty(&v).expect("JSON values serialise")
        }
        Some(_) => {
            return Err(Error::invalid(
                "the student's config.json",
                "not a JSON object; it is copied into checkpoints",
            ));
        }
        None => {
            let mut v = model.config().to_llama_json();
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

/// Sub-folder of a training checkpoint holding the student in the Hugging
/// Face layout (loadable by transformers and by [`Llama::load`]).
pub const MODEL_DIR: &str = "model";
/// File of a training checkpoint holding the AdamW moments, named
/// `exp_avg.<parameter>` and `exp_avg_sq.<parameter>`.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// File of a training checkpoint holding the trainer's step counters.
pub const TRAINER_FILE: &str = "trainer.json";

/// A trainer's checkpoint: the student in the Hugging Face layout under
/// [`MODEL_DIR`] (with the trainer's `config.json`, see
/// [`Trainer::with_config_json`]), the AdamW moments in [`OPTIMIZER_FILE`],
/// and the optimizer step and skipped-step counts in [`TRAINER_FILE`].
impl Persist for Trainer {
    fn save_state(&self, dir: &Path) -> Result<()> {
        let model_dir = dir.join(MODEL_DIR);
        std::fs::create_dir_all(&model_dir).map_err(|source| Error::Io {
            path: model_dir.clone(),
            source,
        })?;
        write_model_files(
            self.model(),
            &model_dir,
            self.config_json(),
            DEFAULT_SHARD_BYTES,
        )?;
        for (name, bytes) in self.companion_files() {
            write_atomic(&model_dir.join(name), bytes)?;
        }
        write_safetensors(&dir.join(OPTIMIZER_FILE), &self.optimizer_state())?;
        let state = serde_json::json!({
            "optimizer_steps": self.optimizer().steps(),
            "skipped_steps": self.skipped_steps(),
        });
        write_json(&dir.join(TRAINER_FILE), &state)
    }

    fn resume_only_files(&self) -> &'static [&'static str] {
        &[OPTIMIZER_FILE]
    }

    /// Every tensor is checked by name and shape: a checkpoint of another
    /// architecture is refused with the tensor named.
    fn restore_state(&mut self, dir: &Path) -> Result<()> {
        let state_path = dir.join(TRAINER_FILE);
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
        let optimizer = dir.join(OPTIMIZER_FILE);
        if !optimizer.is_file() {
            return Err(Error::invalid(
                optimizer.display().to_string(),
                "missing: this checkpoint keeps the weights only (the optimizer state is kept in \
                 the latest checkpoint; output.optimizer_in_every_checkpoint = true keeps it in \
                 each); resume from the latest, or use its model/ folder as weights",
            ));
        }
        let mut weights = TensorStore::open(&dir.join(MODEL_DIR))?;
        let mut moments = TensorStore::open_file(&optimizer)?;
        self.restore(&mut weights, &mut moments, steps, skipped)
    }
}
