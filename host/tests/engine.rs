//! Engine behaviour with an in-process runner and paused tokio time: schedules, misfires,
//! priorities, concurrency, overlap, cancel, statistics, shutdown. (The real CLI path is covered
//! by the executor and end-to-end tests.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cnp::clock::Clock;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::manifest::{JobSpec, ScheduleSpec};
use cnp::model::{ExecutionStatus, JobStatus, LogStream, MisfirePolicy, Outcome, Trigger};
use cnp::store::{ExecutionFilter, Store};

/// One run the test runner saw: (execution id, prompt, wall time at start).
type Call = (String, String, DateTime<Utc>);

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

/// A runner that "runs" for `duration` of (paused) tokio time and fails when the prompt says so.
struct TestRunner {
    clock: Clock,
    duration: Duration,
    calls: Calls,
}

impl Runner for TestRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let clock = self.clock.clone();
        let duration = self.duration;
        let calls = self.calls.clone();
        Box::pin(async move {
            let started = clock.now();
            calls.0.lock().unwrap().push((
                request.execution_id.clone(),
                request.prompt.clone(),
                started,
            ));
            observer.spawned(4242, started);
            observer.line(
                LogStream::Stdout,
                "{\"type\":\"system\",\"subtype\":\"init\"}",
            );
            let outcome = tokio::select! {
                _ = tokio::time::sleep(duration) => {
                    if request.prompt.contains("fail") {
                        Outcome::Error { subtype: None, api_status: None, message: "boom".into() }
                    } else {
                        Outcome::Success
                    }
                }
                _ = request.cancel.cancelled() => Outcome::Cancelled,
            };
            RunReport {
                outcome,
                exit_code: Some(0),
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(4242),
                result_text: Some("done".into()),
                session_id: Some("s-1".into()),
                cost_usd: Some(0.01),
                usage: None,
                resource_usage: None,
            }
        })
    }
}

struct Harness {
    engine: Engine,
    calls: Calls,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
}

async fn harness(settings: EngineSettings, duration: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness_in(
        dir.path(),
        settings,
        duration,
        Clock::tokio_from(start_time()),
    )
    .await;
    h._dir = Some(dir);
    h
}

async fn harness_in(
    dir: &std::path::Path,
    settings: EngineSettings,
    duration: Duration,
    clock: Clock,
) -> Harness {
    let store = common::open_store_inline(&dir.join("cnp.db"));
    let calls = Calls::default();
    let runner = Arc::new(TestRunner {
        clock: clock.clone(),
        duration,
        calls: calls.clone(),
    });
    let engine = Engine::start(store.clone(), runner, settings, clock, EventBus::default())
        .await
        .unwrap();
    Harness {
        engine,
        calls,
        store,
        _dir: None,
    }
}

fn spec(name: &str, schedule: ScheduleSpec) -> JobSpec {
    serde_json::from_value::<JobSpec>(
        serde_json::json!({ "name": name, "prompt": format!("prompt of {name}") }),
    )
    .map(|mut s| {
        s.schedule = schedule;
        s
    })
    .unwrap()
}

fn cron(expr: &str, tz: Option<&str>) -> ScheduleSpec {
    ScheduleSpec::Cron {
        expression: expr.into(),
        timezone: tz.map(Into::into),
        misfire: None,
    }
}

fn every(secs: u64, misfire: Option<MisfirePolicy>) -> ScheduleSpec {
    ScheduleSpec::Interval {
        every: None,
        every_seconds: Some(secs),
        start_at: None,
        misfire,
    }
}

