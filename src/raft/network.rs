//! Raft RPCs between nodes over tonic.
//!
//! Each openraft message is postcard-encoded into a `RaftPayload` and sent to the
//! peer's `RaftService` on its peer address (`--peer-addr`, the address in the
//! membership), over a connection authenticated as the node's
//! [`PeerSecurity`] says (see [`crate::transport`]).
//! The peer answers with the encoded `Result` of its local Raft call, so a
//! remote Raft error arrives as `RPCError::RemoteError`.
//!
//! Failure handling: every call is bounded by the TTL openraft passes in
//! (`RPCOption::hard_ttl`, the heartbeat interval for `AppendEntries`). A
//! refused connection or a broken stream is reported as
//! `RPCError::Unreachable`, which makes openraft back off
//! ([`PeerClient::backoff`]) instead of hammering a dead peer; channels
//! reconnect by themselves once the peer is back. An expired TTL is only a
//! slow answer: a follower busy with a large batch and its fsync on a loaded
//! machine can take longer than one heartbeat interval, and backing off then
//! stalled every commit for 200 ms (the p99 of `kairos-bench create` at 64
//! clients was ≈ 250 ms that way). It is reported as `RPCError::Timeout`,
//! which openraft retries at once, until [`TIMEOUTS_BEFORE_UNREACHABLE`]
//! expire in a row: a peer that stopped answering (paused, partitioned) is
//! then backed off like an unreachable one.
//!
//! One connection per peer: openraft asks for a new client for every
//! replication stream, every election and every linearizable read (whose
//! leadership check is a round of heartbeats bounded by the heartbeat
//! interval, 50 ms). A new client with a new connection paid the TCP
//! connect and the peer authentication inside those 50 ms; under load every
//! such check failed and reads on the leader answered `UNAVAILABLE` for
//! seconds (seen in CI, thousands of "timeout while confirming leadership"
//! in a row). [`PeerNetwork`] therefore hands every client of one peer the
//! same channel, an HTTP/2 connection that carries the calls side by side
//! and reconnects by itself.
//!
//! Peers are dialed through the node's [`DialMap`]: a test harness may send
//! this node's connections to a peer through a proxy of its own. A peer
//! that refuses the connection's authentication is unreachable, like one
//! that is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::{decode, encode, NodeId, TypeConfig};
use crate::dial::DialMap;
use crate::proto::raft_service_client::RaftServiceClient;
use crate::proto::RaftPayload;
use crate::transport::{PeerConnector, PeerSecurity};

/// Largest peer message (a batch of entries or a snapshot chunk), bytes.
pub const MAX_PEER_MESSAGE_BYTES: usize = 512 << 20;
/// How long opening a connection to a peer may take: the TCP connect and the
/// authentication handshake (TLS, or the cluster-secret challenge–response).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to reach an unreachable peer.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);
/// Calls to a peer whose TTL expires in a row before it counts as unreachable.
pub const TIMEOUTS_BEFORE_UNREACHABLE: u32 = 3;

/// A lazily connecting client of a peer's `RaftService` at `addr` (host:port,
/// its peer address), dialed where `dial_map` says and authenticated as
/// `security` says. The connect timeout covers the dial and the handshake.
pub fn peer_client(
    addr: &str,
    dial_map: &Arc<DialMap>,
    security: &Arc<PeerSecurity>,
) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
    let connector = PeerConnector::new(addr, dial_map.clone(), security.clone());
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(connector);
    Ok(RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
}

/// Creates [`PeerClient`]s for openraft on node `id`, all clients of one
/// peer sharing one channel (see the module notes).
#[derive(Clone)]
pub struct PeerNetwork {
    /// The node that sends.
    id: NodeId,
    /// Where the node dials its peers.
    dial_map: Arc<DialMap>,
    /// How the node authenticates its peer connections.
    security: Arc<PeerSecurity>,
    /// The channel of each peer address, made on first use.
    channels: Arc<std::sync::Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
}

impl PeerNetwork {
    /// The network of node `id`, dialing through `dial_map` and
    /// authenticating as `security` says.
    pub fn new(id: NodeId, dial_map: Arc<DialMap>, security: Arc<PeerSecurity>) -> PeerNetwork {
        PeerNetwork {
            id,
            dial_map,
            security,
            channels: Arc::default(),
        }
    }

