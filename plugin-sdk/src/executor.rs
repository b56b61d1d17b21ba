//! Executors (world `executor` of `cnp:plugin@0.3.0`, exported interface `cnp:plugin/execute`):
//! plugins that do a job's work instead of the Claude Code CLI.

use crate::{config, JobInfo, PluginError, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An executor: runs a job once and says how it ended.
///
/// Enable the `executor` feature, implement this trait on a unit struct and pass it to
/// [`register_plugin!`](crate::register_plugin). Write progress to the run's log with
/// [`output`](crate::output), reach services with [`http`](crate::http) (only the hosts the
/// sidecar grants), and classify the ending with an [`Outcome`]: cnp retries `Failure` and
/// `Timeout` per the job's retry policy, never retries `Fatal` or `AuthError`, and holds every
/// job until a `UsageLimit` resets.
pub trait Executor {
    /// The plugin's configuration, parsed from the JSON text the host passes (see
    /// [`config::parse`]: empty text or `{}` gives `Default::default()`). `${VAR}` references
    /// in a job's executor configuration are filled in by cnp before the call.
    type Config: DeserializeOwned + Default;

    /// Checks a parsed configuration; called once when a job starts using the plugin (after
    /// parsing succeeded). The default accepts any configuration that parses.
    fn validate(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Does the run. Return `Ok` with an [`Outcome`] for every ending you can classify (a
    /// refused request is `Ok(RunResult::fatal(..))`, not an `Err`); an `Err` means the
    /// executor could not work at all (a bad configuration, a bug): the run fails with its
    /// message and is retried per the job's policy.
    fn run(config: Self::Config, request: RunRequest) -> Result<RunResult, PluginError>;
}

/// One run to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRequest {
    /// The job the run belongs to.
    pub job: JobInfo,
    /// The execution's id.
    pub execution_id: String,
    /// 1 for the first attempt of a run, 2 for its first retry, and so on.
    pub attempt: u32,
    /// The prompt, rendered (workflow results, webhook payloads filled in).
    pub prompt: String,
    /// The job's `execution` options (`model`, `max_turns`, `timeout_seconds`, ...), parsed
    /// from the JSON text the host sends; `Null` if that text did not parse. See
    /// [`RunRequest::option_str`].
    pub options: serde_json::Value,
    /// A session to continue, when there is one.
    pub resume_session: Option<String>,
    /// When the host stops the call (the job's timeout), in milliseconds since the Unix epoch:
    /// a run still going then ends as a timeout. See [`RunRequest::remaining`].
    pub deadline: Timestamp,
}

impl RunRequest {
    /// The string option `key` (`request.option_str("model")`), if set and a string.
    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options.get(key).and_then(serde_json::Value::as_str)
    }

    /// How long until [`deadline`](RunRequest::deadline) on the host's clock (zero once it
    /// passed): pass it to [`http::Request::timeout`](crate::http::Request::timeout) so
    /// requests do not outlive the run.
    pub fn remaining(&self) -> Duration {
        self.remaining_at(crate::clock::now())
    }

    /// How long from `now` until the deadline (zero once it passed).
    pub fn remaining_at(&self, now: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.deadline.saturating_sub(now)).unwrap_or(0))
    }
}

/// How a run ended, classified the way cnp classifies CLI runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The work was done.
    Success,
    /// It failed for a reason that may pass (a server error, an overloaded service, a network
    /// failure): retried per the job's retry policy.
    Failure(String),
    /// It failed for a reason retrying will not fix (a bad request, a missing model): not
    /// retried.
    Fatal(String),
    /// The credentials are missing or refused: not retried.
    AuthError(String),
    /// The account's usage or rate limit: every job is held until `resets_at` (when known).
    UsageLimit {
        /// What the service said.
        message: String,
        /// When the limit resets (milliseconds since the Unix epoch), if known.
        resets_at: Option<Timestamp>,
    },
    /// The work took too long (the executor gave up before the deadline): retried per policy.
    Timeout,
}

/// Tokens a run used, as the service counted them. Deserializes from Anthropic's `usage`
/// object (missing fields are 0, unknown ones ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenUsage {
    /// Input tokens (not counting cache reads and writes).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

