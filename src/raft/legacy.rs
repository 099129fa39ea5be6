//! What older versions of Kairos stored in sled besides the log, and how a
//! data directory holding it is brought to today's layout on open.
//!
//! Two things moved out of sled:
//!
//! - **Snapshots** were 1 MiB `chunk/<n>` records plus a `meta` record in
//!   the tree `snapshot`. They now live in a file of their own
//!   ([`super::snapshot_file`]); [`move_legacy_snapshot`] copies such a
//!   snapshot to the file and empties the tree.
//! - **State tables** (tree `sm`): every job, run, counter and idempotency
//!   record under its own key, rewritten as they changed, with the log id
//!   they reflected. The state machine now keeps its state in memory only
//!   and persists it as snapshot plus log ([`super::state_machine`]).
//!   [`migrate_state_tables`] rebuilds the state from the tables; if they are
//!   newer than the stored snapshot it stores them *as* the snapshot (the
//!   tables were always exactly the state at the log id they recorded), then
//!   empties the tree.
//!
//! - **Request records** changed layout on 2026-12-01 (`scheduler::state::requests`):
//!   a snapshot file of the older encoding (format version 1, magic
//!   `KSNAP001`) is re-encoded by [`upgrade_snapshot_file`]; the two steps
//!   above convert what they move.
//! - **Format versions** (`crate::codec`) began with version 3: a snapshot
//!   file of version 2 (`KSNAP002`), laid out as today's, is stored again
//!   under today's header by [`upgrade_snapshot_file`]. (The Raft log is
//!   brought to version 3 by `log_store`.)
//!
//! Everything stored here was written without a frame (format versions 1
//! and 2) and is read with [`codec::decode_body`].
//!
//! Every step stores the file before it clears the tree (or replaces the
//! file atomically), and a repeat (after a crash in between) stores the same
//! content again, so an interrupted migration is simply done again on the
//! next open.

