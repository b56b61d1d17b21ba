//! The database as a file: the checks before it is opened, online backups, integrity checks,
//! restores, and whether another process has it open.
//!
//! ```text
//!  Store::open ─▶ preflight: header, size against the header, a WAL without its database
//!               ─▶ the schema read before anything is written ─▶ WAL mode, migrations
//!  Store::backup / backup_database ─▶ a read-only connection of its own: one read transaction
//!      (a snapshot; the writer goes on, WAL) ─▶ SQLite's backup API, every page in one step
//!      ─▶ <target folder>/.<name>.partial-… ─▶ journal_mode DELETE (one self-contained file)
//!      ─▶ fsync ─▶ integrity_check on the copy, opened again ─▶ link (or rename) to the target
//!      ─▶ fsync the folder
//!  restore_database ─▶ nobody has the database open (SQLite's own locks) ─▶ the backup checked
//!      ─▶ copied and verified beside the database ─▶ the current one kept as
//!      <db>.before-restore-<time> ─▶ renamed into place
//! ```
//!
//! One backup step over all pages holds one read transaction for the whole copy: the copy is the
//! database as of that transaction's start, whatever is written meanwhile. (Several smaller steps
//! would restart from scratch each time another connection writes — forever, under a steady
//! write load.)

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::{schema::SCHEMA_VERSION, Backend, Store, StoreError};

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// What a finished, verified backup is.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub schema_version: u32,
    pub jobs: u64,
    pub executions: u64,
    /// Copy, fsync and integrity check together.
    pub duration_ms: u64,
}

/// What `PRAGMA integrity_check` and `PRAGMA foreign_key_check` found in a database file.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub path: PathBuf,
    /// The database's size (pages × page size; the file itself may be smaller while its `-wal`
    /// holds pages not yet written back).
    pub bytes: u64,
    pub page_size: u64,
    pub pages: u64,
    pub schema_version: u32,
    /// `integrity_check`'s findings (empty: `ok`).
    pub integrity: Vec<String>,
    /// `foreign_key_check`'s findings, one per row that refers to a missing row.
    pub foreign_keys: Vec<String>,
    /// `None` when the file has no such table (not a cnp database).
    pub jobs: Option<u64>,
    pub executions: Option<u64>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.integrity.is_empty() && self.foreign_keys.is_empty()
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The database now in place.
    pub restored: BackupReport,
    /// Where the database it replaced was kept (`None`: there was none).
    pub kept_aside: Option<PathBuf>,
}

/// Whether the database file exists (after [`preflight`] found nothing wrong with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Missing,
    Present,
}

/// `<path><suffix>`: SQLite's `-wal` and `-shm` files.
pub(crate) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Checks the file before SQLite opens it, reading nothing but its first 100 bytes: a file
/// that is not a database, is empty, or is shorter than its header says is damaged, and so is
/// a write-ahead log whose database is missing (SQLite would start a new database and throw the
/// log away). Never writes.
pub(crate) fn preflight(path: &Path) -> Result<Found, StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let wal = sidecar(path, "-wal");
    let wal_len = file_len(&wal);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if wal_len > 0 {
                return Err(damaged(format!(
                    "the file is missing, but its write-ahead log {} ({wal_len} bytes) is there: \
                     the database was moved or deleted without it",
                    wal.display()
                )));
            }
            return Ok(Found::Missing);
        }
        Err(e) => {
            return Err(StoreError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })
        }
    };
    if !meta.is_file() {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "not a regular file".into(),
        });
    }
    let len = meta.len();
    if len == 0 {
        return Err(damaged(if wal_len > 0 {
            format!("the file is empty (0 bytes; its write-ahead log has {wal_len})")
        } else {
            "the file is empty (0 bytes)".into()
        }));
    }
    let mut head = Vec::with_capacity(100);
    std::fs::File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut head))
        .map_err(|e| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if head.len() < 16 || &head[..16] != SQLITE_HEADER {
        return Err(damaged(
            "not a SQLite database: the file does not begin with SQLite's header".into(),
        ));
    }
    if head.len() < 100 {
        return Err(damaged(format!(
            "truncated: {len} bytes, shorter than SQLite's 100-byte header"
        )));
    }
    let be32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let raw_page_size = u16::from_be_bytes([head[16], head[17]]);
    let page_size: u64 = if raw_page_size == 1 {
        65536
    } else {
        raw_page_size.into()
    };
    if page_size < 512 || !page_size.is_power_of_two() {
        return Err(damaged(format!(
            "its header is damaged (page size {raw_page_size})"
        )));
    }
    // The size in the header counts when the change counter matches its "valid for" copy (SQLite
    // keeps both when it writes page 1). Pages the WAL holds may not be in the file yet.
    let (change_counter, pages, valid_for) = (be32(24), be32(28), be32(92));
    if wal_len == 0 && pages > 0 && change_counter == valid_for {
        let expected = u64::from(pages) * page_size;
        if len < expected {
            return Err(damaged(format!(
                "truncated: {len} bytes, but its header says {pages} pages of {page_size} bytes \
                 ({expected} bytes)"
            )));
        }
    }
    Ok(Found::Present)
}

