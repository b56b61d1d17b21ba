//! The plugin runtime through the real, compiled components of `plugins/` (built by
//! `scripts/build-plugins.sh`): loading and its errors, the compile cache, hot reload, each
//! example plugin's behaviour, the hostile fixtures' containment, and concurrent calls.
//!
//! The components are found under `plugins/target/wasm32-wasip2/release/`; a missing one fails
//! the test with a hint to build them (never a silent skip).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use cnp::clock::Clock;
use cnp::config::PluginsConfig;
use cnp::plugins::{
    ConditionTrigger, EventKind, ExecutionInfo, JobInfo, NotifyEvent, OutcomeKind, PluginFailure,
    PluginHost, PluginKind, RetryDecision, RunContext, Verdict,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `assert_eq!` by `Debug` text, for the generated binding types (which are not `PartialEq`).
/// Both sides have the same type (the right side's `Ok`/`Err` takes the left side's type).
macro_rules! assert_dbg {
    ($left:expr, $right:expr $(,)?) => {
        assert_dbg!($left, $right, "")
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let left = $left;
        let right = $right;
        #[allow(unused_assignments)]
        let mut _same_type = &left;
        _same_type = &right;
        assert_eq!(format!("{left:?}"), format!("{right:?}"), $($arg)+);
    }};
}

// ---------------------------------------------------------------------------------------------
// Artifacts and folders

const RETRY: &str = "decorrelated-jitter";
const NOTIFIER: &str = "webhook-notifier";
const CONDITION: &str = "business-hours";
/// A condition hook built against `cnp:plugin@0.2.0` (it sees the workflow upstreams).
const UPSTREAM_GATE: &str = "upstream-gate";

/// The built component of workspace package `package` (`plugins/target/.../<crate_name>.wasm`).
fn artifact(package: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        p.is_file(),
        "plugin component {} is missing: run scripts/build-plugins.sh first",
        p.display()
    );
    p
}

/// A compile cache shared by the tests of this process that do not test caching (compiling
/// with a debug build of wasmtime is slow). Under the target directory, so reruns reuse it.
/// Warmed once, serially, before first use: the host writes cache files through a temp name
/// that is unique per process only, so two hosts of one process compiling the same component
/// at the same moment could write the same temp file (see the report on `write_cache`).
fn shared_cache() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnp-plugin-test-cache");
        std::fs::create_dir_all(&d).unwrap();
        let cache = d.clone();
        std::thread::spawn(move || {
            let folder = Folder::new();
            for package in [
                RETRY,
                NOTIFIER,
                CONDITION,
                "spin-forever",
                "memory-bomb",
                "panicker",
                "forbidden-http",
                "output-flood",
                UPSTREAM_GATE,
            ] {
                folder.install(package, package, None);
            }
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let host =
                    PluginHost::new(&settings(), Some(folder.path()), Some(cache), fixed_clock())
                        .unwrap();
                assert_eq!(host.load_all().await, 9, "{:?}", host.load_errors());
            });
        })
        .join()
        .expect("warming the compile cache");
        d
    })
    .clone()
}

/// A temp plugins folder.
struct Folder {
    tmp: tempfile::TempDir,
}

