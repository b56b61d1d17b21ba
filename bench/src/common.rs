//! What both sides share: parameters, the fake CLI's invocation records, latency histograms,
//! memory and CPU readings, and the result a worker hands back to the orchestrator.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Timelike, Utc};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The four scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 1 job on `* * * * * *` for `--seconds` seconds.
    OnePerSecond,
    /// `--jobs` jobs all due at the same second (default 10,000).
    Burst,
    /// `--jobs` runs in flight at once, each CLI sleeping `--sleep-ms` (default 1,000 × 3 s).
    InFlight,
    /// `--jobs` scheduled jobs (default 100,000), RSS and CPU while idle.
    Idle,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::OnePerSecond,
        Scenario::Burst,
        Scenario::InFlight,
        Scenario::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::OnePerSecond => "one-per-second",
            Scenario::Burst => "burst",
            Scenario::InFlight => "in-flight",
            Scenario::Idle => "idle",
        }
    }
}

/// The two systems under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// cnp's engine (SQLite store, real ClaudeRunner).
    Cnp,
    /// tokio-cron-scheduler 0.15, default `JobScheduler::new()`.
    Tcs,
    /// No scheduler: one loop spawning every run at the due instant (at 1 job/s: at each
    /// second; no idle scenario) — the floor this machine sets for starting those CLI processes.
    Floor,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Cnp => "cnp",
            System::Tcs => "tokio-cron-scheduler",
            System::Floor => "bare spawn loop",
        }
    }
}

/// What a worker process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub scenario: Scenario,
    pub system: System,
    pub fake: PathBuf,
    /// one-per-second: how many slots to measure.
    pub seconds: u64,
    /// burst / in-flight / idle: how many jobs.
    pub jobs: usize,
    /// in-flight: how long each fake CLI run sleeps.
    pub sleep_ms: u64,
    /// idle: the measured idle window.
    pub idle_secs: u64,
    /// Keep the temporary folder.
    #[serde(default)]
    pub keep: bool,
    /// burst / in-flight: cnp's `max_concurrent_jobs` and the floor's concurrency cap.
    pub max_concurrent: usize,
    /// burst / in-flight: seconds between the start of job creation and the due instant
    /// (`None`: estimated from the job count).
    pub lead_secs: Option<u64>,
}

impl Params {
    /// Seconds from "start creating" to the due instant for burst and in-flight.
    pub fn lead(&self) -> u64 {
        self.lead_secs
            .unwrap_or_else(|| 3 + (self.jobs as u64 * 600).div_ceil(1_000_000))
    }
}

/// p50 / p99 / max of one latency, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Collects latencies (µs, 3 significant digits, up to ~1 hour).
pub struct Lat(Histogram<u64>);

