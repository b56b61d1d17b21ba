//! cnp's side: the real engine, a SQLite store file, the real `ClaudeRunner` running the fake
//! CLI. A thin [`TimingRunner`] around the `ClaudeRunner` notes when the engine called it and when
//! `spawn()` returned (two clock reads and a map insert per run); everything else is cnp's own.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cnp::clock::Clock;
use cnp::config::Config;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::{Event, EventBus};
use cnp::executor::{BoxFuture, ClaudeRunner, RunObserver, RunReport, RunRequest, Runner};
use cnp::manifest::JobSpec;
use cnp::model::{ExecutionStatus, LogStream, Trigger};
use cnp::store::{NewExecution, Store};

use crate::common::*;

#[derive(Debug, Clone, Default)]
struct RunTiming {
    runner_called: Option<DateTime<Utc>>,
    spawned: Option<DateTime<Utc>>,
}

type Timings = Arc<Mutex<HashMap<String, RunTiming>>>;

/// The real runner, plus timestamps.
struct TimingRunner {
    inner: ClaudeRunner,
    timings: Timings,
    in_flight: Arc<InFlight>,
}

impl Runner for TimingRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let called = Utc::now();
        let id = request.execution_id.clone();
        self.timings
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_default()
            .runner_called = Some(called);
        let observer = Arc::new(TimingObserver {
            inner: observer,
            id,
            timings: self.timings.clone(),
        });
        self.in_flight.enter();
        let fut = self.inner.run(request, observer);
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let report = fut.await;
            in_flight.leave();
            report
        })
    }
}

struct TimingObserver {
    inner: Arc<dyn RunObserver>,
    id: String,
    timings: Timings,
}

impl RunObserver for TimingObserver {
    fn spawned(&self, pid: u32, at: DateTime<Utc>) {
        self.timings
            .lock()
            .unwrap()
            .entry(self.id.clone())
            .or_default()
            .spawned = Some(at);
        self.inner.spawned(pid, at);
    }

    fn line(&self, stream: LogStream, line: &str) {
        self.inner.line(stream, line);
    }
}

pub fn spec(name: &str, expression: &str) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "prompt": "Benchmark prompt: reply with one short sentence.",
        "schedule": { "type": "cron", "expression": expression, "timezone": "UTC" },
    }))
    .expect("valid job spec")
}

struct Setup {
    engine: Engine,
    store: Store,
    db: std::path::PathBuf,
    timings: Timings,
    in_flight: Arc<InFlight>,
    events: Arc<Mutex<EventTimes>>,
}

/// From the engine's event bus: when each execution was published `queued` (recorded in the
/// store and put in the dispatch queue) and `running` (its start committed). The events carry the
/// engine's own timestamp, so a slow subscriber does not skew them.
#[derive(Default)]
struct EventTimes {
    queued: HashMap<String, DateTime<Utc>>,
    running: HashMap<String, DateTime<Utc>>,
    lagged: u64,
}

