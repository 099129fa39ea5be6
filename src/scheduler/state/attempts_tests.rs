//! Tests of the attempt commands: starts and their fencing tokens, leases,
//! results, retries, expiry and deadlines.

use super::testing::*;
use super::*;
use crate::scheduler::job::{Catchup, JobPatch, Overlap, Policies};
use crate::scheduler::run::{AttemptOutcome, AttemptResult, RunStatus};

#[test]
fn failures_retry_with_backoff_until_attempts_run_out() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.retry.max_attempts = 2;
        p.retry.jitter_milli = 0;
        p.retry.initial_interval_ms = 5_000;
    });
    let (r, _) = sm.tick(T0);
    let t1 = sm.start(r[0], T0 + 1);
    sm.finish(r[0], t1, T0 + 100, failed(true)).unwrap();
    let run = sm.state.run(r[0]).unwrap().clone();
    assert_eq!(
        (run.status, run.not_before_ms),
        (RunStatus::Pending, T0 + 100 + 5_000)
    );
    assert!(
        sm.state.dispatchable_runs(T0 + 5_000, 10).is_empty(),
        "not before the back-off"
    );
    assert_eq!(sm.state.dispatchable_runs(T0 + 5_100, 10).len(), 1);
    let t2 = sm.start(r[0], T0 + 5_100);
    assert!(t2 > t1, "a new attempt gets a new fencing token");
    sm.finish(r[0], t2, T0 + 5_200, failed(true)).unwrap();
    assert_eq!(
        sm.status(r[0]),
        RunStatus::Failed,
        "dead letter after max_attempts"
    );
    assert_eq!((sm.counters("a").retries, sm.counters("a").failed), (1, 1));
}

#[test]
fn non_retryable_errors_fail_at_once() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.retry.non_retryable_errors = vec!["boom".into()]
    });
    let (r, _) = sm.tick(T0);
    let t = sm.start(r[0], T0 + 1);
    sm.finish(r[0], t, T0 + 2, failed(true)).unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::Failed);
    let (r2, _) = sm.tick(T0 + SEC);
    let t = sm.start(r2[0], T0 + SEC + 1);
    sm.finish(
        r2[0],
        t,
        T0 + SEC + 2,
        AttemptOutcome::Failed {
            kind: "x".into(),
            message: "4xx".into(),
            retryable: false,
        },
    )
    .unwrap();
    assert_eq!(sm.status(r2[0]), RunStatus::Failed);
}

#[test]
fn an_expired_lease_times_out_the_attempt_and_fences_the_old_worker() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.timeouts.heartbeat_timeout_ms = 10_000;
        p.retry.jitter_milli = 0;
        p.retry.initial_interval_ms = 1_000;
    });
    let (r, _) = sm.tick(T0);
    let old = sm.start(r[0], T0 + 1);
    sm.apply(
        T0 + 5_000,
        Command::Heartbeat {
            run_id: r[0],
            token: old,
        },
    )
    .unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::Running);
    // The lease now ends at T0 + 15 s; an early expiry proposal changes nothing.
    assert!(sm.state.expired_runs(T0 + 14_000, 10).is_empty());
    sm.apply(T0 + 14_000, Command::ExpireRuns { run_ids: vec![r[0]] })
        .unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::Running);
    assert_eq!(sm.state.expired_runs(T0 + 15_000, 10), vec![r[0]]);
    sm.apply(T0 + 15_000, Command::ExpireRuns { run_ids: vec![r[0]] })
        .unwrap();
    let run = sm.state.run(r[0]).unwrap().clone();
    assert_eq!(run.status, RunStatus::Pending);
    assert!(run.error.contains("lease expired"), "{}", run.error);
    let new = sm.start(r[0], T0 + 16_000);
    // The old worker comes back: its heartbeat and result are refused.
    for command in [
        Command::Heartbeat {
            run_id: r[0],
            token: old,
        },
        Command::FinishAttempt {
            run_id: r[0],
            token: old,
            outcome: AttemptOutcome::Succeeded,
            output_tail: String::new(),
        },
    ] {
        let err = sm.apply(T0 + 16_500, command).unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains("stale fencing token")),
            "{err:?}"
        );
    }
    sm.finish(r[0], new, T0 + 17_000, AttemptOutcome::Succeeded)
        .unwrap();
    // A resent result for the same attempt is acknowledged without change.
    let resent = sm
        .finish(r[0], new, T0 + 17_500, AttemptOutcome::Succeeded)
        .unwrap();
    assert!(matches!(resent, Response::Run(ref run) if run.status == RunStatus::Succeeded));
    assert_eq!((sm.counters("a").succeeded, sm.counters("a").retries), (1, 1));
}

