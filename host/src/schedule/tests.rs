use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Datelike, SecondsFormat, TimeDelta, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

use super::*;
use crate::model::{JobType, MisfirePolicy, Schedule};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad test instant {s}: {e}"))
        .to_utc()
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn tz(name: &str) -> Tz {
    parse_timezone(name).unwrap()
}

fn cron_schedule(expr: &str, zone: Option<&str>) -> Schedule {
    Schedule::Cron {
        expression: expr.to_string(),
        timezone: zone.map(str::to_string),
        misfire: None,
    }
}

/// A cron schedule compiled in `zone` (explicitly named on the schedule).
fn cron_in(expr: &str, zone: &str) -> CompiledSchedule {
    CompiledSchedule::compile(
        &cron_schedule(expr, Some(zone)),
        Tz::UTC,
        utc("2026-01-01T00:00:00Z"),
        &CronCache::new(),
    )
    .unwrap_or_else(|e| panic!("{expr} in {zone}: {e}"))
}

/// The next `n` fires after `after`, as RFC 3339 strings.
fn fires(s: &CompiledSchedule, after: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = utc(after);
    for _ in 0..n {
        match s.next_after(t) {
            Some(next) => {
                assert!(next > t, "next_after({t}) = {next} is not after it");
                out.push(fmt(next));
                t = next;
            }
            None => break,
        }
    }
    out
}

fn expression_error(expr: &str) -> String {
    match ParsedCron::parse(expr) {
        Ok(_) => panic!("`{expr}` should be rejected"),
        Err(e) => e.to_string(),
    }
}

fn interval(every: u64, start_at: Option<&str>, anchor: &str) -> CompiledSchedule {
    CompiledSchedule::compile(
        &Schedule::Interval {
            every_seconds: every,
            start_at: start_at.map(utc),
            misfire: None,
        },
        Tz::UTC,
        utc(anchor),
        &CronCache::new(),
    )
    .unwrap()
}

// ---- acceptance and basics ----------------------------------------------------------------------

#[test]
fn acceptance_daily_nine_in_taipei() {
    let s = cron_in("0 9 * * *", "Asia/Taipei");
    assert_eq!(
        s.next_after(utc("2026-11-24T00:00:00Z")),
        Some(utc("2026-11-24T01:00:00Z"))
    );
    assert_eq!(
        fires(&s, "2026-11-24T00:00:00Z", 3),
        [
            "2026-11-24T01:00:00Z",
            "2026-11-25T01:00:00Z",
            "2026-11-26T01:00:00Z"
        ]
    );
    assert_eq!(s.timezone(), Some(chrono_tz::Asia::Taipei));
    assert_eq!(s.job_type(), JobType::Cron);
}

#[test]
fn default_zone_is_used_when_the_schedule_names_none() {
    let cache = CronCache::new();
    let anchor = utc("2026-01-01T00:00:00Z");
    let s = CompiledSchedule::compile(
        &cron_schedule("0 9 * * *", None),
        chrono_tz::Europe::Berlin,
        anchor,
        &cache,
    )
    .unwrap();
    assert_eq!(s.timezone(), Some(chrono_tz::Europe::Berlin));
    // Winter: 09:00 CET = 08:00Z; summer: 09:00 CEST = 07:00Z.
    assert_eq!(
        fires(&s, "2026-01-10T00:00:00Z", 1),
        ["2026-01-10T08:00:00Z"]
    );
    assert_eq!(
        fires(&s, "2026-07-10T00:00:00Z", 1),
        ["2026-07-10T07:00:00Z"]
    );

    // An explicit zone wins over the default.
    let s = CompiledSchedule::compile(
        &cron_schedule("0 9 * * *", Some("Asia/Tokyo")),
        chrono_tz::Europe::Berlin,
        anchor,
        &cache,
    )
    .unwrap();
    assert_eq!(s.timezone(), Some(chrono_tz::Asia::Tokyo));
    assert_eq!(
        fires(&s, "2026-01-09T12:00:00Z", 1),
        ["2026-01-10T00:00:00Z"]
    );
}

#[test]
fn next_after_is_strictly_after_and_ignores_sub_seconds() {
    let s = cron_in("0 9 * * *", "UTC");
    assert_eq!(
        s.next_after(utc("2026-05-01T09:00:00Z")),
        Some(utc("2026-05-02T09:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-05-01T08:59:59.999Z")),
        Some(utc("2026-05-01T09:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-05-01T09:00:00.000001Z")),
        Some(utc("2026-05-02T09:00:00Z"))
    );
    let every_second = cron_in("* * * * * *", "UTC");
    assert_eq!(
        every_second.next_after(utc("2026-05-01T10:00:00.5Z")),
        Some(utc("2026-05-01T10:00:01Z"))
    );
}

#[test]
fn six_fields_have_leading_seconds() {
    let s = cron_in("*/20 * * * * *", "UTC");
    assert_eq!(
        fires(&s, "2026-05-01T10:00:00Z", 4),
        [
            "2026-05-01T10:00:20Z",
            "2026-05-01T10:00:40Z",
            "2026-05-01T10:01:00Z",
            "2026-05-01T10:01:20Z"
        ]
    );
    let s = cron_in("15 30 9 * * *", "UTC");
    assert_eq!(
        fires(&s, "2026-05-01T00:00:00Z", 1),
        ["2026-05-01T09:30:15Z"]
    );
    assert!(s.cron().unwrap().has_seconds());
    // Five fields fire at second 0.
    let s = cron_in("30 9 * * *", "UTC");
    assert_eq!(
        fires(&s, "2026-05-01T00:00:00Z", 1),
        ["2026-05-01T09:30:00Z"]
    );
    assert!(!s.cron().unwrap().has_seconds());
}