/// Drains the bus on a thread of its own (so it keeps up while the runtime is busy spawning).
fn watch_events(bus: &EventBus) -> Arc<Mutex<EventTimes>> {
    let times: Arc<Mutex<EventTimes>> = Default::default();
    let mut rx = bus.subscribe();
    let t = times.clone();
    std::thread::spawn(move || loop {
        match rx.blocking_recv() {
            Ok(Event::Execution {
                execution_id,
                status,
                timestamp,
                ..
            }) => {
                let mut t = t.lock().unwrap();
                match status {
                    ExecutionStatus::Queued => {
                        t.queued.entry(execution_id).or_insert(timestamp);
                    }
                    ExecutionStatus::Running => {
                        t.running.entry(execution_id).or_insert(timestamp);
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                t.lock().unwrap().lagged += n
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    });
    times
}

async fn start(p: &Params, dir: &Path, max_concurrent: usize) -> anyhow::Result<Setup> {
    let db = dir.join("cnp.db");
    let store = Store::open(&db).context("opening the store")?;
    let mut config = Config::default();
    config.executor.claude_cli_path = format!("'{}'", p.fake.display());
    config.job_engine.max_concurrent_jobs = max_concurrent.max(1) as u32;
    config.database.path = Some(db.clone());
    let timings: Timings = Default::default();
    let in_flight = Arc::new(InFlight::default());
    let runner = Arc::new(TimingRunner {
        inner: ClaudeRunner::new(cnp::service::executor_settings(&config)),
        timings: timings.clone(),
        in_flight: in_flight.clone(),
    });
    // As `cnp serve` does at its start.
    cnp::executor::process::guardian::start_now();
    let bus = EventBus::default();
    let events = watch_events(&bus);
    let engine = Engine::start(
        store.clone(),
        runner,
        EngineSettings::from_config(&config),
        Clock::System,
        bus,
    )
    .await
    .context("starting the engine")?;
    Ok(Setup {
        engine,
        store,
        db,
        timings,
        in_flight,
        events,
    })
}

/// Creates the jobs through `Engine::create_job`, up to `concurrency` at once (the store groups
/// the writes). Returns the time taken.
async fn create_jobs(
    engine: &Engine,
    specs: Vec<JobSpec>,
    concurrency: usize,
) -> anyhow::Result<(Duration, Vec<String>)> {
    let began = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let total = specs.len();
    let mut ids = Vec::with_capacity(total);
    for (i, spec) in specs.into_iter().enumerate() {
        while set.len() >= concurrency {
            ids.push(set.join_next().await.expect("non-empty")??);
        }
        let engine = engine.clone();
        set.spawn(async move { engine.create_job(spec, None).await.map(|j| j.id) });
        if total >= 10_000 && (i + 1) % (total / 5) == 0 {
            progress(format!("cnp: {} / {total} jobs created", i + 1));
        }
    }
    while let Some(r) = set.join_next().await {
        ids.push(r??);
    }
    Ok((began.elapsed(), ids))
}

/// Waits until nothing is queued or running (or `limit`).
async fn wait_idle(s: &Setup, limit: Duration) {
    let began = Instant::now();
    loop {
        let st = s.engine.status();
        if st.queued == 0 && st.running == 0 && s.in_flight.current() == 0 {
            return;
        }
        if began.elapsed() > limit {
            progress(format!(
                "cnp: still {} queued / {} running after {limit:?}",
                st.queued, st.running
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(s: &Setup) {
    s.engine.shutdown(Duration::from_secs(30)).await;
    s.store.close();
}

struct ExecRow {
    job_id: String,
    status: String,
    slot: Option<i64>,
    queued_at: i64,
    error: Option<String>,
}

fn read_executions(db: &Path) -> anyhow::Result<HashMap<String, ExecRow>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt =
        conn.prepare("SELECT id, job_id, status, slot, queued_at, error FROM executions")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ExecRow {
                job_id: r.get(1)?,
                status: r.get(2)?,
                slot: r.get(3)?,
                queued_at: r.get(4)?,
                error: r.get(5)?,
            },
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, row) = row?;
        out.insert(id, row);
    }
    Ok(out)
}

fn ms(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// Joins the fake's invocation records, the store, the engine's events and the runner's
/// timestamps for slots in `[from, to]`; `expected` is how many runs those slots should have
/// started.
///
/// Stages: `timer_fired` = the execution's `queued_at` (when the slot was recorded — normally
/// `RECORD_AHEAD` before it, which counts as 0 here; ms resolution); `queued` = the `queued`
/// event (the run's row is committed and the run is in the dispatch queue);
/// `released` = the `running` event (dispatched, its start committed: right before
/// `Runner::run`); `runner_called`; `spawned`. (The store's `started_at` is not used: it is
/// overwritten with the spawn time once the pid is known.)
fn analyze(
    s: &Setup,
    record: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    expected: u64,
    r: &mut WorkerResult,
) -> anyhow::Result<()> {
    let execs = read_executions(&s.db)?;
    let invocations = read_invocations(record)?;
    let timings = s.timings.lock().unwrap().clone();
    let events = s.events.lock().unwrap();
    if events.lagged > 0 {
        r.notes.push(format!(
            "the bench's event subscriber lagged ({} events dropped): `queued`/`released` figures \
             cover fewer runs than started",
            events.lagged
        ));
    }
    let in_window = |slot: i64| slot >= from.timestamp_millis() && slot <= to.timestamp_millis();
    let mut samples = Vec::new();
    let mut unmatched = 0;
    // How long before its due instant each run's row was recorded (ms; ≤ 0: at or after it).
    let mut ahead: Vec<i64> = Vec::new();
    for inv in &invocations {
        let Some(e) = execs.get(&inv.execution_id) else {
            unmatched += 1;
            continue;
        };
        let Some(slot) = e.slot.filter(|s| in_window(*s)) else {
            continue;
        };
        let mut stages = vec![("timer_fired", ms(e.queued_at))];
        ahead.push(slot - e.queued_at);
        if let Some(t) = events.queued.get(&inv.execution_id) {
            stages.push(("queued", *t));
        }
        if let Some(t) = events.running.get(&inv.execution_id) {
            stages.push(("released", *t));
        }
        if let Some(t) = timings.get(&inv.execution_id) {
            stages.extend(t.runner_called.map(|c| ("runner_called", c)));
            stages.extend(t.spawned.map(|c| ("spawned", c)));
        }
        samples.push(Sample {
            job: e.job_id.clone(),
            due: ms(slot),
            stages,
            child_started: inv.started,
        });
    }
    if unmatched > 0 {
        r.notes.push(format!(
            "{unmatched} invocation(s) without a matching execution row"
        ));
    }
    if !ahead.is_empty() {
        ahead.sort_unstable();
        let early = ahead.iter().filter(|a| **a > 0).count();
        r.notes.push(format!(
            "{early} of {} runs were recorded ahead of their due instant (row committed before \
             the slot; released from memory at the slot), by {} … {} ms (min … max)",
            ahead.len(),
            ahead[0],
            ahead[ahead.len() - 1]
        ));
    }
    summarize(samples, expected, (from == to).then_some(from), r);
    let window: Vec<&ExecRow> = execs
        .values()
        .filter(|e| e.slot.is_some_and(in_window))
        .collect();
    r.completed_runs = Some(window.iter().filter(|e| e.status == "completed").count() as u64);
    let mut statuses: BTreeMap<&str, u64> = BTreeMap::new();
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &window {
        *statuses.entry(e.status.as_str()).or_default() += 1;
        if e.status != "completed" {
            *errors
                .entry(e.error.as_deref().unwrap_or("(no message)"))
                .or_default() += 1;
        }
    }
    r.notes
        .push(format!("execution statuses in the window: {statuses:?}"));
    for (msg, n) in errors.iter().take(5) {
        r.notes.push(format!("{n} run(s) not completed: {msg}"));
    }
    Ok(())
}

/// How long the store takes to record a burst of fires like the one the timer just released
/// (for slots a day later, so nothing runs): in one transaction as the engine does, and in
/// chunks of 500.
async fn record_cost(
    s: &Setup,
    ids: &[String],
    due: DateTime<Utc>,
    r: &mut WorkerResult,
) -> anyhow::Result<()> {
    let fires = |day: i64, prefix: &str| -> Vec<NewExecution> {
        let slot = due + chrono::Duration::days(day);
        ids.iter()
            .enumerate()
            .map(|(i, job)| NewExecution {
                id: format!("{prefix}-{i}"),
                job_id: job.clone(),
                status: ExecutionStatus::Queued,
                trigger: Trigger::Schedule,
                slot: Some(slot),
                scheduled_for: Some(slot),
                queued_at: Utc::now(),
                retry_count: 0,
                prompt: None,
                error: None,
            })
            .collect()
    };
    let batch = fires(1, "diag-a");
    let began = Instant::now();
    s.store.record_fires(batch).await?;
    let one = began.elapsed();
    let mut chunks = fires(2, "diag-b");
    let began = Instant::now();
    let mut first = None;
    while !chunks.is_empty() {
        let rest = chunks.split_off(chunks.len().min(500));
        s.store
            .record_fires(std::mem::replace(&mut chunks, rest))
            .await?;
        first.get_or_insert(began.elapsed());
    }
    let all = began.elapsed();
    r.notes.push(format!(
        "diagnosis: `Store::record_fires` of {} fires in one transaction (as the engine records a burst) \
         takes {:.1} ms here; in chunks of 500: first chunk committed after {:.1} ms, all after {:.1} ms",
        ids.len(),
        one.as_secs_f64() * 1000.0,
        first.unwrap_or_default().as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0
    ));
    Ok(())
}

/// Bytes SQLite has allocated in this process (all connections: page caches, schema, statements).
fn sqlite_heap() -> i64 {
    #[allow(unsafe_code)]
    // SAFETY: a plain read of SQLite's global memory counter.
    unsafe {
        rusqlite::ffi::sqlite3_memory_used()
    }
}

/// Where the idle scenario's memory goes (measured after its figures were taken): SQLite's heap,
/// what the distinct parsed crons cost, and what one copy of every `Job` costs.
async fn memory_breakdown(
    s: &Setup,
    jobs: usize,
    now: DateTime<Utc>,
    r: &mut WorkerResult,
) -> anyhow::Result<()> {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    r.notes.push(format!(
        "breakdown: SQLite heap (page caches of the writer and the read pool, statements) {:.1} MiB",
        mib(sqlite_heap() as f64)
    ));
    let cache = cnp::schedule::CronCache::new();
    malloc_trim();
    let before = rss_kib().0;
    let parsed: Vec<_> = (0..IDLE_DISTINCT.min(jobs))
        .map(|i| cache.get(&idle_expression(i, now)))
        .collect::<Result<_, _>>()?;
    let after = rss_kib().0;
    r.notes.push(format!(
        "breakdown: a second set of the {} distinct parsed crons costs {:.1} MiB ({:.1} KiB each)",
        parsed.len(),
        (after - before) as f64 / 1024.0,
        (after - before) as f64 / parsed.len() as f64
    ));
    drop(parsed);
    malloc_trim();
    let (rss0, sql0) = (rss_kib().0, sqlite_heap());
    let copy = s.store.list_jobs(Default::default()).await?;
    let (rss1, sql1) = (rss_kib().0, sqlite_heap());
    let bytes = (rss1 as f64 - rss0 as f64) * 1024.0 - (sql1 - sql0) as f64;
    r.notes.push(format!(
        "breakdown: one more copy of all {} `Job` values (as the engine holds them) costs {:.1} MiB \
         ({:.0} B per job; size_of::<Job>() = {} B)",
        copy.len(),
        mib(bytes),
        bytes / copy.len().max(1) as f64,
        std::mem::size_of::<cnp::model::Job>()
    ));
    drop(copy);
    Ok(())
}

pub async fn run(p: &Params, dir: &Path, record: &Path) -> anyhow::Result<WorkerResult> {
    let mut r = WorkerResult {
        system: Some(System::Cnp),
        scenario: Some(p.scenario),
        jobs: p.jobs,
        ..Default::default()
    };
    r.rss_baseline_kib = Some(rss_kib().0);
    match p.scenario {
        Scenario::OnePerSecond => {
            r.jobs = 1;
            r.distinct_expressions = Some(1);
            let s = start(p, dir, 10).await?;
            let began = Instant::now();
            s.engine
                .create_job(spec("every-second", "* * * * * *"), None)
                .await?;
            r.setup_secs = Some(began.elapsed().as_secs_f64());
            let (first, last) = one_per_second_window("cnp", p.seconds);
            sleep_until_wall(last + chrono::Duration::milliseconds(1500)).await;
            wait_idle(&s, Duration::from_secs(30)).await;
            stop(&s).await;
            analyze(&s, record, first, last, p.seconds, &mut r)?;
        }
        Scenario::Burst | Scenario::InFlight => {
            let s = start(p, dir, p.max_concurrent).await?;
            r.max_concurrent = Some(p.max_concurrent);
            r.rss_baseline_kib = Some(rss_kib().0);
            let due = ceil_second(Utc::now() + chrono::Duration::seconds(p.lead() as i64));
            let expr = daily_at(due);
            r.distinct_expressions = Some(1);
            progress(format!(
                "cnp: creating {} jobs on `{expr}` (due {})",
                p.jobs,
                due.format("%T")
            ));
            let specs = (0..p.jobs)
                .map(|i| spec(&format!("job-{i:06}"), &expr))
                .collect();
            let (took, ids) = create_jobs(&s.engine, specs, 1000).await?;
            r.setup_secs = Some(took.as_secs_f64());
            r.create_rate = Some(p.jobs as f64 / took.as_secs_f64());
            s.store.flush().await?;
            if Utc::now() + chrono::Duration::milliseconds(300) > due {
                bail!("creating the jobs took {took:?}, past the due instant: raise --lead-secs (was {})", p.lead());
            }
            r.rss_jobs_kib = Some(rss_kib().0);
            measure_burst(
                p,
                record,
                due,
                "cnp",
                &s.in_flight,
                wait_idle(&s, Duration::from_secs(600)),
                &mut r,
            )
            .await;
            if p.scenario == Scenario::Burst {
                record_cost(&s, &ids, due, &mut r).await?;
            }
            stop(&s).await;
            analyze(&s, record, due, due, p.jobs as u64, &mut r)?;
        }
        Scenario::Idle => {
            let s = start(p, dir, 10).await?;
            r.rss_baseline_kib = Some(rss_kib().0);
            let now = Utc::now();
            let specs = (0..p.jobs)
                .map(|i| spec(&format!("job-{i:06}"), &idle_expression(i, now)))
                .collect();
            r.distinct_expressions = Some(IDLE_DISTINCT.min(p.jobs));
            progress(format!("cnp: creating {} jobs", p.jobs));
            let (took, _) = create_jobs(&s.engine, specs, 1000).await?;
            s.store.flush().await?;
            r.setup_secs = Some(took.as_secs_f64());
            r.create_rate = Some(p.jobs as f64 / took.as_secs_f64());
            let st = s.engine.status();
            if st.active_jobs != p.jobs {
                r.notes.push(format!(
                    "engine holds {} active jobs, expected {}",
                    st.active_jobs, p.jobs
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.rss_jobs_kib = Some(rss_kib().0);
            let (cpu0, t0) = (cpu_time(), Instant::now());
            tokio::time::sleep(Duration::from_secs(p.idle_secs)).await;
            let (cpu1, t1) = (cpu_time(), Instant::now());
            let wall = (t1 - t0).as_secs_f64();
            r.idle_window_secs = Some(wall);
            r.idle_cpu_percent = Some((cpu1 - cpu0).as_secs_f64() / wall * 100.0);
            malloc_trim();
            r.rss_trimmed_kib = Some(rss_kib().0);
            memory_breakdown(&s, p.jobs, now, &mut r).await?;
            stop(&s).await;
        }
    }
    r.rss_hwm_kib = Some(rss_kib().1);
    Ok(r)
}
