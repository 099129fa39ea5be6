//! Job handlers: the code that actually runs when a job fires.
//!
//! The scheduler decides *when* a job runs; this module decides *what* running
//! it means. Every job has a `type` string naming a [`Handler`], and an opaque
//! `payload` (JSON for the built-ins) that the handler interprets. A
//! [`Registry`] maps type names to handlers and is consulted twice in a job's
//! life:
//!
//! 1. At job-create time, [`Registry::validate`] checks the type exists and the
//!    payload is well-formed, so that a typo is rejected up front with a message
//!    naming the offending field (`payload.url: required`) instead of failing
//!    every attempt at 3 a.m.
//! 2. At fire time, the executor looks the handler up with [`Registry::get`]
//!    and calls [`Handler::run`] once per attempt with a [`RunContext`] and a
//!    [`CancellationToken`]. The attempt's outcome is a [`HandlerResult`]: the
//!    tail of its output on success, or a [`HandlerError`] whose `retryable`
//!    flag tells the retry policy whether another attempt can possibly help.
//!
//! The built-ins are `noop` (always succeeds), `sleep` (waits N ms), `http`
//! (calls a webhook) and `exec` (runs a local program, only when the node was
//! started with `--allow-exec`, because it hands the job author a shell on
//! every node).
//!
//! # Invariants
//!
//! * **Bounded time.** A handler returns by `ctx.timeout` (kind `timeout`,
//!   retryable) and promptly after `cancel` fires (kind `cancelled`, not
//!   retryable). A token that is already cancelled when `run` is called is
//!   honoured before any work starts. Handlers with their own `timeout_ms`
//!   use `min(timeout_ms, ctx.timeout)`.
//! * **Bounded output.** Output and `HandlerError::output` are at most
//!   [`MAX_OUTPUT_TAIL`] bytes, cut on a char boundary by [`tail`]. Large
//!   outputs are read through a rolling buffer, so memory stays bounded too.
//! * **At-least-once.** An attempt may be repeated after a crash or a retry,
//!   so external side effects carry `ctx.idempotency_key`
//!   (`job_id:nominal RFC3339`), which is identical for every attempt of the
//!   same nominal fire time (HTTP header `Idempotency-Key`, env
//!   `KAIROS_IDEMPOTENCY_KEY`).
//! * **Validate and run agree.** `run` re-parses the payload with the same
//!   parser `validate` uses (stored jobs may predate a validation change); a
//!   payload that fails there is kind `invalid_payload`, not retryable.
//! * **Strict payloads.** Empty payload means `{}`; unknown fields are errors
//!   naming the field; `null` on an optional field means "absent".
//!
//! # Error kinds
//!
//! `cancelled` (no), `timeout` (yes), `invalid_payload` (no),
//! `invalid_context` (no), `http_<code>` (408/429/5xx yes, others no),
//! `http_connect` (yes), `http_refused` (no: `--http-allow` refused the
//! destination), `http_client` (no), `spawn` (no), `exit_<code>`
//! (yes), `signal_<n>` (yes), `wait` (yes). Retryability is in parentheses.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * `exec` kills only the direct child on timeout or cancel (SIGKILL, then
//!   reaps it). Grandchildren (`sh -c "a | b"`, daemons) are not killed; if
//!   they keep stdout/stderr open after the child exits, output collection
//!   stops after a short drain grace instead of waiting for EOF.
//! * `exec` children inherit the node's environment (plus the payload's `env`
//!   and the `KAIROS_*` variables). `--allow-exec` is the trust boundary.
//! * `http` does not follow redirects: a 3xx is a non-retryable failure,
//!   because following a 301/302 would silently turn a POST into a GET.
//! * `http` calls only destinations the node's `--http-allow` allows
//!   (default `public`: no loopback, link-local or own listener address);
//!   see [`egress`].
//! * `http` installs aws-lc-rs as the process-wide rustls crypto provider the
//!   first time a client is built (ring is never linked). If the embedding
//!   program installed another provider first, that one is used.
//! * `http` honours `HTTP(S)_PROXY`/`NO_PROXY` from the environment.
//! * `http` reserves `Idempotency-Key`, every `X-Kairos-*` name and the
//!   framing headers; a payload setting one is rejected at validation.
//! * `http` treats a 2xx whose body breaks off mid-read as `http_connect`
//!   (retryable) although the receiver may already have acted; the
//!   idempotency key is what makes that retry safe.
//! * `http` has only been exercised against plain-HTTP loopback servers in
//!   tests; the TLS path is covered only up to client construction and a
//!   refused https connection (no certificates can be minted here).
//! * Output tails are decoded as lossy UTF-8; invalid bytes become U+FFFD.
//! * A zero `ctx.timeout` means "time out immediately", not "no timeout".

