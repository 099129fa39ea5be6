//! Authentication, authorization and the audit log, on three real nodes.
//!
//! - Every RPC refuses a call with no credential, a wrong secret, an expired
//!   or a revoked token (`UNAUTHENTICATED`), and one whose role lacks the
//!   permission (`PERMISSION_DENIED`); each refusal leaves an audit entry.
//!   Server reflection (v1 and v1alpha) is in that matrix, as a read any
//!   valid credential may make. The deliberate exception is the standard
//!   health service (`grpc.health.v1.Health`), which answers every caller
//!   whatever credential it carries: probes cannot send one and it reveals
//!   what `/readyz` does.
//! - A role scoped to owners sees and changes only those jobs; `created_by`
//!   is the token's name and the create's audit entry names the token.
//! - A revoked token fails on every node.
//! - Secret payload values read as `<redacted>` without `job:secrets`.
//! - With `--audit-reads`, allowed reads are audited too; `audit export`
//!   resumes after the last line it printed.
//! - Tampering with a stopped node's stored audit entry is found by
//!   `kairos audit verify --data-dir`, naming the sequence number, and by
//!   the running cluster's `kairos audit verify`, naming the node.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::acl_service_client::AclServiceClient;
use kairos::proto::audit_service_client::AuditServiceClient;
use kairos::proto::cluster_service_client::ClusterServiceClient;
use kairos::proto::event_service_client::EventServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;
use kairos::proto::service_info_service_client::ServiceInfoServiceClient;
use kairos_testkit::{job, Authed, Bearer, TestCluster};
use tokio::time::Instant;
use tonic::{Code, Status};

const READY: Duration = Duration::from_secs(60);
/// How long a change may take to show on every node.
const SETTLE: Duration = Duration::from_secs(20);

type Call = Box<dyn Fn(Authed) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>>;

macro_rules! rpc {
    ($client:ident, $method:ident, $req:expr) => {
        Box::new(move |ch: Authed| {
            let request = $req;
            Box::pin(async move { $client::new(ch).$method(request).await.map(|_| ()) })
                as Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>
        }) as Call
    };
}

