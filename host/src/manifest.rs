//! Job definitions as users write them: the YAML manifest shape (one job or a list per file),
//! also the body the API takes. [`JobSpec::validate`] checks everything the engine relies on and
//! names the offending field.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    Budget, DependsOn, ExecutionOptions, JobStatus, MisfirePolicy, NotificationConfig, PluginRef,
    ResourceLimits, RetryConfig, RetryStrategy, Schedule, PRIORITY_DEFAULT, PRIORITY_MAX,
    PRIORITY_MIN,
};

/// A job definition: a manifest's entry, and the body of `POST /api/jobs` and `PUT /api/jobs/{id}`
/// (docs/manifests.md has every field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "nightly-review",
    "prompt": "Review the changes merged today and list risky ones.",
    "schedule": {"type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Berlin"},
    "priority": 7,
    "tags": ["review"],
    "execution": {"timeout_seconds": 1800, "working_directory": "/srv/repo"},
    "retry": {"max_attempts": 3, "strategy": "exponential_backoff", "initial_interval": 60},
}))]
pub struct JobSpec {
    /// Unique job name.
    pub name: String,
    /// A stored prompt to run (give this or `prompt`).
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The prompt text itself (give this or `prompt_id`).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// 1 (least urgent) – 10 (most urgent); default 5.
    #[serde(default = "default_priority")]
    #[schema(minimum = 1, maximum = 10)]
    pub priority: u8,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `false` creates the job disabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `true` creates the job paused.
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub execution: ExecutionOptions,
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    #[serde(default)]
    pub notifications: Option<NotificationConfig>,
    #[serde(default)]
    pub resource_limits: Option<ResourceLimits>,
    /// Caps on what the job's runs spend over rolling windows (docs/budgets.md).
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Upstream jobs whose runs start this one (see docs/workflows.md).
    #[serde(default, skip_serializing_if = "DependsOn::is_empty")]
    pub depends_on: DependsOn,
    /// Condition-hook plugins asked before each run (stored as `execution.conditions`; see
    /// [`JobSpec::normalized`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PluginRef>,
    /// A webhook that runs the job (stored as `execution.webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::model::WebhookConfig>,
    /// An executor plugin that does the work instead of the Claude CLI (stored as
    /// `execution.executor`): `{plugin: <name>, config: {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<PluginRef>,
}

impl JobSpec {
    /// The canonical form: top-level `conditions` moved into `execution.conditions`, where the
    /// job keeps them.
    pub fn normalized(mut self) -> JobSpec {
        if !self.conditions.is_empty() {
            self.execution.conditions = std::mem::take(&mut self.conditions);
        }
        if self.webhook.is_some() {
            self.execution.webhook = self.webhook.take();
        }
        if self.executor.is_some() {
            self.execution.executor = self.executor.take();
        }
        self
    }
}

fn default_priority() -> u8 {
    PRIORITY_DEFAULT
}

fn yes() -> bool {
    true
}

/// The `schedule:` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleSpec {
    Cron {
        expression: String,
        #[serde(default)]
        timezone: Option<String>,
        #[serde(default)]
        misfire: Option<MisfirePolicy>,
    },
    /// `every: "10m"` or `every_seconds: 600`.
    Interval {
        #[serde(default, with = "humantime_serde")]
        #[schema(value_type = Option<String>, example = "10m")]
        every: Option<std::time::Duration>,
        #[serde(default)]
        every_seconds: Option<u64>,
        #[serde(default)]
        start_at: Option<DateTime<Utc>>,
        #[serde(default)]
        misfire: Option<MisfirePolicy>,
    },
    Once {
        at: DateTime<Utc>,
    },
    #[default]
    Manual,
}

/// A definition that cannot be used; `field` is the dotted path (`schedule.expression`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

const PERMISSION_MODES: &[&str] = &[
    "acceptEdits",
    "auto",
    "bypassPermissions",
    "manual",
    "dontAsk",
    "plan",
    "default",
];

impl ScheduleSpec {
    /// The canonical schedule.
    pub fn to_schedule(&self) -> Result<Schedule, SpecError> {
        Ok(match self {
            ScheduleSpec::Cron {
                expression,
                timezone,
                misfire,
            } => Schedule::Cron {
                expression: expression.trim().to_owned(),
                timezone: timezone.clone(),
                misfire: *misfire,
            },
            ScheduleSpec::Interval {
                every,
                every_seconds,
                start_at,
                misfire,
            } => {
                let secs =
                    match (every, every_seconds) {
                        (Some(_), Some(_)) => {
                            return Err(err(
                                "schedule",
                                "give either `every` or `every_seconds`, not both",
                            ))
                        }
                        (Some(d), None) => {
                            if d.subsec_nanos() != 0 {
                                return Err(err("schedule.every", "must be whole seconds"));
                            }
                            d.as_secs()
                        }
                        (None, Some(s)) => *s,
                        (None, None) => return Err(err(
                            "schedule",
                            "an interval schedule needs `every` (e.g. \"10m\") or `every_seconds`",
                        )),
                    };
                if secs == 0 {
                    return Err(err("schedule.every", "must be at least 1 second"));
                }
                Schedule::Interval {
                    every_seconds: secs,
                    start_at: *start_at,
                    misfire: *misfire,
                }
            }
            ScheduleSpec::Once { at } => Schedule::Once { at: *at },
            ScheduleSpec::Manual => Schedule::Manual,
        })
    }

