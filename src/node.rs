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
//! the counter of leader changes ([`crate::raft::stats`]), the leader's
//! keeper of the cluster version ([`crate::cluster_version::maintain`]) and
//! the result reporter of the local worker pool — in one tracker. They
//! end when the shutdown signal given to [`Node::start`] is cancelled, and
//! [`Node::shutdown`] stops Raft and waits for them, bounded. A write
//! waiting for a leader stops waiting then too, answered `UNAVAILABLE`
//! ("this node is shutting down"), so that no request holds a stopping node.
//!
//! IMPLEMENTATION CAVEATS: a forwarded write whose connection breaks after it was
//! sent has an unknown outcome; it is retried, which is harmless for creates
//! carrying a `request_id` (the CLI always sends one) and shows up as `ABORTED`
//! or `NOT_FOUND` for a retried update or delete that had in fact succeeded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use crate::proto::{NodeMetricsRequest, RaftPayload, ReadIndexRequest, TimeoutNowRequest};
use crate::raft::batcher::WriteBatcher;
use crate::raft::handover::{Handover, HandoverOutcome};
use crate::raft::log_store::LogStore;
use crate::raft::network::{peer_client, PeerNetwork};
use crate::raft::pre_vote::{
    stand_when_leader_lost, ElectionHost, ElectionTiming, ElectionView, PreVoteRequest, PreVoteResponse,
};
use crate::raft::proposer::{write_error, RaftProposer};
use crate::raft::snapshot_policy::snapshot_by_changes;
use crate::raft::state_machine::StateHandle;
use crate::raft::stats::count_leader_changes;
use crate::raft::{decode, encode, open_storage_for_node, raft_config, NodeId, Raft, RaftTuning};
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
/// How long a node starting a new cluster waits for each other member to
/// say whether it knows a leader already (see `Node::formed_without_me`).
const BOOTSTRAP_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a voter told of a handover votes without the leader lease at
/// most, if no leader of a later term shows up (see [`Node::timeout_now`]).
const LEASE_WAIVER_LIMIT: Duration = Duration::from_secs(5);

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
    /// Refuses this leader's proposals once it hands over (see [`Node::hand_over_leadership`]).
    handover: Arc<Handover>,
    /// When the node started: a restarted node keeps to a leader lease
    /// counted from then (see [`crate::raft::pre_vote`]).
    booted: tokio::time::Instant,
    /// Reads the last log id for pre-votes (a clone of the log store Raft owns).
    log_reader: LogStore,
    /// The election timers, for pre-votes.
    election_timing: ElectionTiming,
    /// The deliberately broken build's setting (see `crate::chaos_break`).
    #[cfg(feature = "chaos-break")]
    chaos_break: Option<crate::chaos_break::ChaosBreak>,
    /// Why Raft stopped on its own (a storage error), once it did.
    raft_failure: Arc<Mutex<Option<String>>>,
    /// Set while this voter has heard from no leader for longer than its
    /// election timeout (see [`crate::raft::pre_vote`]).
    leader_silent: tokio::sync::watch::Sender<bool>,
    /// While the log ends before an entry this node acknowledged (its disk
    /// lost the tail): that entry's log id (see [`crate::raft::log_mark`]).
    lost_tail: tokio::sync::watch::Receiver<Option<openraft::LogId<NodeId>>>,
}

