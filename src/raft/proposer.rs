//! The leader's side of the write batcher: one `client_write` per entry, and
//! openraft's refusals as Kairos errors.
//!
//! [`RaftProposer`] is what [`super::batcher::WriteBatcher`] proposes its
//! entries through on a running node (tests give it a fake). A proposal made
//! on a node that is not (or no longer) the leader fails with
//! `Unavailable`, naming the leader when this node knows one, so the
//! router in [`crate::node`] retries there; [`write_error`] makes that
//! translation, also for the membership changes the node makes itself.
//! Each committed proposal's time from `client_write` to its return is
//! recorded (`kairos_raft_proposal_commit_seconds`, see [`super::stats`]).
//!
//! IMPLEMENTATION CAVEATS: a fatal Raft error (the node is shutting down) is
//! reported as `Unavailable` too: for the caller it is the same advice, try
//! another node.

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use prometheus_client::metrics::histogram::Histogram;

use super::batcher::{Landed, Proposer};
use super::{NodeId, Raft};
use crate::error::{Error, Result};
use crate::scheduler::{Request, Response};
use crate::telemetry::TracedEntry;

/// Proposes entries through the local Raft instance of node `id`.
pub struct RaftProposer {
    /// The proposing node, named in refusals.
    pub id: NodeId,
    /// Its Raft handle.
    pub raft: Raft,
    /// The leader's tracing, shared with the state machine.
    pub traces: std::sync::Arc<crate::telemetry::LeaderTraces>,
    /// Seconds from proposing an entry until it was committed and applied
    /// (committed proposals only).
    pub commit_seconds: Histogram,
    /// Refuses proposals while this leader hands over (see [`super::handover`]).
    pub handover: std::sync::Arc<super::handover::Handover>,
}

impl RaftProposer {
    /// The refusal of a proposal made while this node hands leadership over.
    fn stepping_down(&self) -> Error {
        Error::Unavailable {
            message: format!("node {} is handing leadership over before it stops", self.id),
            leader: None,
        }
    }
}

impl Proposer for RaftProposer {
    async fn propose(&self, request: Request) -> Result<Response> {
        let Some(_in_flight) = self.handover.admit() else {
            return Err(self.stepping_down());
        };
        let proposed = std::time::Instant::now();
        match self.raft.client_write(request).await {
            Ok(reply) => {
                self.commit_seconds.observe(proposed.elapsed().as_secs_f64());
                reply.data
            }
            Err(e) => Err(write_error(self.id, e)),
        }
    }

    async fn propose_traced(
        &self,
        request: Request,
        writes: Vec<Option<opentelemetry::Context>>,
    ) -> (Result<Response>, Option<Landed>) {
        let Some(_in_flight) = self.handover.admit() else {
            return (Err(self.stepping_down()), None);
        };
        self.traces.proposing(TracedEntry {
            at_ms: request.at_ms,
            principal: request.principal.clone(),
            writes,
        });
        let proposed = std::time::Instant::now();
        let written = self.raft.client_write(request).await;
        self.traces.proposed();
        match written {
            Ok(reply) => {
                self.commit_seconds.observe(proposed.elapsed().as_secs_f64());
                let log_index = reply.log_id.index;
                let landed = Landed {
                    log_index,
                    applied: self.traces.apply_times.of(log_index),
                };
                (reply.data, Some(landed))
            }
            Err(e) => (Err(write_error(self.id, e)), None),
        }
    }
}

/// A failed `client_write` or membership change on node `id`, as a Kairos error.
pub fn write_error(id: NodeId, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::Unavailable {
            message: match f.leader_id {
                Some(leader) => format!("node {id} is not the leader; node {leader} is"),
                None => format!("node {id} is not the leader and knows none"),
            },
            leader: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::FailedPrecondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(e) => Error::unavailable(format!("node {id} is shutting down: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use openraft::error::ForwardToLeader;

    use super::*;

    #[test]
    fn a_write_refused_by_a_follower_names_both_nodes_and_the_leader_address() {
        let refused = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
            leader_id: Some(3),
            leader_node: Some(BasicNode::new("127.0.0.1:7103")),
        }));
        assert_eq!(
            write_error(1, refused),
            Error::Unavailable {
                message: "node 1 is not the leader; node 3 is".into(),
                leader: Some("127.0.0.1:7103".into()),
            }
        );
    }
}
