//! The engine's plugin seams: condition hooks just before a run, the retry decision after a
//! failed one, and notifier plugins on run events. Whenever a plugin traps, times out, errors or
//! is missing, the built-in behaviour applies and the reason is noted on the execution (a
//! `system` log line) and in the service log.

use chrono::{DateTime, Utc};
use rand::Rng;
use tracing::field::Empty;
use tracing::Instrument;

use super::Engine;
use super::QueuedRun;
use crate::executor::RunReport;
use crate::model::{
    ExecutionStatus, Job, JobExecution, Outcome, RetryConfig, RetryStrategy, Schedule, Trigger,
};
use crate::plugins::{
    ConditionContext, ConditionTrigger02, ExecutionInfo, JobInfo, OutcomeKind, PluginKind,
    RetryDecision, UpstreamRunInfo, UpstreamStatus, Verdict,
};

/// Delays are never longer than this, whatever a strategy says.
const MAX_RETRY_DELAY: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// How much of a run's output plugins see.
const OUTPUT_TAIL: usize = 4096;

/// What the condition hooks decided.
pub(super) enum Gate {
    Run,
    Skip(String),
    Defer {
        until: DateTime<Utc>,
        reason: String,
    },
}

/// The workflow around a run its upstreams started (or a retry of one): its pass, the pass's
/// ended runs (as [`crate::store::Store::pass_runs`] reads them) and the run's direct upstreams.
pub(super) struct PassView<'a> {
    pub pass_id: &'a str,
    pub runs: &'a [(String, JobExecution)],
    pub upstream_ids: &'a [String],
}

/// Asks the job's condition hooks, in order; the first that does not say "run" decides. A hook
/// that fails is passed over (the built-in behaviour is to run) with a note. 0.2 hooks see the
/// pass's ended runs (`pass`); 0.1 hooks see a `dependency` run as `manual`.
pub(super) async fn check_conditions(
    engine: &Engine,
    job: &Job,
    run: &QueuedRun,
    trigger: Trigger,
    pass: Option<PassView<'_>>,
    note: &(dyn Fn(String) + Sync),
) -> Gate {
    let hooks = &job.execution_options.conditions;
    if hooks.is_empty() {
        return Gate::Run;
    }
    let s = &engine.shared;
    let Some(host) = s.plugins.get() else {
        note(format!(
            "condition hooks ({}) not asked: plugins are disabled; running",
            names(hooks.iter().map(|h| h.plugin.as_str()))
        ));
        return Gate::Run;
    };
    let previous = match s
        .store
        .previous_finished(job.id.clone(), run.execution_id.clone())
        .await
    {
        Ok(p) => p.map(|e| execution_info_of(&e, job)),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot read the previous run for condition hooks");
            None
        }
    };
    // WIT 0.1 has no `dependency` trigger: the plugin host shows such a run to a 0.1 hook as
    // `manual` (one that was asked for), without the upstreams.
    let context = ConditionContext {
        job: job_info(engine, job),
        trigger: match trigger {
            Trigger::Schedule | Trigger::Catchup => ConditionTrigger02::Schedule,
            // A webhook's run was asked for from outside, as a manual one is.
            Trigger::Manual | Trigger::Webhook => ConditionTrigger02::Manual,
            Trigger::Dependency => ConditionTrigger02::Dependency,
            Trigger::Delayed => ConditionTrigger02::Delayed,
            Trigger::Retry => ConditionTrigger02::Retry,
        },
        scheduled_at: run.scheduled_for.map(|t| t.timestamp_millis()),
        previous,
        workflow_pass: pass.as_ref().map(|p| p.pass_id.to_owned()),
        upstreams: pass
            .as_ref()
            .map(|p| upstreams_of(job, p))
            .unwrap_or_default(),
    };
    for hook in hooks {
        let span = crate::telemetry::span!(
            "condition_hook",
            cnp.plugin = %hook.plugin,
            cnp.verdict = Empty,
        );
        let verdict = host
            .evaluate_condition(&hook.plugin, hook.config.as_ref(), &context)
            .instrument(span.clone())
            .await;
        span.record(
            "cnp.verdict",
            match &verdict {
                Ok(Verdict::Run) => "run",
                Ok(Verdict::Skip(_)) => "skip",
                Ok(Verdict::DeferUntil(_)) => "defer",
                Err(_) => "failed",
            },
        );
        if let Err(f) = &verdict {
            crate::telemetry::set_error(&span, f.to_string());
        }
        drop(span);
        match verdict {
            Ok(Verdict::Run) => {}
            Ok(Verdict::Skip(reason)) => {
                return Gate::Skip(format!("condition `{}`: {reason}", hook.plugin))
            }
            Ok(Verdict::DeferUntil(d)) => {
                let now = s.clock.now();
                let until = DateTime::<Utc>::from_timestamp_millis(d.until)
                    .unwrap_or(now)
                    .clamp(now, now + MAX_RETRY_DELAY);
                return Gate::Defer {
                    until,
                    reason: format!("condition `{}`: {}", hook.plugin, d.reason),
                };
            }
            Err(f) => note(format!(
                "{f}; condition not applied (built-in behaviour: run)"
            )),
        }
    }
    Gate::Run
}

