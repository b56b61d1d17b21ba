//! The `cnp` command line: the service itself (`serve`, `check`, `plugin check`,
//! `default-config`), the database file (`backup`, `restore`, `db check`) and the client commands that drive a running service over its API
//! (`job`, `prompt`, `template`, `status`, `cost`, `plugin list`; see docs/cli.md).
//!
//! Exit codes: 0 success; 1 failure (an API error, a failed run with `--wait`); 2 usage or
//! configuration error; 3 the service is not running; 4 the awaited run was skipped.

mod backup;
mod batch;
mod budget;
mod client;
mod costs;
mod interactive;
mod job;
mod output;
mod prompt;
mod service;
mod status;
mod template;
mod watch;
mod workflow;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, LogFormat, DEFAULT_CONFIG_TOML};

pub use client::{Client, ClientError, Endpoint};
pub use output::Format;

/// A command failed (an API error, a failed run).
pub const EXIT_FAILURE: u8 = 1;
/// Bad usage or configuration (clap's own usage errors exit 2 too).
pub const EXIT_USAGE: u8 = 2;
/// The service is not running (nothing listens at its address).
pub const EXIT_NOT_RUNNING: u8 = 3;
/// `job execute --wait`: the run was skipped (a condition, the overlap or misfire policy).
pub const EXIT_SKIPPED: u8 = 4;

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
    /// The service's API (default: the address it wrote next to its token file, else
    /// `[api] bind`, else 127.0.0.1:8377).
    #[arg(long, global = true, env = "CNP_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// The API token (default: read from `[api] token_file`).
    #[arg(long, global = true, env = "CNP_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// Admin API listen address (overrides [api] bind).
        #[arg(long, env = "CNP_API_BIND")]
        api_bind: Option<String>,
    },
    /// Check a config file and job manifests without running anything.
    Check {
        /// Manifest files or folders to check (default: the configured manifest folder).
        paths: Vec<PathBuf>,
    },
    /// Print the default configuration (every key, commented).
    DefaultConfig,
    /// WebAssembly plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Jobs on the running service.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Stored prompts on the running service.
    #[command(subcommand)]
    Prompt(prompt::PromptCommand),
    /// Workflow passes on the running service (jobs started by their upstreams).
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Job templates on the running service, and jobs made from them.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// The running service: engine, queue, cooldown, manifest and plugin errors.
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// What runs cost (as the Claude CLI reported it): top spenders, each day, the totals.
    Cost(costs::CostArgs),
    /// The Claude usage-limit cooldown: show it, or clear it by hand.
    Cooldown {
        #[command(subcommand)]
        action: Option<CooldownCommand>,
        #[arg(long, value_enum, default_value_t, global = true)]
        format: Format,
    },
    /// Spending caps: what was spent in their windows, the runs they hold; set or reset the
    /// global caps on the running service.
    Budget {
        #[command(subcommand)]
        action: Option<budget::BudgetCommand>,
        #[arg(long, value_enum, default_value_t, global = true)]
        format: Format,
    },
    /// Back the database up: a consistent copy taken while the service runs and writes
    /// (SQLite's online backup, by the service), synced to disk and verified before it counts.
    Backup(backup::BackupArgs),
    /// Put a backup in place of the database (the service must be stopped). The backup is
    /// checked first; the database it replaces is kept as `<db>.before-restore-<UTC time>`.
    Restore(backup::RestoreArgs),
    /// The database file: `cnp db check`.
    #[command(subcommand)]
    Db(backup::DbCommand),
    /// Print a shell completion script (`cnp completions bash > /etc/bash_completion.d/cnp`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, cnp(1), in roff (`cnp man > /usr/local/share/man/man1/cnp.1`).
    Man,
    /// cnp as a systemd service: install, uninstall, status (docs/operations.md).
    #[command(subcommand)]
    Service(service::ServiceCommand),
}

