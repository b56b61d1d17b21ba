//! The job engine: when runs happen, in which order, and what is recorded about them.
//!
//! Data flows one way:
//!
//! ```text
//!  timer (heaps of next slots and of recorded runs waiting for their time)
//!    └─ slots decided 1.5 s ahead ─▶ recorder (one transaction per burst; unique (job, slot, attempt) key)
//!         └─ recorded runs ─▶ timer, until their slot ─▶ dispatch queue (priority 10→1, FIFO within)
//!                                        └─ dispatcher (global semaphore + per-job max_parallel)
//!                                              └─ run task ─▶ Runner (the Claude CLI) ─▶ store + event bus
//! ```
//!
//! A slot is recorded in SQLite *before* anything runs — ahead of its due instant, so its release
//! costs no I/O — under a unique key: a crash between recording and running leaves a `queued`
//! row that the next start dispatches, at its slot if that is still ahead (nothing lost, nothing
//! early), and a slot recorded once is never recorded again (nothing doubled). Runs a crash
//! leaves `running` become `interrupted` on the next start. See `timer.rs` for how runs recorded
//! ahead are withdrawn when their job is paused, changed or deleted, or cnp stops first.

mod backup;
mod budget;
mod cluster;
mod cooldown;
mod hooks;
mod jobs;
mod queue;
mod run;
mod session;
mod timer;
pub mod trace;
mod workflow;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;

pub use backup::{
    backup_target, file_stamp, periodic_backups, periodic_name, BackupFailure, BackupSettings,
    BackupStatus, LastBackup, PeriodicBackups, BACKUP_RETRY,
};
pub use budget::{BudgetStatus, Exceeded, Scope, ScopeStatus, WindowStatus};
pub use cluster::ClusterSettings;
pub use cooldown::Cooldown;
pub use queue::{DispatchQueue, QueuedRun};
pub use run::{EXECUTION_ID_ENV, JOB_ID_ENV, LOG_FLUSH_INTERVAL};

use crate::config::Config;
use crate::events::{Event, EventBus};
use crate::executor::Runner;
use crate::manifest::{JobSpec, SpecError};
use crate::model::{
    ExecutionDetail, ExecutionOptions, ExecutionStatus, Job, JobStatus, MisfirePolicy, RetryConfig,
    RunStatus, Schedule, Trigger,
};
use crate::schedule::{CompiledSchedule, CronCache};
use crate::store::{JobScheduling, NewExecution, Store, StoreError};
use jobs::{JobEntry, JobId, Jobs};

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
    /// `[retry]`: for jobs without their own `retry` (`None`: not retried).
    pub default_retry: Option<crate::model::RetryConfig>,
    /// `[cooldown]`.
    pub cooldown: crate::config::CooldownConfig,
    /// `[executor] session_timeout`: how old a session `session: continue_job` resumes may be.
    pub session_timeout: Duration,
    /// Where runs' git worktrees go (`worktrees/` beside the database).
    pub worktree_dir: std::path::PathBuf,
    /// `[budget]`: the global spending caps (an operator may override them at run time).
    pub budget: crate::model::Budget,
    /// `[database] backup`: periodic backups (`None`: off).
    pub backup: Option<BackupSettings>,
    /// `[database] lease` and `heartbeat`: for several instances on PostgreSQL.
    pub cluster: ClusterSettings,
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
            default_retry: c.retry.as_retry_config(),
            cooldown: c.cooldown.clone(),
            session_timeout: c.executor.session_timeout,
            worktree_dir: c.worktree_dir(),
            budget: c.budget.clone(),
            backup: c.database.backup.as_ref().map(|b| BackupSettings {
                every: b.every,
                keep: b.keep,
                directory: c.backup_dir().unwrap_or_else(|| "backups".into()),
            }),
            cluster: ClusterSettings {
                lease: c.database.lease,
                heartbeat: c.database.heartbeat,
            },
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

#[derive(Default)]
struct State {
    jobs: Jobs,
    /// Source of job generations (see [`JobEntry::generation`]).
    next_generation: u32,
    queue: DispatchQueue,
    /// Running executions and how to stop them.
    running: HashMap<String, RunningRun>,
    /// The usage-limit cooldown in force: while set, the dispatcher starts nothing.
    cooldown: Option<Cooldown>,
    /// Spending caps, what was spent, and the runs they hold.
    budgets: budget::Budgets,
}

