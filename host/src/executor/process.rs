//! The CLI's child process: spawn, streamed lines, timeout and cancel, reaping with resource
//! usage, resource limits.
//!
//! - **Process group.** The child leads its own process group (`process_group(0)`); timeout and
//!   cancel send SIGTERM to the whole group, wait `kill_grace`, then SIGKILL the group. When the
//!   child itself has exited (before it is reaped, so its pid cannot be reused), whatever is left
//!   in its group (and in its cgroup, if it has one) is SIGKILLed: grandchildren never outlive
//!   the run.
//! - **No orphans.** Every group is registered with the orphan [`guardian`], a process that
//!   SIGKILLs the groups still registered when cnp dies (kill -9 included).
//! - **Pipes.** stdin gets the prompt, then is closed (a prompt of at most `PIPE_BUF` bytes is
//!   written right after the spawn, without a task; a longer one by a task). stdout and stderr
//!   are read line by line by two tokio tasks with a bounded reader (a 100 MB line never sits in
//!   memory): observer lines are cut to `max_line_bytes`, and after `max_output_bytes` in total no more lines are forwarded
//!   (one System line says so) while the pipes are still drained and stdout still goes to the
//!   [`StreamParser`], so the final result is seen and the child never blocks on a full pipe.
//! - **Reaping.** The child is spawned with `std::process::Command` (tokio's would reap it
//!   itself and race us); its exit is awaited through a pidfd registered with the tokio reactor
//!   (no thread per child), and it is then reaped with `wait4`, which gives its rusage (CPU times
//!   and peak RSS, including its reaped descendants). Without pidfds (Linux < 5.3, seccomp), a
//!   blocking-pool thread waits with `waitid(WNOWAIT)` instead.
//! - **Few descriptors per running CLI.** Every spawn copies cnp's whole descriptor table into
//!   the child, which closes it again at `exec`: with thousands of runs in flight that per-spawn
//!   cost grows with the descriptors the running ones hold. So a running CLI holds only its two
//!   output pipes: stdin is closed once the prompt is in, and the pidfd is opened only when both
//!   output pipes have closed (the CLI exited, normally); until then a descriptor-free
//!   `waitid(WNOHANG)` every second catches a CLI whose pipes a process that left its group
//!   keeps open. With 10,000 runs due at once this took cnp from 1.18× the bare spawn loop's
//!   time to start them all to 0.97× (single runs; docs/benchmarks.md).
//! - **Limits.** See [`limits`](self::limits): cgroup v2, cgroup v1 or a memory watchdog. The child
//!   joins its cgroup between fork and exec (a `pre_exec` hook writes `0` — "the writing process"
//!   — to `cgroup.procs`), so it and everything it starts are limited from its first instruction;
//!   moving it after spawn would leave a window where it (or a fast grandchild) is outside.

mod cgroup;
pub mod guardian;
mod limits;
mod lines;
mod watchdog;

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use cgroup::describe_support as describe_limits_support;
pub use limits::{LimitsMechanism, WATCHDOG_INTERVAL};

use super::output::{ExitSummary, StreamParser};
use super::RunObserver;
use crate::model::{LogStream, ResourceLimits, ResourceUsage};
use lines::{Admit, Caps, OutputBudget, Tail};

/// How much of stderr is kept for classification (the last bytes).
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// stdout lines up to this long (or `max_line_bytes`, if larger) are parsed even when the
/// observer only gets their first `max_line_bytes`.
const PARSE_LINE_BYTES: usize = 1024 * 1024;
/// A `result` line may be longer: up to `max_output_bytes` plus this, at most
/// [`MAX_RESULT_LINE_BYTES`].
const RESULT_LINE_SLACK: usize = 256 * 1024;
const MAX_RESULT_LINE_BYTES: usize = 64 * 1024 * 1024;
/// How long the pipes may stay open after the child exited and its group was killed (a process
/// that left the group may hold them) before reading stops.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One process to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Removed from the inherited environment before `env` is applied.
    pub env_remove: Vec<String>,
    /// Set over the inherited environment, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// Working directory; `None` inherits the service's.
    pub cwd: Option<PathBuf>,
    /// Written to stdin, which is then closed.
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub max_output_bytes: usize,
    pub max_line_bytes: usize,
    pub limits: Option<ResourceLimits>,
    pub limits_mechanism: LimitsMechanism,
    pub cancel: CancellationToken,
}

