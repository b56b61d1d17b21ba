//! Database backups, checks and restores (the store), and periodic backups (the engine, on
//! tokio's paused clock from a fixed date).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use cnp::clock::Clock;
use cnp::engine::{BackupSettings, Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::manifest::{JobSpec, ScheduleSpec};
use cnp::model::{ExecutionStatus, Job, JobStatus, JobType, Outcome, Schedule, Trigger};
use cnp::store::{
    backup_database, check_database, restore_database, NewExecution, Store, StoreError,
    SCHEMA_VERSION,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
}

fn job(name: &str) -> Job {
    Job {
        id: format!("id-{name}"),
        name: name.into(),
        prompt_id: None,
        prompt: Some("hi".into()),
        cron_expression: None,
        schedule: Schedule::Manual,
        status: JobStatus::Active,
        job_type: JobType::Manual,
        priority: 5,
        execution_options: Default::default(),
        retry_config: None,
        notification_config: None,
        resource_limits: None,
        tags: vec![],
        depends_on: Default::default(),
        budget: None,
        source: None,
        template: None,
        execution_count: 0,
        failure_count: 0,
        avg_execution_time_ms: 0.0,
        success_rate: 0.0,
        next_run_time: None,
        last_run_time: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn execution(job_id: &str, id: &str, prompt_bytes: usize) -> NewExecution {
    NewExecution {
        id: id.into(),
        job_id: job_id.into(),
        status: ExecutionStatus::Queued,
        trigger: Trigger::Manual,
        slot: None,
        scheduled_for: None,
        queued_at: t0(),
        retry_count: 0,
        prompt: Some("x".repeat(prompt_bytes)),
        error: None,
    }
}

/// The execution ids in a database file (read directly).
fn execution_ids(db: &Path) -> BTreeSet<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut s = c.prepare("SELECT id FROM executions").unwrap();
    let ids = s
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<BTreeSet<_>, _>>()
        .unwrap();
    ids
}

fn job_names(db: &Path) -> BTreeSet<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut s = c.prepare("SELECT name FROM jobs").unwrap();
    let names = s
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<BTreeSet<_>, _>>()
        .unwrap();
    names
}

/// The names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A database with jobs `a` and `b` and `n` executions, closed; its path.
async fn database(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("cnp.db");
    let store = Store::open(&path).unwrap();
    store.insert_job(job("a")).await.unwrap();
    store.insert_job(job("b")).await.unwrap();
    for i in 0..n {
        store
            .insert_execution(execution("id-a", &format!("e{i:04}"), 100))
            .await
            .unwrap();
    }
    store.close();
    drop(store);
    path
}

// ---------------------------------------------------------------------------------------------
// Online backups

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_during_writes_holds_every_committed_row_and_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnp.db");
    let store = Store::open(&path).unwrap();
    store.insert_job(job("a")).await.unwrap();
    // ~24 MB, so the copy takes a while.
    for i in 0..480 {
        store
            .insert_execution(execution("id-a", &format!("big{i:04}"), 50_000))
            .await
            .unwrap();
    }
    // A writer that keeps committing, noting each id once its commit is known, and when.
    let committed: Arc<Mutex<Vec<(String, Instant)>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, committed, stop) = (store.clone(), committed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("w{i:06}");
                store
                    .insert_execution(execution("id-a", &id, 200))
                    .await
                    .unwrap();
                committed.lock().unwrap().push((id, Instant::now()));
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before: BTreeSet<String> = committed
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!before.is_empty(), "the writer is going");
    let target = dir.path().join("backups/one.db");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let started = Instant::now();
    let report = store.backup(target.clone(), false).await.unwrap();
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();

    // Every row committed before the backup began is in it; the copy is sound.
    let in_backup = execution_ids(&target);
    let missing: Vec<_> = before.difference(&in_backup).collect();
    assert!(missing.is_empty(), "missing from the backup: {missing:?}");
    assert_eq!(report.path, target);
    assert_eq!(report.executions as usize, in_backup.len());
    assert_eq!(report.schema_version, SCHEMA_VERSION);
    assert_eq!(report.bytes, std::fs::metadata(&target).unwrap().len());
    assert!(report.bytes > 20_000_000, "{}", report.bytes);
    let check = check_database(&target).unwrap();
    assert!(check.ok(), "{check:?}");
    // The writer was not held while the copy was made: commits landed during it.
    let during = committed
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at > started && *at < ended)
        .count();
    assert!(
        during > 0,
        "no commit during the {:?} backup",
        ended - started
    );
    // One self-contained file, readable by its owner only; nothing else left in the folder.
    assert_eq!(listing(target.parent().unwrap()), ["one.db"]);
    let head = std::fs::read(&target).unwrap();
    assert_eq!(&head[..16], b"SQLite format 3\0");
    assert_eq!((head[18], head[19]), (1, 1), "rollback journal, not WAL");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_backup_never_replaces_a_file_unless_asked_and_leaves_nothing_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 3).await;
    let store = Store::open(&db).unwrap();
    let target = dir.path().join("b.db");
    std::fs::write(&target, b"an older backup").unwrap();
    let err = store.backup(target.clone(), false).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"an older backup");

    let r = store.backup(target.clone(), true).await.unwrap();
    assert_eq!(r.executions, 3);
    assert_eq!(execution_ids(&target).len(), 3);

    // A folder that does not exist: an error, nothing created.
    let before = listing(dir.path());
    let err = store
        .backup(dir.path().join("nowhere/b.db"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::File { .. }), "{err}");
    assert_eq!(listing(dir.path()), before);
}

