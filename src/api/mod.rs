//! The gRPC face of a node: `JobService`, `RunService`, `ClusterService`,
//! `AclService`, `AuditService`, `WorkerService`, `EventService` and
//! `ServiceInfoService`, with the standard `grpc.health.v1.Health`
//! ([`health`], no credential) and server reflection ([`reflection`]),
//! on the client listener (`--grpc-addr`, plain or TLS: [`serve`]); the peer
//! `RaftService` on the peer listener only (`--peer-addr`:
//! [`raft_service::serve_peers`]). A `RaftService` call on the client
//! listener is answered `UNIMPLEMENTED`.
//!
//! Handlers convert protobuf to domain types ([`convert`]), validate, and call
//! the [`Node`]; the node's [`Error`] becomes a `tonic::Status` here and only
//! here ([`to_status`]). A refused write never reaches the Raft log; a query
//! passes the read barrier and reads the applied state through one helper
//! ([`read`]).
//!
//! Limits: a request to the public services may be at most
//! [`MAX_API_MESSAGE_BYTES`] (a job's payload limit plus room for the rest).
//! tonic refuses larger or malformed messages before any handler runs, so
//! they cannot crash a node; [`wire_errors`] turns its statuses into
//! `RESOURCE_EXHAUSTED` and `INVALID_ARGUMENT` naming the limit or the field.

pub mod acl_service;
pub mod audit_recorder;
pub mod audit_service;
pub mod auth;
pub mod bootstrap_token;
pub mod cluster_service;
pub mod completions;
pub mod convert;
pub mod event_service;
pub mod health;
pub mod job_service;
pub mod lifecycle;
pub mod limits;
mod one_shot;
pub mod raft_service;
pub mod read;
pub mod reflection;
pub mod run_service;
pub mod service_info;
pub mod snapshot_save;
pub mod task_token;
pub mod watch;
pub mod wire_errors;
pub mod worker_service;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};

use crate::actors::external::ExternalWorkers;
use crate::error::Error;
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::proto::acl_service_server::AclServiceServer;
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::cluster_service_server::ClusterServiceServer;
use crate::proto::event_service_server::EventServiceServer;
use crate::proto::job_service_server::JobServiceServer;
use crate::proto::run_service_server::RunServiceServer;
use crate::proto::worker_service_server::WorkerServiceServer;
use crate::transport::{authenticated_incoming, TlsHandshake};
use audit_recorder::AuditRecorder;
use auth::AuthSettings;
use completions::CompletionBatcher;
use task_token::TaskTokenKey;
use wire_errors::WireErrorsLayer;

/// Largest accepted request to `JobService`, `RunService` and
/// `ClusterService`, bytes (1 MiB payload + 1 MiB for the rest).
pub const MAX_API_MESSAGE_BYTES: usize = 2 << 20;
/// gRPC metadata key carrying the leader's address on `UNAVAILABLE`.
pub const LEADER_HEADER: &str = "x-kairos-leader";

impl Api {
    /// The state the public services share, for [`serve`] and the REST
    /// gateway ([`crate::rest`]): both answer through the same value, so a
    /// call over HTTP takes the same checks, audit and batching as one over
    /// gRPC. Starts the completion batcher and the audit recorder (tasks on
    /// the current runtime).
    pub fn new(
        node: Arc<Node>,
        metrics: Arc<Metrics>,
        workers: ApiWorkers,
        auth: AuthSettings,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Api {
        if auth.disabled {
            tracing::warn!(
                node = node.id,
                "--insecure-disable-auth: every caller may do anything on this node, as `anonymous`"
            );
        }
        Api {
            node: node.clone(),
            metrics,
            registry: workers.registry,
            external: workers.external,
            task_tokens: workers.task_tokens,
            completions: CompletionBatcher::start(node.clone()),
            auth,
            recorder: AuditRecorder::start(node),
            watches: limits::Slots::watches(limits.max_watches),
            requests: limits::Slots::requests(limits.max_requests),
            shutdown,
        }
    }
}

/// How much one node serves at once (see [`limits`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open watch streams (`--max-watches`).
    pub max_watches: usize,
    /// Client calls in progress (`--max-requests`).
    pub max_requests: usize,
}

