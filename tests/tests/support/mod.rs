//! Harness for end-to-end tests that run the real `cnp serve` binary as a child process, with
//! the fake Claude CLI (`fake-claude`) as its executor, and observe it through its SQLite file,
//! the fake's record file (`FAKE_CLAUDE_RECORD`) and its stderr log.
//!
//! Every test gets its own temp dir ([`Env`]): `claude-pilot.toml`, `cnp.db`, `jobs/` (manifests
//! and `jobs/prompts/`), `record.jsonl`. [`Cnp`] kills the service on drop, and
//! [`Env`] kills any fake CLI process it left behind (found by pid in the record file, and only
//! if its environment names this test's record file).

#![allow(dead_code)]

pub mod api;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

/// How long any single condition may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// Environment variables of the test process that must not leak into `cnp`.
const SCRUBBED_ENV: &[&str] = &[
    "CNP_CONFIG",
    "CNP_DB",
    "CNP_JOBS_DIR",
    "CNP_CLAUDE_CLI",
    "RUST_LOG",
    "CLAUDECODE",
];

// ---------------------------------------------------------------------------------------------
// Binaries

pub fn fake_claude_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-claude"))
}

/// `cnp`, next to `fake-claude` in the target directory.
///
/// Cargo builds the binaries of the package under test only, so `cnp` (another package's
/// binary) is built here, once per test process: `cargo build --workspace --bins` with the
/// same profile — the very command `scripts/test.sh` builds with, so that it is a no-op there
/// (`-p cnp-host` alone would unify features differently and rebuild much of the dependency
/// tree: 5 minutes in a fresh CI run). It never tests a stale binary.
pub fn cnp_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = fake_claude_bin().parent().expect("target dir").to_owned();
        let bin = dir.join(format!("cnp{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(workspace);
        // Cargo gives a test process the variables of the package under test (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, …). Build scripts such as ring's watch some of them
        // (`rerun-if-env-changed`), so passing them on would rebuild those crates here and then
        // again in the next plain `cargo test`: the inner build gets the outer one's view.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_CFG_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*k)
            {
                build.env_remove(&*k);
            }
        }
        // Under scripts/test.sh's shifted-clock pass the tests (and so cnp and the fake CLI)
        // run inside libfaketime; the build tool itself runs on the real clock.
        if std::env::var_os("FAKETIME").is_some() {
            for var in ["LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC"] {
                build.env_remove(var);
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build for cnp");
        assert!(status.success(), "building cnp failed ({status})");
        assert!(
            bin.is_file(),
            "cargo build did not produce {}",
            bin.display()
        );
        bin
    })
}

// ---------------------------------------------------------------------------------------------
// Config

/// The knobs tests turn; rendered as `claude-pilot.toml`.
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    pub max_concurrent_jobs: u32,
    pub shutdown_grace: &'static str,
    pub kill_grace: &'static str,
    pub misfire_grace: &'static str,
    pub max_missed_runs: u32,
    pub timezone: &'static str,
    /// `None`: the fake CLI.
    pub claude_cli_path: Option<String>,
    pub log_level: &'static str,
}

impl Default for ConfigOpts {
    fn default() -> Self {
        ConfigOpts {
            max_concurrent_jobs: 10,
            shutdown_grace: "2s",
            kill_grace: "1s",
            misfire_grace: "60s",
            max_missed_runs: 3,
            timezone: "UTC",
            claude_cli_path: None,
            log_level: "info",
        }
    }
}

fn toml_str(s: &str) -> String {
    // Basic TOML string with the escapes a path may need.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------------------------
// A test's world

/// One test's temp dir, config, manifest folder, database and record file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub db: PathBuf,
    pub jobs: PathBuf,
    pub record: PathBuf,
}

