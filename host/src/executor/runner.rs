//! [`ClaudeRunner`]: the [`Runner`] that runs the real Claude Code CLI.
//!
//! The command line is `settings.command` (program and leading arguments), then
//! `-p --output-format stream-json --verbose`, then the job's options ([`build_args`]). The prompt
//! goes to stdin: no length limit, and not visible in `ps`.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tracing::Instrument;

use super::output::classify;
use super::process::{self, LimitsMechanism, ProcessSpec};
use super::{BoxFuture, ExecutorSettings, RunObserver, RunReport, RunRequest, Runner};
use crate::model::{ExecutionOptions, LogStream, Outcome};

/// Environment variables not passed on from the service's own environment: Claude Code sets
/// `CLAUDECODE=1` for the commands it runs and refuses to start inside another session, so a
/// cnp started from a Claude Code shell would fail every run. (`base_env` or a job's
/// `environment` can still set it.)
pub const ENV_NOT_INHERITED: &[&str] = &["CLAUDECODE"];

/// The real Claude CLI runner.
#[derive(Debug, Clone)]
pub struct ClaudeRunner {
    settings: ExecutorSettings,
    limits_mechanism: LimitsMechanism,
}

impl ClaudeRunner {
    /// A runner with `settings`; resource limits use the mechanism named by
    /// [`LimitsMechanism::ENV`] (`CNP_RESOURCE_LIMITS`), by default the best available.
    pub fn new(settings: ExecutorSettings) -> Self {
        ClaudeRunner {
            settings,
            limits_mechanism: LimitsMechanism::from_env(),
        }
    }

    /// Forces a mechanism for resource limits (tests use [`LimitsMechanism::Watchdog`]).
    pub fn with_limits_mechanism(mut self, mechanism: LimitsMechanism) -> Self {
        self.limits_mechanism = mechanism;
        self
    }

    pub fn settings(&self) -> &ExecutorSettings {
        &self.settings
    }

    pub fn limits_mechanism(&self) -> LimitsMechanism {
        self.limits_mechanism
    }

    /// The process this runner would start for `request` (program, arguments, environment,
    /// working directory, stdin, limits).
    pub fn process_spec(&self, request: &RunRequest) -> ProcessSpec {
        let settings = &self.settings;
        let (program, args) = command_line(&settings.command, &request.options);
        let mut env = settings.base_env.clone();
        env.extend(
            request
                .options
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let cwd = request
            .options
            .working_directory
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| settings.default_working_directory.clone());
        ProcessSpec {
            program,
            args,
            env_remove: ENV_NOT_INHERITED.iter().map(|s| s.to_string()).collect(),
            env,
            cwd,
            stdin: request.prompt.clone().into_bytes(),
            timeout: request.timeout,
            kill_grace: settings.kill_grace,
            max_output_bytes: settings.max_output_bytes,
            max_line_bytes: settings.max_line_bytes,
            limits: request.limits.clone(),
            limits_mechanism: self.limits_mechanism,
            cancel: request.cancel.clone(),
        }
    }
}

