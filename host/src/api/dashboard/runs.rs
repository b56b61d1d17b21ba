//! A run's page (`/ui/runs/{id}`): what it did, its attempts, its log (live while it goes).

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use minijinja::{context, Value};

use super::{frame, render, see_other, view, PageError};
use crate::api::session::Session;
use crate::api::ApiState;
use crate::model::{LogStream, RunStatus};

/// Stored lines a page shows at once (the rest: `cnp job logs`, or the API's pages).
const LOG_LINES: u32 = 5000;

#[derive(Debug, Default, serde::Deserialize)]
pub struct RunQuery {
    done: Option<String>,
}

fn stream_name(s: LogStream) -> &'static str {
    match s {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::System => "system",
    }
}

pub async fn detail(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<Response, PageError> {
    let engine = st.engine();
    let d = engine.execution_detail(&id).await?;
    let e = &d.execution;
    let job = engine.job(&e.job_id).await.ok();
    let default_tz = engine.settings().default_timezone;
    let tz = job
        .as_ref()
        .and_then(|j| match &j.schedule {
            crate::model::Schedule::Cron {
                timezone: Some(z), ..
            } => crate::schedule::parse_timezone(z).ok(),
            _ => None,
        })
        .unwrap_or(default_tz);
    let store = engine.store();
    let (lines, total_lines, deliveries) = tokio::try_join!(
        store.get_logs(e.id.clone(), None, LOG_LINES),
        store.count_logs(e.id.clone()),
        store.deliveries_of_execution(e.id.clone()),
    )?;
    let log: Vec<Value> = lines
        .iter()
        .filter_map(|l| {
            let stream = stream_name(l.stream);
            crate::text::pretty_log_line(stream, &l.line).map(|text| {
                context! { seq => l.seq, stream, text, at => l.timestamp.to_rfc3339() }
            })
        })
        .collect();
    let last_seq = lines.last().map(|l| l.seq as i64).unwrap_or(-1);
    let usage = e.usage.as_ref().map(|u| {
        let n = |k: &str| u.get(k).and_then(|v| v.as_u64());
        context! {
            input => n("input_tokens"),
            output => n("output_tokens"),
            cache_read => n("cache_read_input_tokens"),
            cache_write => n("cache_creation_input_tokens"),
        }
    });
    let ru = e.resource_usage.as_ref().map(|r| {
        context! {
            wall => view::duration_ms(r.wall_time_ms),
            user => view::duration_ms(r.user_cpu_ms),
            system => view::duration_ms(r.system_cpu_ms),
            rss => (r.peak_rss_kb > 0).then(|| format!("{:.1} MiB", r.peak_rss_kb as f64 / 1024.0)),
            limits => r.limits_enforcement,
        }
    });
    let going = !e.status.is_terminal();
    // The runs that started this one (trigger `dependency`), with their jobs' names.
    let mut upstreams: Vec<Value> = Vec::with_capacity(e.upstream_ids.len());
    for up in &e.upstream_ids {
        let x = store.get_execution(up.clone()).await?;
        let name = match &x {
            Some(x) => store
                .job_id_and_name(x.job_id.clone())
                .await?
                .map(|(_, n)| n),
            None => None,
        };
        upstreams.push(context! {
            id => up,
            job_id => x.as_ref().map(|x| x.job_id.clone()),
            job_name => name,
            status => x.as_ref().map(|x| view::exec_status(x.status)),
        });
    }
    render(
        "run.html",
        frame(&st, &s, "jobs"),
        context! {
            run => context! {
                id => e.id,
                status => view::exec_status(e.status),
                trigger => e.trigger.as_str(),
                going,
                workflow_run_id => e.workflow_run_id,
                upstreams,
                retry_pending => d.run_status == RunStatus::RetryPending,
                attempt => d.attempt, max_attempts => d.max_attempts,
                attempts => d.attempts.iter().map(|a| context! {
                    n => a.attempt, id => a.id, status => view::exec_status(a.status),
                    current => a.id == e.id,
                }).collect::<Vec<_>>(),
                next_attempt => d.next_attempt.as_ref().map(|n| context! {
                    id => n.id, n => n.attempt,
                    at => n.scheduled_for.map(|t| view::time(t, tz)),
                }),
                scheduled => e.scheduled_for.map(|t| view::time(t, tz)),
                queued => view::time(e.queued_at, tz),
                started => e.started_at.map(|t| view::time(t, tz)),
                completed => e.completed_at.map(|t| view::time(t, tz)),
                duration => e.execution_time_ms.map(view::duration_ms),
                exit_code => e.exit_code,
                session_id => e.session_id,
                cost => e.cost_usd.map(view::usd),
                usage,
                resources => ru,
                pid => e.pid,
                error => e.error,
                outcome => e.outcome.as_ref().and_then(|o| serde_json::to_string(o).ok()),
                prompt => e.prompt,
                result_html => e.output.as_deref().filter(|o| !o.trim().is_empty()).map(view::markdown),
            },
            job => job.as_ref().map(|j| context! { id => j.id, name => j.name }),
            log, last_seq, total_lines, shown_lines => lines.len(),
            deliveries => deliveries.iter().map(|x| context! {
                at => view::time(x.created_at, tz), event => x.event, channel => x.channel,
                status => x.status, attempts => x.attempts, detail => x.detail,
            }).collect::<Vec<_>>(),
            notice => super::jobs::notice(q.done.as_deref()),
        },
    )
}

pub async fn cancel(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    st.engine().cancel_execution(&id).await?;
    Ok(see_other(&format!("/ui/runs/{id}?done=cancelled")))
}
