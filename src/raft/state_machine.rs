//! The state machine adapter: committed entries in, [`State`] out, persisted
//! as a snapshot plus the log.
//!
//! The authoritative [`State`] lives in memory and is shared with readers
//! through a [`StateHandle`]. Applying an entry changes only memory: what
//! makes the state durable is the Raft log itself (every entry is fsynced
//! before it is acknowledged, see [`super::log_store`]) and the last
//! snapshot. On start the state is the stored snapshot's (or empty), and
//! openraft re-applies the committed entries after it from the log, whose
//! committed index is stored; the log is purged only up to a stored
//! snapshot. So the cost of applying a run is its in-memory transitions on
//! each node; a restart pays for loading the snapshot and replaying the log
//! behind it, which the snapshot policy bounds (see [`crate::node`]: a
//! snapshot is due after `--snapshot-logs` applied changes, and not before
//! a quarter as many as the state holds jobs and runs; an entry counts each
//! fire, start, result or expiry it carries, via
//! [`crate::scheduler::Request::weight`]).
//!
//! (Older versions also wrote every changed job and run to sled tables: at
//! 8,000 runs/s those writes, and sled's copying and freeing of the pages
//! they touched, were 40 % of the nodes' CPU. A data directory with such
//! tables is migrated on open, see [`super::legacy`].)
//!
//! Snapshots are the postcard encoding of a [`StateImage`] (the replicated
//! content of the state; taking one is O(1), so encoding it runs on a blocking
//! thread while the state machine goes on applying), stored in their own
//! file beside sled's database ([`super::snapshot_file`], whose header states
//! the format version, see [`crate::codec`]) and fsynced before
//! openraft may purge the log behind them. Installing a snapshot stores it
//! first, then replaces the state.
//!
//! IMPLEMENTATION CAVEATS: a snapshot is built in memory (the encoded state must
//! fit in RAM twice) and sent with openraft's chunked transfer. Good enough for
//! a few hundred MB of state; streaming from a file is future work.

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageIOError,
    StoredMembership,
};
use tokio::sync::broadcast;

use super::durability::Disk;
use super::snapshot_file::{Format, Meta, SnapshotFile};
use super::stats::RaftStats;
use super::{legacy, NodeId, StorageError, TypeConfig};
use crate::cluster_version::{ClusterVersion, SnapshotTrailer, Version};
use crate::error::{Error, Result};
use crate::scheduler::run::Run;
use crate::scheduler::state::StateImage;
use crate::scheduler::{Changes, CommandResult, Response, State};

/// A membership as stored with the state.
pub type Membership = StoredMembership<NodeId, BasicNode>;

fn snap_write(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e)).into()
}
fn snap_read(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::error(e)).into()
}

/// How many applies a run watcher may fall behind before it must rescan.
const RUN_FEED_CAPACITY: usize = 1024;

/// What the state machine tells run watchers after each apply.
#[derive(Clone, Debug)]
pub enum RunFeed {
    /// These runs changed; each as it is after the apply, in (revision, id) order.
    Changed(Arc<Vec<Run>>),
    /// The whole state was replaced by a snapshot: look at the state again.
    Reset,
}

/// Shared read access to the applied state, and its change feed, for the API.
#[derive(Clone)]
pub struct StateHandle {
    state: Arc<RwLock<State>>,
    run_feed: broadcast::Sender<RunFeed>,
    /// The audit chain's head sequence number after each apply: what
    /// lifecycle watchers and sink deliveries wait on.
    audit_head: Arc<tokio::sync::watch::Sender<u64>>,
    /// The leader's tracing: apply times, traced writes in flight, run creators.
    pub traces: Arc<crate::telemetry::LeaderTraces>,
    /// Where in the log the state is: changed only while the state's write
    /// lock is held, so a reader holding the read lock sees the position of
    /// the state it reads ([`StateHandle::read_at`]).
    position: Arc<Mutex<AppliedPosition>>,
    /// The recorded cluster version as applied, and this node's refusal
    /// to go on when it is too old for it (see [`crate::cluster_version`]).
    pub cluster_version: ClusterVersion,
}

