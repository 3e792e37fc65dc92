//! Teacher and student folders in the Hugging Face layout, loaded for
//! distillation: the model, its tokenizer and its chat format, with the
//! checks that must pass before any work (one vocabulary, special tokens
//! inside it).

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use npd_core::{Error, Result, TokenId};

use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::tokenizer::chat::{ChatFormat, PANGU_TURN_START, PanguChat, TemplateChat};

/// A loaded model folder.
pub struct ModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// The model, on its device and in its compute dtype.
    pub model: Llama,
    /// The tokenizer (`tokenizer.json`, or a converted SentencePiece
    /// `tokenizer.model`).
    pub tokenizer: Tokenizer,
    /// How conversations are rendered: the `chat_template` of
    /// `tokenizer_config.json` when there is one, else openPangu's format
    /// for an openPangu model (or a tokenizer with its turn markers), else
    /// none (prompts are used as raw text).
    pub chat: Option<Box<dyn ChatFormat>>,
    /// The folder's `config.json` text, written unchanged beside saved
    /// students so they keep their architecture name and keys.
    pub config_json: String,
}

impl std::fmt::Debug for ModelFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFolder")
            .field("dir", &self.dir)
            .field("model", &self.model.config().model_type)
            .field("chat", &self.chat.is_some())
            .finish()
    }
}

impl ModelFolder {
    /// Loads `dir`: `config.json`, the safetensors weights (single or
    /// sharded), the tokenizer and the chat format, and checks that the
    /// tokenizer and the special-token ids fit the model's vocabulary.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_json = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: config_path.clone(),
            source,
        })?;
        let model = Llama::load(dir, device, kind)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let c = model.config();
        let what = config_path.display().to_string();
        if tokenizer.vocab_size() > c.vocab_size {
            return Err(Error::invalid(
                &what,
                format!(
                    "`vocab_size` = {} but the tokenizer in {} has {} tokens",
                    c.vocab_size,
                    dir.display(),
                    tokenizer.vocab_size()
                ),
            ));
        }
        let specials = [
            (
                "bos_token_id",
                c.bos_token_id.into_iter().collect::<Vec<_>>(),
            ),
            ("eos_token_id", c.eos_token_ids.clone()),
            ("pad_token_id", c.pad_token_id.into_iter().collect()),
        ];
        for (key, ids) in specials {
            if let Some(id) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(Error::invalid(
                    &what,
                    format!(
                        "`{key}` = {id} is outside the vocabulary of {}",
                        c.vocab_size
                    ),
                ));
            }
        }
        if c.eos_token_ids.is_empty() {
            return Err(Error::invalid(
                &what,
                "`eos_token_id` is missing: generation needs an end-of-sequence id",
            ));
        }
        let chat = chat_format(dir, &c.model_type, &tokenizer)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            chat,
            config_json,
        })
    }

    /// Ids that end a response: the model's EOS ids.
    pub fn stop_ids(&self) -> Vec<TokenId> {
        self.model.config().eos_token_ids.clone()
    }

    /// BOS, when the model has one.
    pub fn bos(&self) -> Option<TokenId> {
        self.model.config().bos_token_id
    }

    /// Padding id: `pad_token_id`, else 0.
    pub fn pad_id(&self) -> TokenId {
        self.model.config().pad_token_id.unwrap_or(0)
    }

    /// What precedes a response in the response-alone pass of Δ-IFD: BOS
    /// and an empty conversation's assistant header (no instruction).
    pub fn alone_prefix(&self) -> Result<Vec<TokenId>> {
        let mut out: Vec<TokenId> = self.bos().into_iter().collect();
        if let Some(chat) = &self.chat {
            out.extend(self.tokenizer.encode(&chat.prompt(&[])?)?);
        }
        Ok(out)
    }
}

/// Picks the chat format of a folder (see [`ModelFolder::chat`]).
fn chat_format(
    dir: &Path,
    model_type: &str,
    tokenizer: &Tokenizer,
) -> Result<Option<Box<dyn ChatFormat>>> {
    let config = dir.join("tokenizer_config.json");
    if config.exists() {
        let text = std::fs::read_to_string(&config).map_err(|source| Error::Io {
            path: config.clone(),
            source,
        })?;
        if text.contains("\"chat_template\"") {
            return Ok(Some(Box::new(TemplateChat::from_tokenizer_config(
                &config,
            )?)));
        }
    }
    let pangu = model_type.to_ascii_lowercase().starts_with("pangu")
        || tokenizer.token_id(PANGU_TURN_START).is_some();
    Ok(pangu.then(|| Box::new(PanguChat) as Box<dyn ChatFormat>))
}

/// Teacher and student tokenizers must be the same: every id maps to the
/// same token. The error names the first id that differs.
pub fn check_same_tokenizer(teacher: &ModelFolder, student: &ModelFolder) -> Result<()> {
    let (t, s) = (&teacher.tokenizer, &student.tokenizer);
    let what = format!(
        "tokenizers of {} and {}",
        teacher.dir.display(),
        student.dir.display()
    );
    if t.vocab_size() != s.vocab_size() {
        return Err(Error::invalid(
            what,
            format!(
                "teacher has {} tokens, student {}; token-level distillation needs one vocabulary",
                t.vocab_size(),
                s.vocab_size()
            ),
        ));
    }
    for id in 0..t.vocab_size() as TokenId {
        let (a, b) = (t.token(id), s.token(id));
        if a != b {
            return Err(Error::invalid(
                what,
                format!("id {id} is {a:?} for the teacher and {b:?} for the student"),
            ));
        }
    }
    Ok(())
}

