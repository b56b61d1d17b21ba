//! Spending caps: a job's `budget:` and the global one (`[budget]`, or an operator's override),
//! over rolling windows of 24 hours and 30 days.
//!
//! ```text
//!  a run ends ─▶ its cost (the CLI's total_cost_usd; none reported: $0, flagged) joins the
//!                ledgers of its job and of all jobs
//!  dispatcher, before a run starts: for its job's scope and the global one, per window,
//!     spent + expected cost of the runs going + this run's expected cost > cap ─▶ held
//!     (expected: the job's average over its last 5 costs; nothing spent and nothing going
//!      never holds, so a run dearer than a whole cap still runs once)
//!     held: set aside in the dispatch queue, recorded `deferred` ("budget_held: …");
//!           held by what was spent: `budget_exceeded` notified once for the scope
//!  the hold lifts when enough spending leaves the window (this task wakes then), when a run
//!  going ends, or when a cap is raised: held runs compete again; schedule slots that piled
//!  up follow their job's misfire policy
//!  hard_stop: a run's end that brings a scope to its cap stops the scope's runs going
//! ```
//!
//! The windows keep costs in buckets (a minute for the day, an hour for the month), so memory
//! stays bounded however many runs there are; a bucket leaves its window when its end does, so
//! a hold lifts at most one bucket late, never early.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError};
use crate::model::{Budget, ExecutionStatus};
use crate::notify::{EventKind, Notification};

/// The `service_state` key the operator's override and the scopes over a cap are kept under.
const STATE_KEY: &str = "budget";

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const MONTH_MS: i64 = 30 * DAY_MS;
/// How many of a job's last costs its expected cost is the average of.
const ESTIMATE_RUNS: usize = 5;

/// USD in millionths (exact sums).
fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

fn money(micros: i64) -> String {
    crate::text::usd_exact(usd(micros))
}

fn ms_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Which spending a cap is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// All runs together (`[budget]`).
    Global,
    /// One job's runs (its id).
    Job(String),
}

/// A rolling window of costs, in buckets.
#[derive(Debug, Clone)]
struct Window {
    span: i64,
    bucket: i64,
    /// (bucket start, µUSD, runs that reported no cost), oldest first.
    buckets: VecDeque<(i64, i64, u32)>,
    sum: i64,
    uncosted: u32,
}

impl Window {
    fn new(span: i64, bucket: i64) -> Window {
        Window {
            span,
            bucket,
            buckets: VecDeque::new(),
            sum: 0,
            uncosted: 0,
        }
    }

    fn add(&mut self, at: i64, cost: Option<i64>) {
        let start = at - at.rem_euclid(self.bucket);
        let (c, u) = (cost.unwrap_or(0), cost.is_none() as u32);
        self.sum += c;
        self.uncosted += u;
        // Costs arrive in time order but for ends recorded a moment apart: walk back.
        for b in self.buckets.iter_mut().rev() {
            if b.0 == start {
                b.1 += c;
                b.2 += u;
                return;
            }
            if b.0 < start {
                break;
            }
        }
        let pos = self.buckets.partition_point(|b| b.0 < start);
        self.buckets.insert(pos, (start, c, u));
    }

    /// Drops the buckets that have left the window at `now`.
    fn expire(&mut self, now: i64) {
        while let Some(&(start, c, u)) = self.buckets.front() {
            if start + self.bucket + self.span > now {
                break;
            }
            self.buckets.pop_front();
            self.sum -= c;
            self.uncosted -= u;
        }
    }

    /// When the spending left in the window first satisfies `ok` (`None`: it never does).
    fn lifts_at(&self, ok: impl Fn(i64) -> bool) -> Option<i64> {
        let mut rest = self.sum;
        for &(start, c, _) in &self.buckets {
            rest -= c;
            if ok(rest) {
                return Some(start + self.bucket + self.span);
            }
        }
        None
    }
}

/// The costs of one scope.
#[derive(Debug, Clone)]
struct Ledger {
    day: Window,
    month: Window,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            day: Window::new(DAY_MS, MINUTE_MS),
            month: Window::new(MONTH_MS, HOUR_MS),
        }
    }
}

impl Ledger {
    fn add(&mut self, at: i64, cost: Option<i64>) {
        self.day.add(at, cost);
        self.month.add(at, cost);
    }

    fn expire(&mut self, now: i64) {
        self.day.expire(now);
        self.month.expire(now);
    }
}

/// Why a run may not start now.
#[derive(Debug, Clone)]
pub(super) struct Block {
    scope: Scope,
    /// `daily` or `monthly`.
    window: &'static str,
    cap: i64,
    spent: i64,
    going: i64,
    expected: i64,
    /// Held by what was spent (not only by the runs going).
    by_spend: bool,
    /// When the spending that holds it has left the window (`None`: not before a cap changes,
    /// or a run going ends).
    until: Option<DateTime<Utc>>,
}

