//! openraft's own storage test suite, run against the sled store, plus a few
//! restart checks of our persistence (log and vote in sled, the state as
//! snapshot plus log).

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::{open_storage, StorageError, TypeConfig};
use crate::scheduler::job::{Metadata, Policies, ScheduleSpec};
use crate::scheduler::{Command, JobSpec, Request};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open_storage(dir.path()).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(SledBuilder).unwrap();
}

pub(super) fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

pub(super) fn create_entry(index: u64, id: &str) -> Entry<TypeConfig> {
    let spec = JobSpec {
        job_type: "noop".into(),
        owner_service: String::new(),
        schedule: ScheduleSpec::Every {
            interval_ms: 60_000,
            phase_ms: 0,
        },
        payload: vec![],
        metadata: Metadata::default(),
        policies: Policies::default().shared(),
        paused: false,
    };
    let request = Request {
        at_ms: 1_000 * index as i64,
        principal: "t".into(),
        command: Command::CreateJob {
            id: id.into(),
            spec,
            request_id: None,
        },
        write_id: None,
    };
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(request),
    }
}

/// A snapshot of a state machine that applied `jobs` creates (`<prefix>-<i>`).
pub(super) async fn snapshot_of_jobs(jobs: u64, prefix: &str) -> openraft::storage::Snapshot<TypeConfig> {
    use openraft::RaftSnapshotBuilder;
    let source_dir = tempfile::tempdir().unwrap();
    let (_, mut source) = open_storage(source_dir.path()).unwrap();
    source
        .apply((1..=jobs).map(|i| create_entry(i, &format!("{prefix}-{i}"))))
        .await
        .unwrap();
    let built = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // A built snapshot carries only its meta; the data is in the file.
    assert!(built.snapshot.get_ref().is_empty());
    let stored = source.get_current_snapshot().await.unwrap().expect("stored");
    assert_eq!(stored.meta, built.meta);
    stored
}

#[tokio::test]
async fn log_vote_and_the_snapshot_survive_reopen_and_applied_entries_after_it_do_not() {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_storage(dir.path()).unwrap();
        let entries: Vec<_> = (1..=4).map(|i| create_entry(i, &format!("job-{i}"))).collect();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        sm.apply(entries.iter().take(2).cloned()).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply(entries.into_iter().skip(2).take(1)).await.unwrap();
    }
    let (mut log, mut sm) = open_storage(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(4)));
    assert_eq!(log.try_get_log_entries(2..5).await.unwrap().len(), 3);
    // The state is the snapshot's: openraft applies entry 3 again from the log.
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2)));
    let state = sm.state_handle();
    assert!(state.read().job("job-2").is_some());
    assert!(
        state.read().job("job-3").is_none(),
        "entry 3 is after the snapshot"
    );
}

#[tokio::test]
async fn installed_snapshot_replaces_state_and_survives_reopen() {
    let snapshot = snapshot_of_jobs(5, "snap").await;

    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut target) = open_storage(dir.path()).unwrap();
        target.apply([create_entry(1, "old-job")]).await.unwrap();
        target
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert!(target.state_handle().read().job("old-job").is_none());
    }
    let (_, mut target) = open_storage(dir.path()).unwrap();
    let (applied, _) = target.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(5)));
    assert_eq!(target.state_handle().read().job_count(), 5);
    let current = target
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("stored snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(5)));
}

#[tokio::test]
async fn without_a_snapshot_a_reopened_state_machine_starts_empty_and_a_newer_snapshot_wins() {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut sm) = open_storage(dir.path()).unwrap();
        sm.apply((1..=3).map(|i| create_entry(i, &format!("job-{i}"))))
            .await
            .unwrap();
    }
    {
        // Nothing but the log holds entries 1-3: openraft re-applies them.
        let (_, mut sm) = open_storage(dir.path()).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        assert_eq!(sm.state_handle().read().job_count(), 0);
        sm.apply((1..=6).map(|i| create_entry(i, &format!("job-{i}"))))
            .await
            .unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply([create_entry(7, "job-7")]).await.unwrap();
    }
    let (_, mut sm) = open_storage(dir.path()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(6)), "loaded from the snapshot");
    assert_eq!(sm.state_handle().read().job_count(), 6);
}

#[tokio::test]
async fn a_build_that_finishes_after_a_newer_install_does_not_replace_it() {
    use openraft::RaftSnapshotBuilder;
    // openraft runs a build on a task of its own; an install can land first.
    let newer = snapshot_of_jobs(8, "job").await;
    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut sm) = open_storage(dir.path()).unwrap();
        sm.apply((1..=3).map(|i| create_entry(i, &format!("job-{i}"))))
            .await
            .unwrap();
        let mut builder = sm.get_snapshot_builder().await; // the state at entry 3
        sm.install_snapshot(&newer.meta, newer.snapshot).await.unwrap();
        builder.build_snapshot().await.unwrap(); // finishes last
        let current = sm.get_current_snapshot().await.unwrap().expect("stored");
        assert_eq!(
            current.meta.last_log_id,
            Some(log_id(8)),
            "the newer snapshot stays"
        );
    }
    let (_, mut sm) = open_storage(dir.path()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(8)));
    assert_eq!(sm.state_handle().read().job_count(), 8);
}
