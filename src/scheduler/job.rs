//! Jobs: what a client asks Kairos to run, when, and under which policies.
//!
//! A [`Job`] is the stored record; its user-controlled part is the [`JobSpec`], and
//! everything else (version, timestamps, principals, fire bookkeeping) is derived
//! by the state machine from the commands it applies. Times are Unix
//! milliseconds (`i64`) stamped by the leader into each command, never read from
//! a clock here.
//!
//! Policies are stored *resolved*: defaults are filled in when the job is
//! created or updated, so a later change of a default never changes the meaning
//! of a stored job.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::schedule::ScheduleSpec;

/// A job id: 1-128 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub type JobId = String;

/// Largest accepted `payload`, in bytes (1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Longest accepted job id, in characters.
pub const MAX_ID_LEN: usize = 128;

/// The fields of a job a client controls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Handler name (e.g. `http`, `noop`).
    pub job_type: String,
    /// The service that owns the job; free text, used for filtering.
    pub owner_service: String,
    /// When the job fires.
    pub schedule: ScheduleSpec,
    /// Opaque handler input, at most [`MAX_PAYLOAD_BYTES`]. Encoded as bytes
    /// (the same postcard form as a sequence of `u8`, written in one copy
    /// instead of one call per byte).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Labels and free-form fields, not interpreted by Kairos.
    pub metadata: Metadata,
    /// Overlap, catch-up, retry, timeout and history policies (resolved).
    /// Behind an `Arc`, and the default ones shared by every job that has
    /// them ([`Policies::shared`]): 112 bytes per job otherwise.
    #[serde(deserialize_with = "shared_policies")]
    pub policies: Arc<Policies>,
    /// A paused job keeps its definition but does not fire.
    pub paused: bool,
}

/// Owner-supplied annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Small key/value labels.
    pub labels: BTreeMap<String, String>,
    /// Free-form fields as compact JSON object text; empty when there are none.
    pub fields_json: String,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Client-chosen unique id.
    pub id: JobId,
    /// The client-controlled fields.
    pub spec: JobSpec,
    /// Incremented on every change; updates must name the current one.
    pub version: u64,
    /// When the job was created (leader time, Unix ms).
    pub created_at_ms: i64,
    /// When the job last changed (leader time, Unix ms).
    pub updated_at_ms: i64,
    /// Principal that created the job (interned: a few principals create
    /// most jobs, see [`intern_principal`]).
    #[serde(deserialize_with = "interned_principal")]
    pub created_by: Arc<str>,
    /// Principal of the latest change (interned).
    #[serde(deserialize_with = "interned_principal")]
    pub updated_by: Arc<str>,
    /// Nominal time of the latest fire, if any (Unix ms).
    pub last_fired_ms: Option<i64>,
    /// Next nominal fire time, or `None` when the schedule is exhausted (Unix ms).
    pub next_fire_ms: Option<i64>,
}

/// Lifecycle state shown to clients; derived, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Fires on its schedule.
    Active,
    /// Paused by a client.
    Paused,
    /// The schedule has no future fire.
    Completed,
}

impl Job {
    /// The job's lifecycle state.
    pub fn status(&self) -> JobStatus {
        if self.spec.paused {
            JobStatus::Paused
        } else if self.next_fire_ms.is_none() && !self.spec.schedule.is_triggered() {
            JobStatus::Completed
        } else {
            JobStatus::Active
        }
    }
}

/// What to do when a fire is due while a run of the same job is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// Drop the new fire (counted as skipped).
    #[default]
    Skip,
    /// Keep one pending fire, run it when the current run ends.
    BufferOne,
    /// Keep every pending fire, run them in order.
    BufferAll,
    /// Cancel the running run and start the new one.
    CancelOther,
    /// Run concurrently.
    AllowAll,
}

/// What to do with fires missed while the cluster had no leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Catchup {
    /// Run the most recent missed fire once.
    #[default]
    Latest,
    /// Run every missed fire, bounded by `max_catchup`.
    All,
    /// Run none; missed fires are only counted.
    None,
}

/// Retry of failed attempts with exponential back-off.
///
/// The coefficient and the jitter are fixed-point numbers in thousandths
/// (precision 0.001), so that the back-off every replica computes is
/// integer arithmetic (`run::retry_delay_ms`); the API converts the doubles
/// clients send ([`to_thousandths`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total including the first.
    pub max_attempts: u32,
    /// Delay before the first retry, ms.
    pub initial_interval_ms: u64,
    /// Multiplier per retry, in thousandths (2_000 = ×2; at least 1_000).
    #[serde(with = "thousandths_as_f64")]
    pub backoff_coefficient_milli: u32,
    /// Upper bound of a delay, ms.
    pub max_interval_ms: u64,
    /// Random spread of each delay, in thousandths of it (0 to 1_000).
    #[serde(with = "thousandths_as_f64")]
    pub jitter_milli: u32,
    /// Error kinds that fail a run without retrying.
    pub non_retryable_errors: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 1_000,
            backoff_coefficient_milli: 2_000,
            max_interval_ms: 100_000,
            jitter_milli: 100,
            non_retryable_errors: Vec::new(),
        }
    }
}

