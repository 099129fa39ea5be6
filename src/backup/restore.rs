//! `kairos snapshot restore`: a new node's data directory seeded from a
//! backup file, offline.
//!
//! The directory must be empty (or not exist): restoring never mixes with,
//! nor replaces, a node's data. The file is checked first (checksum,
//! lengths, format versions); then the state is copied, as it is, into the
//! node's stored snapshot (`raft::snapshot_file`) at the backup's log id,
//! with the membership `--initial-cluster` names (every member a voter).
//! The node's storage is then opened as a node opens it — which decodes
//! the state, so a state this build cannot read is refused here rather than
//! at start — and its log is made to start after the snapshot, with the
//! snapshot's log id committed and a vote in the snapshot's term (see the
//! parent module on why). Anything written is removed again when a step
//! fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, LogId, Vote};

use super::file::{self, Verified};
use super::meta_with_members;
use crate::error::{Error, Result};
use crate::raft::snapshot_file::SnapshotFile;
use crate::raft::{open_storage, NodeId};

/// What `kairos snapshot restore` is given.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The backup file.
    pub file: PathBuf,
    /// The new node's data directory (empty or absent).
    pub data_dir: PathBuf,
    /// The new node's id.
    pub node_id: NodeId,
    /// Every member of the new cluster, id → peer address.
    pub initial_cluster: BTreeMap<NodeId, String>,
}

/// What was restored.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The backup file as checked.
    pub backup: Verified,
    /// The log id the node's state is at.
    pub last_log_id: LogId<NodeId>,
}

/// Restores `options.file` into `options.data_dir` (see the module docs).
pub async fn restore(options: &RestoreOptions) -> Result<Restored> {
    if !options.initial_cluster.contains_key(&options.node_id) {
        return Err(Error::InvalidArgument(format!(
            "--initial-cluster does not contain --node-id {}",
            options.node_id
        )));
    }
    let dir = &options.data_dir;
    let existed = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "--data-dir {}: not empty; a restore writes a new node's data only into an empty directory",
                    dir.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "--data-dir {}: {e}",
                dir.display()
            )))
        }
    };
    let backup = file::verify(&options.file)?;
    let state_version = backup.header.state_format_version;
    if state_version != crate::codec::FORMAT_VERSION {
        return Err(Error::FailedPrecondition(format!(
            "{}: its state is in format version {state_version}; this kairos restores format version {} \
             (restore it with the kairos version that saved it, {})",
            options.file.display(),
            crate::codec::FORMAT_VERSION,
            backup.header.kairos_version
        )));
    }
    let result = seed(options, &backup).await;
    if result.is_err() {
        remove_written(dir, existed);
    }
    result.map(|last_log_id| Restored { backup, last_log_id })
}

/// Writes the node's storage from the checked backup; returns its log id.
async fn seed(options: &RestoreOptions, backup: &Verified) -> Result<LogId<NodeId>> {
    let position = backup.header.last_log;
    if position.index == 0 {
        return Err(Error::FailedPrecondition(format!(
            "{}: the backup holds no applied log entry",
            options.file.display()
        )));
    }
    let last = LogId::new(
        CommittedLeaderId::new(position.term, position.leader),
        position.index,
    );
    let meta = meta_with_members(
        last,
        &options.initial_cluster,
        format!("restored-{}-{}", position.term, position.index),
    );
    let sled_dir = options.data_dir.join("sled");
    std::fs::create_dir_all(&sled_dir)
        .map_err(|e| Error::InvalidArgument(format!("--data-dir {}: {e}", options.data_dir.display())))?;
    let mut data = file::data_reader(&options.file, backup)?;
    SnapshotFile::in_dir(&sled_dir)
        .store_with(&meta, |out| std::io::copy(&mut data, out).map(|_| ()))
        .map_err(|e| Error::internal(format!("write the node's snapshot: {e}")))?;
    // Opened as a node opens it: the state is decoded (and so checked) here.
    let (log, mut state_machine) = open_storage(&options.data_dir)?;
    let (applied, _) = state_machine.applied_state().await.map_err(Error::internal)?;
    if applied != Some(last) {
        return Err(Error::internal(format!(
            "the restored snapshot reads back at {applied:?}, not {last:?}"
        )));
    }
    log.reset_to_snapshot(last, &Vote::new(position.term, options.node_id))?;
    Ok(last)
}