#[test]
fn lists_ranges_and_steps() {
    let s = cron_in("*/20 9-10 * * *", "UTC");
    assert_eq!(
        fires(&s, "2026-05-01T00:00:00Z", 7),
        [
            "2026-05-01T09:00:00Z",
            "2026-05-01T09:20:00Z",
            "2026-05-01T09:40:00Z",
            "2026-05-01T10:00:00Z",
            "2026-05-01T10:20:00Z",
            "2026-05-01T10:40:00Z",
            "2026-05-02T09:00:00Z"
        ]
    );
    let s = cron_in("5-59/15 8,17 * * *", "UTC");
    assert_eq!(
        fires(&s, "2026-05-01T00:00:00Z", 5),
        [
            "2026-05-01T08:05:00Z",
            "2026-05-01T08:20:00Z",
            "2026-05-01T08:35:00Z",
            "2026-05-01T08:50:00Z",
            "2026-05-01T17:05:00Z"
        ]
    );
}

#[test]
fn month_and_weekday_names() {
    // Weekdays at noon in January and July only; 2026-01-01 is a Thursday.
    let s = cron_in("0 12 * jan,JUL Mon-Fri", "UTC");
    let got = fires(&s, "2026-01-01T00:00:00Z", 3);
    assert_eq!(
        got,
        [
            "2026-01-01T12:00:00Z",
            "2026-01-02T12:00:00Z",
            "2026-01-05T12:00:00Z"
        ]
    );
    // After January's last weekday (Sat 31st) comes July 1st (a Wednesday).
    assert_eq!(
        fires(&s, "2026-01-30T13:00:00Z", 1),
        ["2026-07-01T12:00:00Z"]
    );
    // 7 and 0 and SUN are all Sunday.
    let seven = cron_in("0 0 * * 7", "UTC");
    let zero = cron_in("0 0 * * 0", "UTC");
    let sun = cron_in("0 0 * * SUN", "UTC");
    let a = fires(&seven, "2026-05-01T00:00:00Z", 5);
    assert_eq!(a, fires(&zero, "2026-05-01T00:00:00Z", 5));
    assert_eq!(a, fires(&sun, "2026-05-01T00:00:00Z", 5));
    assert_eq!(a[0], "2026-05-03T00:00:00Z");
}

#[test]
fn croner_specials_last_day_and_nth_weekday() {
    let last = cron_in("0 12 L * *", "UTC");
    assert_eq!(
        fires(&last, "2026-02-01T00:00:00Z", 2),
        ["2026-02-28T12:00:00Z", "2026-03-31T12:00:00Z"]
    );
    let second_friday = cron_in("0 12 * * 5#2", "UTC");
    assert_eq!(
        fires(&second_friday, "2026-05-01T00:00:00Z", 2),
        ["2026-05-08T12:00:00Z", "2026-06-12T12:00:00Z"]
    );
}

// ---- Vixie day-of-month / day-of-week rule --------------------------------------------------------

#[test]
fn restricted_dom_and_dow_match_either() {
    // 2026-06-01 is a Monday; 2026-07-01 a Wednesday.
    let s = cron_in("0 9 1,15 * MON", "UTC");
    assert_eq!(
        fires(&s, "2026-06-01T00:00:00Z", 7),
        [
            "2026-06-01T09:00:00Z", // day 1 and Monday
            "2026-06-08T09:00:00Z", // Monday
            "2026-06-15T09:00:00Z", // day 15 and Monday
            "2026-06-22T09:00:00Z",
            "2026-06-29T09:00:00Z",
            "2026-07-01T09:00:00Z", // day 1, a Wednesday
            "2026-07-06T09:00:00Z", // Monday
        ]
    );
    let mut t = utc("2026-01-01T00:00:00Z");
    for _ in 0..200 {
        t = s.next_after(t).unwrap();
        assert!(
            t.day() == 1 || t.day() == 15 || t.weekday() == Weekday::Mon,
            "{t} matches neither field"
        );
    }
}

#[test]
fn star_led_day_field_means_both_must_match_like_vixie() {
    // `*/2` starts with `*`: Vixie cron then requires both fields (odd days that are Mondays).
    let s = cron_in("0 0 */2 * MON", "UTC");
    assert_eq!(
        fires(&s, "2026-07-01T00:00:00Z", 3),
        [
            "2026-07-13T00:00:00Z",
            "2026-07-27T00:00:00Z",
            "2026-08-03T00:00:00Z"
        ]
    );
    // Either field a plain `*`: only the other one counts.
    let mondays = cron_in("0 0 * * MON", "UTC");
    assert_eq!(
        fires(&mondays, "2026-07-01T00:00:00Z", 2),
        ["2026-07-06T00:00:00Z", "2026-07-13T00:00:00Z"]
    );
    let firsts = cron_in("0 0 1 * *", "UTC");
    assert_eq!(
        fires(&firsts, "2026-07-01T00:00:00Z", 2),
        ["2026-08-01T00:00:00Z", "2026-09-01T00:00:00Z"]
    );
    // A `*`-led day-of-week (`*/3` = Sun, Wed, Sat) with a restricted day-of-month: both too,
    // so only the 1st-7th that fall on those weekdays.
    let s = cron_in("0 0 1-7 * */3", "UTC");
    let got = fires(&s, "2026-06-30T12:00:00Z", 4);
    // July 2026: 1 Wed, 4 Sat, 5 Sun; August: 1 Sat.
    assert_eq!(
        got,
        [
            "2026-07-01T00:00:00Z",
            "2026-07-04T00:00:00Z",
            "2026-07-05T00:00:00Z",
            "2026-08-01T00:00:00Z"
        ]
    );
}

// ---- aliases ------------------------------------------------------------------------------------

