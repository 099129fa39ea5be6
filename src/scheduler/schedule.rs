//! Schedules: turning a job's [`ScheduleSpec`] into fire times.
//!
//! A job says *when* it runs with a [`ScheduleSpec`], which is stored in the
//! replicated state and therefore must mean exactly the same thing on every
//! node, forever. [`Schedule::compile`] validates a spec once and turns it into
//! a compact [`Schedule`]; [`Schedule::next_after`] then answers "what is the
//! first fire time strictly after this instant?" in a few microseconds in the
//! common case. The module is a pure function of its inputs: it never
//! reads a clock, does no IO and keeps no global state, so every node computes
//! identical fire times for the same spec and the same `after`.
//!
//! There are three kinds of spec:
//!
//! * `At { at_ms }` fires once, at `at_ms` (unix milliseconds), if that is
//!   strictly after `after`.
//! * `Every { interval_ms, phase_ms }` fires at every `phase + k * interval`
//!   (unix milliseconds, any integer `k`), i.e. aligned to the unix epoch, so
//!   the fire times do not depend on when the job was created or last ran.
//!   `interval >= 1s`, `phase < interval`.
//! * `Cron { expr, timezone }` is a cron expression evaluated in the wall-clock
//!   time of an IANA time zone ("" = UTC). Fires are always on whole seconds.
//!
//! Cron dialect. The expression is Vixie cron (the dialect of `crontab(5)`)
//! with an optional leading seconds field. Concretely:
//!
//! * 5 fields `minute hour day-of-month month day-of-week` mean second 0.
//!   6 fields are `second minute hour day-of-month month day-of-week`.
//!   Any other count is rejected; in particular a 7th (year) field is NOT
//!   accepted (Quartz/`cron`-crate style), so that "7 fields" is never silently
//!   misread.
//! * Each field is a comma list of items; an item is `*`, `N`, `A-B`, each
//!   optionally followed by `/STEP`. `N/STEP` means `N-MAX/STEP` (as in
//!   Quartz and the `cron` crate; Vixie has no such form).
//!   Ranges must not be backwards (`5-1` is an error, write `5,0-1`). Steps
//!   count from the start of their range; `*` spans the whole field
//!   (0-7 for day-of-week, so `*/2` is Sun,Tue,Thu,Sat as in Vixie).
//! * Day-of-week is 0-7 with both 0 and 7 meaning Sunday; month and
//!   day-of-week also accept the three-letter names JAN..DEC and SUN..SAT in
//!   any case, also inside ranges and steps (`MON-FRI/2`). `?` is accepted as
//!   a synonym of `*` in day-of-month and day-of-week. Quartz `L`, `W`, `#`
//!   and full day/month names are rejected.
//! * Day matching follows Vixie exactly: if the day-of-month or the
//!   day-of-week field *begins with `*`* (this includes `*/2` and `?`), a day
//!   matches when it matches BOTH fields (so a plain `*` simply doesn't
//!   restrict); otherwise a day matches when it matches EITHER field
//!   (`0 0 13 * 5` = every 13th and every Friday). Consequently
//!   `0 0 1-7 * */2` means "days 1-7 that are Sun/Tue/Thu/Sat".
//! * Macros: `@yearly`/`@annually` = `0 0 1 1 *`, `@monthly` = `0 0 1 * *`,
//!   `@weekly` = `0 0 * * 0`, `@daily`/`@midnight` = `0 0 * * *`,
//!   `@hourly` = `0 * * * *` (case-insensitive, then treated exactly like the
//!   expansion). `@every <duration>` (humantime syntax: `30s`, `1m30s`, `2h`)
//!   is the same as `Every { interval, phase: 0 }`: epoch-aligned, at least
//!   1s, whole milliseconds, and the time zone is validated but irrelevant.
//!   `@reboot` is rejected.
//! * A schedule whose fields match no calendar date at all (`0 0 30 2 *`) is
//!   rejected at compile time. The check is exact (see Algorithm);
//!   leap-day-only schedules are accepted.
//!
//! Time zones and DST. Fields are matched against wall-clock time in the
//! zone. Wall time is not a function of real time near offset transitions,
//! so the rule depends on the kind of job:
//!
//! * Fixed-time jobs, whose minute AND hour fields both contain neither `*`
//!   nor `/` (e.g. `30 2 * * *`, `0,30 1-3 * * *`, `@daily`), fire once per
//!   matching wall time W, at the first instant that shows W. A W that occurs
//!   twice in a fall-back fold fires only at its first occurrence; a W that
//!   does not exist in a spring-forward gap fires at the first instant after
//!   the gap (Europe/Berlin `30 2 * * *` fires at 03:00 CEST on 2026-03-29).
//!   Several wall times in one gap collapse into that single fire.
//!   (Vixie only looks at the first character; we treat steps such as
//!   `0-30/15` as wildcard too, so every step-driven job follows real time.)
//! * Wildcard jobs (minute or hour contains `*` or `/`, e.g. `*/15 * * * *`,
//!   `0 * * * *`, `@hourly`) fire at every instant whose wall time matches:
//!   in a fold they fire in both passes of the repeated wall times, in a gap
//!   nothing is invented for the wall times that do not exist.
//!
//! The seconds field never influences the classification.
//!
//! Invariants:
//!
//! * `next_after(a)`, when `Some(t)`, satisfies `t > a`, and no fire time lies
//!   in `(a, t)`. The set of fire times depends only on the spec, never on
//!   `after`, so `upcoming` (iterated `next_after`) yields each fire once.
//! * Cron fire times are whole seconds; `Every`/`At` are whole milliseconds.
//! * `None` means the schedule never fires again (or only beyond chrono's
//!   representable range, year ±262143).
//! * A `Schedule` is immutable and `Send + Sync`; a cron schedule holds one
//!   or two small `cron::Schedule`s (heap), so compile once per spec change
//!   and clone rather than recompile.
//! * `compile` checks the expression before the time zone, so a spec with
//!   both wrong reports the expression.
//!
//! Algorithm. The calendar search is done by the `cron` crate (0.17); this
//! module validates, translates, and maps wall times to instants.
//!
//! * Validation: every field is parsed here into a bitmask of allowed values,
//!   so errors get the messages above and the dialect is exactly Vixie's.
//! * Translation: the bitmasks are written out as explicit lists in the
//!   crate's 6-field syntax (`second minute hour dom month dow`, runs
//!   compressed to `A-B`, a full field as `*`); see the caveats for details.
//!   Under the AND rule that is one crate schedule. Under the OR rule it is
//!   two, one with day-of-week `*` and one with day-of-month `*`; the next
//!   match is the earlier of the two.
//! * Wall-clock search: `next_wall` asks the crate, in `Utc`, for the first
//!   match at or after a *naive wall-clock* second (a local date-time encoded
//!   as if it were UTC), so the crate never sees a zone, a gap or a fold.
//! * Zones: `next_zoned` keeps an instant `t` (initially `after`+1s, floored
//!   to whole seconds) with offset `o`, asks for the first matching wall
//!   `w >= t + o` and proposes `c = w - o`. The proposal is right unless the
//!   offset changes in `(t, c]`; it probes the offset at `min(c, t + H)` and
//!   binary-searches the change if there is one, then restarts at the
//!   transition; if `c` is more than `H = 48h` away it skips to `c - H` (no
//!   fire can hide between `t + H` and `c - H`: offsets span at most 26h).
//!   Fixed-time jobs additionally fire at a transition instant when the gap
//!   it opens contains a matching wall time, and skip the second pass of a
//!   fold. Offsets and folds come from chrono-tz.
//! * Never fires: checked in closed form on the bitmasks (`fires_ever`), not
//!   by searching. Exact: every month has every weekday, so the OR rule and
//!   an unrestricted day-of-week always match; and every valid (month, day),
//!   Feb 29 included, falls on every weekday within the 400-year Gregorian
//!   cycle, so under the AND rule a date matches iff some allowed month has
//!   some allowed day (Feb having 29).
//!
//! IMPLEMENTATION CAVEATS
//!
//! * The `cron` crate only knows the years 1970-2100. Other years are
//!   searched in *twin* years with the same calendars (`crate_window`): a run
//!   of 4-yearly leap years (up to the next skipped leap day: 2200, 2300,
//!   2500, ...) is mapped year for year onto the run starting at the year in
//!   1970-1997 with the same weekday on January 1st and the same year mod 4;
//!   a skipped-leap-day year (1900, 2200, ...) is mapped alone onto a common
//!   year starting on the same weekday. A crate match inside the twin run,
//!   shifted back, is exact, so fire times stay correct in every year chrono
//!   represents, at one crate call per run of up to ~100 years. `next_wall`
//!   gives up after 401 years, which never happens for an accepted schedule.
//! * Translations made for the crate (all on already validated fields):
//!   5 fields get second `0`; `N/STEP`, steps over day-of-week 0-7, names,
//!   `?` and `7` = Sunday are resolved here into explicit lists; day-of-week
//!   is renumbered to the crate's 1-7 with 1 = Sunday; the crate's AND of the
//!   two day fields is used as is, the OR rule is the two-schedule minimum
//!   above; the crate's own DST handling (which skips gap times and fires
//!   twice in every fold) is bypassed by evaluating in `Utc` on wall time;
//!   its `after` is strictly-after, so it is asked from `wall - 1s`. Crate
//!   expressions are never exposed, so its 7-field (year) form and its
//!   macros are unused; `@`-macros are expanded here. (The crate's only
//!   global state is lazily built constant tables.)
//! * chrono-tz does not expose its transition table, so transitions are found
//!   by probing offsets. That is exact provided no zone has two offset
//!   changes within 48h and no change exceeds 26h. Checked against the tzdb
//!   compiled into chrono-tz 0.10.4: since 1900 the closest transitions are
//!   7 days apart and the largest jump is 24h (Samoa etc.). Before 1900 (LMT
//!   era) results are best effort.
//! * chrono-tz lists transitions only up to 2099; after that every zone stays
//!   on its last offset (usually standard time), so DST stops in 2100.
//! * Cost (release build, measured): `next_after` 0.3-2.5 µs for ordinary
//!   schedules (about 0.5 µs per crate call; the OR rule makes two, a zone
//!   adds offset probes), up to ~5 µs for leap-day schedules across 2100;
//!   the former hand-written evaluator took 0.06-0.9 µs. `compile` takes
//!   6-9 µs, mostly the crate's parser.
//! * Leap seconds do not exist (chrono/unix time). `@every` ignores the time
//!   zone. `describe` collapses whitespace runs of the expression to one
//!   space; it is meant for humans and logs, not for round-tripping.

