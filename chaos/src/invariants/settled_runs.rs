//! Property: **no run stays `running` (or queued, or pending) after settle.**
//!
//! Once every fault is healed and every job paused, each run must reach a
//! final status within the settle timeout: a lost worker's lease expires, a
//! lost result is re-sent, a queued run is dispatched.

use kairos::proto as pb;

use crate::report::Violation;

use super::{rfc3339, unix_ms, Evidence};

pub const NAME: &str = "settled_runs";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let open = [
        pb::RunStatus::Pending,
        pb::RunStatus::Queued,
        pb::RunStatus::Running,
    ];
    evidence
        .final_state
        .runs
        .iter()
        .filter(|r| open.iter().any(|s| *s as i32 == r.status))
        .map(|r| {
            let status = pb::RunStatus::try_from(r.status).map_or("?", |s| s.as_str_name());
            Violation::new(
                NAME,
                format!(
                    "run {} is still {status} (attempt {}) after settle",
                    r.id, r.attempt
                ),
            )
            .job(&r.job_id)
            .time(rfc3339(unix_ms(&r.nominal_time)))
            .nodes((r.node_id != 0).then_some(r.node_id))
        })
        .collect()
}
