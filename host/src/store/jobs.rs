//! Jobs and prompts.

use chrono::{DateTime, Utc};

use super::db::{params, Backend, Db, Row};
use super::{atomic, from_json, from_ms, opt_from_ms, opt_json, to_json, to_ms, Store, StoreError};
use crate::model::{ExecutionOptions, Job, JobStatus, Prompt, Schedule};

pub(super) const JOB_COLUMNS: &str = "id, name, prompt_id, prompt, schedule, status, priority, \
    execution_options, retry_config, notification_config, resource_limits, tags, source, \
    execution_count, success_count, failure_count, total_time_ms, next_run_time, last_run_time, \
    created_at, updated_at, template_use, depends_on, budget";

/// What the engine needs of a job to schedule it (read at start-up, one row at a time).
#[derive(Debug, Clone)]
pub struct JobScheduling {
    pub id: String,
    pub schedule: Schedule,
    pub status: JobStatus,
    pub priority: u8,
    pub execution_options: ExecutionOptions,
    pub created_at: DateTime<Utc>,
    /// The latest slot already decided (see `jobs.last_slot`).
    pub last_slot: Option<DateTime<Utc>>,
    pub budget: Option<crate::model::Budget>,
}

const SCHEDULING_COLUMNS: &str =
    "id, schedule, status, priority, execution_options, created_at, last_slot, budget";

fn scheduling_from_row(r: &Row<'_>) -> Result<JobScheduling, StoreError> {
    let status: String = r.get(2)?;
    Ok(JobScheduling {
        id: r.get(0)?,
        schedule: from_json(&r.get::<_, String>(1)?, "jobs.schedule")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("jobs.status `{status}`")))?,
        priority: r.get(3)?,
        execution_options: from_json(&r.get::<_, String>(4)?, "jobs.execution_options")?,
        created_at: from_ms(r.get(5)?),
        last_slot: opt_from_ms(r.get(6)?),
        budget: opt_json(r, 7, "jobs.budget")?,
    })
}

/// Deletes the scheduled runs recorded ahead of their slot (queued, slot after `now`): they must
/// not run once the job is paused, disabled or rescheduled.
pub(crate) fn withdraw_ahead_conn(
    c: &Db,
    job_id: &str,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    c.execute(
        "DELETE FROM executions WHERE job_id = ?1 AND status = 'queued' AND slot > ?2",
        params![job_id, to_ms(now)],
    )
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub tag: Option<String>,
    pub source: Option<String>,
    /// Only jobs whose name contains this (case-insensitive for ASCII).
    pub name_contains: Option<String>,
    pub sort: JobSort,
    pub descending: bool,
    pub limit: Option<u32>,
    pub offset: u32,
}

/// The order of a job list (ties by name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JobSort {
    #[default]
    Name,
    NextRun,
    LastRun,
    Priority,
    SuccessRate,
}

impl JobSort {
    fn order_by(self, descending: bool) -> String {
        let dir = if descending { "DESC" } else { "ASC" };
        match self {
            JobSort::Name => format!("name {dir}"),
            // Jobs with no next/last run go last either way.
            JobSort::NextRun => format!("next_run_time IS NULL, next_run_time {dir}, name"),
            JobSort::LastRun => format!("last_run_time IS NULL, last_run_time {dir}, name"),
            JobSort::Priority => format!("priority {dir}, name"),
            JobSort::SuccessRate => format!(
                "(success_count + failure_count) = 0, \
                 (success_count * 1.0) / CASE WHEN success_count + failure_count > 1 \
                 THEN success_count + failure_count ELSE 1 END {dir}, name"
            ),
        }
    }
}

/// The `WHERE` conditions of a [`JobFilter`] (after `WHERE 1=1`), with their arguments.
/// `backend`: the tag filter reads the `tags` JSON array in the backend's dialect.
pub(super) fn job_filter_sql(backend: Backend, f: &JobFilter) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut args: Vec<String> = Vec::new();
    if let Some(s) = f.status {
        args.push(s.as_str().to_owned());
        sql.push_str(&format!(" AND status = ?{}", args.len()));
    }
    if let Some(t) = &f.tag {
        args.push(t.clone());
        let elements = match backend {
            Backend::Sqlite => "json_each(jobs.tags)",
            Backend::Postgres => "jsonb_array_elements_text(jobs.tags::jsonb) AS t(value)",
        };
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM {elements} WHERE value = ?{})",
            args.len()
        ));
    }
    if let Some(s) = &f.source {
        args.push(s.clone());
        sql.push_str(&format!(" AND source = ?{}", args.len()));
    }
    if let Some(n) = f.name_contains.as_deref().filter(|n| !n.is_empty()) {
        let escaped = n
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(format!("%{escaped}%"));
        sql.push_str(&format!(" AND name LIKE ?{} ESCAPE '\\'", args.len()));
    }
    (sql, args)
}

