//! The data model: jobs, prompts and executions, as stored and as sent over the wire.
//!
//! Field names follow the user's specification (SPEC.md, "Data model"). [`Job`] and
//! [`JobExecution`] export TypeScript types through `ts-rs` (`cargo test -p cnp-host export_bindings`
//! writes them to `host/bindings/`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// Lowest priority a job can have.
pub const PRIORITY_MIN: u8 = 1;
/// Highest (most urgent) priority a job can have.
pub const PRIORITY_MAX: u8 = 10;
/// Priority of a job that does not name one.
pub const PRIORITY_DEFAULT: u8 = 5;

/// A scheduled piece of work: which prompt to send to Claude, when, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[ts(export)]
pub struct Job {
    /// Stable identifier (UUID v7 for jobs created by cnp).
    pub id: String,
    /// Unique, human-readable name.
    pub name: String,
    /// The stored prompt this job runs. `None` when the job carries an inline prompt.
    pub prompt_id: Option<String>,
    /// Inline prompt text (manifests may give the prompt directly instead of a `prompt_id`).
    pub prompt: Option<String>,
    /// The cron expression, for cron jobs (mirrors `schedule.expression`).
    pub cron_expression: Option<String>,
    /// When the job runs.
    pub schedule: Schedule,
    pub status: JobStatus,
    pub job_type: JobType,
    /// 1 (least urgent) to 10 (most urgent).
    pub priority: u8,
    pub execution_options: ExecutionOptions,
    pub retry_config: Option<RetryConfig>,
    pub notification_config: Option<NotificationConfig>,
    pub resource_limits: Option<ResourceLimits>,
    /// Caps on what the job's runs may spend over rolling windows (`budget:`; docs/budgets.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Free-form labels; the CLI selects jobs by tag.
    pub tags: Vec<String>,
    /// Upstream jobs whose runs trigger this one (a workflow; see docs/workflows.md). Written
    /// as a list (all must be satisfied) or `{any_of: [...]}`.
    #[serde(default, skip_serializing_if = "DependsOn::is_empty")]
    #[ts(type = "unknown")]
    pub depends_on: DependsOn,
    /// Where the job was defined: `None` for jobs made through the CLI/API, or the manifest file
    /// that owns it.
    pub source: Option<String>,
    /// The job template this job was made from, with its variables; `None` for jobs defined
    /// directly. A change to the template re-renders the job (docs/workflows.md).
    #[serde(default)]
    pub template: Option<TemplateUse>,
    pub execution_count: u64,
    pub failure_count: u64,
    pub avg_execution_time_ms: f64,
    /// Completed runs / (completed + failed) runs, 0.0–1.0; 0.0 before the first finished run.
    /// Cancelled runs count in `execution_count` but neither as success nor failure.
    pub success_rate: f64,
    pub next_run_time: Option<DateTime<Utc>>,
    pub last_run_time: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether the scheduler considers a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Scheduled: fires at its next slot.
    Active,
    /// Temporarily stopped by a user; slots passing while paused are not run on resume.
    Paused,
    /// Switched off by its definition (`enabled: false`); run-now still works.
    Disabled,
}

/// The shape of a job's schedule, a summary of [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    Cron,
    Interval,
    Once,
    /// Runs only when asked (run-now / delayed run).
    Manual,
}

/// When a job fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// A cron expression (5 fields, 6 with seconds, or an `@daily`-style alias) evaluated in an
    /// IANA time zone.
    Cron {
        expression: String,
        /// IANA zone name; `None` uses `scheduler.timezone` from the config.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        misfire: Option<MisfirePolicy>,
    },
    /// Every `every_seconds`, counted from `start_at` (or the job's creation).
    Interval {
        every_seconds: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        misfire: Option<MisfirePolicy>,
    },
    /// Exactly once, at an instant.
    Once { at: DateTime<Utc> },
    /// Never by itself; only run-now or a delayed run.
    Manual,
}

