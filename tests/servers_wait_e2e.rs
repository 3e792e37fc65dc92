//! End to end: the first Ctrl-C ends a run that waits on servers within
//! moments, with the documented status, whether npd waits for a server it
//! started to answer `/health` or on a server that accepts connections
//! and never answers; the server npd started is gone with it.

mod common;

use common::{example, interrupt, scratch};

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the quick NPD on servers with `config`, sends Ctrl-C once
/// `ready(stderr so far)` holds, and returns the exit status, the time
/// from Ctrl-C to exit and stderr.
fn interrupted_run(
    config: &Path,
    out: &Path,
    cache: &Path,
    ready: impl Fn(&str) -> bool,
) -> (Option<i32>, Duration, String) {
    let mut child = Command::new(example())
        .args([
            "--quick",
            "--engine",
            "vllm",
            "--methods",
            "npd",
            "--config",
        ])
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let start = Instant::now();
    while !ready(&text) {
        if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(100)) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it waited on a server:\n{text}");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "{text}");
    }
    // Well inside the wait: the server hangs for minutes.
    std::thread::sleep(Duration::from_secs(2));
    interrupt(&child);
    let sent = Instant::now();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    while let Ok(bytes) = rx.recv_timeout(Duration::from_millis(500)) {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    (status.code(), took, text)
}

#[test]
fn the_first_ctrl_c_ends_a_wait_on_servers() {
    let dir = scratch("server-waits");
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");

    // A "Python" whose server never comes up.
    let python = dir.join("python");
    std::fs::write(&python, "#!/bin/sh\nsleep 600\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&python)
        .status()
        .unwrap();
    let config = dir.join("start.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\npython = {:?}\nstartup_timeout_s = 600\n",
            python.display().to_string()
        ),
    )
    .unwrap();
    let out = dir.join("out-start");
    let (code, took, err) = interrupted_run(&config, &out, &cache, |e| {
        e.contains("starting the student server")
    });
    assert_eq!(code, Some(130), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(
        err.contains("/health") && !err.contains("panicked"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let pattern = format!("{} -m vllm", python.display());
    let left = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "the server npd started is still running"
    );

    // A server that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let config = dir.join("silent.toml");
    std::fs::write(
        &config,
        format!("[engine]\nstudent_url = {url:?}\nteacher_url = {url:?}\ntimeout_s = 900\n"),
    )
    .unwrap();
    let out = dir.join("out-silent");
    let (code, took, err) =
        interrupted_run(&config, &out, &cache, |e| e.contains("warm-start student"));
    assert_eq!(code, Some(130), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(err.contains("stopped on request"), "{err}");
    drop(silent);
    let _ = std::fs::remove_dir_all(&dir);
}
