//! `kairos-example-worker`: a Kairos external worker built on the
//! `kairos-worker` library, serving one job type whose payload says what to
//! do. It is the twin of `examples/python-worker` (same flags, same
//! behaviour, same output) and what the end-to-end tests run.
//!
//! Each task's payload is a JSON object (every field optional; an empty
//! payload is `{}`):
//!
//! | field | meaning |
//! |---|---|
//! | `sleep_ms` | sleep this long first; a cancellation cuts it short and the task fails with kind `cancelled` |
//! | `fail` | then fail with this message (kind `worker_error`) |
//! | `non_retryable` | the failure is not retried |
//! | `output` | else succeed with this output (default `ok <job_id> <run_id> <attempt>`) |
//!
//! A payload that is not such an object fails the task, not retryable, with
//! kind `bad_payload`.
//!
//! stdout carries one JSON object per line, flushed at once, for tests to
//! await: `registered`, `task`, `cancel` and `completed` events (see
//! [`event_line`]). Logs go to stderr (`RUST_LOG`, default `info`). SIGTERM
//! or Ctrl-C shuts the worker down gracefully: running tasks are cancelled
//! and their results sent before it exits.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use kairos_worker::{
    CancelReason, CancellationToken, JobTypeSpec, TaskContext, TaskError, TlsConfig, Worker, WorkerConfig,
    WorkerEvent,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// An example Kairos worker: sleeps, fails or echoes as each job's payload says.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// gRPC address of a Kairos node (http://host:port, or host:port);
    /// repeatable or comma-separated, tried in order.
    #[arg(long = "endpoint", value_name = "URL", required = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// A file holding the token's secret (else the KAIROS_TOKEN variable).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the nodes: speak TLS and verify them.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The job type to serve (e.g. example.echo).
    #[arg(long = "type", value_name = "NAME")]
    job_type: String,
    /// A JSON Schema file the type's payloads must satisfy.
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
    /// The type's description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// Most tasks run at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    capacity: u32,
    /// The worker's name in `kairos worker list` (default: host/pid).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Longest wait of one poll (e.g. 30s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    poll_wait: Duration,
}

/// The variable holding the token's secret when no --token-file is given.
const TOKEN_ENV: &str = "KAIROS_TOKEN";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match worker_config(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("kairos-example-worker: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kairos-example-worker: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kairos-example-worker: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The library's configuration from the flags (reading the files they name).
fn worker_config(args: Args) -> Result<WorkerConfig, String> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
    };
    let token = match &args.token_file {
        Some(path) => Some(
            String::from_utf8_lossy(&read("token-file", path)?)
                .trim()
                .to_string(),
        ),
        None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()),
    }
    .filter(|t| !t.is_empty());
    let tls = match &args.tls_ca {
        Some(path) => Some(TlsConfig {
            ca_pem: read("tls-ca", path)?,
            ..TlsConfig::default()
        }),
        None => None,
    };
    let payload_schema = match &args.schema {
        Some(path) => String::from_utf8(read("schema", path)?)
            .map_err(|_| format!("--schema {}: not UTF-8", path.display()))?,
        None => String::new(),
    };
    Ok(WorkerConfig {
        endpoints: args.endpoints,
        token,
        tls,
        worker_name: args.name.unwrap_or_else(default_name),
        job_types: vec![JobTypeSpec::new(args.job_type)
            .with_description(args.description.unwrap_or_default())
            .with_payload_schema(payload_schema)],
        capacity: args.capacity,
        poll_wait: args.poll_wait,
        ..WorkerConfig::default()
    })
}

/// `host/pid`.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", std::process::id())
}

/// Runs the worker until SIGTERM or Ctrl-C, printing its events.
async fn serve(config: WorkerConfig) -> Result<(), kairos_worker::WorkerError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_events(events_rx));
    let result = Worker::new(config)
        .with_events(events_tx)
        .serve(Arc::new(perform), shutdown)
        .await;
    // The worker has dropped its sender: the printer ends after the last event.
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    result
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Prints each event as one JSON line on stdout, flushed.
async fn print_events(mut events: mpsc::UnboundedReceiver<WorkerEvent>) {
    while let Some(event) = events.recv().await {
        if let Some(line) = event_line(&event) {
            let mut out = std::io::stdout().lock();
            // A closed stdout only loses the events.
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }
}

/// The stdout line of `event`:
///
/// * `{"event":"registered","worker_id":..,"node_id":..,"endpoint":..}`
/// * `{"event":"task","run_id":..,"job_id":..,"attempt":..,"nominal_time":"<RFC 3339>","token":"<hex>"}`
/// * `{"event":"cancel","run_id":..}`
/// * `{"event":"completed","run_id":..,"attempt":..,"result":"ok"|"<gRPC code name>"}`
fn event_line(event: &WorkerEvent) -> Option<Value> {
    Some(match event {
        WorkerEvent::Registered {
            worker_id,
            node_id,
            endpoint,
        } => json!({"event": "registered", "worker_id": worker_id, "node_id": node_id, "endpoint": endpoint}),
        WorkerEvent::TaskReceived {
            job_id,
            run_id,
            attempt,
            nominal_time,
            task_token,
        } => json!({
            "event": "task",
            "run_id": run_id,
            "job_id": job_id,
            "attempt": attempt,
            "nominal_time": nominal_time.map(rfc3339),
            "token": hex(task_token),
        }),
        WorkerEvent::CancelRequested { run_id, .. } => json!({"event": "cancel", "run_id": run_id}),
        WorkerEvent::TaskCompleted {
            run_id,
            attempt,
            outcome,
        } => json!({
            "event": "completed",
            "run_id": run_id,
            "attempt": attempt,
            "result": match outcome {
                Ok(()) => "ok",
                Err(code) => code_name(*code),
            },
        }),
        _ => return None,
    })
}

/// What the task's payload asks for (see the module docs).
#[derive(Debug, Default, PartialEq)]
struct Instructions {
    sleep: Duration,
    fail: Option<String>,
    non_retryable: bool,
    output: Option<String>,
}

impl Instructions {
    fn parse(payload: &[u8]) -> Result<Instructions, String> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Instructions::default());
        }
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("payload is not a JSON object".into());
        };
        let text = |name: &str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{name}: expected a string, got {other}")),
        };
        let sleep_ms = match fields.get("sleep_ms") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("sleep_ms: expected a whole number of milliseconds, got {v}"))?,
        };
        let non_retryable = match fields.get("non_retryable") {
            None | Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("non_retryable: expected true or false, got {v}"))?,
        };
        Ok(Instructions {
            sleep: Duration::from_millis(sleep_ms),
            fail: text("fail")?,
            non_retryable,
            output: text("output")?,
        })
    }
}

