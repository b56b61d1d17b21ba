//! Spending caps through the engine, on an injected (paused tokio) clock: a job's daily cap holds
//! the run that would cross it (recorded deferred, `budget_exceeded` notified once), the hold
//! lifts when the window rolls or the cap is raised, the global cap holds every job, `hard_stop`
//! stops the runs going, and holds survive a restart without a second notification.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cnp::clock::Clock;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::model::{Budget, ExecutionStatus, JobExecution, Outcome};
use cnp::notify::{NotificationService, NotifySettings};
use cnp::store::Store;
use serde_json::json;

/// Each run takes `duration` and costs what the prompt says after `cost=` (no cost reported
/// without it).
struct CostRunner {
    clock: Clock,
    duration: Arc<Mutex<Duration>>,
}

impl Runner for CostRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let clock = self.clock.clone();
        let duration = *self.duration.lock().unwrap();
        Box::pin(async move {
            let started = clock.now();
            observer.spawned(7, started);
            let cost = request
                .prompt
                .split_once("cost=")
                .and_then(|(_, c)| c.split_whitespace().next()?.parse::<f64>().ok());
            let outcome = tokio::select! {
                _ = tokio::time::sleep(duration) => Outcome::Success,
                _ = request.cancel.cancelled() => Outcome::Cancelled,
            };
            RunReport {
                exit_code: Some(0),
                outcome,
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(7),
                result_text: Some("ok".into()),
                session_id: None,
                cost_usd: cost,
                usage: None,
                resource_usage: None,
            }
        })
    }
}

struct Harness {
    engine: Engine,
    store: Store,
    clock: Clock,
    duration: Arc<Mutex<Duration>>,
    dir: tempfile::TempDir,
}

async fn start_in(dir: tempfile::TempDir, clock: Clock, global: Budget) -> Harness {
    let store = common::open_store_inline(&dir.path().join("cnp.db"));
    // A log channel: deliveries are recorded in the store like any other.
    let cfg: cnp::config::NotificationsConfig = serde_json::from_value(json!({
        "default_channels": ["ops"],
        "channels": { "ops": { "type": "log" } },
        "template_directory": dir.path().join("no-templates"),
    }))
    .unwrap();
    let settings = NotifySettings::from_config(&cfg, None).unwrap();
    let notify = NotificationService::start(settings, store.clone(), clock.clone(), None);
    let duration = Arc::new(Mutex::new(Duration::from_secs(1)));
    let runner = Arc::new(CostRunner {
        clock: clock.clone(),
        duration: duration.clone(),
    });
    let settings = EngineSettings {
        default_retry: None,
        budget: global,
        ..EngineSettings::default()
    };
    let engine = Engine::start_with_notifications(
        store.clone(),
        runner,
        settings,
        clock.clone(),
        EventBus::default(),
        None,
        Some(notify),
    )
    .await
    .unwrap();
    Harness {
        engine,
        store,
        clock,
        duration,
        dir,
    }
}

async fn start(global: Budget) -> Harness {
    let clock = Clock::tokio_from(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap());
    start_in(tempfile::tempdir().unwrap(), clock, global).await
}

impl Harness {
    async fn job(&self, name: &str, cost: f64, budget: serde_json::Value) -> String {
        let mut v = json!({ "name": name, "prompt": format!("work cost={cost}") });
        if !budget.is_null() {
            v["budget"] = budget;
        }
        self.engine
            .create_job(serde_json::from_value(v).unwrap(), None)
            .await
            .unwrap()
            .id
    }

    async fn exec(&self, id: &str) -> JobExecution {
        self.store
            .get_execution(id.to_owned())
            .await
            .unwrap()
            .unwrap()
    }

    /// Advances the clock in small steps until `f` holds for the execution.
    async fn wait(&self, id: &str, what: &str, f: impl Fn(&JobExecution) -> bool) -> JobExecution {
        for _ in 0..400 {
            tokio::time::advance(Duration::from_millis(50)).await;
            tokio::task::yield_now().await;
            let e = self.exec(id).await;
            if f(&e) {
                return e;
            }
        }
        panic!("{what}: execution {id} is {:?}", self.exec(id).await);
    }

