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
