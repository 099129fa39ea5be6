//! The state machine adapter: committed entries in, [`State`] out, persisted in
//! sled tables, with snapshots.
//!
//! The authoritative in-memory [`State`] is shared with readers through a
//! [`StateHandle`]. `apply` collects the keys the entries changed; at most every
//! [`TABLE_FLUSH_EVERY`] (or once [`TABLE_FLUSH_KEYS`] keys are waiting, and
//! when the store is dropped) the current value of every collected key is
//! written, together with the last applied log id and membership, in one
//! atomic sled batch to the tree `sm`, applied on the table writer's own
//! thread ([`super::table_writer`]). A run that is created, started and
//! finished within one interval is written once, not three times — the
//! tables' write volume, not the log's, was what bounded the run rate. The
//! tables are then exactly the state at the log id they record:
//!
//! - `job/<id>` → a job, `req/<request id>` → a create's idempotency record,
//!   `wr/<write id>` → a recent write's result (retries of a routed write),
//! - `run/<id, 8 bytes big-endian>` → a run, `cnt/<job id>` → a job's counters,
//! - `meta/applied` → last applied log id, `meta/membership` → stored membership,
//!   `meta/next_run_id` → the run id counter.
//!
//! On start the state is rebuilt from those tables, so a restart does not replay
//! more than the entries after the last persisted batch (at most about one
//! flush interval's worth after a crash). The tables are not fsynced on every
//! flush (the log is, and sled recovers a prefix of its writes, so the tables
//! can only lag the log, and openraft re-applies the rest from the log, whose
//! committed index is stored).
//!
//! Snapshots are the postcard encoding of a [`StateImage`] (the replicated
//! content of the state; taking one is O(1), so encoding it runs on a blocking
//! thread while the state machine goes on applying), stored in their own
//! file beside sled's database ([`super::snapshot_file`]: in sled, tens of
//! MB went through the same log as the Raft appends and stalled them), and
//! fsynced. A snapshot an older version stored in sled's tree `snapshot` is
//! moved to the file on open. Installing a snapshot first stores it, then
//! rewrites the tables; if the node crashes in between,
//! [`StateMachineStore::open`] notices that the stored snapshot is newer
//! than the tables and reloads from it. The same
//! holds when a crash leaves the tables behind a snapshot built from memory
//! (they lag by up to one flush interval), so the log may be purged up to a
//! snapshot without waiting for the tables.
//!
//! IMPLEMENTATION CAVEATS: a snapshot is built in memory (the encoded state must
//! fit in RAM twice) and sent with openraft's chunked transfer. Good enough for
//! a few hundred MB of state; streaming from a file is future work.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::durability::Disk;
use super::snapshot_file::{Meta, SnapshotFile};
use super::table_writer::TableWriter;
use super::{decode, encode, NodeId, StorageError, TypeConfig};
use crate::error::{Error, Result};
use crate::scheduler::run::Run;
use crate::scheduler::state::StateImage;
use crate::scheduler::{Changes, Command, CommandResult, Response, State};

const JOB_PREFIX: &str = "job/";
const REQUEST_PREFIX: &str = "req/";
const WRITE_PREFIX: &str = "wr/";
const RUN_PREFIX: &str = "run/";
const COUNTERS_PREFIX: &str = "cnt/";
const NEXT_RUN_ID_KEY: &[u8] = b"meta/next_run_id";
const APPLIED_KEY: &[u8] = b"meta/applied";
const MEMBERSHIP_KEY: &[u8] = b"meta/membership";
/// sled tree where snapshots were stored before they moved to a file
/// ([`move_legacy_snapshot`]): `meta` plus 1 MiB `chunk/<n>` records.
const LEGACY_SNAPSHOT_TREE: &str = "snapshot";
const LEGACY_SNAPSHOT_META_KEY: &[u8] = b"meta";
const LEGACY_SNAPSHOT_CHUNK_PREFIX: &[u8] = b"chunk/";
/// Longest the tables wait for the changes of applied entries.
pub const TABLE_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Most changed keys the tables wait for.
const TABLE_FLUSH_KEYS: usize = 20_000;

