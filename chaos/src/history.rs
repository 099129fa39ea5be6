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
    /// A linearizable read (`GetJob`) of a hot job: `version` is the
    /// version it returned. Not a write; `linearizable_reads` judges it.
    Read,
}

impl OpKind {
    /// Whether the operation asks for a change (every kind but `Read`).
    pub fn is_write(&self) -> bool {
        *self != OpKind::Read
    }
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
    /// SIGSTOP a follower for longer than the election timeout, SIGCONT it,
    /// several times over: it must never unseat the healthy leader.
    FlappingFollower,
    /// A node's `fdatasync`/`fsync` fail with EIO: it must stop, and is
    /// started again once its syncs work.
    FsyncError,
    /// A node's `fdatasync`/`fsync` take 50–400 ms longer.
    SlowDisk,
    /// A node's filesystem fills up: its writes fail with ENOSPC. It must
    /// stop, and is started again once there is room.
    DiskFull,
    /// A node's wall clock is off for a while: a fixed offset of 20 s to
    /// 2 min either way, or a clock running at 0.5x to 2x; then it steps
    /// back to the real time (as NTP would). Its monotonic clock is true.
    ClockSkew,
    /// A node's wall clock jumps forward and back by 10 s to 90 s a few
    /// times, then returns to the real time.
    ClockJump,
    /// A power cut to one node or to all: each is killed and the bytes its
    /// files received since their last sync are torn or cut short, as the
    /// cut would leave them (`src/torn.rs`); then they are started again.
    TornWrite,
    /// A disk that loses its last writes, synced or not: with one follower
    /// cut off, the other's log loses the tail written since (while it
    /// acknowledged writes with the leader), then it and the leader are
    /// killed; it restarts with the cut-off follower, and the leader a few
    /// seconds later (`src/torn.rs`). No leader may be elected without the
    /// acknowledged writes.
    LostTail,
    /// A follower's stored snapshot is damaged while it is down (cut short,
    /// or a byte changed): it must set it aside and take the state from
    /// the leader (`src/damaged_snapshot.rs`).
    DamagedSnapshot,
    /// A follower is removed from the cluster and added back while the
    /// workload runs; with even odds the leader is killed during the add
    /// (`src/membership.rs`).
    MembershipChange,
    /// More client requests than the cluster can serve, for a few seconds
    /// (creates, event publishes, watches; `src/overload.rs`).
    Overload,
    /// Not a fault: a node stopped gracefully and started on another build
    /// (the upgrade scenario, `src/upgrade.rs`). Not in [`FaultKind::ALL`].
    Upgrade,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 21] = [
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
        FaultKind::FlappingFollower,
        FaultKind::FsyncError,
        FaultKind::SlowDisk,
        FaultKind::DiskFull,
        FaultKind::ClockSkew,
        FaultKind::ClockJump,
        FaultKind::TornWrite,
        FaultKind::LostTail,
        FaultKind::DamagedSnapshot,
        FaultKind::MembershipChange,
        FaultKind::Overload,
    ];

    /// Whether the kind needs the disk-fault library (`crate::preload`).
    pub fn needs_disk_library(self) -> bool {
        matches!(
            self,
            FaultKind::FsyncError | FaultKind::SlowDisk | FaultKind::TornWrite | FaultKind::LostTail
        )
    }

    /// Whether the kind needs the clock-fault library (`crate::preload`).
    pub fn needs_clock_library(self) -> bool {
        matches!(self, FaultKind::ClockSkew | FaultKind::ClockJump)
    }

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
            FaultKind::FlappingFollower => "flapping_follower",
            FaultKind::FsyncError => "fsync_error",
            FaultKind::SlowDisk => "slow_disk",
            FaultKind::DiskFull => "disk_full",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::ClockJump => "clock_jump",
            FaultKind::TornWrite => "torn_write",
            FaultKind::LostTail => "lost_tail",
            FaultKind::DamagedSnapshot => "damaged_snapshot",
            FaultKind::MembershipChange => "membership_change",
            FaultKind::Overload => "overload",
            FaultKind::Upgrade => "upgrade",
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
    /// For a fault that touches only followers: the leader before it and
    /// after it healed (judged by `no_needless_elections`).
    #[serde(default)]
    pub leadership: Option<LeadershipWatch>,
    /// What the fault's victim did that it must not (e.g. a node that went
    /// on after a failed fsync), judged by `storage_errors_stop`.
    #[serde(default)]
    pub misbehaviour: Option<String>,
}

/// The leader and its term when a follower-only fault began, and once the
/// fault had healed and the returning nodes had had time to disturb it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadershipWatch {
    /// `(leader, term)` when the fault was injected.
    pub before: (u64, u64),
    /// `(leader, term)` after the watch, or `None` if no leader was seen.
    pub after: Option<(u64, u64)>,
    /// When `after` was read, ms since the run started.
    pub after_ms: u64,
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
