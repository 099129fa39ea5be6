//! The standard gRPC tooling services on real nodes' client listeners.
//!
//! - `grpc.health.v1.Health` answers without a credential, `SERVING` for the
//!   whole server (`""`) and for each `kairos.v1.*` service once the node is
//!   ready, `NOT_FOUND` for a service it does not have; a `Watch` stream on
//!   a node whose cluster loses its majority turns `NOT_SERVING` (the node
//!   no longer knows a leader, as `/readyz` says), and `SERVING` again once
//!   the majority is back.
//! - Server reflection, `v1` and `v1alpha`, lists the public services
//!   (Kairos's, health, reflection; not the peer-only `RaftService`) and
//!   resolves a file by a symbol, for an authenticated caller; a call with
//!   no or a wrong credential is refused `UNAUTHENTICATED`, and with
//!   `--insecure-disable-auth` anyone may ask.
//!
//! The clients are tonic-health's and tonic-reflection's generated ones.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos_testkit::{authed, Authed, Bearer, TestCluster};
use prost::Message;
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const READY: Duration = Duration::from_secs(60);
/// How long a node may take to see its majority gone, or back.
const SETTLE: Duration = Duration::from_secs(60);

/// One reflection request on a fresh stream of `$client` (the v1 or the
/// v1alpha generated client, from module `$pb`): the first response, or
/// the status the call was refused with.
macro_rules! reflect {
    ($pb:path, $channel:expr, $request:expr) => {{
        use $pb as pb;
        let request = pb::ServerReflectionRequest {
            host: String::new(),
            message_request: Some($request),
        };
        let mut client = pb::server_reflection_client::ServerReflectionClient::new($channel);
        match client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                match stream.message().await {
                    Ok(Some(message)) => Ok(message.message_response.expect("a response")),
                    Ok(None) => panic!("the reflection stream ended without an answer"),
                    Err(status) => Err(status),
                }
            }
            Err(status) => Err(status),
        }
    }};
}

/// The service names a v1 reflection `ListServices` answers through `channel`.
async fn list_services_v1(channel: Authed) -> Result<BTreeSet<String>, Status> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    match reflect!(
        tonic_reflection::pb::v1,
        channel,
        MessageRequest::ListServices(String::new())
    )? {
        MessageResponse::ListServicesResponse(list) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => panic!("ListServices answered {other:?}"),
    }
}

/// The service names a v1alpha reflection `ListServices` answers through `channel`.
async fn list_services_v1alpha(channel: Authed) -> Result<BTreeSet<String>, Status> {
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    match reflect!(
        tonic_reflection::pb::v1alpha,
        channel,
        MessageRequest::ListServices(String::new())
    )? {
        MessageResponse::ListServicesResponse(list) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => panic!("ListServices answered {other:?}"),
    }
}

/// The files (decoded) a v1 reflection `FileContainingSymbol` answers.
async fn file_of_symbol_v1(channel: Authed, symbol: &str) -> Vec<prost_types::FileDescriptorProto> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let answer = reflect!(
        tonic_reflection::pb::v1,
        channel,
        MessageRequest::FileContainingSymbol(symbol.into())
    );
    match answer.expect("reflection answers") {
        MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|bytes| {
                prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor")
            })
            .collect(),
        other => panic!("FileContainingSymbol({symbol}) answered {other:?}"),
    }
}

/// The files (decoded) a v1 reflection `FileByFilename` answers.
async fn file_by_name_v1(channel: Authed, name: &str) -> Vec<prost_types::FileDescriptorProto> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let answer = reflect!(
        tonic_reflection::pb::v1,
        channel,
        MessageRequest::FileByFilename(name.into())
    );
    match answer.expect("reflection answers") {
        MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|bytes| {
                prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor")
            })
            .collect(),
        other => panic!("FileByFilename({name}) answered {other:?}"),
    }
}

/// The files (decoded) a v1alpha reflection `FileContainingSymbol` answers.
async fn file_of_symbol_v1alpha(channel: Authed, symbol: &str) -> Vec<prost_types::FileDescriptorProto> {
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let answer = reflect!(
        tonic_reflection::pb::v1alpha,
        channel,
        MessageRequest::FileContainingSymbol(symbol.into())
    );
    match answer.expect("reflection answers") {
        MessageResponse::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|bytes| {
                prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor")
            })
            .collect(),
        other => panic!("FileContainingSymbol({symbol}) answered {other:?}"),
    }
}

