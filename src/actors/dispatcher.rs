//! The dispatcher: assigns dispatchable runs to worker pools, on the leader only.
//!
//! On every tick it asks the state machine for the runs that may start now
//! (pending, past their retry back-off, not blocked by the overlap policy),
//! picks for each, among the nodes whose pool serves the job's type, the one
//! with the most free workers (workers and types from the pool, load from the
//! replicated state: the runs queued or running there),
//! proposes one `StartAttempts` entry for all of them — its log index becomes
//! the fencing token of each attempt — and sends each work item to its node's
//! pool through ractor_cluster. If the send is lost, the attempt's lease expires and the
//! run is retried elsewhere; nothing is assigned without a committed entry.
//!
//! Runs are started up to the look-ahead (`--fire-ahead-ms`) before they may
//! begin: the timer commits fires ahead of their nominal time, the entry that
//! starts them follows at once, and the work item tells the pool when to
//! begin. A node's load is the attempts it is running (begun), not those
//! waiting to begin: its pool holds those without a worker.
//!
//! Runs of a job type with limits (`--type-limits`) pass the [`Limiter`]
//! first: a run over its type's concurrency or rate stays pending until a
//! later tick, and the runs behind it are still considered.
//!
//! External workers (`actors::external`) are pools too: each node says
//! which workers are registered with it and available, each worker's load
//! is the runs of the replicated state whose attempt names it, and an
//! attempt given to one names it in the `AssignAttempts` entry (so a new
//! leader counts it). A retry goes to another worker than the one whose
//! attempt failed or was lost, when another can take it. Runs of a type no
//! available pool or worker serves stay pending and do not hold back the
//! runs behind them.
//!
//! IMPLEMENTATION CAVEATS: pools are found only on nodes this leader has a
//! worker-network session with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::external::{self, ExternalInfo, ExternalPoolMsg, TaskItem};
use super::limits::{Limiter, TypeLimits};
use super::worker::{encode_item, encode_traced, group, PoolInfo, WorkItem, WorkerPoolMsg};
use crate::node::Node;
use crate::raft::decode;
use crate::scheduler::{Assignment, Command, Response};

/// Principal recorded for the dispatcher's proposals.
const PRINCIPAL: &str = "kairos-dispatcher";
/// How often the dispatcher looks for work even without state changes (retries come due).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Most dispatchable runs looked at per tick (more than fit when limits hold some back).
const MAX_CANDIDATES: usize = 10_000;
/// How long a pool's answer about its workers and job types is trusted.
const POOL_INFO_TTL: Duration = Duration::from_secs(5);
/// How long a node's answer about its external workers is trusted: they
/// come and go, and a killed one must stop getting tasks quickly.
const EXTERNAL_INFO_TTL: Duration = Duration::from_millis(200);
/// Attempts a pool is offered per worker. A worker is free once its handler
/// returns, but the replicated state counts the run as running until its
/// result commits (the reporter's write interval and a commit later), so
/// with one per worker short runs would leave workers idle; the pool queues
/// what its workers cannot take at once.
const ATTEMPTS_PER_WORKER: u64 = 2;

/// The dispatcher actor.
pub struct Dispatcher;

/// Messages of the dispatcher (local only).
#[derive(Debug, ractor_cluster::RactorMessage)]
pub enum DispatcherMsg {
    /// Look for dispatchable runs.
    Tick,
}

/// What the dispatcher needs.
pub struct DispatcherArgs {
    /// The local node (must be the leader).
    pub node: Arc<Node>,
    /// Concurrency and rate limits by job type.
    pub type_limits: TypeLimits,
    /// How long before a run may begin it is started (see the timer's look-ahead).
    pub fire_ahead: Duration,
}

