//! gRPC access to the nodes, one node at a time, with short deadlines: the
//! harness must keep recording while nodes are dead, frozen or cut off.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::cluster_service_client::ClusterServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::history::{Outcome, Role};

/// Deadline of one workload request; past it the outcome is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Lazily connecting channels to every node.
#[derive(Clone)]
pub struct Clients {
    channels: BTreeMap<u64, Channel>,
}

impl Clients {
    /// Channels to `addrs` (node id → host:port).
    pub fn new(addrs: &BTreeMap<u64, String>) -> anyhow::Result<Clients> {
        let mut channels = BTreeMap::new();
        for (&id, addr) in addrs {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.insert(id, channel);
        }
        Ok(Clients { channels })
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.channels.keys().copied().collect()
    }

    pub fn jobs(&self, node: u64) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channels[&node].clone())
    }

    pub fn runs(&self, node: u64) -> RunServiceClient<Channel> {
        RunServiceClient::new(self.channels[&node].clone())
    }

    pub fn cluster(&self, node: u64) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channels[&node].clone())
    }

    /// Node `id`'s own view of itself (role, term, indexes, optionally the
    /// state digest), or `None` when it does not answer within `timeout`.
    pub async fn local_status(
        &self,
        id: u64,
        with_digest: bool,
        timeout: Duration,
    ) -> Option<pb::NodeStatus> {
        let mut request = tonic::Request::new(pb::ClusterStatusRequest {
            local_only: true,
            with_digest,
        });
        request.set_timeout(timeout);
        let reply = tokio::time::timeout(timeout, self.cluster(id).status(request))
            .await
            .ok()?
            .ok()?;
        reply.into_inner().nodes.into_iter().next()
    }

    /// The node that reports itself leader with the highest term, if any does.
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.ids() {
            if let Some(status) = self.local_status(id, false, Duration::from_millis(500)).await {
                if role(&status) == Role::Leader && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits (bounded by `timeout`) until some node is leader; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }
}

/// The role a status reports.
pub fn role(status: &pb::NodeStatus) -> Role {
    match pb::NodeRole::try_from(status.role) {
        Ok(pb::NodeRole::Leader) => Role::Leader,
        Ok(pb::NodeRole::Follower) => Role::Follower,
        Ok(pb::NodeRole::Candidate) => Role::Candidate,
        Ok(pb::NodeRole::Learner) => Role::Learner,
        _ => Role::Down,
    }
}

/// A request with the workload's deadline.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}

/// How a failed call counts: a definite refusal, or unknown (it may have
/// happened: timeouts, lost connections, leader changes, internal errors).
pub fn classify(status: &Status) -> Outcome {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Aborted
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated => Outcome::Failed(message),
        _ => Outcome::Unknown(message),
    }
}