pub(super) fn job_from_row(r: &Row<'_>) -> Result<Job, StoreError> {
    let schedule: crate::model::Schedule = from_json(&r.get::<_, String>(4)?, "jobs.schedule")?;
    let status: String = r.get(5)?;
    let execution_count: i64 = r.get(13)?;
    let success_count: i64 = r.get(14)?;
    let failure_count: i64 = r.get(15)?;
    let total_time_ms: i64 = r.get(16)?;
    let finished = success_count + failure_count;
    let cron_expression = match &schedule {
        crate::model::Schedule::Cron { expression, .. } => Some(expression.clone()),
        _ => None,
    };
    Ok(Job {
        id: r.get(0)?,
        name: r.get(1)?,
        prompt_id: r.get(2)?,
        prompt: r.get(3)?,
        cron_expression,
        job_type: schedule.job_type(),
        schedule,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("jobs.status `{status}`")))?,
        priority: r.get(6)?,
        execution_options: from_json(&r.get::<_, String>(7)?, "jobs.execution_options")?,
        retry_config: opt_json(r, 8, "jobs.retry_config")?,
        notification_config: opt_json(r, 9, "jobs.notification_config")?,
        resource_limits: opt_json(r, 10, "jobs.resource_limits")?,
        tags: from_json(&r.get::<_, String>(11)?, "jobs.tags")?,
        source: r.get(12)?,
        execution_count: execution_count as u64,
        failure_count: failure_count as u64,
        avg_execution_time_ms: if execution_count > 0 {
            total_time_ms as f64 / execution_count as f64
        } else {
            0.0
        },
        success_rate: if finished > 0 {
            success_count as f64 / finished as f64
        } else {
            0.0
        },
        next_run_time: opt_from_ms(r.get(17)?),
        last_run_time: opt_from_ms(r.get(18)?),
        created_at: from_ms(r.get(19)?),
        updated_at: from_ms(r.get(20)?),
        template: opt_json(r, 21, "jobs.template_use")?,
        depends_on: opt_json(r, 22, "jobs.depends_on")?.unwrap_or_default(),
        budget: opt_json(r, 23, "jobs.budget")?,
    })
}

/// A job by its id alone: one primary-key lookup where [`get_job_conn`]'s `id = ? OR name = ?`
/// takes two (a run's claim, on the start path of every run, knows the id).
pub(crate) fn get_job_by_id_conn(conn: &Db, id: &str) -> Result<Option<Job>, StoreError> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"));
    conn.query_opt(sql, [id], job_from_row)
}

pub(crate) fn get_job_conn(conn: &Db, id_or_name: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 OR name = ?1 LIMIT 1");
    conn.query_opt(&sql, [id_or_name], job_from_row)
}

fn insert_job_conn(conn: &Db, job: &Job) -> Result<(), StoreError> {
    let r = conn.execute(
        "INSERT INTO jobs (id, name, prompt_id, prompt, schedule, status, priority,
            execution_options, retry_config, notification_config, resource_limits, tags, source,
            next_run_time, last_slot, created_at, updated_at, template, template_use, depends_on,
            budget)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21)",
        params![
            job.id,
            job.name,
            job.prompt_id,
            job.prompt,
            to_json(&job.schedule),
            job.status.as_str(),
            job.priority,
            to_json(&job.execution_options),
            job.retry_config.as_ref().map(to_json),
            job.notification_config.as_ref().map(to_json),
            job.resource_limits.as_ref().map(to_json),
            to_json(&job.tags),
            job.source,
            job.next_run_time.map(to_ms),
            to_ms(job.created_at),
            to_ms(job.created_at),
            to_ms(job.updated_at),
            job.template.as_ref().map(|t| t.name.clone()),
            job.template.as_ref().map(to_json),
            depends_on_json(job),
            job.budget.as_ref().map(to_json),
        ],
    );
    map_constraint(r, job)?;
    Ok(())
}

fn depends_on_json(job: &Job) -> Option<String> {
    (!job.depends_on.is_empty()).then(|| to_json(&job.depends_on))
}

/// Which constraint a failed write of a job broke, if it broke one.
enum Violation {
    Name,
    ForeignKey,
    Other(String),
}

