//! End to end: a real run of the distill_openpangu example is killed with
//! SIGKILL mid-run, resumed, stopped with Ctrl-C (SIGINT), and resumed to
//! its end; every prompt is accounted for once, no step is lost or
//! repeated in the metrics, and the work in flight at the checkpoint is
//! done after the restart.

mod common;

use common::{example, interrupt, scratch, step_events as metrics};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const STEPS: u64 = 60;

fn command(out: &Path, cache: &Path, resume: bool) -> Command {
    let mut c = Command::new(example());
    c.args(["--quick", "--methods", "npd", "--checkpoint-every", "5"])
        .args(["--steps", &STEPS.to_string(), "--out"])
        .arg(out)
        .arg("--cache")
        .arg(cache);
    if resume {
        c.arg("--resume");
    }
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// Waits until the run has written more than `lines` metrics lines.
fn wait_for_steps(child: &mut Child, out: &Path, lines: usize) {
    let start = Instant::now();
    while metrics(out).len() <= lines {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {}", lines + 1);
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn latest_checkpoint(out: &Path) -> (u64, PathBuf) {
    let dir = out.join("checkpoints/npd-seed0");
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .max()
        .expect("a checkpoint")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ids(lines: &[Value], key: &str) -> Vec<u64> {
    lines
        .iter()
        .flat_map(|l| l[key].as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn killed_and_interrupted_runs_resume_without_losing_or_repeating_work() {
    let out = scratch("out");
    let cache = scratch("cache");

    // 1. SIGKILL a few steps past the first checkpoint.
    let mut child = command(&out, &cache, false).spawn().unwrap();
    wait_for_steps(&mut child, &out, 7);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let (killed_at, ckpt) = latest_checkpoint(&out);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("run.json")).unwrap()).unwrap();
    let in_flight: BTreeSet<u64> = state["npd"]["open_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(!in_flight.is_empty(), "the checkpoint holds work in flight");
    assert!(ckpt.join("model/model.safetensors").is_file());
    assert!(ckpt.join("optimizer.safetensors").is_file());
    // An older kept checkpoint holds the weights, not the optimizer state.
    let older: Vec<_> = std::fs::read_dir(ckpt.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &ckpt && p.join("run.json").is_file())
        .collect();
    for o in &older {
        assert!(
            o.join("model/model.safetensors").is_file(),
            "{}",
            o.display()
        );
        assert!(!o.join("optimizer.safetensors").exists(), "{}", o.display());
    }

    // Starting afresh on the folder is refused with advice.
    let refused = command(&out, &cache, false).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--resume"), "{}", text(&refused));

    // 2. Resume, then stop it with Ctrl-C: it checkpoints and exits 130.
    let mut child = command(&out, &cache, true).spawn().unwrap();
    wait_for_steps(&mut child, &out, killed_at as usize + 3);
    interrupt(&child);
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(130), "{}", text(&stopped));
    assert!(text(&stopped).contains("--resume"), "{}", text(&stopped));
    let (stopped_at, _) = latest_checkpoint(&out);
    assert!(stopped_at > killed_at && stopped_at < STEPS);

    // 3. Resume to the end.
    let done = command(&out, &cache, true).output().unwrap();
    assert!(done.status.success(), "{}", text(&done));

    let lines = metrics(&out);
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(
        steps,
        (1..=STEPS).collect::<Vec<_>>(),
        "each step once, in order"
    );
    let trained = ids(&lines, "prompts_trained");
    let filtered = ids(&lines, "prompts_filtered");
    let trained_set: BTreeSet<u64> = trained.iter().copied().collect();
    let filtered_set: BTreeSet<u64> = filtered.iter().copied().collect();
    assert_eq!(trained.len(), trained_set.len(), "a prompt trained twice");
    assert_eq!(
        filtered.len(),
        filtered_set.len(),
        "a prompt filtered twice"
    );
    assert!(trained_set.is_disjoint(&filtered_set));
    let missing: Vec<u64> = in_flight
        .iter()
        .filter(|id| !trained_set.contains(id) && !filtered_set.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "in flight at the checkpoint, never finished: {missing:?}"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let npd = &report["outcomes"][0];
    assert_eq!(
        npd["resumed_at"],
        serde_json::json!([killed_at, stopped_at])
    );
    let ledger = &npd["ledger"];
    let count = |v: &Value| {
        v.as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(ledger["trained"].as_u64().unwrap(), trained.len() as u64);
    assert_eq!(count(&ledger["filtered"]), filtered.len() as u64);
    assert_eq!(
        ledger["trained"].as_u64().unwrap()
            + count(&ledger["filtered"])
            + count(&ledger["failed"])
            + ledger["open"].as_u64().unwrap(),
        ledger["total"].as_u64().unwrap()
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("adds up: true"), "{md}");
    // The ledger counted again from metrics.jsonl, across both restarts.
    assert!(
        md.contains("NPD seed 0: metrics.jsonl names") && md.contains(": agree"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&cache);
}
