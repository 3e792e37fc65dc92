//! Reading and writing safetensors checkpoints in the Hugging Face layout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;
use tch::{Kind, Tensor};

pub use npd_core::fs::write_atomic;
use npd_core::{Error, Result};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The tensors of a checkpoint folder, loaded on the CPU in their stored
/// dtype, taken out one by one by name with a shape check.
#[derive(Debug)]
pub struct TensorStore {
    tensors: HashMap<String, (Tensor, PathBuf)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        _ => None,
    }
}

impl TensorStore {
    /// Opens `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let mut store = TensorStore {
            tensors: HashMap::new(),
        };
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                Error::invalid(index.display().to_string(), format!("not valid JSON: {e}"))
            })?;
            let map = value
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    Error::invalid(
                        index.display().to_string(),
                        "expected a `weight_map` object of tensor name -> shard file",
                    )
                })?;
            let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::invalid(
                        index.display().to_string(),
                        format!("`weight_map.{name}` is not a file name"),
                    )
                })?;
                shards.entry(file).or_default().push(name);
            }
            for (file, names) in shards {
                let path = dir.join(file);
                store.read_file(&path)?;
                for name in names {
                    if !store.tensors.contains_key(name) {
                        return Err(Error::invalid(
                            format!("tensor {name}"),
                            format!(
                                "listed in {} under {file}, but missing from that shard",
                                index.display()
                            ),
                        ));
                    }
                }
            }
        } else {
            let single = dir.join(SINGLE_FILE);
            if !single.exists() {
                return Err(Error::invalid(
                    dir.display().to_string(),
                    format!("no {SINGLE_FILE} and no {INDEX_FILE}: not a safetensors checkpoint"),
                ));
            }
            store.read_file(&single)?;
        }
        Ok(store)
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut store = TensorStore {
            tensors: HashMap::new(),
        };
        store.read_file(path)?;
        Ok(store)
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::invalid(
                path.display().to_string(),
                format!("not a safetensors file: {e}"),
            )
        })?;
        for (name, view) in file.tensors() {
            let tensor = to_tensor(&name, &view, path)?;
            self.tensors.insert(name, (tensor, path.to_path_buf()));
        }
        Ok(())
    }

    /// Whether a tensor of this name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let (tensor, path) = self.tensors.remove(name).ok_or_else(|| {
            Error::invalid(
                format!("tensor {name}"),
                format!("missing from the checkpoint (expected shape {shape:?})"),
            )
        })?;
        if tensor.size() != shape {
            return Err(Error::invalid(
                format!("tensor {name}"),
                format!(
                    "has shape {:?} in {}, expected {shape:?}",
                    tensor.size(),
                    path.display()
                ),
            ));
        }
        Ok(tensor)
    }

    /// Drops a tensor if present (e.g. an untied `lm_head` of a tied model).
    pub fn discard(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// Names not taken yet, sorted.
    pub fn remaining(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }
}

fn to_tensor(name: &str, view: &TensorView<'_>, path: &Path) -> Result<Tensor> {
    let kind = kind_of(view.dtype()).ok_or_else(|| {
        Error::invalid(
            format!("tensor {name}"),
            format!(
                "has dtype {:?} in {}, expected F32, BF16 or F16",
                view.dtype(),
                path.display()
            ),
        )
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| Error::Backend {
        context: format!("reading tensor {name} from {}", path.display()),
        cause: Box::new(e),
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    match kind {
        Kind::Float => Ok(Dtype::F32),
        Kind::BFloat16 => Ok(Dtype::BF16),
        Kind::Half => Ok(Dtype::F16),
        other => Err(Error::invalid(
            "checkpoint dtype",
            format!("{other:?} cannot be saved; expected f32, bf16 or f16"),
        )),
    }
}

/// Writes named tensors to one safetensors file atomically: a temporary file
/// in the same folder, fsync, rename.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind())?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)
            .map_err(|e| Error::Backend {
                context: format!("copying tensor {name}"),
                cause: Box::new(e),
            })?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        data.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(&str, TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.as_str(), v))
                .map_err(|e| Error::invalid(format!("tensor {n}"), e.to_string()))
        })
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    write_atomic(path, &bytes)
}