impl Lat {
    pub fn new() -> Self {
        Lat(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"))
    }

    /// Records `to - from` (clamped at 1 µs).
    pub fn add(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        let us = (to - from).num_microseconds().unwrap_or(i64::MAX).max(1) as u64;
        self.0.saturating_record(us);
    }

    pub fn summary(&self) -> Option<Latency> {
        if self.0.is_empty() {
            return None;
        }
        Some(Latency {
            count: self.0.len(),
            p50_us: self.0.value_at_quantile(0.50),
            p99_us: self.0.value_at_quantile(0.99),
            max_us: self.0.max(),
        })
    }
}

/// What one worker measured. Fields a scenario does not measure stay `None`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub system: Option<System>,
    pub scenario: Option<Scenario>,
    pub jobs: usize,
    /// Runs that should have started in the measured window.
    pub expected_runs: Option<u64>,
    /// Of those, how many started (the fake CLI recorded an invocation).
    pub started_runs: Option<u64>,
    pub lost_runs: Option<u64>,
    /// Slots that started more than once.
    pub doubled_runs: Option<u64>,
    /// Runs beyond the first of their slot.
    pub extra_runs: Option<u64>,
    /// Runs recorded as `completed` (cnp: in the store; tcs: the CLI exited 0).
    pub completed_runs: Option<u64>,
    /// Latencies from the due instant, keyed by stage:
    /// `timer_fired` (cnp only: the slot was recorded, `queued_at`; ahead of the slot = 0), `queued` (cnp only:
    /// the fire is committed and in the dispatch queue, `queued` event), `released` (cnp: the run
    /// was dispatched, `started_at` in the store; tcs: the job closure was called),
    /// `start_committed` (cnp only: `running` event), `runner_called` (cnp only: `Runner::run`
    /// called), `spawned` (`spawn()` returned), `child_started` (the fake CLI's `main`).
    pub latency: BTreeMap<String, Latency>,
    /// Due instant → last child started (how long the burst took to get out).
    pub last_child_started_ms: Option<f64>,
    /// Most runs in flight at once (counted around the CLI run).
    pub peak_in_flight: Option<u64>,
    /// burst / in-flight: due instant → the last run ended.
    pub last_run_ended_ms: Option<f64>,
    /// burst / in-flight: from just before the due instant until every run finished (plus a 2 s
    /// quiet check): wall time, CPU of the host process (all threads) and of its children (the
    /// fake CLI runs).
    pub run_window_secs: Option<f64>,
    pub host_cpu_secs: Option<f64>,
    pub children_cpu_secs: Option<f64>,
    pub setup_secs: Option<f64>,
    /// Jobs created per second during setup.
    pub create_rate: Option<f64>,
    pub rss_baseline_kib: Option<u64>,
    /// After creating the jobs, before anything ran (idle: before the idle window).
    pub rss_jobs_kib: Option<u64>,
    /// Highest VmRSS sampled while the runs were in flight.
    pub rss_peak_sampled_kib: Option<u64>,
    /// VmHWM at the end of the worker (the process-lifetime peak).
    pub rss_hwm_kib: Option<u64>,
    /// idle: VmRSS after `malloc_trim(0)` at the end (memory actually live vs allocator caches).
    pub rss_trimmed_kib: Option<u64>,
    /// idle: CPU time used during the idle window / its length, in percent of one core.
    pub idle_cpu_percent: Option<f64>,
    pub idle_window_secs: Option<f64>,
    /// cnp: `max_concurrent_jobs`; floor: its concurrency cap.
    pub max_concurrent: Option<usize>,
    /// Distinct cron expressions used.
    pub distinct_expressions: Option<usize>,
    pub notes: Vec<String>,
}

/// One line of `FAKE_CLAUDE_RECORD`.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub execution_id: String,
    pub job_id: String,
    pub started: DateTime<Utc>,
}

/// Reads the fake CLI's record file (missing file: no invocations).
pub fn read_invocations(path: &Path) -> anyhow::Result<Vec<Invocation>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("record line {line:?}"))?;
        let env = &v["env"];
        let ns = v["started_unix_ns"].as_u64().unwrap_or(0);
        out.push(Invocation {
            execution_id: env["CNP_EXECUTION_ID"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            job_id: env["CNP_JOB_ID"].as_str().unwrap_or_default().to_owned(),
            started: Utc.timestamp_nanos(ns as i64),
        });
    }
    Ok(out)
}