/// The dispatcher's state.
pub struct DispatcherState {
    node: Arc<Node>,
    /// Each pool's workers and job types by Raft node id, with when it was asked.
    pool_info: Answers<PoolInfo>,
    /// Each node's external workers, with when it was asked.
    external_info: Answers<ExternalInfo>,
    limiter: Limiter,
    /// See [`DispatcherArgs::fire_ahead`], in ms.
    ahead_ms: i64,
    watcher: JoinHandle<()>,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let mut applied = args.node.raft.data_metrics();
        let me = myself.clone();
        let watcher = tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                if me.send_message(DispatcherMsg::Tick).is_err() {
                    break;
                }
            }
        });
        myself.send_interval(POLL_EVERY, || DispatcherMsg::Tick);
        Ok(DispatcherState {
            node: args.node,
            pool_info: BTreeMap::new(),
            external_info: BTreeMap::new(),
            limiter: Limiter::new(args.type_limits),
            ahead_ms: args
                .fire_ahead
                .as_millis()
                .min(crate::scheduler::MAX_FIRE_AHEAD_MS as u128) as i64,
            watcher,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }

    /// One tick: measure the load, pick runs and nodes within the free
    /// workers and the type limits, start them with one entry, send them.
    async fn handle(
        &self,
        _: ActorRef<DispatcherMsg>,
        _: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let members = state.node.members().into_keys().collect::<Vec<_>>();
        let pools = pools(&members);
        let externals = externals(&members);
        if pools.is_empty() && externals.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let load = active_load(&state.node, !state.limiter.is_empty(), now);
        let mut active_by_type = load.by_type;
        let mut capacity = Capacity::default();
        for (&id, pool) in &pools {
            let info = pool_info(state, id, pool).await;
            capacity.add_pool(id, info, load.by_node.get(&id).copied().unwrap_or(0));
        }
        for (&id, pool) in &externals {
            let info = external_info(state, id, pool).await;
            for slot in info.workers.into_iter().filter(|w| w.available) {
                let busy = load.by_worker.get(&slot.worker_id).copied().unwrap_or(0);
                capacity.add_worker(id, slot.worker_id, slot.job_types, slot.capacity, busy);
            }
        }
        let total = capacity.total();
        if total == 0 {
            return Ok(());
        }
        // Choose a target for each run (most free slots first), then start
        // them all with one Raft entry.
        let mut starts = Vec::new();
        for candidate in candidates(state, now, total) {
            if starts.len() as u64 == total {
                break;
            }
            let Some(target) = capacity.best_for(&candidate.job_type, candidate.last_worker.as_deref())
            else {
                continue;
            };
            if !state.limiter.admit(&candidate.job_type, &mut active_by_type, now) {
                continue;
            }
            capacity.take(&target);
            starts.push(Assignment {
                run_id: candidate.run_id,
                node: target.node(),
                attempt: candidate.attempt,
                worker: target.worker().map(str::to_string),
            });
        }
        if !starts.is_empty() {
            start_attempts(&state.node, &pools, &externals, starts).await;
        }
        Ok(())
    }
}

/// The load the replicated state shows, counted in one pass.
struct Load {
    /// Attempts begun on each node's own pool.
    by_node: BTreeMap<u64, u64>,
    /// Attempts assigned to each external worker (begun or not).
    by_worker: BTreeMap<String, u64>,
    /// Runs queued or running per job type (only when some type has limits).
    by_type: BTreeMap<String, u64>,
}

fn active_load(node: &Node, by_type: bool, now: i64) -> Load {
    let view = node.state.read();
    let mut load = Load {
        by_node: BTreeMap::new(),
        by_worker: BTreeMap::new(),
        by_type: BTreeMap::new(),
    };
    for run in view.active_runs() {
        let begun = run.started_at_ms.is_none_or(|t| t <= now);
        match (&run.worker, run.node) {
            (Some(worker), _) => *load.by_worker.entry(worker.clone()).or_default() += 1,
            (None, Some(node)) if begun => *load.by_node.entry(node).or_default() += 1,
            _ => {}
        }
        if by_type {
            if let Some(job) = view.job(&run.job_id) {
                *load.by_type.entry(job.spec.job_type.clone()).or_default() += 1;
            }
        }
    }
    load
}

/// Where an attempt goes: a node's own pool, or an external worker
/// registered with a node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// The worker pool of this node.
    Pool(u64),
    /// This external worker, registered with this node.
    Worker(u64, String),
}

impl Target {
    fn node(&self) -> u64 {
        match self {
            Target::Pool(node) | Target::Worker(node, _) => *node,
        }
    }

    fn worker(&self) -> Option<&str> {
        match self {
            Target::Pool(_) => None,
            Target::Worker(_, worker) => Some(worker),
        }
    }
}

/// The attempts each target may still be offered, and the job types it serves.
#[derive(Default)]
struct Capacity {
    /// Attempts each target may still take this tick.
    free: BTreeMap<Target, u64>,
    /// Job types each target serves (e.g. `exec` needs --allow-exec there).
    serves: BTreeMap<Target, Vec<String>>,
}

impl Capacity {
    /// Adds node `id`'s pool, which is `info` and has `load` attempts begun.
    fn add_pool(&mut self, id: u64, info: PoolInfo, load: u64) {
        let target = Target::Pool(id);
        self.serves.insert(target.clone(), info.job_types);
        self.free
            .insert(target, (info.workers * ATTEMPTS_PER_WORKER).saturating_sub(load));
    }

    /// Adds an external worker on node `node` with `busy` attempts assigned.
    fn add_worker(&mut self, node: u64, worker_id: String, job_types: Vec<String>, capacity: u32, busy: u64) {
        let target = Target::Worker(node, worker_id);
        self.serves.insert(target.clone(), job_types);
        self.free.insert(target, u64::from(capacity).saturating_sub(busy));
    }

