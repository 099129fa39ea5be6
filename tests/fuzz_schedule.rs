//! Property-based fuzzing of the schedule parser and fire-time search
//! (`scheduler::schedule`).
//!
//! Two kinds of input:
//!
//! - **Anything**: arbitrary strings, printable soup and soups of cron
//!   tokens, in arbitrary or real time zones. `Schedule::compile` must
//!   never panic, and what it accepts must give strictly increasing fire
//!   times after any instant chrono represents.
//! - **Near-valid expressions**, built field by field from the dialect's
//!   pieces (`*`, `?`, numbers with and without leading zeros, names in any
//!   case, ranges, steps, lists; values just out of range, backwards
//!   ranges, zero and huge steps, misplaced `?`), the macros and
//!   `@every <duration>`, in real time zones. The generator knows what each
//!   field means, so the test carries its own reading of the expression (an
//!   oracle written from the dialect's documentation, independent of the
//!   parser): the parser must accept exactly what the oracle accepts, and
//!   every fire time must match the expression when re-checked against the
//!   wall clock of its zone, with no fire missed in a window brute-forced
//!   second by second (minute by minute for five-field expressions). Half
//!   of the windows are put on a daylight-saving transition of the zone.
//!
//! The daylight-saving rules checked are those of `schedule::dst`: a
//! wildcard job fires at every instant whose wall time matches (both passes
//! of a fold, nothing in a gap); a fixed-time job fires at the first instant
//! showing a matching wall time, or at the instant a gap ends when the gap
//! hides one.
//!
//! Cases per test: `PROPTEST_CASES` (default 1,000: about 3 s for the file
//! in a debug build); `tests/fuzz-campaign.sh` runs long campaigns.

