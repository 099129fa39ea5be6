//! Waiting for a wall-clock time.
//!
//! Fire times, lease deadlines and the instant a handler committed ahead
//! may begin are wall-clock times (Unix ms), but a node sleeps on tokio's
//! monotonic clock. A sleep computed once as "the wall-clock time minus
//! now" goes wrong when the wall clock steps while it runs (an NTP
//! correction, an operator's `date -s`): a clock that was behind and is set
//! right would still sleep the whole old difference, so a fire or a handler
//! could start minutes late. Every such wait here therefore sleeps at most
//! [`RECHECK`] at a time and reads the wall clock again: a step either way
//! is followed within a second.

use std::time::Duration;

/// Longest sleep between two readings of the wall clock.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The wall-clock time now, Unix ms.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How long to sleep towards the wall-clock time `at_ms` when the clock
/// reads `now_ms`: until then, but at most [`RECHECK`] (zero when it has
/// come).
pub fn next_sleep(at_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms).max(0) as u64).min(RECHECK)
}

/// Returns once the wall clock reads `at_ms` or later, following any step
/// of the clock within [`RECHECK`].
pub async fn sleep_until(at_ms: i64) {
    loop {
        let sleep = next_sleep(at_ms, now_ms());
        if sleep.is_zero() {
            return;
        }
        tokio::time::sleep(sleep).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000;

    #[test]
    fn sleeps_towards_the_time_but_never_longer_than_the_recheck() {
        assert_eq!(next_sleep(T0 + 300, T0), Duration::from_millis(300));
        assert_eq!(next_sleep(T0, T0), Duration::ZERO);
        assert_eq!(next_sleep(T0, T0 + 5), Duration::ZERO);
        // A clock that stepped 90 s back: read again within a second.
        assert_eq!(next_sleep(T0 + 1_000, T0 - 89_000), RECHECK);
    }

    #[tokio::test]
    async fn a_time_that_has_passed_returns_at_once() {
        tokio::time::timeout(Duration::from_secs(5), sleep_until(now_ms() - 1))
            .await
            .expect("no sleep for a past time");
    }
}
