//! Worker pools: every node runs one `WorkerPool` supervising `N` `Worker`s.
//!
//! The pool joins the process group `kairos-workers/<raft node id>`, which
//! ractor_cluster synchronizes to every connected node, so the leader's
//! dispatcher can send it work wherever it runs. A work item is one attempt
//! of a run, carrying its fencing token.
//!
//! A worker runs the handler on its own task and, while it runs, heartbeats
//! the attempt's lease through Raft (`Heartbeat`, forwarded to the leader). A
//! refused heartbeat (stale token) or a cancelled run cancels the handler. The
//! result goes to the node's [`ResultReporter`], which commits the results of
//! all the pool's workers in batches (`FinishAttempts`) and re-sends them
//! until a leader commits them, so a result that lands during a failover is
//! not lost; a repeat of a committed result is acknowledged by the state machine.
//!
//! An attempt started ahead of its time (the leader commits fires and starts
//! up to `--fire-ahead-ms` early) waits in the pool, without a worker, until
//! its `begin_at_ms`; then a worker takes it. Just before the handler begins,
//! the worker looks at its own replica: if that has applied the entry that
//! started the attempt and the run has since been cancelled (a pause within
//! the look-ahead), removed (its job deleted) or given to a newer attempt,
//! the handler does not run. A replica that has not caught up cannot tell,
//! and the handler runs, as it would have a moment earlier.
//!
//! A handler that panics fails its attempt with the panic message (retried by
//! policy); the worker then fails on purpose and its pool restarts it. The
//! failure is the worker's only word to the pool then: it does not also say
//! it is idle, so the pool never hands the next attempt to a dying worker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::reporter::ResultReporter;
use super::WORKER_PRINCIPAL;
use crate::error::Error;
use crate::handlers::{HandlerError, Registry, RunContext};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft::encode;
use crate::scheduler::run::{AttemptOutcome, AttemptResult, RunId};
use crate::scheduler::{Command, Response};

/// Most work items a pool queues beyond its busy workers.
const MAX_QUEUED_ITEMS: usize = 10_000;

/// The process group of the worker pool of Raft node `id`.
pub fn group(id: u64) -> String {
    format!("kairos-workers/{id}")
}

/// One attempt of a run, as sent to a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The run.
    pub run_id: RunId,
    /// The attempt's fencing token.
    pub token: u64,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// The job.
    pub job_id: String,
    /// Handler name.
    pub job_type: String,
    /// Handler input.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Nominal fire time, Unix ms.
    pub nominal_ms: i64,
    /// When the handler may begin, Unix ms (the nominal time, or a retry's
    /// back-off, when the attempt was started ahead of it).
    pub begin_at_ms: i64,
    /// `job_id:nominal_time` (or `job_id:event_id`).
    pub idempotency_key: String,
    /// The published event behind the run, if any (format version 6 on).
    pub event_id: String,
    /// That event's payload.
    #[serde(with = "serde_bytes")]
    pub event_payload: Vec<u8>,
    /// Longest the attempt may take, ms.
    pub attempt_timeout_ms: u64,
    /// Lease length, ms (heartbeats go out three times per lease).
    pub heartbeat_timeout_ms: u64,
    /// W3C `traceparent` of the dispatch (empty when not traced). Not part
    /// of the encoded item: it travels as the message's trailer
    /// ([`encode_item`]), which builds that do not trace ignore.
    #[serde(skip)]
    pub trace_parent: String,
}

/// What a pool tells the dispatcher about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Number of workers.
    pub workers: u64,
    /// Job types this node can run (`exec` only with `--allow-exec`).
    pub job_types: Vec<String>,
}

/// Messages of a pool; `Execute` and `Info` may come from another node.
#[derive(ractor_cluster::RactorClusterMessage)]
pub enum WorkerPoolMsg {
    /// Run an attempt: a postcard-encoded [`WorkItem`].
    Execute(Vec<u8>),
    /// The pool's [`PoolInfo`], postcard-encoded.
    #[rpc]
    Info(RpcReplyPort<Vec<u8>>),
    /// Worker `n` is free again (local).
    WorkerIdle(u64),
    /// Waiting attempts may have come due (local, from the pool's own timer).
    Begin,
}

