//! Persistence: SQLite (the embedded default) or PostgreSQL (`[database] url`, for a cluster).
//!
//! Both backends share this module's design and every query ([`db::Db`] is the one connection
//! type; the SQL is written in the subset both speak). SQLite: one database file in WAL mode.
//! PostgreSQL: the same writer thread and read pool, each a client of the server
//! (`store/pg.rs`). All writes go through a single writer thread that groups
//! whatever is pending into one transaction (group commit; on SQLite in slices of 2 ms, so the
//! first writes of a burst are committed without waiting for the last): a burst of 10,000
//! schedule fires, or a thousand runs finishing at once, costs a handful of fsyncs instead of
//! thousands, and the job statistics stay consistent because only one writer ever updates them.
//! Each write runs inside its own savepoint, so one failing write never takes its neighbours in
//! the batch down with it.
//! Reads use a small pool of read-only connections (WAL lets them run beside the writer).

mod api;
mod backup;
mod cluster;
mod cooldown;
mod costs;
mod dashboard;
pub mod db;
mod executions;
mod hooks;
mod jobs;
mod notifications;
mod pg;
mod schema;
mod templates;
mod workflows;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::OpenFlags;

pub use db::{Backend, Db};
pub use pg::{
    listen, redact_url as redact_database_url, Heard, InstanceLock, PgOptions, PG_SCHEMA_VERSION,
};
use tokio::sync::oneshot;

pub use api::DurationStats;
pub use backup::{
    backup_database, check_database, database_in_use, restore_database, BackupReport, CheckReport,
    RestoreReport,
};
pub use cluster::{ClaimedRun, Member, Orphans};
pub use cooldown::CollapsedSlots;
pub use costs::{
    local_day_start, CostByDay, CostByJob, CostEntry, CostError, CostJobRef, CostQuery, CostReport,
    CostWindow, JobCostCounter, DEFAULT_DAYS, MAX_DAYS,
};
pub use dashboard::{DashboardSession, DayStats, JobCost, RecentRun, RunChain};
pub use executions::{Claim, ExecutionFilter, FinishedRun, NewExecution, NewRetry, RunPlace};
pub use jobs::{JobFilter, JobScheduling, JobSort};
pub use schema::SCHEMA_VERSION;
pub use workflows::{
    EdgeVerdict, JobDependencies, PassEdge, PassRecord, Settle, Settled, WorkflowRun,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot open database {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// The file is not a whole SQLite database: garbage, truncated, or failing SQLite's checks.
    #[error("the database {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// Another process has the database open (a restore needs it stopped).
    #[error("the database {path} is in use by {} (is `cnp serve` running?)", if *pid == 0 { "another process".to_owned() } else { format!("process {pid}") })]
    InUse { path: PathBuf, pid: u32 },
    /// A file operation of a backup or restore failed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("database schema: {0}")]
    Schema(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the database writer has stopped")]
    WriterGone,
}

impl StoreError {
    /// Whether the error says the database file is damaged (at open, or an SQLite error later).
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Damaged { .. } => true,
            StoreError::Sqlite(e) => backup::is_damage(e),
            _ => false,
        }
    }
}

/// A queued write: runs in the writer's transaction, says whether it succeeded (so a failure can
/// be rolled back to its savepoint) and gives back what to do once the commit is known.
type WriteFn = Box<dyn FnOnce(&Db) -> (bool, Box<dyn FnOnce(bool) + Send>) + Send>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The SQLite file; empty for PostgreSQL.
    path: PathBuf,
    /// How to open more read connections.
    source: Source,
    /// Set by [`Store::open_inline`]: writes and reads run on the caller's thread.
    inline: Option<Mutex<Db>>,
    writer: Mutex<Option<std_mpsc::Sender<WriteFn>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Db>>,
    /// Bounds concurrent async reads to the pool's size, so a burst of reads queues here instead
    /// of growing tokio's blocking pool and opening a connection per read.
    read_slots: tokio::sync::Semaphore,
    read_pool: usize,
    /// How writes have gone (a full or failing disk shows here).
    health: Arc<WriteHealth>,
    /// One backup at a time ([`Store::backup`]).
    backup_lock: tokio::sync::Mutex<()>,
    /// In a cluster, this instance's member id: the `owner` of the runs it claims.
    owner: std::sync::OnceLock<String>,
}

