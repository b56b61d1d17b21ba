//! Admin API and dashboard latency: p50/p99 of list and detail routes (and of the dashboard's
//! jobs and job pages) over a database of 10,000 jobs and 100,000 executions, measured with an
//! in-binary load generator (N concurrent keep-alive connections, every request timed into an
//! HDR histogram). With `--fcp-runs N` (default 20; needs Debian's chromium and
//! chromium-driver), headless Chromium also loads both dashboard pages N times and reports
//! their first contentful paint, and the compressed weight of a first load.
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
use cnp::clock::Clock;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{ClaudeRunner, Runner};
use cnp::service::{executor_settings, SharedManifestStatus};
use cnp::store::db::ToValue;
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
    /// Page loads per dashboard page in headless Chromium (0: no browser).
    #[arg(long, default_value_t = 20)]
    fcp_runs: usize,
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
    let cookie = dashboard_login(&base, token.expose()).await?;
    let bearer = format!("Bearer {}", token.expose());

    let job_ids: Vec<String> = (0..cli.jobs).map(job_id).collect();
    let exec_ids: Vec<String> = (0..cli.executions).map(exec_id).collect();
    let job_ids = Arc::new(job_ids);
    let exec_ids = Arc::new(exec_ids);
    let mut rows = Vec::new();
    type PathFn = Box<dyn Fn(u64) -> String + Send + Sync>;
    let cases: Vec<(&str, PathFn, (&str, &str))> = vec![
        (
            "GET /api/jobs?limit=50",
            Box::new(|_| "/api/jobs?limit=50".into()),
            ("authorization", &bearer),
        ),
        (
            "GET /api/jobs/:id",
            {
                let ids = job_ids.clone();
                Box::new(move |i| format!("/api/jobs/{}", ids[(i * 7919) as usize % ids.len()]))
            },
            ("authorization", &bearer),
        ),
        (
            "GET /api/executions?limit=50",
            Box::new(|_| "/api/executions?limit=50".into()),
            ("authorization", &bearer),
        ),
        (
            "GET /api/executions/:id",
            {
                let ids = exec_ids.clone();
                Box::new(move |i| {
                    format!("/api/executions/{}", ids[(i * 7919) as usize % ids.len()])
                })
            },
            ("authorization", &bearer),
        ),
        (
            "dashboard: jobs page",
            Box::new(|_| "/ui/".into()),
            ("cookie", &cookie),
        ),
        (
            "dashboard: jobs, sorted, page 100",
            Box::new(|_| "/ui/?sort=last&dir=desc&page=100".into()),
            ("cookie", &cookie),
        ),
        (
            "dashboard: job page",
            {
                let ids = job_ids.clone();
                Box::new(move |i| format!("/ui/jobs/{}", ids[(i * 7919) as usize % ids.len()]))
            },
            ("cookie", &cookie),
        ),
    ];
    for (name, path, (header, value)) in cases {
        let path = Arc::new(path);
        // Warm-up, then the measured run.
        let auth = (header.to_owned(), value.to_owned());
        load(
            &base,
            &auth,
            path.clone(),
            cli.connections,
            cli.requests / 10,
        )
        .await?;
        let (hist, elapsed) = load(&base, &auth, path, cli.connections, cli.requests).await?;
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
        "{:<36} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "route", "p50 ms", "p99 ms", "max ms", "req/s", "n"
    );
    for r in &rows {
        println!(
            "{:<36} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {:>8}",
            r.route, r.p50_ms, r.p99_ms, r.max_ms, r.requests_per_s, r.n
        );
    }
    println!(
        "({} jobs, {} executions, {} connections; targets p99: API ≤ 10 ms, dashboard pages ≤ 50 ms)",
        cli.jobs, cli.executions, cli.connections
    );
    let browser = if cli.fcp_runs > 0 {
        let job_page = format!("{base}/ui/jobs/{}", job_ids[job_ids.len() / 2]);
        Some(
            browser::measure(
                &base,
                token.expose(),
                &[format!("{base}/ui/"), job_page],
                cli.fcp_runs,
            )
            .await?,
        )
    } else {
        None
    };
    if let Some(b) = &browser {
        println!();
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>8}",
            "page (headless Chromium)", "FCP p50", "FCP p99", "cold", "n"
        );
        for p in &b.pages {
            println!(
                "{:<36} {:>7.0}ms {:>7.0}ms {:>7.0}ms {:>8}",
                if p.page.starts_with("/ui/jobs/") {
                    "/ui/jobs/:id"
                } else {
                    p.page.as_str()
                },
                p.fcp_p50_ms,
                p.fcp_p99_ms,
                p.cold_fcp_ms,
                p.n
            );
        }
        println!(
            "first load of the jobs page, gzip: {:.1} KiB (HTML {:.1} + CSS {:.1} + JS {:.1}; target < 150 KiB; FCP target ≤ 300 ms)",
            b.first_load_bytes as f64 / 1024.0,
            b.html_bytes as f64 / 1024.0,
            b.css_bytes as f64 / 1024.0,
            b.js_bytes as f64 / 1024.0
        );
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "routes": rows, "browser": browser })
            )?
        );
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
            let job = |p: &[&dyn ToValue]| {
                c.execute(
                "INSERT INTO jobs (id, name, prompt, schedule, status, priority, execution_options,
                    tags, created_at, updated_at, execution_count, success_count, failure_count,
                    total_time_ms)
                 VALUES (?1, ?2, 'Summarise the repository.', '{\"type\":\"manual\"}', 'active', 5,
                    '{}', '[\"bench\"]', ?3, ?3, 10, 9, 1, 12345)",
                p,
            )
            };
            for i in 0..jobs {
                job(&[&job_id(i), &format!("job-{i:06}"), &(now - 86_400_000)])?;
            }
            let exec = |p: &[&dyn ToValue]| {
                c.execute(
                    "INSERT INTO executions (id, job_id, status, trigger, slot, scheduled_for,
                    queued_at, started_at, completed_at, execution_time_ms, prompt, output,
                    retry_count, outcome, exit_code)
                 VALUES (?1, ?2, ?3, 'schedule', ?4, ?4, ?4, ?4, ?5, ?6,
                    'Summarise the repository.', 'All good: 3 files changed.', 0, ?7, ?8)",
                    p,
                )
            };
            for i in 0..executions {
                let at = now - 86_400_000 + (i as i64) * 500;
                let ok = i % 10 != 0;
                let ms = 1000 + (i as i64 * 37) % 60_000;
                exec(&[
                    &exec_id(i),
                    &job_id(i % jobs.max(1)),
                    &if ok { "completed" } else { "failed" },
                    &at,
                    &(at + ms),
                    &ms,
                    &if ok {
                        "{\"kind\":\"success\"}"
                    } else {
                        "{\"kind\":\"error\",\"message\":\"boom\"}"
                    },
                    &if ok { 0 } else { 1 },
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
    auth: &(String, String),
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
        let (base, auth, path, next) = (base.to_owned(), auth.clone(), path.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(h);
                }
                let url = format!("{base}{}", path(i));
                let t = Instant::now();
                let res = client.get(&url).header(&auth.0, &auth.1).send().await?;
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

/// Logs in to the dashboard; returns the `cookie` header value of the session.
async fn dashboard_login(base: &str, token: &str) -> anyhow::Result<String> {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("secret={token}&next=%2Fui%2F"))
        .send()
        .await?;
    let set = res
        .headers()
        .get("set-cookie")
        .ok_or_else(|| anyhow::anyhow!("the dashboard login set no cookie ({})", res.status()))?
        .to_str()?;
    Ok(set.split(';').next().unwrap_or_default().to_owned())
}

mod browser {
    //! First contentful paint of dashboard pages in headless Chromium over WebDriver.

    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use fantoccini::{ClientBuilder, Locator};

    #[derive(serde::Serialize)]
    pub struct PageTiming {
        pub page: String,
        pub cold_fcp_ms: f64,
        pub fcp_p50_ms: f64,
        pub fcp_p99_ms: f64,
        pub n: usize,
    }

    #[derive(serde::Serialize)]
    pub struct Report {
        pub pages: Vec<PageTiming>,
        /// Bytes over the wire (gzip) for the jobs page with its CSS and script.
        pub first_load_bytes: u64,
        pub html_bytes: u64,
        pub css_bytes: u64,
        pub js_bytes: u64,
    }

    fn pct(sorted: &[f64], p: f64) -> f64 {
        let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    pub async fn measure(
        base: &str,
        token: &str,
        pages: &[String],
        runs: usize,
    ) -> anyhow::Result<Report> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting /usr/bin/chromedriver (apt-get install chromium chromium-driver, or --fcp-runs 0)")?;
        let profile = tempfile::tempdir()?;
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!({
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,800",
                        format!("--user-data-dir={}", profile.path().display())]
                }
            }),
        )?;
        let start = Instant::now();
        let c = loop {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            match b
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => {
                    let _ = driver.kill();
                    anyhow::bail!("no browser session: {e}");
                }
            }
        };
        let result = async {
            c.goto(&format!("{base}/ui/login")).await?;
            c.find(Locator::Id("secret")).await?.send_keys(token).await?;
            c.find(Locator::Css("form button")).await?.click().await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let fcp = "const e = performance.getEntriesByName('first-contentful-paint')[0]; \
                       return e ? e.startTime : null;";
            let mut timings = Vec::new();
            let mut weights = (0u64, 0u64, 0u64);
            for (n, page) in pages.iter().enumerate() {
                let mut all = Vec::with_capacity(runs);
                let mut cold = 0.0;
                // The first load of the first page fetches the assets (a fresh profile: an
                // empty cache); it is reported as `cold` and is where the weight is read.
                for i in 0..runs.max(1) + 1 {
                    c.goto(page).await?;
                    let t0 = Instant::now();
                    let v = loop {
                        let v = c.execute(fcp, vec![]).await?;
                        if let Some(ms) = v.as_f64() {
                            break ms;
                        }
                        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "no first contentful paint on {page}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    if i == 0 {
                        cold = v;
                        if n == 0 {
                            let sizes = c
                                .execute(
                                    "return performance.getEntriesByType('resource').map(r => [r.name, r.transferSize, r.encodedBodySize]) \
                                     .concat([[location.href, 0, performance.getEntriesByType('navigation')[0].encodedBodySize]]);",
                                    vec![],
                                )
                                .await?;
                            for r in sizes.as_array().cloned().unwrap_or_default() {
                                let name = r[0].as_str().unwrap_or_default().to_owned();
                                let bytes = r[2].as_u64().unwrap_or(0);
                                if name.contains(".css") {
                                    weights.1 += bytes;
                                } else if name.contains(".js") {
                                    weights.2 += bytes;
                                } else {
                                    weights.0 += bytes;
                                }
                            }
                        }
                    } else {
                        all.push(v);
                    }
                }
                all.sort_by(|a, b| a.partial_cmp(b).unwrap());
                timings.push(PageTiming {
                    page: page.trim_start_matches(base).to_owned(),
                    cold_fcp_ms: cold,
                    fcp_p50_ms: pct(&all, 0.50),
                    fcp_p99_ms: pct(&all, 0.99),
                    n: all.len(),
                });
            }
            Ok::<_, anyhow::Error>(Report {
                pages: timings,
                first_load_bytes: weights.0 + weights.1 + weights.2,
                html_bytes: weights.0,
                css_bytes: weights.1,
                js_bytes: weights.2,
            })
        }
        .await;
        let _ = c.close().await;
        let _ = driver.kill();
        let _ = driver.wait();
        result
    }
}
