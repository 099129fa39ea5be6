//! Runs: one execution of a job for one nominal fire time, and its attempts.
//!
//! A [`Run`] is created by the state machine when a fire is applied (from a
//! `FireBatch`, a trigger or a backfill) and identified by a [`RunId`] drawn
//! from a replicated counter. At most one scheduled run exists per
//! `(job_id, nominal_ms)`: the job's `last_fired_ms` only moves forward, so a
//! second proposal of the same fire is refused.
//!
//! Lifecycle: `Pending` (waiting to be dispatched, possibly until a retry's
//! `not_before_ms`) → `Queued` (assigned to a node, lease running) → `Running`
//! (the worker confirmed the start with a heartbeat) → one terminal status.
//! Every attempt carries a fencing token — the Raft log index of the entry
//! that started it — and heartbeats or results with any other token are
//! refused, so a worker that lost its lease cannot overwrite a newer attempt.

use serde::{Deserialize, Serialize};

use super::job::{JobId, RetryPolicy};

/// A run's id, unique in the cluster, increasing in creation order.
pub type RunId = u64;

/// Largest output tail a built-in handler reports, bytes.
pub const MAX_OUTPUT_TAIL: usize = 4 * 1024;
/// Largest output (or failure message) kept per run, bytes: what an
/// external worker may report; more is refused by the API.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// Where a run is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RunStatus {
    /// Created, waiting to be dispatched.
    Pending,
    /// Assigned to a node; the worker has not confirmed the start yet.
    Queued,
    /// A worker is executing it.
    Running,
    /// The handler succeeded.
    Succeeded,
    /// Failed for good: not retryable, or out of attempts (dead letter).
    Failed,
    /// The last attempt's lease or time limit expired and no attempt is left.
    TimedOut,
    /// Cancelled by a client or by the overlap policy `cancel_other`.
    Cancelled,
    /// Not run: dropped by the overlap policy.
    Skipped,
}

impl RunStatus {
    /// True once the run will never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Queued | RunStatus::Running)
    }

    /// True while a worker may be executing the run.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// Why a run exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunCause {
    /// The schedule fired (on time or caught up).
    Schedule,
    /// A client triggered the job now.
    Trigger,
    /// A client backfilled a past range.
    Backfill,
    /// A published event matched the job's trigger (format version 6 on).
    Event,
    /// Upstream runs ended as the job's dependency asks (format version 6 on).
    Dependency,
}

/// What created a run of an event-triggered or dependent job: the event
/// it carries and the upstream run it follows. Kept beside the run in the
/// state (format version 6 on), since a run's own encoding is fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTrigger {
    /// The published event's id (inherited along a dependency chain); empty
    /// when none.
    pub event_id: String,
    /// The event's payload.
    #[serde(with = "serde_bytes")]
    pub event_payload: Vec<u8>,
    /// The upstream run whose end created this run.
    pub upstream_run: Option<RunId>,
    /// What follows `job_id:` in the run's idempotency key: the event id, or
    /// for a dependency `upstream-<run id>` (mode any) or the nominal time.
    pub key: String,
}

/// One execution of a job for one nominal time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Unique id.
    pub id: RunId,
    /// The job it runs.
    pub job_id: JobId,
    /// The fire time it stands for, Unix ms.
    pub nominal_ms: i64,
    /// Why it was created.
    pub cause: RunCause,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Attempts started so far (0 while the first is pending).
    pub attempt: u32,
    /// Fencing token of the current attempt (log index of its start entry), 0 before.
    pub token: u64,
    /// Node executing the current attempt.
    pub node: Option<u64>,
    /// Do not dispatch before this time (retry back-off), Unix ms.
    pub not_before_ms: i64,
    /// The current attempt's lease ends here unless a heartbeat extends it, Unix ms.
    pub lease_expires_ms: i64,
    /// When the current attempt was assigned, Unix ms.
    pub started_at_ms: Option<i64>,
    /// When the run reached a terminal status, Unix ms.
    pub finished_at_ms: Option<i64>,
    /// Last error, e.g. the handler's message or "lease expired".
    pub error: String,
    /// Last bytes of the handler's output (at most [`MAX_OUTPUT_TAIL`]).
    pub output_tail: String,
    /// Log index of the entry that last changed this run (as etcd's
    /// `mod_revision`); `WatchRuns` positions are built from it.
    pub revision: u64,
    /// The external worker of the current (or last) attempt, if it had
    /// one. Not in the encoding of a run (whose layout format version 4
    /// fixed): the state keeps it apart and sets it here.
    #[serde(skip)]
    pub worker: Option<String>,
    /// The event or upstream run that created it, if any. Not in the
    /// encoding of a run either: kept apart like `worker`.
    #[serde(skip)]
    pub trigger: Option<std::sync::Arc<RunTrigger>>,
}