impl Folder {
    fn new() -> Folder {
        Folder {
            tmp: tempfile::Builder::new()
                .prefix("cnp-plugins-")
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.tmp.path().to_owned()
    }

    fn wasm(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.wasm"))
    }

    /// Copies package `package`'s component in as `<name>.wasm`, with `sidecar` as
    /// `<name>.toml` when given.
    fn install(&self, name: &str, package: &str, sidecar: Option<&str>) -> PathBuf {
        if let Some(text) = sidecar {
            std::fs::write(self.tmp.path().join(format!("{name}.toml")), text).unwrap();
        }
        let to = self.wasm(name);
        std::fs::copy(artifact(package), &to).unwrap();
        to
    }

    fn write(&self, file: &str, bytes: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(file);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn settings() -> PluginsConfig {
    PluginsConfig::default()
}

fn fixed_clock() -> Clock {
    Clock::tokio_from(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap())
}

fn host_in(folder: &Folder, clock: Clock) -> PluginHost {
    PluginHost::new(
        &settings(),
        Some(folder.path()),
        Some(shared_cache()),
        clock,
    )
    .expect("plugin host")
}

/// A host over a folder holding `plugins` (name, package, sidecar), all loaded.
async fn loaded_host(plugins: &[(&str, &str, Option<&str>)], clock: Clock) -> (PluginHost, Folder) {
    let folder = Folder::new();
    for (name, package, sidecar) in plugins {
        folder.install(name, package, *sidecar);
    }
    let host = host_in(&folder, clock);
    let n = host.load_all().await;
    assert_eq!(
        n,
        plugins.len(),
        "every plugin should load; errors: {:?}",
        host.load_errors()
    );
    (host, folder)
}

// ---------------------------------------------------------------------------------------------
// Call arguments

fn job(id: &str, timezone: &str) -> JobInfo {
    JobInfo {
        id: id.into(),
        name: format!("job {id}"),
        tags: vec!["test".into()],
        priority: 5,
        timezone: timezone.into(),
    }
}

fn failed(outcome: OutcomeKind, attempt: u32, max_attempts: u32) -> ExecutionInfo {
    ExecutionInfo {
        execution_id: format!("exec-{attempt}"),
        attempt,
        max_attempts,
        outcome,
        exit_code: Some(1),
        duration_ms: 1234,
        output_tail: "API Error: 500".into(),
        error: Some("API Error: 500".into()),
        usage_limit_reset: None,
        scheduled_at: Some(1_772_442_000_000),
        finished_at: 1_772_442_001_234,
    }
}

fn context(trigger: ConditionTrigger, timezone: &str) -> RunContext {
    RunContext {
        job: job("job-bh", timezone),
        trigger,
        scheduled_at: None,
        previous: None,
    }
}

fn event(summary: &str) -> NotifyEvent {
    NotifyEvent {
        kind: EventKind::RunFailed,
        job: Some(job("job-n", "UTC")),
        execution: Some(failed(OutcomeKind::Failure, 3, 3)),
        summary: summary.into(),
        at: 1_772_442_001_234,
    }
}

/// One retry decision from `name` with `config`.
async fn retry(
    host: &PluginHost,
    config: Value,
    job: &JobInfo,
    info: &ExecutionInfo,
) -> Result<RetryDecision, PluginFailure> {
    host.next_retry(RETRY, Some(&config), job, info).await
}

fn delay_of(d: Result<RetryDecision, PluginFailure>) -> u64 {
    match d {
        Ok(RetryDecision::RetryAfterMs(ms)) => ms,
        other => panic!("expected retry-after-ms, got {other:?}"),
    }
}

/// A good call that must succeed: the host is healthy.
async fn assert_healthy(host: &PluginHost, after: &str) {
    let r = host
        .evaluate(
            CONDITION,
            Some(&json!({"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": "00:00", "end": "24:00"})),
            &context(ConditionTrigger::Schedule, "UTC"),
        )
        .await;
    assert_dbg!(
        r,
        Ok(Verdict::Run),
        "a good plugin call right after {after}"
    );
}

async fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 receiver

#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Answers every request with `status` and records it.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let (r, s) = (requests.clone(), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, s) = (r.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, r, s).await;
                });
            }
        });
        Receiver {
            port,
            requests,
            status,
            task,
        }
    }

    fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    requests: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Read until the terminating zero-size chunk, then decode.
        while find(&rest, b"0\r\n\r\n").is_none() {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        dechunk(&rest)
    } else {
        Vec::new()
    };
    requests.lock().unwrap().push(Received {
        method,
        path,
        headers,
        body,
    });
    let code = status.load(Ordering::SeqCst);
    let reason = if code < 400 { "OK" } else { "Error" };
    let text = if code < 400 { "ok" } else { "receiver says no" };
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(data, b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..i])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Loading

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_load_with_their_kinds_and_bad_files_are_reported() {
    let folder = Folder::new();
    folder.install(RETRY, RETRY, None);
    folder.install(NOTIFIER, NOTIFIER, None);
    folder.install(CONDITION, CONDITION, None);
    let garbage = folder.write("garbage.wasm", b"this is not WebAssembly at all");
    let core = folder.write("core-module.wasm", b"\0asm\x01\0\0\0");
    let bad_toml = folder.install(
        "bad-toml",
        CONDITION,
        Some("kind = \"condition-hook\"\n[config\nstart = 1\n"),
    );
    let unknown_key = folder.install(
        "unknown-key",
        CONDITION,
        Some("[limits]\ntimeout_ms = 100\nspeed = 3\n"),
    );
    let bad_host = folder.install(
        "bad-host",
        NOTIFIER,
        Some("[grants]\nallowed_hosts = [\"https://hooks.example.com/path\"]\n"),
    );
    let wrong_kind = folder.install("wrong-kind", CONDITION, Some("kind = \"notifier\"\n"));
    let too_much_memory = folder.install("greedy", RETRY, Some("[limits]\nmemory_mb = 100000\n"));

    let host = host_in(&folder, fixed_clock());
    let loaded = host.load_all().await;
    assert_eq!(
        loaded,
        3,
        "only the three good plugins load; errors: {:?}",
        host.load_errors()
    );

    let kinds: Vec<(String, PluginKind)> =
        host.list().into_iter().map(|p| (p.name, p.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (CONDITION.to_owned(), PluginKind::ConditionHook),
            (RETRY.to_owned(), PluginKind::RetryStrategy),
            (NOTIFIER.to_owned(), PluginKind::Notifier),
        ]
    );
    for name in [RETRY, NOTIFIER, CONDITION] {
        let p = host.get(name).unwrap();
        assert_eq!(p.path, folder.wasm(name));
        assert_eq!(
            p.sidecar.timeout,
            settings().call_timeout,
            "no sidecar: the host's default limit"
        );
        assert!(
            p.sidecar.allowed_hosts.is_empty(),
            "nothing granted without a sidecar"
        );
    }

    let errors: HashMap<PathBuf, String> = host
        .load_errors()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect();
    let expect = |path: &Path, needles: &[&str]| {
        let message = errors
            .get(path)
            .unwrap_or_else(|| panic!("no load error for {}; errors: {errors:#?}", path.display()));
        for n in needles {
            assert!(
                message.contains(n),
                "the error for {} should mention {n:?}: {message}",
                path.display()
            );
        }
    };
    expect(&garbage, &["not a WebAssembly file"]);
    expect(&core, &["core WebAssembly module, not a component"]);
    expect(&bad_toml, &["bad-toml.toml"]);
    expect(&unknown_key, &["unknown-key.toml", "speed"]);
    expect(
        &bad_host,
        &[
            "bad-host.toml",
            "grants.allowed_hosts",
            "https://hooks.example.com/path",
        ],
    );
    expect(
        &wrong_kind,
        &["wrong-kind.toml", "notifier", "condition-hook"],
    );
    expect(&too_much_memory, &["greedy.toml", "memory_mb"]);
    assert_eq!(errors.len(), 7, "exactly the seven bad files: {errors:#?}");

    for bad in [
        "garbage",
        "core-module",
        "bad-toml",
        "unknown-key",
        "bad-host",
        "wrong-kind",
        "greedy",
    ] {
        assert!(host.get(bad).is_none(), "{bad} must not be loaded");
    }
    // A call to a plugin that failed to load says why.
    match host
        .evaluate(
            "unknown-key",
            None,
            &context(ConditionTrigger::Schedule, "UTC"),
        )
        .await
    {
        Err(PluginFailure::NotLoaded { name, reason }) => {
            assert_eq!(name, "unknown-key");
            assert!(
                reason.as_deref().is_some_and(|r| r.contains("speed")),
                "{reason:?}"
            );
        }
        other => panic!("expected NotLoaded, got {other:?}"),
    }
    // Kinds are checked per call.
    match host
        .next_retry(
            CONDITION,
            None,
            &job("j", "UTC"),
            &failed(OutcomeKind::Failure, 1, 3),
        )
        .await
    {
        Err(PluginFailure::WrongKind {
            expected, actual, ..
        }) => {
            assert_eq!(
                (expected, actual),
                (PluginKind::RetryStrategy, PluginKind::ConditionHook)
            )
        }
        other => panic!("expected WrongKind, got {other:?}"),
    }
    assert!(matches!(
        host.validate_use(RETRY, PluginKind::Notifier, None).await,
        Err(PluginFailure::WrongKind { .. })
    ));

    // The good plugins keep serving.
    assert_healthy(&host, "loading bad files").await;
    delay_of(
        retry(
            &host,
            json!({}),
            &job("j", "UTC"),
            &failed(OutcomeKind::Failure, 1, 3),
        )
        .await,
    );
    assert_eq!(
        host.validate_use(
            NOTIFIER,
            PluginKind::Notifier,
            Some(&json!({"url": "https://hooks.example.com/x"}))
        )
        .await,
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The compile cache

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_loads_the_compiled_component_from_the_cache() {
    let folder = Folder::new();
    folder.install(RETRY, RETRY, None);
    let cache = tempfile::tempdir().unwrap();
    let make = || {
        PluginHost::new(
            &settings(),
            Some(folder.path()),
            Some(cache.path().to_owned()),
            fixed_clock(),
        )
        .unwrap()
    };
    let args = (job("j", "UTC"), failed(OutcomeKind::Failure, 1, 3));

    let first = make();
    assert_eq!(first.load_all().await, 1, "{:?}", first.load_errors());
    assert_eq!(first.compile_count(), 1);
    assert!(!first.get(RETRY).unwrap().from_cache);
    assert!(!first.list()[0].from_cache);
    let expected = delay_of(retry(&first, json!({}), &args.0, &args.1).await);
    let cached: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "one compiled artifact in the cache: {cached:?}"
    );

    let second = make();
    assert_eq!(second.load_all().await, 1, "{:?}", second.load_errors());
    assert_eq!(
        second.compile_count(),
        0,
        "nothing compiled: the cache served it"
    );
    assert!(second.get(RETRY).unwrap().from_cache);
    assert!(second.list()[0].from_cache);
    assert_eq!(
        delay_of(retry(&second, json!({}), &args.0, &args.1).await),
        expected,
        "the cached component behaves the same"
    );

    // A damaged artifact is not trusted: the component is compiled again.
    // (A new file in its place: the loaded hosts map the old one, which must not change under
    // them.)
    drop((first, second));
    std::fs::remove_file(&cached[0]).unwrap();
    std::fs::write(&cached[0], b"not a compiled component").unwrap();
    let third = make();
    assert_eq!(third.load_all().await, 1, "{:?}", third.load_errors());
    assert_eq!(third.compile_count(), 1);
    assert!(!third.get(RETRY).unwrap().from_cache);
    assert_eq!(
        delay_of(retry(&third, json!({}), &args.0, &args.1).await),
        expected
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Hot reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_folder_follows_drop_in_bad_replacement_and_removal() {
    let folder = Folder::new();
    let host = host_in(&folder, fixed_clock());
    assert_eq!(host.load_all().await, 0);
    let stop = tokio_util::sync::CancellationToken::new();
    host.watch(stop.clone()).unwrap();
    let deadline = Duration::from_secs(10);

    // Drop-in.
    let wasm = folder.install(CONDITION, CONDITION, None);
    let loaded = poll_until("the dropped-in plugin to load", deadline, || {
        host.get(CONDITION)
    })
    .await;
    assert_eq!(loaded.kind, PluginKind::ConditionHook);
    assert_healthy(&host, "the drop-in").await;

    // Replaced by garbage: the error is recorded, the previous version stays in service.
    std::fs::write(&wasm, b"garbage, not a component").unwrap();
    let error = poll_until("the load error of the bad replacement", deadline, || {
        host.load_errors().into_iter().find(|e| e.path == wasm)
    })
    .await;
    assert!(
        error.message.contains("not a WebAssembly file"),
        "{}",
        error.message
    );
    let still = host
        .get(CONDITION)
        .expect("the previous version stays loaded");
    assert_eq!(still.digest, loaded.digest, "it is the previous version");
    assert_healthy(&host, "a bad replacement").await;

    // A good replacement clears the error (a sidecar edit counts as a change too).
    std::fs::write(
        folder.path().join(format!("{CONDITION}.toml")),
        "[limits]\ntimeout_ms = 1500\n",
    )
    .unwrap();
    std::fs::copy(artifact(CONDITION), &wasm).unwrap();
    poll_until("the good replacement to load", deadline, || {
        host.get(CONDITION)
            .filter(|p| {
                p.sidecar.timeout == Duration::from_millis(1500) && p.loaded_at >= loaded.loaded_at
            })
            .filter(|_| host.load_errors().is_empty())
    })
    .await;

    // Removal.
    std::fs::remove_file(&wasm).unwrap();
    poll_until("the removed plugin to go", deadline, || {
        host.get(CONDITION).is_none().then_some(())
    })
    .await;
    assert!(matches!(
        host.evaluate(CONDITION, None, &context(ConditionTrigger::Schedule, "UTC"))
            .await,
        Err(PluginFailure::NotLoaded { .. })
    ));
    assert!(host.list().is_empty());

    // After stop, changes are no longer followed.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    folder.install(CONDITION, CONDITION, None);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        host.get(CONDITION).is_none(),
        "a stopped watcher loads nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. decorrelated-jitter

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decorrelated_jitter_delays_are_deterministic_bounded_and_growing() {
    let (host, _folder) = loaded_host(&[(RETRY, RETRY, None)], fixed_clock()).await;
    let config = json!({"base_ms": 100, "cap_ms": 60_000});
    let mut first = Vec::new();
    let mut fifth = Vec::new();
    for j in 0..12 {
        let job = job(&format!("job-{j}"), "UTC");
        for attempt in [1u32, 5] {
            let info = failed(OutcomeKind::Failure, attempt, 10);
            let d = delay_of(retry(&host, config.clone(), &job, &info).await);
            assert!(
                (100..=60_000).contains(&d),
                "{} attempt {attempt}: {d} ms out of [base, cap]",
                job.id
            );
            let again = delay_of(retry(&host, config.clone(), &job, &info).await);
            assert_eq!(d, again, "same job, slot and attempt: same delay");
            if attempt == 1 {
                assert!(d <= 300, "the first delay is at most 3 × base: {d}");
                first.push(d);
            } else {
                fifth.push(d);
            }
        }
    }
    let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len() as u64;
    assert!(
        mean(&fifth) > 3 * mean(&first),
        "delays grow: attempt 5 mean {} vs attempt 1 mean {}",
        mean(&fifth),
        mean(&first)
    );
    assert!(
        first.iter().any(|d| *d != first[0]),
        "different jobs get different (jittered) delays: {first:?}"
    );

    // The cap holds for late attempts.
    let job1 = job("job-1", "UTC");
    for attempt in 10..14 {
        let d = delay_of(
            retry(
                &host,
                json!({"base_ms": 100, "cap_ms": 300}),
                &job1,
                &failed(OutcomeKind::Timeout, attempt, 20),
            )
            .await,
        );
        assert!((100..=300).contains(&d), "attempt {attempt}: {d}");
    }
    // Sidecar-less default configuration works too (base 1 s).
    let d = delay_of(retry(&host, json!({}), &job1, &failed(OutcomeKind::Failure, 1, 3)).await);
    assert!((1_000..=3_000).contains(&d), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decorrelated_jitter_waits_out_usage_limits_and_gives_up_when_hopeless() {
    let (host, _folder) = loaded_host(&[(RETRY, RETRY, None)], fixed_clock()).await;
    let j = job("job-u", "UTC");
    let now = Utc
        .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .unwrap()
        .timestamp_millis();

    let mut limited = failed(OutcomeKind::UsageLimit, 1, 3);
    let reset = now + 3_600_000;
    limited.usage_limit_reset = Some(reset);
    assert_dbg!(
        retry(&host, json!({}), &j, &limited).await,
        Ok(RetryDecision::RetryAt(reset + 30_000)),
        "reset + the default 30 s margin"
    );
    assert_dbg!(
        retry(&host, json!({"usage_limit_margin_ms": 5000}), &j, &limited).await,
        Ok(RetryDecision::RetryAt(reset + 5_000))
    );
    limited.usage_limit_reset = None;
    assert_dbg!(
        retry(&host, json!({"cap_ms": 120_000}), &j, &limited).await,
        Ok(RetryDecision::RetryAfterMs(120_000)),
        "an unknown reset waits the cap"
    );

    match retry(&host, json!({}), &j, &failed(OutcomeKind::AuthError, 1, 3)).await {
        Ok(RetryDecision::GiveUp(reason)) => assert!(reason.contains("authentication"), "{reason}"),
        other => panic!("auth errors give up, got {other:?}"),
    }
    assert!(matches!(
        retry(
            &host,
            json!({}),
            &j,
            &failed(OutcomeKind::CliNotFound, 1, 3)
        )
        .await,
        Ok(RetryDecision::GiveUp(_))
    ));
    match retry(&host, json!({}), &j, &failed(OutcomeKind::Failure, 3, 3)).await {
        Ok(RetryDecision::GiveUp(reason)) => assert!(reason.contains("attempt 3 of 3"), "{reason}"),
        other => panic!("the last attempt gives up, got {other:?}"),
    }
    assert!(matches!(
        retry(&host, json!({}), &j, &failed(OutcomeKind::Failure, 4, 3)).await,
        Ok(RetryDecision::GiveUp(_))
    ));
    assert!(matches!(
        retry(&host, json!({}), &j, &failed(OutcomeKind::Failure, 2, 3)).await,
        Ok(RetryDecision::RetryAfterMs(_))
    ));

    // Bad configurations are errors naming the field, for calls and for validation.
    let info = failed(OutcomeKind::Failure, 1, 3);
    for (config, field) in [
        (json!({"base_ms": 0}), "base_ms"),
        (json!({"base_ms": 500, "cap_ms": 100}), "cap_ms"),
        (json!({"base_ms": "soon"}), "base_ms"),
        (json!({"bsae_ms": 10}), "bsae_ms"),
    ] {
        match retry(&host, config.clone(), &j, &info).await {
            Err(PluginFailure::Error { name, message }) => {
                assert_eq!(name, RETRY);
                assert!(
                    message.contains(field),
                    "{config}: the error should name `{field}`: {message}"
                );
                assert!(message.contains("invalid configuration"), "{message}");
            }
            other => panic!("{config}: expected an error, got {other:?}"),
        }
        assert!(
            matches!(
                host.validate_use(RETRY, PluginKind::RetryStrategy, Some(&config)).await,
                Err(PluginFailure::Error { message, .. }) if message.contains(field)
            ),
            "validate_use rejects {config}"
        );
    }
    assert_eq!(
        host.validate_use(
            RETRY,
            PluginKind::RetryStrategy,
            Some(&json!({"base_ms": 100, "cap_ms": 300}))
        )
        .await,
        Ok(())
    );
    let counts = host.list()[0].calls.clone();
    assert!(counts.ok >= 8 && counts.failed >= 4, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_config_defaults_merge_under_the_jobs_config() {
    let (host, _folder) = loaded_host(
        &[(
            RETRY,
            RETRY,
            Some("[config]\nbase_ms = 200\ncap_ms = 200\nusage_limit_margin_ms = 7000\n"),
        )],
        fixed_clock(),
    )
    .await;
    let j = job("job-m", "UTC");
    // The sidecar's base = cap = 200 pins every delay.
    assert_dbg!(
        retry(&host, json!({}), &j, &failed(OutcomeKind::Failure, 2, 5)).await,
        Ok(RetryDecision::RetryAfterMs(200))
    );
    assert_dbg!(
        host.next_retry(RETRY, None, &j, &failed(OutcomeKind::Failure, 2, 5))
            .await,
        Ok(RetryDecision::RetryAfterMs(200))
    );
    // The job's keys win over the sidecar's.
    assert_dbg!(
        retry(
            &host,
            json!({"base_ms": 50, "cap_ms": 50}),
            &j,
            &failed(OutcomeKind::Failure, 2, 5)
        )
        .await,
        Ok(RetryDecision::RetryAfterMs(50))
    );
    let mut limited = failed(OutcomeKind::UsageLimit, 1, 3);
    limited.usage_limit_reset = Some(2_000_000_000_000);
    assert_dbg!(
        retry(&host, json!({}), &j, &limited).await,
        Ok(RetryDecision::RetryAt(2_000_000_007_000)),
        "the sidecar's margin applies"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. business-hours

async fn evaluate_at(
    at: DateTime<Utc>,
    config: Value,
    trigger: ConditionTrigger,
    job_timezone: &str,
) -> Result<Verdict, PluginFailure> {
    let (host, _folder) = loaded_host(&[(CONDITION, CONDITION, None)], Clock::tokio_from(at)).await;
    host.evaluate(CONDITION, Some(&config), &context(trigger, job_timezone))
        .await
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn defer_until(r: Result<Verdict, PluginFailure>) -> (DateTime<Utc>, String) {
    match r {
        Ok(Verdict::DeferUntil(d)) => (
            DateTime::<Utc>::from_timestamp_millis(d.until).unwrap(),
            d.reason,
        ),
        other => panic!("expected a deferral, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_hours_runs_inside_and_defers_or_skips_outside() {
    const BERLIN: &str = "Europe/Berlin";
    let schedule = ConditionTrigger::Schedule;
    // 2026-03-02 is a Monday; Berlin is on CET (UTC+1) in early March.
    let monday_10_berlin = utc(2026, 3, 2, 9, 0);
    assert_dbg!(
        evaluate_at(monday_10_berlin, json!({}), schedule, BERLIN).await,
        Ok(Verdict::Run),
        "Monday 10:00 in Berlin is inside the default Mon–Fri 09:00–18:00"
    );
    // The same instant is 04:00 in New York: deferred to 09:00 there (14:00 UTC).
    let (until, reason) = defer_until(
        evaluate_at(
            monday_10_berlin,
            json!({"timezone": "America/New_York"}),
            schedule,
            BERLIN,
        )
        .await,
    );
    assert_eq!(until, utc(2026, 3, 2, 14, 0), "{reason}");

    // Saturday 2026-03-07 12:00 Berlin -> Monday 2026-03-09 09:00 Berlin (08:00 UTC).
    let saturday_noon_berlin = utc(2026, 3, 7, 11, 0);
    let (until, reason) =
        defer_until(evaluate_at(saturday_noon_berlin, json!({}), schedule, BERLIN).await);
    assert_eq!(until, utc(2026, 3, 9, 8, 0), "{reason}");
    assert!(reason.contains("outside business hours"), "{reason}");

    match evaluate_at(
        saturday_noon_berlin,
        json!({"outside": "skip"}),
        schedule,
        BERLIN,
    )
    .await
    {
        Ok(Verdict::Skip(reason)) => assert!(reason.contains("outside business hours"), "{reason}"),
        other => panic!("outside: skip skips, got {other:?}"),
    }

    // Manual runs bypass the check unless told not to.
    assert_dbg!(
        evaluate_at(
            saturday_noon_berlin,
            json!({}),
            ConditionTrigger::Manual,
            BERLIN
        )
        .await,
        Ok(Verdict::Run)
    );
    let (until, _) = defer_until(
        evaluate_at(
            saturday_noon_berlin,
            json!({"manual_bypass": false}),
            ConditionTrigger::Manual,
            BERLIN,
        )
        .await,
    );
    assert_eq!(until, utc(2026, 3, 9, 8, 0));
    // Retries are checked like scheduled runs.
    defer_until(
        evaluate_at(
            saturday_noon_berlin,
            json!({}),
            ConditionTrigger::Retry,
            BERLIN,
        )
        .await,
    );

    // Holidays: Monday 2026-03-02 is off -> Tuesday 09:00 Berlin (08:00 UTC).
    let (until, reason) = defer_until(
        evaluate_at(
            monday_10_berlin,
            json!({"holidays": ["2026-03-02"]}),
            schedule,
            BERLIN,
        )
        .await,
    );
    assert_eq!(until, utc(2026, 3, 3, 8, 0), "{reason}");

    // A job without a zone is evaluated in UTC: 09:00 UTC Monday is inside.
    assert_dbg!(
        evaluate_at(monday_10_berlin, json!({}), schedule, "").await,
        Ok(Verdict::Run)
    );
    // The window's end is exclusive: 18:00 Berlin on a weekday is outside.
    let (until, _) =
        defer_until(evaluate_at(utc(2026, 3, 2, 17, 0), json!({}), schedule, BERLIN).await);
    assert_eq!(until, utc(2026, 3, 3, 8, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_hours_rejects_bad_configuration_naming_the_field() {
    let (host, _folder) = loaded_host(&[(CONDITION, CONDITION, None)], fixed_clock()).await;
    let ctx = context(ConditionTrigger::Schedule, "UTC");
    for (config, needle) in [
        (json!({"start": "9"}), "start"),
        (json!({"start": "18:00", "end": "09:00"}), "start"),
        (json!({"days": []}), "days"),
        (json!({"holidays": ["2026-02-30"]}), "holidays"),
        (json!({"outside": "later"}), "outside"),
        (json!({"timezone": "Mars/Olympus"}), "Mars/Olympus"),
    ] {
        match host.evaluate(CONDITION, Some(&config), &ctx).await {
            Err(PluginFailure::Error { message, .. }) => {
                assert!(
                    message.contains(needle),
                    "{config}: should mention {needle:?}: {message}"
                )
            }
            other => panic!("{config}: expected an error, got {other:?}"),
        }
        assert!(
            host.validate_use(CONDITION, PluginKind::ConditionHook, Some(&config))
                .await
                .is_err(),
            "validate_use rejects {config}"
        );
    }
    assert_eq!(
        host.validate_use(
            CONDITION,
            PluginKind::ConditionHook,
            Some(&json!({"timezone": "Asia/Taipei"}))
        )
        .await,
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// 6. webhook-notifier

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_notifier_posts_to_a_granted_receiver_and_nowhere_else() {
    let receiver = Receiver::start(200).await;
    let granted = format!(
        "kind = \"notifier\"\n[config]\nurl = \"{}\"\n[grants]\nallowed_hosts = [\"{}\"]\n[limits]\ntimeout_ms = 5000\n",
        receiver.url("/hooks/cnp"),
        receiver.authority()
    );
    let (host, _folder) = loaded_host(
        &[
            (NOTIFIER, NOTIFIER, Some(&granted)),
            (
                "ungranted-notifier",
                NOTIFIER,
                Some("[limits]\ntimeout_ms = 5000\n"),
            ),
        ],
        fixed_clock(),
    )
    .await;
    assert_eq!(
        host.get(NOTIFIER).unwrap().sidecar.allowed_hosts_text,
        vec![receiver.authority()]
    );
    let summary = "nightly: failed after 3 attempts (exit 1)";

    // Granted: the Slack-shaped body arrives (url from the sidecar, format from the job).
    let receipt = host
        .deliver(NOTIFIER, Some(&json!({"format": "slack"})), &event(summary))
        .await;
    assert_eq!(receipt, Ok("HTTP 200".to_owned()));
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/hooks/cnp");
    assert_eq!(got[0].json(), json!({"text": summary}));
    assert!(
        got[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{got:?}"
    );
    assert_eq!(got[0].header("host"), Some(receiver.authority().as_str()));

    // The full event in JSON, with a configured header.
    let receipt = host
        .deliver(
            NOTIFIER,
            Some(&json!({"format": "json", "headers": {"Authorization": "Bearer t0ken"}})),
            &event(summary),
        )
        .await;
    assert_eq!(receipt, Ok("HTTP 200".to_owned()));
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    let body = got[1].json();
    assert_eq!(body["summary"], summary, "{body}");
    assert_eq!(body["job"]["name"], "job job-n", "{body}");
    assert_eq!(got[1].header("authorization"), Some("Bearer t0ken"));

    // A 500 answer is an error (unavailable), with the status.
    receiver.answer(500);
    match host
        .deliver(NOTIFIER, Some(&json!({"format": "slack"})), &event(summary))
        .await
    {
        Err(PluginFailure::Error { message, .. }) => {
            assert!(
                message.contains("unavailable") && message.contains("500"),
                "{message}"
            )
        }
        other => panic!("a 500 should fail the delivery, got {other:?}"),
    }
    assert_eq!(receiver.requests().len(), 3);
    receiver.answer(200);

    // Not granted: refused by the host, nothing reaches the receiver.
    let r = host
        .deliver(
            "ungranted-notifier",
            Some(&json!({"url": receiver.url("/hooks/cnp"), "format": "slack"})),
            &event(summary),
        )
        .await;
    match r {
        Err(PluginFailure::Error { message, .. }) => {
            assert!(message.contains("denied"), "{message}")
        }
        other => panic!("an ungranted host must fail, got {other:?}"),
    }
    // The granted plugin may not reach another port of the same address either.
    let other = Receiver::start(200).await;
    assert!(host
        .deliver(
            NOTIFIER,
            Some(&json!({"url": other.url("/x")})),
            &event(summary)
        )
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        receiver.requests().len(),
        3,
        "nothing more arrived: {:?}",
        receiver.requests()
    );
    assert!(other.requests().is_empty(), "{:?}", other.requests());

    // A missing url is a configuration error.
    match host
        .deliver("ungranted-notifier", None, &event(summary))
        .await
    {
        Err(PluginFailure::Error { message, .. }) => assert!(message.contains("url"), "{message}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Hostile fixtures

/// A host with business-hours (for health checks) and the fixture `name` with `sidecar`.
async fn hostile_host(name: &str, sidecar: Option<&str>) -> (PluginHost, Folder) {
    loaded_host(
        &[(CONDITION, CONDITION, None), (name, name, sidecar)],
        fixed_clock(),
    )
    .await
}

fn calls_of(host: &PluginHost, name: &str) -> cnp::plugins::CallCounts {
    host.list()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
        .calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_forever_is_stopped_at_its_time_limit() {
    let (host, _folder) = hostile_host("spin-forever", Some("[limits]\ntimeout_ms = 200\n")).await;
    let ctx = context(ConditionTrigger::Schedule, "UTC");
    for round in 0..2 {
        let started = Instant::now();
        let r = host.evaluate("spin-forever", None, &ctx).await;
        let took = started.elapsed();
        assert_dbg!(
            r,
            Err(PluginFailure::Timeout {
                name: "spin-forever".into(),
                after: Duration::from_millis(200)
            })
        );
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(5),
            "round {round}: took {took:?}"
        );
        assert_healthy(&host, "spin-forever").await;
    }
    let calls = calls_of(&host, "spin-forever");
    assert_eq!(
        (calls.timeouts, calls.failed, calls.ok),
        (2, 2, 0),
        "{calls:?}"
    );
    // validate-config does not spin: the plugin is still usable where it behaves.
    assert_dbg!(
        host.validate_use("spin-forever", PluginKind::ConditionHook, None)
            .await,
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_stopped_at_its_memory_limit() {
    let (host, _folder) = hostile_host(
        "memory-bomb",
        Some("[limits]\nmemory_mb = 16\ntimeout_ms = 20000\n"),
    )
    .await;
    for _ in 0..2 {
        let started = Instant::now();
        let r = host
            .next_retry(
                "memory-bomb",
                None,
                &job("j", "UTC"),
                &failed(OutcomeKind::Failure, 1, 3),
            )
            .await;
        assert_dbg!(
            r,
            Err(PluginFailure::MemoryLimit {
                name: "memory-bomb".into(),
                limit_mb: 16
            })
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        assert_healthy(&host, "memory-bomb").await;
    }
    let calls = calls_of(&host, "memory-bomb");
    assert_eq!(
        (calls.ok, calls.failed, calls.timeouts),
        (0, 2, 0),
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_traps_with_its_panic_message() {
    let (host, _folder) = hostile_host("panicker", None).await;
    let ctx = context(ConditionTrigger::Schedule, "UTC");
    // Twice: the instance that trapped is never reused.
    for _ in 0..2 {
        match host.evaluate("panicker", None, &ctx).await {
            Err(PluginFailure::Trap { name, message }) => {
                assert_eq!(name, "panicker");
                assert!(
                    message.contains("panicker fixture: evaluate always panics (job job job-bh)"),
                    "the trap should carry the guest's panic message: {message}"
                );
            }
            other => panic!("expected a trap, got {other:?}"),
        }
        assert_healthy(&host, "panicker").await;
    }
    assert_dbg!(
        host.validate_use("panicker", PluginKind::ConditionHook, None)
            .await,
        Ok(()),
        "a call after the trap works"
    );
    let calls = calls_of(&host, "panicker");
    assert_eq!((calls.ok, calls.failed), (1, 2), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_http_reaches_neither_the_ungranted_host_nor_with_a_forged_host_header() {
    let allowed = Receiver::start(200).await;
    let forbidden = Receiver::start(200).await;
    let grant = format!(
        "[grants]\nallowed_hosts = [\"{}\"]\n[limits]\ntimeout_ms = 5000\n",
        allowed.authority()
    );
    let (host, _folder) = hostile_host("forbidden-http", Some(&grant)).await;
    let config = json!({
        "forbidden_url": forbidden.url("/steal"),
        "allowed_url": allowed.url("/hook"),
    });
    let r = host
        .deliver("forbidden-http", Some(&config), &event("exfiltrate"))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        forbidden.requests().is_empty(),
        "the ungranted host got requests: {:?}",
        forbidden.requests()
    );
    for req in allowed.requests() {
        assert_eq!(
            req.header("host"),
            Some(allowed.authority().as_str()),
            "a request reached the granted receiver with a forged Host header: {req:?}"
        );
    }
    eprintln!("forbidden-http: {r:?}");
    match &r {
        Ok(receipt) => {
            assert!(receipt.starts_with("all refused"), "{receipt}");
            assert!(
                receipt.contains("(a)") && receipt.contains("(b)"),
                "{receipt}"
            );
            assert!(
                receipt.contains("denied by the host"),
                "(a) is refused by the host's gate: {receipt}"
            );
        }
        other => panic!("the fixture reports that something got through: {other:?}"),
    }
    assert!(allowed.requests().is_empty(), "{:?}", allowed.requests());
    assert_healthy(&host, "forbidden-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_is_bounded_and_the_verdict_still_arrives() {
    // Generous: 100 MiB of output and 100,000 log calls take a while in a debug build.
    let (host, _folder) =
        hostile_host("output-flood", Some("[limits]\ntimeout_ms = 30000\n")).await;
    let started = Instant::now();
    let r = host
        .evaluate(
            "output-flood",
            None,
            &context(ConditionTrigger::Schedule, "UTC"),
        )
        .await;
    assert_dbg!(r, Ok(Verdict::Run), "after {:?}", started.elapsed());
    eprintln!("output-flood took {:?}", started.elapsed());
    assert_healthy(&host, "output-flood").await;
    let calls = calls_of(&host, "output-flood");
    assert_eq!((calls.ok, calls.failed), (1, 0), "{calls:?}");
}

// ---------------------------------------------------------------------------------------------
// 8. Concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_calls_all_succeed() {
    let mut s = settings();
    s.max_concurrent_calls = 8; // fewer slots than calls: the rest wait their turn
    let folder = Folder::new();
    folder.install(RETRY, RETRY, None);
    folder.install(CONDITION, CONDITION, None);
    let host =
        PluginHost::new(&s, Some(folder.path()), Some(shared_cache()), fixed_clock()).unwrap();
    assert_eq!(host.load_all().await, 2, "{:?}", host.load_errors());

    let mut set = tokio::task::JoinSet::new();
    for i in 0..50u32 {
        let host = host.clone();
        set.spawn(async move {
            if i % 2 == 0 {
                let j = job(&format!("job-{i}"), "UTC");
                let d = delay_of(
                    host.next_retry(
                        RETRY,
                        Some(&json!({"base_ms": 100, "cap_ms": 1000})),
                        &j,
                        &failed(OutcomeKind::Failure, 2, 5),
                    )
                    .await,
                );
                assert!((100..=1000).contains(&d), "call {i}: {d}");
            } else {
                let r = host
                    .evaluate(
                        CONDITION,
                        Some(&json!({"days": ["mon"], "start": "00:00", "end": "24:00"})),
                        &context(ConditionTrigger::Schedule, "UTC"),
                    )
                    .await;
                assert_dbg!(r, Ok(Verdict::Run), "call {i}");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("a call task panicked");
    }
    let counts: HashMap<String, (u64, u64)> = host
        .list()
        .into_iter()
        .map(|p| (p.name, (p.calls.ok, p.calls.failed)))
        .collect();
    assert_eq!(counts[RETRY], (25, 0));
    assert_eq!(counts[CONDITION], (25, 0));
}

// ---------------------------------------------------------------------------------------------
// The engine's condition seam: defer, then run (paused time)

/// A runner that succeeds at once and counts its runs.
struct CountingRunner {
    clock: Clock,
    runs: Arc<Mutex<Vec<DateTime<Utc>>>>,
}

impl cnp::executor::Runner for CountingRunner {
    fn run(
        &self,
        _request: cnp::executor::RunRequest,
        _observer: Arc<dyn cnp::executor::RunObserver>,
    ) -> cnp::executor::BoxFuture<cnp::executor::RunReport> {
        let now = self.clock.now();
        self.runs.lock().unwrap().push(now);
        Box::pin(async move {
            cnp::executor::RunReport {
                outcome: cnp::model::Outcome::Success,
                exit_code: Some(0),
                started_at: Some(now),
                finished_at: now,
                pid: Some(1),
                result_text: Some("done".into()),
                session_id: None,
                cost_usd: None,
                usage: None,
                resource_usage: None,
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_engine_defers_a_run_until_business_hours_and_then_runs_it() {
    // Saturday 2026-03-07 12:00 Berlin (11:00 UTC).
    let start = utc(2026, 3, 7, 11, 0);
    let clock = Clock::tokio_from(start);
    let folder = Folder::new();
    folder.install(CONDITION, CONDITION, None);
    let host = host_in(&folder, clock.clone());
    assert_eq!(host.load_all().await, 1, "{:?}", host.load_errors());

    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store_inline(&dir.path().join("cnp.db"));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let runner = Arc::new(CountingRunner {
        clock: clock.clone(),
        runs: runs.clone(),
    });
    let engine = cnp::engine::Engine::start_with_plugins(
        store.clone(),
        runner,
        cnp::engine::EngineSettings::default(),
        clock.clone(),
        cnp::events::EventBus::default(),
        Some(host),
    )
    .await
    .unwrap();
    let at = start + chrono::TimeDelta::seconds(10);
    let spec: cnp::manifest::JobSpec = serde_json::from_value(json!({
        "name": "weekday work",
        "prompt": "do the work",
        "schedule": {"type": "once", "at": at.to_rfc3339()},
        "conditions": [{"plugin": CONDITION, "config": {"timezone": "Europe/Berlin"}}],
    }))
    .unwrap();
    let job = engine.create_job(spec.normalized(), None).await.unwrap();
    assert_eq!(job.execution_options.conditions.len(), 1);

    let executions = || {
        let store = store.clone();
        let id = job.id.clone();
        async move {
            store
                .list_executions(cnp::store::ExecutionFilter {
                    job_id: Some(id),
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    // The slot comes due on Saturday: deferred to Monday 09:00 Berlin (08:00 UTC).
    let mut deferred = None;
    for _ in 0..400 {
        tokio::time::advance(Duration::from_millis(100)).await;
        std::thread::sleep(Duration::from_millis(2));
        if let Some(e) = executions()
            .await
            .into_iter()
            .find(|e| e.status == cnp::model::ExecutionStatus::Deferred)
        {
            deferred = Some(e);
            break;
        }
    }
    let deferred = deferred.expect("the run was not deferred");
    let monday_9_berlin = utc(2026, 3, 9, 8, 0);
    assert_eq!(
        deferred.scheduled_for,
        Some(monday_9_berlin),
        "{deferred:?}"
    );
    assert!(
        deferred
            .error
            .as_deref()
            .is_some_and(|r| r.contains("condition `business-hours`")
                && r.contains("outside business hours")),
        "{deferred:?}"
    );
    assert!(runs.lock().unwrap().is_empty(), "nothing ran on Saturday");

    // Just before Monday 09:00 nothing has run; then it runs.
    let until = (monday_9_berlin - clock.now()).to_std().unwrap() - Duration::from_secs(5);
    tokio::time::advance(until).await;
    std::thread::sleep(Duration::from_millis(20));
    assert!(runs.lock().unwrap().is_empty(), "ran early");
    let mut done = None;
    for _ in 0..400 {
        tokio::time::advance(Duration::from_millis(100)).await;
        std::thread::sleep(Duration::from_millis(2));
        if let Some(e) = executions()
            .await
            .into_iter()
            .find(|e| e.status == cnp::model::ExecutionStatus::Completed)
        {
            done = Some(e);
            break;
        }
    }
    let done = done.expect("the deferred run never completed");
    assert_eq!(done.id, deferred.id, "the same execution ran");
    let ran = runs.lock().unwrap().clone();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(
        ran[0] >= monday_9_berlin && ran[0] < monday_9_berlin + chrono::TimeDelta::seconds(5),
        "ran at {}",
        ran[0]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. WIT 0.2 condition hooks: the workflow upstreams

fn upstream(job: &str, direct: bool, result: &str) -> cnp::plugins::UpstreamRunInfo {
    cnp::plugins::UpstreamRunInfo {
        job_name: job.into(),
        execution_id: format!("exec-{job}"),
        direct,
        status: cnp::plugins::UpstreamStatus::Completed,
        exit_code: Some(0),
        result_text: Some(result.into()),
        error: None,
        cost_usd: Some(0.5),
        duration_ms: Some(1200),
        session_id: Some("s-1".into()),
    }
}

fn context_0_2(
    trigger: cnp::plugins::ConditionTrigger02,
    upstreams: Vec<cnp::plugins::UpstreamRunInfo>,
) -> cnp::plugins::ConditionContext {
    cnp::plugins::ConditionContext {
        job: job("job-ug", "UTC"),
        trigger,
        scheduled_at: None,
        previous: None,
        workflow_pass: Some("pass-1".into()),
        upstreams,
    }
}

#[tokio::test]
async fn a_0_2_condition_hook_loads_beside_0_1_ones_and_sees_the_upstreams() {
    let (host, _folder) = loaded_host(
        &[
            (CONDITION, CONDITION, None),
            (UPSTREAM_GATE, UPSTREAM_GATE, None),
        ],
        fixed_clock(),
    )
    .await;
    let versions: HashMap<String, (PluginKind, &str)> = host
        .list()
        .into_iter()
        .map(|p| (p.name, (p.kind, p.wit_version)))
        .collect();
    assert_eq!(
        versions[UPSTREAM_GATE],
        (PluginKind::ConditionHook, "0.2.0")
    );
    assert_eq!(versions[CONDITION], (PluginKind::ConditionHook, "0.1.0"));
    let cfg = json!({"skip_if_contains": ["NO-CHANGES"]});
    host.validate_use(UPSTREAM_GATE, PluginKind::ConditionHook, Some(&cfg))
        .await
        .unwrap();
    let bad = json!({"skip_if_contains": [" "]});
    assert!(matches!(
        host.validate_use(UPSTREAM_GATE, PluginKind::ConditionHook, Some(&bad))
            .await,
        Err(PluginFailure::Error { .. })
    ));
    use cnp::plugins::ConditionTrigger02 as T;
    // A direct upstream's result has the word: skipped, naming it.
    let ctx = context_0_2(
        T::Dependency,
        vec![
            upstream("lint", false, "fine"),
            upstream("review", true, "verdict: no-changes needed"),
        ],
    );
    assert_dbg!(
        host.evaluate_condition(UPSTREAM_GATE, Some(&cfg), &ctx)
            .await,
        Ok(Verdict::Skip("upstream `review` said `NO-CHANGES`".into()))
    );
    // Only an indirect one has it: runs (only_direct is the default), unless told to look at
    // every earlier run of the pass.
    let ctx = context_0_2(
        T::Dependency,
        vec![
            upstream("lint", false, "NO-CHANGES"),
            upstream("review", true, "3 issues"),
        ],
    );
    assert_dbg!(
        host.evaluate_condition(UPSTREAM_GATE, Some(&cfg), &ctx)
            .await,
        Ok(Verdict::Run)
    );
    let all = json!({"skip_if_contains": ["NO-CHANGES"], "only_direct": false});
    assert_dbg!(
        host.evaluate_condition(UPSTREAM_GATE, Some(&all), &ctx)
            .await,
        Ok(Verdict::Skip("upstream `lint` said `NO-CHANGES`".into()))
    );
    // 0.1's entry point still reaches a 0.2 hook (with no upstreams: it runs).
    assert_dbg!(
        host.evaluate(
            UPSTREAM_GATE,
            Some(&cfg),
            &context(ConditionTrigger::Schedule, "UTC")
        )
        .await,
        Ok(Verdict::Run)
    );
    // A 0.1 hook given 0.2's context sees `dependency` as `manual`: business-hours' manual
    // bypass lets it run on a Saturday, and without the bypass it is outside the window.
    let saturday = context_0_2(T::Dependency, vec![upstream("review", true, "x")]);
    let (host, _folder) = loaded_host(
        &[(CONDITION, CONDITION, None)],
        Clock::tokio_from(utc(2026, 3, 7, 11, 0)),
    )
    .await;
    let tz = json!({"timezone": "Europe/Berlin", "outside": "skip"});
    assert_dbg!(
        host.evaluate_condition(CONDITION, Some(&tz), &saturday)
            .await,
        Ok(Verdict::Run)
    );
    let strict = json!({"timezone": "Europe/Berlin", "outside": "skip", "manual_bypass": false});
    match host
        .evaluate_condition(CONDITION, Some(&strict), &saturday)
        .await
    {
        Ok(Verdict::Skip(r)) => assert!(r.contains("outside business hours"), "{r}"),
        other => panic!("expected a skip, got {other:?}"),
    }
}

/// "Runs" for 1 s of paused time and answers `FAKE_RESULT` from the job's environment, else
/// `result of <prompt>`; records the prompts it saw by job.
struct WorkflowRunner {
    clock: Clock,
    prompts: Arc<Mutex<Vec<String>>>,
}

impl cnp::executor::Runner for WorkflowRunner {
    fn run(
        &self,
        request: cnp::executor::RunRequest,
        _observer: Arc<dyn cnp::executor::RunObserver>,
    ) -> cnp::executor::BoxFuture<cnp::executor::RunReport> {
        let clock = self.clock.clone();
        self.prompts.lock().unwrap().push(request.prompt.clone());
        Box::pin(async move {
            let started = clock.now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let result = request
                .options
                .environment
                .get("FAKE_RESULT")
                .cloned()
                .unwrap_or_else(|| format!("result of {}", request.prompt));
            cnp::executor::RunReport {
                outcome: cnp::model::Outcome::Success,
                exit_code: Some(0),
                started_at: Some(started),
                finished_at: clock.now(),
                pid: Some(1),
                result_text: Some(result),
                session_id: Some(format!("session-{}", request.execution_id)),
                cost_usd: Some(0.01),
                usage: None,
                resource_usage: None,
            }
        })
    }
}

struct Flow {
    engine: cnp::engine::Engine,
    store: cnp::store::Store,
    prompts: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    _folder: Folder,
}

/// An engine on paused time with `plugins` (name, package) loaded.
async fn flow(plugins: &[(&str, &str)], clock: Clock) -> Flow {
    let folder = Folder::new();
    for (name, package) in plugins {
        folder.install(name, package, None);
    }
    let host = host_in(&folder, clock.clone());
    assert_eq!(
        host.load_all().await,
        plugins.len(),
        "{:?}",
        host.load_errors()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store_inline(&dir.path().join("cnp.db"));
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let runner = Arc::new(WorkflowRunner {
        clock: clock.clone(),
        prompts: prompts.clone(),
    });
    let engine = cnp::engine::Engine::start_with_plugins(
        store.clone(),
        runner,
        cnp::engine::EngineSettings {
            default_retry: None,
            ..Default::default()
        },
        clock,
        cnp::events::EventBus::default(),
        Some(host),
    )
    .await
    .unwrap();
    Flow {
        engine,
        store,
        prompts,
        _dir: dir,
        _folder: folder,
    }
}

impl Flow {
    async fn create(&self, v: Value) -> String {
        let spec: cnp::manifest::JobSpec = serde_json::from_value(v).unwrap();
        self.engine.create_job(spec, None).await.unwrap().id
    }

    /// The job's runs, oldest first.
    async fn runs(&self, job_id: &str) -> Vec<cnp::model::JobExecution> {
        let mut v = self
            .store
            .list_executions(cnp::store::ExecutionFilter {
                job_id: Some(job_id.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        v.reverse();
        v
    }

    /// Lets runs go until nothing is queued or running.
    async fn settle(&self) {
        let mut quiet = 0;
        for _ in 0..2000 {
            tokio::time::advance(Duration::from_millis(100)).await;
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
            let busy = self.store.pending_executions().await.unwrap().len()
                + self.store.running_executions().await.unwrap().len();
            quiet = if busy == 0 { quiet + 1 } else { 0 };
            if quiet >= 5 {
                return;
            }
        }
        panic!("runs did not settle");
    }
}

#[tokio::test(start_paused = true)]
async fn a_0_1_condition_hook_still_decides_on_a_dependency_triggered_run() {
    use cnp::model::{ExecutionStatus, Trigger};
    // Saturday 2026-03-07 12:00 Berlin: outside business hours.
    let f = flow(
        &[(CONDITION, CONDITION)],
        Clock::tokio_from(utc(2026, 3, 7, 11, 0)),
    )
    .await;
    let a = f.create(json!({"name": "a", "prompt": "start"})).await;
    // No manual bypass: the hook applies its window to the dependency run.
    let strict = f
        .create(json!({
            "name": "strict", "prompt": "x", "depends_on": ["a"],
            "conditions": [{"plugin": CONDITION, "config":
                {"timezone": "Europe/Berlin", "outside": "skip", "manual_bypass": false}}],
        }))
        .await;
    let after = f
        .create(json!({"name": "after-strict", "prompt": "x", "depends_on": ["strict"]}))
        .await;
    // With the (default) manual bypass: a 0.1 hook sees the dependency run as manual.
    let bypass = f
        .create(json!({
            "name": "bypass", "prompt": "y", "depends_on": ["a"],
            "conditions": [{"plugin": CONDITION, "config":
                {"timezone": "Europe/Berlin", "outside": "skip"}}],
        }))
        .await;
    f.engine.run_now(&a).await.unwrap();
    f.settle().await;
    let rs = f.runs(&strict).await;
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].trigger, Trigger::Dependency);
    assert_eq!(rs[0].status, ExecutionStatus::Skipped, "{:?}", rs[0]);
    let reason = rs[0].error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("condition `business-hours`") && reason.contains("outside business hours"),
        "{reason}"
    );
    let ra = f.runs(&after).await;
    assert_eq!(
        ra.len(),
        1,
        "the skipped node's downstream is settled: {ra:?}"
    );
    assert_eq!(ra[0].status, ExecutionStatus::Skipped, "{:?}", ra[0]);
    let rb = f.runs(&bypass).await;
    assert_eq!(rb.len(), 1, "{rb:?}");
    assert_eq!(rb[0].status, ExecutionStatus::Completed, "{:?}", rb[0]);
}

#[tokio::test(start_paused = true)]
async fn a_0_2_condition_hook_skips_a_workflow_node_on_its_upstream_result() {
    use cnp::model::ExecutionStatus;
    let f = flow(&[(UPSTREAM_GATE, UPSTREAM_GATE)], fixed_clock()).await;
    let review = f
        .create(json!({
            "name": "review", "prompt": "review it",
            "execution": {"environment": {"FAKE_RESULT": "Looks fine. Verdict: NO-CHANGES"}},
        }))
        .await;
    let fix = f
        .create(json!({
            "name": "fix", "prompt": "fix: {{ upstream.review.result }}", "depends_on": ["review"],
            "conditions": [{"plugin": UPSTREAM_GATE, "config": {"skip_if_contains": ["no-changes"]}}],
        }))
        .await;
    let tests = f
        .create(json!({"name": "tests", "prompt": "run tests", "depends_on": ["fix"]}))
        .await;
    let report = f
        .create(json!({
            "name": "report", "prompt": "fix ended {{ upstream.fix.status }}",
            "depends_on": [{"job": "fix", "on": "always"}],
        }))
        .await;

    // Pass 1: the review says NO-CHANGES: fix is skipped by the hook; tests (on success) is
    // skipped in turn, report (on always) runs.
    f.engine.run_now(&review).await.unwrap();
    f.settle().await;
    let rf = f.runs(&fix).await;
    assert_eq!(rf.len(), 1, "{rf:?}");
    assert_eq!(rf[0].status, ExecutionStatus::Skipped, "{:?}", rf[0]);
    assert_eq!(
        rf[0].error.as_deref(),
        Some("condition `upstream-gate`: upstream `review` said `no-changes`"),
        "{:?}",
        rf[0]
    );
    let rt = f.runs(&tests).await;
    assert_eq!(rt.len(), 1, "{rt:?}");
    assert_eq!(rt[0].status, ExecutionStatus::Skipped, "{:?}", rt[0]);
    let rr = f.runs(&report).await;
    assert_eq!(rr.len(), 1, "{rr:?}");
    assert_eq!(rr[0].status, ExecutionStatus::Completed, "{:?}", rr[0]);
    assert!(
        f.prompts
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == "fix ended skipped"),
        "{:?}",
        f.prompts.lock().unwrap()
    );

    // Pass 2: the review finds issues: fix runs with the review's result in its prompt (read
    // once with the hook's upstreams), then tests.
    let mut spec: cnp::manifest::JobSpec = serde_json::from_value(json!({
        "name": "review", "prompt": "review it",
        "execution": {"environment": {"FAKE_RESULT": "2 issues found"}},
    }))
    .unwrap();
    spec = spec.normalized();
    f.engine.update_job(&review, spec, None).await.unwrap();
    f.engine.run_now(&review).await.unwrap();
    f.settle().await;
    let rf = f.runs(&fix).await;
    assert_eq!(rf.len(), 2, "{rf:?}");
    assert_eq!(rf[1].status, ExecutionStatus::Completed, "{:?}", rf[1]);
    assert!(
        f.prompts
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == "fix: 2 issues found"),
        "{:?}",
        f.prompts.lock().unwrap()
    );
    let rt = f.runs(&tests).await;
    assert_eq!(rt.len(), 2, "{rt:?}");
    assert_eq!(rt[1].status, ExecutionStatus::Completed, "{:?}", rt[1]);
}
