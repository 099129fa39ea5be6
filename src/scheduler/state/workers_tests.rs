//! Tests of the external workers' part of the state: registered types,
//! attempts assigned to workers, the two-phase cancel, late and repeated
//! results, and what survives a snapshot.

use super::testing::*;
use super::*;
use crate::scheduler::acl::{AclTables, Permission, Resource, Role};
use crate::scheduler::command::Assignment;
use crate::scheduler::job_type::JobTypeDef;
use crate::scheduler::run::{AttemptOutcome, RunStatus};

/// Assigns the next attempt of `run_id` to `worker` on node 2; its fencing token.
fn assign(sm: &mut Sm, run_id: RunId, worker: &str, at_ms: i64) -> u64 {
    let attempt = sm.state.run(run_id).unwrap().attempt + 1;
    let starts = vec![Assignment {
        run_id,
        node: 2,
        attempt,
        worker: Some(worker.into()),
    }];
    match sm.apply(at_ms, Command::AssignAttempts { starts }).unwrap() {
        Response::Started(runs) => {
            assert_eq!(runs.len(), 1, "the attempt started");
            runs[0].token
        }
        other => panic!("{other:?}"),
    }
}

fn heartbeat(sm: &mut Sm, run_id: RunId, token: u64, at_ms: i64) -> CommandResult {
    sm.apply(at_ms, Command::Heartbeat { run_id, token })
}

fn succeeded() -> AttemptOutcome {
    AttemptOutcome::Succeeded
}

#[test]
fn registered_types_are_stored_with_who_and_when() {
    let mut sm = Sm::new();
    let def = JobTypeDef {
        name: "billing.charge".into(),
        description: "d".into(),
        payload_schema: "{}".into(),
        registered_by: "forged".into(),
        updated_ms: 1,
    };
    sm.apply(T0, Command::RegisterJobTypes { types: vec![def] })
        .unwrap();
    let stored = sm.state.job_type("billing.charge").unwrap();
    assert_eq!((stored.registered_by.as_str(), stored.updated_ms), ("t", T0));
    let rebuilt = State::from_image(sm.state.image());
    assert_eq!(rebuilt.job_type("billing.charge"), Some(stored));
}

#[test]
fn an_assigned_attempt_names_its_worker_until_the_next_attempt() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.retry.max_attempts = 3;
        p.retry.jitter_milli = 0;
        p.retry.initial_interval_ms = 1_000;
    });
    let (r, _) = sm.tick(T0);
    let token = assign(&mut sm, r[0], "2-w1", T0 + 1);
    assert_eq!(sm.state.run(r[0]).unwrap().worker.as_deref(), Some("2-w1"));
    assert_eq!(sm.state.external_attempt(r[0]).unwrap().worker_id, "2-w1");
    // A snapshot keeps it (the run's encoding does not).
    let rebuilt = State::from_image(sm.state.image());
    assert_eq!(rebuilt.run(r[0]).unwrap().worker.as_deref(), Some("2-w1"));
    assert_eq!(rebuilt, sm.state);
    // A failure: the retry remembers the worker it failed on...
    sm.finish(r[0], token, T0 + 10, failed(true)).unwrap();
    assert_eq!(sm.state.run(r[0]).unwrap().worker.as_deref(), Some("2-w1"));
    // ...until an attempt on the node's own pool replaces it.
    sm.start(r[0], T0 + 2_000);
    assert_eq!(sm.state.run(r[0]).unwrap().worker, None);
    assert!(sm.state.external_attempt(r[0]).is_none());
}

#[test]
fn cancelling_an_external_attempt_waits_for_the_worker() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.timeouts.heartbeat_timeout_ms = 10_000);
    let (r, _) = sm.tick(T0);
    let token = assign(&mut sm, r[0], "2-w1", T0 + 1);
    let cancelled = sm.apply(T0 + 100, Command::CancelRun { run_id: r[0] }).unwrap();
    let Response::Run(run) = cancelled else { panic!() };
    assert!(
        run.status.is_active(),
        "still running until the worker stops: {run:?}"
    );
    assert_eq!(
        heartbeat(&mut sm, r[0], token, T0 + 200).unwrap(),
        Response::Lease { cancelled: true }
    );
    // The worker stops and completes: the run ends cancelled, output kept.
    let outcome = AttemptOutcome::Failed {
        kind: "cancelled".into(),
        message: "stopped".into(),
        retryable: true,
    };
    sm.finish(r[0], token, T0 + 300, outcome.clone()).unwrap();
    let run = sm.state.run(r[0]).unwrap();
    assert_eq!(
        (run.status, run.output_tail.as_str()),
        (RunStatus::Cancelled, "out")
    );
    assert_eq!(sm.counters("a").cancelled, 1);
    // A repeat of that result is acknowledged; a heartbeat still says cancelled.
    sm.finish(r[0], token, T0 + 400, outcome).unwrap();
    assert_eq!(
        heartbeat(&mut sm, r[0], token, T0 + 500).unwrap(),
        Response::Lease { cancelled: true }
    );
}

