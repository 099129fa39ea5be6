//! `ClusterService`: membership and a cluster-wide status.
//!
//! `Status` asks every member for its own view (`RaftService.NodeMetrics`) in
//! parallel with a short timeout, so one command shows each node's role, term
//! and indexes — a node that does not answer is shown as unreachable rather
//! than delaying the answer.
//!
//! `Version` answers the cluster version this node applied and asks every
//! member its own (`RaftService.NodeVersion`, see `crate::cluster_version`).
//!
//! Addresses: `grpc_addr` is a member's client API address (from its own
//! report, or the node's address book for one that did not answer);
//! `peer_addr` is the address in the membership. `AddNode` takes the new
//! node's peer address. `SaveSnapshot` streams a backup file
//! (`super::snapshot_save`).

use std::time::Duration;

use futures::future::join_all;
use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::{to_status, Api};
use crate::error::Error;
use crate::node::NodeReport;
use crate::proto as pb;
use crate::proto::cluster_service_server::ClusterService;
use crate::scheduler::acl::{Permission, Resource};

/// How long the status probe of one member may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_500);

/// A member's role as its report names it.
pub(super) fn role(report: &NodeReport) -> pb::NodeRole {
    match report.role.as_str() {
        "leader" => pb::NodeRole::Leader,
        "follower" => pb::NodeRole::Follower,
        "candidate" => pb::NodeRole::Candidate,
        "learner" => pb::NodeRole::Learner,
        "shutdown" => pb::NodeRole::Shutdown,
        _ => pb::NodeRole::Unspecified,
    }
}

fn node_status(id: u64, peer_addr: String, voter: bool, r: &NodeReport) -> pb::NodeStatus {
    pb::NodeStatus {
        id,
        grpc_addr: r.grpc_addr.clone(),
        peer_addr,
        role: role(r) as i32,
        voter,
        term: r.term,
        commit_index: r.commit_index,
        applied_index: r.applied_index,
        last_log_index: r.last_log_index,
        snapshot_index: r.snapshot_index,
        purged_index: r.purged_index,
        state_digest: String::new(),
        auth_disabled: r.auth_disabled,
        audit_head_seq: r.audit_head.0,
        audit_head_hash: crate::scheduler::audit::hex(&r.audit_head.1),
    }
}

impl Api {
    /// This node's view of itself only, with its state digest if asked.
    fn local_status(&self, with_digest: bool) -> pb::ClusterStatus {
        let own = self.node.report();
        let (addr, voter) = self.node.members().remove(&self.node.id).unwrap_or_default();
        let mut status = node_status(self.node.id, addr, voter, &own);
        if with_digest {
            status.state_digest = format!("{:016x}", self.node.state.read().digest());
        }
        self.answer(&own, vec![status])
    }

    /// A status answered by this node, whose own view is `own`.
    fn answer(&self, own: &NodeReport, nodes: Vec<pb::NodeStatus>) -> pb::ClusterStatus {
        pb::ClusterStatus {
            answered_by: self.node.id,
            leader_id: own.leader.unwrap_or(0),
            term: own.term,
            nodes,
            cluster_version: self.node.cluster_version().current().to_string(),
            voter_sets: self
                .node
                .voter_sets()
                .into_iter()
                .map(|set| pb::VoterSet {
                    ids: set.into_iter().collect(),
                })
                .collect(),
        }
    }

    /// Every member's own report (this node's included), asked in
    /// parallel; `None` for a member that did not answer in
    /// [`PROBE_TIMEOUT`].
    pub(super) async fn member_reports(&self) -> Vec<MemberReport> {
        let probes = self
            .node
            .members()
            .into_iter()
            .map(|(id, (peer_addr, voter))| async move {
                let report = if id == self.node.id {
                    Some(self.node.report())
                } else {
                    self.node.probe(&peer_addr, PROBE_TIMEOUT).await.ok()
                };
                MemberReport {
                    id,
                    peer_addr,
                    voter,
                    report,
                }
            });
        join_all(probes).await
    }

