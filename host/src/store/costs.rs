//! Cost reporting: what the Claude CLI said runs cost (`total_cost_usd`, kept per execution in
//! `executions.cost_usd`, NULL when the CLI reported none), summed over a window — in all, per
//! job (top spenders first) and per calendar day in a time zone — and the per-job running totals
//! behind the Prometheus counters.
//!
//! A run counts when it ended after running the CLI: `completed`, `failed`, `timed_out`,
//! `cancelled` or `interrupted`, with a `started_at`. Its cost accrues at its `completed_at`. A
//! counted run without a cost is counted as $0 and flagged (`uncosted_runs`).

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::db::{Backend, Db, Row, Value};
use super::{to_ms, Store, StoreError};

/// The statuses of runs that ended after running the CLI (those also need a `started_at`).
/// `finish_conn` in `executions.rs` counts the same statuses into the job's running totals.
pub(super) const RAN_STATUSES: &str =
    "('completed', 'failed', 'timed_out', 'cancelled', 'interrupted')";

/// The window when none is given: the last 30 days, ending now.
pub const DEFAULT_DAYS: u32 = 30;
/// The longest window a report covers (its days are listed one by one).
pub const MAX_DAYS: u32 = 366;

/// What a cost report covers. Build with [`CostQuery::new`] and set what the caller asked for.
#[derive(Debug, Clone)]
pub struct CostQuery {
    /// "Now" from the caller's clock (the engine's injected [`crate::clock::Clock`]).
    pub now: DateTime<Utc>,
    /// Start of the window (inclusive).
    pub since: Option<DateTime<Utc>>,
    /// End of the window (exclusive); default now, or `since` + `days` when both are given.
    pub until: Option<DateTime<Utc>>,
    /// Length of the window, 1–366 (default 30): counted back from `until`, or on from `since`.
    /// Not with both `since` and `until`.
    pub days: Option<u32>,
    /// One job only: its id or name.
    pub job: Option<String>,
    /// The zone whose calendar days the runs are bucketed by.
    pub tz: Tz,
    /// At most this many jobs in [`CostReport::jobs`] (the top spenders); `None`: all.
    pub limit: Option<usize>,
}

impl CostQuery {
    /// The default report: the last 30 days ending `now`, all jobs, days in `tz`.
    pub fn new(now: DateTime<Utc>, tz: Tz) -> CostQuery {
        CostQuery {
            now,
            since: None,
            until: None,
            days: None,
            job: None,
            tz,
            limit: None,
        }
    }

    /// The window this query covers, or which parameter is wrong.
    pub fn window(&self) -> Result<CostWindow, CostError> {
        if let Some(d) = self.days {
            if !(1..=MAX_DAYS).contains(&d) {
                return Err(CostError::invalid(
                    "days",
                    format!("must be a whole number 1–{MAX_DAYS}, got {d}"),
                ));
            }
        }
        let span = |d: u32| Duration::days(i64::from(d));
        let (since, until) = match (self.since, self.until, self.days) {
            (Some(_), Some(_), Some(_)) => {
                return Err(CostError::invalid(
                    "days",
                    "give `days`, or `since` and `until`, not all three",
                ))
            }
            (Some(s), Some(u), None) => (s, u),
            (Some(s), None, Some(d)) => (s, s + span(d)),
            (Some(s), None, None) => (s, self.now),
            (None, Some(u), d) => (u - span(d.unwrap_or(DEFAULT_DAYS)), u),
            (None, None, d) => (self.now - span(d.unwrap_or(DEFAULT_DAYS)), self.now),
        };
        // Stored times are whole milliseconds: so is the window.
        let (since, until) = (since.trunc_subsecs(3), until.trunc_subsecs(3));
        if since >= until {
            return Err(CostError::invalid(
                "since",
                format!(
                    "the window must start before it ends: since {} is not before until {}",
                    since.to_rfc3339(),
                    until.to_rfc3339()
                ),
            ));
        }
        if until - since > span(MAX_DAYS) {
            return Err(CostError::invalid(
                "since",
                format!(
                    "the window may span at most {MAX_DAYS} days: {} → {} is longer",
                    since.to_rfc3339(),
                    until.to_rfc3339()
                ),
            ));
        }
        Ok(CostWindow {
            since,
            until,
            time_zone: self.tz.name().to_owned(),
        })
    }
}

