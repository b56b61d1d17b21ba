//! Cron expressions: validation with field-named messages, parsing into croner, and the shared
//! [`CronCache`].
//!
//! croner is used only for *wall-clock* arithmetic: it is always handed naive wall times labelled
//! as UTC, so its own DST handling never comes into play. Mapping wall times to instants (gaps,
//! repeated hours) is done by [`super::CompiledSchedule`] with chrono-tz.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use chrono::{NaiveDateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::ScheduleError;

/// One parsed cron expression, shared (through `Arc`) by every job that uses the same expression.
///
/// A parsed croner `Cron` is ~5.5 KiB (bit fields for years up to 5000), so jobs never own one
/// each; get them from a [`CronCache`].
pub struct ParsedCron {
    /// The expression as written (whitespace collapsed), e.g. `@daily` or `*/5 * * * *`.
    expression: Box<str>,
    /// The wall-clock matcher. Only ever evaluated on naive wall times (as UTC).
    cron: Cron,
    /// Vixie/ISC cron's "fixed-time" class: no `*`-led seconds, minute or hour field.
    fixed_time: bool,
    /// Whether the expression has a seconds field (6 fields).
    has_seconds: bool,
}

impl fmt::Debug for ParsedCron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The croner pattern's bit fields are kilobytes of noise; show what identifies it.
        f.debug_struct("ParsedCron")
            .field("expression", &self.expression)
            .field("fixed_time", &self.fixed_time)
            .finish()
    }
}

/// Expansions of the `@` aliases (Vixie cron's list; `@reboot` has no meaning for cnp).
const ALIASES: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl ParsedCron {
    /// Validates and parses a cron expression.
    ///
    /// Accepted: 5 fields (`minute hour day-of-month month day-of-week`, Vixie cron), 6 fields
    /// (a leading seconds field), and the aliases `@yearly`, `@annually`, `@monthly`, `@weekly`,
    /// `@daily`, `@midnight` and `@hourly`. Lists, ranges, `*/n` and `a-b/n` steps, month and
    /// weekday names (`JAN`, `MON`), `7` for Sunday, and croner's `L`, `W`, `#` and `?` work.
    /// Rejected with a message naming the problem: `@reboot`, 7-field (year) forms, out-of-range
    /// values, backwards ranges, empty list items, and expressions that can never match (such as
    /// `0 0 30 2 *`).
    ///
    /// When both the day-of-month and day-of-week fields are restricted a day matches if
    /// *either* does (Vixie cron). As in Vixie cron, a field that starts with `*` (such as
    /// `*/2`) counts as unrestricted for this rule, so `0 0 */2 * MON` needs both.
    pub fn parse(expression: &str) -> Result<Self, ScheduleError> {
        let collapsed = collapse_whitespace(expression);
        if collapsed.is_empty() {
            return Err(ScheduleError::EmptyExpression);
        }
        let invalid = |reason: String| ScheduleError::InvalidExpression {
            expression: collapsed.clone(),
            reason,
        };

        let body: &str = if collapsed.starts_with('@') {
            let lower = collapsed.to_ascii_lowercase();
            if lower == "@reboot" {
                return Err(invalid(
                    "`@reboot` is not supported: cnp has no start-up trigger (use a `once` or \
                     `manual` schedule)"
                        .into(),
                ));
            }
            match ALIASES.iter().find(|(alias, _)| *alias == lower) {
                Some((_, expansion)) => expansion,
                None => {
                    let known: Vec<&str> = ALIASES.iter().map(|(a, _)| *a).collect();
                    return Err(invalid(format!(
                        "unknown alias; the supported ones are {}",
                        known.join(", ")
                    )));
                }
            }
        } else {
            &collapsed
        };

        let fields: Vec<&str> = body.split(' ').collect();
        let specs: &[&FieldSpec] = match fields.len() {
            5 => &[&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
            6 => &[&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
            7 => {
                return Err(invalid(
                    "7 fields: a year field is not supported; use 5 fields (minute hour \
                     day-of-month month day-of-week) or 6 (with leading seconds)"
                        .into(),
                ))
            }
            n => {
                return Err(invalid(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with \
                     leading seconds), found {n}"
                )))
            }
        };
        for (spec, text) in specs.iter().zip(&fields) {
            check_field(spec, text).map_err(invalid)?;
        }

        let has_seconds = fields.len() == 6;
        let (time_fields, day_fields) = fields.split_at(fields.len() - 3);
        // ISC cron: a job is "wildcard" (runs in real time across DST changes) when its minute or
        // hour field starts with `*`; otherwise it is "fixed-time". A `*`-led seconds field
        // (6-field form) makes it a wildcard job too.
        let fixed_time = time_fields.iter().all(|f| !f.starts_with('*'));

        // Vixie cron's day rule: OR when both day fields are restricted, AND when either starts
        // with `*`. croner ORs unless a field is exactly `*`, so a `*`-led restricted field (e.g.
        // `*/2`) needs its `+` (AND) prefix on the day-of-week field to behave like Vixie.
        let (dom, month, dow) = (day_fields[0], day_fields[1], day_fields[2]);
        let is_star = |f: &str| f == "*" || f == "?";
        let star_led = |f: &str| f.starts_with('*') || f.starts_with('?');
        let dow_fixed: String = if !dow.starts_with('+')
            && !is_star(dom)
            && !is_star(dow)
            && (star_led(dom) || star_led(dow))
        {
            format!("+{dow}")
        } else {
            dow.to_string()
        };
        let mut croner_fields: Vec<&str> = time_fields.to_vec();
        croner_fields.extend([dom, month, dow_fixed.as_str()]);
        let croner_text = croner_fields.join(" ");

        let cron = parser()
            .parse(&croner_text)
            .map_err(|err| invalid(explain_croner_error(specs, &croner_fields, err)))?;

        // Without a year field a pattern that matches once matches forever; one that never
        // matches (February 30) makes croner search until it gives up, so reject it here.
        let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        if let Some(probe) = probe {
            if cron.find_next_occurrence(&probe, true).is_err() {
                return Err(invalid(
                    "never matches: no date satisfies its day-of-month, month and day-of-week \
                     fields"
                        .into(),
                ));
            }
        }

        Ok(ParsedCron {
            expression: collapsed.into_boxed_str(),
            cron,
            fixed_time,
            has_seconds,
        })
    }

    /// The expression as written (whitespace collapsed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether this is a Vixie/ISC "fixed-time" job: none of its seconds (6-field form), minute
    /// and hour fields starts with `*`. Fixed-time jobs whose wall time falls in a DST gap fire
    /// once right after the gap, and fire only at the first pass of a repeated hour; the others
    /// ("wildcard" jobs) follow real time: nothing in a gap, both passes of a repeated hour.
    pub fn is_fixed_time(&self) -> bool {
        self.fixed_time
    }

    /// Whether the expression has a leading seconds field.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// croner's English description without the final full stop, e.g. `At 09:00`.
    pub fn describe(&self) -> String {
        let text = self.cron.describe();
        text.strip_suffix('.').unwrap_or(&text).to_string()
    }

    /// The first wall-clock time matching the pattern after `wall` (or at it, if `inclusive`).
    /// `None` if there is none before croner's year limit.
    pub(crate) fn next_wall(&self, wall: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron
            .find_next_occurrence(&wall.and_utc(), inclusive)
            .ok()
            .map(|t| t.naive_utc())
    }
}

