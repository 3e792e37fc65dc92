//! The methods a run can compare: three distillation methods, and the RL
//! stage (GRPO with a verifiable reward) from the warm start or from a
//! distillation method's final weights.

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
    /// GRPO from the warm start.
    Rl,
    /// GRPO from SFT's final weights (of the same seed).
    SftRl,
    /// GRPO from on-policy distillation's final weights.
    OnPolicyRl,
    /// GRPO from NPD's final weights: the paper's second stage.
    NearPolicyRl,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 7] = [
        Method::Sft,
        Method::OnPolicy,
        Method::NearPolicy,
        Method::Rl,
        Method::SftRl,
        Method::OnPolicyRl,
        Method::NearPolicyRl,
    ];

    /// The distillation methods (a run's default).
    pub const DISTILLATION: [Method; 3] = [Method::Sft, Method::OnPolicy, Method::NearPolicy];

    /// Whether this is the RL stage.
    pub fn is_rl(self) -> bool {
        self.rl_start().is_some()
    }

    /// For the RL stage, the method whose final weights (of the same seed)
    /// it starts from: `Some(None)` for the warm start; `None` for a
    /// distillation method.
    pub fn rl_start(self) -> Option<Option<Method>> {
        match self {
            Method::Rl => Some(None),
            Method::SftRl => Some(Some(Method::Sft)),
            Method::OnPolicyRl => Some(Some(Method::OnPolicy)),
            Method::NearPolicyRl => Some(Some(Method::NearPolicy)),
            Method::Sft | Method::OnPolicy | Method::NearPolicy => None,
        }
    }

    /// Name in reports and metrics lines.
    pub fn name(self) -> &'static str {
        match self {
            Method::Sft => "SFT",
            Method::OnPolicy => "on-policy",
            Method::NearPolicy => "NPD",
            Method::Rl => "RL",
            Method::SftRl => "SFT+RL",
            Method::OnPolicyRl => "on-policy+RL",
            Method::NearPolicyRl => "NPD+RL",
        }
    }

    /// Name in file names and on the command line.
    pub fn slug(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::OnPolicy => "on-policy",
            Method::NearPolicy => "npd",
            Method::Rl => "rl",
            Method::SftRl => "sft+rl",
            Method::OnPolicyRl => "on-policy+rl",
            Method::NearPolicyRl => "npd+rl",
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
                "unknown method {name:?}; expected SFT, on-policy, NPD, RL, SFT+RL, on-policy+RL or NPD+RL"
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

    #[test]
    fn rl_methods_name_their_start() {
        assert_eq!(
            Method::NearPolicyRl.rl_start(),
            Some(Some(Method::NearPolicy))
        );
        assert_eq!(Method::Rl.rl_start(), Some(None));
        assert!(Method::DISTILLATION.iter().all(|m| !m.is_rl()));
        assert_eq!(Method::ALL.iter().filter(|m| m.is_rl()).count(), 4);
    }
}