/// What a 0.2 condition hook sees of the pass: its ended runs but the job's own, in the order
/// they ended, results capped as in prompts.
fn upstreams_of(job: &Job, pass: &PassView<'_>) -> Vec<UpstreamRunInfo> {
    pass.runs
        .iter()
        .filter(|(_, e)| e.job_id != job.id)
        .filter_map(|(name, e)| {
            let status = match e.status {
                ExecutionStatus::Completed => UpstreamStatus::Completed,
                ExecutionStatus::Failed => UpstreamStatus::Failed,
                ExecutionStatus::TimedOut => UpstreamStatus::TimedOut,
                ExecutionStatus::Cancelled => UpstreamStatus::Cancelled,
                ExecutionStatus::Interrupted => UpstreamStatus::Interrupted,
                ExecutionStatus::Skipped => UpstreamStatus::Skipped,
                // Not ended: `pass_runs` never returns these.
                ExecutionStatus::Queued | ExecutionStatus::Deferred | ExecutionStatus::Running => {
                    return None
                }
            };
            Some(UpstreamRunInfo {
                job_name: name.clone(),
                execution_id: e.id.clone(),
                direct: pass.upstream_ids.contains(&e.id),
                status,
                exit_code: e.exit_code,
                result_text: e.output.as_deref().map(crate::workflow::cap),
                error: e.error.clone(),
                cost_usd: e.cost_usd,
                duration_ms: e.execution_time_ms,
                session_id: e.session_id.clone(),
            })
        })
        .collect()
}

