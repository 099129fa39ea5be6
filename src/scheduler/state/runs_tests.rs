//! Tests of the run commands: fires and catch-up, overlap, pauses,
//! triggers and backfills, history retention, and the derived indexes.

use std::collections::BTreeSet;

use super::testing::*;
use super::*;
use crate::scheduler::job::{Catchup, Overlap};
use crate::scheduler::run::{AttemptOutcome, RunStatus};

#[test]
fn each_nominal_time_fires_once_and_a_duplicate_batch_is_refused() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |_| {});
    assert_eq!(sm.state.earliest_fire(), Some(T0));
    let fires = sm.state.due_fires(T0 + 2, 10);
    assert_eq!(fires, vec![("a".to_string(), T0)]);
    let first = sm
        .apply(T0 + 2, Command::FireBatch { fires: fires.clone() })
        .unwrap();
    assert!(matches!(first, Response::Fired { ref created, refused: 0 } if created.len() == 1));
    // The same batch again (a retried proposal, a second leader): nothing new.
    let again = sm.apply(T0 + 3, Command::FireBatch { fires }).unwrap();
    assert_eq!(
        again,
        Response::Fired {
            created: vec![],
            refused: 1
        }
    );
    let job = sm.state.job("a").unwrap();
    assert_eq!((job.last_fired_ms, job.next_fire_ms), (Some(T0), Some(T0 + SEC)));
    assert_eq!(sm.state.job_runs("a").count(), 1);
    assert_eq!(sm.state.job_runs("a").next().unwrap().nominal_ms, T0);
}

#[test]
fn catch_up_after_a_leaderless_gap_follows_the_policy() {
    for (catchup, want_runs) in [(Catchup::All, 6), (Catchup::Latest, 1), (Catchup::None, 1)] {
        let mut sm = Sm::new();
        sm.job("a", T0 - 500, |p| {
            p.catchup = catchup;
            p.overlap = Overlap::AllowAll;
        });
        // No leader for 5.5 s: fires T0..=T0+5s are due at once.
        let (created, _) = sm.tick(T0 + 5 * SEC + 500);
        assert_eq!(created.len(), want_runs, "{catchup:?}");
        assert_eq!(
            sm.counters("a").missed,
            6 - want_runs as u64,
            "{catchup:?}: the rest is counted"
        );
        assert_eq!(sm.state.job("a").unwrap().next_fire_ms, Some(T0 + 6 * SEC));
    }
}

#[test]
fn overlap_skip_drops_fires_while_a_run_is_open() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |_| {});
    let (first, _) = sm.tick(T0);
    let token = sm.start(first[0], T0 + 1);
    let (second, _) = sm.tick(T0 + SEC);
    assert_eq!(sm.status(second[0]), RunStatus::Skipped);
    assert_eq!(sm.counters("a").skipped, 1);
    sm.finish(first[0], token, T0 + SEC + 5, AttemptOutcome::Succeeded)
        .unwrap();
    let (third, _) = sm.tick(T0 + 2 * SEC);
    assert_eq!(sm.status(third[0]), RunStatus::Pending);
}

#[test]
fn overlap_buffer_one_keeps_one_waiting_run() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.overlap = Overlap::BufferOne);
    let (r1, _) = sm.tick(T0);
    let token = sm.start(r1[0], T0 + 1);
    let (r2, _) = sm.tick(T0 + SEC);
    let (r3, _) = sm.tick(T0 + 2 * SEC);
    assert_eq!(
        (sm.status(r2[0]), sm.status(r3[0])),
        (RunStatus::Pending, RunStatus::Skipped)
    );
    assert!(
        sm.state.dispatchable_runs(T0 + 3 * SEC, 10).is_empty(),
        "waits for the running one"
    );
    sm.finish(r1[0], token, T0 + 3 * SEC, AttemptOutcome::Succeeded)
        .unwrap();
    let ready: Vec<RunId> = sm
        .state
        .dispatchable_runs(T0 + 3 * SEC, 10)
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ready, vec![r2[0]]);
}

