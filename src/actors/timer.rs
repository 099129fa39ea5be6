//! The timer: fires due jobs and expires overdue runs, on the leader only.
//!
//! The earliest-next-fire index lives in the replicated state (every node
//! keeps it, derived from the jobs it applied), so a new leader's timer starts
//! at once without rebuilding anything. The timer sleeps until the earliest of
//! the next fire and the next run deadline, then proposes:
//!
//! - one `FireWindow` (see "Firing ahead" below) naming every due job with the next fire it saw (at most
//!   [`MAX_FIRES_PER_BATCH`] per entry); the state machine creates one run per
//!   nominal time, applies the catch-up and overlap policies, and refuses a
//!   fire that already happened — so a timer that fires twice, or two timers
//!   during a leadership change, cannot create a duplicate run;
//! - one `ExpireRuns` for runs past their deadline.
//!
//! It wakes early whenever the applied state changes (a new job may fire
//! sooner), through a watcher of openraft's data metrics.
//!
//! **Firing ahead.** With a look-ahead `A` (`--fire-ahead-ms`, default
//! [`DEFAULT_FIRE_AHEAD`]), the timer wakes when the earliest fire is `A / 2`
//! away and proposes one `FireWindow` for every fire due up to `A` from now:
//! each entry covers about `A / 2` of fires, committed `A / 2` to `A` before
//! they are due. The dispatcher starts those runs ahead too, and the worker
//! begins the handler at the nominal instant, so the fire lateness no longer
//! contains two Raft commits, and the entries per second no longer follow
//! the fire rate. A fire committed ahead is a fire that happened: a pause or
//! schedule change committed before its nominal time cancels its run instead
//! (see `State::cancel_runs_ahead`). `A = 0` fires at the nominal time, with
//! `FireBatch`.
//!
//! The work of one wake-up is [`tick`]: given the time, it reads the state and
//! proposes through a [`TimerHost`] — the Raft node in production, a plain
//! [`State`] in tests — and says when to wake next. Time comes from a
//! [`Clock`], which tests tie to tokio's paused clock, so the timer's whole
//! loop runs deterministically in virtual time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::node::Node;
use crate::scheduler::{Command, State};

/// Most fires proposed in one Raft entry.
pub const MAX_FIRES_PER_BATCH: usize = 5_000;
/// Most runs expired in one Raft entry.
pub const MAX_EXPIRIES_PER_BATCH: usize = 5_000;
/// Principal recorded for the timer's proposals.
const PRINCIPAL: &str = "kairos-timer";
/// Pause before retrying after a failed proposal.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How far ahead of their nominal time fires are committed by default:
/// enough for a `FireWindow` and a `StartAttempts` commit and the message to
/// the worker (a few ms each on a loaded machine) with room to spare, small
/// enough that a pause or an update rarely meets a fire already committed.
pub const DEFAULT_FIRE_AHEAD: Duration = Duration::from_millis(100);

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
    /// Where the time comes from.
    pub clock: Clock,
    /// How far ahead of their nominal time fires are committed (at most
    /// `MAX_FIRE_AHEAD_MS`; zero fires at the nominal time).
    pub fire_ahead: Duration,
    /// The deliberately broken build's setting (see `crate::chaos_break`).
    #[cfg(feature = "chaos-break")]
    pub chaos_break: Option<crate::chaos_break::ChaosBreak>,
}

/// The timer's state.
pub struct TimerState {
    node: Arc<Node>,
    clock: Clock,
    /// See [`TimerArgs::fire_ahead`], in ms.
    ahead_ms: i64,
    /// When (on the monotonic clock) a wake-up is already scheduled.
    armed_until: Option<tokio::time::Instant>,
    /// Sends a tick whenever the applied state changes.
    watcher: JoinHandle<()>,
    /// See [`TimerArgs::chaos_break`].
    #[cfg(feature = "chaos-break")]
    chaos_break: Option<crate::chaos_break::ChaosBreak>,
    /// The broken build's last clock reading (`ChaosBreak::TrustsWallClock`).
    #[cfg(feature = "chaos-break")]
    last_reading: i64,
}

