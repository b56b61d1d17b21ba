//! Store operations behind the engine's plugin seams (condition hooks, retries).

use chrono::{DateTime, Utc};

use super::db::{params, Db};
use super::executions::{exec_from_row, EXEC_COLUMNS};
use super::{to_ms, Store, StoreError};
use crate::model::JobExecution;

impl Store {
    /// A claimed (`running`) run that a condition hook put off: back to `deferred` until `until`,
    /// with the reason in `error`. Returns whether it was still running.
    pub async fn defer_claimed(
        &self,
        id: String,
        until: DateTime<Utc>,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                // Given back: in a cluster, any instance claims it when it is due.
                "UPDATE executions SET status = 'deferred', scheduled_for = ?2, error = ?3,
                    started_at = NULL, owner = NULL, lease_until = NULL
                 WHERE id = ?1 AND status = 'running'",
                params![id, to_ms(until), reason],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// The job's most recent finished execution other than `except`.
    pub async fn previous_finished(
        &self,
        job_id: String,
        except: String,
    ) -> Result<Option<JobExecution>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {EXEC_COLUMNS} FROM executions
                 WHERE job_id = ?1 AND id <> ?2 AND completed_at IS NOT NULL
                   AND status NOT IN ('queued', 'deferred', 'running', 'skipped')
                 ORDER BY completed_at DESC, rowid DESC LIMIT 1"
            );
            c.query_opt(&sql, params![job_id, except], exec_from_row)
        })
        .await
    }
}

/// Inserts the next attempt of `failed_id`: same job and slot, `retry_count + 1`, linked to
/// the run's first attempt (`first_attempt_id`).
pub(super) fn insert_retry_conn(
    c: &Db,
    failed_id: &str,
    r: &super::NewRetry,
) -> Result<bool, StoreError> {
    // PostgreSQL types the SELECT's parameters by the columns they are inserted into.
    let n = c.execute(
        // A webhook's run is retried with the prompt its payload rendered (the one it ran).
        // (LEFT JOIN: retention may have pruned the first attempt of a long chain.)
        "INSERT INTO executions
            (id, job_id, status, trigger, slot, scheduled_for, queued_at, retry_count,
             first_attempt_id, workflow_run_id, upstream_ids, prompt)
         SELECT ?2, e.job_id, 'queued', 'retry', e.slot, ?3, ?4, e.retry_count + 1,
                COALESCE(e.first_attempt_id, e.id), e.workflow_run_id, e.upstream_ids,
                CASE WHEN f.trigger = 'webhook' THEN e.prompt END
         FROM executions e
         LEFT JOIN executions f ON f.id = COALESCE(e.first_attempt_id, e.id)
         WHERE e.id = ?1
         ON CONFLICT DO NOTHING",
        params![failed_id, r.id, to_ms(r.at), to_ms(r.now)],
    )?;
    Ok(n == 1)
}

impl Store {
    /// Records the retry of failed execution `failed_id` as a new queued execution, due at `at`,
    /// for the same slot with `retry_count + 1` — once only: the (job, slot, attempt) key makes a
    /// second call (say, after a crash) a no-op. Returns whether it was recorded.
    pub async fn schedule_retry(
        &self,
        failed_id: String,
        new_id: String,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            insert_retry_conn(
                c,
                &failed_id,
                &super::NewRetry {
                    id: new_id,
                    at,
                    now,
                },
            )
        })
        .await
    }
}
