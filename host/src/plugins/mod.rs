//! WebAssembly component plugins: retry strategies, notification channels and condition hooks.
//!
//! One wasmtime [`Engine`](wasmtime::Engine) (pooling allocator, epoch interruption) serves every
//! plugin. Each loaded plugin keeps its compiled component (cached on disk across restarts) and a
//! pre-instantiated linker ([`InstancePre`]); every call gets a fresh store and instance, so a
//! plugin that traps never poisons the next call. The sandbox denies by default (see
//! [`sandbox`]): no filesystem, environment or sockets, HTTP only to granted hosts, a time limit
//! and a memory cap per call, and bounded stdout/stderr captured into the host log.
//!
//! [`registry`] loads the plugins folder and follows drop-in, replacement and removal.

pub mod bindings;
mod registry;
mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::component::{Instance, InstancePre, Linker};
use wasmtime::{Store, UpdateDeadline};

pub use bindings::condition::{Deferral, RunContext, Trigger as ConditionTrigger, Verdict};
/// `cnp:plugin@0.2.0`'s condition types: [`ConditionContext`] is what the engine builds for
/// every condition hook (a 0.1 hook gets it converted down, see [`PluginHost::evaluate_condition`]).
pub use bindings::condition_0_2::{
    RunContext as ConditionContext, RunStatus as UpstreamStatus, Trigger as ConditionTrigger02,
    UpstreamRun as UpstreamRunInfo,
};
pub use bindings::execute::{
    Outcome as ExecutorOutcome, RunRequest as ExecutorRequest, RunResult as ExecutorResult,
    TokenUsage as ExecutorTokenUsage, UsageLimit as ExecutorUsageLimit,
};
pub use bindings::notify::{Event as NotifyEvent, EventKind};
pub use bindings::retry::RetryDecision;
pub use bindings::types::{ExecutionInfo, JobInfo, OutcomeKind, PluginError};
pub use registry::Sidecar;
pub use sandbox::{HostRule, LineSink};

use crate::clock::Clock;
use crate::config::PluginsConfig;
use sandbox::{CapturedOutput, PluginState, SandboxSpec};

/// How often the epoch advances while calls are in flight: a spinning plugin yields to the
/// runtime at least this often, and its time limit is checked this often.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// What a plugin supplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    RetryStrategy,
    Notifier,
    ConditionHook,
    /// Does a job's work instead of the Claude CLI (`cnp:plugin@0.3.0`).
    Executor,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::RetryStrategy => "retry-strategy",
            PluginKind::Notifier => "notifier",
            PluginKind::ConditionHook => "condition-hook",
            PluginKind::Executor => "executor",
        }
    }

    /// The WIT interface a plugin of this kind exports.
    fn interface(self) -> &'static str {
        match self {
            PluginKind::RetryStrategy => "retry",
            PluginKind::Notifier => "notify",
            PluginKind::ConditionHook => "condition",
            PluginKind::Executor => "execute",
        }
    }

    fn from_interface(name: &str) -> Option<PluginKind> {
        match name {
            "retry" => Some(PluginKind::RetryStrategy),
            "notify" => Some(PluginKind::Notifier),
            "condition" => Some(PluginKind::ConditionHook),
            "execute" => Some(PluginKind::Executor),
            _ => None,
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin call gave no answer. The caller falls back to built-in behaviour and records
/// this message on the execution.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginFailure {
    #[error("plugin `{name}` is not loaded{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NotLoaded {
        name: String,
        reason: Option<String>,
    },
    #[error("plugin `{name}` is a {actual} plugin, not a {expected}")]
    WrongKind {
        name: String,
        expected: PluginKind,
        actual: PluginKind,
    },
    #[error("plugin `{name}` timed out after {} ms", after.as_millis())]
    Timeout { name: String, after: Duration },
    #[error("plugin `{name}` exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit { name: String, limit_mb: u64 },
    #[error("plugin `{name}` trapped: {message}")]
    Trap { name: String, message: String },
    #[error("plugin `{name}` returned an error: {message}")]
    Error { name: String, message: String },
}

impl PluginFailure {
    /// A short word for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFailure::NotLoaded { .. } => "not_loaded",
            PluginFailure::WrongKind { .. } => "wrong_kind",
            PluginFailure::Timeout { .. } => "timeout",
            PluginFailure::MemoryLimit { .. } => "memory_limit",
            PluginFailure::Trap { .. } => "trap",
            PluginFailure::Error { .. } => "error",
        }
    }
}

