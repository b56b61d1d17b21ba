//! cgroup v2 and v1 for per-run limits: finding the service's own cgroups (once per process),
//! making, joining, reading and removing a run's sub-group(s). See [`super::limits`] for policy.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::limits::CPU_PERIOD_US;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "cgroup-v1",
            CgroupVersion::V2 => "cgroup-v2",
        }
    }
}

/// Where run groups can be made, found once per process.
#[derive(Debug)]
pub(crate) struct Support {
    pub(crate) v2: Result<V2Base, String>,
    pub(crate) v1_memory: Result<PathBuf, String>,
    v1_cpu: Result<PathBuf, String>,
}

#[derive(Debug)]
pub(crate) struct V2Base {
    /// The cgroup run groups are made in.
    parent: PathBuf,
    /// Controllers enabled for its children.
    controllers: Vec<String>,
}

pub(crate) fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(parse_mountinfo_line).collect();
        let memberships: Vec<Membership> = own.lines().filter_map(parse_proc_cgroup_line).collect();
        let support = Support {
            v2: find_v2(&mounts, &memberships),
            v1_memory: find_v1(&mounts, &memberships, "memory"),
            v1_cpu: find_v1(&mounts, &memberships, "cpu"),
        };
        for dir in [
            support.v2.as_ref().map(|b| &b.parent),
            support.v1_memory.as_ref(),
            support.v1_cpu.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            remove_stale_groups(dir);
        }
        tracing::debug!(?support, "cgroup support");
        support
    })
}

/// A short description of the limit mechanisms available, for the service's start-up log.
pub fn describe_support() -> String {
    let s = support();
    let show = |r: Result<&PathBuf, &String>| match r {
        Ok(p) => format!("available at {}", p.display()),
        Err(e) => format!("unavailable ({e})"),
    };
    format!(
        "cgroup-v2 {}; cgroup-v1 memory {}; cgroup-v1 cpu {}",
        match &s.v2 {
            Ok(b) => format!(
                "available at {} ({})",
                b.parent.display(),
                b.controllers.join(" ")
            ),
            Err(e) => format!("unavailable ({e})"),
        },
        show(s.v1_memory.as_ref()),
        show(s.v1_cpu.as_ref()),
    )
}

#[derive(Debug, PartialEq)]
pub(crate) struct Mount {
    /// The directory of the hierarchy that is mounted (`/` unless a sub-tree is bind-mounted).
    pub(crate) root: String,
    pub(crate) mount_point: String,
    pub(crate) fs_type: String,
    pub(crate) super_options: Vec<String>,
}

/// One line of `/proc/self/mountinfo`.
pub(crate) fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let _source = right.next()?;
    let super_options = right
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    Some(Mount {
        root: unescape_mountinfo(left.get(3)?),
        mount_point: unescape_mountinfo(left.get(4)?),
        fs_type,
        super_options,
    })
}

fn unescape_mountinfo(s: &str) -> String {
    // Spaces, tabs, newlines and backslashes are written as octal escapes (`\040`).
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, PartialEq)]
pub(crate) struct Membership {
    /// Controllers of the hierarchy (`memory`, `cpu,cpuacct`); empty for cgroup v2.
    pub(crate) controllers: Vec<String>,
    pub(crate) path: String,
}

/// One line of `/proc/self/cgroup` (`4:memory:/a/b`, `0::/a/b`).
pub(crate) fn parse_proc_cgroup_line(line: &str) -> Option<Membership> {
    let mut parts = line.splitn(3, ':');
    let _id = parts.next()?;
    let controllers = parts.next()?;
    let path = parts.next()?.to_string();
    let controllers = controllers
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    Some(Membership { controllers, path })
}

/// The directory of cgroup `path` under a mount of (part of) its hierarchy.
pub(crate) fn cgroup_dir(mount: &Mount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        path
    } else if path == root {
        ""
    } else {
        path.strip_prefix(root).filter(|r| r.starts_with('/'))?
    };
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() {
        PathBuf::from(&mount.mount_point)
    } else {
        Path::new(&mount.mount_point).join(rel)
    })
}

fn find_v1(
    mounts: &[Mount],
    memberships: &[Membership],
    controller: &str,
) -> Result<PathBuf, String> {
    let mount = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller))
        .ok_or_else(|| format!("no cgroup v1 {controller} hierarchy mounted"))?;
    let membership = memberships
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == controller))
        .ok_or_else(|| format!("not in a cgroup v1 {controller} hierarchy"))?;
    let dir = cgroup_dir(mount, &membership.path).ok_or_else(|| {
        format!(
            "own {controller} cgroup {} is outside the mount",
            membership.path
        )
    })?;
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup directory", dir.display()));
    }
    Ok(dir)
}

