//! Backups and damaged databases on the real `cnp serve` binary, with the fake Claude CLI.
//!
//! - `cnp backup` while the service runs ten jobs every second: every execution committed
//!   before the backup is in it; `cnp restore` is refused while the service runs, then puts the
//!   backup back once it is stopped (the replaced database kept aside), and the service starts
//!   on it with those executions there.
//! - `cnp serve` on a garbage file and on a truncated copy of a real database: exit code 2, a
//!   message naming the file and what to do, the file untouched and no file created.
//! - `cnp db check` on a good database, a damaged page, garbage.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use support::api::Api;
use support::*;

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The execution ids in a database file, read directly (committed rows only).
fn ids(db: &Path) -> BTreeSet<String> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut s = c.prepare("SELECT id FROM executions").unwrap();
    let ids = s
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<BTreeSet<_>, _>>()
        .unwrap();
    ids
}

fn completed(env: &Env) -> usize {
    env.try_db()
        .and_then(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM executions WHERE status = 'completed'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .ok()
        })
        .unwrap_or(0) as usize
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Ten jobs every second; each run streams 64 KiB of output (log lines to store).
fn load(env: &Env) {
    for i in 0..10 {
        env.manifest(
            &format!("load{i}.yaml"),
            &format!(
                "name: load{i}\nprompt: \"run load{i}\"\nschedule: {{ type: interval, every_seconds: 1 }}\n"
            ),
        );
    }
}

const LOAD_ENV: &[(&str, &str)] = &[
    ("FAKE_CLAUDE_OUTPUT_BYTES", "65536"),
    ("FAKE_CLAUDE_SLEEP_MS", "200"),
];

