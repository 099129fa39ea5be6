//! `kairos-bench`, the load tool. Each scenario starts its own
//! three-node cluster of release binaries on loopback (or, for `create`, uses
//! `--endpoints` of a running one), drives it for a bounded time, prints a
//! progress line on stderr while it runs, then one JSON object and a short
//! table on stdout.
//!
//! ```text
//! cargo bench --bench kairos-bench -- create   --clients 64 --payload 256 --duration 10s
//! cargo bench --bench kairos-bench -- dispatch --jobs 1000 --rate 500 --duration 20s
//! cargo bench --bench kairos-bench -- failover --kills 20
//! ```
//!
//! - `create`: N concurrent gRPC clients create jobs (payload of the given
//!   size) for the duration; throughput and latency p50/p99/p999. Without
//!   `--endpoints` every client sends to the leader of the cluster it starts.
//!   Each client has its own connection unless `--connections` sets fewer,
//!   shared round-robin (`benches/etcd-compare.sh` runs it beside etcd).
//! - `dispatch`: M `noop` jobs on `every` schedules whose phases spread their
//!   fires evenly at the given rate; sustained runs/s completed (succeeded
//!   attempts) and fire lateness (nominal → handler start) p50/p99/p999 from
//!   the nodes' `kairos_fire_lateness_seconds` histograms (bucket upper
//!   bounds, so a percentile reads "at most").
//! - `failover`: kill -9 the leader repeatedly; time from the kill to the
//!   first acknowledged write through a survivor, and to the first run
//!   dispatched after the kill (a job fires every second), each kill's figures
//!   and p50/p99.
//! - `scale`: load N daily cron jobs (64-byte payload, each with a request
//!   id as the CLI sends), due 12 hours after the start so that none fires
//!   while it measures (a fire would add a run and counters per job: that
//!   is the memory of runs, not of jobs); resident memory growth per job of
//!   every node (leader and followers, from /proc/<pid>/status), data
//!   directory size, and the time a restarted follower takes to answer
//!   `/readyz` 200.
//!
//! Latency percentiles come from HDR histograms of microseconds (3
//! significant digits) and are printed in milliseconds; CPU time and
//! resident memory of the nodes are read from `/proc` with `procfs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use kairos::api::convert::{ms_duration, timestamp_ms};
use kairos::proto as pb;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;
use kairos_testkit::{http_get, TestCluster};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "kairos-bench", about = "Load tool for Kairos")]
enum Scenario {
    /// Concurrent job creates.
    Create {
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Payload bytes per job.
        #[arg(long, default_value_t = 256)]
        payload: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Endpoints of a running cluster (host:port,...); default: start one.
        #[arg(long)]
        endpoints: Option<String>,
        /// Connections the clients share round-robin; default: one per client.
        #[arg(long)]
        connections: Option<usize>,
    },
    /// Due `noop` jobs at a rate.
    Dispatch {
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Fires per second.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Repeated leader kills.
    Failover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
    },
    /// Many cron jobs: memory per job, disk, restart time.
    Scale {
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Concurrent loading clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
}

fn main() {
    // `cargo bench` passes `--bench`; the scenario flags follow `--`.
    let args = std::env::args().filter(|a| a != "--bench");
    let scenario = Scenario::parse_from(args);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        match scenario {
            Scenario::Create {
                clients,
                payload,
                duration,
                endpoints,
                connections,
            } => create(clients, payload, duration, endpoints, connections).await,
            Scenario::Dispatch { jobs, rate, duration } => dispatch(jobs, rate, duration).await,
            Scenario::Failover { kills } => failover(kills).await,
            Scenario::Scale { jobs, clients } => scale(jobs, clients).await,
        }
    });
}

/// An empty histogram of latencies in microseconds, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits")
}

/// The latency at quantile `q` of `latencies` (µs), in ms.
fn quantile_ms(latencies: &Histogram<u64>, q: f64) -> f64 {
    latencies.value_at_quantile(q) as f64 / 1000.0
}

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

