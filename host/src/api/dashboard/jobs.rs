//! The jobs table (`/ui/`), bulk pause/resume, a job's page and its buttons.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{context, Value};

use super::{frame, render, see_other, view, FormData, PageError};
use crate::api::session::Session;
use crate::api::ApiState;
use crate::model::{ExecutionStatus, Job, JobStatus};
use crate::schedule::{CompiledSchedule, CronCache};
use crate::store::{JobFilter, JobSort, RunChain};

/// Rows per page of the jobs table and of a job's runs.
const PER_PAGE: u32 = 50;
const RUNS_PER_PAGE: u32 = 25;
/// Runs a sparkline shows.
const SPARK_RUNS: u32 = 20;

#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    status: Option<String>,
    tag: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<u32>,
    done: Option<String>,
}

/// The one-line result of a button, from the `done` code a redirect carries (fixed texts only:
/// nothing a link could make the page say).
pub(super) fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "paused" => "Paused.",
        "resumed" => "Resumed.",
        "bulk-paused" => "The selected jobs are paused.",
        "bulk-resumed" => "The selected jobs are resumed.",
        "none-selected" => "No job was selected.",
        "created" => "Job created.",
        "updated" => "Job saved.",
        "deleted" => "Job deleted.",
        "queued" => "Run queued.",
        "cancelled" => "Cancel requested.",
        "cooldown-cleared" => "Cooldown cleared: deferred runs are released.",
        "no-cooldown" => "There was no cooldown.",
        "prompt-saved" => "Prompt saved.",
        "prompt-deleted" => "Prompt deleted.",
        _ => return None,
    })
}

fn sort_of(s: Option<&str>) -> (JobSort, &'static str) {
    match s {
        Some("next") => (JobSort::NextRun, "next"),
        Some("last") => (JobSort::LastRun, "last"),
        Some("priority") => (JobSort::Priority, "priority"),
        Some("success") => (JobSort::SuccessRate, "success"),
        _ => (JobSort::Name, "name"),
    }
}

/// The zone a job's times are shown in: its cron zone, else the service's default.
fn zone_of(job: &Job, default: Tz) -> Tz {
    match &job.schedule {
        crate::model::Schedule::Cron {
            timezone: Some(z), ..
        } => crate::schedule::parse_timezone(z).unwrap_or(default),
        _ => default,
    }
}

