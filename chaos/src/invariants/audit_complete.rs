//! Property: **the audit log is complete and the same on every replica.**
//!
//! - Every acknowledged client write has exactly one `call` entry with
//!   outcome OK, found by the trace id its request carried (unique per
//!   operation), naming the write's method, job, the harness's principal
//!   and the node the request was sent to. No operation has two OK entries
//!   (a write applied twice), and a definitely refused one has none.
//! - Every run the settled state holds has `execution` entries, the last of
//!   which names its current status (`run.succeeded` for a succeeded run,
//!   ...); every webhook delivery of attempt N of a run follows a
//!   `run.queued` entry of attempt N; the run of an acknowledged trigger was
//!   created by the harness's principal.
//! - Every replica's `VerifyAudit` passes, the replicas hold the same entry
//!   (hash) at the lowest head they all reached, and the listed entries form
//!   one chain (consecutive sequence numbers, each `prev_hash` the hash
//!   before it).
//!
//! Unknown outcomes may or may not have happened: they may have one OK
//! entry, never two.

use std::collections::BTreeMap;

use kairos::proto as pb;

use crate::history::{Delivery, Op, OpKind, Outcome};
use crate::report::Violation;
use crate::settle::AuditEvidence;

use super::{rfc3339, unix_ms, Evidence};

pub const NAME: &str = "audit_complete";

fn t(ms: u64) -> String {
    format!("t={ms}ms")
}

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let audit = &evidence.final_state.audit;
    if let Some(error) = &audit.read_error {
        return vec![Violation::new(
            NAME,
            format!("could not read the audit log: {error}"),
        )];
    }
    let mut violations = Vec::new();
    if audit.first_seq > 1 {
        violations.push(Violation::new(
            NAME,
            format!(
                "node {} dropped audit entries before {} (retention): completeness cannot be judged",
                audit.read_from, audit.first_seq
            ),
        ));
    }
    violations.extend(calls(&evidence.history.ops, audit));
    violations.extend(executions(
        &audit.entries,
        &evidence.final_state.runs,
        &evidence.history.deliveries,
        &evidence.history.ops,
        &audit.principal,
    ));
    violations.extend(replicas(audit));
    violations
}

/// The RPC an operation is.
fn method(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Create => "CreateJob",
        OpKind::Update => "UpdateJob",
        OpKind::Delete => "DeleteJob",
        OpKind::Pause => "PauseJob",
        OpKind::Resume => "ResumeJob",
        OpKind::Trigger => "TriggerJob",
        OpKind::Publish => "PublishEvent",
        OpKind::Read => "GetJob",
    }
}