#[test]
fn aliases_expand_like_vixie() {
    let cases = [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
        ("  @Hourly ", "0 * * * *"),
    ];
    for (alias, expansion) in cases {
        let a = cron_in(alias, "Europe/Berlin");
        let b = cron_in(expansion, "Europe/Berlin");
        assert_eq!(
            fires(&a, "2026-03-01T00:00:00Z", 30),
            fires(&b, "2026-03-01T00:00:00Z", 30),
            "{alias}"
        );
    }
    assert_eq!(
        fires(&cron_in("@weekly", "UTC"), "2026-05-01T00:00:00Z", 1),
        ["2026-05-03T00:00:00Z"]
    );
    assert_eq!(
        fires(&cron_in("@yearly", "UTC"), "2026-05-01T00:00:00Z", 1),
        ["2027-01-01T00:00:00Z"]
    );
    // Fixed-time vs wildcard classes follow the expansion.
    assert!(ParsedCron::parse("@daily").unwrap().is_fixed_time());
    assert!(!ParsedCron::parse("@hourly").unwrap().is_fixed_time());
}

#[test]
fn reboot_unknown_aliases_and_year_fields_are_rejected() {
    let e = expression_error("@reboot");
    assert!(e.starts_with("schedule.expression: `@reboot`: "), "{e}");
    assert!(e.contains("not supported"), "{e}");
    let e = expression_error("@fortnightly");
    assert!(e.contains("unknown alias") && e.contains("@daily"), "{e}");
    let e = expression_error("0 0 1 1 * 2030");
    // Six fields are seconds-first: `2030` is then an out-of-range day-of-week.
    assert!(e.contains("day-of-week must be 0-7"), "{e}");
    let e = expression_error("0 0 12 1 1 * 2030");
    assert!(e.contains("7 fields") && e.contains("year"), "{e}");
    let e = expression_error("* * * *");
    assert!(
        e.contains("expected 5 fields") && e.contains("found 4"),
        "{e}"
    );
    let e = expression_error("* * * * * * * *");
    assert!(e.contains("found 8"), "{e}");
}

// ---- validation messages -----------------------------------------------------------------------

#[test]
fn error_messages_name_the_field_and_the_expression() {
    assert_eq!(
        expression_error("61 * * * *"),
        "schedule.expression: `61 * * * *`: minute must be 0-59"
    );
    assert_eq!(
        expression_error("0 24 * * *"),
        "schedule.expression: `0 24 * * *`: hour must be 0-23"
    );
    assert_eq!(
        expression_error("0 0 0 * *"),
        "schedule.expression: `0 0 0 * *`: day-of-month must be 1-31"
    );
    assert_eq!(
        expression_error("0 0 * 13 *"),
        "schedule.expression: `0 0 * 13 *`: month must be 1-12 or JAN-DEC"
    );
    assert!(expression_error("0 0 * * 8").contains("day-of-week must be 0-7 or SUN-SAT"));
    assert_eq!(
        expression_error("60 * * * * *"),
        "schedule.expression: `60 * * * * *`: second must be 0-59"
    );
    assert!(expression_error("0 9-30 * * *").contains("hour must be 0-23"));
    assert!(expression_error("0 0 * * MONDAY").contains("`MONDAY` is not valid"));
    assert!(expression_error("0 0 * FOO *").contains("month field `FOO`"));
    assert!(expression_error("a * * * *").contains("minute field `a`: `a` is not a number"));
    assert!(expression_error("1,,2 * * * *").contains("empty list item"));
    assert!(expression_error("*/0 * * * *").contains("minute step `/0` must be at least 1"));
    assert!(expression_error("*/x * * * *").contains("not a positive number"));
    let e = expression_error("0 22-2 * * *");
    assert!(e.contains("hour range `22-2` runs backwards"), "{e}");
    let e = expression_error("5/10 * * * *");
    assert!(
        e.starts_with("schedule.expression: `5/10 * * * *`: minute field `5/10`: "),
        "{e}"
    );
    assert!(e.contains("*/10"), "{e}");
    let e = expression_error("0 0 * * 5#6");
    assert!(e.contains("must be 1-5"), "{e}");
    assert_eq!(
        ParsedCron::parse("   ").unwrap_err(),
        ScheduleError::EmptyExpression
    );
    assert!(ScheduleError::EmptyExpression
        .to_string()
        .starts_with("schedule.expression"));
}