fn violation(e: &StoreError) -> Option<Violation> {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, msg))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let msg = msg.clone().unwrap_or_default();
            Some(if msg.contains("jobs.name") {
                Violation::Name
            } else if msg.contains("FOREIGN KEY") {
                Violation::ForeignKey
            } else {
                Violation::Other(msg)
            })
        }
        // Class 23: integrity constraint violation.
        StoreError::Postgres(e) => {
            let db = e
                .as_db_error()
                .filter(|d| d.code().code().starts_with("23"))?;
            Some(if db.constraint() == Some("jobs_name_key") {
                Violation::Name
            } else if db.code() == &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION {
                Violation::ForeignKey
            } else if db.constraint() == Some("jobs_pkey") {
                Violation::Other("a job with this id already exists".into())
            } else {
                Violation::Other(db.message().to_owned())
            })
        }
        _ => None,
    }
}

fn map_constraint(r: Result<usize, StoreError>, job: &Job) -> Result<usize, StoreError> {
    let e = match r {
        Ok(n) => return Ok(n),
        Err(e) => e,
    };
    match violation(&e) {
        Some(Violation::Name) => Err(StoreError::Conflict(format!(
            "a job named `{}` already exists",
            job.name
        ))),
        Some(Violation::ForeignKey) => Err(StoreError::Conflict(format!(
            "prompt_id: no prompt `{}`",
            job.prompt_id.as_deref().unwrap_or("")
        ))),
        Some(Violation::Other(msg)) => Err(StoreError::Conflict(msg)),
        None => Err(e),
    }
}

impl Store {
    pub async fn insert_job(&self, job: Job) -> Result<Job, StoreError> {
        self.write(move |c| {
            insert_job_conn(c, &job)?;
            Ok(job)
        })
        .await
    }

    /// Replaces a job's definition (not its statistics or history). `reset_slot`: the schedule
    /// changed, so catch-up starts from now rather than from the old schedule's last slot.
    /// `withdraw_after`: runs recorded ahead of a slot after this instant are deleted (in the
    /// same transaction).
    pub async fn update_job(
        &self,
        job: Job,
        reset_slot: Option<DateTime<Utc>>,
        withdraw_after: Option<DateTime<Utc>>,
    ) -> Result<Job, StoreError> {
        self.write(move |c| {
            if let Some(t) = withdraw_after {
                withdraw_ahead_conn(c, &job.id, t)?;
            }
            let r = c.execute(
                "UPDATE jobs SET name = ?2, prompt_id = ?3, prompt = ?4, schedule = ?5, status = ?6,
                    priority = ?7, execution_options = ?8, retry_config = ?9,
                    notification_config = ?10, resource_limits = ?11, tags = ?12, source = ?13,
                    next_run_time = ?14, updated_at = ?15,
                    last_slot = COALESCE(?16, last_slot), template = ?17, template_use = ?18,
                    depends_on = ?19, budget = ?20
                 WHERE id = ?1",
                params![
                    job.id,
                    job.name,
                    job.prompt_id,
                    job.prompt,
                    to_json(&job.schedule),
                    job.status.as_str(),
                    job.priority,
                    to_json(&job.execution_options),
                    job.retry_config.as_ref().map(to_json),
                    job.notification_config.as_ref().map(to_json),
                    job.resource_limits.as_ref().map(to_json),
                    to_json(&job.tags),
                    job.source,
                    job.next_run_time.map(to_ms),
                    to_ms(job.updated_at),
                    reset_slot.map(to_ms),
                    job.template.as_ref().map(|t| t.name.clone()),
                    job.template.as_ref().map(to_json),
                    depends_on_json(&job),
                    job.budget.as_ref().map(to_json),
                ],
            );
            if map_constraint(r, &job)? == 0 {
                return Err(StoreError::NotFound {
                    what: "job",
                    id: job.id,
                });
            }
            get_job_conn(c, &job.id)?.ok_or(StoreError::NotFound {
                what: "job",
                id: job.id,
            })
        })
        .await
    }

    pub async fn set_job_status(
        &self,
        id: String,
        status: JobStatus,
        reset_slot: Option<DateTime<Utc>>,
        withdraw_after: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Job, StoreError> {
        self.write(move |c| {
            if let Some(t) = withdraw_after {
                withdraw_ahead_conn(c, &id, t)?;
            }
            let n = c.execute(
                "UPDATE jobs SET status = ?2, updated_at = ?3, last_slot = COALESCE(?4, last_slot)
                 WHERE id = ?1",
                params![id, status.as_str(), to_ms(now), reset_slot.map(to_ms)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "job", id });
            }
            get_job_conn(c, &id)?.ok_or(StoreError::NotFound { what: "job", id })
        })
        .await
    }

