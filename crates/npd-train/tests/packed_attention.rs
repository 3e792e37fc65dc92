//! Packed attention, forward and backward: the segments of a packed
//! sequence give what each sequence gives alone.

use npd_train::tch::{Device, Kind, Tensor};
use npd_train::{Llama, ModelConfig};

fn tiny_model() -> Llama {
    let json = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "attention_bias": true, "tie_word_embeddings": true}"#;
    let mut m = Llama::new(ModelConfig::from_json(json, "tiny").unwrap(), Device::Cpu);
    m.init_random(3, 0.1);
    m
}

fn sequence(len: usize, salt: usize) -> Vec<i64> {
    (0..len)
        .map(|j| ((j * 7 + salt * 11) % 60 + 3) as i64)
        .collect()
}

/// `Σ logits · weights` over the sequences laid end to end, and the
/// gradient of every parameter.
fn loss_and_grads(model: &Llama, seqs: &[Vec<i64>], weights: &Tensor) -> (f64, Vec<Tensor>) {
    model.var_store().variables().values().for_each(|v| {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    });
    let flat: Vec<i64> = seqs.concat();
    let pos: Vec<i64> = seqs.iter().flat_map(|s| 0..s.len() as i64).collect();
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let h = model
        .forward_packed(
            &Tensor::from_slice(&flat),
            &Tensor::from_slice(&pos),
            &lengths,
        )
        .unwrap();
    let loss = (model.logits(&h) * weights).sum(Kind::Float);
    loss.backward();
    let mut named: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let grads = named.iter().map(|(_, v)| v.grad().copy()).collect();
    (loss.double_value(&[]), grads)
}

#[test]
fn packed_segments_equal_each_sequence_alone_forward_and_backward() {
    let model = tiny_model();
    // Equal lengths (the two 10s) share an attention call; the others
    // have one each, a long one among them.
    let lengths = [9, 20, 10, 300, 11, 24, 10];
    let seqs: Vec<Vec<i64>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| sequence(l, i))
        .collect();
    let total: usize = lengths.iter().sum();
    let weights = Tensor::randn([total as i64, 64], (Kind::Float, Device::Cpu));
    let (packed_loss, packed_grads) = loss_and_grads(&model, &seqs, &weights);
    let mut alone_loss = 0.0;
    let mut alone_grads: Vec<Tensor> = Vec::new();
    let mut start = 0;
    for s in &seqs {
        let w = weights.narrow(0, start, s.len() as i64);
        let (l, g) = loss_and_grads(&model, std::slice::from_ref(s), &w);
        alone_loss += l;
        alone_grads = if alone_grads.is_empty() {
            g
        } else {
            alone_grads.iter().zip(&g).map(|(a, b)| a + b).collect()
        };
        start += s.len() as i64;
    }
    assert!(
        (packed_loss - alone_loss).abs() <= 1e-3 * alone_loss.abs().max(1.0),
        "loss packed {packed_loss} vs alone {alone_loss}"
    );
    for (p, a) in packed_grads.iter().zip(&alone_grads) {
        assert!(
            p.isfinite().all().int64_value(&[]) == 1,
            "non-finite gradient"
        );
        let d = (p - a).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-3);
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "gradient differs by {d} (scale {scale})"
        );
    }
}
