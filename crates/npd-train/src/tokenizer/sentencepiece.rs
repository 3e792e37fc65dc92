//! Reading a SentencePiece `tokenizer.model` and converting it into a
//! `tokenizers` tokenizer (the same conversion transformers applies to
//! Llama-style models with `legacy: true`).
//!
//! The model file is a protobuf `ModelProto`; only the fields the
//! conversion needs are read: the pieces (text, score, type), the model
//! type and byte fallback from the trainer spec, and the normaliser spec.

use base64::Engine;
use serde_json::{Value, json};

use npd_core::{Error, Result};

/// Kind of a SentencePiece piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary subword.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control symbol such as `<s>`; never produced from text by
    /// SentencePiece itself.
    Control,
    /// A user-defined symbol, always matched as a whole.
    UserDefined,
    /// Reserved, unused.
    Unused,
    /// A byte-fallback piece `<0xNN>`.
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (`▁` for spaces).
    pub piece: String,
    /// Its score (log-probability for unigram, merge priority for BPE).
    pub score: f32,
    /// Its kind.
    pub kind: PieceType,
}

/// The segmentation algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model (Viterbi).
    Unigram,
    /// Byte-pair encoding by piece score.
    Bpe,
}

/// The parts of a SentencePiece model the conversion uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    /// Vocabulary, indexed by id.
    pub pieces: Vec<Piece>,
    /// Segmentation algorithm.
    pub model_type: ModelType,
    /// Whether unknown characters become byte pieces.
    pub byte_fallback: bool,
    /// Normalisation rule name (`identity`, `nmt_nfkc`, ...).
    pub normalizer_name: String,
    /// Compiled normalisation map (empty for `identity`).
    pub precompiled_charsmap: Vec<u8>,
    /// Whether a `▁` is prepended to the text.
    pub add_dummy_prefix: bool,
    /// Whether leading, trailing and repeated whitespace is removed.
    pub remove_extra_whitespaces: bool,
    /// Whether spaces become `▁`.
    pub escape_whitespaces: bool,
    /// Whether digits are split into single pieces.
    pub split_digits: bool,
}

/// A protobuf reader over one message.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'a str,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'a str) -> Self {
        Self { buf, at: 0, what }
    }

    fn err(&self, msg: &str) -> Error {
        Error::invalid(
            self.what.to_string(),
            format!("malformed SentencePiece model at byte {}: {msg}", self.at),
        )
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.at)
                .ok_or_else(|| self.err("truncated varint"))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| self.err("field runs past the end"))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// Next `(field number, value)`, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(self.err(&format!("unsupported wire type {t}"))),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::invalid(what.to_string(), "a piece is not valid UTF-8"))
}

