//! Validation of client input, before anything is proposed to Raft.
//!
//! Validation is a pure function of the input: it never looks at stored state,
//! so it can run on any node before a command is proposed, and a refused request
//! never reaches the log. State-dependent checks (does the job exist, is the
//! version current, is the id taken) belong to [`super::State::apply`].
//!
//! Every message names the field and the problem, e.g.
//! `id: "a b" contains ' ' (allowed: letters, digits, '.', '_', '-')`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};

use super::job::{format_thousandths, JobPatch, JobSpec, Metadata, Policies, MAX_ID_LEN, MAX_PAYLOAD_BYTES};
use super::schedule::{Schedule, ScheduleSpec};
use crate::error::{Error, Result};

/// Most labels a job may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Largest free-form metadata object, as JSON text.
pub const MAX_FIELDS_JSON_BYTES: usize = 64 * 1024;
/// Longest handler type name.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest owner service name.
pub const MAX_OWNER_LEN: usize = 128;
/// Longest request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Checks a job id: 1-128 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(invalid("id: must not be empty"));
    }
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(invalid(format!(
            "id: {len} characters is too long (at most {MAX_ID_LEN})"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "id: {id:?} contains {bad:?} (allowed: letters, digits, '.', '_', '-')"
        )));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid(format!("id: {id:?} must start with a letter or digit")));
    }
    Ok(())
}

/// Checks an idempotency key of a create.
pub fn validate_request_id(request_id: &str) -> Result<()> {
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(invalid(format!(
            "request_id: longer than {MAX_REQUEST_ID_LEN} bytes"
        )));
    }
    if request_id.chars().any(char::is_control) {
        return Err(invalid("request_id: must not contain control characters"));
    }
    Ok(())
}

/// Checks a complete spec (create).
pub fn validate_spec(spec: &JobSpec) -> Result<()> {
    validate_type(&spec.job_type)?;
    validate_owner(&spec.owner_service)?;
    validate_schedule(&spec.schedule)?;
    validate_payload(&spec.payload)?;
    validate_metadata(&spec.metadata)?;
    validate_policies(&spec.policies)
}

