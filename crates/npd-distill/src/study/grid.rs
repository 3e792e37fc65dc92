//! The study file: `[study]`, `[base]` and the `[[grid]]` tables, and the
//! runs they expand to (every combination of a grid's axis values, each
//! with its run configuration as TOML).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use npd_core::config::LossKind;
use npd_pipeline::Method;
use npd_rollout::Schedule;

use crate::Options;
use crate::embedded::config::WarmStart;
use crate::embedded::task::TaskKind;
/// The study file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// What every regime runs.
    pub study: StudySection,
    /// Run-configuration keys every run starts from (any section of the
    /// run configuration, e.g. `[base.train] steps = 200`).
    #[serde(default)]
    pub base: toml::Table,
    /// The axes; each regime is one combination of their values. An axis
    /// left out keeps the base (or default) value. Several `[[grid]]`
    /// tables give several grids, run one after the other.
    #[serde(default = "one_grid", deserialize_with = "grids")]
    pub grid: Vec<Grid>,
}

fn one_grid() -> Vec<Grid> {
    vec![Grid::default()]
}

/// `[grid]` or `[[grid]]` tables.
fn grids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Grid>, D::Error> {
    use serde::de::Error;
    let grid = |v: toml::Value| {
        v.try_into::<Grid>()
            .map_err(|e| D::Error::custom(format!("grid: {}", e.to_string().trim_end())))
    };
    match toml::Value::deserialize(d)? {
        t @ toml::Value::Table(_) => Ok(vec![grid(t)?]),
        toml::Value::Array(a) => a.into_iter().map(grid).collect(),
        _ => Err(D::Error::custom(
            "grid: expected a [grid] table or [[grid]] tables",
        )),
    }
}

/// `[study]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySection {
    /// Methods every regime runs (`sft`, `on-policy`, `npd`).
    pub methods: Vec<String>,
    /// Seeds per method (at least 1).
    pub seeds: u64,
    /// The `--quick` budget (for smoke tests of a grid).
    #[serde(default)]
    pub quick: bool,
}

/// The keys of a `[grid]` table, as `--help` lists them.
pub const GRID_KEYS: &[&str] = &[
    "task",
    "max_ops",
    "warm_start",
    "warm_start_max_ops",
    "student",
    "loss",
    "temperature",
    "refresh_every",
    "schedule",
    "filter",
    "keys",
];

/// The study's `--help` text on the grid file.
pub fn help() -> String {
    let named: Vec<&str> = GRID_KEYS.iter().copied().filter(|k| *k != "keys").collect();
    format!(
        "The grid file has a [study] table (methods, seeds, quick), a [base] table of run \
         configuration keys every run starts from (e.g. [base.train] steps = 200), and a [grid] \
         table whose keys ({}, and keys = {{ \"section.key\" = [...] }} for any other \
         configuration key) each list the values to try; every combination is one regime. \
         docs/study.toml is the grid of docs/reproduction.md.",
        named.join(", ")
    )
}

/// `[grid]`: the values each axis takes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// `embedded.task`.
    pub task: Option<Vec<TaskKind>>,
    /// `embedded.warm_start`.
    pub warm_start: Option<Vec<WarmStart>>,
    /// `embedded.student` (`[hidden, layers]`).
    pub student: Option<Vec<[usize; 2]>>,
    /// `train.loss`.
    pub loss: Option<Vec<LossKind>>,
    /// `sampling.temperature`.
    pub temperature: Option<Vec<f64>>,
    /// `filter.enabled`: the first value runs every method; each other
    /// value runs NPD alone (SFT and on-policy do not filter).
    pub filter: Option<Vec<bool>>,
    /// `rollout.refresh_every` (K).
    pub refresh_every: Option<Vec<u64>>,
    /// `embedded.max_ops`: response length (5 tokens per step).
    pub max_ops: Option<Vec<usize>>,
    /// `embedded.warm_start_max_ops`: the warm start's longest prompts.
    pub warm_start_max_ops: Option<Vec<usize>>,
    /// `rollout.schedule`: NPD's colocated or disaggregated schedule.
    pub schedule: Option<Vec<Schedule>>,
    /// Any other run-configuration key as an axis, named `section.key`
    /// (e.g. `"train.lr" = [3e-4, 1e-4]`, `"embedded.warm_start_repair" =
    /// [0.0, 0.15]`); each is checked like a configuration file's key when
    /// its run starts. Applied after the named axes above.
    pub keys: Option<BTreeMap<String, Vec<toml::Value>>>,
}

/// One run of the study: a regime with one filter setting.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRun {
    /// Folder name under `<out>/runs/`, and the regime's label.
    pub name: String,
    /// The regime it belongs to (the name without the filter).
    pub regime: String,
    /// Axis values, in grid order, for the table.
    pub axes: Vec<(String, String)>,
    /// Δ-IFD on.
    pub filter: bool,
    /// Methods it runs.
    pub methods: Vec<Method>,
    /// Its run configuration, as TOML.
    pub config: String,
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_string(), value);
    }
}

