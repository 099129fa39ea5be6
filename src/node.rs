//! A running Kairos node: Raft, storage, and the rules for reaching the leader.
//!
//! [`Node`] is what the API calls. It hides where the leader is:
//!
//! - **Writes** ([`Node::write`]) are proposed locally when this node leads and
//!   otherwise forwarded to the leader over the peer `RaftService.Forward` RPC.
//!   The leader stamps its clock into the command (the state machine never reads
//!   a clock). While there is no leader, or the leader moved, the node waits for
//!   the next one and retries, up to [`ROUTE_TIMEOUT`].
//! - **Reads** pass a barrier first ([`Node::read_barrier`]). Linearizable reads
//!   use ReadIndex: the leader confirms it still leads with a quorum
//!   (`get_read_log_id`) and names a log index; this node waits until it has
//!   applied that index and then reads its own state. Stale reads skip the
//!   barrier.
//! - **Membership** changes are forwarded like writes; adding a node makes it a
//!   learner, waits until it has caught up, then promotes it to voter.
//!
//! Addresses: the membership holds each node's *peer* address (`--peer-addr`),
//! where its `RaftService` listens and which only other nodes may use. Clients
//! are only ever given *client* API addresses (`--grpc-addr`): every node
//! reports its own in [`NodeReport::grpc_addr`] (and its HTTP address in
//! [`NodeReport::http_addr`], which the service record shows), and the node
//! keeps what its probes learn in an address book ([`Node::client_addr_of`]),
//! refreshed by a task of its own. A leader hint leaving the node ([`Node::write`],
//! [`Node::read_barrier`]) is translated there, and dropped when the leader's
//! client address is not known yet: no hint is better than a peer address.
//!
//! Bootstrap: a node started with `--initial-cluster` on an empty data dir
//! initializes Raft with that membership. Every member does the same with the
//! same list, which openraft accepts (the first log entry is identical
//! everywhere), so no manual step is needed; an election follows once a
//! majority is up. A node restarted on its data dir is already initialized and
//! ignores the flag.
//!
//! Tasks: the node owns what it spawns — the write batcher's proposer and
//! its per-entry tasks, the snapshot trigger ([`crate::raft::snapshot_policy`]),
//! the counter of leader changes ([`crate::raft::stats`]) and the result
//! reporter of the local worker pool — in one tracker. They
//! end when the shutdown signal given to [`Node::start`] is cancelled, and
//! [`Node::shutdown`] stops Raft and waits for them, bounded. A write
//! waiting for a leader stops waiting then too, answered `UNAVAILABLE`
//! ("this node is shutting down"), so that no request holds a stopping node.
//!
//! IMPLEMENTATION CAVEATS: a forwarded write whose connection breaks after it was
//! sent has an unknown outcome; it is retried, which is harmless for creates
//! carrying a `request_id` (the CLI always sends one) and shows up as `ABORTED`
//! or `NOT_FOUND` for a retried update or delete that had in fact succeeded.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::api::status_with_causes;
use crate::dial::DialMap;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::proto::raft_service_client::RaftServiceClient;
use crate::proto::{NodeMetricsRequest, RaftPayload, ReadIndexRequest};
use crate::raft::batcher::WriteBatcher;
use crate::raft::network::{peer_client, PeerNetwork};
use crate::raft::proposer::{write_error, RaftProposer};
use crate::raft::snapshot_policy::snapshot_by_changes;
use crate::raft::state_machine::StateHandle;
use crate::raft::stats::count_leader_changes;
use crate::raft::{decode, encode, open_storage_measured, raft_config, NodeId, Raft, RaftTuning};
use crate::scheduler::{Command, Request, Response};
use crate::transport::PeerSecurity;

