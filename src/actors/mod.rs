//! Actors (ractor): the parts of Kairos that act on time.
//!
//! Leader-only actors start when this node becomes the Raft leader and stop
//! when it steps down ([`run_leader_actors`]). They never change replicated
//! state themselves: they *propose* commands through the local Raft leader,
//! and a proposal made by a node that just lost leadership simply fails.
//! Because every decision is re-checked by the state machine against the time
//! stamped in the command, a stale or duplicated proposal changes nothing — a
//! fire is refused once the job's next fire moved past it.
//!
//! - [`timer::Timer`]: proposes one `FireBatch` for every job due in a tick and
//!   an `ExpireRuns` for every run past its lease, time limit or start deadline.
//!
//! IMPLEMENTATION CAVEATS: the dispatcher and the per-node worker pools of
//! DESIGN.md are not built yet, so runs are created and recorded but nothing
//! executes them; a run that is never dispatched ends `timed_out` when its
//! start deadline passes.

pub mod timer;

use std::sync::Arc;

use openraft::ServerState;
use ractor::{Actor, ActorRef};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Starts the leader-only actors whenever this node leads and stops them when
/// it does not, until `shutdown` is cancelled.
pub async fn run_leader_actors(node: Arc<Node>, shutdown: CancellationToken) {
    let mut metrics = node.raft.metrics();
    let mut timer: Option<ActorRef<timer::TimerMsg>> = None;
    loop {
        let leading = metrics.borrow().state == ServerState::Leader;
        match (leading, &timer) {
            (true, None) => {
                match Actor::spawn(None, timer::Timer, timer::TimerArgs { node: node.clone() }).await {
                    Ok((actor, _)) => {
                        tracing::info!(node = node.id, "became leader: timer started");
                        timer = Some(actor);
                    }
                    Err(e) => tracing::error!(node = node.id, "cannot start the timer: {e}"),
                }
            }
            (false, Some(actor)) => {
                tracing::info!(node = node.id, "no longer leader: timer stopped");
                let _ = actor.stop_and_wait(None, None).await;
                timer = None;
            }
            _ => {}
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some(actor) = timer {
        let _ = actor.stop_and_wait(None, None).await;
    }
}