async fn executions(store: &Store, job_id: &str) -> Vec<cnp::model::JobExecution> {
    let mut v = store
        .list_executions(ExecutionFilter {
            job_id: Some(job_id.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    v.reverse(); // oldest first
    v
}

/// Advances paused time in small steps so spawned tasks (and the DB writer thread) keep up.
async fn advance(d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while left > Duration::ZERO {
        let s = left.min(step);
        tokio::time::advance(s).await;
        left -= s;
        // let the store's writer thread finish what it was given
        tokio::task::yield_now().await;
    }
}

/// Waits until `f` holds, letting tasks and the DB writer run and moving paused time forward in
/// small steps (so runs in progress can finish).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(start_paused = true)]
async fn daily_cron_job_is_stored_and_fires_at_nine_in_its_zone() {
    let h = harness(EngineSettings::default(), Duration::from_secs(5)).await;
    let job = h
        .engine
        .create_job(
            spec("daily report", cron("0 9 * * *", Some("Asia/Taipei"))),
            None,
        )
        .await
        .unwrap();
    // 09:00 in Taipei (+08:00) on 2026-11-24 is 01:00 UTC.
    let nine = Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap();
    assert_eq!(job.next_run_time, Some(nine));
    assert_eq!(job.status, JobStatus::Active);
    assert_eq!(job.cron_expression.as_deref(), Some("0 9 * * *"));
    let stored = h.store.get_job(job.id.clone()).await.unwrap().unwrap();
    assert_eq!(stored.next_run_time, Some(nine));

    advance(Duration::from_secs(59 * 60)).await;
    assert!(
        h.calls.0.lock().unwrap().is_empty(),
        "nothing runs before 09:00"
    );
    advance(Duration::from_secs(61)).await;
    let store = h.store.clone();
    let id = job.id.clone();
    eventually("the 09:00 run is recorded as completed", || {
        let store = store.clone();
        let id = id.clone();
        async move {
            let e = executions(&store, &id).await;
            e.len() == 1 && e[0].status == ExecutionStatus::Completed
        }
    })
    .await;
    let e = executions(&h.store, &job.id).await;
    assert_eq!(e[0].scheduled_for, Some(nine));
    assert_eq!(e[0].trigger, Trigger::Schedule);
    assert_eq!(e[0].prompt.as_deref(), Some("prompt of daily report"));
    let started = h.calls.0.lock().unwrap()[0].2;
    // (paused time moves on while the store works, so only a loose bound here; the benchmark
    // measures real start latency)
    assert!(
        started >= nine && started - nine < chrono::Duration::seconds(5),
        "started at {started}"
    );
    let job = h.store.get_job(job.id.clone()).await.unwrap().unwrap();
    assert_eq!(job.execution_count, 1);
    assert_eq!(job.success_rate, 1.0);
    // next day, same wall time
    assert_eq!(job.next_run_time, Some(nine + chrono::Duration::days(1)));
}

#[tokio::test(start_paused = true)]
async fn priority_order_with_one_slot() {
    let settings = EngineSettings {
        max_concurrent_jobs: 1,
        ..Default::default()
    };
    let h = harness(settings, Duration::from_secs(1)).await;
    let at = start_time() + chrono::Duration::seconds(10);
    for (name, prio) in [("low", 1u8), ("high", 10), ("mid", 5), ("high2", 10)] {
        let mut s = spec(name, ScheduleSpec::Once { at });
        s.priority = prio;
        h.engine.create_job(s, None).await.unwrap();
    }
    advance(Duration::from_secs(11)).await;
    let calls = h.calls.clone();
    eventually("all four ran", || {
        let calls = calls.clone();
        async move { calls.0.lock().unwrap().len() == 4 }
    })
    .await;
    let order: Vec<String> = h
        .calls
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.1.replace("prompt of ", ""))
        .collect();
    // most urgent first; FIFO among equals (creation order decides the fire order)
    assert_eq!(
        order[..2].iter().filter(|n| n.starts_with("high")).count(),
        2,
        "{order:?}"
    );
    assert_eq!(&order[2..], ["mid", "low"], "{order:?}");
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_records_the_skipped_slot() {
    let h = harness(EngineSettings::default(), Duration::from_secs(25)).await;
    let mut s = spec("slow", every(10, None));
    s.execution.overlap = cnp::model::OverlapPolicy::Skip;
    let job = h.engine.create_job(s, None).await.unwrap();
    for _ in 0..3 {
        advance(Duration::from_secs(10)).await;
        std::thread::sleep(Duration::from_millis(30));
        tokio::task::yield_now().await;
    }
    let store = h.store.clone();
    let id = job.id.clone();
    eventually("a skipped run is recorded", || {
        let store = store.clone();
        let id = id.clone();
        async move {
            executions(&store, &id)
                .await
                .iter()
                .any(|e| e.status == ExecutionStatus::Skipped)
        }
    })
    .await;
    let e = executions(&h.store, &job.id).await;
    let skipped: Vec<_> = e
        .iter()
        .filter(|e| e.status == ExecutionStatus::Skipped)
        .collect();
    assert!(
        skipped[0].error.as_deref().unwrap().contains("overlap"),
        "{:?}",
        skipped[0].error
    );
    // never two running at once
    assert!(
        e.iter()
            .filter(|e| e.status == ExecutionStatus::Running)
            .count()
            <= 1
    );
}

#[tokio::test(start_paused = true)]
async fn max_parallel_queues_runs_of_a_busy_job() {
    let h = harness(EngineSettings::default(), Duration::from_secs(15)).await;
    let job = h
        .engine
        .create_job(spec("queued", every(10, None)), None)
        .await
        .unwrap();
    advance(Duration::from_secs(10)).await;
    std::thread::sleep(Duration::from_millis(30));
    advance(Duration::from_secs(10)).await; // second slot while the first runs
    let store = h.store.clone();
    let id = job.id.clone();
    eventually("two runs recorded", || {
        let store = store.clone();
        let id = id.clone();
        async move { executions(&store, &id).await.len() >= 2 }
    })
    .await;
    let e = executions(&h.store, &job.id).await;
    assert_eq!(
        e[1].status,
        ExecutionStatus::Queued,
        "the second waits for the first: {e:?}"
    );
    advance(Duration::from_secs(10)).await;
    eventually("the queued run started after the first finished", || {
        let calls = h.calls.clone();
        async move { calls.0.lock().unwrap().len() >= 2 }
    })
    .await;
    let calls = h.calls.0.lock().unwrap().clone();
    assert!(
        calls[1].2 - calls[0].2 >= chrono::Duration::seconds(15),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pause_stops_fires_and_resume_does_not_catch_up() {
    let h = harness(EngineSettings::default(), Duration::from_millis(10)).await;
    let job = h
        .engine
        .create_job(spec("p", every(60, None)), None)
        .await
        .unwrap();
    h.engine.pause_job(&job.id).await.unwrap();
    advance(Duration::from_secs(200)).await;
    std::thread::sleep(Duration::from_millis(50));
    let e = executions(&h.store, &job.id).await;
    assert!(e.is_empty(), "{e:#?}");
    let resumed = h.engine.resume_job(&job.name).await.unwrap();
    assert_eq!(resumed.status, JobStatus::Active);
    advance(Duration::from_secs(61)).await;
    let store = h.store.clone();
    let id = job.id.clone();
    eventually("one run after resume", || {
        let store = store.clone();
        let id = id.clone();
        async move { executions(&store, &id).await.len() == 1 }
    })
    .await;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        executions(&h.store, &job.id).await.len(),
        1,
        "paused slots are not caught up"
    );
}

#[tokio::test(start_paused = true)]
async fn run_now_and_delayed_runs() {
    let h = harness(EngineSettings::default(), Duration::from_millis(10)).await;
    let job = h
        .engine
        .create_job(spec("manual", ScheduleSpec::Manual), None)
        .await
        .unwrap();
    assert_eq!(job.next_run_time, None);
    let now_id = h.engine.run_now(&job.id).await.unwrap();
    let later_id = h
        .engine
        .run_after(&job.id, Duration::from_secs(300))
        .await
        .unwrap();
    let store = h.store.clone();
    let nid = now_id.clone();
    eventually("run-now completes", || {
        let store = store.clone();
        let nid = nid.clone();
        async move {
            store
                .get_execution(nid)
                .await
                .unwrap()
                .is_some_and(|e| e.status == ExecutionStatus::Completed)
        }
    })
    .await;
    let later = h
        .store
        .get_execution(later_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later.status, ExecutionStatus::Queued);
    assert_eq!(later.trigger, Trigger::Delayed);
    advance(Duration::from_secs(301)).await;
    let lid = later_id.clone();
    eventually("the delayed run completes", || {
        let store = store.clone();
        let lid = lid.clone();
        async move {
            store
                .get_execution(lid)
                .await
                .unwrap()
                .is_some_and(|e| e.status == ExecutionStatus::Completed)
        }
    })
    .await;
    let calls = h.calls.0.lock().unwrap().clone();
    assert!(calls[1].2 >= start_time() + chrono::Duration::seconds(300));
}

#[tokio::test(start_paused = true)]
async fn cancel_a_running_and_a_queued_run() {
    let settings = EngineSettings {
        max_concurrent_jobs: 1,
        ..Default::default()
    };
    let h = harness(settings, Duration::from_secs(3600)).await;
    let job = h
        .engine
        .create_job(spec("long", ScheduleSpec::Manual), None)
        .await
        .unwrap();
    let running = h.engine.run_now(&job.id).await.unwrap();
    let queued = h.engine.run_now(&job.id).await.unwrap();
    eventually("first run starts", || {
        let calls = h.calls.clone();
        async move { calls.0.lock().unwrap().len() == 1 }
    })
    .await;
    assert!(h.engine.cancel_execution(&queued).await.unwrap());
    assert!(h.engine.cancel_execution(&running).await.unwrap());
    let store = h.store.clone();
    for id in [running.clone(), queued.clone()] {
        let store = store.clone();
        eventually("cancelled", || {
            let store = store.clone();
            let id = id.clone();
            async move {
                store
                    .get_execution(id)
                    .await
                    .unwrap()
                    .is_some_and(|e| e.status == ExecutionStatus::Cancelled)
            }
        })
        .await;
    }
    assert_eq!(
        h.calls.0.lock().unwrap().len(),
        1,
        "the queued run never started"
    );
    assert!(
        !h.engine.cancel_execution(&running).await.unwrap(),
        "already finished"
    );
}

#[tokio::test(start_paused = true)]
async fn statistics_stay_exact_under_concurrency() {
    let settings = EngineSettings {
        max_concurrent_jobs: 50,
        ..Default::default()
    };
    let h = harness(settings, Duration::from_secs(1)).await;
    let ok = h
        .engine
        .create_job(spec("ok", ScheduleSpec::Manual), None)
        .await
        .unwrap();
    let mut bad = spec("bad", ScheduleSpec::Manual);
    bad.prompt = Some("please fail".into());
    let bad = h.engine.create_job(bad, None).await.unwrap();
    for j in [&ok, &bad] {
        let mut s = cnp::service::spec_of(j);
        s.execution.max_parallel = Some(50);
        h.engine.update_job(&j.id, s, None).await.unwrap();
    }
    for _ in 0..30 {
        h.engine.run_now(&ok.id).await.unwrap();
        h.engine.run_now(&bad.id).await.unwrap();
    }
    advance(Duration::from_secs(2)).await;
    let store = h.store.clone();
    let (okid, badid) = (ok.id.clone(), bad.id.clone());
    eventually("60 runs finished", || {
        let store = store.clone();
        let (okid, badid) = (okid.clone(), badid.clone());
        async move {
            let a = store.get_job(okid).await.unwrap().unwrap();
            let b = store.get_job(badid).await.unwrap().unwrap();
            a.execution_count == 30 && b.execution_count == 30
        }
    })
    .await;
    let a = h.store.get_job(ok.id.clone()).await.unwrap().unwrap();
    let b = h.store.get_job(bad.id.clone()).await.unwrap().unwrap();
    assert_eq!((a.failure_count, a.success_rate), (0, 1.0));
    assert_eq!((b.failure_count, b.success_rate), (30, 0.0));
    assert!(
        (a.avg_execution_time_ms - 1000.0).abs() < 50.0,
        "{}",
        a.avg_execution_time_ms
    );
}

#[tokio::test(start_paused = true)]
async fn restart_catches_up_per_misfire_policy_without_doubling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let clock = Clock::tokio_from(start_time());
    let h = harness_in(
        &path,
        EngineSettings::default(),
        Duration::from_millis(10),
        clock,
    )
    .await;
    let latest = h
        .engine
        .create_job(
            spec("latest", every(60, Some(MisfirePolicy::RunLatest))),
            None,
        )
        .await
        .unwrap();
    let skip = h
        .engine
        .create_job(spec("skip", every(60, Some(MisfirePolicy::Skip))), None)
        .await
        .unwrap();
    let upto = h
        .engine
        .create_job(spec("upto", every(60, None)), None)
        .await
        .unwrap(); // default: up to 3
    advance(Duration::from_secs(61)).await;
    let store = h.store.clone();
    eventually("the first slot ran for all three", || {
        let store = store.clone();
        async move {
            store
                .execution_counts()
                .await
                .unwrap()
                .iter()
                .any(|(s, n)| *s == ExecutionStatus::Completed && *n == 3)
        }
    })
    .await;
    h.engine.shutdown(Duration::from_secs(5)).await;
    h.store.close();
    drop(h);

    // Down for ten minutes: slots at +2m … +11m (10 of them) were missed.
    let restart_at = start_time() + chrono::Duration::seconds(11 * 60 + 30);
    let store = common::open_store_inline(&path.join("cnp.db"));
    let calls = Calls::default();
    let clock = Clock::tokio_from(restart_at);
    let runner = Arc::new(TestRunner {
        clock: clock.clone(),
        duration: Duration::from_millis(10),
        calls: calls.clone(),
    });
    let engine = Engine::start(
        store.clone(),
        runner,
        EngineSettings::default(),
        clock,
        EventBus::default(),
    )
    .await
    .unwrap();
    advance(Duration::from_secs(1)).await;
    let s2 = store.clone();
    let (lid, sid, uid) = (latest.id.clone(), skip.id.clone(), upto.id.clone());
    eventually("catch-up decided for all three jobs", || {
        let s2 = s2.clone();
        let (lid, sid, uid) = (lid.clone(), sid.clone(), uid.clone());
        async move {
            executions(&s2, &lid).await.len() == 3
                && executions(&s2, &sid).await.len() == 2
                && executions(&s2, &uid)
                    .await
                    .iter()
                    .filter(|e| e.status == ExecutionStatus::Completed)
                    .count()
                    == 4
        }
    })
    .await;
    let minute = |m: i64| start_time() + chrono::Duration::minutes(m);

    let l = executions(&store, &latest.id).await;
    assert_eq!(l[1].status, ExecutionStatus::Skipped);
    assert!(
        l[1].error.as_deref().unwrap().contains("9 missed slot(s)"),
        "{:?}",
        l[1].error
    );
    assert_eq!(l[2].scheduled_for, Some(minute(11)));
    // 30 s late is within misfire_grace (60 s): a regular run
    assert_eq!(l[2].trigger, Trigger::Schedule);

    let s = executions(&store, &skip.id).await;
    assert_eq!(s[1].status, ExecutionStatus::Skipped);
    assert!(
        s[1].error.as_deref().unwrap().contains("10 missed slot(s)"),
        "{:?}",
        s[1].error
    );

    let u = executions(&store, &upto.id).await;
    let ran: Vec<_> = u
        .iter()
        .filter(|e| e.status == ExecutionStatus::Completed)
        .map(|e| e.scheduled_for.unwrap())
        .collect();
    assert_eq!(ran, [minute(1), minute(9), minute(10), minute(11)]);
    let triggers: Vec<_> = u
        .iter()
        .filter(|e| e.status == ExecutionStatus::Completed)
        .map(|e| e.trigger)
        .collect();
    assert_eq!(
        triggers,
        [
            Trigger::Schedule,
            Trigger::Catchup,
            Trigger::Catchup,
            Trigger::Schedule
        ]
    );
    assert!(u.iter().any(|e| e.status == ExecutionStatus::Skipped
        && e.error.as_deref().unwrap().contains("7 missed slot(s)")));

    // No slot recorded twice, and the next slot is regular again.
    engine.shutdown(Duration::from_secs(1)).await;
    let dup: i64 = store
        .read_blocking(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM (SELECT job_id, slot FROM executions WHERE slot IS NOT NULL
                 GROUP BY job_id, slot, retry_count HAVING COUNT(*) > 1) AS dup",
                (),
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(dup, 0);
    let j = store.get_job(upto.id.clone()).await.unwrap().unwrap();
    assert_eq!(j.next_run_time, Some(minute(12)));
}

#[tokio::test(start_paused = true)]
async fn invalid_definitions_name_the_field() {
    let h = harness(EngineSettings::default(), Duration::from_millis(10)).await;
    let e = h
        .engine
        .create_job(spec("x", cron("0 25 * * *", None)), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("schedule.expression"), "{e}");
    let e = h
        .engine
        .create_job(spec("x", cron("0 9 * * *", Some("Nowhere/Land"))), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("schedule.timezone"), "{e}");
    let mut s = spec("x", ScheduleSpec::Manual);
    s.prompt = None;
    s.prompt_id = Some("missing".into());
    let e = h.engine.create_job(s, None).await.unwrap_err().to_string();
    assert!(e.contains("prompt_id") && e.contains("missing"), "{e}");
    h.engine
        .create_job(spec("dup", ScheduleSpec::Manual), None)
        .await
        .unwrap();
    let e = h
        .engine
        .create_job(spec("dup", ScheduleSpec::Manual), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
}

/// Starts one run that takes `run_for`, shuts down with `grace`, returns the run's record.
async fn shutdown_during_a_run(run_for: Duration, grace: Duration) -> cnp::model::JobExecution {
    let h = harness(EngineSettings::default(), run_for).await;
    let job = h
        .engine
        .create_job(spec("running", ScheduleSpec::Manual), None)
        .await
        .unwrap();
    let id = h.engine.run_now(&job.id).await.unwrap();
    eventually("run starts", || {
        let calls = h.calls.clone();
        async move { calls.0.lock().unwrap().len() == 1 }
    })
    .await;
    h.engine.shutdown(grace).await;
    h.store.get_execution(id).await.unwrap().unwrap()
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_runs_within_the_grace() {
    let e = shutdown_during_a_run(Duration::from_secs(2), Duration::from_secs(10)).await;
    assert_eq!(e.status, ExecutionStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_runs_past_the_grace() {
    let e = shutdown_during_a_run(Duration::from_secs(3600), Duration::from_secs(5)).await;
    assert_eq!(e.status, ExecutionStatus::Interrupted, "{e:?}");
    assert!(e.error.unwrap().contains("shut down"));
}

#[tokio::test(start_paused = true)]
async fn definition_decides_status_but_a_runtime_pause_survives() {
    let h = harness(EngineSettings::default(), Duration::from_millis(10)).await;
    let mut s = spec("toggle", every(60, None));
    s.enabled = false;
    let job = h.engine.create_job(s.clone(), None).await.unwrap();
    assert_eq!(job.status, JobStatus::Disabled);
    s.enabled = true;
    let job = h.engine.update_job(&job.id, s.clone(), None).await.unwrap();
    assert_eq!(job.status, JobStatus::Active, "enabled: true re-enables");
    assert!(job.next_run_time.is_some());
    h.engine.pause_job(&job.id).await.unwrap();
    s.priority = 9;
    let job = h.engine.update_job(&job.id, s.clone(), None).await.unwrap();
    assert_eq!(
        job.status,
        JobStatus::Paused,
        "a pause made at run time survives an edit"
    );
    assert_eq!(job.next_run_time, None);
}

// ---------------------------------------------------------------------------------------------
// Slots recorded ahead of time (`RECORD_AHEAD` = 2 s before the slot).

/// Copies the database files as they are now: what a crash at this instant would leave.
fn crash_snapshot(from: &std::path::Path, to: &std::path::Path) {
    if common::on_postgres() {
        common::crash_copy(&from.join("cnp.db"), &to.join("cnp.db"));
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let src = from.join(format!("cnp.db{suffix}"));
        if src.exists() {
            std::fs::copy(&src, to.join(format!("cnp.db{suffix}"))).unwrap();
        }
    }
}

fn starts(calls: &Calls) -> Vec<DateTime<Utc>> {
    calls.0.lock().unwrap().iter().map(|c| c.2).collect()
}

#[tokio::test(start_paused = true)]
async fn a_slot_recorded_ahead_runs_once_at_its_slot_even_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness_in(
        dir.path(),
        EngineSettings::default(),
        Duration::from_millis(10),
        Clock::tokio_from(start_time()),
    )
    .await;
    let job = h
        .engine
        .create_job(spec("ahead", every(60, None)), None)
        .await
        .unwrap();
    let slot = start_time() + chrono::Duration::seconds(60);
    // 1.5 s before the slot: recorded (queued, for its slot), not started.
    advance(Duration::from_millis(58_500)).await;
    let e = executions(&h.store, &job.id).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].status, ExecutionStatus::Queued);
    assert_eq!(e[0].scheduled_for, Some(slot));
    assert!(e[0].queued_at < slot);
    assert!(starts(&h.calls).is_empty());
    let recorded_id = e[0].id.clone();

    // A crash now: a second process starts on what the disk holds, 1.5 s before the slot.
    let crashed = tempfile::tempdir().unwrap();
    crash_snapshot(dir.path(), crashed.path());
    h.engine.shutdown(Duration::from_secs(1)).await;
    let h2 = harness_in(
        crashed.path(),
        EngineSettings::default(),
        Duration::from_millis(10),
        Clock::tokio_from(slot - chrono::Duration::milliseconds(1500)),
    )
    .await;
    advance(Duration::from_millis(1400)).await;
    assert!(
        starts(&h2.calls).is_empty(),
        "not dispatched before its slot"
    );
    advance(Duration::from_millis(200)).await;
    let calls = h2.calls.clone();
    eventually("the recorded slot ran", || {
        let calls = calls.clone();
        async move { !starts(&calls).is_empty() }
    })
    .await;
    advance(Duration::from_secs(10)).await;
    std::thread::sleep(Duration::from_millis(50));
    let runs = h2.calls.0.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        runs[0].0, recorded_id,
        "the row recorded ahead is the one that runs"
    );
    assert!(
        runs[0].2 >= slot,
        "started at {} before its slot",
        runs[0].2
    );
    let e = executions(&h2.store, &job.id).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].status, ExecutionStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_slot_recorded_ahead_that_passed_while_down_goes_to_the_misfire_policy() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness_in(
        dir.path(),
        EngineSettings::default(),
        Duration::from_millis(10),
        Clock::tokio_from(start_time()),
    )
    .await;
    let job = h
        .engine
        .create_job(spec("down", every(60, Some(MisfirePolicy::Skip))), None)
        .await
        .unwrap();
    advance(Duration::from_millis(58_500)).await;
    assert_eq!(executions(&h.store, &job.id).await.len(), 1);
    let crashed = tempfile::tempdir().unwrap();
    crash_snapshot(dir.path(), crashed.path());
    h.engine.shutdown(Duration::from_secs(1)).await;
    // Back 5 minutes after the slot: the run recorded ahead is withdrawn, and with `skip` the
    // missed slots (that one included) are recorded as skipped, none run.
    let h2 = harness_in(
        crashed.path(),
        EngineSettings::default(),
        Duration::from_millis(10),
        Clock::tokio_from(start_time() + chrono::Duration::seconds(60 + 300)),
    )
    .await;
    advance(Duration::from_secs(1)).await;
    let store = h2.store.clone();
    let id = job.id.clone();
    eventually("the missed slots recorded as skipped", || {
        let (store, id) = (store.clone(), id.clone());
        async move {
            executions(&store, &id)
                .await
                .iter()
                .any(|e| e.status == ExecutionStatus::Skipped)
        }
    })
    .await;
    std::thread::sleep(Duration::from_millis(50));
    let e = executions(&h2.store, &job.id).await;
    assert!(starts(&h2.calls).is_empty(), "{e:#?}");
    assert!(
        e.iter().all(|e| e.status == ExecutionStatus::Skipped
            || (e.status == ExecutionStatus::Queued
                && e.scheduled_for.unwrap() > start_time() + chrono::Duration::seconds(360))),
        "{e:#?}"
    );
    assert!(
        e[0].error.as_deref().unwrap().contains("6 missed slot(s)"),
        "{e:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pause_delete_or_reschedule_before_a_slot_recorded_ahead_withdraws_it() {
    let h = harness(EngineSettings::default(), Duration::from_millis(10)).await;
    let paused = h
        .engine
        .create_job(spec("paused", every(60, None)), None)
        .await
        .unwrap();
    let deleted = h
        .engine
        .create_job(spec("deleted", every(60, None)), None)
        .await
        .unwrap();
    let moved = h
        .engine
        .create_job(spec("moved", every(60, None)), None)
        .await
        .unwrap();
    let edited = h
        .engine
        .create_job(spec("edited", every(60, None)), None)
        .await
        .unwrap();
    advance(Duration::from_millis(58_500)).await;
    for j in [&paused, &deleted, &moved, &edited] {
        assert_eq!(executions(&h.store, &j.id).await.len(), 1, "{}", j.name);
    }
    h.engine.pause_job(&paused.id).await.unwrap();
    h.engine.delete_job(&deleted.id).await.unwrap();
    // A new schedule: the old one's slot is withdrawn (the new one counts from now).
    h.engine
        .update_job(&moved.id, spec("moved", every(3600, None)), None)
        .await
        .unwrap();
    // Same schedule, new prompt: the recorded run stays and runs with the new prompt.
    let mut s = spec("edited", every(60, None));
    s.prompt = Some("the new prompt".into());
    h.engine.update_job(&edited.id, s, None).await.unwrap();
    assert!(executions(&h.store, &paused.id).await.is_empty());
    assert!(executions(&h.store, &moved.id).await.is_empty());

    advance(Duration::from_secs(5)).await;
    let calls = h.calls.clone();
    eventually("the edited job's slot ran", || {
        let calls = calls.clone();
        async move { calls.0.lock().unwrap().len() == 1 }
    })
    .await;
    advance(Duration::from_secs(5)).await;
    std::thread::sleep(Duration::from_millis(50));
    let runs = h.calls.0.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "only the edited job ran: {runs:?}");
    assert_eq!(runs[0].1, "the new prompt");
    assert!(executions(&h.store, &paused.id).await.is_empty());
    assert!(executions(&h.store, &moved.id).await.is_empty());

    // Resumed before the next slot: that one runs, once.
    h.engine.resume_job(&paused.id).await.unwrap();
    advance(Duration::from_secs(60)).await;
    let store = h.store.clone();
    let id = paused.id.clone();
    eventually("the resumed job's next slot ran", || {
        let (store, id) = (store.clone(), id.clone());
        async move {
            executions(&store, &id)
                .await
                .iter()
                .any(|e| e.status == ExecutionStatus::Completed)
        }
    })
    .await;
    let e = executions(&h.store, &paused.id).await;
    assert_eq!(
        e.iter()
            .filter(|e| e.scheduled_for == Some(start_time() + chrono::Duration::seconds(120)))
            .count(),
        1,
        "{e:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_withdraws_runs_recorded_ahead_and_the_restart_runs_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness_in(
        dir.path(),
        EngineSettings::default(),
        Duration::from_millis(10),
        Clock::tokio_from(start_time()),
    )
    .await;
    let job = h
        .engine
        .create_job(spec("stop", every(60, None)), None)
        .await
        .unwrap();
    advance(Duration::from_millis(58_500)).await;
    assert_eq!(executions(&h.store, &job.id).await.len(), 1);
    h.engine.shutdown(Duration::from_secs(1)).await;
    assert!(executions(&h.store, &job.id).await.is_empty());
    h.store.close();
    drop(h);
    // Restarted 1 s before the slot: it is recorded again and runs once, at its time.
    let slot = start_time() + chrono::Duration::seconds(60);
    let h2 = harness_in(
        dir.path(),
        EngineSettings::default(),
        Duration::from_millis(10),
        Clock::tokio_from(slot - chrono::Duration::seconds(1)),
    )
    .await;
    advance(Duration::from_millis(900)).await;
    assert!(starts(&h2.calls).is_empty());
    advance(Duration::from_secs(3)).await;
    let calls = h2.calls.clone();
    eventually("the slot ran", || {
        let calls = calls.clone();
        async move { !starts(&calls).is_empty() }
    })
    .await;
    let runs = starts(&h2.calls);
    assert_eq!(runs.len(), 1);
    assert!(runs[0] >= slot);
}

// ---------------------------------------------------------------------------------------------
// Runs recorded ahead of their slot start with the job and status as they are at the claim.

/// A job `name` run every minute, and the run of its first slot, recorded 1.5 s before it.
async fn recorded_ahead(
    h: &Harness,
    name: &str,
) -> (cnp::model::Job, Vec<cnp::model::JobExecution>) {
    let job = h
        .engine
        .create_job(spec(name, every(60, None)), None)
        .await
        .unwrap();
    advance(Duration::from_millis(58_500)).await;
    let e = executions(&h.store, &job.id).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    (job, e)
}

#[tokio::test(start_paused = true)]
async fn a_run_recorded_ahead_runs_the_job_as_changed_before_its_slot() {
    let h = harness(EngineSettings::default(), Duration::from_millis(10)).await;
    // Recorded (and its job read) 1.5 s before the slot.
    let (job, e) = recorded_ahead(&h, "edited").await;
    assert_eq!(e[0].status, ExecutionStatus::Queued);
    // Changed after that, schedule kept: the recorded run stays, with the new prompt.
    let mut changed = spec("edited", every(60, None));
    changed.prompt = Some("the prompt as changed".into());
    h.engine.update_job(&job.id, changed, None).await.unwrap();
    advance(Duration::from_secs(3)).await;
    let calls = h.calls.clone();
    eventually("the slot ran", || {
        let calls = calls.clone();
        async move { !calls.0.lock().unwrap().is_empty() }
    })
    .await;
    let runs = h.calls.0.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, e[0].id);
    assert_eq!(runs[0].1, "the prompt as changed");
    let store = h.store.clone();
    let id = e[0].id.clone();
    eventually("the run finished", || {
        let (store, id) = (store.clone(), id.clone());
        async move {
            store.get_execution(id).await.unwrap().unwrap().status == ExecutionStatus::Completed
        }
    })
    .await;
    let done = h.store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(done.prompt.as_deref(), Some("the prompt as changed"));
}

#[tokio::test(start_paused = true)]
async fn a_run_recorded_ahead_and_cancelled_before_its_claim_is_not_run_and_keeps_nothing() {
    let h = harness(EngineSettings::default(), Duration::from_secs(30)).await;
    let (_, e) = recorded_ahead(&h, "cancelled").await;
    // Cancelled in the store behind the engine's back: the engine still releases it at its
    // slot, and only the claim finds it gone.
    let now = h.engine.clock().now();
    assert!(h
        .store
        .set_pending_status(
            e[0].id.clone(),
            ExecutionStatus::Cancelled,
            Some("cancelled elsewhere".into()),
            now
        )
        .await
        .unwrap());
    advance(Duration::from_secs(3)).await;
    std::thread::sleep(Duration::from_millis(50));
    advance(Duration::from_secs(1)).await;
    assert_eq!(h.engine.status().running, 0, "nothing left running");
    let after = h
        .store
        .get_execution(e[0].id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, ExecutionStatus::Cancelled);
    assert_eq!(after.error.as_deref(), Some("cancelled elsewhere"));
    assert_eq!(
        after.pid, None,
        "no pid recorded for a run that was not claimed"
    );
    assert_eq!(after.started_at, None);
    let logs = h.store.get_logs(e[0].id.clone(), None, 100).await.unwrap();
    assert!(logs.is_empty(), "nothing of it logged: {logs:?}");
    assert!(
        h.calls.0.lock().unwrap().is_empty(),
        "its CLI never started"
    );
}

/// On the threaded store and the system clock: the `running` event comes before any log line of
/// the run, and its pid and lines are all stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_announced_before_its_output_and_its_pid_and_lines_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store(&dir.path().join("cnp.db"));
    let calls = Calls::default();
    let clock = Clock::System;
    let runner = Arc::new(TestRunner {
        clock: clock.clone(),
        duration: Duration::from_millis(20),
        calls: calls.clone(),
    });
    let bus = EventBus::default();
    let mut events = bus.subscribe();
    let engine = Engine::start(store.clone(), runner, EngineSettings::default(), clock, bus)
        .await
        .unwrap();
    let job = engine
        .create_job(spec("every-second", cron("* * * * * *", None)), None)
        .await
        .unwrap();
    // Three slots, each recorded ahead.
    let mut running = std::collections::HashSet::new();
    let mut logged = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while logged.len() < 3 {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("three runs within 20 s")
            .unwrap();
        match ev {
            cnp::events::Event::Execution {
                execution_id,
                status: ExecutionStatus::Running,
                ..
            } => {
                running.insert(execution_id);
            }
            cnp::events::Event::Log(l) => {
                assert!(
                    running.contains(&l.execution_id),
                    "a line of {} before its `running` event",
                    l.execution_id
                );
                logged.insert(l.execution_id);
            }
            _ => {}
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
    for id in &logged {
        let e = store.get_execution(id.clone()).await.unwrap().unwrap();
        assert_eq!(e.job_id, job.id);
        assert_eq!(e.status, ExecutionStatus::Completed, "{e:#?}");
        assert_eq!(e.pid, Some(4242));
        let logs = store.get_logs(id.clone(), None, 100).await.unwrap();
        assert!(!logs.is_empty(), "its line stored");
        assert_eq!(logs[0].seq, 0);
    }
}