/// The process could not be started; `message` names the program or directory at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpawnError {
    pub message: String,
}

/// What a process that ran left behind.
#[derive(Debug)]
pub struct ProcessResult {
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub exit: ExitSummary,
    /// Every stdout line that fitted its cap went through it.
    pub parser: StreamParser,
    /// The last [`STDERR_TAIL_BYTES`] of stderr.
    pub stderr_tail: String,
    pub resource_usage: ResourceUsage,
}

/// Runs `spec` to its end, streaming its lines to `observer` (which also hears `spawned`).
pub async fn run(
    spec: ProcessSpec,
    observer: Arc<dyn RunObserver>,
) -> Result<ProcessResult, SpawnError> {
    if spec.program.is_empty() {
        return Err(SpawnError {
            message: "no claude CLI configured (executor.claude_cli_path is empty)".into(),
        });
    }
    if let Some(dir) = &spec.cwd {
        check_working_directory(dir)?;
    }
    let mut enforcement = limits::prepare(spec.limits.as_ref(), spec.limits_mechanism);
    let clock = Instant::now();
    let spawned = match spawn(&spec, enforcement.cgroup.as_ref()) {
        Ok(child) => child,
        Err(first) => {
            let Some(group) = enforcement.cgroup.take() else {
                return Err(spawn_error(&spec, first));
            };
            // The error may come from joining the cgroup (the pre-exec hook) rather than from
            // exec: try once more without it. If that works, run without the cgroup (the
            // watchdog takes over memory) rather than not at all.
            let retried = spawn(&spec, None);
            group.remove().await;
            let child = retried.map_err(|e| spawn_error(&spec, e))?;
            let limit = spec
                .limits
                .as_ref()
                .and_then(|l| l.max_memory_mb)
                .filter(|mb| *mb > 0);
            enforcement.watchdog_limit = limit.map(|mb| mb.saturating_mul(1024 * 1024));
            enforcement.description = Some(format!(
                "joining the run's cgroup failed ({first}); {}",
                if limit.is_some() {
                    "memory limit by the watchdog; cpu limit not enforced"
                } else {
                    "cpu limit not enforced"
                }
            ));
            child
        }
    };
    // From here on, a cnp killed by -9 takes the group with it (see `guardian`).
    guardian::register(spawned.id());
    let started_at = Utc::now();
    supervise(spec, observer, spawned, enforcement, clock, started_at).await
}

fn check_working_directory(dir: &Path) -> Result<(), SpawnError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SpawnError {
            message: format!("working directory `{}` is not a directory", dir.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SpawnError {
            message: format!("working directory `{}` does not exist", dir.display()),
        }),
        Err(e) => Err(SpawnError {
            message: format!("working directory `{}` is not usable: {e}", dir.display()),
        }),
    }
}

fn spawn_error(spec: &ProcessSpec, e: std::io::Error) -> SpawnError {
    let program = &spec.program;
    let message = match e.raw_os_error() {
        Some(libc::ENOENT) if !program.contains('/') => {
            format!("claude CLI `{program}` not found in PATH (set executor.claude_cli_path)")
        }
        Some(libc::ENOENT) => {
            format!("claude CLI `{program}` not found (set executor.claude_cli_path)")
        }
        Some(libc::EACCES) => {
            format!("claude CLI `{program}` is not executable (permission denied)")
        }
        Some(libc::ENOEXEC) => format!("claude CLI `{program}` is not a valid executable"),
        _ => format!("could not start the claude CLI `{program}`: {e}"),
    };
    SpawnError { message }
}

