//! Requests refused before any handler runs, answered with the code and
//! message that tell the client what it did wrong.
//!
//! tonic decodes a request before it calls the handler, and refuses two kinds
//! of bad request there with statuses that blame the server and name nothing:
//!
//! - a message over the service's size limit: `OUT_OF_RANGE` "Error, decoded
//!   message length too large: found N bytes, the limit is: L bytes";
//! - bytes that are not the request message: `INTERNAL` "failed to decode
//!   Protobuf message: …" (prost's error, which names the field).
//!
//! [`WireErrorsLayer`] wraps the server's routes and rewrites both:
//!
//! - too large → `RESOURCE_EXHAUSTED` (grpc-go and grpc-java answer this code)
//!   "request is N bytes; this API accepts at most L bytes per message", plus
//!   the payload limit on `JobService`, where a large payload is the usual
//!   cause;
//! - undecodable → `INVALID_ARGUMENT` "request to /kairos.v1.JobService/CreateJob
//!   does not decode: failed to decode Protobuf message: ScheduledJob.id: …".
//!
//! Each rewritten refusal is counted in `kairos_api_requests_total` (the
//! handlers' `observed` never sees it) and logged at warn level with the
//! peer's address, at most one line per [`LOG_INTERVAL`] for the whole node:
//! one limit for all peers keeps the log and the limiter's memory bounded
//! however many addresses send garbage, and each line says how many
//! refusals went unlogged since the one before.
//!
//! Recognising them: these refusals are trailers-only responses (the status
//! in the response headers) from tonic's decode step. An `OUT_OF_RANGE` is
//! rewritten only with tonic's "decoded message length too large" text, an
//! `INTERNAL` only with prost's "failed to decode Protobuf message" prefix or
//! tonic's request-framing texts ([`UNDECODABLE_PREFIXES`]); a handler's own
//! `INTERNAL` (a node failure) passes untouched. The layer sets no limit
//! itself: each service keeps its own (the peer `RaftService` accepts
//! [`crate::raft::network::MAX_PEER_MESSAGE_BYTES`]).
//!
//! IMPLEMENTATION CAVEATS: recognition rests on tonic's and prost's message
//! texts; if an upgrade changes them, refusals fall back to tonic's codes
//! (and `tests/api.rs` fails). A refusal of a later message of a client
//! stream arrives in trailers and is not rewritten (no RPC streams requests
//! today).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::metrics::Metrics;
use crate::scheduler::job::MAX_PAYLOAD_BYTES;

/// Shortest time between two warn lines about refused requests, node-wide.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// tonic's text when a request is over the service's limit.
const TOO_LARGE_TEXT: &str = "decoded message length too large";

/// Beginnings of the `INTERNAL` messages that mean "the request's bytes are
/// not a message": prost's decode error, then tonic's framing errors (a bad
/// compression flag, a body without a message).
pub const UNDECODABLE_PREFIXES: &[&str] = &[
    "failed to decode Protobuf message",
    "protocol error: received message with",
    "Missing request message",
];

/// Path prefix of the service whose requests carry job payloads.
const JOB_SERVICE_PATH: &str = "/kairos.v1.JobService/";

/// The layer: add it to the server with `Server::builder().layer(...)`.
#[derive(Clone)]
pub struct WireErrorsLayer {
    /// Shared by every connection's copy of the service.
    shared: Arc<Shared>,
}

/// What all copies of [`WireErrors`] share.
struct Shared {
    /// Where rewritten refusals are counted.
    metrics: Arc<Metrics>,
    /// Paces the warn lines.
    log: LogLimiter,
}

impl WireErrorsLayer {
    /// A layer counting refusals in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> WireErrorsLayer {
        WireErrorsLayer {
            shared: Arc::new(Shared {
                metrics,
                log: LogLimiter::default(),
            }),
        }
    }
}

impl<S> Layer<S> for WireErrorsLayer {
    type Service = WireErrors<S>;

    fn layer(&self, inner: S) -> WireErrors<S> {
        WireErrors {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The routes, with decode-step refusals rewritten.
#[derive(Clone)]
pub struct WireErrors<S> {
    /// tonic's routes.
    inner: S,
    /// Metrics and log pacing.
    shared: Arc<Shared>,
}

impl<S, B, R> Service<http::Request<B>> for WireErrors<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let shared = self.shared.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let rewritten =
                Status::from_header_map(response.headers()).and_then(|status| rewrite(&path, &status));
            if let Some(status) = rewritten {
                shared.refused(&path, peer, &status, started.elapsed());
                // `insert` replaces tonic's grpc-status and grpc-message.
                if status.add_header(response.headers_mut()).is_ok() {
                    response.extensions_mut().insert(status);
                }
            }
            Ok(response)
        })
    }
}

