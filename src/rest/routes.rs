//! The REST API's route table: one row per route, the one list both the
//! axum router ([`super::router`]) and the OpenAPI document
//! ([`super::openapi`]) are built from.
//!
//! Routes follow Google's HTTP mapping of RPCs (`google.api.http`):
//! resources are collections (`/v1/jobs`) and items (`/v1/jobs/{id}`);
//! standard methods are `GET` (get, list), `POST` (create), `PATCH`
//! (update, with `updateMask`) and `DELETE`; custom methods are `POST` (or
//! `GET` for reads) on `…/{id}:verb` (`/v1/jobs/{id}:pause`). A path
//! parameter names the request field it sets (`{job.id}` sets the `id`
//! of the `job` field); the [`Body`] rule says what the body is.
//!
//! Each row's handler calls the gRPC service method on the node's own
//! `Api` in process, so REST and gRPC share auth, validation, audit and
//! answers; only the encoding differs.

use futures::future::BoxFuture;

use super::request::Body;
use super::{stream, unary, CallInput, RestError};
use crate::api::Api;
use crate::proto as pb;
use crate::proto::acl_service_server::AclService;
use crate::proto::audit_service_server::AuditService;
use crate::proto::cluster_service_server::ClusterService;
use crate::proto::event_service_server::EventService;
use crate::proto::job_service_server::JobService;
use crate::proto::run_service_server::RunService;
use crate::proto::service_info_service_server::ServiceInfoService;
use crate::proto::worker_service_server::WorkerService;

/// An HTTP method of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    /// The method's name (`GET`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// What answers a route: one reply, or a stream sent as Server-Sent Events.
#[derive(Clone, Copy)]
pub enum Kind {
    /// The reply as JSON.
    Unary,
    /// Each message as one SSE event (`text/event-stream`).
    Stream,
}

/// What a route's handler is.
pub type Handler = fn(Api, CallInput) -> BoxFuture<'static, Result<axum::response::Response, RestError>>;

/// One REST route of one RPC.
pub struct Route {
    pub method: Method,
    /// The path template: `{field.path}` for a parameter, which may end
    /// the last segment followed by `:verb` (`/v1/jobs/{id}:pause`).
    pub path: &'static str,
    /// The gRPC service (`JobService`) and method (`CreateJob`).
    pub service: &'static str,
    pub rpc: &'static str,
    /// Request and response messages, short names in `kairos.v1`.
    pub request: &'static str,
    pub response: &'static str,
    /// What the body is.
    pub body: Body,
    /// What the caller needs: a permission (`job:write`), `authenticated`
    /// (any valid credential) or `none`.
    pub permission: &'static str,
    pub kind: Kind,
    /// One line for the document.
    pub summary: &'static str,
    pub handler: Handler,
}