/// Lines in the record file so far (cheap progress check).
pub fn count_invocations(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Waits until at least `expected` invocations are recorded and none has come for `quiet`, or
/// nothing has come for `give_up` (counting from `not_before`, the due instant), or `limit`.
/// Returns the count.
pub async fn wait_for_invocations(
    path: &Path,
    expected: usize,
    not_before: DateTime<Utc>,
    quiet: Duration,
    give_up: Duration,
    limit: DateTime<Utc>,
) -> usize {
    sleep_until_wall(not_before).await;
    let mut last = usize::MAX;
    let mut last_change = Utc::now();
    loop {
        let n = count_invocations(path);
        let now = Utc::now();
        if n != last {
            last = n;
            last_change = now;
        }
        let still = (now - last_change).to_std().unwrap_or_default();
        if (n >= expected && still >= quiet) || still >= give_up || now >= limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run as measured: its (job, slot) key, its due instant and when it reached each stage.
pub struct Sample {
    pub job: String,
    pub due: DateTime<Utc>,
    pub stages: Vec<(&'static str, DateTime<Utc>)>,
    pub child_started: DateTime<Utc>,
}

/// Fills runs lost / doubled and the latencies from the samples of the measured window. When a
/// slot ran more than once only its first run counts for latency.
pub fn summarize(
    samples: Vec<Sample>,
    expected: u64,
    burst_due: Option<DateTime<Utc>>,
    r: &mut WorkerResult,
) {
    let mut first: HashMap<(String, DateTime<Utc>), Sample> = HashMap::new();
    let mut runs: HashMap<(String, DateTime<Utc>), u64> = HashMap::new();
    for s in samples {
        let key = (s.job.clone(), s.due);
        *runs.entry(key.clone()).or_default() += 1;
        match first.get(&key) {
            Some(f) if f.child_started <= s.child_started => {}
            _ => {
                first.insert(key, s);
            }
        }
    }
    let mut lat: BTreeMap<&'static str, Lat> = BTreeMap::new();
    let mut last_started: Option<DateTime<Utc>> = None;
    for s in first.values() {
        for (stage, t) in &s.stages {
            lat.entry(stage).or_insert_with(Lat::new).add(s.due, *t);
        }
        lat.entry("child_started")
            .or_insert_with(Lat::new)
            .add(s.due, s.child_started);
        last_started = Some(last_started.map_or(s.child_started, |l| l.max(s.child_started)));
    }
    let started = first.len() as u64;
    r.expected_runs = Some(expected);
    r.started_runs = Some(started);
    r.lost_runs = Some(expected.saturating_sub(started));
    r.doubled_runs = Some(runs.values().filter(|n| **n > 1).count() as u64);
    r.extra_runs = Some(runs.values().map(|n| n - 1).sum());
    if let Some(due) = burst_due {
        r.last_child_started_ms =
            last_started.map(|l| (l - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    for (k, v) in lat {
        if let Some(sum) = v.summary() {
            r.latency.insert(k.to_owned(), sum);
        }
    }
}

/// CPU used by this process and by its (reaped) children.
pub fn cpu_times() -> (Duration, Duration) {
    (rusage(libc::RUSAGE_SELF), rusage(libc::RUSAGE_CHILDREN))
}

fn rusage(who: libc::c_int) -> Duration {
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Sleeps until the wall clock reads `t`.
pub async fn sleep_until_wall(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

/// [`sleep_until_wall`] to within tens of microseconds, as cnp's timer wakes: tokio's timer
/// (1 ms wheel) wakes it a little early, and the rest is slept on the thread.
pub async fn sleep_until_wall_precise(t: DateTime<Utc>) {
    sleep_until_wall(t - chrono::Duration::milliseconds(2)).await;
    if let Ok(d) = (t - Utc::now()).to_std() {
        std::thread::sleep(d);
    }
}

/// The slots measured at 1 job/s: `seconds` whole seconds, the first 2 s after the next one
/// (announced on stderr as `who`'s).
pub fn one_per_second_window(who: &str, seconds: u64) -> (DateTime<Utc>, DateTime<Utc>) {
    let first = ceil_second(Utc::now()) + chrono::Duration::seconds(2);
    let last = first + chrono::Duration::seconds(seconds as i64 - 1);
    progress(format!(
        "{who}: measuring slots {} .. {}",
        first.format("%T"),
        last.format("%T")
    ));
    (first, last)
}

/// The next whole second at or after `t`.
pub fn ceil_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = t.with_nanosecond(0).expect("valid");
    if floor == t {
        floor
    } else {
        floor + chrono::Duration::seconds(1)
    }
}

pub fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).expect("valid")
}

/// A 6-field cron expression (UTC) that matches `t`'s second every day.
pub fn daily_at(t: DateTime<Utc>) -> String {
    format!("{} {} {} * * *", t.second(), t.minute(), t.hour())
}

/// The 6-field yearly expressions of the idle scenario: second 0, every minute × hour
/// combination (1,440 distinct), on the 15th of a month six months from now, so none fires
/// during the benchmark.
pub fn idle_expression(i: usize, now: DateTime<Utc>) -> String {
    use chrono::Datelike;
    let month = (now.month0() + 6) % 12 + 1;
    let combo = i % (60 * 24);
    format!("0 {} {} 15 {month} *", combo % 60, combo / 60)
}

pub const IDLE_DISTINCT: usize = 60 * 24;

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of this process (all threads), from `getrusage(RUSAGE_SELF)`.
pub fn cpu_time() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// Gives freed heap back to the OS (glibc), so RSS shows live memory rather than allocator caches.
pub fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Samples VmRSS every 20 ms until stopped; returns the highest value seen.
pub struct RssSampler {
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start() -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            let mut peak = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => peak = peak.max(rss_kib().0),
                }
            }
            peak.max(rss_kib().0)
        });
        RssSampler { stop, handle }
    }

    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        self.handle.await.unwrap_or(0)
    }
}