/// `Health/Check` of `service` on node `id`, with no credential.
async fn check(cluster: &TestCluster, id: u64, service: &str) -> Result<ServingStatus, Status> {
    let mut health = HealthClient::new(cluster.channel_as(id, Bearer::none()));
    let response = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// The next status a `Watch` stream reports, within [`SETTLE`].
async fn next_status(stream: &mut Streaming<HealthCheckResponse>) -> ServingStatus {
    let next = tokio::time::timeout(SETTLE, stream.message()).await;
    let message = next
        .unwrap_or_else(|_| panic!("no health change within {SETTLE:?}"))
        .expect("the watch stream stays open")
        .expect("the watch stream does not end");
    message.status()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_without_a_credential_and_follows_the_majority() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_ready(READY).await;
    let leader = cluster.wait_leader(READY).await;
    let mut others = (1..=3).filter(|&id| id != leader);
    let (watched, other) = (others.next().unwrap(), others.next().unwrap());

    for id in 1..=3 {
        for service in ["", "kairos.v1.JobService", "kairos.v1.EventService"] {
            assert_eq!(
                check(&cluster, id, service).await.expect("health answers"),
                ServingStatus::Serving,
                "node {id}, service {service:?}"
            );
        }
    }
    for unknown in ["kairos.v1.NoSuchService", "kairos.v1.RaftService"] {
        let refused = check(&cluster, watched, unknown).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{unknown}: {refused:?}");
    }

    // Watch the whole server on a follower, then take its majority away.
    let mut health = HealthClient::new(cluster.channel_as(watched, Bearer::none()));
    let mut whole = health
        .watch(HealthCheckRequest { service: "".into() })
        .await
        .expect("watch")
        .into_inner();
    let mut jobs = health
        .watch(HealthCheckRequest {
            service: "kairos.v1.JobService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_status(&mut whole).await, ServingStatus::Serving);
    assert_eq!(next_status(&mut jobs).await, ServingStatus::Serving);
    cluster.kill(leader);
    cluster.kill(other);
    assert_eq!(next_status(&mut whole).await, ServingStatus::NotServing);
    assert_eq!(next_status(&mut jobs).await, ServingStatus::NotServing);
    let (code, body) = kairos_testkit::http_get(&cluster.node(watched).http, "/readyz")
        .await
        .expect("/readyz answers");
    assert_eq!(code, 503, "health and /readyz agree: {body}");

    // The majority back: serving again, on the same stream.
    cluster.spawn(leader);
    cluster.spawn(other);
    assert_eq!(next_status(&mut whole).await, ServingStatus::Serving);
    assert_eq!(next_status(&mut jobs).await, ServingStatus::Serving);
    cluster.wait_ready(READY).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_and_resolves_for_authenticated_callers_only() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;

    let expected: BTreeSet<String> = [
        "kairos.v1.JobService",
        "kairos.v1.RunService",
        "kairos.v1.ClusterService",
        "kairos.v1.AclService",
        "kairos.v1.AuditService",
        "kairos.v1.WorkerService",
        "kairos.v1.EventService",
        "kairos.v1.ServiceInfoService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let v1 = list_services_v1(cluster.channel(1)).await.expect("v1 lists");
    assert_eq!(v1, expected);
    let v1alpha = list_services_v1alpha(cluster.channel(1))
        .await
        .expect("v1alpha lists");
    assert_eq!(v1alpha, expected);

    // A symbol resolves to the file declaring it.
    let files = file_of_symbol_v1(cluster.channel(1), "kairos.v1.JobService").await;
    let job_file = files
        .iter()
        .find(|f| f.service.iter().any(|s| s.name() == "JobService"))
        .unwrap_or_else(|| panic!("JobService's file: {files:?}"));
    assert_eq!(job_file.package(), "kairos.v1");
    assert!(
        job_file
            .service
            .iter()
            .flat_map(|s| &s.method)
            .any(|m| m.name() == "CreateJob"),
        "{job_file:?}"
    );
    // What it imports resolves by name too, as a client walking the
    // imports (grpcurl describe) asks.
    assert!(!job_file.dependency.is_empty(), "{job_file:?}");
    for dependency in &job_file.dependency {
        let files = file_by_name_v1(cluster.channel(1), dependency).await;
        assert!(
            files.iter().any(|f| f.name() == dependency),
            "{dependency}: {files:?}"
        );
    }
    let files = file_of_symbol_v1alpha(cluster.channel(1), "grpc.health.v1.Health").await;
    assert!(
        files
            .iter()
            .any(|f| f.package() == "grpc.health.v1" && f.service.iter().any(|s| s.name() == "Health")),
        "{files:?}"
    );
    let files = file_of_symbol_v1(cluster.channel(1), "kairos.v1.CreateJobRequest").await;
    assert!(
        files
            .iter()
            .any(|f| f.message_type.iter().any(|m| m.name() == "CreateJobRequest")),
        "{files:?}"
    );

    // No credential, or a wrong one: refused, both versions.
    let addr = cluster.node(1).grpc.clone();
    for (what, bearer) in [
        ("no credential", Bearer::none()),
        ("a wrong secret", Bearer::new("0123456789abcdef")),
    ] {
        let v1 = list_services_v1(authed(&addr, bearer.clone())).await.unwrap_err();
        assert_eq!(v1.code(), Code::Unauthenticated, "v1 with {what}: {v1:?}");
        let v1alpha = list_services_v1alpha(authed(&addr, bearer)).await.unwrap_err();
        assert_eq!(
            v1alpha.code(),
            Code::Unauthenticated,
            "v1alpha with {what}: {v1alpha:?}"
        );
    }
    // Health needs none on the same listener.
    assert_eq!(
        check(&cluster, 1, "").await.expect("health answers"),
        ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_disabled_anyone_may_use_reflection() {
    let cluster = TestCluster::start(1, &["--insecure-disable-auth"]);
    cluster.wait_ready_only(READY).await;
    let services = list_services_v1(cluster.channel_as(1, Bearer::none()))
        .await
        .expect("reflection without a credential");
    assert!(services.contains("kairos.v1.JobService"), "{services:?}");
}
