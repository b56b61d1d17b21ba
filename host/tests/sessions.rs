//! `session: continue_job` through the engine, on an injected (paused tokio) clock: a run
//! resumes the job's last session while it is younger than the timeout, starts fresh after it,
//! and falls back to a new session once when the CLI no longer knows the old one.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cnp::clock::Clock;
use cnp::engine::{Engine, EngineSettings};
use cnp::events::EventBus;
use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
use cnp::model::{ExecutionStatus, JobExecution, Outcome};
use cnp::store::{ExecutionFilter, Store};

/// Sessions the "CLI" knows, and each call's `--resume` (None: a new conversation).
#[derive(Default)]
struct Cli {
    known: HashSet<String>,
    calls: Vec<Option<String>>,
    next: u32,
}

struct SessionRunner {
    clock: Clock,
    cli: Arc<Mutex<Cli>>,
}

impl Runner for SessionRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let clock = self.clock.clone();
        let cli = self.cli.clone();
        Box::pin(async move {
            let started = clock.now();
            observer.spawned(1, started);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let resume = request.options.resume_session.clone();
            let mut c = cli.lock().unwrap();
            c.calls.push(resume.clone());
            let (outcome, session) = match resume {
                Some(id) if !c.known.contains(&id) => (
                    Outcome::InvalidArguments {
                        message: format!("No conversation found with session ID: {id}"),
                    },
                    None,
                ),
                Some(id) => (Outcome::Success, Some(id)),
                None => {
                    c.next += 1;
                    let id = format!("session-{}", c.next);
                    c.known.insert(id.clone());
                    (Outcome::Success, Some(id))
                }
            };
            RunReport {
                exit_code: Some(if outcome == Outcome::Success { 0 } else { 1 }),
                outcome,
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(1),
                result_text: Some("ok".into()),
                session_id: session,
                cost_usd: Some(0.1),
                usage: None,
                resource_usage: None,
            }
        })
    }
}

async fn start() -> (Engine, Store, Arc<Mutex<Cli>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store_inline(&dir.path().join("cnp.db"));
    let clock = Clock::tokio_from(Utc.with_ymd_and_hms(2026, 5, 4, 8, 0, 0).unwrap());
    let cli = Arc::new(Mutex::new(Cli::default()));
    let runner = Arc::new(SessionRunner {
        clock: clock.clone(),
        cli: cli.clone(),
    });
    let settings = EngineSettings {
        default_retry: None,
        session_timeout: Duration::from_secs(3600),
        ..EngineSettings::default()
    };
    let engine = Engine::start(store.clone(), runner, settings, clock, EventBus::default())
        .await
        .unwrap();
    (engine, store, cli, dir)
}

async fn run_and_wait(engine: &Engine, store: &Store, job: &str) -> JobExecution {
    let id = engine.run_now(job).await.unwrap();
    for _ in 0..200 {
        tokio::time::advance(Duration::from_millis(100)).await;
        tokio::task::yield_now().await;
        let e = store.get_execution(id.clone()).await.unwrap().unwrap();
        if e.status.is_terminal() {
            return e;
        }
    }
    panic!("run {id} did not end");
}