fn parser() -> CronParser {
    // dom_and_dow stays false: Vixie OR semantics (the `+` prefix asks for AND per expression).
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Finds the field croner objects to by parsing each one alone, and words the error around it.
fn explain_croner_error(
    specs: &[&FieldSpec],
    fields: &[&str],
    err: croner::errors::CronError,
) -> String {
    let clean = |e: croner::errors::CronError| {
        let text = e.to_string();
        text.strip_prefix("Component error: ")
            .or_else(|| text.strip_prefix("Invalid pattern: "))
            .unwrap_or(&text)
            .to_string()
    };
    for (i, spec) in specs.iter().enumerate() {
        // Same number of fields, so a 5-field expression keeps its implicit `0` seconds.
        let mut alone: Vec<&str> = vec!["*"; fields.len()];
        alone[i] = fields[i];
        if let Err(e) = parser().parse(&alone.join(" ")) {
            return format!("{} field `{}`: {}", spec.name, fields[i], clean(e));
        }
    }
    clean(err)
}

/// What one cron field accepts.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names, numbered from `names_base`.
    names: &'static [&'static str],
    names_base: u32,
    /// How to say the valid range.
    range: &'static str,
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_base: 0,
    range: "0-59",
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_base: 0,
    range: "0-59",
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_base: 0,
    range: "0-23",
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    names_base: 0,
    range: "1-31",
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    names_base: 1,
    range: "1-12 or JAN-DEC",
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    names_base: 0,
    range: "0-7 or SUN-SAT (0 and 7 are Sunday)",
};

impl FieldSpec {
    fn is_dom(&self) -> bool {
        self.name == DAY_OF_MONTH.name
    }
    fn is_dow(&self) -> bool {
        self.name == DAY_OF_WEEK.name
    }
}

