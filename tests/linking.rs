//! The binaries link libtorch's CUDA library whenever the libtorch they
//! are built against ships it; otherwise libtorch would see no GPU. (The
//! examples are built by `cargo build --all-targets` or a plain
//! `cargo test`, which `./npd test` runs first.)

mod common;

use std::path::Path;
use std::process::Command;

/// The `NEEDED` entries of the ELF file at `path`, read with `readelf`
/// (binutils, which the linker comes with).
fn needed(path: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("readelf -d {}: {e}", path.display()));
    assert!(out.status.success(), "readelf -d {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}

#[test]
fn cuda_is_linked_where_libtorch_ships_it() {
    let lib = Path::new(env!("NPD_LIBTORCH_LIB"));
    assert!(lib.join("libtorch_cpu.so").exists(), "{}", lib.display());
    let cuda = lib.join("libtorch_cuda.so").exists();
    for name in ["distill_openpangu", "study", "model_bench"] {
        let binary = common::example_named(name);
        let needed = needed(&binary);
        assert!(
            needed.iter().any(|n| n == "libtorch_cpu.so"),
            "{}: {needed:?}",
            binary.display()
        );
        assert_eq!(
            needed.iter().any(|n| n == "libtorch_cuda.so"),
            cuda,
            "{} NEEDED {needed:?}, while {} {} libtorch_cuda.so",
            binary.display(),
            lib.display(),
            if cuda { "has" } else { "has no" }
        );
    }
}

#[test]
fn check_prints_what_libtorch_sees() {
    let out = Command::new(common::example())
        .args(["--check", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configuration valid"), "{text}");
    assert!(text.contains("CUDA available:"), "{text}");
    // The memory plan per role, and its peak against the machine.
    assert!(text.contains("memory plan on cpu"), "{text}");
    assert!(text.contains("| student trainer"), "{text}");
    assert!(text.contains("peak (resident + largest phase)"), "{text}");
    let lib = Path::new(env!("NPD_LIBTORCH_LIB"));
    if lib.join("libtorch_cuda.so").exists() {
        assert!(text.contains("libtorch_cuda.so linked"), "{text}");
    }
}
