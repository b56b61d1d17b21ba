//! PostgreSQL: connecting (TLS through rustls), reconnecting, and the schema's migrations.
//!
//! The store keeps the same design on PostgreSQL as on SQLite: one writer thread that groups the
//! pending writes into one transaction, and a pool of read connections used off the async
//! runtime. The client is `tokio-postgres`: every connection's socket is driven by one I/O
//! thread of its own ([`io`]), and the writer and readers wait on their requests, so a store
//! works the same from a runtime thread, a blocking thread or a test on tokio's paused clock.

use std::time::Duration;

use super::db::{Db, PgConn};
use super::StoreError;

/// `[database] url` and its pool.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgresql://user:password@host:port/db?sslmode=prefer` (libpq's URL or key=value form).
    pub url: String,
    /// Read connections (the writer has one more of its own).
    pub pool_size: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            pool_size: 4,
        }
    }

    /// The URL with its password replaced (for logs, status and errors).
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The parsed settings (checked by `cnp check` and at start-up).
    pub fn config(&self) -> Result<tokio_postgres::Config, String> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("[database] url `{}`: {e}", redact_url(&self.url)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("cnp");
        }
        // Dead peers are noticed by the kernel even when no query is going.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        Ok(config)
    }
}

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db` (key=value form:
/// `password=…` likewise).
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let (auth, tail) = match rest.find('@') {
            Some(at) if rest[..at].find('/').is_none() => (&rest[..at], &rest[at..]),
            _ => return url.to_owned(),
        };
        return match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***{tail}"),
            None => url.to_owned(),
        };
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_owned()
            } else {
                kv.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A PostgreSQL error as one line, with the server's detail when there is one.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(": ");
                s.push_str(d);
            }
            s
        }
        None => e.to_string(),
    }
}

fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// The runtime that drives every PostgreSQL connection's socket (one thread, for the process's
/// life). Requests are waited on by the caller ([`super::db`]), not run here.
pub(crate) fn io() -> &'static tokio::runtime::Runtime {
    static IO: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cnp-pg-io")
            .enable_all()
            .build()
            .expect("start the PostgreSQL I/O thread")
    })
}

/// Opens one connection.
pub(super) fn connect(options: &PgOptions) -> Result<Db, StoreError> {
    let config = options.config().map_err(StoreError::Schema)?;
    let connecting = io().spawn(async move {
        let (client, connection) = config.connect(tls()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe(&e), "PostgreSQL connection ended");
            }
        });
        Ok::<_, tokio_postgres::Error>(client)
    });
    let client = futures_executor::block_on(connecting)
        .map_err(|e| StoreError::Schema(format!("PostgreSQL connection task: {e}")))?
        .map_err(|e| StoreError::Open {
            path: options.display_url().into(),
            message: describe(&e),
        })?;
    Ok(Db::Pg(std::cell::RefCell::new(PgConn::new(
        client,
        options.clone(),
    ))))
}

/// Replaces the writer's connection when the server closed it (a restart of PostgreSQL). Tries
/// once per batch: while the server is down the batch fails and is reported like a full disk.
pub(super) fn reconnect_if_lost(conn: &mut Db) {
    let Db::Pg(pg) = conn else { return };
    if !pg.borrow().client.is_closed() {
        return;
    }
    let options = pg.borrow().options.clone();
    match options.as_ref().map(connect) {
        Some(Ok(fresh)) => {
            tracing::warn!("reconnected to PostgreSQL");
            *conn = fresh;
        }
        Some(Err(e)) => tracing::warn!(error = %e, "PostgreSQL is unreachable"),
        None => {}
    }
}

impl StoreError {
    /// Whether the connection is gone (the server restarted or the network failed): the
    /// connection must be replaced, the request may be tried again.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            StoreError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        let c = c.code();
                        c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03"
                    })
                    || e.as_db_error().is_none() && e.to_string().contains("connection")
            }
            _ => false,
        }
    }

    /// PostgreSQL's share of [`StoreError::is_storage_failure`]: the server is unreachable, out of
    /// disk or read-only.
    pub(super) fn pg_storage_failure(e: &tokio_postgres::Error) -> bool {
        e.is_closed()
            || match e.code() {
                None => e.as_db_error().is_none(),
                Some(c) => {
                    let c = c.code();
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57P")
                        || c == "25006"
                        || c.starts_with("58")
                }
            }
    }
}

/// Each entry upgrades the PostgreSQL schema from version `i` to `i + 1`. Version 1 is SQLite's
/// version 8 in PostgreSQL's types (`BIGINT` unix milliseconds, `DOUBLE PRECISION`, JSON kept as
/// text so both backends read it alike; `rowid` is a real column where the store orders by it;
/// names sort by bytes, `COLLATE "C"`, as SQLite sorts them).
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE prompts (
        id          TEXT COLLATE "C" PRIMARY KEY,
        title       TEXT COLLATE "C" NOT NULL,
        content     TEXT NOT NULL,
        tags        TEXT NOT NULL DEFAULT '[]',
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );

    CREATE TABLE jobs (
        rowid               BIGSERIAL UNIQUE,
        id                  TEXT PRIMARY KEY,
        name                TEXT COLLATE "C" NOT NULL UNIQUE,
        prompt_id           TEXT REFERENCES prompts(id) ON DELETE RESTRICT,
        prompt              TEXT,
        schedule            TEXT NOT NULL,
        status              TEXT NOT NULL,
        priority            BIGINT NOT NULL CHECK (priority BETWEEN 1 AND 10),
        execution_options   TEXT NOT NULL,
        retry_config        TEXT,
        notification_config TEXT,
        resource_limits     TEXT,
        tags                TEXT NOT NULL DEFAULT '[]',
        source              TEXT,
        execution_count     BIGINT NOT NULL DEFAULT 0,
        success_count       BIGINT NOT NULL DEFAULT 0,
        failure_count       BIGINT NOT NULL DEFAULT 0,
        total_time_ms       BIGINT NOT NULL DEFAULT 0,
        next_run_time       BIGINT,
        last_run_time       BIGINT,
        last_slot           BIGINT,
        created_at          BIGINT NOT NULL,
        updated_at          BIGINT NOT NULL,
        template            TEXT,
        template_use        TEXT,
        depends_on          TEXT,
        budget              TEXT,
        cost_usd_total      DOUBLE PRECISION NOT NULL DEFAULT 0,
        uncosted_runs       BIGINT NOT NULL DEFAULT 0,
        CHECK (prompt_id IS NOT NULL OR prompt IS NOT NULL)
    );
    CREATE INDEX jobs_source ON jobs(source) WHERE source IS NOT NULL;
    CREATE INDEX jobs_template ON jobs(template) WHERE template IS NOT NULL;

    CREATE TABLE executions (
        rowid             BIGSERIAL UNIQUE,
        id                TEXT PRIMARY KEY,
        job_id            TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        status            TEXT NOT NULL,
        trigger           TEXT NOT NULL,
        slot              BIGINT,
        scheduled_for     BIGINT,
        queued_at         BIGINT NOT NULL,
        started_at        BIGINT,
        completed_at      BIGINT,
        execution_time_ms BIGINT,
        prompt            TEXT,
        output            TEXT,
        error             TEXT,
        retry_count       BIGINT NOT NULL DEFAULT 0,
        outcome           TEXT,
        exit_code         BIGINT,
        session_id        TEXT,
        cost_usd          DOUBLE PRECISION,
        usage             TEXT,
        resource_usage    TEXT,
        pid               BIGINT,
        first_attempt_id  TEXT,
        workflow_run_id   TEXT,
        upstream_ids      TEXT,
        worktree          TEXT,
        UNIQUE (job_id, slot, retry_count)
    );
    CREATE INDEX executions_job_time ON executions(job_id, queued_at DESC);
    CREATE INDEX executions_pending ON executions(status)
        WHERE status IN ('queued', 'deferred', 'running');
    CREATE INDEX executions_queued_at ON executions(queued_at);
    CREATE INDEX executions_first_attempt ON executions(first_attempt_id)
        WHERE first_attempt_id IS NOT NULL;
    CREATE UNIQUE INDEX executions_workflow_node ON executions(workflow_run_id, job_id)
        WHERE trigger = 'dependency';
    CREATE INDEX executions_workflow ON executions(workflow_run_id)
        WHERE workflow_run_id IS NOT NULL;
    CREATE INDEX executions_completed ON executions(completed_at)
        WHERE completed_at IS NOT NULL;

    CREATE TABLE execution_logs (
        execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
        seq          BIGINT NOT NULL,
        stream       TEXT NOT NULL,
        ts           BIGINT NOT NULL,
        line         TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    );

    CREATE TABLE service_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE notification_deliveries (
        id           BIGSERIAL PRIMARY KEY,
        execution_id TEXT REFERENCES executions(id) ON DELETE CASCADE,
        job_id       TEXT,
        event        TEXT NOT NULL,
        channel      TEXT NOT NULL,
        status       TEXT NOT NULL,
        attempts     BIGINT NOT NULL DEFAULT 0,
        detail       TEXT,
        created_at   BIGINT NOT NULL,
        delivered_at BIGINT
    );
    CREATE INDEX notification_deliveries_execution ON notification_deliveries(execution_id);
    CREATE INDEX notification_deliveries_created ON notification_deliveries(created_at);

    CREATE TABLE dashboard_sessions (
        id_hash    TEXT PRIMARY KEY,
        csrf       TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);

    CREATE TABLE templates (
        name        TEXT COLLATE "C" PRIMARY KEY,
        description TEXT,
        body        TEXT NOT NULL,
        source      TEXT,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );

    CREATE TABLE workflow_runs (
        id                TEXT PRIMARY KEY,
        root_job_id       TEXT,
        root_execution_id TEXT NOT NULL,
        created_at        BIGINT NOT NULL,
        cancelled_at      BIGINT
    );
    CREATE INDEX workflow_runs_created ON workflow_runs(created_at);

    CREATE TABLE workflow_edges (
        pass_id            TEXT NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
        downstream_job     TEXT NOT NULL,
        upstream_job       TEXT NOT NULL,
        upstream_execution TEXT NOT NULL,
        satisfied          BIGINT NOT NULL,
        reason             TEXT,
        created_at         BIGINT NOT NULL,
        PRIMARY KEY (pass_id, downstream_job, upstream_job)
    );
"#,
    // v2: several active instances (docs/cluster.md). A run is claimed by one instance
    // (`owner`, its member id) for as long as its lease lasts (`lease_until`, unix ms), renewed
    // by the owner's heartbeat. `cluster_members`: each instance's heartbeat, whether it holds
    // the timer (`leader`), and its counts for `/health` and `cnp status`.
    r#"
    ALTER TABLE executions ADD COLUMN owner TEXT;
    ALTER TABLE executions ADD COLUMN lease_until BIGINT;
    CREATE INDEX executions_claimable ON executions((COALESCE(scheduled_for, queued_at)))
        WHERE status IN ('queued', 'deferred') AND owner IS NULL;
    CREATE INDEX executions_owner ON executions(owner, job_id) WHERE owner IS NOT NULL;

    CREATE TABLE cluster_members (
        id            TEXT PRIMARY KEY,
        host          TEXT NOT NULL,
        pid           BIGINT NOT NULL,
        api           TEXT,
        started_at    BIGINT NOT NULL,
        heartbeat_at  BIGINT NOT NULL,
        leader        BIGINT NOT NULL DEFAULT 0,
        running       BIGINT NOT NULL DEFAULT 0,
        queued        BIGINT NOT NULL DEFAULT 0,
        capacity      BIGINT NOT NULL DEFAULT 0
    );
"#,
];

/// The PostgreSQL schema version this build writes.
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`PG_SCHEMA_VERSION`], one transaction per migration. Several
/// instances starting at once take turns on an advisory lock, so each migration runs once.
pub(super) fn migrate(conn: &Db) -> Result<(), StoreError> {
    conn.batch("SELECT pg_advisory_lock(7366410)")?;
    let result = migrate_locked(conn);
    let _ = conn.batch("SELECT pg_advisory_unlock(7366410)");
    result
}

fn migrate_locked(conn: &Db) -> Result<(), StoreError> {
    conn.batch(
        "CREATE TABLE IF NOT EXISTS cnp_schema (version BIGINT NOT NULL);
         INSERT INTO cnp_schema (version)
            SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM cnp_schema)",
    )?;
    let current: u32 = conn.query_one("SELECT version FROM cnp_schema", (), |r| r.get(0))?;
    if current > PG_SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "the database has schema version {current}, newer than this cnp understands \
             ({PG_SCHEMA_VERSION}); upgrade cnp or point it at another database"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        conn.batch("BEGIN")?;
        let step = conn
            .batch(sql)
            .and_then(|_| conn.execute("UPDATE cnp_schema SET version = ?1", [(i + 1) as i64]))
            .and_then(|_| conn.batch("COMMIT"));
        if let Err(e) = step {
            let _ = conn.batch("ROLLBACK");
            return Err(e);
        }
        tracing::info!(version = i + 1, "PostgreSQL schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgresql://cnp:s3cret@db.example:5432/cnp?sslmode=require"),
            "postgresql://cnp:***@db.example:5432/cnp?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://cnp@localhost/cnp"),
            "postgres://cnp@localhost/cnp"
        );
        assert_eq!(
            redact_url("host=/tmp user=cnp password=hunter2 dbname=cnp"),
            "host=/tmp user=cnp password=*** dbname=cnp"
        );
    }

    #[test]
    fn bad_urls_are_named() {
        let e = PgOptions::new("postgresql://cnp:pw@host:notaport/db")
            .config()
            .unwrap_err();
        assert!(e.contains("[database] url"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }
}

/// The advisory lock that makes one instance the active one on a database ("cnp" in ASCII).
const INSTANCE_LOCK: i64 = 0x63_6e_70;

/// This instance leads the cluster on its PostgreSQL database (it records the schedule's
/// slots): it holds a session advisory lock on a connection of its own. The other instances try
/// for it ([`InstanceLock::try_acquire`]) and one takes over when the holder's session ends — at
/// once when its process dies (the server sees the socket close), after TCP keepalive when its
/// machine does.
pub struct InstanceLock {
    client: tokio_postgres::Client,
}

impl InstanceLock {
    /// One try, on the PostgreSQL I/O thread (so it can be called from any runtime, a paused
    /// test clock's included): the lock, or who holds it.
    pub fn try_acquire(options: &PgOptions) -> Result<Result<InstanceLock, String>, StoreError> {
        let o = options.clone();
        let trying = io().spawn(async move { try_lock(&o).await });
        let got = futures_executor::block_on(trying)
            .map_err(|e| StoreError::Schema(format!("PostgreSQL connection task: {e}")))??;
        Ok(got.map(|client| InstanceLock { client }))
    }

    /// Whether the lock's session ended (the server restarted, the network failed): the lock
    /// is no longer held, and another instance may take it.
    pub fn is_lost(&self) -> bool {
        self.client.is_closed()
    }
}

/// One try: `Ok(Ok(client))` holding the lock, `Ok(Err(who holds it))`, or why it failed.
async fn try_lock(
    options: &PgOptions,
) -> Result<Result<tokio_postgres::Client, String>, StoreError> {
    let mut config = options.config().map_err(StoreError::Schema)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    config.application_name(format!("cnp {host} pid {}", std::process::id()));
    let (client, connection) = config.connect(tls()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&INSTANCE_LOCK])
        .await?
        .get(0);
    if got {
        return Ok(Ok(client));
    }
    let holder = client
        .query_opt(
            "SELECT a.application_name, COALESCE(host(a.client_addr), 'local') FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1",
            &[&(INSTANCE_LOCK as u32)],
        )
        .await?
        .map(|r| format!("{} (from {})", r.get::<_, String>(0), r.get::<_, String>(1)))
        .unwrap_or_else(|| "another instance".into());
    Ok(Err(holder))
}

/// What [`listen`] hands over: a notification, or word that the listening connection was lost
/// and is back (notifications sent meanwhile are lost: the listener reads the state again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Notification { channel: String, payload: String },
    Reconnected,
}

/// Notifications on `channels` (`LISTEN`), from a connection of its own that reconnects by
/// itself (every second while the server is unreachable). Ends when the receiver is dropped.
pub fn listen(
    options: &PgOptions,
    channels: &'static [&'static str],
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Heard>, StoreError> {
    use futures_util::StreamExt;
    let config = options.config().map_err(StoreError::Schema)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    io().spawn(async move {
        let mut lost = false;
        loop {
            match config.connect(tls()).await {
                Ok((client, mut connection)) => {
                    let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(m) = messages.next().await {
                            match m {
                                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                    let _ = ntx.send(Heard::Notification {
                                        channel: n.channel().to_owned(),
                                        payload: n.payload().to_owned(),
                                    });
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::debug!(error = %describe(&e), "PostgreSQL listening connection ended");
                                    break;
                                }
                            }
                        }
                    });
                    let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
                    match client.batch_execute(&sql).await {
                        Ok(()) => {
                            if lost {
                                tracing::info!("listening to the other cnp instances again");
                                if tx.send(Heard::Reconnected).is_err() {
                                    return;
                                }
                            }
                            loop {
                                tokio::select! {
                                    n = nrx.recv() => match n {
                                        Some(n) => if tx.send(n).is_err() { return },
                                        None => break,
                                    },
                                    _ = tx.closed() => return,
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %describe(&e), "cannot LISTEN on PostgreSQL")
                        }
                    }
                    driver.abort();
                }
                Err(e) => {
                    if !lost {
                        tracing::warn!(error = %describe(&e), "cannot listen to the other cnp instances (PostgreSQL unreachable); trying again every second");
                    }
                }
            }
            lost = true;
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(rx)
}
