//! A deliberately broken build, for the chaos suite's test of its own
//! checkers: without it, a checker that never fires would look like a
//! passing suite.
//!
//! This module exists only in builds with the cargo feature `chaos-break`,
//! which only the chaos crate enables (for its tests; `cargo build
//! --release --bin kairos` has no such code). Even there a node breaks only
//! when started with the hidden flag `--unsafe-chaos-break duplicate-fires`,
//! and it then logs a loud error. Nothing reads the environment.
//!
//! [`ChaosBreak::DuplicateFires`] breaks both halves of exactly-once firing:
//! the leader's timer proposes every fire twice (as a buggy timer might
//! after a failover; [`FiresTwice`]), and the state machine, instead of
//! refusing the second copy of a fire that already happened, creates
//! another run for it. Every fire then runs twice — the duplicate the
//! checker must catch. The state machine gets the setting when it is built
//! (`StateMachineStore::set_chaos_break`), as a setting of the local
//! `State` that is not replicated; the timer gets it in its arguments.
//!
//! [`ChaosBreak::NoPreVote`] starts elections the way plain openraft does,
//! raising the term before asking for votes, instead of after a pre-vote
//! (`crate::raft::pre_vote`): a follower that returns from a pause deposes
//! the leader — what the `no_needless_elections` checker must catch.
//!
//! [`ChaosBreak::StaleReads`] skips the read barrier (`Node::read_barrier`):
//! a node answers linearizable reads from whatever it has applied, as a
//! store without ReadIndex would — what `linearizable_reads` must catch.
//!
//! [`ChaosBreak::TrustsWallClock`] makes the timer keep its place in each
//! job's schedule by its own wall clock, as a scheduler with an in-memory
//! cron table does, instead of by the replicated next fire: when the
//! leader's clock steps back, it fires again every time between the new
//! reading and each job's last fire ([`replay_after_step_back`]), and the
//! state machine runs them (as for `DuplicateFires`) — the duplicates a
//! clock jump must never cause.
//!
//! [`ChaosBreak::NoFdatasync`] acknowledges the log once sled flushed it to
//! the page cache, without `fdatasync`: a kill loses nothing, a power cut
//! (`torn_write`) loses what was acknowledged since sled's own periodic
//! fsync — what `acknowledged_writes` must catch.
//!
//! [`ChaosBreak::NoLogMark`] ignores the log mark on start
//! (`crate::raft::log_mark`): a node whose disk lost the tail of its log
//! votes by what is left — a candidate lacking acknowledged writes can win,
//! what `acknowledged_writes` must catch after a `lost_tail` fault.
//!
//! [`ChaosBreak::StaysDownOnDamagedSnapshots`] refuses to start on a
//! stored snapshot that fails its checksum, as the offline tools do,
//! instead of dropping it and taking the state from the leader — what
//! `damaged_snapshot_recovered` must catch after a `damaged_snapshot`
//! fault.
//!
//! [`ChaosBreak::SyncsInRaftLoop`] makes every log append wait for its
//! `fdatasync` before it returns to openraft, as a log store without a
//! separate syncer does: while the disk is slow, the leader's Raft loop
//! waits on it and sends no heartbeats, the followers' timers run out and
//! an election follows — what `no_needless_elections` must catch under
//! `slow_disk`. (The real log store returns at once and reports the
//! append durable from its syncer thread; `crate::raft::log_store`.)
//!
//! [`ChaosBreak::NoJointFinisher`] does not start the task that finishes
//! a joint membership a leader inherited (`crate::raft::joint`): a change
//! whose leader died between its two steps stays joint, and an `AddNode`
//! asked again sees its node among the voters and does nothing — what
//! `membership_restored` must catch after a `membership_change` that
//! kills the leader inside the joint step.
//!
//! [`ChaosBreak::NoRequestLimit`] ignores `--max-requests` (the bound is
//! set as high as a semaphore allows): a flood queues instead of being
//! refused — what `overload_answered` must catch.
//!
//! [`ChaosBreak::RunOnAfterStorageErrors`] does not stop the process when
//! its storage fails (`stop_on_storage_failure` in `crate::node`):
//! the node runs on — what `storage_errors_stop` must catch.

use std::sync::Arc;

use crate::actors::timer::TimerHost;
use crate::error::Result;
use crate::node::Node;
use crate::scheduler::{Command, State};

