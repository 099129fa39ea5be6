//! `http`: calls a webhook and classifies the answer.
//!
//! Payload: `{"url", "method" (default POST), "headers": {..}, "body": string
//! (default ""), "timeout_ms"}`. Every request also carries the attempt's
//! identity so the receiver can dedupe and log: `Idempotency-Key`,
//! `X-Kairos-Job`, `X-Kairos-Run`, `X-Kairos-Attempt` and
//! `X-Kairos-Nominal-Time` (RFC 3339, UTC, ms), and `X-Kairos-Event-Id` for a
//! run a published event created; with tracing on, also the W3C
//! `traceparent` of the request's span. Payload headers may not
//! override those, nor the framing headers the client computes.
//!
//! Outcome: 2xx succeeds with `status line + "\n" + body tail`; 408, 429 and
//! 5xx fail retryably as `http_<code>`; every other status (including 3xx,
//! since redirects are not followed) fails non-retryably; transport errors are
//! `http_connect` and running out of time is `timeout`, both retryable. The
//! whole exchange, body included, is bounded by `min(timeout_ms, ctx.timeout)`.
//!
//! Destinations are fenced by the node's `--http-allow` policy (see
//! [`super::egress`]): the URL's host if it is an IP literal, the addresses
//! a host name resolves to, and every redirect's target. A refused
//! destination fails the attempt as `http_refused`, not retryable, before
//! any connection to it is made.

use std::collections::BTreeMap;
use std::sync::{Arc, Once, OnceLock};

use chrono::{DateTime, SecondsFormat};
use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::egress::{find_refusal, redirect_policy, EgressPolicy, FencedResolver, Refusal};
use super::{
    effective_timeout, error_chain, tail, Fields, Handler, HandlerError, HandlerResult, RunContext, TailBuf,
    MAX_OUTPUT_TAIL, MAX_PAYLOAD_MS,
};

/// Fields an `http` payload may contain.
const FIELDS: &[&str] = &["url", "method", "headers", "body", "timeout_ms"];
/// Methods accepted in `payload.method` (case-insensitive, sent upper-case).
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Prefix of the attempt-identity headers Kairos sets; payloads may not use it.
const KAIROS_HEADER_PREFIX: &str = "x-kairos-";
/// Framing headers the client computes; a payload value would corrupt the request.
const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding", "connection"];
/// `User-Agent` sent with every request, so receivers can tell who called.
const USER_AGENT: &str = concat!("kairos/", env!("CARGO_PKG_VERSION"));

/// A validated `http` payload.
#[derive(Debug)]
struct HttpPayload {
    /// Target; http or https only.
    url: Url,
    /// Request method; POST unless the payload says otherwise.
    method: Method,
    /// Extra headers from the payload, already checked.
    headers: HeaderMap,
    /// Request body sent verbatim.
    body: String,
    /// Optional per-job cap, in ms, on top of the attempt timeout.
    timeout_ms: Option<u64>,
}

/// Parses and checks a payload; errors name the field.
fn parse(payload: &[u8]) -> Result<HttpPayload, String> {
    let mut f = Fields::parse(payload, FIELDS)?;
    let raw_url: String = f.require("url")?;
    let url = Url::parse(&raw_url).map_err(|e| format!("payload.url: invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err("payload.url: must be an http:// or https:// URL with a host".into());
    }
    let method = match f.take::<String>("method")? {
        None => Method::POST,
        Some(m) => {
            let upper = m.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(format!(
                    "payload.method: unsupported method {m:?} (expected one of {})",
                    METHODS.join(", ")
                ));
            }
            Method::from_bytes(upper.as_bytes()).map_err(|e| format!("payload.method: {e}"))?
        }
    };
    let mut headers = HeaderMap::new();
    let raw_headers: BTreeMap<String, String> = f.take("headers")?.unwrap_or_default();
    for (k, v) in raw_headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("payload.headers.{k}: invalid header name"))?;
        if is_reserved(name.as_str()) {
            return Err(format!("payload.headers.{k}: reserved header, set by Kairos"));
        }
        let value =
            HeaderValue::from_str(&v).map_err(|_| format!("payload.headers.{k}: invalid header value"))?;
        headers.append(name, value);
    }
    Ok(HttpPayload {
        url,
        method,
        headers,
        body: f.take("body")?.unwrap_or_default(),
        timeout_ms: f.take_ms("timeout_ms", 1, MAX_PAYLOAD_MS)?,
    })
}

