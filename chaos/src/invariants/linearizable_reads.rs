//! Property: **linearizable reads of the job store**. The workload's hot jobs
//! (`workload::HOT_JOBS`) are read with `GetJob` at linearizable
//! consistency and updated, concurrently, through random nodes, across
//! every fault. The history must be linearizable against a register whose
//! value is the job's version.
//!
//! A general linearizability checker (Wing & Gong's search, as Porcupine or
//! `stateright` run it) looks for an order of all operations that respects
//! real time and the register's semantics, which is NP-complete in general.
//! Here the search is not needed: the state machine numbers every change of
//! a job (its `version` goes up by one per applied write), so the order of
//! the writes is known, and every read names the write it saw. With the
//! write order known, a history is linearizable exactly when no operation
//! observes something older than what an operation that *finished before
//! it began* had already observed or written, and no read observes a write
//! that had not begun when the read ended (Gibbons & Korach's condition for
//! registers with a known write order). So for each job:
//!
//! - **stale read**: a read returned version `v` although a read or an
//!   acknowledged write that ended before this read began had seen or
//!   written a version above `v`;
//! - **read from the future**: a read returned version `v`, but no write
//!   that could have made `v` (acknowledged with `v`, or of unknown outcome)
//!   had begun before the read ended.
//!
//! Writes with an unknown outcome may or may not have happened; they are
//! never counted as seen, only as possible. At most five violations are
//! reported per job.

use std::collections::BTreeMap;

use crate::history::{Op, OpKind, Outcome};
use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "linearizable_reads";

/// Violations reported per job, at most.
const PER_JOB: usize = 5;

/// Kinds that make a new version of a job.
fn changes_version(kind: &OpKind) -> bool {
    matches!(
        kind,
        OpKind::Create | OpKind::Update | OpKind::Pause | OpKind::Resume
    )
}

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut by_job: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &evidence.history.ops {
        by_job.entry(op.job_id.as_str()).or_default().push(op);
    }
    by_job
        .into_iter()
        .filter(|(_, ops)| ops.iter().any(|o| o.kind == OpKind::Read))
        .flat_map(|(job, ops)| check_job(job, &ops))
        .collect()
}

