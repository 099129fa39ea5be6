//! The Raft log, vote and committed log id, stored in sled.
//!
//! Layout (one sled database shared with the state machine):
//! - tree `raft_log`: key = log index as 8 big-endian bytes (so sled's key order
//!   is log order), value = the openraft entry, encoded with its format
//!   version ([`crate::codec`]);
//! - tree `raft_meta`: `vote`, `committed` (written at most every 100 ms,
//!   with an append or a vote), `last_purged`, all encoded likewise, and
//!   `format`: the format version of every value in both trees.
//!
//! A log without a `format` record was written before format versions
//! (format version 2, values without a frame). [`LogStore::open`] frames
//! its values once (`upgrade_format`) and records the format; a log
//! recorded in another format version than this build's is refused, naming
//! both.
//!
//! Invariants openraft relies on and this store keeps:
//! - `append` reports completion (`LogFlushed::log_io_completed`) only after
//!   the entries are durable ([`Disk::sync`]), and `save_vote` returns only after
//!   the vote is durable. `append` itself returns once the entries are in
//!   sled (readable, not yet durable): a `Syncer` thread syncs and reports
//!   appends in order, one sync for all that wait. The leader replicates
//!   its entries while its own sync runs (openraft is patched to count
//!   itself in the quorum only when the report comes, see
//!   `third_party/README.md`); a follower still answers only after it.
//!   So the leader may lose, in a crash, entries its followers hold: a
//!   restarted node therefore never resumes the term it led
//!   ([`LogStore::resign_leadership`]) and must win a new one.
//! - Every acknowledgement (of appends, of a vote) also waits for the log
//!   mark ([`crate::raft::log_mark`]), written and synced after the log:
//!   a disk that loses synced data cannot make the node forget a vote or
//!   the entries it acknowledged. On open a lost vote is restored from the
//!   mark, and a log that ends before the mark has lost its tail
//!   ([`LogStore::lost_tail`]) until the leader's entries carry it past it.
//! - The log has no holes: entries arrive in order, `truncate` removes a suffix,
//!   `purge` a prefix, and `last_purged` is written before the prefix is removed
//!   so a crash in between leaves a consistent (if longer) log.
//! - Writes are serialized: openraft calls these methods from one task; the
//!   log reader handed to replication only reads.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::durability::{Disk, IDLE_SYNC};
use super::log_mark::{LogMark, Marked};
use super::{decode, encode, NodeId, StorageError, TypeConfig};
use crate::codec::{self, FORMAT_VERSION};
use crate::error::{Error, Result};

/// The meta key of the vote.
const VOTE_KEY: &[u8] = b"vote";
/// The meta key of the committed log id.
const COMMITTED_KEY: &[u8] = b"committed";
/// The meta key of the last purged log id.
const LAST_PURGED_KEY: &[u8] = b"last_purged";
/// The meta key of the format version of the log's values: 2 bytes,
/// little-endian, not itself framed. Absent in logs of format version 2.
const FORMAT_KEY: &[u8] = b"format";
/// What a log entry is called in errors.
const LOG_ENTRY: &str = "log entry";

/// The sled key of log index `index`: big-endian so that byte order is index order.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_read(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e)).into()
}

fn io_write(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

/// sled-backed Raft log storage. Cloning shares the same trees.
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    log: sled::Tree,
    meta: sled::Tree,
    /// Latest committed index openraft told us about, for metrics and `/readyz`.
    committed: Arc<AtomicU64>,
    /// The committed log id not yet written to sled, and when it last was.
    committed_writes: Arc<Mutex<CommittedWrites>>,
    /// Makes appends durable and reports them, in order.
    syncer: Arc<Syncer>,
    /// What this node may have acknowledged (see [`crate::raft::log_mark`]).
    mark: Arc<LogMark>,
    /// The log id the node acknowledged before its disk lost the log's
    /// tail, while the log has not caught up with it (see [`LogStore::lost_tail`]).
    lost_tail: Arc<tokio::sync::watch::Sender<Option<LogId<NodeId>>>>,
}

/// An append waiting for its sync: the id of its last entry and whom to tell.
type WaitingAppend = (Option<LogId<NodeId>>, LogFlushed<TypeConfig>);

