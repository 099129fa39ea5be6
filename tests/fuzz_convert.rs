//! Property-based fuzzing of what the API does with a request before it
//! proposes a write or runs a query: protobuf → domain conversion
//! (`api::convert`), the validators (`scheduler::validate`), the handler
//! registry's payload checks, and the backfill range check.
//!
//! Every public request message gets a strategy that fills each field with
//! values a client could send: boundary numbers (0, ±1, the extremes of the
//! type, and the extremes divided by 1,000 and 1,000,000 — where unit
//! conversions overflow), realistic times, empty, long, control-character
//! and non-ASCII strings, unknown enum values, unset and half-set messages.
//! Each test feeds one request type through the same steps, in the same
//! order, as its `JobService`/`RunService` method (each `*_preamble`
//! function names the method it follows) and checks:
//!
//! - nothing panics;
//! - every refusal is `INVALID_ARGUMENT` (`NOT_FOUND` only where the
//!   request names a job that does not exist);
//! - a create that passes converts back (`job_to_pb`) to the same spec.
//!
//! Cases per test: `PROPTEST_CASES` (default 256, about ten seconds for the
//! file in a debug build); `tests/fuzz-campaign.sh` runs long campaigns.

use kairos::api::convert::{
    job_to_pb, patch_from_pb, run_status_filter, spec_from_pb, status_filter, timestamp_ms,
};
use kairos::api::read::{consistency, page_size};
use kairos::api::to_status;
use kairos::api::watch::Position;
use kairos::handlers::Registry;
use kairos::proto as pb;
use kairos::scheduler::validate::{
    validate_at_ahead, validate_id, validate_patch, validate_request_id, validate_spec,
};
use kairos::scheduler::{Changes, Command, Request, State};
use pbjson_types::value::Kind as ValueKind;
use proptest::prelude::*;
use tonic::{Code, Status};

/// "Now" of the node taking the requests: 2026-06-01T00:00:00Z.
const NOW_MS: i64 = 1_780_272_000_000;

/// Cases per test: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(256),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ---- numbers -------------------------------------------------------------

/// `base - 1`, `base` and `base + 1`, saturating.
fn around(base: i128) -> [i128; 3] {
    [base - 1, base, base + 1]
}

/// Values where signed arithmetic and unit conversions break: zero, the
/// extremes, the extremes divided by 10³ and 10⁶ (ms and µs of seconds),
/// and chrono's representable range, each with its neighbours.
fn boundary_i64s() -> Vec<i64> {
    let bases: [i128; 12] = [
        0,
        i64::MAX as i128,
        i64::MIN as i128,
        i64::MAX as i128 / 1_000,
        i64::MIN as i128 / 1_000,
        u64::MAX as i128 / 1_000,
        i64::MAX as i128 / 1_000_000,
        u64::MAX as i128 / 1_000_000,
        8_210_266_876_799,      // chrono's last second (year 262143)
        -8_334_601_228_800,     // chrono's first second (year -262144)
        8_210_266_876_799_999,  // ... in ms
        -8_334_601_228_800_000, // ... in ms
    ];
    let mut values: Vec<i64> = bases
        .iter()
        .flat_map(|&b| around(b))
        .filter_map(|v| i64::try_from(v).ok())
        .collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// An i64 biased to boundaries, small numbers and realistic Unix times (s or ms).
fn edgy_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        3 => prop::sample::select(boundary_i64s()),
        2 => -2_000i64..2_000,
        2 => 1_700_000_000i64..1_900_000_000,
        2 => 1_700_000_000_000i64..1_900_000_000_000,
        2 => any::<i64>(),
    ]
    .boxed()
}

/// An i32 nanosecond field: valid, just outside, or anything.
fn edgy_nanos() -> BoxedStrategy<i32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            999_999,
            1_000_000,
            999_999_999,
            1_000_000_000,
            -1,
            i32::MAX,
            i32::MIN
        ]),
        0i32..1_000_000_000,
        any::<i32>(),
    ]
    .boxed()
}

