//! `cnp backup`, `cnp restore` and `cnp db check`: the database file itself.
//!
//! `backup` asks the running service (`POST /api/backup`: its store copies the live database on a
//! connection of its own, so the path is on the service's machine); when no service answers, or
//! with `--local`/`--db`, it reads the database file directly (SQLite's locks keep that read
//! consistent too). `restore` and `db check` always work on the file: `restore` refuses while any
//! process has the database open.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::client::{self, Client, ClientError};
use super::output::{self, Format};
use crate::store::{self, BackupReport, StoreError};

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The backup file to create, or an existing folder (the file is then
    /// `<db stem>-<UTC time>-manual.db` in it). Relative paths are taken from here.
    pub path: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub replace: bool,
    /// Read the database file directly instead of asking the running service.
    #[arg(long)]
    pub local: bool,
    /// The database to back up (implies --local; default: [database] path).
    #[arg(long, env = "CNP_DB")]
    pub db: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file to put in place of the database.
    pub backup: PathBuf,
    /// The database to replace (default: [database] path).
    #[arg(long, env = "CNP_DB")]
    pub db: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Run SQLite's integrity_check and foreign_key_check on the database; exit code 0 when it is
    /// sound, 1 when it is damaged (or missing).
    Check {
        /// The database file (default: [database] path).
        #[arg(long, env = "CNP_DB")]
        db: Option<PathBuf>,
    },
}

/// The database from `--db`, else the config's `[database] path`.
fn database(config: Option<&Path>, db: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(db) = db {
        return Ok(db);
    }
    let (config, _) = super::load_config(config)?;
    Ok(config.database_path())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(super::EXIT_FAILURE)
}

/// `1.2 MB`, `340 KB`, `512 bytes`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0} KB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b} bytes"),
    }
}

pub fn backup(
    config: Option<&Path>,
    overrides: client::Overrides,
    args: BackupArgs,
) -> anyhow::Result<ExitCode> {
    let path = absolute(&args.path);
    if !args.local && args.db.is_none() {
        let endpoint = client::discover(config, &overrides)?;
        // A large database takes a while (about 3 s per GB here, more on slow disks).
        let client = Client::with_timeout(endpoint, std::time::Duration::from_secs(3600))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let body = serde_json::json!({ "path": path, "replace": args.replace });
        let answer: Result<Value, ClientError> = rt.block_on(client.post("/api/backup", &body));
        match answer {
            Ok(v) => {
                if output::print_structured(args.format, &v)? {
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "backup {}: {}, {} job(s), {} execution(s), schema v{}, integrity ok ({} ms) — taken by the service at {}",
                    v["path"].as_str().unwrap_or_default(),
                    size(v["bytes"].as_u64().unwrap_or(0)),
                    v["jobs"],
                    v["executions"],
                    v["schema_version"],
                    v["duration_ms"],
                    client.endpoint.url
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(ClientError::NotRunning { url }) => {
                eprintln!("cnp is not running at {url}: reading the database file directly");
            }
            Err(ClientError::Api {
                status: 409,
                message,
                ..
            }) => {
                let m = message.split(" (pass").next().unwrap_or(&message);
                return Ok(fail(format!("{m} (pass --replace to replace it)")));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(e.exit_code()));
            }
        }
    }
    let db = database(config, args.db)?;
    let now = chrono::Utc::now();
    let target = crate::engine::backup_target(&path, &db, now);
    match store::backup_database(&db, &target, args.replace) {
        Ok(r) => {
            // The same document as the API's.
            let mut doc = serde_json::to_value(&r)?;
            doc["created_at"] = serde_json::to_value(now)?;
            if !output::print_structured(args.format, &doc)? {
                print_local(&r, &db);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Conflict(m)) => Ok(fail(format!("{m} (pass --replace to replace it)"))),
        Err(e) => Ok(fail(e)),
    }
}

fn print_local(r: &BackupReport, db: &Path) {
    println!(
        "backup {}: {}, {} job(s), {} execution(s), schema v{}, integrity ok ({} ms) — read from {}",
        r.path.display(),
        size(r.bytes),
        r.jobs,
        r.executions,
        r.schema_version,
        r.duration_ms,
        db.display()
    );
}

pub fn restore(config: Option<&Path>, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let db = absolute(&database(config, args.db)?);
    let backup = absolute(&args.backup);
    if !backup.is_file() {
        return Ok(fail(format!("{}: no such file", backup.display())));
    }
    let stamp = crate::engine::file_stamp(chrono::Utc::now());
    match store::restore_database(&backup, &db, &stamp) {
        Ok(r) => {
            let x = &r.restored;
            println!(
                "restored {} into {}: {} job(s), {} execution(s), schema v{}{}, integrity ok",
                backup.display(),
                db.display(),
                x.jobs,
                x.executions,
                x.schema_version,
                if x.schema_version < store::SCHEMA_VERSION {
                    format!(
                        " (migrated to v{} at the next start)",
                        store::SCHEMA_VERSION
                    )
                } else {
                    String::new()
                }
            );
            match &r.kept_aside {
                Some(p) => println!("the database it replaced is kept as {}", p.display()),
                None => println!("(there was no database to keep aside)"),
            }
            println!("start the service again with `cnp serve`");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ StoreError::InUse { .. }) => Ok(fail(format!(
            "{e}: stop the service first (a restore replaces the database file under it); \
             nothing was changed"
        ))),
        Err(e @ StoreError::Damaged { .. }) => Ok(fail(format!(
            "the backup is not usable: {e}; nothing was changed"
        ))),
        Err(e) => Ok(fail(format!("{e}; nothing was changed"))),
    }
}

pub fn db(config: Option<&Path>, cmd: DbCommand) -> anyhow::Result<ExitCode> {
    let DbCommand::Check { db } = cmd;
    let db = absolute(&database(config, db)?);
    let report = match store::check_database(&db) {
        Ok(r) => r,
        Err(e @ StoreError::Damaged { .. }) => {
            println!("database {}: DAMAGED", db.display());
            println!("  {e}");
            print_advice(&db);
            return Ok(ExitCode::from(super::EXIT_FAILURE));
        }
        Err(e) => return Ok(fail(e)),
    };
    let counts = match (report.jobs, report.executions) {
        (Some(j), Some(e)) => format!(", {j} job(s), {e} execution(s)"),
        _ => String::new(),
    };
    if report.ok() {
        println!(
            "database {}: ok — {} ({} pages of {} bytes), schema v{}{counts}",
            db.display(),
            size(report.bytes),
            report.pages,
            report.page_size,
            report.schema_version
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("database {}: DAMAGED", db.display());
    for p in &report.integrity {
        println!("  integrity_check: {p}");
    }
    for p in &report.foreign_keys {
        println!("  foreign_key_check: {p}");
    }
    print_advice(&db);
    Ok(ExitCode::from(super::EXIT_FAILURE))
}

fn print_advice(db: &Path) {
    println!(
        "restore a backup with `cnp restore <backup file> --db {}` (with the service stopped; the \
         damaged file is kept beside it)",
        db.display()
    );
}
