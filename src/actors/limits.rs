//! Per-type dispatch limits: a cap on concurrent runs and a token-bucket rate.
//!
//! An operator limits a job type cluster-wide, e.g. at most 20 `http` runs at
//! once and at most 50 started per second with bursts of 100:
//!
//! ```text
//! --type-limits "http:concurrency=20,rate=50,burst=100;exec:concurrency=2"
//! ```
//!
//! The leader's dispatcher enforces them with a [`Limiter`]: before it starts
//! a run of a limited type it checks that fewer than `concurrency` runs of the
//! type are queued or running in the replicated state, then takes one token
//! from the type's bucket. A run refused by a limit stays pending (it counts
//! in the queue depth) and is looked at again on the next tick. Time is passed
//! in, so the limiter is deterministic and tested without a clock.
//!
//! IMPLEMENTATION CAVEATS: the limits are the leader's configuration (give
//! every node the same), and a new leader starts with full buckets, so a
//! failover can let one extra burst through.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The limits of one job type.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TypeLimit {
    /// At most this many runs of the type queued or running at once.
    pub concurrency: Option<u64>,
    /// At most this many runs started per second, on average.
    pub rate_per_sec: Option<f64>,
    /// Tokens the bucket holds: starts allowed at once after a quiet spell
    /// (default: one second's worth of `rate_per_sec`, at least 1).
    pub burst: Option<u64>,
}

/// Limits by job type.
pub type TypeLimits = BTreeMap<String, TypeLimit>;

/// Parses `type:key=value,...;type:...` with keys `concurrency`, `rate`
/// (starts per second) and `burst`.
pub fn parse_type_limits(value: &str) -> Result<TypeLimits> {
    let mut limits = TypeLimits::new();
    for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: String| Error::InvalidArgument(format!("--type-limits: {part:?}: {why}"));
        let (job_type, settings) = part
            .split_once(':')
            .ok_or_else(|| bad("expected TYPE:concurrency=N,rate=R,burst=B".into()))?;
        let job_type = job_type.trim();
        if job_type.is_empty() {
            return Err(bad("the job type is empty".into()));
        }
        let mut limit = TypeLimit::default();
        for setting in settings.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, number) = setting
                .split_once('=')
                .ok_or_else(|| bad(format!("{setting:?} is not key=value")))?;
            let (key, number) = (key.trim(), number.trim());
            let positive_integer = || match number.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(format!("{key}: {number:?} is not a positive integer"))),
            };
            match key {
                "concurrency" => limit.concurrency = Some(positive_integer()?),
                "burst" => limit.burst = Some(positive_integer()?),
                "rate" => match number.parse::<f64>() {
                    Ok(r) if r.is_finite() && r > 0.0 => limit.rate_per_sec = Some(r),
                    _ => return Err(bad(format!("rate: {number:?} is not a positive number"))),
                },
                other => return Err(bad(format!("unknown key {other:?} (concurrency, rate, burst)"))),
            }
        }
        if limit == TypeLimit::default() {
            return Err(bad("no limit given".into()));
        }
        if limit.burst.is_some() && limit.rate_per_sec.is_none() {
            return Err(bad("burst needs a rate".into()));
        }
        if limits.insert(job_type.to_string(), limit).is_some() {
            return Err(bad(format!("{job_type} is limited twice")));
        }
    }
    Ok(limits)
}