impl Block {
    /// Why the run is held. A job's scope is named by its id (the dispatcher knows no names):
    /// [`with_job_name`] puts the name in.
    fn reason(&self) -> String {
        let scope = match &self.scope {
            Scope::Global => format!("the global {} budget ([budget])", self.window),
            Scope::Job(id) => format!("job {id}'s {} budget", self.window),
        };
        let span = if self.window == "daily" {
            "24 h"
        } else {
            "30 days"
        };
        let mut s = format!(
            "budget_held: {scope} of {} — {} spent in the last {span}",
            money(self.cap),
            money(self.spent)
        );
        if self.going > 0 {
            s.push_str(&format!(", ~{} for the runs going", money(self.going)));
        }
        if self.expected > 0 {
            s.push_str(&format!(
                ", ~{} expected for this run",
                money(self.expected)
            ));
        }
        match (self.by_spend, self.until) {
            (true, Some(t)) => s.push_str(&format!("; held until {}", rfc3339(t))),
            (true, None) => s.push_str("; held until the cap is raised"),
            (false, _) => s.push_str("; held until a run going ends"),
        }
        s
    }
}

/// A [`Block::reason`] with the job's name in place of its id.
fn with_job_name(reason: &str, id: &str, name: &str) -> String {
    reason.replacen(&format!("job {id}'s"), &format!("job {name}'s"), 1)
}

/// A scope over its cap: notified once, held until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exceeded {
    pub scope: Scope,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub reason: String,
}

/// What is persisted: the operator's override of `[budget]` and the scopes over a cap (so a
/// restart does not notify again).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    #[serde(default)]
    global_override: Option<Budget>,
    #[serde(default)]
    exceeded: Vec<Exceeded>,
}

/// The engine's budget state (in [`super::State`], beside the dispatch queue it gates).
#[derive(Debug, Default)]
pub(super) struct Budgets {
    /// `[budget]` from the config.
    configured: Budget,
    /// Set by an operator (`PUT /api/budget`): replaces `configured`.
    global_override: Option<Budget>,
    /// The jobs that have a budget.
    caps: HashMap<String, Budget>,
    all: Ledger,
    jobs: HashMap<String, Ledger>,
    /// Per job, its last costs (µUSD), for what its next run is expected to cost.
    recent: HashMap<String, VecDeque<i64>>,
    /// Runs going: their job and the cost expected of them.
    going: HashMap<String, (String, i64)>,
    going_all: i64,
    going_jobs: HashMap<String, i64>,
    /// Scopes over a cap.
    exceeded: HashMap<Scope, Exceeded>,
    /// Runs recorded `deferred` by a hold: execution → job.
    pub(super) deferred: HashMap<String, String>,
    /// Runs stopped by a `hard_stop`: execution → why.
    stopped: HashMap<String, String>,
}

impl Budgets {
    fn global(&self) -> &Budget {
        self.global_override.as_ref().unwrap_or(&self.configured)
    }

    /// Whether any cap is set (nothing to check otherwise).
    fn capped(&self) -> bool {
        !self.caps.is_empty() || self.global().is_capped()
    }

    fn expected(&self, job_id: &str) -> i64 {
        match self.recent.get(job_id) {
            Some(r) if !r.is_empty() => r.iter().sum::<i64>() / r.len() as i64,
            _ => 0,
        }
    }

    /// A job's definition changed: its caps. Returns whether they changed.
    pub(super) fn set_job_cap(&mut self, job_id: &str, budget: Option<&Budget>) -> bool {
        let new = budget.filter(|b| b.is_capped()).cloned();
        let old = match new.clone() {
            Some(b) => self.caps.insert(job_id.to_owned(), b),
            None => self.caps.remove(job_id),
        };
        let changed = old != new;
        if changed && old.is_some() {
            // A cap changed (not first seen, as at start-up): its hold is looked at afresh.
            self.exceeded.remove(&Scope::Job(job_id.to_owned()));
        }
        changed
    }

    /// A job is gone.
    pub(super) fn forget_job(&mut self, job_id: &str) {
        self.caps.remove(job_id);
        self.jobs.remove(job_id);
        self.recent.remove(job_id);
        self.exceeded.remove(&Scope::Job(job_id.to_owned()));
    }

