//! The `membership_change` fault: a voter is removed from the cluster and
//! added back while the workload runs, and, with even odds, the leader is
//! killed in the middle of the re-add.
//!
//! 1. A random follower (the victim) is removed (`ClusterService.RemoveNode`);
//!    its process keeps running, as a node an operator forgot to stop
//!    would: it must not disturb the smaller cluster.
//! 2. After 1–2.5 s it is added back (`AddNode` with its peer address: a
//!    learner first, then a voter once it caught up).
//! 3. One add in three runs undisturbed. In another the leader is killed
//!    0–60 ms into the add (the cluster, down to two voters, has no quorum
//!    until it returns). In the third, where the runtime can slow links
//!    (process mode), the links between the leader and the voter that
//!    stays are slowed by [`JOINT_STEP_DELAY_MS`] (a joint configuration
//!    commits only once that voter answers) and the leader is killed the
//!    moment it holds the joint configuration of old and new voters:
//!    before it can commit it, and so before the second step. The next
//!    leader inherits the joint configuration and must finish it
//!    (`src/raft/joint.rs`); an add asked again sees the victim among the
//!    voters already and does nothing. In
//!    both disturbed cases the killed leader starts again 1–2 s later and
//!    the add is asked again until it succeeds.
//!
//! Every write and fire checker judges the round as usual. What the
//! cluster must do besides, whose failure is the fault's misbehaviour
//! (reported by `membership_restored`): within [`RESTORED_WITHIN`] the
//! add succeeds and the leader's membership is one set of voters again
//! holding every node of the round (not a joint configuration, which
//! needs a majority of each of its two sets).

use std::time::Duration;

use kairos::proto as pb;
use rand::rngs::StdRng;
use rand::Rng;

use crate::client::{request, Clients};
use crate::faults::Judged;
use crate::runtime::{NodeId, Runtime};

/// How long the cluster has to take the victim back as a voter.
const RESTORED_WITHIN: Duration = Duration::from_secs(30);

/// Longest wait for one membership call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the links from the leader to the voter that stays are slowed
/// while the leader is killed inside the joint step: the joint
/// configuration is committed a round trip over them after the leader
/// appends it, so the harness has about twice this to kill it first. Kept
/// under half of Raft's 50 ms append timeout, past which the voter would
/// never answer in time and nothing would commit.
const JOINT_STEP_DELAY_MS: u64 = 15;

/// How the add of a round is disturbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disturbance {
    None,
    /// The leader is killed 0–60 ms into the add.
    LeaderKilled,
    /// The leader is killed the moment it holds the joint configuration.
    LeaderKilledInJointStep,
}

