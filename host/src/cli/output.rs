//! How the CLI prints: `--format table|json|yaml`, human tables (local times, human durations),
//! and one-line summaries of jobs, executions and log lines.

use chrono::{DateTime, Local, Utc};
use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use crate::model::{ExecutionStatus, Job, JobExecution, Prompt, Schedule};
pub use crate::text::{duration_ms, first_line, pretty_log_line};

/// `--format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A human table (the default).
    #[default]
    Table,
    /// JSON, as the API returns it.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML; `false` for [`Format::Table`] (the caller draws its table).
pub fn print_structured<T: Serialize + ?Sized>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", serde_yaml_ng::to_string(value)?);
            Ok(true)
        }
    }
}

/// A table with the house style: no outer borders, header row, wraps to the terminal.
pub fn table<I: IntoIterator<Item = &'static str>>(headers: I) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers);
    t
}

/// A two-column "field: value" table for detail views.
pub fn detail_table(rows: Vec<(&str, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 1));
    }
    t
}

/// Prints a table without the padding comfy-table leaves at the ends of lines.
pub fn print_table(t: &Table) {
    for line in t.lines() {
        println!("{}", line.trim_end());
    }
}

/// A time in the local zone, `-` when absent.
pub fn local_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| {
        t.with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
    .unwrap_or_else(|| "-".into())
}

/// `in 5m 00s` / `3m 10s ago`, relative to now.
pub fn relative(t: DateTime<Utc>) -> String {
    let d = t - Utc::now();
    let ms = d.num_milliseconds();
    if ms >= 0 {
        format!("in {}", duration_ms(ms as u64))
    } else {
        format!("{} ago", duration_ms(ms.unsigned_abs()))
    }
}

/// A job's schedule in words.
pub fn schedule_text(s: &Schedule, tz: chrono_tz::Tz) -> String {
    crate::schedule::describe(s, tz)
}

pub fn job_table(jobs: &[Job], tz: chrono_tz::Tz) -> Table {
    let mut t = table([
        "ID", "NAME", "STATUS", "SCHEDULE", "NEXT RUN", "LAST RUN", "RUNS", "SUCCESS", "PRI",
        "TAGS",
    ]);
    for j in jobs {
        t.add_row(vec![
            j.id.clone(),
            j.name.clone(),
            j.status.as_str().to_owned(),
            schedule_text(&j.schedule, tz),
            local_time(j.next_run_time),
            local_time(j.last_run_time),
            j.execution_count.to_string(),
            success_text(j),
            j.priority.to_string(),
            j.tags.join(", "),
        ]);
    }
    t
}

fn success_text(j: &Job) -> String {
    if j.execution_count == 0 {
        "-".into()
    } else {
        format!("{:.0}%", j.success_rate * 100.0)
    }
}

pub fn job_detail(j: &Job, tz: chrono_tz::Tz) -> Table {
    let e = &j.execution_options;
    let mut rows = vec![
        ("ID", j.id.clone()),
        ("Name", j.name.clone()),
        ("Status", j.status.as_str().to_owned()),
        ("Schedule", schedule_text(&j.schedule, tz)),
    ];
    if let Some(c) = &j.cron_expression {
        rows.push(("Cron", c.clone()));
    }
    match (&j.prompt_id, &j.prompt) {
        (Some(id), _) => rows.push(("Prompt", format!("stored prompt `{id}`"))),
        (None, Some(p)) => rows.push(("Prompt", first_line(p, 100))),
        (None, None) => {}
    }
    rows.push(("Priority", j.priority.to_string()));
    if !j.tags.is_empty() {
        rows.push(("Tags", j.tags.join(", ")));
    }
    rows.push((
        "Defined by",
        j.source
            .clone()
            .map(|s| format!("manifest {s}"))
            .unwrap_or_else(|| "API/CLI".into()),
    ));
    rows.push((
        "Next run",
        match j.next_run_time {
            Some(t) => format!("{} ({})", local_time(Some(t)), relative(t)),
            None => "-".into(),
        },
    ));
    rows.push(("Last run", local_time(j.last_run_time)));
    rows.push((
        "Runs",
        format!(
            "{} ({} failed, success {}, avg {})",
            j.execution_count,
            j.failure_count,
            success_text(j),
            if j.execution_count == 0 {
                "-".into()
            } else {
                duration_ms(j.avg_execution_time_ms.max(0.0) as u64)
            }
        ),
    ));
    if let Some(t) = e.timeout_seconds {
        rows.push(("Timeout", duration_ms(t * 1000)));
    }
    if let Some(d) = &e.working_directory {
        rows.push(("Working dir", d.clone()));
    }
    if let Some(m) = &e.model {
        rows.push(("Model", m.clone()));
    }
    if let Some(m) = &e.permission_mode {
        rows.push(("Permissions", m.clone()));
    }
    if let Some(r) = &j.retry_config {
        rows.push((
            "Retry",
            format!("{:?}, up to {} attempt(s)", r.strategy, r.max_attempts).to_lowercase(),
        ));
    }
    rows.push(("Created", local_time(Some(j.created_at))));
    rows.push(("Updated", local_time(Some(j.updated_at))));
    detail_table(rows)
}