    /// A run's cost (`None`: not reported) joins the ledgers.
    fn record(&mut self, job_id: &str, at: DateTime<Utc>, cost_usd: Option<f64>) {
        let at = at.timestamp_millis();
        let cost = cost_usd.filter(|c| c.is_finite() && *c >= 0.0).map(micros);
        self.all.add(at, cost);
        self.jobs
            .entry(job_id.to_owned())
            .or_default()
            .add(at, cost);
        if let Some(c) = cost {
            let r = self.recent.entry(job_id.to_owned()).or_default();
            r.push_back(c);
            if r.len() > ESTIMATE_RUNS {
                r.pop_front();
            }
        }
    }

    /// Whether a run of `job_id` may start now; `None`: it may.
    pub(super) fn check(&mut self, job_id: &str, now: DateTime<Utc>) -> Option<Block> {
        if !self.capped() {
            return None;
        }
        let now_ms = now.timestamp_millis();
        let expected = self.expected(job_id);
        if let Some(cap) = self.caps.get(job_id).cloned() {
            let going = self.going_jobs.get(job_id).copied().unwrap_or(0);
            let ledger = self.jobs.entry(job_id.to_owned()).or_default();
            ledger.expire(now_ms);
            if let Some(b) =
                check_scope(ledger, &cap, going, expected, Scope::Job(job_id.to_owned()))
            {
                return Some(b);
            }
        }
        let global = self.global().clone();
        if global.is_capped() {
            self.all.expire(now_ms);
            return check_scope(&self.all, &global, self.going_all, expected, Scope::Global);
        }
        None
    }

    /// A run starts: what it is expected to cost counts until it ends.
    pub(super) fn start(&mut self, execution_id: &str, job_id: &str) {
        self.deferred.remove(execution_id);
        if !self.capped() {
            return;
        }
        let e = self.expected(job_id);
        self.going_all += e;
        *self.going_jobs.entry(job_id.to_owned()).or_default() += e;
        self.going
            .insert(execution_id.to_owned(), (job_id.to_owned(), e));
    }

    /// A run ended (its cost, if any, is recorded by then). Returns whether runs are held (so
    /// the dispatcher looks at them again).
    pub(super) fn end(&mut self, execution_id: &str) -> bool {
        self.stopped.remove(execution_id);
        if let Some((job, e)) = self.going.remove(execution_id) {
            self.going_all -= e;
            if let Some(g) = self.going_jobs.get_mut(&job) {
                *g -= e;
                if *g <= 0 {
                    self.going_jobs.remove(&job);
                }
            }
        }
        !self.deferred.is_empty()
    }

    /// Notes a block: the first time a scope is held by what it spent, it is over its cap
    /// (returned, to notify).
    fn note_exceeded(
        &mut self,
        block: &Block,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Option<Exceeded> {
        if !block.by_spend || self.exceeded.contains_key(&block.scope) {
            return None;
        }
        let e = Exceeded {
            scope: block.scope.clone(),
            since: now,
            until: block.until,
            reason: reason.to_owned(),
        };
        self.exceeded.insert(block.scope.clone(), e.clone());
        Some(e)
    }

    /// The earliest instant a scope over its cap is looked at again.
    fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.exceeded.values().filter_map(|e| e.until).min()
    }

    fn persisted(&self) -> Persisted {
        let mut exceeded: Vec<Exceeded> = self.exceeded.values().cloned().collect();
        exceeded.sort_by_key(|e| e.since);
        Persisted {
            global_override: self.global_override.clone(),
            exceeded,
        }
    }
}

fn check_scope(
    ledger: &Ledger,
    cap: &Budget,
    going: i64,
    expected: i64,
    scope: Scope,
) -> Option<Block> {
    for (name, limit, w) in [
        ("daily", cap.daily_usd, &ledger.day),
        ("monthly", cap.monthly_usd, &ledger.month),
    ] {
        let Some(limit) = limit.map(micros) else {
            continue;
        };
        let spent = w.sum;
        let blocked_by = |spent: i64, going: i64| {
            let committed = spent + going;
            spent >= limit || (committed > 0 && committed + expected > limit)
        };
        if !blocked_by(spent, going) {
            continue;
        }
        let by_spend = blocked_by(spent, 0);
        let until = if by_spend {
            w.lifts_at(|rest| !blocked_by(rest, 0)).map(ms_time)
        } else {
            None
        };
        return Some(Block {
            scope,
            window: name,
            cap: limit,
            spent,
            going,
            expected,
            by_spend,
            until,
        });
    }
    None
}

/// At start-up: the config's caps, the operator's override and the scopes over a cap, and the
/// costs of the last 30 days.
pub(super) async fn restore(engine: &Engine, configured: Budget) -> Result<(), EngineError> {
    let (persisted, ledger) = stored(engine).await?;
    let mut st = engine.shared.state.lock().unwrap();
    let b = &mut st.budgets;
    b.configured = configured;
    b.global_override = persisted.global_override;
    b.exceeded = persisted
        .exceeded
        .into_iter()
        .map(|e| (e.scope.clone(), e))
        .collect();
    for e in ledger {
        b.record(&e.job_id, e.at, e.cost_usd);
    }
    Ok(())
}

