//! A three-node cluster of real processes survives a leader crash, catches a
//! restarted node up by snapshot, and keeps every acknowledged job across a
//! full-cluster restart.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos::proto as pb;
use kairos_testkit::{create, job, TestCluster};

const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_snapshot_catch_up_and_full_restart_lose_no_acknowledged_job() {
    // Snapshot every 50 entries and keep only 5 behind it, so the log is purged
    // past a dead node's position while it is down.
    let mut cluster = TestCluster::start(3, &["--snapshot-logs=50", "--snapshot-keep-logs=5"]);
    cluster.wait_ready(READY).await;

    // 200 creates through the nodes in turn (a follower forwards to the leader).
    let mut acked = BTreeSet::new();
    for i in 0..200u64 {
        let id = format!("job-{i:03}");
        if create(&cluster, 1 + i % 3, &id).await {
            acked.insert(id);
        }
    }
    assert_eq!(acked.len(), 200, "a healthy cluster acknowledges every create");

    // kill -9 the leader.
    let old_leader = cluster.wait_leader(READY).await;
    let killed_at = cluster
        .status(old_leader)
        .await
        .nodes
        .iter()
        .find(|n| n.id == old_leader)
        .unwrap()
        .last_log_index;
    let killed = std::time::Instant::now();
    cluster.kill(old_leader);
    let leader = cluster.wait_leader(READY).await;
    eprintln!(
        "new leader {leader} agreed {:?} after kill -9 of {old_leader}",
        killed.elapsed()
    );
    assert_ne!(leader, old_leader);

    // Writes continue through the survivors.
    let survivors = cluster.running();
    for i in 200..320u64 {
        let id = format!("job-{i:03}");
        if create(&cluster, survivors[(i % 2) as usize], &id).await {
            acked.insert(id);
        }
    }
    assert_eq!(
        acked.len(),
        320,
        "two of three nodes are a majority: writes go on"
    );

    // Every acknowledged job is readable from every survivor, linearizably.
    for &id in &survivors {
        let ids = cluster.list_ids(id, pb::ReadConsistency::Linearizable).await;
        assert!(
            acked.is_subset(&ids),
            "node {id} misses {:?}",
            acked.difference(&ids).collect::<Vec<_>>()
        );
    }

    // The leader purges its log past the dead node's last entry (after its
    // next snapshot, asked for within a second of the requests that make it
    // due), so the restarted node can only catch up by installing one.
    wait_own_status(&cluster, leader, |node| {
        (node.purged_index > killed_at).then_some(()).ok_or_else(|| {
            format!(
                "leader purged up to {} but the dead node had {killed_at}",
                node.purged_index
            )
        })
    })
    .await;
    let status = cluster.status(leader).await;
    let leader_view = status.nodes.iter().find(|n| n.id == leader).unwrap();
    cluster.spawn(old_leader);
    cluster.wait_ready(READY).await;
    wait_applied(&cluster, old_leader, leader_view.commit_index).await;
    let ids = cluster.list_ids(old_leader, pb::ReadConsistency::Stale).await;
    assert!(
        acked.is_subset(&ids),
        "restarted node misses {:?}",
        acked.difference(&ids).collect::<Vec<_>>()
    );
    assert!(
        cluster.log(old_leader).contains("installing snapshot"),
        "the restarted node installed a snapshot"
    );

    // Stop all three cleanly, start them again on their data: nothing is lost.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_ready(READY).await;
    for id in 1..=3 {
        let ids = cluster.list_ids(id, pb::ReadConsistency::Linearizable).await;
        assert_eq!(ids, acked, "node {id} after a full restart");
    }
}

/// Waits until node `id` reports an applied index of at least `index`.
async fn wait_applied(cluster: &TestCluster, id: u64, index: u64) {
    wait_own_status(cluster, id, |me| {
        (me.applied_index >= index)
            .then_some(())
            .ok_or_else(|| format!("applied {} < {index}", me.applied_index))
    })
    .await
}