#[test]
fn overlap_buffer_all_runs_every_fire_in_order_and_allow_all_runs_them_together() {
    let mut sm = Sm::new();
    sm.job("buffer", T0 - 500, |p| p.overlap = Overlap::BufferAll);
    sm.job("allow", T0 - 500, |p| p.overlap = Overlap::AllowAll);
    for s in 0..3 {
        sm.tick(T0 + s * SEC);
    }
    let ready = sm.state.dispatchable_runs(T0 + 3 * SEC, 10);
    let buffer: Vec<i64> = ready
        .iter()
        .filter(|r| r.job_id == "buffer")
        .map(|r| r.nominal_ms)
        .collect();
    let allow: Vec<i64> = ready
        .iter()
        .filter(|r| r.job_id == "allow")
        .map(|r| r.nominal_ms)
        .collect();
    assert_eq!(buffer, vec![T0], "one at a time, oldest first");
    assert_eq!(allow, vec![T0, T0 + SEC, T0 + 2 * SEC]);
}

#[test]
fn overlap_cancel_other_cancels_the_open_run() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.overlap = Overlap::CancelOther);
    let (r1, _) = sm.tick(T0);
    let token = sm.start(r1[0], T0 + 1);
    let (r2, _) = sm.tick(T0 + SEC);
    assert_eq!(
        (sm.status(r1[0]), sm.status(r2[0])),
        (RunStatus::Cancelled, RunStatus::Pending)
    );
    // The cancelled attempt's worker learns it on its next heartbeat.
    let lease = sm
        .apply(T0 + SEC + 1, Command::Heartbeat { run_id: r1[0], token })
        .unwrap();
    assert_eq!(lease, Response::Lease { cancelled: true });
}

#[test]
fn paused_jobs_do_not_fire_and_resume_does_not_catch_up() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |_| {});
    sm.apply(
        T0 - 100,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
        },
    )
    .unwrap();
    assert_eq!(
        sm.state.earliest_fire(),
        None,
        "a paused job leaves the fire index"
    );
    let stale = vec![("a".to_string(), T0)];
    assert_eq!(
        sm.apply(T0, Command::FireBatch { fires: stale }).unwrap(),
        Response::Fired {
            created: vec![],
            refused: 1
        }
    );
    sm.apply(
        T0 + 10 * SEC + 500,
        Command::SetPaused {
            id: "a".into(),
            paused: false,
        },
    )
    .unwrap();
    assert_eq!(sm.state.earliest_fire(), Some(T0 + 11 * SEC));
    assert_eq!(
        sm.counters("a").missed,
        0,
        "paused time is neither run nor missed"
    );
}

#[test]
fn backfill_creates_each_fire_once_and_trigger_runs_now() {
    let mut sm = Sm::new();
    sm.job("a", T0, |p| p.overlap = Overlap::BufferAll);
    assert_eq!(
        sm.state.backfill_times("a", T0 - 3 * SEC, T0).unwrap(),
        vec![T0 - 3 * SEC, T0 - 2 * SEC, T0 - SEC]
    );
    let first = sm
        .apply(
            T0 + 1,
            Command::Backfill {
                id: "a".into(),
                start_ms: T0 - 3 * SEC,
                end_ms: T0,
            },
        )
        .unwrap();
    assert!(matches!(first, Response::Fired { ref created, refused: 0 } if created.len() == 3));
    let again = sm
        .apply(
            T0 + 2,
            Command::Backfill {
                id: "a".into(),
                start_ms: T0 - 5 * SEC,
                end_ms: T0,
            },
        )
        .unwrap();
    assert!(matches!(again, Response::Fired { ref created, refused: 3 } if created.len() == 2));
    let triggered = sm.apply(T0 + 3, Command::TriggerJob { id: "a".into() }).unwrap();
    let Response::Run(run) = triggered else {
        panic!("{triggered:?}")
    };
    assert_eq!((run.nominal_ms, run.status), (T0 + 3, RunStatus::Pending));
    // A trigger at the instant of a scheduled fire (the job fires every
    // second) or of another run gets the next free millisecond: its
    // idempotency key never names another run.
    let on_the_second = |sm: &mut Sm| match sm.apply(T0 + 5 * SEC, Command::TriggerJob { id: "a".into() }) {
        Ok(Response::Run(run)) => run.nominal_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(on_the_second(&mut sm), T0 + 5 * SEC + 1);
    assert_eq!(on_the_second(&mut sm), T0 + 5 * SEC + 2);
    let err = sm
        .apply(T0 + 4, Command::TriggerJob { id: "zzz".into() })
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)));
    let err = sm.state.backfill_times("a", T0, T0 + 20_000 * SEC).unwrap_err();
    assert!(err.to_string().contains("more than 10000"), "{err}");
}

