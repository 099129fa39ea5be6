//! Property: **an overloaded cluster answers, refuses what it cannot
//! take, and recovers**. Under `overload` (`src/overload.rs`) every flood
//! request is answered within 10 s, with success or with
//! `RESOURCE_EXHAUSTED`/`UNAVAILABLE` (or the state's own answer to a
//! create or delete), never with another error; a node serves no more
//! watch streams than its `--max-watches` and refuses the rest with
//! `RESOURCE_EXHAUSTED`; and a write succeeds again within 30 s of the
//! flood's end. The harness records what the cluster did otherwise with
//! the fault; this checker reports it. That the leader stayed in place
//! through the flood, `no_needless_elections` judges.

use crate::history::FaultKind;
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "overload_answered";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    super::misbehaviour_of(evidence, NAME, &[FaultKind::Overload])
}