/// Client writes against their `call` entries.
fn calls(ops: &[Op], audit: &AuditEvidence) -> Vec<Violation> {
    let mut by_trace: BTreeMap<&str, Vec<&pb::AuditEntry>> = BTreeMap::new();
    for entry in audit
        .entries
        .iter()
        .filter(|e| e.kind == "call" && !e.trace_id.is_empty())
    {
        by_trace.entry(entry.trace_id.as_str()).or_default().push(entry);
    }
    let mut violations = Vec::new();
    // Reads are not audited (and carry no trace id).
    for op in ops.iter().filter(|o| o.kind.is_write() && !o.trace_id.is_empty()) {
        let ok: Vec<&pb::AuditEntry> = by_trace
            .get(op.trace_id.as_str())
            .into_iter()
            .flatten()
            .filter(|e| e.code == 0)
            .copied()
            .collect();
        let what = method(&op.kind);
        let seqs = || {
            ok.iter()
                .map(|e| e.seq.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let violation = |message: String| {
            Violation::new(NAME, message)
                .job(&op.job_id)
                .time(t(op.end_ms))
                .nodes([op.node])
        };
        match (&op.outcome, ok.len()) {
            (Outcome::Ok, 0) => violations.push(violation(format!(
                "acknowledged {what} (trace {}) has no audit entry with outcome OK",
                op.trace_id
            ))),
            (_, n) if n > 1 => violations.push(violation(format!(
                "{what} (trace {}) has {n} audit entries with outcome OK (seq {}): applied more than once",
                op.trace_id,
                seqs()
            ))),
            (Outcome::Failed(reason), n) if n > 0 => violations.push(violation(format!(
                "{what} (trace {}) was refused ({reason}) but has an audit entry with outcome OK (seq {})",
                op.trace_id,
                seqs()
            ))),
            (Outcome::Ok, _) => {
                let entry = ok[0];
                let mut wrong = Vec::new();
                if entry.method != what {
                    wrong.push(format!("method {:?}", entry.method));
                }
                // A publish is about a topic, not a job: its entry names none.
                let job = if op.kind == OpKind::Publish {
                    ""
                } else {
                    op.job_id.as_str()
                };
                if entry.job_id != job {
                    wrong.push(format!("job {:?}", entry.job_id));
                }
                if entry.principal != audit.principal {
                    wrong.push(format!(
                        "principal {:?} (want {:?})",
                        entry.principal, audit.principal
                    ));
                }
                if entry.node != op.node {
                    wrong.push(format!("node {}", entry.node));
                }
                if !wrong.is_empty() {
                    violations.push(violation(format!(
                        "the audit entry (seq {}) of acknowledged {what} (trace {}) names {}",
                        entry.seq,
                        op.trace_id,
                        wrong.join(", ")
                    )));
                }
            }
            _ => {}
        }
    }
    violations
}

/// The `execution` event names a run in `status` may have last.
fn last_methods(status: i32) -> &'static [&'static str] {
    match pb::RunStatus::try_from(status) {
        Ok(pb::RunStatus::Pending) => &["run.pending", "run.retrying"],
        Ok(pb::RunStatus::Queued) => &["run.queued"],
        Ok(pb::RunStatus::Running) => &["run.started"],
        Ok(pb::RunStatus::Succeeded) => &["run.succeeded"],
        Ok(pb::RunStatus::Failed) => &["run.failed"],
        Ok(pb::RunStatus::TimedOut) => &["run.timed_out"],
        Ok(pb::RunStatus::Cancelled) => &["run.cancelled"],
        Ok(pb::RunStatus::Skipped) => &["run.skipped"],
        _ => &[],
    }
}

/// Runs and deliveries against the `execution` entries.
fn executions(
    entries: &[pb::AuditEntry],
    runs: &[pb::Run],
    deliveries: &[Delivery],
    ops: &[Op],
    principal: &str,
) -> Vec<Violation> {
    let mut by_run: BTreeMap<u64, Vec<&pb::AuditEntry>> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.kind == "execution") {
        by_run.entry(entry.run_id).or_default().push(entry);
    }
    let mut violations = Vec::new();
    for run in runs {
        let status = pb::RunStatus::try_from(run.status).map_or("?", |s| s.as_str_name());
        let violation = |message: String| {
            Violation::new(NAME, message)
                .job(&run.job_id)
                .time(rfc3339(unix_ms(&run.nominal_time)))
                .nodes((run.node_id != 0).then_some(run.node_id))
        };
        match by_run.get(&run.id).and_then(|events| events.last()) {
            None => violations.push(violation(format!(
                "run {} ({status}) has no execution audit entry",
                run.id
            ))),
            Some(last) if !last_methods(run.status).contains(&last.method.as_str()) => {
                violations.push(violation(format!(
                    "run {} is {status} but its last execution audit entry (seq {}) is {}",
                    run.id, last.seq, last.method
                )))
            }
            Some(_) => {}
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for delivery in deliveries.iter().filter(|d| d.run_id != u64::MAX) {
        if !seen.insert((delivery.run_id, delivery.attempt)) {
            continue;
        }
        // "attempt N on node X" (a node's own pool) or "attempt N for
        // worker W on node X" (an external worker).
        let attempt = format!("attempt {} on node ", delivery.attempt);
        let external = format!("attempt {} for worker ", delivery.attempt);
        let queued = by_run.get(&delivery.run_id).is_some_and(|events| {
            events.iter().any(|e| {
                e.method == "run.queued"
                    && (e.message.starts_with(&attempt) || e.message.starts_with(&external))
            })
        });
        if !queued {
            violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "attempt {} of run {} was delivered but has no run.queued audit entry",
                        delivery.attempt, delivery.run_id
                    ),
                )
                .job(&delivery.job_id)
                .time(rfc3339(delivery.nominal_unix_ms)),
            );
        }
    }
    for op in ops
        .iter()
        .filter(|o| o.kind == OpKind::Trigger && o.outcome == Outcome::Ok)
    {
        let Some(run_id) = op.run_id else { continue };
        let by_caller = by_run
            .get(&run_id)
            .is_some_and(|events| events.iter().any(|e| e.principal == principal));
        if !by_caller {
            violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "run {run_id} of an acknowledged trigger has no execution audit entry by {principal:?}"
                    ),
                )
                .job(&op.job_id)
                .time(t(op.end_ms))
                .nodes([op.node]),
            );
        }
    }
    violations
}