fn edgy_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            u64::MAX,
            u64::MAX - 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1
        ]),
        0u64..100,
        any::<u64>(),
    ]
    .boxed()
}

fn edgy_u32() -> BoxedStrategy<u32> {
    prop_oneof![
        prop::sample::select(vec![0, 1, 2, 100, 101, 10_000, u32::MAX]),
        0u32..200,
        any::<u32>(),
    ]
    .boxed()
}

/// An enum field: a known value or any other.
fn enum_value() -> BoxedStrategy<i32> {
    prop_oneof![4 => -1i32..10, 1 => any::<i32>()].boxed()
}

/// A double for coefficients and jitter: ordinary, odd and non-finite.
fn edgy_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.0004,
            0.0005,
            1.0,
            1.5,
            100.0,
            100.0005,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
            4_294_967.295,
            4_294_967.295_5,
        ]),
        -10.0f64..200.0,
        any::<f64>(),
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<pbjson_types::Duration> {
    (edgy_i64(), edgy_nanos())
        .prop_map(|(seconds, nanos)| pbjson_types::Duration { seconds, nanos })
        .boxed()
}

fn timestamp() -> BoxedStrategy<pb::Timestamp> {
    (edgy_i64(), edgy_nanos())
        .prop_map(|(seconds, nanos)| pb::Timestamp { seconds, nanos })
        .boxed()
}

// ---- strings -------------------------------------------------------------

/// A string a client could send: valid-looking, empty, long, with control
/// characters or any Unicode.
fn edgy_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}",
        1 => Just(String::new()),
        1 => "[a-z]{60,140}",
        1 => "[ -~]{0,30}",
        1 => "\\PC{0,12}",
        1 => any::<String>(),
        1 => "[a-z]{0,5}[\\x00-\\x1f\\x7f][a-z]{0,5}",
    ]
    .boxed()
}

/// A job id: mostly valid, sometimes not.
fn job_id() -> BoxedStrategy<String> {
    prop_oneof![4 => "[a-z0-9][a-z0-9._-]{0,12}", 1 => edgy_string()].boxed()
}

/// A cron expression: valid, near-valid, or anything.
fn cron_expr() -> BoxedStrategy<String> {
    let valid = prop::sample::select(vec![
        "*/5 * * * *",
        "0 9 * * 1-5",
        "*/10 * * * * *",
        "0 0 29 2 *",
        "@daily",
        "@every 90s",
        "0 30 2 * * SUN",
        "0 0 13 * 5",
    ])
    .prop_map(String::from);
    let near = prop::sample::select(vec![
        "* * * *",
        "* * * * * * *",
        "60 * * * *",
        "0 0 30 2 *",
        "*/0 * * * *",
        "5-1 * * * *",
        "@every 0s",
        "@every 1ms",
        "@every 99999999999999999999s",
        "@reboot",
        "0 0 L * *",
        "1/4294967296 * * * *",
        "@hourly x",
        "",
    ])
    .prop_map(String::from);
    prop_oneof![3 => valid, 2 => near, 1 => edgy_string()].boxed()
}

fn timezone() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Pacific/Apia",
            "Etc/GMT+12"
        ])
        .prop_map(String::from),
        edgy_string(),
    ]
    .boxed()
}

// ---- messages ------------------------------------------------------------

fn schedule_spec() -> BoxedStrategy<Option<pb::ScheduleSpec>> {
    use pb::schedule_spec::Kind;
    let kind = prop_oneof![
        (cron_expr(), timezone())
            .prop_map(|(expr, timezone)| Kind::Cron(pb::CronSchedule { expr, timezone })),
        timestamp().prop_map(Kind::At),
        (proptest::option::of(duration()), proptest::option::of(duration()))
            .prop_map(|(interval, phase)| Kind::Every(pb::IntervalSchedule { interval, phase })),
    ];
    proptest::option::of(proptest::option::of(kind).prop_map(|kind| pb::ScheduleSpec { kind })).boxed()
}

