//! `cnp serve`: wires config, store, executor, manifests and the engine together and runs until
//! a shutdown signal.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Engine, EngineError, EngineSettings};
use crate::events::EventBus;
use crate::executor::{ClaudeRunner, ExecutorSettings, Runner};
use crate::manifest::{self, JobSpec, ManifestError, ScheduleSpec};
use crate::model::{Job, JobStatus, Prompt, TemplateUse};
use crate::plugins::PluginHost;
use crate::store::{JobFilter, Store};

pub mod templates;

/// Executor settings from the config.
pub fn executor_settings(config: &Config) -> ExecutorSettings {
    let mut base_env = vec![("TZ".to_owned(), "UTC".to_owned())];
    for (k, v) in &config.executor.environment {
        base_env.retain(|(bk, _)| bk != k);
        base_env.push((k.clone(), v.clone()));
    }
    ExecutorSettings {
        command: shell_words::split(&config.executor.claude_cli_path).unwrap_or_default(),
        kill_grace: config.executor.kill_grace,
        max_output_bytes: config.executor.max_output_bytes,
        max_line_bytes: config.executor.max_line_bytes,
        base_env,
        default_working_directory: config.executor.working_directory.clone(),
    }
}

/// Runs the service until `shutdown` resolves, then stops gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut engine_settings = EngineSettings::from_config(&config);
    match crate::executor::process::raise_nofile_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::debug!(before, after, "raised the open-file limit");
            }
            let cap = concurrency_cap(after);
            if engine_settings.max_concurrent_jobs > cap {
                tracing::warn!(
                    configured = engine_settings.max_concurrent_jobs,
                    effective = cap,
                    open_file_limit = after,
                    "job_engine.max_concurrent_jobs exceeds what the open-file limit allows \
                     (each running CLI holds about {FDS_PER_RUN} descriptors): runs beyond it \
                     would fail with \"too many open files\"; using the lower value"
                );
                engine_settings.max_concurrent_jobs = cap;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read/raise the open-file limit"),
    }
    let store = open_store(&config)?;

    let settings = executor_settings(&config);
    check_cli(&settings.command);
    // Also prepares cgroup v2 delegation, which must happen before the first child exists.
    tracing::info!(limits = %crate::executor::process::describe_limits_support(), "resource limits");
    crate::executor::process::guardian::start_now();
    let plugins = start_plugins(&config).await;
    // Jobs with an `executor:` plugin run in it; every other job runs the Claude CLI.
    let (max_output, max_line) = (settings.max_output_bytes, settings.max_line_bytes);
    let runner: Arc<dyn Runner> = Arc::new(crate::executor::Dispatch::new(
        Arc::new(ClaudeRunner::new(settings)),
        plugins.clone(),
        max_output,
        max_line,
    ));
    let events = EventBus::default();
    let notifications = start_notifications(&config, &store, plugins.clone(), &events)?;
    let engine = Engine::start_with_notifications(
        store.clone(),
        runner,
        engine_settings,
        Clock::System,
        events,
        plugins.clone(),
        Some(notifications.clone()),
    )
    .await
    .map_err(|e| match e {
        EngineError::Store(e) if e.is_damage() => {
            anyhow::anyhow!(damaged_database(store.path(), &e, false))
        }
        e => anyhow::Error::new(e).context("starting the engine"),
    })?;
    let stop_watching = tokio_util::sync::CancellationToken::new();
    if let Some(p) = &plugins {
        if let Err(e) = p.watch(stop_watching.clone()) {
            tracing::warn!(error = %e, "cannot watch the plugins folder: drop-in changes need a restart");
        }
    }

    let manifests = SharedManifestStatus::default();
    if let Some(dir) = config.manifest_dir() {
        // Jobs remember their file by absolute path, so the working directory does not matter.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let report = sync_manifest_dir(&engine, &dir).await;
        report.log(&dir);
        manifests.record(&dir, &report, engine.clock().now());
        if let Err(e) = watch_manifest_dir(
            engine.clone(),
            dir.clone(),
            manifests.clone(),
            stop_watching.clone(),
        ) {
            tracing::warn!(folder = %dir.display(), error = %e, "cannot watch the manifest folder: edits need a restart");
        }
    } else {
        tracing::info!("no manifest folder configured ([manifests] directory)");
    }
    let api = crate::api::start(&config, engine.clone(), manifests.clone(), plugins.clone()).await;
    if let Some(api) = &api {
        engine.set_api_address(api.local_addr().to_string());
    }
    let status = engine.status();
    tracing::info!(
        jobs = status.jobs,
        active = status.active_jobs,
        max_concurrent_jobs = status.max_concurrent_jobs,
        "cnp is running"
    );
    // Under systemd (`Type=notify`, `cnp service install`): ready now, and the watchdog pinged
    // while the runtime is alive. Nothing happens without NOTIFY_SOCKET.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let watchdog = start_watchdog();

    // PostgreSQL: every instance runs jobs; the one holding the leader lock also records the
    // schedule's slots (the engine tries for it). If it loses the lock for good, it stops.
    let lost = tokio::select! {
        _ = &mut shutdown => None,
        holder = engine.leadership_lost() => Some(holder),
    };
    if let Some(holder) = &lost {
        tracing::error!(leader = %holder, "stopping: another instance holds the cluster's timer now (a supervisor restarts this one as a member)");
    }
    stop_watching.cancel();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("shutting down: no new runs start");
    engine.shutdown(config.job_engine.shutdown_grace).await;
    // Notifications of the last runs go out (bounded: a dead server does not hold the stop).
    notifications
        .shutdown(
            config
                .job_engine
                .shutdown_grace
                .min(std::time::Duration::from_secs(10)),
        )
        .await;
    if let Some(api) = api {
        api.stop().await;
    }
    store.close();
    tracing::info!("stopped");
    match lost {
        Some(holder) => anyhow::bail!("another instance ({holder}) took over the cluster's timer"),
        None => Ok(()),
    }
}

