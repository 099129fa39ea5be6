//! Test-only support shared by the handler tests: a canned [`RunContext`], a
//! `(kind, retryable)` view of errors, and a tiny recording HTTP/1.1 server on
//! 127.0.0.1:0 (hand-written on tokio, so tests need no extra crates).

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{HandlerError, RunContext};

/// A context for attempt 3 of run 42 of `job-1`, nominal 2023-11-14T22:13:20.123Z.
pub(crate) fn test_ctx(payload: &str, timeout: Duration) -> RunContext {
    RunContext {
        job_id: "job-1".into(),
        run_id: 42,
        attempt: 3,
        nominal_ms: 1_700_000_000_123,
        idempotency_key: "job-1:2023-11-14T22:13:20.123Z".into(),
        payload: payload.as_bytes().to_vec(),
        timeout,
    }
}

/// The two fields retry logic looks at.
pub(crate) fn class(err: &HandlerError) -> (&str, bool) {
    (err.kind.as_str(), err.retryable)
}

/// One request as the test server saw it; header names lower-cased.
#[derive(Debug)]
pub(crate) struct Seen {
    /// Request line, e.g. `POST /hook?x=1 HTTP/1.1`.
    pub(crate) line: String,
    /// Header name → value.
    pub(crate) headers: HashMap<String, String>,
    /// Raw body.
    pub(crate) body: String,
}

/// Serves `status` + `body` on 127.0.0.1:0 (status 0: read the request, never answer).
pub(crate) async fn serve(status: u16, body: String) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (tx, body) = (tx.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let line = lines.next().unwrap().to_string();
                let headers: HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                    .collect();
                let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 4096];
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req_body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let _ = tx.send(Seen {
                    line,
                    headers,
                    body: req_body,
                });
                if status == 0 {
                    return std::future::pending().await;
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, rx)
}

/// Checks `validate` accepts every `good` payload and rejects every line of
/// `bad` (`payload => expected error prefix`; blank lines skipped).
pub(crate) fn assert_table(validate: impl Fn(&[u8]) -> Result<(), String>, good: &[&str], bad: &str) {
    for p in good {
        assert_eq!(validate(p.as_bytes()), Ok(()), "{p}");
    }
    for line in bad.lines().filter(|l| !l.trim().is_empty()) {
        let (p, want) = line.split_once("=>").expect("table line needs =>");
        let (p, want) = (p.trim(), want.trim());
        let err = validate(p.as_bytes()).expect_err(p);
        assert!(err.starts_with(want), "{p}: got {err:?}, want prefix {want:?}");
    }
}