use std::time::Duration;

use chrono::{DateTime, Datelike, MappedLocalTime, NaiveDate, NaiveDateTime, Offset};
use chrono::{SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use chrono::Timelike; // the tests' oracle reads wall-clock fields

/// How a job's fire times are described; stored in the replicated state (serde).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScheduleSpec {
    /// A cron expression (5-field, 6-field seconds-first, @macro, or "@every <duration>") in an IANA zone ("" = UTC).
    Cron { expr: String, timezone: String },
    /// Fire once at this instant (unix milliseconds).
    At { at_ms: i64 },
    /// Fire every `interval_ms`, aligned to the unix epoch plus `phase_ms` (0 <= phase < interval).
    Every { interval_ms: u64, phase_ms: u64 },
}

/// Why a [`ScheduleSpec`] was rejected. Every message starts with the spec
/// field at fault (`schedule.cron`, `schedule.timezone`, `schedule.every`,
/// `schedule.at`) followed by the problem in plain words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression is malformed, unsupported or can never fire.
    #[error("schedule.cron: {0}")]
    Cron(String),
    /// The time zone is not an IANA zone name known to chrono-tz.
    #[error("schedule.timezone: unknown IANA time zone {0:?}")]
    UnknownTimeZone(String),
    /// The interval or phase of an `Every` spec is invalid.
    #[error("schedule.every: {0}")]
    Every(String),
    /// The instant of an `At` spec cannot be represented.
    #[error("schedule.at: {0}")]
    At(String),
}