#[tokio::test]
async fn a_backup_of_the_file_read_directly_is_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 5).await;
    let target = dir.path().join("direct.db");
    let r = backup_database(&db, &target, false).unwrap();
    assert_eq!((r.jobs, r.executions), (2, 5));
    assert_eq!(execution_ids(&target), execution_ids(&db));
    // Nothing at all: an error naming the file.
    let err = backup_database(&dir.path().join("none.db"), &dir.path().join("x.db"), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none.db"), "{err}");
    assert!(!dir.path().join("x.db").exists());
    assert!(!dir.path().join("none.db").exists(), "no database created");
}

// ---------------------------------------------------------------------------------------------
// Checks and damaged files

/// A garbage file, an empty one, a truncated copy of a real database, a WAL without its
/// database: each refused by `Store::open` as damaged, with nothing written or created.
#[tokio::test]
async fn opening_a_damaged_file_is_refused_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let good = database(dir.path(), 50).await;
    let full = dir.path().join("full.db");
    backup_database(&good, &full, false).unwrap();
    let full_bytes = std::fs::read(&full).unwrap();
    let garbage: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", garbage, "not a SQLite database"),
        ("empty", Vec::new(), "empty"),
        (
            "truncated",
            full_bytes[..full_bytes.len() / 2].to_vec(),
            "truncated",
        ),
        ("header only", full_bytes[..60].to_vec(), "truncated"),
    ];
    for (what, bytes, says) in cases {
        let case = tempfile::tempdir().unwrap();
        let db = case.path().join("cnp.db");
        std::fs::write(&db, &bytes).unwrap();
        let err = Store::open(&db)
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        assert!(err.is_damage(), "{what}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&*db.to_string_lossy()), "{what}: {msg}");
        assert!(msg.contains(says), "{what}: {msg}");
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "{what}: file changed");
        assert_eq!(listing(case.path()), ["cnp.db"], "{what}: files created");
        // `db check` agrees.
        let err = check_database(&db).unwrap_err();
        assert!(err.is_damage(), "{what}: check says {err}");
    }
    // A write-ahead log whose database is gone: SQLite would make a new database and empty it.
    let case = tempfile::tempdir().unwrap();
    let db = case.path().join("cnp.db");
    let wal = case.path().join("cnp.db-wal");
    std::fs::write(&wal, b"frames of a database that is not there").unwrap();
    let err = Store::open(&db).err().expect("opened");
    assert!(
        err.is_damage() && err.to_string().contains("write-ahead log"),
        "{err}"
    );
    assert_eq!(listing(case.path()), ["cnp.db-wal"]);
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        b"frames of a database that is not there"
    );
}

#[tokio::test]
async fn check_finds_a_damaged_page_and_a_broken_reference() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 2000).await;
    let good = dir.path().join("good.db");
    backup_database(&db, &good, false).unwrap();
    let r = check_database(&good).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.jobs, r.executions), (Some(2), Some(2000)));
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    assert_eq!(r.bytes, std::fs::metadata(&good).unwrap().len());

    // The executions table's root page overwritten: the header is fine, integrity_check is not.
    let root: usize = rusqlite::Connection::open(&good)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'executions'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize;
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&good).unwrap();
    let page = r.page_size as usize;
    bytes[page * (root - 1)..page * (root - 1) + 600].fill(0xA5);
    std::fs::write(&bad, &bytes).unwrap();
    match check_database(&bad) {
        Ok(r) => assert!(!r.ok() && !r.integrity.is_empty(), "{r:?}"),
        Err(e) => assert!(e.is_damage(), "{e}"),
    }

    // A run whose job row is gone (written with foreign keys off).
    let orphan = dir.path().join("orphan.db");
    std::fs::copy(&good, &orphan).unwrap();
    {
        let c = rusqlite::Connection::open(&orphan).unwrap();
        c.execute_batch("PRAGMA foreign_keys = OFF; DELETE FROM jobs WHERE id = 'id-a';")
            .unwrap();
    }
    let r = check_database(&orphan).unwrap();
    assert!(r.integrity.is_empty(), "{r:?}");
    assert!(!r.ok());
    assert!(
        r.foreign_keys[0].contains("executions") && r.foreign_keys[0].contains("jobs"),
        "{:?}",
        r.foreign_keys
    );
}

