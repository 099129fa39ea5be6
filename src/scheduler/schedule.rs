//! TEMPORARY placeholder until the full schedule module lands.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleSpec {
    Cron { expr: String, timezone: String },
    At { at_ms: i64 },
    Every { interval_ms: u64, phase_ms: u64 },
}

impl ScheduleSpec {
    pub fn describe(&self) -> String {
        match self {
            ScheduleSpec::Cron { expr, .. } => expr.clone(),
            ScheduleSpec::At { at_ms } => format!("@at {at_ms}"),
            ScheduleSpec::Every { interval_ms, .. } => format!("@every {interval_ms}ms"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule: {0}")]
pub struct ScheduleError(String);

pub struct Schedule(ScheduleSpec, Option<cron::Schedule>, chrono_tz::Tz);

impl Schedule {
    pub fn compile(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
        match spec {
            ScheduleSpec::Cron { expr, timezone } => {
                let tz = if timezone.is_empty() {
                    chrono_tz::UTC
                } else {
                    timezone.parse().map_err(|_| {
                        ScheduleError(format!("timezone: unknown IANA time zone {timezone:?}"))
                    })?
                };
                let e = if expr.split_whitespace().count() == 5 {
                    format!("0 {expr}")
                } else {
                    expr.clone()
                };
                let c = cron::Schedule::from_str(&e)
                    .map_err(|err| ScheduleError(format!("cron: {err}")))?;
                Ok(Schedule(spec.clone(), Some(c), tz))
            }
            _ => Ok(Schedule(spec.clone(), None, chrono_tz::UTC)),
        }
    }
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.0 {
            ScheduleSpec::Cron { .. } => self
                .1
                .as_ref()?
                .after(&after.with_timezone(&self.2))
                .next()
                .map(|t| t.with_timezone(&Utc)),
            ScheduleSpec::At { at_ms } => (*at_ms > after.timestamp_millis())
                .then(|| DateTime::from_timestamp_millis(*at_ms))
                .flatten(),
            ScheduleSpec::Every {
                interval_ms,
                phase_ms,
            } => {
                let (i, p) = (*interval_ms as i64, *phase_ms as i64);
                let a = after.timestamp_millis();
                DateTime::from_timestamp_millis(((a - p).div_euclid(i) + 1) * i + p)
            }
        }
    }
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < count {
            match self.next_after(t) {
                Some(n) => {
                    out.push(n);
                    t = n;
                }
                None => break,
            }
        }
        out
    }
}
