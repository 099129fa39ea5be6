//! `kairos agent --force-new-cluster`: recovery from a lost majority.
//!
//! Run on one surviving node's data directory before the node starts
//! ([`force_new_cluster`]). The node's whole log is replayed onto its
//! stored snapshot through the state machine's own code — up to the log's
//! end, not only to the committed index this node saved: that index is
//! written at most every 100 ms, so it can lag what the node had applied
//! (and acknowledged, when it led), and every entry in the log is one a
//! Raft election won by this node would have committed anyway. The state
//! then becomes the node's stored snapshot at the last entry's log id with
//! the membership `{this node}` (at its advertised peer address), the log
//! is emptied to start after it, and the stored vote moves to a term above
//! every term this node has seen. The node then starts as a one-node
//! cluster, elects itself and runs normally; members are added with
//! `kairos cluster add-node`.
//!
//! Safety when the flag is left on (a unit file, an environment):
//! - a node that is already a one-node cluster with itself as the only
//!   voter is left as it is (a warning says the flag did nothing);
//! - a successful run writes [`MARKER`] in the data directory. A later
//!   start with the flag on a directory with that file whose membership has
//!   grown again is refused: forcing again would cut the node off from the
//!   members added since, who could go on as a cluster of their own. To
//!   force again after another loss of majority, delete the file first.
//!
//! Crash safety: the snapshot is stored first (written to a temporary
//! file, fsynced, renamed); a crash before the log is reset leaves a node
//! whose snapshot already says `{this node}` and whose log holds nothing
//! after it, which starts as the same one-node cluster.

use std::collections::BTreeMap;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::Vote;
use serde::{Deserialize, Serialize};

use super::meta_with_members;
use crate::error::{Error, Result};
use crate::raft::offline::apply_log;
use crate::raft::snapshot_file::SnapshotFile;
use crate::raft::{open_storage, NodeId};

/// The file a successful run leaves in the data directory.
pub const MARKER: &str = "forced-new-cluster.json";

/// What [`MARKER`] records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedRecord {
    /// When, RFC 3339.
    pub at: String,
    /// This node.
    pub node_id: NodeId,
    /// The log index the new cluster's state starts after.
    pub index: u64,
    /// The term of the vote stored.
    pub term: u64,
    /// The members before (id → peer address).
    pub previous_members: BTreeMap<NodeId, String>,
}

/// What [`force_new_cluster`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node was already a one-node cluster of itself: nothing changed.
    AlreadyAlone,
    /// The node's storage now holds a one-node cluster.
    Forced(ForcedRecord),
}

/// Rewrites the stopped node `id`'s storage in `data_dir` into a one-node
/// cluster of itself at peer address `addr` (see the module docs).
pub async fn force_new_cluster(data_dir: &Path, id: NodeId, addr: &str) -> Result<Outcome> {
    if !data_dir.join("sled").is_dir() {
        return Err(Error::FailedPrecondition(format!(
            "--force-new-cluster: {} holds no node data to recover (no sled directory)",
            data_dir.display()
        )));
    }
    let (mut log, mut state_machine) = open_storage(data_dir)?;
    let log_end = log
        .get_log_state()
        .await
        .map_err(Error::internal)?
        .last_log_id
        .map_or(0, |l| l.index);
    let applied = apply_log(&mut log, &mut state_machine, log_end).await?;
    let (_, membership) = state_machine.applied_state().await.map_err(Error::internal)?;
    let configs = membership.membership().get_joint_config();
    if configs.len() == 1 && configs[0].len() == 1 && configs[0].contains(&id) {
        return Ok(Outcome::AlreadyAlone);
    }
    let marker = data_dir.join(MARKER);
    if marker.exists() {
        return Err(Error::FailedPrecondition(format!(
            "--force-new-cluster: this node was already made a new one-node cluster (see {}), and has \
             members again; forcing again would cut it off from them. Start it without \
             --force-new-cluster (and KAIROS_FORCE_NEW_CLUSTER); to force again after another loss of \
             majority, delete that file first",
            marker.display()
        )));
    }
    let Some(last) = applied else {
        return Err(Error::FailedPrecondition(
            "--force-new-cluster: this node has applied nothing; there is no state to recover".into(),
        ));
    };
    let vote = log
        .read_vote()
        .await
        .map_err(Error::internal)?
        .unwrap_or_default();
    let term = vote.leader_id.term.max(last.leader_id.term) + 1;
    let previous_members: BTreeMap<NodeId, String> = membership
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    let members = BTreeMap::from([(id, addr.to_string())]);
    let meta = meta_with_members(last, &members, format!("forced-{term}-{}", last.index));
    let image = state_machine.state_handle().read().image();
    let stored = SnapshotFile::in_dir(&data_dir.join("sled"))
        .store_with(&meta, |out| {
            postcard::to_io(&image, out)
                .map(|_| ())
                .map_err(std::io::Error::other)
        })
        .map_err(|e| Error::internal(format!("--force-new-cluster: store the snapshot: {e}")))?;
    if stored.is_none() {
        return Err(Error::internal(
            "--force-new-cluster: a newer snapshot than the replayed state is stored",
        ));
    }
    log.reset_to_snapshot(last, &Vote::new(term, id))?;
    let record = ForcedRecord {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        node_id: id,
        index: last.index,
        term,
        previous_members,
    };
    write_marker(&marker, &record)?;
    Ok(Outcome::Forced(record))
}

