//! `dispatch`: due `noop` jobs at a rate; runs completed and fire lateness
//! from the nodes' metrics.

use std::time::{Duration, Instant};

use kairos::api::convert::ms_duration;
use kairos::proto as pb;
use kairos_testkit::{http_get, TestCluster};

use crate::support::{cluster_cpu_seconds, load_jobs, progress, started_cluster};

/// What one pass over the nodes' `/metrics` reads.
struct Scraped {
    /// Succeeded attempts, summed over the nodes.
    succeeded: f64,
    /// Fire-lateness histogram buckets `(upper bound s, count)`, summed, sorted.
    lateness: Vec<(f64, f64)>,
    /// The highest applied log index (the leader's, normally).
    applied: f64,
}

/// Reads every node's `/metrics` once; see [`Scraped`].
async fn scrape(cluster: &TestCluster) -> Scraped {
    let mut succeeded = 0.0;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut applied = 0.0f64;
    for node in &cluster.nodes {
        let Ok((200, body)) = http_get(&node.http, "/metrics").await else {
            continue;
        };
        for line in body.lines() {
            let value = || {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("kairos_attempts_total") && line.contains("outcome=\"succeeded\"") {
                succeeded += value();
            } else if let Some(rest) = line.strip_prefix("kairos_fire_lateness_seconds_bucket{le=\"") {
                let le = rest.split('"').next().unwrap_or("+Inf");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                match buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, count)) => *count += value(),
                    None => buckets.push((bound, value())),
                }
            } else if line.starts_with("kairos_raft_applied_index ") {
                applied = applied.max(value());
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Scraped {
        succeeded,
        lateness: buckets,
        applied,
    }
}

/// The upper bound (ms) of the bucket holding quantile `q` of the histogram
/// difference `after - before` (cumulative buckets).
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(b, c)| {
            (
                *b,
                c - before.iter().find(|(x, _)| x == b).map_or(0.0, |(_, c)| *c),
            )
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, c)| *c);
    counts
        .iter()
        .find(|(_, c)| *c >= total * q)
        .map_or(f64::NAN, |(b, _)| b * 1000.0)
}

/// Succeeded (and failed) runs each dispatch job keeps.
const KEEP_RUNS: u32 = 2;

pub(crate) async fn dispatch(jobs: usize, rate: u64, duration: Duration) {
    let (cluster, leader) = started_cluster().await;
    // M jobs every I ms, phases spread evenly: M / I fires per ms = rate.
    let interval_ms = ((jobs as u64 * 1000) / rate.max(1)).max(1000);
    let actual_rate = jobs as f64 * 1000.0 / interval_ms as f64;
    let loaded = Instant::now();
    load_jobs(
        &cluster.node(leader).grpc,
        cluster.token(),
        jobs,
        32,
        "dispatch",
        move |i| {
            let phase = (i as u64 * interval_ms) / jobs as u64;
            pb::ScheduledJob {
                id: format!("due-{i:07}"),
                r#type: "noop".into(),
                schedule_spec: Some(pb::ScheduleSpec {
                    kind: Some(pb::schedule_spec::Kind::Every(pb::IntervalSchedule {
                        interval: Some(ms_duration(interval_ms)),
                        phase: Some(ms_duration(phase)),
                    })),
                }),
                policies: Some(pb::Policies {
                    catchup: pb::CatchupPolicy::Latest as i32,
                    // Each job keeps its last KEEP_RUNS succeeded runs, so that
                    // after the warm-up every fire also drops its job's oldest
                    // run, as in a long-running cluster (with the default of 20
                    // that steady state starts 20 intervals in).
                    history: Some(pb::HistoryLimits {
                        keep_succeeded: KEEP_RUNS,
                        keep_failed: KEEP_RUNS,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
        },
    )
    .await;
    // Warm up until history retention is in its steady state, then measure.
    tokio::time::sleep(Duration::from_millis(interval_ms * (KEEP_RUNS as u64 + 1))).await;
    let (before, cpu_before) = (scrape(&cluster).await, cluster_cpu_seconds(&cluster));
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let succeeded = scrape(&cluster).await.succeeded;
        progress(format!(
            "dispatch: {:>5.1} s, {:.0} runs/s",
            started.elapsed().as_secs_f64(),
            (succeeded - before.succeeded) / started.elapsed().as_secs_f64()
        ));
    }
    let (after, cpu_after) = (scrape(&cluster).await, cluster_cpu_seconds(&cluster));
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    let runs_per_s = (after.succeeded - before.succeeded) / seconds;
    // What the run rate costs: Raft entries (each one is an fsync on every
    // node) and the three nodes' CPU (`benches/notes.md`, "What an entry costs").
    let entries_per_s = (after.applied - before.applied) / seconds;
    let node_cpu_cores = (cpu_after - cpu_before) / seconds;
    let (p50, p99, p999) = (
        bucket_quantile(&before.lateness, &after.lateness, 0.5),
        bucket_quantile(&before.lateness, &after.lateness, 0.99),
        bucket_quantile(&before.lateness, &after.lateness, 0.999),
    );
    let result = serde_json::json!({
        "scenario": "dispatch",
        "jobs": jobs,
        "offered_fires_per_s": actual_rate,
        "load_seconds": loaded.elapsed().as_secs_f64() - seconds,
        "seconds": seconds,
        "runs_per_s": runs_per_s,
        "lateness_p50_ms_at_most": p50,
        "lateness_p99_ms_at_most": p99,
        "lateness_p999_ms_at_most": p999,
        "raft_entries_per_s": entries_per_s,
        "node_cpu_cores": node_cpu_cores,
    });
    println!("{result}");
    println!(
        "| jobs | offered/s | completed runs/s | lateness p50 | p99 | p999 (bucket bounds, ms) | entries/s | node CPU (cores) |"
    );
    println!(
        "| {jobs} | {actual_rate:.0} | {runs_per_s:.0} | ≤{p50:.1} | ≤{p99:.1} | ≤{p999:.1} | {entries_per_s:.0} | {node_cpu_cores:.2} |"
    );
}
