//! Transport security on real `kairos agent` processes: the peer listener
//! answers authenticated peers only (a forged Raft message changes nothing,
//! and the client listener has no Raft service at all), a node with another
//! cookie or a certificate from another CA cannot join, a cluster with peer
//! mutual TLS forms and runs a job, and the CLI reaches a node serving its
//! API over TLS only when it is given the CA.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use kairos::dial::DialMap;
use kairos::proto as pb;
use kairos::proto::raft_service_client::RaftServiceClient;
use kairos::raft::TypeConfig;
use kairos::transport::{ClusterSecret, PeerConnector, PeerSecurity};
use kairos_testkit::{create, kairos_bin, IssuedCert, TestCluster, TestPki, TEST_COOKIE};
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use tonic::transport::Endpoint;

const READY: Duration = Duration::from_secs(30);
/// How long a refused call may take to fail (the handshake's own bound is 5 s).
const REFUSAL: Duration = Duration::from_secs(15);

fn cli(args: &[&str]) -> Output {
    Command::new(kairos_bin()).args(args).output().unwrap()
}

/// `kairos cluster add-node` of node `id` at its peer address, through
/// node 1, as root.
fn add_node_through_cli(cluster: &TestCluster, id: u64) -> Output {
    cli(&[
        "--token",
        cluster.token(),
        "--endpoints",
        &cluster.node(1).grpc,
        "cluster",
        "add-node",
        "--node-id",
        &id.to_string(),
        "--addr",
        &cluster.node(id).peer,
    ])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every node's (term, leader, last log index) as that node reports itself.
async fn raft_views(cluster: &TestCluster) -> BTreeMap<u64, (u64, u64, u64)> {
    let mut views = BTreeMap::new();
    for id in cluster.running() {
        let mut client = cluster.cluster_client(id).await;
        let status = client
            .status(pb::ClusterStatusRequest {
                local_only: true,
                with_digest: false,
            })
            .await
            .unwrap()
            .into_inner();
        let own = status.nodes.iter().find(|n| n.id == id).expect("its own row");
        views.insert(id, (status.term, status.leader_id, own.last_log_index));
    }
    views
}

/// Awaits a line in node `id`'s log that `says` (a node logs a refused
/// connection as it closes it, so just after the other side saw it fail).
async fn wait_for_log(cluster: &TestCluster, id: u64, what: &str, says: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        let log = cluster.log(id);
        if says(&log) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits node `id`'s HTTP endpoint answering at all (a node waiting to be
/// added answers 503): its listeners are bound.
async fn wait_listening(cluster: &TestCluster, id: u64) {
    let deadline = tokio::time::Instant::now() + READY;
    while kairos_testkit::http_get(&cluster.node(id).http, "/readyz")
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} does not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The members as the leader sees them (asked through node 1, which
/// knows the leader; the outsider of a test knows none).
async fn members_by_leader(cluster: &TestCluster) -> Vec<u64> {
    let leader = cluster.status(1).await.leader_id;
    assert_ne!(leader, 0, "node 1 knows no leader");
    cluster.status(leader).await.nodes.iter().map(|n| n.id).collect()
}

/// An AppendEntries from a made-up leader of term 50, with one entry after
/// the follower's log.
fn forged_append_entries(after_index: u64) -> pb::RaftPayload {
    let forged_leader = CommittedLeaderId::new(50, 1);
    let request: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(50, 1),
        prev_log_id: None,
        entries: vec![Entry {
            log_id: LogId::new(forged_leader, after_index + 1),
            payload: EntryPayload::Blank,
        }],
        leader_commit: Some(LogId::new(forged_leader, after_index + 1)),
    };
    pb::RaftPayload {
        data: kairos::codec::encode(&request).unwrap(),
    }
}

/// Sends `payload` as AppendEntries over plain, unauthenticated gRPC to `addr`.
async fn send_unauthenticated(
    addr: &str,
    payload: pb::RaftPayload,
) -> Result<pb::RaftPayload, tonic::Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(REFUSAL)
        .connect_lazy();
    let mut client = RaftServiceClient::new(channel);
    let call = client.append_entries(payload);
    match tokio::time::timeout(REFUSAL, call).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => panic!("the call to {addr} neither failed nor answered within {REFUSAL:?}"),
    }
}

