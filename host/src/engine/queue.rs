//! The dispatch queue: most urgent priority first, first-in first-out within a priority.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use chrono::{DateTime, Utc};

/// A recorded execution waiting for a run slot.
#[derive(Debug, Clone)]
pub struct QueuedRun {
    pub execution_id: String,
    pub job_id: String,
    /// 10 is the most urgent, 1 the least.
    pub priority: u8,
    /// Arrival order, for FIFO within a priority.
    pub seq: u64,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub retry_count: u32,
    /// For scheduled runs: the job's epoch when the slot was decided. A run recorded ahead of its
    /// slot is withdrawn at the slot if the job's epoch moved meanwhile (paused, rescheduled).
    pub epoch: Option<u32>,
    /// For a first attempt of a schedule slot (scheduled or catch-up): the slot. Slots that
    /// piled up during a cooldown follow the job's misfire policy.
    pub slot: Option<DateTime<Utc>>,
    /// Its trace's spans (`[telemetry]`; empty when traces are off): the `run` span starts
    /// when it first enters this queue, a `queue` span each time it does.
    pub trace: super::trace::RunTrace,
}

impl PartialEq for QueuedRun {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for QueuedRun {}
impl PartialOrd for QueuedRun {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for QueuedRun {
    /// The heap's maximum is the next to run: higher priority, then earlier arrival.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The runnable queue plus, per job, runs held back by that job's `max_parallel`.
#[derive(Debug, Default)]
pub struct DispatchQueue {
    ready: BinaryHeap<QueuedRun>,
    held: HashMap<String, VecDeque<QueuedRun>>,
    next_seq: u64,
}

impl DispatchQueue {
    /// Adds a run; returns its arrival number.
    pub fn push(&mut self, mut run: QueuedRun) -> u64 {
        super::trace::queued(&mut run);
        run.seq = self.next_seq;
        self.next_seq += 1;
        let seq = run.seq;
        self.ready.push(run);
        seq
    }

    /// Takes the most urgent run whose job may start another run (`can_start(job_id)`); runs of
    /// saturated jobs are set aside until [`DispatchQueue::release`] is called for their job.
    pub fn pop(&mut self, mut can_start: impl FnMut(&QueuedRun) -> bool) -> Option<QueuedRun> {
        while let Some(run) = self.ready.pop() {
            if can_start(&run) {
                return Some(run);
            }
            self.held
                .entry(run.job_id.clone())
                .or_default()
                .push_back(run);
        }
        None
    }

    /// A run of `job_id` finished: its held runs compete again (in their original order).
    pub fn release(&mut self, job_id: &str) {
        if let Some(held) = self.held.remove(job_id) {
            self.ready.extend(held);
        }
    }

    /// Every set-aside run competes again (a spending cap's hold may have lifted).
    pub fn release_all(&mut self) {
        for (_, held) in self.held.drain() {
            self.ready.extend(held);
        }
    }

    /// Removes a run that has not started. Returns whether it was queued.
    pub fn remove(&mut self, execution_id: &str) -> Option<QueuedRun> {
        if let Some(pos) = self
            .ready
            .iter()
            .position(|r| r.execution_id == execution_id)
        {
            let mut v = std::mem::take(&mut self.ready).into_vec();
            let run = v.swap_remove(pos);
            self.ready = v.into();
            return Some(run);
        }
        for q in self.held.values_mut() {
            if let Some(pos) = q.iter().position(|r| r.execution_id == execution_id) {
                return q.remove(pos);
            }
        }
        None
    }

    /// Takes every run out (ready and held), for a re-ordered release.
    pub fn drain(&mut self) -> Vec<QueuedRun> {
        let mut all: Vec<QueuedRun> = std::mem::take(&mut self.ready).into_vec();
        for (_, q) in self.held.drain() {
            all.extend(q);
        }
        all
    }

    /// Execution id → job id of the runs waiting.
    pub fn job_ids(&self) -> std::collections::HashMap<String, String> {
        self.ready
            .iter()
            .chain(self.held.values().flatten())
            .map(|r| (r.execution_id.clone(), r.job_id.clone()))
            .collect()
    }

    /// The execution ids waiting.
    pub fn ids(&self) -> Vec<String> {
        self.ready
            .iter()
            .chain(self.held.values().flatten())
            .map(|r| r.execution_id.clone())
            .collect()
    }

    /// Runs waiting (ready or held).
    /// Runs that may start as soon as there is room (not set aside for their job's
    /// `max_parallel` or a spending cap).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn len(&self) -> usize {
        self.ready.len() + self.held.values().map(VecDeque::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, job: &str, priority: u8) -> QueuedRun {
        QueuedRun {
            execution_id: id.into(),
            job_id: job.into(),
            priority,
            seq: 0,
            scheduled_for: None,
            retry_count: 0,
            epoch: None,
            slot: None,
            trace: Default::default(),
        }
    }

    #[test]
    fn most_urgent_first_then_fifo() {
        let mut q = DispatchQueue::default();
        q.push(run("a", "j1", 5));
        q.push(run("b", "j2", 10));
        q.push(run("c", "j3", 5));
        q.push(run("d", "j4", 1));
        q.push(run("e", "j5", 10));
        let order: Vec<_> = std::iter::from_fn(|| q.pop(|_| true))
            .map(|r| r.execution_id)
            .collect();
        assert_eq!(order, ["b", "e", "a", "c", "d"]);
    }

    #[test]
    fn saturated_jobs_are_held_until_released() {
        let mut q = DispatchQueue::default();
        q.push(run("a1", "a", 9));
        q.push(run("a2", "a", 9));
        q.push(run("b1", "b", 1));
        // job a is at its max_parallel: b runs first, a's runs wait
        let r = q.pop(|r| r.job_id != "a").unwrap();
        assert_eq!(r.execution_id, "b1");
        assert!(q.pop(|r| r.job_id != "a").is_none());
        assert_eq!(q.len(), 2);
        q.release("a");
        assert_eq!(q.pop(|_| true).unwrap().execution_id, "a1");
        assert_eq!(q.pop(|_| true).unwrap().execution_id, "a2");
        assert!(q.is_empty());
    }

    #[test]
    fn remove_finds_ready_and_held_runs() {
        let mut q = DispatchQueue::default();
        q.push(run("a1", "a", 5));
        q.push(run("a2", "a", 5));
        q.push(run("b1", "b", 5));
        assert!(q.pop(|r| r.job_id != "a").is_some()); // b1 out, a1/a2 held
        assert_eq!(q.remove("a2").unwrap().execution_id, "a2");
        assert!(q.remove("zz").is_none());
        q.release("a");
        assert_eq!(q.pop(|_| true).unwrap().execution_id, "a1");
    }
}
