//! The real `cnp serve`, two instances on one PostgreSQL database (`[database] url`) on a
//! private server the test starts (`cnp_tests::pg::PgServer`): they share the runs (each run
//! claimed by one), one of them records the schedule's slots, the other takes the timer over
//! within 5 s of a kill -9 and retries the runs the dead one had going, and both survive a
//! kill -9 of PostgreSQL itself. The fake CLI's invocation records (one file per instance) prove
//! what ran where, and how many times.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cnp_tests::pg::{self, PgServer};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::api::Api;
use support::{Cnp, ConfigOpts, Env};

/// An environment whose `[database]` is the PostgreSQL database `url`, with short leases.
fn env_on(url: &str, opts: ConfigOpts) -> Env {
    let env = Env::new(opts);
    let config = env.root().join("claude-pilot.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[database]\npath = ").expect("a [database] path");
    let end = start + text[start..].find("\n\n").unwrap();
    let text = format!(
        "{}[database]\nurl = \"{url}\"\npool_size = 2\nlease = \"3s\"\nheartbeat = \"500ms\"{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&config, text).unwrap();
    env
}

/// One value of a query's single row and column.
fn scalar(url: &str, sql: &str) -> String {
    let rows = pg::query(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows[0][0].clone().unwrap_or_default()
}

/// Starts the leader (the first instance) and a member; returns both with their APIs.
async fn two_instances(
    env_a: &Env,
    env_b: &Env,
    extra: &[(&str, &str)],
) -> ((Cnp, Api), (Cnp, Api)) {
    let mut a = env_a.start_with(extra);
    a.wait_log("cluster leader: this instance");
    let (base, token) = a.wait_api(env_a);
    let api_a = Api::new(base, token);
    let mut b = env_b.start_with(extra);
    let line = b.wait_log_line("another instance holds the timer", "cnp");
    assert!(line.contains(&format!("pid {}", a.pid())), "{line}");
    let (base, token) = b.wait_api(env_b);
    let api_b = Api::new(base, token);
    ((a, api_a), (b, api_b))
}

async fn create(api: &Api, body: Value) -> String {
    let (s, j) = api.post("/api/jobs", body).await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    j["id"].as_str().unwrap().to_owned()
}

/// Polls `f` every 100 ms until it holds, for up to `limit`.
async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn five_hundred_jobs_due_within_a_minute_run_once_each_spread_over_two_instances() {
    let server = PgServer::start().expect("start PostgreSQL");
    let url = server.create_database();
    let opts = ConfigOpts {
        max_concurrent_jobs: 4,
        ..Default::default()
    };
    let (env_a, env_b) = (env_on(&url, opts.clone()), env_on(&url, opts));
    let ((a, api_a), (mut b, api_b)) = two_instances(&env_a, &env_b, &[]).await;

    // Both report the cluster: two members, the first one leads.
    let health = api_b
        .wait("/api/jobs/health", "two members, one leading", |h| {
            h["cluster"]["members"].as_array().map(Vec::len) == Some(2)
                && h["cluster"]["leader"].is_string()
        })
        .await;
    let cluster = &health["cluster"];
    let leader = cluster["leader"].as_str().unwrap().to_owned();
    assert_ne!(cluster["member"], leader.as_str(), "{health}");
    let (_, status) = api_a.get("/api/status").await;
    assert_eq!(status["cluster"]["member"], leader.as_str(), "{status}");

    // A WebSocket client of the member (not the leader) sees every run's end, wherever it ran.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(api_b.ws_url(&format!("token={}", api_b.token)))
            .await
            .expect("connect the WebSocket");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let seen2 = seen.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Ok(text) = m.into_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v["type"] == "jobStatus" && v["status"] == "completed" {
                if let Some(id) = v["executionId"].as_str() {
                    seen2.lock().unwrap().insert(id.to_owned());
                }
            }
        }
    });

    // 500 one-shot jobs, created through both APIs, due 25 at a time every second for 20 s.
    let first_due = chrono::Utc::now() + chrono::Duration::seconds(15);
    for chunk in (0..500).collect::<Vec<u32>>().chunks(20) {
        let creating = chunk.iter().map(|&i| {
            let api = if i % 2 == 0 { &api_a } else { &api_b };
            let at = first_due + chrono::Duration::seconds(i64::from(i % 20));
            create(
                api,
                json!({"name": format!("due-{i:03}"), "prompt": "hello",
                       "schedule": {"type": "once", "at": at.to_rfc3339()}}),
            )
        });
        futures_util::future::join_all(creating).await;
    }
    assert!(
        chrono::Utc::now() < first_due,
        "creating the jobs took too long for the test's plan"
    );

    let done = "SELECT count(*)::text FROM executions WHERE completed_at IS NOT NULL";
    wait_until("500 runs to end", Duration::from_secs(90), || {
        scalar(&url, done) == "500"
    })
    .await;
    // Nothing more comes (no slot twice, nothing left behind).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every slot ran exactly once, completed.
    let counts = pg::query(
        &url,
        "SELECT status, count(*)::text FROM executions GROUP BY status",
    )
    .unwrap();
    assert_eq!(
        counts,
        vec![vec![Some("completed".to_owned()), Some("500".to_owned())]]
    );
    assert_eq!(
        scalar(
            &url,
            "SELECT count(DISTINCT job_id)::text FROM executions WHERE trigger = 'schedule'"
        ),
        "500"
    );
    // The fake CLI ran 500 times, once per execution, on both instances.
    let (ra, rb) = (env_a.records(), env_b.records());
    let ids: Vec<&str> = ra
        .iter()
        .chain(&rb)
        .map(|r| r.execution_id().unwrap())
        .collect();
    assert_eq!(ids.len(), 500, "invocations");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        500,
        "an execution ran twice"
    );
    assert!(
        ra.len() >= 50 && rb.len() >= 50,
        "runs not spread: {} on the leader, {} on the member",
        ra.len(),
        rb.len()
    );
    eprintln!(
        "500 runs: {} on the leader, {} on the member",
        ra.len(),
        rb.len()
    );

    // The member's WebSocket client saw the ends of the runs the leader ran.
    let from_a: Vec<&str> = ra.iter().map(|r| r.execution_id().unwrap()).collect();
    wait_until(
        "the leader's run ends on the member's WebSocket",
        Duration::from_secs(10),
        || {
            let seen = seen.lock().unwrap();
            from_a.iter().all(|id| seen.contains(*id))
        },
    )
    .await;
    reader.abort();
    b.assert_running();
    drop(a);
}