impl Env {
    pub fn new(opts: ConfigOpts) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cnp-e2e-")
            .tempdir()
            .expect("temp dir");
        // Canonical, so paths in messages match what cnp prints.
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let env = Env {
            config: root.join("claude-pilot.toml"),
            db: root.join("cnp.db"),
            jobs: root.join("jobs"),
            record: root.join("record.jsonl"),
            dir,
        };
        std::fs::create_dir_all(&env.jobs).unwrap();
        env.write_config(&opts);
        env
    }

    pub fn root(&self) -> PathBuf {
        self.config.parent().unwrap().to_owned()
    }

    pub fn write_config(&self, o: &ConfigOpts) {
        let cli = o
            .claude_cli_path
            .clone()
            .unwrap_or_else(|| fake_claude_bin().display().to_string());
        let text = format!(
            r#"[job_engine]
max_concurrent_jobs = {}
shutdown_grace = {}
health_check_interval = "1s"

[scheduler]
tick_interval = "1s"
timezone = {}
max_missed_runs = {}
misfire_grace = {}

[executor]
claude_cli_path = {}
kill_grace = {}
default_timeout = "5m"

[database]
path = {}

[manifests]
directory = {}

[plugins]
directory = {}
cache_directory = {}

[api]
bind = "127.0.0.1:0"
token_file = {}

[logging]
level = {}
"#,
            o.max_concurrent_jobs,
            toml_str(o.shutdown_grace),
            toml_str(o.timezone),
            o.max_missed_runs,
            toml_str(o.misfire_grace),
            toml_str(&cli),
            toml_str(o.kill_grace),
            toml_str(&self.db.display().to_string()),
            toml_str(&self.jobs.display().to_string()),
            toml_str(&self.plugins_dir().display().to_string()),
            toml_str(&self.root().join("plugin-cache").display().to_string()),
            toml_str(&self.root().join("api-token").display().to_string()),
            toml_str(o.log_level),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// The plugins folder the service watches (`<root>/plugins`).
    pub fn plugins_dir(&self) -> PathBuf {
        self.root().join("plugins")
    }

    /// Writes `jobs/<file>`; returns its path.
    pub fn manifest(&self, file: &str, yaml: &str) -> PathBuf {
        let p = self.jobs.join(file);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Writes `jobs/prompts/<id>.md`.
    pub fn prompt(&self, id: &str, content: &str) -> PathBuf {
        let d = self.jobs.join("prompts");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(format!("{id}.md"));
        std::fs::write(&p, content).unwrap();
        p
    }

    /// `cnp` with this test's environment (fake CLI record, cwd), no arguments yet.
    pub fn command(&self) -> Command {
        let mut c = Command::new(cnp_bin());
        for k in SCRUBBED_ENV {
            c.env_remove(k);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FAKE_CLAUDE_") {
                c.env_remove(k);
            }
        }
        c.env("FAKE_CLAUDE_RECORD", &self.record)
            .current_dir(self.root())
            .stdin(Stdio::null());
        c
    }

    /// `cnp -c <config> serve`, running in the background.
    pub fn start(&self) -> Cnp {
        self.start_with(&[])
    }

    pub fn start_with(&self, extra_env: &[(&str, &str)]) -> Cnp {
        let mut c = self.command();
        c.arg("-c").arg(&self.config).arg("serve");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        Cnp::spawn(c)
    }

    /// Runs `cnp -c <config> <args>` to completion.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        let mut c = self.command();
        c.arg("-c").arg(&self.config).args(args);
        run_with_timeout(c, Duration::from_secs(30))
    }

    /// Runs `cnp <args>` (no `-c`) to completion.
    pub fn run_cli_raw(&self, args: &[&std::ffi::OsStr]) -> Output {
        let mut c = self.command();
        c.args(args);
        run_with_timeout(c, Duration::from_secs(30))
    }

    // -- the database -----------------------------------------------------------------------

    /// A fresh read-only connection (`None` while the file does not exist yet).
    pub fn try_db(&self) -> Option<Connection> {
        if !self.db.exists() {
            return None;
        }
        let c = Connection::open_with_flags(
            &self.db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        c.busy_timeout(Duration::from_secs(5)).ok()?;
        // The schema may not be there yet while cnp starts.
        let ready: bool = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'executions'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n == 1)
            .unwrap_or(false);
        ready.then_some(c)
    }

    pub fn db(&self) -> Connection {
        self.try_db()
            .unwrap_or_else(|| panic!("database {} not ready", self.db.display()))
    }

    pub fn job(&self, name: &str) -> Option<JobRow> {
        let c = self.try_db()?;
        c.query_row(
            "SELECT id, name, status, schedule, priority, execution_count, success_count,
                    failure_count, next_run_time, last_run_time, created_at, prompt_id, last_slot
             FROM jobs WHERE name = ?1",
            [name],
            |r| {
                Ok(JobRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    status: r.get(2)?,
                    schedule: r.get(3)?,
                    priority: r.get(4)?,
                    execution_count: r.get(5)?,
                    success_count: r.get(6)?,
                    failure_count: r.get(7)?,
                    next_run_time: r.get(8)?,
                    last_run_time: r.get(9)?,
                    created_at: r.get(10)?,
                    prompt_id: r.get(11)?,
                    last_slot: r.get(12)?,
                })
            },
        )
        .optional()
        .expect("query jobs")
    }

    pub fn job_names(&self) -> Vec<String> {
        let Some(c) = self.try_db() else {
            return Vec::new();
        };
        let mut s = c.prepare("SELECT name FROM jobs ORDER BY name").unwrap();
        let names = s
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>();
        names.unwrap()
    }

    /// The executions of the job named `name`, oldest first (by queued_at, then slot).
    pub fn executions(&self, name: &str) -> Vec<ExecRow> {
        let Some(c) = self.try_db() else {
            return Vec::new();
        };
        let mut s = c
            .prepare(
                "SELECT e.id, e.job_id, e.status, e.trigger, e.slot, e.scheduled_for, e.queued_at,
                        e.started_at, e.completed_at, e.output, e.error, e.session_id, e.pid,
                        e.prompt, e.retry_count, e.exit_code
                 FROM executions e JOIN jobs j ON j.id = e.job_id
                 WHERE j.name = ?1
                 ORDER BY e.queued_at, COALESCE(e.slot, 0), e.rowid",
            )
            .unwrap();
        let rows = s
            .query_map([name], |r| {
                Ok(ExecRow {
                    id: r.get(0)?,
                    job_id: r.get(1)?,
                    status: r.get(2)?,
                    trigger: r.get(3)?,
                    slot: r.get(4)?,
                    scheduled_for: r.get(5)?,
                    queued_at: r.get(6)?,
                    started_at: r.get(7)?,
                    completed_at: r.get(8)?,
                    output: r.get(9)?,
                    error: r.get(10)?,
                    session_id: r.get(11)?,
                    pid: r.get(12)?,
                    prompt: r.get(13)?,
                    retry_count: r.get(14)?,
                    exit_code: r.get(15)?,
                })
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>();
        rows.unwrap()
    }

    pub fn logs(&self, execution_id: &str) -> Vec<(String, String)> {
        let c = self.db();
        let mut s = c
            .prepare("SELECT stream, line FROM execution_logs WHERE execution_id = ?1 ORDER BY seq")
            .unwrap();
        let rows = s
            .query_map([execution_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>();
        rows.unwrap()
    }

    /// A summary of every execution, for failure messages.
    pub fn dump(&self) -> String {
        let Some(c) = self.try_db() else {
            return "(no database)".into();
        };
        let mut s = c
            .prepare(
                "SELECT j.name, e.status, e.trigger, e.slot, e.queued_at, e.started_at,
                        e.completed_at, e.pid, e.error
                 FROM executions e JOIN jobs j ON j.id = e.job_id ORDER BY j.name, e.slot, e.queued_at",
            )
            .unwrap();
        let rows = s
            .query_map([], |r| {
                Ok(format!(
                    "{:<10} {:<11} {:<8} slot={:?} queued={:?} started={:?} done={:?} pid={:?} err={:?}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("\n")
    }

    // -- the fake CLI's record --------------------------------------------------------------

    /// One entry per fake CLI invocation, in the order they started.
    pub fn records(&self) -> Vec<Record> {
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return Vec::new();
        };
        let mut out: Vec<Record> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("bad record line ({e}): {l}"));
                Record::from_json(v)
            })
            .collect();
        out.sort_by_key(|r| r.started_unix_ns);
        out
    }

    /// Kills fake CLI processes of this test still alive (only those whose environment names
    /// this test's record file, so a recycled pid is never signalled).
    pub fn kill_leftover_fakes(&self) {
        let marker = format!("FAKE_CLAUDE_RECORD={}", self.record.display());
        for r in self.records() {
            let Ok(environ) = std::fs::read(format!("/proc/{}/environ", r.pid)) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
                let _ = kill(Pid::from_raw(r.pid as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_leftover_fakes();
    }
}

fn run_with_timeout(mut c: Command, timeout: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn cnp");
    let pid = child.id();
    let start = Instant::now();
    // Readers in threads so a full pipe cannot block the child.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut b);
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "cnp {:?} did not finish within {timeout:?}",
                c.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(POLL);
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub schedule: String,
    pub priority: i64,
    pub execution_count: i64,
    pub success_count: i64,
    pub failure_count: i64,
    pub next_run_time: Option<i64>,
    pub last_run_time: Option<i64>,
    pub created_at: i64,
    pub prompt_id: Option<String>,
    pub last_slot: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ExecRow {
    pub id: String,
    pub job_id: String,
    pub status: String,
    pub trigger: String,
    pub slot: Option<i64>,
    pub scheduled_for: Option<i64>,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub session_id: Option<String>,
    pub pid: Option<i64>,
    pub prompt: Option<String>,
    pub retry_count: i64,
    pub exit_code: Option<i64>,
}

/// One line of the fake CLI's record file.
#[derive(Debug, Clone)]
pub struct Record {
    pub pid: u32,
    pub argv: Vec<String>,
    pub stdin: Option<String>,
    pub env: HashMap<String, String>,
    pub started_unix_ns: u64,
    pub raw: Value,
}

impl Record {
    fn from_json(v: Value) -> Record {
        Record {
            pid: v["pid"].as_u64().expect("record pid") as u32,
            argv: v["argv"]
                .as_array()
                .expect("record argv")
                .iter()
                .map(|a| a.as_str().unwrap_or_default().to_owned())
                .collect(),
            stdin: v["stdin"].as_str().map(str::to_owned),
            env: v["env"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            started_unix_ns: v["started_unix_ns"].as_u64().unwrap_or(0),
            raw: v,
        }
    }

    pub fn execution_id(&self) -> Option<&str> {
        self.env.get("CNP_EXECUTION_ID").map(String::as_str)
    }

    pub fn job_id(&self) -> Option<&str> {
        self.env.get("CNP_JOB_ID").map(String::as_str)
    }
}

// ---------------------------------------------------------------------------------------------
// The service process

/// A running `cnp serve`; killed (SIGKILL) on drop if still running.
pub struct Cnp {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Cnp {
    fn spawn(mut c: Command) -> Cnp {
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn cnp serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => log2.lock().unwrap().push_str(&line),
                }
            }
        });
        Cnp {
            child,
            log,
            reader: Some(reader),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything cnp wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `None` while running.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait cnp");
        }
        self.status
    }

    /// Panics (with the log) if cnp has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!("cnp exited unexpectedly ({s}); log:\n{}", self.log());
        }
    }

    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal cnp");
        }
    }

    /// Waits for cnp to exit, up to `timeout`; the whole stderr is collected.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            if start.elapsed() > timeout {
                panic!("cnp did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str) {
        let log = self.log.clone();
        self.wait_for(&format!("log line containing {needle:?}"), || {
            log.lock().unwrap().contains(needle).then_some(())
        });
    }

    /// Polls `f` until it returns `Some`, failing (with the log) if cnp exits or [`DEADLINE`]
    /// passes.
    pub fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            self.assert_running();
            if start.elapsed() > DEADLINE {
                panic!("timed out waiting for {what}; cnp log:\n{}", self.log());
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Cnp {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- cnp log (pid {}) ----\n{}",
                self.child.id(),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Polls `f` until `Some`, up to [`DEADLINE`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

/// Whether a process is gone (or a zombie nobody reaped yet: killed all the same).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // "pid (comm) S ..." — comm may contain spaces and parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z') | Some('X'))
        }
    }
}

/// Sleeps until the wall clock is `frac_ms` into a second (so actions land between the
/// whole-second slots of 1-second interval jobs).
pub fn sleep_to_second_fraction(frac_ms: i64) {
    let now = now_ms();
    let into = now.rem_euclid(1000);
    let wait = (frac_ms - into).rem_euclid(1000);
    std::thread::sleep(Duration::from_millis(wait as u64));
}

/// The instant `secs` from now, rounded up to a whole second, as RFC 3339.
pub fn whole_second_in(secs: i64) -> (i64, String) {
    let ms = (now_ms() / 1000 + secs + 1) * 1000;
    (ms, ms_to_rfc3339(ms).replace("+00:00", "Z"))
}

/// Parses a skipped row's reason: `N missed slot(s) from A to B not run (misfire policy: P; …`.
pub fn parse_skipped(error: &str) -> Option<(u64, i64, i64, String)> {
    let (n, rest) = error.split_once(" missed slot(s) from ")?;
    let n: u64 = n.trim().rsplit(' ').next()?.parse().ok()?;
    let (from, rest) = rest.split_once(" to ")?;
    let (to, rest) = rest.split_once(" not run")?;
    let policy = rest
        .split_once("misfire policy: ")
        .and_then(|(_, p)| p.split([';', ')']).next())
        .unwrap_or_default()
        .to_owned();
    let from = DateTime::parse_from_rfc3339(from.trim())
        .ok()?
        .timestamp_millis();
    let to = DateTime::parse_from_rfc3339(to.trim())
        .ok()?
        .timestamp_millis();
    Some((n, from, to, policy))
}

/// Rows with the same (job, slot, attempt) — must be empty.
pub fn duplicate_slots(env: &Env) -> Vec<(String, i64, i64, i64)> {
    let c = env.db();
    let mut s = c
        .prepare(
            "SELECT job_id, slot, retry_count, COUNT(*) FROM executions
             WHERE slot IS NOT NULL GROUP BY job_id, slot, retry_count HAVING COUNT(*) > 1",
        )
        .unwrap();
    let rows = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>();
    rows.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Plugins

/// The built component of the plugins-workspace package `package`
/// (`plugins/target/wasm32-wasip2/release/<crate_name>.wasm`); fails the test when missing.
pub fn plugin_artifact(package: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        p.is_file(),
        "plugin component {} is missing: run scripts/build-plugins.sh first",
        p.display()
    );
    p
}

/// Puts compiled artifacts of `packages` (plugins-workspace packages) into `env`'s plugin cache,
/// so the service loads them at once instead of compiling for seconds with a debug build (a
/// `once` job's instant would pass meanwhile). They are compiled once per test process (per set
/// of packages) by `cnp plugin check` into a cache under the target directory, reused across
/// runs while valid.
pub fn seed_plugin_cache(env: &Env, packages: &[&str]) {
    static WARM: Mutex<Vec<(Vec<String>, PathBuf)>> = Mutex::new(Vec::new());
    let key: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    let mut warm = WARM.lock().unwrap();
    let cache = match warm.iter().find(|(k, _)| *k == key) {
        Some((_, cache)) => cache.clone(),
        None => {
            let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnp-e2e-plugin-cache");
            let scratch = Env::new(ConfigOpts::default());
            let config = std::fs::read_to_string(&scratch.config).unwrap();
            let own = scratch.root().join("plugin-cache").display().to_string();
            assert!(config.contains(&own), "{config}");
            std::fs::write(
                &scratch.config,
                config.replace(&own, &cache.display().to_string()),
            )
            .unwrap();
            for p in packages {
                install_plugin(&scratch, p, p, None);
            }
            let out = scratch.run_cli(&["plugin", "check"]);
            assert!(
                out.status.success(),
                "cnp plugin check failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            warm.push((key, cache.clone()));
            cache
        }
    };
    let to = env.root().join("plugin-cache");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Puts package `package`'s component into `env.plugins_dir()` as `<name>.wasm` (with
/// `sidecar` as `<name>.toml`, written first, when given). The component is copied under a
/// hidden name and renamed into place, as a careful operator would, so a watching service
/// never sees a half-written file. Returns the component's path.
pub fn install_plugin(env: &Env, name: &str, package: &str, sidecar: Option<&str>) -> PathBuf {
    let dir = env.plugins_dir();
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(text) = sidecar {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }
    let tmp = dir.join(format!(".{name}.wasm.partial"));
    std::fs::copy(plugin_artifact(package), &tmp).unwrap();
    let to = dir.join(format!("{name}.wasm"));
    std::fs::rename(&tmp, &to).unwrap();
    to
}

/// One HTTP request an [`HttpReceiver`] got.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 (a thread): records every request (head plus a
/// `Content-Length` or chunked body) and answers `status` with `Connection: close`.
pub struct HttpReceiver {
    pub port: u16,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpReceiver {
    pub fn start(status: u16) -> HttpReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let r = r.clone();
                    std::thread::spawn(move || {
                        let _ = serve_http_request(stream, &r, status);
                    });
                }
            }
        });
        HttpReceiver {
            port,
            requests,
            stop,
        }
    }

    /// `127.0.0.1:<port>`, as an `allowed_hosts` grant names it.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_http_request(
    mut stream: std::net::TcpStream,
    requests: &Mutex<Vec<HttpRequest>>,
    status: u16,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while find(&rest, b"0\r\n\r\n").is_none() {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        let mut out = Vec::new();
        let mut data = &rest[..];
        while let Some(i) = find(data, b"\r\n") {
            let size_text = String::from_utf8_lossy(&data[..i]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = i + 2;
            out.extend_from_slice(&data[start..(start + size).min(data.len())]);
            data = &data[(start + size + 2).min(data.len())..];
        }
        out
    } else {
        Vec::new()
    };
    requests.lock().unwrap().push(HttpRequest {
        method,
        path,
        headers,
        body,
    });
    let text = if status < 400 {
        "ok"
    } else {
        "receiver says no"
    };
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        if status < 400 { "OK" } else { "Error" },
        text.len()
    )?;
    stream.flush()
}

