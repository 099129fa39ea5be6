//! Event triggers, dependencies and the lifecycle stream on three real
//! processes: an event creates exactly one run per matching job across a
//! leader kill -9 with the publishes retried under the same idempotency
//! keys; a chain and a fan-in run once per nominal time and a failed
//! upstream starts only what waits for failure; a cycle is refused; a
//! WatchEvents stream resumed on another node after a kill loses and
//! repeats nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kairos::proto as pb;
use kairos::proto::event_service_client::EventServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::{all_runs, TestCluster};
use tonic::Code;

const READY: Duration = Duration::from_secs(30);
/// How long a condition may take to come true before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn events(cluster: &TestCluster, id: u64) -> EventServiceClient<kairos_testkit::Authed> {
    EventServiceClient::new(cluster.channel(id))
}

fn job_with(id: &str, job_type: &str, kind: pb::schedule_spec::Kind) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.into(),
        r#type: job_type.into(),
        owner_service: "shop".into(),
        schedule_spec: Some(pb::ScheduleSpec { kind: Some(kind) }),
        payload: b"{}".to_vec(),
        policies: Some(pb::Policies {
            overlap: pb::OverlapPolicy::AllowAll as i32,
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn on_event(topic: &str, matches: &[(&str, &str)]) -> pb::schedule_spec::Kind {
    pb::schedule_spec::Kind::OnEvent(pb::EventTrigger {
        topic: topic.into(),
        r#match: matches
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

fn after(jobs: &[&str], condition: pb::DependencyCondition) -> pb::schedule_spec::Kind {
    pb::schedule_spec::Kind::After(pb::Dependency {
        jobs: jobs.iter().map(|j| j.to_string()).collect(),
        condition: condition as i32,
        mode: pb::DependencyMode::All as i32,
    })
}

/// Creates `job` through node `via`, retrying while the cluster elects.
async fn create(cluster: &TestCluster, via: u64, job: pb::ScheduledJob) -> Result<(), tonic::Status> {
    let mut client: JobServiceClient<_> = cluster.jobs(via).await;
    let request = pb::CreateJobRequest {
        request_id: format!("req-{}", job.id),
        job: Some(job),
    };
    for _ in 0..50 {
        match client.create_job(request.clone()).await {
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return other.map(|_| ()),
        }
    }
    Err(tonic::Status::unavailable("no leader"))
}

/// Publishes through `via`, retrying UNAVAILABLE (a leader change) with the
/// same idempotency key until it is acknowledged.
async fn publish(
    cluster: &TestCluster,
    via: u64,
    topic: &str,
    region: &str,
    key: &str,
) -> pb::PublishEventResponse {
    let request = pb::PublishEventRequest {
        topic: topic.into(),
        attributes: [("region".to_string(), region.to_string())].into_iter().collect(),
        payload: format!("{{\"key\":\"{key}\"}}").into_bytes(),
        idempotency_key: key.into(),
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        match events(cluster, via).publish_event(request.clone()).await {
            Ok(reply) => return reply.into_inner(),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("publish {key} via {via}: {s:?}"),
        }
    }
}

/// A node other than `not`.
fn other_than(cluster: &TestCluster, not: u64) -> u64 {
    *cluster
        .running()
        .iter()
        .find(|&&id| id != not)
        .expect("another node runs")
}

/// Waits until `job` has `count` runs, seen through `via`.
async fn wait_runs(cluster: &TestCluster, via: u64, job: &str, count: usize) -> Vec<pb::Run> {
    let deadline = Instant::now() + PATIENCE;
    let mut client = cluster.runs(via).await;
    loop {
        let runs = all_runs(&mut client, job).await;
        if runs.len() >= count || Instant::now() > deadline {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_creates_one_run_per_matching_job_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(READY).await;
    let follower = other_than(&cluster, leader);
    create(
        &cluster,
        follower,
        job_with("eu-orders", "noop", on_event("orders.*", &[("region", "eu")])),
    )
    .await
    .unwrap();
    create(
        &cluster,
        follower,
        job_with("all-orders", "noop", on_event("orders.*", &[])),
    )
    .await
    .unwrap();
    create(
        &cluster,
        follower,
        job_with("refunds", "noop", on_event("refunds.*", &[])),
    )
    .await
    .unwrap();

    // Ten events through a follower; the leader is killed after the fifth,
    // and every publish is then sent again with its key (a client's retry).
    let mut first = BTreeMap::new();
    for i in 0..10 {
        if i == 5 {
            cluster.kill(leader);
        }
        let via = other_than(&cluster, leader);
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let reply = publish(&cluster, via, "orders.created", region, &format!("order-{i}")).await;
        first.insert(i, reply);
    }
    let new_leader = cluster.wait_leader(READY).await;
    assert_ne!(new_leader, leader);
    for i in 0..10 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let again = publish(
            &cluster,
            other_than(&cluster, leader),
            "orders.created",
            region,
            &format!("order-{i}"),
        )
        .await;
        assert!(again.duplicate, "order-{i} is a repeat");
        assert_eq!(again.event_id, first[&i].event_id, "order-{i}: the first answer");
    }

    let event_ids: BTreeSet<String> = first.values().map(|r| r.event_id.clone()).collect();
    assert_eq!(event_ids.len(), 10, "ten distinct events");
    let eu_ids: BTreeSet<String> = (0..10).step_by(2).map(|i| first[&i].event_id.clone()).collect();

    let all = wait_runs(&cluster, new_leader, "all-orders", 10).await;
    let seen: Vec<String> = all.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(seen.len(), 10, "exactly one run per event: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), event_ids);
    for run in &all {
        assert_eq!(run.cause, pb::RunCause::Event as i32);
        assert_eq!(run.idempotency_key, format!("all-orders:{}", run.event_id));
        assert!(String::from_utf8_lossy(&run.event_payload).starts_with("{\"key\":\"order-"));
    }
    let eu = wait_runs(&cluster, new_leader, "eu-orders", 5).await;
    assert_eq!(
        eu.iter().map(|r| r.event_id.clone()).collect::<BTreeSet<_>>(),
        eu_ids,
        "only region=eu events"
    );
    assert_eq!(eu.len(), 5);
    assert!(wait_runs(&cluster, new_leader, "refunds", 0).await.is_empty());
    // No run appears late: the counts hold once every run has ended.
    let deadline = Instant::now() + PATIENCE;
    let mut runs = cluster.runs(new_leader).await;
    loop {
        let all = all_runs(&mut runs, "all-orders").await;
        let open = all.iter().any(|r| {
            matches!(
                pb::RunStatus::try_from(r.status),
                Ok(pb::RunStatus::Pending | pb::RunStatus::Queued | pb::RunStatus::Running)
            )
        });
        if !open {
            assert_eq!(all.len(), 10);
            break;
        }
        assert!(Instant::now() < deadline, "runs did not end: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_and_fan_ins_run_once_per_nominal_time_and_a_failure_starts_only_its_handler() {
    let cluster = TestCluster::start(3, &["--test-handlers"]);
    let leader = cluster.wait_leader(READY).await;
    let via = other_than(&cluster, leader);
    let every = |secs: i64| {
        pb::schedule_spec::Kind::Every(pb::IntervalSchedule {
            interval: Some(pbjson_types::Duration {
                seconds: secs,
                nanos: 0,
            }),
            phase: None,
        })
    };
    use pb::DependencyCondition::{Failed, Succeeded};
    // The upstream jobs are created paused and resumed once every job that
    // follows them exists: an upstream run that ends before its dependent
    // job is created has no follower (by design), and a 2 s boundary can
    // fall between two creates.
    let paused = |job: pb::ScheduledJob| pb::ScheduledJob { paused: true, ..job };
    create(&cluster, via, paused(job_with("a", "noop", every(2))))
        .await
        .unwrap();
    create(&cluster, via, paused(job_with("b", "noop", every(2))))
        .await
        .unwrap();
    create(
        &cluster,
        via,
        job_with("after-a", "noop", after(&["a"], Succeeded)),
    )
    .await
    .unwrap();
    create(
        &cluster,
        via,
        job_with("fan-in", "noop", after(&["a", "b"], Succeeded)),
    )
    .await
    .unwrap();
    let mut failing = paused(job_with("f", "panic", every(2)));
    failing.payload = br#"{"attempts": 1000}"#.to_vec();
    create(&cluster, via, failing).await.unwrap();
    create(
        &cluster,
        via,
        job_with("after-f", "noop", after(&["f"], Succeeded)),
    )
    .await
    .unwrap();
    create(
        &cluster,
        via,
        job_with("on-f-failure", "noop", after(&["f"], Failed)),
    )
    .await
    .unwrap();

    // A cycle is refused, naming it.
    let err = create(
        &cluster,
        via,
        job_with("a2", "noop", after(&["after-a", "a2"], Succeeded)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("a2 → a2"), "{err:?}");
    let mut jobs = cluster.jobs(via).await;
    let current = jobs
        .get_job(pb::GetJobRequest {
            id: "a".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut closing = current.clone();
    closing.schedule_spec = Some(pb::ScheduleSpec {
        kind: Some(after(&["fan-in"], Succeeded)),
    });
    let err = jobs
        .update_job(pb::UpdateJobRequest {
            job: Some(closing),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["schedule_spec".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("a → fan-in → a"), "{err:?}");
    // Deleting an upstream needs force.
    let err = jobs
        .delete_job(pb::DeleteJobRequest {
            id: "f".into(),
            version: 0,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for id in ["a", "b", "f"] {
        jobs.resume_job(pb::ResumeJobRequest { id: id.into() })
            .await
            .unwrap();
    }

    // Let a, b and f run at least three nominal times, then stop them.
    let mut runs = cluster.runs(via).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let done = |runs: &[pb::Run], status: pb::RunStatus| {
            runs.iter().filter(|r| r.status == status as i32).count()
        };
        let a = all_runs(&mut runs, "a").await;
        let f = all_runs(&mut runs, "f").await;
        if done(&a, pb::RunStatus::Succeeded) >= 3 && done(&f, pb::RunStatus::Failed) >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upstream runs did not end: a {a:?} f {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in ["a", "b", "f"] {
        jobs.pause_job(pb::PauseJobRequest { id: id.into() })
            .await
            .unwrap();
    }
    // Every open run (upstream and downstream) ends.
    let jobs_watched = ["a", "b", "f", "after-a", "fan-in", "after-f", "on-f-failure"];
    let deadline = Instant::now() + PATIENCE;
    let by_job = loop {
        let mut by_job = BTreeMap::new();
        let mut open = false;
        for job in jobs_watched {
            let list = all_runs(&mut runs, job).await;
            open |= list.iter().any(|r| {
                matches!(
                    pb::RunStatus::try_from(r.status),
                    Ok(pb::RunStatus::Pending | pb::RunStatus::Queued | pb::RunStatus::Running)
                )
            });
            by_job.insert(job, list);
        }
        // A downstream run is created in the same entry as its upstream's
        // end, so "nothing open" is a stable end state.
        if !open {
            break by_job;
        }
        assert!(Instant::now() < deadline, "runs did not end: {by_job:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nominal = |runs: &[pb::Run], status: Option<pb::RunStatus>| -> Vec<i64> {
        runs.iter()
            .filter(|r| status.is_none_or(|s| r.status == s as i32))
            .map(|r| {
                r.nominal_time
                    .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                    .unwrap_or(0)
            })
            .collect()
    };
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    let a_ok: BTreeSet<i64> = nominal(&by_job["a"], Some(pb::RunStatus::Succeeded))
        .into_iter()
        .collect();
    let b_ok: BTreeSet<i64> = nominal(&by_job["b"], Some(pb::RunStatus::Succeeded))
        .into_iter()
        .collect();
    let after_a = sorted(nominal(&by_job["after-a"], None));
    assert_eq!(
        after_a,
        a_ok.iter().copied().collect::<Vec<_>>(),
        "after-a: one run per a success"
    );
    let fan_in = sorted(nominal(&by_job["fan-in"], None));
    let both: Vec<i64> = a_ok.intersection(&b_ok).copied().collect();
    assert!(!both.is_empty());
    assert_eq!(fan_in, both, "fan-in: one run per time both succeeded");
    assert!(by_job["after-f"].is_empty(), "f failed: after-f never runs");
    let f_failed = sorted(nominal(&by_job["f"], Some(pb::RunStatus::Failed)));
    assert_eq!(sorted(nominal(&by_job["on-f-failure"], None)), f_failed);
    let upstream_ids: BTreeSet<u64> = by_job["a"].iter().chain(&by_job["b"]).map(|r| r.id).collect();
    for run in by_job["fan-in"].iter().chain(&by_job["after-a"]) {
        assert_eq!(run.cause, pb::RunCause::Dependency as i32);
        assert!(upstream_ids.contains(&run.upstream_run_id), "{run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_watch_resumed_on_another_node_after_a_kill_loses_and_repeats_nothing() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(READY).await;
    let watched = other_than(&cluster, leader);
    let mut stream = events(&cluster, watched)
        .watch_events(pb::WatchEventsRequest {
            from_now: true,
            kinds: vec![
                pb::LifecycleEventKind::JobCreated as i32,
                pb::LifecycleEventKind::JobDeleted as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let start = stream.message().await.unwrap().unwrap();
    assert_eq!(
        start.kind,
        pb::LifecycleEventKind::Unspecified as i32,
        "a progress notice first"
    );
    let survivor = *cluster
        .running()
        .iter()
        .find(|&&id| id != watched && id != leader)
        .unwrap();

    // Twenty creates through the survivor; the watched node is killed after
    // ten events have arrived.
    let mut received = Vec::new();
    for i in 0..20 {
        create(
            &cluster,
            survivor,
            job_with(&format!("w-{i:02}"), "noop", on_event("t.*", &[])),
        )
        .await
        .unwrap();
        if i < 10 {
            let event = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            received.push(event);
        }
        if i == 9 {
            cluster.kill(watched);
        }
    }
    let last = received.last().unwrap().position;
    let mut resumed = events(&cluster, survivor)
        .watch_events(pb::WatchEventsRequest {
            after: last,
            kinds: vec![pb::LifecycleEventKind::JobCreated as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while received.len() < 20 {
        let event = tokio::time::timeout(PATIENCE, resumed.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        received.push(event);
    }
    let ids: Vec<String> = received.iter().map(|e| e.job_id.clone()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("w-{i:02}")).collect();
    assert_eq!(ids, expected, "every create once, in order");
    assert!(received.windows(2).all(|w| w[0].position < w[1].position));
    for event in &received {
        assert_eq!(event.kind, pb::LifecycleEventKind::JobCreated as i32);
        assert_eq!(event.owner, "shop");
    }
}
