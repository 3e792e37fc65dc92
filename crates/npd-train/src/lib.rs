//! The libtorch side of npd: the openPangu-Embedded / Llama-family model,
//! checkpoint I/O, scoring, generation, losses and training.
//!
//! - [`config`]: the architecture from a Hugging Face `config.json`.
//! - [`weights`]: safetensors checkpoints, single-file or sharded, read and
//!   written atomically.
//! - [`model`]: the decoder, with a packed training forward and a cached
//!   decoding forward.
//! - [`generator`], [`score`], [`train`], [`eval`]: the stage traits of
//!   `npd-core` implemented on it (generation, scoring, training with
//!   [`npd_core::traits::Persist`] checkpoints, held-out evaluation).
//! - [`stages`]: all of them as the backend of an
//!   [`npd_pipeline::Comparison`].
//! - [`data`], [`folder`]: prompt files and model folders.
//! - [`memory`]: whether a model fits before it is allocated.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod folder;
pub mod generate;
pub mod generator;
pub mod loss;
pub mod memory;
pub mod memory_plan;
pub mod model;
pub mod models_config;
pub mod optim;
pub mod score;
mod segments;
pub mod served;
pub mod stages;
mod targets;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use config::ModelConfig;
pub use model::{KvCache, Llama};
pub use stages::TchStages;
pub use tch;

/// What this process's libtorch can do: whether CUDA is usable and how many
/// intra-op threads it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Number of CUDA devices visible to libtorch (0 on CPU-only machines).
    pub cuda_devices: usize,
    /// Intra-op thread count libtorch uses on CPU.
    pub cpu_threads: i32,
}

/// Queries the linked libtorch.
pub fn backend_info() -> BackendInfo {
    BackendInfo {
        cuda_devices: tch::Cuda::device_count().max(0) as usize,
        cpu_threads: tch::get_num_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn libtorch_computes_a_matmul() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0, 7.0, 8.0]).reshape([2, 2]);
        let c = a.matmul(&b);
        let got: Vec<f32> = c.flatten(0, -1).try_into().unwrap();
        assert_eq!(got, vec![19.0, 22.0, 43.0, 50.0]);
        assert_eq!(c.kind(), Kind::Float);
        assert_eq!(c.device(), Device::Cpu);
    }

    #[test]
    fn backend_reports_threads() {
        assert!(backend_info().cpu_threads >= 1);
    }
}
