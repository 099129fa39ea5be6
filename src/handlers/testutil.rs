//! Test-only support shared by the handler tests: a canned [`RunContext`], a
//! `(kind, retryable)` view of errors, and a recording HTTP server on
//! 127.0.0.1:0 (axum) for the `http` handler's tests.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
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
        event_id: String::new(),
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
/// Every request is sent, whole, to the receiver before it is answered.
pub(crate) async fn serve(status: u16, body: String) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .fallback(move |request: Request| record_and_answer(request, tx.clone(), status, body.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, rx)
}

/// Records `request` on `seen`, then answers `status` + `body` (status 0: never).
async fn record_and_answer(
    request: Request,
    seen: mpsc::UnboundedSender<Seen>,
    status: u16,
    body: String,
) -> Response {
    let (parts, request_body) = request.into_parts();
    let bytes = to_bytes(request_body, usize::MAX).await.unwrap();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap().to_string()))
        .collect();
    let _ = seen.send(Seen {
        line: format!("{} {} {:?}", parts.method, parts.uri, parts.version),
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    });
    if status == 0 {
        return std::future::pending().await;
    }
    (StatusCode::from_u16(status).unwrap(), Body::from(body)).into_response()
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
