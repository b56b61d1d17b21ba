//! The Claude usage-limit cooldown: detect, hold runs back, wait (or probe), resume in order.
//!
//! ```text
//!  run ends with Outcome::UsageLimit ─▶ enter: state persisted (service_state `cooldown`),
//!     │                                  queued runs → `deferred`, Event::Cooldown{active}
//!     └─ that run itself → `deferred` again (not finished, not an attempt, not in the stats)
//!  while cooling: the dispatcher starts nothing; runs that come due (timer, run-now, retries)
//!     wait in the dispatch queue as `deferred`
//!  reset known ──▶ at reset + margin: end
//!  reset unknown ▶ probe (a real, cheap CLI run, not recorded as an execution) at
//!                  probe_initial, then doubling up to probe_max: success → end;
//!                  limit again → extend (with the reset it names, if any)
//!  end: slots that piled up beyond each job's misfire policy → one `skipped` execution per job;
//!       the rest → `queued`, released in priority order (then due time) through the normal
//!       dispatcher (max_concurrent_jobs and max_parallel hold: no thundering herd)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, QueuedRun};
use crate::events::Event;
use crate::executor::{RunObserver, RunRequest};
use crate::model::{ExecutionOptions, ExecutionStatus, LogStream, Outcome};
use crate::store::CollapsedSlots;

/// The `service_state` key the cooldown is persisted under.
const STATE_KEY: &str = "cooldown";

/// A usage-limit cooldown in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cooldown {
    /// When the limit was hit.
    pub since: DateTime<Utc>,
    /// When runs start again: the reset instant the CLI named, plus `[cooldown] margin`.
    /// `None`: no reset was named; probes find the end.
    pub until: Option<DateTime<Utc>>,
    /// What the CLI said.
    pub reason: String,
    /// The execution that hit the limit (`None` when a probe or a person set it).
    pub source_execution: Option<String>,
    pub source_job: Option<String>,
    /// The next probe (reset unknown).
    pub next_probe: Option<DateTime<Utc>>,
    /// The delay before the probe after `next_probe` (doubles up to `probe_max`).
    pub probe_interval_seconds: u64,
    /// Probes run so far.
    pub probes: u32,
    /// What the last probe found.
    pub last_probe: Option<String>,
    /// Runs held back right now (not persisted).
    #[serde(default, skip_deserializing)]
    pub deferred: usize,
}

