//! The calendar search: the first wall-clock time at or after a given one
//! that a validated cron expression matches.
//!
//! The search itself is done by the `cron` crate (0.17); this module
//! translates the validated fields (`parse`) for it and moves the years it
//! does not know into its range. Mapping wall times to instants is `dst`'s.
//!
//! * Translation: the bitmasks are written out as explicit lists in the
//!   crate's 6-field syntax (`second minute hour dom month dow`, runs
//!   compressed to `A-B`, a full field as `*`); see the caveats for details.
//!   Under the AND rule that is one crate schedule. Under the OR rule it is
//!   two, one with day-of-week `*` and one with day-of-month `*`; the next
//!   match is the earlier of the two.
//! * Wall-clock search: `next_wall` asks the crate, in `Utc`, for the first
//!   match at or after a *naive wall-clock* second (a local date-time encoded
//!   as if it were UTC), so the crate never sees a zone, a gap or a fold.
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

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime};

use super::parse::cron_err;
use super::{Cron, ScheduleError};

/// Years `next_wall` searches before giving up; one full Gregorian cycle.
const HORIZON_YEARS: i32 = 401;
/// The years the `cron` crate can search.
const CRATE_YEARS: std::ops::RangeInclusive<i32> = 1970..=2100;

pub(super) fn naive(secs: i64) -> Option<NaiveDateTime> {
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
    /// The crate schedules for the validated fields (module docs).
    pub(super) fn translate(&self) -> Result<Vec<cron::Schedule>, ScheduleError> {
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
    pub(super) fn next_wall(&self, from: i64) -> Option<i64> {
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
}
