//! Sinks on a real three-node cluster: the leader POSTs every lifecycle
//! event to a receiver in this test, in position order, at least once —
//! across a kill -9 of the leader (the new one resumes from the last
//! recorded position; the receiver drops repeats by position) and through
//! a receiver that refuses for a while. `kairos sink` creates, lists and
//! deletes them; `/metrics` shows their lag.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kairos::proto as pb;
use kairos::proto::event_service_client::EventServiceClient;
use kairos_testkit::{all_runs, create, http_get, TestCluster};
use serde_json::Value;
use tokio::time::Instant;
use tokio_stream::StreamExt;

const READY: Duration = Duration::from_secs(30);
/// How long the receiver may take to get what the test waits for.
const DELIVERY: Duration = Duration::from_secs(60);

/// One request the receiver accepted.
#[derive(Clone, Debug)]
struct Received {
    /// The `Kairos-Event-Position` header.
    position: u64,
    /// The body's `kind`, e.g. `LIFECYCLE_EVENT_KIND_JOB_CREATED`.
    kind: String,
    /// The body's `jobId` (empty for events about no job).
    job: String,
    /// The body's `runStatus`, for RUN_CHANGED.
    run_status: String,
}

/// A webhook that records what it accepts, and answers 503 while `refusing`.
#[derive(Default)]
struct Receiver {
    accepted: Mutex<Vec<Received>>,
    /// Positions of the requests answered 503, in order.
    refused: Mutex<Vec<u64>>,
    refusing: AtomicBool,
    /// Requests whose `Kairos-Sink` header or body did not fit.
    malformed: AtomicU32,
}

impl Receiver {
    fn accepted(&self) -> Vec<Received> {
        self.accepted.lock().unwrap().clone()
    }

    fn refused(&self) -> Vec<u64> {
        self.refused.lock().unwrap().clone()
    }

    /// What a receiver processes: each accepted event whose position is
    /// above the last one processed (repeats after a failover are dropped).
    fn processed(&self) -> Vec<Received> {
        let mut last = 0;
        let mut processed = Vec::new();
        for event in self.accepted() {
            if event.position > last {
                last = event.position;
                processed.push(event);
            }
        }
        processed
    }

    fn has(&self, kind: &str, job: &str) -> bool {
        self.accepted().iter().any(|e| e.kind == kind && e.job == job)
    }
}