impl Run {
    /// The published event behind the run (inherited along a dependency
    /// chain); empty when none.
    pub fn event_id(&self) -> &str {
        self.trigger.as_deref().map_or("", |t| t.event_id.as_str())
    }

    /// The payload of the published event behind the run (empty when none).
    pub fn event_payload(&self) -> &[u8] {
        self.trigger
            .as_deref()
            .map_or(&[], |t| t.event_payload.as_slice())
    }

    /// The idempotency key handed to handlers: `job_id:nominal_time` (RFC
    /// 3339), or `job_id:event_id` for a run an event created.
    pub fn idempotency_key(&self) -> String {
        if let Some(trigger) = self.trigger.as_ref().filter(|t| !t.key.is_empty()) {
            return format!("{}:{}", self.job_id, trigger.key);
        }
        format!("{}:{}", self.job_id, nominal_key(self.nominal_ms))
    }
}

/// A nominal time as idempotency keys write it: RFC 3339, UTC, ms.
pub fn nominal_key(nominal_ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(nominal_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| nominal_ms.to_string())
}

/// How an attempt ended, as reported by its worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// The handler succeeded.
    Succeeded,
    /// The handler failed.
    Failed {
        /// Error kind (matched against `non_retryable_errors`), e.g. `http_4xx`.
        kind: String,
        /// Human-readable message.
        message: String,
        /// False when the handler knows a retry cannot help.
        retryable: bool,
    },
}

impl AttemptOutcome {
    /// The outcome's metric label: `succeeded`, or the failure's kind.
    pub fn label(&self) -> String {
        match self {
            AttemptOutcome::Succeeded => "succeeded".to_string(),
            AttemptOutcome::Failed { kind, .. } => kind.clone(),
        }
    }
}

/// One attempt's result as a worker reports it (see `Command::FinishAttempts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// Which run.
    pub run_id: RunId,
    /// The attempt's fencing token.
    pub token: u64,
    /// Success or failure.
    pub outcome: AttemptOutcome,
    /// Last output of the handler (truncated to 4 KiB when applied).
    pub output_tail: String,
}

/// Per-job counters; never truncated by history retention.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounters {
    /// Runs created (scheduled, triggered or backfilled).
    pub runs_created: u64,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Runs that failed for good.
    pub failed: u64,
    /// Runs whose last attempt timed out.
    pub timed_out: u64,
    /// Runs cancelled.
    pub cancelled: u64,
    /// Fires dropped by the overlap policy.
    pub skipped: u64,
    /// Fires not run because of the catch-up policy or window, or a missed start deadline.
    pub missed: u64,
    /// Attempts retried after a failure or an expired lease.
    pub retries: u64,
}

/// Fractions of a millisecond the back-off keeps between multiplications
/// (its delays are exact to 10⁻⁶ ms before the final rounding).
const BACKOFF_SCALE: u128 = 1_000_000;
/// The jitter's random draw is a 32-bit fraction: `r / 2³²` for `r` in `0..2³²`.
const JITTER_DRAW_BITS: u32 = 32;

