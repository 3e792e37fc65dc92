//! The `[engine]` section: where rollouts and teacher scores come from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use npd_core::ConfigError;
use npd_core::config::{Check, MAX_THREADS, Section};

/// Which engine generates and scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The libtorch models in npd's own process.
    #[default]
    InProcess,
    /// vLLM servers: student rollouts and teacher scores over HTTP, the
    /// trainer in-process.
    Vllm,
}

/// A dtype as vLLM's `--dtype` spells it: what a server computes in, or
/// what published weights are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServedDtype {
    /// 32-bit floats.
    #[default]
    Float32,
    /// bfloat16.
    Bfloat16,
}

impl ServedDtype {
    /// The name `vllm serve --dtype` and `config.json`'s `torch_dtype`
    /// take.
    pub fn name(self) -> &'static str {
        match self {
            ServedDtype::Float32 => "float32",
            ServedDtype::Bfloat16 => "bfloat16",
        }
    }

    /// Bytes per weight.
    pub fn bytes(self) -> usize {
        match self {
            ServedDtype::Float32 => 4,
            ServedDtype::Bfloat16 => 2,
        }
    }

    /// The probe tolerance a server computing in this dtype gets by
    /// default, nats per token: float32 servers reproduce npd's log-probs
    /// to about 1e-5, bfloat16 ones to about 1e-2 (rounding of every
    /// activation), while a refresh that did not take shows differences
    /// of order 1e-1 to 1.
    pub fn default_probe_tolerance(self) -> f64 {
        match self {
            ServedDtype::Float32 => 1e-3,
            ServedDtype::Bfloat16 => 5e-2,
        }
    }
}

/// Where the teacher's held-out accuracy is measured before the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherCheck {
    /// On the teacher server with `kind = "vllm"`, in-process otherwise.
    #[default]
    Auto,
    /// With the in-process teacher (its KV cache on the trainer's device).
    InProcess,
    /// On the teacher server (`kind = "vllm"` only).
    Server,
    /// Not measured (the report says so).
    Skip,
}

/// The URL of one server of a role, or a list of them (`"http://a:8000"`
/// or `["http://a:8000", "http://b:8000"]`); empty: npd starts the role's
/// servers itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Urls(pub Vec<String>);

impl Urls {
    /// Whether none is given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URLs.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }

    /// The URLs joined for messages.
    pub fn joined(&self) -> String {
        self.0.join(", ")
    }
}

impl From<&str> for Urls {
    fn from(url: &str) -> Self {
        Self(if url.is_empty() {
            Vec::new()
        } else {
            vec![url.to_string()]
        })
    }
}

impl Serialize for Urls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [] => s.serialize_str(""),
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(url) => Urls::from(url.as_str()),
            OneOrMany::Many(urls) => Urls(urls),
        })
    }
}

/// A server's role in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The student server: rollouts, refreshed with published snapshots.
    Student,
    /// The teacher server: scores.
    Teacher,
}

impl Role {
    /// `student` or `teacher`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
        }
    }
}

