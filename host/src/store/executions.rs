//! Executions (runs), their logs, recovery and retention.

use chrono::{DateTime, Utc};

use super::cluster::{Orphans, ORPHANED};
use super::db::{params, Backend, Db, Row};
use super::jobs::{get_job_by_id_conn, get_prompt_conn};
use super::{atomic, from_ms, opt_from_ms, opt_json, to_json, to_ms, Store, StoreError};
use crate::model::{
    AttemptRef, ExecutionStatus, Job, JobExecution, LogLine, LogStream, Outcome, ResourceUsage,
    Trigger,
};

/// An execution about to be recorded.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub id: String,
    pub job_id: String,
    /// `Queued`, or `Skipped` for slots a policy decided not to run.
    pub status: ExecutionStatus,
    pub trigger: Trigger,
    /// The schedule slot for scheduled/catch-up runs: unique per job and attempt.
    pub slot: Option<DateTime<Utc>>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub queued_at: DateTime<Utc>,
    pub retry_count: u32,
    pub prompt: Option<String>,
    /// Why it was skipped, for skipped ones.
    pub error: Option<String>,
}

/// What claiming a pending execution found.
#[derive(Debug)]
pub enum Claim {
    /// Now `running`: the job as currently defined and the prompt text to send.
    Started {
        job: Box<Job>,
        prompt: String,
        trigger: Trigger,
        /// The next free log line number: a run put back (deferred by a usage limit) keeps the
        /// lines of its earlier try and goes on after them.
        log_seq: u64,
        /// Where the run stands in a workflow.
        place: RunPlace,
    },
    /// No longer pending (cancelled, finished, or its job deleted).
    NotPending,
    /// Its stored prompt is gone: the run fails with this message.
    PromptMissing { message: String },
}

/// A claimed run's attempt chain and workflow pass.
#[derive(Debug, Clone, Default)]
pub struct RunPlace {
    /// The run's first attempt (its own id for a first attempt).
    pub first_attempt_id: String,
    /// The pass it belongs to, if it was started by upstreams (or one has begun from it).
    pub workflow_run_id: Option<String>,
    /// The upstream executions that started it (`trigger: dependency`).
    pub upstream_ids: Vec<String>,
}

/// How a run ended, to be recorded with the job's statistics.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub id: String,
    /// The prompt text sent.
    pub prompt: Option<String>,
    pub status: ExecutionStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub session_id: Option<String>,
    pub cost_usd: Option<f64>,
    pub usage: Option<serde_json::Value>,
    pub resource_usage: Option<ResourceUsage>,
    pub pid: Option<u32>,
    /// What became of the run's git worktree.
    pub worktree: Option<crate::model::WorktreeReport>,
}

/// The next attempt of a failed run (see [`Store::finish_with_retry`]).
#[derive(Debug, Clone)]
pub struct NewRetry {
    pub id: String,
    /// When it is due.
    pub at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// Which executions to list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub job_id: Option<String>,
    pub status: Option<ExecutionStatus>,
    pub limit: Option<u32>,
    pub offset: u32,
}

pub(super) const EXEC_COLUMNS: &str =
    "id, job_id, status, trigger, scheduled_for, queued_at, started_at, \
    completed_at, execution_time_ms, prompt, output, error, retry_count, outcome, exit_code, \
    session_id, cost_usd, usage, resource_usage, pid, first_attempt_id, workflow_run_id, \
    upstream_ids, worktree";

pub(super) fn exec_from_row(r: &Row<'_>) -> Result<JobExecution, StoreError> {
    let status: String = r.get(2)?;
    let trigger: String = r.get(3)?;
    Ok(JobExecution {
        id: r.get(0)?,
        job_id: r.get(1)?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("executions.status `{status}`")))?,
        trigger: Trigger::parse(&trigger)
            .ok_or_else(|| StoreError::Corrupt(format!("executions.trigger `{trigger}`")))?,
        scheduled_for: opt_from_ms(r.get(4)?),
        queued_at: from_ms(r.get(5)?),
        started_at: opt_from_ms(r.get(6)?),
        completed_at: opt_from_ms(r.get(7)?),
        execution_time_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        prompt: r.get(9)?,
        output: r.get(10)?,
        error: r.get(11)?,
        retry_count: r.get(12)?,
        outcome: opt_json(r, 13, "executions.outcome")?,
        exit_code: r.get(14)?,
        session_id: r.get(15)?,
        cost_usd: r.get(16)?,
        usage: opt_json(r, 17, "executions.usage")?,
        resource_usage: opt_json(r, 18, "executions.resource_usage")?,
        pid: r.get(19)?,
        first_attempt_id: r.get(20)?,
        workflow_run_id: r.get(21)?,
        upstream_ids: opt_json(r, 22, "executions.upstream_ids")?.unwrap_or_default(),
        worktree: opt_json(r, 23, "executions.worktree")?,
    })
}