/// How long a write or read may wait for a leader before giving up.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a peer call (forwarded write, read index, status probe) may take.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a forwarded membership change may take: adding a node waits until
/// it has caught up, which for a large state means shipping a snapshot.
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the address book asks members whose client address it lacks;
/// every [`ADDRESS_BOOK_REFRESH_ROUNDS`] rounds it asks every member again.
const ADDRESS_BOOK_ROUND: Duration = Duration::from_secs(1);
const ADDRESS_BOOK_REFRESH_ROUNDS: u32 = 10;
/// How long a joining node may take to answer the leader's check.
const JOIN_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`Node::shutdown`] waits for the node's tasks after Raft stopped:
/// long enough for a batch in flight to fail and the queue to be answered.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (unique in the cluster, never reused).
    pub id: NodeId,
    /// Where sled keeps the log and state.
    pub data_dir: PathBuf,
    /// The peer address other nodes reach this node's `RaftService` at.
    pub advertise_addr: String,
    /// The client API (gRPC) address clients are sent to, reported to peers.
    pub client_addr: String,
    /// The HTTP address (`/readyz`, `/metrics`) as reachable by others,
    /// reported to peers.
    pub http_addr: String,
    /// The cluster's id, the same on every node (see
    /// [`crate::api::service_info::derive_cluster_id`]).
    pub cluster_id: String,
    /// Members of a new cluster (id → peer address); empty to wait to be added.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Raft timing and compaction.
    pub tuning: RaftTuning,
    /// The worker network (ractor_cluster) address, reported to peers.
    pub cluster_addr: String,
    /// Where this node dials its peers (see [`crate::dial`]).
    pub dial_map: Arc<DialMap>,
    /// Audit entries this replica keeps (`--audit-retain`).
    pub audit_retain: u64,
    /// `--insecure-disable-auth`, reported to peers and clients.
    pub auth_disabled: bool,
    /// How this node authenticates the connections it opens to peers.
    pub peer_security: Arc<PeerSecurity>,
    /// Where the node and its Raft layer record what they measure.
    pub metrics: Arc<Metrics>,
    /// The deliberately broken build's setting (see `crate::chaos_break`).
    #[cfg(feature = "chaos-break")]
    pub chaos_break: Option<crate::chaos_break::ChaosBreak>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable via ReadIndex.
    #[default]
    Linearizable,
    /// Whatever this node has applied.
    Stale,
}

/// A request a follower forwards to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Forwarded {
    /// A state machine command on behalf of `principal`.
    Write {
        /// Who asked.
        principal: String,
        /// What to do.
        command: Box<Command>,
        /// Makes retries of this write safe (see [`Node::write`]).
        write_id: Option<String>,
    },
    /// Add a node as learner, then voter.
    AddNode {
        /// New node id.
        id: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// Remove a node from the membership.
    RemoveNode {
        /// Node to remove.
        id: NodeId,
    },
}

/// One node's view of itself, as answered to `NodeMetrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub id: NodeId,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Leader as this node knows it.
    pub leader: Option<NodeId>,
    /// Committed index as saved by this node.
    pub commit_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Last index in the log.
    pub last_log_index: u64,
    /// Index covered by the latest snapshot.
    pub snapshot_index: u64,
    /// Highest index purged from the log.
    pub purged_index: u64,
    /// Address of this node's worker network (ractor_cluster) listener.
    pub cluster_addr: String,
    /// The node runs with `--insecure-disable-auth`.
    pub auth_disabled: bool,
    /// Head of the node's audit chain: sequence number and hash.
    pub audit_head: (u64, [u8; 32]),
    /// Address of this node's client API (gRPC), what clients are sent to.
    pub grpc_addr: String,
    /// Address of this node's HTTP endpoints (`/readyz`, `/metrics`).
    pub http_addr: String,
}

