//! Property: **one run per published event and one run per upstream
//! success, never more, never fewer.**
//!
//! - Events: every publish the cluster acknowledged has exactly one run of
//!   the event-triggered job carrying its event id (a publish retried with
//!   its idempotency key across a failover must not create a second), no
//!   event id has two runs, and a run whose event no acknowledged publish
//!   named comes from a publish without a definite answer (there can be at
//!   most as many such runs as such publishes).
//! - Dependencies: the job that runs after a steady job has exactly one run
//!   per nominal time at which the steady job's run succeeded after the
//!   dependent job was created and before it was paused at settle, and none
//!   for any other nominal time.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{OpKind, Outcome};
use crate::report::Violation;
use crate::workload::{CHAIN_JOB, CHAIN_UPSTREAM, EVENT_JOB};

use super::{rfc3339, unix_ms, Evidence};

pub const NAME: &str = "triggered_runs";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut violations = events(evidence);
    violations.extend(dependencies(evidence));
    violations
}

fn events(evidence: &Evidence) -> Vec<Violation> {
    let mut violations = Vec::new();
    let publishes: Vec<_> = evidence
        .history
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Publish)
        .collect();
    if !evidence.final_state.jobs.contains_key(EVENT_JOB) {
        if publishes.iter().any(|o| o.outcome == Outcome::Ok) {
            violations.push(Violation::new(NAME, "the event-triggered job is missing").job(EVENT_JOB));
        }
        return violations;
    }
    let mut runs_by_event: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for run in evidence.final_state.runs.iter().filter(|r| r.job_id == EVENT_JOB) {
        runs_by_event
            .entry(run.event_id.as_str())
            .or_default()
            .push(run.id);
    }
    for (event, runs) in &runs_by_event {
        if event.is_empty() {
            violations.push(
                Violation::new(
                    NAME,
                    format!("runs {runs:?} of the event-triggered job carry no event id"),
                )
                .job(EVENT_JOB),
            );
        } else if runs.len() > 1 {
            violations.push(
                Violation::new(
                    NAME,
                    format!("event {event} created {} runs {runs:?}", runs.len()),
                )
                .job(EVENT_JOB),
            );
        }
    }
    let acked: BTreeSet<&str> = publishes
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.event_id.as_str())
        .collect();
    for op in publishes.iter().filter(|o| o.outcome == Outcome::Ok) {
        if !runs_by_event.contains_key(op.event_id.as_str()) {
            violations.push(
                Violation::new(NAME, format!("acknowledged event {} has no run", op.event_id))
                    .job(EVENT_JOB)
                    .nodes([op.node]),
            );
        }
    }
    let unknown = publishes
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
        .count();
    let unexplained: Vec<&str> = runs_by_event
        .keys()
        .copied()
        .filter(|e| !e.is_empty() && !acked.contains(e))
        .collect();
    if unexplained.len() > unknown {
        violations.push(
            Violation::new(
                NAME,
                format!(
                    "{} runs for events no publish acknowledged ({unexplained:?}), but only {unknown} publishes \
                     had no definite answer",
                    unexplained.len()
                ),
            )
            .job(EVENT_JOB),
        );
    }
    violations
}

fn dependencies(evidence: &Evidence) -> Vec<Violation> {
    let state = evidence.final_state;
    // The dependent job's last change is settle's pause (the workload never
    // touches it): the leader's time of the entry that paused it.
    // The workload creates the dependent job after the steady ones, so the
    // upstream job's first fires may end before it exists: only runs that
    // ended after its creation must have a follower.
    let Some((created_at, paused_at)) = state
        .jobs
        .get(CHAIN_JOB)
        .filter(|j| j.paused)
        .map(|j| (unix_ms(&j.created_at), unix_ms(&j.updated_at)))
    else {
        return Vec::new(); // not paused: settle could not reach it; other checkers say why
    };
    let mut violations = Vec::new();
    let mut downstream: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for run in state.runs.iter().filter(|r| r.job_id == CHAIN_JOB) {
        downstream
            .entry(unix_ms(&run.nominal_time))
            .or_default()
            .push(run.id);
    }
    let succeeded = kairos::proto::RunStatus::Succeeded as i32;
    let upstream: BTreeMap<i64, &kairos::proto::Run> = state
        .runs
        .iter()
        .filter(|r| r.job_id == CHAIN_UPSTREAM && r.status == succeeded)
        .map(|r| (unix_ms(&r.nominal_time), r))
        .collect();
    for (nominal, runs) in &downstream {
        if runs.len() > 1 {
            violations.push(
                Violation::new(
                    NAME,
                    format!("{} runs {runs:?} after one upstream nominal time", runs.len()),
                )
                .job(CHAIN_JOB)
                .time(rfc3339(*nominal)),
            );
        }
        if !upstream.contains_key(nominal) {
            violations.push(
                Violation::new(
                    NAME,
                    format!("runs {runs:?} after an upstream time that did not succeed"),
                )
                .job(CHAIN_JOB)
                .time(rfc3339(*nominal)),
            );
        }
    }
    // An upstream run that ended in an entry after the dependent job's
    // creation and before its pause must have a follower; one that ended in
    // the same millisecond as either is not judged (entry times follow the
    // log's order, never going back).
    for (nominal, run) in upstream {
        let ended = unix_ms(&run.finished_at);
        if created_at < ended && ended < paused_at && !downstream.contains_key(&nominal) {
            violations.push(
                Violation::new(
                    NAME,
                    format!("upstream run {} succeeded but no run followed it", run.id),
                )
                .job(CHAIN_JOB)
                .time(rfc3339(nominal)),
            );
        }
    }
    violations
}
