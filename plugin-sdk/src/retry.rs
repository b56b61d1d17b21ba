//! Retry strategies (world `retry-strategy`, exported interface `cnp:plugin/retry`).

use crate::bindings::cnp::plugin::types as wit_types;
use crate::bindings::exports::cnp::plugin::retry as wit;
use crate::{config, ExecutionInfo, JobInfo, PluginError, Timestamp};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A retry strategy: decides whether and when a failed run is tried again.
///
/// Enable the `retry-strategy` feature, implement this trait on a unit struct and pass it to
/// [`register_plugin!`](crate::register_plugin). Each call runs on a fresh instance, so
/// everything the decision needs arrives as arguments; to be deterministic, derive any
/// randomness from them (the job id and the slot's `scheduled_at`, say).
pub trait RetryStrategy {
    /// The plugin's configuration, parsed from the JSON text the host passes (see
    /// [`config::parse`]: empty text or `{}` gives `Default::default()`).
    type Config: DeserializeOwned + Default;

    /// Checks a parsed configuration; called once when a job starts using the plugin (after
    /// parsing succeeded). The default accepts any configuration that parses.
    fn validate(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Called after attempt `failed.attempt` of `job`'s run failed. The host never retries
    /// beyond `failed.max_attempts`, whatever the answer; an `Err` makes the host fall back to
    /// the job's built-in backoff and record the message.
    fn next_retry(
        config: Self::Config,
        job: JobInfo,
        failed: ExecutionInfo,
    ) -> Result<RetryDecision, PluginError>;
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this long (sent to the host in whole milliseconds).
    RetryAfter(Duration),
    /// Try again at this instant (for example when a usage limit resets).
    RetryAt(Timestamp),
    /// Do not retry; the run is marked failed with this reason.
    GiveUp(String),
}

impl RetryDecision {
    /// Try again after `ms` milliseconds.
    pub fn after_ms(ms: u64) -> Self {
        RetryDecision::RetryAfter(Duration::from_millis(ms))
    }

    /// Try again at instant `at` (milliseconds since the Unix epoch).
    pub fn at(at: Timestamp) -> Self {
        RetryDecision::RetryAt(at)
    }

    /// Do not retry, for this reason.
    pub fn give_up(reason: impl Into<String>) -> Self {
        RetryDecision::GiveUp(reason.into())
    }
}

impl From<RetryDecision> for wit::RetryDecision {
    fn from(decision: RetryDecision) -> Self {
        match decision {
            RetryDecision::RetryAfter(delay) => wit::RetryDecision::RetryAfterMs(
                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            ),
            RetryDecision::RetryAt(at) => wit::RetryDecision::RetryAt(at),
            RetryDecision::GiveUp(reason) => wit::RetryDecision::GiveUp(reason),
        }
    }
}

impl<T: RetryStrategy> wit::Guest for crate::__private::Export<T> {
    fn validate_config(config: String) -> Result<(), wit_types::PluginError> {
        let config = config::parse::<T::Config>(&config)?;
        Ok(T::validate(&config)?)
    }

    fn next_retry(
        config: String,
        job: wit_types::JobInfo,
        failed: wit_types::ExecutionInfo,
    ) -> Result<wit::RetryDecision, wit_types::PluginError> {
        let config = config::parse::<T::Config>(&config)?;
        Ok(T::next_retry(config, job.into(), failed.into())?.into())
    }
}
