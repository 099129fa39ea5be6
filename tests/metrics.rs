//! `/metrics` of a real three-node cluster run with `--metrics-job-limit 2`:
//! four jobs (one failing) show as their two oldest by name and the rest
//! as `job="_other"`, counting on every node what the API reports; the
//! leader reports each peer's replication lag; every node reports its
//! process, readiness and a verified audit chain; and after the leader is
//! killed the survivors have counted the leader change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kairos::proto as pb;
use kairos_testkit::{http_get, TestCluster};
use tokio::time::Instant;

const READY: Duration = Duration::from_secs(30);
/// How long the runs, the replication of their ends and a new election may take.
const SETTLE: Duration = Duration::from_secs(60);

/// The jobs, oldest first: the first two are named.
const JOBS: [&str; 4] = ["tick-1", "fails", "tick-2", "tick-3"];

/// One sample of the text format: name, labels and value.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a scrape (label values here hold no `,` or `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
            }
        })
        .collect()
}

/// The scrape of node `id`'s `/metrics`.
async fn scrape(cluster: &TestCluster, id: u64) -> Vec<Sample> {
    let (status, body) = http_get(&cluster.node(id).http, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
}

/// The `label` values of the samples named `name`.
fn label_values(samples: &[Sample], name: &str, label: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get(label).cloned())
        .collect()
}

