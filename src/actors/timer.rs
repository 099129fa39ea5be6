//! The timer: fires due jobs and expires overdue runs, on the leader only.
//!
//! The earliest-next-fire index lives in the replicated state (every node
//! keeps it, derived from the jobs it applied), so a new leader's timer starts
//! at once without rebuilding anything. The timer sleeps until the earliest of
//! the next fire and the next run deadline, then proposes:
//!
//! - one `FireBatch` naming every due job with the next fire it saw (at most
//!   [`MAX_FIRES_PER_BATCH`] per entry); the state machine creates one run per
//!   nominal time, applies the catch-up and overlap policies, and refuses a
//!   fire that already happened — so a timer that fires twice, or two timers
//!   during a leadership change, cannot create a duplicate run;
//! - one `ExpireRuns` for runs past their deadline.
//!
//! It wakes early whenever the applied state changes (a new job may fire
//! sooner), through a watcher of openraft's data metrics.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::node::Node;
use crate::scheduler::Command;

/// Most fires proposed in one Raft entry.
pub const MAX_FIRES_PER_BATCH: usize = 5_000;
/// Most runs expired in one Raft entry.
pub const MAX_EXPIRIES_PER_BATCH: usize = 5_000;
/// Principal recorded for the timer's proposals.
const PRINCIPAL: &str = "kairos-timer";
/// Pause before retrying after a failed proposal.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The timer actor.
pub struct Timer;

/// Messages of the timer (local only).
#[derive(Debug, ractor_cluster::RactorMessage)]
pub enum TimerMsg {
    /// Look at the state: fire what is due, expire what is overdue, re-arm.
    Tick,
}

/// What the timer needs.
pub struct TimerArgs {
    /// The local node (must be the leader for proposals to succeed).
    pub node: Arc<Node>,
}

/// The timer's state.
pub struct TimerState {
    node: Arc<Node>,
    /// The instant (Unix ms) a wake-up is already scheduled for.
    armed_for: Option<i64>,
    /// Sends a tick whenever the applied state changes.
    watcher: JoinHandle<()>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Actor for Timer {
    type Msg = TimerMsg;
    type State = TimerState;
    type Arguments = TimerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TimerMsg>,
        args: TimerArgs,
    ) -> Result<TimerState, ActorProcessingErr> {
        let mut applied = args.node.raft.data_metrics();
        let watcher = tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                if myself.send_message(TimerMsg::Tick).is_err() {
                    break;
                }
            }
        });
        Ok(TimerState {
            node: args.node,
            armed_for: None,
            watcher,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TimerMsg>,
        _: &mut TimerState,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_message(TimerMsg::Tick)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<TimerMsg>,
        state: &mut TimerState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TimerMsg>,
        msg: TimerMsg,
        state: &mut TimerState,
    ) -> Result<(), ActorProcessingErr> {
        let TimerMsg::Tick = msg;
        let now = now_ms();
        let (fires, expired) = {
            let s = state.node.state.read();
            (
                s.due_fires(now, MAX_FIRES_PER_BATCH),
                s.expired_runs(now, MAX_EXPIRIES_PER_BATCH),
            )
        };
        let mut failed = false;
        if !fires.is_empty() {
            let count = fires.len();
            match state
                .node
                .propose_local(PRINCIPAL, Command::FireBatch { fires })
                .await
            {
                Ok(_) => tracing::debug!(jobs = count, "fire batch committed"),
                Err(e) => {
                    tracing::warn!(jobs = count, error = %e, "fire batch not committed");
                    failed = true;
                }
            }
        }
        if !expired.is_empty() {
            if let Err(e) = state
                .node
                .propose_local(PRINCIPAL, Command::ExpireRuns { run_ids: expired })
                .await
            {
                tracing::warn!(error = %e, "run expiry not committed");
                failed = true;
            }
        }
        // Re-arm for the earliest next fire or deadline (or soon, after a failure).
        let next = {
            let s = state.node.state.read();
            [s.earliest_fire(), s.earliest_deadline()]
                .into_iter()
                .flatten()
                .min()
        };
        let wake_at = if failed {
            Some(now_ms() + RETRY_AFTER.as_millis() as i64)
        } else {
            next
        };
        if let Some(at) = wake_at {
            if state
                .armed_for
                .is_none_or(|armed| at < armed || armed <= now_ms())
            {
                let delay = Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64);
                myself.send_after(delay, || TimerMsg::Tick);
                state.armed_for = Some(at);
            }
        }
        Ok(())
    }
}
