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
