//! Several instances on one PostgreSQL database (docs/cluster.md).
//!
//! ```text
//!  leader only:  timer ─▶ recorder ─▶ queued rows (owner NULL) ─▶ NOTIFY cnp_claim
//!  every member: claimer ─ claim_runs (FOR UPDATE SKIP LOCKED, lease) ─▶ dispatch queue ─▶ runs
//!                member  ─ heartbeat: renews its leases; leader: runs whose lease ran out
//!                          become interrupted (retried per policy), unstarted claims go back
//!                listener ─ LISTEN: other members' events (WebSocket, job changes, cooldown,
//!                           budgets) and claim wake-ups
//! ```
//!
//! Every member executes; the one holding the leader lock (an advisory lock, see
//! [`crate::store::InstanceLock`]) also records the schedule's slots. A run is claimed by one
//! member (`executions.owner`) under a lease its heartbeat renews; a member that dies loses its
//! leases and the leader takes its runs over. The unique (job, slot, attempt) key stays: two
//! leaders for a moment cannot double a slot.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch, Notify};

use super::{run, AsDef, Engine, EngineError, QueuedRun};
use crate::events::Event;
use crate::model::{ExecutionStatus, Trigger};
use crate::store::{ClaimedRun, Heard, InstanceLock, Member, Orphans, PgOptions};

/// Wakes every member's claimer: runs were recorded or given back.
const CLAIM_CHANNEL: &str = "cnp_claim";
/// Members' events, as [`Envelope`]s.
const EVENTS_CHANNEL: &str = "cnp_events";
/// A run to cancel (its execution id), for the member running it.
const CANCEL_CHANNEL: &str = "cnp_cancel";
/// The global budget was set or reset: members read it again.
const BUDGET_CHANNEL: &str = "cnp_budget";
/// Most runs claimed at once during a cooldown.
const CLAIM_BATCH: usize = 10_000;
/// PostgreSQL refuses notification payloads from 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// `[database] lease` and `heartbeat`.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    pub lease: Duration,
    pub heartbeat: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            lease: Duration::from_secs(15),
            heartbeat: Duration::from_secs(3),
        }
    }
}

/// This instance as a cluster member.
pub(super) struct Cluster {
    pub(super) id: String,
    host: String,
    started_at: DateTime<Utc>,
    settings: ClusterSettings,
    /// Whether this member holds the timer.
    leader: watch::Sender<bool>,
    /// Wakes the claimer (room freed here, runs recorded anywhere).
    claim: Notify,
    /// Wakes the budget refresh (another member's run ended).
    budget_refresh: Notify,
    /// Makes the heartbeat beat now (this member became the leader).
    beat_now: Notify,
    /// Where this member's API listens, for `cnp status`.
    api: std::sync::Mutex<Option<String>>,
    /// Stops the heartbeat — after the engine's runs have ended, so their leases last as long
    /// as they do.
    stop_member: tokio_util::sync::CancellationToken,
    member_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set when the leader lock was lost for good: who holds it now.
    lost: watch::Sender<Option<String>>,
}

impl Cluster {
    pub(super) fn new(settings: ClusterSettings, now: DateTime<Utc>) -> Cluster {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Cluster {
            id: uuid::Uuid::now_v7().to_string(),
            host: host.trim().to_owned(),
            started_at: now,
            settings,
            leader: watch::channel(false).0,
            claim: Notify::new(),
            budget_refresh: Notify::new(),
            beat_now: Notify::new(),
            api: Default::default(),
            stop_member: Default::default(),
            member_task: Default::default(),
            lost: watch::channel(None).0,
        }
    }

    pub(super) fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    pub(super) fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.settings.lease).unwrap_or_default()
    }
}

/// What goes over [`EVENTS_CHANNEL`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    from: String,
    events: Vec<Event>,
}

/// The leader lock's first try, before start-up recovery: the instance that gets it leads from
/// the start (it recovers and schedules as one instance does).
pub(super) struct FirstTry {
    lock: Option<InstanceLock>,
    /// Who holds the lock, when another instance does.
    holder: Option<String>,
}

