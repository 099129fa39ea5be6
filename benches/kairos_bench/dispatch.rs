//! `dispatch`: due `noop` jobs at a rate; runs completed and fire lateness
//! from the nodes' metrics. With `--external` (or `--compare-external`,
//! internal first then external, each on a fresh cluster, in one process
//! run) the jobs are of the type [`EXTERNAL_TYPE`], served by in-process
//! workers of the Rust SDK (`kairos-worker`) whose handler returns at once;
//! runs completed are the results the cluster recorded (`TaskCompleted` ok)
//! and start lateness is handler start − nominal time, exact (an HDR
//! histogram in µs), measured by the workers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use kairos::api::convert::ms_duration;
use kairos::proto as pb;
use kairos_testkit::{http_get, TestCluster};
use kairos_worker::{
    CancellationToken, JobTypeSpec, TaskContext, TaskError, Worker, WorkerConfig, WorkerEvent,
};

use crate::support::{
    cluster_cpu_seconds, latency_histogram, load_jobs, progress, quantile_ms, started_cluster_with,
};

/// The job type the external side's jobs have.
pub(crate) const EXTERNAL_TYPE: &str = "bench.noop";

/// Which workers run the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The nodes' own worker pools (`noop`).
    Internal,
    /// In-process SDK workers ([`EXTERNAL_TYPE`]).
    External,
}

/// The external workers of one measurement.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExternalArgs {
    /// How many workers.
    pub workers: usize,
    /// Capacity (poll loops) of each.
    pub capacity: u32,
}

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

/// Runs the `dispatch` scenario on each of `sides`, one after the other,
/// each on its own cluster, and prints both results.
pub(crate) async fn dispatch(
    jobs: usize,
    rate: u64,
    duration: Duration,
    sides: &[Side],
    external: ExternalArgs,
    compare_tracing: bool,
) {
    let mut rows = Vec::new();
    if compare_tracing {
        // Internal workers; tracing off, sampling 0.01 and 1.0, each on a
        // fresh cluster exporting to an in-process OTLP receiver.
        let (endpoint, received) = crate::support::start_span_sink().await;
        for (name, flags) in crate::support::tracing_sides(&endpoint) {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let label = format!("tracing {name}");
            rows.push(
                dispatch_once(
                    jobs,
                    rate,
                    duration,
                    Side::Internal,
                    external,
                    &flags,
                    Some(&label),
                )
                .await,
            );
        }
        eprintln!(
            "spans received: {}",
            received.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    for &side in sides.iter().filter(|_| !compare_tracing) {
        rows.push(dispatch_once(jobs, rate, duration, side, external, &[], None).await);
    }
    println!(
        "| side | jobs | offered/s | completed runs/s | lateness p50 | p99 | p999 (ms) | entries/s | node CPU (cores) | bench CPU (cores) |"
    );
    for row in rows {
        println!("{row}");
    }
}

/// What the in-process workers saw, shared by their handlers and the event reader.
#[derive(Default)]
struct Seen {
    /// Handler start − nominal time, µs (0 for a handler started early).
    lateness: Option<Histogram<u64>>,
    /// Handlers started before their nominal time.
    early: u64,
    /// Results the cluster recorded.
    completed: u64,
    /// Results discarded or failed.
    not_completed: u64,
}

impl Seen {
    fn reset(&mut self) {
        self.lateness = Some(latency_histogram());
        self.early = 0;
        self.completed = 0;
        self.not_completed = 0;
    }
}

/// Starts `args.workers` SDK workers of [`EXTERNAL_TYPE`] against the
/// cluster's three nodes (worker i tries node i mod 3 first), waits until
/// each registered, and returns what they see.
async fn start_workers(
    cluster: &TestCluster,
    args: ExternalArgs,
    stop: &CancellationToken,
) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    seen.lock().expect("seen").reset();
    let endpoints: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.grpc))
        .collect();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..args.workers {
        let mut ordered = endpoints.clone();
        ordered.rotate_left(i % endpoints.len());
        let config = WorkerConfig {
            endpoints: ordered,
            token: Some(cluster.token().to_string()),
            worker_name: format!("bench-{i}"),
            job_types: vec![JobTypeSpec::new(EXTERNAL_TYPE)],
            capacity: args.capacity,
            ..WorkerConfig::default()
        };
        let handler_seen = seen.clone();
        let handler = Arc::new(move |task: TaskContext| {
            let seen = handler_seen.clone();
            async move {
                let now = SystemTime::now();
                let nominal = task
                    .nominal_time
                    .ok_or_else(|| TaskError::non_retryable("no nominal time"))?;
                let mut seen = seen.lock().expect("seen");
                let late_us = match now.duration_since(nominal) {
                    Ok(late) => late.as_micros() as u64,
                    Err(_) => {
                        seen.early += 1;
                        0
                    }
                };
                if let Some(h) = seen.lateness.as_mut() {
                    // `record` grows the histogram (`saturating_record` would clamp at its initial 2 µs).
                    h.record(late_us).expect("auto-resizing histogram");
                }
                Ok(String::new())
            }
        });
        let worker = Worker::new(config).with_events(events_tx.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.serve(handler, stop).await {
                eprintln!("\nworker bench-{i} stopped: {e}");
            }
        });
    }
    drop(events_tx);
    let mut registered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while registered < args.workers {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("every worker registered within 60 s")
            .expect("worker events");
        if matches!(event, WorkerEvent::Registered { .. }) {
            registered += 1;
        }
    }
    let reader_seen = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let WorkerEvent::TaskCompleted { outcome, .. } = event {
                let mut seen = reader_seen.lock().expect("seen");
                match outcome {
                    Ok(()) => seen.completed += 1,
                    Err(_) => seen.not_completed += 1,
                }
            }
        }
    });
    seen
}

