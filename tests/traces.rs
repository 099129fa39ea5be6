//! OpenTelemetry traces, black-box: real nodes exporting over OTLP/gRPC to
//! a receiver this test runs (the collector's `TraceService`, built from
//! `opentelemetry-proto`), and an `http` job whose receiver records the
//! `traceparent` it is sent.
//!
//! - A job triggered through a follower, by a caller that sends its own
//!   `traceparent`, makes one trace: the API call on the follower (a child
//!   of the caller's span), the forwarded write on the leader, the leader's
//!   dispatch and the attempt and `http` request on the worker node, every
//!   parent link resolving inside the trace, spans from at least two
//!   `service.instance.id`s; the webhook receives a `traceparent` naming the
//!   `http` span; the JSON log lines written in those spans carry the trace
//!   id. A REST call continues its caller's trace as well.
//! - With the collector a black hole (it accepts connections and never
//!   answers), writes go on being acknowledged and the nodes count the spans
//!   they drop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos::proto as pb;
use kairos_testkit::{http_get, TestCluster};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

/// One span as the receiver got it, ids in hex.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    instance: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
}

/// An OTLP trace receiver keeping every span.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attribute = |key: &str| {
                resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                    .map(|v| match v {
                        any_value::Value::StringValue(s) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default()
            };
            let (instance, service) = (attribute("service.instance.id"), attribute("service.name"));
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push(ReceivedSpan {
                        instance: instance.clone(),
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the receiver on a free loopback port: its endpoint URL.
async fn start_receiver(receiver: Receiver) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (url, task)
}

/// A webhook recording the `traceparent` header of every request.
async fn start_webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let recorded = recorded.clone();
        async move {
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            recorded.lock().unwrap().push(traceparent);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `within` naming `what`.
async fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_triggered_through_a_follower_is_one_trace_across_the_nodes_down_to_the_webhook() {
    let receiver = Receiver::default();
    let (endpoint, receiver_task) = start_receiver(receiver.clone()).await;
    let (hook, traceparents) = start_webhook().await;
    let otlp = format!("--otlp-endpoint={endpoint}");
    let cluster = TestCluster::start_with_env(
        3,
        &[otlp.as_str(), "--log-format=json"],
        &[
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info,openraft=warn,kairos::handlers=debug"),
        ],
    );
    cluster.bootstrap().await;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    let job = pb::ScheduledJob {
        id: "traced".into(),
        r#type: "http".into(),
        owner_service: "tests".into(),
        // Yearly: only the trigger below runs it.
        schedule: "0 0 1 1 *".into(),
        payload: format!(r#"{{"url": "{hook}", "method": "POST"}}"#).into_bytes(),
        ..Default::default()
    };
    cluster
        .jobs(follower)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(job),
            request_id: "create-traced".into(),
        })
        .await
        .expect("create the job");

    // The caller's own span: the trace must continue it.
    let trace_id = format!("{:032x}", rand_u128());
    let caller_span = "00f067aa0ba902b7";
    let mut trigger = tonic::Request::new(pb::TriggerJobRequest { id: "traced".into() });
    trigger.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let run = cluster
        .runs(follower)
        .await
        .trigger_job(trigger)
        .await
        .expect("trigger through a follower")
        .into_inner();
    assert_eq!(run.job_id, "traced");

    // The webhook is called with the same trace id.
    let sent = eventually(Duration::from_secs(30), "the webhook call", || {
        traceparents.lock().unwrap().first().cloned()
    })
    .await;
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {sent:?}");
    assert_eq!(
        parts[1], trace_id,
        "the webhook's traceparent {sent:?} is not the caller's trace"
    );
    let http_span = parts[2].to_string();

    // Every span of the path arrives, in one trace, with its parents.
    let wanted = [
        "kairos.v1.RunService/TriggerJob",
        "kairos.forward",
        "kairos.forwarded",
        "raft.propose",
        "raft.commit",
        "raft.apply",
        "kairos.dispatch",
        "kairos.attempt",
        "kairos.http",
    ];
    let spans = eventually(Duration::from_secs(30), "every span of the trace", || {
        let spans: Vec<ReceivedSpan> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let complete = wanted.iter().all(|w| names.contains(w));
        complete.then_some(spans)
    })
    .await;
    let by_id: BTreeMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();

    let api = named("kairos.v1.RunService/TriggerJob");
    assert_eq!(
        api.parent_span_id, caller_span,
        "the API span continues the caller's span"
    );
    assert_eq!(
        api.instance,
        follower.to_string(),
        "the API span is the follower's"
    );
    assert_eq!(named("kairos.forward").instance, follower.to_string());
    assert_eq!(named("kairos.forwarded").instance, leader.to_string());
    assert_eq!(named("kairos.dispatch").instance, leader.to_string());
    assert_eq!(
        named("kairos.http").span_id,
        http_span,
        "the webhook names the http span"
    );
    for span in &spans {
        assert_eq!(span.service, "kairos");
        if span.span_id != api.span_id {
            assert!(
                by_id.contains_key(span.parent_span_id.as_str()),
                "{}'s parent {} is not in the trace: {spans:#?}",
                span.name,
                span.parent_span_id
            );
        }
    }
    // Parent links follow the path.
    let parent_of = |name: &str| by_id[named(name).parent_span_id.as_str()].name.as_str();
    assert_eq!(parent_of("kairos.forward"), "kairos.v1.RunService/TriggerJob");
    assert_eq!(parent_of("kairos.forwarded"), "kairos.forward");
    assert_eq!(parent_of("kairos.attempt"), "kairos.dispatch");
    assert_eq!(parent_of("kairos.http"), "kairos.attempt");
    assert_eq!(parent_of("raft.apply"), "raft.commit");
    let instances: BTreeSet<&str> = spans.iter().map(|s| s.instance.as_str()).collect();
    assert!(instances.len() >= 2, "spans from {instances:?}");

    // A REST call continues its caller's trace too.
    let rest_trace = format!("{:032x}", rand_u128() ^ 0xabcdef);
    let request = format!(
        "GET /v1/jobs/traced HTTP/1.1\r\nHost: kairos\r\nAuthorization: Bearer {}\r\n\
         traceparent: 00-{rest_trace}-{caller_span}-01\r\nConnection: close\r\n\r\n",
        cluster.token()
    );
    let status_line = raw_http(&cluster.node(follower).http, &request).await;
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let rest_span = eventually(Duration::from_secs(30), "the REST call's span", || {
        receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.trace_id == rest_trace && s.name == "GET /v1/jobs/{id}")
            .cloned()
    })
    .await;
    assert_eq!(rest_span.parent_span_id, caller_span);
    assert_eq!(rest_span.instance, follower.to_string());

    // The worker node's JSON log lines written in the trace carry its id.
    let needle = format!("\"trace_id\":\"{trace_id}\"");
    let logged = (1..=3).any(|id| {
        cluster
            .log(id)
            .lines()
            .any(|line| line.contains(&needle) && line.contains("\"span_id\":\""))
    });
    assert!(logged, "no JSON log line carries trace id {trace_id}");
    receiver_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_a_black_hole_writes_go_on_and_spans_are_dropped_and_counted() {
    // Accepts connections, never answers: every export waits out its timeout.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            open.push(socket);
        }
    });
    let otlp = format!("--otlp-endpoint={endpoint}");
    let cluster = TestCluster::start_with_env(
        3,
        &[otlp.as_str()],
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    cluster.bootstrap().await;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    // 400 creates through a follower, 8 at a time, each bounded by the
    // client's deadline: every one is acknowledged.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut client = cluster.jobs(follower).await;
        tasks.spawn(async move {
            for i in 0..50 {
                let id = format!("bh-{worker}-{i}");
                let mut request = tonic::Request::new(pb::CreateJobRequest {
                    job: Some(kairos_testkit::job(&id)),
                    request_id: format!("req-{id}"),
                });
                request.set_timeout(Duration::from_secs(10));
                client
                    .create_job(request)
                    .await
                    .expect("a create while the collector is away");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let listed = cluster.list_ids(leader, pb::ReadConsistency::Linearizable).await;
    assert_eq!(listed.iter().filter(|id| id.starts_with("bh-")).count(), 400);

    // The follower made far more spans than its queue holds: it dropped some and says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dropped = loop {
        let text = http_get(&cluster.node(follower).http, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let dropped: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kairos_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 || Instant::now() > deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dropped > 0.0);
    held.abort();
}

/// Sends `request` as is to `addr` and returns the answer's status line.
async fn raw_http(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A random 128-bit trace id (never zero).
fn rand_u128() -> u128 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos ^ (u128::from(std::process::id()) << 64)) | 1
}