impl Route {
    /// The path as the OpenAPI document and the service record show it:
    /// each parameter named by its field's JSON name (`{job.id}` → `{id}`).
    pub fn public_path(&self) -> String {
        let request = super::descriptor::api_name(self.request);
        self.path
            .split('/')
            .map(|segment| {
                let Some(rest) = segment.strip_prefix('{') else {
                    return segment.to_string();
                };
                let (field_path, after) = rest.split_once('}').expect("a closed parameter");
                format!(
                    "{{{}}}{after}",
                    super::descriptor::resolve(&request, field_path).json_name
                )
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `kairos.v1.JobService/CreateJob`.
    pub fn grpc_name(&self) -> String {
        format!("{}.{}/{}", super::descriptor::PACKAGE, self.service, self.rpc)
    }
}

/// A unary row's handler: decode the request, call `Trait::method` on the `Api`.
macro_rules! unary {
    ($service:ident :: $method:ident) => {
        |api, input| {
            Box::pin(unary(input, move |request| async move {
                <Api as $service>::$method(&api, request).await
            }))
        }
    };
}

/// A streaming row's handler; `$id` names each message's SSE id.
macro_rules! stream {
    ($service:ident :: $method:ident, $resume:expr, $id:expr) => {
        |api, input| {
            Box::pin(stream(input, $resume, $id, move |request| async move {
                <Api as $service>::$method(&api, request).await
            }))
        }
    };
}

#[allow(clippy::too_many_arguments)]
const fn route(
    method: Method,
    path: &'static str,
    service: &'static str,
    rpc: &'static str,
    request: &'static str,
    response: &'static str,
    body: Body,
    permission: &'static str,
    summary: &'static str,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        service,
        rpc,
        request,
        response,
        body,
        permission,
        kind: Kind::Unary,
        summary,
        handler,
    }
}

const fn streaming(mut r: Route) -> Route {
    r.kind = Kind::Stream;
    r
}

use Body::{Field, Whole};
use Method::{Delete, Get, Patch, Post};

/// `Last-Event-ID` of a lifecycle event stream: the position to resume after.
fn resume_events(id: &str, json: &mut serde_json::Value) -> Result<(), RestError> {
    let position: u64 = id
        .trim()
        .parse()
        .map_err(|_| RestError::invalid(format!("Last-Event-ID: expected a position, got {id:?}")))?;
    json["after"] = serde_json::Value::String(position.to_string());
    Ok(())
}

/// `Last-Event-ID` of a run stream: `<revision>-<run id>`.
fn resume_runs(id: &str, json: &mut serde_json::Value) -> Result<(), RestError> {
    let parsed = id
        .trim()
        .split_once('-')
        .and_then(|(r, i)| Some((r.parse::<u64>().ok()?, i.parse::<u64>().ok()?)));
    let (revision, run_id) = parsed.ok_or_else(|| {
        RestError::invalid(format!("Last-Event-ID: expected <revision>-<run id>, got {id:?}"))
    })?;
    json["after"] = serde_json::json!({"revision": revision.to_string(), "runId": run_id.to_string()});
    Ok(())
}

fn event_id(event: &pb::LifecycleEvent) -> Option<String> {
    Some(event.position.to_string())
}

fn run_event_id(event: &pb::RunEvent) -> Option<String> {
    event
        .position
        .as_ref()
        .map(|p| format!("{}-{}", p.revision, p.run_id))
}

/// Every REST route. The order is the document's.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    // JobService
    route(Post, "/v1/jobs", "JobService", "CreateJob", "CreateJobRequest", "ScheduledJob", Field("job"),
        "job:write", "Creates a job (the body is the job; `requestId` query parameter: idempotency key).",
        unary!(JobService::create_job)),
    route(Get, "/v1/jobs", "JobService", "ListJobs", "ListJobsRequest", "ListJobsResponse", Body::None,
        "job:read", "Lists jobs, a page at a time.", unary!(JobService::list_jobs)),
    route(Get, "/v1/jobs/{id}", "JobService", "GetJob", "GetJobRequest", "ScheduledJob", Body::None,
        "job:read", "Gets a job.", unary!(JobService::get_job)),
    route(Patch, "/v1/jobs/{job.id}", "JobService", "UpdateJob", "UpdateJobRequest", "ScheduledJob", Field("job"),
        "job:write", "Updates a job: the body is the job with its current `version`; `updateMask` names the fields.",
        unary!(JobService::update_job)),
    route(Delete, "/v1/jobs/{id}", "JobService", "DeleteJob", "DeleteJobRequest", "DeleteJobResponse", Body::None,
        "job:write", "Deletes a job.", unary!(JobService::delete_job)),
    route(Post, "/v1/jobs/{id}:pause", "JobService", "PauseJob", "PauseJobRequest", "ScheduledJob", Body::None,
        "job:write", "Pauses a job.", unary!(JobService::pause_job)),
    route(Post, "/v1/jobs/{id}:resume", "JobService", "ResumeJob", "ResumeJobRequest", "ScheduledJob", Body::None,
        "job:write", "Resumes a paused job.", unary!(JobService::resume_job)),
    // RunService
    route(Post, "/v1/jobs/{id}:trigger", "RunService", "TriggerJob", "TriggerJobRequest", "Run", Body::None,
        "job:trigger", "Runs a job now.", unary!(RunService::trigger_job)),
    route(Post, "/v1/jobs/{id}:backfill", "RunService", "BackfillJob", "BackfillJobRequest", "BackfillJobResponse",
        Whole, "job:trigger", "Creates runs for a job's fire times in a past range (or lists them).",
        unary!(RunService::backfill_job)),
    route(Get, "/v1/jobs/{id}:describe", "RunService", "DescribeJob", "DescribeJobRequest", "JobDescription",
        Body::None, "job:read", "A job, its next fire times, recent runs and counters.",
        unary!(RunService::describe_job)),
    route(Get, "/v1/runs", "RunService", "ListRuns", "ListRunsRequest", "ListRunsResponse", Body::None,
        "run:read", "Lists runs, a page at a time.", unary!(RunService::list_runs)),
    route(Get, "/v1/runs/{id}", "RunService", "GetRun", "GetRunRequest", "Run", Body::None,
        "run:read", "Gets a run.", unary!(RunService::get_run)),
    route(Post, "/v1/runs/{id}:cancel", "RunService", "CancelRun", "CancelRunRequest", "Run", Body::None,
        "run:cancel", "Cancels a run.", unary!(RunService::cancel_run)),
    streaming(route(Get, "/v1/runs:watch", "RunService", "WatchRuns", "WatchRunsRequest", "RunEvent", Body::None,
        "run:read", "Run changes as Server-Sent Events (id: `<revision>-<run id>`; resume with Last-Event-ID).",
        stream!(RunService::watch_runs, resume_runs, run_event_id))),
    // ClusterService
    route(Get, "/v1/cluster/status", "ClusterService", "Status", "ClusterStatusRequest", "ClusterStatus",
        Body::None, "cluster:read", "The cluster as the answering node sees it.", unary!(ClusterService::status)),
    route(Post, "/v1/cluster/nodes", "ClusterService", "AddNode", "AddNodeRequest", "ClusterStatus", Whole,
        "cluster:admin", "Adds a node (a learner, then a voter once caught up).", unary!(ClusterService::add_node)),
    route(Delete, "/v1/cluster/nodes/{node_id}", "ClusterService", "RemoveNode", "RemoveNodeRequest",
        "ClusterStatus", Body::None, "cluster:admin", "Removes a node.", unary!(ClusterService::remove_node)),
    route(Get, "/v1/cluster/version", "ClusterService", "Version", "ClusterVersionRequest", "ClusterVersion",
        Body::None, "cluster:read", "The cluster version and the version each member advertises.",
        unary!(ClusterService::version)),
    // AclService
    route(Post, "/v1/acl:bootstrap", "AclService", "Bootstrap", "BootstrapRequest", "TokenSecret", Body::None,
        "none", "Creates the root token, once per cluster.", unary!(AclService::bootstrap)),
    route(Post, "/v1/acl/roles", "AclService", "CreateRole", "CreateRoleRequest", "Role", Field("role"),
        "acl:admin", "Creates a role (the body is the role).", unary!(AclService::create_role)),
    route(Get, "/v1/acl/roles", "AclService", "ListRoles", "ListRolesRequest", "ListRolesResponse", Body::None,
        "acl:admin", "Lists roles.", unary!(AclService::list_roles)),
    route(Get, "/v1/acl/roles/{name}", "AclService", "GetRole", "GetRoleRequest", "Role", Body::None,
        "acl:admin", "Gets a role.", unary!(AclService::get_role)),
    route(Delete, "/v1/acl/roles/{name}", "AclService", "DeleteRole", "DeleteRoleRequest", "DeleteRoleResponse",
        Body::None, "acl:admin", "Deletes a role.", unary!(AclService::delete_role)),
    route(Post, "/v1/acl/tokens", "AclService", "CreateToken", "CreateTokenRequest", "TokenSecret", Whole,
        "acl:admin", "Creates a token; the reply is the only time its secret is shown.",
        unary!(AclService::create_token)),
    route(Get, "/v1/acl/tokens", "AclService", "ListTokens", "ListTokensRequest", "ListTokensResponse",
        Body::None, "acl:admin", "Lists tokens, without their secrets.", unary!(AclService::list_tokens)),
    route(Delete, "/v1/acl/tokens/{accessor_id}", "AclService", "RevokeToken", "RevokeTokenRequest",
        "RevokeTokenResponse", Body::None, "acl:admin", "Revokes a token.", unary!(AclService::revoke_token)),
    route(Post, "/v1/acl/bindings", "AclService", "CreateBinding", "CreateBindingRequest", "Binding",
        Field("binding"), "acl:admin", "Binds a client certificate subject to a role (the body is the binding).",
        unary!(AclService::create_binding)),
    route(Get, "/v1/acl/bindings", "AclService", "ListBindings", "ListBindingsRequest", "ListBindingsResponse",
        Body::None, "acl:admin", "Lists certificate bindings.", unary!(AclService::list_bindings)),
    route(Delete, "/v1/acl/bindings", "AclService", "DeleteBinding", "DeleteBindingRequest",
        "DeleteBindingResponse", Body::None, "acl:admin",
        "Deletes a binding (`binding.subject` and `binding.role` query parameters).",
        unary!(AclService::delete_binding)),
    route(Get, "/v1/acl/whoami", "AclService", "WhoAmI", "WhoAmIRequest", "WhoAmIResponse", Body::None,
        "authenticated", "Who the caller is and what they may do.", unary!(AclService::who_am_i)),
    // AuditService
    route(Get, "/v1/audit", "AuditService", "ListAudit", "ListAuditRequest", "ListAuditResponse", Body::None,
        "audit:read", "Audit entries in sequence order, filtered.", unary!(AuditService::list_audit)),
    route(Post, "/v1/audit:verify", "AuditService", "VerifyAudit", "VerifyAuditRequest", "VerifyAuditResponse",
        Body::None, "audit:read", "Verifies the audit chain this node keeps.", unary!(AuditService::verify_audit)),
    // WorkerService (reads; workers themselves speak gRPC)
    route(Get, "/v1/workers", "WorkerService", "ListWorkers", "ListWorkersRequest", "ListWorkersResponse",
        Body::None, "cluster:read", "The external workers connected to every reachable node.",
        unary!(WorkerService::list_workers)),
    route(Get, "/v1/job-types", "WorkerService", "ListJobTypes", "ListJobTypesRequest", "ListJobTypesResponse",
        Body::None, "job:read", "Built-in and registered job types.", unary!(WorkerService::list_job_types)),
    route(Get, "/v1/job-types/{name}", "WorkerService", "GetJobType", "GetJobTypeRequest", "JobType", Body::None,
        "job:read", "Gets a job type.", unary!(WorkerService::get_job_type)),
    // EventService
    route(Post, "/v1/events", "EventService", "PublishEvent", "PublishEventRequest", "PublishEventResponse",
        Whole, "event:publish", "Publishes an event; runs every job whose `onEvent` trigger matches it.",
        unary!(EventService::publish_event)),
    streaming(route(Get, "/v1/events:watch", "EventService", "WatchEvents", "WatchEventsRequest",
        "LifecycleEvent", Body::None, "event:watch",
        "Lifecycle events as Server-Sent Events (id: the position; resume with Last-Event-ID).",
        stream!(EventService::watch_events, resume_events, event_id))),
    route(Post, "/v1/sinks", "EventService", "CreateSink", "CreateSinkRequest", "Sink", Field("sink"),
        "sink:admin", "Registers a webhook that receives lifecycle events (the body is the sink).",
        unary!(EventService::create_sink)),
    route(Get, "/v1/sinks", "EventService", "ListSinks", "ListSinksRequest", "ListSinksResponse", Body::None,
        "sink:admin", "Lists sinks.", unary!(EventService::list_sinks)),
    route(Delete, "/v1/sinks/{name}", "EventService", "DeleteSink", "DeleteSinkRequest", "DeleteSinkResponse",
        Body::None, "sink:admin", "Deletes a sink.", unary!(EventService::delete_sink)),
    // ServiceInfoService
    route(Get, "/v1/service", "ServiceInfoService", "DescribeService", "DescribeServiceRequest",
        "ServiceDescription", Body::None, "authenticated", "What this cluster is and offers.",
        unary!(ServiceInfoService::describe_service)),
];