impl Schedule {
    pub fn job_type(&self) -> JobType {
        match self {
            Schedule::Cron { .. } => JobType::Cron,
            Schedule::Interval { .. } => JobType::Interval,
            Schedule::Once { .. } => JobType::Once,
            Schedule::Manual => JobType::Manual,
        }
    }

    pub fn misfire(&self) -> Option<MisfirePolicy> {
        match self {
            Schedule::Cron { misfire, .. } | Schedule::Interval { misfire, .. } => *misfire,
            _ => None,
        }
    }
}

/// What to do with slots that came due while cnp was down or stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Record the missed slots as skipped; run nothing.
    Skip,
    /// Run the most recent missed slot once.
    RunLatest,
    /// Run up to N of the most recent missed slots, oldest first.
    RunUpTo(u32),
}

impl MisfirePolicy {
    /// The policy the config's `scheduler.max_missed_runs` stands for.
    pub fn from_max_missed_runs(n: u32) -> Self {
        match n {
            0 => MisfirePolicy::Skip,
            1 => MisfirePolicy::RunLatest,
            n => MisfirePolicy::RunUpTo(n),
        }
    }

    /// How many of the missed slots to run.
    pub fn runs(self) -> u32 {
        match self {
            MisfirePolicy::Skip => 0,
            MisfirePolicy::RunLatest => 1,
            MisfirePolicy::RunUpTo(n) => n,
        }
    }
}

/// What happens when a slot comes due while `max_parallel` runs of the job are already going.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, TS, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Keep the new run queued until a running one finishes.
    #[default]
    Queue,
    /// Record the new run as skipped.
    Skip,
}

/// How the Claude CLI is run for a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionOptions {
    /// Kill the run after this long; `None` uses `executor.default_timeout`.
    pub timeout_seconds: Option<u64>,
    /// How many runs of this job may run at once (default 1).
    pub max_parallel: Option<u32>,
    /// What to do with a run that would exceed `max_parallel`.
    pub overlap: OverlapPolicy,
    pub working_directory: Option<String>,
    pub environment: BTreeMap<String, String>,
    /// `--model`
    pub model: Option<String>,
    /// `--fallback-model`
    pub fallback_model: Option<String>,
    /// `--max-turns`
    pub max_turns: Option<u32>,
    /// `--max-budget-usd`
    pub max_budget_usd: Option<f64>,
    /// `--allowedTools`
    pub allowed_tools: Vec<String>,
    /// `--disallowedTools`
    pub disallowed_tools: Vec<String>,
    /// `--permission-mode` (default, acceptEdits, auto, bypassPermissions, manual, dontAsk, plan)
    pub permission_mode: Option<String>,
    /// `--append-system-prompt`
    pub append_system_prompt: Option<String>,
    /// `--add-dir`, one per entry
    pub add_dirs: Vec<String>,
    /// `--mcp-config`
    pub mcp_config: Option<String>,
    /// `--resume <session id>`: continue an earlier conversation.
    pub resume_session: Option<String>,
    /// `--continue`: continue the most recent conversation in the working directory.
    pub continue_session: bool,
    /// Run in a git worktree of its own, made for the run from `repo` (see [`WorktreeSpec`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worktree: Option<WorktreeSpec>,
    /// Which Claude session a run uses: `new` (the default: a new conversation each run) or
    /// `continue_job` (resume the session of this job's latest successful run while it is
    /// younger than `session_timeout`; runs of the job then run one at a time).
    #[serde(skip_serializing_if = "SessionMode::is_new")]
    pub session: SessionMode,
    /// For `session: continue_job`: how old a session may be and still be resumed (seconds, or
    /// a duration like `"30m"`); `None` uses `[executor] session_timeout`.
    #[serde(
        deserialize_with = "seconds::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = seconds::schema)]
    pub session_timeout: Option<u64>,
    /// For a run started by its upstreams (`depends_on`): continue the Claude session of the
    /// upstream run (`--resume <its session id>`; the first upstream in `depends_on` order that
    /// reported one) instead of starting a new conversation.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resume_upstream_session: bool,
    /// Any further arguments, passed as they are.
    pub extra_args: Vec<String>,
    /// Condition-hook plugins asked, in order, just before each run: the first that says skip
    /// or defer decides. (Manifests give them as a top-level `conditions:` list.)
    pub conditions: Vec<PluginRef>,
    /// The job's webhook trigger (manifests give it as a top-level `webhook:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// An executor plugin that does the job's work instead of the Claude CLI, with the job's
    /// configuration for it (manifests give it as a top-level `executor:`); `None`: the CLI.
    /// `${VAR}` in its configuration is filled in from cnp's environment at each call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<PluginRef>,
}

