//! Unit tests of schedules (`Schedule::compile`, `next_after`, the memo). Table-driven, fixed instants, no clock.
//!
//! Most tables are rows of the form `"EXPR | ZONE | AFTER -> FIRE FIRE ..."`:
//! the cron expression, the zone ("" = UTC), the instant to ask from and the
//! fire times `upcoming` must return, all RFC 3339.

use super::dst::{first_change, offset};
use super::search::naive;
use super::*;
use chrono::{
    Datelike, Duration as Span, MappedLocalTime, NaiveDate, NaiveDateTime, TimeZone, Timelike, Weekday,
};
use chrono_tz::GapInfo;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad test instant {s}: {e}"))
        .with_timezone(&Utc)
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn cron_spec(expr: &str, tz: &str) -> ScheduleSpec {
    ScheduleSpec::Cron {
        expr: expr.into(),
        timezone: tz.into(),
    }
}

fn compile(spec: &ScheduleSpec) -> Schedule {
    Schedule::compile(spec).unwrap_or_else(|e| panic!("{spec:?} failed to compile: {e}"))
}

/// Checks rows of the form `"EXPR | ZONE | AFTER -> FIRE FIRE ..."`.
fn check_table(rows: &[&str]) {
    for row in rows {
        let (lhs, rhs) = row.split_once(" -> ").expect("row needs ' -> '");
        let cols: Vec<&str> = lhs.split('|').map(str::trim).collect();
        let [expr, tz, after] = cols[..] else {
            panic!("row needs EXPR | ZONE | AFTER: {row}")
        };
        let want: Vec<&str> = rhs.split_whitespace().collect();
        let schedule = compile(&cron_spec(expr, tz));
        let got: Vec<String> = schedule
            .upcoming(utc(after), want.len())
            .into_iter()
            .map(fmt)
            .collect();
        assert_eq!(got, want, "{expr:?} in {tz:?} after {after}");
    }
}

#[test]
fn ordinary_cron() {
    check_table(&[
        "*/15 * * * * | | 2026-01-01T00:07:00Z -> 2026-01-01T00:15:00Z 2026-01-01T00:30:00Z 2026-01-01T00:45:00Z",
        "0 9 * * 1-5 | | 2026-01-02T10:00:00Z -> 2026-01-05T09:00:00Z 2026-01-06T09:00:00Z",
        "0 0 1 * * | | 2026-01-15T00:00:00Z -> 2026-02-01T00:00:00Z 2026-03-01T00:00:00Z",
        "0 12 * JAN,jul * | | 2026-01-31T12:00:00Z -> 2026-07-01T12:00:00Z 2026-07-02T12:00:00Z",
        "30 8 1-3 * * | | 2026-01-02T08:30:00Z -> 2026-01-03T08:30:00Z 2026-02-01T08:30:00Z",
        "0 22-23 * * * | | 2026-01-01T22:30:00Z -> 2026-01-01T23:00:00Z 2026-01-02T22:00:00Z",
        "10/20 * * * * | | 2026-01-01T00:00:00Z -> 2026-01-01T00:10:00Z 2026-01-01T00:30:00Z 2026-01-01T00:50:00Z 2026-01-01T01:10:00Z",
        // Strictly after: a fire time itself is skipped; sub-second instants round up.
        "0 * * * * | | 2026-01-01T05:00:00Z -> 2026-01-01T06:00:00Z",
        "0 * * * * | | 2026-01-01T04:59:59.999Z -> 2026-01-01T05:00:00Z",
        // Explicit UTC zone names.
        "0 0 * * * | UTC | 2026-01-01T00:00:00Z -> 2026-01-02T00:00:00Z",
        "0 0 * * * | Etc/UTC | 2026-01-01T00:00:00Z -> 2026-01-02T00:00:00Z",
        // Wall-clock time of the zone.
        "0 9 * * * | Asia/Tokyo | 2026-06-01T00:00:00Z -> 2026-06-02T00:00:00Z",
        "0 9 * * * | Europe/Berlin | 2026-01-10T00:00:00Z -> 2026-01-10T08:00:00Z",
        "0 9 * * * | Europe/Berlin | 2026-07-10T00:00:00Z -> 2026-07-10T07:00:00Z",
        "59 23 31 12 * | | 2026-06-01T00:00:00Z -> 2026-12-31T23:59:00Z 2027-12-31T23:59:00Z",
    ]);
}

#[test]
fn five_vs_six_fields() {
    check_table(&[
        // 5 fields: minute 5 of every hour, second 0.
        "5 * * * * | | 2026-01-01T00:00:00Z -> 2026-01-01T00:05:00Z 2026-01-01T01:05:00Z",
        // 6 fields: second 5 of every minute.
        "5 * * * * * | | 2026-01-01T00:00:00Z -> 2026-01-01T00:00:05Z 2026-01-01T00:01:05Z",
        "*/20 * * * * * | | 2026-01-01T00:00:00Z -> 2026-01-01T00:00:20Z 2026-01-01T00:00:40Z 2026-01-01T00:01:00Z",
        "30 15 10 * * * | | 2026-01-01T11:00:00Z -> 2026-01-02T10:15:30Z",
        "* * * * * * | | 2026-01-01T00:00:00.5Z -> 2026-01-01T00:00:01Z 2026-01-01T00:00:02Z",
        "0 0 0 29 2 * | | 2025-01-01T00:00:00Z -> 2028-02-29T00:00:00Z",
    ]);
}