/// A started node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// Read access to the applied state.
    pub state: StateHandle,
    /// Committed index as last saved by the log store.
    committed: Arc<AtomicU64>,
    /// The committed index found on disk at start; `/readyz` waits until it is applied.
    startup_commit: u64,
    /// Cached peer clients by peer address.
    peers: Mutex<HashMap<String, RaftServiceClient<Channel>>>,
    /// Where this node dials its peers.
    dial_map: Arc<DialMap>,
    /// How this node authenticates the connections it opens to peers.
    peer_security: Arc<PeerSecurity>,
    /// The worker network address, reported in [`NodeReport`].
    cluster_addr: String,
    /// `--insecure-disable-auth`, reported in [`NodeReport`].
    auth_disabled: bool,
    /// The client API address, reported in [`NodeReport`].
    client_addr: String,
    /// The HTTP address, reported in [`NodeReport`].
    http_addr: String,
    /// The cluster's id.
    cluster_id: String,
    /// Client API addresses of members by peer address, as their reports
    /// gave them (this node's own included).
    address_book: Mutex<HashMap<String, String>>,
    /// When this process started (Unix ns) and a counter: with the node id,
    /// they make write ids unique across restarts.
    boot_ns: i64,
    write_seq: AtomicU64,
    /// Packs the writes this node proposes as leader into shared entries.
    batcher: WriteBatcher,
    /// Every task the node spawns (see [`Node::tasks`]).
    tasks: TaskTracker,
    /// Cancelled when the node stops; a child of the signal given to
    /// [`Node::start`], so the node can also stop on its own.
    stopping: CancellationToken,
    /// What this node knows of its sink deliveries (it delivers while it leads).
    pub sink_status: crate::actors::sinks::SinkStatus,
    /// This node's metrics (served at `/metrics`).
    pub metrics: Arc<Metrics>,
}