fn chrono_of(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// At start-up: a cooldown in force when cnp stopped holds runs back again (an elapsed one ends
/// as soon as the cooldown task looks at it).
pub(super) async fn restore(engine: &Engine) -> Result<(), EngineError> {
    let s = &engine.shared;
    let Some(text) = s.store.get_state(STATE_KEY).await? else {
        return Ok(());
    };
    match serde_json::from_str::<Cooldown>(&text) {
        Ok(c) => {
            tracing::warn!(
                since = %c.since,
                until = ?c.until,
                reason = %c.reason,
                "a Claude usage-limit cooldown was in force when cnp stopped: runs stay deferred until it ends"
            );
            s.state.lock().unwrap().cooldown = Some(c);
        }
        Err(e) => {
            tracing::error!(error = %e, "the stored cooldown cannot be read: dropped");
            s.store.delete_state(STATE_KEY).await?;
        }
    }
    Ok(())
}

async fn persist(engine: &Engine, c: &Cooldown) {
    let text = serde_json::to_string(c).expect("a cooldown serializes");
    if let Err(e) = engine.shared.store.set_state(STATE_KEY, text).await {
        tracing::error!(error = %e, "cannot persist the cooldown: a restart would forget it");
    }
}

fn publish(engine: &Engine, c: &Cooldown, active: bool) {
    engine.shared.events.publish(Event::Cooldown {
        active,
        until: c.until,
        reason: c.reason.clone(),
        timestamp: engine.shared.clock.now(),
    });
}

/// The words runs held back carry in `error`.
fn deferred_reason(c: &Cooldown) -> String {
    match c.until {
        Some(t) => format!(
            "deferred: Claude usage-limit cooldown until {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "deferred: Claude usage-limit cooldown (reset time unknown; probing)".into(),
    }
}

/// A run (or a probe) hit the usage limit: enters the cooldown, or extends the one in force
/// when the CLI names a later reset. `resets_at` already past counts as unknown. Returns
/// whether the cooldown is new.
pub(super) async fn enter(
    engine: &Engine,
    resets_at: Option<DateTime<Utc>>,
    reason: String,
    source: Option<(&str, &str)>,
) -> bool {
    let s = &engine.shared;
    let now = s.clock.now();
    let cfg = &s.settings.cooldown;
    let known = resets_at
        .filter(|t| *t > now)
        .map(|t| t + chrono_of(cfg.margin));
    let (snapshot, newly, held) = {
        let mut st = s.state.lock().unwrap();
        let held = st.queue.ids();
        match &mut st.cooldown {
            Some(c) => {
                match (known, c.until) {
                    (Some(k), Some(u)) if k > u => c.until = Some(k),
                    (Some(k), None) => {
                        c.until = Some(k);
                        c.next_probe = None;
                    }
                    _ => {}
                }
                c.reason = reason;
                (c.clone(), false, Vec::new())
            }
            None => {
                let c = Cooldown {
                    since: now,
                    until: known,
                    reason,
                    source_execution: source.map(|(e, _)| e.to_owned()),
                    source_job: source.map(|(_, j)| j.to_owned()),
                    next_probe: known.is_none().then(|| now + chrono_of(cfg.probe_initial)),
                    probe_interval_seconds: (cfg.probe_initial.as_secs() * 2)
                        .clamp(1, cfg.probe_max.as_secs().max(1)),
                    probes: 0,
                    last_probe: None,
                    deferred: 0,
                };
                st.cooldown = Some(c.clone());
                (c, true, held)
            }
        }
    };
    persist(engine, &snapshot).await;
    if newly {
        tracing::warn!(
            until = ?snapshot.until,
            next_probe = ?snapshot.next_probe,
            reason = %snapshot.reason,
            held = held.len(),
            "Claude usage limit: cooldown entered — no runs start until it ends"
        );
        defer_in_store(engine, &held, &snapshot);
        publish(engine, &snapshot, true);
    } else {
        tracing::info!(until = ?snapshot.until, reason = %snapshot.reason, "Claude usage limit again: cooldown goes on");
    }
    s.cooldown_changed.notify_one();
    newly
}

/// Marks runs waiting in the dispatch queue `deferred` (and says so on the bus).
pub(super) fn defer_in_store(engine: &Engine, ids: &[String], c: &Cooldown) {
    if ids.is_empty() {
        return;
    }
    let s = &engine.shared;
    let reason = deferred_reason(c);
    s.store.defer_queued_detached(ids.to_vec(), reason.clone());
    let jobs: HashMap<String, String> = {
        let st = s.state.lock().unwrap();
        st.queue.job_ids()
    };
    for id in ids {
        if let Some(job) = jobs.get(id) {
            engine.publish_exec(id, job, ExecutionStatus::Deferred, Some(reason.clone()));
        }
    }
}

/// Ends the cooldown (reset reached, a probe succeeded, or cleared by hand): surplus slots go to
/// the misfire policy, the rest are released in priority order, then due time.
pub(super) async fn end(engine: &Engine, why: &str) -> Result<Option<Cooldown>, EngineError> {
    end_as(engine, why, false).await
}

/// In a cluster: another member ended the cooldown (and told about it); it ends here too.
pub(super) async fn end_quietly(engine: &Engine) -> Result<Option<Cooldown>, EngineError> {
    end_as(engine, "another cluster member ended it", true).await
}

/// In a cluster: another member entered (or extended) the cooldown; it holds runs here too,
/// as stored.
pub(super) async fn adopt(engine: &Engine) {
    let s = &engine.shared;
    let text = match s.store.get_state(STATE_KEY).await {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the cooldown another cluster member entered");
            return;
        }
    };
    let Ok(c) = serde_json::from_str::<Cooldown>(&text) else {
        return;
    };
    let held = {
        let mut st = s.state.lock().unwrap();
        let newly = st.cooldown.is_none();
        st.cooldown = Some(c.clone());
        if newly {
            st.queue.ids()
        } else {
            Vec::new()
        }
    };
    tracing::warn!(
        until = ?c.until,
        reason = %c.reason,
        "Claude usage limit hit on another cluster member: cooldown here too — no runs start until it ends"
    );
    defer_in_store(engine, &held, &c);
    s.cooldown_changed.notify_one();
}

/// [`end`]; `quiet`: the end is another member's, which announced it.
async fn end_as(engine: &Engine, why: &str, quiet: bool) -> Result<Option<Cooldown>, EngineError> {
    let s = &engine.shared;
    let now = s.clock.now();
    let grace = chrono_of(s.settings.misfire_grace);
    let (ended, kept, groups) = {
        let mut st = s.state.lock().unwrap();
        let Some(ended) = st.cooldown.take() else {
            return Ok(None);
        };
        let mut runs = st.queue.drain();
        let groups = collapse(
            engine,
            &mut st,
            &mut runs,
            now,
            grace,
            "a Claude usage-limit cooldown",
        );
        runs.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.scheduled_for.cmp(&b.scheduled_for))
                .then(a.seq.cmp(&b.seq))
        });
        let kept: Vec<(String, String)> = runs
            .iter()
            .map(|r| (r.execution_id.clone(), r.job_id.clone()))
            .collect();
        for r in runs {
            st.queue.push(r);
        }
        (ended, kept, groups)
    };
    tracing::info!(
        why,
        since = %ended.since,
        released = kept.len(),
        "Claude usage-limit cooldown over: deferred runs released in priority order"
    );
    // In a cluster each member ends the cooldown at its reset; the one that removes it from the
    // database announces the end (once, for notifications and WebSocket clients).
    let removed = s.store.delete_state(STATE_KEY).await?;
    let announce = !quiet && (removed || s.cluster.is_none());
    if !groups.is_empty() {
        let skipped: Vec<(String, String)> = groups
            .iter()
            .map(|(job, g)| (g.record.clone(), job.clone()))
            .collect();
        let reasons: Vec<String> = groups.iter().map(|(_, g)| g.reason.clone()).collect();
        s.store
            .collapse_deferred(groups.into_iter().map(|(_, g)| g).collect(), now)
            .await?;
        for ((id, job), reason) in skipped.into_iter().zip(reasons) {
            engine.publish_exec(&id, &job, ExecutionStatus::Skipped, Some(reason));
        }
    }
    s.store
        .requeue_deferred(kept.iter().map(|(id, _)| id.clone()).collect())
        .await?;
    for (id, job) in &kept {
        engine.publish_exec(id, job, ExecutionStatus::Queued, None);
    }
    if announce {
        publish(engine, &ended, false);
    }
    s.dispatch.notify_one();
    s.cooldown_changed.notify_one();
    super::cluster::room(engine);
    Ok(Some(ended))
}

