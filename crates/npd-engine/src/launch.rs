//! vLLM servers npd starts itself, as child processes: a free port, the
//! command line in the log, a wait until `/health` answers, and a clean
//! shutdown of the server's whole process group when the handle is dropped
//! (also when npd itself is killed: a watcher in the group ends the server
//! once its parent is gone).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use npd_core::{Error, Result};

use crate::client::Client;

/// How to start one server.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// What the server is for, in messages (`student`, `teacher`).
    pub role: String,
    /// The Python that has vLLM installed.
    pub python: PathBuf,
    /// The model folder (Hugging Face layout, with its tokenizer).
    pub model: PathBuf,
    /// `--dtype`: what the server computes in.
    pub dtype: crate::ServedDtype,
    /// `--max-model-len`.
    pub max_model_len: usize,
    /// `--max-logprobs` (the largest top-k a request may ask for).
    pub max_logprobs: usize,
    /// KV cache of a CPU server, GiB (`VLLM_CPU_KVCACHE_SPACE`).
    pub kv_cache_gib: usize,
    /// Cores of a CPU server (`VLLM_CPU_OMP_THREADS_BIND`, e.g. `0-3` or
    /// `1`; empty: `auto`).
    pub cpus: String,
    /// Where the server's output goes.
    pub log: PathBuf,
    /// More arguments for `vllm serve`, after npd's own.
    pub extra_args: Vec<String>,
}

/// A running server started by npd.
#[derive(Debug)]
pub struct Launched {
    child: Child,
    url: String,
    role: String,
    log: PathBuf,
    command_line: String,
    /// Once set, the wait for `/health` gives up and the server is killed
    /// at once instead of shut down gracefully.
    cancel: Option<Arc<AtomicBool>>,
}

/// The port a new server may listen on (free when asked).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

/// The watcher wrapped around the server: it runs the server in the
/// background and, when npd is gone or asks it to stop, ends the server's
/// process group (TERM, then KILL after 10 s); when the server dies, it
/// kills the rest of the group (vLLM's engine processes outlive a killed
/// API process).
const WATCHER: &str = r#"parent=$1; shift
"$@" &
server=$!
stop() { kill -TERM "$server" 2>/dev/null; for _ in $(seq 20); do kill -0 "$server" 2>/dev/null || kill -KILL 0; sleep 0.5; done; kill -KILL 0; }
trap stop TERM INT
while kill -0 "$parent" 2>/dev/null; do
    # The server died: end what is left of it (its engine processes).
    kill -0 "$server" 2>/dev/null || { wait "$server"; kill -KILL 0; }
    sleep 1
done
stop"#;

impl Launched {
    /// Starts the server and waits until it answers `/health`, for at most
    /// `startup`; a server that exits or does not come up in time is an
    /// error quoting the end of its log.
    pub fn start(spec: &LaunchSpec, startup: Duration) -> Result<Self> {
        Self::start_cancellable(spec, startup, None)
    }

    /// [`Launched::start`], giving up the wait for `/health` (and killing
    /// the server) within a moment of `cancel` being set: the error is then
    /// [`Error::Interrupted`].
    pub fn start_cancellable(
        spec: &LaunchSpec,
        startup: Duration,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Self> {
        let port = free_port()?;
        let mut args: Vec<String> = vec![
            "-m".into(),
            "vllm.entrypoints.openai.api_server".into(),
            "--model".into(),
            spec.model.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--dtype".into(),
            spec.dtype.name().into(),
            "--max-model-len".into(),
            spec.max_model_len.to_string(),
            "--max-logprobs".into(),
            spec.max_logprobs.to_string(),
            "--enforce-eager".into(),
            "--disable-log-stats".into(),
        ];
        args.extend(spec.extra_args.iter().cloned());
        let env = [
            ("VLLM_TARGET_DEVICE", "cpu".to_string()),
            ("VLLM_CPU_KVCACHE_SPACE", spec.kv_cache_gib.to_string()),
            (
                "VLLM_CPU_OMP_THREADS_BIND",
                if spec.cpus.is_empty() {
                    "auto".to_string()
                } else {
                    spec.cpus.clone()
                },
            ),
            // /pause, /resume and /collective_rpc (weight refresh).
            ("VLLM_SERVER_DEV_MODE", "1".to_string()),
            ("VLLM_NO_USAGE_STATS", "1".to_string()),
            ("HF_HUB_OFFLINE", "1".to_string()),
        ];
        let command_line = format!(
            "{} {} {}",
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            spec.python.display(),
            args.join(" ")
        );
        tracing::info!("starting the {} server: {command_line}", spec.role);
        let log = File::create(&spec.log).map_err(|source| Error::Io {
            path: spec.log.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            path: spec.log.clone(),
            source,
        })?;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(WATCHER)
            .arg("npd-server-watcher")
            .arg(std::process::id().to_string())
            .arg(&spec.python)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // A group of its own: Ctrl-C in the terminal reaches npd, which
            // stops cleanly and then ends the server.
            .process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Io {
            path: "bash".into(),
            source,
        })?;
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            role: spec.role.clone(),
            log: spec.log.clone(),
            command_line,
            cancel,
        };
        server.wait_healthy(startup)?;
        Ok(server)
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    fn wait_healthy(&mut self, startup: Duration) -> Result<()> {
        let mut client = Client::new(&self.url, Duration::from_secs(5), 0);
        if let Some(c) = &self.cancel {
            client = client.with_cancel(Arc::clone(c));
        }
        let start = Instant::now();
        loop {
            if client.is_up("/health") {
                tracing::info!(
                    "{} server up at {} after {:.1} s",
                    self.role,
                    self.url,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(&format!("exited ({status}) before answering /health")));
            }
            if start.elapsed() > startup {
                return Err(self.failed(&format!(
                    "did not answer /health within {} s",
                    startup.as_secs()
                )));
            }
            let pause = Instant::now();
            while pause.elapsed() < Duration::from_millis(500) {
                if self.cancelled() {
                    return Err(Error::Interrupted {
                        what: format!("waiting for the {} server to answer /health", self.role),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn failed(&self, what: &str) -> Error {
        Error::Backend {
            context: format!("{} server ({})", self.role, self.command_line),
            cause: format!(
                "{what}; the end of its log {}:\n{}",
                self.log.display(),
                tail(&self.log, 25)
            )
            .into(),
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Kills the server at once (SIGKILL to its process group), as a crash
    /// would.
    pub fn kill(&mut self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Launched {
    /// Asks the server to shut down (SIGTERM to the watcher, which ends the
    /// server) and waits; kills the group if it takes over 15 s.
    fn drop(&mut self) {
        if self.cancelled() {
            // Stopped on request: no time for a graceful shutdown.
            self.kill();
            return;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            // The watcher is gone; end whatever is left of its group.
            let _ = killpg(self.pgid(), Signal::SIGKILL);
            return;
        }
        let _ = nix::sys::signal::kill(self.pgid(), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = killpg(self.pgid(), Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
