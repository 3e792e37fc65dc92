//! The model against transformers' LlamaForCausalLM(attention_bias=True):
//! tiny random checkpoints written by `scripts/fixtures/make_models.py` with
//! reference logits and greedy continuations computed by transformers.

use std::path::PathBuf;

use npd_train::Llama;
use npd_train::tch::{Device, Kind, Tensor};

const FIXTURES: [&str; 3] = ["llama-gqa-tied", "llama-mha-untied-sharded", "pangu-bf16"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

struct Reference {
    inputs: Vec<Vec<i64>>,
    logits: Vec<Tensor>,
    greedy: Vec<Vec<i64>>,
}

impl Reference {
    /// The reference inputs as prompts.
    fn prompts(&self) -> Vec<Vec<u32>> {
        self.inputs
            .iter()
            .map(|p| p.iter().map(|&t| t as u32).collect())
            .collect()
    }
}

fn reference(name: &str) -> Reference {
    let mut tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture(name).join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut r = Reference {
        inputs: vec![],
        logits: vec![],
        greedy: vec![],
    };
    for i in 0.. {
        let Some(input) = tensors.remove(&format!("input.{i}")) else {
            break;
        };
        r.inputs.push(Vec::<i64>::try_from(&input).unwrap());
        r.logits
            .push(tensors.remove(&format!("logits.{i}")).unwrap());
        r.greedy
            .push(Vec::<i64>::try_from(&tensors.remove(&format!("greedy.{i}")).unwrap()).unwrap());
    }
    assert!(!r.inputs.is_empty());
    r
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn logits_alone(model: &Llama, ids: &[i64]) -> Tensor {
    let tokens = Tensor::from_slice(ids);
    let positions = Tensor::arange(ids.len() as i64, (Kind::Int64, Device::Cpu));
    let h = model
        .forward_packed(&tokens, &positions, &[ids.len()])
        .unwrap();
    model.logits(&h)
}

#[test]
fn logits_match_transformers() {
    for name in FIXTURES {
        let model = Llama::load(&fixture(name), Device::Cpu, Kind::Float).unwrap();
        let r = reference(name);
        for (ids, want) in r.inputs.iter().zip(&r.logits) {
            let got = logits_alone(&model, ids);
            let d = max_abs_diff(&got, want);
            assert!(d <= 1e-4, "{name}: max |Δlogit| = {d}");
            // The reference has signal: logits vary well beyond the tolerance.
            assert!(want.std(true).double_value(&[]) > 0.1);
        }
    }
}

#[test]
fn packed_logits_equal_each_sequence_alone() {
    for name in FIXTURES {
        let model = Llama::load(&fixture(name), Device::Cpu, Kind::Float).unwrap();
        let r = reference(name);
        // Two copies of the first input make a group of equal lengths.
        let seqs = [&r.inputs[0], &r.inputs[1], &r.inputs[0], &r.inputs[2]];
        let flat: Vec<i64> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let pos: Vec<i64> = seqs.iter().flat_map(|s| 0..s.len() as i64).collect();
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let h = model
            .forward_packed(
                &Tensor::from_slice(&flat),
                &Tensor::from_slice(&pos),
                &lengths,
            )
            .unwrap();
        let packed = model.logits(&h);
        let mut start = 0;
        for s in seqs {
            let alone = logits_alone(&model, s);
            let part = packed.narrow(0, start, s.len() as i64);
            let d = max_abs_diff(&part, &alone);
            assert!(d <= 1e-5, "{name}: packed vs alone {d}");
            start += s.len() as i64;
        }
    }
}

fn greedy_params(n: usize) -> npd_core::SamplingParams {
    npd_core::SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens: n,
        stop_ids: vec![],
        seed: 0,
    }
}

#[test]
fn greedy_tokens_match_transformers_in_one_padded_batch() {
    use npd_train::generate::{Decoding, generate};
    for name in FIXTURES {
        let model = Llama::load(&fixture(name), Device::Cpu, Kind::Float).unwrap();
        let r = reference(name);
        let prompts: Vec<Vec<u32>> = r
            .inputs
            .iter()
            .map(|p| p.iter().map(|&t| t as u32).collect())
            .collect();
        let n = r.greedy[0].len();
        let out = generate(&model, &prompts, &greedy_params(n), Decoding::Cached).unwrap();
        for (g, want) in out.iter().zip(&r.greedy) {
            let got: Vec<i64> = g.tokens.iter().map(|&t| t as i64).collect();
            assert_eq!(&got, want, "{name}");
        }
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    use npd_train::generate::{Decoding, generate};
    let model = Llama::load(&fixture("llama-gqa-tied"), Device::Cpu, Kind::Float).unwrap();
    let r = reference("llama-gqa-tied");
    let prompts = r.prompts();
    let mut params = greedy_params(12);
    params.temperature = 1.0;
    params.top_k = Some(20);
    params.seed = 11;
    let cached = generate(&model, &prompts, &params, Decoding::Cached).unwrap();
    let uncached = generate(&model, &prompts, &params, Decoding::Uncached).unwrap();
    for (a, b) in cached.iter().zip(&uncached) {
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    // Seeded: the same call gives the same samples.
    assert_eq!(
        cached,
        generate(&model, &prompts, &params, Decoding::Cached).unwrap()
    );
}

#[test]
fn finished_rows_leave_the_batch_without_changing_the_others() {
    use npd_train::generate::{Decoding, generate};
    let model = Llama::load(&fixture("llama-gqa-tied"), Device::Cpu, Kind::Float).unwrap();
    let r = reference("llama-gqa-tied");
    let prompts = r.prompts();
    // A stop id that ends some rows early and others late or never, so the
    // batch drops rows while the rest keep decoding.
    let mut params = greedy_params(12);
    params.stop_ids = vec![r.greedy[0][2] as u32];
    let batched = generate(&model, &prompts, &params, Decoding::Cached).unwrap();
    let lengths: Vec<usize> = batched.iter().map(|g| g.tokens.len()).collect();
    assert!(
        lengths.iter().any(|&n| n < 12) && lengths.contains(&12),
        "the stop id should end only some rows early: {lengths:?}"
    );
    for (p, g) in prompts.iter().zip(&batched) {
        let alone =
            &generate(&model, std::slice::from_ref(p), &params, Decoding::Cached).unwrap()[0];
        assert_eq!(g.tokens, alone.tokens);
        for (x, y) in g.logprobs.iter().zip(&alone.logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    let uncached = generate(&model, &prompts, &params, Decoding::Uncached).unwrap();
    for (a, b) in batched.iter().zip(&uncached) {
        assert_eq!(a.tokens, b.tokens);
    }
}

#[test]
fn generation_stops_at_a_stop_id() {
    use npd_train::generate::{Decoding, generate};
    let model = Llama::load(&fixture("llama-gqa-tied"), Device::Cpu, Kind::Float).unwrap();
    let r = reference("llama-gqa-tied");
    let prompt: Vec<u32> = r.inputs[0].iter().map(|&t| t as u32).collect();
    let mut params = greedy_params(8);
    let stop = r.greedy[0][2] as u32;
    params.stop_ids = vec![stop];
    let g = &generate(&model, &[prompt], &params, Decoding::Cached).unwrap()[0];
    let first = r.greedy[0].iter().position(|&t| t as u32 == stop).unwrap();
    assert_eq!(g.tokens.len(), first + 1);
    assert_eq!(*g.tokens.last().unwrap(), stop);
    assert_eq!(g.finish, npd_core::FinishReason::Stop);
}

#[test]
fn saved_checkpoints_reload_identically_single_and_sharded() {
    use npd_train::checkpoint::save_pretrained;
    let dir = std::env::temp_dir().join(format!("npd-save-{}", std::process::id()));
    for name in FIXTURES {
        let model = Llama::load(&fixture(name), Device::Cpu, Kind::Float).unwrap();
        let r = reference(name);
        for (shard, label) in [(usize::MAX, "single"), (20_000, "sharded")] {
            let out = dir.join(format!("{name}-{label}"));
            save_pretrained(&model, &out, None, shard).unwrap();
            assert_eq!(
                out.join("model.safetensors.index.json").exists(),
                label == "sharded"
            );
            let back = Llama::load(&out, Device::Cpu, Kind::Float).unwrap();
            assert_eq!(
                back.config().tie_word_embeddings,
                model.config().tie_word_embeddings
            );
            let d = max_abs_diff(
                &logits_alone(&back, &r.inputs[2]),
                &logits_alone(&model, &r.inputs[2]),
            );
            assert_eq!(d, 0.0, "{name} {label}");
            // Saving again over an existing folder replaces it.
            save_pretrained(&back, &out, None, shard).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    use npd_train::checkpoint::save_pretrained;
    let dir = std::env::temp_dir().join(format!("npd-bad-{}", std::process::id()));
    let model = Llama::load(&fixture("llama-gqa-tied"), Device::Cpu, Kind::Float).unwrap();
    save_pretrained(&model, &dir, None, usize::MAX).unwrap();
    // A config that disagrees with the stored shapes.
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 48"),
    )
    .unwrap();
    let err = Llama::load(&dir, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.down_proj.weight")
            && err.contains("[32, 64]")
            && err.contains("[32, 48]"),
        "{err}"
    );
    // A missing tensor.
    let more = cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    std::fs::write(dir.join("config.json"), more).unwrap();
    let err = Llama::load(&dir, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.2.") && err.contains("missing"),
        "{err}"
    );
    // A truncated weights file.
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    let err = Llama::load(&dir, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    let name = "llama-gqa-tied";
    let model = Llama::load(&fixture(name), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(model.kind(), Kind::BFloat16);
    let r = reference(name);
    let got = logits_alone(&model, &r.inputs[0]).to_kind(Kind::Float);
    let d = max_abs_diff(&got, &r.logits[0]);
    let scale = r.logits[0].abs().max().double_value(&[]);
    assert!(d < 0.05 * scale, "bf16 logits off by {d} (scale {scale})");
}
