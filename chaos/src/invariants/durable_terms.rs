//! Property: **no node's term goes backwards**, as seen by polling every
//! node for its role and term throughout the run, across its kills and
//! restarts. A node's term is the term of its vote, which it stores durably
//! before answering; a term that went backwards means a vote was lost, and a
//! node that forgets its vote can vote twice in one term and elect two
//! leaders with the same leader id.
//!
//! What this does *not* flag: two nodes that both report themselves leader
//! of one term. openraft (without its `single-term-leader` feature, which
//! Kairos does not use) identifies a leader by `(term, node id)` and a voter
//! grants a greater id within the term it already voted in, so two
//! candidates that start the same term can both win it, one after the other;
//! the lower one steps down at its first append to a voter of the higher.
//! Such terms are legal, not violations.
//! Whether the replicas still agree on what was committed is
//! `replica_digest`'s question.

use std::collections::BTreeMap;

use crate::history::{Role, RoleSample};
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "durable_terms";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    regressions(&evidence.history.roles)
}

/// Every sample whose term is below an earlier sample's term of the same
/// node. Samples of a node that did not answer (`Down`) carry no term and
/// are skipped. The sampler polls each node again only after its previous
/// answer, so a node's samples are in the order the node answered them.
fn regressions(samples: &[RoleSample]) -> Vec<Violation> {
    let mut highest: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut violations = Vec::new();
    for sample in samples.iter().filter(|s| s.role != Role::Down) {
        match highest.get(&sample.node) {
            Some(&(term, t_ms)) if sample.term < term => violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "node {} reported term {} after term {term}",
                        sample.node, sample.term
                    ),
                )
                .nodes([sample.node])
                .time(format!("t={t_ms}ms"))
                .time(format!("t={}ms", sample.t_ms)),
            ),
            Some(&(term, _)) if sample.term == term => {}
            _ => {
                highest.insert(sample.node, (sample.term, sample.t_ms));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::tests::sample;

    #[test]
    fn two_leaders_of_one_term_and_a_restart_are_not_violations() {
        let samples = [
            sample(10, 1, Role::Leader, 1),
            sample(10, 3, Role::Leader, 1),
            sample(20, 1, Role::Down, 0),
            sample(30, 1, Role::Follower, 1),
            sample(40, 1, Role::Leader, 2),
        ];
        assert!(regressions(&samples).is_empty());
    }

    #[test]
    fn a_term_that_goes_backwards_is_named_with_both_times() {
        let samples = [
            sample(10, 2, Role::Follower, 4),
            sample(20, 2, Role::Down, 0),
            sample(30, 1, Role::Leader, 5),
            sample(40, 2, Role::Follower, 3),
        ];
        let found = regressions(&samples);
        assert_eq!(found.len(), 1, "{found:?}");
        let text = format!("{:?}", found[0]);
        assert!(text.contains("node 2 reported term 3 after term 4"), "{text}");
        assert!(text.contains("t=10ms") && text.contains("t=40ms"), "{text}");
    }
}