type Membership = StoredMembership<NodeId, BasicNode>;

fn sm_read(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(AnyError::error(e)).into()
}
fn sm_write(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e)).into()
}
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
}

impl Default for StateHandle {
    fn default() -> Self {
        StateHandle {
            state: Arc::default(),
            run_feed: broadcast::channel(RUN_FEED_CAPACITY).0,
        }
    }
}

impl StateHandle {
    /// A read guard on the state. Hold it briefly: `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A read guard on the state if no apply holds it now.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, State>> {
        match self.state.try_read() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
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

    fn publish(&self, feed: RunFeed) {
        // An error only means nobody listens.
        let _ = self.run_feed.send(feed);
    }
}

/// What was stored under `snapshot/meta` in sled (older data directories).
#[derive(Serialize, Deserialize)]
struct LegacySnapshotMeta {
    meta: Meta,
    chunks: u32,
    bytes: u64,
}

/// openraft state machine over [`State`] and sled.
pub struct StateMachineStore {
    disk: Disk,
    tables: sled::Tree,
    /// Applies the table batches on its own thread, in order.
    writer: TableWriter,
    snapshot_file: Arc<SnapshotFile>,
    state: StateHandle,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// Counter making snapshot ids unique within this process.
    snapshot_seq: u64,
    /// Keys changed by applied entries and not yet written to the tables.
    unwritten: Changes,
    /// When the tables were last written.
    written_at: Instant,
    /// Entries were applied since the tables were last written.
    tables_behind: bool,
    /// [`TABLE_FLUSH_EVERY`], or longer in tests.
    flush_every: Duration,
    /// Requests applied since the last snapshot was built (a batch entry
    /// counts each of its requests; see [`crate::node`]'s snapshot trigger).
    requests_since_snapshot: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the tables of `disk` and rebuilds the state from them (or from a
    /// newer stored snapshot, after an interrupted install).
    pub fn open(disk: Disk) -> Result<StateMachineStore> {
        let tables = disk.db.open_tree("sm").map_err(Error::internal)?;
        let writer = TableWriter::start(tables.clone()).map_err(Error::internal)?;
        let snapshot_file = Arc::new(SnapshotFile::in_dir(disk.dir()));
        move_legacy_snapshot(&disk, &snapshot_file)?;
        let mut store = StateMachineStore {
            disk,
            tables,
            writer,
            snapshot_file,
            state: StateHandle::default(),
            last_applied: None,
            membership: Membership::default(),
            snapshot_seq: 0,
            unwritten: Changes::default(),
            written_at: Instant::now(),
            tables_behind: false,
            flush_every: TABLE_FLUSH_EVERY,
            requests_since_snapshot: Arc::default(),
        };
        store.load_tables().map_err(Error::internal)?;
        // Only the meta first: reading the whole snapshot on every start would
        // hold its bytes (hundreds of MB at a million jobs) for nothing.
        let stored_meta = store.read_snapshot_meta().map_err(Error::internal)?;
        if stored_meta.is_some_and(|m| m.last_log_id > store.last_applied) {
            if let Some(snapshot) = store.read_snapshot().map_err(Error::internal)? {
                tracing::warn!(snapshot = ?snapshot.meta.last_log_id, tables = ?store.last_applied,
                    "state tables are older than the stored snapshot (interrupted install, or a crash before the tables caught up); reloading");
                let data = snapshot.snapshot.into_inner();
                store
                    .replace_state(&snapshot.meta, &data)
                    .map_err(Error::internal)?;
            }
        }
        Ok(store)
    }

    /// A handle for reading the applied state.
    pub fn state_handle(&self) -> StateHandle {
        self.state.clone()
    }

    /// A shared count of the requests applied since the last snapshot was built.
    pub fn requests_since_snapshot(&self) -> Arc<AtomicU64> {
        self.requests_since_snapshot.clone()
    }

    /// Rebuilds the state from the tables, record by record (no list of every
    /// record is built first: that list was the peak of a restart's memory).
    fn load_tables(&mut self) -> Result<(), StorageError> {
        let mut image = StateImage::default();
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(sm_read);
        for item in self.tables.iter() {
            let (key, value) = item.map_err(sm_read)?;
            if key.starts_with(JOB_PREFIX.as_bytes()) {
                image.insert_job(decode(&value).map_err(sm_read)?);
            } else if let Some(rid) = key.strip_prefix(REQUEST_PREFIX.as_bytes()) {
                image.insert_request(text(rid)?, decode(&value).map_err(sm_read)?);
            } else if let Some(wid) = key.strip_prefix(WRITE_PREFIX.as_bytes()) {
                image.insert_write(text(wid)?, decode(&value).map_err(sm_read)?);
            } else if key.starts_with(RUN_PREFIX.as_bytes()) {
                image.insert_run(decode(&value).map_err(sm_read)?);
            } else if let Some(job_id) = key.strip_prefix(COUNTERS_PREFIX.as_bytes()) {
                image.insert_counters(text(job_id)?, decode(&value).map_err(sm_read)?);
            } else if &*key == NEXT_RUN_ID_KEY {
                image.set_next_run_id(decode(&value).map_err(sm_read)?);
            } else if &*key == APPLIED_KEY {
                self.last_applied = decode(&value).map_err(sm_read)?;
            } else if &*key == MEMBERSHIP_KEY {
                self.membership = decode(&value).map_err(sm_read)?;
            }
        }
        *self.state.write() = State::from_image(image);
        Ok(())
    }

    /// Writes the current value of every key changed since the last write,
    /// with the applied log id and membership, in one batch.
    fn write_tables(&mut self) -> Result<(), StorageError> {
        let changes = std::mem::take(&mut self.unwritten);
        self.written_at = Instant::now();
        self.tables_behind = false;
        let mut batch = sled::Batch::default();
        {
            let state = self.state.read();
            for id in &changes.jobs {
                put_or_remove(&mut batch, job_key(id), state.job(id))?;
            }
            for rid in &changes.requests {
                put_or_remove(&mut batch, request_key(rid), state.request(rid))?;
            }
            for wid in &changes.writes {
                put_or_remove(&mut batch, write_key(wid), state.write_record(wid))?;
            }
            for &id in &changes.runs {
                put_or_remove(&mut batch, run_key(id), state.run(id))?;
            }
            for job_id in &changes.counters {
                put_or_remove(&mut batch, counters_key(job_id), state.counters(job_id))?;
            }
            batch.insert(NEXT_RUN_ID_KEY, encode(&state.next_run_id()).map_err(sm_write)?);
        }
        batch.insert(APPLIED_KEY, encode(&self.last_applied).map_err(sm_write)?);
        batch.insert(MEMBERSHIP_KEY, encode(&self.membership).map_err(sm_write)?);
        self.writer.submit(batch).map_err(sm_write)
    }

    /// Replaces the state with a snapshot's: stores the snapshot first, then
    /// rewrites the tables, then syncs.
    fn replace_state(&mut self, meta: &Meta, data: &[u8]) -> Result<(), StorageError> {
        let state = State::from_image(decode(data).map_err(snap_read)?);
        self.snapshot_file.store(meta, data).map_err(snap_write)?;
        // No queued batch of the old state may land on the new tables.
        self.writer.wait().map_err(sm_write)?;

        let mut batch = sled::Batch::default();
        for key in self.tables.iter().keys() {
            batch.remove(key.map_err(sm_read)?);
        }
        for job in state.jobs() {
            batch.insert(job_key(&job.id), encode(job).map_err(sm_write)?);
        }
        for (rid, record) in state.requests_iter() {
            batch.insert(request_key(rid), encode(record).map_err(sm_write)?);
        }
        for (wid, record) in state.writes_iter() {
            batch.insert(write_key(wid), encode(record).map_err(sm_write)?);
        }
        for run in state.runs() {
            batch.insert(run_key(run.id), encode(run).map_err(sm_write)?);
        }
        for (job_id, counters) in state.counters_iter() {
            batch.insert(counters_key(job_id), encode(counters).map_err(sm_write)?);
        }
        batch.insert(NEXT_RUN_ID_KEY, encode(&state.next_run_id()).map_err(sm_write)?);
        batch.insert(APPLIED_KEY, encode(&meta.last_log_id).map_err(sm_write)?);
        batch.insert(MEMBERSHIP_KEY, encode(&meta.last_membership).map_err(sm_write)?);
        self.tables.apply_batch(batch).map_err(sm_write)?;
        self.disk.sync().map_err(sm_write)?;

        *self.state.write() = state;
        self.unwritten = Changes::default();
        self.written_at = Instant::now();
        self.tables_behind = false;
        self.state.publish(RunFeed::Reset);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    fn read_snapshot_meta(&self) -> Result<Option<Meta>, StorageError> {
        self.snapshot_file.read_meta().map_err(snap_read)
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshot_file
            .read()
            .map_err(snap_read)?
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

#[cfg(test)]
impl StateMachineStore {
    /// Writes the tables now, and from now on only when asked (tests).
    pub(crate) fn write_tables_now(&mut self) -> Result<(), StorageError> {
        self.flush_every = Duration::MAX;
        self.write_tables()?;
        self.writer.wait().map_err(sm_write)
    }

    /// Drops the store as a crash would: what the tables wait for is lost.
    pub(crate) fn crash(mut self) {
        self.tables_behind = false;
    }
}

impl Drop for StateMachineStore {
    /// Writes what is waiting, so a clean shutdown replays nothing.
    fn drop(&mut self) {
        if self.tables_behind {
            if let Err(e) = self.write_tables() {
                tracing::warn!("writing the state tables at shutdown: {e}");
            }
        }
    }
}

/// Adds the encoded `value` under `key` to `batch`, or its removal when gone.
fn put_or_remove<T: Serialize>(
    batch: &mut sled::Batch,
    key: Vec<u8>,
    value: Option<&T>,
) -> Result<(), StorageError> {
    match value {
        Some(value) => batch.insert(key, encode(value).map_err(sm_write)?),
        None => batch.remove(key),
    }
    Ok(())
}

fn job_key(id: &str) -> Vec<u8> {
    [JOB_PREFIX.as_bytes(), id.as_bytes()].concat()
}

fn write_key(write_id: &str) -> Vec<u8> {
    [WRITE_PREFIX.as_bytes(), write_id.as_bytes()].concat()
}

fn request_key(request_id: &str) -> Vec<u8> {
    [REQUEST_PREFIX.as_bytes(), request_id.as_bytes()].concat()
}

fn run_key(id: u64) -> Vec<u8> {
    [RUN_PREFIX.as_bytes(), &id.to_be_bytes()].concat()
}

fn counters_key(job_id: &str) -> Vec<u8> {
    [COUNTERS_PREFIX.as_bytes(), job_id.as_bytes()].concat()
}

/// Moves a snapshot stored in sled by an older version to the snapshot file
/// (once, on open), then empties that tree.
fn move_legacy_snapshot(disk: &Disk, file: &SnapshotFile) -> Result<()> {
    let tree = disk.db.open_tree(LEGACY_SNAPSHOT_TREE).map_err(Error::internal)?;
    let Some(meta_bytes) = tree.get(LEGACY_SNAPSHOT_META_KEY).map_err(Error::internal)? else {
        return Ok(());
    };
    let stored: LegacySnapshotMeta = decode(&meta_bytes).map_err(Error::internal)?;
    let mut data = Vec::with_capacity(stored.bytes as usize);
    for n in 0..stored.chunks {
        let key = [LEGACY_SNAPSHOT_CHUNK_PREFIX, &n.to_be_bytes()].concat();
        let chunk = tree.get(key).map_err(Error::internal)?.ok_or_else(|| {
            Error::internal(format!(
                "legacy snapshot chunk {n} of {} is missing",
                stored.chunks
            ))
        })?;
        data.extend_from_slice(&chunk);
    }
    if data.len() as u64 != stored.bytes {
        return Err(Error::internal(format!(
            "legacy snapshot has {} bytes, expected {}",
            data.len(),
            stored.bytes
        )));
    }
    file.store(&stored.meta, &data).map_err(Error::internal)?;
    tree.clear().map_err(Error::internal)?;
    disk.sync().map_err(Error::internal)?;
    tracing::info!(last_log_id = ?stored.meta.last_log_id, bytes = data.len(), "moved the stored snapshot from sled to its file");
    Ok(())
}

/// Builds a snapshot from an image of the state taken while the state machine
/// was paused (which costs O(1)); encoding and storing it happen off that task.
pub struct SnapshotBuilder {
    file: Arc<SnapshotFile>,
    meta: Meta,
    image: Option<StateImage>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let image = self
            .image
            .take()
            .ok_or_else(|| snap_write("snapshot already built"))?;
        let (file, meta) = (self.file.clone(), self.meta.clone());
        let data = tokio::task::spawn_blocking(move || {
            let data = encode(&image).map_err(snap_write)?;
            // The image shares nodes with the live state; dropping it here
            // keeps the release of the copies off the state machine's task.
            drop(image);
            file.store(&meta, &data).map_err(snap_write)?;
            Ok::<_, StorageError>(data)
        })
        .await
        .map_err(snap_write)??;
        tracing::info!(last_log_id = ?self.meta.last_log_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
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
        {
            let mut state = self.state.write();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => Ok(Response::Empty),
                    EntryPayload::Normal(request) => {
                        let requests = match &request.command {
                            Command::Batch { requests } => requests.len() as u64,
                            _ => 1,
                        };
                        self.requests_since_snapshot
                            .fetch_add(requests, Ordering::Relaxed);
                        state.apply(entry.log_id.index, &request, &mut changes)
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
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
        }
        self.unwritten.absorb(changes);
        self.tables_behind = true;
        if self.written_at.elapsed() >= self.flush_every || self.unwritten.len() >= TABLE_FLUSH_KEYS {
            self.write_tables()?;
        }
        if let Some(feed) = run_feed {
            self.state.publish(feed);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Take the image now, while openraft does not apply: the snapshot is
        // exactly the state at `last_applied`. Encoding and writing it out
        // happen in `build_snapshot`, while applying goes on.
        self.snapshot_seq += 1;
        self.requests_since_snapshot.store(0, Ordering::Relaxed);
        let image = self.state.read().image();
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
        self.replace_state(meta, &data)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.read_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::super::suite_tests::snapshot_of_jobs;
    use super::*;

    #[tokio::test]
    async fn a_snapshot_stored_in_sled_by_an_older_version_moves_to_the_file() {
        // A snapshot of three jobs, as bytes and meta.
        let snapshot = snapshot_of_jobs(3, "job").await;
        let (meta, data) = (snapshot.meta, snapshot.snapshot.into_inner());

        // A data directory holding it the old way: sled chunks, no file, no tables.
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open(dir.path()).unwrap();
            let tree = disk.db.open_tree(LEGACY_SNAPSHOT_TREE).unwrap();
            let chunks: Vec<&[u8]> = data.chunks(40).collect();
            for (n, chunk) in chunks.iter().enumerate() {
                let key = [LEGACY_SNAPSHOT_CHUNK_PREFIX, &(n as u32).to_be_bytes()].concat();
                tree.insert(key, *chunk).unwrap();
            }
            let legacy = LegacySnapshotMeta {
                meta: meta.clone(),
                chunks: chunks.len() as u32,
                bytes: data.len() as u64,
            };
            tree.insert(LEGACY_SNAPSHOT_META_KEY, encode(&legacy).unwrap())
                .unwrap();
            disk.sync().unwrap();
        }

        let disk = Disk::open(dir.path()).unwrap();
        let mut store = StateMachineStore::open(disk.clone()).unwrap();
        assert_eq!(
            store.state_handle().read().job_count(),
            3,
            "the state came from the moved snapshot"
        );
        let current = store
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a stored snapshot");
        assert_eq!(current.meta, meta);
        assert_eq!(current.snapshot.into_inner(), data);
        assert!(disk.db.open_tree(LEGACY_SNAPSHOT_TREE).unwrap().is_empty());
        assert!(dir.path().join("kairos-snapshot").exists());
    }
}