/// When systemd asks for watchdog pings (`WatchdogSec=`), pings at half its interval from the
/// runtime: a wedged runtime stops pinging and systemd restarts the service.
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    // As sd_watchdog_enabled(3): WATCHDOG_USEC set, and WATCHDOG_PID, when set, this process.
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    if usec == 0 {
        return None;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    tracing::debug!(every = ?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

/// The configured database: PostgreSQL when `[database] url` is set, else the SQLite file.
fn open_store(config: &Config) -> anyhow::Result<Store> {
    if let Some(options) = config.postgres_options().map_err(anyhow::Error::msg)? {
        let store = Store::connect(&options).map_err(|e| {
            anyhow::Error::new(e).context(format!("connecting to {}", options.display_url()))
        })?;
        tracing::info!(database = %options.display_url(), "PostgreSQL database open");
        return Ok(store);
    }
    let db_path = config.database_path();
    let store = match Store::open(&db_path) {
        Ok(s) => s,
        Err(e) if e.is_damage() => anyhow::bail!(damaged_database(&db_path, &e, true)),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("opening {}", db_path.display())))
        }
    };
    tracing::info!(database = %db_path.display(), "database open");
    Ok(store)
}

/// What `cnp serve` says when the database is damaged: what is wrong, what cnp did not do, and
/// what to do. `at_open`: found by the checks before anything is written (else by the engine's
/// first reads, after the store opened it).
fn damaged_database(path: &Path, e: &crate::store::StoreError, at_open: bool) -> String {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let what = match e {
        crate::store::StoreError::Damaged { reason, .. } => {
            format!("the database {} is damaged: {reason}", path.display())
        }
        e => format!("the database {} is damaged: {e}", path.display()),
    };
    let untouched = if at_open {
        "cnp did not start, and it has not changed, replaced or moved the file."
    } else {
        "cnp did not start, and it has not replaced or moved the file."
    };
    format!(
        "{what}\n{untouched} To go on:\n  \
         - see what is wrong:  cnp db check --db {db}\n  \
         - restore a backup:   cnp restore <backup file> --db {db}\n    \
         (the damaged file is kept beside it as {name}.before-restore-<time>)\n  \
         Backups: `cnp backup <file>`, or [database] backup in the config; see docs/reliability.md",
        db = path.display(),
        name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

/// Descriptors one running CLI holds in cnp (three pipes, its pidfd) — rounded up.
const FDS_PER_RUN: u64 = 5;
/// Descriptors kept for everything else (database, logs, listeners).
const FDS_RESERVED: u64 = 256;

/// How many runs the open-file limit `nofile` allows at once.
pub fn concurrency_cap(nofile: u64) -> usize {
    (nofile.saturating_sub(FDS_RESERVED) / FDS_PER_RUN).max(1) as usize
}

/// Warns early when the configured Claude CLI cannot be found (runs would fail with a clear
/// error; the service itself keeps going).
fn check_cli(command: &[String]) {
    let Some(program) = command.first() else {
        return;
    };
    if program.contains('/') {
        if !Path::new(program).exists() {
            tracing::warn!(cli = %program, "the configured Claude CLI does not exist (executor.claude_cli_path)");
        }
        return;
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        tracing::warn!(
            cli = %program,
            "the Claude CLI is not on PATH: runs will fail until it is installed \
             (npm install -g @anthropic-ai/claude-code) or executor.claude_cli_path points at it"
        );
    }
}

/// The notification service as `[notifications]` says (named channels with their `${VAR}`
/// references resolved now: a missing variable stops the start, naming the key).
fn start_notifications(
    config: &Config,
    store: &Store,
    plugins: Option<PluginHost>,
    events: &EventBus,
) -> anyhow::Result<crate::notify::NotificationService> {
    let api_url = config
        .api
        .enabled
        .then(|| format!("http://{}", config.api.bind.trim()))
        // A port picked at start is not known yet: no API links then.
        .filter(|u| !u.ends_with(":0"));
    let settings = crate::notify::NotifySettings::from_config(&config.notifications, api_url)
        .map_err(|e| anyhow::anyhow!("[notifications] {e}"))?;
    let channels = settings.channels.len();
    let defaults = settings.default_channels.join(", ");
    let svc =
        crate::notify::NotificationService::start(settings, store.clone(), Clock::System, plugins);
    svc.follow_events(events);
    tracing::info!(channels, default_channels = %defaults, "notifications ready");
    Ok(svc)
}

/// The plugin runtime with the plugins folder loaded, or `None` when plugins are disabled or
/// the runtime cannot start (the service runs on without them, built-in behaviour only).
async fn start_plugins(config: &Config) -> Option<PluginHost> {
    if !config.plugins.enabled {
        tracing::info!("plugins are disabled ([plugins] enabled = false)");
        return None;
    }
    let dir = config.plugin_dir();
    let host = match PluginHost::new(
        &config.plugins,
        dir.clone(),
        config.plugin_cache_dir(),
        Clock::System,
    ) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("plugins unavailable: {e:#}");
            return None;
        }
    };
    let loaded = host.load_all().await;
    let failed = host.load_errors().len();
    tracing::info!(
        dir = %dir.map(|d| d.display().to_string()).unwrap_or_default(),
        loaded, failed, "plugins loaded"
    );
    Some(host)
}

