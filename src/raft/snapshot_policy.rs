//! When a node builds a snapshot: by changes applied and by the size of the
//! state, not by log entries.
//!
//! openraft's own policy counts log entries and is off (see
//! [`crate::raft::raft_config`]). A batch entry of the write batcher carries
//! up to a thousand requests and a fire window thousands of fires, so
//! counted by entries the log — and what a restart replays, the state being
//! a snapshot plus the log — would grow that many times further between
//! snapshots. The state machine counts *changes* instead (each request,
//! fire, start, result or expiry of an entry), and [`snapshot_by_changes`]
//! asks openraft for a snapshot when [`snapshot_due`] says the count is
//! high enough.
//!
//! Invariants: a snapshot is never due before `--snapshot-logs` changes, nor
//! before a quarter as many as the state holds jobs and runs; the nodes of
//! one cluster are due at different counts (so they do not all write their
//! snapshot files at the same moment).
//!
//! IMPLEMENTATION CAVEATS: the count is looked at once a second
//! ([`SNAPSHOT_CHECK_EVERY`]), so a snapshot may start up to a second after
//! it became due.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::state_machine::StateHandle;
use super::{NodeId, Raft};

/// How often [`snapshot_by_changes`] looks at the count.
const SNAPSHOT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether node `id`'s snapshot is due after `applied` changes since the
/// last one: at least `threshold` of them, and at least a quarter as many as
/// the state holds jobs and runs (`records`), each bound stretched by 0, 20
/// or 40 % by the node id.
///
/// The stretch keeps the nodes from building at the same moment. They apply
/// the same changes, so with one bound all three wrote their snapshot files
/// together, and a commit, which needs two of the three logs durable, waited
/// for a log fsync queued behind tens of megabytes of snapshot on a shared
/// disk (`kairos-bench create --clients 64`: AppendEntries timing out on
/// both followers at once, p99 ≈ 260 ms).
///
/// A snapshot encodes every record, so with a fixed threshold its cost per
/// applied change grows with the state: at 1,000,000 jobs a snapshot every
/// 10,000 creates would encode 100 jobs per create, more than the machine
/// can encode and write as fast as creates arrive. The second bound keeps
/// that cost at most four records per change however large the state
/// grows (encoding a record costs far less than applying a change), while
/// the log a restart replays stays at most a quarter as long as the state
/// is large (a few seconds of applying at 1,000,000 jobs).
pub fn snapshot_due(applied: u64, threshold: u64, records: usize, id: NodeId) -> bool {
    let bound = threshold.max(records as u64 / 4);
    applied >= bound + bound / 5 * (id % 3)
}

/// Asks for a snapshot when [`snapshot_due`] says so, counting the changes
/// in `applied` (reset by the state machine when a build starts) against
/// `threshold` and the size of `state`.
///
/// It ends when `shutdown` is cancelled or Raft has shut down.
pub async fn snapshot_by_changes(
    raft: Raft,
    applied: Arc<AtomicU64>,
    threshold: u64,
    id: NodeId,
    state: StateHandle,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(SNAPSHOT_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if raft.metrics().borrow().state == ServerState::Shutdown {
            return;
        }
        let records = {
            let state = state.read();
            state.job_count() + state.run_count()
        };
        if !snapshot_due(applied.load(Ordering::Relaxed), threshold, records, id) {
            continue;
        }
        // Asking again while a build is under way (the count is reset only
        // when the build starts) is harmless: openraft ignores a trigger
        // while it builds one.
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_the_threshold_and_for_a_quarter_as_many_requests_as_records() {
        // Node 3 (no stretch). A small state: the threshold decides.
        assert!(!snapshot_due(9_999, 10_000, 500, 3));
        assert!(snapshot_due(10_000, 10_000, 500, 3));
        // A large one: a quarter as many requests as it holds jobs and runs.
        assert!(!snapshot_due(10_000, 10_000, 1_000_000, 3));
        assert!(!snapshot_due(249_999, 10_000, 1_000_000, 3));
        assert!(snapshot_due(250_000, 10_000, 1_000_000, 3));
    }

    #[test]
    fn nodes_of_one_cluster_are_due_at_different_counts() {
        let due_at = |id| (1..).find(|&n| snapshot_due(n, 10_000, 500, id)).unwrap();
        assert_eq!([due_at(1), due_at(2), due_at(3)], [12_000, 14_000, 10_000]);
        let due_at = |id| {
            (249_000..)
                .find(|&n| snapshot_due(n, 10_000, 1_000_000, id))
                .unwrap()
        };
        assert_eq!([due_at(3), due_at(1)], [250_000, 300_000]);
    }
}