/// A compiled schedule: parse once, ask for fire times many times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    At(DateTime<Utc>),
    Every { interval_ms: i64, phase_ms: i64 },
    Cron(Cron),
}

/// A compiled cron expression: the validated fields (one bit per allowed
/// value) and the `cron`-crate schedules translated from them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cron {
    seconds: u64,  // bits 0..=59
    minutes: u64,  // bits 0..=59
    hours: u64,    // bits 0..=23
    days: u64,     // bits 1..=31
    months: u64,   // bits 1..=12
    weekdays: u64, // bits 0..=6, 0 = Sunday
    /// Vixie: day-of-month or day-of-week began with `*` => AND, else OR.
    and_days: bool,
    /// Minute and hour are both free of `*` and `/` (see module docs).
    fixed_time: bool,
    /// `None` = UTC (fast path, no offset lookups).
    zone: Option<Tz>,
    /// Does the calendar search, on wall time: one schedule under the AND
    /// rule; under the OR rule day-of-month-only and day-of-week-only.
    search: Vec<cron::Schedule>,
}

/// Probe window for offset transitions (see module docs).
const H: i64 = 2 * 86_400;
/// Years `next_wall` searches before giving up; one full Gregorian cycle.
const HORIZON_YEARS: i32 = 401;
/// The years the `cron` crate can search.
const CRATE_YEARS: std::ops::RangeInclusive<i32> = 1970..=2100;