/// A job firing every second; `fails` calls a closed loopback port, once.
fn job(id: &str) -> pb::ScheduledJob {
    let mut job = kairos_testkit::job(id);
    job.schedule = "* * * * * *".into();
    if id == "fails" {
        job.r#type = "http".into();
        job.payload = br#"{"url":"http://127.0.0.1:9/nothing-listens"}"#.to_vec();
        job.policies = Some(pb::Policies {
            retry: Some(pb::RetryPolicy {
                max_attempts: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    job
}

/// Runs `op` until it succeeds, riding out an election (bounded).
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

/// `DescribeJob` of `id` (a linearizable read).
async fn describe(cluster: &TestCluster, via: u64, id: &str) -> pb::JobDescription {
    let runs = cluster.runs(via).await;
    let request = pb::DescribeJobRequest {
        id: id.into(),
        ..Default::default()
    };
    retry("describe", || {
        let (mut runs, request) = (runs.clone(), request.clone());
        async move { runs.describe_job(request).await }
    })
    .await
}

/// The counters `DescribeJob` reports for `id`.
async fn counters(cluster: &TestCluster, via: u64, id: &str) -> pb::JobCounters {
    describe(cluster, via, id).await.counters.unwrap_or_default()
}

/// The job's runs among its newest that are pending, queued or running.
async fn open_runs(cluster: &TestCluster, via: u64, id: &str) -> Vec<pb::Run> {
    let open = [
        pb::RunStatus::Pending,
        pb::RunStatus::Queued,
        pb::RunStatus::Running,
    ]
    .map(|s| s as i32);
    describe(cluster, via, id)
        .await
        .recent_runs
        .into_iter()
        .filter(|run| open.contains(&run.status))
        .collect()
}

/// What `kairos_job_runs_total` should say, by `job` label and outcome,
/// for these counters of each job (named or summed under `_other`).
fn expected_runs(counters: &BTreeMap<&str, pb::JobCounters>) -> BTreeMap<(String, String), f64> {
    let mut expected = BTreeMap::new();
    for (id, c) in counters {
        let job = if JOBS[..2].contains(id) {
            id.to_string()
        } else {
            "_other".to_string()
        };
        for (outcome, n) in [
            ("succeeded", c.succeeded),
            ("failed", c.failed),
            ("timed_out", c.timed_out),
            ("cancelled", c.cancelled),
        ] {
            *expected.entry((job.clone(), outcome.to_string())).or_insert(0.0) += n as f64;
        }
    }
    expected
}

/// `kairos_job_runs_total` of a scrape, by `job` label and outcome.
fn reported_runs(samples: &[Sample]) -> BTreeMap<(String, String), f64> {
    samples
        .iter()
        .filter(|s| s.name == "kairos_job_runs_total")
        .map(|s| ((s.labels["job"].clone(), s.labels["outcome"].clone()), s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_job_metrics_follow_the_limit_and_the_api_and_raft_metrics_follow_the_cluster() {
    let mut cluster = TestCluster::start(3, &["--metrics-job-limit", "2"]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;

    let jobs = cluster.jobs(leader).await;
    for id in JOBS {
        let request = pb::CreateJobRequest {
            job: Some(job(id)),
            request_id: format!("req-{id}"),
        };
        retry("create", || {
            let (mut jobs, request) = (jobs.clone(), request.clone());
            async move { jobs.create_job(request).await }
        })
        .await;
    }

    // A few runs of every job, the failing one's failures included.
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut ended = BTreeMap::new();
        for id in JOBS {
            let c = counters(&cluster, leader, id).await;
            ended.insert(id, c.succeeded + c.failed);
        }
        if ended.values().all(|n| *n >= 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not two ended runs of every job: {ended:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in JOBS {
        let request = pb::PauseJobRequest { id: id.into() };
        retry("pause", || {
            let (mut jobs, request) = (jobs.clone(), request.clone());
            async move { jobs.pause_job(request).await }
        })
        .await;
    }

    // Once the last runs have ended and every node applied them, each
    // node reports exactly what the API does.
    let deadline = Instant::now() + SETTLE;
    let scrapes =
        loop {
            let mut api = BTreeMap::new();
            for id in JOBS {
                api.insert(id, counters(&cluster, leader, id).await);
            }
            let expected = expected_runs(&api);
            let mut scrapes = BTreeMap::new();
            for id in 1..=3 {
                scrapes.insert(id, scrape(&cluster, id).await);
            }
            let agree = scrapes.values().all(|s| reported_runs(s) == expected);
            let mut again = BTreeMap::new();
            for id in JOBS {
                again.insert(id, counters(&cluster, leader, id).await);
            }
            let mut open = Vec::new();
            for id in JOBS {
                open.extend(open_runs(&cluster, leader, id).await);
            }
            let settled = open.is_empty() && again == api;
            if agree && settled {
                assert!(
                    expected[&("fails".to_string(), "failed".to_string())] >= 2.0,
                    "{expected:?}"
                );
                assert!(
                    expected[&("_other".to_string(), "succeeded".to_string())] >= 4.0,
                    "{expected:?}"
                );
                break scrapes;
            }
            assert!(
            Instant::now() < deadline,
            "the metrics do not match the API: expected {expected:?}, got {:?} (runs still open: {open:?})",
            scrapes.iter().map(|(id, s)| (id, reported_runs(s))).collect::<Vec<_>>()
        );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };

    let named: BTreeSet<String> = ["tick-1", "fails", "_other"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (id, samples) in &scrapes {
        for family in [
            "kairos_job_runs_total",
            "kairos_job_fires_missed_total",
            "kairos_job_fires_skipped_total",
        ] {
            assert_eq!(
                label_values(samples, family, "job"),
                named,
                "{family} on node {id}"
            );
        }
        assert_eq!(
            label_values(samples, "kairos_job_last_success_timestamp_seconds", "job"),
            BTreeSet::from(["tick-1".to_string()]),
            "only a named job that succeeded has a last success (node {id})"
        );
        assert!(
            value(samples, "process_resident_memory_bytes", &[]).unwrap() > 0.0,
            "node {id}"
        );
        assert_eq!(
            value(samples, "kairos_audit_chain_verified", &[]),
            Some(1.0),
            "node {id}"
        );
        assert_eq!(value(samples, "kairos_ready", &[]), Some(1.0), "node {id}");
        assert_eq!(
            value(samples, "kairos_queue_depth", &[("job_type", "noop")]),
            Some(0.0),
            "node {id}: paused, nothing waits"
        );
        let peers = label_values(samples, "kairos_raft_replication_lag", "peer");
        if *id == leader {
            let others: BTreeSet<String> = (1..=3).filter(|n| *n != leader).map(|n| n.to_string()).collect();
            assert_eq!(peers, others, "the leader reports every peer's lag");
            assert!(
                value(samples, "kairos_fires_total", &[]).unwrap() >= 8.0,
                "the leader fired"
            );
        } else {
            assert!(
                peers.is_empty(),
                "a follower reports no replication lag (node {id})"
            );
        }
        // Some lateness of the named jobs' first attempts, on whichever nodes ran them.
        assert!(
            label_values(samples, "kairos_job_fire_lateness_seconds_count", "job").is_subset(&named),
            "node {id}"
        );
    }
    let lateness_total: f64 = scrapes
        .values()
        .flat_map(|s| s.iter())
        .filter(|s| s.name == "kairos_job_fire_lateness_seconds_count")
        .map(|s| s.value)
        .sum();
    assert!(
        lateness_total >= 8.0,
        "first attempts of every job, summed over nodes"
    );

    // The leader dies: the survivors count the next leader.
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(SETTLE).await;
    assert_ne!(new_leader, leader);
    let deadline = Instant::now() + SETTLE;
    for id in cluster.running() {
        loop {
            let changes = value(
                &scrape(&cluster, id).await,
                "kairos_raft_leader_changes_total",
                &[],
            );
            if changes.is_some_and(|n| n >= 2.0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} counted {changes:?} leader changes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
