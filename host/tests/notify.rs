//! Notifications through the engine: rate limits and their summary, webhooks against a real
//! loopback HTTP server (success, 5xx with retries, a server that never answers), a dead SMTP
//! server, template errors — and that none of it delays the scheduler.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cnp::clock::Clock;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::manifest::{JobSpec, ScheduleSpec};
use cnp::model::Outcome;
use cnp::notify::{Delivery, NotificationService, NotifySettings};
use cnp::store::{ExecutionFilter, Store};
use serde_json::{json, Value};

/// Runs for `duration` and fails when the prompt says "fail".
struct TestRunner {
    clock: Clock,
    duration: Duration,
}

impl Runner for TestRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let clock = self.clock.clone();
        let duration = self.duration;
        Box::pin(async move {
            let started = clock.now();
            observer.spawned(4242, started);
            tokio::time::sleep(duration).await;
            let outcome = if request.prompt.contains("fail") {
                Outcome::Error {
                    subtype: None,
                    api_status: None,
                    message: "the tool exploded".into(),
                }
            } else {
                Outcome::Success
            };
            RunReport {
                outcome,
                exit_code: Some(1),
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(4242),
                result_text: Some("partial output\nlast line of output".into()),
                session_id: None,
                cost_usd: None,
                usage: None,
                resource_usage: None,
            }
        })
    }
}

struct Harness {
    engine: Engine,
    store: Store,
    _dir: tempfile::TempDir,
}

/// An engine whose notification service has `config` (the `[notifications]` table as JSON).
async fn harness(config: Value, clock: Clock, inline: bool, templates: Option<&str>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = if inline {
        common::open_store_inline(&dir.path().join("cnp.db"))
    } else {
        common::open_store(&dir.path().join("cnp.db"))
    };
    let mut cfg: cnp::config::NotificationsConfig = serde_json::from_value(config).unwrap();
    cfg.template_directory = match templates {
        Some(t) => {
            let d = dir.path().join("templates");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("failed.txt.j2"), t).unwrap();
            d
        }
        None => dir.path().join("no-templates"),
    };
    let settings = NotifySettings::from_config(&cfg, None).unwrap();
    let notify = NotificationService::start(settings, store.clone(), clock.clone(), None);
    let runner = Arc::new(TestRunner {
        clock: clock.clone(),
        duration: Duration::from_millis(10),
    });
    let engine = Engine::start_with_notifications(
        store.clone(),
        runner,
        EngineSettings::default(),
        clock,
        EventBus::default(),
        None,
        Some(notify),
    )
    .await
    .unwrap();
    Harness {
        engine,
        store,
        _dir: dir,
    }
}

fn spec(name: &str, prompt: &str, schedule: ScheduleSpec, notifications: Option<Value>) -> JobSpec {
    let mut v = json!({ "name": name, "prompt": prompt });
    if let Some(n) = notifications {
        v["notifications"] = n;
    }
    let mut s: JobSpec = serde_json::from_value(v).unwrap();
    s.schedule = schedule;
    s
}

fn every(secs: u64) -> ScheduleSpec {
    ScheduleSpec::Interval {
        every: None,
        every_seconds: Some(secs),
        start_at: None,
        misfire: None,
    }
}

async fn all_deliveries(store: &Store) -> Vec<Delivery> {
    let mut d = store.recent_deliveries(1000).await.unwrap();
    d.reverse();
    d
}

