//! The embedded default's sizes and budgets ([`Setup`]): the models, the
//! prompts, the warm start's stopping rule, what `--quick` shrinks, and
//! the cache folder they determine.

use serde::{Deserialize, Serialize};

use npd_core::Result;
use npd_train::tch::Device;

use crate::embedded::config::{EmbeddedConfig, WarmStart};
pub use crate::embedded::plateau::PlateauRule;
use crate::embedded::task::{TaskKind, TaskSpec};
use crate::embedded::{self as emb};

/// Sizes and budgets of the embedded default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Teacher `(hidden, layers, heads, kv heads)`.
    pub teacher: (usize, usize, usize, usize),
    /// Student `(hidden, layers, heads, kv heads)`.
    pub student: (usize, usize, usize, usize),
    /// Most teacher training steps. The teacher trains on a stream of
    /// fresh problems (none of them held out); the warm start cycles
    /// through the training prompts.
    pub teacher_steps: u64,
    /// Teacher training stops once accuracy on a 128-prompt held-out probe
    /// reaches this plus a margin of 0.02 (checked every 100 steps).
    pub teacher_target: f64,
    /// Peak learning rate of the teacher (AdamW, cosine decay to a tenth).
    pub teacher_lr: f64,
    /// Student warm-start steps (cross-entropy on reference responses).
    pub warm_start_steps: u64,
    /// Peak learning rate of the warm start.
    pub warm_start_lr: f64,
    /// Samples per training step.
    pub batch: usize,
    /// Training prompts.
    pub train_prompts: usize,
    /// Held-out prompts.
    pub eval_prompts: usize,
    /// Fraction of teacher training examples that show a wrong intermediate
    /// value, then `!` and the correct value (the wrong value is masked out
    /// of the loss), so the teacher learns to repair a wrong prefix.
    pub repair_fraction: f64,
    /// Seed of data and initialisation.
    pub seed: u64,
    /// Which task.
    #[serde(default)]
    pub task: TaskKind,
    /// Fewest ops in a prompt.
    #[serde(default = "default_min_ops")]
    pub min_ops: usize,
    /// Most ops in a prompt.
    #[serde(default = "default_max_ops")]
    pub max_ops: usize,
    /// When the warm start stops (`warm_start_steps` is then the most).
    #[serde(default)]
    pub warm_start_stop: WarmStart,
    /// Most ops in the warm start's training and validation prompts.
    #[serde(default = "default_max_ops")]
    pub warm_start_max_ops: usize,
    /// The plateau rule of [`WarmStart::Plateau`].
    #[serde(default)]
    pub plateau: PlateauRule,
    /// Validation prompts (drawn apart from the training and held-out
    /// ones) for the plateau rule.
    #[serde(default = "default_validation_prompts")]
    pub validation_prompts: usize,
    /// Fraction of the student's warm-start examples that show a repaired
    /// value, as the teacher's `repair_fraction` does for the teacher.
    #[serde(default)]
    pub warm_start_repair: f64,
}

fn default_min_ops() -> usize {
    TaskSpec::default().min_ops
}

fn default_max_ops() -> usize {
    TaskSpec::default().max_ops
}

/// What a teacher depends on: everything but the student's shape and warm
/// start, so regimes that differ only there share a teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TeacherKey {
    teacher: (usize, usize, usize, usize),
    teacher_steps: u64,
    teacher_target: f64,
    teacher_lr: f64,
    batch: usize,
    train_prompts: usize,
    eval_prompts: usize,
    repair_fraction: f64,
    seed: u64,
    task: TaskKind,
    min_ops: usize,
    max_ops: usize,
}

impl TeacherKey {
    pub(crate) fn of(s: &Setup) -> Self {
        Self {
            teacher: s.teacher,
            teacher_steps: s.teacher_steps,
            teacher_target: s.teacher_target,
            teacher_lr: s.teacher_lr,
            batch: s.batch,
            train_prompts: s.train_prompts,
            eval_prompts: s.eval_prompts,
            repair_fraction: s.repair_fraction,
            seed: s.seed,
            task: s.task,
            min_ops: s.min_ops,
            max_ops: s.max_ops,
        }
    }
}

fn default_validation_prompts() -> usize {
    256
}

impl Setup {
    /// The default sizes and budgets with the `[embedded]` section's task,
    /// student and warm-start rule.
    pub fn from_config(c: &EmbeddedConfig) -> Self {
        let [hidden, layers] = c.student;
        let heads = (hidden / 16).max(1);
        Self {
            student: (hidden, layers, heads, (heads / 2).max(1)),
            teacher_target: c.teacher_target(),
            warm_start_steps: match c.warm_start {
                WarmStart::Steps => c.warm_start_steps,
                WarmStart::Plateau => c.plateau_max_steps,
            },
            task: c.task,
            min_ops: c.min_ops,
            max_ops: c.max_ops,
            warm_start_stop: c.warm_start,
            warm_start_max_ops: c.warm_start_max_ops.unwrap_or(c.max_ops),
            plateau: PlateauRule::from_config(c),
            warm_start_repair: c.warm_start_repair,
            ..Self::default()
        }
    }

    /// The task.
    pub fn task_spec(&self) -> TaskSpec {
        TaskSpec {
            kind: self.task,
            min_ops: self.min_ops,
            max_ops: self.max_ops,
        }
    }

