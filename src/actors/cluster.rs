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
//!
//! TLS: with peer TLS configured (`--peer-tls-*`) the worker network uses
//! the same certificates ([`WorkerTls`]): every session is mutual TLS with
//! the cluster's CA, and the cookie is still checked inside it as a second
//! factor. Incoming connections are accepted by this module's own listener
//! on `--cluster-addr`, which runs each TLS handshake in a task of its own
//! with a timeout and hands the encrypted stream to the `NodeServer`
//! (ractor_cluster's listener handshakes one connection at a time without
//! a timeout, so one silent client would stall it). Outgoing connections
//! use `ractor_cluster::client_connect_enc`, bounded by the same timeout,
//! and check the peer's certificate against the host of its reported
//! cluster address.
//!
//! IMPLEMENTATION CAVEATS: in TLS mode the `NodeServer`'s own listener
//! still exists, on an ephemeral loopback port that nobody is told about;
//! it speaks TLS with the same settings and checks the cookie, so it is no
//! way around either, but a local user could hold its one-at-a-time
//! handshake (which only affects that unused port).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::{IncomingEncryptionMode, NetworkStream, NodeServer, NodeServerMessage};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::tls::{server_name, PeerTls};
use crate::transport::{ClusterSecret, MAX_PENDING_HANDSHAKES, TLS_HANDSHAKE_TIMEOUT};

/// How often the connector checks for missing sessions.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// The ractor_cluster node name of Raft node `id`.
pub fn node_name(id: u64) -> String {
    format!("kairos-{id}")
}

/// The worker network's TLS: the peer certificates, without ALPN.
#[derive(Clone, Debug)]
pub struct WorkerTls(PeerTls);

impl WorkerTls {
    /// The worker network's TLS from the peer TLS settings.
    pub fn new(peer: &PeerTls) -> WorkerTls {
        WorkerTls(peer.without_alpn())
    }
}

/// Starts this node's `NodeServer` on `addr`, with TLS when `tls` is given
/// (then `addr` is served by [`accept_tls`], until `shutdown`).
/// `advertised` is the address peers dial (`NodeReport::cluster_addr`): its
/// host names this node in ractor_cluster's handshake, which takes two
/// sessions with the same host and port for a connection to itself — so it
/// must differ between nodes even when they all listen on `0.0.0.0:7301`.
pub async fn start_node_server(
    id: u64,
    addr: SocketAddr,
    advertised: &str,
    secret: &ClusterSecret,
    tls: Option<&WorkerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<(ActorRef<NodeServerMessage>, tokio::task::JoinHandle<()>)> {
    let cannot = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("--cluster-addr {addr}: cannot start the worker network: {e}")
    };
    let (port, listen_ip, encryption, listener) = match tls {
        None => (addr.port(), addr.ip(), IncomingEncryptionMode::Raw, None),
        Some(tls) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| cannot(&e))?;
            let acceptor = TlsAcceptor::from(tls.0.server.clone());
            let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
            (0, loopback, IncomingEncryptionMode::Tls(acceptor), Some(listener))
        }
    };
    let server = NodeServer::new(
        port,
        secret.to_cookie(),
        node_name(id),
        advertised_host(advertised, addr),
        Some(encryption),
        None,
    )
    .with_listen_addr(listen_ip);
    let (actor, handle) = Actor::spawn(Some(format!("kairos-node-server-{id}")), server, ())
        .await
        .map_err(|e| cannot(&e))?;
    if let (Some(listener), Some(tls)) = (listener, tls) {
        tokio::spawn(accept_tls(listener, tls.clone(), actor.clone(), shutdown));
    }
    Ok((actor, handle))
}

/// The host of the advertised address `advertised` (`host:port`, IPv6 in
/// brackets), else the listener's IP.
fn advertised_host(advertised: &str, addr: SocketAddr) -> String {
    match advertised.rsplit_once(':') {
        Some((host, _)) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']').to_string(),
        _ => addr.ip().to_string(),
    }
}

/// Accepts worker-network connections on `listener`, runs each TLS
/// handshake in a task of its own (bounded by [`TLS_HANDSHAKE_TIMEOUT`], at
/// most [`MAX_PENDING_HANDSHAKES`] at once) and hands the encrypted stream
/// to `server`, until `shutdown`.
async fn accept_tls(
    listener: TcpListener,
    tls: WorkerTls,
    server: ActorRef<NodeServerMessage>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls.0.server.clone());
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    // Dropping the set at the end aborts the handshakes still running.
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = pending.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("worker network: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            _ = shutdown.cancelled() => return,
        };
        let (acceptor, server) = (acceptor.clone(), server.clone());
        handshakes.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let Ok(local_addr) = stream.local_addr() else {
                return;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let stream = NetworkStream::TlsServer {
                        peer_addr,
                        local_addr,
                        stream,
                    };
                    let _ = server.cast(NodeServerMessage::ConnectionOpened {
                        stream: Box::new(stream),
                        is_server: true,
                    });
                }
                Ok(Err(e)) => tracing::warn!(%peer_addr, "worker network: connection refused: {e}"),
                Err(_) => {
                    tracing::warn!(%peer_addr, "worker network: connection refused: no TLS handshake in time")
                }
            }
        });
    }
}

/// Opens a worker-network session to `addr` (a peer's reported cluster
/// address), dialed at `dial`: with TLS, checking the peer's certificate
/// against the host of `addr`.
async fn dial(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    dial: &str,
    tls: Option<&WorkerTls>,
) -> anyhow::Result<()> {
    match tls {
        None => ractor_cluster::client_connect(server, dial)
            .await
            .map_err(|e| anyhow::anyhow!("{e}")),
        Some(tls) => {
            let connector = TlsConnector::from(tls.0.client.clone());
            let name = server_name(addr)?;
            let connect = ractor_cluster::client_connect_enc(server, dial, connector, name);
            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connect)
                .await
                .map_err(|_| anyhow::anyhow!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"))?
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
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
    tls: Option<WorkerTls>,
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
        for (peer, (peer_addr, _)) in node.members() {
            if peer <= node.id || connected.contains(&peer) {
                continue;
            }
            let addr = match cluster_addrs.entry(peer) {
                std::collections::btree_map::Entry::Occupied(known) => known.get().clone(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    match node.probe(&peer_addr, Duration::from_secs(1)).await {
                        Ok(report) if !report.cluster_addr.is_empty() => {
                            slot.insert(report.cluster_addr).clone()
                        }
                        _ => continue,
                    }
                }
            };
            match dial(&server, &addr, node.dial_map().resolve(&addr), tls.as_ref()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes that all listen on 0.0.0.0:7301 still name themselves apart.
    #[test]
    fn the_node_server_is_named_by_the_advertised_host() {
        let any: SocketAddr = "0.0.0.0:7301".parse().unwrap();
        assert_eq!(advertised_host("kairos-2:7301", any), "kairos-2");
        assert_eq!(advertised_host("10.0.0.2:7301", any), "10.0.0.2");
        assert_eq!(advertised_host("[fd00::2]:7301", any), "fd00::2");
        assert_eq!(advertised_host("", any), "0.0.0.0");
    }
}