    async fn run(&self, job: &str) -> JobExecution {
        let id = self.engine.run_now(job).await.unwrap();
        self.wait(&id, "run to end", |e| e.status.is_terminal())
            .await
    }

    async fn budget_deliveries(&self) -> usize {
        // Deliveries go out in the background: give them a moment.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(10)).await;
            tokio::task::yield_now().await;
        }
        self.store
            .recent_deliveries(1000)
            .await
            .unwrap()
            .iter()
            .filter(|d| d.event == "budget_exceeded")
            .count()
    }
}

fn held(e: &JobExecution) -> bool {
    e.status == ExecutionStatus::Deferred
        && e.error
            .as_deref()
            .is_some_and(|m| m.starts_with("budget_held:"))
}

#[tokio::test(start_paused = true)]
async fn a_daily_cap_holds_the_third_run_until_the_window_rolls() {
    let h = start(Budget::default()).await;
    let job = h.job("spender", 0.4, json!({"daily_usd": 1.0})).await;
    let first = h.run(&job).await;
    assert_eq!(first.status, ExecutionStatus::Completed);
    assert_eq!(first.cost_usd, Some(0.4));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(h.run(&job).await.status, ExecutionStatus::Completed);
    let started = h.clock.now();

    // $0.80 spent + ~$0.40 expected > $1.00: the third run is held, not lost.
    let third = h.engine.run_now(&job).await.unwrap();
    let e = h.wait(&third, "third run held", held).await;
    let reason = e.error.unwrap();
    assert!(
        reason.contains("job spender's daily budget of $1.00 — $0.80 spent in the last 24 h, ~$0.40 expected for this run; held until"),
        "{reason}"
    );
    assert_eq!(h.budget_deliveries().await, 1, "budget_exceeded once");

    // More runs of the scope while held: held too, and no second notification.
    let fourth = h.engine.run_now(&job).await.unwrap();
    h.wait(&fourth, "fourth run held", held).await;
    assert_eq!(h.budget_deliveries().await, 1, "still once");
    let status = h.engine.budget_status().await;
    let s = &status.jobs[0];
    assert_eq!(s.job_name.as_deref(), Some("spender"));
    assert!(s.exceeded);
    assert_eq!(s.held_runs, 2);
    assert_eq!(s.windows[0].spent_usd, 0.8);
    let until = s.held_until.expect("the window rolls at a known instant");
    assert!(until > started + chrono::Duration::hours(23), "{until}");
    assert!(until <= started + chrono::Duration::hours(24) + chrono::Duration::minutes(2));

    // An hour before the roll: still held.
    let before = (until - h.clock.now() - chrono::Duration::hours(1))
        .to_std()
        .unwrap();
    tokio::time::advance(before).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(held(&h.exec(&third).await));
    // The first run's cost leaves the window: $0.40 + ~$0.40 ≤ $1.00 — the third runs; the
    // fourth would cross again and stays held.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let e = h
        .wait(&third, "third run after the roll", |e| {
            e.status.is_terminal()
        })
        .await;
    assert_eq!(e.status, ExecutionStatus::Completed);
    assert!(held(&h.exec(&fourth).await), "{:?}", h.exec(&fourth).await);
    // A new episode (the hold that lifted is over): notified again, once.
    assert_eq!(h.budget_deliveries().await, 2);
}