#[test]
fn a_backfill_range_at_the_ends_of_time_is_listed_or_refused_without_overflow() {
    // Found by tests/fuzz_convert.rs: a start of i64::MIN (a timestamp
    // whose seconds saturate) overflowed `start_ms - 1`, a panic in a debug
    // build, both in the API's dry run and in `State::apply`.
    let mut sm = Sm::new();
    sm.job("a", T0, |_| {});
    let err = sm.state.backfill_times("a", i64::MIN, T0).unwrap_err();
    assert!(err.to_string().contains("more than 10000"), "{err}");
    assert_eq!(
        sm.state.backfill_times("a", i64::MIN, i64::MIN + 1).unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        sm.state.backfill_times("a", i64::MAX - 1, i64::MAX).unwrap(),
        Vec::<i64>::new()
    );
    let applied = sm.apply(
        T0,
        Command::Backfill {
            id: "a".into(),
            start_ms: i64::MIN,
            end_ms: i64::MIN + 2,
        },
    );
    assert!(
        matches!(applied, Ok(Response::Fired { ref created, refused: 0 }) if created.is_empty()),
        "{applied:?}"
    );
}

#[test]
fn history_keeps_the_last_runs_and_counters_keep_counting() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.history.keep_succeeded = 2;
        p.history.keep_failed = 1;
        p.retry.max_attempts = 1;
    });
    for s in 0..5 {
        let (r, _) = sm.tick(T0 + s * SEC);
        let t = sm.start(r[0], T0 + s * SEC + 1);
        let outcome = if s % 2 == 0 {
            AttemptOutcome::Succeeded
        } else {
            failed(true)
        };
        sm.finish(r[0], t, T0 + s * SEC + 2, outcome).unwrap();
    }
    let kept: Vec<(i64, RunStatus)> = sm
        .state
        .job_runs("a")
        .map(|r| ((r.nominal_ms - T0) / SEC, r.status))
        .collect();
    assert_eq!(
        kept,
        vec![
            (2, RunStatus::Succeeded),
            (3, RunStatus::Failed),
            (4, RunStatus::Succeeded)
        ]
    );
    assert_eq!((sm.counters("a").succeeded, sm.counters("a").failed), (3, 2));
}

#[test]
fn cancel_and_delete() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |_| {});
    let (r, _) = sm.tick(T0);
    let cancelled = sm.apply(T0 + 1, Command::CancelRun { run_id: r[0] }).unwrap();
    assert!(matches!(cancelled, Response::Run(ref run) if run.status == RunStatus::Cancelled));
    let err = sm.apply(T0 + 2, Command::CancelRun { run_id: r[0] }).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)));
    sm.apply(
        T0 + 3,
        Command::DeleteJob {
            id: "a".into(),
            expected_version: None,
        },
    )
    .unwrap();
    assert!(sm.state.run(r[0]).is_none() && sm.state.counters("a").is_none());
    assert_eq!(sm.state.earliest_fire(), None);
}

#[test]
fn a_rebuilt_state_has_the_same_indexes() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.overlap = Overlap::AllowAll);
    sm.job("b", T0 - 500, |_| {});
    let (r, _) = sm.tick(T0 + 2 * SEC);
    sm.start(r[0], T0 + 2 * SEC + 1);
    let s = &sm.state;
    let rebuilt = rebuilt_from_parts(s);
    assert_eq!(rebuilt.fire_index, s.fire_index);
    assert_eq!(rebuilt.deadline_index, s.deadline_index);
    assert_eq!(rebuilt.runs_by_job, s.runs_by_job);
    assert_eq!(rebuilt.pending_order, s.pending_order);
    assert_eq!(rebuilt.pending_by_job, s.pending_by_job);
    assert_eq!(rebuilt.active_by_job, s.active_by_job);
    assert!(!s.pending_order.is_empty() && !s.active_by_job.is_empty());
    assert_eq!(rebuilt, *s);
}

/// What `dispatchable_runs` must return, computed the slow way from every run.
fn dispatchable_by_scan(state: &State, at_ms: i64) -> Vec<RunId> {
    let mut out: Vec<&Run> = Vec::new();
    for job in state.jobs() {
        let runs: Vec<&Run> = state.job_runs(&job.id).collect();
        let pending = runs.iter().filter(|r| r.status == RunStatus::Pending);
        if job.spec.policies.overlap == Overlap::AllowAll {
            out.extend(pending.filter(|r| r.not_before_ms <= at_ms));
        } else if !runs.iter().any(|r| r.status.is_active()) {
            out.extend(pending.take(1).filter(|r| r.not_before_ms <= at_ms));
        }
    }
    out.sort_by_key(|r| (r.not_before_ms, r.id));
    out.iter().map(|r| r.id).collect()
}