/// A `google.protobuf.Value`, nested at most `depth` deep.
fn json_value() -> BoxedStrategy<pbjson_types::Value> {
    let leaf = prop_oneof![
        (0i32..3).prop_map(ValueKind::NullValue),
        edgy_f64().prop_map(ValueKind::NumberValue),
        edgy_string().prop_map(ValueKind::StringValue),
        any::<bool>().prop_map(ValueKind::BoolValue),
    ]
    .prop_map(|kind| pbjson_types::Value { kind: Some(kind) });
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|values| ValueKind::ListValue(pbjson_types::ListValue { values })),
            prop::collection::hash_map(edgy_string(), inner, 0..4)
                .prop_map(|fields| ValueKind::StructValue(pbjson_types::Struct { fields })),
        ]
        .prop_map(|kind| pbjson_types::Value { kind: Some(kind) })
    })
    .boxed()
}

fn metadata() -> BoxedStrategy<Option<pb::Metadata>> {
    let labels = prop_oneof![
        4 => prop::collection::hash_map(edgy_string(), edgy_string(), 0..4),
        1 => prop::collection::hash_map("[a-z]{1,8}", "[a-z]{0,3}", 60..70),
    ];
    let fields = proptest::option::of(
        prop::collection::hash_map(edgy_string(), json_value(), 0..4)
            .prop_map(|fields| pbjson_types::Struct { fields }),
    );
    proptest::option::of((labels, fields).prop_map(|(labels, fields)| pb::Metadata { labels, fields }))
        .boxed()
}

fn policies() -> BoxedStrategy<Option<pb::Policies>> {
    let retry = (
        proptest::option::of(edgy_u32()),
        proptest::option::of(duration()),
        edgy_f64(),
        proptest::option::of(duration()),
        edgy_f64(),
        prop::collection::vec(edgy_string(), 0..3),
    )
        .prop_map(
            |(
                max_attempts,
                initial_interval,
                backoff_coefficient,
                max_interval,
                jitter,
                non_retryable_errors,
            )| {
                pb::RetryPolicy {
                    max_attempts,
                    initial_interval,
                    backoff_coefficient,
                    max_interval,
                    jitter,
                    non_retryable_errors,
                }
            },
        );
    let timeouts = (
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
    )
        .prop_map(
            |(start_deadline, attempt_timeout, heartbeat_timeout)| pb::Timeouts {
                start_deadline,
                attempt_timeout,
                heartbeat_timeout,
            },
        );
    let history = (edgy_u32(), edgy_u32()).prop_map(|(keep_succeeded, keep_failed)| pb::HistoryLimits {
        keep_succeeded,
        keep_failed,
    });
    proptest::option::of(
        (
            enum_value(),
            enum_value(),
            proptest::option::of(duration()),
            edgy_u32(),
            proptest::option::of(retry),
            proptest::option::of(timeouts),
            proptest::option::of(history),
        )
            .prop_map(
                |(overlap, catchup, catchup_window, max_catchup, retry, timeouts, history)| pb::Policies {
                    overlap,
                    catchup,
                    catchup_window,
                    max_catchup,
                    retry,
                    timeouts,
                    history,
                },
            ),
    )
    .boxed()
}

/// A payload for the built-in job types, well-formed or not.
fn payload() -> BoxedStrategy<Vec<u8>> {
    let json = prop::sample::select(vec![
        r#"{}"#,
        r#"{"ms": 100}"#,
        r#"{"ms": -1}"#,
        r#"{"ms": 1e300}"#,
        r#"{"url": "http://127.0.0.1:9/x"}"#,
        r#"{"url": "http://[::1]:99999/"}"#,
        r#"{"url": "ftp://x"}"#,
        r#"{"url": "http://x", "headers": {"Idempotency-Key": "k"}}"#,
        r#"{"url": "http://x", "timeout_ms": 18446744073709551616}"#,
        r#"{"argv": ["true"], "env": {"A": "b"}}"#,
        r#"{"argv": []}"#,
        r#"[1, 2]"#,
        r#"null"#,
        r#"{"a": {"b": {"c": [[[[]]]]}}}"#,
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![3 => json, 1 => prop::collection::vec(any::<u8>(), 0..40)].boxed()
}

fn job_type() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec!["noop", "sleep", "http", "exec"]).prop_map(String::from),
        1 => edgy_string(),
    ]
    .boxed()
}

