//! Auth on every route: the real `cnp serve`; every (path, method) of the OpenAPI document —
//! which a unit test (`api::openapi::tests::document_and_router_agree`) proves is every route
//! of the router — answers 401 without a token, with a wrong one and with a wrong one of the
//! same length, and never runs the handler (nothing is created or changed). The WebSocket
//! upgrade too, by header and by `?token=`. Liveness (`GET /api/jobs/health`) is the one
//! public route.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::api::Api;
use support::{ConfigOpts, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_refuses_missing_and_wrong_tokens() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base.clone(), token.clone());
    let (s, doc) = api.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let wrong_same_len: String = token
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    let http = reqwest::Client::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = format!(
            "{base}{}",
            path.replace("{id}", "x")
                .replace("{name}", "x")
                .replace("{job}", "x")
        );
        for m in ["get", "post", "put", "delete", "patch"] {
            if item.get(m).is_none() {
                continue;
            }
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            if path == "/api/jobs/health" {
                let res = http.request(method, &url).send().await.unwrap();
                assert_eq!(res.status(), StatusCode::OK, "liveness is public");
                continue;
            }
            if path.starts_with("/api/hooks/") {
                // Signed with the job's webhook secret instead of the token (webhooks_e2e.rs
                // checks the signatures): here, no such hook, whatever the token.
                let res = http.request(method, &url).body("{}").send().await.unwrap();
                assert_eq!(res.status(), StatusCode::NOT_FOUND, "{m} {path}");
                continue;
            }
            for bad in [None, Some("nope"), Some(wrong_same_len.as_str())] {
                let mut req = http
                    .request(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body(r#"{"name":"sneaky","prompt":"x","title":"t","content":"c"}"#);
                if let Some(b) = bad {
                    req = req.bearer_auth(b);
                }
                let res = req.send().await.unwrap();
                assert_eq!(
                    res.status(),
                    StatusCode::UNAUTHORIZED,
                    "{m} {path} with {bad:?}"
                );
                assert_eq!(res.headers()["www-authenticate"], "Bearer", "{m} {path}");
                let v: Value = res.json().await.unwrap();
                assert_eq!(v["error"]["code"], "unauthorized", "{m} {path}: {v}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3 * 40,
        "only {checked} requests: the document lost routes?"
    );
    // The WebSocket upgrade: by header, and by `?token=` (browsers cannot set headers).
    let ws_url = format!("{}/api/ws", base.replacen("http", "ws", 1));
    for url in [
        ws_url.clone(),
        format!("{ws_url}?token=nope"),
        format!("{ws_url}?token={wrong_same_len}"),
    ] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED.as_u16(), "{url}")
            }
            other => panic!("{url}: not refused: {:?}", other.map(|_| ())),
        }
    }
    let ok = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}")).await;
    assert!(ok.is_ok(), "the right token opens the stream");
    // Nothing the refused requests carried was done.
    let (_, jobs) = api.get("/api/jobs").await;
    assert_eq!(jobs["total"], 0, "{jobs}");
    let (_, prompts) = api.get("/api/prompts").await;
    assert!(
        prompts["items"].as_array().is_none_or(|a| a.is_empty()),
        "{prompts}"
    );
    cnp.assert_running();
}