pub(super) fn first_try(engine: &Engine) -> Result<FirstTry, EngineError> {
    let s = &engine.shared;
    let (Some(c), Some(options)) = (&s.cluster, s.store.postgres()) else {
        return Ok(FirstTry {
            lock: None,
            holder: None,
        });
    };
    Ok(match InstanceLock::try_acquire(options)? {
        Ok(lock) => {
            c.leader.send_replace(true);
            FirstTry {
                lock: Some(lock),
                holder: None,
            }
        }
        Err(holder) => FirstTry {
            lock: None,
            holder: Some(holder),
        },
    })
}

/// Starts the member's tasks (after start-up recovery).
pub(super) async fn start(engine: &Engine, first: FirstTry) -> Result<(), EngineError> {
    let s = &engine.shared;
    let Some(c) = &s.cluster else { return Ok(()) };
    let options = s
        .store
        .postgres()
        .expect("a cluster runs on PostgreSQL")
        .clone();
    tracing::info!(member = %c.id, "cluster member on the PostgreSQL database");
    // Listening and forwarding first: nothing said from now on is missed.
    let heard = crate::store::listen(
        &options,
        &[
            CLAIM_CHANNEL,
            EVENTS_CHANNEL,
            CANCEL_CHANNEL,
            BUDGET_CHANNEL,
        ],
    )?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    s.events.forward_to(events_tx);
    match &first.holder {
        None => tracing::info!(
            member = %c.id,
            jobs = engine.status().jobs,
            "cluster leader: this instance records the schedule's slots"
        ),
        Some(holder) => member_of(holder),
    }
    s.tasks.spawn(run_leadership(
        engine.clone(),
        options.clone(),
        first.lock,
        first.holder,
    ));
    // What is due already goes into the dispatch queue now, as on one instance at start-up.
    if let Err(e) = claim_round(engine).await {
        tracing::error!(error = %e, "cannot claim runs");
    }
    *c.member_task.lock().unwrap() = Some(tokio::spawn(run_member(engine.clone())));
    s.tasks.spawn(run_claimer(engine.clone()));
    s.tasks.spawn(run_listener(engine.clone(), heard));
    s.tasks.spawn(run_forwarder(engine.clone(), events_rx));
    s.tasks.spawn(run_budget_refresh(engine.clone()));
    Ok(())
}

/// After PostgreSQL was unreachable, how long a member waits before trying for the leader lock:
/// the former leader (which tries every second) takes it back first, instead of both racing
/// for it and the former leader having to stop. A leader that died meanwhile is replaced this
/// much later.
const LEADER_HOLD_OFF: Duration = Duration::from_secs(3);