impl Schedule {
    /// Validates `spec` and compiles it for fast evaluation.
    pub fn compile(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
        let kind = match spec {
            ScheduleSpec::Cron { expr, timezone } => {
                let kind = parse_cron(expr)?;
                let zone = parse_zone(timezone)?;
                match kind {
                    Kind::Cron(cron) => Kind::Cron(Cron { zone, ..cron }),
                    other => other,
                }
            }
            ScheduleSpec::At { at_ms } => match DateTime::from_timestamp_millis(*at_ms) {
                Some(at) => Kind::At(at),
                None => {
                    let msg = format!("{at_ms} ms is outside the supported time range");
                    return Err(ScheduleError::At(msg));
                }
            },
            ScheduleSpec::Every {
                interval_ms,
                phase_ms,
            } => every(*interval_ms, *phase_ms).map_err(ScheduleError::Every)?,
        };
        Ok(Schedule { kind })
    }

    /// The first fire time strictly after `after`, or None if the schedule never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::At(at) => (*at > after).then_some(*at),
            Kind::Every {
                interval_ms,
                phase_ms,
            } => {
                // Fire times are integers, so "> after" == "> floor(after in ms)".
                let (a, i, p) = (
                    i128::from(after.timestamp_millis()),
                    i128::from(*interval_ms),
                    i128::from(*phase_ms),
                );
                let t = p + ((a - p).div_euclid(i) + 1) * i;
                DateTime::from_timestamp_millis(i64::try_from(t).ok()?)
            }
            Kind::Cron(cron) => {
                // First whole second strictly after `after` (timestamp() floors).
                let lb = after.timestamp().checked_add(1)?;
                let secs = match cron.zone {
                    None => cron.next_wall(lb)?,
                    Some(tz) => cron.next_zoned(tz, lb)?,
                };
                DateTime::from_timestamp(secs, 0)
            }
        }
    }

    /// Up to `count` fire times strictly after `after`, in order.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count.min(256));
        let mut cursor = after;
        while out.len() < count {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }
}

/// Compiled cron schedules by spec, so that applying a fire does not parse the
/// job's expression again (parsing was a fifth of the cost of a fire). A pure
/// memo: bounded to [`ScheduleMemo::CAPACITY`] specs and cleared whole when
/// full, never part of the replicated content; a clone starts empty and any
/// two memos compare equal.
#[derive(Debug, Default)]
pub struct ScheduleMemo {
    compiled: std::collections::HashMap<ScheduleSpec, Schedule>,
}