/// Runs [`force_new_cluster`] for a starting agent and says loudly what it did.
pub async fn before_start(data_dir: &Path, id: NodeId, addr: &str) -> Result<()> {
    match force_new_cluster(data_dir, id, addr).await? {
        Outcome::AlreadyAlone => tracing::warn!(
            node = id,
            "--force-new-cluster: this node is already a one-node cluster; nothing changed. \
             Remove the flag (and KAIROS_FORCE_NEW_CLUSTER)"
        ),
        Outcome::Forced(record) => tracing::error!(
            node = id,
            index = record.index,
            term = record.term,
            previous_members = ?record.previous_members,
            "--force-new-cluster: THIS NODE IS NOW A NEW ONE-NODE CLUSTER holding what its log held \
             up to index {}. Writes the lost majority acknowledged that this node had not received \
             are gone. Never start the old members on their old data: wipe it and add them back \
             (with new node ids) with `kairos cluster add-node`. Remove the flag before the next start",
            record.index
        ),
    }
    Ok(())
}

fn write_marker(path: &Path, record: &ForcedRecord) -> Result<()> {
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(path)?;
        file.write_all(&serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
        file.sync_all()
    };
    write().map_err(|e| Error::internal(format!("--force-new-cluster: write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{BasicNode, Entry, EntryPayload, Membership};

    use super::*;
    use crate::scheduler::job::{Metadata, Policies, ScheduleSpec};
    use crate::scheduler::{Command, JobSpec, Request};
    use openraft::LogId;

    fn create(id: &str) -> Request {
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
        Request {
            at_ms: 1_000,
            principal: "tester".into(),
            command: Command::CreateJob {
                id: id.into(),
                spec,
                request_id: None,
            },
            write_id: None,
        }
    }

    fn log_id(term: u64, leader: NodeId, index: u64) -> LogId<NodeId> {
        LogId::new(openraft::CommittedLeaderId::new(term, leader), index)
    }

    /// A stopped node 1 of a three-node cluster whose log holds the
    /// membership and `jobs` creates, all in term 3, committed up to
    /// `committed`.
    async fn node_data(dir: &Path, jobs: u64, committed: u64) {
        let (mut log, _) = open_storage(dir).unwrap();
        let members: BTreeMap<NodeId, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("127.0.0.1:740{id}"))))
            .collect();
        let voters: BTreeSet<NodeId> = members.keys().copied().collect();
        let mut entries = vec![Entry {
            log_id: log_id(3, 2, 1),
            payload: EntryPayload::Membership(Membership::new(vec![voters], members)),
        }];
        for n in 0..jobs {
            entries.push(Entry {
                log_id: log_id(3, 2, n + 2),
                payload: EntryPayload::Normal(create(&format!("job-{n}"))),
            });
        }
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        log.save_committed(Some(log_id(3, 2, committed))).await.unwrap();
        // Written with the next append or vote, at most every 100 ms.
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
    }

    #[tokio::test]
    async fn a_survivor_becomes_a_one_node_cluster_with_its_whole_log_and_a_higher_term() {
        let dir = tempfile::tempdir().unwrap();
        node_data(dir.path(), 5, 3).await;
        let outcome = force_new_cluster(dir.path(), 1, "127.0.0.1:7401").await.unwrap();
        let Outcome::Forced(record) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!((record.index, record.term), (6, 4));
        assert_eq!(record.previous_members.len(), 3);

        let (mut log, mut sm) = open_storage(dir.path()).unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(3, 2, 6)));
        assert_eq!(
            membership.membership().get_joint_config(),
            &vec![BTreeSet::from([1])]
        );
        // Every entry of the log, the ones past the saved committed index too.
        assert_eq!(sm.state_handle().read().job_count(), 5);
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (applied, applied));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        assert_eq!(log.read_committed().await.unwrap(), applied);
        drop((log, sm));

        // Left on: a one-node cluster is left alone.
        let again = force_new_cluster(dir.path(), 1, "127.0.0.1:7401").await.unwrap();
        assert_eq!(again, Outcome::AlreadyAlone);
    }

    #[tokio::test]
    async fn forcing_again_after_members_were_added_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        node_data(dir.path(), 2, 3).await;
        write_marker(
            &dir.path().join(MARKER),
            &ForcedRecord {
                at: "then".into(),
                node_id: 1,
                index: 1,
                term: 2,
                previous_members: BTreeMap::new(),
            },
        )
        .unwrap();
        let err = force_new_cluster(dir.path(), 1, "127.0.0.1:7401")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("already made a new one-node cluster"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = force_new_cluster(empty.path(), 1, "127.0.0.1:7401")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no node data"), "{err}");
    }
}