/// Keeps the leader lock, or tries for it every second while another instance holds it.
/// (`told`: the leader this instance last named in the log.)
async fn run_leadership(
    engine: Engine,
    options: PgOptions,
    mut lock: Option<InstanceLock>,
    mut told: Option<String>,
) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    // When this instance last failed to reach PostgreSQL.
    let mut unreachable_at: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if lock.as_ref().is_some_and(|l| !l.is_lost()) {
            continue;
        }
        let leading = lock.is_some();
        if !leading && unreachable_at.is_some_and(|t| t.elapsed() < LEADER_HOLD_OFF) {
            continue;
        }
        let o = options.clone();
        let tried = tokio::task::spawn_blocking(move || InstanceLock::try_acquire(&o)).await;
        match tried {
            Ok(Ok(Ok(got))) => {
                if leading {
                    tracing::warn!("reconnected to PostgreSQL; still the cluster leader");
                    lock = Some(got);
                    continue;
                }
                lock = Some(got);
                told = None;
                while let Err(e) = engine.lead().await {
                    tracing::error!(error = %e, "cannot take the timer over; trying again");
                    tokio::select! {
                        biased;
                        _ = s.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            // While it was unreachable, another instance took the timer: two leaders must not
            // record at once, so this one stops (its supervisor restarts it as a member).
            Ok(Ok(Err(holder))) if leading => {
                tracing::error!(leader = %holder, "lost the cluster's leader lock while PostgreSQL was unreachable: another instance leads now");
                c.lost.send_replace(Some(holder));
                break;
            }
            Ok(Ok(Err(holder))) => {
                if told.as_deref() != Some(holder.as_str()) {
                    member_of(&holder);
                    told = Some(holder);
                }
            }
            Ok(Err(e)) => {
                unreachable_at = Some(std::time::Instant::now());
                tracing::warn!(error = %e, "cannot reach PostgreSQL for the leader lock")
            }
            Err(e) => tracing::warn!(error = %e, "the leader lock's try failed"),
        }
    }
    // Stopping: the lock goes with its connection, so another instance takes the timer.
    drop(lock);
}

/// Says in the log that `holder` leads and this instance is a member.
fn member_of(holder: &str) {
    tracing::info!(leader = %holder, "cluster member: another instance holds the timer; this one runs jobs and takes the timer over if the leader stops");
}

/// Runs became claimable (recorded, due, given back): every member looks.
pub(super) fn poke(engine: &Engine) {
    let s = &engine.shared;
    if let Some(c) = &s.cluster {
        c.claim.notify_one();
        s.store.notify_detached(CLAIM_CHANNEL, String::new());
    }
}

/// In a cluster: asks every member to cancel `execution_id` if it runs it. `false` on one
/// instance.
pub(super) fn cancel_elsewhere(engine: &Engine, execution_id: &str) -> bool {
    let s = &engine.shared;
    if s.cluster.is_none() {
        return false;
    }
    s.store
        .notify_detached(CANCEL_CHANNEL, execution_id.to_owned());
    true
}

/// In a cluster: the global budget changed here; the other members read it again.
pub(super) fn budget_changed(engine: &Engine) {
    let s = &engine.shared;
    if s.cluster.is_some() {
        s.store.notify_detached(BUDGET_CHANNEL, String::new());
    }
}

/// Room freed here (a run ended): this member's claimer looks.
pub(super) fn room(engine: &Engine) {
    if let Some(c) = &engine.shared.cluster {
        c.claim.notify_one();
    }
}

impl Engine {
    /// In a cluster: this member takes the timer over (it holds the leader lock). Slots the
    /// previous leader recorded ahead and that came due more than `misfire_grace` ago go to the
    /// misfire policy; every job is put on the timer from its last recorded slot, so slots
    /// missed while nobody led are caught up by the misfire rules.
    async fn lead(&self) -> Result<(), EngineError> {
        let s = &self.shared;
        let Some(c) = &s.cluster else { return Ok(()) };
        // Set first: the timer keeps what the installs below send it from now on.
        c.leader.send_replace(true);
        let now = s.clock.now();
        let grace = chrono::Duration::from_std(s.settings.misfire_grace).unwrap_or_default();
        let withdrawn = s.store.withdraw_missed_ahead(now - grace).await?;
        if withdrawn > 0 {
            tracing::info!(
                withdrawn,
                "runs the previous leader recorded ahead of slots that came due since: left to the misfire policy"
            );
        }
        let jobs = self.install_all().await?;
        // The members' table says so at once.
        c.beat_now.notify_one();
        tracing::info!(
            member = %c.id,
            jobs,
            "cluster leader: this instance records the schedule's slots"
        );
        Ok(())
    }

    /// Resolves when this instance lost the cluster's leader lock for good (PostgreSQL was
    /// unreachable and another instance took the timer meanwhile), with who holds it; never on
    /// SQLite. The service stops then.
    pub async fn leadership_lost(&self) -> String {
        let Some(c) = &self.shared.cluster else {
            return std::future::pending().await;
        };
        let mut rx = c.lost.subscribe();
        loop {
            if let Some(holder) = rx.borrow_and_update().clone() {
                return holder;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The cluster's members (`None` on SQLite, where there is one instance).
    pub async fn members(&self) -> Result<Option<Vec<Member>>, EngineError> {
        if self.shared.cluster.is_none() {
            return Ok(None);
        }
        Ok(Some(self.shared.store.members().await?))
    }

    /// This instance's member id (`None` on SQLite).
    pub fn member_id(&self) -> Option<&str> {
        self.shared.cluster.as_ref().map(|c| c.id.as_str())
    }

    /// Where this instance's API listens (shown to the other members).
    pub fn set_api_address(&self, address: String) {
        if let Some(c) = &self.shared.cluster {
            *c.api.lock().unwrap() = Some(address);
        }
    }
}

/// At the end of a stop, once the runs here have ended: the heartbeat stops and this member
/// leaves the cluster.
pub(super) async fn leave(engine: &Engine) {
    let Some(c) = &engine.shared.cluster else {
        return;
    };
    c.stop_member.cancel();
    let task = c.member_task.lock().unwrap().take();
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// The heartbeat: renews this member's leases; on the leader, also takes over the runs of
/// members whose leases ran out and forgets those members.
async fn run_member(engine: Engine) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    let mut joined = false;
    let mut failing = false;
    // After an outage, runs of the others are taken over only once every member has had a
    // lease's time to renew theirs.
    let mut healthy_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(c.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = c.stop_member.cancelled() => break,
            _ = tick.tick() => {}
            _ = c.beat_now.notified() => {}
        }
        let now = s.clock.now();
        let (running, queued) = {
            let st = s.state.lock().unwrap();
            (st.running.len() as u32, st.queue.len() as u32)
        };
        let leader = c.is_leader();
        let api = c.api.lock().unwrap().clone();
        let beat = if joined {
            s.store
                .heartbeat(
                    c.id.clone(),
                    now,
                    c.lease_from(now),
                    leader,
                    (running, queued),
                    api,
                )
                .await
        } else {
            let me = Member {
                id: c.id.clone(),
                host: c.host.clone(),
                pid: std::process::id(),
                api,
                started_at: c.started_at,
                heartbeat_at: now,
                leader,
                running,
                queued,
                capacity: s.settings.max_concurrent_jobs as u32,
            };
            s.store.join_cluster(me).await.map(|()| true)
        };
        match beat {
            Ok(true) => {
                joined = true;
                if failing {
                    tracing::info!("cluster heartbeat recorded again");
                    failing = false;
                }
                healthy_since.get_or_insert_with(tokio::time::Instant::now);
            }
            Ok(false) => {
                fenced(&engine);
                joined = false;
                continue;
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "cannot record the cluster heartbeat: this instance's leases run out in {} if it lasts", humantime::format_duration(c.settings.lease));
                    failing = true;
                }
                healthy_since = None;
                continue;
            }
        }
        let settled = healthy_since.is_some_and(|t| t.elapsed() >= c.settings.lease);
        if leader && settled && !s.stop.is_cancelled() {
            if let Err(e) = take_over_expired(&engine, now).await {
                tracing::error!(error = %e, "cannot take over the runs of members that stopped");
            }
        }
    }
    // A clean stop: the runs claimed here and not started go back to the others.
    if joined {
        if let Err(e) = s.store.leave_cluster(c.id.clone()).await {
            tracing::warn!(error = %e, "cannot leave the cluster cleanly: the runs claimed here go back when their lease runs out");
        }
    }
}

/// This member's row was gone at its heartbeat: the others took it for dead (its leases ran
/// out, say during a long pause) and took its runs over. Its own copies stop, so nothing runs
/// twice; it then joins again as a new start would.
fn fenced(engine: &Engine) {
    let s = &engine.shared;
    let mut st = s.state.lock().unwrap();
    let st = &mut *st;
    tracing::error!(
        running = st.running.len(),
        queued = st.queue.len(),
        "this instance was taken for dead by the cluster (no heartbeat for longer than the lease): its runs were taken over by the others; stopping its copies"
    );
    for r in st.running.values() {
        r.cancel.cancel();
    }
    for run in st.queue.drain() {
        if let Some(e) = st.jobs.get_mut(run.job_id.as_str()) {
            e.queued = e.queued.saturating_sub(1);
        }
    }
}

/// On the leader: runs claimed but not started by a member whose lease ran out go back; its
/// running runs become `interrupted` (retried per policy); dead members are forgotten.
async fn take_over_expired(engine: &Engine, now: DateTime<Utc>) -> Result<(), EngineError> {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    let released = s.store.release_expired_claims(now).await?;
    let interrupted = engine.interrupt_orphans(Orphans::LeaseExpired(now)).await?;
    // Those not retried have ended: what depends on them is decided now.
    for (e, retry) in &interrupted {
        if retry.is_none() {
            super::workflow::settle_ended(engine, &e.job_id, &e.id).await;
        }
    }
    let grace =
        chrono::Duration::from_std(c.settings.lease + c.settings.heartbeat).unwrap_or_default();
    let gone = s.store.forget_members(now - grace).await?;
    for id in &gone {
        tracing::warn!(member = %id, "cluster member stopped heartbeating: forgotten");
    }
    if released > 0 {
        tracing::warn!(
            released,
            "runs claimed by a member that stopped, not started: given back"
        );
    }
    if released > 0 || !interrupted.is_empty() {
        poke(engine);
    }
    Ok(())
}

/// Claims due runs while this member has room, and sleeps until the next one comes due, a
/// member records or gives back runs, or a run here ends.
async fn run_claimer(engine: Engine) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    let mut failing = false;
    loop {
        let notified = c.claim.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut wake = tokio::time::Instant::now() + c.settings.heartbeat;
        match claim_round(&engine).await {
            Ok(next) => {
                if failing {
                    tracing::info!("claiming runs again");
                    failing = false;
                }
                if let Some(next) = next {
                    wake = wake.min(s.clock.instant_at(next));
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "cannot claim runs; trying again");
                    failing = true;
                }
            }
        }
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Claims what this member has room for and puts it in its dispatch queue. Returns when the
/// next run nobody holds comes due, when there was room left (`None`: full, or nothing waits).
async fn claim_round(engine: &Engine) -> Result<Option<DateTime<Utc>>, EngineError> {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    // Room: what could start now. Runs set aside here (a job at its max_parallel, a
    // spending cap) do not count, so slots that pile up behind a hold come here as they
    // would on one instance (and follow the misfire policy when it lifts); during a
    // cooldown every due run is taken (and deferred) for the same reason.
    let room = {
        let st = s.state.lock().unwrap();
        if st.cooldown.is_some() {
            CLAIM_BATCH
        } else {
            s.settings
                .max_concurrent_jobs
                .saturating_sub(st.running.len() + st.queue.ready_len())
        }
    };
    let now = s.clock.now();
    let runs = s
        .store
        .claim_runs(c.id.clone(), now, c.lease_from(now), room)
        .await?;
    let full = runs.len() == room;
    hand_over(engine, runs).await;
    if full {
        return Ok(None);
    }
    // Room left: the next run nobody holds, if it is still to come.
    Ok(s.store.next_claimable().await?.filter(|next| *next > now))
}

/// Claimed runs into this member's dispatch queue.
async fn hand_over(engine: &Engine, runs: Vec<ClaimedRun>) {
    if runs.is_empty() {
        return;
    }
    let s = &engine.shared;
    let mut queued = Vec::with_capacity(runs.len());
    for r in runs {
        let known = {
            let st = s.state.lock().unwrap();
            st.jobs.get(r.job_id.as_str()).map(|j| j.priority)
        };
        let priority = match known {
            Some(p) => p,
            // Made on another member a moment ago (its event is on the way).
            None => match s.store.job_scheduling(r.job_id.clone()).await {
                Ok(Some(j)) => {
                    engine.install_stored(&j);
                    j.priority
                }
                // Deleted: the dispatch queue records the run skipped.
                _ => 0,
            },
        };
        if matches!(r.trigger, Trigger::Schedule | Trigger::Catchup) {
            engine.publish_exec(&r.id, &r.job_id, ExecutionStatus::Queued, None);
        }
        queued.push(QueuedRun {
            execution_id: r.id,
            job_id: r.job_id,
            priority,
            seq: 0,
            scheduled_for: r.scheduled_for,
            retry_count: r.retry_count,
            epoch: None,
            slot: r.slot,
            trace: Default::default(),
        });
    }
    run::enqueue_all(engine, queued, false);
}

/// This member's events to the others, a batch per notification.
async fn run_forwarder(engine: Engine, mut rx: mpsc::UnboundedReceiver<Event>) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    let mut batch: Vec<String> = Vec::new();
    let mut size = 0;
    loop {
        let first = tokio::select! {
            biased;
            e = rx.recv() => match e { Some(e) => e, None => break },
            _ = s.stop.cancelled() => break,
        };
        let mut next = Some(first);
        while let Some(mut event) = next.take().or_else(|| rx.try_recv().ok()) {
            let mut text = serde_json::to_string(&event).expect("events serialize");
            if text.len() > MAX_PAYLOAD - 200 {
                // A long log line or message: cut to fit.
                match &mut event {
                    Event::Log(l) => l.line = crate::text::truncate_bytes(&l.line, 4000),
                    Event::Execution {
                        message: Some(m), ..
                    } => *m = crate::text::truncate_bytes(m, 4000),
                    _ => {}
                }
                text = serde_json::to_string(&event).expect("events serialize");
                if text.len() > MAX_PAYLOAD - 200 {
                    continue;
                }
            }
            if size + text.len() > MAX_PAYLOAD - 200 {
                send(&engine, &c.id, std::mem::take(&mut batch));
                size = 0;
            }
            size += text.len() + 1;
            batch.push(text);
        }
        send(&engine, &c.id, std::mem::take(&mut batch));
        size = 0;
    }
}

