//! The REST API (`/v1/...` on `--http-addr`) beside gRPC, on real nodes.
//!
//! - The same calls over REST and gRPC give the same answers: create, get,
//!   list, update with a mask, pause, resume, trigger, get and list runs,
//!   cancel, delete, cluster status, the service record. Writes are made on twin jobs (one per
//!   protocol) and compared without their ids and times; reads of one
//!   resource are compared whole (REST's JSON against the gRPC reply in
//!   the JSON mapping).
//! - Errors carry the same message as the gRPC status, in the error shape
//!   with the mapped HTTP code: 400 (invalid job, malformed parameter,
//!   malformed body), 401 (no or wrong token), 403 (a role without the
//!   permission), 404 (a deleted job, an unknown route), 409 (an existing
//!   id), 429 (a body over the limit).
//! - A REST call is audited as the gRPC call is, with the caller's address
//!   and the `traceparent`'s trace id.
//! - `/openapi.json` needs no credential and lists one operation per route;
//!   every reply the tests get, errors included, validates against its
//!   schema there.
//! - `GET /v1/runs:watch` and `GET /v1/events:watch` stream as
//!   Server-Sent Events and resume after `Last-Event-ID`; an event
//!   published over REST runs the job its topic triggers; sinks are
//!   created, listed and deleted.

use std::time::Duration;

use kairos::proto as pb;
use kairos::proto::acl_service_client::AclServiceClient;
use kairos::proto::audit_service_client::AuditServiceClient;
use kairos::proto::event_service_client::EventServiceClient;
use kairos::proto::job_service_client::JobServiceClient;
use kairos::proto::run_service_client::RunServiceClient;
use kairos::proto::service_info_service_client::ServiceInfoServiceClient;
use kairos_testkit::{job, Bearer, TestCluster};
use serde_json::{json, Value};
use tokio::time::Instant;
use tonic::Code;

const READY: Duration = Duration::from_secs(60);
/// How long a run may take to end, or an event to arrive.
const SETTLE: Duration = Duration::from_secs(20);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A REST client of one node.
struct Rest {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Rest {
    fn new(http: &str, token: Option<&str>) -> Rest {
        Rest {
            client: kairos::handlers::HttpHandler::client_builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: format!("http://{http}"),
            token: token.map(str::to_string),
        }
    }

    fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request
    }

    /// `method path` with `body` (JSON): the status and the JSON reply.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        send(request).await
    }
}

/// Sends `request`: the status and the JSON reply. An error reply is
/// checked against the document's error schema.
async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    if status != 200 {
        conforms("Error", &value);
    }
    (status, value)
}

/// Asserts that `value` validates against the OpenAPI document's schema
/// `name` (the document the node serves; the errors test checks that it
/// is this one).
fn conforms(name: &str, value: &Value) {
    static COMPONENTS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let components = COMPONENTS.get_or_init(|| {
        let document = serde_json::to_value(kairos::rest::openapi::document()).unwrap();
        document["components"].clone()
    });
    let root = json!({"$ref": format!("#/components/schemas/{name}"), "components": components});
    let validator = jsonschema::validator_for(&root).unwrap();
    if let Err(e) = validator.validate(value) {
        panic!("not a valid {name} ({e}): {value}");
    }
}

/// A `uint64` field of a reply: a decimal string, absent when 0 (the JSON
/// mapping leaves default values out).
fn uint64(value: &Value) -> u64 {
    match value {
        Value::Null => 0,
        v => v
            .as_str()
            .unwrap_or_else(|| panic!("a uint64 is a string: {v}"))
            .parse()
            .unwrap(),
    }
}

/// A gRPC reply in the JSON mapping, as REST answers it.
fn json_of<T: serde::Serialize>(message: &T) -> Value {
    serde_json::to_value(message).unwrap()
}

/// `value` without the fields that differ between twin resources.
fn without(mut value: Value, fields: &[&str]) -> Value {
    if let Value::Object(map) = &mut value {
        for field in fields {
            map.remove(*field);
        }
    }
    value
}