fn insert_execution_conn(c: &Db, e: &NewExecution) -> Result<bool, StoreError> {
    insert_with(
        c,
        "INSERT INTO executions
            (id, job_id, status, trigger, slot, scheduled_for, queued_at, retry_count, prompt, error,
             completed_at, first_attempt_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?1)
         ON CONFLICT DO NOTHING",
        e,
    )
}

/// Runs an insert of `e` whose parameters are, in order: id, job, status, trigger, slot,
/// scheduled_for, queued_at, attempt, prompt, error, completed_at (a skipped run ends as it is
/// recorded). Returns whether a row was inserted.
fn insert_with(c: &Db, sql: &str, e: &NewExecution) -> Result<bool, StoreError> {
    let completed = (e.status == ExecutionStatus::Skipped).then(|| to_ms(e.queued_at));
    let n = c.execute(
        sql,
        params![
            e.id,
            e.job_id,
            e.status.as_str(),
            e.trigger.as_str(),
            e.slot.map(to_ms),
            e.scheduled_for.map(to_ms),
            to_ms(e.queued_at),
            e.retry_count,
            e.prompt,
            e.error,
            completed,
        ],
    )?;
    Ok(n == 1)
}

impl Store {
    /// Records schedule fires in one transaction. Each fire is keyed by (job, slot, attempt): a
    /// slot already recorded (by an earlier process, before a crash) is not recorded again, and its
    /// entry in the result is `false`. Nothing is recorded for a job that is no longer active
    /// (paused or deleted since the timer decided the slot): `false` too. Also advances each
    /// job's `last_slot`.
    pub async fn record_fires(&self, fires: Vec<NewExecution>) -> Result<Vec<bool>, StoreError> {
        self.write(move |c| {
            let mut out = Vec::with_capacity(fires.len());
            // PostgreSQL types the SELECT's parameters by the columns they are inserted into.
            let ins = "INSERT INTO executions
                    (id, job_id, status, trigger, slot, scheduled_for, queued_at, retry_count,
                     prompt, error, completed_at, first_attempt_id)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?1
                 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?2 AND status = 'active')
                 ON CONFLICT DO NOTHING";
            let upd = "UPDATE jobs SET last_slot = CASE WHEN COALESCE(last_slot, 0) > ?2
                    THEN COALESCE(last_slot, 0) ELSE ?2 END
                 WHERE id = ?1";
            for e in &fires {
                let inserted = insert_with(c, ins, e)?;
                if inserted {
                    if let Some(slot) = e.slot {
                        c.execute(upd, params![e.job_id, to_ms(slot)])?;
                    }
                }
                out.push(inserted);
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a scheduled run recorded ahead of its slot that must not run after all (its job
    /// was paused or changed meanwhile), without waiting. Only while it is still queued.
    pub fn withdraw_execution_detached(&self, id: String) {
        self.write_detached("withdrawn run", move |c| {
            c.execute(
                "DELETE FROM executions WHERE id = ?1 AND status = 'queued'",
                [&id],
            )?;
            Ok(())
        });
    }

    /// Withdraws scheduled runs recorded ahead of their slot that were never released (cnp
    /// stopped first): `(execution id, job id, slot)`. Each row still queued is deleted and its
    /// job's `last_slot` goes back to before the earliest withdrawn slot, so those slots are
    /// decided again on the next start (misfire policy included), as if never recorded.
    pub async fn withdraw_unreleased(
        &self,
        runs: Vec<(String, String, DateTime<Utc>)>,
    ) -> Result<usize, StoreError> {
        if runs.is_empty() {
            return Ok(0);
        }
        self.write(move |c| withdraw_conn(c, &runs)).await
    }

    /// At start-up: withdraws (as [`Store::withdraw_unreleased`]) the queued runs that were
    /// recorded ahead of their slot and whose slot is before `late`: their slots came due while
    /// cnp was down, so the misfire policy decides them like any other missed slot.
    pub async fn withdraw_missed_ahead(&self, late: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write(move |c| {
            let rows = c.query_map(
                "SELECT id, job_id, slot FROM executions
                 WHERE status = 'queued' AND owner IS NULL AND slot IS NOT NULL AND queued_at < slot
                   AND slot < ?1",
                [to_ms(late)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        from_ms(r.get(2)?),
                    ))
                },
            )?;
            withdraw_conn(c, &rows)
        })
        .await
    }

    /// Stores jobs' next fire times (shown in listings) without waiting.
    pub fn set_next_run_times_detached(&self, next: Vec<(String, Option<DateTime<Utc>>)>) {
        if next.is_empty() {
            return;
        }
        self.write_detached("next run times", move |c| {
            for (id, t) in &next {
                c.execute(
                    "UPDATE jobs SET next_run_time = ?2 WHERE id = ?1",
                    params![id, t.map(to_ms)],
                )?;
            }
            Ok(())
        });
    }

    /// Records one execution (manual or delayed run). Fails if the job does not exist.
    pub async fn insert_execution(&self, e: NewExecution) -> Result<bool, StoreError> {
        self.write(move |c| insert_execution_conn(c, &e)).await
    }

    /// Claims a pending execution for running, before its process is spawned, and reads its
    /// job's current definition and prompt text — one write. A crash after this point leaves the
    /// run `running`, which the next start marks `interrupted` instead of running the slot a
    /// second time.
    pub async fn claim_execution(
        &self,
        id: String,
        at: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        // In a cluster, only the instance that claimed the run starts it: one whose lease was
        // taken away (it was presumed dead) finds it no longer pending.
        let owner = self.owner().to_owned();
        self.write(move |c| {
            atomic(c, |c| {
                type Found = (String, String, RunPlace, Option<String>, Option<String>);
                let found: Option<Found> = c.query_opt(
                    "SELECT e.job_id, e.trigger, COALESCE(e.first_attempt_id, e.id),
                            e.workflow_run_id, e.upstream_ids,
                            CASE WHEN f.trigger = 'webhook' THEN e.prompt END
                         FROM executions e
                         LEFT JOIN executions f ON f.id = COALESCE(e.first_attempt_id, e.id)
                         WHERE e.id = ?1 AND e.status IN ('queued', 'deferred')
                           AND (e.owner IS NULL OR e.owner = ?2)",
                    params![id, owner],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            RunPlace {
                                first_attempt_id: r.get(2)?,
                                workflow_run_id: r.get(3)?,
                                upstream_ids: Vec::new(),
                            },
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )?;
                let Some((job_id, trigger, mut place, upstream_ids, given)) = found else {
                    return Ok(Claim::NotPending);
                };
                if let Some(u) = upstream_ids {
                    place.upstream_ids = super::from_json(&u, "executions.upstream_ids")?;
                }
                let trigger = Trigger::parse(&trigger).unwrap_or(Trigger::Manual);
                let Some(job) = get_job_by_id_conn(c, &job_id)? else {
                    return Ok(Claim::NotPending);
                };
                // A webhook's run (and its retries) runs the prompt its payload rendered,
                // recorded with it; any other run the job's current one.
                let prompt = match (given, &job.prompt, &job.prompt_id) {
                    (Some(p), _, _) => p,
                    (None, Some(p), _) => p.clone(),
                    (None, None, Some(pid)) => match get_prompt_conn(c, pid)? {
                        Some(p) => p.content,
                        None => {
                            return Ok(Claim::PromptMissing {
                                message: format!("prompt `{pid}` not found (it was deleted?)"),
                            })
                        }
                    },
                    (None, None, None) => {
                        return Ok(Claim::PromptMissing { message: "the job has no prompt".into() })
                    }
                };
                c.execute(
                    "UPDATE executions SET status = 'running', started_at = ?2, prompt = ?3 WHERE id = ?1",
                    params![id, to_ms(at), prompt],
                )?;
                let log_seq: i64 = c.query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM execution_logs WHERE execution_id = ?1",
                    [&id],
                    |r| r.get(0),
                )?;
                Ok(Claim::Started {
                    job: Box::new(job),
                    prompt,
                    trigger,
                    log_seq: log_seq as u64,
                    place,
                })
            })
        })
        .await
    }

    /// Notes the run's process id and when it was spawned, without waiting.
    pub fn set_pid_detached(&self, id: String, pid: u32, at: DateTime<Utc>) {
        self.write_detached("process id", move |c| {
            c.execute(
                "UPDATE executions SET pid = ?2, started_at = ?3 WHERE id = ?1",
                params![id, pid, to_ms(at)],
            )?;
            Ok(())
        });
    }

    /// Sets a pending execution's status (e.g. queued → skipped with a reason). Returns whether it
    /// was still pending.
    pub async fn set_pending_status(
        &self,
        id: String,
        status: ExecutionStatus,
        error: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let completed = status.is_terminal().then(|| to_ms(now));
            let n = c.execute(
                "UPDATE executions SET status = ?2, error = COALESCE(?3, error), completed_at = ?4
                 WHERE id = ?1 AND status IN ('queued', 'deferred')",
                params![id, status.as_str(), error, completed],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Records a finished run and folds it into its job's statistics, atomically. A run already
    /// finished (e.g. marked interrupted) is not counted twice: returns `false` then.
    pub async fn finish_execution(&self, run: FinishedRun) -> Result<bool, StoreError> {
        self.write(move |c| finish_conn(c, &run)).await
    }

    /// [`Store::finish_execution`] and, in the same transaction, what follows the end: the
    /// next attempt when `retry` is given (see [`Store::schedule_retry`]), else the runs the end
    /// starts downstream (`settle`, see [`super::workflows`]). A crash cannot leave a failed
    /// attempt whose retry was planned but never recorded, nor an upstream's end without its
    /// downstream runs. Returns (finished, retry recorded, downstream runs recorded).
    pub async fn finish_with_retry(
        &self,
        run: FinishedRun,
        retry: Option<NewRetry>,
        settle: Option<super::Settle>,
    ) -> Result<(bool, bool, Vec<super::Settled>), StoreError> {
        self.write(move |c| {
            atomic(c, |c| {
                if !finish_conn(c, &run)? {
                    return Ok((false, false, Vec::new()));
                }
                let recorded = match &retry {
                    Some(r) => super::hooks::insert_retry_conn(c, &run.id, r)?,
                    None => false,
                };
                let settled = match &settle {
                    Some(s) if !recorded => super::workflows::settle_conn(c, s)?,
                    _ => Vec::new(),
                };
                Ok((true, recorded, settled))
            })
        })
        .await
    }

    pub async fn get_execution(&self, id: String) -> Result<Option<JobExecution>, StoreError> {
        self.read(move |c| {
            let sql = format!("SELECT {EXEC_COLUMNS} FROM executions WHERE id = ?1");
            c.query_opt(&sql, [&id], exec_from_row)
        })
        .await
    }

    /// Executions whose worktree was kept on purpose (`keep`): start-up leaves those alone.
    pub async fn kept_worktrees(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read(|c| {
            let sql = match c.backend() {
                Backend::Sqlite => {
                    "SELECT id FROM executions
                     WHERE worktree IS NOT NULL AND json_extract(worktree, '$.kept') = 1"
                }
                // `kept` is a JSON boolean (`json_extract` gives 1 for `true`).
                Backend::Postgres => {
                    "SELECT id FROM executions
                     WHERE worktree IS NOT NULL AND (worktree::jsonb ->> 'kept') IN ('true', '1')"
                }
            };
            let ids = c.query_map(sql, (), |r| r.get::<_, String>(0))?;
            Ok(ids.into_iter().collect())
        })
        .await
    }

    /// The session of a job's latest successful run that reported one: (execution id, session
    /// id, when it ended).
    pub async fn last_session(
        &self,
        job_id: String,
    ) -> Result<Option<(String, String, DateTime<Utc>)>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                "SELECT id, session_id, completed_at FROM executions
                 WHERE job_id = ?1 AND status = 'completed' AND session_id IS NOT NULL
                   AND completed_at IS NOT NULL
                 ORDER BY completed_at DESC, rowid DESC LIMIT 1",
                [&job_id],
                |r| Ok((r.get(0)?, r.get(1)?, from_ms(r.get(2)?))),
            )
        })
        .await
    }

    /// The attempts of the run `id` belongs to (its first attempt and every retry), in order.
    pub async fn attempts_of(&self, id: String) -> Result<Vec<AttemptRef>, StoreError> {
        self.read(move |c| {
            c.query_map(
                "SELECT id, retry_count, status, scheduled_for FROM executions
                 WHERE first_attempt_id = (SELECT COALESCE(first_attempt_id, id)
                                           FROM executions WHERE id = ?1)
                    OR id = ?1
                 ORDER BY retry_count, rowid",
                [&id],
                |r| {
                    let status: String = r.get(2)?;
                    Ok(AttemptRef {
                        id: r.get(0)?,
                        attempt: r.get::<_, u32>(1)? + 1,
                        status: ExecutionStatus::parse(&status).ok_or_else(|| {
                            StoreError::Corrupt(format!("execution status {status:?}"))
                        })?,
                        scheduled_for: opt_from_ms(r.get(3)?),
                    })
                },
            )
        })
        .await
    }

    /// Newest first.
    pub async fn list_executions(
        &self,
        f: ExecutionFilter,
    ) -> Result<Vec<JobExecution>, StoreError> {
        self.read(move |c| {
            let mut sql = format!("SELECT {EXEC_COLUMNS} FROM executions WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            if let Some(j) = &f.job_id {
                args.push(j.clone());
                sql.push_str(&format!(" AND job_id = ?{}", args.len()));
            }
            if let Some(s) = f.status {
                args.push(s.as_str().to_owned());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            // No limit: the largest one (PostgreSQL has no `LIMIT -1`, SQLite no `LIMIT ALL`).
            sql.push_str(&format!(
                " ORDER BY queued_at DESC, rowid DESC LIMIT {} OFFSET {}",
                f.limit.map(i64::from).unwrap_or(i64::MAX),
                f.offset
            ));
            c.query_map(&sql, args, exec_from_row)
        })
        .await
    }

    /// Executions still waiting to run (queued or deferred), oldest first — after a restart they
    /// are dispatched again, so nothing recorded is lost.
    pub async fn pending_executions(&self) -> Result<Vec<JobExecution>, StoreError> {
        self.read(|c| {
            let sql = format!(
                "SELECT {EXEC_COLUMNS} FROM executions WHERE status IN ('queued', 'deferred')
                 ORDER BY queued_at, rowid"
            );
            c.query_map(&sql, (), exec_from_row)
        })
        .await
    }

    /// Runs a previous process left `running` (cnp stopped while they were going).
    pub async fn running_executions(&self) -> Result<Vec<JobExecution>, StoreError> {
        self.orphaned_runs(Orphans::All).await
    }

    /// Runs left `running` by a process that is gone: all of them, or in a cluster those whose
    /// owner's lease ran out.
    pub async fn orphaned_runs(&self, scope: Orphans) -> Result<Vec<JobExecution>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {EXEC_COLUMNS} FROM executions WHERE status = 'running'
                   AND {ORPHANED} ORDER BY rowid"
            );
            c.query_map(&sql, [scope.before()], exec_from_row)
        })
        .await
    }

    /// Marks runs a previous process left `running` as `interrupted` (counted as failures) and,
    /// for those `retries` names, records their next attempt — in one transaction, so a second
    /// restart right after the first finds nothing `running` left and records nothing twice.
    /// Returns the runs marked, each with its recorded retry's id, so their leftover processes
    /// can be dealt with.
    pub async fn recover_interrupted(
        &self,
        now: DateTime<Utc>,
        retries: std::collections::HashMap<String, NewRetry>,
    ) -> Result<Vec<(JobExecution, Option<String>)>, StoreError> {
        self.recover_orphans(now, retries, Orphans::All).await
    }

    /// [`Store::recover_interrupted`] for the runs `scope` names (in a cluster: those whose
    /// owner's lease ran out, checked again in the same transaction).
    pub async fn recover_orphans(
        &self,
        now: DateTime<Utc>,
        mut retries: std::collections::HashMap<String, NewRetry>,
        scope: Orphans,
    ) -> Result<Vec<(JobExecution, Option<String>)>, StoreError> {
        self.write(move |c| {
            atomic(c, |c| {
                let sql = format!(
                    "SELECT {EXEC_COLUMNS} FROM executions WHERE status = 'running' AND {ORPHANED}"
                );
                let found = c.query_map(&sql, [scope.before()], exec_from_row)?;
                let mut out = Vec::with_capacity(found.len());
                for e in found {
                    let retry = retries.remove(&e.id);
                    let mut error = String::from(match scope {
                        Orphans::All => {
                            "cnp stopped while this run was going (crash or kill); the run's \
                             result is unknown"
                        }
                        Orphans::LeaseExpired(_) => {
                            "the cnp instance running it stopped renewing its lease (crash, kill \
                             or lost contact with PostgreSQL); the run's result is unknown"
                        }
                    });
                    if let Some(r) = &retry {
                        error.push_str(&format!(
                            "; attempt {} recorded as execution {}",
                            e.retry_count + 2,
                            r.id
                        ));
                    }
                    finish_conn(
                        c,
                        &FinishedRun {
                            id: e.id.clone(),
                            prompt: None,
                            status: ExecutionStatus::Interrupted,
                            started_at: e.started_at,
                            completed_at: now,
                            output: None,
                            error: Some(error),
                            outcome: None,
                            exit_code: None,
                            session_id: None,
                            cost_usd: None,
                            usage: None,
                            resource_usage: None,
                            pid: e.pid,
                            worktree: None,
                        },
                    )?;
                    let recorded = match &retry {
                        Some(r) => super::hooks::insert_retry_conn(c, &e.id, r)?,
                        None => false,
                    };
                    out.push((e, retry.filter(|_| recorded).map(|r| r.id)));
                }
                Ok(out)
            })
        })
        .await
    }

    /// Stores a batch of log lines without waiting.
    pub fn append_logs_detached(&self, lines: Vec<LogLine>) {
        if lines.is_empty() {
            return;
        }
        self.write_detached("log lines", move |c| {
            for l in &lines {
                c.execute(
                    "INSERT INTO execution_logs (execution_id, seq, stream, ts, line)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT DO NOTHING",
                    params![
                        l.execution_id,
                        l.seq as i64,
                        l.stream.as_str(),
                        to_ms(l.timestamp),
                        l.line
                    ],
                )?;
            }
            Ok(())
        });
    }

    /// Log lines of an execution with `seq > after`, in order.
    pub async fn get_logs(
        &self,
        execution_id: String,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.read(move |c| {
            c.query_map(
                "SELECT seq, stream, ts, line FROM execution_logs
                 WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                params![execution_id, after.map(|a| a as i64).unwrap_or(-1), limit],
                |r| {
                    let stream: String = r.get(1)?;
                    Ok(LogLine {
                        execution_id: execution_id.clone(),
                        seq: r.get::<_, i64>(0)? as u64,
                        stream: LogStream::parse(&stream).unwrap_or(LogStream::System),
                        timestamp: from_ms(r.get(2)?),
                        line: r.get(3)?,
                    })
                },
            )
        })
        .await
    }

    /// Retention: deletes finished executions older than `older_than` (when given) and all but
    /// the newest `keep_per_job` finished executions of each job (when non-zero). Returns how many
    /// were deleted.
    pub async fn cleanup_executions(
        &self,
        older_than: Option<DateTime<Utc>>,
        keep_per_job: u32,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            let mut n = 0;
            if let Some(cutoff) = older_than {
                n += c.execute(
                    "DELETE FROM executions WHERE status NOT IN ('queued', 'deferred', 'running')
                        AND COALESCE(completed_at, queued_at) < ?1",
                    [to_ms(cutoff)],
                )?;
            }
            if keep_per_job > 0 {
                n += c.execute(
                    "DELETE FROM executions WHERE id IN (
                        SELECT id FROM (
                            SELECT id, ROW_NUMBER() OVER (
                                PARTITION BY job_id ORDER BY queued_at DESC, rowid DESC) AS rn
                            FROM executions
                            WHERE status NOT IN ('queued', 'deferred', 'running')) AS ranked
                        WHERE rn > ?1)",
                    [keep_per_job],
                )?;
            }
            Ok(n)
        })
        .await
    }

    /// Counts of executions per status (for status displays).
    pub async fn execution_counts(&self) -> Result<Vec<(ExecutionStatus, u64)>, StoreError> {
        self.read(|c| {
            let rows = c.query_map(
                "SELECT status, COUNT(*) FROM executions GROUP BY status",
                (),
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| ExecutionStatus::parse(&s).map(|s| (s, n as u64)))
                .collect())
        })
        .await
    }
}

