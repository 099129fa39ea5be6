//! Fires committed ahead of their nominal time (`FireWindow`) and attempts
//! started ahead: what the state machine accepts, when an attempt begins,
//! and what a pause or a schedule change does to a fire already committed.

use super::testing::*;
use super::*;
use crate::scheduler::job::{Catchup, JobPatch, Overlap, ScheduleSpec};
use crate::scheduler::run::RunStatus;
use crate::scheduler::MAX_FIRE_AHEAD_MS;

/// Heartbeat timeout of the jobs here (the default), ms.
const LEASE: i64 = 30_000;

impl Sm {
    /// Proposes a fire window as the timer would at `at_ms`, `ahead_ms` ahead.
    fn tick_ahead(&mut self, at_ms: i64, ahead_ms: i64) -> (Vec<RunId>, u32) {
        let until_ms = at_ms + ahead_ms;
        let fires = self.state.due_fires(until_ms, 1_000);
        match self
            .apply(at_ms, Command::FireWindow { fires, until_ms })
            .unwrap()
        {
            Response::Fired { created, refused } => (created, refused),
            other => panic!("{other:?}"),
        }
    }

    fn set_paused(&mut self, id: &str, paused: bool, at_ms: i64) {
        let command = Command::SetPaused {
            id: id.into(),
            paused,
        };
        self.apply(at_ms, command).unwrap();
    }

    fn reschedule(&mut self, id: &str, schedule: ScheduleSpec, at_ms: i64) {
        let expected_version = self.state.job(id).unwrap().version;
        let patch = JobPatch {
            schedule: Some(schedule),
            ..JobPatch::default()
        };
        let command = Command::UpdateJob {
            id: id.into(),
            expected_version,
            patch,
        };
        self.apply(at_ms, command).unwrap();
    }
}

fn every(interval_ms: u64, phase_ms: u64) -> ScheduleSpec {
    ScheduleSpec::Every {
        interval_ms,
        phase_ms,
    }
}

#[test]
fn a_fire_window_creates_the_run_ahead_and_its_attempt_begins_at_the_nominal_time() {
    let mut sm = Sm::new();
    sm.job("tick", T0, |_| {});
    let (created, refused) = sm.tick_ahead(T0 + 950, 100);
    assert_eq!((created.len(), refused), (1, 0));
    let run = sm.state.run(created[0]).unwrap().clone();
    assert_eq!((run.nominal_ms, run.not_before_ms), (T0 + SEC, T0 + SEC));
    let job = sm.state.job("tick").unwrap();
    assert_eq!(
        (job.last_fired_ms, job.next_fire_ms),
        (Some(T0 + SEC), Some(T0 + 2 * SEC))
    );

    // The timer looking again, ahead or at the nominal time, fires nothing twice.
    assert_eq!(sm.tick_ahead(T0 + 960, 100), (vec![], 0));
    let stale = vec![("tick".to_string(), T0 + SEC)];
    let again = sm.apply(T0 + SEC, Command::FireBatch { fires: stale }).unwrap();
    assert_eq!(
        again,
        Response::Fired {
            created: vec![],
            refused: 1
        }
    );

    // Started 40 ms ahead: it begins, and its lease runs, from the nominal time.
    sm.start(run.id, T0 + 960);
    let queued = sm.state.run(run.id).unwrap();
    assert_eq!(queued.started_at_ms, Some(T0 + SEC));
    assert_eq!(queued.lease_expires_ms, T0 + SEC + LEASE);
    assert_eq!(sm.state.earliest_deadline(), Some(T0 + SEC + LEASE));
}

#[test]
fn every_policy_runs_a_fire_ahead_and_the_catch_up_applies_to_late_fires_only() {
    for catchup in [Catchup::Latest, Catchup::All, Catchup::None] {
        let mut sm = Sm::new();
        sm.job("j", T0 - 1, |p| {
            p.catchup = catchup;
            p.overlap = Overlap::AllowAll;
            p.timeouts.start_deadline_ms = 10;
        });
        // No leader until 3.95 s: fires 0..=3 s are late, 4 s is ahead.
        let (created, _) = sm.tick_ahead(T0 + 3 * SEC + 950, 100);
        let nominal: Vec<i64> = created
            .iter()
            .map(|id| sm.state.run(*id).unwrap().nominal_ms)
            .collect();
        let late: Vec<i64> = match catchup {
            Catchup::Latest => vec![T0 + 3 * SEC],
            Catchup::All => (0..=3).map(|s| T0 + s * SEC).collect(),
            Catchup::None => vec![],
        };
        let expected: Vec<i64> = late.iter().copied().chain([T0 + 4 * SEC]).collect();
        assert_eq!(nominal, expected, "{catchup:?}");
        assert_eq!(sm.counters("j").missed, 4 - late.len() as u64, "{catchup:?}");
    }
}

#[test]
fn a_window_or_a_start_too_far_ahead_is_refused_and_changes_nothing() {
    let mut sm = Sm::new();
    sm.job("tick", T0, |_| {});
    let fires = sm.state.due_fires(T0 + 2 * SEC, 10);
    let too_far = Command::FireWindow {
        fires,
        until_ms: T0 + MAX_FIRE_AHEAD_MS + 1,
    };
    let before = sm.state.clone();
    let err = sm.apply(T0, too_far).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(sm.state, before);

    let (created, _) = sm.tick_ahead(T0 + 950, 100);
    let early = Command::StartAttempt {
        run_id: created[0],
        node: 1,
        attempt: 1,
    };
    let err = sm.apply(T0 + SEC - MAX_FIRE_AHEAD_MS - 1, early).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    assert_eq!(sm.status(created[0]), RunStatus::Pending);
}

