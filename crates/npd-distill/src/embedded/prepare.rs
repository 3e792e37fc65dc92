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

use crate::embedded::config::WarmStart;
use crate::embedded::plateau::{Plateau, validation_loss};
pub use crate::embedded::setup::{PlateauRule, Setup, quick_keys};
use crate::embedded::setup::{TeacherKey, hash};
use crate::embedded::task::{self, Problem, TaskSpec};
use crate::embedded::{self as emb};
use npd_train::checkpoint::save_pretrained;
use npd_train::config::ModelConfig;
use npd_train::data::{Example, PromptRecord, write_records};
use npd_train::eval::{EVAL_BATCH, accuracy};
use npd_train::generator::Weights;
use npd_train::model::Llama;
use npd_train::tokenizer::Tokenizer;
use npd_train::train::{TrainOptions, Trainer};

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
    /// How its warm start went, when known.
    pub warm_start_record: Option<WarmStartRecord>,
    /// Steps the teacher trained.
    pub teacher_steps: u64,
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
struct TeacherMeta {
    teacher: TeacherKey,
    accuracy: f64,
    steps: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WarmMeta {
    setup: Setup,
    accuracy: f64,
    warm_start: WarmStartRecord,
}

/// How the warm start went: steps taken and the validation checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmStartRecord {
    /// Steps taken.
    pub steps: u64,
    /// `(step, validation loss in nats per response token)` of each
    /// plateau check (empty for a fixed number of steps).
    pub validation: Vec<(u64, f64)>,
    /// The plateau rule stopped it (rather than the step limit).
    pub plateaued: bool,
}

/// Progress callback: `(stage, done, total)`; an error (for example
/// [`npd_core::Error::Interrupted`]) stops the preparation after that step.
pub type Progress<'a> = dyn FnMut(&str, u64, u64) -> Result<()> + 'a;

fn prompt_ids(tok: &Tokenizer, spec: &TaskSpec, p: &Problem) -> Result<Vec<TokenId>> {
    let mut ids = vec![emb::BOS_ID];
    ids.extend(tok.encode(&spec.prompt(p))?);
    Ok(ids)
}

/// A training sample answering `prompt` with the steps in `p`'s order (a
/// reordering of `prompt`'s steps for [`TaskKind::Orders`]); with
/// `repair`, step `repair.0` first shows the wrong value `repair.1` and
/// `!`, the wrong digits weighted 0.
fn reference_sample(
    tok: &Tokenizer,
    id: u64,
    prompt: Vec<TokenId>,
    p: &Problem,
    repair: Option<(usize, u32)>,
) -> Result<TrainSample> {
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
        policy: None,
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
    let spec = setup.task_spec();
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
                    let p = spec.random(&mut stream);
                    if !held_out.contains(&spec.prompt(&p)) {
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
                    (at, rng.random_range(1..task::MODULUS))
                });
                let prompt = prompt_ids(tok, &spec, p)?;
                let ordered = spec.reference_order(p, &mut rng);
                // The wrong value is off the right one of the order taken.
                let fix = fix.map(|(at, off)| (at, (ordered.values()[at] + off) % task::MODULUS));
                reference_sample(tok, r as u64, prompt, &ordered, fix)
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

/// A stable 64-bit hash (FNV-1a) of a value's JSON.
fn read_meta<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

fn write_meta<T: Serialize>(path: &Path, meta: &T) -> Result<()> {
    // Written last: it marks the folder's contents complete.
    npd_core::fs::write_atomic(
        path,
        serde_json::to_string_pretty(meta)
            .expect("serialisable")
            .as_bytes(),
    )
}

