//! The service configuration, `claude-pilot.toml`.
//!
//! Every section and key is optional: what is missing takes the embedded default
//! ([`DEFAULT_CONFIG_TOML`] documents each). Unknown keys are errors that name the key, so a typo
//! never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::MisfirePolicy;

/// The embedded defaults, as a commented TOML file (`cnp default-config` prints it).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../claude-pilot.default.toml");

/// Name of the config file looked up in the working directory.
pub const CONFIG_FILE_NAME: &str = "claude-pilot.toml";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub job_engine: JobEngineConfig,
    pub scheduler: SchedulerConfig,
    pub executor: ExecutorConfig,
    pub notifications: NotificationsConfig,
    pub database: DatabaseConfig,
    pub manifests: ManifestsConfig,
    pub plugins: PluginsConfig,
    /// `[logging]`; `[log]` is accepted as another name for it (not both in one file).
    #[serde(alias = "log")]
    pub logging: LoggingConfig,
    /// `[telemetry]`: OpenTelemetry traces of runs over OTLP/HTTP (off unless `otlp_endpoint`).
    pub telemetry: TelemetryConfig,
    pub api: ApiConfig,
    pub dashboard: DashboardConfig,
    pub retry: RetryDefaults,
    pub cooldown: CooldownConfig,
    /// `[budget]`: caps on what all runs together spend over rolling windows (docs/budgets.md).
    pub budget: crate::model::Budget,
}

/// `[api]`: the admin HTTP API (REST + WebSocket) that the `cnp` CLI talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub enabled: bool,
    /// Listen address. Loopback unless configured otherwise; port 0 picks a free port (the
    /// bound address is written to `api-address` beside the token file). `CNP_API_BIND`
    /// overrides it.
    pub bind: String,
    /// The bearer token (generated on first start, mode 0600). Default:
    /// `<data dir>/cnp/api-token`.
    pub token_file: Option<PathBuf>,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            bind: "127.0.0.1:8377".into(),
            token_file: None,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// `[dashboard]`: the web dashboard, served by the API server under `/ui/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// A password that logs in as well as the API token does; `${VAR}` reads it from the
    /// environment. Unset: only the API token logs in.
    pub password: Option<String>,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Browsers on this machine (a loopback peer asking for a loopback host) are logged in
    /// without the token. Off unless set: any local user or program could then act as admin.
    pub trust_loopback: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            password: None,
            session_ttl: Duration::from_secs(12 * 3600),
            trust_loopback: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobEngineConfig {
    /// Runs allowed at once across all jobs.
    pub max_concurrent_jobs: u32,
    /// Executions older than this many days are deleted (when `database.cleanup_old_executions`).
    pub cleanup_retention_days: u32,
    /// How often the engine writes its heartbeat (used to tell how long it was down).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    pub metrics_enabled: bool,
    /// On SIGINT/SIGTERM: how long running jobs may take to finish before they are killed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// The longest the timer sleeps before re-reading the wall clock. The timer wakes exactly at
    /// each due instant; this only bounds how late it notices a wall-clock jump (NTP step,
    /// suspend/resume).
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// Time zone for cron jobs that do not name one (IANA name).
    pub timezone: String,
    /// Slots missed while cnp was down or stalled: 0 = skip them, 1 = run the latest once,
    /// N = run up to the N most recent. Jobs may override (`schedule.misfire`).
    pub max_missed_runs: u32,
    /// A slot is "missed" once it is this late; later than that the misfire policy decides.
    #[serde(with = "humantime_serde")]
    pub misfire_grace: Duration,
}

