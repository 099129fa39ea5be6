//! Tests of events and dependencies in the state machine: one run per
//! matching event, idempotency keys, dependency joins (all/any), cycle
//! refusal, forced deletes, and the integration part surviving an image.

use std::collections::BTreeMap;

use super::testing::{Sm, SEC, T0};
use super::*;
use crate::scheduler::job::{JobSpec, Metadata, Policies, ScheduleSpec};
use crate::scheduler::run::{AttemptOutcome, RunCause, RunStatus};
use crate::scheduler::schedule::{DependencyCondition, DependencyMode};

fn spec(schedule: ScheduleSpec, overlap_allow: bool) -> JobSpec {
    let mut policies = Policies::default();
    if overlap_allow {
        policies.overlap = crate::scheduler::job::Overlap::AllowAll;
    }
    JobSpec {
        job_type: "noop".into(),
        owner_service: "shop".into(),
        schedule,
        payload: vec![],
        metadata: Metadata::default(),
        policies: policies.shared(),
        paused: false,
    }
}

fn on_event(topic: &str, matches: &[(&str, &str)]) -> ScheduleSpec {
    ScheduleSpec::OnEvent {
        topic: topic.into(),
        matches: matches
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn after(jobs: &[&str], condition: DependencyCondition, mode: DependencyMode) -> ScheduleSpec {
    ScheduleSpec::After {
        jobs: jobs.iter().map(|j| j.to_string()).collect(),
        condition,
        mode,
    }
}

fn create(sm: &mut Sm, id: &str, schedule: ScheduleSpec) -> CommandResult {
    sm.apply(
        T0,
        Command::CreateJob {
            id: id.into(),
            spec: spec(schedule, true),
            request_id: None,
        },
    )
}

fn publish(sm: &mut Sm, at: i64, topic: &str, attrs: &[(&str, &str)], key: &str) -> CommandResult {
    let attributes: BTreeMap<String, String> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sm.apply(
        at,
        Command::PublishEvent {
            topic: topic.into(),
            attributes,
            payload: b"{\"order\":1}".to_vec(),
            idempotency_key: key.into(),
        },
    )
}

fn published(result: CommandResult) -> Published {
    match result.unwrap() {
        Response::Published(p) => p,
        other => panic!("{other:?}"),
    }
}

/// Runs `run_id` to the end with `outcome`.
fn run_to_end(sm: &mut Sm, run_id: RunId, at: i64, outcome: AttemptOutcome) {
    let token = sm.start(run_id, at);
    sm.finish(run_id, token, at + 1, outcome).unwrap();
}

fn failed() -> AttemptOutcome {
    AttemptOutcome::Failed {
        kind: "boom".into(),
        message: "boom".into(),
        retryable: false,
    }
}

fn runs_of(sm: &Sm, job: &str) -> Vec<Run> {
    sm.state.job_runs(job).cloned().collect()
}

#[test]
fn an_event_creates_one_run_per_matching_job_with_its_id_and_payload() {
    let mut sm = Sm::new();
    create(&mut sm, "eu-orders", on_event("orders.*", &[("region", "eu")])).unwrap();
    create(&mut sm, "all-orders", on_event("orders.*", &[])).unwrap();
    create(&mut sm, "refunds", on_event("refunds.*", &[])).unwrap();
    let job = sm.state.job("eu-orders").unwrap();
    assert_eq!(
        job.status(),
        crate::scheduler::JobStatus::Active,
        "a triggered job is active"
    );
    assert_eq!(job.next_fire_ms, None);

    let p = published(publish(
        &mut sm,
        T0 + SEC,
        "orders.created",
        &[("region", "eu")],
        "",
    ));
    assert_eq!((p.runs_created, p.duplicate), (2, false));
    for job in ["eu-orders", "all-orders"] {
        let runs = runs_of(&sm, job);
        assert_eq!(runs.len(), 1, "{job}");
        let run = &runs[0];
        assert_eq!(
            (run.cause, run.nominal_ms, run.status),
            (RunCause::Event, T0 + SEC, RunStatus::Pending)
        );
        let trigger = run.trigger.as_ref().unwrap();
        assert_eq!(trigger.event_id, p.event_id);
        assert_eq!(trigger.event_payload, b"{\"order\":1}");
        assert_eq!(run.idempotency_key(), format!("{job}:{}", p.event_id));
    }
    assert!(runs_of(&sm, "refunds").is_empty());

    // Attributes must match; the topic glob must match.
    let p = published(publish(
        &mut sm,
        T0 + 2 * SEC,
        "orders.created",
        &[("region", "us")],
        "",
    ));
    assert_eq!(p.runs_created, 1, "only all-orders");
    let p = published(publish(&mut sm, T0 + 3 * SEC, "invoices.created", &[], ""));
    assert_eq!(p.runs_created, 0);
}

#[test]
fn a_repeated_idempotency_key_answers_the_first_publish_and_creates_nothing() {
    let mut sm = Sm::new();
    create(&mut sm, "j", on_event("orders.*", &[])).unwrap();
    let first = published(publish(&mut sm, T0 + SEC, "orders.created", &[], "k1"));
    let again = published(publish(&mut sm, T0 + 2 * SEC, "orders.created", &[], "k1"));
    assert_eq!(
        (again.event_id.as_str(), again.runs_created, again.duplicate),
        (first.event_id.as_str(), 1, true)
    );
    assert_eq!(runs_of(&sm, "j").len(), 1);
    // Another body under the same key is refused.
    let err = publish(&mut sm, T0 + 3 * SEC, "orders.deleted", &[], "k1").unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    // After 24 h the key is forgotten.
    let later = published(publish(
        &mut sm,
        T0 + SEC + EVENT_TTL_MS + 1,
        "orders.created",
        &[],
        "k1",
    ));
    assert!(!later.duplicate);
    assert_ne!(later.event_id, first.event_id);
    assert!(sm.state.event(&first.event_id).is_none(), "the old event expired");
}

#[test]
fn a_paused_event_job_gets_no_run() {
    let mut sm = Sm::new();
    create(&mut sm, "j", on_event("orders.*", &[])).unwrap();
    sm.apply(
        T0,
        Command::SetPaused {
            id: "j".into(),
            paused: true,
        },
    )
    .unwrap();
    assert_eq!(
        published(publish(&mut sm, T0 + SEC, "orders.x", &[], "")).runs_created,
        0
    );
    assert!(runs_of(&sm, "j").is_empty());
}

#[test]
fn all_mode_runs_the_downstream_once_per_nominal_time_when_every_upstream_succeeded() {
    let mut sm = Sm::new();
    sm.job("a", T0, |_| {});
    sm.job("b", T0, |_| {});
    create(
        &mut sm,
        "c",
        after(&["a", "b"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap();
    let (created, _) = sm.tick(T0 + SEC);
    assert_eq!(created.len(), 2);
    let (ra, rb) = (created[0], created[1]);
    run_to_end(&mut sm, ra, T0 + SEC, AttemptOutcome::Succeeded);
    assert!(runs_of(&sm, "c").is_empty(), "b has not ended yet");
    run_to_end(&mut sm, rb, T0 + SEC, AttemptOutcome::Succeeded);
    let c = runs_of(&sm, "c");
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].cause, c[0].nominal_ms), (RunCause::Dependency, T0 + SEC));
    assert_eq!(c[0].trigger.as_ref().unwrap().upstream_run, Some(rb));

    // The next nominal time: a fails, so c does not run for it.
    let (created, _) = sm.tick(T0 + 2 * SEC);
    run_to_end(&mut sm, created[0], T0 + 2 * SEC, failed());
    run_to_end(&mut sm, created[1], T0 + 2 * SEC, AttemptOutcome::Succeeded);
    assert_eq!(runs_of(&sm, "c").len(), 1, "a failed: no run of c");
}

#[test]
fn any_mode_runs_once_per_upstream_run_in_the_condition() {
    let mut sm = Sm::new();
    sm.job("a", T0, |_| {});
    sm.job("b", T0, |_| {});
    create(
        &mut sm,
        "on-fail",
        after(&["a", "b"], DependencyCondition::Failed, DependencyMode::Any),
    )
    .unwrap();
    let (created, _) = sm.tick(T0 + SEC);
    run_to_end(&mut sm, created[0], T0 + SEC, failed());
    run_to_end(&mut sm, created[1], T0 + SEC, failed());
    let runs = runs_of(&sm, "on-fail");
    assert_eq!(runs.len(), 2);
    assert_ne!(runs[0].idempotency_key(), runs[1].idempotency_key());
}

#[test]
fn a_chain_carries_the_event_to_the_end() {
    let mut sm = Sm::new();
    create(&mut sm, "a", on_event("orders.*", &[])).unwrap();
    create(
        &mut sm,
        "b",
        after(&["a"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap();
    create(
        &mut sm,
        "c",
        after(&["b"], DependencyCondition::Completed, DependencyMode::All),
    )
    .unwrap();
    let p = published(publish(&mut sm, T0 + SEC, "orders.created", &[], ""));
    let a = runs_of(&sm, "a")[0].id;
    run_to_end(&mut sm, a, T0 + SEC, AttemptOutcome::Succeeded);
    let b = runs_of(&sm, "b")[0].id;
    run_to_end(&mut sm, b, T0 + SEC, failed());
    let c = runs_of(&sm, "c");
    assert_eq!(c.len(), 1, "completed counts a failure");
    let trigger = c[0].trigger.as_ref().unwrap();
    assert_eq!(trigger.event_id, p.event_id);
    assert_eq!(c[0].idempotency_key(), format!("c:{}", p.event_id));
}

#[test]
fn a_cycle_is_refused_naming_it() {
    let mut sm = Sm::new();
    sm.job("a", T0, |_| {});
    create(
        &mut sm,
        "b",
        after(&["a"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap();
    create(
        &mut sm,
        "c",
        after(&["b"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap();
    // a after c closes a → b → c → a.
    let version = sm.state.job("a").unwrap().version;
    let patch = crate::scheduler::JobPatch {
        schedule: Some(after(&["c"], DependencyCondition::Succeeded, DependencyMode::All)),
        ..Default::default()
    };
    let err = sm
        .apply(
            T0,
            Command::UpdateJob {
                id: "a".into(),
                expected_version: version,
                patch,
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("cycle a → b → c → a")),
        "{err:?}"
    );
    // A job after itself, and after a job that does not exist.
    let err = create(
        &mut sm,
        "d",
        after(&["d"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("d → d")),
        "{err:?}"
    );
    let err = create(
        &mut sm,
        "e",
        after(&["nope"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("nope")),
        "{err:?}"
    );
}

#[test]
fn deleting_an_upstream_needs_force_and_leaves_the_dependent_blocked() {
    let mut sm = Sm::new();
    sm.job("a", T0, |_| {});
    create(
        &mut sm,
        "b",
        after(&["a"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap();
    let err = sm
        .apply(
            T0,
            Command::DeleteJob {
                id: "a".into(),
                expected_version: None,
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("upstream of b")),
        "{err:?}"
    );
    assert!(sm.state.blocked_reason(sm.state.job("b").unwrap()).is_none());
    sm.apply(
        T0,
        Command::ForceDeleteJob {
            id: "a".into(),
            expected_version: None,
        },
    )
    .unwrap();
    let reason = sm.state.blocked_reason(sm.state.job("b").unwrap()).unwrap();
    assert!(reason.contains("upstream job a does not exist"), "{reason}");
    // A new job a unblocks b.
    sm.job("a", T0 + SEC, |_| {});
    assert!(sm.state.blocked_reason(sm.state.job("b").unwrap()).is_none());
}

#[test]
fn the_integration_part_survives_an_image() {
    let mut sm = Sm::new();
    sm.job("a", T0, |_| {});
    create(
        &mut sm,
        "b",
        after(&["a"], DependencyCondition::Succeeded, DependencyMode::All),
    )
    .unwrap();
    create(&mut sm, "e", on_event("x.*", &[])).unwrap();
    publish(&mut sm, T0 + SEC, "x.y", &[], "k").unwrap();
    let sink = SinkDef {
        name: "s".into(),
        url: "http://127.0.0.1:1/".into(),
        ..SinkDef::default()
    };
    sm.apply(T0, Command::CreateSink { sink }).unwrap();
    let rebuilt = State::from_image(sm.state.image());
    assert_eq!(rebuilt, sm.state);
    assert_eq!(rebuilt.dependents_of("a"), vec!["b".to_string()]);
    let run = rebuilt.job_runs("e").next().unwrap();
    assert!(run.trigger.is_some(), "the run's trigger is restored");
    assert_eq!(rebuilt.sinks().count(), 1);
    assert_eq!(rebuilt.digest(), sm.state.digest());
}
