//! Executor plugins on the real `cnp serve`: jobs whose work is done by a WebAssembly component
//! (`executor: {plugin, config}`) instead of the Claude CLI.
//!
//! - `anthropic-messages` (built from plugins/) against a local mock of the Messages API: a
//!   success is recorded like a CLI run (output, cost, tokens, log lines live on the WebSocket),
//!   the key comes from cnp's environment and is never shown; a 429 with `retry-after` holds
//!   every job (CLI jobs too) in the usage-limit cooldown and releases them; a 529 is retried by
//!   the job's policy; a 401 fails without a retry; a slow server is cut off by the job's
//!   timeout.
//! - the `executor-hostile` fixture: an endless loop, a flood of output, a request to a host
//!   not granted and a panic are contained, and the service keeps running.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::api::Api;
use support::{install_plugin, seed_plugin_cache, ConfigOpts, Env};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "sk-ant-test-0123456789";

/// One scripted answer of the mock.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
    delay: Duration,
}

fn ok(text: &str) -> Reply {
    Reply {
        status: 200,
        headers: vec![],
        body: json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 12, "output_tokens": 30,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }),
        delay: Duration::ZERO,
    }
}

fn error(status: u16, kind: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: json!({"type": "error", "error": {"type": kind, "message": message}}),
        delay: Duration::ZERO,
    }
}

/// A local Messages API: answers `POST /v1/messages` from a script (then "ok"), recording each
/// request's headers and body.
#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

impl Mock {
    async fn start() -> (Mock, String) {
        let mock = Mock::default();
        let app = axum::Router::new()
            .route("/v1/messages", axum::routing::post(answer))
            .with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (mock, format!("127.0.0.1:{}", addr.port()))
    }