/// Prices in US dollars per million tokens; [`TokenPrices::cost`] turns a [`TokenUsage`] into
/// dollars. Deserializes from `{"input", "output", "cache_write", "cache_read"}` (all
/// required), so a plugin's configuration can hold one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    /// Per million input tokens.
    pub input: f64,
    /// Per million output tokens.
    pub output: f64,
    /// Per million tokens written to the prompt cache.
    pub cache_write: f64,
    /// Per million tokens read from the prompt cache.
    pub cache_read: f64,
}

impl TokenPrices {
    /// What `usage` costs at these prices, in US dollars.
    pub fn cost(&self, usage: &TokenUsage) -> f64 {
        (usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_creation_input_tokens as f64 * self.cache_write
            + usage.cache_read_input_tokens as f64 * self.cache_read)
            / 1_000_000.0
    }
}

/// What a finished run produced. Start from a constructor ([`RunResult::success`],
/// [`RunResult::failure`], ...) and add to it with the `with_*` setters:
///
/// ```ignore
/// RunResult::success(text).with_usage(usage).with_cost(0.0123).with_status(200)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The result text (the model's answer): the run's output, what downstream jobs see as
    /// `result`.
    pub result_text: Option<String>,
    /// A session id later runs may continue, if the executor has such a thing.
    pub session_id: Option<String>,
    /// What the run cost in US dollars (counted against budgets).
    pub cost_usd: Option<f64>,
    /// Tokens used.
    pub usage: Option<TokenUsage>,
    /// An exit-code-like status for the run's record (an HTTP status, say).
    pub status_code: Option<i32>,
}

impl RunResult {
    /// A run that ended with `outcome` and nothing else recorded yet.
    pub fn new(outcome: Outcome) -> Self {
        RunResult {
            outcome,
            result_text: None,
            session_id: None,
            cost_usd: None,
            usage: None,
            status_code: None,
        }
    }

    /// The work was done; `text` is the result.
    pub fn success(text: impl Into<String>) -> Self {
        RunResult::new(Outcome::Success).with_text(text)
    }

    /// A failure retrying may fix ([`Outcome::Failure`]).
    pub fn failure(message: impl Into<String>) -> Self {
        RunResult::new(Outcome::Failure(message.into()))
    }

    /// A failure retrying will not fix ([`Outcome::Fatal`]).
    pub fn fatal(message: impl Into<String>) -> Self {
        RunResult::new(Outcome::Fatal(message.into()))
    }

    /// Missing or refused credentials ([`Outcome::AuthError`]).
    pub fn auth_error(message: impl Into<String>) -> Self {
        RunResult::new(Outcome::AuthError(message.into()))
    }

    /// A usage or rate limit, resetting at `resets_at` if known ([`Outcome::UsageLimit`]).
    pub fn usage_limit(message: impl Into<String>, resets_at: Option<Timestamp>) -> Self {
        RunResult::new(Outcome::UsageLimit {
            message: message.into(),
            resets_at,
        })
    }

    /// The executor gave up before the deadline ([`Outcome::Timeout`]).
    pub fn timeout() -> Self {
        RunResult::new(Outcome::Timeout)
    }

    /// Sets the result text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.result_text = Some(text.into());
        self
    }

    /// Sets the session id later runs may continue.
    pub fn with_session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the cost in US dollars.
    pub fn with_cost(mut self, usd: f64) -> Self {
        self.cost_usd = Some(usd);
        self
    }

    /// Sets (or clears) the cost in US dollars.
    pub fn with_cost_opt(mut self, usd: Option<f64>) -> Self {
        self.cost_usd = usd;
        self
    }

    /// Sets the token usage.
    pub fn with_usage(mut self, usage: TokenUsage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Sets the status code (an HTTP status, say).
    pub fn with_status(mut self, status: impl Into<i32>) -> Self {
        self.status_code = Some(status.into());
        self
    }

    /// Whether the outcome is [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        self.outcome == Outcome::Success
    }
}

/// Conversions from and to the generated bindings, and the export glue.
#[cfg(not(doc))]
mod glue {
    use super::*;
    use crate::bindings::cnp::plugin::types as wit_types;
    use crate::bindings::exports::cnp::plugin::execute as wit;

