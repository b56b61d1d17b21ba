//! A throw-away PostgreSQL server for tests: `initdb` into a temp dir and `postgres` on a free
//! loopback port, as a child of the test process (it is shut down when the test process exits,
//! even on a panic or a kill). Run as root, the server runs as the `postgres` user (or `nobody`),
//! since PostgreSQL refuses to run as root.
//!
//! The binaries come from `$CNP_PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin`, else
//! `PATH` (Debian's `postgresql` package; `scripts/test.sh` installs it when missing).

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running private server.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl PgServer {
    /// Whether the test suite asked for PostgreSQL (`CNP_TEST_BACKEND=postgres`).
    pub fn requested() -> bool {
        std::env::var("CNP_TEST_BACKEND").is_ok_and(|v| v == "postgres" || v == "postgresql")
    }

    /// One server per test process, started on first use.
    pub fn shared() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            PgServer::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for tests: {e}"))
        })
    }

    /// Starts a new server in a new temp dir.
    pub fn start() -> io::Result<PgServer> {
        let bin = find_bin()?;
        let user = run_as();
        let dir = std::env::temp_dir().join(format!(
            "cnp-pg-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if let Some((uid, gid)) = user {
            nix::unistd::chown(&dir, Some(uid.into()), Some(gid.into()))
                .map_err(io::Error::other)?;
        }
        let out = as_user(Command::new(bin.join("initdb")), user)
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = free_port()?;
        let server = PgServer {
            dir,
            bin,
            port,
            user,
            child: Mutex::new(None),
        };
        server.run()?;
        Ok(server)
    }

    /// Starts the postmaster on the existing data dir and waits until it takes connections.
    fn run(&self) -> io::Result<()> {
        let log = std::fs::File::create(self.dir.join("server.log"))?;
        if let Some((uid, gid)) = self.user {
            let _ = nix::unistd::chown(
                &self.dir.join("server.log"),
                Some(uid.into()),
                Some(gid.into()),
            );
        }
        let mut cmd = as_user(Command::new(self.bin.join("postgres")), self.user);
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(&self.dir)
            // Tests need speed, not durability of a throw-away server; clusters need room.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .args(["-c", "shared_buffers=64MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the server dies with the test process.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let child = spawn_from_lasting_thread(cmd)?;
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if run_sql(&self.url("postgres"), "SELECT 1").is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "postgres did not accept connections in 30 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a new empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let name = new_database_name();
        let _one = one_create_at_a_time();
        run_sql(&self.url("postgres"), &format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        self.url(&name)
    }

    /// A copy of database `url` as it is now, as a crash would leave it: its sessions are ended
    /// first (a copy needs that), then it is the template of a new database.
    pub fn crash_copy(&self, url: &str) -> String {
        let source = url
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .expect("a database name in the URL")
            .to_owned();
        let name = new_database_name();
        let _one = one_create_at_a_time();
        let end_sessions = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}'"
        );
        run_sql(&self.url("postgres"), &end_sessions).expect("end the sessions");
        run_sql(
            &self.url("postgres"),
            &format!("CREATE DATABASE {name} TEMPLATE {source}"),
        )
        .expect("copy a test database");
        self.url(&name)
    }

    /// The postmaster's pid (for a kill -9).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL, as a crash would (no shutdown, no checkpoint).
    pub fn kill9(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The backends notice the postmaster is gone and exit; wait until the port is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("data/postmaster.pid"));
    }

    /// Starts the server again after [`PgServer::kill9`] (crash recovery runs).
    pub fn restart(&self) -> io::Result<()> {
        self.run()
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_database_name() -> String {
    format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    )
}

/// One CREATE DATABASE at a time: it copies its template, which no other session may use then.
fn one_create_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CREATING: Mutex<()> = Mutex::new(());
    CREATING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `cmd` from a thread that lives as long as the process: the parent-death signal fires
/// when the spawning *thread* ends, and a test's thread ends long before the process does.
fn spawn_from_lasting_thread(cmd: Command) -> io::Result<Child> {
    type Request = (Command, std::sync::mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}

/// Runs SQL statements on `url` (on a thread of its own: the blocking client cannot run on a
/// tokio runtime's thread, where tests call this).
pub fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let describe = |e: postgres::Error| match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(describe)?;
        c.batch_execute(&sql).map_err(describe)
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_owned())?
}

fn as_user(mut cmd: Command, user: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
        // initdb and postgres look at HOME and the cwd; root's may be unreadable to them.
        cmd.current_dir("/").env("HOME", "/tmp");
    }
    cmd
}

/// PostgreSQL refuses to run as root: then the `postgres` user (Debian's package makes it), or
/// `nobody`.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    ["postgres", "nobody"].iter().find_map(|name| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
    })
}

fn find_bin() -> io::Result<PathBuf> {
    if let Some(b) = std::env::var_os("CNP_PG_BIN") {
        return Ok(PathBuf::from(b));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .ok_or_else(|| {
            io::Error::other(
                "PostgreSQL's initdb is not installed (Debian: apt-get install postgresql; or set CNP_PG_BIN)",
            )
        })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs a query on `url` and returns its rows, every column as text (`NULL` as `None`) — cast
/// in SQL (`::text`) what is not text already. On a thread of its own, as [`run_sql`].
pub fn query(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
        let rows = c.query(&sql, &[]).map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect())
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_owned())?
}