/// A progress line, overwritten in place.
fn progress(line: String) {
    eprint!("\r{line:<100}");
}

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Extra agent flags for the clusters this tool starts: `KAIROS_BENCH_WORKERS`
/// sets `--workers` (default: the agent's own, 4 × cores), and
/// `KAIROS_BENCH_AGENT_ARGS` adds any flags (split on spaces), e.g.
/// `--election-timeout-ms 250 --heartbeat-ms 50`. A worker slot is held from
/// the `StartAttempts` commit to the `FinishAttempts` commit, so with `noop`
/// runs the slots, not the scheduler, bound the run rate unless there are
/// many of them.
fn agent_args() -> Vec<&'static str> {
    let mut args = Vec::new();
    if let Ok(n) = std::env::var("KAIROS_BENCH_WORKERS") {
        args.push("--workers".to_string());
        args.push(n);
    }
    if let Ok(extra) = std::env::var("KAIROS_BENCH_AGENT_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    // The cluster lives as long as the tool: leaking a few flags is fine.
    args.into_iter()
        .map(|a| &*Box::leak(a.into_boxed_str()))
        .collect()
}

async fn started_cluster() -> (TestCluster, u64) {
    let cluster = TestCluster::start(3, &agent_args());
    cluster.wait_ready(Duration::from_secs(60)).await;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await;
    (cluster, leader)
}

/// One write of the `create` scenario: a job that fires once a year, so that
/// none fires while it is measured.
async fn create_job(
    jobs: &mut JobServiceClient<Channel>,
    key: String,
    body: &str,
) -> Result<(), tonic::Status> {
    let job = pb::ScheduledJob {
        id: key,
        r#type: "noop".into(),
        schedule: "@yearly".into(),
        payload: body.as_bytes().to_vec(),
        ..Default::default()
    };
    let request = pb::CreateJobRequest {
        job: Some(job),
        request_id: String::new(),
    };
    jobs.create_job(request).await.map(|_| ())
}