/// The violations of one job's operations.
fn check_job(job: &str, ops: &[&Op]) -> Vec<Violation> {
    let reads: Vec<(&Op, u64)> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Read && o.outcome == Outcome::Ok)
        .filter_map(|o| Some((*o, o.version?)))
        .collect();
    // What was observed for certain: answered reads and acknowledged writes.
    let mut observed: Vec<(&Op, u64)> = ops
        .iter()
        .filter(|o| changes_version(&o.kind) && o.outcome == Outcome::Ok)
        .filter_map(|o| Some((*o, o.version?)))
        .chain(reads.iter().copied())
        .collect();
    observed.sort_by_key(|(o, _)| o.end_ms);
    let mut by_start = reads.clone();
    by_start.sort_by_key(|(o, _)| o.start_ms);

    let mut violations = Vec::new();
    // Sweep: for each read in start order, the highest version observed by
    // an operation that ended before it began.
    let mut next = 0;
    let mut highest: Option<(&Op, u64)> = None;
    for &(read, version) in &by_start {
        while next < observed.len() && observed[next].0.end_ms < read.start_ms {
            if highest.is_none_or(|(_, v)| observed[next].1 > v) {
                highest = Some(observed[next]);
            }
            next += 1;
        }
        if let Some((earlier, seen)) = highest.filter(|&(_, v)| v > version) {
            let what = match earlier.kind {
                OpKind::Read => "a read",
                _ => "an acknowledged write",
            };
            violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "stale read: node {} returned version {version} of {job} \
                         (read {}–{} ms), but {what} through node {} had {} version {seen} \
                         by {} ms, before the read began",
                        read.node,
                        read.start_ms,
                        read.end_ms,
                        earlier.node,
                        if earlier.kind == OpKind::Read {
                            "seen"
                        } else {
                            "made"
                        },
                        earlier.end_ms
                    ),
                )
                .job(job)
                .nodes([read.node, earlier.node])
                .time(format!("t={}ms", earlier.end_ms))
                .time(format!("t={}ms", read.start_ms)),
            );
        }
    }
    // Reads from the future.
    for &(read, version) in &reads {
        let could_make = |o: &&&Op| {
            changes_version(&o.kind)
                && o.start_ms <= read.end_ms
                && match &o.outcome {
                    Outcome::Ok => o.version == Some(version),
                    Outcome::Unknown(_) => true,
                    Outcome::Failed(_) => false,
                }
        };
        if !ops.iter().any(|o| could_make(&o)) {
            violations.push(
                Violation::new(
                    NAME,
                    format!(
                        "read from the future: node {} returned version {version} of {job} \
                         (read {}–{} ms), which no write begun by then could have made",
                        read.node, read.start_ms, read.end_ms
                    ),
                )
                .job(job)
                .nodes([read.node])
                .time(format!("t={}ms", read.start_ms)),
            );
        }
    }
    violations.truncate(PER_JOB);
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, node: u64, start_ms: u64, end_ms: u64, outcome: Outcome, version: Option<u64>) -> Op {
        Op {
            seq: 0,
            kind,
            job_id: "hot-1".into(),
            node,
            start_ms,
            end_ms,
            outcome,
            version,
            run_id: None,
            paused: None,
            trace_id: String::new(),
            event_id: String::new(),
        }
    }

    fn read(node: u64, start_ms: u64, end_ms: u64, version: u64) -> Op {
        op(OpKind::Read, node, start_ms, end_ms, Outcome::Ok, Some(version))
    }

    fn write(start_ms: u64, end_ms: u64, version: u64) -> Op {
        op(OpKind::Update, 1, start_ms, end_ms, Outcome::Ok, Some(version))
    }

    fn judge(ops: Vec<Op>) -> Vec<String> {
        let refs: Vec<&Op> = ops.iter().collect();
        check_job("hot-1", &refs).into_iter().map(|v| v.message).collect()
    }

    #[test]
    fn reads_that_overlap_a_write_may_see_either_version() {
        let ops = vec![
            op(OpKind::Create, 1, 0, 5, Outcome::Ok, Some(1)),
            write(10, 20, 2),
            read(2, 12, 14, 1),
            read(3, 15, 25, 2),
            read(2, 21, 22, 2),
        ];
        assert!(judge(ops).is_empty());
    }

    #[test]
    fn a_read_older_than_a_finished_write_is_stale() {
        let ops = vec![
            op(OpKind::Create, 1, 0, 5, Outcome::Ok, Some(1)),
            write(10, 20, 2),
            read(3, 21, 22, 1),
        ];
        let found = judge(ops);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("stale read: node 3 returned version 1"),
            "{found:?}"
        );
        assert!(
            found[0].contains("acknowledged write through node 1 had made version 2"),
            "{found:?}"
        );
    }

    #[test]
    fn a_read_older_than_an_earlier_read_is_stale() {
        let ops = vec![
            op(OpKind::Create, 1, 0, 5, Outcome::Ok, Some(1)),
            // The write's outcome is unknown, but a read saw it.
            op(
                OpKind::Update,
                1,
                10,
                40,
                Outcome::Unknown("timeout".into()),
                None,
            ),
            read(2, 12, 14, 2),
            read(3, 15, 16, 1),
        ];
        let found = judge(ops);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("a read through node 2 had seen version 2"),
            "{found:?}"
        );
    }

    #[test]
    fn a_version_no_write_had_begun_is_from_the_future() {
        let ops = vec![
            op(OpKind::Create, 1, 0, 5, Outcome::Ok, Some(1)),
            read(2, 6, 7, 2),
            write(10, 20, 2),
        ];
        let found = judge(ops);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("read from the future"), "{found:?}");
    }
}