/// A job's webhook trigger (docs/operations.md#webhooks): `POST /api/hooks/<job name or id>`,
/// signed with `secret`, runs the job; the prompt sees the request's JSON as `{{ payload }}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The HMAC-SHA256 key, as `${VAR}`: read from cnp's environment when a request comes (never
    /// written in a file or stored).
    pub secret: String,
    /// How requests are signed.
    #[serde(default)]
    pub signature: WebhookSignature,
    /// Larger bodies are refused with 413 (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u64>,
}

/// How webhook requests are signed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, TS, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WebhookSignature {
    /// GitHub's: `X-Hub-Signature-256: sha256=<hex HMAC of the body>`, the delivery id in
    /// `X-GitHub-Delivery`.
    #[default]
    Github,
    /// `X-Signature: sha256=<hex HMAC of "<X-Timestamp>.<body>">` with `X-Timestamp` (unix
    /// seconds) within 5 minutes of cnp's clock; an optional `X-Delivery-Id`.
    Generic,
}

/// Spending caps over rolling windows: a job's `budget:` and the config's `[budget]`. Costs are
/// the CLI's `total_cost_usd` of runs that ended in the window (docs/budgets.md).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"daily_usd": 5.0, "monthly_usd": 100.0}))]
pub struct Budget {
    /// The most the runs that ended in the last 24 hours may have cost, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// The most the runs that ended in the last 30 days may have cost, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    /// When a cap is reached, stop the runs going too (default: they finish; only new runs are
    /// held).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard_stop: bool,
}

impl Budget {
    /// Whether any cap is set.
    pub fn is_capped(&self) -> bool {
        self.daily_usd.is_some() || self.monthly_usd.is_some()
    }

    /// A cap that is not a finite number ≥ 0, as `(field, message)`.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        [
            ("daily_usd", self.daily_usd),
            ("monthly_usd", self.monthly_usd),
        ]
        .into_iter()
        .find_map(|(field, v)| match v {
            Some(v) if !v.is_finite() || v < 0.0 => {
                Some((field, format!("must be a number of USD ≥ 0, got {v}")))
            }
            _ => None,
        })
    }
}

/// A git worktree per run: made from `repo` at `base` on a new branch before the run, the CLI
/// runs in it, and afterwards its diff stat and commits are recorded and it is removed or kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorktreeSpec {
    /// The repository (a path to its checkout).
    pub repo: String,
    /// What the worktree starts from: a branch, tag or commit (default `HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The new branch's name, a template over `job` (the job's name, made branch-safe) and
    /// `run` (the execution id); default `cnp/{{job}}/{{run}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// When to keep the worktree after the run: `on_failure` (default), `always`, `never`.
    #[serde(default)]
    pub keep: KeepWorktree,
}

/// When a run's worktree outlives the run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, TS, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum KeepWorktree {
    /// Kept when the run did not complete (to look at what it did); removed after a success.
    #[default]
    OnFailure,
    Always,
    Never,
}

/// What a run's worktree became (`executions.worktree`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, TS, utoipa::ToSchema)]
pub struct WorktreeReport {
    pub repo: String,
    pub path: String,
    pub branch: String,
    /// The commit it started from.
    pub base_commit: String,
    /// `git diff --stat` of everything the run changed (committed or not) against the base.
    pub diff_stat: String,
    /// The commits the run made: `<sha> <subject>`, oldest first.
    pub commits: Vec<String>,
    /// Whether the worktree was left in place.
    pub kept: bool,
    /// Why not removed, or what went wrong removing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Which Claude session a job's runs use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, TS, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// A new conversation every run.
    #[default]
    New,
    /// Resume the session of the job's latest successful run while it is younger than the
    /// session timeout; else a new one.
    ContinueJob,
}

