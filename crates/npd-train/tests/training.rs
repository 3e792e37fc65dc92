//! Training: the loss falls, packed equals padded, distillation toward a
//! teacher's top-k reduces the divergence, non-finite losses are guarded.

use std::path::PathBuf;

use npd_core::config::{LossKind, TrainConfig};
use npd_core::traits::Learner;
use npd_core::{PackedRow, SampleId, TokenId, TrainSample};
use npd_pack::{PackOptions, pack_pool};
use npd_train::score::ModelScorer;
use npd_train::tch::{Device, Kind};
use npd_train::train::{Layout, TrainOptions, Trainer};
use npd_train::{Llama, ModelConfig};

fn tiny_config() -> ModelConfig {
    let json = r#"{"model_type": "llama", "vocab_size": 96, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "attention_bias": true, "tie_word_embeddings": true}"#;
    ModelConfig::from_json(json, "tiny").unwrap()
}

fn options(loss: LossKind, lr: f64, steps: u64) -> TrainOptions {
    let mut o = TrainOptions::from_config(&TrainConfig {
        lr,
        min_lr: lr,
        warmup_steps: 0,
        steps,
        weight_decay: 0.0,
        loss,
        micro_batch_rows: 2,
        ..Default::default()
    });
    o.max_nonfinite_steps = 3;
    o
}

/// Counting sequences `s, s+1, ...` (mod 90, offset 4): learnable.
fn counting_samples(n: usize) -> Vec<TrainSample> {
    (0..n)
        .map(|i| {
            let len = 6 + (i * 7) % 11;
            let start = (i * 13) % 90;
            TrainSample {
                id: SampleId(i as u64),
                tokens: (0..len)
                    .map(|j| 4 + ((start + j) % 90) as TokenId)
                    .collect(),
                prompt_len: 2,
                weights: None,
                topk: None,
                policy: None,
            }
        })
        .collect()
}

fn rows(samples: Vec<TrainSample>, capacity: usize) -> Vec<PackedRow> {
    pack_pool(samples, &PackOptions::new(capacity)).unwrap()
}

fn student(seed: u64) -> Llama {
    let mut m = Llama::new(tiny_config(), Device::Cpu);
    m.init_random(seed, 0.1);
    m
}

#[test]
fn cross_entropy_falls_on_a_learnable_task() {
    let rows = rows(counting_samples(24), 64);
    let mut trainer = Trainer::new(student(1), options(LossKind::Ce, 1e-2, 60));
    let before = trainer.evaluate(&rows).unwrap();
    for _ in 0..60 {
        let s = trainer.step(&rows).unwrap();
        assert!(!s.skipped && s.loss.is_finite() && s.grad_norm.is_finite());
    }
    let after = trainer.evaluate(&rows).unwrap();
    assert!(after < 0.5 * before, "loss {before} -> {after}");
    assert_eq!(trainer.version(), 60);
}

#[test]
fn packed_and_padded_layouts_give_the_same_loss() {
    let samples = counting_samples(9);
    let packed = rows(samples.clone(), 48);
    assert!(packed.iter().any(|r| r.segments.len() > 1));
    // One sample per row, padded to a common width.
    let padded: Vec<PackedRow> = samples
        .into_iter()
        .flat_map(|s| rows(vec![s], 20))
        .collect();
    let a = Trainer::new(student(2), options(LossKind::Ce, 1e-3, 1));
    let mut o = options(LossKind::Ce, 1e-3, 1);
    o.layout = Layout::Padded;
    let b = Trainer::new(student(2), o);
    let (la, lb) = (a.evaluate(&packed).unwrap(), b.evaluate(&padded).unwrap());
    assert!((la - lb).abs() < 1e-5, "packed {la} padded {lb}");
    // A padded trainer refuses rows holding several samples.
    assert!(
        b.evaluate(&packed)
            .unwrap_err()
            .to_string()
            .contains("one sample per row")
    );
}