struct RunningRun {
    job_id: String,
    cancel: CancellationToken,
}

/// Something for the timer to wake up for.
enum TimerCmd {
    /// A job's next schedule slot (the job by index in the job table, and its generation).
    Slot {
        due: DateTime<Utc>,
        job: u32,
        generation: u32,
    },
    /// A recorded execution whose start waits for `due`: delayed runs, and scheduled runs
    /// recorded ahead of their slot (boxed: most entries are slots).
    Delayed {
        due: DateTime<Utc>,
        run: Box<QueuedRun>,
    },
}

/// A fire on its way to the store.
struct Fire {
    execution: NewExecution,
    priority: u8,
    /// The job's epoch when the slot was decided (see [`JobEntry::epoch`]).
    epoch: u32,
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
    /// Where run events go ([`Engine::start_with_notifications`]; a default one otherwise).
    notifications: std::sync::OnceLock<crate::notify::NotificationService>,
    /// Wakes the cooldown task (entered, extended, cleared).
    cooldown_changed: Notify,
    /// Wakes the budget task (caps changed).
    budget_changed: Notify,
    /// Job definitions created or replaced since the heap was last trimmed (see
    /// [`run_heap_trimmer`]).
    defined: std::sync::atomic::AtomicU64,
    /// Wakes the heap trimmer once a bulk of definitions has come in.
    bulk_defined: Notify,
    /// The jobs with a `depends_on`, and who is downstream of whom.
    graph: Mutex<crate::workflow::Graph>,
    /// The last backup, the next periodic one, the last failure.
    backup: Mutex<BackupStatus>,
    /// On PostgreSQL: this instance as a member of the cluster of instances on the database.
    cluster: Option<cluster::Cluster>,
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
    /// Whether a usage-limit cooldown holds runs back (its detail: [`Engine::cooldown`]).
    pub cooldown_active: bool,
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
        Self::start_with_notifications(store, runner, settings, clock, events, plugins, None).await
    }

    /// [`Engine::start_with_plugins`] with the notification service run events go to (`None`:
    /// one with the default settings, made on first use).
    pub async fn start_with_notifications(
        store: Store,
        runner: Arc<dyn Runner>,
        settings: EngineSettings,
        clock: Clock,
        events: EventBus,
        plugins: Option<crate::plugins::PluginHost>,
        notifications: Option<crate::notify::NotificationService>,
    ) -> Result<Engine, EngineError> {
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let (fires_tx, fires_rx) = mpsc::unbounded_channel();
        let initial_backup = backup::initial_status(settings.backup.as_ref());
        let cluster = store
            .postgres()
            .map(|_| cluster::Cluster::new(settings.cluster, clock.now()));
        if let Some(c) = &cluster {
            store.set_owner(c.id.clone());
        }
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
            notifications: notifications
                .map(std::sync::OnceLock::from)
                .unwrap_or_default(),
            cooldown_changed: Notify::new(),
            budget_changed: Notify::new(),
            defined: Default::default(),
            bulk_defined: Notify::new(),
            graph: Mutex::new(Default::default()),
            backup: Mutex::new(initial_backup),
            cluster,
        });
        let engine = Engine { shared };
        // On PostgreSQL: the leader lock first, so a lone instance starts as one instance does.
        let first = cluster::first_try(&engine)?;
        engine.recover().await?;
        let s = &engine.shared;
        s.tasks.spawn(timer::run_timer(engine.clone(), timer_rx));
        s.tasks.spawn(run::run_recorder(engine.clone(), fires_rx));
        s.tasks.spawn(run::run_dispatcher(engine.clone()));
        s.tasks.spawn(run::run_housekeeping(engine.clone()));
        s.tasks.spawn(cooldown::run_cooldown(engine.clone()));
        s.tasks.spawn(budget::run_budget(engine.clone()));
        s.tasks.spawn(backup::run_backups(engine.clone()));
        s.tasks.spawn(run_heap_trimmer(engine.clone()));
        cluster::start(&engine, first).await?;
        Ok(engine)
    }

    async fn recover(&self) -> Result<(), EngineError> {
        let s = &self.shared;
        let now = s.clock.now();
        // Runs cnp's stop cut short are interrupted; those whose policy says so get one linked
        // attempt, due now (re-dispatched below with the other pending runs). In a cluster:
        // only those whose owner's lease ran out (the others' runs are going).
        let scope = match &s.cluster {
            None => crate::store::Orphans::All,
            Some(_) => crate::store::Orphans::LeaseExpired(now),
        };
        let interrupted = self.interrupt_orphans(scope).await?;
        // Worktrees of runs a stop cut short never got their clean-up: removed now (those kept
        // on purpose stay).
        // (Only read the kept ones when there is any worktree at all.)
        if crate::executor::worktree::any(&s.settings.worktree_dir) {
            let kept = s.store.kept_worktrees().await?;
            let pruned =
                crate::executor::worktree::prune(&s.settings.worktree_dir, |id| kept.contains(id))
                    .await;
            if pruned > 0 {
                tracing::info!(pruned, dir = %s.settings.worktree_dir.display(), "stale run worktrees removed");
            }
        }
        let loaded_edges = workflow::load(self).await?;
        if loaded_edges > 0 {
            tracing::info!(
                jobs = loaded_edges,
                "jobs with upstreams (depends_on) loaded"
            );
        }
        if let Some(seen) = s.store.get_state("heartbeat").await? {
            tracing::info!(last_seen = %seen, "previous cnp instance's last heartbeat");
        }
        // A cooldown in force when cnp stopped holds runs back from the start.
        cooldown::restore(self).await?;
        // What was spent in the budgets' windows, and the scopes over a cap.
        budget::restore(self, self.shared.settings.budget.clone()).await?;
        // Runs recorded ahead of a slot that came due while cnp was down are withdrawn: the
        // misfire policy decides those slots (below, as the timer finds them late).
        let grace = chrono::Duration::from_std(s.settings.misfire_grace).unwrap_or_default();
        // (In a cluster only the leader; one that takes the timer later does it then:
        // [`Engine::lead`].)
        let withdrawn = match &s.cluster {
            Some(c) if !c.is_leader() => 0,
            _ => s.store.withdraw_missed_ahead(now - grace).await?,
        };
        if withdrawn > 0 {
            tracing::info!(
                withdrawn,
                "runs recorded ahead of slots that came due while cnp was down: left to the misfire policy"
            );
        }
        let loaded = self.install_all().await?;
        // In a cluster, members claim pending runs as they come due.
        let pending = match s.cluster {
            None => s.store.pending_executions().await?,
            Some(_) => Vec::new(),
        };
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "re-dispatching runs recorded before the restart"
            );
        }
        for e in pending {
            let found = {
                let st = s.state.lock().unwrap();
                st.jobs
                    .get(e.job_id.as_str())
                    .map(|j| (j.priority, j.epoch))
            };
            let Some((priority, epoch)) = found else {
                continue;
            };
            let scheduled = matches!(e.trigger, Trigger::Schedule | Trigger::Catchup);
            let run = QueuedRun {
                execution_id: e.id,
                job_id: e.job_id,
                priority,
                seq: 0,
                scheduled_for: e.scheduled_for,
                retry_count: e.retry_count,
                // Scheduled runs recorded ahead of their slot are withdrawn if the job is paused
                // or changed before the slot.
                epoch: scheduled.then_some(epoch),
                slot: scheduled.then_some(e.scheduled_for).flatten(),
                trace: Default::default(),
            };
            match e.scheduled_for {
                // Not due yet (a delayed run, or a slot recorded ahead): it waits for its time.
                Some(t) if t > now => {
                    self.timer(t, run);
                }
                // Already due: dispatched as before the restart (whatever the job's status).
                _ => self.enqueue(QueuedRun { epoch: None, ..run }),
            }
        }
        // Interrupted runs that are not retried have ended: what depends on them is decided now;
        // and what a crash cut short between an end and its settle is settled.
        for (e, retry) in &interrupted {
            if retry.is_none() {
                workflow::settle_ended(self, &e.job_id, &e.id).await;
            }
        }
        let settled = workflow::reconcile(self, now - chrono::Duration::days(7)).await?;
        if settled > 0 {
            tracing::info!(
                runs = settled,
                "workflow runs whose downstream a stop cut short: settled"
            );
        }
        if loaded >= 10_000 {
            // Loading many jobs leaves the allocator with freed row buffers; hand them back.
            trim_heap();
        }
        Ok(())
    }

    /// Marks the runs `scope` names, left `running` by a process that is gone, `interrupted`,
    /// and records one more attempt of those whose retry policy says so (due now). Kills what
    /// such a run left behind on this machine. (What depends on those not retried is for the
    /// caller to settle.)
    async fn interrupt_orphans(
        &self,
        scope: crate::store::Orphans,
    ) -> Result<Vec<(crate::model::JobExecution, Option<String>)>, EngineError> {
        let s = &self.shared;
        let now = s.clock.now();
        let mut retries = std::collections::HashMap::new();
        let mut policies: HashMap<String, Option<RetryConfig>> = HashMap::new();
        for e in s.store.orphaned_runs(scope).await? {
            if !policies.contains_key(&e.job_id) {
                let job = s.store.get_job(e.job_id.clone()).await?;
                let cfg = job.and_then(|j| hooks::retry_config(self, &j).cloned());
                policies.insert(e.job_id.clone(), cfg);
            }
            let Some(cfg) = &policies[&e.job_id] else {
                continue;
            };
            if cfg.retries_interrupted() && e.retry_count + 1 < cfg.max_attempts {
                let retry = crate::store::NewRetry {
                    id: uuid::Uuid::now_v7().to_string(),
                    at: now,
                    now,
                };
                retries.insert(e.id, retry);
            }
        }
        let interrupted = s.store.recover_orphans(now, retries, scope).await?;
        let why = match scope {
            crate::store::Orphans::All => "run was still going when cnp stopped",
            crate::store::Orphans::LeaseExpired(_) => {
                "run's cluster member stopped renewing its lease"
            }
        };
        for (e, retry) in &interrupted {
            match retry {
                Some(id) => tracing::warn!(
                    execution = %e.id, job = %e.job_id, pid = ?e.pid, retry = %id,
                    "{why}: marked interrupted, attempt {} recorded (on_interrupt = retry)",
                    e.retry_count + 2
                ),
                None => tracing::warn!(
                    execution = %e.id, job = %e.job_id, pid = ?e.pid,
                    "{why}: marked interrupted"
                ),
            }
            // Only a process that carries the run's id in its environment is killed (a pid
            // from another machine of the cluster means nothing here).
            run::kill_leftover(e.pid, &e.id);
            self.publish_exec(&e.id, &e.job_id, ExecutionStatus::Interrupted, None);
        }
        Ok(interrupted)
    }

    /// Forgets a job deleted (here or by another member of the cluster): out of memory, its
    /// runs going here cancelled.
    fn forget_job(&self, job_id: &str) {
        workflow::remove(self, job_id);
        let mut st = self.shared.state.lock().unwrap();
        st.jobs.remove(job_id);
        st.budgets.forget_job(job_id);
        for r in st.running.values() {
            if r.job_id == job_id {
                r.cancel.cancel();
            }
        }
    }

    /// Every stored job in memory and, when active, on the timer, from its last recorded slot.
    /// Streamed: only the scheduling columns, one row at a time (100,000 full `Job` values would
    /// cost ~100 MiB at once). Returns how many jobs there were.
    async fn install_all(&self) -> Result<usize, EngineError> {
        let engine = self.clone();
        Ok(self
            .shared
            .store
            .for_each_job_scheduling(move |j| engine.install_stored(&j))
            .await?)
    }

    /// [`Engine::install`] of a job as stored; an invalid schedule is logged (the job is not
    /// scheduled).
    fn install_stored(&self, j: &JobScheduling) {
        if let Err(e) = self.install(&j.as_def(), j.last_slot, false) {
            tracing::error!(job = %j.id, error = %e, "job not scheduled: its schedule is invalid");
        }
    }

    /// Puts a job in memory and, when active, on the timer. `withdraw`: runs recorded ahead of
    /// their slot under the job's previous definition must not run (paused, disabled, schedule
    /// changed).
    fn install(
        &self,
        job: &JobDef<'_>,
        last_slot: Option<DateTime<Utc>>,
        withdraw: bool,
    ) -> Result<(), EngineError> {
        let s = &self.shared;
        let compiled = self.compile_def(job)?;
        let active = job.status == JobStatus::Active;
        let base = last_slot.unwrap_or(job.created_at);
        let due = compiled.next_after(base);
        let (idx, generation) = {
            let mut st = s.state.lock().unwrap();
            st.next_generation = st.next_generation.wrapping_add(1);
            let generation = st.next_generation;
            let (running, queued, epoch) = st
                .jobs
                .get(job.id)
                .map(|e| (e.running, e.queued, e.epoch.wrapping_add(withdraw as u32)))
                .unwrap_or((0, 0, 0));
            let idx = st.jobs.upsert(JobEntry {
                id: JobId::new(job.id),
                schedule: compiled,
                last_slot: Some(base),
                generation,
                epoch,
                running,
                queued,
                // Runs resuming the job's own session never run at once: one at a time.
                max_parallel: match job.options.session {
                    crate::model::SessionMode::ContinueJob => 1,
                    crate::model::SessionMode::New => job.options.max_parallel.unwrap_or(1).max(1),
                },
                misfire: job.schedule.misfire(),
                status: job.status,
                priority: job.priority,
                overlap: job.options.overlap,
            });
            if st.budgets.set_job_cap(job.id, job.budget) {
                s.budget_changed.notify_one();
            }
            (idx, generation)
        };
        if let (true, Some(due)) = (active, due) {
            let _ = s.timer_tx.send(TimerCmd::Slot {
                due,
                job: idx,
                generation,
            });
        }
        Ok(())
    }

    fn compile(&self, job: &Job) -> Result<CompiledSchedule, EngineError> {
        self.compile_def(&JobDef::of(job))
    }

    fn compile_def(&self, job: &JobDef<'_>) -> Result<CompiledSchedule, EngineError> {
        CompiledSchedule::compile(
            job.schedule,
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

    /// Starts a recorded run at `due` (in memory; the run is already recorded).
    /// Gives the run back if the timer has stopped.
    fn timer(&self, due: DateTime<Utc>, run: QueuedRun) -> Option<QueuedRun> {
        // In a cluster, whichever member has room claims a recorded run when it is due; only
        // the leader's slots recorded ahead stay on its timer (withdrawn if it stops first, as
        // on one instance).
        if self.shared.cluster.is_some() && run.epoch.is_none() {
            cluster::poke(self);
            return None;
        }
        self.shared
            .timer_tx
            .send(TimerCmd::Delayed {
                due,
                run: Box::new(run),
            })
            .err()
            .map(|e| match e.0 {
                TimerCmd::Delayed { run, .. } => *run,
                TimerCmd::Slot { .. } => unreachable!("sent a delayed run"),
            })
    }

    /// The plugin runtime, if set.
    pub fn plugins(&self) -> Option<&crate::plugins::PluginHost> {
        self.shared.plugins.get()
    }

    /// An execution with its run's chain of attempts (see [`ExecutionDetail`]).
    pub async fn execution_detail(&self, id: &str) -> Result<ExecutionDetail, EngineError> {
        let store = &self.shared.store;
        // Two reads: the run's end may commit between them. The execution is read last and its
        // status is the one its attempt shows, so `status` and `run_status` always agree.
        let mut attempts = store.attempts_of(id.to_owned()).await?;
        let execution =
            store
                .get_execution(id.to_owned())
                .await?
                .ok_or_else(|| EngineError::NotFound {
                    what: "execution",
                    id: id.to_owned(),
                })?;
        if let Some(a) = attempts.iter_mut().find(|a| a.id == execution.id) {
            a.status = execution.status;
        }
        let job = store.get_job(execution.job_id.clone()).await?;
        let max_attempts = job
            .as_ref()
            .and_then(|j| hooks::retry_config(self, j))
            .map_or(1, |r| r.max_attempts.max(1));
        let attempt = execution.retry_count + 1;
        let next_attempt = attempts.iter().find(|a| a.attempt == attempt + 1).cloned();
        Ok(ExecutionDetail {
            attempt,
            max_attempts: max_attempts.max(attempts.len() as u32),
            next_attempt,
            run_status: RunStatus::of(&attempts),
            attempts,
            execution,
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The notification service (one with the default settings unless the engine was started
    /// with one).
    pub fn notifications(&self) -> &crate::notify::NotificationService {
        let s = &self.shared;
        s.notifications.get_or_init(|| {
            crate::notify::NotificationService::start(
                crate::notify::NotifySettings::default(),
                s.store.clone(),
                s.clock.clone(),
                s.plugins.get().cloned(),
            )
        })
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
        self.create_job_as(spec, source, None).await
    }

    /// Creates a job from a definition that `template` rendered (`None`: a job defined
    /// directly).
    pub async fn create_job_as(
        &self,
        spec: JobSpec,
        source: Option<String>,
        template: Option<crate::model::TemplateUse>,
    ) -> Result<Job, EngineError> {
        let schedule = spec.validate(self.shared.settings.default_timezone)?;
        self.check_prompt(&spec).await?;
        let upstreams = workflow::check(self, None, spec.name.trim(), &spec.depends_on).await?;
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
            depends_on: Default::default(),
            budget: None,
            source,
            template,
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
        workflow::install(self, &job, &upstreams);
        self.install(&JobDef::of(&job), Some(now), false)?;
        hooks::warn_unknown_plugins(self, &job);
        self.publish_job(&job, "created");
        self.defined();
        Ok(job)
    }

    /// Counts a definition created or replaced; a bulk of them wakes the heap trimmer.
    fn defined(&self) {
        let s = &self.shared;
        if s.defined.fetch_add(1, Ordering::Relaxed) + 1 == BULK_DEFINITIONS {
            s.bulk_defined.notify_one();
        }
    }

    /// Replaces a job's definition, keeping its id, statistics and history. A changed schedule
    /// starts counting from now (slots of the old schedule are not caught up on). A job made
    /// from a template is detached from it (a definition given in full is not re-rendered).
    pub async fn update_job(
        &self,
        id: &str,
        spec: JobSpec,
        source: Option<String>,
    ) -> Result<Job, EngineError> {
        self.update_job_as(id, spec, source, None).await
    }

    /// [`Engine::update_job`] with a definition that `template` rendered.
    pub async fn update_job_as(
        &self,
        id: &str,
        spec: JobSpec,
        source: Option<String>,
        template: Option<crate::model::TemplateUse>,
    ) -> Result<Job, EngineError> {
        let schedule = spec.validate(self.shared.settings.default_timezone)?;
        self.check_prompt(&spec).await?;
        let old = self.job(id).await?;
        let upstreams =
            workflow::check(self, Some(&old.id), spec.name.trim(), &spec.depends_on).await?;
        workflow::check_referenced(self, &old, Some(spec.name.trim()))?;
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
            template,
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
        // Runs recorded ahead of a coming slot are withdrawn when the job stops being active or
        // its schedule changes (in the same write); otherwise they run with the new definition.
        let withdraw = schedule_changed || job.status != JobStatus::Active;
        let job = self
            .shared
            .store
            .update_job(job, reset, withdraw.then_some(now))
            .await?;
        workflow::install(self, &job, &upstreams);
        self.install(&JobDef::of(&job), base, withdraw)?;
        hooks::warn_unknown_plugins(self, &job);
        self.publish_job(&job, "updated");
        self.defined();
        Ok(job)
    }

    /// Deletes a job, its history and logs; its running runs are cancelled.
    pub async fn delete_job(&self, id: &str) -> Result<(), EngineError> {
        let job = self.job(id).await?;
        workflow::check_referenced(self, &job, None)?;
        self.forget_job(&job.id);
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
        let withdraw = status != JobStatus::Active;
        let job = self
            .shared
            .store
            .set_job_status(job.id.clone(), status, reset, withdraw.then_some(now), now)
            .await?;
        let last_slot = match reset {
            Some(t) => Some(t),
            None => {
                let st = self.shared.state.lock().unwrap();
                st.jobs.get(job.id.as_str()).and_then(|e| e.last_slot)
            }
        };
        self.install(&JobDef::of(&job), last_slot, withdraw)?;
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

    /// Runs a job now for its webhook, with the prompt its payload rendered (it is the prompt of
    /// this run and of its retries). Returns the execution id.
    pub async fn run_webhook(&self, id: &str, prompt: String) -> Result<String, EngineError> {
        self.queue_run(id, None, Trigger::Webhook, Some(prompt))
            .await
    }

    async fn run_at(&self, id: &str, delay: Option<Duration>) -> Result<String, EngineError> {
        let trigger = if delay.is_some() {
            Trigger::Delayed
        } else {
            Trigger::Manual
        };
        self.queue_run(id, delay, trigger, None).await
    }

    async fn queue_run(
        &self,
        id: &str,
        delay: Option<Duration>,
        trigger: Trigger,
        prompt: Option<String>,
    ) -> Result<String, EngineError> {
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
            trigger,
            slot: None,
            scheduled_for: Some(due.unwrap_or(now)),
            queued_at: now,
            retry_count: 0,
            prompt,
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
            epoch: None,
            slot: None,
            trace: Default::default(),
        };
        self.publish_exec(
            &run.execution_id,
            &run.job_id,
            ExecutionStatus::Queued,
            None,
        );
        match due {
            Some(t) => {
                self.timer(t, run);
            }
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
        // In a cluster, a run going on another member is cancelled there.
        if exec.status == ExecutionStatus::Running && cluster::cancel_elsewhere(self, execution_id)
        {
            return Ok(true);
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
            workflow::settle_ended(self, &exec.job_id, execution_id).await;
        }
        Ok(changed)
    }

    /// A job's name (for messages; its id when it is gone).
    async fn job_name(&self, job_id: &str) -> String {
        if let Some(n) = self.shared.graph.lock().unwrap().node(job_id) {
            return n.name.clone();
        }
        match self.shared.store.job_id_and_name(job_id.to_owned()).await {
            Ok(Some((_, name))) => name,
            _ => job_id.to_owned(),
        }
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
                .filter(|e| e.status == JobStatus::Active)
                .count(),
            queued: st.queue.len(),
            running: st.running.len(),
            max_concurrent_jobs: self.shared.settings.max_concurrent_jobs,
            cooldown_active: st.cooldown.is_some(),
        }
    }

    /// The usage-limit cooldown in force, if any.
    pub fn cooldown(&self) -> Option<Cooldown> {
        let st = self.shared.state.lock().unwrap();
        st.cooldown.clone().map(|mut c| {
            c.deferred = st.queue.len();
            c
        })
    }

    /// Ends the cooldown now (by hand): held runs are released in priority order. Returns the
    /// cooldown that was cleared (`None` when there was none).
    pub async fn clear_cooldown(&self) -> Result<Option<Cooldown>, EngineError> {
        cooldown::end(self, "cleared by hand").await
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
        // In a cluster: the heartbeat stops now that nothing runs here; runs claimed and not
        // started go back to the other members.
        cluster::leave(self).await;
        // Committed before the writer stops.
        let _ = s
            .store
            .set_state("heartbeat", s.clock.now().to_rfc3339())
            .await;
    }

    fn enqueue(&self, run: QueuedRun) {
        if self.shared.cluster.is_some() {
            // Recorded: whichever member has room claims it.
            cluster::poke(self);
            return;
        }
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
            next_attempt: None,
        });
    }
}

/// What scheduling needs of a job: from a full [`Job`], or a row streamed at start-up.
struct JobDef<'a> {
    id: &'a str,
    schedule: &'a Schedule,
    status: JobStatus,
    priority: u8,
    options: &'a ExecutionOptions,
    created_at: DateTime<Utc>,
    budget: Option<&'a crate::model::Budget>,
}

impl<'a> JobDef<'a> {
    fn of(job: &'a Job) -> Self {
        JobDef {
            id: &job.id,
            schedule: &job.schedule,
            status: job.status,
            priority: job.priority,
            options: &job.execution_options,
            created_at: job.created_at,
            budget: job.budget.as_ref(),
        }
    }
}

trait AsDef {
    fn as_def(&self) -> JobDef<'_>;
}

impl AsDef for JobScheduling {
    fn as_def(&self) -> JobDef<'_> {
        JobDef {
            id: &self.id,
            schedule: &self.schedule,
            status: self.status,
            priority: self.priority,
            options: &self.execution_options,
            created_at: self.created_at,
            budget: self.budget.as_ref(),
        }
    }
}

/// Definitions created or replaced, since the last trim, that make a bulk worth trimming after.
const BULK_DEFINITIONS: u64 = 1_000;
/// How long no definition must arrive before the heap is trimmed after a bulk of them.
const BULK_QUIET: Duration = Duration::from_millis(500);

/// Trims the heap once a bulk of job definitions (an `apply` of a thousand manifests, a
/// platform's API client creating jobs) has come in and gone quiet: creating a job allocates
/// ~10 KiB of transient values (the definition, its JSON, the write) for the ~100 B the engine
/// keeps, and glibc keeps most of what was freed: 100,000 jobs left ~45 MiB of RSS growth for
/// ~24 MiB of live memory (docs/benchmarks.md).
async fn run_heap_trimmer(engine: Engine) {
    let s = &engine.shared;
    loop {
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => return,
            _ = s.bulk_defined.notified() => {}
        }
        // Until the definitions stop coming.
        loop {
            let seen = s.defined.load(Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = s.stop.cancelled() => return,
                _ = tokio::time::sleep(BULK_QUIET) => {}
            }
            if s.defined.load(Ordering::Relaxed) == seen {
                break;
            }
        }
        s.defined.store(0, Ordering::Relaxed);
        // A few milliseconds for a heap of tens of MiB, off the async workers.
        let _ = tokio::task::spawn_blocking(trim_heap).await;
    }
}

