//! Group commit of writes on the leader: many requests, one Raft entry.
//!
//! openraft 0.9 turns every `client_write` into its own log append, and the
//! leader's core waits for each append's `fdatasync` before it replicates the
//! entry or looks at the next request. With one entry per write, the rate of
//! writes is therefore bounded by the rate of fsyncs (≈ 2,000/s on the
//! benchmark machine), however many clients are waiting.
//!
//! The [`WriteBatcher`] sits in front of `client_write`. Every write the
//! leader proposes (client writes, forwarded ones, the timer's and the
//! dispatcher's proposals, worker results) is queued. A proposer task takes
//! the first queued write, waits for one of [`MAX_IN_FLIGHT`] proposal slots,
//! and then takes everything else that queued meanwhile (up to
//! [`MAX_BATCH_REQUESTS`] and [`MAX_BATCH_BYTES`]):
//!
//! - a lone write is proposed as itself, so a single client pays nothing
//!   extra (no timer, no waiting for company);
//! - several are proposed as one `Command::Batch` entry, applied request by
//!   request (each with its own time, principal and write id), and each
//!   caller receives its own result;
//! - a proposal that fails (this node stopped leading, shut down) fails every
//!   write in it with the same error: each caller's router retries on its
//!   own, and the write ids make those retries safe.
//!
//! The batch grows with the load by itself: while entries are in flight,
//! writes accumulate, and the next entry carries all of them. The byte bound
//! keeps an entry well below sled's inline-value limit (see the caveat in
//! [`crate::raft`]); a single larger write still goes alone.
//!
//! The queue is bounded ([`MAX_QUEUED_WRITES`]): a write that finds it full
//! is refused at once with `ResourceExhausted` (the API's
//! `RESOURCE_EXHAUSTED`) instead of waiting behind ever more writes.
//!
//! The proposer task and the task of every entry in flight are spawned on
//! the node's task tracker. The proposer stops when the shutdown signal is
//! cancelled, answering every write still queued `Unavailable` (the
//! entries in flight end when Raft stops), or when the [`WriteBatcher`]
//! (the sending side of its queue) is dropped, after proposing what was
//! queued.

use std::future::Future;

use std::sync::Arc;
use tracing::Instrument as _;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::scheduler::{Command, Request, Response};

/// Entries proposed and not yet answered, at most. One: every entry (and
/// its three fsyncs, one per node) costs the cluster about as much CPU as
/// the requests in it, so fewer, fuller entries win. Measured against two
/// in flight (which let the next entry's local append overlap the previous
/// one's replication), `kairos-bench`, same hour, 2026-11-27: 64 clients
/// 5,680–5,735 vs 5,083–5,093 creates/s with lower p50 and p99; dispatch
/// at 8,000 fires/s unchanged; a lone write is unaffected.
pub const MAX_IN_FLIGHT: usize = 1;
/// Requests per batch entry, at most (bounds the time one apply holds the state lock).
pub const MAX_BATCH_REQUESTS: usize = 1_024;
/// Encoded bytes per batch entry, at most (a single larger request goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Writes waiting for the proposer task, at most: four full entries. The
/// task takes the queue an entry at a time with one entry in flight, so a
/// write admitted behind a full queue is in one of the next four entries —
/// about half a second of work at the ≈ 8,000 writes/s a leader commits
/// (`BENCHMARKS.md`). Each waiting write is a caller awaiting its answer,
/// so only thousands of concurrent writers meet the bound; past it they are
/// refused at once rather than queued ever longer, and the leader's memory
/// for waiting writes stays bounded.
pub const MAX_QUEUED_WRITES: usize = 4 * MAX_BATCH_REQUESTS;
/// Principal recorded on batch entries (each request keeps its own).
const BATCH_PRINCIPAL: &str = "kairos-batcher";

/// Where batches go: the Raft leader, or a fake in tests.
pub trait Proposer: Send + Sync + 'static {
    /// Proposes one entry and waits for its result (committed and applied).
    fn propose(&self, request: Request) -> impl Future<Output = Result<Response>> + Send;

    /// [`Proposer::propose`] of an entry with traced writes (`writes`: the
    /// context of each write of the entry, in its order), also telling
    /// where the entry landed when that is known (for the `raft.commit` and
    /// `raft.apply` spans, and the runs' creators).
    fn propose_traced(
        &self,
        request: Request,
        writes: Vec<Option<opentelemetry::Context>>,
    ) -> impl Future<Output = (Result<Response>, Option<Landed>)> + Send {
        let _ = writes;
        async move { (self.propose(request).await, None) }
    }
}

