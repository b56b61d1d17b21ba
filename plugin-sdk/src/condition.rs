//! Condition hooks (world `condition-hook`, exported interface `cnp:plugin/condition`).

use crate::bindings::cnp::plugin::types as wit_types;
use crate::bindings::exports::cnp::plugin::condition as wit;
use crate::{config, ExecutionInfo, JobInfo, PluginError, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A condition hook: decides, just before a run starts, whether it runs now.
///
/// Enable the `condition-hook` feature, implement this trait on a unit struct and pass it to
/// [`register_plugin!`](crate::register_plugin). A deferred run is evaluated again when its
/// deferral ends, so an answer only has to be right for "now".
pub trait ConditionHook {
    /// The plugin's configuration, parsed from the JSON text the host passes (see
    /// [`config::parse`]: empty text or `{}` gives `Default::default()`).
    type Config: DeserializeOwned + Default;

    /// Checks a parsed configuration; called once when a job starts using the plugin (after
    /// parsing succeeded). The default accepts any configuration that parses.
    fn validate(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Decides whether the run described by `context` starts now. An `Err` makes the host
    /// fall back to running the job and record the message.
    fn evaluate(config: Self::Config, context: RunContext) -> Result<Verdict, PluginError>;
}

/// Why a run is starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its schedule came due.
    Schedule,
    /// Someone asked for it now.
    Manual,
    /// A delayed run came due.
    Delayed,
    /// A retry of a failed attempt.
    Retry,
}

/// Everything a hook can decide on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunContext {
    /// The job about to run.
    pub job: JobInfo,
    /// Why it is starting.
    pub trigger: Trigger,
    /// The schedule slot or requested start time.
    pub scheduled_at: Option<Timestamp>,
    /// The job's previous finished run, if any.
    pub previous: Option<ExecutionInfo>,
}

/// A hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run now.
    Run,
    /// Do not run this time; the execution is recorded as skipped with this reason.
    Skip(String),
    /// Not now: the execution waits as deferred and is evaluated again at `until`.
    DeferUntil {
        /// When to evaluate again (milliseconds since the Unix epoch).
        until: Timestamp,
        /// Why, for the execution record.
        reason: String,
    },
}

impl Verdict {
    /// Do not run this time, for this reason.
    pub fn skip(reason: impl Into<String>) -> Self {
        Verdict::Skip(reason.into())
    }

    /// Not now: evaluate again at `until`, for this reason.
    pub fn defer_until(until: Timestamp, reason: impl Into<String>) -> Self {
        Verdict::DeferUntil { until, reason: reason.into() }
    }
}

impl From<wit::Trigger> for Trigger {
    fn from(trigger: wit::Trigger) -> Self {
        match trigger {
            wit::Trigger::Schedule => Trigger::Schedule,
            wit::Trigger::Manual => Trigger::Manual,
            wit::Trigger::Delayed => Trigger::Delayed,
            wit::Trigger::Retry => Trigger::Retry,
        }
    }
}

impl From<wit::RunContext> for RunContext {
    fn from(c: wit::RunContext) -> Self {
        RunContext {
            job: c.job.into(),
            trigger: c.trigger.into(),
            scheduled_at: c.scheduled_at,
            previous: c.previous.map(Into::into),
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Run => wit::Verdict::Run,
            Verdict::Skip(reason) => wit::Verdict::Skip(reason),
            Verdict::DeferUntil { until, reason } => {
                wit::Verdict::DeferUntil(wit::Deferral { until, reason })
            }
        }
    }
}

impl<T: ConditionHook> wit::Guest for crate::__private::Export<T> {
    fn validate_config(config: String) -> Result<(), wit_types::PluginError> {
        let config = config::parse::<T::Config>(&config)?;
        Ok(T::validate(&config)?)
    }

    fn evaluate(
        config: String,
        context: wit::RunContext,
    ) -> Result<wit::Verdict, wit_types::PluginError> {
        let config = config::parse::<T::Config>(&config)?;
        Ok(T::evaluate(config, context.into())?.into())
    }
}