/// The log position of the applied state: its last applied log id and the
/// membership as of that entry.
#[derive(Clone, Debug, Default)]
pub struct AppliedPosition {
    /// The last applied log id (`None` before anything was applied).
    pub log_id: Option<LogId<NodeId>>,
    /// The membership in effect at `log_id`.
    pub membership: Membership,
}

impl Default for StateHandle {
    fn default() -> Self {
        StateHandle {
            state: Arc::default(),
            run_feed: broadcast::channel(RUN_FEED_CAPACITY).0,
            audit_head: Arc::new(tokio::sync::watch::channel(0).0),
            traces: Arc::default(),
            position: Arc::default(),
            cluster_version: ClusterVersion::default(),
        }
    }
}

impl StateHandle {
    /// A read guard on the state. Hold it briefly: `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A read guard on the state and the log position it is at (a
    /// consistent pair: what a backup is taken from). Hold it briefly.
    pub fn read_at(&self) -> (RwLockReadGuard<'_, State>, AppliedPosition) {
        let state = self.read();
        let position = self.position.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (state, position)
    }

    /// Sets the position; call with the state's write lock held.
    fn set_position(&self, log_id: Option<LogId<NodeId>>, membership: Option<&Membership>) {
        let mut position = self.position.lock().unwrap_or_else(|p| p.into_inner());
        position.log_id = log_id;
        if let Some(membership) = membership {
            position.membership = membership.clone();
        }
    }

    /// A read guard on the state if no apply holds it now.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, State>> {
        match self.state.try_read() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Replaces the state (tests of what reads it).
    #[cfg(test)]
    pub(crate) fn replace_for_tests(&self, state: State) {
        *self.write() = state;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run changes applied from now on. Subscribe before reading the state,
    /// so nothing applied in between is missed.
    pub fn subscribe_runs(&self) -> broadcast::Receiver<RunFeed> {
        self.run_feed.subscribe()
    }

    /// The audit head sequence number as applied, changing after every
    /// apply that appended entries (or installed a snapshot).
    pub fn subscribe_audit_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.audit_head.subscribe()
    }

    fn publish_audit_head(&self, seq: u64) {
        self.audit_head.send_if_modified(|head| {
            let changed = *head != seq;
            *head = seq;
            changed
        });
    }

    fn publish(&self, feed: RunFeed) {
        // An error only means nobody listens.
        let _ = self.run_feed.send(feed);
    }
}

/// openraft state machine over [`State`], persisted as snapshot plus log.
pub struct StateMachineStore {
    /// Where the stored snapshot lives.
    snapshot_file: Arc<SnapshotFile>,
    state: StateHandle,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// Counter making snapshot ids unique within this process.
    snapshot_seq: u64,
    /// Audit entries each state this store makes keeps (`--audit-retain`).
    audit_retain: u64,
    /// Changes applied since the last snapshot was built ([`crate::scheduler::Request::weight`]
    /// of each entry; see [`crate::node`]'s snapshot trigger).
    changes_since_snapshot: Arc<AtomicU64>,
    /// Where building snapshots is measured.
    stats: RaftStats,
    /// The deliberately broken build's setting, given to every state this
    /// store makes (see `crate::chaos_break`).
    #[cfg(feature = "chaos-break")]
    chaos_break: Option<crate::chaos_break::ChaosBreak>,
}

impl StateMachineStore {
    /// Opens the state of `disk`: the stored snapshot's, after moving what an
    /// older version kept in sled (see [`legacy`]).
    pub fn open(disk: Disk) -> Result<StateMachineStore> {
        let snapshot_file = Arc::new(SnapshotFile::in_dir(disk.dir()));
        legacy::move_legacy_snapshot(&disk, &snapshot_file)?;
        legacy::migrate_state_tables(&disk, &snapshot_file)?;
        legacy::upgrade_snapshot_file(&snapshot_file)?;
        let mut store = StateMachineStore {
            snapshot_file,
            state: StateHandle::default(),
            last_applied: None,
            membership: Membership::default(),
            snapshot_seq: 0,
            audit_retain: crate::scheduler::audit::DEFAULT_RETAIN,
            changes_since_snapshot: Arc::default(),
            stats: disk.stats().clone(),
            #[cfg(feature = "chaos-break")]
            chaos_break: None,
        };
        if let Some((meta, state)) = store.load_snapshot()? {
            store.replace(&meta, state);
        }
        Ok(store)
    }