/// In a cluster: what was spent (runs end on every member) and the operator's override, read
/// again from the database.
pub(super) async fn refresh(engine: &Engine) -> Result<(), EngineError> {
    let s = &engine.shared;
    let (persisted, ledger) = stored(engine).await?;
    {
        let mut st = s.state.lock().unwrap();
        let st = &mut *st;
        let b = &mut st.budgets;
        b.global_override = persisted.global_override;
        // Scopes another instance found over a cap (and notified): not notified again here.
        for e in persisted.exceeded {
            b.exceeded.entry(e.scope.clone()).or_insert(e);
        }
        b.all = Ledger::default();
        b.jobs.clear();
        b.recent.clear();
        for e in ledger {
            b.record(&e.job_id, e.at, e.cost_usd);
        }
        // Holds are decided again against the new figures.
        st.queue.release_all();
    }
    s.budget_changed.notify_one();
    s.dispatch.notify_one();
    Ok(())
}

/// The budget state as stored, and the costs of the runs that ended in the last 30 days.
async fn stored(engine: &Engine) -> Result<(Persisted, Vec<crate::store::CostEntry>), EngineError> {
    let s = &engine.shared;
    let persisted = match s.store.get_state(STATE_KEY).await? {
        None => Persisted::default(),
        Some(text) => serde_json::from_str::<Persisted>(&text).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the stored budget state cannot be read: the [budget] caps apply, and caps over their limit notify again");
            Persisted::default()
        }),
    };
    let now = s.clock.now();
    let ledger = s
        .store
        .cost_ledger(now - chrono::Duration::milliseconds(MONTH_MS + HOUR_MS))
        .await?;
    Ok((persisted, ledger))
}

fn persist(engine: &Engine) {
    let text = {
        let st = engine.shared.state.lock().unwrap();
        serde_json::to_string(&st.budgets.persisted()).expect("budget state serializes")
    };
    engine.shared.store.set_state_detached(STATE_KEY, text);
}

/// What the dispatcher found while picking runs: held runs to record and scopes to notify.
#[derive(Default)]
pub(super) struct Held {
    /// (execution, job, reason) of runs newly held.
    pub(super) runs: Vec<(String, String, String)>,
    pub(super) exceeded: Vec<(Exceeded, Option<String>)>,
}

impl Held {
    pub(super) fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.exceeded.is_empty()
    }
}

/// For the dispatcher, under the state lock: whether `run` may start; when not, notes it in
/// `held`.
pub(super) fn admit(
    budgets: &mut Budgets,
    run: &super::QueuedRun,
    now: DateTime<Utc>,
    held: &mut Held,
) -> bool {
    let Some(block) = budgets.check(&run.job_id, now) else {
        return true;
    };
    let reason = block.reason();
    if let Some(e) = budgets.note_exceeded(&block, &reason, now) {
        let job = match &e.scope {
            Scope::Job(j) => Some(j.clone()),
            Scope::Global => None,
        };
        held.exceeded.push((e, job));
    }
    if !budgets.deferred.contains_key(&run.execution_id) {
        budgets
            .deferred
            .insert(run.execution_id.clone(), run.job_id.clone());
        held.runs
            .push((run.execution_id.clone(), run.job_id.clone(), reason));
    }
    false
}

/// After the dispatcher let go of the lock: records the runs it held and notifies of scopes
/// newly over a cap.
pub(super) async fn record_held(engine: Engine, held: Held) {
    let engine = &engine;
    let s = &engine.shared;
    for (id, job, reason) in &held.runs {
        // Job names for the messages (the dispatcher only knows ids).
        let name = engine.job_name(job).await;
        let reason = with_job_name(reason, job, &name);
        s.store
            .defer_queued_detached(vec![id.clone()], reason.clone());
        tracing::info!(execution = %id, job = %name, "{reason}");
        engine.publish_exec(id, job, ExecutionStatus::Deferred, Some(reason));
    }
    if held.exceeded.is_empty() {
        return;
    }
    persist(engine);
    // The budget task wakes when these holds are due to lift.
    s.budget_changed.notify_one();
    for (e, job) in held.exceeded {
        let job = match job {
            Some(id) => engine.job(&id).await.ok(),
            None => None,
        };
        let reason = match &job {
            Some(j) => with_job_name(&e.reason, &j.id, &j.name),
            None => e.reason.clone(),
        };
        notify_exceeded(engine, &e, job.as_ref(), &reason);
    }
}

