//! `RaftService`: the peer side of Raft RPCs, forwarded writes, ReadIndex and
//! status probes. Payloads are postcard-encoded openraft / Kairos types (see
//! `crate::raft::network` for the client side).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::to_status;
use crate::node::{Forwarded, Node};
use crate::proto as pb;
use crate::proto::raft_service_server::RaftService;
use crate::raft::{decode, encode};

/// The peer service of a node.
pub struct PeerApi {
    /// The local node.
    pub node: Arc<Node>,
}

fn decode_payload<T: DeserializeOwned>(request: Request<pb::RaftPayload>) -> Result<T, Status> {
    decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer message: {e}")))
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
        payload(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = decode_payload(request)?;
        payload(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let forwarded: Forwarded = decode_payload(request)?;
        payload(&self.node.execute(forwarded).await)
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
}