/// A job message with every field drawn (boxed strategies keep the value
/// trees' stack frames small in debug builds).
fn scheduled_job() -> BoxedStrategy<pb::ScheduledJob> {
    let names = (
        job_id(),
        job_type(),
        edgy_string(),
        prop_oneof![cron_expr(), Just(String::new())],
    )
        .boxed();
    let rest = (
        enum_value(),
        metadata(),
        schedule_spec(),
        payload(),
        policies(),
        any::<bool>(),
        edgy_u64(),
        proptest::option::of(timestamp()),
    )
        .boxed();
    (names, rest)
        .prop_map(
            |(
                (id, r#type, owner_service, schedule),
                (status, metadata, schedule_spec, payload, policies, paused, version, stamps),
            )| {
                pb::ScheduledJob {
                    id,
                    r#type,
                    owner_service,
                    schedule,
                    status,
                    metadata,
                    last_run: stamps,
                    next_run: stamps,
                    created_by: String::new(),
                    updated_by: String::new(),
                    schedule_spec,
                    payload,
                    policies,
                    paused,
                    version,
                    created_at: stamps,
                    updated_at: stamps,
                }
            },
        )
        .boxed()
}

/// A job the API is likely to accept: valid names, a `noop` type, a valid
/// schedule, and policies unset or drawn like any others; so that the
/// properties of accepted requests are exercised often.
fn plausible_job() -> BoxedStrategy<pb::ScheduledJob> {
    (
        "[a-z0-9][a-z0-9._-]{0,12}",
        "[a-z]{0,10}",
        valid_schedule(),
        prop_oneof![Just(None), policies()],
        prop_oneof![Just(None), metadata()],
        any::<bool>(),
    )
        .prop_map(
            |(id, owner_service, schedule_spec, policies, metadata, paused)| pb::ScheduledJob {
                id,
                r#type: "noop".into(),
                owner_service,
                schedule_spec: Some(schedule_spec),
                policies,
                metadata,
                paused,
                ..Default::default()
            },
        )
        .boxed()
}

/// A schedule the validators accept (`at` after [`NOW_MS`]), from every kind.
fn valid_schedule() -> BoxedStrategy<pb::ScheduleSpec> {
    use pb::schedule_spec::Kind;
    let cron = (
        prop::sample::select(vec![
            "* * * * * *",
            "*/7 * * * * *",
            "*/5 * * * *",
            "0 9 * * 1-5",
            "0 0 29 2 *",
            "30 2 * * *",
            "@hourly",
            "@every 1s",
            "@every 36h",
        ]),
        prop::sample::select(vec!["", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Apia"]),
    )
        .prop_map(|(expr, timezone)| {
            Kind::Cron(pb::CronSchedule {
                expr: expr.into(),
                timezone: timezone.into(),
            })
        });
    let every = (1i64..100_000, 0i64..1_000).prop_map(|(interval, phase)| {
        Kind::Every(pb::IntervalSchedule {
            interval: Some(pbjson_types::Duration {
                seconds: interval,
                nanos: 0,
            }),
            phase: Some(pbjson_types::Duration {
                seconds: 0,
                nanos: (phase % 1_000) as i32 * 1_000_000,
            }),
        })
    });
    let at = (NOW_MS / 1000 + 1..NOW_MS / 1000 + 10_000_000_000)
        .prop_map(|seconds| Kind::At(pb::Timestamp { seconds, nanos: 0 }));
    prop_oneof![cron, every, at]
        .prop_map(|kind| pb::ScheduleSpec { kind: Some(kind) })
        .boxed()
}

fn update_mask() -> BoxedStrategy<Option<pbjson_types::FieldMask>> {
    let path = prop_oneof![
        4 => prop::sample::select(vec![
            "type", "owner_service", "ownerService", "schedule", "schedule_spec", "scheduleSpec",
            "payload", "metadata", "policies", "paused",
        ]).prop_map(String::from),
        1 => edgy_string(),
    ];
    proptest::option::of(
        prop::collection::vec(path, 0..4).prop_map(|paths| pbjson_types::FieldMask { paths }),
    )
    .boxed()
}

// ---- the service preambles -----------------------------------------------

/// Panics unless `status` is `INVALID_ARGUMENT` (or one of `also`).
fn assert_refusal_class(status: &Status, also: &[Code]) {
    assert!(
        status.code() == Code::InvalidArgument || also.contains(&status.code()),
        "refused as {:?}, not INVALID_ARGUMENT: {}",
        status.code(),
        status.message()
    );
}

/// `JobService::create_job` up to the write: the id, the request id, the
/// spec and its one-shot time, and the payload for its type.
fn create_preamble(
    registry: &Registry,
    req: pb::CreateJobRequest,
) -> Result<(String, kairos::scheduler::JobSpec, Option<String>), Status> {
    let job = req.job.ok_or_else(|| Status::invalid_argument("job: required"))?;
    validate_id(&job.id).map_err(to_status)?;
    validate_request_id(&req.request_id).map_err(to_status)?;
    let spec = spec_from_pb(&job).map_err(to_status)?;
    validate_spec(&spec).map_err(to_status)?;
    validate_at_ahead(&spec.schedule, NOW_MS).map_err(to_status)?;
    registry
        .validate(&spec.job_type, &spec.payload)
        .map_err(Status::invalid_argument)?;
    let request_id = (!req.request_id.is_empty()).then_some(req.request_id);
    Ok((job.id, spec, request_id))
}

/// `JobService::update_job` up to the write (the registry check of a
/// patched type or payload included, against no stored job).
fn update_preamble(registry: &Registry, req: pb::UpdateJobRequest) -> Result<(), Status> {
    let job = req.job.ok_or_else(|| Status::invalid_argument("job: required"))?;
    validate_id(&job.id).map_err(to_status)?;
    if job.version == 0 {
        return Err(Status::invalid_argument("job.version: required"));
    }
    let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
    let patch = patch_from_pb(&job, &mask).map_err(to_status)?;
    validate_patch(&patch).map_err(to_status)?;
    if let Some(schedule) = &patch.schedule {
        validate_at_ahead(schedule, NOW_MS).map_err(to_status)?;
    }
    if patch.job_type.is_some() || patch.payload.is_some() {
        let job_type = patch.job_type.clone().unwrap_or_default();
        let payload = patch.payload.clone().unwrap_or_default();
        registry
            .validate(&job_type, &payload)
            .map_err(Status::invalid_argument)?;
    }
    Ok(())
}

/// A state holding job `j` with `spec` (accepted by the validators), created at `NOW_MS`.
fn state_with(spec: kairos::scheduler::JobSpec) -> State {
    let mut state = State::default();
    let request = Request {
        at_ms: NOW_MS,
        principal: "fuzz".into(),
        command: Command::CreateJob {
            id: "j".into(),
            spec,
            request_id: None,
        },
        write_id: None,
    };
    state
        .apply(1, &request, &mut Changes::default())
        .expect("a valid create applies");
    state
}

/// `RunService::backfill_job`'s check of the range (its dry run), on `state`.
fn backfill_preamble(state: &State, req: pb::BackfillJobRequest) -> Result<Vec<i64>, Status> {
    validate_id(&req.id).map_err(to_status)?;
    let required = |t: Option<pb::Timestamp>, field: &str| {
        t.map(|t| timestamp_ms(&t))
            .ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
    };
    let start_ms = required(req.start, "start")?;
    let end_ms = required(req.end, "end")?;
    state.backfill_times(&req.id, start_ms, end_ms).map_err(to_status)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn create_requests_convert_or_are_refused_as_invalid_argument(
        job in proptest::option::of(prop_oneof![scheduled_job(), plausible_job()]),
        request_id in edgy_string(),
    ) {
        let registry = Registry::builtin(true);
        match create_preamble(&registry, pb::CreateJobRequest { job, request_id }) {
            Err(status) => assert_refusal_class(&status, &[]),
            Ok((id, spec, request_id)) => {
                // What passes is what the state machine stores, and reads back the same.
                let state = state_with(spec.clone());
                let stored = state.job("j").expect("created");
                let again = spec_from_pb(&job_to_pb(stored)).expect("a stored job converts back");
                prop_assert_eq!(&again, &spec, "id {} request {:?}", id, request_id);
            }
        }
    }

    #[test]
    fn update_requests_convert_or_are_refused_as_invalid_argument(
        job in proptest::option::of(prop_oneof![scheduled_job(), plausible_job()]),
        update_mask in update_mask(),
    ) {
        let registry = Registry::builtin(true);
        if let Err(status) = update_preamble(&registry, pb::UpdateJobRequest { job, update_mask }) {
            assert_refusal_class(&status, &[]);
        }
    }

    #[test]
    fn id_and_query_requests_are_refused_as_invalid_argument(
        id in job_id(),
        consistency_value in enum_value(),
        status in enum_value(),
        run_status in enum_value(),
        size in edgy_u32(),
        token in prop_oneof![edgy_string(), edgy_u64().prop_map(|n| n.to_string())],
        after in proptest::option::of(timestamp()),
        before in proptest::option::of(timestamp()),
        position in (edgy_u64(), edgy_u64()),
    ) {
        // GetJob, DeleteJob, PauseJob, ResumeJob, TriggerJob, DescribeJob: the id.
        if let Err(e) = validate_id(&id) {
            assert_refusal_class(&to_status(e), &[]);
        }
        // Every query: its consistency.
        if let Err(status) = consistency(consistency_value) {
            assert_refusal_class(&status, &[]);
        }
        // ListJobs and ListRuns: filters, page size and token.
        if let Err(e) = status_filter(status) {
            assert_refusal_class(&to_status(e), &[]);
        }
        if let Err(e) = run_status_filter(run_status) {
            assert_refusal_class(&to_status(e), &[]);
        }
        prop_assert!(page_size(size) >= 1);
        let _ = after.map(|t| timestamp_ms(&t));
        let _ = before.map(|t| timestamp_ms(&t));
        let _ = token.parse::<u64>();
        // WatchRuns: any position is a position.
        let p = Position::from_pb(pb::WatchPosition { revision: position.0, run_id: position.1 });
        prop_assert_eq!((p.revision, p.run_id), position);
    }

    #[test]
    fn backfill_ranges_are_listed_or_refused_as_invalid_argument(
        job in plausible_job(),
        id in prop_oneof![4 => Just("j".to_string()), 1 => job_id()],
        start in proptest::option::of(timestamp()),
        end in proptest::option::of(timestamp()),
    ) {
        let registry = Registry::builtin(true);
        let create = pb::CreateJobRequest { job: Some(job), request_id: String::new() };
        // Only a job the API accepts can be stored to backfill.
        let Ok((_, spec, _)) = create_preamble(&registry, create) else {
            return Ok(());
        };
        let state = state_with(spec);
        let known = id == "j";
        match backfill_preamble(&state, pb::BackfillJobRequest { id, start, end, dry_run: true }) {
            Ok(times) => {
                prop_assert!(times.windows(2).all(|w| w[0] < w[1]), "{:?}", times);
                prop_assert!(times.len() <= kairos::scheduler::state::MAX_BACKFILL_RUNS);
            }
            Err(status) if !known => assert_refusal_class(&status, &[Code::NotFound]),
            Err(status) => assert_refusal_class(&status, &[]),
        }
    }
}