    fn then(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    fn seen(&self) -> Vec<(HeaderMap, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(State(m): State<Mock>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    m.seen.lock().unwrap().push((headers, body));
    let r = m
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| ok("Hello from the mock.\nSecond line."));
    tokio::time::sleep(r.delay).await;
    let mut res = (
        AxStatus::from_u16(r.status).unwrap(),
        axum::Json(r.body.clone()),
    )
        .into_response();
    for (k, v) in r.headers {
        res.headers_mut().insert(k, v.parse().unwrap());
    }
    res
}

/// The service with `anthropic-messages` granted the mock, and its key in the environment.
async fn start(mock_authority: &str) -> (Env, support::Cnp, Api) {
    let env = Env::new(ConfigOpts::default());
    seed_plugin_cache(&env, &["anthropic-messages", "executor-hostile"]);
    install_plugin(
        &env,
        "anthropic-messages",
        "anthropic-messages",
        Some(&format!(
            "[grants]\nallowed_hosts = [\"{mock_authority}\"]\n\n[config]\nbase_url = \"http://{mock_authority}\"\n"
        )),
    );
    install_plugin(
        &env,
        "executor-hostile",
        "executor-hostile",
        Some("[grants]\nallowed_hosts = []\n[limits]\nmemory_mb = 64\n"),
    );
    // Runs start again 1 s after a reset (not the default 30 s), so the test sees the release.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{config}\n[cooldown]\nmargin = \"1s\"\n"),
    )
    .unwrap();
    let mut cnp = env.start_with(&[("ANTHROPIC_TEST_KEY", KEY)]);
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    api.wait("/api/plugins", "both plugins loaded", |p| {
        p["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    (env, cnp, api)
}

fn messages_job(name: &str, extra: Value) -> Value {
    let mut job = json!({
        "name": name,
        "prompt": format!("{name}: say hello"),
        "executor": {"plugin": "anthropic-messages",
                     "config": {"api_key": "${ANTHROPIC_TEST_KEY}", "model": "claude-sonnet-4-5"}},
    });
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    job
}

async fn create(api: &Api, job: Value) -> String {
    let (s, b) = api.post("/api/jobs", job).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().unwrap().to_owned()
}

async fn run(api: &Api, job: &str) -> String {
    let (s, b) = api.post_empty(&format!("/api/jobs/{job}/execute")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    b["execution_id"].as_str().unwrap().to_owned()
}

/// Whether an execution and its run are over.
fn finished(e: &Value) -> bool {
    e["run_status"] == "finished" && !matches!(e["status"].as_str(), Some("running" | "queued"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_api_job_is_recorded_like_a_cli_job() {
    let (mock, authority) = Mock::start().await;
    let (env, _cnp, api) = start(&authority).await;

    // A key written out in the definition is refused: it must come from the environment.
    let (s, e) = api
        .post(
            "/api/jobs",
            json!({"name": "leaky", "prompt": "x",
                   "executor": {"plugin": "anthropic-messages", "config": {"api_key": "sk-ant-real"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["field"], "executor.config.api_key", "{e}");

    let id = create(&api, messages_job("greet", json!({}))).await;
    let (_, job) = api.get("/api/jobs/greet").await;
    assert_eq!(
        job["execution_options"]["executor"]["plugin"],
        "anthropic-messages"
    );
    assert!(!job.to_string().contains(KEY), "{job}");

    // The job's stream shows the lines as the plugin emits them.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(api.ws_url(&format!("job_id={id}&token={}", api.token)))
            .await
            .expect("WebSocket");
    let exec = run(&api, "greet").await;
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(left, ws.next()).await else {
            panic!("the stream ended before the run did: {lines:?}");
        };
        let m: Value = serde_json::from_str(&t).unwrap();
        if m["type"] == "log" {
            lines.push(m["message"].as_str().unwrap_or_default().to_owned());
        }
        if m["type"] == "jobStatus" && m["status"] == "completed" {
            break;
        }
    }
    assert!(
        lines.iter().any(|l| l == "Hello from the mock."),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "Second line."), "{lines:?}");

    let e = api.wait_execution(&exec, "the run to end", finished).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["output"], "Hello from the mock.\nSecond line.", "{e}");
    assert_eq!(e["exit_code"], 200, "{e}");
    assert_eq!(e["usage"]["input_tokens"], 12, "{e}");
    assert_eq!(e["usage"]["output_tokens"], 30, "{e}");
    // Sonnet: $3 per million input tokens, $15 per million output tokens.
    let cost = e["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (12.0 * 3.0 + 30.0 * 15.0) / 1e6).abs() < 1e-9,
        "{e}"
    );
    assert!(e["pid"].is_null(), "no process: {e}");

    // The request the API got: the key from the environment, the prompt, the model.
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["messages"][0]["content"], "greet: say hello");

    // Nothing stored holds the key.
    let dump = env.dump();
    assert!(!dump.contains(KEY), "the key was stored");
    // The costs report counts the run.
    let (_, costs) = api.get("/api/costs?days=1").await;
    assert_eq!(costs["runs"], 1, "{costs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_overload_bad_keys_and_slow_servers_take_the_cli_paths() {
    let (mock, authority) = Mock::start().await;
    let (env, _cnp, api) = start(&authority).await;
    let retry = json!({"max_attempts": 3, "strategy": "fixed", "initial_interval": 1});

    // 529 (overloaded): retried by the job's policy, and the retry succeeds.
    mock.then(error(529, "overloaded_error", "Overloaded"));
    create(&api, messages_job("overloaded", json!({"retry": retry}))).await;
    run(&api, "overloaded").await;
    let runs = api
        .wait(
            "/api/jobs/overloaded/executions",
            "the retry to succeed",
            |p| p["items"][0]["status"] == "completed",
        )
        .await;
    let runs = runs["items"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["status"], "failed");
    assert_eq!(runs[1]["exit_code"], 529);
    assert_eq!(runs[0]["trigger"], "retry");

    // 401: failed, and not retried whatever the policy allows. The API echoes the key in its
    // message: what is recorded has it replaced.
    mock.then(error(
        401,
        "authentication_error",
        &format!("invalid x-api-key {KEY}"),
    ));
    create(&api, messages_job("badkey", json!({"retry": retry}))).await;
    let e = run(&api, "badkey").await;
    let e = api.wait_execution(&e, "the 401", finished).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["outcome"]["kind"], "auth_error", "{e}");
    assert_eq!(e["attempts"].as_array().unwrap().len(), 1, "{e}");
    assert!(!e.to_string().contains(KEY), "the key was recorded: {e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("<redacted>"),
        "{e}"
    );

    // A slow server: the job's timeout stops the call.
    mock.then(Reply {
        delay: Duration::from_secs(30),
        ..ok("too late")
    });
    create(
        &api,
        messages_job("slow", json!({"execution": {"timeout_seconds": 2}})),
    )
    .await;
    let started = Instant::now();
    let e = run(&api, "slow").await;
    let e = api.wait_execution(&e, "the timeout", finished).await;
    assert_eq!(e["status"], "timed_out", "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "{e}");

    // 429 with retry-after: every job is held — a CLI job too — until the reset, then runs.
    let mut limited = error(
        429,
        "rate_limit_error",
        "Number of requests has exceeded your rate limit",
    );
    limited.headers = vec![("retry-after", "3".into())];
    mock.then(limited);
    create(&api, messages_job("limited", json!({}))).await;
    let (s, b) = api
        .post("/api/jobs", json!({"name": "cli-job", "prompt": "hi"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    run(&api, "limited").await;
    let c = api
        .wait("/api/cooldown", "the cooldown", |c| {
            !c["cooldown"].is_null()
        })
        .await;
    assert!(
        c["cooldown"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rate limit"),
        "{c}"
    );
    assert!(
        c["cooldown"]["until"].is_string(),
        "the reset is known: {c}"
    );
    let cli_run = run(&api, "cli-job").await;
    let held = api
        .wait_execution(&cli_run, "the CLI run held", |e| e["status"] == "deferred")
        .await;
    assert_eq!(held["status"], "deferred");
    // Released after the reset: both jobs complete (the limited one on its next attempt).
    api.wait_execution(&cli_run, "the CLI run released", |e| {
        e["status"] == "completed"
    })
    .await;
    api.wait(
        "/api/jobs/limited/executions",
        "the limited job to run",
        |p| {
            p["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|e| e["status"] == "completed"))
        },
    )
    .await;
    let (_, c) = api.get("/api/cooldown").await;
    assert!(c["cooldown"].is_null(), "{c}");
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_executors_are_contained_and_the_service_stays_up() {
    let (_mock, authority) = Mock::start().await;
    let (env, mut cnp, api) = start(&authority).await;
    let hostile = |name: &str, mode: &str, timeout: u64| {
        json!({"name": name, "prompt": "x",
               "execution": {"timeout_seconds": timeout},
               "executor": {"plugin": "executor-hostile", "config": {"mode": mode}}})
    };

    // An endless loop: stopped at the job's timeout.
    create(&api, hostile("spin", "spin", 2)).await;
    let e = run(&api, "spin").await;
    let e = api
        .wait_execution(&e, "the spin to be stopped", finished)
        .await;
    assert_eq!(e["status"], "timed_out", "{e}");

    // A user's cancel stops a running executor at once (its instance is dropped).
    create(&api, hostile("spin-cancelled", "spin", 600)).await;
    let e = run(&api, "spin-cancelled").await;
    api.wait_execution(&e, "the spin to start", |e| e["status"] == "running")
        .await;
    let asked = Instant::now();
    let (s, r) = api.post_empty(&format!("/api/executions/{e}/cancel")).await;
    assert!(s.is_success(), "{s} {r}");
    let done = api.wait_execution(&e, "the cancel", finished).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );

    // A flood of output (20 MB of lines, a 20 MiB result): the log and the result are cut at
    // the executor's 4 MiB output limit.
    let mut flood = hostile("flood", "flood", 120);
    flood["executor"]["config"] =
        json!({"mode": "flood", "lines": 20_000, "line_bytes": 1_000, "result_bytes": 20 << 20});
    create(&api, flood).await;
    let e = run(&api, "flood").await;
    let e = api.wait_execution(&e, "the flood to end", finished).await;
    assert_eq!(e["status"], "completed", "{e:.300}");
    let output = e["output"].as_str().unwrap_or_default();
    assert!(
        output.len() <= (4 << 20) + 64 && output.ends_with("bytes]"),
        "result of {} bytes kept",
        output.len()
    );
    let log = env.logs(e["id"].as_str().unwrap());
    let logged: usize = log.iter().map(|(_, l)| l.len()).sum();
    assert!(logged <= (4 << 20) + 4096, "{logged} bytes of log kept");
    assert!(
        log.iter().any(|(_, l)| l.contains("more line(s) dropped")),
        "the cut is said"
    );

    // A request to a host not granted: refused by the host.
    create(&api, hostile("forbidden", "forbidden-http", 30)).await;
    let e = run(&api, "forbidden").await;
    let e = api
        .wait_execution(&e, "the forbidden request", finished)
        .await;
    assert_eq!(e["status"], "completed", "{e}");
    assert!(
        e["output"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refused"),
        "{e}"
    );

    // A panic: the run fails with the plugin's message; nothing else is affected.
    create(&api, hostile("panics", "panic", 30)).await;
    let e = run(&api, "panics").await;
    let e = api.wait_execution(&e, "the panic", finished).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["error"].as_str().unwrap_or_default().contains("trapped"),
        "{e}"
    );

    // A well-behaved one still runs, and the service answers.
    create(&api, hostile("echo", "echo", 30)).await;
    let e = run(&api, "echo").await;
    let e = api.wait_execution(&e, "the echo", finished).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(
        e["session_id"],
        format!("echo-{}", e["id"].as_str().unwrap())
    );
    cnp.assert_running();
    let (s, h) = api.get("/api/jobs/health").await;
    assert_eq!(s, StatusCode::OK, "{h}");

    // `cnp plugin check` lists the executors with their grants.
    let out = env.run_cli(&["plugin", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("executor plugin (cnp:plugin@0.3.0)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("outbound HTTP: {authority}")),
        "{text}"
    );
}