/// Makes the log's appends durable in the order they were made: one thread
/// takes every append waiting, syncs once ([`Disk::sync`]: sled flush, then
/// `fdatasync`, which covers every write issued before it) and reports each
/// of them flushed, oldest first, once the log mark records the last of
/// them (see [`crate::raft::log_mark`]). With no append for [`IDLE_SYNC`] it syncs
/// anyway, so a disk that fails while the node has nothing to write is
/// found (the disk records the failure; see [`Disk::failure`]). The thread
/// ends when the last [`LogStore`] clone is dropped, after the appends
/// already submitted.
struct Syncer {
    queue: Mutex<std::sync::mpsc::Sender<WaitingAppend>>,
}

impl Syncer {
    fn start(disk: Disk, mark: Arc<LogMark>) -> std::io::Result<Syncer> {
        let (queue, waiting) = std::sync::mpsc::channel::<WaitingAppend>();
        std::thread::Builder::new()
            .name("kairos-log-sync".into())
            .spawn(move || {
                loop {
                    let first = match waiting.recv_timeout(IDLE_SYNC) {
                        Ok(first) => first,
                        Err(RecvTimeoutError::Timeout) => {
                            // Only to learn whether the disk still works: a
                            // failure is kept by the disk and stops the node.
                            let _ = disk.sync();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let batch: Vec<_> = std::iter::once(first).chain(waiting.try_iter()).collect();
                    let acked = batch.iter().filter_map(|(last, _)| *last).max();
                    // The mark after the log: never ahead of what the log
                    // holds durably, never behind what is acknowledged.
                    let synced = disk.sync().and_then(|()| match acked {
                        Some(acked) => mark
                            .record_acked(acked)
                            .inspect_err(|e| disk.poison(e.to_string())),
                        None => Ok(()),
                    });
                    for (_, callback) in batch {
                        let result = match &synced {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        };
                        callback.log_io_completed(result);
                    }
                }
            })?;
        Ok(Syncer {
            queue: Mutex::new(queue),
        })
    }

    /// Reports `callback` once everything written so far, up to `last`,
    /// is durable and marked.
    fn submit(&self, last: Option<LogId<NodeId>>, callback: LogFlushed<TypeConfig>) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(unsent) = queue.send((last, callback)) {
            let gone = std::io::Error::other("the log syncer has stopped");
            unsent.0 .1.log_io_completed(Err(gone));
        }
    }
}

/// See [`LogStore::committed_writes`].
struct CommittedWrites {
    /// The committed log id openraft saved last, if not yet written to sled.
    unsaved: Option<Option<LogId<NodeId>>>,
    /// When the committed log id was last written to sled.
    written_at: Instant,
}

/// Least time between two writes of the committed log id to sled.
const COMMITTED_WRITE_EVERY: Duration = Duration::from_millis(100);

impl LogStore {
    /// Opens the log trees of `disk` and the log mark beside them: a vote
    /// the disk lost is restored from the mark, and a log that lost its
    /// tail is reported by [`LogStore::lost_tail`] (see the module notes).
    pub fn open(disk: Disk) -> Result<LogStore> {
        let log = disk.db.open_tree("raft_log").map_err(Error::internal)?;
        let meta = disk.db.open_tree("raft_meta").map_err(Error::internal)?;
        upgrade_format(&disk, &log, &meta)?;
        let (mark, recorded) = LogMark::open(disk.dir())?;
        #[cfg(feature = "chaos-break")]
        let recorded =
            recorded.filter(|_| !crate::chaos_break::process_runs(crate::chaos_break::ChaosBreak::NoLogMark));
        let mark = Arc::new(mark);
        let syncer = Arc::new(Syncer::start(disk.clone(), mark.clone()).map_err(Error::internal)?);
        let store = LogStore {
            disk,
            log,
            meta,
            committed: Arc::new(AtomicU64::new(0)),
            committed_writes: Arc::new(Mutex::new(CommittedWrites {
                unsaved: None,
                written_at: Instant::now(),
            })),
            syncer,
            mark,
            lost_tail: Arc::new(tokio::sync::watch::Sender::new(None)),
        };
        store.check_against_mark(recorded)?;
        // Stored as openraft saves it, an `Option<LogId>`.
        let committed = store
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .map_err(Error::internal)?
            .flatten();
        store
            .committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(store)
    }