/// The timer's idea of the wall-clock time.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// `origin_ms` at `origin`, advancing with tokio's clock (which a test can pause).
    Tokio {
        /// Unix ms at `origin`.
        origin_ms: i64,
        /// The tokio instant it corresponds to.
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock reading `origin_ms` now and advancing with tokio's time.
    pub fn tokio_at(origin_ms: i64) -> Clock {
        Clock::Tokio {
            origin_ms,
            origin: tokio::time::Instant::now(),
        }
    }

    /// The time now, Unix ms.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_millis(),
            Clock::Tokio { origin_ms, origin } => origin_ms + origin.elapsed().as_millis() as i64,
        }
    }
}

/// What the timer reads and proposes through.
pub trait TimerHost {
    /// Runs `f` on the applied state.
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T;
    /// Proposes `command`, stamped `at_ms`; done when it is applied.
    fn propose(&self, command: Command, at_ms: i64) -> impl Future<Output = Result<()>> + Send;
}

impl TimerHost for Arc<Node> {
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read())
    }

    async fn propose(&self, command: Command, _at_ms: i64) -> Result<()> {
        // The leader stamps its own wall-clock time on the entry.
        self.propose_local(PRINCIPAL, command).await.map(|_| ())
    }
}

/// What one wake-up did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Jobs named in the committed `FireBatch`.
    pub fired: usize,
    /// Runs named in the committed `ExpireRuns`.
    pub expired: usize,
    /// When to wake next (Unix ms): the earliest fire or deadline, or soon
    /// after a failed proposal; `None` when nothing is scheduled.
    pub wake_at: Option<i64>,
}

/// Whether a wake-up at `wake` must be scheduled at `now`, all on the
/// monotonic clock, when one is pending at `armed` (if any): yes unless the
/// pending one comes no later and has not passed. The pending wake-up is
/// kept on the monotonic clock, not the wall clock: after the wall clock
/// stepped back, a wake-up "at" a wall-clock time that has not come again
/// would otherwise look pending forever once it had passed.
fn must_arm(
    armed: Option<tokio::time::Instant>,
    wake: tokio::time::Instant,
    now: tokio::time::Instant,
) -> bool {
    armed.is_none_or(|armed| wake < armed || armed <= now)
}

/// The command that fires `fires` at `now_ms`, `ahead_ms` ahead.
fn fire_command(fires: Vec<(String, i64)>, now_ms: i64, ahead_ms: i64) -> Command {
    if ahead_ms == 0 {
        Command::FireBatch { fires }
    } else {
        Command::FireWindow {
            fires,
            until_ms: now_ms + ahead_ms,
        }
    }
}

