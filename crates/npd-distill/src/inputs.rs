//! What the methods run on: the embedded default (prepared and cached), or
//! the teacher and student folders and prompts file of a configuration.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use npd_core::{PromptId, TokenId};
use npd_train::ModelConfig;
use npd_train::data::{Example, Rejected, read_prompts, seeded_shuffle, tokenize_styled};
use npd_train::device::{kind_of, parse_device};
use npd_train::eval::accuracy_with_progress;
use npd_train::folder::{
    ModelFolder, check_same_tokenizer, companion_files, final_answer, graded_text,
};
use npd_train::generator::Weights;
use npd_train::model::Llama;
use npd_train::models_config::SftTargets;
use npd_train::stages::check_compatible;
use npd_train::tch::Device;
use npd_train::tokenizer::Tokenizer;

use crate::RunConfig;
use crate::embedded::config::WarmStart;
use crate::embedded::prepare::{Setup, WarmStartRecord, answer_fn, prepare};
use crate::embedded::{self as emb};
use crate::progress::{Progress, Spinner};

/// Final-answer extraction, owning what it needs.
pub type Answer = Box<dyn Fn(&[TokenId]) -> Option<String> + Sync>;

/// Models, prompts and the few ids the methods need.
pub struct Inputs {
    /// The teacher.
    pub teacher: Llama,
    /// Its held-out accuracy.
    pub teacher_accuracy: f64,
    /// The warm start's held-out accuracy, when already measured.
    pub warm_start_accuracy: Option<f64>,
    /// The student's architecture.
    pub student: ModelConfig,
    /// The student folder's own config.json, for its checkpoints.
    pub student_config_json: Option<String>,
    /// Files the student's checkpoints carry beside config.json and the
    /// weights (tokenizer, `auto_map` modules).
    pub student_files: Vec<(String, Vec<u8>)>,
    /// The student's starting weights.
    pub warm_start: Weights,
    /// Training prompts.
    pub train: Vec<Example>,
    /// Held-out prompts with answers.
    pub eval: Vec<Example>,
    /// The held-out prompts as the teacher sees them (`eval` unless a
    /// teacher-only system turn or suffix changes them).
    pub teacher_eval: Vec<Example>,
    /// The teacher's own prompt tokens of each training prompt (in `train`'s
    /// order), when a teacher-only system turn or suffix makes them differ
    /// from the student's; `None`: the teacher sees the student's prompts.
    pub teacher_train: Option<Vec<Vec<TokenId>>>,
    /// SFT's targets from the dataset (`data.sft_targets = "references"`),
    /// one per training prompt, in order; `None`: the teacher writes them.
    pub sft_responses: Option<Vec<Vec<TokenId>>>,
    /// Records refused before the run, with the reason.
    pub rejected: Vec<(PromptId, String)>,
    /// Final-answer extraction.
    pub answer: Answer,
    /// Ids that end a response.
    pub stop_ids: Vec<TokenId>,
    /// What precedes a response in the response-alone pass.
    pub alone_prefix: Vec<TokenId>,
    /// Padding id.
    pub pad_id: TokenId,
    /// The trainer's tokenizer (written beside models served by vLLM, and
    /// compared with the servers' special tokens).
    pub tokenizer: Tokenizer,
    /// Lines describing the setup in the report.
    pub setup: Vec<String>,
}

/// The student folder's companion files for its checkpoints; a module
/// `auto_map` names that the folder lacks is warned about (checkpoints
/// would not load with `trust_remote_code` either).
fn student_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let files = companion_files(dir)?;
    for module in npd_train::folder::auto_map_modules(dir) {
        let file = format!("{module}.py");
        if !files.iter().any(|(n, _)| *n == file) {
            tracing::warn!(
                "{}: config.json's auto_map names {file}, which the folder lacks; the \
                 student's checkpoints will not load with trust_remote_code either",
                dir.display()
            );
        }
    }
    Ok(files)
}

/// A loss in nats: three decimals, or three significant digits below 0.01.
fn nats(loss: f64) -> String {
    if loss >= 0.01 {
        format!("{loss:.3}")
    } else {
        format!("{loss:.2e}")
    }
}

