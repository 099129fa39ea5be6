//! Table tests of `State::apply`: time is passed in, nothing else is needed.

use super::*;
use crate::scheduler::job::{JobPatch, JobSpec, JobStatus, Metadata, Policies, ScheduleSpec};
use crate::scheduler::state;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn spec(expr: &str) -> JobSpec {
    JobSpec {
        job_type: "noop".into(),
        owner_service: "billing".into(),
        schedule: ScheduleSpec::Cron {
            expr: expr.into(),
            timezone: String::new(),
        },
        payload: b"{}".to_vec(),
        metadata: Metadata::default(),
        policies: Policies::default().shared(),
        paused: false,
    }
}

fn req(at_ms: i64, command: Command) -> Request {
    Request {
        at_ms,
        principal: "alice".into(),
        command,
        write_id: None,
    }
}

fn create(id: &str, expr: &str, request_id: Option<&str>) -> Command {
    Command::CreateJob {
        id: id.into(),
        spec: spec(expr),
        request_id: request_id.map(Into::into),
    }
}

fn apply(state: &mut State, at_ms: i64, command: Command) -> CommandResult {
    state.apply(0, &req(at_ms, command), &mut Changes::default())
}

fn job(result: CommandResult) -> Job {
    match result {
        Ok(Response::Job(job)) => Job::clone(&job),
        other => panic!("expected a job, got {other:?}"),
    }
}

#[test]
fn create_sets_version_times_principal_and_next_fire() {
    let mut state = State::default();
    let mut changes = Changes::default();
    let j = job(state.apply(0, &req(T0 + 1, create("a", "*/5 * * * *", None)), &mut changes));
    assert_eq!(j.version, 1);
    assert_eq!((j.created_at_ms, j.updated_at_ms), (T0 + 1, T0 + 1));
    assert_eq!((j.created_by.as_ref(), j.updated_by.as_ref()), ("alice", "alice"));
    assert_eq!(j.next_fire_ms, Some(T0 + 5 * 60_000));
    assert_eq!(j.status(), JobStatus::Active);
    assert_eq!(state.job("a"), Some(&j));
}

#[test]
fn duplicate_id_is_refused_and_changes_nothing() {
    let mut state = State::default();
    let first = job(apply(&mut state, T0, create("a", "* * * * *", None)));
    let err = apply(&mut state, T0 + 1, create("a", "*/2 * * * *", None)).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists(ref m) if m.contains("\"a\" already exists")),
        "{err:?}"
    );
    assert_eq!(state.job("a"), Some(&first));
}

#[test]
fn request_id_replays_first_result_and_refuses_other_body() {
    let mut state = State::default();
    let first = job(apply(&mut state, T0, create("a", "* * * * *", Some("r1"))));
    // Same id and body: the first result, even after the job changed.
    apply(
        &mut state,
        T0 + 5,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
        },
    )
    .unwrap();
    let again = job(apply(&mut state, T0 + 10, create("a", "* * * * *", Some("r1"))));
    assert_eq!(again, first);
    // Same request id, different body.
    let err = apply(&mut state, T0 + 20, create("b", "* * * * *", Some("r1"))).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists(ref m) if m.contains("request_id")),
        "{err:?}"
    );
    assert!(state.job("b").is_none());
}

#[test]
fn a_request_answers_with_the_stored_job_until_it_changes_then_with_the_created_version() {
    let mut state = State::default();
    let first = job(apply(&mut state, T0, create("a", "* * * * *", Some("r1"))));
    let b_first = job(apply(&mut state, T0, create("b", "* * * * *", Some("r2"))));
    // Fires move the job's times but not its version: a retry answers with
    // the stored job (same version and spec, later fire times).
    let fires = state.due_fires(T0 + 60_000, 10);
    apply(&mut state, T0 + 60_000, Command::FireBatch { fires }).unwrap();
    let again = job(apply(
        &mut state,
        T0 + 60_001,
        create("a", "* * * * *", Some("r1")),
    ));
    assert_eq!((again.version, &again.spec), (first.version, &first.spec));
    assert_eq!(again, *state.job("a").unwrap());
    assert_ne!(again.next_fire_ms, first.next_fire_ms);
    // Updated: a retry gets the version the create made, exactly.
    let patch = JobPatch {
        owner_service: Some("search".into()),
        ..Default::default()
    };
    let update = Command::UpdateJob {
        id: "a".into(),
        expected_version: 1,
        patch,
    };
    apply(&mut state, T0 + 60_002, update).unwrap();
    let again = job(apply(
        &mut state,
        T0 + 60_003,
        create("a", "* * * * *", Some("r1")),
    ));
    assert_eq!(again, first);
    assert_eq!(state.job("a").unwrap().version, 2, "the retry changed nothing");
    // Deleted: a late retry still gets its job, and does not re-create it.
    apply(
        &mut state,
        T0 + 60_004,
        Command::DeleteJob {
            id: "b".into(),
            expected_version: None,
        },
    )
    .unwrap();
    let again = job(apply(
        &mut state,
        T0 + 60_005,
        create("b", "* * * * *", Some("r2")),
    ));
    assert_eq!(again, b_first);
    assert!(
        state.job("b").is_none(),
        "the retry did not re-create the deleted job"
    );
    // Deleted and created again by another request: the first request's
    // retry is answered with its own version, not the new job.
    apply(&mut state, T0 + 60_006, create("b", "* * * * *", Some("r3"))).unwrap();
    let again = job(apply(
        &mut state,
        T0 + 60_007,
        create("b", "* * * * *", Some("r2")),
    ));
    assert_eq!(again, b_first);
    // The derived index survives a rebuild.
    let mut rebuilt = state.clone();
    rebuilt.rebuild_indexes();
    assert_eq!(rebuilt, state);
}