#[test]
fn macros() {
    check_table(&[
        "@yearly | | 2026-03-01T00:00:00Z -> 2027-01-01T00:00:00Z",
        "@annually | | 2026-03-01T00:00:00Z -> 2027-01-01T00:00:00Z",
        "@monthly | | 2026-03-01T00:00:00Z -> 2026-04-01T00:00:00Z",
        "@weekly | | 2026-01-01T00:00:00Z -> 2026-01-04T00:00:00Z 2026-01-11T00:00:00Z",
        "@daily | | 2026-01-01T00:00:00Z -> 2026-01-02T00:00:00Z",
        "@midnight | | 2026-01-01T00:00:00Z -> 2026-01-02T00:00:00Z",
        "@hourly | | 2026-01-01T00:30:00Z -> 2026-01-01T01:00:00Z",
        "@DAILY | America/New_York | 2026-01-01T00:00:00Z -> 2026-01-01T05:00:00Z",
        "@every 10s | | 2026-01-01T00:00:03Z -> 2026-01-01T00:00:10Z 2026-01-01T00:00:20Z",
        "@every 1m30s | | 2026-01-01T00:00:00Z -> 2026-01-01T00:01:30Z 2026-01-01T00:03:00Z",
        // The zone is irrelevant for @every: still epoch aligned.
        "@every 2h | Asia/Kolkata | 2026-01-01T00:30:00Z -> 2026-01-01T02:00:00Z",
    ]);
}

/// Weekdays fired during the week starting on Sunday 2026-01-04.
fn weekdays_of(dow: &str) -> Vec<Weekday> {
    let schedule = compile(&cron_spec(&format!("0 12 * * {dow}"), ""));
    let week_end = utc("2026-01-11T00:00:00Z");
    let fires = schedule.upcoming(utc("2026-01-04T00:00:00Z"), 7);
    fires
        .into_iter()
        .filter(|t| *t < week_end)
        .map(|t| t.weekday())
        .collect()
}

#[test]
fn day_of_week_numbers_names_ranges_steps() {
    use Weekday::*;
    let all = vec![Sun, Mon, Tue, Wed, Thu, Fri, Sat];
    let table: &[(&str, Vec<Weekday>)] = &[
        ("0", vec![Sun]),
        ("7", vec![Sun]),
        ("0,7", vec![Sun]),
        ("SUN", vec![Sun]),
        ("sun", vec![Sun]),
        ("Mon", vec![Mon]),
        ("1-5", vec![Mon, Tue, Wed, Thu, Fri]),
        ("MON-FRI", vec![Mon, Tue, Wed, Thu, Fri]),
        ("5-7", vec![Sun, Fri, Sat]),
        ("FRI-7", vec![Sun, Fri, Sat]),
        ("6-7", vec![Sun, Sat]),
        ("SAT,SUN", vec![Sun, Sat]),
        ("0-6", all.clone()),
        ("0-7", all.clone()),
        ("*", all.clone()),
        ("?", all),
        ("*/2", vec![Sun, Tue, Thu, Sat]),
        ("1-5/2", vec![Mon, Wed, Fri]),
        ("mon-fri/2", vec![Mon, Wed, Fri]),
        ("1-7/2", vec![Sun, Mon, Wed, Fri]),
        ("3/2", vec![Sun, Wed, Fri]), // 3-7/2 = 3,5,7
        ("TUE,4", vec![Tue, Thu]),
    ];
    for (dow, want) in table {
        assert_eq!(&weekdays_of(dow), want, "day-of-week {dow:?}");
    }
}

#[test]
fn vixie_or_rule() {
    check_table(&[
        // Both restricted: the 13th (a Tuesday in Jan 2026) OR any Friday.
        "0 0 13 * 5 | | 2026-01-01T00:00:00Z -> 2026-01-02T00:00:00Z 2026-01-09T00:00:00Z 2026-01-13T00:00:00Z 2026-01-16T00:00:00Z 2026-01-23T00:00:00Z",
        "0 0 13 * FRI | | 2026-01-13T00:00:00Z -> 2026-01-16T00:00:00Z",
        // Only one restricted: only that one counts.
        "0 0 13 * * | | 2026-01-01T00:00:00Z -> 2026-01-13T00:00:00Z 2026-02-13T00:00:00Z",
        "0 0 * * 5 | | 2026-01-01T00:00:00Z -> 2026-01-02T00:00:00Z 2026-01-09T00:00:00Z",
        "0 0 ? * MON | | 2026-01-01T00:00:00Z -> 2026-01-05T00:00:00Z",
        // Month still restricts: Feb 29 OR a Monday, in February only.
        "0 0 29 2 1 | | 2026-01-01T00:00:00Z -> 2026-02-02T00:00:00Z 2026-02-09T00:00:00Z",
        // A field starting with '*' counts as unrestricted for the rule => AND:
        // odd days that are Mondays.
        "0 0 */2 * 1 | | 2026-01-01T00:00:00Z -> 2026-01-05T00:00:00Z 2026-01-19T00:00:00Z 2026-02-09T00:00:00Z",
        // First Sunday of the month.
        "0 0 1-7 * */7 | | 2026-01-01T00:00:00Z -> 2026-01-04T00:00:00Z 2026-02-01T00:00:00Z",
    ]);
}