impl SchedulerConfig {
    pub fn misfire_policy(&self) -> MisfirePolicy {
        MisfirePolicy::from_max_missed_runs(self.max_missed_runs)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Timeout for jobs that do not set `timeout_seconds`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The Claude CLI command; may be several words (`npx @anthropic-ai/claude-code@latest`).
    pub claude_cli_path: String,
    /// How long a Claude session stays eligible for `--resume` by later runs of jobs with
    /// `execution.session: continue_job` (a job's own `execution.session_timeout` overrides it).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a run is stopped.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// At most this many bytes of one run's output are stored.
    pub max_output_bytes: usize,
    /// Longer output lines are cut to this many bytes.
    pub max_line_bytes: usize,
    /// Working directory for jobs that do not name one (default: cnp's own).
    pub working_directory: Option<PathBuf>,
    /// Extra environment for every run (jobs may override). `TZ` defaults to `UTC`.
    pub environment: std::collections::BTreeMap<String, String>,
}

/// `[notifications]`: channels, defaults, templates and rate limits (docs/notifications.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Most notifications sent per hour, in all and per channel (a channel's own
    /// `rate_limit_per_hour` overrides it for that channel); 0 = no limit.
    pub rate_limit_per_hour: u32,
    /// Message templates (`failed.txt.j2`, `webhook.json.j2`, …); missing ones use built-ins.
    pub template_directory: PathBuf,
    /// Named channels for jobs whose `notifications` name none, and for events about no job
    /// (cooldown, plugin failures).
    pub default_channels: Vec<String>,
    /// For jobs without a `notifications` block.
    pub on_success: bool,
    pub on_failure: bool,
    pub on_start: bool,
    pub on_completion: bool,
    /// Usage-limit cooldown entered/ended, to the default channels.
    pub on_cooldown: bool,
    /// A plugin trapped, timed out or failed, to the default channels.
    pub on_plugin_failure: bool,
    /// A spending cap was reached (`budget_exceeded`): to the job's channels for a job's
    /// budget, to the default channels for `[budget]`.
    pub on_budget: bool,
    /// Database writes fail for want of storage (`storage_failing`), to the default channels.
    pub on_storage_failure: bool,
    /// Base URL of API links in messages; default `http://<api.bind>`.
    pub api_url: Option<String>,
    /// Deliveries waiting at once; beyond it new ones are dropped (and recorded so).
    pub queue_capacity: usize,
    /// `[notifications.channels.<name>]`: `type = "log" | "webhook" | "email" | "system" |
    /// "plugin"` and its keys; string values may say `${ENV_VAR}`.
    pub channels: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The SQLite file. Default: `<data dir>/cnp/cnp.db` (`~/.local/share/cnp/cnp.db` on Linux).
    pub path: Option<PathBuf>,
    /// A PostgreSQL database instead of the SQLite file (`postgresql://user:pw@host:5432/db`,
    /// `?sslmode=disable|prefer|require`; `${VAR}` is taken from the environment). Several cnp
    /// instances on one database form a cluster (docs/cluster.md).
    pub url: Option<String>,
    /// PostgreSQL read connections per instance (the writer has one more).
    pub pool_size: u32,
    /// PostgreSQL: how long a run claimed by an instance stays its own without a heartbeat.
    /// When an instance dies, its runs are taken over (interrupted, retried per policy) this
    /// long after its last heartbeat.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// PostgreSQL: how often an instance renews its leases and shows itself alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Delete executions older than `job_engine.cleanup_retention_days`.
    pub cleanup_old_executions: bool,
    /// Keep at most this many finished executions per job (0 = no limit).
    pub max_execution_history: u32,
    /// Periodic online backups (`backup = { every = "24h", keep = 7, directory = "…" }`); off
    /// when unset.
    pub backup: Option<BackupConfig>,
}

/// `[database] backup`: the service copies the live database (SQLite's online backup, verified)
/// into `directory` every `every`, as `<db stem>-<UTC time>.db`, keeping the newest `keep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    pub keep: u32,
    /// Default: `backups/` beside the database.
    pub directory: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            every: Duration::from_secs(24 * 3600),
            keep: 7,
            directory: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestsConfig {
    /// Folder of YAML job manifests loaded at start. Default: `<config dir>/cnp/jobs` when it
    /// exists.
    pub directory: Option<PathBuf>,
}

