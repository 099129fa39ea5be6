//! `failover`: repeated kill -9 of the leader; time to the first write and
//! the first dispatched run after each kill.

use std::time::{Duration, Instant};

use kairos::api::convert::timestamp_ms;
use kairos::proto as pb;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;

use crate::support::{channel, latency_histogram, progress, started_cluster};

/// Recorded for a kill after which the awaited event never came (µs; an hour,
/// far above the 30 s bound of every wait).
const NEVER_US: u64 = 3_600_000_000;

/// The value at quantile `q` of per-kill figures (ms; `NaN` for "never",
/// which ranks above every figure), as `NaN` if it falls on a "never".
fn kill_quantile_ms(values: &[f64], q: f64) -> f64 {
    let mut histogram = latency_histogram();
    for &ms in values {
        let us = if ms.is_nan() {
            NEVER_US
        } else {
            (ms * 1000.0) as u64
        };
        histogram
            .record(us)
            .expect("an auto-resizing histogram records any value");
    }
    match histogram.value_at_quantile(q) {
        us if us >= NEVER_US => f64::NAN,
        us => us as f64 / 1000.0,
    }
}

/// Unix ms now.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) async fn failover(kills: usize) {
    let (mut cluster, leader) = started_cluster().await;
    let mut jobs = JobServiceClient::new(channel(&cluster.node(leader).grpc, cluster.token()).await);
    // Overlap allowed: a kill that catches a run of `pulse` on the killed
    // node's worker (≈ 2 % of kills, the run's few milliseconds in flight
    // each second) leaves that run held by its lease (30 s by default, as
    // at-least-once requires), and with the default overlap policy (skip)
    // every fire meanwhile would be skipped: that measures the lease, not
    // the failover (`benches/notes.md`, Failover).
    jobs.create_job(pb::CreateJobRequest {
        job: Some(pb::ScheduledJob {
            id: "pulse".into(),
            r#type: "noop".into(),
            schedule: "* * * * * *".into(),
            policies: Some(pb::Policies {
                overlap: pb::OverlapPolicy::AllowAll as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("create the pulse job");
    let mut to_write = Vec::new();
    let mut to_run = Vec::new();
    for kill in 0..kills {
        let leader = cluster.wait_leader(Duration::from_secs(60)).await;
        let survivor = cluster
            .running()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a survivor");
        let addr = cluster.node(survivor).grpc.clone();
        // Let the cluster run normally for a moment between kills.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed_at = Instant::now();
        let killed_ms = now_ms();
        cluster.kill(leader);
        let write_ms = first_write(&addr, cluster.token(), kill, killed_at).await;
        let run_ms = first_run_after(&addr, cluster.token(), killed_ms, killed_at).await;
        progress(format!(
            "failover: kill {}/{kills}: write {write_ms:.0} ms, run {run_ms:.0} ms",
            kill + 1
        ));
        to_write.push(write_ms);
        to_run.push(run_ms);
        cluster.spawn(leader);
        cluster.wait_ready(Duration::from_secs(60)).await;
    }
    eprintln!();
    let (w, r) = (&to_write, &to_run);
    let result = serde_json::json!({
        "scenario": "failover",
        "kills": kills,
        "to_first_write_ms": to_write,
        "to_first_run_ms": to_run,
        "write_p50_ms": kill_quantile_ms(w, 0.5), "write_p99_ms": kill_quantile_ms(w, 0.99),
        "run_p50_ms": kill_quantile_ms(r, 0.5), "run_p99_ms": kill_quantile_ms(r, 0.99),
        // A NaN above (null in JSON) is a kill after which nothing came within 30 s.
        "kills_without_write": to_write.iter().filter(|v| v.is_nan()).count(),
        "kills_without_run": to_run.iter().filter(|v| v.is_nan()).count(),
    });
    println!("{result}");
    println!("| kills | first write p50 | p99 | first run p50 | p99 |");
    println!(
        "| {kills} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        kill_quantile_ms(w, 0.5),
        kill_quantile_ms(w, 0.99),
        kill_quantile_ms(r, 0.5),
        kill_quantile_ms(r, 0.99)
    );
}

/// Milliseconds from `since` to the first acknowledged create through `addr` (bounded: 30 s).
async fn first_write(addr: &str, secret: &str, kill: usize, since: Instant) -> f64 {
    let mut jobs = JobServiceClient::new(channel(addr, secret).await);
    let mut n = 0;
    while since.elapsed() < Duration::from_secs(30) {
        n += 1;
        let mut request = tonic::Request::new(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                id: format!("after-kill-{kill}-{n}"),
                r#type: "noop".into(),
                schedule: "@yearly".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        });
        request.set_timeout(Duration::from_millis(500));
        if jobs.create_job(request).await.is_ok() {
            return since.elapsed().as_secs_f64() * 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f64::NAN
}

/// The nodes' fire look-ahead (`--fire-ahead-ms`), ms: the agent's default
/// unless `KAIROS_FIRE_AHEAD_MS` sets it for the nodes this tool starts.
fn fire_ahead_ms() -> i64 {
    std::env::var("KAIROS_FIRE_AHEAD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(kairos::actors::timer::DEFAULT_FIRE_AHEAD.as_millis() as i64)
}

/// Milliseconds from `since` until a run of `pulse` dispatched after the
/// kill at `killed_ms` began (bounded: 30 s).
///
/// The leader commits fires and starts up to the look-ahead before their
/// nominal time, so a run the killed leader dispatched may begin on a
/// survivor just after the kill: that is not a failover. An attempt begins
/// at `max(start entry's time, nominal)`, and a start committed before the
/// kill has a nominal time at most the look-ahead later; so a run that
/// begins more than the look-ahead after the kill was started by the new
/// leader, and no run of the new leader begins earlier than that (an
/// election takes longer than the look-ahead).
async fn first_run_after(addr: &str, secret: &str, killed_ms: i64, since: Instant) -> f64 {
    let dispatched_after = killed_ms + fire_ahead_ms();
    let mut runs = RunServiceClient::new(channel(addr, secret).await);
    let mut last_seen = String::new();
    while since.elapsed() < Duration::from_secs(30) {
        let mut request = tonic::Request::new(pb::ListRunsRequest {
            job_id: "pulse".into(),
            nominal_after: Some(kairos::api::convert::ms_timestamp(killed_ms - 5_000)),
            page_size: 1000,
            ..Default::default()
        });
        request.set_timeout(Duration::from_millis(500));
        match runs.list_runs(request).await {
            Ok(page) => {
                let page = page.into_inner();
                let started: Option<i64> = page
                    .runs
                    .iter()
                    .filter_map(|r| r.started_at.as_ref().map(timestamp_ms))
                    .filter(|&t| t > dispatched_after)
                    .min();
                if let Some(t) = started {
                    // The run's own start time, measured from the kill.
                    return (t - killed_ms) as f64;
                }
                last_seen = format!("{:?}", page.runs.iter().map(run_summary).collect::<Vec<_>>());
            }
            Err(status) => last_seen = format!("list_runs failed: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not silently: what the last look found, for whoever reads the output.
    eprintln!("\nfailover: no run of `pulse` started within 30 s of the kill; last look: {last_seen}");
    f64::NAN
}

/// `nominal status attempt node` of a run, for diagnostics.
fn run_summary(run: &pb::Run) -> String {
    format!(
        "{} {:?} a{} n{}",
        run.nominal_time.as_ref().map(timestamp_ms).unwrap_or_default(),
        pb::RunStatus::try_from(run.status).unwrap_or_default(),
        run.attempt,
        run.node_id
    )
}