impl SessionMode {
    pub fn is_new(&self) -> bool {
        *self == SessionMode::New
    }
}

/// A job's use of a plugin: its name (the `.wasm` file's stem) and the job's own configuration
/// for it, merged over the plugin's sidecar defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub plugin: String,
    #[serde(default)]
    #[ts(type = "Record<string, unknown> | null")]
    pub config: Option<serde_json::Value>,
}

/// How failed runs are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub strategy: RetryStrategy,
    /// Seconds before the first retry (fixed delay, or the start of a backoff); also written
    /// `delay`, and as a duration (`90s`, `5m`).
    #[serde(default, alias = "delay", deserialize_with = "seconds::opt")]
    #[schema(schema_with = seconds::schema)]
    pub initial_interval: Option<u64>,
    /// Upper bound on any delay, in seconds (or a duration).
    #[serde(default, deserialize_with = "seconds::opt")]
    #[schema(schema_with = seconds::schema)]
    pub max_interval: Option<u64>,
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Delays in seconds for `custom`.
    #[serde(default)]
    pub delays: Vec<u64>,
    #[serde(default)]
    pub jitter: bool,
    /// For `custom`: a retry-strategy plugin that decides each delay (instead of `delays`).
    /// When it fails, the built-in delays (`delays`, else exponential backoff) apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The job's configuration for `plugin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(type = "Record<string, unknown> | null")]
    pub plugin_config: Option<serde_json::Value>,
    /// A run cut short by a crash, kill or forced shutdown of cnp: `retry` (the default when
    /// the job has a retry policy) records one linked attempt at restart, counted against
    /// `max_attempts`; `fail` leaves it `interrupted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_interrupt: Option<OnInterrupt>,
}

impl RetryConfig {
    /// Whether a run of this policy that cnp's stop interrupted is tried again.
    pub fn retries_interrupted(&self) -> bool {
        self.on_interrupt.unwrap_or_default() == OnInterrupt::Retry
    }
}

