//! Replication: openraft 0.9 (`storage-v2`) wired to sled and tonic.
//!
//! A Kairos node is one openraft [`Raft`] instance plus three adapters:
//!
//! - [`log_store::LogStore`] keeps the Raft log, the vote and the committed log
//!   id in sled. An append or a vote is acknowledged only after a real
//!   `fdatasync` (see [`durability`]): sled's own `flush` stops at
//!   `sync_file_range`, which does not survive a power loss.
//! - [`state_machine::StateMachineStore`] applies committed entries to the
//!   deterministic [`crate::scheduler::State`] in memory, and builds, stores
//!   and installs snapshots: the state is durable as snapshot plus log.
//! - [`network::PeerNetwork`] sends Raft RPCs to peers over tonic with timeouts;
//!   a slow answer is reported as `Timeout` (retried at once), an unreachable
//!   peer, or one that times out again and again, as `Unreachable` so
//!   openraft backs off.
//!
//! The log and the vote live in one sled database per node (`DATA_DIR/sled`),
//! the snapshot in a file beside it; [`legacy`] moves what older versions
//! kept in sled to that layout.
//!
//! Log entries, snapshots and peer messages carry a format version
//! ([`crate::codec`], re-exported here as [`encode`] and [`decode`]): a node
//! refuses a version it does not know with an error naming both, and every
//! node of a cluster must run the same format version (releases of one
//! format version share a cluster during a rolling upgrade, see
//! [`crate::cluster_version`]). A data directory written before versions existed is migrated when
//! it is opened (the log by [`log_store`], snapshots by [`legacy`]).
//!
//! IMPLEMENTATION CAVEATS: sled stores values larger than a quarter of a segment
//! in separate blob files that it never fsyncs. The database is opened with
//! 8 MiB segments, so values up to ~2 MiB stay inline; job payloads are capped at
//! 1 MiB and batch entries to 1 MiB to stay below that; snapshots are files of
//! their own ([`snapshot_file`]).
//!
//! Elections are started by [`pre_vote`], not by openraft's own timer: a
//! node asks the other voters first, so one that was paused or cut off
//! does not unseat a healthy leader when it returns.

#![allow(clippy::result_large_err)] // openraft's trait signatures fix `StorageError`.

pub mod batcher;
pub mod durability;
pub mod handover;
pub mod joint;
pub mod legacy;
pub mod log_mark;
pub mod log_store;
pub mod network;
pub mod offline;
pub mod pre_vote;
pub mod proposer;
pub mod snapshot_file;
pub mod snapshot_policy;
pub mod state_machine;
pub mod stats;

use std::io::Cursor;
use std::path::Path;

use openraft::BasicNode;

use crate::error::{Error, Result};
use crate::scheduler::{CommandResult, Request};

