//! Recording fires, dispatching by priority under the concurrency limits, and a run's lifecycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::hooks::{self, Gate};
use super::session::{self, SessionPlan};
use super::trace;
use super::workflow;
use super::{Engine, Fire, QueuedRun, RunningRun};
use crate::events::Event;
use crate::executor::worktree;
use crate::executor::{RunObserver, RunReport, RunRequest};
use crate::model::{
    AttemptRef, ExecutionStatus, Job, JobStatus, LogLine, LogStream, Outcome, OverlapPolicy,
};
use crate::notify::EventKind;
use crate::plugins::ExecutionInfo;
use crate::store::{Claim, FinishedRun, NewRetry, RunPlace, Settled};

/// Puts a recorded run in the dispatch queue, or records it skipped when the job's overlap
/// policy says so.
pub(super) fn enqueue(engine: &Engine, run: QueuedRun) {
    enqueue_all(engine, vec![run], false);
}

/// [`enqueue`] for many runs. `announce`: publish each run's `queued` event once it is in the
/// dispatch queue. A scheduled run (`epoch` set) whose job changed since its slot was decided is
/// withdrawn.
pub(super) fn enqueue_all(engine: &Engine, runs: Vec<QueuedRun>, announce: bool) {
    let s = &engine.shared;
    let mut skipped = Vec::new();
    let mut runs = runs.into_iter().peekable();
    // In chunks: the dispatcher starts on the first runs of a large burst while the rest are
    // queued, and each chunk's `queued` events carry the moment that chunk was in the queue.
    while runs.peek().is_some() {
        let mut queued = 0;
        let mut announced = Vec::new();
        let mut deferred = Vec::new();
        let cooling;
        {
            let mut st = s.state.lock().unwrap();
            let st = &mut *st;
            cooling = st.cooldown.clone();
            for run in runs.by_ref().take(RELEASE_CHUNK) {
                let reason = match st.jobs.get_mut(run.job_id.as_str()) {
                    None => Some("the job was deleted before the run started".to_owned()),
                    // Recorded ahead of its slot, and the job was paused, disabled or
                    // rescheduled since: withdrawn (the job's own write has normally deleted the
                    // row already).
                    Some(entry)
                        if run.epoch.is_some_and(|e| {
                            e != entry.epoch || entry.status != JobStatus::Active
                        }) =>
                    {
                        tracing::debug!(execution = %run.execution_id, job = %run.job_id, "run recorded ahead of its slot withdrawn: the job changed");
                        s.store.withdraw_execution_detached(run.execution_id);
                        continue;
                    }
                    Some(entry) => {
                        let busy = entry.running + entry.queued;
                        if entry.overlap == OverlapPolicy::Skip && busy >= entry.max_parallel {
                            Some(format!(
                                "skipped: {busy} run(s) of this job already running or queued \
                                 (max_parallel {}, overlap: skip)",
                                entry.max_parallel
                            ))
                        } else {
                            entry.queued += 1;
                            if cooling.is_some() {
                                // Held back by the cooldown: recorded as deferred.
                                deferred.push(run.execution_id.clone());
                            } else if announce {
                                announced.push((run.execution_id.clone(), run.job_id.clone()));
                            }
                            st.queue.push(run);
                            queued += 1;
                            continue;
                        }
                    }
                };
                if let Some(reason) = reason {
                    skipped.push((run, reason));
                }
            }
        }
        if queued > 0 {
            s.dispatch.notify_one();
        }
        if let Some(c) = &cooling {
            super::cooldown::defer_in_store(engine, &deferred, c);
        }
        let now = s.clock.now();
        for (execution_id, job_id) in announced {
            s.events.publish(Event::Execution {
                execution_id,
                job_id,
                status: ExecutionStatus::Queued,
                message: None,
                timestamp: now,
                next_attempt: None,
            });
        }
    }
    for (run, reason) in skipped {
        let engine = engine.clone();
        s.tasks.spawn(async move {
            let now = engine.shared.clock.now();
            match engine
                .shared
                .store
                .set_pending_status(run.execution_id.clone(), ExecutionStatus::Skipped, Some(reason.clone()), now)
                .await
            {
                Ok(true) => {
                    engine.publish_exec(&run.execution_id, &run.job_id, ExecutionStatus::Skipped, Some(reason));
                    workflow::settle_ended(&engine, &run.job_id, &run.execution_id).await;
                }
                Ok(false) => {}
                Err(e) => tracing::error!(execution = %run.execution_id, error = %e, "cannot record skipped run"),
            }
        });
    }
}

/// Records fires in bursts: whatever arrived while the previous write was in flight goes into
/// the next transaction.
pub(super) async fn run_recorder(engine: Engine, mut rx: mpsc::UnboundedReceiver<Vec<Fire>>) {
    let s = &engine.shared;
    loop {
        let mut batch = tokio::select! {
            biased;
            b = rx.recv() => match b { Some(b) => b, None => break },
            _ = s.stop.cancelled() => break,
        };
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        // Most urgent first, and the head of a large burst on its own: the first runs of a
        // 10,000-fire burst are recorded (and dispatched) after one small transaction, the rest
        // in one more (smaller transactions would compete with the started runs' writes).
        batch.sort_by_key(|f| std::cmp::Reverse(f.priority));
        let rest = batch.split_off(batch.len().min(RECORD_CHUNK));
        record_chunk(&engine, batch).await;
        if !rest.is_empty() {
            record_chunk(&engine, rest).await;
        }
    }
}

