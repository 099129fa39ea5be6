//! `kairos agent`: one node, from configuration to clean shutdown.
//!
//! [`run`] loads the TLS files and binds the listeners first (a bad file or a
//! busy port fails fast with a clear message), starts the node, serves the
//! client API (`--grpc-addr`), the peer API (`--peer-addr`, authenticated
//! peers only) and HTTP, and waits for the shutdown token; it then hands
//! leadership over if it leads (at most `--handover-timeout-ms`, default
//! [`HANDOVER_TIMEOUT`], see
//! [`crate::raft::handover`]), stops the servers, shuts Raft down and waits
//! for every task. SIGTERM and Ctrl-C cancel the token. The servers run on
//! a token of their own, so they keep answering peers during the handover;
//! a server that fails cancels that one and stops the node without a
//! handover.

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context;
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServerMessage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::cluster::WorkerTls;
use crate::actors::external::{ExternalPool, ExternalWorkers};
use crate::actors::worker::{PoolArgs, WorkerPool};
use crate::api::task_token::TaskTokenKey;
use crate::api::ApiWorkers;
use crate::config::{AgentArgs, AgentConfig};
use crate::metrics::Metrics;
use crate::node::{Node, NodeOptions};
use crate::raft::handover::HandoverOutcome;
use crate::tls::PeerTls;
use crate::transport::PeerSecurity;

/// How long shutdown waits for each group of tasks to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a stopping leader tries to hand leadership over before it
/// stops anyway (then the followers elect after their timeout), unless
/// `--handover-timeout-ms` says otherwise.
pub const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Parses the agent's configuration, sets up logging, traces and signals,
/// and runs it; exports the last spans on the way out.
pub async fn run_from_args(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::resolve(args)?;
    let telemetry = crate::telemetry::init(config.log_format, config.traces.as_ref(), config.node_id)?;
    if let Some(traces) = &config.traces {
        tracing::info!(endpoint = %traces.endpoint, sampling = traces.sampling, "exporting traces over OTLP/gRPC");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = run(config, shutdown).await;
    telemetry.shutdown();
    result
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C (SIGINT).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let peer_tls = config.peer_tls.as_ref().map(PeerTls::load).transpose()?;
    let peer_security = Arc::new(match &peer_tls {
        Some(tls) => PeerSecurity::MutualTls(tls.clone()),
        None => PeerSecurity::ClusterSecret(config.cluster_secret.clone()),
    });
    let worker_tls = peer_tls.as_ref().map(WorkerTls::new);
    let api_tls = config
        .api_tls
        .as_ref()
        .map(|files| crate::tls::api_server_config(&files.cert, &files.key, files.client_ca.as_deref()))
        .transpose()?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("--grpc-addr {}", config.grpc_addr))?;
    let peer = TcpListener::bind(config.peer_addr)
        .await
        .with_context(|| format!("--peer-addr {}", config.peer_addr))?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("--http-addr {}", config.http_addr))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("--data-dir {}", config.data_dir.display()))?;
    if !config.dial_map.is_empty() {
        tracing::warn!(
            entries = config.dial_map.len(),
            "peer addresses are rewritten by --dial-map"
        );
    }
    #[cfg(feature = "chaos-break")]
    if let Some(chaos_break) = config.chaos_break {
        tracing::error!(
            ?chaos_break,
            "--unsafe-chaos-break: THIS NODE IS DELIBERATELY BROKEN (the chaos checker's test)"
        );
    }

    if config.force_new_cluster {
        crate::backup::force::before_start(&config.data_dir, config.node_id, &config.advertise_addr).await?;
    }

    let metrics = Metrics::with_job_limit(config.metrics_job_limit);
    // Cancelled once the node stops serving: after the handover on a
    // planned stop, at once when a server fails.
    let serving = CancellationToken::new();
    let node = Node::start(
        &node_options(&config, peer_security.clone(), metrics.clone()),
        serving.clone(),
    )
    .await?;
    let (node_server, _) = crate::actors::cluster::start_node_server(
        config.node_id,
        config.cluster_addr,
        &config.advertised_cluster_addr(),
        &config.cluster_secret,
        worker_tls.as_ref(),
        serving.clone(),
    )
    .await?;
    let registry = registry(&config);
    let pool_args = PoolArgs {
        metrics: metrics.clone(),
        node: node.clone(),
        registry: registry.clone(),
        workers: config.workers,
    };
    let (pool, _) = Actor::spawn(None, WorkerPool, pool_args)
        .await
        .context("start the worker pool")?;
    let external = ExternalWorkers::new(config.node_id);
    let (external_pool, _) = Actor::spawn(None, ExternalPool, external.clone())
        .await
        .context("start the external worker pool")?;
    tracing::info!(node = config.node_id, grpc = %config.grpc_addr, peer = %config.peer_addr,
        http = %config.http_addr, cluster = %config.cluster_addr, peer_auth = peer_security.mode(),
        api_tls = api_tls.is_some(), data_dir = %config.data_dir.display(), http_allow = %config.http_allow,
        "kairos node started");

    let services = Services {
        node: node.clone(),
        metrics,
        workers: ApiWorkers {
            registry,
            external,
            task_tokens: TaskTokenKey::derive(&config.cluster_secret),
        },
        node_server: node_server.clone(),
        peer_security,
        worker_tls,
        api_tls,
        shutdown: serving.clone(),
    };
    let tasks = services.spawn(Listeners { grpc, peer, http }, &config);

    tokio::select! {
        _ = shutdown.cancelled() => {
            let started = std::time::Instant::now();
            match node.hand_over_leadership(config.handover_timeout).await {
                HandoverOutcome::NotLeader => {}
                HandoverOutcome::Transferred { to } => tracing::info!(
                    node = config.node_id, to, elapsed = ?started.elapsed(), "leadership handed over"
                ),
                HandoverOutcome::Abandoned { reason } => tracing::warn!(
                    node = config.node_id, elapsed = ?started.elapsed(),
                    "leadership not handed over ({reason}); the followers elect after their timeout"
                ),
            }
        }
        _ = serving.cancelled() => {}
    }
    serving.cancel();
    // Stop Raft first: whatever waits for a commit (in-flight requests, the
    // leader's timer and dispatcher) then fails at once instead of waiting for
    // peers that may already be gone. The servers drain meanwhile; the node
    // waits for its own tasks (batcher, snapshot trigger, result reporter).
    tracing::info!(node = config.node_id, "stopping");
    node.shutdown().await;
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!(
            node = config.node_id,
            "tasks still running after {SHUTDOWN_GRACE:?}; exiting anyway"
        );
    }
    let _ = pool.stop_and_wait(None, Some(SHUTDOWN_GRACE)).await;
    external_pool.stop(None);
    node_server.stop(None);
    tracing::info!(node = config.node_id, "stopped");
    // Stopped because this node is too old for the cluster version.
    if let Some(refusal) = node.cluster_version().refusal() {
        anyhow::bail!(refusal);
    }
    // Stopped because Raft failed on a storage error.
    if let Some(failure) = node.raft_failure() {
        anyhow::bail!(failure);
    }
    Ok(())
}