// ---------------------------------------------------------------------------------------------
// Restore

#[tokio::test]
async fn restore_puts_the_backup_in_place_and_keeps_the_current_database_aside() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 4).await;
    let backup = dir.path().join("b.db");
    backup_database(&db, &backup, false).unwrap();
    // After the backup: a job and runs the backup does not have, partly still in the WAL.
    let store = Store::open(&db).unwrap();
    store.insert_job(job("c")).await.unwrap();
    store
        .insert_execution(execution("id-c", "late", 10))
        .await
        .unwrap();
    store.close();
    drop(store);
    let at_stop = execution_ids(&db);

    let r = restore_database(&backup, &db, "20261124T000000Z").unwrap();
    let aside = dir.path().join("cnp.db.before-restore-20261124T000000Z");
    assert_eq!(r.kept_aside.as_deref(), Some(aside.as_path()));
    assert_eq!((r.restored.jobs, r.restored.executions), (2, 4));
    assert_eq!(job_names(&db), ["a", "b"].map(String::from).into());
    assert_eq!(execution_ids(&db), execution_ids(&backup));
    // The replaced database is whole, with what was written after the backup.
    assert_eq!(execution_ids(&aside), at_stop);
    assert!(job_names(&aside).contains("c"));
    assert!(!dir.path().join("cnp.db-wal").exists());
    assert!(!dir.path().join("cnp.db-shm").exists());
    // The service opens it and goes on.
    let store = Store::open(&db).unwrap();
    assert!(store.get_job("c".into()).await.unwrap().is_none());
    assert!(store.get_job("a".into()).await.unwrap().is_some());
    store.close();
    drop(store);
    // No temporary files left.
    let names = listing(dir.path());
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "left behind: {names:?}"
    );
}

#[tokio::test]
async fn restore_over_a_damaged_database_moves_it_aside_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 3).await;
    let backup = dir.path().join("b.db");
    backup_database(&db, &backup, false).unwrap();
    std::fs::write(&db, b"garbage, not a database").unwrap();
    let r = restore_database(&backup, &db, "20261124T010000Z").unwrap();
    let aside = r.kept_aside.unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), b"garbage, not a database");
    assert!(check_database(&db).unwrap().ok());
    assert_eq!(execution_ids(&db).len(), 3);
    // Into a folder with no database yet: nothing to keep aside.
    let fresh = dir.path().join("fresh/sub/cnp.db");
    let r = restore_database(&backup, &fresh, "20261124T020000Z").unwrap();
    assert!(r.kept_aside.is_none());
    assert_eq!(execution_ids(&fresh).len(), 3);
}