impl ScheduleMemo {
    /// Most specs remembered at once.
    pub const CAPACITY: usize = 4096;

    /// `spec` compiled: from the memo for a cron spec, compiled afresh for the
    /// others (which cost next to nothing to compile).
    pub fn compile(&mut self, spec: &ScheduleSpec) -> Result<std::borrow::Cow<'_, Schedule>, ScheduleError> {
        if !matches!(spec, ScheduleSpec::Cron { .. }) {
            return Schedule::compile(spec).map(std::borrow::Cow::Owned);
        }
        if !self.compiled.contains_key(spec) {
            let schedule = Schedule::compile(spec)?;
            if self.compiled.len() >= Self::CAPACITY {
                self.compiled.clear();
            }
            self.compiled.insert(spec.clone(), schedule);
        }
        Ok(std::borrow::Cow::Borrowed(&self.compiled[spec]))
    }
}

impl Clone for ScheduleMemo {
    fn clone(&self) -> Self {
        ScheduleMemo::default()
    }
}

impl PartialEq for ScheduleMemo {
    fn eq(&self, _: &ScheduleMemo) -> bool {
        true
    }
}

impl ScheduleSpec {
    /// A one-line canonical human form: the cron expression as written (plus " (TZ)" suffix when timezone is not UTC/empty), "@every 10s" (plus "+phase" if nonzero), "@at 2026-01-02T03:04:05Z" (RFC 3339).
    pub fn describe(&self) -> String {
        match self {
            ScheduleSpec::Cron { expr, timezone } => {
                let expr = expr.split_whitespace().collect::<Vec<_>>().join(" ");
                if timezone.is_empty() || timezone == "UTC" {
                    expr
                } else {
                    format!("{expr} ({timezone})")
                }
            }
            ScheduleSpec::At { at_ms } => match DateTime::from_timestamp_millis(*at_ms) {
                Some(at) => format!("@at {}", at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                None => format!("@at {at_ms}ms"),
            },
            ScheduleSpec::Every {
                interval_ms,
                phase_ms,
            } => {
                let mut s = format!("@every {}", fmt_ms(*interval_ms));
                if *phase_ms != 0 {
                    s.push('+');
                    s.push_str(&fmt_ms(*phase_ms));
                }
                s
            }
        }
    }
}

/// Compact humantime rendering: 90_000 ms -> "1m30s".
fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms))
        .to_string()
        .replace(' ', "")
}

/// Validates an epoch-aligned interval; errors are the text after "schedule.every: ".
fn every(interval_ms: u64, phase_ms: u64) -> Result<Kind, String> {
    if interval_ms < 1000 {
        return Err("interval must be at least 1s".into());
    }
    let interval =
        i64::try_from(interval_ms).map_err(|_| format!("interval {interval_ms} ms is too large"))?;
    if phase_ms >= interval_ms {
        return Err(format!(
            "phase {} must be smaller than the interval {}",
            fmt_ms(phase_ms),
            fmt_ms(interval_ms)
        ));
    }
    Ok(Kind::Every {
        interval_ms: interval,
        phase_ms: phase_ms as i64, // < interval <= i64::MAX
    })
}

/// "" (and "UTC") is UTC; otherwise an exact IANA name known to chrono-tz.
fn parse_zone(name: &str) -> Result<Option<Tz>, ScheduleError> {
    if name.is_empty() {
        return Ok(None);
    }
    match name.parse::<Tz>() {
        Ok(Tz::UTC) | Ok(Tz::Etc__UTC) => Ok(None),
        Ok(tz) => Ok(Some(tz)),
        Err(_) => Err(ScheduleError::UnknownTimeZone(name.to_string())),
    }
}

fn cron_err(msg: impl Into<String>) -> ScheduleError {
    ScheduleError::Cron(msg.into())
}

