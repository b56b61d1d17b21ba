//! The heap timer: one task, a min-heap of next fire instants, `sleep_until` the earliest, woken
//! early by new entries (mini-redis's expiry loop). Nothing here scans all jobs: a wake costs
//! O(due · log n).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Clock, Engine, Fire, TimerCmd, TimerKey};

/// How early the timer asks tokio to wake it (then sleeps the rest precisely).
const PRECISE_WAKE: std::time::Duration = std::time::Duration::from_millis(2);
use crate::model::{ExecutionStatus, JobStatus, Trigger};
use crate::store::NewExecution;

struct Entry {
    due: DateTime<Utc>,
    seq: u64,
    key: TimerKey,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.due.cmp(&other.due).then(self.seq.cmp(&other.seq))
    }
}

pub(super) async fn run_timer(engine: Engine, mut rx: mpsc::UnboundedReceiver<TimerCmd>) {
    let s = &engine.shared;
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<Entry>>, cmd: TimerCmd| {
        let TimerCmd::Add { due, key } = cmd;
        seq += 1;
        heap.push(Reverse(Entry { due, seq, key }));
    };
    loop {
        // Take in everything already sent before deciding what is due.
        while let Ok(cmd) = rx.try_recv() {
            push(&mut heap, cmd);
        }
        // tokio's timer has millisecond granularity and wakes up to a tick late; it is asked to
        // wake a little early, and the last stretch is slept precisely here (at most
        // PRECISE_WAKE, on this task's thread).
        if let (Clock::System, Some(e)) = (&s.clock, heap.peek()) {
            let left = (e.0.due - s.clock.now()).to_std().unwrap_or_default();
            if !left.is_zero() && left <= PRECISE_WAKE {
                std::thread::sleep(left);
            }
        }
        let now = s.clock.now();
        let mut due_slots = Vec::new();
        while heap.peek().is_some_and(|e| e.0.due <= now) {
            let Reverse(e) = heap.pop().expect("peeked");
            match e.key {
                TimerKey::Slot { job_id, generation } => {
                    due_slots.push((job_id, generation, e.due))
                }
                TimerKey::Delayed(run) => engine.enqueue(*run),
            }
        }
        if !due_slots.is_empty() {
            for (due, key) in release(&engine, due_slots, now) {
                push(&mut heap, TimerCmd::Add { due, key });
            }
        }

        let tick = Instant::now() + s.settings.tick_interval;
        let wake = heap
            .peek()
            .map(|e| {
                let at = s.clock.instant_at(e.0.due);
                let early = match s.clock {
                    Clock::System => at.checked_sub(PRECISE_WAKE).unwrap_or(at),
                    Clock::Tokio { .. } => at,
                };
                early.min(tick)
            })
            .unwrap_or(tick);
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => push(&mut heap, cmd),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Turns due slots into fires (sent to the recorder first, so runs are released before any
/// rescheduling work), then computes each job's next slot. Returns the new timer entries.
fn release(
    engine: &Engine,
    due_slots: Vec<(Arc<str>, u64, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, TimerKey)> {
    let s = &engine.shared;
    let grace = chrono::Duration::from_std(s.settings.misfire_grace).unwrap_or_default();
    let mut fires = Vec::with_capacity(due_slots.len());
    let mut valid = Vec::with_capacity(due_slots.len());
    {
        let mut st = s.state.lock().unwrap();
        for (job_id, generation, slot) in due_slots {
            let Some(entry) = st.jobs.get_mut(&job_id) else {
                continue;
            };
            if entry.generation != generation || entry.meta.status != JobStatus::Active {
                continue;
            }
            if entry.last_slot.is_some_and(|l| l >= slot) {
                // Already decided (e.g. by catch-up before a reschedule).
                valid.push((job_id, generation, slot));
                continue;
            }
            let priority = entry.meta.priority;
            if now - slot <= grace {
                fires.push(fire(&job_id, slot, Trigger::Schedule, priority, None, now));
                entry.last_slot = Some(slot);
            } else {
                // Late beyond the grace: the slots missed while down or stalled.
                let policy = entry.meta.misfire.unwrap_or(s.settings.misfire_policy);
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
                    tracing::warn!(job = %entry.meta.name, skipped, "missed slots skipped per misfire policy");
                    fires.push(fire(
                        &job_id,
                        skip_slot,
                        Trigger::Catchup,
                        priority,
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
                    fires.push(fire(&job_id, t, trigger, priority, None, now));
                }
                if total > 0 {
                    tracing::info!(job = %entry.meta.name, missed = total, running = to_run.len(), "catching up on missed slots");
                }
                entry.last_slot = Some(now.max(slot));
            }
            valid.push((job_id, generation, slot));
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
        for (job_id, generation, _slot) in valid {
            let Some(entry) = st.jobs.get(&job_id) else {
                continue;
            };
            let from = entry.last_slot.unwrap_or(now);
            let next = entry.schedule.next_after(from);
            next_times.push((job_id.to_string(), next));
            if let Some(n) = next {
                next_entries.push((n, TimerKey::Slot { job_id, generation }));
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
    }
}

fn policy_name(p: crate::model::MisfirePolicy) -> String {
    match p {
        crate::model::MisfirePolicy::Skip => "skip".into(),
        crate::model::MisfirePolicy::RunLatest => "run_latest".into(),
        crate::model::MisfirePolicy::RunUpTo(n) => format!("run_up_to {n}"),
    }
}