fn notify_exceeded(engine: &Engine, e: &Exceeded, job: Option<&crate::model::Job>, reason: &str) {
    let what = reason.trim_start_matches("budget_held: ");
    tracing::warn!(scope = ?e.scope, until = ?e.until, "spending cap reached: {what}");
    let mut n = match job {
        Some(job) => Notification {
            kind: EventKind::BudgetExceeded,
            job: Some(super::hooks::job_info(engine, job)),
            job_config: job.notification_config.clone(),
            execution_id: None,
            execution: None,
            summary: format!("{}: budget reached — runs are held ({what})", job.name),
            at: e.since,
            details: Default::default(),
            note: None,
        },
        None => Notification::global(
            EventKind::BudgetExceeded,
            format!("global budget reached — runs are held ({what})"),
            e.since,
        ),
    };
    n.details.insert(
        "scope".into(),
        serde_json::json!(match &e.scope {
            Scope::Global => "global".to_owned(),
            Scope::Job(_) => "job".to_owned(),
        }),
    );
    n.details.insert("reason".into(), serde_json::json!(what));
    n.details.insert(
        "budget_until".into(),
        serde_json::json!(e.until.map(|u| u.to_rfc3339())),
    );
    engine.notifications().notify(n);
}

/// A run's end was recorded: its cost joins the ledgers. With `hard_stop`, a scope that has
/// reached its cap stops its runs going.
pub(super) fn recorded(engine: &Engine, job_id: &str, execution_id: &str, cost_usd: Option<f64>) {
    let s = &engine.shared;
    let now = s.clock.now();
    let mut st = s.state.lock().unwrap();
    let st = &mut *st;
    st.budgets.record(job_id, now, cost_usd);
    if !st.budgets.capped() {
        return;
    }
    let now_ms = now.timestamp_millis();
    let mut stop: Vec<(Scope, String)> = Vec::new();
    let over = |l: &mut Ledger, b: &Budget| {
        l.expire(now_ms);
        [
            ("daily", b.daily_usd, l.day.sum),
            ("monthly", b.monthly_usd, l.month.sum),
        ]
        .into_iter()
        .find(|(_, cap, spent)| cap.is_some_and(|c| *spent >= micros(c)))
        .map(|(w, cap, spent)| (w, micros(cap.unwrap_or(0.0)), spent))
    };
    if let Some(b) = st.budgets.caps.get(job_id).cloned().filter(|b| b.hard_stop) {
        let ledger = st.budgets.jobs.entry(job_id.to_owned()).or_default();
        if let Some((w, cap, spent)) = over(ledger, &b) {
            stop.push((
                Scope::Job(job_id.to_owned()),
                format!(
                    "the job's {w} budget of {} was reached ({} spent; hard_stop)",
                    money(cap),
                    money(spent)
                ),
            ));
        }
    }
    let global = st.budgets.global().clone();
    if global.hard_stop {
        if let Some((w, cap, spent)) = over(&mut st.budgets.all, &global) {
            stop.push((
                Scope::Global,
                format!(
                    "the global {w} budget of {} was reached ({} spent; hard_stop)",
                    money(cap),
                    money(spent)
                ),
            ));
        }
    }
    for (scope, why) in stop {
        for (id, run) in &st.running {
            let hit = match &scope {
                Scope::Global => true,
                Scope::Job(j) => &run.job_id == j,
            };
            if hit && id != execution_id && !run.cancel.is_cancelled() {
                tracing::warn!(execution = %id, "stopping the run: {why}");
                st.budgets.stopped.insert(id.clone(), why.clone());
                run.cancel.cancel();
            }
        }
    }
}

/// Why a run was stopped by a `hard_stop`, if it was.
pub(super) fn stopped_why(engine: &Engine, execution_id: &str) -> Option<String> {
    let st = engine.shared.state.lock().unwrap();
    st.budgets.stopped.get(execution_id).cloned()
}

