//! What a run is: the embedded default's values, then the configuration
//! file's, then the command line's ([`Options`]), checked as a whole by
//! [`configure`] before anything runs.

use std::path::PathBuf;

use anyhow::Result;
use npd_core::config::LossKind;
use npd_pipeline::Method;

use crate::config::RunConfig;
use crate::embedded::prepare::Setup;
use crate::{EngineKind, checks, embedded};

/// What to run: the command line's choices over the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run configuration (TOML); `None` runs the embedded default.
    pub config: Option<PathBuf>,
    /// Output folder (overrides `output.dir`).
    pub out: Option<PathBuf>,
    /// Methods to run, in order.
    pub methods: Vec<Method>,
    /// Seeds per method; `None`: 2, or 1 with `quick`.
    pub seeds: Option<u64>,
    /// Optimizer steps per method (overrides `train.steps`).
    pub steps: Option<u64>,
    /// Turn the Δ-IFD filter off.
    pub no_filter: bool,
    /// NPD refresh interval (overrides `rollout.refresh_every`).
    pub refresh_every: Option<u64>,
    /// Training divergence (overrides `train.loss`).
    pub loss: Option<LossKind>,
    /// A small budget for smoke tests.
    pub quick: bool,
    /// Where rollouts and teacher scores come from (overrides
    /// `engine.kind`).
    pub engine: Option<EngineKind>,
    /// Folder caching the embedded teacher and warm start.
    pub cache: Option<PathBuf>,
    /// Continue the run in the output folder.
    pub resume: bool,
    /// Steps between checkpoints (overrides `output.checkpoint_every`).
    pub checkpoint_every: Option<u64>,
    /// Print what the run would do and cost (see [`crate::plan`]) instead
    /// of running it.
    pub plan: bool,
}

impl Default for Options {
    /// The embedded default: every method, the default seeds, nothing
    /// overridden.
    fn default() -> Self {
        Self {
            config: None,
            out: None,
            methods: Method::DISTILLATION.to_vec(),
            seeds: None,
            steps: None,
            no_filter: false,
            refresh_every: None,
            loss: None,
            quick: false,
            engine: None,
            cache: None,
            resume: false,
            checkpoint_every: None,
            plan: false,
        }
    }
}

/// The embedded default's run configuration: the `[train]`, `[rollout]` and
/// `[sampling]` values that fit its tiny models and `c.embedded`'s task.
pub fn embedded_defaults(c: &mut RunConfig) {
    c.train.steps = 200;
    // Below the warm start's final 2e-4: a fresh optimizer at 3e-4 cost
    // every method 2-10 points in its first 40 steps (docs/reproduction.md).
    c.train.lr = 1e-4;
    c.train.min_lr = 1e-5;
    c.train.warmup_steps = 20;
    c.train.weight_decay = 0.0;
    c.train.micro_batch_rows = 64;
    c.train.rows_per_step = 64;
    c.train.top_k = 8;
    c.rollout.refresh_every = 10;
    c.rollout.max_lag = 2;
    c.rollout.batch_size = 64;
    c.rollout.reuse = 1;
    // 48 for the default task's chains of at most 8 steps.
    c.sampling.max_new_tokens = c.embedded.task_spec().response_budget();
    // Rollouts at 0.7: at 1.0 much of the signal goes to slips that the
    // greedy decoding of evaluation never makes (docs/reproduction.md).
    c.sampling.temperature = 0.7;
    c.pack.capacity = 512;
    c.rollout.queue_capacity = 128;
    c.filter.lower_percentile = 0.05;
    c.filter.upper_percentile = 0.9;
    c.output.checkpoint_every = 50;
}

/// `--quick`'s RL stage: ten steps, a small sampled evaluation; keys the
/// file sets stay.
fn quick_rl(rl: &mut npd_core::config::RlConfig, explicit: &dyn Fn(&str) -> bool) {
    let unset = |key: &str| !explicit(&format!("rl.{key}"));
    if unset("steps") {
        rl.steps = rl.steps.min(10);
    }
    if unset("eval_every") {
        rl.eval_every = rl.eval_every.min(5);
    }
    if unset("eval_prompts") {
        rl.eval_prompts = rl.eval_prompts.min(32);
    }
    if unset("eval_samples") && unset("pass_k") {
        rl.eval_samples = rl.eval_samples.min(4);
        rl.pass_k.retain(|&k| k <= 4);
        if rl.pass_k.is_empty() {
            rl.pass_k.push(1);
        }
    }
}

/// `rl.from` names a model folder, and only for the method `rl`.
fn check_rl_from(config: &RunConfig, methods: &[Method]) -> Result<()> {
    let from = &config.rl.from;
    if from.as_os_str().is_empty() {
        return Ok(());
    }
    if !methods.contains(&Method::Rl) {
        anyhow::bail!(
            "`rl.from` = {:?} is where the method rl starts, and this run does not name rl \
             (the other RL methods start from their method's final weights)",
            from.display().to_string()
        );
    }
    if !from.join("config.json").is_file() {
        anyhow::bail!(
            "`rl.from` = {:?}: expected a model folder with config.json and safetensors \
             (for example a checkpoint's model/ folder)",
            from.display().to_string()
        );
    }
    Ok(())
}