#[test]
fn forward_kl_toward_a_teacher_falls() {
    let teacher_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama-gqa-tied");
    let teacher = Llama::load(&teacher_dir, Device::Cpu, Kind::Float).unwrap();
    let mut samples = counting_samples(16);
    let scorer = ModelScorer::new(&teacher);
    let seqs: Vec<(&[TokenId], usize)> = samples
        .iter()
        .map(|s| (s.tokens.as_slice(), s.prompt_len))
        .collect();
    let scores = scorer.response_scores(&seqs, Some(8)).unwrap();
    for (s, (_, top)) in samples.iter_mut().zip(scores) {
        s.topk = top;
    }
    let rows = rows(samples, 64);
    let mut trainer = Trainer::new(student(3), options(LossKind::ForwardKl, 1e-2, 40));
    let before = trainer.evaluate(&rows).unwrap();
    for _ in 0..40 {
        trainer.step(&rows).unwrap();
    }
    let after = trainer.evaluate(&rows).unwrap();
    assert!(after < 0.6 * before, "KL {before} -> {after}");
    // The other divergences run on the same rows and are finite and >= 0.
    for loss in [LossKind::ReverseKl, LossKind::Jsd] {
        let t = Trainer::new(student(3), options(loss, 1e-2, 1));
        let v = t.evaluate(&rows).unwrap();
        assert!(v.is_finite() && v >= 0.0, "{loss:?}: {v}");
    }
    // KL losses need top-k targets.
    let plain = rows_without_topk();
    let err = trainer.evaluate(&plain).unwrap_err().to_string();
    assert!(err.contains("top-k"), "{err}");
}

fn rows_without_topk() -> Vec<PackedRow> {
    rows(counting_samples(2), 64)
}

#[test]
fn non_finite_losses_skip_steps_then_abort() {
    let mut bad = rows_without_topk();
    let good = bad.clone();
    for w in bad[0].weights.iter_mut() {
        if *w > 0.0 {
            *w = f32::NAN;
        }
    }
    let mut trainer = Trainer::new(student(4), options(LossKind::Ce, 1e-2, 10));
    let before: Vec<(String, _)> = trainer.publish().unwrap();
    let s = trainer.step(&bad).unwrap();
    assert!(s.skipped);
    assert_eq!(trainer.version(), 0);
    // Weights untouched by the skipped step.
    for ((_, a), (_, b)) in before.iter().zip(trainer.publish().unwrap()) {
        assert!(a.equal(&b));
    }
    // A good step resets the run of failures.
    assert!(!trainer.step(&good).unwrap().skipped);
    assert!(trainer.step(&bad).unwrap().skipped);
    assert!(trainer.step(&bad).unwrap().skipped);
    let err = trainer.step(&bad).unwrap_err().to_string();
    assert!(err.contains("3 consecutive"), "{err}");
    assert_eq!(trainer.skipped_steps(), 4);
}

