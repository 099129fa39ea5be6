//! Property: **a fault that touched only followers, a node's wall clock,
//! its disk's speed or its load leaves the leader in place**. When a follower that was
//! paused and continued again and again (`flapping_follower`) returns, the
//! leader and its term must be the ones from before the fault. A node that
//! raises its term on return (plain Raft without a pre-vote: its election
//! timer is overdue when it wakes) makes the healthy leader step down, and
//! a flapping node would churn the cluster for as long as it flaps; Kairos
//! asks a pre-vote first (`src/raft/pre_vote.rs` of the kairos crate).
//! The same holds for a follower killed and restarted (`kill_follower`).
//! A skewed or jumping wall clock (`clock_skew`, `clock_jump`), on the
//! leader or a follower, must not cost an election either: Raft's timeouts
//! and the leader's lease run on the monotonic clock. Nor may an overload
//! (the heartbeats must not starve) or a slow disk (`slow_disk`: the log
//! syncs on its own thread, never inside Raft's loop, so a leader whose
//! `fdatasync` stalls still sends heartbeats).
//!
//! The harness reads the leader and term (the highest-term node that
//! reports itself leader) when it injects such a fault and again two
//! seconds after the fault healed — twice as long as a returning node of
//! the default timing waits before it would stand — and records both with
//! the fault. A change between the two is a violation; so is no leader at
//! all after the watch (and after waiting up to 30 s more for one).
//!
//! What this cannot tell apart: an election the machine itself causes in
//! that window (a leader starved of CPU for longer than the lease and an
//! election timeout, 0.75 s or more) looks the same.

use crate::report::Violation;

use super::Evidence;

pub const NAME: &str = "no_needless_elections";

pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut violations = Vec::new();
    for fault in &evidence.history.faults {
        let Some(watch) = fault.leadership else { continue };
        let (leader, term) = watch.before;
        let what = match watch.after {
            Some(after) if after == watch.before => continue,
            Some((new_leader, new_term)) => format!("leader {new_leader} of term {new_term}"),
            None => "no leader".to_string(),
        };
        let mut nodes = fault.nodes.clone();
        nodes.push(leader);
        violations.push(
            Violation::new(
                NAME,
                format!(
                    "{} of node(s) {:?} ({}): leader {leader} of term {term} before it, {what} after it healed",
                    fault.kind.name(),
                    fault.nodes,
                    fault.detail
                ),
            )
            .nodes(nodes)
            .time(format!("t={}ms", fault.start_ms))
            .time(format!("t={}ms", fault.end_ms))
            .time(format!("t={}ms", watch.after_ms)),
        );
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Fault, FaultKind, History, LeadershipWatch};
    use crate::settle::FinalState;

    fn fault(after: Option<(u64, u64)>) -> Fault {
        Fault {
            kind: FaultKind::FlappingFollower,
            nodes: vec![3],
            start_ms: 1_000,
            end_ms: 6_000,
            detail: "SIGSTOP, SIGCONT x3".into(),
            leadership: Some(LeadershipWatch {
                before: (1, 51),
                after,
                after_ms: 8_000,
            }),
            misbehaviour: None,
        }
    }

    fn judge(faults: Vec<Fault>) -> Vec<Violation> {
        let history = History {
            faults,
            ..History::default()
        };
        let final_state = FinalState::default();
        check(&Evidence {
            history: &history,
            final_state: &final_state,
            steady: &[],
        })
    }

    #[test]
    fn an_unchanged_leader_passes_and_a_deposed_one_is_named() {
        assert!(judge(vec![fault(Some((1, 51)))]).is_empty());
        let violations = judge(vec![fault(Some((2, 53)))]);
        assert_eq!(violations.len(), 1);
        let message = &violations[0].message;
        assert!(
            message.contains("leader 1 of term 51 before it, leader 2 of term 53 after"),
            "{message}"
        );
        assert_eq!(judge(vec![fault(None)]).len(), 1);
    }
}
