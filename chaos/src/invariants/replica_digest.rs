//! Property: **all replicas report the same state digest** once they have
//! applied the same log index (after settle, with no more writes coming).

use std::collections::BTreeMap;

use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "replica_digest";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let digests = &evidence.final_state.digests;
    if !evidence.final_state.converged {
        let seen: Vec<String> = digests
            .iter()
            .map(|(n, (i, _))| format!("node {n} at {i}"))
            .collect();
        return vec![Violation::new(
            NAME,
            format!(
                "replicas did not reach the same applied index: {}",
                seen.join(", ")
            ),
        )
        .nodes(digests.keys().copied())];
    }
    let mut by_digest: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (&node, (_, digest)) in digests {
        by_digest.entry(digest).or_default().push(node);
    }
    if by_digest.len() <= 1 {
        return Vec::new();
    }
    let index = digests.values().next().map_or(0, |(i, _)| *i);
    let groups: Vec<String> = by_digest
        .iter()
        .map(|(d, nodes)| format!("{nodes:?} -> {d}"))
        .collect();
    vec![Violation::new(
        NAME,
        format!(
            "replicas at applied index {index} disagree: {}",
            groups.join("; ")
        ),
    )
    .nodes(digests.keys().copied())]
}