fn spawn(
    spec: &ProcessSpec,
    cgroup: Option<&cgroup::RunCgroup>,
) -> std::io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for key in &spec.env_remove {
        cmd.env_remove(key);
    }
    for (key, value) in &spec.env {
        cmd.env(key, value);
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    if let Some(group) = cgroup {
        join_cgroup_before_exec(&mut cmd, group.procs_files());
    }
    cmd.spawn()
}

/// Makes the child move itself into the given `cgroup.procs` files between fork and exec.
fn join_cgroup_before_exec(cmd: &mut std::process::Command, procs_files: Vec<CString>) {
    if procs_files.is_empty() {
        return;
    }
    let join = move || -> std::io::Result<()> {
        for path in &procs_files {
            #[allow(unsafe_code)]
            // SAFETY: runs in the forked child before exec, where only async-signal-safe calls
            // are allowed: open/write/close on a path prepared before the fork, no allocation
            // (errors are `Os` variants). Writing "0" moves the writing process itself.
            let result = unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    -1
                } else {
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n == 1 {
                        0
                    } else {
                        -1
                    }
                }
            };
            if result != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: the hook only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(join);
    }
}

/// Why cnp stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancel,
}

async fn supervise(
    spec: ProcessSpec,
    observer: Arc<dyn RunObserver>,
    mut child: std::process::Child,
    enforcement: limits::Enforcement,
    clock: Instant,
    started_at: DateTime<Utc>,
) -> Result<ProcessResult, SpawnError> {
    let pid = child.id();
    let pgid = Pid::from_raw(pid as i32);
    // From here on, dropping this future kills the group and reaps the child elsewhere.
    let mut guard = ChildGuard {
        pid,
        cgroup: enforcement.cgroup,
        armed: true,
    };
    observer.spawned(pid, started_at);
    // Every run is sampled (that is where its peak RSS comes from); only a limit kills.
    let watchdog = Some(watchdog::WatchdogGuard::watch(
        pid as i32,
        enforcement.watchdog_limit.unwrap_or(u64::MAX),
    ));

    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    drop(child); // std's Child neither kills nor reaps on drop; we reap with wait4.
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        unreachable!("all three pipes were requested");
    };
    // The prompt goes in at once when the pipe surely holds it, and stdin is closed: a running
    // CLI then holds only its two output pipes (every descriptor cnp holds is copied and closed
    // again by each later spawn: see docs/benchmarks.md). A larger prompt is written by a task.
    let prompt = spec.stdin;
    let stdin = if prompt.len() <= libc::PIPE_BUF {
        write_small_prompt(stdin, &prompt);
        None
    } else {
        Some(stdin)
    };
    let converted = (
        stdin.map(tokio::process::ChildStdin::from_std).transpose(),
        tokio::process::ChildStdout::from_std(stdout),
        tokio::process::ChildStderr::from_std(stderr),
    );
    let (stdin, stdout, stderr) = match converted {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (a, b, c) => {
            let e = a
                .err()
                .or(b.err())
                .or(c.err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(SpawnError {
                message: format!("could not set up the claude CLI's pipes: {e}"),
            });
        }
    };

    // Every task of the run is aborted if the run's future is dropped.
    let writer = stdin.map(|stdin| {
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut stdin = stdin;
            // A child that exits without reading gives EPIPE: nothing to do about it.
            let _ = stdin.write_all(&prompt).await;
            let _ = stdin.shutdown().await;
        }))
    });

    let budget = Arc::new(OutputBudget::new(spec.max_output_bytes));
    let stop_reading = CancellationToken::new();
    let max_line = spec.max_line_bytes.max(1);
    let parse_base = max_line.max(PARSE_LINE_BYTES);
    let parse_extended = parse_base.max(
        spec.max_output_bytes
            .saturating_add(RESULT_LINE_SLACK)
            .min(MAX_RESULT_LINE_BYTES),
    );
    // Cancelled when a reader is done: the pipe's end (normally: the CLI exited).
    let (stdout_done, stderr_done) = (CancellationToken::new(), CancellationToken::new());
    let stdout_task = spawn_reader(
        &stdout_done,
        read_stdout(
            stdout,
            observer.clone(),
            budget.clone(),
            stop_reading.clone(),
            max_line,
            (parse_base, parse_extended),
        ),
    );
    let stderr_task = spawn_reader(
        &stderr_done,
        read_stderr(
            stderr,
            observer.clone(),
            budget.clone(),
            stop_reading.clone(),
            max_line,
        ),
    );

    // Wait for the exit, the timeout or a cancel.
    let exited = wait_exit(pid, &stdout_done, &stderr_done);
    tokio::pin!(exited);
    let stop = tokio::select! {
        () = &mut exited => None,
        () = tokio::time::sleep(spec.timeout) => Some(Stop::Timeout),
        () = spec.cancel.cancelled() => Some(Stop::Cancel),
    };
    if let Some(stop) = stop {
        let why = match stop {
            Stop::Timeout => format!(
                "timed out after {}",
                humantime::format_duration(spec.timeout)
            ),
            Stop::Cancel => "cancelled".to_string(),
        };
        let _ = killpg(pgid, Signal::SIGTERM);
        observer.line(
            LogStream::System,
            &format!("{why}: sent SIGTERM to process group {pid}"),
        );
        tokio::select! {
            () = &mut exited => {}
            () = tokio::time::sleep(spec.kill_grace) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                observer.line(
                    LogStream::System,
                    &format!(
                        "process group {pid} still running {} after SIGTERM: sent SIGKILL",
                        humantime::format_duration(spec.kill_grace)
                    ),
                );
                exited.await;
            }
        }
    }

    // The child is a zombie now: its pid (the group id) cannot be reused until it is reaped.
    let watched = watchdog
        .map(watchdog::WatchdogGuard::finish)
        .unwrap_or_default();
    let _ = killpg(pgid, Signal::SIGKILL); // leftovers: grandchildren must not outlive the run
    if let Some(group) = &guard.cgroup {
        group.kill_all();
    }
    let reaped = reap(pid).await;
    guard.armed = false;
    guardian::unregister(pid);
    let wall = clock.elapsed();

    // Let the readers see the end of the pipes; give up on pipes held open from elsewhere.
    let readers = async { (stdout_task.await, stderr_task.await) };
    tokio::pin!(readers);
    // The grace counts only while no line arrives: under heavy load the readers may simply not
    // have been scheduled yet, and a run that is still delivering output is never cut short.
    let drained = async {
        let mut seen = budget.seen();
        loop {
            match tokio::time::timeout(DRAIN_GRACE, &mut readers).await {
                Ok(done) => break Some(done),
                Err(_) if budget.seen() != seen => seen = budget.seen(),
                Err(_) => break None,
            }
        }
    };
    let (parser, stderr_tail) = match drained.await {
        Some(done) => done,
        None => {
            stop_reading.cancel();
            observer.line(
                LogStream::System,
                &format!(
                    "stopped reading output: nothing arrived for {} after the CLI exited, yet a process outside its group keeps the pipes open",
                    humantime::format_duration(DRAIN_GRACE)
                ),
            );
            readers.await
        }
    };
    let parser = parser.unwrap_or_else(|e| {
        tracing::error!(error = %e, "stdout reader failed");
        StreamParser::default()
    });
    let stderr_tail = stderr_tail.unwrap_or_else(|e| {
        tracing::error!(error = %e, "stderr reader failed");
        String::new()
    });
    if let Some(writer) = writer {
        writer.abort();
    }

    let reaped = reaped
        .inspect_err(|e| tracing::error!(pid, error = %e, "wait4 failed"))
        .ok();
    let rusage = reaped.as_ref().map(|r| r.rusage);
    let mut exit = ExitSummary::default();
    if let Some(Reaped { status, .. }) = reaped {
        if libc::WIFEXITED(status) {
            exit.code = Some(libc::WEXITSTATUS(status));
        } else if libc::WIFSIGNALED(status) {
            exit.signal = Some(libc::WTERMSIG(status));
        }
    }
    exit.timed_out = stop == Some(Stop::Timeout);
    exit.cancelled = stop == Some(Stop::Cancel);

    // Not `ru_maxrss`: the child starts as a copy of cnp (fork/vfork shares cnp's memory until
    // exec), and the kernel counts that high-water mark as the child's. The sampled group RSS
    // (and the cgroup's peak, where there is one) measure the CLI alone.
    let mut peak_kb = watched.peak_bytes / 1024;
    exit.limit_kill = watched.kill_message;
    if let Some(group) = guard.cgroup.take() {
        let stats = group.stats();
        if let Some(peak) = stats.peak_bytes {
            peak_kb = peak_kb.max(peak / 1024);
        }
        let killed_by_oom = stats.oom_kills > 0
            || (exit.signal == Some(libc::SIGKILL) && stop.is_none() && group.memory_limit_hit());
        if exit.limit_kill.is_none() && killed_by_oom {
            if let Some(limit) = group.memory_limit {
                exit.limit_kill = Some(format!(
                    "memory limit of {} MiB exceeded: killed by the kernel OOM killer ({})",
                    limit / (1024 * 1024),
                    group.version.name()
                ));
            }
        }
        group.remove().await;
    }
    if let Some(message) = &exit.limit_kill {
        observer.line(LogStream::System, message);
    }

    let resource_usage = ResourceUsage {
        wall_time_ms: wall.as_millis() as u64,
        user_cpu_ms: rusage.as_ref().map_or(0, |r| timeval_ms(&r.ru_utime)),
        system_cpu_ms: rusage.as_ref().map_or(0, |r| timeval_ms(&r.ru_stime)),
        peak_rss_kb: peak_kb,
        limits_enforcement: enforcement.description,
    };
    Ok(ProcessResult {
        pid,
        started_at,
        exit,
        parser,
        stderr_tail,
        resource_usage,
    })
}

