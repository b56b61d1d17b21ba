//! The baseline: tokio-cron-scheduler 0.15 with default settings (`JobScheduler::new()`), jobs
//! added with `Job::new_async_tz(.., Utc, ..)` on 6-field crons. Each job's closure does what
//! cnp's executor does for a run: spawn the same CLI with the same arguments and environment (taken
//! from `ClaudeRunner::process_spec`), in its own process group, write the prompt to stdin, read
//! stdout and stderr to their end and wait for the exit.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cnp::config::Config;
use cnp::engine::{EXECUTION_ID_ENV, JOB_ID_ENV};
use cnp::executor::{ClaudeRunner, RunRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::common::*;

#[derive(Debug, Clone)]
struct RunTiming {
    released: DateTime<Utc>,
    spawned: Option<DateTime<Utc>>,
}

/// What every job's closure shares.
struct Ctx {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    prompt: Vec<u8>,
    seq: AtomicU64,
    timings: Mutex<HashMap<String, RunTiming>>,
    in_flight: InFlight,
    completed: AtomicU64,
    spawn_errors: AtomicU64,
}

impl Ctx {
    fn new(p: &Params) -> Ctx {
        // The exact command line cnp would run for a job with default options.
        let mut config = Config::default();
        config.executor.claude_cli_path = format!("'{}'", p.fake.display());
        let runner = ClaudeRunner::new(cnp::service::executor_settings(&config));
        let spec = runner.process_spec(&RunRequest {
            execution_id: String::new(),
            prompt: "Benchmark prompt: reply with one short sentence.".into(),
            options: Default::default(),
            limits: None,
            timeout: Duration::from_secs(900),
            cancel: Default::default(),
            plugin: None,
        });
        Ctx {
            program: spec.program,
            args: spec.args,
            env: spec.env,
            env_remove: spec.env_remove,
            prompt: spec.stdin,
            seq: AtomicU64::new(0),
            timings: Mutex::new(HashMap::new()),
            in_flight: InFlight::default(),
            completed: AtomicU64::new(0),
            spawn_errors: AtomicU64::new(0),
        }
    }
}

async fn run_cli(ctx: Arc<Ctx>, job: Arc<str>, released: DateTime<Utc>) {
    let id = format!("tcs-{}", ctx.seq.fetch_add(1, Ordering::Relaxed));
    ctx.in_flight.enter();
    let mut cmd = tokio::process::Command::new(&ctx.program);
    cmd.args(&ctx.args)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in &ctx.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &ctx.env {
        cmd.env(k, v);
    }
    cmd.env(EXECUTION_ID_ENV, &id).env(JOB_ID_ENV, &*job);
    let spawned = cmd.spawn();
    let spawned_at = Utc::now();
    ctx.timings.lock().unwrap().insert(
        id.clone(),
        RunTiming {
            released,
            spawned: spawned.is_ok().then_some(spawned_at),
        },
    );
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if ctx.spawn_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                progress(format!("tcs: spawn failed: {e}"));
            }
            ctx.in_flight.leave();
            return;
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all pipes requested")
    };
    let prompt = &ctx.prompt;
    let write = async move {
        let _ = stdin.write_all(prompt).await;
        let _ = stdin.shutdown().await;
    };
    let read_out = async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
    };
    let read_err = async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
    };
    tokio::join!(write, read_out, read_err);
    if child.wait().await.is_ok_and(|s| s.success()) {
        ctx.completed.fetch_add(1, Ordering::Relaxed);
    }
    ctx.in_flight.leave();
}

fn job(ctx: &Arc<Ctx>, name: String, expression: &str) -> anyhow::Result<Job> {
    let ctx = ctx.clone();
    let name: Arc<str> = name.into();
    Job::new_async_tz(expression, Utc, move |_uuid, _sched| {
        let released = Utc::now();
        let ctx = ctx.clone();
        let name = name.clone();
        Box::pin(async move { run_cli(ctx, name, released).await })
    })
    .with_context(|| format!("tokio-cron-scheduler rejected `{expression}`"))
}

async fn add_jobs(
    sched: &JobScheduler,
    ctx: &Arc<Ctx>,
    exprs: impl Iterator<Item = String>,
    total: usize,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    for (i, expr) in exprs.enumerate() {
        sched.add(job(ctx, format!("job-{i:06}"), &expr)?).await?;
        if total >= 10_000 && (i + 1) % (total / 5) == 0 {
            progress(format!("tcs: {} / {total} jobs added", i + 1));
        }
    }
    Ok(began.elapsed())
}

