//! Run creation on a real three-node cluster: every nominal second of a job
//! gets exactly one run across a kill -9 of the leader, and the seconds missed
//! while there was no leader follow the job's catch-up policy. Also the run
//! API (trigger, backfill, describe, list, cancel).
//!
//! The jobs use `allow_all` overlap, a long start deadline and a long history
//! so that every run stays visible whatever state execution leaves it in.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos::api::convert::{ms_duration, timestamp_ms};
use kairos::proto as pb;
use kairos::proto::run_service_client::RunServiceClient;
use kairos_testkit::{all_runs, Authed, TestCluster};

const READY: Duration = Duration::from_secs(30);

fn every_second_job(id: &str, catchup: pb::CatchupPolicy) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.into(),
        r#type: "noop".into(),
        schedule: "* * * * * *".into(),
        policies: Some(pb::Policies {
            overlap: pb::OverlapPolicy::AllowAll as i32,
            catchup: catchup as i32,
            // A run whose attempt was on a killed node is retried once its
            // lease expires: 3 s here, not the default 30 s, so that the
            // tests' waits for every run to finish cover it.
            timeouts: Some(pb::Timeouts {
                start_deadline: Some(ms_duration(600_000)),
                heartbeat_timeout: Some(ms_duration(3_000)),
                ..Default::default()
            }),
            history: Some(pb::HistoryLimits {
                keep_succeeded: 1000,
                keep_failed: 1000,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nominal_seconds(runs: &[pb::Run]) -> Vec<i64> {
    runs.iter()
        .map(|r| timestamp_ms(r.nominal_time.as_ref().unwrap()) / 1000)
        .collect()
}

async fn run_client(cluster: &TestCluster, id: u64) -> RunServiceClient<Authed> {
    cluster.runs(id).await
}

/// Waits until `job` has at least `n` runs as seen through node `via`.
async fn wait_runs(cluster: &TestCluster, via: u64, job: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut client = run_client(cluster, via).await;
    while all_runs(&mut client, job).await.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{job} has fewer than {n} runs after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_runs_exactly_once_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut jobs = cluster.jobs(leader).await;
    for (id, catchup) in [
        ("all", pb::CatchupPolicy::All),
        ("latest", pb::CatchupPolicy::Latest),
    ] {
        let job = every_second_job(id, catchup);
        jobs.create_job(pb::CreateJobRequest {
            job: Some(job),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    wait_runs(&cluster, leader, "all", 4).await;

    // Kill the leader while both jobs fire every second.
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(READY).await;
    let seen = all_runs(&mut run_client(&cluster, new_leader).await, "all")
        .await
        .len();
    wait_runs(&cluster, new_leader, "all", seen + 4).await;

    let mut client = run_client(&cluster, new_leader).await;
    for job in ["all", "latest"] {
        let list = all_runs(&mut client, job).await;
        let seconds = nominal_seconds(&list);
        let unique: BTreeSet<i64> = seconds.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seconds.len(),
            "{job}: a nominal second has two runs: {seconds:?}"
        );
        let (first, last) = (*unique.first().unwrap(), *unique.last().unwrap());
        let describe = client
            .describe_job(pb::DescribeJobRequest {
                id: job.into(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let missed = describe.counters.unwrap().missed;
        let span = (last - first + 1) as u64;
        match job {
            // Every second from the first to the last has its run.
            "all" => assert_eq!((unique.len() as u64, missed), (span, 0), "{job}: {seconds:?}"),
            // Seconds without a run were missed while there was no leader, and are counted.
            _ => assert_eq!(
                unique.len() as u64 + missed,
                span,
                "{job}: {seconds:?}, missed {missed}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_backfill_describe_and_cancel() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let follower = cluster.running().into_iter().find(|&id| id != leader).unwrap();
    let mut jobs = cluster.jobs(follower).await;
    let mut job = every_second_job("hourly", pb::CatchupPolicy::Latest);
    job.schedule = "0 * * * *".into();
    // A long sleep, so the triggered run is still open when it is cancelled.
    job.r#type = "sleep".into();
    job.payload = br#"{"ms": 600000}"#.to_vec();
    jobs.create_job(pb::CreateJobRequest {
        job: Some(job),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let mut runs_api = run_client(&cluster, follower).await;

    let run = runs_api
        .trigger_job(pb::TriggerJobRequest { id: "hourly".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (run.status, run.cause),
        (pb::RunStatus::Pending as i32, pb::RunCause::Trigger as i32)
    );
    assert!(
        run.idempotency_key.starts_with("hourly:"),
        "{}",
        run.idempotency_key
    );

    let start = pb::Timestamp {
        seconds: 1_767_225_600,
        nanos: 0,
    }; // 2026-01-01T00:00Z
    let end = pb::Timestamp {
        seconds: 1_767_225_600 + 3 * 3600,
        nanos: 0,
    };
    let dry = runs_api
        .backfill_job(pb::BackfillJobRequest {
            id: "hourly".into(),
            start: Some(start),
            end: Some(end),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.nominal_times.len(), dry.run_ids.len()), (3, 0));
    let real = runs_api
        .backfill_job(pb::BackfillJobRequest {
            id: "hourly".into(),
            start: Some(start),
            end: Some(end),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((real.run_ids.len(), real.already_present), (3, 0));
    let again = runs_api
        .backfill_job(pb::BackfillJobRequest {
            id: "hourly".into(),
            start: Some(start),
            end: Some(end),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.run_ids.len(), again.already_present),
        (0, 3),
        "backfill creates each fire once"
    );
    let bad = runs_api
        .backfill_job(pb::BackfillJobRequest {
            id: "hourly".into(),
            start: Some(end),
            end: Some(start),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let cancelled = runs_api
        .cancel_run(pb::CancelRunRequest { id: run.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, pb::RunStatus::Cancelled as i32);
    let twice = runs_api
        .cancel_run(pb::CancelRunRequest { id: run.id })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);

    let described = runs_api
        .describe_job(pb::DescribeJobRequest {
            id: "hourly".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.next_fire_times.len(), 10);
    assert_eq!(described.recent_runs.len(), 4);
    assert_eq!(
        described.recent_runs[0].id,
        *real.run_ids.last().unwrap(),
        "newest first"
    );
    let counters = described.counters.unwrap();
    assert_eq!((counters.runs_created, counters.cancelled), (4, 1));
    let missing = runs_api
        .get_run(pb::GetRunRequest {
            id: 999_999,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// Reads run events from `stream` into `events` until `done(events)` holds;
/// returns the stream's error if it breaks first, `None` when done.
async fn read_events(
    stream: &mut tonic::Streaming<pb::RunEvent>,
    events: &mut Vec<pb::RunEvent>,
    done: impl Fn(&[pb::RunEvent]) -> bool,
) -> Option<tonic::Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(events) {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("no run event within 30 s");
        match next {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return Some(tonic::Status::unavailable("stream ended")),
            Err(status) => return Some(status),
        }
    }
    None
}

fn position(event: &pb::RunEvent) -> (u64, u64) {
    let p = event.position.expect("every event has a position");
    (p.revision, p.run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_node_without_gaps_or_repeats() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let followers: Vec<u64> = cluster.running().into_iter().filter(|&id| id != leader).collect();
    let (first, second) = (followers[0], followers[1]);

    // Watch from now on a follower: the first event is a progress notice.
    let mut stream = run_client(&cluster, first)
        .await
        .watch_runs(pb::WatchRunsRequest {
            job_id: "w".into(),
            after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let start = stream.message().await.unwrap().expect("a progress notice");
    assert!(
        start.run.is_none(),
        "the first event of a watch from now has no run"
    );
    let start = position(&start);

    let mut jobs = cluster.jobs(leader).await;
    jobs.create_job(pb::CreateJobRequest {
        job: Some(every_second_job("w", pb::CatchupPolicy::All)),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let mut events = Vec::new();
    let error = read_events(&mut stream, &mut events, |e| e.len() >= 6).await;
    assert!(error.is_none(), "watch broke early: {error:?}");

    // Kill the watched node; the stream breaks. Resume on another node from
    // the last position received, while runs keep changing.
    cluster.kill(first);
    let error = read_events(&mut stream, &mut events, |_| false).await;
    assert!(error.is_some(), "the stream of a killed node ends with an error");
    let resume = position(events.last().unwrap());
    let mut stream = run_client(&cluster, second)
        .await
        .watch_runs(pb::WatchRunsRequest {
            job_id: "w".into(),
            after: Some(pb::WatchPosition {
                revision: resume.0,
                run_id: resume.1,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let before_resume = events.len();
    let error = read_events(&mut stream, &mut events, |e| e.len() >= before_resume + 6).await;
    assert!(error.is_none(), "resumed watch broke: {error:?}");

    // Stop the fires, wait until every run has finished, and check that the
    // stream delivered the final state of each run changed after the start.
    jobs.pause_job(pb::PauseJobRequest { id: "w".into() })
        .await
        .unwrap();
    let mut client = run_client(&cluster, second).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let finals = loop {
        let list = all_runs(&mut client, "w").await;
        if list.iter().all(|r| r.status == pb::RunStatus::Succeeded as i32) {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs still open: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected: BTreeSet<(u64, u64)> = finals
        .iter()
        .filter(|r| (r.revision, r.id) > start)
        .map(|r| (r.revision, r.id))
        .collect();
    assert!(expected.len() >= 3, "too few runs: {finals:?}");
    let error = read_events(&mut stream, &mut events, |e| {
        let seen: BTreeSet<(u64, u64)> = e.iter().map(position).collect();
        expected.is_subset(&seen)
    })
    .await;
    assert!(error.is_none(), "watch broke: {error:?}");

    // In order, after the start, each event the run as it was at its position.
    let positions: Vec<(u64, u64)> = events.iter().map(position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions not strictly increasing: {positions:?}"
    );
    assert!(positions[0] > start);
    for event in &events {
        let run = event.run.as_ref().expect("run events carry the run");
        assert_eq!(run.job_id, "w");
        assert_eq!(position(event), (run.revision, run.id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_past_the_limit_are_refused_until_one_ends() {
    use kairos::proto::event_service_client::EventServiceClient;
    let cluster = TestCluster::start(1, &["--max-watches", "2"]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let watch_runs = || async {
        run_client(&cluster, 1)
            .await
            .watch_runs(pb::WatchRunsRequest {
                job_id: String::new(),
                after: None,
            })
            .await
    };

    // A run watch and an event watch take the two places; each answers its
    // progress notice, so both streams are open on the node.
    let mut runs = watch_runs().await.unwrap().into_inner();
    runs.message().await.unwrap().expect("a progress notice");
    let mut events = EventServiceClient::new(cluster.channel(1))
        .watch_events(pb::WatchEventsRequest {
            from_now: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap().expect("a progress notice");

    let refused = watch_runs().await.expect_err("a third watch is past the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watches"),
        "{}",
        refused.message()
    );

    // The client of the run watch goes away (no event is flowing): the node
    // notices and gives its place back. Polled, bounded: the client has no
    // other way to learn it.
    drop(runs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match watch_runs().await {
            Ok(stream) => break stream.into_inner(),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place of a closed watch was never given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("watch refused: {status:?}"),
        }
    };
    again.message().await.unwrap().expect("a progress notice");
    drop(events);
}

/// `--max-requests 1`: a REST call whose body has not all arrived holds the
/// node's only request slot (the gateway takes it before reading the body),
/// so a gRPC call is refused at once naming the limit while health checks
/// still answer; once the body is complete and answered, calls are served
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_request_limit_are_refused_until_one_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(1, &["--max-requests", "1"]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let list = || async {
        cluster
            .jobs(1)
            .await
            .list_jobs(pb::ListJobsRequest::default())
            .await
    };
    list().await.expect("one call at a time is served");

    // Headers, and half the body.
    let body = br#"{"topic":"limits.test","payload":""}"#;
    let slow_call = || async {
        let mut slow = tokio::net::TcpStream::connect(&cluster.node(1).http)
            .await
            .unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: kairos\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            cluster.token(),
            body.len()
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&body[..10]).await.unwrap();
        slow
    };
    let mut slow = slow_call().await;

    // The node takes the slow call's slot as it dispatches it: polled,
    // bounded (nothing tells the client when that happened). A probe that
    // held the slot just then had the slow call refused, which answers at
    // once: it is sent again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match list().await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slow REST call never took the only slot"
                );
                let mut first = [0u8; 1];
                let answered = tokio::time::timeout(Duration::from_millis(20), slow.peek(&mut first)).await;
                if answered.is_ok() {
                    slow = slow_call().await;
                }
            }
        }
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-requests"),
        "{}",
        refused.message()
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(cluster.channel(1));
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health checks take no slot");

    // The rest of the body: the call is answered and gives its slot back.
    slow.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    list().await.expect("the slot was given back");
}
