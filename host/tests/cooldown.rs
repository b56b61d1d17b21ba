//! Retries by error kind and the Claude usage-limit cooldown, on paused tokio time with a
//! scripted runner: the user's three scenarios (failure → retry → Failed; cooldown → all paused
//! → periodic check → resume; runs due during a cooldown deferred, then run in priority order),
//! the misfire policy after a long cooldown, and a cooldown surviving a restart.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cnp::clock::Clock;
use cnp::config::CooldownConfig;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::{Event, EventBus};
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::manifest::{JobSpec, ScheduleSpec};
use cnp::model::{ExecutionStatus, JobExecution, MisfirePolicy, Outcome, RetryConfig, Trigger};
use cnp::store::{ExecutionFilter, Store};

/// (execution id, prompt, start).
type Call = (String, String, DateTime<Utc>);

const PROBE: &str = "cooldown-probe-";

/// Answers each run with the next scripted outcome (then success); probes have their own
/// script. Every run takes `duration`.
struct Script {
    clock: Clock,
    duration: Duration,
    calls: Arc<Mutex<Vec<Call>>>,
    runs: Mutex<VecDeque<Outcome>>,
    probes: Mutex<VecDeque<Outcome>>,
}

impl Runner for Script {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let clock = self.clock.clone();
        let started = clock.now();
        let probe = request.execution_id.starts_with(PROBE);
        self.calls.lock().unwrap().push((
            request.execution_id.clone(),
            request.prompt.clone(),
            started,
        ));
        let outcome = if probe { &self.probes } else { &self.runs }
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Outcome::Success);
        let duration = self.duration;
        Box::pin(async move {
            observer.spawned(7, started);
            observer.line(cnp::model::LogStream::Stdout, "{\"type\":\"system\"}");
            tokio::time::sleep(duration).await;
            RunReport {
                outcome,
                exit_code: Some(0),
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(7),
                result_text: None,
                session_id: None,
                cost_usd: None,
                usage: None,
                resource_usage: None,
            }
        })
    }
}