/// Renders a plugin's expected failure.
pub fn describe_plugin_error(e: &PluginError) -> String {
    match e {
        PluginError::InvalidConfig(m) => format!("invalid configuration: {m}"),
        PluginError::Unavailable(m) => format!("unavailable: {m}"),
        PluginError::Failed(m) => m.clone(),
    }
}

/// A loaded plugin.
pub struct Plugin {
    pub name: String,
    /// `name`, shared with every call's log records.
    label: Arc<str>,
    pub kind: PluginKind,
    /// The version of the WIT package its exported interface comes from (`0.1.0`, or `0.2.0`
    /// for a condition hook built against 0.2).
    pub wit_version: &'static str,
    pub path: PathBuf,
    /// SHA-256 of the `.wasm` file.
    pub digest: String,
    pub size_bytes: u64,
    pub loaded_at: DateTime<Utc>,
    /// Whether the compiled artifact came from the on-disk cache.
    pub from_cache: bool,
    /// Time to compile (or load from cache) and pre-instantiate.
    pub load_time: Duration,
    pub sidecar: Sidecar,
    pre: InstancePre<PluginState>,
    exports: Exports,
}

enum Exports {
    Retry(bindings::retry::GuestIndices),
    Notify(bindings::notify::GuestIndices),
    Condition(bindings::condition::GuestIndices),
    Condition02(bindings::condition_0_2::GuestIndices),
    Execute(bindings::execute::GuestIndices),
}

/// A plugin as listings show it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub kind: PluginKind,
    pub wit_version: &'static str,
    pub path: PathBuf,
    pub digest: String,
    pub size_bytes: u64,
    pub loaded_at: DateTime<Utc>,
    pub from_cache: bool,
    pub load_ms: f64,
    pub allowed_hosts: Vec<String>,
    pub timeout_ms: u64,
    pub memory_limit_mb: u64,
    pub calls: CallCounts,
}

/// A file in the plugins folder that could not be loaded.
#[derive(Debug, Clone, Serialize)]
pub struct PluginLoadError {
    pub path: PathBuf,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// Per-plugin call counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallCounts {
    pub ok: u64,
    pub failed: u64,
    pub timeouts: u64,
    pub total_micros: u64,
}

/// The plugin runtime; cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    linker: Linker<PluginState>,
    clock: Clock,
    settings: PluginsConfig,
    dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    plugins: RwLock<HashMap<String, Arc<Plugin>>>,
    errors: RwLock<BTreeMap<PathBuf, PluginLoadError>>,
    counts: Mutex<HashMap<String, CallCounts>>,
    calls: Arc<Semaphore>,
    ticker: Arc<EpochTicker>,
    compiles: AtomicU64,
    /// Told of every failed call (the notification service reports plugin failures).
    failure_listener: RwLock<Option<FailureListener>>,
}

/// Called with the plugin's name and kind when a call fails.
pub type FailureListener = Arc<dyn Fn(&str, PluginKind, &PluginFailure) + Send + Sync>;

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.thread.lock().unwrap().as_ref() {
            t.unpark();
        }
    }
}