use openraft::{BasicNode, LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use super::durability::Disk;
use super::snapshot_file::{Format, Meta, SnapshotFile};
use super::NodeId;
use crate::codec::{self, decode_body, encode_body};
use crate::error::{Error, Result};
use crate::scheduler::state::{
    LegacyRequestRecord, LegacyStateImage, StateImage, V3StateImage, V4StateImage, V5StateImage,
};

/// The tree the snapshot chunks were stored in.
const SNAPSHOT_TREE: &str = "snapshot";
/// The snapshot's [`LegacySnapshotMeta`] in [`SNAPSHOT_TREE`].
const SNAPSHOT_META_KEY: &[u8] = b"meta";
/// Prefix of the chunks (`chunk/<n, u32 big-endian>`).
const SNAPSHOT_CHUNK_PREFIX: &[u8] = b"chunk/";

/// The tree the state tables were stored in.
const TABLES_TREE: &str = "sm";
/// Key prefixes and single keys of the state tables.
const JOB_PREFIX: &[u8] = b"job/";
const REQUEST_PREFIX: &[u8] = b"req/";
const WRITE_PREFIX: &[u8] = b"wr/";
const RUN_PREFIX: &[u8] = b"run/";
const COUNTERS_PREFIX: &[u8] = b"cnt/";
const NEXT_RUN_ID_KEY: &[u8] = b"meta/next_run_id";
const APPLIED_KEY: &[u8] = b"meta/applied";
const MEMBERSHIP_KEY: &[u8] = b"meta/membership";

type Membership = StoredMembership<NodeId, BasicNode>;

/// What was stored under `snapshot/meta` in sled.
#[derive(Serialize, Deserialize)]
struct LegacySnapshotMeta {
    meta: Meta,
    chunks: u32,
    bytes: u64,
}

/// Moves a snapshot stored in sled by an older version to the snapshot file
/// (once, on open), then empties that tree.
pub fn move_legacy_snapshot(disk: &Disk, file: &SnapshotFile) -> Result<()> {
    let tree = disk.db.open_tree(SNAPSHOT_TREE).map_err(Error::internal)?;
    let Some(meta_bytes) = tree.get(SNAPSHOT_META_KEY).map_err(Error::internal)? else {
        return Ok(());
    };
    let stored: LegacySnapshotMeta = decode_body(&meta_bytes).map_err(Error::internal)?;
    let mut data = Vec::with_capacity(stored.bytes as usize);
    for n in 0..stored.chunks {
        let key = [SNAPSHOT_CHUNK_PREFIX, &n.to_be_bytes()].concat();
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
    let data = encode_body(&StateImage::from(decode_body::<LegacyStateImage>(&data)?))?;
    file.store(&stored.meta, &data).map_err(Error::internal)?;
    tree.clear().map_err(Error::internal)?;
    disk.sync().map_err(Error::internal)?;
    tracing::info!(last_log_id = ?stored.meta.last_log_id, bytes = data.len(), "moved the stored snapshot from sled to its file");
    Ok(())
}

/// Stores a snapshot file of an older format version again in today's
/// (once, on open, after the other steps; only the header is read when it
/// is today's): a [`Format::V1`] state is migrated to today's request
/// records, a [`Format::V2`] or [`Format::V3`] one gets an empty ACL and
/// audit log; either is stored under today's header.
pub fn upgrade_snapshot_file(file: &SnapshotFile) -> Result<()> {
    if file
        .read_format()
        .map_err(Error::internal)?
        .is_none_or(|f| f == Format::CURRENT)
    {
        return Ok(());
    }
    let Some(stored) = file.read().map_err(Error::internal)? else {
        return Ok(());
    };
    let image = match stored.format {
        Format::V1 => StateImage::from(decode_body::<LegacyStateImage>(&stored.data)?),
        Format::V2 | Format::V3 => StateImage::from(decode_body::<V3StateImage>(&stored.data)?),
        Format::V4 => StateImage::from(decode_body::<V4StateImage>(&stored.data)?),
        Format::V5 => StateImage::from(decode_body::<V5StateImage>(&stored.data)?),
        Format::V6 => return Ok(()),
    };
    drop(stored.data);
    let bytes = file
        .store_with(&stored.meta, |out| {
            postcard::to_io(&image, out)
                .map(|_| ())
                .map_err(std::io::Error::other)
        })
        .map_err(Error::internal)?;
    tracing::info!(last_log_id = ?stored.meta.last_log_id, from = ?stored.format, bytes = bytes.unwrap_or(0),
        "stored the snapshot of an older version in format version {}", codec::FORMAT_VERSION);
    Ok(())
}

/// Stores the state tables of an older version as the snapshot when they
/// are newer than the stored one, then empties their tree (once, on open,
/// after [`move_legacy_snapshot`]).
pub fn migrate_state_tables(disk: &Disk, file: &SnapshotFile) -> Result<()> {
    let tree = disk.db.open_tree(TABLES_TREE).map_err(Error::internal)?;
    if tree.is_empty() {
        return Ok(());
    }
    let (image, applied, membership) = read_tables(&tree)?;
    let stored = file.read_meta().map_err(Error::internal)?;
    if stored.as_ref().is_none_or(|m| m.last_log_id < applied) {
        let data = encode_body(&image)?;
        let meta = Meta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: match applied {
                Some(id) => format!("{}-{}-tables", id.leader_id.term, id.index),
                None => "0-0-tables".into(),
            },
        };
        file.store(&meta, &data).map_err(Error::internal)?;
        tracing::info!(last_log_id = ?applied, bytes = data.len(), "stored the state tables of an older version as the snapshot");
    }
    tree.clear().map_err(Error::internal)?;
    disk.sync().map_err(Error::internal)?;
    Ok(())
}

/// The state the tables hold, with the log id and membership they reflect.
fn read_tables(tree: &sled::Tree) -> Result<(StateImage, Option<LogId<NodeId>>, Membership)> {
    let mut image = StateImage::default();
    let mut requests = Vec::new();
    let mut applied = None;
    let mut membership = Membership::default();
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(Error::internal);
    for item in tree.iter() {
        let (key, value) = item.map_err(Error::internal)?;
        if key.starts_with(JOB_PREFIX) {
            image.insert_job(decode_body(&value)?);
        } else if let Some(rid) = key.strip_prefix(REQUEST_PREFIX) {
            requests.push((text(rid)?, decode_body::<LegacyRequestRecord>(&value)?));
        } else if let Some(wid) = key.strip_prefix(WRITE_PREFIX) {
            image.insert_write(text(wid)?, decode_body(&value)?);
        } else if key.starts_with(RUN_PREFIX) {
            image.insert_run(decode_body(&value)?);
        } else if let Some(job_id) = key.strip_prefix(COUNTERS_PREFIX) {
            image.insert_counters(text(job_id)?, decode_body(&value)?);
        } else if &*key == NEXT_RUN_ID_KEY {
            image.set_next_run_id(decode_body(&value)?);
        } else if &*key == APPLIED_KEY {
            applied = decode_body(&value)?;
        } else if &*key == MEMBERSHIP_KEY {
            membership = decode_body(&value)?;
        }
    }
    image.insert_legacy_requests(requests);
    Ok((image, applied, membership))
}

#[cfg(test)]
mod tests {
    use openraft::storage::{RaftStateMachine, Snapshot};
    use openraft::CommittedLeaderId;

    use super::super::snapshot_file::with_magic;
    use super::super::state_machine::StateMachineStore;
    use super::super::suite_tests::snapshot_of_jobs;
    use super::super::TypeConfig;
    use super::*;
    use crate::scheduler::state::body_hash;
    use crate::scheduler::State;

    #[tokio::test]
    async fn a_snapshot_stored_in_sled_by_an_older_version_moves_to_the_file() {
        // A snapshot of three jobs, as bytes and meta.
        let snapshot = snapshot_of_jobs(3, "job").await;
        let (meta, data) = (snapshot.meta, snapshot.snapshot.into_inner());

        // A data directory holding it the old way: sled chunks, no file, no tables.
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open(dir.path()).unwrap();
            let tree = disk.db.open_tree(SNAPSHOT_TREE).unwrap();
            let chunks: Vec<&[u8]> = data.chunks(40).collect();
            for (n, chunk) in chunks.iter().enumerate() {
                let key = [SNAPSHOT_CHUNK_PREFIX, &(n as u32).to_be_bytes()].concat();
                tree.insert(key, *chunk).unwrap();
            }
            let legacy = LegacySnapshotMeta {
                meta: meta.clone(),
                chunks: chunks.len() as u32,
                bytes: data.len() as u64,
            };
            tree.insert(SNAPSHOT_META_KEY, encode_body(&legacy).unwrap())
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
        assert!(disk.db.open_tree(SNAPSHOT_TREE).unwrap().is_empty());
        assert!(dir.path().join("kairos-snapshot").exists());
    }

    /// Writes `state` as an older version's tables did, at log id `applied`.
    fn write_tables(disk: &Disk, state: &State, applied: LogId<NodeId>) {
        let tree = disk.db.open_tree(TABLES_TREE).unwrap();
        for job in state.jobs() {
            tree.insert(
                [JOB_PREFIX, job.id.as_bytes()].concat(),
                encode_body(job).unwrap(),
            )
            .unwrap();
            let record = LegacyRequestRecord {
                at_ms: job.created_at_ms,
                job_id: job.id.clone(),
                created: None,
            };
            let key = [REQUEST_PREFIX, b"r-", job.id.as_bytes()].concat();
            tree.insert(key, encode_body(&record).unwrap()).unwrap();
        }
        for run in state.runs() {
            tree.insert(
                [RUN_PREFIX, &run.id.to_be_bytes()].concat(),
                encode_body(run).unwrap(),
            )
            .unwrap();
        }
        for (job_id, counters) in state.counters_iter() {
            let key = [COUNTERS_PREFIX, job_id.as_bytes()].concat();
            tree.insert(key, encode_body(counters).unwrap()).unwrap();
        }
        tree.insert(NEXT_RUN_ID_KEY, encode_body(&state.next_run_id()).unwrap())
            .unwrap();
        tree.insert(APPLIED_KEY, encode_body(&Some(applied)).unwrap())
            .unwrap();
        tree.insert(MEMBERSHIP_KEY, encode_body(&Membership::default()).unwrap())
            .unwrap();
        disk.sync().unwrap();
    }

    /// A data directory holding `snapshot` in its file and `tables` as an
    /// older version's tables at `at`.
    fn snapshot_beside_tables(
        snapshot: Snapshot<TypeConfig>,
        tables: &State,
        at: LogId<NodeId>,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        SnapshotFile::in_dir(disk.dir())
            .store(&snapshot.meta, &snapshot.snapshot.into_inner())
            .unwrap();
        write_tables(&disk, tables, at);
        dir
    }

    /// Writes `data` under `meta` as a snapshot file of an older version (`KSNAP001`).
    fn store_v1(dir: &std::path::Path, meta: &Meta, data: &[u8]) {
        let meta_bytes = encode_body(meta).unwrap();
        let mut bytes = b"KSNAP001".to_vec();
        bytes.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&meta_bytes);
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(data);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.join("kairos-snapshot"), bytes).unwrap();
    }

    #[tokio::test]
    async fn a_snapshot_file_of_the_older_request_layout_is_re_encoded_and_its_requests_still_answer() {
        // Jobs 1 and 2 created with request ids; job 2 was since deleted, so
        // its record holds the copy older versions kept.
        let state =
            State::from_image(decode_body(&snapshot_of_jobs(2, "job").await.snapshot.into_inner()).unwrap());
        let job1 = state.job("job-1").unwrap().clone();
        let job2 = state.job("job-2").unwrap().clone();
        let legacy = LegacyStateImage::of(
            vec![job1.clone()],
            vec![
                (
                    "req-1".into(),
                    LegacyRequestRecord {
                        at_ms: job1.created_at_ms,
                        job_id: job1.id.clone(),
                        created: None,
                    },
                ),
                (
                    "req-2".into(),
                    LegacyRequestRecord {
                        at_ms: job2.created_at_ms,
                        job_id: job2.id.clone(),
                        created: Some(std::sync::Arc::new(job2.clone())),
                    },
                ),
            ],
        );
        let at = LogId::new(CommittedLeaderId::new(1, 1), 2);
        let meta = Meta {
            last_log_id: Some(at),
            last_membership: Membership::default(),
            snapshot_id: "1-2-1".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        store_v1(dir.path(), &meta, &encode_body(&legacy).unwrap());

        let store = StateMachineStore::open(disk).unwrap();
        let state = store.state_handle().read().clone();
        assert_eq!(state.job_count(), 1);
        let record = |rid: &str| state.request(rid).copied().expect("migrated");
        assert_eq!(record("req-1").body_hash, body_hash("job-1", &job1.spec));
        assert_eq!(record("req-2").body_hash, body_hash("job-2", &job2.spec));
        assert_eq!(record("req-2").at_ms, job2.created_at_ms);
        let stored = SnapshotFile::in_dir(dir.path()).read().unwrap().unwrap();
        assert_eq!((stored.format, stored.meta), (Format::V6, meta));
    }

    #[tokio::test]
    async fn a_snapshot_file_of_format_version_2_gets_todays_header_and_the_same_state() {
        let snapshot = snapshot_of_jobs(4, "job").await;
        let (meta, data) = (snapshot.meta, snapshot.snapshot.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        SnapshotFile::in_dir(dir.path()).store(&meta, &data).unwrap();
        // The same state as format version 2 wrote it: another magic, and
        // no security or workers' part (empty here, and last in today's layout).
        let security = encode_body(&crate::scheduler::state::SecurityImage::default()).unwrap();
        let workers = encode_body(&crate::scheduler::state::WorkersImage::default()).unwrap();
        let v2_data = &data[..data.len() - security.len() - workers.len()];
        SnapshotFile::in_dir(dir.path()).store(&meta, v2_data).unwrap();
        let path = dir.path().join("kairos-snapshot");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, with_magic(bytes, b"KSNAP002")).unwrap();

        let mut store = StateMachineStore::open(disk).unwrap();
        assert_eq!(store.state_handle().read().job_count(), 4);
        let stored = SnapshotFile::in_dir(dir.path()).read().unwrap().unwrap();
        assert_eq!(
            (stored.format, &stored.meta, &stored.data),
            (Format::V6, &meta, &data)
        );
        let current = store.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
    }

    #[tokio::test]
    async fn state_tables_newer_than_the_snapshot_become_the_snapshot_and_are_cleared() {
        // Tables of five jobs at index 5 beside a stored snapshot of three at index 3.
        let older = snapshot_of_jobs(3, "job").await;
        let newer = snapshot_of_jobs(5, "job").await;
        let newer_state = State::from_image(decode_body(&newer.snapshot.into_inner()).unwrap());
        let at = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let dir = snapshot_beside_tables(older, &newer_state, at);
        let disk = Disk::open(dir.path()).unwrap();
        let mut store = StateMachineStore::open(disk.clone()).unwrap();
        let migrated = store.state_handle().read().clone();
        assert_eq!(migrated.job_count(), newer_state.job_count());
        for job in newer_state.jobs() {
            assert_eq!(migrated.job(&job.id), Some(job));
            let record = migrated
                .request(&format!("r-{}", job.id))
                .expect("request migrated");
            assert_eq!(record.body_hash, body_hash(&job.id, &job.spec));
        }
        assert_eq!(store.applied_state().await.unwrap().0, Some(at));
        let current = store.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(
            current.meta.last_log_id,
            Some(at),
            "the tables are the snapshot now"
        );
        assert!(disk.db.open_tree(TABLES_TREE).unwrap().is_empty());

        // Tables older than the snapshot are only cleared.
        let newest = snapshot_of_jobs(7, "job").await;
        let dir = snapshot_beside_tables(newest, &newer_state, at);
        let disk = Disk::open(dir.path()).unwrap();
        let store = StateMachineStore::open(disk.clone()).unwrap();
        assert_eq!(store.state_handle().read().job_count(), 7);
        assert!(disk.db.open_tree(TABLES_TREE).unwrap().is_empty());
    }
}
