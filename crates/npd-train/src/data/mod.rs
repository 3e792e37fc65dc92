//! Prompt datasets: JSONL or parquet records, tokenized into examples.
//!
//! One JSON object per line, or one parquet row:
//!
//! ```json
//! {"id": 17, "prompt": "37*3-9-9+9        =", "answer": "08"}
//! {"id": 18, "messages": [{"role": "user", "content": "Hi"}], "response": "Hello!"}
//! ```
//!
//! `prompt` (raw text) or `messages` (a conversation rendered with the
//! model's chat format) is required; `id` defaults to the line (row)
//! number; `answer` is the expected final answer for evaluation (a string
//! or a number; a GSM8K-style solution ending in `#### 72` works as is);
//! `response` a reference reply. Without a [`Fields`] map other keys are
//! rejected (a misspelt `answer` would otherwise leave every record
//! ungraded); with one, the fields are read from the columns it names
//! (each unnamed field from the column of its own name) and other columns
//! are ignored. A file whose name ends in `.parquet` is read as parquet
//! (snappy, zstd or uncompressed), anything else as JSONL.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use npd_core::{Error, PromptId, Result, TokenId};

use crate::tokenizer::chat::Message;

mod tokenize;
pub use tokenize::{Rejected, tokenize, tokenize_styled};

/// One record of a prompts file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRecord {
    /// Stable id; the 0-based line (row) number when absent.
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
    /// The 1-based line (JSONL) or row (parquet) it was read from (not a
    /// key of the file).
    #[serde(skip)]
    pub line: Option<usize>,
    /// `line` counts the rows of a parquet file (not a key of the file).
    #[serde(skip)]
    pub in_rows: bool,
}

impl PromptRecord {
    /// Where the record is, for errors: its line and id.
    pub fn location(&self) -> String {
        let id = self.id.unwrap_or_default();
        match self.line {
            Some(line) if self.in_rows => format!("row {line} (id {id})"),
            Some(line) => format!("line {line} (id {id})"),
            None => format!("record id {id}"),
        }
    }
}

/// The column each field of a prompt record is read from (`data.fields`):
/// `{ prompt = "problem", answer = "solution" }` reads a dataset that
/// calls them so. Two fields may share a column (GSM8K's `answer` holds
/// the reference solution and, after `####`, the final answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fields {
    /// Column of the record's id (an integer).
    pub id: String,
    /// Column of the raw prompt text.
    pub prompt: String,
    /// Column of the conversation (a list of `{role, content}`).
    pub messages: String,
    /// Column of the expected final answer.
    pub answer: String,
    /// Column of the reference response.
    pub response: String,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            id: "id".into(),
            prompt: "prompt".into(),
            messages: "messages".into(),
            answer: "answer".into(),
            response: "response".into(),
        }
    }
}

impl Fields {
    /// (field, column) pairs.
    fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            ("id", &self.id),
            ("prompt", &self.prompt),
            ("messages", &self.messages),
            ("answer", &self.answer),
            ("response", &self.response),
        ]
    }

    /// Reads one record from `object`; `strict` rejects columns no field
    /// reads. `at` names the record for errors.
    fn record<'s>(
        &'s self,
        object: &'s Map<String, Value>,
        strict: bool,
        at: &str,
    ) -> Result<PromptRecord> {
        if strict
            && let Some(k) = object
                .keys()
                .find(|k| self.pairs().iter().all(|(_, c)| c != k))
        {
            return Err(Error::invalid(
                at,
                format!(
                    "not a prompt record: unknown field `{k}`, expected one of `id`, `prompt`, \
                     `messages`, `answer`, `response` (name a dataset's own columns with \
                     data.fields, which also ignores the others)"
                ),
            ));
        }
        fn get<'a>(
            object: &'a Map<String, Value>,
            field: &'a str,
            column: &'a str,
        ) -> Option<(&'a str, &'a str, &'a Value)> {
            (object.get(column))
                .filter(|v| !v.is_null())
                .map(|v| (field, column, v))
        }
        let get = |field: &'static str, column: &'s str| get(object, field, column);
        let wrong = |field: &str, column: &str, expected: &str, v: &Value| {
            let shown = v.to_string();
            let shown = if shown.chars().count() > 60 {
                format!("{}...", shown.chars().take(60).collect::<String>())
            } else {
                shown
            };
            Error::invalid(
                at,
                if field == column {
                    format!("`{field}`: expected {expected}, found {shown}")
                } else {
                    format!("`{field}` (column `{column}`): expected {expected}, found {shown}")
                },
            )
        };
        let text = |(field, column, v): (&str, &str, &Value)| match v {
            Value::String(s) => Ok(s.clone()),
            v => Err(wrong(field, column, "a string", v)),
        };
        let id = match get("id", &self.id) {
            None => None,
            Some((f, c, v)) => Some(
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(|| wrong(f, c, "a non-negative integer", v))?,
            ),
        };
        let answer = match get("answer", &self.answer) {
            None => None,
            Some((_, _, Value::Number(n))) => Some(n.to_string()),
            Some(x) => Some(text(x)?),
        };
        let messages = match get("messages", &self.messages) {
            None => None,
            Some((f, c, v)) => Some(serde_json::from_value::<Vec<Message>>(v.clone()).map_err(
                |e| {
                    wrong(
                        f,
                        c,
                        &format!("a list of {{role, content}} messages ({e})"),
                        v,
                    )
                },
            )?),
        };
        Ok(PromptRecord {
            id,
            prompt: get("prompt", &self.prompt).map(text).transpose()?,
            messages,
            answer,
            response: get("response", &self.response).map(text).transpose()?,
            line: None,
            in_rows: false,
        })
    }
}

