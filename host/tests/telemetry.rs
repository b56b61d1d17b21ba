//! Run traces (`[telemetry]`) through the engine, caught by OpenTelemetry's in-memory exporter:
//! the spans of a run and their parents, the retry's link to the attempt before it, the
//! attributes. (The OTLP export itself: tests/tests/telemetry_e2e.rs.)
//!
//! One test in this binary: it installs the process-wide subscriber and turns spans on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cnp::clock::Clock;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::manifest::{JobSpec, ScheduleSpec};
use cnp::model::{ExecutionStatus, Outcome};
use cnp::notify::{NotificationService, NotifySettings};
use cnp::store::ExecutionFilter;
use cnp::telemetry::Telemetry;
use opentelemetry::trace::{SpanId, Status};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

/// "Runs" for a second of (paused) time; fails when the prompt says so (exit 1).
struct TestRunner {
    clock: Clock,
}

impl Runner for TestRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let clock = self.clock.clone();
        Box::pin(async move {
            let started = clock.now();
            observer.spawned(4242, started);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let fail = request.prompt.contains("fail");
            RunReport {
                outcome: if fail {
                    Outcome::Error {
                        subtype: None,
                        api_status: None,
                        message: "the tool exploded".into(),
                    }
                } else {
                    Outcome::Success
                },
                exit_code: Some(if fail { 1 } else { 0 }),
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(4242),
                result_text: Some("done".into()),
                session_id: None,
                cost_usd: Some(0.25),
                usage: None,
                resource_usage: None,
            }
        })
    }
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_else(|| panic!("span {} has no {key}: {:?}", span.name, span.attributes))
}

fn children<'a>(spans: &'a [SpanData], parent: &SpanData) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_context.span_id())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_and_its_retry_are_two_linked_traces_with_their_children() {
    // The subscriber cnp serve installs with [telemetry], but with an in-memory exporter.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let telemetry = Telemetry::with_provider(provider);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(telemetry.layer()))
        .unwrap();
    cnp::telemetry::enable();

    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store_inline(&dir.path().join("cnp.db"));
    let clock = Clock::tokio_from(Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap());
    let mut cfg: cnp::config::NotificationsConfig = serde_json::from_value(json!({
        "default_channels": ["ops"],
        "on_failure": true,
        "channels": { "ops": { "type": "log" } }
    }))
    .unwrap();
    cfg.template_directory = dir.path().join("no-templates");
    let notify = NotificationService::start(
        NotifySettings::from_config(&cfg, None).unwrap(),
        store.clone(),
        clock.clone(),
        None,
    );
    let engine = Engine::start_with_notifications(
        store.clone(),
        Arc::new(TestRunner {
            clock: clock.clone(),
        }),
        EngineSettings::default(),
        clock,
        EventBus::default(),
        None,
        Some(notify),
    )
    .await
    .unwrap();
    let mut spec: JobSpec = serde_json::from_value(json!({
        "name": "flaky",
        "prompt": "please fail",
        "retry": { "max_attempts": 2, "strategy": "fixed", "initial_interval": 5 }
    }))
    .unwrap();
    spec.schedule = ScheduleSpec::Manual;
    let job = engine.create_job(spec, None).await.unwrap();
    let first = engine.run_now(&job.id).await.unwrap();

    // Both attempts end, and their notifications are delivered (`retry_scheduled`, `failed`).
    let done = |spans: &[SpanData]| {
        spans.iter().filter(|s| s.name == "run").count() == 2
            && spans.iter().filter(|s| s.name == "notification").count() == 2
    };
    let mut spans = Vec::new();
    for _ in 0..600 {
        spans = exporter.get_finished_spans().unwrap();
        if done(&spans) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done(&spans), "spans: {:#?}", names(&spans));
    let mut executions = store
        .list_executions(ExecutionFilter {
            job_id: Some(job.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    executions.sort_by_key(|e| e.retry_count);
    assert_eq!(executions.len(), 2);
    assert!(executions
        .iter()
        .all(|e| e.status == ExecutionStatus::Failed));
    assert_eq!(executions[0].id, first);

    let runs: Vec<&SpanData> = spans.iter().filter(|s| s.name == "run").collect();
    let run_of = |id: &str| {
        *runs
            .iter()
            .find(|s| attr_str(s, "cnp.execution_id") == id)
            .unwrap_or_else(|| panic!("no run span for {id}"))
    };
    let (a, b) = (run_of(&executions[0].id), run_of(&executions[1].id));
    for (run, attempt, trigger) in [(a, 1, "manual"), (b, 2, "retry")] {
        assert_eq!(run.parent_span_id, SpanId::INVALID, "run is a trace's root");
        assert_eq!(attr_str(run, "cnp.job_id"), job.id);
        assert_eq!(attr_str(run, "cnp.job_name"), "flaky");
        assert_eq!(attr_str(run, "cnp.trigger"), trigger);
        assert_eq!(attr(run, "cnp.attempt"), Some(Value::I64(attempt)));
        assert_eq!(attr_str(run, "cnp.status"), "failed");
        assert_eq!(attr_str(run, "cnp.outcome"), "error");
        assert!(
            matches!(&run.status, Status::Error { description } if description.contains("the tool exploded")),
            "{:?}",
            run.status
        );

        // Its children: the queue wait, the CLI process, the notification — all in its trace.
        let kids = children(&spans, run);
        let mut kid_names: Vec<&str> = kids.iter().map(|s| s.name.as_ref()).collect();
        kid_names.sort();
        assert_eq!(kid_names, ["claude", "notification", "queue"], "{run:#?}");
        for k in &kids {
            assert_eq!(k.span_context.trace_id(), run.span_context.trace_id());
            assert!(
                k.start_time >= run.start_time,
                "{} starts inside run",
                k.name
            );
        }
        let queue = kids.iter().find(|s| s.name == "queue").unwrap();
        let claude = kids.iter().find(|s| s.name == "claude").unwrap();
        assert!(queue.end_time <= claude.start_time, "queued, then run");
        assert!(claude.end_time <= run.end_time);
        assert_eq!(attr(claude, "process.pid"), Some(Value::I64(4242)));
        assert_eq!(attr(claude, "process.exit.code"), Some(Value::I64(1)));
        assert_eq!(attr_str(claude, "cnp.outcome"), "error");
        assert!(matches!(claude.status, Status::Error { .. }));
        let note = kids.iter().find(|s| s.name == "notification").unwrap();
        assert_eq!(attr_str(note, "cnp.channel"), "ops");
        assert_eq!(attr_str(note, "cnp.channel_type"), "log");
        assert_eq!(attr_str(note, "cnp.delivery_status"), "sent");
        assert_eq!(
            attr_str(note, "cnp.event"),
            if attempt == 1 {
                "retry_scheduled"
            } else {
                "failed"
            }
        );
    }
    // Two traces; the retry's run span links to the attempt it retries.
    assert_ne!(a.span_context.trace_id(), b.span_context.trace_id());
    assert!(a.links.links.is_empty());
    assert_eq!(b.links.links.len(), 1);
    assert_eq!(b.links.links[0].span_context, a.span_context);
    // Nothing else was traced: every span belongs to one of the two runs.
    for s in &spans {
        let t = s.span_context.trace_id();
        assert!(
            t == a.span_context.trace_id() || t == b.span_context.trace_id(),
            "{s:#?}"
        );
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} {:?}", s.name, s.attributes))
        .collect()
}
