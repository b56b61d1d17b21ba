//! Sliding-window rate limits: at most N deliveries in any hour, in all and per channel. What a
//! limit holds back is counted per channel, and once that channel has room again one summary
//! goes out in its place ("N notifications suppressed …") — nothing is dropped silently.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The window the limits count over.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// What a channel's limit held back since its last summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u32,
    /// Per event name.
    pub by_event: BTreeMap<String, u32>,
    /// Job names involved.
    pub jobs: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Window {
    sent: VecDeque<Instant>,
}

impl Window {
    fn trim(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.sent.pop_front();
        }
    }

    fn has_room(&mut self, limit: Option<u32>, now: Instant) -> bool {
        self.trim(now);
        limit.is_none_or(|l| (self.sent.len() as u32) < l)
    }

    /// When the oldest send leaves the window.
    fn frees_at(&self) -> Option<Instant> {
        self.sent.front().map(|t| *t + WINDOW)
    }
}

/// Global and per-channel limits.
#[derive(Debug)]
pub struct RateLimiter {
    /// `None`: no global limit.
    global_limit: Option<u32>,
    global: Window,
    channels: HashMap<String, (Window, Option<u32>)>,
    suppressed: BTreeMap<String, Suppressed>,
}

impl RateLimiter {
    /// `per_hour` 0 means no limit.
    pub fn new(per_hour: u32) -> RateLimiter {
        RateLimiter {
            global_limit: (per_hour > 0).then_some(per_hour),
            global: Window::default(),
            channels: HashMap::new(),
            suppressed: BTreeMap::new(),
        }
    }

    /// The limit of `channel`: its own, else the global one.
    fn limit_of(&self, own: Option<u32>) -> Option<u32> {
        match own {
            Some(0) => None,
            Some(n) => Some(n),
            None => self.global_limit,
        }
    }

    /// Takes a slot for one delivery on `channel` if both limits have room.
    pub fn try_acquire(&mut self, channel: &str, own_limit: Option<u32>, now: Instant) -> bool {
        let limit = self.limit_of(own_limit);
        let global_limit = self.global_limit;
        let entry = self
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| (Window::default(), limit));
        entry.1 = limit;
        if !self.global.has_room(global_limit, now) || !entry.0.has_room(limit, now) {
            return false;
        }
        self.global.sent.push_back(now);
        entry.0.sent.push_back(now);
        true
    }

    /// Counts one notification the limit held back.
    pub fn suppress(&mut self, channel: &str, event: &str, job: Option<&str>) {
        let s = self.suppressed.entry(channel.to_owned()).or_default();
        s.count += 1;
        *s.by_event.entry(event.to_owned()).or_default() += 1;
        if let Some(j) = job {
            s.jobs.insert(j.to_owned());
        }
    }

    /// Whether `channel` has suppressed notifications waiting for a summary.
    pub fn has_suppressed(&self, channel: &str) -> bool {
        self.suppressed.contains_key(channel)
    }

    /// Channels with suppressed notifications that have room again: their summaries, each
    /// taking one slot.
    pub fn due_summaries(&mut self, now: Instant) -> Vec<(String, Suppressed)> {
        let names: Vec<String> = self.suppressed.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            let own = self.channels.get(&name).and_then(|(_, l)| *l);
            // `own` is already the effective limit of the channel.
            let global_limit = self.global_limit;
            let Some((w, _)) = self.channels.get_mut(&name) else {
                continue;
            };
            if self.global.has_room(global_limit, now) && w.has_room(own, now) {
                w.sent.push_back(now);
                self.global.sent.push_back(now);
                if let Some(s) = self.suppressed.remove(&name) {
                    out.push((name, s));
                }
            }
        }
        out
    }

    /// When a channel with suppressed notifications may have room again.
    pub fn next_check(&self) -> Option<Instant> {
        if self.suppressed.is_empty() {
            return None;
        }
        let mut at: Option<Instant> = None;
        for name in self.suppressed.keys() {
            let own = self.channels.get(name).and_then(|(w, _)| w.frees_at());
            let global = self.global.frees_at();
            // Room comes back when both have room; the later of the two is a safe wake-up.
            let t = match (own, global) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(t) = t {
                at = Some(at.map_or(t, |x| x.min(t)));
            }
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_channel_and_in_all() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(3);
        assert!(r.try_acquire("a", None, t0));
        assert!(r.try_acquire("a", None, t0));
        assert!(r.try_acquire("a", None, t0));
        assert!(!r.try_acquire("a", None, t0), "4th in the hour");
        // The global limit (3) is used up too.
        assert!(!r.try_acquire("b", None, t0));
        // A channel's own higher limit does not lift the global one.
        assert!(!r.try_acquire("c", Some(10), t0));
        // An hour later there is room again.
        assert!(r.try_acquire("b", None, t0 + WINDOW));
    }

    #[test]
    fn a_channel_limit_below_the_global_one() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0);
        assert!(r.try_acquire("a", Some(1), t0));
        assert!(!r.try_acquire("a", Some(1), t0));
        assert!(r.try_acquire("b", None, t0), "no global limit");
    }

    #[test]
    fn suppressed_notifications_become_one_summary_when_room_returns() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(2);
        assert!(r.try_acquire("a", None, t0));
        assert!(r.try_acquire("a", None, t0 + Duration::from_secs(60)));
        assert!(!r.try_acquire("a", None, t0 + Duration::from_secs(120)));
        r.suppress("a", "failed", Some("j1"));
        r.suppress("a", "failed", Some("j2"));
        r.suppress("a", "succeeded", Some("j1"));
        assert!(r.has_suppressed("a"));
        assert_eq!(r.next_check(), Some(t0 + WINDOW));
        assert!(r.due_summaries(t0 + Duration::from_secs(1800)).is_empty());
        let due = r.due_summaries(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        let (ch, s) = &due[0];
        assert_eq!(ch, "a");
        assert_eq!(s.count, 3);
        assert_eq!(s.by_event.get("failed"), Some(&2));
        assert_eq!(s.jobs.len(), 2);
        assert!(!r.has_suppressed("a"));
        assert_eq!(r.next_check(), None);
        // The summary took a slot: one more fits (limit 2), then none.
        assert!(r.try_acquire("a", None, t0 + WINDOW + Duration::from_secs(61)));
        assert!(!r.try_acquire("a", None, t0 + WINDOW + Duration::from_secs(62)));
    }
}