/// Advances the engine's epoch while calls are in flight; parked otherwise (idle costs
/// nothing).
struct EpochTicker {
    in_flight: AtomicUsize,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::Thread>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine) -> Arc<EpochTicker> {
        let t = Arc::new(EpochTicker {
            in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let weak = Arc::downgrade(&t);
        let handle = std::thread::Builder::new()
            .name("cnp-plugin-epoch".into())
            .spawn(move || loop {
                let Some(t) = weak.upgrade() else { return };
                if t.stop.load(Ordering::Relaxed) {
                    return;
                }
                if t.in_flight.load(Ordering::Acquire) == 0 {
                    drop(t);
                    std::thread::park_timeout(Duration::from_secs(5));
                } else {
                    drop(t);
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the plugin epoch thread");
        *t.thread.lock().unwrap() = Some(handle.thread().clone());
        t
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(t) = self.thread.lock().unwrap().as_ref() {
                t.unpark();
            }
        }
        InFlight(self.clone())
    }
}

struct InFlight(Arc<EpochTicker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One call's store and instance, ready for the kind-specific export.
struct Call {
    plugin: Arc<Plugin>,
    store: Store<PluginState>,
    instance: Instance,
    output: CapturedOutput,
    started: Instant,
    /// The call's time limit when not the sidecar's.
    timeout: Option<Duration>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _in_flight: InFlight,
}

impl PluginHost {
    /// Builds the runtime (no plugins loaded yet: see [`PluginHost::load_all`]).
    pub fn new(
        settings: &PluginsConfig,
        dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
        clock: Clock,
    ) -> anyhow::Result<PluginHost> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let calls = settings.max_concurrent_calls;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(calls)
            .total_core_instances(calls * 16)
            .total_memories(calls * 4)
            .total_tables(calls * 16)
            .total_stacks(calls)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size((settings.memory_limit_mb as usize) << 20)
            // Reused slots keep their first pages resident instead of being decommitted and
            // faulted in again on every call (a fresh instance per call is the common case).
            .linear_memory_keep_resident(128 << 10)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}"))?;
        let mut linker: Linker<PluginState> = Linker::new(&engine);
        // WASI itself (which any Rust component imports for its std) with nothing granted, and
        // wasi:http behind the host gate.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm_err)?;
        type Data = wasmtime::component::HasSelf<PluginState>;
        bindings::log::add_to_linker::<_, Data>(&mut linker, |s| s).map_err(wasm_err)?;
        bindings::clock::add_to_linker::<_, Data>(&mut linker, |s| s).map_err(wasm_err)?;
        bindings::types::add_to_linker::<_, Data>(&mut linker, |s| s).map_err(wasm_err)?;
        bindings::output::add_to_linker::<_, Data>(&mut linker, |s| s).map_err(wasm_err)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginHost {
            inner: Arc::new(Inner {
                engine,
                linker,
                clock,
                settings: settings.clone(),
                dir,
                cache_dir,
                plugins: RwLock::default(),
                errors: RwLock::default(),
                counts: Mutex::default(),
                calls: Arc::new(Semaphore::new(calls as usize)),
                ticker,
                compiles: AtomicU64::new(0),
                failure_listener: RwLock::new(None),
            }),
        })
    }

    /// The plugins folder, if any.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.inner.dir.as_deref()
    }

    /// Loaded plugins, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let counts = self.inner.counts.lock().unwrap().clone();
        let mut out: Vec<PluginInfo> = self
            .inner
            .plugins
            .read()
            .unwrap()
            .values()
            .map(|p| PluginInfo {
                name: p.name.clone(),
                kind: p.kind,
                wit_version: p.wit_version,
                path: p.path.clone(),
                digest: p.digest.clone(),
                size_bytes: p.size_bytes,
                loaded_at: p.loaded_at,
                from_cache: p.from_cache,
                load_ms: p.load_time.as_secs_f64() * 1e3,
                allowed_hosts: p.sidecar.allowed_hosts_text.clone(),
                timeout_ms: p.sidecar.timeout.as_millis() as u64,
                memory_limit_mb: (p.sidecar.memory_bytes >> 20) as u64,
                calls: counts.get(&p.name).cloned().unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Files that failed to load (the last error of each).
    pub fn load_errors(&self) -> Vec<PluginLoadError> {
        self.inner
            .errors
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// The loaded plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.inner.plugins.read().unwrap().get(name).cloned()
    }

    /// How many components were compiled (not loaded from cache) since start.
    pub fn compile_count(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    /// Checks a job's use of plugin `name` of `kind`: loaded, of that kind, and accepting the
    /// merged configuration.
    pub async fn validate_use(
        &self,
        name: &str,
        kind: PluginKind,
        job_config: Option<&serde_json::Value>,
    ) -> Result<(), PluginFailure> {
        let mut call = self.begin(name, kind).await?;
        let config = call.plugin.sidecar.merged_config(job_config);
        let plugin = call.plugin.clone();
        let fut = async {
            match &plugin.exports {
                Exports::Retry(ix) => {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_validate_config(&mut call.store, &config).await
                }
                Exports::Notify(ix) => {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_validate_config(&mut call.store, &config).await
                }
                Exports::Condition(ix) => {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_validate_config(&mut call.store, &config).await
                }
                Exports::Condition02(ix) => {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_validate_config(&mut call.store, &config).await
                }
                Exports::Execute(ix) => {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_validate_config(&mut call.store, &config).await
                }
            }
        };
        let r = run_with_timeout(&plugin, fut).await;
        self.finish(call, r)
    }

    /// Asks retry-strategy plugin `name` what to do after a failed attempt.
    pub async fn next_retry(
        &self,
        name: &str,
        job_config: Option<&serde_json::Value>,
        job: &JobInfo,
        failed: &ExecutionInfo,
    ) -> Result<RetryDecision, PluginFailure> {
        let mut call = self.begin(name, PluginKind::RetryStrategy).await?;
        let config = call.plugin.sidecar.merged_config(job_config);
        let plugin = call.plugin.clone();
        let Exports::Retry(ix) = &plugin.exports else {
            unreachable!("kind checked by begin")
        };
        let fut = async {
            let g = ix.load(&mut call.store, &call.instance)?;
            g.call_next_retry(&mut call.store, &config, job, failed)
                .await
        };
        let r = run_with_timeout(&plugin, fut).await;
        self.finish(call, r)
    }

    /// Has notifier plugin `name` deliver `event`; returns its receipt.
    pub async fn deliver(
        &self,
        name: &str,
        job_config: Option<&serde_json::Value>,
        event: &NotifyEvent,
    ) -> Result<String, PluginFailure> {
        let mut call = self.begin(name, PluginKind::Notifier).await?;
        let config = call.plugin.sidecar.merged_config(job_config);
        let plugin = call.plugin.clone();
        let Exports::Notify(ix) = &plugin.exports else {
            unreachable!("kind checked by begin")
        };
        let fut = async {
            let g = ix.load(&mut call.store, &call.instance)?;
            g.call_deliver(&mut call.store, &config, event).await
        };
        let r = run_with_timeout(&plugin, fut).await;
        self.finish(call, r)
    }

    /// Asks condition-hook plugin `name` whether a run starts now, with 0.1's context (a 0.2
    /// hook gets it with no workflow upstreams).
    pub async fn evaluate(
        &self,
        name: &str,
        job_config: Option<&serde_json::Value>,
        context: &RunContext,
    ) -> Result<Verdict, PluginFailure> {
        self.evaluate_any(name, job_config, AnyContext::V0_1(context))
            .await
    }

    /// Asks condition-hook plugin `name` whether a run starts now. A 0.2 hook gets `context`
    /// as it is; a 0.1 hook gets 0.1's shape of it: no workflow pass or upstreams, and the
    /// `dependency` trigger as `manual` (0.1 has no such trigger).
    pub async fn evaluate_condition(
        &self,
        name: &str,
        job_config: Option<&serde_json::Value>,
        context: &ConditionContext,
    ) -> Result<Verdict, PluginFailure> {
        self.evaluate_any(name, job_config, AnyContext::V0_2(context))
            .await
    }

    /// Calls the hook with `context` in the shape of the version it was built against
    /// (converted only when they differ).
    async fn evaluate_any(
        &self,
        name: &str,
        job_config: Option<&serde_json::Value>,
        context: AnyContext<'_>,
    ) -> Result<Verdict, PluginFailure> {
        let mut call = self.begin(name, PluginKind::ConditionHook).await?;
        let config = call.plugin.sidecar.merged_config(job_config);
        let plugin = call.plugin.clone();
        let r = match &plugin.exports {
            Exports::Condition(ix) => {
                let converted;
                let context = match context {
                    AnyContext::V0_1(c) => c,
                    AnyContext::V0_2(c) => {
                        converted = context_0_1(c);
                        &converted
                    }
                };
                let fut = async {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_evaluate(&mut call.store, &config, context).await
                };
                run_with_timeout(&plugin, fut).await
            }
            Exports::Condition02(ix) => {
                let converted;
                let context = match context {
                    AnyContext::V0_2(c) => c,
                    AnyContext::V0_1(c) => {
                        converted = context_0_2(c);
                        &converted
                    }
                };
                let fut = async {
                    let g = ix.load(&mut call.store, &call.instance)?;
                    g.call_evaluate(&mut call.store, &config, context)
                        .await
                        .map(|r| r.map(verdict_0_1))
                };
                run_with_timeout(&plugin, fut).await
            }
            _ => unreachable!("kind checked by begin"),
        };
        self.finish(call, r)
    }

    /// Runs executor plugin `name` for one run, within `timeout` (the job's). Its configuration
    /// is the sidecar's merged with the job's, `${VAR}` references filled in from cnp's
    /// environment now (the plugin sees the values; nothing else does: they are never stored,
    /// and every value filled in is replaced by `<redacted>` in the lines, the result text and
    /// the outcome's message it gives back). Lines it emits go to `lines`. The caller stops the
    /// run (cancel) by dropping the future: the instance goes with it.
    pub async fn execute(
        &self,
        name: &str,
        job_config: Option<&serde_json::Value>,
        request: &ExecutorRequest,
        timeout: Duration,
        lines: LineSink,
    ) -> Result<ExecutorResult, PluginFailure> {
        let plugin = self.get(name).ok_or_else(|| PluginFailure::NotLoaded {
            name: name.to_owned(),
            reason: self.load_error_of(name),
        })?;
        let mut config: serde_json::Value =
            serde_json::from_str(&plugin.sidecar.merged_config(job_config))
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
        let mut secrets = Vec::new();
        fill_in_env(&mut config, "config", &mut secrets).map_err(|message| {
            PluginFailure::Error {
                name: name.to_owned(),
                message,
            }
        })?;
        let scrub = Arc::new(crate::redact::Scrub::of_values(secrets));
        let sink: LineSink = if scrub.is_empty() {
            lines
        } else {
            let scrub = scrub.clone();
            Arc::new(move |stderr, line| lines(stderr, &scrub.text(line)))
        };
        let mut call = self
            .begin_with(name, PluginKind::Executor, Some(timeout), Some(sink))
            .await?;
        let plugin = call.plugin.clone();
        let Exports::Execute(ix) = &plugin.exports else {
            unreachable!("kind checked by begin")
        };
        let config = config.to_string();
        let fut = async {
            let g = ix.load(&mut call.store, &call.instance)?;
            g.call_run(&mut call.store, &config, request).await
        };
        let r = run_within(timeout, fut).await;
        let mut result = self.finish(call, r)?;
        let clean = |t: &mut String| {
            if let std::borrow::Cow::Owned(c) = scrub.text(t) {
                *t = c;
            }
        };
        if let Some(t) = &mut result.result_text {
            clean(t);
        }
        match &mut result.outcome {
            ExecutorOutcome::Failure(m)
            | ExecutorOutcome::Fatal(m)
            | ExecutorOutcome::AuthError(m) => clean(m),
            ExecutorOutcome::UsageLimit(l) => clean(&mut l.message),
            ExecutorOutcome::Success | ExecutorOutcome::Timeout => {}
        }
        Ok(result)
    }

    /// A fresh store and instance of plugin `name` (which must be of `kind`), under its
    /// sidecar's time limit.
    async fn begin(&self, name: &str, kind: PluginKind) -> Result<Call, PluginFailure> {
        self.begin_with(name, kind, None, None).await
    }

    /// [`begin`](Self::begin) with a time limit of the caller's (an executor's: the job's
    /// timeout) and a sink for `emit-line`.
    async fn begin_with(
        &self,
        name: &str,
        kind: PluginKind,
        timeout: Option<Duration>,
        lines: Option<LineSink>,
    ) -> Result<Call, PluginFailure> {
        let plugin = self.get(name).ok_or_else(|| PluginFailure::NotLoaded {
            name: name.to_owned(),
            reason: self.load_error_of(name),
        })?;
        if plugin.kind != kind {
            return Err(PluginFailure::WrongKind {
                name: name.to_owned(),
                expected: kind,
                actual: plugin.kind,
            });
        }
        let permit = self
            .inner
            .calls
            .clone()
            .acquire_owned()
            .await
            .expect("the call semaphore is never closed");
        let in_flight = self.inner.ticker.enter();
        let started = Instant::now();
        let output = CapturedOutput::new(self.inner.settings.max_output_bytes);
        let state = PluginState::new(SandboxSpec {
            plugin: plugin.label.clone(),
            clock: self.inner.clock.clone(),
            memory_bytes: plugin.sidecar.memory_bytes,
            allowed_hosts: plugin.sidecar.allowed_hosts.clone(),
            max_response_bytes: plugin.sidecar.max_response_bytes,
            output: output.clone(),
            lines,
        });
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline = started + timeout.unwrap_or(plugin.sidecar.timeout);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::msg(TIMEOUT_MARK))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let instance = match plugin.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => {
                let failure = classify(&plugin, e, &store, &output, timeout);
                self.count(&plugin.name, started, Some(&failure));
                return Err(failure);
            }
        };
        Ok(Call {
            plugin,
            store,
            instance,
            output,
            started,
            timeout,
            _permit: permit,
            _in_flight: in_flight,
        })
    }

    /// Turns a call's result into the answer or a failure; logs the guest's output.
    fn finish<T>(
        &self,
        call: Call,
        result: wasmtime::Result<Result<T, PluginError>>,
    ) -> Result<T, PluginFailure> {
        let plugin = &call.plugin;
        let r = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(PluginFailure::Error {
                name: plugin.name.clone(),
                message: describe_plugin_error(&e),
            }),
            Err(e) => Err(classify(plugin, e, &call.store, &call.output, call.timeout)),
        };
        log_output(plugin, &call.output, &call.store);
        self.count(&plugin.name, call.started, r.as_ref().err());
        if let Err(f) = &r {
            tracing::warn!(plugin = %plugin.name, kind = %plugin.kind, failure = f.kind(), "{f}");
            let listener = self.inner.failure_listener.read().unwrap().clone();
            if let Some(l) = listener {
                l(&plugin.name, plugin.kind, f);
            }
        }
        r
    }

    /// Sets who is told of failed calls (trap, timeout, memory limit, error).
    pub fn set_failure_listener(&self, listener: FailureListener) {
        *self.inner.failure_listener.write().unwrap() = Some(listener);
    }

    fn count(&self, name: &str, started: Instant, failure: Option<&PluginFailure>) {
        let mut counts = self.inner.counts.lock().unwrap();
        if !counts.contains_key(name) {
            counts.insert(name.to_owned(), CallCounts::default());
        }
        let c = counts.get_mut(name).expect("inserted above");
        c.total_micros += started.elapsed().as_micros() as u64;
        match failure {
            None => c.ok += 1,
            Some(PluginFailure::Timeout { .. }) => {
                c.failed += 1;
                c.timeouts += 1
            }
            Some(_) => c.failed += 1,
        }
    }

    fn load_error_of(&self, name: &str) -> Option<String> {
        self.inner
            .errors
            .read()
            .unwrap()
            .values()
            .find(|e| e.path.file_stem().and_then(|s| s.to_str()) == Some(name))
            .map(|e| e.message.clone())
    }
}

