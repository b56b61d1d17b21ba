//! Notification channels (world `notifier`, exported interface `cnp:plugin/notify`).

use crate::bindings::cnp::plugin::types as wit_types;
use crate::bindings::exports::cnp::plugin::notify as wit;
use crate::{config, ExecutionInfo, JobInfo, PluginError, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// A notification channel: delivers events about jobs somewhere people will see them.
///
/// Enable the `notifier` feature, implement this trait on a unit struct and pass it to
/// [`register_plugin!`](crate::register_plugin). Use [`http`](crate::http) to reach a
/// webhook; the host lets a request through only to the hosts the plugin was granted.
pub trait Notifier {
    /// The plugin's configuration, parsed from the JSON text the host passes (see
    /// [`config::parse`]: empty text or `{}` gives `Default::default()`).
    type Config: DeserializeOwned + Default;

    /// Checks a parsed configuration; called once when a job starts using the plugin (after
    /// parsing succeeded). The default accepts any configuration that parses.
    fn validate(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Delivers one event. Returns a short receipt for the delivery record (an HTTP status, a
    /// message id, ...). Return [`PluginError::Unavailable`] when the far end is down.
    fn deliver(config: Self::Config, event: Event) -> Result<String, PluginError>;
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run started.
    RunStarted,
    /// A run succeeded.
    RunSucceeded,
    /// A run failed after its last attempt.
    RunFailed,
    /// A run ended, whatever its outcome.
    RunCompleted,
    /// A failed run will be retried.
    RetryScheduled,
    /// Claude's usage limit was reached; runs are held until it resets.
    CooldownEntered,
    /// The usage limit is over; held runs resume.
    CooldownEnded,
    /// A plugin failed (trapped, timed out, or returned an error).
    PluginFailure,
}

impl EventKind {
    /// The kind's name as cnp writes it (`run_failed`, `cooldown_entered`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunStarted => "run_started",
            EventKind::RunSucceeded => "run_succeeded",
            EventKind::RunFailed => "run_failed",
            EventKind::RunCompleted => "run_completed",
            EventKind::RetryScheduled => "retry_scheduled",
            EventKind::CooldownEntered => "cooldown_entered",
            EventKind::CooldownEnded => "cooldown_ended",
            EventKind::PluginFailure => "plugin_failure",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event to deliver. Serializes (with `serde_json`) to
/// `{"kind": "run_failed", "summary": ..., "at": ..., "job": {...}, "execution": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// A one-line, human-readable summary the host has already written.
    pub summary: String,
    /// When the event happened (milliseconds since the Unix epoch).
    pub at: Timestamp,
    /// The job, for events about a job.
    pub job: Option<JobInfo>,
    /// The run, for events about a run.
    pub execution: Option<ExecutionInfo>,
}

impl From<wit::EventKind> for EventKind {
    fn from(kind: wit::EventKind) -> Self {
        match kind {
            wit::EventKind::RunStarted => EventKind::RunStarted,
            wit::EventKind::RunSucceeded => EventKind::RunSucceeded,
            wit::EventKind::RunFailed => EventKind::RunFailed,
            wit::EventKind::RunCompleted => EventKind::RunCompleted,
            wit::EventKind::RetryScheduled => EventKind::RetryScheduled,
            wit::EventKind::CooldownEntered => EventKind::CooldownEntered,
            wit::EventKind::CooldownEnded => EventKind::CooldownEnded,
            wit::EventKind::PluginFailure => EventKind::PluginFailure,
        }
    }
}

impl From<wit::Event> for Event {
    fn from(e: wit::Event) -> Self {
        Event {
            kind: e.kind.into(),
            summary: e.summary,
            at: e.at,
            job: e.job.map(Into::into),
            execution: e.execution.map(Into::into),
        }
    }
}

impl<T: Notifier> wit::Guest for crate::__private::Export<T> {
    fn validate_config(config: String) -> Result<(), wit_types::PluginError> {
        let config = config::parse::<T::Config>(&config)?;
        Ok(T::validate(&config)?)
    }

    fn deliver(config: String, event: wit::Event) -> Result<String, wit_types::PluginError> {
        let config = config::parse::<T::Config>(&config)?;
        Ok(T::deliver(config, event.into())?)
    }
}