    async fn cluster_status(&self) -> pb::ClusterStatus {
        let own = self.node.report();
        let nodes = self
            .member_reports()
            .await
            .into_iter()
            .map(|m| match &m.report {
                Some(r) => node_status(m.id, m.peer_addr, m.voter, r),
                None => pb::NodeStatus {
                    id: m.id,
                    grpc_addr: self.node.client_addr_of(&m.peer_addr).unwrap_or_default(),
                    peer_addr: m.peer_addr,
                    role: pb::NodeRole::Unreachable as i32,
                    voter: m.voter,
                    ..Default::default()
                },
            })
            .collect();
        self.answer(&own, nodes)
    }
}

/// One member as [`Api::member_reports`] found it.
pub(super) struct MemberReport {
    /// Node id.
    pub id: u64,
    /// Its peer address (in the membership).
    pub peer_addr: String,
    /// Voter, or learner.
    pub voter: bool,
    /// Its own report; `None` when it did not answer.
    pub report: Option<NodeReport>,
}

fn check_addr(addr: &str) -> Result<(), Status> {
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if port_ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "peer_addr: {addr:?} is not host:port"
        )))
    }
}

impl Api {
    /// A membership change by `caller`: needs `cluster:admin`; recorded in
    /// the audit log with its outcome (it is not a state machine command,
    /// so its record is an entry of its own).
    async fn membership_change(
        &self,
        caller: &Caller,
        resource: String,
        change: impl std::future::Future<Output = Result<(), Error>>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let principal = {
            let state = self.node.state.read();
            self.authorize(caller, &state, Permission::ClusterAdmin, &Resource::Cluster)?
                .principal
        };
        let result = change.await;
        let record = self.record(caller, &principal, &resource, "", result.as_ref().err());
        self.recorder().record(record);
        result.map_err(to_status)?;
        Ok(Response::new(self.cluster_status().await))
    }
}

#[tonic::async_trait]
impl ClusterService for Api {
    type SaveSnapshotStream = super::snapshot_save::SnapshotStream;

    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = self.caller(&request, "ClusterStatus").await;
        let req = request.into_inner();
        self.observed(caller.method, async {
            {
                let state = self.node.state.read();
                self.authorize(&caller, &state, Permission::ClusterRead, &Resource::Cluster)?;
            }
            if req.local_only {
                return Ok(Response::new(self.local_status(req.with_digest)));
            }
            if req.with_digest {
                return Err(Status::invalid_argument("with_digest: only with local_only"));
            }
            Ok(Response::new(self.cluster_status().await))
        })
        .await
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = self.caller(&request, "AddNode").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            if req.node_id == 0 {
                return Err(Status::invalid_argument("node_id: must be a positive integer"));
            }
            check_addr(&req.peer_addr)?;
            let resource = format!("node {}", req.node_id);
            self.membership_change(&caller, resource, self.node.add_node(req.node_id, req.peer_addr))
                .await
        })
        .await
    }

    async fn version(
        &self,
        request: Request<pb::ClusterVersionRequest>,
    ) -> Result<Response<pb::ClusterVersion>, Status> {
        let caller = self.caller(&request, "ClusterVersion").await;
        self.observed(caller.method, async {
            {
                let state = self.node.state.read();
                self.authorize(&caller, &state, Permission::ClusterRead, &Resource::Cluster)?;
            }
            let voters = self.node.members();
            let members = self
                .node
                .member_versions()
                .await
                .into_iter()
                .map(|(id, answer)| {
                    let voter = voters.get(&id).is_some_and(|(_, voter)| *voter);
                    match answer {
                        Ok(version) => pb::MemberVersion {
                            id,
                            voter,
                            version: version.to_string(),
                            error: String::new(),
                        },
                        Err(error) => pb::MemberVersion {
                            id,
                            voter,
                            version: String::new(),
                            error,
                        },
                    }
                })
                .collect();
            Ok(Response::new(pb::ClusterVersion {
                answered_by: self.node.id,
                cluster_version: self.node.cluster_version().current().to_string(),
                members,
            }))
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = self.caller(&request, "RemoveNode").await;
        self.observed(caller.method, async {
            let req = request.into_inner();
            let resource = format!("node {}", req.node_id);
            self.membership_change(&caller, resource, self.node.remove_node(req.node_id))
                .await
        })
        .await
    }

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let caller = self.caller(&request, "SaveSnapshot").await;
        self.observed(caller.method, self.save_snapshot_for(caller.clone()))
            .await
    }
}
