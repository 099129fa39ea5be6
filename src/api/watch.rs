//! `WatchRuns`: a stream of run changes that a client can resume.
//!
//! Every run carries a *revision*, the Raft log index of the entry that last
//! changed it (as etcd's `mod_revision`). The pair (revision, run id) is a
//! *position*: each change of each run has its own, positions grow along the
//! log, and the log is the same on every replica, so "every change after
//! position P" means the same thing on every node — a client whose stream
//! breaks resumes from the last position it saw, on any node.
//!
//! A watch works in two modes:
//!
//! 1. **Catch-up.** Read the applied state and send, in position order, every
//!    matching run whose position is after the last one sent (at most
//!    [`CATCH_UP_BATCH`] per pass under the read lock, until none is left).
//! 2. **Follow.** Forward the state machine's run feed, which it publishes
//!    after each apply, dropping every run whose position is not after the
//!    last one sent.
//!
//! The watch subscribes to the feed *before* it first reads the state, so a
//! change applied in between is either in the state it reads or in the feed;
//! dropping positions already sent makes the overlap harmless. When the
//! watcher falls so far behind that the feed drops messages for it, or a
//! snapshot replaces the whole state, it catches up again from its last
//! position: nothing is skipped and the stream stays in order.
//!
//! A watch may start after a position this node has not applied yet: a
//! client resuming on a replica that lags a little, or a position the
//! cluster has not reached at all (a mistyped one). The watch then first
//! waits until the node has applied that revision and sends a progress
//! notice at the start position when it has, so a client can tell "the
//! log reached my position" from "no change since" (the CLI gives up after
//! `--timeout` without it, see `cli/run.rs`).
//!
//! IMPLEMENTATION CAVEATS: changes of a run that catch-up finds already
//! superseded arrive as one event with the latest state (as a Kubernetes
//! watch); a run removed by history retention is not reported; catch-up scans
//! all runs (or the job's runs) once per pass, which is fine at retention's
//! sizes.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert::run_to_pb;
use super::limits::Slot;
use crate::proto as pb;
use crate::raft::state_machine::{RunFeed, StateHandle};
use crate::scheduler::acl::{AclTables, Credential, Permission, Resource};
use crate::scheduler::{Run, RunId, State};

/// Runs read from the state per catch-up pass (the read lock is held that long).
pub const CATCH_UP_BATCH: usize = 1000;
/// Events buffered for a slow client before the watch stops reading the feed.
const STREAM_BUFFER: usize = 256;

/// A place in the run change stream: (revision, run id), ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Log index of the change.
    pub revision: u64,
    /// The run changed.
    pub run_id: RunId,
}

impl Position {
    /// The message form.
    pub fn to_pb(self) -> pb::WatchPosition {
        pb::WatchPosition {
            revision: self.revision,
            run_id: self.run_id,
        }
    }

    /// From the message form.
    pub fn from_pb(position: pb::WatchPosition) -> Position {
        Position {
            revision: position.revision,
            run_id: position.run_id,
        }
    }

    /// Where `run` is in the stream.
    pub fn of(run: &Run) -> Position {
        Position {
            revision: run.revision,
            run_id: run.id,
        }
    }
}

/// Up to `limit` runs of `job` (or of every job) changed after `after`, in
/// position order.
pub fn changed_after(state: &State, job: Option<&str>, after: Position, limit: usize) -> Vec<Run> {
    let mut found: Vec<&Run> = match job {
        Some(job) => state.job_runs(job).filter(|r| Position::of(r) > after).collect(),
        None => state.runs().filter(|r| Position::of(r) > after).collect(),
    };
    found.sort_unstable_by_key(|r| Position::of(r));
    found.into_iter().take(limit).cloned().collect()
}

/// The position of the latest change in `state`: a watch "from now" starts there.
pub fn latest_position(state: &State) -> Position {
    state
        .runs()
        .map(Position::of)
        .max()
        .map_or(Position::default(), |p| Position {
            revision: p.revision,
            run_id: RunId::MAX,
        })
}

/// Resolves once this node has applied the revision of a start position
/// it had not applied when the watch began (`true`), or cannot any more
/// because the node stops (`false`).
pub type PositionReached = BoxFuture<'static, bool>;