fn value<T: Serialize>(v: &T) -> toml::Value {
    toml::Value::try_from(v).expect("axis values serialise")
}

impl StudyFile {
    /// Reads and checks a study file; errors name the file, and the key or
    /// line.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses study TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let file: StudyFile = toml::from_str(npd_core::config::strip_bom(text))
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))?;
        if file.study.seeds == 0 {
            bail!("{origin}: `study.seeds` must be at least 1");
        }
        if file.study.methods.is_empty() {
            bail!(
                "{origin}: `study.methods` names no method (sft, on-policy, npd, rl, sft+rl, on-policy+rl, npd+rl)"
            );
        }
        for m in &file.study.methods {
            if Method::from_slug(m).is_none() {
                bail!(
                    "{origin}: `study.methods`: unknown method {m:?} (sft, on-policy, npd, rl, sft+rl, on-policy+rl, npd+rl)"
                );
            }
        }
        for (i, m) in file.study.methods.iter().enumerate() {
            if file.study.methods[..i].contains(m) {
                bail!(
                    "{origin}: `study.methods` names {m:?} twice; each method runs once per seed"
                );
            }
        }
        if file.grid.is_empty() {
            bail!("{origin}: `grid` holds no table");
        }
        for g in &file.grid {
            g.check(origin)?;
        }
        Ok(file)
    }

    /// The methods, in order.
    pub fn methods(&self) -> Vec<Method> {
        (self.study.methods.iter())
            .filter_map(|m| Method::from_slug(m))
            .collect()
    }

    /// The options that run `run` from its configuration file `config`
    /// into `out`.
    pub fn options(
        &self,
        run: &StudyRun,
        config: PathBuf,
        out: PathBuf,
        cache: Option<PathBuf>,
    ) -> Options {
        Options {
            config: Some(config),
            out: Some(out),
            methods: run.methods.clone(),
            seeds: Some(self.study.seeds),
            steps: None,
            no_filter: false,
            refresh_every: None,
            loss: None,
            quick: self.study.quick,
            engine: None,
            cache,
            resume: false,
            checkpoint_every: None,
            plan: false,
        }
    }

    /// Every run of every grid, regime by regime.
    pub fn runs(&self) -> Vec<StudyRun> {
        let mut runs: Vec<StudyRun> = Vec::new();
        for g in &self.grid {
            for run in g.runs(&self.base, &self.methods()) {
                if !runs.iter().any(|r| r.name == run.name) {
                    runs.push(run);
                }
            }
        }
        runs
    }
}

impl Grid {
    fn check(&self, origin: &str) -> Result<()> {
        let g = self;
        let empty = [
            ("task", g.task.as_ref().map(Vec::len)),
            ("warm_start", g.warm_start.as_ref().map(Vec::len)),
            ("student", g.student.as_ref().map(Vec::len)),
            ("loss", g.loss.as_ref().map(Vec::len)),
            ("temperature", g.temperature.as_ref().map(Vec::len)),
            ("filter", g.filter.as_ref().map(Vec::len)),
            ("refresh_every", g.refresh_every.as_ref().map(Vec::len)),
            ("max_ops", g.max_ops.as_ref().map(Vec::len)),
            ("schedule", g.schedule.as_ref().map(Vec::len)),
            (
                "warm_start_max_ops",
                g.warm_start_max_ops.as_ref().map(Vec::len),
            ),
        ];
        if let Some((key, _)) = empty.iter().find(|(_, n)| *n == Some(0)) {
            bail!("{origin}: `grid.{key}` is empty; give it a value or leave it out");
        }
        for (key, values) in g.keys.iter().flatten() {
            let Some((section, name)) = key.split_once('.') else {
                bail!(
                    "{origin}: `grid.keys.\"{key}\"`: expected a key named `section.key`, \
                     e.g. \"train.lr\""
                );
            };
            if section.is_empty() || name.is_empty() || name.contains('.') {
                bail!("{origin}: `grid.keys.\"{key}\"`: expected a key named `section.key`");
            }
            if values.is_empty() {
                bail!("{origin}: `grid.keys.\"{key}\"` is empty; give it a value or leave it out");
            }
        }
        Ok(())
    }

