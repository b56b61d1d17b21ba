//! Several instances on one PostgreSQL database (docs/cluster.md): members and their
//! heartbeats, runs claimed under a lease, leases that run out, and notifications between
//! instances. Everything here but [`Orphans`] needs PostgreSQL (`cluster_members`,
//! `FOR UPDATE SKIP LOCKED`, advisory locks, `pg_notify`).

use chrono::{DateTime, Utc};

use super::db::params;
use super::{from_ms, opt_from_ms, to_ms, Store, StoreError};
use crate::model::Trigger;

/// Which runs left `running` count as orphaned (their process gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphans {
    /// Every one: one process owns the database and it is starting.
    All,
    /// Those whose owner's lease ended before this instant (or that have no owner).
    LeaseExpired(DateTime<Utc>),
}

impl Orphans {
    /// The bound `ORPHANED` compares leases with.
    pub(super) fn before(self) -> i64 {
        match self {
            Orphans::All => i64::MAX,
            Orphans::LeaseExpired(t) => to_ms(t),
        }
    }
}

/// The condition on `executions` rows that [`Orphans::before`] (`?1`) selects.
pub(super) const ORPHANED: &str = "(owner IS NULL OR lease_until IS NULL OR lease_until < ?1)";

/// Claims go one at a time across the cluster (a transaction-scoped advisory lock), so a job's
/// runs in flight always belong to one instance (see [`Store::claim_runs`]).
const CLAIM_LOCK: i64 = 0x63_6e_70_01;

/// An instance of the cluster, as its heartbeat last recorded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Member {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Where its API listens, if it has one.
    pub api: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Whether it holds the timer (records the schedule's slots).
    pub leader: bool,
    pub running: u32,
    pub queued: u32,
    /// Its `max_concurrent_jobs`.
    pub capacity: u32,
}

/// A run this instance has just claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRun {
    pub id: String,
    pub job_id: String,
    pub trigger: Trigger,
    pub slot: Option<DateTime<Utc>>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub retry_count: u32,
}