/// `value` in whole thousandths, rounded to the nearest; `None` when it is
/// not finite, negative, or more than `u32::MAX` thousandths.
pub fn to_thousandths(value: f64) -> Option<u32> {
    let scaled = (value * 1000.0).round();
    (scaled >= 0.0 && scaled <= f64::from(u32::MAX)).then_some(scaled as u32)
}

/// A number of thousandths as a decimal, for messages: 1_500 is "1.5".
pub fn format_thousandths(thousandths: u32) -> String {
    let (whole, fraction) = (thousandths / 1000, thousandths % 1000);
    if fraction == 0 {
        return whole.to_string();
    }
    format!("{whole}.{fraction:03}").trim_end_matches('0').to_string()
}

/// The encoding of a number in thousandths: the `f64` it stands for, which
/// is how logs and snapshots have always held the retry coefficient and
/// jitter (so they read, and hash for request ids, as before). Both
/// directions are one exactly rounded IEEE operation, the same on every
/// platform, and a value encoded here decodes to itself; no computation
/// uses the `f64`.
mod thousandths_as_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(thousandths: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(f64::from(*thousandths) / 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let value = f64::deserialize(deserializer)?;
        super::to_thousandths(value)
            .ok_or_else(|| serde::de::Error::custom(format!("{value} is not a number of thousandths")))
    }
}

/// Time limits of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Longest wait from nominal time to dispatch, ms.
    pub start_deadline_ms: u64,
    /// Longest single attempt, ms.
    pub attempt_timeout_ms: u64,
    /// Longest silence of a running attempt before its lease expires, ms.
    pub heartbeat_timeout_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            start_deadline_ms: 60_000,
            attempt_timeout_ms: 600_000,
            heartbeat_timeout_ms: 30_000,
        }
    }
}

/// How many finished runs are kept per job (counters are never truncated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLimits {
    /// Succeeded runs kept.
    pub keep_succeeded: u32,
    /// Failed runs kept.
    pub keep_failed: u32,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            keep_succeeded: 20,
            keep_failed: 20,
        }
    }
}

/// All policies of a job, resolved (no "unset" values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    /// Overlap policy.
    pub overlap: Overlap,
    /// Catch-up policy.
    pub catchup: Catchup,
    /// How far back missed fires are considered, ms.
    pub catchup_window_ms: u64,
    /// Cap on fires caught up with [`Catchup::All`].
    pub max_catchup: u32,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// History retention.
    pub history: HistoryLimits,
}

/// Most distinct principals interned; past it, each job keeps its own copy.
const MAX_INTERNED_PRINCIPALS: usize = 4_096;

/// Principals seen, shared by the jobs that name them: a memo of equal
/// strings, outside the replicated content (sharing a string changes no
/// value), bounded by [`MAX_INTERNED_PRINCIPALS`].
static PRINCIPALS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> =
    std::sync::LazyLock::new(Default::default);

/// `principal` as a shared string: one allocation for every job of a
/// principal instead of two per job (`created_by`, `updated_by`).
pub fn intern_principal(principal: &str) -> Arc<str> {
    let mut seen = PRINCIPALS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = seen.get(principal) {
        return shared.clone();
    }
    let shared: Arc<str> = Arc::from(principal);
    if seen.len() < MAX_INTERNED_PRINCIPALS {
        seen.insert(shared.clone());
    }
    shared
}

/// Decodes a principal, interned.
fn interned_principal<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
    let principal = String::deserialize(deserializer)?;
    Ok(intern_principal(&principal))
}

/// The default policies, shared.
static DEFAULT_POLICIES: std::sync::LazyLock<Arc<Policies>> = std::sync::LazyLock::new(Arc::default);

impl Policies {
    /// `self` behind an `Arc`: the shared one when they are the defaults.
    pub fn shared(self) -> Arc<Policies> {
        if self == **DEFAULT_POLICIES {
            DEFAULT_POLICIES.clone()
        } else {
            Arc::new(self)
        }
    }
}

/// Decodes a job's policies, sharing the defaults (every replica decodes
/// the jobs of the log and of snapshots).
fn shared_policies<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<Policies>, D::Error> {
    Policies::deserialize(deserializer).map(Policies::shared)
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            overlap: Overlap::default(),
            catchup: Catchup::default(),
            catchup_window_ms: 3_600_000,
            max_catchup: 100,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            history: HistoryLimits::default(),
        }
    }
}