    /// The spec form of a stored schedule (for round trips and comparisons).
    pub fn from_schedule(s: &Schedule) -> ScheduleSpec {
        match s.clone() {
            Schedule::Cron {
                expression,
                timezone,
                misfire,
            } => ScheduleSpec::Cron {
                expression,
                timezone,
                misfire,
            },
            Schedule::Interval {
                every_seconds,
                start_at,
                misfire,
            } => ScheduleSpec::Interval {
                every: None,
                every_seconds: Some(every_seconds),
                start_at,
                misfire,
            },
            Schedule::Once { at } => ScheduleSpec::Once { at },
            Schedule::Manual => ScheduleSpec::Manual,
        }
    }
}

impl JobSpec {
    /// The status a new job starts in.
    pub fn initial_status(&self) -> JobStatus {
        if !self.enabled {
            JobStatus::Disabled
        } else if self.paused {
            JobStatus::Paused
        } else {
            JobStatus::Active
        }
    }

    /// Checks the whole definition; returns the canonical schedule.
    pub fn validate(&self, default_tz: chrono_tz::Tz) -> Result<Schedule, SpecError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(err("name", "must not be empty"));
        }
        if name.chars().count() > 200 {
            return Err(err("name", "must be at most 200 characters"));
        }
        match (&self.prompt_id, &self.prompt) {
            (None, None) => return Err(err("prompt_id", "give `prompt_id` or `prompt`")),
            (Some(_), Some(_)) => {
                return Err(err(
                    "prompt",
                    "give either `prompt_id` or `prompt`, not both",
                ))
            }
            (Some(id), None) if id.trim().is_empty() => {
                return Err(err("prompt_id", "must not be empty"))
            }
            (None, Some(p)) if p.trim().is_empty() => {
                return Err(err("prompt", "must not be empty"))
            }
            _ => {}
        }
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&self.priority) {
            return Err(err(
                "priority",
                format!(
                    "must be {PRIORITY_MIN}–{PRIORITY_MAX}, got {}",
                    self.priority
                ),
            ));
        }
        if let Some(t) = self.tags.iter().find(|t| t.trim().is_empty()) {
            return Err(err("tags", format!("empty tag `{t}`")));
        }
        let schedule = self.schedule.to_schedule()?;
        crate::schedule::validate(&schedule, default_tz).map_err(|e| {
            let msg = e.to_string();
            // schedule errors already start with their field path
            match msg.split_once(": ") {
                Some((field, rest)) if field.starts_with("schedule") => err(field, rest),
                _ => err("schedule", msg),
            }
        })?;
        if let Schedule::Cron {
            misfire: Some(MisfirePolicy::RunUpTo(0)),
            ..
        }
        | Schedule::Interval {
            misfire: Some(MisfirePolicy::RunUpTo(0)),
            ..
        } = schedule
        {
            return Err(err(
                "schedule.misfire",
                "run_up_to must be at least 1 (use `skip` to run none)",
            ));
        }
        self.validate_execution()?;
        if !self.conditions.is_empty() && !self.execution.conditions.is_empty() {
            return Err(err(
                "conditions",
                "give the condition hooks once (`conditions:` or `execution.conditions`)",
            ));
        }
        let conditions = self.conditions.iter().chain(&self.execution.conditions);
        for (i, c) in conditions.enumerate() {
            validate_plugin_ref(&format!("conditions[{i}]"), c)?;
        }
        let executor = match (&self.executor, &self.execution.executor) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "executor",
                    "give the executor once (`executor:` or `execution.executor`)",
                ))
            }
            (Some(e), None) => Some(("executor", e)),
            (None, Some(e)) => Some(("execution.executor", e)),
            (None, None) => None,
        };
        if let Some((field, e)) = executor {
            validate_plugin_ref(field, e)?;
            if let Some(config) = &e.config {
                refuse_written_secrets(&format!("{field}.config"), config)?;
            }
        }
        if let Some(r) = &self.retry {
            validate_retry(r)?;
        }
        self.validate_depends_on()?;
        if let Some((field, message)) = self.budget.as_ref().and_then(Budget::invalid) {
            return Err(err(&format!("budget.{field}"), message));
        }
        if let Some(l) = &self.resource_limits {
            if l.max_memory_mb == Some(0) {
                return Err(err("resource_limits.max_memory_mb", "must be at least 1"));
            }
            if let Some(c) = l.max_cpu_percent {
                if !(c > 0.0 && c.is_finite()) {
                    return Err(err(
                        "resource_limits.max_cpu_percent",
                        "must be greater than 0",
                    ));
                }
            }
        }
        Ok(schedule)
    }

    fn validate_depends_on(&self) -> Result<(), SpecError> {
        let d = &self.depends_on;
        if d.any && d.edges.is_empty() {
            return Err(err("depends_on.any_of", "must name at least one job"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in d.edges.iter().enumerate() {
            let job = e.job.trim();
            if job.is_empty() {
                return Err(err(&format!("depends_on[{i}].job"), "must not be empty"));
            }
            if job == self.name.trim() {
                return Err(err(
                    &format!("depends_on[{i}].job"),
                    format!("a job cannot depend on itself (`{job}` → `{job}`)"),
                ));
            }
            if !seen.insert(job) {
                return Err(err(
                    &format!("depends_on[{i}].job"),
                    format!("`{job}` is listed twice"),
                ));
            }
            if let Some(w) = &e.when {
                crate::workflow::check_when(w)
                    .map_err(|m| err(&format!("depends_on[{i}].when"), m))?;
            }
        }
        if self.execution.resume_upstream_session && d.is_empty() {
            return Err(err(
                "execution.resume_upstream_session",
                "needs `depends_on` (a run started by its upstreams continues their session)",
            ));
        }
        if self.execution.resume_upstream_session
            && (self.execution.resume_session.is_some() || self.execution.continue_session)
        {
            return Err(err(
                "execution.resume_upstream_session",
                "give one of `resume_upstream_session`, `resume_session` or `continue_session`",
            ));
        }
        Ok(())
    }

    fn validate_execution(&self) -> Result<(), SpecError> {
        let e = &self.execution;
        if let Some(w) = self.webhook.as_ref().or(e.webhook.as_ref()) {
            let secret = w.secret.trim();
            if !(secret.starts_with("${") && secret.ends_with('}') && secret.len() > 3) {
                return Err(err(
                    "webhook.secret",
                    "give the secret as `${VAR}`, read from cnp's environment (it is not \
                     written in files or stored)",
                ));
            }
            if w.max_payload_bytes.is_some_and(|n| n == 0 || n > 16 << 20) {
                return Err(err(
                    "webhook.max_payload_bytes",
                    "must be from 1 to 16777216 (16 MiB)",
                ));
            }
        }
        if e.timeout_seconds == Some(0) {
            return Err(err("execution.timeout_seconds", "must be at least 1"));
        }
        if e.max_parallel == Some(0) {
            return Err(err("execution.max_parallel", "must be at least 1"));
        }
        if e.max_turns == Some(0) {
            return Err(err("execution.max_turns", "must be at least 1"));
        }
        if let Some(b) = e.max_budget_usd {
            if !(b > 0.0 && b.is_finite()) {
                return Err(err("execution.max_budget_usd", "must be greater than 0"));
            }
        }
        if let Some(m) = &e.permission_mode {
            if !PERMISSION_MODES.contains(&m.as_str()) {
                return Err(err(
                    "execution.permission_mode",
                    format!("`{m}` is not one of {}", PERMISSION_MODES.join(", ")),
                ));
            }
        }
        for k in e.environment.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(err(
                    "execution.environment",
                    format!("invalid variable name `{k}`"),
                ));
            }
        }
        if let Some(d) = &e.working_directory {
            if d.trim().is_empty() {
                return Err(err("execution.working_directory", "must not be empty"));
            }
        }
        if e.session == crate::model::SessionMode::ContinueJob
            && (e.resume_session.is_some() || e.continue_session || e.resume_upstream_session)
        {
            return Err(err(
                "execution.session",
                "`continue_job` picks the session itself: not together with `resume_session`, \
                 `continue_session` or `resume_upstream_session`",
            ));
        }
        if let Some(w) = &e.worktree {
            if w.repo.trim().is_empty() {
                return Err(err("execution.worktree.repo", "must not be empty"));
            }
            if w.base
                .as_deref()
                .is_some_and(|b| b.trim().is_empty() || b.starts_with('-'))
            {
                return Err(err(
                    "execution.worktree.base",
                    "must be a branch, tag or commit",
                ));
            }
            if let Some(b) = &w.branch {
                crate::executor::worktree::check_branch_template(b)
                    .map_err(|m| err("execution.worktree.branch", m))?;
            }
            if e.working_directory.is_some() {
                return Err(err(
                    "execution.worktree",
                    "runs in its worktree: not together with `working_directory`",
                ));
            }
        }
        if e.session_timeout == Some(0) {
            return Err(err(
                "execution.session_timeout",
                "must be at least 1 second",
            ));
        }
        if e.session_timeout.is_some() && e.session != crate::model::SessionMode::ContinueJob {
            return Err(err(
                "execution.session_timeout",
                "only used with `session: continue_job`",
            ));
        }
        if e.resume_session.is_some() && e.continue_session {
            return Err(err(
                "execution.resume_session",
                "give either `resume_session` or `continue_session`, not both",
            ));
        }
        Ok(())
    }
}