/// Runs put in the dispatch queue per lock when a burst is released.
const RELEASE_CHUNK: usize = 512;

/// Fires recorded in the first transaction of a burst.
const RECORD_CHUNK: usize = 256;

async fn record_chunk(engine: &Engine, chunk: Vec<Fire>) {
    let executions: Vec<_> = chunk.iter().map(|f| f.execution.clone()).collect();
    match engine.shared.store.record_fires(executions).await {
        Ok(inserted) => {
            let now = engine.shared.clock.now();
            let mut due = Vec::new();
            let mut ahead = Vec::new();
            for (fire, new) in chunk.into_iter().zip(inserted) {
                let e = fire.execution;
                if !new {
                    tracing::debug!(job = %e.job_id, slot = ?e.slot, "slot already recorded (not run twice), or the job stopped being active");
                    continue;
                }
                if e.status != ExecutionStatus::Queued {
                    engine.publish_exec(&e.id, &e.job_id, e.status, e.error.clone());
                    continue;
                }
                let run = QueuedRun {
                    execution_id: e.id,
                    job_id: e.job_id,
                    priority: fire.priority,
                    seq: 0,
                    scheduled_for: e.scheduled_for,
                    retry_count: e.retry_count,
                    epoch: Some(fire.epoch),
                    slot: e.slot,
                    trace: Default::default(),
                };
                match run.scheduled_for {
                    // Recorded ahead of its slot: the timer releases it then.
                    Some(t) if t > now => ahead.push((t, run)),
                    _ => due.push(run),
                }
            }
            if !due.is_empty() {
                release(engine, due);
            }
            // If the timer has stopped (shutdown), withdraw them as it does with its own.
            let orphans: Vec<QueuedRun> = ahead
                .into_iter()
                .filter_map(|(t, run)| engine.timer(t, run))
                .collect();
            if !orphans.is_empty() {
                super::timer::withdraw_unreleased(engine, orphans).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, fires = chunk.len(), "cannot record schedule fires: these slots did not run");
        }
    }
}

/// Releases recorded runs whose time has come to the dispatch queue — no I/O. A scheduled run
/// whose job was deleted, paused, disabled or rescheduled since its slot was decided is
/// withdrawn instead (its row deleted, if the job's own write has not done it already).
pub(super) fn release(engine: &Engine, runs: Vec<QueuedRun>) {
    if engine.shared.cluster.is_some() {
        // Recorded: whichever member has room claims them.
        super::cluster::poke(engine);
        return;
    }
    enqueue_all(engine, runs, true);
}

/// Starts queued runs, most urgent first, while the global semaphore and each job's
/// `max_parallel` allow.
pub(super) async fn run_dispatcher(engine: Engine) {
    let s = &engine.shared;
    loop {
        let permit = tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            p = s.semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (mut run, known) = loop {
            let notified = s.dispatch.notified();
            let now = s.clock.now();
            let mut held = super::budget::Held::default();
            let next = {
                let mut st = s.state.lock().unwrap();
                let st = &mut *st;
                let jobs = &st.jobs;
                let budgets = &mut st.budgets;
                // During a usage-limit cooldown nothing starts: runs wait in the queue. Runs of
                // a job at its max_parallel, or held by a spending cap, are set aside.
                let run = if st.cooldown.is_some() {
                    None
                } else {
                    st.queue.pop(|run| {
                        jobs.get(run.job_id.as_str())
                            .is_none_or(|e| e.running < e.max_parallel)
                            && super::budget::admit(budgets, run, now, &mut held)
                    })
                };
                run.map(|run| {
                    st.budgets.start(&run.execution_id, &run.job_id);
                    let known = st.jobs.get_mut(run.job_id.as_str()).map(|e| {
                        e.queued = e.queued.saturating_sub(1);
                        e.running += 1;
                    });
                    (run, known)
                })
            };
            if !held.is_empty() {
                s.tasks
                    .spawn(super::budget::record_held(engine.clone(), held));
            }
            if let Some(next) = next {
                break next;
            }
            tokio::select! {
                biased;
                _ = s.stop.cancelled() => return,
                _ = notified => {}
            }
        };
        // Out of the queue: its `queue` span ends (outside the state lock).
        run.trace.dispatched();
        let cancel = CancellationToken::new();
        let Some(()) = known else {
            // Deleted while queued.
            drop(permit);
            continue;
        };
        s.state.lock().unwrap().running.insert(
            run.execution_id.clone(),
            RunningRun {
                job_id: run.job_id.clone(),
                cancel: cancel.clone(),
            },
        );
        let engine2 = engine.clone();
        s.tasks.spawn(async move {
            // The run task inside its `run` span: the spans of the run are its children.
            let root = run.trace.root().clone();
            let again = execute(&engine2, run.clone(), cancel)
                .instrument(root)
                .await;
            drop(permit);
            let s = &engine2.shared;
            {
                let mut st = s.state.lock().unwrap();
                st.running.remove(&run.execution_id);
                if let Some(e) = st.jobs.get_mut(run.job_id.as_str()) {
                    e.running = e.running.saturating_sub(1);
                }
                if st.budgets.end(&run.execution_id) {
                    // Runs held by a cap that counted this run's expected cost may start now.
                    st.queue.release_all();
                } else {
                    st.queue.release(&run.job_id);
                }
                if let Some(mut again) = again {
                    // Hit the usage limit: back in the queue (whatever the overlap policy: it
                    // is the same run), held there until the cooldown ends. Its next dispatch
                    // is a new trace, linked to this one.
                    again.trace = again.trace.next_try();
                    if let Some(e) = st.jobs.get_mut(again.job_id.as_str()) {
                        e.queued += 1;
                    }
                    st.queue.push(again);
                }
            }
            s.dispatch.notify_one();
            super::cluster::room(&engine2);
        });
    }
}