/// When (and why) a failed run is tried again, or `None` when it is not.
pub(super) async fn plan_retry(
    engine: &Engine,
    job: &Job,
    run: &QueuedRun,
    outcome: &Outcome,
    status: ExecutionStatus,
    info: ExecutionInfo,
    note: &(dyn Fn(String) + Sync),
) -> Option<(DateTime<Utc>, String)> {
    let cfg = retry_config(engine, job)?;
    let interrupted = status == ExecutionStatus::Interrupted;
    if !(matches!(status, ExecutionStatus::Failed | ExecutionStatus::TimedOut) || interrupted) {
        return None;
    }
    let attempt = run.retry_count + 1;
    if interrupted && !cfg.retries_interrupted() {
        note("interrupted by cnp's stop: not retried (on_interrupt = fail)".into());
        return None;
    }
    if attempt >= cfg.max_attempts {
        note(format!(
            "attempt {attempt} of {} {}: no attempts left",
            cfg.max_attempts,
            if interrupted { "interrupted" } else { "failed" }
        ));
        return None;
    }
    let now = engine.shared.clock.now();
    if interrupted {
        // Not the run's fault: no backoff. Recorded now, it runs when cnp starts again.
        return Some((
            now,
            "interrupted by cnp's stop; runs at the next start".into(),
        ));
    }
    match outcome {
        Outcome::AuthError { .. } | Outcome::InvalidArguments { .. } => {
            note("not retried: this error does not pass by itself (fix the cause)".into());
            return None;
        }
        Outcome::SpawnFailed { message } if is_not_found(message) => {
            note("not retried: the Claude CLI was not found".into());
            return None;
        }
        // Waiting out a usage limit is the cooldown's job, not a retry's.
        Outcome::UsageLimit { .. } => return None,
        _ => {}
    }
    let s = &engine.shared;
    let builtin = || {
        let d = builtin_delay(cfg, attempt, &mut rand::rng());
        (now + d, format!("{} backoff", strategy_name(cfg.strategy)))
    };
    let (at, how) = match (&cfg.plugin, s.plugins.get()) {
        (Some(name), Some(host)) => {
            let span = crate::telemetry::span!(
                "retry_strategy",
                cnp.plugin = %name,
                cnp.attempt = i64::from(attempt),
                cnp.decision = Empty,
            );
            let decision = host
                .next_retry(
                    name,
                    cfg.plugin_config.as_ref(),
                    &job_info(engine, job),
                    &info,
                )
                .instrument(span.clone())
                .await;
            span.record(
                "cnp.decision",
                match &decision {
                    Ok(RetryDecision::RetryAfterMs(_)) | Ok(RetryDecision::RetryAt(_)) => "retry",
                    Ok(RetryDecision::GiveUp(_)) => "give_up",
                    Err(_) => "failed",
                },
            );
            if let Err(f) = &decision {
                crate::telemetry::set_error(&span, f.to_string());
            }
            drop(span);
            match decision {
                Ok(RetryDecision::RetryAfterMs(ms)) => (
                    now + chrono::TimeDelta::milliseconds(ms.min(i64::MAX as u64) as i64)
                        .min(MAX_RETRY_DELAY),
                    format!("plugin `{name}`"),
                ),
                Ok(RetryDecision::RetryAt(t)) => (
                    DateTime::<Utc>::from_timestamp_millis(t)
                        .unwrap_or(now)
                        .clamp(now, now + MAX_RETRY_DELAY),
                    format!("plugin `{name}`"),
                ),
                Ok(RetryDecision::GiveUp(reason)) => {
                    note(format!("not retried: plugin `{name}` gave up: {reason}"));
                    return None;
                }
                Err(f) => {
                    let (at, how) = builtin();
                    note(format!("{f}; using the built-in {how}"));
                    (at, how)
                }
            }
        }
        (Some(name), None) => {
            let (at, how) = builtin();
            note(format!(
                "retry plugin `{name}` not asked: plugins are disabled; using the built-in {how}"
            ));
            (at, how)
        }
        (None, _) => builtin(),
    };
    Some((at, how))
}

/// The job's retry policy: its own `retry`, else the `[retry]` defaults (if they allow retries).
pub(super) fn retry_config<'a>(engine: &'a Engine, job: &'a Job) -> Option<&'a RetryConfig> {
    job.retry_config
        .as_ref()
        .or(engine.shared.settings.default_retry.as_ref())
}

/// The built-in strategies. `attempt` is the failed attempt (1-based). Jitter picks uniformly
/// between half the delay and the delay ("equal jitter"), so retries of many jobs spread out.
pub fn builtin_delay(cfg: &RetryConfig, attempt: u32, rng: &mut impl Rng) -> chrono::TimeDelta {
    let initial = cfg.initial_interval.unwrap_or(60) as f64;
    let n = attempt.max(1);
    let secs = match cfg.strategy {
        RetryStrategy::Fixed => initial,
        RetryStrategy::Linear => initial * f64::from(n),
        RetryStrategy::ExponentialBackoff => {
            initial * cfg.multiplier.unwrap_or(2.0).powi(n as i32 - 1)
        }
        RetryStrategy::Custom => match cfg.delays.as_slice() {
            [] => initial * 2f64.powi(n as i32 - 1),
            d => d[(n as usize - 1).min(d.len() - 1)] as f64,
        },
    };
    let cap = cfg
        .max_interval
        .map(|m| m as f64)
        .unwrap_or(MAX_RETRY_DELAY.num_seconds() as f64);
    let mut secs = secs
        .min(cap)
        .min(MAX_RETRY_DELAY.num_seconds() as f64)
        .max(0.0);
    if cfg.jitter && secs > 0.0 {
        secs = rng.random_range(secs / 2.0..=secs);
    }
    chrono::TimeDelta::milliseconds((secs * 1000.0) as i64)
}

fn strategy_name(s: RetryStrategy) -> &'static str {
    match s {
        RetryStrategy::Fixed => "fixed",
        RetryStrategy::Linear => "linear",
        RetryStrategy::ExponentialBackoff => "exponential",
        RetryStrategy::Custom => "custom",
    }
}

fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("no such file")
}

