//! RL after distillation, as a measurement: GRPO with the embedded task's
//! exact answer checker as the reward, from a trained student's
//! checkpoint (`--from`, e.g. a distill run's
//! `checkpoints/npd-seed0/step-00000200/model`), on the embedded default's
//! training prompts. It prints held-out greedy accuracy, pass@1 and
//! pass@k of sampled responses and the share of prompts whose samples
//! disagree (how much the policy still explores), before and after, and
//! the reward as it rises.
//!
//! `cargo run --release --example rl_after -- --from runs/final/checkpoints/npd-seed0/step-00000200/model`
//!
//! This is the GRPO loop of `npd_pipeline::grpo` on the in-process
//! backend; the run folder, checkpoints and resume of `distill_openpangu`
//! do not apply to it yet.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::Parser;
use npd_core::config::{LossKind, TrainConfig};
use npd_core::reward::Reward;
use npd_core::traits::Generator;
use npd_core::{Prompt, PromptId, SamplingParams};
use npd_pack::PackOptions;
use npd_pipeline::grpo::{AdvantageScale, GrpoSettings, run_grpo};
use npd_train::eval::accuracy;
use npd_train::generator::ModelGenerator;
use npd_train::model::Llama;
use npd_train::tch::{Device, Kind};
use npd_train::train::{TrainOptions, Trainer};

/// GRPO from a trained student's checkpoint on the embedded task.
#[derive(Debug, Parser)]
struct Args {
    /// The student to start from: a model folder (config.json and
    /// safetensors) of the embedded default's student.
    #[arg(long)]
    from: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Responses per prompt (G, at least 2).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=4096))]
    group: u64,
    /// Prompts per step.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=65536))]
    prompts: u64,
    /// Weight refresh every K steps (1: strictly on-policy).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    refresh_every: u64,
    /// Peak learning rate (constant after 10 warm-up steps).
    #[arg(long, default_value_t = 2e-5, value_parser = positive)]
    lr: f64,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = 1.0, value_parser = temperature)]
    temperature: f32,
    /// Centre rewards only (Dr. GRPO) instead of dividing by the group's
    /// standard deviation.
    #[arg(long)]
    dr_grpo: bool,
    /// Weight of the KL penalty toward the starting weights (0: none).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    kl: f64,
    /// Samples per held-out prompt for pass@k.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    k: u64,
    /// Seed of prompts and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder caching the embedded teacher and warm start (default: the
    /// distill example's).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// The embedded default's `--quick` models (for a checkpoint of a
    /// `distill_openpangu --quick` run).
    #[arg(long)]
    quick: bool,
}

fn number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .map_err(|e| format!("{text:?}: {e}"))
        .and_then(|v| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err("expected a finite number".into())
            }
        })
}

fn positive(text: &str) -> Result<f64, String> {
    number(text).and_then(|v| {
        if v > 0.0 {
            Ok(v)
        } else {
            Err("expected a number > 0".into())
        }
    })
}

fn non_negative(text: &str) -> Result<f64, String> {
    number(text).and_then(|v| {
        if v >= 0.0 {
            Ok(v)
        } else {
            Err("expected a number >= 0".into())
        }
    })
}

fn temperature(text: &str) -> Result<f32, String> {
    number(text).and_then(|v| {
        if (0.0..=100.0).contains(&v) {
            Ok(v as f32)
        } else {
            Err("expected a number in [0, 100]".into())
        }
    })
}

/// pass@1 and pass@k (k samples at `temperature` per prompt), and the
/// share of prompts whose k samples hold more than one distinct answer.
fn pass_at_k(
    model: &Llama,
    prompts: &[Prompt],
    answers: &std::collections::HashMap<PromptId, String>,
    answer: &npd_distill::inputs::Answer,
    params: &SamplingParams,
    k: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut generator = ModelGenerator::new(model_copy(model)?, 0);
    let mut correct = vec![0usize; prompts.len()];
    let mut distinct: Vec<std::collections::BTreeSet<Option<String>>> =
        vec![Default::default(); prompts.len()];
    for member in 0..k {
        let p = SamplingParams {
            seed: params.seed ^ (member as u64).wrapping_mul(0x9E37_79B9),
            ..params.clone()
        };
        for (i, r) in generator.generate(prompts, &p)?.into_iter().enumerate() {
            let found = answer(&r.response);
            if found.as_ref() == answers.get(&r.prompt_id) {
                correct[i] += 1;
            }
            distinct[i].insert(found);
        }
    }
    let n = prompts.len() as f64;
    let pass1 = correct.iter().map(|&c| c as f64 / k as f64).sum::<f64>() / n;
    let passk = correct.iter().filter(|&&c| c > 0).count() as f64 / n;
    let diverse = distinct.iter().filter(|d| d.len() > 1).count() as f64 / n;
    Ok((pass1, passk, diverse))
}

