//! External workers against a real three-node cluster: an in-process Rust SDK
//! worker and `examples/python-worker/worker.py` processes.
//!
//! - An every-second job of an external type runs once per nominal second
//!   across a kill -9 of the leader.
//! - A worker killed mid-task: the retry runs on the other worker, and the
//!   killed worker's token is then refused (`FAILED_PRECONDITION`); a forged
//!   token is refused `INVALID_ARGUMENT`.
//! - A cancel reaches a long task through its heartbeats; the run ends
//!   cancelled.
//! - Registered JSON Schemas check job payloads; job types and workers are
//!   listed (API and `kairos type list|get`, `kairos worker list`).
//! - A worker whose node dies heartbeats and completes through another node.
//! - `worker:connect` limited to type globs; only a worker's principal polls it.
//!
//! The Python worker needs `pip install -r examples/python-worker/requirements.txt`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos::api::convert::ms_duration;
use kairos::proto as pb;
use kairos::proto::run_service_client::RunServiceClient;
use kairos::proto::worker_service_client::WorkerServiceClient;
use kairos_testkit::{
    all_runs, complete_token, python_worker_schema, Authed, Bearer, PythonWorker, TestCluster,
};
use kairos_worker::{
    CancellationToken, JobTypeSpec, TaskContext, TaskError, Worker, WorkerConfig, WorkerEvent,
};
use serde_json::Value;
use tokio::time::Instant;

const READY: Duration = Duration::from_secs(30);
/// How long a worker may take to start and register.
const REGISTER: Duration = Duration::from_secs(20);

