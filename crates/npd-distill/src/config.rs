//! A run's configuration file: the sections of every crate, composed.
//!
//! Every key has a default, so an empty file is a valid configuration;
//! unknown keys are rejected; [`RunConfig::validate`] checks every range
//! and names the offending key. `docs/config.example.toml` lists every key
//! with its documentation and default value.

use std::path::Path;

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, RlConfig, SamplingConfig, Section, TrainConfig};
use npd_engine::EngineConfig;
use npd_filter::FilterConfig;
use npd_pack::PackConfig;
use npd_pipeline::OutputConfig;
use npd_rollout::RolloutConfig;
use npd_train::models_config::{DataConfig, ModelsConfig};

use crate::embedded::config::EmbeddedConfig;

/// A whole run: models, data, rollouts, filtering, packing, training, output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Teacher and student models and where they run.
    pub model: ModelsConfig,
    /// Prompt data.
    pub data: DataConfig,
    /// The asynchronous rollout engine.
    pub rollout: RolloutConfig,
    /// How responses are sampled.
    pub sampling: SamplingConfig,
    /// Δ-IFD selection.
    pub filter: FilterConfig,
    /// Sequence packing.
    pub pack: PackConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// The RL stage after distillation (the `*+rl` methods).
    pub rl: RlConfig,
    /// Output folder, checkpoints and metrics.
    pub output: OutputConfig,
    /// Where rollouts and teacher scores come from: in-process or vLLM
    /// servers.
    pub engine: EngineConfig,
    /// The embedded default's task, student and warm start (used when
    /// `model.teacher` is not set).
    pub embedded: EmbeddedConfig,
}

impl RunConfig {
    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(&read(path)?, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: RunConfig = npd_core::config::parse(text, origin)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads a TOML file whose keys override `base` key by key: a key the
    /// file leaves out keeps `base`'s value (not the general default).
    /// Unknown keys and wrong types are reported with the file's line and
    /// column; ranges are checked on the result.
    pub fn from_file_over(path: &Path, base: &RunConfig) -> Result<Self, ConfigError> {
        Self::from_toml_over(&read(path)?, &path.display().to_string(), base)
    }

    /// [`RunConfig::from_file_over`] on TOML text; `origin` names it in
    /// errors.
    pub fn from_toml_over(text: &str, origin: &str, base: &RunConfig) -> Result<Self, ConfigError> {
        let config = npd_core::config::parse_over(text, origin, base)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        npd_core::config::to_toml(self)
    }

    /// Checks every section's ranges; the error names the key.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        fn section<S: Section>(s: &S, c: &Check<'_>) -> Result<(), ConfigError> {
            s.validate(&c.section(S::NAME))
        }
        let c = Check::new(origin);
        section(&self.model, &c)?;
        section(&self.data, &c)?;
        section(&self.rollout, &c)?;
        section(&self.sampling, &c)?;
        section(&self.filter, &c)?;
        section(&self.pack, &c)?;
        section(&self.train, &c)?;
        section(&self.rl, &c)?;
        section(&self.output, &c)?;
        section(&self.engine, &c)?;
        section(&self.embedded, &c)
    }
}

