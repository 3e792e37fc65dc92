//! The model architecture, read from a Hugging Face `config.json`.

use std::path::Path;

use serde_json::{Map, Value};

use npd_core::{Error, Result, TokenId};

/// Architecture of a Llama-family decoder (openPangu-Embedded, Llama).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `model_type` as written in the file.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether q/k/v/o projections carry a bias (openPangu: yes).
    pub attention_bias: bool,
    /// Whether the output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest position the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<TokenId>,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<TokenId>,
    /// Padding id.
    pub pad_token_id: Option<TokenId>,
    /// Dtype of the stored weights (`torch_dtype` / `dtype`), if given.
    pub stored_dtype: Option<String>,
}

/// Largest parameter count a `config.json` may describe (10^12, a
/// thousand times openPangu-Embedded-1B's).
pub const MAX_PARAMETERS: u64 = 1_000_000_000_000;

/// `model_type` values read as a Llama-family decoder.
pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["llama", "PanguEmbedded", "pangu_embedded"];

impl ModelConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and checks config JSON; `origin` names it in errors.
    ///
    /// Accepts both openPangu's keys (`bias`, top-level `rope_theta`,
    /// `torch_dtype`) and transformers 5.x Llama keys (`attention_bias`,
    /// `mlp_bias`, `head_dim`, `rope_parameters`, `dtype`).
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid(origin, format!("not valid JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| Error::invalid(origin, "expected a JSON object"))?;
        let f = Fields { map, origin };

        let model_type = f.string("model_type")?;
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(f.bad(
                "model_type",
                &format!("one of {SUPPORTED_MODEL_TYPES:?} (a Llama-family decoder)"),
            ));
        }
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || hidden_size % num_heads != 0 && !map.contains_key("head_dim") {
            return Err(f.bad(
                "num_attention_heads",
                &format!("a divisor of hidden_size ({hidden_size})"),
            ));
        }
        let head_dim = f.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(f.bad(
                "num_key_value_heads",
                &format!("a divisor of num_attention_heads ({num_heads})"),
            ));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.bad("head_dim", "an even number > 0 (RoPE rotates pairs)"));
        }

        // Projection biases: openPangu's `bias`, or Llama's `attention_bias`.
        let attention_bias = match (f.opt_bool("bias")?, f.opt_bool("attention_bias")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(f.bad("attention_bias", "the same value as `bias`"));
            }
            (a, b) => a.or(b).unwrap_or(false),
        };
        if f.opt_bool("mlp_bias")? == Some(true) {
            return Err(f.bad("mlp_bias", "false (the MLP of this family has no bias)"));
        }
        let rope_theta = match map
            .get("rope_parameters")
            .or_else(|| map.get("rope_scaling"))
        {
            Some(Value::Object(rope)) => {
                let kind = rope
                    .get("rope_type")
                    .or_else(|| rope.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if kind != "default" {
                    return Err(f.bad(
                        "rope_parameters.rope_type",
                        "\"default\" (RoPE scaling is not implemented)",
                    ));
                }
                match rope.get("rope_theta").and_then(Value::as_f64) {
                    Some(t) => t,
                    None => f.opt_f64("rope_theta")?.unwrap_or(10000.0),
                }
            }
            Some(Value::Null) | None => f.opt_f64("rope_theta")?.unwrap_or(10000.0),
            Some(_) => return Err(f.bad("rope_parameters", "an object")),
        };
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(f.bad("rope_theta", "a finite number > 0"));
        }
        if let Some(act) = map.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(f.bad("hidden_act", "\"silu\""));
        }
        if f.opt_usize("sliding_window")?.is_some() {
            return Err(f.bad(
                "sliding_window",
                "null (sliding-window attention is not implemented)",
            ));
        }
        let rms_norm_eps = f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(f.bad("rms_norm_eps", "a finite number > 0"));
        }

        let config = ModelConfig {
            model_type,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rms_norm_eps,
            attention_bias,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            bos_token_id: f.opt_token("bos_token_id")?,
            eos_token_ids: f.tokens("eos_token_id")?,
            pad_token_id: f.opt_token("pad_token_id")?,
            stored_dtype: map
                .get("dtype")
                .or_else(|| map.get("torch_dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        for (key, v) in [
            ("vocab_size", config.vocab_size),
            ("intermediate_size", config.intermediate_size),
            ("num_hidden_layers", config.num_layers),
        ] {
            if v == 0 {
                return Err(f.bad(key, "a number > 0"));
            }
        }
        // Sizes no model has (a typo's extra zeros) would otherwise reach
        // libtorch's allocator and abort the process.
        if config.parameter_count().is_none_or(|n| n > MAX_PARAMETERS) {
            return Err(Error::invalid(
                format!(
                    "{origin}: `hidden_size`, `intermediate_size`, `vocab_size`, `num_hidden_layers`"
                ),
                format!(
                    "describe a model of more than {MAX_PARAMETERS} parameters \
                     (hidden {}, intermediate {}, vocabulary {}, {} layers); check for a typo",
                    config.hidden_size,
                    config.intermediate_size,
                    config.vocab_size,
                    config.num_layers
                ),
            ));
        }
        Ok(config)
    }

    /// The number of parameters the architecture has, or `None` when it
    /// does not fit in a `u64`.
    pub fn parameter_count(&self) -> Option<u64> {
        let n = |x: usize| u64::try_from(x).ok();
        let (h, i, v, l) = (
            n(self.hidden_size)?,
            n(self.intermediate_size)?,
            n(self.vocab_size)?,
            n(self.num_layers)?,
        );
        let q = n(self.num_heads)?.checked_mul(n(self.head_dim)?)?;
        let kv = n(self.num_kv_heads)?.checked_mul(n(self.head_dim)?)?;
        let attention = h
            .checked_mul(q.checked_add(kv.checked_mul(2)?)?)?
            .checked_mul(2)?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?;
        let layer = attention.checked_add(mlp)?.checked_add(h.checked_mul(2)?)?;
        let embeddings =
            v.checked_mul(h)?
                .checked_mul(if self.tie_word_embeddings { 1 } else { 2 })?;
        layer.checked_mul(l)?.checked_add(embeddings)
    }

    /// A transformers Llama `config.json` for this architecture
    /// (`LlamaForCausalLM` with `attention_bias`), loadable by transformers
    /// and vLLM.
    pub fn to_llama_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("architectures", Value::from(vec!["LlamaForCausalLM"]));
        put("model_type", "llama".into());
        put("vocab_size", self.vocab_size.into());
        put("hidden_size", self.hidden_size.into());
        put("intermediate_size", self.intermediate_size.into());
        put("num_hidden_layers", self.num_layers.into());
        put("num_attention_heads", self.num_heads.into());
        put("num_key_value_heads", self.num_kv_heads.into());
        put("head_dim", self.head_dim.into());
        put("hidden_act", "silu".into());
        put("rms_norm_eps", self.rms_norm_eps.into());
        put("rope_theta", self.rope_theta.into());
        put(
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": self.rope_theta}),
        );
        put("attention_bias", self.attention_bias.into());
        put("mlp_bias", false.into());
        put("tie_word_embeddings", self.tie_word_embeddings.into());
        put(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
        );
        put("bos_token_id", self.bos_token_id.into());
        put(
            "eos_token_id",
            match self.eos_token_ids.as_slice() {
                [one] => (*one).into(),
                many => many.to_vec().into(),
            },
        );
        put("pad_token_id", self.pad_token_id.into());
        put(
            "torch_dtype",
            self.stored_dtype.clone().unwrap_or("float32".into()).into(),
        );
        Value::Object(m)
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// Typed access to config fields with errors naming file and key.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    origin: &'a str,
}

