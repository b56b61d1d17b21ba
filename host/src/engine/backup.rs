//! Backups of the database: the periodic task (`[database] backup`), backups on demand
//! (`POST /api/backup`), and what the last one was, for `GET /api/status` and `/metrics`.
//!
//! ```text
//!  start ─▶ partial files of a backup cut short removed ─▶ the newest `<stem>-<time>.db` in the
//!          folder: the next one is due `every` after it (now, when none)
//!  due ─▶ Store::backup (own read-only connection, verified copy, atomic) ─▶ success: the oldest
//!         beyond `keep` deleted, next = now + every │ failure: logged, in the status, counted;
//!         next try after min(every, 15 min)
//! ```
//!
//! The task reads the injected clock and re-reads it at least every minute, so a wall-clock
//! jump is noticed and tests drive it on tokio's paused time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::Engine;
use crate::store::{BackupReport, StoreError};

/// A failed periodic backup is tried again after this long (or `every`, when shorter).
pub const BACKUP_RETRY: Duration = Duration::from_secs(15 * 60);
/// The task re-reads the wall clock at least this often while it waits.
const RECHECK: Duration = Duration::from_secs(60);
/// How backup file names write their UTC time.
const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// `[database] backup` as the engine uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSettings {
    pub every: Duration,
    pub keep: u32,
    pub directory: PathBuf,
}

