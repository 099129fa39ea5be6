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
//! - [`timer::Timer`]: proposes one `FireWindow` for every fire due within
//!   the look-ahead (`--fire-ahead-ms`; a `FireBatch` at the nominal time
//!   when it is zero) and an `ExpireRuns` for every run past its lease, time
//!   limit or start deadline.
//! - [`dispatcher::Dispatcher`]: starts attempts of dispatchable runs on the
//!   least-loaded worker pool or external worker, up to the look-ahead
//!   before they may begin.
//! - [`sinks::SinkDelivery`]: delivers the lifecycle stream to every sink,
//!   in order and at least once, recording progress with `AckSink` (a plain
//!   task per sink with a cancellation token, not an actor).
//!
//! Every node also runs a [`worker::WorkerPool`] (not leader-only), reachable
//! from other nodes over the worker network of [`cluster`], a
//! [`reporter::ResultReporter`] that commits its workers' results in batches,
//! and an [`external::ExternalPool`] holding the external workers registered
//! with the node.

pub mod cluster;
pub mod dispatcher;
pub mod external;
pub mod limits;
pub mod reporter;
pub mod sinks;
pub mod timer;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use ractor::{Actor, ActorRef};
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use limits::TypeLimits;

/// Principal recorded for what a node's workers propose: heartbeats (by the
/// workers) and results (by the [`reporter`] on their behalf).
pub const WORKER_PRINCIPAL: &str = "kairos-worker";

/// How the leader-only actors behave (the same on every node).
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    /// Concurrency and rate limits by job type, enforced by the dispatcher.
    pub type_limits: TypeLimits,
    /// How far ahead of their nominal time fires are committed and started
    /// (see [`timer`]); zero commits them at the nominal time.
    pub fire_ahead: Duration,
    /// The deliberately broken build's setting (see `crate::chaos_break`).
    #[cfg(feature = "chaos-break")]
    pub chaos_break: Option<crate::chaos_break::ChaosBreak>,
}

impl Default for LeaderSettings {
    fn default() -> Self {
        LeaderSettings {
            type_limits: TypeLimits::default(),
            fire_ahead: timer::DEFAULT_FIRE_AHEAD,
            #[cfg(feature = "chaos-break")]
            chaos_break: None,
        }
    }
}

/// Starts the leader-only actors whenever this node leads and stops them when
/// it does not, until `shutdown` is cancelled.
pub async fn run_leader_actors(node: Arc<Node>, settings: LeaderSettings, shutdown: CancellationToken) {
    let mut metrics = node.raft.metrics();
    let mut actors: Option<LeaderActors> = None;
    loop {
        let leading = metrics.borrow().state == ServerState::Leader;
        if leading && actors.is_none() {
            match LeaderActors::start(&node, &settings).await {
                Ok(started) => {
                    tracing::info!(
                        node = node.id,
                        "became leader: timer, dispatcher and sink delivery started"
                    );
                    actors = Some(started);
                }
                Err(e) => tracing::error!(node = node.id, "cannot start the leader actors: {e}"),
            }
        } else if !leading {
            if let Some(stopping) = actors.take() {
                tracing::info!(
                    node = node.id,
                    "no longer leader: timer, dispatcher and sink delivery stopped"
                );
                stopping.stop().await;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some(actors) = actors {
        actors.stop().await;
    }
}

/// The actors that run only on the leader.
struct LeaderActors {
    timer: ActorRef<timer::TimerMsg>,
    dispatcher: ActorRef<dispatcher::DispatcherMsg>,
    sinks: sinks::SinkDelivery,
}

impl LeaderActors {
    async fn start(node: &Arc<Node>, settings: &LeaderSettings) -> Result<LeaderActors, ractor::SpawnErr> {
        let (timer, _) = Actor::spawn(
            None,
            timer::Timer,
            timer::TimerArgs {
                node: node.clone(),
                clock: timer::Clock::System,
                fire_ahead: settings.fire_ahead,
                #[cfg(feature = "chaos-break")]
                chaos_break: settings.chaos_break,
            },
        )
        .await?;
        let args = dispatcher::DispatcherArgs {
            node: node.clone(),
            type_limits: settings.type_limits.clone(),
            fire_ahead: settings.fire_ahead,
        };
        match Actor::spawn(None, dispatcher::Dispatcher, args).await {
            Ok((dispatcher, _)) => Ok(LeaderActors {
                timer,
                dispatcher,
                sinks: sinks::SinkDelivery::start(node.clone()),
            }),
            Err(e) => {
                timer.stop(None);
                Err(e)
            }
        }
    }

    /// Stops them, waiting at most a few seconds each (a handler blocked on
    /// a proposal that cannot commit must not hold up a step-down or
    /// shutdown); sink delivery meanwhile, bounded alike.
    async fn stop(self) {
        let grace = std::time::Duration::from_secs(3);
        let actors = async {
            let _ = self.timer.stop_and_wait(None, Some(grace)).await;
            let _ = self.dispatcher.stop_and_wait(None, Some(grace)).await;
        };
        tokio::join!(self.sinks.stop(grace), actors);
    }
}