/// Serves the client services of `api` on `listener` until `shutdown` is
/// cancelled: over TLS with `tls` (`--tls-cert`; see
/// [`crate::tls::api_server_config`]), else plain. The health service's
/// statuses follow the node's readiness until then ([`health::start`]).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    api: Api,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let wire_errors = WireErrorsLayer::new(api.metrics.clone());
    let request_limit = limits::RequestLimitLayer::new(api.requests.clone());
    let health = health::start(api.node.clone(), shutdown.clone()).await;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // One server span per call, continuing the caller's `traceparent`
        // (none while tracing is off).
        .trace_fn(crate::telemetry::grpc_server_span)
        .layer(wire_errors)
        .layer(request_limit)
        .add_service(
            JobServiceServer::new(api.clone())
                .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_API_MESSAGE_BYTES),
        )
        .add_service(RunServiceServer::new(api.clone()).max_decoding_message_size(MAX_API_MESSAGE_BYTES))
        .add_service(ClusterServiceServer::new(api.clone()).max_decoding_message_size(MAX_API_MESSAGE_BYTES))
        .add_service(AclServiceServer::new(api.clone()).max_decoding_message_size(MAX_API_MESSAGE_BYTES))
        .add_service(AuditServiceServer::new(api.clone()).max_decoding_message_size(MAX_API_MESSAGE_BYTES))
        .add_service(service_info::server(api.clone()))
        .add_service(health)
        .add_service(reflection::server_v1(api.clone()))
        .add_service(reflection::server_v1alpha(api.clone()))
        .add_service(WorkerServiceServer::new(api.clone()).max_decoding_message_size(MAX_API_MESSAGE_BYTES))
        .add_service(EventServiceServer::new(api).max_decoding_message_size(MAX_API_MESSAGE_BYTES));
    // Accepted sockets need TCP_NODELAY themselves (the builder's setting
    // only covers listeners tonic binds): without it a reply split over
    // two writes waits for the peer's delayed ACK, ~40 ms per request.
    // The TLS incoming sets it too, and handshakes each connection in a
    // task of its own.
    match tls {
        Some(config) => {
            let incoming = authenticated_incoming(
                listener,
                TlsHandshake::new(config),
                "client API",
                shutdown.clone(),
            );
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.cancelled_owned(),
                )
                .await
        }
    }
}

/// What runs jobs, as the API sees it: the built-in handlers, the external
/// workers registered with this node, and the key of their task tokens.
#[derive(Clone)]
pub struct ApiWorkers {
    /// Job types this node's pool runs.
    pub registry: Arc<Registry>,
    /// External workers registered with this node.
    pub external: Arc<ExternalWorkers>,
    /// Signs and checks task tokens.
    pub task_tokens: TaskTokenKey,
}

/// State shared by the public services.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    /// Job types this node knows, for validating creates and updates.
    registry: Arc<Registry>,
    /// External workers registered with this node.
    external: Arc<ExternalWorkers>,
    /// Signs and checks task tokens.
    task_tokens: TaskTokenKey,
    /// Commits external workers' results in batches.
    completions: CompletionBatcher,
    /// How callers are checked.
    auth: AuthSettings,
    /// Where audit records made outside the state machine go.
    recorder: AuditRecorder,
    /// The bound on this node's open watch streams (`--max-watches`).
    watches: limits::Slots,
    /// The bound on this node's client calls in progress (`--max-requests`).
    requests: limits::Slots,
    /// Fires when the server stops; ends open streams.
    shutdown: CancellationToken,
}

impl Api {
    /// A slot of the node's bound on client calls in progress, or
    /// `RESOURCE_EXHAUSTED` (the REST gateway's share of
    /// [`limits::RequestLimitLayer`]).
    pub fn take_request_slot(&self) -> Result<limits::Slot, Status> {
        self.requests.take()
    }

    /// Runs a handler, recording its status code and latency.
    async fn observed<T>(
        &self,
        method: &str,
        handler: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = handler.await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.observe_api(method, code, started.elapsed());
        if let Err(status) = &result {
            tracing::debug!(method, code = ?status.code(), message = status.message(), "request refused");
        }
        result
    }
}

/// The gRPC status of an error: the client's errors keep their class, the
/// node's become `UNAVAILABLE` (retry, maybe elsewhere) or `INTERNAL`.
pub fn to_status(error: Error) -> Status {
    match error {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::Aborted(m) => Status::aborted(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::ResourceExhausted(m) => Status::resource_exhausted(m),
        Error::Unavailable { message, leader } => {
            let mut status = Status::unavailable(message);
            if let Some(value) = leader.and_then(|l| MetadataValue::try_from(l).ok()) {
                status.metadata_mut().insert(LEADER_HEADER, value);
            }
            status
        }
        Error::Internal(m) => Status::internal(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
    }
}

/// A status's message with the chain of errors under it, e.g.
/// "transport error: ...: invalid peer certificate: UnknownIssuer" (a
/// transport error's message alone says little: "transport error").
pub fn status_with_causes(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}
