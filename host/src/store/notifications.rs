//! Notification delivery outcomes (`notification_deliveries`, schema v3).

use super::db::{params, Db, Row};

use super::{from_ms, to_ms, Store, StoreError};
use crate::notify::{Delivery, NewDelivery};

const COLUMNS: &str =
    "id, execution_id, job_id, event, channel, status, attempts, detail, created_at, delivered_at";

fn insert(c: &Db, d: &NewDelivery) -> Result<i64, StoreError> {
    // An execution deleted meanwhile (retention) leaves the row without its link.
    c.query_one(
        "INSERT INTO notification_deliveries
            (execution_id, job_id, event, channel, status, attempts, detail, created_at, delivered_at)
         VALUES ((SELECT id FROM executions WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         RETURNING id",
        params![
        d.execution_id,
        d.job_id,
        d.event,
        d.channel,
        d.status.as_str(),
        d.attempts,
        d.detail,
        to_ms(d.created_at),
        d.delivered_at.map(to_ms),
        ],
        |r| r.get(0),
    )
}

fn from_row(r: &Row<'_>) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: r.get(0)?,
        execution_id: r.get(1)?,
        job_id: r.get(2)?,
        event: r.get(3)?,
        channel: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get(6)?,
        detail: r.get(7)?,
        created_at: from_ms(r.get(8)?),
        delivered_at: r.get::<_, Option<i64>>(9)?.map(from_ms),
    })
}

impl Store {
    /// Records a delivery outcome; returns its id.
    pub async fn record_delivery(&self, d: NewDelivery) -> Result<i64, StoreError> {
        self.write(move |c| insert(c, &d)).await
    }

    /// [`Store::record_delivery`] without waiting (errors are logged).
    pub fn record_delivery_detached(&self, d: NewDelivery) {
        self.write_detached("notification delivery", move |c| insert(c, &d).map(|_| ()));
    }

    /// The deliveries of one execution, oldest first.
    pub async fn deliveries_of_execution(
        &self,
        execution_id: String,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM notification_deliveries WHERE execution_id = ?1 ORDER BY id"
            );
            c.query_map(&sql, [execution_id], from_row)
        })
        .await
    }

    /// The most recent deliveries, newest first.
    pub async fn recent_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |c| {
            let sql =
                format!("SELECT {COLUMNS} FROM notification_deliveries ORDER BY id DESC LIMIT ?1");
            c.query_map(&sql, [limit], from_row)
        })
        .await
    }

    /// All deliveries stored.
    pub async fn count_deliveries(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            Ok(
                c.query_one("SELECT COUNT(*) FROM notification_deliveries", (), |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
        .await
    }
}
