//! The heap timer: one task, min-heaps of next instants, `sleep_until` the earliest, woken early
//! by new entries (mini-redis's expiry loop). Nothing here scans all jobs: a wake costs
//! O(due · log n).
//!
//! Two heaps:
//!
//! - **Slots** — every active job's next schedule slot, as `(due, job index, generation)`
//!   (16 bytes). A slot is *decided* [`RECORD_AHEAD`] before it is due: its run is recorded in
//!   the store then (unique `(job, slot, attempt)` key, `queued`, `scheduled_for` = the slot), so
//!   that when the slot comes the release costs no I/O.
//! - **Recorded runs waiting for their time** — runs recorded ahead of their slot, and delayed
//!   runs (`run_after`). At their instant they go to the dispatch queue (in memory). A scheduled
//!   one is checked first: if its job was paused, disabled, rescheduled or deleted since the slot
//!   was decided, its row is withdrawn (deleted) instead — the store deletes such rows in the
//!   same write that changes the job, this only covers a record that landed after that write.
//!
//! After a crash, a run recorded ahead of its slot is a `queued` row with `scheduled_for` in the
//! future: the next start puts it back on this timer (not dispatched early), and the job's
//! `last_slot` (advanced in the recording transaction) keeps the slot from being decided twice.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Engine, Fire, QueuedRun, TimerCmd};
use crate::clock::Clock;
use crate::model::{ExecutionStatus, JobStatus, Trigger};
use crate::store::NewExecution;

/// How early the timer asks tokio to wake it (then sleeps the rest precisely).
const PRECISE_WAKE: std::time::Duration = std::time::Duration::from_millis(2);

/// How long before its slot a scheduled run is recorded. Recording 10,000 fires takes
/// ~0.1–0.3 s on a small machine; this leaves room for a slow disk or a much larger burst
/// (a record that is still in flight at the slot delays only that release). Not a whole number
/// of seconds: slots mostly fall on whole seconds, and recording the slot 2 s ahead at the very
/// instant another slot is released would put that write in front of the release's claim.
pub const RECORD_AHEAD: std::time::Duration = std::time::Duration::from_millis(1500);

/// A slot on the heap: `(due as Unix nanoseconds, job index, generation)`.
type SlotEntry = (i64, u32, u32);

fn nanos(t: DateTime<Utc>) -> i64 {
    // Beyond 2262 (the end of i64 nanoseconds): never reached in this process's lifetime.
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

struct DelayedEntry {
    due: DateTime<Utc>,
    seq: u64,
    run: Box<QueuedRun>,
}

impl PartialEq for DelayedEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for DelayedEntry {}
impl PartialOrd for DelayedEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DelayedEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.due.cmp(&other.due).then(self.seq.cmp(&other.seq))
    }
}

#[derive(Default)]
struct Heaps {
    slots: BinaryHeap<Reverse<SlotEntry>>,
    delayed: BinaryHeap<Reverse<DelayedEntry>>,
    seq: u64,
}

impl Heaps {
    fn push(&mut self, cmd: TimerCmd) {
        match cmd {
            TimerCmd::Slot {
                due,
                job,
                generation,
            } => self.slots.push(Reverse((nanos(due), job, generation))),
            TimerCmd::Delayed { due, run } => {
                self.seq += 1;
                self.delayed.push(Reverse(DelayedEntry {
                    due,
                    seq: self.seq,
                    run,
                }));
            }
        }
    }
}