const JOB_VOLATILE: &[&str] = &["id", "createdAt", "updatedAt", "nextRun", "lastRun"];
const RUN_VOLATILE: &[&str] = &[
    "id",
    "jobId",
    "nominalTime",
    "idempotencyKey",
    "revision",
    "fencingToken",
    "startedAt",
    "finishedAt",
    "notBefore",
    "nodeId",
    "attempt",
    "outputTail",
];

/// Asserts a REST error reply: the HTTP code, the status name, the message.
fn assert_error(reply: &(u16, Value), code: u16, status: &str) -> String {
    let (http, body) = reply;
    assert_eq!(*http, code, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

/// Waits until run `id` has ended, through gRPC.
async fn ended_run(runs: &mut RunServiceClient<kairos_testkit::Authed>, id: u64) -> pb::Run {
    let deadline = Instant::now() + SETTLE;
    loop {
        let run = runs
            .get_run(pb::GetRunRequest {
                id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if run.finished_at.is_some() {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_give_the_same_answers() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let rest = Rest::new(&cluster.node(1).http, Some(cluster.token()));
    let mut jobs = JobServiceClient::new(cluster.channel(1));
    let mut runs = RunServiceClient::new(cluster.channel(1));

    // Create: REST's body is the job, the request id a query parameter.
    let created = rest
        .request("POST", "/v1/jobs?requestId=req-r")
        .header("traceparent", TRACEPARENT)
        .body(json_of(&job("r")).to_string());
    let (code, rest_job) = send(created).await;
    assert_eq!(code, 200, "{rest_job}");
    assert_eq!(rest_job["id"], "r");
    conforms("ScheduledJob", &rest_job);
    let grpc_job = jobs
        .create_job(pb::CreateJobRequest {
            job: Some(job("g")),
            request_id: "req-g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        without(rest_job.clone(), JOB_VOLATILE),
        without(json_of(&grpc_job), JOB_VOLATILE)
    );
    // The same request id again: the first answer, as over gRPC.
    let repeat = rest
        .call("POST", "/v1/jobs?requestId=req-r", Some(json_of(&job("r"))))
        .await;
    assert_eq!(repeat, (200, rest_job.clone()));

    // Get and list: one read, compared whole.
    for id in ["r", "g"] {
        let (code, got) = rest.call("GET", &format!("/v1/jobs/{id}"), None).await;
        assert_eq!(code, 200);
        let grpc = jobs
            .get_job(pb::GetJobRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, json_of(&grpc));
    }
    let (code, listed) = rest
        .call("GET", "/v1/jobs?ownerService=tests&pageSize=1", None)
        .await;
    assert_eq!(code, 200);
    let grpc_list = jobs
        .list_jobs(pb::ListJobsRequest {
            owner_service: "tests".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed, json_of(&grpc_list));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    conforms("ListJobsResponse", &listed);
    let next = listed["nextPageToken"].as_str().unwrap();
    let (_, second) = rest
        .call(
            "GET",
            &format!("/v1/jobs?ownerService=tests&pageSize=1&pageToken={next}"),
            None,
        )
        .await;
    assert_eq!(second["jobs"].as_array().unwrap().len(), 1);
    assert_ne!(second["jobs"][0]["id"], listed["jobs"][0]["id"]);

    // Update with a mask: only `schedule` changes.
    let version = rest_job["version"].as_str().unwrap().to_string();
    let patch = json!({"version": version, "schedule": "*/7 * * * *", "ownerService": "ignored"});
    let (code, rest_updated) = rest
        .call("PATCH", "/v1/jobs/r?updateMask=schedule", Some(patch))
        .await;
    assert_eq!(code, 200, "{rest_updated}");
    let grpc_updated = jobs
        .update_job(pb::UpdateJobRequest {
            job: Some(pb::ScheduledJob {
                id: "g".into(),
                version: grpc_job.version,
                schedule: "*/7 * * * *".into(),
                owner_service: "ignored".into(),
                ..Default::default()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["schedule".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        without(rest_updated.clone(), JOB_VOLATILE),
        without(json_of(&grpc_updated), JOB_VOLATILE)
    );
    assert_eq!(rest_updated["ownerService"], "tests", "outside the mask: kept");
    conforms("ScheduledJob", &rest_updated);
    assert_ne!(rest_updated["schedule"], rest_job["schedule"]);

    // Pause and resume.
    let (code, paused) = rest.call("POST", "/v1/jobs/r:pause", None).await;
    assert_eq!(code, 200);
    let grpc_paused = jobs
        .pause_job(pb::PauseJobRequest { id: "g".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        without(paused.clone(), JOB_VOLATILE),
        without(json_of(&grpc_paused), JOB_VOLATILE)
    );
    assert_eq!(paused["status"], "JOB_STATUS_PAUSED");
    let (code, resumed) = rest.call("POST", "/v1/jobs/r:resume", Some(json!({}))).await;
    assert_eq!(code, 200);
    let grpc_resumed = jobs
        .resume_job(pb::ResumeJobRequest { id: "g".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        without(resumed.clone(), JOB_VOLATILE),
        without(json_of(&grpc_resumed), JOB_VOLATILE)
    );
    assert_eq!(resumed["status"], "JOB_STATUS_ACTIVE");

    // Trigger, then read the ended runs both ways.
    let (code, rest_run) = rest.call("POST", "/v1/jobs/r:trigger", None).await;
    assert_eq!(code, 200, "{rest_run}");
    let grpc_run = runs
        .trigger_job(pb::TriggerJobRequest { id: "g".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        without(rest_run.clone(), RUN_VOLATILE),
        without(json_of(&grpc_run), RUN_VOLATILE)
    );
    assert_eq!(
        (rest_run["jobId"].as_str(), rest_run["cause"].as_str()),
        (Some("r"), Some("RUN_CAUSE_TRIGGER"))
    );
    conforms("Run", &rest_run);
    let run_id = uint64(&rest_run["id"]);
    let ended = ended_run(&mut runs, run_id).await;
    assert_eq!(ended.status, pb::RunStatus::Succeeded as i32);
    let (code, got_run) = rest.call("GET", &format!("/v1/runs/{run_id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(got_run, json_of(&ended));
    conforms("Run", &got_run);
    let (code, listed_runs) = rest
        .call("GET", "/v1/runs?jobId=r&status=RUN_STATUS_SUCCEEDED", None)
        .await;
    assert_eq!(code, 200);
    let grpc_runs = runs
        .list_runs(pb::ListRunsRequest {
            job_id: "r".into(),
            status: pb::RunStatus::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed_runs, json_of(&grpc_runs));
    assert_eq!(uint64(&listed_runs["runs"][0]["id"]), run_id);
    conforms("ListRunsResponse", &listed_runs);
    let (code, described) = rest.call("GET", "/v1/jobs/r:describe", None).await;
    assert_eq!(code, 200);
    assert_eq!(uint64(&described["recentRuns"][0]["id"]), run_id);
    conforms("JobDescription", &described);

    // Cancel an open run of a sleeping twin.
    let mut sleeper = job("sleepy-r");
    sleeper.r#type = "sleep".into();
    sleeper.payload = br#"{"ms": 600000}"#.to_vec();
    let (code, _) = rest.call("POST", "/v1/jobs", Some(json_of(&sleeper))).await;
    assert_eq!(code, 200);
    jobs.create_job(pb::CreateJobRequest {
        job: Some(pb::ScheduledJob {
            id: "sleepy-g".into(),
            ..sleeper.clone()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let (_, open_rest) = rest.call("POST", "/v1/jobs/sleepy-r:trigger", None).await;
    let open_grpc = runs
        .trigger_job(pb::TriggerJobRequest {
            id: "sleepy-g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (code, cancelled) = rest
        .call(
            "POST",
            &format!("/v1/runs/{}:cancel", uint64(&open_rest["id"])),
            None,
        )
        .await;
    assert_eq!(code, 200, "{cancelled}");
    let grpc_cancelled = runs
        .cancel_run(pb::CancelRunRequest { id: open_grpc.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        without(cancelled.clone(), RUN_VOLATILE),
        without(json_of(&grpc_cancelled), RUN_VOLATILE)
    );
    assert_eq!(cancelled["status"], "RUN_STATUS_CANCELLED");
    conforms("Run", &cancelled);

    // Cluster status, the answering node's own view.
    let (code, status) = rest.call("GET", "/v1/cluster/status?localOnly=true", None).await;
    assert_eq!(code, 200);
    let grpc_status = cluster.status(1).await;
    assert_eq!(status["answeredBy"], "1");
    assert_eq!(status["leaderId"], grpc_status.leader_id.to_string());
    assert_eq!(status["nodes"][0]["grpcAddr"], grpc_status.nodes[0].grpc_addr);
    assert_eq!(status["nodes"][0]["role"], "NODE_ROLE_LEADER");
    conforms("ClusterStatus", &status);

    // The service record: the same over both, listing the REST routes too.
    let (code, service) = rest.call("GET", "/v1/service", None).await;
    assert_eq!(code, 200, "{service}");
    conforms("ServiceDescription", &service);
    let grpc_service = ServiceInfoServiceClient::new(cluster.channel(1))
        .describe_service(pb::DescribeServiceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(service, json_of(&grpc_service));
    let rest_routes = grpc_service
        .endpoints
        .iter()
        .filter(|e| e.protocol == "rest")
        .count();
    assert_eq!(rest_routes, kairos::rest::routes::ROUTES.len());
    assert!(grpc_service.features.iter().any(|f| f == "rest"));

    // Delete; then both say NOT_FOUND with the same message.
    let (code, deleted) = rest.call("DELETE", "/v1/jobs/r", None).await;
    assert_eq!((code, deleted), (200, json!({})));
    jobs.delete_job(pb::DeleteJobRequest {
        id: "g".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let rest_missing = rest.call("GET", "/v1/jobs/r", None).await;
    let message = assert_error(&rest_missing, 404, "NOT_FOUND");
    let grpc_missing = jobs
        .get_job(pb::GetJobRequest {
            id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (grpc_missing.code(), grpc_missing.message()),
        (Code::NotFound, message.as_str())
    );

    // The REST create was audited like a gRPC call: method, principal,
    // the caller's address and the trace id.
    let entries = AuditServiceClient::new(cluster.channel(1))
        .list_audit(pb::ListAuditRequest {
            job_id: "r".into(),
            method: "CreateJob".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let entry = entries.first().expect("the REST create's audit entry");
    assert_eq!(entry.code, 0);
    assert_eq!(entry.principal, "root");
    assert!(entry.source.starts_with("127.0.0.1:"), "{entry:?}");
    assert_eq!(entry.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(entry.request_id, "req-r");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_grpc_message_under_the_mapped_http_code() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let http = cluster.node(1).http.clone();
    let rest = Rest::new(&http, Some(cluster.token()));
    let mut jobs = JobServiceClient::new(cluster.channel(1));

    // 400: an invalid job, the same message as gRPC's.
    let mut bad = job("bad");
    bad.schedule = "not a cron".into();
    let reply = rest.call("POST", "/v1/jobs", Some(json_of(&bad))).await;
    let message = assert_error(&reply, 400, "INVALID_ARGUMENT");
    let status = jobs
        .create_job(pb::CreateJobRequest {
            job: Some(bad),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, message.as_str())
    );
    // 400: malformed parameters and bodies, named.
    let message = assert_error(
        &rest.call("GET", "/v1/jobs?pageSize=ten", None).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert!(message.contains("pageSize"), "{message}");
    let message = assert_error(
        &rest.call("GET", "/v1/jobs?colour=red", None).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert!(message.contains("colour"), "{message}");
    let reply = send(rest.request("POST", "/v1/jobs").body("{\"id\": ")).await;
    assert!(assert_error(&reply, 400, "INVALID_ARGUMENT").contains("not valid JSON"));
    let reply = rest
        .call(
            "POST",
            "/v1/jobs",
            Some(json!({"id": "x", "policies": {"maxCatchup": "many"}})),
        )
        .await;
    let message = assert_error(&reply, 400, "INVALID_ARGUMENT");
    assert!(message.contains("job.policies.maxCatchup"), "{message}");

    // 401: no token, a wrong token; gRPC says the same.
    let anonymous = Rest::new(&http, None);
    let message = assert_error(
        &anonymous.call("GET", "/v1/jobs", None).await,
        401,
        "UNAUTHENTICATED",
    );
    let status = JobServiceClient::new(cluster.channel_as(1, Bearer::none()))
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, message.as_str())
    );
    let wrong = Rest::new(&http, Some("not-a-secret"));
    assert_error(
        &wrong.call("GET", "/v1/acl/whoami", None).await,
        401,
        "UNAUTHENTICATED",
    );

    // 403: a token whose role may only read.
    let mut acl = AclServiceClient::new(cluster.channel(1));
    acl.create_role(pb::CreateRoleRequest {
        role: Some(pb::Role {
            name: "reader".into(),
            permissions: vec!["job:read".into()],
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let (code, reader) = rest
        .call(
            "POST",
            "/v1/acl/tokens",
            Some(json!({"name": "reader-token", "roles": ["reader"]})),
        )
        .await;
    assert_eq!(code, 200, "{reader}");
    conforms("TokenSecret", &reader);
    let secret = reader["secret"].as_str().unwrap();
    let as_reader = Rest::new(&http, Some(secret));
    let (code, me) = as_reader.call("GET", "/v1/acl/whoami", None).await;
    assert_eq!((code, me["principal"].as_str()), (200, Some("reader-token")));
    conforms("WhoAmIResponse", &me);
    let reply = as_reader
        .call("POST", "/v1/jobs", Some(json_of(&job("denied"))))
        .await;
    let message = assert_error(&reply, 403, "PERMISSION_DENIED");
    let status = JobServiceClient::new(cluster.channel_as(1, Bearer::new(secret)))
        .create_job(pb::CreateJobRequest {
            job: Some(job("denied")),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, message.as_str())
    );

    // 404: an unknown route, in the same shape, before any credential.
    let reply = anonymous.call("GET", "/v1/nothing-here", None).await;
    assert!(assert_error(&reply, 404, "NOT_FOUND").contains("/v1/nothing-here"));
    assert_error(&rest.call("PUT", "/v1/jobs/a", None).await, 404, "NOT_FOUND");

    // 409: an id that exists, and a stale version.
    let (code, _) = rest.call("POST", "/v1/jobs", Some(json_of(&job("taken")))).await;
    assert_eq!(code, 200);
    let mut other = job("taken");
    other.schedule = "*/9 * * * *".into();
    let message = assert_error(
        &rest.call("POST", "/v1/jobs", Some(json_of(&other))).await,
        409,
        "ALREADY_EXISTS",
    );
    let status = jobs
        .create_job(pb::CreateJobRequest {
            job: Some(other),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::AlreadyExists, message.as_str())
    );
    let stale = rest
        .call(
            "PATCH",
            "/v1/jobs/taken?updateMask=paused",
            Some(json!({"version": "99", "paused": true})),
        )
        .await;
    assert_error(&stale, 409, "ABORTED");

    // 429: a body over the gRPC message limit.
    let big = vec![b' '; kairos::api::MAX_API_MESSAGE_BYTES + 1];
    let reply = send(rest.request("POST", "/v1/jobs").body(big)).await;
    assert_error(&reply, 429, "RESOURCE_EXHAUSTED");

    // The health endpoints and the document need no credential.
    let (code, document) = anonymous.call("GET", "/openapi.json", None).await;
    assert_eq!(code, 200);
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document,
        serde_json::to_value(kairos::rest::openapi::document()).unwrap()
    );
    // The schema check refuses what the mapping never sends.
    for (name, wrong) in [
        ("Run", json!({"id": 5})),
        ("Run", json!({"status": "DONE"})),
        ("ScheduledJob", json!({"owner_service": "x"})),
        ("Error", json!({"error": {"code": 404}})),
    ] {
        let refused = std::panic::catch_unwind(|| conforms(name, &wrong));
        assert!(refused.is_err(), "{name} accepted {wrong}");
    }
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, kairos::rest::routes::ROUTES.len());
    let (code, _) = kairos_testkit::http_get(&http, "/livez").await.unwrap();
    assert_eq!(code, 200);
}

/// One Server-Sent Event.
#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

/// Reads events from an SSE response until `want` of them arrived.
async fn read_events(response: &mut reqwest::Response, buffer: &mut String, want: usize) -> Vec<SseEvent> {
    let deadline = Instant::now() + SETTLE;
    let mut events = Vec::new();
    while events.len() < want {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                events.push(SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
        }
        if events.len() >= want {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{want} events within {SETTLE:?}; got {events:?}"))
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_run_changes_as_server_sent_events_and_resumes() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let rest = Rest::new(&cluster.node(1).http, Some(cluster.token()));
    let (code, _) = rest.call("POST", "/v1/jobs", Some(json_of(&job("w")))).await;
    assert_eq!(code, 200);

    // Refused before the stream starts: an ordinary error reply.
    let anonymous = Rest::new(&cluster.node(1).http, None);
    let reply = anonymous.call("GET", "/v1/runs:watch?jobId=w", None).await;
    assert_error(&reply, 401, "UNAUTHENTICATED");

    let mut response = rest
        .request("GET", "/v1/runs:watch?jobId=w")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    // A watch from now starts with a progress notice (no run).
    let notice = read_events(&mut response, &mut buffer, 1).await;
    assert!(notice[0].data.get("run").is_none(), "{notice:?}");

    let (_, run) = rest.call("POST", "/v1/jobs/w:trigger", None).await;
    let run_id = run["id"].clone();
    // The run's changes until it ended, each with an id.
    let mut seen = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while !seen
        .iter()
        .any(|e: &SseEvent| e.data["run"]["status"] == "RUN_STATUS_SUCCEEDED")
    {
        assert!(Instant::now() < deadline, "no SUCCEEDED event: {seen:?}");
        seen.extend(read_events(&mut response, &mut buffer, 1).await);
    }
    let changes: Vec<&SseEvent> = seen.iter().filter(|e| e.data.get("run").is_some()).collect();
    assert!(changes.iter().all(|e| e.data["run"]["id"] == run_id));
    assert!(changes.iter().all(|e| e.id.is_some() && e.event.is_none()));
    for event in &seen {
        conforms("RunEvent", &event.data);
    }
    drop(response);

    // Resume after the notice, and after the first change when there were
    // several: the run comes again as it is now (its changes since then
    // coalesce into one event), with the last change's id.
    let last = changes.last().unwrap();
    let mut resume_points = vec![notice[0].id.clone().expect("a notice has a position")];
    if changes.len() > 1 {
        resume_points.push(changes[0].id.clone().unwrap());
    }
    for after in resume_points {
        let mut resumed = rest
            .request("GET", "/v1/runs:watch?jobId=w")
            .header("last-event-id", &after)
            .send()
            .await
            .unwrap();
        assert_eq!(resumed.status(), 200);
        let mut buffer = String::new();
        let again = read_events(&mut resumed, &mut buffer, 1).await;
        assert_eq!(again[0].id, last.id, "resumed after {after}: {again:?}");
        assert_eq!(again[0].data["run"]["status"], "RUN_STATUS_SUCCEEDED");
    }
    // A malformed Last-Event-ID is refused.
    let reply = send(
        rest.request("GET", "/v1/runs:watch")
            .header("last-event-id", "yesterday"),
    )
    .await;
    assert_error(&reply, 400, "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_publish_watch_and_sinks_over_rest() {
    let cluster = TestCluster::start(1, &[]);
    cluster.wait_ready(READY).await;
    cluster.wait_leader(READY).await;
    let rest = Rest::new(&cluster.node(1).http, Some(cluster.token()));
    let mut events = EventServiceClient::new(cluster.channel(1));

    // A job triggered by `orders.*` events, created over REST.
    let on_orders = json!({
        "id": "on-orders", "type": "noop", "ownerService": "shop", "payload": "e30=",
        "scheduleSpec": {"onEvent": {"topic": "orders.*"}},
        // Each event's run, even while the last one's is still open.
        "policies": {"overlap": "OVERLAP_POLICY_ALLOW_ALL"}
    });
    let (code, created) = rest.call("POST", "/v1/jobs", Some(on_orders)).await;
    assert_eq!(code, 200, "{created}");

    // Publish over REST and over gRPC: the same answer but for the event.
    let publish = json!({"topic": "orders.created", "attributes": {"region": "eu"}, "payload": "e30="});
    let (code, rest_published) = rest.call("POST", "/v1/events", Some(publish)).await;
    assert_eq!(code, 200, "{rest_published}");
    let grpc_published = events
        .publish_event(pb::PublishEventRequest {
            topic: "orders.created".into(),
            attributes: [("region".to_string(), "eu".to_string())].into(),
            payload: b"{}".to_vec(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let volatile = ["eventId", "time"];
    assert_eq!(
        without(rest_published.clone(), &volatile),
        without(json_of(&grpc_published), &volatile)
    );
    assert_eq!(rest_published["runsCreated"], 1);
    conforms("PublishEventResponse", &rest_published);
    let first_event = rest_published["eventId"].as_str().unwrap().to_string();
    assert_error(
        &rest.call("POST", "/v1/events", Some(json!({"topic": ""}))).await,
        400,
        "INVALID_ARGUMENT",
    );

    // Watch the published events from the oldest: both, in order, each
    // with its position as id.
    let watch = "/v1/events:watch?kinds=LIFECYCLE_EVENT_KIND_EVENT_PUBLISHED";
    let mut response = rest.request("GET", watch).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let seen = read_events(&mut response, &mut buffer, 2).await;
    assert_eq!(seen[0].data["eventId"], first_event.as_str());
    assert_eq!(seen[1].data["eventId"], grpc_published.event_id.as_str());
    for event in &seen {
        assert_eq!(event.id.as_deref(), event.data["position"].as_str());
        assert_eq!(event.data["topic"], "orders.created");
        conforms("LifecycleEvent", &event.data);
    }
    // Live: a third event arrives on the open stream.
    let (_, third) = rest
        .call("POST", "/v1/events", Some(json!({"topic": "orders.paid"})))
        .await;
    let live = read_events(&mut response, &mut buffer, 1).await;
    assert_eq!(live[0].data["eventId"], third["eventId"]);
    drop(response);

    // Resume after the first: the second and third, not the first again.
    let mut resumed = rest
        .request("GET", watch)
        .header("last-event-id", seen[0].id.clone().unwrap())
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let again = read_events(&mut resumed, &mut buffer, 2).await;
    assert_eq!(again[0].id, seen[1].id);
    assert_eq!(again[1].data["eventId"], third["eventId"]);

    // Sinks: create, list, delete.
    let sink = json!({"name": "audit-hook", "url": "http://127.0.0.1:9/hook"});
    let (code, created) = rest.call("POST", "/v1/sinks", Some(sink)).await;
    assert_eq!(
        (code, created["name"].as_str()),
        (200, Some("audit-hook")),
        "{created}"
    );
    let (code, listed) = rest.call("GET", "/v1/sinks", None).await;
    assert_eq!(code, 200);
    let grpc_listed = events
        .list_sinks(pb::ListSinksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed["sinks"][0]["name"], "audit-hook");
    conforms("ListSinksResponse", &listed);
    assert_eq!(listed["sinks"].as_array().unwrap().len(), grpc_listed.sinks.len());
    let (code, deleted) = rest.call("DELETE", "/v1/sinks/audit-hook", None).await;
    assert_eq!((code, deleted), (200, json!({})));
    assert_error(
        &rest.call("DELETE", "/v1/sinks/audit-hook", None).await,
        404,
        "NOT_FOUND",
    );
}