fn timeval_ms(tv: &libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1000 + (tv.tv_usec.max(0) as u64) / 1000
}

/// Whether a long stdout line (its first bytes) is the CLI's final `result` event: the real
/// CLI writes `"type":"result"` first; a serializer that sorts keys puts `"num_turns"` (only on
/// results) before the `"result"` text.
fn looks_like_result(head: &[u8]) -> bool {
    let head = &head[..head.len().min(64 * 1024)];
    let has = |pat: &[u8]| head.windows(pat.len()).any(|w| w == pat);
    has(br#""type":"result""#) || has(br#""type": "result""#) || has(br#""num_turns":"#)
}

/// Forwards one line to the observer if the output budget allows.
fn forward(observer: &dyn RunObserver, budget: &OutputBudget, stream: LogStream, text: &str) {
    match budget.admit(text.len()) {
        Admit::Forward => observer.line(stream, text),
        Admit::JustExhausted => observer.line(
            LogStream::System,
            &format!(
                "output truncated: more than {} bytes; further lines are not kept (the run goes on)",
                budget.max()
            ),
        ),
        Admit::Drop => {}
    }
}

/// Calls `on_line` for each line of `pipe` until EOF, an error or `stop`.
async fn each_line<R: AsyncRead + Unpin>(
    pipe: R,
    caps: &Caps<'_>,
    stop: &CancellationToken,
    what: &str,
    mut on_line: impl FnMut(lines::Line),
) {
    let mut reader = BufReader::with_capacity(16 * 1024, pipe);
    loop {
        let line = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            line = lines::read_line(&mut reader, caps) => line,
        };
        match line {
            Ok(Some(line)) => on_line(line),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "reading the claude CLI's {what} failed");
                break;
            }
        }
    }
}

