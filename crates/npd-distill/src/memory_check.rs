//! The memory plan `--check` prints: per role on the run's device, the
//! estimated weights, gradients, optimizer state, activations at the
//! configured row length and KV caches (`npd_train::memory_plan`), the
//! peak (everything resident plus the largest phase), and a refusal
//! naming the keys to change when the peak exceeds the device.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use npd_engine::EngineKind;
use npd_train::ModelConfig;
use npd_train::device::kind_of;
use npd_train::memory::{self, gib};
use npd_train::memory_plan::{RoleMemory, StepShape, decoding, scoring, training};
use npd_train::score::{MAX_LOGITS, MAX_TOKENS_PER_PASS};
use npd_train::tch::Device;
use npd_train::train::precision_kind;

use crate::config::RunConfig;

/// One line of the plan.
#[derive(Debug, Clone)]
pub struct Role {
    /// What holds the memory.
    pub name: String,
    /// Its parts.
    pub memory: RoleMemory,
    /// Whether it stays allocated for the whole run (weights, trainer
    /// state) or only during its phase (scoring, a step, decoding).
    pub resident: bool,
}

/// The memory plan of a run on one device.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `model.device`.
    pub device: String,
    /// The roles on it.
    pub roles: Vec<Role>,
    /// Bytes the device has, where known.
    pub available: Option<u64>,
}

impl Plan {
    /// Everything resident plus the largest phase.
    pub fn peak(&self) -> u64 {
        let resident: u64 = self
            .roles
            .iter()
            .filter(|r| r.resident)
            .map(|r| r.memory.total())
            .sum();
        let phase = (self.roles.iter().filter(|r| !r.resident))
            .map(|r| r.memory.total())
            .max()
            .unwrap_or(0);
        resident + phase
    }

    /// The plan as a table.
    pub fn table(&self) -> String {
        let g = |b: u64| match b {
            0 => "-".to_string(),
            b if b < 1 << 30 => format!("{} MiB", b.div_ceil(1 << 20)),
            b => gib(b),
        };
        let mut out = format!(
            "memory plan on {} (estimates):\n\
             | role | kind | weights | gradients | optimizer | activations | logits | KV cache | total |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.device
        );
        for r in &self.roles {
            let m = &r.memory;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                if r.resident { "resident" } else { "phase" },
                g(m.weights),
                g(m.gradients),
                g(m.optimizer),
                g(m.activations),
                g(m.logits),
                g(m.kv_cache),
                g(m.total())
            );
        }
        let _ = writeln!(
            out,
            "peak (resident + largest phase): {}; the device has {}",
            gib(self.peak()),
            self.available.map_or("an unknown amount".to_string(), gib)
        );
        out
    }

    /// Fails when the peak exceeds the device, naming the keys that
    /// change it.
    pub fn check(&self) -> Result<()> {
        match self.available {
            Some(a) if self.peak() > a => bail!(
                "{}the run needs about {} on {} and the device has {}: lower train.micro_batch_rows \
                 or pack.capacity, set train.recompute = true, a smaller train.loss_chunk_tokens, \
                 train.precision = \"bf16\", a smaller rollout.batch_size, \
                 sampling.eval_batch_size or sampling.max_new_tokens, or move roles to servers \
                 (engine.kind = \"vllm\")",
                self.table(),
                gib(self.peak()),
                self.device,
                gib(a)
            ),
            _ => Ok(()),
        }
    }
}

