//! Execution on a real three-node cluster with a recording HTTP server in the
//! test: an every-second `http` job is delivered once per nominal second
//! across a kill -9 of the leader (a second delivery only as a retry after an
//! expired lease, with a higher attempt number), the seconds missed without a
//! leader follow the catch-up policy, and an attempt on a killed node times
//! out and succeeds on another node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kairos::api::convert::ms_duration;
use kairos::proto as pb;
use kairos::proto::run_service_client::RunServiceClient;
use kairos_testkit::{http_get, recorder, Authed, Deliveries, TestCluster};

const READY: Duration = Duration::from_secs(30);

fn webhook_job(id: &str, url: &str, catchup: pb::CatchupPolicy) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: id.into(),
        r#type: "http".into(),
        schedule: "* * * * * *".into(),
        payload: format!(r#"{{"url": "{url}", "method": "POST"}}"#).into_bytes(),
        policies: Some(pb::Policies {
            overlap: pb::OverlapPolicy::AllowAll as i32,
            catchup: catchup as i32,
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
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Delivered nominal seconds of `job` (from the idempotency key) with their attempts.
fn delivered(deliveries: &Deliveries, job: &str) -> BTreeMap<String, Vec<u32>> {
    let mut by_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for d in deliveries.lock().unwrap().iter() {
        if d.key.starts_with(&format!("{job}:")) {
            by_key.entry(d.key.clone()).or_default().push(d.attempt);
        }
    }
    by_key
}

fn second_of(key: &str) -> i64 {
    let nominal = key.split_once(':').unwrap().1;
    chrono::DateTime::parse_from_rfc3339(nominal).unwrap().timestamp()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_webhook_is_delivered_once_across_a_leader_kill() {
    let (url, deliveries) = recorder().await;
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut jobs = cluster.jobs(leader).await;
    for (id, catchup) in [
        ("all", pb::CatchupPolicy::All),
        ("latest", pb::CatchupPolicy::Latest),
    ] {
        let job = webhook_job(id, &url, catchup);
        jobs.create_job(pb::CreateJobRequest {
            job: Some(job),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    wait_until("4 deliveries before the kill", || {
        delivered(&deliveries, "all").len() >= 4
    })
    .await;

    cluster.kill(leader);
    let new_leader = cluster.wait_leader(READY).await;
    let before = delivered(&deliveries, "all").len();
    wait_until("5 deliveries after the kill", || {
        delivered(&deliveries, "all").len() >= before + 5
    })
    .await;
    // Stop the schedules, then let retries of attempts lost with the old leader finish.
    let mut jobs = cluster.jobs(new_leader).await;
    for id in ["all", "latest"] {
        jobs.pause_job(pb::PauseJobRequest { id: id.into() })
            .await
            .unwrap();
    }
    let mut runs = cluster.runs(new_leader).await;
    let mut open = usize::MAX;
    for _ in 0..100 {
        let mut count = 0;
        for job in ["all", "latest"] {
            let listed = runs
                .list_runs(pb::ListRunsRequest {
                    job_id: job.into(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            count += listed.runs.iter().filter(|r| r.finished_at.is_none()).count();
        }
        open = count;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(open, 0, "every run reached a terminal status");

    for job in ["all", "latest"] {
        let by_key = delivered(&deliveries, job);
        for (key, attempts) in &by_key {
            let unique: BTreeSet<u32> = attempts.iter().copied().collect();
            assert_eq!(
                unique.len(),
                attempts.len(),
                "{key} was executed twice by the same attempt: {attempts:?}"
            );
        }
        let seconds: BTreeSet<i64> = by_key.keys().map(|k| second_of(k)).collect();
        let (first, last) = (*seconds.first().unwrap(), *seconds.last().unwrap());
        let span = (last - first + 1) as u64;
        let described = runs
            .describe_job(pb::DescribeJobRequest {
                id: job.into(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let counters = described.counters.unwrap();
        let retried: usize = by_key.values().filter(|a| a.len() > 1).count();
        eprintln!(
            "{job}: {} seconds delivered over {span}, missed {}, {retried} redelivered after a lease expired",
            seconds.len(),
            counters.missed
        );
        match job {
            "all" => assert_eq!(
                (seconds.len() as u64, counters.missed),
                (span, 0),
                "{job}: {seconds:?}"
            ),
            _ => assert_eq!(seconds.len() as u64 + counters.missed, span, "{job}: {seconds:?}"),
        }
    }

    // The survivors' metrics show the executions and their lateness.
    let mut executed = 0.0;
    for id in cluster.running() {
        let (_, body) = http_get(&cluster.node(id).http, "/metrics").await.unwrap();
        assert!(body.contains("kairos_fire_lateness_seconds_bucket"), "{body}");
        assert!(body.contains("kairos_runs_pending"), "{body}");
        executed += body
            .lines()
            .filter(|l| l.starts_with("kairos_attempts_total{job_type=\"http\",outcome=\"succeeded\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(executed > 0.0, "the surviving nodes executed webhook attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_on_a_killed_node_times_out_and_succeeds_elsewhere() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut jobs = cluster.jobs(leader).await;
    let job = pb::ScheduledJob {
        id: "nap".into(),
        r#type: "sleep".into(),
        schedule: "@yearly".into(),
        payload: br#"{"ms": 3000}"#.to_vec(),
        policies: Some(pb::Policies {
            timeouts: Some(pb::Timeouts {
                heartbeat_timeout: Some(ms_duration(2_000)),
                ..Default::default()
            }),
            retry: Some(pb::RetryPolicy {
                initial_interval: Some(ms_duration(100)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    jobs.create_job(pb::CreateJobRequest {
        job: Some(job),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let mut runs = cluster.runs(leader).await;
    let run = runs
        .trigger_job(pb::TriggerJobRequest { id: "nap".into() })
        .await
        .unwrap()
        .into_inner();

    // Wait until a worker runs attempt 1, then kill that worker's node — unless
    // it is the leader, whose loss the other test covers; then kill a follower
    // running nothing and expect the run to simply succeed.
    let mut running_on = 0;
    for _ in 0..100 {
        let r = runs
            .get_run(pb::GetRunRequest {
                id: run.id,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == pb::RunStatus::Running as i32 {
            running_on = r.node_id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(running_on, 0, "attempt 1 started");
    if running_on == leader {
        eprintln!("attempt 1 runs on the leader; this run checks a plain success");
    } else {
        cluster.kill(running_on);
    }
    let mut last = pb::Run::default();
    for _ in 0..300 {
        last = runs
            .get_run(pb::GetRunRequest {
                id: run.id,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if last.finished_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.status, pb::RunStatus::Succeeded as i32, "{last:?}");
    if running_on != leader {
        assert_eq!(last.attempt, 2, "attempt 1 timed out with its node: {last:?}");
        assert_ne!(last.node_id, running_on, "attempt 2 ran elsewhere");
        assert!(last.error.contains("lease expired"), "{}", last.error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_only_on_nodes_started_with_allow_exec() {
    let cluster = TestCluster::start_with_node_args(3, &[], &[(3, "--allow-exec")]);
    cluster.wait_ready(READY).await;
    let job = pb::ScheduledJob {
        id: "shell".into(),
        r#type: "exec".into(),
        schedule: "@yearly".into(),
        payload: br#"{"argv": ["sh", "-c", "echo run $KAIROS_RUN_ID"]}"#.to_vec(),
        policies: Some(pb::Policies {
            overlap: pb::OverlapPolicy::AllowAll as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    // A node without --allow-exec refuses the job type; node 3 accepts it.
    let refused = cluster
        .jobs(1)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(job.clone()),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("--allow-exec"),
        "{}",
        refused.message()
    );
    cluster
        .jobs(3)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(job),
            request_id: String::new(),
        })
        .await
        .unwrap();

    let mut runs = cluster.runs(1).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            runs.trigger_job(pb::TriggerJobRequest { id: "shell".into() })
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    for id in ids {
        let mut run = pb::Run::default();
        for _ in 0..200 {
            run = runs
                .get_run(pb::GetRunRequest { id, consistency: 0 })
                .await
                .unwrap()
                .into_inner();
            if run.finished_at.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            (run.status, run.node_id, run.attempt),
            (pb::RunStatus::Succeeded as i32, 3, 1),
            "{run:?}"
        );
        assert_eq!(run.output_tail.trim(), format!("run {id}"));
    }
}

/// Triggers `job` `n` times through `runs` and waits until every run finished; returns them.
async fn trigger_and_finish(runs: &mut RunServiceClient<Authed>, job: &str, n: usize) -> Vec<pb::Run> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let run = runs
            .trigger_job(pb::TriggerJobRequest { id: job.into() })
            .await
            .unwrap();
        ids.push(run.into_inner().id);
    }
    let mut finished = Vec::new();
    for id in ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let run = runs
                .get_run(pb::GetRunRequest { id, consistency: 0 })
                .await
                .unwrap()
                .into_inner();
            if run.finished_at.is_some() {
                finished.push(run);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {id} open after 40 s: {run:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    finished
}

fn ms(t: &Option<pb::Timestamp>) -> i64 {
    kairos::api::convert::timestamp_ms(t.as_ref().expect("timestamp set"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_limits_cap_concurrency_and_pace_starts() {
    let cluster = TestCluster::start(3, &["--type-limits", "sleep:concurrency=1;noop:rate=4,burst=1"]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut jobs = cluster.jobs(leader).await;
    for (id, job_type, payload) in [
        ("one-at-a-time", "sleep", r#"{"ms": 300}"#),
        ("paced", "noop", ""),
    ] {
        jobs.create_job(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                id: id.into(),
                r#type: job_type.into(),
                schedule: "@yearly".into(),
                payload: payload.as_bytes().to_vec(),
                policies: Some(pb::Policies {
                    overlap: pb::OverlapPolicy::AllowAll as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    let mut runs = cluster.runs(leader).await;

    // Twelve workers are free, but the sleep runs go one after the other:
    // each starts only after the previous one finished.
    let mut sleeps = trigger_and_finish(&mut runs, "one-at-a-time", 4).await;
    assert!(
        sleeps.iter().all(|r| r.status == pb::RunStatus::Succeeded as i32),
        "{sleeps:?}"
    );
    sleeps.sort_by_key(|r| ms(&r.started_at));
    for pair in sleeps.windows(2) {
        assert!(
            ms(&pair[1].started_at) >= ms(&pair[0].finished_at),
            "two sleep runs overlapped: {pair:?}"
        );
    }

    // At 4 starts per second with no burst, 9 triggered runs take at least
    // 8 intervals of 250 ms to start (the slack covers clock granularity).
    let mut paced = trigger_and_finish(&mut runs, "paced", 9).await;
    assert!(
        paced.iter().all(|r| r.status == pb::RunStatus::Succeeded as i32),
        "{paced:?}"
    );
    paced.sort_by_key(|r| ms(&r.started_at));
    let span = ms(&paced[8].started_at) - ms(&paced[0].started_at);
    assert!(span >= 8 * 250 - 100, "9 starts within {span} ms at 4/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_attempt_and_the_worker_is_restarted() {
    // One worker per node: work after the panics needs the restarted workers.
    let cluster = TestCluster::start(3, &["--test-handlers", "--workers", "1"]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut jobs = cluster.jobs(leader).await;
    let job = |id: &str, job_type: &str, payload: &str| pb::ScheduledJob {
        id: id.into(),
        r#type: job_type.into(),
        schedule: "@yearly".into(),
        payload: payload.as_bytes().to_vec(),
        policies: Some(pb::Policies {
            overlap: pb::OverlapPolicy::AllowAll as i32,
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(4),
                initial_interval: Some(ms_duration(100)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    for j in [
        job("crashy", "panic", r#"{"attempts": 2}"#),
        job("after", "noop", ""),
    ] {
        jobs.create_job(pb::CreateJobRequest {
            job: Some(j),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    let mut runs = cluster.runs(leader).await;
    let mut watch = runs
        .watch_runs(pb::WatchRunsRequest {
            job_id: "crashy".into(),
            after: None,
        })
        .await
        .unwrap()
        .into_inner();

    // Two attempts panic, the third succeeds: the retry policy carried it.
    let crashed = trigger_and_finish(&mut runs, "crashy", 2).await;
    for run in &crashed {
        assert_eq!(
            (run.status, run.attempt),
            (pb::RunStatus::Succeeded as i32, 3),
            "{run:?}"
        );
        assert!(run.output_tail.contains("survived after 2 panics"), "{run:?}");
    }
    // The four failed attempts were recorded, each with its panic message.
    let mut errors = BTreeSet::new();
    while errors.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the watch delivers the failed attempts")
            .unwrap()
            .expect("the stream stays open");
        if let Some(run) = event.run.filter(|r| r.error.contains("handler panicked")) {
            assert!(run.error.contains("test handler panics on attempt"), "{run:?}");
            errors.insert((run.id, run.error));
        }
    }

    // Every node survived, and its (restarted) single worker still runs work.
    assert_eq!(cluster.running().len(), 3);
    let after = trigger_and_finish(&mut runs, "after", 9).await;
    assert!(
        after.iter().all(|r| r.status == pb::RunStatus::Succeeded as i32),
        "{after:?}"
    );
    let restarted: usize = (1..=3)
        .map(|id| cluster.log(id).matches("worker died; restarting it").count())
        .sum();
    assert!(restarted >= 4, "4 panics, {restarted} worker restarts logged");
}