/// The keys a configuration file sets, as `section.key` (none without a
/// file): what `--quick` must not override.
pub fn explicit_keys(
    path: Option<&Path>,
) -> Result<std::collections::BTreeSet<String>, ConfigError> {
    let mut keys = std::collections::BTreeSet::new();
    let Some(path) = path else {
        return Ok(keys);
    };
    let table: toml::Table = npd_core::config::parse(&read(path)?, &path.display().to_string())?;
    for (section, value) in &table {
        if let Some(t) = value.as_table() {
            keys.extend(t.keys().map(|k| format!("{section}.{k}")));
        }
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use npd_core::config::LossKind;
    use npd_filter::DeltaForm;
    use npd_pack::OversizePolicy;
    use npd_train::models_config::Dtype;

    const EXAMPLE: &str = include_str!("../../../docs/config.example.toml");

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            RunConfig::from_toml("", "t.toml").unwrap(),
            RunConfig::default()
        );
    }

    #[test]
    fn a_file_overrides_a_base_key_by_key() {
        let mut base = RunConfig::default();
        base.train.lr = 1e-3;
        base.train.steps = 300;
        let c = RunConfig::from_toml_over("[train]\nsteps = 50\n", "t.toml", &base).unwrap();
        assert_eq!((c.train.lr, c.train.steps), (1e-3, 50));
        let err = RunConfig::from_toml_over("[train]\nstepz = 5\n", "t.toml", &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stepz") && err.contains("line 2"), "{err}");
        let err = RunConfig::from_toml_over("[train]\nlr = -1.0\n", "t.toml", &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.lr"), "{err}");
    }

    #[test]
    fn example_config_states_the_defaults() {
        let parsed = RunConfig::from_toml(EXAMPLE, "docs/config.example.toml").unwrap();
        assert_eq!(parsed, RunConfig::default());
    }

    /// Every key of the schema appears in the example config, under its
    /// section, right after a comment line that documents it.
    #[test]
    fn example_config_documents_every_key() {
        let value: toml::Table = toml::from_str(&RunConfig::default().to_toml()).unwrap();
        let lines: Vec<&str> = EXAMPLE.lines().map(str::trim).collect();
        let mut missing = Vec::new();
        for (section, table) in &value {
            let table = table.as_table().expect("every top-level key is a section");
            let header = format!("[{section}]");
            let start = lines
                .iter()
                .position(|l| *l == header)
                .unwrap_or_else(|| panic!("section {header} missing from the example"));
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            for key in table.keys() {
                let found = (start + 1..end).find(|&i| {
                    lines[i]
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                match found {
                    Some(i) if lines[i - 1].starts_with('#') => {}
                    _ => missing.push(format!("{section}.{key}")),
                }
            }
        }
        assert!(
            missing.is_empty(),
            "undocumented keys in docs/config.example.toml: {missing:?}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = RunConfig::from_toml("[train]\nlr = 1e-4\nlearning_rate = 3\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("run.toml:"), "{err}");
        assert!(err.contains("learning_rate"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = RunConfig::from_toml("[trian]\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trian"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = RunConfig::from_toml("[pack]\ncapacity = \"big\"\n", "run.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capacity") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let cases = [
            ("[train]\nlr = -1.0\n", "train.lr", "> 0"),
            ("[sampling]\ntop_p = 1.5\n", "sampling.top_p", "[1e-6, 1]"),
            (
                "[filter]\nlower_percentile = 0.5\nupper_percentile = 0.4\n",
                "filter.upper_percentile",
                "above filter.lower_percentile",
            ),
            ("[pack]\ncapacity = 0\n", "pack.capacity", "from 2 to"),
            // Sizes that are allocated, and time limits, have a ceiling.
            (
                "[pack]\ncapacity = 1099511627776\n",
                "pack.capacity",
                "from 2 to 1048576",
            ),
            (
                "[train]\nrows_per_step = 1099511627776\n",
                "train.rows_per_step",
                "to 65536",
            ),
            (
                "[rollout]\nbatch_size = 1099511627776\n",
                "rollout.batch_size",
                "to 65536",
            ),
            (
                "[engine]\ntimeout_s = 1e300\n",
                "engine.timeout_s",
                "= 1e300: ",
            ),
            (
                "[engine]\nstartup_timeout_s = 1e300\n",
                "engine.startup_timeout_s",
                "to 1e6",
            ),
            (
                "[train]\nrows_per_step = 6\nmicro_batch_rows = 4\n",
                "train.rows_per_step",
                "multiple",
            ),
            ("[model]\ndevice = \"gpu\"\n", "model.device", "cuda:N"),
            ("[train]\nlr = nan\n", "train.lr", "finite"),
        ];
        for (text, key, expected) in cases {
            let err = RunConfig::from_toml(text, "run.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(expected),
                "{text:?} gave {err}"
            );
        }
    }

    #[test]
    fn checkpoint_every_zero_means_only_at_the_end() {
        let c = RunConfig::from_toml("[output]\ncheckpoint_every = 0\n", "run.toml").unwrap();
        assert_eq!(c.output.checkpoint_every, 0);
    }

    #[test]
    fn missing_file_is_named() {
        let err = RunConfig::from_file(std::path::Path::new("/nonexistent/npd.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/npd.toml"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = RunConfig::default();
        c.train.loss = LossKind::Jsd;
        c.filter.form = DeltaForm::Staleness;
        c.pack.oversize = OversizePolicy::Truncate;
        c.model.dtype = Dtype::Bf16;
        let back = RunConfig::from_toml(&c.to_toml(), "<string>").unwrap();
        assert_eq!(back, c);
    }
}
