//! Per-run resource limits (`max_memory_mb`, `max_cpu_percent`) on the CLI's process tree.
//!
//! Mechanisms, strongest first (see [`LimitsMechanism`]):
//! 1. **cgroup v2** ([`super::cgroup`]): a sub-group `cnp-run-<service pid>-<n>` of the service's own cgroup with
//!    `memory.max` (+ `memory.swap.max = 0`, `memory.oom.group = 1`) and `cpu.max`. The service's
//!    cgroup must have the controllers in its `cgroup.subtree_control`; if it does not and the
//!    service is the only process in it (a systemd unit with `Delegate=yes`), the service moves
//!    itself into a `cnp-service` leaf and enables them (the delegation pattern systemd documents).
//! 2. **cgroup v1**: sub-groups of the service's own `memory` and `cpu` cgroups with
//!    `memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes` when swap accounting is on) and
//!    `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
//! 3. **watchdog** (memory only, [`super::watchdog`]): one thread for the whole service samples the resident set of
//!    every watched process group from `/proc` every [`WATCHDOG_INTERVAL`] and SIGKILLs a group
//!    over its limit. CPU cannot be limited this way and is reported as not enforced.
//!
//! Sub-groups are made under the service's own cgroup (never the root), so runs stay inside any
//! limit the service itself runs under. The child joins its groups between fork and exec (see
//! `process.rs`), so nothing it starts escapes them. Groups are removed after the run.

use std::time::Duration;

use super::cgroup::{self, RunCgroup};
use crate::model::ResourceLimits;

/// How often the watchdog samples memory use.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(250);

/// The `cpu.max` / `cpu.cfs_period_us` period used for CPU limits, in microseconds.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// Which OS mechanism may enforce resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitsMechanism {
    /// cgroup v2, else cgroup v1, else the memory watchdog.
    #[default]
    Auto,
    /// Only cgroup v2 (the watchdog if it is not available).
    CgroupV2,
    /// Only cgroup v1 (the watchdog if it is not available).
    CgroupV1,
    /// Only the memory watchdog (CPU limits are not enforced).
    Watchdog,
}

impl LimitsMechanism {
    /// The environment variable that selects the mechanism (`auto`, `cgroup-v2`, `cgroup-v1`,
    /// `watchdog`) for runners built with [`LimitsMechanism::from_env`].
    pub const ENV: &'static str = "CNP_RESOURCE_LIMITS";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => LimitsMechanism::Auto,
            "cgroup-v2" | "cgroup2" | "v2" => LimitsMechanism::CgroupV2,
            "cgroup-v1" | "cgroup1" | "v1" => LimitsMechanism::CgroupV1,
            "watchdog" => LimitsMechanism::Watchdog,
            _ => return None,
        })
    }

    /// From [`Self::ENV`]; `Auto` when unset or not understood (with a warning).
    pub fn from_env() -> Self {
        match std::env::var(Self::ENV) {
            Ok(v) => Self::parse(&v).unwrap_or_else(|| {
                tracing::warn!(value = %v, "{} not understood; using auto", Self::ENV);
                LimitsMechanism::Auto
            }),
            Err(_) => LimitsMechanism::Auto,
        }
    }

    fn allows_v2(self) -> bool {
        matches!(self, LimitsMechanism::Auto | LimitsMechanism::CgroupV2)
    }

    fn allows_v1(self) -> bool {
        matches!(self, LimitsMechanism::Auto | LimitsMechanism::CgroupV1)
    }
}

