//! `create`: concurrent clients creating jobs for a bounded time (and, with
//! `--count`, a bounded number of writes).
//!
//! With `--compare-auth` it measures what authentication costs: two clusters
//! of the same build, one as a user runs it (every call authenticated and
//! authorized, every write audited) and one started with
//! `--insecure-disable-auth` (no credential check, every caller `anonymous`,
//! every write still audited: the audit log cannot be turned off, so there
//! is no point with both off). Both are driven by the same clients over the
//! same path (to the leader, the token sent on both sides), in rounds that
//! alternate which side goes first, so that drift of the machine's load hits
//! both alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kairos::proto::job_service_client::JobServiceClient;
use kairos_testkit::{Authed, TestCluster};

use crate::support::{
    black_hole_collector, channel, cluster_cpu_seconds, create_job, latency_histogram, progress, quantile_ms,
    start_span_sink, started_cluster, started_cluster_with, tracing_sides,
};

/// What `create` is asked to do.
#[derive(clap::Args, Debug)]
pub(crate) struct CreateArgs {
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Payload bytes per job.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Endpoints of a running cluster (host:port,...); default: start one.
    #[arg(long)]
    pub endpoints: Option<String>,
    /// Connections the clients share round-robin; default: one per client.
    #[arg(long)]
    pub connections: Option<usize>,
    /// The secret of a token for `--endpoints` (a cluster the tool
    /// starts is bootstrapped and its root token used).
    #[arg(long, env = "KAIROS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stop each measurement after this many creates (or at `--duration`, if sooner).
    #[arg(long)]
    pub count: Option<u64>,
    /// Measure auth + audit against `--insecure-disable-auth` (audit
    /// still on): two clusters, the same clients, alternating rounds.
    #[arg(long)]
    pub compare_auth: bool,
    /// Measure tracing's cost: off, sampling 0.01 and 1.0 (exporting to an
    /// in-process OTLP receiver), and 1.0 with the collector down; four
    /// clusters, alternating rounds.
    #[arg(long, conflicts_with = "compare_auth")]
    pub compare_tracing: bool,
    /// Rounds of each side with `--compare-auth` or `--compare-tracing`.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One measurement: where the clients write and how much.
struct Load<'a> {
    label: &'a str,
    addrs: &'a [String],
    secret: &'a str,
    clients: usize,
    connections: Option<usize>,
    body: &'a str,
    duration: Duration,
    count: Option<u64>,
    /// Job ids are `<prefix>-<client>-<n>`.
    prefix: &'a str,
}

/// What one measurement saw.
struct Measured {
    latencies: Histogram<u64>,
    errors: u64,
    seconds: f64,
    /// CPU time the cluster's nodes used meanwhile, seconds (0 when the
    /// tool did not start them).
    node_cpu_seconds: f64,
}

impl Measured {
    fn per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }
}

