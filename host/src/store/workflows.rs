//! Workflows: passes, the verdict of each edge in a pass, and the runs upstream ends start.
//!
//! A run's end and what it starts downstream are one write ([`settle_conn`], called in the same
//! transaction as the end of the run — see [`Store::finish_with_retry`]): a crash between the two
//! cannot lose or double a downstream run. A downstream run is keyed by (pass, job) (`UNIQUE`
//! index `executions_workflow_node`), so even two settles of the same node record it once.

use chrono::{DateTime, Utc};

use super::db::{params, Db, Row};
use super::executions::{exec_from_row, EXEC_COLUMNS};
use super::{from_ms, opt_from_ms, to_json, to_ms, Store, StoreError};
use crate::model::{DependsOn, ExecutionStatus, JobExecution};

/// What an upstream run's end means for one downstream job, decided by the engine (it
/// evaluates the edge's `on` and `when`).
#[derive(Debug, Clone)]
pub struct EdgeVerdict {
    pub downstream_job: String,
    /// The edge is satisfied.
    pub satisfied: bool,
    /// Why not (or, for a `when` that could not be evaluated, the error).
    pub reason: Option<String>,
    /// The `when` expression failed: the downstream run is recorded `failed` with `reason`.
    pub error: bool,
    /// The downstream job's upstreams that take part in this pass: a fan-in waits for each.
    pub expected: Vec<String>,
    /// `any_of`: one satisfied edge starts the run.
    pub any: bool,
}

/// The end of a run, as the settle of its downstream needs it.
#[derive(Debug, Clone)]
pub struct Settle {
    /// The pass: the upstream's own, or (for a pass's first run) its first attempt's id.
    pub pass_id: String,
    pub upstream_execution: String,
    pub upstream_job: String,
    pub verdicts: Vec<EdgeVerdict>,
    pub now: DateTime<Utc>,
}

/// A downstream run a settle recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub execution_id: String,
    pub job_id: String,
    /// `Queued` (to dispatch), `Skipped` or `Failed` (ended already: settle its downstream).
    pub status: ExecutionStatus,
    pub reason: Option<String>,
}

/// A pass, as listed.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WorkflowRun {
    pub id: String,
    pub root_job_id: Option<String>,
    pub root_job_name: Option<String>,
    pub root_execution_id: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// How many runs the pass holds, by status of their latest attempt.
    pub runs: std::collections::BTreeMap<String, u64>,
}

/// One edge's verdict in a pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PassEdge {
    pub upstream_job: String,
    pub downstream_job: String,
    pub upstream_execution: String,
    pub satisfied: bool,
    pub reason: Option<String>,
}

/// Everything recorded for a pass: its runs (every attempt) and edge verdicts.
#[derive(Debug, Clone)]
pub struct PassRecord {
    pub run: WorkflowRun,
    pub executions: Vec<JobExecution>,
    pub edges: Vec<PassEdge>,
}

/// A job's `depends_on` with each upstream resolved to a job id (`None`: no such job).
#[derive(Debug, Clone)]
pub struct JobDependencies {
    pub id: String,
    pub name: String,
    pub depends_on: DependsOn,
    pub resolved: Vec<Option<String>>,
}