pub(super) async fn run_timer(engine: Engine, mut rx: mpsc::UnboundedReceiver<TimerCmd>) {
    let s = &engine.shared;
    let ahead = chrono::Duration::from_std(RECORD_AHEAD).expect("small");
    let mut h = Heaps::default();
    // In a cluster, only the leader records slots: until this member leads, what is sent here
    // is dropped ([`Engine::lead`] puts every job on the timer again when it takes over).
    if let Some(c) = &s.cluster {
        let mut leading = c.leadership();
        while !*leading.borrow_and_update() {
            tokio::select! {
                biased;
                _ = s.stop.cancelled() => return,
                _ = leading.changed() => {}
                cmd = rx.recv() => match cmd {
                    // Sent after the takeover began: kept.
                    Some(cmd) if c.is_leader() => h.push(cmd),
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
    loop {
        // Take in everything already sent before deciding what is due.
        while let Ok(cmd) = rx.try_recv() {
            h.push(cmd);
        }
        // tokio's timer has millisecond granularity and wakes up to a tick late; it is asked to
        // wake a little early for a release, and the last stretch is slept precisely here (at
        // most PRECISE_WAKE, on this task's thread).
        if let (Clock::System, Some(e)) = (&s.clock, h.delayed.peek()) {
            let left = (e.0.due - s.clock.now()).to_std().unwrap_or_default();
            if !left.is_zero() && left <= PRECISE_WAKE {
                std::thread::sleep(left);
            }
        }
        // Releases first: they are what is late if anything is.
        let now = s.clock.now();
        let mut due_runs = Vec::new();
        while h.delayed.peek().is_some_and(|e| e.0.due <= now) {
            due_runs.push(*h.delayed.pop().expect("peeked").0.run);
        }
        if !due_runs.is_empty() {
            super::run::release(&engine, due_runs);
        }
        // Then the slots coming due within RECORD_AHEAD.
        let horizon = nanos(s.clock.now() + ahead);
        let mut due_slots = Vec::new();
        while h.slots.peek().is_some_and(|e| e.0 .0 <= horizon) {
            let Reverse((due, job, generation)) = h.slots.pop().expect("peeked");
            due_slots.push((job, generation, DateTime::from_timestamp_nanos(due)));
        }
        if !due_slots.is_empty() {
            for cmd in decide(&engine, due_slots, s.clock.now()) {
                h.push(cmd);
            }
        }

        let tick = Instant::now() + s.settings.tick_interval;
        let release_at = h.delayed.peek().map(|e| {
            let at = s.clock.instant_at(e.0.due);
            match s.clock {
                Clock::System => at.checked_sub(PRECISE_WAKE).unwrap_or(at),
                Clock::Tokio { .. } => at,
            }
        });
        let decide_at = h.slots.peek().map(|e| {
            s.clock
                .instant_at(DateTime::from_timestamp_nanos(e.0 .0) - ahead)
        });
        let wake = [release_at, decide_at]
            .into_iter()
            .flatten()
            .fold(tick, Instant::min);
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => h.push(cmd),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // Stopping: scheduled runs recorded ahead of their slot and not released are withdrawn, so
    // the next start decides their slots (as if they had never been recorded). Closing first:
    // a run the recorder hands over from now on comes back to it (and it withdraws it itself),
    // instead of landing in a channel nobody reads any more.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        h.push(cmd);
    }
    let unreleased: Vec<QueuedRun> = h
        .delayed
        .into_iter()
        .map(|e| *e.0.run)
        .filter(|r| r.epoch.is_some())
        .collect();
    withdraw_unreleased(&engine, unreleased).await;
}

/// See [`crate::store::Store::withdraw_unreleased`].
pub(super) async fn withdraw_unreleased(engine: &Engine, runs: Vec<QueuedRun>) {
    let rows: Vec<_> = runs
        .into_iter()
        .filter_map(|r| Some((r.execution_id, r.job_id, r.scheduled_for?)))
        .collect();
    let count = rows.len();
    if let Err(e) = engine.shared.store.withdraw_unreleased(rows).await {
        tracing::error!(error = %e, count, "cannot withdraw runs recorded ahead of their slot: they run on the next start");
    }
}

/// Decides slots (their due instant at most [`RECORD_AHEAD`] away, or past): turns them into
/// fires, sent to the recorder (which records them and hands them back to this timer for their
/// slot, or to the dispatch queue if the slot is already here), then computes each job's next
/// slot. Returns the new timer entries.
fn decide(
    engine: &Engine,
    due_slots: Vec<(u32, u32, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Vec<TimerCmd> {
    let s = &engine.shared;
    let grace = chrono::Duration::from_std(s.settings.misfire_grace).unwrap_or_default();
    let mut fires = Vec::with_capacity(due_slots.len());
    let mut valid = Vec::with_capacity(due_slots.len());
    {
        let mut st = s.state.lock().unwrap();
        for (idx, generation, slot) in due_slots {
            let Some(entry) = st.jobs.at_mut(idx) else {
                continue;
            };
            if entry.generation != generation || entry.status != JobStatus::Active {
                continue;
            }
            if entry.last_slot.is_some_and(|l| l >= slot) {
                // Already decided (e.g. by catch-up before a reschedule).
                valid.push((idx, generation));
                continue;
            }
            let job_id = entry.id.to_string();
            let (priority, epoch) = (entry.priority, entry.epoch);
            if now - slot <= grace {
                // On time, or ahead of time (recorded now, released at the slot).
                fires.push(fire(
                    &job_id,
                    slot,
                    Trigger::Schedule,
                    priority,
                    epoch,
                    None,
                    now,
                ));
                entry.last_slot = Some(slot);
            } else {
                // Late beyond the grace: the slots missed while down or stalled.
                let policy = entry.misfire.unwrap_or(s.settings.misfire_policy);
                let keep = policy.runs() as usize;
                let after = slot - chrono::Duration::milliseconds(1);
                let (slots, total) = entry.schedule.slots_between(after, now, keep + 1);
                let total = total as usize;
                let (skipped_latest, to_run) = if total > keep {
                    (
                        slots.first().copied(),
                        &slots[slots.len().saturating_sub(keep)..],
                    )
                } else {
                    (None, &slots[..])
                };
                if let Some(skip_slot) = skipped_latest {
                    let skipped = total - to_run.len();
                    let reason = format!(
                        "{skipped} missed slot(s) from {} to {} not run (misfire policy: {}; cnp was \
                         down or stalled)",
                        slot.to_rfc3339(),
                        skip_slot.to_rfc3339(),
                        policy_name(policy),
                    );
                    tracing::warn!(job = %job_id, skipped, "missed slots skipped per misfire policy");
                    fires.push(fire(
                        &job_id,
                        skip_slot,
                        Trigger::Catchup,
                        priority,
                        epoch,
                        Some(reason),
                        now,
                    ));
                }
                for &t in to_run {
                    let trigger = if now - t <= grace {
                        Trigger::Schedule
                    } else {
                        Trigger::Catchup
                    };
                    fires.push(fire(&job_id, t, trigger, priority, epoch, None, now));
                }
                if total > 0 {
                    tracing::info!(job = %job_id, missed = total, running = to_run.len(), "catching up on missed slots");
                }
                entry.last_slot = Some(now.max(slot));
            }
            valid.push((idx, generation));
        }
    }
    if !fires.is_empty() {
        let _ = s.fires_tx.send(fires);
    }

    // Reschedule.
    let mut next_entries = Vec::with_capacity(valid.len());
    let mut next_times = Vec::with_capacity(valid.len());
    {
        let st = s.state.lock().unwrap();
        for (idx, generation) in valid {
            let Some(entry) = st.jobs.at(idx) else {
                continue;
            };
            let from = entry.last_slot.unwrap_or(now);
            let next = entry.schedule.next_after(from);
            next_times.push((entry.id.to_string(), next));
            if let Some(due) = next {
                next_entries.push(TimerCmd::Slot {
                    due,
                    job: idx,
                    generation,
                });
            }
        }
    }
    s.store.set_next_run_times_detached(next_times);
    next_entries
}

fn fire(
    job_id: &str,
    slot: DateTime<Utc>,
    trigger: Trigger,
    priority: u8,
    epoch: u32,
    skipped: Option<String>,
    now: DateTime<Utc>,
) -> Fire {
    Fire {
        execution: NewExecution {
            id: uuid::Uuid::now_v7().to_string(),
            job_id: job_id.to_owned(),
            status: if skipped.is_some() {
                ExecutionStatus::Skipped
            } else {
                ExecutionStatus::Queued
            },
            trigger,
            slot: Some(slot),
            scheduled_for: Some(slot),
            queued_at: now,
            retry_count: 0,
            prompt: None,
            error: skipped,
        },
        priority,
        epoch,
    }
}

pub(super) fn policy_name(p: crate::model::MisfirePolicy) -> String {
    match p {
        crate::model::MisfirePolicy::Skip => "skip".into(),
        crate::model::MisfirePolicy::RunLatest => "run_latest".into(),
        crate::model::MisfirePolicy::RunUpTo(n) => format!("run_up_to {n}"),
    }
}
