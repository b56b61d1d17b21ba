//! Admin API latency: p50/p99 of list and detail routes over a database of 10,000 jobs and
//! 100,000 executions, measured with an in-binary load generator (N concurrent keep-alive
//! connections, every request timed into an HDR histogram).
//!
//! ```text
//! cargo run --release -p cnp-bench --bin cnp-api-bench -- --jobs 10000 --executions 100000
//! ```
//!
//! The engine and the API run in this process exactly as `cnp serve` wires them (SQLite in WAL
//! mode on a temp file, the engine holding every job, the API's router with auth, tracing and
//! the body limit); the fixture rows are bulk-inserted through the store's writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cnp::api::{ApiState, ApiToken};
use cnp::engine::{Clock, Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{ClaudeRunner, Runner};
use cnp::service::{executor_settings, SharedManifestStatus};
use cnp::store::Store;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    #[arg(long, default_value_t = 100_000)]
    executions: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests measured per route (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    route: String,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests_per_s: f64,
    n: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tmp = tempfile::tempdir()?;
    let store = Store::open(&tmp.path().join("cnp.db"))?;
    let t = Instant::now();
    fill(&store, cli.jobs, cli.executions).await?;
    eprintln!(
        "fixture: {} jobs, {} executions in {:.1} s",
        cli.jobs,
        cli.executions,
        t.elapsed().as_secs_f64()
    );
    let config = cnp::config::Config::default();
    let runner: Arc<dyn Runner> = Arc::new(ClaudeRunner::new(executor_settings(&config)));
    let engine = Engine::start(
        store.clone(),
        runner,
        EngineSettings::default(),
        Clock::System,
        EventBus::default(),
    )
    .await?;
    let token = ApiToken::generate();
    let state = ApiState::new(
        engine.clone(),
        SharedManifestStatus::default(),
        None,
        token.clone(),
        config.api.max_body_bytes,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, cnp::api::router(state)).await.ok();
    });
    let base = format!("http://{addr}");

    let job_ids: Vec<String> = (0..cli.jobs).map(job_id).collect();
    let exec_ids: Vec<String> = (0..cli.executions).map(exec_id).collect();
    let job_ids = Arc::new(job_ids);
    let exec_ids = Arc::new(exec_ids);
    let mut rows = Vec::new();
    type PathFn = Box<dyn Fn(u64) -> String + Send + Sync>;
    let cases: Vec<(&str, PathFn)> = vec![
        (
            "GET /api/jobs?limit=50",
            Box::new(|_| "/api/jobs?limit=50".into()),
        ),
        ("GET /api/jobs/:id", {
            let ids = job_ids.clone();
            Box::new(move |i| format!("/api/jobs/{}", ids[(i * 7919) as usize % ids.len()]))
        }),
        (
            "GET /api/executions?limit=50",
            Box::new(|_| "/api/executions?limit=50".into()),
        ),
        ("GET /api/executions/:id", {
            let ids = exec_ids.clone();
            Box::new(move |i| format!("/api/executions/{}", ids[(i * 7919) as usize % ids.len()]))
        }),
    ];
    for (name, path) in cases {
        let path = Arc::new(path);
        // Warm-up, then the measured run.
        load(
            &base,
            token.expose(),
            path.clone(),
            cli.connections,
            cli.requests / 10,
        )
        .await?;
        let (hist, elapsed) =
            load(&base, token.expose(), path, cli.connections, cli.requests).await?;
        let ms = |v: u64| v as f64 / 1000.0;
        rows.push(Row {
            route: name.to_owned(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
            requests_per_s: hist.len() as f64 / elapsed.as_secs_f64(),
            n: hist.len(),
        });
    }
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "route", "p50 ms", "p99 ms", "max ms", "req/s", "n"
    );
    for r in &rows {
        println!(
            "{:<30} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {:>8}",
            r.route, r.p50_ms, r.p99_ms, r.max_ms, r.requests_per_s, r.n
        );
    }
    println!(
        "({} jobs, {} executions, {} connections; target p99 ≤ 10 ms)",
        cli.jobs, cli.executions, cli.connections
    );
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    server.abort();
    engine.shutdown(Duration::from_secs(1)).await;
    store.close();
    Ok(())
}

fn job_id(i: u64) -> String {
    format!("00000000-0000-7000-8000-{i:012}")
}

fn exec_id(i: u64) -> String {
    format!("00000000-0000-7000-9000-{i:012}")
}

/// Bulk-inserts manual jobs and finished executions (10 per job by default), in one write.
async fn fill(store: &Store, jobs: u64, executions: u64) -> anyhow::Result<()> {
    store
        .write(move |c| {
            let now = chrono::Utc::now().timestamp_millis();
            let mut job = c.prepare(
                "INSERT INTO jobs (id, name, prompt, schedule, status, priority, execution_options,
                    tags, created_at, updated_at, execution_count, success_count, failure_count,
                    total_time_ms)
                 VALUES (?1, ?2, 'Summarise the repository.', '{\"type\":\"manual\"}', 'active', 5,
                    '{}', '[\"bench\"]', ?3, ?3, 10, 9, 1, 12345)",
            )?;
            for i in 0..jobs {
                job.execute(rusqlite::params![
                    job_id(i),
                    format!("job-{i:06}"),
                    now - 86_400_000
                ])?;
            }
            let mut exec = c.prepare(
                "INSERT INTO executions (id, job_id, status, trigger, slot, scheduled_for,
                    queued_at, started_at, completed_at, execution_time_ms, prompt, output,
                    retry_count, outcome, exit_code)
                 VALUES (?1, ?2, ?3, 'schedule', ?4, ?4, ?4, ?4, ?5, ?6,
                    'Summarise the repository.', 'All good: 3 files changed.', 0, ?7, ?8)",
            )?;
            for i in 0..executions {
                let at = now - 86_400_000 + (i as i64) * 500;
                let ok = i % 10 != 0;
                let ms = 1000 + (i as i64 * 37) % 60_000;
                exec.execute(rusqlite::params![
                    exec_id(i),
                    job_id(i % jobs.max(1)),
                    if ok { "completed" } else { "failed" },
                    at,
                    at + ms,
                    ms,
                    if ok {
                        "{\"kind\":\"success\"}"
                    } else {
                        "{\"kind\":\"error\",\"message\":\"boom\"}"
                    },
                    if ok { 0 } else { 1 },
                ])?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// `total` requests from `connections` keep-alive clients; returns latencies (µs) and the
/// wall time.
async fn load(
    base: &str,
    token: &str,
    path: Arc<Box<dyn Fn(u64) -> String + Send + Sync>>,
    connections: usize,
    total: u64,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (base, token, path, next) = (
            base.to_owned(),
            token.to_owned(),
            path.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(h);
                }
                let url = format!("{base}{}", path(i));
                let t = Instant::now();
                let res = client.get(&url).bearer_auth(&token).send().await?;
                let status = res.status();
                let _ = res.bytes().await?;
                anyhow::ensure!(status.is_success(), "{url}: {status}");
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all, start.elapsed()))
}
