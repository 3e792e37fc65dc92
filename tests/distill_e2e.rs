//! End to end: the distill_openpangu example as a real process, on the
//! quick budget, writes a complete report; bad flags fail with a message.

mod common;

use common::{example, interrupt, scratch};

use std::process::Command;

#[test]
fn quick_run_writes_the_report() {
    let out = scratch("out");
    let cache = scratch("cache");
    let run = Command::new(example())
        .args(["--quick", "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for m in ["| SFT | 0 |", "| on-policy | 0 |", "| NPD | 0 |"] {
        assert!(stdout.contains(m), "missing {m} in\n{stdout}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Targets")
            && md.contains("adds up: true")
            && md.contains("the ledger counts")
            && md.contains(": agree"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["outcomes"].as_array().unwrap().len(), 3);
    // The trained students are ordinary checkpoint folders the report names.
    assert!(md.contains("trained students"), "{md}");
    for run in ["sft-seed0", "on-policy-seed0", "npd-seed0"] {
        let model = out.join(format!("checkpoints/{run}/step-00000020/model"));
        assert!(model.join("config.json").is_file(), "{}", model.display());
        assert!(model.join("model.safetensors").is_file());
        assert!(
            model.join("tokenizer.json").is_file(),
            "the tokenizer travels along"
        );
    }
    let svg = std::fs::read_to_string(out.join("accuracy.svg")).unwrap();
    for run in ["SFT seed 0: ", "on-policy seed 0: ", "NPD seed 0: "] {
        assert!(svg.contains(run), "no curve for {run:?} in the chart");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(count("step"), 3 * 20, "one step event per step and method");
    // Evaluations every 2 steps (20 / 10); the starting accuracy of the
    // embedded default was measured beforehand.
    assert_eq!(count("eval"), 3 * 10, "{metrics}");
    assert!(md.contains("## Time to on-policy's accuracy"), "{md}");
    // NPD refreshes every 10 steps and accounts for its prompts at the end.
    assert_eq!(count("refresh"), 2);
    assert_eq!(count("ledger"), 1);
    // The first run trained the teacher and warm start and says so; a
    // second run on the same cache loads them.
    assert!(
        md.contains("trained in this run") && md.contains("student warm start 20 steps in"),
        "{md}"
    );
    let teacher_json = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path().join("teacher.json"))
        .filter(|p| p.exists())
        .count();
    assert_eq!(teacher_json, 1, "one teacher cached in {}", cache.display());
    let again = out.join("again");
    let run = Command::new(example())
        .args(["--quick", "--methods", "sft", "--out"])
        .arg(&again)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let md = std::fs::read_to_string(again.join("report.md")).unwrap();
    assert!(md.contains("loaded from the cache"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bad_configuration_fails_with_the_key() {
    let cfg = scratch("bad.toml");
    std::fs::write(&cfg, "[train]\nlr = -1\n").unwrap();
    let run = Command::new(example())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("train.lr") && err.contains("bad.toml"),
        "{err}"
    );
    let run = Command::new(example())
        .args(["--methods", "ppo"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("invalid value 'ppo'")
            && err.contains("sft, on-policy, npd, rl, sft+rl, on-policy+rl, npd+rl"),
        "{err}"
    );
    let run = Command::new(example())
        .args(["--seeds", "0"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--seeds"));
    // A method named twice would run (and be reported) twice.
    let run = Command::new(example())
        .args(["--methods", "npd,npd", "--check"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("npd is named twice"), "{err}");
    // Values that pass a range check but cannot be honoured: a time limit
    // beyond any Duration, a size no allocation can satisfy.
    for (text, key) in [
        ("[engine]\ntimeout_s = 1e300\n", "engine.timeout_s"),
        ("[pack]\ncapacity = 1099511627776\n", "pack.capacity"),
        ("[embedded]\nstudent = [131072, 1]\n", "embedded.student"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let run = Command::new(example())
            .args(["--quick", "--engine", "vllm", "--check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(key), "{text}: {err}");
    }
}

/// The embedded default runs its methods on `model.device`; a device the
/// libtorch in use cannot see is refused before anything is prepared.
#[test]
fn the_embedded_default_refuses_a_device_it_cannot_see() {
    let dir = scratch("unseen-device");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("device.toml");
    let count = npd_train::tch::Cuda::device_count();
    std::fs::write(&cfg, format!("[model]\ndevice = \"cuda:{count}\"\n")).unwrap();
    let run = Command::new(example())
        .args(["--quick", "--methods", "sft", "--out"])
        .arg(dir.join("out"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(
        err.contains("model.device") && err.contains(&format!("sees {count} CUDA device")),
        "{err}"
    );
    let prepared = std::fs::read_dir(dir.join("cache")).map_or(0, |d| d.count());
    assert_eq!(
        prepared, 0,
        "the cache was written before the device was checked"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start that fails once the folder is claimed (a server URL nobody
/// listens on) trained nothing: the corrected command may use the folder.
#[test]
fn a_failed_start_leaves_a_folder_the_corrected_command_can_use() {
    let dir = scratch("failed-start");
    std::fs::create_dir_all(&dir).unwrap();
    let (out, cache) = (dir.join("out"), dir.join("cache"));
    let cfg = dir.join("wrong-url.toml");
    std::fs::write(
        &cfg,
        "[engine]\nkind = \"vllm\"\nstudent_url = \"http://127.0.0.1:1\"\n\
         teacher_url = \"http://127.0.0.1:1\"\nretries = 0\n",
    )
    .unwrap();
    let run = |config: Option<&std::path::Path>| {
        let mut c = Command::new(example());
        c.args(["--quick", "--methods", "sft", "--steps", "4", "--out"])
            .arg(&out)
            .arg("--cache")
            .arg(&cache);
        if let Some(config) = config {
            c.arg("--config").arg(config);
        }
        c.output().unwrap()
    };
    let failed = run(Some(&cfg));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(2), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(
        out.join("run.json").exists(),
        "the folder was not claimed: {err}"
    );
    let corrected = run(None);
    let err = String::from_utf8_lossy(&corrected.stderr);
    assert!(corrected.status.success(), "{err}");
    assert!(out.join("report.md").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_resume_is_refused_before_any_training() {
    let out = scratch("nothing-to-resume");
    let cache = scratch("untouched-cache");
    let run = Command::new(example())
        .args(["--quick", "--resume", "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("no run to resume"), "{err}");
    // Refused before the teacher was prepared: the cache was never made.
    assert!(!cache.exists());
    assert!(!out.exists());
}

#[test]
fn ctrl_c_while_preparing_exits_cleanly_without_claiming_the_folder() {
    let out = scratch("interrupted-out");
    let cache = scratch("interrupted-cache");
    let child = Command::new(example())
        .args(["--quick", "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(&cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The teacher of a fresh cache trains for several seconds.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    interrupt(&child);
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("terminate called"),
        "{err}"
    );
    assert!(err.contains("stopped on request"), "{err}");
    assert!(!out.exists(), "the output folder was claimed: {err}");
    let _ = std::fs::remove_dir_all(&cache);
}
