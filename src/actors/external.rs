//! External workers: the programs that register job types and long-poll a
//! node for tasks (`WorkerService`), as one more kind of worker pool.
//!
//! Each node keeps the workers registered with it in [`ExternalWorkers`]:
//! their types and capacity, their open long polls, and the tasks assigned
//! to them that no poll has taken yet. None of this is replicated: a worker
//! belongs to the node it registered with, and registers again elsewhere
//! when that node dies (the SDKs do it on `NOT_FOUND` or a lost connection).
//!
//! The node's [`ExternalPool`] actor joins the process group
//! `kairos-external/<node id>` of the worker network, so the leader's
//! dispatcher finds it as it finds the node's own pool: it asks which
//! workers are there ([`ExternalInfo`]) and sends each task to the node
//! holding its worker ([`TaskItem`]). The dispatcher counts a worker's load
//! from the replicated state (the runs whose attempt names it), so the
//! capacity it assigns against survives a failover.
//!
//! A task reaches its worker through the first of its open polls that
//! wants the task's type; with none open, it waits for the worker's next
//! poll. A task the worker never takes (it died, or it was dropped) is not
//! re-sent: its attempt's lease runs out and the run is retried, by policy,
//! on another worker.
//!
//! Liveness: a worker is seen whenever it polls (at the start and the end
//! of each poll) and whenever a heartbeat for one of its tasks reaches this
//! node. A worker with no poll open and not seen for [`DROP_AFTER`] is
//! dropped (its next poll gets `NOT_FOUND`). The dispatcher offers tasks
//! only to workers that are *available*: a poll open now, or seen within
//! [`AVAILABLE_WITHIN`] — so a killed worker stops receiving tasks within a
//! second or two even before it is dropped.
//!
//! Time is passed in (`now`), so the bookkeeping is tested without a clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::worker::WorkItem;
use crate::error::Error;
use crate::raft::encode;

/// How often a worker must poll or heartbeat (told to it at registration).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A worker with no open poll, silent this long, is dropped.
pub const DROP_AFTER: Duration = Duration::from_secs(15);
/// A worker with no open poll is offered tasks only if seen this recently.
pub const AVAILABLE_WITHIN: Duration = Duration::from_millis(1_500);
/// Longest long poll.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// Most tasks waiting for a worker's next poll, per unit of its capacity.
const READY_PER_CAPACITY: usize = 4;
/// How often the pool drops silent workers.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The process group of the external worker pool of Raft node `id`.
pub fn group(id: u64) -> String {
    format!("kairos-external/{id}")
}

/// A task for an external worker, as the dispatcher sends it to the node
/// holding the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskItem {
    /// The worker it is assigned to.
    pub worker_id: String,
    /// The attempt.
    pub item: WorkItem,
}

/// One worker as the dispatcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSlot {
    /// The worker's id.
    pub worker_id: String,
    /// Job types it serves.
    pub job_types: Vec<String>,
    /// Most tasks it runs at once.
    pub capacity: u32,
    /// It may be offered tasks now (see the module docs).
    pub available: bool,
}

/// What a node tells the dispatcher about its external workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalInfo {
    /// The workers registered with the node.
    pub workers: Vec<WorkerSlot>,
}

/// One worker as `ListWorkers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker's id.
    pub worker_id: String,
    /// Its name (free text).
    pub name: String,
    /// The node it is registered with.
    pub node: u64,
    /// Job types it serves.
    pub job_types: Vec<String>,
    /// Most tasks it runs at once.
    pub capacity: u32,
    /// Who registered it.
    pub principal: String,
    /// When it registered, Unix ms.
    pub registered_ms: i64,
    /// How long ago it was last seen, ms.
    pub silent_ms: u64,
}

/// A worker registered with this node.
struct Registered {
    name: String,
    principal: String,
    job_types: Vec<String>,
    capacity: u32,
    registered_ms: i64,
    last_seen: Instant,
    /// Open long polls, oldest first.
    polls: Vec<Poll>,
    /// Tasks assigned to it that no poll has taken yet.
    ready: VecDeque<WorkItem>,
}

/// One open long poll.
struct Poll {
    /// Types it wants; empty: any of the worker's.
    job_types: Vec<String>,
    sender: oneshot::Sender<WorkItem>,
}

impl Poll {
    fn wants(&self, job_type: &str) -> bool {
        self.job_types.is_empty() || self.job_types.iter().any(|t| t == job_type)
    }
}