#[test]
fn the_dispatch_indexes_stay_equal_to_a_rebuild_under_mixed_commands() {
    let mut sm = Sm::new();
    sm.job("all", T0 - 500, |p| {
        p.overlap = Overlap::AllowAll;
        p.catchup = Catchup::All;
        p.retry.max_attempts = 3;
        p.retry.initial_interval_ms = 700;
    });
    sm.job("buffer", T0 - 500, |p| {
        p.overlap = Overlap::BufferAll;
        p.retry.max_attempts = 3;
        p.retry.initial_interval_ms = 1_500;
    });
    sm.job("skip", T0 - 500, |p| p.overlap = Overlap::Skip);
    sm.job("one", T0 - 500, |p| p.overlap = Overlap::BufferOne);
    // A fixed pseudo-random walk: fires, starts, results, cancels, expiry.
    let mut next = walk(42);
    let mut now = T0;
    for step in 0..400 {
        now += 150 + next(400) as i64;
        let runs: Vec<Run> = sm.state.runs().cloned().collect();
        let pick = |i: u64| runs.get(i as usize % runs.len().max(1)).cloned();
        match next(6) {
            0 => {
                sm.tick(now);
            }
            1 => {
                for id in sm
                    .state
                    .dispatchable_runs(now, 3)
                    .iter()
                    .map(|r| r.id)
                    .collect::<Vec<_>>()
                {
                    sm.start(id, now);
                }
            }
            2 | 3 => {
                if let Some(run) = pick(next(1000)).filter(|r| r.status.is_active()) {
                    let outcome = if next(2) == 0 {
                        AttemptOutcome::Succeeded
                    } else {
                        failed(true)
                    };
                    sm.finish(run.id, run.token, now, outcome).unwrap();
                }
            }
            4 => {
                if let Some(run) = pick(next(1000)).filter(|r| !r.status.is_terminal()) {
                    sm.apply(now, Command::CancelRun { run_id: run.id }).unwrap();
                }
            }
            _ => {
                let run_ids = sm.state.expired_runs(now, 100);
                sm.apply(now, Command::ExpireRuns { run_ids }).unwrap();
            }
        }
        let s = &sm.state;
        assert_eq!(rebuilt_from_parts(s), *s, "step {step}");
        let indexed: Vec<RunId> = s
            .dispatchable_runs(now, usize::MAX)
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(indexed, dispatchable_by_scan(s, now), "step {step}");
        for job in s.jobs() {
            let open: Vec<RunId> = s.open_runs(&job.id).map(|r| r.id).collect();
            let scanned: Vec<RunId> = s
                .job_runs(&job.id)
                .filter(|r| !r.status.is_terminal())
                .map(|r| r.id)
                .collect();
            assert_eq!(open, scanned, "open runs of {} at step {step}", job.id);
        }
    }
    // The walk reached the interesting states.
    let statuses: BTreeSet<RunStatus> = sm.state.runs().map(|r| r.status).collect();
    for status in [RunStatus::Succeeded, RunStatus::Cancelled] {
        assert!(
            statuses.contains(&status),
            "{status:?} never reached: {statuses:?}"
        );
    }
    assert!(sm.counters("all").retries > 0 && sm.counters("buffer").retries > 0);
}

#[test]
fn an_image_is_the_state_when_taken_and_rebuilds_it() {
    let mut sm = Sm::new();
    // More jobs than one node of the persistent maps holds, so later changes
    // copy shared nodes rather than a lone root.
    for n in 0..100 {
        sm.job(&format!("j{n:03}"), T0, |_| {});
    }
    let (created, _) = sm.tick(T0 + SEC);
    assert_eq!(created.len(), 100);
    let taken = sm.state.clone();
    let image = sm.state.image();

    // What happens after the image changes the state, not the image.
    sm.start(created[0], T0 + SEC + 1);
    sm.tick(T0 + 2 * SEC);
    sm.apply(
        T0 + 2 * SEC,
        Command::DeleteJob {
            id: "j007".into(),
            expected_version: None,
        },
    )
    .unwrap();
    assert_ne!(sm.state, taken);
    assert_eq!(image, taken.image());

    // Encoded and decoded (as a snapshot is), it rebuilds the state it was
    // taken from, derived indexes included.
    let bytes = postcard::to_stdvec(&image).unwrap();
    let decoded: StateImage = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(State::from_image(decoded), taken);
}
