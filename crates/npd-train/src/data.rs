//! Prompt datasets: JSONL records, tokenized into examples.
//!
//! One JSON object per line:
//!
//! ```json
//! {"id": 17, "prompt": "37*3-9-9+9        =", "answer": "08"}
//! {"id": 18, "messages": [{"role": "user", "content": "Hi"}], "response": "Hello!"}
//! ```
//!
//! `prompt` (raw text) or `messages` (a conversation rendered with the
//! model's chat format) is required; `id` defaults to the line number;
//! `answer` is the expected final answer for evaluation; `response` a
//! reference reply. Unknown keys are rejected.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use npd_core::{Error, PromptId, Result, TokenId};

use crate::tokenizer::Tokenizer;
use crate::tokenizer::chat::{ChatFormat, Message};

/// One line of a prompts file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRecord {
    /// Stable id; the 0-based line number when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Raw prompt text (used as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A conversation, rendered with the chat format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// Expected final answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// A reference response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// The 1-based line it was read from (not a key of the file).
    #[serde(skip)]
    pub line: Option<usize>,
}

impl PromptRecord {
    /// Where the record is, for errors: its line and id.
    pub fn location(&self) -> String {
        let id = self.id.unwrap_or_default();
        match self.line {
            Some(line) => format!("line {line} (id {id})"),
            None => format!("record id {id}"),
        }
    }
}

/// A tokenized prompt with what evaluation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The prompt's id.
    pub id: PromptId,
    /// BOS and the rendered prompt.
    pub prompt: Vec<TokenId>,
    /// Expected final answer, if known.
    pub answer: Option<String>,
}

/// Reads a JSONL prompts file; a malformed line is an error naming the
/// file and line.
pub fn read_records(path: &Path) -> Result<Vec<PromptRecord>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = match line {
            Ok(line) => line,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::invalid(&at, "not valid UTF-8"));
            }
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let line = if i == 0 {
            npd_core::config::strip_bom(&line)
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut rec: PromptRecord = serde_json::from_str(line)
            .map_err(|e| Error::invalid(&at, format!("not a prompt record: {e}")))?;
        if rec.prompt.is_some() == rec.messages.is_some() {
            return Err(Error::invalid(
                &at,
                "expected exactly one of `prompt` and `messages`",
            ));
        }
        if rec.messages.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid(
                &at,
                "`messages` is empty: expected at least one message",
            ));
        }
        rec.id.get_or_insert(i as u64);
        rec.line = Some(i + 1);
        out.push(rec);
    }
    if out.is_empty() {
        return Err(Error::invalid(
            path.display().to_string(),
            "no prompt records",
        ));
    }
    let mut ids: Vec<u64> = out.iter().filter_map(|r| r.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(
            path.display().to_string(),
            format!("id {} appears twice", w[0]),
        ));
    }
    Ok(out)
}

/// Writes records as JSONL (atomically).
pub fn write_records(path: &Path, records: &[PromptRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("records serialise"));
        text.push('\n');
    }
    npd_core::fs::write_atomic(path, text.as_bytes())
}

pub use npd_core::shuffle::seeded_shuffle;

/// Prompts rejected before training, with the reason.
pub type Rejected = Vec<(PromptId, String)>;

