//! Runs done by an executor plugin (`cnp:plugin@0.3.0`) instead of the Claude CLI, and the
//! [`Dispatch`] runner that sends each run to the CLI or to its job's executor.
//!
//! A plugin's run is reported like a CLI run: its lines go to the run's log through the same
//! observer (bounded the same way), and its result becomes a [`RunReport`] whose [`Outcome`] the
//! engine classifies exactly as a CLI run's — retries by the job's policy for failures and
//! timeouts, none for refusals and bad credentials, the cooldown for a usage limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::runner::bounded;
use super::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use crate::model::{LogStream, Outcome, PluginRef, ResourceUsage};
use crate::plugins::{
    ExecutorOutcome, ExecutorRequest, ExecutorResult, JobInfo, LineSink, PluginFailure, PluginHost,
};

/// What a run needs to be done by an executor plugin (set by the engine for jobs with
/// `executor:`).
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The plugin and the job's configuration for it.
    pub executor: PluginRef,
    /// The job, as plugins see it.
    pub job: JobInfo,
    /// 1 for a run's first attempt.
    pub attempt: u32,
}

/// Sends a run to its job's executor plugin, or to the CLI runner when the job has none.
pub struct Dispatch {
    cli: Arc<dyn Runner>,
    plugins: Option<PluginHost>,
    max_output_bytes: usize,
    max_line_bytes: usize,
}

impl Dispatch {
    /// `plugins`: `None` when plugins are disabled (a job with an executor then fails to start,
    /// saying so). Lines are bounded like a CLI run's.
    pub fn new(
        cli: Arc<dyn Runner>,
        plugins: Option<PluginHost>,
        max_output_bytes: usize,
        max_line_bytes: usize,
    ) -> Dispatch {
        Dispatch {
            cli,
            plugins,
            max_output_bytes,
            max_line_bytes,
        }
    }
}

impl Runner for Dispatch {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let Some(call) = request.plugin.clone() else {
            return self.cli.run(request, observer);
        };
        let plugins = self.plugins.clone();
        let (max_output, max_line) = (self.max_output_bytes, self.max_line_bytes);
        Box::pin(async move {
            let Some(plugins) = plugins else {
                let message = format!(
                    "the job's executor is plugin `{}`, but plugins are disabled ([plugins] enabled = false)",
                    call.executor.plugin
                );
                observer.line(LogStream::System, &message);
                return RunReport::unstarted(Outcome::SpawnFailed { message }, Utc::now());
            };
            run_plugin(&plugins, call, request, observer, max_output, max_line).await
        })
    }
}

async fn run_plugin(
    plugins: &PluginHost,
    call: PluginCall,
    request: RunRequest,
    observer: Arc<dyn RunObserver>,
    max_output: usize,
    max_line: usize,
) -> RunReport {
    let name = call.executor.plugin.clone();
    let started_at = Utc::now();
    let started = Instant::now();
    let deadline =
        started_at + chrono::Duration::from_std(request.timeout).unwrap_or(chrono::Duration::MAX);
    let wire = ExecutorRequest {
        job: call.job,
        execution_id: request.execution_id.clone(),
        attempt: call.attempt,
        prompt: request.prompt.clone(),
        options: serde_json::to_string(&request.options).unwrap_or_else(|_| "{}".into()),
        resume_session: request
            .options
            .resume_session
            .clone()
            .filter(|s| !s.trim().is_empty()),
        deadline: deadline.timestamp_millis(),
    };
    observer.line(
        LogStream::System,
        &format!("running executor plugin `{name}`"),
    );
    let lines = bounded_sink(observer.clone(), max_output, max_line);
    let run = plugins.execute(
        &name,
        call.executor.config.as_ref(),
        &wire,
        request.timeout,
        lines.sink.clone(),
    );
    let result = tokio::select! {
        r = run => Some(r),
        _ = request.cancel.cancelled() => None,
    };
    let finished_at = Utc::now();
    let dropped = lines.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        observer.line(
            LogStream::System,
            &format!(
                "output over the run's limit of {max_output} bytes: {dropped} more line(s) dropped"
            ),
        );
    }
    let resource_usage = Some(ResourceUsage {
        wall_time_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    });
    let report = |outcome, result: Option<ExecutorResult>| {
        let result = result.unwrap_or(ExecutorResult {
            outcome: ExecutorOutcome::Success,
            result_text: None,
            session_id: None,
            cost_usd: None,
            usage: None,
            status_code: None,
        });
        RunReport {
            outcome,
            exit_code: result.status_code,
            started_at: Some(started_at),
            finished_at,
            pid: None,
            result_text: result.result_text.map(|t| bounded(&t, max_output)),
            session_id: result.session_id.filter(|s| !s.is_empty()),
            cost_usd: result.cost_usd.filter(|c| c.is_finite() && *c >= 0.0),
            usage: result.usage.map(|u| {
                serde_json::json!({
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cache_creation_input_tokens": u.cache_creation_input_tokens,
                    "cache_read_input_tokens": u.cache_read_input_tokens,
                })
            }),
            resource_usage: resource_usage.clone(),
        }
    };
    match result {
        None => {
            observer.line(
                LogStream::System,
                "cancelled: the executor's call was stopped",
            );
            report(Outcome::Cancelled, None)
        }
        Some(Ok(r)) => {
            let outcome = outcome_of(&r.outcome, r.status_code);
            report(outcome, Some(r))
        }
        Some(Err(failure)) => {
            observer.line(LogStream::System, &failure.to_string());
            let outcome = match &failure {
                PluginFailure::Timeout { .. } => Outcome::Timeout,
                PluginFailure::NotLoaded { .. } | PluginFailure::WrongKind { .. } => {
                    Outcome::SpawnFailed {
                        message: failure.to_string(),
                    }
                }
                _ => Outcome::Error {
                    subtype: Some("executor".into()),
                    api_status: None,
                    message: failure.to_string(),
                },
            };
            report(outcome, None)
        }
    }
}

