//! The worker's machinery: one shared registration, `capacity` poll loops,
//! and for each task a handler, a heartbeat loop and a `CompleteTask`.
//!
//! ```text
//! Worker::serve ── register (round robin) ──▶ Session { worker_id, endpoint }
//!      │                                           ▲ renew on NOT_FOUND (same endpoint)
//!      ├─ poll loop 1 ─ PollTask ─▶ run_task ──────┘       or unreachable (next endpoint)
//!      ├─ ...                        ├─ handler (own tokio task)
//!      └─ poll loop N                ├─ keep_lease: HeartbeatTask every timeout/3
//!                                    └─ complete: CompleteTask, retried while unreachable
//! ```
//!
//! Stopping: `stop` is a child of the caller's shutdown token, also
//! cancelled when a poll loop meets a permanent refusal (the error is kept
//! for [`Worker::serve`] to return). Every task's cancellation token is a
//! child of `stop`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::cluster::{describe, is_permanent, is_unreachable, Backoff, Cluster};
use crate::config::{WorkerConfig, MAX_POLL_WAIT};
use crate::error::WorkerError;
use crate::events::WorkerEvent;
use crate::proto;
use crate::task::{CancelReason, Cancellation, TaskContext, TaskError, TaskHandler};

/// The shortest pause between two heartbeats of a task.
const MIN_HEARTBEAT_PERIOD: Duration = Duration::from_millis(50);
/// The shortest wait for a heartbeat's answer (else the heartbeat period,
/// bounded by the call timeout).
const MIN_HEARTBEAT_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// The lease assumed when a task carries no `heartbeat_timeout` and the
/// registration no interval.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest poll wait, whatever the heartbeat interval.
const MIN_POLL_WAIT: Duration = Duration::from_millis(50);

/// A Kairos external worker: serves its job types with a [`TaskHandler`]
/// until its shutdown token is cancelled. See the crate docs for the protocol.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    events: Option<UnboundedSender<WorkerEvent>>,
}

impl Worker {
    /// Runs a worker with `config` and `handler` until `shutdown` is
    /// cancelled (then shuts down gracefully and returns `Ok`) or the cluster
    /// refuses it for good. Same as `Worker::new(config).serve(handler, shutdown)`.
    pub async fn run<H: TaskHandler>(
        config: WorkerConfig,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), WorkerError> {
        Worker::new(config).serve(handler, shutdown).await
    }

    /// A worker with `config`, not yet running.
    pub fn new(config: WorkerConfig) -> Self {
        Worker { config, events: None }
    }

    /// Sends a [`WorkerEvent`] to `events` at each step (events are dropped
    /// silently once the receiver is gone).
    pub fn with_events(mut self, events: UnboundedSender<WorkerEvent>) -> Self {
        self.events = Some(events);
        self
    }

    /// Registers, polls and runs tasks with `handler` until `shutdown` is
    /// cancelled, then stops polling, cancels the running tasks' tokens and
    /// waits (at most [`WorkerConfig::shutdown_grace`]) for their handlers to
    /// return and their results to be sent.
    ///
    /// Returns `Ok` after a shutdown (also one during the first
    /// registration), an error for a configuration that cannot work or a
    /// permanent refusal by the cluster (after the same graceful stop).
    pub async fn serve<H: TaskHandler>(
        self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), WorkerError> {
        self.config.validate()?;
        let cluster = Cluster::new(&self.config)?;
        let stop = shutdown.child_token();
        let shared = Arc::new(Shared {
            cluster,
            register_request: proto::RegisterWorkerRequest {
                worker_name: self.config.worker_name.clone(),
                job_types: self.config.job_types.iter().map(Into::into).collect(),
                capacity: self.config.capacity,
            },
            poll_wait: self.config.poll_wait.min(MAX_POLL_WAIT),
            events: self.events,
            current: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            stop: stop.clone(),
            fatal: Mutex::new(None),
        });

        match shared.renew(None, 0).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(error) => return Err(error),
        }

        let mut slots = JoinSet::new();
        for slot in 0..self.config.capacity {
            let (shared, handler) = (shared.clone(), handler.clone());
            slots.spawn(async move {
                if let Err(error) = shared.poll_loop(handler).await {
                    tracing::error!(slot, %error, "worker stopping");
                    shared.fail(error);
                }
            });
        }