/// Polls node `id`'s report of itself until `done` accepts it; fails with
/// the last reason `done` gave once [`READY`] has passed.
async fn wait_own_status(
    cluster: &TestCluster,
    id: u64,
    done: impl Fn(&pb::NodeStatus) -> Result<(), String>,
) {
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        let status = cluster.status(id).await;
        let me = status.nodes.iter().find(|n| n.id == id).unwrap();
        match done(me) {
            Ok(()) => return,
            Err(why) => assert!(tokio::time::Instant::now() < deadline, "node {id}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The write batcher packs concurrent creates into few log entries; the
/// snapshot bound (`--snapshot-logs`) must still count the requests, or the
/// log would grow up to a thousand times further between snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_follow_the_number_of_requests_not_of_batch_entries() {
    const SNAPSHOT_EVERY: u64 = 1_000;
    let snapshot_flag = format!("--snapshot-logs={SNAPSHOT_EVERY}");
    let cluster = TestCluster::start(3, &[&snapshot_flag]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;

    // 64 clients × 30 creates at once, all through the leader: more than
    // the largest node's bound (node 2 waits 40 % longer than the flag).
    const PER_CLIENT: u64 = 30;
    let mut clients = Vec::new();
    for c in 0..64 {
        let mut jobs = cluster.jobs(leader).await;
        clients.push(tokio::spawn(async move {
            for i in 0..PER_CLIENT {
                let id = format!("job-{c}-{i}");
                let request = pb::CreateJobRequest {
                    job: Some(job(&id)),
                    request_id: format!("req-{id}"),
                };
                jobs.create_job(request).await.expect("create");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    const _: () = assert!(
        64 * PER_CLIENT > SNAPSHOT_EVERY * 7 / 5,
        "every node's bound is reached"
    );
    let requests = 64 * PER_CLIENT;
    let before = cluster.status(leader).await;
    let me = before.nodes.iter().find(|n| n.id == leader).unwrap();
    assert!(
        me.last_log_index < SNAPSHOT_EVERY,
        "{requests} creates took {} entries: not batched, so the entry count alone would trigger the snapshot",
        me.last_log_index
    );

    // Every node snapshots on its own, within a few checks of the count.
    for id in cluster.running() {
        wait_own_status(&cluster, id, |node| {
            (node.snapshot_index > 0).then_some(()).ok_or_else(|| {
                format!(
                    "no snapshot after {requests} requests in {} entries",
                    node.last_log_index
                )
            })
        })
        .await;
    }
}

/// A follower's stored snapshot damaged while it is down (one byte changed,
/// as a rotting sector would): on restart it detects it by checksum, sets
/// the file aside, drops the log built on it and takes the state back from
/// its leader, then serves every acknowledged job, with clients reading
/// through it all along. The leader keeps its log (`--snapshot-keep-logs`),
/// so it finds the follower's log shorter than it last saw it and must
/// start replicating to it afresh (openraft's `loosen-follower-log-revert`;
/// without it a debug build's leader panics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_snapshot_was_damaged_takes_the_state_back_from_its_leader() {
    let mut cluster = TestCluster::start(3, &["--snapshot-logs=50", "--snapshot-keep-logs=10000"]);
    cluster.wait_ready(READY).await;
    let mut acked = BTreeSet::new();
    for i in 0..150u64 {
        let id = format!("job-{i:03}");
        if create(&cluster, 1 + i % 3, &id).await {
            acked.insert(id);
        }
    }
    assert_eq!(acked.len(), 150, "a healthy cluster acknowledges every create");
    let leader = cluster.wait_leader(READY).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    wait_own_status(&cluster, follower, |node| {
        (node.snapshot_index > 0)
            .then_some(())
            .ok_or_else(|| "no snapshot yet".to_string())
    })
    .await;

    cluster.kill(follower);
    let snapshot = cluster
        .node(follower)
        .data_dir
        .join("sled")
        .join("kairos-snapshot");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&snapshot, bytes).unwrap();

    for i in 150..200u64 {
        let id = format!("job-{i:03}");
        if create(&cluster, leader, &id).await {
            acked.insert(id);
        }
    }
    assert_eq!(
        acked.len(),
        200,
        "two of three nodes are a majority: writes go on"
    );
    let status = cluster.status(leader).await;
    let committed = status.nodes.iter().find(|n| n.id == leader).unwrap().commit_index;

    cluster.spawn(follower);
    // Clients keep reading through it while it recovers: 4 readers, each
    // until the node is ready or 30 s have passed.
    let recovered = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (mut jobs, recovered) = (cluster.jobs(follower).await, recovered.clone());
        readers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + READY;
            while !recovered.is_cancelled() && tokio::time::Instant::now() < deadline {
                let mut request = tonic::Request::new(pb::ListJobsRequest {
                    page_size: 10,
                    consistency: pb::ReadConsistency::Linearizable as i32,
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(2));
                if jobs.list_jobs(request).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    // Ready (200 on /readyz) only once its log is past what it acknowledged.
    cluster.wait_ready(READY).await;
    recovered.cancel();
    for reader in readers {
        reader.await.unwrap();
    }
    wait_applied(&cluster, follower, committed).await;
    let ids = cluster
        .list_ids(follower, pb::ReadConsistency::Linearizable)
        .await;
    assert!(
        acked.is_subset(&ids),
        "the recovered node misses {:?}",
        acked.difference(&ids).collect::<Vec<_>>()
    );
    let leader_log = cluster.log(leader);
    assert!(
        !leader_log.contains("panicked"),
        "the leader met the follower's shorter log and went on: {}",
        leader_log
            .lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = cluster.log(follower);
    assert!(
        log.contains("the stored snapshot is damaged"),
        "the node says why it dropped its state"
    );
    assert!(
        snapshot.with_file_name("kairos-snapshot.damaged").exists(),
        "the damaged file is kept aside"
    );
}

/// A member of a new cluster that starts after the others elected their
/// leader joins without an election. Initializing would make it stand in
/// the first term with the highest id, which outranks the leader of that
/// term, and the leader would step down for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_starts_after_the_new_cluster_elected_joins_without_an_election() {
    let mut cluster = TestCluster::unstarted(3, &[]);
    cluster.spawn(1);
    cluster.spawn(2);
    let leader = cluster.wait_leader(READY).await;
    let term_of =
        |status: &pb::ClusterStatus, id: u64| status.nodes.iter().find(|n| n.id == id).unwrap().term;
    let term = term_of(&cluster.status(leader).await, leader);
    assert!(create(&cluster, leader, "before-3").await);

    cluster.spawn(3);
    cluster.wait_ready(READY).await;
    let status = cluster.status(leader).await;
    wait_applied(
        &cluster,
        3,
        status.nodes.iter().find(|n| n.id == leader).unwrap().commit_index,
    )
    .await;
    let status = cluster.status(leader).await;
    assert_eq!(status.leader_id, leader, "the leader kept its place");
    assert_eq!(term_of(&status, leader), term, "no election when node 3 joined");
    assert!(
        cluster.log(3).contains("already has a leader"),
        "node 3 says why it did not initialize"
    );
}
