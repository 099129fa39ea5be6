//! Which due fires of a job run, and which are counted as missed.
//!
//! When the leader's timer proposes a fire for a job whose `next_fire_ms` has
//! passed, every fire time from `next_fire_ms` up to the proposal's time `at`
//! is due. Normally that is exactly one, a few milliseconds late. After a
//! period without a leader (or a long pause resumed with catch-up) it can be
//! many; the job's catch-up policy decides which of them run:
//!
//! - fires older than `at - catchup_window` never run (missed);
//! - `latest`: only the most recent due fire runs;
//! - `all`: the most recent `max_catchup` due fires run, oldest first;
//! - `none`: only a fire that is not late runs — one whose lateness is within
//!   the start deadline — everything else is missed.
//!
//! Nothing is dropped silently: every due fire is either in [`FirePlan::run`]
//! or counted in [`FirePlan::missed`]. Enumeration is bounded by
//! [`MAX_ENUMERATED_FIRES`]; beyond it the remaining fires are counted by
//! skipping ahead, so a second-by-second job after a week offline costs a
//! bounded amount of work.
//!
//! **Fires ahead.** The leader's timer commits fires a little *before* their
//! nominal time (up to `until`, at most [`MAX_FIRE_AHEAD_MS`] past `at`), so
//! that the run is created and dispatched by the time it is due and the
//! worker starts the handler at the nominal instant. A fire in `(at, until]`
//! is not late: it always runs, whatever the catch-up policy, after the due
//! ones. The catch-up policy only ever looks at fires at or before `at`.

use chrono::{DateTime, Utc};

use super::job::{Catchup, Policies};
use super::schedule::Schedule;

/// Most due fires enumerated one by one per job and batch.
pub const MAX_ENUMERATED_FIRES: usize = 100_000;
/// Furthest a fire may be committed ahead of its nominal time, ms. Schedules
/// fire at most once a second, so a job has at most one fire this far ahead.
pub const MAX_FIRE_AHEAD_MS: i64 = 1_000;

/// The outcome of planning a job's due fires.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirePlan {
    /// Nominal times to create runs for, oldest first.
    pub run: Vec<i64>,
    /// Due fires that will not run.
    pub missed: u64,
    /// The latest due fire (becomes the job's `last_fired_ms`), if any was due.
    /// When enumeration had to skip ahead it is the latest fire looked at.
    pub last_due: Option<i64>,
    /// The job's next fire after `until` (its new `next_fire_ms`).
    pub next_fire: Option<i64>,
}

fn at_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Plans the fires of a job with schedule `schedule`, first due fire
/// `next_fire_ms`, policies `policies`, at leader time `at`, firing ahead up
/// to `until` (`at <= until`; fires in `(at, until]` run on time).
pub fn plan_fires(
    schedule: &Schedule,
    next_fire_ms: i64,
    policies: &Policies,
    at: i64,
    until: i64,
) -> FirePlan {
    let mut plan = plan_due_fires(schedule, next_fire_ms, policies, at);
    // Fires ahead of `at`: on time, so they run under every policy.
    while let Some(t) = plan.next_fire.filter(|t| *t <= until) {
        if plan.run.len() >= MAX_ENUMERATED_FIRES {
            break;
        }
        plan.run.push(t);
        plan.last_due = Some(t);
        plan.next_fire = DateTime::<Utc>::from_timestamp_millis(t)
            .and_then(|t| schedule.next_after(t))
            .map(at_ms);
    }
    plan
}