/// A job of external type `job_type` that fires only when triggered.
fn external_job(
    id: &str,
    job_type: &str,
    payload: &str,
    heartbeat_ms: u64,
    max_attempts: u32,
) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.into(),
        r#type: job_type.into(),
        owner_service: "tests".into(),
        schedule: "@yearly".into(),
        payload: payload.as_bytes().to_vec(),
        policies: Some(pb::Policies {
            timeouts: Some(pb::Timeouts {
                heartbeat_timeout: Some(ms_duration(heartbeat_ms)),
                ..Default::default()
            }),
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(max_attempts),
                initial_interval: Some(ms_duration(100)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `job` through node `via`, riding out an election.
async fn create_job(cluster: &TestCluster, via: u64, job: pb::ScheduledJob) {
    let mut jobs = cluster.jobs(via).await;
    let deadline = Instant::now() + READY;
    loop {
        match jobs
            .create_job(pb::CreateJobRequest {
                request_id: format!("req-{}", job.id),
                job: Some(job.clone()),
            })
            .await
        {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("create {}: {s:?}", job.id),
        }
    }
}

/// Triggers job `id` and returns the run's id.
async fn trigger(runs: &mut RunServiceClient<Authed>, id: &str) -> u64 {
    runs.trigger_job(pb::TriggerJobRequest { id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("trigger {id}: {s:?}"))
        .into_inner()
        .id
}

/// Polls run `id` until `done` accepts it; panics with the last seen run
/// after `timeout`.
async fn wait_run(
    runs: &mut RunServiceClient<Authed>,
    id: u64,
    timeout: Duration,
    what: &str,
    done: impl Fn(&pb::Run) -> bool,
) -> pb::Run {
    let deadline = Instant::now() + timeout;
    loop {
        let run = runs
            .get_run(pb::GetRunRequest { id, consistency: 0 })
            .await
            .map(|r| r.into_inner());
        match run {
            Ok(run) if done(&run) => return run,
            Ok(run) => assert!(
                Instant::now() < deadline,
                "run {id}: not {what} within {timeout:?}: {run:?}"
            ),
            Err(s) => assert!(
                Instant::now() < deadline,
                "run {id}: not {what} within {timeout:?}: {s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished(run: &pb::Run) -> bool {
    run.finished_at.is_some()
}

fn status_name(status: i32) -> &'static str {
    pb::RunStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("?")
}

/// Runs `kairos ARGS` against every node as root; its stdout (it must succeed).
fn cli(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.cli().args(args).output().expect("run kairos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kairos {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A worker-service client of node `id` carrying `secret`.
fn workers_as(cluster: &TestCluster, id: u64, secret: &str) -> WorkerServiceClient<Authed> {
    WorkerServiceClient::new(cluster.channel_as(id, Bearer::new(secret)))
}

/// Bytes of the hex string `hex`.
fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn run_id_is(run: u64) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["run_id"] == run
}

fn seconds(t: &Option<pb::Timestamp>) -> i64 {
    t.as_ref().expect("a nominal time").seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_external_job_runs_once_per_second_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;

    // An in-process SDK worker that knows every node, the leader first: it
    // registers there, so the kill also takes its node and it must register
    // again elsewhere.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut order = vec![leader];
    order.extend((1..=3).filter(|id| *id != leader));
    let config = WorkerConfig {
        endpoints: order
            .iter()
            .map(|id| format!("http://{}", cluster.node(*id).grpc))
            .collect(),
        token: Some(cluster.token().to_string()),
        worker_name: "sdk-ticker".into(),
        job_types: vec![JobTypeSpec::new("tick.ext")],
        capacity: 8,
        call_timeout: Duration::from_secs(3),
        ..WorkerConfig::default()
    };
    let handled: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let log = handled.clone();
    let handler = Arc::new(move |task: TaskContext| {
        log.lock().unwrap().push((task.run_id, task.attempt));
        async move { Ok::<_, TaskError>(format!("tick {}", task.run_id)) }
    });
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(config)
            .with_events(events_tx)
            .serve(handler, shutdown.clone()),
    );
    let registered = tokio::time::timeout(REGISTER, async {
        loop {
            if let Some(WorkerEvent::Registered { node_id, .. }) = events_rx.recv().await {
                return node_id;
            }
        }
    })
    .await
    .expect("the SDK worker registers");
    assert_eq!(
        registered, leader,
        "the SDK worker registers with its first endpoint"
    );
    // Keep the later registrations (the one after the kill).
    let registrations: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = registrations.clone();
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if let WorkerEvent::Registered { node_id, .. } = event {
                seen.lock().unwrap().push(node_id);
            }
        }
    });

    let job = pb::ScheduledJob {
        id: "ticker".into(),
        r#type: "tick.ext".into(),
        owner_service: "tests".into(),
        schedule_spec: Some(pb::ScheduleSpec {
            kind: Some(pb::schedule_spec::Kind::Every(pb::IntervalSchedule {
                interval: Some(ms_duration(1_000)),
                phase: None,
            })),
        }),
        payload: b"{}".to_vec(),
        policies: Some(pb::Policies {
            overlap: pb::OverlapPolicy::AllowAll as i32,
            catchup: pb::CatchupPolicy::All as i32,
            timeouts: Some(pb::Timeouts {
                heartbeat_timeout: Some(ms_duration(3_000)),
                attempt_timeout: Some(ms_duration(5_000)),
                ..Default::default()
            }),
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(5),
                initial_interval: Some(ms_duration(200)),
                ..Default::default()
            }),
            history: Some(pb::HistoryLimits {
                keep_succeeded: 1_000,
                keep_failed: 1_000,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    create_job(&cluster, leader, job).await;

    // Some succeeded runs, then kill -9 the leader.
    let succeeded = |runs: &[pb::Run]| {
        runs.iter()
            .filter(|r| r.status == pb::RunStatus::Succeeded as i32)
            .count()
    };
    let mut runs = cluster.runs(leader).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while succeeded(&all_runs(&mut runs, "ticker").await) < 4 {
        assert!(Instant::now() < deadline, "4 runs succeed before the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = chrono::Utc::now().timestamp();
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(READY).await;
    eprintln!("leader {leader} killed; new leader {new_leader}");

    // Runs go on after the kill: 5 succeeded nominal seconds after it.
    let mut runs = cluster.runs(new_leader).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = all_runs(&mut runs, "ticker")
            .await
            .iter()
            .filter(|r| r.status == pb::RunStatus::Succeeded as i32 && seconds(&r.nominal_time) > killed_at)
            .count();
        if after >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "5 runs succeed after the kill ({after} did)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop the schedule, then wait for every run to settle.
    let mut jobs = cluster.jobs(new_leader).await;
    jobs.pause_job(pb::PauseJobRequest { id: "ticker".into() })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = all_runs(&mut runs, "ticker").await;
        if listed.iter().all(finished) {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "runs not settled: {:?}",
            listed.iter().filter(|r| !finished(r)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let mut nominal = BTreeSet::new();
    for run in &listed {
        assert!(
            nominal.insert(seconds(&run.nominal_time)),
            "two runs for nominal second {}: {listed:?}",
            seconds(&run.nominal_time)
        );
        assert_eq!(
            run.status,
            pb::RunStatus::Succeeded as i32,
            "every run succeeded: {} is {}: {run:?}",
            run.id,
            status_name(run.status)
        );
        assert!(!run.worker_id.is_empty(), "run {} names its worker", run.id);
    }
    let (first, last) = (*nominal.first().unwrap(), *nominal.last().unwrap());
    let span = (first..=last).collect::<BTreeSet<i64>>();
    assert_eq!(
        nominal,
        span,
        "every nominal second from {first} to {last} has a run; missing {:?}",
        span.difference(&nominal).collect::<Vec<_>>()
    );
    let counters = runs
        .describe_job(pb::DescribeJobRequest {
            id: "ticker".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .counters
        .unwrap();
    assert_eq!(counters.runs_created, listed.len() as u64, "{counters:?}");
    assert_eq!(counters.succeeded, listed.len() as u64, "{counters:?}");
    assert_eq!(
        (
            counters.failed,
            counters.timed_out,
            counters.cancelled,
            counters.missed
        ),
        (0, 0, 0, 0),
        "{counters:?}"
    );
    let handled = handled.lock().unwrap().clone();
    let retried = listed.iter().filter(|r| r.attempt > 1).count();
    let registrations = registrations.lock().unwrap().clone();
    eprintln!(
        "{} runs over {} nominal seconds ({first}..={last}), {} handler calls, {retried} runs retried; \
         the worker registered again with {registrations:?}",
        listed.len(),
        span.len(),
        handled.len()
    );
    assert!(
        !registrations.is_empty() && !registrations.contains(&leader),
        "the worker registered again with a surviving node: {registrations:?}"
    );
    for run in &listed {
        assert!(
            handled.contains(&(run.id, run.attempt)),
            "the worker ran attempt {} of run {}",
            run.attempt,
            run.id
        );
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .expect("the SDK worker stops")
        .unwrap()
        .expect("the SDK worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_attempt_is_retried_on_the_other_and_its_late_token_refused() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let root = cluster.token().to_string();
    let args = ["--type", "flaky.echo", "--capacity", "2"];
    let mut a = PythonWorker::spawn(&cluster, &[1, 2, 3], &root, &args);
    let mut b = PythonWorker::spawn(&cluster, &[2, 3, 1], &root, &args);
    let a_id = a.registered(REGISTER).await["worker_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_id = b.registered(REGISTER).await["worker_id"]
        .as_str()
        .unwrap()
        .to_string();

    create_job(
        &cluster,
        leader,
        external_job("flaky", "flaky.echo", r#"{"sleep_ms": 4000}"#, 2_000, 3),
    )
    .await;
    let mut runs = cluster.runs(leader).await;
    let run = trigger(&mut runs, "flaky").await;

    // The run names the worker that got attempt 1: kill that one.
    let assigned = wait_run(&mut runs, run, READY, "assigned", |r| !r.worker_id.is_empty()).await;
    let (mut first, mut other, other_id) = match assigned.worker_id.as_str() {
        id if id == a_id => (a, b, b_id),
        id if id == b_id => (b, a, a_id),
        id => panic!("run assigned to {id}, neither {a_id} nor {b_id}"),
    };
    let task = first
        .wait_event("task", |v| v["run_id"] == run && v["attempt"] == 1, READY)
        .await;
    let token = task["token"].as_str().expect("the task's token").to_string();
    first.kill();
    eprintln!("worker {} killed during attempt 1", assigned.worker_id);

    // Attempt 2 on the other worker; the run succeeds there.
    other
        .wait_event("task", |v| v["run_id"] == run && v["attempt"] == 2, READY)
        .await;
    let done = wait_run(&mut runs, run, READY, "finished", finished).await;
    assert_eq!(done.status, pb::RunStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 2, "{done:?}");
    assert_eq!(
        done.worker_id, other_id,
        "attempt 2 ran on the other worker: {done:?}"
    );
    other
        .wait_event("completed", |v| v["run_id"] == run && v["result"] == "ok", READY)
        .await;

    // The killed worker's token answers an attempt that is no longer current.
    let replay = complete_token(&cluster, &[1, 2, 3], &root, &token).await;
    assert_eq!(replay["result"], "FAILED_PRECONDITION", "{replay}");
    let after = wait_run(&mut runs, run, READY, "read", |_| true).await;
    assert_eq!(
        (after.status, after.attempt, after.output_tail.clone()),
        (done.status, done.attempt, done.output_tail.clone()),
        "a refused late result changes nothing"
    );

    // A forged token (one byte of the claim flipped) was never issued.
    let mut forged = unhex(&token);
    let middle = forged.len() / 2;
    forged[middle] ^= 0x01;
    let refused = workers_as(&cluster, leader, &root)
        .complete_task(pb::CompleteTaskRequest {
            task_token: forged,
            result: Some(pb::complete_task_request::Result::Success(pb::TaskSuccess {
                output: "forged".into(),
            })),
        })
        .await
        .expect_err("a forged token is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_long_task_and_the_run_ends_cancelled() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut worker = PythonWorker::spawn(&cluster, &[1, 2, 3], cluster.token(), &["--type", "slow.echo"]);
    worker.registered(REGISTER).await;
    create_job(
        &cluster,
        leader,
        external_job("slow", "slow.echo", r#"{"sleep_ms": 60000}"#, 3_000, 3),
    )
    .await;
    let mut runs = cluster.runs(leader).await;
    let run = trigger(&mut runs, "slow").await;
    worker.wait_event("task", run_id_is(run), READY).await;

    let started = Instant::now();
    let cancelled = runs
        .cancel_run(pb::CancelRunRequest { id: run })
        .await
        .expect("cancel the run")
        .into_inner();
    eprintln!("CancelRun answered {}", status_name(cancelled.status));
    worker.wait_event("cancel", run_id_is(run), READY).await;
    worker.wait_event("completed", run_id_is(run), READY).await;
    let done = wait_run(&mut runs, run, READY, "finished", finished).await;
    assert_eq!(
        done.status,
        pb::RunStatus::Cancelled as i32,
        "{} {done:?}",
        status_name(done.status)
    );
    assert_eq!(done.attempt, 1, "a cancelled run is not retried: {done:?}");
    eprintln!("the run ended cancelled {:?} after CancelRun", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the cancel reached the task long before its 60 s sleep ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_schemas_check_payloads_and_types_and_workers_are_listed() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let schema_path = python_worker_schema();
    let schema = std::fs::read_to_string(&schema_path).unwrap();
    let mut worker = PythonWorker::spawn(
        &cluster,
        &[2, 3, 1],
        cluster.token(),
        &[
            "--type",
            "schema.echo",
            "--schema",
            schema_path.to_str().unwrap(),
            "--description",
            "echoes",
            "--capacity",
            "3",
            "--name",
            "schema-worker",
        ],
    );
    let registered = worker.registered(REGISTER).await;
    let worker_id = registered["worker_id"].as_str().unwrap().to_string();
    let worker_node = registered["node_id"].as_u64().unwrap();

    let mut jobs = cluster.jobs(leader).await;
    let create = |id: &str, job_type: &str, payload: &str| pb::CreateJobRequest {
        job: Some(external_job(id, job_type, payload, 3_000, 3)),
        request_id: String::new(),
    };
    let refused = jobs
        .create_job(create("bad-type", "schema.echo", r#"{"output": 5}"#))
        .await
        .expect_err("an output that is not a string is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("/output"), "{}", refused.message());
    let refused = jobs
        .create_job(create("bad-field", "schema.echo", r#"{"bogus": 1}"#))
        .await
        .expect_err("a field the schema does not allow is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("payload"), "{}", refused.message());
    let created = jobs
        .create_job(create(
            "good",
            "schema.echo",
            r#"{"output": "hi", "sleep_ms": 10}"#,
        ))
        .await
        .expect("a payload the schema accepts")
        .into_inner();

    let mut bad_update = created.clone();
    bad_update.payload = br#"{"sleep_ms": -1}"#.to_vec();
    let refused = jobs
        .update_job(pb::UpdateJobRequest {
            job: Some(bad_update),
            update_mask: None,
        })
        .await
        .expect_err("an update to a bad payload is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("/sleep_ms"), "{}", refused.message());

    let refused = jobs
        .create_job(create("nobody", "nobody.serves", "{}"))
        .await
        .expect_err("a job of an unknown type is refused");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition
        ),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("nobody.serves"),
        "{}",
        refused.message()
    );

    // The type and the worker as every node shows them, once the node
    // reaches the worker's node over the worker network (a node lists only
    // the workers of the nodes it reaches, and a fresh cluster's mesh may
    // still be forming).
    for id in 1..=3 {
        let mut workers = workers_as(&cluster, id, cluster.token());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let listed = workers
                .list_workers(pb::ListWorkersRequest {})
                .await
                .unwrap()
                .into_inner();
            if listed.unreachable_nodes.is_empty() && listed.workers.iter().any(|w| w.worker_id == worker_id)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} does not list worker {worker_id}: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let types = workers
            .list_job_types(pb::ListJobTypesRequest {})
            .await
            .unwrap()
            .into_inner()
            .job_types;
        let listed = types
            .iter()
            .find(|t| t.name == "schema.echo")
            .unwrap_or_else(|| panic!("node {id} lists schema.echo: {types:?}"));
        assert!(!listed.builtin, "{listed:?}");
        assert_eq!(listed.payload_schema, schema, "node {id}");
        assert_eq!(listed.description, "echoes");
        assert_eq!(listed.workers, vec![worker_id.clone()], "node {id}: {listed:?}");
        assert!(
            types.iter().any(|t| t.name == "noop" && t.builtin),
            "built-in types are listed too: {types:?}"
        );
        let got = workers
            .get_job_type(pb::GetJobTypeRequest {
                name: "schema.echo".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got, listed, "node {id}");

        let listed = workers
            .list_workers(pb::ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(listed.unreachable_nodes.is_empty(), "{listed:?}");
        let w = listed
            .workers
            .iter()
            .find(|w| w.worker_id == worker_id)
            .unwrap_or_else(|| panic!("node {id} lists worker {worker_id}: {listed:?}"));
        assert_eq!(w.node_id, worker_node, "{w:?}");
        assert_eq!(w.capacity, 3, "{w:?}");
        assert_eq!(w.worker_name, "schema-worker", "{w:?}");
        assert_eq!(w.job_types, vec!["schema.echo".to_string()], "{w:?}");
        assert_eq!(w.principal, "root", "{w:?}");
    }
    // The same through the CLI.
    let listed = cli(&cluster, &["type", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("schema.echo") && l.contains("external") && l.contains("echoes")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.contains("noop") && l.contains("builtin")),
        "{listed}"
    );
    let got = cli(&cluster, &["type", "get", "schema.echo"]);
    for expected in [
        "external",
        worker_id.as_str(),
        "payload schema:",
        "\"sleep_ms\"",
        "root",
    ] {
        assert!(got.contains(expected), "`type get` shows {expected:?}:\n{got}");
    }
    let listed = cli(&cluster, &["worker", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&worker_id) && l.contains("schema-worker") && l.contains("schema.echo")),
        "{listed}"
    );
    let unknown = workers_as(&cluster, 1, cluster.token())
        .get_job_type(pb::GetJobTypeRequest {
            name: "nobody.serves".into(),
        })
        .await
        .expect_err("no such type");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_node_dies_completes_its_task_through_another_node() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let node = (1..=3).find(|id| *id != leader).unwrap();
    let mut order = vec![node];
    order.extend((1..=3).filter(|id| *id != node));
    let mut worker = PythonWorker::spawn(&cluster, &order, cluster.token(), &["--type", "steady.echo"]);
    let registered = worker.registered(REGISTER).await;
    assert_eq!(
        registered["node_id"], node,
        "the worker registers with its first endpoint"
    );
    let worker_id = registered["worker_id"].as_str().unwrap().to_string();

    create_job(
        &cluster,
        leader,
        external_job("steady", "steady.echo", r#"{"sleep_ms": 3000}"#, 3_000, 3),
    )
    .await;
    let mut runs = cluster.runs(leader).await;
    let run = trigger(&mut runs, "steady").await;
    worker
        .wait_event("task", |v| v["run_id"] == run && v["attempt"] == 1, READY)
        .await;
    cluster.kill(node);
    eprintln!("node {node} (holding worker {worker_id}) killed during attempt 1; leader {leader}");

    let done = wait_run(&mut runs, run, READY, "finished", finished).await;
    assert_eq!(
        done.status,
        pb::RunStatus::Succeeded as i32,
        "{} {done:?}",
        status_name(done.status)
    );
    assert_eq!(
        done.attempt, 1,
        "attempt 1 finished through another node: {done:?}"
    );
    assert_eq!(done.worker_id, worker_id, "{done:?}");
    worker
        .wait_event(
            "completed",
            |v| v["run_id"] == run && v["attempt"] == 1 && v["result"] == "ok",
            READY,
        )
        .await;
}

/// Creates a role (as root) and a token of it named `principal`; returns its secret.
async fn token_of(
    cluster: &TestCluster,
    principal: &str,
    role: &str,
    permissions: &[&str],
    types: &[&str],
) -> String {
    let mut acl = cluster.acl(1);
    let exists = acl
        .get_role(pb::GetRoleRequest { name: role.into() })
        .await
        .is_ok();
    if !exists {
        acl.create_role(pb::CreateRoleRequest {
            role: Some(pb::Role {
                name: role.into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
                types: types.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    acl.create_token(pb::CreateTokenRequest {
        name: principal.into(),
        roles: vec![role.into()],
        ttl: None,
    })
    .await
    .unwrap()
    .into_inner()
    .secret
}

fn register(job_type: &str) -> pb::RegisterWorkerRequest {
    pb::RegisterWorkerRequest {
        worker_name: format!("auth-{job_type}"),
        job_types: vec![pb::JobTypeSpec {
            name: job_type.into(),
            ..Default::default()
        }],
        capacity: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_connect_is_limited_by_type_globs_and_workers_by_principal() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let billing = token_of(
        &cluster,
        "billing-bot",
        "billing-worker",
        &["worker:connect"],
        &["billing.*"],
    )
    .await;
    let billing2 = token_of(&cluster, "billing-bot-2", "billing-worker", &[], &[]).await;
    let reader = token_of(&cluster, "reader-bot", "reader", &["job:read"], &[]).await;

    let mut as_billing = workers_as(&cluster, 2, &billing);
    let registered = as_billing
        .register_worker(register("billing.charge"))
        .await
        .expect("billing.* covers billing.charge")
        .into_inner();
    assert_eq!(registered.node_id, 2);
    let denied = as_billing
        .register_worker(register("other.x"))
        .await
        .expect_err("billing.* does not cover other.x");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let denied = workers_as(&cluster, 2, &reader)
        .register_worker(register("billing.charge"))
        .await
        .expect_err("a token without worker:connect is refused");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let denied = workers_as(&cluster, 2, "not-a-token")
        .register_worker(register("billing.charge"))
        .await
        .expect_err("an unknown secret is refused");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");

    // Only the principal that registered a worker polls it.
    let poll = || pb::PollTaskRequest {
        worker_id: registered.worker_id.clone(),
        job_types: Vec::new(),
        wait: Some(ms_duration(100)),
    };
    let polled = as_billing
        .poll_task(poll())
        .await
        .expect("the owner polls its worker")
        .into_inner();
    assert!(polled.task.is_none(), "{polled:?}");
    for (who, secret) in [
        ("billing-bot-2", &billing2),
        ("root", &cluster.token().to_string()),
    ] {
        let denied = workers_as(&cluster, 2, secret)
            .poll_task(poll())
            .await
            .expect_err("another principal may not poll the worker");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{who}: {denied:?}");
    }
}
