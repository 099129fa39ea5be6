//! `failover`: repeated stops of the leader, by kill -9 (a crash) or
//! SIGTERM (a planned stop: the leader hands over first), or both
//! alternately; after each, the time to the first acknowledged write through
//! a survivor (a trigger of the `pulse` job), to that triggered run's start,
//! and to the first scheduled run of `pulse` (every second) dispatched after
//! the stop. The scheduled run measures a crash well (the election takes
//! most of a second) but not a planned stop: once a handover takes a few
//! milliseconds, the next fire is simply the next whole second.

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

/// How the leader is stopped in a round of the `failover` scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StopMode {
    /// kill -9: a crash; the followers elect after their timeout.
    Kill,
    /// SIGTERM: a planned stop; the leader hands leadership over first.
    Term,
    /// Alternate the two, starting with SIGTERM (both measured in one run).
    Both,
}

/// One side's figures (ms per stop; `NaN` for "never within 30 s").
#[derive(Default)]
struct Side {
    to_write: Vec<f64>,
    to_triggered_run: Vec<f64>,
    to_scheduled_run: Vec<f64>,
}

impl Side {
    fn json(&self, stop: &str) -> serde_json::Value {
        let (w, t, r) = (&self.to_write, &self.to_triggered_run, &self.to_scheduled_run);
        serde_json::json!({
            "stop": stop,
            "stops": w.len(),
            "to_first_write_ms": w,
            "to_triggered_run_ms": t,
            "to_first_scheduled_run_ms": r,
            "write_p50_ms": kill_quantile_ms(w, 0.5), "write_p99_ms": kill_quantile_ms(w, 0.99),
            "triggered_run_p50_ms": kill_quantile_ms(t, 0.5), "triggered_run_p99_ms": kill_quantile_ms(t, 0.99),
            "scheduled_run_p50_ms": kill_quantile_ms(r, 0.5), "scheduled_run_p99_ms": kill_quantile_ms(r, 0.99),
            // A NaN above (null in JSON) is a stop after which nothing came within 30 s.
            "stops_without_write": w.iter().filter(|v| v.is_nan()).count(),
            "stops_without_run": t.iter().chain(r).filter(|v| v.is_nan()).count(),
        })
    }

    fn row(&self, stop: &str) -> String {
        let q = kill_quantile_ms;
        let (w, t, r) = (&self.to_write, &self.to_triggered_run, &self.to_scheduled_run);
        format!(
            "| {stop} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            w.len(),
            q(w, 0.5),
            q(w, 0.99),
            q(t, 0.5),
            q(t, 0.99),
            q(r, 0.5),
            q(r, 0.99)
        )
    }
}

pub(crate) async fn failover(kills: usize, mode: StopMode) {
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
    let (mut killed, mut terminated) = (Side::default(), Side::default());
    for round in 0..kills {
        let stop = match mode {
            StopMode::Both if round % 2 == 0 => StopMode::Term,
            StopMode::Both => StopMode::Kill,
            other => other,
        };
        let leader = cluster.wait_leader(Duration::from_secs(60)).await;
        // A SIGTERM hands over only once every member runs a version that
        // knows how (a fresh or restarted cluster gets there in seconds).
        let own = kairos::cluster_version::own().to_string();
        cluster
            .wait_cluster_version(leader, &own, Duration::from_secs(60))
            .await;
        let survivor = cluster
            .running()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a survivor");
        let addr = cluster.node(survivor).grpc.clone();
        // Let the cluster run normally for a moment between stops.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stopped_at = Instant::now();
        let stopped_ms = now_ms();
        match stop {
            StopMode::Term => cluster.request_stop(leader),
            _ => cluster.kill(leader),
        }
        let side = match stop {
            StopMode::Term => &mut terminated,
            _ => &mut killed,
        };
        // The triggered run first: its trigger is the first write after the
        // stop, so what it measures is not helped by an earlier one.
        let (triggered_ms, write_ms) =
            first_triggered_run(&addr, cluster.token(), stopped_ms, stopped_at).await;
        let run_ms = first_run_after(&addr, cluster.token(), stopped_ms, stopped_at).await;
        progress(format!(
            "failover: stop {}/{kills} ({stop:?}): write {write_ms:.0} ms, triggered run {triggered_ms:.0} ms, scheduled run {run_ms:.0} ms",
            round + 1
        ));
        side.to_write.push(write_ms);
        side.to_triggered_run.push(triggered_ms);
        side.to_scheduled_run.push(run_ms);
        if stop == StopMode::Term {
            cluster.stop(leader);
        }
        cluster.spawn(leader);
        cluster.wait_ready(Duration::from_secs(60)).await;
    }
    eprintln!();
    let sides: Vec<(&str, &Side)> = [("SIGTERM", &terminated), ("kill -9", &killed)]
        .into_iter()
        .filter(|(_, side)| !side.to_write.is_empty())
        .collect();
    let result = serde_json::json!({
        "scenario": "failover",
        "stops": kills,
        "sides": sides.iter().map(|(stop, side)| side.json(stop)).collect::<Vec<_>>(),
    });
    println!("{result}");
    println!("| stop | stops | first write p50 | p99 | triggered run p50 | p99 | scheduled run p50 | p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (stop, side) in sides {
        println!("{}", side.row(stop));
    }
}

/// A run of `pulse` triggered through `addr` right after the stop at
/// `stopped_ms`: milliseconds from `since` until that run began (the run's
/// own start time, measured from the stop), and until the trigger was
/// acknowledged (bounded: 30 s each).
///
/// The trigger is a write; while the leader hands over (or is being
/// replaced after a crash) the survivor holds it until a leader takes it,
/// so the run is created and dispatched by the new leader.
async fn first_triggered_run(addr: &str, secret: &str, stopped_ms: i64, since: Instant) -> (f64, f64) {
    let mut runs = RunServiceClient::new(channel(addr, secret).await);
    let mut acknowledged = None;
    while acknowledged.is_none() && since.elapsed() < Duration::from_secs(30) {
        let mut request = tonic::Request::new(pb::TriggerJobRequest { id: "pulse".into() });
        request.set_timeout(Duration::from_secs(10));
        match runs.trigger_job(request).await {
            Ok(run) => acknowledged = Some((run.into_inner().id, since.elapsed().as_secs_f64() * 1000.0)),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let Some((run_id, write_ms)) = acknowledged else {
        eprintln!("\nfailover: no trigger of `pulse` was acknowledged within 30 s of the stop");
        return (f64::NAN, f64::NAN);
    };
    while since.elapsed() < Duration::from_secs(30) {
        let mut request = tonic::Request::new(pb::GetRunRequest {
            id: run_id,
            ..Default::default()
        });
        request.set_timeout(Duration::from_millis(500));
        if let Ok(run) = runs.get_run(request).await {
            if let Some(started) = run.into_inner().started_at.as_ref().map(timestamp_ms) {
                return ((started - stopped_ms) as f64, write_ms);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("\nfailover: triggered run {run_id} of `pulse` did not start within 30 s of the stop");
    (f64::NAN, write_ms)
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
