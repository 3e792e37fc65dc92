//! Faults a real vLLM server cannot be made to produce on demand: answers
//! that are not JSON, JSON of the wrong shape, server errors, and a server
//! that never answers. A one-connection HTTP responder stands in for the
//! server; `tests/vllm_e2e.rs` and `npd-train`'s `vllm_server` test run the
//! real one.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use npd_engine::{Client, Vllm};

/// Serves `answer(request_number)` (status line and body) to every
/// connection; counts requests.
fn responder(answer: fn(usize) -> Option<(u16, String)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            read_request(&mut s);
            match answer(n) {
                Some((status, body)) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                // Never answer: hold the connection open.
                None => std::thread::sleep(Duration::from_secs(30)),
            }
        }
    });
    (url, count)
}

/// Reads one whole request (headers, then `content-length` bytes of body):
/// closing a connection with unread data would reset it.
fn read_request(s: &mut std::net::TcpStream) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let body_start = loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => data.extend_from_slice(&buf[..k]),
        }
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < body_start + length {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => data.extend_from_slice(&buf[..k]),
        }
    }
}

const MODELS: &str = r#"{"data": [{"id": "m", "max_model_len": 64}]}"#;

#[test]
fn an_answer_that_is_not_json_names_the_url_and_quotes_it() {
    let (url, _) = responder(|n| {
        Some((
            200,
            if n == 0 {
                MODELS.into()
            } else {
                "<html>oops".into()
            },
        ))
    });
    let server = Vllm::connect(Client::new(&url, Duration::from_secs(5), 2)).unwrap();
    let err = server
        .prompt_logprobs(&[1, 2, 3], 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&url) && err.contains("not JSON") && err.contains("<html>oops"),
        "{err}"
    );
}

#[test]
fn json_of_the_wrong_shape_names_what_is_missing() {
    let (url, _) = responder(|n| {
        Some((
            200,
            match n {
                0 => MODELS.into(),
                1 => r#"{"choices": [{"index": 0, "prompt_logprobs": [null, {"7": {"logprob": -1.0, "rank": 1}}]}]}"#.into(),
                _ => r#"{"choices": [{"index": 0, "token_ids": [4, 5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "length"}]}"#.into(),
            },
        ))
    });
    let server = Vllm::connect(Client::new(&url, Duration::from_secs(5), 0)).unwrap();
    // Two positions where three tokens were sent.
    let err = server
        .prompt_logprobs(&[1, 2, 3], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 positions for 3 tokens"), "{err}");
    let params = npd_core::SamplingParams {
        temperature: 1.0,
        top_k: None,
        top_p: 1.0,
        max_new_tokens: 2,
        stop_ids: vec![2],
        seed: 0,
    };
    let err = server
        .complete(&[1, 2], &params, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 log-probs for 2 tokens"), "{err}");
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let (url, count) = responder(|n| {
        Some(match n {
            0 => (200, MODELS.into()),
            1 => (503, "busy".into()),
            2 => (200, r#"{"choices": [{"index": 0, "prompt_logprobs": [null, {"2": {"logprob": -0.5, "rank": 1}}]}]}"#.into()),
            _ => (500, "broken".into()),
        })
    });
    let server = Vllm::connect(Client::new(&url, Duration::from_secs(5), 2)).unwrap();
    // One 503, then an answer: the retry succeeds.
    let lp = server.prompt_logprobs(&[1, 2], 0).unwrap();
    assert_eq!(lp.actual, vec![-0.5]);
    // Then only 500s: three tries in all, and an error saying so.
    let before = count.load(Ordering::SeqCst);
    let err = server.prompt_logprobs(&[1, 2], 0).unwrap_err().to_string();
    assert_eq!(count.load(Ordering::SeqCst) - before, 3);
    assert!(
        err.contains("status 500") && err.contains("after 3 tries"),
        "{err}"
    );
}

#[test]
fn a_client_error_is_not_retried() {
    let (url, count) = responder(|n| {
        Some(if n == 0 {
            (200, MODELS.into())
        } else {
            (400, r#"{"error": "max_logprobs is 20"}"#.into())
        })
    });
    let server = Vllm::connect(Client::new(&url, Duration::from_secs(5), 3)).unwrap();
    let err = server.prompt_logprobs(&[1, 2], 50).unwrap_err().to_string();
    assert_eq!(count.load(Ordering::SeqCst), 2, "one request, no retry");
    assert!(
        err.contains("status 400") && err.contains("max_logprobs is 20"),
        "{err}"
    );
}

#[test]
fn a_server_that_never_answers_times_out() {
    let (url, _) = responder(|n| (n == 0).then(|| (200, MODELS.to_string())));
    let server = Vllm::connect(Client::new(&url, Duration::from_millis(500), 1)).unwrap();
    let start = Instant::now();
    let err = server.prompt_logprobs(&[1, 2], 0).unwrap_err().to_string();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("timed out") && err.contains(&url), "{err}");
}

#[test]
fn a_sequence_longer_than_the_context_is_refused_before_sending() {
    let (url, count) = responder(|_| Some((200, MODELS.into())));
    let server = Vllm::connect(Client::new(&url, Duration::from_secs(5), 0)).unwrap();
    let long: Vec<u32> = (0..65).collect();
    let err = server.prompt_logprobs(&long, 0).unwrap_err().to_string();
    assert!(
        err.contains("65 tokens") && err.contains("max_model_len is 64"),
        "{err}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
