//! The job engine: when runs happen, in which order, and what is recorded about them.
//!
//! Data flows one way:
//!
//! ```text
//!  timer (heap of next fire instants, sleep_until the earliest)
//!    └─ fires ─▶ recorder (one transaction per burst; unique (job, slot, attempt) key)
//!                  └─ recorded runs ─▶ dispatch queue (priority 10→1, FIFO within)
//!                                        └─ dispatcher (global semaphore + per-job max_parallel)
//!                                              └─ run task ─▶ Runner (the Claude CLI) ─▶ store + event bus
//! ```
//!
//! A slot is recorded in SQLite *before* anything runs, under a unique key: a crash between
//! recording and running leaves a `queued` row that the next start dispatches (nothing lost), and
//! a slot recorded once is never recorded again (nothing doubled). Runs a crash leaves `running`
//! become `interrupted` on the next start.

mod clock;
mod hooks;
mod queue;
mod run;
mod timer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use clock::Clock;
pub use queue::{DispatchQueue, QueuedRun};
pub use run::{EXECUTION_ID_ENV, JOB_ID_ENV};

use crate::config::Config;
use crate::events::{Event, EventBus};
use crate::executor::Runner;
use crate::manifest::{JobSpec, SpecError};
use crate::model::{ExecutionStatus, Job, JobStatus, MisfirePolicy, Schedule, Trigger};
use crate::schedule::{CompiledSchedule, CronCache};
use crate::store::{NewExecution, Store, StoreError};

/// What the engine takes from the config.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub max_concurrent_jobs: usize,
    pub default_timezone: chrono_tz::Tz,
    pub misfire_policy: MisfirePolicy,
    pub misfire_grace: Duration,
    pub default_timeout: Duration,
    pub tick_interval: Duration,
    pub health_check_interval: Duration,
    pub retention_days: Option<u32>,
    pub max_execution_history: u32,
}

impl EngineSettings {
    pub fn from_config(c: &Config) -> Self {
        EngineSettings {
            max_concurrent_jobs: c.job_engine.max_concurrent_jobs as usize,
            default_timezone: c.default_timezone(),
            misfire_policy: c.scheduler.misfire_policy(),
            misfire_grace: c.scheduler.misfire_grace,
            default_timeout: c.executor.default_timeout,
            tick_interval: c.scheduler.tick_interval,
            health_check_interval: c.job_engine.health_check_interval,
            retention_days: c
                .database
                .cleanup_old_executions
                .then_some(c.job_engine.cleanup_retention_days),
            max_execution_history: c.database.max_execution_history,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings::from_config(&Config::default())
    }
}

/// Errors the engine's operations report to callers (CLI, API, manifests).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid job: {0}")]
    Invalid(#[from] SpecError),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => EngineError::NotFound { what, id },
            StoreError::Conflict(m) => EngineError::Conflict(m),
            e => EngineError::Store(e),
        }
    }
}

/// A job as the engine holds it in memory: only what scheduling and dispatch decide on (100,000
/// jobs must fit in a few tens of MiB). The full definition is read when a run starts.
struct JobEntry {
    meta: JobMeta,
    schedule: CompiledSchedule,
    /// Bumped on every change; timer entries of older generations are ignored.
    generation: u64,
    /// The latest slot decided (fired or skipped).
    last_slot: Option<DateTime<Utc>>,
    running: u32,
    queued: u32,
}

/// The scheduling-relevant part of a job's definition.
struct JobMeta {
    name: Box<str>,
    status: JobStatus,
    priority: u8,
    max_parallel: u32,
    overlap: crate::model::OverlapPolicy,
    misfire: Option<MisfirePolicy>,
}

impl JobMeta {
    fn of(job: &Job) -> Self {
        JobMeta {
            name: job.name.as_str().into(),
            status: job.status,
            priority: job.priority,
            max_parallel: job.execution_options.max_parallel.unwrap_or(1).max(1),
            overlap: job.execution_options.overlap,
            misfire: job.schedule.misfire(),
        }
    }
}

impl JobEntry {
    fn max_parallel(&self) -> u32 {
        self.meta.max_parallel
    }
}

#[derive(Default)]
struct State {
    /// By job id; the same `Arc<str>` is shared by the job's timer entries.
    jobs: HashMap<Arc<str>, JobEntry>,
    queue: DispatchQueue,
    /// Running executions and how to stop them.
    running: HashMap<String, RunningRun>,
}

struct RunningRun {
    job_id: String,
    cancel: CancellationToken,
}