/// The plan of `config` with the teacher and student architectures given.
pub fn plan(config: &RunConfig, teacher: &ModelConfig, student: &ModelConfig) -> Plan {
    let c = config;
    let teacher_kind = kind_of(c.model.dtype);
    let precision = precision_kind(c.train.precision);
    let row = c.pack.capacity as u64;
    let positions = (c.data.max_prompt_tokens + c.sampling.max_new_tokens) as u64;
    let served = c.engine.kind != EngineKind::InProcess;
    let mut trainer = training(
        student,
        &StepShape {
            tokens: c.train.micro_batch_rows as u64 * row,
            targets: c.train.micro_batch_rows as u64 * row,
            precision,
            recompute: c.train.recompute,
            loss_chunk_tokens: c.train.loss_chunk_tokens as u64,
        },
    );
    let step = RoleMemory {
        activations: std::mem::take(&mut trainer.activations),
        logits: std::mem::take(&mut trainer.logits),
        ..RoleMemory::default()
    };
    let weights = |m: RoleMemory| RoleMemory {
        weights: m.weights,
        ..RoleMemory::default()
    };
    let phase = |m: RoleMemory| RoleMemory { weights: 0, ..m };
    let role = |name: &str, memory, resident| Role {
        name: name.to_string(),
        memory,
        resident,
    };
    let mut roles = vec![
        role("student trainer (weights, gradients, AdamW)", trainer, true),
        role("training step", step, false),
    ];
    // The scorer packs up to MAX_TOKENS_PER_PASS tokens (at least a row)
    // and materialises MAX_LOGITS logits at a time.
    let pass = row.max(MAX_TOKENS_PER_PASS as u64);
    let scored = (MAX_LOGITS / teacher.vocab_size.max(1)).max(1) as u64;
    let teacher_scoring = scoring(teacher, teacher_kind, pass, scored);
    let eval_batch = c.sampling.eval_batch_size as u64;
    let teacher_check = decoding(teacher, teacher_kind, eval_batch, positions);
    let generation = decoding(student, precision, c.rollout.batch_size as u64, positions);
    let evaluation = decoding(student, precision, eval_batch, positions);
    // On servers, the teacher scores and the student generates there; the
    // teacher's accuracy check and evaluation still run here.
    let mut teacher_roles = vec![role("teacher weights", weights(teacher_scoring), true)];
    if !served {
        teacher_roles.push(role(
            "teacher scoring a pass",
            phase(teacher_scoring),
            false,
        ));
    }
    if c.engine.teacher_check_on_server() == Some(false) {
        teacher_roles.push(role(
            "teacher accuracy check (sampling.eval_batch_size)",
            phase(teacher_check),
            false,
        ));
    }
    // A teacher on a device of its own is planned there (teacher_plan).
    if c.model.teacher_device() == c.model.device {
        roles.extend(teacher_roles);
    }
    if !served {
        roles.extend([
            role("generator weights", weights(generation), true),
            role("generation (rollout.batch_size)", phase(generation), false),
        ]);
    }
    roles.push(role(
        "evaluation (sampling.eval_batch_size)",
        phase(evaluation),
        false,
    ));
    Plan {
        device: c.model.device.clone(),
        roles,
        available: device_memory(&c.model.device),
    }
}

/// The plan of the teacher's own device (`model.teacher_device`), when it
/// is not the student's: the teacher's weights, scoring and accuracy check.
pub fn teacher_plan(config: &RunConfig, teacher: &ModelConfig) -> Option<Plan> {
    let c = config;
    let device = c.model.teacher_device();
    if device == c.model.device {
        return None;
    }
    let kind = kind_of(c.model.dtype);
    let pass = (c.pack.capacity as u64).max(MAX_TOKENS_PER_PASS as u64);
    let scored = (MAX_LOGITS / teacher.vocab_size.max(1)).max(1) as u64;
    let scoring_memory = scoring(teacher, kind, pass, scored);
    let positions = (c.data.max_prompt_tokens + c.sampling.max_new_tokens) as u64;
    let check = decoding(teacher, kind, c.sampling.eval_batch_size as u64, positions);
    let mut roles = vec![Role {
        name: "teacher weights".into(),
        memory: RoleMemory {
            weights: scoring_memory.weights,
            ..RoleMemory::default()
        },
        resident: true,
    }];
    if c.engine.kind == EngineKind::InProcess {
        roles.push(Role {
            name: "teacher scoring a pass".into(),
            memory: RoleMemory {
                weights: 0,
                ..scoring_memory
            },
            resident: false,
        });
    }
    if c.engine.teacher_check_on_server() == Some(false) {
        roles.push(Role {
            name: "teacher accuracy check (sampling.eval_batch_size)".into(),
            memory: RoleMemory {
                weights: 0,
                ..check
            },
            resident: false,
        });
    }
    Some(Plan {
        device: device.to_string(),
        roles,
        available: device_memory(device),
    })
}