/// The handler: does what the payload says.
async fn perform(task: TaskContext) -> Result<String, TaskError> {
    let instructions = Instructions::parse(&task.payload)
        .map_err(|e| TaskError::non_retryable(e).with_kind("bad_payload"))?;
    let started = Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(instructions.sleep) => {}
        _ = task.cancelled() => {
            let why = match task.cancel_reason() {
                Some(CancelReason::CancelRequested) => "the run was cancelled",
                Some(CancelReason::LeaseLost) => "the attempt is no longer current",
                Some(CancelReason::Shutdown) | None => "the worker is shutting down",
            };
            return Err(TaskError::cancelled(format!(
                "cancelled after {} ms: {why}",
                started.elapsed().as_millis()
            )));
        }
    }
    if let Some(message) = instructions.fail {
        let error = TaskError::new(message);
        return Err(TaskError {
            non_retryable: instructions.non_retryable,
            ..error
        });
    }
    Ok(instructions
        .output
        .unwrap_or_else(|| format!("ok {} {} {}", task.job_id, task.run_id, task.attempt)))
}

/// RFC 3339 in UTC: whole seconds, or nanoseconds when there are any.
fn rfc3339(time: SystemTime) -> String {
    let whole = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_nanos() == 0);
    if whole {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_nanos(time).to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical name of a gRPC status code (as in the gRPC spec and
/// Python's `grpc.StatusCode`).
fn code_name(code: kairos_worker::Code) -> &'static str {
    use kairos_worker::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_worker::proto;

    fn task(payload: &str) -> TaskContext {
        TaskContext::from_task(proto::Task {
            job_id: "echo".into(),
            run_id: 7,
            attempt: 2,
            payload: payload.as_bytes().to_vec(),
            ..proto::Task::default()
        })
    }

    #[test]
    fn flags_take_repeated_and_comma_separated_endpoints() {
        let args = Args::try_parse_from([
            "kairos-example-worker",
            "--endpoint",
            "http://a:1,http://b:2",
            "--endpoint",
            "c:3",
            "--type",
            "example.echo",
        ])
        .expect("valid flags");
        assert_eq!(args.endpoints, ["http://a:1", "http://b:2", "c:3"]);
        assert_eq!((args.capacity, args.poll_wait), (4, Duration::from_secs(30)));
        assert!(Args::try_parse_from(["kairos-example-worker", "--type", "t"]).is_err());
    }

    #[test]
    fn payload_fields_default_and_are_checked() {
        assert_eq!(Instructions::parse(b""), Ok(Instructions::default()));
        assert_eq!(
            Instructions::parse(br#"{"sleep_ms": 5, "fail": "x", "non_retryable": true}"#),
            Ok(Instructions {
                sleep: Duration::from_millis(5),
                fail: Some("x".into()),
                non_retryable: true,
                output: None,
            })
        );
        for bad in [
            &br#"[1]"#[..],
            br#"{"sleep_ms": -1}"#,
            br#"{"output": 3}"#,
            b"nope",
        ] {
            assert!(
                Instructions::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn tasks_succeed_fail_or_stop_as_the_payload_says() {
        assert_eq!(perform(task("")).await, Ok("ok echo 7 2".to_string()));
        assert_eq!(perform(task(r#"{"output": "hi"}"#)).await, Ok("hi".to_string()));
        let failed = perform(task(r#"{"fail": "boom", "non_retryable": true}"#)).await;
        assert_eq!(failed, Err(TaskError::non_retryable("boom")));
        let bad = perform(task("[]")).await.expect_err("a bad payload fails");
        assert_eq!((bad.kind.as_str(), bad.non_retryable), ("bad_payload", true));

        let sleeper = task(r#"{"sleep_ms": 600000}"#);
        sleeper.cancel_token().cancel();
        let cancelled = perform(sleeper).await.expect_err("cancelled");
        assert_eq!(cancelled.kind, "cancelled");
    }

    #[test]
    fn events_print_as_the_tests_expect() {
        let line = event_line(&WorkerEvent::TaskReceived {
            job_id: "j".into(),
            run_id: 3,
            attempt: 1,
            nominal_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            task_token: vec![0x01, 0xab],
        });
        assert_eq!(
            line,
            Some(json!({"event": "task", "run_id": 3, "job_id": "j", "attempt": 1,
                        "nominal_time": "2023-11-14T22:13:20Z", "token": "01ab"}))
        );
        let line = event_line(&WorkerEvent::TaskCompleted {
            run_id: 3,
            attempt: 1,
            outcome: Err(kairos_worker::Code::FailedPrecondition),
        });
        assert_eq!(
            line.and_then(|l| l["result"].as_str().map(str::to_string))
                .as_deref(),
            Some("FAILED_PRECONDITION")
        );
    }
}
