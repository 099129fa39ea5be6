//! Conversion between protobuf messages and domain types — the only place on
//! the server where `pb` types meet the core.
//!
//! Input conversion refuses what cannot be represented (negative durations,
//! unknown enum values, a schedule that is missing) with `InvalidArgument`
//! naming the field; range and format checks are left to
//! [`crate::scheduler::validate`], which runs right after. Unset policy fields
//! (zero, unspecified, absent) take the defaults of
//! [`crate::scheduler::job::Policies::default`], which the README states.

use pbjson_types::Duration as PbDuration;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::proto::Timestamp as PbTimestamp;
use crate::scheduler::job::{
    to_thousandths, Catchup, HistoryLimits, Metadata, Overlap, Policies, RetryPolicy, Timeouts,
};
use crate::scheduler::run::{JobCounters, RunCause};
use crate::scheduler::schedule::{DependencyCondition, DependencyMode};
use crate::scheduler::{Job, JobPatch, JobSpec, JobStatus, Run, RunStatus, ScheduleSpec};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// A protobuf duration as milliseconds; negative durations are refused.
pub fn duration_ms(d: &PbDuration, field: &str) -> Result<u64> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(format!("{field}: must not be negative")));
    }
    (d.seconds as u64)
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(d.nanos as u64 / 1_000_000))
        .ok_or_else(|| invalid(format!("{field}: too large")))
}