async fn read_stdout<R: AsyncRead + Unpin>(
    pipe: R,
    observer: Arc<dyn RunObserver>,
    budget: Arc<OutputBudget>,
    stop: CancellationToken,
    max_line: usize,
    (parse_base, parse_extended): (usize, usize),
) -> StreamParser {
    let mut parser = StreamParser::default();
    let caps = Caps {
        base: parse_base,
        extended: parse_extended,
        extend_if: &looks_like_result,
    };
    each_line(pipe, &caps, &stop, "stdout", |line| {
        // The whole line (for the parser) when it was read whole; the observer gets at most
        // `max_line` bytes of it.
        let whole = line
            .is_complete()
            .then(|| String::from_utf8_lossy(&line.bytes));
        match &whole {
            Some(text) if line.total_len <= max_line => {
                forward(&*observer, &budget, LogStream::Stdout, text)
            }
            _ => {
                let cut = lines::bounded_text(&line.bytes, line.total_len, max_line);
                forward(&*observer, &budget, LogStream::Stdout, &cut);
            }
        }
        match whole {
            Some(text) => parser.feed_line(&text),
            None => tracing::debug!(bytes = line.total_len, "stdout line too long to parse"),
        }
    })
    .await;
    parser
}

async fn read_stderr<R: AsyncRead + Unpin>(
    pipe: R,
    observer: Arc<dyn RunObserver>,
    budget: Arc<OutputBudget>,
    stop: CancellationToken,
    max_line: usize,
) -> String {
    let mut tail = Tail::new(STDERR_TAIL_BYTES);
    let never = |_: &[u8]| false;
    let caps = Caps {
        base: max_line,
        extended: max_line,
        extend_if: &never,
    };
    each_line(pipe, &caps, &stop, "stderr", |line| {
        let text = lines::bounded_text(&line.bytes, line.total_len, max_line);
        tail.push_line(&text);
        forward(&*observer, &budget, LogStream::Stderr, &text);
    })
    .await;
    tail.into_string()
}