/// One call of every RPC of the public services, with `job_id` as the job
/// they touch, and whether a role with only `job:read` and `run:read` may
/// make it.
fn every_rpc(job_id: &'static str) -> Vec<(&'static str, bool, Call)> {
    let update = move || pb::UpdateJobRequest {
        job: Some(pb::ScheduledJob {
            version: 1,
            schedule: "*/7 * * * *".into(),
            ..job(job_id)
        }),
        update_mask: Some(pbjson_types::FieldMask {
            paths: vec!["schedule_spec".into()],
        }),
    };
    let id = || job_id.to_string();
    let binding = || {
        Some(pb::Binding {
            subject: "CN=x".into(),
            role: "reader".into(),
        })
    };
    let reflection_v1 = Box::new(|ch: Authed| {
        use tonic_reflection::pb::v1 as reflection;
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        Box::pin(async move {
            let mut client = reflection::server_reflection_client::ServerReflectionClient::new(ch);
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            answers.message().await.map(|_| ())
        }) as Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>
    }) as Call;
    let reflection_v1alpha = Box::new(|ch: Authed| {
        use tonic_reflection::pb::v1alpha as reflection;
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        Box::pin(async move {
            let mut client = reflection::server_reflection_client::ServerReflectionClient::new(ch);
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            answers.message().await.map(|_| ())
        }) as Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>
    }) as Call;
    vec![
        (kairos::api::reflection::V1_METHOD, true, reflection_v1),
        (kairos::api::reflection::V1ALPHA_METHOD, true, reflection_v1alpha),
        (
            "CreateJob",
            false,
            rpc!(
                JobServiceClient,
                create_job,
                pb::CreateJobRequest {
                    job: Some(job("new-one")),
                    request_id: String::new()
                }
            ),
        ),
        (
            "GetJob",
            true,
            rpc!(
                JobServiceClient,
                get_job,
                pb::GetJobRequest {
                    id: id(),
                    ..Default::default()
                }
            ),
        ),
        (
            "ListJobs",
            true,
            rpc!(JobServiceClient, list_jobs, pb::ListJobsRequest::default()),
        ),
        ("UpdateJob", false, rpc!(JobServiceClient, update_job, update())),
        (
            "DeleteJob",
            false,
            rpc!(
                JobServiceClient,
                delete_job,
                pb::DeleteJobRequest {
                    id: id(),
                    version: 0,
                    force: false
                }
            ),
        ),
        (
            "PauseJob",
            false,
            rpc!(JobServiceClient, pause_job, pb::PauseJobRequest { id: id() }),
        ),
        (
            "ResumeJob",
            false,
            rpc!(JobServiceClient, resume_job, pb::ResumeJobRequest { id: id() }),
        ),
        (
            "TriggerJob",
            false,
            rpc!(RunServiceClient, trigger_job, pb::TriggerJobRequest { id: id() }),
        ),
        (
            "BackfillJob",
            false,
            rpc!(
                RunServiceClient,
                backfill_job,
                pb::BackfillJobRequest {
                    id: id(),
                    start: Some(kairos::api::convert::ms_timestamp(1_767_225_600_000)),
                    end: Some(kairos::api::convert::ms_timestamp(1_767_225_600_000 + 600_000)),
                    dry_run: true,
                }
            ),
        ),
        (
            "DescribeJob",
            true,
            rpc!(
                RunServiceClient,
                describe_job,
                pb::DescribeJobRequest {
                    id: id(),
                    ..Default::default()
                }
            ),
        ),
        (
            "ListRuns",
            true,
            rpc!(RunServiceClient, list_runs, pb::ListRunsRequest::default()),
        ),
        (
            "GetRun",
            true,
            rpc!(
                RunServiceClient,
                get_run,
                pb::GetRunRequest {
                    id: 0,
                    ..Default::default()
                }
            ),
        ),
        (
            "CancelRun",
            false,
            rpc!(RunServiceClient, cancel_run, pb::CancelRunRequest { id: 0 }),
        ),
        (
            "WatchRuns",
            true,
            rpc!(RunServiceClient, watch_runs, pb::WatchRunsRequest::default()),
        ),
        (
            "ClusterStatus",
            false,
            rpc!(
                ClusterServiceClient,
                status,
                pb::ClusterStatusRequest {
                    local_only: true,
                    with_digest: false
                }
            ),
        ),
        (
            "AddNode",
            false,
            rpc!(
                ClusterServiceClient,
                add_node,
                pb::AddNodeRequest {
                    node_id: 9,
                    peer_addr: "127.0.0.1:9".into()
                }
            ),
        ),
        (
            "RemoveNode",
            false,
            rpc!(
                ClusterServiceClient,
                remove_node,
                pb::RemoveNodeRequest { node_id: 9 }
            ),
        ),
        (
            "SaveSnapshot",
            false,
            rpc!(ClusterServiceClient, save_snapshot, pb::SaveSnapshotRequest {}),
        ),
        (
            "CreateRole",
            false,
            rpc!(
                AclServiceClient,
                create_role,
                pb::CreateRoleRequest {
                    role: Some(pb::Role {
                        name: "x".into(),
                        permissions: vec!["job:read".into()],
                        ..Default::default()
                    })
                }
            ),
        ),
        (
            "GetRole",
            false,
            rpc!(
                AclServiceClient,
                get_role,
                pb::GetRoleRequest {
                    name: "reader".into()
                }
            ),
        ),
        (
            "ListRoles",
            false,
            rpc!(AclServiceClient, list_roles, pb::ListRolesRequest {}),
        ),
        (
            "DeleteRole",
            false,
            rpc!(
                AclServiceClient,
                delete_role,
                pb::DeleteRoleRequest {
                    name: "reader".into()
                }
            ),
        ),
        (
            "CreateToken",
            false,
            rpc!(
                AclServiceClient,
                create_token,
                pb::CreateTokenRequest {
                    name: "x".into(),
                    roles: vec!["reader".into()],
                    ttl: None
                }
            ),
        ),
        (
            "ListTokens",
            false,
            rpc!(AclServiceClient, list_tokens, pb::ListTokensRequest {}),
        ),
        (
            "RevokeToken",
            false,
            rpc!(
                AclServiceClient,
                revoke_token,
                pb::RevokeTokenRequest {
                    accessor_id: "none".into()
                }
            ),
        ),
        (
            "CreateBinding",
            false,
            rpc!(
                AclServiceClient,
                create_binding,
                pb::CreateBindingRequest { binding: binding() }
            ),
        ),
        (
            "ListBindings",
            false,
            rpc!(AclServiceClient, list_bindings, pb::ListBindingsRequest {}),
        ),
        (
            "DeleteBinding",
            false,
            rpc!(
                AclServiceClient,
                delete_binding,
                pb::DeleteBindingRequest { binding: binding() }
            ),
        ),
        (
            "ListAudit",
            false,
            rpc!(AuditServiceClient, list_audit, pb::ListAuditRequest::default()),
        ),
        (
            "VerifyAudit",
            false,
            rpc!(AuditServiceClient, verify_audit, pb::VerifyAuditRequest {}),
        ),
        (
            "DescribeService",
            true,
            rpc!(
                ServiceInfoServiceClient,
                describe_service,
                pb::DescribeServiceRequest {}
            ),
        ),
        (
            "PublishEvent",
            false,
            rpc!(
                EventServiceClient,
                publish_event,
                pb::PublishEventRequest {
                    topic: "orders.created".into(),
                    ..Default::default()
                }
            ),
        ),
        (
            "WatchEvents",
            false,
            rpc!(
                EventServiceClient,
                watch_events,
                pb::WatchEventsRequest::default()
            ),
        ),
        (
            "CreateSink",
            false,
            rpc!(
                EventServiceClient,
                create_sink,
                pb::CreateSinkRequest {
                    sink: Some(pb::Sink {
                        name: "hook".into(),
                        url: "http://127.0.0.1:9/".into(),
                        ..Default::default()
                    })
                }
            ),
        ),
        (
            "ListSinks",
            false,
            rpc!(EventServiceClient, list_sinks, pb::ListSinksRequest {}),
        ),
        (
            "DeleteSink",
            false,
            rpc!(
                EventServiceClient,
                delete_sink,
                pb::DeleteSinkRequest { name: "hook".into() }
            ),
        ),
    ]
}

