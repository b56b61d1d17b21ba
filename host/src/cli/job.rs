//! `cnp job …`: create, list, show, update, delete, execute, pause, resume, history, monitor,
//! cancel, logs (the batch commands live in `batch.rs`, the live views in `watch.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{seg, Client};
use super::output::{self, Format};
use crate::manifest::{JobSpec, ScheduleSpec};
use crate::model::{
    ExecutionOptions, Job, JobExecution, OnInterrupt, RetryConfig, RetryStrategy, PRIORITY_DEFAULT,
};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job from flags, a YAML file (`--file`) or by answering questions
    /// (`--interactive`).
    Create {
        /// The job's name (unique).
        name: Option<String>,
        #[command(flatten)]
        flags: JobFlags,
        /// Read the job from a YAML file (the manifest format, one job); flags override it.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Ask for each field, validating as you go.
        #[arg(long, short = 'i', conflicts_with = "file")]
        interactive: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List jobs.
    #[command(alias = "ls")]
    List {
        /// Only jobs with this status (active, paused, disabled).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one job.
    Show {
        /// Job id or name.
        job: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a job: only the fields given change.
    Update {
        /// Job id or name.
        job: String,
        /// Rename the job.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        flags: JobFlags,
        /// Replace the definition with a YAML file's (one job); flags override it.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete a job and its history.
    #[command(alias = "rm")]
    Delete {
        /// Job id or name.
        job: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Run a job now (or after `--delay`).
    #[command(alias = "run")]
    Execute {
        /// Job id or name.
        job: String,
        /// Start after this long (e.g. `10m`).
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Wait for the run to finish, showing its progress and output; the exit code tells
        /// the outcome (0 completed, 1 failed/timed out/cancelled/interrupted, 4 skipped).
        #[arg(long, short = 'w')]
        wait: bool,
        /// With `--wait`: show the CLI's output lines as they are (raw stream-json).
        #[arg(long, requires = "wait")]
        raw: bool,
        /// With `--wait`: no log lines, only the progress and the result.
        #[arg(long, short = 'q', requires = "wait")]
        quiet: bool,
    },
    /// Pause a job (its slots pass without running until it is resumed).
    Pause {
        /// Job id or name.
        job: String,
    },
    /// Resume a paused job.
    Resume {
        /// Job id or name.
        job: String,
    },
    /// A job's runs, newest first.
    History {
        /// Job id or name.
        job: String,
        /// How many runs.
        #[arg(long, short = 'n', default_value_t = 20)]
        last: usize,
        /// Only runs with this status (completed, failed, running, …).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// A job's state and recent runs; `--follow` streams status changes and output live.
    Monitor {
        /// Job id or name.
        job: String,
        /// Keep watching (Ctrl-C to stop).
        #[arg(long, short = 'F')]
        follow: bool,
        /// With `--follow`: show output lines as they are (raw stream-json).
        #[arg(long)]
        raw: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Cancel a queued or running execution.
    Cancel {
        /// Execution id.
        execution: String,
    },
    /// An execution's output lines; `--follow` keeps streaming until it finishes.
    Logs {
        /// Execution id.
        execution: String,
        /// Keep streaming live lines until the run ends.
        #[arg(long, short = 'F')]
        follow: bool,
        /// Show lines as stored (raw stream-json), with their stream.
        #[arg(long)]
        raw: bool,
    },
    /// One execution's details (with its notification deliveries).
    Execution {
        /// Execution id.
        execution: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Notification deliveries: one execution's, or (without an id) the most recent ones.
    Notifications {
        /// Execution id.
        execution: Option<String>,
        /// Most recent deliveries shown (without an execution id).
        #[arg(long, default_value_t = 20)]
        last: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Create every job of a YAML file (the manifest format: one job or a list).
    BatchCreate {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Run every selected job now.
    BatchExecute {
        #[command(flatten)]
        select: super::batch::Selector,
    },
    /// Pause every selected job (`--status running`: jobs with a run in progress).
    BatchPause {
        #[command(flatten)]
        select: super::batch::Selector,
    },
    /// Resume every selected job.
    BatchResume {
        #[command(flatten)]
        select: super::batch::Selector,
    },
}

/// The fields of a job that flags can set (create and update).
#[derive(Debug, Clone, Default, Args)]
pub struct JobFlags {
    /// A stored prompt's id.
    #[arg(long, group = "prompt_src")]
    pub prompt_id: Option<String>,
    /// The prompt text itself.
    #[arg(long, group = "prompt_src")]
    pub prompt: Option<String>,
    /// Read the prompt text from a file.
    #[arg(long, group = "prompt_src")]
    pub prompt_file: Option<PathBuf>,
    /// Cron expression (5 fields, 6 with seconds, or `@daily`).
    #[arg(long, group = "when")]
    pub cron: Option<String>,
    /// Run every interval (e.g. `10m`, `1h 30m`).
    #[arg(long, group = "when", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Run once at this instant (RFC 3339, or `YYYY-MM-DD HH:MM` local time).
    #[arg(long, group = "when", value_parser = parse_instant)]
    pub at: Option<DateTime<Utc>>,
    /// Only run when asked (`cnp job execute`).
    #[arg(long, group = "when")]
    pub manual: bool,
    /// IANA time zone for the cron expression (default: the service's `scheduler.timezone`).
    #[arg(long)]
    pub timezone: Option<String>,
    /// 1 (least urgent) – 10 (most urgent).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub priority: Option<u8>,
    /// A tag (repeat for several); on update, replaces the job's tags.
    #[arg(long = "tag", short = 't')]
    pub tags: Vec<String>,
    /// Kill a run after this long (e.g. `30m`, or seconds).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Working directory of runs.
    #[arg(long)]
    pub working_dir: Option<String>,
    /// Claude model (`--model`).
    #[arg(long)]
    pub model: Option<String>,
    /// Claude permission mode (default, acceptEdits, auto, bypassPermissions, manual, dontAsk,
    /// plan).
    #[arg(long)]
    pub permission_mode: Option<String>,
    /// Claude `--max-turns`.
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Environment variable for runs, `KEY=VALUE` (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Create the job paused.
    #[arg(long)]
    pub paused: bool,
    /// Attempts in all for a failed run (1 = not retried). Gives the job its own retry policy
    /// (from the service's `[retry]` defaults' shape: exponential backoff from 60 s) if it has
    /// none.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// How retries are spaced: fixed, exponential_backoff, linear (custom needs a manifest).
    #[arg(long, value_parser = parse_snake::<RetryStrategy>)]
    pub retry_strategy: Option<RetryStrategy>,
    /// The delay before the first retry (e.g. `30s`, `5m`).
    #[arg(long, value_parser = parse_duration)]
    pub retry_delay: Option<Duration>,
    /// A run cut short by cnp's crash, kill or forced shutdown: `retry` (one linked attempt
    /// when cnp starts again, counted against the attempts) or `fail` (stays interrupted).
    #[arg(long, value_parser = parse_snake::<OnInterrupt>)]
    pub on_interrupt: Option<OnInterrupt>,
    /// Drop the job's own retry policy (the service's `[retry]` defaults apply again).
    #[arg(long, conflicts_with_all = ["max_attempts", "retry_strategy", "retry_delay", "on_interrupt"])]
    pub no_retry: bool,
    /// An upstream job whose run's end starts this one: `NAME` (on success) or
    /// `NAME:success|failure|completed|always` (repeatable; on update, replaces the list).
    #[arg(long = "depends-on", value_parser = parse_dependency)]
    pub depends_on: Vec<crate::model::Dependency>,
    /// With several `--depends-on`: the first satisfied one starts the run (default: all must
    /// be).
    #[arg(long)]
    pub any_of: bool,
    /// Drop the job's upstreams.
    #[arg(long, conflicts_with_all = ["depends_on", "any_of"])]
    pub no_depends_on: bool,
    /// Cap on what the job's runs that ended in the last 24 hours may cost, USD (docs/budgets.md).
    #[arg(long, value_name = "USD")]
    pub budget_daily_usd: Option<f64>,
    /// Cap on what the job's runs that ended in the last 30 days may cost, USD.
    #[arg(long, value_name = "USD")]
    pub budget_monthly_usd: Option<f64>,
    /// When a cap is reached, stop the job's runs going too (`true`/`false`).
    #[arg(long, value_name = "BOOL")]
    pub budget_hard_stop: Option<bool>,
    /// Drop the job's budget.
    #[arg(long, conflicts_with_all = ["budget_daily_usd", "budget_monthly_usd", "budget_hard_stop"])]
    pub no_budget: bool,
}

/// `NAME` or `NAME:on`.
fn parse_dependency(s: &str) -> Result<crate::model::Dependency, String> {
    let (job, on) = match s.rsplit_once(':') {
        Some((j, on)) if matches!(on, "success" | "failure" | "completed" | "always") => {
            (j, parse_snake::<crate::model::DependOn>(on)?)
        }
        _ => (s, crate::model::DependOn::Success),
    };
    if job.trim().is_empty() {
        return Err(format!(
            "`{s}`: give a job name (NAME or NAME:success|failure|completed|always)"
        ));
    }
    Ok(crate::model::Dependency {
        job: job.trim().to_owned(),
        on,
        when: None,
    })
}

/// A snake_case enum value as the manifest writes it (`exponential_backoff`).
fn parse_snake<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_owned()))
        .map_err(|e| format!("`{s}`: {e}"))
}

impl JobFlags {
    /// Applies the given flags to `spec` (unspecified ones leave it as it is).
    pub fn apply(&self, spec: &mut JobSpec) -> anyhow::Result<()> {
        if self.no_budget {
            spec.budget = None;
        } else if self.budget_daily_usd.is_some()
            || self.budget_monthly_usd.is_some()
            || self.budget_hard_stop.is_some()
        {
            let b = spec.budget.get_or_insert_with(Default::default);
            if let Some(v) = self.budget_daily_usd {
                b.daily_usd = Some(v);
            }
            if let Some(v) = self.budget_monthly_usd {
                b.monthly_usd = Some(v);
            }
            if let Some(v) = self.budget_hard_stop {
                b.hard_stop = v;
            }
        }
        if self.no_depends_on {
            spec.depends_on = Default::default();
        } else if !self.depends_on.is_empty() {
            spec.depends_on = crate::model::DependsOn {
                any: self.any_of,
                edges: self.depends_on.clone(),
            };
        } else if self.any_of {
            spec.depends_on.any = true;
        }
        if let Some(id) = &self.prompt_id {
            spec.prompt_id = Some(id.clone());
            spec.prompt = None;
        }
        if let Some(p) = &self.prompt {
            spec.prompt = Some(p.clone());
            spec.prompt_id = None;
        }
        if let Some(f) = &self.prompt_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read prompt file {}", f.display()))?;
            spec.prompt = Some(text);
            spec.prompt_id = None;
        }
        if let Some(expr) = &self.cron {
            let timezone = match &spec.schedule {
                ScheduleSpec::Cron { timezone, .. } => timezone.clone(),
                _ => None,
            };
            spec.schedule = ScheduleSpec::Cron {
                expression: expr.clone(),
                timezone,
                misfire: None,
            };
        }
        if let Some(every) = self.every {
            spec.schedule = ScheduleSpec::Interval {
                every: Some(every),
                every_seconds: None,
                start_at: None,
                misfire: None,
            };
        }
        if let Some(at) = self.at {
            spec.schedule = ScheduleSpec::Once { at };
        }
        if self.manual {
            spec.schedule = ScheduleSpec::Manual;
        }
        if let Some(tz) = &self.timezone {
            match &mut spec.schedule {
                ScheduleSpec::Cron { timezone, .. } => {
                    *timezone = Some(tz.clone()).filter(|t| !t.trim().is_empty())
                }
                _ => bail!("--timezone applies to cron schedules (give --cron)"),
            }
        }
        if let Some(p) = self.priority {
            spec.priority = p;
        }
        if !self.tags.is_empty() {
            spec.tags = self.tags.clone();
        }
        let e = &mut spec.execution;
        if let Some(t) = self.timeout {
            if t.as_secs() == 0 {
                bail!("--timeout must be at least 1s");
            }
            e.timeout_seconds = Some(t.as_secs());
        }
        if let Some(d) = &self.working_dir {
            e.working_directory = Some(d.clone());
        }
        if let Some(m) = &self.model {
            e.model = Some(m.clone());
        }
        if let Some(m) = &self.permission_mode {
            e.permission_mode = Some(m.clone());
        }
        if let Some(m) = self.max_turns {
            e.max_turns = Some(m);
        }
        for (k, v) in &self.env {
            e.environment.insert(k.clone(), v.clone());
        }
        if self.paused {
            spec.paused = true;
        }
        if self.no_retry {
            spec.retry = None;
        }
        if self.max_attempts.is_some()
            || self.retry_strategy.is_some()
            || self.retry_delay.is_some()
            || self.on_interrupt.is_some()
        {
            let r = spec.retry.get_or_insert_with(|| RetryConfig {
                max_attempts: 3,
                strategy: RetryStrategy::ExponentialBackoff,
                initial_interval: Some(60),
                max_interval: Some(3600),
                multiplier: Some(2.0),
                delays: Vec::new(),
                jitter: false,
                plugin: None,
                plugin_config: None,
                on_interrupt: None,
            });
            if let Some(n) = self.max_attempts {
                r.max_attempts = n;
            }
            if let Some(st) = self.retry_strategy {
                if st == RetryStrategy::Custom {
                    bail!("--retry-strategy custom needs a list of delays or a plugin: set it in a manifest");
                }
                r.strategy = st;
            }
            if let Some(d) = self.retry_delay {
                r.initial_interval = Some(d.as_secs());
                if r.max_interval.is_some_and(|m| m < d.as_secs()) {
                    r.max_interval = Some(d.as_secs());
                }
            }
            if let Some(o) = self.on_interrupt {
                r.on_interrupt = Some(o);
            }
        }
        Ok(())
    }
}

/// A new, empty definition named `name`.
pub fn blank_spec(name: &str) -> JobSpec {
    JobSpec {
        name: name.to_owned(),
        prompt_id: None,
        prompt: None,
        schedule: ScheduleSpec::Manual,
        priority: PRIORITY_DEFAULT,
        tags: Vec::new(),
        enabled: true,
        paused: false,
        execution: ExecutionOptions::default(),
        retry: None,
        notifications: None,
        resource_limits: None,
        depends_on: Default::default(),
        budget: None,
        conditions: Vec::new(),
        webhook: None,
        executor: None,
    }
}

/// The definition of a stored job, for editing it (`update`: GET, change, PUT).
pub use crate::service::spec_of;

/// The one job of a YAML file (the manifest format).
pub fn spec_from_file(path: &std::path::Path, tz: chrono_tz::Tz) -> anyhow::Result<JobSpec> {
    let mut jobs = crate::manifest::load_manifest(path, tz)?;
    match jobs.len() {
        1 => Ok(jobs.remove(0).0),
        0 => bail!("{}: defines no job", path.display()),
        n => bail!(
            "{}: defines {n} jobs; use `cnp job batch-create --file {}`",
            path.display(),
            path.display()
        ),
    }
}

/// Checks a definition before sending it, with the same rules the service applies.
pub fn check_spec(spec: &JobSpec, tz: chrono_tz::Tz) -> anyhow::Result<()> {
    spec.validate(tz)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{} (field: {})", e.message, e.field))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("`{s}`: {e} (e.g. `90s`, `10m`, `1h 30m`)"))
}

/// RFC 3339 (`2026-01-31T09:00:00+01:00`) or local `YYYY-MM-DD HH:MM[:SS]`.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t, f) {
            use chrono::TimeZone;
            return chrono::Local
                .from_local_datetime(&n)
                .earliest()
                .map(|d| d.with_timezone(&Utc))
                .ok_or_else(|| format!("`{s}` does not exist in the local time zone"));
        }
    }
    Err(format!(
        "`{s}` is not a time (e.g. `2026-01-31T09:00:00Z` or `2026-01-31 09:00`)"
    ))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

pub fn job_path(job: &str) -> String {
    format!("/api/jobs/{}", seg(job))
}

/// Runs a `cnp job …` command.
pub async fn run(client: &Client, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    let tz = client.timezone();
    match cmd {
        JobCommand::Create {
            name,
            flags,
            file,
            interactive,
            format,
        } => {
            let spec = if interactive {
                match super::interactive::create(client, name, &flags).await? {
                    Some(s) => s,
                    None => {
                        eprintln!("nothing created");
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            } else {
                let mut spec = match &file {
                    Some(f) => spec_from_file(f, tz)?,
                    None => blank_spec(name.as_deref().unwrap_or_default()),
                };
                if let (Some(n), Some(_)) = (&name, &file) {
                    spec.name = n.clone();
                }
                if spec.name.trim().is_empty() {
                    bail!(
                        "give the job a name: `cnp job create NAME …` (or --file / --interactive)"
                    );
                }
                flags.apply(&mut spec)?;
                check_spec(&spec, tz)?;
                spec
            };
            let job: Job = client.post("/api/jobs", &spec).await?;
            if !output::print_structured(format, &job)? {
                println!("created job `{}` ({})", job.name, job.id);
                if let Some(t) = job.next_run_time {
                    println!(
                        "next run: {} ({})",
                        output::local_time(Some(t)),
                        output::relative(t)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List {
            status,
            tag,
            limit,
            format,
        } => {
            let mut q = Vec::new();
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(t) = tag {
                q.push(("tag", t));
            }
            let jobs: Vec<Job> = client.list("/api/jobs", &q, limit).await?;
            if !output::print_structured(format, &jobs)? {
                if jobs.is_empty() {
                    println!("no jobs");
                } else {
                    output::print_table(&output::job_table(&jobs, tz));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Show { job, format } => {
            let job = client.job(&job).await?;
            if !output::print_structured(format, &job)? {
                output::print_table(&output::job_detail(&job, tz));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Update {
            job,
            name,
            flags,
            file,
            format,
        } => {
            let current = client.job(&job).await?;
            let mut spec = match &file {
                Some(f) => spec_from_file(f, tz)?,
                None => spec_of(&current),
            };
            if let Some(n) = name {
                spec.name = n;
            }
            flags.apply(&mut spec)?;
            check_spec(&spec, tz)?;
            let updated: Job = client.put(&job_path(&current.id), &spec).await?;
            if !output::print_structured(format, &updated)? {
                println!("updated job `{}` ({})", updated.name, updated.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Delete { job, yes } => {
            let current = client.job(&job).await?;
            if !yes
                && !super::confirm(&format!(
                    "Delete job `{}` ({}) and its run history?",
                    current.name, current.id
                ))?
            {
                eprintln!("not deleted");
                return Ok(ExitCode::from(super::EXIT_FAILURE));
            }
            client.delete(&job_path(&current.id)).await?;
            println!("deleted job `{}` ({})", current.name, current.id);
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Execute {
            job,
            delay,
            wait,
            raw,
            quiet,
        } => {
            let body = match delay {
                Some(d) => json!({ "delay_seconds": d.as_secs() }),
                None => json!({}),
            };
            let r: serde_json::Value = client
                .post(&format!("{}/execute", job_path(&job)), &body)
                .await?;
            let id = r
                .get("execution_id")
                .and_then(|v| v.as_str())
                .context("the API did not return an execution id")?
                .to_owned();
            if !wait {
                match delay {
                    Some(d) => println!(
                        "execution {id} of `{job}` starts in {}",
                        output::duration_ms(d.as_millis() as u64)
                    ),
                    None => println!("execution {id} of `{job}` queued"),
                }
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("execution {id} of `{job}` queued");
            let mode = if quiet {
                super::watch::LogMode::None
            } else if raw {
                super::watch::LogMode::Raw
            } else {
                super::watch::LogMode::Pretty
            };
            super::watch::wait(client, &id, mode).await
        }
        JobCommand::Pause { job } => {
            let j: Job = client
                .post(&format!("{}/pause", job_path(&job)), &json!({}))
                .await?;
            println!("job `{}` is {}", j.name, j.status.as_str());
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Resume { job } => {
            let j: Job = client
                .post(&format!("{}/resume", job_path(&job)), &json!({}))
                .await?;
            print!("job `{}` is {}", j.name, j.status.as_str());
            match j.next_run_time {
                Some(t) => println!(
                    "; next run {} ({})",
                    output::local_time(Some(t)),
                    output::relative(t)
                ),
                None => println!(),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::History {
            job,
            last,
            status,
            format,
        } => {
            let mut q = Vec::new();
            if let Some(s) = status {
                q.push(("status", s));
            }
            let execs: Vec<JobExecution> = client
                .list(&format!("{}/executions", job_path(&job)), &q, Some(last))
                .await?;
            if !output::print_structured(format, &execs)? {
                if execs.is_empty() {
                    println!("no runs yet");
                } else {
                    output::print_table(&output::execution_table(&execs));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Monitor {
            job,
            follow,
            raw,
            format,
        } => super::watch::monitor(client, &job, follow, raw, format).await,
        JobCommand::Cancel { execution } => {
            let r: serde_json::Value = client
                .post(
                    &format!("/api/executions/{}/cancel", seg(&execution)),
                    &json!({}),
                )
                .await?;
            if r.get("cancelled").and_then(|c| c.as_bool()) == Some(true) {
                println!("execution {execution} cancelled");
                Ok(ExitCode::SUCCESS)
            } else {
                let e = client.execution(&execution).await?;
                eprintln!(
                    "execution {execution} was not cancelled: it is already {}",
                    e.status.as_str()
                );
                Ok(ExitCode::from(super::EXIT_FAILURE))
            }
        }
        JobCommand::Logs {
            execution,
            follow,
            raw,
        } => super::watch::logs(client, &execution, follow, raw).await,
        JobCommand::Execution { execution, format } => {
            let e = client.execution(&execution).await?;
            if !output::print_structured(format, &e)? {
                output::print_table(&output::execution_detail(&e));
                // A daemon without the route (older) simply shows none.
                let d: Vec<crate::notify::Delivery> = client
                    .get::<super::client::Page<_>>(
                        &format!("/api/executions/{}/notifications", seg(&execution)),
                        &[],
                    )
                    .await
                    .map(|p| p.items)
                    .unwrap_or_default();
                if !d.is_empty() {
                    println!("\nNotifications:");
                    output::print_table(&output::delivery_table(&d));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Notifications {
            execution,
            last,
            format,
        } => {
            let page: super::client::Page<crate::notify::Delivery> = match &execution {
                Some(id) => {
                    client
                        .get(&format!("/api/executions/{}/notifications", seg(id)), &[])
                        .await?
                }
                None => {
                    client
                        .get(
                            "/api/notifications",
                            &[("limit", last.clamp(1, 1000).to_string())],
                        )
                        .await?
                }
            };
            if !output::print_structured(format, &page.items)? {
                if page.items.is_empty() {
                    println!("no notifications");
                } else {
                    output::print_table(&output::delivery_table(&page.items));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::BatchCreate { file } => super::batch::create(client, &file).await,
        JobCommand::BatchExecute { select } => super::batch::execute(client, &select).await,
        JobCommand::BatchPause { select } => super::batch::set_paused(client, &select, true).await,
        JobCommand::BatchResume { select } => {
            super::batch::set_paused(client, &select, false).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: JobFlags,
    }

    fn flags(args: &[&str]) -> JobFlags {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).unwrap().f
    }

    #[test]
    fn flags_build_a_spec() {
        let mut s = blank_spec("Daily Report");
        flags(&[
            "--prompt-id",
            "1",
            "--cron",
            "0 9 * * *",
            "--timezone",
            "Asia/Taipei",
            "--priority",
            "8",
            "--tag",
            "a",
            "--tag",
            "b",
            "--timeout",
            "30m",
            "--working-dir",
            "/tmp",
            "-e",
            "K=V=W",
        ])
        .apply(&mut s)
        .unwrap();
        assert_eq!(s.prompt_id.as_deref(), Some("1"));
        assert_eq!(
            s.schedule,
            ScheduleSpec::Cron {
                expression: "0 9 * * *".into(),
                timezone: Some("Asia/Taipei".into()),
                misfire: None
            }
        );
        assert_eq!(s.priority, 8);
        assert_eq!(s.tags, ["a", "b"]);
        assert_eq!(s.execution.timeout_seconds, Some(1800));
        assert_eq!(s.execution.environment["K"], "V=W");
        check_spec(&s, chrono_tz::UTC).unwrap();

        let mut s = blank_spec("x");
        flags(&["--prompt", "hi", "--every", "10m"])
            .apply(&mut s)
            .unwrap();
        let sched = s.schedule.to_schedule().unwrap();
        assert_eq!(
            sched,
            crate::model::Schedule::Interval {
                every_seconds: 600,
                start_at: None,
                misfire: None
            }
        );
    }

    #[test]
    fn conflicting_flags_are_usage_errors() {
        let mut v = vec!["t", "--cron", "* * * * *", "--every", "1m"];
        assert!(T::try_parse_from(&v).is_err());
        v = vec!["t", "--prompt", "a", "--prompt-id", "b"];
        assert!(T::try_parse_from(&v).is_err());
        assert!(T::try_parse_from(["t", "--priority", "11"]).is_err());
        let mut s = blank_spec("x");
        assert!(flags(&["--timezone", "UTC"]).apply(&mut s).is_err());
    }

    #[test]
    fn update_keeps_what_is_not_given() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": "j1", "name": "Daily", "prompt_id": "p", "prompt": null,
            "cron_expression": "0 9 * * *",
            "schedule": {"type": "cron", "expression": "0 9 * * *", "timezone": "Europe/Berlin"},
            "status": "paused", "job_type": "cron", "priority": 7,
            "execution_options": {"timeout_seconds": 60, "model": "opus"},
            "retry_config": {"max_attempts": 3, "strategy": "fixed", "initial_interval": 5},
            "notification_config": null,
            "resource_limits": null, "tags": ["x"], "source": null,
            "execution_count": 0, "failure_count": 0, "avg_execution_time_ms": 0.0,
            "success_rate": 0.0, "next_run_time": null, "last_run_time": null,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"
        }))
        .unwrap();
        let mut s = spec_of(&job);
        flags(&["--cron", "30 8 * * 1-5", "--priority", "2"])
            .apply(&mut s)
            .unwrap();
        assert_eq!(
            s.schedule,
            ScheduleSpec::Cron {
                expression: "30 8 * * 1-5".into(),
                timezone: Some("Europe/Berlin".into()),
                misfire: None
            }
        );
        assert_eq!(s.priority, 2);
        assert_eq!(s.prompt_id.as_deref(), Some("p"));
        assert_eq!(s.tags, ["x"]);
        assert!(s.paused && s.enabled);
        assert_eq!(s.execution.timeout_seconds, Some(60));
        assert_eq!(s.execution.model.as_deref(), Some("opus"));
        assert_eq!(s.retry.as_ref().unwrap().max_attempts, 3);
        // Switching to an inline prompt drops the prompt id.
        flags(&["--prompt", "inline"]).apply(&mut s).unwrap();
        assert_eq!(s.prompt_id, None);
        check_spec(&s, chrono_tz::UTC).unwrap();
    }

    #[test]
    fn instants_and_durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_instant("2026-01-31T09:00:00+01:00").unwrap(),
            "2026-01-31T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(parse_instant("2026-01-31 09:00").is_ok());
        assert!(parse_instant("tomorrow").is_err());
    }
}