/// The report's line on how the embedded warm start stopped.
fn warm_start_line(setup: &Setup, record: Option<&WarmStartRecord>) -> String {
    let rule = setup.plateau;
    let data = if setup.warm_start_max_ops < setup.max_ops {
        format!(" on prompts of at most {} ops", setup.warm_start_max_ops)
    } else {
        String::new()
    };
    match (setup.warm_start_stop, record) {
        (WarmStart::Steps, _) => format!(
            "warm start: {} steps of cross-entropy on reference responses{} (a student trained part-way)",
            setup.warm_start_steps, data
        ),
        (WarmStart::Plateau, None) => "warm start: until the validation loss plateaus".into(),
        (WarmStart::Plateau, Some(r)) => {
            let (best_step, best) = (r.validation.iter())
                .copied()
                .fold((0, f64::INFINITY), |b, c| if c.1 < b.1 { c } else { b });
            let checks: Vec<String> = (r.validation.iter())
                .map(|(step, loss)| format!("{step}: {}", nats(*loss)))
                .collect();
            format!(
                "warm start: until the validation loss plateaus{data} (teacher-forced on the reference responses of {} validation prompts, checked every {} steps; stop after {} checks in a row lowering it by less than {}% of the best, after at least {} steps): {} after {} steps, lowest {} nats per token at step {best_step}; checks (step: loss) {}",
                setup.validation_prompts,
                rule.every,
                rule.patience,
                100.0 * rule.min_gain,
                rule.fewest_steps,
                if r.plateaued {
                    "plateaued"
                } else {
                    "hit the step limit"
                },
                r.steps,
                nats(best),
                checks.join(", ")
            )
        }
    }
}

/// The embedded default: the teacher and warm start prepared (or loaded
/// from `cache`) on the CPU with progress bars, then moved to `device`
/// (`model.device`) where the methods run; `stop` ends the preparation
/// after its current training step.
pub fn embedded(cache: &Path, setup: &Setup, device: &str, stop: &AtomicBool) -> Result<Inputs> {
    let device = parse_device(device)?;
    let mut current: Option<(String, Progress)> = None;
    let mut prepared = prepare(cache, setup, &mut |stage, done, total| {
        if stop.load(Ordering::SeqCst) {
            return Err(npd_core::Error::Interrupted {
                what: format!("training the embedded {stage} (step {done} of {total})"),
            });
        }
        if current.as_ref().is_none_or(|(s, _)| s != stage) {
            if let Some((_, b)) = current.take() {
                b.finish();
            }
            current = Some((stage.to_string(), Progress::new(stage, total, "steps")));
        }
        if let Some((_, b)) = &mut current {
            b.set(done);
        }
        Ok(())
    })
    .with_context(|| format!("preparing the embedded default in {}", cache.display()))?;
    if let Some((_, b)) = current.take() {
        b.finish();
    }
    // The warm start's weights stay on the host: the stages copy them into
    // a student built on the teacher's device.
    if device != Device::Cpu {
        prepared.teacher.set_device(device);
    }
    tracing::info!(
        "teacher {:.1}% held-out ({} parameters), warm-start student {:.1}% ({} parameters); cache {}",
        100.0 * prepared.teacher_accuracy,
        prepared.teacher.num_parameters(),
        100.0 * prepared.warm_start_accuracy,
        prepared
            .warm_start
            .iter()
            .map(|(_, t)| t.numel())
            .sum::<usize>(),
        prepared.dir.display()
    );
    let tokenizer = prepared.tokenizer.clone();
    let served_tokenizer = prepared.tokenizer.clone();
    let trained = if prepared.trained.is_empty() {
        "teacher and warm start loaded from the cache".to_string()
    } else {
        let parts: Vec<String> = prepared
            .trained
            .iter()
            .map(|(stage, steps, s)| format!("{stage} {steps} steps in {s:.0}s"))
            .collect();
        format!(
            "trained in this run (evaluation and saving included): {}",
            parts.join(", ")
        )
    };
    Ok(Inputs {
        setup: vec![
            format!(
                "task `{}`: {}, intermediate values written; {} training and {} held-out prompts",
                setup.task.name(),
                setup.task_spec().describe(),
                prepared.train.len(),
                prepared.eval.len()
            ),
            format!(
                "teacher {:?} and student {:?} (hidden, layers, heads, KV heads), openPangu layout; teacher ({} steps) and warm start cached in {}; {trained}",
                setup.teacher,
                setup.student,
                prepared.teacher_steps,
                prepared.dir.display()
            ),
            warm_start_line(setup, prepared.warm_start_record.as_ref()),
        ],
        teacher: prepared.teacher,
        teacher_accuracy: prepared.teacher_accuracy,
        warm_start_accuracy: Some(prepared.warm_start_accuracy),
        student: prepared.student,
        student_config_json: None,
        student_files: companion_files(&prepared.dir.join("teacher"))?,
        warm_start: prepared.warm_start,
        train: prepared.train,
        teacher_eval: prepared.eval.clone(),
        eval: prepared.eval,
        sft_responses: None,
        teacher_train: None,
        rejected: Vec::new(),
        answer: Box::new(move |ids: &[TokenId]| answer_fn(&tokenizer)(ids)),
        stop_ids: vec![emb::EOS_ID],
        alone_prefix: vec![emb::BOS_ID],
        pad_id: emb::PAD_ID,
        tokenizer: served_tokenizer,
    })
}