/// Whether an SQLite error means the file's content is damaged (rather than unreachable).
pub(crate) fn is_damage(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
                || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHORT_READ
        }
        _ => false,
    }
}

/// An SQLite error on `path` as a [`StoreError`]: [`StoreError::Damaged`] when it is damage.
pub(crate) fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    if is_damage(&e) {
        StoreError::Damaged {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    } else {
        StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// Reads the schema and the schema version: what a damaged file fails at first. Writes nothing.
pub(crate) fn probe(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::File {
        path: path.to_owned(),
        message: format!("{what}: {e}"),
    }
}

fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    c.busy_timeout(Duration::from_secs(10))
        .map_err(|e| classify(path, e))?;
    Ok(c)
}

fn count(c: &Connection, table: &str) -> rusqlite::Result<Option<u64>> {
    let exists = c
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(None);
    }
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| Some(n as u64))
}

/// `PRAGMA integrity_check(limit)`: the problems found (none: `ok`).
fn integrity(c: &Connection, limit: u32) -> rusqlite::Result<Vec<String>> {
    let mut s = c.prepare(&format!("PRAGMA integrity_check({limit})"))?;
    let rows = s
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// `PRAGMA foreign_key_check`: one line per row that refers to a missing row (at most `limit`).
fn foreign_keys(c: &Connection, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut s = c.prepare("PRAGMA foreign_key_check")?;
    let mut rows = s.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if out.len() == limit {
            out.push("… (more)".into());
            break;
        }
        let table: String = r.get(0)?;
        let rowid: Option<i64> = r.get(1)?;
        let parent: String = r.get(2)?;
        out.push(format!(
            "table `{table}` row {} refers to a missing `{parent}` row",
            rowid.map_or("?".into(), |r| r.to_string())
        ));
    }
    Ok(out)
}

/// Checks a database file: its header and size ([`preflight`]), then SQLite's `integrity_check`
/// and `foreign_key_check`, on a read-only connection (safe while the service runs: it reads
/// one snapshot). `Err` only when the file cannot be checked at all — [`StoreError::Damaged`]
/// when it is not a readable database.
pub fn check_database(path: &Path) -> Result<CheckReport, StoreError> {
    if preflight(path)? == Found::Missing {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "no such file".into(),
        });
    }
    let c = open_read_only(path)?;
    let run = || -> rusqlite::Result<CheckReport> {
        let schema_version = probe(&c)?;
        c.execute_batch("BEGIN")?;
        let page_size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let integrity = integrity(&c, 100)?;
        let foreign_keys = foreign_keys(&c, 100)?;
        let (jobs, executions) = if integrity.is_empty() {
            (count(&c, "jobs")?, count(&c, "executions")?)
        } else {
            (None, None)
        };
        c.execute_batch("COMMIT")?;
        Ok(CheckReport {
            path: path.to_owned(),
            bytes: (pages * page_size) as u64,
            page_size: page_size as u64,
            pages: pages as u64,
            schema_version,
            integrity,
            foreign_keys,
            jobs,
            executions,
        })
    };
    run().map_err(|e| classify(path, e))
}