/// Whole seconds written as a number (`90`) or a duration (`"90s"`, `"1m 30s"`).
mod seconds {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Number(u64),
        Text(String),
    }

    /// The schema of such a field: a whole number of seconds, a duration text, or null.
    pub fn schema() -> utoipa::openapi::schema::Schema {
        serde_json::from_value(serde_json::json!({
            "type": ["integer", "string", "null"],
            "minimum": 0,
            "description": "Whole seconds (`90`) or a duration (`\"90s\"`, `\"1m 30s\"`)",
            "examples": [90, "5m"],
        }))
        .expect("a valid schema")
    }

    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Secs>::deserialize(d)? {
            None => Ok(None),
            Some(Secs::Number(n)) => Ok(Some(n)),
            Some(Secs::Text(t)) => {
                let t = t.trim();
                if let Ok(n) = t.parse::<u64>() {
                    return Ok(Some(n));
                }
                let d = humantime::parse_duration(t).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{t}` is not a number of seconds or a duration like `90s`: {e}"
                    ))
                })?;
                if d.subsec_nanos() != 0 {
                    return Err(serde::de::Error::custom(format!(
                        "`{t}`: whole seconds only"
                    )));
                }
                Ok(Some(d.as_secs()))
            }
        }
    }
}

/// What becomes of a run that cnp's own stop (crash, kill -9, forced shutdown) interrupted.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnInterrupt {
    /// One more attempt (if `max_attempts` allows), linked to the interrupted one.
    #[default]
    Retry,
    /// Stays `interrupted`.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryStrategy {
    Fixed,
    ExponentialBackoff,
    Linear,
    Custom,
}

/// Who hears about a job's runs (delivered by `notify::NotificationService`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    #[serde(default)]
    pub on_success: bool,
    #[serde(default = "yes")]
    pub on_failure: bool,
    #[serde(default)]
    pub on_start: bool,
    /// Every final outcome (success or failure after the last attempt).
    #[serde(default)]
    pub on_completion: bool,
    /// `{channel: <name>}` references to `[notifications.channels.<name>]` (optionally with
    /// overrides such as `to`), or inline definitions (`{type: webhook, url: …}`).
    #[serde(default)]
    #[ts(type = "Array<Record<string, unknown>>")]
    pub channels: Vec<serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// Per-run limits on the CLI's process tree.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    pub max_memory_mb: Option<u64>,
    pub max_cpu_percent: Option<f64>,
}

/// How a job was made from a job template: which template, the values of its variables, and
/// the job fields given beside the template that replace the template's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[ts(export)]
pub struct TemplateUse {
    /// The template's name.
    pub name: String,
    /// Variable values by name (the template's defaults fill in the rest).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Top-level job fields that replace the template's (`priority`, `schedule`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, serde_json::Value>,
}

/// A stored prompt that jobs refer to by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[ts(export)]
pub struct Prompt {
    /// Caller-chosen slug (`code-quality-check`) or a generated id.
    pub id: String,
    pub title: String,
    pub content: String,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One run (one attempt) of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[ts(export)]
pub struct JobExecution {
    pub id: String,
    pub job_id: String,
    pub status: ExecutionStatus,
    /// Why it ran: a schedule slot, a manual run, a delayed run, a misfire catch-up.
    pub trigger: Trigger,
    /// The slot or instant it was due (unique per job and attempt for scheduled runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub execution_time_ms: Option<u64>,
    /// The prompt text sent to Claude.
    pub prompt: Option<String>,
    /// Final result text from the CLI (bounded).
    pub output: Option<String>,
    pub error: Option<String>,
    /// 0 for the first attempt.
    pub retry_count: u32,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub session_id: Option<String>,
    pub cost_usd: Option<f64>,
    #[ts(type = "Record<string, unknown> | null")]
    pub usage: Option<serde_json::Value>,
    pub resource_usage: Option<ResourceUsage>,
    pub pid: Option<u32>,
    /// The run's first attempt: its own id for a first attempt, that attempt's id for its
    /// retries (`None` for rows recorded before schema v2).
    #[serde(default)]
    pub first_attempt_id: Option<String>,
    /// The workflow pass this run belongs to (set on runs started by their upstreams, and on a
    /// pass's first run once it has ended and started others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
    /// For `trigger: dependency`: the upstream executions whose ends started this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_ids: Vec<String>,
    /// The run's git worktree (`execution.worktree`): where, the diff stat, the commits, kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<WorktreeReport>,
}

/// One attempt of a run, as the run's chain lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[ts(export)]
pub struct AttemptRef {
    pub id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub status: ExecutionStatus,
    /// When it is (or was) due.
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// An execution with where its run stands as a whole: a failed attempt whose retry is pending
/// is not the run's end (`GET /api/executions/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[ts(export)]
pub struct ExecutionDetail {
    #[serde(flatten)]
    pub execution: JobExecution,
    /// This execution's attempt (1-based) and how many the job's retry policy allows.
    pub attempt: u32,
    pub max_attempts: u32,
    /// The attempt recorded after this one, if any (a retry).
    pub next_attempt: Option<AttemptRef>,
    /// Every attempt of the run so far, first to latest.
    pub attempts: Vec<AttemptRef>,
    /// Where the run stands: the latest attempt's status, or `retry_pending` when that attempt
    /// is a retry still waiting to start.
    pub run_status: RunStatus,
}

/// Where a run (all its attempts) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The first attempt waits to start.
    Queued,
    /// An attempt failed; the next one is recorded and waits for its time.
    RetryPending,
    Running,
    /// The latest attempt is finished and no other is recorded: the run is over.
    Finished,
}

impl RunStatus {
    /// From the run's attempts, first to latest.
    pub fn of(attempts: &[AttemptRef]) -> RunStatus {
        match attempts.last() {
            None => RunStatus::Finished,
            Some(a) if a.status == ExecutionStatus::Running => RunStatus::Running,
            Some(a) if a.status.is_terminal() => RunStatus::Finished,
            Some(a) if a.attempt > 1 => RunStatus::RetryPending,
            Some(_) => RunStatus::Queued,
        }
    }
}

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Recorded and waiting for a slot in the dispatch queue (or for its delayed start).
    Queued,
    /// Held back (e.g. during a usage-limit cooldown).
    Deferred,
    Running,
    /// Finished successfully (the spec's "Completed").
    Completed,
    Failed,
    TimedOut,
    Cancelled,
    /// cnp stopped (crash or kill) while it ran.
    Interrupted,
    /// Not run: misfire policy, overlap policy or a condition.
    Skipped,
}