/// The cluster secret `value` (a test cookie).
fn secret(value: &str) -> ClusterSecret {
    ClusterSecret::new(value.into(), "test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_append_entries_changes_no_term_leader_or_log() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // Clients are told client addresses; the membership holds peer addresses.
    for row in cluster.status(follower).await.nodes {
        let node = cluster.node(row.id);
        assert_eq!(
            (&row.grpc_addr, &row.peer_addr),
            (&node.grpc, &node.peer),
            "node {}",
            row.id
        );
    }
    let before = raft_views(&cluster).await;
    let follower_last = before[&follower].2;

    // To the follower's peer port, without the handshake: refused before any RPC.
    let peer = &cluster.node(follower).peer;
    let refused = send_unauthenticated(peer, forged_append_entries(follower_last)).await;
    assert!(
        refused.is_err(),
        "the peer port answered an unauthenticated call: {refused:?}"
    );

    // To the peer port with a wrong cookie: the handshake itself is refused.
    let impostor = PeerConnector::new(
        peer,
        Arc::new(DialMap::default()),
        Arc::new(PeerSecurity::ClusterSecret(secret("not-this-clusters-cookie"))),
    );
    let Err(err) = impostor.connect().await else {
        panic!("a wrong cookie is refused")
    };
    assert!(err.to_string().contains("refused"), "{err}");

    // To the follower's client port: there is no Raft service there.
    let status = send_unauthenticated(&cluster.node(follower).grpc, forged_append_entries(follower_last))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    let after = raft_views(&cluster).await;
    assert_eq!(
        before, after,
        "term, leader or log changed (id → (term, leader, last log index))"
    );
    assert!(after.values().all(|(term, _, _)| *term < 50));
    wait_for_log(&cluster, follower, "the follower to log the refusal", |log| {
        log.contains("connection refused: wrong cluster secret")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cookie_cannot_join() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let outsider = cluster.spawn_new_node_with(&[], Some("another-clusters-cookie-0123456789"));
    wait_listening(&cluster, outsider).await;
    let added = add_node_through_cli(&cluster, outsider);
    assert_eq!(added.status.code(), Some(1), "add-node succeeded: {added:?}");
    let said = stderr(&added);
    assert!(
        said.starts_with("error: FailedPrecondition: node 4 at ")
            && said.contains("does not answer on the peer network"),
        "{said}"
    );
    let members = members_by_leader(&cluster).await;
    assert_eq!(
        members,
        vec![1, 2, 3],
        "the outsider is no member, not even a learner"
    );
    wait_for_log(&cluster, outsider, "the outsider to say why", |log| {
        log.contains("connection refused: wrong cluster secret")
    })
    .await;
    // The cluster's cookie still works.
    let member = PeerConnector::new(
        &cluster.node(1).peer,
        Arc::new(DialMap::default()),
        Arc::new(PeerSecurity::ClusterSecret(secret(TEST_COOKIE))),
    );
    member.connect().await.unwrap();
}

/// Flags giving node `cert` and trusting `pki`'s CA, for peer TLS.
fn peer_tls_args(cert: &IssuedCert, pki: &TestPki) -> Vec<String> {
    vec![
        format!("--peer-tls-cert={}", cert.cert.display()),
        format!("--peer-tls-key={}", cert.key.display()),
        format!("--peer-tls-ca={}", pki.ca_cert.display()),
    ]
}

async fn wait_for_run(cluster: &TestCluster, via: u64, run_id: u64) -> pb::Run {
    let mut runs = cluster.runs(via).await;
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        let run = runs
            .get_run(pb::GetRunRequest {
                id: run_id,
                consistency: pb::ReadConsistency::Linearizable as i32,
            })
            .await
            .unwrap()
            .into_inner();
        let done =
            run.status == pb::RunStatus::Succeeded as i32 || run.status == pb::RunStatus::Failed as i32;
        if done || tokio::time::Instant::now() >= deadline {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_peer_mtls_runs_a_job_and_refuses_a_node_of_another_ca() {
    let certs = tempfile::tempdir().unwrap();
    let cluster_ca = TestPki::new(certs.path(), "cluster");
    let node_args: Vec<(u64, String)> = (1..=3)
        .flat_map(|id| {
            let cert = cluster_ca.issue(&format!("node-{id}"), None);
            peer_tls_args(&cert, &cluster_ca)
                .into_iter()
                .map(move |a| (id, a))
        })
        .collect();
    let node_args: Vec<(u64, &str)> = node_args.iter().map(|(id, a)| (*id, a.as_str())).collect();
    let mut cluster = TestCluster::start_with_node_args(3, &[], &node_args);
    cluster.wait_ready(READY).await;
    assert!(
        cluster.log(1).contains("peer_auth=\"mutual TLS\"")
            || cluster.log(1).contains("peer_auth=mutual TLS")
    );

    // Writes are forwarded and runs dispatched over the TLS links.
    let follower = (1..=3).find(|id| *id != 1).unwrap();
    assert!(create(&cluster, follower, "tls-job").await);
    let mut runs = cluster.runs(follower).await;
    let run = runs
        .trigger_job(pb::TriggerJobRequest { id: "tls-job".into() })
        .await
        .unwrap()
        .into_inner();
    let run = wait_for_run(&cluster, follower, run.id).await;
    assert_eq!(run.status, pb::RunStatus::Succeeded as i32, "{run:?}");
    // Node 1 dials nodes 2 and 3 on the worker network: TLS, then the cookie.
    wait_for_log(&cluster, 1, "node 1's worker-network sessions", |log| {
        log.contains("worker network: dialed peer") && log.matches("is authenticated").count() >= 2
    })
    .await;

    // A node whose certificate (and CA) are another cluster's cannot join.
    let other_ca = TestPki::new(certs.path(), "other");
    let outsider_cert = other_ca.issue("node-4", None);
    let outsider_args = peer_tls_args(&outsider_cert, &other_ca);
    let outsider_args: Vec<&str> = outsider_args.iter().map(String::as_str).collect();
    let outsider = cluster.spawn_new_node_with(&outsider_args, None);
    wait_listening(&cluster, outsider).await;
    let added = add_node_through_cli(&cluster, outsider);
    assert_eq!(added.status.code(), Some(1), "add-node succeeded: {added:?}");
    assert!(
        stderr(&added).contains("does not answer on the peer network"),
        "{}",
        stderr(&added)
    );
    let members = members_by_leader(&cluster).await;
    assert_eq!(
        members,
        vec![1, 2, 3],
        "the outsider is no member, not even a learner"
    );
    wait_for_log(&cluster, outsider, "the outsider to say why", |log| {
        log.contains("connection refused: TLS handshake failed")
            && (log.contains("UnknownCA") || log.contains("certificate"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_tls_api_with_the_ca_and_a_client_certificate_and_fails_clearly_without() {
    let certs = tempfile::tempdir().unwrap();
    let api_ca = TestPki::new(certs.path(), "api");
    let server = api_ca.issue("node-1", None);
    let client = api_ca.issue("ci-bot", Some("spiffe://kairos/ci-bot"));
    let args = [
        format!("--tls-cert={}", server.cert.display()),
        format!("--tls-key={}", server.key.display()),
        format!("--tls-client-ca={}", api_ca.ca_cert.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = TestCluster::start(1, &args);
    cluster.wait_ready_only(READY).await;
    let endpoint = cluster.node(1).grpc.clone();
    let ca = api_ca.ca_cert.display().to_string();
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );

    // Bootstrap over TLS (no credential needed), then give the client
    // certificate's subject (its URI SAN) a role.
    let bootstrap = cli(&["--endpoints", &endpoint, "--tls-ca", &ca, "acl", "bootstrap"]);
    assert!(bootstrap.status.success(), "{}", stderr(&bootstrap));
    let root = String::from_utf8_lossy(&bootstrap.stdout).trim().to_string();
    let as_root = |args: &[&str]| {
        let mut all = vec!["--endpoints", &endpoint, "--tls-ca", &ca, "--token", &root];
        all.extend_from_slice(args);
        cli(&all)
    };
    let role = as_root(&[
        "acl",
        "role",
        "create",
        "status-reader",
        "--allow",
        "cluster:read",
    ]);
    assert!(role.status.success(), "{}", stderr(&role));
    let bound = as_root(&[
        "acl",
        "binding",
        "create",
        "--subject",
        "spiffe://kairos/ci-bot",
        "--role",
        "status-reader",
    ]);
    assert!(bound.status.success(), "{}", stderr(&bound));

    // The certificate alone is the credential: its principal holds the role.
    let with_cert = cli(&[
        "--endpoints",
        &endpoint,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "cluster",
        "status",
    ]);
    assert!(with_cert.status.success(), "{}", stderr(&with_cert));
    assert!(String::from_utf8_lossy(&with_cert.stdout).contains(&endpoint));
    let whoami = cli(&[
        "--endpoints",
        &endpoint,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "acl",
        "whoami",
    ]);
    let said = String::from_utf8_lossy(&whoami.stdout).into_owned();
    assert!(
        said.contains("spiffe://kairos/ci-bot")
            && said.contains("certificate")
            && said.contains("status-reader"),
        "{said}{}",
        stderr(&whoami)
    );
    // ...and nothing more: a write needs a permission its role lacks.
    let write = cli(&[
        "--endpoints",
        &endpoint,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "job",
        "create",
        "x",
        "--type",
        "noop",
        "--schedule",
        "@hourly",
    ]);
    assert_eq!(write.status.code(), Some(1));
    assert!(stderr(&write).contains("PermissionDenied"), "{}", stderr(&write));

    // A client certificate is optional: a token over TLS works too, and
    // without either the call is refused.
    let with_token = as_root(&["cluster", "status"]);
    assert!(with_token.status.success(), "{}", stderr(&with_token));
    let anonymous = cli(&["--endpoints", &endpoint, "--tls-ca", &ca, "cluster", "status"]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        stderr(&anonymous).contains("Unauthenticated"),
        "{}",
        stderr(&anonymous)
    );

    // The same through the environment.
    let by_env = Command::new(kairos_bin())
        .args(["--endpoints", &endpoint, "cluster", "status"])
        .env("KAIROS_TLS_CA", &ca)
        .env("KAIROS_TLS_CERT", &cert)
        .env("KAIROS_TLS_KEY", &key)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{}", stderr(&by_env));

    // Plain text to a TLS listener fails, and says what to give.
    let plain = cli(&["--endpoints", &endpoint, "--timeout", "5s", "cluster", "status"]);
    assert_eq!(plain.status.code(), Some(1));
    assert!(stderr(&plain).contains("give --tls-ca"), "{}", stderr(&plain));

    // A client certificate of another CA is refused in the handshake.
    let other_ca = TestPki::new(certs.path(), "other");
    let stranger = other_ca.issue("stranger", None);
    let refused = cli(&[
        "--endpoints",
        &endpoint,
        "--timeout",
        "5s",
        "--tls-ca",
        &ca,
        "--tls-cert",
        &stranger.cert.display().to_string(),
        "--tls-key",
        &stranger.key.display().to_string(),
        "cluster",
        "status",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");

    // A client certificate without the CA is a usage mistake, said before any call.
    let no_ca = cli(&[
        "--endpoints",
        &endpoint,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "cluster",
        "status",
    ]);
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(
        stderr(&no_ca).contains("--tls-ca: required with --tls-cert"),
        "{}",
        stderr(&no_ca)
    );
}
