//! Operating a cluster: growing and shrinking it with the CLI, restarting a
//! node without `--initial-cluster`, and `kairos cron next` (`kairos dev` is
//! in `dev.rs`).

use std::process::Command;
use std::time::Duration;

use kairos::proto as pb;
use kairos_testkit::{create, http_get, kairos_bin, TestCluster};

const READY: Duration = Duration::from_secs(30);

/// `kairos --endpoints <endpoints> <args>` with the cluster's root token.
fn cli(cluster: &TestCluster, endpoints: &str, args: &[&str]) -> std::process::Output {
    Command::new(kairos_bin())
        .env("KAIROS_TOKEN", cluster.token())
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .unwrap()
}

/// The voters of `status`, once checked against its voter sets: a change
/// that returned has left one set (no joint configuration) of exactly them.
fn voters(status: &pb::ClusterStatus) -> Vec<u64> {
    let voters: Vec<u64> = status.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
    let sets: Vec<&Vec<u64>> = status.voter_sets.iter().map(|set| &set.ids).collect();
    assert_eq!(sets, vec![&voters], "one voter set, the voters: {status:?}");
    voters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_catches_up_then_votes_and_remove_node_shrinks() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    for i in 0..20 {
        assert!(create(&cluster, 1 + i % 3, &format!("pre-{i}")).await);
    }

    // A node started without --initial-cluster waits to be added: no leader, not ready.
    let new = cluster.spawn_new_node();
    let (code, body) = loop {
        if let Ok(reply) = http_get(&cluster.node(new).http, "/readyz").await {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 503, "{body}");

    let endpoints = cluster.node(1).grpc.clone();
    let added = cli(
        &cluster,
        &endpoints,
        &[
            "cluster",
            "add-node",
            "--node-id",
            &new.to_string(),
            "--addr",
            &cluster.node(new).peer,
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // The leader's view: it committed the change before the CLI returned. A
    // follower shows the change once the leader's next append reaches it.
    let leader = cluster.wait_leader(READY).await;
    assert_eq!(voters(&cluster.status(leader).await), vec![1, 2, 3, new]);
    cluster.wait_ready(READY).await;
    let ids = cluster.list_ids(new, pb::ReadConsistency::Linearizable).await;
    assert_eq!(ids.len(), 20, "the new node serves every job");

    // Removing an unknown node fails with one line; removing the new one shrinks the cluster.
    let unknown = cli(
        &cluster,
        &endpoints,
        &["cluster", "remove-node", "--node-id", "42"],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).starts_with("error: NotFound: node 42 is not a member"));
    let removed = cli(
        &cluster,
        &endpoints,
        &["cluster", "remove-node", "--node-id", &new.to_string()],
    );
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    cluster.stop(new);
    let leader = cluster.wait_leader(READY).await;
    assert_eq!(voters(&cluster.status(leader).await), vec![1, 2, 3]);

    // A member restarted on its data dir without --initial-cluster rejoins.
    cluster.stop(2);
    cluster.spawn_with(2, false);
    cluster.wait_ready(READY).await;
    assert!(create(&cluster, 2, "after-restart").await);
    assert_eq!(
        cluster.list_ids(2, pb::ReadConsistency::Linearizable).await.len(),
        21
    );
}

#[test]
fn cron_next_prints_the_server_fire_times_across_a_dst_gap() {
    let out = Command::new(kairos_bin())
        .args([
            "cron",
            "next",
            "30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--after",
            "2026-03-28T00:00:00Z",
            "--count",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // 02:30 does not exist on 2026-03-29: the fire moves to the first instant after the gap.
    assert_eq!(
        lines,
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ]
    );

    let bad = Command::new(kairos_bin())
        .args(["cron", "next", "* * *"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: schedule.cron: expected 5 fields"));
}

#[test]
fn agent_settings_come_from_kairos_environment_variables() {
    let run = |vars: &[(&str, &str)]| {
        let mut command = Command::new(kairos_bin());
        command.arg("agent").env_remove("KAIROS_CONFIG");
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let out = run(&[("KAIROS_NODE_ID", "0")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: --node-id: must be a positive integer"
    );
    let out = run(&[("KAIROS_NODE_ID", "1"), ("KAIROS_GRPC_ADDR", "nope")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grpc-addr: \"nope\" is not an ip:port"));
}
