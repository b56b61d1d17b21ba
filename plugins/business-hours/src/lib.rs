//! Condition hook: lets a job run only inside business hours (given weekdays, a daily
//! `start`–`end` window, minus holidays) in the job's time zone or a configured one. Outside
//! the window the run is deferred until the next window opens (or skipped, if configured).
//! Manual runs bypass the check unless `manual_bypass` is false.
//!
//! The deferral is computed in local minutes and added to now, so across a daylight-saving
//! change it may land an hour early or late; the run is evaluated again then, so an early
//! arrival is simply deferred once more.

use cnp_plugin_sdk::{clock, ConditionHook, LocalTime, PluginError, RunContext, Trigger, Verdict};
use serde::Deserialize;

const MINUTES_PER_DAY: u32 = 24 * 60;

/// The plugin's configuration; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The weekdays with business hours.
    days: Vec<Day>,
    /// When the window opens each day, `HH:MM` local time.
    start: String,
    /// When it closes, `HH:MM` (exclusive; `24:00` for midnight); after `start`.
    end: String,
    /// An IANA zone overriding the job's own.
    timezone: Option<String>,
    /// What to do outside the window.
    outside: Outside,
    /// Dates (`YYYY-MM-DD`, local) without business hours.
    holidays: Vec<String>,
    /// Whether manual runs skip the check.
    manual_bypass: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
            start: "09:00".into(),
            end: "18:00".into(),
            timezone: None,
            outside: Outside::Defer,
            holidays: vec![],
            manual_bypass: true,
        }
    }
}

/// A weekday (`"mon"` or `"monday"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Day {
    #[serde(alias = "monday")]
    Mon,
    #[serde(alias = "tuesday")]
    Tue,
    #[serde(alias = "wednesday")]
    Wed,
    #[serde(alias = "thursday")]
    Thu,
    #[serde(alias = "friday")]
    Fri,
    #[serde(alias = "saturday")]
    Sat,
    #[serde(alias = "sunday")]
    Sun,
}

impl Day {
    /// ISO weekday number (1 = Monday).
    fn iso(self) -> u8 {
        self as u8 + 1
    }
}

/// What to do outside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Outside {
    /// Wait for the next window.
    Defer,
    /// Record the run as skipped.
    Skip,
}

/// The configuration, checked and converted to numbers.
struct Window {
    weekdays: [bool; 8],
    start: u32,
    end: u32,
    holidays: Vec<(i32, u8, u8)>,
}

impl Window {
    fn from_config(config: &Config) -> Result<Window, PluginError> {
        if config.days.is_empty() {
            return Err(PluginError::invalid_config(
                "`days` must name at least one weekday",
            ));
        }
        let mut weekdays = [false; 8];
        for day in &config.days {
            weekdays[usize::from(day.iso())] = true;
        }
        let start = parse_hhmm("start", &config.start)?;
        let end = parse_hhmm("end", &config.end)?;
        if start >= end {
            return Err(PluginError::invalid_config(format!(
                "`start` ({}) must be before `end` ({}); windows across midnight are not supported",
                config.start, config.end
            )));
        }
        let holidays = config
            .holidays
            .iter()
            .map(|d| parse_date(d))
            .collect::<Result<_, _>>()?;
        Ok(Window {
            weekdays,
            start,
            end,
            holidays,
        })
    }

    fn is_business_day(&self, weekday: u8, date: (i32, u8, u8)) -> bool {
        self.weekdays[usize::from(weekday % 8)] && !self.holidays.contains(&date)
    }

    fn is_open(&self, t: &LocalTime) -> bool {
        let minute = t.minute_of_day();
        self.is_business_day(t.weekday, (t.year, t.month, t.day))
            && (self.start..self.end).contains(&minute)
    }

    /// Minutes from `t`'s minute to the next opening, or `None` if none comes within a year.
    fn minutes_until_open(&self, t: &LocalTime) -> Option<u32> {
        let now = t.minute_of_day();
        let (mut date, mut weekday) = ((t.year, t.month, t.day), t.weekday);
        for days_ahead in 0..=366u32 {
            if self.is_business_day(weekday, date) && (days_ahead > 0 || now < self.start) {
                return Some(days_ahead * MINUTES_PER_DAY + self.start - now);
            }
            date = next_date(date);
            weekday = weekday % 7 + 1;
        }
        None
    }
}

struct BusinessHours;

impl ConditionHook for BusinessHours {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), PluginError> {
        Window::from_config(config)?;
        if let Some(zone) = &config.timezone {
            clock::to_local(clock::now(), zone)
                .map_err(|e| PluginError::invalid_config(e.message()))?;
        }
        Ok(())
    }

    fn evaluate(config: Config, context: RunContext) -> Result<Verdict, PluginError> {
        let window = Window::from_config(&config)?;
        if config.manual_bypass && context.trigger == Trigger::Manual {
            return Ok(Verdict::Run);
        }
        let zone = match (&config.timezone, context.job.timezone.trim()) {
            (Some(zone), _) => zone.as_str(),
            (None, "") => "UTC",
            (None, zone) => zone,
        };
        let now = clock::now();
        let local = clock::to_local(now, zone)?;
        if window.is_open(&local) {
            return Ok(Verdict::Run);
        }
        let hours = format!("{}–{} {zone}", config.start, config.end);
        let at = format!(
            "{} {:02}:{:02}",
            local.date_string(),
            local.hour,
            local.minute
        );
        let Some(minutes) = window.minutes_until_open(&local) else {
            return Ok(Verdict::skip(format!(
                "outside business hours ({hours}; it is {at}) and no business day in the next year"
            )));
        };
        Ok(match config.outside {
            Outside::Skip => Verdict::skip(format!("outside business hours ({hours}; it is {at})")),
            Outside::Defer => {
                let until = now - now.rem_euclid(60_000) + i64::from(minutes) * 60_000;
                Verdict::defer_until(until, format!("outside business hours ({hours}; it is {at}); deferred {minutes} min to the next opening"))
            }
        })
    }
}