    /// Attempts all targets may still take.
    fn total(&self) -> u64 {
        self.free.values().sum()
    }

    /// The target with the most free slots among those serving `job_type`,
    /// not `avoid` (the worker whose attempt of the run failed) unless no
    /// other can take it; the first in order on a tie.
    fn best_for(&self, job_type: &str, avoid: Option<&str>) -> Option<Target> {
        self.free
            .iter()
            .filter(|(target, f)| {
                **f > 0
                    && self
                        .serves
                        .get(target)
                        .is_some_and(|types| types.iter().any(|t| t == job_type))
            })
            .max_by_key(|(target, f)| {
                let elsewhere = avoid.is_none() || target.worker() != avoid;
                (elsewhere, **f, std::cmp::Reverse(*target))
            })
            .map(|(target, _)| target.clone())
    }

    /// Counts one attempt offered to `target`.
    fn take(&mut self, target: &Target) {
        *self.free.get_mut(target).expect("chosen from free") -= 1;
    }
}

/// A run that may start now.
struct Candidate {
    run_id: u64,
    /// Its next attempt.
    attempt: u32,
    job_type: String,
    /// The external worker of its previous attempt, if any.
    last_worker: Option<String>,
}

/// The runs that may start by now plus the look-ahead: as many as `total`
/// free slots, or more when limits may hold some back or some types may
/// have no worker now (external types exist): the runs behind them must
/// not be hidden.
fn candidates(state: &DispatcherState, now: i64, total: u64) -> Vec<Candidate> {
    let view = state.node.state.read();
    let wide = !state.limiter.is_empty() || view.job_types().next().is_some();
    let wanted = if wide { MAX_CANDIDATES } else { total as usize };
    view.dispatchable_runs(now + state.ahead_ms, wanted)
        .iter()
        .map(|r| Candidate {
            run_id: r.id,
            attempt: r.attempt + 1,
            job_type: view
                .job(&r.job_id)
                .map(|j| j.spec.job_type.clone())
                .unwrap_or_default(),
            last_worker: r.worker.clone(),
        })
        .collect()
}

/// Proposes one `AssignAttempts` entry for `starts` and sends each attempt
/// it started to its node's pool or external worker.
async fn start_attempts(
    node: &Node,
    pools: &BTreeMap<u64, ActorRef<WorkerPoolMsg>>,
    externals: &BTreeMap<u64, ActorRef<ExternalPoolMsg>>,
    starts: Vec<Assignment>,
) {
    let workers: BTreeMap<u64, Option<String>> =
        starts.iter().map(|s| (s.run_id, s.worker.clone())).collect();
    let started = match node
        .propose_local(PRINCIPAL, Command::AssignAttempts { starts })
        .await
    {
        Ok(Response::Started(runs)) => runs,
        Ok(other) => {
            tracing::warn!("unexpected reply to StartAttempts: {other:?}");
            return;
        }
        Err(e) => {
            tracing::debug!("attempts not started: {e}");
            return;
        }
    };
    for run in started {
        let Some(target) = run.node else { continue };
        let Some(mut item) = work_item(node, &run) else {
            continue;
        };
        let span = dispatch_span(node, &run, target);
        item.trace_parent = crate::telemetry::traceparent(&span);
        let _entered = span.enter();
        if let Some(Some(worker_id)) = workers.get(&run.id) {
            let task = TaskItem {
                worker_id: worker_id.clone(),
                item,
            };
            let bytes = encode_traced(&task, &task.item.trace_parent);
            let sent = externals
                .get(&target)
                .map(|pool| pool.cast(ExternalPoolMsg::Deliver(bytes)));
            if !matches!(sent, Some(Ok(()))) {
                tracing::warn!(run = run.id, node = target, worker = %worker_id, "sending the task failed; the lease will expire");
            }
            tracing::debug!(run = run.id, attempt = run.attempt, node = target, worker = %worker_id, token = run.token, "dispatched to an external worker");
            continue;
        }
        let Some(pool) = pools.get(&target) else {
            tracing::warn!(
                run = run.id,
                node = target,
                "no pool on the node; the lease will expire"
            );
            continue;
        };
        if let Err(e) = pool.cast(WorkerPoolMsg::Execute(encode_item(&item))) {
            tracing::warn!(
                run = run.id,
                node = target,
                "sending work failed ({e}); the lease will expire"
            );
        }
        tracing::debug!(
            run = run.id,
            attempt = run.attempt,
            node = target,
            token = run.token,
            "dispatched"
        );
    }
}