/// Backups as status displays show them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupStatus {
    /// `[database] backup`; `null` when periodic backups are off.
    pub periodic: Option<PeriodicBackups>,
    /// The last successful backup (periodic or on demand) since the start, else the newest
    /// periodic one found in the folder at start.
    pub last: Option<LastBackup>,
    /// When the next periodic backup is due.
    pub next_at: Option<DateTime<Utc>>,
    /// The latest periodic attempt, when it failed (cleared by the next success).
    pub last_error: Option<BackupFailure>,
    /// Periodic attempts that failed since the service started.
    pub failures: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodicBackups {
    pub every_seconds: u64,
    pub keep: u32,
    pub directory: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastBackup {
    pub at: DateTime<Utc>,
    pub path: PathBuf,
    /// `periodic`, `manual` (`POST /api/backup`) or `found` (in the folder at start).
    pub trigger: &'static str,
    pub bytes: u64,
    /// Copy and verification; `null` for one found at start.
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupFailure {
    pub at: DateTime<Utc>,
    pub message: String,
}

/// The database file's name without its extension (`cnp` for `cnp.db`): backup names start
/// with it.
fn db_stem(db: &Path) -> String {
    db.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cnp".into())
}

/// `cnp-20261207T030000Z.db`: a periodic backup's name.
pub fn periodic_name(db: &Path, at: DateTime<Utc>) -> String {
    format!("{}-{}.db", db_stem(db), at.format(STAMP))
}

/// `20261207T030000Z`: a UTC time in file names (backups, `before-restore-…`).
pub fn file_stamp(at: DateTime<Utc>) -> String {
    at.format(STAMP).to_string()
}

/// Where a backup asked for at `path` is written: `path` itself, or, when `path` is a folder,
/// `<db stem>-<UTC time>-manual.db` in it (a name periodic clean-up never deletes).
pub fn backup_target(path: &Path, db: &Path, at: DateTime<Utc>) -> PathBuf {
    if path.is_dir() {
        path.join(format!("{}-{}-manual.db", db_stem(db), at.format(STAMP)))
    } else {
        path.to_owned()
    }
}

/// The periodic backups in `dir` (by name: `<stem>-<UTC time>.db`), oldest first.
pub fn periodic_backups(dir: &Path, db: &Path) -> Vec<(DateTime<Utc>, PathBuf)> {
    let prefix = format!("{}-", db_stem(db));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(DateTime<Utc>, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let stamp = name.strip_prefix(&prefix)?.strip_suffix(".db")?;
            let at = NaiveDateTime::parse_from_str(stamp, STAMP).ok()?.and_utc();
            e.file_type().ok()?.is_file().then(|| (at, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes the oldest periodic backups beyond the newest `keep`; returns what was deleted.
fn prune(dir: &Path, db: &Path, keep: u32) -> Vec<PathBuf> {
    let all = periodic_backups(dir, db);
    let extra = all.len().saturating_sub(keep as usize);
    let mut removed = Vec::new();
    for (_, path) in all.into_iter().take(extra) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete an old backup")
            }
        }
    }
    removed
}

/// Removes the partial files of backups a stop cut short (`.<stem>-….partial-…`).
fn remove_partials(dir: &Path, db: &Path) {
    let prefix = format!(".{}-", db_stem(db));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.contains(".partial-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Engine {
    /// What the last backup was, when the next is due, the last failure.
    pub fn backup_status(&self) -> BackupStatus {
        self.shared.backup.lock().unwrap().clone()
    }

    /// A backup now, to `target` (a file; see [`backup_target`] for folders), recorded as the
    /// last backup when it succeeds.
    pub async fn backup_now(
        &self,
        target: PathBuf,
        replace: bool,
    ) -> Result<BackupReport, StoreError> {
        let at = self.shared.clock.now();
        let report = self.shared.store.backup(target, replace).await?;
        tracing::info!(
            path = %report.path.display(),
            bytes = report.bytes,
            ms = report.duration_ms,
            "database backed up (on demand)"
        );
        self.record_backup(at, &report, "manual");
        Ok(report)
    }

    fn record_backup(&self, at: DateTime<Utc>, report: &BackupReport, trigger: &'static str) {
        let mut b = self.shared.backup.lock().unwrap();
        b.last = Some(LastBackup {
            at,
            path: report.path.clone(),
            trigger,
            bytes: report.bytes,
            duration_ms: Some(report.duration_ms),
        });
        if trigger == "periodic" {
            b.last_error = None;
        }
    }
}

/// The status before the task has run: periodic settings, nothing taken yet.
pub(super) fn initial_status(settings: Option<&BackupSettings>) -> BackupStatus {
    BackupStatus {
        periodic: settings.map(|s| PeriodicBackups {
            every_seconds: s.every.as_secs(),
            keep: s.keep,
            directory: s.directory.clone(),
        }),
        ..Default::default()
    }
}

/// Periodic backups, until the engine stops. Failures are logged and recorded; the task goes on.
pub(super) async fn run_backups(engine: Engine) {
    let s = &engine.shared;
    let Some(cfg) = s.settings.backup.clone() else {
        return;
    };
    let db = s.store.path().to_owned();
    let every = chrono::Duration::from_std(cfg.every).unwrap_or(chrono::Duration::days(1));
    let retry = chrono::Duration::from_std(cfg.every.min(BACKUP_RETRY)).unwrap_or(every);
    let _ = std::fs::create_dir_all(&cfg.directory);
    remove_partials(&cfg.directory, &db);
    let now = s.clock.now();
    let mut next = now;
    if let Some((at, path)) = periodic_backups(&cfg.directory, &db).pop() {
        // A newest backup "from the future" (the clock went back) does not put the next off
        // by more than `every`.
        next = (at + every).min(now + every);
        s.backup.lock().unwrap().last = Some(LastBackup {
            at,
            bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            path,
            trigger: "found",
            duration_ms: None,
        });
    }
    tracing::info!(
        folder = %cfg.directory.display(),
        every = %humantime::format_duration(cfg.every),
        keep = cfg.keep,
        next = %next.to_rfc3339(),
        "periodic database backups"
    );
    loop {
        s.backup.lock().unwrap().next_at = Some(next);
        loop {
            let now = s.clock.now();
            if now >= next {
                break;
            }
            let wait = (next - now).to_std().unwrap_or_default().min(RECHECK);
            tokio::select! {
                biased;
                _ = s.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let at = s.clock.now();
        let target = cfg.directory.join(periodic_name(&db, at));
        let result = match std::fs::create_dir_all(&cfg.directory) {
            Err(e) => Err(StoreError::File {
                path: cfg.directory.clone(),
                message: format!("cannot create the backup folder: {e}"),
            }),
            Ok(()) => tokio::select! {
                biased;
                _ = s.stop.cancelled() => return,
                r = s.store.backup(target.clone(), false) => r,
            },
        };
        match result {
            Ok(report) => {
                engine.record_backup(at, &report, "periodic");
                let removed = prune(&cfg.directory, &db, cfg.keep);
                tracing::info!(
                    path = %report.path.display(),
                    bytes = report.bytes,
                    ms = report.duration_ms,
                    deleted_old = removed.len(),
                    "database backed up"
                );
                for r in removed {
                    tracing::debug!(file = %r.display(), "old backup deleted (keep)");
                }
                next = at + every;
            }
            Err(e) => {
                next = at + retry;
                tracing::error!(
                    target_file = %target.display(),
                    error = %e,
                    next_try = %next.to_rfc3339(),
                    "periodic database backup failed"
                );
                let mut b = s.backup.lock().unwrap();
                b.failures += 1;
                b.last_error = Some(BackupFailure {
                    at,
                    message: e.to_string(),
                });
            }
        }
    }
}
