//! Choosing where and in which dtype models run.

use tch::{Cuda, Device, Kind};

use crate::models_config::Dtype;
use npd_core::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N` (the `model.device` key), checking that
/// a requested CUDA device exists.
pub fn parse_device(spec: &str) -> Result<Device> {
    let cuda = |n: usize| {
        let count = Cuda::device_count().max(0) as usize;
        if n < count {
            Ok(Device::Cuda(n))
        } else {
            Err(Error::invalid(
                "model.device",
                format!("\"{spec}\": this libtorch sees {count} CUDA device(s)"),
            ))
        }
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => Err(Error::invalid(
                "model.device",
                format!("\"{spec}\": expected cpu, cuda or cuda:N"),
            )),
        },
    }
}

/// The libtorch kind of a configured dtype.
pub fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(
            parse_device("gpu")
                .unwrap_err()
                .to_string()
                .contains("cpu, cuda or cuda:N")
        );
        let n = Cuda::device_count();
        let err = parse_device(&format!("cuda:{n}")).unwrap_err().to_string();
        assert!(err.contains("CUDA device"), "{err}");
    }
}
