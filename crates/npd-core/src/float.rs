//! Floating-point values in JSON state files. JSON has no infinities or
//! NaN (serde_json writes them as `null` and cannot read that back as a
//! number), yet a threshold of `-inf` is meaningful: these helpers write
//! non-finite values as the strings `"inf"`, `"-inf"` and `"NaN"`, and read
//! both forms.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A float as stored: a number, or the name of a non-finite value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Number(f64),
    Name(String),
}

fn store(x: f64) -> Stored {
    if x.is_finite() {
        Stored::Number(x)
    } else if x.is_nan() {
        Stored::Name("NaN".into())
    } else if x > 0.0 {
        Stored::Name("inf".into())
    } else {
        Stored::Name("-inf".into())
    }
}

fn load<E: serde::de::Error>(s: Stored) -> Result<f64, E> {
    match s {
        Stored::Number(x) => Ok(x),
        Stored::Name(n) => match n.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            other => Err(E::custom(format!(
                "expected a number, \"inf\", \"-inf\" or \"NaN\", got {other:?}"
            ))),
        },
    }
}

/// `#[serde(with = "npd_core::float::pair")]` for an `Option<(f64, f64)>`
/// that may hold infinities.
pub mod pair {
    use super::*;

    /// Writes the pair, non-finite values by name.
    pub fn serialize<S: Serializer>(v: &Option<(f64, f64)>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|(a, b)| (store(a), store(b))).serialize(s)
    }

    /// Reads a pair written by [`serialize`] (or plain numbers).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(f64, f64)>, D::Error> {
        let v: Option<(Stored, Stored)> = Option::deserialize(d)?;
        v.map(|(a, b)| Ok((load(a)?, load(b)?))).transpose()
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super::pair")]
        p: Option<(f64, f64)>,
    }

    #[test]
    fn infinities_round_trip_through_json() {
        for p in [
            Some((f64::NEG_INFINITY, 0.5)),
            Some((-1.0, f64::INFINITY)),
            None,
        ] {
            let text = serde_json::to_string(&T { p }).unwrap();
            let back: T = serde_json::from_str(&text).unwrap();
            assert_eq!(back, T { p }, "{text}");
        }
        let nan: T = serde_json::from_str(r#"{"p": ["NaN", 1]}"#).unwrap();
        assert!(nan.p.unwrap().0.is_nan());
        let bad = serde_json::from_str::<T>(r#"{"p": ["huge", 1]}"#).unwrap_err();
        assert!(bad.to_string().contains("\"huge\""), "{bad}");
    }
}