    /// The grid's axes other than the filter: each a list of settings.
    fn axes(&self) -> Vec<Vec<Setting>> {
        let g = self;
        let mut axes = Vec::new();
        fn push<T: Serialize>(
            axes: &mut Vec<Vec<Setting>>,
            values: &Option<Vec<T>>,
            at: (&'static str, &'static str, &'static str),
            label: impl Fn(&T) -> String,
            slug: impl Fn(&T) -> String,
        ) {
            if let Some(values) = values {
                axes.push(
                    values
                        .iter()
                        .map(|v| Setting {
                            section: at.0.into(),
                            key: at.1.into(),
                            column: at.2.into(),
                            value: value(v),
                            label: label(v),
                            slug: slug(v),
                        })
                        .collect(),
                );
            }
        }
        let name = |v: toml::Value| v.as_str().unwrap_or("").to_string();
        push(
            &mut axes,
            &g.task,
            ("embedded", "task", "task"),
            |t| t.name().into(),
            |t| t.name().into(),
        );
        push(
            &mut axes,
            &g.max_ops,
            ("embedded", "max_ops", "most ops"),
            |m| m.to_string(),
            |m| format!("len{m}"),
        );
        push(
            &mut axes,
            &g.warm_start,
            ("embedded", "warm_start", "warm start"),
            |w| w.name().into(),
            |w| w.name().into(),
        );
        push(
            &mut axes,
            &g.warm_start_max_ops,
            ("embedded", "warm_start_max_ops", "warm-start ops"),
            |m| format!("≤{m}"),
            |m| format!("upto{m}"),
        );
        push(
            &mut axes,
            &g.student,
            ("embedded", "student", "student"),
            |[h, l]| format!("{h}x{l}"),
            |[h, l]| format!("{h}x{l}"),
        );
        push(
            &mut axes,
            &g.loss,
            ("train", "loss", "loss"),
            |l| name(value(l)),
            |l| name(value(l)),
        );
        push(
            &mut axes,
            &g.temperature,
            ("sampling", "temperature", "T"),
            |t| format!("{t}"),
            |t| format!("t{t}"),
        );
        push(
            &mut axes,
            &g.refresh_every,
            ("rollout", "refresh_every", "K"),
            |k| k.to_string(),
            |k| format!("k{k}"),
        );
        push(
            &mut axes,
            &g.schedule,
            ("rollout", "schedule", "schedule"),
            |s| name(value(s)),
            |s| name(value(s)),
        );
        for (key, values) in g.keys.iter().flatten() {
            let (section, k) = key.split_once('.').unwrap_or(("", key));
            axes.push(
                values
                    .iter()
                    .map(|v| {
                        let label = match v {
                            toml::Value::String(s) => s.clone(),
                            v => v.to_string(),
                        };
                        Setting {
                            section: section.into(),
                            key: k.into(),
                            column: key.clone(),
                            value: v.clone(),
                            slug: format!("{k}{}", slug_of(&label)),
                            label,
                        }
                    })
                    .collect(),
            );
        }
        axes
    }

    /// Every run of the grid over `base`, regime by regime.
    fn runs(&self, base: &toml::Table, methods: &[Method]) -> Vec<StudyRun> {
        let filters = self.filter.clone().unwrap_or_else(|| vec![true]);
        // Every combination of the axes' settings, the first axis slowest.
        let mut regimes: Vec<Vec<Setting>> = vec![Vec::new()];
        for axis in self.axes() {
            regimes = regimes
                .into_iter()
                .flat_map(|r| {
                    axis.iter().map(move |s| {
                        let mut r = r.clone();
                        r.push(s.clone());
                        r
                    })
                })
                .collect();
        }
        let mut runs = Vec::new();
        for settings in regimes {
            let mut table = base.clone();
            for s in &settings {
                set(&mut table, &s.section, &s.key, s.value.clone());
            }
            let regime = if settings.is_empty() {
                "default".to_string()
            } else {
                let slugs: Vec<&str> = settings.iter().map(|s| s.slug.as_str()).collect();
                slugs.join("-")
            };
            let axes: Vec<(String, String)> = settings
                .iter()
                .map(|s| (s.column.clone(), s.label.clone()))
                .collect();
            for (i, &filter) in filters.iter().enumerate() {
                let mut table = table.clone();
                set(&mut table, "filter", "enabled", value(&filter));
                // SFT and on-policy do not filter: they run once per regime.
                let methods: Vec<Method> = (methods.iter().copied())
                    .filter(|m| i == 0 || *m == Method::NearPolicy)
                    .collect();
                if methods.is_empty() {
                    continue;
                }
                runs.push(StudyRun {
                    name: if filter {
                        regime.clone()
                    } else {
                        format!("{regime}-no-ifd")
                    },
                    regime: regime.clone(),
                    axes: axes.clone(),
                    filter,
                    methods,
                    config: toml::to_string(&table).expect("a table serialises"),
                });
            }
        }
        runs
    }
}

/// A value as part of a folder name: letters, digits, `.` and `-` kept,
/// anything else as `_`.
fn slug_of(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One value of one axis: where it goes in the run configuration and how
/// the table and folder names show it.
#[derive(Debug, Clone)]
struct Setting {
    section: String,
    key: String,
    column: String,
    value: toml::Value,
    label: String,
    slug: String,
}