/// The RPCs that answer every caller whatever credential it carries, on
/// purpose: the standard health service (see `kairos::api::health`).
fn unauthenticated_by_design() -> Vec<(&'static str, Call)> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    vec![
        (
            "grpc.health.v1.Health/Check",
            rpc!(
                HealthClient,
                check,
                HealthCheckRequest {
                    service: "kairos.v1.JobService".into()
                }
            ),
        ),
        (
            "grpc.health.v1.Health/Watch",
            Box::new(|ch: Authed| {
                Box::pin(async move {
                    let mut updates = HealthClient::new(ch)
                        .watch(HealthCheckRequest { service: "".into() })
                        .await?
                        .into_inner();
                    updates.message().await.map(|_| ())
                }) as Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>
            }) as Call,
        ),
    ]
}

/// Creates a role through node 1 as root.
async fn role(cluster: &TestCluster, name: &str, permissions: &[&str], owners: &[&str]) {
    cluster
        .acl(1)
        .create_role(pb::CreateRoleRequest {
            role: Some(pb::Role {
                name: name.into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
                owners: owners.iter().map(|o| o.to_string()).collect(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// Creates a token as root: its accessor id and secret.
async fn token(cluster: &TestCluster, name: &str, roles: &[&str], ttl: Option<Duration>) -> (String, String) {
    let created = cluster
        .acl(1)
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ttl: ttl.map(|t| kairos::api::convert::ms_duration(t.as_millis() as u64)),
        })
        .await
        .unwrap()
        .into_inner();
    (created.accessor_id, created.secret)
}

/// Job `id`'s payload as root (holding `job:secrets`) reads it through node `via`.
async fn payload_as_root(cluster: &TestCluster, via: u64, id: &str) -> serde_json::Value {
    let job = cluster
        .jobs(via)
        .await
        .get_job(pb::GetJobRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_slice(&job.payload).unwrap()
}

/// Waits until `check` holds, polling (the change it waits for is applied
/// on each node in its own time).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audit entries (as root, from node 1) matching `principal` and `method`.
async fn audit_entries(cluster: &TestCluster, principal: &str, method: &str) -> Vec<pb::AuditEntry> {
    let mut found = Vec::new();
    let mut after = 0;
    loop {
        let page = cluster
            .audit(1)
            .list_audit(pb::ListAuditRequest {
                after_seq: after,
                limit: 1000,
                principal: principal.into(),
                method: method.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        found.extend(page.entries);
        if page.scanned_to_seq >= page.head_seq || page.scanned_to_seq == after {
            return found;
        }
        after = page.scanned_to_seq;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_refuses_bad_credentials_and_missing_permissions_and_audits_the_refusal() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    cluster
        .jobs(1)
        .await
        .create_job(pb::CreateJobRequest {
            job: Some(job("victim")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    role(&cluster, "reader", &["job:read", "run:read"], &[]).await;
    let (_, reader) = token(&cluster, "reader-token", &["reader"], None).await;
    let (_, expiring) = token(&cluster, "short-lived", &["root"], Some(Duration::from_secs(1))).await;
    let (revoked_id, revoked) = token(&cluster, "revoked-token", &["root"], None).await;
    cluster
        .acl(1)
        .revoke_token(pb::RevokeTokenRequest {
            accessor_id: revoked_id,
        })
        .await
        .unwrap();
    // The short-lived token expires (on the node's clock, then at apply).
    eventually("the 1 s token expires", || async {
        let mut acl = AclServiceClient::new(cluster.channel_as(2, Bearer::new(&expiring)));
        acl.who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err_and(|s| s.code() == Code::Unauthenticated)
    })
    .await;

    let unauthenticated = [
        ("no credential", Bearer::none()),
        ("a wrong secret", Bearer::new("0123456789abcdef")),
        ("an expired token", Bearer::new(&expiring)),
        ("a revoked token", Bearer::new(&revoked)),
    ];
    for (node, (what, bearer)) in (1..=3).cycle().zip(unauthenticated.clone()) {
        for (name, _, call) in every_rpc("victim") {
            let status = call(cluster.channel_as(node, bearer.clone())).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{name} with {what}: {status:?}"
            );
        }
    }
    // The deliberate exception: health answers whatever the credential.
    for (what, bearer) in unauthenticated
        .iter()
        .chain([("the reader's token", Bearer::new(&reader))].iter())
    {
        for (name, call) in unauthenticated_by_design() {
            let answered = call(cluster.channel_as(3, bearer.clone())).await;
            assert!(answered.is_ok(), "{name} with {what}: {answered:?}");
        }
    }
    for (name, reader_may, call) in every_rpc("victim") {
        let result = call(cluster.channel_as(2, Bearer::new(&reader))).await;
        match (reader_may, result) {
            (true, Err(s)) => assert!(
                !matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated),
                "{name} is a read the reader may make: {s:?}"
            ),
            (false, Err(s)) => {
                assert_eq!(s.code(), Code::PermissionDenied, "{name}: {s:?}");
                assert!(
                    s.message().contains("reader-token lacks permission"),
                    "{name}: {s:?}"
                );
            }
            (false, Ok(())) => panic!("{name} is not allowed to a reader"),
            (true, Ok(())) => {}
        }
    }
    // The job is untouched.
    let victim = cluster
        .jobs(3)
        .await
        .get_job(pb::GetJobRequest {
            id: "victim".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(victim.version, 1);

    // Every refusal of every RPC is in the audit log: the four
    // unauthenticated calls with their code (counted, as a flood would be
    // coalesced), the reader's with its name and the node that refused it.
    for (name, reader_may, _) in every_rpc("victim") {
        eventually(&format!("the refusals of {name} are audited"), || async {
            let entries = audit_entries(&cluster, "", name).await;
            let unauthenticated: u32 = entries
                .iter()
                .filter(|e| e.code == Code::Unauthenticated as u32)
                .map(|e| e.count)
                .sum();
            let reader_denied = entries.iter().any(|e| {
                e.code == Code::PermissionDenied as u32 && e.principal == "reader-token" && e.node == 2
            });
            unauthenticated >= 4 && (reader_may || reader_denied)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_role_reaches_only_its_owners_jobs_and_principals_are_the_tokens() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let mut root = cluster.jobs(1).await;
    for (id, owner) in [("billing-1", "billing-eu"), ("search-1", "search")] {
        root.create_job(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                owner_service: owner.into(),
                ..job(id)
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    role(
        &cluster,
        "billing",
        &["job:read", "job:write", "run:read"],
        &["billing*"],
    )
    .await;
    let (accessor, secret) = token(&cluster, "billing-ci", &["billing"], None).await;
    let mut billing = JobServiceClient::new(cluster.channel_as(3, Bearer::new(&secret)));

    // Lists show only the owner's jobs; a job outside the scope is refused by name.
    let listed = billing
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["billing-1"]);
    let outside = billing
        .get_job(pb::GetJobRequest {
            id: "search-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::PermissionDenied);
    assert!(
        outside.message().contains("outside its roles' scope"),
        "{outside:?}"
    );
    let pause = billing
        .pause_job(pb::PauseJobRequest {
            id: "search-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(pause.code(), Code::PermissionDenied, "{pause:?}");
    // Moving a job out of the scope is refused too.
    let create_elsewhere = billing
        .create_job(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                owner_service: "search".into(),
                ..job("sneaky")
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(create_elsewhere.code(), Code::PermissionDenied);

    // Inside the scope: allowed, and recorded as the token's.
    let created = billing
        .create_job(pb::CreateJobRequest {
            job: Some(pb::ScheduledJob {
                owner_service: "billing-us".into(),
                ..job("billing-2")
            }),
            request_id: "req-billing-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.created_by, "billing-ci");
    let entries = audit_entries(&cluster, "billing-ci", "CreateJob").await;
    let ok: Vec<&pb::AuditEntry> = entries.iter().filter(|e| e.code == 0).collect();
    assert_eq!(ok.len(), 1, "{entries:?}");
    assert_eq!(
        (ok[0].job_id.as_str(), ok[0].accessor_id.as_str()),
        ("billing-2", accessor.as_str())
    );
    assert_eq!((ok[0].request_id.as_str(), ok[0].node), ("req-billing-2", 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_fails_on_every_node_and_secrets_are_redacted_without_job_secrets() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    role(&cluster, "ops", &["job:read", "job:write"], &[]).await;
    let (accessor, secret) = token(&cluster, "ops-token", &["ops"], None).await;
    let payload =
        br#"{"url":"https://example.com/hook","headers":{"Authorization":"Bearer s3cret","X-Team":"ops"}}"#;
    let hook = pb::ScheduledJob {
        r#type: "http".into(),
        payload: payload.to_vec(),
        ..job("hook")
    };
    let mut ops = JobServiceClient::new(cluster.channel_as(2, Bearer::new(&secret)));
    let created = ops
        .create_job(pb::CreateJobRequest {
            job: Some(hook),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let shown: serde_json::Value = serde_json::from_slice(&created.payload).unwrap();
    assert_eq!(shown["headers"]["Authorization"], "<redacted>");
    assert_eq!(shown["headers"]["X-Team"], "ops");
    // Root holds job:secrets and reads the value.
    let stored = payload_as_root(&cluster, 3, "hook").await;
    assert_eq!(stored["headers"]["Authorization"], "Bearer s3cret");
    // Writing the redacted value back keeps the secret.
    let mut edited = created.clone();
    edited.payload = serde_json::to_vec(&serde_json::json!({
        "url": "https://example.com/hook2",
        "headers": {"Authorization": "<redacted>", "X-Team": "ops"}
    }))
    .unwrap();
    ops.update_job(pb::UpdateJobRequest {
        job: Some(edited),
        update_mask: Some(pbjson_types::FieldMask {
            paths: vec!["payload".into()],
        }),
    })
    .await
    .unwrap();
    let after = payload_as_root(&cluster, 1, "hook").await;
    assert_eq!(after["headers"]["Authorization"], "Bearer s3cret");
    assert_eq!(after["url"], "https://example.com/hook2");

    cluster
        .acl(1)
        .revoke_token(pb::RevokeTokenRequest {
            accessor_id: accessor,
        })
        .await
        .unwrap();
    for node in 1..=3 {
        eventually(&format!("the revoked token fails on node {node}"), || async {
            let mut jobs = JobServiceClient::new(cluster.channel_as(node, Bearer::new(&secret)));
            let read = jobs.get_job(pb::GetJobRequest {
                id: "hook".into(),
                ..Default::default()
            });
            read.await.is_err_and(|s| s.code() == Code::Unauthenticated)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_audit_entry_is_found_offline_by_sequence_number_and_online_by_node() {
    let mut cluster = TestCluster::start(3, &["--snapshot-logs=20", "--snapshot-keep-logs=5"]);
    cluster.wait_ready(READY).await;
    let mut jobs = cluster.jobs(1).await;
    for i in 0..40 {
        jobs.create_job(pb::CreateJobRequest {
            job: Some(job(&format!("job-{i}"))),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    let victim = 3;
    let data_dir = cluster.node(victim).data_dir.clone();
    let snapshot_dir = data_dir.join("sled");
    let snapshots = kairos::raft::snapshot_file::SnapshotFile::in_dir(&snapshot_dir);
    eventually("node 3 has a snapshot holding audit entries", || async {
        snapshots
            .read_meta()
            .ok()
            .flatten()
            .is_some_and(|m| m.last_log_id.is_some_and(|l| l.index >= 20))
    })
    .await;
    cluster.stop(victim);

    // Change one stored entry's principal, keeping the file well-formed.
    let stored = snapshots.read().unwrap().unwrap();
    let image: kairos::scheduler::state::StateImage = kairos::codec::decode_body(&stored.data).unwrap();
    let mut state = kairos::scheduler::State::from_image(image);
    let seq = state
        .audit()
        .entries()
        .nth(3)
        .expect("entries in the snapshot")
        .seq;
    state.tamper_audit(seq, |e| e.record.principal = "someone-else".into());
    snapshots
        .store(&stored.meta, &kairos::codec::encode_body(&state.image()).unwrap())
        .unwrap();

    let offline = std::process::Command::new(kairos_testkit::kairos_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert_eq!(offline.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("audit entry {seq}:")), "{stderr}");

    // Untouched data verifies.
    cluster.stop(2);
    let clean = std::process::Command::new(kairos_testkit::kairos_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&cluster.node(2).data_dir)
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    cluster.spawn(2);

    // Back in the cluster, the tampered node is named.
    cluster.spawn(victim);
    cluster.wait_ready(READY).await;
    let online = cluster.cli().args(["audit", "verify"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&online.stderr);
    assert_eq!(online.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("node {victim}: audit entry {seq}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("node 1:") && !stderr.contains("node 2:"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_reads_are_audited_with_audit_reads_and_an_export_resumes_after_its_last_line() {
    let cluster = TestCluster::start(3, &["--audit-reads"]);
    cluster.wait_ready(READY).await;
    let mut jobs = cluster.jobs(2).await;
    jobs.create_job(pb::CreateJobRequest {
        job: Some(job("read-me")),
        request_id: String::new(),
    })
    .await
    .unwrap();
    jobs.get_job(pb::GetJobRequest {
        id: "read-me".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually("the allowed read is audited", || async {
        audit_entries(&cluster, "root", "GetJob")
            .await
            .iter()
            .any(|e| e.code == 0 && e.job_id == "read-me" && e.node == 2)
    })
    .await;

    // An export is NDJSON in sequence order; `--after` its last seq resumes it.
    let export = |after: u64| {
        let out = cluster
            .cli()
            .args(["audit", "export", "--after", &after.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
            .map(|v| {
                v["seq"]
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .or(v["seq"].as_u64())
                    .unwrap()
            })
            .collect::<Vec<u64>>()
    };
    let all = export(0);
    assert!(all.len() >= 3, "{all:?}");
    assert!(all.windows(2).all(|w| w[0] + 1 == w[1]), "consecutive: {all:?}");
    let middle = all[all.len() / 2];
    let rest = export(middle);
    assert_eq!(rest.first(), Some(&(middle + 1)));
    assert!(rest.windows(2).all(|w| w[0] + 1 == w[1]), "consecutive: {rest:?}");
    assert!(
        rest.len() >= all.len() - all.len() / 2 - 1,
        "{rest:?} resumes {all:?}"
    );
}