impl ExecutionStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Queued | ExecutionStatus::Deferred | ExecutionStatus::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Deferred => "deferred",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::TimedOut => "timed_out",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Interrupted => "interrupted",
            ExecutionStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => ExecutionStatus::Queued,
            "deferred" => ExecutionStatus::Deferred,
            "running" => ExecutionStatus::Running,
            "completed" => ExecutionStatus::Completed,
            "failed" => ExecutionStatus::Failed,
            "timed_out" => ExecutionStatus::TimedOut,
            "cancelled" => ExecutionStatus::Cancelled,
            "interrupted" => ExecutionStatus::Interrupted,
            "skipped" => ExecutionStatus::Skipped,
            _ => return None,
        })
    }
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Active => "active",
            JobStatus::Paused => "paused",
            JobStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => JobStatus::Active,
            "paused" => JobStatus::Paused,
            "disabled" => JobStatus::Disabled,
            _ => return None,
        })
    }
}

/// Why an execution exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    /// A slot missed while cnp was down, run per the misfire policy.
    Catchup,
    Manual,
    Delayed,
    Retry,
    /// Started by the end of its upstream runs (`depends_on`).
    Dependency,
    /// Started by a signed request to its webhook (`POST /api/hooks/…`).
    Webhook,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Catchup => "catchup",
            Trigger::Manual => "manual",
            Trigger::Delayed => "delayed",
            Trigger::Retry => "retry",
            Trigger::Dependency => "dependency",
            Trigger::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "schedule" => Trigger::Schedule,
            "catchup" => Trigger::Catchup,
            "manual" => Trigger::Manual,
            "delayed" => Trigger::Delayed,
            "retry" => Trigger::Retry,
            "dependency" => Trigger::Dependency,
            "webhook" => Trigger::Webhook,
            _ => return None,
        })
    }
}

/// How a finished run ended, classified for retries and cooldown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Exit 0 and a result without `is_error`.
    Success,
    /// The CLI reported an error (`is_error`), or exited non-zero, for a reason that may pass.
    Error {
        /// The CLI's result subtype or API error class, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subtype: Option<String>,
        /// HTTP status of the API error, when the CLI gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_status: Option<u16>,
        message: String,
    },
    /// Killed after `timeout_seconds`.
    Timeout,
    /// The CLI could not be started at all (not found, not executable, bad working directory).
    SpawnFailed { message: String },
    /// Credentials are missing or rejected: retrying will not help.
    AuthError { message: String },
    /// The CLI refused its arguments: retrying will not help.
    InvalidArguments { message: String },
    /// The account's usage limit: wait until it resets.
    UsageLimit {
        /// When the limit resets, if the CLI said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resets_at: Option<DateTime<Utc>>,
        message: String,
    },
    /// Killed by a resource limit (memory).
    ResourceLimit { message: String },
    /// Stopped on request (cancel or shutdown).
    Cancelled,
}

impl Outcome {
    /// The execution status a run with this outcome ends in.
    pub fn status(&self) -> ExecutionStatus {
        match self {
            Outcome::Success => ExecutionStatus::Completed,
            Outcome::Timeout => ExecutionStatus::TimedOut,
            Outcome::Cancelled => ExecutionStatus::Cancelled,
            _ => ExecutionStatus::Failed,
        }
    }