/// Starts a watch of `job`'s runs (all jobs when `None`) after `after` (from
/// now when `None`); `ahead` is given when `after` is beyond what this node
/// has applied (see the module docs). The stream ends with `UNAVAILABLE`
/// when `shutdown` fires, and the task ends when the client goes away,
/// giving back its `slot` (see [`super::limits`]).
pub fn watch_runs(
    state: StateHandle,
    reader: Reader,
    job: Option<String>,
    after: Option<Position>,
    ahead: Option<PositionReached>,
    slot: Slot,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<pb::RunEvent, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    // Subscribe now, before anything reads the state.
    let feed = state.subscribe_runs();
    tokio::spawn(async move {
        let _slot = slot;
        let watcher = Watcher {
            feed,
            last: after.unwrap_or_else(|| latest_position(&state.read())),
            state,
            reader,
            job,
            tx: tx.clone(),
        };
        let gone = tx.clone();
        tokio::select! {
            () = watcher.run(after.is_none(), ahead) => {}
            // The client went away while no event was flowing.
            () = gone.closed() => {}
            () = shutdown.cancelled() => {
                // Tell the client to resume elsewhere (it may already be gone).
                let _ = tx.try_send(Err(Status::unavailable("node shutting down")));
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The caller of a watch, checked again for every run sent: a revoked or
/// expired credential ends the stream (`UNAUTHENTICATED`), and runs of jobs
/// outside the caller's `run:read` scope are skipped.
#[derive(Clone, Debug)]
pub struct Reader {
    /// The caller's credential.
    pub credential: Credential,
}

impl Reader {
    /// Whether the reader may see `run` now; an error ends the stream.
    fn may_read(&self, state: &State, run: &Run) -> Result<bool, Status> {
        let subject = state
            .resolve(&self.credential, chrono::Utc::now().timestamp_millis())
            .map_err(super::to_status)?;
        let owner = state
            .job(&run.job_id)
            .map_or("", |j| j.spec.owner_service.as_str());
        Ok(subject.allows(Permission::RunRead, &Resource::job(&run.job_id, owner)))
    }
}

/// One watch's state.
struct Watcher {
    state: StateHandle,
    /// Who watches: each run is sent only if they may read it now.
    reader: Reader,
    feed: broadcast::Receiver<RunFeed>,
    job: Option<String>,
    /// The position of the last event sent (or the start position).
    last: Position,
    tx: mpsc::Sender<Result<pb::RunEvent, Status>>,
}

/// The client went away.
struct Gone;

impl Watcher {
    async fn run(mut self, announce_start: bool, ahead: Option<PositionReached>) {
        // A start ahead of the log is announced once the log reaches it.
        let announce_start = announce_start || ahead.is_some();
        if let Some(reached) = ahead {
            let reached = tokio::select! {
                reached = reached => reached,
                () = self.tx.closed() => return,
            };
            if !reached {
                let _ = self.tx.send(Err(Status::unavailable("node shutting down"))).await;
                return;
            }
        }
        if announce_start && self.send_progress().await.is_err() {
            return;
        }
        if self.catch_up().await.is_err() {
            return;
        }
        loop {
            let result = match self.feed.recv().await {
                Ok(RunFeed::Changed(runs)) => self.forward(runs).await,
                Ok(RunFeed::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = self.tx.send(Err(Status::unavailable("node shutting down"))).await;
                    return;
                }
            };
            if result.is_err() {
                return;
            }
        }
    }

    /// Sends every matching run changed after the last position, in order.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        loop {
            let batch = changed_after(&self.state.read(), self.job.as_deref(), self.last, CATCH_UP_BATCH);
            let full = batch.len() == CATCH_UP_BATCH;
            for run in &batch {
                self.send(run).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends the feed's runs that match and are new to this stream.
    async fn forward(&mut self, runs: Arc<Vec<Run>>) -> Result<(), Gone> {
        for run in runs.iter() {
            let matches = self.job.as_deref().is_none_or(|job| run.job_id == job);
            if matches && Position::of(run) > self.last {
                self.send(run).await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, run: &Run) -> Result<(), Gone> {
        let position = Position::of(run);
        let visible = self.reader.may_read(&self.state.read(), run);
        match visible {
            Ok(true) => {}
            Ok(false) => {
                self.last = position;
                return Ok(());
            }
            Err(status) => {
                let _ = self.tx.send(Err(status)).await;
                return Err(Gone);
            }
        }
        let event = pb::RunEvent {
            run: Some(run_to_pb(run)),
            position: Some(position.to_pb()),
        };
        self.tx.send(Ok(event)).await.map_err(|_| Gone)?;
        self.last = position;
        Ok(())
    }

    /// Tells the client where the stream is, so it can resume from there.
    async fn send_progress(&mut self) -> Result<(), Gone> {
        let event = pb::RunEvent {
            run: None,
            position: Some(self.last.to_pb()),
        };
        self.tx.send(Ok(event)).await.map_err(|_| Gone)
    }
}