openraft::declare_raft_types!(
    /// Kairos's openraft type configuration: log entries carry scheduler requests.
    pub TypeConfig:
        D = Request,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A node id, as given by `--node-id`.
pub type NodeId = u64;
/// The Raft handle of a node.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's storage error for our node id type.
pub type StorageError = openraft::StorageError<NodeId>;

pub use crate::codec::{decode, encode, encoded_len};

/// Opens (or creates) the node's sled database under `data_dir` and returns the
/// log store and state machine that share it.
pub fn open_storage(data_dir: &Path) -> Result<(log_store::LogStore, state_machine::StateMachineStore)> {
    open_storage_measured(data_dir, stats::RaftStats::default())
}

/// [`open_storage`], recording log syncs and snapshots into `stats`.
pub fn open_storage_measured(
    data_dir: &Path,
    stats: stats::RaftStats,
) -> Result<(log_store::LogStore, state_machine::StateMachineStore)> {
    let (disk, log) = open_log(data_dir, stats)?;
    let sm = state_machine::StateMachineStore::open(disk)?;
    Ok((log, sm))
}

/// The node's sled database under `data_dir` and the log store in it.
fn open_log(data_dir: &Path, stats: stats::RaftStats) -> Result<(durability::Disk, log_store::LogStore)> {
    let disk = durability::Disk::open(&data_dir.join("sled"))?.with_stats(stats);
    let log = log_store::LogStore::open(disk.clone())?;
    Ok((disk, log))
}

/// [`open_storage_measured`] for a node that is starting to serve, and can
/// take back from its peers what its disk lost. A stored snapshot that
/// fails its check (its disk damaged it after it was written) is not a
/// reason to stay down: the file is set aside as `kairos-snapshot.damaged`,
/// the log that was built on it is dropped, the vote and the log mark stay,
/// and the node starts empty. Its log then ends before the entries it
/// acknowledged, so it is in lost-tail mode (see [`log_mark`]): it votes
/// only for candidates holding them and does not stand for election until
/// its leader's snapshot and entries carry it past them. Nothing of the
/// damaged state is read, served or sent. A single node, or a cluster
/// whose every copy is damaged, waits unready for an operator's restore.
///
/// Offline tools ([`open_storage`]) refuse a damaged snapshot instead.
pub fn open_storage_for_node(
    data_dir: &Path,
    stats: stats::RaftStats,
) -> Result<(log_store::LogStore, state_machine::StateMachineStore)> {
    let (disk, log) = open_log(data_dir, stats)?;
    let refused = match state_machine::StateMachineStore::open(disk.clone()) {
        Ok(sm) => return Ok((log, sm)),
        Err(refused) => refused,
    };
    let snapshot = snapshot_file::SnapshotFile::in_dir(disk.dir());
    let damage = snapshot
        .damage()
        .map_err(|e| Error::internal(format!("checking the snapshot after `{refused}`: {e}")))?;
    let Some(damage) = damage else {
        return Err(refused);
    };
    #[cfg(feature = "chaos-break")]
    if crate::chaos_break::process_runs(crate::chaos_break::ChaosBreak::StaysDownOnDamagedSnapshots) {
        return Err(refused);
    }
    let aside = snapshot
        .set_aside()
        .map_err(|e| Error::internal(format!("setting the damaged snapshot aside: {e}")))?;
    log.discard_all()?;
    tracing::error!(
        damage = %damage,
        set_aside_as = %aside.display(),
        "the stored snapshot is damaged: this node dropped it and the log built on it, \
         and takes both from its leader"
    );
    let sm = state_machine::StateMachineStore::open(disk)?;
    Ok((log, sm))
}

/// Builds the openraft configuration of a node.
pub fn raft_config(tuning: &RaftTuning) -> Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "kairos".into(),
        heartbeat_interval: tuning.heartbeat_ms,
        election_timeout_min: tuning.election_timeout_ms,
        election_timeout_max: tuning.election_timeout_ms * 2,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 256,
        // Snapshots are asked for by `snapshot_policy` (by requests applied
        // and state size), not by openraft's count of entries.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: tuning.snapshot_keep_logs,
        snapshot_max_chunk_size: 1 << 20,
        // Elections are started after a pre-vote by `pre_vote`, with the
        // same timing as openraft's timer, which would raise the term first.
        enable_elect: false,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| Error::InvalidArgument(format!("raft configuration: {e}")))
}

/// The Raft timing and compaction knobs exposed as agent flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTuning {
    /// Leader heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Minimum election timeout, ms (the maximum is twice this).
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many applied changes (an entry counts
    /// each request, fire, start, result and expiry it carries:
    /// `Request::weight`), and not before a quarter as many as the state
    /// holds jobs and runs (see `snapshot_policy::snapshot_due`).
    pub snapshot_logs: u64,
    /// Entries kept in the log behind the snapshot (for slow followers).
    pub snapshot_keep_logs: u64,
}

/// The defaults are chosen for failover under a second on a small cluster:
/// a follower starts an election 250–500 ms after the last heartbeat (one
/// every 50 ms). A 30-minute chaos campaign with these values (14 rounds,
/// 363 faults, fsync stalls of a loaded 2-core machine included) found no
/// violation and no more unknown write outcomes than with 100/400 ms; raise
/// them on slow disks or links where heartbeats can stall for 250 ms.
impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 50,
            election_timeout_ms: 250,
            snapshot_logs: 10_000,
            snapshot_keep_logs: 1_000,
        }
    }
}

#[cfg(test)]
mod suite_tests;