/// Token strings that close a thinking block: openPangu's `[unused17]`
/// and the `</think>` of Qwen- and DeepSeek-R1-style models.
pub const THINK_END_TOKENS: [&str; 2] = ["[unused17]", "</think>"];

/// The text a response is graded on: what follows its last
/// thinking-block close token (see [`THINK_END_TOKENS`]; the whole response
/// when it has none), decoded without special tokens. The close token is
/// found among the ids, so a tokenizer that treats it as special (and drops
/// it when decoding) still grades the answer, not the thinking.
pub fn graded_text(tokenizer: &Tokenizer, ids: &[TokenId]) -> Result<String> {
    let ends: Vec<TokenId> = THINK_END_TOKENS
        .iter()
        .filter_map(|t| tokenizer.token_id(t))
        .collect();
    let start = ids
        .iter()
        .rposition(|i| ends.contains(i))
        .map_or(0, |p| p + 1);
    tokenizer.decode(&ids[start..], true)
}

/// The final answer of a response, for exact-match evaluation of datasets
/// with an `answer` per prompt: the content of the last `\boxed{...}` if
/// there is one, else the last number (digits with an optional sign and
/// decimal point), else the whole text after any thinking block; trimmed.
pub fn final_answer(text: &str) -> Option<String> {
    let text = match text.rfind("[unused17]") {
        Some(i) => &text[i + "[unused17]".len()..],
        None => text,
    };
    if let Some(boxed) = npd_core::answer::last_boxed(text) {
        return Some(boxed);
    }
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end > 0 {
        let mut start = end;
        // Digits, a decimal point, and thousands separators (a comma with a
        // digit before it and three digits after).
        while start > 0 {
            let c = bytes[start - 1];
            let separator = c == b','
                && start >= 2
                && bytes[start - 2].is_ascii_digit()
                && bytes.len() >= start + 3
                && bytes[start..start + 3].iter().all(u8::is_ascii_digit)
                && bytes.get(start + 3).is_none_or(|b| !b.is_ascii_digit());
            if !(c.is_ascii_digit() || c == b'.' || separator) {
                break;
            }
            start -= 1;
        }
        if start > 0 && bytes[start - 1] == b'-' {
            start -= 1;
        }
        let number = text[start..end].trim_start_matches('.');
        if !number.is_empty() {
            return Some(number.to_string());
        }
    }
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers() {
        assert_eq!(
            final_answer("so \\boxed{x^{2}} ok").as_deref(),
            Some("x^{2}")
        );
        assert_eq!(final_answer("a 3, then -12.5.").as_deref(), Some("-12.5"));
        assert_eq!(
            final_answer("She pays $1,000,000 in all.").as_deref(),
            Some("1,000,000")
        );
        assert_eq!(final_answer("lists 1,2").as_deref(), Some("2"));
        assert_eq!(
            final_answer("[unused16]think 7[unused17] yes").as_deref(),
            Some("yes")
        );
        assert_eq!(final_answer("  "), None);
    }
}

/// Extensions of weight files, which a checkpoint writes itself.
const WEIGHT_EXTENSIONS: [&str; 9] = [
    "safetensors",
    "bin",
    "pt",
    "pth",
    "ckpt",
    "gguf",
    "h5",
    "msgpack",
    "onnx",
];

/// The files of model folder `dir` a checkpoint of its model carries
/// beside its own `config.json` and weights: tokenizer files, chat
/// templates, `generation_config.json`, the `*.py` modules `auto_map` names
/// (openPangu's `modeling_*.py`), licences; as (file name, bytes). Weight
/// files, weight indexes, `config.json`, hidden files and sub-folders are
/// left out.
pub fn companion_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let weights = Path::new(&name)
            .extension()
            .is_some_and(|e| WEIGHT_EXTENSIONS.iter().any(|w| e.eq_ignore_ascii_case(w)));
        if name.starts_with('.')
            || !path.is_file()
            || weights
            || name == "config.json"
            || name.ends_with(".index.json")
        {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|source| Error::Io { path, source })?;
        out.push((name, bytes));
    }
    out.sort();
    Ok(out)
}

/// The module names `auto_map` of `dir/config.json` refers to
/// (`"modeling_x.Class"` or `"repo--modeling_x.Class"` give `modeling_x`).
pub fn auto_map_modules(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return Vec::new();
    };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let mut modules: Vec<String> = config["auto_map"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| match v {
            serde_json::Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        })
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter_map(|v| {
            let local = v.rsplit("--").next().unwrap_or(&v).to_string();
            local.rsplit_once('.').map(|(module, _)| module.to_string())
        })
        .collect();
    modules.sort();
    modules.dedup();
    modules
}

#[cfg(test)]
mod companion_tests {
    use super::*;

    #[test]
    fn companions_are_the_small_files_beside_the_weights() {
        let dir = std::env::temp_dir().join(format!("npd-companions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in [
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "config.json",
            ".DS_Store",
            "sub/notes.txt",
            "tokenizer.model",
            "tokenizer_config.json",
            "modeling_x.py",
        ] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        std::fs::write(
            dir.join("config.json"),
            r#"{"auto_map": {"AutoConfig": "configuration_x.XConfig",
                "AutoModelForCausalLM": "org/repo--modeling_x.XForCausalLM",
                "AutoTokenizer": ["tokenization_x.XTokenizer", null]}}"#,
        )
        .unwrap();
        let files = companion_files(&dir).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["modeling_x.py", "tokenizer.model", "tokenizer_config.json"]
        );
        assert_eq!(files[1].1, b"tokenizer.model");
        assert_eq!(
            auto_map_modules(&dir),
            ["configuration_x", "modeling_x", "tokenization_x"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