#[test]
fn request_ids_expire_after_a_day() {
    let mut state = State::default();
    apply(&mut state, T0, create("a", "* * * * *", Some("r1"))).unwrap();
    let mut changes = Changes::default();
    let later = T0 + REQUEST_ID_TTL_MS + 1;
    state
        .apply(0, &req(later, create("b", "* * * * *", Some("r2"))), &mut changes)
        .unwrap();
    assert!(state.request("r1").is_none());
    assert!(state.request("r2").is_some());
    // Once expired, the request id can be reused for another body.
    job(apply(&mut state, later + 1, create("c", "* * * * *", Some("r1"))));
}

#[test]
fn update_requires_current_version() {
    let mut state = State::default();
    apply(&mut state, T0, create("a", "* * * * *", None)).unwrap();
    let patch = JobPatch {
        owner_service: Some("search".into()),
        ..Default::default()
    };
    let stale = Command::UpdateJob {
        id: "a".into(),
        expected_version: 7,
        patch: patch.clone(),
    };
    let err = apply(&mut state, T0 + 1, stale).unwrap_err();
    assert!(
        matches!(err, Error::Aborted(ref m) if m.contains("version 1, not 7")),
        "{err:?}"
    );
    assert_eq!(state.job("a").unwrap().spec.owner_service, "billing");

    let ok = Command::UpdateJob {
        id: "a".into(),
        expected_version: 1,
        patch,
    };
    let j = job(apply(&mut state, T0 + 2, ok));
    assert_eq!(
        (j.version, j.spec.owner_service.as_str(), j.updated_at_ms),
        (2, "search", T0 + 2)
    );
}

#[test]
fn schedule_update_is_not_retroactive() {
    let mut state = State::default();
    apply(&mut state, T0, create("a", "0 0 * * *", None)).unwrap();
    let at = T0 + 90 * 60_000; // 01:30
    let patch = JobPatch {
        schedule: Some(ScheduleSpec::Cron {
            expr: "0 * * * *".into(),
            timezone: String::new(),
        }),
        ..Default::default()
    };
    let j = job(apply(
        &mut state,
        at,
        Command::UpdateJob {
            id: "a".into(),
            expected_version: 1,
            patch,
        },
    ));
    assert_eq!(
        j.next_fire_ms,
        Some(T0 + 2 * 3_600_000),
        "next fire is 02:00, not 01:00"
    );
}

#[test]
fn pause_and_resume_skip_paused_time() {
    let mut state = State::default();
    apply(&mut state, T0, create("a", "0 * * * *", None)).unwrap();
    let paused = job(apply(
        &mut state,
        T0 + 1,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
        },
    ));
    assert_eq!((paused.status(), paused.version), (JobStatus::Paused, 2));
    // Pausing twice changes nothing.
    let again = job(apply(
        &mut state,
        T0 + 2,
        Command::SetPaused {
            id: "a".into(),
            paused: true,
        },
    ));
    assert_eq!(again.version, 2);
    let resume_at = T0 + 5 * 3_600_000 + 1;
    let resumed = job(apply(
        &mut state,
        resume_at,
        Command::SetPaused {
            id: "a".into(),
            paused: false,
        },
    ));
    assert_eq!(resumed.status(), JobStatus::Active);
    assert_eq!(resumed.next_fire_ms, Some(T0 + 6 * 3_600_000));
}

