//! The result reporter: carries attempt results from a node's workers to the
//! Raft leader, many results per log entry.
//!
//! A worker that finishes an attempt hands its [`AttemptResult`] to the
//! node's reporter and is free at once. The reporter keeps one write in
//! flight and starts writes at least [`MIN_WRITE_INTERVAL`] apart: while a
//! `FinishAttempts` entry is being committed, and until the interval has
//! passed, the results that arrive queue up and go out together in the next
//! entry — group commit, so the number of entries per node is bounded by the
//! interval, not by the run rate or the commit latency. A result that
//! arrives after a quiet interval goes out at once.
//!
//! A result is re-sent until a leader commits it (a write that fails or
//! times out is retried with back-off, joined by whatever arrived meanwhile),
//! so a run that finishes during a failover is not lost; the state machine
//! acknowledges a repeat of a recorded result without change and refuses a
//! stale one, per result. A result still unsent after [`REPORT_FOR`] is
//! dropped with an error: by then its lease has long expired and the attempt
//! was retried elsewhere.
//!
//! Shutdown: the reporter's task runs on the node's task tracker. It ends
//! when the node's shutdown signal is cancelled (results not yet committed
//! then are logged and left to their leases, which expire and retry the
//! attempts), or when every [`ResultReporter`] handle is dropped and what
//! was queued has been committed or given up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WORKER_PRINCIPAL;
use crate::error::Result;
use crate::node::Node;
use crate::scheduler::run::AttemptResult;
use crate::scheduler::{Command, Response};

/// How long a result is re-sent before it is given up.
pub const REPORT_FOR: Duration = Duration::from_secs(600);
/// Most results in one entry.
const MAX_BATCH: usize = 512;
/// Most output bytes in one entry (each tail is at most 4 KiB).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Least time between the starts of two writes. Every entry costs each node
/// an fsync and a few context switches, whatever it holds; results are not
/// urgent (their worker is already free). 20 ms bounds the reporters of a
/// three-node cluster to 150 entries/s however many runs finish.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// First and longest pause before re-sending a batch that was not committed.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where batches of results are committed: the Raft node, or a fake in tests.
pub trait ResultSink: Send + Sync + 'static {
    /// Commits one `FinishAttempts` entry (through the leader).
    fn finish(&self, results: Vec<AttemptResult>) -> impl Future<Output = Result<Response>> + Send;
}

impl ResultSink for Node {
    async fn finish(&self, results: Vec<AttemptResult>) -> Result<Response> {
        self.write_fenced(WORKER_PRINCIPAL, Command::FinishAttempts { results })
            .await
    }
}

/// A handle to the node's reporter; cheap to clone.
#[derive(Clone)]
pub struct ResultReporter {
    queue: mpsc::UnboundedSender<(AttemptResult, Instant)>,
}

