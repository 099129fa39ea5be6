//! Property: **a voter removed and added back is a voter again**. Under
//! `membership_change` (`src/membership.rs`) a follower is removed and
//! added back while the workload runs, the leader sometimes killed during
//! the add; within 30 s the add must succeed and every node of the round
//! must be a voter in the leader's membership. The harness records what
//! the cluster did otherwise with the fault; this checker reports it. That
//! no acknowledged write or fire was lost or doubled meanwhile, the other
//! checkers judge.

use crate::history::FaultKind;
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "membership_restored";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    super::misbehaviour_of(evidence, NAME, &[FaultKind::MembershipChange])
}