#[test]
fn a_pause_cancels_fires_committed_ahead_and_a_resume_does_not_fire_them_again() {
    let mut sm = Sm::new();
    sm.job("tick", T0, |_| {});
    sm.job("other", T0, |_| {});
    let (created, _) = sm.tick_ahead(T0 + 950, 100);
    let (tick, other) = (created[1], created[0]);
    assert_eq!(sm.state.run(tick).unwrap().job_id, "tick");
    sm.start(tick, T0 + 960); // queued, begins at 1 s
    sm.set_paused("tick", true, T0 + 980);
    let run = sm.state.run(tick).unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.error.contains("paused before"), "{}", run.error);
    assert_eq!(
        sm.status(other),
        RunStatus::Pending,
        "other jobs keep their fires"
    );

    // Resumed before the nominal time: the cancelled fire is not fired again.
    sm.set_paused("tick", false, T0 + 990);
    assert_eq!(sm.state.job("tick").unwrap().next_fire_ms, Some(T0 + 2 * SEC));
    assert!(sm.tick_ahead(T0 + 995, 100).0.is_empty());
    assert_eq!(sm.state.job_runs("tick").count(), 1);
    assert_eq!(rebuilt_from_parts(&sm.state), sm.state);
}

#[test]
fn a_pause_after_an_attempt_began_does_not_cancel_it() {
    let mut sm = Sm::new();
    sm.job("tick", T0, |_| {});
    let (created, _) = sm.tick_ahead(T0 + 950, 100);
    sm.start(created[0], T0 + 960);
    sm.set_paused("tick", true, T0 + SEC + 5);
    assert_eq!(sm.status(created[0]), RunStatus::Queued);
}

#[test]
fn a_schedule_change_cancels_fires_ahead_the_new_schedule_lacks_and_keeps_shared_ones() {
    // Same times, another spelling: the fire committed ahead is kept, not repeated.
    let mut sm = Sm::new();
    sm.job("same", T0, |_| {});
    let (created, _) = sm.tick_ahead(T0 + 950, 100);
    let every_second = ScheduleSpec::Cron {
        expr: "* * * * * *".into(),
        timezone: String::new(),
    };
    sm.reschedule("same", every_second, T0 + 960);
    assert_eq!(sm.status(created[0]), RunStatus::Pending);
    assert_eq!(sm.state.job("same").unwrap().next_fire_ms, Some(T0 + 2 * SEC));

    // A new phase: the old fire at 1 s is cancelled and the new one at 0.99 s fires.
    let mut sm = Sm::new();
    sm.job("moved", T0, |_| {});
    let (created, _) = sm.tick_ahead(T0 + 950, 100);
    sm.reschedule("moved", every(1_000, 990), T0 + 955);
    let old = sm.state.run(created[0]).unwrap();
    assert_eq!(old.status, RunStatus::Cancelled);
    assert!(old.error.contains("new schedule"), "{}", old.error);
    assert_eq!(sm.state.job("moved").unwrap().next_fire_ms, Some(T0 + 990));
    let (fired, _) = sm.tick_ahead(T0 + 960, 100);
    let nominal: Vec<i64> = fired
        .iter()
        .map(|id| sm.state.run(*id).unwrap().nominal_ms)
        .collect();
    assert_eq!(nominal, vec![T0 + 990]);
    assert_eq!(sm.state.job("moved").unwrap().next_fire_ms, Some(T0 + 1_990));
    assert_eq!(rebuilt_from_parts(&sm.state), sm.state);
}

#[test]
fn no_nominal_time_gets_two_runs_under_windows_pauses_and_reschedules() {
    // A fixed pseudo-random walk (LCG), dense in pauses, resumes and
    // schedule changes landing inside the look-ahead of a committed fire.
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        sm.job(id, T0 - 500, |p| p.overlap = Overlap::AllowAll);
    }
    let schedules = [
        every(1_000, 0),
        every(2_000, 0),
        every(1_000, 950),
        every(3_000, 0),
    ];
    let mut next = walk(7);
    let mut now = T0;
    for step in 0..3_000 {
        now += 5 + next(40) as i64;
        let id = ["a", "b"][next(2) as usize];
        match next(10) {
            0..=3 => {
                sm.tick_ahead(now, 100);
            }
            4 | 5 => {
                let ready: Vec<RunId> = sm
                    .state
                    .dispatchable_runs(now + 100, 10)
                    .iter()
                    .map(|r| r.id)
                    .collect();
                for run_id in ready {
                    sm.start(run_id, now);
                }
            }
            6 | 7 => {
                let paused = sm.state.job(id).unwrap().spec.paused;
                sm.set_paused(id, !paused, now);
            }
            _ => sm.reschedule(id, schedules[next(4) as usize].clone(), now),
        }
        let mut seen = BTreeSet::new();
        for run in sm.state.runs() {
            assert!(
                seen.insert((run.job_id.clone(), run.nominal_ms)),
                "step {step}: a second run of {} for {}",
                run.job_id,
                run.nominal_ms
            );
        }
        if step % 100 == 0 {
            assert_eq!(rebuilt_from_parts(&sm.state), sm.state, "step {step}");
        }
    }
    let cancelled = sm.counters("a").cancelled + sm.counters("b").cancelled;
    assert!(cancelled >= 10, "the walk cancelled fires ahead: {cancelled}");
}