#[test]
fn leap_days_and_month_ends() {
    check_table(&[
        "0 0 29 2 * | | 2025-01-01T00:00:00Z -> 2028-02-29T00:00:00Z 2032-02-29T00:00:00Z",
        // 2100 is not a leap year: an 8-year gap.
        "0 0 29 2 * | | 2096-03-01T00:00:00Z -> 2104-02-29T00:00:00Z",
        "0 0 29 2 * | Europe/Berlin | 2025-01-01T00:00:00Z -> 2028-02-28T23:00:00Z",
        "0 0 31 * * | | 2026-01-01T00:00:00Z -> 2026-01-31T00:00:00Z 2026-03-31T00:00:00Z 2026-05-31T00:00:00Z 2026-07-31T00:00:00Z 2026-08-31T00:00:00Z 2026-10-31T00:00:00Z 2026-12-31T00:00:00Z",
        "0 0 30 * * | | 2026-01-30T00:00:00Z -> 2026-03-30T00:00:00Z",
        // Rare but possible (AND rule): Feb 29 falling on a Sunday.
        "0 0 29 2 */7 | | 2004-03-01T00:00:00Z -> 2032-02-29T00:00:00Z 2060-02-29T00:00:00Z 2088-02-29T00:00:00Z 2128-02-29T00:00:00Z",
    ]);
}

#[test]
fn every_alignment_and_phase() {
    let rows: &[(u64, u64, &str, &[&str])] = &[
        (
            10_000,
            0,
            "2026-01-01T00:00:03Z",
            &["2026-01-01T00:00:10Z", "2026-01-01T00:00:20Z"],
        ),
        (10_000, 0, "2026-01-01T00:00:10Z", &["2026-01-01T00:00:20Z"]),
        (10_000, 0, "2026-01-01T00:00:09.9995Z", &["2026-01-01T00:00:10Z"]),
        (
            60_000,
            15_000,
            "2026-01-01T00:00:20Z",
            &["2026-01-01T00:01:15Z", "2026-01-01T00:02:15Z"],
        ),
        (
            60_000,
            15_000,
            "2026-01-01T00:00:14.999Z",
            &["2026-01-01T00:00:15Z"],
        ),
        (
            1_500,
            0,
            "2026-01-01T00:00:00Z",
            &["2026-01-01T00:00:01.500Z", "2026-01-01T00:00:03Z"],
        ),
        (
            86_400_000,
            3_600_000,
            "2026-01-01T05:00:00Z",
            &["2026-01-02T01:00:00Z"],
        ),
        // Before the epoch: still aligned to it.
        (10_000, 0, "1969-12-31T23:59:55Z", &["1970-01-01T00:00:00Z"]),
        (7_000, 1_000, "1969-12-31T23:59:59Z", &["1970-01-01T00:00:01Z"]),
    ];
    for (interval_ms, phase_ms, after, want) in rows {
        let spec = ScheduleSpec::Every {
            interval_ms: *interval_ms,
            phase_ms: *phase_ms,
        };
        let fires = compile(&spec).upcoming(utc(after), want.len());
        let got: Vec<String> = fires.into_iter().map(fmt).collect();
        assert_eq!(&got, want, "{spec:?} after {after}");
    }
    // "@every 10s" is exactly Every { 10s, 0 }.
    let a = compile(&cron_spec("@every 10s", ""));
    let b = compile(&ScheduleSpec::Every {
        interval_ms: 10_000,
        phase_ms: 0,
    });
    assert_eq!(a, b);
}

#[test]
fn at_fires_once() {
    let at = utc("2026-01-02T03:04:05Z");
    let s = compile(&ScheduleSpec::At {
        at_ms: at.timestamp_millis(),
    });
    assert_eq!(s.next_after(at - Span::milliseconds(1)), Some(at));
    assert_eq!(s.next_after(utc("2000-01-01T00:00:00Z")), Some(at));
    assert_eq!(s.next_after(at), None);
    assert_eq!(s.next_after(at + Span::milliseconds(1)), None);
    assert_eq!(s.upcoming(at - Span::days(1), 5), vec![at]);
}