/// Records the verdicts of an upstream run's end and the downstream runs they decide. Returns
/// the runs recorded now (none twice).
pub(super) fn settle_conn(c: &Db, s: &Settle) -> Result<Vec<Settled>, StoreError> {
    if s.verdicts.is_empty() {
        return Ok(Vec::new());
    }
    let now = to_ms(s.now);
    // The pass exists from the end of its first run (the upstream here when it has none).
    c.execute(
        "INSERT INTO workflow_runs (id, root_job_id, root_execution_id, created_at)
         VALUES (?1, ?2, ?1, ?3) ON CONFLICT DO NOTHING",
        params![s.pass_id, s.upstream_job, now],
    )?;
    c.execute(
        "UPDATE executions SET workflow_run_id = ?1
         WHERE workflow_run_id IS NULL AND (id = ?1 OR first_attempt_id = ?1 OR id = ?2)",
        params![s.pass_id, s.upstream_execution],
    )?;
    let cancelled: bool = c
        .query_opt(
            "SELECT cancelled_at IS NOT NULL FROM workflow_runs WHERE id = ?1",
            [&s.pass_id],
            |r| r.get(0),
        )?
        .unwrap_or(false);
    let mut out = Vec::new();
    for v in &s.verdicts {
        c.execute(
            "INSERT INTO workflow_edges
                (pass_id, downstream_job, upstream_job, upstream_execution, satisfied, reason,
                 created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            params![
                s.pass_id,
                v.downstream_job,
                s.upstream_job,
                s.upstream_execution,
                v.satisfied,
                v.reason,
                now
            ],
        )?;
        let rows = c.query_map(
            "SELECT upstream_job, upstream_execution, satisfied, reason FROM workflow_edges
             WHERE pass_id = ?1 AND downstream_job = ?2 ORDER BY created_at, upstream_job",
            params![s.pass_id, v.downstream_job],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            },
        )?;
        let all_in = v.expected.iter().all(|up| rows.iter().any(|r| &r.0 == up));
        let satisfied: Vec<&String> = rows.iter().filter(|r| r.2).map(|r| &r.1).collect();
        let unsatisfied = || {
            rows.iter()
                .filter(|r| !r.2)
                .filter_map(|r| r.3.clone())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let decision = if cancelled {
            Some((
                ExecutionStatus::Skipped,
                Some("the workflow pass was cancelled".to_owned()),
                Vec::new(),
            ))
        } else if v.error {
            Some((
                ExecutionStatus::Failed,
                v.reason.clone(),
                vec![s.upstream_execution.clone()],
            ))
        } else if v.any && !satisfied.is_empty() {
            Some((
                ExecutionStatus::Queued,
                None,
                satisfied.into_iter().cloned().collect(),
            ))
        } else if !all_in {
            None // a fan-in: waits for its other upstreams in this pass
        } else if !v.any && rows.iter().all(|r| r.2) {
            Some((
                ExecutionStatus::Queued,
                None,
                rows.iter().map(|r| r.1.clone()).collect(),
            ))
        } else {
            Some((
                ExecutionStatus::Skipped,
                Some(format!("not started: {}", unsatisfied())),
                rows.iter().map(|r| r.1.clone()).collect(),
            ))
        };
        let Some((mut status, mut reason, upstream_ids)) = decision else {
            continue;
        };
        // A paused or disabled job is not started by its upstreams: recorded skipped, so the
        // pass goes on past it.
        let job_status: Option<String> = c.query_opt(
            "SELECT status FROM jobs WHERE id = ?1",
            [&v.downstream_job],
            |r| r.get(0),
        )?;
        let Some(job_status) = job_status else {
            continue; // deleted meanwhile
        };
        if status == ExecutionStatus::Queued && job_status != "active" {
            status = ExecutionStatus::Skipped;
            reason = Some(format!("not started: the job is {job_status}"));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let ended = status != ExecutionStatus::Queued;
        let n = c.execute(
            "INSERT INTO executions
                (id, job_id, status, trigger, slot, scheduled_for, queued_at, retry_count,
                 error, completed_at, first_attempt_id, workflow_run_id, upstream_ids)
             VALUES (?1, ?2, ?3, 'dependency', NULL, ?4, ?4, 0, ?5, ?6, ?1, ?7, ?8)
             ON CONFLICT DO NOTHING",
            params![
                id,
                v.downstream_job,
                status.as_str(),
                now,
                reason,
                ended.then_some(now),
                s.pass_id,
                to_json(&upstream_ids),
            ],
        )?;
        if n == 1 {
            out.push(Settled {
                execution_id: id,
                job_id: v.downstream_job.clone(),
                status,
                reason,
            });
        }
    }
    Ok(out)
}

impl Store {
    /// Settles the downstream of a run that ended without going through
    /// [`Store::finish_with_retry`] (skipped, cancelled before it started, interrupted at a
    /// restart), or of a downstream run a settle recorded as ended.
    pub async fn settle(&self, s: Settle) -> Result<Vec<Settled>, StoreError> {
        self.write(move |c| super::atomic(c, |c| settle_conn(c, &s)))
            .await
    }

    /// Every job with a `depends_on`, each upstream resolved to a job id.
    pub async fn job_dependencies(&self) -> Result<Vec<JobDependencies>, StoreError> {
        self.read(|c| {
            let rows = c.query_map(
                "SELECT id, name, depends_on FROM jobs WHERE depends_on IS NOT NULL ORDER BY rowid",
                (),
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, name, deps) in rows {
                let depends_on: DependsOn = super::from_json(&deps, "jobs.depends_on")?;
                let resolved = depends_on
                    .edges
                    .iter()
                    .map(|e| resolve_job_conn(c, &e.job))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(JobDependencies {
                    id,
                    name,
                    depends_on,
                    resolved,
                });
            }
            Ok(out)
        })
        .await
    }

    /// A job's id and name by id or name.
    pub async fn job_id_and_name(
        &self,
        id_or_name: String,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                "SELECT id, name FROM jobs WHERE id = ?1 OR name = ?1 LIMIT 1",
                [&id_or_name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    /// Passes, newest first.
    pub async fn list_workflow_runs(
        &self,
        job_id: Option<String>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<WorkflowRun>, StoreError> {
        self.read(move |c| {
            let rows = c.query_map(
                "SELECT w.id, w.root_job_id, j.name, w.root_execution_id, w.created_at, w.cancelled_at
                 FROM workflow_runs w LEFT JOIN jobs j ON j.id = w.root_job_id
                 WHERE CAST(?1 AS TEXT) IS NULL OR w.root_job_id = ?1
                    OR EXISTS (SELECT 1 FROM executions e WHERE e.workflow_run_id = w.id AND e.job_id = ?1)
                 ORDER BY w.created_at DESC, w.id DESC LIMIT ?2 OFFSET ?3",
                params![job_id, limit, offset],
                workflow_run_row,
            )?;
            rows.into_iter().map(|w| with_counts(c, w)).collect()
        })
        .await
    }

    /// How many passes [`Store::list_workflow_runs`] would list without paging.
    pub async fn count_workflow_runs(&self, job_id: Option<String>) -> Result<u64, StoreError> {
        self.read(move |c| {
            Ok(c.query_one(
                "SELECT COUNT(*) FROM workflow_runs w
                 WHERE CAST(?1 AS TEXT) IS NULL OR w.root_job_id = ?1
                    OR EXISTS (SELECT 1 FROM executions e WHERE e.workflow_run_id = w.id AND e.job_id = ?1)",
                [job_id],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    /// A pass with its runs and edge verdicts (`None`: no such pass).
    pub async fn workflow_run(&self, id: String) -> Result<Option<PassRecord>, StoreError> {
        self.read(move |c| {
            let run = c.query_opt(
                "SELECT w.id, w.root_job_id, j.name, w.root_execution_id, w.created_at, w.cancelled_at
                 FROM workflow_runs w LEFT JOIN jobs j ON j.id = w.root_job_id WHERE w.id = ?1",
                [&id],
                workflow_run_row,
            )?;
            let Some(run) = run else {
                return Ok(None);
            };
            let run = with_counts(c, run)?;
            let sql = format!(
                "SELECT {EXEC_COLUMNS} FROM executions WHERE workflow_run_id = ?1
                 ORDER BY queued_at, rowid"
            );
            let executions = c.query_map(&sql, [&id], exec_from_row)?;
            let edges = c.query_map(
                "SELECT upstream_job, downstream_job, upstream_execution, satisfied, reason
                 FROM workflow_edges WHERE pass_id = ?1 ORDER BY created_at, downstream_job",
                [&id],
                |r| {
                    Ok(PassEdge {
                        upstream_job: r.get(0)?,
                        downstream_job: r.get(1)?,
                        upstream_execution: r.get(2)?,
                        satisfied: r.get(3)?,
                        reason: r.get(4)?,
                    })
                },
            )?;
            Ok(Some(PassRecord { run, executions, edges }))
        })
        .await
    }

    /// The job a pass began with.
    pub async fn workflow_root(&self, pass_id: String) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT root_job_id FROM workflow_runs WHERE id = ?1",
                [&pass_id],
                |r| r.get::<_, Option<String>>(0),
            )?
            .flatten())
        })
        .await
    }

    /// The ended runs of a pass (the latest attempt of each), with their job's name — what a
    /// downstream prompt may use.
    pub async fn pass_runs(
        &self,
        pass_id: String,
    ) -> Result<Vec<(String, JobExecution)>, StoreError> {
        self.read(move |c| {
            let cols = EXEC_COLUMNS
                .split(", ")
                .map(|s| format!("e.{}", s.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {cols}, j.name FROM executions e JOIN jobs j ON j.id = e.job_id
                 WHERE e.workflow_run_id = ?1
                   AND e.status NOT IN ('queued', 'deferred', 'running')
                   AND NOT EXISTS (SELECT 1 FROM executions x
                                   WHERE x.first_attempt_id = COALESCE(e.first_attempt_id, e.id)
                                     AND x.retry_count > e.retry_count)
                 ORDER BY e.completed_at NULLS FIRST, e.rowid"
            );
            c.query_map(&sql, [&pass_id], |r| {
                let e = exec_from_row(r)?;
                Ok((r.get::<_, String>(24)?, e))
            })
        })
        .await
    }

    /// Marks a pass cancelled: nothing more of it starts (runs already queued or going are
    /// the engine's to cancel). Returns `false` when there is no such pass.
    pub async fn cancel_workflow_run(
        &self,
        id: String,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE workflow_runs SET cancelled_at = COALESCE(cancelled_at, ?2) WHERE id = ?1",
                params![id, to_ms(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Runs of passes that ended since `since` (last attempt of their run), for the settle a
    /// crash may have cut short: `(execution, pass id)`. The engine settles those whose
    /// downstream verdicts are missing.
    pub async fn ended_pass_runs(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(JobExecution, Vec<String>)>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {EXEC_COLUMNS} FROM executions e
                 WHERE e.workflow_run_id IS NOT NULL
                   AND e.status NOT IN ('queued', 'deferred', 'running')
                   AND COALESCE(e.completed_at, e.queued_at) >= ?1
                   AND NOT EXISTS (SELECT 1 FROM executions x
                                   WHERE x.first_attempt_id = COALESCE(e.first_attempt_id, e.id)
                                     AND x.retry_count > e.retry_count)"
            );
            let found = c.query_map(&sql, [to_ms(since)], exec_from_row)?;
            let mut out = Vec::with_capacity(found.len());
            for e in found {
                let pass = e.workflow_run_id.clone().unwrap_or_default();
                let done = c.query_map(
                    "SELECT downstream_job FROM workflow_edges WHERE pass_id = ?1 AND upstream_job = ?2",
                    params![pass, e.job_id],
                    |r| r.get::<_, String>(0),
                )?;
                out.push((e, done));
            }
            Ok(out)
        })
        .await
    }
}

fn resolve_job_conn(c: &Db, id_or_name: &str) -> Result<Option<String>, StoreError> {
    c.query_opt(
        "SELECT id FROM jobs WHERE id = ?1 OR name = ?1 LIMIT 1",
        [id_or_name],
        |r| r.get(0),
    )
}

fn workflow_run_row(r: &Row<'_>) -> Result<WorkflowRun, StoreError> {
    Ok(WorkflowRun {
        id: r.get(0)?,
        root_job_id: r.get(1)?,
        root_job_name: r.get(2)?,
        root_execution_id: r.get(3)?,
        created_at: from_ms(r.get(4)?),
        cancelled_at: opt_from_ms(r.get(5)?),
        runs: Default::default(),
    })
}

fn with_counts(c: &Db, mut w: WorkflowRun) -> Result<WorkflowRun, StoreError> {
    let rows = c.query_map(
        "SELECT e.status, COUNT(*) FROM executions e
         WHERE e.workflow_run_id = ?1
           AND NOT EXISTS (SELECT 1 FROM executions x
                           WHERE x.first_attempt_id = COALESCE(e.first_attempt_id, e.id)
                             AND x.retry_count > e.retry_count)
         GROUP BY e.status",
        [&w.id],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?;
    w.runs = rows.into_iter().map(|(s, n)| (s, n as u64)).collect();
    Ok(w)
}