async fn log_of(store: &Store, id: &str) -> String {
    store
        .get_logs(id.to_owned(), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(start_paused = true)]
async fn continue_job_resumes_its_last_session_until_the_timeout() {
    let (engine, store, cli, _dir) = start().await;
    let job = engine
        .create_job(
            serde_json::from_value(serde_json::json!({
                "name": "pair", "prompt": "go on", "execution": {"session": "continue_job"}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap();
    let first = run_and_wait(&engine, &store, &job.id).await;
    assert_eq!(first.session_id.as_deref(), Some("session-1"));
    assert!(log_of(&store, &first.id)
        .await
        .contains("new session: the job has no successful run"));
    // 30 minutes later: resumed.
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    let second = run_and_wait(&engine, &store, &job.id).await;
    assert_eq!(second.status, ExecutionStatus::Completed);
    assert_eq!(
        cli.lock().unwrap().calls.last().unwrap().as_deref(),
        Some("session-1")
    );
    let log = log_of(&store, &second.id).await;
    assert!(log.contains("resuming session session-1 of run"), "{log}");
    // Two hours later: older than session_timeout (1 h): a new session, and why.
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    let third = run_and_wait(&engine, &store, &job.id).await;
    assert_eq!(cli.lock().unwrap().calls.last().unwrap(), &None);
    assert_eq!(third.session_id.as_deref(), Some("session-2"));
    let log = log_of(&store, &third.id).await;
    assert!(log.contains("more than session_timeout 1h"), "{log}");

    // A job's own timeout wins over the global one.
    let short = engine
        .create_job(
            serde_json::from_value(serde_json::json!({
                "name": "short", "prompt": "x",
                "execution": {"session": "continue_job", "session_timeout": "5m"}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap();
    run_and_wait(&engine, &store, &short.id).await;
    tokio::time::advance(Duration::from_secs(10 * 60)).await;
    run_and_wait(&engine, &store, &short.id).await;
    assert_eq!(
        cli.lock().unwrap().calls.last().unwrap(),
        &None,
        "10 min > 5 min: fresh"
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_the_cli_no_longer_knows_falls_back_to_a_new_one_once() {
    let (engine, store, cli, _dir) = start().await;
    let job = engine
        .create_job(
            serde_json::from_value(serde_json::json!({
                "name": "pair", "prompt": "go on", "execution": {"session": "continue_job"}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap();
    run_and_wait(&engine, &store, &job.id).await;
    // The CLI forgets it (expired on its side, or another machine).
    cli.lock().unwrap().known.clear();
    let calls_before = cli.lock().unwrap().calls.len();
    let e = run_and_wait(&engine, &store, &job.id).await;
    assert_eq!(e.status, ExecutionStatus::Completed, "{e:?}");
    assert_eq!(e.session_id.as_deref(), Some("session-2"));
    let calls = cli.lock().unwrap().calls[calls_before..].to_vec();
    assert_eq!(
        calls,
        vec![Some("session-1".to_owned()), None],
        "one try, one fallback"
    );
    let log = log_of(&store, &e.id).await;
    assert!(
        log.contains("does not know session session-1 any more"),
        "{log}"
    );
    let all = store
        .list_executions(ExecutionFilter {
            job_id: Some(job.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        2,
        "the fallback is the same run, not another execution"
    );
}

#[tokio::test(start_paused = true)]
async fn continue_job_runs_one_at_a_time_and_is_not_mixed_with_other_session_options() {
    let (engine, _store, _cli, _dir) = start().await;
    let e = engine
        .create_job(
            serde_json::from_value(serde_json::json!({
                "name": "x", "prompt": "x",
                "execution": {"session": "continue_job", "resume_session": "abc"}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("execution.session"), "{e}");
    let e = engine
        .create_job(
            serde_json::from_value(serde_json::json!({
                "name": "y", "prompt": "x", "execution": {"session_timeout": "5m"}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("execution.session_timeout"), "{e}");

    // Runs that would resume the same session queue behind each other, whatever max_parallel.
    let (engine, store, _cli, _dir) = start().await;
    let job = engine
        .create_job(
            serde_json::from_value(serde_json::json!({
                "name": "z", "prompt": "x",
                "execution": {"session": "continue_job", "max_parallel": 3}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap();
    let a = engine.run_now(&job.id).await.unwrap();
    let b = engine.run_now(&job.id).await.unwrap();
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(100)).await;
        tokio::task::yield_now().await;
    }
    let a = store.get_execution(a).await.unwrap().unwrap();
    let b = store.get_execution(b).await.unwrap().unwrap();
    assert_eq!(
        (a.status, b.status),
        (ExecutionStatus::Completed, ExecutionStatus::Completed)
    );
    assert!(
        b.started_at.unwrap() >= a.completed_at.unwrap(),
        "{a:?} {b:?}"
    );
    assert_eq!(
        b.session_id, a.session_id,
        "the second resumed the first's session"
    );
}