/// Waits (real time) until `f` holds for the deliveries.
async fn wait_deliveries(
    store: &Store,
    what: &str,
    f: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = all_deliveries(store).await;
        if f(&d) {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {d:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
}

// ---------------------------------------------------------------------------------------------

/// Limit 3 per hour: five failures → three sent, two rate-limited; an hour later exactly one
/// summary says what was held back.
#[tokio::test(start_paused = true)]
async fn the_rate_limit_holds_back_and_then_sums_up() {
    let h = harness(
        json!({
            "rate_limit_per_hour": 3,
            "default_channels": ["ops"],
            "channels": { "ops": { "type": "log" } }
        }),
        Clock::tokio_from(start_time()),
        true,
        None,
    )
    .await;
    let job = h
        .engine
        .create_job(
            spec("flaky", "please fail", ScheduleSpec::Manual, None),
            None,
        )
        .await
        .unwrap();
    for _ in 0..5 {
        h.engine.run_now(&job.id).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let d = all_deliveries(&h.store).await;
    let status: Vec<(&str, &str)> = d
        .iter()
        .map(|d| (d.event.as_str(), d.status.as_str()))
        .collect();
    assert_eq!(
        status,
        vec![
            ("failed", "sent"),
            ("failed", "sent"),
            ("failed", "sent"),
            ("failed", "rate_limited"),
            ("failed", "rate_limited"),
        ],
        "{d:#?}"
    );
    assert!(d
        .iter()
        .all(|d| d.channel == "ops" && d.job_id.as_deref() == Some(job.id.as_str())));
    assert!(
        d.iter().all(|d| d.execution_id.is_some()),
        "linked to their runs"
    );
    assert!(
        d[3].detail.as_deref().unwrap().contains("rate limit"),
        "{:?}",
        d[3]
    );

    // Room again an hour after the first send: one summary, nothing else.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let d = all_deliveries(&h.store).await;
    let summaries: Vec<&Delivery> = d
        .iter()
        .filter(|d| d.event == "rate_limit_summary")
        .collect();
    assert_eq!(summaries.len(), 1, "{d:#?}");
    assert_eq!(summaries[0].status, "sent");
    assert_eq!(summaries[0].channel, "ops");
    assert_eq!(d.len(), 6, "{d:#?}");
    tokio::time::sleep(Duration::from_secs(7200)).await;
    assert_eq!(all_deliveries(&h.store).await.len(), 6, "one summary only");
}

/// The per-job flags and a job without channels using the defaults; `completed` events.
#[tokio::test(start_paused = true)]
async fn job_flags_pick_events_and_default_channels_apply() {
    let h = harness(
        json!({
            "default_channels": ["ops"],
            "channels": { "ops": { "type": "log" }, "other": { "type": "log" } }
        }),
        Clock::tokio_from(start_time()),
        true,
        None,
    )
    .await;
    // No notifications block: the config's defaults (failures only) to `ops`.
    let quiet = h
        .engine
        .create_job(spec("quiet", "works", ScheduleSpec::Manual, None), None)
        .await
        .unwrap();
    // Its own flags and channel.
    let chatty = h
        .engine
        .create_job(
            spec(
                "chatty",
                "works",
                ScheduleSpec::Manual,
                Some(
                    json!({ "on_start": true, "on_success": true, "on_completion": true,
                             "channels": [{ "channel": "other" }] }),
                ),
            ),
            None,
        )
        .await
        .unwrap();
    h.engine.run_now(&quiet.id).await.unwrap();
    let id = h.engine.run_now(&chatty.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = all_deliveries(&h.store).await;
    assert!(
        d.iter()
            .all(|d| d.job_id.as_deref() == Some(chatty.id.as_str())),
        "a success of `quiet` is not news: {d:#?}"
    );
    let mut events: Vec<&str> = d.iter().map(|d| d.event.as_str()).collect();
    events.sort();
    assert_eq!(events, vec!["completed", "started", "succeeded"], "{d:#?}");
    assert!(d.iter().all(|d| d.channel == "other" && d.status == "sent"));
    let per_exec = h.store.deliveries_of_execution(id).await.unwrap();
    assert_eq!(
        per_exec.len(),
        3,
        "all three belong to the run (started too)"
    );
}

/// A webhook that never answers and an SMTP port nobody listens on: runs of a job every second
/// still start on their slots, and the failures are recorded once the deliveries give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_servers_never_delay_the_scheduler() {
    // Accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for s in hang.incoming().flatten() {
            h2.lock().unwrap().push(s);
        }
    });
    // A port with nothing behind it.
    let dead_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = harness(
        json!({
            "channels": {
                "hook": { "type": "webhook", "url": format!("http://127.0.0.1:{hang_port}/hook"),
                          "timeout": "1s", "retries": 1 },
                "mail": { "type": "email", "smtp_host": "127.0.0.1", "smtp_port": dead_port,
                          "security": "plain", "to": ["ops@example.com"], "from": "cnp@example.com",
                          "timeout": "1s" }
            }
        }),
        Clock::System,
        false,
        None,
    )
    .await;
    let job = h
        .engine
        .create_job(
            spec(
                "ticker",
                "always fail",
                every(1),
                Some(json!({ "on_start": true, "channels": [{ "channel": "hook" }, { "channel": "mail" }] })),
            ),
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    h.engine.pause_job(&job.id).await.unwrap();
    let runs = h
        .store
        .list_executions(ExecutionFilter {
            job_id: Some(job.id.clone()),
            status: None,
            limit: Some(100),
            offset: 0,
        })
        .await
        .unwrap();
    let started: Vec<_> = runs.iter().filter(|e| e.started_at.is_some()).collect();
    assert!(started.len() >= 3, "runs kept coming: {runs:#?}");
    for e in &started {
        let late = e.started_at.unwrap() - e.scheduled_for.unwrap();
        assert!(
            late < chrono::Duration::milliseconds(300),
            "run {} started {late} after its slot while deliveries hang",
            e.id
        );
    }
    // The deliveries gave up and say why.
    let d = wait_deliveries(&h.store, "failed webhook and email deliveries", |d| {
        d.iter()
            .filter(|d| d.channel == "hook" && d.status == "failed")
            .count()
            >= 2
            && d.iter()
                .filter(|d| d.channel == "mail" && d.status == "failed")
                .count()
                >= 2
    })
    .await;
    let hook = d
        .iter()
        .find(|d| d.channel == "hook" && d.status == "failed")
        .unwrap();
    assert_eq!(hook.attempts, 2, "{hook:?}");
    assert!(
        hook.detail
            .as_deref()
            .unwrap()
            .contains("no answer within 1s"),
        "{hook:?}"
    );
    assert!(
        !hook.detail.as_deref().unwrap().contains("127.0.0.1"),
        "no URL in the detail: {hook:?}"
    );
    let mail = d
        .iter()
        .find(|d| d.channel == "mail" && d.status == "failed")
        .unwrap();
    assert!(mail.detail.as_deref().unwrap().contains("SMTP"), "{mail:?}");
    assert!(!held.lock().unwrap().is_empty(), "the webhook was tried");
}

/// A tiny HTTP server answering `status`; returns its port and the bodies it received.
fn http_server(status: u16) -> (u16, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let (b2, h2) = (bodies.clone(), hits.clone());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            h2.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break String::new();
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text[..i]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        break text[i + 4..i + 4 + len].to_owned();
                    }
                }
            };
            b2.lock().unwrap().push(body);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
            );
        }
    });
    (port, bodies, hits)
}