/// Fills in `${VAR}` references in every string of an executor's configuration from cnp's
/// environment, collecting the values filled in (`secrets`). An unset variable is an error
/// naming the key.
fn fill_in_env(
    v: &mut serde_json::Value,
    key: &str,
    secrets: &mut Vec<String>,
) -> Result<(), String> {
    let filled = std::cell::RefCell::new(Vec::new());
    let lookup = |name: &str| {
        let value = std::env::var(name).ok();
        filled.borrow_mut().extend(value.clone());
        value
    };
    let r = crate::text::expand_env_in(v, key, &lookup)
        .map_err(|(key, message)| format!("{key}: {message}"));
    secrets.extend(filled.into_inner());
    r
}

/// A condition hook's context in either version's shape.
#[derive(Clone, Copy)]
enum AnyContext<'a> {
    V0_1(&'a RunContext),
    V0_2(&'a ConditionContext),
}

/// 0.1's run context as 0.2's (no workflow pass, no upstreams).
fn context_0_2(c: &RunContext) -> ConditionContext {
    ConditionContext {
        job: c.job.clone(),
        trigger: match c.trigger {
            ConditionTrigger::Schedule => ConditionTrigger02::Schedule,
            ConditionTrigger::Manual => ConditionTrigger02::Manual,
            ConditionTrigger::Delayed => ConditionTrigger02::Delayed,
            ConditionTrigger::Retry => ConditionTrigger02::Retry,
        },
        scheduled_at: c.scheduled_at,
        previous: c.previous.clone(),
        workflow_pass: None,
        upstreams: Vec::new(),
    }
}

/// 0.2's run context as a 0.1 hook sees it: WIT 0.1 has no `dependency` trigger, so a run its
/// upstreams started is, to a 0.1 hook, one that was asked for; the upstreams are left out.
fn context_0_1(c: &ConditionContext) -> RunContext {
    RunContext {
        job: c.job.clone(),
        trigger: match c.trigger {
            ConditionTrigger02::Schedule => ConditionTrigger::Schedule,
            ConditionTrigger02::Manual | ConditionTrigger02::Dependency => ConditionTrigger::Manual,
            ConditionTrigger02::Delayed => ConditionTrigger::Delayed,
            ConditionTrigger02::Retry => ConditionTrigger::Retry,
        },
        scheduled_at: c.scheduled_at,
        previous: c.previous.clone(),
    }
}

fn verdict_0_1(v: bindings::condition_0_2::Verdict) -> Verdict {
    use bindings::condition_0_2::Verdict as V;
    match v {
        V::Run => Verdict::Run,
        V::Skip(reason) => Verdict::Skip(reason),
        V::DeferUntil(d) => Verdict::DeferUntil(Deferral {
            until: d.until,
            reason: d.reason,
        }),
    }
}

/// wasmtime's error as an `anyhow` error (with its whole chain).
fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

const TIMEOUT_MARK: &str = "cnp: plugin call time limit reached";

/// Runs an export call under the plugin's time limit. CPU-bound guests are stopped by the epoch
/// deadline; a guest blocked in host I/O (HTTP) by this timeout.
async fn run_with_timeout<T>(
    plugin: &Plugin,
    fut: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    run_within(plugin.sidecar.timeout, fut).await
}

/// [`run_with_timeout`] with the call's own limit.
async fn run_within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let limit = limit + Duration::from_millis(50);
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(wasmtime::Error::msg(TIMEOUT_MARK)),
    }
}