impl ResultReporter {
    /// Starts a reporter writing to `sink`, its task on `tasks`; the task
    /// ends when `shutdown` is cancelled, or after the last handle is dropped
    /// and the queue is drained.
    pub fn spawn<S: ResultSink>(
        sink: Arc<S>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> (ResultReporter, JoinHandle<()>) {
        let (queue, incoming) = mpsc::unbounded_channel();
        let task = tasks.spawn(report_results(sink, incoming, shutdown));
        (ResultReporter { queue }, task)
    }

    /// Queues a result; it is re-sent until committed (or [`REPORT_FOR`] passes).
    pub fn report(&self, result: AttemptResult) {
        if self.queue.send((result, Instant::now())).is_err() {
            tracing::error!("result reporter stopped; the attempt's lease will expire");
        }
    }
}

/// The reporter's loop: one batch in flight, retried until committed, until
/// `shutdown`.
async fn report_results<S: ResultSink>(
    sink: Arc<S>,
    mut incoming: mpsc::UnboundedReceiver<(AttemptResult, Instant)>,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<(AttemptResult, Instant)> = Vec::new();
    let mut retry_in = RETRY_FIRST;
    let mut last_write: Option<Instant> = None;
    loop {
        if pending.is_empty() {
            match shutdown.run_until_cancelled(incoming.recv()).await {
                Some(Some(result)) => pending.push(result),
                Some(None) => return,
                None => break,
            }
        }
        if let Some(last) = last_write {
            let interval = tokio::time::sleep_until(last + MIN_WRITE_INTERVAL);
            if shutdown.run_until_cancelled(interval).await.is_none() {
                break;
            }
        }
        last_write = Some(Instant::now());
        fill_batch(&mut pending, &mut incoming);
        let batch: Vec<AttemptResult> = pending.iter().map(|(r, _)| r.clone()).collect();
        let Some(written) = shutdown.run_until_cancelled(sink.finish(batch)).await else {
            break;
        };
        match written {
            Ok(Response::Finished { recorded, refused }) => {
                for (run, why) in &refused {
                    tracing::info!(run, "result not recorded: {why}");
                }
                tracing::debug!(recorded, refused = refused.len(), "results committed");
                pending.clear();
                retry_in = RETRY_FIRST;
            }
            Ok(other) => {
                tracing::warn!("unexpected reply to FinishAttempts: {other:?}");
                pending.clear();
            }
            Err(e) => {
                give_up_expired(&mut pending, &e);
                tracing::debug!(
                    results = pending.len(),
                    "results not committed yet ({e}); re-sending"
                );
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(retry_in))
                    .await
                    .is_none()
                {
                    break;
                }
                retry_in = (retry_in * 2).min(RETRY_MAX);
            }
        }
    }
    incoming.close();
    let unsent = pending.len() + std::iter::from_fn(|| incoming.try_recv().ok()).count();
    if unsent > 0 {
        tracing::warn!(
            results = unsent,
            "the node is stopping before these results were committed; their leases will expire and retry the attempts"
        );
    }
}

/// Adds what queued meanwhile to `pending`, up to a batch's bounds.
fn fill_batch(
    pending: &mut Vec<(AttemptResult, Instant)>,
    incoming: &mut mpsc::UnboundedReceiver<(AttemptResult, Instant)>,
) {
    let mut bytes: usize = pending.iter().map(|(r, _)| r.output_tail.len()).sum();
    while pending.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match incoming.try_recv() {
            Ok(result) => {
                bytes += result.0.output_tail.len();
                pending.push(result);
            }
            Err(_) => break,
        }
    }
}