/// Where a proposed entry landed: its log index and, when known, when the
/// leader's state machine applied it.
#[derive(Clone, Copy, Debug)]
pub struct Landed {
    /// The entry's log index.
    pub log_index: u64,
    /// When the apply began and ended.
    pub applied: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

/// A write waiting in the queue.
struct Queued {
    request: Request,
    bytes: usize,
    reply: oneshot::Sender<Result<Response>>,
    /// The write's `raft.propose` span (disabled while tracing is off).
    span: tracing::Span,
}

/// The queue in front of the proposer task; see the module docs.
pub struct WriteBatcher {
    /// Writes waiting for the proposer task (at most [`MAX_QUEUED_WRITES`]).
    queue: mpsc::Sender<Queued>,
    /// The last time [`WriteBatcher::propose_now`] stamped, Unix ms; held
    /// while a write is stamped and queued.
    last_stamp: std::sync::Mutex<i64>,
}

impl WriteBatcher {
    /// Starts the proposer task on `tasks`; it ends when `shutdown` is
    /// cancelled or the returned batcher is dropped.
    pub fn start<P: Proposer>(proposer: P, tasks: &TaskTracker, shutdown: CancellationToken) -> WriteBatcher {
        WriteBatcher::spawn(proposer, tasks, shutdown).0
    }

    fn spawn<P: Proposer>(
        proposer: P,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> (WriteBatcher, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(MAX_QUEUED_WRITES);
        let task = tasks.spawn(run(Arc::new(proposer), receiver, tasks.clone(), shutdown));
        let batcher = WriteBatcher {
            queue,
            last_stamp: std::sync::Mutex::new(i64::MIN),
        };
        (batcher, task)
    }

    /// Proposes `request` (alone or with others) and returns its own result;
    /// `ResourceExhausted` at once when the queue is full.
    pub async fn propose(&self, request: Request) -> Result<Response> {
        self.propose_stamped(request, false).await
    }

    /// [`WriteBatcher::propose`] with `request` stamped with the leader's
    /// time now (`at_ms`) as it is queued: stamps follow the queue's order,
    /// which is the log's, and never go back, so a write that the log
    /// orders after another never carries an earlier time (two writers
    /// stamping first and queueing after could swap otherwise, and a run's
    /// end could read as before a pause that the log applied first).
    pub async fn propose_now(&self, request: Request) -> Result<Response> {
        self.propose_stamped(request, true).await
    }

    /// Queues `request` (stamped when `stamp`) in its `raft.propose` span
    /// (when traced) and waits for its answer.
    async fn propose_stamped(&self, request: Request, stamp: bool) -> Result<Response> {
        let span = match crate::telemetry::in_trace() {
            true => tracing::info_span!("raft.propose"),
            false => tracing::Span::none(),
        };
        let answer = self.enqueue(request, span.clone(), stamp)?;
        answer
            .instrument(span)
            .await
            .map_err(|_| Error::unavailable("the write batcher stopped before answering"))?
    }

    /// Queues `request` (stamped now when `stamp`, under the stamp's lock,
    /// so stamps follow the queue); `ResourceExhausted` when the queue is full.
    fn enqueue(
        &self,
        mut request: Request,
        span: tracing::Span,
        stamp: bool,
    ) -> Result<oneshot::Receiver<Result<Response>>> {
        let bytes = crate::raft::encoded_len(&request)?;
        let (reply, answer) = oneshot::channel();
        let mut last_stamp = stamp.then(|| self.last_stamp.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(last) = last_stamp.as_deref_mut() {
            request.at_ms = chrono::Utc::now().timestamp_millis().max(*last);
            *last = request.at_ms;
        }
        let queued = Queued {
            request,
            bytes,
            reply,
            span,
        };
        self.queue.try_send(queued).map_err(|e| match e {
            TrySendError::Full(_) => Error::ResourceExhausted(format!(
                "the leader's write queue is full ({} writes waiting); retry later",
                self.queue.max_capacity()
            )),
            TrySendError::Closed(_) => Error::unavailable("the write batcher has stopped"),
        })?;
        Ok(answer)
    }
}

/// The proposer task: batches while slots are busy, proposes (each entry on
/// its own task on `tasks`), answers; on `shutdown`, refuses what is queued.
async fn run<P: Proposer>(
    proposer: Arc<P>,
    mut queue: mpsc::Receiver<Queued>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Taken from the queue while over a batch's bounds: it opens the next batch.
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = queue.recv() => match next {
                    Some(first) => first,
                    None => return,
                },
            },
        };
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                carried = Some(first);
                break;
            }
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].bytes;
        while batch.len() < MAX_BATCH_REQUESTS {
            let Ok(next) = queue.try_recv() else { break };
            if bytes + next.bytes > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        let proposer = proposer.clone();
        tasks.spawn(async move {
            propose_batch(&*proposer, batch).await;
            drop(slot);
        });
    }
    queue.close();
    let stopped = Error::unavailable("the node is shutting down");
    for queued in carried
        .into_iter()
        .chain(std::iter::from_fn(|| queue.try_recv().ok()))
    {
        let _ = queued.reply.send(Err(stopped.clone()));
    }
}

