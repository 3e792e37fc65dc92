//! A real vLLM server (the CPU build `scripts/vllm.sh` installs; `./npd
//! test` sets `NPD_VLLM_PYTHON`) against the in-process model on the same
//! weights: teacher top-k and sampled log-probs agree, a refresh is
//! verified by its probe (and a refresh to other weights is caught), and a
//! server that dies gives an error naming it.

mod common;
use common::python;

use std::time::Duration;

use serde_json::json;
use tch::{Device, Kind};

use npd_core::traits::{Generator, ScoreOptions, ScoreRequest, Scorer};
use npd_core::{Prompt, PromptId, SamplingParams, TokenId};
use npd_engine::{Client, LaunchSpec, Launched, Published, Vllm, VllmGenerator, VllmScorer};
use npd_train::config::ModelConfig;
use npd_train::model::Llama;
use npd_train::score::ModelScorer;
use npd_train::served::{probe, publish_for_serving, save_for_serving};

const VOCAB: usize = 32;
const EOS: TokenId = 2;

/// A tied openPangu-layout decoder with 32-wide heads (what vLLM's CPU
/// attention supports), randomly initialised from `seed`.
fn model(seed: i64) -> Llama {
    let config = json!({
        "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded",
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "bias": true, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": EOS, "pad_token_id": 0,
    });
    let config = ModelConfig::from_json(&config.to_string(), "test").unwrap();
    tch::manual_seed(seed);
    let m = Llama::new(config, Device::Cpu);
    // Larger weights than the initialisation's, so distributions are far
    // from uniform and top-k orders are clear.
    tch::no_grad(|| {
        for (_, mut t) in m.named_parameters() {
            let noise = t.randn_like() * 0.3;
            t.copy_(&noise);
        }
    });
    m
}

/// A word-level tokenizer over the ids (vLLM needs one to start).
fn write_tokenizer(dir: &std::path::Path) {
    let mut vocab = serde_json::Map::new();
    for i in 0..VOCAB {
        vocab.insert(format!("t{i}"), json!(i));
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "t0"), special(1, "t1"), special(2, "t2")],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let config = json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "t1",
                        "eos_token": "t2", "pad_token": "t0", "model_max_length": 128});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// A CPU vLLM server of the model folder `model` in float32, logging to