impl Store {
    /// Adds (or refreshes) this instance's row in `cluster_members`.
    pub async fn join_cluster(&self, m: Member) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO cluster_members
                    (id, host, pid, api, started_at, heartbeat_at, leader, running, queued,
                     capacity)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                    api = excluded.api, leader = excluded.leader",
                params![
                    m.id,
                    m.host,
                    m.pid,
                    m.api,
                    to_ms(m.started_at),
                    to_ms(m.heartbeat_at),
                    m.leader as i64,
                    m.running,
                    m.queued,
                    m.capacity
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// One heartbeat of member `id`: its row's time, counts (running, queued) and API address,
    /// and the leases of the runs it
    /// holds (claimed or running) extended to `lease_until` — one transaction. `Ok(false)`: the
    /// row is gone, the others took this instance for dead (its leases had run out), so its runs
    /// may be someone else's now.
    pub async fn heartbeat(
        &self,
        id: String,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        leader: bool,
        (running, queued): (u32, u32),
        api: Option<String>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE cluster_members SET heartbeat_at = ?2, leader = ?3, running = ?4,
                    queued = ?5, api = ?6
                 WHERE id = ?1",
                params![id, to_ms(now), leader as i64, running, queued, api],
            )?;
            if n == 0 {
                return Ok(false);
            }
            c.execute(
                "UPDATE executions SET lease_until = ?2
                 WHERE owner = ?1 AND status IN ('queued', 'deferred', 'running')",
                params![id, to_ms(lease_until)],
            )?;
            Ok(true)
        })
        .await
    }

    /// Claims up to `limit` runs that are due at `now` and nobody holds, most urgent first, for
    /// `owner` until `lease_until`. `FOR UPDATE SKIP LOCKED` passes over rows another
    /// transaction is taking; claims are also serialized cluster-wide, and a job with runs held
    /// by another instance is passed over: a job's runs in flight belong to one instance at a
    /// time, so its `max_parallel`, overlap policy and session carry-over hold across the
    /// cluster as they do in one process.
    pub async fn claim_runs(
        &self,
        owner: String,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write(move |c| {
            c.execute("SELECT pg_advisory_xact_lock(?1)", [CLAIM_LOCK])?;
            c.query_map(
                "WITH picked AS (
                    SELECT e.id FROM executions e JOIN jobs j ON j.id = e.job_id
                    WHERE e.status IN ('queued', 'deferred') AND e.owner IS NULL
                      AND COALESCE(e.scheduled_for, e.queued_at) <= ?2
                      AND e.job_id NOT IN (
                        SELECT o.job_id FROM executions o
                        WHERE o.owner IS NOT NULL AND o.owner <> ?1
                          AND o.status IN ('queued', 'deferred', 'running'))
                    ORDER BY j.priority DESC, COALESCE(e.scheduled_for, e.queued_at), e.rowid
                    LIMIT ?4
                    FOR UPDATE OF e SKIP LOCKED)
                 UPDATE executions x SET owner = ?1, lease_until = ?3
                 FROM picked WHERE x.id = picked.id
                 RETURNING x.id, x.job_id, x.trigger, x.slot, x.scheduled_for, x.retry_count",
                params![owner, to_ms(now), to_ms(lease_until), limit as i64],
                |r| {
                    let trigger: String = r.get(2)?;
                    Ok(ClaimedRun {
                        id: r.get(0)?,
                        job_id: r.get(1)?,
                        trigger: Trigger::parse(&trigger).ok_or_else(|| {
                            StoreError::Corrupt(format!("executions.trigger `{trigger}`"))
                        })?,
                        slot: opt_from_ms(r.get(3)?),
                        scheduled_for: opt_from_ms(r.get(4)?),
                        retry_count: r.get(5)?,
                    })
                },
            )
        })
        .await
    }

    /// When the next run nobody holds comes due (`None`: none is waiting).
    pub async fn next_claimable(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(|c| {
            let t: Option<i64> = c.query_one(
                "SELECT MIN(COALESCE(scheduled_for, queued_at)) FROM executions
                 WHERE status IN ('queued', 'deferred') AND owner IS NULL",
                (),
                |r| r.get(0),
            )?;
            Ok(t.map(from_ms))
        })
        .await
    }

    /// Gives back runs claimed but not started whose owner's lease ended before `now`, so
    /// another instance claims them. Returns how many.
    pub async fn release_expired_claims(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE executions SET owner = NULL, lease_until = NULL
                 WHERE owner IS NOT NULL AND status IN ('queued', 'deferred')
                   AND lease_until < ?1",
                [to_ms(now)],
            )
        })
        .await
    }

    /// Member `id` leaves (a clean stop): its row goes, and the runs it claimed but did not
    /// start are given back.
    pub async fn leave_cluster(&self, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE executions SET owner = NULL, lease_until = NULL
                 WHERE owner = ?1 AND status IN ('queued', 'deferred')",
                [&id],
            )?;
            c.execute("DELETE FROM cluster_members WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    /// Forgets members whose last heartbeat is older than `before` (dead: their leases have run
    /// out too). Returns their ids.
    pub async fn forget_members(&self, before: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        self.write(move |c| {
            let gone = c.query_map(
                "SELECT id FROM cluster_members WHERE heartbeat_at < ?1",
                [to_ms(before)],
                |r| r.get::<_, String>(0),
            )?;
            c.execute(
                "DELETE FROM cluster_members WHERE heartbeat_at < ?1",
                [to_ms(before)],
            )?;
            Ok(gone)
        })
        .await
    }

    /// The cluster's members, the leader first, then by start.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.read(|c| {
            c.query_map(
                "SELECT id, host, pid, api, started_at, heartbeat_at, leader, running, queued,
                        capacity
                 FROM cluster_members ORDER BY leader DESC, started_at, id",
                (),
                |r| {
                    Ok(Member {
                        id: r.get(0)?,
                        host: r.get(1)?,
                        pid: r.get(2)?,
                        api: r.get(3)?,
                        started_at: from_ms(r.get(4)?),
                        heartbeat_at: from_ms(r.get(5)?),
                        leader: r.get::<_, i64>(6)? != 0,
                        running: r.get(7)?,
                        queued: r.get(8)?,
                        capacity: r.get(9)?,
                    })
                },
            )
        })
        .await
    }

    /// Sends `payload` to every instance listening on `channel` ([`Store::listen`]) once the
    /// write commits, without waiting.
    pub fn notify_detached(&self, channel: &'static str, payload: String) {
        self.write_detached("cluster notification", move |c| {
            c.execute("SELECT pg_notify(?1, ?2)", params![channel, payload])?;
            Ok(())
        });
    }
}
