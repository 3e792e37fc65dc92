//! The distillation methods a run can compare.

use serde::{Deserialize, Serialize};

/// Which method a run trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Supervised fine-tuning on teacher-written responses.
    Sft,
    /// Synchronous on-policy distillation.
    OnPolicy,
    /// Near-Policy Distillation.
    NearPolicy,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 3] = [Method::Sft, Method::OnPolicy, Method::NearPolicy];

    /// Name in reports and metrics lines.
    pub fn name(self) -> &'static str {
        match self {
            Method::Sft => "SFT",
            Method::OnPolicy => "on-policy",
            Method::NearPolicy => "NPD",
        }
    }

    /// Name in file names and on the command line.
    pub fn slug(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::OnPolicy => "on-policy",
            Method::NearPolicy => "npd",
        }
    }

    /// The method named `slug` (see [`Method::slug`]).
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.slug() == slug)
    }

    /// The method with report name `name` (see [`Method::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialises a [`Method`] as its report name ([`Method::name`]), as
/// metrics lines carry it: `#[serde(with = "npd_core::method::by_name")]`.
pub mod by_name {
    use super::Method;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the report name.
    pub fn serialize<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.name())
    }

    /// Reads a report name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let name = String::deserialize(d)?;
        Method::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown method {name:?}; expected SFT, on-policy or NPD"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_slugs_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::from_slug(m.slug()), Some(m));
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_slug("NPD"), None);
    }
}