// Layout: one file per built-in; `egress` is the `http` type's destination
// fence (`--http-allow`); `support` holds the shared payload parser, output
// buffer and timeout rule; `testutil` is the tests' context and HTTP server.
pub mod egress;
mod exec;
mod http;
mod noop;
#[cfg(feature = "test-handlers")]
pub mod panic;
pub mod secrets;
mod sleep;
mod support;
#[cfg(test)]
mod testutil;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use exec::ExecHandler;
pub use http::HttpHandler;
pub use noop::NoopHandler;
pub use sleep::SleepHandler;
pub(crate) use support::{effective_timeout, error_chain, Fields, TailBuf, MAX_PAYLOAD_MS};

/// Most bytes of output kept from an attempt; bounds storage and log size.
pub const MAX_OUTPUT_TAIL: usize = 4096;

/// What a handler gets for one attempt.
#[derive(Clone, Debug)]
pub struct RunContext {
    /// The job this attempt belongs to, for logs and headers.
    pub job_id: String,
    /// The run (one nominal firing) this attempt belongs to.
    pub run_id: u64,
    /// Attempt number within the run, so receivers can spot retries.
    pub attempt: u32,
    /// Nominal fire time as unix ms; the schedule slot, not the wall clock.
    pub nominal_ms: i64,
    /// `job_id:nominal RFC3339`; same for every attempt so receivers can dedupe.
    pub idempotency_key: String,
    /// The published event behind the run, if any (`X-Kairos-Event-Id`,
    /// `KAIROS_EVENT_ID`); empty otherwise.
    pub event_id: String,
    /// The job's payload (JSON for the built-ins).
    pub payload: Vec<u8>,
    /// The attempt timeout; handlers must stop by then.
    pub timeout: Duration,
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// Machine-readable failure class, e.g. `http_503`, `exit_3`, `timeout`.
    pub kind: String,
    /// Human-readable detail for operators.
    pub message: String,
    /// Whether another attempt could succeed; drives the retry policy.
    pub retryable: bool,
    /// Tail of whatever output the attempt produced before failing.
    pub output: String,
}

impl HandlerError {
    /// A failure with no output.
    pub fn new(kind: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable,
            output: String::new(),
        }
    }

    /// Attaches an output tail (cut to [`MAX_OUTPUT_TAIL`]).
    pub fn with_output(mut self, output: impl AsRef<str>) -> Self {
        self.output = tail(output.as_ref(), MAX_OUTPUT_TAIL);
        self
    }

    /// The attempt was cancelled by the scheduler; never retried.
    pub fn cancelled() -> Self {
        Self::new("cancelled", "attempt cancelled", false)
    }

    /// The attempt ran out of time; retryable.
    pub fn timeout(limit: Duration) -> Self {
        Self::new(
            "timeout",
            format!("attempt exceeded {} ms", limit.as_millis()),
            true,
        )
    }

    /// The stored payload no longer parses; retrying cannot fix it.
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new("invalid_payload", message, false)
    }
}

/// Outcome of one attempt: output tail on success.
pub type HandlerResult = Result<String, HandlerError>;

/// One job type's behaviour.
pub trait Handler: Send + Sync + 'static {
    /// The job `type` this handler serves.
    fn name(&self) -> &'static str;
    /// Checks a payload at job-create time; Err is a message naming the field, e.g. `payload.url: required`.
    fn validate(&self, payload: &[u8]) -> Result<(), String>;
    /// Runs one attempt. Must return promptly when `cancel` is cancelled (kind "cancelled", retryable false).
    fn run(&self, ctx: RunContext, cancel: CancellationToken) -> BoxFuture<'static, HandlerResult>;
}

/// The job types compiled into Kairos, with what they do.
pub const BUILTIN_TYPES: &[(&str, &str)] = &[
    (
        "exec",
        "runs a command on the node (only on nodes started with --allow-exec)",
    ),
    ("http", "calls a URL (a webhook), fenced by --http-allow"),
    ("noop", "does nothing and succeeds"),
    ("sleep", "waits for a while, then succeeds"),
];

/// Job type name → handler.
pub struct Registry {
    /// Registered handlers, sorted by name so listings are stable.
    handlers: BTreeMap<&'static str, Arc<dyn Handler>>,
    /// True when `exec` exists but this node was started without `--allow-exec`.
    exec_disabled: bool,
}

impl Registry {
    /// A registry with no handlers, for embedding custom ones.
    pub fn empty() -> Registry {
        Registry {
            handlers: BTreeMap::new(),
            exec_disabled: false,
        }
    }

    /// noop, sleep, http always; exec only when `allow_exec`. `http` has the
    /// default policy, knowing no listener address of the node; a node uses
    /// [`Registry::builtin_with_http_allow`].
    pub fn builtin(allow_exec: bool) -> Registry {
        Registry::builtin_with_http_allow(allow_exec, Arc::default())
    }