impl Fields<'_> {
    fn bad(&self, key: &str, expected: &str) -> Error {
        let got = self
            .map
            .get(key.split('.').next().unwrap_or(key))
            .map_or("missing".to_string(), Value::to_string);
        Error::invalid(
            format!("{}: `{key}`", self.origin),
            format!("is {got}, expected {expected}"),
        )
    }

    fn string(&self, key: &str) -> Result<String> {
        self.map
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.bad(key, "a string"))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.bad(key, "a non-negative integer"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a number")),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, "true or false")),
        }
    }

    /// `n` as a token id; ids that do not fit in 32 bits are an error, not
    /// silently cut.
    fn token(&self, key: &str, n: u64) -> Result<TokenId> {
        TokenId::try_from(n).map_err(|_| self.bad(key, "a token id below 2^32"))
    }

    fn opt_token(&self, key: &str) -> Result<Option<TokenId>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| self.bad(key, "a token id"))?;
                self.token(key, n).map(Some)
            }
        }
    }

    fn tokens(&self, key: &str) -> Result<Vec<TokenId>> {
        let expected = "a token id or a list of token ids";
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    let n = v.as_u64().ok_or_else(|| self.bad(key, expected))?;
                    self.token(key, n)
                })
                .collect(),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| self.bad(key, expected))?;
                Ok(vec![self.token(key, n)?])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PANGU_1B: &str = r#"{
        "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded",
        "hidden_size": 1536, "num_hidden_layers": 26, "num_attention_heads": 12,
        "num_key_value_heads": 6, "intermediate_size": 6144, "vocab_size": 153376,
        "max_position_embeddings": 32768, "rope_theta": 4000000.0, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": true, "bias": true, "bos_token_id": 1,
        "eos_token_id": 45892, "pad_token_id": 0, "torch_dtype": "bfloat16"
    }"#;

    #[test]
    fn sizes_no_model_has_are_refused_before_allocation() {
        let c = ModelConfig::from_json(PANGU_1B, "config.json").unwrap();
        let n = c.parameter_count().unwrap();
        assert!((1_000_000_000..2_000_000_000).contains(&n), "{n}");
        for (key, value) in [
            ("hidden_size", 1_536_000_000_u64),
            ("num_hidden_layers", 1 << 40),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(PANGU_1B).unwrap();
            v[key] = value.into();
            if key == "hidden_size" {
                v["head_dim"] = 128.into();
            }
            let err = ModelConfig::from_json(&v.to_string(), "config.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains("check for a typo"), "{key}: {err}");
        }
    }

    #[test]
    fn token_ids_beyond_32_bits_are_refused_not_cut() {
        for json in [
            r#"{"eos_token_id": 4294967300}"#,
            r#"{"eos_token_id": [2, 4294967300]}"#,
            r#"{"bos_token_id": 4294967296}"#,
        ] {
            let mut v: serde_json::Value = serde_json::from_str(PANGU_1B).unwrap();
            let over: serde_json::Value = serde_json::from_str(json).unwrap();
            for (k, x) in over.as_object().unwrap() {
                v[k] = x.clone();
            }
            let err = ModelConfig::from_json(&v.to_string(), "config.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains("below 2^32"), "{json}: {err}");
        }
    }

    #[test]
    fn reads_the_openpangu_1b_config() {
        let c = ModelConfig::from_json(PANGU_1B, "config.json").unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.kv_groups(), 2);
        assert!(c.attention_bias && c.tie_word_embeddings);
        assert_eq!(c.rope_theta, 4e6);
        assert_eq!(c.eos_token_ids, vec![45892]);
        assert_eq!(c.stored_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn llama_json_round_trips() {
        let c = ModelConfig::from_json(PANGU_1B, "config.json").unwrap();
        let back = ModelConfig::from_json(&c.to_llama_json().to_string(), "x").unwrap();
        assert_eq!(
            ModelConfig {
                model_type: "PanguEmbedded".into(),
                ..back
            },
            c
        );
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let cases = [
            (
                r#""model_type": "PanguEmbedded""#,
                r#""model_type": "gpt2""#,
                "`model_type`",
            ),
            (
                r#""num_attention_heads": 12"#,
                r#""num_attention_heads": 7"#,
                "`num_attention_heads`",
            ),
            (
                r#""num_key_value_heads": 6"#,
                r#""num_key_value_heads": 5"#,
                "`num_key_value_heads`",
            ),
            (
                r#""vocab_size": 153376"#,
                r#""vocab_size": "big""#,
                "`vocab_size`",
            ),
            (
                r#""bias": true"#,
                r#""bias": true, "rope_scaling": {"rope_type": "yarn", "factor": 4}"#,
                "rope_type",
            ),
            (
                r#""bias": true"#,
                r#""bias": true, "attention_bias": false"#,
                "`attention_bias`",
            ),
        ];
        for (from, to, key) in cases {
            let text = PANGU_1B.replace(from, to);
            let err = ModelConfig::from_json(&text, "m/config.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("m/config.json") && err.contains(key),
                "{to}: {err}"
            );
        }
        let err = ModelConfig::from_json("{", "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m/config.json") && err.contains("JSON"),
            "{err}"
        );
    }
}