/// Messages of a worker (local).
#[derive(ractor_cluster::RactorMessage)]
pub enum WorkerMsg {
    /// Run this attempt.
    Run(WorkItem),
}

/// What a pool needs.
pub struct PoolArgs {
    /// Where lateness, outcomes and busy workers are recorded.
    pub metrics: Arc<Metrics>,
    /// The local node (to heartbeat and report through Raft).
    pub node: Arc<Node>,
    /// Handlers by job type.
    pub registry: Arc<Registry>,
    /// Number of workers.
    pub workers: usize,
}

/// The pool supervisor.
pub struct WorkerPool;

/// A pool's state.
pub struct PoolState {
    env: WorkerEnv,
    workers: Vec<ActorRef<WorkerMsg>>,
    /// What each worker is running, if anything.
    running: Vec<Option<WorkItem>>,
    idle: VecDeque<usize>,
    /// Attempts ready to begin, waiting for a worker.
    queue: VecDeque<WorkItem>,
    /// Attempts started ahead, by `(begin_at_ms, run)`: they join `queue` then.
    waiting: BTreeMap<(i64, RunId), WorkItem>,
    /// The `begin_at_ms` a [`WorkerPoolMsg::Begin`] is scheduled for, if any.
    begin_armed_for: Option<i64>,
}

/// The wall-clock time, Unix µs.
fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl PoolState {
    /// Takes `item`: into the ready queue if it may begin now, else into
    /// `waiting` (arming a [`WorkerPoolMsg::Begin`] for it).
    fn accept(&mut self, myself: &ActorRef<WorkerPoolMsg>, item: WorkItem) {
        if item.begin_at_ms.saturating_mul(1000) <= now_us() {
            self.queue.push_back(item);
        } else {
            self.waiting.insert((item.begin_at_ms, item.run_id), item);
            self.arm_begin(myself);
        }
    }

    /// Moves every waiting attempt that may begin now to the ready queue and
    /// arms the next [`WorkerPoolMsg::Begin`].
    fn release_due(&mut self, myself: &ActorRef<WorkerPoolMsg>) {
        self.begin_armed_for = None;
        let now = now_us();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0.saturating_mul(1000) > now {
                break;
            }
            self.queue.push_back(entry.remove());
        }
        self.arm_begin(myself);
    }

    /// Schedules a [`WorkerPoolMsg::Begin`] at the earliest waiting attempt,
    /// unless one is already due no later.
    fn arm_begin(&mut self, myself: &ActorRef<WorkerPoolMsg>) {
        let Some(&(first, _)) = self.waiting.keys().next() else {
            return;
        };
        if self.begin_armed_for.is_some_and(|armed| armed <= first) {
            return;
        }
        // At most a second (`crate::wall_clock`): a wall clock that steps
        // is followed, since every `Begin` re-arms.
        let delay = Duration::from_micros(first.saturating_mul(1000).saturating_sub(now_us()).max(0) as u64)
            .min(crate::wall_clock::RECHECK);
        myself.send_after(delay, || WorkerPoolMsg::Begin);
        self.begin_armed_for = Some(first);
    }

    fn queued(&self) -> usize {
        self.queue.len() + self.waiting.len()
    }

    fn dispatch(&mut self) {
        self.assign();
        self.env
            .metrics
            .set_busy_workers(self.workers.len() - self.idle.len());
    }

    fn assign(&mut self) {
        while let (Some(&n), false) = (self.idle.front(), self.queue.is_empty()) {
            let item = self.queue.pop_front().expect("not empty");
            self.idle.pop_front();
            self.running[n] = Some(item.clone());
            if self.workers[n].send_message(WorkerMsg::Run(item)).is_err() {
                tracing::warn!(worker = n, "worker mailbox closed; its supervisor restarts it");
            }
        }
    }
}

/// What every worker of a pool shares.
#[derive(Clone)]
pub struct WorkerEnv {
    /// The local node (to heartbeat and report through Raft).
    node: Arc<Node>,
    /// Handlers by job type.
    registry: Arc<Registry>,
    /// Where lateness and outcomes are recorded.
    metrics: Arc<Metrics>,
    /// Commits results to the leader in batches.
    results: ResultReporter,
}