/// Copies the database `src` is connected to into `target`, atomically and verified: see the
/// module documentation. `replace`: an existing `target` is replaced (else it is an error, and
/// it is never touched).
fn backup_into(src: &Connection, target: &Path, replace: bool) -> Result<BackupReport, StoreError> {
    let started = Instant::now();
    let name = target
        .file_name()
        .ok_or_else(|| StoreError::File {
            path: target.to_owned(),
            message: "not a file name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(StoreError::File {
            path: dir,
            message: "no such folder".into(),
        });
    }
    if !replace && target.exists() {
        return Err(StoreError::Conflict(format!(
            "{} already exists",
            target.display()
        )));
    }
    let tmp = dir.join(format!(".{name}.partial-{}", short_random()));
    let result = write_verified_copy(src, &tmp).and_then(|report| {
        place(&tmp, target, replace)?;
        sync_dir(&dir)?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(sidecar(&tmp, "-journal"));
    }
    let mut report = result?;
    report.path = target.to_owned();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn short_random() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Copies `src` into the new file `tmp`, makes it one self-contained file (rollback journal, so
/// no `-wal` belongs to it), syncs it to disk and checks the copy read back from the file.
fn write_verified_copy(src: &Connection, tmp: &Path) -> Result<BackupReport, StoreError> {
    let _ = std::fs::remove_file(tmp);
    let sql = |e: rusqlite::Error| StoreError::File {
        path: tmp.to_owned(),
        message: e.to_string(),
    };
    let mut dst = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    // Backups hold everything the database does (prompts, outputs): readable by the owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(tmp, "cannot set its permissions", e))?;
    }
    {
        let backup = Backup::new(src, &mut dst).map_err(sql)?;
        let mut waits = 0;
        loop {
            // -1: every page in one step, in one read transaction of the source.
            match backup.step(-1) {
                Ok(StepResult::Done) => break,
                Ok(StepResult::Busy | StepResult::Locked) if waits < 200 => {
                    waits += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(StepResult::Busy | StepResult::Locked) => {
                    return Err(StoreError::File {
                        path: tmp.to_owned(),
                        message: "the database stayed locked for 10 s".into(),
                    })
                }
                Ok(_) => {}
                Err(e) => return Err(sql(e)),
            }
        }
    }
    // The pages came with the source's WAL flag: read the schema (so SQLite sees the flag),
    // then leave WAL mode, which writes the rollback-journal flag into the header.
    dst.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(sql)?;
    let mode: String = dst
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(StoreError::File {
            path: tmp.to_owned(),
            message: format!("the copy stayed in journal mode {mode}"),
        });
    }
    dst.close().map_err(|(_, e)| sql(e))?;
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(tmp, "cannot sync it to disk", e))?;
    verify_copy(tmp)
}

/// Opens the copy again, read-only: `integrity_check` must say `ok`.
fn verify_copy(path: &Path) -> Result<BackupReport, StoreError> {
    let c = open_read_only(path)?;
    let run = || -> Result<BackupReport, StoreError> {
        let problems = integrity(&c, 20)?;
        if !problems.is_empty() {
            return Err(StoreError::Damaged {
                path: path.to_owned(),
                reason: format!("the copy fails integrity_check: {}", problems.join("; ")),
            });
        }
        let schema_version: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(BackupReport {
            path: path.to_owned(),
            bytes: file_len(path),
            schema_version,
            jobs: count(&c, "jobs")?.unwrap_or(0),
            executions: count(&c, "executions")?.unwrap_or(0),
            duration_ms: 0,
        })
    };
    run()
}

