//! The executor against a real child process: `fake-claude` (tests/src/bin/fake-claude.rs),
//! scripted through `FAKE_CLAUDE_*` variables in the job's environment, and `sh` for shapes of
//! output fake-claude does not make. Assertions are on outcomes, never on durations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cnp::executor::process::LimitsMechanism;
use cnp::executor::{ClaudeRunner, ExecutorSettings, RunObserver, RunReport, RunRequest, Runner};
use cnp::model::{ExecutionOptions, LogStream, Outcome, ResourceLimits};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Harness

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<target>/debug/fake-claude`, built once per test process if it is missing.
fn fake_claude() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let path = target.join("debug").join("fake-claude");
        if !path.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-p", "cnp-tests", "--bin", "fake-claude"])
                .current_dir(workspace())
                .status()
                .expect("running cargo build for fake-claude");
            assert!(status.success(), "building fake-claude failed");
        }
        assert!(path.exists(), "{} missing after the build", path.display());
        path
    })
}

#[derive(Default)]
struct Recorder {
    spawned: Mutex<Vec<(u32, DateTime<Utc>)>>,
    lines: Mutex<Vec<(LogStream, String)>>,
}

impl RunObserver for Recorder {
    fn spawned(&self, pid: u32, at: DateTime<Utc>) {
        self.spawned.lock().unwrap().push((pid, at));
    }
    fn line(&self, stream: LogStream, line: &str) {
        self.lines.lock().unwrap().push((stream, line.to_string()));
    }
}

impl Recorder {
    fn lines(&self, stream: LogStream) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn system(&self) -> String {
        self.lines(LogStream::System).join("\n")
    }

    fn grandchild_pid(&self) -> i32 {
        self.lines(LogStream::Stderr)
            .iter()
            .find_map(|l| {
                l.strip_prefix("grandchild pid ")
                    .and_then(|p| p.trim().parse().ok())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no grandchild pid on stderr: {:?}",
                    self.lines(LogStream::Stderr)
                )
            })
    }
}

fn settings() -> ExecutorSettings {
    ExecutorSettings {
        command: vec![fake_claude().display().to_string()],
        kill_grace: Duration::from_millis(300),
        max_output_bytes: 1024 * 1024,
        max_line_bytes: 64 * 1024,
        base_env: vec![("TZ".into(), "UTC".into())],
        default_working_directory: None,
    }
}

fn request(env: &[(&str, &str)]) -> RunRequest {
    let environment: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    RunRequest {
        execution_id: "test-execution".into(),
        prompt: "say hello".into(),
        options: ExecutionOptions {
            environment,
            ..ExecutionOptions::default()
        },
        limits: None,
        timeout: Duration::from_secs(60),
        cancel: CancellationToken::new(),
        plugin: None,
    }
}

async fn run_with(runner: &ClaudeRunner, request: RunRequest) -> (RunReport, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let report = runner.run(request, recorder.clone()).await;
    (report, recorder)
}

async fn run(request: RunRequest) -> (RunReport, Arc<Recorder>) {
    run_with(&ClaudeRunner::new(settings()), request).await
}

/// Whether `pid` is gone (or a zombie waiting for init): polls for a few seconds.
fn process_is_gone(pid: i32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                if state == Some("Z") || state == Some("X") {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_reports_result_session_and_usage() {
    let (report, recorder) = run(request(&[])).await;
    assert_eq!(
        report.outcome,
        Outcome::Success,
        "{:?}",
        recorder.lines.lock().unwrap()
    );
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(
        report.result_text.as_deref(),
        Some("Hello from fake claude: say hello")
    );
    assert!(report.session_id.as_deref().is_some_and(|s| !s.is_empty()));
    assert!(report.cost_usd.is_some());
    assert!(report.usage.is_some());
    let pid = report.pid.expect("pid");
    assert_eq!(
        recorder.spawned.lock().unwrap().as_slice(),
        &[(pid, report.started_at.unwrap())]
    );
    let usage = report.resource_usage.expect("resource usage");
    assert!(
        usage.wall_time_ms > 0 || usage.user_cpu_ms + usage.system_cpu_ms > 0,
        "{usage:?}"
    );
    // too short to be sampled: no peak rather than a wrong one (cnp's own size)
    assert_eq!(usage.peak_rss_kb, 0, "{usage:?}");
    assert_eq!(usage.limits_enforcement, None);
    assert!(report.finished_at >= report.started_at.unwrap());
}

#[tokio::test]
async fn peak_rss_is_the_cli_s_own_not_cnp_s() {
    // cnp (this test process) holds 64 MiB; the CLI allocates 20 MiB and runs long enough to be
    // sampled. Its reported peak must reflect the 20 MiB, not cnp's memory at fork time.
    let ballast = vec![1u8; 64 << 20];
    std::hint::black_box(&ballast);
    let (report, _) = run(request(&[
        ("FAKE_CLAUDE_ALLOC_MB", "20"),
        ("FAKE_CLAUDE_SLEEP_MS", "800"),
    ]))
    .await;
    assert_eq!(report.outcome, Outcome::Success);
    let peak = report.resource_usage.unwrap().peak_rss_kb;
    assert!((18 * 1024..48 * 1024).contains(&peak), "peak {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lines_reach_the_observer_in_order() {
    let (report, recorder) = run(request(&[
        ("FAKE_CLAUDE_OUTPUT_BYTES", "40000"),
        ("FAKE_CLAUDE_STDERR", "a warning"),
    ]))
    .await;
    assert_eq!(report.outcome, Outcome::Success);
    let stdout = recorder.lines(LogStream::Stdout);
    assert!(stdout.len() >= 5, "{stdout:?}");
    let types: Vec<String> = stdout
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["type"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("system"));
    assert_eq!(types.last().map(String::as_str), Some("result"));
    assert!(
        types[1..types.len() - 1].iter().all(|t| t == "assistant"),
        "{types:?}"
    );
    assert_eq!(
        recorder.lines(LogStream::Stderr),
        vec!["a warning".to_string()]
    );
    assert!(recorder.lines(LogStream::System).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_group() {
    let mut req = request(&[
        ("FAKE_CLAUDE_SPAWN_CHILD", "1"),
        ("FAKE_CLAUDE_SLEEP_MS", "60000"),
    ]);
    req.timeout = Duration::from_millis(300);
    let (report, recorder) = run(req).await;
    assert_eq!(report.outcome, Outcome::Timeout);
    let system = recorder.system();
    assert!(
        system.contains("timed out after 300ms: sent SIGTERM to process group"),
        "{system}"
    );
    assert!(!system.contains("SIGKILL"), "{system}");
    assert_eq!(report.exit_code, Some(143), "the fake exits 143 on SIGTERM");
    assert!(
        process_is_gone(recorder.grandchild_pid()),
        "grandchild outlived the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignored_escalates_to_sigkill() {
    let mut req = request(&[
        ("FAKE_CLAUDE_SPAWN_CHILD", "1"),
        ("FAKE_CLAUDE_SLEEP_MS", "60000"),
        ("FAKE_CLAUDE_IGNORE_SIGTERM", "1"),
    ]);
    req.timeout = Duration::from_millis(200);
    let (report, recorder) = run(req).await;
    assert_eq!(report.outcome, Outcome::Timeout);
    let system = recorder.system();
    assert!(system.contains("SIGTERM"), "{system}");
    assert!(system.contains("after SIGTERM: sent SIGKILL"), "{system}");
    assert_eq!(report.exit_code, None, "killed by a signal");
    assert!(
        process_is_gone(recorder.grandchild_pid()),
        "grandchild outlived the run"
    );
    assert!(process_is_gone(report.pid.unwrap() as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_run() {
    let req = request(&[("FAKE_CLAUDE_SLEEP_MS", "60000")]);
    let cancel = req.cancel.clone();
    let recorder = Arc::new(Recorder::default());
    let runner = ClaudeRunner::new(settings());
    let run = tokio::spawn(runner.run(req, recorder.clone()));
    // Cancel once the child exists (and has said hello), however long that takes.
    while recorder.lines(LogStream::Stdout).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let report = run.await.unwrap();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(
        recorder.system().contains("cancelled: sent SIGTERM"),
        "{}",
        recorder.system()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_a_spawn_failure() {
    let mut s = settings();
    s.command = vec!["cnp-test-no-such-claude".into()];
    let (report, recorder) = run_with(&ClaudeRunner::new(s), request(&[])).await;
    assert_eq!(
        report.outcome,
        Outcome::SpawnFailed {
            message: "claude CLI `cnp-test-no-such-claude` not found in PATH (set executor.claude_cli_path)".into()
        }
    );
    assert_eq!(
        (report.pid, report.started_at, report.resource_usage),
        (None, None, None)
    );
    assert!(recorder.spawned.lock().unwrap().is_empty());
    assert!(recorder.system().contains("not found in PATH"));

    let mut s = settings();
    s.command = vec!["/nonexistent/bin/claude".into()];
    let (report, _) = run_with(&ClaudeRunner::new(s), request(&[])).await;
    assert!(
        matches!(&report.outcome, Outcome::SpawnFailed { message } if message.contains("`/nonexistent/bin/claude` not found")),
        "{:?}",
        report.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_working_directory_is_a_spawn_failure() {
    let mut req = request(&[]);
    req.options.working_directory = Some("/nonexistent/cnp/workdir".into());
    let (report, _) = run(req).await;
    assert_eq!(
        report.outcome,
        Outcome::SpawnFailed {
            message: "working directory `/nonexistent/cnp/workdir` does not exist".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_stays_bounded_and_the_result_is_still_read() {
    let mut s = settings();
    s.max_output_bytes = 256 * 1024;
    s.max_line_bytes = 4 * 1024;
    let max = s.max_output_bytes;
    let (report, recorder) = run_with(
        &ClaudeRunner::new(s),
        request(&[("FAKE_CLAUDE_OUTPUT_BYTES", "100000000")]),
    )
    .await;
    assert_eq!(
        report.outcome,
        Outcome::Success,
        "the result line after 100 MB was parsed"
    );
    assert_eq!(report.exit_code, Some(0));
    let forwarded: usize = recorder
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s != LogStream::System)
        .map(|(_, l)| l.len())
        .sum();
    assert!(forwarded <= max, "{forwarded} bytes forwarded");
    let truncated: Vec<String> = recorder
        .lines(LogStream::System)
        .into_iter()
        .filter(|l| l.starts_with("output truncated"))
        .collect();
    assert_eq!(truncated.len(), 1, "{truncated:?}");
    assert!(recorder
        .lines(LogStream::Stdout)
        .iter()
        .all(|l| l.len() <= 4 * 1024 + 40));
    assert!(report.result_text.unwrap().len() <= max);
}

/// VmHWM of this test process, in KiB.
fn own_peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_100_mb_line_is_cut_without_being_buffered() {
    let mut s = settings();
    // `sh -c SCRIPT sh -p --output-format …`: the script ignores the CLI arguments.
    s.command = vec![
        "sh".into(),
        "-c".into(),
        "head -c 100000000 /dev/zero | tr '\\0' a; echo; echo after".into(),
        "sh".into(),
    ];
    s.max_line_bytes = 1000;
    let (report, recorder) = run_with(&ClaudeRunner::new(s), request(&[])).await;
    assert_eq!(report.exit_code, Some(0));
    let stdout = recorder.lines(LogStream::Stdout);
    assert_eq!(
        stdout.len(),
        2,
        "{:?}",
        stdout.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert!(stdout[0].starts_with(&"a".repeat(1000)));
    assert!(
        stdout[0].ends_with("… [truncated 99999000 bytes]"),
        "{}",
        &stdout[0][990..]
    );
    assert_eq!(stdout[1], "after");
    assert!(
        matches!(report.outcome, Outcome::Error { .. }),
        "no result line: {:?}",
        report.outcome
    );
    // Parsing keeps at most ~1 MiB of a line that is not a result: far below the 100 MB.
    assert!(
        own_peak_rss_kb() < 80 * 1024,
        "test process peaked at {} KiB",
        own_peak_rss_kb()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_result_line_is_cut_for_the_observer_but_parsed() {
    let text = "x".repeat(100 * 1024);
    let mut s = settings();
    s.max_line_bytes = 2048;
    let (report, recorder) = run_with(
        &ClaudeRunner::new(s),
        request(&[("FAKE_CLAUDE_RESULT", &text)]),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Success);
    assert!(report.result_text.unwrap().starts_with("xxxx"));
    let last = recorder.lines(LogStream::Stdout).pop().unwrap();
    assert!(last.contains("… [truncated "), "{}", &last[..100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_watchdog_kills_a_group_over_its_limit() {
    let runner = ClaudeRunner::new(settings()).with_limits_mechanism(LimitsMechanism::Watchdog);
    let mut req = request(&[
        ("FAKE_CLAUDE_ALLOC_MB", "256"),
        ("FAKE_CLAUDE_SLEEP_MS", "60000"),
    ]);
    req.limits = Some(ResourceLimits {
        max_memory_mb: Some(64),
        max_cpu_percent: Some(50.0),
    });
    let (report, recorder) = run_with(&runner, req).await;
    let Outcome::ResourceLimit { message } = &report.outcome else {
        panic!(
            "expected a resource-limit kill: {:?} {}",
            report.outcome,
            recorder.system()
        );
    };
    assert!(
        message.starts_with("memory limit of 64 MiB exceeded: process group"),
        "{message}"
    );
    assert!(
        message.ends_with("killed with SIGKILL by the watchdog"),
        "{message}"
    );
    let usage = report.resource_usage.unwrap();
    let enforcement = usage.limits_enforcement.clone().unwrap();
    assert!(
        enforcement.starts_with("watchdog (memory 64 MiB"),
        "{enforcement}"
    );
    assert!(
        enforcement.contains("cpu limit not enforced"),
        "{enforcement}"
    );
    assert!(usage.peak_rss_kb > 64 * 1024, "{usage:?}");
    assert!(recorder.system().contains(message.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_under_the_best_mechanism() {
    // cgroup v2 or v1 where the machine allows it, else the watchdog: the run is stopped either way.
    let _cgroups = CGROUP_TESTS.lock().await;
    let runner = ClaudeRunner::new(settings()).with_limits_mechanism(LimitsMechanism::Auto);
    let mut req = request(&[
        ("FAKE_CLAUDE_ALLOC_MB", "256"),
        ("FAKE_CLAUDE_SLEEP_MS", "60000"),
    ]);
    req.limits = Some(ResourceLimits {
        max_memory_mb: Some(64),
        max_cpu_percent: Some(50.0),
    });
    let (report, recorder) = run_with(&runner, req).await;
    let enforcement = report
        .resource_usage
        .as_ref()
        .unwrap()
        .limits_enforcement
        .clone()
        .unwrap();
    assert!(
        matches!(&report.outcome, Outcome::ResourceLimit { message } if message.starts_with("memory limit of 64 MiB exceeded")),
        "{:?} under {enforcement}; {}",
        report.outcome,
        recorder.system()
    );
    if enforcement.starts_with("cgroup") {
        assert!(
            enforcement.contains("memory 64 MiB") && enforcement.contains("cpu 50000/100000 us"),
            "{enforcement}"
        );
        assert_eq!(leftover_run_cgroups(), Vec::<PathBuf>::new());
    }
    eprintln!("limits enforced by: {enforcement}: {:?}", report.outcome);
    eprintln!("{}", cnp::executor::process::describe_limits_support());
}

/// Held by the tests that may make cgroups, so each can check that none is left behind.
static CGROUP_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `cnp-run-<our pid>-*` directories anywhere in the cgroup file systems (a few levels deep).
fn leftover_run_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, prefix: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(path);
            } else if depth > 0 {
                walk(&path, depth - 1, prefix, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        Path::new("/sys/fs/cgroup"),
        4,
        &format!("cnp-run-{}-", std::process::id()),
        &mut found,
    );
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_without_cgroup_is_reported_not_enforced() {
    let runner = ClaudeRunner::new(settings()).with_limits_mechanism(LimitsMechanism::Watchdog);
    let mut req = request(&[]);
    req.limits = Some(ResourceLimits {
        max_memory_mb: None,
        max_cpu_percent: Some(25.0),
    });
    let (report, _) = run_with(&runner, req).await;
    assert_eq!(report.outcome, Outcome::Success);
    let enforcement = report.resource_usage.unwrap().limits_enforcement.unwrap();
    assert_eq!(enforcement, "cpu limit not enforced: watchdog selected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_working_directory_argv_and_stdin_reach_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.jsonl");
    let workdir = dir.path().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let mut s = settings();
    s.base_env.push(("CNP_BASE".into(), "from-settings".into()));
    s.base_env.push(("JOB_OVERRIDDEN".into(), "base".into()));
    let mut req = request(&[
        ("FAKE_CLAUDE_RECORD", record.to_str().unwrap()),
        ("JOB_NAME", "nightly"),
        ("JOB_OVERRIDDEN", "job"),
    ]);
    req.prompt = "a prompt\nwith two lines and ünïcode".into();
    req.options.working_directory = Some(workdir.display().to_string());
    req.options.model = Some("claude-test".into());
    req.options.max_turns = Some(3);
    req.options.allowed_tools = vec!["Read".into(), "Grep".into()];
    let (report, _) = run_with(&ClaudeRunner::new(s), req).await;
    assert_eq!(report.outcome, Outcome::Success);

    let line = std::fs::read_to_string(&record).unwrap();
    let rec: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(rec["stdin"], "a prompt\nwith two lines and ünïcode");
    assert_eq!(
        Path::new(rec["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        workdir.canonicalize().unwrap()
    );
    assert_eq!(rec["env"]["TZ"], "UTC");
    assert_eq!(rec["env"]["CNP_BASE"], "from-settings");
    assert_eq!(rec["env"]["JOB_NAME"], "nightly");
    assert_eq!(rec["env"]["JOB_OVERRIDDEN"], "job");
    let argv: Vec<&str> = rec["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &argv[1..],
        &[
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-test",
            "--max-turns",
            "3",
            "--allowedTools",
            "Read",
            "Grep"
        ]
    );
    assert_eq!(rec["pid"].as_u64(), report.pid.map(u64::from));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_limit_reports_when_it_resets() {
    let reset = Utc::now().timestamp() + 3 * 3600;
    let (report, _) = run(request(&[
        ("FAKE_CLAUDE_SCENARIO", "usage-limit"),
        ("FAKE_CLAUDE_RESET_EPOCH", &reset.to_string()),
    ]))
    .await;
    let Outcome::UsageLimit { resets_at, message } = &report.outcome else {
        panic!("expected a usage limit: {:?}", report.outcome);
    };
    assert_eq!(*resets_at, Some(Utc.timestamp_opt(reset, 0).unwrap()));
    assert!(message.contains("limit"), "{message}");
    assert_eq!(report.exit_code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_errors() {
    let (report, _) = run(request(&[("FAKE_CLAUDE_SCENARIO", "error")])).await;
    assert!(
        matches!(report.outcome, Outcome::Error { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.exit_code, Some(1));
    assert!(report.result_text.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_run_kills_its_process_group() {
    let req = request(&[
        ("FAKE_CLAUDE_SPAWN_CHILD", "1"),
        ("FAKE_CLAUDE_SLEEP_MS", "60000"),
    ]);
    let recorder = Arc::new(Recorder::default());
    let runner = ClaudeRunner::new(settings());
    let mut run = runner.run(req, recorder.clone());
    // Drive the run until the grandchild exists, then drop it.
    let grandchild = loop {
        tokio::select! {
            _ = &mut run => panic!("the run ended by itself"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let found = recorder.lines(LogStream::Stderr).iter().find_map(|l| {
            l.strip_prefix("grandchild pid ")
                .and_then(|p| p.trim().parse::<i32>().ok())
        });
        if let Some(pid) = found {
            break pid;
        }
    };
    let pid = recorder.spawned.lock().unwrap()[0].0 as i32;
    drop(run);
    assert!(process_is_gone(pid), "child outlived its dropped run");
    assert!(
        process_is_gone(grandchild),
        "grandchild outlived its dropped run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_runs() {
    let runner = Arc::new(ClaudeRunner::new(settings()));
    let mut runs = Vec::new();
    for _ in 0..100 {
        let runner = runner.clone();
        runs.push(tokio::spawn(async move {
            run_with(&runner, request(&[])).await.0
        }));
    }
    for run in runs {
        let report = run.await.unwrap();
        assert_eq!(report.outcome, Outcome::Success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_in_a_cgroup_throttles_a_busy_loop() {
    let _cgroups = CGROUP_TESTS.lock().await;
    let mut s = settings();
    s.command = vec![
        "sh".into(),
        "-c".into(),
        "while :; do :; done".into(),
        "sh".into(),
    ];
    let runner = ClaudeRunner::new(s).with_limits_mechanism(LimitsMechanism::Auto);
    let mut req = request(&[]);
    req.timeout = Duration::from_millis(1500);
    req.limits = Some(ResourceLimits {
        max_memory_mb: None,
        max_cpu_percent: Some(20.0),
    });
    let (report, _) = run_with(&runner, req).await;
    assert_eq!(report.outcome, Outcome::Timeout);
    let usage = report.resource_usage.unwrap();
    let enforcement = usage.limits_enforcement.clone().unwrap();
    if !enforcement.starts_with("cgroup") {
        eprintln!("no cgroup on this machine ({enforcement}): nothing to check");
        return;
    }
    assert!(enforcement.contains("cpu 20000/100000 us"), "{enforcement}");
    // A busy loop uses ~100 % of a CPU unthrottled; allow plenty of slack around 20 %.
    let cpu = usage.user_cpu_ms + usage.system_cpu_ms;
    assert!(
        cpu * 2 < usage.wall_time_ms,
        "{cpu} ms of CPU in {} ms: not throttled",
        usage.wall_time_ms
    );
    assert_eq!(leftover_run_cgroups(), Vec::<PathBuf>::new());
}

/// 1,000 children at once (the design target): `cargo test -p cnp-host --test executor -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 1,000 concurrent children"]
async fn a_thousand_concurrent_runs() {
    let (before, after) = cnp::executor::process::raise_nofile_limit().unwrap();
    eprintln!("RLIMIT_NOFILE soft {before} -> {after}");
    let runner = Arc::new(ClaudeRunner::new(settings()));
    let mut runs = Vec::new();
    for _ in 0..1000 {
        let runner = runner.clone();
        runs.push(tokio::spawn(async move {
            run_with(&runner, request(&[("FAKE_CLAUDE_SLEEP_MS", "2000")]))
                .await
                .0
        }));
    }
    for run in runs {
        let report = run.await.unwrap();
        assert_eq!(report.outcome, Outcome::Success);
    }
    eprintln!("test process peak RSS {} KiB", own_peak_rss_kb());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_held_open_by_an_escaped_process_do_not_hang_the_run() {
    let mut s = settings();
    // A daemon that left the process group (new session) and kept stdout open.
    s.command = vec![
        "sh".into(),
        "-c".into(),
        "setsid -w sh -c 'sleep 12 & exit 0'; echo started".into(),
        "sh".into(),
    ];
    let (report, recorder) = run_with(&ClaudeRunner::new(s), request(&[])).await;
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(
        recorder.lines(LogStream::Stdout),
        vec!["started".to_string()]
    );
    assert!(
        recorder.system().contains("stopped reading output"),
        "{}",
        recorder.system()
    );
}

/// A prompt that fits `PIPE_BUF` is written at spawn and stdin closed; a longer one by a task
/// (a 1 MiB one fills the pipe many times over). Each reaches the child whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_of_every_size_reach_the_child_whole() {
    for len in [1, 4096, 4097, 1024 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        let mut req = request(&[("FAKE_CLAUDE_RECORD", record.to_str().unwrap())]);
        req.prompt = "p".repeat(len);
        let (report, _) = run_with(&ClaudeRunner::new(settings()), req).await;
        assert_eq!(report.outcome, Outcome::Success, "prompt of {len} bytes");
        let line = std::fs::read_to_string(&record).unwrap();
        let rec: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(
            rec["stdin"].as_str().map(str::len),
            Some(len),
            "prompt of {len} bytes"
        );
    }
}