/// Removes a follower, adds it back (killing the leader during the add in
/// two rounds of three) and judges whether the membership was restored.
pub async fn remove_and_add_back(
    runtime: &mut Runtime,
    clients: &Clients,
    rng: &mut StdRng,
) -> anyhow::Result<Judged> {
    let Some(leader) = clients.wait_leader(RESTORED_WITHIN).await else {
        anyhow::bail!("membership_change: no leader to ask");
    };
    let members = members(clients, leader).await?;
    let followers: Vec<&pb::NodeStatus> = members.iter().filter(|n| n.id != leader).collect();
    let victim = followers[rng.gen_range(0..followers.len())];
    let (victim, peer_addr) = (victim.id, victim.peer_addr.clone());

    let mut steps = Vec::new();
    let removed = until_done(clients, RESTORED_WITHIN, |node| {
        let mut client = clients.cluster(node);
        async move {
            let mut call = request(pb::RemoveNodeRequest { node_id: victim });
            call.set_timeout(CALL_TIMEOUT);
            client.remove_node(call).await.map(|_| ())
        }
    })
    .await;
    if let Err(e) = removed {
        return Ok(Judged {
            nodes: vec![victim],
            detail: format!("remove node {victim}: {e}"),
            misbehaviour: Some(format!("node {victim} could not be removed: {e}")),
        });
    }
    steps.push(format!("removed node {victim}"));
    tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..2_500))).await;

    let add = |node: NodeId| {
        let mut client = clients.cluster(node);
        let peer_addr = peer_addr.clone();
        async move {
            let mut call = request(pb::AddNodeRequest {
                node_id: victim,
                peer_addr,
            });
            call.set_timeout(CALL_TIMEOUT);
            client.add_node(call).await.map(|_| ())
        }
    };
    let mut nodes = vec![victim];
    let disturbance = match rng.gen_range(0..3) {
        0 => Disturbance::None,
        2 if runtime.supports_link_faults() => Disturbance::LeaderKilledInJointStep,
        _ => Disturbance::LeaderKilled,
    };
    if disturbance != Disturbance::None {
        let in_joint_step = disturbance == Disturbance::LeaderKilledInJointStep;
        if in_joint_step {
            // The voter that stays: the joint configuration's commit waits
            // for it, the victim's catching up does not.
            let stays: Vec<(NodeId, NodeId)> = members
                .iter()
                .filter(|n| n.id != leader && n.id != victim)
                .map(|n| (leader, n.id))
                .collect();
            runtime.slow_links(&stays, JOINT_STEP_DELAY_MS).await?;
        }
        let first = tokio::spawn(add(leader));
        let moment = if in_joint_step {
            if holds_joint_configuration(clients, leader, CALL_TIMEOUT).await {
                "holding the joint configuration"
            } else {
                "never holding a joint configuration"
            }
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
            "during the add"
        };
        runtime.kill(leader).await?;
        if in_joint_step {
            runtime.heal().await?;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..2_000))).await;
        runtime.start(leader).await?;
        let first = first.await.map_err(anyhow::Error::from)?;
        steps.push(format!(
            "leader {leader} killed {moment} ({}), restarted",
            match &first {
                Ok(()) => "the add succeeded".to_string(),
                Err(e) => format!("the add failed: {}", e.code()),
            }
        ));
        nodes.push(leader);
    }
    let added = until_done(clients, RESTORED_WITHIN, add).await;
    let misbehaviour = match added {
        Err(e) => Some(format!("node {victim} could not be added back: {e}")),
        Ok(()) => {
            steps.push(format!("added node {victim} back"));
            voters_restored(clients, &clients.ids()).await.err()
        }
    };
    Ok(Judged {
        nodes,
        detail: steps.join("; "),
        misbehaviour,
    })
}

/// The cluster as `node` sees it: with every member asked, or (`local_only`)
/// its own view alone.
async fn status(
    clients: &Clients,
    node: NodeId,
    local_only: bool,
) -> Result<pb::ClusterStatus, tonic::Status> {
    let mut call = request(pb::ClusterStatusRequest {
        local_only,
        with_digest: false,
    });
    call.set_timeout(CALL_TIMEOUT);
    Ok(clients.cluster(node).status(call).await?.into_inner())
}

/// The members as `node` sees them (their ids and peer addresses).
async fn members(clients: &Clients, node: NodeId) -> anyhow::Result<Vec<pb::NodeStatus>> {
    Ok(status(clients, node, false).await?.nodes)
}

/// Whether `node` comes to hold a joint configuration (two voter sets)
/// within `within`, asked every few milliseconds.
async fn holds_joint_configuration(clients: &Clients, node: NodeId, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if status(clients, node, true)
            .await
            .is_ok_and(|status| status.voter_sets.len() > 1)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// Calls `call` on each node in turn (any node routes a membership change
/// to the leader) until one succeeds or `within` has passed; the last error.
async fn until_done<F, Fut>(clients: &Clients, within: Duration, call: F) -> Result<(), String>
where
    F: Fn(NodeId) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let ids = clients.ids();
    let mut last = String::new();
    for node in ids.iter().cycle() {
        match call(*node).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{}: {}", e.code(), e.message()),
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// Whether the leader's membership is one set of voters holding every
/// node of `ids`, within [`RESTORED_WITHIN`]; otherwise what it holds.
async fn voters_restored(clients: &Clients, ids: &[NodeId]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RESTORED_WITHIN;
    let mut seen = String::from("no leader answered");
    while tokio::time::Instant::now() < deadline {
        if let Some(leader) = clients.leader().await {
            if let Ok(status) = status(clients, leader, false).await {
                let sets: Vec<Vec<NodeId>> = status.voter_sets.into_iter().map(|s| s.ids).collect();
                if let [voters] = sets.as_slice() {
                    if ids.iter().all(|id| voters.contains(id)) {
                        return Ok(());
                    }
                }
                seen = match sets.as_slice() {
                    [voters] => format!("leader {leader} holds voters {voters:?}"),
                    _ => format!("leader {leader} holds the joint configuration {sets:?}"),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "not every node is a voter again {} s after the add: {seen}",
        RESTORED_WITHIN.as_secs()
    ))
}