/// A partial update of a job's spec: `Some` fields replace the stored ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobPatch {
    /// New handler name.
    pub job_type: Option<String>,
    /// New owner.
    pub owner_service: Option<String>,
    /// New schedule (takes effect from the update time; never retroactive).
    pub schedule: Option<ScheduleSpec>,
    /// New payload.
    #[serde(with = "serde_bytes")]
    pub payload: Option<Vec<u8>>,
    /// New metadata.
    pub metadata: Option<Metadata>,
    /// New policies.
    pub policies: Option<Policies>,
    /// Pause or resume.
    pub paused: Option<bool>,
}

impl JobPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == JobPatch::default()
    }

    /// Applies the patch to `spec` in place.
    pub fn apply_to(self, spec: &mut JobSpec) {
        let JobPatch {
            job_type,
            owner_service,
            schedule,
            payload,
            metadata,
            policies,
            paused,
        } = self;
        if let Some(v) = job_type {
            spec.job_type = v;
        }
        if let Some(v) = owner_service {
            spec.owner_service = v;
        }
        if let Some(v) = schedule {
            spec.schedule = v;
        }
        if let Some(v) = payload {
            spec.payload = v;
        }
        if let Some(v) = metadata {
            spec.metadata = v;
        }
        if let Some(v) = policies {
            spec.policies = v.shared();
        }
        if let Some(v) = paused {
            spec.paused = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policies_are_shared_when_built_and_when_decoded_and_others_are_not() {
        let spec = |policies: Policies| JobSpec {
            job_type: "noop".into(),
            owner_service: String::new(),
            schedule: ScheduleSpec::At { at_ms: 0 },
            payload: vec![],
            metadata: Metadata::default(),
            policies: policies.shared(),
            paused: false,
        };
        let (a, b) = (spec(Policies::default()), spec(Policies::default()));
        assert!(Arc::ptr_eq(&a.policies, &b.policies));
        let decoded: JobSpec = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&decoded.policies, &a.policies));
        let custom = Policies {
            max_catchup: 7,
            ..Policies::default()
        };
        let c = spec(custom.clone());
        assert!(!Arc::ptr_eq(&c.policies, &a.policies));
        let decoded: JobSpec = postcard::from_bytes(&postcard::to_allocvec(&c).unwrap()).unwrap();
        assert_eq!(*decoded.policies, custom);
    }

    #[test]
    fn principals_are_interned_when_recorded_and_when_decoded() {
        let a = intern_principal("interning-test-principal");
        let b = intern_principal("interning-test-principal");
        assert!(Arc::ptr_eq(&a, &b));
        let decoded: Arc<str> = interned_principal(&mut postcard::Deserializer::from_bytes(
            &postcard::to_allocvec("interning-test-principal").unwrap(),
        ))
        .unwrap();
        assert!(Arc::ptr_eq(&decoded, &a));
        assert!(!Arc::ptr_eq(&intern_principal("someone-else"), &a));
    }
    #[test]
    fn thousandths_encode_as_the_doubles_older_versions_wrote_and_decode_to_themselves() {
        // Every valid coefficient and jitter survives the round trip exactly.
        for thousandths in 0..=100_000u32 {
            let policy = RetryPolicy {
                backoff_coefficient_milli: thousandths,
                jitter_milli: thousandths,
                ..RetryPolicy::default()
            };
            let bytes = postcard::to_allocvec(&policy).unwrap();
            assert_eq!(postcard::from_bytes::<RetryPolicy>(&bytes).unwrap(), policy);
        }
        // The bytes are those of the doubles: 2.0 and 0.1 as older versions stored them.
        let doubles = (3u32, 1_000u64, 2.0f64, 100_000u64, 0.1f64, Vec::<String>::new());
        let bytes = postcard::to_allocvec(&RetryPolicy::default()).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&doubles).unwrap());
        assert_eq!(to_thousandths(1.0005), Some(1_001));
        assert_eq!(to_thousandths(0.0004), Some(0));
        for refused in [f64::NAN, f64::INFINITY, -0.5, 1e10] {
            assert_eq!(to_thousandths(refused), None, "{refused}");
        }
        assert_eq!(
            [0, 1_000, 1_500, 1_001, 100_000, 250].map(format_thousandths),
            ["0", "1", "1.5", "1.001", "100", "0.25"]
        );
    }

    #[test]
    fn payloads_encode_as_bytes_exactly_like_the_sequences_older_versions_wrote() {
        // Logs and snapshots of older versions hold payloads as sequences of u8.
        let payload: Vec<u8> = (0..=255).collect();
        let as_seq = postcard::to_allocvec(&payload).unwrap();
        let as_bytes = postcard::to_allocvec(&serde_bytes::Bytes::new(&payload)).unwrap();
        assert_eq!(as_seq, as_bytes);
        let some = Some(payload.clone());
        let some_bytes = Some(serde_bytes::ByteBuf::from(payload));
        assert_eq!(
            postcard::to_allocvec(&some).unwrap(),
            postcard::to_allocvec(&some_bytes).unwrap()
        );
    }
}