/// Where rollouts and teacher scores come from, and how npd talks to
/// inference servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `in-process` or `vllm`.
    pub kind: EngineKind,
    /// URL of a running vLLM server of the student, or a list of them
    /// (started with `VLLM_SERVER_DEV_MODE=1` so that they can reload
    /// weights, on a copy of the student with untied embeddings): rollouts
    /// are spread over them, each is refreshed and probed, and one that
    /// stops answering is left out. Empty: npd starts `student_servers`.
    pub student_url: Urls,
    /// URL of a running vLLM server of the teacher, or a list of them
    /// (scores are spread over them); empty: npd starts `teacher_servers`.
    pub teacher_url: Urls,
    /// URL of a running vLLM server (started like a student server) that
    /// evaluates the student on the held-out prompts, or a list of them:
    /// at each evaluation it loads the learner's weights, is probed, and
    /// writes the greedy responses that are graded. Empty: `eval_servers`.
    pub eval_url: Urls,
    /// Evaluation servers npd starts when `eval_url` is empty; 0: the
    /// held-out evaluation runs in-process.
    pub eval_servers: usize,
    /// Student servers npd starts when `student_url` is empty.
    pub student_servers: usize,
    /// Teacher servers npd starts when `teacher_url` is empty.
    pub teacher_servers: usize,
    /// Python with vLLM installed, for servers npd starts; empty: the one
    /// `scripts/vllm.sh` installs into the npd cache.
    pub python: PathBuf,
    /// Cores of the student server npd starts
    /// (`VLLM_CPU_OMP_THREADS_BIND`, e.g. `0` or `0-3`); empty: the first
    /// half of the cores.
    pub student_cpus: String,
    /// Cores of the teacher server npd starts; empty: the second half of
    /// the cores.
    pub teacher_cpus: String,
    /// KV-cache size of each CPU server npd starts, GiB.
    pub kv_cache_gib: usize,
    /// Seconds a server npd starts may take to answer `/health`.
    pub startup_timeout_s: f64,
    /// Requests in flight per server.
    pub concurrency: usize,
    /// Seconds one HTTP call may take.
    pub timeout_s: f64,
    /// Further tries of a call that failed in transport or with a server
    /// error (5xx); then the run stops with the error.
    pub retries: u32,
    /// What the student server computes in (`float32` or `bfloat16`):
    /// `--dtype` of a student server npd starts, and what the probe
    /// tolerance of one you run is based on.
    pub student_dtype: ServedDtype,
    /// What the teacher server computes in (see `student_dtype`).
    pub teacher_dtype: ServedDtype,
    /// The dtype of the snapshots the trainer publishes for the student
    /// server (`bfloat16`: half the bytes to write and reload; `float32`:
    /// the trainer's own values). The probe a refreshed server must
    /// reproduce is computed on the published values.
    pub publish_dtype: ServedDtype,
    /// Probe tolerance of both servers, nats per token, when the role's
    /// own key is 0; 0: by each server's dtype (float32 1e-3, bfloat16
    /// 5e-2).
    pub probe_tolerance: f64,
    /// After every weight refresh (and at the start) the student server
    /// scores a probe sequence; its log-probs must be within this many nats
    /// per token of the trainer's, or the run stops. 0: `probe_tolerance`.
    pub student_probe_tolerance: f64,
    /// At the start the teacher server scores the probe sequence; its
    /// log-probs must be within this many nats per token of the in-process
    /// teacher's. 0: `probe_tolerance`.
    pub teacher_probe_tolerance: f64,
    /// Where the teacher's held-out accuracy is measured before the run:
    /// `auto` (on the teacher server with `kind = "vllm"`, in-process
    /// otherwise), `in-process`, `server` or `skip`.
    pub teacher_check: TeacherCheck,
    /// Folder for the snapshots the student server reloads (it must be able
    /// to read it); empty: a folder in `/dev/shm` (memory, no disk writes)
    /// when it exists and has room for three snapshots, else `served/` in
    /// the output folder.
    pub publish_dir: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::InProcess,
            student_url: Urls::default(),
            teacher_url: Urls::default(),
            eval_url: Urls::default(),
            eval_servers: 0,
            student_servers: 1,
            teacher_servers: 1,
            python: PathBuf::new(),
            student_cpus: String::new(),
            teacher_cpus: String::new(),
            kv_cache_gib: 1,
            startup_timeout_s: 600.0,
            concurrency: 16,
            timeout_s: 300.0,
            retries: 2,
            student_dtype: ServedDtype::Float32,
            teacher_dtype: ServedDtype::Float32,
            publish_dtype: ServedDtype::Bfloat16,
            probe_tolerance: 0.0,
            student_probe_tolerance: 0.0,
            teacher_probe_tolerance: 0.0,
            teacher_check: TeacherCheck::Auto,
            publish_dir: PathBuf::new(),
        }
    }
}