async fn spawn_worker(
    pool: &ActorRef<WorkerPoolMsg>,
    env: &WorkerEnv,
    n: usize,
) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
    let args = WorkerArgs {
        env: env.clone(),
        index: n,
        pool: pool.clone(),
    };
    let (worker, _) = Actor::spawn_linked(None, Worker, args, pool.get_cell()).await?;
    Ok(worker)
}

impl Actor for WorkerPool {
    type Msg = WorkerPoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerPoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        // The reporter's task is the node's: it outlives the pool until its
        // queue is drained, and it stops when the node stops.
        let node = &args.node;
        let (results, _) = ResultReporter::spawn(node.clone(), node.tasks(), node.stopping());
        let env = WorkerEnv {
            node: args.node.clone(),
            registry: args.registry,
            metrics: args.metrics,
            results,
        };
        let mut workers = Vec::with_capacity(args.workers);
        for n in 0..args.workers {
            workers.push(spawn_worker(&myself, &env, n).await?);
        }
        ractor::pg::join(group(args.node.id), vec![myself.get_cell()]);
        tracing::info!(node = args.node.id, workers = args.workers, "worker pool started");
        Ok(PoolState {
            env,
            running: vec![None; workers.len()],
            idle: (0..workers.len()).collect(),
            workers,
            queue: VecDeque::new(),
            waiting: BTreeMap::new(),
            begin_armed_for: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerPoolMsg>,
        msg: WorkerPoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerPoolMsg::Execute(bytes) => match decode_traced::<WorkItem>(&bytes) {
                Ok((mut item, trace_parent)) if state.queued() < MAX_QUEUED_ITEMS => {
                    item.trace_parent = trace_parent;
                    tracing::debug!(run = item.run_id, attempt = item.attempt, "work item received");
                    state.accept(&myself, item);
                    state.dispatch();
                }
                Ok((item, _)) => tracing::warn!(
                    run = item.run_id,
                    "pool queue full; the attempt's lease will expire"
                ),
                Err(e) => tracing::warn!("undecodable work item: {e}"),
            },
            WorkerPoolMsg::Info(reply) => {
                let info = PoolInfo {
                    workers: state.workers.len() as u64,
                    job_types: state
                        .env
                        .registry
                        .names()
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                };
                let _ = reply.send(encode(&info).expect("encoding pool info cannot fail"));
            }
            WorkerPoolMsg::WorkerIdle(n) => {
                let n = n as usize;
                if n < state.running.len() && state.running[n].take().is_some() {
                    state.idle.push_back(n);
                }
                state.dispatch();
            }
            WorkerPoolMsg::Begin => {
                state.release_due(&myself);
                state.dispatch();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<WorkerPoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason): (ActorCell, String) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(n) = state.workers.iter().position(|w| w.get_id() == cell.get_id()) else {
            return Ok(());
        };
        tracing::warn!(worker = n, %reason, "worker died; restarting it");
        // The worker reports its own panics; an item it never finished times out by lease.
        state.running[n] = None;
        state.workers[n] = spawn_worker(&myself, &state.env, n).await?;
        state.idle.retain(|&idle| idle != n);
        state.idle.push_back(n);
        state.dispatch();
        Ok(())
    }
}

/// What a worker needs.
pub struct WorkerArgs {
    env: WorkerEnv,
    index: usize,
    pool: ActorRef<WorkerPoolMsg>,
}

/// One worker: runs one attempt at a time.
pub struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Run(item) = msg;
        if let Some(why) = superseded(&state.env.node, &item) {
            tracing::info!(run = item.run_id, token = item.token, "attempt not begun: {why}");
            let _ = state.pool.cast(WorkerPoolMsg::WorkerIdle(state.index as u64));
            return Ok(());
        }
        let span = attempt_span(&item);
        let began = std::time::Instant::now();
        let (outcome, output, panic) = execute(&state.env, &item).instrument(span.clone()).await;
        span.record("kairos.outcome", outcome.label().as_str());
        let metrics = &state.env.metrics;
        metrics.observe_attempt(&item.job_type, &outcome.label());
        metrics.observe_attempt_duration(&item.job_type, began.elapsed());
        state.env.results.report(AttemptResult {
            run_id: item.run_id,
            token: item.token,
            outcome,
            output_tail: output,
        });
        match panic {
            // Dying is how this worker tells the pool: were it also to say
            // it is idle, the pool could hand it the next attempt before the
            // supervision event arrives, and that attempt would die unbegun.
            Some(message) => Err(format!("handler panicked: {message}").into()),
            None => {
                let _ = state.pool.cast(WorkerPoolMsg::WorkerIdle(state.index as u64));
                Ok(())
            }
        }
    }
}