/// Proposes `batch` as one entry and hands every caller its own result.
async fn propose_batch<P: Proposer>(proposer: &P, mut batch: Vec<Queued>) {
    let traced = traced_writes(&batch);
    if batch.len() == 1 {
        let Queued { request, reply, .. } = batch.pop().expect("one request");
        let result = propose_with_spans(proposer, request, traced).await;
        let _ = reply.send(result);
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<_>) = batch.into_iter().map(|q| (q.request, q.reply)).unzip();
    let count = requests.len();
    let entry = Request {
        at_ms: requests.iter().map(|r| r.at_ms).max().unwrap_or_default(),
        principal: BATCH_PRINCIPAL.into(),
        command: Command::Batch { requests },
        write_id: None,
    };
    match propose_with_spans(proposer, entry, traced).await {
        Ok(Response::Batch(results)) if results.len() == count => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(other) => {
            let error = Error::internal(format!("a batch of {count} requests was answered with {other:?}"));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// The traced writes of `batch`: per write, its context when it is
/// sampled, and for each such write a `raft.commit` span (a child of its
/// `raft.propose`: the entry carrying the write, from its proposal to its
/// apply on the leader). Empty while tracing is off or nothing is sampled.
struct TracedWrites {
    contexts: Vec<Option<opentelemetry::Context>>,
    commit_spans: Vec<tracing::Span>,
}

fn traced_writes(batch: &[Queued]) -> TracedWrites {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut traced = TracedWrites {
        contexts: Vec::new(),
        commit_spans: Vec::new(),
    };
    if !crate::telemetry::enabled() {
        return traced;
    }
    for queued in batch {
        let context = queued.span.context();
        if !context.span().span_context().is_sampled() {
            traced.contexts.push(None);
            continue;
        }
        traced.commit_spans.push(tracing::info_span!(
            parent: &queued.span,
            "raft.commit",
            raft.requests = batch.len(),
            raft.log_index = tracing::field::Empty,
        ));
        traced.contexts.push(Some(context));
    }
    traced
}

/// Proposes `entry`; with traced writes, records where it landed on their
/// `raft.commit` spans (and their `raft.apply` children), which end when
/// this returns.
async fn propose_with_spans<P: Proposer>(
    proposer: &P,
    entry: Request,
    traced: TracedWrites,
) -> Result<Response> {
    if traced.commit_spans.is_empty() {
        return proposer.propose(entry).await;
    }
    let (result, landed) = proposer.propose_traced(entry, traced.contexts).await;
    if let Some(landed) = landed {
        for span in &traced.commit_spans {
            span.record("raft.log_index", landed.log_index);
            if let Some((started, ended)) = landed.applied {
                crate::telemetry::record_past_span(
                    "raft.apply",
                    span,
                    started,
                    ended,
                    vec![opentelemetry::KeyValue::new(
                        "raft.log_index",
                        landed.log_index as i64,
                    )],
                );
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::FutureExt;
    use tokio::sync::Notify;

    use super::*;

    /// Records every entry; answers each request of a batch with its own job
    /// id (as `NotFound`, the simplest result that names it), and holds
    /// every proposal until released.
    #[derive(Default)]
    struct FakeRaft {
        entries: Mutex<Vec<Request>>,
        release: Notify,
        fail_with: Mutex<Option<Error>>,
    }

    fn answer(request: &Request) -> Result<Response> {
        match &request.command {
            Command::DeleteJob { id, .. } => Err(Error::NotFound(id.clone())),
            other => Err(Error::InvalidArgument(format!("unexpected {other:?}"))),
        }
    }

    impl Proposer for Arc<FakeRaft> {
        async fn propose(&self, request: Request) -> Result<Response> {
            self.entries.lock().unwrap().push(request.clone());
            self.release.notified().await;
            if let Some(error) = self.fail_with.lock().unwrap().clone() {
                return Err(error);
            }
            match &request.command {
                Command::Batch { requests } => Ok(Response::Batch(requests.iter().map(answer).collect())),
                _ => answer(&request),
            }
        }
    }

    fn delete(id: &str) -> Request {
        Request {
            at_ms: 1_000,
            principal: "alice".into(),
            command: Command::DeleteJob {
                id: id.into(),
                expected_version: None,
            },
            write_id: Some(format!("w-{id}")),
        }
    }

    /// A batcher on a tracker and a shutdown signal of its own.
    fn untracked<P: Proposer>(proposer: P) -> WriteBatcher {
        WriteBatcher::start(proposer, &TaskTracker::new(), CancellationToken::new())
    }

    /// Lets spawned tasks run until they all wait.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn entry_sizes(raft: &FakeRaft) -> Vec<usize> {
        raft.entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| match &e.command {
                Command::Batch { requests } => requests.len(),
                _ => 1,
            })
            .collect()
    }

    type Call = tokio::task::JoinHandle<Result<Response>>;

    fn spawn_propose(batcher: &Arc<WriteBatcher>, request: Request) -> Call {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.propose(request).await })
    }

    /// A batcher whose slots are all taken by lone writes (`busy0`, ...),
    /// proposed one at a time so each is its own entry.
    async fn busy_batcher() -> (Arc<FakeRaft>, Arc<WriteBatcher>, Vec<Call>) {
        let raft = Arc::new(FakeRaft::default());
        let batcher = Arc::new(untracked(raft.clone()));
        let mut calls = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            calls.push(spawn_propose(&batcher, delete(&format!("busy{i}"))));
            settle().await;
        }
        (raft, batcher, calls)
    }

    #[tokio::test]
    async fn stamps_follow_the_queue_and_never_go_back() {
        let (raft, batcher, busy) = busy_batcher().await;
        let mut calls = Vec::new();
        for i in 0..20 {
            let batcher = batcher.clone();
            let request = Request {
                at_ms: i64::MAX,
                ..delete(&format!("w{i}"))
            };
            calls.push(tokio::spawn(async move { batcher.propose_now(request).await }));
        }
        settle().await;
        for _ in 0..4 {
            raft.release.notify_waiters();
            settle().await;
        }
        for call in busy.into_iter().chain(calls) {
            let _ = call.await.unwrap();
        }
        let stamps: Vec<i64> = raft
            .entries
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| match &e.command {
                Command::Batch { requests } => requests.iter().map(|r| r.at_ms).collect(),
                _ => vec![e.at_ms],
            })
            .filter(|&at| at != 1_000)
            .collect();
        assert_eq!(stamps.len(), 20, "{stamps:?}");
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
        let now = chrono::Utc::now().timestamp_millis();
        assert!(
            stamps.iter().all(|&at| at <= now && at > now - 60_000),
            "{stamps:?}"
        );
    }

    #[test]
    fn the_size_counted_against_the_bound_is_the_encoded_size() {
        let batch = Request {
            command: Command::Batch {
                requests: vec![delete("a"), delete(&"b".repeat(300))],
            },
            ..delete("batch")
        };
        for request in [delete("a"), batch] {
            assert_eq!(
                crate::raft::encoded_len(&request).unwrap(),
                crate::raft::encode(&request).unwrap().len()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_write_is_proposed_as_itself() {
        let raft = Arc::new(FakeRaft::default());
        let batcher = Arc::new(untracked(raft.clone()));
        let call = spawn_propose(&batcher, delete("a"));
        settle().await;
        assert_eq!(raft.entries.lock().unwrap().clone(), vec![delete("a")]);
        raft.release.notify_waiters();
        assert_eq!(call.await.unwrap(), Err(Error::NotFound("a".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_queued_while_slots_are_busy_share_one_entry_and_get_their_own_results() {
        // Fill the slots with lone writes, then queue five more.
        let (raft, batcher, mut calls) = busy_batcher().await;
        calls.extend((0..5).map(|i| spawn_propose(&batcher, delete(&format!("queued{i}")))));
        settle().await;
        assert_eq!(
            entry_sizes(&raft),
            vec![1; MAX_IN_FLIGHT],
            "nothing more proposed while the slots are busy"
        );
        raft.release.notify_waiters();
        settle().await;
        assert_eq!(entry_sizes(&raft), [vec![1; MAX_IN_FLIGHT], vec![5]].concat());
        let batch = raft.entries.lock().unwrap().last().cloned().unwrap();
        let Command::Batch { requests } = batch.command else {
            panic!("not a batch")
        };
        let ids: Vec<_> = (0..5).map(|i| delete(&format!("queued{i}"))).collect();
        assert_eq!(requests, ids, "every request as sent, in arrival order");
        assert_eq!(batch.write_id, None);
        raft.release.notify_waiters();
        let mut names = Vec::new();
        for call in calls {
            match call.await.unwrap() {
                Err(Error::NotFound(id)) => names.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut expected: Vec<String> = (0..MAX_IN_FLIGHT).map(|i| format!("busy{i}")).collect();
        expected.extend((0..5).map(|i| format!("queued{i}")));
        assert_eq!(names, expected, "each caller got the result of its own request");
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_bound_splits_batches_and_a_large_write_goes_alone() {
        let (raft, batcher, mut calls) = busy_batcher().await;
        let big = |name: &str, bytes: usize| Request {
            principal: "x".repeat(bytes),
            ..delete(name)
        };
        // 0.4 + 0.4 MiB fit together; the third 0.4 MiB does not; the
        // 1.5 MiB one exceeds the bound on its own.
        for (name, bytes) in [
            ("a", 400_000),
            ("b", 400_000),
            ("c", 400_000),
            ("huge", 1_500_000),
        ] {
            calls.push(spawn_propose(&batcher, big(name, bytes)));
        }
        settle().await;
        for _ in 0..4 {
            raft.release.notify_waiters();
            settle().await;
        }
        assert_eq!(
            entry_sizes(&raft),
            [vec![1; MAX_IN_FLIGHT], vec![2, 1, 1]].concat()
        );
        for entry in raft.entries.lock().unwrap().iter() {
            let bytes = crate::raft::encode(entry).unwrap().len();
            assert!(
                bytes <= MAX_BATCH_BYTES || !matches!(entry.command, Command::Batch { .. }),
                "a batch of {bytes} bytes"
            );
        }
        for call in calls {
            call.await.unwrap().unwrap_err();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_entry_fails_every_write_in_it_with_its_error() {
        let (raft, batcher, mut calls) = busy_batcher().await;
        calls.extend((0..3).map(|i| spawn_propose(&batcher, delete(&format!("queued{i}")))));
        settle().await;
        let lost = Error::unavailable("leadership lost");
        *raft.fail_with.lock().unwrap() = Some(lost.clone());
        for _ in 0..2 {
            raft.release.notify_waiters();
            settle().await;
        }
        assert_eq!(entry_sizes(&raft), [vec![1; MAX_IN_FLIGHT], vec![3]].concat());
        for call in calls {
            assert_eq!(call.await.unwrap(), Err(lost.clone()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_stops_when_the_batcher_is_dropped() {
        let raft = Arc::new(FakeRaft::default());
        let (batcher, task) =
            WriteBatcher::spawn(raft.clone(), &TaskTracker::new(), CancellationToken::new());
        let call = tokio::spawn(async move {
            let answer = batcher.propose(delete("last")).await;
            drop(batcher);
            answer
        });
        settle().await;
        raft.release.notify_waiters();
        assert_eq!(call.await.unwrap(), Err(Error::NotFound("last".into())));
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the task ends once the batcher is gone")
            .expect("the task did not panic");
    }

    /// Answers every request `Ok(Empty)` once let through `gate`, and says
    /// on `entered` how many requests each proposal carries as it begins.
    struct GatedProposer {
        gate: Semaphore,
        entered: mpsc::UnboundedSender<usize>,
    }

    impl GatedProposer {
        fn new() -> (Arc<GatedProposer>, mpsc::UnboundedReceiver<usize>) {
            let (entered, proposals) = mpsc::unbounded_channel();
            let gate = Semaphore::new(0);
            (Arc::new(GatedProposer { gate, entered }), proposals)
        }
    }

    impl Proposer for Arc<GatedProposer> {
        async fn propose(&self, request: Request) -> Result<Response> {
            let count = match &request.command {
                Command::Batch { requests } => requests.len(),
                _ => 1,
            };
            let _ = self.entered.send(count);
            self.gate.acquire().await.expect("never closed").forget();
            Ok(match request.command {
                Command::Batch { requests } => {
                    Response::Batch(requests.iter().map(|_| Ok(Response::Empty)).collect())
                }
                _ => Response::Empty,
            })
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_a_write_with_resource_exhausted_until_it_drains() {
        let (proposer, mut proposals) = GatedProposer::new();
        let batcher = Arc::new(untracked(proposer.clone()));
        // The one slot is held by a proposal that is not answered.
        let busy = spawn_propose(&batcher, delete("busy"));
        assert_eq!(proposals.recv().await, Some(1));
        // Fill the queue: each call is polled once (which queues its write)
        // without yielding, so the proposer task takes none of them.
        let mut waiting = Vec::new();
        for i in 0..MAX_QUEUED_WRITES {
            let mut call = batcher.propose(delete(&format!("w{i}"))).boxed();
            assert!(
                futures::poll!(&mut call).is_pending(),
                "write {i} was answered early"
            );
            waiting.push(call);
        }
        // Refused at once: answered on its first poll.
        match batcher.propose(delete("one-too-many")).now_or_never() {
            Some(Err(Error::ResourceExhausted(message))) => assert_eq!(
                message,
                format!("the leader's write queue is full ({MAX_QUEUED_WRITES} writes waiting); retry later")
            ),
            other => panic!("a write beyond the bound was answered {other:?}"),
        }
        proposer.gate.add_permits(1 << 20);
        assert_eq!(busy.await.unwrap(), Ok(Response::Empty));
        for call in waiting {
            assert_eq!(call.await, Ok(Response::Empty), "every queued write is answered");
        }
        assert_eq!(
            batcher.propose(delete("after")).await,
            Ok(Response::Empty),
            "accepted again once the queue drained"
        );
        let sizes: Vec<usize> = std::iter::from_fn(|| proposals.try_recv().ok()).collect();
        let full_entries = MAX_QUEUED_WRITES / MAX_BATCH_REQUESTS;
        assert_eq!(sizes, [vec![MAX_BATCH_REQUESTS; full_entries], vec![1]].concat());
    }

    #[tokio::test]
    async fn on_shutdown_queued_writes_are_refused_and_every_task_ends() {
        let (proposer, mut proposals) = GatedProposer::new();
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let batcher = Arc::new(WriteBatcher::start(proposer.clone(), &tasks, shutdown.clone()));
        let busy = spawn_propose(&batcher, delete("busy"));
        assert_eq!(proposals.recv().await, Some(1));
        let mut queued = batcher.propose(delete("queued")).boxed();
        assert!(futures::poll!(&mut queued).is_pending());
        shutdown.cancel();
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), queued).await;
        assert_eq!(refused, Ok(Err(Error::unavailable("the node is shutting down"))));
        assert_eq!(
            batcher.propose(delete("late")).await,
            Err(Error::unavailable("the write batcher has stopped"))
        );
        // The entry in flight still gets its answer (on a node: Raft's refusal).
        proposer.gate.add_permits(1);
        assert_eq!(busy.await.unwrap(), Ok(Response::Empty));
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
            .await
            .expect("the proposer task and the entry's task ended");
    }
}
