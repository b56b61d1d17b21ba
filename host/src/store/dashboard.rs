//! What the web dashboard reads and writes beyond the API's queries: login sessions, each
//! job's recent runs (last outcome, sparkline), runs grouped with their retry attempts, and
//! per-day statistics for the charts.

use chrono::{DateTime, Utc};

use super::db::{params, Db};
use super::executions::{exec_from_row, EXEC_COLUMNS};
use super::{from_ms, to_ms, Store, StoreError};
use crate::model::{ExecutionStatus, JobExecution};

/// A dashboard login session. Only a hash of the cookie's value is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One finished or going run of a job, newest first (for the jobs table).
#[derive(Debug, Clone, PartialEq)]
pub struct RecentRun {
    pub id: String,
    pub status: ExecutionStatus,
    pub queued_at: DateTime<Utc>,
    pub execution_time_ms: Option<u64>,
}

/// A run: its first attempt and every later one, first to latest.
#[derive(Debug, Clone)]
pub struct RunChain {
    pub attempts: Vec<JobExecution>,
}

/// One day of runs (UTC), for the statistics page.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DayStats {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Unix seconds of the day's start.
    pub start: i64,
    pub completed: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub interrupted: u64,
    pub skipped: u64,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub cost_usd: f64,
}

/// Spending of one job over a window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobCost {
    pub job_id: String,
    pub name: String,
    pub runs: u64,
    pub cost_usd: f64,
}

impl Store {
    pub async fn create_dashboard_session(
        &self,
        id_hash: String,
        session: DashboardSession,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO dashboard_sessions (id_hash, csrf, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    id_hash,
                    session.csrf,
                    to_ms(session.created_at),
                    to_ms(session.expires_at)
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The session, if it exists and has not expired at `now`.
    pub async fn dashboard_session(
        &self,
        id_hash: String,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                "SELECT csrf, created_at, expires_at FROM dashboard_sessions
                 WHERE id_hash = ?1 AND expires_at > ?2",
                params![id_hash, to_ms(now)],
                |r| {
                    Ok(DashboardSession {
                        csrf: r.get(0)?,
                        created_at: from_ms(r.get(1)?),
                        expires_at: from_ms(r.get(2)?),
                    })
                },
            )
        })
        .await
    }

    pub async fn delete_dashboard_session(&self, id_hash: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM dashboard_sessions WHERE id_hash = ?1",
                [id_hash],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes expired sessions; returns how many.
    pub async fn prune_dashboard_sessions(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= ?1",
                [to_ms(now)],
            )
        })
        .await
    }

    /// The `per_job` most recent runs (first attempts and retries alike) of each job, newest
    /// first; jobs without runs are absent.
    pub async fn recent_runs(
        &self,
        job_ids: Vec<String>,
        per_job: u32,
    ) -> Result<Vec<(String, Vec<RecentRun>)>, StoreError> {
        self.read(move |c| {
            let mut out: Vec<(String, Vec<RecentRun>)> = Vec::with_capacity(job_ids.len());
            for job in job_ids {
                let runs = c.query_map(
                    "SELECT id, status, queued_at, execution_time_ms FROM executions
                     WHERE job_id = ?1 ORDER BY queued_at DESC, rowid DESC LIMIT ?2",
                    params![job, per_job],
                    |r| {
                        let status: String = r.get(1)?;
                        Ok(RecentRun {
                            id: r.get(0)?,
                            status: parse_status(&status)?,
                            queued_at: from_ms(r.get(2)?),
                            execution_time_ms: r.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                        })
                    },
                )?;
                if !runs.is_empty() {
                    out.push((job, runs));
                }
            }
            Ok(out)
        })
        .await
    }

    /// A job's runs (retry attempts grouped under their first), newest first, with the total
    /// count. `status` filters on each run's latest attempt.
    pub async fn job_runs(
        &self,
        job_id: String,
        status: Option<ExecutionStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<RunChain>, u64), StoreError> {
        self.read(move |c| job_runs_conn(c, &job_id, status, limit, offset))
            .await
    }

    /// Runs per UTC day over the last `days` days (oldest first, every day present), and the
    /// jobs that spent the most over the same window.
    pub async fn daily_stats(
        &self,
        now: DateTime<Utc>,
        days: u32,
    ) -> Result<(Vec<DayStats>, Vec<JobCost>), StoreError> {
        self.read(move |c| daily_stats_conn(c, now, days)).await
    }
}

fn parse_status(s: &str) -> Result<ExecutionStatus, StoreError> {
    ExecutionStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("executions.status `{s}`")))
}

/// SQL for a run's latest attempt id, given the first attempt's alias `e`.
const LATEST_ATTEMPT: &str = "COALESCE((SELECT x.id FROM executions x
        WHERE x.first_attempt_id = e.id AND x.id != e.id
        ORDER BY x.retry_count DESC LIMIT 1), e.id)";

