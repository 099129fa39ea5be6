//! `kairos dev`: a ready-to-use local cluster from a fresh checkout.
//!
//! Starts `--nodes` (default 3) `kairos agent` child processes of this same
//! binary on loopback through [`crate::launcher`] — separate processes,
//! because a node owns process-global state (signal handlers, and the worker
//! actors' process groups) — with data under `./kairos-data/node-N` and logs
//! in `./kairos-data/node-N/agent.log`. It waits until every node is ready,
//! prints the endpoints (client gRPC, peer, worker network, HTTP), the pids
//! and the next commands to try, restarts a node that dies, and on Ctrl-C /
//! SIGTERM sends SIGTERM to every node and waits for them to exit.
//!
//! The cluster cookie is random: drawn from the OS RNG the first time, kept
//! in `<data-dir>/cluster-cookie` (mode 0600) and reused after, so a restart
//! of `dev` finds its cluster again. The nodes get it in their environment,
//! never on their command line.
//!
//! The nodes allow `http` jobs to call loopback
//! (`--http-allow=public,loopback`), which a node refuses by default, so
//! that jobs can call servers on the developer's machine.
//!
//! # Invariants
//!
//! * **Restarts survive a rebuild.** The binary is resolved once, at start:
//!   `<data-dir>/kairos-agent` is a hard link to (or, across file systems, a
//!   copy of) the running executable, and every node starts from it.
//!   `cargo build` replaces `target/*/kairos` with a new file, which leaves
//!   that link, and so every restart, on the binary `dev` started with.
//! * **No endless restart loop.** A node whose restart cannot be started is
//!   given up at once; one that exits within [`QUICK_EXIT`] of its start
//!   [`MAX_QUICK_EXITS`] times in a row is given up too. Either way `dev`
//!   says so, names the log, and keeps the other nodes running.
//! * **Every child is stopped.** On shutdown each node gets SIGTERM and
//!   [`STOP_GRACE`] to exit, then SIGKILL; a node is killed too if `dev`
//!   itself fails.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * Restarted nodes run the binary `dev` started with, not a rebuilt one:
//!   restart `kairos dev` to run a new build.
//! * The ports are fixed offsets of `--base-port`; a busy port makes that
//!   node exit before it is ready, and `dev` stops with its log's path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::agent::cancel_on_signal;
use super::output::{errln, progressln};
use crate::launcher::{AgentSpec, HttpProbe, Launch, NodeProcess};
use crate::raft::NodeId;

/// How long every node together may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The pause before restarting a node that exited.
const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// A node that exits within this time of its start counts as failing to start.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// Failed starts in a row after which a node is given up.
const MAX_QUICK_EXITS: u32 = 3;
/// The file (in the data directory) holding the root token's secret.
const ROOT_TOKEN_FILE: &str = "root.token";
/// `--http-allow` of the dev nodes: the default plus loopback, so that jobs
/// may call servers on the developer's machine.
const DEV_HTTP_ALLOW: &str = "public,loopback";
/// Where node data and logs go by default (the CLI's default token file,
/// `kairos-data/root.token`, is in it).
const DEFAULT_DATA_DIR: &str = "kairos-data";
/// The name of the resolved binary in the data directory.
const AGENT_BINARY: &str = "kairos-agent";
/// The name of the cluster cookie's file in the data directory.
const COOKIE_FILE: &str = "cluster-cookie";

/// `kairos dev` flags.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Where node data and logs go.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Node N listens on gRPC BASE+N, HTTP BASE+100+N, cluster BASE+200+N, peer BASE+300+N.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
}

/// One node of the dev cluster and its supervision state.
struct DevNode {
    /// How to (re)start it.
    launch: Launch,
    /// The running process; `None` once the node is given up.
    process: Option<NodeProcess>,
    /// When the current process started.
    started: Instant,
    /// Exits within [`QUICK_EXIT`] of their start, in a row.
    quick_exits: u32,
}

impl DevNode {
    fn id(&self) -> NodeId {
        self.launch.agent.id
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.process().pid())
    }
}

