//! The worker's view of the cluster: one lazily connected channel per
//! endpoint, the four calls the worker makes (each carrying the credential
//! and bounded in time), how their failures are told apart, and the
//! back-off between rounds of endpoints.
//!
//! A node is *unreachable* when the call failed in the connection (tonic
//! attaches the transport error as the status's source), when it answered
//! `UNAVAILABLE`, or when it did not answer in time. Anything else is the
//! node's answer and means the same from every node.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::proto;
use crate::proto::worker_service_client::WorkerServiceClient;

/// The first pause after a full round of failed endpoints.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest pause between rounds.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds `authorization: Bearer <secret>` to every call, when a token is set.
#[derive(Clone)]
pub(crate) struct Authorization(Option<MetadataValue<Ascii>>);

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = WorkerServiceClient<InterceptedService<Channel, Authorization>>;

/// One configured endpoint.
struct Node {
    /// As configured, with its scheme.
    url: String,
    channel: Channel,
}

/// The configured endpoints and how to call them.
pub(crate) struct Cluster {
    nodes: Vec<Node>,
    authorization: Authorization,
    call_timeout: Duration,
}

impl Cluster {
    /// Channels to every endpoint of `config` (connected on first use).
    /// Needs a tokio runtime.
    pub(crate) fn new(config: &WorkerConfig) -> Result<Cluster, WorkerError> {
        let authorization = match config.token.as_deref().map(str::trim) {
            Some(secret) if !secret.is_empty() => Some(
                format!("Bearer {secret}")
                    .parse()
                    .map_err(|_| WorkerError::Config("the token cannot be sent in a header".into()))?,
            ),
            _ => None,
        };
        let tls = config.tls.as_ref().map(|tls| {
            let mut settings = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
                settings = settings.identity(Identity::from_pem(cert, key));
            }
            settings
        });
        let nodes = config
            .endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|raw| {
                let url = endpoint_url(raw, tls.is_some())?;
                let bad = |e: tonic::transport::Error| WorkerError::Endpoint {
                    endpoint: raw.to_string(),
                    message: error_chain(&e),
                };
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(bad)?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true);
                if let Some(tls) = &tls {
                    endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
                }
                Ok(Node {
                    url,
                    channel: endpoint.connect_lazy(),
                })
            })
            .collect::<Result<Vec<_>, WorkerError>>()?;
        if nodes.is_empty() {
            return Err(WorkerError::Config("no endpoint given".into()));
        }
        Ok(Cluster {
            nodes,
            authorization: Authorization(authorization),
            call_timeout: config.call_timeout,
        })
    }

    /// How many endpoints there are.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The endpoint after `index`, round robin.
    pub(crate) fn next(&self, index: usize) -> usize {
        (index + 1) % self.nodes.len()
    }

    /// Endpoint `index` as configured (with its scheme).
    pub(crate) fn url(&self, index: usize) -> &str {
        &self.nodes[index % self.nodes.len()].url
    }

    fn client(&self, index: usize) -> Client {
        let channel = self.nodes[index % self.nodes.len()].channel.clone();
        WorkerServiceClient::with_interceptor(channel, self.authorization.clone())
    }

    pub(crate) async fn register(
        &self,
        index: usize,
        request: proto::RegisterWorkerRequest,
    ) -> Result<proto::RegisterWorkerResponse, Status> {
        let mut client = self.client(index);
        bounded(
            self.call_timeout,
            client.register_worker(timed(request, self.call_timeout)),
        )
        .await
    }

    /// A long poll waiting at most `wait` (plus the call timeout for the
    /// answer to arrive).
    pub(crate) async fn poll(
        &self,
        index: usize,
        worker_id: &str,
        wait: Duration,
    ) -> Result<Option<proto::Task>, Status> {
        let request = proto::PollTaskRequest {
            worker_id: worker_id.to_string(),
            job_types: Vec::new(),
            wait: prost_types::Duration::try_from(wait).ok(),
        };
        let limit = wait + self.call_timeout;
        let mut client = self.client(index);
        let response = bounded(limit, client.poll_task(timed(request, limit))).await?;
        Ok(response.task)
    }

    /// A heartbeat waiting at most `timeout` (and at most the call timeout).
    pub(crate) async fn heartbeat(
        &self,
        index: usize,
        task_token: &[u8],
        timeout: Duration,
    ) -> Result<bool, Status> {
        let request = proto::HeartbeatTaskRequest {
            task_token: task_token.to_vec(),
            details: Vec::new(),
        };
        let limit = timeout.min(self.call_timeout);
        let mut client = self.client(index);
        let response = bounded(limit, client.heartbeat_task(timed(request, limit))).await?;
        Ok(response.cancel_requested)
    }

    pub(crate) async fn complete(
        &self,
        index: usize,
        request: proto::CompleteTaskRequest,
    ) -> Result<(), Status> {
        let mut client = self.client(index);
        bounded(
            self.call_timeout,
            client.complete_task(timed(request, self.call_timeout)),
        )
        .await?;
        Ok(())
    }
}