/// How the database's writes have gone: storage failures (a full disk, an I/O error, a file
/// made read-only) counted, and whether the latest write failed.
#[derive(Debug, Default)]
struct WriteHealth {
    failures: std::sync::atomic::AtomicU64,
    /// Since when writes fail, and the latest error (`None`: the latest write succeeded).
    failing: Mutex<Option<(DateTime<Utc>, String)>>,
}

/// [`Store::write_status`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct WriteStatus {
    /// The latest write failed for want of storage (and none succeeded since).
    pub failing: bool,
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Writes that failed for want of storage since cnp started.
    pub failures: u64,
}

impl WriteHealth {
    fn note<T>(&self, r: &Result<T, StoreError>) {
        match r {
            Err(e) if e.is_storage_failure() => {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut f = self.failing.lock().expect("write health");
                if f.is_none() {
                    tracing::error!(error = %e, "database writes are failing (disk full or failing?): runs are not started until they succeed again");
                }
                let since = f.as_ref().map_or_else(Utc::now, |(s, _)| *s);
                *f = Some((since, e.to_string()));
            }
            Ok(_) => {
                let mut f = self.failing.lock().expect("write health");
                if let Some((since, _)) = f.take() {
                    tracing::warn!(%since, "database writes succeed again");
                }
            }
            Err(_) => {}
        }
    }
}

impl StoreError {
    /// Whether the error is the storage's (full, I/O, read-only, gone), not the request's.
    pub fn is_storage_failure(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DiskFull
                    | C::SystemIoFailure
                    | C::ReadOnly
                    | C::CannotOpen
                    | C::DatabaseCorrupt
                    | C::NotADatabase
                    | C::DatabaseBusy
                    | C::DatabaseLocked
            ),
            StoreError::Postgres(e) => StoreError::pg_storage_failure(e),
            StoreError::Open { .. } => true,
            StoreError::Schema(m) => m == COMMIT_FAILED,
            StoreError::WriterGone => true,
            _ => false,
        }
    }
}

/// The error of a transaction whose commit failed.
const COMMIT_FAILED: &str = "transaction failed to commit";

/// Writes grouped into one transaction at most.
const MAX_BATCH: usize = 20_000;

/// How long one SQLite transaction goes on taking in queued writes. Every write in a
/// transaction waits for its commit: when a burst's thousand claims arrive at once, one
/// transaction of all of them would hold back the first run's start until the last claim was
/// written. Slices of 2 ms commit the first claims at once and the rest behind them; a SQLite
/// commit in WAL mode with `synchronous = NORMAL` writes the WAL without an fsync, so the extra
/// commits are cheap. PostgreSQL has no limit: each commit is a round trip and a flush on the
/// server.
fn batch_time(conn: &Db) -> Option<std::time::Duration> {
    match conn.backend() {
        Backend::Sqlite => Some(std::time::Duration::from_millis(2)),
        Backend::Postgres => None,
    }
}

/// SQLite's read connections (PostgreSQL's come from `[database] pool_size`).
const READ_POOL: usize = 4;