#[test]
fn expressions_that_never_match_are_rejected() {
    for expr in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"] {
        let e = expression_error(expr);
        assert!(e.contains("never matches"), "{expr}: {e}");
    }
    // Rare but real: February 29th.
    let leap = cron_in("0 0 29 2 *", "UTC");
    assert_eq!(
        fires(&leap, "2026-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
}

#[test]
fn timezones_parse_and_unknown_ones_are_named() {
    assert_eq!(
        parse_timezone("Europe/Berlin").unwrap(),
        chrono_tz::Europe::Berlin
    );
    assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
    assert_eq!(
        parse_timezone("europe/berlin").unwrap(),
        chrono_tz::Europe::Berlin
    );
    assert_eq!(
        parse_timezone(" Asia/Taipei ").unwrap(),
        chrono_tz::Asia::Taipei
    );
    assert_eq!(
        parse_timezone("Mars/Olympus").unwrap_err().to_string(),
        "schedule.timezone: unknown IANA time zone `Mars/Olympus` (e.g. `Europe/Berlin`, `UTC`)"
    );
    assert!(parse_timezone("").is_err());
    let err = CompiledSchedule::compile(
        &cron_schedule("0 9 * * *", Some("Mars/Olympus")),
        Tz::UTC,
        Utc::now(),
        &CronCache::new(),
    )
    .unwrap_err();
    assert!(matches!(err, ScheduleError::UnknownTimezone { .. }));
}

#[test]
fn validate_covers_every_kind() {
    let utc_tz = Tz::UTC;
    assert!(validate(&cron_schedule("0 9 * * *", Some("Asia/Taipei")), utc_tz).is_ok());
    assert!(validate(&cron_schedule("0 9 * * *", None), utc_tz).is_ok());
    assert!(matches!(
        validate(&cron_schedule("0 9 * * *", Some("Nowhere/Land")), utc_tz),
        Err(ScheduleError::UnknownTimezone { .. })
    ));
    assert!(matches!(
        validate(&cron_schedule("99 * * * *", None), utc_tz),
        Err(ScheduleError::InvalidExpression { .. })
    ));
    let every = |s: u64| Schedule::Interval {
        every_seconds: s,
        start_at: None,
        misfire: Some(MisfirePolicy::RunLatest),
    };
    assert!(validate(&every(1), utc_tz).is_ok());
    assert_eq!(
        validate(&every(0), utc_tz).unwrap_err().to_string(),
        "schedule.every_seconds must be at least 1"
    );
    assert!(matches!(
        validate(&every(MAX_EVERY_SECONDS + 1), utc_tz),
        Err(ScheduleError::IntervalTooLong { .. })
    ));
    assert!(validate(&every(u64::MAX), utc_tz).is_err());
    assert!(validate(
        &Schedule::Once {
            at: utc("2020-01-01T00:00:00Z")
        },
        utc_tz
    )
    .is_ok());
    assert!(validate(&Schedule::Manual, utc_tz).is_ok());
    // compile agrees with validate.
    assert_eq!(
        CompiledSchedule::compile(&every(0), utc_tz, Utc::now(), &CronCache::new()).unwrap_err(),
        ScheduleError::IntervalTooShort
    );
}

#[test]
fn fixed_time_classification_follows_isc_cron() {
    for (expr, fixed) in [
        ("30 2 * * *", true),
        ("0 1,13 * * *", true),
        ("0-59/15 2 * * *", true),
        ("0 0 * * MON", true),
        ("0 30 2 * * *", true),
        ("*/15 * * * *", false),
        ("0 * * * *", false),
        ("*/15 2 * * *", false),
        ("0 */2 * * *", false),
        ("*/10 30 2 * * *", false),
        ("@midnight", true),
    ] {
        assert_eq!(
            ParsedCron::parse(expr).unwrap().is_fixed_time(),
            fixed,
            "{expr}"
        );
    }
}

// ---- DST: America/New_York (2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST)

#[test]
fn new_york_spring_gap_fixed_time_fires_once_after_the_gap() {
    let s = cron_in("30 2 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-03-06T12:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z", // 02:30 EST
            "2026-03-08T07:00:00Z", // 02:30 does not exist: 03:00 EDT, once
            "2026-03-09T06:30:00Z", // 02:30 EDT
        ]
    );
    // Just before the gap, and from the gap's end instant itself.
    assert_eq!(
        s.next_after(utc("2026-03-08T06:59:59Z")),
        Some(utc("2026-03-08T07:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-03-08T07:00:00Z")),
        Some(utc("2026-03-09T06:30:00Z"))
    );
    // A time listed twice inside the gap still fires once.
    let s = cron_in("0,30 2 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-03-08T06:00:00Z", 2),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"]
    );
}

#[test]
fn new_york_spring_gap_wildcard_jobs_skip_the_missing_hour() {
    let s = cron_in("*/15 * * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-03-08T06:30:00Z", 4),
        [
            "2026-03-08T06:45:00Z", // 01:45 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT
            "2026-03-08T07:15:00Z",
            "2026-03-08T07:30:00Z"
        ]
    );
    let hourly = cron_in("0 * * * *", "America/New_York");
    assert_eq!(
        fires(&hourly, "2026-03-08T05:30:00Z", 3),
        [
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T08:00:00Z"
        ]
    );
    // Minute wildcard with a fixed hour is a wildcard job: nothing on the gap day.
    let s = cron_in("*/15 2 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-03-07T12:00:00Z", 1),
        ["2026-03-09T06:00:00Z"]
    );
}

#[test]
fn new_york_fall_back_fixed_time_fires_at_first_occurrence_only() {
    let s = cron_in("30 1 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-10-31T12:00:00Z", 3),
        [
            "2026-11-01T05:30:00Z", // 01:30 EDT (not again at 06:30Z, 01:30 EST)
            "2026-11-02T06:30:00Z", // 01:30 EST
            "2026-11-03T06:30:00Z",
        ]
    );
    // From inside the repeated hour: on its first pass, then on its second pass.
    assert_eq!(
        s.next_after(utc("2026-11-01T05:10:00Z")),
        Some(utc("2026-11-01T05:30:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-11-01T05:30:00Z")),
        Some(utc("2026-11-02T06:30:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-11-01T06:10:00Z")),
        Some(utc("2026-11-02T06:30:00Z"))
    );
    // Several fixed times inside the repeated hour: each once, all on the first pass.
    let s = cron_in("0,30 1 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-11-01T04:00:00Z", 3),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:00:00Z"
        ]
    );
    // 1 and 2 o'clock: 01:00 EDT, then 02:00 EST (01:00 EST is the repeat).
    let s = cron_in("0 1,2 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-11-01T04:00:00Z", 3),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-02T06:00:00Z"
        ]
    );
}

