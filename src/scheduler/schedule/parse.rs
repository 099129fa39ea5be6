//! The cron dialect: parsing an expression (or macro) and a time zone
//! into the validated bitmasks of a [`Cron`].
//!
//! The expression is Vixie cron (the dialect of `crontab(5)`)
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
//!   rejected at compile time. The check is exact (below); leap-day-only
//!   schedules are accepted.
//!
//! Every field is parsed here into a bitmask of allowed values, so errors
//! get the messages above and the dialect is exactly Vixie's; the `cron`
//! crate only ever sees the translation of validated fields (`search`).
//! "Never fires" is checked in closed form on the bitmasks (`fires_ever`),
//! not by searching. Exact: every month has every weekday, so the OR rule
//! and an unrestricted day-of-week always match; and every valid (month,
//! day), Feb 29 included, falls on every weekday within the 400-year
//! Gregorian cycle, so under the AND rule a date matches iff some allowed
//! month has some allowed day (Feb having 29).

use chrono_tz::Tz;

use super::{every, Cron, Kind, ScheduleError};

/// "" (and "UTC") is UTC; otherwise an exact IANA name known to chrono-tz.
pub(super) fn parse_zone(name: &str) -> Result<Option<Tz>, ScheduleError> {
    if name.is_empty() {
        return Ok(None);
    }
    match name.parse::<Tz>() {
        Ok(Tz::UTC) | Ok(Tz::Etc__UTC) => Ok(None),
        Ok(tz) => Ok(Some(tz)),
        Err(_) => Err(ScheduleError::UnknownTimeZone(name.to_string())),
    }
}

pub(super) fn cron_err(msg: impl Into<String>) -> ScheduleError {
    ScheduleError::Cron(msg.into())
}

/// Parses a cron expression or macro; the zone is filled in by the caller.
pub(super) fn parse_cron(expr: &str) -> Result<Kind, ScheduleError> {
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

impl Cron {
    /// Whether any calendar date matches the day fields; exact (module docs).
    pub(super) fn fires_ever(&self) -> bool {
        const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        !self.and_days
            || (1..=12).any(|m| {
                let valid_days = (2u64 << MONTH_DAYS[m - 1]) - 2; // bits 1..=len
                self.months >> m & 1 == 1 && self.days & valid_days != 0
            })
    }
}