/// Hands an event about a run to the notification service (the job's channels, or the
/// default ones), which delivers in the background: never delays the scheduler. Outcomes are
/// recorded (`notification_deliveries`) and noted on the execution.
pub(super) fn notify_event(
    engine: &Engine,
    job: &Job,
    kind: crate::notify::EventKind,
    execution: Option<ExecutionInfo>,
    summary: String,
    note: std::sync::Arc<dyn Fn(String) + Send + Sync>,
) {
    let id = execution.as_ref().map(|e| e.execution_id.clone());
    notify_run(engine, job, kind, id, execution, summary, note);
}

/// [`notify_event`] naming the execution (for events without a finished run: started).
pub(super) fn notify_run(
    engine: &Engine,
    job: &Job,
    kind: crate::notify::EventKind,
    execution_id: Option<String>,
    execution: Option<ExecutionInfo>,
    summary: String,
    note: std::sync::Arc<dyn Fn(String) + Send + Sync>,
) {
    engine.notifications().notify(crate::notify::Notification {
        kind,
        job: Some(job_info(engine, job)),
        job_config: job.notification_config.clone(),
        execution_id,
        execution,
        summary,
        at: engine.shared.clock.now(),
        details: Default::default(),
        note: Some(note),
    });
}

/// Checks, when a job is defined, that the plugins it names are loaded and of the right kind.
/// Only warns: a plugin may be dropped in later, and runs fall back to built-in behaviour.
pub(super) fn warn_unknown_plugins(engine: &Engine, job: &Job) {
    let Some(host) = engine.shared.plugins.get() else {
        return;
    };
    let mut uses: Vec<(&str, PluginKind)> = job
        .execution_options
        .conditions
        .iter()
        .map(|c| (c.plugin.as_str(), PluginKind::ConditionHook))
        .collect();
    if let Some(p) = job.retry_config.as_ref().and_then(|r| r.plugin.as_deref()) {
        uses.push((p, PluginKind::RetryStrategy));
    }
    if let Some(e) = &job.execution_options.executor {
        uses.push((e.plugin.as_str(), PluginKind::Executor));
    }
    if let Some(n) = &job.notification_config {
        for c in &n.channels {
            if c.get("type").and_then(|t| t.as_str()) == Some("plugin") {
                if let Some(p) = c.get("plugin").and_then(|p| p.as_str()) {
                    uses.push((p, PluginKind::Notifier));
                }
            }
        }
    }
    for (name, kind) in uses {
        match host.get(name) {
            None => {
                tracing::warn!(job = %job.name, plugin = name, "the job uses plugin `{name}`, which is not loaded (runs fall back to built-in behaviour until it is)")
            }
            Some(p) if p.kind != kind => {
                tracing::warn!(job = %job.name, plugin = name, "the job uses `{name}` as a {kind}, but it is a {} plugin", p.kind)
            }
            Some(_) => {}
        }
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

pub(super) fn job_info(engine: &Engine, job: &Job) -> JobInfo {
    let timezone = match &job.schedule {
        Schedule::Cron {
            timezone: Some(tz), ..
        } => tz.clone(),
        _ => engine.shared.settings.default_timezone.name().to_owned(),
    };
    JobInfo {
        id: job.id.clone(),
        name: job.name.clone(),
        tags: job.tags.clone(),
        priority: job.priority,
        timezone,
    }
}

/// What plugins see of a run that just ended.
pub(super) fn execution_info(
    run: &QueuedRun,
    report: &RunReport,
    status: ExecutionStatus,
    max_attempts: u32,
) -> ExecutionInfo {
    ExecutionInfo {
        execution_id: run.execution_id.clone(),
        attempt: run.retry_count + 1,
        max_attempts,
        outcome: outcome_kind(&report.outcome, status),
        exit_code: report.exit_code,
        duration_ms: report
            .started_at
            .map(|s| (report.finished_at - s).num_milliseconds().max(0) as u64)
            .unwrap_or(0),
        output_tail: tail(report.result_text.as_deref().unwrap_or_default()),
        error: report.outcome.error_message(),
        usage_limit_reset: match &report.outcome {
            Outcome::UsageLimit { resets_at, .. } => resets_at.map(|t| t.timestamp_millis()),
            _ => None,
        },
        scheduled_at: run.scheduled_for.map(|t| t.timestamp_millis()),
        finished_at: report.finished_at.timestamp_millis(),
    }
}

fn execution_info_of(e: &JobExecution, job: &Job) -> ExecutionInfo {
    let outcome = e.outcome.clone().unwrap_or(Outcome::Cancelled);
    ExecutionInfo {
        execution_id: e.id.clone(),
        attempt: e.retry_count + 1,
        max_attempts: job.retry_config.as_ref().map_or(1, |r| r.max_attempts),
        outcome: outcome_kind(&outcome, e.status),
        exit_code: e.exit_code,
        duration_ms: e.execution_time_ms.unwrap_or(0),
        output_tail: tail(e.output.as_deref().unwrap_or_default()),
        error: e.error.clone(),
        usage_limit_reset: match &outcome {
            Outcome::UsageLimit { resets_at, .. } => resets_at.map(|t| t.timestamp_millis()),
            _ => None,
        },
        scheduled_at: e.scheduled_for.map(|t| t.timestamp_millis()),
        finished_at: e.completed_at.unwrap_or(e.queued_at).timestamp_millis(),
    }
}

fn outcome_kind(o: &Outcome, status: ExecutionStatus) -> OutcomeKind {
    if status == ExecutionStatus::Interrupted {
        return OutcomeKind::Interrupted;
    }
    match o {
        Outcome::Success => OutcomeKind::Success,
        Outcome::Error { .. } | Outcome::ResourceLimit { .. } => OutcomeKind::Failure,
        Outcome::Timeout => OutcomeKind::Timeout,
        Outcome::SpawnFailed { message } if is_not_found(message) => OutcomeKind::CliNotFound,
        Outcome::SpawnFailed { .. } => OutcomeKind::SpawnFailure,
        Outcome::AuthError { .. } => OutcomeKind::AuthError,
        Outcome::InvalidArguments { .. } => OutcomeKind::Failure,
        Outcome::UsageLimit { .. } => OutcomeKind::UsageLimit,
        Outcome::Cancelled => OutcomeKind::Cancelled,
    }
}

fn tail(s: &str) -> String {
    if s.len() <= OUTPUT_TAIL {
        return s.to_owned();
    }
    let mut start = s.len() - OUTPUT_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg(strategy: RetryStrategy) -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            strategy,
            initial_interval: Some(10),
            max_interval: Some(100),
            multiplier: Some(3.0),
            delays: vec![],
            jitter: false,
            plugin: None,
            plugin_config: None,
            on_interrupt: None,
        }
    }

    fn secs(c: &RetryConfig, attempt: u32) -> i64 {
        builtin_delay(c, attempt, &mut rand::rngs::StdRng::seed_from_u64(7)).num_seconds()
    }

    #[test]
    fn builtin_strategies() {
        let f = cfg(RetryStrategy::Fixed);
        assert_eq!((secs(&f, 1), secs(&f, 4)), (10, 10));
        let l = cfg(RetryStrategy::Linear);
        assert_eq!((secs(&l, 1), secs(&l, 3), secs(&l, 20)), (10, 30, 100));
        let e = cfg(RetryStrategy::ExponentialBackoff);
        assert_eq!(
            (secs(&e, 1), secs(&e, 2), secs(&e, 3), secs(&e, 9)),
            (10, 30, 90, 100)
        );
        let mut c = cfg(RetryStrategy::Custom);
        c.delays = vec![5, 50, 500];
        assert_eq!(
            (secs(&c, 1), secs(&c, 2), secs(&c, 3), secs(&c, 7)),
            (5, 50, 100, 100)
        );
        let mut no_cap = cfg(RetryStrategy::ExponentialBackoff);
        no_cap.max_interval = None;
        assert_eq!(
            secs(&no_cap, 60),
            MAX_RETRY_DELAY.num_seconds(),
            "capped at 7 days"
        );
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let mut c = cfg(RetryStrategy::Fixed);
        c.initial_interval = Some(100);
        c.max_interval = None;
        c.jitter = true;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ds: Vec<i64> = (0..200)
            .map(|_| builtin_delay(&c, 1, &mut rng).num_milliseconds())
            .collect();
        assert!(ds.iter().all(|d| (50_000..=100_000).contains(d)));
        assert!(
            ds.iter().min() < Some(&60_000) && ds.iter().max() > Some(&90_000),
            "spread out"
        );
    }
}