/// Runs the local cluster until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(args.nodes, 1 | 3 | 5), "--nodes: use 1, 3 or 5");
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let binary = resolve_binary(&args.data_dir)?;
    let mut nodes = Vec::new();
    for launch in plan(&args, &binary)? {
        let process = launch.start()?;
        nodes.push(DevNode {
            launch,
            process: Some(process),
            started: Instant::now(),
            quick_exits: 0,
        });
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    progressln!(
        "Starting {} Kairos nodes (data and logs under {})...",
        args.nodes,
        args.data_dir.display()
    );
    tokio::select! {
        ready = wait_ready(&nodes) => ready?,
        _ = shutdown.cancelled() => {}
    }
    if !shutdown.is_cancelled() {
        bootstrap(&nodes, &args.data_dir).await?;
        print_tour(&nodes, args.base_port, &args.data_dir);
    }
    supervise(&mut nodes, &shutdown).await;
    progressln!("\nStopping nodes...");
    for node in &mut nodes {
        if let Some(process) = node.process.take() {
            process.process().terminate_async(STOP_GRACE).await;
        }
    }
    progressln!("All nodes stopped. Data kept in {}.", args.data_dir.display());
    Ok(())
}

/// The launch of every node: ports at fixed offsets of the base port.
fn plan(args: &DevArgs, binary: &Path) -> anyhow::Result<Vec<Launch>> {
    let addr = |offset: u16, id: NodeId| -> anyhow::Result<std::net::SocketAddr> {
        let port = u16::try_from(id)
            .ok()
            .and_then(|id| args.base_port.checked_add(offset + id))
            .context("--base-port: the nodes' ports must stay below 65536")?;
        Ok(([127, 0, 0, 1], port).into())
    };
    let initial_cluster: BTreeMap<NodeId, String> = (1..=args.nodes)
        .map(|id| Ok((id, addr(300, id)?.to_string())))
        .collect::<anyhow::Result<_>>()?;
    let cookie = cluster_cookie(&args.data_dir)?;
    let mut launches = Vec::new();
    for id in 1..=args.nodes {
        let dir = args.data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        launches.push(Launch {
            binary: binary.to_path_buf(),
            agent: AgentSpec {
                id,
                data_dir: dir.clone(),
                grpc_addr: addr(0, id)?,
                peer_addr: addr(300, id)?,
                http_addr: addr(100, id)?,
                cluster_addr: addr(200, id)?,
                initial_cluster: initial_cluster.clone(),
                cookie: cookie.clone(),
                // The tour's webhooks and a developer's own run on this machine.
                extra_args: vec![format!("--http-allow={DEV_HTTP_ALLOW}")],
            },
            env: Vec::new(),
            log: dir.join("agent.log"),
        });
    }
    Ok(launches)
}

/// The dev cluster's cookie: read from `<data_dir>/cluster-cookie`, or drawn
/// from the OS RNG (32 bytes, hex) and written there with mode 0600.
fn cluster_cookie(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use rand::TryRng;

    let path = data_dir.join(COOKIE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(cookie) => return Ok(cookie.trim_end().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("draw a cluster cookie from the OS RNG: {e}"))?;
    let cookie: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(file, "{cookie}").with_context(|| format!("write {}", path.display()))?;
    Ok(cookie)
}

/// Puts the running executable at `<data_dir>/kairos-agent`: a hard link
/// when the data directory is on the executable's file system, else a copy.
/// Either way, replacing the original file later does not change it.
fn resolve_binary(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let target = data_dir.join(AGENT_BINARY);
    let staging = data_dir.join(format!(".{AGENT_BINARY}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let linked = std::env::current_exe().and_then(|exe| std::fs::hard_link(exe, &staging));
    if linked.is_err() {
        // /proc/self/exe opens the running binary even if its file was replaced.
        std::fs::copy("/proc/self/exe", &staging)
            .with_context(|| format!("copy this kairos binary to {}", staging.display()))?;
    }
    // A rename replaces a previous copy even while an old node still runs it.
    std::fs::rename(&staging, &target).with_context(|| format!("create {}", target.display()))?;
    Ok(target)
}

async fn wait_ready(nodes: &[DevNode]) -> anyhow::Result<()> {
    let probe = HttpProbe::new()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    for process in nodes.iter().filter_map(|n| n.process.as_ref()) {
        let left = deadline.saturating_duration_since(Instant::now());
        process.wait_ready(&probe, left).await?;
    }
    Ok(())
}

/// Bootstraps the ACL of a new cluster and writes the root token's secret
/// to `<data_dir>/root.token` (mode 0600), where the CLI finds it; a
/// cluster bootstrapped before keeps its file.
async fn bootstrap(nodes: &[DevNode], data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(ROOT_TOKEN_FILE);
    if path.is_file() {
        return Ok(());
    }
    let endpoints: Vec<_> = nodes.iter().map(|n| n.launch.agent.grpc_addr).collect();
    match crate::launcher::bootstrap_root_token(&endpoints, READY_TIMEOUT).await {
        Ok(token) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("create {}", path.display()))?;
            writeln!(file, "{}", token.secret).with_context(|| format!("write {}", path.display()))?;
            progressln!(
                "Bootstrapped the ACL: the root token is in {} (mode 0600).",
                path.display()
            );
            Ok(())
        }
        Err(crate::error::Error::FailedPrecondition(_)) => {
            errln(&format!(
                "the cluster in {} was bootstrapped before but {} is missing: use a token you kept (--token)",
                data_dir.display(),
                path.display()
            ));
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("bootstrap the ACL: {e}")),
    }
}

/// Restarts nodes that exit until `shutdown` is cancelled.
async fn supervise(nodes: &mut [DevNode], shutdown: &CancellationToken) {
    loop {
        let exits: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let process = n.process.as_ref()?;
                Some(process.process().exited().map(move |status| (i, status)).boxed())
            })
            .collect();
        if exits.is_empty() {
            shutdown.cancelled().await;
            return;
        }
        let (index, status) = tokio::select! {
            ((index, status), _, _) = futures::future::select_all(exits) => (index, status),
            _ = shutdown.cancelled() => return,
        };
        restart(&mut nodes[index], status, shutdown).await;
    }
}