    /// This store, breaking its state as `chaos_break` says, now and in
    /// every state it loads later (the chaos suite's broken build).
    #[cfg(feature = "chaos-break")]
    pub fn with_chaos_break(mut self, chaos_break: Option<crate::chaos_break::ChaosBreak>) -> Self {
        self.chaos_break = chaos_break;
        self.state.write().set_chaos_break(chaos_break);
        self
    }

    /// This store, keeping at most `retain` audit entries, now and in every
    /// state it loads later (a local setting, see `scheduler::audit`).
    pub fn with_audit_retain(mut self, retain: u64) -> Self {
        self.audit_retain = retain;
        self.state.write().set_audit_retain(retain);
        self
    }

    /// A handle for reading the applied state.
    pub fn state_handle(&self) -> StateHandle {
        self.state.clone()
    }

    /// A shared count of the changes applied since the last snapshot was built.
    pub fn changes_since_snapshot(&self) -> Arc<AtomicU64> {
        self.changes_since_snapshot.clone()
    }

    /// The stored snapshot's state, decoded as the file is read (see
    /// [`SnapshotFile::read_with`]); if that fails, decoded from the whole
    /// file read at once, which has no limit on the length of one string
    /// (the streamed decode's scratch buffer has) and otherwise reports
    /// the same damage.
    fn load_snapshot(&self) -> Result<Option<(Meta, State)>> {
        match self.snapshot_file.read_with(decode_streamed) {
            Ok(loaded) => Ok(loaded),
            Err(e) => {
                tracing::warn!("reading the snapshot as it is decoded failed ({e}); reading it whole");
                let Some(stored) = self.snapshot_file.read().map_err(Error::internal)? else {
                    return Ok(None);
                };
                let state = Self::decode_state(&stored.data).map_err(Error::internal)?;
                Ok(Some((stored.meta, state)))
            }
        }
    }

    /// Decodes a snapshot's state: its image, and the cluster version
    /// recorded after it (see [`SnapshotTrailer`]).
    fn decode_state(data: &[u8]) -> Result<State, StorageError> {
        let (image, rest) =
            postcard::take_from_bytes::<StateImage>(data).map_err(|e| snap_read(format!("decode: {e}")))?;
        let mut state = State::from_image(image);
        state.set_cluster_version(SnapshotTrailer::decode(rest).map_err(snap_read)?);
        Ok(state)
    }

    /// Makes `state`, described by `meta`, the current one.
    fn replace(&mut self, meta: &Meta, state: State) {
        let audit_head = {
            let mut current = self.state.write();
            *current = state;
            current.set_audit_retain(self.audit_retain);
            #[cfg(feature = "chaos-break")]
            current.set_chaos_break(self.chaos_break);
            self.state
                .set_position(meta.last_log_id, Some(&meta.last_membership));
            self.state.cluster_version.set_applied(current.cluster_version());
            current.audit().head().seq
        };
        self.state.publish(RunFeed::Reset);
        self.state.publish_audit_head(audit_head);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshot_file
            .read()
            .map_err(snap_read)?
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            }))
    }
}

/// Decodes a state from a snapshot's data as it is read.
fn decode_streamed(format: Format, input: &mut dyn std::io::Read) -> std::io::Result<State> {
    if format != Format::CURRENT {
        return Err(std::io::Error::other(format!(
            "the snapshot is of {format:?}, not of today's format version (it was to be migrated on open)"
        )));
    }
    // Strings and byte strings pass through this buffer one at a time (a
    // payload is at most 1 MiB); nothing in the state borrows from it.
    let mut scratch = vec![0u8; 2 << 20];
    let (image, (input, _)) =
        postcard::from_io::<StateImage, _>((input, &mut scratch[..])).map_err(std::io::Error::other)?;
    // What follows the image: the recorded cluster version, if above 0.1.
    let mut rest = Vec::new();
    input
        .take(SnapshotTrailer::LEN as u64 * 4)
        .read_to_end(&mut rest)?;
    let mut state = State::from_image(image);
    state.set_cluster_version(SnapshotTrailer::decode(&rest).map_err(std::io::Error::other)?);
    Ok(state)
}

