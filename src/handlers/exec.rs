//! `exec`: runs a local program directly (no shell) and reports its exit.
//!
//! Payload: `{"argv": ["prog", "arg"...], "env": {..}, "timeout_ms"}`. Only
//! registered when the node runs with `--allow-exec`, since it lets job
//! authors run arbitrary code on every node. The child gets stdin = null, the
//! node's environment plus `env`, and `KAIROS_JOB_ID`, `KAIROS_RUN_ID`,
//! `KAIROS_ATTEMPT`, `KAIROS_IDEMPOTENCY_KEY` (which `env` may not override),
//! `KAIROS_EVENT_ID` and, with tracing on, the attempt's W3C `TRACEPARENT`.
//! stdout and stderr are read concurrently into one rolling tail, so lines
//! appear roughly in the order they were written.
//!
//! Outcome: exit 0 succeeds with the output tail; exit N is `exit_N` and a
//! death by signal S is `signal_S`, both retryable; a program that cannot be
//! started is `spawn`, not retryable. On timeout or cancel the child is
//! SIGKILLed and reaped before returning (and `kill_on_drop` covers the
//! attempt future being dropped). After the child exits, output is drained
//! for at most [`EXIT_DRAIN_GRACE`], because a background grandchild may hold
//! the pipes open indefinitely.

use std::collections::BTreeMap;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::{
    effective_timeout, Fields, Handler, HandlerError, HandlerResult, RunContext, TailBuf, MAX_OUTPUT_TAIL,
    MAX_PAYLOAD_MS,
};

/// The job type name; the registry needs it to explain a disabled `exec`.
pub(crate) const NAME: &str = "exec";
/// Fields an `exec` payload may contain.
const FIELDS: &[&str] = &["argv", "env", "timeout_ms"];
/// Variables Kairos sets for the child; a payload may not override them.
const RESERVED_ENV: &[&str] = &[
    "KAIROS_JOB_ID",
    "KAIROS_RUN_ID",
    "KAIROS_ATTEMPT",
    "KAIROS_IDEMPOTENCY_KEY",
];
/// How long to keep reading output after the child exits (grandchildren may hold the pipes).
const EXIT_DRAIN_GRACE: Duration = Duration::from_millis(250);
/// How long to wait for a SIGKILLed child to be reaped before giving up on it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `exec` job type.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecHandler;

/// A validated `exec` payload.
#[derive(Debug)]
struct ExecPayload {
    /// Program and arguments; `argv[0]` is looked up on `PATH`.
    argv: Vec<String>,
    /// Extra environment for the child.
    env: BTreeMap<String, String>,
    /// Optional per-job cap, in ms, on top of the attempt timeout.
    timeout_ms: Option<u64>,
}

/// Parses and checks a payload; errors name the field.
fn parse(payload: &[u8]) -> Result<ExecPayload, String> {
    let mut f = Fields::parse(payload, FIELDS)?;
    let argv: Vec<String> = f.require("argv")?;
    if argv.is_empty() {
        return Err("payload.argv: must not be empty".into());
    }
    if argv[0].is_empty() {
        return Err("payload.argv[0]: program must not be empty".into());
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(format!("payload.argv[{i}]: must not contain NUL"));
    }
    let env: BTreeMap<String, String> = f.take("env")?.unwrap_or_default();
    for (k, v) in &env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!("payload.env.{k}: invalid variable name"));
        }
        if RESERVED_ENV.contains(&k.as_str()) {
            return Err(format!("payload.env.{k}: reserved variable, set by Kairos"));
        }
        if v.contains('\0') {
            return Err(format!("payload.env.{k}: value must not contain NUL"));
        }
    }
    let timeout_ms = f.take_ms("timeout_ms", 1, MAX_PAYLOAD_MS)?;
    Ok(ExecPayload {
        argv,
        env,
        timeout_ms,
    })
}

impl Handler for ExecHandler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, payload: &[u8]) -> Result<(), String> {
        parse(payload).map(|_| ())
    }

    fn run(&self, ctx: RunContext, cancel: CancellationToken) -> BoxFuture<'static, HandlerResult> {
        run_exec(ctx, cancel).boxed()
    }
}

/// Why the wait for the child ended.
enum End {
    /// The child exited (or waiting for it failed).
    Exited(io::Result<ExitStatus>),
    /// The effective timeout passed first.
    Timeout,
    /// The scheduler cancelled the attempt.
    Cancelled,
}