/// One run, from claiming it in the store to recording its end. Returns the run when it hit
/// the usage limit: it goes back to the dispatch queue, deferred until the cooldown ends.
///
/// The lifecycle, top to bottom: claim → gate (condition hooks) → prepare (a workflow run's
/// prompt and session) → execute (the CLI) → classify (cooldown, shutdown) → plan the retry or
/// the downstream → finish (one write: the end with its retry or downstream runs) → after the
/// run (arm the retry, notify, start the downstream).
async fn execute(engine: &Engine, run: QueuedRun, cancel: CancellationToken) -> Option<QueuedRun> {
    let s = &engine.shared;
    let now = s.clock.now();
    // One write claims the run and reads the job's current definition and prompt.
    let (job, prompt, trigger, log_seq, place) = match s
        .store
        .claim_execution(run.execution_id.clone(), now)
        .await
    {
        Ok(Claim::Started {
            job,
            prompt,
            trigger,
            log_seq,
            place,
        }) => (job, prompt, trigger, log_seq, place),
        Ok(Claim::NotPending) => {
            // cancelled (or the job deleted) while queued
            trace::ended(&run, "not_pending", None, None);
            return None;
        }
        Ok(Claim::PromptMissing { message }) => {
            fail_unstarted(engine, &run, message).await;
            return None;
        }
        Err(e) if e.is_storage_failure() => {
            // Not started (nothing a crash could lose): it goes back to the queue and is tried
            // again once writes succeed.
            tracing::warn!(execution = %run.execution_id, error = %e, "cannot mark the run started (the database cannot be written): tried again in {}s", STORAGE_RETRY.as_secs());
            trace::ended(&run, "queued", None, Some("the database cannot be written"));
            tokio::select! {
                _ = tokio::time::sleep(STORAGE_RETRY) => {}
                _ = s.stop.cancelled() => return None,
            }
            return Some(QueuedRun { epoch: None, ..run });
        }
        Err(e) => {
            tracing::error!(execution = %run.execution_id, error = %e, "cannot mark run started: not run");
            return None;
        }
    };
    trace::claimed(&run, &job.name, trigger);
    let observer = Arc::new(Observer {
        engine: engine.clone(),
        execution_id: run.execution_id.clone(),
        seq: AtomicU64::new(log_seq),
        buffer: Mutex::new(Vec::new()),
        scrub: crate::redact::Scrub::of_environment(&job.execution_options.environment),
    });
    let note = |m: String| observer.note(m);
    // A run its upstreams started (or a retry of one): the pass's ended runs, read once, for
    // the condition hooks (0.2 hooks see them) and then the prompt and session.
    let pass = match (
        &place.workflow_run_id,
        trigger == crate::model::Trigger::Dependency || trigger == crate::model::Trigger::Retry,
    ) {
        (Some(pass), true) => match s.store.pass_runs(pass.clone()).await {
            Ok(runs) => Some((pass.as_str(), runs)),
            Err(e) => {
                let message = format!("cannot read the workflow pass: {e}");
                observer.note(format!("not run: {message}"));
                observer.flush();
                fail_unstarted(engine, &run, message).await;
                return None;
            }
        },
        _ => None,
    };
    let view = pass.as_ref().map(|(id, runs)| hooks::PassView {
        pass_id: id,
        runs,
        upstream_ids: &place.upstream_ids,
    });
    match hooks::check_conditions(engine, &job, &run, trigger, view, &note).await {
        Gate::Run => {}
        Gate::Skip(reason) => {
            observer.flush();
            record_skipped(engine, &run, reason).await;
            return None;
        }
        Gate::Defer { until, reason } => {
            // Notes are not kept for a deferred run (it starts its log afresh when it runs);
            // the reason is on the execution.
            observer.buffer.lock().unwrap().clear();
            defer(engine, run, until, reason).await;
            return None;
        }
    }
    // A run its upstreams started: its prompt may use their results, its session theirs.
    let mut prompt = prompt;
    let mut resume = None;
    if let Some((pass_id, runs)) = &pass {
        match workflow::prepare(engine, &job, &prompt, pass_id, runs, &place.upstream_ids) {
            Ok((rendered, session)) => {
                prompt = rendered;
                resume = session;
            }
            Err(message) => {
                observer.note(format!("not run: {message}"));
                observer.flush();
                fail_unstarted(engine, &run, message).await;
                return None;
            }
        }
    }
    engine.publish_exec(
        &run.execution_id,
        &run.job_id,
        ExecutionStatus::Running,
        None,
    );
    let max_attempts = hooks::retry_config(engine, &job).map_or(1, |r| r.max_attempts);
    hooks::notify_run(
        engine,
        &job,
        EventKind::RunStarted,
        Some(run.execution_id.clone()),
        None,
        format!("{}: run started", job.name),
        observer.clone().noter(),
    );
    let timeout = job
        .execution_options
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(s.settings.default_timeout);
    // Killed on cancel, or when shutdown's grace is over.
    let kill = cancel.clone();
    let shutdown_kill = s.kill.clone();
    let mut options = job.execution_options.clone();
    options
        .environment
        .insert(EXECUTION_ID_ENV.into(), run.execution_id.clone());
    options
        .environment
        .insert(JOB_ID_ENV.into(), run.job_id.clone());
    let resumed_upstream = resume.is_some();
    if let Some(session) = resume {
        observer.note(format!(
            "continuing the upstream run's Claude session {session}"
        ));
        options.resume_session = Some(session);
        options.continue_session = false;
    }
    // `session: continue_job`: the job's own last session while it is fresh enough.
    let resumed_own = match session::plan(engine, &job, s.clock.now()).await {
        SessionPlan::AsConfigured => false,
        SessionPlan::Fresh(why) => {
            observer.note(why);
            false
        }
        SessionPlan::Resume { session_id, why } => {
            observer.note(why);
            options.resume_session = Some(session_id);
            true
        }
    };
    // `execution.worktree`: a git worktree of its own, where the CLI runs.
    let worktree = match &job.execution_options.worktree {
        None => None,
        Some(spec) => {
            // A job resuming its own session runs at one fixed path (the CLI finds a session
            // by its directory); its runs never overlap.
            let fixed = (job.execution_options.session == crate::model::SessionMode::ContinueJob)
                .then(|| format!("job-{}", job.id));
            match worktree::create(
                spec,
                &job.name,
                &run.execution_id,
                &s.settings.worktree_dir,
                fixed.as_deref(),
            )
            .await
            {
                Ok(w) => {
                    observer.note(format!(
                        "worktree {} of {} on new branch {} from {}",
                        w.path.display(),
                        w.repo.display(),
                        w.branch,
                        &w.base_commit[..w.base_commit.len().min(12)]
                    ));
                    options.working_directory = Some(w.path.to_string_lossy().into_owned());
                    Some(w)
                }
                Err(message) => {
                    observer.note(format!("not run: {message}"));
                    observer.flush();
                    fail_unstarted(engine, &run, message).await;
                    return None;
                }
            }
        }
    };
    // `executor:`: a plugin does the run instead of the CLI.
    let plugin =
        job.execution_options
            .executor
            .clone()
            .map(|executor| crate::executor::PluginCall {
                executor,
                job: hooks::job_info(engine, &job),
                attempt: run.retry_count + 1,
            });
    let request = RunRequest {
        execution_id: run.execution_id.clone(),
        prompt: prompt.clone(),
        options,
        limits: job.resource_limits.clone(),
        timeout,
        cancel: kill.clone(),
        plugin,
    };
    let mut report = run_cli(engine, request.clone(), &observer, &kill).await;
    if (resumed_own || resumed_upstream)
        && session::unknown_session(&report.outcome)
        && !kill.is_cancelled()
    {
        // The CLI no longer knows the session (expired, or made in another directory: the CLI
        // finds sessions by directory): a new one, once, in the same run.
        observer.note(format!(
            "the CLI does not know session {} any more ({}): running again in a new session",
            request
                .options
                .resume_session
                .as_deref()
                .unwrap_or_default(),
            report.outcome.error_message().unwrap_or_default()
        ));
        let mut fresh = request;
        fresh.options.resume_session = None;
        report = run_cli(engine, fresh, &observer, &kill).await;
    }
    if !observer.scrub.is_empty() {
        // The job's secrets stay out of what is stored and notified.
        scrub_report(&mut report, &observer.scrub);
    }
    let mut status = report.outcome.status();
    // The worktree: what the run changed and committed; removed or kept.
    let limited = matches!(report.outcome, Outcome::UsageLimit { .. }) && !cancel.is_cancelled();
    let worktree_report = match &worktree {
        None => None,
        // Hit the usage limit: the run will be tried again from scratch, in a new worktree
        // under the same name, so this one goes whatever `keep` says.
        Some(w) if limited => {
            worktree::discard(w).await;
            None
        }
        Some(w) => {
            let r = worktree::finish(w, status == ExecutionStatus::Completed).await;
            observer.note(format!(
                "worktree: {} commit(s); {}{}",
                r.commits.len(),
                if r.kept { "kept at " } else { "removed" },
                if r.kept { r.path.as_str() } else { "" }
            ));
            Some(r)
        }
    };
    if report.outcome == Outcome::Cancelled {
        if let Some(why) = super::budget::stopped_why(engine, &run.execution_id) {
            // Not a user's cancel: a spending cap with `hard_stop` was reached.
            observer.note(format!("stopped: {why}"));
            report.outcome = Outcome::Error {
                subtype: Some("budget".into()),
                api_status: None,
                message: format!("stopped: {why}"),
            };
            status = ExecutionStatus::Cancelled;
        }
    }
    if shutdown_kill.is_cancelled() && report.outcome == Outcome::Cancelled {
        // Not a user's cancel: cnp stopped the run at shutdown.
        report.outcome = Outcome::Error {
            subtype: Some("shutdown".into()),
            api_status: None,
            message: "cnp shut down: the run was stopped after the shutdown grace".into(),
        };
        status = ExecutionStatus::Interrupted;
    }
    if let Outcome::UsageLimit { resets_at, message } = &report.outcome {
        if !cancel.is_cancelled() {
            let again = usage_limited(engine, &job, run, *resets_at, message, &observer).await;
            observer.flush();
            return again;
        }
    }
    let info = hooks::execution_info(&run, &report, status, max_attempts);
    let outcome = report.outcome.clone();
    let note = |m: String| observer.note(m);
    // The retry is decided before the end is recorded, so both go in one write.
    let retry = hooks::plan_retry(engine, &job, &run, &outcome, status, info.clone(), &note).await;
    let planned = retry.map(|(at, how)| (uuid::Uuid::now_v7().to_string(), at, how));
    // With no retry, the end decides the runs that depend on this job (recorded with it).
    let downstream = match planned {
        Some(_) => None,
        None => {
            workflow::plan(
                engine,
                ended(&run, &job, &place, &report, status),
                s.clock.now(),
            )
            .await
        }
    };
    let (recorded, settled) = finish(
        engine,
        &run,
        Some(observer.scrub.text(&prompt).into_owned()),
        (report, worktree_report),
        status,
        planned.as_ref().map(|(id, at, _)| NewRetry {
            id: id.clone(),
            at: *at,
            now: s.clock.now(),
        }),
        downstream,
    )
    .await;
    let retry = planned.filter(|_| recorded);
    after_run(engine, &job, &run, status, retry, info, &observer).await;
    workflow::start(engine, settled).await;
    observer.flush();
    None
}