/// Identity headers (`Idempotency-Key`, `X-Kairos-*`) and framing headers are Kairos's.
fn is_reserved(lower_name: &str) -> bool {
    lower_name == "idempotency-key"
        || lower_name.starts_with(KAIROS_HEADER_PREFIX)
        || FRAMING_HEADERS.contains(&lower_name)
}

/// Makes aws-lc-rs the process-wide rustls provider (reqwest needs one; ring is not linked).
fn install_crypto_provider() {
    /// Guards the one-time installation.
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; keep that one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// The `http` job type; holds its destination policy and one
/// connection-pooling client.
#[derive(Debug, Default)]
pub struct HttpHandler {
    /// Where calls may go (`--http-allow`).
    policy: Arc<EgressPolicy>,
    /// Ignore `HTTP(S)_PROXY` (tests that call loopback servers directly).
    without_proxy: bool,
    /// Built on first use, so constructing a registry never touches TLS.
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl HttpHandler {
    /// A handler with the default policy (`public`, knowing no listener
    /// address of this node); see [`Self::fenced`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A handler whose calls `policy` fences (see [`super::egress`]).
    pub fn fenced(policy: Arc<EgressPolicy>) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// The same handler, ignoring `HTTP(S)_PROXY` from the environment.
    pub fn without_proxy(mut self) -> Self {
        self.without_proxy = true;
        self
    }

    /// The client configuration every Kairos HTTP client starts from:
    /// aws-lc-rs TLS, no redirects, Kairos user agent. The `http` job type
    /// adds its policy's resolver and redirect check to it.
    pub fn client_builder() -> reqwest::ClientBuilder {
        install_crypto_provider();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
    }

    /// The shared client, or a non-retryable error if it cannot be built.
    fn client(&self) -> Result<reqwest::Client, HandlerError> {
        self.client
            .get_or_init(|| {
                let builder = Self::client_builder()
                    .dns_resolver(Arc::new(FencedResolver::new(self.policy.clone())))
                    .redirect(redirect_policy(self.policy.clone()));
                let builder = if self.without_proxy {
                    builder.no_proxy()
                } else {
                    builder
                };
                builder.build().map_err(|e| error_chain(&e))
            })
            .clone()
            .map_err(|e| HandlerError::new("http_client", e, false))
    }
}

impl Handler for HttpHandler {
    fn name(&self) -> &'static str {
        "http"
    }

    fn validate(&self, payload: &[u8]) -> Result<(), String> {
        parse(payload).map(|_| ())
    }

    fn run(&self, ctx: RunContext, cancel: CancellationToken) -> BoxFuture<'static, HandlerResult> {
        let client = self.client();
        let policy = self.policy.clone();
        async move {
            if cancel.is_cancelled() {
                return Err(HandlerError::cancelled());
            }
            let client = client?;
            let p = parse(&ctx.payload).map_err(HandlerError::invalid_payload)?;
            // An IP-literal host never reaches the resolver: check it here.
            policy.check_url(&p.url).map_err(refused)?;
            let limit = effective_timeout(ctx.timeout, p.timeout_ms);
            let mut req = build_request(&client, p, &ctx)?;
            let span = request_span(&req);
            crate::telemetry::inject_headers(&span, req.headers_mut());
            tracing::debug!(job_id = %ctx.job_id, run_id = ctx.run_id, attempt = ctx.attempt,
                method = %req.method(), "http attempt");
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(HandlerError::cancelled()),
                r = tokio::time::timeout(limit, execute(&client, req)).instrument(span.clone()) => {
                    r.unwrap_or_else(|_| Err(HandlerError::timeout(limit)))
                }
            };
            if let Err(e) = &result {
                span.record("error.type", e.kind.as_str());
            }
            result
        }
        .boxed()
    }
}

/// The `kairos.http` client span of `req` (disabled while tracing is off):
/// its context is the `traceparent` the request carries. Names the host,
/// not the URL, whose query may hold a secret.
fn request_span(req: &reqwest::Request) -> tracing::Span {
    if !crate::telemetry::in_trace() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "kairos.http",
        otel.kind = "client",
        http.request.method = %req.method(),
        server.address = req.url().host_str().unwrap_or(""),
        error.type = tracing::field::Empty,
    )
}

