//! Links libtorch into this package's test, example and bench binaries the
//! way they need it at run time (the one build script of the workspace:
//! `npd-train` and `npd-distill` point at this file too).
//!
//! - libtorch's library folder becomes an rpath, so the binaries run
//!   without `LD_LIBRARY_PATH`.
//! - Where the libtorch in use ships CUDA (`libtorch_cuda.so`), it is
//!   linked with `--no-as-needed`. Nothing in the binaries references a
//!   CUDA symbol directly (libtorch's CUDA kernels register themselves when
//!   the library loads), so rustc's default `--as-needed` would drop the
//!   library and libtorch would see no CUDA device. torch-sys's own flag of
//!   the same kind reaches only its own targets, hence this one.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys (links = "tch") exports the folder it linked against.
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rerun-if-changed={dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    // For the test that checks the linking.
    println!("cargo:rustc-env=NPD_LIBTORCH_LIB={dir}");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux {
        for lib in ["torch_cuda", "torch_hip"] {
            if Path::new(&dir).join(format!("lib{lib}.so")).exists() {
                println!("cargo:rustc-link-arg=-Wl,-L{dir},--no-as-needed,-l{lib},--as-needed");
            }
        }
    }
}
