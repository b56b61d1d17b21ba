//! Several cnp instances on one PostgreSQL database, measured on real `cnp serve` processes
//! driving the fake claude CLI: `--runs` one-shot jobs (default 1,000) all due at the same
//! instant, on one instance with SQLite (the baseline), one instance on PostgreSQL and two
//! instances on PostgreSQL — due → child started p50/p99 (the fake CLI records when each
//! process started), the last start, how the runs split, 0 lost and 0 doubled checked; then
//! the failover time: kill -9 of the leader until the other instance holds the timer.
//!
//! ```text
//! cargo build --release -p cnp-host -p cnp-tests -p cnp-bench
//! target/release/cnp-cluster-bench --runs 1000 --failovers 5
//! ```
//!
//! PostgreSQL is a private server this binary starts (`initdb` + `postgres` from Debian's
//! `postgresql` package, on a free loopback port; `cnp_tests::pg`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use cnp_tests::pg::PgServer;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Cli {
    /// Runs due at the same instant.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Each instance's `max_concurrent_jobs`.
    #[arg(long, default_value_t = 16)]
    max_concurrent: u32,
    /// Kill -9s of the leader measured.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct BurstRow {
    setup: &'static str,
    runs: usize,
    p50_ms: f64,
    p99_ms: f64,
    last_ms: f64,
    per_instance: Vec<usize>,
    lost: usize,
    doubled: usize,
}

/// One `cnp serve`, its stderr kept with the instant each line arrived.
struct Instance {
    child: Child,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    dir: PathBuf,
}