/// `max_cpu_percent` (of one CPU; 200 = two CPUs) as a CFS quota per [`CPU_PERIOD_US`].
pub(crate) fn cpu_quota_us(percent: f64) -> Option<u64> {
    if !percent.is_finite() || percent <= 0.0 {
        return None;
    }
    let quota = (percent / 100.0 * CPU_PERIOD_US as f64).round();
    Some((quota as u64).max(1_000))
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// How one run's limits are enforced.
#[derive(Debug, Default)]
pub(crate) struct Enforcement {
    pub(crate) cgroup: Option<RunCgroup>,
    /// Memory limit for the watchdog, in bytes.
    pub(crate) watchdog_limit: Option<u64>,
    /// For `ResourceUsage::limits_enforcement`.
    pub(crate) description: Option<String>,
}

/// Sets up the enforcement of `limits` for one run (`None`: no limits, nothing to do).
pub(crate) fn prepare(limits: Option<&ResourceLimits>, mechanism: LimitsMechanism) -> Enforcement {
    let Some(limits) = limits else {
        return Enforcement::default();
    };
    let mut notes = Vec::new();
    let memory = match limits.max_memory_mb {
        Some(0) => {
            notes.push("memory limit of 0 MB ignored".to_string());
            None
        }
        Some(mb) => Some(mb.saturating_mul(1024 * 1024)),
        None => None,
    };
    let cpu = match limits.max_cpu_percent {
        Some(p) => match cpu_quota_us(p) {
            Some(q) => Some(q),
            None => {
                notes.push(format!("cpu limit of {p}% ignored"));
                None
            }
        },
        None => None,
    };
    if memory.is_none() && cpu.is_none() {
        return Enforcement {
            description: (!notes.is_empty()).then(|| notes.join("; ")),
            ..Enforcement::default()
        };
    }

    let support = cgroup::support();
    let mut cgroup = None;
    let mut cgroup_failures = Vec::new();
    if mechanism.allows_v2() {
        match &support.v2 {
            Ok(base) => match RunCgroup::create_v2(base, memory, cpu) {
                Ok(group) => cgroup = Some(group),
                Err(e) => cgroup_failures.push(format!("cgroup-v2: {e}")),
            },
            Err(e) => cgroup_failures.push(format!("cgroup-v2: {e}")),
        }
    }
    if cgroup.is_none() && mechanism.allows_v1() {
        match RunCgroup::create_v1(support, memory, cpu) {
            Ok(group) => cgroup = Some(group),
            Err(e) => cgroup_failures.push(format!("cgroup-v1: {e}")),
        }
    }

    let mut parts = Vec::new();
    let (mut memory_done, mut cpu_done) = (false, false);
    if let Some(group) = &cgroup {
        let mut set = Vec::new();
        if let Some(bytes) = group.memory_limit {
            set.push(format!("memory {}", mib(bytes)));
            memory_done = true;
        }
        if let Some(quota) = group.cpu_quota {
            set.push(format!("cpu {quota}/{CPU_PERIOD_US} us"));
            cpu_done = true;
        }
        parts.push(format!("{} ({})", group.version.name(), set.join(", ")));
    }
    let why_no_cgroup = if mechanism == LimitsMechanism::Watchdog {
        "watchdog selected".to_string()
    } else if cgroup_failures.is_empty() {
        "no writable cgroup".to_string()
    } else {
        format!("no writable cgroup ({})", cgroup_failures.join("; "))
    };
    let mut watchdog_limit = None;
    if let (Some(bytes), false) = (memory, memory_done) {
        watchdog_limit = Some(bytes);
        parts.push(format!(
            "watchdog (memory {}, process-group RSS sampled every {} ms)",
            mib(bytes),
            WATCHDOG_INTERVAL.as_millis()
        ));
    }
    if let (Some(_), false) = (cpu, cpu_done) {
        parts.push(format!("cpu limit not enforced: {why_no_cgroup}"));
    } else if watchdog_limit.is_some() && mechanism != LimitsMechanism::Watchdog {
        parts.push(format!("memory not in a cgroup: {why_no_cgroup}"));
    }
    parts.extend(notes);
    Enforcement {
        cgroup,
        watchdog_limit,
        description: Some(parts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_parse() {
        assert_eq!(LimitsMechanism::parse("auto"), Some(LimitsMechanism::Auto));
        assert_eq!(
            LimitsMechanism::parse("cgroup-v2"),
            Some(LimitsMechanism::CgroupV2)
        );
        assert_eq!(
            LimitsMechanism::parse(" Cgroup-V1 "),
            Some(LimitsMechanism::CgroupV1)
        );
        assert_eq!(
            LimitsMechanism::parse("watchdog"),
            Some(LimitsMechanism::Watchdog)
        );
        assert_eq!(LimitsMechanism::parse("rlimit"), None);
    }

    #[test]
    fn cpu_percent_becomes_a_quota() {
        assert_eq!(cpu_quota_us(50.0), Some(50_000));
        assert_eq!(cpu_quota_us(200.0), Some(200_000));
        assert_eq!(cpu_quota_us(0.1), Some(1_000));
        assert_eq!(cpu_quota_us(0.0), None);
        assert_eq!(cpu_quota_us(f64::NAN), None);
        assert_eq!(cpu_quota_us(-5.0), None);
    }

    #[test]
    fn no_limits_means_no_enforcement() {
        let e = prepare(None, LimitsMechanism::Auto);
        assert!(e.cgroup.is_none() && e.watchdog_limit.is_none() && e.description.is_none());
        let empty = ResourceLimits::default();
        assert!(prepare(Some(&empty), LimitsMechanism::Auto)
            .description
            .is_none());
    }

    #[test]
    fn forced_watchdog_covers_memory_and_reports_cpu() {
        let limits = ResourceLimits {
            max_memory_mb: Some(64),
            max_cpu_percent: Some(50.0),
        };
        let e = prepare(Some(&limits), LimitsMechanism::Watchdog);
        assert!(e.cgroup.is_none());
        assert_eq!(e.watchdog_limit, Some(64 * 1024 * 1024));
        let d = e.description.unwrap();
        assert!(d.contains("watchdog (memory 64 MiB"), "{d}");
        assert!(d.contains("cpu limit not enforced"), "{d}");
    }
}