/// The manifest folder as status displays show it: the last sync and the files whose last
/// version could not be applied (their previous version stays in force).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ManifestStatus {
    pub directory: Option<PathBuf>,
    pub last_sync: Option<chrono::DateTime<chrono::Utc>>,
    /// Jobs defined by the folder's files after the last sync.
    pub jobs: usize,
    pub prompts: usize,
    /// Templates defined by `templates/` files.
    pub templates: usize,
    /// One message per problem: `file:line: job `x`: field: what is wrong`.
    pub errors: Vec<String>,
}

/// [`ManifestStatus`], shared between the watcher and readers.
#[derive(Debug, Clone, Default)]
pub struct SharedManifestStatus(Arc<std::sync::RwLock<ManifestStatus>>);

impl SharedManifestStatus {
    pub fn get(&self) -> ManifestStatus {
        self.0.read().unwrap().clone()
    }

    fn record(&self, dir: &Path, report: &SyncReport, at: chrono::DateTime<chrono::Utc>) {
        *self.0.write().unwrap() = ManifestStatus {
            directory: Some(dir.to_owned()),
            last_sync: Some(at),
            jobs: report.created.len() + report.updated.len() + report.unchanged.len(),
            prompts: report.prompts,
            templates: report.templates,
            errors: report.errors.clone(),
        };
    }
}

