//! The admin API under random input, on the real `cnp serve`: every documented route (see
//! `api::openapi::tests::document_and_router_agree`) gets random JSON bodies — random trees,
//! valid job definitions with one field broken (wrong types, huge and negative numbers, odd
//! unicode), deep nesting — and random query strings, with a valid token. Never a 5xx, every
//! 4xx an error body with a code, and the service answers the next request. A 100 MB body is
//! refused (413).

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config as PConfig, FileFailurePersistence, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{ConfigOpts, Env};

/// Requests sent in the random phases (bodies, then query strings).
const CASES_BODIES: u32 = 1_500;
const CASES_QUERIES: u32 = 1_000;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(1e308),
            Just(-1e308),
            Just(f64::MIN_POSITIVE),
            any::<f64>()
        ]
        .prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::from),
        Just(Value::from("\u{202e}\u{0}\u{feff}💥")),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "name",
            "prompt",
            "prompt_id",
            "schedule",
            "type",
            "expression",
            "every_seconds",
            "at",
            "execution",
            "retry",
            "budget",
            "daily_usd",
            "depends_on",
            "priority",
            "tags",
            "notifications",
            "channels",
            "title",
            "content",
            "delay_seconds",
            "timeout_seconds",
            "max_parallel",
            "worktree",
            "session",
            "environment",
            "job",
            "variables",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,10}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid job definition with one field replaced by a random value.
fn broken_job() -> impl Strategy<Value = Value> {
    let fields = vec![
        "/name",
        "/prompt",
        "/priority",
        "/tags",
        "/schedule",
        "/schedule/expression",
        "/schedule/type",
        "/execution",
        "/execution/timeout_seconds",
        "/execution/max_parallel",
        "/execution/environment",
        "/retry",
        "/budget",
        "/budget/daily_usd",
        "/depends_on",
    ];
    (prop::sample::select(fields), value()).prop_map(|(ptr, v)| {
        let mut job = json!({
            "name": "fuzzed", "prompt": "x",
            "schedule": {"type": "cron", "expression": "0 3 * * *"},
            "priority": 5, "tags": ["a"],
            "execution": {"timeout_seconds": 60, "max_parallel": 1, "environment": {"K": "V"}},
            "retry": {"max_attempts": 2}, "budget": {"daily_usd": 1.0}, "depends_on": []
        });
        if let Some(slot) = job.pointer_mut(ptr) {
            *slot = v;
        }
        job
    })
}

fn config(cases: u32) -> PConfig {
    PConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..PConfig::default()
    }
}

/// Checks one answer: no 5xx, and a 4xx carries an error body with a code.
async fn check(res: reqwest::Response, what: &str) -> Result<(), TestCaseError> {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    prop_assert!(status.as_u16() < 500, "{what}: {status} {text:.300}");
    if status.is_client_error() {
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            TestCaseError::fail(format!(
                "{what}: {status} body is not JSON ({e}): {text:.200}"
            ))
        })?;
        prop_assert!(v["error"]["code"].is_string(), "{what}: {status} {v}");
        prop_assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    Ok(())
}

#[test]
fn random_bodies_and_queries_never_break_the_api() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let call = |method: Method, url: String, body: Option<Vec<u8>>| {
        let mut req = http.request(method, url).bearer_auth(&token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        req.send()
    };
    // Real ids for the `{id}` routes, beside random ones.
    let job: Value = rt.block_on(async {
        call(
            Method::POST,
            format!("{base}/api/jobs"),
            Some(br#"{"name":"target","prompt":"x"}"#.to_vec()),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    });
    let job_id = job["id"].as_str().unwrap().to_owned();
    let doc: Value = rt.block_on(async {
        call(Method::GET, format!("{base}/api/openapi.json"), None)
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let mut routes: Vec<(Method, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path == "/api/ws" {
            continue;
        }
        for m in ["get", "post", "put", "delete"] {
            if item.get(m).is_some() {
                routes.push((
                    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                    path.clone(),
                ));
            }
        }
    }
    let writes: Vec<(Method, String)> = routes
        .iter()
        .filter(|(m, _)| *m == Method::POST || *m == Method::PUT)
        .cloned()
        .collect();
    let fill = |path: &str, real: bool, id: &str| {
        let id = if real { job_id.as_str() } else { id };
        path.replace("{id}", id)
            .replace("{name}", id)
            .replace("{job}", id)
    };

    let mut runner = TestRunner::new(config(CASES_BODIES));
    runner
        .run(
            &(
                prop::sample::select(writes.clone()),
                prop_oneof![value(), broken_job()],
                any::<bool>(),
                "[a-z0-9%-]{0,12}",
            ),
            |((method, path), body, real, id)| {
                let url = format!("{base}{}", fill(&path, real, &id));
                let bytes = serde_json::to_vec(&body).unwrap();
                rt.block_on(async {
                    let res = call(method.clone(), url, Some(bytes)).await.unwrap();
                    check(res, &format!("{method} {path} {body:.200}")).await
                })
            },
        )
        .unwrap();

    let params = vec![
        "limit", "offset", "days", "since", "until", "status", "job", "tz", "sort", "order", "tag",
        "q", "name", "page", "from", "to", "after", "before",
    ];
    let mut runner = TestRunner::new(config(CASES_QUERIES));
    runner
        .run(
            &(
                prop::sample::select(routes.clone()),
                prop::collection::vec(
                    (
                        prop::sample::select(params),
                        prop_oneof![
                            "-?[0-9]{1,25}",
                            "\\PC{0,16}",
                            Just("2026-02-30".to_owned()),
                            Just("1e309".to_owned()),
                            Just("NaN".to_owned()),
                        ],
                    ),
                    0..4,
                ),
                any::<bool>(),
            ),
            |((method, path), query, real)| {
                if method != Method::GET {
                    return Ok(());
                }
                let mut url =
                    reqwest::Url::parse(&format!("{base}{}", fill(&path, real, "nope"))).unwrap();
                for (k, v) in &query {
                    url.query_pairs_mut().append_pair(k, v);
                }
                rt.block_on(async {
                    let res = call(Method::GET, url.to_string(), None).await.unwrap();
                    check(res, &format!("GET {url}")).await
                })
            },
        )
        .unwrap();

    rt.block_on(async {
        // Deep nesting and a wrong content type.
        let deep = format!(
            r#"{{"name": "deep", "prompt": "x", "notifications": {{"channels": {}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let res = call(
            Method::POST,
            format!("{base}/api/jobs"),
            Some(deep.into_bytes()),
        )
        .await
        .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        let v: Value = res.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("recursion limit"),
            "{v}"
        );
        let res = http
            .post(format!("{base}/api/jobs"))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body("name: x")
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        // A 100 MB body: refused at the limit.
        let res = http
            .post(format!("{base}/api/jobs"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(bytes_of(100 << 20))
            .send()
            .await;
        match res {
            Ok(r) => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
            // The server may close the connection once it has refused.
            Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
        }
        // Still up, still serving.
        let res = call(Method::GET, format!("{base}/api/jobs/{job_id}"), None)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    });
    cnp.assert_running();
}

fn bytes_of(n: usize) -> Vec<u8> {
    let mut v = vec![b' '; n];
    v[0] = b'{';
    v
}