/// Where the store's connections come from.
enum Source {
    Sqlite,
    Postgres(PgOptions),
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_mode(path, false)
    }

    /// Like [`Store::open`], but every write and read runs right away on the calling thread (no
    /// writer thread, no batching). For tests on tokio's paused clock, where waiting on another
    /// thread would let the clock jump ahead.
    pub fn open_inline(path: &Path) -> Result<Store, StoreError> {
        Store::open_mode(path, true)
    }

    /// Connects to a PostgreSQL database and brings its schema up to date (`[database] url`).
    pub fn connect(options: &PgOptions) -> Result<Store, StoreError> {
        Store::connect_mode(options, false)
    }

    /// [`Store::connect`] with writes and reads on the calling thread ([`Store::open_inline`]).
    pub fn connect_inline(options: &PgOptions) -> Result<Store, StoreError> {
        Store::connect_mode(options, true)
    }

    fn connect_mode(options: &PgOptions, inline: bool) -> Result<Store, StoreError> {
        let conn = pg::connect(options)?;
        pg::migrate(&conn)?;
        Store::start(
            PathBuf::new(),
            Source::Postgres(options.clone()),
            conn,
            inline,
            options.pool_size.max(1),
        )
    }

    fn open_mode(path: &Path, inline: bool) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.to_owned(),
                message: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        // A damaged file is refused before SQLite writes anything to it, and a file that is
        // there is never replaced by a new one (no SQLITE_OPEN_CREATE then).
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if backup::preflight(path)? == backup::Found::Missing {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let open_err = |e: rusqlite::Error| backup::classify(path, e);
        let mut conn = rusqlite::Connection::open_with_flags(path, flags).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        backup::probe(&conn).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        schema::migrate(&mut conn).map_err(|e| match e {
            StoreError::Sqlite(e) if backup::is_damage(&e) => backup::classify(path, e),
            e => e,
        })?;
        Store::start(
            path.to_owned(),
            Source::Sqlite,
            Db::Sqlite(conn),
            inline,
            READ_POOL,
        )
    }

    /// Starts the writer thread (unless `inline`) on the migrated connection.
    fn start(
        path: PathBuf,
        source: Source,
        conn: Db,
        inline: bool,
        readers: usize,
    ) -> Result<Store, StoreError> {
        let inner = |inline: Option<Mutex<Db>>, writer, thread| Inner {
            path: path.clone(),
            source,
            inline,
            writer: Mutex::new(writer),
            writer_thread: Mutex::new(thread),
            readers: Mutex::new(Vec::new()),
            read_slots: tokio::sync::Semaphore::new(readers),
            read_pool: readers,
            health: Default::default(),
            backup_lock: tokio::sync::Mutex::new(()),
            owner: std::sync::OnceLock::new(),
        };
        if inline {
            return Ok(Store {
                inner: Arc::new(inner(Some(Mutex::new(conn)), None, None)),
            });
        }
        let (tx, rx) = std_mpsc::channel::<WriteFn>();
        let thread = std::thread::Builder::new()
            .name("cnp-db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                message: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(inner(None, Some(tx), Some(thread))),
        })
    }

    /// The SQLite file (empty with PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Which database the store keeps its state in.
    pub fn backend(&self) -> Backend {
        match self.inner.source {
            Source::Sqlite => Backend::Sqlite,
            Source::Postgres(_) => Backend::Postgres,
        }
    }

    /// The PostgreSQL connection settings (`None` with SQLite).
    /// Makes this store's process a cluster member named `id`: it starts only the runs it has
    /// claimed ([`Store::claim_runs`]). Set once.
    pub fn set_owner(&self, id: String) {
        let _ = self.inner.owner.set(id);
    }

    /// This instance's member id in a cluster (empty otherwise).
    pub fn owner(&self) -> &str {
        self.inner.owner.get().map(String::as_str).unwrap_or("")
    }

    pub fn postgres(&self) -> Option<&PgOptions> {
        match &self.inner.source {
            Source::Postgres(o) => Some(o),
            Source::Sqlite => None,
        }
    }

    /// Runs `f` inside the writer's transaction and returns its result once committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Waits until every write queued before this call is committed (writes are applied in
    /// order, so an empty write is a barrier).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(())).await
    }

    /// Queues a write without waiting for it (log lines, heartbeat). Errors are logged.
    pub fn write_detached<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&Db) -> Result<(), StoreError> + Send + 'static,
    {
        let r = self.submit(f, move |r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "database write ({what}) failed");
            }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "database write ({what}) not queued");
        }
    }

    /// How writes have gone: whether they fail for want of storage right now.
    pub fn write_status(&self) -> WriteStatus {
        let h = &self.inner.health;
        let f = h.failing.lock().expect("write health").clone();
        WriteStatus {
            failing: f.is_some(),
            since: f.as_ref().map(|(s, _)| *s),
            last_error: f.map(|(_, e)| e),
            failures: h.failures.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn submit<T, F, D>(&self, f: F, done: D) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let health = self.inner.health.clone();
        let done = move |r: Result<T, StoreError>| {
            health.note(&r);
            done(r)
        };
        if let Some(conn) = &self.inner.inline {
            let conn = conn.lock().expect("inline connection");
            let began = conn.control(begin(&conn)).is_ok();
            let result = f(&conn);
            let committed = if result.is_ok() {
                began && conn.control("COMMIT").is_ok()
            } else {
                let _ = conn.batch("ROLLBACK");
                true
            };
            drop(conn);
            done(match result {
                Ok(_) if !committed => Err(StoreError::Schema(COMMIT_FAILED.into())),
                r => r,
            });
            return Ok(());
        }
        let op: WriteFn = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Box<dyn FnOnce(bool) + Send> = Box::new(move |committed| {
                let result = match result {
                    Ok(_) if !committed => Err(StoreError::Schema(COMMIT_FAILED.into())),
                    r => r,
                };
                done(result)
            });
            (ok, reply)
        });
        let guard = self.inner.writer.lock().expect("writer lock");
        guard
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(op)
            .map_err(|_| StoreError::WriterGone)
    }

    /// Runs a read on a pooled read-only connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.inline.is_some() {
            return self.read_blocking(f);
        }
        let _slot = self
            .inner
            .read_slots
            .acquire()
            .await
            .map_err(|_| StoreError::WriterGone)?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|e| StoreError::Schema(format!("read task failed: {e}")))?
    }

    /// Runs a read on the calling thread (for synchronous callers and tests).
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Db) -> Result<T, StoreError>,
    {
        if let Some(conn) = &self.inner.inline {
            return f(&conn.lock().expect("inline connection"));
        }
        let conn = self.inner.readers.lock().expect("reader pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let result = f(&conn);
        // A connection the server dropped is not put back (the next read opens a new one).
        if result
            .as_ref()
            .err()
            .is_some_and(StoreError::is_connection_lost)
        {
            return result;
        }
        let mut pool = self.inner.readers.lock().expect("reader pool");
        if pool.len() < self.inner.read_pool {
            pool.push(conn);
        }
        result
    }

    fn open_reader(&self) -> Result<Db, StoreError> {
        match &self.inner.source {
            Source::Sqlite => {
                let conn = rusqlite::Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )?;
                configure(&conn)?;
                Ok(Db::Sqlite(conn))
            }
            Source::Postgres(o) => pg::connect(o),
        }
    }

    /// Stops the writer after it has committed everything queued so far.
    pub fn close(&self) {
        self.inner.writer.lock().expect("writer lock").take();
        if let Some(t) = self
            .inner
            .writer_thread
            .lock()
            .expect("writer thread")
            .take()
        {
            let _ = t.join();
        }
    }

    /// A value from the service's key/value table.
    pub async fn get_state(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                "SELECT value FROM service_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
        })
        .await
    }

    pub async fn set_state(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        self.write(move |c| put_state(c, key, &value)).await
    }

    /// [`Store::set_state`] without waiting (the periodic heartbeat).
    pub fn set_state_detached(&self, key: &'static str, value: String) {
        self.write_detached("service state", move |c| put_state(c, key, &value));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.lock().map(|mut w| w.take()).ok();
        if let Ok(mut t) = self.writer_thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

fn put_state(c: &Db, key: &str, value: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO service_state(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

fn configure(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
}

/// How a write transaction begins: SQLite takes the write lock up front.
fn begin(conn: &Db) -> &'static str {
    match conn.backend() {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    }
}

fn writer_loop(mut conn: Db, rx: std_mpsc::Receiver<WriteFn>) {
    let slice = batch_time(&conn);
    let mut done = Vec::new();
    while let Ok(first) = rx.recv() {
        // A PostgreSQL server that went away (restart, failover) is connected to again before
        // the batch; while it is unreachable the batch fails like a full disk does.
        pg::reconnect_if_lost(&mut conn);
        let began = conn.control(begin(&conn)).is_ok();
        let started = std::time::Instant::now();
        let mut next = Some(first);
        while let Some(op) = next.take() {
            let sp = began && conn.control("SAVEPOINT op").is_ok();
            let (ok, reply) = op(&conn);
            // A failed op rolls back to its savepoint; its reply already carries the error.
            if sp {
                if ok {
                    let _ = conn.control("RELEASE op");
                } else {
                    let _ = conn.batch("ROLLBACK TO op; RELEASE op");
                }
            }
            done.push(reply);
            // Whatever else is queued joins this transaction, up to its size and time.
            if done.len() < MAX_BATCH && slice.is_none_or(|t| started.elapsed() < t) {
                next = rx.try_recv().ok();
            }
        }
        let committed = began && conn.control("COMMIT").is_ok();
        if !committed {
            tracing::error!("database transaction failed to commit");
            let _ = conn.batch("ROLLBACK");
        }
        for reply in done.drain(..) {
            reply(committed);
        }
    }
}

/// Runs `f` in a savepoint of its own so an error undoes only its own changes.
pub(crate) fn atomic<T>(
    conn: &Db,
    f: impl FnOnce(&Db) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.control("SAVEPOINT atomic")?;
    match f(conn) {
        Ok(v) => {
            conn.control("RELEASE atomic")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK TO atomic; RELEASE atomic");
            Err(e)
        }
    }
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(crate) fn opt_from_ms(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(from_ms)
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types serialize")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    s: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn opt_json<T: serde::de::DeserializeOwned>(
    r: &db::Row<'_>,
    i: usize,
    what: &str,
) -> Result<Option<T>, StoreError> {
    r.get::<_, Option<String>>(i)?
        .map(|s| from_json(&s, what))
        .transpose()
}