#[test]
fn delete_honours_version_and_unknown_jobs_are_not_found() {
    let mut state = State::default();
    apply(&mut state, T0, create("a", "* * * * *", None)).unwrap();
    let err = apply(
        &mut state,
        T0,
        Command::DeleteJob {
            id: "a".into(),
            expected_version: Some(9),
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Aborted(_)));
    assert_eq!(
        apply(
            &mut state,
            T0,
            Command::DeleteJob {
                id: "a".into(),
                expected_version: Some(1)
            }
        ),
        Ok(Response::Deleted)
    );
    for command in [
        Command::DeleteJob {
            id: "a".into(),
            expected_version: None,
        },
        Command::SetPaused {
            id: "a".into(),
            paused: true,
        },
        Command::UpdateJob {
            id: "a".into(),
            expected_version: 1,
            patch: JobPatch::default(),
        },
    ] {
        let err = apply(&mut state, T0, command).unwrap_err();
        assert!(
            matches!(err, Error::NotFound(ref m) if m.contains("\"a\" not found")),
            "{err:?}"
        );
    }
}

#[test]
fn one_shot_in_the_past_is_completed() {
    let mut state = State::default();
    let mut s = spec("* * * * *");
    s.schedule = ScheduleSpec::At { at_ms: T0 - 1 };
    let j = job(apply(
        &mut state,
        T0,
        Command::CreateJob {
            id: "once".into(),
            spec: s,
            request_id: None,
        },
    ));
    assert_eq!((j.next_fire_ms, j.status()), (None, JobStatus::Completed));
}