/// Parses a cron expression or macro; the zone is filled in by the caller.
fn parse_cron(expr: &str) -> Result<Kind, ScheduleError> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(cron_err("expression is empty"));
    }
    let expanded;
    let text = if let Some(body) = expr.strip_prefix('@') {
        let (word, arg) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
        let (word, arg) = (word.to_ascii_lowercase(), arg.trim());
        if word == "every" {
            return parse_every(arg);
        }
        expanded = match word.as_str() {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            _ => {
                return Err(cron_err(format!(
                    "unknown macro \"@{word}\" (expected @yearly, @annually, @monthly, \
                     @weekly, @daily, @midnight, @hourly or @every <duration>)"
                )))
            }
        };
        if !arg.is_empty() {
            return Err(cron_err(format!("\"@{word}\" takes no arguments, got {arg:?}")));
        }
        expanded
    } else {
        expr
    };

    let fields: Vec<&str> = text.split_whitespace().collect();
    let (second, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        n => {
            let hint = if n == 7 {
                " (a year field is not supported)"
            } else {
                ""
            };
            return Err(cron_err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with seconds first, got {n}{hint}"
            )));
        }
    };
    let (minute, hour, dom, month, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);
    let weekdays = parse_field(dow, &DOW)?;
    let mut cron = Cron {
        seconds: parse_field(second, &SECOND)?,
        minutes: parse_field(minute, &MINUTE)?,
        hours: parse_field(hour, &HOUR)?,
        days: parse_field(dom, &DOM)?,
        months: parse_field(month, &MONTH)?,
        weekdays: (weekdays & 0x7f) | (weekdays >> 7 & 1), // 7 -> Sunday (0)
        and_days: dom.starts_with(['*', '?']) || dow.starts_with(['*', '?']),
        fixed_time: ![minute, hour].iter().any(|f| f.contains(['*', '/'])),
        zone: None,
        search: Vec::new(),
    };
    if !cron.fires_ever() {
        return Err(cron_err(format!(
            "{:?} can never fire: no calendar date matches its day-of-month, month \
             and day-of-week fields",
            fields.join(" ")
        )));
    }
    cron.search = cron.translate()?;
    Ok(Kind::Cron(cron))
}

/// `@every <duration>`: epoch-aligned interval, phase 0.
fn parse_every(arg: &str) -> Result<Kind, ScheduleError> {
    if arg.is_empty() {
        return Err(cron_err("\"@every\" needs a duration like \"@every 30s\""));
    }
    let d = humantime::parse_duration(arg).map_err(|_| {
        cron_err(format!(
            "\"@every {arg}\": {arg:?} is not a duration; use e.g. 30s, 1m30s, 2h"
        ))
    })?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(cron_err(format!(
            "\"@every {arg}\": the interval must be a whole number of milliseconds"
        )));
    }
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    every(ms, 0).map_err(|msg| cron_err(format!("\"@every {arg}\": {msg}")))
}

/// Static description of one cron field.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names for `min`, `min + 1`, ...
    names: &'static [&'static str],
    /// Accept `?` as `*` (day-of-month, day-of-week).
    question: bool,
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    question: false,
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    question: false,
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    question: false,
};
const DOM: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    question: true,
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    question: false,
};
const DOW: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    question: true,
};