/// Looks again at held runs: those whose scopes let them start are queued again (in the store
/// too); slots that piled up while held follow their job's misfire policy.
async fn release(engine: &Engine) {
    let s = &engine.shared;
    let now = s.clock.now();
    let grace =
        chrono::Duration::from_std(s.settings.misfire_grace).unwrap_or(chrono::Duration::MAX);
    let (requeued, groups) = {
        let mut st = s.state.lock().unwrap();
        let st = &mut *st;
        if st.budgets.deferred.is_empty() {
            // Nothing held: nothing to put back.
            s.dispatch.notify_one();
            return;
        }
        let held: Vec<(String, String)> = st
            .budgets
            .deferred
            .iter()
            .map(|(e, j)| (e.clone(), j.clone()))
            .collect();
        let mut free_jobs = std::collections::HashSet::new();
        for (_, job) in &held {
            if !free_jobs.contains(job) && st.budgets.check(job, now).is_none() {
                free_jobs.insert(job.clone());
            }
        }
        let mut requeued = Vec::new();
        for (id, job) in held {
            if free_jobs.contains(&job) {
                st.budgets.deferred.remove(&id);
                requeued.push((id, job));
            }
        }
        // Slots of the freed jobs that piled up while held: the misfire policy.
        let mut runs = st.queue.drain();
        let (mut freed, others): (Vec<_>, Vec<_>) =
            runs.drain(..).partition(|r| free_jobs.contains(&r.job_id));
        let groups = super::cooldown::collapse(
            engine,
            st,
            &mut freed,
            now,
            grace,
            "a spending cap (budget)",
        );
        // Back in their order: most urgent first, then as they arrived.
        let mut all: Vec<_> = others.into_iter().chain(freed).collect();
        all.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
        for r in all {
            st.queue.push(r);
        }
        (requeued, groups)
    };
    let skipped: std::collections::HashSet<String> = groups
        .iter()
        .flat_map(|(_, g)| g.delete.iter().chain(std::iter::once(&g.record)).cloned())
        .collect();
    if !groups.is_empty() {
        let published: Vec<(String, String, String)> = groups
            .iter()
            .map(|(job, g)| (g.record.clone(), job.clone(), g.reason.clone()))
            .collect();
        if let Err(e) = s
            .store
            .collapse_deferred(groups.into_iter().map(|(_, g)| g).collect(), now)
            .await
        {
            tracing::error!(error = %e, "cannot record the slots a budget hold made pile up");
        }
        for (id, job, reason) in published {
            engine.publish_exec(&id, &job, ExecutionStatus::Skipped, Some(reason));
        }
    }
    let requeued: Vec<(String, String)> = requeued
        .into_iter()
        .filter(|(id, _)| !skipped.contains(id))
        .collect();
    if !requeued.is_empty() {
        tracing::info!(
            runs = requeued.len(),
            "budget hold lifted: held runs queued again"
        );
        if let Err(e) = s
            .store
            .requeue_deferred(requeued.iter().map(|(id, _)| id.clone()).collect())
            .await
        {
            tracing::error!(error = %e, "cannot record runs released from a budget hold");
        }
        for (id, job) in &requeued {
            engine.publish_exec(id, job, ExecutionStatus::Queued, None);
        }
    }
    s.dispatch.notify_one();
}

/// Wakes when a scope's hold is due to lift, or when caps change; lifts and releases.
pub(super) async fn run_budget(engine: Engine) {
    let s = &engine.shared;
    loop {
        let notified = s.budget_changed.notified();
        let wake = s.state.lock().unwrap().budgets.next_wake();
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = notified => {}
            _ = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(s.clock.instant_at(at)).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let now = s.clock.now();
        let lifted = {
            let mut st = s.state.lock().unwrap();
            let before = st.budgets.exceeded.len();
            st.budgets
                .exceeded
                .retain(|_, e| e.until.is_none_or(|u| u > now));
            before != st.budgets.exceeded.len()
        };
        if lifted {
            tracing::info!("a budget window rolled: held runs are looked at again");
            persist(&engine);
        }
        release(&engine).await;
    }
}

/// One scope's caps and spending, for the API and CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScopeStatus {
    /// `global`, or `job`.
    pub scope: String,
    pub job_id: Option<String>,
    pub job_name: Option<String>,
    /// The caps (`[budget]`, the operator's override, or the job's `budget:`).
    pub budget: Budget,
    /// `config`, `override` or `job`.
    pub source: String,
    pub windows: Vec<WindowStatus>,
    /// What the job's next run is expected to cost (jobs only).
    pub expected_run_usd: Option<f64>,
    /// Whether runs of this scope are held because of what it spent.
    pub exceeded: bool,
    pub exceeded_since: Option<DateTime<Utc>>,
    /// When the hold lifts if nothing else changes.
    pub held_until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// Runs of this scope held now.
    pub held_runs: usize,
}

/// One window of a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowStatus {
    /// `daily` (the last 24 hours) or `monthly` (the last 30 days).
    pub window: String,
    pub cap_usd: Option<f64>,
    pub spent_usd: f64,
    /// The expected cost of the runs going.
    pub going_usd: f64,
    /// Runs in the window whose CLI reported no cost (counted as $0).
    pub uncosted_runs: u32,
}

/// Every scope with a cap, and the runs held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    pub global: ScopeStatus,
    pub jobs: Vec<ScopeStatus>,
    /// Runs held by a budget now.
    pub held_runs: usize,
}

