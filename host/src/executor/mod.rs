//! Runs the Claude Code CLI for one execution and reports what happened.
//!
//! - [`process`]: the child process itself — process group, streamed lines, timeout and cancel
//!   (TERM, grace, KILL to the whole group), resource usage from `wait4`, resource limits.
//! - [`output`]: understands the CLI's `stream-json` output and classifies the run's [`Outcome`].
//! - [`ClaudeRunner`]: builds the command line from the config and the job's options and ties the two
//!   together. The engine only sees the [`Runner`] trait, so tests and benchmarks can swap runners.
//! - [`Dispatch`]: the runner the service uses — a job with an `executor:` plugin is run by that
//!   WebAssembly plugin ([`plugin`]), every other job by the CLI runner.

pub mod output;
mod plugin;
pub mod process;
pub mod worktree;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::model::{ExecutionOptions, LogStream, Outcome, ResourceLimits, ResourceUsage};

/// Everything needed to run the CLI once.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub execution_id: String,
    /// The prompt text, written to the CLI's stdin.
    pub prompt: String,
    pub options: ExecutionOptions,
    pub limits: Option<ResourceLimits>,
    /// Kill the run after this long.
    pub timeout: Duration,
    /// Stops the run (TERM, grace, KILL) when cancelled: user cancel or shutdown.
    pub cancel: CancellationToken,
    /// For a job with an executor plugin: the plugin does the run (see [`Dispatch`]), not the
    /// CLI.
    pub plugin: Option<PluginCall>,
}

/// What the engine learns while a run goes on. Implementations must be cheap and must not block:
/// they are called from the task that reads the child's pipes.
pub trait RunObserver: Send + Sync {
    /// The child process exists (called once, right after a successful spawn).
    fn spawned(&self, pid: u32, at: DateTime<Utc>);
    /// One line of the child's output (already bounded in length).
    fn line(&self, stream: LogStream, line: &str);
}

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    /// When the child was spawned (`None` if it never was).
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub pid: Option<u32>,
    /// The CLI's final result text (or its error text), bounded.
    pub result_text: Option<String>,
    pub session_id: Option<String>,
    pub cost_usd: Option<f64>,
    pub usage: Option<serde_json::Value>,
    pub resource_usage: Option<ResourceUsage>,
}

impl RunReport {
    /// A run that never started (no process, or no plugin call): its outcome and when it ended.
    pub fn unstarted(outcome: Outcome, finished_at: DateTime<Utc>) -> RunReport {
        RunReport {
            outcome,
            exit_code: None,
            started_at: None,
            finished_at,
            pid: None,
            result_text: None,
            session_id: None,
            cost_usd: None,
            usage: None,
            resource_usage: None,
        }
    }
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs one execution to its end. The real implementation is [`ClaudeRunner`].
pub trait Runner: Send + Sync + 'static {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport>;
}

/// Settings the executor takes from `[executor]` in the config.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// Program and leading arguments (`claude_cli_path` split like a shell would:
    /// `npx @anthropic-ai/claude-code@latest` → `["npx", "@anthropic-ai/claude-code@latest"]`).
    pub command: Vec<String>,
    /// Between SIGTERM and SIGKILL when a run is stopped.
    pub kill_grace: Duration,
    /// At most this many bytes of a run's output are kept (log lines and result text).
    pub max_output_bytes: usize,
    /// Longer lines are cut to this many bytes (with a marker).
    pub max_line_bytes: usize,
    /// Environment given to every run before the job's own (`TZ=UTC` by default, so limit-reset
    /// texts name a known zone).
    pub base_env: Vec<(String, String)>,
    /// Working directory for jobs that do not name one.
    pub default_working_directory: Option<PathBuf>,
}

pub use plugin::{Dispatch, PluginCall};
pub use runner::ClaudeRunner;

mod runner;