impl Node {
    /// Opens storage, starts Raft and the node's own tasks, and bootstraps a
    /// new cluster if asked to. The tasks stop when `shutdown` is cancelled
    /// or [`Node::shutdown`] is called, which waits for them.
    pub async fn start(options: &NodeOptions, shutdown: CancellationToken) -> Result<Arc<Node>> {
        let (log_store, state_machine) =
            open_storage_measured(&options.data_dir, options.metrics.raft_stats())?;
        log_store.resign_leadership(options.id)?;
        #[cfg(feature = "chaos-break")]
        let state_machine = state_machine.with_chaos_break(options.chaos_break);
        let state_machine = state_machine.with_audit_retain(options.audit_retain);
        let committed = log_store.committed_handle();
        let startup_commit = log_store.committed_index();
        let state = state_machine.state_handle();
        let changes_since_snapshot = state_machine.changes_since_snapshot();
        let config = Arc::new(raft_config(&options.tuning)?);
        let raft = Raft::new(
            options.id,
            config,
            PeerNetwork {
                id: options.id,
                dial_map: options.dial_map.clone(),
                security: options.peer_security.clone(),
            },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::internal(format!("start raft: {e}")))?;
        let (tasks, stopping) = (TaskTracker::new(), shutdown.child_token());
        let proposer = RaftProposer {
            id: options.id,
            raft: raft.clone(),
            traces: state.traces.clone(),
            commit_seconds: options.metrics.raft_stats().proposal_commit_seconds,
        };
        let batcher = WriteBatcher::start(proposer, &tasks, stopping.clone());
        tasks.spawn(snapshot_by_changes(
            raft.clone(),
            changes_since_snapshot,
            options.tuning.snapshot_logs,
            options.id,
            state.clone(),
            stopping.clone(),
        ));
        tasks.spawn(count_leader_changes(
            raft.clone(),
            options.metrics.raft_stats().leader_changes,
            stopping.clone(),
        ));
        let node = Arc::new(Node {
            id: options.id,
            raft,
            state,
            committed,
            startup_commit,
            peers: Mutex::default(),
            dial_map: options.dial_map.clone(),
            peer_security: options.peer_security.clone(),
            cluster_addr: options.cluster_addr.clone(),
            auth_disabled: options.auth_disabled,
            client_addr: options.client_addr.clone(),
            http_addr: options.http_addr.clone(),
            cluster_id: options.cluster_id.clone(),
            address_book: Mutex::new(HashMap::from([(
                options.advertise_addr.clone(),
                options.client_addr.clone(),
            )])),
            boot_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            write_seq: AtomicU64::new(0),
            batcher,
            tasks,
            stopping,
            sink_status: Default::default(),
            metrics: options.metrics.clone(),
        });
        node.tasks.spawn(node.clone().keep_address_book());
        if let Err(e) = node.bootstrap(options).await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    async fn bootstrap(&self, options: &NodeOptions) -> Result<()> {
        let initialized = self.raft.is_initialized().await.map_err(Error::internal)?;
        if initialized {
            tracing::info!(
                node = self.id,
                "restarted on existing data; --initial-cluster ignored"
            );
            return Ok(());
        }
        if options.initial_cluster.is_empty() {
            tracing::info!(
                node = self.id,
                "no --initial-cluster: waiting to be added with `kairos cluster add-node`"
            );
            return Ok(());
        }
        if !options.initial_cluster.contains_key(&self.id) {
            return Err(Error::InvalidArgument(format!(
                "--initial-cluster does not contain this node's id {}",
                self.id
            )));
        }
        let members: BTreeMap<NodeId, BasicNode> = options
            .initial_cluster
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node = self.id, members = ?options.initial_cluster, "initialized new cluster")
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(node = self.id, "already initialized: {e}")
            }
            Err(e) => return Err(Error::internal(format!("initialize cluster: {e}"))),
        }
        Ok(())
    }

    /// Stops Raft and the node's tasks, and waits for the tasks (at most
    /// [`TASKS_GRACE`]). Pending requests fail with `Unavailable`.
    ///
    /// Raft stops first: whatever waits for a commit (a batch in flight, a
    /// result being reported) then fails at once instead of waiting for
    /// peers that may already be gone.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        self.stopping.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASKS_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                node = self.id,
                tasks = self.tasks.len(),
                "node tasks still running after {TASKS_GRACE:?}; leaving them"
            );
        }
    }

    /// The tasks this node owns; [`Node::shutdown`] waits for them. Parts
    /// that work for the node (the worker pool's result reporter) spawn
    /// their tasks here.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Cancelled when the node stops: the signal its tasks end on.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// The committed index as last saved by this node.
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// `Ok` when the node knows a leader and has applied what was committed
    /// when it started; otherwise the reason it is not ready.
    pub fn readiness(&self) -> Result<(), String> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader.is_none() {
            return Err("no known leader".into());
        }
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        if applied < self.startup_commit {
            return Err(format!(
                "applied index {applied} is behind the startup commit index {}",
                self.startup_commit
            ));
        }
        Ok(())
    }

    /// The index of the last entry this node applied.
    pub fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
    }

    /// Resolves once this node has applied `index`: `true`, or `false` if
    /// Raft stopped first. Owns what it needs, so a stream can hold it.
    pub fn applied_reached(&self, index: u64) -> impl std::future::Future<Output = bool> + Send + 'static {
        let raft = self.raft.clone();
        async move {
            raft.wait(None)
                .applied_index_at_least(Some(index), "applied position")
                .await
                .is_ok()
        }
    }

    /// This node's own view of the cluster.
    pub fn report(&self) -> NodeReport {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeReport {
            id: self.id,
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            commit_index: self.committed_index(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            cluster_addr: self.cluster_addr.clone(),
            auth_disabled: self.auth_disabled,
            audit_head: {
                let head = self.state.read().audit().head();
                (head.seq, head.hash)
            },
            grpc_addr: self.client_addr.clone(),
            http_addr: self.http_addr.clone(),
        }
    }

    /// The cluster's id, the same on every node and across restarts (see
    /// [`crate::api::service_info::derive_cluster_id`]).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The client API address of the member at `peer_addr`, if its report
    /// has been seen.
    pub fn client_addr_of(&self, peer_addr: &str) -> Option<String> {
        let book = self.address_book.lock().unwrap_or_else(|p| p.into_inner());
        book.get(peer_addr).cloned()
    }

    fn learn_client_addr(&self, peer_addr: &str, report: &NodeReport) {
        if report.grpc_addr.is_empty() {
            return;
        }
        let mut book = self.address_book.lock().unwrap_or_else(|p| p.into_inner());
        book.insert(peer_addr.to_string(), report.grpc_addr.clone());
    }

    /// Keeps the address book: asks members whose client address is unknown
    /// every [`ADDRESS_BOOK_ROUND`], and every member now and then (a node
    /// may restart with another client address). Ends when the node stops.
    async fn keep_address_book(self: Arc<Node>) {
        let mut rounds = tokio::time::interval(ADDRESS_BOOK_ROUND);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u32.. {
            tokio::select! {
                _ = rounds.tick() => {}
                _ = self.stopping.cancelled() => return,
            }
            let everyone = round % ADDRESS_BOOK_REFRESH_ROUNDS == 0;
            let asks = self
                .members()
                .into_iter()
                .filter(|(id, (addr, _))| *id != self.id && (everyone || self.client_addr_of(addr).is_none()))
                .map(|(_, (addr, _))| {
                    let node = self.clone();
                    async move {
                        let _ = node.probe(&addr, ADDRESS_BOOK_ROUND).await;
                    }
                });
            tokio::select! {
                _ = futures::future::join_all(asks) => {}
                _ = self.stopping.cancelled() => return,
            }
        }
    }

    /// `error` as a client may see it: a leader hint names the leader's
    /// client API address, or is dropped while that is unknown.
    fn for_clients(&self, error: Error) -> Error {
        match error {
            Error::Unavailable { message, leader } => Error::Unavailable {
                message,
                leader: leader.and_then(|peer_addr| self.client_addr_of(&peer_addr)),
            },
            other => other,
        }
    }

    /// Where this node dials its peers.
    pub fn dial_map(&self) -> &DialMap {
        &self.dial_map
    }

    /// Members of the current membership: id → (peer address, is voter).
    pub fn members(&self) -> BTreeMap<NodeId, (String, bool)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<NodeId> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, node)| (*id, (node.addr.clone(), voters.contains(id))))
            .collect()
    }

    fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let client = peer_client(addr, &self.dial_map, &self.peer_security)
            .map_err(|e| Error::unavailable(format!("peer {addr}: {e}")))?;
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Proposes `command` through the leader, wherever it is, exactly once.
    ///
    /// Routing retries when the leader cannot be reached or changes — also
    /// when the first attempt may already have been applied (a connection
    /// that broke after sending, a leader that stepped down with the entry in
    /// flight). The write therefore carries a write id: the state machine
    /// applies the first entry with it and answers every later one with the
    /// first result, so a retried delete reports success, not NOT_FOUND.
    pub async fn write(&self, principal: &str, command: Command) -> Result<Response> {
        let seq = self.write_seq.fetch_add(1, Ordering::Relaxed);
        self.route(Forwarded::Write {
            principal: principal.to_string(),
            command: Box::new(command),
            write_id: Some(format!("{}-{}-{seq}", self.id, self.boot_ns)),
        })
        .await
    }

    /// Proposes `command` through the leader without a write id: for writes
    /// that are safe to apply twice because a fencing token guards them
    /// (heartbeats and results of attempts), and frequent enough that
    /// remembering each would cost.
    pub async fn write_fenced(&self, principal: &str, command: Command) -> Result<Response> {
        self.route(Forwarded::Write {
            principal: principal.to_string(),
            command: Box::new(command),
            write_id: None,
        })
        .await
    }

    /// Proposes `command` only if this node is the leader (no forwarding):
    /// for the leader-only actors, whose proposals are pointless elsewhere.
    pub async fn propose_local(&self, principal: &str, command: Command) -> Result<Response> {
        self.execute(Forwarded::Write {
            principal: principal.to_string(),
            command: Box::new(command),
            write_id: None,
        })
        .await
    }

    /// Adds a node: learner first, voter once it has caught up.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<()> {
        self.route(Forwarded::AddNode { id, addr }).await.map(|_| ())
    }

    /// Removes a node from the membership.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.route(Forwarded::RemoveNode { id }).await.map(|_| ())
    }

    async fn route(&self, request: Forwarded) -> Result<Response> {
        self.route_to_leader(request)
            .await
            .map_err(|e| self.for_clients(e))
    }

    async fn route_to_leader(&self, request: Forwarded) -> Result<Response> {
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        loop {
            let result = match self.leader() {
                Some((leader, _)) if leader == self.id => self.execute(request.clone()).await,
                Some((_, addr)) => self.forward(&addr, &request).await,
                None => Err(Error::unavailable("no leader is elected yet")),
            };
            match result {
                Err(Error::Unavailable { .. }) if self.stopping.is_cancelled() => {
                    return Err(Error::unavailable("this node is shutting down"))
                }
                Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                    self.wait_for_leader_change(deadline).await
                }
                other => return other,
            }
        }
    }

    /// Waits (bounded by `deadline`, and ended by the node's shutdown) until a
    /// leader other than a failed one is known.
    async fn wait_for_leader_change(&self, deadline: Instant) {
        let before = self.raft.metrics().borrow().current_leader;
        let mut metrics = self.raft.metrics();
        let changed = async {
            loop {
                if metrics.changed().await.is_err() {
                    return;
                }
                let now = metrics.borrow().current_leader;
                if now.is_some() && now != before {
                    return;
                }
            }
        };
        // A short pause at least, so a leader that is merely slow is retried without a storm.
        let retry_after = (Instant::now() + Duration::from_millis(100)).min(deadline);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(retry_after) => {}
            _ = self.stopping.cancelled() => {}
        }
    }

    async fn forward(&self, addr: &str, request: &Forwarded) -> Result<Response> {
        let span = match crate::telemetry::in_trace() {
            true => tracing::info_span!("kairos.forward", otel.kind = "client", leader = %addr),
            false => tracing::Span::none(),
        };
        self.forward_in(addr, request, &span)
            .instrument(span.clone())
            .await
    }

    async fn forward_in(&self, addr: &str, request: &Forwarded, span: &tracing::Span) -> Result<Response> {
        let mut client = self.client(addr)?;
        let mut call = tonic::Request::new(RaftPayload {
            data: encode(request)?,
        });
        let mut headers = std::mem::take(call.metadata_mut()).into_headers();
        crate::telemetry::inject_headers(span, &mut headers);
        *call.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        call.set_timeout(match request {
            Forwarded::Write { .. } => PEER_CALL_TIMEOUT,
            Forwarded::AddNode { .. } | Forwarded::RemoveNode { .. } => MEMBERSHIP_CALL_TIMEOUT,
        });
        let reply = client.forward(call).await.map_err(|status| Error::Unavailable {
            message: format!("forwarding to the leader at {addr} failed: {}", status.message()),
            leader: Some(addr.to_string()),
        })?;
        decode::<Result<Response>>(&reply.into_inner().data)?
    }

    /// Executes a forwarded request on this node, which must be the leader.
    pub async fn execute(&self, request: Forwarded) -> Result<Response> {
        match request {
            Forwarded::Write {
                principal,
                command,
                write_id,
            } => {
                let request = Request {
                    at_ms: 0, // stamped as it is queued
                    principal,
                    command: *command,
                    write_id,
                };
                self.batcher.propose_now(request).await
            }
            Forwarded::AddNode { id, addr } => {
                if self
                    .members()
                    .get(&id)
                    .is_some_and(|(a, voter)| *a == addr && *voter)
                {
                    return Ok(Response::Empty);
                }
                self.check_joining_node(id, &addr).await?;
                tracing::info!(node = id, %addr, "adding learner and waiting for it to catch up");
                self.raft
                    .add_learner(id, BasicNode::new(&addr), true)
                    .await
                    .map_err(|e| write_error(self.id, e))?;
                tracing::info!(node = id, "promoting learner to voter");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(|e| write_error(self.id, e))?;
                Ok(Response::Empty)
            }
            Forwarded::RemoveNode { id } => {
                let members = self.members();
                let Some((_, voter)) = members.get(&id) else {
                    return Err(Error::NotFound(format!("node {id} is not a member")));
                };
                if *voter && members.values().filter(|(_, v)| *v).count() == 1 {
                    return Err(Error::FailedPrecondition(format!("node {id} is the last voter")));
                }
                let change = if *voter {
                    ChangeMembers::RemoveVoters([id].into())
                } else {
                    ChangeMembers::RemoveNodes([id].into())
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(|e| write_error(self.id, e))?;
                Ok(Response::Empty)
            }
        }
    }

    /// Before node `id` at peer address `addr` joins: it must answer over the
    /// authenticated peer network, as node `id`. A node that cannot (wrong
    /// address, another cookie or CA) would otherwise sit in the membership
    /// as a learner that never catches up.
    async fn check_joining_node(&self, id: NodeId, addr: &str) -> Result<()> {
        match self.probe(addr, JOIN_CHECK_TIMEOUT).await {
            Ok(report) if report.id == id => Ok(()),
            Ok(report) => Err(Error::FailedPrecondition(format!(
                "the node at {addr} is node {}, not node {id}",
                report.id
            ))),
            Err(e) => Err(Error::FailedPrecondition(format!(
                "node {id} at {addr} does not answer on the peer network ({e}); check its --peer-addr, \
                 and that it has this cluster's cookie or a certificate from this cluster's CA"
            ))),
        }
    }

    /// Waits until a read at `consistency` may be served from this node's state.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<()> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        self.linearizable_barrier().await.map_err(|e| self.for_clients(e))
    }

    async fn linearizable_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        loop {
            let barrier = match self.leader() {
                // On the leader: a quorum confirms leadership, then applied catches up.
                Some((leader, _)) if leader == self.id => self
                    .raft
                    .ensure_linearizable()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Unavailable {
                        message: format!("node {} cannot serve a linearizable read: {e}", self.id),
                        leader: None,
                    }),
                // Elsewhere: ReadIndex from the leader, then wait to apply it here.
                Some((_, addr)) => match self.remote_read_index(&addr).await {
                    Ok(index) => self.wait_applied(index, deadline).await,
                    Err(e) => Err(e),
                },
                None => Err(Error::unavailable("no leader is elected yet")),
            };
            match barrier {
                Ok(()) => return Ok(()),
                Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                    self.wait_for_leader_change(deadline).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leader side of ReadIndex: confirms leadership with a quorum and returns
    /// the index a linearizable read must have applied.
    pub async fn read_index(&self) -> Result<u64> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map_or(0, |l| l.index)),
            Err(e) => Err(Error::Unavailable {
                message: format!("node {} cannot serve a linearizable read: {e}", self.id),
                leader: self.leader().map(|(_, addr)| addr),
            }),
        }
    }

    async fn remote_read_index(&self, addr: &str) -> Result<u64> {
        let mut client = self.client(addr)?;
        let mut call = tonic::Request::new(ReadIndexRequest {});
        call.set_timeout(PEER_CALL_TIMEOUT);
        match client.read_index(call).await {
            Ok(reply) => Ok(reply.into_inner().index),
            Err(status) => Err(Error::Unavailable {
                message: format!(
                    "read index from the leader at {addr} failed: {}",
                    status.message()
                ),
                leader: Some(addr.to_string()),
            }),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::unavailable(format!(
                    "node {} did not apply index {index} in time: {e}",
                    self.id
                ))
            })
    }

    /// Asks the node at peer address `addr` for its own report (for cluster
    /// status), and notes its client API address in the address book.
    pub async fn probe(&self, addr: &str, timeout: Duration) -> Result<NodeReport> {
        let mut client = self.client(addr)?;
        let mut call = tonic::Request::new(NodeMetricsRequest {});
        call.set_timeout(timeout);
        let reply = tokio::time::timeout(timeout, client.node_metrics(call))
            .await
            .map_err(|_| Error::unavailable(format!("{addr} did not answer in {timeout:?}")))?
            .map_err(|s| Error::unavailable(format!("{addr}: {}", status_with_causes(&s))))?;
        let report: NodeReport = decode(&reply.into_inner().data)?;
        self.learn_client_addr(addr, &report);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader hint leaves the node as the leader's client address, or not
    /// at all: never as a peer address.
    #[tokio::test]
    async fn leader_hints_for_clients_name_client_addresses_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let options = NodeOptions {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            advertise_addr: "127.0.0.1:7401".into(),
            client_addr: "127.0.0.1:7101".into(),
            http_addr: "127.0.0.1:7201".into(),
            cluster_id: "test".into(),
            initial_cluster: BTreeMap::new(),
            tuning: RaftTuning::default(),
            cluster_addr: "127.0.0.1:7301".into(),
            dial_map: Arc::default(),
            peer_security: Arc::new(PeerSecurity::ClusterSecret(
                crate::transport::ClusterSecret::new("sixteen-bytes-ok".into(), "test").unwrap(),
            )),
            audit_retain: crate::scheduler::audit::DEFAULT_RETAIN,
            auth_disabled: false,
            metrics: Metrics::new(),
            #[cfg(feature = "chaos-break")]
            chaos_break: None,
        };
        let node = Node::start(&options, CancellationToken::new()).await.unwrap();
        let hint = |leader: &str| match node.for_clients(Error::Unavailable {
            message: "not the leader".into(),
            leader: Some(leader.into()),
        }) {
            Error::Unavailable { leader, .. } => leader,
            other => panic!("{other:?}"),
        };
        assert_eq!(hint("127.0.0.1:7401").as_deref(), Some("127.0.0.1:7101"));
        assert_eq!(hint("127.0.0.1:7402"), None, "an unknown peer's hint is dropped");
        let report = NodeReport {
            id: 2,
            grpc_addr: "127.0.0.1:7102".into(),
            ..NodeReport::default()
        };
        node.learn_client_addr("127.0.0.1:7402", &report);
        assert_eq!(hint("127.0.0.1:7402").as_deref(), Some("127.0.0.1:7102"));
        assert_eq!(node.report().grpc_addr, "127.0.0.1:7101");
        assert_eq!(node.report().http_addr, "127.0.0.1:7201");
        node.shutdown().await;
    }

    /// A write that waits for a leader ends when the node shuts down, with
    /// an answer that says so, instead of holding the node for the rest of
    /// [`ROUTE_TIMEOUT`] and then answering "no leader".
    #[tokio::test]
    async fn a_write_waiting_for_a_leader_ends_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        // Two peers that never answer (nothing listens on those loopback
        // ports): this node alone cannot elect a leader.
        let members = [(1, "127.0.0.1:9"), (2, "127.0.0.1:7"), (3, "127.0.0.1:13")];
        let options = NodeOptions {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            advertise_addr: "127.0.0.1:9".into(),
            client_addr: "127.0.0.1:19".into(),
            http_addr: "127.0.0.1:29".into(),
            cluster_id: "test".into(),
            initial_cluster: members.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            tuning: RaftTuning::default(),
            cluster_addr: "127.0.0.1:11".into(),
            dial_map: Arc::default(),
            audit_retain: crate::scheduler::audit::DEFAULT_RETAIN,
            auth_disabled: false,
            peer_security: Arc::new(PeerSecurity::ClusterSecret(
                crate::transport::ClusterSecret::new("sixteen-bytes-ok".into(), "test").unwrap(),
            )),
            metrics: Metrics::new(),
            #[cfg(feature = "chaos-break")]
            chaos_break: None,
        };
        let shutdown = CancellationToken::new();
        let node = Node::start(&options, shutdown.clone()).await.unwrap();
        let write = tokio::spawn({
            let node = node.clone();
            async move {
                let delete = Command::DeleteJob {
                    id: "nightly".into(),
                    expected_version: None,
                };
                node.write("test", delete).await
            }
        });
        shutdown.cancel();
        let answer = write.await.unwrap();
        node.shutdown().await;
        match answer {
            Err(Error::Unavailable { message, .. }) => assert_eq!(message, "this node is shutting down"),
            other => panic!("{other:?}"),
        }
    }
}