/// Why the attempt `item` must not begin, judged from this node's replica:
/// `None` when it may, or when the replica has not yet applied the entry
/// that started it or is applying one right now (and so cannot tell).
pub(crate) fn superseded(node: &Node, item: &WorkItem) -> Option<&'static str> {
    let applied = node.applied_index();
    if applied < item.token {
        return None;
    }
    // Never wait for the lock: an apply holding it is no reason to begin late.
    let state = node.state.try_read()?;
    match state.run(item.run_id) {
        None => Some("the run is gone (its job was deleted)"),
        Some(run) if run.token != item.token => Some("a newer attempt replaced it"),
        Some(run) if run.status == crate::scheduler::RunStatus::Cancelled => Some("the run was cancelled"),
        Some(run) if run.status.is_terminal() => Some("the run has ended"),
        Some(_) => None,
    }
}

/// A failed attempt of `kind`.
fn failed(kind: &str, message: String, retryable: bool) -> AttemptOutcome {
    AttemptOutcome::Failed {
        kind: kind.into(),
        message,
        retryable,
    }
}

/// Runs one attempt with heartbeats; returns the outcome, the output tail and,
/// if the handler panicked, the panic message.
async fn execute(env: &WorkerEnv, item: &WorkItem) -> (AttemptOutcome, String, Option<String>) {
    let (node, registry) = (&env.node, &env.registry);
    let Some(handler) = registry.get(&item.job_type) else {
        let message = format!("no handler for job type {:?} on node {}", item.job_type, node.id);
        return (failed("unknown_type", message, true), String::new(), None);
    };
    let timeout = Duration::from_millis(item.attempt_timeout_ms);
    let ctx = RunContext {
        job_id: item.job_id.clone(),
        run_id: item.run_id,
        attempt: item.attempt,
        nominal_ms: item.nominal_ms,
        idempotency_key: item.idempotency_key.clone(),
        event_id: item.event_id.clone(),
        payload: item.payload.clone(),
        timeout,
    };
    let cancel = CancellationToken::new();
    if item.attempt == 1 {
        // A fire's lateness is its first attempt's (a retry waits on purpose).
        let lateness_us = now_us()
            .saturating_sub(item.nominal_ms.saturating_mul(1000))
            .max(0);
        env.metrics.observe_fire_lateness(
            &node.state,
            &item.job_id,
            Duration::from_micros(lateness_us as u64),
        );
    }
    let mut task = tokio::spawn(handler.run(ctx, cancel.clone()).in_current_span());
    // The lease starts with the attempt (StartAttempts sets it), so the first
    // heartbeat is due one period in, not at once: a short attempt writes no
    // heartbeat entry at all.
    let period = Duration::from_millis((item.heartbeat_timeout_ms / 3).max(50));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let deadline = tokio::time::sleep(timeout + Duration::from_secs(1));
    tokio::pin!(deadline);
    let joined = loop {
        tokio::select! {
            joined = &mut task => break joined,
            _ = beat.tick() => {
                let command = Command::Heartbeat { run_id: item.run_id, token: item.token };
                match node.write_fenced(WORKER_PRINCIPAL, command).await {
                    Ok(Response::Lease { cancelled: true }) => cancel.cancel(),
                    Err(Error::FailedPrecondition(m) | Error::NotFound(m)) => {
                        tracing::info!(run = item.run_id, "lease lost ({m}); cancelling the attempt");
                        cancel.cancel();
                    }
                    _ => {}
                }
            }
            _ = &mut deadline => {
                cancel.cancel();
                task.abort();
                return (failed("timeout", format!("attempt exceeded {timeout:?}"), true), String::new(), None);
            }
        }
    };
    outcome(joined)
}