    /// A short human-readable reason, for the execution's `error` field.
    pub fn error_message(&self) -> Option<String> {
        match self {
            Outcome::Success => None,
            Outcome::Error { message, .. } => Some(message.clone()),
            Outcome::Timeout => Some("timed out".into()),
            Outcome::SpawnFailed { message } => {
                Some(format!("could not start the Claude CLI: {message}"))
            }
            Outcome::AuthError { message } => Some(format!("authentication failed: {message}")),
            Outcome::InvalidArguments { message } => Some(format!("invalid arguments: {message}")),
            Outcome::UsageLimit { message, .. } => Some(format!("usage limit: {message}")),
            Outcome::ResourceLimit { message } => Some(message.clone()),
            Outcome::Cancelled => Some("cancelled".into()),
        }
    }
}

/// What a run cost the machine, from the OS.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, TS, utoipa::ToSchema)]
pub struct ResourceUsage {
    pub wall_time_ms: u64,
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    /// Peak resident set size of the CLI's process group, in KiB: sampled every 250 ms from
    /// `/proc` (or the cgroup's own peak where limits use one); 0 for a run too short to sample.
    pub peak_rss_kb: u64,
    /// How the job's `resource_limits` were enforced (`cgroup-v2 …`, `cgroup-v1 …`,
    /// `watchdog …`), and what could not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_enforcement: Option<String>,
}

/// A line the CLI wrote, as stored and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS, utoipa::ToSchema)]
pub struct LogLine {
    pub execution_id: String,
    pub seq: u64,
    pub stream: LogStream,
    pub timestamp: DateTime<Utc>,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by cnp itself (e.g. "killed after timeout").
    System,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            "system" => LogStream::System,
            _ => return None,
        })
    }
}

/// A job's upstream jobs (`depends_on`): when their runs end, this job runs. In a manifest or
/// request: a list (`[review, {job: lint, on: failure}]`, all must be satisfied) or
/// `{any_of: [...]}` (the first satisfied one starts the run); `{all_of: [...]}` is the list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DependsOn {
    /// `any_of`: one satisfied edge is enough.
    pub any: bool,
    pub edges: Vec<Dependency>,
}

impl DependsOn {
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }
}

/// One edge of a workflow: the upstream job and what its run must end in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// The upstream job, by name or id.
    pub job: String,
    /// Which ends of the upstream run satisfy this edge (default `success`).
    #[serde(default)]
    pub on: DependOn,
    /// A minijinja expression over the upstream run (`status`, `exit_code`, `result`,
    /// `cost_usd`, `duration_ms`, `json`, `session_id`, `error`; also under `upstream.`): the
    /// edge is satisfied only when it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// Which ends of an upstream run satisfy an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependOn {
    /// The run completed (after its last attempt).
    #[default]
    Success,
    /// Its last attempt failed, timed out or was interrupted.
    Failure,
    /// Success or failure (not cancelled or skipped).
    Completed,
    /// Any end: also cancelled or skipped.
    Always,
}

impl DependOn {
    pub fn as_str(self) -> &'static str {
        match self {
            DependOn::Success => "success",
            DependOn::Failure => "failure",
            DependOn::Completed => "completed",
            DependOn::Always => "always",
        }
    }

    /// Whether an upstream run that ended in `status` satisfies the edge.
    pub fn accepts(self, status: ExecutionStatus) -> bool {
        use ExecutionStatus as S;
        match self {
            DependOn::Success => status == S::Completed,
            DependOn::Failure => matches!(status, S::Failed | S::TimedOut | S::Interrupted),
            DependOn::Completed => {
                matches!(
                    status,
                    S::Completed | S::Failed | S::TimedOut | S::Interrupted
                )
            }
            DependOn::Always => status.is_terminal(),
        }
    }
}