/// Builds the request: payload headers plus the attempt-identity headers.
fn build_request(
    client: &reqwest::Client,
    p: HttpPayload,
    ctx: &RunContext,
) -> Result<reqwest::Request, HandlerError> {
    let bad_ctx = |what: &str| HandlerError::new("invalid_context", what.to_string(), false);
    let nominal = DateTime::from_timestamp_millis(ctx.nominal_ms)
        .ok_or_else(|| bad_ctx("nominal_ms out of range"))?
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let value = |s: &str, what: &str| {
        HeaderValue::from_str(s).map_err(|_| bad_ctx(&format!("{what} is not a valid header value")))
    };
    let mut headers = p.headers;
    headers.insert("idempotency-key", value(&ctx.idempotency_key, "idempotency_key")?);
    headers.insert("x-kairos-job", value(&ctx.job_id, "job_id")?);
    headers.insert("x-kairos-run", HeaderValue::from(ctx.run_id));
    headers.insert("x-kairos-attempt", HeaderValue::from(ctx.attempt));
    headers.insert("x-kairos-nominal-time", value(&nominal, "nominal time")?);
    if !ctx.event_id.is_empty() {
        headers.insert("x-kairos-event-id", value(&ctx.event_id, "event_id")?);
    }
    client
        .request(p.method, p.url)
        .headers(headers)
        .body(p.body)
        .build()
        .map_err(|e| HandlerError::new("http_client", error_chain(&e.without_url()), false))
}

/// Sends the request, reads the body into a bounded tail, classifies the status.
async fn execute(client: &reqwest::Client, req: reqwest::Request) -> HandlerResult {
    let mut resp = client.execute(req).await.map_err(transport_error)?;
    let status = resp.status();
    let status_line = format!("{:?} {status}", resp.version());
    let mut body = TailBuf::new(MAX_OUTPUT_TAIL);
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        body.push(&chunk);
    }
    let output = tail(
        &format!("{status_line}\n{}", body.to_string_lossy()),
        MAX_OUTPUT_TAIL,
    );
    classify(status, output)
}

/// 2xx succeeds; 408, 429 and 5xx are retryable; everything else is final.
fn classify(status: StatusCode, output: String) -> HandlerResult {
    if status.is_success() {
        return Ok(output);
    }
    let code = status.as_u16();
    let retryable = matches!(code, 408 | 429) || status.is_server_error();
    Err(HandlerError::new(
        format!("http_{code}"),
        format!("server answered {status}"),
        retryable,
    )
    .with_output(output))
}

/// A transport-level failure (refused, reset, TLS, truncated body) is
/// retryable, except a destination `--http-allow` refused, which is final.
/// (No reqwest-level timeouts are configured; the attempt timeout wraps the call.)
fn transport_error(e: reqwest::Error) -> HandlerError {
    if let Some(refusal) = find_refusal(&e) {
        return refused(refusal.clone());
    }
    HandlerError::new("http_connect", error_chain(&e.without_url()), true)
}