/// The fake CLI next to this binary (`target/release/fake-claude`).
pub fn locate_fake(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p);
        }
        bail!("--fake {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("binary has no folder")?;
    let candidate = dir.join("fake-claude");
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "the fake claude CLI is not at {} — build it first:\n  cargo build --release -p cnp-tests --bin fake-claude",
        candidate.display()
    )
}

/// Counts runs in flight and remembers the peak.
#[derive(Default)]
pub struct InFlight {
    now: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
    last_end: std::sync::Mutex<Option<DateTime<Utc>>>,
}

impl InFlight {
    pub fn enter(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
    }

    pub fn leave(&self) {
        *self.last_end.lock().unwrap() = Some(Utc::now());
        self.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// When the last run ended.
    pub fn last_end(&self) -> Option<DateTime<Utc>> {
        *self.last_end.lock().unwrap()
    }

    pub fn current(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[cnp-bench {}] {}",
        Utc::now().format("%H:%M:%S%.3f"),
        msg.as_ref()
    );
}

/// Waits through a burst (or in-flight) run from just before its due instant until `idle`
/// resolves, recording CPU, RSS, peak in flight and when the last run ended.
pub async fn measure_burst(
    p: &Params,
    record: &Path,
    due: DateTime<Utc>,
    who: &str,
    in_flight: &InFlight,
    idle: impl std::future::Future<Output = ()>,
    r: &mut WorkerResult,
) {
    sleep_until_wall(due - chrono::Duration::milliseconds(200)).await;
    let sampler = RssSampler::start();
    let (cpu0, children0, t0) = (cpu_time(), cpu_times().1, std::time::Instant::now());
    let n = wait_for_invocations(
        record,
        p.jobs,
        due,
        Duration::from_secs(2),
        Duration::from_secs(20),
        due + chrono::Duration::seconds(900),
    )
    .await;
    progress(format!(
        "{who}: {n} runs started for {} jobs; waiting for them to finish",
        p.jobs
    ));
    idle.await;
    let (cpu1, children1) = cpu_times();
    r.run_window_secs = Some(t0.elapsed().as_secs_f64());
    r.host_cpu_secs = Some((cpu1 - cpu0).as_secs_f64());
    r.children_cpu_secs = Some((children1 - children0).as_secs_f64());
    r.rss_peak_sampled_kib = Some(sampler.finish().await);
    r.peak_in_flight = Some(in_flight.peak());
    r.last_run_ended_ms = in_flight
        .last_end()
        .map(|t| (t - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
}