pub async fn list(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let engine = st.engine();
    let cooldown = engine.cooldown().is_some();
    let default_tz = engine.settings().default_timezone;
    let held_filter = q.status.as_deref() == Some("held");
    let status = match q.status.as_deref() {
        Some("held") => Some(JobStatus::Active),
        Some(s) => JobStatus::parse(s),
        None => None,
    };
    let (sort, sort_key) = sort_of(q.sort.as_deref());
    let descending = q.dir.as_deref() == Some("desc");
    let page = q.page.unwrap_or(1).max(1);
    let search =
        q.q.clone()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
    let tag = q.tag.clone().filter(|t| !t.is_empty());
    let filter = JobFilter {
        status,
        tag: tag.clone(),
        name_contains: search.clone(),
        sort,
        descending,
        limit: Some(PER_PAGE),
        offset: (page - 1) * PER_PAGE,
        ..Default::default()
    };
    let store = engine.store();
    let (jobs, total) = if held_filter && !cooldown {
        (Vec::new(), 0)
    } else {
        tokio::try_join!(store.list_jobs(filter.clone()), store.count_jobs(filter))?
    };
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let recent: HashMap<String, Vec<crate::store::RecentRun>> = store
        .recent_runs(ids, SPARK_RUNS)
        .await?
        .into_iter()
        .collect();
    let rows: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let tz = zone_of(j, default_tz);
            let runs = recent.get(&j.id).map(Vec::as_slice).unwrap_or_default();
            let last = runs.first();
            let mut durations: Vec<u64> = runs
                .iter()
                .filter(|r| r.status.is_terminal())
                .filter_map(|r| r.execution_time_ms)
                .collect();
            durations.reverse();
            let finished = j.execution_count > 0 && (j.success_rate > 0.0 || j.failure_count > 0);
            context! {
                id => j.id,
                name => j.name,
                schedule => crate::schedule::describe(&j.schedule, default_tz),
                next => j.next_run_time.filter(|_| j.status == JobStatus::Active).map(|t| view::time(t, tz)),
                status => view::job_status(j.status, cooldown),
                last => last.map(|r| context! {
                    id => r.id, status => view::exec_status(r.status),
                    at => view::time(r.queued_at, tz),
                }),
                success => finished.then(|| format!("{:.0}%", j.success_rate * 100.0)),
                spark => view::sparkline(&durations),
                spark_title => durations.iter().map(|d| view::duration_ms(*d)).collect::<Vec<_>>().join(", "),
                tags => j.tags,
                priority => j.priority,
                source => j.source,
            }
        })
        .collect();
    let pages = total.div_ceil(PER_PAGE as u64).max(1);
    // The query string without `page`, to build the pager's and the headers' links.
    let base = |sort: &str, desc: bool| -> String {
        let mut parts = Vec::new();
        if let Some(v) = &search {
            parts.push(format!("q={}", view::url_encode(v)));
        }
        if let Some(v) = q.status.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("status={}", view::url_encode(v)));
        }
        if let Some(v) = &tag {
            parts.push(format!("tag={}", view::url_encode(v)));
        }
        parts.push(format!("sort={sort}"));
        if desc {
            parts.push("dir=desc".into());
        }
        parts.join("&")
    };
    let sort_links: Vec<(String, String)> = ["name", "next", "last", "priority", "success"]
        .iter()
        .map(|k| {
            let desc = *k == sort_key && !descending;
            ((*k).to_owned(), format!("/ui/?{}", base(k, desc)))
        })
        .collect();
    let sort_links: HashMap<String, String> = sort_links.into_iter().collect();
    render(
        "jobs.html",
        frame(&st, &s, "jobs"),
        context! {
            rows, total, page_no => page, pages,
            prev => (page > 1).then(|| format!("/ui/?{}&page={}", base(sort_key, descending), page - 1)),
            next => (u64::from(page) < pages).then(|| format!("/ui/?{}&page={}", base(sort_key, descending), page + 1)),
            sort => sort_key, desc => descending, sort_links,
            q => search, status => q.status, tag,
            cooldown,
            notice => notice(q.done.as_deref()),
            zone => default_tz.name(),
        },
    )
}