/// The engine's outcome for what the plugin said: the same classes as a CLI run's.
fn outcome_of(o: &ExecutorOutcome, status: Option<i32>) -> Outcome {
    let api_status = status.and_then(|s| u16::try_from(s).ok());
    match o {
        ExecutorOutcome::Success => Outcome::Success,
        ExecutorOutcome::Failure(message) => Outcome::Error {
            subtype: Some("executor".into()),
            api_status,
            message: message.clone(),
        },
        // Retrying will not help: the same class as a CLI that refused its arguments.
        ExecutorOutcome::Fatal(message) => Outcome::InvalidArguments {
            message: message.clone(),
        },
        ExecutorOutcome::AuthError(message) => Outcome::AuthError {
            message: message.clone(),
        },
        ExecutorOutcome::UsageLimit(limit) => Outcome::UsageLimit {
            resets_at: limit
                .resets_at
                .and_then(DateTime::<Utc>::from_timestamp_millis),
            message: limit.message.clone(),
        },
        ExecutorOutcome::Timeout => Outcome::Timeout,
    }
}

/// A sink that passes lines on to the observer, each cut to `max_line` bytes, until `max_output`
/// bytes have gone; the rest are counted.
struct BoundedSink {
    sink: LineSink,
    dropped: Arc<AtomicUsize>,
}

fn bounded_sink(observer: Arc<dyn RunObserver>, max_output: usize, max_line: usize) -> BoundedSink {
    let used = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let sink: LineSink = Arc::new(move |stderr: bool, text: &str| {
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let cut = if line.len() > max_line {
                format!("{}… [line cut]", crate::text::clip(line, max_line))
            } else {
                line.to_owned()
            };
            if used.fetch_add(cut.len(), Ordering::Relaxed) + cut.len() > max_output {
                counter.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let stream = if stderr {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            observer.line(stream, &cut);
        }
    });
    BoundedSink { sink, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::ExecutorUsageLimit;
    use std::sync::Mutex;

    #[test]
    fn outcomes_map_to_the_classes_of_cli_runs() {
        assert_eq!(
            outcome_of(&ExecutorOutcome::Success, Some(200)),
            Outcome::Success
        );
        assert_eq!(
            outcome_of(&ExecutorOutcome::Failure("overloaded".into()), Some(529)),
            Outcome::Error {
                subtype: Some("executor".into()),
                api_status: Some(529),
                message: "overloaded".into()
            }
        );
        assert!(matches!(
            outcome_of(&ExecutorOutcome::Fatal("bad model".into()), Some(404)),
            Outcome::InvalidArguments { .. }
        ));
        assert!(matches!(
            outcome_of(&ExecutorOutcome::AuthError("no key".into()), Some(401)),
            Outcome::AuthError { .. }
        ));
        let at = Utc::now();
        assert_eq!(
            outcome_of(
                &ExecutorOutcome::UsageLimit(ExecutorUsageLimit {
                    message: "rate limited".into(),
                    resets_at: Some(at.timestamp_millis()),
                }),
                Some(429)
            ),
            Outcome::UsageLimit {
                resets_at: DateTime::from_timestamp_millis(at.timestamp_millis()),
                message: "rate limited".into()
            }
        );
        assert_eq!(
            outcome_of(&ExecutorOutcome::Timeout, None),
            Outcome::Timeout
        );
    }

    struct Lines(Mutex<Vec<(LogStream, String)>>);

    impl RunObserver for Lines {
        fn spawned(&self, _: u32, _: DateTime<Utc>) {}
        fn line(&self, stream: LogStream, line: &str) {
            self.0.lock().unwrap().push((stream, line.to_owned()));
        }
    }

    #[test]
    fn lines_are_split_cut_and_bounded() {
        let seen = Arc::new(Lines(Mutex::new(Vec::new())));
        let b = bounded_sink(seen.clone(), 30, 8);
        (b.sink)(false, "one\ntwo\r\nthree-is-long");
        (b.sink)(true, "x");
        (b.sink)(false, "past the limit");
        let lines = seen.0.lock().unwrap().clone();
        assert_eq!(
            lines,
            vec![
                (LogStream::Stdout, "one".to_owned()),
                (LogStream::Stdout, "two".to_owned()),
                (LogStream::Stdout, "three-is… [line cut]".to_owned()),
                (LogStream::Stderr, "x".to_owned()),
            ]
        );
        assert_eq!(b.dropped.load(Ordering::Relaxed), 1);
    }
}