/// `completed`, `failed: <reason>` (the reason's first line, at most `max` characters).
pub fn execution_result(e: &JobExecution, max: usize) -> String {
    match &e.error {
        Some(err) if e.status != ExecutionStatus::Completed => {
            format!("{}: {}", e.status.as_str(), first_line(err, max))
        }
        _ => e.status.as_str().to_owned(),
    }
}

pub fn execution_table(execs: &[JobExecution]) -> Table {
    let mut t = table([
        "EXECUTION",
        "STATUS",
        "TRIGGER",
        "STARTED",
        "DURATION",
        "EXIT",
        "COST",
        "ERROR",
    ]);
    for e in execs {
        t.add_row(vec![
            e.id.clone(),
            e.status.as_str().to_owned(),
            if e.retry_count > 0 {
                format!("{} (retry {})", e.trigger.as_str(), e.retry_count)
            } else {
                e.trigger.as_str().to_owned()
            },
            local_time(e.started_at.or(e.scheduled_for).or(Some(e.queued_at))),
            e.execution_time_ms
                .map(duration_ms)
                .unwrap_or_else(|| "-".into()),
            e.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            e.cost_usd
                .map(|c| format!("${c:.4}"))
                .unwrap_or_else(|| "-".into()),
            e.error
                .as_deref()
                .map(|s| first_line(s, 60))
                .unwrap_or_default(),
        ]);
    }
    t
}

pub fn execution_detail(e: &JobExecution) -> Table {
    let mut rows = vec![
        ("Execution", e.id.clone()),
        ("Job", e.job_id.clone()),
        ("Status", e.status.as_str().to_owned()),
        ("Trigger", e.trigger.as_str().to_owned()),
        ("Queued", local_time(Some(e.queued_at))),
        ("Started", local_time(e.started_at)),
        ("Completed", local_time(e.completed_at)),
        (
            "Duration",
            e.execution_time_ms
                .map(duration_ms)
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    if e.retry_count > 0 {
        rows.push(("Retry", e.retry_count.to_string()));
    }
    if let Some(c) = e.exit_code {
        rows.push(("Exit code", c.to_string()));
    }
    if let Some(c) = e.cost_usd {
        rows.push(("Cost", format!("${c:.4}")));
    }
    if let Some(s) = &e.session_id {
        rows.push(("Session", s.clone()));
    }
    if let Some(r) = &e.resource_usage {
        rows.push((
            "Resources",
            format!(
                "cpu {} user + {} sys, peak {} MiB",
                duration_ms(r.user_cpu_ms),
                duration_ms(r.system_cpu_ms),
                r.peak_rss_kb / 1024
            ),
        ));
    }
    if let Some(err) = &e.error {
        rows.push(("Error", err.clone()));
    }
    if let Some(o) = &e.output {
        rows.push(("Output", o.clone()));
    }
    detail_table(rows)
}

/// Notification deliveries: when, event, channel, status, attempts, receipt or error.
pub fn delivery_table(d: &[crate::notify::Delivery]) -> Table {
    let mut t = table(["Time", "Event", "Channel", "Status", "Tries", "Detail"]);
    for x in d {
        t.add_row(vec![
            local_time(Some(x.created_at)),
            x.event.clone(),
            x.channel.clone(),
            x.status.clone(),
            x.attempts.to_string(),
            first_line(x.detail.as_deref().unwrap_or("-"), 80),
        ]);
    }
    t
}

pub fn prompt_table(prompts: &[Prompt]) -> Table {
    let mut t = table(["ID", "TITLE", "TAGS", "SIZE", "UPDATED"]);
    for p in prompts {
        t.add_row(vec![
            p.id.clone(),
            p.title.clone(),
            p.tags.join(", "),
            format!("{} chars", p.content.chars().count()),
            local_time(Some(p.updated_at)),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_jobs() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": "j1", "name": "Daily", "prompt_id": "p", "prompt": null,
            "cron_expression": "0 9 * * *",
            "schedule": {"type": "cron", "expression": "0 9 * * *"},
            "status": "active", "job_type": "cron", "priority": 5,
            "execution_options": {}, "retry_config": null, "notification_config": null,
            "resource_limits": null, "tags": ["a", "b"], "source": null,
            "execution_count": 4, "failure_count": 1, "avg_execution_time_ms": 1500.0,
            "success_rate": 0.75, "next_run_time": null, "last_run_time": null,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"
        }))
        .unwrap();
        let s = job_table(std::slice::from_ref(&job), chrono_tz::UTC).to_string();
        assert!(
            s.contains("Daily") && s.contains("75%") && s.contains("a, b"),
            "{s}"
        );
        let d = job_detail(&job, chrono_tz::UTC).to_string();
        assert!(
            d.contains("stored prompt `p`") && d.contains("avg 1.5s"),
            "{d}"
        );
    }
}