/// How long the manifest folder must be quiet before a change is applied (editors write a file
/// in several steps: truncate, write, rename).
const MANIFEST_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// Follows the manifest folder (and its `prompts/`): after each burst of changes the folder is
/// synced again — new files create jobs, edited files update them in place (their history
/// stays), deleted files remove their jobs, and a file that fails keeps its last good version.
pub fn watch_manifest_dir(
    engine: Engine,
    dir: PathBuf,
    status: SharedManifestStatus,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    tracing::info!(folder = %dir.display(), "watching the manifest folder");
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv() => if ev.is_none() { return },
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = rx.recv() => if ev.is_none() { return },
                    _ = tokio::time::sleep(MANIFEST_DEBOUNCE) => break,
                }
            }
            let report = sync_manifest_dir(&engine, &dir).await;
            report.log_changes(&dir);
            status.record(&dir, &report, engine.clock().now());
        }
    });
    Ok(())
}

/// What a manifest sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub prompts: usize,
    /// Templates defined by `templates/` files (in force, changed or not).
    pub templates: usize,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    /// Jobs made through the API from a template, updated because the template changed.
    pub rerendered: Vec<String>,
    /// Files (or jobs) that could not be applied; their last good state stays in force.
    pub errors: Vec<String>,
}

impl SyncReport {
    /// Logs a re-sync: what changed, and every error (each sync repeats standing errors, so the
    /// log always shows why a file is not in force).
    pub fn log_changes(&self, dir: &Path) {
        for e in &self.errors {
            tracing::error!("manifest error: {e}");
        }
        for (what, names) in [
            ("created", &self.created),
            ("updated", &self.updated),
            ("deleted", &self.deleted),
            ("re-rendered from its template", &self.rerendered),
        ] {
            for n in names {
                tracing::info!(folder = %dir.display(), job = %n, "manifest job {what}");
            }
        }
    }

    pub fn log(&self, dir: &Path) {
        for e in &self.errors {
            tracing::error!("manifest error: {e}");
        }
        tracing::info!(
            folder = %dir.display(),
            prompts = self.prompts,
            templates = self.templates,
            created = self.created.len(),
            updated = self.updated.len(),
            unchanged = self.unchanged.len(),
            deleted = self.deleted.len(),
            errors = self.errors.len(),
            "manifests loaded"
        );
    }
}