impl Registered {
    fn has_open_poll(&self) -> bool {
        self.polls.iter().any(|p| !p.sender.is_closed())
    }
}

/// The workers registered with this node (see the module docs).
pub struct ExternalWorkers {
    node_id: u64,
    workers: Mutex<BTreeMap<String, Registered>>,
}

/// What a worker registers.
pub struct Registration {
    /// Its name (free text).
    pub name: String,
    /// Who registers it.
    pub principal: String,
    /// Job types it serves.
    pub job_types: Vec<String>,
    /// Most tasks it runs at once.
    pub capacity: u32,
}

impl ExternalWorkers {
    /// No workers yet, on node `node_id`.
    pub fn new(node_id: u64) -> Arc<ExternalWorkers> {
        Arc::new(ExternalWorkers {
            node_id,
            workers: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registered>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a worker under `worker_id` (unique: the caller draws it at random).
    pub fn register(&self, worker_id: String, registration: Registration, now: Instant, now_ms: i64) {
        let Registration {
            name,
            principal,
            job_types,
            capacity,
        } = registration;
        self.lock().insert(
            worker_id,
            Registered {
                name,
                principal,
                job_types,
                capacity,
                registered_ms: now_ms,
                last_seen: now,
                polls: Vec::new(),
                ready: VecDeque::new(),
            },
        );
    }

    /// Who registered `worker_id` and the types it serves; `NOT_FOUND` if
    /// this node does not know it.
    pub fn describe(&self, worker_id: &str) -> Result<(String, Vec<String>), Error> {
        self.lock()
            .get(worker_id)
            .map(|w| (w.principal.clone(), w.job_types.clone()))
            .ok_or_else(|| unknown_worker(worker_id, self.node_id))
    }

    /// Opens a poll of `worker_id` for `job_types` (empty: any of its
    /// types): a task waiting for it at once, else a receiver the next
    /// delivery for it answers.
    pub fn open_poll(
        &self,
        worker_id: &str,
        job_types: Vec<String>,
        now: Instant,
    ) -> Result<Result<WorkItem, oneshot::Receiver<WorkItem>>, Error> {
        let mut workers = self.lock();
        let worker = workers
            .get_mut(worker_id)
            .ok_or_else(|| unknown_worker(worker_id, self.node_id))?;
        worker.last_seen = now;
        let wanted = |t: &str| job_types.is_empty() || job_types.iter().any(|w| w == t);
        if let Some(at) = worker.ready.iter().position(|item| wanted(&item.job_type)) {
            return Ok(Ok(worker.ready.remove(at).expect("position is in range")));
        }
        let (sender, receiver) = oneshot::channel();
        worker.polls.retain(|p| !p.sender.is_closed());
        worker.polls.push(Poll { job_types, sender });
        Ok(Err(receiver))
    }

    /// Notes that `worker_id` was heard from (a poll ended, or a heartbeat
    /// for one of its tasks reached this node).
    pub fn touch(&self, worker_id: &str, now: Instant) {
        if let Some(worker) = self.lock().get_mut(worker_id) {
            worker.last_seen = now;
        }
    }

    /// Hands `item` to `worker_id`: to its oldest open poll that wants the
    /// type, else into its queue for the next poll. Dropped (its lease will
    /// run out) when the worker is gone or its queue is full.
    pub fn deliver(&self, worker_id: &str, item: WorkItem) {
        let mut workers = self.lock();
        let Some(worker) = workers.get_mut(worker_id) else {
            tracing::info!(
                run = item.run_id,
                worker = worker_id,
                "task for a worker this node no longer knows; its lease will expire"
            );
            return;
        };
        let mut item = item;
        while let Some(at) = worker.polls.iter().position(|p| p.wants(&item.job_type)) {
            let poll = worker.polls.remove(at);
            match poll.sender.send(item) {
                Ok(()) => return,
                // That poll's caller went away: try the next one.
                Err(returned) => item = returned,
            }
        }
        let limit = (worker.capacity as usize)
            .saturating_mul(READY_PER_CAPACITY)
            .max(1);
        if worker.ready.len() >= limit {
            tracing::warn!(
                run = item.run_id,
                worker = worker_id,
                "worker's task queue is full; the attempt's lease will expire"
            );
            return;
        }
        worker.ready.push_back(item);
    }

    /// Drops the workers with no open poll silent for [`DROP_AFTER`] at
    /// `now`, returning their ids.
    pub fn sweep(&self, now: Instant) -> Vec<String> {
        let mut workers = self.lock();
        let mut dropped = Vec::new();
        workers.retain(|id, worker| {
            worker.polls.retain(|p| !p.sender.is_closed());
            let keep =
                !worker.polls.is_empty() || now.saturating_duration_since(worker.last_seen) < DROP_AFTER;
            if !keep {
                dropped.push(id.clone());
            }
            keep
        });
        for id in &dropped {
            tracing::info!(worker = %id, "external worker dropped: no poll or heartbeat for {DROP_AFTER:?}");
        }
        dropped
    }

    /// What the dispatcher needs to know at `now`.
    pub fn info(&self, now: Instant) -> ExternalInfo {
        let workers = self.lock();
        ExternalInfo {
            workers: workers
                .iter()
                .map(|(id, w)| WorkerSlot {
                    worker_id: id.clone(),
                    job_types: w.job_types.clone(),
                    capacity: w.capacity,
                    available: w.has_open_poll()
                        || now.saturating_duration_since(w.last_seen) < AVAILABLE_WITHIN,
                })
                .collect(),
        }
    }

    /// Every worker, for `ListWorkers`.
    pub fn list(&self, now: Instant) -> Vec<WorkerView> {
        let workers = self.lock();
        workers
            .iter()
            .map(|(id, w)| WorkerView {
                worker_id: id.clone(),
                name: w.name.clone(),
                node: self.node_id,
                job_types: w.job_types.clone(),
                capacity: w.capacity,
                principal: w.principal.clone(),
                registered_ms: w.registered_ms,
                silent_ms: if w.has_open_poll() {
                    0
                } else {
                    now.saturating_duration_since(w.last_seen).as_millis() as u64
                },
            })
            .collect()
    }
}

fn unknown_worker(worker_id: &str, node: u64) -> Error {
    Error::NotFound(format!(
        "worker {worker_id:?} is not registered with node {node} (dropped after {DROP_AFTER:?} of silence, or the node restarted): register again"
    ))
}

/// Messages of the external pool; all may come from another node.
#[derive(ractor_cluster::RactorClusterMessage)]
pub enum ExternalPoolMsg {
    /// A task: a postcard-encoded [`TaskItem`].
    Deliver(Vec<u8>),
    /// The pool's [`ExternalInfo`], postcard-encoded.
    #[rpc]
    Info(RpcReplyPort<Vec<u8>>),
    /// Its workers (`Vec<WorkerView>`), postcard-encoded.
    #[rpc]
    List(RpcReplyPort<Vec<u8>>),
    /// Drop silent workers (local, from the pool's own timer).
    Sweep,
}

/// The actor that makes a node's [`ExternalWorkers`] reachable from the
/// leader's dispatcher.
pub struct ExternalPool;

impl Actor for ExternalPool {
    type Msg = ExternalPoolMsg;
    type State = Arc<ExternalWorkers>;
    type Arguments = Arc<ExternalWorkers>;

    async fn pre_start(
        &self,
        myself: ActorRef<ExternalPoolMsg>,
        workers: Arc<ExternalWorkers>,
    ) -> Result<Arc<ExternalWorkers>, ActorProcessingErr> {
        ractor::pg::join(group(workers.node_id), vec![myself.get_cell()]);
        myself.send_interval(SWEEP_EVERY, || ExternalPoolMsg::Sweep);
        Ok(workers)
    }

    async fn handle(
        &self,
        _: ActorRef<ExternalPoolMsg>,
        msg: ExternalPoolMsg,
        workers: &mut Arc<ExternalWorkers>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExternalPoolMsg::Deliver(bytes) => match super::worker::decode_traced::<TaskItem>(&bytes) {
                Ok((mut task, trace_parent)) => {
                    task.item.trace_parent = trace_parent;
                    deliver_when_due(workers.clone(), task)
                }
                Err(e) => tracing::warn!("undecodable task item: {e}"),
            },
            ExternalPoolMsg::Info(reply) => {
                let info = workers.info(Instant::now());
                let _ = reply.send(encode(&info).expect("encoding external info cannot fail"));
            }
            ExternalPoolMsg::List(reply) => {
                let list = workers.list(Instant::now());
                let _ = reply.send(encode(&list).expect("encoding a worker list cannot fail"));
            }
            ExternalPoolMsg::Sweep => {
                workers.sweep(Instant::now());
            }
        }
        Ok(())
    }
}

/// Delivers `task` now, or at its `begin_at_ms` when it was started ahead
/// of its time (the worker must not begin early).
fn deliver_when_due(workers: Arc<ExternalWorkers>, task: TaskItem) {
    let begin_at_ms = task.item.begin_at_ms;
    if begin_at_ms <= crate::wall_clock::now_ms() {
        workers.deliver(&task.worker_id, task.item);
        return;
    }
    tokio::spawn(async move {
        crate::wall_clock::sleep_until(begin_at_ms).await;
        workers.deliver(&task.worker_id, task.item);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(run_id: u64, job_type: &str) -> WorkItem {
        WorkItem {
            run_id,
            token: 10 + run_id,
            attempt: 1,
            job_id: "j".into(),
            job_type: job_type.into(),
            payload: vec![],
            nominal_ms: 0,
            begin_at_ms: 0,
            idempotency_key: "j:0".into(),
            event_id: String::new(),
            event_payload: vec![],
            attempt_timeout_ms: 1_000,
            heartbeat_timeout_ms: 1_000,
            trace_parent: String::new(),
        }
    }

    fn registered(types: &[&str], now: Instant) -> Arc<ExternalWorkers> {
        let workers = ExternalWorkers::new(2);
        let registration = Registration {
            name: "w".into(),
            principal: "p".into(),
            job_types: types.iter().map(|t| t.to_string()).collect(),
            capacity: 2,
        };
        workers.register("2-w".into(), registration, now, 0);
        workers
    }

    #[test]
    fn a_task_goes_to_an_open_poll_that_wants_its_type_else_waits() {
        let now = Instant::now();
        let workers = registered(&["a", "b"], now);
        let Err(mut wants_b) = workers.open_poll("2-w", vec!["b".into()], now).unwrap() else {
            panic!("nothing was waiting")
        };
        let Err(mut wants_any) = workers.open_poll("2-w", vec![], now).unwrap() else {
            panic!("nothing was waiting")
        };
        workers.deliver("2-w", item(1, "a"));
        assert_eq!(
            wants_any.try_recv().unwrap().run_id,
            1,
            "the poll for b does not take an a"
        );
        assert!(wants_b.try_recv().is_err());
        workers.deliver("2-w", item(2, "b"));
        assert_eq!(wants_b.try_recv().unwrap().run_id, 2);
        // No poll open: the task waits for the next one.
        workers.deliver("2-w", item(3, "a"));
        assert_eq!(workers.open_poll("2-w", vec![], now).unwrap().unwrap().run_id, 3);
    }

    #[test]
    fn a_poll_whose_caller_left_is_skipped() {
        let now = Instant::now();
        let workers = registered(&["a"], now);
        let Err(gone) = workers.open_poll("2-w", vec![], now).unwrap() else {
            panic!()
        };
        drop(gone);
        let Err(mut open) = workers.open_poll("2-w", vec![], now).unwrap() else {
            panic!()
        };
        workers.deliver("2-w", item(1, "a"));
        assert_eq!(open.try_recv().unwrap().run_id, 1);
    }

    #[test]
    fn silent_workers_become_unavailable_then_are_dropped() {
        let now = Instant::now();
        let workers = registered(&["a"], now);
        assert!(workers.info(now).workers[0].available);
        let later = now + AVAILABLE_WITHIN;
        assert!(!workers.info(later).workers[0].available);
        // An open poll keeps it available and registered.
        let Err(poll) = workers.open_poll("2-w", vec![], now).unwrap() else {
            panic!()
        };
        assert!(workers.info(later).workers[0].available);
        assert!(workers.sweep(now + DROP_AFTER * 2).is_empty());
        drop(poll);
        assert_eq!(workers.sweep(now + DROP_AFTER), vec!["2-w".to_string()]);
        let error = workers.open_poll("2-w", vec![], now).unwrap_err();
        assert!(matches!(error, Error::NotFound(_)), "{error:?}");
        assert!(error.to_string().contains("register again"));
        // A task for it is dropped quietly.
        workers.deliver("2-w", item(1, "a"));
    }

    #[test]
    fn the_queue_of_a_worker_that_does_not_poll_is_bounded() {
        let now = Instant::now();
        let workers = registered(&["a"], now);
        for run in 0..100 {
            workers.deliver("2-w", item(run, "a"));
        }
        let mut taken = 0;
        while let Ok(Ok(_)) = workers.open_poll("2-w", vec![], now) {
            taken += 1;
        }
        assert_eq!(taken, 2 * READY_PER_CAPACITY);
    }
}
