//! Time zones and daylight-saving time: mapping the wall-clock times a
//! cron expression matches to instants.
//!
//! Fields are matched against wall-clock time in the
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
//! Algorithm: `next_zoned` keeps an instant `t` (initially `after`+1s, floored
//! to whole seconds) with offset `o`, asks for the first matching wall
//! `w >= t + o` (`search`) and proposes `c = w - o`. The proposal is right
//! unless the offset changes in `(t, c]`; it probes the offset at
//! `min(c, t + H)` and binary-searches the change if there is one, then
//! restarts at the transition; if `c` is more than `H = 48h` away it skips
//! to `c - H` (no fire can hide between `t + H` and `c - H`: offsets span at
//! most 26h). Fixed-time jobs additionally fire at a transition instant
//! when the gap it opens contains a matching wall time, and skip the second
//! pass of a fold. Offsets and folds come from chrono-tz.
//!
//! IMPLEMENTATION CAVEATS
//!
//! * chrono-tz does not expose its transition table, so transitions are found
//!   by probing offsets. That is exact provided no zone has two offset
//!   changes within 48h and no change exceeds 26h. Checked against the tzdb
//!   compiled into chrono-tz 0.10.4: since 1900 the closest transitions are
//!   7 days apart and the largest jump is 24h (Samoa etc.). Before 1900 (LMT
//!   era) results are best effort.
//! * chrono-tz lists transitions only up to 2099; after that every zone stays
//!   on its last offset (usually standard time), so DST stops in 2100.

use chrono::{DateTime, MappedLocalTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::search::naive;
use super::Cron;

/// Probe window for offset transitions (see module docs).
const H: i64 = 2 * 86_400;

impl Cron {
    /// First fire instant `>= lb` in zone `tz` (see module docs for the rules).
    pub(super) fn next_zoned(&self, tz: Tz, lb: i64) -> Option<i64> {
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
pub(super) fn offset(tz: Tz, t: i64) -> i64 {
    let t = t.clamp(
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    );
    let utc = naive(t).unwrap_or_default();
    i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// The first instant in `(a, b]` whose offset differs from `oa` (the offset
/// at `a`), assuming at most one transition in the window.
pub(super) fn first_change(tz: Tz, a: i64, oa: i64, b: i64) -> Option<i64> {
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