/// A tokenized prompt with what evaluation and SFT on references need.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The prompt's id.
    pub id: PromptId,
    /// BOS and the rendered prompt.
    pub prompt: Vec<TokenId>,
    /// Expected final answer, if known.
    pub answer: Option<String>,
    /// The record's reference response, tokenized (no end marker), if it
    /// has one.
    pub response: Option<Vec<TokenId>>,
}

/// Reads a JSONL prompts file with the default field names; see
/// [`read_prompts`].
pub fn read_records(path: &Path) -> Result<Vec<PromptRecord>> {
    read_prompts(path, None)
}

/// Reads a prompts file, JSONL or parquet (by the `.parquet` extension),
/// with `fields` naming its columns (`None`: npd's own names, and other
/// keys rejected). A malformed record is an error naming the file and
/// line (row); so is a column `fields` names that no record has.
pub fn read_prompts(path: &Path, fields: Option<&Fields>) -> Result<Vec<PromptRecord>> {
    let objects = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        parquet_rows(path)?
    } else {
        jsonl_objects(path)?
    };
    let (map, strict) = match fields {
        Some(f) => (f.clone(), false),
        None => (Fields::default(), true),
    };
    if let Some(f) = fields {
        let columns: std::collections::HashSet<&String> =
            objects.iter().flat_map(|(_, o)| o.keys()).collect();
        for ((field, column), (_, own)) in f.pairs().into_iter().zip(Fields::default().pairs()) {
            if column != own && !columns.contains(&column.to_string()) {
                let mut have: Vec<&str> = columns.iter().map(|c| c.as_str()).collect();
                have.sort_unstable();
                return Err(Error::invalid(
                    path.display().to_string(),
                    format!(
                        "data.fields.{field} = \"{column}\": no record has a column `{column}`; \
                         the file's columns: {}",
                        have.join(", ")
                    ),
                ));
            }
        }
    }
    let parquet = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let mut out = Vec::new();
    for (i, object) in objects {
        let at = if parquet {
            format!("{}: row {}", path.display(), i + 1)
        } else {
            format!("{}:{}", path.display(), i + 1)
        };
        let mut rec = map.record(&object, strict, &at)?;
        if rec.prompt.is_some() == rec.messages.is_some() {
            return Err(Error::invalid(
                &at,
                format!(
                    "expected exactly one of `prompt`{} and `messages`{}",
                    column_note(&map.prompt, "prompt"),
                    column_note(&map.messages, "messages")
                ),
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
        rec.in_rows = parquet;
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

/// ` (column `c`)` where a field is read from a column of another name.
fn column_note(column: &str, field: &str) -> String {
    if column == field {
        String::new()
    } else {
        format!(" (column `{column}`)")
    }
}

/// The JSON objects of a JSONL file with their 0-based line numbers;
/// blank lines skipped.
fn jsonl_objects(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
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
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => out.push((i, o)),
            Ok(v) => {
                return Err(Error::invalid(
                    &at,
                    format!("not a prompt record: expected a JSON object, found {v}"),
                ));
            }
            Err(e) => return Err(Error::invalid(&at, format!("not a prompt record: {e}"))),
        }
    }
    Ok(out)
}

/// The rows of a parquet file as JSON objects (column name to value),
/// with their 0-based row numbers.
fn parquet_rows(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |e: parquet::errors::ParquetError| {
        Error::invalid(
            path.display().to_string(),
            format!("not a readable parquet file: {e}"),
        )
    };
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let mut out = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(|e| {
            Error::invalid(format!("{}: row {}", path.display(), i + 1), e.to_string())
        })?;
        match row.to_json_value() {
            Value::Object(o) => out.push((i, o)),
            v => {
                return Err(Error::invalid(
                    format!("{}: row {}", path.display(), i + 1),
                    format!("expected a record, found {v}"),
                ));
            }
        }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch file of this test process named `name`, holding `text`.
    pub(crate) fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("npd-data-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/prompts")
            .join(name)
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        let mut f = Fields::default();
        for (field, column) in pairs {
            let slot = match *field {
                "id" => &mut f.id,
                "prompt" => &mut f.prompt,
                "messages" => &mut f.messages,
                "answer" => &mut f.answer,
                _ => &mut f.response,
            };
            *slot = column.to_string();
        }
        f
    }

    #[test]
    fn a_field_map_reads_a_datasets_own_columns_and_ignores_the_others() {
        let p = write(
            "renamed.jsonl",
            "{\"problem\": \"1+1=\", \"solution\": \"One and one.\\n#### 2\", \"level\": 3}\n\
             {\"problem\": \"2+2=\", \"solution\": \"#### 4\", \"idx\": \"17\"}\n",
        );
        let map = fields(&[
            ("prompt", "problem"),
            ("answer", "solution"),
            ("response", "solution"),
            ("id", "idx"),
        ]);
        let recs = read_prompts(&p, Some(&map)).unwrap();
        assert_eq!(recs[0].prompt.as_deref(), Some("1+1="));
        assert_eq!(recs[0].answer.as_deref(), Some("One and one.\n#### 2"));
        assert_eq!(recs[0].response, recs[0].answer);
        // An id from a string of digits; a number answer as its text.
        assert_eq!(recs[1].id, Some(17));
        let number = write("number.jsonl", "{\"prompt\": \"x\", \"answer\": 72}\n");
        assert_eq!(
            read_records(&number).unwrap()[0].answer.as_deref(),
            Some("72")
        );
        assert_eq!(recs[0].id, Some(0), "the line number without an id");
        // Without the map, the first unknown key is named, with the fix.
        let err = read_records(&p).unwrap_err().to_string();
        assert!(
            err.contains("renamed.jsonl:1") && err.contains("unknown field `level`"),
            "{err}"
        );
        assert!(err.contains("data.fields"), "{err}");
        // A column the map names that no record has.
        let typo = fields(&[("prompt", "problem"), ("answer", "soluton")]);
        let err = read_prompts(&p, Some(&typo)).unwrap_err().to_string();
        assert!(
            err.contains("data.fields.answer = \"soluton\"")
                && err.contains("level, problem, solution"),
            "{err}"
        );
        // A value of the wrong kind names the record, field and column.
        let p = write("wrong-kind.jsonl", "{\"q\": \"a\"}\n{\"q\": [1, 2]}\n");
        let err = read_prompts(&p, Some(&fields(&[("prompt", "q")])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2")
                && err.contains("`prompt` (column `q`): expected a string, found [1,2]"),
            "{err}"
        );
    }

    #[test]
    fn parquet_rows_read_like_jsonl_records() {
        let train = fixture("sums-train.parquet");
        let map = fields(&[
            ("id", "uid"),
            ("prompt", "question"),
            ("answer", "solution"),
        ]);
        let recs = read_prompts(&train, Some(&map)).unwrap();
        assert_eq!(recs.len(), 40);
        assert_eq!(recs[0].id, Some(1000));
        assert_eq!(recs[0].prompt.as_deref(), Some("1+2="));
        assert_eq!(recs[0].answer.as_deref(), Some("1 plus 2 is 3.\n#### 3"));
        assert_eq!(recs[0].location(), "row 1 (id 1000)");
        // A list of structs is a conversation.
        let chat = fields(&[("id", "uid"), ("messages", "chat")]);
        let recs = read_prompts(&train, Some(&chat)).unwrap();
        let m = recs[3].messages.as_ref().unwrap();
        assert_eq!((m.len(), m[0].content.as_str()), (1, "4+5="));
        // Without a map its extra columns are refused, naming the row.
        let err = read_records(&train).unwrap_err().to_string();
        assert!(
            err.contains("row 1") && err.contains("data.fields"),
            "{err}"
        );
        // Mapping both a prompt and a conversation is ambiguous.
        let both = fields(&[("prompt", "question"), ("messages", "chat")]);
        let err = read_prompts(&train, Some(&both)).unwrap_err().to_string();
        assert!(
            err.contains("row 1") && err.contains("exactly one of `prompt` (column `question`)"),
            "{err}"
        );
        // A file that is not parquet.
        let fake = write("fake.parquet", "{\"prompt\": \"a\"}\n");
        let err = read_records(&fake).unwrap_err().to_string();
        assert!(
            err.contains("fake.parquet") && err.contains("not a readable parquet file"),
            "{err}"
        );
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
}