    /// Compares what sled recovered with what the mark `recorded` (see the
    /// module notes of [`crate::raft::log_mark`]); a new mark starts from
    /// the log.
    fn check_against_mark(&self, recorded: Option<Marked>) -> Result<()> {
        let vote: Option<Vote<NodeId>> = self.read_meta(VOTE_KEY).map_err(Error::internal)?;
        let last = self.last_log_id().map_err(Error::internal)?;
        let Some(recorded) = recorded else {
            return self
                .mark
                .reset(Marked { vote, acked: last })
                .map_err(|e| Error::internal(format!("start the log mark: {e}")));
        };
        if let Some(marked_vote) = recorded
            .vote
            .filter(|marked| vote.is_none_or(|vote| *marked > vote))
        {
            tracing::warn!(
                lost = ?vote,
                restored = %marked_vote,
                "the disk lost this node's last vote: restored from the log mark"
            );
            self.write_meta(VOTE_KEY, &marked_vote).map_err(Error::internal)?;
            self.disk.sync().map_err(Error::internal)?;
        }
        if let Some(acked) = recorded.acked.filter(|&acked| Some(acked) > last) {
            tracing::warn!(
                acknowledged = %acked,
                log_ends_at = %last.map_or("the start".to_string(), |last| last.to_string()),
                "the disk lost the tail of the Raft log, entries this node acknowledged: it \
                 votes as if it still held them and does not stand for election until its \
                 leader's entries carry it past them"
            );
            self.lost_tail.send_replace(Some(acked));
        }
        Ok(())
    }

    /// Drops every entry, the purge point and the committed index, keeping
    /// the vote and the log mark: for a node whose stored snapshot was
    /// damaged, so that the log built on it is of no use (see
    /// [`super::open_storage_for_node`]). Durable on return. The log now
    /// ends before what the node acknowledged, so it is in lost-tail mode
    /// ([`LogStore::lost_tail`]) until its leader's snapshot and entries
    /// carry it past the mark.
    pub fn discard_all(&self) -> Result<()> {
        self.log.clear().map_err(Error::internal)?;
        for key in [LAST_PURGED_KEY, COMMITTED_KEY] {
            self.meta.remove(key).map_err(Error::internal)?;
        }
        self.disk.sync().map_err(Error::internal)?;
        self.committed.store(0, Ordering::Relaxed);
        if let Some(acked) = self.mark.marked().acked {
            self.lost_tail.send_replace(Some(acked));
        }
        Ok(())
    }

    /// While the log ends before an entry this node acknowledged (its disk
    /// lost the tail; see [`crate::raft::log_mark`]): that entry's log id.
    /// `None` once the log reached it again, and for a log that lost nothing.
    pub fn lost_tail(&self) -> tokio::sync::watch::Receiver<Option<LogId<NodeId>>> {
        self.lost_tail.subscribe()
    }

    /// Ends the lost tail once the log holds `reached` at or past it.
    fn caught_up_to(&self, reached: LogId<NodeId>) {
        self.lost_tail.send_if_modified(|lost| match *lost {
            Some(acked) if reached >= acked => {
                tracing::info!(
                    acknowledged = %acked,
                    reached = %reached,
                    "the log caught up past the tail its disk lost: votes and elections as usual"
                );
                *lost = None;
                true
            }
            _ => false,
        });
    }

