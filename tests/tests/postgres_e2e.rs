//! The real `cnp serve` on PostgreSQL (`[database] url`), on a private server the test starts
//! (`cnp_tests::pg::PgServer`): jobs run and are recorded there; a second instance on the same
//! database waits as a standby and takes over within 5 s of a kill -9 of the active one, with
//! what the first recorded; a kill -9 of PostgreSQL itself is survived (the instance reconnects).

mod support;

use std::time::{Duration, Instant};

use cnp_tests::pg::PgServer;
use reqwest::StatusCode;
use serde_json::json;
use support::api::Api;
use support::{ConfigOpts, Env};

/// An environment whose `[database]` is the PostgreSQL database `url`.
fn env_on(url: &str) -> Env {
    let env = Env::new(ConfigOpts::default());
    let config = env.root().join("claude-pilot.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[database]\npath = ").expect("a [database] path");
    let end = start + text[start..].find("\n\n").unwrap();
    let text = format!(
        "{}[database]\nurl = \"{url}\"\npool_size = 2{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&config, text).unwrap();
    env
}

async fn create_manual(api: &Api, name: &str) -> String {
    let (s, j) = api
        .post(
            "/api/jobs",
            json!({"name": name, "prompt": "say hello", "schedule": {"type": "manual"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    j["id"].as_str().unwrap().to_owned()
}

async fn run_now(api: &Api, job: &str) -> String {
    let (s, r) = api
        .post(&format!("/api/jobs/{job}/execute"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let id = r["execution_id"].as_str().unwrap().to_owned();
    let e = api
        .wait_execution(&id, "the run's end", |e| e["completed_at"].is_string())
        .await;
    assert_eq!(e["status"], "completed", "{e}");
    id
}

#[tokio::test]
async fn a_standby_takes_over_within_5_s_of_a_kill_9_with_everything_recorded() {
    let server = PgServer::start().expect("start PostgreSQL");
    let url = server.create_database();
    let (env_a, env_b) = (env_on(&url), env_on(&url));

    let mut a = env_a.start();
    let (base, token) = a.wait_api(&env_a);
    let api_a = Api::new(base, token);
    let job = create_manual(&api_a, "on-postgres").await;
    let first = run_now(&api_a, &job).await;
    assert_eq!(env_a.records().len(), 1, "the fake CLI ran once");

    // The second instance on the same database waits: it names the active one and runs nothing.
    let mut b = env_b.start();
    let line = b.wait_log_line("standby", "cnp");
    assert!(line.contains(&format!("pid {}", a.pid())), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.log().contains("admin API listening"), "{}", b.log());

    let killed = Instant::now();
    a.kill9();
    b.wait_log("active instance on the PostgreSQL database");
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "took over after {takeover:?}"
    );
    let (base, token) = b.wait_api(&env_b);
    let api_b = Api::new(base, token);

    // What the first instance recorded is there; the job runs on the new active instance.
    let (s, e) = api_b.get(&format!("/api/executions/{first}")).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["status"], "completed", "{e}");
    run_now(&api_b, &job).await;
    assert_eq!(env_b.records().len(), 1, "the new active instance ran it");
    assert_eq!(api_b.execution_count(&job).await, 2);
    b.assert_running();
}

#[tokio::test]
async fn the_service_reconnects_after_postgresql_is_killed_and_restarted() {
    let server = PgServer::start().expect("start PostgreSQL");
    let url = server.create_database();
    let env = env_on(&url);
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let job = create_manual(&api, "survives").await;
    let before = run_now(&api, &job).await;

    server.kill9();
    // While the server is down the API says so instead of failing obscurely.
    let (s, _) = api.get("/api/jobs").await;
    assert!(s.is_server_error(), "{s}");
    server.restart().expect("restart PostgreSQL");

    // Reads and writes work again by themselves; what was acknowledged before is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, _) = api.get(&format!("/api/executions/{before}")).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection: {}", cnp.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run_now(&api, &job).await;
    assert_eq!(api.execution_count(&job).await, 2);
    cnp.assert_running();
}