/// Most upstream jobs of one `after` dependency.
pub const MAX_UPSTREAM_JOBS: usize = 32;
/// Most attributes of a published event (and `match` pairs of a trigger).
pub const MAX_EVENT_ATTRIBUTES: usize = 64;
/// Longest event topic (or topic glob), characters.
pub const MAX_TOPIC_LEN: usize = 256;
/// Longest attribute key, characters.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 128;
/// Longest attribute value, bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Largest event payload, bytes (256 KiB).
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 256 * 1024;
/// Longest publish idempotency key, characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Checks a schedule: a time schedule compiles; an event trigger has a
/// valid topic glob and match pairs; a dependency names 1 to
/// [`MAX_UPSTREAM_JOBS`] distinct valid job ids.
pub fn validate_schedule(schedule: &ScheduleSpec) -> Result<()> {
    Schedule::compile(schedule).map_err(|e| invalid(e.to_string()))?;
    match schedule {
        ScheduleSpec::OnEvent { topic, matches } => {
            validate_topic(topic, "schedule_spec.on_event.topic", true)?;
            validate_attributes(matches, "schedule_spec.on_event.match")
        }
        ScheduleSpec::After { jobs, .. } => {
            if jobs.is_empty() || jobs.len() > MAX_UPSTREAM_JOBS {
                return Err(invalid(format!(
                    "schedule_spec.after.jobs: {} jobs; name 1 to {MAX_UPSTREAM_JOBS}",
                    jobs.len()
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for job in jobs {
                validate_id(job).map_err(|e| invalid(format!("schedule_spec.after.jobs: {e}")))?;
                if !seen.insert(job) {
                    return Err(invalid(format!(
                        "schedule_spec.after.jobs: {job:?} is listed twice"
                    )));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a topic (or, with `glob`, a topic glob that may hold `*` and
/// `?`): 1 to [`MAX_TOPIC_LEN`] characters of `[A-Za-z0-9._:/-]`.
pub fn validate_topic(topic: &str, field: &str, glob: bool) -> Result<()> {
    if topic.is_empty() || topic.chars().count() > MAX_TOPIC_LEN {
        return Err(invalid(format!(
            "{field}: must be 1 to {MAX_TOPIC_LEN} characters"
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/-".contains(c) || (glob && "*?".contains(c));
    if let Some(bad) = topic.chars().find(|c| !allowed(*c)) {
        let what = if glob {
            "[A-Za-z0-9._:/-*?]"
        } else {
            "[A-Za-z0-9._:/-]"
        };
        return Err(invalid(format!("{field}: {bad:?} is not allowed (use {what})")));
    }
    Ok(())
}

/// Checks event attributes (or a trigger's match pairs).
pub fn validate_attributes(attributes: &BTreeMap<String, String>, field: &str) -> Result<()> {
    if attributes.len() > MAX_EVENT_ATTRIBUTES {
        return Err(invalid(format!(
            "{field}: {} pairs, at most {MAX_EVENT_ATTRIBUTES}",
            attributes.len()
        )));
    }
    for (key, value) in attributes {
        if key.is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY_LEN {
            return Err(invalid(format!(
                "{field}: key {key:?} must be 1 to {MAX_ATTRIBUTE_KEY_LEN} characters"
            )));
        }
        if key.chars().any(char::is_control) || value.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{field}[{key:?}]: control characters are not allowed"
            )));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(invalid(format!(
                "{field}[{key:?}]: value longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks a publish: topic, attributes, payload size, idempotency key.
pub fn validate_publish(
    topic: &str,
    attributes: &BTreeMap<String, String>,
    payload: &[u8],
    idempotency_key: &str,
) -> Result<()> {
    validate_topic(topic, "topic", false)?;
    validate_attributes(attributes, "attributes")?;
    if payload.len() > MAX_EVENT_PAYLOAD_BYTES {
        return Err(invalid(format!(
            "payload: {} bytes, at most {MAX_EVENT_PAYLOAD_BYTES} (256 KiB)",
            payload.len()
        )));
    }
    if idempotency_key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN
        || idempotency_key.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "idempotency_key: at most {MAX_IDEMPOTENCY_KEY_LEN} characters, no control characters"
        )));
    }
    Ok(())
}

/// Checks a sink: name `[a-z0-9_-]{1,64}`, an http(s) URL, a job glob.
pub fn validate_sink(name: &str, url: &str, job: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(invalid("name: 1 to 64 characters of [a-z0-9_-]"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(format!("url: {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(format!(
            "url: {url:?} must be an http:// or https:// URL with a host"
        )));
    }
    if job.len() > MAX_TOPIC_LEN || job.chars().any(char::is_control) {
        return Err(invalid(format!(
            "job: at most {MAX_TOPIC_LEN} characters, no control characters"
        )));
    }
    Ok(())
}

/// Checks the fields a patch sets (update). Fields are independent, so checking
/// each one alone is the same as checking the patched spec.
pub fn validate_patch(patch: &JobPatch) -> Result<()> {
    if patch.is_empty() {
        return Err(invalid("update_mask: the update changes no field"));
    }
    if let Some(v) = &patch.job_type {
        validate_type(v)?;
    }
    if let Some(v) = &patch.owner_service {
        validate_owner(v)?;
    }
    if let Some(v) = &patch.schedule {
        validate_schedule(v)?;
    }
    if let Some(v) = &patch.payload {
        validate_payload(v)?;
    }
    if let Some(v) = &patch.metadata {
        validate_metadata(v)?;
    }
    if let Some(v) = &patch.policies {
        validate_policies(v)?;
    }
    Ok(())
}

/// Checks that a one-shot `schedule` (`At`) is later than `now_ms`, the clock
/// of the node taking the request. A time already past would store a job that
/// is complete at once, without a run and without a missed fire to count.
///
/// The API calls this before proposing (`api/one_shot.rs`); `State::apply`
/// never does, because the replicated core reads no clock: an `at` that
/// passes while its write is committed is still stored, as a completed job.
pub fn validate_at_ahead(schedule: &ScheduleSpec, now_ms: i64) -> Result<()> {
    let ScheduleSpec::At { at_ms } = schedule else {
        return Ok(());
    };
    if *at_ms > now_ms {
        return Ok(());
    }
    let rfc3339 = |ms: i64| {
        DateTime::from_timestamp_millis(ms).map_or_else(
            || format!("{ms} ms after the epoch"),
            |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        )
    };
    Err(invalid(format!(
        "schedule.at: {} is not in the future (now is {} on this node), so the job would never run; \
         give a later time, or to run a job now use `kairos job trigger` (TriggerJob)",
        rfc3339(*at_ms),
        rfc3339(now_ms)
    )))
}

fn validate_type(job_type: &str) -> Result<()> {
    if job_type.is_empty() {
        return Err(invalid("type: must not be empty (e.g. \"http\", \"noop\")"));
    }
    if job_type.len() > MAX_TYPE_LEN {
        return Err(invalid(format!("type: longer than {MAX_TYPE_LEN} characters")));
    }
    let ok_start = job_type.starts_with(|c: char| c.is_ascii_lowercase());
    let ok_chars = job_type
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if !ok_start || !ok_chars {
        return Err(invalid(format!(
            "type: {job_type:?} must start with a lowercase letter and contain only a-z, 0-9, '_', '-', '.'"
        )));
    }
    Ok(())
}

fn validate_owner(owner: &str) -> Result<()> {
    if owner.len() > MAX_OWNER_LEN {
        return Err(invalid(format!(
            "owner_service: longer than {MAX_OWNER_LEN} characters"
        )));
    }
    if owner.chars().any(char::is_control) {
        return Err(invalid("owner_service: must not contain control characters"));
    }
    Ok(())
}

fn validate_payload(payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(invalid(format!(
            "payload: {} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes (1 MiB)",
            payload.len()
        )));
    }
    Ok(())
}

fn validate_metadata(metadata: &Metadata) -> Result<()> {
    if metadata.labels.len() > MAX_LABELS {
        return Err(invalid(format!(
            "metadata.labels: {} labels, at most {MAX_LABELS}",
            metadata.labels.len()
        )));
    }
    for (key, value) in &metadata.labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_LEN
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            return Err(invalid(format!(
                "metadata.labels: key {key:?} must be 1-{MAX_LABEL_KEY_LEN} characters of a-z, A-Z, 0-9, '.', '_', '-', '/'"
            )));
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(invalid(format!(
                "metadata.labels: value of {key:?} is longer than {MAX_LABEL_VALUE_LEN} bytes"
            )));
        }
    }
    if metadata.fields_json.len() > MAX_FIELDS_JSON_BYTES {
        return Err(invalid(format!(
            "metadata.fields: larger than {MAX_FIELDS_JSON_BYTES} bytes"
        )));
    }
    Ok(())
}

fn validate_policies(p: &Policies) -> Result<()> {
    let r = &p.retry;
    if r.max_attempts == 0 || r.max_attempts > 100 {
        return Err(invalid(format!(
            "policies.retry.max_attempts: {} is not in 1..=100",
            r.max_attempts
        )));
    }
    if !(1_000..=100_000).contains(&r.backoff_coefficient_milli) {
        return Err(invalid(format!(
            "policies.retry.backoff_coefficient: {} is not in [1, 100]",
            format_thousandths(r.backoff_coefficient_milli)
        )));
    }
    if r.jitter_milli > 1_000 {
        return Err(invalid(format!(
            "policies.retry.jitter: {} is not in [0, 1]",
            format_thousandths(r.jitter_milli)
        )));
    }
    if r.initial_interval_ms == 0 {
        return Err(invalid("policies.retry.initial_interval: must be positive"));
    }
    if r.max_interval_ms < r.initial_interval_ms {
        return Err(invalid(
            "policies.retry.max_interval: must not be smaller than initial_interval",
        ));
    }
    let t = &p.timeouts;
    for (name, value) in [
        ("start_deadline", t.start_deadline_ms),
        ("attempt_timeout", t.attempt_timeout_ms),
        ("heartbeat_timeout", t.heartbeat_timeout_ms),
    ] {
        if value == 0 {
            return Err(invalid(format!("policies.timeouts.{name}: must be positive")));
        }
    }
    if p.catchup_window_ms > 30 * 24 * 3_600_000 {
        return Err(invalid("policies.catchup_window: longer than 30 days"));
    }
    if p.max_catchup > 10_000 {
        return Err(invalid(format!(
            "policies.max_catchup: {} is over 10000",
            p.max_catchup
        )));
    }
    if p.history.keep_succeeded > 1_000 || p.history.keep_failed > 1_000 {
        return Err(invalid(
            "policies.history: at most 1000 runs of each kind are kept",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            job_type: "noop".into(),
            owner_service: "billing".into(),
            schedule: ScheduleSpec::Cron {
                expr: "*/5 * * * *".into(),
                timezone: String::new(),
            },
            payload: vec![],
            metadata: Metadata::default(),
            policies: Policies::default().shared(),
            paused: false,
        }
    }

    fn message(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn ids() {
        for ok in ["a", "job-1", "A.b_c-9", &"x".repeat(MAX_ID_LEN)] {
            validate_id(ok).unwrap();
        }
        let table = [
            ("", "must not be empty"),
            ("a b", "contains ' '"),
            ("-a", "must start with a letter or digit"),
            ("jöb", "contains 'ö'"),
            ("a/b", "contains '/'"),
        ];
        for (id, want) in table {
            let m = message(validate_id(id));
            assert!(m.starts_with("id: ") && m.contains(want), "{id:?}: {m}");
        }
        let m = message(validate_id(&"x".repeat(MAX_ID_LEN + 1)));
        assert!(m.contains("too long"), "{m}");
    }

    #[test]
    fn spec_fields_name_the_field() {
        validate_spec(&spec()).unwrap();
        type Mutation = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.job_type.clear()), "type: must not be empty"),
            (Box::new(|s| s.job_type = "Http".into()), "type: \"Http\""),
            (
                Box::new(|s| s.payload = vec![0; MAX_PAYLOAD_BYTES + 1]),
                "payload: 1048577 bytes is over the limit",
            ),
            (
                Box::new(|s| {
                    s.schedule = ScheduleSpec::Cron {
                        expr: "61 * * * *".into(),
                        timezone: String::new(),
                    }
                }),
                "schedule",
            ),
            (
                Box::new(|s| {
                    s.schedule = ScheduleSpec::Cron {
                        expr: "* * * * *".into(),
                        timezone: "Mars/Base".into(),
                    }
                }),
                "Mars/Base",
            ),
            (
                Box::new(|s| std::sync::Arc::make_mut(&mut s.policies).retry.max_attempts = 0),
                "policies.retry.max_attempts",
            ),
            (
                Box::new(|s| std::sync::Arc::make_mut(&mut s.policies).retry.jitter_milli = 2_000),
                "policies.retry.jitter",
            ),
            (
                Box::new(|s| {
                    std::sync::Arc::make_mut(&mut s.policies)
                        .timeouts
                        .attempt_timeout_ms = 0
                }),
                "policies.timeouts.attempt_timeout",
            ),
            (
                Box::new(|s| {
                    s.metadata.labels.insert("bad key".into(), "v".into());
                }),
                "metadata.labels",
            ),
        ];
        for (mutate, want) in cases {
            let mut s = spec();
            mutate(&mut s);
            let m = message(validate_spec(&s));
            assert!(m.contains(want), "want {want:?} in {m:?}");
        }
    }

    #[test]
    fn payload_at_limit_is_accepted() {
        let mut s = spec();
        s.payload = vec![7; MAX_PAYLOAD_BYTES];
        validate_spec(&s).unwrap();
    }

    #[test]
    fn empty_patch_is_refused() {
        let m = message(validate_patch(&JobPatch::default()));
        assert!(m.contains("changes no field"), "{m}");
        validate_patch(&JobPatch {
            paused: Some(true),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn a_one_shot_must_be_after_now() {
        // 2026-01-01T09:30:00Z.
        let now = 1_767_259_800_000;
        let at = |at_ms| ScheduleSpec::At { at_ms };
        validate_at_ahead(&at(now + 1), now).unwrap();
        for past in [now, now - 1, 0, -1] {
            assert!(validate_at_ahead(&at(past), now).is_err(), "{past}");
        }
        let m = message(validate_at_ahead(&at(now - 60_000), now));
        assert_eq!(
            m,
            "schedule.at: 2026-01-01T09:29:00Z is not in the future (now is 2026-01-01T09:30:00Z \
             on this node), so the job would never run; give a later time, or to run a job now \
             use `kairos job trigger` (TriggerJob)"
        );
        let m = message(validate_at_ahead(&at(now), now + 250));
        assert!(
            m.contains("(now is 2026-01-01T09:30:00.250Z on this node)"),
            "{m}"
        );
        // Other schedules have no "past".
        validate_at_ahead(&spec().schedule, now).unwrap();
        validate_at_ahead(
            &ScheduleSpec::Every {
                interval_ms: 60_000,
                phase_ms: 0,
            },
            now,
        )
        .unwrap();
    }
}