impl Command {
    /// Whether the command talks to the running service.
    fn is_client(&self) -> bool {
        matches!(
            self,
            Command::Job(_)
                | Command::Prompt(_)
                | Command::Workflow(_)
                | Command::Template(_)
                | Command::Status { .. }
                | Command::Cost(_)
                | Command::Cooldown { .. }
                | Command::Budget { .. }
                | Command::Plugin(PluginCommand::List { .. })
        )
    }
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum CooldownCommand {
    /// The cooldown in force (the default).
    Show,
    /// End the cooldown now: deferred runs are released in priority order.
    Clear,
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Load plugins (compile, link, check their sidecar and configuration) without running the
    /// service; prints each one's kind and grants. Exit code 1 if any fails.
    Check {
        /// `.wasm` files or folders (default: the configured plugins folder).
        paths: Vec<PathBuf>,
    },
    /// The plugins the running service has loaded, and those that failed.
    #[command(alias = "ls")]
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        restore_sigpipe();
    }
    let client_command = cli.command.is_client();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = match e.downcast_ref::<ClientError>() {
                Some(c) => c.exit_code(),
                None if client_command => EXIT_FAILURE,
                None => EXIT_USAGE,
            };
            ExitCode::from(code)
        }
    }
}

/// Printing commands end quietly when their reader goes away (`cnp job list | head`), as
/// command-line tools do, instead of panicking on a broken pipe. (The service keeps Rust's
/// default of ignoring SIGPIPE: its sockets report EPIPE as errors.)
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called at the start of `main`, before any thread exists; SIG_DFL installs no
    // handler code.
    #[allow(unsafe_code)]
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

/// Asks a yes/no question on the terminal; without one, refuses (pass `--yes`).
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("{question} — not a terminal to ask on: pass --yes to confirm");
    }
    Ok(dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()?)
}

/// Runs a client command against the running service.
fn run_client(cli: Cli) -> anyhow::Result<ExitCode> {
    let endpoint = client::discover(
        cli.config.as_deref(),
        &client::Overrides {
            api_url: cli.api_url,
            token: cli.token,
        },
    )?;
    let client = Client::new(endpoint)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Job(cmd) => job::run(&client, cmd).await,
            Command::Prompt(cmd) => prompt::run(&client, cmd).await,
            Command::Workflow(cmd) => workflow::run(&client, cmd).await,
            Command::Template(cmd) => template::run(&client, cmd).await,
            Command::Status { format } => status::status(&client, format).await,
            Command::Cost(args) => costs::run(&client, args).await,
            Command::Cooldown { action, format } => {
                status::cooldown(
                    &client,
                    matches!(action, Some(CooldownCommand::Clear)),
                    format,
                )
                .await
            }
            Command::Budget { action, format } => budget::run(&client, action, format).await,
            Command::Plugin(PluginCommand::List { format }) => {
                status::plugins(&client, format).await
            }
            _ => unreachable!("not a client command"),
        }
    })
}

fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = path.map(Path::to_path_buf).or_else(Config::discover);
    match &path {
        Some(p) => Ok((Config::load(p)?, path)),
        None => Ok((Config::default(), None)),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.command.is_client() {
        return run_client(cli);
    }
    match cli.command {
        Command::Job(_)
        | Command::Prompt(_)
        | Command::Workflow(_)
        | Command::Template(_)
        | Command::Status { .. }
        | Command::Cost(_)
        | Command::Cooldown { .. }
        | Command::Budget { .. }
        | Command::Plugin(PluginCommand::List { .. }) => unreachable!("client commands"),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cnp", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(cmd) => service::run(cli.config.as_deref(), cmd),
        Command::Backup(args) => backup::backup(
            cli.config.as_deref(),
            client::Overrides {
                api_url: cli.api_url,
                token: cli.token,
            },
            args,
        ),
        Command::Restore(args) => backup::restore(cli.config.as_deref(), args),
        Command::Db(cmd) => backup::db(cli.config.as_deref(), cmd),
        Command::Plugin(PluginCommand::Check { paths }) => {
            let (config, _) = load_config(cli.config.as_deref())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(check_plugins(&config, paths))
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
            api_bind,
        } => {
            let (mut config, path) = load_config(cli.config.as_deref())?;
            if let Some(b) = api_bind {
                config.api.bind = b;
            }
            if let Some(db) = db {
                config.database.path = Some(db);
            }
            if let Some(dir) = jobs_dir {
                config.manifests.directory = Some(dir);
            }
            if let Some(c) = claude_cli {
                config.executor.claude_cli_path = c;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            // Traces (`[telemetry] otlp_endpoint`): the exporter sends from this runtime.
            let telemetry =
                crate::telemetry::Telemetry::start(&config.telemetry, rt.handle().clone())?;
            init_logging(&config, telemetry.as_ref());
            match &path {
                Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
                None => tracing::info!("no config file: using the embedded defaults"),
            }
            if let Some(t) = &telemetry {
                tracing::info!(url = %t.url(), "telemetry: run traces are sent over OTLP");
            }
            // Signal handlers first, before anything starts (see `shutdown_signal`).
            let signals = {
                let _rt = rt.enter();
                crate::service::shutdown_signal()
            };
            let result = rt.block_on(crate::service::run(config, signals));
            // The last spans, sent while the runtime still runs.
            if let Some(t) = telemetry {
                t.shutdown();
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_manifests(targets: &[PathBuf], tz: chrono_tz::Tz) -> ExitCode {
    use crate::manifest::ManifestEntry;
    let mut failed = false;
    let mut all = Vec::new();
    let mut defined: std::collections::HashMap<String, String> = Default::default();
    for target in targets {
        // A folder's `templates/` first: its jobs are rendered with them.
        let mut templates = std::collections::HashMap::new();
        let files = if target.is_dir() {
            let tdir = target.join("templates");
            if tdir.is_dir() {
                let (t, ok) = check_templates(&tdir);
                templates = t;
                failed |= !ok;
            }
            match crate::manifest::manifest_files(target) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("{}: {e}", target.display());
                    failed = true;
                    continue;
                }
            }
        } else {
            if let Some(tdir) = target.parent().map(|p| p.join("templates")) {
                if tdir.is_dir() {
                    let (t, ok) = check_templates(&tdir);
                    templates = t;
                    failed |= !ok;
                }
            }
            vec![target.clone()]
        };
        for f in files {
            let rendered =
                crate::manifest::load_manifest_entries(&f, tz).and_then(|(text, entries)| {
                    let mut jobs = Vec::new();
                    let mut unchecked = Vec::new();
                    for entry in entries {
                        match entry {
                            ManifestEntry::Job(spec, schedule) => jobs.push((spec, schedule, None)),
                            ManifestEntry::Templated(t) => match templates.get(t.template.trim()) {
                                Some(template) => {
                                    let (spec, usage) =
                                        crate::manifest::render_entry(&t, template, &text, &f, tz)?;
                                    let schedule = spec.schedule.to_schedule().map_err(|e| {
                                        crate::manifest::ManifestError {
                                            path: f.clone(),
                                            line: None,
                                            message: format!("job `{}`: {e}", t.name),
                                        }
                                    })?;
                                    jobs.push((spec, schedule, Some(usage.name)));
                                }
                                None => unchecked.push((t.name.clone(), t.template.clone())),
                            },
                        }
                    }
                    Ok((jobs, unchecked))
                });
            match rendered {
                Ok((jobs, unchecked)) => {
                    // One name, one job: the service refuses a second file defining a name.
                    for (spec, _, _) in &jobs {
                        let name = spec.name.trim().to_owned();
                        if let Some(first) = defined.get(&name) {
                            eprintln!(
                                "error: {}: job `{name}` is already defined in {}",
                                f.display(),
                                first
                            );
                            failed = true;
                        } else {
                            defined.insert(name, f.display().to_string());
                        }
                    }
                    all.extend(jobs.iter().map(|(s, _, _)| s.clone()));
                    println!(
                        "{}: ok ({} job(s))",
                        f.display(),
                        jobs.len() + unchecked.len()
                    );
                    let now = chrono::Utc::now();
                    let cache = crate::schedule::CronCache::new();
                    for (spec, schedule, template) in jobs {
                        let next =
                            crate::schedule::CompiledSchedule::compile(&schedule, tz, now, &cache)
                                .ok()
                                .and_then(|c| c.next_after(now))
                                .map(|t| format!("next {}", t.to_rfc3339()))
                                .unwrap_or_else(|| "no scheduled runs".into());
                        let from = template
                            .map(|t| format!(" (template `{t}`)"))
                            .unwrap_or_default();
                        println!(
                            "  {}{from} — {} — {next}",
                            spec.name,
                            crate::schedule::describe(&schedule, tz)
                        );
                    }
                    for (name, template) in unchecked {
                        println!(
                            "  {name} — not checked: template `{template}` is not in templates/ \
                             (one made through the API is checked when the service loads the file)"
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
    if !failed {
        failed |= !print_dag(&all);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints the workflow graph of the checked manifests (upstream → downstream, with each edge's
/// `on`/`when`), and refuses unknown upstreams and cycles as the service would. Upstreams not
/// in these files may exist on the service (made through the API): they are noted, not refused.
fn print_dag(jobs: &[crate::manifest::JobSpec]) -> bool {
    use crate::workflow::{Graph, Node};
    let with_deps: Vec<&crate::manifest::JobSpec> =
        jobs.iter().filter(|s| !s.depends_on.is_empty()).collect();
    if with_deps.is_empty() {
        return true;
    }
    let names: std::collections::HashSet<&str> = jobs.iter().map(|s| s.name.trim()).collect();
    let mut graph = Graph::default();
    let mut ok = true;
    println!("workflow graph:");
    for s in &with_deps {
        let name = s.name.trim();
        let ups: Vec<String> = s
            .depends_on
            .edges
            .iter()
            .map(|e| e.job.trim().to_owned())
            .collect();
        if let Some(cycle) = graph.cycle_with(name, &ups) {
            eprintln!(
                "error: job `{name}`: depends_on: would make a cycle: {}",
                cycle.join(" → ")
            );
            ok = false;
            continue;
        }
        graph.set(
            name,
            Some(Node {
                name: name.to_owned(),
                any: s.depends_on.any,
                edges: s
                    .depends_on
                    .edges
                    .iter()
                    .map(|e| (e.job.trim().to_owned(), e.clone()))
                    .collect(),
            }),
        );
        let mode = if s.depends_on.any { " (any of)" } else { "" };
        for e in &s.depends_on.edges {
            let when = e
                .when
                .as_deref()
                .map(|w| format!(" when {w}"))
                .unwrap_or_default();
            let note = if names.contains(e.job.trim()) {
                ""
            } else {
                "  (not in these files: must exist on the service)"
            };
            println!(
                "  {} → {name}  [{}{when}]{mode}{note}",
                e.job.trim(),
                e.on.as_str()
            );
        }
    }
    ok
}

/// Checks `templates/*.yaml` and prints each one's result: the good templates, and whether all
/// were good.
fn check_templates(
    dir: &Path,
) -> (
    std::collections::HashMap<String, crate::job_template::JobTemplate>,
    bool,
) {
    let mut out = std::collections::HashMap::new();
    let mut failed = false;
    let files = match crate::job_template::template_files(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return (out, false);
        }
    };
    for f in files {
        let parsed = std::fs::read_to_string(&f)
            .map_err(|e| format!("{}: cannot read: {e}", f.display()))
            .and_then(|text| {
                crate::job_template::parse_template_file(&text, &f).map_err(|e| e.to_string())
            });
        match parsed {
            Ok((name, def)) => {
                let vars = def.vars.len();
                match def.into_template(
                    &name,
                    Some(f.to_string_lossy().into_owned()),
                    chrono::Utc::now(),
                ) {
                    Ok(t) if !out.contains_key(&name) => {
                        println!(
                            "{}: ok (template `{name}`, {vars} variable(s))",
                            f.display()
                        );
                        out.insert(name, t);
                    }
                    Ok(_) => {
                        eprintln!(
                            "error: {}: template `{name}`: name: defined twice",
                            f.display()
                        );
                        failed = true;
                    }
                    Err(e) => {
                        eprintln!("error: {}: template `{name}`: {e}", f.display());
                        failed = true;
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    (out, !failed)
}

async fn check_plugins(config: &Config, paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    use crate::plugins::{PluginHost, PluginKind};
    let targets = if paths.is_empty() {
        config.plugin_dir().into_iter().collect()
    } else {
        paths
    };
    let mut files = Vec::new();
    for t in &targets {
        if t.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(t)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("wasm"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(t.clone());
        }
    }
    if files.is_empty() {
        println!(
            "no plugins found in {}",
            targets
                .iter()
                .map(|t| t.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let host = PluginHost::new(
        &config.plugins,
        None,
        config.plugin_cache_dir(),
        crate::clock::Clock::System,
    )?;
    let mut failed = false;
    for f in files {
        if !host.reload(&f).await {
            let why = host
                .load_errors()
                .into_iter()
                .find(|e| e.path == f)
                .map(|e| e.message)
                .unwrap_or_else(|| "not loaded".into());
            eprintln!("error: {}: {why}", f.display());
            failed = true;
            continue;
        }
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let Some(p) = host.get(name) else { continue };
        let validated = host.validate_use(name, p.kind, None).await;
        println!(
            "{}: ok — {} plugin (cnp:plugin@{}), {} KiB, loaded in {:.1} ms{}",
            f.display(),
            p.kind,
            p.wit_version,
            p.size_bytes / 1024,
            p.load_time.as_secs_f64() * 1e3,
            if p.from_cache { " (cached)" } else { "" }
        );
        let hosts = &p.sidecar.allowed_hosts_text;
        if matches!(p.kind, PluginKind::Notifier | PluginKind::Executor) || !hosts.is_empty() {
            println!(
                "  outbound HTTP: {}",
                if hosts.is_empty() {
                    "none granted".to_owned()
                } else {
                    hosts.join(", ")
                }
            );
        }
        if p.kind == PluginKind::Executor {
            println!(
                "  limits: the job's timeout per run, {} MiB memory, {} KiB per HTTP response",
                p.sidecar.memory_bytes >> 20,
                p.sidecar.max_response_bytes >> 10
            );
        } else {
            println!(
                "  limits: {} ms per call, {} MiB memory",
                p.sidecar.timeout.as_millis(),
                p.sidecar.memory_bytes >> 20
            );
        }
        match validated {
            Ok(()) => println!("  configuration (sidecar defaults alone): accepted"),
            // Jobs may supply the missing keys; not a failure of the plugin itself.
            Err(e) => println!(
                "  configuration (sidecar defaults alone): {e} — jobs must supply the rest"
            ),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn init_logging(config: &Config, telemetry: Option<&crate::telemetry::Telemetry>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Some(t) = telemetry {
        init_logging_with_traces(config, filter, ansi, t);
        return;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.logging.format {
        LogFormat::Json => builder.json().init(),
        // Under systemd, stderr goes to the journal, which keeps its own timestamps and reads a
        // `<N>` prefix as the line's priority.
        LogFormat::Text if to_journal() => builder
            .with_ansi(false)
            .event_format(Journald(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// [`init_logging`] with an OpenTelemetry layer beside the log layer: each with its own filter
/// (the log filter as without traces, less the run spans; see `telemetry::Telemetry::layer`).
fn init_logging_with_traces(
    config: &Config,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    telemetry: &crate::telemetry::Telemetry,
) {
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let base = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let log: Boxed = match config.logging.format {
        LogFormat::Json => base.json().boxed(),
        LogFormat::Text if to_journal() => base
            .with_ansi(false)
            .event_format(Journald(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .boxed(),
        LogFormat::Text => base.boxed(),
    };
    let log = log.with_filter(filter.and(filter_fn(crate::telemetry::not_run_span)));
    tracing_subscriber::registry()
        .with(log)
        .with(telemetry.layer())
        .init();
    crate::telemetry::enable();
}

/// Whether stderr is the journal's stream (`JOURNAL_STREAM` names its device and inode).
fn to_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    // (The proc link resolves to the stream itself, a socket or a pipe.)
    let Ok(st) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    dev.parse::<u64>().ok() == Some(st.dev()) && ino.parse::<u64>().ok() == Some(st.ino())
}

/// Text log lines for the journal: the level as a syslog priority prefix (`<3>` error … `<7>`
/// debug), no timestamp of cnp's own.
struct Journald<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