cnp_plugin_sdk::register_plugin!(BusinessHours);

/// `HH:MM` (or `24:00`) as minutes after midnight.
fn parse_hhmm(field: &str, text: &str) -> Result<u32, PluginError> {
    let bad = || PluginError::invalid_config(format!("`{field}`: expected HH:MM, got {text:?}"));
    let (h_text, m_text) = text.split_once(':').ok_or_else(bad)?;
    if !(1..=2).contains(&h_text.len()) || m_text.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (
        h_text.parse().map_err(|_| bad())?,
        m_text.parse().map_err(|_| bad())?,
    );
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `YYYY-MM-DD` as (year, month, day).
fn parse_date(text: &str) -> Result<(i32, u8, u8), PluginError> {
    let bad =
        || PluginError::invalid_config(format!("`holidays`: expected YYYY-MM-DD, got {text:?}"));
    let mut parts = text.splitn(3, '-');
    let mut next = || parts.next().ok_or_else(bad);
    let (y, m, d) = (next()?, next()?, next()?);
    let date = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&date.1) || date.2 == 0 || date.2 > days_in_month(date.0, date.1) {
        return Err(bad());
    }
    Ok(date)
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn next_date((y, m, d): (i32, u8, u8)) -> (i32, u8, u8) {
    if d < days_in_month(y, m) {
        (y, m, d + 1)
    } else if m < 12 {
        (y, m + 1, 1)
    } else {
        (y + 1, 1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-06 is a Friday.
    fn at(day: u8, weekday: u8, hour: u8, minute: u8) -> LocalTime {
        LocalTime {
            year: 2026,
            month: 3,
            day,
            hour,
            minute,
            second: 0,
            weekday,
            utc_offset_seconds: 0,
        }
    }

    fn window(json: &str) -> Window {
        Window::from_config(&cnp_plugin_sdk::config::parse(json).unwrap()).unwrap()
    }

    #[test]
    fn open_inside_the_window_on_business_days_only() {
        let w = window("{}");
        assert!(w.is_open(&at(6, 5, 9, 0)));
        assert!(w.is_open(&at(6, 5, 17, 59)));
        assert!(!w.is_open(&at(6, 5, 18, 0)));
        assert!(!w.is_open(&at(6, 5, 8, 59)));
        assert!(!w.is_open(&at(7, 6, 12, 0)), "Saturday");
        assert!(!window(r#"{"holidays": ["2026-03-06"]}"#).is_open(&at(6, 5, 12, 0)));
    }

    #[test]
    fn the_next_opening_skips_weekends_and_holidays() {
        let w = window("{}");
        assert_eq!(
            w.minutes_until_open(&at(6, 5, 8, 30)),
            Some(30),
            "later today"
        );
        // Friday 18:00 -> Monday 09:00: 6 h + 2 days + 9 h.
        assert_eq!(
            w.minutes_until_open(&at(6, 5, 18, 0)),
            Some(6 * 60 + 2 * 1440 + 9 * 60)
        );
        let w = window(r#"{"holidays": ["2026-03-09"]}"#);
        assert_eq!(
            w.minutes_until_open(&at(6, 5, 18, 0)),
            Some(6 * 60 + 3 * 1440 + 9 * 60),
            "Monday is a holiday"
        );
        let w = window(r#"{"days": ["sunday"], "start": "10:30", "end": "24:00"}"#);
        assert_eq!(
            w.minutes_until_open(&at(6, 5, 10, 0)),
            Some(14 * 60 + 1440 + 10 * 60 + 30)
        );
    }

    #[test]
    fn dates_roll_over_months_and_leap_years() {
        assert_eq!(next_date((2028, 2, 28)), (2028, 2, 29));
        assert_eq!(next_date((2026, 2, 28)), (2026, 3, 1));
        assert_eq!(next_date((2026, 12, 31)), (2027, 1, 1));
    }

    #[test]
    fn bad_configs_are_rejected() {
        for json in [
            r#"{"days": []}"#,
            r#"{"days": ["mo"]}"#,
            r#"{"start": "9"}"#,
            r#"{"start": "18:00", "end": "09:00"}"#,
            r#"{"end": "24:30"}"#,
            r#"{"holidays": ["2026-02-30"]}"#,
            r#"{"outside": "later"}"#,
        ] {
            let parsed = cnp_plugin_sdk::config::parse::<Config>(json);
            assert!(
                parsed.and_then(|c| Window::from_config(&c)).is_err(),
                "{json}"
            );
        }
    }
}