use chrono::{DateTime, Datelike, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use kairos::scheduler::{Schedule, ScheduleSpec};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(1_000),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ---- the dialect, as the oracle reads it ----------------------------------

/// One cron field: its range, names and whether `?` means `*`.
#[derive(Debug)]
struct Field {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    question: bool,
}

const SECOND: Field = Field {
    min: 0,
    max: 59,
    names: &[],
    question: false,
};
const MINUTE: Field = Field {
    min: 0,
    max: 59,
    names: &[],
    question: false,
};
const HOUR: Field = Field {
    min: 0,
    max: 23,
    names: &[],
    question: false,
};
const DOM: Field = Field {
    min: 1,
    max: 31,
    names: &[],
    question: true,
};
const MONTH: Field = Field {
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    question: false,
};
const DOW: Field = Field {
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    question: true,
};

/// A generated piece of an expression: its text and the values it allows,
/// `None` when the dialect refuses it.
type Piece = (String, Option<u64>);

/// Bits `lo..=hi` stepping by `step`.
fn stepped(lo: u32, hi: u32, step: u32) -> u64 {
    (lo..=hi).step_by(step as usize).fold(0, |bits, v| bits | 1 << v)
}

/// Writes `name` in a random case.
fn any_case(name: &'static str) -> BoxedStrategy<String> {
    prop::collection::vec(any::<bool>(), 3)
        .prop_map(move |upper| {
            name.chars()
                .zip(upper)
                .map(|(c, up)| if up { c } else { c.to_ascii_lowercase() })
                .collect()
        })
        .boxed()
}

/// One value token of `f`: a number (sometimes zero-padded), a name, a
/// value just out of range, or something that is not a value.
fn value(f: &'static Field) -> BoxedStrategy<(String, Option<u32>)> {
    let number = (f.min..=f.max, any::<bool>())
        .prop_map(|(v, pad)| (if pad { format!("0{v}") } else { v.to_string() }, Some(v)));
    let out_of_range = prop::sample::select(vec![f.max + 1, f.max + 40, 99])
        .prop_map(|v| (v.to_string(), None))
        .boxed();
    let below = if f.min > 0 {
        Just(((f.min - 1).to_string(), None)).boxed()
    } else {
        Just(("4294967296".to_string(), None)).boxed()
    };
    let garbage = prop::sample::select(vec!["", "L", "W", "5L", "1#2", "x", "1.5", "JANUARY", "MONDAY"])
        .prop_map(|t| (t.to_string(), None));
    if f.names.is_empty() {
        prop_oneof![120 => number, 1 => out_of_range, 1 => below, 1 => garbage].boxed()
    } else {
        let names = f.names;
        let min = f.min;
        let name = (0..names.len())
            .prop_flat_map(move |i| any_case(names[i]).prop_map(move |text| (text, Some(min + i as u32))));
        prop_oneof![80 => number, 40 => name, 1 => out_of_range, 1 => below, 1 => garbage].boxed()
    }
}

/// One list item of `f`: `*`, `?`, a value or a range, each optionally
/// with a step.
fn item(f: &'static Field) -> BoxedStrategy<Piece> {
    let (min, max, question) = (f.min, f.max, f.question);
    // The item before an optional step: text, (lo, hi) when valid, and
    // whether a step extends a single value to the field's end.
    // `?` where it is not allowed is as rare as the other refusals.
    let question_weight = if question { 10 } else { 1 };
    let base = prop_oneof![
        20 => Just(("*".to_string(), Some((min, max)), false)),
        question_weight => Just(("?".to_string(), question.then_some((min, max)), false)),
        40 => value(f).prop_map(|(text, v)| (text, v.map(|v| (v, v)), true)),
        30 => (value(f), value(f), prop::bool::weighted(0.97)).prop_map(|((a, va), (b, vb), ordered)| {
            // Mostly in order; sometimes backwards, which is refused.
            let ((a, va), (b, vb)) = match (va, vb) {
                (Some(x), Some(y)) if ordered && x > y => ((b, vb), (a, va)),
                _ => ((a, va), (b, vb)),
            };
            let range = match (va, vb) {
                (Some(a), Some(b)) if a <= b => Some((a, b)),
                _ => None,
            };
            (format!("{a}-{b}"), range, false)
        }),
    ];
    let step = prop_oneof![
        50 => Just(None),
        50 => (1u32..70).prop_map(|s| Some((s.to_string(), Some(s)))),
        1 => prop::sample::select(vec!["0", "", "4294967296", "-1", "x"]).prop_map(|s| Some((s.to_string(), None))),
    ];
    (base, step)
        .prop_map(move |((text, range, single), step)| match step {
            None => (text, range.map(|(lo, hi)| stepped(lo, hi, 1))),
            Some((step_text, step)) => {
                let bits = match (range, step) {
                    (Some((lo, _)), Some(step)) if single => Some(stepped(lo, max, step)),
                    (Some((lo, hi)), Some(step)) => Some(stepped(lo, hi, step)),
                    _ => None,
                };
                (format!("{text}/{step_text}"), bits)
            }
        })
        .boxed()
}

/// A whole field: a list of one to three items (sometimes with an empty item).
fn field(f: &'static Field) -> BoxedStrategy<Piece> {
    let list = prop::collection::vec(item(f), 1..4).prop_map(|items| {
        let text = items
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let bits = items.iter().try_fold(0u64, |acc, (_, b)| b.map(|b| acc | b));
        // An empty field would vanish between the spaces, changing the
        // field count; an empty list item stands for it.
        if text.is_empty() {
            return (",".to_string(), None);
        }
        (text, bits)
    });
    prop_oneof![
        150 => list,
        1 => item(f).prop_map(|(t, _)| (format!("{t},"), None)),
    ]
    .boxed()
}

/// What the oracle expects of a generated expression.
#[derive(Clone, Debug)]
enum Expected {
    /// The parser must refuse it, for this reason.
    Refused(String),
    /// A cron expression with these allowed values.
    Cron(Oracle),
    /// `@every`: epoch-aligned fires every this many ms.
    Every(u64),
}

/// The oracle's reading of a valid cron expression.
#[derive(Clone, Debug)]
struct Oracle {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month or day-of-week begins with `*` or `?`: both must match.
    and_days: bool,
    /// Minute and hour hold neither `*` nor `/` (the DST rule of fixed times).
    fixed_time: bool,
    /// Six fields (seconds given); else every fire is on second 0.
    with_seconds: bool,
}

impl Oracle {
    /// Whether the wall-clock time `w` matches.
    fn matches(&self, w: NaiveDateTime) -> bool {
        let has = |bits: u64, v: u32| bits >> v & 1 == 1;
        let dom = has(self.days, w.day());
        let dow = has(self.weekdays, w.weekday().num_days_from_sunday());
        let day = if self.and_days { dom && dow } else { dom || dow };
        has(self.seconds, w.second())
            && has(self.minutes, w.minute())
            && has(self.hours, w.hour())
            && has(self.months, w.month())
            && day
    }

    /// Whether some calendar date matches the day fields (Feb 29 counts).
    fn fires_ever(&self) -> bool {
        const DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        !self.and_days
            || (1..=12u32).any(|m| {
                self.months >> m & 1 == 1 && (1..=DAYS[m as usize - 1]).any(|d| self.days >> d & 1 == 1)
            })
    }
}

/// A five- or six-field expression (sometimes four or seven), with what
/// the oracle expects of it.
fn cron_expression() -> BoxedStrategy<(String, Expected)> {
    let fields = (
        field(&SECOND),
        field(&MINUTE),
        field(&HOUR),
        field(&DOM),
        field(&MONTH),
        field(&DOW),
    );
    let shape = prop_oneof![30 => Just(6usize), 30 => Just(5), 1 => Just(4), 1 => Just(7)];
    let space = prop::sample::select(vec![" ", "  ", "\t", " \t "]);
    (fields, shape, space)
        .prop_map(|((s, m, h, dom, mon, dow), count, space)| {
            let mut texts = vec![
                s.0.clone(),
                m.0.clone(),
                h.0.clone(),
                dom.0.clone(),
                mon.0.clone(),
                dow.0.clone(),
            ];
            let expected = match count {
                4 | 7 => Expected::Refused(format!("{count} fields")),
                _ => {
                    let seconds = if count == 6 { s.1 } else { Some(1) };
                    match (seconds, m.1, h.1, dom.1, mon.1, dow.1) {
                        (
                            Some(seconds),
                            Some(minutes),
                            Some(hours),
                            Some(days),
                            Some(months),
                            Some(weekdays),
                        ) => {
                            let oracle = Oracle {
                                seconds,
                                minutes,
                                hours,
                                days,
                                months,
                                weekdays: (weekdays & 0x7f) | (weekdays >> 7 & 1),
                                and_days: dom.0.starts_with(['*', '?']) || dow.0.starts_with(['*', '?']),
                                fixed_time: ![&m.0, &h.0].iter().any(|f| f.contains(['*', '/'])),
                                with_seconds: count == 6,
                            };
                            if oracle.fires_ever() {
                                Expected::Cron(oracle)
                            } else {
                                Expected::Refused("no date matches".into())
                            }
                        }
                        pieces => Expected::Refused(format!("a field is invalid: {pieces:?}")),
                    }
                }
            };
            match count {
                4 => texts.truncate(4),
                5 => {
                    texts.remove(0);
                }
                7 => texts.push("2030".into()),
                _ => {}
            }
            (texts.join(space), expected)
        })
        .boxed()
}

/// A macro, with or without a stray argument, or `@every <duration>`.
fn macro_expression() -> BoxedStrategy<(String, Expected)> {
    let expansions = vec![
        ("yearly", "0 0 1 1 *"),
        ("annually", "0 0 1 1 *"),
        ("monthly", "0 0 1 * *"),
        ("weekly", "0 0 * * 0"),
        ("daily", "0 0 * * *"),
        ("midnight", "0 0 * * *"),
        ("hourly", "0 * * * *"),
    ];
    let named = (prop::sample::select(expansions), any::<bool>(), any::<bool>()).prop_map(
        |((word, expansion), upper, stray)| {
            let word = if upper {
                word.to_uppercase()
            } else {
                word.to_string()
            };
            if stray {
                (
                    format!("@{word} 5"),
                    Expected::Refused("a macro's argument".into()),
                )
            } else {
                (format!("@{word}"), expected_of(expansion))
            }
        },
    );
    let every = prop::sample::select(vec![
        "1s",
        "30s",
        "90s",
        "1m30s",
        "2h",
        "1500ms",
        "36h",
        "7days",
        "999ms",
        "0s",
        "",
        "1.5s",
        "1s 1ns",
        "x",
        "18446744073709551616s",
        "1000000000years",
    ])
    .prop_map(|duration| {
        let expected = match humantime::parse_duration(duration) {
            Ok(d)
                if d.as_millis() >= 1000
                    && d.subsec_nanos() % 1_000_000 == 0
                    && d.as_millis() <= i64::MAX as u128 =>
            {
                Expected::Every(d.as_millis() as u64)
            }
            _ => Expected::Refused("not a whole-ms duration of at least 1s".into()),
        };
        (format!("@every {duration}"), expected)
    });
    let unknown = prop::sample::select(vec!["@reboot", "@", "@every", "@secondly"])
        .prop_map(|t| (t.to_string(), Expected::Refused("an unknown macro".into())));
    prop_oneof![3 => named, 3 => every, 1 => unknown].boxed()
}

/// The oracle's reading of a plain five-field expression without steps.
fn expected_of(expansion: &str) -> Expected {
    let parts: Vec<&str> = expansion.split(' ').collect();
    let bits = |text: &str, f: &Field| -> u64 {
        if text == "*" {
            stepped(f.min, f.max, 1)
        } else {
            1 << text.parse::<u32>().unwrap()
        }
    };
    let weekdays = bits(parts[4], &DOW);
    Expected::Cron(Oracle {
        seconds: 1,
        minutes: bits(parts[0], &MINUTE),
        hours: bits(parts[1], &HOUR),
        days: bits(parts[2], &DOM),
        months: bits(parts[3], &MONTH),
        weekdays: (weekdays & 0x7f) | (weekdays >> 7 & 1),
        and_days: parts[2] == "*" || parts[4] == "*",
        fixed_time: !parts[0].contains('*') && !parts[1].contains('*'),
        with_seconds: false,
    })
}

/// A zone: UTC (by every name), any IANA zone, or not a zone.
fn zone() -> BoxedStrategy<(String, Option<Option<Tz>>)> {
    let utc = prop::sample::select(vec!["", "UTC", "Etc/UTC"]).prop_map(|n| (n.to_string(), Some(None)));
    let named = prop::sample::select(chrono_tz::TZ_VARIANTS.to_vec()).prop_map(|tz| {
        let utc = matches!(tz, Tz::UTC | Tz::Etc__UTC);
        (tz.name().to_string(), Some(if utc { None } else { Some(tz) }))
    });
    let dst_heavy = prop::sample::select(vec![
        Tz::Europe__Berlin,
        Tz::America__New_York,
        Tz::Australia__Lord_Howe,
        Tz::Pacific__Apia,
        Tz::America__Santiago,
        Tz::Asia__Tehran,
    ])
    .prop_map(|tz| (tz.name().to_string(), Some(Some(tz))));
    let bad = prop::sample::select(vec!["utc", "Europe/Berlinn", "+01:00", "CEST", " UTC"])
        .prop_map(|n| (n.to_string(), None));
    prop_oneof![2 => utc, 2 => named, 3 => dst_heavy, 1 => bad].boxed()
}

// ---- checking fire times --------------------------------------------------

/// Seconds since the epoch of 2100-01-01: the windows stay where zones
/// have transitions (chrono-tz lists them up to 2099).
const YEAR_2100: i64 = 4_102_444_800;

/// The offset of `tz` (or UTC) at Unix second `s`, in seconds.
fn offset(tz: Option<Tz>, s: i64) -> i32 {
    match tz {
        None => 0,
        Some(tz) => tz
            .offset_from_utc_datetime(&DateTime::from_timestamp(s, 0).unwrap().naive_utc())
            .fix()
            .local_minus_utc(),
    }
}

/// The wall-clock time of Unix second `s` in `tz`.
fn wall(tz: Option<Tz>, s: i64) -> NaiveDateTime {
    DateTime::from_timestamp(s + i64::from(offset(tz, s)), 0)
        .unwrap()
        .naive_utc()
}

/// An offset change of `tz` within about a year after `s`, if any: the
/// first second with the new offset.
fn transition_after(tz: Tz, s: i64) -> Option<i64> {
    let day = 86_400;
    let start = offset(Some(tz), s);
    let mut hi = (1..=400)
        .map(|d| s + d * day)
        .find(|&t| offset(Some(tz), t) != start)?;
    let mut lo = hi - day;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset(Some(tz), mid) == start {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// Checks `schedule` (the oracle's `expected`, in `tz`) after `after_s`:
/// increasing fire times, each matching, none missed in the window.
fn check_fires(
    schedule: &Schedule,
    expected: &Expected,
    tz: Option<Tz>,
    after_s: i64,
) -> Result<(), TestCaseError> {
    let after = DateTime::from_timestamp(after_s, 0).unwrap();
    let fires = schedule.upcoming(after, 8);
    prop_assert!(!fires.is_empty(), "a valid schedule fires after {after}");
    let mut previous = after;
    for &t in &fires {
        prop_assert!(t > previous, "{t} after {previous}");
        // Nothing between two fires: from anywhere in [previous, t) the next fire is t.
        let midpoint = previous + (t - previous) / 2;
        prop_assert_eq!(schedule.next_after(midpoint), Some(t));
        previous = t;
    }
    match expected {
        Expected::Refused(why) => prop_assert!(false, "accepted, but {}", why),
        Expected::Every(interval_ms) => {
            for t in &fires {
                prop_assert_eq!(t.timestamp_millis().rem_euclid(*interval_ms as i64), 0, "{}", t);
            }
            for w in fires.windows(2) {
                prop_assert_eq!((w[1] - w[0]).num_milliseconds(), *interval_ms as i64);
            }
        }
        Expected::Cron(oracle) => {
            for t in &fires {
                let s = t.timestamp();
                prop_assert_eq!(t.timestamp_subsec_millis(), 0, "{}", t);
                let at_transition = offset(tz, s - 1) != offset(tz, s);
                prop_assert!(
                    oracle.matches(wall(tz, s)) || (oracle.fixed_time && at_transition),
                    "{} (wall {}) does not match",
                    t,
                    wall(tz, s)
                );
            }
            // Brute force over the window up to the last fire, at most an
            // hour (a day at minute steps): every instant that must fire does.
            let step = if oracle.with_seconds { 1 } else { 60 };
            let end = fires.last().unwrap().timestamp().min(after_s + 3_600 * step);
            let first = (after_s / step + 1) * step;
            let fired: std::collections::BTreeSet<i64> = fires.iter().map(|t| t.timestamp()).collect();
            for s in (first..=end).step_by(step as usize) {
                let w = wall(tz, s);
                if !oracle.matches(w) {
                    continue;
                }
                // A fixed-time job fires only at the first instant that shows w.
                let first_showing = match tz {
                    None => true,
                    Some(tz) => tz.from_local_datetime(&w).earliest().map(|d| d.timestamp()) == Some(s),
                };
                if oracle.fixed_time && !first_showing {
                    continue;
                }
                prop_assert!(
                    fired.contains(&s),
                    "{} (wall {}) matches but did not fire; fires {:?}",
                    s,
                    w,
                    fires
                );
            }
        }
    }
    Ok(())
}

/// Where a window starts: anywhere in 1970-2099, or just before a
/// transition of the zone (when it has one near there).
fn window_start(tz: Option<Tz>, seed: i64, near_transition: bool, lead: i64) -> i64 {
    let anywhere = seed.rem_euclid(YEAR_2100 - 400 * 86_400);
    match (tz, near_transition) {
        (Some(tz), true) => transition_after(tz, anywhere).map_or(anywhere, |t| t - lead),
        _ => anywhere,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn near_valid_expressions_are_parsed_as_the_dialect_says_and_fire_as_written(
        (expr, expected) in prop_oneof![6 => cron_expression(), 1 => macro_expression()],
        (zone_name, zone) in zone(),
        seed in any::<i64>(),
        near_transition in any::<bool>(),
        lead in 0i64..7_200,
    ) {
        let spec = ScheduleSpec::Cron { expr: expr.clone(), timezone: zone_name.clone() };
        let compiled = Schedule::compile(&spec);
        let valid = !matches!(expected, Expected::Refused(_)) && zone.is_some();
        match (compiled, zone) {
            (Ok(schedule), Some(tz)) if valid => {
                let tz = if matches!(expected, Expected::Every(_)) { None } else { tz };
                check_fires(&schedule, &expected, tz, window_start(tz, seed, near_transition, lead))?;
            }
            (Ok(_), _) => prop_assert!(false, "{:?} in {:?} was accepted; expected {:?}", expr, zone_name, expected),
            (Err(e), _) => prop_assert!(!valid, "{:?} in {:?} was refused ({}); expected {:?}", expr, zone_name, e, expected),
        }
    }

    #[test]
    fn anything_compiles_or_is_refused_and_fires_in_order_at_any_instant(
        expr in prop_oneof![
            any::<String>(),
            "[ -~]{0,40}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "*", "?", "/", "-", ",", " ", "0", "1", "7", "12", "31", "59", "60", "MON", "jan", "L", "W",
                    "#", "@", "@daily", "@every", "1s", "4294967296", "99999999999999999999", "\t", "*/", "1-", "0/0",
                ]),
                0..16,
            )
            .prop_map(|tokens| tokens.concat()),
            cron_expression().prop_map(|(e, _)| e),
        ],
        zone in prop_oneof![zone().prop_map(|(name, _)| name), any::<String>()],
        after_ms in prop_oneof![
            Just(DateTime::<Utc>::MIN_UTC.timestamp_millis()),
            Just(DateTime::<Utc>::MAX_UTC.timestamp_millis()),
            DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis(),
            -5_000_000_000_000i64..10_000_000_000_000,
        ],
    ) {
        let spec = ScheduleSpec::Cron { expr, timezone: zone };
        if let Ok(schedule) = Schedule::compile(&spec) {
            let after = DateTime::from_timestamp_millis(after_ms).unwrap();
            let fires = schedule.upcoming(after, 4);
            let mut previous = after;
            for t in fires {
                prop_assert!(t > previous, "{} after {}", t, previous);
                previous = t;
            }
            let _ = spec.describe();
        }
    }

    #[test]
    fn every_and_at_specs_fire_in_order_anywhere(
        interval_ms in prop_oneof![Just(0u64), Just(999), Just(1_000), 1_000u64..100_000_000, Just(u64::MAX), Just(i64::MAX as u64), Just(i64::MAX as u64 + 1)],
        phase_ms in prop_oneof![Just(0u64), any::<u64>(), 0u64..100_000],
        at_ms in any::<i64>(),
        after_ms in DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis(),
    ) {
        let after = DateTime::from_timestamp_millis(after_ms).unwrap();
        for spec in [ScheduleSpec::Every { interval_ms, phase_ms }, ScheduleSpec::At { at_ms }] {
            let _ = spec.describe();
            if let Ok(schedule) = Schedule::compile(&spec) {
                let fires = schedule.upcoming(after, 4);
                let mut previous = after;
                for t in &fires {
                    prop_assert!(*t > previous);
                    if let ScheduleSpec::Every { interval_ms, phase_ms } = spec {
                        prop_assert_eq!((t.timestamp_millis() as i128 - phase_ms as i128).rem_euclid(interval_ms as i128), 0);
                    }
                    previous = *t;
                }
            }
        }
    }
}