fn validate_retry(r: &RetryConfig) -> Result<(), SpecError> {
    if r.max_attempts == 0 {
        return Err(err(
            "retry.max_attempts",
            "must be at least 1 (1 = no retries)",
        ));
    }
    if let Some(m) = r.multiplier {
        if !(m >= 1.0 && m.is_finite()) {
            return Err(err("retry.multiplier", "must be at least 1.0"));
        }
    }
    if let (Some(i), Some(m)) = (r.initial_interval, r.max_interval) {
        if m < i {
            return Err(err(
                "retry.max_interval",
                "must be at least retry.initial_interval",
            ));
        }
    }
    if let Some(p) = &r.plugin {
        if r.strategy != RetryStrategy::Custom {
            return Err(err(
                "retry.plugin",
                "a retry-strategy plugin needs `strategy: custom`",
            ));
        }
        validate_plugin_name("retry.plugin", p)?;
    } else if r.plugin_config.is_some() {
        return Err(err(
            "retry.plugin_config",
            "is set but `retry.plugin` is not",
        ));
    }
    if let Some(c) = &r.plugin_config {
        if !c.is_object() {
            return Err(err("retry.plugin_config", "must be a mapping"));
        }
    }
    if r.strategy == RetryStrategy::Custom && r.delays.is_empty() && r.plugin.is_none() {
        return Err(err(
            "retry.delays",
            "the custom strategy needs a list of delays (seconds) or a `plugin`",
        ));
    }
    Ok(())
}

