//! Preparing the embedded default: prompts, tokenizer, a trained teacher and
//! a warm-started student, cached in a folder so later runs reuse them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use npd_train::tch::{Device, Kind};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use npd_core::config::{LossKind, TrainConfig};
use npd_core::traits::Learner;
use npd_core::{PromptId, Result, SampleId, TokenId, TrainSample};
use npd_pack::{PackOptions, pack_pool};

use crate::embedded::task::{self, Problem};
use crate::embedded::{self as emb};
use npd_train::checkpoint::save_pretrained;
use npd_train::config::ModelConfig;
use npd_train::data::{Example, PromptRecord, write_records};
use npd_train::eval::accuracy;
use npd_train::generator::Weights;
use npd_train::model::Llama;
use npd_train::tokenizer::Tokenizer;
use npd_train::train::{TrainOptions, Trainer};

/// Sizes and budgets of the embedded default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Teacher `(hidden, layers, heads, kv heads)`.
    pub teacher: (usize, usize, usize, usize),
    /// Student `(hidden, layers, heads, kv heads)`.
    pub student: (usize, usize, usize, usize),
    /// Most teacher training steps. The teacher trains on a stream of
    /// fresh problems (none of them held out); the warm start cycles
    /// through the training prompts.
    pub teacher_steps: u64,
    /// Teacher training stops once accuracy on a 128-prompt held-out probe
    /// reaches this plus a margin of 0.02 (checked every 100 steps).
    pub teacher_target: f64,
    /// Peak learning rate of the teacher (AdamW, cosine decay to a tenth).
    pub teacher_lr: f64,
    /// Student warm-start steps (cross-entropy on reference responses).
    pub warm_start_steps: u64,
    /// Peak learning rate of the warm start.
    pub warm_start_lr: f64,
    /// Samples per training step.
    pub batch: usize,
    /// Training prompts.
    pub train_prompts: usize,
    /// Held-out prompts.
    pub eval_prompts: usize,
    /// Fraction of teacher training examples that show a wrong intermediate
    /// value, then `!` and the correct value (the wrong value is masked out
    /// of the loss), so the teacher learns to repair a wrong prefix.
    pub repair_fraction: f64,
    /// Seed of data and initialisation.
    pub seed: u64,
}

impl Setup {
    /// The same model widths with attention heads of `head_dim` (vLLM's CPU
    /// attention supports 32, 64, 80, 96, 112, 128 and more, not the
    /// default's 16 and 24), half as many key-value heads (one when the
    /// head count is odd).
    pub fn with_head_dim(mut self, head_dim: usize) -> Self {
        let heads = |(hidden, layers, _, _): (usize, usize, usize, usize)| {
            let h = (hidden / head_dim).max(1);
            let kv = if h.is_multiple_of(2) { h / 2 } else { 1 };
            (hidden, layers, h, kv)
        };
        self.teacher = heads(self.teacher);
        self.student = heads(self.student);
        self
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            teacher: (96, 3, 4, 2),
            student: (64, 2, 4, 2),
            teacher_steps: 2000,
            teacher_target: 0.95,
            teacher_lr: 3e-3,
            warm_start_steps: 1500,
            warm_start_lr: 2e-3,
            batch: 64,
            train_prompts: 4000,
            eval_prompts: 500,
            repair_fraction: 0.15,
            seed: 0,
        }
    }
}

/// The prepared assets.
pub struct Prepared {
    /// Folder holding them.
    pub dir: PathBuf,
    /// The task tokenizer.
    pub tokenizer: Tokenizer,
    /// The teacher.
    pub teacher: Llama,
    /// Its held-out accuracy.
    pub teacher_accuracy: f64,
    /// The student's architecture.
    pub student: ModelConfig,
    /// The warm-started student's weights.
    pub warm_start: Weights,
    /// Its held-out accuracy.
    pub warm_start_accuracy: f64,
    /// Training prompts.
    pub train: Vec<Example>,
    /// Held-out prompts.
    pub eval: Vec<Example>,
    /// What this call trained: `(stage, steps, seconds)` for the teacher
    /// and the warm start, each only when it was not loaded from the cache.
    /// Seconds include saving and the held-out evaluation.
    pub trained: Vec<(&'static str, u64, f64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    setup: Setup,
    teacher_accuracy: f64,
    teacher_steps: u64,
    warm_start_accuracy: f64,
}

/// Progress callback: `(stage, done, total)`; an error (for example
/// [`npd_core::Error::Interrupted`]) stops the preparation after that step.
pub type Progress<'a> = dyn FnMut(&str, u64, u64) -> Result<()> + 'a;

fn prompt_ids(tok: &Tokenizer, p: &Problem) -> Result<Vec<TokenId>> {
    let mut ids = vec![emb::BOS_ID];
    ids.extend(tok.encode(&p.prompt())?);
    Ok(ids)
}

/// A training sample of the reference response; with `repair`, step
/// `repair.0` first shows the wrong value `repair.1` and `!`, the wrong
/// digits weighted 0.
fn reference_sample(
    tok: &Tokenizer,
    id: u64,
    p: &Problem,
    repair: Option<(usize, u32)>,
) -> Result<TrainSample> {
    let prompt = prompt_ids(tok, p)?;
    let values = p.values();
    let mut text = String::new();
    let mut masked = Vec::new();
    for (i, ((op, d), v)) in p.ops.iter().zip(&values).enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push(*op);
        text.push(char::from_digit(*d, 10).expect("a digit"));
        if let Some((_, wrong)) = repair.filter(|r| r.0 == i) {
            let start = text.chars().count();
            text.push_str(&format!("{wrong:02}"));
            masked.extend([start, start + 1]);
            text.push('!');
        }
        text.push_str(&format!("{v:02}"));
    }
    text.push_str(&format!("#{:02}", p.answer()));
    let mut response = tok.encode(&text)?;
    response.push(emb::EOS_ID);
    let mut weights = vec![1.0f32; response.len()];
    for m in masked {
        weights[m] = 0.0;
    }
    let mut tokens = prompt.clone();
    tokens.extend(response);
    Ok(TrainSample {
        id: SampleId(id),
        tokens,
        prompt_len: prompt.len(),
        weights: Some(weights),
        topk: None,
    })
}

