//! The admin API on the real `cnp serve` binary at 127.0.0.1:0: every route, auth, error
//! bodies, body limits, cancel, WebSocket streams, the OpenAPI document.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::api::Api;
use support::{process_gone, ConfigOpts, Env, DEADLINE};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn start() -> (Env, support::Cnp, Api) {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    (env, cnp, Api::new(base, token))
}

fn assert_error(v: &Value, code: &str, field: Option<&str>) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    match field {
        Some(f) => assert_eq!(v["error"]["field"], f, "{v}"),
        None => assert!(v["error"]["field"].is_null(), "{v}"),
    }
}

fn manual_job(name: &str, env: Value) -> Value {
    json!({
        "name": name,
        "prompt": "say hello",
        "schedule": {"type": "manual"},
        "tags": ["api-test"],
        "execution": {"environment": env},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_with_auth_and_error_bodies() {
    let (env, cnp, api) = start();

    // Token file: private, and its token never in the log.
    let mode = std::fs::metadata(env.api_token_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(api.token.len(), 43);

    // Liveness needs no token.
    let res = reqwest::get(format!("{}/api/jobs/health", api.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h: Value = res.json().await.unwrap();
    assert_eq!(
        (h["status"].as_str(), h["database"].as_str()),
        (Some("ok"), Some("ok"))
    );
    assert!(
        h["version"].is_string() && h["uptime_seconds"].is_u64(),
        "{h}"
    );

    // Everything else does: none, wrong, and a wrong one of the same length.
    let wrong_same_len: String = api
        .token
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    for path in [
        "/api/jobs",
        "/api/jobs/stats",
        "/api/jobs/metrics",
        "/metrics",
        "/api/executions",
        "/api/prompts",
        "/api/plugins",
        "/api/status",
        "/api/openapi.json",
        "/api/nope",
    ] {
        let url = format!("{}{path}", api.base);
        let res = api.http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_error(&res.json().await.unwrap(), "unauthorized", None);
        for bad in ["nope", wrong_same_len.as_str()] {
            let res = api.http.get(&url).bearer_auth(bad).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} with {bad}");
        }
    }
    let res = api
        .http
        .post(format!("{}/api/jobs", api.base))
        .json(&manual_job("sneaky", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // ---- prompts
    let (s, p) = api
        .post(
            "/api/prompts",
            json!({"title": "Daily Report", "content": "Summarise the day.", "tags": ["daily"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["id"], "daily-report");
    let (s, p2) = api
        .post(
            "/api/prompts",
            json!({"id": "1", "title": "One", "content": "First prompt."}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p2}");
    let (s, e) = api
        .post(
            "/api/prompts",
            json!({"id": "1", "title": "Again", "content": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&e, "conflict", None);
    let (s, e) = api
        .post(
            "/api/prompts",
            json!({"title": "No content", "content": " "}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("content"));
    let (s, e) = api.post("/api/prompts", json!({"content": "x"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("title"));
    let (s, l) = api.get("/api/prompts").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            l["total"].as_u64(),
            l["limit"].as_u64(),
            l["offset"].as_u64()
        ),
        (Some(2), Some(50), Some(0))
    );
    let (s, got) = api.get("/api/prompts/1").await;
    assert_eq!((s, got["title"].as_str()), (StatusCode::OK, Some("One")));
    let (s, upd) = api
        .call(
            Method::PUT,
            "/api/prompts/1",
            Some(json!({"title": "One!", "content": "First prompt, edited.", "tags": ["x"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{upd}");
    assert_eq!(upd["content"], "First prompt, edited.");
    let (s, e) = api.get("/api/prompts/missing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found", None);

    // ---- jobs: create, conflicts, validation, malformed, oversized
    let spec = json!({
        "name": "Daily Report",
        "prompt_id": "1",
        "schedule": {"type": "cron", "expression": "0 9 * * *", "timezone": "Asia/Taipei"},
        "priority": 7,
        "tags": ["daily-tasks"],
    });
    let (s, job) = api.post("/api/jobs", spec.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert_eq!(job["cron_expression"], "0 9 * * *");
    assert_eq!(job["status"], "active");
    assert!(job["next_run_time"].is_string(), "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();

    let (s, e) = api.post("/api/jobs", spec.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_error(&e, "conflict", None);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Daily Report"));

    let mut bad = spec.clone();
    bad["name"] = json!("bad cron");
    bad["schedule"]["expression"] = json!("61 * * * *");
    let (s, e) = api.post("/api/jobs", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_error(&e, "invalid", Some("schedule.expression"));

    let mut bad = spec.clone();
    bad["name"] = json!("bad priority");
    bad["priority"] = json!(11);
    let (s, e) = api.post("/api/jobs", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("priority"));

    let (s, e) = api
        .post("/api/jobs", json!({"name": "x", "prompt_id": "nope"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("prompt_id"));

    let (s, e) = api
        .post(
            "/api/jobs",
            json!({"name": "x", "prompt": "p", "schedule": {"type": "cron", "expresion": "* * * * *"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_error(&e, "invalid", Some("schedule.expresion"));

    let (s, e) = api
        .raw(Method::POST, "/api/jobs", "{\"name\": \"x\",")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&e, "bad_request", None);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("line 1"),
        "{e}"
    );

    let huge = "x".repeat(2 * 1024 * 1024);
    let res = api
        .http
        .post(format!("{}/api/jobs", api.base))
        .bearer_auth(&api.token)
        .json(&json!({"name": "big", "prompt": huge}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        res.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "a 413 closes the connection (the unread body makes it unusable)"
    );
    assert_error(&res.json().await.unwrap(), "payload_too_large", None);

    // ---- read, list, filter, paginate
    let (s, by_id) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(
        (s, by_id["name"].as_str()),
        (StatusCode::OK, Some("Daily Report"))
    );
    let (s, by_name) = api.get("/api/jobs/Daily%20Report").await;
    assert_eq!(
        (s, by_name["id"].as_str()),
        (StatusCode::OK, Some(job_id.as_str()))
    );
    let (s, e) = api.get("/api/jobs/no-such-job").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found", None);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-job"));

    for i in 0..3 {
        let (s, _) = api
            .post("/api/jobs", manual_job(&format!("extra-{i}"), json!({})))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, l) = api.get("/api/jobs").await;
    assert_eq!(l["total"], 4);
    assert_eq!(l["items"].as_array().unwrap().len(), 4);
    let (_, l) = api.get("/api/jobs?limit=2&offset=1").await;
    assert_eq!(
        (
            l["total"].as_u64(),
            l["limit"].as_u64(),
            l["offset"].as_u64()
        ),
        (Some(4), Some(2), Some(1))
    );
    let names: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["extra-0", "extra-1"], "by name, after the first");
    let (_, l) = api.get("/api/jobs?tag=daily-tasks").await;
    assert_eq!(l["total"], 1);
    let (s, e) = api.get("/api/jobs?limit=5000").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("limit"));
    let (s, e) = api.get("/api/jobs?status=sleeping").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("status"));

    // ---- update, pause, resume
    let mut changed = spec.clone();
    changed["priority"] = json!(3);
    let (s, j) = api
        .call(Method::PUT, &format!("/api/jobs/{job_id}"), Some(changed))
        .await;
    assert_eq!(
        (s, j["priority"].as_u64()),
        (StatusCode::OK, Some(3)),
        "{j}"
    );
    let mut clash = spec.clone();
    clash["name"] = json!("extra-0");
    let (s, e) = api
        .call(Method::PUT, &format!("/api/jobs/{job_id}"), Some(clash))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = api
        .call(Method::PUT, "/api/jobs/ghost", Some(spec.clone()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");

    let (s, j) = api.post_empty(&format!("/api/jobs/{job_id}/pause")).await;
    assert_eq!((s, j["status"].as_str()), (StatusCode::OK, Some("paused")));
    let (_, l) = api.get("/api/jobs?status=paused").await;
    assert_eq!(l["total"], 1);
    let (s, j) = api.post_empty(&format!("/api/jobs/{job_id}/resume")).await;
    assert_eq!((s, j["status"].as_str()), (StatusCode::OK, Some("active")));
    let (s, _) = api.post_empty("/api/jobs/ghost/pause").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // ---- execute (now and delayed), history, logs
    let (s, r) = api.post_empty("/api/jobs/extra-0/execute").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let exec_id = r["execution_id"].as_str().unwrap().to_owned();
    let done = api
        .wait_execution(&exec_id, "the run to complete", |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(done["trigger"], "manual");
    assert!(done["execution_time_ms"].is_u64(), "{done}");
    let (s, r) = api
        .post("/api/jobs/extra-1/execute", json!({"delay_seconds": 3600}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let delayed = r["execution_id"].as_str().unwrap().to_owned();
    let (_, e) = api.get(&format!("/api/executions/{delayed}")).await;
    assert_eq!(
        (e["status"].as_str(), e["trigger"].as_str()),
        (Some("queued"), Some("delayed"))
    );
    let (s, e) = api
        .post("/api/jobs/extra-1/execute", json!({"delay_secs": 1}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("delay_secs"));
    let (s, _) = api.post_empty("/api/jobs/ghost/execute").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, h) = api.get("/api/jobs/extra-0/executions").await;
    assert_eq!((s, h["total"].as_u64()), (StatusCode::OK, Some(1)), "{h}");
    assert_eq!(h["items"][0]["id"], exec_id.as_str());
    let (_, h) = api.get("/api/jobs/extra-0/executions?status=failed").await;
    assert_eq!(h["total"], 0);
    let (s, _) = api.get("/api/jobs/ghost/executions").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, all) = api.get("/api/executions").await;
    assert_eq!(all["total"], 2);
    assert_eq!(all["items"][0]["id"], delayed.as_str(), "newest first");
    let (_, q) = api.get("/api/executions?status=queued").await;
    assert_eq!(q["total"], 1);
    let (_, q) = api.get("/api/executions?job_id=extra-0&limit=1").await;
    assert_eq!(
        (q["total"].as_u64(), q["limit"].as_u64()),
        (Some(1), Some(1))
    );
    let (s, e) = api.get("/api/executions/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found", None);

    let (s, logs) = api.get(&format!("/api/executions/{exec_id}/logs")).await;
    assert_eq!(s, StatusCode::OK, "{logs}");
    let lines = logs["items"].as_array().unwrap();
    assert!(!lines.is_empty());
    assert_eq!(logs["total"].as_u64(), Some(lines.len() as u64));
    assert_eq!(lines[0]["seq"], 0);
    let (_, after) = api
        .get(&format!(
            "/api/executions/{exec_id}/logs?after_seq=0&limit=1"
        ))
        .await;
    assert_eq!(after["items"][0]["seq"], 1);
    let (s, _) = api.get("/api/executions/nope/logs").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Cancel a delayed run before it starts; again says false.
    let (s, c) = api
        .post_empty(&format!("/api/executions/{delayed}/cancel"))
        .await;
    assert_eq!((s, c["cancelled"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, c) = api
        .post_empty(&format!("/api/executions/{delayed}/cancel"))
        .await;
    assert_eq!(c["cancelled"], false);
    let (s, _) = api.post_empty("/api/executions/nope/cancel").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // ---- monitoring
    let (s, st) = api.get("/api/jobs/stats").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        st["jobs"],
        json!({"total": 4, "active": 4, "paused": 0, "disabled": 0})
    );
    assert_eq!(st["executions"]["completed"], 1);
    assert_eq!(st["executions"]["cancelled"], 1);
    assert_eq!(st["executions"]["failed"], 0);
    assert_eq!(st["queue"]["max_concurrent_jobs"], 10);
    assert_eq!(st["success_rate"], 1.0);
    assert!(st["avg_execution_time_ms"].as_f64().unwrap() > 0.0, "{st}");

    let (s, m) = api.get("/api/jobs/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["runs"]["completed"], 1);
    assert_eq!(m["durations"]["count"], 1);
    assert!(m["process"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(m["cooldown_active"], false);

    let res = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    for needle in [
        "cnp_runs_total{status=\"completed\"} 1",
        "cnp_run_duration_seconds_bucket{le=\"+Inf\"} 1",
        "cnp_run_duration_seconds_count 1",
        "# TYPE cnp_run_duration_seconds histogram",
        "cnp_queue_depth 0",
        "cnp_running 0",
        "cnp_cooldown_active 0",
        "# TYPE cnp_plugin_calls_total counter",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    let (s, p) = api.get("/api/plugins").await;
    assert_eq!(s, StatusCode::OK);
    assert!(p["items"].is_array() && p["errors"].is_array(), "{p}");

    let (s, st) = api.get("/api/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["engine"]["jobs"], 4);
    assert!(st["manifests"]["directory"].is_string(), "{st}");
    assert!(st["plugins"]["loaded"].is_u64());
    assert!(st["cooldown"].is_null());

    // ---- OpenAPI covers every route
    let (s, doc) = api.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/jobs", &["get", "post"][..]),
        ("/api/jobs/{id}", &["get", "put", "delete"]),
        ("/api/jobs/{id}/execute", &["post"]),
        ("/api/jobs/{id}/pause", &["post"]),
        ("/api/jobs/{id}/resume", &["post"]),
        ("/api/jobs/{id}/executions", &["get"]),
        ("/api/jobs/stats", &["get"]),
        ("/api/jobs/health", &["get"]),
        ("/api/jobs/metrics", &["get"]),
        ("/metrics", &["get"]),
        ("/api/executions", &["get"]),
        ("/api/executions/{id}", &["get"]),
        ("/api/executions/{id}/cancel", &["post"]),
        ("/api/executions/{id}/logs", &["get"]),
        ("/api/prompts", &["get", "post"]),
        ("/api/prompts/{id}", &["get", "put", "delete"]),
        ("/api/plugins", &["get"]),
        ("/api/status", &["get"]),
        ("/api/openapi.json", &["get"]),
        ("/api/ws", &["get"]),
    ] {
        let p = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for m in methods {
            assert!(p.get(*m).is_some(), "{m} {path} missing");
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // ---- deletes
    let (s, e) = api.call(Method::DELETE, "/api/prompts/1", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "prompt in use: {e}");
    assert_error(&e, "conflict", None);
    let (s, _) = api
        .call(Method::DELETE, &format!("/api/jobs/{job_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.call(Method::DELETE, "/api/prompts/1", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.call(Method::DELETE, "/api/prompts/1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, e) = api.get("/api/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found", None);

    let log = cnp.log();
    assert!(log.contains("admin API listening"), "{log}");
    assert!(!log.contains(&api.token), "the token leaked into the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_jobs_are_read_only_through_the_api() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    env.manifest(
        "report.yaml",
        "name: from-file\nprompt: hi\nschedule: { type: manual }\n",
    );
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let (s, j) = api.get("/api/jobs/from-file").await;
    assert_eq!(s, StatusCode::OK);
    assert!(j["source"].as_str().unwrap().ends_with("report.yaml"));
    let (s, e) = api
        .call(
            Method::PUT,
            "/api/jobs/from-file",
            Some(json!({"name": "from-file", "prompt": "changed"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("report.yaml"));
    let (s, _) = api.call(Method::DELETE, "/api/jobs/from-file", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, j) = api.post_empty("/api/jobs/from-file/pause").await;
    assert_eq!((s, j["status"].as_str()), (StatusCode::OK, Some("paused")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_cli_and_records_cancelled() {
    let (_env, _cnp, api) = start();
    let (s, _) = api
        .post(
            "/api/jobs",
            manual_job("slow", json!({"FAKE_CLAUDE_SLEEP_MS": "60000"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, r) = api.post_empty("/api/jobs/slow/execute").await;
    let id = r["execution_id"].as_str().unwrap().to_owned();
    let running = api
        .wait_execution(&id, "the CLI to be running", |e| {
            e["status"] == "running" && e["pid"].is_u64()
        })
        .await;
    let pid = running["pid"].as_u64().unwrap() as u32;
    assert!(!process_gone(pid));
    let t = Instant::now();
    let (s, c) = api
        .post_empty(&format!("/api/executions/{id}/cancel"))
        .await;
    assert_eq!(
        (s, c["cancelled"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{c}"
    );
    let done = api
        .wait_execution(&id, "the run to be cancelled", |e| e["status"] != "running")
        .await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["outcome"]["kind"], "cancelled");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t.elapsed()
    );
    support::wait_until("the CLI process to be gone", || {
        process_gone(pid).then_some(())
    });
    let (_, c) = api
        .post_empty(&format!("/api/executions/{id}/cancel"))
        .await;
    assert_eq!(c["cancelled"], false, "already finished");
    let (_, j) = api.get("/api/jobs/slow").await;
    assert_eq!(j["execution_count"], 1);
}

/// Reads JSON text messages until the server closes (or `deadline`).
async fn read_messages<S>(
    ws: &mut S,
    deadline: Duration,
    mut stop: impl FnMut(&Value) -> bool,
) -> (Vec<Value>, bool)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut out = Vec::new();
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return (out, false),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return (out, true),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON message");
                let done = stop(&v);
                out.push(v);
                if done {
                    return (out, false);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn log_seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .filter(|m| m["type"] == "log")
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_status_and_logs_with_backlog_for_late_joiners() {
    let (_env, cnp, api) = start();
    let (s, job) = api
        .post(
            "/api/jobs",
            manual_job(
                "streamed",
                json!({"FAKE_CLAUDE_SLEEP_MS": "1500", "FAKE_CLAUDE_STDERR": "careful"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let job_id = job["id"].as_str().unwrap().to_owned();

    // No token: the handshake is refused.
    let err = tokio_tungstenite::connect_async(api.ws_url("job_id=streamed"))
        .await
        .expect_err("no token");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED)
        }
        e => panic!("unexpected {e}"),
    }

    // A job's stream (token in the query): statuses and lines of its run, camelCase.
    let (mut job_ws, _) = tokio_tungstenite::connect_async(
        api.ws_url(&format!("job_id=streamed&token={}", api.token)),
    )
    .await
    .expect("connect");
    let (_, r) = api.post_empty("/api/jobs/streamed/execute").await;
    let first = r["execution_id"].as_str().unwrap().to_owned();
    let (msgs, _) = read_messages(&mut job_ws, DEADLINE, |m| {
        m["type"] == "jobStatus" && m["status"] == "completed"
    })
    .await;
    let statuses: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "jobStatus")
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "running", "completed"], "{msgs:#?}");
    for m in msgs.iter().filter(|m| m["type"] == "jobStatus") {
        assert_eq!(m["jobId"], job_id.as_str());
        assert_eq!(m["executionId"], first.as_str());
        assert!(
            m["timestamp"].is_string() && m.get("progress").is_some(),
            "{m}"
        );
    }
    let seqs = log_seqs(&msgs);
    assert!(!seqs.is_empty(), "{msgs:#?}");
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let log = msgs.iter().find(|m| m["type"] == "log").unwrap();
    assert_eq!(log["executionId"], first.as_str());
    assert!(
        log["logLevel"].is_string() && log["message"].is_string(),
        "{log}"
    );
    assert!(
        msgs.iter()
            .any(|m| m["type"] == "log" && m["stream"] == "stderr" && m["logLevel"] == "warn"),
        "stderr is warn: {msgs:#?}"
    );
    // Pausing the job shows on the job stream too.
    api.post_empty("/api/jobs/streamed/pause").await;
    let (msgs, _) = read_messages(&mut job_ws, DEADLINE, |m| m["status"] == "paused").await;
    let m = msgs.last().unwrap();
    assert!(m["executionId"].is_null() && m["status"] == "paused", "{m}");
    api.post_empty("/api/jobs/streamed/resume").await;
    job_ws.close(None).await.ok();

    // A late joiner on one execution (Authorization header): backlog, then live, then the end.
    let (_, r) = api.post_empty("/api/jobs/streamed/execute").await;
    let second = r["execution_id"].as_str().unwrap().to_owned();
    api.wait_execution(&second, "the second run to start", |e| {
        e["status"] == "running"
    })
    .await;
    // Its first line is out (and stored) before the fake CLI sleeps.
    support::wait_until("the first line to be stored", || {
        let c = _env.db();
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM execution_logs WHERE execution_id = ?1",
                [&second],
                |r| r.get(0),
            )
            .unwrap();
        (n > 0).then_some(())
    });
    let mut req = api
        .ws_url(&format!("execution_id={second}"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", api.token).parse().unwrap(),
    );
    let (mut ex_ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let (msgs, closed) = read_messages(&mut ex_ws, DEADLINE, |_| false).await;
    assert!(
        closed,
        "the server closes after the final status: {msgs:#?}"
    );
    assert_eq!(msgs[0]["type"], "jobStatus");
    assert_eq!(msgs[0]["status"], "running");
    let last = msgs.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["status"].as_str()),
        (Some("jobStatus"), Some("completed")),
        "{msgs:#?}"
    );
    let seqs = log_seqs(&msgs);
    let stored = api.get(&format!("/api/executions/{second}/logs")).await.1["total"]
        .as_u64()
        .unwrap();
    assert_eq!(
        seqs,
        (0..stored).collect::<Vec<_>>(),
        "every stored line once, in order: {msgs:#?}"
    );

    // Joining a finished execution: its whole log, its status, closed.
    let (mut done_ws, _) = tokio_tungstenite::connect_async(
        api.ws_url(&format!("execution_id={first}&token={}", api.token)),
    )
    .await
    .unwrap();
    let (msgs, closed) = read_messages(&mut done_ws, DEADLINE, |_| false).await;
    assert!(closed);
    assert_eq!(msgs.last().unwrap()["status"], "completed");
    assert!(!log_seqs(&msgs).is_empty());

    // Unknown execution: 404 before the upgrade.
    let err = tokio_tungstenite::connect_async(
        api.ws_url(&format!("execution_id=nope&token={}", api.token)),
    )
    .await
    .expect_err("unknown execution");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            assert_eq!(res.status(), StatusCode::NOT_FOUND)
        }
        e => panic!("unexpected {e}"),
    }
    assert!(
        !cnp.log().contains(&api.token),
        "the query token leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams_and_removes_the_address_file() {
    let (env, mut cnp, api) = start();
    let (mut ws, _) = tokio_tungstenite::connect_async(api.ws_url(&format!("token={}", api.token)))
        .await
        .unwrap();
    ws.send(Message::Ping(Vec::new().into())).await.unwrap();
    cnp.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, closed) = read_messages(&mut ws, DEADLINE, |_| false).await;
    assert!(closed, "the stream ends when cnp stops");
    let status = cnp.wait_exit(DEADLINE);
    assert!(status.success(), "{status}");
    assert!(!env.api_address_file().exists());
    assert!(cnp.log().contains("admin API stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_a_job_are_never_echoed_and_survive_a_read_modify_write() {
    let (env, cnp, api) = start();
    let hook = "https://hooks.slack.com/services/T000/B000/SECRETKEY123";
    let mut job = manual_job(
        "secretive",
        json!({"ANTHROPIC_API_KEY": "sk-ant-secret-1", "MODE": "ci"}),
    );
    job["notifications"] = json!({
        "on_failure": true,
        "channels": [{"type": "webhook", "url": hook}, {"type": "email", "recipients": ["a@b.c"], "smtp_password": "hunter2"}]
    });
    let (s, created) = api.post("/api/jobs", job).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let (s, shown) = api.get("/api/jobs/secretive").await;
    assert_eq!(s, StatusCode::OK);
    let text = shown.to_string() + &created.to_string() + &api.get("/api/jobs").await.1.to_string();
    for secret in ["SECRETKEY123", "sk-ant-secret-1", "hunter2"] {
        assert!(!text.contains(secret), "`{secret}` echoed: {text}");
    }
    assert_eq!(
        shown["notification_config"]["channels"][0]["url"],
        "https://hooks.slack.com/<redacted>"
    );
    assert_eq!(
        shown["execution_options"]["environment"]["MODE"], "ci",
        "non-secrets shown"
    );

    // Read-modify-write (what `cnp job update` does): change the priority, send the rest back.
    let mut spec = json!({
        "name": "secretive",
        "prompt": "say hello",
        "schedule": {"type": "manual"},
        "priority": 8,
        "execution": {"environment": shown["execution_options"]["environment"].clone()},
        "notifications": {"on_failure": true, "channels": shown["notification_config"]["channels"].clone()},
    });
    spec["tags"] = json!(["api-test"]);
    let (s, updated) = api
        .call(Method::PUT, "/api/jobs/secretive", Some(spec))
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["priority"], 8);
    // The stored definition kept the secrets.
    let db = env.db();
    let (env_json, channels): (String, String) = db
        .query_row(
            "SELECT execution_options, notification_config FROM jobs WHERE name = 'secretive'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(env_json.contains("sk-ant-secret-1"), "{env_json}");
    assert!(
        channels.contains("SECRETKEY123") && channels.contains("hunter2"),
        "{channels}"
    );
    assert!(!cnp.log().contains("SECRETKEY123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_with_a_retry_pending_says_so_in_detail_and_stream() {
    let (_env, cnp, api) = start();
    let mut job = manual_job("flaky", json!({"FAKE_CLAUDE_SCENARIO": "error"}));
    job["retry"] = json!({"max_attempts": 3, "strategy": "fixed", "delay": "1h"});
    let (s, _) = api.post("/api/jobs", job).await;
    assert_eq!(s, StatusCode::CREATED);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(api.ws_url(&format!("job_id=flaky&token={}", api.token)))
            .await
            .expect("connect");
    let (_, r) = api.post_empty("/api/jobs/flaky/execute").await;
    let first = r["execution_id"].as_str().unwrap().to_owned();
    let started = chrono::Utc::now();

    let (msgs, _) = read_messages(&mut ws, DEADLINE, |m| {
        m["type"] == "jobStatus" && m["status"] == "failed"
    })
    .await;
    let failed = msgs.iter().find(|m| m["status"] == "failed").unwrap();
    assert_eq!(failed["runStatus"], "retry_pending", "{failed}");
    let next_id = failed["nextAttemptId"]
        .as_str()
        .expect("nextAttemptId")
        .to_owned();
    assert_ne!(next_id, first);
    let next_at: chrono::DateTime<chrono::Utc> =
        failed["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    let wait = next_at - started;
    assert!(
        wait > chrono::TimeDelta::minutes(59) && wait <= chrono::TimeDelta::minutes(61),
        "the retry is due an hour after the failure: {failed}"
    );
    // Statuses before the end carry no chain fields.
    for m in msgs.iter().filter(|m| m["status"] == "running") {
        assert!(m.get("runStatus").is_none(), "{m}");
    }

    let (s, d) = api.get(&format!("/api/executions/{first}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempt"], 1, "{d}");
    assert_eq!(d["max_attempts"], 3, "{d}");
    assert_eq!(d["run_status"], "retry_pending", "{d}");
    assert_eq!(d["next_attempt"]["id"], next_id.as_str(), "{d}");
    assert_eq!(d["next_attempt"]["attempt"], 2, "{d}");
    assert_eq!(d["next_attempt"]["status"], "queued", "{d}");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    assert_eq!(attempts[0]["id"], first.as_str());
    assert_eq!(attempts[1]["id"], next_id.as_str());
    // The pending attempt's own detail: attempt 2 of 3, nothing after it yet.
    let (_, d2) = api.get(&format!("/api/executions/{next_id}")).await;
    assert_eq!(d2["attempt"], 2, "{d2}");
    assert!(d2["next_attempt"].is_null(), "{d2}");
    assert_eq!(d2["run_status"], "retry_pending", "{d2}");
    drop(cnp);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_enabled_false_turns_both_metrics_endpoints_off() {
    let env = Env::new(ConfigOpts::default());
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replacen(
            "[job_engine]\n",
            "[job_engine]\nmetrics_enabled = false\n",
            1,
        ),
    )
    .unwrap();
    env.enable_api();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);

    for path in ["/api/jobs/metrics", "/metrics"] {
        let (s, v) = api.get(path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_error(&v, "metrics_disabled", None);
    }
    // The rest of the API is unaffected.
    let (s, v) = api.get("/api/jobs/stats").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    cnp.assert_running();
}
