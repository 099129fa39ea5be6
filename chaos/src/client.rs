//! gRPC access to the nodes, one node at a time, with short deadlines: the
//! harness must keep recording while nodes are dead, frozen or cut off.
//!
//! Every call carries the root token the harness got by bootstrapping the
//! cluster's ACL ([`bootstrap`]); workload writes also carry a W3C
//! `traceparent` whose trace id is unique in the round ([`traced`]), which the
//! nodes record in the write's audit entry, so that the `audit_complete`
//! checker can find each operation's entry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use kairos::proto as pb;
use kairos::proto::audit_service_client::AuditServiceClient;
use kairos::proto::cluster_service_client::ClusterServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;
use kairos_testkit::{Authed, Bearer};
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::history::{Outcome, Role};

/// Deadline of one workload request; past it the outcome is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long bootstrapping the ACL may wait for the first leader.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);

/// Bootstraps the ACL of the new cluster at `addrs` (waiting for a leader,
/// bounded); the root token.
pub async fn bootstrap(addrs: &BTreeMap<u64, String>) -> anyhow::Result<pb::TokenSecret> {
    let endpoints = addrs
        .values()
        .map(|a| {
            a.parse::<SocketAddr>()
                .with_context(|| format!("{a}: not an ip:port"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    kairos::launcher::bootstrap_root_token(&endpoints, BOOTSTRAP_TIMEOUT)
        .await
        .context("bootstrap the ACL")
}

/// Lazily connecting channels to every node, carrying the root token.
#[derive(Clone)]
pub struct Clients {
    channels: BTreeMap<u64, Authed>,
    /// The name of the token the calls carry: the principal of every
    /// workload write in the audit log.
    principal: String,
}

impl Clients {
    /// Channels to `addrs` (node id → host:port) whose calls carry `token`.
    pub fn new(addrs: &BTreeMap<u64, String>, token: &pb::TokenSecret) -> anyhow::Result<Clients> {
        let mut channels = BTreeMap::new();
        for (&id, addr) in addrs {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.insert(id, Authed::new(channel, Bearer::new(&token.secret)));
        }
        Ok(Clients {
            channels,
            principal: token.name.clone(),
        })
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.channels.keys().copied().collect()
    }

    /// Who the calls are made as (the token's name).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    pub fn jobs(&self, node: u64) -> JobServiceClient<Authed> {
        JobServiceClient::new(self.channels[&node].clone())
    }

    pub fn events(&self, node: u64) -> kairos::proto::event_service_client::EventServiceClient<Authed> {
        kairos::proto::event_service_client::EventServiceClient::new(self.channels[&node].clone())
    }

    pub fn runs(&self, node: u64) -> RunServiceClient<Authed> {
        RunServiceClient::new(self.channels[&node].clone())
    }

    pub fn cluster(&self, node: u64) -> ClusterServiceClient<Authed> {
        ClusterServiceClient::new(self.channels[&node].clone())
    }

    pub fn audit(&self, node: u64) -> AuditServiceClient<Authed> {
        AuditServiceClient::new(self.channels[&node].clone())
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
        self.leadership().await.map(|(id, _)| id)
    }

    /// `(leader, term)` of the node that reports itself leader with the
    /// highest term, if any does.
    pub async fn leadership(&self) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.ids() {
            if let Some(status) = self.local_status(id, false, Duration::from_millis(500)).await {
                if role(&status) == Role::Leader && best.is_none_or(|(_, term)| status.term > term) {
                    best = Some((id, status.term));
                }
            }
        }
        best
    }

    /// The node for attempt `attempt` of a retried call: the leader, or,
    /// while no node reports itself leader, each node in turn, so that a
    /// node that stayed down is not the one asked every time.
    pub async fn leader_or_next(&self, attempt: usize) -> u64 {
        match self.leader().await {
            Some(leader) => leader,
            None => {
                let ids = self.ids();
                ids[attempt % ids.len()]
            }
        }
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

/// A [`request`] carrying `traceparent: 00-<trace_id>-<span>-01`: the node
/// records `trace_id` (32 lowercase hex digits) in the call's audit entry.
pub fn traced<T>(message: T, trace_id: &str) -> tonic::Request<T> {
    let mut request = request(message);
    let value = format!("00-{trace_id}-{:016x}-01", 1u64);
    request.metadata_mut().insert(
        kairos::api::auth::TRACEPARENT_HEADER,
        value.parse().expect("a traceparent is ASCII"),
    );
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
