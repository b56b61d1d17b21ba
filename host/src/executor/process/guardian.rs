//! The orphan guardian: CLI process groups never outlive a killed cnp.
//!
//! A run's CLI leads its own process group, so nothing of it dies with cnp by itself. On first
//! use, cnp starts one small guardian process that holds the read end of a pipe whose only write
//! end is cnp's (`O_CLOEXEC`: no child inherits it). cnp writes `+pgid` when it has spawned a
//! run and `-pgid` once the run's group is gone (reaped, leftovers killed). When cnp dies — by
//! kill -9 too — the kernel closes the write end, the guardian reads EOF, SIGKILLs every group
//! still registered and exits. One process for all runs; nothing on the spawn path but a
//! 5-byte non-blocking write.
//!
//! **How it starts.** An executable whose `main` calls [`enter`] first (`cnp` and `cnp-bench`
//! do) starts its guardian by running itself again (`/proc/self/exe`, spawned like a CLI: no
//! copy of cnp's memory), with the pipe as its stdin. Any other program that embeds cnp (the
//! test binaries) forks the guardian instead. A fork of a process that is already running jobs
//! shares all of its memory copy-on-write with a process that never exits: every page cnp then
//! writes for the first time faults and is copied, with a TLB shootdown on every core; with
//! 1,000 runs starting at once that was ~25 ms of CPU in the start window, and the fork itself
//! held the first run's spawn for ~3 ms.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that forked the child exits (tokio's
//! blocking threads come and go), and it reaches only the direct child, not its group.
//!
//! The window between `spawn()` returning and the `+pgid` write is not covered; the restart-time
//! cleanup (`engine::run::kill_leftover`, by the `CNP_EXECUTION_ID` marker) is the second line.
//!
//! The guardian loop runs only async-signal-safe calls (`read`, `kill`, `close_range`, `dup2`,
//! `sigaction`, `_exit`) on memory prepared before it starts: forked, it runs in a copy of a
//! multi-threaded process.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Groups the guardian can hold at once (more are left to the restart-time cleanup).
const CAPACITY: usize = 1 << 16;
const RECORD: usize = 5;

struct Guardian {
    /// The pipe's write end (non-blocking), `-1` when no guardian could be started.
    fd: i32,
    /// The guardian's pid (for diagnostics and tests).
    pid: i32,
    /// What is registered, so a new guardian can be told everything if the first one died.
    live: HashSet<i32>,
}

static GUARDIAN: Mutex<Option<Guardian>> = Mutex::new(None);

/// Set by [`enter`]: this executable runs the guardian when started with [`GUARDIAN_ARG`].
static SELF_EXEC: AtomicBool = AtomicBool::new(false);

/// The argument that makes an executable calling [`enter`] the guardian.
const GUARDIAN_ARG: &str = "--cnp-orphan-guardian";

/// Call first in `main` of an executable that runs CLIs: when this process was started as a
/// guardian it becomes one (and never returns); otherwise it records that its guardian can be
/// started by running this executable again instead of by a fork.
pub fn enter() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == GUARDIAN_ARG)
    {
        let (mut table, mut buf) = buffers();
        #[allow(unsafe_code)]
        // SAFETY: a fresh single-threaded process; the pipe from cnp is its stdin.
        unsafe {
            guardian_main(0, c"/dev/null".as_ptr(), &mut table, &mut buf)
        }
    }
    SELF_EXEC.store(true, Ordering::Relaxed);
}

/// Registers a run's process group: killed if cnp dies while it is registered.
pub fn register(pgid: u32) {
    let mut g = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    let pgid = pgid as i32;
    let guardian = g.get_or_insert_with(start);
    guardian.live.insert(pgid);
    if !send(guardian.fd, b'+', pgid) {
        // The guardian is gone (killed by hand?): start another and tell it everything.
        let live = std::mem::take(&mut guardian.live);
        close(guardian.fd);
        let fresh = g.insert(start());
        for p in &live {
            send(fresh.fd, b'+', *p);
        }
        fresh.live = live;
    }
}

/// Starts the guardian now if none runs yet, so the first run does not wait for it (`cnp serve`
/// does this at start, after the cgroup set-up).
pub fn start_now() {
    let mut g = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(start);
}

/// The group is gone (reaped, its leftovers killed): no longer the guardian's concern.
pub fn unregister(pgid: u32) {
    let mut g = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(guardian) = g.as_mut() {
        if guardian.live.remove(&(pgid as i32)) {
            send(guardian.fd, b'-', pgid as i32);
        }
    }
}

/// The guardian's pid, once one runs.
pub fn pid() -> Option<u32> {
    let g = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().filter(|g| g.pid > 0).map(|g| g.pid as u32)
}

fn send(fd: i32, op: u8, pgid: i32) -> bool {
    if fd < 0 {
        return true; // no guardian could be started: nothing to retry
    }
    let mut rec = [0u8; RECORD];
    rec[0] = op;
    rec[1..].copy_from_slice(&pgid.to_le_bytes());
    loop {
        #[allow(unsafe_code)]
        // SAFETY: writes 5 bytes from a live buffer to our own pipe descriptor.
        let n = unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
        if n == RECORD as isize {
            return true;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                // The guardian is not reading (stopped?): this group is left to the
                // restart-time cleanup rather than blocking a run.
                tracing::warn!(pgid, "orphan guardian's pipe is full: group not registered");
                return true;
            }
            _ => return false, // EPIPE: the guardian died
        }
    }
}

