//! Condition hooks (world `condition-hook`, exported interface `cnp:plugin/condition`).
//!
//! With the `wit-0-2` feature the hook targets `cnp:plugin@0.2.0`: [`RunContext`] then also
//! has `workflow_pass` and `upstreams` (the ended runs of the workflow pass that started the
//! run), and [`Trigger`] has `Dependency`.

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
    /// Its upstream runs ended (the job has `depends_on`): see [`RunContext::upstreams`].
    /// Only with the `wit-0-2` feature; a 0.1 hook sees such a run as `Manual`.
    #[cfg(any(doc, cnp_wit_0_2))]
    Dependency,
}

/// How an upstream run ended (`wit-0-2` only).
#[cfg(any(doc, cnp_wit_0_2))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// It finished successfully.
    Completed,
    /// It failed (after its last attempt).
    Failed,
    /// It exceeded its time limit.
    TimedOut,
    /// A user cancelled it.
    Cancelled,
    /// cnp stopped while it ran.
    Interrupted,
    /// It did not run (a condition, or its own upstreams' verdicts).
    Skipped,
}

/// One ended run of the workflow pass (the latest attempt of its job; `wit-0-2` only).
#[cfg(any(doc, cnp_wit_0_2))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamRun {
    /// The upstream job's name.
    pub job_name: String,
    /// The run's execution id.
    pub execution_id: String,
    /// Whether it is one of the run's direct upstreams (whose end started it).
    pub direct: bool,
    /// How it ended.
    pub status: RunStatus,
    /// The process's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Its result text, at most 64 KiB (a longer one is cut and ends with a
    /// `… [truncated by cnp: N more bytes]` line).
    pub result: Option<String>,
    /// The error message, when it did not succeed.
    pub error: Option<String>,
    /// What it cost in US dollars, when the CLI said.
    pub cost_usd: Option<f64>,
    /// Its wall-clock duration in milliseconds.
    pub duration_ms: Option<u64>,
    /// The Claude session it ran in, when the CLI said.
    pub session_id: Option<String>,
}

/// Everything a hook can decide on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(any(doc, cnp_wit_0_2)), derive(Eq))]
pub struct RunContext {
    /// The job about to run.
    pub job: JobInfo,
    /// Why it is starting.
    pub trigger: Trigger,
    /// The schedule slot or requested start time.
    pub scheduled_at: Option<Timestamp>,
    /// The job's previous finished run, if any.
    pub previous: Option<ExecutionInfo>,
    /// The workflow pass the run belongs to, when its upstreams started it (or it retries such
    /// a run). `wit-0-2` only.
    #[cfg(any(doc, cnp_wit_0_2))]
    pub workflow_pass: Option<String>,
    /// The runs of that pass that ended before this one, in the order they ended (empty
    /// outside a workflow); the direct upstreams have `direct` set. `wit-0-2` only.
    #[cfg(any(doc, cnp_wit_0_2))]
    pub upstreams: Vec<UpstreamRun>,
}

#[cfg(any(doc, cnp_wit_0_2))]
impl RunContext {
    /// The direct upstreams: the runs whose end started this one.
    pub fn direct_upstreams(&self) -> impl Iterator<Item = &UpstreamRun> {
        self.upstreams.iter().filter(|u| u.direct)
    }
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
        Verdict::DeferUntil {
            until,
            reason: reason.into(),
        }
    }
}

impl From<wit::Trigger> for Trigger {
    fn from(trigger: wit::Trigger) -> Self {
        match trigger {
            wit::Trigger::Schedule => Trigger::Schedule,
            wit::Trigger::Manual => Trigger::Manual,
            wit::Trigger::Delayed => Trigger::Delayed,
            wit::Trigger::Retry => Trigger::Retry,
            #[cfg(all(not(doc), cnp_wit_0_2))]
            wit::Trigger::Dependency => Trigger::Dependency,
        }
    }
}

#[cfg(all(not(doc), cnp_wit_0_2))]
impl From<wit::RunStatus> for RunStatus {
    fn from(s: wit::RunStatus) -> Self {
        match s {
            wit::RunStatus::Completed => RunStatus::Completed,
            wit::RunStatus::Failed => RunStatus::Failed,
            wit::RunStatus::TimedOut => RunStatus::TimedOut,
            wit::RunStatus::Cancelled => RunStatus::Cancelled,
            wit::RunStatus::Interrupted => RunStatus::Interrupted,
            wit::RunStatus::Skipped => RunStatus::Skipped,
        }
    }
}

#[cfg(all(not(doc), cnp_wit_0_2))]
impl From<wit::UpstreamRun> for UpstreamRun {
    fn from(u: wit::UpstreamRun) -> Self {
        UpstreamRun {
            job_name: u.job_name,
            execution_id: u.execution_id,
            direct: u.direct,
            status: u.status.into(),
            exit_code: u.exit_code,
            result: u.result_text,
            error: u.error,
            cost_usd: u.cost_usd,
            duration_ms: u.duration_ms,
            session_id: u.session_id,
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
            #[cfg(all(not(doc), cnp_wit_0_2))]
            workflow_pass: c.workflow_pass,
            #[cfg(all(not(doc), cnp_wit_0_2))]
            upstreams: c.upstreams.into_iter().map(Into::into).collect(),
            // Rustdoc's bindings are 0.1's (see `bindings`).
            #[cfg(doc)]
            workflow_pass: None,
            #[cfg(doc)]
            upstreams: Vec::new(),
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