fn windows(l: &mut Ledger, b: &Budget, going: i64, now: i64) -> Vec<WindowStatus> {
    l.expire(now);
    [
        ("daily", b.daily_usd, &l.day),
        ("monthly", b.monthly_usd, &l.month),
    ]
    .into_iter()
    .map(|(name, cap, w)| WindowStatus {
        window: name.into(),
        cap_usd: cap,
        spent_usd: usd(w.sum),
        going_usd: usd(going),
        uncosted_runs: w.uncosted,
    })
    .collect()
}

impl Engine {
    /// The budgets: caps, spending in their windows, holds.
    pub async fn budget_status(&self) -> BudgetStatus {
        let s = &self.shared;
        let now = s.clock.now();
        let now_ms = now.timestamp_millis();
        let (mut global, jobs, held_runs) = {
            let mut st = s.state.lock().unwrap();
            let b = &mut st.budgets;
            let mut held_by_job: HashMap<&str, usize> = HashMap::new();
            for j in b.deferred.values() {
                *held_by_job.entry(j.as_str()).or_default() += 1;
            }
            let held_runs = b.deferred.len();
            let held_by_job: HashMap<String, usize> = held_by_job
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let status = |scope: &Scope, e: Option<&Exceeded>| {
                (
                    e.is_some(),
                    e.map(|e| e.since),
                    e.and_then(|e| e.until),
                    e.map(|e| e.reason.clone()),
                    scope.clone(),
                )
            };
            let g = b.global().clone();
            let going_all = b.going_all;
            let gw = windows(&mut b.all, &g, going_all, now_ms);
            let (exceeded, since, until, reason, _) =
                status(&Scope::Global, b.exceeded.get(&Scope::Global));
            let global = ScopeStatus {
                scope: "global".into(),
                job_id: None,
                job_name: None,
                source: if b.global_override.is_some() {
                    "override"
                } else {
                    "config"
                }
                .into(),
                budget: g,
                windows: gw,
                expected_run_usd: None,
                exceeded,
                exceeded_since: since,
                held_until: until,
                reason,
                held_runs: if b.exceeded.contains_key(&Scope::Global) {
                    held_runs
                } else {
                    0
                },
            };
            let caps: Vec<(String, Budget)> =
                b.caps.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mut jobs = Vec::new();
            for (id, cap) in caps {
                let going = b.going_jobs.get(&id).copied().unwrap_or(0);
                let expected = b.expected(&id);
                let w = windows(b.jobs.entry(id.clone()).or_default(), &cap, going, now_ms);
                let scope = Scope::Job(id.clone());
                let (exceeded, since, until, reason, _) = status(&scope, b.exceeded.get(&scope));
                jobs.push(ScopeStatus {
                    scope: "job".into(),
                    job_id: Some(id.clone()),
                    job_name: None,
                    budget: cap,
                    source: "job".into(),
                    windows: w,
                    expected_run_usd: Some(usd(expected)),
                    exceeded,
                    exceeded_since: since,
                    held_until: until,
                    reason,
                    held_runs: held_by_job.get(&id).copied().unwrap_or(0),
                });
            }
            (global, jobs, held_runs)
        };
        let mut named = Vec::with_capacity(jobs.len());
        for mut j in jobs {
            let id = j.job_id.clone().unwrap_or_default();
            let name = self.job_name(&id).await;
            if let Some(r) = &mut j.reason {
                *r = with_job_name(r, &id, &name);
            }
            j.job_name = Some(name);
            named.push(j);
        }
        named.sort_by(|a, b| a.job_name.cmp(&b.job_name));
        if global.held_runs == 0 && global.exceeded {
            global.held_runs = held_runs;
        }
        BudgetStatus {
            global,
            jobs: named,
            held_runs,
        }
    }

    /// Replaces the global caps until [`Engine::reset_global_budget`] (`PUT /api/budget`): held
    /// runs the new caps allow start at once.
    pub async fn set_global_budget(&self, budget: Budget) -> Result<BudgetStatus, EngineError> {
        if let Some((field, message)) = budget.invalid() {
            return Err(EngineError::Invalid(crate::manifest::SpecError {
                field: field.into(),
                message,
            }));
        }
        {
            let mut st = self.shared.state.lock().unwrap();
            st.budgets.global_override = Some(budget);
            st.budgets.exceeded.remove(&Scope::Global);
        }
        self.budget_applied().await
    }

    /// Back to the config's `[budget]`.
    pub async fn reset_global_budget(&self) -> Result<BudgetStatus, EngineError> {
        {
            let mut st = self.shared.state.lock().unwrap();
            st.budgets.global_override = None;
            st.budgets.exceeded.remove(&Scope::Global);
        }
        self.budget_applied().await
    }