impl Runner for ClaudeRunner {
    fn run(&self, request: RunRequest, observer: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
        let spec = self.process_spec(&request);
        let max_output = self.settings.max_output_bytes;
        let span = tracing::debug_span!("run", execution_id = %request.execution_id);
        Box::pin(
            async move {
                match process::run(spec, observer.clone()).await {
                    Err(e) => {
                        observer.line(
                            LogStream::System,
                            &format!("could not start the claude CLI: {e}"),
                        );
                        RunReport::unstarted(
                            Outcome::SpawnFailed { message: e.message },
                            Utc::now(),
                        )
                    }
                    Ok(done) => {
                        let finished_at = Utc::now();
                        let outcome =
                            classify(&done.exit, &done.parser, &done.stderr_tail, finished_at);
                        let result = done.parser.result();
                        RunReport {
                            outcome,
                            exit_code: done.exit.code,
                            started_at: Some(done.started_at),
                            finished_at,
                            pid: Some(done.pid),
                            result_text: done.parser.result_text().map(|t| bounded(t, max_output)),
                            session_id: done
                                .parser
                                .session_id()
                                .or_else(|| result.and_then(|r| r.session_id.as_deref()))
                                .map(str::to_string),
                            cost_usd: result.and_then(|r| r.cost_usd),
                            usage: result.and_then(|r| r.usage.clone()),
                            resource_usage: Some(done.resource_usage),
                        }
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// `text` cut to at most `max` bytes on a character boundary, saying how much was cut (a run's
/// result text, the CLI's or an executor plugin's).
pub(super) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let kept = crate::text::clip(text, max);
    format!("{kept}… [truncated {} bytes]", text.len() - kept.len())
}

/// The program and all its arguments: `command[0]`, then `command[1..]`, then [`build_args`].
/// An empty `command` gives an empty program (which the process layer reports).
pub fn command_line(command: &[String], options: &ExecutionOptions) -> (String, Vec<String>) {
    let program = command.first().cloned().unwrap_or_default();
    let mut args: Vec<String> = command.iter().skip(1).cloned().collect();
    args.extend(build_args(options));
    (program, args)
}

/// The CLI arguments for a job: `-p --output-format stream-json --verbose`, the job's options,
/// its `extra_args`, and last the options that take several values (`--add-dir`,
/// `--mcp-config`, `--allowedTools`, `--disallowedTools`: they consume every following argument
/// that does not start with `-`, so nothing positional may follow them). Empty strings count as
/// unset. `--resume` wins over `--continue`.
pub fn build_args(options: &ExecutionOptions) -> Vec<String> {
    fn set(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let mut args: Vec<String> = ["-p", "--output-format", "stream-json", "--verbose"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut pair = |flag: &str, value: &str| {
        args.push(flag.to_string());
        args.push(value.to_string());
    };
    if let Some(model) = set(&options.model) {
        pair("--model", model);
    }
    if let Some(model) = set(&options.fallback_model) {
        pair("--fallback-model", model);
    }
    if let Some(turns) = options.max_turns {
        pair("--max-turns", &turns.to_string());
    }
    if let Some(budget) = options.max_budget_usd {
        pair("--max-budget-usd", &budget.to_string());
    }
    if let Some(mode) = set(&options.permission_mode) {
        pair("--permission-mode", mode);
    }
    if let Some(resume) = set(&options.resume_session) {
        pair("--resume", resume);
    } else if options.continue_session {
        args.push("--continue".into());
    }
    if let Some(prompt) = options
        .append_system_prompt
        .as_deref()
        .filter(|p| !p.trim().is_empty())
    {
        // `=` so that a prompt starting with `-` is not taken for an option.
        args.push(format!("--append-system-prompt={prompt}"));
    }
    args.extend(options.extra_args.iter().cloned());
    let mut variadic = |flag: &str, values: &mut dyn Iterator<Item = &String>| {
        let values: Vec<&String> = values.filter(|v| !v.trim().is_empty()).collect();
        if !values.is_empty() {
            args.push(flag.to_string());
            args.extend(values.into_iter().cloned());
        }
    };
    variadic("--add-dir", &mut options.add_dirs.iter());
    variadic("--mcp-config", &mut options.mcp_config.iter());
    variadic("--allowedTools", &mut options.allowed_tools.iter());
    variadic("--disallowedTools", &mut options.disallowed_tools.iter());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_options_give_the_headless_stream_json_flags() {
        assert_eq!(
            build_args(&ExecutionOptions::default()),
            strings(&["-p", "--output-format", "stream-json", "--verbose"])
        );
    }

    #[test]
    fn every_option_maps_to_its_flag_with_variadics_last() {
        let options = ExecutionOptions {
            model: Some("opus".into()),
            fallback_model: Some("sonnet".into()),
            max_turns: Some(3),
            max_budget_usd: Some(0.5),
            allowed_tools: strings(&["Read", "Bash(git log:*)"]),
            disallowed_tools: strings(&["WebFetch"]),
            permission_mode: Some("acceptEdits".into()),
            append_system_prompt: Some("- be brief".into()),
            add_dirs: strings(&["/a", "/b"]),
            mcp_config: Some("/etc/mcp.json".into()),
            resume_session: Some("abc".into()),
            continue_session: true,
            extra_args: strings(&["--strict-mcp-config"]),
            ..ExecutionOptions::default()
        };
        assert_eq!(
            build_args(&options),
            strings(&[
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--model",
                "opus",
                "--fallback-model",
                "sonnet",
                "--max-turns",
                "3",
                "--max-budget-usd",
                "0.5",
                "--permission-mode",
                "acceptEdits",
                "--resume",
                "abc",
                "--append-system-prompt=- be brief",
                "--strict-mcp-config",
                "--add-dir",
                "/a",
                "/b",
                "--mcp-config",
                "/etc/mcp.json",
                "--allowedTools",
                "Read",
                "Bash(git log:*)",
                "--disallowedTools",
                "WebFetch",
            ])
        );
    }

    #[test]
    fn continue_without_resume_and_empty_values_are_skipped() {
        let options = ExecutionOptions {
            model: Some("  ".into()),
            continue_session: true,
            allowed_tools: strings(&[""]),
            max_budget_usd: Some(2.0),
            ..ExecutionOptions::default()
        };
        assert_eq!(
            build_args(&options),
            strings(&[
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--max-budget-usd",
                "2",
                "--continue"
            ])
        );
    }

    #[test]
    fn the_configured_command_comes_first() {
        let command = strings(&["npx", "@anthropic-ai/claude-code@latest"]);
        let (program, args) = command_line(&command, &ExecutionOptions::default());
        assert_eq!(program, "npx");
        assert_eq!(
            &args[..2],
            &strings(&["@anthropic-ai/claude-code@latest", "-p"])[..]
        );
        assert_eq!(command_line(&[], &ExecutionOptions::default()).0, "");
    }

    #[test]
    fn result_text_is_bounded_on_a_char_boundary() {
        assert_eq!(bounded("hello", 10), "hello");
        assert_eq!(bounded("héllo", 2), "h… [truncated 5 bytes]");
    }

    #[test]
    fn spec_layers_environment_and_working_directory() {
        let settings = ExecutorSettings {
            command: strings(&["claude"]),
            kill_grace: std::time::Duration::from_secs(1),
            max_output_bytes: 100,
            max_line_bytes: 10,
            base_env: vec![("TZ".into(), "UTC".into()), ("A".into(), "base".into())],
            default_working_directory: Some("/srv".into()),
        };
        let runner = ClaudeRunner::new(settings);
        let mut options = ExecutionOptions::default();
        options.environment.insert("A".into(), "job".into());
        let request = RunRequest {
            execution_id: "e".into(),
            prompt: "hi".into(),
            options,
            limits: None,
            timeout: std::time::Duration::from_secs(5),
            cancel: Default::default(),
            plugin: None,
        };
        let spec = runner.process_spec(&request);
        assert_eq!(
            spec.env.last().unwrap(),
            &("A".to_string(), "job".to_string())
        );
        assert_eq!(spec.cwd, Some(PathBuf::from("/srv")));
        assert_eq!(spec.stdin, b"hi");
        let mut request = request;
        request.options.working_directory = Some("/work".into());
        assert_eq!(
            runner.process_spec(&request).cwd,
            Some(PathBuf::from("/work"))
        );
    }
}