/// Replaces the job's secret values in what the CLI reported (result, error messages).
fn scrub_report(report: &mut RunReport, scrub: &crate::redact::Scrub) {
    if let Some(t) = &mut report.result_text {
        *t = scrub.text(t).into_owned();
    }
    match &mut report.outcome {
        Outcome::Error { message, .. }
        | Outcome::SpawnFailed { message }
        | Outcome::AuthError { message }
        | Outcome::InvalidArguments { message }
        | Outcome::UsageLimit { message, .. }
        | Outcome::ResourceLimit { message } => *message = scrub.text(message).into_owned(),
        Outcome::Success | Outcome::Timeout | Outcome::Cancelled => {}
    }
}

/// Runs the CLI for a request, flushing the run's log as it goes; stops it when cnp's shutdown
/// grace is over.
async fn run_cli(
    engine: &Engine,
    request: RunRequest,
    observer: &Arc<Observer>,
    kill: &CancellationToken,
) -> RunReport {
    let shutdown_kill = engine.shared.kill.clone();
    let span = match &request.plugin {
        Some(p) => trace::executor_span(&request.execution_id, request.timeout, &p.executor.plugin),
        None => trace::cli_span(&request.execution_id, request.timeout),
    };
    let fut = engine
        .shared
        .runner
        .run(request, observer.clone())
        .instrument(span.clone());
    tokio::pin!(fut);
    let mut flush = tokio::time::interval(LOG_FLUSH_INTERVAL);
    let report = loop {
        tokio::select! {
            r = &mut fut => break r,
            _ = shutdown_kill.cancelled(), if !kill.is_cancelled() => kill.cancel(),
            _ = flush.tick() => observer.flush(),
        }
    };
    observer.flush();
    trace::cli_ended(&span, &report);
    report
}