impl Cnp {
    /// Waits until a line of the log contains both `a` and `b`; returns that line.
    pub fn wait_log_line(&mut self, a: &str, b: &str) -> String {
        let log = self.log.clone();
        self.wait_for(&format!("log line containing {a:?} and {b:?}"), || {
            log.lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(a) && l.contains(b))
                .map(str::to_owned)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API

impl Env {
    /// Appends an `[api]` section to the config: a free port on 127.0.0.1 and the token file in
    /// this test's temp dir (call after [`Env::write_config`]).
    pub fn enable_api(&self) {
        // `write_config` always writes this `[api]` section now; kept for the tests that ask.
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(
            text.contains("[api]"),
            "write_config writes the [api] section"
        );
    }

    /// `<root>/api-token`, as [`Env::enable_api`] configures it.
    pub fn api_token_file(&self) -> PathBuf {
        self.root().join("api-token")
    }

    /// `<root>/api-address`: the bound address the service writes beside the token file.
    pub fn api_address_file(&self) -> PathBuf {
        self.root().join("api-address")
    }
}

impl Cnp {
    /// Waits until the admin API listens; returns its base URL (`http://127.0.0.1:PORT`) and
    /// the token.
    pub fn wait_api(&mut self, env: &Env) -> (String, String) {
        self.wait_log("admin API listening");
        let addr = std::fs::read_to_string(env.api_address_file()).expect("api-address file");
        let token = std::fs::read_to_string(env.api_token_file()).expect("api-token file");
        (format!("http://{}", addr.trim()), token.trim().to_owned())
    }
}

/// The orphan guardian `cnp serve` (pid `cnp`) started when it started, if it is alive.
pub fn guardian_of(cnp: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (comm == "cnp-guardian" && ppid == cnp).then_some(pid)
    })
}