#[test]
fn errors_name_the_field() {
    // "EXPR | ZONE => full message"
    let cron_rows = [
        r#"61 * * * * | => schedule.cron: minute field "61" is out of range 0-59"#,
        r#"* * * | => schedule.cron: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, got 3"#,
        r#"0 0 0 1 1 * 2030 | => schedule.cron: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, got 7 (a year field is not supported)"#,
        r#"   | => schedule.cron: expression is empty"#,
        r#"60 * * * * * | => schedule.cron: second field "60" is out of range 0-59"#,
        r#"0 24 * * * | => schedule.cron: hour field "24" is out of range 0-23"#,
        r#"0 0 0 * * | => schedule.cron: day-of-month field "0" is out of range 1-31"#,
        r#"0 0 1 13 * | => schedule.cron: month field "13" is out of range 1-12"#,
        r#"0 0 * * 8 | => schedule.cron: day-of-week field "8" is out of range 0-7"#,
        r#"1,61 * * * * | => schedule.cron: minute field "1,61": "61" is out of range 0-59"#,
        r#"0 0 * * FUNDAY | => schedule.cron: day-of-week field "FUNDAY" is not a number 0-7 or a name SUN-SAT"#,
        r#"0 0 * FOO * | => schedule.cron: month field "FOO" is not a number 1-12 or a name JAN-DEC"#,
        r#"0 MON * * * | => schedule.cron: hour field "MON" is not a number"#,
        r#"0 0 L * * | => schedule.cron: day-of-month field "L" is not a number"#,
        r#"0 0 * * 5#3 | => schedule.cron: day-of-week field "5#3" is not a number 0-7 or a name SUN-SAT"#,
        r#"*/0 * * * * | => schedule.cron: minute field "*/0" has a step of 0 (must be at least 1)"#,
        r#"*/x * * * * | => schedule.cron: minute field "*/x": "x" is not a valid step (a positive number)"#,
        r#"5-1 * * * * | => schedule.cron: minute field "5-1" is a backwards range (the start must not exceed the end)"#,
        r#"0 0 * * SAT-SUN | => schedule.cron: day-of-week field "SAT-SUN" is a backwards range (the start must not exceed the end)"#,
        r#"1,,2 * * * * | => schedule.cron: minute field "1,,2" has an empty list item"#,
        r#"? * * * * | => schedule.cron: minute field "?" is not a number"#,
        r#"@every | => schedule.cron: "@every" needs a duration like "@every 30s""#,
        r#"@every 500ms | => schedule.cron: "@every 500ms": interval must be at least 1s"#,
        r#"@every soon | => schedule.cron: "@every soon": "soon" is not a duration; use e.g. 30s, 1m30s, 2h"#,
        r#"@reboot | => schedule.cron: unknown macro "@reboot" (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)"#,
        r#"@daily 5 | => schedule.cron: "@daily" takes no arguments, got "5""#,
        r#"0 0 30 2 * | => schedule.cron: "0 0 30 2 *" can never fire: no calendar date matches its day-of-month, month and day-of-week fields"#,
        r#"0 0 31 4,6,9,11 * | => schedule.cron: "0 0 31 4,6,9,11 *" can never fire: no calendar date matches its day-of-month, month and day-of-week fields"#,
        r#"0 0 * * * | Mars/Base => schedule.timezone: unknown IANA time zone "Mars/Base""#,
        r#"0 0 * * * | europe/berlin => schedule.timezone: unknown IANA time zone "europe/berlin""#,
    ];
    for row in cron_rows {
        let (lhs, want) = row.split_once(" => ").unwrap();
        let (expr, tz) = lhs.split_once('|').unwrap();
        let spec = cron_spec(expr.trim(), tz.trim());
        let err = Schedule::compile(&spec).expect_err(&format!("{spec:?} should be rejected"));
        assert_eq!(err.to_string(), want, "{spec:?}");
    }
    let every = |interval_ms, phase_ms| ScheduleSpec::Every {
        interval_ms,
        phase_ms,
    };
    let other_rows = [
        (every(0, 0), "schedule.every: interval must be at least 1s"),
        (every(999, 0), "schedule.every: interval must be at least 1s"),
        (
            every(10_000, 20_000),
            "schedule.every: phase 20s must be smaller than the interval 10s",
        ),
        (
            every(10_000, 10_000),
            "schedule.every: phase 10s must be smaller than the interval 10s",
        ),
        (
            every(u64::MAX, 0),
            "schedule.every: interval 18446744073709551615 ms is too large",
        ),
        (
            ScheduleSpec::At { at_ms: i64::MAX },
            "schedule.at: 9223372036854775807 ms is outside the supported time range",
        ),
    ];
    for (spec, want) in other_rows {
        let err = Schedule::compile(&spec).expect_err(&format!("{spec:?} should be rejected"));
        assert_eq!(err.to_string(), want, "{spec:?}");
    }
}

#[test]
fn describe_is_canonical() {
    let every = |interval_ms, phase_ms| ScheduleSpec::Every {
        interval_ms,
        phase_ms,
    };
    let at = |s: &str| ScheduleSpec::At {
        at_ms: utc(s).timestamp_millis(),
    };
    let rows = [
        (cron_spec("*/5  *\t* * *", ""), "*/5 * * * *"),
        (cron_spec("0 9 * * MON-FRI", "UTC"), "0 9 * * MON-FRI"),
        (
            cron_spec("0 9 * * MON-FRI", "Europe/Berlin"),
            "0 9 * * MON-FRI (Europe/Berlin)",
        ),
        (cron_spec("@every 30s", ""), "@every 30s"),
        (every(10_000, 0), "@every 10s"),
        (every(90_000, 5_000), "@every 1m30s+5s"),
        (every(1_500, 0), "@every 1s500ms"),
        (at("2026-01-02T03:04:05Z"), "@at 2026-01-02T03:04:05Z"),
        (at("2026-01-02T03:04:05.250Z"), "@at 2026-01-02T03:04:05.250Z"),
    ];
    for (spec, want) in rows {
        assert_eq!(spec.describe(), want, "{spec:?}");
    }
    // The compact @every form parses back to the same schedule.
    let spec = every(5_430_250, 0);
    let back = cron_spec(&spec.describe(), "");
    assert_eq!(compile(&back), compile(&spec));
}