/// CPU time (user + system) this process (the load tool, with its in-process workers) used so far, seconds.
fn own_cpu_seconds() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map_or(0.0, |s| {
            (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64
        })
}

/// One measurement on a fresh cluster; returns its table row.
async fn dispatch_once(
    jobs: usize,
    rate: u64,
    duration: Duration,
    side: Side,
    external: ExternalArgs,
    agent_flags: &[&str],
    label: Option<&str>,
) -> String {
    let (cluster, leader) = started_cluster_with(agent_flags).await;
    let stop = CancellationToken::new();
    let _stop_workers = stop.clone().drop_guard();
    let seen = match side {
        Side::Internal => None,
        Side::External => Some(start_workers(&cluster, external, &stop).await),
    };
    let job_type = match side {
        Side::Internal => "noop",
        Side::External => EXTERNAL_TYPE,
    };
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
                r#type: job_type.into(),
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
    let completed = |scraped: &Scraped| match &seen {
        None => scraped.succeeded,
        Some(seen) => seen.lock().expect("seen").completed as f64,
    };
    if let Some(seen) = &seen {
        seen.lock().expect("seen").reset();
    }
    let (before, cpu_before, own_before) = (
        scrape(&cluster).await,
        cluster_cpu_seconds(&cluster),
        own_cpu_seconds(),
    );
    let completed_before = completed(&before);
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = scrape(&cluster).await;
        progress(format!(
            "dispatch ({side:?}): {:>5.1} s, {:.0} runs/s",
            started.elapsed().as_secs_f64(),
            (completed(&now) - completed_before) / started.elapsed().as_secs_f64()
        ));
    }
    let (after, cpu_after, own_after) = (
        scrape(&cluster).await,
        cluster_cpu_seconds(&cluster),
        own_cpu_seconds(),
    );
    let seconds = started.elapsed().as_secs_f64();
    let completed_after = completed(&after);
    let seen = seen.map(|seen| {
        let mut seen = seen.lock().expect("seen");
        let taken = std::mem::take(&mut *seen);
        seen.reset();
        taken
    });
    eprintln!();
    let runs_per_s = (completed_after - completed_before) / seconds;
    // What the run rate costs: Raft entries (each one is an fsync on every
    // node) and the three nodes' CPU (`benches/notes.md`, "What an entry costs").
    let entries_per_s = (after.applied - before.applied) / seconds;
    let node_cpu_cores = (cpu_after - cpu_before) / seconds;
    let bench_cpu_cores = (own_after - own_before) / seconds;
    let mut result = serde_json::json!({
        "scenario": "dispatch",
        "side": format!("{side:?}").to_lowercase(),
        "label": label,
        "jobs": jobs,
        "offered_fires_per_s": actual_rate,
        "load_seconds": loaded.elapsed().as_secs_f64() - seconds,
        "seconds": seconds,
        "runs_per_s": runs_per_s,
        "raft_entries_per_s": entries_per_s,
        "node_cpu_cores": node_cpu_cores,
        "bench_cpu_cores": bench_cpu_cores,
    });
    let (p50, p99, p999, bound) = match &seen {
        None => {
            let (p50, p99, p999) = (
                bucket_quantile(&before.lateness, &after.lateness, 0.5),
                bucket_quantile(&before.lateness, &after.lateness, 0.99),
                bucket_quantile(&before.lateness, &after.lateness, 0.999),
            );
            result["lateness_p50_ms_at_most"] = p50.into();
            result["lateness_p99_ms_at_most"] = p99.into();
            result["lateness_p999_ms_at_most"] = p999.into();
            (p50, p99, p999, "≤")
        }
        Some(seen) => {
            let h = seen.lateness.as_ref().expect("histogram");
            let (p50, p99, p999) = (quantile_ms(h, 0.5), quantile_ms(h, 0.99), quantile_ms(h, 0.999));
            result["workers"] = external.workers.into();
            result["capacity"] = external.capacity.into();
            result["handler_starts"] = h.len().into();
            result["started_early"] = seen.early.into();
            result["results_not_recorded"] = seen.not_completed.into();
            result["start_lateness_p50_ms"] = p50.into();
            result["start_lateness_p99_ms"] = p99.into();
            result["start_lateness_p999_ms"] = p999.into();
            result["start_lateness_max_ms"] = (h.max() as f64 / 1000.0).into();
            (p50, p99, p999, "")
        }
    };
    println!("{result}");
    let side = match side {
        _ if label.is_some() => label.unwrap_or_default().to_string(),
        Side::Internal => "internal (noop)".to_string(),
        Side::External => format!(
            "external ({EXTERNAL_TYPE}, {} SDK workers × {})",
            external.workers, external.capacity
        ),
    };
    format!(
        "| {side} | {jobs} | {actual_rate:.0} | {runs_per_s:.0} | {bound}{p50:.1} | {bound}{p99:.1} | {bound}{p999:.1} | {entries_per_s:.0} | {node_cpu_cores:.2} | {bench_cpu_cores:.2} |"
    )
}