fn flat_weights(m: &Llama) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = m
        .named_parameters()
        .into_iter()
        .map(|(n, t)| {
            let t = t.to_kind(Kind::Float).flatten(0, -1);
            (n, Vec::<f32>::try_from(t).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_restored_checkpoint_continues_exactly_as_the_uninterrupted_run() {
    use npd_core::traits::Persist;
    use npd_train::checkpoint::MODEL_DIR;
    let rows = rows(counting_samples(12), 64);
    let dir = tempdir("resume");
    let ckpt = dir.join("step-00000003");

    let mut a = Trainer::new(student(4), options(LossKind::Ce, 1e-2, 10));
    for _ in 0..3 {
        a.step(&rows).unwrap();
    }
    std::fs::create_dir_all(&ckpt).unwrap();
    a.save_state(&ckpt).unwrap();
    for _ in 0..3 {
        a.step(&rows).unwrap();
    }

    // A fresh trainer with other weights, restored, takes the same steps.
    let mut b = Trainer::new(student(5), options(LossKind::Ce, 1e-2, 10));
    b.restore_state(&ckpt).unwrap();
    assert_eq!(b.version(), 3);
    for _ in 0..3 {
        b.step(&rows).unwrap();
    }
    assert_eq!(flat_weights(a.model()), flat_weights(b.model()));

    // The model inside is an ordinary checkpoint folder.
    let m = Llama::load(&ckpt.join(MODEL_DIR), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(m.num_parameters(), a.model().num_parameters());

    // A checkpoint of another architecture is refused by tensor name.
    let mut wide = tiny_config();
    wide.hidden_size = 48;
    wide.head_dim = 12;
    let mut other = Trainer::new(
        Llama::new(wide, Device::Cpu),
        options(LossKind::Ce, 1e-2, 10),
    );
    let err = other.restore_state(&ckpt).unwrap_err().to_string();
    assert!(err.contains("tensor ") && err.contains("shape"), "{err}");
}

/// A bf16 run's checkpoint holds bf16 weights (and says so in its
/// `config.json`) and the f32 master weights beside the moments: a
/// resumed run continues exactly, masters included.
#[test]
fn a_bf16_checkpoint_resumes_exactly_with_its_master_weights() {
    use npd_core::traits::Persist;
    use npd_train::checkpoint::MODEL_DIR;
    let rows = rows(counting_samples(12), 64);
    let dir = tempdir("resume-bf16");
    let ckpt = dir.join("step-00000003");
    let mut o = options(LossKind::Ce, 1e-3, 10);
    o.precision = Kind::BFloat16;
    let masters = |t: &Trainer| -> Vec<Vec<f32>> {
        (t.optimizer().masters().iter().flatten())
            .map(|m| Vec::<f32>::try_from(m.flatten(0, -1)).unwrap())
            .collect()
    };
    let mut a = Trainer::new(student(4), o.clone());
    for _ in 0..3 {
        a.step(&rows).unwrap();
    }
    std::fs::create_dir_all(&ckpt).unwrap();
    a.save_state(&ckpt).unwrap();
    for _ in 0..3 {
        a.step(&rows).unwrap();
    }
    let mut b = Trainer::new(student(5), o);
    b.restore_state(&ckpt).unwrap();
    for _ in 0..3 {
        b.step(&rows).unwrap();
    }
    assert_eq!(flat_weights(a.model()), flat_weights(b.model()));
    assert!(!masters(&a).is_empty());
    assert_eq!(masters(&a), masters(&b));
    let config = std::fs::read_to_string(ckpt.join(MODEL_DIR).join("config.json")).unwrap();
    assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");
    let m = Llama::load(&ckpt.join(MODEL_DIR), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(m.num_parameters(), a.model().num_parameters());
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("npd-train-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rows of counting samples carrying policy targets: behaviour log-probs
/// off the current model's by a fixed pattern (some tokens inside the clip
/// range, some outside) and advantages of both signs.
fn policy_rows(model: &Llama) -> Vec<PackedRow> {
    let samples = counting_samples(6);
    let seqs: Vec<(&[TokenId], usize)> = samples.iter().map(|s| (&s.tokens[..], 2)).collect();
    let scored =
        npd_train::tch::no_grad(|| ModelScorer::new(model).response_scores(&seqs, None)).unwrap();
    let samples = samples
        .into_iter()
        .zip(scored)
        .enumerate()
        .map(|(i, (mut s, sc))| {
            let n = s.response_len();
            let shift = [0.05f32, -0.5, 0.6, 0.1];
            s.policy = Some(npd_core::PolicyTargets {
                behaviour_logprobs: (0..n)
                    .map(|t| (sc.0[t] - shift[(t + i) % 4]).min(0.0))
                    .collect(),
                advantages: (0..n)
                    .map(|t| if (t + i) % 3 == 0 { -0.7 } else { 1.2 })
                    .collect(),
                reference_logprobs: None,
            });
            s
        })
        .collect();
    rows(samples, 64)
}

/// The policy objective's gradient on a tiny model equals central finite
/// differences of the loss, parameter by parameter.
#[test]
fn the_policy_objectives_gradient_matches_finite_differences() {
    let base = student(11);
    let rows = policy_rows(&base);
    let mut trainer = Trainer::new(base, options(LossKind::ForwardKl, 1e-3, 10));
    let (loss, grads) = trainer.gradients(&rows).unwrap();
    assert!(loss.is_finite());
    let picks = [
        ("model.embed_tokens.weight", 5 * 32 + 3),
        ("model.layers.0.self_attn.q_proj.weight", 40),
        ("model.layers.1.mlp.down_proj.weight", 77),
        ("model.norm.weight", 9),
    ];
    let h = 1e-2;
    for (name, index) in picks {
        let grad = grads
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .flatten(0, -1);
        let g = grad.double_value(&[index]);
        let at = |delta: f64| {
            let mut m = student(11);
            npd_train::tch::no_grad(|| {
                let vars = m.var_store_mut().variables();
                let flat = vars[name].flatten(0, -1);
                let v = flat.double_value(&[index]);
                let _ = flat.get(index).fill_(v + delta);
            });
            Trainer::new(m, options(LossKind::ForwardKl, 1e-3, 10))
                .evaluate(&rows)
                .unwrap()
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        eprintln!("{name}[{index}]: autograd {g}, finite difference {fd}");
        assert!(
            fd.abs() > 1e-3,
            "{name}[{index}]: the perturbation moved nothing"
        );
        assert!(
            (g - fd).abs() <= 2e-5 + 0.01 * fd.abs(),
            "{name}[{index}]: autograd {g}, finite difference {fd}"
        );
    }
    // Some tokens are clipped and some are not: the pattern covers both.
    let p = rows[0].policy.as_ref().unwrap();
    assert!(p.advantages.iter().any(|a| *a < 0.0) && p.advantages.iter().any(|a| *a > 0.0));
}

/// The sampler's log-probs are the trainer's: on rows the generator has
/// just written, every importance ratio is 1, so the surrogate with unit
/// advantages is exactly -1 per token.
#[test]
fn the_samplers_log_probs_give_unit_ratios_in_training() {
    use npd_core::traits::Generator;
    let model = student(5);
    let mut generator = npd_train::generator::ModelGenerator::new(student(5), 0);
    let prompts: Vec<npd_core::Prompt> = (0..6)
        .map(|i| npd_core::Prompt {
            id: npd_core::PromptId(i),
            tokens: (0..3 + i as u32)
                .map(|t| 4 + (t * 7 + i as u32) % 80)
                .collect(),
        })
        .collect();
    let params = npd_core::SamplingParams {
        temperature: 1.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens: 12,
        stop_ids: vec![2],
        seed: 9,
    };
    let rollouts = generator.generate(&prompts, &params).unwrap();
    let samples: Vec<TrainSample> = rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| TrainSample {
            id: SampleId(i as u64),
            tokens: [r.prompt.as_slice(), r.response.as_slice()].concat(),
            prompt_len: r.prompt.len(),
            weights: None,
            topk: None,
            policy: Some(npd_core::PolicyTargets {
                behaviour_logprobs: r.response_logprobs.clone(),
                advantages: vec![1.0; r.response.len()],
                reference_logprobs: None,
            }),
        })
        .collect();
    let rows = rows(samples, 64);
    let mut trainer = Trainer::new(model, options(LossKind::ForwardKl, 1e-3, 10));
    let (loss, _) = trainer.gradients(&rows).unwrap();
    assert!((loss + 1.0).abs() < 1e-4, "mean ratio {}", -loss);
}

/// Rows of counting samples with the fixture teacher's top-8 targets.
fn distillation_rows(capacity: usize) -> Vec<PackedRow> {
    let teacher_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama-gqa-tied");
    let teacher = Llama::load(&teacher_dir, Device::Cpu, Kind::Float).unwrap();
    let mut samples = counting_samples(10);
    let seqs: Vec<(&[TokenId], usize)> = samples
        .iter()
        .map(|s| (s.tokens.as_slice(), s.prompt_len))
        .collect();
    let scores = ModelScorer::new(&teacher)
        .response_scores(&seqs, Some(8))
        .unwrap();
    for (s, (_, top)) in samples.iter_mut().zip(scores) {
        s.topk = top;
    }
    rows(samples, capacity)
}

/// Recomputing each block's activations in the backward pass and
/// computing the loss over chunks of targets change what is kept in
/// memory, not the result: the loss and every gradient equal the plain
/// path's (f32, within 1e-5), for every objective and both layouts.
#[test]
fn recompute_and_chunked_loss_give_the_plain_gradients() {
    let packed = distillation_rows(48);
    assert!(packed.iter().any(|r| r.segments.len() > 1));
    let padded: Vec<PackedRow> = counting_samples(10)
        .into_iter()
        .flat_map(|s| rows(vec![s], 20))
        .collect();
    let policy = policy_rows(&student(12));
    let cases: [(&str, LossKind, Layout, &[PackedRow]); 4] = [
        (
            "forward KL, packed",
            LossKind::ForwardKl,
            Layout::Packed,
            &packed,
        ),
        ("JSD, packed", LossKind::Jsd, Layout::Packed, &packed),
        (
            "cross-entropy, padded",
            LossKind::Ce,
            Layout::Padded,
            &padded,
        ),
        (
            "policy, packed",
            LossKind::ForwardKl,
            Layout::Packed,
            &policy,
        ),
    ];
    for (what, loss, layout, rows) in cases {
        let gradients = |recompute: bool, chunk: usize| {
            let mut o = options(loss, 1e-3, 1);
            o.layout = layout;
            o.recompute = recompute;
            o.loss_chunk_tokens = chunk;
            Trainer::new(student(12), o).gradients(rows).unwrap()
        };
        let (plain_loss, plain) = gradients(false, 0);
        assert!(plain_loss.is_finite() && plain_loss != 0.0, "{what}");
        for (recompute, chunk) in [(true, 0), (false, 5), (true, 7), (true, 1)] {
            let (l, grads) = gradients(recompute, chunk);
            assert!(
                (l - plain_loss).abs() < 1e-5,
                "{what}, recompute {recompute}, chunk {chunk}: loss {l} against {plain_loss}"
            );
            for ((name, g), (_, p)) in grads.iter().zip(&plain) {
                let diff = (g - p).abs().max().double_value(&[]);
                let scale = p.abs().max().double_value(&[]);
                assert!(scale > 0.0, "{what}: {name} has no gradient");
                assert!(
                    diff < 1e-5,
                    "{what}, recompute {recompute}, chunk {chunk}: {name} differs by {diff}"
                );
            }
        }
    }
}

/// bf16 training keeps f32 master weights: over 50 steps at a learning
/// rate whose updates are below bf16's resolution for most weights, its
/// loss curve tracks f32's (each step within 2% of f32's loss), while the
/// same bf16 model updated without masters loses most updates and its
/// loss falls less than half as far.
#[test]
fn bf16_with_master_weights_tracks_f32() {
    use npd_train::optim::AdamW;
    let rows = rows(counting_samples(24), 64);
    let curve = |precision: Kind, masters: bool| {
        let mut o = options(LossKind::Ce, 1e-4, 50);
        o.precision = precision;
        let mut trainer = Trainer::new(student(21), o.clone());
        assert_eq!(trainer.model().kind(), precision);
        if !masters {
            let params = trainer.model().var_store().trainable_variables();
            *trainer.optimizer_mut() = AdamW::without_masters(params, o.adamw);
        }
        let mut losses = vec![trainer.evaluate(&rows).unwrap()];
        for _ in 0..50 {
            trainer.step(&rows).unwrap();
            losses.push(trainer.evaluate(&rows).unwrap());
        }
        losses
    };
    let f32 = curve(Kind::Float, true);
    let bf16 = curve(Kind::BFloat16, true);
    let plain = curve(Kind::BFloat16, false);
    let fall = |c: &[f64]| c[0] - c[c.len() - 1];
    assert!(fall(&f32) > 0.02 * f32[0], "f32 {f32:?}");
    for (step, (a, b)) in f32.iter().zip(&bf16).enumerate() {
        assert!(
            (a - b).abs() < 0.02 * a,
            "step {step}: bf16 with masters {b} against f32 {a}"
        );
    }
    assert!(
        fall(&plain) < 0.5 * fall(&f32),
        "plain bf16 fell {} against f32's {} (curves {plain:?} / {f32:?})",
        fall(&plain),
        fall(&f32)
    );
    eprintln!(
        "loss falls over 50 steps: f32 {:.4}, bf16 with masters {:.4}, plain bf16 {:.4}",
        fall(&f32),
        fall(&bf16),
        fall(&plain)
    );
}