/// The fires due at or before `at`, under the catch-up policy.
fn plan_due_fires(schedule: &Schedule, next_fire_ms: i64, policies: &Policies, at: i64) -> FirePlan {
    let Some(first) = DateTime::<Utc>::from_timestamp_millis(next_fire_ms) else {
        return FirePlan::default();
    };
    let Some(now) = DateTime::<Utc>::from_timestamp_millis(at) else {
        return FirePlan::default();
    };
    if next_fire_ms > at {
        return FirePlan {
            next_fire: Some(next_fire_ms),
            ..FirePlan::default()
        };
    }
    let window_start = at.saturating_sub(policies.catchup_window_ms as i64);

    // Fires before the window are missed; skip to the window without keeping them.
    let mut missed = 0u64;
    let mut last_missed = None;
    let mut cursor = Some(first);
    while let Some(t) = cursor.filter(|t| at_ms(*t) < window_start) {
        missed += 1;
        last_missed = Some(at_ms(t));
        if missed as usize >= MAX_ENUMERATED_FIRES {
            // Jump: everything before the window is missed; count stops being exact here.
            cursor =
                schedule.next_after(DateTime::<Utc>::from_timestamp_millis(window_start - 1).unwrap_or(t));
            break;
        }
        cursor = schedule.next_after(t);
    }
    let mut in_window = Vec::new();
    while let Some(t) = cursor.filter(|t| *t <= now) {
        in_window.push(at_ms(t));
        if in_window.len() >= MAX_ENUMERATED_FIRES {
            // Keep the newest; count the ones in between as missed.
            let newest = schedule.upcoming(DateTime::<Utc>::from_timestamp_millis(at - 1).unwrap_or(t), 1);
            missed += in_window.len() as u64 - 1;
            in_window = newest.iter().map(|t| at_ms(*t)).filter(|t| *t <= at).collect();
            break;
        }
        cursor = schedule.next_after(t);
    }
    let last_due = in_window.last().copied().or(last_missed);
    let run: Vec<i64> = match policies.catchup {
        Catchup::Latest => in_window.last().copied().into_iter().collect(),
        Catchup::All => {
            let keep = (policies.max_catchup as usize).max(1);
            in_window[in_window.len().saturating_sub(keep)..].to_vec()
        }
        Catchup::None => in_window
            .last()
            .copied()
            .filter(|t| at - t <= policies.timeouts.start_deadline_ms as i64)
            .into_iter()
            .collect(),
    };
    missed += (in_window.len() - run.len()) as u64;
    FirePlan {
        run,
        missed,
        last_due,
        next_fire: schedule.next_after(now).map(at_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::schedule::ScheduleSpec;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const SEC: i64 = 1_000;

    fn every_second() -> Schedule {
        Schedule::compile(&ScheduleSpec::Every {
            interval_ms: 1_000,
            phase_ms: 0,
        })
        .unwrap()
    }

    fn policies(catchup: Catchup) -> Policies {
        Policies {
            catchup,
            catchup_window_ms: 60_000,
            max_catchup: 5,
            ..Policies::default()
        }
    }

    #[test]
    fn on_time_fire_runs_under_every_policy() {
        for catchup in [Catchup::Latest, Catchup::All, Catchup::None] {
            let plan = plan_fires(&every_second(), T0, &policies(catchup), T0 + 3, T0 + 3);
            assert_eq!(plan.run, vec![T0], "{catchup:?}");
            assert_eq!(
                (plan.missed, plan.last_due, plan.next_fire),
                (0, Some(T0), Some(T0 + SEC))
            );
        }
    }

    #[test]
    fn nothing_due_before_the_next_fire() {
        let plan = plan_fires(&every_second(), T0 + SEC, &policies(Catchup::All), T0, T0);
        assert_eq!(
            plan,
            FirePlan {
                next_fire: Some(T0 + SEC),
                ..FirePlan::default()
            }
        );
    }

    #[test]
    fn catch_up_after_a_ten_second_gap() {
        // Fires T0..=T0+10s are due at T0+10.5s.
        let at = T0 + 10 * SEC + 500;
        let latest = plan_fires(&every_second(), T0, &policies(Catchup::Latest), at, at);
        assert_eq!((latest.run.clone(), latest.missed), (vec![T0 + 10 * SEC], 10));
        let all = plan_fires(&every_second(), T0, &policies(Catchup::All), at, at);
        assert_eq!(
            all.run,
            (6..=10).map(|s| T0 + s * SEC).collect::<Vec<_>>(),
            "max_catchup = 5"
        );
        assert_eq!(all.missed, 6);
        let none = plan_fires(&every_second(), T0, &policies(Catchup::None), at, at);
        assert_eq!(
            (none.run.clone(), none.missed),
            (vec![T0 + 10 * SEC], 10),
            "the latest is within the start deadline"
        );
        for plan in [&latest, &all, &none] {
            assert_eq!(plan.last_due, Some(T0 + 10 * SEC));
            assert_eq!(plan.next_fire, Some(T0 + 11 * SEC));
        }
    }

    #[test]
    fn a_fire_ahead_runs_under_every_policy_and_moves_the_next_fire_past_until() {
        for catchup in [Catchup::Latest, Catchup::All, Catchup::None] {
            let mut p = policies(catchup);
            p.timeouts.start_deadline_ms = 0;
            // The timer looks 100 ms ahead at 0.95 s: the fire at 1 s is committed early.
            let plan = plan_fires(&every_second(), T0 + SEC, &p, T0 + 950, T0 + 1_050);
            assert_eq!(plan.run, vec![T0 + SEC], "{catchup:?}");
            assert_eq!(
                (plan.missed, plan.last_due, plan.next_fire),
                (0, Some(T0 + SEC), Some(T0 + 2 * SEC))
            );
        }
    }

    #[test]
    fn nothing_ahead_before_until() {
        let plan = plan_fires(
            &every_second(),
            T0 + SEC,
            &policies(Catchup::All),
            T0 + 500,
            T0 + 900,
        );
        assert_eq!((plan.run, plan.next_fire), (vec![], Some(T0 + SEC)));
    }

    #[test]
    fn late_fires_follow_the_policy_and_the_fire_ahead_runs_after_them() {
        // No leader from 0 s to 10.95 s; the new leader looks 100 ms ahead.
        let (at, until) = (T0 + 10 * SEC + 950, T0 + 11 * SEC + 50);
        let latest = plan_fires(&every_second(), T0, &policies(Catchup::Latest), at, until);
        assert_eq!(latest.run, vec![T0 + 10 * SEC, T0 + 11 * SEC]);
        assert_eq!(latest.missed, 10, "0..=9 s missed, 10 s late, 11 s ahead");
        let all = plan_fires(&every_second(), T0, &policies(Catchup::All), at, until);
        assert_eq!(
            all.run,
            (6..=11).map(|s| T0 + s * SEC).collect::<Vec<_>>(),
            "max_catchup bounds the late fires only"
        );
        assert_eq!(all.run.len() as u64 + all.missed, 12, "every fire run or counted");
        for plan in [&latest, &all] {
            assert_eq!(
                (plan.last_due, plan.next_fire),
                (Some(T0 + 11 * SEC), Some(T0 + 12 * SEC))
            );
        }
    }

    #[test]
    fn none_policy_misses_a_late_fire() {
        let mut p = policies(Catchup::None);
        p.timeouts.start_deadline_ms = 100;
        let plan = plan_fires(&every_second(), T0, &p, T0 + 500, T0 + 500);
        assert_eq!((plan.run, plan.missed), (vec![], 1));
    }

    #[test]
    fn fires_outside_the_window_are_missed_and_counted() {
        // One hour offline, window one minute: 3600 fires before the window are missed.
        let at = T0 + 3_600 * SEC;
        let plan = plan_fires(&every_second(), T0, &policies(Catchup::All), at, at);
        assert_eq!(plan.run.len(), 5);
        assert_eq!(
            plan.run.len() as u64 + plan.missed,
            3_601,
            "every due fire is run or counted"
        );
        assert_eq!(plan.next_fire, Some(at + SEC));
    }

    #[test]
    fn enumeration_is_bounded() {
        // A week of every-second fires inside a week-long window: bounded work, newest runs.
        let mut p = policies(Catchup::Latest);
        p.catchup_window_ms = 8 * 86_400_000;
        let at = T0 + 7 * 86_400 * SEC;
        let plan = plan_fires(&every_second(), T0, &p, at, at);
        assert_eq!(plan.run, vec![at]);
        assert!(plan.missed >= MAX_ENUMERATED_FIRES as u64 - 1);
        assert_eq!(plan.next_fire, Some(at + SEC));
    }
}