#[tokio::test]
async fn a_kill_9_of_the_leader_moves_the_timer_within_5_s_and_its_runs_are_retried_once() {
    let server = PgServer::start().expect("start PostgreSQL");
    let url = server.create_database();
    let opts = ConfigOpts {
        max_concurrent_jobs: 3,
        ..Default::default()
    };
    let (env_a, env_b) = (env_on(&url, opts.clone()), env_on(&url, opts));
    // Runs take 6 s, until `fast` exists.
    let fast = env_a.root().join("fast");
    let fast_s = fast.display().to_string();
    let extra = [
        ("FAKE_CLAUDE_SLEEP_MS", "6000"),
        ("FAKE_CLAUDE_SLEEP_UNLESS", fast_s.as_str()),
    ];
    let ((mut a, api_a), (mut b, api_b)) = two_instances(&env_a, &env_b, &extra).await;

    // Six runs at once fill both instances (three each).
    let mut jobs = Vec::new();
    for i in 0..6 {
        let job = create(
            &api_a,
            json!({"name": format!("long-{i}"), "prompt": "work", "priority": 10,
                   "schedule": {"type": "manual"},
                   "retry": {"max_attempts": 2, "strategy": "fixed", "initial_interval": 0,
                             "on_interrupt": "retry"}}),
        )
        .await;
        jobs.push(job);
    }
    for job in &jobs {
        let (s, r) = api_b
            .post(&format!("/api/jobs/{job}/execute"), json!({}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    }
    wait_until("six runs going", Duration::from_secs(20), || {
        env_a.records().len() + env_b.records().len() == 6
    })
    .await;
    let on_a: HashSet<String> = env_a
        .records()
        .iter()
        .map(|r| r.job_id().unwrap().to_owned())
        .collect();
    assert_eq!(on_a.len(), 3, "the leader runs three");
    assert_eq!(env_b.records().len(), 3, "the member runs three");
    // A scheduled job: its slots keep being recorded whoever leads.
    let ticker = create(
        &api_a,
        json!({"name": "ticker", "prompt": "tick", "priority": 1,
               "schedule": {"type": "interval", "every": "2s"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    let killed_ms = chrono::Utc::now().timestamp_millis();
    a.kill9();
    std::fs::write(&fast, "").unwrap();
    b.wait_log("cluster leader: this instance");
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "the timer moved after {takeover:?}"
    );
    eprintln!("timer taken over {takeover:?} after the kill -9");

    // Every job ends completed: the dead leader's three once more (attempt 2), the member's
    // three once.
    let list: String = jobs
        .iter()
        .map(|j| format!("'{j}'"))
        .collect::<Vec<_>>()
        .join(",");
    let done = format!(
        "SELECT count(DISTINCT job_id)::text FROM executions
         WHERE status = 'completed' AND job_id IN ({list})"
    );
    wait_until("the six jobs to complete", Duration::from_secs(40), || {
        scalar(&url, &done) == "6"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = pg::query(
        &url,
        &format!(
            "SELECT job_id, status, retry_count::text, COALESCE(error, '') FROM executions
             WHERE job_id IN ({list}) ORDER BY job_id, retry_count"
        ),
    )
    .unwrap();
    let mut by_job: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for r in rows {
        let r: Vec<String> = r.into_iter().map(Option::unwrap_or_default).collect();
        by_job
            .entry(r[0].clone())
            .or_default()
            .push((r[1].clone(), r[2].clone(), r[3].clone()));
    }
    let invocations = |job: &str| {
        env_a
            .records()
            .iter()
            .chain(env_b.records().iter())
            .filter(|r| r.job_id() == Some(job))
            .count()
    };
    for job in &jobs {
        let runs = &by_job[job];
        if on_a.contains(job) {
            assert_eq!(runs.len(), 2, "{job}: {runs:?}");
            assert_eq!(runs[0].0, "interrupted", "{runs:?}");
            assert!(runs[0].2.contains("lease"), "{runs:?}");
            assert_eq!((runs[1].0.as_str(), runs[1].1.as_str()), ("completed", "1"));
            assert_eq!(invocations(job), 2, "{job}: once on each instance");
        } else {
            assert_eq!(runs.len(), 1, "{job}: {runs:?}");
            assert_eq!(runs[0].0, "completed", "{runs:?}");
            assert_eq!(invocations(job), 1, "{job}");
        }
    }

    // The timer goes on: the ticker's slots after the kill are recorded by the new leader.
    let after = format!(
        "SELECT count(*)::text FROM executions WHERE job_id = '{ticker}' AND slot > {killed_ms}"
    );
    wait_until(
        "a ticker slot after the kill",
        Duration::from_secs(10),
        || scalar(&url, &after) != "0",
    )
    .await;

    // The dead instance is forgotten; the survivor leads.
    let health = api_b
        .wait("/api/jobs/health", "one member left", |h| {
            h["cluster"]["members"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    assert_eq!(
        health["cluster"]["leader"], health["cluster"]["member"],
        "{health}"
    );
    let out = env_b.run_cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 member(s) on PostgreSQL, timer held by this instance"),
        "{text}"
    );
    b.assert_running();
}

#[tokio::test]
async fn a_run_is_cancelled_from_either_instance_and_both_reconnect_after_postgresql_restarts() {
    let server = PgServer::start().expect("start PostgreSQL");
    let url = server.create_database();
    let (env_a, env_b) = (
        env_on(&url, ConfigOpts::default()),
        env_on(&url, ConfigOpts::default()),
    );
    // Runs take a minute unless `fast` exists.
    let fast = env_a.root().join("fast");
    let fast_s = fast.display().to_string();
    let extra = [
        ("FAKE_CLAUDE_SLEEP_MS", "60000"),
        ("FAKE_CLAUDE_SLEEP_UNLESS", fast_s.as_str()),
    ];
    let ((mut a, api_a), (mut b, api_b)) = two_instances(&env_a, &env_b, &extra).await;
    let job = create(
        &api_a,
        json!({"name": "survives", "prompt": "say hello", "schedule": {"type": "manual"}}),
    )
    .await;

    // A long run, cancelled through the API of the instance that does not run it.
    let (s, r) = api_a
        .post(&format!("/api/jobs/{job}/execute"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let long = r["execution_id"].as_str().unwrap().to_owned();
    wait_until("the long run to start", Duration::from_secs(20), || {
        env_a.records().len() + env_b.records().len() == 1
    })
    .await;
    let other = if env_a.records().is_empty() {
        &api_a
    } else {
        &api_b
    };
    let (s, r) = other
        .post(&format!("/api/executions/{long}/cancel"), json!({}))
        .await;
    assert!(s.is_success(), "{s} {r}");
    let e = other
        .wait(
            &format!("/api/executions/{long}"),
            "the run cancelled",
            |e| e["completed_at"].is_string(),
        )
        .await;
    assert_eq!(e["status"], "cancelled", "{e}");
    std::fs::write(&fast, "").unwrap();

    api_a.run_to_completion(&job).await;
    let before = scalar(
        &url,
        "SELECT id FROM executions WHERE status = 'completed' LIMIT 1",
    );

    server.kill9();
    // While the server is down the API says so instead of failing obscurely.
    let (s, _) = api_b.get("/api/jobs").await;
    assert!(s.is_server_error(), "{s}");
    server.restart().expect("restart PostgreSQL");

    // Reads and writes work again by themselves on both; what was acknowledged is there.
    for api in [&api_a, &api_b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, _) = api.get(&format!("/api/executions/{before}")).await;
            if s == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "no reconnection");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        api.run_to_completion(&job).await;
    }
    assert_eq!(api_a.execution_count(&job).await, 4);
    a.assert_running();
    b.assert_running();
}

#[tokio::test]
async fn a_usage_limit_on_one_instance_holds_runs_on_both_and_clearing_it_anywhere_ends_it() {
    let server = PgServer::start().expect("start PostgreSQL");
    let url = server.create_database();
    let (env_a, env_b) = (
        env_on(&url, ConfigOpts::default()),
        env_on(&url, ConfigOpts::default()),
    );
    // The first CLI invocation anywhere hits the usage limit (reset in an hour); later ones pass.
    let state = env_a.root().join("fake-state");
    let state_s = state.display().to_string();
    let reset = (chrono::Utc::now() + chrono::Duration::hours(1))
        .timestamp()
        .to_string();
    let extra = [
        ("FAKE_CLAUDE_SCENARIOS", "usage-limit,ok"),
        ("FAKE_CLAUDE_STATE_DIR", state_s.as_str()),
        ("FAKE_CLAUDE_RESET_EPOCH", reset.as_str()),
    ];
    let ((a, api_a), (b, api_b)) = two_instances(&env_a, &env_b, &extra).await;
    let job = create(
        &api_a,
        json!({"name": "limited", "prompt": "hello", "schedule": {"type": "manual"}}),
    )
    .await;
    let (s, r) = api_a
        .post(&format!("/api/jobs/{job}/execute"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let run = r["execution_id"].as_str().unwrap().to_owned();

    // Both instances hold runs back, whichever one's run hit the limit.
    for api in [&api_a, &api_b] {
        let c = api
            .wait("/api/cooldown", "the cooldown on both instances", |c| {
                c["cooldown"].is_object()
            })
            .await;
        assert!(c["cooldown"]["until"].is_string(), "{c}");
    }
    let other = api_b
        .post(&format!("/api/jobs/{job}/execute"), json!({}))
        .await
        .1["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env_a.records().len() + env_b.records().len(),
        1,
        "nothing ran during the cooldown"
    );

    // Cleared through one instance: it ends on both, and both runs complete.
    let (s, r) = api_b.post("/api/cooldown/clear", json!({})).await;
    assert!(s.is_success(), "{s} {r}");
    for api in [&api_a, &api_b] {
        api.wait("/api/cooldown", "the cooldown over on both", |c| {
            c["cooldown"].is_null()
        })
        .await;
    }
    for id in [&run, &other] {
        let e = api_a
            .wait(&format!("/api/executions/{id}"), "the run completed", |e| {
                e["status"] == "completed"
            })
            .await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    drop((a, b));
}