/// Something for the timer to wake up for.
#[derive(Debug, Clone)]
enum TimerKey {
    /// The job's next schedule slot.
    Slot { job_id: Arc<str>, generation: u64 },
    /// A recorded execution whose start is delayed (boxed: most entries are slots).
    Delayed(Box<QueuedRun>),
}

enum TimerCmd {
    Add { due: DateTime<Utc>, key: TimerKey },
}

/// A fire on its way to the store.
struct Fire {
    execution: NewExecution,
    priority: u8,
}

struct Shared {
    store: Store,
    runner: Arc<dyn Runner>,
    clock: Clock,
    settings: EngineSettings,
    cron_cache: CronCache,
    events: EventBus,
    state: Mutex<State>,
    timer_tx: mpsc::UnboundedSender<TimerCmd>,
    fires_tx: mpsc::UnboundedSender<Vec<Fire>>,
    dispatch: Notify,
    semaphore: Arc<Semaphore>,
    /// Stops the timer, recorder and dispatcher (runs keep going).
    stop: CancellationToken,
    /// Kills running runs (after the shutdown grace).
    kill: CancellationToken,
    tasks: TaskTracker,
    /// The plugin runtime, when plugins are enabled ([`Engine::start_with_plugins`]).
    plugins: std::sync::OnceLock<crate::plugins::PluginHost>,
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// A snapshot for status displays.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStatus {
    pub jobs: usize,
    pub active_jobs: usize,
    pub queued: usize,
    pub running: usize,
    pub max_concurrent_jobs: usize,
}

impl Engine {
    /// Builds the engine and starts its tasks: recovers runs a crash left behind, schedules every
    /// active job (catching up on slots missed while down, per the misfire policy) and
    /// re-dispatches runs that were recorded but never started.
    pub async fn start(
        store: Store,
        runner: Arc<dyn Runner>,
        settings: EngineSettings,
        clock: Clock,
        events: EventBus,
    ) -> Result<Engine, EngineError> {
        Self::start_with_plugins(store, runner, settings, clock, events, None).await
    }