/// Makes the jobs owned by manifest files match the folder: prompts from `prompts/*.md`,
/// templates from `templates/*.yaml`, jobs from `*.yaml`/`*.yml`. A file that fails to parse or
/// validate (or a job of it that fails to render from its template) leaves its jobs as they
/// were. Jobs made through the API from a template are re-rendered with the current templates.
pub async fn sync_manifest_dir(engine: &Engine, dir: &Path) -> SyncReport {
    let mut report = SyncReport::default();
    report.prompts = sync_prompts(engine, &dir.join("prompts"), &mut report.errors).await;
    let template_dir = dir.join("templates");
    let template_files =
        templates::sync_template_files(engine, &template_dir, &mut report.errors).await;
    report.templates = template_files.values().filter(|n| n.is_some()).count();
    let files = match manifest::manifest_files(dir) {
        Ok(f) => f,
        Err(e) => {
            report
                .errors
                .push(format!("{}: cannot read folder: {e}", dir.display()));
            return report;
        }
    };
    let tz = engine.settings().default_timezone;
    let mut parsed: Vec<(PathBuf, Result<Vec<DefinedJob>, ManifestError>)> = Vec::new();
    let mut cache = templates::TemplateCache::new();
    for f in files {
        let r = match manifest::load_manifest_entries(&f, tz) {
            Ok((text, entries)) => resolve_entries(engine, &f, &text, entries, &mut cache).await,
            Err(e) => Err(e),
        };
        parsed.push((f, r));
    }
    // Jobs owned by files in this folder, by source.
    let owned: Vec<Job> = match engine.store().list_jobs(JobFilter::default()).await {
        Ok(j) => j
            .into_iter()
            .filter(|j| {
                j.source
                    .as_deref()
                    .is_some_and(|s| Path::new(s).parent() == Some(dir))
            })
            .collect(),
        Err(e) => {
            report.errors.push(format!("cannot list jobs: {e}"));
            return report;
        }
    };
    let present: HashSet<String> = parsed.iter().map(|(p, _)| source_of(p)).collect();
    for (path, result) in upstream_files_first(parsed) {
        match result {
            Ok(specs) => apply_file(engine, &path, specs, &owned, &mut report).await,
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    let gone: Vec<&Job> = owned
        .iter()
        .filter(|j| !present.contains(j.source.as_deref().unwrap_or_default()))
        .collect();
    delete_jobs(engine, gone, &mut report).await;
    report.rerendered = templates::rerender_api_jobs(engine, &mut report.errors).await;
    templates::remove_stale_templates(engine, &template_dir, &template_files, &mut report.errors)
        .await;
    report
}

type ParsedFile = (PathBuf, Result<Vec<DefinedJob>, ManifestError>);

/// Files ordered so that a job's upstreams (`depends_on`, by name) are applied before it, and
/// each file's jobs likewise: a folder whose files depend on each other loads in one pass.
fn upstream_files_first(parsed: Vec<ParsedFile>) -> Vec<ParsedFile> {
    let mut file_of: HashMap<String, String> = HashMap::new();
    for (path, r) in &parsed {
        for (s, _) in r.iter().flatten() {
            file_of.insert(s.name.trim().to_owned(), source_of(path));
        }
    }
    let names: Vec<String> = parsed.iter().map(|(p, _)| source_of(p)).collect();
    let deps: Vec<Vec<String>> = parsed
        .iter()
        .map(|(p, r)| {
            let me = source_of(p);
            r.iter()
                .flatten()
                .flat_map(|(s, _)| s.depends_on.edges.iter())
                .filter_map(|e| file_of.get(e.job.trim()).cloned())
                .filter(|f| *f != me)
                .collect()
        })
        .collect();
    let graph: Vec<(&str, Vec<&str>)> = names
        .iter()
        .zip(&deps)
        .map(|(n, d)| (n.as_str(), d.iter().map(String::as_str).collect()))
        .collect();
    let order: Vec<String> = crate::workflow::topological(&graph)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut by_name: HashMap<String, ParsedFile> = parsed
        .into_iter()
        .map(|(p, r)| {
            let r = r.map(|specs| {
                let mut by: HashMap<String, DefinedJob> = specs
                    .iter()
                    .map(|d| (d.0.name.trim().to_owned(), d.clone()))
                    .collect();
                let g: Vec<(&str, Vec<&str>)> = specs
                    .iter()
                    .map(|(s, _)| {
                        (
                            s.name.trim(),
                            s.depends_on.edges.iter().map(|e| e.job.trim()).collect(),
                        )
                    })
                    .collect();
                crate::workflow::topological(&g)
                    .into_iter()
                    .filter_map(|n| by.remove(n))
                    .collect()
            });
            (source_of(&p), (p, r))
        })
        .collect();
    order.iter().filter_map(|n| by_name.remove(n)).collect()
}

/// Deletes jobs no file defines any more; a job another still depends on is deleted after its
/// dependents (or kept, with an error, while one still needs it).
async fn delete_jobs(engine: &Engine, mut jobs: Vec<&Job>, report: &mut SyncReport) {
    loop {
        let before = jobs.len();
        let mut left = Vec::new();
        let mut conflicts = Vec::new();
        for job in jobs {
            match engine.delete_job(&job.id).await {
                Ok(()) => report.deleted.push(job.name.clone()),
                Err(EngineError::Conflict(m)) => {
                    conflicts.push(format!("cannot delete job `{}`: {m}", job.name));
                    left.push(job);
                }
                Err(e) => report
                    .errors
                    .push(format!("cannot delete job `{}`: {e}", job.name)),
            }
        }
        if left.is_empty() {
            return;
        }
        if left.len() == before {
            // Nothing more could go this round: each job left is still needed.
            report.errors.extend(conflicts);
            return;
        }
        jobs = left;
    }
}

/// A job of a manifest file: its definition, and the template it was rendered from.
type DefinedJob = (JobSpec, Option<TemplateUse>);

/// Renders a file's templated entries with the stored templates. Any failure fails the file
/// (its jobs keep their last good definitions).
async fn resolve_entries(
    engine: &Engine,
    path: &Path,
    text: &str,
    entries: Vec<manifest::ManifestEntry>,
    cache: &mut templates::TemplateCache,
) -> Result<Vec<DefinedJob>, ManifestError> {
    let tz = engine.settings().default_timezone;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            manifest::ManifestEntry::Job(spec, _) => out.push((spec, None)),
            manifest::ManifestEntry::Templated(t) => {
                let name = t.template.trim();
                let template = cache.get(engine, name).await.map_err(|e| ManifestError {
                    path: path.to_owned(),
                    line: None,
                    message: format!("job `{}`: template: {e}", t.name),
                })?;
                let Some(template) = template else {
                    return Err(ManifestError {
                        path: path.to_owned(),
                        line: text
                            .lines()
                            .position(|l| l.contains("template:") && l.contains(name))
                            .map(|i| i + 1),
                        message: format!(
                            "job `{}`: template: no template `{name}` (add templates/{name}.yaml \
                             or create it through the API)",
                            t.name.trim()
                        ),
                    });
                };
                let (spec, usage) = manifest::render_entry(&t, &template, text, path, tz)?;
                out.push((spec, Some(usage)));
            }
        }
    }
    Ok(out)
}