/// Bytes device `spec` has, where known.
fn device_memory(spec: &str) -> Option<u64> {
    match spec {
        "cpu" => memory::available(Device::Cpu),
        device => cuda_memory(device),
    }
}

/// Total memory of CUDA device `spec` (`cuda` or `cuda:N`) as
/// `nvidia-smi` reports it; `None` without it.
fn cuda_memory(spec: &str) -> Option<u64> {
    let index = spec.strip_prefix("cuda:").unwrap_or("0");
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            index,
        ])
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib << 20)
}

/// The teacher's and the student's architectures: the embedded default's
/// or those of the model folders' `config.json`.
pub fn architectures(
    config: &RunConfig,
    setup: &crate::embedded::setup::Setup,
) -> Result<(ModelConfig, ModelConfig)> {
    if config.model.teacher.as_os_str().is_empty() {
        let arch = |(h, l, nh, kv): (usize, usize, usize, usize)| {
            crate::embedded::model_config(h, l, nh, kv, setup.max_positions())
        };
        return Ok((arch(setup.teacher)?, arch(setup.student)?));
    }
    Ok((
        folder_config(&config.model.teacher)?,
        folder_config(&config.model.student)?,
    ))
}

/// The architecture in `dir/config.json`.
pub fn folder_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(ModelConfig::from_json(&text, &path.display().to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_b() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded",
            "vocab_size": 153376, "hidden_size": 1536, "intermediate_size": 6144,
            "num_hidden_layers": 26, "num_attention_heads": 12, "num_key_value_heads": 6,
            "tie_word_embeddings": true, "bias": true, "eos_token_id": 45892,
            "max_position_embeddings": 32768,
        });
        ModelConfig::from_json(&json.to_string(), "1b").unwrap()
    }

    #[test]
    fn a_teacher_on_its_own_device_is_planned_there_and_a_server_check_nowhere() {
        let mut config = RunConfig::default();
        config.model.device = "cpu".into();
        let teacher_roles = |p: &Plan| {
            p.roles
                .iter()
                .filter(|r| r.name.starts_with("teacher"))
                .count()
        };
        assert_eq!(teacher_roles(&plan(&config, &one_b(), &one_b())), 3);
        assert!(teacher_plan(&config, &one_b()).is_none());
        config.model.teacher_device = "cuda:1".into();
        assert_eq!(teacher_roles(&plan(&config, &one_b(), &one_b())), 0);
        let t = teacher_plan(&config, &one_b()).unwrap();
        assert_eq!((t.device.as_str(), t.roles.len()), ("cuda:1", 3));
        // With servers the teacher scores and checks there: only its
        // weights stay (for the start probe).
        config.engine.kind = EngineKind::Vllm;
        let t = teacher_plan(&config, &one_b()).unwrap();
        assert_eq!(t.roles.len(), 1, "{}", t.table());
    }

    #[test]
    fn a_plan_larger_than_the_device_is_refused_naming_the_keys() {
        let mut config = RunConfig::default();
        config.model.device = "cpu".into();
        config.sampling.max_new_tokens = 8192;
        config.sampling.eval_batch_size = 4096;
        let p = plan(&config, &one_b(), &one_b());
        // 4096 sequences of 9216 positions, 26 layers of 6 KV heads of 128
        // in f32 (keys and values).
        let kv = 4096 * 9216 * 26 * 6 * 128 * 2 * 4;
        assert!(
            p.roles.iter().any(|r| r.memory.kv_cache == kv),
            "{}",
            p.table()
        );
        if p.available.is_some() {
            let err = p.check().unwrap_err().to_string();
            assert!(
                err.contains("sampling.eval_batch_size") && err.contains("train.recompute"),
                "{err}"
            );
        }
        config.sampling.eval_batch_size = 1;
        config.sampling.max_new_tokens = 16;
        config.pack.capacity = 64;
        config.rollout.batch_size = 1;
        let small = plan(&config, &one_b(), &one_b());
        assert!(small.peak() < p.peak() / 100);
        assert!(
            small.table().contains("| student trainer"),
            "{}",
            small.table()
        );
    }
}