/// `[plugins]`: WebAssembly component plugins (retry strategies, notifiers, condition hooks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Load plugins at all.
    pub enabled: bool,
    /// Folder of `<name>.wasm` components (each with an optional `<name>.toml` sidecar), watched
    /// for drop-in, replacement and removal. Default: `<config dir>/cnp/plugins`.
    pub directory: Option<PathBuf>,
    /// Compiled components cached across restarts. Default: `<cache dir>/cnp/plugins`.
    pub cache_directory: Option<PathBuf>,
    /// Longest a single plugin call may take (a sidecar's `[limits] timeout_ms` may lower or
    /// raise it).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Linear memory one plugin instance may use, in MiB (a sidecar may lower it).
    pub memory_limit_mb: u64,
    /// Plugin calls in flight at once; further calls wait.
    pub max_concurrent_calls: u32,
    /// Guest stdout/stderr kept per call (the rest is dropped and counted).
    pub max_output_bytes: usize,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: true,
            directory: None,
            cache_directory: None,
            call_timeout: Duration::from_secs(2),
            memory_limit_mb: 64,
            max_concurrent_calls: 32,
            max_output_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `tracing` filter, e.g. `info` or `cnp=debug` (overridden by `RUST_LOG`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[telemetry]`: each run's trace (queue wait, condition hooks, the CLI process, the retry
/// decision, notification deliveries) exported as OpenTelemetry spans over OTLP/HTTP
/// (`host/src/telemetry.rs`, docs/operations.md "Traces"). Without `otlp_endpoint` nothing is
/// set up: no exporter, no tracing layer, no spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; spans are POSTed to
    /// `<otlp_endpoint>/v1/traces` (a URL already ending in `/v1/traces` is used as it is).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// `http/protobuf` (the default) or `http/json`.
    pub protocol: OtlpProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "cnp".into(),
            protocol: OtlpProtocol::HttpProtobuf,
        }
    }
}

impl TelemetryConfig {
    /// The URL spans are sent to: `<otlp_endpoint>/v1/traces`, checked (`http`/`https`, a
    /// host). `Ok(None)`: no endpoint, no traces. The error is the message for
    /// `telemetry.otlp_endpoint`.
    pub fn traces_url(&self) -> Result<Option<String>, String> {
        let Some(raw) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let base = raw.trim();
        if base.is_empty() {
            return Err("is empty (leave the key out to send no traces)".into());
        }
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("`{base}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(format!(
                    "`{base}` must start with http:// or https:// (OTLP over HTTP, e.g. http://127.0.0.1:4318)"
                ))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{base}` names no host"));
        }
        if uri.query().is_some() {
            return Err(format!("`{base}`: a query string is not allowed"));
        }
        let base = base.trim_end_matches('/');
        Ok(Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }))
    }
}

/// `[retry]`: the retry policy of jobs whose definition has no `retry` (the manifest's `retry`
/// fields; `max_attempts = 1`, the default, means such jobs are not retried).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryDefaults {
    pub max_attempts: u32,
    pub strategy: crate::model::RetryStrategy,
    /// Seconds.
    pub initial_interval: u64,
    /// Seconds.
    pub max_interval: Option<u64>,
    pub multiplier: Option<f64>,
    /// Seconds, for `custom`.
    pub delays: Vec<u64>,
    pub jitter: bool,
    /// Runs interrupted by cnp's own stop: `retry` (one linked attempt at restart) or `fail`.
    pub on_interrupt: crate::model::OnInterrupt,
}

impl Default for RetryDefaults {
    fn default() -> Self {
        RetryDefaults {
            max_attempts: 1,
            strategy: crate::model::RetryStrategy::ExponentialBackoff,
            initial_interval: 60,
            max_interval: Some(3600),
            multiplier: Some(2.0),
            delays: Vec::new(),
            jitter: false,
            on_interrupt: crate::model::OnInterrupt::Retry,
        }
    }
}

impl RetryDefaults {
    /// As a job's retry configuration; `None` when it allows no retry.
    pub fn as_retry_config(&self) -> Option<crate::model::RetryConfig> {
        (self.max_attempts > 1).then(|| crate::model::RetryConfig {
            max_attempts: self.max_attempts,
            strategy: self.strategy,
            initial_interval: Some(self.initial_interval),
            max_interval: self.max_interval,
            multiplier: self.multiplier,
            delays: self.delays.clone(),
            jitter: self.jitter,
            plugin: None,
            plugin_config: None,
            on_interrupt: Some(self.on_interrupt),
        })
    }
}

/// `[cooldown]`: waiting out a Claude usage limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CooldownConfig {
    /// Added to the reset instant the CLI names before runs start again.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// When no reset instant is known: the first probe comes this long after the limit…
    #[serde(with = "humantime_serde")]
    pub probe_initial: Duration,
    /// …and each next one twice as long after the previous, up to this.
    #[serde(with = "humantime_serde")]
    pub probe_max: Duration,
    /// The probe: a real CLI run with this prompt and `--max-turns 1` (keep it cheap).
    pub probe_prompt: String,
    /// A probe is stopped after this long (counted as "still limited").
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for CooldownConfig {
    fn default() -> Self {
        CooldownConfig {
            margin: Duration::from_secs(30),
            probe_initial: Duration::from_secs(5 * 60),
            probe_max: Duration::from_secs(3600),
            probe_prompt: "Reply with the single word OK.".into(),
            probe_timeout: Duration::from_secs(5 * 60),
        }
    }
}

impl Default for JobEngineConfig {
    fn default() -> Self {
        JobEngineConfig {
            max_concurrent_jobs: 10,
            cleanup_retention_days: 30,
            health_check_interval: Duration::from_secs(30),
            metrics_enabled: true,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            tick_interval: Duration::from_secs(1),
            timezone: "UTC".into(),
            max_missed_runs: 3,
            misfire_grace: Duration::from_secs(60),
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            default_timeout: Duration::from_secs(15 * 60),
            claude_cli_path: "claude".into(),
            session_timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(10),
            max_output_bytes: 4 * 1024 * 1024,
            max_line_bytes: 64 * 1024,
            working_directory: None,
            environment: Default::default(),
        }
    }
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            rate_limit_per_hour: 100,
            template_directory: PathBuf::from("./templates"),
            default_channels: Vec::new(),
            on_success: false,
            on_failure: true,
            on_start: false,
            on_completion: false,
            on_cooldown: true,
            on_plugin_failure: true,
            on_budget: true,
            on_storage_failure: true,
            api_url: None,
            queue_capacity: 1024,
            channels: Default::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            path: None,
            url: None,
            pool_size: 4,
            lease: Duration::from_secs(15),
            heartbeat: Duration::from_secs(3),
            cleanup_old_executions: true,
            max_execution_history: 1000,
            backup: None,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The message names the line, column and key (toml's own report).
    #[error("invalid config file {path}:\n{message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    /// Like `Invalid`, for keys named at run time (`notifications.channels.ops.url`).
    #[error("invalid config file {path}: {key}: {message}")]
    InvalidKey {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    /// Parses and validates a config file's text. `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// The config file to use when none is named: `$CNP_CONFIG`, `./claude-pilot.toml`,
    /// `<config dir>/cnp/claude-pilot.toml`, in that order; `None` means the embedded defaults.
    pub fn discover() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CNP_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let local = PathBuf::from(CONFIG_FILE_NAME);
        if local.is_file() {
            return Some(local);
        }
        let user = dirs::config_dir()?.join("cnp").join(CONFIG_FILE_NAME);
        user.is_file().then_some(user)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if self.job_engine.max_concurrent_jobs == 0 {
            return Err(invalid(
                "job_engine.max_concurrent_jobs",
                "must be at least 1".into(),
            ));
        }
        if let Err(e) = crate::schedule::parse_timezone(&self.scheduler.timezone) {
            // the schedule error names its own field; keep just the message
            let msg = e.to_string();
            let msg = msg
                .split_once(": ")
                .map(|(_, m)| m.to_owned())
                .unwrap_or(msg);
            return Err(invalid("scheduler.timezone", msg));
        }
        if self.job_engine.health_check_interval.is_zero() {
            return Err(invalid(
                "job_engine.health_check_interval",
                "must be greater than zero".into(),
            ));
        }
        if self.database.cleanup_old_executions && self.job_engine.cleanup_retention_days == 0 {
            return Err(invalid(
                "job_engine.cleanup_retention_days",
                "must be at least 1 (or set database.cleanup_old_executions = false)".into(),
            ));
        }
        if let Some(url) = &self.database.url {
            if self.database.path.is_some() {
                return Err(invalid(
                    "database.url",
                    "set either database.path (SQLite) or database.url (PostgreSQL), not both"
                        .into(),
                ));
            }
            if self.database.backup.is_some() {
                return Err(invalid(
                    "database.backup",
                    "backups are of the SQLite file; back a PostgreSQL database up with pg_dump \
                     or the server's own backups"
                        .into(),
                ));
            }
            self.postgres_options()
                .map_err(|e| invalid("database.url", e.replace(&format!("`{url}`"), "")))?;
        }
        if self.database.pool_size == 0 || self.database.pool_size > 64 {
            return Err(invalid(
                "database.pool_size",
                "must be between 1 and 64".into(),
            ));
        }
        if self.database.heartbeat < Duration::from_millis(100)
            || self.database.heartbeat > Duration::from_secs(600)
        {
            return Err(invalid(
                "database.heartbeat",
                "must be from 100ms to 10 minutes".into(),
            ));
        }
        if self.database.lease < self.database.heartbeat * 2
            || self.database.lease > Duration::from_secs(3600)
        {
            return Err(invalid(
                "database.lease",
                "must be at least twice database.heartbeat (a lease must outlive a late \
                 heartbeat) and at most 1 hour"
                    .into(),
            ));
        }
        if let Some(b) = &self.database.backup {
            if b.every < Duration::from_secs(60) || b.every > Duration::from_secs(366 * 86_400) {
                return Err(invalid(
                    "database.backup.every",
                    "must be from 1 minute to 366 days".into(),
                ));
            }
            if b.keep == 0 {
                return Err(invalid("database.backup.keep", "must be at least 1".into()));
            }
            if b.directory
                .as_ref()
                .is_some_and(|d| d.as_os_str().is_empty())
            {
                return Err(invalid(
                    "database.backup.directory",
                    "is empty (leave it out for backups/ beside the database)".into(),
                ));
            }
        }
        if self.scheduler.tick_interval.is_zero() {
            return Err(invalid(
                "scheduler.tick_interval",
                "must be greater than zero".into(),
            ));
        }
        if self.executor.default_timeout.is_zero() {
            return Err(invalid(
                "executor.default_timeout",
                "must be greater than zero".into(),
            ));
        }
        match shell_words::split(&self.executor.claude_cli_path) {
            Ok(words) if !words.is_empty() => {}
            Ok(_) => return Err(invalid("executor.claude_cli_path", "is empty".into())),
            Err(e) => return Err(invalid("executor.claude_cli_path", e.to_string())),
        }
        if self.executor.max_line_bytes < 256 {
            return Err(invalid(
                "executor.max_line_bytes",
                "must be at least 256".into(),
            ));
        }
        if self.executor.max_output_bytes < self.executor.max_line_bytes {
            return Err(invalid(
                "executor.max_output_bytes",
                "must be at least executor.max_line_bytes".into(),
            ));
        }
        if self.dashboard.session_ttl < Duration::from_secs(60) {
            return Err(invalid(
                "dashboard.session_ttl",
                "must be at least 1 minute".into(),
            ));
        }
        if let Some(p) = &self.dashboard.password {
            if p.trim().len() < 8 {
                return Err(invalid(
                    "dashboard.password",
                    "must be at least 8 characters (or leave it unset: the API token logs in)"
                        .into(),
                ));
            }
        }
        if let Some((field, message)) = self.budget.invalid() {
            return Err(invalid(
                if field == "daily_usd" {
                    "budget.daily_usd"
                } else {
                    "budget.monthly_usd"
                },
                message,
            ));
        }
        if self.plugins.call_timeout.is_zero() {
            return Err(invalid(
                "plugins.call_timeout",
                "must be more than 0".into(),
            ));
        }
        if !(1..=4096).contains(&self.plugins.memory_limit_mb) {
            return Err(invalid("plugins.memory_limit_mb", "must be 1–4096".into()));
        }
        if !(1..=1000).contains(&self.plugins.max_concurrent_calls) {
            return Err(invalid(
                "plugins.max_concurrent_calls",
                "must be 1–1000".into(),
            ));
        }
        if let Err(e) = self.api.bind.parse::<std::net::SocketAddr>() {
            return Err(invalid(
                "api.bind",
                format!(
                    "`{}` is not an address like 127.0.0.1:8377 ({e})",
                    self.api.bind
                ),
            ));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(invalid(
                "api.max_body_bytes",
                "must be at least 1024".into(),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid(
                "retry.max_attempts",
                "must be at least 1 (1 = no retries)".into(),
            ));
        }
        if self.cooldown.probe_initial.is_zero() {
            return Err(invalid(
                "cooldown.probe_initial",
                "must be greater than zero".into(),
            ));
        }
        if self.cooldown.probe_max < self.cooldown.probe_initial {
            return Err(invalid(
                "cooldown.probe_max",
                "must be at least cooldown.probe_initial".into(),
            ));
        }
        if self.cooldown.probe_timeout.is_zero() {
            return Err(invalid(
                "cooldown.probe_timeout",
                "must be greater than zero".into(),
            ));
        }
        if self.cooldown.probe_prompt.trim().is_empty() {
            return Err(invalid("cooldown.probe_prompt", "is empty".into()));
        }
        if self.logging.level.trim().is_empty() {
            return Err(invalid("logging.level", "is empty".into()));
        }
        if let Err(message) = self.telemetry.traces_url() {
            return Err(invalid("telemetry.otlp_endpoint", message));
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "is empty".into()));
        }
        // Named channels parse and their `${VAR}` references are set (resolved again when
        // the service starts; the config itself keeps the references, not the secrets).
        if let Err(e) = crate::notify::NotifySettings::from_config(&self.notifications, None) {
            return Err(ConfigError::InvalidKey {
                path: path.to_owned(),
                key: e.key,
                message: e.message,
            });
        }
        Ok(())
    }

    /// The database file, defaulting to the user's data directory.
    pub fn database_path(&self) -> PathBuf {
        self.database
            .path
            .clone()
            .unwrap_or_else(default_data_dir_file)
    }

    /// The PostgreSQL settings when `[database] url` is set (`${VAR}`s expanded).
    pub fn postgres_options(&self) -> Result<Option<crate::store::PgOptions>, String> {
        let Some(url) = &self.database.url else {
            return Ok(None);
        };
        let url = crate::notify::config::expand_env(url, &|n| std::env::var(n).ok())?;
        let mut o = crate::store::PgOptions::new(url);
        o.pool_size = self.database.pool_size as usize;
        o.config()?;
        Ok(Some(o))
    }

    /// Where periodic backups go: `[database] backup.directory`, else `backups/` beside the
    /// database. `None` when periodic backups are off.
    pub fn backup_dir(&self) -> Option<PathBuf> {
        let b = self.database.backup.as_ref()?;
        Some(b.directory.clone().unwrap_or_else(|| {
            self.database_path()
                .parent()
                .map(|d| d.join("backups"))
                .unwrap_or_else(|| PathBuf::from("backups"))
        }))
    }

    /// Where runs' git worktrees are made (`execution.worktree`): `worktrees/` beside the
    /// database.
    pub fn worktree_dir(&self) -> PathBuf {
        self.database_path()
            .parent()
            .map(|d| d.join("worktrees"))
            .unwrap_or_else(|| PathBuf::from("worktrees"))
    }

    /// The manifest folder: configured, or `<config dir>/cnp/jobs` when that exists.
    pub fn manifest_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.manifests.directory {
            return Some(d.clone());
        }
        let d = dirs::config_dir()?.join("cnp").join("jobs");
        d.is_dir().then_some(d)
    }

    /// The plugins folder: configured, or `<config dir>/cnp/plugins`.
    pub fn plugin_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.plugins.directory {
            return Some(d.clone());
        }
        Some(dirs::config_dir()?.join("cnp").join("plugins"))
    }

    /// Where compiled plugins are cached: configured, or `<cache dir>/cnp/plugins`.
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.plugins.cache_directory {
            return Some(d.clone());
        }
        Some(dirs::cache_dir()?.join("cnp").join("plugins"))
    }

    /// The API token file: configured, or `<data dir>/cnp/api-token`.
    pub fn api_token_path(&self) -> PathBuf {
        self.api.token_file.clone().unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("cnp")
                .join("api-token")
        })
    }

    /// Where the running service writes its bound API address: `api-address` beside the
    /// token file.
    pub fn api_address_path(&self) -> PathBuf {
        let token = self.api_token_path();
        token
            .parent()
            .map(|d| d.join("api-address"))
            .unwrap_or_else(|| PathBuf::from("api-address"))
    }

    /// The default zone for cron jobs (validated at load).
    pub fn default_timezone(&self) -> chrono_tz::Tz {
        crate::schedule::parse_timezone(&self.scheduler.timezone).unwrap_or(chrono_tz::UTC)
    }
}