/// Per job, the first attempts of schedule slots that came due during the cooldown (more than
/// `misfire_grace` ago) beyond what the job's misfire policy runs: taken out of `runs` and
/// turned into one skipped execution per job (the latest surplus slot, saying how many).
pub(super) fn collapse(
    engine: &Engine,
    st: &mut super::State,
    runs: &mut Vec<QueuedRun>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
    cause: &str,
) -> Vec<(String, CollapsedSlots)> {
    let mut missed: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in runs.iter().enumerate() {
        if r.retry_count == 0 && r.slot.is_some_and(|t| now - t > grace) {
            missed.entry(r.job_id.clone()).or_default().push(i);
        }
    }
    let mut drop = vec![false; runs.len()];
    let mut groups = Vec::new();
    for (job, mut idx) in missed {
        let Some(entry) = st.jobs.get_mut(job.as_str()) else {
            continue;
        };
        let policy = entry
            .misfire
            .unwrap_or(engine.shared.settings.misfire_policy);
        let keep = policy.runs() as usize;
        if idx.len() <= keep {
            continue;
        }
        idx.sort_by_key(|&i| runs[i].slot);
        let surplus = &idx[..idx.len() - keep];
        let (first, last) = (
            runs[surplus[0]].slot.expect("a slot"),
            runs[*surplus.last().expect("not empty")]
                .slot
                .expect("a slot"),
        );
        let reason = format!(
            "{} missed slot(s) from {} to {} not run (misfire policy: {}; {cause} held them back)",
            surplus.len(),
            first.to_rfc3339(),
            last.to_rfc3339(),
            super::timer::policy_name(policy),
        );
        for &i in surplus {
            drop[i] = true;
        }
        entry.queued = entry.queued.saturating_sub(surplus.len() as u32);
        let record = runs[*surplus.last().expect("not empty")]
            .execution_id
            .clone();
        let delete = surplus[..surplus.len() - 1]
            .iter()
            .map(|&i| runs[i].execution_id.clone())
            .collect();
        tracing::info!(job = %job, skipped = surplus.len(), "slots held back by the cooldown skipped per misfire policy");
        groups.push((
            job,
            CollapsedSlots {
                record,
                delete,
                reason,
            },
        ));
    }
    let mut i = 0;
    runs.retain(|_| {
        let keep = !drop[i];
        i += 1;
        keep
    });
    groups
}