fn wall(date: &str, time: &str) -> NaiveDateTime {
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    date.and_time(time.parse().unwrap())
}

/// The DST facts the tables below rely on, checked against chrono-tz itself.
#[test]
fn dst_dates_match_chrono_tz() {
    // (zone, gap wall date and time, first instant after the gap)
    let gaps = [
        ("Europe/Berlin", "2026-03-29", "02:30:00", "2026-03-29T01:00:00Z"),
        (
            "America/New_York",
            "2026-03-08",
            "02:30:00",
            "2026-03-08T07:00:00Z",
        ),
        (
            "Australia/Lord_Howe",
            "2026-10-04",
            "02:15:00",
            "2026-10-03T15:30:00Z",
        ),
    ];
    for (zone, d, t, end) in gaps {
        let tz: Tz = zone.parse().unwrap();
        assert_eq!(
            tz.from_local_datetime(&wall(d, t)),
            MappedLocalTime::None,
            "{zone}"
        );
        let info = GapInfo::new(&wall(d, t), &tz).unwrap();
        assert_eq!(info.end.unwrap().with_timezone(&Utc), utc(end), "{zone}");
    }
    // (zone, folded wall date and time, first occurrence, second occurrence)
    let folds = [
        (
            "Europe/Berlin",
            "2026-10-25",
            "02:30:00",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
        ),
        (
            "America/New_York",
            "2026-11-01",
            "01:30:00",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:30:00Z",
        ),
        (
            "Australia/Lord_Howe",
            "2026-04-05",
            "01:45:00",
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:15:00Z",
        ),
    ];
    for (zone, d, t, first, second) in folds {
        let tz: Tz = zone.parse().unwrap();
        let MappedLocalTime::Ambiguous(a, b) = tz.from_local_datetime(&wall(d, t)) else {
            panic!("{zone}: expected a fold at {d} {t}");
        };
        assert_eq!(a.with_timezone(&Utc), utc(first), "{zone}");
        assert_eq!(b.with_timezone(&Utc), utc(second), "{zone}");
    }
}

#[test]
fn dst_fixed_time_gap_and_fold() {
    check_table(&[
        // Europe/Berlin spring forward 2026-03-29 02:00 CET -> 03:00 CEST: gap times fire at 03:00 CEST.
        "30 2 * * * | Europe/Berlin | 2026-03-28T12:00:00Z -> 2026-03-29T01:00:00Z 2026-03-30T00:30:00Z",
        "0 2 * * * | Europe/Berlin | 2026-03-29T00:59:59Z -> 2026-03-29T01:00:00Z",
        "0 2 * * * | Europe/Berlin | 2026-03-29T01:00:00Z -> 2026-03-30T00:00:00Z",
        // 02:00, 02:30 and 03:00 all land on 01:00Z: one fire.
        "0,30 1-3 * * * | Europe/Berlin | 2026-03-28T23:00:00Z -> 2026-03-29T00:00:00Z 2026-03-29T00:30:00Z 2026-03-29T01:00:00Z 2026-03-29T01:30:00Z 2026-03-29T23:00:00Z",
        // Europe/Berlin fall back 2026-10-25 03:00 CEST -> 02:00 CET: first occurrence only.
        "30 2 * * * | Europe/Berlin | 2026-10-24T12:00:00Z -> 2026-10-25T00:30:00Z 2026-10-26T01:30:00Z",
        "0 1-3 * * * | Europe/Berlin | 2026-10-24T22:00:00Z -> 2026-10-24T23:00:00Z 2026-10-25T00:00:00Z 2026-10-25T02:00:00Z 2026-10-26T00:00:00Z",
        // Asked from inside the second pass: the first occurrence already fired.
        "45 2 * * * | Europe/Berlin | 2026-10-25T01:10:00Z -> 2026-10-26T01:45:00Z",
        "45 2 * * * | Europe/Berlin | 2026-10-25T00:40:00Z -> 2026-10-25T00:45:00Z 2026-10-26T01:45:00Z",
        // A '*' in the seconds field does not make a job a wildcard job.
        "*/20 30 2 * * * | Europe/Berlin | 2026-03-28T12:00:00Z -> 2026-03-29T01:00:00Z 2026-03-30T00:30:00Z",
        "0 30 2 * * * | Europe/Berlin | 2026-10-25T00:30:00Z -> 2026-10-26T01:30:00Z",
        // America/New_York spring forward 2026-03-08 02:00 EST -> 03:00 EDT.
        "30 2 * * * | America/New_York | 2026-03-07T12:00:00Z -> 2026-03-08T07:00:00Z 2026-03-09T06:30:00Z",
        "0 2 * * * | America/New_York | 2026-03-08T06:00:00Z -> 2026-03-08T07:00:00Z 2026-03-09T06:00:00Z",
        // America/New_York fall back 2026-11-01 02:00 EDT -> 01:00 EST.
        "30 1 * * * | America/New_York | 2026-10-31T12:00:00Z -> 2026-11-01T05:30:00Z 2026-11-02T06:30:00Z",
        "0 1 * * * | America/New_York | 2026-11-01T05:00:00Z -> 2026-11-02T06:00:00Z",
        // Australia/Lord_Howe spring forward 2026-10-04 02:00 -> 02:30 (+10:30 -> +11).
        "15 2 * * * | Australia/Lord_Howe | 2026-10-03T00:00:00Z -> 2026-10-03T15:30:00Z 2026-10-04T15:15:00Z",
        "0,15,30 2 * * * | Australia/Lord_Howe | 2026-10-03T00:00:00Z -> 2026-10-03T15:30:00Z 2026-10-04T15:00:00Z",
        // Australia/Lord_Howe fall back 2026-04-05 02:00 -> 01:30 (+11 -> +10:30).
        "45 1 * * * | Australia/Lord_Howe | 2026-04-04T00:00:00Z -> 2026-04-04T14:45:00Z 2026-04-05T15:15:00Z",
        "45 1 * * * | Australia/Lord_Howe | 2026-04-04T15:00:00Z -> 2026-04-05T15:15:00Z",
        "0 2 * * * | Australia/Lord_Howe | 2026-04-04T00:00:00Z -> 2026-04-04T15:30:00Z",
    ]);
}

