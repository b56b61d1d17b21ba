//! The SQLite store: migrations, the batching writer, unique slots, statistics, recovery,
//! retention.

mod common;

use chrono::{Duration, TimeZone, Utc};
use cnp::model::{
    ExecutionOptions, ExecutionStatus, Job, JobStatus, JobType, LogLine, LogStream, Outcome,
    Schedule, Trigger,
};
use cnp::store::{
    Claim, ExecutionFilter, FinishedRun, JobFilter, NewExecution, Store, StoreError, SCHEMA_VERSION,
};

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

fn job(name: &str) -> Job {
    Job {
        id: format!("id-{name}"),
        name: name.into(),
        prompt_id: None,
        prompt: Some("hi".into()),
        cron_expression: None,
        schedule: Schedule::Manual,
        status: JobStatus::Active,
        job_type: JobType::Manual,
        priority: 5,
        execution_options: ExecutionOptions::default(),
        retry_config: None,
        notification_config: None,
        resource_limits: None,
        tags: vec!["nightly".into()],
        depends_on: Default::default(),
        budget: None,
        source: None,
        template: None,
        execution_count: 0,
        failure_count: 0,
        avg_execution_time_ms: 0.0,
        success_rate: 0.0,
        next_run_time: None,
        last_run_time: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn fire(job_id: &str, id: &str, slot: chrono::DateTime<Utc>) -> NewExecution {
    NewExecution {
        id: id.into(),
        job_id: job_id.into(),
        status: ExecutionStatus::Queued,
        trigger: Trigger::Schedule,
        slot: Some(slot),
        scheduled_for: Some(slot),
        queued_at: slot,
        retry_count: 0,
        prompt: None,
        error: None,
    }
}

fn finished(id: &str, status: ExecutionStatus, ms: i64) -> FinishedRun {
    FinishedRun {
        id: id.into(),
        prompt: Some("hi".into()),
        status,
        started_at: Some(t0()),
        completed_at: t0() + Duration::milliseconds(ms),
        output: Some("out".into()),
        error: None,
        outcome: Some(Outcome::Success),
        exit_code: Some(0),
        session_id: None,
        cost_usd: None,
        usage: None,
        resource_usage: None,
        pid: Some(1),
        worktree: None,
    }
}

async fn claimed(store: &Store, id: impl Into<String>) -> bool {
    matches!(
        store.claim_execution(id.into(), t0()).await.unwrap(),
        Claim::Started { .. }
    )
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store(&dir.path().join("sub/dir/cnp.db"));
    (dir, store)
}

#[tokio::test]
async fn migrates_and_reopens() {
    let (dir, store) = open();
    store.insert_job(job("a")).await.unwrap();
    store.close();
    drop(store);
    let store = common::open_store(&dir.path().join("sub/dir/cnp.db"));
    if common::on_postgres() {
        let v: u32 = store
            .read_blocking(|c| c.query_one("SELECT version FROM cnp_schema", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(v, cnp::store::PG_SCHEMA_VERSION);
    } else {
        let v: u32 = store
            .read_blocking(|c| c.query_one("PRAGMA user_version", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = store
            .read_blocking(|c| c.query_one("PRAGMA journal_mode", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    assert_eq!(store.get_job("a".into()).await.unwrap().unwrap().id, "id-a");
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    if common::on_postgres() {
        let url = cnp_tests::pg::PgServer::shared().create_database();
        let options = cnp::store::PgOptions::new(url);
        drop(cnp::store::Store::connect(&options).unwrap());
        cnp_tests::pg::run_sql(&options.url, "UPDATE cnp_schema SET version = 99").unwrap();
        let err = cnp::store::Store::connect(&options)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("99") && err.contains("newer"), "{err}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnp.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = Store::open(&path).err().expect("refused").to_string();
    assert!(err.contains("99") && err.contains("newer"), "{err}");
}

#[tokio::test]
async fn a_slot_is_recorded_once() {
    let (_d, store) = open();
    store.insert_job(job("a")).await.unwrap();
    let r = store
        .record_fires(vec![
            fire("id-a", "e1", t0()),
            fire("id-a", "e2", t0() + Duration::minutes(1)),
        ])
        .await
        .unwrap();
    assert_eq!(r, [true, true]);
    // the same slot again (e.g. a restart re-deciding it) is not recorded a second time
    let r = store
        .record_fires(vec![fire("id-a", "e3", t0()), fire("id-gone", "e4", t0())])
        .await
        .unwrap();
    assert_eq!(
        r,
        [false, false],
        "duplicate slot and deleted job are both refused"
    );
    let all = store
        .list_executions(ExecutionFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn concurrent_writes_are_grouped_and_isolated() {
    let (_d, store) = open();
    store.insert_job(job("a")).await.unwrap();
    // 500 concurrent writes, one of which fails: the failure is reported to its caller only.
    let mut handles = Vec::new();
    for i in 0..500 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            if i == 250 {
                store.insert_job(job("a")).await.map(|_| ())
            } else {
                store
                    .insert_execution(fire("id-a", &format!("e{i}"), t0() + Duration::seconds(i)))
                    .await
                    .map(|_| ())
            }
        }));
    }
    let mut failures = 0;
    for h in handles {
        if let Err(e) = h.await.unwrap() {
            assert!(
                matches!(e, StoreError::Conflict(ref m) if m.contains("already exists")),
                "{e}"
            );
            failures += 1;
        }
    }
    assert_eq!(failures, 1);
    let n = store
        .list_executions(ExecutionFilter::default())
        .await
        .unwrap()
        .len();
    assert_eq!(n, 499);
}

#[tokio::test]
async fn statistics_count_each_finished_run_once() {
    let (_d, store) = open();
    store.insert_job(job("a")).await.unwrap();
    for (i, status) in [
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::Completed,
        ExecutionStatus::TimedOut,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("e{i}");
        store
            .insert_execution(fire("id-a", &id, t0() + Duration::seconds(i as i64)))
            .await
            .unwrap();
        assert!(claimed(&store, id.clone()).await);
        assert!(store
            .finish_execution(finished(&id, status, 1000 * (i as i64 + 1)))
            .await
            .unwrap());
        // a second report of the same end is ignored
        assert!(!store
            .finish_execution(finished(&id, status, 1))
            .await
            .unwrap());
    }
    let j = store.get_job("id-a".into()).await.unwrap().unwrap();
    assert_eq!(j.execution_count, 4);
    assert_eq!(j.failure_count, 2);
    assert_eq!(j.success_rate, 0.5);
    assert_eq!(j.avg_execution_time_ms, 2500.0);
    assert_eq!(j.last_run_time, Some(t0()));
}

#[tokio::test]
async fn running_rows_become_interrupted_and_queued_rows_stay_pending() {
    let (_d, store) = open();
    store.insert_job(job("a")).await.unwrap();
    store
        .insert_execution(fire("id-a", "run", t0()))
        .await
        .unwrap();
    store
        .insert_execution(fire("id-a", "wait", t0() + Duration::minutes(1)))
        .await
        .unwrap();
    assert!(claimed(&store, "run").await);
    let found = store
        .recover_interrupted(t0() + Duration::minutes(5), Default::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, None);
    let e = store.get_execution("run".into()).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Interrupted);
    assert!(e.error.unwrap().contains("cnp stopped"));
    let pending = store.pending_executions().await.unwrap();
    assert_eq!(
        pending.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["wait"]
    );
    // a cancelled pending run cannot be claimed any more
    assert!(store
        .set_pending_status("wait".into(), ExecutionStatus::Cancelled, None, t0())
        .await
        .unwrap());
    assert!(!claimed(&store, "wait").await);
    let j = store.get_job("a".into()).await.unwrap().unwrap();
    assert_eq!((j.execution_count, j.failure_count), (1, 1));
}

#[tokio::test]
async fn an_interrupted_run_gets_one_linked_retry_in_the_same_transaction() {
    let (_d, store) = open();
    store.insert_job(job("a")).await.unwrap();
    store
        .insert_execution(fire("id-a", "run", t0()))
        .await
        .unwrap();
    assert!(claimed(&store, "run").await);
    let now = t0() + Duration::minutes(5);
    let retry = |id: &str| {
        std::collections::HashMap::from([(
            "run".to_string(),
            cnp::store::NewRetry {
                id: id.into(),
                at: now,
                now,
            },
        )])
    };
    let found = store
        .recover_interrupted(now, retry("again"))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.as_deref(), Some("again"));
    let e = store.get_execution("run".into()).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Interrupted);
    assert!(e
        .error
        .unwrap()
        .contains("attempt 2 recorded as execution again"));
    let r = store.get_execution("again".into()).await.unwrap().unwrap();
    assert_eq!(r.status, ExecutionStatus::Queued);
    assert_eq!(r.retry_count, 1);
    assert_eq!(r.first_attempt_id.as_deref(), Some("run"));
    assert_eq!(r.trigger, Trigger::Retry);
    assert_eq!(r.scheduled_for, Some(now));
    // A second restart right after the first: nothing is `running`, nothing recorded twice.
    let again = store
        .recover_interrupted(now, retry("twice"))
        .await
        .unwrap();
    assert!(again.is_empty());
    assert!(store.get_execution("twice".into()).await.unwrap().is_none());
    let pending = store.pending_executions().await.unwrap();
    assert_eq!(
        pending.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["again"]
    );
}

#[tokio::test]
async fn logs_filters_and_retention() {
    let (_d, store) = open();
    store.insert_job(job("a")).await.unwrap();
    let mut b = job("b");
    b.tags = vec!["weekly".into()];
    b.status = JobStatus::Paused;
    store.insert_job(b).await.unwrap();
    let by_tag = store
        .list_jobs(JobFilter {
            tag: Some("weekly".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_tag.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let paused = store
        .list_jobs(JobFilter {
            status: Some(JobStatus::Paused),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(paused.len(), 1);

    for i in 0..10 {
        let id = format!("e{i}");
        store
            .insert_execution(fire(
                "id-a",
                &id,
                t0() - Duration::days(40) + Duration::days(i * 5),
            ))
            .await
            .unwrap();
        claimed(&store, id.clone()).await;
        let mut f = finished(&id, ExecutionStatus::Completed, 10);
        f.completed_at = t0() - Duration::days(40) + Duration::days(i * 5);
        store.finish_execution(f).await.unwrap();
    }
    store.append_logs_detached(
        (0..5)
            .map(|seq| LogLine {
                execution_id: "e9".into(),
                seq,
                stream: LogStream::Stdout,
                timestamp: t0(),
                line: format!("line {seq}"),
            })
            .collect(),
    );
    store.flush().await.unwrap();
    let logs = store.get_logs("e9".into(), Some(1), 10).await.unwrap();
    assert_eq!(
        logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 2", "line 3", "line 4"]
    );

    // older than 30 days: e0..e2 (completed 40, 35, 30+ days ago), then keep the newest 4
    let deleted = store
        .cleanup_executions(Some(t0() - Duration::days(30)), 4)
        .await
        .unwrap();
    assert_eq!(deleted, 6);
    let left: Vec<String> = store
        .list_executions(ExecutionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, ["e9", "e8", "e7", "e6"]);
    // logs of deleted executions go with them; kept ones stay
    assert_eq!(
        store.get_logs("e9".into(), None, 10).await.unwrap().len(),
        5
    );
}

#[tokio::test]
async fn prompts_in_use_cannot_be_deleted() {
    let (_d, store) = open();
    let p = cnp::model::Prompt {
        id: "review".into(),
        title: "Review".into(),
        content: "Review it".into(),
        tags: vec![],
        created_at: t0(),
        updated_at: t0(),
    };
    store.upsert_prompt(p).await.unwrap();
    let mut j = job("a");
    j.prompt = None;
    j.prompt_id = Some("review".into());
    store.insert_job(j).await.unwrap();
    let err = store
        .delete_prompt("review".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("used by 1 job"), "{err}");
    let mut bad = job("b");
    bad.prompt = None;
    bad.prompt_id = Some("nope".into());
    let err = store.insert_job(bad).await.unwrap_err().to_string();
    assert!(err.contains("prompt_id"), "{err}");
}

#[tokio::test]
async fn templates_are_stored_and_remembered_by_their_jobs() {
    use cnp::job_template::TemplateDef;
    let (_dir, store) = open();
    let def: TemplateDef = serde_yaml_ng::from_str(
        "description: d\nvars: { repo: {}, branch: { default: main } }\njob: { prompt: \"{{ repo }}\" }\n",
    )
    .unwrap();
    let t = def.clone().into_template("review", None, t0()).unwrap();
    let stored = store.upsert_template(t.clone()).await.unwrap();
    assert_eq!(stored, t);
    assert_eq!(
        store.get_template("review".into()).await.unwrap(),
        Some(t.clone())
    );
    // A job made from it keeps the template, its variables and overrides.
    let mut j = job("made");
    j.template = Some(cnp::model::TemplateUse {
        name: "review".into(),
        vars: [("repo".to_owned(), "/src".to_owned())].into(),
        overrides: [("priority".to_owned(), serde_json::json!(9))].into(),
    });
    store.insert_job(j.clone()).await.unwrap();
    store.insert_job(job("plain")).await.unwrap();
    let made = store.jobs_of_template("review".into()).await.unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].template, j.template);
    // Deleting is refused while a job is made from it.
    match store.delete_template("review".into()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("1 job"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Updating keeps created_at; detaching the job frees the template.
    let later = def
        .into_template("review", None, t0() + Duration::hours(1))
        .unwrap();
    let updated = store.upsert_template(later).await.unwrap();
    assert_eq!(updated.created_at, t0());
    assert_eq!(updated.updated_at, t0() + Duration::hours(1));
    let mut detached = made[0].clone();
    detached.template = None;
    store.update_job(detached, None, None).await.unwrap();
    assert!(store
        .jobs_of_template("review".into())
        .await
        .unwrap()
        .is_empty());
    store.delete_template("review".into()).await.unwrap();
    assert!(store.list_templates().await.unwrap().is_empty());
    assert!(matches!(
        store.delete_template("review".into()).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn member(id: &str, at: chrono::DateTime<Utc>) -> cnp::store::Member {
    cnp::store::Member {
        id: id.into(),
        host: "test".into(),
        pid: 1,
        api: None,
        started_at: at,
        heartbeat_at: at,
        leader: false,
        running: 0,
        queued: 0,
        capacity: 4,
    }
}

/// Several instances on one PostgreSQL database (docs/cluster.md): each due run is claimed by
/// one member, a job's runs stay with one member, only the owner starts a run, leases are
/// renewed by heartbeats, and what a dead member held goes back or is taken over.
#[tokio::test]
async fn members_claim_each_run_once_under_a_lease_and_a_dead_members_runs_are_taken_over() {
    if !common::on_postgres() {
        eprintln!(
            "claims need PostgreSQL: run with CNP_TEST_BACKEND=postgres (scripts/test.sh does)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnp.db");
    let (a, b) = (common::open_store(&path), common::open_store(&path));
    b.set_owner("b".into());
    for i in 0..40 {
        a.insert_job(job(&format!("j{i}"))).await.unwrap();
        let mut f = fire(&format!("id-j{i}"), &format!("e{i}"), t0());
        f.trigger = Trigger::Manual;
        f.slot = None;
        a.insert_execution(f).await.unwrap();
    }
    // Not due yet: nobody claims it.
    a.insert_execution(fire("id-j0", "later", t0() + Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!(a.next_claimable().await.unwrap(), Some(t0()));
    let lease = t0() + Duration::seconds(15);
    for m in ["a", "b"] {
        a.join_cluster(member(m, t0())).await.unwrap();
    }

    // Two members claiming at once, 8 at a time: every run once, none twice.
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        let (ra, rb) = tokio::join!(
            a.claim_runs("a".into(), t0(), lease, 8),
            b.claim_runs("b".into(), t0(), lease, 8)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        if ra.is_empty() && rb.is_empty() {
            break;
        }
        got_a.extend(ra.into_iter().map(|r| r.id));
        got_b.extend(rb.into_iter().map(|r| r.id));
    }
    let all: std::collections::HashSet<&String> = got_a.iter().chain(&got_b).collect();
    assert_eq!(got_a.len() + got_b.len(), 40);
    assert_eq!(all.len(), 40, "a run was claimed twice");
    assert!(!all.contains(&"later".to_owned()));

    // A job whose run b holds: its next run is not a's to claim.
    let held_by_b = got_b[0].clone();
    let job_of_b = a
        .get_execution(held_by_b.clone())
        .await
        .unwrap()
        .unwrap()
        .job_id;
    let mut next = fire(&job_of_b, "next-of-b", t0());
    next.trigger = Trigger::Manual;
    next.slot = None;
    a.insert_execution(next).await.unwrap();
    assert!(a
        .claim_runs("a".into(), t0(), lease, 8)
        .await
        .unwrap()
        .is_empty());
    let mine = b.claim_runs("b".into(), t0(), lease, 8).await.unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");

    // Only the owner starts a run.
    a.set_owner("a".into());
    assert!(!claimed(&a, held_by_b.clone()).await, "a started b's run");
    assert!(claimed(&b, held_by_b.clone()).await);

    // b's heartbeat renews its leases; then b dies: 15 s after its last one, its running run is
    // orphaned and its claimed runs go back.
    let later = t0() + Duration::seconds(10);
    assert!(b
        .heartbeat(
            "b".into(),
            later,
            later + Duration::seconds(15),
            false,
            (1, 8),
            None
        )
        .await
        .unwrap());
    let a_beat = t0() + Duration::seconds(20);
    assert!(a
        .heartbeat(
            "a".into(),
            a_beat,
            a_beat + Duration::seconds(40),
            true,
            (0, 0),
            None
        )
        .await
        .unwrap());
    let before_expiry = t0() + Duration::seconds(20);
    assert!(a
        .orphaned_runs(cnp::store::Orphans::LeaseExpired(before_expiry))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(a.release_expired_claims(before_expiry).await.unwrap(), 0);
    let expired = t0() + Duration::seconds(26);
    let orphans = a
        .orphaned_runs(cnp::store::Orphans::LeaseExpired(expired))
        .await
        .unwrap();
    assert_eq!(
        orphans.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [held_by_b.as_str()]
    );
    let released = a.release_expired_claims(expired).await.unwrap();
    assert_eq!(released, got_b.len(), "b's claimed, unstarted runs go back");
    let taken = a
        .recover_orphans(
            expired,
            Default::default(),
            cnp::store::Orphans::LeaseExpired(expired),
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let e = a.get_execution(held_by_b).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Interrupted);
    assert!(e.error.unwrap().contains("stopped renewing its lease"));
    // a (alive) keeps what it holds; b is forgotten and its next heartbeat says so.
    assert_eq!(
        a.forget_members(expired - Duration::seconds(10))
            .await
            .unwrap(),
        ["b"]
    );
    assert!(!b
        .heartbeat("b".into(), expired, expired, false, (0, 0), None)
        .await
        .unwrap());
    let members = a.members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].id, "a");
    // What b held is claimable again.
    let again = a
        .claim_runs("a".into(), expired, expired, 100)
        .await
        .unwrap();
    assert_eq!(again.len(), got_b.len());
    a.leave_cluster("a".into()).await.unwrap();
    assert!(a.members().await.unwrap().is_empty());
}