#[test]
fn new_york_fall_back_wildcard_jobs_fire_through_both_passes() {
    let s = cron_in("*/15 * * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-11-01T04:50:00Z", 9),
        [
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T05:15:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T05:45:00Z",
            "2026-11-01T06:00:00Z", // 01:00 EST
            "2026-11-01T06:15:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T06:45:00Z",
            "2026-11-01T07:00:00Z", // 02:00 EST
        ]
    );
    // Starting inside the fold, on either pass.
    assert_eq!(
        s.next_after(utc("2026-11-01T05:50:00Z")),
        Some(utc("2026-11-01T06:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-11-01T06:20:00Z")),
        Some(utc("2026-11-01T06:30:00Z"))
    );
    let hourly = cron_in("0 * * * *", "America/New_York");
    assert_eq!(
        fires(&hourly, "2026-11-01T03:30:00Z", 5),
        [
            "2026-11-01T04:00:00Z", // 00:00 EDT
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T06:00:00Z", // 01:00 EST
            "2026-11-01T07:00:00Z", // 02:00 EST
            "2026-11-01T08:00:00Z"
        ]
    );
    assert_eq!(
        hourly.next_after(utc("2026-11-01T05:00:00Z")),
        Some(utc("2026-11-01T06:00:00Z"))
    );
    // A fixed hour with a wildcard minute is a wildcard job: both passes of 01:xx.
    let s = cron_in("*/30 1 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2026-11-01T04:00:00Z", 5),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-02T06:00:00Z"
        ]
    );
}

// ---- DST: Europe/Berlin (2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET)

#[test]
fn berlin_spring_gap() {
    let s = cron_in("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2026-03-27T12:00:00Z", 3),
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST, once
            "2026-03-30T00:30:00Z"  // 02:30 CEST
        ]
    );
    let s = cron_in("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2026-03-29T00:15:00Z", 3),
        [
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z"
        ]
    );
}

#[test]
fn berlin_fall_back() {
    let s = cron_in("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    assert_eq!(
        s.next_after(utc("2026-10-25T01:10:00Z")), // 02:10 CET, second pass
        Some(utc("2026-10-26T01:30:00Z"))
    );
    let s = cron_in("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2026-10-24T23:50:00Z", 5),
        [
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z", // 02:00 CET
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:00:00Z" // 03:00 CET
        ]
    );
}

// ---- DST with 30-minute shifts and in the southern hemisphere: Australia/Lord_Howe
// (+11:00 in summer, +10:30 in winter; 2026-04-05 02:00 -> 01:30; 2026-10-04 02:00 -> 02:30)

#[test]
fn lord_howe_half_hour_shifts() {
    // Fall-back: wall 01:30-02:00 repeats; a fixed 01:45 fires on the first pass only.
    let s = cron_in("45 1 * * *", "Australia/Lord_Howe");
    assert_eq!(
        fires(&s, "2026-04-03T12:00:00Z", 3),
        [
            "2026-04-03T14:45:00Z", // Apr 4 01:45 +11:00
            "2026-04-04T14:45:00Z", // Apr 5 01:45 +11:00 (not again at 15:15Z, +10:30)
            "2026-04-05T15:15:00Z"  // Apr 6 01:45 +10:30
        ]
    );
    // Spring-forward: wall 02:00-02:30 is skipped; a fixed 02:15 fires at 02:30 +11:00.
    let s = cron_in("15 2 * * *", "Australia/Lord_Howe");
    assert_eq!(
        fires(&s, "2026-10-02T12:00:00Z", 3),
        [
            "2026-10-02T15:45:00Z", // Oct 3 02:15 +10:30
            "2026-10-03T15:30:00Z", // Oct 4 02:30 +11:00
            "2026-10-04T15:15:00Z"  // Oct 5 02:15 +11:00
        ]
    );
}

#[test]
fn santiago_midnight_gap() {
    // Chile springs forward at 24:00 (2026-09-06 00:00 -04 -> 01:00 -03): a midnight job fires
    // at 01:00 that day, still on the right date.
    let s = cron_in("0 0 * * *", "America/Santiago");
    assert_eq!(
        fires(&s, "2026-09-04T12:00:00Z", 3),
        [
            "2026-09-05T04:00:00Z",
            "2026-09-06T04:00:00Z",
            "2026-09-07T03:00:00Z"
        ]
    );
}

/// Wildcard jobs keep firing in real time through every transition: consecutive fires of
/// `* * * * *` are always exactly 60 s apart, of `*/15` exactly 15 min.
#[test]
fn wildcard_jobs_never_double_or_lose_real_time_slots() {
    let windows = [
        (
            "America/New_York",
            "2026-03-08T04:00:00Z",
            "2026-03-08T10:00:00Z",
        ),
        (
            "America/New_York",
            "2026-11-01T03:00:00Z",
            "2026-11-01T09:00:00Z",
        ),
        (
            "Europe/Berlin",
            "2026-03-28T22:00:00Z",
            "2026-03-29T04:00:00Z",
        ),
        (
            "Europe/Berlin",
            "2026-10-24T22:00:00Z",
            "2026-10-25T04:00:00Z",
        ),
        (
            "Australia/Lord_Howe",
            "2026-04-04T12:00:00Z",
            "2026-04-04T18:00:00Z",
        ),
        (
            "Australia/Lord_Howe",
            "2026-10-03T12:00:00Z",
            "2026-10-03T18:00:00Z",
        ),
        (
            "Australia/Sydney",
            "2026-04-04T14:00:00Z",
            "2026-04-04T18:00:00Z",
        ),
    ];
    for (zone, from, to) in windows {
        for (expr, step) in [("* * * * *", 60), ("*/15 * * * *", 900)] {
            let s = cron_in(expr, zone);
            let (from, to) = (utc(from), utc(to));
            let mut prev = s.next_after(from).unwrap();
            assert!((prev - from).num_seconds() <= step, "{zone} {expr}");
            let mut count = 1;
            while prev < to {
                let next = s.next_after(prev).unwrap();
                assert_eq!(
                    (next - prev).num_seconds(),
                    step,
                    "{zone} {expr}: {prev} -> {next}"
                );
                prev = next;
                count += 1;
            }
            let (slots, n) = s.slots_between(from, to, 0);
            assert!(slots.is_empty());
            assert_eq!(
                n,
                (to - from).num_seconds() as u64 / step as u64,
                "{zone} {expr}"
            );
            assert!(count >= n);
        }
    }
}

