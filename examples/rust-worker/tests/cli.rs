//! The `kairos-example-worker` binary against the fake node of
//! kairos-worker's tests: its flags, its stdout events, what it answers for
//! each kind of payload, and SIGTERM. Every wait is bounded by [`LIMIT`].

#[path = "../../../sdk/kairos-worker/tests/fake/mod.rs"]
mod fake;

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use fake::{FakeNode, FakeSettings, Seen};
use kairos_worker::proto;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(20);
const BINARY: &str = env!("CARGO_BIN_EXE_kairos-example-worker");

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The running binary and its stdout, line by line.
struct Process {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Process {
    /// Starts the binary with `args` and `env`; its stderr is kept for
    /// `wait_with_output` with `keep_stderr`, else discarded.
    fn start(args: &[&str], env: &[(&str, &str)], keep_stderr: bool) -> Process {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env_remove("KAIROS_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(if keep_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start kairos-example-worker");
        let stdout = child.stdout.take().expect("piped stdout");
        Process {
            child,
            stdout: BufReader::new(stdout).lines(),
        }
    }

    /// The next stdout line, as JSON, which must be event `kind`.
    async fn event(&mut self, kind: &str) -> Value {
        let line = within(&format!("a {kind} event"), self.stdout.next_line())
            .await
            .expect("read stdout")
            .unwrap_or_else(|| panic!("stdout closed before a {kind} event"));
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(event["event"], kind, "{line}");
        event
    }

    /// Sends SIGTERM.
    async fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
    }
}

async fn next_completion(seen: &mut mpsc::UnboundedReceiver<Seen>) -> proto::CompleteTaskRequest {
    within("a CompleteTask", async {
        loop {
            match seen.recv().await.expect("the node is running") {
                Seen::Complete { request, .. } => return request,
                _ => continue,
            }
        }
    })
    .await
}

fn failure(request: &proto::CompleteTaskRequest) -> proto::TaskFailure {
    match &request.result {
        Some(proto::complete_task_request::Result::Failure(f)) => f.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn task(token: &str, run_id: u64, payload: &str) -> proto::Task {
    proto::Task {
        task_token: token.as_bytes().to_vec(),
        job_id: "echo".into(),
        run_id,
        attempt: 1,
        job_type: "example.echo".into(),
        payload: payload.as_bytes().to_vec(),
        nominal_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        heartbeat_timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 150_000_000,
        }),
        ..proto::Task::default()
    }
}

#[tokio::test]
async fn serves_tasks_prints_events_and_stops_on_sigterm() {
    let (node, mut seen) = FakeNode::start(FakeSettings {
        token: Some("s3cret"),
        node_id: 4,
        ..FakeSettings::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("kairos-example-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").expect("write the token");
    let schema_file = dir.join("schema.json");
    std::fs::write(&schema_file, r#"{"type":"object"}"#).expect("write the schema");
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    let endpoints = format!("http://{dead},{}", node.url);
    let mut worker = Process::start(
        &[
            "--endpoint",
            &endpoints,
            "--type",
            "example.echo",
            "--description",
            "echoes",
            "--schema",
            schema_file.to_str().expect("UTF-8 path"),
            "--token-file",
            token_file.to_str().expect("UTF-8 path"),
            "--name",
            "cli-test",
            "--capacity",
            "2",
        ],
        &[],
        false,
    );

    let registered = worker.event("registered").await;
    assert_eq!(registered["endpoint"], node.url.as_str());
    assert_eq!(registered["node_id"], 4);
    assert_eq!(registered["worker_id"], "n4-w1");
    let request = within("RegisterWorker", async {
        loop {
            if let Seen::Register { request, .. } = seen.recv().await.expect("the node is running") {
                return request;
            }
        }
    })
    .await;
    assert_eq!((request.worker_name.as_str(), request.capacity), ("cli-test", 2));
    let spec = &request.job_types[0];
    assert_eq!(
        (
            spec.name.as_str(),
            spec.description.as_str(),
            spec.payload_schema.as_str()
        ),
        ("example.echo", "echoes", r#"{"type":"object"}"#)
    );

    // Success, with the default output and with a given one.
    node.assign(task("t1", 1, ""));
    let received = worker.event("task").await;
    assert_eq!(
        received,
        serde_json::json!({"event": "task", "run_id": 1, "job_id": "echo", "attempt": 1,
                           "nominal_time": "2023-11-14T22:13:20Z", "token": "7431"})
    );
    let completed = worker.event("completed").await;
    assert_eq!(
        (completed["run_id"].as_u64(), completed["result"].as_str()),
        (Some(1), Some("ok"))
    );
    let request = next_completion(&mut seen).await;
    assert!(
        matches!(&request.result, Some(proto::complete_task_request::Result::Success(s)) if s.output == "ok echo 1 1")
    );
    node.assign(task("t2", 2, r#"{"output": "hi"}"#));
    worker.event("task").await;
    worker.event("completed").await;
    assert!(matches!(
        &next_completion(&mut seen).await.result,
        Some(proto::complete_task_request::Result::Success(s)) if s.output == "hi"
    ));

    // Failure.
    node.assign(task("t3", 3, r#"{"fail": "boom", "non_retryable": true}"#));
    worker.event("task").await;
    worker.event("completed").await;
    let failed = failure(&next_completion(&mut seen).await);
    assert_eq!((failed.message.as_str(), failed.non_retryable), ("boom", true));

    // Cancelled by the cluster while sleeping.
    node.cancel(b"t4");
    node.assign(task("t4", 4, r#"{"sleep_ms": 600000}"#));
    worker.event("task").await;
    assert_eq!(worker.event("cancel").await["run_id"], 4);
    assert_eq!(worker.event("completed").await["result"], "ok");
    let failed = failure(&next_completion(&mut seen).await);
    assert_eq!(failed.kind, "cancelled");
    assert!(failed.message.contains("run was cancelled"), "{}", failed.message);

    // SIGTERM while a task sleeps: it is cancelled, its result sent, and the
    // worker exits 0.
    node.assign(task("t5", 5, r#"{"sleep_ms": 600000}"#));
    worker.event("task").await;
    worker.terminate().await;
    assert_eq!(worker.event("completed").await["run_id"], 5);
    let failed = failure(&next_completion(&mut seen).await);
    assert_eq!(failed.kind, "cancelled");
    assert!(failed.message.contains("shutting down"), "{}", failed.message);
    let status = within("the worker to exit", worker.child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wrong_token_from_the_environment_exits_with_the_refusal() {
    let (node, _seen) = FakeNode::start(FakeSettings {
        token: Some("s3cret"),
        ..FakeSettings::default()
    })
    .await;
    let worker = Process::start(
        &["--endpoint", &node.url, "--type", "example.echo"],
        &[("KAIROS_TOKEN", "wrong")],
        true,
    );
    let output = within("the worker to exit", worker.child.wait_with_output())
        .await
        .expect("wait");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
}
