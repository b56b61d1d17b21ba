//! Store side of spending caps: the costs of the runs that ended in a budget window.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{from_ms, to_ms, Store, StoreError};

/// A run that ran the CLI and ended: what it cost (`None`: the CLI reported no cost).
#[derive(Debug, Clone, PartialEq)]
pub struct CostEntry {
    pub job_id: String,
    pub at: DateTime<Utc>,
    pub cost_usd: Option<f64>,
}

/// The statuses of runs that ran the CLI to an end (skipped and usage-limited runs did not).
pub(crate) const ENDED_RUN: &str =
    "status IN ('completed', 'failed', 'timed_out', 'cancelled', 'interrupted') \
     AND started_at IS NOT NULL";

impl Store {
    /// The runs that ended after `since`, oldest end first.
    pub async fn cost_ledger(&self, since: DateTime<Utc>) -> Result<Vec<CostEntry>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT job_id, completed_at, cost_usd FROM executions
                 WHERE completed_at > ?1 AND {ENDED_RUN}
                 ORDER BY completed_at"
            );
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params![to_ms(since)], |r| {
                Ok(CostEntry {
                    job_id: r.get(0)?,
                    at: from_ms(r.get(1)?),
                    cost_usd: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
