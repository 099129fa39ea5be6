//! Leadership handover: a leader asked to stop (SIGTERM) hands the cluster
//! to an up-to-date follower first, so a planned restart costs no election
//! timeout.
//!
//! Without it, followers of a leader that simply disappears wait out the
//! leader lease and an election timeout (0.75–1 s by default) before one of
//! them stands, and
//! the cluster dispatches nothing meanwhile. A rolling restart would pay
//! that once per node. The handover, run by `kairos agent` on SIGTERM
//! before its servers stop, is the Raft thesis's leadership transfer
//! (§3.10):
//!
//! 1. **Stop appending.** [`Handover::begin`] makes this node's proposer
//!    refuse new entries with `Unavailable` (the router then waits for the
//!    next leader and retries there, as after any leader change) and the
//!    handover waits for the proposals already inside Raft to return.
//! 2. **Pick a target.** A voter whose replicated log matches the leader's
//!    last log index; the handover waits (bounded) for one to catch up.
//! 3. **TimeoutNow.** The peer RPC `RaftService.TimeoutNow` asks the target
//!    to stand for election at once. It checks that the request comes from
//!    the leader of its current term, then starts an election with a
//!    higher term. The stopping leader grants its vote (the target's log is
//!    as long as its own, since it appends nothing more): with the
//!    target's own vote that is a majority of three.
//! 4. **Wait** until this node sees another leader, then let the agent stop
//!    as before.
//!
//! Only once the cluster version is 0.2 or later
//! ([`crate::cluster_version::Feature::LeadershipTransfer`]): a 0.1 member
//! does not serve `TimeoutNow`, so during a rolling upgrade from 0.1 a
//! leader stops as before. Every step is bounded by the caller's deadline; whatever goes wrong (no
//! voter catches up, the target is too old to know `TimeoutNow`, the vote
//! is refused) leaves the cluster exactly where a stop without handover
//! would: the followers elect a leader after their timeout. The handover
//! never risks safety — it is an ordinary Raft election, started early.
//!
//! The other voters would refuse the target's vote while they heard from
//! the leader within the leader lease (openraft 0.9 keeps one on every
//! voter, so that a node cut off for a while cannot unseat a healthy
//! leader). `TimeoutNow` therefore goes to every voter, the target last:
//! each switches the lease check off (a Kairos patch of openraft,
//! `RuntimeConfigHandle::leader_lease`) until it sees a leader of a later
//! term, at most [`crate::node`]'s five seconds. The stopping leader does
//! the same for itself. Votes still need a higher term and a log at least
//! as long, so a stale or early candidate cannot win.
//!
//! IMPLEMENTATION CAVEATS: membership changes (`add-node`, `remove-node`)
//! do not pass through the proposer and are not held back; one that lands
//! during the handover makes the target's log shorter than the leader's,
//! the vote is refused, and the handover is abandoned as above.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The proposer's side of a handover: whether new proposals are refused,
/// and how many are inside Raft.
#[derive(Debug, Default)]
pub struct Handover {
    /// Set by [`Handover::begin`]; never cleared (the node is stopping).
    stepping_down: AtomicBool,
    /// Proposals that passed the check and have not returned.
    in_flight: AtomicUsize,
    /// Signalled when `in_flight` drops to zero.
    drained: Notify,
}

impl Handover {
    /// Refuses every proposal from now on.
    pub fn begin(&self) {
        self.stepping_down.store(true, Ordering::SeqCst);
    }

    /// Whether [`Handover::begin`] was called.
    pub fn stepping_down(&self) -> bool {
        self.stepping_down.load(Ordering::SeqCst)
    }

    /// Admits one proposal, unless the node is stepping down: the guard
    /// counts it as in flight until dropped.
    pub fn admit(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Checked after counting: `drain` reads the count after setting
        // the flag, so either it sees this proposal or this sees the flag.
        if self.stepping_down() {
            self.release();
            return None;
        }
        Some(InFlight(self))
    }

    /// Waits until no admitted proposal is in flight (after [`Handover::begin`]).
    pub async fn drain(&self) {
        loop {
            let notified = self.drained.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// One admitted proposal (see [`Handover::admit`]).
pub struct InFlight<'a>(&'a Handover);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// How a handover ended, for the agent's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverOutcome {
    /// This node was not the leader: nothing to hand over.
    NotLeader,
    /// Node `to` leads now.
    Transferred {
        /// The new leader.
        to: u64,
    },
    /// The handover could not complete; the followers will elect a leader
    /// after their election timeout, as without a handover.
    Abandoned {
        /// Why, for the log.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn proposals_are_refused_once_the_handover_begins() {
        let handover = Handover::default();
        let admitted = handover.admit();
        assert!(admitted.is_some());
        handover.begin();
        assert!(handover.admit().is_none(), "a proposal after begin is refused");
        drop(admitted);
        assert_eq!(handover.in_flight.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn drain_waits_for_the_proposals_in_flight() {
        let handover = Arc::new(Handover::default());
        let first = handover.admit().expect("admitted");
        handover.begin();
        let draining = tokio::spawn({
            let handover = handover.clone();
            async move { handover.drain().await }
        });
        // Still in flight: the drain cannot have finished.
        tokio::task::yield_now().await;
        assert!(!draining.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), draining)
            .await
            .expect("drain ends once the last proposal returns")
            .unwrap();
    }

    #[tokio::test]
    async fn drain_with_nothing_in_flight_returns_at_once() {
        let handover = Handover::default();
        handover.begin();
        tokio::time::timeout(Duration::from_secs(5), handover.drain())
            .await
            .expect("nothing to wait for");
    }
}
