//! The worker against fake nodes (tests/fake): registration, polling,
//! heartbeats, completion, re-registration and endpoint failover, the
//! credential, and shutdown. Tests await the worker's events and the
//! calls the fake receives; every wait is bounded by [`LIMIT`].

mod fake;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fake::{FakeNode, FakeSettings, FakeTls, Seen};
use kairos_worker::proto;
use kairos_worker::{
    CancelReason, JobTypeSpec, TaskContext, TaskError, TaskHandler, TlsConfig, Worker, WorkerConfig,
    WorkerError, WorkerEvent,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// The longest any single wait of a test may take.
const LIMIT: Duration = Duration::from_secs(15);

/// `future`, or a panic naming `what` after [`LIMIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The first item from `rx` that `pick` maps to `Some`, skipping the others.
async fn next_matching<E: std::fmt::Debug, T>(
    rx: &mut mpsc::UnboundedReceiver<E>,
    what: &str,
    mut pick: impl FnMut(E) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let item = rx
                .recv()
                .await
                .unwrap_or_else(|| panic!("channel closed waiting for {what}"));
            if let Some(found) = pick(item) {
                return found;
            }
        }
    })
    .await
}

fn config(endpoints: &[&str]) -> WorkerConfig {
    WorkerConfig {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        worker_name: "test-worker".into(),
        job_types: vec![JobTypeSpec::new("test.echo").with_description("echoes")],
        capacity: 1,
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

fn task(token: &str, run_id: u64, payload: &str) -> proto::Task {
    proto::Task {
        task_token: token.as_bytes().to_vec(),
        job_id: "job-1".into(),
        run_id,
        attempt: 1,
        job_type: "test.echo".into(),
        payload: payload.as_bytes().to_vec(),
        idempotency_key: format!("job-1:{run_id}"),
        // Heartbeats every 50 ms.
        heartbeat_timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 150_000_000,
        }),
        ..proto::Task::default()
    }
}

/// A running worker and what it tells.
struct Running {
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    shutdown: CancellationToken,
    join: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    fn start<H: TaskHandler>(config: WorkerConfig, handler: H) -> Running {
        let (events_tx, events) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let worker = Worker::new(config).with_events(events_tx);
        let join = tokio::spawn(worker.serve(Arc::new(handler), shutdown.clone()));
        Running {
            events,
            shutdown,
            join,
        }
    }

    async fn registered(&mut self) -> (String, String) {
        next_matching(&mut self.events, "a registration", |e| match e {
            WorkerEvent::Registered {
                worker_id, endpoint, ..
            } => Some((worker_id, endpoint)),
            _ => None,
        })
        .await
    }

    async fn completed(&mut self, run: u64) -> Result<(), Code> {
        next_matching(&mut self.events, "a completion", |e| match e {
            WorkerEvent::TaskCompleted { run_id, outcome, .. } if run_id == run => Some(outcome),
            _ => None,
        })
        .await
    }

    /// Shuts the worker down and returns what `run` returned.
    async fn stop(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        within("the worker to stop", self.join)
            .await
            .expect("the worker task panicked")
    }
}

async fn next_completion(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) -> (Option<String>, proto::CompleteTaskRequest) {
    next_matching(seen, "a CompleteTask", |s| match s {
        Seen::Complete {
            authorization,
            request,
        } => Some((authorization, request)),
        _ => None,
    })
    .await
}

/// Echoes the payload, or fails as `fail:<message>` says.
async fn echo(task: TaskContext) -> Result<String, TaskError> {
    let payload = String::from_utf8_lossy(&task.payload).to_string();
    match payload.strip_prefix("fail:") {
        Some(message) => Err(TaskError::non_retryable(message)
            .with_kind("bad_input")
            .with_output("partial")),
        None => Ok(format!("{} run {} says {payload}", task.job_id, task.run_id)),
    }
}

fn success(request: &proto::CompleteTaskRequest) -> Option<&str> {
    match &request.result {
        Some(proto::complete_task_request::Result::Success(s)) => Some(&s.output),
        _ => None,
    }
}

fn failure(request: &proto::CompleteTaskRequest) -> Option<&proto::TaskFailure> {
    match &request.result {
        Some(proto::complete_task_request::Result::Failure(f)) => Some(f),
        _ => None,
    }
}

