//! The Raft log, vote and committed log id, stored in sled.
//!
//! Layout (one sled database shared with the state machine):
//! - tree `raft_log`: key = log index as 8 big-endian bytes (so sled's key order
//!   is log order), value = the postcard-encoded openraft entry;
//! - tree `raft_meta`: `vote`, `committed` (written at most every 100 ms,
//!   with an append or a vote), `last_purged`.
//!
//! Invariants openraft relies on and this store keeps:
//! - `append` reports completion (`LogFlushed::log_io_completed`) only after
//!   the entries are durable ([`Disk::sync`]), and `save_vote` returns only after
//!   the vote is durable. `append` itself returns once the entries are in
//!   sled (readable, not yet durable): a [`Syncer`] thread syncs and reports
//!   appends in order, one sync for all that wait. The leader replicates
//!   its entries while its own sync runs (openraft is patched to count
//!   itself in the quorum only when the report comes, see
//!   `third_party/README.md`); a follower still answers only after it.
//!   So the leader may lose, in a crash, entries its followers hold: a
//!   restarted node therefore never resumes the term it led
//!   ([`LogStore::resign_leadership`]) and must win a new one.
//! - The log has no holes: entries arrive in order, `truncate` removes a suffix,
//!   `purge` a prefix, and `last_purged` is written before the prefix is removed
//!   so a crash in between leaves a consistent (if longer) log.
//! - Writes are serialized: openraft calls these methods from one task; the
//!   log reader handed to replication only reads.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::durability::Disk;
use super::{decode, encode, NodeId, StorageError, TypeConfig};
use crate::error::{Error, Result};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

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
}

/// Makes the log's appends durable in the order they were made: one thread
/// takes every append waiting, syncs once ([`Disk::sync`]: sled flush, then
/// `fdatasync`, which covers every write issued before it) and reports each
/// of them flushed, oldest first. The thread ends when the last [`LogStore`]
/// clone is dropped, after the appends already submitted.
struct Syncer {
    queue: Mutex<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
}

impl Syncer {
    fn start(disk: Disk) -> std::io::Result<Syncer> {
        let (queue, waiting) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        std::thread::Builder::new()
            .name("kairos-log-sync".into())
            .spawn(move || {
                while let Ok(first) = waiting.recv() {
                    let batch: Vec<_> = std::iter::once(first).chain(waiting.try_iter()).collect();
                    let synced = disk.sync();
                    for callback in batch {
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

    /// Reports `callback` once everything written so far is durable.
    fn submit(&self, callback: LogFlushed<TypeConfig>) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(unsent) = queue.send(callback) {
            let gone = std::io::Error::other("the log syncer has stopped");
            unsent.0.log_io_completed(Err(gone));
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
    /// Opens the log trees of `disk`.
    pub fn open(disk: Disk) -> Result<LogStore> {
        let log = disk.db.open_tree("raft_log").map_err(Error::internal)?;
        let meta = disk.db.open_tree("raft_meta").map_err(Error::internal)?;
        let syncer = Arc::new(Syncer::start(disk.clone()).map_err(Error::internal)?);
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
        };
        let committed: Option<LogId<NodeId>> = store.read_meta(COMMITTED_KEY).map_err(Error::internal)?;
        store
            .committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(store)
    }

    /// The committed index as last saved (0 before anything was committed).
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
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
        tracing::info!(
            node = id,
            term,
            "led term {term} before this start: a new term must be won first"
        );
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
                decode(&value).map_err(io_read)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED_KEY)?;
        let last_log_id = match self.log.last().map_err(io_read)? {
            Some((_, value)) => Some(decode::<Entry<TypeConfig>>(&value).map_err(io_read)?.log_id),
            None => last_purged_log_id,
        };
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
        self.sync().await
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
        for entry in entries {
            self.log
                .insert(log_key(entry.log_id.index), encode(&entry).map_err(io_write)?)
                .map_err(io_write)?;
        }
        self.write_committed_if_due()?;
        // Durable later, on the syncer's thread: the leader replicates the
        // entries meanwhile (see the vendored openraft's KAIROS PATCH).
        self.syncer.submit(callback);
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn log_keys_sort_like_indexes() {
        let indexes = [0u64, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1];
        for pair in indexes.windows(2) {
            assert!(log_key(pair[0]) < log_key(pair[1]), "{pair:?}");
        }
    }
}