/// A query that cannot be answered: a bad parameter, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// `field` names the query parameter (`days`, `since`, `until`).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CostError {
    fn invalid(field: &'static str, message: impl Into<String>) -> CostError {
        CostError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The window a report covers: runs that completed at `since` or later and before `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostWindow {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The zone of the `daily` buckets (IANA name).
    pub time_zone: String,
}

/// The job a report is limited to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostJobRef {
    pub id: String,
    pub name: String,
}

/// One job's spending over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostByJob {
    pub job_id: String,
    pub name: String,
    /// Runs counted (ended after running the CLI).
    pub runs: u64,
    pub cost_usd: f64,
    /// Counted runs whose CLI reported no cost (included in `runs`, counted as $0).
    pub uncosted_runs: u64,
}

/// One calendar day (in the window's time zone) of spending. The first and last day are cut
/// at the window's ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostByDay {
    /// `YYYY-MM-DD` in the window's time zone.
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    pub runs: u64,
    pub cost_usd: f64,
    pub uncosted_runs: u64,
}

/// `GET /api/costs`: spending over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostReport {
    pub window: CostWindow,
    /// The job the report is limited to (`null`: all jobs).
    pub job: Option<CostJobRef>,
    /// Total cost of the counted runs, USD.
    pub cost_usd: f64,
    /// Runs counted: ended (completed, failed, timed_out, cancelled, interrupted) after
    /// running the CLI, with `completed_at` in the window.
    pub runs: u64,
    /// Counted runs whose CLI reported no cost (counted as $0).
    pub uncosted_runs: u64,
    /// Top spenders first (cost, then name), at most `limit`.
    pub jobs: Vec<CostByJob>,
    /// Jobs with counted runs in the window (`jobs` may list fewer).
    pub jobs_total: u64,
    /// Every calendar day of the window, oldest first (days without runs too).
    pub daily: Vec<CostByDay>,
}

/// A job's running totals since it was made (pruning old executions does not lower them): the
/// Prometheus counters `cnp_cost_usd_total` and `cnp_runs_without_cost_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCostCounter {
    pub name: String,
    pub cost_usd: f64,
    pub uncosted_runs: u64,
}

impl Store {
    /// Spending over the query's window (see the module docs for which runs count).
    pub async fn cost_report(&self, q: CostQuery) -> Result<CostReport, CostError> {
        let window = q.window()?;
        Ok(self.read(move |c| cost_report_conn(c, &q, window)).await?)
    }

    /// Every job's running cost totals, by name (one row per job, no scan of executions).
    pub async fn cost_counters(&self) -> Result<Vec<JobCostCounter>, StoreError> {
        self.read(|c| {
            c.query_map(
                "SELECT name, cost_usd_total, uncosted_runs FROM jobs ORDER BY name",
                (),
                |r| {
                    Ok(JobCostCounter {
                        name: r.get(0)?,
                        cost_usd: r.get(1)?,
                        uncosted_runs: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
        })
        .await
    }
}

/// The first instant of `date` in `tz`. A zone whose clocks skip midnight (a DST change at
/// 00:00) starts that day at the first local time that exists.
pub fn local_day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    (0..=24 * 4)
        .find_map(|q| {
            tz.from_local_datetime(&(midnight + Duration::minutes(15 * q)))
                .earliest()
        })
        .map_or_else(
            || Utc.from_utc_datetime(&midnight),
            |t| t.with_timezone(&Utc),
        )
}

/// The window's calendar days in its zone, each with its part of the window `[start, end)` in
/// unix ms.
fn day_buckets(w: &CostWindow, tz: Tz) -> Vec<(NaiveDate, i64, i64)> {
    let first = w.since.with_timezone(&tz).date_naive();
    let last = (w.until - Duration::milliseconds(1))
        .with_timezone(&tz)
        .date_naive();
    let mut out = Vec::new();
    let mut day = first;
    while day <= last {
        let Some(next) = day.succ_opt() else { break };
        let start = local_day_start(tz, day).max(w.since);
        let end = local_day_start(tz, next).min(w.until);
        if start < end {
            out.push((day, to_ms(start), to_ms(end)));
        }
        day = next;
    }
    out
}

fn cost_report_conn(c: &Db, q: &CostQuery, window: CostWindow) -> Result<CostReport, StoreError> {
    // One snapshot for all three reads, so the totals, jobs and days agree (PostgreSQL's
    // default isolation takes a snapshot per statement: this one keeps one for the transaction).
    c.batch(match c.backend() {
        Backend::Sqlite => "BEGIN",
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    })?;
    let report = cost_report_snapshot(c, q, window);
    // Read only: nothing to keep.
    let ended = c.batch("ROLLBACK");
    let report = report?;
    ended?;
    Ok(report)
}

/// [`cost_report_conn`]'s reads, inside its transaction.
fn cost_report_snapshot(
    c: &Db,
    q: &CostQuery,
    window: CostWindow,
) -> Result<CostReport, StoreError> {
    let job = match &q.job {
        None => None,
        Some(key) => Some(
            c.query_opt(
                "SELECT id, name FROM jobs WHERE id = ?1 OR name = ?1
                 ORDER BY id = ?1 DESC LIMIT 1",
                [key],
                |r| {
                    Ok(CostJobRef {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )?
            .ok_or_else(|| StoreError::NotFound {
                what: "job",
                id: key.clone(),
            })?,
        ),
    };
    // The job's id is the query's last parameter, ?n.
    let job_cond = |n: u8| match &job {
        Some(_) => format!(" AND x.job_id = ?{n}"),
        None => String::new(),
    };
    let job_id: Vec<String> = job.iter().map(|j| j.id.clone()).collect();
    let (since, until) = (to_ms(window.since), to_ms(window.until));

    let params: Vec<Value<'_>> = [Value::Int(since), Value::Int(until)]
        .into_iter()
        .chain(job_id.iter().map(|id| Value::Text(id.as_str().into())))
        .collect();
    let mut jobs = c.query_map(&jobs_sql(&job_cond(3)), params, |r| {
        Ok(CostByJob {
            job_id: r.get(0)?,
            name: r.get(1)?,
            runs: count(r, 2)?,
            cost_usd: r.get(3)?,
            uncosted_runs: count(r, 4)?,
        })
    })?;

    let buckets = day_buckets(&window, q.tz);
    let mut daily: Vec<CostByDay> = buckets
        .iter()
        .map(|(date, _, _)| CostByDay {
            date: *date,
            runs: 0,
            cost_usd: 0.0,
            uncosted_runs: 0,
        })
        .collect();
    if !buckets.is_empty() && !jobs.is_empty() {
        // The days as a table of [start, end) ranges (numbers made here, not caller input).
        let values = buckets
            .iter()
            .enumerate()
            .map(|(i, (_, s, e))| format!("({i}, {s}, {e})"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = c.query_map(&daily_sql(&values, &job_cond(1)), &job_id, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                count(r, 1)?,
                r.get::<_, f64>(2)?,
                count(r, 3)?,
            ))
        })?;
        for (i, runs, cost_usd, uncosted_runs) in rows {
            if let Some(day) = usize::try_from(i).ok().and_then(|i| daily.get_mut(i)) {
                day.runs = runs;
                day.cost_usd = cost_usd;
                day.uncosted_runs = uncosted_runs;
            }
        }
    }

    let runs = jobs.iter().map(|j| j.runs).sum();
    let uncosted_runs = jobs.iter().map(|j| j.uncosted_runs).sum();
    let cost_usd = jobs.iter().map(|j| j.cost_usd).sum();
    let jobs_total = jobs.len() as u64;
    if let Some(limit) = q.limit {
        jobs.truncate(limit);
    }
    Ok(CostReport {
        window,
        job,
        cost_usd,
        runs,
        uncosted_runs,
        jobs,
        jobs_total,
        daily,
    })
}

/// Per job: id, name, runs, cost, uncosted runs over `[?1, ?2)`, top spenders first. (`j.name`
/// is grouped by for PostgreSQL; it is one per `x.job_id`, the join being on `jobs`' key.)
fn jobs_sql(job_cond: &str) -> String {
    format!(
        "SELECT x.job_id, COALESCE(j.name, x.job_id) AS name, COUNT(*),
                COALESCE(SUM(x.cost_usd), 0.0) AS cost, COUNT(*) - COUNT(x.cost_usd)
         FROM executions x LEFT JOIN jobs j ON j.id = x.job_id
         WHERE x.completed_at >= ?1 AND x.completed_at < ?2
           AND x.status IN {RAN_STATUSES} AND x.started_at IS NOT NULL{job_cond}
         GROUP BY x.job_id, j.name ORDER BY cost DESC, name, x.job_id"
    )
}

/// Per day bucket `(i, start, end)` of `values`: index, runs, cost, uncosted runs. The days
/// are the outer loop (CROSS JOIN fixes the order), each a range on `executions_completed`.
fn daily_sql(values: &str, job_cond: &str) -> String {
    format!(
        "WITH b(i, s, e) AS (VALUES {values})
         SELECT b.i, COUNT(*), COALESCE(SUM(x.cost_usd), 0.0), COUNT(*) - COUNT(x.cost_usd)
         FROM b CROSS JOIN executions x
         WHERE x.completed_at >= b.s AND x.completed_at < b.e
           AND x.status IN {RAN_STATUSES} AND x.started_at IS NOT NULL{job_cond}
         GROUP BY b.i"
    )
}

fn count(r: &Row<'_>, i: usize) -> Result<u64, StoreError> {
    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
}

/// A run that ran the CLI and ended: what it cost (`None`: the CLI reported no cost).
#[derive(Debug, Clone, PartialEq)]
pub struct CostEntry {
    pub job_id: String,
    pub at: DateTime<Utc>,
    pub cost_usd: Option<f64>,
}

impl Store {
    /// The runs that ended after `since`, oldest end first (the budgets' windows at start-up).
    pub async fn cost_ledger(&self, since: DateTime<Utc>) -> Result<Vec<CostEntry>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT job_id, completed_at, cost_usd FROM executions
                 WHERE completed_at > ?1 AND started_at IS NOT NULL AND status IN {RAN_STATUSES}
                 ORDER BY completed_at"
            );
            c.query_map(&sql, [to_ms(since)], |r| {
                Ok(CostEntry {
                    job_id: r.get(0)?,
                    at: super::from_ms(r.get(1)?),
                    cost_usd: r.get(2)?,
                })
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

    use super::*;
    use crate::model::{
        ExecutionOptions, ExecutionStatus, Job, JobStatus, JobType, Outcome, Schedule, Trigger,
    };
    use crate::store::{FinishedRun, NewExecution};

    const NY: Tz = chrono_tz::America::New_York;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// The tests' "now" (what the engine's clock would read).
    fn now() -> DateTime<Utc> {
        at(2026, 3, 20, 12, 0)
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn job(name: &str) -> Job {
        Job {
            id: format!("id-{name}"),
            name: name.into(),
            prompt_id: None,
            prompt: Some("hi".into()),
            cron_expression: None,
            schedule: Schedule::Manual,
            status: JobStatus::Active,
            job_type: JobType::Manual,
            priority: 5,
            execution_options: ExecutionOptions::default(),
            retry_config: None,
            notification_config: None,
            resource_limits: None,
            tags: vec![],
            depends_on: Default::default(),
            budget: None,
            source: None,
            template: None,
            execution_count: 0,
            failure_count: 0,
            avg_execution_time_ms: 0.0,
            success_rate: 0.0,
            next_run_time: None,
            last_run_time: None,
            created_at: now() - Duration::days(400),
            updated_at: now() - Duration::days(400),
        }
    }

    async fn open(names: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cnp.db")).unwrap();
        for n in names {
            store.insert_job(job(n)).await.unwrap();
        }
        (dir, store)
    }

    async fn record(store: &Store, job: &str, id: &str, queued: DateTime<Utc>) {
        let recorded = store
            .insert_execution(NewExecution {
                id: id.into(),
                job_id: format!("id-{job}"),
                status: ExecutionStatus::Queued,
                trigger: Trigger::Manual,
                slot: None,
                scheduled_for: None,
                queued_at: queued,
                retry_count: 0,
                prompt: None,
                error: None,
            })
            .await
            .unwrap();
        assert!(recorded);
    }

    /// A run of `job` that ran the CLI for a minute and ended `status` at `end`, reporting
    /// `cost` — recorded, claimed and finished as the engine does.
    async fn ran(
        store: &Store,
        job: &str,
        id: &str,
        end: DateTime<Utc>,
        status: ExecutionStatus,
        cost: Option<f64>,
    ) {
        let start = end - Duration::minutes(1);
        record(store, job, id, start - Duration::seconds(1)).await;
        let claim = store.claim_execution(id.into(), start).await.unwrap();
        assert!(matches!(claim, crate::store::Claim::Started { .. }));
        let finished = store
            .finish_execution(FinishedRun {
                id: id.into(),
                prompt: Some("hi".into()),
                status,
                started_at: Some(start),
                completed_at: end,
                output: None,
                error: None,
                outcome: Some(Outcome::Success),
                exit_code: Some(0),
                session_id: None,
                cost_usd: cost,
                usage: None,
                resource_usage: None,
                pid: Some(1),
                worktree: None,
            })
            .await
            .unwrap();
        assert!(finished);
    }

    fn query(tz: Tz) -> CostQuery {
        CostQuery::new(now(), tz)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn invalid_field(r: Result<CostWindow, CostError>) -> &'static str {
        match r {
            Err(CostError::Invalid { field, message }) => {
                assert!(!message.is_empty());
                field
            }
            other => panic!("expected a bad parameter, got {other:?}"),
        }
    }

    #[test]
    fn costs_window_defaults_combinations_and_bad_parameters() {
        let w = query(Tz::UTC).window().unwrap();
        assert_eq!((w.since, w.until), (now() - Duration::days(30), now()));
        assert_eq!(w.time_zone, "UTC");

        let w = CostQuery {
            days: Some(7),
            ..query(NY)
        }
        .window()
        .unwrap();
        assert_eq!((w.since, w.until), (now() - Duration::days(7), now()));
        assert_eq!(w.time_zone, "America/New_York");

        let since = at(2026, 3, 1, 5, 0);
        let until = at(2026, 3, 10, 0, 0);
        let w = CostQuery {
            since: Some(since),
            ..query(Tz::UTC)
        }
        .window()
        .unwrap();
        assert_eq!((w.since, w.until), (since, now()));
        let w = CostQuery {
            since: Some(since),
            days: Some(2),
            ..query(Tz::UTC)
        }
        .window()
        .unwrap();
        assert_eq!((w.since, w.until), (since, since + Duration::days(2)));
        let w = CostQuery {
            until: Some(until),
            days: Some(3),
            ..query(Tz::UTC)
        }
        .window()
        .unwrap();
        assert_eq!((w.since, w.until), (until - Duration::days(3), until));
        let w = CostQuery {
            since: Some(since),
            until: Some(until),
            ..query(Tz::UTC)
        }
        .window()
        .unwrap();
        assert_eq!((w.since, w.until), (since, until));

        for days in [0, 367] {
            let q = CostQuery {
                days: Some(days),
                ..query(Tz::UTC)
            };
            assert_eq!(invalid_field(q.window()), "days");
        }
        let all_three = CostQuery {
            since: Some(since),
            until: Some(until),
            days: Some(3),
            ..query(Tz::UTC)
        };
        assert_eq!(invalid_field(all_three.window()), "days");
        let backwards = CostQuery {
            since: Some(until),
            until: Some(since),
            ..query(Tz::UTC)
        };
        assert_eq!(invalid_field(backwards.window()), "since");
        let in_the_future = CostQuery {
            since: Some(now() + Duration::hours(1)),
            ..query(Tz::UTC)
        };
        assert_eq!(invalid_field(in_the_future.window()), "since");
        let too_long = CostQuery {
            since: Some(now() - Duration::days(367)),
            ..query(Tz::UTC)
        };
        assert_eq!(invalid_field(too_long.window()), "since");
        let a_year = CostQuery {
            since: Some(now() - Duration::days(366)),
            ..query(Tz::UTC)
        };
        assert!(a_year.window().is_ok());
    }

    #[tokio::test]
    async fn costs_count_runs_that_ran_the_cli_and_flag_those_without_a_cost() {
        let (_d, store) = open(&["alpha", "beta", "gamma", "idle"]).await;
        let since = at(2026, 3, 10, 0, 0);
        let until = at(2026, 3, 12, 0, 0);
        // alpha: two costed runs in the window (one exactly at `since`), one failed without a
        // cost, one before and one at `until` (both outside).
        ran(
            &store,
            "alpha",
            "a1",
            since,
            ExecutionStatus::Completed,
            Some(0.4),
        )
        .await;
        let mid = at(2026, 3, 11, 9, 30);
        ran(
            &store,
            "alpha",
            "a2",
            mid,
            ExecutionStatus::Completed,
            Some(0.1),
        )
        .await;
        ran(&store, "alpha", "a3", mid, ExecutionStatus::Failed, None).await;
        let before = since - Duration::seconds(1);
        ran(
            &store,
            "alpha",
            "a4",
            before,
            ExecutionStatus::Completed,
            Some(5.0),
        )
        .await;
        ran(
            &store,
            "alpha",
            "a5",
            until,
            ExecutionStatus::Completed,
            Some(7.0),
        )
        .await;
        // beta: a timed-out run without a cost and a cancelled one that cost something; a
        // run cancelled before it started, a skipped one and a pending one do not count.
        ran(&store, "beta", "b1", mid, ExecutionStatus::TimedOut, None).await;
        ran(
            &store,
            "beta",
            "b2",
            mid,
            ExecutionStatus::Cancelled,
            Some(0.05),
        )
        .await;
        record(&store, "beta", "b3", mid).await;
        assert!(store
            .set_pending_status("b3".into(), ExecutionStatus::Cancelled, None, mid)
            .await
            .unwrap());
        record(&store, "beta", "b4", mid).await;
        assert!(store
            .set_pending_status("b4".into(), ExecutionStatus::Skipped, None, mid)
            .await
            .unwrap());
        record(&store, "beta", "b5", mid).await;
        // gamma: a run cnp was killed during, marked interrupted at the next start: it ran the
        // CLI and nothing reported a cost.
        record(&store, "gamma", "g1", mid - Duration::minutes(5)).await;
        store
            .claim_execution("g1".into(), mid - Duration::minutes(4))
            .await
            .unwrap();
        let marked = store
            .recover_interrupted(mid, HashMap::new())
            .await
            .unwrap();
        assert_eq!(marked.len(), 1);

        let q = CostQuery {
            since: Some(since),
            until: Some(until),
            ..query(Tz::UTC)
        };
        let r = store.cost_report(q.clone()).await.unwrap();
        assert_eq!((r.window.since, r.window.until), (since, until));
        assert!(close(r.cost_usd, 0.55), "{r:?}");
        assert_eq!((r.runs, r.uncosted_runs), (6, 3), "{r:?}");
        assert_eq!(r.job, None);
        assert_eq!(r.jobs_total, 3);
        let by_job: Vec<(&str, u64, u64)> = r
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.runs, j.uncosted_runs))
            .collect();
        // Top spenders first; gamma's $0 after beta's $0.05; a job without runs is absent.
        assert_eq!(
            by_job,
            [("alpha", 3, 1), ("beta", 2, 1), ("gamma", 1, 1)],
            "{r:?}"
        );
        assert!(close(r.jobs[0].cost_usd, 0.5) && close(r.jobs[1].cost_usd, 0.05));
        assert_eq!(r.jobs[0].job_id, "id-alpha");
        // Every day of the window, oldest first; the totals add up.
        let days: Vec<(NaiveDate, u64, u64)> = r
            .daily
            .iter()
            .map(|d| (d.date, d.runs, d.uncosted_runs))
            .collect();
        assert_eq!(
            days,
            [(date(2026, 3, 10), 1, 0), (date(2026, 3, 11), 5, 3)],
            "{r:?}"
        );
        assert!(close(r.daily[0].cost_usd, 0.4) && close(r.daily[1].cost_usd, 0.15));

        // The top spender only: the totals still cover every job.
        let top = store
            .cost_report(CostQuery {
                limit: Some(1),
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(top.jobs.len(), 1);
        assert_eq!(top.jobs[0].name, "alpha");
        assert_eq!((top.jobs_total, top.runs), (3, 6));
        assert!(close(top.cost_usd, 0.55));

        // One job, by name or by id.
        for key in ["beta", "id-beta"] {
            let b = store
                .cost_report(CostQuery {
                    job: Some(key.into()),
                    ..q.clone()
                })
                .await
                .unwrap();
            assert_eq!(
                b.job,
                Some(CostJobRef {
                    id: "id-beta".into(),
                    name: "beta".into()
                })
            );
            assert_eq!((b.runs, b.uncosted_runs, b.jobs_total), (2, 1, 1));
            assert!(close(b.cost_usd, 0.05));
            assert_eq!(b.daily.iter().map(|d| d.runs).sum::<u64>(), 2);
        }
        let idle = store
            .cost_report(CostQuery {
                job: Some("idle".into()),
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!((idle.runs, idle.cost_usd, idle.jobs.len()), (0, 0.0, 0));
        assert_eq!(idle.daily.len(), 2);
        match store
            .cost_report(CostQuery {
                job: Some("nope".into()),
                ..q.clone()
            })
            .await
        {
            Err(CostError::Store(StoreError::NotFound { what: "job", id })) => {
                assert_eq!(id, "nope")
            }
            other => panic!("expected job not found, got {other:?}"),
        }

        // The default window, the 30 days before the clock's now, holds every run above.
        let all = store.cost_report(query(Tz::UTC)).await.unwrap();
        assert_eq!(all.runs, 8, "{all:?}");
        assert!(close(all.cost_usd, 12.55));
        assert_eq!(all.daily.len(), 31);
        assert_eq!(all.daily[0].date, date(2026, 2, 18));
        assert_eq!(all.daily[30].date, date(2026, 3, 20));
        // A window without runs.
        let none = store
            .cost_report(CostQuery {
                days: Some(1),
                ..query(Tz::UTC)
            })
            .await
            .unwrap();
        assert_eq!((none.runs, none.jobs_total, none.cost_usd), (0, 0, 0.0));
        assert_eq!(none.daily.len(), 2);
        assert!(none.daily.iter().all(|d| d.runs == 0));
    }

    #[tokio::test]
    async fn costs_days_are_calendar_days_of_the_time_zone_across_midnight_and_dst() {
        let (_d, store) = open(&["nightly"]).await;
        // New York went from EST (UTC-5) to EDT (UTC-4) on 2026-03-08: that day had 23 hours.
        let runs = [
            ("r1", at(2026, 3, 8, 4, 30), 1.0), // Mar 7 23:30 EST — Mar 8 in UTC
            ("r2", at(2026, 3, 8, 5, 30), 2.0), // Mar 8 00:30 EST
            ("r3", at(2026, 3, 9, 3, 30), 4.0), // Mar 8 23:30 EDT — Mar 9 in UTC
            ("r4", at(2026, 3, 9, 4, 30), 8.0), // Mar 9 00:30 EDT
        ];
        for (id, end, cost) in runs {
            ran(
                &store,
                "nightly",
                id,
                end,
                ExecutionStatus::Completed,
                Some(cost),
            )
            .await;
        }
        let window = |tz| CostQuery {
            since: Some(at(2026, 3, 6, 12, 0)),
            until: Some(at(2026, 3, 10, 12, 0)),
            ..query(tz)
        };
        let days = |r: &CostReport| -> Vec<(NaiveDate, u64, f64)> {
            r.daily
                .iter()
                .map(|d| (d.date, d.runs, d.cost_usd))
                .collect()
        };
        let ny = store.cost_report(window(NY)).await.unwrap();
        assert_eq!(ny.window.time_zone, "America/New_York");
        assert_eq!(
            days(&ny),
            [
                (date(2026, 3, 6), 0, 0.0),
                (date(2026, 3, 7), 1, 1.0),
                (date(2026, 3, 8), 2, 6.0),
                (date(2026, 3, 9), 1, 8.0),
                (date(2026, 3, 10), 0, 0.0),
            ]
        );
        let utc = store.cost_report(window(Tz::UTC)).await.unwrap();
        assert_eq!(
            days(&utc),
            [
                (date(2026, 3, 6), 0, 0.0),
                (date(2026, 3, 7), 0, 0.0),
                (date(2026, 3, 8), 2, 3.0),
                (date(2026, 3, 9), 2, 12.0),
                (date(2026, 3, 10), 0, 0.0),
            ]
        );
        assert_eq!((ny.runs, utc.runs), (4, 4));
        assert!(close(ny.cost_usd, 15.0) && close(utc.cost_usd, 15.0));
        // A window cut inside a day: the run at 23:30 EST on Mar 7 is before it.
        let cut = store
            .cost_report(CostQuery {
                since: Some(at(2026, 3, 8, 5, 0)),
                until: Some(at(2026, 3, 9, 4, 0)),
                ..query(NY)
            })
            .await
            .unwrap();
        assert_eq!(days(&cut), [(date(2026, 3, 8), 2, 6.0)]);

        // Where each day starts.
        assert_eq!(local_day_start(NY, date(2026, 3, 8)), at(2026, 3, 8, 5, 0));
        assert_eq!(local_day_start(NY, date(2026, 3, 9)), at(2026, 3, 9, 4, 0));
        // Santiago skipped from 00:00 to 01:00 on 2026-09-06: that day began at 01:00 (UTC-3).
        let santiago = chrono_tz::America::Santiago;
        assert_eq!(
            local_day_start(santiago, date(2026, 9, 6)),
            at(2026, 9, 6, 4, 0)
        );
    }

    #[tokio::test]
    async fn costs_counters_keep_what_retention_prunes_and_the_report_does_not() {
        let (_d, store) = open(&["alpha", "beta", "with \"quotes\""]).await;
        let old = now() - Duration::days(40);
        let recent = now() - Duration::hours(1);
        ran(
            &store,
            "alpha",
            "a1",
            old,
            ExecutionStatus::Completed,
            Some(1.5),
        )
        .await;
        ran(
            &store,
            "alpha",
            "a2",
            recent,
            ExecutionStatus::Completed,
            Some(0.25),
        )
        .await;
        ran(&store, "alpha", "a3", old, ExecutionStatus::Failed, None).await;
        ran(
            &store,
            "beta",
            "b1",
            recent,
            ExecutionStatus::Completed,
            None,
        )
        .await;
        record(&store, "beta", "b2", now()).await;
        assert!(store
            .set_pending_status("b2".into(), ExecutionStatus::Cancelled, None, now())
            .await
            .unwrap());
        let counters = |c: Vec<JobCostCounter>| -> Vec<(String, f64, u64)> {
            c.into_iter()
                .map(|c| (c.name, c.cost_usd, c.uncosted_runs))
                .collect()
        };
        let expected = vec![
            ("alpha".to_owned(), 1.75, 1),
            ("beta".to_owned(), 0.0, 1),
            ("with \"quotes\"".to_owned(), 0.0, 0),
        ];
        assert_eq!(counters(store.cost_counters().await.unwrap()), expected);
        // A run ends once: finishing it again changes nothing.
        let again = store
            .finish_execution(FinishedRun {
                id: "a2".into(),
                prompt: None,
                status: ExecutionStatus::Completed,
                started_at: Some(now()),
                completed_at: now(),
                output: None,
                error: None,
                outcome: None,
                exit_code: None,
                session_id: None,
                cost_usd: Some(100.0),
                usage: None,
                resource_usage: None,
                pid: None,
                worktree: None,
            })
            .await
            .unwrap();
        assert!(!again);

        // Retention deletes the old runs: the window's report loses them, the counters do not.
        let window = CostQuery {
            days: Some(60),
            ..query(Tz::UTC)
        };
        let before = store.cost_report(window.clone()).await.unwrap();
        assert_eq!((before.runs, before.uncosted_runs), (4, 2));
        let pruned = store
            .cleanup_executions(Some(now() - Duration::days(30)), 0)
            .await
            .unwrap();
        assert_eq!(pruned, 2);
        let after = store.cost_report(window).await.unwrap();
        assert_eq!((after.runs, after.uncosted_runs), (2, 1));
        assert!(close(after.cost_usd, 0.25));
        assert_eq!(counters(store.cost_counters().await.unwrap()), expected);
    }

    #[tokio::test]
    async fn costs_migration_starts_the_counters_from_the_kept_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cnp.db");
        {
            let store = Store::open(&path).unwrap();
            store.insert_job(job("alpha")).await.unwrap();
            store.insert_job(job("beta")).await.unwrap();
            ran(
                &store,
                "alpha",
                "a1",
                now(),
                ExecutionStatus::Completed,
                Some(0.5),
            )
            .await;
            ran(
                &store,
                "alpha",
                "a2",
                now(),
                ExecutionStatus::TimedOut,
                None,
            )
            .await;
            ran(
                &store,
                "beta",
                "b1",
                now(),
                ExecutionStatus::Completed,
                Some(0.125),
            )
            .await;
            record(&store, "beta", "b2", now()).await;
            store.close();
        }
        // Back to the schema before this migration, as a database of an older cnp.
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP INDEX executions_completed;
                 ALTER TABLE jobs DROP COLUMN budget;
                 ALTER TABLE jobs DROP COLUMN cost_usd_total;
                 ALTER TABLE jobs DROP COLUMN uncosted_runs;
                 ALTER TABLE executions DROP COLUMN owner;
                 ALTER TABLE executions DROP COLUMN lease_until;",
            )
            .unwrap();
            // v7: before the costs migration (v8) and the claim columns (v9).
            c.pragma_update(None, "user_version", 7).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let c = store.cost_counters().await.unwrap();
        assert_eq!(
            c.iter()
                .map(|c| (c.name.as_str(), c.cost_usd, c.uncosted_runs))
                .collect::<Vec<_>>(),
            [("alpha", 0.5, 1), ("beta", 0.125, 0)]
        );
        let indexed: bool = store
            .read_blocking(|c| {
                c.query_one(
                    "SELECT COUNT(*) > 0 FROM sqlite_master
                     WHERE type = 'index' AND name = 'executions_completed'",
                    (),
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert!(indexed);
    }

    #[tokio::test]
    async fn costs_report_reads_runs_by_the_completed_at_index() {
        let (_d, store) = open(&["alpha"]).await;
        ran(
            &store,
            "alpha",
            "a1",
            now(),
            ExecutionStatus::Completed,
            Some(0.5),
        )
        .await;
        let plans = store
            .read_blocking(|c| {
                let c = c.sqlite().expect("an SQLite store");
                let mut out = Vec::new();
                for sql in [
                    jobs_sql(""),
                    daily_sql("(0, 0, 1), (1, 1, 2)", ""),
                    jobs_sql(" AND x.job_id = ?3"),
                ] {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let n = stmt.parameter_count();
                    let args: Vec<i64> = vec![0; n];
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))?;
                    out.push(rows.collect::<Result<Vec<_>, _>>()?.join("; "));
                }
                Ok(out)
            })
            .unwrap();
        for plan in &plans[..2] {
            assert!(plan.contains("executions_completed"), "{plan}");
            assert!(!plan.contains("SCAN x"), "{plan}");
        }
        assert!(!plans[2].contains("SCAN x"), "{}", plans[2]);
    }
}
