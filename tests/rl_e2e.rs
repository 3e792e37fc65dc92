//! End to end: the RL stage as a method of a run (`--methods npd+rl`), as
//! real processes on the quick budget: NPD runs first, GRPO starts from
//! its final weights, the report gains the RL section and chart, and a run
//! stopped with Ctrl-C in the RL stage resumes to exactly the steps of an
//! unstopped run.

mod common;

use common::{example, interrupt, scratch, step_events};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const RL_STEPS: u64 = 40;

fn command(out: &Path, cache: &Path, config: &Path, resume: bool) -> Command {
    let mut c = Command::new(example());
    c.args(["--quick", "--methods", "npd+rl", "--checkpoint-every", "4"])
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// (step, tokens, the RL record) of the RL stage's step events.
fn rl_steps(out: &Path) -> Vec<(u64, u64, Value)> {
    step_events(out)
        .into_iter()
        .filter(|e| e["method"] == "NPD+RL")
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["tokens"].as_u64().unwrap(),
                e["rl"].clone(),
            )
        })
        .collect()
}

#[test]
fn rl_after_npd_runs_reports_and_resumes_exactly() {
    let dir = scratch("rl-stage");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&dir).unwrap();
    // Refreshes every 2 steps; evaluation every 10 RL steps.
    let config = dir.join("rl.toml");
    std::fs::write(
        &config,
        format!(
            "[rl]\nsteps = {RL_STEPS}\ngroup_size = 4\nprompts_per_step = 8\nrefresh_every = 2\n\
             eval_every = 10\neval_samples = 4\neval_prompts = 16\npass_k = [1, 4]\n"
        ),
    )
    .unwrap();

    // Unstopped.
    let whole = dir.join("whole");
    let done = command(&whole, &cache, &config, false).output().unwrap();
    assert!(done.status.success(), "{}", text(&done));
    let report = std::fs::read_to_string(whole.join("report.md")).unwrap();
    for needle in [
        "## RL after distillation",
        "| NPD+RL | 0 |",
        "pass@4",
        "rl.svg",
    ] {
        assert!(report.contains(needle), "{needle} missing in\n{report}");
    }
    assert!(whole.join("rl.svg").is_file());
    assert!(
        report
            .contains("NPD+RL seed 0: metrics.jsonl holds 40 step lines (steps 1 to 40 once each)")
            && report.contains(": agree")
            && !report.contains("DISAGREE"),
        "{report}"
    );
    assert!(
        whole
            .join("checkpoints/npd+rl-seed0/step-00000040/model/model.safetensors")
            .is_file()
    );
    let reference = rl_steps(&whole);
    assert_eq!(
        reference.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=RL_STEPS).collect::<Vec<_>>()
    );
    // The quick student is rarely right, but some groups differ and train.
    assert!(reference.iter().any(|s| s.1 > 0), "no RL step trained");
    assert!(
        reference
            .iter()
            .all(|s| s.2["staleness"].as_u64().unwrap() < 2)
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("report.json")).unwrap()).unwrap();
    let rl = json["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["method"] == "near-policy-rl")
        .map(|o| o["rl"].clone())
        .expect("the RL outcome");
    assert_eq!(rl["start"], "near-policy");
    let evals: Vec<u64> = rl["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, [0, 10, 20, 30, 40]);

    // Stopped with Ctrl-C in the RL stage, then resumed.
    let out = dir.join("stopped");
    let mut child = command(&out, &cache, &config, false).spawn().unwrap();
    let start = Instant::now();
    while rl_steps(&out).len() < 5 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its fifth RL step");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    interrupt(&child);
    let stopped = child.wait_with_output().unwrap();
    if stopped.status.code() == Some(130) {
        eprintln!("stopped after {} RL steps; resuming", rl_steps(&out).len());
        let resumed = command(&out, &cache, &config, true).output().unwrap();
        assert!(resumed.status.success(), "{}", text(&resumed));
    } else {
        // The run finished before the signal landed; nothing to resume.
        assert!(stopped.status.success(), "{}", text(&stopped));
    }
    assert_eq!(rl_steps(&out), reference, "the resumed RL stage differs");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report
            .contains("NPD+RL seed 0: metrics.jsonl holds 40 step lines (steps 1 to 40 once each)"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