/// A run that ended before its CLI started (its prompt is gone, or could not be rendered):
/// recorded failed, and what depends on it is decided.
async fn fail_unstarted(engine: &Engine, run: &QueuedRun, message: String) {
    let now = engine.shared.clock.now();
    let report = failed_report(now, message);
    let status = report.outcome.status();
    finish(engine, run, None, (report, None), status, None, None).await;
    workflow::settle_ended(engine, &run.job_id, &run.execution_id).await;
}

/// What the edges leaving `job` see of this run's end.
fn ended<'a>(
    run: &'a QueuedRun,
    job: &Job,
    place: &'a RunPlace,
    report: &RunReport,
    status: ExecutionStatus,
) -> workflow::Ended<'a> {
    workflow::Ended {
        job_id: &run.job_id,
        execution_id: &run.execution_id,
        first_attempt_id: &place.first_attempt_id,
        workflow_run_id: place.workflow_run_id.as_deref(),
        facts: crate::workflow::UpstreamRun {
            job_name: job.name.clone(),
            execution_id: run.execution_id.clone(),
            status: Some(status),
            exit_code: report.exit_code,
            result: report.result_text.clone(),
            error: report.outcome.error_message(),
            cost_usd: report.cost_usd,
            duration_ms: report
                .started_at
                .map(|s| (report.finished_at - s).num_milliseconds().max(0) as u64),
            session_id: report.session_id.clone(),
        },
    }
}

