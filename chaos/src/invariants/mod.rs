//! The invariant checkers, one file each, every file opening with the
//! property it checks. Each takes the [`Evidence`] of a run and returns the
//! violations it found, each naming the job, times and nodes involved.

pub mod acknowledged_writes;
pub mod audit_complete;
pub mod damaged_snapshot_recovered;
pub mod durable_terms;
pub mod fires_accounted;
pub mod idempotency;
pub mod linearizable_reads;
pub mod membership_restored;
pub mod no_needless_elections;
pub mod overload_answered;
pub mod replica_digest;
pub mod settled_runs;
pub mod storage_errors_stop;
pub mod triggered_runs;
pub mod unique_runs;

use crate::history::{FaultKind, History};
use crate::report::Violation;
use crate::settle::FinalState;
use crate::workload::SteadyJob;

/// What the checkers judge.
pub struct Evidence<'a> {
    pub history: &'a History,
    pub final_state: &'a FinalState,
    pub steady: &'a [SteadyJob],
}

/// A checker: its name and its function.
pub type Checker = (&'static str, fn(&Evidence) -> Vec<Violation>);

/// Every checker.
pub const ALL: [Checker; 15] = [
    (acknowledged_writes::NAME, acknowledged_writes::check),
    (unique_runs::NAME, unique_runs::check),
    (idempotency::NAME, idempotency::check),
    (fires_accounted::NAME, fires_accounted::check),
    (settled_runs::NAME, settled_runs::check),
    (replica_digest::NAME, replica_digest::check),
    (durable_terms::NAME, durable_terms::check),
    (audit_complete::NAME, audit_complete::check),
    (triggered_runs::NAME, triggered_runs::check),
    (no_needless_elections::NAME, no_needless_elections::check),
    (linearizable_reads::NAME, linearizable_reads::check),
    (storage_errors_stop::NAME, storage_errors_stop::check),
    (overload_answered::NAME, overload_answered::check),
    (membership_restored::NAME, membership_restored::check),
    (
        damaged_snapshot_recovered::NAME,
        damaged_snapshot_recovered::check,
    ),
];

/// Runs every checker.
pub fn check_all(evidence: &Evidence) -> Vec<Violation> {
    ALL.iter().flat_map(|(_, check)| check(evidence)).collect()
}

/// The checkers that judge the history alone, never the final state: they
/// still run when the cluster could not be settled and read (a broken
/// build that left a majority down, say), so that what the faults saw is
/// reported and not hidden behind the failed settle.
pub const FROM_HISTORY_ALONE: [&str; 7] = [
    durable_terms::NAME,
    no_needless_elections::NAME,
    linearizable_reads::NAME,
    storage_errors_stop::NAME,
    overload_answered::NAME,
    membership_restored::NAME,
    damaged_snapshot_recovered::NAME,
];

/// Runs the [`FROM_HISTORY_ALONE`] checkers, for a round whose final state
/// could not be read.
pub fn check_history_alone(history: &History, steady: &[SteadyJob]) -> Vec<Violation> {
    let final_state = FinalState::default();
    let evidence = Evidence {
        history,
        final_state: &final_state,
        steady,
    };
    ALL.iter()
        .filter(|(name, _)| FROM_HISTORY_ALONE.contains(name))
        .flat_map(|(_, check)| check(&evidence))
        .collect()
}

/// A Unix ms time as RFC 3339 (ms precision).
pub fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(unix_ms).map_or_else(
        || unix_ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A protobuf timestamp as Unix ms (0 when unset).
pub fn unix_ms(t: &Option<kairos::proto::Timestamp>) -> i64 {
    t.as_ref().map_or(0, kairos::api::convert::timestamp_ms)
}

/// What the harness recorded a fault of one of `kinds` doing wrong (its
/// victims' misbehaviour), as violations of checker `name`.
fn misbehaviour_of(evidence: &Evidence, name: &'static str, kinds: &[FaultKind]) -> Vec<Violation> {
    evidence
        .history
        .faults
        .iter()
        .filter(|fault| kinds.contains(&fault.kind))
        .filter_map(|fault| {
            let what = fault.misbehaviour.as_ref()?;
            Some(
                Violation::new(
                    name,
                    format!("{} of node(s) {:?}: {what}", fault.kind.name(), fault.nodes),
                )
                .nodes(fault.nodes.clone())
                .time(format!("t={}ms", fault.start_ms))
                .time(format!("t={}ms", fault.end_ms)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Fault;

    #[test]
    fn a_round_that_could_not_be_settled_still_reports_what_its_faults_saw() {
        let stayed_down = Fault {
            kind: FaultKind::DamagedSnapshot,
            nodes: vec![3],
            start_ms: 1_000,
            end_ms: 7_000,
            detail: "node 3: snapshot cut".into(),
            leadership: None,
            misbehaviour: Some("exited after its snapshot was damaged".into()),
        };
        let history = History {
            faults: vec![stayed_down],
            ..History::default()
        };
        let violations = check_history_alone(&history, &[]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, damaged_snapshot_recovered::NAME);
        // An empty history breaks none of them: no checker reads the
        // (empty) final state as evidence.
        assert!(check_history_alone(&History::default(), &[]).is_empty());
    }
}