/// Every replica's chain verifies and the replicas agree.
fn replicas(audit: &AuditEvidence) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (&node, verified) in &audit.verify {
        match verified {
            Err(error) => violations.push(
                Violation::new(NAME, format!("node {node} did not answer VerifyAudit: {error}"))
                    .nodes([node]),
            ),
            Ok(v) if !v.ok => violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "node {node}'s audit chain does not verify at seq {}: {}",
                        v.bad_seq, v.reason
                    ),
                )
                .nodes([node]),
            ),
            Ok(_) => {}
        }
    }
    let mut by_hash: BTreeMap<&(u64, String), Vec<u64>> = BTreeMap::new();
    for (&node, at) in &audit.common {
        match at {
            Ok(at) => by_hash.entry(at).or_default().push(node),
            Err(error) => violations.push(
                Violation::new(
                    NAME,
                    format!("node {node}'s audit entry at the lowest common head: {error}"),
                )
                .nodes([node]),
            ),
        }
    }
    if by_hash.len() > 1 {
        let groups: Vec<String> = by_hash
            .iter()
            .map(|((seq, hash), nodes)| format!("{nodes:?} -> seq {seq} {hash}"))
            .collect();
        violations.push(
            Violation::new(
                NAME,
                format!(
                    "replicas disagree on the audit entry at their lowest common head: {}",
                    groups.join("; ")
                ),
            )
            .nodes(audit.common.keys().copied()),
        );
    }
    for pair in audit.entries.windows(2) {
        let (before, entry) = (&pair[0], &pair[1]);
        if entry.seq != before.seq + 1 || entry.prev_hash != before.hash {
            violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "the audit log node {} lists is not one chain at seq {}: it follows seq {} (prev_hash {}, hash before {})",
                        audit.read_from, entry.seq, before.seq, entry.prev_hash, before.hash
                    ),
                )
                .nodes([audit.read_from]),
            );
            break;
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;
    use crate::settle::FinalState;

    const ROOT: &str = "root";

    fn op(seq: u64, kind: OpKind, job: &str, outcome: Outcome) -> Op {
        Op {
            seq,
            kind,
            job_id: job.into(),
            node: 2,
            start_ms: seq * 100,
            end_ms: seq * 100 + 50,
            outcome,
            version: None,
            run_id: None,
            paused: None,
            trace_id: format!("{:032x}", seq + 1),
            event_id: String::new(),
        }
    }

    /// The log a correct cluster writes for `ops` and `runs`: one OK call
    /// entry per op that happened, and each run's transitions.
    fn log(ops: &[Op], runs: &[(u64, &str, &[&str])]) -> Vec<pb::AuditEntry> {
        let mut entries = Vec::new();
        let mut push = |mut entry: pb::AuditEntry| {
            entry.seq = entries.len() as u64 + 1;
            entry.prev_hash = entries
                .last()
                .map_or_else(|| "0".repeat(64), |e: &pb::AuditEntry| e.hash.clone());
            entry.hash = format!("{:064x}", entry.seq * 7919);
            entries.push(entry);
        };
        for op in ops.iter().filter(|o| !matches!(o.outcome, Outcome::Failed(_))) {
            push(pb::AuditEntry {
                kind: "call".into(),
                principal: ROOT.into(),
                node: op.node,
                method: method(&op.kind).into(),
                job_id: op.job_id.clone(),
                trace_id: op.trace_id.clone(),
                ..Default::default()
            });
        }
        for (run_id, job, methods) in runs {
            for (i, m) in methods.iter().enumerate() {
                push(pb::AuditEntry {
                    kind: "execution".into(),
                    principal: if i == 0 { ROOT.into() } else { "kairos".into() },
                    method: m.to_string(),
                    job_id: job.to_string(),
                    run_id: *run_id,
                    message: if *m == "run.queued" {
                        "attempt 1 on node 3".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                });
            }
        }
        entries
    }

    fn run(id: u64, job: &str, status: pb::RunStatus) -> pb::Run {
        pb::Run {
            id,
            job_id: job.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    fn verified(node: u64) -> (u64, Result<pb::VerifyAuditResponse, String>) {
        (
            node,
            Ok(pb::VerifyAuditResponse {
                node,
                ok: true,
                head_seq: 9,
                ..Default::default()
            }),
        )
    }

    /// A round with a create, an update, a trigger (run 7, succeeded and
    /// delivered), a refused delete and an unknown pause, audited correctly.
    fn round() -> (History, FinalState) {
        let mut trigger = op(2, OpKind::Trigger, "a", Outcome::Ok);
        trigger.run_id = Some(7);
        let ops = vec![
            op(0, OpKind::Create, "a", Outcome::Ok),
            op(1, OpKind::Update, "a", Outcome::Ok),
            trigger,
            op(3, OpKind::Delete, "b", Outcome::Failed("NotFound: b".into())),
            op(4, OpKind::Pause, "a", Outcome::Unknown("DeadlineExceeded".into())),
        ];
        let entries = log(&ops, &[(7, "a", &["run.pending", "run.queued", "run.succeeded"])]);
        let history = History {
            ops,
            deliveries: vec![Delivery {
                key: "a:x".into(),
                job_id: "a".into(),
                run_id: 7,
                attempt: 1,
                nominal_unix_ms: 0,
                t_ms: 0,
                lateness_ms: 0,
            }],
            ..Default::default()
        };
        let head = entries.last().expect("entries");
        let common = (head.seq, head.hash.clone());
        let final_state = FinalState {
            runs: vec![run(7, "a", pb::RunStatus::Succeeded)],
            audit: AuditEvidence {
                principal: ROOT.into(),
                first_seq: 1,
                read_from: 1,
                verify: [verified(1), verified(2), verified(3)].into(),
                common: (1..=3).map(|n| (n, Ok(common.clone()))).collect(),
                entries,
                read_error: None,
            },
            ..Default::default()
        };
        (history, final_state)
    }

    fn judge(history: &History, final_state: &FinalState) -> Vec<String> {
        check(&Evidence {
            history,
            final_state,
            steady: &[],
        })
        .into_iter()
        .map(|v| v.message)
        .collect()
    }

    #[test]
    fn a_correctly_audited_round_passes() {
        let (history, final_state) = round();
        assert_eq!(judge(&history, &final_state), Vec::<String>::new());
    }

    #[test]
    fn a_missing_a_doubled_or_a_misattributed_call_entry_is_named() {
        // The update's entry is missing.
        let (history, mut state) = round();
        state.audit.entries.retain(|e| e.method != "UpdateJob");
        let found = judge(&history, &state);
        assert!(
            found.iter().any(|m| m.starts_with("acknowledged UpdateJob")
                && m.ends_with("has no audit entry with outcome OK")),
            "{found:?}"
        );
        // The create was applied twice.
        let (history, mut state) = round();
        let again = state.audit.entries[0].clone();
        state.audit.entries.push(pb::AuditEntry { seq: 99, ..again });
        let found = judge(&history, &state);
        assert!(
            found
                .iter()
                .any(|m| m.contains("has 2 audit entries with outcome OK (seq 1, 99)")),
            "{found:?}"
        );
        // The refused delete has an OK entry.
        let (history, mut state) = round();
        state.audit.entries.push(pb::AuditEntry {
            kind: "call".into(),
            method: "DeleteJob".into(),
            trace_id: history.ops[3].trace_id.clone(),
            ..Default::default()
        });
        let found = judge(&history, &state);
        assert!(
            found
                .iter()
                .any(|m| m.contains("was refused (NotFound: b) but has an audit entry with outcome OK")),
            "{found:?}"
        );
        // The create is attributed to someone else, on another node.
        let (history, mut state) = round();
        state.audit.entries[0].principal = "anonymous".into();
        state.audit.entries[0].node = 1;
        let found = judge(&history, &state);
        assert!(
            found
                .iter()
                .any(|m| m.contains("names principal \"anonymous\" (want \"root\"), node 1")),
            "{found:?}"
        );
    }

    #[test]
    fn a_run_transition_without_its_execution_entry_is_named() {
        // The run succeeded but its last entry is run.queued.
        let (history, mut state) = round();
        state.audit.entries.retain(|e| e.method != "run.succeeded");
        let found = judge(&history, &state);
        assert!(
            found.iter().any(|m| m.contains(
                "run 7 is RUN_STATUS_SUCCEEDED but its last execution audit entry (seq 6) is run.queued"
            )),
            "{found:?}"
        );
        // The delivered attempt was never queued, and a run has no entry at all.
        let (history, mut state) = round();
        state.audit.entries.retain(|e| e.method != "run.queued");
        state.runs.push(run(8, "a", pb::RunStatus::Failed));
        let found = judge(&history, &state);
        assert!(
            found
                .iter()
                .any(|m| m == "attempt 1 of run 7 was delivered but has no run.queued audit entry"),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m == "run 8 (RUN_STATUS_FAILED) has no execution audit entry"),
            "{found:?}"
        );
        // The triggered run was created by the system, not the caller.
        let (history, mut state) = round();
        for entry in &mut state.audit.entries {
            if entry.kind == "execution" {
                entry.principal = "kairos".into();
            }
        }
        let found = judge(&history, &state);
        assert!(
            found
                .iter()
                .any(|m| m.contains("run 7 of an acknowledged trigger")),
            "{found:?}"
        );
    }

    #[test]
    fn replicas_that_disagree_or_do_not_verify_are_named() {
        let (history, mut state) = round();
        state.audit.verify.insert(
            2,
            Ok(pb::VerifyAuditResponse {
                node: 2,
                ok: false,
                bad_seq: 4,
                reason: "hash does not match".into(),
                ..Default::default()
            }),
        );
        state.audit.verify.insert(3, Err("deadline exceeded".into()));
        state.audit.common.insert(3, Ok((9, "f".repeat(64))));
        state.audit.entries[5].prev_hash = "e".repeat(64);
        let found = judge(&history, &state);
        for want in [
            "node 2's audit chain does not verify at seq 4: hash does not match",
            "node 3 did not answer VerifyAudit: deadline exceeded",
            "replicas disagree on the audit entry at their lowest common head",
            "the audit log node 1 lists is not one chain at seq 6",
        ] {
            assert!(found.iter().any(|m| m.starts_with(want)), "{want}: {found:?}");
        }
    }
}