/// Parses one field into a bitmask of allowed values.
fn parse_field(text: &str, f: &FieldSpec) -> Result<u64, ScheduleError> {
    // `item` is the offending piece; when it is the whole field, say it once.
    let fail = |item: &str, problem: String| {
        if item == text {
            cron_err(format!("{} field {text:?} {problem}", f.name))
        } else {
            cron_err(format!("{} field {text:?}: {item:?} {problem}", f.name))
        }
    };
    let value = |tok: &str| -> Result<u32, ScheduleError> {
        if !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit()) {
            return match tok.parse::<u32>() {
                Ok(v) if (f.min..=f.max).contains(&v) => Ok(v),
                _ => Err(fail(tok, format!("is out of range {}-{}", f.min, f.max))),
            };
        }
        if let Some(i) = f.names.iter().position(|n| n.eq_ignore_ascii_case(tok)) {
            return Ok(f.min + i as u32);
        }
        let problem = match f.names {
            [] if tok.is_empty() => "is missing a number".to_string(),
            [] => "is not a number".to_string(),
            [first, .., last] => format!("is not a number {}-{} or a name {first}-{last}", f.min, f.max),
            [_] => unreachable!("name lists have several entries"),
        };
        Err(fail(tok, problem))
    };

    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(fail(text, "has an empty list item".into()));
        }
        let (range, step) = match item.split_once('/') {
            None => (item, None),
            Some((range, step)) => match step.parse::<u32>() {
                Ok(0) => return Err(fail(item, "has a step of 0 (must be at least 1)".into())),
                Ok(s) if step.bytes().all(|b| b.is_ascii_digit()) => (range, Some(s)),
                _ => return Err(fail(step, "is not a valid step (a positive number)".into())),
            },
        };
        let (lo, hi) = if range == "*" || (range == "?" && f.question) {
            (f.min, f.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(fail(
                    range,
                    "is a backwards range (the start must not exceed the end)".into(),
                ));
            }
            (a, b)
        } else {
            let v = value(range)?;
            (v, if step.is_some() { f.max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v = v.saturating_add(step.unwrap_or(1));
        }
    }
    Ok(bits)
}

fn naive(secs: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp(secs, 0).map(|d| d.naive_utc())
}

/// `mask` (bits `lo..=hi`) in the crate's syntax: `*` or a list of values
/// and runs `A-B`, each value shifted by `shift`.
fn crate_list(mask: u64, lo: u32, hi: u32, shift: u32) -> String {
    let on = |v: u32| (lo..=hi).contains(&v) && mask >> v & 1 == 1;
    if (lo..=hi).all(on) {
        return "*".into();
    }
    let starts = (lo..=hi).filter(|&v| on(v) && (v == lo || !on(v - 1)));
    let items: Vec<String> = starts
        .map(|a| match (a..=hi).take_while(|&v| on(v)).last() {
            Some(b) if b > a => format!("{}-{}", a + shift, b + shift),
            _ => (a + shift).to_string(),
        })
        .collect();
    items.join(",")
}

/// Where the crate searches wall times of `year`: `(shift, last)` such that
/// the years `year..=last` have the calendars of `year - shift..=last - shift`,
/// which the crate knows (module docs). Years in the crate's range map to
/// themselves. Elsewhere: a skipped leap day (1900, 2200, ...) is a common
/// year on its own; other years start a run of 4-yearly leap years, matched
/// with the year in 1970..=1997 that has the same weekday on January 1st and
/// the same year mod 4 (each pair occurs once there; 2000 is a leap year, so
/// the twin run continues to 2099).
fn crate_window(year: i32) -> Option<(i32, i32)> {
    if CRATE_YEARS.contains(&year) {
        return Some((0, *CRATE_YEARS.end()));
    }
    let jan1 = |y| NaiveDate::from_ymd_opt(y, 1, 1).map(|d| d.weekday());
    let leap = |y: i32| NaiveDate::from_ymd_opt(y, 2, 29).is_some();
    let want = jan1(year)?;
    if year % 4 == 0 && !leap(year) {
        let twin = (1970..1998).find(|&y| !leap(y) && jan1(y) == Some(want))?;
        return Some((year - twin, year));
    }
    let twin = (1970..1998).find(|&y| y % 4 == year.rem_euclid(4) && jan1(y) == Some(want))?;
    let mut skip = (year.div_euclid(100) + 1) * 100; // next century year
    if skip % 400 == 0 {
        skip += 100;
    }
    Some((year - twin, (skip - 1).min(year + (2099 - twin))))
}

impl Cron {
    /// Whether any calendar date matches the day fields; exact (module docs).
    fn fires_ever(&self) -> bool {
        const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        !self.and_days
            || (1..=12).any(|m| {
                let valid_days = (2u64 << MONTH_DAYS[m - 1]) - 2; // bits 1..=len
                self.months >> m & 1 == 1 && self.days & valid_days != 0
            })
    }

