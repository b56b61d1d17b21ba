//! The memory watchdog: one thread for the whole service samples the resident set of every
//! watched process group from `/proc` every [`WATCHDOG_INTERVAL`] and SIGKILLs a group over its
//! limit. Used where no cgroup can enforce a memory limit (or when selected).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::limits::{mib, WATCHDOG_INTERVAL};

/// One watched process group.
#[derive(Debug)]
struct Watched {
    limit: u64,
    peak: AtomicU64,
    kill_message: Mutex<Option<String>>,
}

#[derive(Default)]
struct Watchdog {
    groups: Mutex<HashMap<i32, Arc<Watched>>>,
    wake: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    static THREAD: OnceLock<()> = OnceLock::new();
    let dog = WATCHDOG.get_or_init(Watchdog::default);
    THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("cnp-memory-watchdog".into())
            .spawn(move || watchdog_loop(dog));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the memory watchdog");
        }
    });
    dog
}

fn watchdog_loop(dog: &'static Watchdog) {
    let page = page_size();
    loop {
        let watched: Vec<(i32, Arc<Watched>)> = {
            let mut groups = dog.groups.lock().unwrap_or_else(|e| e.into_inner());
            while groups.is_empty() {
                groups = dog.wake.wait(groups).unwrap_or_else(|e| e.into_inner());
            }
            groups.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let rss = group_rss(page, |pgid| watched.iter().any(|(g, _)| *g == pgid));
        {
            // Kill under the lock: a run unregisters (under the same lock) before it reaps its
            // child, so a registered group's leader still holds its pid and the pgid is safe.
            let groups = dog.groups.lock().unwrap_or_else(|e| e.into_inner());
            for (pgid, entry) in &watched {
                let Some(current) = groups.get(pgid) else {
                    continue;
                };
                if !Arc::ptr_eq(current, entry) {
                    continue;
                }
                let used = rss.get(pgid).copied().unwrap_or(0);
                entry.peak.fetch_max(used, Ordering::Relaxed);
                if used > entry.limit {
                    let mut message = entry.kill_message.lock().unwrap_or_else(|e| e.into_inner());
                    if message.is_none() {
                        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
                        *message = Some(format!(
                            "memory limit of {} exceeded: process group {pgid} used {}; killed with SIGKILL by the watchdog",
                            mib(entry.limit),
                            mib(used),
                        ));
                    }
                }
            }
        }
        std::thread::sleep(WATCHDOG_INTERVAL);
    }
}

fn page_size() -> u64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Total resident bytes per process group, for the groups `wanted` selects.
fn group_rss(page: u64, wanted: impl Fn(i32) -> bool) -> HashMap<i32, u64> {
    let mut totals = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((pgrp, rss_pages)) = parse_stat(&stat) else {
            continue;
        };
        if wanted(pgrp) {
            *totals.entry(pgrp).or_insert(0) += rss_pages.saturating_mul(page);
        }
    }
    totals
}

/// Process group and resident pages from a `/proc/<pid>/stat` line.
pub(crate) fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); pgrp is field 5, rss field 24.
    let pgrp = fields.get(2)?.parse().ok()?;
    let rss = fields.get(21)?.parse().ok()?;
    Some((pgrp, rss))
}

/// A process group under the watchdog; unregisters when finished or dropped.
#[derive(Debug)]
pub(crate) struct WatchdogGuard {
    pgid: i32,
    entry: Arc<Watched>,
}

/// What the watchdog saw of a group.
#[derive(Debug, Default)]
pub(crate) struct WatchdogReport {
    pub(crate) kill_message: Option<String>,
    pub(crate) peak_bytes: u64,
}

impl WatchdogGuard {
    pub(crate) fn watch(pgid: i32, limit: u64) -> Self {
        let dog = watchdog();
        let entry = Arc::new(Watched {
            limit,
            peak: AtomicU64::new(0),
            kill_message: Mutex::new(None),
        });
        dog.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pgid, entry.clone());
        dog.wake.notify_all();
        WatchdogGuard { pgid, entry }
    }

    /// Stops watching (call before reaping the group's leader) and says what happened.
    pub(crate) fn finish(self) -> WatchdogReport {
        self.unregister();
        WatchdogReport {
            kill_message: self
                .entry
                .kill_message
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            peak_bytes: self.entry.peak.load(Ordering::Relaxed),
        }
    }

    fn unregister(&self) {
        let mut groups = watchdog().groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups
            .get(&self.pgid)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            groups.remove(&self.pgid);
        }
    }
}

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let stat = "1234 (my (odd) name) S 1 4321 4321 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 99 12345678 2500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((4321, 2500)));
    }
}
