//! Saving a model in the Hugging Face layout, atomically.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tch::Tensor;

use npd_core::{Error, Result};

use crate::model::Llama;
use crate::weights::{INDEX_FILE, SINGLE_FILE, write_atomic, write_safetensors};

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
        write_atomic(
            &tmp.join(INDEX_FILE),
            serde_json::to_string_pretty(&index)
                .expect("JSON values serialise")
                .as_bytes(),
        )?;
    }
    replace_dir(&tmp, dir)
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