    /// Deletes a job with its executions and logs.
    pub async fn delete_job(&self, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            if c.execute("DELETE FROM jobs WHERE id = ?1", [&id])? == 0 {
                return Err(StoreError::NotFound { what: "job", id });
            }
            Ok(())
        })
        .await
    }

    pub async fn get_job(&self, id_or_name: String) -> Result<Option<Job>, StoreError> {
        self.read(move |c| get_job_conn(c, &id_or_name)).await
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StoreError> {
        self.read(move |c| list_jobs_conn(c, &filter)).await
    }

    /// Calls `f` with every job's scheduling columns, one row at a time (nothing else is held in
    /// memory), oldest job first. Returns how many jobs there were.
    pub async fn for_each_job_scheduling<F>(&self, mut f: F) -> Result<usize, StoreError>
    where
        F: FnMut(JobScheduling) + Send + 'static,
    {
        self.read(move |c| {
            let mut n = 0;
            let sql = format!("SELECT {SCHEDULING_COLUMNS} FROM jobs ORDER BY created_at");
            c.query_map(&sql, (), |r| {
                f(scheduling_from_row(r)?);
                n += 1;
                Ok(())
            })?;
            Ok(n)
        })
        .await
    }

    /// One job's scheduling columns (`None`: no such job).
    pub async fn job_scheduling(&self, id: String) -> Result<Option<JobScheduling>, StoreError> {
        self.read(move |c| {
            let sql = format!("SELECT {SCHEDULING_COLUMNS} FROM jobs WHERE id = ?1");
            c.query_opt(&sql, [&id], scheduling_from_row)
        })
        .await
    }

    pub async fn upsert_prompt(&self, prompt: Prompt) -> Result<Prompt, StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO prompts (id, title, content, tags, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET title = excluded.title, content = excluded.content,
                    tags = excluded.tags, updated_at = excluded.updated_at",
                params![
                    prompt.id,
                    prompt.title,
                    prompt.content,
                    to_json(&prompt.tags),
                    to_ms(prompt.created_at),
                    to_ms(prompt.updated_at)
                ],
            )?;
            get_prompt_conn(c, &prompt.id)?.ok_or(StoreError::NotFound {
                what: "prompt",
                id: prompt.id,
            })
        })
        .await
    }

    pub async fn get_prompt(&self, id: String) -> Result<Option<Prompt>, StoreError> {
        self.read(move |c| get_prompt_conn(c, &id)).await
    }

    pub async fn list_prompts(&self) -> Result<Vec<Prompt>, StoreError> {
        self.read(|c| {
            c.query_map(
                "SELECT id, title, content, tags, created_at, updated_at FROM prompts ORDER BY id",
                (),
                prompt_from_row,
            )
        })
        .await
    }

    /// Deletes a prompt no job uses.
    pub async fn delete_prompt(&self, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            atomic(c, |c| {
                let used: i64 = c.query_one(
                    "SELECT COUNT(*) FROM jobs WHERE prompt_id = ?1",
                    [&id],
                    |r| r.get(0),
                )?;
                if used > 0 {
                    return Err(StoreError::Conflict(format!(
                        "prompt `{id}` is used by {used} job(s)"
                    )));
                }
                if c.execute("DELETE FROM prompts WHERE id = ?1", [&id])? == 0 {
                    return Err(StoreError::NotFound { what: "prompt", id });
                }
                Ok(())
            })
        })
        .await
    }
}

fn list_jobs_conn(c: &Db, f: &JobFilter) -> Result<Vec<Job>, StoreError> {
    let (cond, args) = job_filter_sql(c.backend(), f);
    // No limit: the largest one both backends accept (SQLite needs a LIMIT before OFFSET).
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE 1=1{cond} ORDER BY {} LIMIT {} OFFSET {}",
        f.sort.order_by(f.descending),
        f.limit.map(i64::from).unwrap_or(i64::MAX),
        f.offset
    );
    c.query_map(&sql, args, job_from_row)
}

fn prompt_from_row(r: &Row<'_>) -> Result<Prompt, StoreError> {
    Ok(Prompt {
        id: r.get(0)?,
        title: r.get(1)?,
        content: r.get(2)?,
        tags: from_json(&r.get::<_, String>(3)?, "prompts.tags")?,
        created_at: from_ms(r.get(4)?),
        updated_at: from_ms(r.get(5)?),
    })
}

pub(crate) fn get_prompt_conn(c: &Db, id: &str) -> Result<Option<Prompt>, StoreError> {
    c.query_opt(
        "SELECT id, title, content, tags, created_at, updated_at FROM prompts WHERE id = ?1",
        [id],
        prompt_from_row,
    )
}