#[test]
fn a_run_not_dispatched_before_its_start_deadline_times_out() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.timeouts.start_deadline_ms = 2_000);
    let (r, _) = sm.tick(T0);
    assert_eq!(sm.state.expired_runs(T0 + 2_000, 10), vec![r[0]]);
    sm.apply(T0 + 2_000, Command::ExpireRuns { run_ids: vec![r[0]] })
        .unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::TimedOut);
}

#[test]
fn one_entry_starts_many_attempts_and_each_is_fenced_by_it() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.overlap = Overlap::AllowAll;
        p.catchup = Catchup::All;
    });
    sm.job("b", T0 - 500, |_| {});
    let (created, _) = sm.tick(T0 + SEC);
    assert_eq!(
        created.len(),
        3,
        "a: both due fires (catch-up all), b: the latest only"
    );
    let starts: Vec<(RunId, u64, u32)> = created.iter().map(|&id| (id, 2, 1)).collect();
    let Response::Started(runs) = sm
        .apply(
            T0 + SEC + 1,
            Command::StartAttempts {
                starts: starts.clone(),
            },
        )
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(runs.len(), 3);
    let token = sm.index;
    assert!(runs
        .iter()
        .all(|r| r.token == token && r.status == RunStatus::Queued && r.node == Some(2)));
    // The same batch again starts nothing: those attempts already started.
    let again = sm.apply(T0 + SEC + 2, Command::StartAttempts { starts }).unwrap();
    assert_eq!(again, Response::Started(vec![]));
    sm.finish(created[0], token, T0 + SEC + 3, AttemptOutcome::Succeeded)
        .unwrap();
    assert_eq!(sm.status(created[0]), RunStatus::Succeeded);
}

#[test]
fn one_entry_records_many_results_and_refuses_only_the_stale_ones() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.overlap = Overlap::AllowAll);
    sm.job("b", T0 - 500, |_| {});
    sm.job("c", T0 - 500, |_| {});
    let (created, _) = sm.tick(T0 + SEC);
    let tokens: Vec<u64> = created.iter().map(|&id| sm.start(id, T0 + SEC + 1)).collect();
    let result = |i: usize, token: u64, outcome: AttemptOutcome| AttemptResult {
        run_id: created[i],
        token,
        outcome,
        output_tail: format!("run {i}"),
    };
    let results = vec![
        result(0, tokens[0], AttemptOutcome::Succeeded),
        result(1, tokens[1] - 1, AttemptOutcome::Succeeded),
        result(2, tokens[2], failed(false)),
    ];
    let reply = sm
        .apply(
            T0 + SEC + 2,
            Command::FinishAttempts {
                results: results.clone(),
            },
        )
        .unwrap();
    let Response::Finished { recorded, refused } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(recorded, 2);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, created[1]);
    assert!(refused[0].1.contains("stale fencing token"), "{}", refused[0].1);
    assert_eq!(sm.status(created[0]), RunStatus::Succeeded);
    assert_eq!(sm.status(created[1]), RunStatus::Queued);
    assert_eq!(sm.status(created[2]), RunStatus::Failed);
    assert_eq!(sm.state.run(created[0]).unwrap().output_tail, "run 0");
    // The same entry again (a re-send after a lost reply) changes nothing.
    let before = (sm.counters("a"), sm.counters("c"));
    let again = sm
        .apply(T0 + SEC + 3, Command::FinishAttempts { results })
        .unwrap();
    assert!(
        matches!(again, Response::Finished { recorded: 2, .. }),
        "{again:?}"
    );
    assert_eq!((sm.counters("a"), sm.counters("c")), before);
}