#[test]
fn a_backup_taken_under_load_restores_every_execution_committed_before_it() {
    let env = Env::new(ConfigOpts::default());
    // Periodic backups too: the first one is taken at start (none in the folder yet).
    let auto = env.root().join("auto");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "[database]\n",
        &format!(
            "[database]\nbackup = {{ every = \"1h\", keep = 2, directory = \"{}\" }}\n",
            auto.display()
        ),
    );
    std::fs::write(&env.config, text).unwrap();
    load(&env);
    let mut cnp = env.start_with(LOAD_ENV);
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let rt = runtime();

    let periodic = cnp.wait_for("the periodic backup taken at start", || {
        std::fs::read_dir(&auto)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("cnp-"))
            })
    });
    let name = periodic.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.len() == "cnp-20261207T030000Z.db".len() && name.ends_with("Z.db"),
        "{name}"
    );

    cnp.wait_for("30 completed runs", || {
        (completed(&env) >= 30).then_some(())
    });
    // Everything committed up to here must be in the backup.
    let before = ids(&env.db);
    let backup = env.root().join("manual.db");
    let started = now_ms() / 1000;
    let out = env.run_cli(&["backup", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let said = stdout_of(&out);
    assert!(
        said.contains("taken by the service") && said.contains("integrity ok"),
        "{said}"
    );
    let in_backup = ids(&backup);
    let missing: Vec<_> = before.difference(&in_backup).collect();
    assert!(
        missing.is_empty(),
        "{} of {} executions committed before the backup are missing from it: {missing:?}",
        missing.len(),
        before.len()
    );

    // The same file again: refused, the backup kept.
    let out = env.run_cli(&["backup", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("already exists") && stderr_of(&out).contains("--replace"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(ids(&backup), in_backup);
    rt.block_on(async {
        // Only with the token.
        let sneaky = env.root().join("sneaky.db");
        let res = api
            .http
            .post(format!("{}/api/backup", api.base))
            .json(&serde_json::json!({"path": sneaky}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 401);
        assert!(!sneaky.exists());
        let (s, v) = api
            .post("/api/backup", serde_json::json!({"path": "relative.db"}))
            .await;
        assert_eq!(s.as_u16(), 422, "{v}");
        assert_eq!(v["error"]["field"], "path");
        let (s, v) = api
            .post(
                "/api/backup",
                serde_json::json!({"path": env.root().join("no/such/folder/x.db")}),
            )
            .await;
        assert_eq!(s.as_u16(), 422, "{v}");
        // Visible: the last backup in the status and the gauge.
        let (_, metrics) = api.get("/metrics").await;
        let metrics = metrics.as_str().unwrap().to_owned();
        let at: i64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cnp_last_backup_timestamp_seconds "))
            .expect("gauge")
            .parse()
            .unwrap();
        assert!(at >= started && at <= now_ms() / 1000 + 1, "{at}");
        assert!(metrics.contains("cnp_backup_failing 0"), "{metrics}");
    });
    let out = env.run_cli(&["status", "--format", "json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["backup"]["last"]["trigger"], "manual", "{st}");
    assert_eq!(st["backup"]["last"]["path"], backup.to_str().unwrap());
    assert_eq!(st["backup"]["periodic"]["keep"], 2);
    assert!(st["backup"]["next_at"].is_string(), "{st}");
    let out = env.run_cli(&["status"]);
    assert!(stdout_of(&out).contains("Backups"), "{}", stdout_of(&out));

    // The live database checks out while it is written to.
    let out = env.run_cli(&["db", "check"]);
    assert!(out.status.success(), "{}", stdout_of(&out));
    assert!(stdout_of(&out).contains(": ok"), "{}", stdout_of(&out));

    // While the service runs, a restore is refused and changes nothing.
    let out = env.run_cli(&["restore", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("in use by process") && err.contains(&cnp.pid().to_string()),
        "{err}"
    );
    assert!(err.contains("stop the service"), "{err}");
    assert!(
        !listing(&env.root())
            .iter()
            .any(|n| n.contains("before-restore")),
        "{:?}",
        listing(&env.root())
    );

    // More runs after the backup (runs are recorded 1.5 s ahead of their slot: the backup may
    // hold those of the next round or two), then a clean stop.
    let n = in_backup.len();
    cnp.wait_for("runs recorded after the backup", || {
        (completed(&env) >= n + 10).then_some(())
    });
    cnp.signal(Signal::SIGTERM);
    assert!(cnp.wait_exit(Duration::from_secs(20)).success());
    let at_stop = ids(&env.db);
    let after_backup: BTreeSet<String> = at_stop.difference(&in_backup).cloned().collect();
    assert!(
        !after_backup.is_empty(),
        "the load went on after the backup"
    );

    // Restore: the backup in place, the replaced database kept aside whole.
    let out = env.run_cli(&["restore", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let said = stdout_of(&out);
    assert!(
        said.contains("restored") && said.contains("kept as"),
        "{said}"
    );
    let aside: PathBuf = listing(&env.root())
        .into_iter()
        .find(|n| n.starts_with("cnp.db.before-restore-"))
        .map(|n| env.root().join(n))
        .expect("the replaced database is kept");
    assert_eq!(ids(&aside), at_stop);
    assert_eq!(ids(&env.db), in_backup);

    // The service starts on it: every execution committed before the backup is there, none
    // of those recorded after it.
    let mut cnp = env.start_with(LOAD_ENV);
    cnp.wait_log("cnp is running");
    let now = ids(&env.db);
    let missing: Vec<_> = before.difference(&now).collect();
    assert!(missing.is_empty(), "lost after the restore: {missing:?}");
    let back: Vec<_> = after_backup.intersection(&now).collect();
    assert!(back.is_empty(), "runs from after the backup: {back:?}");
    cnp.signal(Signal::SIGTERM);
    assert!(cnp.wait_exit(Duration::from_secs(20)).success());
}

/// Garbage with a fixed seed.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn serve_refuses_a_garbage_or_truncated_database_and_db_check_tells_them_apart() {
    let env = Env::new(ConfigOpts::default());
    env.manifest(
        "tick.yaml",
        "name: tick\nprompt: \"tick\"\nschedule: { type: interval, every_seconds: 1 }\n",
    );
    let mut cnp = env.start();
    cnp.wait_for("3 completed runs", || (completed(&env) >= 3).then_some(()));
    cnp.signal(Signal::SIGTERM);
    assert!(cnp.wait_exit(Duration::from_secs(20)).success());

    // A self-contained copy of the real database (no service: read directly).
    let real = env.root().join("real.db");
    let out = env.run_cli(&["backup", real.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    assert!(
        stderr_of(&out).contains("not running")
            && stdout_of(&out).contains("read from")
            && stdout_of(&out).contains("integrity ok"),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let real_bytes = std::fs::read(&real).unwrap();
    assert!(real_bytes.len() >= 8 * 4096, "{}", real_bytes.len());

    // `db check`: the database is sound.
    let out = env.run_cli(&["db", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));
    assert!(stdout_of(&out).contains(": ok"), "{}", stdout_of(&out));
    assert!(stdout_of(&out).contains("1 job(s)"), "{}", stdout_of(&out));

    let db = env.db.clone();
    let db_name = db.to_str().unwrap().to_owned();
    for (what, bytes, reason) in [
        ("garbage", garbage(64 * 1024), "not a SQLite database"),
        (
            "truncated",
            real_bytes[..real_bytes.len() / 2].to_vec(),
            "truncated",
        ),
    ] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{db_name}{suffix}"));
        }
        std::fs::write(&db, &bytes).unwrap();
        let files = listing(&env.root());

        let mut cnp = env.start();
        let status = cnp.wait_exit(Duration::from_secs(20));
        let log = cnp.log();
        assert_eq!(status.code(), Some(2), "{what}: {log}");
        for needle in [
            &format!("the database {db_name} is damaged"),
            reason,
            "has not changed, replaced or moved the file",
            "cnp db check",
            "cnp restore",
        ] {
            assert!(log.contains(needle), "{what}: no {needle:?} in:\n{log}");
        }
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{what}: the file changed"
        );
        assert_eq!(
            listing(&env.root()),
            files,
            "{what}: files created or removed"
        );

        let out = env.run_cli(&["db", "check"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout_of(&out));
        assert!(stdout_of(&out).contains("DAMAGED"), "{}", stdout_of(&out));
        assert!(stdout_of(&out).contains(reason), "{}", stdout_of(&out));
    }

    // A damaged page behind a sound header (the executions table's root): only the full check
    // finds it.
    let root: usize = Connection::open_with_flags(&real, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'executions'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize;
    let mut bytes = real_bytes.clone();
    let at = 4096 * (root - 1);
    bytes[at..at + 512].fill(0x5A);
    let bad = env.root().join("bad.db");
    std::fs::write(&bad, &bytes).unwrap();
    let out = env.run_cli(&["db", "check", "--db", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout_of(&out));
    assert!(stdout_of(&out).contains("DAMAGED"), "{}", stdout_of(&out));

    // A missing database: not "ok" either.
    let out = env.run_cli(&["db", "check", "--db", "/nonexistent/cnp.db"]);
    assert_eq!(out.status.code(), Some(1));

    // And the way back: restore the copy over the truncated file, which is kept aside.
    let out = env.run_cli(&["restore", real.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let out = env.run_cli(&["db", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));
    let aside = listing(&env.root())
        .into_iter()
        .find(|n| n.starts_with("cnp.db.before-restore-"))
        .expect("kept aside");
    assert_eq!(
        std::fs::read(env.root().join(aside)).unwrap(),
        real_bytes[..real_bytes.len() / 2]
    );
}