async fn wait_idle(ctx: &Ctx, limit: Duration) {
    let began = Instant::now();
    while ctx.in_flight.current() > 0 && began.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop(mut sched: JobScheduler) {
    if tokio::time::timeout(Duration::from_secs(10), sched.shutdown())
        .await
        .is_err()
    {
        progress("tcs: shutdown did not finish within 10 s");
    }
}

/// At 1 job/s: a run's slot is the second it was released in, from `first` to `last`.
fn second_within(
    first: DateTime<Utc>,
    last: DateTime<Utc>,
) -> impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>> {
    move |released| {
        let s = floor_second(released);
        (s >= first && s <= last).then_some(s)
    }
}

/// A burst: every run released within the hour after `due` belongs to it.
fn burst_at(due: DateTime<Utc>) -> impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>> {
    let window_end = due + chrono::Duration::seconds(3600);
    move |released| (released >= due && released < window_end).then_some(due)
}

/// `slot_of` gives a run's due instant from its release time (`None`: not in the window).
fn analyze(
    ctx: &Ctx,
    record: &Path,
    expected: u64,
    slot_of: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
    burst_due: Option<DateTime<Utc>>,
    r: &mut WorkerResult,
) -> anyhow::Result<()> {
    let invocations = read_invocations(record)?;
    let timings = ctx.timings.lock().unwrap().clone();
    let mut samples = Vec::new();
    for inv in &invocations {
        let Some(t) = timings.get(&inv.execution_id) else {
            continue;
        };
        let Some(due) = slot_of(t.released) else {
            continue;
        };
        let mut stages = vec![("released", t.released)];
        stages.extend(t.spawned.map(|sp| ("spawned", sp)));
        samples.push(Sample {
            job: inv.job_id.clone(),
            due,
            stages,
            child_started: inv.started,
        });
    }
    summarize(samples, expected, burst_due, r);
    r.completed_runs = Some(ctx.completed.load(Ordering::Relaxed));
    let errors = ctx.spawn_errors.load(Ordering::Relaxed);
    if errors > 0 {
        r.notes.push(format!("{errors} spawn error(s)"));
    }
    Ok(())
}

/// The floor: no scheduler, one loop spawning every run at the due instant (each run does the
/// same work as a baseline job's closure); at 1 job/s, one spawn at each second.
pub async fn run_floor(p: &Params, _dir: &Path, record: &Path) -> anyhow::Result<WorkerResult> {
    let mut r = WorkerResult {
        system: Some(System::Floor),
        scenario: Some(p.scenario),
        jobs: p.jobs,
        ..Default::default()
    };
    if p.scenario == Scenario::Idle {
        bail!("the bare spawn loop has no idle scenario (it holds no jobs)");
    }
    let ctx = Arc::new(Ctx::new(p));
    if p.scenario == Scenario::OnePerSecond {
        // One run at each second's instant, spawned by a loop that sleeps until it (as precisely
        // as cnp's timer does).
        r.jobs = 1;
        let (first, last) = one_per_second_window("floor", p.seconds);
        let name: Arc<str> = Arc::from("every-second");
        let mut slot = first;
        while slot <= last {
            sleep_until_wall_precise(slot).await;
            let released = Utc::now();
            tokio::spawn(run_cli(ctx.clone(), name.clone(), released));
            slot += chrono::Duration::seconds(1);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        wait_idle(&ctx, Duration::from_secs(30)).await;
        let slot_of = second_within(first, last);
        analyze(&ctx, record, p.seconds, slot_of, None, &mut r)?;
        r.rss_hwm_kib = Some(rss_kib().1);
        return Ok(r);
    }
    r.rss_baseline_kib = Some(rss_kib().0);
    let due = ceil_second(Utc::now() + chrono::Duration::seconds(2));
    let names: Vec<Arc<str>> = (0..p.jobs)
        .map(|i| Arc::from(format!("job-{i:06}")))
        .collect();
    r.rss_jobs_kib = Some(rss_kib().0);
    // Capped like cnp's max_concurrent_jobs: beyond the open-file limit spawns fail (EMFILE).
    r.max_concurrent = Some(p.max_concurrent);
    let permits = Arc::new(tokio::sync::Semaphore::new(p.max_concurrent));
    let spawner = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            sleep_until_wall(due).await;
            for name in names {
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("open semaphore");
                let ctx = ctx.clone();
                let released = Utc::now();
                tokio::spawn(async move {
                    run_cli(ctx, name, released).await;
                    drop(permit);
                });
            }
        })
    };
    measure_burst(
        p,
        record,
        due,
        "floor",
        &ctx.in_flight,
        wait_idle(&ctx, Duration::from_secs(600)),
        &mut r,
    )
    .await;
    spawner.await?;
    let slot_of = burst_at(due);
    analyze(&ctx, record, p.jobs as u64, slot_of, Some(due), &mut r)?;
    r.rss_hwm_kib = Some(rss_kib().1);
    Ok(r)
}