/// One attempt: spawn, collect output, wait; kill on timeout or cancel.
async fn run_exec(ctx: RunContext, cancel: CancellationToken) -> HandlerResult {
    if cancel.is_cancelled() {
        return Err(HandlerError::cancelled());
    }
    let p = parse(&ctx.payload).map_err(HandlerError::invalid_payload)?;
    let limit = effective_timeout(ctx.timeout, p.timeout_ms);
    let deadline = Instant::now() + limit;
    let program = &p.argv[0];
    let mut child = Command::new(program)
        .args(&p.argv[1..])
        .envs(&p.env)
        .env("KAIROS_JOB_ID", &ctx.job_id)
        .env("KAIROS_RUN_ID", ctx.run_id.to_string())
        .env("KAIROS_ATTEMPT", ctx.attempt.to_string())
        .env("KAIROS_IDEMPOTENCY_KEY", &ctx.idempotency_key)
        .env("KAIROS_EVENT_ID", &ctx.event_id)
        // The attempt's trace context, as OpenTelemetry SDKs read it (only
        // while tracing is on: a payload's own `TRACEPARENT` stays otherwise).
        .envs(
            Some(crate::telemetry::traceparent(&tracing::Span::current()))
                .filter(|t| !t.is_empty())
                .map(|t| ("TRACEPARENT", t)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HandlerError::new("spawn", format!("cannot start {program:?}: {e}"), false))?;
    tracing::debug!(job_id = %ctx.job_id, run_id = ctx.run_id, attempt = ctx.attempt,
        pid = child.id(), program = %program, "exec attempt");
    let mut out = TailBuf::new(MAX_OUTPUT_TAIL);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let end = tokio::select! {
        biased;
        _ = cancel.cancelled() => End::Cancelled,
        _ = sleep_until(deadline) => End::Timeout,
        s = collect(&mut child, stdout, stderr, &mut out) => End::Exited(s),
    };
    let err = match end {
        End::Exited(Ok(status)) if status.success() => return Ok(out.to_string_lossy()),
        End::Exited(Ok(status)) => match (status.code(), signal_of(status)) {
            (Some(code), _) => HandlerError::new(
                format!("exit_{code}"),
                format!("{program:?} exited with status {code}"),
                true,
            ),
            (None, sig) => {
                let sig = sig.unwrap_or(0);
                let msg = format!("{program:?} killed by signal {sig}");
                HandlerError::new(format!("signal_{sig}"), msg, true)
            }
        },
        End::Exited(Err(e)) => HandlerError::new("wait", format!("waiting for child: {e}"), true),
        End::Timeout => {
            kill_and_reap(&mut child).await;
            HandlerError::timeout(limit)
        }
        End::Cancelled => {
            kill_and_reap(&mut child).await;
            HandlerError::cancelled()
        }
    };
    Err(err.with_output(out.to_string_lossy()))
}

/// Reads both pipes into `out` until EOF, and returns the exit status; stops
/// draining [`EXIT_DRAIN_GRACE`] after the child exits.
async fn collect(
    child: &mut Child,
    mut stdout: Option<impl AsyncRead + Unpin>,
    mut stderr: Option<impl AsyncRead + Unpin>,
    out: &mut TailBuf,
) -> io::Result<ExitStatus> {
    let (mut b1, mut b2) = ([0u8; 8192], [0u8; 8192]);
    let mut exited: Option<(ExitStatus, Instant)> = None;
    loop {
        if stdout.is_none() && stderr.is_none() {
            return match exited {
                Some((status, _)) => Ok(status),
                None => child.wait().await,
            };
        }
        let drain_until = exited.map_or_else(Instant::now, |(_, t)| t);
        tokio::select! {
            n = read_some(&mut stdout, &mut b1) => out.push(&b1[..n]),
            n = read_some(&mut stderr, &mut b2) => out.push(&b2[..n]),
            s = child.wait(), if exited.is_none() => exited = Some((s?, Instant::now() + EXIT_DRAIN_GRACE)),
            _ = sleep_until(drain_until), if exited.is_some() => {
                if let Some((status, _)) = exited {
                    return Ok(status);
                }
            }
        }
    }
}

/// Reads one chunk; on EOF or error closes the pipe (sets it to `None`) and
/// returns 0. A closed pipe never becomes ready.
async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> usize {
    let Some(r) = pipe.as_mut() else {
        return std::future::pending().await;
    };
    match r.read(buf).await {
        Ok(n) if n > 0 => n,
        _ => {
            *pipe = None;
            0
        }
    }
}

/// SIGKILLs the child and reaps it, bounded by [`REAP_TIMEOUT`].
async fn kill_and_reap(child: &mut Child) {
    if let Err(e) = child.start_kill() {
        tracing::debug!(error = %e, "kill failed (child already exited?)");
    }
    if tokio::time::timeout(REAP_TIMEOUT, child.wait()).await.is_err() {
        tracing::warn!(pid = child.id(), "child not reaped after SIGKILL; leaving it");
    }
}

/// The signal that terminated the child, if any.
fn signal_of(status: ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        std::os::unix::process::ExitStatusExt::signal(&status)
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testutil::{assert_table, class, test_ctx};

    /// Runs `payload` with a 30 s attempt timeout.
    async fn run(payload: &str) -> HandlerResult {
        let ctx = test_ctx(payload, Duration::from_secs(30));
        ExecHandler.run(ctx, CancellationToken::new()).await
    }

    #[test]
    fn validation_table() {
        let good = [
            r#"{"argv":["true"]}"#,
            r#"{"argv":["sh","-c","echo hi"],"env":{"A":"1"},"timeout_ms":1000}"#,
            r#"{"argv":["true"],"env":null}"#,
        ];
        let bad = r#"
                                                => payload.argv: required
            {"env":{}}                          => payload.argv: required
            {"argv":[]}                         => payload.argv: must not be empty
            {"argv":"true"}                     => payload.argv: invalid type
            {"argv":["true",1]}                 => payload.argv: invalid type
            {"argv":[""]}                       => payload.argv[0]: program must not be empty
            {"argv":["a","b\u0000"]}            => payload.argv[1]: must not contain NUL
            {"argv":["a"],"env":{"A":1}}        => payload.env: invalid type
            {"argv":["a"],"env":{"A=B":"1"}}    => payload.env.A=B: invalid variable name
            {"argv":["a"],"env":{"KAIROS_RUN_ID":"1"}} => payload.env.KAIROS_RUN_ID: reserved
            {"argv":["a"],"timeout_ms":0}       => payload.timeout_ms: must be an integer
            {"argv":["a"],"shell":true}         => payload.shell: unknown field
        "#;
        assert_table(|p| ExecHandler.validate(p), &good, bad);
    }

    #[tokio::test]
    async fn true_succeeds_and_stdin_is_null() {
        assert_eq!(run(r#"{"argv":["true"]}"#).await, Ok(String::new()));
        // `cat` would block forever on an inherited or piped stdin.
        assert_eq!(run(r#"{"argv":["cat"]}"#).await, Ok(String::new()));
    }

    #[tokio::test]
    async fn nonzero_exit_is_retryable_with_output() {
        let err = run(r#"{"argv":["sh","-c","echo hi; echo oops >&2; exit 3"]}"#)
            .await
            .unwrap_err();
        assert_eq!(class(&err), ("exit_3", true));
        assert!(
            err.output.contains("hi") && err.output.contains("oops"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn missing_program_is_spawn_error() {
        let err = run(r#"{"argv":["/nonexistent/kairos-no-such-program"]}"#)
            .await
            .unwrap_err();
        assert_eq!(class(&err), ("spawn", false));
    }

    #[tokio::test]
    async fn timeout_kills_child_promptly() {
        // Once via payload timeout_ms, once via the attempt timeout.
        for (payload, ctx_timeout) in [
            (r#"{"argv":["sleep","30"],"timeout_ms":300}"#, 30_000),
            (r#"{"argv":["sleep","30"]}"#, 300),
        ] {
            let start = std::time::Instant::now();
            let ctx = test_ctx(payload, Duration::from_millis(ctx_timeout));
            let err = ExecHandler.run(ctx, CancellationToken::new()).await.unwrap_err();
            assert_eq!(class(&err), ("timeout", true));
            assert!(start.elapsed() < Duration::from_secs(10));
        }
    }

    #[tokio::test]
    async fn cancel_kills_child_promptly() {
        let ctx = test_ctx(r#"{"argv":["sleep","30"]}"#, Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let mut fut = ExecHandler.run(ctx, cancel.clone());
        // One poll spawns the child and parks in the wait; then cancel.
        assert!(futures::poll!(&mut fut).is_pending());
        cancel.cancel();
        let err = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("exec ignored cancel")
            .unwrap_err();
        assert_eq!(class(&err), ("cancelled", false));
    }

    #[tokio::test]
    async fn env_is_visible_to_child() {
        let script = r#"printf '%s|%s|%s|%s|%s' \"$KAIROS_JOB_ID\" \"$KAIROS_RUN_ID\" \"$KAIROS_ATTEMPT\" \"$KAIROS_IDEMPOTENCY_KEY\" \"$FOO\""#;
        let payload = format!(r#"{{"argv":["sh","-c","{script}"],"env":{{"FOO":"bar"}}}}"#);
        let out = run(&payload).await.unwrap();
        assert_eq!(out, "job-1|42|3|job-1:2023-11-14T22:13:20.123Z|bar");
    }

    #[tokio::test]
    async fn output_tail_is_bounded() {
        let out = run(r#"{"argv":["seq","1","5000"]}"#).await.unwrap();
        assert!(out.len() <= MAX_OUTPUT_TAIL && out.ends_with("4999\n5000\n"));
    }

    #[tokio::test]
    async fn background_grandchild_does_not_hold_attempt() {
        // The orphaned `sleep 5` keeps stdout open; we must not wait for EOF.
        let start = std::time::Instant::now();
        let out = run(r#"{"argv":["sh","-c","sleep 5 & echo done"]}"#).await;
        assert_eq!(out, Ok("done\n".to_string()));
        assert!(start.elapsed() < Duration::from_secs(4));
    }
}
