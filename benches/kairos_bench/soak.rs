//! `soak`: a three-node cluster held at a steady fraction of its measured
//! capacity for a long time, and whether its memory, open files and disk
//! stay flat.
//!
//! 1. **Capacity.** 64 closed-loop clients churn jobs against the leader:
//!    each operation creates a job that never fires (`@yearly`) and deletes
//!    the one created `--population` operations before, so the number of
//!    jobs stays at the population. The first [`CAPACITY_WINDOW`] fills the
//!    audit log to its bound (`--audit-retain`, passed to the nodes); the
//!    operations per second of the second are the capacity.
//! 2. **Soak.** Operations of the same kind are started open-loop at
//!    `--fraction` of that capacity for `--duration`, at most
//!    [`MAX_IN_FLIGHT`] at a time (an operation that finds none free is
//!    counted as skipped, not queued).
//! 3. **Samples.** Every `--sample-every`, each node's resident memory
//!    (VmRSS), open file descriptors (`/proc/PID/fd`) and data dir size go
//!    to `soak.csv` in `--out`; `soak.svg` draws them.
//! 4. **Judgement.** Growth is the mean of the last `--window` of samples
//!    against the mean of the `--window` after `--warmup` (the audit log,
//!    kept to `--audit-retain` entries, and the caches fill during the
//!    warm-up); printed per node and metric, with the 5 % bound the
//!    target sets. Nothing is asserted: machines are shared and noisy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos::proto as pb;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::TestCluster;

use crate::support::{channel, create_job, progress, resident_bytes, started_cluster_with};

/// How long capacity is measured.
const CAPACITY_WINDOW: Duration = Duration::from_secs(20);
/// Closed-loop clients while capacity is measured.
const CAPACITY_CLIENTS: u64 = 64;
/// Most operations waiting for answers during the soak.
const MAX_IN_FLIGHT: usize = 256;

/// What `soak` is asked to do.
#[derive(clap::Args, Debug)]
pub(crate) struct SoakArgs {
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Fraction of the measured capacity to run at.
    #[arg(long, default_value_t = 0.7)]
    pub fraction: f64,
    /// Jobs kept (each operation creates one and deletes the oldest).
    #[arg(long, default_value_t = 5_000)]
    pub population: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Samples before the end of this are warm-up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The span averaged after the warm-up and at the end.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// The nodes' `--audit-retain`: every operation adds two audit
    /// entries, and the log holds at most this many (the nodes' default is
    /// 1,000,000, which these rates fill in minutes).
    #[arg(long, default_value_t = 100_000)]
    pub audit_retain: u64,
    /// Where soak.csv and soak.svg go.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
}

/// One sample of one node.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: f64,
    rss_mib: f64,
    fds: f64,
    disk_mib: f64,
}