/// The run hit the Claude usage limit: the cooldown begins (or goes on), and the run goes back
/// to `deferred` — not finished, not an attempt (its retry count stays), not in the job's
/// statistics; its log keeps what this try printed.
async fn usage_limited(
    engine: &Engine,
    job: &Job,
    run: QueuedRun,
    resets_at: Option<DateTime<Utc>>,
    message: &str,
    observer: &Arc<Observer>,
) -> Option<QueuedRun> {
    let s = &engine.shared;
    let newly = super::cooldown::enter(
        engine,
        resets_at,
        message.to_owned(),
        Some((&run.execution_id, &run.job_id)),
    )
    .await;
    let reason =
        format!("deferred: Claude usage limit ({message}); runs again when the cooldown ends");
    observer.note(format!(
        "usage limit: {message} — not counted as an attempt; the run waits for the cooldown to end{}",
        resets_at
            .map(|t| format!(
                " (reset {})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .unwrap_or_default()
    ));
    trace::ended(
        &run,
        ExecutionStatus::Deferred.as_str(),
        Some(&Outcome::UsageLimit {
            resets_at,
            message: message.to_owned(),
        }),
        Some(&reason),
    );
    match s
        .store
        .defer_limited(run.execution_id.clone(), reason.clone())
        .await
    {
        Ok(true) => {
            engine.publish_exec(
                &run.execution_id,
                &run.job_id,
                ExecutionStatus::Deferred,
                Some(reason),
            );
        }
        Ok(false) => return None, // cancelled meanwhile
        Err(e) => {
            tracing::error!(execution = %run.execution_id, error = %e, "cannot put the usage-limited run back");
            return None;
        }
    }
    if newly {
        hooks::notify_event(
            engine,
            job,
            EventKind::CooldownEntered,
            None,
            format!(
                "{}: Claude usage limit — cooldown entered: {message}",
                job.name
            ),
            observer.clone().noter(),
        );
    }
    Some(QueuedRun { epoch: None, ..run })
}

/// After a recorded run: arm its retry (already recorded with the run's end), or notify of its
/// final outcome.
async fn after_run(
    engine: &Engine,
    job: &Job,
    run: &QueuedRun,
    status: ExecutionStatus,
    retry: Option<(String, DateTime<Utc>, String)>,
    info: ExecutionInfo,
    observer: &Arc<Observer>,
) {
    let note = |m: String| observer.note(m);
    let event = match retry {
        Some((id, at, how)) => {
            note(format!(
                "attempt {} of {} {}: retry at {} ({how}), execution {id}",
                info.attempt,
                info.max_attempts,
                if status == ExecutionStatus::Interrupted {
                    "interrupted"
                } else {
                    "failed"
                },
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
            engine.publish_exec(&id, &run.job_id, ExecutionStatus::Queued, None);
            let retry = QueuedRun {
                execution_id: id,
                job_id: run.job_id.clone(),
                priority: job.priority,
                seq: 0,
                scheduled_for: Some(at),
                retry_count: run.retry_count + 1,
                epoch: None,
                slot: None,
                // A new execution: a new trace, linked to this attempt's.
                trace: run.trace.next_try(),
            };
            // Recorded: if the timer has stopped (shutdown), the next start runs it.
            let _ = engine.timer(at, retry);
            Some((EventKind::RetryScheduled, "failed, retry scheduled"))
        }
        None => match status {
            ExecutionStatus::Completed => Some((EventKind::RunSucceeded, "succeeded")),
            ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Interrupted => {
                Some((EventKind::RunFailed, "failed"))
            }
            _ => None,
        },
    };
    if let Some((kind, what)) = event {
        let summary = format!("{}: {what} (attempt {})", job.name, info.attempt);
        hooks::notify_event(
            engine,
            job,
            kind,
            Some(info),
            summary,
            observer.clone().noter(),
        );
    }
}

/// Records a run a condition hook skipped.
async fn record_skipped(engine: &Engine, run: &QueuedRun, reason: String) {
    let s = &engine.shared;
    let finished = FinishedRun {
        id: run.execution_id.clone(),
        prompt: None,
        status: ExecutionStatus::Skipped,
        started_at: None,
        completed_at: s.clock.now(),
        output: None,
        error: Some(reason.clone()),
        outcome: None,
        exit_code: None,
        session_id: None,
        cost_usd: None,
        usage: None,
        resource_usage: None,
        pid: None,
        worktree: None,
    };
    trace::ended(run, ExecutionStatus::Skipped.as_str(), None, Some(&reason));
    match s.store.finish_execution(finished).await {
        Ok(_) => {
            tracing::info!(execution = %run.execution_id, job = %run.job_id, reason = %reason, "run skipped by a condition hook");
            engine.publish_exec(
                &run.execution_id,
                &run.job_id,
                ExecutionStatus::Skipped,
                Some(reason),
            );
            workflow::settle_ended(engine, &run.job_id, &run.execution_id).await;
        }
        Err(e) => {
            tracing::error!(execution = %run.execution_id, error = %e, "cannot record a skipped run")
        }
    }
}

/// Puts a claimed run back, deferred until `until`, and arms the timer for it.
async fn defer(engine: &Engine, run: QueuedRun, until: DateTime<Utc>, reason: String) {
    let s = &engine.shared;
    trace::ended(
        &run,
        ExecutionStatus::Deferred.as_str(),
        None,
        Some(&reason),
    );
    match s
        .store
        .defer_claimed(run.execution_id.clone(), until, reason.clone())
        .await
    {
        Ok(true) => {
            tracing::info!(execution = %run.execution_id, job = %run.job_id, until = %until, reason = %reason, "run deferred by a condition hook");
            engine.publish_exec(
                &run.execution_id,
                &run.job_id,
                ExecutionStatus::Deferred,
                Some(reason),
            );
            let run = QueuedRun {
                scheduled_for: Some(until),
                epoch: None,
                // Its next dispatch is a new trace, linked to this one.
                trace: run.trace.next_try(),
                ..run
            };
            let _ = engine.timer(until, run);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(execution = %run.execution_id, error = %e, "cannot record a deferred run")
        }
    }
}

fn failed_report(now: DateTime<Utc>, message: String) -> RunReport {
    RunReport::unstarted(
        Outcome::Error {
            subtype: Some("prompt".into()),
            api_status: None,
            message,
        },
        now,
    )
}

/// Records a run's end: its status (normally the outcome's), stats, log line and event — and
/// its next attempt, when one is planned, or else the runs it starts downstream — in one
/// write. Returns whether the retry was recorded, and the downstream runs recorded.
async fn finish(
    engine: &Engine,
    run: &QueuedRun,
    prompt: Option<String>,
    (report, worktree): (RunReport, Option<crate::model::WorktreeReport>),
    status: ExecutionStatus,
    retry: Option<NewRetry>,
    downstream: Option<crate::store::Settle>,
) -> (bool, Vec<Settled>) {
    let s = &engine.shared;
    let error = report.outcome.error_message();
    trace::ended(
        run,
        status.as_str(),
        Some(&report.outcome),
        error.as_deref(),
    );
    // A cost that is not a number ≥ 0 is no cost (counted as $0 and flagged, not stored).
    let cost = report.cost_usd.filter(|c| c.is_finite() && *c >= 0.0);
    let ran = report.started_at.is_some();
    let finished = FinishedRun {
        id: run.execution_id.clone(),
        prompt,
        status,
        started_at: report.started_at,
        completed_at: report.finished_at,
        output: report.result_text,
        error: error.clone(),
        outcome: Some(report.outcome),
        exit_code: report.exit_code,
        session_id: report.session_id,
        cost_usd: cost,
        usage: report.usage,
        resource_usage: report.resource_usage,
        pid: report.pid,
        worktree,
    };
    let next = retry.as_ref().map(|r| AttemptRef {
        id: r.id.clone(),
        attempt: run.retry_count + 2,
        status: ExecutionStatus::Queued,
        scheduled_for: Some(r.at),
    });
    // A full or failing disk: the end is written again, every few seconds, until it lands (a
    // restart while it waits records the run interrupted instead).
    let mut wait = STORAGE_RETRY;
    let result = loop {
        match s
            .store
            .finish_with_retry(finished.clone(), retry.clone(), downstream.clone())
            .await
        {
            Err(e) if e.is_storage_failure() && !s.kill.is_cancelled() => {
                tracing::warn!(execution = %run.execution_id, error = %e, "cannot record the end of the run (the database cannot be written): trying again in {}s", wait.as_secs());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            r => break r,
        }
    };
    match result {
        Ok((_, retried, settled)) => {
            tracing::info!(execution = %run.execution_id, job = %run.job_id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "run finished");
            if ran {
                // What it cost counts against the budgets (none reported: $0, flagged).
                super::budget::recorded(engine, &run.job_id, &run.execution_id, cost);
            }
            s.events.publish(Event::Execution {
                execution_id: run.execution_id.clone(),
                job_id: run.job_id.clone(),
                status,
                message: error,
                timestamp: s.clock.now(),
                next_attempt: next.filter(|_| retried),
            });
            (retried, settled)
        }
        Err(e) => {
            tracing::error!(execution = %run.execution_id, error = %e, "cannot record the end of a run");
            (false, Vec::new())
        }
    }
}

/// How long a run waits before its start or end is written again when the database cannot be
/// written (a full disk).
const STORAGE_RETRY: Duration = Duration::from_secs(2);

/// Receives a run's output: numbers the lines, publishes them live and stores them in batches.
struct Observer {
    engine: Engine,
    execution_id: String,
    seq: AtomicU64,
    buffer: Mutex<Vec<LogLine>>,
    /// The job's secret environment values, kept out of the log.
    scrub: crate::redact::Scrub,
}

const LOG_BATCH: usize = 256;
/// A running run's lines reach the database at most this long after they were printed.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(250);

impl Observer {
    /// A line from cnp itself on the run's log (and in the service log).
    fn note(&self, message: String) {
        tracing::info!(execution = %self.execution_id, "{message}");
        self.line(LogStream::System, &message);
    }

    /// [`Observer::note`] as a shareable callback that also stores the line at once (for
    /// background work that outlives the run).
    fn noter(self: Arc<Self>) -> Arc<dyn Fn(String) + Send + Sync> {
        Arc::new(move |m| {
            self.note(m);
            self.flush();
        })
    }

    fn flush(&self) {
        let lines = std::mem::take(&mut *self.buffer.lock().unwrap());
        self.engine.shared.store.append_logs_detached(lines);
    }
}

impl RunObserver for Observer {
    fn spawned(&self, pid: u32, at: DateTime<Utc>) {
        self.engine
            .shared
            .store
            .set_pid_detached(self.execution_id.clone(), pid, at);
    }

    fn line(&self, stream: LogStream, line: &str) {
        let l = LogLine {
            execution_id: self.execution_id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            stream,
            timestamp: self.engine.shared.clock.now(),
            line: self.scrub.text(line).into_owned(),
        };
        self.engine.shared.events.publish(Event::Log(l.clone()));
        let full = {
            let mut b = self.buffer.lock().unwrap();
            b.push(l);
            b.len() >= LOG_BATCH
        };
        if full {
            self.flush();
        }
    }
}

/// Heartbeat (so a restart can tell how long cnp was down) and history retention.
pub(super) async fn run_housekeeping(engine: Engine) {
    let s = &engine.shared;
    let mut heartbeat = tokio::time::interval(s.settings.health_check_interval);
    let mut cleanup = tokio::time::interval(Duration::from_secs(3600));
    let mut storage_told: Option<DateTime<Utc>> = None;
    loop {
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = heartbeat.tick() => {
                s.store.set_state_detached("heartbeat", s.clock.now().to_rfc3339());
                // Writes failing for want of storage: told once per episode.
                let w = s.store.write_status();
                match (w.failing, w.since) {
                    (true, Some(since)) if storage_told != Some(since) => {
                        storage_told = Some(since);
                        engine.notifications().storage_failing(since, w.last_error.as_deref().unwrap_or_default());
                    }
                    (false, _) => storage_told = None,
                    _ => {}
                }
            }
            _ = cleanup.tick() => {
                // In a cluster, the leader does it for all.
                if s.cluster.as_ref().is_some_and(|c| !c.is_leader()) {
                    continue;
                }
                let cutoff = s.settings.retention_days.map(|d| s.clock.now() - chrono::Duration::days(d.into()));
                match s.store.cleanup_executions(cutoff, s.settings.max_execution_history).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "old executions removed (retention)"),
                    Err(e) => tracing::warn!(error = %e, "execution cleanup failed"),
                }
            }
        }
    }
}

/// A run interrupted by a crash may have left its CLI process group running (children live in
/// their own group). Stop that group — only if the process is provably the run's: every run's
/// environment carries `CNP_EXECUTION_ID`, so a recycled pid is never signalled. When the pid
/// was not recorded (a crash right after the spawn), `/proc` is searched for the marker.
pub(super) fn kill_leftover(pid: Option<u32>, execution_id: &str) {
    let marker = format!("{EXECUTION_ID_ENV}={execution_id}");
    let carries_marker = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
    };
    let mut targets: Vec<u32> = pid.filter(|p| carries_marker(*p)).into_iter().collect();
    if targets.is_empty() {
        if let Ok(dir) = std::fs::read_dir("/proc") {
            targets = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| *p != std::process::id() && carries_marker(*p))
                .collect();
        }
    }
    for pid in targets {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        // The group (its children too); the process alone if it is not a group leader.
        let killed = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).is_ok()
            || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok();
        if killed {
            tracing::warn!(
                pid = pid.as_raw(),
                execution = execution_id,
                "killed the process group a crashed run left behind"
            );
        }
    }
}

/// Set in every run's environment (with [`JOB_ID_ENV`]).
pub const EXECUTION_ID_ENV: &str = "CNP_EXECUTION_ID";
pub const JOB_ID_ENV: &str = "CNP_JOB_ID";
