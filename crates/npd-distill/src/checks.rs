//! Checks that need more than the configuration file: keys the embedded
//! default would ignore, sizes against the loaded models and prompts, and
//! NPD's ledgers counted again from `metrics.jsonl`.

use anyhow::{Context, Result};
use npd_core::events::Event;
use npd_pipeline::Method;

use crate::RunConfig;
use crate::inputs::Inputs;

/// The embedded default brings its own models and prompts: keys that would
/// choose other ones are an error there, not silently ignored. It honours
/// `model.device` (it prepares its teacher and warm start on the CPU and
/// runs the methods on that device).
pub fn refuse_ignored_keys(config: &RunConfig) -> Result<()> {
    let defaults = RunConfig::default();
    let (m, d) = (&config.model, &config.data);
    let given = [
        ("model.student", m.student != defaults.model.student),
        ("model.dtype", m.dtype != defaults.model.dtype),
        ("data.prompts", d.prompts != defaults.data.prompts),
        (
            "data.max_prompt_tokens",
            d.max_prompt_tokens != defaults.data.max_prompt_tokens,
        ),
        (
            "data.eval_fraction",
            d.eval_fraction != defaults.data.eval_fraction,
        ),
        ("data.seed", d.seed != defaults.data.seed),
        ("data.eval", d.eval != defaults.data.eval),
        ("data.fields", d.fields != defaults.data.fields),
        (
            "data.sft_targets",
            d.sft_targets != defaults.data.sft_targets,
        ),
        (
            "model.teacher_device",
            m.teacher_device != defaults.model.teacher_device,
        ),
        (
            "data.prompt_format",
            d.prompt_format != defaults.data.prompt_format,
        ),
        (
            "data.student_system",
            d.student_system != defaults.data.student_system,
        ),
        (
            "data.teacher_system",
            d.teacher_system != defaults.data.teacher_system,
        ),
        (
            "data.student_suffix",
            d.student_suffix != defaults.data.student_suffix,
        ),
        (
            "data.teacher_suffix",
            d.teacher_suffix != defaults.data.teacher_suffix,
        ),
    ];
    let keys: Vec<&str> = given.iter().filter(|(_, g)| *g).map(|(k, _)| *k).collect();
    if !keys.is_empty() {
        anyhow::bail!(
            "{} given without model.teacher: the embedded default (no model.teacher) uses its \
             own models and prompts; name model.teacher and model.student folders to \
             use them, or remove these keys",
            keys.join(", ")
        );
    }
    Ok(())
}

/// A run of one's own models needs both folders and a prompts file: a
/// configuration naming one without the others is refused when it is
/// checked, not when the run starts.
pub fn require_folder_keys(config: &RunConfig) -> Result<()> {
    if config.model.student.as_os_str().is_empty() {
        anyhow::bail!(
            "model.teacher is set but model.student is empty: name the student folder beside \
             the teacher (or remove model.teacher to run the embedded default)"
        );
    }
    if config.data.prompts.as_os_str().is_empty() {
        anyhow::bail!(
            "model.teacher is set but data.prompts is empty: real models need a prompts \
             JSONL file (see docs/pipeline.md)"
        );
    }
    let d = &config.data;
    if !d.eval.as_os_str().is_empty() && d.eval_fraction != RunConfig::default().data.eval_fraction
    {
        anyhow::bail!(
            "data.eval_fraction = {} and data.eval = {:?}: with an evaluation file nothing of \
             data.prompts is held out; remove one of them",
            d.eval_fraction,
            d.eval.display().to_string()
        );
    }
    Ok(())
}

/// Settings a section accepts as a library value but no engine of a run
/// can honour.
pub fn refuse_unsupported(config: &RunConfig) -> Result<()> {
    if config.filter.enabled && config.filter.form == npd_filter::DeltaForm::Staleness {
        anyhow::bail!(
            "filter.form = \"staleness\": it scores IFD_student_now - IFD_snapshot, which \
             needs the generating snapshot's log-probs of every response, and neither engine \
             records them; use \"difference\", \"ratio\" or \"conditioned-gap\""
        );
    }
    Ok(())
}

/// Every `[engine]` key but `kind` configures vLLM servers: with the
/// in-process engine they would be ignored, so they are refused.
pub fn refuse_server_keys(config: &RunConfig) -> Result<()> {
    if config.engine.kind != npd_engine::EngineKind::InProcess {
        return Ok(());
    }
    let given: Vec<String> =
        npd_core::config::changed_keys(&config.engine, &npd_engine::EngineConfig::default())
            .into_iter()
            // The teacher check applies to the in-process engine too.
            .filter(|k| k != "kind" && k != "teacher_check")
            .map(|k| format!("engine.{k}"))
            .collect();
    if !given.is_empty() {
        anyhow::bail!(
            "{} given with engine.kind = \"in-process\": {} configure vLLM servers, which the \
             in-process engine does not use; set engine.kind = \"vllm\" (or --engine vllm), \
             or remove them",
            given.join(", "),
            if given.len() == 1 {
                "it would"
            } else {
                "they would"
            }
        );
    }
    Ok(())
}

/// Refuses `[embedded]` keys when `model.teacher` names a folder: they
/// would be ignored.
pub fn refuse_embedded_keys(config: &RunConfig) -> Result<()> {
    if config.embedded != crate::embedded::config::EmbeddedConfig::default() {
        anyhow::bail!(
            "[embedded] keys given with model.teacher: they choose the embedded default's task \
             and models, which a run of your own models does not use; remove them"
        );
    }
    Ok(())
}

