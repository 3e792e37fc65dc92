//! Helpers of the end-to-end tests that run the examples as processes.

use std::path::{Path, PathBuf};

/// The built `distill_openpangu` example beside this test binary:
/// target/<profile>/deps/<test> → target/<profile>/examples/<example>.
#[allow(dead_code)]
pub fn example() -> PathBuf {
    example_named("distill_openpangu")
}

/// The built example `name` beside this test binary.
pub fn example_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

/// An empty scratch path, unique to this test process, named `what`.
#[allow(dead_code)]
pub fn scratch(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("npd-e2e-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Sends SIGINT (what Ctrl-C sends) to a running example. (Not every test
/// binary that includes this module sends signals.)
#[allow(dead_code)]
pub fn interrupt(child: &std::process::Child) {
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -INT {pid} failed");
}

/// The step events of a run folder's `metrics.jsonl` (none while it does
/// not exist).
#[allow(dead_code)]
pub fn step_events(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .collect()
}
