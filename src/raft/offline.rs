//! Reading a stopped node's data without starting it: the state it would
//! have once it applied everything its log says was committed.
//!
//! [`replay`] opens the data directory as a node does (migrating an older
//! format the same way), loads the stored snapshot and applies the log
//! entries after it up to the committed index this node saved, through the
//! same state machine code. `kairos audit verify --data-dir` uses it to
//! check a node's audit chain offline; [`apply_log`] is the loop it runs,
//! which `--force-new-cluster` runs to the log's end (`crate::backup::force`).
//!
//! IMPLEMENTATION CAVEATS: sled locks the directory, so the node must be
//! stopped; entries the node had not yet learned were committed are left
//! out, as its own restart would first leave them out.

use std::path::Path;

use openraft::storage::{RaftLogReader, RaftStateMachine};

use openraft::LogId;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::{open_storage, NodeId};
use crate::error::{Error, Result};
use crate::scheduler::State;

/// The state of the node whose data is in `data_dir`, and the log index it
/// is at (see the module docs).
pub async fn replay(data_dir: &Path) -> Result<(State, u64)> {
    if !data_dir.join("sled").is_dir() {
        return Err(Error::NotFound(format!(
            "{} holds no Kairos node data (no sled directory)",
            data_dir.display()
        )));
    }
    let (mut log, mut state_machine) = open_storage(data_dir)?;
    let committed = log.committed_index();
    let applied = apply_log(&mut log, &mut state_machine, committed).await?;
    let state = state_machine.state_handle().read().clone();
    Ok((state, applied.map_or(0, |l| l.index)))
}

/// Applies the entries of `log` after what `state_machine` has applied, up
/// to index `through` (or the log's end, if sooner), through the state
/// machine's own code; returns the log id then applied.
pub async fn apply_log(
    log: &mut LogStore,
    state_machine: &mut StateMachineStore,
    through: u64,
) -> Result<Option<LogId<NodeId>>> {
    let (applied, _) = state_machine.applied_state().await.map_err(Error::internal)?;
    let mut next = applied.map_or(1, |l| l.index + 1);
    const CHUNK: u64 = 1_024;
    while next <= through {
        let last = through.min(next + CHUNK - 1);
        let entries = log
            .try_get_log_entries(next..=last)
            .await
            .map_err(Error::internal)?;
        if entries.is_empty() {
            break;
        }
        state_machine.apply(entries).await.map_err(Error::internal)?;
        next = last + 1;
    }
    let (applied, _) = state_machine.applied_state().await.map_err(Error::internal)?;
    Ok(applied)
}