/// A destination the policy refused: `http_refused`, never retried.
fn refused(refusal: Refusal) -> HandlerError {
    HandlerError::new("http_refused", refusal.to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testutil::{assert_table, class, serve, test_ctx};
    use std::time::{Duration, Instant};
    use tokio::net::TcpListener;

    /// Runs the handler (proxy-free client) with `payload` and a 30 s attempt timeout.
    async fn call(payload: &str) -> HandlerResult {
        call_with(payload, Duration::from_secs(30), CancellationToken::new()).await
    }

    /// Runs the handler with an explicit attempt timeout and token.
    async fn call_with(payload: &str, timeout: Duration, cancel: CancellationToken) -> HandlerResult {
        let h = HttpHandler::fenced(allowing("loopback")).without_proxy();
        h.run(test_ctx(payload, timeout), cancel).await
    }

    /// The policy `--http-allow=<spec>` of a node with no listener address.
    fn allowing(spec: &str) -> Arc<EgressPolicy> {
        Arc::new(EgressPolicy::parse(spec, &[]).unwrap())
    }

    /// Runs `payload` once through a proxy-free handler fenced by `spec`.
    async fn call_fenced(spec: &str, payload: &str) -> HandlerResult {
        let h = HttpHandler::fenced(allowing(spec)).without_proxy();
        h.run(
            test_ctx(payload, Duration::from_secs(30)),
            CancellationToken::new(),
        )
        .await
    }

    /// Answers every request with `302 Found` to `location`.
    async fn redirect_to(location: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, location)],
                    "",
                )
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[tokio::test]
    async fn the_default_policy_refuses_loopback_literals_and_names_before_connecting() {
        let (base, mut rx) = serve(200, "ok".into()).await;
        let port = base.rsplit(':').next().unwrap();
        for url in [
            format!("{base}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
            format!("http://localhost:{port}/hook"),
        ] {
            let err = call_fenced("public", &format!(r#"{{"url":"{url}"}}"#))
                .await
                .unwrap_err();
            assert_eq!(class(&err), ("http_refused", false), "{url}: {err:?}");
            assert!(
                err.message
                    .ends_with("refused by --http-allow (loopback addresses are not allowed)"),
                "{url}: {err:?}"
            );
        }
        assert!(rx.try_recv().is_err(), "the server was called");
        let err = call_fenced("public", r#"{"url":"http://169.254.169.254/latest/meta-data/"}"#)
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "destination 169.254.169.254 refused by --http-allow (link-local addresses are not allowed)"
        );
    }

    #[tokio::test]
    async fn a_redirect_to_a_refused_destination_is_refused() {
        // 127.0.0.2 is loopback but not 127.0.0.1; nothing is ever sent to it.
        let hop = redirect_to("http://127.0.0.2:9/next".into()).await;
        let err = call_fenced("127.0.0.1", &format!(r#"{{"url":"{hop}/start"}}"#))
            .await
            .unwrap_err();
        assert_eq!(class(&err), ("http_refused", false), "{err:?}");
        assert!(
            err.message
                .starts_with("destination 127.0.0.2 refused by --http-allow (loopback"),
            "{err:?}"
        );
        // A hop the policy allows is not followed either: the 3xx is the answer.
        let allowed_hop = redirect_to("http://127.0.0.1:9/next".into()).await;
        let err = call_fenced("loopback", &format!(r#"{{"url":"{allowed_hop}/"}}"#))
            .await
            .unwrap_err();
        assert_eq!(class(&err), ("http_302", false), "{err:?}");
    }

    #[test]
    fn validation_table() {
        let good = [
            r#"{"url":"http://example.com"}"#,
            r#"{"url":"https://example.com/x?y=1","method":"get","headers":{"X-A":"b"},"body":"","timeout_ms":5000}"#,
            r#"{"url":"http://127.0.0.1:8080/","method":"DELETE","headers":null}"#,
        ];
        let bad = r#"
                                                      => payload.url: required
            {"method":"GET"}                          => payload.url: required
            {"url":5}                                 => payload.url: invalid type
            {"url":"not a url"}                       => payload.url: invalid URL
            {"url":"ftp://x"}                         => payload.url: must be an http
            {"url":"http://x","method":"FETCH"}       => payload.method: unsupported method
            {"url":"http://x","headers":{"X-A":1}}    => payload.headers: invalid type
            {"url":"http://x","headers":{"A B":"v"}}  => payload.headers.A B: invalid header name
            {"url":"http://x","headers":{"X-A":"a\nb"}} => payload.headers.X-A: invalid header value
            {"url":"http://x","headers":{"Idempotency-Key":"k"}} => payload.headers.Idempotency-Key: reserved
            {"url":"http://x","headers":{"X-Kairos-Run":"7"}}     => payload.headers.X-Kairos-Run: reserved
            {"url":"http://x","headers":{"Content-Length":"1"}}  => payload.headers.Content-Length: reserved
            {"url":"http://x","body":{}}              => payload.body: invalid type
            {"url":"http://x","timeout_ms":0}         => payload.timeout_ms: must be an integer between 1 and
            {"url":"http://x","retries":3}            => payload.retries: unknown field
        "#;
        assert_table(|p| HttpHandler::new().validate(p), &good, bad);
    }

    #[tokio::test]
    async fn success_sends_identity_headers() {
        let (base, mut rx) = serve(200, "accepted".into()).await;
        let payload =
            format!(r#"{{"url":"{base}/hook?x=1","headers":{{"X-Custom":"v"}},"body":"{{\"a\":1}}"}}"#);
        let out = call(&payload).await.unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\naccepted");
        let seen = rx.recv().await.unwrap();
        assert_eq!(seen.line, "POST /hook?x=1 HTTP/1.1");
        assert_eq!(seen.body, r#"{"a":1}"#);
        let h = |k: &str| seen.headers.get(k).map(String::as_str);
        assert_eq!(h("idempotency-key"), Some("job-1:2023-11-14T22:13:20.123Z"));
        assert_eq!(h("x-kairos-job"), Some("job-1"));
        assert_eq!(h("x-kairos-run"), Some("42"));
        assert_eq!(h("x-kairos-attempt"), Some("3"));
        assert_eq!(h("x-kairos-nominal-time"), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(h("x-custom"), Some("v"));
        assert_eq!(h("user-agent"), Some(USER_AGENT));
        assert_eq!(h("x-kairos-event-id"), None, "a run no event created");
    }

    #[tokio::test]
    async fn a_run_an_event_created_names_the_event() {
        let (base, mut rx) = serve(200, "ok".into()).await;
        let mut ctx = test_ctx(&format!(r#"{{"url":"{base}/"}}"#), Duration::from_secs(30));
        ctx.event_id = "ev-7".into();
        ctx.idempotency_key = "job-1:ev-7".into();
        let h = HttpHandler::fenced(allowing("loopback")).without_proxy();
        h.run(ctx, CancellationToken::new()).await.unwrap();
        let seen = rx.recv().await.unwrap();
        assert_eq!(
            seen.headers.get("x-kairos-event-id").map(String::as_str),
            Some("ev-7")
        );
        assert_eq!(
            seen.headers.get("idempotency-key").map(String::as_str),
            Some("job-1:ev-7")
        );
    }

    #[tokio::test]
    async fn status_codes_are_classified() {
        let retryable = [(503, true), (429, true), (408, true), (500, true)];
        let fatal = [(404, false), (400, false), (302, false)];
        for (status, retryable) in retryable.into_iter().chain(fatal) {
            let (base, mut rx) = serve(status, format!("body-{status}")).await;
            let err = call(&format!(r#"{{"url":"{base}/","method":"PUT"}}"#))
                .await
                .unwrap_err();
            assert_eq!(err.kind, format!("http_{status}"));
            assert_eq!(err.retryable, retryable, "status {status}");
            assert!(err.output.ends_with(&format!("body-{status}")), "{err:?}");
            assert!(rx.recv().await.unwrap().line.starts_with("PUT / "));
        }
    }

    #[tokio::test]
    async fn output_tail_is_bounded() {
        let body = format!("{}END", "x".repeat(10_000));
        let (base, _rx) = serve(200, body).await;
        let out = call(&format!(r#"{{"url":"{base}/","method":"GET"}}"#))
            .await
            .unwrap();
        assert!(out.len() <= MAX_OUTPUT_TAIL, "{}", out.len());
        assert!(out.ends_with("xEND"));
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = call(&format!(r#"{{"url":"http://{addr}/"}}"#)).await.unwrap_err();
        assert_eq!(class(&err), ("http_connect", true), "{err:?}");
        // Same through the lazily built (aws-lc-rs TLS, proxies from the
        // environment) client, over https.
        let ctx = test_ctx(
            &format!(r#"{{"url":"https://{addr}/"}}"#),
            Duration::from_secs(30),
        );
        let err = HttpHandler::fenced(allowing("loopback"))
            .run(ctx, CancellationToken::new())
            .await;
        assert_eq!(class(&err.unwrap_err()), ("http_connect", true));
    }

    #[tokio::test]
    async fn times_out_on_silent_server() {
        // Once via payload timeout_ms, once via the attempt timeout.
        for (extra, ctx_timeout) in [(r#","timeout_ms":200"#, 30_000), ("", 200)] {
            let (base, mut rx) = serve(0, String::new()).await;
            let start = Instant::now();
            let payload = format!(r#"{{"url":"{base}/"{extra}}}"#);
            let limit = Duration::from_millis(ctx_timeout);
            let err = call_with(&payload, limit, CancellationToken::new()).await;
            let err = err.unwrap_err();
            assert_eq!(class(&err), ("timeout", true));
            assert!(start.elapsed() < Duration::from_secs(5));
            rx.recv().await.expect("request never reached the server");
        }
    }

    #[tokio::test]
    async fn cancel_aborts_in_flight_request() {
        let (base, mut rx) = serve(0, String::new()).await;
        let cancel = CancellationToken::new();
        let payload = format!(r#"{{"url":"{base}/"}}"#);
        let token = cancel.clone();
        let call = tokio::spawn(async move { call_with(&payload, Duration::from_secs(60), token).await });
        rx.recv().await.unwrap(); // the request is in flight and will never be answered
        cancel.cancel();
        let err = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(class(&err), ("cancelled", false));
    }
}
