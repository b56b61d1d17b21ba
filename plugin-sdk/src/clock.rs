//! The host's clock (WIT interface `cnp:plugin/clock`).
//!
//! It is the scheduler's clock, so a plugin sees the same "now" as the engine, including in
//! tests that control time. Prefer it to `std::time::SystemTime`.

use crate::bindings::cnp::plugin::clock as wit;
use crate::PluginError;

pub use crate::types::{LocalTime, Timestamp};

/// The current time, in milliseconds since the Unix epoch.
pub fn now() -> Timestamp {
    wit::now()
}

/// The civil time of instant `at` in the IANA time zone `zone` (for example
/// `America/New_York`).
///
/// An unknown zone is a [`PluginError::Failed`] whose message names the zone; map it to
/// [`PluginError::InvalidConfig`] when the zone came from your configuration.
pub fn to_local(at: Timestamp, zone: &str) -> Result<LocalTime, PluginError> {
    wit::to_local(at, zone)
        .map(LocalTime::from)
        .map_err(|message| PluginError::Failed(format!("time zone `{zone}`: {message}")))
}

/// Parses an RFC 3339 timestamp (`2026-05-01T12:30:00Z`, `2026-05-01T14:30:00.250+02:00`,
/// lower-case `t`/`z` or a space between date and time accepted) into milliseconds since the
/// Unix epoch. Fractions beyond milliseconds are dropped. `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &text.trim()[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_seconds = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hm = |a: &u8, c: &u8| -> Option<i64> {
                (a.is_ascii_digit() && c.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(c - b'0'))
            };
            let (h, m) = (hm(h1, h2)?, hm(m1, m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            (h * 3600 + m * 60) * if *sign == b'-' { -1 } else { 1 }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_timestamps_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00Z"),
            Some(1_709_208_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00.5+02:00"),
            Some(1_709_208_000_500)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29t11:30:00.123456-00:30"),
            Some(1_709_208_000_123)
        );
        assert_eq!(
            parse_rfc3339(" 2025-06-01 00:00:00z "),
            Some(1_748_736_000_000)
        );
    }

    #[test]
    fn other_text_does_not() {
        for bad in [
            "",
            "2024-02-30T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "30",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
