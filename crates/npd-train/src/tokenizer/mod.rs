//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, or a
//! SentencePiece `tokenizer.model` converted on load (openPangu ships only
//! the latter), plus chat formats.

pub mod chat;
pub mod sentencepiece;

use std::path::{Path, PathBuf};

use npd_core::{Error, Result, TokenId};

use self::sentencepiece::SentencePieceModel;

/// A text tokenizer. Special tokens (chat markers such as `[unused9]`) are
/// matched in text before anything else and map to their fixed ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
}

fn backend(context: String) -> impl FnOnce(tokenizers::Error) -> Error {
    move |e| Error::Backend { context, cause: e }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, or else converts `dir/tokenizer.model`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return Self::from_json_file(&json);
        }
        let model = dir.join("tokenizer.model");
        if model.exists() {
            return Self::from_sentencepiece_file(&model);
        }
        Err(Error::invalid(
            dir.display().to_string(),
            "has neither tokenizer.json nor tokenizer.model",
        ))
    }

    /// Loads a `tokenizer.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(backend(format!("loading {}", path.display())))?;
        Ok(Self {
            inner,
            source: path.to_path_buf(),
        })
    }

    /// Parses `tokenizer.json` text; `source` names it in errors.
    pub fn from_json_str(text: &str, source: &Path) -> Result<Self> {
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(backend(format!("parsing {}", source.display())))?;
        Ok(Self {
            inner,
            source: source.to_path_buf(),
        })
    }

    /// Converts a SentencePiece `tokenizer.model`.
    pub fn from_sentencepiece_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let what = path.display().to_string();
        let model = SentencePieceModel::parse(&bytes, &what)?;
        let json = model.to_tokenizer_json().to_string();
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(backend(format!("converting {what}")))?;
        Ok(Self {
            inner,
            source: path.to_path_buf(),
        })
    }

    /// The file it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Ids of `text`, without BOS or other added markers.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(backend(format!("encoding with {}", self.source.display())))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of `prompt ++ target` tokenized as one text, and how many of
    /// them belong to the prompt (tokens starting before the end of
    /// `prompt`).
    pub fn encode_pair(&self, prompt: &str, target: &str) -> Result<(Vec<TokenId>, usize)> {
        let text = format!("{prompt}{target}");
        let enc = self
            .inner
            .encode(text.as_str(), false)
            .map_err(backend(format!("encoding with {}", self.source.display())))?;
        let boundary = prompt.len();
        let prompt_len = enc
            .get_offsets()
            .iter()
            .take_while(|(start, _)| *start < boundary)
            .count();
        Ok((enc.get_ids().to_vec(), prompt_len))
    }

    /// Text of `ids`; special tokens are kept unless `skip_special`.
    pub fn decode(&self, ids: &[TokenId], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(backend(format!("decoding with {}", self.source.display())))
    }

    /// Id of a token string (a piece or an added token).
    pub fn token_id(&self, token: &str) -> Option<TokenId> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn token(&self, id: TokenId) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Writes the tokenizer as `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self
            .inner
            .to_string(true)
            .map_err(backend(format!("serialising {}", path.display())))?;
        crate::weights::write_atomic(path, text.as_bytes())
    }
}