/// The highest cluster version `request` records, if it records one (it may
/// be inside a batch).
fn recorded_version(request: &crate::scheduler::Request) -> Option<Version> {
    use crate::scheduler::Command;
    match &request.command {
        Command::SetClusterVersion { version } => Some(*version),
        Command::Batch { requests } => requests.iter().filter_map(recorded_version).max(),
        _ => None,
    }
}

/// Builds a snapshot from an image of the state taken while the state machine
/// was paused (which costs O(1)); encoding and storing it happen off that task.
pub struct SnapshotBuilder {
    file: Arc<SnapshotFile>,
    meta: Meta,
    image: Option<StateImage>,
    /// What follows the image: the recorded cluster version
    /// ([`SnapshotTrailer`], empty at 0.1 so the file is what 0.1 writes).
    trailer: Vec<u8>,
    /// Where the build's duration and size are recorded.
    stats: RaftStats,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Encodes the image straight into the snapshot file (no buffer of the
    /// whole encoding: at 64 clients creating jobs, growing and faulting in
    /// that buffer was half of what snapshots cost the leader) and returns
    /// the snapshot's meta with **empty data**: openraft 0.9 keeps only the
    /// meta of a snapshot it asked to build (`core::sm::worker`), and reads
    /// the data with `get_current_snapshot` when it sends one.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let image = self
            .image
            .take()
            .ok_or_else(|| snap_write("snapshot already built"))?;
        let (file, meta) = (self.file.clone(), self.meta.clone());
        let trailer = std::mem::take(&mut self.trailer);
        let started = std::time::Instant::now();
        let bytes = tokio::task::spawn_blocking(move || {
            let written = file.store_with(&meta, |out| {
                postcard::to_io(&image, &mut *out).map_err(std::io::Error::other)?;
                out.write_all(&trailer)
            });
            // The image shares nodes with the live state; dropping it here
            // keeps the release of the copies off the state machine's task.
            drop(image);
            written.map_err(snap_write)
        })
        .await
        .map_err(snap_write)??;
        if let Some(bytes) = bytes {
            tracing::info!(last_log_id = ?self.meta.last_log_id, bytes, "snapshot built");
            self.stats
                .snapshot_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            self.stats
                .snapshot_size_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut changes = Changes::default();
        let mut run_feed = None;
        let audit_head;
        let mut membership_changed = false;
        {
            let mut state = self.state.write();
            for entry in entries {
                // A cluster version above this node's: stop before applying it.
                if let EntryPayload::Normal(request) = &entry.payload {
                    if let Some(version) = recorded_version(request) {
                        if let Err(refusal) = self.state.cluster_version.check(version) {
                            return Err(StorageIOError::apply(entry.log_id, AnyError::error(refusal)).into());
                        }
                    }
                }
                self.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => Ok(Response::Empty),
                    EntryPayload::Normal(request) => {
                        self.changes_since_snapshot
                            .fetch_add(request.weight(), Ordering::Relaxed);
                        // Only the leader's entry with traced writes in it
                        // is timed and has its runs' creators recorded.
                        let traces = &self.state.traces;
                        let traced = crate::telemetry::enabled()
                            .then(|| traces.take_proposal(request.at_ms, &request.principal))
                            .flatten();
                        match traced {
                            None => state.apply(entry.log_id.index, &request, &mut changes),
                            Some(writes) => {
                                let started = std::time::SystemTime::now();
                                let result = state.apply(entry.log_id.index, &request, &mut changes);
                                traces.apply_times.record(
                                    entry.log_id.index,
                                    started,
                                    std::time::SystemTime::now(),
                                );
                                remember_creators(&traces.runs, &state, &result, &writes);
                                result
                            }
                        }
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
                        membership_changed = true;
                        Ok(Response::Empty)
                    }
                };
                results.push(result);
            }
            if !changes.runs.is_empty() && self.state.run_feed.receiver_count() > 0 {
                let mut changed: Vec<Run> = changes
                    .runs
                    .iter()
                    .filter_map(|&id| state.run(id).cloned())
                    .collect();
                changed.sort_by_key(|r| (r.revision, r.id));
                run_feed = Some(RunFeed::Changed(Arc::new(changed)));
            }
            audit_head = state.audit().head().seq;
            self.state
                .set_position(self.last_applied, membership_changed.then_some(&self.membership));
            self.state.cluster_version.set_applied(state.cluster_version());
        }
        if let Some(feed) = run_feed {
            self.state.publish(feed);
        }
        self.state.publish_audit_head(audit_head);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Take the image now, while openraft does not apply: the snapshot is
        // exactly the state at `last_applied`. Encoding and writing it out
        // happen in `build_snapshot`, while applying goes on.
        self.snapshot_seq += 1;
        self.changes_since_snapshot.store(0, Ordering::Relaxed);
        let (image, cluster_version) = {
            let state = self.state.read();
            (state.image(), state.cluster_version())
        };
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            file: self.snapshot_file.clone(),
            meta: Meta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            image: Some(image),
            trailer: SnapshotTrailer::encode(cluster_version),
            stats: self.stats.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "installing snapshot");
        let state = Self::decode_state(&data)?;
        // A cluster version above this node's: stop before installing it.
        self.state
            .cluster_version
            .check(state.cluster_version())
            .map_err(snap_read)?;
        // Stored before it becomes the state: the log behind it may go.
        self.snapshot_file.store(meta, &data).map_err(snap_write)?;
        self.replace(meta, state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.read_snapshot()
    }