    /// The committed index as last saved (0 before anything was committed).
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The id of the last entry written to the log (durable or not yet), or
    /// of the last purged one when the log is empty.
    pub fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED_KEY)?;
        self.last_log_id_or(last_purged_log_id)
    }

    fn last_log_id_or(
        &self,
        last_purged: Option<LogId<NodeId>>,
    ) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(match self.log.last().map_err(io_read)? {
            Some((_, value)) => Some(
                codec::decode_named::<Entry<TypeConfig>>(LOG_ENTRY, &value)
                    .map_err(io_read)?
                    .log_id,
            ),
            None => last_purged,
        })
    }

    /// The first failed sync of the disk under this log, once there is one
    /// (see [`Disk::failure`]).
    pub fn disk_failure(&self) -> tokio::sync::watch::Receiver<Option<Arc<str>>> {
        self.disk.failure()
    }

    /// A shared handle to the committed index, updated as openraft saves it.
    pub fn committed_handle(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Makes a restarted node give up the term it led before it stopped: a
    /// stored committed vote for itself (`id`) is stored back, durably, as
    /// an uncommitted one. Call it once on start, before Raft opens the store.
    ///
    /// openraft 0.9 resumes leadership at start when its stored vote is a
    /// committed one for itself, and then appends new entries in that same
    /// term. That is safe only if the leader's log holds every entry it ever
    /// sent, and with the leader writing its log in parallel with replicating
    /// it (see `third_party/README.md`) it may not: entries a majority of
    /// followers made durable can still have been in the leader's unflushed
    /// buffers when it was killed. Resuming the term, it would write other
    /// entries at those `(term, index)` positions, which the followers take
    /// for the ones they hold — replicas diverge (seen in a chaos round:
    /// after a full restart, the old leader re-issued index 454 of term 15,
    /// and two runs of different jobs got one run id). With the vote
    /// uncommitted it starts as a follower and must win a new term, whose
    /// entries cannot be mistaken for older ones, and a follower holding the
    /// entries it lost wins that election instead.
    pub fn resign_leadership(&self, id: NodeId) -> Result<()> {
        let stored: Option<Vote<NodeId>> = self.read_meta(VOTE_KEY).map_err(Error::internal)?;
        let Some(vote) = stored.filter(|v| v.committed && v.leader_id.voted_for() == Some(id)) else {
            return Ok(());
        };
        let term = vote.leader_id.term;
        self.write_meta(VOTE_KEY, &Vote::new(term, id))
            .map_err(Error::internal)?;
        self.disk.sync().map_err(Error::internal)?;
        self.mark
            .record_vote(Vote::new(term, id))
            .map_err(Error::internal)?;
        tracing::info!(
            node = id,
            term,
            "led term {term} before this start: a new term must be won first"
        );
        Ok(())
    }

    /// Makes this log start after `last`, the log id of a snapshot stored
    /// beside it, with `vote` stored: every entry is removed, `last` is the
    /// last purged and the committed log id, durably on return. For a node
    /// whose state is replaced offline (`kairos snapshot restore`,
    /// `--force-new-cluster`: see `crate::backup`); never while Raft runs.
    pub fn reset_to_snapshot(&self, last: LogId<NodeId>, vote: &Vote<NodeId>) -> Result<()> {
        // The purge mark first, as `purge` does: a crash before the entries
        // are gone leaves a longer log, not a hole.
        self.write_meta(LAST_PURGED_KEY, &last).map_err(Error::internal)?;
        let mut batch = sled::Batch::default();
        for key in self.log.iter().keys() {
            batch.remove(key.map_err(Error::internal)?);
        }
        self.log.apply_batch(batch).map_err(Error::internal)?;
        self.write_meta(COMMITTED_KEY, &Some(last))
            .map_err(Error::internal)?;
        self.write_meta(VOTE_KEY, vote).map_err(Error::internal)?;
        self.disk.sync().map_err(Error::internal)?;
        self.mark
            .reset(Marked {
                vote: Some(*vote),
                acked: Some(last),
            })
            .map_err(Error::internal)?;
        self.lost_tail.send_replace(None);
        self.committed.store(last.index, Ordering::Relaxed);
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(io_read)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(io_read)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        self.meta
            .insert(key, encode(value).map_err(io_write)?)
            .map_err(io_write)?;
        Ok(())
    }

    fn committed_writes(&self) -> std::sync::MutexGuard<'_, CommittedWrites> {
        self.committed_writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the committed log id openraft saved last, if it is unwritten
    /// and [`COMMITTED_WRITE_EVERY`] has passed since the last write.
    fn write_committed_if_due(&self) -> Result<(), StorageError> {
        let mut writes = self.committed_writes();
        if writes.written_at.elapsed() < COMMITTED_WRITE_EVERY {
            return Ok(());
        }
        if let Some(committed) = writes.unsaved.take() {
            self.write_meta(COMMITTED_KEY, &committed)?;
            writes.written_at = Instant::now();
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.disk.sync_async().await.map_err(io_write)
    }
}

/// Brings a log of format version 2 (no frames, no format record), 3 or 4 to
/// today's format, once: every value not framed with today's version —
/// whose body today's layout reads the same (see `crate::codec`) — is
/// re-framed ([`codec::reframe_as_current`]), the entries in one sled
/// batch, then the meta values with the `format` record in another, and
/// the result is synced. Values already in today's frame are left as they
/// are, so a migration a crash interrupted is finished by the next open. A
/// log recorded in any other format version is refused.
fn upgrade_format(disk: &Disk, log: &sled::Tree, meta: &sled::Tree) -> Result<()> {
    if let Some(recorded) = meta.get(FORMAT_KEY).map_err(Error::internal)? {
        let version = <[u8; 2]>::try_from(&recorded[..])
            .map(u16::from_le_bytes)
            .map_err(|_| Error::internal("the Raft log's format record is damaged"))?;
        if version == FORMAT_VERSION {
            return Ok(());
        }
        if !(3..FORMAT_VERSION).contains(&version) {
            let what = format!("the Raft log in {}", disk.dir().display());
            return Err(codec::version_error(&what, version));
        }
    }
    let stale = |value: &[u8]| codec::framed_version(value) != Some(FORMAT_VERSION);
    let mut entries = sled::Batch::default();
    let mut framed = 0u64;
    for item in log.iter() {
        let (key, value) = item.map_err(Error::internal)?;
        if stale(&value) {
            entries.insert(key, codec::reframe_as_current(&value));
            framed += 1;
        }
    }
    log.apply_batch(entries).map_err(Error::internal)?;
    let mut values = sled::Batch::default();
    for key in [VOTE_KEY, COMMITTED_KEY, LAST_PURGED_KEY] {
        if let Some(value) = meta.get(key).map_err(Error::internal)? {
            if stale(&value) {
                values.insert(key, codec::reframe_as_current(&value));
            }
        }
    }
    values.insert(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes());
    meta.apply_batch(values).map_err(Error::internal)?;
    disk.sync().map_err(Error::internal)?;
    if framed > 0 {
        tracing::info!(
            entries = framed,
            "the Raft log of an older version now carries format version {FORMAT_VERSION}"
        );
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => log_key(i),
            Bound::Excluded(&i) => log_key(i + 1),
            Bound::Unbounded => log_key(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(log_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(log_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range((Bound::Included(start), end))
            .map(|item| {
                let (_, value) = item.map_err(io_read)?;
                codec::decode_named(LOG_ENTRY, &value).map_err(io_read)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED_KEY)?;
        let last_log_id = self.last_log_id_or(last_purged_log_id)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE_KEY, vote)?;
        self.write_committed_if_due()?;
        self.sync().await?;
        let (mark, disk, vote) = (self.mark.clone(), self.disk.clone(), *vote);
        tokio::task::spawn_blocking(move || {
            mark.record_vote(vote).inspect_err(|e| disk.poison(e.to_string()))
        })
        .await
        .map_err(io_write)?
        .map_err(io_write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        // Kept in memory and written to sled at most every
        // COMMITTED_WRITE_EVERY, with an append (and never synced on its
        // own): a lost or older committed index is recomputed by the leader;
        // it only lets a restarted node apply what it already knows is
        // committed sooner. Written with every commit, it made each append's
        // flush write and sync one more log buffer.
        self.committed_writes().unsaved = Some(committed);
        self.committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        if let Some(unsaved) = self.committed_writes().unsaved {
            return Ok(unsaved);
        }
        Ok(self.read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One insert per entry, not a sled batch: a batch adds a manifest
        // record that sled writes and syncs as a log buffer of its own, ahead
        // of the entries. Atomicity is not needed: sled recovers a prefix of
        // its writes, and a prefix of the appended entries is a log with no
        // holes (openraft then re-replicates the rest).
        let mut last = None;
        for entry in entries {
            self.log
                .insert(log_key(entry.log_id.index), encode(&entry).map_err(io_write)?)
                .map_err(io_write)?;
            last = Some(entry.log_id);
        }
        self.write_committed_if_due()?;
        if let Some(last) = last {
            self.caught_up_to(last);
        }
        #[cfg(feature = "chaos-break")]
        if crate::chaos_break::process_runs(crate::chaos_break::ChaosBreak::SyncsInRaftLoop) {
            self.sync().await?;
        }
        // Durable later, on the syncer's thread: the leader replicates the
        // entries meanwhile (see the vendored openraft's KAIROS PATCH).
        self.syncer.submit(last, callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(log_key(log_id.index)..).keys() {
            batch.remove(key.map_err(io_read)?);
        }
        self.log.apply_batch(batch).map_err(io_write)?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.write_meta(LAST_PURGED_KEY, &log_id)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=log_key(log_id.index)).keys() {
            batch.remove(key.map_err(io_read)?);
        }
        self.log.apply_batch(batch).map_err(io_write)?;
        // A snapshot installed past the lost tail carries the log past it.
        self.caught_up_to(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use openraft::storage::RaftLogStorageExt;

    use super::super::open_storage;
    use super::super::suite_tests::{create_entry, log_id};
    use super::*;

    #[tokio::test]
    async fn a_restarted_leader_does_not_resume_its_term_and_other_votes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let open = || LogStore::open(Disk::open(&dir.path().join("sled")).unwrap()).unwrap();
        let mut store = open();
        store.save_vote(&Vote::new_committed(7, 1)).await.unwrap();
        store.resign_leadership(1).unwrap();
        drop(store);
        let mut store = open();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(7, 1)));

        // A vote for another node, or an uncommitted one, stays as it is.
        for vote in [Vote::new_committed(8, 2), Vote::new(9, 1)] {
            store.save_vote(&vote).await.unwrap();
            store.resign_leadership(1).unwrap();
            assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        }
    }

    /// What a disk that loses synced data does: the last entries and the
    /// vote are gone from sled after a restart. The mark restores the vote,
    /// reports the lost tail until an append reaches it again, and a
    /// restored data dir (`reset_to_snapshot`) starts a new mark.
    #[tokio::test]
    async fn a_lost_vote_is_restored_and_a_lost_tail_reported_until_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let open = || LogStore::open(Disk::open(&dir.path().join("sled")).unwrap()).unwrap();
        let mut store = open();
        assert_eq!(*store.lost_tail().borrow(), None);
        store.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        store
            .blocking_append((1..=6).map(|i| create_entry(i, &format!("job-{i}"))))
            .await
            .unwrap();
        drop(store);

        // The disk loses entries 4..=6 and the vote.
        let disk = Disk::open(&dir.path().join("sled")).unwrap();
        let (log, meta) = (
            disk.db.open_tree("raft_log").unwrap(),
            disk.db.open_tree("raft_meta").unwrap(),
        );
        for index in 4..=6 {
            log.remove(log_key(index)).unwrap();
        }
        meta.remove(VOTE_KEY).unwrap();
        disk.sync().unwrap();
        drop((log, meta, disk));

        let mut store = open();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(4, 2)));
        let lost_tail = store.lost_tail();
        assert_eq!(*lost_tail.borrow(), Some(log_id(6)));
        store
            .blocking_append([create_entry(4, "job-4b"), create_entry(5, "job-5b")])
            .await
            .unwrap();
        assert_eq!(*lost_tail.borrow(), Some(log_id(6)), "index 5 is not past 6");
        store.blocking_append([create_entry(6, "job-6b")]).await.unwrap();
        assert_eq!(*lost_tail.borrow(), None, "caught up at index 6");
        drop((store, lost_tail));

        // Lost again, then the data dir is reset to a snapshot at index 2.
        let disk = Disk::open(&dir.path().join("sled")).unwrap();
        let log = disk.db.open_tree("raft_log").unwrap();
        log.remove(log_key(6)).unwrap();
        disk.sync().unwrap();
        drop((log, disk));
        let store = open();
        assert_eq!(*store.lost_tail().borrow(), Some(log_id(6)));
        store
            .reset_to_snapshot(log_id(2), &Vote::new_committed(5, 1))
            .unwrap();
        assert_eq!(*store.lost_tail().borrow(), None);
        drop(store);
        assert_eq!(*open().lost_tail().borrow(), None, "the reset is the new mark");
    }

    /// A log as versions before format versions wrote it under `data_dir`:
    /// `entries`, a vote, a committed and a purged log id, no frames, no
    /// format record.
    fn write_unversioned_log(data_dir: &Path, entries: &[Entry<TypeConfig>], vote: &Vote<NodeId>) {
        let disk = Disk::open(&data_dir.join("sled")).unwrap();
        let log = disk.db.open_tree("raft_log").unwrap();
        let meta = disk.db.open_tree("raft_meta").unwrap();
        for entry in entries {
            log.insert(log_key(entry.log_id.index), codec::encode_body(entry).unwrap())
                .unwrap();
        }
        meta.insert(VOTE_KEY, codec::encode_body(vote).unwrap()).unwrap();
        let committed = Some(log_id(3));
        meta.insert(COMMITTED_KEY, codec::encode_body(&committed).unwrap())
            .unwrap();
        meta.insert(LAST_PURGED_KEY, codec::encode_body(&log_id(1)).unwrap())
            .unwrap();
        disk.sync().unwrap();
    }

    #[tokio::test]
    async fn a_log_written_before_format_versions_is_framed_once_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (2..=4).map(|i| create_entry(i, &format!("job-{i}"))).collect();
        let vote = Vote::new_committed(3, 2);
        write_unversioned_log(dir.path(), &entries, &vote);
        // The second open finds the format recorded and changes nothing.
        for _ in 0..2 {
            let (mut log, _) = open_storage(dir.path()).unwrap();
            assert_eq!(log.try_get_log_entries(2..=4).await.unwrap(), entries);
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3)));
            // What `/readyz` waits for after a restart (it was read as a bare
            // `LogId`, which made it the committing leader's node id).
            assert_eq!(log.committed_index(), 3);
            let state = log.get_log_state().await.unwrap();
            assert_eq!(
                (state.last_purged_log_id, state.last_log_id),
                (Some(log_id(1)), Some(log_id(4)))
            );
            for item in log.log.iter().chain(log.meta.iter()) {
                let (key, value) = item.unwrap();
                let expected = if &*key == FORMAT_KEY {
                    None
                } else {
                    Some(FORMAT_VERSION)
                };
                assert_eq!(codec::framed_version(&value), expected, "{key:?}");
            }
            assert_eq!(
                log.meta.get(FORMAT_KEY).unwrap().as_deref(),
                Some(&FORMAT_VERSION.to_le_bytes()[..])
            );
        }
        // Appends after the migration are framed like the rest.
        let (mut log, _) = open_storage(dir.path()).unwrap();
        log.blocking_append([create_entry(5, "job-5")]).await.unwrap();
        assert_eq!(log.try_get_log_entries(2..=5).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_log_entry_or_a_log_of_another_format_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = open_storage(dir.path()).unwrap();
            log.blocking_append([create_entry(1, "job-1")]).await.unwrap();
            // Entry 1 as a newer version would have written it.
            let mut newer = log.log.get(log_key(1)).unwrap().unwrap().to_vec();
            newer[2..4].copy_from_slice(&9u16.to_le_bytes());
            log.log.insert(log_key(1), newer).unwrap();
            let err = log.try_get_log_entries(1..=1).await.unwrap_err().to_string();
            assert!(
                err.contains(
                    "log entry is in format version 9, newer than this node understands (it reads 6)"
                ),
                "{err}"
            );
            // The whole log recorded as a newer version.
            log.meta.insert(FORMAT_KEY, &9u16.to_le_bytes()).unwrap();
            log.disk.sync().unwrap();
        }
        let Err(err) = open_storage(dir.path()) else {
            panic!("a log of format version 9 opened");
        };
        let err = err.to_string();
        assert!(
            err.contains("the Raft log in ")
                && err.contains("is in format version 9, newer than this node understands (it reads 6)"),
            "{err}"
        );
    }

    /// A log of format version 3 (framed entries, format record 3) is
    /// re-framed once on open and reads as it did.
    #[tokio::test]
    async fn a_log_of_format_version_3_is_reframed_on_open_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let written = {
            let (mut log, _) = open_storage(dir.path()).unwrap();
            log.blocking_append([create_entry(1, "job-1"), create_entry(2, "job-2")])
                .await
                .unwrap();
            for key in [log_key(1), log_key(2)] {
                let mut v3 = log.log.get(key).unwrap().unwrap().to_vec();
                v3[2..4].copy_from_slice(&3u16.to_le_bytes());
                log.log.insert(key, v3).unwrap();
            }
            log.meta.insert(FORMAT_KEY, &3u16.to_le_bytes()).unwrap();
            log.disk.sync().unwrap();
            [create_entry(1, "job-1"), create_entry(2, "job-2")]
        };
        let (mut log, _) = open_storage(dir.path()).unwrap();
        let read = log.try_get_log_entries(1..=2).await.unwrap();
        assert_eq!(format!("{read:?}"), format!("{written:?}"));
        assert_eq!(
            log.meta.get(FORMAT_KEY).unwrap().unwrap().to_vec(),
            FORMAT_VERSION.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn log_keys_sort_like_indexes() {
        let indexes = [0u64, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1];
        for pair in indexes.windows(2) {
            assert!(log_key(pair[0]) < log_key(pair[1]), "{pair:?}");
        }
    }
}