/// Runs `load`'s clients until its duration passes or its count is reached.
async fn measure(load: &Load<'_>) -> Measured {
    let acknowledged = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let count = load.count.unwrap_or(u64::MAX);
    let mut channels = Vec::new();
    for i in 0..load
        .connections
        .unwrap_or(load.clients)
        .clamp(1, load.clients.max(1))
    {
        channels.push(channel(&load.addrs[i % load.addrs.len()], load.secret).await);
    }
    let started = Instant::now();
    let until = started + load.duration;
    let mut tasks = Vec::new();
    for client in 0..load.clients {
        let channel: Authed = channels[client % channels.len()].clone();
        let (acknowledged, issued, errors) = (acknowledged.clone(), issued.clone(), errors.clone());
        let (body, prefix) = (load.body.to_string(), load.prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut jobs = JobServiceClient::new(channel);
            let mut latencies = latency_histogram();
            let mut n = 0u64;
            while Instant::now() < until && issued.fetch_add(1, Ordering::Relaxed) < count {
                n += 1;
                let sent = Instant::now();
                match create_job(&mut jobs, format!("{prefix}-{client}-{n}"), &body).await {
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
            (latencies, Instant::now())
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = acknowledged.load(Ordering::Relaxed);
        progress(format!(
            "create ({}): {:>5.1} s, {done} acknowledged, {:.0}/s",
            load.label,
            started.elapsed().as_secs_f64(),
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    // Until the last client finished (not until the progress loop noticed).
    let mut ended = started;
    let mut latencies = latency_histogram();
    for task in tasks {
        let (client, finished) = task.await.expect("client");
        latencies.add(client).expect("histograms of one precision");
        ended = ended.max(finished);
    }
    let seconds = (ended - started).as_secs_f64();
    Measured {
        latencies,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        node_cpu_seconds: 0.0,
    }
}

pub(crate) async fn create(args: CreateArgs) {
    if args.compare_tracing {
        return compare_tracing(args).await;
    }
    if args.compare_auth {
        return compare_auth(args).await;
    }
    let target = "kairos";
    let (cluster, addrs, secret) = match &args.endpoints {
        Some(list) => (
            None,
            list.split(',').map(str::to_string).collect::<Vec<_>>(),
            args.token.clone().unwrap_or_default(),
        ),
        None => {
            let (cluster, leader) = started_cluster().await;
            let addr = cluster.node(leader).grpc.clone();
            let secret = cluster.token().to_string();
            (Some(cluster), vec![addr], secret)
        }
    };
    let body = body(args.payload);
    let measured = measure(&Load {
        label: target,
        addrs: &addrs,
        secret: &secret,
        clients: args.clients,
        connections: args.connections,
        body: &body,
        duration: args.duration,
        count: args.count,
        prefix: "bench",
    })
    .await;
    eprintln!();
    let latencies = &measured.latencies;
    let result = serde_json::json!({
        "scenario": "create",
        "target": target,
        "clients": args.clients,
        "payload_bytes": args.payload,
        "creates": latencies.len(),
        "errors": measured.errors,
        "seconds": measured.seconds,
        "throughput_per_s": measured.per_s(),
        "p50_ms": quantile_ms(latencies, 0.5),
        "p99_ms": quantile_ms(latencies, 0.99),
        "p999_ms": quantile_ms(latencies, 0.999),
    });
    println!("{result}");
    println!("| target | clients | payload | writes | per s | p50 ms | p99 ms | p999 ms |");
    println!(
        "| {target} | {} | {} B | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
        args.clients,
        args.payload,
        latencies.len(),
        measured.per_s(),
        quantile_ms(latencies, 0.5),
        quantile_ms(latencies, 0.99),
        quantile_ms(latencies, 0.999)
    );
    drop(cluster);
}

/// A JSON payload of about `payload` bytes.
fn body(payload: usize) -> String {
    serde_json::json!({ "pad": "x".repeat(payload.saturating_sub(12)) }).to_string()
}

/// One side of the auth comparison: its cluster and what its rounds measured.
struct Side {
    /// What the sides differ in (`auth`, `tracing`), for progress lines.
    column: &'static str,
    name: &'static str,
    cluster: TestCluster,
    leader: String,
    rounds: Vec<Measured>,
}

impl Side {
    /// One measurement on this side's leader; job ids are unique per `label`.
    async fn measure(
        &self,
        args: &CreateArgs,
        body: &str,
        label: &str,
        duration: Duration,
        count: Option<u64>,
    ) -> Measured {
        let prefix = format!("{}-{}", self.name, label.replace(' ', "-"));
        let cpu_before = cluster_cpu_seconds(&self.cluster);
        let mut measured = measure(&Load {
            label: &format!("{} {}, {label}", self.column, self.name),
            addrs: std::slice::from_ref(&self.leader),
            secret: self.cluster.token(),
            clients: args.clients,
            connections: args.connections,
            body,
            duration,
            count,
            prefix: &prefix,
        })
        .await;
        measured.node_cpu_seconds = cluster_cpu_seconds(&self.cluster) - cpu_before;
        measured
    }

    /// Every round's latencies together.
    fn latencies(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for round in &self.rounds {
            all.add(&round.latencies).expect("histograms of one precision");
        }
        all
    }

    fn creates(&self) -> u64 {
        self.rounds.iter().map(|r| r.latencies.len()).sum()
    }

    fn seconds(&self) -> f64 {
        self.rounds.iter().map(|r| r.seconds).sum()
    }

    /// Creates per second over every round.
    fn per_s(&self) -> f64 {
        self.creates() as f64 / self.seconds()
    }

    /// CPU time of the three nodes per acknowledged create, µs: what a
    /// create costs the cluster, less sensitive than throughput to what else
    /// the machine runs.
    fn cpu_us_per_create(&self) -> f64 {
        let cpu: f64 = self.rounds.iter().map(|r| r.node_cpu_seconds).sum();
        cpu * 1e6 / self.creates().max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        let latencies = self.latencies();
        serde_json::json!({
            "creates": self.creates(),
            "errors": self.rounds.iter().map(|r| r.errors).sum::<u64>(),
            "seconds": self.seconds(),
            "throughput_per_s": self.per_s(),
            "p50_ms": quantile_ms(&latencies, 0.5),
            "p99_ms": quantile_ms(&latencies, 0.99),
            "p999_ms": quantile_ms(&latencies, 0.999),
            "node_cpu_us_per_create": self.cpu_us_per_create(),
            "rounds_per_s": self.rounds.iter().map(Measured::per_s).collect::<Vec<_>>(),
            "rounds_p50_ms": self.rounds.iter().map(|r| quantile_ms(&r.latencies, 0.5)).collect::<Vec<_>>(),
        })
    }
}

/// `--compare-auth`: see the module docs.
async fn compare_auth(args: CreateArgs) {
    assert!(
        args.endpoints.is_none(),
        "--compare-auth starts its own clusters; --endpoints does not go with it"
    );
    let mut sides = Vec::new();
    for (name, flags) in [("on", &[][..]), ("off", &["--insecure-disable-auth"][..])] {
        let (cluster, leader) = started_cluster_with(flags).await;
        let status = cluster.status(leader).await;
        assert!(
            status.nodes.iter().all(|n| n.auth_disabled == (name == "off")),
            "auth {name}: the nodes report {:?}",
            status
                .nodes
                .iter()
                .map(|n| (n.id, n.auth_disabled))
                .collect::<Vec<_>>()
        );
        let leader = cluster.node(leader).grpc.clone();
        sides.push(Side {
            column: "auth",
            name,
            cluster,
            leader,
            rounds: Vec::new(),
        });
    }
    run_rounds(&args, &mut sides).await;
    let (on, off) = (&sides[0], &sides[1]);
    let (on_lat, off_lat) = (on.latencies(), off.latencies());
    let cost = |on: f64, off: f64| (on / off - 1.0) * 100.0;
    let result = serde_json::json!({
        "scenario": "create-auth",
        "clients": args.clients,
        "payload_bytes": args.payload,
        "rounds": args.rounds.max(1),
        "count_per_round": args.count,
        "auth_on": on.json(),
        "auth_off": off.json(),
        // Positive: auth on is that much slower (fewer creates/s, longer latency).
        "throughput_cost_pct": -cost(on.per_s(), off.per_s()),
        "p50_cost_pct": cost(quantile_ms(&on_lat, 0.5), quantile_ms(&off_lat, 0.5)),
        "p99_cost_pct": cost(quantile_ms(&on_lat, 0.99), quantile_ms(&off_lat, 0.99)),
        "node_cpu_cost_pct": cost(on.cpu_us_per_create(), off.cpu_us_per_create()),
    });
    println!("{result}");
    print_sides("auth", &args, &sides);
}

/// Warms every side up, then measures `args.rounds` rounds of each,
/// alternating which side goes first.
async fn run_rounds(args: &CreateArgs, sides: &mut [Side]) {
    let body = body(args.payload);
    // Warm-up: connections, allocator, the first snapshot; not counted.
    for side in sides.iter() {
        let count = args.count.map(|c| (c / 10).max(1));
        side.measure(args, &body, "warm-up", Duration::from_secs(2), count)
            .await;
    }
    for round in 0..args.rounds.max(1) {
        let mut order: Vec<usize> = (0..sides.len()).collect();
        order.rotate_left(round % sides.len());
        for i in order {
            let label = format!("round {}", round + 1);
            let measured = sides[i]
                .measure(args, &body, &label, args.duration, args.count)
                .await;
            sides[i].rounds.push(measured);
        }
    }
    eprintln!();
}

/// The comparison's table, one row per side; `column` names what differs.
fn print_sides(column: &str, args: &CreateArgs, sides: &[Side]) {
    println!("| {column} | clients | writes | per s | p50 ms | p99 ms | p999 ms | node CPU µs/create | per s by round |");
    for side in sides {
        let latencies = side.latencies();
        let by_round: Vec<String> = side.rounds.iter().map(|r| format!("{:.0}", r.per_s())).collect();
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            side.name,
            args.clients,
            side.creates(),
            side.per_s(),
            quantile_ms(&latencies, 0.5),
            quantile_ms(&latencies, 0.99),
            quantile_ms(&latencies, 0.999),
            side.cpu_us_per_create(),
            by_round.join(", ")
        );
    }
}

/// `--compare-tracing`: four clusters — tracing off, sampling 0.01 and
/// 1.0 exporting to an in-process OTLP receiver, and 1.0 exporting to a
/// collector that accepts connections and never answers — the same
/// clients, alternating rounds.
async fn compare_tracing(args: CreateArgs) {
    assert!(
        args.endpoints.is_none(),
        "--compare-tracing starts its own clusters; --endpoints does not go with it"
    );
    let (endpoint, received) = start_span_sink().await;
    let (down, _black_hole) = black_hole_collector().await;
    let mut sides = Vec::new();
    let all = tracing_sides(&endpoint)
        .into_iter()
        .chain([("1.0-collector-down", down)]);
    for (name, flags) in all {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (cluster, leader) = started_cluster_with(&flags).await;
        let leader = cluster.node(leader).grpc.clone();
        sides.push(Side {
            column: "tracing",
            name,
            cluster,
            leader,
            rounds: Vec::new(),
        });
    }
    run_rounds(&args, &mut sides).await;
    let off = &sides[0];
    let off_lat = off.latencies();
    let cost = |on: f64, off: f64| (on / off - 1.0) * 100.0;
    let mut costs = serde_json::Map::new();
    for side in &sides[1..] {
        let lat = side.latencies();
        costs.insert(
            side.name.to_string(),
            serde_json::json!({
                "throughput_cost_pct": -cost(side.per_s(), off.per_s()),
                "p50_cost_pct": cost(quantile_ms(&lat, 0.5), quantile_ms(&off_lat, 0.5)),
                "p99_cost_pct": cost(quantile_ms(&lat, 0.99), quantile_ms(&off_lat, 0.99)),
                "node_cpu_cost_pct": cost(side.cpu_us_per_create(), off.cpu_us_per_create()),
            }),
        );
    }
    let result = serde_json::json!({
        "scenario": "create-tracing",
        "clients": args.clients,
        "payload_bytes": args.payload,
        "rounds": args.rounds.max(1),
        "spans_received": received.load(std::sync::atomic::Ordering::Relaxed),
        "sides": sides.iter().map(|s| (s.name.to_string(), s.json())).collect::<serde_json::Map<_, _>>(),
        "cost_vs_off": costs,
    });
    println!("{result}");
    print_sides("tracing", &args, &sides);
}