#[test]
fn dst_wildcard_follows_real_time() {
    // */15 and */10 keep firing every real 15/10 minutes through folds and gaps.
    let rows = [
        ("*/15 * * * *", "Europe/Berlin", "2026-10-24T23:50:00Z", 15),
        ("*/15 * * * *", "Europe/Berlin", "2026-03-28T23:50:00Z", 15),
        ("*/10 * * * *", "America/New_York", "2026-11-01T04:50:00Z", 10),
        ("*/10 * * * *", "America/New_York", "2026-03-08T05:50:00Z", 10),
        ("*/10 * * * *", "Australia/Lord_Howe", "2026-04-04T13:50:00Z", 10),
        ("*/10 * * * *", "Australia/Lord_Howe", "2026-10-03T14:50:00Z", 10),
    ];
    for (expr, tz, after, step) in rows {
        let fires = compile(&cron_spec(expr, tz)).upcoming(utc(after), 24);
        let gaps: Vec<i64> = fires.windows(2).map(|w| (w[1] - w[0]).num_minutes()).collect();
        assert!(
            gaps.iter().all(|g| *g == step),
            "{expr} {tz} after {after}: {gaps:?}"
        );
    }
    check_table(&[
        // Fold: the repeated 02:xx hour fires twice (CEST, then CET).
        "*/15 * * * * | Europe/Berlin | 2026-10-25T00:40:00Z -> 2026-10-25T00:45:00Z 2026-10-25T01:00:00Z 2026-10-25T01:15:00Z",
        "0 * * * * | Europe/Berlin | 2026-10-24T23:30:00Z -> 2026-10-25T00:00:00Z 2026-10-25T01:00:00Z 2026-10-25T02:00:00Z",
        "0 * * * * | America/New_York | 2026-11-01T04:30:00Z -> 2026-11-01T05:00:00Z 2026-11-01T06:00:00Z 2026-11-01T07:00:00Z",
        // Gap: 02:00 CET does not exist, nothing is invented.
        "0 * * * * | Europe/Berlin | 2026-03-28T23:30:00Z -> 2026-03-29T00:00:00Z 2026-03-29T01:00:00Z 2026-03-29T02:00:00Z",
        "30 */1 * * * | Europe/Berlin | 2026-03-28T23:45:00Z -> 2026-03-29T00:30:00Z 2026-03-29T01:30:00Z",
        // Lord Howe gap: 02:00 is missing; 03:00 comes 90 real minutes after 01:00.
        "0 * * * * | Australia/Lord_Howe | 2026-10-03T14:00:00Z -> 2026-10-03T14:30:00Z 2026-10-03T16:00:00Z",
        // Lord Howe fold: 01:30-01:59 repeats, so 01:40 fires twice for a wildcard hour...
        "40 * * * * | Australia/Lord_Howe | 2026-04-04T14:00:00Z -> 2026-04-04T14:40:00Z 2026-04-04T15:10:00Z 2026-04-04T16:10:00Z",
        // ...but once for a fixed hour.
        "40 1 * * * | Australia/Lord_Howe | 2026-04-04T14:00:00Z -> 2026-04-04T14:40:00Z 2026-04-05T15:10:00Z",
    ]);
}

