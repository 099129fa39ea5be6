//! `kairos-chaos`: fault injection on a real Kairos cluster, and a checker
//! per guarantee.
//!
//! One *round* starts N `kairos agent` processes (or containers), runs a
//! recorded client workload against random nodes while injecting faults
//! chosen by a seed, heals and settles the cluster, and then judges the
//! history with the invariant checkers of [`invariants`]. It writes
//! `report.json`, `history.json`, `summary.txt` and `timeline.svg` to
//! `--out`, prints the summary, and exits 1 if any invariant was violated
//! (2 if the harness itself failed). `--seed N` reproduces a round's choices
//! (the faults and the workload; the cluster's own timing still varies).
//!
//! The flow of a round, module by module: [`runtime`] starts the nodes
//! ([`proxy`] sits on every peer link in process mode), [`recorder`] receives
//! the jobs' webhooks, [`workload`] sends the client operations, [`faults`]
//! breaks things, [`settle`] heals and reads the final state, [`invariants`]
//! judge, [`report`] and [`timeline`] tell.

mod client;
mod damaged_snapshot;
mod external;
mod faults;
mod history;
mod invariants;
mod membership;
mod overload;
mod preload;
mod proxy;
mod recorder;
mod report;
mod runtime;
mod settle;
mod small_disk;
mod timeline;
mod torn;
mod upgrade;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use crate::client::Clients;
use crate::history::{FaultKind, History};
use crate::invariants::Evidence;
use crate::report::Report;
use crate::runtime::docker::{docker_available, DockerCluster, DockerOptions};
use crate::runtime::process::{ProcessCluster, ProcessOptions};
use crate::runtime::Runtime;