    /// [`Registry::builtin`] with `http` fenced by `http_allow` (the node's
    /// `--http-allow`, see [`egress`]).
    pub fn builtin_with_http_allow(allow_exec: bool, http_allow: Arc<egress::EgressPolicy>) -> Registry {
        let mut r = Registry::empty();
        r.register(Arc::new(NoopHandler));
        r.register(Arc::new(SleepHandler));
        r.register(Arc::new(HttpHandler::fenced(http_allow)));
        if allow_exec {
            r.register(Arc::new(ExecHandler));
        } else {
            r.exec_disabled = true;
        }
        r
    }

    /// Adds (or replaces) the handler for `handler.name()`.
    pub fn register(&mut self, handler: Arc<dyn Handler>) {
        if handler.name() == exec::NAME {
            self.exec_disabled = false;
        }
        self.handlers.insert(handler.name(), handler);
    }

    /// The handler for job type `name`, if registered.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(name).cloned()
    }

    /// Registered type names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    /// Validates `payload` for job type `name`: unknown type → Err("type: unknown job type \"x\" (known: exec, http, noop, sleep)"), or exec disabled → a clear message saying to start nodes with --allow-exec.
    pub fn validate(&self, name: &str, payload: &[u8]) -> Result<(), String> {
        self.validate_with_external(name, payload, |_| None)
    }

    /// True for the name of a type compiled into Kairos (whether or not
    /// this node runs it): external workers may not register these.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.handlers.contains_key(name) || BUILTIN_TYPES.iter().any(|(builtin, _)| *builtin == name)
    }

    /// [`Registry::validate`], where a type no handler here knows may be an
    /// external one: `external(name)` checks the payload against its schema
    /// (`None`: no worker registered such a type).
    pub fn validate_with_external(
        &self,
        name: &str,
        payload: &[u8],
        external: impl FnOnce(&str) -> Option<Result<(), String>>,
    ) -> Result<(), String> {
        if let Some(h) = self.handlers.get(name) {
            return h.validate(payload);
        }
        if self.exec_disabled && name == exec::NAME {
            return Err(format!(
                "type: job type \"{}\" is disabled; start nodes with --allow-exec to enable it",
                exec::NAME
            ));
        }
        if let Some(checked) = external(name) {
            return checked;
        }
        let mut known = self.names();
        if self.exec_disabled {
            known.push(exec::NAME);
            known.sort_unstable();
        }
        Err(format!(
            "type: unknown job type \"{name}\": no built-in handler and no worker registration knows it (built in: {}; `kairos type list` shows the registered ones)",
            known.join(", ")
        ))
    }
}

/// Keeps the last `max` bytes of `s` on a char boundary.
pub fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("hello", 0), "");
        // 'é' is 2 bytes: cutting inside it must skip forward, never exceed max.
        assert_eq!(tail("aéb", 2), "b");
        assert_eq!(tail("aéb", 3), "éb");
        let long = "é".repeat(5000);
        let t = tail(&long, MAX_OUTPUT_TAIL);
        assert!(t.len() <= MAX_OUTPUT_TAIL && t.len() >= MAX_OUTPUT_TAIL - 1);
    }

    #[test]
    fn registry_names_depend_on_allow_exec() {
        assert_eq!(Registry::builtin(false).names(), ["http", "noop", "sleep"]);
        assert_eq!(Registry::builtin(true).names(), ["exec", "http", "noop", "sleep"]);
        assert!(Registry::builtin(false).get("exec").is_none());
        assert_eq!(Registry::builtin(true).get("exec").unwrap().name(), "exec");
    }

    #[test]
    fn registry_unknown_type_message() {
        for allow in [false, true] {
            assert_eq!(
                Registry::builtin(allow).validate("x", b"{}"),
                Err(
                    "type: unknown job type \"x\": no built-in handler and no worker registration knows it \
                     (built in: exec, http, noop, sleep; `kairos type list` shows the registered ones)"
                        .to_string()
                )
            );
        }
    }

    #[test]
    fn registry_exec_disabled_message() {
        let err = Registry::builtin(false)
            .validate("exec", br#"{"argv":["true"]}"#)
            .unwrap_err();
        assert!(err.starts_with("type: "), "{err}");
        assert!(err.contains("--allow-exec"), "{err}");
        assert_eq!(
            Registry::builtin(true).validate("exec", br#"{"argv":["true"]}"#),
            Ok(())
        );
    }

    #[test]
    fn registry_delegates_to_handler() {
        let r = Registry::builtin(false);
        assert_eq!(r.validate("noop", b"anything"), Ok(()));
        assert_eq!(r.validate("sleep", b"{}"), Err("payload.ms: required".into()));
    }
}
