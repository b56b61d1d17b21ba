//! Schedule arithmetic: when cron, interval and one-shot jobs fire, in IANA time zones.
//!
//! - [`CompiledSchedule`] is a job's [`Schedule`] ready for arithmetic: [`next_after`] for the
//!   timer heap and [`slots_between`] for misfire handling after downtime. It is small (≤ 32
//!   bytes) and holds an `Arc` to a cron parse shared through a [`CronCache`].
//! - [`validate`], [`parse_timezone`] and [`describe`] serve manifests, the API and the CLI.
//!
//! # Cron semantics
//! Vixie cron (5 fields, minute resolution) or 6 fields with leading seconds; `@daily`-style
//! aliases. A day matches if day-of-month OR day-of-week matches when both are restricted
//! (neither starting with `*`), as in Vixie cron. Wall-clock times are evaluated in the job's
//! zone (or `scheduler.timezone`), and daylight-saving changes are handled like Vixie/ISC cron and
//! cronie:
//! - *Fixed-time* jobs (no seconds, minute or hour field starting with `*`, e.g. `30 2 * * *`):
//!   a time skipped by a spring-forward gap fires once at the first instant after the gap; a
//!   time repeated by a fall-back fires once, at its first occurrence.
//! - *Wildcard* jobs (e.g. `*/15 * * * *`, `0 * * * *`) follow real time: nothing fires in a
//!   gap (they resume after it) and both passes of a repeated hour fire.
//!
//! # Interval semantics
//! Fires at `start_at + k·every` (k ≥ 0), or, without `start_at`, at `anchor + k·every` (k ≥ 1)
//! where the anchor is the job's creation time, so slots are stable across restarts. Both are
//! normalised to whole seconds (`start_at` rounded up, the anchor down) so that slots stored as
//! `scheduled_for` compare equal however the times were stored.
//!
//! [`next_after`]: CompiledSchedule::next_after
//! [`slots_between`]: CompiledSchedule::slots_between

mod cron;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::{GapInfo, Tz};

pub use self::cron::{CronCache, ParsedCron};
use crate::model::{JobType, Schedule};

/// A schedule that cannot be used, with a message that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression is empty or blank.
    #[error("schedule.expression is empty (e.g. `0 9 * * *` or `@daily`)")]
    EmptyExpression,
    /// The cron expression cannot be used; `reason` says why (e.g. `minute must be 0-59`).
    #[error("schedule.expression: `{expression}`: {reason}")]
    InvalidExpression { expression: String, reason: String },
    /// Not a time zone chrono-tz knows.
    #[error("schedule.timezone: unknown IANA time zone `{name}` (e.g. `Europe/Berlin`, `UTC`)")]
    UnknownTimezone { name: String },
    /// `every_seconds` is 0.
    #[error("schedule.every_seconds must be at least 1")]
    IntervalTooShort,
    /// `every_seconds` is beyond [`MAX_EVERY_SECONDS`].
    #[error("schedule.every_seconds must be at most {max} (100 years), got {got}")]
    IntervalTooLong { got: u64, max: u64 },
}

/// The longest interval accepted: 100 years of 365.25 days, in seconds.
pub const MAX_EVERY_SECONDS: u64 = 36_525 * 86_400;