/// Brute-force oracle: fires of `expr` in `tz` in `(from, until]`, computed
/// minute by minute straight from the definitions in the module docs.
fn oracle(expr: &str, tz: Tz, from: i64, until: i64) -> Vec<i64> {
    let Kind::Cron(c) = compile(&cron_spec(expr, "")).kind else {
        panic!("not a cron expression: {expr}")
    };
    let matches = |w: NaiveDateTime| {
        let bit = |mask: u64, v: u32| mask >> v & 1 == 1;
        let dom = bit(c.days, w.day());
        let dow = bit(c.weekdays, w.weekday().num_days_from_sunday());
        let day = if c.and_days { dom && dow } else { dom || dow };
        day && bit(c.months, w.month())
            && bit(c.hours, w.hour())
            && bit(c.minutes, w.minute())
            && bit(c.seconds, w.second())
    };
    let mut out = Vec::new();
    if c.fixed_time {
        // Every matching wall time, at its first instant (or the gap's end).
        let start = from - from.rem_euclid(60) - 2 * 86_400;
        let mut w = naive(start).unwrap();
        while w.and_utc().timestamp() < until + 2 * 86_400 {
            if matches(w) {
                out.push(match tz.from_local_datetime(&w) {
                    MappedLocalTime::Single(t) | MappedLocalTime::Ambiguous(t, _) => t.timestamp(),
                    MappedLocalTime::None => GapInfo::new(&w, &tz).unwrap().end.unwrap().timestamp(),
                });
            }
            w += Span::minutes(1);
        }
        out.sort();
        out.dedup();
        out.retain(|t| *t > from && *t <= until);
    } else {
        // Every instant whose wall time matches.
        let mut t = from - from.rem_euclid(60) + 60;
        while t <= until {
            if matches(tz.from_utc_datetime(&naive(t).unwrap()).naive_local()) {
                out.push(t);
            }
            t += 60;
        }
    }
    out
}

#[test]
fn matches_brute_force_oracle_around_transitions() {
    let exprs = [
        "*/15 * * * *",
        "0 * * * *",
        "30 * * * *",
        "*/7 2-3 * * *",
        "0 2 * * *",
        "30 2 * * *",
        "0,30 1-3 * * *",
        "45 1 * * *",
        "0 0 * * *",
        "15 0 * * *",
        "0 12 * * *",
        "59 23 * * *",
        "0-30/10 1,2 * * *",
        "0 0 13 * 5",
        "20 1 * * 0",
    ];
    // (zone, instants around which to compare)
    let windows = [
        ("Europe/Berlin", ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"]),
        (
            "America/New_York",
            ["2026-03-08T07:00:00Z", "2026-11-01T06:00:00Z"],
        ),
        (
            "Australia/Lord_Howe",
            ["2026-10-03T15:30:00Z", "2026-04-04T15:00:00Z"],
        ),
        // Transitions at midnight.
        (
            "America/Santiago",
            ["2026-04-05T03:00:00Z", "2026-09-06T04:00:00Z"],
        ),
        // Samoa skipped 2011-12-30 entirely; DST began 2011-09-24.
        ("Pacific/Apia", ["2011-12-30T10:00:00Z", "2011-09-24T14:00:00Z"]),
        ("Asia/Tokyo", ["2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z"]),
    ];
    let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap();
    for (zone, centers) in windows {
        let tz: Tz = zone.parse().unwrap();
        for center in centers {
            let center = utc(center).timestamp();
            let (from, until) = (center - 36 * 3600, center + 36 * 3600);
            for expr in exprs {
                let want = oracle(expr, tz, from, until);
                let s = compile(&cron_spec(expr, zone));
                let got: Vec<i64> = s
                    .upcoming(at(from), want.len() + 1)
                    .into_iter()
                    .map(|t| t.timestamp())
                    .filter(|t| *t <= until)
                    .collect();
                assert_eq!(got, want, "{expr} in {zone} around {center}");
                // next_after from each fire, and from one second before the next, agrees.
                for w in want.windows(2) {
                    assert_eq!(s.next_after(at(w[0])), Some(at(w[1])), "{expr} {zone}");
                    assert_eq!(s.next_after(at(w[1] - 1)), Some(at(w[1])), "{expr} {zone}");
                }
            }
        }
    }
}

#[test]
fn far_future_and_limits() {
    check_table(&[
        // chrono-tz has no transitions after 2099: Berlin stays on CET.
        "0 12 1 7 * | Europe/Berlin | 2099-01-01T00:00:00Z -> 2099-07-01T10:00:00Z 2100-07-01T11:00:00Z",
        "0 0 29 2 * | America/New_York | 2399-01-01T00:00:00Z -> 2400-02-29T05:00:00Z 2404-02-29T05:00:00Z",
    ]);
    let s = compile(&cron_spec("0 0 1 1 *", ""));
    assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
    assert_eq!(
        s.upcoming(utc("2026-01-01T00:00:00Z"), 0),
        Vec::<DateTime<Utc>>::new()
    );
    let every = compile(&ScheduleSpec::Every {
        interval_ms: 1000,
        phase_ms: 0,
    });
    assert_eq!(every.next_after(DateTime::<Utc>::MAX_UTC), None);
}

/// A deterministic pseudo-random sweep: random expressions in random zones,
/// around a real offset transition (or a random instant for zones without
/// one), compared with the oracle.
#[test]
fn random_sweep_matches_oracle() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut pick = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let minutes = ["*", "*/15", "*/7", "0", "30", "0,30", "5-20/5", "59", "45"];
    let hours = ["*", "*/2", "0", "1", "2", "3", "1-3", "0,12", "23", "22-23"];
    let doms = ["*", "*", "1", "13", "*/2", "29", "31", "1-7", "?"];
    let months = ["*", "*", "*", "3", "10", "*/3", "2", "4", "9-11"];
    let dows = ["*", "*", "0", "5", "1-5", "*/2", "6-7", "SUN"];
    let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap();
    for _ in 0..150 {
        let expr = [&minutes[..], &hours, &doms, &months, &dows]
            .map(|options| options[pick(options.len())])
            .join(" ");
        if Schedule::compile(&cron_spec(&expr, "")).is_err() {
            continue; // e.g. "31" in month "4"
        }
        let tz = chrono_tz::TZ_VARIANTS[pick(chrono_tz::TZ_VARIANTS.len())];
        // A random day in 1975..2099, moved to the next transition if one is near.
        let mut day = 157_766_400 + pick(124 * 365) as i64 * 86_400;
        let mut center = day;
        for _ in 0..400 {
            if let Some(tr) = first_change(tz, day, offset(tz, day), day + 86_400) {
                center = tr;
                break;
            }
            day += 86_400;
        }
        center += [0, -1, 1, -1800, 1800, -3600, 3600][pick(7)];
        let (from, until) = (center - 36 * 3600, center + 36 * 3600);
        let want = oracle(&expr, tz, from, until);
        let s = compile(&cron_spec(&expr, tz.name()));
        let got: Vec<i64> = s
            .upcoming(at(from), want.len() + 1)
            .into_iter()
            .map(|t| t.timestamp())
            .filter(|t| *t <= until)
            .collect();
        assert_eq!(got, want, "{expr} in {} around {}", tz.name(), at(center));
    }
}

