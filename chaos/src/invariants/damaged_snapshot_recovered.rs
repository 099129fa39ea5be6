//! Property: **a node whose snapshot was damaged comes back with the
//! cluster's state**. Under `damaged_snapshot` (`src/damaged_snapshot.rs`)
//! a follower's stored snapshot is cut short or has a byte changed while
//! it is down; within 30 s of its restart it must be running and have
//! applied the leader's commit index from before the fault, having taken
//! the state from its peers. The harness records what it did otherwise
//! with the fault; this checker reports it. That the state it took equals
//! the others', `replica_digest` judges.

use crate::history::FaultKind;
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "damaged_snapshot_recovered";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    super::misbehaviour_of(evidence, NAME, &[FaultKind::DamagedSnapshot])
}