/// The worker pool of each member that has one reachable.
fn pools(members: &[u64]) -> BTreeMap<u64, ActorRef<WorkerPoolMsg>> {
    members
        .iter()
        .filter_map(|&id| {
            ractor::pg::get_members(&group(id))
                .into_iter()
                .next()
                .map(|cell| (id, ActorRef::from(cell)))
        })
        .collect()
}

/// The external pool of each member that has one reachable.
fn externals(members: &[u64]) -> BTreeMap<u64, ActorRef<ExternalPoolMsg>> {
    members
        .iter()
        .filter_map(|&id| {
            ractor::pg::get_members(&external::group(id))
                .into_iter()
                .next()
                .map(|cell| (id, ActorRef::from(cell)))
        })
        .collect()
}

/// A node's answer about its pool or external workers, as last asked.
type Answers<T> = BTreeMap<u64, (T, tokio::time::Instant)>;

/// Node `id`'s answer to the RPC `ask` sends to `pool`, from `answers` when
/// asked less than `ttl` ago; the default (nothing to offer) when the node
/// does not answer in 500 ms or answers something undecodable. `what` names
/// the pool in logs.
async fn ask_cached<T, M>(
    answers: &mut Answers<T>,
    ttl: Duration,
    id: u64,
    pool: &ActorRef<M>,
    ask: fn(ractor::RpcReplyPort<Vec<u8>>) -> M,
    what: &str,
) -> T
where
    T: Clone + Default + serde::de::DeserializeOwned,
    M: ractor::Message,
{
    if let Some((answer, at)) = answers.get(&id) {
        if at.elapsed() < ttl {
            return answer.clone();
        }
    }
    match ractor::call_t!(pool, ask, 500).map(|bytes| decode::<T>(&bytes)) {
        Ok(Ok(answer)) => {
            answers.insert(id, (answer.clone(), tokio::time::Instant::now()));
            answer
        }
        Ok(Err(e)) => {
            tracing::warn!(node = id, "undecodable answer of the {what}: {e}");
            T::default()
        }
        Err(e) => {
            tracing::debug!(node = id, "the {what} did not answer: {e}");
            answers.remove(&id);
            T::default()
        }
    }
}

/// Node `id`'s external workers (asked at most every [`EXTERNAL_INFO_TTL`]).
async fn external_info(
    state: &mut DispatcherState,
    id: u64,
    pool: &ActorRef<ExternalPoolMsg>,
) -> ExternalInfo {
    let ask = ExternalPoolMsg::Info;
    ask_cached(
        &mut state.external_info,
        EXTERNAL_INFO_TTL,
        id,
        pool,
        ask,
        "external pool",
    )
    .await
}

/// Node `id`'s pool (asked at most every [`POOL_INFO_TTL`]).
async fn pool_info(state: &mut DispatcherState, id: u64, pool: &ActorRef<WorkerPoolMsg>) -> PoolInfo {
    ask_cached(
        &mut state.pool_info,
        POOL_INFO_TTL,
        id,
        pool,
        WorkerPoolMsg::Info,
        "worker pool",
    )
    .await
}

/// The `kairos.dispatch` span of `run`'s attempt sent to node `target`: in
/// the trace of the span that created the run while this node led (a
/// trigger's API call, the timer's fire window), else a trace of its own
/// (disabled while tracing is off).
fn dispatch_span(node: &Node, run: &crate::scheduler::Run, target: u64) -> tracing::Span {
    let creator = node.state.traces.runs.creator(run.id);
    if creator.is_none() && !crate::telemetry::start_trace() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "kairos.dispatch",
        otel.kind = "producer",
        kairos.job = %run.job_id,
        kairos.run = run.id,
        kairos.attempt = run.attempt,
        kairos.node = target,
        kairos.token = run.token,
    );
    if let Some(creator) = creator {
        crate::telemetry::continue_from(&span, creator);
    }
    span
}

fn work_item(node: &Node, run: &crate::scheduler::Run) -> Option<WorkItem> {
    let state = node.state.read();
    let job = state.job(&run.job_id)?;
    Some(WorkItem {
        run_id: run.id,
        token: run.token,
        attempt: run.attempt,
        job_id: run.job_id.clone(),
        job_type: job.spec.job_type.clone(),
        payload: job.spec.payload.clone(),
        nominal_ms: run.nominal_ms,
        begin_at_ms: run.started_at_ms.unwrap_or(run.nominal_ms),
        idempotency_key: run.idempotency_key(),
        event_id: run.event_id().to_string(),
        event_payload: run.event_payload().to_vec(),
        attempt_timeout_ms: job.spec.policies.timeouts.attempt_timeout_ms,
        heartbeat_timeout_ms: job.spec.policies.timeouts.heartbeat_timeout_ms,
        trace_parent: String::new(),
    })
}