pub async fn run(p: &Params, _dir: &Path, record: &Path) -> anyhow::Result<WorkerResult> {
    let mut r = WorkerResult {
        system: Some(System::Tcs),
        scenario: Some(p.scenario),
        jobs: p.jobs,
        ..Default::default()
    };
    let ctx = Arc::new(Ctx::new(p));
    let sched = JobScheduler::new().await?;
    r.rss_baseline_kib = Some(rss_kib().0);
    match p.scenario {
        Scenario::OnePerSecond => {
            r.jobs = 1;
            r.distinct_expressions = Some(1);
            let began = Instant::now();
            sched
                .add(job(&ctx, "every-second".into(), "* * * * * *")?)
                .await?;
            sched.start().await?;
            r.setup_secs = Some(began.elapsed().as_secs_f64());
            let (first, last) = one_per_second_window("tcs", p.seconds);
            sleep_until_wall(last + chrono::Duration::milliseconds(1500)).await;
            stop(sched).await;
            wait_idle(&ctx, Duration::from_secs(30)).await;
            // The job's due instant is not handed to the closure: it is the second the closure
            // was called in (tokio-cron-scheduler is never a whole second late at 1 job/s).
            let slot_of = second_within(first, last);
            analyze(&ctx, record, p.seconds, slot_of, None, &mut r)?;
        }
        Scenario::Burst | Scenario::InFlight => {
            let due = ceil_second(Utc::now() + chrono::Duration::seconds(p.lead() as i64));
            let expr = daily_at(due);
            r.distinct_expressions = Some(1);
            progress(format!(
                "tcs: adding {} jobs on `{expr}` (due {})",
                p.jobs,
                due.format("%T")
            ));
            let took = add_jobs(
                &sched,
                &ctx,
                std::iter::repeat_n(expr.clone(), p.jobs),
                p.jobs,
            )
            .await?;
            sched.start().await?;
            r.setup_secs = Some(took.as_secs_f64());
            r.create_rate = Some(p.jobs as f64 / took.as_secs_f64());
            if Utc::now() + chrono::Duration::milliseconds(300) > due {
                bail!("adding the jobs took {took:?}, past the due instant: raise --lead-secs (was {})", p.lead());
            }
            r.rss_jobs_kib = Some(rss_kib().0);
            measure_burst(
                p,
                record,
                due,
                "tcs",
                &ctx.in_flight,
                wait_idle(&ctx, Duration::from_secs(600)),
                &mut r,
            )
            .await;
            stop(sched).await;
            // Every job fires once in the window, at `due`.
            let slot_of = burst_at(due);
            analyze(&ctx, record, p.jobs as u64, slot_of, Some(due), &mut r)?;
        }
        Scenario::Idle => {
            let now = Utc::now();
            r.distinct_expressions = Some(IDLE_DISTINCT.min(p.jobs));
            progress(format!("tcs: adding {} jobs", p.jobs));
            let took = add_jobs(
                &sched,
                &ctx,
                (0..p.jobs).map(|i| idle_expression(i, now)),
                p.jobs,
            )
            .await?;
            sched.start().await?;
            r.setup_secs = Some(took.as_secs_f64());
            r.create_rate = Some(p.jobs as f64 / took.as_secs_f64());
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
            if ctx.seq.load(Ordering::Relaxed) > 0 {
                r.notes
                    .push("some idle jobs fired during the window".into());
            }
            stop(sched).await;
        }
    }
    r.rss_hwm_kib = Some(rss_kib().1);
    Ok(r)
}