fn close(fd: i32) {
    if fd >= 0 {
        #[allow(unsafe_code)]
        // SAFETY: closes our own descriptor once.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Starts the guardian: by running this executable again when it calls [`enter`], else by a
/// fork. On failure, runs go on unguarded (logged).
fn start() -> Guardian {
    if SELF_EXEC.load(Ordering::Relaxed) {
        match start_exec() {
            Ok(g) => return g,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the orphan guardian as a new process: forking it");
            }
        }
    }
    start_fork()
}

/// Runs `/proc/self/exe --cnp-orphan-guardian` with the pipe's read end as its stdin. It stays
/// in cnp's process group, like a forked guardian (it ignores the terminal's signals): in a
/// group of its own it would be an orphaned group the moment cnp died, and the kernel would
/// send it SIGHUP and SIGCONT then.
fn start_exec() -> std::io::Result<Guardian> {
    use std::process::{Command, Stdio};
    let (read_end, write_end) = pipe()?;
    let child = Command::new("/proc/self/exe")
        .arg(GUARDIAN_ARG)
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Never waited for: it runs as long as cnp does (std's Child neither kills nor reaps).
    Ok(Guardian::started(write_end, child.id() as i32))
}

/// Forks the guardian (an executable that did not call [`enter`]).
fn start_fork() -> Guardian {
    let failed = |what: &str| {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot start the orphan guardian ({what}): CLI processes may outlive a killed cnp until its restart");
        Guardian {
            fd: -1,
            pid: -1,
            live: HashSet::new(),
        }
    };
    let Ok((read_end, write_end)) = pipe() else {
        return failed("pipe");
    };
    // Everything the child uses is allocated before the fork.
    let (mut table, mut buf) = buffers();
    let devnull = c"/dev/null";
    #[allow(unsafe_code)]
    // SAFETY: the child only makes async-signal-safe calls on pre-allocated memory and never
    // returns (it ends in `_exit`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return failed("fork");
    }
    if pid == 0 {
        #[allow(unsafe_code)]
        // SAFETY: see above.
        unsafe {
            guardian_main(read_end.as_raw_fd(), devnull.as_ptr(), &mut table, &mut buf)
        }
    }
    drop(read_end);
    Guardian::started(write_end, pid)
}

impl Guardian {
    /// The guardian `pid`, told through `write_end`.
    fn started(write_end: OwnedFd, pid: i32) -> Guardian {
        tracing::debug!(pid, "orphan guardian started");
        Guardian {
            fd: write_end.into_raw_fd(),
            pid,
            live: HashSet::new(),
        }
    }
}

/// The guardian's pipe (both ends close-on-exec: no CLI inherits them), its write end
/// non-blocking: a guardian that stops reading never blocks a run.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    #[allow(unsafe_code)]
    // SAFETY: pipe2 fills the two-element array with two new descriptors, owned from here on;
    // fcntl sets a flag on the write end.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK);
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// The guardian loop's memory: its table of groups and its read buffer.
fn buffers() -> (Vec<i32>, Vec<u8>) {
    (Vec::with_capacity(CAPACITY), vec![0u8; RECORD * 1024])
}

/// The guardian process: register/unregister groups until EOF, then kill what is left.
#[allow(unsafe_code)]
unsafe fn guardian_main(
    read_fd: i32,
    devnull: *const libc::c_char,
    table: &mut Vec<i32>,
    buf: &mut [u8],
) -> ! {
    // Terminal signals (Ctrl-C reaches the whole foreground group) must not end it: only EOF.
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        libc::signal(sig, libc::SIG_IGN);
    }
    libc::prctl(
        libc::PR_SET_NAME,
        c"cnp-guardian".as_ptr() as libc::c_ulong,
        0,
        0,
        0,
    );
    // Hold nothing of cnp's: no sockets, no database files, no pipes a caller waits on. The
    // pipe moves to descriptor 3 first (started by exec, it arrives as stdin).
    let fd = if read_fd == 3 || libc::dup2(read_fd, 3) == 3 {
        3
    } else {
        read_fd
    };
    let null = libc::open(devnull, libc::O_RDWR);
    if null >= 0 {
        for std_fd in 0..3 {
            if std_fd != fd {
                libc::dup2(null, std_fd);
            }
        }
    }
    libc::syscall(
        libc::SYS_close_range,
        (fd + 1) as libc::c_uint,
        libc::c_uint::MAX,
        0,
    );
    let mut carry = 0usize;
    loop {
        let n = libc::read(fd, buf.as_mut_ptr().add(carry).cast(), buf.len() - carry);
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        if n == 0 {
            break; // cnp is gone
        }
        let end = carry + n as usize;
        let whole = end / RECORD * RECORD;
        let mut i = 0;
        while i < whole {
            let pgid = i32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]);
            match buf[i] {
                b'+' if table.len() < table.capacity() => table.push(pgid),
                b'-' => {
                    if let Some(k) = table.iter().position(|p| *p == pgid) {
                        table.swap_remove(k);
                    }
                }
                _ => {}
            }
            i += RECORD;
        }
        carry = end - whole;
        buf.copy_within(whole..end, 0);
    }
    for pgid in table.iter() {
        if *pgid > 1 {
            libc::kill(-*pgid, libc::SIGKILL);
        }
    }
    libc::_exit(0)
}