/// The delay before attempt `attempt + 1` after attempt `attempt` (1-based)
/// failed: `initial × coefficient^(attempt-1)` (the exponent capped at 64),
/// capped at `max_interval`, times `1 ± jitter` drawn deterministically from
/// `seed` (the run id) and the attempt, rounded to the nearest ms (halves
/// up). Integer arithmetic throughout — the coefficient and jitter are
/// thousandths — and saturating, so every replica on every platform computes
/// the same time.
pub fn retry_delay_ms(policy: &RetryPolicy, attempt: u32, seed: u64) -> u64 {
    // The back-off in 10⁻⁶ ms: at most u64::MAX × 10⁶ < 2⁸⁴, times a
    // coefficient of at most 2³² before the loop stops, so u128 never overflows.
    let cap = u128::from(policy.max_interval_ms) * BACKOFF_SCALE;
    let mut delay = u128::from(policy.initial_interval_ms) * BACKOFF_SCALE;
    for _ in 0..attempt.saturating_sub(1).min(64) {
        if delay >= cap {
            break;
        }
        delay = delay * u128::from(policy.backoff_coefficient_milli) / 1000;
    }
    let capped = delay.min(cap);
    // The jitter factor is `1 + jitter × (2u - 1)` for a draw `u` in [0, 1):
    // as a fraction `factor / denominator`, with `factor` in [0, 2 × denominator).
    let draw = i128::from(splitmix64(seed, attempt) >> (64 - JITTER_DRAW_BITS));
    let half_range = 1i128 << (JITTER_DRAW_BITS - 1);
    let jitter = i128::from(policy.jitter_milli.min(1000));
    let denominator = 1000i128 << JITTER_DRAW_BITS;
    let factor = denominator + jitter * 2 * (draw - half_range);
    // capped < 2⁸⁴ and factor < 2⁴³: the product fits in u128.
    let factor = u128::try_from(factor).unwrap_or(0);
    let divisor = (denominator as u128) * BACKOFF_SCALE;
    let ms = (capped * factor + divisor / 2) / divisor;
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// splitmix64 of (`seed`, `attempt`): a fixed, portable pseudo-random number.
fn splitmix64(seed: u64, attempt: u32) -> u64 {
    let mut z = seed.wrapping_add(u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_deterministically() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_interval_ms: 1_000,
            backoff_coefficient_milli: 2_000,
            max_interval_ms: 5_000,
            jitter_milli: 0,
            non_retryable_errors: vec![],
        };
        let delays: Vec<u64> = (1..=5).map(|a| retry_delay_ms(&policy, a, 7)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000]);
        let jittered = RetryPolicy {
            jitter_milli: 100,
            ..policy
        };
        for seed in 0..200 {
            let d = retry_delay_ms(&jittered, 2, seed);
            assert!((1_800..=2_200).contains(&d), "seed {seed}: {d}");
            assert_eq!(d, retry_delay_ms(&jittered, 2, seed), "same inputs, same delay");
        }
        let spread: std::collections::BTreeSet<u64> =
            (0..200).map(|s| retry_delay_ms(&jittered, 2, s)).collect();
        assert!(spread.len() > 50, "jitter spreads the delays");
    }

    #[test]
    fn backoff_is_exact_integer_arithmetic_and_saturates() {
        let policy = |coefficient_milli: u32, max_interval_ms: u64, jitter_milli: u32| RetryPolicy {
            max_attempts: 100,
            initial_interval_ms: 1_000,
            backoff_coefficient_milli: coefficient_milli,
            max_interval_ms,
            jitter_milli,
            non_retryable_errors: vec![],
        };
        let delays = |p: &RetryPolicy, attempts: &[u32], seed: u64| -> Vec<u64> {
            attempts.iter().map(|&a| retry_delay_ms(p, a, seed)).collect()
        };
        // ×1.5: fractions carry over and a half rounds up (5,062.5 -> 5,063).
        assert_eq!(
            delays(&policy(1_500, 1_000_000, 0), &[1, 2, 3, 4, 5, 6, 7], 7),
            [1_000, 1_500, 2_250, 3_375, 5_063, 7_594, 11_391]
        );
        // ×1.001, the finest coefficient; the exponent stops at 64 (attempt 65 on).
        assert_eq!(
            delays(&policy(1_001, 1_000_000, 0), &[1, 2, 3, 10, 100], 7),
            [1_000, 1_001, 1_002, 1_009, 1_066]
        );
        // Jitter ±10 % around 4,000 ms, fixed by (run id, attempt).
        let jittered = policy(2_000, 100_000, 100);
        assert_eq!(
            [1, 2, 3].map(|seed| retry_delay_ms(&jittered, 3, seed)),
            [4_377, 4_077, 4_090]
        );
        let wide = RetryPolicy {
            initial_interval_ms: 250,
            ..policy(3_000, 60_000, 500)
        };
        assert_eq!(
            delays(&wide, &[1, 2, 3, 4, 5], 42),
            [310, 495, 1_752, 5_698, 10_895]
        );
        // Saturation: the largest attempt, no cap, the largest jitter.
        assert_eq!(retry_delay_ms(&policy(2_000, u64::MAX, 0), u32::MAX, 1), u64::MAX);
        assert_eq!(
            retry_delay_ms(&policy(100_000, u64::MAX, 1_000), u32::MAX, 1),
            9_969_656_139_639_422_975
        );
        assert_eq!(
            retry_delay_ms(&policy(100_000, u64::MAX, 1_000), u32::MAX, 2),
            16_598_194_710_766_419_967
        );
        // ×1 never grows, however many attempts.
        assert_eq!(retry_delay_ms(&policy(1_000, 100_000, 0), u32::MAX, 9), 1_000);
    }

    #[test]
    fn idempotency_key_names_job_and_nominal_time() {
        let run = Run {
            id: 1,
            job_id: "report".into(),
            nominal_ms: 1_767_225_600_000,
            cause: RunCause::Schedule,
            status: RunStatus::Pending,
            attempt: 0,
            token: 0,
            node: None,
            not_before_ms: 0,
            lease_expires_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            error: String::new(),
            output_tail: String::new(),
            revision: 0,
            worker: None,
            trigger: None,
        };
        assert_eq!(run.idempotency_key(), "report:2026-01-01T00:00:00.000Z");
    }
}
