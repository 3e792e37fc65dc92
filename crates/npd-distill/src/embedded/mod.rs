//! The embedded default: a seeded arithmetic task with verifiable answers,
//! its character tokenizer, and the model shapes of its teacher and
//! student, so the whole pipeline runs with no downloads in minutes on a
//! CPU.

pub mod config;
pub mod plateau;
pub mod prepare;
pub mod setup;
pub mod task;

use std::path::Path;

use serde_json::json;

use npd_core::Result;

use npd_train::config::ModelConfig;
use npd_train::tokenizer::Tokenizer;

/// Characters of the task, in id order after the three special tokens.
pub const ALPHABET: &str = "0123456789+-*=,#! ";
/// Padding / unknown id.
pub const PAD_ID: u32 = 0;
/// Beginning of sequence.
pub const BOS_ID: u32 = 1;
/// End of sequence (end of a response).
pub const EOS_ID: u32 = 2;
/// Vocabulary size of the embedded models (ids beyond the alphabet unused).
pub const VOCAB_SIZE: usize = 32;

/// The character-level tokenizer of the task, built as a `tokenizers`
/// WordLevel model over single characters.
pub fn tokenizer() -> Result<Tokenizer> {
    Tokenizer::from_json_str(
        &tokenizer_json().to_string(),
        Path::new("<embedded tokenizer>"),
    )
}

/// The tokenizer as `tokenizer.json`.
pub fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), json!(PAD_ID));
    vocab.insert("<s>".into(), json!(BOS_ID));
    vocab.insert("</s>".into(), json!(EOS_ID));
    for (i, c) in ALPHABET.chars().enumerate() {
        vocab.insert(c.to_string(), json!(3 + i));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(PAD_ID, "<unk>"), special(BOS_ID, "<s>"), special(EOS_ID, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
}

/// A decoder of the openPangu architecture (q/k/v/o biases, GQA, tied
/// embeddings) sized for the task, holding `max_positions` tokens; sizes
/// no model can have are an error naming `embedded model`.
pub fn model_config(
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    max_positions: usize,
) -> npd_core::Result<ModelConfig> {
    let json = json!({
        "architectures": ["PanguEmbeddedForCausalLM"],
        "model_type": "PanguEmbedded",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_positions,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "bias": true,
        "tie_word_embeddings": true,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    });
    ModelConfig::from_json(&json.to_string(), "embedded model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_round_trips_task_text() {
        let tok = tokenizer().unwrap();
        let spec = task::TaskSpec::default();
        for prob in &spec.problems(20, 1) {
            let text = format!("{}{}", spec.prompt(prob), prob.response());
            let ids = tok.encode(&text).unwrap();
            assert_eq!(ids.len(), text.chars().count());
            assert!(
                ids.iter()
                    .all(|&i| i >= 3 && (i as usize) < 3 + ALPHABET.len())
            );
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        assert_eq!(tok.encode("a").unwrap(), vec![PAD_ID]);
        assert_eq!(tok.token_id("</s>"), Some(EOS_ID));
    }
}