#[tokio::test(start_paused = true)]
async fn raising_a_cap_releases_held_runs_and_no_cost_counts_as_zero() {
    let h = start(Budget::default()).await;
    let job = h.job("pricey", 0.6, json!({"daily_usd": 1.0})).await;
    h.run(&job).await;
    let second = h.engine.run_now(&job).await.unwrap();
    h.wait(&second, "held", held).await;
    // The operator raises the cap (the manifest or API change of the job's budget).
    let mut spec = cnp::service::spec_of(&h.engine.job(&job).await.unwrap());
    spec.budget = Some(Budget {
        daily_usd: Some(5.0),
        ..Default::default()
    });
    h.engine.update_job(&job, spec, None).await.unwrap();
    let e = h
        .wait(&second, "released by the raised cap", |e| {
            e.status.is_terminal()
        })
        .await;
    assert_eq!(e.status, ExecutionStatus::Completed);

    // A job whose runs report no usable cost (here not a number): counted as $0 and flagged,
    // and the run is recorded like any other.
    let free = h.job("free", f64::NAN, json!({"daily_usd": 0.5})).await;
    for _ in 0..3 {
        assert_eq!(h.run(&free).await.status, ExecutionStatus::Completed);
    }
    let status = h.engine.budget_status().await;
    let s = status
        .jobs
        .iter()
        .find(|s| s.job_name.as_deref() == Some("free"))
        .unwrap();
    assert_eq!(s.windows[0].spent_usd, 0.0);
    assert_eq!(s.windows[0].uncosted_runs, 3);
    assert!(!s.exceeded);
}

