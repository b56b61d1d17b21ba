//! The types every plugin kind shares (WIT interface `cnp:plugin/types`), in plain Rust.

use serde::Serialize;
use std::fmt;

/// A point in time: milliseconds since the Unix epoch (UTC).
pub type Timestamp = i64;

/// The job a call is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// The job's stable id (a UUID for jobs cnp created).
    pub id: String,
    /// The job's unique, human-readable name.
    pub name: String,
    /// The job's free-form labels.
    pub tags: Vec<String>,
    /// 1 (least urgent) to 10 (most urgent).
    pub priority: u8,
    /// The IANA time zone the job's schedule is evaluated in (for example `Europe/Berlin`).
    pub timezone: String,
}

/// How a run of the Claude CLI ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The CLI exited 0 and reported success.
    Success,
    /// The CLI exited with a non-zero code or reported an error result.
    Failure,
    /// The run exceeded its time limit and was killed.
    Timeout,
    /// The CLI could not be started (other than "not found").
    SpawnFailure,
    /// The `claude` program was not found.
    CliNotFound,
    /// The CLI reported an authentication problem (log in again; retrying will not help).
    AuthError,
    /// Claude's usage limit was reached; see [`ExecutionInfo::usage_limit_reset`].
    UsageLimit,
    /// A user cancelled the run.
    Cancelled,
    /// The run was cut short by cnp shutting down or crashing.
    Interrupted,
}

impl OutcomeKind {
    /// The outcome's name as cnp writes it (`usage_limit`, `auth_error`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Failure => "failure",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::SpawnFailure => "spawn_failure",
            OutcomeKind::CliNotFound => "cli_not_found",
            OutcomeKind::AuthError => "auth_error",
            OutcomeKind::UsageLimit => "usage_limit",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host knows about one finished (or, for condition hooks, previous) run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionInfo {
    /// The execution's id.
    pub execution_id: String,
    /// 1 for the first attempt of a slot, 2 for its first retry, and so on.
    pub attempt: u32,
    /// The most attempts the job's retry configuration allows (1 when it has none).
    pub max_attempts: u32,
    /// How the run ended.
    pub outcome: OutcomeKind,
    /// The process's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Wall-clock duration of the run in milliseconds.
    pub duration_ms: u64,
    /// The last few kilobytes of the run's result text or output.
    pub output_tail: String,
    /// The error message, when the run did not succeed.
    pub error: Option<String>,
    /// When a usage limit resets, if the CLI said so.
    pub usage_limit_reset: Option<Timestamp>,
    /// When the run was scheduled to start.
    pub scheduled_at: Option<Timestamp>,
    /// When the run finished.
    pub finished_at: Timestamp,
}

/// An expected failure of a plugin call. The host records the message on the execution and
/// falls back to its built-in behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// The plugin's configuration is missing a field or has a bad value.
    InvalidConfig(String),
    /// Something the plugin depends on (a webhook, say) is unavailable right now.
    Unavailable(String),
    /// Any other failure, with a message for the operator.
    Failed(String),
}

impl PluginError {
    /// A [`PluginError::InvalidConfig`] with this message.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        PluginError::InvalidConfig(message.into())
    }

    /// A [`PluginError::Unavailable`] with this message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        PluginError::Unavailable(message.into())
    }

    /// A [`PluginError::Failed`] with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        PluginError::Failed(message.into())
    }

    /// The error's message, whatever its kind.
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidConfig(m)
            | PluginError::Unavailable(m)
            | PluginError::Failed(m) => m,
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            PluginError::Unavailable(m) => write!(f, "unavailable: {m}"),
            PluginError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// A civil (wall-clock) date and time in some time zone, as [`clock::to_local`] returns it.
///
/// [`clock::to_local`]: crate::clock::to_local
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LocalTime {
    /// The year (for example 2026).
    pub year: i32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
    /// ISO weekday: 1 = Monday … 7 = Sunday.
    pub weekday: u8,
    /// The zone's offset from UTC at that instant, in seconds (east positive).
    pub utc_offset_seconds: i32,
}

impl LocalTime {
    /// Minutes since local midnight (0–1439).
    pub fn minute_of_day(&self) -> u32 {
        u32::from(self.hour) * 60 + u32::from(self.minute)
    }

    /// The date as `YYYY-MM-DD`.
    pub fn date_string(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Conversions from the generated bindings; present whenever a world is.
#[cfg(any(doc, cnp_one_world))]
mod from_wit {
    use super::*;
    use crate::bindings::cnp::plugin::{clock as wit_clock, types as wit};

    impl From<wit::JobInfo> for JobInfo {
        fn from(j: wit::JobInfo) -> Self {
            JobInfo {
                id: j.id,
                name: j.name,
                tags: j.tags,
                priority: j.priority,
                timezone: j.timezone,
            }
        }
    }

    impl From<wit::OutcomeKind> for OutcomeKind {
        fn from(o: wit::OutcomeKind) -> Self {
            match o {
                wit::OutcomeKind::Success => OutcomeKind::Success,
                wit::OutcomeKind::Failure => OutcomeKind::Failure,
                wit::OutcomeKind::Timeout => OutcomeKind::Timeout,
                wit::OutcomeKind::SpawnFailure => OutcomeKind::SpawnFailure,
                wit::OutcomeKind::CliNotFound => OutcomeKind::CliNotFound,
                wit::OutcomeKind::AuthError => OutcomeKind::AuthError,
                wit::OutcomeKind::UsageLimit => OutcomeKind::UsageLimit,
                wit::OutcomeKind::Cancelled => OutcomeKind::Cancelled,
                wit::OutcomeKind::Interrupted => OutcomeKind::Interrupted,
            }
        }
    }

    impl From<wit::ExecutionInfo> for ExecutionInfo {
        fn from(e: wit::ExecutionInfo) -> Self {
            ExecutionInfo {
                execution_id: e.execution_id,
                attempt: e.attempt,
                max_attempts: e.max_attempts,
                outcome: e.outcome.into(),
                exit_code: e.exit_code,
                duration_ms: e.duration_ms,
                output_tail: e.output_tail,
                error: e.error,
                usage_limit_reset: e.usage_limit_reset,
                scheduled_at: e.scheduled_at,
                finished_at: e.finished_at,
            }
        }
    }

    impl From<PluginError> for wit::PluginError {
        fn from(e: PluginError) -> Self {
            match e {
                PluginError::InvalidConfig(m) => wit::PluginError::InvalidConfig(m),
                PluginError::Unavailable(m) => wit::PluginError::Unavailable(m),
                PluginError::Failed(m) => wit::PluginError::Failed(m),
            }
        }
    }

    impl From<wit_clock::LocalTime> for LocalTime {
        fn from(t: wit_clock::LocalTime) -> Self {
            LocalTime {
                year: t.year,
                month: t.month,
                day: t.day,
                hour: t.hour,
                minute: t.minute,
                second: t.second,
                weekday: t.weekday,
                utc_offset_seconds: t.utc_offset_seconds,
            }
        }
    }
}