// ---------------------------------------------------------------------------------------------
// Waiting for the exit and reaping

/// Runs a pipe's reader as a task (aborted if the run's future is dropped) that cancels `done`
/// when it ends, however it ends.
fn spawn_reader<F>(done: &CancellationToken, read: F) -> AbortOnDropHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let done = done.clone().drop_guard();
    AbortOnDropHandle::new(tokio::spawn(async move {
        let _done = done;
        read.await
    }))
}

/// Writes a prompt of at most `PIPE_BUF` bytes to the child's fresh stdin pipe, then closes it.
/// An empty pipe holds at least one page (also when the user's pipe-buffer allowance is used up
/// and the kernel gives new pipes a single page), so the write never blocks.
fn write_small_prompt(mut stdin: std::process::ChildStdin, prompt: &[u8]) {
    use std::io::Write;
    // A child that exited already gives EPIPE: nothing to do about it.
    let _ = stdin.write_all(prompt);
}

/// Waits for the child to exit, without reaping it. The pidfd is opened only once both output
/// pipes have closed (a CLI closes them when it exits), so a running CLI costs no descriptor
/// for it; meanwhile a check every [`EXIT_POLL`] (no descriptor either) catches a CLI whose pipes
/// are held open by a process that left its group.
async fn wait_exit(pid: u32, stdout_done: &CancellationToken, stderr_done: &CancellationToken) {
    let closed = async {
        stdout_done.cancelled().await;
        stderr_done.cancelled().await;
    };
    tokio::pin!(closed);
    let mut poll = tokio::time::interval(EXIT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.reset();
    loop {
        tokio::select! {
            () = &mut closed => break,
            _ = poll.tick() => {
                if !still_running(pid as i32) {
                    return;
                }
            }
        }
    }
    ExitWaiter::new(pid).wait().await;
}

/// How often [`wait_exit`] checks a CLI whose pipes are still open.
const EXIT_POLL: Duration = Duration::from_secs(1);

/// Whether `pid` (our child, not reaped) is still running; it stays unreaped.
fn still_running(pid: i32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    matches!(
        waitid(Id::Pid(Pid::from_raw(pid)), flags),
        Ok(WaitStatus::StillAlive)
    )
}

/// Waits for the child to exit *without reaping it*.
enum ExitWaiter {
    /// Readable once the process has exited; awaited on the tokio reactor.
    PidFd {
        fd: tokio::io::unix::AsyncFd<OwnedFd>,
        pid: i32,
    },
    /// No pidfd: a blocking-pool thread waits with `waitid(WNOWAIT)`.
    Blocking { pid: i32 },
}

impl ExitWaiter {
    fn new(pid: u32) -> Self {
        let pid = pid as i32;
        match pidfd_open(pid) {
            Ok(fd) => {
                #[allow(unsafe_code)]
                // SAFETY: the OwnedFd moves into the AsyncFd, which alone keeps it open.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(fd) => return ExitWaiter::PidFd { fd, pid },
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot poll a pidfd; waiting on a thread")
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "pidfd_open unavailable; waiting on a thread"),
        }
        ExitWaiter::Blocking { pid }
    }

    async fn wait(&self) {
        match self {
            ExitWaiter::PidFd { fd, pid } => loop {
                match fd.readable().await {
                    Ok(mut ready) => {
                        if has_exited(fd.get_ref().as_fd()) {
                            return;
                        }
                        ready.clear_ready();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "polling the pidfd failed; waiting on a thread");
                        return wait_blocking(*pid).await;
                    }
                }
            },
            ExitWaiter::Blocking { pid } => wait_blocking(*pid).await,
        }
    }
}