/// A secret-named value (`api_key`, `token`, `password`, ...) written out in an executor's
/// configuration is refused: it must be a `${VAR}` reference, filled in from cnp's environment
/// at each call and so never stored, listed or shown.
fn refuse_written_secrets(field: &str, v: &serde_json::Value) -> Result<(), SpecError> {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                let f = format!("{field}.{k}");
                match val {
                    serde_json::Value::String(s)
                        if crate::redact::is_secret_key(k)
                            && s != crate::redact::MARK
                            && !s.contains("${") =>
                    {
                        return Err(err(
                            &f,
                            "give the secret as `${VAR}`, read from cnp's environment at each \
                             call (a secret written here would be stored with the job)",
                        ))
                    }
                    _ => refuse_written_secrets(&f, val)?,
                }
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| refuse_written_secrets(&format!("{field}[{i}]"), item)),
        _ => Ok(()),
    }
}

fn validate_plugin_ref(field: &str, r: &PluginRef) -> Result<(), SpecError> {
    validate_plugin_name(&format!("{field}.plugin"), &r.plugin)?;
    if let Some(c) = &r.config {
        if !c.is_object() {
            return Err(err(&format!("{field}.config"), "must be a mapping"));
        }
    }
    Ok(())
}

/// Whether `name` can be a file stem: 1–`max` letters, digits, `-`, `_` and `.`, not starting
/// with `.` (plugin and template names).
pub fn is_stem_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Plugin names are file stems: letters, digits, `-`, `_` and `.`.
pub fn validate_plugin_name(field: &str, name: &str) -> Result<(), SpecError> {
    if is_stem_name(name, 128) {
        Ok(())
    } else {
        Err(err(
            field,
            format!("`{name}` is not a plugin name (letters, digits, `-`, `_`, `.`)"),
        ))
    }
}

/// A manifest file that could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ManifestError {
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Which job and field, then what is wrong.
    pub message: String,
}

/// A job made from a job template: a manifest entry with `template:` (docs/workflows.md).
/// Every other key is a top-level job field that replaces the template's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TemplatedJob {
    pub name: String,
    pub template: String,
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, crate::job_template::VarValue>,
    #[serde(flatten)]
    pub overrides: std::collections::BTreeMap<String, serde_json::Value>,
}

impl TemplatedJob {
    /// What the job remembers of its template.
    pub fn usage(&self) -> crate::model::TemplateUse {
        crate::model::TemplateUse {
            name: self.template.trim().to_owned(),
            vars: crate::job_template::var_texts(self.vars.clone()),
            overrides: self.overrides.clone(),
        }
    }
}

