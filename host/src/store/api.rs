//! Read queries for the admin API: totals for paginated lists, statistics and metrics.

use super::{Db, ExecutionFilter, JobFilter, Store, StoreError};
use crate::model::{ExecutionStatus, JobStatus};

/// Durations of finished runs (those with an `execution_time_ms`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationStats {
    pub count: u64,
    pub sum_ms: u64,
    pub mean_ms: f64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Cumulative counts: runs with a duration ≤ each bound of `bounds_ms` (same order).
    pub buckets: Vec<u64>,
}

impl Store {
    /// How many jobs [`Store::list_jobs`] would return without its limit and offset.
    pub async fn count_jobs(&self, f: JobFilter) -> Result<u64, StoreError> {
        self.read(move |c| {
            let (cond, args) = super::jobs::job_filter_sql(c.backend(), &f);
            count(
                c,
                &format!("SELECT COUNT(*) FROM jobs WHERE 1=1{cond}"),
                &args,
            )
        })
        .await
    }

    /// How many executions [`Store::list_executions`] would return without its limit and offset.
    pub async fn count_executions(&self, f: ExecutionFilter) -> Result<u64, StoreError> {
        self.read(move |c| {
            let mut sql = String::from("SELECT COUNT(*) FROM executions WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            if let Some(j) = &f.job_id {
                args.push(j.clone());
                sql.push_str(&format!(" AND job_id = ?{}", args.len()));
            }
            if let Some(s) = f.status {
                args.push(s.as_str().to_owned());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            // Without conditions SQLite counts the b-tree directly (no row visits).
            count(c, sql.trim_end_matches(" WHERE 1=1"), &args)
        })
        .await
    }

    /// Stored log lines of an execution.
    pub async fn count_logs(&self, execution_id: String) -> Result<u64, StoreError> {
        self.read(move |c| {
            count(
                c,
                "SELECT COUNT(*) FROM execution_logs WHERE execution_id = ?1",
                &[execution_id],
            )
        })
        .await
    }

    /// Jobs per status.
    pub async fn job_status_counts(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.read(|c| {
            let rows = c.query_map(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status",
                (),
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| JobStatus::parse(&s).map(|s| (s, n as u64)))
                .collect())
        })
        .await
    }

    /// Duration statistics of finished runs, with cumulative bucket counts for `bounds_ms`.
    pub async fn duration_stats(&self, bounds_ms: Vec<u64>) -> Result<DurationStats, StoreError> {
        self.read(move |c| {
            let (count, sum, max): (i64, Option<i64>, Option<i64>) = c.query_one(
                "SELECT COUNT(*), SUM(execution_time_ms), MAX(execution_time_ms) FROM executions
                 WHERE execution_time_ms IS NOT NULL",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let count = count.max(0) as u64;
            let mut stats = DurationStats {
                count,
                sum_ms: sum.unwrap_or(0).max(0) as u64,
                max_ms: max.unwrap_or(0).max(0) as u64,
                ..Default::default()
            };
            if count == 0 {
                stats.buckets = vec![0; bounds_ms.len()];
                return Ok(stats);
            }
            stats.mean_ms = stats.sum_ms as f64 / count as f64;
            let nth = |q: f64| -> Result<u64, StoreError> {
                let offset = ((count as f64 * q).ceil() as i64 - 1).clamp(0, count as i64 - 1);
                let v: i64 = c.query_one(
                    "SELECT execution_time_ms FROM executions WHERE execution_time_ms IS NOT NULL
                     ORDER BY execution_time_ms LIMIT 1 OFFSET ?1",
                    [offset],
                    |r| r.get(0),
                )?;
                Ok(v.max(0) as u64)
            };
            stats.p50_ms = nth(0.50)?;
            stats.p90_ms = nth(0.90)?;
            stats.p99_ms = nth(0.99)?;
            if !bounds_ms.is_empty() {
                let cols: Vec<String> = bounds_ms
                    .iter()
                    .map(|b| format!("SUM(CASE WHEN execution_time_ms <= {b} THEN 1 ELSE 0 END)"))
                    .collect();
                let sql = format!(
                    "SELECT {} FROM executions WHERE execution_time_ms IS NOT NULL",
                    cols.join(", ")
                );
                stats.buckets = c.query_one(&sql, (), |r| {
                    (0..bounds_ms.len())
                        .map(|i| Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64))
                        .collect::<Result<Vec<u64>, StoreError>>()
                })?;
            }
            Ok(stats)
        })
        .await
    }

    /// Mean duration of finished runs, in ms (0 when none finished).
    pub async fn avg_execution_time_ms(&self) -> Result<f64, StoreError> {
        self.read(|c| {
            let v: Option<f64> = c.query_one(
                "SELECT AVG(execution_time_ms) FROM executions WHERE execution_time_ms IS NOT NULL",
                (),
                |r| r.get(0),
            )?;
            Ok(v.unwrap_or(0.0))
        })
        .await
    }

    /// A trivial query on a pooled connection: is the database answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query_one("SELECT COUNT(*) FROM service_state", (), |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(())
        })
        .await
    }

    /// Completed and failed (failed, timed out, interrupted) runs, for the success rate.
    pub async fn finished_counts(&self) -> Result<(u64, u64), StoreError> {
        let counts = self.execution_counts().await?;
        let get = |s: ExecutionStatus| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
        Ok((
            get(ExecutionStatus::Completed),
            get(ExecutionStatus::Failed)
                + get(ExecutionStatus::TimedOut)
                + get(ExecutionStatus::Interrupted),
        ))
    }
}

fn count(c: &Db, sql: &str, args: &[String]) -> Result<u64, StoreError> {
    let n: i64 = c.query_one(sql, args.iter().collect::<Vec<&String>>(), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}