#[tokio::test(start_paused = true)]
async fn the_global_cap_holds_every_job_and_an_override_lifts_it() {
    let h = start(Budget {
        daily_usd: Some(1.0),
        ..Default::default()
    })
    .await;
    let a = h.job("a", 0.7, serde_json::Value::Null).await;
    let b = h.job("b", 0.1, serde_json::Value::Null).await;
    h.run(&a).await;
    h.run(&b).await;
    // $0.80 spent: a (~$0.70) would cross; b (~$0.10) still fits.
    let a2 = h.engine.run_now(&a).await.unwrap();
    h.wait(&a2, "a held by the global cap", held).await;
    let reason = h.exec(&a2).await.error.unwrap();
    assert!(
        reason.contains("the global daily budget ([budget]) of $1.00"),
        "{reason}"
    );
    assert_eq!(h.run(&b).await.status, ExecutionStatus::Completed);
    assert_eq!(h.budget_deliveries().await, 1);
    // The operator raises the global cap: a runs.
    let status = h
        .engine
        .set_global_budget(Budget {
            daily_usd: Some(3.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status.global.source, "override");
    let e = h
        .wait(&a2, "released by the override", |e| e.status.is_terminal())
        .await;
    assert_eq!(e.status, ExecutionStatus::Completed);
    // A cap that is not a number ≥ 0 is refused, naming the field.
    let err = h
        .engine
        .set_global_budget(Budget {
            daily_usd: Some(-1.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("daily_usd"), "{err}");
}

/// Two runs of a job at once (nothing spent yet: both start); the quick one's $0.60 reaches the
/// $0.50 cap. With `hard_stop` the slow one is stopped, and says why; without, it finishes.
#[tokio::test(start_paused = true)]
async fn hard_stop_stops_the_runs_going_when_a_run_reaches_the_cap() {
    let h = start(Budget::default()).await;
    for (name, hard_stop) in [("burner", true), ("gentle", false)] {
        let job = h
            .job(name, 0.6, json!({"daily_usd": 0.5, "hard_stop": hard_stop}))
            .await;
        let mut spec = cnp::service::spec_of(&h.engine.job(&job).await.unwrap());
        spec.execution.max_parallel = Some(2);
        h.engine.update_job(&job, spec, None).await.unwrap();
        *h.duration.lock().unwrap() = Duration::from_secs(1);
        let quick = h.engine.run_now(&job).await.unwrap();
        h.wait(&quick, "quick started", |e| {
            e.status == ExecutionStatus::Running
        })
        .await;
        *h.duration.lock().unwrap() = Duration::from_secs(10);
        let slow = h.engine.run_now(&job).await.unwrap();
        h.wait(&slow, "slow started", |e| {
            e.status == ExecutionStatus::Running
        })
        .await;
        let q = h
            .wait(&quick, "quick ended", |e| e.status.is_terminal())
            .await;
        assert_eq!(q.status, ExecutionStatus::Completed);
        let e = h
            .wait(&slow, "slow ended", |e| e.status.is_terminal())
            .await;
        if hard_stop {
            assert_eq!(e.status, ExecutionStatus::Cancelled, "{e:?}");
            assert_eq!(
                e.error.as_deref(),
                Some(
                    "stopped: the job's daily budget of $0.50 was reached ($0.60 spent; hard_stop)"
                )
            );
        } else {
            assert_eq!(e.status, ExecutionStatus::Completed, "{e:?}");
            assert_eq!(e.cost_usd, Some(0.6));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hold_survives_a_restart_without_a_second_notification() {
    let h = start(Budget::default()).await;
    let job = h.job("spender", 0.5, json!({"daily_usd": 1.0})).await;
    h.run(&job).await;
    h.run(&job).await;
    let third = h.engine.run_now(&job).await.unwrap();
    h.wait(&third, "held", held).await;
    assert_eq!(h.budget_deliveries().await, 1);
    let Harness {
        engine,
        store,
        clock,
        dir,
        ..
    } = h;
    engine.shutdown(Duration::from_secs(1)).await;
    drop(engine);
    drop(store);
    // Started again: the held run is still held (the ledger comes from the store), and the
    // scope's notification is not sent again.
    let h = start_in(dir, clock, Budget::default()).await;
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(50)).await;
        tokio::task::yield_now().await;
    }
    let e = h.exec(&third).await;
    assert!(held(&e), "{e:?}");
    let status = h.engine.budget_status().await;
    assert!(status.jobs[0].exceeded);
    assert_eq!(status.jobs[0].windows[0].spent_usd, 1.0);
    assert_eq!(h.budget_deliveries().await, 1, "not notified again");
}

/// An interval job held for a day: its slots pile up as held runs, and when the hold lifts they
/// follow the misfire policy (the default runs up to 3 of them) — the rest are one `skipped`
/// execution that says a spending cap held them back.
#[tokio::test(start_paused = true)]
async fn slots_that_piled_up_while_held_follow_the_misfire_policy() {
    let h = start(Budget::default()).await;
    let job = h
        .engine
        .create_job(
            serde_json::from_value(json!({
                "name": "ticker", "prompt": "tick cost=0.6",
                "schedule": {"type": "interval", "every_seconds": 600},
                "budget": {"daily_usd": 1.0}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap()
        .id;
    let count = |status: ExecutionStatus| {
        let store = h.store.clone();
        let job = job.clone();
        async move {
            store
                .list_executions(cnp::store::ExecutionFilter {
                    job_id: Some(job),
                    limit: Some(10_000),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.status == status)
                .collect::<Vec<_>>()
        }
    };
    // Ten-minute steps through a day: the first slot runs ($0.60), the next ones are held.
    for _ in 0..140 {
        tokio::time::advance(Duration::from_secs(600)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    let held_runs = count(ExecutionStatus::Deferred).await;
    assert!(held_runs.len() > 100, "{} held", held_runs.len());
    assert!(held_runs.iter().all(held));
    assert_eq!(count(ExecutionStatus::Completed).await.len(), 1);
    // Past the roll (24 h after the first run's minute): its cost has left the window.
    for _ in 0..12 {
        tokio::time::advance(Duration::from_secs(600)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    let skipped = count(ExecutionStatus::Skipped).await;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let reason = skipped[0].error.clone().unwrap();
    assert!(reason.contains("missed slot(s)"), "{reason}");
    assert!(
        reason.contains("a spending cap (budget) held them back"),
        "{reason}"
    );
    assert_eq!(
        count(ExecutionStatus::Completed).await.len(),
        2,
        "one more ran"
    );
    let waiting =
        count(ExecutionStatus::Deferred).await.len() + count(ExecutionStatus::Queued).await.len();
    assert!(
        waiting <= 3 + 6,
        "{waiting} left waiting: the misfire policy kept at most 3"
    );
}
