//! The service record (`ServiceInfoService.DescribeService`, `kairos service
//! describe`) on a real three-node cluster: every node gives the same
//! cluster id, before and after a restart; the nodes with their roles and
//! addresses (a stopped one as unreachable); the built-in and the
//! registered job types with their schemas; the permissions and the
//! endpoints. Any valid credential may ask; none, or a wrong one, is
//! refused.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::service_info_service_client::ServiceInfoServiceClient;
use kairos::proto::worker_service_client::WorkerServiceClient;
use kairos_testkit::{Bearer, TestCluster, TEST_COOKIE};
use serde_json::Value;
use tonic::Code;

const READY: Duration = Duration::from_secs(30);

/// The payload schema the test's external type registers.
const SCHEMA: &str = r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer"}}}"#;

/// The service record as node `id` answers it to `bearer`.
async fn describe_as(
    cluster: &TestCluster,
    id: u64,
    bearer: Bearer,
) -> Result<pb::ServiceDescription, tonic::Status> {
    ServiceInfoServiceClient::new(cluster.channel_as(id, bearer))
        .describe_service(pb::DescribeServiceRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// The service record as node `id` answers it to root.
async fn describe(cluster: &TestCluster, id: u64) -> pb::ServiceDescription {
    describe_as(cluster, id, Bearer::new(cluster.token()))
        .await
        .unwrap_or_else(|s| panic!("DescribeService on node {id}: {s:?}"))
}

fn role(node: &pb::ServiceNode) -> pb::NodeRole {
    pb::NodeRole::try_from(node.role).expect("a known role")
}

/// The commit `git` says the tree is at, as build.rs names it ("unknown"
/// when git cannot say).
fn head_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_describes_the_same_cluster_and_what_it_offers() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    // An external worker registers a type with a payload schema through a follower.
    WorkerServiceClient::new(cluster.channel(follower))
        .register_worker(pb::RegisterWorkerRequest {
            worker_name: "billing".into(),
            job_types: vec![pb::JobTypeSpec {
                name: "billing.charge".into(),
                description: "charges a card".into(),
                payload_schema: SCHEMA.into(),
            }],
            capacity: 1,
        })
        .await
        .expect("register a worker");

    let on_follower = describe(&cluster, follower).await;
    assert_eq!(on_follower.answered_by, follower);
    assert_eq!(
        (
            on_follower.name.as_str(),
            on_follower.api_version.as_str(),
            on_follower.build_version.as_str()
        ),
        ("kairos", "v1", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(on_follower.build_commit, head_commit());
    assert_eq!(
        on_follower.format_version,
        u32::from(kairos::codec::FORMAT_VERSION)
    );

    // The cluster id: derived from the cookie, the same on every node.
    let cluster_id = on_follower.cluster_id.clone();
    let cookie = kairos::transport::ClusterSecret::new(TEST_COOKIE.into(), "test").unwrap();
    assert_eq!(cluster_id, kairos::api::service_info::derive_cluster_id(&cookie));
    for id in 1..=3 {
        assert_eq!(describe(&cluster, id).await.cluster_id, cluster_id, "node {id}");
    }

    // Three voters, exactly one leader (the one the cluster agreed on), each
    // with the addresses it listens on: the HTTP ones come from the other
    // nodes' own reports.
    let nodes = &on_follower.nodes;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let leaders: Vec<u64> = nodes
        .iter()
        .filter(|n| role(n) == pb::NodeRole::Leader)
        .map(|n| n.id)
        .collect();
    assert_eq!(leaders, [leader], "{nodes:?}");
    for node in nodes {
        let started = cluster.node(node.id);
        assert!(node.voter, "{node:?}");
        assert_eq!(node.grpc_addr, started.grpc, "{node:?}");
        assert_eq!(node.http_addr, started.http, "{node:?}");
        if node.id != leader {
            assert_eq!(role(node), pb::NodeRole::Follower, "{node:?}");
        }
    }

    // Job types: the built-in ones without a schema, the registered one
    // with its schema.
    let types = &on_follower.job_types;
    for builtin in ["exec", "http", "noop", "sleep"] {
        let found = types.iter().find(|t| t.name == builtin);
        assert!(
            found.is_some_and(|t| t.builtin && t.payload_schema.is_empty() && !t.description.is_empty()),
            "{builtin}: {types:?}"
        );
    }
    let charge = types
        .iter()
        .find(|t| t.name == "billing.charge")
        .unwrap_or_else(|| panic!("the registered type: {types:?}"));
    assert!(!charge.builtin);
    assert_eq!(charge.payload_schema, SCHEMA);
    assert_eq!(charge.description, "charges a card");

    // Permissions, features, endpoints.
    let permissions: BTreeSet<&str> = on_follower.permissions.iter().map(String::as_str).collect();
    for permission in ["event:publish", "job:write", "acl:admin", "worker:connect"] {
        assert!(permissions.contains(permission), "{permission}: {permissions:?}");
    }
    for feature in ["cron", "external-workers", "rbac", "audit-log"] {
        assert!(on_follower.features.iter().any(|f| f == feature), "{feature}");
    }
    let endpoint = |name: &str| on_follower.endpoints.iter().find(|e| e.name == name);
    let create = endpoint("kairos.v1.JobService/CreateJob").expect("CreateJob");
    assert_eq!(
        (create.protocol.as_str(), create.permission.as_str()),
        ("grpc", "job:write")
    );
    assert_eq!(
        endpoint("kairos.v1.ServiceInfoService/DescribeService").map(|e| e.permission.as_str()),
        Some("")
    );
    assert!(
        !on_follower
            .endpoints
            .iter()
            .any(|e| e.name.contains("RaftService")),
        "peer-only methods are not listed"
    );

    // `kairos service describe -o json`: the same record, in the protobuf JSON mapping.
    let out = cluster
        .cli()
        .args(["service", "describe", "-o", "json"])
        .output()
        .expect("run kairos");
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["clusterId"], cluster_id.as_str(), "{json}");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3), "{json}");
    let charge = json["jobTypes"]
        .as_array()
        .and_then(|types| types.iter().find(|t| t["name"] == "billing.charge"))
        .unwrap_or_else(|| panic!("billing.charge in {json}"));
    assert_eq!(charge["payloadSchema"], SCHEMA);
    // Without -o json: for people.
    let out = cluster
        .cli()
        .args(["service", "describe"])
        .output()
        .expect("run kairos");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("cluster id:") && l.ends_with(&cluster_id)),
        "{text}"
    );

    // A stopped member is shown unreachable, with the client address the
    // answering node knows and no HTTP address.
    cluster.stop(follower);
    let without = describe(&cluster, leader).await;
    let stopped = without
        .nodes
        .iter()
        .find(|n| n.id == follower)
        .expect("still a member");
    assert_eq!(role(stopped), pb::NodeRole::Unreachable, "{stopped:?}");
    assert_eq!(stopped.grpc_addr, cluster.node(follower).grpc);
    assert_eq!(stopped.http_addr, "");
    // Restarted, it gives the same cluster id.
    cluster.spawn(follower);
    cluster.wait_ready(READY).await;
    assert_eq!(describe(&cluster, follower).await.cluster_id, cluster_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_valid_credential_may_describe_the_service_and_no_other() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    // A token whose one role holds only event:publish: no read permission at all.
    cluster
        .acl(leader)
        .create_role(pb::CreateRoleRequest {
            role: Some(pb::Role {
                name: "publisher".into(),
                permissions: vec!["event:publish".into()],
                ..Default::default()
            }),
        })
        .await
        .expect("create a role");
    let publisher = cluster
        .acl(leader)
        .create_token(pb::CreateTokenRequest {
            name: "publisher-token".into(),
            roles: vec!["publisher".into()],
            ttl: None,
        })
        .await
        .expect("create a token")
        .into_inner()
        .secret;
    let record = describe_as(&cluster, follower, Bearer::new(&publisher))
        .await
        .expect("any valid credential may describe the service");
    assert_eq!(record.answered_by, follower);
    assert_eq!(record.nodes.len(), 3);

    for (what, bearer) in [
        ("no credential", Bearer::none()),
        ("a wrong secret", Bearer::new("0123456789abcdef0123456789abcdef")),
    ] {
        let refused = describe_as(&cluster, follower, bearer).await.expect_err(what);
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    // The CLI says so too, and fails.
    let out = std::process::Command::new(kairos_testkit::kairos_bin())
        .arg(format!("--endpoints={}", cluster.node(follower).grpc))
        .args(["service", "describe"])
        .env_remove("KAIROS_TOKEN")
        .env_remove("KAIROS_TOKEN_FILE")
        .output()
        .expect("run kairos");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("unauthenticated"), "{stderr}");
}
