//! A node whose `fdatasync` fails (EIO, as a failing or full disk reports
//! it) never goes on as if its data were safe: Raft stops on the storage
//! error, the process exits non-zero naming the reason, the other nodes keep
//! serving, and the node started again once the disk is healthy re-reads
//! its data and catches up. A node with nothing to write finds the failure
//! too (its idle disk is synced once a second).
//!
//! The fault is injected by the chaos suite's `LD_PRELOAD` library
//! (`tests/testkit/disk_faults.c`), built by the test kit with the system C compiler: its
//! `fdatasync` and `fsync` fail with EIO while the file named by
//! `KAIROS_TEST_FAIL_SYNC_IF` exists, and call the real ones otherwise.

use std::time::Duration;

use tokio::time::Instant;

use kairos::proto as pb;
use kairos_testkit::{build_disk_fault_library, create, TestCluster};

const READY: Duration = Duration::from_secs(60);

/// Creates `id` through `via`, retrying (bounded) while the cluster elects.
async fn create_eventually(cluster: &TestCluster, via: u64, id: &str) {
    let deadline = Instant::now() + READY;
    while !create(cluster, via, id).await {
        assert!(
            Instant::now() < deadline,
            "could not create {id} through node {via}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 3-node cluster whose node 3 runs with the disk-fault library: its
/// syncs fail with EIO once the returned trigger file exists.
async fn cluster_with_faulty_node_3(faults: &std::path::Path) -> (TestCluster, std::path::PathBuf) {
    let shim = build_disk_fault_library(faults)
        .unwrap_or_else(|e| panic!("this test needs the disk-fault library: {e}"));
    let trigger = faults.join("fail-now");
    let mut cluster = TestCluster::unstarted(3, &[]);
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.set_env(&[
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("KAIROS_TEST_FAIL_SYNC_IF", trigger.to_str().unwrap()),
    ]);
    cluster.spawn(3);
    cluster.set_env(&[]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    (cluster, trigger)
}

/// Waits (bounded) for node 3 to exit, and checks it failed and said why.
async fn node_3_stops_naming_the_storage_error(cluster: &TestCluster) {
    let deadline = Instant::now() + READY;
    let status = loop {
        if let Some(status) = cluster.node(3).exit_status() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 still runs after its fsync failed; its log:\n{}",
            cluster.log(3)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "node 3 must exit with an error, not {status}");
    let log = cluster.log(3);
    assert!(
        log.contains("stops on a storage error") && log.contains("Input/output error"),
        "node 3's log does not say why it stopped:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_fsync_fails_stops_and_catches_up_once_the_disk_is_healthy() {
    let faults = tempfile::tempdir().unwrap();
    let (mut cluster, trigger) = cluster_with_faulty_node_3(faults.path()).await;
    create_eventually(&cluster, 1, "before-fault").await;

    // Node 3's disk starts failing its syncs; the next append it receives
    // (a create) meets the failure, if its idle sync has not met it first.
    std::fs::write(&trigger, b"").unwrap();
    create_eventually(&cluster, 1, "during-fault-1").await;
    node_3_stops_naming_the_storage_error(&cluster).await;
    cluster.kill(3); // reaps the exited process; it is no longer running

    // The other two go on serving.
    create_eventually(&cluster, 1, "during-fault-2").await;
    create_eventually(&cluster, 2, "during-fault-3").await;

    // The disk is healthy again: node 3 restarts on its data and catches up.
    std::fs::remove_file(&trigger).unwrap();
    cluster.spawn(3);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let expected = cluster.list_ids(leader, pb::ReadConsistency::Linearizable).await;
    let deadline = Instant::now() + READY;
    loop {
        let on_node_3 = cluster.list_ids(3, pb::ReadConsistency::Stale).await;
        if on_node_3 == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up: it holds {on_node_3:?}, the leader {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in [
        "before-fault",
        "during-fault-1",
        "during-fault-2",
        "during-fault-3",
    ] {
        assert!(expected.contains(id), "{id} is missing: {expected:?}");
    }
}

/// With nothing to write, the node still finds its failing disk: the log's
/// sync thread syncs an idle disk (sled's own flusher only logs its fsync
/// failures), and the node stops.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_node_whose_fsync_fails_stops_too() {
    let faults = tempfile::tempdir().unwrap();
    let (mut cluster, trigger) = cluster_with_faulty_node_3(faults.path()).await;
    create_eventually(&cluster, 1, "before-fault").await;

    // No write follows: no job fires and no client writes.
    std::fs::write(&trigger, b"").unwrap();
    node_3_stops_naming_the_storage_error(&cluster).await;
    cluster.kill(3);
    std::fs::remove_file(&trigger).unwrap();
    cluster.spawn(3);
    cluster.wait_ready(READY).await;
    let on_node_3 = cluster.list_ids(3, pb::ReadConsistency::Linearizable).await;
    assert!(on_node_3.contains("before-fault"), "{on_node_3:?}");
}