impl Node {
    /// Opens storage, starts Raft and the node's own tasks, and bootstraps a
    /// new cluster if asked to. The tasks stop when `shutdown` is cancelled
    /// or [`Node::shutdown`] is called, which waits for them.
    pub async fn start(options: &NodeOptions, shutdown: CancellationToken) -> Result<Arc<Node>> {
        #[cfg(feature = "chaos-break")]
        if let Some(kind) = options.chaos_break {
            crate::chaos_break::set_process_break(kind);
        }
        let (log_store, state_machine) =
            open_storage_for_node(&options.data_dir, options.metrics.raft_stats())?;
        log_store.resign_leadership(options.id)?;
        #[cfg(feature = "chaos-break")]
        let state_machine = state_machine.with_chaos_break(options.chaos_break);
        let state_machine = state_machine.with_audit_retain(options.audit_retain);
        let committed = log_store.committed_handle();
        let startup_commit = log_store.committed_index();
        let state = state_machine.state_handle();
        // A node older than the cluster version its own state recorded
        // must not run on it (see `crate::cluster_version`).
        let recorded = state.read().cluster_version();
        if let Err(refusal) = state.cluster_version.check(recorded) {
            return Err(Error::FailedPrecondition(refusal));
        }
        let changes_since_snapshot = state_machine.changes_since_snapshot();
        #[allow(unused_mut)]
        let mut config = raft_config(&options.tuning)?;
        // The broken build elects on openraft's own timer, with no pre-vote.
        #[cfg(feature = "chaos-break")]
        let pre_vote = options.chaos_break != Some(crate::chaos_break::ChaosBreak::NoPreVote);
        #[cfg(not(feature = "chaos-break"))]
        let pre_vote = true;
        config.enable_elect = !pre_vote;
        let election_timing = ElectionTiming::of(&config);
        let config = Arc::new(config);
        let log_reader = log_store.clone();
        let lost_tail = log_store.lost_tail();
        let raft = Raft::new(
            options.id,
            config,
            PeerNetwork::new(
                options.id,
                options.dial_map.clone(),
                options.peer_security.clone(),
            ),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| match state.cluster_version.refusal() {
            // Replaying the log met a cluster version above this node's.
            Some(refusal) => Error::FailedPrecondition(refusal),
            None => Error::internal(format!("start raft: {e}")),
        })?;
        let (tasks, stopping) = (TaskTracker::new(), shutdown.child_token());
        let handover = Arc::new(Handover::default());
        let proposer = RaftProposer {
            id: options.id,
            raft: raft.clone(),
            traces: state.traces.clone(),
            commit_seconds: options.metrics.raft_stats().proposal_commit_seconds,
            handover: handover.clone(),
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
        #[cfg(feature = "chaos-break")]
        let finishes_joint_configs =
            !crate::chaos_break::process_runs(crate::chaos_break::ChaosBreak::NoJointFinisher);
        #[cfg(not(feature = "chaos-break"))]
        let finishes_joint_configs = true;
        if finishes_joint_configs {
            tasks.spawn(crate::raft::joint::finish_inherited_joint_configs(
                raft.clone(),
                options.id,
                stopping.clone(),
            ));
        }
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
            handover,
            booted: tokio::time::Instant::now(),
            log_reader,
            election_timing,
            #[cfg(feature = "chaos-break")]
            chaos_break: options.chaos_break,
            raft_failure: Arc::default(),
            leader_silent: tokio::sync::watch::Sender::new(false),
            lost_tail,
        });
        if pre_vote {
            node.tasks.spawn(stand_when_leader_lost(
                node.clone(),
                election_timing,
                node.stopping.clone(),
            ));
        }
        node.tasks.spawn(node.clone().keep_address_book());
        node.tasks.spawn(crate::cluster_version::maintain(
            node.clone(),
            node.stopping.clone(),
        ));
        // A node whose storage failed (a failed fsync, a full disk) stops
        // the process: see `stop_on_storage_failure`.
        #[cfg(feature = "chaos-break")]
        let stops = options.chaos_break != Some(crate::chaos_break::ChaosBreak::RunOnAfterStorageErrors);
        #[cfg(not(feature = "chaos-break"))]
        let stops = true;
        if stops {
            node.tasks.spawn(stop_on_storage_failure(
                node.raft.clone(),
                node.log_reader.disk_failure(),
                node.id,
                node.raft_failure.clone(),
                shutdown.clone(),
                node.stopping.clone(),
            ));
        }
        // A node that finds itself too old for the cluster version stops the process.
        node.tasks.spawn({
            let (refused, stopping) = (node.state.cluster_version.refused(), node.stopping.clone());
            async move {
                tokio::select! {
                    _ = refused.cancelled() => shutdown.cancel(),
                    _ = stopping.cancelled() => {}
                }
            }
        });
        if let Err(e) = node.bootstrap(options).await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    /// A member of the new cluster `members` that already knows a leader,
    /// and that leader: the cluster formed while this node was not up yet.
    /// Initializing then would stand for election in the first term with
    /// this node's id, which outranks a leader of that term with a lower id
    /// (openraft orders leaders by term, then node id): the leader would
    /// step down for an election nobody needed. The leader replicates the
    /// membership to this node instead. Members that do not answer within
    /// [`BOOTSTRAP_PROBE_TIMEOUT`] (they are starting too) count as knowing
    /// none, and the node initializes as before.
    async fn formed_without_me(&self, members: &BTreeMap<NodeId, String>) -> Option<(NodeId, NodeId)> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut probes: FuturesUnordered<_> = members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, addr)| async move { (*id, self.probe(addr, BOOTSTRAP_PROBE_TIMEOUT).await) })
            .collect();
        while let Some((peer, report)) = probes.next().await {
            if let Some(leader) = report.ok().and_then(|report| report.leader) {
                return Some((peer, leader));
            }
        }
        None
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
        if let Some((peer, leader)) = self.formed_without_me(&options.initial_cluster).await {
            tracing::info!(
                node = self.id,
                peer,
                leader,
                "the new cluster already has a leader: joining it instead of initializing"
            );
            return Ok(());
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

    /// Hands leadership to an up-to-date voter before this node stops (see
    /// [`crate::raft::handover`]), within `timeout`. From the call on, this
    /// node proposes nothing more; call it only on the way out, before
    /// [`Node::shutdown`] and while the peer server still runs (the
    /// stopping leader's vote elects the target).
    pub async fn hand_over_leadership(&self, timeout: Duration) -> HandoverOutcome {
        let deadline = Instant::now() + timeout;
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return HandoverOutcome::NotLeader;
        }
        if timeout.is_zero() {
            return HandoverOutcome::Abandoned {
                reason: "--handover-timeout-ms is 0".into(),
            };
        }
        let transfer = crate::cluster_version::Feature::LeadershipTransfer;
        if !self.cluster_supports(transfer) {
            return HandoverOutcome::Abandoned {
                reason: format!(
                    "the cluster version is below {}: a member may not know TimeoutNow",
                    transfer.since()
                ),
            };
        }
        self.handover.begin();
        let abandoned = |reason: String| HandoverOutcome::Abandoned { reason };
        if tokio::time::timeout_at(deadline, self.handover.drain())
            .await
            .is_err()
        {
            return abandoned("proposals in flight did not return in time".into());
        }
        let mut metrics = self.raft.metrics();
        let (target, addr, term) = loop {
            let found = {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(self.id) {
                    return match m.current_leader {
                        Some(to) => HandoverOutcome::Transferred { to },
                        None => abandoned("lost leadership while handing over".into()),
                    };
                }
                caught_up_voter(self.id, &m).map(|(id, addr)| (id, addr, m.current_term))
            };
            if let Some(found) = found {
                break found;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return abandoned("Raft stopped".into()),
                Err(_) => return abandoned("no voter caught up with the log in time".into()),
            }
        };
        // This node votes for the target at once, and so do the other
        // voters once told: they are told first, the target last.
        self.raft.runtime_config().leader_lease(false);
        let voters: Vec<(NodeId, String)> = {
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter(|&id| id != self.id && id != target)
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect()
        };
        let told = voters
            .iter()
            .map(|(id, addr)| self.send_timeout_now(*id, addr, term, target, deadline));
        for (result, (id, _)) in futures::future::join_all(told).await.into_iter().zip(&voters) {
            if let Err(e) = result {
                tracing::info!(node = self.id, voter = id, "handover: {e}");
            }
        }
        if let Err(e) = self.send_timeout_now(target, &addr, term, target, deadline).await {
            return abandoned(e.to_string());
        }
        loop {
            {
                let m = metrics.borrow_and_update();
                match m.current_leader {
                    Some(to) if to != self.id => return HandoverOutcome::Transferred { to },
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return abandoned("Raft stopped".into()),
                Err(_) => {
                    return abandoned(format!(
                        "node {target} was asked to stand but no new leader was seen in time"
                    ))
                }
            }
        }
    }

    /// Sends `TimeoutNow` for `term` naming `candidate` to voter `id` at `addr`.
    async fn send_timeout_now(
        &self,
        id: NodeId,
        addr: &str,
        term: u64,
        candidate: NodeId,
        deadline: Instant,
    ) -> Result<()> {
        let mut client = self.client(addr)?;
        let mut call = tonic::Request::new(TimeoutNowRequest {
            leader_id: self.id,
            term,
            candidate,
        });
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        client.timeout_now(call).await.map(|_| ()).map_err(|status| {
            Error::unavailable(format!("TimeoutNow to node {id} at {addr}: {}", status.message()))
        })
    }

    /// Answers a stopping leader's `TimeoutNow` (see
    /// [`crate::raft::handover`]), if `leader_id` leads this node's current
    /// `term` (a stale or forged request changes nothing) and this node is a
    /// voter: votes without waiting for the leader lease until a later term
    /// is seen (at most [`LEASE_WAIVER_LIMIT`]), and stands for election at
    /// once if it is the `candidate`.
    pub async fn timeout_now(&self, leader_id: NodeId, term: u64, candidate: NodeId) -> Result<()> {
        {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(leader_id) || m.current_term != term {
                return Err(Error::FailedPrecondition(format!(
                    "TimeoutNow from node {leader_id} for term {term}, but this node follows {:?} in term {}",
                    m.current_leader, m.current_term
                )));
            }
            if !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.id)
            {
                return Err(Error::FailedPrecondition(format!(
                    "node {} is not a voter",
                    self.id
                )));
            }
        }
        if let Some(acked) = (candidate == self.id).then(|| *self.lost_tail.borrow()).flatten() {
            return Err(Error::FailedPrecondition(format!(
                "node {} does not stand: its log lost entries up to {acked} and has not caught up",
                self.id
            )));
        }
        self.raft.runtime_config().leader_lease(false);
        let (raft, stopping) = (self.raft.clone(), self.stopping.clone());
        self.tasks.spawn(async move {
            let waiter = raft.wait(Some(LEASE_WAIVER_LIMIT));
            let moved_on = waiter.metrics(
                |m| m.current_term > term && m.current_leader.is_some(),
                "a leader of a later term",
            );
            tokio::select! {
                _ = moved_on => {}
                _ = stopping.cancelled() => {}
            }
            raft.runtime_config().leader_lease(true);
        });
        self.metrics.raft_stats().timeout_now_received.inc();
        if candidate == self.id {
            tracing::info!(
                node = self.id,
                leader = leader_id,
                term,
                "the leader hands over: standing for election"
            );
            self.raft
                .trigger()
                .elect()
                .await
                .map_err(|e| Error::unavailable(format!("start an election: {e}")))?;
        }
        Ok(())
    }

    /// Answers a peer's pre-vote (see [`crate::raft::pre_vote`]): whether
    /// this node would vote for it now. Changes nothing.
    pub async fn pre_vote(&self, request: &PreVoteRequest) -> Result<PreVoteResponse> {
        let view = ElectionHost::view(self)
            .await
            .ok_or_else(|| Error::unavailable("Raft has stopped"))?;
        // A log that lost its tail answers as if it still ended where the
        // node acknowledged (see `crate::raft::log_mark`).
        let own_last = self
            .log_reader
            .last_log_id()
            .map_err(Error::internal)?
            .max(*self.lost_tail.borrow());
        let answer =
            crate::raft::pre_vote::answer(&self.election_timing, self.id, &view, own_last.as_ref(), request);
        if answer.granted {
            tracing::info!(
                node = self.id,
                candidate = request.candidate,
                term = request.term,
                "pre-vote granted"
            );
        } else {
            tracing::debug!(
                node = self.id,
                candidate = request.candidate,
                term = request.term,
                reason = %answer.reason,
                "pre-vote refused"
            );
        }
        Ok(answer)
    }

    /// Answers a candidate's vote request. A node whose log lost its tail
    /// refuses a candidate whose log ends before the entry it acknowledged
    /// last, as it would have with that tail (see [`crate::raft::log_mark`]);
    /// otherwise openraft answers.
    pub async fn vote(
        &self,
        request: openraft::raft::VoteRequest<NodeId>,
    ) -> std::result::Result<
        openraft::raft::VoteResponse<NodeId>,
        openraft::error::RaftError<NodeId, openraft::error::Infallible>,
    > {
        let lost_tail = *self.lost_tail.borrow();
        if let Some(acked) = lost_tail.filter(|&acked| request.last_log_id < Some(acked)) {
            let vote = self.raft.metrics().borrow().vote;
            tracing::info!(
                node = self.id,
                candidate = ?request.vote,
                candidate_log = ?request.last_log_id,
                acknowledged = %acked,
                "vote refused: the candidate's log ends before entries this node acknowledged and its disk lost"
            );
            return Ok(openraft::raft::VoteResponse::new(vote, Some(acked), false));
        }
        self.raft.vote(request).await
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
        if let Some(failure) = self.raft_failure() {
            return Err(failure);
        }
        if let Some(acked) = *self.lost_tail.borrow() {
            return Err(format!(
                "the disk lost the tail of the Raft log up to {acked}, entries this node \
                 acknowledged: catching up from the leader, not standing for election"
            ));
        }
        let metrics = self.raft.metrics().borrow().clone();
        if let Err(fatal) = &metrics.running_state {
            return Err(format!("Raft has stopped: {fatal}"));
        }
        if *self.leader_silent.borrow() {
            return Err(format!(
                "no word from leader {} for longer than the election timeout; a majority of voters does not answer",
                metrics.current_leader.map_or("?".to_string(), |l| l.to_string())
            ));
        }
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

    /// Why the node stopped on a storage error (a failed `fdatasync`, a
    /// full disk), if it did; the process then stops (see
    /// [`stop_on_storage_failure`]).
    pub fn raft_failure(&self) -> Option<String> {
        self.raft_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes when this voter's leader falls silent or is heard again
    /// (see [`Node::readiness`]).
    pub fn leader_silence(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader_silent.subscribe()
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

    /// The voter sets of the membership this node holds: one, or two while
    /// a change stands between its steps (a joint configuration).
    pub fn voter_sets(&self) -> Vec<BTreeSet<NodeId>> {
        let metrics = self.raft.metrics();
        let joint_config = metrics
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .clone();
        joint_config
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
            let tried = self.leader();
            let result = match tried.clone() {
                Some((leader, _)) if leader == self.id => self.execute(request.clone()).await,
                Some((_, addr)) => self.forward(&addr, &request).await,
                None => Err(Error::unavailable("no leader is elected yet")),
            };
            match result {
                Err(Error::Unavailable { .. }) if self.stopping.is_cancelled() => {
                    return Err(Error::unavailable("this node is shutting down"))
                }
                Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                    self.wait_for_leader_change(tried.map(|(id, _)| id), deadline)
                        .await
                }
                other => return other,
            }
        }
    }

    /// Waits (bounded by `deadline`, and ended by the node's shutdown) until a
    /// leader other than `failed` (the one just tried, if any) is known,
    /// with its address; at once if one already is (the change may have
    /// come while the attempt failed, as in a handover). A leader known by
    /// its id alone (a node that took the vote before the membership, as
    /// one that starts with an empty log does) is not yet one to try:
    /// returning for it would spin the caller's retry loop.
    async fn wait_for_leader_change(&self, failed: Option<NodeId>, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let changed = async {
            loop {
                let now = {
                    let m = metrics.borrow_and_update();
                    m.current_leader
                        .filter(|leader| m.membership_config.membership().get_node(leader).is_some())
                };
                if now.is_some() && now != failed {
                    return;
                }
                if metrics.changed().await.is_err() {
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
    /// as a learner that never catches up. It must also run at least the
    /// cluster version: an older node could not read what the cluster
    /// already uses (see [`crate::cluster_version`]).
    async fn check_joining_node(&self, id: NodeId, addr: &str) -> Result<()> {
        match self.probe(addr, JOIN_CHECK_TIMEOUT).await {
            Ok(report) if report.id == id => {
                let cluster = self.cluster_version().current();
                match self.ask_version(addr).await {
                    Ok(version) if version >= cluster => Ok(()),
                    Ok(version) => Err(Error::FailedPrecondition(format!(
                        "node {id} at {addr} runs Kairos {version}, older than the cluster version \
                         {cluster}; start it on Kairos {cluster} or newer"
                    ))),
                    Err(e) => Err(Error::FailedPrecondition(format!(
                        "node {id} at {addr} did not tell its version: {e}"
                    ))),
                }
            }
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
        #[cfg(feature = "chaos-break")]
        if self.chaos_break == Some(crate::chaos_break::ChaosBreak::StaleReads) {
            return Ok(());
        }
        self.linearizable_barrier().await.map_err(|e| self.for_clients(e))
    }

    async fn linearizable_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        loop {
            let tried = self.leader();
            let barrier = match tried.clone() {
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
                    self.wait_for_leader_change(tried.map(|(id, _)| id), deadline)
                        .await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// On the leader: confirms with a quorum that it still leads and waits
    /// until it has applied everything committed before the call, so that
    /// what it then reads is linearizable (a backup is taken so). On
    /// another node: `UNAVAILABLE` naming the leader's client address.
    /// Waits (up to [`ROUTE_TIMEOUT`]) while no leader is known.
    pub async fn leader_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        loop {
            let leader = self.leader();
            let tried = leader.as_ref().map(|(id, _)| *id);
            let barrier = match leader {
                Some((leader, _)) if leader == self.id => {
                    self.raft.ensure_linearizable().await.map(|_| ()).map_err(|e| {
                        Error::unavailable(format!("node {} cannot confirm its leadership: {e}", self.id))
                    })
                }
                Some((leader, addr)) => {
                    return Err(self.for_clients(Error::Unavailable {
                        message: format!("node {} is not the leader (node {leader} is)", self.id),
                        leader: Some(addr),
                    }))
                }
                None => Err(Error::unavailable("no leader is elected yet")),
            };
            match barrier {
                Err(Error::Unavailable { .. })
                    if Instant::now() < deadline && !self.stopping.is_cancelled() =>
                {
                    self.wait_for_leader_change(tried, deadline).await
                }
                other => return other,
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

    /// The recorded cluster version as this node applied it: what node code
    /// asks before it uses something new (see [`crate::cluster_version`]).
    pub fn cluster_version(&self) -> &crate::cluster_version::ClusterVersion {
        &self.state.cluster_version
    }

    /// Whether every member supports `feature`, as the cluster recorded it.
    pub fn cluster_supports(&self, feature: crate::cluster_version::Feature) -> bool {
        self.state.cluster_version.supports(feature)
    }

    /// The version every member (voters and learners) advertises, asked in
    /// parallel: this node's own, [`Version::OLDEST`] for a member that does
    /// not serve `NodeVersion` (0.1), an error for one that did not answer
    /// within [`crate::cluster_version::ASK_TIMEOUT`].
    ///
    /// [`Version::OLDEST`]: crate::cluster_version::Version::OLDEST
    pub async fn member_versions(&self) -> crate::cluster_version::MemberVersions {
        let asks = self.members().into_iter().map(|(id, (addr, _))| async move {
            match id == self.id {
                true => (id, Ok(crate::cluster_version::own())),
                false => (id, self.ask_version(&addr).await),
            }
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The version the node at peer address `addr` advertises (0.1 when it
    /// does not serve `NodeVersion`), or why it is unknown.
    async fn ask_version(&self, addr: &str) -> std::result::Result<crate::cluster_version::Version, String> {
        use crate::cluster_version::{Version, ASK_TIMEOUT};
        let mut client = self.client(addr).map_err(|e| e.to_string())?;
        let mut call = tonic::Request::new(crate::proto::NodeVersionRequest {});
        call.set_timeout(ASK_TIMEOUT);
        match tokio::time::timeout(ASK_TIMEOUT, client.node_version(call)).await {
            Err(_) => Err(format!("{addr} did not answer in {ASK_TIMEOUT:?}")),
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                match (u16::try_from(reply.major), u16::try_from(reply.minor)) {
                    (Ok(major), Ok(minor)) => Ok(Version::new(major, minor)),
                    _ => Err(format!(
                        "{addr} answered an impossible version {}.{}",
                        reply.major, reply.minor
                    )),
                }
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(Version::OLDEST),
            Ok(Err(status)) => Err(format!("{addr}: {}", status_with_causes(&status))),
        }
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

/// A voter other than `me` whose replicated log reaches the leader's last
/// log index, with its peer address: the target of a handover. The first by
/// id when several qualify.
fn caught_up_voter(me: NodeId, m: &openraft::RaftMetrics<NodeId, BasicNode>) -> Option<(NodeId, String)> {
    let last = m.last_log_index?;
    let replication = m.replication.as_ref()?;
    let membership = m.membership_config.membership();
    membership
        .voter_ids()
        .filter(|&id| id != me)
        .find(|id| matches!(replication.get(id), Some(Some(matched)) if matched.index >= last))
        .and_then(|id| Some((id, membership.get_node(&id)?.addr.clone())))
}

/// Stops the process (cancels `shutdown`) when its storage fails, and
/// records why in `failure` (for `/readyz` and the agent's exit): when Raft
/// stops on its own, or when a sync of the disk fails (`disk_failure`, which
/// also catches a failure while there is nothing to append; see
/// `crate::raft::durability`).
///
/// openraft stops for good on a storage error: an append whose `fdatasync`
/// failed (EIO, a full disk) is never reported durable, so nothing this
/// node could not persist is acknowledged, but the node cannot go on
/// either — after a failed fsync the kernel may have dropped the dirty
/// pages, and the data on disk is unknown until it is read again (the
/// "fsyncgate" lesson: retrying the fsync can succeed without the data).
/// So the process stops with the reason; started again once the disk is
/// healthy, it re-reads its data from disk and catches up from its peers,
/// while the rest of the cluster keeps serving. Ends when `stopping` is
/// cancelled.
async fn stop_on_storage_failure(
    raft: Raft,
    mut disk_failure: tokio::sync::watch::Receiver<Option<Arc<str>>>,
    id: NodeId,
    failure: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
    stopping: CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        let cause = match metrics.borrow_and_update().running_state.clone() {
            // `Stopped` is a shutdown asked for (`Node::shutdown`).
            Err(openraft::error::Fatal::Stopped) => return,
            Err(fatal) => Some(format!("Raft stopped: {fatal}")),
            Ok(()) => disk_failure.borrow_and_update().as_ref().map(|e| e.to_string()),
        };
        if stopping.is_cancelled() {
            return;
        }
        if let Some(cause) = cause {
            let reason = format!(
                "node {id} stops on a storage error ({cause}); nothing it could not persist was \
                 acknowledged. Start it again once the disk is healthy: it re-reads its data and \
                 catches up from its peers"
            );
            tracing::error!(node = id, "{reason}");
            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            shutdown.cancel();
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            changed = disk_failure.changed() => if changed.is_err() { return },
            _ = stopping.cancelled() => return,
        }
    }
}

/// The node as the pre-vote election task sees it (`crate::raft::pre_vote`).
impl ElectionHost for Node {
    fn id(&self) -> NodeId {
        self.id
    }

    async fn view(&self) -> Option<ElectionView> {
        let (id, since_boot) = (self.id, self.booted.elapsed());
        let stepping_down = self.handover.stepping_down();
        let lost_tail = self.lost_tail.borrow().is_some();
        self.raft
            .with_raft_state(move |state| {
                let membership = state.membership_state.effective().membership();
                let vote = state.vote_ref();
                ElectionView {
                    state: state.server_state,
                    // A node handing its leadership over does not stand again.
                    // Nor does one whose log lost its tail (see
                    // `crate::raft::log_mark`): it votes, it does not stand.
                    voter: membership.voter_ids().any(|v| v == id) && !stepping_down && !lost_tail,
                    configs: membership.get_joint_config().clone(),
                    other_voters: membership
                        .voter_ids()
                        .filter(|&v| v != id)
                        .filter_map(|v| Some((v, membership.get_node(&v)?.addr.clone())))
                        .collect(),
                    term: vote.leader_id.term,
                    vote_committed: vote.committed,
                    leader: if vote.committed {
                        vote.leader_id.voted_for()
                    } else {
                        None
                    },
                    // Nothing heard since start counts from the start: a
                    // restarted node keeps to the lease of the leader it
                    // may not have heard from yet.
                    since_vote_touched: Some(
                        state
                            .vote_last_modified()
                            .map_or(since_boot, |at| at.elapsed())
                            .min(since_boot),
                    ),
                }
            })
            .await
            .ok()
    }

    fn last_log_id(&self) -> Option<openraft::LogId<NodeId>> {
        self.log_reader.last_log_id().ok().flatten()
    }

    async fn ask(
        &self,
        id: NodeId,
        addr: &str,
        request: &PreVoteRequest,
        timeout: Duration,
    ) -> Result<Option<PreVoteResponse>> {
        let mut client = self.client(addr)?;
        let mut call = tonic::Request::new(RaftPayload {
            data: encode(request)?,
        });
        call.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.pre_vote(call)).await {
            Err(_) => Err(Error::unavailable(format!(
                "PreVote to node {id} at {addr}: no answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Ok(Err(status)) => Err(Error::unavailable(format!(
                "PreVote to node {id} at {addr}: {}",
                status.message()
            ))),
            Ok(Ok(reply)) => Ok(Some(decode(&reply.into_inner().data)?)),
        }
    }

    async fn stand(&self) -> Result<()> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::unavailable(format!("start an election: {e}")))
    }

    fn set_leader_silent(&self, silent: bool) {
        self.leader_silent.send_if_modified(|current| {
            let changed = *current != silent;
            *current = silent;
            changed
        });
    }

    fn count_round(&self, won: bool) {
        let stats = self.metrics.raft_stats();
        match won {
            true => stats.pre_votes_won.inc(),
            false => stats.pre_votes_lost.inc(),
        };
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
