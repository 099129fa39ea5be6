//! Property: **at most one run per `(job, nominal_time)`** — per
//! idempotency key, which is `job:nominal time` for a fire, a trigger or a
//! backfill and `job:event id` for a run a published event created (two
//! events committed in one entry share a nominal time, not a key).
//!
//! Checked twice: on the runs stored after settle (any cause), and on the
//! webhook deliveries, which also cover jobs deleted since — two different
//! run ids delivered under one idempotency key (which is `job:nominal time`)
//! mean two runs of one fire.

use std::collections::{BTreeMap, BTreeSet};

use crate::report::Violation;

use super::{rfc3339, unix_ms, Evidence};

pub const NAME: &str = "unique_runs";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut stored: BTreeMap<&str, Vec<&kairos::proto::Run>> = BTreeMap::new();
    for run in &evidence.final_state.runs {
        stored.entry(&run.idempotency_key).or_default().push(run);
    }
    for (key, runs) in stored.into_iter().filter(|(_, runs)| runs.len() > 1) {
        let ids: Vec<u64> = runs.iter().map(|r| r.id).collect();
        violations.push(
            Violation::new(
                NAME,
                format!("{} stored runs {ids:?} for one fire ({key})", runs.len()),
            )
            .job(&runs[0].job_id)
            .time(rfc3339(unix_ms(&runs[0].nominal_time)))
            .nodes(runs.iter().map(|r| r.node_id).filter(|&n| n != 0)),
        );
    }
    let mut delivered: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for d in &evidence.history.deliveries {
        delivered.entry(&d.key).or_default().insert(d.run_id);
    }
    for (key, runs) in delivered.into_iter().filter(|(_, runs)| runs.len() > 1) {
        let (job, nominal) = key.split_once(':').unwrap_or((key, ""));
        violations.push(
            Violation::new(
                NAME,
                format!(
                    "deliveries from {} different runs {runs:?} for one fire",
                    runs.len()
                ),
            )
            .job(job)
            .time(nominal),
        );
    }
    violations
}