fn default_data_dir_file() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cnp")
        .join("cnp.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("claude-pilot.toml"))
    }

    #[test]
    fn embedded_defaults_parse_and_equal_code_defaults() {
        let parsed = parse(DEFAULT_CONFIG_TOML).expect("embedded default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn spec_example_parses() {
        let c = parse(
            r#"
[job_engine]
max_concurrent_jobs = 10
cleanup_retention_days = 30
health_check_interval = "30s"
metrics_enabled = true
[scheduler]
tick_interval = "1s"
timezone = "UTC"
max_missed_runs = 3
[executor]
default_timeout = "15m"
claude_cli_path = "npx @anthropic-ai/claude-code@latest"
session_timeout = "1h"
[notifications]
rate_limit_per_hour = 100
template_directory = "./templates"
[database]
cleanup_old_executions = true
max_execution_history = 1000
"#,
        )
        .unwrap();
        assert_eq!(c.executor.default_timeout, Duration::from_secs(900));
        assert_eq!(
            c.executor.claude_cli_path,
            "npx @anthropic-ai/claude-code@latest"
        );
        assert_eq!(c.scheduler.misfire_policy(), MisfirePolicy::RunUpTo(3));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[scheduler]\ntimezone = \"UTC\"\nmax_mised_runs = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_mised_runs"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("claude-pilot.toml"), "{err}");
    }

    #[test]
    fn unknown_section_is_named() {
        let err = parse("[schedular]\n").unwrap_err().to_string();
        assert!(err.contains("schedular"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = parse("[scheduler]\ntimezone = \"Mars/Olympus\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheduler.timezone"), "{err}");
        assert!(err.contains("Mars/Olympus"), "{err}");

        let err = parse("[executor]\ndefault_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_timeout"), "{err}");

        let err = parse("[job_engine]\nmax_concurrent_jobs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("job_engine.max_concurrent_jobs"), "{err}");

        let err = parse("[job_engine]\nhealth_check_interval = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("job_engine.health_check_interval"), "{err}");

        let err = parse("[job_engine]\ncleanup_retention_days = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("job_engine.cleanup_retention_days"), "{err}");
        parse("[job_engine]\ncleanup_retention_days = 0\n[database]\ncleanup_old_executions = false\n")
            .expect("retention off: 0 days is fine");

        let err = parse("[executor]\nclaude_cli_path = \"npx 'unterminated\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("executor.claude_cli_path"), "{err}");
    }

    #[test]
    fn database_url_selects_postgresql_and_bad_values_name_their_field() {
        std::env::set_var("CNP_TEST_PG_PASSWORD_CFG", "s3cret");
        let c = parse(
            "[database]\nurl = \"postgresql://cnp:${CNP_TEST_PG_PASSWORD_CFG}@db:5432/cnp\"\npool_size = 8\n",
        )
        .unwrap();
        let o = c.postgres_options().unwrap().unwrap();
        assert_eq!(o.url, "postgresql://cnp:s3cret@db:5432/cnp");
        assert_eq!(o.pool_size, 8);
        assert_eq!(o.display_url(), "postgresql://cnp:***@db:5432/cnp");
        assert!(Config::default().postgres_options().unwrap().is_none());
        let c = parse("[database]\nlease = \"1m\"\nheartbeat = \"500ms\"\n").unwrap();
        let e = crate::engine::EngineSettings::from_config(&c).cluster;
        assert_eq!(
            (e.lease, e.heartbeat),
            (Duration::from_secs(60), Duration::from_millis(500))
        );
        for (text, field) in [
            (
                "[database]\nurl = \"postgresql://a@b/c\"\npath = \"/x.db\"\n",
                "database.url",
            ),
            (
                "[database]\nurl = \"postgresql://a@b:nope/c\"\n",
                "database.url",
            ),
            (
                "[database]\nurl = \"postgresql://a@b/c\"\n[database.backup]\n",
                "database.backup",
            ),
            ("[database]\npool_size = 0\n", "database.pool_size"),
            ("[database]\nheartbeat = \"10ms\"\n", "database.heartbeat"),
            (
                "[database]\nlease = \"5s\"\nheartbeat = \"3s\"\n",
                "database.lease",
            ),
            ("[database]\nlease = \"2h\"\n", "database.lease"),
            ("[database]\nlease = \"soon\"\n", "lease"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn database_backup_parses_and_bad_values_name_their_field() {
        let c = parse(
            "[database]\npath = \"/srv/cnp/cnp.db\"\nbackup = { every = \"6h\", keep = 3, directory = \"/backups\" }\n",
        )
        .unwrap();
        let b = c.database.backup.as_ref().unwrap();
        assert_eq!(b.every, Duration::from_secs(6 * 3600));
        assert_eq!(b.keep, 3);
        assert_eq!(c.backup_dir(), Some(PathBuf::from("/backups")));

        // Defaults: every day, seven kept, backups/ beside the database.
        let c = parse("[database]\npath = \"/srv/cnp/cnp.db\"\n[database.backup]\n").unwrap();
        assert_eq!(c.database.backup, Some(BackupConfig::default()));
        assert_eq!(c.backup_dir(), Some(PathBuf::from("/srv/cnp/backups")));
        assert_eq!(Config::default().backup_dir(), None, "off unless set");

        for (text, field) in [
            ("backup = { every = \"30s\" }", "database.backup.every"),
            ("backup = { every = \"400days\" }", "database.backup.every"),
            ("backup = { keep = 0 }", "database.backup.keep"),
            ("backup = { directory = \"\" }", "database.backup.directory"),
        ] {
            let err = parse(&format!("[database]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = parse("[database]\nbackup = { every = 3600 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("every") && err.contains("line 2"), "{err}");
        // The commented example in the embedded defaults is valid as written.
        let example = DEFAULT_CONFIG_TOML
            .lines()
            .find_map(|l| l.strip_prefix("# backup = "))
            .expect("documented in the default config");
        let c = parse(&format!("[database]\nbackup = {example}\n")).unwrap();
        assert_eq!(c.database.backup.unwrap().keep, 7);
        let err = parse("[database]\nbackup = { evry = \"1h\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("evry"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("[scheduler\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn log_is_another_name_for_logging() {
        let c = parse("[log]\nformat = \"json\"\nlevel = \"debug\"\n").unwrap();
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.logging.level, "debug");
        // Its keys are as strict as [logging]'s.
        let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains("xml"), "{err}");
        let err = parse("[log]\nfromat = \"json\"\n").unwrap_err().to_string();
        assert!(err.contains("fromat"), "{err}");
        // One section under two names is a duplicate, not a silent merge.
        let err = parse("[log]\nformat = \"json\"\n[logging]\nlevel = \"info\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("logging"), "{err}");
    }

    #[test]
    fn telemetry_is_off_by_default_and_its_endpoint_is_checked() {
        let c = Config::default();
        assert_eq!(c.telemetry.otlp_endpoint, None);
        assert_eq!(c.telemetry.traces_url(), Ok(None));
        let c = parse(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"cnp-a\"\nprotocol = \"http/json\"\n",
        )
        .unwrap();
        assert_eq!(
            c.telemetry.traces_url().unwrap().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(c.telemetry.protocol, OtlpProtocol::HttpJson);
        assert_eq!(c.telemetry.service_name, "cnp-a");
        for (endpoint, url) in [
            (
                "https://otel.example:4318/",
                "https://otel.example:4318/v1/traces",
            ),
            ("http://collector/otlp", "http://collector/otlp/v1/traces"),
            (
                "http://collector:4318/v1/traces",
                "http://collector:4318/v1/traces",
            ),
        ] {
            let c = parse(&format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n")).unwrap();
            assert_eq!(c.telemetry.traces_url().unwrap().as_deref(), Some(url));
        }
        for bad in [
            "",
            "127.0.0.1:4318",
            "grpc://127.0.0.1:4317",
            "http://",
            "http://a b",
            "http://c:4318/?x=1",
        ] {
            let err = parse(&format!("[telemetry]\notlp_endpoint = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("telemetry.otlp_endpoint"), "{bad}: {err}");
        }
        let err = parse("[telemetry]\nprotocol = \"grpc\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc"), "{err}");
        let err = parse("[telemetry]\nservice_name = \" \"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry.service_name"), "{err}");
    }
}
