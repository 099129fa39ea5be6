//! Property: **at most one leader per term**, as seen by polling every node
//! for its role and term throughout the run.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::Role;
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "single_leader";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut leaders: BTreeMap<u64, (BTreeSet<u64>, Vec<u64>)> = BTreeMap::new();
    for sample in evidence.history.roles.iter().filter(|s| s.role == Role::Leader) {
        let (nodes, times) = leaders.entry(sample.term).or_default();
        if nodes.insert(sample.node) {
            times.push(sample.t_ms);
        }
    }
    leaders
        .into_iter()
        .filter(|(_, (nodes, _))| nodes.len() > 1)
        .map(|(term, (nodes, times))| {
            let mut v = Violation::new(NAME, format!("{} leaders in term {term}", nodes.len())).nodes(nodes);
            for t in times {
                v = v.time(format!("t={t}ms"));
            }
            v
        })
        .collect()
}
