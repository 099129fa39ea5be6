//! The worker network: ractor_cluster sessions between every pair of nodes.
//!
//! Each node runs a `NodeServer` on `--cluster-addr`, authenticated with the
//! shared `--cluster-cookie`, and named `kairos-<raft node id>`. A connector
//! task dials every Raft member with a higher id than its own (so each pair
//! has one session) and re-dials after a session drops — ractor_cluster does
//! not reconnect by itself. A peer's cluster address is learned from its
//! status probe (`NodeReport::cluster_addr`) and dialed through the node's
//! dial map ([`crate::dial`]). Over these sessions ractor
//! synchronizes process groups, which is how the leader's dispatcher finds
//! the worker pools of other nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// How often the connector checks for missing sessions.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// The ractor_cluster node name of Raft node `id`.
pub fn node_name(id: u64) -> String {
    format!("kairos-{id}")
}

/// Starts this node's `NodeServer` on `addr`.
pub async fn start_node_server(
    id: u64,
    addr: SocketAddr,
    cookie: String,
) -> anyhow::Result<(ActorRef<NodeServerMessage>, tokio::task::JoinHandle<()>)> {
    let server = NodeServer::new(
        addr.port(),
        cookie,
        node_name(id),
        addr.ip().to_string(),
        None,
        None,
    )
    .with_listen_addr(addr.ip());
    let (actor, handle) = Actor::spawn(Some(format!("kairos-node-server-{id}")), server, ())
        .await
        .map_err(|e| anyhow::anyhow!("--cluster-addr {addr}: cannot start the worker network: {e}"))?;
    Ok((actor, handle))
}

/// Raft ids of the peers this node currently has an authenticated session with.
async fn connected_peers(server: &ActorRef<NodeServerMessage>) -> BTreeSet<u64> {
    let Ok(sessions) = ractor::call_t!(server, NodeServerMessage::GetSessions, 1_000) else {
        return BTreeSet::new();
    };
    sessions
        .values()
        .filter_map(|s| s.peer_name.as_ref())
        .filter_map(|n| n.name.split('@').next()?.strip_prefix("kairos-")?.parse().ok())
        .collect()
}

/// Keeps a session open to every member with a higher id, until `shutdown`.
pub async fn run_connector(
    node: Arc<Node>,
    server: ActorRef<NodeServerMessage>,
    shutdown: CancellationToken,
) {
    let mut cluster_addrs: BTreeMap<u64, String> = BTreeMap::new();
    let mut ticker = tokio::time::interval(RECONNECT_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let connected = connected_peers(&server).await;
        for (peer, (grpc_addr, _)) in node.members() {
            if peer <= node.id || connected.contains(&peer) {
                continue;
            }
            let addr = match cluster_addrs.entry(peer) {
                std::collections::btree_map::Entry::Occupied(known) => known.get().clone(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    match node.probe(&grpc_addr, Duration::from_secs(1)).await {
                        Ok(report) if !report.cluster_addr.is_empty() => {
                            slot.insert(report.cluster_addr).clone()
                        }
                        _ => continue,
                    }
                }
            };
            match ractor_cluster::client_connect(&server, node.dial_map().resolve(&addr)).await {
                Ok(()) => tracing::info!(node = node.id, peer, %addr, "worker network: dialed peer"),
                Err(e) => {
                    tracing::debug!(node = node.id, peer, %addr, "worker network: dial failed: {e}");
                    // The address may have changed (node restarted elsewhere): ask again next time.
                    cluster_addrs.remove(&peer);
                }
            }
        }
    }
}