/// What the node is started with, from the agent's configuration.
fn node_options(
    config: &AgentConfig,
    peer_security: Arc<PeerSecurity>,
    metrics: Arc<Metrics>,
) -> NodeOptions {
    NodeOptions {
        id: config.node_id,
        data_dir: config.data_dir.clone(),
        advertise_addr: config.advertise_addr.clone(),
        client_addr: config.advertise_client_addr.clone(),
        http_addr: config.advertised_http_addr(),
        cluster_id: crate::api::service_info::derive_cluster_id(&config.cluster_secret),
        initial_cluster: config.initial_cluster.clone(),
        tuning: config.tuning.clone(),
        cluster_addr: config.advertised_cluster_addr(),
        dial_map: Arc::new(config.dial_map.clone()),
        audit_retain: config.audit_retain,
        auth_disabled: config.auth.disabled,
        peer_security,
        metrics,
        #[cfg(feature = "chaos-break")]
        chaos_break: config.chaos_break,
    }
}

/// The bound listeners the servers take.
struct Listeners {
    /// Client API (`--grpc-addr`).
    grpc: TcpListener,
    /// Peer API (`--peer-addr`).
    peer: TcpListener,
    /// Health, metrics and the REST API (`--http-addr`).
    http: TcpListener,
}

/// The job types this node runs: the built-in ones (`exec` only with
/// `--allow-exec`, `http` fenced by `--http-allow`), and the test-only ones
/// when asked.
fn registry(config: &AgentConfig) -> Arc<crate::handlers::Registry> {
    let registry =
        crate::handlers::Registry::builtin_with_http_allow(config.allow_exec, config.http_allow.clone());
    #[cfg(feature = "test-handlers")]
    let registry = crate::handlers::panic::register_if(registry, config.test_handlers);
    Arc::new(registry)
}