/// Drops (with an error) the results first queued [`REPORT_FOR`] ago or
/// earlier; the last write failed with `error`.
fn give_up_expired(pending: &mut Vec<(AttemptResult, Instant)>, error: &crate::error::Error) {
    let now = Instant::now();
    pending.retain(|(result, queued)| {
        let keep = now.duration_since(*queued) < REPORT_FOR;
        if !keep {
            tracing::error!(run = result.run_id, "giving up reporting the result: {error}");
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::Error;
    use crate::scheduler::run::AttemptOutcome;

    /// Records every batch; refuses the first `fail_first` writes as a
    /// leaderless cluster would, and waits for `gate` before answering.
    struct FakeSink {
        batches: Mutex<Vec<Vec<u64>>>,
        fail_first: Mutex<usize>,
        gate: tokio::sync::Semaphore,
    }

    impl FakeSink {
        fn new(fail_first: usize, open: bool) -> Arc<FakeSink> {
            Arc::new(FakeSink {
                batches: Mutex::new(Vec::new()),
                fail_first: Mutex::new(fail_first),
                gate: tokio::sync::Semaphore::new(if open { 1 << 20 } else { 0 }),
            })
        }
        fn batches(&self) -> Vec<Vec<u64>> {
            self.batches.lock().unwrap().clone()
        }
    }

    impl ResultSink for FakeSink {
        async fn finish(&self, results: Vec<AttemptResult>) -> Result<Response> {
            self.gate.acquire().await.unwrap().forget();
            self.batches
                .lock()
                .unwrap()
                .push(results.iter().map(|r| r.run_id).collect());
            let mut fail = self.fail_first.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(Error::unavailable("no leader"));
            }
            Ok(Response::Finished {
                recorded: results.len() as u32,
                refused: vec![],
            })
        }
    }

    fn result(run_id: u64) -> AttemptResult {
        AttemptResult {
            run_id,
            token: 7,
            outcome: AttemptOutcome::Succeeded,
            output_tail: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn results_that_arrive_during_a_write_share_the_next_entry() {
        let sink = FakeSink::new(0, false);
        let (reporter, task) =
            ResultReporter::spawn(sink.clone(), &TaskTracker::new(), CancellationToken::new());
        reporter.report(result(1));
        // The first write is held at the gate; three more results queue behind it.
        tokio::task::yield_now().await;
        for run in 2..=4 {
            reporter.report(result(run));
        }
        sink.gate.add_permits(2);
        drop(reporter);
        task.await.unwrap();
        assert_eq!(sink.batches(), vec![vec![1], vec![2, 3, 4]]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_start_at_least_the_interval_apart_and_a_quiet_result_goes_at_once() {
        let sink = FakeSink::new(0, true);
        let (reporter, task) =
            ResultReporter::spawn(sink.clone(), &TaskTracker::new(), CancellationToken::new());
        let started = Instant::now();
        // A result every 2 ms for 100 ms: the first goes alone, the rest in
        // writes 20 ms apart.
        for run in 0..50 {
            reporter.report(result(run));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let during = sink.batches().len();
        assert!(
            (5..=7).contains(&during),
            "{during} writes in 100 ms: {:?}",
            sink.batches()
        );
        assert_eq!(sink.batches()[0], vec![0]);
        // After a quiet second, a result is written without waiting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = sink.batches().len();
        reporter.report(result(99));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(sink.batches().len(), before + 1, "written at once");
        assert_eq!(sink.batches().last().unwrap(), &vec![99]);
        drop(reporter);
        task.await.unwrap();
        let all: usize = sink.batches().iter().map(Vec::len).sum();
        assert_eq!(all, 51, "every result written once");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_was_not_committed_is_resent_with_what_arrived_meanwhile() {
        let sink = FakeSink::new(2, true);
        let (reporter, task) =
            ResultReporter::spawn(sink.clone(), &TaskTracker::new(), CancellationToken::new());
        reporter.report(result(1));
        reporter.report(result(2));
        // Let the first (failing) write happen, then add one more result.
        while sink.batches().is_empty() {
            tokio::task::yield_now().await;
        }
        reporter.report(result(3));
        drop(reporter);
        task.await.unwrap();
        assert_eq!(sink.batches(), vec![vec![1, 2], vec![1, 2, 3], vec![1, 2, 3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_is_given_up_after_report_for() {
        let sink = FakeSink::new(usize::MAX, true);
        let (reporter, task) =
            ResultReporter::spawn(sink.clone(), &TaskTracker::new(), CancellationToken::new());
        reporter.report(result(1));
        drop(reporter);
        let started = Instant::now();
        task.await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= REPORT_FOR, "gave up after {waited:?}");
        assert!(waited < REPORT_FOR + RETRY_MAX * 2, "kept trying for {waited:?}");
        assert!(
            sink.batches().len() > 100,
            "re-sent {} times",
            sink.batches().len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_capped() {
        let sink = FakeSink::new(0, false);
        let (reporter, task) =
            ResultReporter::spawn(sink.clone(), &TaskTracker::new(), CancellationToken::new());
        reporter.report(result(0));
        tokio::task::yield_now().await;
        for run in 1..=MAX_BATCH as u64 + 10 {
            reporter.report(result(run));
        }
        sink.gate.add_permits(3);
        drop(reporter);
        task.await.unwrap();
        let sizes: Vec<usize> = sink.batches().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, MAX_BATCH, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reporter_stops_on_shutdown_while_a_write_is_held_up() {
        let sink = FakeSink::new(0, false);
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let (reporter, task) = ResultReporter::spawn(sink.clone(), &tasks, shutdown.clone());
        reporter.report(result(1));
        // The first write is held at the gate, which never opens: with a
        // live handle the reporter would wait there, then retry for
        // REPORT_FOR.
        tokio::task::yield_now().await;
        reporter.report(result(2));
        shutdown.cancel();
        tokio::time::timeout(MIN_WRITE_INTERVAL, task)
            .await
            .expect("the reporter stops when the node stops")
            .unwrap();
        assert!(sink.batches().is_empty(), "nothing was committed");
        tasks.close();
        tasks.wait().await;
        drop(reporter);
    }
}