#[derive(Parser, Debug)]
#[command(
    name = "kairos-chaos",
    version,
    about = "Fault injection and invariant checks for Kairos"
)]
enum Cli {
    /// Run one or more rounds of workload + faults + checks.
    Run(RunArgs),
    /// A rolling upgrade from one build to another (and a downgrade) under
    /// the live workload, judged by every checker (see src/upgrade.rs).
    Upgrade(UpgradeArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct UpgradeArgs {
    /// The build the cluster starts on (the previous release).
    #[arg(long)]
    old_bin: PathBuf,
    /// The build it is upgraded to.
    #[arg(long)]
    new_bin: PathBuf,
    /// Where the report and node logs go (default: chaos-out/upgrade-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the upgrade steps are spread over (the workload runs as long;
    /// the steps take longer if the nodes do).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the workload; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent workload clients.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// In-process external workers serving `chaos.ext`; 0: none.
    #[arg(long, default_value_t = 2)]
    external_workers: usize,
}

impl UpgradeArgs {
    /// The round that runs the upgrade instead of faults: three nodes on the
    /// old build, in process mode.
    fn round(self) -> anyhow::Result<RunArgs> {
        for bin in [&self.old_bin, &self.new_bin] {
            anyhow::ensure!(bin.is_file(), "{} not found", bin.display());
        }
        let plan = upgrade::Plan {
            old_version: upgrade::build_version(&self.old_bin)?,
            new_version: upgrade::build_version(&self.new_bin)?,
            old_bin: self.old_bin.clone(),
            new_bin: self.new_bin,
        };
        anyhow::ensure!(
            plan.old_version != plan.new_version,
            "both builds are version {}: nothing to upgrade",
            plan.old_version
        );
        let seed = self.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
        Ok(RunArgs {
            nodes: 3,
            duration: self.duration,
            seed: Some(seed),
            rounds: 1,
            runtime: RuntimeKind::Process,
            kairos_bin: Some(self.old_bin),
            out: Some(
                self.out
                    .unwrap_or_else(|| PathBuf::from(format!("chaos-out/upgrade-{seed}"))),
            ),
            faults: "none".into(),
            clients: self.clients,
            external_workers: self.external_workers,
            break_build: None,
            upgrade: Some(plan),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeKind {
    /// Local processes on 127.0.0.1 behind the harness's proxies.
    Process,
    /// One Docker container per node on a network the harness creates.
    Docker,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Length of the fault phase of each round.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the first round (later rounds use seed+1, seed+2, ...); random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Rounds to run (a campaign).
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
    runtime: RuntimeKind,
    /// The kairos binary (default: target/release/kairos of this workspace).
    #[arg(long)]
    kairos_bin: Option<PathBuf>,
    /// Where reports and node logs go (default: chaos-out/<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fault kinds to inject, comma-separated, or "all" or "none".
    #[arg(long, default_value = "all")]
    faults: String,
    /// Concurrent workload clients.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// In-process external workers (the Rust SDK) serving the type
    /// `chaos.ext`, of which two more steady jobs are created; 0: none.
    #[arg(long, default_value_t = 2)]
    external_workers: usize,
    /// Run a deliberately broken build (default `duplicate-fires`): the
    /// checkers must fail. Needs a kairos built with the `chaos-break`
    /// feature; chaos/README.md tells which fault catches which break.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "duplicate-fires")]
    break_build: Option<BreakKind>,
    /// The upgrade scenario's builds (`kairos-chaos upgrade`), instead of faults.
    #[arg(skip)]
    upgrade: Option<upgrade::Plan>,
}

fn parse_faults(value: &str) -> anyhow::Result<Vec<FaultKind>> {
    match value.trim() {
        "all" => Ok(FaultKind::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(|name| {
                FaultKind::ALL
                    .into_iter()
                    .find(|k| k.name() == name.trim())
                    .with_context(|| {
                        let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                        format!("--faults: unknown fault {name:?} (known: {})", known.join(", "))
                    })
            })
            .collect(),
    }
}

/// How the deliberately broken build is broken (`--break-build`), as the
/// agent's `--unsafe-chaos-break` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BreakKind {
    /// Every fire runs twice.
    DuplicateFires,
    /// Elections without a pre-vote: a returning follower unseats the leader.
    NoPreVote,
    /// Reads without the read barrier.
    StaleReads,
    /// A node whose fsync failed, or whose disk filled, keeps running.
    RunOnAfterStorageErrors,
    /// The timer replays fires when the leader's clock steps back.
    TrustsWallClock,
    /// `--max-requests` is ignored: a flood queues without bound.
    NoRequestLimit,
    /// The log is acknowledged without `fdatasync`.
    NoFdatasync,
    /// The log mark is ignored: a node that lost its log's tail votes.
    NoLogMark,
    /// A node with a damaged snapshot refuses to start.
    StaysDownOnDamagedSnapshots,
    /// Log appends wait for `fdatasync` inside Raft's loop.
    SyncsInRaftLoop,
    /// A leader leaves a joint membership it inherited unfinished.
    NoJointFinisher,
}

impl BreakKind {
    /// The agent flags of the broken build.
    fn agent_args(self) -> [&'static str; 2] {
        let value = match self {
            BreakKind::DuplicateFires => "duplicate-fires",
            BreakKind::NoPreVote => "no-pre-vote",
            BreakKind::StaleReads => "stale-reads",
            BreakKind::RunOnAfterStorageErrors => "run-on-after-storage-errors",
            BreakKind::TrustsWallClock => "trusts-wall-clock",
            BreakKind::NoRequestLimit => "no-request-limit",
            BreakKind::NoFdatasync => "no-fdatasync",
            BreakKind::NoLogMark => "no-log-mark",
            BreakKind::StaysDownOnDamagedSnapshots => "stays-down-on-damaged-snapshots",
            BreakKind::SyncsInRaftLoop => "syncs-in-raft-loop",
            BreakKind::NoJointFinisher => "no-joint-finisher",
        };
        ["--unsafe-chaos-break", value]
    }
}

/// Checks that `kairos_bin` knows `--unsafe-chaos-break`: only a build with
/// the `chaos-break` feature does (`cargo test --workspace` builds
/// target/debug/kairos with it; release builds never have it).
fn ensure_breakable(kairos_bin: &Path, kind: BreakKind) -> anyhow::Result<()> {
    let probe = std::process::Command::new(kairos_bin)
        .arg("agent")
        .args(kind.agent_args())
        .arg("--help")
        .output()
        .with_context(|| format!("running {}", kairos_bin.display()))?;
    anyhow::ensure!(
        probe.status.success(),
        "--break-build: {} was built without the chaos-break feature (build it with \
         `cargo build -p kairos --features chaos-break`, or run `cargo test --workspace`)",
        kairos_bin.display()
    );
    Ok(())
}

fn default_kairos_bin() -> PathBuf {
    // chaos/ sits in the workspace; the binary is in the workspace's target dir.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
    target.join("release").join("kairos")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kairos_chaos=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Cli::parse() {
        Cli::Run(args) => args,
        Cli::Upgrade(args) => match args.round() {
            Ok(args) => args,
            Err(e) => {
                eprintln!("kairos-chaos: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    // On Ctrl-C or SIGTERM the round is dropped, and dropping a runtime stops
    // its nodes and removes what it made.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("kairos-chaos: cannot handle SIGTERM: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; nodes stopped")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated; nodes stopped")),
    };
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("kairos-chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs every round; returns the number of violations found.
async fn run(args: RunArgs) -> anyhow::Result<usize> {
    let kinds = parse_faults(&args.faults)?;
    let kairos_bin = args.kairos_bin.clone().unwrap_or_else(default_kairos_bin);
    anyhow::ensure!(
        kairos_bin.is_file(),
        "{} not found: build it (cargo build --release --bin kairos) or pass --kairos-bin",
        kairos_bin.display()
    );
    if let Some(kind) = args.break_build {
        ensure_breakable(&kairos_bin, kind)?;
    }
    if args.runtime == RuntimeKind::Docker {
        anyhow::ensure!(
            docker_available().await,
            "--runtime docker: no Docker daemon answers"
        );
    }
    let first_seed = args.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("chaos-out/{first_seed}")));
    // Absolute, because docker mode mounts each node's directory into its
    // container at the same path and preloads the fault libraries from
    // there: a relative path means nothing inside the container (the
    // libraries were silently not loaded, and no disk or clock fault took).
    let out = std::path::absolute(&out).with_context(|| format!("resolving {}", out.display()))?;
    let mut total_violations = 0;
    let mut campaign = Vec::new();
    for round in 0..args.rounds {
        let seed = first_seed + round;
        let dir = if args.rounds == 1 {
            out.clone()
        } else {
            out.join(format!("round-{round}-seed-{seed}"))
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!(
            "kairos-chaos: round {} of {}, --seed {seed}, output in {}",
            round + 1,
            args.rounds,
            dir.display()
        );
        let report = run_round(&args, &kinds, &kairos_bin, seed, &dir).await?;
        println!("{}", report.summary());
        total_violations += report.violations.len();
        campaign.push(report);
    }
    if args.rounds > 1 {
        let summary = campaign_summary(&campaign);
        println!("{summary}");
        std::fs::write(out.join("campaign.txt"), summary)?;
    }
    Ok(total_violations)
}

/// The dynamic loader's complaint in a node's log that an `LD_PRELOAD`
/// library could not be loaded, if it is there.
fn unloaded_fault_library(node_log: &str) -> Option<&str> {
    node_log
        .lines()
        .find(|line| line.starts_with("ERROR: ld.so:") && line.contains("cannot be preloaded"))
}

/// One line per round and the totals of a campaign.
fn campaign_summary(reports: &[Report]) -> String {
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let (mut acked, mut unknown, mut runs, mut violations, mut seconds) = (0, 0, 0, 0, 0);
    for r in reports {
        for (kind, n) in &r.faults_by_kind {
            *faults.entry(kind.clone()).or_default() += n;
        }
        let writes = || {
            r.ops
                .iter()
                .filter(|(kind, _)| kind.as_str() != "read")
                .map(|(_, c)| c)
        };
        acked += writes().map(|c| c.ok).sum::<u64>();
        unknown += writes().map(|c| c.unknown).sum::<u64>();
        runs += r.runs_checked;
        violations += r.violations.len();
        seconds += r.fault_phase_ms / 1000;
    }
    let faults: Vec<String> = faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(
        "campaign: {} rounds, {seconds} s of faults ({}), {acked} writes acknowledged, {unknown} unknown, \
         {runs} runs checked, {violations} violations",
        reports.len(),
        faults.join(", ")
    )
}

/// The size of each node's filesystem in a round with `disk_full`: room for
/// a round's Raft log and snapshots several times over.
const SMALL_DISK_MIB: u64 = 256;

/// `--snapshot-logs` of the nodes in a round with `damaged_snapshot`.
const DAMAGED_SNAPSHOT_LOGS: u64 = 200;

async fn run_round(
    args: &RunArgs,
    kinds: &[FaultKind],
    kairos_bin: &Path,
    seed: u64,
    dir: &Path,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // The nodes' log filter: KAIROS_CHAOS_NODE_LOG, e.g. "info,kairos=debug".
    let node_log = std::env::var("KAIROS_CHAOS_NODE_LOG").unwrap_or_else(|_| "info".into());
    let extra_env = vec![("RUST_LOG".to_string(), node_log)];
    // The webhook receiver listens on loopback (process runtime), which a
    // node's http jobs may not call by default.
    let mut extra_args = vec![
        "--workers".to_string(),
        "4".to_string(),
        "--http-allow=public,loopback".to_string(),
    ];
    if kinds.contains(&FaultKind::Overload) {
        extra_args.push(format!("--max-watches={}", overload::MAX_WATCHES));
        extra_args.push(format!("--max-requests={}", overload::MAX_REQUESTS));
    }
    if kinds.contains(&FaultKind::DamagedSnapshot) {
        // Snapshots every 200 changes rather than 10,000, so that the
        // followers hold one to damage early in a round.
        extra_args.push(format!("--snapshot-logs={DAMAGED_SNAPSHOT_LOGS}"));
    }
    if let Some(kind) = args.break_build {
        extra_args.extend(kind.agent_args().map(String::from));
    }
    if args.upgrade.is_some() {
        extra_args.extend(upgrade::AGENT_ARGS.map(String::from));
    }
    // At least 16 bytes, as every node requires.
    let cookie = format!("kairos-chaos-cookie-{seed:016x}");
    // Every round starts from empty data dirs (a reused --out must not resurrect an old cluster).
    let nodes_dir = dir.join("nodes");
    if nodes_dir.exists() {
        std::fs::remove_dir_all(&nodes_dir).with_context(|| format!("clearing {}", nodes_dir.display()))?;
    }
    // The fault libraries, preloaded only when their faults are wanted.
    let libraries = preload::Libraries::build(
        &dir.join("preload"),
        kinds.iter().any(|k| k.needs_disk_library()),
        kinds.iter().any(|k| k.needs_clock_library()),
    );
    // Each node's data on a small filesystem of its own, only when the disk
    // is to fill up.
    let small_disk_mib = kinds.contains(&FaultKind::DiskFull).then_some(SMALL_DISK_MIB);
    let mut runtime = match args.runtime {
        RuntimeKind::Process => {
            let mut cluster = ProcessCluster::create(ProcessOptions {
                nodes: args.nodes,
                kairos_bin: kairos_bin.to_path_buf(),
                data_root: dir.join("nodes"),
                cookie,
                extra_args: extra_args.clone(),
                extra_env,
                seed,
                libraries,
                small_disk_mib,
            })
            .await?;
            cluster.start_all().await?;
            Runtime::Process(Box::new(cluster))
        }
        RuntimeKind::Docker => {
            let mut cluster = DockerCluster::create(DockerOptions {
                nodes: args.nodes,
                kairos_bin: kairos_bin.to_path_buf(),
                run_id: format!("{seed}-{}", std::process::id()),
                cookie,
                extra_args,
                extra_env,
                data_root: nodes_dir.clone(),
                libraries,
                small_disk_mib,
            })
            .await?;
            cluster.start_all().await?;
            Runtime::Docker(Box::new(cluster))
        }
    };
    let result = drive(args, kinds, &mut runtime, seed, started, started_at).await;
    // Keep the node logs next to the report.
    for id in runtime.ids() {
        if let Runtime::Docker(c) = &runtime {
            let _ = std::fs::write(dir.join(format!("node-{id}.log")), c.log(id));
        }
    }
    runtime.shutdown().await;
    let (report, history) = result?;
    write_outputs(dir, &report, &history)?;
    if report.violations.is_empty() {
        // The node data is large; the logs stay.
        let _ = remove_node_data(&dir.join("nodes"));
    }
    Ok(report)
}

/// Removes each node's data dir, keeping its log.
fn remove_node_data(nodes: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(nodes)? {
        let data = entry?.path().join("data");
        if data.is_dir() {
            std::fs::remove_dir_all(data)?;
        }
    }
    Ok(())
}

fn write_outputs(dir: &Path, report: &Report, history: &History) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report)?)?;
    std::fs::write(dir.join("history.json"), serde_json::to_string(history)?)?;
    std::fs::write(dir.join("summary.txt"), report.summary())?;
    std::fs::write(dir.join("timeline.svg"), timeline::render_svg(history, report))?;
    Ok(())
}

/// Workload, faults, settle and checks on a started cluster.
async fn drive(
    args: &RunArgs,
    kinds: &[FaultKind],
    runtime: &mut Runtime,
    seed: u64,
    started: Instant,
    started_at: String,
) -> anyhow::Result<(Report, History)> {
    let addrs: BTreeMap<u64, String> = runtime
        .ids()
        .into_iter()
        .map(|id| (id, runtime.client_addr(id)))
        .collect();
    // A new cluster has no token until its ACL is bootstrapped (once a
    // leader is elected); every call after this carries the root token.
    let root = client::bootstrap(&addrs).await?;
    let clients = Clients::new(&addrs, &root)?;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let hook_host = match runtime {
        Runtime::Process(_) => "127.0.0.1".to_string(),
        Runtime::Docker(c) => c.webhook_host(),
    };
    let (hook, deliveries) = recorder::start(&hook_host, started, stop.clone()).await?;
    clients
        .wait_leader(Duration::from_secs(60))
        .await
        .context("no leader within 60 s of starting the cluster")?;
    // A fault library the dynamic loader could not load leaves its faults
    // without effect, and every checker would pass: stop the round.
    for id in runtime.ids() {
        if let Some(line) = unloaded_fault_library(&runtime.log_since(id, 0)) {
            anyhow::bail!("node {id} did not load a fault library, so its faults would not take: {line}");
        }
    }
    let roles = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(settle::sample_roles(
        clients.clone(),
        started,
        Duration::from_millis(200),
        roles.clone(),
        stop.clone(),
    ));

    // The external workers run until `stop` (after settle): settle waits
    // for their runs to end.
    let external = external::start(
        args.external_workers,
        &addrs,
        &root.secret,
        started,
        deliveries.clone(),
        stop.clone(),
        Duration::from_secs(60),
    )
    .await?;
    let steady = workload::steady_jobs(args.external_workers > 0);
    let log = workload::OpLog::new(started);
    workload::create_steady_jobs(&clients, &hook, &log, &steady).await?;
    let fault_start = Instant::now();
    let until = fault_start + args.duration;
    let max_ops = args.duration.as_secs() * 20;
    let workload = tokio::spawn(workload::run(
        clients.clone(),
        hook.clone(),
        log.clone(),
        seed,
        until,
        args.clients,
        max_ops,
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kinds = faults::supported(runtime, kinds);
    let (faults, mut upgrade_violations) = match &args.upgrade {
        Some(plan) => {
            let outcome = upgrade::run(runtime, &clients, plan, started, until).await?;
            (outcome.steps, outcome.violations)
        }
        None => (
            faults::run(runtime, &clients, &kinds, &mut rng, started, until).await?,
            Vec::new(),
        ),
    };
    let fault_phase_ms = fault_start.elapsed().as_millis() as u64;
    let _ = workload.await;

    // A cluster that cannot be settled and read fails the round (a
    // violation), not the harness: the report still names what happened.
    let settled = settle::settle(runtime, &clients, &log).await;
    stop.cancel();
    let _ = sampler.await;
    external.join().await;
    let history = History {
        ops: log.ops(),
        deliveries: deliveries.lock().expect("deliveries").clone(),
        faults,
        roles: roles.lock().expect("roles").clone(),
    };
    let violations = match &settled {
        Ok(final_state) => {
            let evidence = Evidence {
                history: &history,
                final_state,
                steady: &steady,
            };
            let mut violations = invariants::check_all(&evidence);
            violations.append(&mut upgrade_violations);
            violations
        }
        Err(e) => {
            let mut violations = vec![report::Violation::new(
                invariants::settled_runs::NAME,
                format!("the cluster could not be settled and read: {e:#}"),
            )];
            violations.append(&mut invariants::check_history_alone(&history, &steady));
            violations.append(&mut upgrade_violations);
            violations
        }
    };
    let (runs_checked, notes) = match &settled {
        Ok(final_state) => (final_state.runs.len() as u64, final_state.notes.clone()),
        Err(_) => (0, Vec::new()),
    };
    let mut report = Report {
        seed,
        runtime: runtime.name().to_string(),
        nodes: args.nodes,
        started_at,
        fault_phase_ms,
        runs_checked,
        invariants: invariants::ALL
            .iter()
            .map(|(name, _)| name.to_string())
            .chain(args.upgrade.as_ref().map(|_| upgrade::INVARIANT.to_string()))
            .collect(),
        violations,
        notes,
        ..Default::default()
    };
    report.count(&history);
    report.total_ms = started.elapsed().as_millis() as u64;
    Ok((report, history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_library_the_loader_refused_is_found_in_the_node_log() {
        let refused = "ERROR: ld.so: object 'target/chaos-ci/docker/preload/libdisk_faults.so' \
                       from LD_PRELOAD cannot be preloaded (cannot open shared object file): ignored.";
        let log =
            format!("{refused}\n2026-12-07T16:04:46Z  INFO openraft::storage::helper: get_initial_state\n");
        assert_eq!(unloaded_fault_library(&log), Some(refused));
        let loaded = "2026-12-07T16:04:46Z  INFO kairos: listening\n2026-12-07T16:04:47Z  WARN a peer said: cannot be preloaded\n";
        assert_eq!(unloaded_fault_library(loaded), None);
    }
}