fn model_copy(model: &Llama) -> anyhow::Result<Llama> {
    let mut m = Llama::new(model.config().clone(), Device::Cpu);
    let weights: npd_train::generator::Weights = npd_train::tch::no_grad(|| {
        (model.named_parameters().into_iter())
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    });
    npd_train::generator::load_weights(&mut m, &weights)?;
    Ok(m)
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", npd_distill::describe(&e));
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let options = npd_distill::Options {
        cache: args.cache.clone(),
        quick: args.quick,
        ..npd_distill::Options::default()
    };
    let (config, setup, _) = npd_distill::configure(&options)?;
    let cache = (args.cache.clone())
        .unwrap_or_else(npd_distill::default_cache)
        .join(setup.cache_name());
    // A wrong --from is named before the embedded models are prepared.
    let start = Llama::load(&args.from, Device::Cpu, Kind::Float)?;
    let inputs = npd_distill::inputs::embedded(&cache, &setup, &AtomicBool::new(false))?;
    if start.config() != &inputs.student {
        anyhow::bail!(
            "{}: not the embedded default's student (its config.json describes another model)",
            args.from.display()
        );
    }
    let max_new = config.sampling.max_new_tokens;
    let stop = inputs.stop_ids.clone();
    let answers: std::collections::HashMap<PromptId, String> = inputs
        .train
        .iter()
        .chain(&inputs.eval)
        .filter_map(|e| e.answer.clone().map(|a| (e.id, a)))
        .collect();
    let to_prompt = |e: &npd_train::data::Example| Prompt {
        id: e.id,
        tokens: e.prompt.clone(),
    };
    let train: Vec<Prompt> = inputs.train.iter().map(to_prompt).collect();
    let held_out: Vec<Prompt> = inputs.eval.iter().take(256).map(to_prompt).collect();
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: None,
        top_p: 1.0,
        max_new_tokens: max_new,
        stop_ids: stop.clone(),
        seed: args.seed,
    };
    let measure = |m: &Llama| -> anyhow::Result<(f64, f64, f64, f64)> {
        let greedy = accuracy(m, &inputs.eval, &*inputs.answer, max_new, &stop)?;
        let (p1, pk, diverse) = pass_at_k(
            m,
            &held_out,
            &answers,
            &inputs.answer,
            &sampling,
            args.k as usize,
        )?;
        Ok((greedy, p1, pk, diverse))
    };
    let before = measure(&start)?;

    let train_config = TrainConfig {
        steps: args.steps,
        lr: args.lr,
        min_lr: args.lr,
        warmup_steps: 10,
        weight_decay: 0.0,
        loss: LossKind::ForwardKl,
        micro_batch_rows: 64,
        rows_per_step: 64,
        grad_clip: 1.0,
        ..TrainConfig::default()
    };
    let mut train_options = TrainOptions::from_config(&train_config);
    train_options.policy_kl = args.kl;
    let mut learner = Trainer::new(model_copy(&start)?, train_options);
    let mut reference_scorer = npd_train::score::ModelScorer::new(&start);
    let reference: Option<&mut dyn npd_core::traits::Scorer> =
        (args.kl > 0.0).then_some(&mut reference_scorer as &mut dyn npd_core::traits::Scorer);
    let mut generator = ModelGenerator::new(model_copy(&start)?, 0);
    let answer = &inputs.answer;
    let reward = |r: &npd_core::Rollout| {
        let ok = answer(&r.response).as_ref() == answers.get(&r.prompt_id);
        Reward {
            value: f64::from(u8::from(ok)),
            reason: String::new(),
        }
    };
    let settings = GrpoSettings {
        group_size: args.group as usize,
        prompts_per_step: args.prompts as usize,
        refresh_every: args.refresh_every,
        scale: if args.dr_grpo {
            AdvantageScale::None
        } else {
            AdvantageScale::GroupStd
        },
        sampling: sampling.clone(),
        pack: PackOptions::new(config.pack.capacity),
        max_draws: 2,
        seed: args.seed,
        overlong: Default::default(),
    };
    let clock = Instant::now();
    let mut curve = Vec::new();
    let steps = run_grpo(
        &mut learner,
        &mut generator,
        reference,
        &train,
        &reward,
        &settings,
        args.steps,
        &mut |s| {
            if s.step % 10 == 0 || s.step == 1 {
                eprintln!(
                    "step {:>4}: reward {:.3}, groups kept {:>2}, dropped {:>2}, response {:.1} tokens, {:.0}s",
                    s.step,
                    s.mean_reward,
                    s.groups_kept,
                    s.groups_dropped,
                    s.mean_response_tokens,
                    clock.elapsed().as_secs_f64()
                );
            }
            curve.push(s.mean_reward);
        },
    )?;
    let after = measure(learner.model())?;
    let first: f64 = curve.iter().take(10).sum::<f64>() / curve.len().clamp(1, 10) as f64;
    let last: f64 = curve.iter().rev().take(10).sum::<f64>() / curve.len().clamp(1, 10) as f64;
    let dropped: usize = steps.iter().map(|s| s.groups_dropped).sum();
    let kept: usize = steps.iter().map(|s| s.groups_kept).sum();
    println!(
        "\nGRPO from {} ({} steps, G = {}, {} prompts per step, K = {}, lr {}, T = {}, KL {}, {})",
        args.from.display(),
        args.steps,
        args.group,
        args.prompts,
        args.refresh_every,
        args.lr,
        args.temperature,
        args.kl,
        if args.dr_grpo { "Dr. GRPO" } else { "GRPO" }
    );
    println!(
        "\n| | greedy accuracy | pass@1 | pass@{k} | prompts with >1 answer |",
        k = args.k
    );
    println!("|---|---|---|---|---|");
    for (name, (g, p1, pk, d)) in [("before", before), ("after", after)] {
        println!(
            "| {name} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
            100.0 * g,
            100.0 * p1,
            100.0 * pk,
            100.0 * d
        );
    }
    println!(
        "\nreward, mean of the first and last 10 steps: {first:.3} -> {last:.3}; groups kept {kept}, dropped (equal rewards) {dropped}; {:.0}s",
        clock.elapsed().as_secs_f64()
    );
    Ok(())
}