/// Milliseconds as a protobuf duration.
pub fn ms_duration(ms: u64) -> PbDuration {
    PbDuration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as Unix milliseconds.
pub fn timestamp_ms(t: &PbTimestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// Unix milliseconds as a protobuf timestamp.
pub fn ms_timestamp(ms: i64) -> PbTimestamp {
    PbTimestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn optional_ms(d: Option<&PbDuration>, field: &str, default: u64) -> Result<u64> {
    match d {
        Some(d) => match duration_ms(d, field)? {
            0 => Ok(default),
            ms => Ok(ms),
        },
        None => Ok(default),
    }
}

/// The schedule of a job message: `schedule_spec` when set, else the `schedule`
/// cron shorthand (UTC).
pub fn schedule_from_pb(job: &pb::ScheduledJob) -> Result<ScheduleSpec> {
    use pb::schedule_spec::Kind;
    match job.schedule_spec.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(Kind::Cron(c)) => Ok(ScheduleSpec::Cron {
            expr: c.expr.clone(),
            timezone: c.timezone.clone(),
        }),
        Some(Kind::At(t)) => Ok(ScheduleSpec::At {
            at_ms: timestamp_ms(t),
        }),
        Some(Kind::Every(e)) => Ok(ScheduleSpec::Every {
            interval_ms: duration_ms(
                e.interval.as_ref().unwrap_or(&PbDuration::default()),
                "schedule_spec.every.interval",
            )?,
            phase_ms: duration_ms(
                e.phase.as_ref().unwrap_or(&PbDuration::default()),
                "schedule_spec.every.phase",
            )?,
        }),
        Some(Kind::OnEvent(e)) => Ok(ScheduleSpec::OnEvent {
            topic: e.topic.clone(),
            matches: e.r#match.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
        Some(Kind::After(d)) => Ok(ScheduleSpec::After {
            jobs: d.jobs.clone(),
            condition: match pb::DependencyCondition::try_from(d.condition) {
                Ok(pb::DependencyCondition::Unspecified | pb::DependencyCondition::Succeeded) => {
                    DependencyCondition::Succeeded
                }
                Ok(pb::DependencyCondition::Failed) => DependencyCondition::Failed,
                Ok(pb::DependencyCondition::Completed) => DependencyCondition::Completed,
                Err(_) => {
                    return Err(invalid(format!(
                        "schedule_spec.after.condition: unknown value {}",
                        d.condition
                    )))
                }
            },
            mode: match pb::DependencyMode::try_from(d.mode) {
                Ok(pb::DependencyMode::Unspecified | pb::DependencyMode::All) => DependencyMode::All,
                Ok(pb::DependencyMode::Any) => DependencyMode::Any,
                Err(_) => {
                    return Err(invalid(format!(
                        "schedule_spec.after.mode: unknown value {}",
                        d.mode
                    )))
                }
            },
        }),
        None if !job.schedule.trim().is_empty() => Ok(ScheduleSpec::Cron {
            expr: job.schedule.trim().to_string(),
            timezone: String::new(),
        }),
        None => Err(invalid(
            "schedule: required (set `schedule` to a cron expression or `schedule_spec`)",
        )),
    }
}

fn schedule_to_pb(spec: &ScheduleSpec) -> pb::ScheduleSpec {
    use pb::schedule_spec::Kind;
    let kind = match spec {
        ScheduleSpec::Cron { expr, timezone } => Kind::Cron(pb::CronSchedule {
            expr: expr.clone(),
            timezone: timezone.clone(),
        }),
        ScheduleSpec::At { at_ms } => Kind::At(ms_timestamp(*at_ms)),
        ScheduleSpec::Every {
            interval_ms,
            phase_ms,
        } => Kind::Every(pb::IntervalSchedule {
            interval: Some(ms_duration(*interval_ms)),
            phase: (*phase_ms > 0).then(|| ms_duration(*phase_ms)),
        }),
        ScheduleSpec::OnEvent { topic, matches } => Kind::OnEvent(pb::EventTrigger {
            topic: topic.clone(),
            r#match: matches.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
        ScheduleSpec::After {
            jobs,
            condition,
            mode,
        } => Kind::After(pb::Dependency {
            jobs: jobs.clone(),
            condition: match condition {
                DependencyCondition::Succeeded => pb::DependencyCondition::Succeeded,
                DependencyCondition::Failed => pb::DependencyCondition::Failed,
                DependencyCondition::Completed => pb::DependencyCondition::Completed,
            } as i32,
            mode: match mode {
                DependencyMode::All => pb::DependencyMode::All,
                DependencyMode::Any => pb::DependencyMode::Any,
            } as i32,
        }),
    };
    pb::ScheduleSpec { kind: Some(kind) }
}

fn metadata_from_pb(m: Option<&pb::Metadata>) -> Result<Metadata> {
    let Some(m) = m else {
        return Ok(Metadata::default());
    };
    let fields_json = match &m.fields {
        Some(fields) if !fields.fields.is_empty() => {
            let value = serde_json::to_value(fields).map_err(|e| invalid(format!("metadata.fields: {e}")))?;
            with_sorted_keys(value).to_string()
        }
        _ => String::new(),
    };
    Ok(Metadata {
        labels: m.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        fields_json,
    })
}

/// `value` with the keys of every object in sorted order. A protobuf
/// `Struct` is a hash map, and two maps of the same content iterate in
/// different orders, so without this the same metadata would be stored as
/// different text: a create repeated with its `request_id` would be refused
/// as a different body, and a job read and written back would change.
fn with_sorted_keys(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, with_sorted_keys(value)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(with_sorted_keys).collect()),
        other => other,
    }
}

fn metadata_to_pb(m: &Metadata) -> pb::Metadata {
    let fields = if m.fields_json.is_empty() {
        None
    } else {
        serde_json::from_str(&m.fields_json).ok()
    };
    pb::Metadata {
        labels: m.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        fields,
    }
}

fn overlap_from_pb(v: i32) -> Result<Overlap> {
    use pb::OverlapPolicy as P;
    Ok(
        match P::try_from(v).map_err(|_| invalid(format!("policies.overlap: unknown value {v}")))? {
            P::Unspecified | P::Skip => Overlap::Skip,
            P::BufferOne => Overlap::BufferOne,
            P::BufferAll => Overlap::BufferAll,
            P::CancelOther => Overlap::CancelOther,
            P::AllowAll => Overlap::AllowAll,
        },
    )
}

fn overlap_to_pb(o: Overlap) -> pb::OverlapPolicy {
    use pb::OverlapPolicy as P;
    match o {
        Overlap::Skip => P::Skip,
        Overlap::BufferOne => P::BufferOne,
        Overlap::BufferAll => P::BufferAll,
        Overlap::CancelOther => P::CancelOther,
        Overlap::AllowAll => P::AllowAll,
    }
}

fn catchup_from_pb(v: i32) -> Result<Catchup> {
    use pb::CatchupPolicy as P;
    Ok(
        match P::try_from(v).map_err(|_| invalid(format!("policies.catchup: unknown value {v}")))? {
            P::Unspecified | P::Latest => Catchup::Latest,
            P::All => Catchup::All,
            P::None => Catchup::None,
        },
    )
}

fn catchup_to_pb(c: Catchup) -> pb::CatchupPolicy {
    match c {
        Catchup::Latest => pb::CatchupPolicy::Latest,
        Catchup::All => pb::CatchupPolicy::All,
        Catchup::None => pb::CatchupPolicy::None,
    }
}

/// A double of the API as the thousandths the job stores (precision 0.001,
/// rounded to the nearest); 0 (unset) is `default`.
fn thousandths(value: f64, field: &str, default: u32) -> Result<u32> {
    if value == 0.0 {
        return Ok(default);
    }
    to_thousandths(value).ok_or_else(|| Error::InvalidArgument(format!("{field}: {value} is out of range")))
}

/// Resolved policies from the message; unset fields take their defaults.
pub fn policies_from_pb(p: Option<&pb::Policies>) -> Result<Policies> {
    let d = Policies::default();
    let Some(p) = p else { return Ok(d) };
    Ok(Policies {
        overlap: overlap_from_pb(p.overlap)?,
        catchup: catchup_from_pb(p.catchup)?,
        catchup_window_ms: optional_ms(
            p.catchup_window.as_ref(),
            "policies.catchup_window",
            d.catchup_window_ms,
        )?,
        max_catchup: nonzero_or(p.max_catchup, d.max_catchup),
        retry: p.retry.as_ref().map_or(Ok(d.retry), retry_from_pb)?,
        timeouts: p.timeouts.as_ref().map_or(Ok(d.timeouts), timeouts_from_pb)?,
        history: p.history.as_ref().map_or(d.history, history_from_pb),
    })
}

/// `value`, or `default` when it is 0 (unset in proto3).
fn nonzero_or(value: u32, default: u32) -> u32 {
    if value == 0 {
        default
    } else {
        value
    }
}

fn retry_from_pb(r: &pb::RetryPolicy) -> Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let initial = optional_ms(
        r.initial_interval.as_ref(),
        "policies.retry.initial_interval",
        d.initial_interval_ms,
    )?;
    Ok(RetryPolicy {
        // Unset takes the default; an explicit 0 stays 0 and validation
        // refuses it.
        max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
        initial_interval_ms: initial,
        backoff_coefficient_milli: thousandths(
            r.backoff_coefficient,
            "policies.retry.backoff_coefficient",
            d.backoff_coefficient_milli,
        )?,
        max_interval_ms: optional_ms(
            r.max_interval.as_ref(),
            "policies.retry.max_interval",
            initial.saturating_mul(100),
        )?,
        jitter_milli: thousandths(r.jitter, "policies.retry.jitter", d.jitter_milli)?,
        non_retryable_errors: r.non_retryable_errors.clone(),
    })
}

fn timeouts_from_pb(t: &pb::Timeouts) -> Result<Timeouts> {
    let d = Timeouts::default();
    Ok(Timeouts {
        start_deadline_ms: optional_ms(
            t.start_deadline.as_ref(),
            "policies.timeouts.start_deadline",
            d.start_deadline_ms,
        )?,
        attempt_timeout_ms: optional_ms(
            t.attempt_timeout.as_ref(),
            "policies.timeouts.attempt_timeout",
            d.attempt_timeout_ms,
        )?,
        heartbeat_timeout_ms: optional_ms(
            t.heartbeat_timeout.as_ref(),
            "policies.timeouts.heartbeat_timeout",
            d.heartbeat_timeout_ms,
        )?,
    })
}

fn history_from_pb(h: &pb::HistoryLimits) -> HistoryLimits {
    let d = HistoryLimits::default();
    HistoryLimits {
        keep_succeeded: nonzero_or(h.keep_succeeded, d.keep_succeeded),
        keep_failed: nonzero_or(h.keep_failed, d.keep_failed),
    }
}

fn policies_to_pb(p: &Policies) -> pb::Policies {
    pb::Policies {
        overlap: overlap_to_pb(p.overlap) as i32,
        catchup: catchup_to_pb(p.catchup) as i32,
        catchup_window: Some(ms_duration(p.catchup_window_ms)),
        max_catchup: p.max_catchup,
        retry: Some(pb::RetryPolicy {
            max_attempts: Some(p.retry.max_attempts),
            initial_interval: Some(ms_duration(p.retry.initial_interval_ms)),
            backoff_coefficient: f64::from(p.retry.backoff_coefficient_milli) / 1000.0,
            max_interval: Some(ms_duration(p.retry.max_interval_ms)),
            jitter: f64::from(p.retry.jitter_milli) / 1000.0,
            non_retryable_errors: p.retry.non_retryable_errors.clone(),
        }),
        timeouts: Some(pb::Timeouts {
            start_deadline: Some(ms_duration(p.timeouts.start_deadline_ms)),
            attempt_timeout: Some(ms_duration(p.timeouts.attempt_timeout_ms)),
            heartbeat_timeout: Some(ms_duration(p.timeouts.heartbeat_timeout_ms)),
        }),
        history: Some(pb::HistoryLimits {
            keep_succeeded: p.history.keep_succeeded,
            keep_failed: p.history.keep_failed,
        }),
    }
}

/// The spec of a job to create.
pub fn spec_from_pb(job: &pb::ScheduledJob) -> Result<JobSpec> {
    Ok(JobSpec {
        job_type: job.r#type.clone(),
        owner_service: job.owner_service.clone(),
        schedule: schedule_from_pb(job)?,
        payload: job.payload.to_vec(),
        metadata: metadata_from_pb(job.metadata.as_ref())?,
        policies: policies_from_pb(job.policies.as_ref())?.shared(),
        paused: job.paused,
    })
}

/// Field names an update mask may contain (snake_case or the JSON camelCase).
pub const UPDATABLE_FIELDS: [&str; 8] = [
    "type",
    "owner_service",
    "schedule",
    "schedule_spec",
    "payload",
    "metadata",
    "policies",
    "paused",
];

/// The patch an update asks for: the masked fields of `job`, or all updatable
/// fields when the mask is empty.
pub fn patch_from_pb(job: &pb::ScheduledJob, mask: &[String]) -> Result<JobPatch> {
    let all: Vec<String> = UPDATABLE_FIELDS.iter().map(|s| s.to_string()).collect();
    let paths = if mask.is_empty() { &all[..] } else { mask };
    let mut patch = JobPatch::default();
    for path in paths {
        match path.as_str() {
            "type" => patch.job_type = Some(job.r#type.clone()),
            "owner_service" | "ownerService" => patch.owner_service = Some(job.owner_service.clone()),
            "schedule" | "schedule_spec" | "scheduleSpec" => patch.schedule = Some(schedule_from_pb(job)?),
            "payload" => patch.payload = Some(job.payload.to_vec()),
            "metadata" => patch.metadata = Some(metadata_from_pb(job.metadata.as_ref())?),
            "policies" => patch.policies = Some(policies_from_pb(job.policies.as_ref())?),
            "paused" => patch.paused = Some(job.paused),
            other => {
                return Err(invalid(format!(
                    "update_mask: {other:?} is not an updatable field (one of: {})",
                    UPDATABLE_FIELDS.join(", ")
                )))
            }
        }
    }
    Ok(patch)
}

/// A job status filter from the message (`None` for unspecified).
pub fn status_filter(v: i32) -> Result<Option<JobStatus>> {
    use pb::JobStatus as P;
    Ok(
        match P::try_from(v).map_err(|_| invalid(format!("status: unknown value {v}")))? {
            P::Unspecified => None,
            P::Active => Some(JobStatus::Active),
            P::Paused => Some(JobStatus::Paused),
            P::Completed => Some(JobStatus::Completed),
        },
    )
}

fn status_to_pb(s: JobStatus) -> pb::JobStatus {
    match s {
        JobStatus::Active => pb::JobStatus::Active,
        JobStatus::Paused => pb::JobStatus::Paused,
        JobStatus::Completed => pb::JobStatus::Completed,
    }
}

/// The message form of a stored job.
pub fn job_to_pb(job: &Job) -> pb::ScheduledJob {
    let status = job.status();
    pb::ScheduledJob {
        id: job.id.clone(),
        r#type: job.spec.job_type.clone(),
        owner_service: job.spec.owner_service.clone(),
        schedule: job.spec.schedule.describe(),
        status: status_to_pb(status) as i32,
        metadata: Some(metadata_to_pb(&job.spec.metadata)),
        last_run: job.last_fired_ms.map(ms_timestamp),
        next_run: if status == JobStatus::Active {
            job.next_fire_ms.map(ms_timestamp)
        } else {
            None
        },
        created_by: job.created_by.to_string(),
        updated_by: job.updated_by.to_string(),
        schedule_spec: Some(schedule_to_pb(&job.spec.schedule)),
        payload: job.spec.payload.clone(),
        policies: Some(policies_to_pb(&job.spec.policies)),
        paused: job.spec.paused,
        version: job.version,
        created_at: Some(ms_timestamp(job.created_at_ms)),
        updated_at: Some(ms_timestamp(job.updated_at_ms)),
    }
}

fn run_status_to_pb(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Pending => pb::RunStatus::Pending,
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::TimedOut => pb::RunStatus::TimedOut,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
        RunStatus::Skipped => pb::RunStatus::Skipped,
    }
}

/// A run status filter from the message (`None` for unspecified).
pub fn run_status_filter(v: i32) -> Result<Option<RunStatus>> {
    use pb::RunStatus as P;
    Ok(
        match P::try_from(v).map_err(|_| invalid(format!("status: unknown value {v}")))? {
            P::Unspecified => None,
            P::Pending => Some(RunStatus::Pending),
            P::Queued => Some(RunStatus::Queued),
            P::Running => Some(RunStatus::Running),
            P::Succeeded => Some(RunStatus::Succeeded),
            P::Failed => Some(RunStatus::Failed),
            P::TimedOut => Some(RunStatus::TimedOut),
            P::Cancelled => Some(RunStatus::Cancelled),
            P::Skipped => Some(RunStatus::Skipped),
        },
    )
}

/// The message form of a run.
pub fn run_to_pb(run: &Run) -> pb::Run {
    pb::Run {
        id: run.id,
        job_id: run.job_id.clone(),
        nominal_time: Some(ms_timestamp(run.nominal_ms)),
        status: run_status_to_pb(run.status) as i32,
        attempt: run.attempt,
        node_id: run.node.unwrap_or(0),
        started_at: run.started_at_ms.map(ms_timestamp),
        finished_at: run.finished_at_ms.map(ms_timestamp),
        error: run.error.clone(),
        output_tail: run.output_tail.clone(),
        cause: match run.cause {
            RunCause::Schedule => pb::RunCause::Schedule,
            RunCause::Trigger => pb::RunCause::Trigger,
            RunCause::Backfill => pb::RunCause::Backfill,
            RunCause::Event => pb::RunCause::Event,
            RunCause::Dependency => pb::RunCause::Dependency,
        } as i32,
        fencing_token: run.token,
        idempotency_key: run.idempotency_key(),
        not_before: (run.status == RunStatus::Pending).then(|| ms_timestamp(run.not_before_ms)),
        revision: run.revision,
        worker_id: run.worker.clone().unwrap_or_default(),
        event_id: run.event_id().to_string(),
        event_payload: run.event_payload().to_vec(),
        upstream_run_id: run.trigger.as_ref().and_then(|t| t.upstream_run).unwrap_or(0),
    }
}

/// The message form of a job's counters.
pub fn counters_to_pb(c: &JobCounters) -> pb::JobCounters {
    pb::JobCounters {
        runs_created: c.runs_created,
        succeeded: c.succeeded,
        failed: c.failed,
        timed_out: c.timed_out,
        cancelled: c.cancelled,
        skipped: c.skipped,
        missed: c.missed,
        retries: c.retries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_message() -> pb::ScheduledJob {
        pb::ScheduledJob {
            id: "a".into(),
            r#type: "noop".into(),
            schedule: "*/5 * * * *".into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_keeps_the_spec() {
        let spec = spec_from_pb(&job_message()).unwrap();
        assert_eq!(*spec.policies, Policies::default());
        let job = Job {
            id: "a".into(),
            spec: spec.clone(),
            version: 3,
            created_at_ms: 1_000,
            updated_at_ms: 2_500,
            created_by: "u".into(),
            updated_by: "v".into(),
            last_fired_ms: None,
            next_fire_ms: Some(300_000),
        };
        let message = job_to_pb(&job);
        assert_eq!(spec_from_pb(&message).unwrap(), spec);
        assert_eq!(message.version, 3);
        assert_eq!(message.updated_at.map(|t| timestamp_ms(&t)), Some(2_500));
    }

    #[test]
    fn missing_schedule_and_negative_duration_are_named() {
        let mut m = job_message();
        m.schedule.clear();
        let err = spec_from_pb(&m).unwrap_err();
        assert!(err.to_string().starts_with("schedule: required"), "{err}");
        let d = PbDuration {
            seconds: -1,
            nanos: 0,
        };
        assert!(duration_ms(&d, "policies.catchup_window")
            .unwrap_err()
            .to_string()
            .contains("policies.catchup_window"));
    }

    #[test]
    fn a_duration_at_the_top_of_the_range_is_too_large_not_an_overflow() {
        // u64::MAX ms is 18,446,744,073,709,551.615 s: the seconds fit, the
        // nanoseconds' milliseconds on top of them did not (found by
        // tests/fuzz_convert.rs; a panic in a debug build, a wrap in release).
        let top = (u64::MAX / 1000) as i64;
        let d = |seconds: i64, nanos: i32| PbDuration { seconds, nanos };
        assert_eq!(duration_ms(&d(top, 615_000_000), "f").unwrap(), u64::MAX);
        for (seconds, nanos) in [(top, 616_000_000), (top, i32::MAX), (top + 1, 0), (i64::MAX, 0)] {
            let err = duration_ms(&d(seconds, nanos), "policies.catchup_window").unwrap_err();
            assert_eq!(
                err,
                Error::InvalidArgument("policies.catchup_window: too large".into())
            );
        }
    }

    #[test]
    fn the_same_metadata_fields_are_always_the_same_text() {
        // Found by tests/fuzz_convert.rs: the text followed the iteration
        // order of the message's hash map, which differs between two maps
        // holding the same fields.
        use pbjson_types::value::Kind;
        let value = |kind: Kind| pbjson_types::Value { kind: Some(kind) };
        let fields = || {
            let inner: std::collections::HashMap<String, pbjson_types::Value> = ["z", "", "m", "a"]
                .into_iter()
                .map(|k| (k.to_string(), value(Kind::BoolValue(true))))
                .collect();
            let outer: std::collections::HashMap<String, pbjson_types::Value> = (0..16)
                .map(|i| {
                    (
                        format!("k{i}"),
                        value(Kind::StructValue(pbjson_types::Struct {
                            fields: inner.clone(),
                        })),
                    )
                })
                .collect();
            pb::Metadata {
                labels: Default::default(),
                fields: Some(pbjson_types::Struct { fields: outer }),
            }
        };
        let first = metadata_from_pb(Some(&fields())).unwrap();
        assert!(
            first
                .fields_json
                .starts_with(r#"{"k0":{"":true,"a":true,"m":true,"z":true},"k1":"#),
            "{}",
            first.fields_json
        );
        for _ in 0..20 {
            assert_eq!(metadata_from_pb(Some(&fields())).unwrap(), first);
        }
        // Read back and written again, it stays the same text.
        assert_eq!(metadata_from_pb(Some(&metadata_to_pb(&first))).unwrap(), first);
    }

    #[test]
    fn metadata_numbers_are_read_back_exactly() {
        // Found by tests/fuzz_convert.rs: without serde_json's
        // `float_roundtrip`, 47.732277684277996 was read back as
        // 47.732277684278, so a job written back changed its metadata.
        use pbjson_types::value::Kind;
        for number in [
            47.732277684277996,
            0.1 + 0.2,
            1e-320,
            f64::MAX,
            -2.2250738585072014e-308,
        ] {
            let message = pb::Metadata {
                labels: Default::default(),
                fields: Some(pbjson_types::Struct {
                    fields: [(
                        "n".to_string(),
                        pbjson_types::Value {
                            kind: Some(Kind::NumberValue(number)),
                        },
                    )]
                    .into(),
                }),
            };
            let stored = metadata_from_pb(Some(&message)).unwrap();
            assert_eq!(metadata_to_pb(&stored), message, "{number:e}");
        }
    }

    #[test]
    fn unknown_mask_path_is_refused() {
        let err = patch_from_pb(&job_message(), &["version".into()]).unwrap_err();
        assert!(err.to_string().contains("update_mask: \"version\""), "{err}");
        let patch = patch_from_pb(&job_message(), &["ownerService".into()]).unwrap();
        assert_eq!(patch.owner_service.as_deref(), Some(""));
        assert!(patch.schedule.is_none());
    }

    #[test]
    fn timestamps_before_1970_round_trip() {
        for ms in [-1_500i64, -1, 0, 1, 1_767_225_600_123] {
            assert_eq!(timestamp_ms(&ms_timestamp(ms)), ms);
        }
    }
}