/// One entry of a manifest file.
// Parsed once per file and consumed at once: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestEntry {
    /// A job defined in full, validated.
    Job(JobSpec, Schedule),
    /// A job made from a template: rendered (and validated) once the template is known.
    Templated(TemplatedJob),
}

impl ManifestEntry {
    pub fn name(&self) -> &str {
        match self {
            ManifestEntry::Job(s, _) => &s.name,
            ManifestEntry::Templated(t) => &t.name,
        }
    }
}

/// Deserializes one entry as a full job or as a templated job (decided beforehand from its keys,
/// so that errors keep their line numbers).
struct EntrySeed(bool);

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum RawEntry {
    Job(JobSpec),
    Templated(TemplatedJob),
}

impl<'de> serde::de::DeserializeSeed<'de> for EntrySeed {
    type Value = RawEntry;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawEntry, D::Error> {
        if self.0 {
            TemplatedJob::deserialize(d).map(RawEntry::Templated)
        } else {
            JobSpec::deserialize(d).map(RawEntry::Job)
        }
    }
}

/// A list of entries, each with its own seed.
struct EntriesSeed(Vec<bool>);

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed {
    type Value = Vec<RawEntry>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<RawEntry>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EntriesSeed {
    type Value = Vec<RawEntry>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of jobs")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<Vec<RawEntry>, A::Error> {
        let mut out = Vec::new();
        loop {
            let templated = self.0.get(out.len()).copied().unwrap_or(false);
            match seq.next_element_seed(EntrySeed(templated))? {
                Some(e) => out.push(e),
                None => return Ok(out),
            }
        }
    }
}

fn is_templated(v: &serde_yaml_ng::Value) -> bool {
    v.as_mapping().is_some_and(|m| m.contains_key("template"))
}

/// Parses a manifest file's text: one job (a mapping) or several (a sequence), each validated.
/// Jobs made from a template (`template:`) are refused here: they need the template
/// ([`parse_manifest_entries`]).
pub fn parse_manifest(
    text: &str,
    path: &Path,
    default_tz: chrono_tz::Tz,
) -> Result<Vec<(JobSpec, Schedule)>, ManifestError> {
    parse_manifest_entries(text, path, default_tz)?
        .into_iter()
        .map(|e| match e {
            ManifestEntry::Job(spec, schedule) => Ok((spec, schedule)),
            ManifestEntry::Templated(t) => Err(ManifestError {
                path: path.to_owned(),
                line: find_line(text, &t.name, "template"),
                message: format!(
                    "job `{}`: template: jobs made from a template are loaded from the manifest \
                     folder or made with `cnp template instantiate`",
                    t.name
                ),
            }),
        })
        .collect()
}

