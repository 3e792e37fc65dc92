//! End to end: GRPO from a checkpoint the distill example wrote, as real
//! processes on the quick budget: the RL example starts from the trained
//! student, trains, and prints its before-and-after table; a checkpoint of
//! another model is refused by name.

mod common;

use common::{example, example_named, scratch};

use std::process::Command;

#[test]
fn grpo_runs_from_a_distilled_checkpoint() {
    let dir = scratch("rl-after");
    let (out, cache) = (dir.join("out"), dir.join("cache"));
    let distill = Command::new(example())
        .args(["--quick", "--methods", "sft", "--steps", "4", "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        distill.status.success(),
        "{}",
        String::from_utf8_lossy(&distill.stderr)
    );
    let model = out.join("checkpoints/sft-seed0/step-00000004/model");
    let rl = Command::new(example_named("rl_after"))
        .args([
            "--quick",
            "--steps",
            "3",
            "--group",
            "4",
            "--prompts",
            "4",
            "--k",
            "2",
        ])
        .arg("--from")
        .arg(&model)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&rl.stdout);
    assert!(
        rl.status.success(),
        "{}",
        String::from_utf8_lossy(&rl.stderr)
    );
    for needle in ["| before |", "| after |", "pass@2", "groups kept"] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }
    // Another model's folder (the cached teacher) is refused by name.
    let teacher = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("teacher"))
        .find(|p| p.join("config.json").is_file())
        .expect("the quick teacher is cached");
    let other = Command::new(example_named("rl_after"))
        .args(["--quick", "--steps", "1", "--from"])
        .arg(&teacher)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success(),
        "the teacher was taken for the student"
    );
    assert!(err.contains("not the embedded default's student"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