fn find_v2(mounts: &[Mount], memberships: &[Membership]) -> Result<V2Base, String> {
    let membership = memberships
        .iter()
        .find(|m| m.controllers.is_empty())
        .ok_or_else(|| "not in a cgroup v2 hierarchy".to_string())?;
    let mut reasons = Vec::new();
    for mount in mounts.iter().filter(|m| m.fs_type == "cgroup2") {
        let Some(dir) = cgroup_dir(mount, &membership.path) else {
            continue;
        };
        let available = read_words(&dir.join("cgroup.controllers"));
        let wanted: Vec<&str> = ["memory", "cpu"]
            .into_iter()
            .filter(|c| available.iter().any(|a| a == c))
            .collect();
        if wanted.is_empty() {
            reasons.push(format!(
                "{} has no memory or cpu controller",
                mount.mount_point
            ));
            continue;
        }
        return enable_v2_controllers(&dir, &wanted).map(|controllers| V2Base {
            parent: dir,
            controllers,
        });
    }
    if reasons.is_empty() {
        reasons.push("no cgroup2 file system mounted".to_string());
    }
    Err(reasons.join("; "))
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Makes `wanted` available to children of `dir`; returns the controllers that are.
fn enable_v2_controllers(dir: &Path, wanted: &[&str]) -> Result<Vec<String>, String> {
    let subtree = dir.join("cgroup.subtree_control");
    let missing = |enabled: &[String]| -> Vec<String> {
        wanted
            .iter()
            .filter(|w| !enabled.iter().any(|e| e == *w))
            .map(|w| w.to_string())
            .collect()
    };
    let try_enable = || -> Option<std::io::Error> {
        let mut last = None;
        for c in missing(&read_words(&subtree)) {
            if let Err(e) = std::fs::write(&subtree, format!("+{c}")) {
                last = Some(e);
            }
        }
        last
    };
    let mut error = try_enable();
    if error.as_ref().and_then(|e| e.raw_os_error()) == Some(libc::EBUSY) {
        // "No internal processes": a cgroup with processes cannot hand controllers to children.
        // When the service is alone in its cgroup (a delegated systemd unit), move it to a leaf.
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let me = std::process::id().to_string();
        if procs.lines().all(|p| p.trim() == me) {
            let leaf = dir.join("cnp-service");
            let moved = std::fs::create_dir_all(&leaf)
                .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), &me));
            match moved {
                Ok(()) => {
                    tracing::info!(leaf = %leaf.display(), "moved the service into a leaf cgroup to delegate memory/cpu to runs");
                    error = try_enable();
                }
                Err(e) => error = Some(e),
            }
        }
    }
    let enabled = read_words(&subtree);
    let have: Vec<String> = wanted
        .iter()
        .filter(|w| enabled.iter().any(|e| e == *w))
        .map(|w| w.to_string())
        .collect();
    if have.is_empty() {
        return Err(match error {
            Some(e) if e.raw_os_error() == Some(libc::EBUSY) => format!(
                "cannot enable {} in {}: it holds other processes (run cnp in its own cgroup, e.g. a systemd unit with Delegate=yes)",
                wanted.join("+"),
                dir.display()
            ),
            Some(e) => format!("cannot enable {} in {}: {e}", wanted.join("+"), dir.display()),
            None => format!("cannot enable {} in {}", wanted.join("+"), dir.display()),
        });
    }
    Ok(have)
}

/// Removes empty run groups left by a cnp process that no longer exists.
fn remove_stale_groups(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(run_group_owner) else {
            continue;
        };
        if owner != me && kill(Pid::from_raw(owner as i32), None).is_err() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// The service pid in a run group's name `cnp-run-<pid>-<n>`.
pub(crate) fn run_group_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("cnp-run-")?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn next_group_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "cnp-run-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// One run's cgroup(s)

/// The cgroup(s) of one run: one directory for v2, up to two (memory, cpu) for v1.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    pub(crate) version: CgroupVersion,
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) cpu_quota: Option<u64>,
}

/// What a run's cgroup saw.
#[derive(Debug, Default)]
pub(crate) struct CgroupStats {
    pub(crate) oom_kills: u64,
    pub(crate) peak_bytes: Option<u64>,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
}