/// The outcome, output tail and panic message (if any) of a handler's task.
fn outcome(
    joined: Result<Result<String, HandlerError>, tokio::task::JoinError>,
) -> (AttemptOutcome, String, Option<String>) {
    match joined {
        Ok(Ok(output)) => (AttemptOutcome::Succeeded, output, None),
        Ok(Err(HandlerError {
            kind,
            message,
            retryable,
            output,
        })) => (failed(&kind, message, retryable), output, None),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            (
                failed("panic", format!("handler panicked: {message}"), true),
                String::new(),
                Some(message),
            )
        }
        Err(e) => (failed("aborted", e.to_string(), true), String::new(), None),
    }
}

/// Encodes a work item for [`WorkerPoolMsg::Execute`], its trace context
/// (if any) as the trailer.
pub fn encode_item(item: &WorkItem) -> Vec<u8> {
    encode_traced(item, &item.trace_parent)
}

/// `value` encoded, with `trace_parent` as the trailer when there is one.
pub(crate) fn encode_traced<T: Serialize>(value: &T, trace_parent: &str) -> Vec<u8> {
    let encoded = encode(value).expect("encoding a work item cannot fail");
    match trace_parent.is_empty() {
        true => encoded,
        false => crate::codec::append_trailer(encoded, &trace_parent).expect("encoding a string cannot fail"),
    }
}

/// Decodes what [`encode_traced`] wrote: the value and its trace context
/// (empty when none, or when the trailer is not one).
pub(crate) fn decode_traced<T: DeserializeOwned>(bytes: &[u8]) -> crate::error::Result<(T, String)> {
    let (value, trailer) = crate::codec::decode_with_trailer::<T>(bytes)?;
    let trace_parent = match trailer.is_empty() {
        true => String::new(),
        false => crate::codec::decode_body::<String>(trailer).unwrap_or_default(),
    };
    Ok((value, trace_parent))
}

/// The `kairos.attempt` span of `item` on this node, continuing the
/// dispatch's trace (disabled while tracing is off).
fn attempt_span(item: &WorkItem) -> tracing::Span {
    let parent = crate::telemetry::context_of(&item.trace_parent);
    if !crate::telemetry::continues(&parent) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "kairos.attempt",
        kairos.job = %item.job_id,
        kairos.run = item.run_id,
        kairos.attempt = item.attempt,
        kairos.job_type = %item.job_type,
        kairos.token = item.token,
        kairos.outcome = tracing::field::Empty,
    );
    crate::telemetry::continue_from(&span, parent);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(trace_parent: &str) -> WorkItem {
        WorkItem {
            run_id: 7,
            token: 41,
            attempt: 1,
            job_id: "report".into(),
            job_type: "http".into(),
            payload: b"{}".to_vec(),
            nominal_ms: 1_767_225_600_000,
            begin_at_ms: 1_767_225_600_000,
            idempotency_key: "report:2026-01-01T00:00:00.000Z".into(),
            event_id: String::new(),
            event_payload: Vec::new(),
            attempt_timeout_ms: 600_000,
            heartbeat_timeout_ms: 30_000,
            trace_parent: trace_parent.into(),
        }
    }

    #[test]
    fn a_trace_context_rides_as_a_trailer_that_a_build_without_it_ignores() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = encode_item(&item(traceparent));
        // What a build before traces decodes: the item, the trailer ignored.
        assert_eq!(crate::raft::decode::<WorkItem>(&traced).unwrap(), item(""));
        let (decoded, trace_parent) = decode_traced::<WorkItem>(&traced).unwrap();
        assert_eq!((decoded, trace_parent.as_str()), (item(""), traceparent));

        // Untraced, the encoding is exactly the item's, and decodes with no context.
        let plain = encode_item(&item(""));
        assert_eq!(plain, encode(&item("")).unwrap());
        assert_eq!(
            decode_traced::<WorkItem>(&plain).unwrap(),
            (item(""), String::new())
        );
    }
}