/// A token bucket: holds up to `capacity` tokens and gains `rate` per second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    rate_per_ms: f64,
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate_per_sec: f64, capacity: u64, now_ms: i64) -> TokenBucket {
        TokenBucket {
            capacity: capacity as f64,
            rate_per_ms: rate_per_sec / 1000.0,
            tokens: capacity as f64,
            last_ms: now_ms,
        }
    }

    /// Takes a token if one is there at `now_ms`.
    pub fn try_take(&mut self, now_ms: i64) -> bool {
        // A clock that goes back adds nothing (and takes nothing away).
        let elapsed = (now_ms - self.last_ms).max(0) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Decides, run by run, whether a job type may start another run now.
#[derive(Debug, Default)]
pub struct Limiter {
    limits: TypeLimits,
    buckets: BTreeMap<String, TokenBucket>,
}

impl Limiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: TypeLimits) -> Limiter {
        Limiter {
            limits,
            buckets: BTreeMap::new(),
        }
    }

    /// Whether a run of `job_type` may start at `now_ms`, given the runs of
    /// each type already queued or running (`active`, updated when it may).
    /// A token is only taken when the concurrency limit lets the run through.
    pub fn admit(&mut self, job_type: &str, active: &mut BTreeMap<String, u64>, now_ms: i64) -> bool {
        let Some(limit) = self.limits.get(job_type) else {
            return true;
        };
        let running = active.get(job_type).copied().unwrap_or(0);
        if limit.concurrency.is_some_and(|max| running >= max) {
            return false;
        }
        if let Some(rate) = limit.rate_per_sec {
            let capacity = limit.burst.unwrap_or((rate.ceil() as u64).max(1));
            let bucket = self
                .buckets
                .entry(job_type.to_string())
                .or_insert_with(|| TokenBucket::new(rate, capacity, now_ms));
            if !bucket.try_take(now_ms) {
                return false;
            }
        }
        *active.entry(job_type.to_string()).or_default() += 1;
        true
    }

    /// Whether any type is limited (if not, the dispatcher skips the counting).
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_and_names_the_bad_part() {
        let limits = parse_type_limits("http:concurrency=20,rate=50,burst=100; exec:concurrency=2").unwrap();
        assert_eq!(
            limits["http"],
            TypeLimit {
                concurrency: Some(20),
                rate_per_sec: Some(50.0),
                burst: Some(100)
            }
        );
        assert_eq!(limits["exec"].concurrency, Some(2));
        assert_eq!(parse_type_limits("").unwrap(), TypeLimits::new());
        for (bad, says) in [
            ("http", "expected TYPE:"),
            ("http:", "no limit given"),
            (":rate=1", "job type is empty"),
            ("http:rate=0", "rate: \"0\" is not a positive number"),
            ("http:rate=inf", "not a positive number"),
            ("http:concurrency=-1", "not a positive integer"),
            ("http:burst=5", "burst needs a rate"),
            ("http:speed=5", "unknown key \"speed\""),
            ("http:rate=1;http:rate=2", "limited twice"),
        ] {
            let error = parse_type_limits(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(error.contains("--type-limits"), "{error}");
        }
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10.0, 3, 0);
        let burst = (0..10).filter(|_| bucket.try_take(0)).count();
        assert_eq!(burst, 3, "a full bucket lets its capacity through at once");
        assert!(!bucket.try_take(99), "0.99 tokens after 99 ms at 10/s");
        assert!(bucket.try_take(100));
        // Over 10 s at one attempt per ms: the rate, plus nothing saved up.
        let started = (101..10_101).filter(|&t| bucket.try_take(t)).count();
        assert_eq!(started, 100);
        // A long pause refills only up to the capacity.
        let burst = (0..10).filter(|_| bucket.try_take(1_000_000)).count();
        assert_eq!(burst, 3);
        // A clock stepping back neither adds nor breaks anything.
        assert!(!bucket.try_take(5));
    }

    #[test]
    fn limiter_counts_concurrency_before_taking_tokens() {
        let limits = parse_type_limits("http:concurrency=2,rate=1,burst=5;exec:concurrency=1").unwrap();
        let mut limiter = Limiter::new(limits);
        let mut active = BTreeMap::from([("exec".to_string(), 1)]);
        assert!(!limiter.admit("exec", &mut active, 0), "exec is at its limit");
        assert!(limiter.admit("http", &mut active, 0));
        assert!(limiter.admit("http", &mut active, 0));
        assert!(!limiter.admit("http", &mut active, 0), "two http runs are active");
        assert_eq!(active["http"], 2);
        // Two runs finished: the bucket still holds 3 of its 5 tokens.
        active.insert("http".into(), 0);
        let admitted = (0..10).filter(|_| {
            limiter.admit("http", &mut active, 0) && {
                active.insert("http".into(), 0);
                true
            }
        });
        assert_eq!(admitted.count(), 3);
        // Unlimited types always pass.
        assert!((0..1000).all(|_| limiter.admit("noop", &mut active, 0)));
    }
}