fn send(engine: &Engine, from: &str, events: Vec<String>) {
    if events.is_empty() {
        return;
    }
    // The events are JSON already: the envelope is put together around them.
    let payload = format!(
        "{{\"from\":{},\"events\":[{}]}}",
        serde_json::to_string(from).expect("a string serializes"),
        events.join(",")
    );
    engine.shared.store.notify_detached(EVENTS_CHANNEL, payload);
}

/// What the other members say.
async fn run_listener(engine: Engine, mut heard: mpsc::UnboundedReceiver<Heard>) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    loop {
        let h = tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            h = heard.recv() => match h { Some(h) => h, None => break },
        };
        match h {
            Heard::Reconnected => {
                // Notifications sent meanwhile are lost: read the shared state again.
                resync(&engine).await;
                c.claim.notify_one();
            }
            Heard::Notification { channel, payload } => match channel.as_str() {
                CLAIM_CHANNEL => c.claim.notify_one(),
                BUDGET_CHANNEL => c.budget_refresh.notify_one(),
                CANCEL_CHANNEL => {
                    let st = s.state.lock().unwrap();
                    if let Some(r) = st.running.get(&payload) {
                        tracing::info!(execution = %payload, "cancelled from another cluster member");
                        r.cancel.cancel();
                    }
                }
                EVENTS_CHANNEL => match serde_json::from_str::<Envelope>(&payload) {
                    Ok(env) if env.from == c.id => {}
                    Ok(env) => {
                        for event in env.events {
                            received(&engine, event).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable event from another cluster member")
                    }
                },
                _ => {}
            },
        }
    }
}

