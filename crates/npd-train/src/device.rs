//! Choosing where and in which dtype models run, and what the libtorch in
//! use can reach.

use std::fmt;
use std::path::{Path, PathBuf};

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
                format!(
                    "\"{spec}\": this libtorch sees {count} CUDA device(s); {}",
                    Libtorch::probe().why_no_cuda()
                ),
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

/// What the libtorch this process runs on can reach (printed by
/// `--check`, and named when a CUDA device is asked for and missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Libtorch {
    /// The folder of the loaded `libtorch_cpu.so`, when it can be told.
    pub lib_dir: Option<PathBuf>,
    /// Its version (`2.13.0+cu130`), from the wheel's `version.py` or the
    /// libtorch archive's `build-version`.
    pub version: Option<String>,
    /// The CUDA version it was built for (`13.0`); `None` for a CPU build.
    pub cuda_build: Option<String>,
    /// Whether `libtorch_cuda.so` is loaded into this process.
    pub cuda_linked: bool,
    /// Whether libtorch reports CUDA usable.
    pub cuda_available: bool,
    /// CUDA devices libtorch sees.
    pub cuda_devices: i64,
    /// Whether cuDNN is usable.
    pub cudnn: bool,
}

impl Libtorch {
    /// Probes this process: `/proc/self/maps` for the loaded libraries,
    /// the files beside them for the versions, libtorch for the devices.
    pub fn probe() -> Self {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let loaded = |name: &str| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| Path::new(p).file_name().is_some_and(|f| f == name))
                .map(PathBuf::from)
        };
        let lib_dir = loaded("libtorch_cpu.so").and_then(|p| p.parent().map(Path::to_path_buf));
        let (version, cuda_build) = lib_dir.as_deref().map(versions).unwrap_or_default();
        Self {
            lib_dir,
            version,
            cuda_build,
            cuda_linked: loaded("libtorch_cuda.so").is_some(),
            cuda_available: Cuda::is_available(),
            cuda_devices: Cuda::device_count(),
            cudnn: Cuda::cudnn_is_available(),
        }
    }

    /// The oldest NVIDIA driver branch the CUDA build runs on (CUDA 13:
    /// R580; CUDA 12: R525 through minor-version compatibility; CUDA 11:
    /// R450).
    pub fn driver_needed(&self) -> Option<u32> {
        let major: u32 = self
            .cuda_build
            .as_deref()?
            .split('.')
            .next()?
            .parse()
            .ok()?;
        match major {
            13.. => Some(580),
            12 => Some(525),
            11 => Some(450),
            _ => None,
        }
    }

    /// Why no CUDA device is seen, as a user can act on it.
    pub fn why_no_cuda(&self) -> String {
        match (&self.cuda_build, self.cuda_linked) {
            (None, _) => "this libtorch is a CPU build: set LIBTORCH to a CUDA build \
                          (see the README, \"GPUs\")"
                .to_string(),
            (Some(_), false) => "this binary was built without libtorch_cuda.so \
                                 (rebuild it: its build script links CUDA when $LIBTORCH/lib \
                                 has it)"
                .to_string(),
            (Some(cuda), true) => format!(
                "libtorch is built for CUDA {cuda}, which needs an NVIDIA driver R{} or later \
                 and a visible GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES); for an older \
                 driver set LIBTORCH to a cu12x libtorch (see the README, \"GPUs\")",
                self.driver_needed().unwrap_or(0)
            ),
        }
    }
}

impl fmt::Display for Libtorch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self
            .lib_dir
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |d| d.display().to_string());
        writeln!(
            f,
            "libtorch {} at {dir}",
            self.version.as_deref().unwrap_or("(version unknown)")
        )?;
        match &self.cuda_build {
            None => writeln!(f, "  CUDA: not in this build (CPU only)")?,
            Some(cuda) => writeln!(
                f,
                "  CUDA {cuda} build (driver R{} or later), libtorch_cuda.so {}",
                self.driver_needed().unwrap_or(0),
                if self.cuda_linked {
                    "linked"
                } else {
                    "NOT linked"
                }
            )?,
        }
        writeln!(
            f,
            "  CUDA available: {}, devices: {}, cuDNN: {}",
            yes(self.cuda_available),
            self.cuda_devices,
            yes(self.cudnn)
        )?;
        if self.cuda_devices == 0 {
            writeln!(f, "  no CUDA device: {}", self.why_no_cuda())?;
        }
        Ok(())
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The version and CUDA version of the libtorch whose libraries are in
/// `lib_dir`: the wheel's `torch/version.py` (`__version__`, `cuda`) or
/// the archive's `build-version` (`2.13.0+cu130`).
fn versions(lib_dir: &Path) -> (Option<String>, Option<String>) {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let value = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split('\'').nth(1))
                .map(str::to_string)
        };
        return (value("__version__"), value("cuda"));
    }
    let version = std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string());
    let cuda = version.as_deref().and_then(cuda_of_tag);
    (version, cuda)
}

/// `13.0` of a version tag such as `2.13.0+cu130`, `12.4` of `+cu124`.
fn cuda_of_tag(version: &str) -> Option<String> {
    let digits = version.split_once("+cu")?.1;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(format!("{major}.{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn cuda_versions_of_tags() {
        assert_eq!(cuda_of_tag("2.13.0+cu130").as_deref(), Some("13.0"));
        assert_eq!(cuda_of_tag("2.5.1+cu124").as_deref(), Some("12.4"));
        assert_eq!(cuda_of_tag("2.5.1+cpu"), None);
        assert_eq!(cuda_of_tag("2.5.1"), None);
    }

    #[test]
    fn the_probe_finds_the_loaded_libtorch() {
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let probe = Libtorch::probe();
        let dir = probe.lib_dir.as_ref().expect("libtorch_cpu.so is mapped");
        assert!(dir.join("libtorch_cpu.so").exists());
        assert!(probe.version.is_some(), "{probe}");
        // Where the build ships CUDA, the build script links it.
        if dir.join("libtorch_cuda.so").exists() {
            assert!(probe.cuda_linked, "{probe}");
            assert!(probe.cuda_build.is_some(), "{probe}");
        }
        let text = probe.to_string();
        assert!(text.contains("CUDA available"), "{text}");
    }

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