#[test]
fn list_pages_and_filters() {
    let mut state = State::default();
    for i in 0..25 {
        let mut command = create(&format!("job-{i:02}"), "* * * * *", None);
        if let Command::CreateJob { spec, .. } = &mut command {
            spec.owner_service = if i % 2 == 0 { "even".into() } else { "odd".into() };
        }
        apply(&mut state, T0, command).unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = state.list(&JobFilter::default(), token.as_deref(), 10);
        assert!(page.jobs.len() <= 10);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let filter = JobFilter {
        owner_service: Some("odd".into()),
        ..Default::default()
    };
    let mut odd = 0;
    let mut token: Option<String> = None;
    loop {
        let page = state.list(&filter, token.as_deref(), 4);
        assert!(page.jobs.iter().all(|j| j.spec.owner_service == "odd"));
        odd += page.jobs.len();
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(odd, 12);
}

#[test]
fn replicas_applying_the_same_log_agree() {
    let log = [
        req(T0, create("a", "* * * * *", Some("r"))),
        req(T0 + 1, create("b", "*/3 * * * *", None)),
        req(
            T0 + 2,
            Command::SetPaused {
                id: "a".into(),
                paused: true,
            },
        ),
        req(
            T0 + 3,
            Command::UpdateJob {
                id: "b".into(),
                expected_version: 1,
                patch: JobPatch {
                    payload: Some(vec![1]),
                    ..Default::default()
                },
            },
        ),
        req(
            T0 + 4,
            Command::DeleteJob {
                id: "zzz".into(),
                expected_version: None,
            },
        ),
    ];
    let run = || {
        let mut s = State::default();
        let results: Vec<_> = log
            .iter()
            .map(|r| s.apply(0, r, &mut Changes::default()))
            .collect();
        (s, results)
    };
    let (a, ra) = run();
    let (b, rb) = run();
    assert_eq!(a, b);
    assert_eq!(ra, rb);
    // A rebuilt state (as after a restart) equals the live one.
    let mut image = StateImage::default();
    a.jobs().cloned().for_each(|job| image.insert_job(job));
    a.requests_iter()
        .for_each(|(key, record)| image.insert_request(*key, *record));
    let rebuilt = State::from_image(image);
    assert_eq!(rebuilt, a);
}

#[test]
fn a_sparse_filter_pages_instead_of_scanning_everything() {
    let mut state = State::default();
    let total = MAX_SCAN_PER_PAGE + 10;
    for i in 0..total {
        let mut command = create(&format!("job-{i:06}"), "* * * * *", None);
        if let Command::CreateJob { spec, .. } = &mut command {
            spec.owner_service = if i == total - 1 {
                "rare".into()
            } else {
                "common".into()
            };
        }
        state
            .apply(0, &req(T0, command), &mut Changes::default())
            .unwrap();
    }
    let filter = JobFilter {
        owner_service: Some("rare".into()),
        ..Default::default()
    };
    let first = state.list(&filter, None, 10);
    assert!(first.jobs.is_empty());
    let token = first
        .next_page_token
        .expect("a continuation token after the scan limit");
    let second = state.list(&filter, Some(&token), 10);
    assert_eq!(second.jobs.len(), 1);
    assert_eq!(second.next_page_token, None);
}

#[test]
fn a_retried_write_answers_with_its_first_result_until_the_record_expires() {
    // Found by the chaos suite: a forwarded delete whose connection broke
    // after the leader applied it was retried and answered NOT_FOUND.
    let mut state = State::default();
    apply(&mut state, T0, create("a", "@hourly", None)).unwrap();
    let delete = |write_id: Option<&str>, at_ms: i64| Request {
        at_ms,
        principal: "alice".into(),
        command: Command::DeleteJob {
            id: "a".into(),
            expected_version: None,
        },
        write_id: write_id.map(str::to_string),
    };
    let mut changes = Changes::default();
    assert_eq!(
        state.apply(2, &delete(Some("n1-7-1"), T0 + 1), &mut changes),
        Ok(Response::Deleted)
    );
    assert!(state.write_record("n1-7-1").is_some(), "the record is kept");
    // The retry (same write id) is not applied again: the first result.
    assert_eq!(
        state.apply(3, &delete(Some("n1-7-1"), T0 + 2), &mut Changes::default()),
        Ok(Response::Deleted)
    );
    // Another write (another id) of the same command is applied: not found.
    let other = state.apply(4, &delete(Some("n1-7-2"), T0 + 3), &mut Changes::default());
    assert!(matches!(other, Err(Error::NotFound(_))), "{other:?}");
    // Records survive a rebuild from the stored parts, and expire after the TTL.
    let mut image = StateImage::default();
    state
        .writes_iter()
        .for_each(|(id, record)| image.insert_write(id.clone(), record.clone()));
    let mut rebuilt = State::from_image(image);
    assert!(rebuilt.write_record("n1-7-1").is_some());
    let mut changes = Changes::default();
    let later = T0 + state::WRITE_ID_TTL_MS + 10;
    let again = rebuilt.apply(5, &delete(Some("n1-7-1"), later), &mut changes);
    assert!(
        matches!(again, Err(Error::NotFound(_))),
        "expired, so applied again: {again:?}"
    );
    assert!(
        rebuilt.write_record("n1-7-2").is_none(),
        "the expired record is gone"
    );
}

#[test]
fn a_batch_applies_each_request_on_its_own_with_its_own_time_principal_and_write_id() {
    let mut state = State::default();
    let with = |at_ms: i64, principal: &str, write_id: Option<&str>, command: Command| Request {
        at_ms,
        principal: principal.into(),
        command,
        write_id: write_id.map(str::to_string),
    };
    apply(&mut state, T0, create("dup", "@hourly", None)).unwrap();
    // The first delete of "dup" was applied before (a routed write that is now retried).
    let first_delete = with(
        T0 + 1,
        "alice",
        Some("n1-1-9"),
        Command::DeleteJob {
            id: "dup".into(),
            expected_version: None,
        },
    );
    assert_eq!(
        state.apply(2, &first_delete, &mut Changes::default()),
        Ok(Response::Deleted)
    );
    let batch = req(
        T0 + 20,
        Command::Batch {
            requests: vec![
                with(T0 + 10, "bob", Some("n2-1-1"), create("a", "@hourly", None)),
                // Refused on its own; the others still apply.
                with(T0 + 11, "bob", None, create("a", "@daily", None)),
                // A retry inside a batch answers its first result.
                first_delete.clone(),
                with(T0 + 12, "carol", None, create("b", "@daily", None)),
                with(T0 + 13, "carol", None, Command::Batch { requests: vec![] }),
            ],
        },
    );
    let mut changes = Changes::default();
    let Ok(Response::Batch(results)) = state.apply(3, &batch, &mut changes) else {
        panic!("a batch answers with one result per request");
    };
    assert_eq!(results.len(), 5);
    let a = job(results[0].clone());
    assert_eq!((a.created_by.as_ref(), a.created_at_ms), ("bob", T0 + 10));
    assert!(
        matches!(results[1], Err(Error::AlreadyExists(_))),
        "{:?}",
        results[1]
    );
    assert_eq!(
        results[2],
        Ok(Response::Deleted),
        "the first result, not NOT_FOUND"
    );
    let b = job(results[3].clone());
    assert_eq!((b.created_by.as_ref(), b.created_at_ms), ("carol", T0 + 12));
    assert!(
        matches!(results[4], Err(Error::InvalidArgument(_))),
        "{:?}",
        results[4]
    );
    assert!(
        state.write_record("n2-1-1").is_some(),
        "the write record of a batched write is kept"
    );
    assert_eq!(state.write_record("n2-1-1").map(|r| r.at_ms), Some(T0 + 10));
}