impl SentencePieceModel {
    /// Parses the bytes of a `tokenizer.model`; `what` names the file in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let mut model = SentencePieceModel {
            pieces: Vec::new(),
            model_type: ModelType::Unigram,
            byte_fallback: false,
            normalizer_name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            split_digits: false,
        };
        let mut r = Reader::new(bytes, what);
        let mut specs = (false, false);
        while let Some((num, field)) = r.next()? {
            match (num, field) {
                (1, Field::Bytes(b)) => model.pieces.push(Self::piece(b, what)?),
                (2, Field::Bytes(b)) => {
                    model.trainer_spec(b, what)?;
                    specs.0 = true;
                }
                (3, Field::Bytes(b)) => {
                    model.normalizer_spec(b, what)?;
                    specs.1 = true;
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() || !specs.0 || !specs.1 {
            return Err(Error::invalid(
                what.to_string(),
                "malformed SentencePiece model: pieces, trainer spec or normalizer spec \
                 missing (a truncated file?)",
            ));
        }
        Ok(model)
    }

    fn piece(b: &[u8], what: &str) -> Result<Piece> {
        let mut p = Piece {
            piece: String::new(),
            score: 0.0,
            kind: PieceType::Normal,
        };
        let mut r = Reader::new(b, what);
        while let Some((num, field)) = r.next()? {
            match (num, field) {
                (1, Field::Bytes(s)) => p.piece = utf8(s, what)?,
                (2, Field::Fixed32(f)) => p.score = f32::from_bits(f),
                (3, Field::Varint(t)) => {
                    p.kind = match t {
                        1 => PieceType::Normal,
                        2 => PieceType::Unknown,
                        3 => PieceType::Control,
                        4 => PieceType::UserDefined,
                        5 => PieceType::Unused,
                        6 => PieceType::Byte,
                        other => {
                            return Err(Error::invalid(
                                what.to_string(),
                                format!("piece {:?} has unknown type {other}", p.piece),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }

    fn trainer_spec(&mut self, b: &[u8], what: &str) -> Result<()> {
        let mut r = Reader::new(b, what);
        while let Some((num, field)) = r.next()? {
            match (num, field) {
                (3, Field::Varint(t)) => {
                    self.model_type = match t {
                        1 => ModelType::Unigram,
                        2 => ModelType::Bpe,
                        other => {
                            return Err(Error::invalid(
                                what.to_string(),
                                format!(
                                    "SentencePiece model type {other} (word or char) is not \
                                     supported; expected unigram or BPE"
                                ),
                            ));
                        }
                    }
                }
                (25, Field::Varint(v)) => self.split_digits = v != 0,
                (35, Field::Varint(v)) => self.byte_fallback = v != 0,
                _ => {}
            }
        }
        Ok(())
    }

    fn normalizer_spec(&mut self, b: &[u8], what: &str) -> Result<()> {
        let mut r = Reader::new(b, what);
        while let Some((num, field)) = r.next()? {
            match (num, field) {
                (1, Field::Bytes(s)) => self.normalizer_name = utf8(s, what)?,
                (2, Field::Bytes(s)) => self.precompiled_charsmap = s.to_vec(),
                (3, Field::Varint(v)) => self.add_dummy_prefix = v != 0,
                (4, Field::Varint(v)) => self.remove_extra_whitespaces = v != 0,
                (5, Field::Varint(v)) => self.escape_whitespaces = v != 0,
                _ => {}
            }
        }
        Ok(())
    }

    /// The id of the unknown piece.
    pub fn unk_id(&self) -> Option<usize> {
        self.pieces
            .iter()
            .position(|p| p.kind == PieceType::Unknown)
    }

    /// The equivalent `tokenizer.json` document.
    ///
    /// Control, user-defined and unknown pieces become special added tokens,
    /// matched in text before segmentation, so text is split on them and
    /// every other chunk is normalised and segmented on its own (each chunk
    /// gets the dummy prefix, as openPangu's slow tokenizer with
    /// `legacy: true` does). BPE merges are derived from the vocabulary,
    /// ordered by the merged piece's score.
    pub fn to_tokenizer_json(&self) -> Value {
        let unk = self.unk_id();
        let added: Vec<Value> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                matches!(
                    p.kind,
                    PieceType::Control | PieceType::UserDefined | PieceType::Unknown
                )
            })
            .map(|(id, p)| {
                json!({"id": id, "content": p.piece, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();

        let mut normalizers = Vec::new();
        if !self.precompiled_charsmap.is_empty() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&self.precompiled_charsmap);
            normalizers.push(json!({"type": "Precompiled", "precompiled_charsmap": b64}));
        }
        if self.remove_extra_whitespaces {
            normalizers.push(json!({"type": "Strip", "strip_left": true, "strip_right": true}));
            normalizers
                .push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
        }
        if self.add_dummy_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        if self.escape_whitespaces {
            normalizers
                .push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        }
        let pre_tokenizer = if self.split_digits {
            json!({"type": "Digits", "individual_digits": true})
        } else {
            Value::Null
        };
        let mut decoders =
            vec![json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})];
        if self.byte_fallback {
            decoders.push(json!({"type": "ByteFallback"}));
        }
        decoders.push(json!({"type": "Fuse"}));
        if self.add_dummy_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }

        let model = match self.model_type {
            ModelType::Unigram => json!({
                "type": "Unigram",
                "unk_id": unk,
                "vocab": self.pieces.iter().map(|p| json!([p.piece, p.score])).collect::<Vec<_>>(),
                "byte_fallback": self.byte_fallback,
            }),
            ModelType::Bpe => {
                let vocab: serde_json::Map<String, Value> = self
                    .pieces
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.piece.clone(), json!(i)))
                    .collect();
                json!({
                    "type": "BPE",
                    "dropout": null,
                    "unk_token": unk.map(|u| self.pieces[u].piece.clone()),
                    "continuing_subword_prefix": null,
                    "end_of_word_suffix": null,
                    "fuse_unk": true,
                    "byte_fallback": self.byte_fallback,
                    "ignore_merges": false,
                    "vocab": vocab,
                    "merges": self.merges().into_iter().map(|(l, r)| json!([l, r])).collect::<Vec<_>>(),
                })
            }
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": if normalizers.is_empty() { Value::Null } else { json!({"type": "Sequence", "normalizers": normalizers}) },
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": model,
        })
    }

    /// BPE merges: every split of a normal piece into two pieces of the
    /// vocabulary, ordered by the merged piece's score (highest first), then
    /// by the ids of the two halves.
    fn merges(&self) -> Vec<(String, String)> {
        let ids: std::collections::HashMap<&str, usize> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.piece.as_str(), i))
            .collect();
        let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (id, p) in self.pieces.iter().enumerate() {
            if p.kind != PieceType::Normal {
                continue;
            }
            let mut local = Vec::new();
            for (split, _) in p.piece.char_indices().skip(1) {
                let (l, r) = p.piece.split_at(split);
                if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                    local.push((p.score, li, ri, id));
                }
            }
            local.sort_by_key(|&(_, l, r, _)| (l, r));
            merges.extend(local);
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0));
        merges
            .into_iter()
            .map(|(_, l, r, _)| (self.pieces[l].piece.clone(), self.pieces[r].piece.clone()))
            .collect()
    }
}