#[tokio::test]
async fn registers_polls_runs_and_completes_with_the_bearer_token() {
    let (node, mut seen) = FakeNode::start(FakeSettings {
        token: Some("s3cret"),
        node_id: 3,
        ..FakeSettings::default()
    })
    .await;
    let mut worker = Running::start(
        WorkerConfig {
            token: Some("s3cret".into()),
            capacity: 2,
            ..config(&[&node.url])
        },
        echo,
    );

    let (worker_id, endpoint) = worker.registered().await;
    assert_eq!(endpoint, node.url);
    assert_eq!(worker_id, "n3-w1");
    let (authorization, request) = next_matching(&mut seen, "RegisterWorker", |s| match s {
        Seen::Register {
            authorization,
            request,
        } => Some((authorization, request)),
        _ => None,
    })
    .await;
    assert_eq!(authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(request.worker_name, "test-worker");
    assert_eq!(request.capacity, 2);
    assert_eq!(request.job_types.len(), 1);
    assert_eq!(
        (
            request.job_types[0].name.as_str(),
            request.job_types[0].description.as_str()
        ),
        ("test.echo", "echoes")
    );
    let poll_authorization = next_matching(&mut seen, "PollTask", |s| match s {
        Seen::Poll { authorization, .. } => Some(authorization),
        _ => None,
    })
    .await;
    assert_eq!(poll_authorization.as_deref(), Some("Bearer s3cret"));

    node.assign(task("t1", 11, "hello"));
    let received = next_matching(&mut worker.events, "the task", |e| match e {
        WorkerEvent::TaskReceived {
            run_id, task_token, ..
        } => Some((run_id, task_token)),
        _ => None,
    })
    .await;
    assert_eq!(received, (11, b"t1".to_vec()));
    let (authorization, request) = next_completion(&mut seen).await;
    assert_eq!(authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(request.task_token, b"t1");
    assert_eq!(success(&request), Some("job-1 run 11 says hello"));
    assert_eq!(worker.completed(11).await, Ok(()));

    node.assign(task("t2", 12, "fail:no such thing"));
    let (_, request) = next_completion(&mut seen).await;
    let failed = failure(&request).expect("a failure");
    assert_eq!(failed.message, "no such thing");
    assert!(failed.non_retryable);
    assert_eq!(
        (failed.kind.as_str(), failed.output.as_str()),
        ("bad_input", "partial")
    );
    assert_eq!(worker.completed(12).await, Ok(()));

    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_wrong_token_stops_the_worker_with_the_refusal() {
    let (node, _seen) = FakeNode::start(FakeSettings {
        token: Some("s3cret"),
        ..FakeSettings::default()
    })
    .await;
    let config = WorkerConfig {
        token: Some("wrong".into()),
        ..config(&[&node.url])
    };
    let result = within(
        "the refusal",
        Worker::run(config, Arc::new(echo), CancellationToken::new()),
    )
    .await;
    match result {
        Err(WorkerError::Rejected { code, endpoint, .. }) => {
            assert_eq!(code, Code::Unauthenticated);
            assert_eq!(endpoint, node.url);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn cancel_requested_by_a_heartbeat_reaches_the_handler() {
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    let (reason_tx, mut reason_rx) = mpsc::unbounded_channel();
    let handler = move |task: TaskContext| {
        let reason_tx = reason_tx.clone();
        async move {
            task.cancelled().await;
            let _ = reason_tx.send(task.cancel_reason());
            Err(TaskError::cancelled("stopped on request"))
        }
    };
    let mut worker = Running::start(config(&[&node.url]), handler);
    worker.registered().await;

    node.cancel(b"t1");
    node.assign(task("t1", 21, ""));
    let run = next_matching(&mut worker.events, "the cancel request", |e| match e {
        WorkerEvent::CancelRequested { run_id, .. } => Some(run_id),
        _ => None,
    })
    .await;
    assert_eq!(run, 21);
    let beat = next_matching(&mut seen, "the heartbeat", |s| match s {
        Seen::Heartbeat { task_token } => Some(task_token),
        _ => None,
    })
    .await;
    assert_eq!(beat, b"t1");
    let reason = within("the handler's cancel reason", reason_rx.recv()).await;
    assert_eq!(reason, Some(Some(CancelReason::CancelRequested)));
    let (_, request) = next_completion(&mut seen).await;
    assert_eq!(failure(&request).map(|f| f.kind.as_str()), Some("cancelled"));
    assert_eq!(worker.completed(21).await, Ok(()));

    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn heartbeats_keep_the_lease_while_the_handler_works() {
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        move |_task: TaskContext| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok("done".to_string())
            }
        }
    };
    let mut worker = Running::start(config(&[&node.url]), handler);
    worker.registered().await;

    node.assign(task("t1", 25, ""));
    for _ in 0..3 {
        let beat = next_matching(&mut seen, "a heartbeat", |s| match s {
            Seen::Heartbeat { task_token } => Some(task_token),
            Seen::Complete { .. } => panic!("completed before the handler returned"),
            _ => None,
        })
        .await;
        assert_eq!(beat, b"t1");
    }
    release.notify_one();
    assert_eq!(worker.completed(25).await, Ok(()));
    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_lost_lease_cancels_the_handler_and_discards_its_result() {
    let (node, _seen) = FakeNode::start(FakeSettings::default()).await;
    let (reason_tx, mut reason_rx) = mpsc::unbounded_channel();
    let handler = move |task: TaskContext| {
        let reason_tx = reason_tx.clone();
        async move {
            task.cancelled().await;
            let _ = reason_tx.send(task.cancel_reason());
            Ok("too late".to_string())
        }
    };
    let mut worker = Running::start(config(&[&node.url]), handler);
    worker.registered().await;

    node.make_stale(b"t1");
    node.assign(task("t1", 31, ""));
    let reason = within("the handler's cancel reason", reason_rx.recv()).await;
    assert_eq!(reason, Some(Some(CancelReason::LeaseLost)));
    assert_eq!(worker.completed(31).await, Err(Code::FailedPrecondition));
    assert_eq!(node.completions(), 0, "a lost attempt's result is not sent");

    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn failed_precondition_on_complete_is_not_retried() {
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    // The first heartbeat would come after 20 s: only CompleteTask can say
    // that the attempt is stale.
    let mut worker = Running::start(config(&[&node.url]), echo);
    worker.registered().await;

    node.make_stale(b"t1");
    node.assign(proto::Task {
        heartbeat_timeout: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..task("t1", 41, "late")
    });
    next_completion(&mut seen).await;
    assert_eq!(worker.completed(41).await, Err(Code::FailedPrecondition));
    assert_eq!(node.completions(), 1);

    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn not_found_on_poll_registers_again_once_for_all_poll_loops() {
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    let mut worker = Running::start(
        WorkerConfig {
            capacity: 3,
            ..config(&[&node.url])
        },
        echo,
    );
    let (first, _) = worker.registered().await;
    for _ in 0..3 {
        next_matching(&mut seen, "a poll of each loop", |s| {
            matches!(s, Seen::Poll { .. }).then_some(())
        })
        .await;
    }

    node.forget_workers();
    let (second, endpoint) = worker.registered().await;
    assert_ne!(first, second);
    assert_eq!(endpoint, node.url);
    // Every loop polls again, with the new registration.
    for _ in 0..3 {
        let worker_id = next_matching(&mut seen, "a poll of each loop", |s| match s {
            Seen::Poll { worker_id, .. } => Some(worker_id),
            _ => None,
        })
        .await;
        assert_eq!(worker_id, second);
    }
    assert_eq!(node.registrations(), 2, "one registration for all loops");

    node.assign(task("t1", 51, "again"));
    assert_eq!(worker.completed(51).await, Ok(()));
    worker.stop().await.expect("a clean stop");
}

/// An address where nothing listens.
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn an_unreachable_first_endpoint_moves_to_the_second() {
    let dead = dead_endpoint().await;
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    let mut worker = Running::start(config(&[&dead, &node.url]), echo);

    let (_, endpoint) = worker.registered().await;
    assert_eq!(endpoint, node.url);
    node.assign(task("t1", 61, "x"));
    let (_, request) = next_completion(&mut seen).await;
    assert_eq!(success(&request), Some("job-1 run 61 says x"));
    assert_eq!(worker.completed(61).await, Ok(()));
    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn an_unavailable_node_moves_polling_to_the_next_endpoint() {
    let (first, _first_seen) = FakeNode::start(FakeSettings {
        node_id: 1,
        ..FakeSettings::default()
    })
    .await;
    let (second, mut second_seen) = FakeNode::start(FakeSettings {
        node_id: 2,
        ..FakeSettings::default()
    })
    .await;
    let mut worker = Running::start(config(&[&first.url, &second.url]), echo);
    let (_, endpoint) = worker.registered().await;
    assert_eq!(endpoint, first.url);

    first.set_down(true);
    let (worker_id, endpoint) = worker.registered().await;
    assert_eq!(
        (worker_id.as_str(), endpoint.as_str()),
        ("n2-w1", second.url.as_str())
    );
    second.assign(task("t1", 71, "moved"));
    let (_, request) = next_completion(&mut second_seen).await;
    assert_eq!(success(&request), Some("job-1 run 71 says moved"));
    assert_eq!(worker.completed(71).await, Ok(()));
    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn complete_is_retried_on_the_next_endpoint_while_unavailable() {
    let (first, _first_seen) = FakeNode::start(FakeSettings::default()).await;
    let (second, mut second_seen) = FakeNode::start(FakeSettings {
        node_id: 2,
        ..FakeSettings::default()
    })
    .await;
    let mut worker = Running::start(config(&[&first.url, &second.url]), echo);
    worker.registered().await;

    first.refuse_completions();
    first.assign(task("t1", 81, "elsewhere"));
    let (_, request) = next_completion(&mut second_seen).await;
    assert_eq!(request.task_token, b"t1");
    assert_eq!(worker.completed(81).await, Ok(()));
    assert_eq!(first.completions(), 1);
    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn shutdown_cancels_running_tasks_and_sends_their_results() {
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let handler = move |task: TaskContext| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            task.cancelled().await;
            assert_eq!(task.cancel_reason(), Some(CancelReason::Shutdown));
            Err(TaskError::cancelled("worker shutting down"))
        }
    };
    let mut worker = Running::start(config(&[&node.url]), handler);
    worker.registered().await;
    node.assign(task("t1", 91, ""));
    within("the handler to start", started_rx.recv()).await;

    let Running { shutdown, join, .. } = worker;
    shutdown.cancel();
    let (_, request) = next_completion(&mut seen).await;
    assert_eq!(
        failure(&request).map(|f| f.message.as_str()),
        Some("worker shutting down")
    );
    within("the worker to stop", join)
        .await
        .expect("the worker task panicked")
        .expect("a clean stop");
}

#[tokio::test]
async fn a_panicking_handler_fails_its_task() {
    let (node, mut seen) = FakeNode::start(FakeSettings::default()).await;
    let handler = |task: TaskContext| async move {
        if task.run_id == 101 {
            panic!("handler bug");
        }
        Ok("fine".to_string())
    };
    let mut worker = Running::start(config(&[&node.url]), handler);
    worker.registered().await;

    node.assign(task("t1", 101, ""));
    let (_, request) = next_completion(&mut seen).await;
    let failed = failure(&request).expect("a failure");
    assert_eq!(failed.kind, "panic");
    assert!(failed.message.contains("handler bug"), "{}", failed.message);
    assert_eq!(worker.completed(101).await, Ok(()));
    // The slot goes on polling.
    node.assign(task("t2", 102, ""));
    assert_eq!(worker.completed(102).await, Ok(()));
    worker.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_raw_client_can_replay_a_saved_token() {
    // The generated client is public for calls the worker does not make,
    // such as replaying a task token kept from an earlier attempt.
    let (node, _seen) = FakeNode::start(FakeSettings::default()).await;
    node.make_stale(b"old");
    let mut client = proto::worker_service_client::WorkerServiceClient::connect(node.url.clone())
        .await
        .expect("connect");
    let refused = client
        .heartbeat_task(proto::HeartbeatTaskRequest {
            task_token: b"old".to_vec(),
            details: Vec::new(),
        })
        .await
        .expect_err("a stale token is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

/// A CA and a certificate it signs for 127.0.0.1 (server and client use):
/// `(ca_pem, cert_pem, key_pem)`.
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &issuer).expect("signed leaf");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn speaks_tls_and_presents_its_client_certificate() {
    let (ca_pem, cert_pem, key_pem) = test_pki();
    let (node, mut seen) = FakeNode::start(FakeSettings {
        tls: Some(FakeTls {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            client_ca_pem: ca_pem.clone(),
        }),
        ..FakeSettings::default()
    })
    .await;
    assert!(node.url.starts_with("https://"));
    // Without a scheme, the endpoint gets https:// from the TLS settings.
    let address = node.url.trim_start_matches("https://").to_string();
    let mut worker = Running::start(
        WorkerConfig {
            tls: Some(TlsConfig {
                ca_pem: ca_pem.into_bytes(),
                client_cert_pem: Some(cert_pem.into_bytes()),
                client_key_pem: Some(key_pem.into_bytes()),
            }),
            ..config(&[&address])
        },
        echo,
    );
    let (_, endpoint) = worker.registered().await;
    assert_eq!(endpoint, node.url);
    node.assign(task("t1", 111, "secure"));
    let (_, request) = next_completion(&mut seen).await;
    assert_eq!(success(&request), Some("job-1 run 111 says secure"));
    assert_eq!(worker.completed(111).await, Ok(()));
    worker.stop().await.expect("a clean stop");
}