/// How the build is broken (the value of `--unsafe-chaos-break`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChaosBreak {
    /// Every fire runs twice: the timer proposes each fire twice and the
    /// state machine runs a fire that already happened again.
    DuplicateFires,
    /// Elections without a pre-vote: openraft's own election timer, which
    /// raises the term before asking, so a follower that returns from a
    /// pause or a restart unseats a healthy leader.
    NoPreVote,
    /// Reads without the read barrier: every node answers from its own
    /// state, even a lagging or cut-off follower, so reads can be stale.
    StaleReads,
    /// A node whose storage failed (a failed fsync) keeps running instead
    /// of stopping.
    RunOnAfterStorageErrors,
    /// The timer trusts its wall clock: when the leader's clock steps back,
    /// the fires between the new reading and each job's last fire run again.
    TrustsWallClock,
    /// `--max-requests` is ignored: a flood of calls queues without bound
    /// instead of being refused past it.
    NoRequestLimit,
    /// The log is acknowledged once sled wrote it to the page cache, without
    /// `fdatasync`: it survives a process crash, not a power cut.
    NoFdatasync,
    /// The log mark is ignored on start: a node whose disk lost the tail of
    /// its log votes by what is left of it.
    NoLogMark,
    /// A node whose stored snapshot is damaged refuses to start (as offline
    /// tools do) instead of taking the state back from its peers.
    StaysDownOnDamagedSnapshots,
    /// Every append waits for its `fdatasync` inside Raft's loop instead of
    /// handing it to the log's syncer thread: a slow disk stalls the node's
    /// heartbeats.
    SyncsInRaftLoop,
    /// A leader leaves a joint membership it inherited as it found it
    /// instead of finishing it: a change whose leader died between its two
    /// steps stays joint.
    NoJointFinisher,
}

/// The break this process runs, for the storage code that knows no node
/// options (`crate::raft::durability`, `crate::raft::log_store`,
/// `crate::raft::open_storage_for_node`). Set once, by [`Node::start`].
static PROCESS_BREAK: std::sync::OnceLock<ChaosBreak> = std::sync::OnceLock::new();

/// Records that this process runs `kind` (the first call wins: one
/// process runs one break).
pub fn set_process_break(kind: ChaosBreak) {
    let _ = PROCESS_BREAK.set(kind);
}

/// Whether this process runs `kind`.
pub fn process_runs(kind: ChaosBreak) -> bool {
    PROCESS_BREAK.get() == Some(&kind)
}

impl ChaosBreak {
    /// Whether the state machine runs a fire that already happened again
    /// (instead of refusing it).
    pub fn reruns_fires(self) -> bool {
        matches!(self, ChaosBreak::DuplicateFires | ChaosBreak::TrustsWallClock)
    }
}

/// Most fires the broken timer replays in one step back.
const MAX_REPLAYED_FIRES: usize = 5_000;

/// The broken timer's extra step ([`ChaosBreak::TrustsWallClock`]): when
/// its clock reads `now_ms` after it read the later `previous_ms`, every
/// job that fired after `now_ms` fires again from `now_ms` to its last fire.
pub async fn replay_after_step_back(node: &Arc<Node>, previous_ms: i64, now_ms: i64) {
    if now_ms >= previous_ms {
        return;
    }
    let fires: Vec<(String, i64)> = TimerHost::read(node, |state| {
        let mut fires = Vec::new();
        for job in state.jobs() {
            let Some(last) = job.last_fired_ms.filter(|&last| last > now_ms) else {
                continue;
            };
            let mut next = crate::scheduler::state::next_fire(&job.spec, now_ms);
            while let Some(t) = next.filter(|&t| t <= last && fires.len() < MAX_REPLAYED_FIRES) {
                fires.push((job.id.to_string(), t));
                next = crate::scheduler::state::next_fire(&job.spec, t);
            }
        }
        fires
    });
    if fires.is_empty() {
        return;
    }
    tracing::error!(
        fires = fires.len(),
        "chaos break: replaying fires after the clock stepped back"
    );
    let command = Command::FireWindow {
        fires,
        until_ms: previous_ms,
    };
    let _ = TimerHost::propose(node, command, previous_ms).await;
}

/// The timer's host in the broken build: every fire command it proposes is
/// proposed a second time once the first has committed.
pub struct FiresTwice<'a>(pub &'a Arc<Node>);

impl TimerHost for FiresTwice<'_> {
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        TimerHost::read(self.0, f)
    }

    async fn propose(&self, command: Command, at_ms: i64) -> Result<()> {
        let again = matches!(command, Command::FireBatch { .. } | Command::FireWindow { .. })
            .then(|| command.clone());
        TimerHost::propose(self.0, command, at_ms).await?;
        if let Some(again) = again {
            let _ = TimerHost::propose(self.0, again, at_ms).await;
        }
        Ok(())
    }
}