/// Syntax and range checks that croner words poorly ("Number out of bounds."), or skips (empty
/// list items). Anything subtler is left to croner.
fn check_field(spec: &FieldSpec, text: &str) -> Result<(), String> {
    let name = spec.name;
    let body = if spec.is_dow() {
        text.strip_prefix('+').unwrap_or(text)
    } else {
        text
    };
    if body.is_empty() {
        return Err(format!("{name} field `{text}` is empty"));
    }
    for item in body.split(',') {
        if item.is_empty() {
            return Err(format!("{name} field `{text}` has an empty list item"));
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(0) => return Err(format!("{name} step `/{step}` must be at least 1")),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "{name} field `{text}`: step `{step}` is not a positive number"
                    ))
                }
            }
            if base.is_empty() {
                return Err(format!(
                    "{name} field `{text}`: a step needs `*` or a range before it, e.g. `*/{step}`"
                ));
            }
        }
        let wildcard = base == "*" || (base == "?" && (spec.is_dom() || spec.is_dow()));
        if wildcard {
            continue;
        }
        if let Some((from, to)) = base.split_once('-') {
            let to = if spec.is_dow() {
                to.split('#').next().unwrap_or(to)
            } else {
                to
            };
            let a = check_value(spec, text, from)?;
            let b = check_value(spec, text, to)?;
            if a > b {
                return Err(format!(
                    "{name} range `{base}` runs backwards (wrap-around ranges are not \
                     supported; use a list, e.g. `{from}-{},{}-{to}`)",
                    spec.max, spec.min
                ));
            }
            continue;
        }
        // Single values, with croner's specials.
        let upper = base.to_ascii_uppercase();
        if spec.is_dom() {
            if upper == "L" || upper == "LW" {
                continue;
            }
            if let Some(day) = upper.strip_suffix('W') {
                check_value(spec, text, day)?;
                continue;
            }
        }
        if spec.is_dow() {
            if upper == "L" {
                continue;
            }
            if let Some((day, nth)) = upper.split_once('#') {
                check_value(spec, text, day)?;
                if !matches!(nth.parse::<u32>(), Ok(1..=5)) {
                    return Err(format!(
                        "{name} `{base}`: the occurrence after `#` must be 1-5"
                    ));
                }
                continue;
            }
            if let Some(day) = upper.strip_suffix('L') {
                check_value(spec, text, day)?;
                continue;
            }
        }
        check_value(spec, text, base)?;
    }
    Ok(())
}

/// Checks one value (number or name) against the field's range; returns it as a number.
fn check_value(spec: &FieldSpec, text: &str, value: &str) -> Result<u32, String> {
    let name = spec.name;
    if value.is_empty() {
        return Err(format!("{name} field `{text}` is malformed"));
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return match value.parse::<u32>() {
            Ok(n) if (spec.min..=spec.max).contains(&n) => Ok(n),
            _ => Err(format!("{name} must be {}", spec.range)),
        };
    }
    if let Some(pos) = spec
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(value))
    {
        return Ok(spec.names_base + pos as u32);
    }
    if spec.names.is_empty() {
        Err(format!("{name} field `{text}`: `{value}` is not a number"))
    } else {
        Err(format!(
            "{name} field `{text}`: `{value}` is not valid (use {})",
            spec.range
        ))
    }
}

/// Shares one [`ParsedCron`] per distinct expression string across all jobs.
///
/// A parsed cron is ~5.5 KiB, so 100,000 jobs must not hold 100,000 copies: the cache hands out
/// `Arc`s to one parse per expression (keyed by the expression with whitespace collapsed) and
/// keeps only `Weak` references itself, so an expression no job uses any more is freed; dead
/// entries are pruned from the map as it grows (amortised O(1)). Thread-safe; `Clone` is cheap and
/// clones share the same map.
#[derive(Clone, Default)]
pub struct CronCache {
    inner: Arc<Mutex<CacheMap>>,
}

#[derive(Default)]
struct CacheMap {
    map: HashMap<Box<str>, Weak<ParsedCron>>,
    /// Prune dead entries when the map reaches this size.
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 64;

impl CronCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared parse of `expr`, parsing (and validating) it if no live job holds one.
    /// Errors are not cached.
    pub fn get(&self, expr: &str) -> Result<Arc<ParsedCron>, ScheduleError> {
        let key = collapse_whitespace(expr);
        if let Some(found) = self.lock().map.get(key.as_str()).and_then(Weak::upgrade) {
            return Ok(found);
        }
        // Parse outside the lock: it takes microseconds (milliseconds for a never-matching
        // expression) and other jobs' look-ups should not wait for it.
        let parsed = Arc::new(ParsedCron::parse(expr)?);
        let mut guard = self.lock();
        let cache = &mut *guard;
        if let Some(raced) = cache.map.get(key.as_str()).and_then(Weak::upgrade) {
            return Ok(raced);
        }
        cache
            .map
            .insert(key.into_boxed_str(), Arc::downgrade(&parsed));
        if cache.map.len() >= cache.prune_at.max(MIN_PRUNE_AT) {
            cache.map.retain(|_, weak| weak.strong_count() > 0);
            cache.prune_at = (cache.map.len() * 2).max(MIN_PRUNE_AT);
        }
        Ok(parsed)
    }

    /// How many distinct parsed expressions are alive (held by at least one job). Prunes the
    /// dead entries.
    pub fn len(&self) -> usize {
        let mut cache = self.lock();
        cache.map.retain(|_, weak| weak.strong_count() > 0);
        cache.map.len()
    }

    /// Whether no parsed expression is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        // A panic while holding the lock cannot leave the map inconsistent (single operations).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for CronCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.lock().map.len();
        f.debug_struct("CronCache")
            .field("entries", &entries)
            .finish()
    }
}