#[test]
fn deadlines_follow_policy_changes_and_leave_with_a_deleted_job() {
    // Found by the chaos suite: a run's deadline depends on its job's
    // policies; deleting the job (or changing its timeouts) used to leave the
    // old entry in the deadline index, and the timer proposed ExpireRuns for
    // it in a tight loop.
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.timeouts.heartbeat_timeout_ms = 5_000);
    let (created, _) = sm.tick(T0 + 1);
    let run = created[0];
    let token = sm.start(run, T0 + 10);
    assert_eq!(sm.state.earliest_deadline(), Some(T0 + 10 + 5_000));

    // A policy change re-files the open run under its new deadline.
    let version = sm.state.job("a").unwrap().version;
    let mut policies = Policies::clone(&sm.state.job("a").unwrap().spec.policies);
    policies.timeouts.attempt_timeout_ms = 1_000;
    let patch = JobPatch {
        policies: Some(policies),
        ..Default::default()
    };
    sm.apply(
        T0 + 20,
        Command::UpdateJob {
            id: "a".into(),
            expected_version: version,
            patch,
        },
    )
    .unwrap();
    assert_eq!(sm.state.earliest_deadline(), Some(T0 + 10 + 1_000));
    assert!(sm.state.expired_runs(T0 + 1_010, 10).contains(&run));
    let _ = token;

    // Deleting the job takes its runs' deadlines with it.
    sm.apply(
        T0 + 30,
        Command::DeleteJob {
            id: "a".into(),
            expected_version: None,
        },
    )
    .unwrap();
    assert_eq!(sm.state.earliest_deadline(), None);
    assert!(sm.state.expired_runs(i64::MAX, 10).is_empty());
}

#[test]
fn an_old_run_ending_after_newer_ones_is_answered_although_history_drops_it() {
    // Found by tests/fuzz_state.rs: cancelling (or recording the result of)
    // a run older than the job's kept history made retention drop it at
    // once, and `apply` panicked reading it back for the reply: every
    // replica applying the entry would have crashed.
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.overlap = Overlap::AllowAll;
        p.retry.max_attempts = 1;
        p.history.keep_failed = 1;
    });
    sm.apply(
        T0,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
        },
    )
    .unwrap();
    let trigger = |sm: &mut Sm, at_ms: i64| match sm.apply(at_ms, Command::TriggerJob { id: "a".into() }) {
        Ok(Response::Run(run)) => run.id,
        other => panic!("{other:?}"),
    };
    let (old, new) = (trigger(&mut sm, T0 + 1), trigger(&mut sm, T0 + 2));
    let old_token = sm.start(old, T0 + 3);
    sm.apply(T0 + 4, Command::CancelRun { run_id: new }).unwrap();
    let reply = sm.finish(old, old_token, T0 + 5, failed(false)).unwrap();
    let Response::Run(run) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((run.id, run.status), (old, RunStatus::Failed));
    assert!(sm.state.run(old).is_none(), "beyond keep_failed: dropped at once");

    let (older, newer) = (trigger(&mut sm, T0 + 6), trigger(&mut sm, T0 + 7));
    sm.apply(T0 + 8, Command::CancelRun { run_id: newer }).unwrap();
    let reply = sm.apply(T0 + 9, Command::CancelRun { run_id: older }).unwrap();
    let Response::Run(run) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((run.id, run.status), (older, RunStatus::Cancelled));
    assert!(sm.state.run(older).is_none());
    assert_eq!(sm.counters("a").cancelled, 3);
    assert_eq!(rebuilt_from_parts(&sm.state), sm.state);
}