/// Returns freed heap memory to the system (glibc keeps it otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
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
        depends_on: spec.depends_on,
        budget: spec.budget,
        ..job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never called: the jobs below are manual.
    struct NoRunner;

    impl Runner for NoRunner {
        fn run(
            &self,
            _: crate::executor::RunRequest,
            _: Arc<dyn crate::executor::RunObserver>,
        ) -> crate::executor::BoxFuture<crate::executor::RunReport> {
            unreachable!("no run is started")
        }
    }

    fn manual(name: &str) -> JobSpec {
        serde_json::from_value(serde_json::json!({ "name": name, "prompt": "p" })).unwrap()
    }

    /// A bulk of definitions wakes the trimmer once they stop coming; a few do not.
    #[tokio::test(start_paused = true)]
    async fn a_bulk_of_definitions_trims_the_heap_once_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_inline(&dir.path().join("cnp.db")).unwrap();
        let clock = Clock::tokio_from(Utc::now());
        let engine = Engine::start(
            store,
            Arc::new(NoRunner),
            EngineSettings::default(),
            clock,
            EventBus::default(),
        )
        .await
        .unwrap();
        let defined = || engine.shared.defined.load(Ordering::Relaxed);
        for i in 0..10 {
            engine
                .create_job(manual(&format!("few-{i}")), None)
                .await
                .unwrap();
        }
        tokio::time::sleep(BULK_QUIET * 4).await;
        assert_eq!(defined(), 10, "fewer than a bulk: not trimmed");

        for i in 0..BULK_DEFINITIONS {
            engine
                .create_job(manual(&format!("bulk-{i}")), None)
                .await
                .unwrap();
        }
        // Still coming in: not yet.
        tokio::time::sleep(BULK_QUIET / 2).await;
        let job = engine.create_job(manual("one-more"), None).await.unwrap();
        engine
            .update_job(&job.id, manual("one-more"), None)
            .await
            .unwrap();
        assert_eq!(defined(), BULK_DEFINITIONS + 12);
        // Quiet: trimmed, and counting starts again.
        let mut waited = Duration::ZERO;
        while defined() != 0 {
            assert!(waited < BULK_QUIET * 10, "not trimmed after {waited:?}");
            tokio::time::sleep(BULK_QUIET / 10).await;
            waited += BULK_QUIET / 10;
        }
        assert!(
            waited >= BULK_QUIET / 2,
            "trimmed while definitions came in"
        );
        engine.shutdown(Duration::from_secs(1)).await;
    }
}