/// Parses a manifest file's text into its entries: full jobs validated, templated jobs checked
/// for a name and a template name (their rendering needs the template).
pub fn parse_manifest_entries(
    text: &str,
    path: &Path,
    default_tz: chrono_tz::Tz,
) -> Result<Vec<ManifestEntry>, ManifestError> {
    let yaml_err = |e: serde_yaml_ng::Error| ManifestError {
        path: path.to_owned(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    };
    use serde::de::DeserializeSeed;
    let shape: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(yaml_err)?;
    let raw: Vec<RawEntry> = match &shape {
        serde_yaml_ng::Value::Sequence(items) => {
            let seed = EntriesSeed(items.iter().map(is_templated).collect());
            seed.deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .map_err(yaml_err)?
        }
        serde_yaml_ng::Value::Mapping(_) => vec![EntrySeed(is_templated(&shape))
            .deserialize(serde_yaml_ng::Deserializer::from_str(text))
            .map_err(yaml_err)?],
        serde_yaml_ng::Value::Null => Vec::new(),
        _ => {
            return Err(ManifestError {
                path: path.to_owned(),
                line: Some(1),
                message: "expected a job (a mapping) or a list of jobs".into(),
            })
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let name = match &entry {
            RawEntry::Job(s) => s.name.clone(),
            RawEntry::Templated(t) => t.name.clone(),
        };
        let label = if name.trim().is_empty() {
            format!("job #{}", i + 1)
        } else {
            format!("job `{name}`")
        };
        let fail = |e: SpecError| ManifestError {
            path: path.to_owned(),
            line: find_line(text, &name, &e.field),
            message: format!("{label}: {e}"),
        };
        let entry = match entry {
            RawEntry::Job(spec) => {
                let schedule = spec.validate(default_tz).map_err(fail)?;
                ManifestEntry::Job(spec.normalized(), schedule)
            }
            RawEntry::Templated(t) => {
                if t.name.trim().is_empty() {
                    return Err(fail(err("name", "must not be empty")));
                }
                crate::job_template::check_name(t.template.trim()).map_err(|e| {
                    fail(SpecError {
                        field: "template".into(),
                        message: e.message,
                    })
                })?;
                ManifestEntry::Templated(t)
            }
        };
        if !seen.insert(name.trim().to_owned()) {
            return Err(ManifestError {
                path: path.to_owned(),
                line: find_line(text, &name, "name"),
                message: format!("{label}: name: defined twice in this file"),
            });
        }
        out.push(entry);
    }
    Ok(out)
}

/// Renders a templated entry of the manifest file `path` (text `text`) with `template` and
/// validates the result; errors name the file, the line when known, the job and the field.
pub fn render_entry(
    entry: &TemplatedJob,
    template: &crate::job_template::JobTemplate,
    text: &str,
    path: &Path,
    default_tz: chrono_tz::Tz,
) -> Result<(JobSpec, crate::model::TemplateUse), ManifestError> {
    let usage = entry.usage();
    let name = entry.name.trim();
    let fail = |e: SpecError| {
        // Errors inside the template's own strings point at the template, not this file.
        let origin = if e.field.starts_with("job.") || e.field == "job" {
            format!(
                " (template `{}`{})",
                template.name,
                template
                    .source
                    .as_deref()
                    .map(|s| format!(", {s}"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        };
        ManifestError {
            path: path.to_owned(),
            line: find_line(text, name, &e.field).or_else(|| find_line(text, name, "template")),
            message: format!("job `{name}`: {e}{origin}"),
        }
    };
    let spec = crate::job_template::render(template, name, &usage).map_err(fail)?;
    spec.validate(default_tz).map_err(fail)?;
    Ok((spec.normalized(), usage))
}

/// Best-effort line of `field` (its last path segment) in the job named `name`.
fn find_line(text: &str, name: &str, field: &str) -> Option<usize> {
    let key = field.rsplit('.').next()?;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("name:") && !name.is_empty() && l.contains(name))
        .unwrap_or(0);
    let pat_block = format!("{key}:");
    let pat_inline = format!("{key}: ");
    lines
        .iter()
        .enumerate()
        .skip(start)
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&pat_block)
                || l.contains(&format!(" {pat_inline}"))
                || l.contains(&format!("{{{pat_inline}"))
        })
        .map(|(i, _)| i + 1)
}

/// Reads one manifest file: its text and its entries.
pub fn load_manifest_entries(
    path: &Path,
    default_tz: chrono_tz::Tz,
) -> Result<(String, Vec<ManifestEntry>), ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    let entries = parse_manifest_entries(&text, path, default_tz)?;
    Ok((text, entries))
}

/// Reads and parses one manifest file.
pub fn load_manifest(
    path: &Path,
    default_tz: chrono_tz::Tz,
) -> Result<Vec<(JobSpec, Schedule)>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_manifest(&text, path, default_tz)
}

/// The manifest files of a folder (`*.yaml`, `*.yml`; hidden and editor backup files ignored),
/// sorted by name.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_manifest_file(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub fn is_manifest_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with('~')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

#[cfg(test)]
mod tests {

    /// Every job file in examples/jobs is a valid manifest (they are what users copy).
    #[test]
    fn the_example_job_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                // Entries, not jobs: some files make jobs from templates (rendered by the
                // service, which knows the templates).
                let (_, entries) = load_manifest_entries(&path, chrono_tz::UTC)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!entries.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 7, "{n} example files");
    }

    #[test]
    fn an_executor_is_stored_in_execution_and_its_secrets_must_be_references() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "x", "prompt": "p",
            "executor": {"plugin": "anthropic-messages",
                         "config": {"api_key": "${KEY}", "nested": [{"token": "${T}"}]}},
        }))
        .unwrap();
        assert!(spec.validate(chrono_tz::UTC).is_ok());
        let n = spec.normalized();
        assert_eq!(n.execution.executor.unwrap().plugin, "anthropic-messages");
        let written: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "x", "prompt": "p",
            "executor": {"plugin": "a", "config": {"nested": [{"token": "abc123"}]}},
        }))
        .unwrap();
        let e = written.validate(chrono_tz::UTC).unwrap_err();
        assert_eq!(e.field, "executor.config.nested[0].token");
        let twice: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "x", "prompt": "p", "executor": {"plugin": "a"},
            "execution": {"executor": {"plugin": "b"}},
        }))
        .unwrap();
        assert_eq!(
            twice.validate(chrono_tz::UTC).unwrap_err().field,
            "executor"
        );
    }
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
name: "Code quality check"
prompt_id: "code-quality-check"
schedule: { type: "cron", expression: "0 2 * * *", timezone: "Asia/Taipei" }
execution:
  timeout_seconds: 1800
  max_parallel: 1
  working_directory: "/project/src"
  environment: { NODE_ENV: "production" }