/// Puts the finished copy at `target`: a hard link when it must not replace anything (fails if
/// `target` appeared meanwhile), else a rename (atomic replace).
fn place(tmp: &Path, target: &Path, replace: bool) -> Result<(), StoreError> {
    if !replace {
        match std::fs::hard_link(tmp, target) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Conflict(format!(
                    "{} already exists",
                    target.display()
                )))
            }
            // A file system without hard links: checked, then renamed.
            Err(_) if !target.exists() => {}
            Err(e) => return Err(io_err(target, "cannot create it", e)),
        }
    }
    std::fs::rename(tmp, target).map_err(|e| io_err(target, "cannot move the copy into place", e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot sync the folder", e))
}

impl Store {
    /// An online backup of the live database to `target` (see the module documentation): on a
    /// read-only connection of its own, off the async runtime, so the writer and the readers go
    /// on. One backup at a time. SQLite only: a PostgreSQL database is backed up with `pg_dump`.
    pub async fn backup(&self, target: PathBuf, replace: bool) -> Result<BackupReport, StoreError> {
        if self.backend() == Backend::Postgres {
            return Err(not_sqlite());
        }
        let _one = self.inner.backup_lock.lock().await;
        let store = self.clone();
        let job = move || -> Result<BackupReport, StoreError> {
            let src = store.open_reader()?;
            backup_into(src.sqlite().ok_or_else(not_sqlite)?, &target, replace)
        };
        if self.inner.inline.is_some() {
            return job();
        }
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| StoreError::Schema(format!("backup task failed: {e}")))?
    }
}

/// What a file backup of a PostgreSQL database says: the server's own tools make those.
fn not_sqlite() -> StoreError {
    StoreError::Schema(
        "backups of a PostgreSQL database are made with pg_dump (and restored with pg_restore), \
         not by cnp"
            .into(),
    )
}

/// A backup of the database file `db` read directly (no service needed; safe while one runs:
/// SQLite's locks keep the read consistent).
pub fn backup_database(
    db: &Path,
    target: &Path,
    replace: bool,
) -> Result<BackupReport, StoreError> {
    if preflight(db)? == Found::Missing {
        return Err(StoreError::Open {
            path: db.to_owned(),
            message: "no such file".into(),
        });
    }
    let src = open_read_only(db)?;
    probe(&src).map_err(|e| classify(db, e))?;
    backup_into(&src, target, replace)
}

/// Whether another process has the database open, and which (its pid, `0` when the lock does
/// not say). Asks the kernel which process holds the locks SQLite takes: every connection to a
/// WAL database keeps a shared lock on a byte of the `-shm` file for as long as it is open; a
/// rollback-journal transaction locks bytes of the database file itself. Locks go with their
/// process, `kill -9` too, so a crashed service never counts as running.
///
/// Never call this for a database this process has open: closing any descriptor of a file
/// drops the process's own POSIX locks on it, SQLite's included.
pub fn database_in_use(db: &Path) -> Option<u32> {
    // unix VFS: the WAL locks at 120..128, the "dead man switch" byte at 128.
    lock_holder(&sidecar(db, "-shm"), 120, 9)
        // PENDING, RESERVED and the SHARED range at 1 GiB.
        .or_else(|| lock_holder(db, 0x4000_0000, 512))
}

#[allow(unsafe_code)]
fn lock_holder(file: &Path, start: i64, len: i64) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file).ok()?;
    // SAFETY: a zeroed `flock` is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start as _;
    fl.l_len = len as _;
    // SAFETY: F_GETLK reads and writes only `fl`, which lives across the call; the descriptor is
    // open for the whole call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc == -1 || i32::from(fl.l_type) == libc::F_UNLCK {
        return None;
    }
    Some(u32::try_from(fl.l_pid).unwrap_or(0))
}