fn source_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Applies one good file: creates/updates its jobs, deletes jobs it no longer defines.
async fn apply_file(
    engine: &Engine,
    path: &Path,
    specs: Vec<DefinedJob>,
    owned: &[Job],
    report: &mut SyncReport,
) {
    let source = source_of(path);
    let mine: HashMap<&str, &Job> = owned
        .iter()
        .filter(|j| j.source.as_deref() == Some(source.as_str()))
        .map(|j| (j.name.as_str(), j))
        .collect();
    let names: HashSet<String> = specs.iter().map(|s| s.0.name.trim().to_owned()).collect();
    for (spec, template) in specs {
        let name = spec.name.trim().to_owned();
        let existing = match mine.get(name.as_str()) {
            Some(j) => Some((*j).clone()),
            None => match engine.store().get_job(name.clone()).await {
                Ok(Some(j)) if j.source.as_deref() != Some(source.as_str()) => {
                    let owner = j.source.as_deref().unwrap_or("the CLI/API");
                    report.errors.push(format!(
                        "{}: job `{name}`: name: already used by a job defined in {owner}",
                        path.display()
                    ));
                    continue;
                }
                Ok(j) => j,
                Err(e) => {
                    report
                        .errors
                        .push(format!("{}: job `{name}`: {e}", path.display()));
                    continue;
                }
            },
        };
        let result = match existing {
            None => engine
                .create_job_as(spec, Some(source.clone()), template)
                .await
                .map(|_| &mut report.created),
            Some(job) if same_definition(&job, &spec) && job.template == template => {
                Ok(&mut report.unchanged)
            }
            Some(job) => engine
                .update_job_as(&job.id, spec, Some(source.clone()), template)
                .await
                .map(|_| &mut report.updated),
        };
        match result {
            Ok(list) => list.push(name),
            Err(e) => report.errors.push(format!(
                "{}: job `{name}`: {}",
                path.display(),
                strip_invalid(&e)
            )),
        }
    }
    let gone: Vec<&Job> = mine
        .values()
        .copied()
        .filter(|j| !names.contains(&j.name))
        .collect();
    delete_jobs(engine, gone, report).await;
}