fn job_runs_conn(
    c: &Db,
    job_id: &str,
    status: Option<ExecutionStatus>,
    limit: u32,
    offset: u32,
) -> Result<(Vec<RunChain>, u64), StoreError> {
    let mut args: Vec<String> = vec![job_id.to_owned()];
    let mut cond = String::new();
    if let Some(s) = status {
        args.push(s.as_str().to_owned());
        cond = format!(
            " AND (SELECT l.status FROM executions l WHERE l.id = {LATEST_ATTEMPT}) = ?{}",
            args.len()
        );
    }
    let total: i64 = c.query_one(
        &format!(
            "SELECT COUNT(*) FROM executions e WHERE e.job_id = ?1 AND e.retry_count = 0{cond}"
        ),
        &args,
        |r| r.get(0),
    )?;
    let firsts: Vec<String> = c.query_map(
        &format!(
            "SELECT e.id FROM executions e WHERE e.job_id = ?1 AND e.retry_count = 0{cond}
             ORDER BY e.queued_at DESC, e.rowid DESC LIMIT {limit} OFFSET {offset}"
        ),
        &args,
        |r| r.get(0),
    )?;
    let attempts = format!(
        "SELECT {EXEC_COLUMNS} FROM executions
         WHERE id = ?1 OR first_attempt_id = ?1 ORDER BY retry_count"
    );
    let mut chains = Vec::with_capacity(firsts.len());
    for id in firsts {
        let list = c.query_map(&attempts, [&id], exec_from_row)?;
        chains.push(RunChain { attempts: list });
    }
    Ok((chains, total.max(0) as u64))
}

fn daily_stats_conn(
    c: &Db,
    now: DateTime<Utc>,
    days: u32,
) -> Result<(Vec<DayStats>, Vec<JobCost>), StoreError> {
    const DAY_MS: i64 = 86_400_000;
    let days = days.clamp(1, 366) as i64;
    let today = to_ms(now).div_euclid(DAY_MS) * DAY_MS;
    let from = today - (days - 1) * DAY_MS;
    let mut out: Vec<DayStats> = (0..days)
        .map(|i| {
            let start = from + i * DAY_MS;
            DayStats {
                day: from_ms(start).format("%Y-%m-%d").to_string(),
                start: start / 1000,
                ..Default::default()
            }
        })
        .collect();
    // Finished runs by the day they were queued.
    let counts = c.query_map(
        "SELECT (queued_at - ?1) / 86400000 AS d, status, COUNT(*), COALESCE(SUM(cost_usd), 0)
         FROM executions WHERE queued_at >= ?1
         GROUP BY d, status",
        [from],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, f64>(3)?,
            ))
        },
    )?;
    for (d, status, n, cost) in counts {
        let Some(day) = usize::try_from(d).ok().and_then(|d| out.get_mut(d)) else {
            continue;
        };
        let n = n.max(0) as u64;
        match ExecutionStatus::parse(&status) {
            Some(ExecutionStatus::Completed) => day.completed += n,
            Some(ExecutionStatus::Failed) => day.failed += n,
            Some(ExecutionStatus::TimedOut) => day.timed_out += n,
            Some(ExecutionStatus::Cancelled) => day.cancelled += n,
            Some(ExecutionStatus::Interrupted) => day.interrupted += n,
            Some(ExecutionStatus::Skipped) => day.skipped += n,
            _ => {}
        }
        day.cost_usd += cost;
    }
    // Duration percentiles per day, from the durations in order (nearest rank). Grouped as the
    // rows come (nothing is collected but the current day's durations).
    let mut current: Option<(i64, Vec<u64>)> = None;
    let flush = |out: &mut Vec<DayStats>, cur: Option<(i64, Vec<u64>)>| {
        if let Some((d, v)) = cur {
            if let Some(day) = usize::try_from(d).ok().and_then(|d| out.get_mut(d)) {
                day.p50_ms = percentile(&v, 0.50);
                day.p95_ms = percentile(&v, 0.95);
            }
        }
    };
    c.query_map(
        "SELECT (queued_at - ?1) / 86400000 AS d, execution_time_ms FROM executions
         WHERE queued_at >= ?1 AND execution_time_ms IS NOT NULL
         ORDER BY d, execution_time_ms",
        [from],
        |r| {
            let d: i64 = r.get(0)?;
            let ms = r.get::<_, i64>(1)?.max(0) as u64;
            match &mut current {
                Some((cd, v)) if *cd == d => v.push(ms),
                _ => {
                    flush(&mut out, current.take());
                    current = Some((d, vec![ms]));
                }
            }
            Ok(())
        },
    )?;
    flush(&mut out, current.take());
    let costs = c.query_map(
        "SELECT e.job_id, j.name, COUNT(*), COALESCE(SUM(e.cost_usd), 0) AS cost
         FROM executions e JOIN jobs j ON j.id = e.job_id
         WHERE e.queued_at >= ?1
         GROUP BY e.job_id, j.name ORDER BY cost DESC, j.name LIMIT 20",
        [from],
        |r| {
            Ok(JobCost {
                job_id: r.get(0)?,
                name: r.get(1)?,
                runs: r.get::<_, i64>(2)?.max(0) as u64,
                cost_usd: r.get(3)?,
            })
        },
    )?;
    Ok((out, costs))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.95), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&v, 0.95), Some(95));
    }
}