#[tokio::test]
async fn restore_refuses_a_damaged_a_newer_or_a_foreign_backup_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path(), 3).await;
    let db_bytes = std::fs::read(&db).unwrap();
    let good = dir.path().join("good.db");
    backup_database(&db, &good, false).unwrap();

    let truncated = dir.path().join("truncated.db");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 4096]).unwrap();

    let newer = dir.path().join("newer.db");
    std::fs::copy(&good, &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();

    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes(x)")
        .unwrap();

    for (backup, says) in [
        (&truncated, "truncated"),
        (&newer, "newer than this cnp"),
        (&foreign, "not a cnp database"),
        (&db, "the database itself"),
    ] {
        let before = listing(dir.path());
        let err = restore_database(backup, &db, "20261124T000000Z")
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{}: {err}", backup.display());
        assert_eq!(listing(dir.path()), before, "{}", backup.display());
        assert_eq!(std::fs::read(&db).unwrap(), db_bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Periodic backups (engine, paused time)

struct NoRunner;

impl Runner for NoRunner {
    fn run(&self, _request: RunRequest, _observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        Box::pin(async move {
            RunReport {
                outcome: Outcome::Success,
                exit_code: Some(0),
                started_at: Some(t0()),
                finished_at: t0(),
                pid: None,
                result_text: None,
                session_id: None,
                cost_usd: None,
                usage: None,
                resource_usage: None,
            }
        })
    }
}

fn spec(name: &str) -> JobSpec {
    let mut s: JobSpec =
        serde_json::from_value(serde_json::json!({ "name": name, "prompt": "hi" })).unwrap();
    s.schedule = ScheduleSpec::Manual;
    s
}

async fn engine(dir: &Path, backup: BackupSettings) -> (Engine, Store) {
    let store = Store::open_inline(&dir.join("cnp.db")).unwrap();
    let settings = EngineSettings {
        backup: Some(backup),
        ..EngineSettings::default()
    };
    let engine = Engine::start(
        store.clone(),
        Arc::new(NoRunner),
        settings,
        Clock::tokio_from(t0()),
        EventBus::default(),
    )
    .await
    .unwrap();
    (engine, store)
}

/// Sleeps on the paused clock until the engine's wall clock reads `t` (tokio jumps from timer
/// to timer).
async fn until(engine: &Engine, t: DateTime<Utc>) {
    let now = engine.clock().now();
    if t > now {
        tokio::time::sleep((t - now).to_std().unwrap()).await;
    }
}

fn hour(h: i64, m: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::hours(h) + chrono::Duration::minutes(m)
}

#[tokio::test(start_paused = true)]
async fn periodic_backups_run_every_interval_and_keep_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("backups");
    std::fs::create_dir_all(&folder).unwrap();
    // Files that are not periodic backups are never deleted.
    std::fs::write(folder.join("notes.txt"), "mine").unwrap();
    std::fs::write(folder.join("cnp-20261101T000000Z-manual.db"), "by hand").unwrap();
    let (engine, _store) = engine(
        dir.path(),
        BackupSettings {
            every: Duration::from_secs(3600),
            keep: 3,
            directory: folder.clone(),
        },
    )
    .await;
    engine.create_job(spec("a"), None).await.unwrap();
    until(&engine, hour(3, 30)).await;
    // Made between the 03:00 and the 04:00 backups.
    engine.create_job(spec("c"), None).await.unwrap();
    until(&engine, hour(5, 1)).await;

    // 00:00 (at start: none in the folder), 01:00 … 05:00; the three newest kept.
    assert_eq!(
        listing(&folder),
        [
            "cnp-20261101T000000Z-manual.db",
            "cnp-20261124T030000Z.db",
            "cnp-20261124T040000Z.db",
            "cnp-20261124T050000Z.db",
            "notes.txt",
        ]
    );
    let at3 = folder.join("cnp-20261124T030000Z.db");
    let at4 = folder.join("cnp-20261124T040000Z.db");
    assert!(check_database(&at3).unwrap().ok());
    assert_eq!(job_names(&at3), ["a".to_owned()].into());
    assert_eq!(job_names(&at4), ["a".to_owned(), "c".to_owned()].into());

    let st = engine.backup_status();
    let last = st.last.expect("last backup");
    assert_eq!(last.at, hour(5, 0));
    assert_eq!(last.trigger, "periodic");
    assert_eq!(last.path, folder.join("cnp-20261124T050000Z.db"));
    assert_eq!(st.next_at, Some(hour(6, 0)));
    assert_eq!(st.failures, 0);
    assert!(st.last_error.is_none());
    assert_eq!(st.periodic.unwrap().keep, 3);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn periodic_backups_follow_the_newest_one_found_and_survive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("backups");
    std::fs::create_dir_all(&folder).unwrap();
    // The previous instance's last backup, 10 minutes before this start.
    std::fs::write(folder.join("cnp-20261123T235000Z.db"), "older").unwrap();
    let (engine, _store) = engine(
        dir.path(),
        BackupSettings {
            every: Duration::from_secs(3600),
            keep: 5,
            directory: folder.clone(),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = engine.backup_status();
    assert_eq!(st.last.as_ref().unwrap().trigger, "found");
    assert_eq!(st.next_at, Some(hour(0, 50)), "an hour after the newest");

    // The folder disappears (replaced by a file): the 00:50 backup fails, is logged and
    // recorded, and is tried again 15 minutes later; the engine goes on.
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::write(&folder, "not a folder").unwrap();
    until(&engine, hour(0, 51)).await;
    let st = engine.backup_status();
    assert_eq!(st.failures, 1);
    let err = st.last_error.clone().expect("failure recorded");
    assert_eq!(err.at, hour(0, 50));
    assert!(err.message.contains("backups"), "{}", err.message);
    assert_eq!(st.next_at, Some(hour(1, 5)));
    assert_eq!(st.last.as_ref().unwrap().trigger, "found");
    engine
        .create_job(spec("still working"), None)
        .await
        .unwrap();

    // Fixed (the folder is made again at the next attempt): the retry succeeds, the failure is
    // cleared, the hourly rhythm resumes from it.
    std::fs::remove_file(&folder).unwrap();
    until(&engine, hour(1, 6)).await;
    let st = engine.backup_status();
    assert!(st.last_error.is_none(), "{:?}", st.last_error);
    assert_eq!(st.failures, 1);
    assert_eq!(st.last.as_ref().unwrap().at, hour(1, 5));
    assert_eq!(st.next_at, Some(hour(2, 5)));
    assert_eq!(listing(&folder), ["cnp-20261124T010500Z.db"]);
    assert!(job_names(&folder.join("cnp-20261124T010500Z.db")).contains("still working"));
    engine.shutdown(Duration::from_secs(1)).await;
}