/// Makes the database `db` one self-contained file (its WAL checkpointed into it, rollback
/// journal mode). Fails on a damaged database.
fn make_self_contained(db: &Path) -> Result<(), String> {
    let run = || -> rusqlite::Result<String> {
        let c = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(Duration::from_secs(5))?;
        probe(&c)?;
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let mode: String = c.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        c.close().map_err(|(_, e)| e)?;
        Ok(mode)
    };
    match run() {
        Ok(mode) if mode.eq_ignore_ascii_case("delete") => Ok(()),
        Ok(mode) => Err(format!("journal mode stayed {mode}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Keeps the database `db` (and its `-wal`) as `<db>.before-restore-<stamp>`. A healthy database
/// is made self-contained and hard-linked there, so it stays in place until the restored one
/// replaces it in one rename; a damaged one is moved there as it is, with its `-wal`.
fn keep_aside(db: &Path, stamp: &str) -> Result<Option<PathBuf>, StoreError> {
    let wal = sidecar(db, "-wal");
    if !db.exists() && !wal.exists() {
        return Ok(None);
    }
    let mut aside = db.as_os_str().to_owned();
    aside.push(format!(".before-restore-{stamp}"));
    let aside = PathBuf::from(aside);
    if aside.exists() {
        return Err(StoreError::Conflict(format!(
            "{} already exists",
            aside.display()
        )));
    }
    let linked = db.exists()
        && make_self_contained(db).is_ok()
        && file_len(&wal) == 0
        && std::fs::hard_link(db, &aside).is_ok();
    if !linked {
        if wal.exists() {
            std::fs::rename(&wal, sidecar(&aside, "-wal"))
                .map_err(|e| io_err(&wal, "cannot move it aside", e))?;
        }
        if db.exists() {
            std::fs::rename(db, &aside).map_err(|e| io_err(db, "cannot move it aside", e))?;
        }
    }
    Ok(Some(aside))
}

/// Puts the backup `backup` in place of the database `db`, which no process may have open (see
/// [`database_in_use`]). The backup must pass `integrity_check`, be a cnp database and have a
/// schema version this cnp understands (older ones are migrated at the next start). It is copied
/// and verified beside `db` first; the current database is kept as
/// `<db>.before-restore-<stamp>`; then the copy is renamed into place.
pub fn restore_database(
    backup: &Path,
    db: &Path,
    stamp: &str,
) -> Result<RestoreReport, StoreError> {
    if let Some(pid) = database_in_use(db) {
        return Err(StoreError::InUse {
            path: db.to_owned(),
            pid,
        });
    }
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if same(backup, db) {
        return Err(StoreError::Conflict(format!(
            "{} is the database itself",
            backup.display()
        )));
    }
    let check = check_database(backup)?;
    if !check.integrity.is_empty() {
        return Err(StoreError::Damaged {
            path: backup.to_owned(),
            reason: format!("integrity_check: {}", check.integrity.join("; ")),
        });
    }
    if check.schema_version > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "{} has schema version {}, newer than this cnp understands ({SCHEMA_VERSION}): \
             restore it with a newer cnp",
            backup.display(),
            check.schema_version
        )));
    }
    if check.jobs.is_none() || check.executions.is_none() {
        return Err(StoreError::Schema(format!(
            "{} is not a cnp database (it has no jobs and executions tables)",
            backup.display()
        )));
    }
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, "cannot create the folder", e))?;
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cnp.db".into());
    let tmp = dir.join(format!(".{name}.restore-{}", short_random()));
    let copied = open_read_only(backup).and_then(|src| write_verified_copy(&src, &tmp));
    let mut restored = match copied {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(sidecar(&tmp, "-journal"));
            return Err(e);
        }
    };
    let kept_aside = match keep_aside(db, stamp) {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The copy is in rollback-journal mode: whatever -wal/-shm is left belongs to the old file.
    let _ = std::fs::remove_file(sidecar(db, "-wal"));
    std::fs::rename(&tmp, db)
        .map_err(|e| io_err(db, "cannot move the restored copy into place", e))?;
    let _ = std::fs::remove_file(sidecar(db, "-shm"));
    let _ = std::fs::remove_file(sidecar(db, "-journal"));
    sync_dir(&dir)?;
    restored.path = db.to_owned();
    Ok(RestoreReport {
        restored,
        kept_aside,
    })
}