retry: { max_attempts: 3, strategy: "exponential_backoff", initial_interval: 60, max_interval: 3600, multiplier: 2.0 }
notifications:
  on_success: false
  on_failure: true
  channels:
    - { type: "webhook", url: "https://hooks.example.com/..." }
    - { type: "email", recipients: ["admin@example.com"] }
resource_limits: { max_memory_mb: 512, max_cpu_percent: 50.0 }
"#;

    fn parse(text: &str) -> Result<Vec<(JobSpec, Schedule)>, ManifestError> {
        parse_manifest(text, Path::new("jobs/x.yaml"), chrono_tz::UTC)
    }

    #[test]
    fn the_spec_example_parses() {
        let jobs = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(jobs.len(), 1);
        let (spec, schedule) = &jobs[0];
        assert_eq!(spec.name, "Code quality check");
        assert_eq!(spec.prompt_id.as_deref(), Some("code-quality-check"));
        assert_eq!(
            schedule,
            &Schedule::Cron {
                expression: "0 2 * * *".into(),
                timezone: Some("Asia/Taipei".into()),
                misfire: None
            }
        );
        assert_eq!(spec.execution.timeout_seconds, Some(1800));
        assert_eq!(spec.execution.environment["NODE_ENV"], "production");
        assert_eq!(
            spec.retry.as_ref().unwrap().strategy,
            RetryStrategy::ExponentialBackoff
        );
        assert_eq!(spec.notifications.as_ref().unwrap().channels.len(), 2);
        assert_eq!(
            spec.resource_limits.as_ref().unwrap().max_memory_mb,
            Some(512)
        );
        assert_eq!(spec.priority, PRIORITY_DEFAULT);
        assert_eq!(spec.initial_status(), JobStatus::Active);
    }

    #[test]
    fn a_list_of_jobs_and_interval_forms() {
        let jobs = parse(
            r#"
- name: a
  prompt: "say hi"
  schedule: { type: interval, every: "10m", misfire: skip }
- name: b
  prompt: "say bye"
  schedule: { type: interval, every_seconds: 30, misfire: { run_up_to: 2 } }
  priority: 9
  tags: [nightly]
"#,
        )
        .unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            jobs[0].1,
            Schedule::Interval {
                every_seconds: 600,
                start_at: None,
                misfire: Some(MisfirePolicy::Skip)
            }
        );
        assert_eq!(
            jobs[1].1,
            Schedule::Interval {
                every_seconds: 30,
                start_at: None,
                misfire: Some(MisfirePolicy::RunUpTo(2))
            }
        );
        assert_eq!(jobs[1].0.priority, 9);
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let e = parse("name: a\nprompt: hi\nexecution:\n  timeout_secs: 5\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("timeout_secs"), "{e}");
        assert!(e.to_string().starts_with("jobs/x.yaml:4"), "{e}");
    }

    #[test]
    fn yaml_syntax_error_names_the_line() {
        let e = parse("name: a\nprompt: [unclosed\nschedule: {}\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn bad_cron_names_the_job_field_and_line() {
        let e = parse(
            "name: nightly\nprompt: hi\nschedule:\n  type: cron\n  expression: \"61 * * * *\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("job `nightly`"), "{e}");
        assert!(e.message.contains("schedule.expression"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn bad_zone_and_values_are_named() {
        let e = parse("name: a\nprompt: hi\nschedule: { type: cron, expression: '0 9 * * *', timezone: Mars/Base }\n")
            .unwrap_err();
        assert!(e.message.contains("schedule.timezone"), "{e}");
        let e = parse("name: a\nprompt: hi\npriority: 11\n").unwrap_err();
        assert!(e.message.contains("priority"), "{e}");
        assert_eq!(e.line, Some(3));
        let e = parse("name: a\n").unwrap_err();
        assert!(e.message.contains("prompt_id"), "{e}");
        let e = parse("name: a\nprompt: hi\nretry: { max_attempts: 0, strategy: fixed }\n")
            .unwrap_err();
        assert!(e.message.contains("retry.max_attempts"), "{e}");
        let e = parse("name: a\nprompt: hi\nexecution: { permission_mode: yolo }\n").unwrap_err();
        assert!(e.message.contains("execution.permission_mode"), "{e}");
    }

    #[test]
    fn duplicate_names_in_one_file_are_rejected() {
        let e = parse("- {name: a, prompt: x}\n- {name: a, prompt: y}\n").unwrap_err();
        assert!(e.message.contains("defined twice"), "{e}");
    }

    #[test]
    fn empty_file_defines_no_jobs_and_scalars_are_rejected() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# nothing\n").unwrap().is_empty());
        assert!(parse("42\n").is_err());
    }

    fn review_template() -> crate::job_template::JobTemplate {
        let (name, def) = crate::job_template::parse_template_file(
            "vars: { repo: {}, branch: { default: main } }\n\
             job: { prompt: \"Review {{ branch }} of {{ repo }}\", priority: 6 }\n",
            Path::new("jobs/templates/review.yaml"),
        )
        .unwrap();
        def.into_template(&name, Some("jobs/templates/review.yaml".into()), Utc::now())
            .unwrap()
    }

    const MIXED: &str = "\
- name: plain
  prompt: hi
- name: from-template
  template: review
  vars: { repo: /src/x, branch: dev }
  priority: 9
- name: missing-var
  template: review
  vars:
    branch: dev
";

    #[test]
    fn entries_with_a_template_are_rendered_with_it() {
        let entries =
            parse_manifest_entries(MIXED, Path::new("jobs/x.yaml"), chrono_tz::UTC).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[0], ManifestEntry::Job(s, _) if s.name == "plain"));
        let ManifestEntry::Templated(t) = &entries[1] else {
            panic!("{:?}", entries[1]);
        };
        assert_eq!(t.template, "review");
        assert_eq!(t.vars["repo"].0, "/src/x");
        assert_eq!(t.overrides["priority"], serde_json::json!(9));
        let (spec, usage) = render_entry(
            t,
            &review_template(),
            MIXED,
            Path::new("jobs/x.yaml"),
            chrono_tz::UTC,
        )
        .unwrap();
        assert_eq!(spec.name, "from-template");
        assert_eq!(spec.prompt.as_deref(), Some("Review dev of /src/x"));
        assert_eq!(spec.priority, 9, "the override wins");
        assert_eq!(usage.name, "review");
        assert_eq!(usage.vars["branch"], "dev");
    }

    #[test]
    fn a_missing_variable_names_the_file_job_var_and_line() {
        let entries =
            parse_manifest_entries(MIXED, Path::new("jobs/x.yaml"), chrono_tz::UTC).unwrap();
        let ManifestEntry::Templated(t) = &entries[2] else {
            panic!();
        };
        let e = render_entry(
            t,
            &review_template(),
            MIXED,
            Path::new("jobs/x.yaml"),
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("jobs/x.yaml:8: "), "{e}");
        assert!(e.message.contains("job `missing-var`"), "{e}");
        assert!(e.message.contains("vars.repo"), "{e}");
        // An unknown variable is named with its line.
        let text = "name: a\ntemplate: review\nvars:\n  repo: x\n  colour: red\n";
        let entries =
            parse_manifest_entries(text, Path::new("jobs/y.yaml"), chrono_tz::UTC).unwrap();
        let ManifestEntry::Templated(t) = &entries[0] else {
            panic!();
        };
        let e = render_entry(
            t,
            &review_template(),
            text,
            Path::new("jobs/y.yaml"),
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("vars.colour"), "{e}");
        // A rendered job that is invalid names the field.
        let text = "name: a\ntemplate: review\nvars: { repo: x }\npriority: 0\n";
        let entries =
            parse_manifest_entries(text, Path::new("jobs/y.yaml"), chrono_tz::UTC).unwrap();
        let ManifestEntry::Templated(t) = &entries[0] else {
            panic!();
        };
        let e = render_entry(
            t,
            &review_template(),
            text,
            Path::new("jobs/y.yaml"),
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("priority"), "{e}");
    }

    #[test]
    fn plain_jobs_beside_templated_ones_keep_their_error_lines() {
        let text = "- name: t\n  template: review\n- name: p\n  prompt: hi\n  execution:\n    timeout_secs: 5\n";
        let e = parse_manifest_entries(text, Path::new("jobs/x.yaml"), chrono_tz::UTC).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("timeout_secs"), "{e}");
        let e = parse_manifest_entries(
            "name: t\ntemplate: \"../x\"\n",
            Path::new("jobs/x.yaml"),
            chrono_tz::UTC,
        )
        .unwrap_err();
        assert!(e.message.contains("template"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        // Single-job readers (job create --file, batch-create) say what to do instead.
        let e = parse_manifest(MIXED, Path::new("jobs/x.yaml"), chrono_tz::UTC).unwrap_err();
        assert!(e.message.contains("cnp template instantiate"), "{e}");
    }

    #[test]
    fn manifest_file_names() {
        assert!(is_manifest_file(Path::new("a/b.yaml")));
        assert!(is_manifest_file(Path::new("b.yml")));
        assert!(!is_manifest_file(Path::new(".b.yaml.swp")));
        assert!(!is_manifest_file(Path::new("b.yaml~")));
        assert!(!is_manifest_file(Path::new("b.json")));
    }
}