/// Removes what a failed restore wrote into `dir` (which was empty, or did not exist).
fn remove_written(dir: &Path, existed: bool) {
    let removed = if existed {
        std::fs::read_dir(dir).and_then(|entries| {
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
            Ok(())
        })
    } else {
        std::fs::remove_dir_all(dir)
    };
    if let Err(e) = removed {
        tracing::warn!(
            "could not remove what the failed restore wrote in {}: {e}",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::RaftLogStorage;
    use openraft::{BasicNode, Membership, StoredMembership};

    use super::*;
    use crate::backup::file::Header;
    use crate::raft::state_machine::AppliedPosition;
    use crate::scheduler::job::{Metadata, Policies, ScheduleSpec};
    use crate::scheduler::{Changes, Command, JobSpec, Request, State};

    /// A backup of a state with one job, taken at log id (3, 2, 10) of a
    /// cluster of nodes 1 to 3, written to `dir`, with `state_format_version`.
    fn backup(dir: &Path, state_format_version: u16) -> (PathBuf, State) {
        let mut state = State::default();
        let spec = JobSpec {
            job_type: "noop".into(),
            owner_service: "svc".into(),
            schedule: ScheduleSpec::Every {
                interval_ms: 60_000,
                phase_ms: 0,
            },
            payload: vec![],
            metadata: Metadata::default(),
            policies: Policies::default().shared(),
            paused: false,
        };
        let create = Request {
            at_ms: 1_000,
            principal: "tester".into(),
            command: Command::CreateJob {
                id: "nightly".into(),
                spec,
                request_id: Some("req-1".into()),
            },
            write_id: None,
        };
        state.apply(10, &create, &mut Changes::default()).unwrap();
        let old_members: BTreeMap<NodeId, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("10.0.0.{id}:7401"))))
            .collect();
        let last = LogId::new(CommittedLeaderId::new(3, 2), 10);
        let position = AppliedPosition {
            log_id: Some(last),
            membership: StoredMembership::new(
                Some(last),
                Membership::new(vec![old_members.keys().copied().collect()], old_members),
            ),
        };
        let mut header = Header::of(&state, &position, 2, "cluster");
        header.state_format_version = state_format_version;
        let path = dir.join("backup.kbak");
        let mut out = std::fs::File::create(&path).unwrap();
        file::write(&mut out, &header, |w| {
            postcard::to_io(&state.image(), w)
                .map(|_| ())
                .map_err(std::io::Error::other)
        })
        .unwrap();
        (path, state)
    }

    fn options(file: &Path, data_dir: &Path, node_id: NodeId) -> RestoreOptions {
        RestoreOptions {
            file: file.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            node_id,
            initial_cluster: (1..=3).map(|id| (id, format!("127.0.0.1:740{id}"))).collect(),
        }
    }

    #[tokio::test]
    async fn a_restored_node_holds_the_state_at_the_backup_position_with_the_new_members() {
        let dir = tempfile::tempdir().unwrap();
        let (file, state) = backup(dir.path(), crate::codec::FORMAT_VERSION);
        let data_dir = dir.path().join("node-2");
        let restored = restore(&options(&file, &data_dir, 2)).await.unwrap();
        let last = LogId::new(CommittedLeaderId::new(3, 2), 10);
        assert_eq!(restored.last_log_id, last);
        assert_eq!(restored.backup.header.counts.jobs, 1);

        let (mut log, mut sm) = open_storage(&data_dir).unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(last));
        assert_eq!(
            membership.membership().get_joint_config(),
            &vec![BTreeSet::from([1, 2, 3])]
        );
        let addrs: Vec<String> = membership
            .membership()
            .nodes()
            .map(|(_, n)| n.addr.clone())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403"]);
        assert_eq!(
            sm.state_handle().read().digest(),
            state.digest(),
            "the replicated content"
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        let log_state = log.get_log_state().await.unwrap();
        assert_eq!(
            (log_state.last_purged_log_id, log_state.last_log_id),
            (applied, applied)
        );
        drop((log, sm));

        // The directory is not empty now: a second restore is refused and changes nothing.
        let err = restore(&options(&file, &data_dir, 2)).await.unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert!(data_dir.join("sled").join("kairos-snapshot").exists());
        // A node id outside --initial-cluster is refused.
        let err = restore(&options(&file, &dir.path().join("node-9"), 9))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not contain --node-id 9"), "{err}");
    }

    #[tokio::test]
    async fn a_state_of_another_format_version_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = backup(dir.path(), crate::codec::FORMAT_VERSION - 1);
        let data_dir = dir.path().join("node-1");
        std::fs::create_dir(&data_dir).unwrap();
        let err = restore(&options(&file, &data_dir, 1))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("its state is in format version 5"), "{err}");
        assert_eq!(std::fs::read_dir(&data_dir).unwrap().count(), 0);
    }
}