pub async fn bulk(State(st): State<ApiState>, form: FormData) -> Result<Response, PageError> {
    let ids: Vec<String> = form.all("job").map(str::to_owned).collect();
    if ids.is_empty() {
        return Ok(see_other("/ui/?done=none-selected"));
    }
    let pause = match form.get("action") {
        Some("pause") => true,
        Some("resume") => false,
        other => {
            return Err(PageError::BadRequest(format!(
                "unknown bulk action `{}`",
                other.unwrap_or_default()
            )))
        }
    };
    let engine = st.engine();
    let mut failed = Vec::new();
    for id in &ids {
        let r = if pause {
            engine.pause_job(id).await
        } else {
            engine.resume_job(id).await
        };
        if let Err(e) = r {
            failed.push(format!("{id}: {e}"));
        }
    }
    if !failed.is_empty() {
        return Err(PageError::BadRequest(format!(
            "{} of {} jobs were not changed: {}",
            failed.len(),
            ids.len(),
            failed.join("; ")
        )));
    }
    Ok(see_other(if pause {
        "/ui/?done=bulk-paused"
    } else {
        "/ui/?done=bulk-resumed"
    }))
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct DetailQuery {
    status: Option<String>,
    page: Option<u32>,
    done: Option<String>,
}

/// The next `n` fire times after now, by the engine's own schedule code.
pub(super) fn next_fires(
    schedule: &crate::model::Schedule,
    default_tz: Tz,
    anchor: DateTime<Utc>,
    now: DateTime<Utc>,
    n: usize,
) -> Result<Vec<DateTime<Utc>>, String> {
    let compiled = CompiledSchedule::compile(schedule, default_tz, anchor, &CronCache::new())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    let mut after = now;
    while out.len() < n {
        match compiled.next_after(after) {
            Some(t) => {
                out.push(t);
                after = t;
            }
            None => break,
        }
    }
    Ok(out)
}

fn run_row(chain: &RunChain, tz: Tz) -> Option<Value> {
    let first = chain.attempts.first()?;
    let last = chain.attempts.last()?;
    let cost: f64 = chain.attempts.iter().filter_map(|a| a.cost_usd).sum();
    let has_cost = chain.attempts.iter().any(|a| a.cost_usd.is_some());
    Some(context! {
        id => first.id,
        latest => last.id,
        status => view::exec_status(last.status),
        trigger => first.trigger.as_str(),
        queued => view::time(first.queued_at, tz),
        attempts => chain.attempts.len(),
        attempt_links => chain.attempts.iter().enumerate().map(|(i, a)| context! {
            n => i + 1, id => a.id, status => view::exec_status(a.status),
        }).collect::<Vec<_>>(),
        duration => last.execution_time_ms.map(view::duration_ms),
        cost => has_cost.then(|| view::usd(cost)),
        error => last.error.as_deref().map(|e| crate::text::first_line(e, 160)),
    })
}

pub async fn detail(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Response, PageError> {
    let engine = st.engine();
    let job = engine.job(&id).await?.redacted();
    let default_tz = engine.settings().default_timezone;
    let tz = zone_of(&job, default_tz);
    let now = Utc::now();
    let fires = next_fires(&job.schedule, default_tz, job.created_at, now, 5);
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(ExecutionStatus::parse);
    let page = q.page.unwrap_or(1).max(1);
    let (chains, total) = engine
        .store()
        .job_runs(
            job.id.clone(),
            status,
            RUNS_PER_PAGE,
            (page - 1) * RUNS_PER_PAGE,
        )
        .await?;
    let runs: Vec<Value> = chains.iter().filter_map(|c| run_row(c, tz)).collect();
    let pages = total.div_ceil(RUNS_PER_PAGE as u64).max(1);
    let status_q = status
        .map(|s| format!("status={}&", s.as_str()))
        .unwrap_or_default();
    let spec = crate::service::spec_of(&job);
    let yaml = serde_json::to_value(&spec)
        .map(view::without_nulls)
        .ok()
        .and_then(|v| serde_yaml_ng::to_string(&v).ok())
        .unwrap_or_default();
    let cooldown = engine.cooldown().is_some();
    let budget = engine
        .budget_status()
        .await
        .jobs
        .iter()
        .find(|b| b.job_id.as_deref() == Some(job.id.as_str()))
        .map(view::budget_scope);
    // Its place in workflows: the jobs it depends on, the jobs that depend on it, its passes.
    let store = engine.store();
    let mut upstreams = Vec::with_capacity(job.depends_on.edges.len());
    for d in &job.depends_on.edges {
        let found = store.job_id_and_name(d.job.clone()).await?;
        upstreams.push(context! {
            job => d.job,
            id => found.as_ref().map(|(i, _)| i.clone()),
            name => found.map(|(_, n)| n),
            on => d.on.as_str(),
            when => d.when,
        });
    }
    let downstream: Vec<Value> = store
        .job_dependencies()
        .await?
        .into_iter()
        .flat_map(|j| {
            let (jid, jname) = (j.id.clone(), j.name.clone());
            j.depends_on
                .edges
                .into_iter()
                .zip(j.resolved)
                .filter(|(_, r)| r.as_deref() == Some(job.id.as_str()))
                .map(move |(d, _)| {
                    context! { id => jid.clone(), name => jname.clone(), on => d.on.as_str(), when => d.when }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let (passes, pass_total) = tokio::try_join!(
        store.list_workflow_runs(Some(job.id.clone()), 5, 0),
        store.count_workflow_runs(Some(job.id.clone())),
    )?;
    let passes: Vec<Value> = passes
        .iter()
        .map(|w| {
            context! {
                id => w.id,
                root_job_name => w.root_job_name,
                started => view::time(w.created_at, tz),
                cancelled => w.cancelled_at.is_some(),
            }
        })
        .collect();
    render(
        "job.html",
        frame(&st, &s, "jobs"),
        context! {
            job => context! {
                id => job.id, name => job.name,
                status => view::job_status(job.status, cooldown),
                paused => job.status == JobStatus::Paused,
                active => job.status == JobStatus::Active,
                schedule => crate::schedule::describe(&job.schedule, default_tz),
                zone => tz.name(),
                priority => job.priority,
                tags => job.tags,
                source => job.source,
                prompt_id => job.prompt_id,
                prompt => job.prompt,
                runs => job.execution_count,
                failures => job.failure_count,
                success => (job.execution_count > 0).then(|| format!("{:.0}%", job.success_rate * 100.0)),
                avg => (job.avg_execution_time_ms > 0.0).then(|| view::duration_ms(job.avg_execution_time_ms as u64)),
                last_run => job.last_run_time.map(|t| view::time(t, tz)),
                created => view::time(job.created_at, tz),
                updated => view::time(job.updated_at, tz),
            },
            yaml, budget,
            upstreams, any_of => job.depends_on.any, downstream, passes, pass_total,
            fires => fires.as_ref().map(|v| v.iter().map(|t| view::time(*t, tz)).collect::<Vec<_>>()).unwrap_or_default(),
            fires_error => fires.err(),
            runs, total, page_no => page, pages,
            filter => status.map(|s| s.as_str()),
            statuses => ["queued", "deferred", "running", "completed", "failed", "timed_out", "cancelled", "interrupted", "skipped"],
            prev => (page > 1).then(|| format!("/ui/jobs/{}?{status_q}page={}", id, page - 1)),
            next => (u64::from(page) < pages).then(|| format!("/ui/jobs/{}?{status_q}page={}", id, page + 1)),
            notice => notice(q.done.as_deref()),
        },
    )
}

pub async fn run_now(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let exec = st.engine().run_now(&id).await?;
    Ok(see_other(&format!("/ui/runs/{exec}?done=queued")))
}

pub async fn pause(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let job = st.engine().pause_job(&id).await?;
    Ok(see_other(&format!("/ui/jobs/{}?done=paused", job.id)))
}

pub async fn resume(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let job = st.engine().resume_job(&id).await?;
    Ok(see_other(&format!("/ui/jobs/{}?done=resumed", job.id)))
}

pub async fn confirm_delete(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let job = st.engine().job(&id).await?;
    render(
        "confirm.html",
        frame(&st, &s, "jobs"),
        context! {
            title => format!("Delete {}?", job.name),
            detail => "The job and its whole run history are deleted; its running runs are cancelled. This cannot be undone.",
            action => format!("/ui/jobs/{}/delete", job.id),
            button => "Delete the job",
            back => format!("/ui/jobs/{}", job.id),
            source => job.source,
        },
    )
}

pub async fn delete(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let job = st.engine().job(&id).await?;
    if let Some(src) = &job.source {
        return Err(PageError::BadRequest(format!(
            "`{}` is defined by the manifest file {src}: delete or edit that file instead",
            job.name
        )));
    }
    st.engine().delete_job(&job.id).await?;
    Ok(see_other("/ui/?done=deleted"))
}
