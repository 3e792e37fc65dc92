//! The distillation loops of npd, generic over the stage traits of
//! `npd-core`, with no model code of their own: any [`Generator`],
//! [`Scorer`] and [`Learner`] (libtorch in `npd-train`, an inference
//! server, a test double) plugs in.
//!
//! - [`NearPolicy`]: NPD: a student snapshot generates on its own thread,
//!   refreshed every K optimizer steps with bounded staleness; the teacher
//!   scores pools of rollouts; Δ-IFD filters them; kept samples are packed.
//! - [`OnPolicy`]: synchronous on-policy distillation, the baseline.
//! - [`Sft`]: supervised fine-tuning on teacher-written responses.
//! - [`Comparison`]: the methods side by side over one [`Stages`] backend,
//!   with [`Checkpoints`] for resume and a [`Report`] (Markdown, JSON,
//!   SVG).
//!
//! Around the loop: a [`Loop`] holds the settings and prompts, and
//! optionally checkpoints, an [`Observer`] of typed events and an
//! [`Interrupt`] that stops a run cleanly (a [`RunEnd::Stopped`], not an
//! error).
//!
//! [`Generator`]: npd_core::traits::Generator
//! [`Scorer`]: npd_core::traits::Scorer
//! [`Learner`]: npd_core::traits::Learner
//! [`Observer`]: npd_core::events::Observer
//! [`Interrupt`]: npd_core::traits::Interrupt
//!
//! # Your own stages in NPD
//!
//! ```
//! use std::path::Path;
//! use npd_core::config::{SamplingConfig, TrainConfig};
//! use npd_core::traits::{Evaluator, Generator, Learner, Persist, ScoreOptions, ScoreRequest,
//!     Scorer, SequenceScores, StepStats};
//! use npd_core::{FinishReason, PackedRow, PolicyVersion, Prompt, PromptId, ResponseLogProbs,
//!     Result, Rollout, SamplingParams};
//! use npd_pipeline::{Loop, NearPolicy, RunEnd, Settings};
//!
//! /// A "model" that is one number; its generator answers every prompt
//! /// with two tokens.
//! struct MyLearner { steps: u64 }
//! struct MyGenerator { version: PolicyVersion }
//! struct MyTeacher;
//! struct MyEval;
//!
//! impl Learner for MyLearner {
//!     type Weights = u64;
//!     fn step(&mut self, rows: &[PackedRow]) -> Result<StepStats> {
//!         self.steps += 1;
//!         let tokens = rows.iter().map(PackedRow::used).sum();
//!         Ok(StepStats { loss: 1.0 / self.steps as f64, tokens, ..StepStats::default() })
//!     }
//!     fn version(&self) -> PolicyVersion { self.steps }
//!     fn publish(&self) -> Result<u64> { Ok(self.steps) }
//! }
//! impl Persist for MyLearner {
//!     fn save_state(&self, dir: &Path) -> Result<()> {
//!         npd_core::fs::write_atomic(&dir.join("steps"), self.steps.to_string().as_bytes())
//!     }
//!     fn restore_state(&mut self, dir: &Path) -> Result<()> {
//!         let text = std::fs::read_to_string(dir.join("steps"))
//!             .map_err(|source| npd_core::Error::Io { path: dir.join("steps"), source })?;
//!         self.steps = text.parse().map_err(|_| npd_core::Error::invalid("steps", "not a number"))?;
//!         Ok(())
//!     }
//! }
//! impl Generator for MyGenerator {
//!     type Weights = u64;
//!     fn version(&self) -> PolicyVersion { self.version }
//!     fn load(&mut self, _w: u64, version: PolicyVersion) -> Result<()> {
//!         self.version = version;
//!         Ok(())
//!     }
//!     fn generate(&mut self, prompts: &[Prompt], _p: &SamplingParams) -> Result<Vec<Rollout>> {
//!         Ok(prompts.iter().map(|p| Rollout {
//!             prompt_id: p.id,
//!             prompt: p.tokens.clone(),
//!             response: vec![5, 2],
//!             response_logprobs: vec![-0.5, -0.1],
//!             response_alone_logprobs: vec![-1.0, -0.2],
//!             policy_version: self.version,
//!             finish: FinishReason::Stop,
//!         }).collect())
//!     }
//! }
//! impl Scorer for MyTeacher {
//!     fn score(&mut self, req: &[ScoreRequest<'_>], _o: &ScoreOptions)
//!         -> Result<Vec<SequenceScores>> {
//!         Ok(req.iter().map(|r| {
//!             let n = r.tokens.len() - r.prompt_len;
//!             SequenceScores {
//!                 logprobs: ResponseLogProbs { conditioned: vec![-0.4; n], alone: vec![-0.9; n] },
//!                 topk: None,
//!             }
//!         }).collect())
//!     }
//! }
//! impl Evaluator<MyLearner> for MyEval {
//!     fn evaluate(&mut self, l: &MyLearner) -> Result<f64> { Ok(l.steps as f64 / 100.0) }
//! }
//!
//! let train = TrainConfig { steps: 4, rows_per_step: 8, ..TrainConfig::default() };
//! let rollout = npd_rollout::RolloutConfig {
//!     refresh_every: 2,
//!     batch_size: 8,
//!     ..Default::default()
//! };
//! let pack = npd_pack::PackConfig { capacity: 64, ..Default::default() };
//! let filter = npd_filter::FilterConfig::default();
//! let settings = Settings::new(&train, &rollout, &SamplingConfig::default(), &filter, &pack)
//!     .with_tokens(vec![2], vec![1], 0);
//! let prompts: Vec<Prompt> =
//!     (0..20).map(|i| Prompt { id: PromptId(i), tokens: vec![1, 3 + i as u32 % 7] }).collect();
//! let mut learner = MyLearner { steps: 0 };
//! let end = NearPolicy::new(&mut learner, MyGenerator { version: 0 }, &mut MyTeacher, &mut MyEval)
//!     .run(&mut Loop::new(&settings, &prompts), 0)?;
//! let outcome = end.finished().expect("no interrupt was set");
//! assert_eq!(learner.steps, 4);
//! assert!(outcome.ledger.unwrap().adds_up());
//! # Ok::<(), npd_pipeline::Error>(())
//! ```

pub mod checkpoints;
pub mod clock;
pub mod comparison;
pub mod context;
pub mod error;
pub mod grpo;
pub mod near_policy;
pub mod on_policy;
pub mod outcome;
pub mod output;
pub mod report;
pub mod report_refresh;
pub mod report_rl;
mod run;
pub mod settings;
pub mod sft;
mod source;
pub mod teacher_prompts;

pub use checkpoints::{Checkpoints, SavedNpd, SavedRun};
pub use comparison::{Comparison, RlStart, Stages};
pub use context::Loop;
pub use error::{Error, Result};
pub use near_policy::NearPolicy;
pub use npd_core::Method;
pub use on_policy::OnPolicy;
pub use outcome::{CurvePoint, Outcome, RlEvalPoint, RlStepPoint, RlTrace, RunEnd};
pub use output::OutputConfig;
pub use report::{Report, Roles};
pub use report_refresh::RefreshCost;
pub use settings::Settings;
pub use sft::{Sft, write_responses, write_responses_with_progress};