async fn receive(
    State((receiver, sink)): State<(Arc<Receiver>, &'static str)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let position: u64 = header("kairos-event-position").parse().unwrap_or(0);
    if receiver.refusing.load(Ordering::SeqCst) {
        receiver.refused.lock().unwrap().push(position);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        receiver.malformed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    };
    let text = |field: &str| body[field].as_str().unwrap_or("").to_string();
    if header("kairos-sink") != sink
        || header("content-type") != "application/json"
        || text("position") != position.to_string()
    {
        receiver.malformed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    receiver.accepted.lock().unwrap().push(Received {
        position,
        kind: text("kind"),
        job: text("jobId"),
        run_status: text("runStatus"),
    });
    StatusCode::NO_CONTENT
}

/// A receiver for sink `sink` on a free loopback port: its URL.
async fn start_receiver(sink: &'static str) -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/events", axum::routing::post(receive))
        .with_state((receiver.clone(), sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kairos ARGS` against every node as root: (success, stdout, stderr).
async fn cli(cluster: &TestCluster, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::from(cluster.cli())
        .args(args)
        .output()
        .await
        .expect("run kairos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kairos ARGS`, which must succeed: its stdout.
async fn cli_ok(cluster: &TestCluster, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(cluster, args).await;
    assert!(ok, "kairos {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// A uint64 of protobuf JSON (a string) or 0.
fn json_u64(value: &Value) -> u64 {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `kairos sink list -o json`'s sink `name`, if listed.
async fn listed_sink(cluster: &TestCluster, name: &str) -> Option<Value> {
    let listed: Value =
        serde_json::from_str(&cli_ok(cluster, &["-o", "json", "sink", "list"]).await).unwrap();
    listed["sinks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
}

/// Polls `kairos sink list` until sink `name` has lag 0 and no error: its listing.
async fn wait_caught_up(cluster: &TestCluster, name: &str) -> Value {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let sink = listed_sink(cluster, name).await.expect("the sink is listed");
        if json_u64(&sink["lag"]) == 0 && sink["lastError"].as_str().unwrap_or("").is_empty() {
            return sink;
        }
        assert!(Instant::now() < deadline, "sink {name} not caught up: {sink}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retries `op` while the cluster is unavailable (an election), bounded.
async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + READY;
    loop {
        match op().await {
            Ok(reply) => return reply.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

async fn pause(cluster: &TestCluster, via: u64, id: &str) {
    let jobs = cluster.jobs(via).await;
    let request = pb::PauseJobRequest { id: id.into() };
    retry("pause", || {
        let (mut jobs, request) = (jobs.clone(), request.clone());
        async move { jobs.pause_job(request).await }
    })
    .await;
}

async fn resume(cluster: &TestCluster, via: u64, id: &str) {
    let jobs = cluster.jobs(via).await;
    let request = pb::ResumeJobRequest { id: id.into() };
    retry("resume", || {
        let (mut jobs, request) = (jobs.clone(), request.clone());
        async move { jobs.resume_job(request).await }
    })
    .await;
}

async fn delete(cluster: &TestCluster, via: u64, id: &str) {
    let jobs = cluster.jobs(via).await;
    let request = pb::DeleteJobRequest {
        id: id.into(),
        ..Default::default()
    };
    retry("delete", || {
        let (mut jobs, request) = (jobs.clone(), request.clone());
        async move { jobs.delete_job(request).await }
    })
    .await;
}

/// Triggers a run of `id` and waits until it succeeded.
async fn run_once(cluster: &TestCluster, via: u64, id: &str) {
    let mut runs = cluster.runs(via).await;
    let request = pb::TriggerJobRequest { id: id.into() };
    retry("trigger", || {
        let (mut runs, request) = (runs.clone(), request.clone());
        async move { runs.trigger_job(request).await }
    })
    .await;
    let deadline = Instant::now() + DELIVERY;
    loop {
        let all = all_runs(&mut runs, id).await;
        if all.iter().any(|r| r.status == pb::RunStatus::Succeeded as i32) {
            return;
        }
        assert!(Instant::now() < deadline, "no run of {id} succeeded: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every lifecycle event after `after` up to `until` as node `via` streams
/// them (`WatchEvents`): what a sink without filters must deliver.
async fn watched(cluster: &TestCluster, via: u64, after: u64, until: u64) -> Vec<pb::LifecycleEvent> {
    let mut events = EventServiceClient::new(cluster.channel(via));
    let mut stream = events
        .watch_events(pb::WatchEventsRequest {
            after,
            ..Default::default()
        })
        .await
        .expect("watch events")
        .into_inner();
    let mut seen = Vec::new();
    let deadline = Instant::now() + DELIVERY;
    while seen
        .last()
        .is_none_or(|e: &pb::LifecycleEvent| e.position < until)
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(event))) => seen.push(event),
            other => panic!("watching up to {until}: {other:?} after {seen:?}"),
        }
    }
    seen.retain(|e| e.position <= until);
    seen
}

/// The value of the series `series` (name and labels) in node `id`'s `/metrics`.
async fn metric(cluster: &TestCluster, id: u64, series: &str) -> Option<f64> {
    let (code, body) = http_get(&cluster.node(id).http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn kind(kind: pb::LifecycleEventKind) -> String {
    kind.as_str_name().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_in_order_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let (url, receiver) = start_receiver("audit-lake").await;

    let created: Value = serde_json::from_str(
        &cli_ok(
            &cluster,
            &["-o", "json", "sink", "create", "audit-lake", "--url", &url],
        )
        .await,
    )
    .unwrap();
    assert_eq!(created["url"], url.as_str());
    let start = json_u64(&created["deliveredPosition"]);
    assert!(start > 0, "a sink starts at the newest position: {created}");

    // Delivered by the first leader.
    assert!(create(&cluster, leader, "alpha").await);
    pause(&cluster, leader, "alpha").await;
    resume(&cluster, leader, "alpha").await;
    until("alpha resumed delivered", DELIVERY, || {
        receiver.has(&kind(pb::LifecycleEventKind::JobResumed), "alpha")
    })
    .await;

    // Refused, so still to deliver when the leader dies.
    receiver.refusing.store(true, Ordering::SeqCst);
    assert!(create(&cluster, leader, "beta").await);
    run_once(&cluster, leader, "beta").await;
    delete(&cluster, leader, "beta").await;
    until("a refusal", DELIVERY, || !receiver.refused().is_empty()).await;

    cluster.kill(leader);
    let refused_before_kill = receiver.refused();
    let new_leader = cluster.wait_leader(READY).await;
    assert_ne!(new_leader, leader);
    receiver.refusing.store(false, Ordering::SeqCst);

    // Changes under the new leader, through a follower.
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != new_leader)
        .unwrap();
    assert!(create(&cluster, follower, "gamma").await);
    run_once(&cluster, follower, "gamma").await;
    pause(&cluster, follower, "gamma").await;
    delete(&cluster, follower, "gamma").await;
    assert!(create(&cluster, follower, "zz-end").await);
    until("the last job's creation delivered", DELIVERY, || {
        receiver.has(&kind(pb::LifecycleEventKind::JobCreated), "zz-end")
    })
    .await;

    // Exactly what the lifecycle stream holds, in order, once repeats are dropped.
    let processed = receiver.processed();
    let end = processed.last().unwrap().position;
    let expected = watched(&cluster, follower, start, end).await;
    let got: Vec<u64> = processed.iter().map(|e| e.position).collect();
    let want: Vec<u64> = expected.iter().map(|e| e.position).collect();
    assert_eq!(got, want, "positions delivered vs. the lifecycle stream");
    for (event, want) in processed.iter().zip(&expected) {
        assert_eq!(event.kind, kind(want.kind()), "at {}", event.position);
        assert_eq!(event.job, want.job_id, "at {}", event.position);
    }
    // Every kind of change the test made is among them.
    let expect = [
        (pb::LifecycleEventKind::JobCreated, "alpha"),
        (pb::LifecycleEventKind::JobPaused, "alpha"),
        (pb::LifecycleEventKind::JobResumed, "alpha"),
        (pb::LifecycleEventKind::JobCreated, "beta"),
        (pb::LifecycleEventKind::JobDeleted, "beta"),
        (pb::LifecycleEventKind::JobCreated, "gamma"),
        (pb::LifecycleEventKind::JobPaused, "gamma"),
        (pb::LifecycleEventKind::JobDeleted, "gamma"),
    ];
    for (k, job) in expect {
        assert!(
            processed.iter().any(|e| e.kind == kind(k) && e.job == job),
            "{k:?} {job} missing"
        );
    }
    for job in ["beta", "gamma"] {
        assert!(
            processed.iter().any(|e| e.job == job
                && e.kind == kind(pb::LifecycleEventKind::RunChanged)
                && e.run_status == pb::RunStatus::Succeeded.as_str_name()),
            "{job}'s run succeeding is missing"
        );
    }
    // The first leader retried one event, never skipping it; the new one
    // resumed at or before it (it may be elected before the test stops the
    // refusals, and repeats what was not recorded yet), and it came through.
    let refused = receiver.refused();
    let (before_kill, after_kill) = refused.split_at(refused_before_kill.len());
    assert_eq!(before_kill, refused_before_kill);
    assert!(
        before_kill.iter().all(|p| *p == before_kill[0]),
        "one event retried: {before_kill:?}"
    );
    assert!(
        after_kill.iter().all(|p| *p <= before_kill[0]),
        "the new leader resumed after the refused event: {refused:?}"
    );
    assert!(got.contains(&before_kill[0]));
    assert_eq!(receiver.malformed.load(Ordering::SeqCst), 0);
    let accepted = receiver.accepted().len();
    eprintln!(
        "{} events delivered, {} repeats after the failover, {} refusals",
        got.len(),
        accepted - got.len(),
        refused.len()
    );

    // Caught up: lag 0 in the listing and in the leader's metrics.
    let sink = wait_caught_up(&cluster, "audit-lake").await;
    let delivered = json_u64(&sink["deliveredPosition"]);
    assert!(delivered >= end, "{sink}");
    let table = cli_ok(&cluster, &["sink", "list"]).await;
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "URL", "KINDS", "JOB", "DELIVERED", "LAG", "LAST", "ERROR"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["audit-lake", url.as_str(), "*", "-"], "{table}");
    assert_eq!(row[5..], ["0", "-"], "{table}");
    let new_leader = cluster.wait_leader(READY).await;
    let lag = metric(&cluster, new_leader, "kairos_sink_lag{sink=\"audit-lake\"}").await;
    let position = metric(
        &cluster,
        new_leader,
        "kairos_sink_delivered_position{sink=\"audit-lake\"}",
    )
    .await;
    assert_eq!(lag, Some(0.0));
    assert!(position.is_some_and(|p| p >= end as f64), "{position:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_gets_every_matching_event_once_it_accepts() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let (url, receiver) = start_receiver("ci").await;
    receiver.refusing.store(true, Ordering::SeqCst);

    // An unknown kind is refused before anything is sent.
    let (ok, _, stderr) = cli(
        &cluster,
        &[
            "sink",
            "create",
            "bad",
            "--url",
            &url,
            "--kinds",
            "job_created,run_started",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("unknown event kind \"run_started\"; known kinds: job_created, job_updated"),
        "{stderr}"
    );

    cli_ok(
        &cluster,
        &[
            "sink",
            "create",
            "ci",
            "--url",
            &url,
            "--kinds",
            "job_created,job_deleted",
            "--job",
            "ci-*",
        ],
    )
    .await;
    for id in ["ci-1", "other-1", "ci-2"] {
        assert!(create(&cluster, leader, id).await);
    }
    pause(&cluster, leader, "ci-1").await;
    delete(&cluster, leader, "ci-2").await;
    assert!(create(&cluster, leader, "ci-3").await);

    // Refused three times (200 + 400 ms of back-off at least): the same event each time.
    until("three refusals", DELIVERY, || receiver.refused().len() >= 3).await;
    let refused = receiver.refused();
    assert!(refused.iter().all(|p| *p == refused[0]), "{refused:?}");
    // The leader knows why, and `kairos sink list` asks it.
    let deadline = Instant::now() + DELIVERY;
    loop {
        let table = cli_ok(&cluster, &["sink", "list"]).await;
        if table.contains("HTTP 503 Service Unavailable") {
            break;
        }
        assert!(Instant::now() < deadline, "no error listed:\n{table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failures = metric(
        &cluster,
        leader,
        "kairos_sink_delivery_failures_total{sink=\"ci\"}",
    )
    .await;
    assert!(failures.is_some_and(|f| f >= 3.0), "{failures:?}");

    receiver.refusing.store(false, Ordering::SeqCst);
    until("four events", DELIVERY, || receiver.accepted().len() >= 4).await;
    let sink = wait_caught_up(&cluster, "ci").await;
    let got: Vec<(String, String)> = receiver.accepted().into_iter().map(|e| (e.kind, e.job)).collect();
    let created = kind(pb::LifecycleEventKind::JobCreated);
    let deleted = kind(pb::LifecycleEventKind::JobDeleted);
    assert_eq!(
        got,
        [
            (created.clone(), "ci-1".to_string()),
            (created.clone(), "ci-2".to_string()),
            (deleted, "ci-2".to_string()),
            (created, "ci-3".to_string()),
        ],
        "only matching events, in order, once (one leader throughout)"
    );
    let positions: Vec<u64> = receiver.accepted().iter().map(|e| e.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(positions[0], refused[0], "the refused event was delivered first");
    assert!(json_u64(&sink["deliveredPosition"]) >= positions[3], "{sink}");
    assert_eq!(
        sink["kinds"],
        serde_json::json!([
            "LIFECYCLE_EVENT_KIND_JOB_CREATED",
            "LIFECYCLE_EVENT_KIND_JOB_DELETED"
        ])
    );
    assert_eq!(sink["job"], "ci-*");

    // Deleted: no longer listed (nor in the metrics).
    assert_eq!(
        cli_ok(&cluster, &["sink", "delete", "ci"]).await.trim(),
        "sink ci deleted"
    );
    assert!(listed_sink(&cluster, "ci").await.is_none());
    assert_eq!(
        metric(&cluster, leader, "kairos_sink_lag{sink=\"ci\"}").await,
        None
    );
}