/// A sampled metric: its name and how to read it from a sample.
type Metric = (&'static str, fn(&Sample) -> f64);

/// What is sampled, in the table's and the picture's order.
const METRICS: [Metric; 3] = [
    ("resident memory, MiB", |s| s.rss_mib),
    ("open file descriptors", |s| s.fds),
    ("data dir, MiB", |s| s.disk_mib),
];

/// The churning load: operation `n` creates `soak-n` and deletes `soak-(n - population)`.
#[derive(Clone)]
struct Churn {
    jobs: JobServiceClient<kairos_testkit::Authed>,
    population: u64,
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Churn {
    async fn one(mut self) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let body = "x".repeat(256);
        let mut ok = create_job(&mut self.jobs, format!("soak-{n}"), &body)
            .await
            .is_ok();
        if let Some(old) = n.checked_sub(self.population) {
            let delete = pb::DeleteJobRequest {
                id: format!("soak-{old}"),
                ..Default::default()
            };
            ok &= self.jobs.delete_job(delete).await.is_ok();
        }
        match ok {
            true => self.done.fetch_add(1, Ordering::Relaxed),
            false => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

pub(crate) async fn soak(args: SoakArgs) {
    std::fs::create_dir_all(&args.out).expect("create --out");
    let retain = args.audit_retain.to_string();
    let (cluster, leader) = started_cluster_with(&["--audit-retain", &retain]).await;
    let secret = cluster.token().to_string();
    let jobs = JobServiceClient::new(channel(&cluster.node(leader).grpc, &secret).await);
    let churn = Churn {
        jobs,
        population: args.population,
        next: Arc::default(),
        done: Arc::default(),
        errors: Arc::default(),
    };

    // 1. Capacity, closed loop, after a first window that fills the audit log.
    let mut capacity = 0.0;
    for _ in 0..2 {
        let (started, done_before) = (Instant::now(), churn.done.load(Ordering::Relaxed));
        let mut clients = Vec::new();
        for _ in 0..CAPACITY_CLIENTS {
            let churn = churn.clone();
            clients.push(tokio::spawn(async move {
                while started.elapsed() < CAPACITY_WINDOW {
                    churn.clone().one().await;
                }
            }));
        }
        for client in clients {
            client.await.expect("capacity client");
        }
        capacity =
            (churn.done.load(Ordering::Relaxed) - done_before) as f64 / started.elapsed().as_secs_f64();
    }
    let rate = (capacity * args.fraction).max(1.0);
    eprintln!(
        "capacity {capacity:.0} operations/s (create + delete, {CAPACITY_CLIENTS} clients, {} errors); soaking at {rate:.0}/s for {:?}",
        churn.errors.load(Ordering::Relaxed),
        args.duration
    );

    // 2. and 3. The soak, open loop, sampled.
    let (done_before, errors_before) = (
        churn.done.load(Ordering::Relaxed),
        churn.errors.load(Ordering::Relaxed),
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut skipped = 0u64;
    let mut samples: BTreeMap<u64, Vec<Sample>> = BTreeMap::new();
    let mut csv = String::from("seconds,node,rss_mib,open_fds,disk_mib,operations,errors\n");
    let soak_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_sample = soak_started;
    while soak_started.elapsed() < args.duration {
        if Instant::now() >= next_sample {
            next_sample += args.sample_every;
            let at_s = soak_started.elapsed().as_secs_f64();
            let (done, errors) = (
                churn.done.load(Ordering::Relaxed) - done_before,
                churn.errors.load(Ordering::Relaxed) - errors_before,
            );
            for (id, sample) in sample_nodes(&cluster, at_s) {
                csv.push_str(&format!(
                    "{at_s:.0},{id},{:.1},{},{:.1},{done},{errors}\n",
                    sample.rss_mib, sample.fds, sample.disk_mib
                ));
                samples.entry(id).or_default().push(sample);
            }
            progress(format!(
                "soak: {at_s:.0} s, {done} operations, {errors} errors, {skipped} skipped"
            ));
        }
        tick.tick().await;
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let churn = churn.clone();
                tokio::spawn(async move {
                    churn.one().await;
                    drop(slot);
                });
            }
            Err(_) => skipped += 1,
        }
    }
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    eprintln!();
    let done = churn.done.load(Ordering::Relaxed) - done_before;
    let errors = churn.errors.load(Ordering::Relaxed) - errors_before;
    std::fs::write(args.out.join("soak.csv"), csv).expect("write soak.csv");
    std::fs::write(
        args.out.join("soak.svg"),
        svg(
            &samples,
            args.warmup.as_secs_f64(),
            &format!(
                "soak at {rate:.0} operations/s ({:.0} % of {capacity:.0}/s) for {:?}",
                args.fraction * 100.0,
                args.duration
            ),
        ),
    )
    .expect("write soak.svg");

    // 4. Growth after the warm-up.
    println!(
        "soak: {:?} at {rate:.0} operations/s ({:.0} % of a measured {capacity:.0}/s): {done} done ({:.0}/s), {errors} errors, {skipped} skipped",
        args.duration,
        args.fraction * 100.0,
        done as f64 / args.duration.as_secs_f64()
    );
    println!("| node | metric | after warm-up | at the end | growth |");
    println!("|---:|---|---:|---:|---:|");
    let (warmup, window) = (args.warmup.as_secs_f64(), args.window.as_secs_f64());
    let end = args.duration.as_secs_f64();
    for (id, node) in &samples {
        for (metric, value) in METRICS {
            let mean = |from: f64, to: f64| {
                let values: Vec<f64> = node
                    .iter()
                    .filter(|s| s.at_s >= from && s.at_s < to)
                    .map(value)
                    .collect();
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            };
            let (Some(after), Some(last)) = (mean(warmup, warmup + window), mean(end - window, end + 1.0))
            else {
                continue;
            };
            println!(
                "| {id} | {metric} | {after:.1} | {last:.1} | {:+.1} % |",
                (last - after) / after.max(f64::MIN_POSITIVE) * 100.0
            );
        }
    }
    println!("samples: {}", args.out.join("soak.csv").display());
    println!("picture: {}", args.out.join("soak.svg").display());
    drop(cluster);
}

/// Each running node's sample now.
fn sample_nodes(cluster: &TestCluster, at_s: f64) -> Vec<(u64, Sample)> {
    cluster
        .nodes
        .iter()
        .filter_map(|node| {
            let pid = node.pid()?;
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            Some((
                node.id,
                Sample {
                    at_s,
                    rss_mib: resident_bytes(pid) as f64 / (1 << 20) as f64,
                    fds: fds as f64,
                    disk_mib: dir_bytes(&node.data_dir) as f64 / (1 << 20) as f64,
                },
            ))
        })
        .collect()
}

/// Bytes of the files under `dir` (allocated blocks, as `du` counts them).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Three stacked panels (RSS, open fds, disk) against time, a line per
/// node, the warm-up's end marked.
fn svg(samples: &BTreeMap<u64, Vec<Sample>>, warmup_s: f64, title: &str) -> String {
    const W: f64 = 900.0;
    const PANEL: f64 = 180.0;
    const LEFT: f64 = 70.0;
    const TOP: f64 = 40.0;
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    let end_s = samples
        .values()
        .flat_map(|s| s.iter().map(|s| s.at_s))
        .fold(1.0, f64::max);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{title}</text>\n",
        TOP + 3.0 * (PANEL + 30.0) + 20.0
    );
    let plot_w = W - LEFT - 20.0;
    for (panel, (label, value)) in METRICS.iter().enumerate() {
        let y0 = TOP + panel as f64 * (PANEL + 30.0);
        let max = samples
            .values()
            .flat_map(|s| s.iter().map(value))
            .fold(1.0, f64::max)
            * 1.1;
        out.push_str(&format!(
            "<rect x=\"{LEFT}\" y=\"{y0}\" width=\"{plot_w}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"{LEFT}\" y=\"{}\">{label}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.0}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n",
            y0 - 4.0,
            LEFT - 4.0,
            y0 + 10.0,
            LEFT - 4.0,
            y0 + PANEL
        ));
        let warm_x = LEFT + warmup_s.min(end_s) / end_s * plot_w;
        out.push_str(&format!(
            "<line x1=\"{warm_x:.1}\" y1=\"{y0}\" x2=\"{warm_x:.1}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4\"/>\n",
            y0 + PANEL
        ));
        for (i, (id, node)) in samples.iter().enumerate() {
            let points: Vec<String> = node
                .iter()
                .map(|s| {
                    format!(
                        "{:.1},{:.1}",
                        LEFT + s.at_s / end_s * plot_w,
                        y0 + PANEL - value(s) / max * PANEL
                    )
                })
                .collect();
            let colour = colours[i % colours.len()];
            out.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            if panel == 0 {
                out.push_str(&format!(
                    "<text x=\"{}\" y=\"20\" fill=\"{colour}\">node {id}</text>\n",
                    W - 220.0 + i as f64 * 60.0
                ));
            }
        }
    }
    let axis_y = TOP + 3.0 * (PANEL + 30.0) - 10.0;
    out.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{axis_y}\">0 s</text>\n<text x=\"{}\" y=\"{axis_y}\" text-anchor=\"end\">{end_s:.0} s (dashed: end of warm-up)</text>\n</svg>\n",
        W - 20.0
    ));
    out
}