#[test]
fn a_cancelled_external_attempt_whose_worker_is_silent_ends_at_its_lease() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| p.timeouts.heartbeat_timeout_ms = 1_000);
    let (r, _) = sm.tick(T0);
    let token = assign(&mut sm, r[0], "2-w1", T0 + 1);
    sm.apply(T0 + 100, Command::CancelRun { run_id: r[0] }).unwrap();
    sm.apply(T0 + 2_000, Command::ExpireRuns { run_ids: vec![r[0]] })
        .unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::Cancelled, "not retried");
    let late = sm.finish(r[0], token, T0 + 3_000, succeeded()).unwrap_err();
    assert!(matches!(late, Error::FailedPrecondition(_)), "{late:?}");
    assert_eq!(sm.counters("a").succeeded, 0);
}

#[test]
fn a_late_result_after_the_lease_expired_changes_nothing() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.timeouts.heartbeat_timeout_ms = 1_000;
        p.retry.max_attempts = 1;
    });
    let (r, _) = sm.tick(T0);
    let token = assign(&mut sm, r[0], "2-w1", T0 + 1);
    sm.apply(T0 + 2_000, Command::ExpireRuns { run_ids: vec![r[0]] })
        .unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::TimedOut);
    let before = sm.state.clone();
    for result in [
        sm.finish(r[0], token, T0 + 3_000, succeeded()),
        heartbeat(&mut sm, r[0], token, T0 + 3_000),
    ] {
        let error = result.unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{error:?}");
    }
    assert_eq!(sm.state.run(r[0]), before.run(r[0]));
    assert_eq!(sm.counters("a").succeeded, 0);
}

#[test]
fn a_recorded_result_is_acknowledged_again_and_a_newer_attempt_fences_the_old() {
    let mut sm = Sm::new();
    sm.job("a", T0 - 500, |p| {
        p.timeouts.heartbeat_timeout_ms = 1_000;
        p.retry.max_attempts = 2;
        p.retry.jitter_milli = 0;
        p.retry.initial_interval_ms = 0;
    });
    let (r, _) = sm.tick(T0);
    let first = assign(&mut sm, r[0], "2-w1", T0 + 1);
    sm.apply(T0 + 2_000, Command::ExpireRuns { run_ids: vec![r[0]] })
        .unwrap();
    let second = assign(&mut sm, r[0], "3-w2", T0 + 2_001);
    let stale = sm.finish(r[0], first, T0 + 2_500, succeeded()).unwrap_err();
    assert!(stale.to_string().contains("stale fencing token"), "{stale}");
    sm.finish(r[0], second, T0 + 2_600, succeeded()).unwrap();
    sm.finish(r[0], second, T0 + 2_700, succeeded()).unwrap();
    assert_eq!(sm.status(r[0]), RunStatus::Succeeded);
    assert_eq!(sm.counters("a").succeeded, 1);
}

#[test]
fn role_type_globs_limit_worker_connect_and_survive_a_snapshot() {
    let mut sm = Sm::new();
    let role = Role {
        name: "billing-worker".into(),
        permissions: [Permission::WorkerConnect].into(),
        owners: vec![],
        jobs: vec![],
        types: vec![],
        topics: Vec::new(),
        description: String::new(),
        created_ms: 0,
        created_by: String::new(),
    };
    let types = vec!["billing.*".to_string()];
    sm.apply(
        T0,
        Command::CreateRoleScoped {
            role,
            types: types.clone(),
        },
    )
    .unwrap();
    let stored = sm.state.role("billing-worker").unwrap();
    assert_eq!(stored.types, types);
    assert!(stored.allows(
        Permission::WorkerConnect,
        &Resource::JobType("billing.charge".into())
    ));
    assert!(!stored.allows(Permission::WorkerConnect, &Resource::JobType("other.x".into())));
    assert!(
        !stored.covers(&Resource::Cluster),
        "a scoped role does not cover the cluster"
    );
    let rebuilt = State::from_image(sm.state.image());
    assert_eq!(rebuilt.role("billing-worker").unwrap().types, types);
    sm.apply(
        T0 + 1,
        Command::DeleteRole {
            name: "billing-worker".into(),
        },
    )
    .unwrap();
    assert_eq!(State::from_image(sm.state.image()), sm.state);
}