fn withdraw_conn(c: &Db, runs: &[(String, String, DateTime<Utc>)]) -> Result<usize, StoreError> {
    let mut earliest: std::collections::HashMap<&str, i64> = Default::default();
    let mut n = 0;
    for (id, job_id, slot) in runs {
        if c.execute(
            // (Not one a cluster member has claimed: it runs.)
            "DELETE FROM executions WHERE id = ?1 AND status = 'queued' AND owner IS NULL",
            [id],
        )? == 1
        {
            n += 1;
            let e = earliest.entry(job_id).or_insert(i64::MAX);
            *e = (*e).min(to_ms(*slot));
        }
    }
    // Back to the latest slot still recorded before the withdrawn ones (or just before them).
    for (job_id, slot) in earliest {
        c.execute(
            "UPDATE jobs SET last_slot = COALESCE(
                (SELECT MAX(slot) FROM executions WHERE job_id = ?1 AND slot < ?2), ?2 - 1)
             WHERE id = ?1 AND (last_slot IS NULL OR last_slot >= ?2)",
            params![job_id, slot],
        )?;
    }
    Ok(n)
}

fn finish_conn(c: &Db, run: &FinishedRun) -> Result<bool, StoreError> {
    let elapsed = run
        .started_at
        .map(|s| (run.completed_at - s).num_milliseconds().max(0));
    let n = c.execute(
        "UPDATE executions SET status = ?2,
                started_at = CASE WHEN ?2 = 'skipped' THEN NULL ELSE COALESCE(?3, started_at) END,
                completed_at = ?4, execution_time_ms = ?5, output = ?6, error = ?7, outcome = ?8,
                exit_code = ?9, session_id = ?10, cost_usd = ?11, usage = ?12,
                resource_usage = ?13, pid = COALESCE(?14, pid), prompt = COALESCE(?15, prompt),
                worktree = COALESCE(?16, worktree)
             WHERE id = ?1 AND status IN ('queued', 'deferred', 'running')",
        params![
            run.id,
            run.status.as_str(),
            run.started_at.map(to_ms),
            to_ms(run.completed_at),
            elapsed,
            run.output,
            run.error,
            run.outcome.as_ref().map(to_json),
            run.exit_code,
            run.session_id,
            run.cost_usd,
            run.usage.as_ref().map(to_json),
            run.resource_usage.as_ref().map(to_json),
            run.pid,
            run.prompt,
            run.worktree.as_ref().map(to_json),
        ],
    )?;
    if n == 0 {
        return Ok(false);
    }
    let (counted, success, failure) = match run.status {
        ExecutionStatus::Completed => (1, 1, 0),
        ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Interrupted => {
            (1, 0, 1)
        }
        ExecutionStatus::Cancelled => (1, 0, 0),
        _ => (0, 0, 0),
    };
    if counted == 1 {
        // The job's running cost totals (see store/costs.rs) take the runs that ran the CLI:
        // those with a `started_at` (given now, or set when the run was claimed).
        let ran = run.started_at.is_some()
            || c.query_one(
                "SELECT started_at IS NOT NULL FROM executions WHERE id = ?1",
                [&run.id],
                |r| r.get::<_, bool>(0),
            )?;
        let (cost, uncosted) = match (ran, run.cost_usd) {
            (false, _) => (0.0, 0),
            (true, Some(cost)) => (cost, 0),
            (true, None) => (0.0, 1),
        };
        c.execute(
            "UPDATE jobs SET execution_count = execution_count + 1,
                success_count = success_count + ?2, failure_count = failure_count + ?3,
                total_time_ms = total_time_ms + ?4,
                last_run_time = COALESCE(?5, last_run_time),
                cost_usd_total = cost_usd_total + ?6, uncosted_runs = uncosted_runs + ?7
             WHERE id = (SELECT job_id FROM executions WHERE id = ?1)",
            params![
                run.id,
                success,
                failure,
                elapsed.unwrap_or(0),
                run.started_at.map(to_ms),
                cost,
                uncosted,
            ],
        )?;
    }
    Ok(true)
}
