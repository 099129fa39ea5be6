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

/// Largest output tail kept per run, bytes.
pub const MAX_OUTPUT_TAIL: usize = 4 * 1024;

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
}

impl Run {
    /// The idempotency key handed to handlers: `job_id:nominal_time` (RFC 3339).
    pub fn idempotency_key(&self) -> String {
        let nominal = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(self.nominal_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| self.nominal_ms.to_string());
        format!("{}:{nominal}", self.job_id)
    }
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

/// The delay before attempt `attempt + 1` after attempt `attempt` (1-based)
/// failed: `initial * coefficient^(attempt-1)`, capped at `max_interval`, with
/// a jitter of ±`jitter` derived deterministically from `seed` (the run id), so
/// every replica computes the same time.
pub fn retry_delay_ms(policy: &RetryPolicy, attempt: u32, seed: u64) -> u64 {
    let exponent = attempt.saturating_sub(1).min(64) as i32;
    let base = policy.initial_interval_ms as f64 * policy.backoff_coefficient.powi(exponent);
    let capped = base.min(policy.max_interval_ms as f64);
    // splitmix64 of (seed, attempt): a fixed, portable pseudo-random number in [0, 1).
    let mut z = seed.wrapping_add(u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    let factor = 1.0 + policy.jitter * (2.0 * unit - 1.0);
    (capped * factor).max(0.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_deterministically() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_interval_ms: 1_000,
            backoff_coefficient: 2.0,
            max_interval_ms: 5_000,
            jitter: 0.0,
            non_retryable_errors: vec![],
        };
        let delays: Vec<u64> = (1..=5).map(|a| retry_delay_ms(&policy, a, 7)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000]);
        let jittered = RetryPolicy {
            jitter: 0.1,
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
        };
        assert_eq!(run.idempotency_key(), "report:2026-01-01T00:00:00.000Z");
    }
}