/// Fixed-time daily jobs fire exactly once per local date all year, DST or not.
#[test]
fn fixed_daily_jobs_fire_once_per_local_day_all_year() {
    for zone in ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"] {
        let z = tz(zone);
        for expr in [
            "30 2 * * *",
            "30 1 * * *",
            "45 1 * * *",
            "15 2 * * *",
            "0 0 * * *",
        ] {
            let s = cron_in(expr, zone);
            let start =
                z.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap().to_utc() - TimeDelta::seconds(1);
            let end =
                z.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap().to_utc() - TimeDelta::seconds(1);
            let mut t = start;
            let mut dates = Vec::new();
            while let Some(next) = s.next_after(t).filter(|n| *n <= end) {
                dates.push(next.with_timezone(&z).date_naive());
                t = next;
            }
            assert_eq!(dates.len(), 365, "{zone} {expr}");
            dates.dedup();
            assert_eq!(dates.len(), 365, "{zone} {expr}: a date fired twice");
            let (_, n) = s.slots_between(start, end, 0);
            assert_eq!(n, 365, "{zone} {expr}");
        }
    }
}

// ---- intervals -----------------------------------------------------------------------------------

#[test]
fn interval_counts_from_the_anchor() {
    let s = interval(3600, None, "2026-05-01T10:00:00Z");
    assert_eq!(s.job_type(), JobType::Interval);
    assert_eq!(s.timezone(), None);
    assert_eq!(
        fires(&s, "2026-05-01T10:00:00Z", 3),
        [
            "2026-05-01T11:00:00Z",
            "2026-05-01T12:00:00Z",
            "2026-05-01T13:00:00Z"
        ]
    );
    // Asking from before the anchor gives the first slot, not the anchor itself.
    assert_eq!(
        s.next_after(utc("2020-01-01T00:00:00Z")),
        Some(utc("2026-05-01T11:00:00Z"))
    );
    // From the middle of a period: the next grid point, not after + every.
    assert_eq!(
        s.next_after(utc("2026-05-03T07:59:59Z")),
        Some(utc("2026-05-03T08:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-05-03T08:00:00Z")),
        Some(utc("2026-05-03T09:00:00Z"))
    );
}

#[test]
fn interval_slots_are_stable_across_restarts() {
    // The anchor is the job's creation time, stored with the job: compiling again later (after a
    // restart) gives the same grid, not one drifting from the restart time.
    let created = "2026-05-01T10:00:07.250Z";
    let before = interval(90, None, created);
    let after_restart = interval(90, None, created);
    let probe = utc("2026-06-12T17:41:03Z");
    assert_eq!(before.next_after(probe), after_restart.next_after(probe));
    // Sub-second anchors are floored, so slots are whole seconds.
    assert_eq!(
        fires(&before, created, 2),
        ["2026-05-01T10:01:37Z", "2026-05-01T10:03:07Z"]
    );
}

#[test]
fn interval_start_at_overrides_the_anchor() {
    // In the future: the first fire is start_at itself.
    let s = interval(600, Some("2026-05-02T08:00:00Z"), "2026-05-01T10:00:00Z");
    assert_eq!(
        fires(&s, "2026-05-01T10:00:00Z", 3),
        [
            "2026-05-02T08:00:00Z",
            "2026-05-02T08:10:00Z",
            "2026-05-02T08:20:00Z"
        ]
    );
    // In the past: the grid is aligned on start_at.
    let s = interval(600, Some("2026-01-01T00:05:00Z"), "2026-05-01T10:00:00Z");
    assert_eq!(
        fires(&s, "2026-05-01T10:01:00Z", 2),
        ["2026-05-01T10:05:00Z", "2026-05-01T10:15:00Z"]
    );
    // A fractional start_at rounds up: never before the time asked for.
    let s = interval(60, Some("2026-05-02T08:00:00.3Z"), "2026-05-01T10:00:00Z");
    assert_eq!(
        fires(&s, "2026-05-01T10:00:00Z", 1),
        ["2026-05-02T08:00:01Z"]
    );
}

#[test]
fn interval_slots_after_a_long_outage_are_computed_not_iterated() {
    let s = interval(1, None, "2026-05-01T00:00:00Z");
    let (after, until) = (utc("2026-05-01T00:00:00Z"), utc("2026-05-31T00:00:00Z"));
    let started = Instant::now();
    let (slots, count) = s.slots_between(after, until, 3);
    assert!(
        started.elapsed().as_millis() < 50,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count, 30 * 86_400);
    assert_eq!(
        slots.iter().map(|t| fmt(*t)).collect::<Vec<_>>(),
        [
            "2026-05-30T23:59:58Z",
            "2026-05-30T23:59:59Z",
            "2026-05-31T00:00:00Z"
        ]
    );
    // Bounds: (after, until].
    let s = interval(3600, None, "2026-05-01T00:00:00Z");
    let (slots, count) =
        s.slots_between(utc("2026-05-01T01:00:00Z"), utc("2026-05-01T04:00:00Z"), 10);
    assert_eq!(count, 3);
    assert_eq!(
        slots.iter().map(|t| fmt(*t)).collect::<Vec<_>>(),
        [
            "2026-05-01T02:00:00Z",
            "2026-05-01T03:00:00Z",
            "2026-05-01T04:00:00Z"
        ]
    );
    // Before the first slot, nothing; empty or inverted windows, nothing.
    assert_eq!(
        s.slots_between(utc("2026-04-01T00:00:00Z"), utc("2026-05-01T00:59:59Z"), 5),
        (vec![], 0)
    );
    assert_eq!(s.slots_between(until, until, 5), (vec![], 0));
    assert_eq!(s.slots_between(until, after, 5), (vec![], 0));
    // limit 0: just the count.
    assert_eq!(
        s.slots_between(utc("2026-05-01T01:00:00Z"), utc("2026-05-01T04:00:00Z"), 0),
        (vec![], 3)
    );
}

