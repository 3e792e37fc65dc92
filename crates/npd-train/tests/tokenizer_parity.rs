//! The SentencePiece conversion against the sentencepiece Python library:
//! models and reference ids written by `scripts/fixtures/make_tokenizers.py`.

use std::path::PathBuf;

use npd_train::tokenizer::Tokenizer;
use npd_train::tokenizer::chat::{ChatFormat, Message, PanguChat, Role};
use serde_json::Value;

const MODELS: [&str; 3] = [
    "spm-bpe-identity",
    "spm-unigram-identity",
    "spm-unigram-nfkc",
];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(name)
}

fn cases(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir(name).join("cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn ids_equal_sentencepiece() {
    let mut failures = Vec::new();
    for name in MODELS {
        let tok = Tokenizer::from_dir(&dir(name)).unwrap();
        for case in cases(name) {
            let text = case["text"].as_str().unwrap();
            let got = tok.encode(text).unwrap();
            if got != ids(&case["ids"]) {
                failures.push(format!(
                    "{name}: {text:?}\n  got  {got:?}\n  want {:?}",
                    ids(&case["ids"])
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decoding_equals_sentencepiece() {
    for name in MODELS {
        let tok = Tokenizer::from_dir(&dir(name)).unwrap();
        for case in cases(name) {
            if let Some(want) = case["decoded"].as_str() {
                assert_eq!(
                    tok.decode(&ids(&case["ids"]), false).unwrap(),
                    want,
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn converted_tokenizer_saves_as_tokenizer_json() {
    let out = std::env::temp_dir().join(format!("npd-tok-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let tok = Tokenizer::from_dir(&dir("spm-bpe-identity")).unwrap();
    tok.save(&out.join("tokenizer.json")).unwrap();
    let back = Tokenizer::from_dir(&out).unwrap();
    assert!(back.source().ends_with("tokenizer.json"));
    for case in cases("spm-bpe-identity") {
        let text = case["text"].as_str().unwrap();
        assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn pangu_chat_markers_map_to_their_ids() {
    let tok = Tokenizer::from_dir(&dir("spm-bpe-identity")).unwrap();
    let prompt = PanguChat.prompt(&[Message::new(Role::User, "Hi")]).unwrap();
    let ids = tok.encode(&prompt).unwrap();
    let start = tok.token_id("[unused9]").unwrap();
    let end = tok.token_id("[unused10]").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == start).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == end).count(), 2);
    assert_eq!(ids[0], start);
    // Prompt and target tokenized together split at the prompt's end.
    let (all, prompt_len) = tok
        .encode_pair(&prompt, &PanguChat.target("Hello"))
        .unwrap();
    assert_eq!(&all[..prompt_len], &ids[..]);
    assert_eq!(*all.last().unwrap(), end);
    assert_eq!(
        tok.decode(&all[prompt_len..], false).unwrap(),
        "Hello[unused10]"
    );
}

#[test]
fn answers_are_graded_after_the_thinking_block_even_when_its_marker_is_special() {
    use npd_train::folder::{final_answer, graded_text};
    let tok = Tokenizer::from_dir(&dir("spm-bpe-identity")).unwrap();
    let ids = tok.encode("[unused16]try 41[unused17] yes").unwrap();
    let close = tok.token_id("[unused17]").unwrap();
    assert!(ids.contains(&close));
    // Decoding drops the special markers, so the text alone cannot tell the
    // thinking from the answer: its last number is the thinking's.
    let plain = tok.decode(&ids, true).unwrap();
    assert!(!plain.contains("[unused17]"), "{plain}");
    assert_eq!(final_answer(&plain).as_deref(), Some("41"));
    let graded = graded_text(&tok, &ids).unwrap();
    assert_eq!(final_answer(&graded).as_deref(), Some("yes"));
    // A fast answer (an empty thinking block) and a response without one.
    let fast = tok.encode("[unused16][unused17]42").unwrap();
    assert_eq!(
        final_answer(&graded_text(&tok, &fast).unwrap()).as_deref(),
        Some("42")
    );
    let none = tok.encode("so 7").unwrap();
    assert_eq!(
        final_answer(&graded_text(&tok, &none).unwrap()).as_deref(),
        Some("7")
    );
}

#[test]
fn malformed_model_files_are_errors() {
    let out = std::env::temp_dir().join(format!("npd-badtok-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let good = std::fs::read(dir("spm-bpe-identity").join("tokenizer.model")).unwrap();
    std::fs::write(out.join("tokenizer.model"), &good[..good.len() / 2]).unwrap();
    let err = Tokenizer::from_dir(&out).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.model") && err.contains("malformed"),
        "{err}"
    );
    std::fs::remove_file(out.join("tokenizer.model")).unwrap();
    let err = Tokenizer::from_dir(&out).unwrap_err().to_string();
    assert!(
        err.contains("neither tokenizer.json nor tokenizer.model"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