impl Section for EngineConfig {
    const NAME: &'static str = "engine";

    fn validate(&self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.between("kv_cache_gib", self.kv_cache_gib, 1, 1 << 20)?;
        c.seconds("startup_timeout_s", self.startup_timeout_s)?;
        c.between("concurrency", self.concurrency, 1, MAX_THREADS)?;
        c.seconds("timeout_s", self.timeout_s)?;
        c.between("retries", self.retries, 0, 100)?;
        for (key, tolerance) in [
            ("probe_tolerance", self.probe_tolerance),
            ("student_probe_tolerance", self.student_probe_tolerance),
            ("teacher_probe_tolerance", self.teacher_probe_tolerance),
        ] {
            c.non_negative(key, tolerance, " (nats per token; 0 picks the default)")?;
        }
        c.that(
            !(self.teacher_check == TeacherCheck::Server && self.kind == EngineKind::InProcess),
            "teacher_check",
            "\"auto\", \"in-process\" or \"skip\" with kind = \"in-process\" (\"server\" needs \
             kind = \"vllm\")",
            "\"server\"",
        )?;
        for (key, cpus) in [
            ("student_cpus", &self.student_cpus),
            ("teacher_cpus", &self.teacher_cpus),
        ] {
            c.that(
                cpus.is_empty() || is_cpu_list(cpus),
                key,
                "empty (npd picks) or a list of cores such as `0-3` or `0,2,4-7`",
                format!("{cpus:?}"),
            )?;
        }
        for (key, urls) in [
            ("student_url", &self.student_url),
            ("teacher_url", &self.teacher_url),
            ("eval_url", &self.eval_url),
        ] {
            for url in urls.iter() {
                c.that(
                    url.starts_with("http://"),
                    key,
                    "empty (npd starts the servers), an http:// URL or a list of them",
                    format!("{url:?}"),
                )?;
            }
        }
        c.between("student_servers", self.student_servers, 1, 64)?;
        c.between("teacher_servers", self.teacher_servers, 1, 64)?;
        c.between("eval_servers", self.eval_servers, 0, 64)?;
        Ok(())
    }
}

impl EngineConfig {
    /// Where the teacher check runs: `Some(true)` on the teacher server,
    /// `Some(false)` in-process, `None` nowhere.
    pub fn teacher_check_on_server(&self) -> Option<bool> {
        match self.teacher_check {
            TeacherCheck::Auto => Some(self.kind == EngineKind::Vllm),
            TeacherCheck::InProcess => Some(false),
            TeacherCheck::Server => Some(true),
            TeacherCheck::Skip => None,
        }
    }

    /// The dtype `role`'s server computes in.
    pub fn dtype(&self, role: Role) -> ServedDtype {
        match role {
            Role::Student => self.student_dtype,
            Role::Teacher => self.teacher_dtype,
        }
    }

    /// The probe tolerance of `role`'s server and the key that sets it:
    /// the role's own key, else `probe_tolerance`, else the default of the
    /// server's dtype.
    pub fn probe_tolerance(&self, role: Role) -> (f64, String) {
        let (own, key) = match role {
            Role::Student => (self.student_probe_tolerance, "student_probe_tolerance"),
            Role::Teacher => (self.teacher_probe_tolerance, "teacher_probe_tolerance"),
        };
        if own > 0.0 {
            (own, format!("engine.{key} = {own:.1e}"))
        } else if self.probe_tolerance > 0.0 {
            (
                self.probe_tolerance,
                format!("engine.probe_tolerance = {:.1e}", self.probe_tolerance),
            )
        } else {
            let dtype = self.dtype(role);
            (
                dtype.default_probe_tolerance(),
                format!(
                    "{:.1e}, the default for engine.{}_dtype = \"{}\"; set engine.{key} to change it",
                    dtype.default_probe_tolerance(),
                    role.name(),
                    dtype.name()
                ),
            )
        }
    }
}