/// The order methods run in: each RL method after the method it starts
/// from, which runs even when not named (`npd+rl` alone runs NPD, then
/// RL from its final weights of each seed).
pub fn run_order(methods: &[Method]) -> Vec<Method> {
    let mut out: Vec<Method> = Vec::new();
    for &m in methods {
        if let Some(Some(start)) = m.rl_start()
            && !out.contains(&start)
        {
            out.push(start);
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// The effective configuration, the embedded setup and the seed count:
/// the embedded default's values, then the file's, then the options'.
pub fn configure(o: &Options) -> Result<(RunConfig, Setup, u64)> {
    if o.methods.is_empty() {
        anyhow::bail!(
            "no method to run: name at least one of sft, on-policy, npd, rl, sft+rl, \
             on-policy+rl, npd+rl"
        );
    }
    for (i, m) in o.methods.iter().enumerate() {
        if o.methods[..i].contains(m) {
            anyhow::bail!(
                "method {} is named twice: each method runs once per seed (use --seeds for \
                 more runs)",
                m.slug()
            );
        }
    }
    let mut config = RunConfig::default();
    embedded_defaults(&mut config);
    if let Some(path) = &o.config {
        // The file's keys override the embedded default's; a file naming
        // model folders starts from the general defaults instead.
        let over = RunConfig::from_file_over(path, &config)?;
        config = if over.model.teacher.as_os_str().is_empty() {
            // The response budget follows the file's task lengths unless
            // the file sets it.
            let mut base = RunConfig {
                embedded: over.embedded.clone(),
                ..config
            };
            embedded_defaults(&mut base);
            RunConfig::from_file_over(path, &base)?
        } else {
            RunConfig::from_file(path)?
        };
    }
    check_rl_from(&config, &o.methods)?;
    let explicit = crate::config::explicit_keys(o.config.as_deref())?;
    let explicit = |key: &str| explicit.contains(key);
    if let Some(s) = o.steps {
        config.train.steps = s;
    } else if o.quick && !explicit("train.steps") {
        config.train.steps = config.train.steps.min(20);
    }
    if o.quick {
        quick_rl(&mut config.rl, &explicit);
    }
    if o.quick && config.model.teacher.as_os_str().is_empty() {
        embedded::prepare::quick_keys(&mut config.embedded, &explicit);
    }
    if let Some(k) = o.refresh_every {
        config.rollout.refresh_every = k;
    }
    if o.no_filter {
        config.filter.enabled = false;
    }
    if let Some(l) = o.loss {
        config.train.loss = l;
    }
    if let Some(out) = &o.out {
        config.output.dir = out.clone();
    }
    if let Some(n) = o.checkpoint_every {
        config.output.checkpoint_every = n;
    }
    if let Some(e) = o.engine {
        config.engine.kind = e;
    }
    let mut setup = Setup::from_config(&config.embedded);
    let seeds = o.seeds.unwrap_or(if o.quick { 1 } else { 2 });
    if o.quick {
        setup = setup.quick();
    }
    if config.engine.kind == EngineKind::Vllm {
        // vLLM's CPU attention needs head sizes of 32 or more.
        setup = setup.with_head_dim(32);
    }
    config.validate("flags")?;
    if config.model.teacher.as_os_str().is_empty() {
        checks::refuse_ignored_keys(&config)?;
        setup.check_fits()?;
    } else {
        checks::refuse_embedded_keys(&config)?;
        checks::require_folder_keys(&config)?;
    }
    checks::refuse_server_keys(&config)?;
    checks::refuse_unsupported(&config)?;
    Ok((config, setup, seeds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rl_methods_run_after_their_start() {
        use Method::*;
        assert_eq!(run_order(&[NearPolicyRl]), [NearPolicy, NearPolicyRl]);
        assert_eq!(
            run_order(&[Sft, NearPolicyRl, NearPolicy, Rl]),
            [Sft, NearPolicy, NearPolicyRl, Rl]
        );
        assert_eq!(
            run_order(&[SftRl, OnPolicyRl]),
            [Sft, SftRl, OnPolicy, OnPolicyRl]
        );
        assert_eq!(run_order(&Method::DISTILLATION), Method::DISTILLATION);
    }
    use crate::describe;

    fn options(config: Option<PathBuf>) -> Options {
        Options {
            config,
            seeds: Some(1),
            ..Options::default()
        }
    }

    fn configured(text: &str, o: impl FnOnce(&mut Options)) -> Result<(RunConfig, Setup, u64)> {
        // Unique per call: tests with the same text run in parallel.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("npd-configure-{}-{call}.toml", std::process::id(),));
        std::fs::write(&path, text).unwrap();
        let mut options = options(Some(path.clone()));
        o(&mut options);
        let result = configure(&options);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn refused(text: &str, o: impl FnOnce(&mut Options)) -> String {
        describe(&configured(text, o).unwrap_err())
    }

    #[test]
    fn keys_that_would_be_ignored_or_cannot_run_are_refused_when_checked() {
        // A teacher without a student or prompts.
        let err = refused("[model]\nteacher = \"t\"\n", |_| {});
        assert!(err.contains("model.student"), "{err}");
        let err = refused("[model]\nteacher = \"t\"\nstudent = \"s\"\n", |_| {});
        assert!(err.contains("data.prompts"), "{err}");
        // Server keys with the in-process engine.
        let err = refused(
            "[engine]\nstudent_url = \"http://127.0.0.1:8000\"\n",
            |_| {},
        );
        assert!(
            err.contains("engine.student_url") && err.contains("in-process"),
            "{err}"
        );
        let text = "[engine]\nteacher_url = \"http://127.0.0.1:8000\"\n";
        configured(text, |o| o.engine = Some(EngineKind::Vllm)).unwrap();
        // A documented form no engine can run.
        let err = refused("[filter]\nform = \"staleness\"\n", |_| {});
        assert!(
            err.contains("filter.form") && err.contains("snapshot"),
            "{err}"
        );
        // Sampling values the sampler cannot represent.
        for (text, key) in [
            ("[sampling]\ntemperature = 1e300\n", "sampling.temperature"),
            ("[sampling]\ntop_p = 1e-300\n", "sampling.top_p"),
        ] {
            let err = refused(text, |_| {});
            assert!(err.contains(key), "{text}: {err}");
        }
        // Methods named twice.
        let err = refused("", |o| {
            o.methods = vec![Method::NearPolicy, Method::NearPolicy]
        });
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn a_student_too_big_for_memory_is_refused_naming_the_key() {
        for student in ["[131072, 1]", "[262144, 1]"] {
            let err = refused(&format!("[embedded]\nstudent = {student}\n"), |_| {});
            assert!(
                err.contains("embedded.student")
                    && (err.contains("GiB available") || err.contains("parameters")),
                "{student}: {err}"
            );
        }
    }

    #[test]
    fn quick_shrinks_only_what_the_file_leaves_unset() {
        let (c, setup, seeds) = configured("", |o| {
            o.quick = true;
            o.seeds = None;
        })
        .unwrap();
        assert_eq!((c.train.steps, c.embedded.student, seeds), (20, [32, 1], 1));
        assert_eq!(setup.student.0, 32);
        let text = "[embedded]\nstudent = [128, 3]\n[train]\nsteps = 30\n";
        let (c, setup, seeds) = configured(text, |o| {
            o.quick = true;
            o.seeds = Some(3);
        })
        .unwrap();
        assert_eq!(
            (c.train.steps, c.embedded.student, seeds),
            (30, [128, 3], 3)
        );
        assert_eq!((setup.student.0, setup.student.1), (128, 3));
    }

    #[test]
    fn the_embedded_default_refuses_keys_it_would_ignore() {
        let path =
            std::env::temp_dir().join(format!("npd-embedded-keys-{}.toml", std::process::id()));
        for (text, key) in [
            ("[data]\nprompts = \"p.jsonl\"\n", "data.prompts"),
            ("[model]\nstudent = \"s\"\n", "model.student"),
            ("[model]\ndtype = \"bf16\"\n", "model.dtype"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = configure(&options(Some(path.clone())))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("model.teacher"),
                "{text}: {err}"
            );
        }
        std::fs::write(
            &path,
            "[model]\nteacher = \"t\"\nstudent = \"s\"\n[embedded]\ntask = \"orders\"\n",
        )
        .unwrap();
        let err = configure(&options(Some(path.clone())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[embedded]"), "{err}");
        std::fs::write(&path, "[embedded]\nmax_ops = 24\n").unwrap();
        let (config, setup, _) = configure(&options(Some(path.clone()))).unwrap();
        // The response budget follows the task's lengths.
        assert_eq!(config.sampling.max_new_tokens, 5 * 24 + 8);
        assert_eq!(setup.max_ops, 24);
        std::fs::write(
            &path,
            "[embedded]\nmax_ops = 24\n[sampling]\nmax_new_tokens = 200\n",
        )
        .unwrap();
        let (config, _, _) = configure(&options(Some(path.clone()))).unwrap();
        assert_eq!(config.sampling.max_new_tokens, 200);
        std::fs::write(&path, "[train]\nsteps = 7\n").unwrap();
        let (config, _, _) = configure(&options(Some(path.clone()))).unwrap();
        assert_eq!(config.train.steps, 7);
        let _ = std::fs::remove_file(&path);
    }
}