#[cfg(test)]
mod recovery_tests {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{SnapshotMeta, StoredMembership, Vote};

    use super::snapshot_file::SnapshotFile;
    use super::suite_tests::{create_entry, log_id};
    use super::*;

    /// A node whose log holds entries 1..=5 (acknowledged, so marked) and
    /// the vote of term 3, beside a stored snapshot up to index 3 whose
    /// bytes are `file`.
    async fn node_dir_with_snapshot(dir: &Path, file: impl FnOnce(Vec<u8>) -> Vec<u8>) {
        let (mut log, _) = open_storage(dir).unwrap();
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        log.blocking_append((1..=5).map(|i| create_entry(i, &format!("job-{i}"))))
            .await
            .unwrap();
        drop(log);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(3)),
            last_membership: StoredMembership::default(),
            snapshot_id: "s-3".into(),
        };
        let sled = dir.join("sled");
        SnapshotFile::in_dir(&sled)
            .store(&meta, b"the state up to index 3")
            .unwrap();
        let path = sled.join("kairos-snapshot");
        std::fs::write(&path, file(std::fs::read(&path).unwrap())).unwrap();
    }

    #[tokio::test]
    async fn a_node_drops_a_damaged_snapshot_and_its_log_and_waits_for_its_leader() {
        for (how, damage) in [
            (
                "a flipped byte",
                Box::new(|mut b: Vec<u8>| {
                    let n = b.len();
                    b[n - 8] ^= 0x40;
                    b
                }) as Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>,
            ),
            (
                "a lost tail",
                Box::new(|mut b: Vec<u8>| {
                    b.truncate(b.len() / 2);
                    b
                }),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            node_dir_with_snapshot(dir.path(), damage).await;
            let sled = dir.path().join("sled");

            // The offline tools refuse it.
            let refused = open_storage(dir.path()).err().expect("refused");
            assert!(
                refused.to_string().contains("kairos-snapshot"),
                "{how}: {refused}"
            );

            let (mut log, mut sm) = open_storage_for_node(dir.path(), Default::default()).unwrap();
            assert!(!sled.join("kairos-snapshot").exists(), "{how}");
            assert!(sled.join("kairos-snapshot.damaged").exists(), "{how}");
            assert_eq!(
                log.read_vote().await.unwrap(),
                Some(Vote::new_committed(3, 2)),
                "{how}"
            );
            let state = log.get_log_state().await.unwrap();
            assert_eq!(
                (state.last_purged_log_id, state.last_log_id),
                (None, None),
                "{how}"
            );
            assert_eq!(log.read_committed().await.unwrap(), None, "{how}");
            assert_eq!(
                *log.lost_tail().borrow(),
                Some(log_id(5)),
                "{how}: votes as if it held 5"
            );
            assert_eq!(sm.applied_state().await.unwrap().0, None, "{how}: an empty state");
            assert!(sm.get_current_snapshot().await.unwrap().is_none(), "{how}");
            drop((log, sm));

            // Started again, it is an empty node still behind its mark.
            let (log, _) = open_storage_for_node(dir.path(), Default::default()).unwrap();
            assert_eq!(*log.lost_tail().borrow(), Some(log_id(5)), "{how}");
        }
    }

    #[tokio::test]
    async fn a_whole_snapshot_that_does_not_decode_or_is_of_a_newer_format_is_refused_not_dropped() {
        for (how, file) in [
            (
                "undecodable",
                Box::new(|b: Vec<u8>| b) as Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>,
            ),
            (
                "newer format",
                Box::new(|mut b: Vec<u8>| {
                    b[5..8].copy_from_slice(b"999");
                    b
                }),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            node_dir_with_snapshot(dir.path(), file).await;
            let refused = open_storage_for_node(dir.path(), Default::default())
                .err()
                .expect("refused");
            assert!(
                refused.to_string().to_lowercase().contains("snapshot"),
                "{how}: {refused}"
            );
            assert!(dir.path().join("sled/kairos-snapshot").exists(), "{how}: kept");
            assert!(
                open_storage(dir.path()).is_err(),
                "{how}: the offline tools refuse it too"
            );
        }
    }
}