/// Final-answer extraction for the embedded task.
pub fn answer_fn(tok: &Tokenizer) -> impl Fn(&[TokenId]) -> Option<String> + Sync + '_ {
    move |ids: &[TokenId]| {
        let text = tok.decode(ids, true).ok()?;
        task::final_answer(&text).map(|a| format!("{a:02}"))
    }
}

/// One training phase on reference responses.
struct Phase<'a> {
    stage: &'a str,
    steps: u64,
    lr: f64,
    repair: f64,
    /// Train on a stream of fresh problems (none of them held out) instead
    /// of cycling through the training prompts.
    fresh: Option<&'a HashSet<String>>,
}

/// Trains on reference responses until `until` says stop or the steps run
/// out; returns the model and the steps taken.
fn train_on_references(
    model: Llama,
    setup: &Setup,
    data: (&[Problem], &Tokenizer),
    phase: Phase<'_>,
    mut until: impl FnMut(&Llama, u64) -> Result<bool>,
    progress: &mut Progress<'_>,
) -> Result<(Llama, u64)> {
    let (problems, tok) = data;
    let Phase {
        stage,
        steps,
        lr,
        repair,
        fresh,
    } = phase;
    let mut options = TrainOptions::from_config(&TrainConfig {
        loss: LossKind::Ce,
        lr,
        min_lr: lr / 10.0,
        warmup_steps: 50.min(steps / 10),
        steps,
        weight_decay: 0.01,
        ..Default::default()
    });
    options.micro_batch_rows = usize::MAX;
    let mut trainer = Trainer::new(model, options);
    let mut rng = StdRng::seed_from_u64(setup.seed ^ 0x5eed);
    let mut stream = StdRng::seed_from_u64(setup.seed ^ 0xf7e5);
    let mut done = 0;
    for step in 0..steps {
        let batch: Vec<Problem> = (0..setup.batch)
            .map(|j| match fresh {
                Some(held_out) => loop {
                    let p = Problem::random(&mut stream);
                    if !held_out.contains(&p.prompt()) {
                        break p;
                    }
                },
                None => problems[(step as usize * setup.batch + j) % problems.len()].clone(),
            })
            .collect();
        let samples = batch
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let r = step as usize * setup.batch + j;
                let fix = (rng.random::<f64>() < repair).then(|| {
                    let at = rng.random_range(0..p.ops.len());
                    let right = p.values()[at];
                    (
                        at,
                        (right + rng.random_range(1..task::MODULUS)) % task::MODULUS,
                    )
                });
                reference_sample(tok, r as u64, p, fix)
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = pack_pool(samples, &PackOptions::new(512))?;
        trainer.step(&rows)?;
        done = step + 1;
        progress(stage, done, steps)?;
        if until(trainer.model(), done)? {
            break;
        }
    }
    Ok((trainer.into_model(), done))
}