        stop.cancelled().await;
        tracing::info!("worker stopping: no more polls; waiting for running tasks");
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while let Some(joined) = slots.join_next().await {
                if let Err(error) = joined {
                    tracing::error!(%error, "a poll loop panicked");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace = ?self.config.shutdown_grace,
                running = slots.len(),
                "tasks still running after the shutdown grace are abandoned (their leases will expire)"
            );
            slots.shutdown().await;
        }
        let fatal = shared.fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The registration the poll loops share.
#[derive(Debug)]
struct Registration {
    worker_id: String,
    /// Index of the endpoint that holds it.
    endpoint: usize,
    heartbeat_interval: Option<Duration>,
    /// Counts registrations: a loop asking to renew an older one gets the
    /// current one instead of registering again.
    generation: u64,
}

/// What every poll loop and task of one worker shares.
struct Shared {
    cluster: Cluster,
    register_request: proto::RegisterWorkerRequest,
    poll_wait: Duration,
    events: Option<UnboundedSender<WorkerEvent>>,
    /// The registration the poll loops use; `None` only before the first.
    current: Mutex<Option<Arc<Registration>>>,
    /// Held while registering again, so that one loop does it for all.
    renewing: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    /// The first permanent error, returned by [`Worker::serve`].
    fatal: Mutex<Option<WorkerError>>,
}

impl Shared {
    fn emit(&self, event: WorkerEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Keeps `error` for [`Worker::serve`] (the first one wins) and stops.
    fn fail(&self, error: WorkerError) {
        self.fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(error);
        self.stop.cancel();
    }

    /// The registration in use.
    fn current(&self) -> Option<Arc<Registration>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A registration newer than `stale`: the current one if another loop
    /// has renewed it already, else a new one, trying endpoints round robin
    /// from `start`. `Ok(None)` when stopped first.
    async fn renew(
        &self,
        stale: Option<&Registration>,
        start: usize,
    ) -> Result<Option<Arc<Registration>>, WorkerError> {
        let _renewing = self.renewing.lock().await;
        let generation = match (self.current(), stale) {
            (Some(current), Some(stale)) if current.generation != stale.generation => {
                return Ok(Some(current));
            }
            (Some(current), _) => current.generation + 1,
            (None, _) => 1,
        };
        let Some(registration) = self.register(start, generation).await? else {
            return Ok(None);
        };
        let registration = Arc::new(registration);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(registration.clone());
        Ok(Some(registration))
    }

    /// Registers with the first endpoint that answers, from `start`, round
    /// robin, backing off between full rounds. `Ok(None)` when stopped.
    async fn register(&self, start: usize, generation: u64) -> Result<Option<Registration>, WorkerError> {
        let mut backoff = Backoff::new();
        let mut endpoint = start % self.cluster.len();
        loop {
            for _ in 0..self.cluster.len() {
                let answer = tokio::select! {
                    _ = self.stop.cancelled() => return Ok(None),
                    answer = self.cluster.register(endpoint, self.register_request.clone()) => answer,
                };
                let url = self.cluster.url(endpoint);
                match answer {
                    Ok(response) => {
                        tracing::info!(
                            worker_id = %response.worker_id,
                            node_id = response.node_id,
                            endpoint = url,
                            "registered"
                        );
                        self.emit(WorkerEvent::Registered {
                            worker_id: response.worker_id.clone(),
                            node_id: response.node_id,
                            endpoint: url.to_string(),
                        });
                        return Ok(Some(Registration {
                            worker_id: response.worker_id,
                            endpoint,
                            heartbeat_interval: response
                                .heartbeat_interval
                                .and_then(|d| Duration::try_from(d).ok())
                                .filter(|d| !d.is_zero()),
                            generation,
                        }));
                    }
                    Err(status) if is_permanent(status.code()) => {
                        return Err(WorkerError::Rejected {
                            endpoint: url.to_string(),
                            code: status.code(),
                            message: status.message().to_string(),
                        });
                    }
                    Err(status) => {
                        tracing::warn!(
                            endpoint = url,
                            error = describe(&status),
                            "register failed; next endpoint"
                        );
                        endpoint = self.cluster.next(endpoint);
                    }
                }
            }
            if !backoff.wait(&self.stop).await {
                return Ok(None);
            }
        }
    }

    /// One slot: polls the registered node and runs each task it gets, until
    /// stopped. Renews the registration when the node forgets the worker or
    /// cannot be reached.
    async fn poll_loop<H: TaskHandler>(self: &Arc<Self>, handler: Arc<H>) -> Result<(), WorkerError> {
        let Some(mut registration) = self.current() else {
            return Ok(());
        };
        let mut backoff = Backoff::new();
        // Whether the last poll failed: a registration that fails again
        // right away (a node that keeps forgetting the worker, or answers
        // RegisterWorker but not PollTask) is renewed after a pause.
        let mut failing = false;
        loop {
            // Another loop may have registered again (its poll failed first):
            // follow it rather than keep the old registration alive.
            if let Some(current) = self.current() {
                registration = current;
            }
            let wait = registration
                .heartbeat_interval
                .map_or(self.poll_wait, |interval| self.poll_wait.min(interval))
                .max(MIN_POLL_WAIT);
            let answer = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                answer = self.cluster.poll(registration.endpoint, &registration.worker_id, wait) => answer,
            };
            let renew_from = match answer {
                Ok(Some(task)) => {
                    backoff.reset();
                    failing = false;
                    self.run_task(&handler, task, &registration).await;
                    None
                }
                Ok(None) => {
                    backoff.reset();
                    failing = false;
                    None
                }
                Err(status) if status.code() == Code::NotFound => {
                    tracing::info!(worker_id = %registration.worker_id, "the node no longer knows the worker; registering again");
                    Some(registration.endpoint)
                }
                Err(status) if is_unreachable(&status) => {
                    tracing::warn!(
                        endpoint = self.cluster.url(registration.endpoint),
                        error = describe(&status),
                        "poll failed; registering with the next endpoint"
                    );
                    Some(self.cluster.next(registration.endpoint))
                }
                Err(status) if is_permanent(status.code()) => {
                    return Err(WorkerError::Rejected {
                        endpoint: self.cluster.url(registration.endpoint).to_string(),
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
                Err(status) => {
                    tracing::warn!(error = describe(&status), "poll refused; retrying after a pause");
                    if !backoff.wait(&self.stop).await {
                        return Ok(());
                    }
                    None
                }
            };
            if let Some(start) = renew_from {
                if failing && !backoff.wait(&self.stop).await {
                    return Ok(());
                }
                failing = true;
                match self.renew(Some(&registration), start).await? {
                    Some(renewed) => registration = renewed,
                    None => return Ok(()),
                }
            }
            if self.stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Runs one task to its end: the handler, heartbeats until the result is
    /// recorded (or the attempt is lost), and `CompleteTask`.
    async fn run_task<H: TaskHandler>(
        self: &Arc<Self>,
        handler: &Arc<H>,
        task: proto::Task,
        registration: &Registration,
    ) {
        let cancellation = Cancellation::child_of(&self.stop);
        let context = TaskContext::new(task, cancellation.clone());
        let lease_period = context
            .heartbeat_timeout
            .filter(|d| !d.is_zero())
            .or(registration.heartbeat_interval)
            .unwrap_or(DEFAULT_LEASE);
        let lease = Lease {
            task_token: context.task_token.clone(),
            run_id: context.run_id,
            attempt: context.attempt,
            cancellation,
            lost_code: OnceLock::new(),
            lost: CancellationToken::new(),
            endpoint: AtomicUsize::new(registration.endpoint),
        };
        tracing::debug!(run_id = lease.run_id, attempt = lease.attempt, job_id = %context.job_id, "task received");
        self.emit(WorkerEvent::TaskReceived {
            job_id: context.job_id.clone(),
            run_id: context.run_id,
            attempt: context.attempt,
            nominal_time: context.nominal_time,
            task_token: context.task_token.clone(),
        });

        let handler = handler.clone();
        let mut running = AbortOnDrop(tokio::spawn(async move { handler.run(context).await }));
        let work = async {
            let result = match (&mut running.0).await {
                Ok(result) => result,
                Err(error) => {
                    tracing::error!(run_id = lease.run_id, %error, "handler panicked");
                    Err(TaskError::new(format!("handler panicked: {error}")).with_kind("panic"))
                }
            };
            self.complete(&lease, result).await
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            never = self.keep_lease(&lease, lease_period) => match never {},
        };
        self.emit(WorkerEvent::TaskCompleted {
            run_id: lease.run_id,
            attempt: lease.attempt,
            outcome,
        });
    }

    /// Heartbeats `lease` every third of `lease_period` (at least every
    /// 50 ms), forever: the caller drops this future when the task is over.
    /// Cancels the task on `cancel_requested`, and for good when the attempt
    /// is no longer current (then stops heartbeating).
    async fn keep_lease(&self, lease: &Lease, lease_period: Duration) -> Infallible {
        let period = (lease_period / 3).max(MIN_HEARTBEAT_PERIOD);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cancel_reported = false;
        loop {
            ticks.tick().await;
            match self
                .heartbeat(lease, period.max(MIN_HEARTBEAT_CALL_TIMEOUT))
                .await
            {
                Ok(cancel_requested) => {
                    if cancel_requested && !cancel_reported {
                        cancel_reported = true;
                        tracing::info!(run_id = lease.run_id, "run cancelled; cancelling the handler");
                        self.emit(WorkerEvent::CancelRequested {
                            run_id: lease.run_id,
                            attempt: lease.attempt,
                        });
                        lease.cancellation.cancel(CancelReason::CancelRequested);
                    }
                }
                Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::InvalidArgument) => {
                    tracing::warn!(
                        run_id = lease.run_id,
                        attempt = lease.attempt,
                        error = describe(&status),
                        "lease lost: the attempt is no longer current; cancelling the handler"
                    );
                    lease.lose(status.code());
                    return std::future::pending().await;
                }
                Err(status) => {
                    tracing::warn!(
                        run_id = lease.run_id,
                        error = describe(&status),
                        "heartbeat failed"
                    );
                }
            }
        }
    }

    /// One heartbeat, through the lease's endpoint or, while they are
    /// unreachable, each next one once; a node silent for `timeout` counts
    /// as unreachable (so that a hung node cannot outlast the lease).
    /// `Ok(cancel_requested)`.
    async fn heartbeat(&self, lease: &Lease, timeout: Duration) -> Result<bool, Status> {
        let mut endpoint = lease.endpoint.load(Ordering::Relaxed);
        let mut last = Status::unavailable("no endpoint");
        for _ in 0..self.cluster.len() {
            match self.cluster.heartbeat(endpoint, &lease.task_token, timeout).await {
                Err(status) if is_unreachable(&status) => {
                    tracing::debug!(
                        endpoint = self.cluster.url(endpoint),
                        error = describe(&status),
                        "heartbeat: next endpoint"
                    );
                    endpoint = self.cluster.next(endpoint);
                    lease.endpoint.store(endpoint, Ordering::Relaxed);
                    last = status;
                }
                answer => return answer,
            }
        }
        Err(last)
    }

    /// Sends the handler's `result`, retrying across endpoints (with
    /// back-off between rounds) while they are unreachable, until recorded
    /// or refused, or the lease is lost meanwhile.
    async fn complete(&self, lease: &Lease, result: Result<String, TaskError>) -> Result<(), Code> {
        let request = proto::CompleteTaskRequest {
            task_token: lease.task_token.clone(),
            result: Some(match result {
                Ok(output) => proto::complete_task_request::Result::Success(proto::TaskSuccess { output }),
                Err(error) => proto::complete_task_request::Result::Failure(error.into()),
            }),
        };
        let mut backoff = Backoff::new();
        let mut failures_in_round = 0;
        loop {
            if let Some(code) = lease.lost() {
                tracing::info!(
                    run_id = lease.run_id,
                    attempt = lease.attempt,
                    "result discarded: the attempt is no longer current"
                );
                return Err(code);
            }
            let endpoint = lease.endpoint.load(Ordering::Relaxed);
            let status = match self.cluster.complete(endpoint, request.clone()).await {
                Ok(()) => {
                    tracing::debug!(run_id = lease.run_id, attempt = lease.attempt, "task completed");
                    return Ok(());
                }
                Err(status) => status,
            };
            match status.code() {
                _ if is_unreachable(&status) => {
                    tracing::warn!(
                        run_id = lease.run_id,
                        endpoint = self.cluster.url(endpoint),
                        error = describe(&status),
                        "complete failed; retrying with the next endpoint"
                    );
                    lease
                        .endpoint
                        .store(self.cluster.next(endpoint), Ordering::Relaxed);
                    failures_in_round += 1;
                    if failures_in_round >= self.cluster.len() {
                        failures_in_round = 0;
                        // Ends early when a heartbeat learns the attempt is lost.
                        backoff.wait(&lease.lost).await;
                    }
                }
                Code::FailedPrecondition => {
                    tracing::info!(
                        run_id = lease.run_id,
                        attempt = lease.attempt,
                        "result discarded: the attempt is no longer current"
                    );
                    return Err(Code::FailedPrecondition);
                }
                code => {
                    tracing::error!(
                        run_id = lease.run_id,
                        attempt = lease.attempt,
                        error = describe(&status),
                        "the result was refused"
                    );
                    return Err(code);
                }
            }
        }
    }
}

/// A running task's lease, shared by its heartbeat loop and its completion.
struct Lease {
    task_token: Vec<u8>,
    run_id: u64,
    attempt: u32,
    /// The handler's token.
    cancellation: Cancellation,
    /// The code that said the attempt is no longer current, once one did.
    lost_code: OnceLock<Code>,
    /// Fires when the attempt is lost (ends the completion's back-off).
    lost: CancellationToken,
    /// The endpoint heartbeats and completion go to next.
    endpoint: AtomicUsize,
}

impl Lease {
    /// The attempt is no longer current: cancels the handler for good.
    fn lose(&self, code: Code) {
        let _ = self.lost_code.set(code);
        self.lost.cancel();
        self.cancellation.cancel(CancelReason::LeaseLost);
    }

    /// The code that said the attempt is no longer current, if one did.
    fn lost(&self) -> Option<Code> {
        self.lost_code.get().copied()
    }
}

/// A spawned task aborted when its owner is dropped (the shutdown grace ran
/// out while its handler was still running).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
