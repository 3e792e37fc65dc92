//! End to end with real vLLM servers: the distill_openpangu example runs
//! NPD with student rollouts and teacher scores from servers it starts
//! itself (the CPU build `./npd test` installs) and the trainer in-process.
//! It starts two student servers; one is killed mid-run and the run goes
//! on with the other, naming the lost one. Stopped with Ctrl-C, it
//! checkpoints and ends its servers; the resume (with fresh servers)
//! finishes the run with every prompt accounted for once and every weight
//! refresh verified.

mod common;

use common::{example, interrupt, scratch, step_events as steps};

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const STEPS: u64 = 24;

/// The run's configuration: two student servers, snapshots published
/// beside the output (an `engine.publish_dir` of the user's), in float32.
fn config(out: &Path) -> std::path::PathBuf {
    let path = out.with_extension("toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\npublish_dir = \"{}\"\npublish_dtype = \"float32\"\nstudent_servers = 2\n",
            out.join("served").display()
        ),
    )
    .unwrap();
    path
}

fn command(out: &Path, cache: &Path, resume: bool) -> Command {
    let mut c = Command::new(example());
    c.arg("--config").arg(config(out));
    c.args(["--quick", "--engine", "vllm", "--methods", "npd"])
        .args(["--checkpoint-every", "4", "--refresh-every", "2"])
        .args(["--steps", &STEPS.to_string(), "--out"])
        .arg(out)
        .arg("--cache")
        .arg(cache);
    if resume {
        c.arg("--resume");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn wait_for_step(child: &mut Child, out: &Path, step: u64) {
    let start = Instant::now();
    while !steps(out).iter().any(|s| s["step"].as_u64() >= Some(step)) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("the run ended ({status}) before step {step}:\n{stderr}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "no step {step} after 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No process of the servers npd started for `out` is left, engine
/// processes included (after a grace period for their shutdown).
fn no_servers_left(out: &Path) {
    std::thread::sleep(Duration::from_secs(3));
    for pattern in [
        format!("--model {}/served/", out.display()),
        "VLLM::".to_string(),
    ] {
        let left = Command::new("pgrep")
            .args(["-a", "-f", &pattern])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "server processes left behind: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}

#[test]
fn npd_on_vllm_servers_survives_a_dead_student_server() {
    let out = scratch("vllm-out");
    let cache = scratch("vllm-cache");
    let t0 = Instant::now();
    let mut child = command(&out, &cache, false).spawn().unwrap();
    wait_for_step(&mut child, &out, 6);
    eprintln!("step 6 after {:.0?}", t0.elapsed());

    // A folder of the user's beside the snapshots (as in an
    // engine.publish_dir of theirs): refreshes delete only snapshots.
    let keep = out.join("served/NPD-seed0/keepme");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::write(keep.join("notes.txt"), "mine").unwrap();

    // Kill one of the two student servers (the API process, not npd's
    // watcher around it) as a crash would: the run goes on with the other.
    let pattern = format!(
        "^[^ ]*python[^ ]* -m vllm.entrypoints.openai.api_server --model {}",
        out.join("served/student-start").display()
    );
    let found = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&found.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(pids.len(), 2, "two student servers: {pids:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &pids[0]])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for_step(&mut child, &out, 12);
    eprintln!("step 12 on one student server after {:.0?}", t0.elapsed());

    // Ctrl-C: a checkpoint, the documented status, and the servers npd
    // started are gone.
    interrupt(&child);
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("stopped answering") && stderr.contains("going on with 1 of 2"),
        "the lost server is named: {stderr}"
    );
    let before: BTreeSet<u64> = steps(&out)
        .iter()
        .filter_map(|s| s["step"].as_u64())
        .collect();
    assert!(
        !before.contains(&STEPS),
        "the first run finished: {before:?}"
    );
    // npd's own servers are gone with it, engine processes included.
    no_servers_left(&out);
    eprintln!("first run stopped after {:.0?}", t0.elapsed());

    let second = command(&out, &cache, true).output().unwrap();
    eprintln!("resumed run ended after {:.0?}", t0.elapsed());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "resume failed:\n{stderr}");

    assert_eq!(
        std::fs::read_to_string(keep.join("notes.txt")).unwrap(),
        "mine",
        "a refresh deleted a folder npd did not write"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("weight refreshes verified by probe") && report.contains(" 0 failed"),
        "{report}"
    );
    assert!(
        report.contains(": agree") && !report.contains("DISAGREE"),
        "the ledger and the metrics agree:\n{report}"
    );
    assert!(
        report.contains("student-2 server started by npd"),
        "{report}"
    );
    assert!(report.contains("(2 student, 1 teacher;"), "{report}");
    assert!(
        report.contains(&format!(
            "snapshots published to {} (engine.publish_dir)",
            out.join("served").canonicalize().unwrap().display()
        )),
        "{report}"
    );
    // The refreshes' cost is its own section: NPD refreshed every 2 steps.
    assert!(report.contains("## Weight refresh"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("| NPD | 12 |") && l.contains("overlapped")),
        "{report}"
    );
    // Every step of the budget is in the metrics once the run finished
    // (steps redone after the checkpoint appear again, with the same
    // numbers).
    let after: BTreeSet<u64> = steps(&out)
        .iter()
        .filter_map(|s| s["step"].as_u64())
        .collect();
    assert_eq!(after, (1..=STEPS).collect::<BTreeSet<u64>>());
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let npd = &json["outcomes"][0];
    assert_eq!(npd["schedule"], "disaggregated");
    assert!(
        npd["stages"]["generator busy"].as_f64() > Some(0.0),
        "the student server's busy time is recorded: {npd}"
    );
    assert!(
        npd["stages"]["generator reload"].as_f64() > Some(0.0)
            && npd["stages"]["generator reload"].as_f64()
                < npd["stages"]["generator busy"].as_f64(),
        "reloads are part of the server's busy time: {npd}"
    );
    assert_eq!(npd["refreshes"], STEPS / 2, "{npd}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(out.with_extension("toml"));
    let _ = std::fs::remove_dir_all(&cache);
}
