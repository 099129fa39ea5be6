//! The cluster version (`src/cluster_version.rs`, README "Upgrading"): it
//! rises to what every member advertises once all of them do, `kairos
//! cluster version` shows it, and a node too old for it refuses to run.
//!
//! Nodes of this build advertise a higher version when started with
//! `KAIROS_TEST_ADVERTISE_VERSION` (a `test-handlers` build only), which
//! stands in for a newer release. The upgrade from the previous release
//! itself is `tests/upgrade.sh`.

use std::time::{Duration, Instant};

use kairos::proto as pb;
use kairos_testkit::{create, kairos_bin, TestCluster};

const READY: Duration = Duration::from_secs(30);
/// The leader asks every 3 s; a few rounds at most.
const VERSION_MOVES: Duration = Duration::from_secs(30);

/// This build's major.minor.
fn own() -> String {
    let v = env!("CARGO_PKG_VERSION");
    v.rsplit_once('.').unwrap().0.to_string()
}

async fn version(cluster: &TestCluster, id: u64) -> pb::ClusterVersion {
    cluster
        .cluster_client(id)
        .await
        .version(pb::ClusterVersionRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until node `id` reports cluster version `expected`; returns its answer.
async fn wait_version(cluster: &TestCluster, id: u64, expected: &str) -> pb::ClusterVersion {
    cluster.wait_cluster_version(id, expected, VERSION_MOVES).await
}

fn member_versions(answer: &pb::ClusterVersion) -> Vec<(u64, String)> {
    answer.members.iter().map(|m| (m.id, m.version.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_version_rises_with_every_member_and_a_too_old_node_refuses_to_run() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    assert!(create(&cluster, 1, "before").await);

    // Every member runs this build: the recorded version (0.1 in a new
    // cluster) rises to it.
    let answer = wait_version(&cluster, 2, &own()).await;
    let members: Vec<(u64, String)> = (1..=3).map(|id| (id, own())).collect();
    assert_eq!(member_versions(&answer), members);
    let out = std::process::Command::new(kairos_bin())
        .env("KAIROS_TOKEN", cluster.token())
        .args(["--endpoints", &cluster.node(1).grpc, "cluster", "version"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("cluster version: {}", own())),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains(" voter ") && l.contains(&own()))
            .count(),
        3,
        "{stdout}"
    );
    assert_eq!(cluster.status(3).await.cluster_version, own());

    // A rolling "upgrade" to 0.99, one node at a time: the version stays
    // while any member runs the lower one, then rises.
    let newer = "0.99";
    cluster.set_env(&[("KAIROS_TEST_ADVERTISE_VERSION", newer)]);
    for id in [3, 2] {
        cluster.stop(id);
        cluster.spawn(id);
        cluster.wait_ready(READY).await;
    }
    let answer = version(&cluster, 3).await;
    assert_eq!(
        answer.cluster_version,
        own(),
        "node 1 still runs {}: {answer:?}",
        own()
    );
    let leader = cluster.wait_leader(READY).await;
    let advertised: Vec<(u64, String)> = member_versions(&version(&cluster, leader).await);
    assert_eq!(advertised, vec![(1, own()), (2, newer.into()), (3, newer.into())]);
    cluster.stop(1);
    cluster.spawn(1);
    cluster.wait_ready(READY).await;
    wait_version(&cluster, 1, newer).await;
    assert!(create(&cluster, 2, "after").await);

    // Node 3 back on the version of this build: too old for the cluster. It
    // stops, before applying the change or at start, naming both versions.
    cluster.stop(3);
    cluster.set_env(&[]);
    cluster.spawn(3);
    let deadline = Instant::now() + READY;
    let status = loop {
        if let Some(status) = cluster.node(3).exit_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "node 3 still runs: {}", cluster.log(3));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1), "{}", cluster.log(3));
    let refusal = format!(
        "error: this node runs Kairos {} but the cluster version is {newer}",
        own()
    );
    assert!(cluster.log(3).contains(&refusal), "{}", cluster.log(3));
    // Started again, it refuses again.
    cluster.kill(3);
    cluster.spawn(3);
    let deadline = Instant::now() + READY;
    while cluster.node(3).exit_status().is_none() {
        assert!(Instant::now() < deadline, "node 3 still runs: {}", cluster.log(3));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.log(3).matches(&refusal).count(), 2, "{}", cluster.log(3));
    // The other two go on.
    assert!(create(&cluster, 1, "still").await);
}
