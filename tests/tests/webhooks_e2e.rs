//! Webhook triggers on the real `cnp serve` with a real HTTP client: a delivery signed the way
//! GitHub signs it runs the job with the payload in its prompt; a wrong or missing signature, a
//! stale timestamp, a replayed delivery, a payload over the hook's limit and a hook that does not
//! exist are refused and run nothing; the refusals are counted in `/metrics`.

mod support;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use support::api::Api;
use support::{ConfigOpts, Env};

fn sign(secret: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(data);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    base: &str,
    job: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/api/hooks/{job}"))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn signed_deliveries_run_the_job_with_their_payload_and_bad_ones_run_nothing() {
    let env = Env::new(ConfigOpts::default());
    let secret = "hook-s3cret";
    let mut cnp = env.start_with(&[("CNP_TEST_HOOK_SECRET", secret)]);
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base.clone(), token);

    // A secret written in the definition is refused: it must come from the environment.
    let (s, e) = api
        .post(
            "/api/jobs",
            json!({"name": "leaky", "prompt": "x", "schedule": {"type": "manual"},
                   "webhook": {"secret": "plain-text"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("webhook.secret"), "{e}");

    let (s, j) = api
        .post(
            "/api/jobs",
            json!({"name": "pr-review",
                   "prompt": "Review the push: {{ payload.head_commit.message }} by {{ payload.pusher.name }}",
                   "schedule": {"type": "manual"},
                   "webhook": {"secret": "${CNP_TEST_HOOK_SECRET}", "max_payload_bytes": 2048}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let (s, j) = api
        .post(
            "/api/jobs",
            json!({"name": "deploy-check", "prompt": "Check {{ payload.env }}",
                   "schedule": {"type": "manual"},
                   "webhook": {"secret": "${CNP_TEST_HOOK_SECRET}", "signature": "generic"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let (s, _) = api
        .post(
            "/api/jobs",
            json!({"name": "no-hook", "prompt": "x", "schedule": {"type": "manual"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // GitHub's form: accepted, 202 with the execution and where to follow it.
    let body = br#"{"head_commit": {"message": "Fix the parser"}, "pusher": {"name": "octocat"}}"#;
    let gh = |sig: String, delivery: &str| {
        vec![
            ("X-Hub-Signature-256", sig),
            ("X-GitHub-Delivery", delivery.to_owned()),
            ("X-GitHub-Event", "push".to_owned()),
        ]
    };
    let (s, r) = deliver(&base, "pr-review", body, &gh(sign(secret, body), "d-1")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let id = r["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(r["execution_url"], format!("/api/executions/{id}"));
    let e = api
        .wait(&format!("/api/executions/{id}"), "the webhook's run", |e| {
            e["completed_at"].is_string()
        })
        .await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["trigger"], "webhook", "{e}");
    let rec = env.records();
    assert_eq!(rec.len(), 1);
    let sent = format!("{:?} {:?}", rec[0].argv, rec[0].stdin);
    assert!(
        sent.contains("Review the push: Fix the parser by octocat"),
        "{sent}"
    );

    // Refused, nothing run: the same delivery again, a wrong secret, no signature, a body
    // changed after signing, more than the hook takes, a job without a hook, no such job.
    let (s, _) = deliver(&base, "pr-review", body, &gh(sign(secret, body), "d-1")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, r) = deliver(&base, "pr-review", body, &gh(sign("wrong", body), "d-2")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{r}");
    let (s, _) = deliver(
        &base,
        "pr-review",
        body,
        &[("X-GitHub-Delivery", "d-3".into())],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let tampered = br#"{"head_commit": {"message": "rm -rf"}, "pusher": {"name": "octocat"}}"#;
    let (s, _) = deliver(&base, "pr-review", tampered, &gh(sign(secret, body), "d-4")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(3000));
    let (s, _) = deliver(
        &base,
        "pr-review",
        big.as_bytes(),
        &gh(sign(secret, big.as_bytes()), "d-5"),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = deliver(&base, "no-hook", body, &gh(sign(secret, body), "d-6")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = deliver(&base, "nope", body, &gh(sign(secret, body), "d-7")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The generic form: the timestamp is signed and must be within 5 minutes.
    let body = br#"{"env": "staging"}"#;
    let generic = |ts: i64| {
        let signed = format!("{ts}.{}", std::str::from_utf8(body).unwrap());
        vec![
            ("X-Timestamp", ts.to_string()),
            ("X-Signature", sign(secret, signed.as_bytes())),
        ]
    };
    let now = chrono::Utc::now().timestamp();
    let (s, _) = deliver(&base, "deploy-check", body, &generic(now - 600)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, r) = deliver(&base, "deploy-check", body, &generic(now)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let id2 = r["execution_id"].as_str().unwrap().to_owned();
    // Replayed within the window: refused.
    let (s, _) = deliver(&base, "deploy-check", body, &generic(now)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    api.wait(&format!("/api/executions/{id2}"), "the generic run", |e| {
        e["status"] == "completed"
    })
    .await;

    // Two runs in all, and the refusals counted.
    assert_eq!(env.records().len(), 2);
    let metrics = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cnp_webhook_requests_total{result=\"accepted\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cnp_webhook_requests_total{result=\"refused\"} 9"),
        "{metrics}"
    );
    cnp.assert_running();
}

/// The GitHub Actions example in examples/ci signs and sends its delivery with openssl and curl:
/// its script, run as written against a real cnp, records a run with the payload in its prompt.
#[tokio::test]
async fn the_github_actions_example_script_triggers_a_run() {
    for tool in ["openssl", "curl", "bash"] {
        if std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("{tool} is not installed: the example's script cannot run here");
            return;
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ci/github-actions-webhook.yml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let script = doc["jobs"]["check"]["steps"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();

    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start_with(&[("DEPLOY_HOOK_SECRET", "from-ci")]);
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base.clone(), token);
    let (s, j) = api
        .post(
            "/api/jobs",
            json!({"name": "deploy-check", "prompt": "Check {{ payload.environment }} at {{ payload.sha }}",
                   "schedule": {"type": "manual"},
                   "webhook": {"secret": "${DEPLOY_HOOK_SECRET}", "signature": "generic"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let out = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .env("CNP_HOOK_URL", format!("{base}/api/hooks/deploy-check"))
        .env("CNP_HOOK_SECRET", "from-ci")
        .env("ENVIRONMENT", "staging")
        .env("SHA", "abc123")
        .env("GITHUB_RUN_ID", "42")
        .env("GITHUB_RUN_ATTEMPT", "1")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&said).unwrap();
    let id = r["execution_id"].as_str().unwrap();
    api.wait(&format!("/api/executions/{id}"), "the run", |e| {
        e["status"] == "completed"
    })
    .await;
    let sent = format!("{:?} {:?}", env.records()[0].argv, env.records()[0].stdin);
    assert!(sent.contains("Check staging at abc123"), "{sent}");
    cnp.assert_running();
}