/// Another member's event: to this member's WebSocket clients, and what it changes here.
async fn received(engine: &Engine, event: Event) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    s.events.publish_received(event.clone());
    match event {
        Event::JobChanged {
            job_id,
            status: None,
            ..
        } => engine.forget_job(&job_id),
        Event::JobChanged { job_id, .. } => {
            if let Err(e) = refresh_job(engine, &job_id).await {
                tracing::error!(job = %job_id, error = %e, "cannot read a job another member changed");
            }
        }
        Event::Cooldown { active: true, .. } => super::cooldown::adopt(engine).await,
        Event::Cooldown { active: false, .. } => {
            if let Err(e) = super::cooldown::end_quietly(engine).await {
                tracing::error!(error = %e, "cannot end the cooldown another member ended");
            }
        }
        Event::Execution { status, .. } if status.is_terminal() => c.budget_refresh.notify_one(),
        _ => {}
    }
}

/// Reads a job another member changed and schedules it here as it is now.
async fn refresh_job(engine: &Engine, job_id: &str) -> Result<(), EngineError> {
    let s = &engine.shared;
    match s.store.job_scheduling(job_id.to_owned()).await? {
        Some(j) => engine.install(&j.as_def(), j.last_slot, false)?,
        None => engine.forget_job(job_id),
    }
    super::workflow::load(engine).await?;
    Ok(())
}

/// After the listening connection was lost: jobs, the cooldown and the budgets as stored.
async fn resync(engine: &Engine) {
    let s = &engine.shared;
    if let Err(e) = engine.install_all().await {
        tracing::error!(error = %e, "cannot read the jobs again");
    }
    if let Err(e) = super::workflow::load(engine).await {
        tracing::error!(error = %e, "cannot read the jobs' dependencies again");
    }
    super::cooldown::adopt(engine).await;
    if let Some(c) = &s.cluster {
        c.budget_refresh.notify_one();
    }
}

/// Runs that ended on other members spent money: the budget windows are read again, at most
/// once a second.
async fn run_budget_refresh(engine: Engine) {
    let s = &engine.shared;
    let c = s.cluster.as_ref().expect("cluster");
    loop {
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = c.budget_refresh.notified() => {}
        }
        if let Err(e) = super::budget::refresh(&engine).await {
            tracing::error!(error = %e, "cannot read the budgets' spending again");
        }
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
