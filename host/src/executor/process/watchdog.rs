//! The memory watchdog: one thread for the whole service samples the resident set of every
//! watched process group from `/proc` every [`WATCHDOG_INTERVAL`] and SIGKILLs a group over its
//! limit. Used where no cgroup can enforce a memory limit (or when selected); every run is
//! sampled for its peak RSS. A scan reads every process's `stat`; with thousands of CLIs running
//! the interval stretches so that scanning takes at most a twentieth of a core.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
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
    let mut buf = Vec::with_capacity(512);
    loop {
        let watched: HashMap<i32, Arc<Watched>> = {
            let mut groups = dog.groups.lock().unwrap_or_else(|e| e.into_inner());
            while groups.is_empty() {
                groups = dog.wake.wait(groups).unwrap_or_else(|e| e.into_inner());
            }
            groups.clone()
        };
        // One pass over /proc for all groups; a hash lookup per process (with a thousand runs in
        // flight a scan of the watched list per process was a million comparisons per tick).
        let began = std::time::Instant::now();
        let rss = group_rss(page, |pgid| watched.contains_key(&pgid), &mut buf);
        let scan = began.elapsed();
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
        std::thread::sleep(pause_after(scan));
    }
}

/// The pause after a scan of `/proc` that took `scan`: [`WATCHDOG_INTERVAL`], stretched so that
/// the watchdog never takes more than a twentieth of a core. A scan reads every process's
/// `stat` (~3 µs each): with 5,000 CLI processes running it takes ~15 ms, every 300 ms then.
fn pause_after(scan: std::time::Duration) -> std::time::Duration {
    WATCHDOG_INTERVAL.max(scan * SCAN_SHARE)
}

/// A scan may take at most 1/`SCAN_SHARE` of the watchdog's time.
const SCAN_SHARE: u32 = 20;

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

/// Total resident bytes per process group, for the groups `wanted` selects. `buf` is reused
/// between calls: no allocation per process.
fn group_rss(page: u64, wanted: impl Fn(i32) -> bool, buf: &mut Vec<u8>) -> HashMap<i32, u64> {
    use std::io::{Read, Write};
    let mut totals = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    let mut path = Vec::with_capacity(32);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        path.clear();
        let _ = write!(path, "/proc/{pid}/stat");
        let stat_path = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
        let Ok(mut file) = std::fs::File::open(stat_path) else {
            continue;
        };
        buf.clear();
        if file.read_to_end(buf).is_err() {
            continue;
        }
        let Some((pgrp, rss_pages)) = std::str::from_utf8(buf).ok().and_then(parse_stat) else {
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
    // The first field after it is field 3 (state); pgrp is field 5, rss field 24.
    let mut fields = after.split_ascii_whitespace();
    let pgrp = fields.nth(2)?.parse().ok()?;
    let rss = fields.nth(18)?.parse().ok()?;
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
    fn slow_scans_stretch_the_interval() {
        use std::time::Duration;
        assert_eq!(pause_after(Duration::from_millis(1)), WATCHDOG_INTERVAL);
        assert_eq!(
            pause_after(Duration::from_millis(20)),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn group_rss_finds_this_process_group() {
        let page = page_size();
        let me = nix::unistd::getpgrp().as_raw();
        let mut buf = Vec::new();
        let rss = group_rss(page, |g| g == me, &mut buf);
        assert!(rss.get(&me).copied().unwrap_or(0) > 0, "{rss:?}");
        assert!(rss.keys().all(|g| *g == me));
    }

    #[test]
    fn stat_lines_parse() {
        let stat = "1234 (my (odd) name) S 1 4321 4321 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 99 12345678 2500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((4321, 2500)));
    }
}