impl Serialize for DependsOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.any {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry("any_of", &self.edges)?;
            m.end()
        } else {
            self.edges.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DependsOn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of upstream jobs, or `{any_of: [...]}` / `{all_of: [...]}`")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<DependsOn, E> {
                Ok(DependsOn::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<DependsOn, A::Error> {
                let edges = Vec::<DependencyEntry>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(DependsOn {
                    any: false,
                    edges: edges.into_iter().map(|e| e.0).collect(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DependsOn, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Ok(DependsOn::default());
                };
                let any = match key.as_str() {
                    "any_of" => true,
                    "all_of" => false,
                    other => {
                        return Err(serde::de::Error::unknown_field(
                            other,
                            &["any_of", "all_of"],
                        ))
                    }
                };
                let edges: Vec<DependencyEntry> = map.next_value()?;
                if let Some(k) = map.next_key::<String>()? {
                    return Err(serde::de::Error::custom(format!(
                        "give one of `any_of` or `all_of`, not `{key}` and `{k}`"
                    )));
                }
                Ok(DependsOn {
                    any,
                    edges: edges.into_iter().map(|e| e.0).collect(),
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl utoipa::PartialSchema for DependsOn {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let edges = serde_json::json!({
            "type": "array",
            "items": {"oneOf": [
                {"type": "string", "description": "An upstream job's name or id (`on: success`)"},
                {"$ref": "#/components/schemas/Dependency"},
            ]},
        });
        serde_json::from_value(serde_json::json!({
            "description": "Upstream jobs whose runs start this one: a list (all must be \
                satisfied), `{any_of: [...]}` (the first satisfied one starts the run) or \
                `{all_of: [...]}` (the list)",
            "oneOf": [
                edges,
                {"type": "object", "properties": {"any_of": edges}, "required": ["any_of"],
                 "additionalProperties": false},
                {"type": "object", "properties": {"all_of": edges}, "required": ["all_of"],
                 "additionalProperties": false},
                {"type": "null"},
            ],
            "examples": [["review", {"job": "lint", "on": "failure"}]],
        }))
        .expect("a valid schema")
    }
}

impl utoipa::ToSchema for DependsOn {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push(("Dependency".into(), Dependency::schema()));
        <Dependency as utoipa::ToSchema>::schemas(schemas);
    }
}

/// One entry of a `depends_on` list: a job name (`on: success`) or a full edge.
struct DependencyEntry(Dependency);

impl<'de> Deserialize<'de> for DependencyEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DependencyEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a job name or `{job: <name or id>, on: success|failure|completed|always, when: <expression>}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DependencyEntry, E> {
                Ok(DependencyEntry(Dependency {
                    job: v.to_owned(),
                    on: DependOn::Success,
                    when: None,
                }))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<DependencyEntry, A::Error> {
                Dependency::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(DependencyEntry)
            }
        }
        d.deserialize_any(V)
    }
}

/// A workflow pass as a graph: every job its first job reaches, with the state of its run in
/// this pass, and every edge with its verdict (`GET /api/workflows/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowPass {
    /// The pass id: its first run's (first attempt's) execution id.
    pub id: String,
    pub root_job_id: Option<String>,
    pub root_job_name: Option<String>,
    pub root_execution_id: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `running` while a node waits or runs, `finished`, or `cancelled`.
    pub status: String,
    pub nodes: Vec<PassNode>,
    pub edges: Vec<PassEdgeView>,
}

/// One job in a pass.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassNode {
    pub job_id: String,
    pub name: String,
    /// The latest attempt's status; `None` while the node waits for its upstreams.
    pub status: Option<ExecutionStatus>,
    /// The latest attempt's execution.
    pub execution_id: Option<String>,
    /// Attempts so far (0 while waiting).
    pub attempts: u32,
    /// Why it was skipped or failed, when it was.
    pub reason: Option<String>,
    /// The upstream executions that started it.
    pub upstream_ids: Vec<String>,
}

/// One edge of a pass.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassEdgeView {
    /// Upstream job id.
    pub from: String,
    /// Downstream job id.
    pub to: String,
    pub on: DependOn,
    pub when: Option<String>,
    /// The verdict, once the upstream ended in this pass.
    pub satisfied: Option<bool>,
    pub reason: Option<String>,
}
