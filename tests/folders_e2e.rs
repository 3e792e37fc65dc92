//! End to end with model folders: the distill_openpangu example as a real
//! process, configured by TOML with a teacher and a student in the exact
//! openPangu layout (openPangu config keys, bf16 safetensors, the teacher
//! sharded with an index, a SentencePiece `tokenizer.model`, openPangu's
//! chat format) and a prompts JSONL file; tiny and random, so the run takes
//! seconds. Bad inputs fail before any work with the file, line or field.

mod common;

use common::{copy_tree, example, model_folder, pangu_config, scratch, spm_model};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use npd_train::Llama;
use npd_train::tch::{Device, Kind};
use npd_train::tokenizer::Tokenizer;
use serde_json::{Value, json};

fn prompts(path: &Path, with_bad_line: bool) {
    let mut text = String::new();
    for i in 0..40 {
        let (a, b) = (i % 9 + 1, i % 7 + 2);
        let rec = json!({"id": 100 + i,
            "messages": [{"role": "user", "content": format!("{a}+{b}=")}],
            "answer": (a + b).to_string()});
        text.push_str(&format!("{rec}\n"));
    }
    // Longer than data.max_prompt_tokens: rejected and counted.
    let long = "7+".repeat(200);
    text.push_str(&format!(
        "{}\n",
        json!({"id": 999, "prompt": long, "answer": "0"})
    ));
    if with_bad_line {
        text.push_str("{\"prompt\": 3}\n");
    }
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path, teacher: &Path, student: &Path, prompts: &Path, out: &Path) -> PathBuf {
    let path = dir.join("run.toml");
    let text = format!(
        r#"
[model]
teacher = "{}"
student = "{}"
device = "cpu"
dtype = "f32"

[data]
prompts = "{}"
max_prompt_tokens = 64
eval_fraction = 0.2

[sampling]
max_new_tokens = 8

[train]
steps = 4
rows_per_step = 8
micro_batch_rows = 8
lr = 1e-3

[rollout]
batch_size = 8
refresh_every = 2

[pack]
capacity = 128

[output]
dir = "{}"
checkpoint_every = 2
"#,
        teacher.display(),
        student.display(),
        prompts.display(),
        out.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run(config: &Path) -> Output {
    Command::new(example())
        .args(["--seeds", "1", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn openpangu_layout_folders_run_end_to_end() {
    let dir = scratch("ok");
    std::fs::create_dir_all(&dir).unwrap();
    let tok = Tokenizer::from_sentencepiece_file(&spm_model()).unwrap();
    let vocab = tok.vocab_size();
    let eos = tok.token_id("[unused10]").expect("turn end marker");
    let (teacher, student) = (dir.join("teacher"), dir.join("student"));
    // The teacher untied and sharded (like 7B), the student tied (like 1B).
    model_folder(&teacher, &pangu_config(vocab, 64, 2, eos, false), 1, 40_000);
    model_folder(
        &student,
        &pangu_config(vocab, 32, 1, eos, true),
        2,
        usize::MAX,
    );
    assert!(teacher.join("model.safetensors.index.json").exists());
    let data = dir.join("prompts.jsonl");
    prompts(&data, false);
    let out = dir.join("out");
    let cfg = config(&dir, &teacher, &student, &data, &out);
    // The teacher sees its prompts with openPangu's fast-answer suffix;
    // raw prompt texts become user turns.
    let toml = std::fs::read_to_string(&cfg).unwrap().replace(
        "eval_fraction = 0.2",
        "eval_fraction = 0.2\nprompt_format = \"chat\"\nteacher_suffix = \" /no_think\"",
    );
    std::fs::write(&cfg, toml).unwrap();

    let done = run(&cfg);
    assert!(done.status.success(), "{}", text(&done));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    let npd = outcomes
        .iter()
        .find(|o| o["method"] == "near-policy")
        .unwrap();
    assert_eq!(npd["ledger"]["rejected"], 1, "the over-long prompt");
    let setup = report["setup"].to_string();
    assert!(
        setup.contains("PanguEmbedded") && setup.contains("1 rejected"),
        "{setup}"
    );
    assert!(
        setup.contains(r#"the student sees them as written, the teacher suffix \" /no_think\""#),
        "{setup}"
    );
    // SFT's teacher-written responses are kept for a resume.
    assert!(out.join("checkpoints/sft-responses.json").is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps = metrics.lines().filter(|l| l.contains(r#""event":"step""#));
    assert_eq!(steps.count(), 3 * 4);

    // The student's checkpoints keep its openPangu config and load again.
    let last = out.join("checkpoints/npd-seed0/step-00000004/model");
    let cfg_json = std::fs::read_to_string(last.join("config.json")).unwrap();
    assert!(cfg_json.contains("PanguEmbedded") && cfg_json.contains("\"bias\""));
    // ... and the student folder's tokenizer, so they load on their own.
    assert!(last.join("tokenizer.model").is_file());
    let back = Llama::load(&last, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(back.config().eos_token_ids, vec![eos]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plan_measures_each_method_and_writes_nothing() {
    let dir = scratch("plan");
    std::fs::create_dir_all(&dir).unwrap();
    let tok = Tokenizer::from_sentencepiece_file(&spm_model()).unwrap();
    let (vocab, eos) = (tok.vocab_size(), tok.token_id("[unused10]").unwrap());
    let (teacher, student) = (dir.join("teacher"), dir.join("student"));
    model_folder(
        &teacher,
        &pangu_config(vocab, 32, 1, eos, false),
        1,
        usize::MAX,
    );
    model_folder(
        &student,
        &pangu_config(vocab, 32, 1, eos, true),
        2,
        usize::MAX,
    );
    let data = dir.join("prompts.jsonl");
    prompts(&data, false);
    let out = dir.join("out");
    let cfg = config(&dir, &teacher, &student, &data, &out);
    let planned = Command::new(example())
        .args([
            "--seeds",
            "2",
            "--methods",
            "sft,npd,npd+rl",
            "--plan",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&planned.stdout).to_string();
    assert!(planned.status.success(), "{}", text(&planned));
    assert!(!out.exists(), "a plan writes no output folder");
    for want in [
        "# Plan",
        "32 training prompts",
        "| SFT | 4 | 32 |",
        "| NPD | 4 | 32 |",
        "| NPD+RL (RL stage) |",
        "ETA of the whole run: about",
        "memory plan on cpu",
    ] {
        assert!(shown.contains(want), "{want:?} missing from:\n{shown}");
    }
    eprintln!("{shown}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_folders_and_prompts_fail_before_any_work() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let tok = Tokenizer::from_sentencepiece_file(&spm_model()).unwrap();
    let vocab = tok.vocab_size();
    let eos = tok.token_id("[unused10]").unwrap();
    let (teacher, student) = (dir.join("teacher"), dir.join("student"));
    model_folder(
        &teacher,
        &pangu_config(vocab, 32, 1, eos, true),
        1,
        usize::MAX,
    );
    // A student whose end-of-sequence id differs from the teacher's.
    model_folder(
        &student,
        &pangu_config(vocab, 32, 1, 2, true),
        2,
        usize::MAX,
    );
    let data = dir.join("prompts.jsonl");
    prompts(&data, false);
    let out = dir.join("out");
    let failed = run(&config(&dir, &teacher, &student, &data, &out));
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(
        text(&failed).contains("eos_token_id") && text(&failed).contains("teacher"),
        "{}",
        text(&failed)
    );
    assert!(!out.join("metrics.jsonl").exists(), "no work was done");

    // A malformed prompts line is named with file and line.
    model_folder(
        &student,
        &pangu_config(vocab, 32, 1, eos, true),
        2,
        usize::MAX,
    );
    prompts(&data, true);
    let failed = run(&config(&dir, &teacher, &student, &data, &out));
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(
        text(&failed).contains(&format!("{}:42", data.display())),
        "{}",
        text(&failed)
    );
    // Sizes that only the models and prompts can check fail before the
    // first method runs, not when NPD starts.
    prompts(&data, false);
    let good = config(&dir, &teacher, &student, &data, &out);
    let text_of = std::fs::read_to_string(&good).unwrap();
    for (from, to, key) in [
        ("capacity = 128", "capacity = 16", "pack.capacity = 16"),
        (
            "lr = 1e-3",
            "lr = 1e-3\ntop_k = 100000",
            "train.top_k = 100000",
        ),
    ] {
        std::fs::write(&good, text_of.replace(from, to)).unwrap();
        let failed = run(&good);
        assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
        assert!(text(&failed).contains(key), "{}", text(&failed));
        assert!(!out.join("metrics.jsonl").exists(), "no work was done");
    }
    std::fs::write(&good, &text_of).unwrap();
    // One record cannot be both trained on and held out.
    let one = dir.join("one.jsonl");
    std::fs::write(&one, "{\"prompt\": \"1+2=\", \"answer\": \"3\"}\n").unwrap();
    let failed = run(&config(&dir, &teacher, &student, &one, &out));
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(
        text(&failed).contains("1 usable prompt record") && text(&failed).contains("at least 2"),
        "{}",
        text(&failed)
    );
    // An empty prompt is named with its line and id (this tokenizer has a
    // BOS, so the prompt would not be empty as tokens).
    let empty = dir.join("empty.jsonl");
    let mut records = std::fs::read_to_string(&data).unwrap();
    records.push_str("{\"id\": 500, \"prompt\": \"\", \"answer\": \"0\"}\n");
    std::fs::write(&empty, records).unwrap();
    let failed = run(&config(&dir, &teacher, &student, &empty, &out));
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(
        text(&failed).contains(&format!("{}: line 42 (id 500)", empty.display())),
        "{}",
        text(&failed)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dataset as users have it: parquet files written by pyarrow with
/// their own column names (`uid`, `question`, `solution` ending in
/// `#### n`, and a column npd does not read), a separate evaluation file,
/// and SFT on the dataset's own reference solutions. The run then moves
/// to another folder (another machine, as far as paths go) and resumes
/// there: the same files at other paths are accepted and the report says
/// what changed; other content at those paths is refused.
#[test]
fn a_parquet_dataset_with_its_own_columns_runs_and_resumes_elsewhere() {
    let dir = scratch("dataset");
    let here = dir.join("first");
    std::fs::create_dir_all(here.join("data")).unwrap();
    let tok = Tokenizer::from_sentencepiece_file(&spm_model()).unwrap();
    let (vocab, eos) = (tok.vocab_size(), tok.token_id("[unused10]").unwrap());
    let (teacher, student) = (here.join("teacher"), here.join("student"));
    model_folder(
        &teacher,
        &pangu_config(vocab, 32, 1, eos, true),
        1,
        usize::MAX,
    );
    model_folder(
        &student,
        &pangu_config(vocab, 32, 1, eos, true),
        2,
        usize::MAX,
    );
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/npd-train/tests/fixtures/prompts");
    for f in ["sums-train.parquet", "sums-test.parquet"] {
        std::fs::copy(fixtures.join(f), here.join("data").join(f)).unwrap();
    }
    let write_config = |root: &Path| {
        let (train, eval) = (
            root.join("data/sums-train.parquet"),
            root.join("data/sums-test.parquet"),
        );
        let path = config(
            root,
            &root.join("teacher"),
            &root.join("student"),
            &train,
            &root.join("out"),
        );
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "eval_fraction = 0.2",
            &format!(
                "eval = \"{}\"\nfields = {{ id = \"uid\", prompt = \"question\", answer = \"solution\", response = \"solution\" }}\nsft_targets = \"references\"",
                eval.display()
            ),
        );
        // Both kept checkpoints resumable: the move below loses the latest.
        let text = text.replace(
            "checkpoint_every = 2",
            "checkpoint_every = 2\noptimizer_in_every_checkpoint = true",
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let launch = |cfg: &Path, resume: bool| {
        let mut c = Command::new(example());
        c.args(["--seeds", "1", "--methods", "sft,npd", "--config"])
            .arg(cfg);
        if resume {
            c.arg("--resume");
        }
        c.output().unwrap()
    };
    let done = launch(&write_config(&here), false);
    assert!(done.status.success(), "{}", text(&done));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(here.join("out/report.json")).unwrap())
            .unwrap();
    let setup = report["setup"].to_string();
    assert!(
        setup.contains("40 training, 12 held out from")
            && setup.contains("SFT trains on the dataset's reference responses"),
        "{setup}"
    );
    let sft = &report["outcomes"][0];
    assert_eq!(sft["method"], "sft");
    // SFT trained on the references: none was written by the teacher.
    assert_eq!(sft["prep_reused"], true, "{sft}");

    // The whole folder moves; NPD's last checkpoint is lost, as if the
    // run had been stopped after step 2.
    let there = dir.join("second");
    copy_tree(&here, &there);
    let npd = there.join("out/checkpoints/npd-seed0");
    std::fs::remove_file(npd.join("outcome.json")).unwrap();
    std::fs::remove_dir_all(npd.join("step-00000004")).unwrap();
    let _ = std::fs::remove_dir_all(&here);
    let cfg = write_config(&there);
    let resumed = launch(&cfg, true);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let md = std::fs::read_to_string(there.join("out/report.md")).unwrap();
    assert!(
        md.contains("resume 1: changed ")
            && md.contains("model.teacher")
            && md.contains("data.eval")
            && md.contains("(was "),
        "{md}"
    );
    let metrics = std::fs::read_to_string(there.join("out/metrics.jsonl")).unwrap();
    let npd_steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "step" && e["method"] == "NPD")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(npd_steps, vec![1, 2, 3, 4], "each step once");

    // Other content at the same path is another dataset.
    std::fs::copy(
        fixtures.join("sums-test.parquet"),
        there.join("data/sums-train.parquet"),
    )
    .unwrap();
    let refused = launch(&cfg, true);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("data.prompts")
            && text(&refused).contains("does not hold the files"),
        "{}",
        text(&refused)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