impl Shared {
    /// Counts a rewritten refusal and logs it if the pace allows.
    fn refused(&self, path: &str, peer: Option<SocketAddr>, status: &Status, elapsed: Duration) {
        let method = path.rsplit('/').next().unwrap_or(path);
        self.metrics.observe_api(method, status.code(), elapsed);
        if let Some(unlogged) = self.log.admit(Instant::now()) {
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(
                %peer,
                path,
                code = ?status.code(),
                reply = status.message(),
                unlogged_since_last_line = unlogged,
                "refused an oversized or undecodable request"
            );
        }
    }
}

/// The status to answer instead of `status`, if it is a decode-step refusal.
fn rewrite(path: &str, status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::OutOfRange if message.contains(TOO_LARGE_TEXT) => {
            Some(Status::resource_exhausted(too_large_message(path, message)))
        }
        Code::Internal if UNDECODABLE_PREFIXES.iter().any(|p| message.starts_with(p)) => Some(
            Status::invalid_argument(format!("request to {path} does not decode: {message}")),
        ),
        _ => None,
    }
}

/// "request is N bytes; this API accepts at most L bytes per message", from
/// tonic's "found N bytes, the limit is: L bytes".
fn too_large_message(path: &str, tonic_message: &str) -> String {
    let number_after = |label: &str| -> Option<u64> {
        let rest = &tonic_message[tonic_message.find(label)? + label.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let mut message = match (number_after("found "), number_after("limit is: ")) {
        (Some(found), Some(limit)) => {
            format!("request is {found} bytes; this API accepts at most {limit} bytes per message")
        }
        _ => format!("request is larger than this API accepts ({tonic_message})"),
    };
    if path.starts_with(JOB_SERVICE_PATH) {
        message.push_str(&format!(
            " (a job's payload may be at most {MAX_PAYLOAD_BYTES} bytes, {} MiB)",
            MAX_PAYLOAD_BYTES >> 20
        ));
    }
    message
}

/// At most one admitted line per [`LOG_INTERVAL`], counting the rest.
#[derive(Default)]
struct LogLimiter {
    /// Behind a lock: refusals arrive on any connection's task.
    pace: Mutex<Pace>,
}

/// The limiter's memory: two numbers, whatever the number of peers.
#[derive(Default)]
struct Pace {
    /// When the last line was admitted.
    last_line: Option<Instant>,
    /// Refusals held back since then.
    unlogged: u64,
}

impl LogLimiter {
    /// `Some(unlogged)` when a line may be written at `now` (`unlogged`
    /// refusals were held back since the previous line), `None` to stay silent.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        if pace
            .last_line
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_INTERVAL)
        {
            pace.unlogged += 1;
            return None;
        }
        pace.last_line = Some(now);
        Some(std::mem::take(&mut pace.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto as pb;

    const CREATE: &str = "/kairos.v1.JobService/CreateJob";

    #[test]
    fn too_large_becomes_resource_exhausted_naming_both_sizes() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 2097170 bytes, the limit is: 2097152 bytes",
        );
        let status = rewrite(CREATE, &tonic).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request is 2097170 bytes; this API accepts at most 2097152 bytes per message \
             (a job's payload may be at most 1048576 bytes, 1 MiB)"
        );
        let run = rewrite("/kairos.v1.RunService/TriggerJob", &tonic).unwrap();
        assert!(!run.message().contains("payload"), "{}", run.message());
    }

    #[test]
    fn an_unparsable_size_message_still_names_tonics_text() {
        let tonic = Status::out_of_range("decoded message length too large: 5 MB");
        let status = rewrite("/kairos.v1.RunService/GetRun", &tonic).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status
            .message()
            .contains("(decoded message length too large: 5 MB)"));
    }

    #[test]
    fn a_decode_error_becomes_invalid_argument_naming_the_field() {
        // What tonic-prost answers for these bytes: prost's error as INTERNAL.
        let garbage = [0x0a, 0x03, 0x0a, 0xff, 0xff];
        let error = pb::CreateJobRequest::decode(&garbage[..]).unwrap_err();
        let status = rewrite(CREATE, &Status::internal(error.to_string())).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("request to /kairos.v1.JobService/CreateJob does not decode: failed to decode Protobuf message: "),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("CreateJobRequest.job"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_handlers_own_statuses_pass_untouched() {
        for status in [
            Status::internal("raft: storage error"),
            Status::out_of_range("page token past the end"),
            Status::invalid_argument("id: must not be empty"),
            Status::unavailable("no leader"),
        ] {
            assert!(rewrite(CREATE, &status).is_none(), "{status:?}");
        }
    }

    #[test]
    fn the_log_admits_one_line_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit(t0 + LOG_INTERVAL - Duration::from_millis(1)), None);
        assert_eq!(limiter.admit(t0 + LOG_INTERVAL), Some(2));
        assert_eq!(limiter.admit(t0 + LOG_INTERVAL), None);
        assert_eq!(limiter.admit(t0 + LOG_INTERVAL * 3), Some(1));
    }
}
