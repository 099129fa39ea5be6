//! A follower that returns from a pause or a restart does not unseat the
//! healthy leader (`kairos::raft::pre_vote`): its election timer is overdue
//! when it wakes, but it asks the other voters first, they refuse while
//! they hear from the leader, and it follows the leader again in the same
//! term. Plain openraft raises the term first and the leader steps down
//! (the deliberately broken build `--unsafe-chaos-break no-pre-vote` does
//! exactly that, and fails this test).

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use kairos::proto as pb;
use kairos_testkit::{create, TestCluster};

const READY: Duration = Duration::from_secs(60);

/// Longer than the leader lease plus the longest election timeout of the
/// default timing (500 + 500 ms): the paused node's timer is overdue when
/// it continues. This is the fault's length, not a wait for anything.
const PAUSE: Duration = Duration::from_millis(1_500);

/// After a node is back and follows, how long the leader is watched: as
/// long again as a returning node waits at most before it stands.
const WATCH: Duration = Duration::from_millis(1_000);

/// Node `id`'s own view: its role, term and applied index.
async fn own_status(cluster: &TestCluster, id: u64) -> Option<pb::NodeStatus> {
    let mut client = cluster.cluster_client(id).await;
    let reply = client
        .status(pb::ClusterStatusRequest {
            local_only: true,
            with_digest: false,
        })
        .await
        .ok()?;
    reply.into_inner().nodes.into_iter().next()
}

/// Waits until `follower` answers as a follower of `term` and has applied
/// at least `index`.
async fn wait_following(cluster: &TestCluster, follower: u64, term: u64, index: u64) {
    let deadline = Instant::now() + READY;
    loop {
        let status = own_status(cluster, follower).await;
        if let Some(s) = &status {
            assert!(
                s.term <= term,
                "node {follower} came back in term {} (the leader's is {term}): it raised the term",
                s.term
            );
            if s.role() == pb::NodeRole::Follower && s.term == term && s.applied_index >= index {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} does not follow in term {term} with index {index} applied: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `leader` still leads `term` in every running node's view,
/// for [`WATCH`].
async fn assert_leader_kept(cluster: &TestCluster, leader: u64, term: u64, after: &str) {
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        for id in cluster.running() {
            let status = cluster.status(id).await;
            assert_eq!(
                (status.leader_id, status.term),
                (leader, term),
                "after {after}: node {id} sees leader {} of term {} instead of leader {leader} of term {term}",
                status.leader_id,
                status.term
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_follower_does_not_unseat_the_leader() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let term = cluster.status(leader).await.term;
    let follower = cluster.running().into_iter().find(|&id| id != leader).unwrap();

    // Paused and continued three times over: a flapping follower.
    for flap in 1..=3 {
        let pid = Pid::from_raw(cluster.node(follower).pid().expect("running") as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        tokio::time::sleep(PAUSE).await;
        // Something committed while it was away, for it to catch up with.
        assert!(create(&cluster, leader, &format!("during-pause-{flap}")).await);
        let index = own_status(&cluster, leader).await.unwrap().applied_index;
        kill(pid, Signal::SIGCONT).unwrap();
        wait_following(&cluster, follower, term, index).await;
        assert_leader_kept(
            &cluster,
            leader,
            term,
            &format!("pause {flap} of node {follower}"),
        )
        .await;
    }

    // Killed and restarted: it starts with an overdue timer too.
    cluster.kill(follower);
    assert!(create(&cluster, leader, "during-restart").await);
    let index = own_status(&cluster, leader).await.unwrap().applied_index;
    cluster.spawn(follower);
    wait_following(&cluster, follower, term, index).await;
    assert_leader_kept(&cluster, leader, term, &format!("restart of node {follower}")).await;
}