/// What the agent's long-running tasks share.
struct Services {
    /// The started node.
    node: Arc<Node>,
    /// Where the servers record requests.
    metrics: Arc<Metrics>,
    /// Built-in handlers and external workers, for the API.
    workers: ApiWorkers,
    /// The worker network's server, whose sessions the connector keeps.
    node_server: ActorRef<NodeServerMessage>,
    /// How peer connections are authenticated.
    peer_security: Arc<PeerSecurity>,
    /// The worker network's TLS, with peer TLS.
    worker_tls: Option<WorkerTls>,
    /// The client API's TLS, when configured.
    api_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Ends every task; a server that fails cancels it.
    shutdown: CancellationToken,
}

impl Services {
    /// Spawns the client, peer and HTTP servers, the leader-actor supervisor
    /// and the worker-network connector on a closed tracker the caller waits on.
    fn spawn(self, listeners: Listeners, config: &AgentConfig) -> TaskTracker {
        let Listeners { grpc, peer, http } = listeners;
        let tasks = TaskTracker::new();
        // One `Api` serves gRPC and the REST gateway on the HTTP listener.
        let api = crate::api::Api::new(
            self.node.clone(),
            self.metrics.clone(),
            self.workers.clone(),
            config.auth,
            crate::api::Limits {
                max_watches: config.max_watches,
                max_requests: config.max_requests,
            },
            self.shutdown.clone(),
        );
        {
            let (api, tls, shutdown) = (api.clone(), self.api_tls.clone(), self.shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = crate::api::serve(grpc, tls, api, shutdown.clone()).await {
                    tracing::error!("gRPC server failed: {e}");
                    shutdown.cancel();
                }
            });
        }
        {
            let (node, security, shutdown) = (
                self.node.clone(),
                self.peer_security.clone(),
                self.shutdown.clone(),
            );
            tasks.spawn(async move {
                if let Err(e) =
                    crate::api::raft_service::serve_peers(peer, &security, node, shutdown.clone()).await
                {
                    tracing::error!("peer server failed: {e}");
                    shutdown.cancel();
                }
            });
        }
        {
            let (node, metrics, shutdown) = (self.node.clone(), self.metrics.clone(), self.shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = crate::http::serve(http, node, metrics, api, shutdown.clone()).await {
                    tracing::error!("HTTP server failed: {e}");
                    shutdown.cancel();
                }
            });
        }
        tasks.spawn(crate::actors::run_leader_actors(
            self.node.clone(),
            config.leader.clone(),
            self.shutdown.clone(),
        ));
        if let Some(token) = config.bootstrap_token.clone() {
            tasks.spawn(crate::api::bootstrap_token::run(
                self.node.clone(),
                token,
                self.shutdown.clone(),
            ));
        }
        tasks.spawn(crate::actors::cluster::run_connector(
            self.node,
            self.node_server,
            self.worker_tls,
            self.shutdown,
        ));
        tasks.close();
        tasks
    }
}

/// `kairos debug ...`: internal diagnostics.
#[derive(clap::Args, Debug)]
pub struct DebugCommand {
    /// Which diagnostic.
    #[command(subcommand)]
    pub what: DebugWhat,
}

/// Internal diagnostics.
#[derive(clap::Subcommand, Debug)]
pub enum DebugWhat {
    /// Append `entries` log entries one at a time, printing `acked N` after each
    /// acknowledgement (run under strace to see the fsync before each ack).
    LogAppend {
        /// Data directory for a throw-away log.
        #[arg(long)]
        data_dir: PathBuf,
        /// How many entries to append.
        #[arg(long, default_value_t = 3)]
        entries: u64,
    },
}

/// Runs a diagnostic.
pub async fn debug(cmd: DebugCommand) -> anyhow::Result<()> {
    use std::io::Write;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    match cmd.what {
        DebugWhat::LogAppend { data_dir, entries } => {
            let (mut log, _sm) = crate::raft::open_storage(&data_dir)?;
            for index in 1..=entries {
                let entry = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Blank,
                };
                log.blocking_append([entry]).await?;
                // One write(2) per line so the trace shows each acknowledgement.
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {index}")?;
                out.flush()?;
            }
            Ok(())
        }
    }
}