#[test]
fn interval_extremes_do_not_overflow() {
    let s = interval(MAX_EVERY_SECONDS, None, "2026-05-01T00:00:00Z");
    let next = s.next_after(utc("2026-05-01T00:00:00Z")).unwrap();
    assert_eq!(next.year(), 2126);
    assert!(s.next_after(DateTime::<Utc>::MAX_UTC).is_none());
    let (_, count) = s.slots_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 2);
    assert!(count > 2000);
}

// ---- one-shot and manual -----------------------------------------------------------------------

#[test]
fn once_fires_only_if_still_ahead() {
    let at = utc("2026-06-01T12:00:00Z");
    let s = CompiledSchedule::compile(
        &Schedule::Once { at },
        Tz::UTC,
        utc("2026-01-01T00:00:00Z"),
        &CronCache::new(),
    )
    .unwrap();
    assert_eq!(s.job_type(), JobType::Once);
    assert_eq!(s.next_after(utc("2026-06-01T11:59:59Z")), Some(at));
    assert_eq!(s.next_after(at), None);
    assert_eq!(s.next_after(utc("2026-07-01T00:00:00Z")), None);
    assert_eq!(
        s.slots_between(utc("2026-06-01T00:00:00Z"), at, 5),
        (vec![at], 1)
    );
    assert_eq!(
        s.slots_between(utc("2026-06-01T00:00:00Z"), at, 0),
        (vec![], 1)
    );
    assert_eq!(
        s.slots_between(at, utc("2026-07-01T00:00:00Z"), 5),
        (vec![], 0)
    );
}

#[test]
fn manual_never_fires() {
    let s = CompiledSchedule::compile(&Schedule::Manual, Tz::UTC, Utc::now(), &CronCache::new())
        .unwrap();
    assert_eq!(s.job_type(), JobType::Manual);
    assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), None);
    assert_eq!(
        s.slots_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 10),
        (vec![], 0)
    );
    assert_eq!(s.timezone(), None);
}

// ---- cron slots after downtime -----------------------------------------------------------------

#[test]
fn cron_slots_between_returns_the_latest_oldest_first() {
    let s = cron_in("0 * * * *", "UTC");
    let (slots, count) =
        s.slots_between(utc("2026-05-01T00:00:00Z"), utc("2026-05-02T00:00:00Z"), 3);
    assert_eq!(count, 24);
    assert_eq!(
        slots.iter().map(|t| fmt(*t)).collect::<Vec<_>>(),
        [
            "2026-05-01T22:00:00Z",
            "2026-05-01T23:00:00Z",
            "2026-05-02T00:00:00Z"
        ]
    );
    let (all, count) = s.slots_between(
        utc("2026-05-01T00:00:00Z"),
        utc("2026-05-01T03:30:00Z"),
        100,
    );
    assert_eq!(count, 3);
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn cron_slots_across_dst_are_neither_doubled_nor_lost() {
    let fixed = cron_in("30 1 * * *", "America/New_York");
    let (slots, count) =
        fixed.slots_between(utc("2026-10-31T00:00:00Z"), utc("2026-11-03T00:00:00Z"), 10);
    assert_eq!(count, 3);
    assert_eq!(
        slots.iter().map(|t| fmt(*t)).collect::<Vec<_>>(),
        [
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z"
        ]
    );
    // The fall-back day has 25 real hours: 25 hourly fires in that local day.
    let hourly = cron_in("0 * * * *", "America/New_York");
    let (_, count) =
        hourly.slots_between(utc("2026-11-01T03:59:59Z"), utc("2026-11-02T04:59:59Z"), 0);
    assert_eq!(count, 25);
    // The spring-forward day has 23.
    let (_, count) =
        hourly.slots_between(utc("2026-03-08T04:59:59Z"), utc("2026-03-09T03:59:59Z"), 0);
    assert_eq!(count, 23);
}

#[test]
fn cron_slot_count_is_capped_and_the_latest_slots_are_still_exact() {
    let s = cron_in("* * * * * *", "UTC");
    let (after, until) = (utc("2026-05-01T00:00:00Z"), utc("2026-05-31T00:00:00Z"));
    let started = Instant::now();
    let (slots, count) = s.slots_between(after, until, 3);
    let took = started.elapsed();
    assert_eq!(count, CRON_SLOT_COUNT_CAP);
    assert_eq!(
        slots.iter().map(|t| fmt(*t)).collect::<Vec<_>>(),
        [
            "2026-05-30T23:59:58Z",
            "2026-05-30T23:59:59Z",
            "2026-05-31T00:00:00Z"
        ]
    );
    assert!(took.as_secs() < 10, "{took:?}");
    // A sparse expression near the cap boundary: every minute for 100 days is 144,000 slots.
    let s = cron_in("* * * * *", "Europe/Berlin");
    let (slots, count) = s.slots_between(after, after + TimeDelta::days(100), 2);
    assert_eq!(count, CRON_SLOT_COUNT_CAP);
    assert_eq!(
        slots.iter().map(|t| fmt(*t)).collect::<Vec<_>>(),
        ["2026-08-08T23:59:00Z", "2026-08-09T00:00:00Z"]
    );
}

// ---- memory and sharing ------------------------------------------------------------------------

#[test]
fn compiled_schedules_are_small_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_send_sync::<CompiledSchedule>();
    assert_send_sync::<Arc<ParsedCron>>();
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<CronCache>();
    let size = std::mem::size_of::<CompiledSchedule>();
    assert!(size <= 32, "CompiledSchedule is {size} bytes");
    // Debug output stays short (no croner bit fields).
    let dbg = format!("{:?}", cron_in("0 9 * * *", "Asia/Taipei"));
    assert!(dbg.len() < 100, "{dbg}");
    assert!(dbg.contains("0 9 * * *") && dbg.contains("Asia/Taipei"));
}