    /// The crate schedules for the validated fields (module docs).
    fn translate(&self) -> Result<Vec<cron::Schedule>, ScheduleError> {
        let time = [(self.seconds, 59), (self.minutes, 59), (self.hours, 23)]
            .map(|(mask, hi)| crate_list(mask, 0, hi, 0))
            .join(" ");
        let month = crate_list(self.months, 1, 12, 0);
        let (dom, dow) = (
            crate_list(self.days, 1, 31, 0),
            crate_list(self.weekdays, 0, 6, 1), // crate: 1 = Sunday
        );
        let exprs = if self.and_days {
            vec![format!("{time} {dom} {month} {dow}")]
        } else {
            vec![
                format!("{time} {dom} {month} *"),
                format!("{time} * {month} {dow}"),
            ]
        };
        exprs
            .iter()
            .map(|e| {
                e.parse()
                    .map_err(|err| cron_err(format!("internal error: cron crate rejected {e:?}: {err}")))
            })
            .collect()
    }

    /// First matching wall-clock second `>= from`. Wall seconds are a naive
    /// local date-time encoded as if it were UTC; the crate searches them in
    /// `Utc`, moved into its year range by `crate_window` (module docs).
    fn next_wall(&self, from: i64) -> Option<i64> {
        let mut from = naive(from)?;
        let limit = from.year().checked_add(HORIZON_YEARS)?;
        while from.year() <= limit {
            let (shift, last) = crate_window(from.year())?;
            // The crate's `after` is strictly after.
            let probe = from.with_year(from.year() - shift)? - chrono::Duration::seconds(1);
            let probe = probe.and_utc();
            let hit = self.search.iter().filter_map(|s| s.after(&probe).next()).min();
            if let Some(hit) = hit.filter(|h| h.year() + shift <= last) {
                let wall = hit.naive_utc();
                return Some(wall.with_year(wall.year() + shift)?.and_utc().timestamp());
            }
            from = NaiveDate::from_ymd_opt(last.checked_add(1)?, 1, 1)?.and_hms_opt(0, 0, 0)?;
        }
        None
    }

    /// First fire instant `>= lb` in zone `tz` (see module docs for the rules).
    fn next_zoned(&self, tz: Tz, lb: i64) -> Option<i64> {
        let mut t = lb;
        loop {
            let o = offset(tz, t);
            if self.fixed_time {
                // Entering a spring-forward gap at `t`: fixed wall times inside
                // the gap fire at its end, which is `t` itself.
                let prev = offset(tz, t - 1);
                if prev < o && self.next_wall(t + prev)? < t + o {
                    return Some(t);
                }
            }
            let w = self.next_wall(t + o)?;
            let c = w - o;
            if let Some(tr) = first_change(tz, t, o, c.min(t + H)) {
                t = tr; // the proposal assumed a constant offset; restart there
                continue;
            }
            if c > t + H {
                t = c - H; // nothing can fire in between (module docs)
                continue;
            }
            if self.fixed_time {
                if let MappedLocalTime::Ambiguous(e, l) = tz.from_local_datetime(&naive(w)?) {
                    let (e, l) = (e.timestamp(), l.timestamp());
                    if c == l && e < l {
                        // Second pass of a fold: skip all of it.
                        t = match first_change(tz, e, offset(tz, e), l) {
                            Some(tr) => tr + (l - e),
                            None => c + 1,
                        };
                        continue;
                    }
                }
            }
            return Some(c);
        }
    }
}

/// UTC offset (seconds) of zone `tz` at unix second `t`.
fn offset(tz: Tz, t: i64) -> i64 {
    let t = t.clamp(
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    );
    let utc = naive(t).unwrap_or_default();
    i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// The first instant in `(a, b]` whose offset differs from `oa` (the offset
/// at `a`), assuming at most one transition in the window.
fn first_change(tz: Tz, a: i64, oa: i64, b: i64) -> Option<i64> {
    if b <= a || offset(tz, b) == oa {
        return None;
    }
    let (mut lo, mut hi) = (a, b);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset(tz, mid) == oa {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