/// Whether the process behind `pidfd` has exited (it stays unreaped).
fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    // An error (ECHILD) means there is nothing left to wait for.
    !matches!(waitid(Id::PIDFd(pidfd), flags), Ok(WaitStatus::StillAlive))
}

async fn wait_blocking(pid: i32) {
    if pid <= 0 {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || loop {
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        match nix::sys::wait::waitid(nix::sys::wait::Id::Pid(Pid::from_raw(pid)), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    })
    .await;
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open takes plain integers; a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            pid as libc::pid_t,
            libc::PIDFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `wait4` told about a reaped child.
struct Reaped {
    status: i32,
    rusage: libc::rusage,
}

/// Reaps `pid` (which has exited) with `wait4`.
async fn reap(pid: u32) -> std::io::Result<Reaped> {
    match wait4(pid as i32, libc::WNOHANG)? {
        Some(reaped) => Ok(reaped),
        // Not exited yet (should not happen once the waiter returned): wait on a thread.
        None => tokio::task::spawn_blocking(move || wait4(pid as i32, 0))
            .await
            .map_err(std::io::Error::other)??
            .ok_or_else(|| std::io::Error::other("wait4 returned without a status")),
    }
}

/// `wait4(pid, flags)`; `None` when `WNOHANG` found the child still running.
fn wait4(pid: i32, flags: i32) -> std::io::Result<Option<Reaped>> {
    loop {
        let mut status = 0;
        #[allow(unsafe_code)]
        // SAFETY: wait4 writes only into the status and the zeroed rusage it is given.
        let (rc, rusage) = unsafe {
            let mut rusage: libc::rusage = std::mem::zeroed();
            let rc = libc::wait4(pid, &mut status, flags, &mut rusage);
            (rc, rusage)
        };
        if rc == pid {
            return Ok(Some(Reaped { status, rusage }));
        }
        if rc == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Kills and reaps the child if the run's future is dropped before it finished.
struct ChildGuard {
    pid: u32,
    cgroup: Option<cgroup::RunCgroup>,
    armed: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let cgroup = self.cgroup.take();
        if !self.armed {
            // Reaped already; only the cgroup may be left (the future was dropped late).
            if let Some(group) = cgroup {
                let _ = std::thread::Builder::new()
                    .name("cnp-cgroup-cleanup".into())
                    .spawn(move || group.remove_blocking());
            }
            return;
        }
        let pid = self.pid;
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        if let Some(group) = &cgroup {
            group.kill_all();
        }
        let reaper = std::thread::Builder::new()
            .name("cnp-reaper".into())
            .spawn(move || {
                let _ = wait4(pid as i32, 0);
                guardian::unregister(pid);
                if let Some(group) = cgroup {
                    group.remove_blocking();
                }
            });
        if let Err(e) = reaper {
            tracing::warn!(pid, error = %e, "could not start a thread to reap an abandoned run");
        }
    }
}

/// Raises the soft limit on open files to the hard limit (each piped child holds several
/// descriptors; the common soft default of 1,024 runs out at a few hundred runs). Returns the
/// soft limit before and after.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    let (after, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    Ok((soft, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_recognised_by_their_head() {
        assert!(looks_like_result(
            br#"{"type":"result","subtype":"success"}"#
        ));
        assert!(looks_like_result(br#"{ "type": "result" }"#));
        assert!(looks_like_result(
            br#"{"is_error":false,"num_turns":1,"result":"..."#
        ));
        assert!(!looks_like_result(br#"{"type":"assistant"}"#));
    }

    #[test]
    fn spawn_errors_name_the_program() {
        let spec = |program: &str| ProcessSpec {
            program: program.into(),
            args: vec![],
            env_remove: vec![],
            env: vec![],
            cwd: None,
            stdin: vec![],
            timeout: Duration::from_secs(1),
            kill_grace: Duration::from_secs(1),
            max_output_bytes: 1,
            max_line_bytes: 1,
            limits: None,
            limits_mechanism: LimitsMechanism::Auto,
            cancel: CancellationToken::new(),
        };
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            spawn_error(&spec("claude"), enoent()).message,
            "claude CLI `claude` not found in PATH (set executor.claude_cli_path)"
        );
        assert!(spawn_error(&spec("/opt/x/claude"), enoent())
            .message
            .contains("`/opt/x/claude` not found"));
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(spawn_error(&spec("claude"), eacces)
            .message
            .contains("not executable"));
    }

    #[test]
    fn missing_or_file_working_directories_are_refused() {
        let missing = check_working_directory(Path::new("/definitely/not/here")).unwrap_err();
        assert_eq!(
            missing.message,
            "working directory `/definitely/not/here` does not exist"
        );
        let file = check_working_directory(Path::new("/proc/self/status")).unwrap_err();
        assert!(
            file.message.contains("is not a directory"),
            "{}",
            file.message
        );
        assert!(check_working_directory(Path::new("/")).is_ok());
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped with wait4, not Child::wait
    async fn exits_are_awaited_through_a_pidfd_then_reaped_with_rusage() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let waiter = ExitWaiter::new(child.id());
        assert!(
            matches!(waiter, ExitWaiter::PidFd { .. }),
            "pidfd_open should work on Linux >= 5.3"
        );
        waiter.wait().await;
        let reaped = reap(child.id()).await.unwrap();
        assert!(libc::WIFEXITED(reaped.status));
        assert_eq!(libc::WEXITSTATUS(reaped.status), 3);
        assert!(reaped.rusage.ru_maxrss > 0);
        // The blocking fallback waits without reaping too.
        let child = std::process::Command::new("true").spawn().unwrap();
        ExitWaiter::Blocking {
            pid: child.id() as i32,
        }
        .wait()
        .await;
        assert!(wait4(child.id() as i32, libc::WNOHANG).unwrap().is_some());
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        let (before, after) = raise_nofile_limit().unwrap();
        assert!(after >= before);
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
    }
}