struct H {
    engine: Engine,
    store: Store,
    calls: Arc<Mutex<Vec<Call>>>,
    events: tokio::sync::broadcast::Receiver<Event>,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn settings(max_concurrent_jobs: usize) -> EngineSettings {
    EngineSettings {
        max_concurrent_jobs,
        cooldown: CooldownConfig {
            margin: Duration::from_secs(30),
            probe_initial: Duration::from_secs(300),
            probe_max: Duration::from_secs(3600),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn start(
    dir: &std::path::Path,
    settings: EngineSettings,
    now: DateTime<Utc>,
    duration: Duration,
    runs: Vec<Outcome>,
    probes: Vec<Outcome>,
) -> H {
    let store = common::open_store_inline(&dir.join("cnp.db"));
    let clock = Clock::tokio_from(now);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let runner = Arc::new(Script {
        clock: clock.clone(),
        duration,
        calls: calls.clone(),
        runs: Mutex::new(runs.into()),
        probes: Mutex::new(probes.into()),
    });
    let bus = EventBus::default();
    let events = bus.subscribe();
    let engine = Engine::start(store.clone(), runner, settings, clock, bus)
        .await
        .unwrap();
    H {
        engine,
        store,
        calls,
        events,
    }
}

fn spec(name: &str, schedule: ScheduleSpec, priority: u8) -> JobSpec {
    let mut s: JobSpec = serde_json::from_value(
        serde_json::json!({ "name": name, "prompt": format!("prompt of {name}") }),
    )
    .unwrap();
    s.schedule = schedule;
    s.priority = priority;
    s
}

fn once(secs: i64) -> ScheduleSpec {
    ScheduleSpec::Once { at: at(secs) }
}

fn every(secs: u64, misfire: Option<MisfirePolicy>) -> ScheduleSpec {
    ScheduleSpec::Interval {
        every: None,
        every_seconds: Some(secs),
        start_at: None,
        misfire,
    }
}

fn limit(resets_at: Option<DateTime<Utc>>) -> Outcome {
    Outcome::UsageLimit {
        resets_at,
        message: match resets_at {
            Some(_) => "You've hit your 5-hour limit · resets 1am (UTC)".into(),
            None => "You're out of extra usage".into(),
        },
    }
}

fn failure() -> Outcome {
    Outcome::Error {
        subtype: Some("api_error".into()),
        api_status: Some(500),
        message: "API Error: 500 Internal server error.".into(),
    }
}

async fn history(store: &Store, job_id: &str) -> Vec<JobExecution> {
    let mut v = store
        .list_executions(ExecutionFilter {
            job_id: Some(job_id.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    v.reverse();
    v
}

/// Moves paused time on in 250 ms steps until `f` holds, for at most `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let step = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    loop {
        if f().await {
            return;
        }
        assert!(waited <= limit, "timed out waiting for: {what}");
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
        waited += step;
    }
}

/// Moves paused time on by `d` in 250 ms steps.
async fn pass(d: Duration) {
    until("time to pass", d + Duration::from_secs(1), {
        let end = tokio::time::Instant::now() + d;
        move || async move { tokio::time::Instant::now() >= end }
    })
    .await;
}

fn runs_of(calls: &Arc<Mutex<Vec<Call>>>) -> Vec<Call> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| !c.0.starts_with(PROBE))
        .cloned()
        .collect()
}

fn probes_of(calls: &Arc<Mutex<Vec<Call>>>) -> Vec<DateTime<Utc>> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0.starts_with(PROBE))
        .map(|c| c.2)
        .collect()
}

fn cooldown_events(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<bool> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Cooldown { active, .. } = ev {
            out.push(active);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: failure → retry per strategy, count recorded, Failed after the last attempt.

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_per_strategy_then_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(
        dir.path(),
        settings(10),
        t0(),
        Duration::from_secs(1),
        vec![failure(), failure(), failure(), failure()],
        vec![],
    )
    .await;
    let mut s = spec("flaky", ScheduleSpec::Manual, 5);
    s.retry = Some(RetryConfig {
        max_attempts: 3,
        strategy: cnp::model::RetryStrategy::ExponentialBackoff,
        initial_interval: Some(60),
        max_interval: None,
        multiplier: Some(2.0),
        delays: vec![],
        jitter: false,
        plugin: None,
        plugin_config: None,
        on_interrupt: None,
    });
    let job = h.engine.create_job(s, None).await.unwrap();
    let first = h.engine.run_now(&job.id).await.unwrap();
    let (store, id) = (h.store.clone(), job.id.clone());
    until("three finished attempts", Duration::from_secs(600), || {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let e = history(&store, &id).await;
            e.len() == 3 && e.iter().all(|e| e.status.is_terminal())
        }
    })
    .await;
    pass(Duration::from_secs(1200)).await;
    let e = history(&h.store, &job.id).await;
    assert_eq!(e.len(), 3, "no fourth attempt: {e:#?}");
    let counts: Vec<u32> = e.iter().map(|e| e.retry_count).collect();
    assert_eq!(counts, [0, 1, 2]);
    let triggers: Vec<Trigger> = e.iter().map(|e| e.trigger).collect();
    assert_eq!(triggers, [Trigger::Manual, Trigger::Retry, Trigger::Retry]);
    for x in &e {
        assert_eq!(x.status, ExecutionStatus::Failed, "{x:?}");
        assert_eq!(x.first_attempt_id.as_deref(), Some(first.as_str()), "{x:?}");
    }
    // Exponential backoff: 60 s after the first failure, then 120 s.
    let starts: Vec<DateTime<Utc>> = runs_of(&h.calls).iter().map(|c| c.2).collect();
    let gap = |i: usize| (starts[i + 1] - starts[i]).num_milliseconds();
    assert!((61_000..61_500).contains(&gap(0)), "{starts:?}");
    assert!((121_000..121_500).contains(&gap(1)), "{starts:?}");
    let j = h.store.get_job(job.id.clone()).await.unwrap().unwrap();
    assert_eq!((j.execution_count, j.failure_count), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_fail_fast_and_global_retry_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(10);
    st.default_retry = Some(RetryConfig {
        max_attempts: 2,
        strategy: cnp::model::RetryStrategy::Fixed,
        initial_interval: Some(10),
        max_interval: None,
        multiplier: None,
        delays: vec![],
        jitter: false,
        plugin: None,
        plugin_config: None,
        on_interrupt: None,
    });
    let h = start(
        dir.path(),
        st,
        t0(),
        Duration::from_secs(1),
        vec![
            Outcome::AuthError {
                message: "Not logged in · Please run /login".into(),
            },
            failure(),
            failure(),
        ],
        vec![],
    )
    .await;
    // No `retry` of its own: the [retry] defaults (2 attempts, fixed 10 s) apply.
    let job = h
        .engine
        .create_job(spec("plain", ScheduleSpec::Manual, 5), None)
        .await
        .unwrap();
    h.engine.run_now(&job.id).await.unwrap();
    let (store, id) = (h.store.clone(), job.id.clone());
    until("the auth failure recorded", Duration::from_secs(60), || {
        let (store, id) = (store.clone(), id.clone());
        async move {
            history(&store, &id)
                .await
                .first()
                .is_some_and(|e| e.status.is_terminal())
        }
    })
    .await;
    pass(Duration::from_secs(30)).await;
    let e = history(&h.store, &job.id).await;
    assert_eq!(e.len(), 1, "an auth error burns no attempts: {e:#?}");
    assert_eq!(e[0].status, ExecutionStatus::Failed);

    h.engine.run_now(&job.id).await.unwrap();
    until(
        "two attempts of the second run",
        Duration::from_secs(120),
        || {
            let (store, id) = (store.clone(), id.clone());
            async move {
                let e = history(&store, &id).await;
                e.len() == 3 && e.iter().all(|e| e.status.is_terminal())
            }
        },
    )
    .await;
    pass(Duration::from_secs(60)).await;
    let e = history(&h.store, &job.id).await;
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!(e[2].retry_count, 1);
    assert_eq!(e[2].first_attempt_id.as_deref(), Some(e[1].id.as_str()));
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: cooldown detected → all paused → periodic check → resume.

#[tokio::test(start_paused = true)]
async fn a_usage_limit_pauses_everything_probes_with_backoff_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(
        dir.path(),
        settings(4),
        t0(),
        Duration::from_secs(1),
        vec![limit(None)],
        vec![limit(None), Outcome::Success],
    )
    .await;
    let job = h
        .engine
        .create_job(spec("every10m", every(600, None), 5), None)
        .await
        .unwrap();
    let other = h
        .engine
        .create_job(spec("manual", ScheduleSpec::Manual, 5), None)
        .await
        .unwrap();
    // 10:00 the first slot runs and hits the limit (no reset named).
    let engine = h.engine.clone();
    until("the cooldown", Duration::from_secs(700), || {
        let engine = engine.clone();
        async move { engine.cooldown().is_some() }
    })
    .await;
    let c = h.engine.cooldown().unwrap();
    assert_eq!(c.until, None);
    assert_eq!(c.next_probe, Some(c.since + chrono::Duration::seconds(300)));
    assert_eq!(c.source_job.as_deref(), Some(job.id.as_str()));
    assert!(h.engine.status().cooldown_active);
    let e = history(&h.store, &job.id).await;
    assert_eq!(e[0].status, ExecutionStatus::Deferred, "{e:#?}");
    assert_eq!(e[0].retry_count, 0);
    // Persisted.
    let stored = h.store.get_state("cooldown").await.unwrap().unwrap();
    assert!(stored.contains("out of extra usage"), "{stored}");

    // A run asked for meanwhile waits too.
    h.engine.run_now(&other.id).await.unwrap();
    // First probe at +5 min (limited again), the next 10 min later (succeeds) — nothing else
    // runs before that, though the 20:00 slot came due.
    let calls = h.calls.clone();
    until("two probes", Duration::from_secs(1800), || {
        let calls = calls.clone();
        async move { probes_of(&calls).len() == 2 }
    })
    .await;
    let probes = probes_of(&h.calls);
    let since = c.since;
    assert_eq!(probes[0], since + chrono::Duration::seconds(300));
    // (10 min after the first probe ended; a probe takes 1 s here)
    assert_eq!(probes[1], probes[0] + chrono::Duration::seconds(601));
    let runs = runs_of(&h.calls);
    assert_eq!(
        runs.len(),
        1,
        "no run started during the cooldown: {runs:?}"
    );
    assert!(runs[0].2 < since);

    // The probe succeeded: the cooldown is over and the deferred runs ran.
    let (store, id, oid) = (h.store.clone(), job.id.clone(), other.id.clone());
    until(
        "the deferred runs completed",
        Duration::from_secs(60),
        || {
            let (store, id, oid) = (store.clone(), id.clone(), oid.clone());
            async move {
                let a = history(&store, &id).await;
                let b = history(&store, &oid).await;
                a.len() == 2
                    && a.iter().all(|e| e.status == ExecutionStatus::Completed)
                    && b.len() == 1
                    && b[0].status == ExecutionStatus::Completed
            }
        },
    )
    .await;
    assert!(h.engine.cooldown().is_none());
    assert!(h.store.get_state("cooldown").await.unwrap().is_none());
    let runs = runs_of(&h.calls);
    assert!(runs[1..].iter().all(|r| r.2 >= probes[1]), "{runs:?}");
    let e = history(&h.store, &job.id).await;
    assert_eq!(e[0].retry_count, 0, "a usage limit is not an attempt");
    let j = h.store.get_job(job.id.clone()).await.unwrap().unwrap();
    assert_eq!(
        (j.execution_count, j.failure_count),
        (2, 0),
        "the limited try is not counted"
    );
    assert_eq!(cooldown_events(&mut h.events), [true, false]);
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: runs due during a cooldown are deferred, then run in priority order.

#[tokio::test(start_paused = true)]
async fn runs_due_during_a_cooldown_run_after_it_in_priority_order_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let reset = at(3600);
    let h = start(
        dir.path(),
        settings(1),
        t0(),
        Duration::from_secs(10),
        vec![limit(Some(reset))],
        vec![],
    )
    .await;
    let first = h
        .engine
        .create_job(spec("first", ScheduleSpec::Manual, 5), None)
        .await
        .unwrap();
    h.engine.run_now(&first.id).await.unwrap();
    let engine = h.engine.clone();
    until("the cooldown", Duration::from_secs(60), || {
        let engine = engine.clone();
        async move { engine.cooldown().is_some() }
    })
    .await;
    let c = h.engine.cooldown().unwrap();
    assert_eq!(c.until, Some(reset + chrono::Duration::seconds(30)));
    assert_eq!(c.next_probe, None, "the reset is known: no probes");
    for (name, prio, due) in [
        ("low", 1u8, 600),
        ("high-late", 9, 1200),
        ("mid", 5, 300),
        ("high-early", 9, 900),
    ] {
        h.engine
            .create_job(spec(name, once(due), prio), None)
            .await
            .unwrap();
    }
    let manual = h
        .engine
        .create_job(spec("manual3", ScheduleSpec::Manual, 3), None)
        .await
        .unwrap();
    pass(Duration::from_secs(1500)).await;
    h.engine.run_now(&manual.id).await.unwrap();
    pass(Duration::from_secs(60)).await;
    // All due, none started; all deferred.
    assert_eq!(runs_of(&h.calls).len(), 1);
    let deferred = h
        .store
        .list_executions(ExecutionFilter {
            status: Some(ExecutionStatus::Deferred),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deferred.len(), 6, "{deferred:#?}");
    assert_eq!(h.engine.cooldown().unwrap().deferred, 6);

    let calls = h.calls.clone();
    until("all six ran", Duration::from_secs(3600), || {
        let calls = calls.clone();
        async move { runs_of(&calls).len() == 7 }
    })
    .await;
    let runs = runs_of(&h.calls);
    let order: Vec<String> = runs[1..]
        .iter()
        .map(|c| c.1.replace("prompt of ", ""))
        .collect();
    // Most urgent first; within a priority, the earlier due first.
    assert_eq!(
        order,
        ["high-early", "high-late", "first", "mid", "manual3", "low"]
    );
    assert!(runs[1].2 >= reset + chrono::Duration::seconds(30));
    // One at a time (max_concurrent_jobs = 1, each run takes 10 s).
    for w in runs[1..].windows(2) {
        assert!(w[1].2 - w[0].2 >= chrono::Duration::seconds(10), "{runs:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Misfire interplay and restarts.

#[tokio::test(start_paused = true)]
async fn slots_piled_up_by_a_cooldown_follow_the_misfire_policy() {
    let dir = tempfile::tempdir().unwrap();
    // Limit at the first slot (1:00), reset 10:50 → runs again at 11:20.
    let h = start(
        dir.path(),
        settings(4),
        t0(),
        Duration::from_secs(1),
        vec![limit(Some(at(650)))],
        vec![],
    )
    .await;
    let job = h
        .engine
        .create_job(
            spec("minutely", every(60, Some(MisfirePolicy::RunLatest)), 5),
            None,
        )
        .await
        .unwrap();
    let (store, id) = (h.store.clone(), job.id.clone());
    until(
        "the slots after the cooldown ran",
        Duration::from_secs(700),
        || {
            let (store, id) = (store.clone(), id.clone());
            async move {
                history(&store, &id)
                    .await
                    .iter()
                    .filter(|e| e.status == ExecutionStatus::Completed)
                    .count()
                    == 2
            }
        },
    )
    .await;
    let e: Vec<JobExecution> = history(&h.store, &job.id)
        .await
        .into_iter()
        .filter(|e| e.scheduled_for.unwrap() <= at(660))
        .collect();
    // 10 slots (1:00 … 10:00) came due more than the grace before the end: run_latest keeps
    // 10:00, the 9 others are one skipped execution; 11:00 was on time.
    let skipped: Vec<_> = e
        .iter()
        .filter(|e| e.status == ExecutionStatus::Skipped)
        .collect();
    assert_eq!(skipped.len(), 1, "{e:#?}");
    assert!(
        skipped[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("9 missed slot(s)"),
        "{:?}",
        skipped[0].error
    );
    let ran: Vec<DateTime<Utc>> = e
        .iter()
        .filter(|e| e.status == ExecutionStatus::Completed)
        .map(|e| e.scheduled_for.unwrap())
        .collect();
    assert_eq!(ran, [at(600), at(660)], "{e:#?}");
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_cooldown_survives_a_restart_and_can_be_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let reset = at(3600);
    let h = start(
        dir.path(),
        settings(4),
        t0(),
        Duration::from_secs(1),
        vec![limit(Some(reset))],
        vec![],
    )
    .await;
    let job = h
        .engine
        .create_job(spec("job", ScheduleSpec::Manual, 5), None)
        .await
        .unwrap();
    let id = h.engine.run_now(&job.id).await.unwrap();
    let engine = h.engine.clone();
    until("the cooldown", Duration::from_secs(60), || {
        let engine = engine.clone();
        async move { engine.cooldown().is_some() }
    })
    .await;
    let before = h.engine.cooldown().unwrap();
    h.engine.shutdown(Duration::from_secs(5)).await;
    h.store.close();
    drop(h);

    // Back 10 minutes later: still cooling down, the run still deferred.
    let h = start(
        dir.path(),
        settings(4),
        at(600),
        Duration::from_secs(1),
        vec![],
        vec![],
    )
    .await;
    let after = h.engine.cooldown().expect("restored");
    assert_eq!(after.until, before.until);
    assert_eq!(after.since, before.since);
    assert_eq!(after.deferred, 1);
    pass(Duration::from_secs(60)).await;
    assert!(runs_of(&h.calls).is_empty());
    let e = h.store.get_execution(id.clone()).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Deferred);

    // Cleared by hand: the run goes at once.
    let cleared = h.engine.clear_cooldown().await.unwrap();
    assert!(cleared.is_some());
    assert!(h.engine.clear_cooldown().await.unwrap().is_none());
    let store = h.store.clone();
    until("the run completed", Duration::from_secs(30), || {
        let (store, id) = (store.clone(), id.clone());
        async move {
            store
                .get_execution(id)
                .await
                .unwrap()
                .is_some_and(|e| e.status == ExecutionStatus::Completed)
        }
    })
    .await;
    assert!(runs_of(&h.calls)[0].2 < reset);
    assert!(h.store.get_state("cooldown").await.unwrap().is_none());
}