fn strip_invalid(e: &EngineError) -> String {
    match e {
        EngineError::Invalid(s) => s.to_string(),
        e => e.to_string(),
    }
}

/// Whether a stored job already matches a definition (so a restart does not touch it).
pub fn same_definition(job: &Job, spec: &JobSpec) -> bool {
    let Ok(schedule) = spec.schedule.to_schedule() else {
        return false;
    };
    job.name == spec.name.trim()
        && job.prompt_id == spec.prompt_id
        && job.prompt == spec.prompt
        && job.schedule == schedule
        && job.priority == spec.priority
        && job.tags == spec.tags
        && job.execution_options == spec.execution
        && job.retry_config == spec.retry
        && job.notification_config == spec.notifications
        && job.resource_limits == spec.resource_limits
        && job.depends_on == spec.depends_on
        && job.budget == spec.budget
        && status_matches(job.status, spec)
}

fn status_matches(status: JobStatus, spec: &JobSpec) -> bool {
    // A job paused at run time stays paused while its file says it is active.
    spec.initial_status() == status
        || (status == JobStatus::Paused && spec.initial_status() == JobStatus::Active)
}

/// The definition of a stored job (the inverse of creating it from a `JobSpec`).
pub fn spec_of(job: &Job) -> JobSpec {
    JobSpec {
        name: job.name.clone(),
        prompt_id: job.prompt_id.clone(),
        prompt: job.prompt.clone(),
        schedule: ScheduleSpec::from_schedule(&job.schedule),
        priority: job.priority,
        tags: job.tags.clone(),
        enabled: job.status != JobStatus::Disabled,
        paused: job.status == JobStatus::Paused,
        execution: job.execution_options.clone(),
        retry: job.retry_config.clone(),
        notifications: job.notification_config.clone(),
        resource_limits: job.resource_limits.clone(),
        depends_on: job.depends_on.clone(),
        budget: job.budget.clone(),
        conditions: Vec::new(),
        webhook: None,
        executor: None,
    }
}

/// Loads `prompts/<id>.md` (or `.txt`): the file name is the prompt id, the content the prompt; a
/// first line `# Title` becomes the title.
async fn sync_prompts(engine: &Engine, dir: &Path, errors: &mut Vec<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("md") | Some("txt")) {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let content = match std::fs::read_to_string(&path) {
            Ok(c) if !c.trim().is_empty() => c,
            Ok(_) => {
                errors.push(format!("{}: prompt is empty", path.display()));
                continue;
            }
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let title = content
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .map(|t| t.trim().to_owned())
            .unwrap_or_else(|| id.clone());
        let existing = engine.store().get_prompt(id.clone()).await.ok().flatten();
        if existing
            .as_ref()
            .is_some_and(|p| p.content == content && p.title == title)
        {
            n += 1;
            continue;
        }
        let now = engine.clock().now();
        let prompt = Prompt {
            id: id.clone(),
            title,
            content,
            tags: existing
                .as_ref()
                .map(|p| p.tags.clone())
                .unwrap_or_default(),
            created_at: existing.as_ref().map(|p| p.created_at).unwrap_or(now),
            updated_at: now,
        };
        match engine.store().upsert_prompt(prompt).await {
            Ok(_) => n += 1,
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    n
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called (inside the runtime), not when the future is
/// first polled: a SIGTERM that arrives while the service is still starting is a graceful stop
/// too, not the default action's sudden death.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_capped_by_the_open_file_limit() {
        assert_eq!(concurrency_cap(1024), 153);
        assert_eq!(concurrency_cap(20_000), 3_948);
        assert_eq!(concurrency_cap(100), 1, "never zero");
    }
}