    /// Positions the models hold: prompt, response and a repaired value,
    /// rounded up to 64 (at least 128).
    pub fn max_positions(&self) -> usize {
        let t = self.task_spec();
        (1 + t.prompt_width() + t.response_budget() + 3)
            .next_multiple_of(64)
            .max(128)
    }

    /// Fails unless the teacher and the student can be built and trained in
    /// the memory this machine has: sizes the `[embedded]` keys set that no
    /// allocation can satisfy are an error naming `embedded.student`.
    pub fn check_fits(&self) -> Result<()> {
        use npd_train::memory;
        let config = |(h, l, nh, kv): (usize, usize, usize, usize)| {
            emb::model_config(h, l, nh, kv, self.max_positions())
        };
        let student = config(self.student).map_err(|e| {
            npd_core::Error::invalid("embedded.student", format!("describes no model: {e}"))
        })?;
        let teacher = config(self.teacher)?;
        // Both are trained here (teacher, then the warm start), and the
        // student is then trained beside the teacher's f32 weights.
        let teacher_bytes = teacher
            .parameter_count()
            .unwrap_or(u64::MAX)
            .saturating_mul(memory::LOADED_BYTES_PER_PARAMETER);
        let available = memory::available(Device::Cpu).map(|a| a.saturating_sub(teacher_bytes));
        memory::check_fits(
            "embedded.student",
            &student,
            memory::TRAINED_BYTES_PER_PARAMETER,
            available,
        )
    }

    /// The small budget of `--quick`: fewer prompts and steps, smaller
    /// models. The student's size and warm start come from the
    /// `[embedded]` keys, which [`quick_keys`] shrinks where a
    /// configuration leaves them unset.
    pub fn quick(mut self) -> Self {
        self.teacher_steps = 60;
        self.train_prompts = 400;
        self.eval_prompts = 64;
        self.validation_prompts = 64;
        self.teacher = (64, 2, 4, 2);
        self
    }

    /// The same model widths with attention heads of `head_dim` (vLLM's CPU
    /// attention supports 32, 64, 80, 96, 112, 128 and more, not the
    /// default's 16 and 24), half as many key-value heads (one when the
    /// head count is odd).
    pub fn with_head_dim(mut self, head_dim: usize) -> Self {
        let heads = |(hidden, layers, _, _): (usize, usize, usize, usize)| {
            let h = (hidden / head_dim).max(1);
            let kv = if h.is_multiple_of(2) { h / 2 } else { 1 };
            (hidden, layers, h, kv)
        };
        self.teacher = heads(self.teacher);
        self.student = heads(self.student);
        self
    }
}

/// The `[embedded]` keys of `--quick`'s small budget: a (32, 1) student
/// warm-started for at most 20 steps, each applied only where `explicit`
/// (the keys a configuration sets, `section.key`) leaves it unset, so
/// that a key given is a key honoured.
pub fn quick_keys(c: &mut EmbeddedConfig, explicit: &dyn Fn(&str) -> bool) {
    let unset = |key: &str| !explicit(&format!("embedded.{key}"));
    if unset("student") {
        c.student = [32, 1];
    }
    if unset("warm_start_steps") {
        c.warm_start_steps = c.warm_start_steps.min(20);
    }
    if unset("plateau_max_steps") {
        c.plateau_max_steps = c.plateau_max_steps.min(20);
    }
    if unset("plateau_every") {
        c.plateau_every = c.plateau_every.min(5);
    }
    if unset("plateau_min_steps") {
        c.plateau_min_steps = c.plateau_min_steps.min(10).min(c.plateau_max_steps);
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            teacher: (96, 3, 4, 2),
            student: (64, 2, 4, 2),
            teacher_steps: 2000,
            teacher_target: 0.95,
            teacher_lr: 3e-3,
            warm_start_steps: 1500,
            warm_start_lr: 2e-3,
            batch: 64,
            train_prompts: 4000,
            eval_prompts: 500,
            repair_fraction: 0.15,
            seed: 0,
            task: TaskKind::Chain,
            min_ops: default_min_ops(),
            max_ops: default_max_ops(),
            warm_start_stop: WarmStart::Steps,
            warm_start_max_ops: default_max_ops(),
            plateau: PlateauRule::default(),
            validation_prompts: default_validation_prompts(),
            warm_start_repair: EmbeddedConfig::default().warm_start_repair,
        }
    }
}

pub(crate) fn hash<T: Serialize>(v: &T) -> String {
    let json = serde_json::to_string(v).expect("serialisable");
    let h = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

impl Setup {
    /// The cache folder of this setup's teacher, under the cache root:
    /// `v4-<task>-<hash of what the teacher depends on>`. Its warm starts
    /// live inside it, one folder per warm-start setup.
    pub fn cache_name(&self) -> String {
        format!("v4-{}-{}", self.task.name(), hash(&TeacherKey::of(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setups_that_share_a_teacher_share_its_cache_folder() {
        let a = Setup::default();
        let b = Setup {
            warm_start_stop: WarmStart::Plateau,
            student: (32, 1, 2, 1),
            ..a.clone()
        };
        let c = Setup {
            task: TaskKind::Orders,
            ..a.clone()
        };
        assert_eq!(a.cache_name(), b.cache_name());
        assert_ne!(hash(&a), hash(&b));
        let c2 = Setup {
            teacher_target: 0.5,
            ..a.clone()
        };
        assert_ne!(a.cache_name(), c2.cache_name());
        assert_ne!(a.cache_name(), c.cache_name());
        assert!(c.cache_name().starts_with("v4-orders-"));
    }
}