/// `log`.
fn serve(model: &std::path::Path, log: &std::path::Path) -> Launched {
    Launched::start(
        &LaunchSpec {
            role: "test".into(),
            python: python(),
            model: model.to_path_buf(),
            dtype: npd_engine::ServedDtype::Float32,
            max_model_len: 128,
            max_logprobs: 20,
            kv_cache_gib: 1,
            cpus: String::new(),
            log: log.to_path_buf(),
            extra_args: Vec::new(),
        },
        Duration::from_secs(600),
    )
    .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_vllm_server_serves_what_the_trainer_holds() {
    let root = std::env::temp_dir().join(format!("npd-vllm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let start = model(0);
    let start_dir = root.join("start");
    save_for_serving(&start, &start_dir, Kind::Float).unwrap();
    write_tokenizer(&start_dir);
    let mut server = serve(&start_dir, &root.join("server.log"));
    let vllm = Vllm::connect(Client::new(server.url(), Duration::from_secs(60), 1)).unwrap();
    assert_eq!(vllm.max_model_len(), 128);

    // Teacher scoring: conditioned log-probs and top-k against the
    // in-process model on the same weights.
    let seqs: Vec<Vec<TokenId>> = (0..20)
        .map(|i| {
            (0..12 + i % 7)
                .map(|j| 3 + ((i * 7 + j * 5) % 29) as TokenId)
                .collect()
        })
        .map(|s: Vec<TokenId>| [vec![1], s].concat())
        .collect();
    let requests: Vec<ScoreRequest<'_>> = seqs
        .iter()
        .map(|s| ScoreRequest {
            tokens: s,
            prompt_len: 5,
        })
        .collect();
    let options = ScoreOptions {
        topk: Some(8),
        alone_prefix: Some(vec![1]),
    };
    let served = VllmScorer::new(vllm.clone(), 4)
        .score(&requests, &options)
        .unwrap();
    let pairs: Vec<(&[TokenId], usize)> = seqs.iter().map(|s| (s.as_slice(), 5)).collect();
    let local = tch::no_grad(|| ModelScorer::new(&start).response_scores(&pairs, Some(8))).unwrap();
    let mut worst = 0.0f32;
    for ((got, (lp, top)), s) in served.iter().zip(&local).zip(&seqs) {
        worst = worst.max(max_diff(&got.logprobs.conditioned, lp));
        let (gt, lt) = (got.topk.as_ref().unwrap(), top.as_ref().unwrap());
        assert_eq!(gt.k, 8);
        worst = worst.max(max_diff(&gt.logprobs, &lt.logprobs));
        worst = worst.max(max_diff(&gt.tail_logprob, &lt.tail_logprob));
        // Ids agree wherever neighbouring log-probs are not (nearly) tied.
        for p in 0..gt.positions() {
            for j in 0..8 {
                let i = p * 8 + j;
                let clear = (j == 0 || lt.logprobs[i - 1] - lt.logprobs[i] > 1e-3)
                    && (j == 7 || lt.logprobs[i] - lt.logprobs[i + 1] > 1e-3);
                if clear {
                    assert_eq!(gt.ids[i], lt.ids[i], "top-k id at position {p}, rank {j}");
                }
            }
        }
        let alone_seq: Vec<TokenId> = [&[1][..], &s[5..]].concat();
        let want = tch::no_grad(|| {
            ModelScorer::new(&start).response_scores(&[(alone_seq.as_slice(), 1)], None)
        })
        .unwrap();
        worst = worst.max(max_diff(&got.logprobs.alone, &want[0].0));
    }
    assert!(
        worst < 1e-4,
        "served and in-process log-probs differ by {worst}"
    );

    // Student rollouts: the sampled tokens' log-probs are the in-process
    // model's, and responses end at the stop id or the budget.
    let prompts: Vec<Prompt> = (0..12)
        .map(|i| Prompt {
            id: PromptId(i),
            tokens: vec![1, 3 + (i % 20) as TokenId, 4, 5],
        })
        .collect();
    let params = SamplingParams {
        temperature: 1.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens: 24,
        stop_ids: vec![EOS],
        seed: 7,
    };
    let mut generator = VllmGenerator::new(vllm.clone(), 4, 0, 1e-3);
    let rollouts = generator.generate(&prompts, &params).unwrap();
    assert_eq!(rollouts.len(), prompts.len());
    let again = generator.generate(&prompts, &params).unwrap();
    assert_eq!(
        rollouts.iter().map(|r| &r.response).collect::<Vec<_>>(),
        again.iter().map(|r| &r.response).collect::<Vec<_>>(),
        "a prompt's seed fixes its response"
    );
    let mut worst = 0.0f32;
    for (r, p) in rollouts.iter().zip(&prompts) {
        assert_eq!(r.prompt_id, p.id);
        assert!(!r.response.is_empty());
        let stops = r.response.iter().filter(|&&t| t == EOS).count();
        assert!(
            (stops == 1 && *r.response.last().unwrap() == EOS)
                || (stops == 0 && r.response.len() == 24),
            "{:?}",
            r.response
        );
        let seq = [p.tokens.as_slice(), &r.response].concat();
        let want = tch::no_grad(|| {
            ModelScorer::new(&start).response_scores(&[(seq.as_slice(), p.tokens.len())], None)
        })
        .unwrap();
        worst = worst.max(max_diff(&r.response_logprobs, &want[0].0));
    }
    assert!(worst < 1e-4, "sampled log-probs differ by {worst}");

    // Held-out grading of server responses is the in-process grading:
    // answers are the in-process greedy response's last token for every
    // other prompt and a wrong one for the rest, so in-process accuracy is
    // one half by construction.
    let last = |ids: &[TokenId]| ids.last().map(|t| t.to_string());
    let examples: Vec<npd_train::data::Example> = prompts
        .iter()
        .map(|p| npd_train::data::Example {
            id: p.id,
            prompt: p.tokens.clone(),
            answer: None,
            response: None,
        })
        .collect();
    let held = npd_train::eval::HeldOut::new(&examples, &last, 24, vec![EOS]);
    let greedy_local = npd_train::tch::no_grad(|| {
        npd_train::generate::generate(
            &start,
            &prompts.iter().map(|p| p.tokens.clone()).collect::<Vec<_>>(),
            &held.greedy(),
            npd_train::generate::Decoding::Cached,
        )
    })
    .unwrap();
    let examples: Vec<npd_train::data::Example> = examples
        .into_iter()
        .zip(&greedy_local)
        .enumerate()
        .map(|(i, (mut e, g))| {
            e.answer = if i % 2 == 0 {
                last(&g.tokens)
            } else {
                Some("x".into())
            };
            e
        })
        .collect();
    let held = npd_train::eval::HeldOut::new(&examples, &last, 24, vec![EOS]);
    let local = npd_train::eval::accuracy(&start, (&examples, 4), &last, 24, &[EOS]).unwrap();
    assert_eq!(local, 0.5);
    let served = generator
        .generate(
            &held
                .graded()
                .iter()
                .enumerate()
                .map(|(i, e)| Prompt {
                    id: PromptId(i as u64),
                    tokens: e.prompt.clone(),
                })
                .collect::<Vec<_>>(),
            &held.greedy(),
        )
        .unwrap();
    let responses: Vec<Vec<TokenId>> = served.into_iter().map(|r| r.response).collect();
    assert_eq!(held.grade(&responses), local);

    // A verified refresh to other weights published in bfloat16 (the
    // float32 server computes on the rounded values, as the probe does),
    // then one whose probe does not match what the server loaded.
    let probe_tokens: Vec<TokenId> = (0..30).map(|i| 3 + (i * 11 % 29) as TokenId).collect();
    let log = npd_engine::ProbeLog::default();
    let mut generator = generator.with_probe_log(log.clone());
    generator
        .load(
            Published {
                dir: root.join("start"),
                probe: probe(&start, &probe_tokens).unwrap(),
            },
            0,
        )
        .unwrap();
    let next = model(1);
    let next_dir = root.join("v1");
    let published = publish_for_serving(&next, &next_dir, Kind::BFloat16, &probe_tokens).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(next_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["tie_word_embeddings"], false);
    let weights = |dir: &std::path::Path| {
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len() as f64
    };
    let ratio = weights(&next_dir) / weights(&root.join("start"));
    assert!(
        (0.45..0.6).contains(&ratio),
        "bfloat16 snapshot is {ratio:.2} of the float32 one"
    );
    let unrounded = probe(&next, &probe_tokens).unwrap();
    generator
        .load(
            Published {
                dir: next_dir.clone(),
                probe: published.clone(),
            },
            1,
        )
        .unwrap();
    assert_eq!(generator.version(), 1);
    {
        let checks = log.lock().unwrap();
        let last = checks.last().unwrap();
        assert!(last.passed && last.max_abs_diff < 1e-4, "{last:?}");
        assert!(last.reload_s.is_some_and(|s| s > 0.0), "{last:?}");
        // Other weights moved the probe by far more than the tolerance.
        assert!(last.moved.is_some_and(|m| m > 0.1), "{last:?}");
        eprintln!(
            "bfloat16 refresh: server vs probe on the rounded weights {:.2e}; \
             probe on the rounded vs the trainer's own weights {:.2e}",
            last.max_abs_diff,
            max_diff(&published.logprobs, &unrounded.logprobs)
        );
    }
    let err = generator
        .load(
            Published {
                dir: next_dir,
                probe: probe(&start, &probe_tokens).unwrap(),
            },
            2,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(server.url()) && err.contains("version 2") && err.contains("does not hold"),
        "{err}"
    );

    // A server that dies mid-run: a clear error naming it, not a hang.
    server.kill();
    let err = generator.generate(&prompts, &params).unwrap_err();
    assert!(
        matches!(err, npd_core::Error::Backend { .. }),
        "a dead server is a backend failure: {err}"
    );
    let err = err.to_string();
    assert!(
        err.contains(server.url()) && err.contains("cannot reach"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_trained_checkpoint_is_served_by_vllm_as_npd_computes_it() {
    use npd_core::traits::Persist;
    use npd_train::train::Trainer;

    let root = std::env::temp_dir().join(format!("npd-vllm-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // The student folder: a tied model and its tokenizer, which the
    // checkpoint carries along.
    let student = root.join("student");
    save_for_serving(&model(3), &student, Kind::Float).unwrap();
    write_tokenizer(&student);
    // `model` ties the output projection to the embeddings, as
    // openPangu-Embedded-1B does.
    let tied = model(3);
    assert!(tied.config().tie_word_embeddings);
    let files = npd_train::folder::companion_files(&student).unwrap();
    let mut trainer =
        Trainer::new(tied, common::ce_options()).with_companion_files(std::sync::Arc::new(files));
    common::one_step(&mut trainer, (0..40).map(|i| 3 + (i * 7) % 29).collect(), 3);
    let checkpoint = root.join("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    trainer.save_state(&checkpoint).unwrap();
    let exported = checkpoint.join("model");
    assert!(exported.join("tokenizer.json").is_file());

    // vLLM starts from the exported folder itself (tied embeddings load
    // correctly at start; only reloads need the untied copy).
    let mut server = serve(&exported, &root.join("server.log"));
    let vllm = Vllm::connect(Client::new(server.url(), Duration::from_secs(60), 1)).unwrap();
    let mut worst = 0.0f32;
    for i in 0..8u32 {
        let seq: Vec<TokenId> =
            [vec![1], (0..20).map(|j| 3 + (i * 5 + j * 3) % 29).collect()].concat();
        let served = vllm.prompt_logprobs(&seq, 0).unwrap().actual;
        let local = npd_train::tch::no_grad(|| {
            ModelScorer::new(trainer.model()).response_scores(&[(seq.as_slice(), 1)], None)
        })
        .unwrap();
        worst = worst.max(max_diff(&served, &local[0].0));
    }
    server.kill();
    assert!(
        worst < 1e-4,
        "the served checkpoint's log-probs differ from npd's by {worst}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