/// Checks what the configuration can only be checked against with the
/// models and prompts in hand, before the first step of the first method
/// (so that no method runs and then fails on a size).
pub fn check_fit(config: &RunConfig, inputs: &Inputs, methods: &[Method]) -> Result<()> {
    let vocab = inputs.teacher.config().vocab_size;
    if config.train.top_k > vocab {
        anyhow::bail!(
            "train.top_k = {}: expected at most the vocabulary size, {vocab}",
            config.train.top_k
        );
    }
    let longest_prompt = (inputs.train.iter().chain(&inputs.eval))
        .map(|e| e.prompt.len())
        .max()
        .unwrap_or(0);
    let longest = longest_prompt + config.sampling.max_new_tokens;
    let p = &config.pack;
    // NPD always packs; SFT and on-policy when pack.baselines says so.
    let packs = methods
        .iter()
        .any(|m| *m == Method::NearPolicy || p.baselines == npd_pack::BaselineRows::Packed);
    if packs && p.oversize == npd_pack::OversizePolicy::Reject && p.capacity < longest {
        anyhow::bail!(
            "pack.capacity = {}: expected at least the longest sample a method can write, \
             {longest} tokens (the longest prompt, {longest_prompt}, plus \
             sampling.max_new_tokens, {}); raise it, or set pack.oversize = \"truncate\"",
            p.capacity,
            config.sampling.max_new_tokens
        );
    }
    Ok(())
}

/// NPD's ledgers counted again from `metrics.jsonl`, a record written
/// step by step apart from the ledger: the prompts the step events name as
/// trained and filtered must be the ledger's counts (failures at shutdown
/// have no step event, so they may only be fewer).
pub fn ledger_checks(
    metrics: &std::path::Path,
    outcomes: &[npd_pipeline::Outcome],
) -> Result<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let text = std::fs::read_to_string(metrics).with_context(|| metrics.display().to_string())?;
    let mut seen: BTreeMap<u64, [BTreeSet<u64>; 3]> = BTreeMap::new();
    for line in text.lines() {
        let Ok(Event::Step(s)) = serde_json::from_str::<Event>(line) else {
            continue;
        };
        if s.method != Method::NearPolicy {
            continue;
        }
        let sets = seen.entry(s.seed).or_default();
        for (set, ids) in
            sets.iter_mut()
                .zip([&s.prompts_trained, &s.prompts_filtered, &s.prompts_failed])
        {
            set.extend(ids.iter().flatten());
        }
    }
    let mut lines = Vec::new();
    for o in outcomes.iter().filter(|o| o.method == Method::NearPolicy) {
        let Some(l) = &o.ledger else { continue };
        let [t, f, x] = seen.remove(&o.seed).unwrap_or_default();
        let ledger_failed: usize = l.failed.values().sum();
        let ledger_filtered: usize = l.filtered.values().sum();
        let agree = t.len() == l.trained && f.len() == ledger_filtered && x.len() <= ledger_failed;
        lines.push(format!(
            "NPD seed {}: metrics.jsonl names {} trained, {} filtered and {} failed prompts; the ledger counts {}, {} and {}: {}",
            o.seed,
            t.len(),
            f.len(),
            x.len(),
            l.trained,
            ledger_filtered,
            ledger_failed,
            if agree { "agree" } else { "DISAGREE" }
        ));
    }
    Ok(lines)
}

/// The RL runs' account, step by step: `metrics.jsonl` must hold each of
/// an RL run's steps once, and name as many trained and dropped groups as
/// the run recorded.
pub fn rl_checks(
    metrics: &std::path::Path,
    outcomes: &[npd_pipeline::Outcome],
) -> Result<Vec<String>> {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(metrics).with_context(|| metrics.display().to_string())?;
    // (method, seed) -> (steps seen, trained groups, dropped groups)
    let mut seen: BTreeMap<(Method, u64), (Vec<u64>, usize, usize)> = BTreeMap::new();
    for line in text.lines() {
        let Ok(Event::Step(s)) = serde_json::from_str::<Event>(line) else {
            continue;
        };
        if !s.method.is_rl() {
            continue;
        }
        let e = seen.entry((s.method, s.seed)).or_default();
        e.0.push(s.step);
        e.1 += s.records_trained.as_ref().map_or(0, Vec::len);
        e.2 += s.records_filtered.as_ref().map_or(0, Vec::len);
    }
    let mut lines = Vec::new();
    for o in outcomes {
        let Some(trace) = &o.rl else { continue };
        let (steps, trained, dropped) = seen.remove(&(o.method, o.seed)).unwrap_or_default();
        let (kept, gone) = trace.steps.iter().fold((0, 0), |(k, d), p| {
            (k + p.rl.groups_kept, d + p.rl.groups_dropped)
        });
        let n = trace.steps.len() as u64;
        let once = steps == (1..=n).collect::<Vec<u64>>();
        let agree = once && trained == kept && dropped == gone;
        lines.push(format!(
            "{} seed {}: metrics.jsonl holds {} step lines ({}), naming {trained} trained and \
             {dropped} dropped groups; the run recorded {kept} and {gone}: {}",
            o.method.name(),
            o.seed,
            steps.len(),
            if once {
                format!("steps 1 to {n} once each")
            } else {
                "NOT each step once".to_string()
            },
            if agree { "agree" } else { "DISAGREE" }
        ));
    }
    Ok(lines)
}
