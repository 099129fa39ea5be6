//! The `membership_change` fault: a voter is removed from the cluster and
//! added back while the workload runs, and, with even odds, the leader is
//! killed in the middle of the re-add.
//!
//! 1. A random follower (the victim) is removed (`ClusterService.RemoveNode`);
//!    its process keeps running, as a node an operator forgot to stop
//!    would: it must not disturb the smaller cluster.
//! 2. After 1–2.5 s it is added back (`AddNode` with its peer address: a
//!    learner first, then a voter once it caught up).
//! 3. With even odds, 0–60 ms into the add the leader is killed (the
//!    cluster, down to two voters, has no quorum until it returns) and
//!    started again 1–2 s later; the add is then asked again until it
//!    succeeds.
//!
//! Every write and fire checker judges the round as usual. What the
//! cluster must do besides, whose failure is the fault's misbehaviour
//! (reported by `membership_restored`): within [`RESTORED_WITHIN`] the
//! add succeeds and every node of the round is a voter again, as the
//! leader's membership says.

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

/// Removes a follower, adds it back (killing the leader during the add,
/// with even odds) and judges whether the membership was restored.
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
    if rng.gen_bool(0.5) {
        // The add, with the leader killed while it runs.
        let first = tokio::spawn(add(leader));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
        runtime.kill(leader).await?;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..2_000))).await;
        runtime.start(leader).await?;
        let first = first.await.map_err(anyhow::Error::from)?;
        steps.push(format!(
            "leader {leader} killed during the add ({}), restarted",
            match &first {
                Ok(()) => "it succeeded".to_string(),
                Err(e) => format!("it failed: {}", e.code()),
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

/// The members as `node` sees them (their ids and peer addresses).
async fn members(clients: &Clients, node: NodeId) -> anyhow::Result<Vec<pb::NodeStatus>> {
    let mut call = request(pb::ClusterStatusRequest::default());
    call.set_timeout(CALL_TIMEOUT);
    Ok(clients.cluster(node).status(call).await?.into_inner().nodes)
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

/// Whether every node of `ids` is a voter in the membership the leader
/// holds, within [`RESTORED_WITHIN`]; otherwise what it holds.
async fn voters_restored(clients: &Clients, ids: &[NodeId]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RESTORED_WITHIN;
    let mut seen = String::from("no leader answered");
    while tokio::time::Instant::now() < deadline {
        if let Some(leader) = clients.leader().await {
            if let Ok(members) = members(clients, leader).await {
                let voters: Vec<NodeId> = members.iter().filter(|n| n.voter).map(|n| n.id).collect();
                if ids.iter().all(|id| voters.contains(id)) {
                    return Ok(());
                }
                seen = format!("leader {leader} holds voters {voters:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "not every node is a voter again {} s after the add: {seen}",
        RESTORED_WITHIN.as_secs()
    ))
}