/// Restarts a node that exited with `status`, or gives it up (see the module's invariants).
async fn restart(node: &mut DevNode, status: std::process::ExitStatus, shutdown: &CancellationToken) {
    let id = node.id();
    let log = node.launch.log.display().to_string();
    node.process = None;
    if node.started.elapsed() < QUICK_EXIT {
        node.quick_exits += 1;
    } else {
        node.quick_exits = 0;
    }
    if node.quick_exits >= MAX_QUICK_EXITS {
        errln(&format!(
            "node {id} exited ({status}) within {QUICK_EXIT:?} of its start {MAX_QUICK_EXITS} times in a row; \
             not restarting it — see {log}"
        ));
        return;
    }
    errln(&format!("node {id} exited ({status}); restarting — see {log}"));
    tokio::select! {
        _ = tokio::time::sleep(RESTART_PAUSE) => {}
        _ = shutdown.cancelled() => return,
    }
    match node.launch.start() {
        Ok(process) => {
            node.process = Some(process);
            node.started = Instant::now();
            errln(&format!(
                "node {id} restarted (pid {})",
                node.pid().unwrap_or_default()
            ));
        }
        Err(e) => errln(&format!(
            "node {id}: {e}; not restarting it — restart `kairos dev` to bring it back"
        )),
    }
}

fn print_tour(nodes: &[DevNode], base: u16, data_dir: &Path) {
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| n.launch.agent.grpc_addr.to_string())
        .collect();
    // The CLI finds the root token by itself only with the default endpoints
    // and data directory (`kairos-data/root.token` under its working directory).
    let default_place = base == 7100 && data_dir == Path::new(DEFAULT_DATA_DIR);
    let token_env = if default_place {
        String::new()
    } else {
        let token = data_dir.join(ROOT_TOKEN_FILE);
        let token = std::path::absolute(&token).unwrap_or(token);
        format!("KAIROS_TOKEN_FILE={} ", token.display())
    };
    progressln!("\nKairos dev cluster is ready.");
    for node in nodes {
        let agent = &node.launch.agent;
        progressln!(
            "  node {} (pid {}): gRPC {}  peer {}  cluster {}  http://{}/metrics  log {}",
            agent.id,
            node.pid().unwrap_or_default(),
            agent.grpc_addr,
            agent.peer_addr,
            agent.cluster_addr,
            agent.http_addr,
            node.launch.log.display()
        );
    }
    let env = if base == 7100 {
        token_env
    } else {
        format!("KAIROS_ENDPOINTS={} {token_env}", endpoints.join(","))
    };
    progressln!("\nTry, in another terminal:");
    progressln!("  {env}kairos cluster status");
    progressln!("  {env}kairos job create hello --type noop --schedule '*/5 * * * *' --owner demo");
    progressln!("  {env}kairos job list");
    progressln!("  {env}kairos job get hello -o json");
    progressln!("  kairos cron next '0 9 * * 1-5' --tz Europe/Berlin --count 3");
    progressln!("(`kairos` is target/release/kairos, or `cargo run --release --`.)");
    progressln!("\nPress Ctrl-C to stop the cluster.");
}