/// [`CompiledSchedule::slots_between`] stops counting a cron job's slots here: a count equal to
/// this means "at least this many". Interval counts are exact (computed, not iterated).
pub const CRON_SLOT_COUNT_CAP: u64 = 100_000;

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`; exact spelling preferred, but case is
/// not significant).
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    let trimmed = name.trim();
    if let Ok(tz) = trimmed.parse::<Tz>() {
        return Ok(tz);
    }
    chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(trimmed))
        .copied()
        .ok_or_else(|| ScheduleError::UnknownTimezone {
            name: name.to_string(),
        })
}

/// Checks a schedule without compiling it: the cron expression and time zone, or the interval.
/// One-shot and manual schedules are always valid (a past `at` simply never fires).
/// `default_tz` (already a parsed zone) needs no check; it is taken for symmetry with
/// [`CompiledSchedule::compile`].
pub fn validate(schedule: &Schedule, _default_tz: Tz) -> Result<(), ScheduleError> {
    match schedule {
        Schedule::Cron {
            expression,
            timezone,
            ..
        } => {
            ParsedCron::parse(expression)?;
            if let Some(name) = timezone {
                parse_timezone(name)?;
            }
            Ok(())
        }
        Schedule::Interval { every_seconds, .. } => check_every(*every_seconds),
        Schedule::Once { .. } | Schedule::Manual => Ok(()),
    }
}

/// A human description for CLI output, e.g. `At 09:00 (Asia/Taipei)`, `Every 1h 30m`,
/// `Once at 2026-11-24 01:00:00 UTC`, `Manual only`. An invalid schedule describes its error.
pub fn describe(schedule: &Schedule, default_tz: Tz) -> String {
    match schedule {
        Schedule::Cron {
            expression,
            timezone,
            ..
        } => {
            let tz = match timezone.as_deref().map(parse_timezone).transpose() {
                Ok(tz) => tz.unwrap_or(default_tz),
                Err(e) => return format!("invalid schedule: {e}"),
            };
            match ParsedCron::parse(expression) {
                Ok(cron) => format!("{} ({})", cron.describe(), tz.name()),
                Err(e) => format!("invalid schedule: {e}"),
            }
        }
        Schedule::Interval {
            every_seconds,
            start_at,
            ..
        } => {
            if let Err(e) = check_every(*every_seconds) {
                return format!("invalid schedule: {e}");
            }
            let every = humantime::format_duration(std::time::Duration::from_secs(*every_seconds));
            match start_at {
                Some(start) => format!(
                    "Every {every}, from {}",
                    start.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                None => format!("Every {every}"),
            }
        }
        Schedule::Once { at } => format!("Once at {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
        Schedule::Manual => "Manual only (run-now or delayed runs)".to_string(),
    }
}

fn check_every(every_seconds: u64) -> Result<(), ScheduleError> {
    if every_seconds == 0 {
        Err(ScheduleError::IntervalTooShort)
    } else if every_seconds > MAX_EVERY_SECONDS {
        Err(ScheduleError::IntervalTooLong {
            got: every_seconds,
            max: MAX_EVERY_SECONDS,
        })
    } else {
        Ok(())
    }
}

/// A job's schedule, ready for arithmetic. Cheap to clone (cron parses are shared).
#[derive(Clone)]
pub struct CompiledSchedule {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Cron {
        cron: Arc<ParsedCron>,
        tz: Tz,
    },
    /// Fires at `first + k·every`, k ≥ 0.
    Interval {
        first: DateTime<Utc>,
        every: u64,
    },
    Once {
        at: DateTime<Utc>,
    },
    Manual,
}

impl fmt::Debug for CompiledSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron { cron, tz } => f
                .debug_struct("Cron")
                .field("expression", &cron.expression())
                .field("timezone", &tz.name())
                .finish(),
            Kind::Interval { first, every } => f
                .debug_struct("Interval")
                .field("first", first)
                .field("every_seconds", every)
                .finish(),
            Kind::Once { at } => f.debug_struct("Once").field("at", at).finish(),
            Kind::Manual => f.write_str("Manual"),
        }
    }
}

impl CompiledSchedule {
    /// Compiles (and validates) a schedule.
    ///
    /// `default_tz` is the config's `scheduler.timezone`, used when a cron schedule names none.
    /// `anchor` is where interval counting starts when `start_at` is `None` (the job's creation
    /// time). Cron parses come from `cache`, shared with every other job using the expression.
    pub fn compile(
        schedule: &Schedule,
        default_tz: Tz,
        anchor: DateTime<Utc>,
        cache: &CronCache,
    ) -> Result<Self, ScheduleError> {
        let kind = match schedule {
            Schedule::Cron {
                expression,
                timezone,
                ..
            } => {
                let tz = match timezone {
                    Some(name) => parse_timezone(name)?,
                    None => default_tz,
                };
                Kind::Cron {
                    cron: cache.get(expression)?,
                    tz,
                }
            }
            Schedule::Interval {
                every_seconds,
                start_at,
                ..
            } => {
                check_every(*every_seconds)?;
                let first = match start_at {
                    Some(start) => ceil_second(*start),
                    None => floor_second(anchor)
                        .checked_add_signed(TimeDelta::seconds(*every_seconds as i64))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                };
                Kind::Interval {
                    first,
                    every: *every_seconds,
                }
            }
            Schedule::Once { at } => Kind::Once { at: *at },
            Schedule::Manual => Kind::Manual,
        };
        Ok(CompiledSchedule { kind })
    }

    /// The first fire instant strictly after `after`, or `None` (a one-shot already past, a
    /// manual job, or no further match before croner's year-5000 limit).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron { cron, tz } => cron_next_after(cron, *tz, after),
            Kind::Interval { first, every } => interval_next_after(*first, *every, after),
            Kind::Once { at } => (*at > after).then_some(*at),
            Kind::Manual => None,
        }
    }

    /// The fire instants in `(after, until]` — the *most recent* `limit` of them, oldest first —
    /// and how many there are in all.
    ///
    /// This is what misfire handling needs: run the latest N missed slots and record the rest as
    /// skipped. Interval counts are computed, not iterated (a 1-second interval over 30 days
    /// costs nothing). Cron slots are iterated, and the count stops at [`CRON_SLOT_COUNT_CAP`]
    /// (a count equal to the cap means "at least"); at most that many slots are returned.
    pub fn slots_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, u64) {
        if until <= after {
            return (Vec::new(), 0);
        }
        match &self.kind {
            Kind::Cron { .. } => self.cron_slots(after, until, limit),
            Kind::Interval { first, every } => interval_slots(*first, *every, after, until, limit),
            Kind::Once { at } => {
                if *at > after && *at <= until {
                    (if limit > 0 { vec![*at] } else { Vec::new() }, 1)
                } else {
                    (Vec::new(), 0)
                }
            }
            Kind::Manual => (Vec::new(), 0),
        }
    }

    /// The zone a cron schedule is evaluated in; `None` for the other kinds (they are instants).
    pub fn timezone(&self) -> Option<Tz> {
        match &self.kind {
            Kind::Cron { tz, .. } => Some(*tz),
            _ => None,
        }
    }

    /// The shape of the schedule.
    pub fn job_type(&self) -> JobType {
        match &self.kind {
            Kind::Cron { .. } => JobType::Cron,
            Kind::Interval { .. } => JobType::Interval,
            Kind::Once { .. } => JobType::Once,
            Kind::Manual => JobType::Manual,
        }
    }

    /// The shared cron parse, for cron schedules.
    pub fn cron(&self) -> Option<&Arc<ParsedCron>> {
        match &self.kind {
            Kind::Cron { cron, .. } => Some(cron),
            _ => None,
        }
    }

    /// A human description, as [`describe`] gives (intervals show their first slot).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cron { cron, tz } => format!("{} ({})", cron.describe(), tz.name()),
            Kind::Interval { first, every } => format!(
                "Every {}, from {}",
                humantime::format_duration(std::time::Duration::from_secs(*every)),
                first.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Kind::Once { at } => format!("Once at {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
            Kind::Manual => "Manual only (run-now or delayed runs)".to_string(),
        }
    }

    /// Cron slots in `(after, until]`: forward iteration up to the cap, keeping the latest
    /// `limit`. When the cap cuts the walk short, the latest slots are found by walking a window
    /// that ends at `until`, sized from the density seen so far.
    fn cron_slots(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, u64) {
        let limit = limit.min(CRON_SLOT_COUNT_CAP as usize);
        let walk = self.walk_latest(after, until, limit, CRON_SLOT_COUNT_CAP);
        if !walk.capped {
            return (walk.latest.into(), walk.count);
        }
        if limit == 0 {
            return (Vec::new(), CRON_SLOT_COUNT_CAP);
        }
        // `count` slots took `covered` seconds; aim for a window holding about 2·limit slots.
        let covered = (walk.last - after).num_seconds().max(1) as i128;
        let mut window = (covered * 2 * limit as i128 / CRON_SLOT_COUNT_CAP as i128)
            .clamp(1, i64::MAX as i128) as i64;
        let mut best = walk.latest;
        for _ in 0..64 {
            let start = until
                .checked_sub_signed(TimeDelta::seconds(window))
                .map_or(after, |s| s.max(after));
            let walk = self.walk_latest(start, until, limit, 4 * CRON_SLOT_COUNT_CAP);
            if walk.capped {
                window = (window / 2).max(1);
                continue;
            }
            let enough = walk.latest.len() >= limit || start == after;
            best = walk.latest;
            if enough {
                break;
            }
            window = window.saturating_mul(2);
        }
        (best.into(), CRON_SLOT_COUNT_CAP)
    }

    fn walk_latest(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
        cap: u64,
    ) -> Walk {
        let mut walk = Walk {
            latest: VecDeque::with_capacity(limit.min(1024)),
            count: 0,
            capped: false,
            last: after,
        };
        while let Some(next) = self.next_after(walk.last).filter(|t| *t <= until) {
            walk.count += 1;
            walk.last = next;
            if limit > 0 {
                if walk.latest.len() == limit {
                    walk.latest.pop_front();
                }
                walk.latest.push_back(next);
            }
            if walk.count >= cap {
                walk.capped = true;
                break;
            }
        }
        walk
    }
}

struct Walk {
    latest: VecDeque<DateTime<Utc>>,
    count: u64,
    capped: bool,
    last: DateTime<Utc>,
}

// ---- cron: wall-clock matches mapped to instants -------------------------------------------------

/// The next fire of a cron job after `after`.
///
/// croner finds matching *wall* times (naive, evaluated as UTC, so without DST); this function
/// maps them to instants in `tz`:
/// - a wall time that exists once is that instant;
/// - a wall time in a repeated range (fall-back) is its first instant, and also its second one
///   for wildcard jobs — the second instants come after every first one, which needs care when
///   `after` itself lies in the repeated range;
/// - a wall time in a gap (spring-forward) is the first instant after the gap for fixed-time
///   jobs, and nothing for wildcard jobs.
fn cron_next_after(cron: &ParsedCron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Fires are whole seconds, so "after `after`" equals "after its whole second".
    let after = floor_second(after);
    let local = after.with_timezone(&tz);
    let wall = local.naive_local();

    if let LocalResult::Ambiguous(x, y) = tz.from_local_datetime(&wall) {
        // `after` is inside a repeated range of wall times [fold_start, fold_end).
        let (first, second) = if x.to_utc() <= y.to_utc() {
            (x, y)
        } else {
            (y, x)
        };
        let first_offset = offset_seconds(&first);
        let second_offset = offset_seconds(&second);
        let on_first_pass = offset_seconds(&local) == first_offset;
        let transition = find_transition(tz, first.to_utc(), second.to_utc(), second_offset);
        let fold_start = (transition + TimeDelta::seconds(second_offset)).naive_utc();
        let fold_end = (transition + TimeDelta::seconds(first_offset)).naive_utc();

        let next = cron.next_wall(wall, false)?;
        if next < fold_end {
            if on_first_pass {
                return Some(wall_to_instant(next, first_offset));
            }
            if !cron.is_fixed_time() {
                return Some(wall_to_instant(next, second_offset));
            }
            // Fixed-time jobs do not fire on the second pass: carry on after the fold.
            return scan(cron, tz, fold_end, true, after);
        }
        if on_first_pass && !cron.is_fixed_time() {
            // The second pass still lies ahead, and comes before any wall time past the fold.
            if let Some(again) = cron.next_wall(fold_start, true).filter(|w| *w < fold_end) {
                return Some(wall_to_instant(again, second_offset));
            }
        }
        return scan(cron, tz, next, true, after);
    }
    scan(cron, tz, wall, false, after)
}

/// Walks matching wall times from `start` (inclusive or not) and returns the first fire instant
/// after `after`. Only valid when `after` is not inside a repeated range (then wall order and
/// instant order agree, and a repeated range's first instant is the earliest candidate).
fn scan(
    cron: &ParsedCron,
    tz: Tz,
    start: NaiveDateTime,
    inclusive: bool,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let (mut start, mut inclusive) = (start, inclusive);
    // Each round either returns or moves past a wall time that cannot fire; a handful suffice.
    for _ in 0..1000 {
        let wall = cron.next_wall(start, inclusive)?;
        match tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => {
                let t = t.to_utc();
                if t > after {
                    return Some(t);
                }
                (start, inclusive) = (wall, false);
            }
            LocalResult::Ambiguous(x, y) => {
                let (first, second) = if x.to_utc() <= y.to_utc() {
                    (x.to_utc(), y.to_utc())
                } else {
                    (y.to_utc(), x.to_utc())
                };
                if first > after {
                    return Some(first);
                }
                if !cron.is_fixed_time() && second > after {
                    return Some(second);
                }
                (start, inclusive) = (wall, false);
            }
            LocalResult::None => {
                // A gap: the first instant after it.
                let end = gap_end(tz, wall)?;
                if cron.is_fixed_time() && end > after {
                    return Some(end);
                }
                // Wildcard jobs skip the gap; resume at the first wall time after it.
                (start, inclusive) = (end.with_timezone(&tz).naive_local(), true);
            }
        }
    }
    None
}

/// The first instant after the gap that `wall` falls into.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(end) = GapInfo::new(&wall, &tz).and_then(|gap| gap.end) {
        return Some(end.to_utc());
    }
    // Not expected with chrono-tz data; step minute by minute as a fallback.
    let mut probe = wall;
    for _ in 0..(48 * 60) {
        probe += TimeDelta::minutes(1);
        let probe_floor = probe.with_second(0)?;
        if let Some(t) = tz.from_local_datetime(&probe_floor).earliest() {
            return Some(t.to_utc());
        }
    }
    None
}

/// The instant in `(before, at]` where the offset becomes `new_offset` (tz transitions fall on
/// whole seconds).
fn find_transition(
    tz: Tz,
    before: DateTime<Utc>,
    at: DateTime<Utc>,
    new_offset: i64,
) -> DateTime<Utc> {
    let (mut lo, mut hi) = (before.timestamp(), at.timestamp());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let Some(t) = DateTime::from_timestamp(mid, 0) else {
            break;
        };
        if offset_seconds(&t.with_timezone(&tz)) == new_offset {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).unwrap_or(at)
}

fn offset_seconds(t: &DateTime<Tz>) -> i64 {
    t.offset().fix().local_minus_utc() as i64
}

fn wall_to_instant(wall: NaiveDateTime, offset_seconds: i64) -> DateTime<Utc> {
    (wall - TimeDelta::seconds(offset_seconds)).and_utc()
}

fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

fn ceil_second(t: DateTime<Utc>) -> DateTime<Utc> {
    if t.nanosecond() == 0 {
        t
    } else {
        floor_second(t)
            .checked_add_signed(TimeDelta::seconds(1))
            .unwrap_or(t)
    }
}

// ---- intervals: arithmetic on nanoseconds ---------------------------------------------------------

const NANOS: i128 = 1_000_000_000;

fn to_nanos(t: DateTime<Utc>) -> i128 {
    t.timestamp() as i128 * NANOS + t.timestamp_subsec_nanos() as i128
}

fn from_nanos(n: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(n.div_euclid(NANOS)).ok()?;
    DateTime::from_timestamp(secs, n.rem_euclid(NANOS) as u32)
}

fn interval_next_after(
    first: DateTime<Utc>,
    every: u64,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if after < first {
        return Some(first);
    }
    let (f, e) = (to_nanos(first), every as i128 * NANOS);
    let k = (to_nanos(after) - f) / e + 1;
    from_nanos(f + k * e)
}

fn interval_slots(
    first: DateTime<Utc>,
    every: u64,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> (Vec<DateTime<Utc>>, u64) {
    let (f, e) = (to_nanos(first), every as i128 * NANOS);
    let (a, u) = (to_nanos(after), to_nanos(until));
    if u < f {
        return (Vec::new(), 0);
    }
    let k_min = if a < f { 0 } else { (a - f) / e + 1 };
    let k_max = (u - f) / e;
    if k_max < k_min {
        return (Vec::new(), 0);
    }
    let count = k_max - k_min + 1;
    let from = k_min.max(k_max - limit as i128 + 1);
    let slots = (from..=k_max)
        .filter_map(|k| from_nanos(f + k * e))
        .collect();
    (slots, u64::try_from(count).unwrap_or(u64::MAX))
}