    /// What openraft asks for on start: only the header is read (the whole
    /// file, hundreds of MB at a million jobs, stayed resident after it).
    async fn get_current_snapshot_meta(&mut self) -> Result<Option<Meta>, StorageError> {
        self.snapshot_file.read_meta().map_err(snap_read)
    }
}

/// Remembers, for each traced write of an applied entry (`writes`, in
/// the entry's order), the runs its result created: the ids a fire or
/// backfill lists, a trigger's run; for a publish, its event's runs among the
/// newest ones.
fn remember_creators(
    runs: &crate::telemetry::RunTraces,
    state: &State,
    result: &CommandResult,
    writes: &[Option<opentelemetry::Context>],
) {
    let results: Vec<&CommandResult> = match (result, writes.len()) {
        (Ok(Response::Batch(results)), n) if results.len() == n => results.iter().collect(),
        (_, 1) => vec![result],
        _ => return,
    };
    for (result, creator) in results.into_iter().zip(writes) {
        let (Ok(response), Some(creator)) = (result, creator) else {
            continue;
        };
        match response {
            Response::Fired { created, .. } => runs.remember(creator, created.iter().copied()),
            // A trigger's run (other writes answering a run end or cancel it).
            Response::Run(run) if run.status == crate::scheduler::RunStatus::Pending => {
                runs.remember(creator, [run.id])
            }
            Response::Published(published) if published.runs_created > 0 && !published.duplicate => {
                const LOOK_BACK: usize = 4_096;
                let created = state
                    .runs_newest_first()
                    .take(LOOK_BACK)
                    .filter(|run| run.event_id() == published.event_id)
                    .map(|run| run.id)
                    .take(published.runs_created as usize);
                runs.remember(creator, created);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::job::{Metadata, Policies, ScheduleSpec};
    use crate::scheduler::run::{AttemptOutcome, AttemptResult};
    use crate::scheduler::{Command, JobSpec, Request};

    #[test]
    fn a_snapshot_of_every_kind_of_record_decodes_as_it_is_read() {
        // Jobs with payloads, request and write records, runs in every state, counters.
        let mut state = State::default();
        let spec = JobSpec {
            job_type: "noop".into(),
            owner_service: "svc".into(),
            schedule: ScheduleSpec::Every {
                interval_ms: 1_000,
                phase_ms: 0,
            },
            payload: vec![7; 300],
            metadata: Metadata::default(),
            policies: Policies::default().shared(),
            paused: false,
        };
        let mut apply = |at_ms: i64, command: Command, write_id: Option<&str>| {
            let request = Request {
                at_ms,
                principal: "tester".into(),
                command,
                write_id: write_id.map(str::to_string),
            };
            let index = at_ms as u64;
            state.apply(index, &request, &mut Changes::default())
        };
        for n in 0..20 {
            let create = Command::CreateJob {
                id: format!("job-{n}"),
                spec: spec.clone(),
                request_id: Some(format!("req-{n}")),
            };
            apply(1_000 + n, create, Some(&format!("w-{n}"))).unwrap();
        }
        let fires = (0..20).map(|n| (format!("job-{n}"), 2_000)).collect();
        apply(2_000, Command::FireBatch { fires }, None).unwrap();
        let starts = (0..10).map(|id| (id, 1, 1)).collect();
        apply(2_001, Command::StartAttempts { starts }, None).unwrap();
        let results = (0..5)
            .map(|id| AttemptResult {
                run_id: id,
                token: 2_001,
                outcome: AttemptOutcome::Succeeded,
                output_tail: "done".into(),
            })
            .collect();
        apply(2_002, Command::FinishAttempts { results }, None).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        let meta = Meta::default();
        file.store(&meta, &crate::codec::encode_body(&state.image()).unwrap())
            .unwrap();
        let (_, decoded) = file.read_with(decode_streamed).unwrap().unwrap();
        assert_eq!(decoded, state);
        assert!(decoded.run_count() >= 20 && decoded.request("req-3").is_some());
    }

    #[tokio::test]
    async fn the_cluster_version_follows_the_image_only_above_the_oldest_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(SnapshotFile::in_dir(dir.path()));
        let mut state = State::default();
        let create = Command::CreateJob {
            id: "job-1".into(),
            spec: JobSpec {
                job_type: "noop".into(),
                owner_service: "svc".into(),
                schedule: ScheduleSpec::Every {
                    interval_ms: 1_000,
                    phase_ms: 0,
                },
                payload: vec![1; 10],
                metadata: Metadata::default(),
                policies: Policies::default().shared(),
                paused: false,
            },
            request_id: None,
        };
        let request = Request {
            at_ms: 1_000,
            principal: "tester".into(),
            command: create,
            write_id: None,
        };
        state.apply(1, &request, &mut Changes::default()).unwrap();
        for (index, version) in [(1, Version::OLDEST), (2, Version::new(0, 2))] {
            state.set_cluster_version(version);
            let meta = Meta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
                ..Meta::default()
            };
            let mut builder = SnapshotBuilder {
                file: file.clone(),
                meta,
                image: Some(state.image()),
                trailer: SnapshotTrailer::encode(version),
                stats: RaftStats::default(),
            };
            builder.build_snapshot().await.unwrap();
            let stored = file.read().unwrap().unwrap();
            let image = crate::codec::encode_body(&state.image()).unwrap();
            if version == Version::OLDEST {
                // Byte for byte what a node of 0.1 writes.
                assert_eq!(stored.data, image);
            } else {
                assert_eq!(&stored.data[..image.len()], &image[..]);
                assert_eq!(stored.data.len(), image.len() + SnapshotTrailer::LEN);
            }
            // What a node of 0.1 reads: the image, ignoring what follows.
            let old_read: StateImage = crate::codec::decode_body(&stored.data).unwrap();
            assert_eq!(old_read, state.image());
            let (_, streamed) = file.read_with(decode_streamed).unwrap().unwrap();
            assert_eq!(streamed.cluster_version(), version);
            assert_eq!(streamed, state);
            let whole = StateMachineStore::decode_state(&stored.data).unwrap();
            assert_eq!(whole.cluster_version(), version);
        }
    }
}