/// Whether `s` is a list of cores as `VLLM_CPU_OMP_THREADS_BIND` takes
/// it: numbers and ranges `a-b` (a <= b), separated by commas.
fn is_cpu_list(s: &str) -> bool {
    let core = |t: &str| !t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit());
    s.split(',').all(|part| match part.split_once('-') {
        Some((a, b)) => core(a) && core(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
        None => core(part),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let check = Check::new("run.toml");
        let c = EngineConfig {
            student_url: "localhost:8000".into(),
            ..EngineConfig::default()
        };
        let listed: EngineConfig = npd_core::config::parse(
            "student_url = [\"http://a:1\", \"http://b:2\"]\nteacher_url = \"http://c:3\"\n",
            "run.toml",
        )
        .unwrap();
        assert_eq!(listed.student_url.0, ["http://a:1", "http://b:2"]);
        assert_eq!(listed.teacher_url.0, ["http://c:3"]);
        let back = npd_core::config::to_toml(&listed);
        assert!(back.contains("teacher_url = \"http://c:3\""), "{back}");
        let again: EngineConfig = npd_core::config::parse(&back, "again").unwrap();
        assert_eq!(again, listed);
        let bad = EngineConfig {
            student_url: Urls(vec!["http://a:1".into(), "b:2".into()]),
            ..EngineConfig::default()
        };
        let err = bad
            .validate(&check.section("engine"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.student_url") && err.contains("b:2"),
            "{err}"
        );
        let err = c
            .validate(&check.section("engine"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.student_url") && err.contains("http://"),
            "{err}"
        );
        let c = EngineConfig {
            concurrency: 0,
            ..EngineConfig::default()
        };
        assert!(c.validate(&check.section("engine")).is_err());
        EngineConfig::default()
            .validate(&check.section("engine"))
            .unwrap();
        for (cpus, ok) in [
            ("0-3", true),
            ("0,2,4-7", true),
            ("5", true),
            ("3-1", false),
            ("localhost:8000", false),
            ("0,,1", false),
        ] {
            let c = EngineConfig {
                teacher_cpus: cpus.into(),
                ..EngineConfig::default()
            };
            assert_eq!(c.validate(&check.section("engine")).is_ok(), ok, "{cpus}");
        }
        let c = EngineConfig {
            teacher_probe_tolerance: -1.0,
            ..EngineConfig::default()
        };
        let err = c
            .validate(&check.section("engine"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.teacher_probe_tolerance"), "{err}");
    }

    #[test]
    fn probe_tolerances_come_from_the_role_then_both_then_the_dtype() {
        let mut c = EngineConfig {
            teacher_dtype: ServedDtype::Bfloat16,
            ..EngineConfig::default()
        };
        assert_eq!(c.probe_tolerance(Role::Student).0, 1e-3);
        assert_eq!(c.probe_tolerance(Role::Teacher).0, 5e-2);
        assert!(
            c.probe_tolerance(Role::Teacher)
                .1
                .contains("engine.teacher_probe_tolerance")
        );
        c.probe_tolerance = 2e-3;
        assert_eq!(c.probe_tolerance(Role::Teacher).0, 2e-3);
        c.teacher_probe_tolerance = 3e-2;
        assert_eq!(c.probe_tolerance(Role::Teacher).0, 3e-2);
        assert_eq!(c.probe_tolerance(Role::Student).0, 2e-3);
        let text = "publish_dtype = \"float32\"\nstudent_dtype = \"bfloat16\"\n";
        let parsed: EngineConfig = npd_core::config::parse(text, "run.toml").unwrap();
        assert_eq!(parsed.publish_dtype, ServedDtype::Float32);
        assert_eq!(parsed.dtype(Role::Student), ServedDtype::Bfloat16);
        assert!(
            npd_core::config::parse::<EngineConfig>("publish_dtype = \"fp8\"", "run.toml").is_err()
        );
    }
}
