//! Property: **every nominal fire in the window was executed, or is accounted
//! for by the job's catch-up policy and counted as missed.**
//!
//! Checked on the steady jobs, which fire every second from setup until the
//! settle pauses them and which the workload never touches. For each, the
//! window runs from the first second after its creation to its last fire
//! before the pause:
//!
//! - catch-up `all`: every second of the window has its run;
//! - catch-up `latest`: seconds with a run plus the job's `missed` counter
//!   cover the window exactly;
//! - the window reaches the pause (no trailing fires silently dropped);
//! - every succeeded run was delivered to the receiver (it was executed).

use std::collections::BTreeSet;

use kairos::proto as pb;

use crate::report::Violation;

use super::{rfc3339, unix_ms, Evidence};

pub const NAME: &str = "fires_accounted";

/// How far before the pause the last fire may be: the fire lateness plus the
/// time the pause took to be acknowledged.
const PAUSE_SLACK_MS: i64 = 3_000;

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut violations = Vec::new();
    let delivered: BTreeSet<&str> = evidence
        .history
        .deliveries
        .iter()
        .map(|d| d.key.as_str())
        .collect();
    for steady in evidence.steady {
        let job = steady.id.as_str();
        let runs: Vec<&pb::Run> = evidence
            .final_state
            .runs
            .iter()
            .filter(|r| r.job_id == job && r.cause == pb::RunCause::Schedule as i32)
            .collect();
        let seconds: BTreeSet<i64> = runs.iter().map(|r| unix_ms(&r.nominal_time) / 1000).collect();
        let (Some(stored), Some(&last)) = (evidence.final_state.jobs.get(job), seconds.last()) else {
            violations.push(Violation::new(NAME, "the steady job is gone or has no scheduled run").job(job));
            continue;
        };
        // The schedule's first fire is the first whole second after the create.
        let first = unix_ms(&stored.created_at) / 1000 + 1;
        let last_fired = (unix_ms(&stored.last_run) / 1000).max(last);
        let span = (last_fired - first + 1) as u64;
        let missed = evidence.final_state.counters.get(job).map_or(0, |c| c.missed);
        let gaps: Vec<i64> = (first..=last_fired).filter(|s| !seconds.contains(s)).collect();
        match steady.catchup {
            pb::CatchupPolicy::All if !gaps.is_empty() => violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "catch-up all, but {} of {span} seconds have no run (missed counter {missed})",
                        gaps.len()
                    ),
                )
                .job(job)
                .time(rfc3339(gaps[0] * 1000))
                .time(rfc3339(gaps[gaps.len() - 1] * 1000)),
            ),
            pb::CatchupPolicy::Latest if seconds.len() as u64 + missed != span => violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "catch-up latest: {} seconds with a run + {missed} counted missed != {span} seconds",
                        seconds.len()
                    ),
                )
                .job(job)
                .time(rfc3339(first * 1000))
                .time(rfc3339(last_fired * 1000)),
            ),
            _ => {}
        }
        if let Some(&paused) = evidence.final_state.paused_at_unix_ms.get(job) {
            if last_fired * 1000 < paused - 1000 - PAUSE_SLACK_MS {
                violations.push(
                    Violation::new(
                        NAME,
                        "fires between the last run and the pause were neither run nor counted",
                    )
                    .job(job)
                    .time(rfc3339(last_fired * 1000))
                    .time(rfc3339(paused)),
                );
            }
        }
        for run in runs
            .iter()
            .filter(|r| r.status == pb::RunStatus::Succeeded as i32)
        {
            if !delivered.contains(run.idempotency_key.as_str()) {
                violations.push(
                    Violation::new(NAME, format!("run {} succeeded but was never delivered", run.id))
                        .job(job)
                        .time(rfc3339(unix_ms(&run.nominal_time)))
                        .nodes([run.node_id]),
                );
            }
        }
    }
    violations
}
