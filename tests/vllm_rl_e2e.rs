//! End to end with real vLLM servers: the RL stage after NPD
//! (`--methods npd+rl`) samples its groups on the student server, which
//! reloads the trained weights every `rl.refresh_every` steps; every
//! reload is verified by probe, and the report carries the RL section.
//! Snapshots go to the default publish root: bfloat16 folders in memory
//! (`/dev/shm`), removed when the run ends.

mod common;

use common::{example, scratch, step_events};

use std::process::Command;

use serde_json::Value;

#[test]
fn rl_after_npd_on_vllm_servers_refreshes_with_verified_weights() {
    let dir = scratch("vllm-rl");
    std::fs::create_dir_all(&dir).unwrap();
    let (out, cache, config) = (dir.join("out"), dir.join("cache"), dir.join("rl.toml"));
    // Held-out evaluation on a server of its own.
    std::fs::write(
        &config,
        "[rl]\nsteps = 6\ngroup_size = 3\nprompts_per_step = 4\nrefresh_every = 2\n\
         eval_every = 3\neval_samples = 2\neval_prompts = 8\npass_k = [1, 2]\n\
         [engine]\neval_servers = 1\n",
    )
    .unwrap();
    let run = Command::new(example())
        .args(["--quick", "--engine", "vllm", "--methods", "sft,npd+rl"])
        .args(["--steps", "4", "--refresh-every", "2", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let rl: Vec<Value> = step_events(&out)
        .into_iter()
        .filter(|e| e["method"] == "NPD+RL")
        .collect();
    assert_eq!(rl.len(), 6, "{rl:?}");
    assert!(rl.iter().all(|e| e["rl"]["staleness"].as_u64() < Some(2)));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("held-out evaluation on 1 server(s)")
            && report.contains("eval server started by npd"),
        "{report}"
    );
    // The teacher's check and SFT's responses came from the teacher server.
    let check = report
        .lines()
        .find(|l| l.contains("teacher held-out accuracy measured on its server: "))
        .unwrap_or_else(|| panic!("no server check in the report:\n{report}"));
    let percent = |after: &str| -> f64 {
        let rest = check.split(after).nth(1).unwrap();
        rest[..rest.find('%').unwrap()].parse().unwrap()
    };
    // Greedy decoding of the same float32 weights: the server's grade is
    // the in-process one, up to near-ties.
    let (server, local) = (percent("on its server: "), percent("(in-process: "));
    assert!((server - local).abs() <= 5.0, "{check}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let sft = &json["outcomes"][0];
    assert_eq!(sft["method"], "sft", "{json}");
    assert!(sft["prep_s"].as_f64() > Some(0.0), "{sft}");
    // Every held-out evaluation after the start ran on the evaluation
    // server (the warm start's score comes from the preparation).
    assert_eq!(sft["curve"].as_array().unwrap().len(), 5, "{sft}");
    assert!(out.join("checkpoints/sft-responses.json").is_file());
    // Snapshots went to memory when the machine has it, and are gone.
    let root = report
        .lines()
        .find_map(|l| l.strip_prefix("- snapshots published to "))
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no publish root in the report:\n{report}"));
    if std::path::Path::new("/dev/shm").is_dir() {
        assert!(root.starts_with("/dev/shm"), "{report}");
    }
    assert!(
        !root.starts_with("/dev/shm") || !root.exists(),
        "{} left behind",
        root.display()
    );
    // The RL stage refreshed its server: publish and reload are stages.
    let rl_outcome = json["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["rl"].is_object())
        .unwrap_or_else(|| panic!("no RL outcome: {json}"));
    assert!(rl_outcome["refreshes"].as_u64() >= Some(3), "{rl_outcome}");
    assert!(
        rl_outcome["stages"]["reload"].as_f64() > Some(0.0),
        "{rl_outcome}"
    );
    assert!(report.contains("## RL after distillation"), "{report}");
    assert!(
        report.contains("weight refreshes verified by probe") && report.contains(" 0 failed"),
        "{report}"
    );
    // NPD refreshes at steps 2 and 4 (and its start), the RL stage at its
    // start and steps 2 and 4: at least five verified reloads.
    let line = report
        .lines()
        .find(|l| l.contains("weight refreshes verified by probe"))
        .unwrap();
    let verified: usize = line
        .split("verified by probe: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(verified >= 5, "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