    async fn budget_applied(&self) -> Result<BudgetStatus, EngineError> {
        let text = {
            let st = self.shared.state.lock().unwrap();
            serde_json::to_string(&st.budgets.persisted()).expect("budget state serializes")
        };
        self.shared.store.set_state(STATE_KEY, text).await?;
        super::cluster::budget_changed(self);
        release(self).await;
        Ok(self.budget_status().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        ms_time(1_800_000_000_000 + ms)
    }

    fn cap(daily: f64) -> Budget {
        Budget {
            daily_usd: Some(daily),
            ..Default::default()
        }
    }

    #[test]
    fn the_third_run_of_0_40_is_held_by_a_1_00_daily_cap() {
        let mut b = Budgets::default();
        b.set_job_cap("j", Some(&cap(1.0)));
        assert!(b.check("j", t(0)).is_none(), "nothing spent: runs");
        b.record("j", t(1_000), Some(0.4));
        assert!(b.check("j", t(2_000)).is_none(), "0.40 + ~0.40 ≤ 1.00");
        b.record("j", t(61_000), Some(0.4));
        let block = b.check("j", t(62_000)).expect("0.80 + ~0.40 > 1.00: held");
        assert!(block.by_spend);
        assert_eq!(block.spent, 800_000);
        assert_eq!(block.expected, 400_000);
        // The first cost leaves the window with its minute bucket: 0.40 + 0.40 ≤ 1.00 then.
        assert_eq!(block.until, Some(t(DAY_MS + MINUTE_MS)));
        assert!(b.check("j", t(DAY_MS + MINUTE_MS - 1)).is_some());
        assert!(b.check("j", t(DAY_MS + MINUTE_MS)).is_none());
    }

    #[test]
    fn runs_going_count_with_what_they_are_expected_to_cost() {
        let mut b = Budgets::default();
        b.set_job_cap("j", Some(&cap(1.0)));
        b.record("j", t(0), Some(0.3));
        b.start("e1", "j");
        b.start("e2", "j");
        let block = b.check("j", t(1)).expect("0.30 + 2 × ~0.30 + ~0.30 > 1.00");
        assert!(
            !block.by_spend,
            "held by the runs going, not by what was spent"
        );
        assert_eq!(block.until, None);
        b.end("e1");
        assert!(b.check("j", t(2)).is_none());
    }

    #[test]
    fn a_run_dearer_than_the_cap_runs_once_when_nothing_was_spent() {
        let mut b = Budgets::default();
        b.set_job_cap("j", Some(&cap(1.0)));
        b.record("old", t(0), Some(5.0)); // another job's spending does not count
        b.recent.insert("j".into(), VecDeque::from([3_000_000]));
        assert!(b.check("j", t(1)).is_none());
        b.record("j", t(2), Some(3.0));
        let block = b.check("j", t(3)).expect("over the cap");
        assert_eq!(
            block.until,
            Some(t(DAY_MS + MINUTE_MS)),
            "when the spending is gone"
        );
    }

    #[test]
    fn a_zero_cap_holds_everything_until_it_is_raised() {
        let mut b = Budgets::default();
        b.set_job_cap("j", Some(&cap(0.0)));
        let block = b.check("j", t(0)).expect("held");
        assert!(block.by_spend);
        assert_eq!(block.until, None);
        assert!(b.set_job_cap("j", Some(&cap(1.0))));
        assert!(b.check("j", t(1)).is_none());
    }

    #[test]
    fn the_global_cap_counts_every_job_and_uncosted_runs_count_zero() {
        let mut b = Budgets {
            configured: Budget {
                monthly_usd: Some(2.0),
                ..Default::default()
            },
            ..Default::default()
        };
        b.record("a", t(0), Some(1.0));
        b.record("b", t(HOUR_MS), None);
        b.record("b", t(2 * HOUR_MS), Some(1.0));
        let block = b.check("c", t(3 * HOUR_MS)).expect("2.00 spent of 2.00");
        assert_eq!(block.scope, Scope::Global);
        assert_eq!(block.window, "monthly");
        assert_eq!(b.all.month.uncosted, 1);
        // The hour buckets leave 30 days after their end: the first one takes $1 with it.
        assert_eq!(block.until, Some(t(MONTH_MS + HOUR_MS)));
        assert!(b.check("c", t(MONTH_MS + HOUR_MS)).is_none());
    }

    #[test]
    fn late_costs_land_in_their_bucket() {
        let mut w = Window::new(DAY_MS, MINUTE_MS);
        w.add(3 * MINUTE_MS, Some(3));
        w.add(MINUTE_MS, Some(1));
        w.add(3 * MINUTE_MS + 5, Some(4));
        assert_eq!(
            w.buckets.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            [(MINUTE_MS, 1), (3 * MINUTE_MS, 7)]
        );
        w.expire(DAY_MS + 2 * MINUTE_MS);
        assert_eq!(w.sum, 7);
    }
}