/// The `cron` crate only knows 1970-2100; other years go through twin years
/// (module docs). Crossing 1970, 2100 and the skipped leap days of 1900/2200.
#[test]
fn outside_the_cron_crate_years() {
    check_table(&[
        "0 0 29 2 */7 | | 1890-01-01T00:00:00Z -> 1920-02-29T00:00:00Z 1948-02-29T00:00:00Z 1976-02-29T00:00:00Z 2004-02-29T00:00:00Z",
        "0 0 29 2 1 | | 1899-12-31T00:00:00Z -> 1900-02-05T00:00:00Z 1900-02-12T00:00:00Z 1900-02-19T00:00:00Z",
        "59 23 31 12 * | Europe/Berlin | 1969-12-30T00:00:00Z -> 1969-12-31T22:59:00Z 1970-12-31T22:59:00Z",
        "0 12 * * SUN | | 2100-12-25T00:00:00Z -> 2100-12-26T12:00:00Z 2101-01-02T12:00:00Z",
        "0 0 1 3 * | | 2199-06-01T00:00:00Z -> 2200-03-01T00:00:00Z 2201-03-01T00:00:00Z 2202-03-01T00:00:00Z",
        "0 0 29 2 * | | 2196-03-01T00:00:00Z -> 2204-02-29T00:00:00Z 2208-02-29T00:00:00Z",
        "0 0 13 * 5 | | 2200-02-10T00:00:00Z -> 2200-02-13T00:00:00Z 2200-02-14T00:00:00Z 2200-02-21T00:00:00Z 2200-02-28T00:00:00Z",
        "30 2 * * * | America/New_York | 2101-03-01T00:00:00Z -> 2101-03-01T07:30:00Z",
    ]);
}

#[test]
fn the_memo_answers_as_compile_does_and_stays_bounded() {
    let mut memo = ScheduleMemo::default();
    let spec = cron_spec("*/5 * * * *", "Europe/Paris");
    let fresh = Schedule::compile(&spec).unwrap();
    assert_eq!(*memo.compile(&spec).unwrap(), fresh);
    assert_eq!(*memo.compile(&spec).unwrap(), fresh, "a remembered spec");
    let every = ScheduleSpec::Every {
        interval_ms: 1_000,
        phase_ms: 0,
    };
    assert_eq!(*memo.compile(&every).unwrap(), Schedule::compile(&every).unwrap());
    let bad = cron_spec("61 * * * *", "");
    assert_eq!(
        memo.compile(&bad).unwrap_err(),
        Schedule::compile(&bad).unwrap_err()
    );
    for minute in 0..60 {
        for hour in 0..(ScheduleMemo::CAPACITY / 60 + 2) {
            let spec = cron_spec(
                &format!("{minute} {} * * *", hour % 24),
                &format!("Etc/GMT-{}", hour / 24),
            );
            let _ = memo.compile(&spec);
        }
    }
    assert!(memo.compiled.len() <= ScheduleMemo::CAPACITY);
    assert_eq!(
        *memo.compile(&spec).unwrap(),
        fresh,
        "answers again after a clear"
    );
}