async fn create(
    clients: usize,
    payload: usize,
    duration: Duration,
    endpoints: Option<String>,
    connections: Option<usize>,
) {
    let target = "kairos";
    let (cluster, addrs) = match endpoints {
        Some(list) => (None, list.split(',').map(str::to_string).collect::<Vec<_>>()),
        None => {
            let (cluster, leader) = started_cluster().await;
            let addr = cluster.node(leader).grpc.clone();
            (Some(cluster), vec![addr])
        }
    };
    let acknowledged = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + duration;
    let body = serde_json::json!({ "pad": "x".repeat(payload.saturating_sub(12)) }).to_string();
    let mut channels = Vec::new();
    for i in 0..connections.unwrap_or(clients).clamp(1, clients.max(1)) {
        channels.push(channel(&addrs[i % addrs.len()]).await);
    }
    let mut tasks = Vec::new();
    for client in 0..clients {
        let channel = channels[client % channels.len()].clone();
        let (acknowledged, errors, body) = (acknowledged.clone(), errors.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut jobs = JobServiceClient::new(channel);
            let mut latencies = latency_histogram();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let sent = Instant::now();
                match create_job(&mut jobs, format!("bench-{client}-{n}"), &body).await {
                    Ok(_) => {
                        latencies
                            .record(sent.elapsed().as_micros() as u64)
                            .expect("an auto-resizing histogram records any value");
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = acknowledged.load(Ordering::Relaxed);
        progress(format!(
            "create ({target}): {:>5.1} s, {done} acknowledged, {:.0}/s",
            started.elapsed().as_secs_f64(),
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latency_histogram();
    for task in tasks {
        latencies
            .add(task.await.expect("client"))
            .expect("histograms of one precision");
    }
    let result = serde_json::json!({
        "scenario": "create",
        "target": target,
        "clients": clients,
        "payload_bytes": payload,
        "creates": latencies.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": seconds,
        "throughput_per_s": latencies.len() as f64 / seconds,
        "p50_ms": quantile_ms(&latencies, 0.5),
        "p99_ms": quantile_ms(&latencies, 0.99),
        "p999_ms": quantile_ms(&latencies, 0.999),
    });
    println!("{result}");
    println!("| target | clients | payload | writes | per s | p50 ms | p99 ms | p999 ms |");
    println!(
        "| {target} | {clients} | {payload} B | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
        latencies.len(),
        latencies.len() as f64 / seconds,
        quantile_ms(&latencies, 0.5),
        quantile_ms(&latencies, 0.99),
        quantile_ms(&latencies, 0.999)
    );
    drop(cluster);
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

async fn dispatch(jobs: usize, rate: u64, duration: Duration) {
    let (cluster, leader) = started_cluster().await;
    // M jobs every I ms, phases spread evenly: M / I fires per ms = rate.
    let interval_ms = ((jobs as u64 * 1000) / rate.max(1)).max(1000);
    let actual_rate = jobs as f64 * 1000.0 / interval_ms as f64;
    let loaded = Instant::now();
    load_jobs(&cluster.node(leader).grpc, jobs, 32, "dispatch", move |i| {
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
    })
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

/// Unix ms now.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn failover(kills: usize) {
    let (mut cluster, leader) = started_cluster().await;
    let mut jobs = JobServiceClient::new(channel(&cluster.node(leader).grpc).await);
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
        let write_ms = first_write(&addr, kill, killed_at).await;
        let run_ms = first_run_after(&addr, killed_ms, killed_at).await;
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
async fn first_write(addr: &str, kill: usize, since: Instant) -> f64 {
    let mut jobs = JobServiceClient::new(channel(addr).await);
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
async fn first_run_after(addr: &str, killed_ms: i64, since: Instant) -> f64 {
    let dispatched_after = killed_ms + fire_ahead_ms();
    let mut runs = RunServiceClient::new(channel(addr).await);
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

/// CPU time (user + system) used so far by the running nodes, seconds.
fn cluster_cpu_seconds(cluster: &TestCluster) -> f64 {
    let ticks: u64 = cluster
        .nodes
        .iter()
        .filter_map(|node| node.pid())
        .filter_map(|pid| {
            procfs::process::Process::new(pid as i32)
                .and_then(|p| p.stat())
                .ok()
        })
        .map(|stat| stat.utime + stat.stime)
        .sum();
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// Resident memory of `pid` in bytes (VmRSS).
fn resident_bytes(pid: u32) -> u64 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .ok()
        .and_then(|status| status.vmrss)
        .map_or(0, |kb| kb * 1024)
}

/// Bytes under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Creates jobs `0..jobs` (built by `job`) with `clients` concurrent clients
/// against `addr`, showing progress. A create is retried (same request id, so
/// a retry of one that did commit is answered as the first) at most 5 times;
/// a job that still fails stops the tool with the server's error.
async fn load_jobs(
    addr: &str,
    jobs: usize,
    clients: usize,
    label: &'static str,
    job: impl Fn(usize) -> pb::ScheduledJob + Send + Sync + 'static,
) {
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, next, done, job) = (addr.to_string(), next.clone(), done.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = JobServiceClient::new(channel(&addr).await);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= jobs {
                    return;
                }
                let request = pb::CreateJobRequest {
                    job: Some(job(i)),
                    request_id: format!("{label}-{i}"),
                };
                let mut attempt = 0;
                while let Err(status) = client.create_job(request.clone()).await {
                    attempt += 1;
                    assert!(attempt < 5, "create {i} failed 5 times, last: {status}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = done.load(Ordering::Relaxed);
        progress(format!(
            "{label}: loading jobs {done}/{jobs}, {:.0}/s",
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    for task in tasks {
        task.await.expect("loader");
    }
}

/// The size of the last snapshot a node built, from its log ("snapshot built ... bytes=N").
fn last_snapshot_bytes(log: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("snapshot built"))
        .filter_map(|l| l.split("bytes=").nth(1)?.split_whitespace().next()?.parse().ok())
        .next_back()
}

async fn scale(jobs: usize, clients: usize) {
    let (mut cluster, leader) = started_cluster().await;
    let before: Vec<(u64, u64)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.pid().map_or(0, resident_bytes)))
        .collect();
    let started = Instant::now();
    // Daily, 12 hours from now: no fire while the scenario measures.
    let due = chrono::Utc::now() + chrono::Duration::hours(12);
    let daily = {
        use chrono::Timelike;
        format!("{} {} * * *", due.minute(), due.hour())
    };
    let schedule = daily.clone();
    load_jobs(&cluster.node(leader).grpc, jobs, clients, "scale", move |i| {
        pb::ScheduledJob {
            id: format!("scale-{i:08}"),
            r#type: "noop".into(),
            schedule: schedule.clone(),
            payload: vec![b'x'; 64],
            ..Default::default()
        }
    })
    .await;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!();
    // Memory at rest: write records (a retry's answer, kept 60 s) expire
    // when an entry is applied after their time; wait that out, then write once.
    progress("scale: waiting 65 s for write records to expire".into());
    tokio::time::sleep(Duration::from_secs(
        std::env::var("KAIROS_BENCH_SETTLE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(65),
    ))
    .await;
    let mut client = JobServiceClient::new(channel(&cluster.node(leader).grpc).await);
    client
        .create_job(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                id: "scale-settle".into(),
                r#type: "noop".into(),
                schedule: daily,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("settling write");
    eprintln!();
    let per_node: Vec<serde_json::Value> = cluster
        .nodes
        .iter()
        .map(|n| {
            let base = before.iter().find(|(id, _)| *id == n.id).map_or(0, |(_, b)| *b);
            let now = n.pid().map_or(0, resident_bytes);
            serde_json::json!({
                "node": n.id,
                "role": if n.id == leader { "leader" } else { "follower" },
                "resident_mib": now as f64 / (1 << 20) as f64,
                "bytes_per_job": now.saturating_sub(base) as f64 / jobs as f64,
                "data_dir_mib": dir_bytes(&n.data_dir) as f64 / (1 << 20) as f64,
            })
        })
        .collect();
    // Restart a follower and time it to ready.
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.kill(follower);
    let restarted = Instant::now();
    cluster.spawn(follower);
    let http = cluster.node(follower).http.clone();
    let ready_seconds = loop {
        if let Ok((200, _)) = http_get(&http, "/readyz").await {
            break restarted.elapsed().as_secs_f64();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "restarted node not ready in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let restarted_resident = cluster.node(follower).pid().map_or(0, resident_bytes);
    let result = serde_json::json!({
        "scenario": "scale",
        "jobs": jobs,
        "load_seconds": load_seconds,
        "creates_per_s": jobs as f64 / load_seconds,
        "nodes": per_node,
        "restart_to_ready_s": ready_seconds,
        "restarted_resident_mib": restarted_resident as f64 / (1 << 20) as f64,
        "restarted_bytes_per_job": restarted_resident as f64 / jobs as f64,
        "snapshot_bytes": last_snapshot_bytes(&cluster.node(leader).log),
    });
    println!("{result}");
    println!("| node | role | resident MiB | bytes/job | data dir MiB |");
    for n in &per_node {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            n["node"],
            n["role"].as_str().unwrap_or(""),
            n["resident_mib"].as_f64().unwrap_or(0.0),
            n["bytes_per_job"].as_f64().unwrap_or(0.0),
            n["data_dir_mib"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "restart to ready: {ready_seconds:.1} s (then {:.0} bytes/job resident); load: {:.0} creates/s; snapshot: {} bytes",
        restarted_resident as f64 / jobs as f64,
        jobs as f64 / load_seconds,
        result["snapshot_bytes"]
    );
}