#[test]
fn hundred_thousand_jobs_share_fifty_parsed_crons() {
    let cache = CronCache::new();
    let expressions: Vec<String> = (0..50).map(|i| format!("{} {} * * *", i, i % 24)).collect();
    let anchor = utc("2026-01-01T00:00:00Z");
    let jobs: Vec<CompiledSchedule> = (0..100_000)
        .map(|i| {
            let schedule = cron_schedule(&expressions[i % 50], Some("Europe/Berlin"));
            CompiledSchedule::compile(&schedule, Tz::UTC, anchor, &cache).unwrap()
        })
        .collect();
    assert_eq!(cache.len(), 50);
    assert!(Arc::ptr_eq(
        jobs[0].cron().unwrap(),
        jobs[50].cron().unwrap()
    ));
    assert!(!Arc::ptr_eq(
        jobs[0].cron().unwrap(),
        jobs[1].cron().unwrap()
    ));
    // Every job holds one Arc: 100,000 jobs + the 50 parses' own count of 0 extra.
    let holders: usize = (0..50)
        .map(|i| Arc::strong_count(jobs[i].cron().unwrap()))
        .sum();
    assert_eq!(holders, 100_000);
    // Jobs that go away release their parses.
    drop(jobs);
    assert_eq!(cache.len(), 0);
    assert!(cache.is_empty());
}

#[test]
fn cache_shares_by_expression_and_prunes_dead_entries() {
    let cache = CronCache::new();
    let a = cache.get("0 9 * * *").unwrap();
    let b = cache.get("  0  9 *   * * ").unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "whitespace differences share one parse"
    );
    assert_eq!(a.expression(), "0 9 * * *");
    let clone = cache.clone();
    assert!(Arc::ptr_eq(&a, &clone.get("0 9 * * *").unwrap()));
    assert_eq!(clone.len(), 1);
    // Errors are reported, not cached.
    assert!(cache.get("61 * * * *").is_err());
    assert_eq!(cache.len(), 1);
    // Many short-lived expressions do not accumulate.
    for i in 0..1000 {
        let parsed = cache.get(&format!("{} {} * * *", i % 60, i / 60)).unwrap();
        drop(parsed);
    }
    assert_eq!(cache.len(), 1);
    drop((a, b));
    assert_eq!(cache.len(), 0);
    // A dropped expression is parsed afresh on the next request.
    let again = cache.get("0 9 * * *").unwrap();
    assert_eq!(again.expression(), "0 9 * * *");
    assert_eq!(cache.len(), 1);
}

#[test]
fn cache_is_usable_from_many_threads() {
    let cache = CronCache::new();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                (0..500)
                    .map(|i| cache.get(&format!("{} * * * *", (i + t) % 10)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let held: Vec<Vec<Arc<ParsedCron>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(cache.len(), 10);
    // Every thread got the same Arc for the same expression.
    for list in &held {
        for parsed in list {
            let mine = cache.get(parsed.expression()).unwrap();
            assert!(Arc::ptr_eq(parsed, &mine));
        }
    }
}

// ---- speed -------------------------------------------------------------------------------------

#[test]
fn next_after_is_fast() {
    // Generous bounds: this also runs in unoptimised test builds.
    let cases = [
        ("0 9 * * *", "Asia/Taipei"),
        ("*/15 * * * *", "America/New_York"),
        ("30 2 * * 1-5", "Europe/Berlin"),
        ("0 0 1 1 *", "Australia/Lord_Howe"),
    ];
    for (expr, zone) in cases {
        let s = cron_in(expr, zone);
        let start = utc("2026-01-01T00:00:00Z");
        let mut t = start;
        let n = 10_000;
        let started = Instant::now();
        for _ in 0..n {
            // A yearly job runs into croner's year-5000 horizon: start over.
            t = s.next_after(t).unwrap_or(start);
        }
        let per_call = started.elapsed() / n;
        eprintln!("next_after {expr} in {zone}: {per_call:?} per call");
        assert!(
            per_call.as_micros() < 200,
            "{expr} in {zone}: {per_call:?} per call"
        );
    }
}

// ---- descriptions ------------------------------------------------------------------------------

#[test]
fn descriptions_for_the_cli() {
    let taipei = chrono_tz::Asia::Taipei;
    assert_eq!(
        describe(&cron_schedule("0 9 * * *", None), taipei),
        "At 09:00 (Asia/Taipei)"
    );
    assert_eq!(
        describe(&cron_schedule("@daily", Some("UTC")), taipei),
        "At 00:00 (UTC)"
    );
    assert_eq!(
        cron_in("0 9 * * *", "Asia/Taipei").describe(),
        "At 09:00 (Asia/Taipei)"
    );
    let every = Schedule::Interval {
        every_seconds: 5400,
        start_at: None,
        misfire: None,
    };
    assert_eq!(describe(&every, taipei), "Every 1h 30m");
    let every_from = Schedule::Interval {
        every_seconds: 60,
        start_at: Some(utc("2026-05-01T10:00:00Z")),
        misfire: None,
    };
    assert_eq!(
        describe(&every_from, taipei),
        "Every 1m, from 2026-05-01 10:00:00 UTC"
    );
    assert_eq!(
        describe(
            &Schedule::Once {
                at: utc("2026-11-24T01:00:00Z")
            },
            taipei
        ),
        "Once at 2026-11-24 01:00:00 UTC"
    );
    assert!(describe(&Schedule::Manual, taipei).starts_with("Manual"));
    let bad = describe(&cron_schedule("61 * * * *", None), taipei);
    assert!(
        bad.starts_with("invalid schedule: schedule.expression"),
        "{bad}"
    );
    let bad = describe(&cron_schedule("0 9 * * *", Some("Mars/Olympus")), taipei);
    assert!(bad.contains("schedule.timezone"), "{bad}");
}
