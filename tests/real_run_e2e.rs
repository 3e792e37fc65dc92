//! A real run end to end, as a user with model folders, a dataset of their
//! own and vLLM servers has it: openPangu-layout teacher and student
//! folders (32-wide heads, what vLLM's CPU attention takes), a parquet
//! prompt file with its own column names and a separate evaluation file;
//! npd starts two student servers, a teacher server and an evaluation
//! server (the CPU build `./npd test` installs). The teacher's check, SFT's
//! responses and every held-out evaluation are served. One student server
//! is killed mid-run and the run goes on with the other; Ctrl-C stops it;
//! the folder is moved to another path and resumed there: SFT's saved
//! responses are reused, every NPD step is in the metrics once and the
//! ledger agrees.

mod common;

use common::{copy_tree, example, interrupt, model_folder, pangu_config, scratch, spm_model};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use npd_train::tokenizer::Tokenizer;
use serde_json::Value;

const STEPS: u64 = 8;

/// The run's configuration under `root` (models, data and output inside).
fn config(root: &Path) -> PathBuf {
    let path = root.join("run.toml");
    let text = format!(
        r#"
[model]
teacher = "{root}/teacher"
student = "{root}/student"
device = "cpu"
dtype = "f32"

[data]
prompts = "{root}/data/sums-train.parquet"
eval = "{root}/data/sums-test.parquet"
fields = {{ id = "uid", prompt = "question", answer = "solution" }}
prompt_format = "chat"
teacher_suffix = " /no_think"
max_prompt_tokens = 96

[sampling]
max_new_tokens = 8

[train]
steps = {STEPS}
rows_per_step = 8
micro_batch_rows = 8
lr = 1e-3

[rollout]
batch_size = 8
refresh_every = 2

[pack]
capacity = 128

[output]
dir = "{root}/out"
checkpoint_every = 2

[engine]
kind = "vllm"
student_servers = 2
eval_servers = 1
"#,
        root = root.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn launch(cfg: &Path, resume: bool) -> Command {
    let mut c = Command::new(example());
    c.args(["--seeds", "1", "--methods", "sft,npd", "--config"])
        .arg(cfg);
    if resume {
        c.arg("--resume");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn npd_steps(out: &Path) -> Vec<u64> {
    common::step_events(out)
        .iter()
        .filter(|e| e["method"] == "NPD")
        .filter_map(|e| e["step"].as_u64())
        .collect()
}

fn wait_for_npd_step(child: &mut Child, out: &Path, step: u64) {
    let start = Instant::now();
    while !npd_steps(out).iter().any(|&s| s >= step) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("the run ended ({status}) before NPD step {step}:\n{stderr}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "no NPD step {step} after 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids of the API processes serving `model` (the student servers
/// start from `student-start`, the evaluation server from `eval-start`).
fn servers_of(model: &Path) -> Vec<String> {
    let pattern = format!(
        "^[^ ]*python[^ ]* -m vllm.entrypoints.openai.api_server --model {} ",
        model.display()
    );
    let found = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&found.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_real_run_on_servers_survives_a_lost_server_and_resumes_elsewhere() {
    let dir = scratch("real-run");
    let here = dir.join("first");
    std::fs::create_dir_all(here.join("data")).unwrap();
    let tok = Tokenizer::from_sentencepiece_file(&spm_model()).unwrap();
    let (vocab, eos) = (tok.vocab_size(), tok.token_id("[unused10]").unwrap());
    // 128 wide with 4 heads: 32-wide heads.
    model_folder(
        &here.join("teacher"),
        &pangu_config(vocab, 128, 2, eos, false),
        1,
        usize::MAX,
    );
    model_folder(
        &here.join("student"),
        &pangu_config(vocab, 128, 1, eos, true),
        2,
        usize::MAX,
    );
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/npd-train/tests/fixtures/prompts");
    for f in ["sums-train.parquet", "sums-test.parquet"] {
        std::fs::copy(fixtures.join(f), here.join("data").join(f)).unwrap();
    }
    let out = here.join("out");
    let t0 = Instant::now();
    let mut child = launch(&config(&here), false).spawn().unwrap();
    wait_for_npd_step(&mut child, &out, 2);
    eprintln!("NPD step 2 after {:.0?}", t0.elapsed());
    let students = servers_of(&out.join("served/student-start"));
    assert_eq!(students.len(), 2, "two student servers: {students:?}");
    assert_eq!(servers_of(&out.join("served/eval-start")).len(), 1);
    let killed = Command::new("kill")
        .args(["-KILL", &students[0]])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for_npd_step(&mut child, &out, 5);
    interrupt(&child);
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("going on with 1 of 2"), "{stderr}");
    eprintln!("stopped after {:.0?}", t0.elapsed());
    let saved = out.join("checkpoints/sft-responses.json");
    assert!(saved.is_file(), "SFT's responses are saved");

    // The folder moves; SFT's outcome is dropped so that the resumed run
    // trains SFT again, from the saved responses.
    let there = dir.join("second");
    copy_tree(&here, &there);
    let _ = std::fs::remove_dir_all(&here);
    let out = there.join("out");
    std::fs::remove_dir_all(out.join("checkpoints/sft-seed0")).unwrap();
    let resumed = launch(&config(&there), true).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "resume failed:\n{stderr}");
    eprintln!("resumed run ended after {:.0?}", t0.elapsed());

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in [
        "resume 1: changed ",
        "teacher held-out accuracy measured on its server: ",
        "held-out evaluation on 1 server(s)",
        "(2 student, 1 teacher;",
        "weight refreshes verified by probe",
        " 0 failed",
        "the teacher suffix \" /no_think\"",
        "## Weight refresh",
    ] {
        assert!(md.contains(want), "{want:?} missing from:\n{md}");
    }
    assert!(
        md.contains(": agree") && !md.contains("DISAGREE"),
        "the ledger and the metrics agree:\n{md}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let sft = report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["method"] == "sft")
        .unwrap();
    assert_eq!(
        sft["prep_reused"], true,
        "SFT reused the saved responses: {sft}"
    );
    let mut steps = npd_steps(&out);
    steps.sort_unstable();
    steps.dedup();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}