/// Tokenizes records: BOS, then the prompt text or the rendered
/// conversation. Returns the examples and the records rejected for being
/// longer than `max_tokens`, with the reason.
pub fn tokenize(
    records: &[PromptRecord],
    tokenizer: &Tokenizer,
    chat: Option<&dyn ChatFormat>,
    bos: Option<TokenId>,
    max_tokens: usize,
) -> Result<(Vec<Example>, Rejected)> {
    let mut examples = Vec::new();
    let mut rejected = Vec::new();
    for r in records {
        let id = PromptId(r.id.unwrap_or_default());
        let text = match (&r.prompt, &r.messages, chat) {
            (Some(p), _, _) => p.clone(),
            (None, Some(m), Some(c)) => c.prompt(m)?,
            (None, Some(_), None) => {
                return Err(Error::invalid(
                    r.location(),
                    "has `messages` but no chat format is configured",
                ));
            }
            (None, None, _) => return Err(Error::invalid(r.location(), "has no prompt")),
        };
        let encoded = tokenizer.encode(&text)?;
        if encoded.is_empty() {
            return Err(Error::invalid(
                r.location(),
                format!(
                    "the prompt is empty (it encodes to no tokens{}); give it text or remove \
                     the record",
                    if bos.is_none() {
                        ", and the tokenizer has no BOS to start from"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut prompt: Vec<TokenId> = bos.into_iter().collect();
        prompt.extend(encoded);
        if prompt.len() > max_tokens {
            rejected.push((
                id,
                format!(
                    "prompt of {} tokens exceeds data.max_prompt_tokens = {max_tokens}",
                    prompt.len()
                ),
            ));
            continue;
        }
        examples.push(Example {
            id,
            prompt,
            answer: r.answer.clone(),
        });
    }
    Ok((examples, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("npd-data-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn malformed_lines_are_named_with_file_and_line() {
        let p = write("bad.jsonl", "{\"prompt\": \"a\"}\n\n{\"prompt\": 3}\n");
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:3", p.display())), "{err}");
        let p = write("both.jsonl", "{\"prompt\": \"a\", \"messages\": []}\n");
        assert!(
            read_records(&p)
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        let p = write(
            "empty-messages.jsonl",
            "{\"prompt\": \"a\"}\n{\"messages\": []}\n",
        );
        let err = read_records(&p).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}:2", p.display())) && err.contains("`messages` is empty"),
            "{err}"
        );
        let bad_utf8 = std::env::temp_dir().join(format!("npd-data-{}-utf8", std::process::id()));
        std::fs::write(&bad_utf8, b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
        let err = read_records(&bad_utf8).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}:2", bad_utf8.display())) && err.contains("UTF-8"),
            "{err}"
        );
        // A UTF-8 byte-order mark before the first record is skipped.
        let p = write("bom.jsonl", "\u{feff}{\"prompt\": \"a\"}\n");
        assert_eq!(read_records(&p).unwrap()[0].prompt.as_deref(), Some("a"));
        let p = write("extra.jsonl", "{\"prompt\": \"a\", \"promt\": 1}\n");
        assert!(read_records(&p).unwrap_err().to_string().contains("promt"));
        let p = write("empty.jsonl", "\n");
        assert!(
            read_records(&p)
                .unwrap_err()
                .to_string()
                .contains("no prompt records")
        );
        let p = write(
            "dup.jsonl",
            "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 1, \"prompt\": \"b\"}\n",
        );
        assert!(read_records(&p).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn long_prompts_are_rejected_with_a_reason() {
        // One token per character of the alphabet, after the three specials.
        let vocab: serde_json::Map<String, serde_json::Value> = ["<unk>", "<s>", "</s>"]
            .into_iter()
            .map(String::from)
            .chain("0123456789+=".chars().map(String::from))
            .enumerate()
            .map(|(i, t)| (t, i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."},
                              "behavior": "Isolated", "invert": false},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        });
        let tok = Tokenizer::from_json_str(&json.to_string(), Path::new("test")).unwrap();
        let p = write(
            "ok.jsonl",
            "{\"prompt\": \"12+3=\"}\n{\"prompt\": \"12+3+4+5+6+7=\"}\n",
        );
        let recs = read_records(&p).unwrap();
        assert_eq!(recs[1].id, Some(1));
        let (ex, rejected) = tokenize(&recs, &tok, None, Some(1), 8).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].prompt.len(), 6);
        assert_eq!(rejected[0].0, PromptId(1));
        assert!(rejected[0].1.contains("max_prompt_tokens"));

        // An empty prompt is named by its line and id before any run.
        let p = write(
            "empty-prompt.jsonl",
            "{\"prompt\": \"1=\"}\n\n{\"id\": 500, \"prompt\": \"\"}\n",
        );
        let recs = read_records(&p).unwrap();
        let err = tokenize(&recs, &tok, None, None, 8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3 (id 500)") && err.contains("empty") && err.contains("BOS"),
            "{err}"
        );
    }
}