/// One wake-up at `now_ms`: proposes the fires due up to `ahead_ms` from now
/// and the expired runs, then says when to wake next.
///
/// The window opens when the earliest fire is half the look-ahead away, and
/// only then: a wake-up for another reason (an applied change, a deadline)
/// fires nothing early, so each window's entry carries half a look-ahead of
/// fires however often the timer wakes.
pub async fn tick(host: &impl TimerHost, now_ms: i64, ahead_ms: i64) -> Tick {
    let (fires, expired) = host.read(|s| {
        let window_open = s.earliest_fire().is_some_and(|t| t <= now_ms + ahead_ms / 2);
        let fires = if window_open {
            s.due_fires(now_ms + ahead_ms, MAX_FIRES_PER_BATCH)
        } else {
            Vec::new()
        };
        (fires, s.expired_runs(now_ms, MAX_EXPIRIES_PER_BATCH))
    });
    let mut done = Tick::default();
    let mut failed = false;
    if !fires.is_empty() {
        let count = fires.len();
        // A fired run's trace starts here (a root: no caller).
        let span = match crate::telemetry::start_trace() {
            true => {
                tracing::info_span!(parent: None, "timer.fire_window", timer.fires = count, timer.until_ms = now_ms + ahead_ms)
            }
            false => tracing::Span::none(),
        };
        let proposed = host
            .propose(fire_command(fires, now_ms, ahead_ms), now_ms)
            .instrument(span)
            .await;
        match proposed {
            Ok(()) => {
                tracing::debug!(jobs = count, "fire batch committed");
                done.fired = count;
            }
            Err(e) => {
                tracing::warn!(jobs = count, error = %e, "fire batch not committed");
                failed = true;
            }
        }
    }
    if !expired.is_empty() {
        let count = expired.len();
        match host
            .propose(Command::ExpireRuns { run_ids: expired }, now_ms)
            .await
        {
            Ok(()) => done.expired = count,
            Err(e) => {
                tracing::warn!(error = %e, "run expiry not committed");
                failed = true;
            }
        }
    }
    done.wake_at = if failed {
        Some(now_ms + RETRY_AFTER.as_millis() as i64)
    } else {
        host.read(|s| {
            [s.earliest_fire().map(|t| t - ahead_ms / 2), s.earliest_deadline()]
                .into_iter()
                .flatten()
                .min()
        })
    };
    done
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
        let max = crate::scheduler::MAX_FIRE_AHEAD_MS as u128;
        Ok(TimerState {
            node: args.node,
            clock: args.clock,
            ahead_ms: args.fire_ahead.as_millis().min(max) as i64,
            armed_until: None,
            watcher,
            #[cfg(feature = "chaos-break")]
            chaos_break: args.chaos_break,
            #[cfg(feature = "chaos-break")]
            last_reading: i64::MIN,
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
        let clock = state.clock;
        #[cfg(not(feature = "chaos-break"))]
        let Tick { wake_at, fired, .. } = tick(&state.node, clock.now_ms(), state.ahead_ms).await;
        #[cfg(feature = "chaos-break")]
        let Tick { wake_at, fired, .. } = match state.chaos_break {
            Some(crate::chaos_break::ChaosBreak::DuplicateFires) => {
                let host = crate::chaos_break::FiresTwice(&state.node);
                tick(&host, clock.now_ms(), state.ahead_ms).await
            }
            Some(crate::chaos_break::ChaosBreak::TrustsWallClock) => {
                let now = clock.now_ms();
                crate::chaos_break::replay_after_step_back(&state.node, state.last_reading, now).await;
                state.last_reading = now;
                tick(&state.node, now, state.ahead_ms).await
            }
            // The other breaks are not the timer's.
            _ => tick(&state.node, clock.now_ms(), state.ahead_ms).await,
        };
        state.node.metrics.count_fires(fired);
        // Re-arm unless an earlier wake-up is already pending.
        if let Some(at) = wake_at {
            // At most a second: a wall clock that steps is followed.
            let delay = crate::wall_clock::next_sleep(at, clock.now_ms());
            let now = tokio::time::Instant::now();
            if must_arm(state.armed_until, now + delay, now) {
                myself.send_after(delay, || TimerMsg::Tick);
                state.armed_until = Some(now + delay);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The timer's loop in virtual time: tokio's clock is paused, so a sleep
    //! until the next fire returns exactly then, and every assertion on a time
    //! is exact.

    use std::sync::Mutex;

    use super::*;
    use crate::error::Error;
    use crate::scheduler::job::{JobSpec, Metadata, Policies, ScheduleSpec};
    use crate::scheduler::run::RunStatus;
    use crate::scheduler::state::Changes;
    use crate::scheduler::Request;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    /// A state machine standing in for Raft; it can refuse the first proposals.
    struct TestHost {
        inner: Mutex<(State, u64)>,
        refuse: Mutex<usize>,
        /// (time, command name) of every proposal applied.
        log: Mutex<Vec<(i64, &'static str)>>,
    }

    impl TestHost {
        fn new() -> TestHost {
            TestHost {
                inner: Mutex::new((State::default(), 0)),
                refuse: Mutex::new(0),
                log: Mutex::new(Vec::new()),
            }
        }

        fn apply(&self, command: Command, at_ms: i64) -> crate::scheduler::CommandResult {
            let mut inner = self.inner.lock().unwrap();
            inner.1 += 1;
            let index = inner.1;
            self.log.lock().unwrap().push((at_ms, command.name()));
            let request = Request {
                at_ms,
                principal: "test".into(),
                command,
                write_id: None,
            };
            inner.0.apply(index, &request, &mut Changes::default())
        }

        fn create(&self, id: &str, schedule: ScheduleSpec, policies: Policies, at_ms: i64) {
            let spec = JobSpec {
                job_type: "noop".into(),
                owner_service: String::new(),
                schedule,
                payload: vec![],
                metadata: Metadata::default(),
                policies: policies.shared(),
                paused: false,
            };
            let command = Command::CreateJob {
                id: id.into(),
                spec,
                request_id: None,
            };
            self.apply(command, at_ms).unwrap();
        }
    }

    impl TimerHost for TestHost {
        fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
            f(&self.inner.lock().unwrap().0)
        }

        async fn propose(&self, command: Command, at_ms: i64) -> Result<()> {
            {
                let mut refuse = self.refuse.lock().unwrap();
                if *refuse > 0 {
                    *refuse -= 1;
                    return Err(Error::Unavailable {
                        message: "not leader".into(),
                        leader: None,
                    });
                }
            }
            self.apply(command, at_ms).map(|_| ())
        }
    }

    /// Runs the timer loop, `ahead_ms` ahead, until `until_ms`; returns every tick with its time.
    async fn run_ahead_until(
        host: &TestHost,
        clock: Clock,
        ahead_ms: i64,
        until_ms: i64,
    ) -> Vec<(i64, Tick)> {
        let mut ticks = Vec::new();
        loop {
            let now = clock.now_ms();
            let done = tick(host, now, ahead_ms).await;
            let wake_at = done.wake_at;
            ticks.push((now, done));
            match wake_at {
                Some(at) if at <= until_ms => {
                    tokio::time::sleep(Duration::from_millis((at - now).max(0) as u64)).await;
                }
                _ => return ticks,
            }
        }
    }

    /// The times of the ticks that fired something.
    fn fired_at(ticks: &[(i64, Tick)]) -> Vec<i64> {
        ticks
            .iter()
            .filter(|(_, t)| t.fired > 0)
            .map(|(at, _)| *at)
            .collect()
    }

    /// [`run_ahead_until`] firing at the nominal times.
    async fn run_until(host: &TestHost, clock: Clock, until_ms: i64) -> Vec<(i64, Tick)> {
        run_ahead_until(host, clock, 0, until_ms).await
    }

    fn every_second() -> ScheduleSpec {
        ScheduleSpec::Cron {
            expr: "* * * * * *".into(),
            timezone: String::new(),
        }
    }

    #[tokio::test]
    async fn a_wall_clock_that_jumps_forward_and_back_fires_every_second_once() {
        use crate::scheduler::job::{Catchup, Overlap};
        let host = TestHost::new();
        let policies = Policies {
            catchup: Catchup::Latest,
            overlap: Overlap::AllowAll,
            ..Policies::default()
        };
        host.create("tick", every_second(), policies, T0 + 300);
        // On time to 3 s; then the leader's clock jumps a minute ahead and
        // back, twice over, before it runs on time again to 70 s.
        let clock_readings = [1, 2, 3, 63, 4, 5, 64, 6, 65, 66, 70].map(|s| T0 + s * 1_000);
        for now in clock_readings {
            tick(&host, now, 100).await;
        }
        let nominal: Vec<i64> = host.read(|s| s.job_runs("tick").map(|r| r.nominal_ms).collect());
        let distinct: std::collections::BTreeSet<i64> = nominal.iter().copied().collect();
        assert_eq!(distinct.len(), nominal.len(), "a second ran twice: {nominal:?}");
        // Ahead fires: the last reading fired up to 70.1 s, so 70 s is the newest.
        assert_eq!(nominal.last(), Some(&(T0 + 70_000)), "{nominal:?}");
        // Every second from 1 s to 70 s ran or was counted missed (catch-up latest).
        let missed = host.read(|s| s.counters("tick").map(|c| c.missed).unwrap_or(0));
        assert_eq!(
            nominal.len() as u64 + missed,
            70,
            "runs {nominal:?}, missed {missed}"
        );
        // The readings behind the clock's high point fired nothing.
        let before_jump: Vec<i64> = nominal.iter().copied().filter(|&t| t <= T0 + 3_000).collect();
        assert_eq!(before_jump, (1..=3).map(|s| T0 + s * 1_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_passed_wake_up_is_replaced_even_after_the_wall_clock_stepped_back() {
        let now = tokio::time::Instant::now();
        let second = Duration::from_secs(1);
        assert!(must_arm(None, now + second, now), "nothing pending: arm");
        assert!(
            !must_arm(Some(now + second), now + 2 * second, now),
            "a sooner one is pending"
        );
        assert!(
            must_arm(Some(now + 2 * second), now + second, now),
            "a sooner wake-up replaces it"
        );
        // The pending wake-up came; the next one is armed whatever wall-clock
        // time it is for (the old wall-clock bookkeeping missed this case
        // after the clock stepped back, and the timer slept until a write).
        assert!(must_arm(Some(now + second), now + 2 * second, now + second));
    }

    #[tokio::test(start_paused = true)]
    async fn fires_every_nominal_second_exactly_on_time() {
        let host = TestHost::new();
        host.create("tick", every_second(), Policies::default(), T0 + 300);
        let clock = Clock::tokio_at(T0 + 300);
        let ticks = run_until(&host, clock, T0 + 10_000).await;
        let expected: Vec<i64> = (1..=10).map(|s| T0 + s * 1000).collect();
        assert_eq!(
            fired_at(&ticks),
            expected,
            "one FireBatch per second, at the second"
        );
        let nominal: Vec<i64> = host.read(|s| s.job_runs("tick").map(|r| r.nominal_ms).collect());
        assert_eq!(nominal, expected, "one run per nominal second");
    }

    #[tokio::test(start_paused = true)]
    async fn fires_ahead_once_per_second_half_the_look_ahead_early() {
        let host = TestHost::new();
        host.create("tick", every_second(), Policies::default(), T0 + 300);
        let clock = Clock::tokio_at(T0 + 300);
        let ticks = run_ahead_until(&host, clock, 100, T0 + 10_000).await;
        let expected: Vec<i64> = (1..=10).map(|s| T0 + s * 1000).collect();
        let early: Vec<i64> = expected.iter().map(|t| t - 50).collect();
        assert_eq!(
            fired_at(&ticks),
            early,
            "one FireWindow per second, 50 ms before it"
        );
        let nominal: Vec<i64> = host.read(|s| s.job_runs("tick").map(|r| r.nominal_ms).collect());
        assert_eq!(nominal, expected, "one run per nominal second");
        let commands: Vec<&str> = host.log.lock().unwrap().iter().skip(1).map(|(_, c)| *c).collect();
        assert_eq!(commands, vec!["fire_window"; 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_between_windows_fires_nothing_early() {
        let host = TestHost::new();
        host.create("a", every_second(), Policies::default(), T0 + 500);
        let b = ScheduleSpec::Every {
            interval_ms: 1_000,
            phase_ms: 80,
        };
        host.create("b", b, Policies::default(), T0 + 500);
        // The window opens at 0.95 s and holds a (1.0 s); b (1.08 s) is beyond it.
        let first = tick(&host, T0 + 950, 100).await;
        assert_eq!((first.fired, first.wake_at), (1, Some(T0 + 1_030)));
        // Woken by the commit at 0.96 s: b is 120 ms away, the window is shut.
        let woken = tick(&host, T0 + 960, 100).await;
        assert_eq!((woken.fired, woken.wake_at), (0, Some(T0 + 1_030)));
        assert_eq!(tick(&host, T0 + 1_030, 100).await.fired, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn many_jobs_share_one_window_entry() {
        // 100 jobs, phases 10 ms apart over one second: each window holds 5-10 of them.
        let host = TestHost::new();
        for n in 0..100 {
            let every = ScheduleSpec::Every {
                interval_ms: 1_000,
                phase_ms: n * 10,
            };
            host.create(&format!("j{n}"), every, Policies::default(), T0);
        }
        let clock = Clock::tokio_at(T0);
        let ticks = run_ahead_until(&host, clock, 100, T0 + 10_000).await;
        let entries = ticks.iter().filter(|(_, t)| t.fired > 0).count();
        let fired: usize = ticks.iter().map(|(_, t)| t.fired).sum();
        assert!(entries <= 220, "{entries} entries for {fired} fires");
        let runs = host.read(|s| s.runs().count());
        assert_eq!(fired, runs);
        assert!(runs >= 990, "every nominal time of 10 s fired: {runs}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_proposal_is_retried_soon_and_fires_once() {
        let host = TestHost::new();
        host.create("tick", every_second(), Policies::default(), T0);
        *host.refuse.lock().unwrap() = 2;
        let clock = Clock::tokio_at(T0 + 500);
        let ticks = run_until(&host, clock, T0 + 2_000).await;
        let times: Vec<i64> = ticks.iter().map(|(at, _)| *at).collect();
        // Refused at 1.0 s and 1.2 s, committed at 1.4 s; then on time at 2.0 s.
        assert_eq!(times, [T0 + 500, T0 + 1_000, T0 + 1_200, T0 + 1_400, T0 + 2_000]);
        let nominal: Vec<i64> = host.read(|s| s.job_runs("tick").map(|r| r.nominal_ms).collect());
        assert_eq!(
            nominal,
            [T0 + 1_000, T0 + 2_000],
            "the late fire keeps its nominal time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_tick_at_the_same_time_proposes_nothing() {
        let host = TestHost::new();
        host.create("tick", every_second(), Policies::default(), T0);
        assert_eq!(tick(&host, T0 + 1_000, 0).await.fired, 1);
        let again = tick(&host, T0 + 1_000, 0).await;
        assert_eq!((again.fired, again.wake_at), (0, Some(T0 + 2_000)));
        assert_eq!(host.read(|s| s.job_runs("tick").count()), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expires_a_silent_attempt_exactly_at_its_heartbeat_deadline() {
        let host = TestHost::new();
        let mut policies = Policies::default();
        policies.timeouts.heartbeat_timeout_ms = 5_000;
        policies.retry.max_attempts = 1;
        host.create("once", ScheduleSpec::At { at_ms: T0 + 1_000 }, policies, T0);
        let clock = Clock::tokio_at(T0);
        run_until(&host, clock, T0 + 1_000).await;
        let run_id = host.read(|s| s.job_runs("once").next().unwrap().id);
        // A worker starts the attempt at 1.5 s and then goes silent.
        tokio::time::sleep(Duration::from_millis(500)).await;
        host.apply(
            Command::StartAttempt {
                run_id,
                node: 1,
                attempt: 1,
            },
            clock.now_ms(),
        )
        .unwrap();
        let ticks = run_until(&host, clock, T0 + 60_000).await;
        let expired_at: Vec<i64> = ticks
            .iter()
            .filter(|(_, t)| t.expired > 0)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(expired_at, [T0 + 6_500], "lease of 5 s from the start at 1.5 s");
        let run = host.read(|s| s.run(run_id).cloned().unwrap());
        assert_eq!(run.status, RunStatus::TimedOut);
        assert!(run.error.contains("lease"), "{}", run.error);
    }
}
