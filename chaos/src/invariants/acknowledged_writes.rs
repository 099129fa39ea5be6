//! Property: **acknowledged writes are present after heal.**
//!
//! - A job whose create was acknowledged, and which no delete (acknowledged
//!   or unknown) ever touched, exists after settle.
//! - A job whose delete was acknowledged is gone, unless a create (of any
//!   outcome) started after the delete ended.
//! - A job's final version is at least the version any acknowledged update
//!   returned.
//! - A run id returned by an acknowledged trigger exists after settle, unless
//!   its job was deleted (acknowledged or unknown).
//!
//! Unknown outcomes may or may not have happened, so they never make a write
//! count as lost; they only excuse absences.

use std::collections::BTreeMap;

use crate::history::{Op, OpKind, Outcome};
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "acknowledged_writes";

fn t(ms: u64) -> String {
    format!("t={ms}ms")
}

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let final_state = evidence.final_state;
    let mut by_job: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &evidence.history.ops {
        by_job.entry(op.job_id.as_str()).or_default().push(op);
    }
    let present_runs: std::collections::BTreeSet<u64> = final_state.runs.iter().map(|r| r.id).collect();
    let mut violations = Vec::new();
    for (job, ops) in by_job {
        let maybe = |o: &&&Op| !matches!(o.outcome, Outcome::Failed(_));
        let acked = |o: &&&Op| o.outcome == Outcome::Ok;
        let touched_by_delete = ops.iter().filter(|o| o.kind == OpKind::Delete).any(|o| maybe(&o));
        let present = final_state.jobs.get(job);
        if let Some(create) = ops.iter().find(|o| o.kind == OpKind::Create && acked(o)) {
            if !touched_by_delete && present.is_none() {
                violations.push(
                    Violation::new(NAME, "an acknowledged create is missing after heal")
                        .job(job)
                        .time(t(create.end_ms))
                        .nodes([create.node]),
                );
            }
        }
        for delete in ops.iter().filter(|o| o.kind == OpKind::Delete && acked(o)) {
            let recreated = ops
                .iter()
                .any(|o| o.kind == OpKind::Create && maybe(&o) && o.start_ms > delete.end_ms);
            if present.is_some() && !recreated {
                violations.push(
                    Violation::new(NAME, "an acknowledged delete did not stick")
                        .job(job)
                        .time(t(delete.end_ms))
                        .nodes([delete.node]),
                );
            }
        }
        if let Some(job_now) = present {
            for update in ops.iter().filter(|o| o.kind == OpKind::Update && acked(o)) {
                if let Some(version) = update.version.filter(|&v| job_now.version < v) {
                    violations.push(
                        Violation::new(
                            NAME,
                            format!(
                                "acknowledged update returned version {version}, final version is {}",
                                job_now.version
                            ),
                        )
                        .job(job)
                        .time(t(update.end_ms))
                        .nodes([update.node]),
                    );
                }
            }
        }
        if !touched_by_delete {
            for trigger in ops.iter().filter(|o| o.kind == OpKind::Trigger && acked(o)) {
                if let Some(run) = trigger.run_id.filter(|r| !present_runs.contains(r)) {
                    violations.push(
                        Violation::new(NAME, format!("run {run} of an acknowledged trigger is missing"))
                            .job(job)
                            .time(t(trigger.end_ms))
                            .nodes([trigger.node]),
                    );
                }
            }
        }
    }
    violations
}
