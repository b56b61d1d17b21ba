//! Store operations of the usage-limit cooldown: runs held back (`deferred`) and released, the
//! run that hit the limit put back, and slots a long cooldown made pile up.

use chrono::{DateTime, Utc};

use super::db::params;
use super::{atomic, to_ms, Store, StoreError};

impl Store {
    /// Removes a key from the service's key/value table.
    /// Returns whether there was such a key (in a cluster: whether this instance removed it).
    pub async fn delete_state(&self, key: &'static str) -> Result<bool, StoreError> {
        self.write(move |c| Ok(c.execute("DELETE FROM service_state WHERE key = ?1", [key])? > 0))
            .await
    }

    /// Runs that came due during a cooldown: `queued` → `deferred` (their `scheduled_for` kept),
    /// with `reason` in `error`, without waiting.
    pub fn defer_queued_detached(&self, ids: Vec<String>, reason: String) {
        if ids.is_empty() {
            return;
        }
        self.write_detached("deferred runs", move |c| {
            for id in &ids {
                c.execute(
                    "UPDATE executions SET status = 'deferred', error = ?2
                     WHERE id = ?1 AND status = 'queued'",
                    params![id, reason],
                )?;
            }
            Ok(())
        });
    }

    /// The cooldown is over: `deferred` → `queued` again (the reason cleared). Returns how many
    /// were still deferred.
    pub async fn requeue_deferred(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write(move |c| {
            let mut n = 0;
            for id in &ids {
                n += c.execute(
                    "UPDATE executions SET status = 'queued', error = NULL
                     WHERE id = ?1 AND status = 'deferred'",
                    [id],
                )?;
            }
            Ok(n)
        })
        .await
    }

    /// A claimed (`running`) run that hit the usage limit: back to `deferred`, not finished and
    /// not counted in the job's statistics (a usage limit is not an attempt). Its log lines stay.
    /// Returns whether it was still running.
    pub async fn defer_limited(&self, id: String, reason: String) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE executions SET status = 'deferred', error = ?2, started_at = NULL,
                    pid = NULL
                 WHERE id = ?1 AND status = 'running'",
                params![id, reason],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Slots that piled up during a cooldown beyond what their job's misfire policy runs: per
    /// job, `record` becomes one `skipped` execution saying why (and how many), `delete` are
    /// removed — in one transaction. Only rows still pending are touched.
    pub async fn collapse_deferred(
        &self,
        groups: Vec<CollapsedSlots>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        if groups.is_empty() {
            return Ok(0);
        }
        self.write(move |c| {
            atomic(c, |c| {
                let del =
                    "DELETE FROM executions WHERE id = ?1 AND status IN ('queued', 'deferred')";
                let skip = "UPDATE executions SET status = 'skipped', error = ?2, completed_at = ?3
                     WHERE id = ?1 AND status IN ('queued', 'deferred')";
                let mut n = 0;
                for g in &groups {
                    for id in &g.delete {
                        n += c.execute(del, [id])?;
                    }
                    n += c.execute(skip, params![g.record, g.reason, to_ms(now)])?;
                }
                Ok(n)
            })
        })
        .await
    }
}

/// One job's surplus slots after a cooldown (see [`Store::collapse_deferred`]).
#[derive(Debug, Clone)]
pub struct CollapsedSlots {
    /// The execution that stays, as `skipped`, with `reason`.
    pub record: String,
    pub delete: Vec<String>,
    pub reason: String,
}