    impl From<wit::RunRequest> for RunRequest {
        fn from(r: wit::RunRequest) -> Self {
            RunRequest {
                job: r.job.into(),
                execution_id: r.execution_id,
                attempt: r.attempt,
                prompt: r.prompt,
                options: serde_json::from_str(&r.options).unwrap_or(serde_json::Value::Null),
                resume_session: r.resume_session,
                deadline: r.deadline,
            }
        }
    }

    impl From<Outcome> for wit::Outcome {
        fn from(o: Outcome) -> Self {
            match o {
                Outcome::Success => wit::Outcome::Success,
                Outcome::Failure(m) => wit::Outcome::Failure(m),
                Outcome::Fatal(m) => wit::Outcome::Fatal(m),
                Outcome::AuthError(m) => wit::Outcome::AuthError(m),
                Outcome::UsageLimit { message, resets_at } => {
                    wit::Outcome::UsageLimit(wit::UsageLimit { message, resets_at })
                }
                Outcome::Timeout => wit::Outcome::Timeout,
            }
        }
    }

    impl From<TokenUsage> for wit::TokenUsage {
        fn from(u: TokenUsage) -> Self {
            wit::TokenUsage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cache_creation_input_tokens: u.cache_creation_input_tokens,
                cache_read_input_tokens: u.cache_read_input_tokens,
            }
        }
    }

    impl From<RunResult> for wit::RunResult {
        fn from(r: RunResult) -> Self {
            wit::RunResult {
                outcome: r.outcome.into(),
                result_text: r.result_text,
                session_id: r.session_id,
                cost_usd: r.cost_usd,
                usage: r.usage.map(Into::into),
                status_code: r.status_code,
            }
        }
    }

    impl<T: Executor> wit::Guest for crate::__private::Export<T> {
        fn validate_config(config: String) -> Result<(), wit_types::PluginError> {
            let config = config::parse::<T::Config>(&config)?;
            Ok(T::validate(&config)?)
        }

        fn run(
            config: String,
            request: wit::RunRequest,
        ) -> Result<wit::RunResult, wit_types::PluginError> {
            let config = config::parse::<T::Config>(&config)?;
            T::validate(&config)?;
            Ok(T::run(config, request.into())?.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_turn_usage_into_dollars() {
        let sonnet = TokenPrices {
            input: 3.0,
            output: 15.0,
            cache_write: 3.75,
            cache_read: 0.30,
        };
        let usage = TokenUsage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 1_000_000,
        };
        assert!((sonnet.cost(&usage) - (3.0 + 1.5 + 0.30)).abs() < 1e-9);
    }

    #[test]
    fn usage_deserializes_from_anthropic_usage() {
        let u: TokenUsage = serde_json::from_str(
            r#"{"input_tokens": 10, "output_tokens": 5, "service_tier": "standard"}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            TokenUsage {
                input_tokens: 10,
                output_tokens: 5,
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn results_build_up() {
        let r = RunResult::success("hi")
            .with_status(200)
            .with_cost(0.5)
            .with_session("s");
        assert!(r.is_success());
        assert_eq!(
            (
                r.result_text.as_deref(),
                r.status_code,
                r.cost_usd,
                r.session_id.as_deref()
            ),
            (Some("hi"), Some(200), Some(0.5), Some("s"))
        );
        assert_eq!(
            RunResult::usage_limit("slow down", Some(5)).outcome,
            Outcome::UsageLimit {
                message: "slow down".into(),
                resets_at: Some(5)
            }
        );
    }

    #[test]
    fn remaining_never_goes_negative() {
        let job = JobInfo {
            id: "j".into(),
            name: "j".into(),
            tags: vec![],
            priority: 5,
            timezone: "UTC".into(),
        };
        let r = RunRequest {
            job,
            execution_id: "e".into(),
            attempt: 1,
            prompt: String::new(),
            options: serde_json::json!({"model": "m"}),
            resume_session: None,
            deadline: 10_000,
        };
        assert_eq!(r.remaining_at(4_000), Duration::from_secs(6));
        assert_eq!(r.remaining_at(20_000), Duration::ZERO);
        assert_eq!(r.option_str("model"), Some("m"));
        assert_eq!(r.option_str("max_turns"), None);
    }
}