/// The teacher and student folders of `[model]` and the prompts file of
/// `[data]`: checked for one vocabulary before any work, prompts split
/// into training and held-out sets, over-long prompts rejected with a
/// reason, the teacher evaluated on the held-out set.
pub fn folders(config: &RunConfig) -> Result<Inputs> {
    let m = &config.model;
    if m.student.as_os_str().is_empty() {
        bail!("model.student: empty; name the student folder beside model.teacher");
    }
    if config.data.prompts.as_os_str().is_empty() {
        bail!("data.prompts: empty; real models need a prompts JSONL file (see docs/pipeline.md)");
    }
    let device = parse_device(&m.device)?;
    let teacher_device = parse_device(m.teacher_device())?;
    let kind = kind_of(m.dtype);
    let pb = Spinner::start(&format!("loading teacher {}", m.teacher.display()));
    let teacher = ModelFolder::load(&m.teacher, teacher_device, kind)?;
    pb.done();
    let pb = Spinner::start(&format!("loading student {}", m.student.display()));
    let student = ModelFolder::load(&m.student, device, kind)?;
    pb.done();
    check_compatible(teacher.model.config(), student.model.config())?;
    check_same_tokenizer(&teacher, &student)?;

    let d = &config.data;
    let fields = d.fields.as_ref();
    let teacher_styled = d.teacher_style() != d.student_style();
    // Each file's records as the student sees them, and as the teacher does
    // (by record id) when its prompts differ; a record too long for either
    // is rejected for both.
    type TeacherPrompts = HashMap<PromptId, Vec<TokenId>>;
    let read = |path: &Path| -> Result<(Vec<Example>, Rejected, usize, TeacherPrompts)> {
        let records = read_prompts(path, fields)?;
        let styled = |style| {
            tokenize_styled(
                &records,
                &student.tokenizer,
                student.chat.as_deref(),
                student.bos(),
                d.max_prompt_tokens,
                style,
            )
            .with_context(|| path.display().to_string())
        };
        let (mut examples, mut rejected) = styled(d.student_style())?;
        let mut teacher = TeacherPrompts::new();
        if teacher_styled {
            let (theirs, too_long) = styled(d.teacher_style())?;
            let refused: HashSet<PromptId> = too_long.iter().map(|(id, _)| *id).collect();
            examples.retain(|e| !refused.contains(&e.id));
            for (id, why) in too_long {
                if !rejected.iter().any(|(r, _)| *r == id) {
                    rejected.push((id, format!("the teacher's {why}")));
                }
            }
            teacher = theirs.into_iter().map(|e| (e.id, e.prompt)).collect();
        }
        Ok((examples, rejected, records.len(), teacher))
    };
    let (examples, mut rejected, in_file, teacher_of_train) = read(&d.prompts)?;
    let usable = examples.len();
    let (train, eval, eval_line, teacher_of_eval) = if d.eval.as_os_str().is_empty() {
        let (train, eval) = split(examples, d.eval_fraction, d.seed);
        let line = format!(
            "{} held out (data.eval_fraction = {})",
            eval.len(),
            d.eval_fraction
        );
        (train, eval, line, teacher_of_train.clone())
    } else {
        let (eval, eval_rejected, eval_in_file, teacher_of_eval) = read(&d.eval)?;
        if !eval_rejected.is_empty() {
            bail!(
                "{}: {} held-out record(s) exceed data.max_prompt_tokens = {} (first: id {}); \
                 raise it or remove them, so that the evaluation is the whole file",
                d.eval.display(),
                eval_rejected.len(),
                d.max_prompt_tokens,
                eval_rejected[0].0.0
            );
        }
        // A training prompt that is also a held-out one would grade the
        // student on what it trained on.
        let held: HashSet<&[TokenId]> = eval.iter().map(|e| e.prompt.as_slice()).collect();
        let (train, overlap): (Vec<Example>, Vec<Example>) = examples
            .into_iter()
            .partition(|e| !held.contains(e.prompt.as_slice()));
        rejected.extend(overlap.iter().map(|e| {
            (
                e.id,
                format!("the same prompt is in data.eval ({})", d.eval.display()),
            )
        }));
        let line = format!(
            "{} held out from {} ({eval_in_file} records), {} training prompt(s) also in it dropped",
            eval.len(),
            d.eval.display(),
            overlap.len()
        );
        (train, eval, line, teacher_of_eval)
    };
    if eval.is_empty() {
        bail!(
            "{}: {usable} usable prompt record(s) ({in_file} in the file, {} rejected); at least 2 are \
             needed: one to train on and one held out for evaluation (data.eval_fraction)",
            d.prompts.display(),
            rejected.len()
        );
    }
    if train.is_empty() {
        bail!(
            "{}: no training prompts left ({in_file} records, {} rejected, {} held out)",
            d.prompts.display(),
            rejected.len(),
            eval.len()
        );
    }
    if !eval.iter().any(|e| e.answer.is_some()) {
        bail!(
            "{}: none of the {} held-out records has an `answer`{}; evaluation compares final answers",
            if d.eval.as_os_str().is_empty() {
                &d.prompts
            } else {
                &d.eval
            }
            .display(),
            eval.len(),
            fields.map_or(String::new(), |f| format!(" (column `{}`)", f.answer))
        );
    }
    let sft_responses = match d.sft_targets {
        SftTargets::Teacher => None,
        SftTargets::References => {
            let end = *student.stop_ids().first().ok_or_else(|| {
                anyhow::anyhow!(
                    "data.sft_targets = \"references\": the student has no end-of-turn token \
                     to end each reference with"
                )
            })?;
            let responses = train
                .iter()
                .map(|e| {
                    let mut r = e.response.clone().ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: record id {} has no `response`{}; data.sft_targets = \
                             \"references\" trains SFT on every training record's response",
                            d.prompts.display(),
                            e.id.0,
                            fields.map_or(String::new(), |f| format!(" (column `{}`)", f.response))
                        )
                    })?;
                    r.push(end);
                    Ok(r)
                })
                .collect::<Result<Vec<_>>>()?;
            Some(responses)
        }
    };
    // Answers are compared as math answers: a reference's `#### 1,000` or
    // `\frac12` and a response's `1000` or `0.5` agree.
    use npd_core::answer::{normalise, reference};
    let eval: Vec<Example> = eval
        .into_iter()
        .map(|mut e| {
            e.answer = e.answer.map(|a| normalise(&reference(&a)));
            e
        })
        .collect();
    let tokenizer: Tokenizer = student.tokenizer.clone();
    let answer: Answer = Box::new(move |ids: &[TokenId]| {
        final_answer(&graded_text(&tokenizer, ids).ok()?).map(|a| normalise(&a))
    });
    let stop_ids = student.stop_ids();
    let max_new = config.sampling.max_new_tokens;
    // The teacher answers the held-out prompts as it sees them.
    let as_teacher = |examples: &[Example], theirs: &HashMap<PromptId, Vec<TokenId>>| {
        examples
            .iter()
            .map(|e| Example {
                prompt: theirs
                    .get(&e.id)
                    .cloned()
                    .unwrap_or_else(|| e.prompt.clone()),
                ..e.clone()
            })
            .collect::<Vec<Example>>()
    };
    let teacher_eval = as_teacher(&eval, &teacher_of_eval);
    let teacher_train = teacher_styled.then(|| {
        as_teacher(&train, &teacher_of_train)
            .into_iter()
            .map(|e| e.prompt)
            .collect::<Vec<_>>()
    });
    // With servers the check runs on the teacher server once it is up
    // (engine.teacher_check); skipped, the report says so.
    let teacher_accuracy = if config.engine.teacher_check_on_server() == Some(false) {
        let graded = teacher_eval.iter().filter(|e| e.answer.is_some()).count() as u64;
        let mut pb = Progress::new("teacher check", graded, "prompts");
        let accuracy = accuracy_with_progress(
            &teacher.model,
            (&teacher_eval, config.sampling.eval_batch_size),
            &*answer,
            max_new,
            &stop_ids,
            &mut |done, _| pb.set(done as u64),
        )?;
        pb.finish();
        accuracy
    } else {
        f64::NAN
    };
    let warm_start: Weights = npd_train::tch::no_grad(|| {
        student
            .model
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    });
    let describe = |f: &ModelFolder| {
        let c = f.model.config();
        format!(
            "{} ({}, {} layers, hidden {}, {} parameters)",
            f.dir.display(),
            c.model_type,
            c.num_layers,
            c.hidden_size,
            f.model.num_parameters()
        )
    };
    Ok(Inputs {
        setup: vec![
            format!(
                "prompts: {} ({} training, {eval_line}, {} rejected); SFT trains on {}",
                config.data.prompts.display(),
                train.len(),
                rejected.len(),
                match d.sft_targets {
                    SftTargets::Teacher => "the teacher's greedy responses",
                    SftTargets::References => "the dataset's reference responses",
                }
            ),
            format!("teacher: {}", describe(&teacher)),
            format!("student: {}", describe(&student)),
            format!(
                "student on {}, teacher on {} in {:?}, student trains in {:?}",
                m.device,
                m.teacher_device(),
                m.dtype,
                config.train.precision
            ),
            prompt_line(d),
        ],
        teacher_train,
        alone_prefix: student.alone_prefix()?,
        pad_id: student.pad_id(),
        tokenizer: student.tokenizer.clone(),
        student: student.model.config().clone(),
        student_config_json: Some(student.config_json.clone()),
        student_files: student_files(&m.student)?,
        teacher: teacher.model,
        teacher_accuracy,
        warm_start_accuracy: None,
        warm_start,
        train,
        eval,
        teacher_eval,
        sft_responses,
        rejected,
        answer,
        stop_ids,
    })
}