impl Instance {
    fn start(dir: &Path, database: &str, max_concurrent: u32) -> anyhow::Result<Instance> {
        std::fs::create_dir_all(dir)?;
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("binary folder")?;
        let (cnp, fake) = (bin.join("cnp"), bin.join("fake-claude"));
        if !cnp.is_file() || !fake.is_file() {
            bail!(
                "build cnp and the fake CLI first: cargo build --release -p cnp-host -p cnp-tests"
            );
        }
        let config = dir.join("claude-pilot.toml");
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        std::fs::write(
            &config,
            format!(
                "[job_engine]\nmax_concurrent_jobs = {max_concurrent}\n\n\
                 [executor]\nclaude_cli_path = {}\n\n\
                 [database]\n{database}\n\n\
                 [plugins]\nenabled = false\n\n\
                 [api]\nbind = \"127.0.0.1:0\"\ntoken_file = {}\n\n\
                 [logging]\nlevel = \"info\"\n",
                q(&fake),
                q(&dir.join("api-token")),
            ),
        )?;
        let mut child = Command::new(&cnp)
            .arg("-c")
            .arg(&config)
            .arg("serve")
            .env("FAKE_CLAUDE_RECORD", dir.join("record.jsonl"))
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cnp serve")?;
        let stderr = child.stderr.take().expect("piped");
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Default::default();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push((Instant::now(), line));
            }
        });
        Ok(Instance {
            child,
            log,
            dir: dir.to_owned(),
        })
    }

    /// When a line containing `needle` arrived after `after` (waits up to 30 s).
    fn wait_line(&self, needle: &str, after: Instant) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((t, _)) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|(t, l)| *t >= after && l.contains(needle))
            {
                return Ok(*t);
            }
            if Instant::now() > deadline {
                let log: Vec<String> = self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|l| l.1.clone())
                    .collect();
                bail!("no {needle:?} from cnp serve:\n{}", log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn api(&self) -> anyhow::Result<(String, String)> {
        self.wait_line(
            "admin API listening",
            Instant::now() - Duration::from_secs(3600),
        )?;
        let addr = std::fs::read_to_string(self.dir.join("api-address"))?;
        let token = std::fs::read_to_string(self.dir.join("api-token"))?;
        Ok((format!("http://{}", addr.trim()), token.trim().to_owned()))
    }

    fn records(&self) -> Vec<(String, DateTime<Utc>)> {
        let text = std::fs::read_to_string(self.dir.join("record.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["env"]["CNP_EXECUTION_ID"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    Utc.timestamp_nanos(v["started_unix_ns"].as_u64().unwrap_or(0) as i64),
                )
            })
            .collect()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let _ = nix_term(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

fn nix_term(pid: u32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid we spawned; no memory is shared.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates `runs` one-shot jobs due at `due` through the API, 16 at a time.
async fn create_jobs(
    base: &str,
    token: &str,
    runs: usize,
    due: DateTime<Utc>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..runs {
        while set.len() >= 16 {
            set.join_next().await.expect("non-empty")??;
        }
        let (http, url, token) = (http.clone(), format!("{base}/api/jobs"), token.to_owned());
        set.spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({
                    "name": format!("due-{i:05}"),
                    "prompt": "Benchmark prompt: reply with one short sentence.",
                    "schedule": {"type": "once", "at": due.to_rfc3339()},
                }))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!(
                    "creating a job: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// One burst: `instances` `cnp serve` on `database`, `runs` due at once.
async fn burst(
    setup: &'static str,
    root: &Path,
    database: &str,
    instances: usize,
    cli: &Cli,
) -> anyhow::Result<BurstRow> {
    let mut all = Vec::new();
    for i in 0..instances {
        let inst = Instance::start(
            &root.join(format!("{setup}-{i}")),
            database,
            cli.max_concurrent,
        )?;
        if instances > 1 {
            let needle = if i == 0 {
                "cluster leader: this instance"
            } else {
                "another instance holds the timer"
            };
            inst.wait_line(needle, Instant::now() - Duration::from_secs(3600))?;
        }
        all.push(inst);
    }
    let (base, token) = all[0].api()?;
    for inst in &all[1..] {
        inst.api()?;
    }
    // Due once the jobs exist: ~3 s plus 6 ms a job.
    let due = chrono::DateTime::<Utc>::from_timestamp(
        (Utc::now() + chrono::Duration::milliseconds(3000 + 6 * cli.runs as i64)).timestamp() + 1,
        0,
    )
    .expect("a time");
    create_jobs(&base, &token, cli.runs, due).await?;
    if Utc::now() >= due {
        bail!("creating the jobs took longer than planned: the burst was not at once");
    }
    let deadline = Instant::now() + Duration::from_secs(120 + cli.runs as u64 / 10);
    loop {
        let n: usize = all.iter().map(|i| i.records().len()).sum();
        if n >= cli.runs || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything doubled would come now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records: Vec<Vec<(String, DateTime<Utc>)>> = all.iter().map(|i| i.records()).collect();
    for inst in all {
        inst.stop();
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut seen = HashSet::new();
    let mut doubled = 0;
    let mut last = 0u64;
    for (id, started) in records.iter().flatten() {
        if !seen.insert(id.clone()) {
            doubled += 1;
        }
        let us = (*started - due).num_microseconds().unwrap_or(0).max(1) as u64;
        last = last.max(us);
        h.saturating_record(us);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(BurstRow {
        setup,
        runs: cli.runs,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        last_ms: ms(last),
        per_instance: records.iter().map(Vec::len).collect(),
        lost: cli.runs.saturating_sub(seen.len()),
        doubled,
    })
}

/// Kill -9s of the leader: how long until the other instance holds the timer.
fn failovers(root: &Path, database: &str, cli: &Cli) -> anyhow::Result<Vec<Duration>> {
    let mut leader = Instance::start(&root.join("failover-0"), database, cli.max_concurrent)?;
    leader.wait_line(
        "cluster leader: this instance",
        Instant::now() - Duration::from_secs(3600),
    )?;
    let mut member = Instance::start(&root.join("failover-1"), database, cli.max_concurrent)?;
    member.wait_line(
        "another instance holds the timer",
        Instant::now() - Duration::from_secs(3600),
    )?;
    let mut out = Vec::new();
    for i in 0..cli.failovers {
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        leader.kill9();
        let took = member.wait_line("cluster leader: this instance", killed)? - killed;
        out.push(took);
        // The killed one comes back as a member; the next round kills the new leader.
        let back = Instance::start(
            &root.join(format!("failover-{}", i + 2)),
            database,
            cli.max_concurrent,
        )?;
        back.wait_line(
            "another instance holds the timer",
            Instant::now() - Duration::from_secs(3600),
        )?;
        leader = std::mem::replace(&mut member, back);
    }
    leader.stop();
    member.stop();
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tmp = tempfile::Builder::new()
        .prefix("cnp-cluster-bench-")
        .tempdir()?;
    let root = tmp.path();
    let server = PgServer::start().context("starting PostgreSQL (Debian's postgresql package)")?;
    let mut rows = Vec::new();
    let sqlite = format!("path = {:?}", root.join("sqlite.db").display().to_string());
    eprintln!("== {} runs due at once: 1 instance, SQLite ==", cli.runs);
    rows.push(burst("SQLite, 1 instance", root, &sqlite, 1, &cli).await?);
    let pg = |url: String| format!("url = {url:?}\nlease = \"5s\"\nheartbeat = \"1s\"");
    eprintln!(
        "== {} runs due at once: 1 instance, PostgreSQL ==",
        cli.runs
    );
    rows.push(
        burst(
            "PostgreSQL, 1 instance",
            root,
            &pg(server.create_database()),
            1,
            &cli,
        )
        .await?,
    );
    eprintln!(
        "== {} runs due at once: 2 instances, PostgreSQL ==",
        cli.runs
    );
    rows.push(
        burst(
            "PostgreSQL, 2 instances",
            root,
            &pg(server.create_database()),
            2,
            &cli,
        )
        .await?,
    );
    eprintln!("== failover: {} kill -9s of the leader ==", cli.failovers);
    let times = failovers(root, &pg(server.create_database()), &cli)?;

    println!(
        "{} runs due at the same instant, max_concurrent_jobs = {} per instance; due → fake CLI started",
        cli.runs, cli.max_concurrent
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>16} {:>5} {:>7}",
        "setup", "p50 ms", "p99 ms", "last ms", "runs/instance", "lost", "doubled"
    );
    let base = rows[0].p99_ms;
    for r in &rows {
        let split: Vec<String> = r.per_instance.iter().map(|n| n.to_string()).collect();
        println!(
            "{:<26} {:>10.1} {:>10.1} {:>10.1} {:>16} {:>5} {:>7}   p99 {:.2}× SQLite",
            r.setup,
            r.p50_ms,
            r.p99_ms,
            r.last_ms,
            split.join(" + "),
            r.lost,
            r.doubled,
            r.p99_ms / base
        );
    }
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    if !ms.is_empty() {
        println!(
            "failover (kill -9 of the leader → the other holds the timer), {} times: median {:.0} ms, max {:.0} ms",
            ms.len(),
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
    if cli.json {
        println!("{}", serde_json::json!({"bursts": rows, "failover_ms": ms}));
    }
    Ok(())
}