/// `raw` with a scheme: `http://` (or `https://` with TLS) when it has none.
fn endpoint_url(raw: &str, tls: bool) -> Result<String, WorkerError> {
    let refuse = |message: &str| {
        Err(WorkerError::Endpoint {
            endpoint: raw.to_string(),
            message: message.to_string(),
        })
    };
    match raw.split_once("://") {
        None => Ok(format!("{}://{raw}", if tls { "https" } else { "http" })),
        Some(("http", _)) if tls => refuse("http:// with TLS configured: use https://"),
        Some(("https", _)) if !tls => refuse("https:// needs a TLS configuration (the CA)"),
        Some(("http" | "https", _)) => Ok(raw.to_string()),
        Some(_) => refuse("the scheme must be http or https"),
    }
}

/// `message` as a request the node gives up on after `timeout` too.
fn timed<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// `call`'s answer, or `UNAVAILABLE` when none came within `limit`.
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::unavailable(format!("no answer within {limit:?}"))),
    }
}

/// Whether the node could not be reached or could not serve (see the module
/// docs): try another.
pub(crate) fn is_unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

/// Whether a refused registration or poll is final: the credential or the
/// worker's declaration is wrong, or the node has no worker service.
pub(crate) fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::Unimplemented
    )
}

/// `status` in one line: its code, message and the errors under it.
pub(crate) fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(&format!(": {error}"));
        source = error.source();
    }
    text
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// Pauses between rounds of failed attempts: 100 ms doubling to 2 s, each
/// pause drawn between half and all of its bound so that workers restarted
/// together do not retry in step.
pub(crate) struct Backoff {
    bound: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            bound: BACKOFF_INITIAL,
        }
    }

    /// Back to the shortest pause, after a success.
    pub(crate) fn reset(&mut self) {
        self.bound = BACKOFF_INITIAL;
    }

    /// The next pause (and doubles the bound).
    pub(crate) fn next_pause(&mut self) -> Duration {
        let bound = self.bound;
        self.bound = (bound * 2).min(BACKOFF_MAX);
        let jitter = RandomState::new().hash_one(0u8) % 1000;
        bound / 2 + bound / 2 * jitter as u32 / 1000
    }

    /// Sleeps the next pause; `false` when `stop` fired first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_scheme_their_tls_setting_calls_for() {
        assert_eq!(
            endpoint_url("127.0.0.1:7101", false).ok().as_deref(),
            Some("http://127.0.0.1:7101")
        );
        assert_eq!(
            endpoint_url("node:7101", true).ok().as_deref(),
            Some("https://node:7101")
        );
        assert_eq!(
            endpoint_url("http://a:1", false).ok().as_deref(),
            Some("http://a:1")
        );
        assert!(endpoint_url("http://a:1", true).is_err());
        assert!(endpoint_url("https://a:1", false).is_err());
        assert!(endpoint_url("ftp://a:1", false).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_pause()).collect();
        for (pause, bound) in pauses.iter().zip([100u64, 200, 400, 800, 1600, 2000, 2000, 2000]) {
            let bound = Duration::from_millis(bound);
            assert!(
                *pause >= bound / 2 && *pause <= bound,
                "{pause:?} not in [{:?}, {bound:?}]",
                bound / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= BACKOFF_INITIAL);
    }

    #[test]
    fn unreachable_is_unavailable_or_a_transport_failure() {
        assert!(is_unreachable(&Status::unavailable("down")));
        assert!(!is_unreachable(&Status::failed_precondition("stale")));
        let transport = Status::from_error(Box::new(std::io::Error::other("connection refused")));
        assert!(is_unreachable(&transport), "{}", describe(&transport));
    }
}
