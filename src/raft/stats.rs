//! What the Raft layer measures about itself, for `/metrics`.
//!
//! The storage adapters and the proposer record into a [`RaftStats`] as
//! things happen: every `fdatasync` of the log ([`super::durability::Disk::sync`]),
//! every entry the leader proposes (from `client_write` until it returns,
//! which is once the entry is committed and applied here), every snapshot
//! built (how long encoding and storing it took, and its size). The
//! node also counts the leader changes it observes
//! ([`count_leader_changes`]).
//!
//! The values are prometheus-client metrics, which share their value
//! between clones: [`crate::metrics::Metrics`] creates one [`RaftStats`],
//! registers its metrics and hands a clone to the node, which passes it
//! down to storage. A [`RaftStats::default`] that nobody registers (tools
//! that open storage offline, tests) records into metrics no one reads.
//!
//! Gauges that openraft already reports (indexes, replication progress)
//! are not kept here: [`crate::metrics::Metrics::render`] reads them from
//! openraft's metrics at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio_util::sync::CancellationToken;

use super::{NodeId, Raft};

/// The Raft layer's own measurements; clones share the values.
#[derive(Clone, Debug)]
pub struct RaftStats {
    /// Seconds from proposing an entry (as leader) until it was committed
    /// and applied on this node.
    pub proposal_commit_seconds: Histogram,
    /// Seconds one durable sync of the log took (sled flush and `fdatasync`).
    pub log_fsync_seconds: Histogram,
    /// Seconds building one snapshot took (encoding and storing it).
    pub snapshot_duration_seconds: Histogram,
    /// Bytes of the last snapshot this node built.
    pub snapshot_size_bytes: Gauge,
    /// Leader changes this node observed.
    pub leader_changes: Counter,
    /// `TimeoutNow` requests this node accepted from a stopping leader.
    pub timeout_now_received: Counter,
    /// Pre-votes this node won, each followed by an election it stood in.
    pub pre_votes_won: Counter,
    /// Pre-votes this node lost (a majority still heard from a leader, or
    /// did not answer): the elections a plain Raft node would have started.
    pub pre_votes_lost: Counter,
}

impl Default for RaftStats {
    fn default() -> Self {
        RaftStats {
            // 0.5 ms .. 16 s
            proposal_commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 0.1 ms .. 3.3 s
            log_fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 10 ms .. 82 s
            snapshot_duration_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            snapshot_size_bytes: Gauge::default(),
            leader_changes: Counter::default(),
            timeout_now_received: Counter::default(),
            pre_votes_won: Counter::default(),
            pre_votes_lost: Counter::default(),
        }
    }
}

/// Counts in `changes` every leader this node comes to know: each new
/// `(term, leader)` it sees with a leader, the first one after start
/// included. A leader lost and re-elected in a later term counts again; a
/// spell without a leader alone does not count. Ends when `stopping` is
/// cancelled or Raft stops.
pub async fn count_leader_changes(raft: Raft, changes: Counter, stopping: CancellationToken) {
    let mut metrics = raft.metrics();
    let mut counted: Option<(u64, NodeId)> = None;
    loop {
        let seen = {
            let m = metrics.borrow_and_update();
            m.current_leader.map(|leader| (m.current_term, leader))
        };
        if seen.is_some() && seen != counted {
            changes.inc();
            counted = seen;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stopping.cancelled() => return,
        }
    }
}