/// The cooldown's own task: ends it at `until`, or probes when no reset is known.
pub(super) async fn run_cooldown(engine: Engine) {
    let s = &engine.shared;
    loop {
        let notified = s.cooldown_changed.notified();
        // In a cluster only the leader probes (the others learn of the end from it).
        let probes = s.cluster.as_ref().is_none_or(|c| c.is_leader());
        let wake = {
            let st = s.state.lock().unwrap();
            st.cooldown
                .as_ref()
                .and_then(|c| c.until.or(c.next_probe.filter(|_| probes)))
        };
        let Some(at) = wake else {
            tokio::select! {
                biased;
                _ = s.stop.cancelled() => break,
                _ = notified => continue,
            }
        };
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            _ = notified => continue,
            _ = tokio::time::sleep_until(s.clock.instant_at(at)) => {}
        }
        let now = s.clock.now();
        let due = {
            let st = s.state.lock().unwrap();
            st.cooldown.as_ref().map(|c| (c.until, c.next_probe))
        };
        match due {
            Some((Some(until), _)) if until <= now => {
                if let Err(e) = end(&engine, "the usage limit has reset").await {
                    tracing::error!(error = %e, "cannot end the cooldown");
                }
            }
            Some((None, Some(p))) if p <= now => {
                tokio::select! {
                    biased;
                    _ = s.stop.cancelled() => break,
                    _ = probe(&engine) => {}
                }
            }
            _ => {}
        }
    }
}

/// Probe output goes to the service log (debug) only.
struct ProbeObserver;

impl RunObserver for ProbeObserver {
    fn spawned(&self, pid: u32, _at: DateTime<Utc>) {
        tracing::debug!(pid, "cooldown probe started");
    }
    fn line(&self, stream: LogStream, line: &str) {
        tracing::debug!(stream = stream.as_str(), "cooldown probe: {line}");
    }
}

/// One probe: a real CLI run with `[cooldown] probe_prompt` and `--max-turns 1`, through the
/// runner, not recorded as an execution. Success ends the cooldown; a usage limit (or any other
/// failure) backs off to the next probe, or waits for the reset the CLI names now.
async fn probe(engine: &Engine) {
    let s = &engine.shared;
    let cfg = &s.settings.cooldown;
    let id = format!("cooldown-probe-{}", uuid::Uuid::now_v7());
    tracing::info!(probe = %id, "probing whether the Claude usage limit is over");
    let request = RunRequest {
        execution_id: id.clone(),
        prompt: cfg.probe_prompt.clone(),
        options: ExecutionOptions {
            max_turns: Some(1),
            ..Default::default()
        },
        limits: None,
        timeout: cfg.probe_timeout,
        cancel: s.kill.child_token(),
        plugin: None,
    };
    let report = s.runner.run(request, Arc::new(ProbeObserver)).await;
    let now = s.clock.now();
    let (found, resets_at) = match &report.outcome {
        Outcome::Success => {
            {
                let mut st = s.state.lock().unwrap();
                if let Some(c) = st.cooldown.as_mut() {
                    c.probes += 1;
                    c.last_probe = Some("ok".into());
                }
            }
            tracing::info!(probe = %id, "probe succeeded: the usage limit is over");
            if let Err(e) = end(engine, "a probe run succeeded").await {
                tracing::error!(error = %e, "cannot end the cooldown");
            }
            return;
        }
        Outcome::UsageLimit { resets_at, message } => {
            (format!("still limited: {message}"), *resets_at)
        }
        other => (
            format!(
                "probe failed ({}): {}",
                other.status().as_str(),
                other.error_message().unwrap_or_default()
            ),
            None,
        ),
    };
    let margin = chrono_of(cfg.margin);
    let snapshot = {
        let mut st = s.state.lock().unwrap();
        let Some(c) = st.cooldown.as_mut() else {
            return; // cleared meanwhile
        };
        c.probes += 1;
        c.last_probe = Some(found.clone());
        match resets_at.filter(|t| *t > now) {
            Some(t) => {
                c.until = Some(t + margin);
                c.next_probe = None;
            }
            None => {
                let next = c.probe_interval_seconds;
                c.next_probe = Some(now + chrono::Duration::seconds(next as i64));
                c.probe_interval_seconds = (next * 2).min(cfg.probe_max.as_secs().max(1));
            }
        }
        c.clone()
    };
    tracing::info!(probe = %id, until = ?snapshot.until, next_probe = ?snapshot.next_probe, "{found}");
    persist(engine, &snapshot).await;
}
