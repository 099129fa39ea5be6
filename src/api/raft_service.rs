//! `RaftService`: the peer side of Raft RPCs, forwarded writes, ReadIndex,
//! status probes, the version query of `crate::cluster_version` and a
//! stopping leader's `TimeoutNow` (`crate::raft::handover`), the pre-vote
//! of `crate::raft::pre_vote`. Payloads are openraft / Kairos types encoded with their
//! format version (`crate::codec`; see `crate::raft::network` for the client
//! side). A payload of another format version is answered
//! `FAILED_PRECONDITION` naming both versions, one that does not decode
//! `INVALID_ARGUMENT`; neither reaches the node.
//!
//! [`serve_peers`] serves it on the peer listener (`--peer-addr`) and only
//! there, to connections that passed the peer authentication of
//! [`crate::transport`] (mutual TLS or the cluster secret): one forged
//! `AppendEntries` would otherwise raise every node's term.

use std::sync::Arc;
use tracing::Instrument;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::to_status;
use crate::error::Error;
use crate::node::{Forwarded, Node};
use crate::proto as pb;
use crate::proto::raft_service_server::{RaftService, RaftServiceServer};
use crate::raft::network::MAX_PEER_MESSAGE_BYTES;
use crate::raft::{decode, encode};
use crate::transport::{
    authenticated_incoming, PeerSecurity, SecretHandshake, ServerHandshake, TlsHandshake,
};

/// Serves `RaftService` on the peer `listener` to authenticated peers
/// only, until `shutdown` is cancelled.
pub async fn serve_peers(
    listener: TcpListener,
    security: &PeerSecurity,
    node: Arc<Node>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    match security {
        PeerSecurity::ClusterSecret(secret) => {
            serve_authenticated(listener, SecretHandshake(secret.clone()), node, shutdown).await
        }
        PeerSecurity::MutualTls(tls) => {
            serve_authenticated(listener, TlsHandshake::new(tls.server.clone()), node, shutdown).await
        }
    }
}

async fn serve_authenticated<H: ServerHandshake>(
    listener: TcpListener,
    handshake: H,
    node: Arc<Node>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error>
where
    <H::Io as Connected>::ConnectInfo: Clone + Send + Sync + 'static,
{
    let incoming = authenticated_incoming(listener, handshake, "peer", shutdown.clone());
    tonic::transport::Server::builder()
        .add_service(
            RaftServiceServer::new(PeerApi { node })
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// The peer service of a node.
pub struct PeerApi {
    /// The local node.
    pub node: Arc<Node>,
}

fn decode_payload<T: DeserializeOwned>(request: Request<pb::RaftPayload>) -> Result<T, Status> {
    decode(&request.into_inner().data).map_err(|e| match e {
        Error::FailedPrecondition(_) => to_status(e),
        e => Status::invalid_argument(format!("undecodable peer message: {e}")),
    })
}

fn payload<T: Serialize>(value: &T) -> Result<Response<pb::RaftPayload>, Status> {
    Ok(Response::new(pb::RaftPayload {
        data: encode(value).map_err(to_status)?,
    }))
}

#[tonic::async_trait]
impl RaftService for PeerApi {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = decode_payload(request)?;
        payload(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = decode_payload(request)?;
        payload(&self.node.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = decode_payload(request)?;
        payload(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        // The follower's `kairos.forward` span is the parent, when traced.
        let parent = match crate::telemetry::enabled() {
            true => crate::telemetry::extract_headers(&request.metadata().clone().into_headers()),
            false => opentelemetry::Context::new(),
        };
        let span = match crate::telemetry::continues(&parent) {
            true => {
                let span = tracing::info_span!(parent: None, "kairos.forwarded", otel.kind = "server");
                crate::telemetry::continue_from(&span, parent);
                span
            }
            false => tracing::Span::none(),
        };
        let forwarded: Forwarded = decode_payload(request)?;
        payload(&self.node.execute(forwarded).instrument(span).await)
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self.node.read_index().await.map_err(to_status)?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn node_metrics(
        &self,
        _request: Request<pb::NodeMetricsRequest>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        payload(&self.node.report())
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let pb::TimeoutNowRequest {
            leader_id,
            term,
            candidate,
        } = request.into_inner();
        self.node
            .timeout_now(leader_id, term, candidate)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn pre_vote(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let request = decode_payload(request)?;
        payload(&self.node.pre_vote(&request).await.map_err(to_status)?)
    }

    async fn node_version(
        &self,
        _request: Request<pb::NodeVersionRequest>,
    ) -> Result<Response<pb::NodeVersionResponse>, Status> {
        let own = crate::cluster_version::own();
        Ok(Response::new(pb::NodeVersionResponse {
            major: own.major.into(),
            minor: own.minor.into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::VoteRequest;
    use openraft::{CommittedLeaderId, LogId, Vote};
    use tonic::Code;

    use super::*;
    use crate::codec::{encode_body, FORMAT_VERSION};

    fn payload_of(data: Vec<u8>) -> Request<pb::RaftPayload> {
        Request::new(pb::RaftPayload { data })
    }

    #[test]
    fn a_peer_message_of_another_format_version_is_refused_naming_both() {
        let vote = VoteRequest::new(
            Vote::new(4, 2),
            Some(LogId::new(CommittedLeaderId::new(3, 1), 17)),
        );
        let good = encode(&vote).unwrap();
        let decoded: VoteRequest<u64> = decode_payload(payload_of(good.clone())).unwrap();
        assert_eq!(decoded, vote);

        let mut newer = good;
        newer[2..4].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let status = decode_payload::<VoteRequest<u64>>(payload_of(newer)).unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("is in format version 7, newer than this node understands (it reads 6)"),
            "{status:?}"
        );

        // A node from before format versions sends no frame.
        let status = decode_payload::<VoteRequest<u64>>(payload_of(encode_body(&vote).unwrap())).unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("no format version"), "{status:?}");

        let status =
            decode_payload::<VoteRequest<u64>>(payload_of(vec![0x80, 0x00, 6, 0, 0xff])).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}