/// Prepares (or loads from `dir`) the embedded default.
pub fn prepare(dir: &Path, setup: &Setup, progress: &mut Progress<'_>) -> Result<Prepared> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| npd_core::Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tok = emb::tokenizer()?;
    let problems = task::problems(setup.train_prompts + setup.eval_prompts, setup.seed);
    let (train_p, eval_p) = problems.split_at(setup.train_prompts);
    let to_examples = |ps: &[Problem], offset: u64| -> Result<Vec<Example>> {
        ps.iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(Example {
                    id: PromptId(offset + i as u64),
                    prompt: prompt_ids(&tok, p)?,
                    answer: Some(format!("{:02}", p.answer())),
                })
            })
            .collect()
    };
    let train = to_examples(train_p, 0)?;
    let eval = to_examples(eval_p, setup.train_prompts as u64)?;
    let held_out: HashSet<String> = eval_p.iter().map(Problem::prompt).collect();
    let answer = answer_fn(&tok);
    let stop = [emb::EOS_ID];
    let acc = |m: &Llama| accuracy(m, &eval, &answer, 48, &stop);
    // Early stopping looks at a slice of the held-out set; reported
    // accuracies use all of it.
    let probe = &eval[..eval.len().min(128)];
    let quick_acc = |m: &Llama| accuracy(m, probe, &answer, 48, &stop);

    let meta_path = dir.join("meta.json");
    let old: Option<Meta> = std::fs::read_to_string(&meta_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    // The teacher depends on everything but the student's shape and
    // warm-start budget, so changing those keeps the cached teacher.
    let teacher_part = |s: &Setup| Setup {
        student: (0, 0, 0, 0),
        warm_start_steps: 0,
        warm_start_lr: 0.0,
        ..s.clone()
    };
    let same_teacher = old
        .as_ref()
        .is_some_and(|m| teacher_part(&m.setup) == teacher_part(setup));
    let same_warm = same_teacher && old.as_ref().is_some_and(|m| m.setup == *setup);
    if !same_warm {
        // Whatever is retrained below, the folder is incomplete until the
        // new meta.json is written.
        let _ = std::fs::remove_file(&meta_path);
    }
    let mut trained = Vec::new();
    let clock = Instant::now();
    let (teacher, teacher_accuracy, teacher_steps) = match (&old, same_teacher) {
        (Some(m), true) => (
            Llama::load(&dir.join("teacher"), Device::Cpu, Kind::Float)?,
            m.teacher_accuracy,
            m.teacher_steps,
        ),
        _ => {
            let records = |ps: &[Problem], offset: u64| -> Vec<PromptRecord> {
                ps.iter()
                    .enumerate()
                    .map(|(i, p)| PromptRecord {
                        id: Some(offset + i as u64),
                        prompt: Some(p.prompt()),
                        messages: None,
                        answer: Some(format!("{:02}", p.answer())),
                        response: Some(p.response()),
                    })
                    .collect()
            };
            write_records(&dir.join("prompts-train.jsonl"), &records(train_p, 0))?;
            write_records(
                &dir.join("prompts-eval.jsonl"),
                &records(eval_p, setup.train_prompts as u64),
            )?;
            tok.save(&dir.join("tokenizer.json"))?;
            let (h, l, nh, kv) = setup.teacher;
            let mut teacher = Llama::new(emb::model_config(h, l, nh, kv), Device::Cpu);
            teacher.init_random(setup.seed, 0.02);
            let phase = Phase {
                stage: "teacher",
                steps: setup.teacher_steps,
                lr: setup.teacher_lr,
                repair: setup.repair_fraction,
                fresh: Some(&held_out),
            };
            let (teacher, steps) = train_on_references(
                teacher,
                setup,
                (train_p, &tok),
                phase,
                |m, step| {
                    if step % 100 == 0 && step < setup.teacher_steps {
                        return Ok(quick_acc(m)? >= setup.teacher_target + 0.02);
                    }
                    Ok(false)
                },
                progress,
            )?;
            save_pretrained(&teacher, &dir.join("teacher"), None, usize::MAX)?;
            tok.save(&dir.join("teacher").join("tokenizer.json"))?;
            let a = acc(&teacher)?;
            trained.push(("teacher", steps, clock.elapsed().as_secs_f64()));
            (teacher, a, steps)
        }
    };
    let clock = Instant::now();
    let (warm, warm_start_accuracy) = match (&old, same_warm) {
        (Some(m), true) => (
            Llama::load(&dir.join("student-warm-start"), Device::Cpu, Kind::Float)?,
            m.warm_start_accuracy,
        ),
        _ => {
            let (h, l, nh, kv) = setup.student;
            let mut student = Llama::new(emb::model_config(h, l, nh, kv), Device::Cpu);
            student.init_random(setup.seed + 1, 0.02);
            let phase = Phase {
                stage: "student warm start",
                steps: setup.warm_start_steps,
                lr: setup.warm_start_lr,
                repair: 0.0,
                fresh: None,
            };
            let (warm, _) = train_on_references(
                student,
                setup,
                (train_p, &tok),
                phase,
                |_, _| Ok(false),
                progress,
            )?;
            save_pretrained(&warm, &dir.join("student-warm-start"), None, usize::MAX)?;
            tok.save(&dir.join("student-warm-start").join("tokenizer.json"))?;
            let a = acc(&warm)?;
            let seconds = clock.elapsed().as_secs_f64();
            trained.push(("student warm start", setup.warm_start_steps, seconds));
            (warm, a)
        }
    };
    let meta = Meta {
        setup: setup.clone(),
        teacher_accuracy,
        teacher_steps,
        warm_start_accuracy,
    };
    if !same_warm {
        // Written last: it marks the folder's contents complete.
        npd_core::fs::write_atomic(
            &meta_path,
            serde_json::to_string_pretty(&meta)
                .expect("serialisable")
                .as_bytes(),
        )?;
    }
    let student = warm.config().clone();
    let warm_start = warm.named_parameters();
    drop(answer);
    Ok(Prepared {
        dir: dir.to_path_buf(),
        tokenizer: tok,
        teacher,
        teacher_accuracy: meta.teacher_accuracy,
        student,
        warm_start,
        warm_start_accuracy: meta.warm_start_accuracy,
        train,
        eval,
        trained,
    })
}
