//! Write Kairos external workers in Rust.
//!
//! Kairos runs jobs of built-in types (`noop`, `sleep`, `http`, `exec`) on its
//! own nodes. Any other job type is served by *external workers*: programs
//! that speak the `WorkerService` gRPC protocol (`proto/kairos/v1/worker.proto`).
//! This crate is that protocol's client: give it a [`WorkerConfig`] and a
//! [`TaskHandler`], and [`Worker::run`] registers, polls, heartbeats and
//! completes for you until you cancel its shutdown token.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kairos_worker::{JobTypeSpec, TaskContext, TaskError, Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), kairos_worker::WorkerError> {
//! let config = WorkerConfig {
//!     endpoints: vec!["http://127.0.0.1:7101".into(), "http://127.0.0.1:7102".into()],
//!     token: Some("secret".into()),
//!     job_types: vec![JobTypeSpec::new("example.echo")],
//!     ..WorkerConfig::default()
//! };
//! let handler = Arc::new(|task: TaskContext| async move {
//!     String::from_utf8(task.payload).map_err(|e| TaskError::non_retryable(e.to_string()))
//! });
//! let shutdown = CancellationToken::new();
//! Worker::run(config, handler, shutdown).await
//! # }
//! ```
//!
//! # The protocol
//!
//! 1. **Register.** `RegisterWorker` declares the worker's name, the job types
//!    it serves (each with an optional JSON Schema for the payload) and its
//!    capacity. The node that answers *holds* the registration and returns a
//!    `worker_id` and a `heartbeat_interval`. The worker tries the configured
//!    endpoints in order and keeps the first that answers; after a full round
//!    of failures it backs off (100 ms doubling to 2 s) and goes round again.
//! 2. **Poll.** `capacity` poll loops long-poll that node with `PollTask`
//!    (each waits at most [`WorkerConfig::poll_wait`], cut to the heartbeat
//!    interval so that an idle worker is never silent for long). An empty
//!    answer means nothing was assigned; a loop that receives a task runs it
//!    and polls again only once the task is completed, so at most `capacity`
//!    tasks run at once.
//! 3. **Run.** Each task is one attempt of one run. Its handler runs in its own
//!    tokio task and receives a [`TaskContext`] with the task's fields.
//! 4. **Heartbeat.** While the handler runs, and until its result is recorded,
//!    `HeartbeatTask` extends the task's lease every third of the task's
//!    `heartbeat_timeout` (at least every 50 ms). The answer says whether the
//!    run was cancelled.
//! 5. **Complete.** The handler's `Ok(output)` or `Err(TaskError)` is sent
//!    with `CompleteTask`.
//!
//! # Fencing
//!
//! A task's opaque `task_token` names one attempt. Once that attempt is no
//! longer current (its lease expired, the run was cancelled or ended, a newer
//! attempt started) the cluster refuses the token with `FAILED_PRECONDITION`
//! and changes nothing; a token it never issued is refused with
//! `INVALID_ARGUMENT`. Both are final for the attempt: a heartbeat refused so
//! cancels the handler's token ([`CancelReason::LeaseLost`]) and stops the
//! heartbeats, and the result is then discarded without a `CompleteTask`; a
//! `CompleteTask` refused so is logged ("result discarded") and never retried.
//! Another worker may by then be running a newer attempt of the same run, so a
//! handler whose token fires should stop touching the outside world; the
//! task's [`TaskContext::idempotency_key`] is the same for every attempt of a
//! run, for side effects that must happen once.
//!
//! # Reconnecting
//!
//! * `PollTask` answered `NOT_FOUND`: the node no longer knows the worker (it
//!   restarted, or dropped the worker as silent). The worker registers again,
//!   on the same endpoint first, and gets a new `worker_id`.
//! * `UNAVAILABLE`, a transport error, or no answer within
//!   [`WorkerConfig::call_timeout`]: the node is down or unreachable. A poll
//!   loop registers again on the *next* endpoint; a heartbeat or a
//!   `CompleteTask` is sent to the next endpoint (any node accepts a task's
//!   token). `CompleteTask` is retried that way, with back-off, until the
//!   cluster answers; the heartbeats keep the lease meanwhile.
//! * All poll loops share one registration: when several notice the same
//!   failure, one registers again and the others pick up its result.
//! * `UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT` or
//!   `UNIMPLEMENTED` when registering or polling are not transient:
//!   [`Worker::run`] stops and returns [`WorkerError::Rejected`].
//!
//! **Liveness.** The cluster drops a worker silent for three heartbeat
//! intervals. A free poll loop is never silent that long (its poll wait is
//! cut to the interval). When every slot is busy no poll is in flight, and
//! the tasks' heartbeats are the worker's only sign of life: the cluster
//! counts them for the worker that holds the task.
//!
//! # Authentication and TLS
//!
//! With [`WorkerConfig::token`] set, every call carries
//! `authorization: Bearer <secret>`; the token needs `worker:connect` on the
//! job types served. With [`WorkerConfig::tls`] the worker speaks TLS
//! (rustls with aws-lc), verifies the nodes against the given CA and, if a
//! client certificate and key are given, presents them.
//!
//! # Shutdown
//!
//! Cancelling the shutdown token given to [`Worker::run`] stops polling at
//! once (a poll in flight is abandoned: a task the node assigned to it at that
//! instant is retried by the cluster when its lease expires), cancels every
//! running task's token ([`CancelReason::Shutdown`]), waits for the handlers
//! to return and their results to be sent, and returns. That wait is bounded
//! by [`WorkerConfig::shutdown_grace`]; tasks still running then are
//! abandoned and their leases expire.
//!
//! # Observing
//!
//! [`Worker::with_events`] sends a [`WorkerEvent`] for each registration,
//! task received, cancellation requested and task completed: tests await those
//! instead of sleeping, and a program can log them.
//!
//! The generated protobuf types and the raw gRPC client (and server) are in
//! [`proto`], for calls this crate does not make itself.

#![warn(missing_docs)]

mod cluster;
mod config;
mod error;
mod events;
mod task;
mod worker;

/// The messages and services of `kairos.v1.WorkerService`, generated from
/// `proto/kairos/v1/worker.proto` by prost and tonic: the raw client
/// ([`proto::worker_service_client::WorkerServiceClient`]) for calls of your
/// own, and the server trait ([`proto::worker_service_server::WorkerService`])
/// for a fake cluster in tests.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kairos.v1");
}

pub use config::{JobTypeSpec, TlsConfig, WorkerConfig};
pub use error::WorkerError;
pub use events::WorkerEvent;
pub use task::{CancelReason, TaskContext, TaskError, TaskHandler};
pub use worker::Worker;

/// Re-exported so that a program need not depend on tokio-util itself
/// (shutdown tokens; tasks' cancellation).
pub use tokio_util::sync::CancellationToken;
/// Re-exported: [`WorkerEvent::TaskCompleted`] carries one.
pub use tonic::Code;