/// Prepares (or loads from `dir`, see [`Setup::cache_name`]) the embedded
/// default: the teacher in `teacher/` (complete once `teacher.json` is
/// written), the warm start in `warm-start-<hash>/` (complete once
/// `warm-start-<hash>.json` is written).
pub fn prepare(dir: &Path, setup: &Setup, progress: &mut Progress<'_>) -> Result<Prepared> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| npd_core::Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tok = emb::tokenizer()?;
    let spec = setup.task_spec();
    let problems = spec.problems(
        setup.train_prompts + setup.eval_prompts + setup.validation_prompts,
        setup.seed,
    );
    let (train_p, rest) = problems.split_at(setup.train_prompts);
    let (eval_p, validation_p) = rest.split_at(setup.eval_prompts);
    let to_examples = |ps: &[Problem], offset: u64| -> Result<Vec<Example>> {
        ps.iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(Example {
                    id: PromptId(offset + i as u64),
                    prompt: prompt_ids(&tok, &spec, p)?,
                    answer: Some(format!("{:02}", p.answer())),
                    response: None,
                })
            })
            .collect()
    };
    let train = to_examples(train_p, 0)?;
    let eval = to_examples(eval_p, setup.train_prompts as u64)?;
    // Validation: reference responses (in a seeded random order for
    // `orders`), scored teacher-forced by the plateau rule.
    let mut order = StdRng::seed_from_u64(setup.seed ^ 0x7a11);
    let short = |p: &&Problem| p.ops.len() <= setup.warm_start_max_ops;
    let warm_p: Vec<Problem> = train_p.iter().filter(short).cloned().collect();
    let validation = (validation_p.iter().filter(short).enumerate())
        .map(|(i, p)| {
            let prompt = prompt_ids(&tok, &spec, p)?;
            let ordered = spec.reference_order(p, &mut order);
            reference_sample(&tok, i as u64, prompt, &ordered, None)
        })
        .collect::<Result<Vec<_>>>()?;
    let held_out: HashSet<String> = eval_p.iter().map(|p| spec.prompt(p)).collect();
    let answer = answer_fn(&tok);
    let stop = [emb::EOS_ID];
    let budget = spec.response_budget();
    let acc = |m: &Llama, on: &[Example]| accuracy(m, (on, EVAL_BATCH), &answer, budget, &stop);
    // The teacher's early stop looks at a slice of the held-out set;
    // reported accuracies use all of it.
    let probe = &eval[..eval.len().min(128)];

    let teacher_meta = dir.join("teacher.json");
    let mut trained = Vec::new();
    let clock = Instant::now();
    let (teacher, teacher_accuracy, teacher_steps) = match read_meta::<TeacherMeta>(&teacher_meta)
        .filter(|m| m.teacher == TeacherKey::of(setup))
    {
        Some(m) => (
            Llama::load(&dir.join("teacher"), Device::Cpu, Kind::Float)?,
            m.accuracy,
            m.steps,
        ),
        None => {
            let records = |ps: &[Problem], offset: u64| -> Vec<PromptRecord> {
                ps.iter()
                    .enumerate()
                    .map(|(i, p)| PromptRecord {
                        id: Some(offset + i as u64),
                        prompt: Some(spec.prompt(p)),
                        messages: None,
                        answer: Some(format!("{:02}", p.answer())),
                        response: Some(p.response()),
                        line: None,
                        in_rows: false,
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
            let config = emb::model_config(h, l, nh, kv, setup.max_positions())?;
            let mut teacher = Llama::new(config, Device::Cpu);
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
                        return Ok(acc(m, probe)? >= setup.teacher_target + 0.02);
                    }
                    Ok(false)
                },
                progress,
            )?;
            save_pretrained(&teacher, &dir.join("teacher"), None, usize::MAX)?;
            tok.save(&dir.join("teacher").join("tokenizer.json"))?;
            let a = acc(&teacher, &eval)?;
            trained.push(("teacher", steps, clock.elapsed().as_secs_f64()));
            let meta = TeacherMeta {
                teacher: TeacherKey::of(setup),
                accuracy: a,
                steps,
            };
            write_meta(&teacher_meta, &meta)?;
            (teacher, a, steps)
        }
    };
    let clock = Instant::now();
    let warm_dir = dir.join(format!("warm-start-{}", hash(setup)));
    let warm_meta = dir.join(format!("warm-start-{}.json", hash(setup)));
    let (warm, warm_start_accuracy, record) =
        match read_meta::<WarmMeta>(&warm_meta).filter(|m| m.setup == *setup) {
            Some(m) => (
                Llama::load(&warm_dir, Device::Cpu, Kind::Float)?,
                m.accuracy,
                Some(m.warm_start),
            ),
            None => {
                let (h, l, nh, kv) = setup.student;
                let config = emb::model_config(h, l, nh, kv, setup.max_positions())?;
                let mut student = Llama::new(config, Device::Cpu);
                student.init_random(setup.seed + 1, 0.02);
                let phase = Phase {
                    stage: "student warm start",
                    steps: setup.warm_start_steps,
                    lr: setup.warm_start_lr,
                    repair: setup.warm_start_repair,
                    fresh: None,
                };
                let mut plateau = Plateau::new(setup.plateau);
                let (warm, steps) = train_on_references(
                    student,
                    setup,
                    (&warm_p, &tok),
                    phase,
                    |m, step| match setup.warm_start_stop {
                        WarmStart::Steps => Ok(false),
                        WarmStart::Plateau if step % setup.plateau.every == 0 => {
                            let loss = validation_loss(m, &validation)?;
                            tracing::info!(
                                "warm start step {step}: validation loss {loss:.4} nats per token"
                            );
                            Ok(plateau.check(step, loss))
                        }
                        WarmStart::Plateau => Ok(false),
                    },
                    progress,
                )?;
                save_pretrained(&warm, &warm_dir, None, usize::MAX)?;
                tok.save(&warm_dir.join("tokenizer.json"))?;
                let a = acc(&warm, &eval)?;
                let seconds = clock.elapsed().as_secs_f64();
                trained.push(("student warm start", steps, seconds));
                let record = WarmStartRecord {
                    steps,
                    plateaued: plateau.stopped,
                    validation: plateau.checks,
                };
                let meta = WarmMeta {
                    setup: setup.clone(),
                    accuracy: a,
                    warm_start: record.clone(),
                };
                write_meta(&warm_meta, &meta)?;
                (warm, a, Some(record))
            }
        };
    let student = warm.config().clone();
    let warm_start = warm.named_parameters();
    drop(answer);
    Ok(Prepared {
        dir: dir.to_path_buf(),
        tokenizer: tok,
        teacher,
        teacher_accuracy,
        teacher_steps,
        student,
        warm_start,
        warm_start_accuracy,
        warm_start_record: record,
        train,
        eval,
        trained,
    })
}
