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
//! IMPLEMENTATION CAVEATS: pools are found only on nodes this leader has a
//! worker-network session with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::limits::{Limiter, TypeLimits};
use super::worker::{encode_item, group, PoolInfo, WorkItem, WorkerPoolMsg};
use crate::node::Node;
use crate::raft::decode;
use crate::scheduler::{Command, Response};

/// Principal recorded for the dispatcher's proposals.
const PRINCIPAL: &str = "kairos-dispatcher";
/// How often the dispatcher looks for work even without state changes (retries come due).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Most dispatchable runs looked at per tick (more than fit when limits hold some back).
const MAX_CANDIDATES: usize = 10_000;
/// How long a pool's answer about its workers and job types is trusted.
const POOL_INFO_TTL: Duration = Duration::from_secs(5);
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
    pool_info: BTreeMap<u64, (PoolInfo, tokio::time::Instant)>,
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
        let pools = pools(&state.node.members().into_keys().collect::<Vec<_>>());
        if pools.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let (load, mut active_by_type) = active_load(&state.node, !state.limiter.is_empty(), now);
        let mut capacity = Capacity::default();
        for (&id, pool) in &pools {
            let info = pool_info(state, id, pool).await;
            capacity.add(id, info, load.get(&id).copied().unwrap_or(0));
        }
        let total = capacity.total();
        if total == 0 {
            return Ok(());
        }
        // Choose a node for each run (most free workers first), then start them
        // all with one Raft entry.
        let mut starts = Vec::new();
        for (run_id, attempt, job_type) in candidates(state, now, total) {
            if starts.len() as u64 == total {
                break;
            }
            let Some(target) = capacity.best_for(&job_type) else {
                continue;
            };
            if !state.limiter.admit(&job_type, &mut active_by_type, now) {
                continue;
            }
            capacity.take(target);
            starts.push((run_id, target, attempt));
        }
        if !starts.is_empty() {
            start_attempts(&state.node, &pools, starts).await;
        }
        Ok(())
    }
}

/// Load per node (attempts begun) and, when `by_type` is wanted (some type
/// has limits), runs queued or running per job type — counted in one pass.
fn active_load(node: &Node, by_type: bool, now: i64) -> (BTreeMap<u64, u64>, BTreeMap<String, u64>) {
    let view = node.state.read();
    let mut load: BTreeMap<u64, u64> = BTreeMap::new();
    let mut active_by_type: BTreeMap<String, u64> = BTreeMap::new();
    for run in view.active_runs() {
        let begun = run.started_at_ms.is_none_or(|t| t <= now);
        if let (Some(node), true) = (run.node, begun) {
            *load.entry(node).or_default() += 1;
        }
        if by_type {
            if let Some(job) = view.job(&run.job_id) {
                *active_by_type.entry(job.spec.job_type.clone()).or_default() += 1;
            }
        }
    }
    (load, active_by_type)
}

/// The attempts each node's pool may still be offered, and the job types it serves.
#[derive(Default)]
struct Capacity {
    /// Attempts each node may still take this tick.
    free: BTreeMap<u64, u64>,
    /// Job types each node's pool serves (e.g. `exec` needs --allow-exec there).
    serves: BTreeMap<u64, Vec<String>>,
}

impl Capacity {
    /// Adds node `id`, whose pool is `info` and which has `load` attempts begun.
    fn add(&mut self, id: u64, info: PoolInfo, load: u64) {
        self.serves.insert(id, info.job_types);
        self.free
            .insert(id, (info.workers * ATTEMPTS_PER_WORKER).saturating_sub(load));
    }

    /// Attempts all nodes may still take.
    fn total(&self) -> u64 {
        self.free.values().sum()
    }

    /// The node with the most free workers among those serving `job_type`
    /// (the lower id on a tie).
    fn best_for(&self, job_type: &str) -> Option<u64> {
        self.free
            .iter()
            .filter(|(id, f)| {
                **f > 0
                    && self
                        .serves
                        .get(id)
                        .is_some_and(|types| types.iter().any(|t| t == job_type))
            })
            .max_by_key(|(id, f)| (**f, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Counts one attempt offered to `node`.
    fn take(&mut self, node: u64) {
        *self.free.get_mut(&node).expect("chosen from free") -= 1;
    }
}

/// The runs that may start by now plus the look-ahead, as (run, next attempt,
/// job type): as many as `total` free slots, or more when limits may hold
/// some back (the runs behind them must not be hidden).
fn candidates(state: &DispatcherState, now: i64, total: u64) -> Vec<(u64, u32, String)> {
    let view = state.node.state.read();
    let wanted = if state.limiter.is_empty() {
        total as usize
    } else {
        MAX_CANDIDATES
    };
    view.dispatchable_runs(now + state.ahead_ms, wanted)
        .iter()
        .map(|r| {
            let job_type = view
                .job(&r.job_id)
                .map(|j| j.spec.job_type.clone())
                .unwrap_or_default();
            (r.id, r.attempt + 1, job_type)
        })
        .collect()
}

/// Proposes one `StartAttempts` entry for `starts` (run, node, attempt) and
/// sends each attempt it started to its node's pool.
async fn start_attempts(
    node: &Node,
    pools: &BTreeMap<u64, ActorRef<WorkerPoolMsg>>,
    starts: Vec<(u64, u64, u32)>,
) {
    let started = match node
        .propose_local(PRINCIPAL, Command::StartAttempts { starts })
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
        let Some(item) = work_item(node, &run) else {
            continue;
        };
        if let Err(e) = pools[&target].cast(WorkerPoolMsg::Execute(encode_item(&item))) {
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

async fn pool_info(state: &mut DispatcherState, id: u64, pool: &ActorRef<WorkerPoolMsg>) -> PoolInfo {
    if let Some((info, at)) = state.pool_info.get(&id) {
        if at.elapsed() < POOL_INFO_TTL {
            return info.clone();
        }
    }
    match ractor::call_t!(pool, WorkerPoolMsg::Info, 500).map(|bytes| decode::<PoolInfo>(&bytes)) {
        Ok(Ok(info)) => {
            state
                .pool_info
                .insert(id, (info.clone(), tokio::time::Instant::now()));
            info
        }
        Ok(Err(e)) => {
            tracing::warn!(node = id, "undecodable worker pool info: {e}");
            PoolInfo::default()
        }
        Err(e) => {
            tracing::debug!(node = id, "worker pool did not answer: {e}");
            state.pool_info.remove(&id);
            PoolInfo::default()
        }
    }
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
        attempt_timeout_ms: job.spec.policies.timeouts.attempt_timeout_ms,
        heartbeat_timeout_ms: job.spec.policies.timeouts.heartbeat_timeout_ms,
    })
}