/// The report's line on how each model sees the prompts.
fn prompt_line(d: &npd_train::models_config::DataConfig) -> String {
    let style = |s: npd_train::models_config::PromptStyle<'_>| {
        let mut parts = Vec::new();
        if !s.system.is_empty() {
            parts.push(format!("system turn {:?}", s.system));
        }
        if !s.suffix.is_empty() {
            parts.push(format!("suffix {:?}", s.suffix));
        }
        if parts.is_empty() {
            "as written".to_string()
        } else {
            parts.join(", ")
        }
    };
    format!(
        "prompts as {} (data.prompt_format); the student sees them {}, the teacher {}",
        match d.prompt_format {
            npd_train::models_config::PromptFormat::Raw => "raw text",
            npd_train::models_config::PromptFormat::Chat => "user turns in the chat format",
        },
        style(d.student_style()),
        style(d.teacher_style()),
    )
}

/// A seeded split: `fraction` of the examples (at least one when there are
/// two or more) held out.
fn split(mut examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    seeded_shuffle(&mut examples, seed);
    let n = examples.len();
    let held = if n >= 2 {
        ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let eval = examples.split_off(n - held);
    (examples, eval)
}

#[cfg(test)]
mod warm_start_line_tests {
    use super::*;

    #[test]
    fn the_warm_start_line_names_the_rule_and_every_check() {
        let setup = Setup {
            warm_start_stop: WarmStart::Plateau,
            warm_start_max_ops: 5,
            ..Setup::default()
        };
        let record = WarmStartRecord {
            steps: 600,
            validation: vec![(200, 0.5), (400, 3.2e-5), (600, 4.1e-5)],
            plateaued: true,
        };
        let line = warm_start_line(&setup, Some(&record));
        assert!(
            line.starts_with(
                "warm start: until the validation loss plateaus on prompts of at most 5 ops"
            ),
            "{line}"
        );
        assert!(
            line.contains("plateaued after 600 steps, lowest 3.20e-5 nats per token at step 400"),
            "{line}"
        );
        assert!(
            line.contains("200: 0.500, 400: 3.20e-5, 600: 4.10e-5"),
            "{line}"
        );
        let steps = warm_start_line(&Setup::default(), None);
        assert!(
            steps.starts_with("warm start: 1500 steps") && !steps.contains("at most"),
            "{steps}"
        );
    }
}