fn classify(
    plugin: &Plugin,
    e: wasmtime::Error,
    store: &Store<PluginState>,
    output: &CapturedOutput,
    timeout: Option<Duration>,
) -> PluginFailure {
    let name = plugin.name.clone();
    let text = format!("{e:#}");
    if text.contains(TIMEOUT_MARK)
        || matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        )
    {
        return PluginFailure::Timeout {
            name,
            after: timeout.unwrap_or(plugin.sidecar.timeout),
        };
    }
    if text.contains("forcing trap when growing memory")
        || text.contains("memory minimum size")
        || matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::AllocationTooLarge)
        )
    {
        return PluginFailure::MemoryLimit {
            name,
            limit_mb: (plugin.sidecar.memory_bytes >> 20) as u64,
        };
    }
    let denied = store.data().denied_requests();
    let mut message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => text.lines().next().unwrap_or_default().to_owned(),
    };
    // A Rust guest's panic message is on its stderr: the last line says why it trapped.
    let stderr = output.stderr.peek_reason();
    if let Some(line) = stderr {
        message = format!("{message} ({line})");
    }
    if !denied.is_empty() {
        message = format!("{message}; refused HTTP: {}", denied.join(", "));
    }
    PluginFailure::Trap { name, message }
}

fn log_output(plugin: &Plugin, output: &CapturedOutput, store: &Store<PluginState>) {
    for (stream, pipe) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let (text, dropped) = pipe.take();
        let text = text.trim_end();
        if !text.is_empty() || dropped > 0 {
            tracing::info!(target: "cnp::plugin", plugin = %plugin.name, stream, dropped_bytes = dropped, "{text}");
        }
    }
    let dropped = store.data().logs_dropped;
    if dropped > 0 {
        tracing::warn!(target: "cnp::plugin", plugin = %plugin.name, dropped, "plugin log records over the per-call limit were dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executors_config_gets_its_variables_and_names_a_missing_one() {
        std::env::set_var("CNP_TEST_FILL_KEY", "sk-fill-0123");
        let mut v = serde_json::json!({"api_key": "${CNP_TEST_FILL_KEY}", "n": 3,
            "list": ["a-${CNP_TEST_FILL_KEY}", "$$literal"]});
        let mut secrets = Vec::new();
        fill_in_env(&mut v, "config", &mut secrets).unwrap();
        assert_eq!(v["api_key"], "sk-fill-0123");
        assert_eq!(v["list"][0], "a-sk-fill-0123");
        assert_eq!(v["list"][1], "$literal");
        assert_eq!(secrets, ["sk-fill-0123", "sk-fill-0123"]);
        let mut missing = serde_json::json!({"deep": {"token": "${CNP_TEST_NOT_SET_EVER}"}});
        let e = fill_in_env(&mut missing, "config", &mut Vec::new()).unwrap_err();
        assert!(e.starts_with("config.deep.token: "), "{e}");
        assert!(e.contains("CNP_TEST_NOT_SET_EVER"), "{e}");
    }
}