    /// [`Engine::start`] with a plugin runtime in place before the first run is dispatched.
    pub async fn start_with_plugins(
        store: Store,
        runner: Arc<dyn Runner>,
        settings: EngineSettings,
        clock: Clock,
        events: EventBus,
        plugins: Option<crate::plugins::PluginHost>,
    ) -> Result<Engine, EngineError> {
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let (fires_tx, fires_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            semaphore: Arc::new(Semaphore::new(settings.max_concurrent_jobs)),
            store,
            runner,
            clock,
            settings,
            cron_cache: CronCache::new(),
            events,
            state: Mutex::new(State::default()),
            timer_tx,
            fires_tx,
            dispatch: Notify::new(),
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
            tasks: TaskTracker::new(),
            plugins: plugins.map(std::sync::OnceLock::from).unwrap_or_default(),
        });
        let engine = Engine { shared };
        engine.recover().await?;
        let s = &engine.shared;
        s.tasks.spawn(timer::run_timer(engine.clone(), timer_rx));
        s.tasks.spawn(run::run_recorder(engine.clone(), fires_rx));
        s.tasks.spawn(run::run_dispatcher(engine.clone()));
        s.tasks.spawn(run::run_housekeeping(engine.clone()));
        Ok(engine)
    }

    async fn recover(&self) -> Result<(), EngineError> {
        let s = &self.shared;
        let now = s.clock.now();
        let interrupted = s.store.recover_interrupted(now).await?;
        for e in &interrupted {
            tracing::warn!(
                execution = %e.id, job = %e.job_id, pid = ?e.pid,
                "run was still going when cnp stopped: marked interrupted"
            );
            run::kill_leftover(e.pid, &e.id);
        }
        if let Some(seen) = s.store.get_state("heartbeat").await? {
            tracing::info!(last_seen = %seen, "previous cnp instance's last heartbeat");
        }
        for (job, last_slot) in s.store.jobs_with_last_slot().await? {
            let id = job.id.clone();
            if let Err(e) = self.install(job, last_slot) {
                tracing::error!(job = %id, error = %e, "job not scheduled: its schedule is invalid");
            }
        }
        let pending = s.store.pending_executions().await?;
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "re-dispatching runs recorded before the restart"
            );
        }
        for e in pending {
            let priority = {
                let st = s.state.lock().unwrap();
                st.jobs.get(e.job_id.as_str()).map(|j| j.meta.priority)
            };
            let Some(priority) = priority else { continue };
            let run = QueuedRun {
                execution_id: e.id,
                job_id: e.job_id,
                priority,
                seq: 0,
                scheduled_for: e.scheduled_for,
                retry_count: e.retry_count,
            };
            match e.scheduled_for {
                Some(t)
                    if t > now
                        && e.trigger != Trigger::Schedule
                        && e.trigger != Trigger::Catchup =>
                {
                    self.timer(t, TimerKey::Delayed(Box::new(run)))
                }
                _ => self.enqueue(run),
            }
        }
        Ok(())
    }

    /// Puts a job in memory and, when active, on the timer.
    fn install(&self, job: Job, last_slot: Option<DateTime<Utc>>) -> Result<(), EngineError> {
        let s = &self.shared;
        let compiled = self.compile(&job)?;
        let id = job.id.clone();
        let active = job.status == JobStatus::Active;
        let base = last_slot.unwrap_or(job.created_at);
        let due = compiled.next_after(base);
        let (key, generation) = {
            let mut st = s.state.lock().unwrap();
            let (running, queued, generation) = st
                .jobs
                .get(id.as_str())
                .map(|e| (e.running, e.queued, e.generation + 1))
                .unwrap_or((0, 0, 0));
            let key: Arc<str> = st
                .jobs
                .get_key_value(id.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(id.as_str()));
            st.jobs.insert(
                key.clone(),
                JobEntry {
                    meta: JobMeta::of(&job),
                    schedule: compiled,
                    generation,
                    last_slot: Some(base),
                    running,
                    queued,
                },
            );
            (key, generation)
        };
        if let (true, Some(due)) = (active, due) {
            self.timer(
                due,
                TimerKey::Slot {
                    job_id: key,
                    generation,
                },
            );
        }
        Ok(())
    }

    fn compile(&self, job: &Job) -> Result<CompiledSchedule, EngineError> {
        CompiledSchedule::compile(
            &job.schedule,
            self.shared.settings.default_timezone,
            job.created_at,
            &self.shared.cron_cache,
        )
        .map_err(|e| {
            EngineError::Invalid(SpecError {
                field: "schedule".into(),
                message: e.to_string(),
            })
        })
    }

    fn timer(&self, due: DateTime<Utc>, key: TimerKey) {
        let _ = self.shared.timer_tx.send(TimerCmd::Add { due, key });
    }

    /// The plugin runtime, if set.
    pub fn plugins(&self) -> Option<&crate::plugins::PluginHost> {
        self.shared.plugins.get()
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    /// Creates a job from a definition.
    pub async fn create_job(
        &self,
        spec: JobSpec,
        source: Option<String>,
    ) -> Result<Job, EngineError> {
        let schedule = spec.validate(self.shared.settings.default_timezone)?;
        self.check_prompt(&spec).await?;
        let now = self.shared.clock.now();
        let status = spec.initial_status();
        let job = Job {
            id: uuid::Uuid::now_v7().to_string(),
            name: String::new(),
            prompt_id: None,
            prompt: None,
            cron_expression: None,
            job_type: schedule.job_type(),
            schedule: Schedule::Manual,
            status,
            priority: spec.priority,
            execution_options: Default::default(),
            retry_config: None,
            notification_config: None,
            resource_limits: None,
            tags: Vec::new(),
            source,
            execution_count: 0,
            failure_count: 0,
            avg_execution_time_ms: 0.0,
            success_rate: 0.0,
            next_run_time: None,
            last_run_time: None,
            created_at: now,
            updated_at: now,
        };
        let mut job = with_definition(job, spec, schedule);
        let compiled = self.compile(&job)?;
        if job.status == JobStatus::Active {
            job.next_run_time = compiled.next_after(now);
        }
        let job = self.shared.store.insert_job(job).await?;
        self.install(job.clone(), Some(now))?;
        hooks::warn_unknown_plugins(self, &job);
        self.publish_job(&job, "created");
        Ok(job)
    }

    /// Replaces a job's definition, keeping its id, statistics and history. A changed schedule
    /// starts counting from now (slots of the old schedule are not caught up on).
    pub async fn update_job(
        &self,
        id: &str,
        spec: JobSpec,
        source: Option<String>,
    ) -> Result<Job, EngineError> {
        let schedule = spec.validate(self.shared.settings.default_timezone)?;
        self.check_prompt(&spec).await?;
        let old = self.job(id).await?;
        let now = self.shared.clock.now();
        let schedule_changed = old.schedule != schedule;
        // The definition decides, except that a pause made at run time (pause_job) survives a
        // definition that says "active".
        let status = match (old.status, spec.initial_status()) {
            (JobStatus::Paused, JobStatus::Active) => JobStatus::Paused,
            (_, declared) => declared,
        };
        let base = Job {
            status,
            source: source.or(old.source.clone()),
            updated_at: now,
            ..old.clone()
        };
        let mut job = with_definition(base, spec, schedule);
        let compiled = self.compile(&job)?;
        let last_slot = {
            let st = self.shared.state.lock().unwrap();
            st.jobs.get(job.id.as_str()).and_then(|e| e.last_slot)
        };
        let base = if schedule_changed {
            Some(now)
        } else {
            last_slot
        };
        job.next_run_time = if job.status == JobStatus::Active {
            compiled.next_after(base.unwrap_or(now))
        } else {
            None
        };
        let reset = schedule_changed.then_some(now);
        let job = self.shared.store.update_job(job, reset).await?;
        self.install(job.clone(), base)?;
        hooks::warn_unknown_plugins(self, &job);
        self.publish_job(&job, "updated");
        Ok(job)
    }

    /// Deletes a job, its history and logs; its running runs are cancelled.
    pub async fn delete_job(&self, id: &str) -> Result<(), EngineError> {
        let job = self.job(id).await?;
        {
            let mut st = self.shared.state.lock().unwrap();
            st.jobs.remove(job.id.as_str());
            for r in st.running.values() {
                if r.job_id == job.id {
                    r.cancel.cancel();
                }
            }
        }
        self.shared.store.delete_job(job.id.clone()).await?;
        self.shared.events.publish(Event::JobChanged {
            job_id: job.id,
            status: None,
            message: "deleted".into(),
            timestamp: self.shared.clock.now(),
        });
        Ok(())
    }

    /// Pauses a job: no new slots fire until it is resumed. Runs already going are not stopped.
    pub async fn pause_job(&self, id: &str) -> Result<Job, EngineError> {
        self.set_status(id, JobStatus::Paused).await
    }

    /// Resumes a paused or disabled job. Slots that passed meanwhile are not run.
    pub async fn resume_job(&self, id: &str) -> Result<Job, EngineError> {
        self.set_status(id, JobStatus::Active).await
    }

    async fn set_status(&self, id: &str, status: JobStatus) -> Result<Job, EngineError> {
        let job = self.job(id).await?;
        let now = self.shared.clock.now();
        let reset = (status == JobStatus::Active && job.status != JobStatus::Active).then_some(now);
        let job = self
            .shared
            .store
            .set_job_status(job.id.clone(), status, reset, now)
            .await?;
        let last_slot = match reset {
            Some(t) => Some(t),
            None => {
                let st = self.shared.state.lock().unwrap();
                st.jobs.get(job.id.as_str()).and_then(|e| e.last_slot)
            }
        };
        self.install(job.clone(), last_slot)?;
        self.publish_job(&job, status.as_str());
        Ok(job)
    }

    /// Runs a job now (whatever its status), as a new execution. Returns the execution id.
    pub async fn run_now(&self, id: &str) -> Result<String, EngineError> {
        self.run_at(id, None).await
    }

    /// Runs a job once after `delay`. Returns the execution id.
    pub async fn run_after(&self, id: &str, delay: Duration) -> Result<String, EngineError> {
        self.run_at(id, Some(delay)).await
    }

    async fn run_at(&self, id: &str, delay: Option<Duration>) -> Result<String, EngineError> {
        if self.shared.stop.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let job = self.job(id).await?;
        let now = self.shared.clock.now();
        let due = delay.map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
        let exec = NewExecution {
            id: uuid::Uuid::now_v7().to_string(),
            job_id: job.id.clone(),
            status: ExecutionStatus::Queued,
            trigger: if delay.is_some() {
                Trigger::Delayed
            } else {
                Trigger::Manual
            },
            slot: None,
            scheduled_for: Some(due.unwrap_or(now)),
            queued_at: now,
            retry_count: 0,
            prompt: None,
            error: None,
        };
        let exec_id = exec.id.clone();
        self.shared.store.insert_execution(exec).await?;
        let run = QueuedRun {
            execution_id: exec_id.clone(),
            job_id: job.id.clone(),
            priority: job.priority,
            seq: 0,
            scheduled_for: Some(due.unwrap_or(now)),
            retry_count: 0,
        };
        self.publish_exec(
            &run.execution_id,
            &run.job_id,
            ExecutionStatus::Queued,
            None,
        );
        match due {
            Some(t) => self.timer(t, TimerKey::Delayed(Box::new(run))),
            None => self.enqueue(run),
        }
        Ok(exec_id)
    }

    /// Cancels a queued or running execution. Returns `false` if it had already finished.
    pub async fn cancel_execution(&self, execution_id: &str) -> Result<bool, EngineError> {
        let exec = self
            .shared
            .store
            .get_execution(execution_id.to_owned())
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: "execution",
                id: execution_id.to_owned(),
            })?;
        {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(r) = st.running.get(execution_id) {
                r.cancel.cancel();
                return Ok(true);
            }
            if st.queue.remove(execution_id).is_some() {
                if let Some(e) = st.jobs.get_mut(exec.job_id.as_str()) {
                    e.queued = e.queued.saturating_sub(1);
                }
            }
        }
        let now = self.shared.clock.now();
        let changed = self
            .shared
            .store
            .set_pending_status(
                execution_id.to_owned(),
                ExecutionStatus::Cancelled,
                Some("cancelled before it started".into()),
                now,
            )
            .await?;
        if changed {
            self.publish_exec(execution_id, &exec.job_id, ExecutionStatus::Cancelled, None);
        }
        Ok(changed)
    }

    /// A job by id or name.
    pub async fn job(&self, id_or_name: &str) -> Result<Job, EngineError> {
        self.reload(id_or_name).await
    }

    async fn reload(&self, id_or_name: &str) -> Result<Job, EngineError> {
        self.shared
            .store
            .get_job(id_or_name.to_owned())
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: "job",
                id: id_or_name.to_owned(),
            })
    }

    async fn check_prompt(&self, spec: &JobSpec) -> Result<(), EngineError> {
        if let Some(pid) = &spec.prompt_id {
            if self.shared.store.get_prompt(pid.clone()).await?.is_none() {
                return Err(EngineError::Invalid(SpecError {
                    field: "prompt_id".into(),
                    message: format!("no stored prompt `{pid}` (create it first)"),
                }));
            }
        }
        Ok(())
    }

    pub fn status(&self) -> EngineStatus {
        let st = self.shared.state.lock().unwrap();
        EngineStatus {
            jobs: st.jobs.len(),
            active_jobs: st
                .jobs
                .values()
                .filter(|e| e.meta.status == JobStatus::Active)
                .count(),
            queued: st.queue.len(),
            running: st.running.len(),
            max_concurrent_jobs: self.shared.settings.max_concurrent_jobs,
        }
    }

    /// Stops scheduling and dispatching, lets running runs finish for up to `grace`, then kills
    /// them (recorded as interrupted), and waits until everything is recorded.
    pub async fn shutdown(&self, grace: Duration) {
        let s = &self.shared;
        s.stop.cancel();
        s.tasks.close();
        let running = s.state.lock().unwrap().running.len();
        if running > 0 {
            tracing::info!(running, grace = ?grace, "waiting for running jobs to finish");
        }
        if tokio::time::timeout(grace, s.tasks.wait()).await.is_err() {
            let running = s.state.lock().unwrap().running.len();
            tracing::warn!(running, "shutdown grace over: stopping the remaining runs");
            s.kill.cancel();
            s.tasks.wait().await;
        }
        // Committed before the writer stops.
        let _ = s
            .store
            .set_state("heartbeat", s.clock.now().to_rfc3339())
            .await;
    }

    fn enqueue(&self, run: QueuedRun) {
        run::enqueue(self, run);
    }

    fn publish_job(&self, job: &Job, message: &str) {
        self.shared.events.publish(Event::JobChanged {
            job_id: job.id.clone(),
            status: Some(job.status),
            message: message.into(),
            timestamp: self.shared.clock.now(),
        });
    }

    fn publish_exec(
        &self,
        execution_id: &str,
        job_id: &str,
        status: ExecutionStatus,
        message: Option<String>,
    ) {
        self.shared.events.publish(Event::Execution {
            execution_id: execution_id.to_owned(),
            job_id: job_id.to_owned(),
            status,
            message,
            timestamp: self.shared.clock.now(),
        });
    }
}

/// `job` with the definition fields of `spec` (validated, with its canonical `schedule`).
fn with_definition(job: Job, spec: JobSpec, schedule: Schedule) -> Job {
    let spec = spec.normalized();
    Job {
        name: spec.name.trim().to_owned(),
        prompt_id: spec.prompt_id,
        prompt: spec.prompt,
        cron_expression: match &schedule {
            Schedule::Cron { expression, .. } => Some(expression.clone()),
            _ => None,
        },
        job_type: schedule.job_type(),
        schedule,
        priority: spec.priority,
        execution_options: spec.execution,
        retry_config: spec.retry,
        notification_config: spec.notifications,
        resource_limits: spec.resource_limits,
        tags: spec.tags,
        ..job
    }
}
