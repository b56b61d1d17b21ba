//! A run's trace (`[telemetry]`, see `crate::telemetry`): the spans travel with the run
//! ([`QueuedRun::trace`]) through the dispatch queue into its task.
//!
//! ```text
//! run                 from entering the dispatch queue to the end of the run task
//! ├─ queue            in the dispatch queue: entered → dispatched
//! ├─ condition_hook   one per hook asked (engine/hooks.rs)
//! ├─ claude           the CLI process: spawn → exit (twice when a lost session is run afresh)
//! ├─ executor         or, for a job with `executor:`, the plugin's call (`cnp.plugin`)
//! ├─ retry_strategy   the retry plugin asked (engine/hooks.rs)
//! └─ notification     one per delivery (notify/), possibly ending after `run`
//! ```
//!
//! Each dispatch of a run is one trace. A run that goes back to wait (deferred by a condition
//! hook, the usage limit, a database that cannot be written) and a retry (a new execution) start
//! a new trace whose `run` span links to the one before.
//!
//! With traces off every span here is `Span::none()`.

use opentelemetry::trace::SpanContext;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::QueuedRun;
use crate::model::{ExecutionStatus, Outcome};
use crate::telemetry::{self, span};

/// The spans of a run waiting in, or going through, the dispatch queue.
#[derive(Debug, Clone)]
pub struct RunTrace {
    /// `run`, the trace's root; none until the run first enters the dispatch queue.
    root: Span,
    /// `queue`, open while the run waits in the dispatch queue.
    queue: Span,
    /// The run span this try follows (its previous dispatch, or the attempt it retries).
    follows: Option<SpanContext>,
}

impl Default for RunTrace {
    fn default() -> Self {
        RunTrace {
            root: Span::none(),
            queue: Span::none(),
            follows: None,
        }
    }
}

impl RunTrace {
    /// The run's root span (none when traces are off or it never entered the queue).
    pub fn root(&self) -> &Span {
        &self.root
    }

    /// The trace of the next try of this run, or of its retry: no spans yet, a link to this
    /// one's `run` span.
    pub fn next_try(&self) -> RunTrace {
        RunTrace {
            root: Span::none(),
            queue: Span::none(),
            follows: telemetry::span_context(&self.root),
        }
    }

    /// The run is dispatched: its `queue` span ends.
    pub fn dispatched(&mut self) {
        self.queue = Span::none();
    }
}

/// (Numbers are recorded as i64: tracing-opentelemetry keeps only i64, f64 and bool as numbers.)
///
/// The run enters the dispatch queue: its `run` span starts (unless it already has one) and a
/// `queue` span under it.
pub(super) fn queued(run: &mut QueuedRun) {
    if !telemetry::enabled() {
        return;
    }
    let t = &mut run.trace;
    if t.root.is_none() {
        let scheduled_for = run.scheduled_for.map(|t| t.to_rfc3339());
        t.root = span!(
            parent: None,
            "run",
            cnp.execution_id = %run.execution_id,
            cnp.job_id = %run.job_id,
            cnp.attempt = i64::from(run.retry_count) + 1,
            cnp.priority = i64::from(run.priority),
            cnp.scheduled_for = scheduled_for,
            cnp.job_name = Empty,
            cnp.trigger = Empty,
            cnp.status = Empty,
            cnp.outcome = Empty,
            cnp.error = Empty,
        );
        if let Some(before) = t.follows.take() {
            t.root.add_link(before);
        }
    }
    t.queue = span!(parent: &t.root, "queue", cnp.priority = i64::from(run.priority));
}

/// The run was claimed: what the store said about it.
pub(super) fn claimed(run: &QueuedRun, job_name: &str, trigger: crate::model::Trigger) {
    let root = &run.trace.root;
    root.record("cnp.job_name", job_name);
    root.record("cnp.trigger", trigger.as_str());
}

/// How the run ended (or why it went back to wait): the `run` span's status.
pub(super) fn ended(run: &QueuedRun, status: &str, outcome: Option<&Outcome>, error: Option<&str>) {
    let root = &run.trace.root;
    if root.is_none() {
        return;
    }
    root.record("cnp.status", status);
    if let Some(o) = outcome {
        root.record("cnp.outcome", outcome_name(o));
    }
    if let Some(e) = error {
        root.record("cnp.error", e);
    }
    let failed = [
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Interrupted,
    ]
    .iter()
    .any(|s| s.as_str() == status);
    if failed {
        telemetry::set_error(root, error.unwrap_or(status));
    }
}

/// The `claude` span of one CLI process (a child of the current span, `run`).
pub(super) fn cli_span(execution_id: &str, timeout: std::time::Duration) -> Span {
    span!(
        "claude",
        cnp.execution_id = %execution_id,
        cnp.timeout_s = timeout.as_secs() as i64,
        process.pid = Empty,
        process.exit.code = Empty,
        cnp.outcome = Empty,
        cnp.cost_usd = Empty,
    )
}

/// The `executor` span of a run an executor plugin does (a child of `run`, in place of
/// `claude`); [`cli_ended`] records its end the same way.
pub(super) fn executor_span(
    execution_id: &str,
    timeout: std::time::Duration,
    plugin: &str,
) -> Span {
    span!(
        "executor",
        cnp.execution_id = %execution_id,
        cnp.plugin = %plugin,
        cnp.timeout_s = timeout.as_secs() as i64,
        process.pid = Empty,
        process.exit.code = Empty,
        cnp.outcome = Empty,
        cnp.cost_usd = Empty,
    )
}

/// What the CLI process did, on its `claude` span.
pub(super) fn cli_ended(span: &Span, report: &crate::executor::RunReport) {
    if span.is_none() {
        return;
    }
    if let Some(pid) = report.pid {
        span.record("process.pid", i64::from(pid));
    }
    if let Some(code) = report.exit_code {
        span.record("process.exit.code", code);
    }
    if let Some(cost) = report.cost_usd {
        span.record("cnp.cost_usd", cost);
    }
    span.record("cnp.outcome", outcome_name(&report.outcome));
    if !matches!(report.outcome, Outcome::Success) {
        telemetry::set_error(
            span,
            report
                .outcome
                .error_message()
                .unwrap_or_else(|| outcome_name(&report.outcome).to_owned()),
        );
    }
}

pub fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Error { .. } => "error",
        Outcome::Timeout => "timeout",
        Outcome::Cancelled => "cancelled",
        Outcome::SpawnFailed { .. } => "spawn_failed",
        Outcome::AuthError { .. } => "auth_error",
        Outcome::InvalidArguments { .. } => "invalid_arguments",
        Outcome::UsageLimit { .. } => "usage_limit",
        Outcome::ResourceLimit { .. } => "resource_limit",
    }
}
