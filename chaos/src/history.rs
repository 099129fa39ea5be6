//! What a chaos run records: every client operation with its outcome, every
//! webhook delivery, every fault, and samples of each node's role — the
//! history the invariant checkers judge and the report draws.
//!
//! Times are milliseconds since the run started (`t_ms`), except nominal fire
//! times, which are Unix ms as the scheduler uses them.

use serde::{Deserialize, Serialize};

/// The outcome of one client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The cluster acknowledged it.
    Ok,
    /// The cluster refused it definitely (it did not happen).
    Failed(String),
    /// No definite answer (timeout, connection lost, leader change): it may or
    /// may not have happened. Never counted as lost or as failed.
    Unknown(String),
}

/// What a client operation was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Create,
    Update,
    Delete,
    Pause,
    Resume,
    Trigger,
    /// An event published to the event-triggered job's topic.
    Publish,
}

/// One client operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// Sequence number in the history.
    pub seq: u64,
    pub kind: OpKind,
    pub job_id: String,
    /// The node the request was sent to.
    pub node: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
    /// The job version the reply carried (create/update/pause/resume), if ok.
    pub version: Option<u64>,
    /// The run id a trigger's reply carried, if ok.
    pub run_id: Option<u64>,
    /// For pause/resume: the paused state asked for.
    pub paused: Option<bool>,
    /// The trace id the request carried (`traceparent`), unique in the
    /// round: the node records it in the write's audit entry.
    #[serde(default)]
    pub trace_id: String,
    /// For a publish: the event id the reply carried, if ok.
    #[serde(default)]
    pub event_id: String,
}

/// One request the recording webhook server received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// `Idempotency-Key`: `job_id:nominal RFC 3339`.
    pub key: String,
    pub job_id: String,
    /// `X-Kairos-Run`.
    pub run_id: u64,
    /// `X-Kairos-Attempt`.
    pub attempt: u32,
    /// `X-Kairos-Nominal-Time` as Unix ms.
    pub nominal_unix_ms: i64,
    /// When it arrived, ms since the run started.
    pub t_ms: u64,
    /// Arrival minus nominal time, ms (the fire lateness seen by the receiver).
    pub lateness_ms: i64,
}

/// The kinds of fault the harness injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 the leader, restart it later.
    KillLeader,
    /// kill -9 a follower, restart it later.
    KillFollower,
    /// kill -9 a majority one after the other, restart them one after the other.
    KillMajority,
    /// SIGSTOP the leader long enough to lose leadership, then SIGCONT.
    PauseLeader,
    /// Cut every link of the leader.
    IsolateLeader,
    /// Split the cluster into a minority and a majority.
    PartitionMinority,
    /// One node sees both sides; the sides do not see each other.
    Bridge,
    /// Delay every byte on every link.
    SlowLinks,
    /// Break connections on every link at random.
    LossyLinks,
    /// kill -9 every node, then start them all again.
    FullRestart,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::KillMajority,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::PartitionMinority,
        FaultKind::Bridge,
        FaultKind::SlowLinks,
        FaultKind::LossyLinks,
        FaultKind::FullRestart,
    ];

    /// The snake_case name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillFollower => "kill_follower",
            FaultKind::KillMajority => "kill_majority",
            FaultKind::PauseLeader => "pause_leader",
            FaultKind::IsolateLeader => "isolate_leader",
            FaultKind::PartitionMinority => "partition_minority",
            FaultKind::Bridge => "bridge",
            FaultKind::SlowLinks => "slow_links",
            FaultKind::LossyLinks => "lossy_links",
            FaultKind::FullRestart => "full_restart",
        }
    }
}

/// One injected fault, from injection to heal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// The nodes it hit (killed, paused, isolated, or the minority side).
    pub nodes: Vec<u64>,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Free-form detail, e.g. "delay 120 ms" or "{1} | {2,3}".
    pub detail: String,
}

/// A node's role as seen by polling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// The node did not answer (down, paused or cut off from the harness).
    Down,
}

/// One poll of one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoleSample {
    pub t_ms: u64,
    pub node: u64,
    pub role: Role,
    /// The node's term (0 when down).
    pub term: u64,
}

/// Everything recorded during one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
    pub deliveries: Vec<Delivery>,
    pub faults: Vec<Fault>,
    pub roles: Vec<RoleSample>,
}
