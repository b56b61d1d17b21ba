//! The `cnp` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, DEFAULT_CONFIG_TOML};

#[derive(Debug, Parser)]
#[command(
    name = "cnp",
    version,
    about = "Runs Claude Code CLI jobs on schedules, unattended"
)]
pub struct Cli {
    /// Config file (default: $CNP_CONFIG, ./claude-pilot.toml, ~/.config/cnp/claude-pilot.toml,
    /// else the embedded defaults).
    #[arg(long, short = 'c', global = true, env = "CNP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler service until SIGINT/SIGTERM.
    Serve {
        /// SQLite database file (overrides [database] path).
        #[arg(long, env = "CNP_DB")]
        db: Option<PathBuf>,
        /// Folder of YAML job manifests (overrides [manifests] directory).
        #[arg(long, env = "CNP_JOBS_DIR")]
        jobs_dir: Option<PathBuf>,
        /// The Claude CLI command (overrides [executor] claude_cli_path).
        #[arg(long, env = "CNP_CLAUDE_CLI")]
        claude_cli: Option<String>,
    },
    /// Check a config file and job manifests without running anything.
    Check {
        /// Manifest files or folders to check (default: the configured manifest folder).
        paths: Vec<PathBuf>,
    },
    /// Print the default configuration (every key, commented).
    DefaultConfig,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = path.map(Path::to_path_buf).or_else(Config::discover);
    match &path {
        Some(p) => Ok((Config::load(p)?, path)),
        None => Ok((Config::default(), None)),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { paths } => {
            let (config, path) = load_config(cli.config.as_deref())?;
            match &path {
                Some(p) => println!("config {}: ok", p.display()),
                None => println!("config: embedded defaults"),
            }
            let targets = if paths.is_empty() {
                config.manifest_dir().into_iter().collect()
            } else {
                paths
            };
            Ok(check_manifests(&targets, config.default_timezone()))
        }
        Command::Serve {
            db,
            jobs_dir,
            claude_cli,
        } => {
            let (mut config, path) = load_config(cli.config.as_deref())?;
            if let Some(db) = db {
                config.database.path = Some(db);
            }
            if let Some(dir) = jobs_dir {
                config.manifests.directory = Some(dir);
            }
            if let Some(c) = claude_cli {
                config.executor.claude_cli_path = c;
            }
            init_logging(&config);
            match &path {
                Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
                None => tracing::info!("no config file: using the embedded defaults"),
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::service::run(
                config,
                crate::service::shutdown_signal(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_manifests(targets: &[PathBuf], tz: chrono_tz::Tz) -> ExitCode {
    let mut failed = false;
    for target in targets {
        let files = if target.is_dir() {
            match crate::manifest::manifest_files(target) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("{}: {e}", target.display());
                    failed = true;
                    continue;
                }
            }
        } else {
            vec![target.clone()]
        };
        for f in files {
            match crate::manifest::load_manifest(&f, tz) {
                Ok(jobs) => {
                    println!("{}: ok ({} job(s))", f.display(), jobs.len());
                    let now = chrono::Utc::now();
                    let cache = crate::schedule::CronCache::new();
                    for (spec, schedule) in jobs {
                        let next =
                            crate::schedule::CompiledSchedule::compile(&schedule, tz, now, &cache)
                                .ok()
                                .and_then(|c| c.next_after(now))
                                .map(|t| format!("next {}", t.to_rfc3339()))
                                .unwrap_or_else(|| "no scheduled runs".into());
                        println!(
                            "  {} — {} — {next}",
                            spec.name,
                            crate::schedule::describe(&schedule, tz)
                        );
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