    /// The shared channel to `addr`; `None` if no channel can be made for
    /// it (an address that is no URI), which the call reports.
    fn channel(&self, addr: &str) -> Option<RaftServiceClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = channels.get(addr) {
            return Some(client.clone());
        }
        let client = peer_client(addr, &self.dial_map, &self.security).ok()?;
        channels.insert(addr.to_string(), client.clone());
        Some(client)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            addr: node.addr.clone(),
            dial_map: self.dial_map.clone(),
            security: self.security.clone(),
            client: self.channel(&node.addr),
            timeouts_in_a_row: 0,
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    /// The peer's address in the membership.
    addr: String,
    /// Where the sending node dials its peers.
    dial_map: Arc<DialMap>,
    /// How the sending node authenticates its peer connections.
    security: Arc<PeerSecurity>,
    client: Option<RaftServiceClient<Channel>>,
    /// Calls whose TTL expired since the last answer.
    timeouts_in_a_row: u32,
}

/// Which RPC of `RaftService` to call.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Rpc {
    fn openraft_type(self) -> RPCTypes {
        match self {
            Rpc::AppendEntries => RPCTypes::AppendEntries,
            Rpc::Vote => RPCTypes::Vote,
            Rpc::InstallSnapshot => RPCTypes::InstallSnapshot,
        }
    }
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: &dyn std::fmt::Display| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "{rpc:?} to node {} at {}: {e}",
                self.target, self.addr
            ))))
        };
        if self.client.is_none() {
            self.client =
                Some(peer_client(&self.addr, &self.dial_map, &self.security).map_err(|e| unreachable(&e))?);
        }
        let client = self.client.clone().expect("set above");
        let deadline = tokio::time::Instant::now() + ttl;
        let mut attempt = 0;
        let reply = loop {
            attempt += 1;
            let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let request = tonic::Request::new(RaftPayload { data });
            let mut client = client.clone();
            let call = async move {
                match rpc {
                    Rpc::AppendEntries => client.append_entries(request).await,
                    Rpc::Vote => client.vote(request).await,
                    Rpc::InstallSnapshot => client.install_snapshot(request).await,
                }
            };
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(reply)) => break reply.into_inner(),
                // The shared channel answers the first call after a failed
                // connection with that failure and reconnects for the next
                // one (a vote right after start-up met the failed dial of a
                // peer not yet listening): once more, within the TTL. The
                // calls are idempotent (Raft's own retries resend them too).
                Ok(Err(_)) if attempt == 1 => continue,
                Ok(Err(status)) => return Err(unreachable(&status)),
                Err(_) => {
                    self.timeouts_in_a_row += 1;
                    if self.timeouts_in_a_row >= TIMEOUTS_BEFORE_UNREACHABLE {
                        let n = self.timeouts_in_a_row;
                        return Err(unreachable(&format!(
                            "no answer within {ttl:?}, {n} times in a row"
                        )));
                    }
                    return Err(RPCError::Timeout(Timeout {
                        action: rpc.openraft_type(),
                        id: self.id,
                        target: self.target,
                        timeout: ttl,
                    }));
                }
            }
        };
        self.timeouts_in_a_row = 0;
        let result: Result<Resp, E> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_peer_is_dialed_through_the_sending_nodes_dial_map() {
        // The membership names a port nothing listens on; the map sends it
        // to a listener standing in for the harness's proxy.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let member_addr = unused.local_addr().unwrap().to_string();
        drop(unused);
        let map = DialMap::parse(&format!("{member_addr}={}", proxy.local_addr().unwrap())).unwrap();
        let secret = crate::transport::ClusterSecret::new("sixteen-bytes-ok".into(), "test").unwrap();
        let mut network = PeerNetwork::new(1, Arc::new(map), Arc::new(PeerSecurity::ClusterSecret(secret)));
        let mut peer = network.new_client(2, &BasicNode::new(&member_addr)).await;
        let vote = tokio::spawn(async move {
            let request = VoteRequest::new(openraft::Vote::new(1, 1), None);
            let _ = peer.vote(request, RPCOption::new(Duration::from_secs(30))).await;
        });
        let accepted = tokio::time::timeout(Duration::from_secs(10), proxy.accept()).await;
        vote.abort();
        assert!(
            matches!(accepted, Ok(Ok(_))),
            "the vote was not sent to the mapped address: {accepted:?}"
        );
    }
}
