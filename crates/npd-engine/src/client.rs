//! JSON over HTTP to one server: every call has a timeout, transport
//! failures and server errors (5xx) are retried a bounded number of times,
//! and every error names the URL and what came back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use npd_core::{Error, Result};

/// A server's base URL with the timeout and retry policy of its calls.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    retries: u32,
    /// Once set, calls in flight and retries give up at once.
    cancel: Option<Arc<AtomicBool>>,
}

/// How often a cancellable call looks at its flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Why a call failed, before it becomes an [`Error`].
enum Failure {
    /// Worth another try: the connection failed or timed out, or the server
    /// answered 5xx.
    Transient(String),
    /// The server refused the request (4xx) or answered something that is
    /// not JSON: trying again would get the same answer.
    Permanent(String),
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8000`):
    /// each call may take at most `timeout`, and fails after `retries`
    /// further tries.
    pub fn new(base: &str, timeout: Duration, retries: u32) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent,
            retries,
            cancel: None,
        }
    }

    /// The same client, whose calls (and waits between retries) end with
    /// [`Error::Interrupted`] within a moment of `cancel` being set, even
    /// while a server takes its whole timeout to answer.
    pub fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> Self {
        self.cancel = Some(cancel);
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Runs `call` (one request and the reading of its answer); with a
    /// cancel flag, on a thread of its own, so that a server that hangs
    /// does not hold the caller past a cancellation.
    fn run<T: Send + 'static>(
        &self,
        method: &str,
        path: &str,
        call: impl FnOnce(ureq::Agent, String) -> T + Send + 'static,
    ) -> Result<T> {
        let (agent, url) = (self.agent.clone(), self.url(path));
        let Some(cancel) = &self.cancel else {
            return Ok(call(agent, url));
        };
        let interrupted = || Error::Interrupted {
            what: format!("waiting on {method} {}", self.url(path)),
        };
        if cancel.load(Ordering::SeqCst) {
            return Err(interrupted());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(call(agent, url));
        });
        loop {
            match rx.recv_timeout(CANCEL_POLL) {
                Ok(v) => return Ok(v),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::SeqCst) {
                        return Err(interrupted());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.error(method, path, "the call's thread ended".into()));
                }
            }
        }
    }

    /// Sleeps `d`, or less when the client is cancelled.
    fn pause(&self, d: Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < d && !self.cancelled() {
            std::thread::sleep(CANCEL_POLL.min(d));
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST path` with a JSON body; the answer's JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.with_retries("POST", path, || {
            let body = body.clone();
            self.run("POST", path, move |agent, url| {
                read(agent.post(&url).send_json(&body))
            })
        })
    }

    /// `GET path`; the answer's JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.with_retries("GET", path, || {
            self.run("GET", path, |agent, url| read(agent.get(&url).call()))
        })
    }

    /// `POST path` without retries, for calls that must not run twice
    /// (weight reloads) and for health probes; `Ok(None)` when the server
    /// cannot be reached.
    pub fn post_once(&self, path: &str, body: &Value) -> Result<Option<Value>> {
        let body = body.clone();
        let answer = self.run("POST", path, move |agent, url| {
            read(agent.post(&url).send_json(&body))
        })?;
        match answer {
            Ok(v) => Ok(Some(v)),
            Err(Failure::Transient(m)) if m.starts_with("cannot reach") => Ok(None),
            Err(Failure::Transient(m) | Failure::Permanent(m)) => Err(self.error("POST", path, m)),
        }
    }

    /// Whether `GET path` answers 200 now (no retries); a cancelled
    /// client's server is not up.
    pub fn is_up(&self, path: &str) -> bool {
        self.run(
            "GET",
            path,
            |agent, url| matches!(agent.get(&url).call(), Ok(r) if r.status().as_u16() == 200),
        )
        .unwrap_or(false)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn error(&self, method: &str, path: &str, message: String) -> Error {
        Error::Backend {
            context: format!("{method} {}", self.url(path)),
            cause: message.into(),
        }
    }

    fn with_retries(
        &self,
        method: &str,
        path: &str,
        call: impl Fn() -> Result<Result<Value, Failure>>,
    ) -> Result<Value> {
        let mut attempt = 0;
        loop {
            match call()? {
                Ok(v) => return Ok(v),
                Err(Failure::Permanent(m)) => return Err(self.error(method, path, m)),
                Err(Failure::Transient(m)) if attempt >= self.retries => {
                    let tries = match attempt + 1 {
                        1 => "1 try".to_string(),
                        n => format!("{n} tries"),
                    };
                    return Err(self.error(method, path, format!("{m} (after {tries})")));
                }
                Err(Failure::Transient(m)) => {
                    attempt += 1;
                    tracing::warn!(
                        "{method} {}: {m}; retry {attempt} of {}",
                        self.url(path),
                        self.retries
                    );
                    self.pause(Duration::from_millis(250 << attempt.min(4)));
                    if self.cancelled() {
                        return Err(Error::Interrupted {
                            what: format!("retrying {method} {}", self.url(path)),
                        });
                    }
                }
            }
        }
    }
}

fn read(answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, Failure> {
    let mut response = match answer {
        Ok(r) => r,
        Err(ureq::Error::Timeout(t)) => return Err(Failure::Transient(format!("timed out ({t})"))),
        Err(
            e @ (ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound),
        ) => {
            return Err(Failure::Transient(format!("cannot reach the server: {e}")));
        }
        Err(e) => return Err(Failure::Transient(e.to_string())),
    };
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .map_err(|e| Failure::Transient(format!("reading the answer (status {status}): {e}")))?;
    if status >= 500 {
        return Err(Failure::Transient(format!(
            "status {status}: {}",
            excerpt(&text)
        )));
    }
    if status >= 400 {
        return Err(Failure::Permanent(format!(
            "status {status}: {}",
            excerpt(&text)
        )));
    }
    serde_json::from_str(&text).map_err(|e| {
        Failure::Permanent(format!(
            "status {status} but the answer is not JSON ({e}): {}",
            excerpt(&text)
        ))
    })
}

/// The start of a server's answer, for an error message.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}