/// Creates the v1 group `base/name`, records it in `dirs` at once (so it is removed whatever
/// happens next), and writes `files` (name, value) into it in order.
fn make_v1_dir(
    dirs: &mut Vec<PathBuf>,
    base: &Path,
    name: &str,
    files: &[(&str, String)],
) -> Result<PathBuf, String> {
    let dir = base.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    dirs.push(dir.clone());
    for (file, value) in files {
        write(&dir, file, value)?;
    }
    Ok(dir)
}

impl RunCgroup {
    pub(crate) fn create_v2(
        base: &V2Base,
        memory: Option<u64>,
        cpu: Option<u64>,
    ) -> Result<Self, String> {
        let has = |c: &str| base.controllers.iter().any(|b| b == c);
        let memory = memory.filter(|_| has("memory"));
        let cpu = cpu.filter(|_| has("cpu"));
        if memory.is_none() && cpu.is_none() {
            return Err(format!(
                "{} has no delegated controller for these limits",
                base.parent.display()
            ));
        }
        let dir = base.parent.join(next_group_name());
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let group = RunCgroup {
            version: CgroupVersion::V2,
            dirs: vec![dir.clone()],
            memory_dir: memory.map(|_| dir.clone()),
            memory_limit: memory,
            cpu_quota: cpu,
        };
        let setup = || -> Result<(), String> {
            if let Some(bytes) = memory {
                write(&dir, "memory.max", &bytes.to_string())?;
                // The limit covers swap too, and an OOM kills the whole tree, not one process.
                let _ = write(&dir, "memory.swap.max", "0");
                let _ = write(&dir, "memory.oom.group", "1");
            }
            if let Some(quota) = cpu {
                write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            group.remove_now();
            return Err(e);
        }
        Ok(group)
    }

    pub(crate) fn create_v1(
        support: &Support,
        memory: Option<u64>,
        cpu: Option<u64>,
    ) -> Result<Self, String> {
        let name = next_group_name();
        let mut group = RunCgroup {
            version: CgroupVersion::V1,
            dirs: Vec::new(),
            memory_dir: None,
            memory_limit: None,
            cpu_quota: None,
        };
        let mut errors = Vec::new();
        if let Some(bytes) = memory {
            match &support.v1_memory {
                Ok(base) => {
                    let limit = [("memory.limit_in_bytes", bytes.to_string())];
                    match make_v1_dir(&mut group.dirs, base, &name, &limit) {
                        Ok(dir) => {
                            // Swap counts too where swap accounting is on (the file is missing otherwise).
                            if dir.join("memory.memsw.limit_in_bytes").exists() {
                                let _ =
                                    write(&dir, "memory.memsw.limit_in_bytes", &bytes.to_string());
                            }
                            group.memory_dir = Some(dir);
                            group.memory_limit = Some(bytes);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                Err(e) => errors.push(e.clone()),
            }
        }
        if let Some(quota) = cpu {
            match &support.v1_cpu {
                Ok(base) => {
                    let quota_files = [
                        ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ];
                    match make_v1_dir(&mut group.dirs, base, &name, &quota_files) {
                        Ok(_) => group.cpu_quota = Some(quota),
                        Err(e) => errors.push(e),
                    }
                }
                Err(e) => errors.push(e.clone()),
            }
        }
        if group.memory_limit.is_none() && group.cpu_quota.is_none() {
            group.remove_now();
            return Err(errors.join("; "));
        }
        if !errors.is_empty() {
            tracing::debug!(errors = %errors.join("; "), "cgroup v1: some limits not set up");
        }
        // Keep only the directories whose limit was set.
        let keep: Vec<PathBuf> = group
            .dirs
            .iter()
            .filter(|d| {
                (group.memory_limit.is_some() && Some(*d) == group.memory_dir.as_ref())
                    || (group.cpu_quota.is_some() && Some(*d) != group.memory_dir.as_ref())
            })
            .cloned()
            .collect();
        for d in group.dirs.iter().filter(|d| !keep.contains(d)) {
            let _ = std::fs::remove_dir(d);
        }
        group.dirs = keep;
        Ok(group)
    }

    /// `cgroup.procs` of each directory, for the child to join between fork and exec.
    pub(crate) fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// SIGKILLs every process still in the group(s).
    pub(crate) fn kill_all(&self) {
        for dir in &self.dirs {
            if self.version == CgroupVersion::V2
                && std::fs::write(dir.join("cgroup.kill"), "1").is_ok()
            {
                continue;
            }
            for pid in read_pids(&dir.join("cgroup.procs")) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    pub(crate) fn stats(&self) -> CgroupStats {
        let Some(dir) = &self.memory_dir else {
            return CgroupStats::default();
        };
        match self.version {
            CgroupVersion::V2 => CgroupStats {
                oom_kills: read_keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
                peak_bytes: read_u64(&dir.join("memory.peak")),
            },
            CgroupVersion::V1 => CgroupStats {
                oom_kills: read_keyed(&dir.join("memory.oom_control"), "oom_kill")
                    .or_else(|| read_u64(&dir.join("memory.failcnt")).map(|_| 0))
                    .unwrap_or(0),
                peak_bytes: read_u64(&dir.join("memory.max_usage_in_bytes")),
            },
        }
    }

    /// Whether the memory limit was hit at all (v1 `failcnt`, v2 `max` events).
    pub(crate) fn memory_limit_hit(&self) -> bool {
        let Some(dir) = &self.memory_dir else {
            return false;
        };
        match self.version {
            CgroupVersion::V2 => read_keyed(&dir.join("memory.events"), "max").unwrap_or(0) > 0,
            CgroupVersion::V1 => read_u64(&dir.join("memory.failcnt")).unwrap_or(0) > 0,
        }
    }

    fn remove_now(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// As [`RunCgroup::remove`], blocking the thread.
    pub(crate) fn remove_blocking(self) {
        for dir in &self.dirs {
            for attempt in 0..50 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 49 => {
                        if attempt == 10 {
                            self.kill_all();
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break,
                }
            }
        }
    }

    /// Removes the group(s), waiting briefly for exiting processes to leave them.
    pub(crate) async fn remove(self) {
        for dir in &self.dirs {
            for attempt in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 49 => {
                        if attempt == 10 {
                            self.kill_all();
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a run's cgroup");
                        break;
                    }
                }
            }
        }
    }
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (`memory.events`, `memory.oom_control`).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    parse_keyed(&std::fs::read_to_string(path).ok()?, key)
}

pub(crate) fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let v1 =
            "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw,memory";
        let m = parse_mountinfo_line(v1).unwrap();
        assert_eq!(m.fs_type, "cgroup");
        assert_eq!(m.mount_point, "/sys/fs/cgroup/memory");
        assert_eq!(m.root, "/");
        assert!(m.super_options.iter().any(|o| o == "memory"));
        let v2 = "29 23 0:26 /docker/abc /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        let m = parse_mountinfo_line(v2).unwrap();
        assert_eq!(
            (m.fs_type.as_str(), m.root.as_str()),
            ("cgroup2", "/docker/abc")
        );
        let spaced = r"40 1 0:1 / /mnt/with\040space rw - tmpfs tmpfs rw";
        assert_eq!(
            parse_mountinfo_line(spaced).unwrap().mount_point,
            "/mnt/with space"
        );
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn proc_cgroup_lines_parse() {
        assert_eq!(
            parse_proc_cgroup_line("4:memory:/process_api/x").unwrap(),
            Membership {
                controllers: vec!["memory".into()],
                path: "/process_api/x".into()
            }
        );
        assert_eq!(
            parse_proc_cgroup_line("2:cpu,cpuacct:/")
                .unwrap()
                .controllers,
            vec!["cpu".to_string(), "cpuacct".to_string()]
        );
        let v2 = parse_proc_cgroup_line("0::/user.slice/a:b.scope").unwrap();
        assert!(v2.controllers.is_empty());
        assert_eq!(v2.path, "/user.slice/a:b.scope");
    }

    #[test]
    fn cgroup_dirs_account_for_the_mount_root() {
        let mount = |root: &str| Mount {
            root: root.into(),
            mount_point: "/sys/fs/cgroup".into(),
            fs_type: "cgroup2".into(),
            super_options: vec![],
        };
        assert_eq!(
            cgroup_dir(&mount("/"), "/a/b").unwrap(),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
        assert_eq!(
            cgroup_dir(&mount("/"), "/").unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(
            cgroup_dir(&mount("/docker/x"), "/docker/x").unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(
            cgroup_dir(&mount("/docker/x"), "/docker/x/y").unwrap(),
            PathBuf::from("/sys/fs/cgroup/y")
        );
        assert_eq!(cgroup_dir(&mount("/docker/x"), "/docker/xy"), None);
    }

    #[test]
    fn keyed_files_parse() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(1));
        assert_eq!(parse_keyed(events, "max"), Some(12));
        assert_eq!(parse_keyed(events, "missing"), None);
    }

    #[test]
    fn run_group_names_carry_their_owner() {
        assert_eq!(run_group_owner("cnp-run-42-7"), Some(42));
        assert_eq!(run_group_owner("cnp-service"), None);
        assert_eq!(run_group_owner("cnp-run-x-1"), None);
        let name = next_group_name();
        assert_eq!(run_group_owner(&name), Some(std::process::id()));
    }
}
