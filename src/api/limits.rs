//! Bounds on what one node serves at once, past which a call is refused at
//! once with `RESOURCE_EXHAUSTED` (HTTP 429) naming the bound: the client
//! retries later or calls another node, and the node's memory and the
//! latency of the calls it did take stay bounded however hard it is called.
//!
//! - **Watches** (`--max-watches`, default [`DEFAULT_MAX_WATCHES`]): every
//!   `WatchRuns` and `WatchEvents` stream, over gRPC or the REST gateway's
//!   `:watch`, holds a slot while it is open: it costs a task, a
//!   subscription to the state machine's feed and a buffer of up to 256
//!   events. A stream gives its slot back when it ends: the client went
//!   away (its task notices at once, also while no event is flowing), the
//!   node shuts down, or the caller's credential stopped being valid.
//! - **Requests** (`--max-requests`, default [`DEFAULT_MAX_REQUESTS`]):
//!   every other client call (gRPC or REST) holds a slot until it is
//!   answered (see [`RequestLimitLayer`]). Without the bound a flood only
//!   queues: each call waits behind all the others, so all of them answer
//!   late (seconds) and the node's memory grows with the queue. With it,
//!   the calls past the bound are refused in microseconds and the ones
//!   taken answer in about the time the bound's worth of work takes. Not
//!   counted: watches (bounded above), the worker service (its long polls
//!   and heartbeats; workers are few and pace themselves), snapshot
//!   downloads, and the health service, which must answer probes under
//!   any load. Peer traffic (Raft, forwarded writes) is on the peer
//!   listener, not bounded here: a follower's forwarded write took a slot
//!   where the client called.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tonic::Status;
use tower::{Layer, Service};

/// Open watches per node unless `--max-watches` says otherwise.
pub const DEFAULT_MAX_WATCHES: usize = 1024;

/// Client calls in progress per node unless `--max-requests` says otherwise.
pub const DEFAULT_MAX_REQUESTS: usize = 1024;

/// Room for a bounded number of things served at once.
#[derive(Clone, Debug)]
pub struct Slots {
    slots: Arc<Semaphore>,
    max: usize,
    /// The refusal's message, given the bound.
    refusal: fn(usize) -> String,
}

/// One slot taken; dropping it gives it back.
pub type Slot = OwnedSemaphorePermit;

impl Slots {
    /// Room for `max` open watch streams (`--max-watches`).
    pub fn watches(max: usize) -> Slots {
        Slots::new(max, |max| {
            format!(
                "this node already serves {max} watches, its limit (--max-watches): \
                 retry later, or watch through another node"
            )
        })
    }

    /// Room for `max` client calls in progress (`--max-requests`).
    pub fn requests(max: usize) -> Slots {
        Slots::new(max, |max| {
            format!(
                "this node is busy: {max} calls in progress, its limit (--max-requests); \
                 retry later, or call another node"
            )
        })
    }

    fn new(max: usize, refusal: fn(usize) -> String) -> Slots {
        Slots {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refusal,
        }
    }

    /// A slot, or `RESOURCE_EXHAUSTED` naming the bound when all are taken.
    pub fn take(&self) -> Result<Slot, Status> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted((self.refusal)(self.max)))
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// Whether a call to gRPC `path` (`/package.Service/Method`) holds a
/// request slot (see the module notes for what is not counted).
pub fn counts_as_request(path: &str) -> bool {
    const NOT_COUNTED: &[&str] = &[
        "/kairos.v1.RunService/WatchRuns",
        "/kairos.v1.EventService/WatchEvents",
        "/kairos.v1.ClusterService/SaveSnapshot",
        "/kairos.v1.WorkerService/",
        "/grpc.health.v1.Health/",
    ];
    !NOT_COUNTED.iter().any(|prefix| path.starts_with(prefix))
}

/// The gRPC server's layer that holds a request slot per counted call and
/// refuses a call at once when none is free.
#[derive(Clone)]
pub struct RequestLimitLayer {
    slots: Slots,
}

impl RequestLimitLayer {
    /// A layer taking its slots from `slots`.
    pub fn new(slots: Slots) -> RequestLimitLayer {
        RequestLimitLayer { slots }
    }
}

impl<S> Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> RequestLimit<S> {
        RequestLimit {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// The routes, behind the request bound.
#[derive(Clone)]
pub struct RequestLimit<S> {
    inner: S,
    slots: Slots,
}

impl<S, B, R> Service<http::Request<B>> for RequestLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let slot = match counts_as_request(request.uri().path()) {
            true => match self.slots.take() {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    let refused = refusal.into_http();
                    return Box::pin(async move { Ok(refused) });
                }
            },
            false => None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(slot);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_past_the_bound_is_refused_until_one_is_given_back() {
        let slots = Slots::watches(2);
        let first = slots.take().unwrap();
        let _second = slots.take().unwrap();
        let refused = slots.take().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("2 watches"), "{}", refused.message());
        assert!(
            refused.message().contains("--max-watches"),
            "{}",
            refused.message()
        );
        assert_eq!(slots.taken(), 2);
        drop(first);
        assert_eq!(slots.taken(), 1);
        let _again = slots.take().expect("a slot was given back");
    }

    #[test]
    fn a_request_refusal_names_its_flag() {
        let slots = Slots::requests(1);
        let _only = slots.take().unwrap();
        let refused = slots.take().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("--max-requests"),
            "{}",
            refused.message()
        );
    }

    #[test]
    fn streams_workers_and_probes_take_no_request_slot() {
        assert!(counts_as_request("/kairos.v1.JobService/CreateJob"));
        assert!(counts_as_request("/kairos.v1.EventService/PublishEvent"));
        assert!(!counts_as_request("/kairos.v1.EventService/WatchEvents"));
        assert!(!counts_as_request("/kairos.v1.RunService/WatchRuns"));
        assert!(!counts_as_request("/kairos.v1.WorkerService/PollTask"));
        assert!(!counts_as_request("/grpc.health.v1.Health/Check"));
    }
}
