//! Traces and logs of the real `cnp serve`: with `[telemetry] otlp_endpoint` a run's spans
//! reach a local OTLP/HTTP receiver (protobuf, decoded here) — the `run` root and its
//! children in one trace, parented to it — flushed when cnp stops; without it nothing is sent.
//! `[log] format = "json"` (the `[logging]` section under the name) writes one JSON
//! object per line, with traces on or off.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

const MANIFEST: &str = "name: hello\nprompt: say hello\n\
    notifications:\n  on_success: true\n  channels:\n    - type: log\n";

/// Appends `text` to the test's config file (its last section is `[logging]`).
fn append_config(env: &Env, text: &str) {
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(text);
    std::fs::write(&env.config, config).unwrap();
}

/// Runs the job once (`--wait`), then stops cnp gracefully; returns the execution id.
fn run_once_and_stop(env: &Env, cnp: &mut Cnp) -> String {
    cnp.wait_log("cnp is running");
    let out = env.run_cli(&["job", "execute", "hello", "--wait"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cnp.log()
    );
    let runs = env.executions("hello");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "completed");
    cnp.signal(Signal::SIGTERM);
    let status = cnp.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}; log:\n{}", cnp.log());
    runs[0].id.clone()
}

fn attrs(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[test]
fn a_run_reaches_the_otlp_receiver_as_one_trace_with_parent_links() {
    let collector = HttpReceiver::start(200);
    let env = Env::new(ConfigOpts::default());
    append_config(
        &env,
        &format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"cnp-e2e\"\n",
            collector.url("")
        ),
    );
    env.manifest("hello.yaml", MANIFEST);
    let mut cnp = env.start();
    let execution = run_once_and_stop(&env, &mut cnp);
    let log = cnp.log();
    assert!(
        log.contains(&format!(
            "run traces are sent over OTLP url={}",
            collector.url("/v1/traces")
        )),
        "{log}"
    );
    // The run spans stay out of the log lines.
    assert!(!log.contains("cnp.execution_id"), "{log}");

    // Every export: POST /v1/traces, protobuf; the resource names the service.
    let requests = collector.requests();
    assert!(!requests.is_empty(), "nothing exported; log:\n{log}");
    let mut spans: Vec<Span> = Vec::new();
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/traces"));
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let resource = attrs(&rs.resource.expect("a resource").attributes);
            assert_eq!(
                resource.get("service.name").map(String::as_str),
                Some("cnp-e2e")
            );
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();

    // The run's root span: no parent, the run's attributes.
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(roots.len(), 1, "{names:?}");
    let root = roots[0];
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(root.trace_id.len(), 16);
    assert_eq!(root.span_id.len(), 8);
    let a = attrs(&root.attributes);
    assert_eq!(a["cnp.execution_id"], execution);
    assert_eq!(a["cnp.job_name"], "hello");
    assert_eq!(a["cnp.trigger"], "manual");
    assert_eq!(a["cnp.attempt"], "1");
    assert_eq!(a["cnp.status"], "completed");
    assert_eq!(a["cnp.outcome"], "success");

    // Its children, in its trace, parented to it.
    let child = |name: &str| -> &Span {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {names:?}");
        let s = found[0];
        assert_eq!(s.trace_id, root.trace_id, "{name} in the run's trace");
        assert_eq!(s.parent_span_id, root.span_id, "{name}'s parent is the run");
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano);
        s
    };
    let queue = child("queue");
    let claude = child("claude");
    let note = child("notification");
    assert!(queue.end_time_unix_nano <= claude.start_time_unix_nano);
    assert!(claude.end_time_unix_nano <= root.end_time_unix_nano);
    let c = attrs(&claude.attributes);
    assert_eq!(c["process.exit.code"], "0");
    assert_eq!(c["cnp.outcome"], "success");
    let pid: i64 = c["process.pid"].parse().unwrap();
    let record = env.records();
    assert_eq!(record.len(), 1);
    assert_eq!(pid, i64::from(record[0].pid), "the fake CLI's own pid");
    let n = attrs(&note.attributes);
    assert_eq!(n["cnp.event"], "succeeded");
    assert_eq!(n["cnp.channel_type"], "log");
    assert_eq!(n["cnp.delivery_status"], "sent");
    // Nothing else: one trace.
    assert!(
        spans.iter().all(|s| s.trace_id == root.trace_id),
        "{names:?}"
    );
    assert_eq!(spans.len(), 4, "{names:?}");
}

/// `[log] format = "json"`: each line of the log is one JSON object (level, target, message),
/// without and with traces; and without `otlp_endpoint` nothing is sent anywhere.
#[test]
fn json_logs_parse_line_by_line_and_no_endpoint_sends_nothing() {
    let collector = HttpReceiver::start(200);
    for traces in [false, true] {
        let env = Env::new(ConfigOpts::default());
        let config = std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("[logging]\n", "[log]\nformat = \"json\"\n");
        std::fs::write(&env.config, config).unwrap();
        if traces {
            append_config(
                &env,
                &format!("\n[telemetry]\notlp_endpoint = \"{}\"\n", collector.url("")),
            );
        }
        env.manifest("hello.yaml", MANIFEST);
        let mut cnp = env.start();
        run_once_and_stop(&env, &mut cnp);
        let log = cnp.log();
        let mut messages = Vec::new();
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nlog:\n{log}"));
            assert!(v["level"].is_string(), "{line}");
            assert!(v["target"].is_string(), "{line}");
            assert!(v["timestamp"].is_string(), "{line}");
            // The run spans never show in the log (as `span`/`spans` fields).
            assert!(
                v.get("span").is_none() && v.get("spans").is_none(),
                "{line}"
            );
            messages.push(
                v["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert!(messages.iter().any(|m| m == "run finished"), "{messages:?}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("run traces are sent over OTLP"))
                == traces,
            "{messages:?}"
        );
        if !traces {
            assert!(
                collector.requests().is_empty(),
                "sent without an endpoint: {:?}",
                collector.requests()
            );
        }
    }
    assert!(!collector.requests().is_empty(), "the traced run was sent");
}

/// A bad endpoint is a configuration error naming the key, not a crash.
#[test]
fn a_bad_endpoint_is_refused_naming_the_key() {
    let env = Env::new(ConfigOpts::default());
    append_config(&env, "\n[telemetry]\notlp_endpoint = \"localhost:4318\"\n");
    let out = env.run_cli(&["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
    assert!(err.contains("http://"), "{err}");
}