/// A 500 is retried (twice) and recorded failed; a 200 is recorded sent with the body the
/// format says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_on_5xx_and_record_the_outcome() {
    let (bad, _, bad_hits) = http_server(500);
    let (good, bodies, _) = http_server(200);
    let h = harness(
        json!({
            "channels": {
                "bad": { "type": "webhook", "url": format!("http://127.0.0.1:{bad}/x"), "retries": 2 },
                "slack": { "type": "webhook", "url": format!("http://127.0.0.1:{good}/s"), "format": "slack" },
                "raw": { "type": "webhook", "url": format!("http://127.0.0.1:{good}/j") }
            }
        }),
        Clock::System,
        false,
        None,
    )
    .await;
    let job = h
        .engine
        .create_job(
            spec(
                "nightly-report",
                "fail please",
                ScheduleSpec::Manual,
                Some(json!({ "channels": [{ "channel": "bad" }, { "channel": "slack" }, { "channel": "raw" }] })),
            ),
            None,
        )
        .await
        .unwrap();
    let exec = h.engine.run_now(&job.id).await.unwrap();
    let d = wait_deliveries(&h.store, "three outcomes", |d| d.len() >= 3).await;
    let by = |c: &str| d.iter().find(|d| d.channel == c).unwrap().clone();
    let bad_d = by("bad");
    assert_eq!(
        (bad_d.status.as_str(), bad_d.attempts),
        ("failed", 3),
        "{bad_d:?}"
    );
    assert!(
        bad_d.detail.as_deref().unwrap().contains("HTTP 500"),
        "{bad_d:?}"
    );
    assert_eq!(bad_hits.load(Ordering::SeqCst), 3);
    assert_eq!(by("slack").status, "sent");
    assert_eq!(by("slack").detail.as_deref(), Some("HTTP 200"));
    assert_eq!(by("raw").status, "sent");
    assert!(d
        .iter()
        .all(|d| d.execution_id.as_deref() == Some(exec.as_str())));
    let bodies = bodies.lock().unwrap().clone();
    let parsed: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let slack = parsed
        .iter()
        .find(|b| b.get("text").is_some() && b.get("event").is_none())
        .expect("slack body");
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.contains("nightly-report") && text.contains("the tool exploded"),
        "{text}"
    );
    let raw = parsed
        .iter()
        .find(|b| b.get("event").is_some())
        .expect("json body");
    assert_eq!(raw["event"], "failed");
    assert_eq!(raw["job"]["name"], "nightly-report");
    assert_eq!(raw["error"], "the tool exploded");
    assert_eq!(raw["attempt"], 1);
    assert_eq!(raw["execution_id"], exec.as_str());
}

/// A template that does not render: the delivery is recorded failed with the template's error,
/// and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_is_reported_not_sent() {
    let (port, bodies, hits) = http_server(200);
    let h = harness(
        json!({
            "channels": {
                "hook": { "type": "webhook", "url": format!("http://127.0.0.1:{port}/x"), "format": "slack" }
            },
            "default_channels": ["hook"]
        }),
        Clock::System,
        false,
        Some("{{ job.name | no_such_filter }}"),
    )
    .await;
    let job = h
        .engine
        .create_job(spec("templated", "fail", ScheduleSpec::Manual, None), None)
        .await
        .unwrap();
    h.engine.run_now(&job.id).await.unwrap();
    let d = wait_deliveries(&h.store, "the failed delivery", |d| !d.is_empty()).await;
    assert_eq!(d[0].status, "failed");
    let detail = d[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("failed.txt.j2") && detail.contains("no_such_filter"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "{:?}",
        bodies.lock().unwrap()
    );
}
