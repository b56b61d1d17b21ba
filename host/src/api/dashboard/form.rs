//! The job form: create, edit, duplicate, and the live "next 5 runs" preview.
//!
//! Inputs are named by the definition's own field paths (`schedule.expression`,
//! `retry.max_attempts`), so an error from the validator — the same one the API and manifests
//! use — lands next to its input. Editing starts from the stored definition and changes only
//! what the form shows: settings the form has no input for (environment, allowed tools,
//! conditions, …) are kept.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use minijinja::{context, Value};

use super::{frame, render, see_other, view, FormData, PageError};
use crate::api::session::Session;
use crate::api::ApiState;
use crate::engine::EngineError;
use crate::manifest::{JobSpec, ScheduleSpec};
use crate::model::{Job, NotificationConfig, RetryConfig, RetryStrategy};

/// A field and what is wrong with it.
struct FieldError {
    field: String,
    message: String,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

const PERMISSION_MODES: &[&str] = &["default", "acceptEdits", "plan", "bypassPermissions"];

/// The form's values from a stored definition.
fn values_of_spec(spec: &JobSpec) -> Value {
    let (stype, expression, timezone, every, at) = match &spec.schedule {
        ScheduleSpec::Cron {
            expression,
            timezone,
            ..
        } => (
            "cron",
            Some(expression.clone()),
            timezone.clone(),
            None,
            None,
        ),
        ScheduleSpec::Interval {
            every,
            every_seconds,
            ..
        } => {
            let d = every.or(every_seconds.map(Duration::from_secs));
            (
                "interval",
                None,
                None,
                d.map(|d| humantime::format_duration(d).to_string()),
                None,
            )
        }
        ScheduleSpec::Once { at } => (
            "once",
            None,
            Some("UTC".to_owned()),
            None,
            Some(at.format("%Y-%m-%dT%H:%M").to_string()),
        ),
        ScheduleSpec::Manual => ("manual", None, None, None, None),
    };
    let retry = spec.retry.as_ref();
    let notify = spec.notifications.as_ref();
    let channels: Vec<String> = notify
        .map(|n| {
            n.channels
                .iter()
                .filter_map(|c| c.get("channel").and_then(|v| v.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut m: std::collections::BTreeMap<&str, Value> = std::collections::BTreeMap::new();
    let dur = |s: u64| humantime::format_duration(Duration::from_secs(s)).to_string();
    m.insert("name", Value::from(spec.name.clone()));
    m.insert(
        "prompt_source",
        Value::from(if spec.prompt_id.is_some() {
            "stored"
        } else {
            "text"
        }),
    );
    m.insert("prompt", Value::from(spec.prompt.clone()));
    m.insert("prompt_id", Value::from(spec.prompt_id.clone()));
    m.insert("schedule.type", Value::from(stype));
    m.insert("schedule.expression", Value::from(expression));
    m.insert("schedule.timezone", Value::from(timezone));
    m.insert("schedule.every", Value::from(every));
    m.insert("schedule.at", Value::from(at));
    m.insert("priority", Value::from(spec.priority));
    m.insert("tags", Value::from(spec.tags.join(", ")));
    m.insert(
        "execution.timeout",
        Value::from(spec.execution.timeout_seconds.map(dur)),
    );
    m.insert(
        "execution.working_directory",
        Value::from(spec.execution.working_directory.clone()),
    );
    m.insert("execution.model", Value::from(spec.execution.model.clone()));
    m.insert(
        "execution.permission_mode",
        Value::from(spec.execution.permission_mode.clone()),
    );
    m.insert(
        "retry.max_attempts",
        Value::from(retry.map(|r| r.max_attempts)),
    );
    m.insert(
        "retry.strategy",
        Value::from(retry.and_then(|r| {
            serde_json::to_value(r.strategy)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        })),
    );
    m.insert(
        "retry.delay",
        Value::from(retry.and_then(|r| r.initial_interval).map(dur)),
    );
    m.insert(
        "notifications.on_success",
        Value::from(notify.is_some_and(|n| n.on_success)),
    );
    m.insert(
        "notifications.on_failure",
        Value::from(notify.is_none_or(|n| n.on_failure)),
    );
    m.insert("notifications.channels", Value::from_serialize(&channels));
    m.insert("paused", Value::from(spec.paused));
    let budget = spec.budget.as_ref();
    m.insert(
        "budget.daily_usd",
        Value::from(budget.and_then(|b| b.daily_usd)),
    );
    m.insert(
        "budget.monthly_usd",
        Value::from(budget.and_then(|b| b.monthly_usd)),
    );
    m.insert(
        "budget.hard_stop",
        Value::from(budget.is_some_and(|b| b.hard_stop)),
    );
    m.insert(
        "depends_on",
        Value::from(if spec.depends_on.is_empty() {
            String::new()
        } else {
            serde_yaml_ng::to_string(&spec.depends_on).unwrap_or_default()
        }),
    );
    Value::from_serialize(&m)
}

/// What the user sent, to show again after an error.
fn values_of_form(form: &FormData) -> Value {
    let keys = [
        "name",
        "prompt_source",
        "prompt",
        "prompt_id",
        "schedule.type",
        "schedule.expression",
        "schedule.timezone",
        "schedule.every",
        "schedule.at",
        "priority",
        "tags",
        "execution.timeout",
        "execution.working_directory",
        "execution.model",
        "execution.permission_mode",
        "retry.max_attempts",
        "retry.strategy",
        "retry.delay",
        "budget.daily_usd",
        "budget.monthly_usd",
        "depends_on",
    ];
    let mut map: std::collections::BTreeMap<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), Value::from(form.raw(k))))
        .collect();
    for k in [
        "notifications.on_success",
        "notifications.on_failure",
        "paused",
        "budget.hard_stop",
    ] {
        map.insert(k.to_owned(), Value::from(form.checked(k)));
    }
    map.insert(
        "notifications.channels".into(),
        Value::from_serialize(form.all("notifications.channels").collect::<Vec<_>>()),
    );
    Value::from_serialize(&map)
}

fn parse_duration(form: &FormData, field: &str) -> Result<Option<Duration>, FieldError> {
    match form.get(field) {
        None => Ok(None),
        Some(t) => {
            if let Ok(n) = t.parse::<u64>() {
                return Ok(Some(Duration::from_secs(n)));
            }
            humantime::parse_duration(t).map(Some).map_err(|e| {
                bad(
                    field,
                    format!("`{t}` is not a duration like `30m` or `1h 30m`: {e}"),
                )
            })
        }
    }
}

/// A local date and time (`2026-12-24T08:00`) in `zone`, or an RFC 3339 instant.
fn parse_at(text: &str, zone: &str) -> Result<DateTime<Utc>, FieldError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let tz = crate::schedule::parse_timezone(zone)
        .map_err(|e| bad("schedule.timezone", e.to_string()))?;
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M"))
        .map_err(|_| {
            bad(
                "schedule.at",
                format!("`{text}` is not a date and time like 2026-12-24T08:00"),
            )
        })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            bad(
                "schedule.at",
                format!("{text} does not exist in {zone} (a daylight-saving gap)"),
            )
        })
}

/// The schedule part of the form.
fn schedule_of(form: &FormData, old: &ScheduleSpec) -> Result<ScheduleSpec, FieldError> {
    let zone = form.get("schedule.timezone");
    Ok(match form.get("schedule.type").unwrap_or("manual") {
        "cron" => ScheduleSpec::Cron {
            expression: form
                .get("schedule.expression")
                .ok_or_else(|| {
                    bad(
                        "schedule.expression",
                        "a cron job needs an expression, e.g. `0 9 * * 1-5`",
                    )
                })?
                .to_owned(),
            timezone: zone.map(str::to_owned),
            misfire: match old {
                ScheduleSpec::Cron { misfire, .. } => *misfire,
                _ => None,
            },
        },
        "interval" => ScheduleSpec::Interval {
            every: Some(parse_duration(form, "schedule.every")?.ok_or_else(|| {
                bad(
                    "schedule.every",
                    "an interval job needs `every`, e.g. `10m`",
                )
            })?),
            every_seconds: None,
            start_at: match old {
                ScheduleSpec::Interval { start_at, .. } => *start_at,
                _ => None,
            },
            misfire: match old {
                ScheduleSpec::Interval { misfire, .. } => *misfire,
                _ => None,
            },
        },
        "once" => ScheduleSpec::Once {
            at: parse_at(
                form.get("schedule.at")
                    .ok_or_else(|| bad("schedule.at", "a one-shot job needs a date and time"))?,
                zone.unwrap_or("UTC"),
            )?,
        },
        "manual" => ScheduleSpec::Manual,
        other => {
            return Err(bad(
                "schedule.type",
                format!("unknown schedule type `{other}`"),
            ))
        }
    })
}

/// The definition the form describes, on top of `base` (the stored one when editing).
fn spec_of_form(form: &FormData, mut spec: JobSpec) -> Result<JobSpec, FieldError> {
    spec.name = form.get("name").unwrap_or_default().to_owned();
    match form.get("prompt_source").unwrap_or("text") {
        "stored" => {
            spec.prompt_id = Some(
                form.get("prompt_id")
                    .ok_or_else(|| bad("prompt_id", "pick a stored prompt"))?
                    .to_owned(),
            );
            spec.prompt = None;
        }
        _ => {
            spec.prompt =
                Some(form.raw("prompt").replace("\r\n", "\n")).filter(|p| !p.trim().is_empty());
            spec.prompt_id = None;
        }
    }
    spec.schedule = schedule_of(form, &spec.schedule)?;
    spec.priority = match form.get("priority") {
        None => 5,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=10).contains(p))
            .ok_or_else(|| bad("priority", format!("`{p}`: a whole number 1–10")))?,
    };
    spec.tags = form
        .get("tags")
        .unwrap_or_default()
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let ex = &mut spec.execution;
    ex.timeout_seconds = parse_duration(form, "execution.timeout")?.map(|d| d.as_secs());
    ex.working_directory = form.get("execution.working_directory").map(str::to_owned);
    ex.model = form.get("execution.model").map(str::to_owned);
    ex.permission_mode = form
        .get("execution.permission_mode")
        .filter(|m| *m != "default")
        .map(str::to_owned);
    if let Some(m) = &ex.permission_mode {
        if !PERMISSION_MODES.contains(&m.as_str()) {
            return Err(bad(
                "execution.permission_mode",
                format!("unknown mode `{m}`"),
            ));
        }
    }
    spec.retry = match form.get("retry.max_attempts") {
        None => None,
        Some(n) => {
            let max_attempts =
                n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    bad("retry.max_attempts", format!("`{n}`: a whole number ≥ 1"))
                })?;
            let strategy: RetryStrategy = match form.get("retry.strategy") {
                None => RetryStrategy::ExponentialBackoff,
                Some(s) => serde_json::from_value(serde_json::Value::String(s.to_owned()))
                    .map_err(|_| bad("retry.strategy", format!("unknown strategy `{s}`")))?,
            };
            let mut r = spec.retry.take().unwrap_or(RetryConfig {
                max_attempts,
                strategy,
                initial_interval: None,
                max_interval: None,
                multiplier: None,
                delays: Vec::new(),
                jitter: false,
                plugin: None,
                plugin_config: None,
                on_interrupt: None,
            });
            r.max_attempts = max_attempts;
            r.strategy = strategy;
            r.initial_interval = parse_duration(form, "retry.delay")?.map(|d| d.as_secs());
            Some(r)
        }
    };
    let channels: Vec<serde_json::Value> = form
        .all("notifications.channels")
        .filter(|c| !c.is_empty())
        .map(|c| serde_json::json!({ "channel": c }))
        .collect();
    let mut n = spec.notifications.take().unwrap_or(NotificationConfig {
        on_success: false,
        on_failure: true,
        on_start: false,
        on_completion: false,
        channels: Vec::new(),
    });
    n.on_success = form.checked("notifications.on_success");
    n.on_failure = form.checked("notifications.on_failure");
    // Inline channels (only a manifest or the API makes them) are kept; named ones are the
    // boxes ticked.
    n.channels.retain(|c| c.get("channel").is_none());
    n.channels.extend(channels);
    spec.notifications = Some(n);
    spec.paused = form.checked("paused");
    // The budget: caps in USD; both empty is none.
    let cap = |field: &str| -> Result<Option<f64>, _> {
        match form.get(field) {
            None => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(Some)
                .ok_or_else(|| bad(field, format!("`{v}`: a number of USD ≥ 0"))),
        }
    };
    let (daily, monthly) = (cap("budget.daily_usd")?, cap("budget.monthly_usd")?);
    spec.budget = (daily.is_some() || monthly.is_some()).then(|| crate::model::Budget {
        daily_usd: daily,
        monthly_usd: monthly,
        hard_stop: form.checked("budget.hard_stop"),
    });
    // `depends_on` as YAML (or JSON): the same shapes as in a manifest; blank is none.
    let deps = form.raw("depends_on");
    spec.depends_on = if deps.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml_ng::from_str(deps).map_err(|e| bad("depends_on", e.to_string()))?
    };
    Ok(spec)
}

/// The error of a create/update as a field and its message.
fn field_error(e: EngineError) -> Result<FieldError, PageError> {
    match e {
        // `depends_on[1].job` and the like are shown at the one depends_on box, named.
        EngineError::Invalid(s) if s.field.starts_with("depends_on") && s.field != "depends_on" => {
            Ok(bad("depends_on", format!("{}: {}", s.field, s.message)))
        }
        EngineError::Invalid(s) => Ok(bad(&s.field, s.message)),
        EngineError::Conflict(m) => Ok(bad("name", m)),
        EngineError::NotFound { what: "prompt", id } => {
            Ok(bad("prompt_id", format!("no stored prompt `{id}`")))
        }
        e => Err(e.into()),
    }
}

async fn form_page(
    st: &ApiState,
    s: &Session,
    title: &str,
    action: &str,
    values: Value,
    editing: Option<&Job>,
    error: Option<FieldError>,
) -> Result<Response, PageError> {
    let prompts = st.engine().store().list_prompts().await?;
    let settings = st.engine().notifications().settings();
    let failed = error.is_some();
    let mut resp = render(
        "job_form.html",
        frame(st, s, "jobs"),
        context! {
            title, action, values,
            editing => editing.map(|j| context! { id => j.id, name => j.name, source => j.source }),
            error_field => error.as_ref().map(|e| e.field.clone()),
            error => error.map(|e| e.message),
            prompts => prompts.iter().map(|p| context! { id => p.id, title => p.title }).collect::<Vec<_>>(),
            channels => settings.channels.keys().collect::<Vec<_>>(),
            modes => PERMISSION_MODES,
            zones => chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect::<Vec<_>>(),
            default_zone => st.engine().settings().default_timezone.name(),
        },
    )?;
    if failed {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

fn blank_spec() -> JobSpec {
    serde_json::from_value(serde_json::json!({ "name": "" })).expect("a blank job spec")
}

pub async fn new_job(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
) -> Result<Response, PageError> {
    let values = values_of_spec(&blank_spec());
    form_page(&st, &s, "New job", "/ui/jobs/new", values, None, None).await
}

pub async fn duplicate_job(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let job = st.engine().job(&id).await?;
    let mut spec = crate::service::spec_of(&job);
    spec.name = format!("{} (copy)", job.name);
    spec.paused = true;
    let values = values_of_spec(&spec);
    form_page(
        &st,
        &s,
        "New job (a copy)",
        "/ui/jobs/new",
        values,
        None,
        None,
    )
    .await
}

pub async fn create_job(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    form: FormData,
) -> Result<Response, PageError> {
    let error = match spec_of_form(&form, blank_spec()) {
        Ok(spec) => match st.engine().create_job(spec, None).await {
            Ok(job) => return Ok(see_other(&format!("/ui/jobs/{}?done=created", job.id))),
            Err(e) => field_error(e)?,
        },
        Err(e) => e,
    };
    let values = values_of_form(&form);
    form_page(
        &st,
        &s,
        "New job",
        "/ui/jobs/new",
        values,
        None,
        Some(error),
    )
    .await
}

pub async fn edit_job(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let job = st.engine().job(&id).await?.redacted();
    let values = values_of_spec(&crate::service::spec_of(&job));
    let action = format!("/ui/jobs/{}/edit", job.id);
    form_page(
        &st,
        &s,
        &format!("Edit {}", job.name),
        &action,
        values,
        Some(&job),
        None,
    )
    .await
}

pub async fn update_job(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    form: FormData,
) -> Result<Response, PageError> {
    let job = st.engine().job(&id).await?;
    if let Some(src) = &job.source {
        return Err(PageError::BadRequest(format!(
            "`{}` is defined by the manifest file {src}: edit that file (cnp reloads it)",
            job.name
        )));
    }
    // The stored definition: secrets the page never showed stay as they are.
    let base = crate::service::spec_of(&job);
    let error = match spec_of_form(&form, base) {
        Ok(spec) => match st.engine().update_job(&job.id, spec, None).await {
            Ok(job) => return Ok(see_other(&format!("/ui/jobs/{}?done=updated", job.id))),
            Err(e) => field_error(e)?,
        },
        Err(e) => e,
    };
    let values = values_of_form(&form);
    let action = format!("/ui/jobs/{}/edit", job.id);
    form_page(
        &st,
        &s,
        &format!("Edit {}", job.name),
        &action,
        values,
        Some(&job),
        Some(error),
    )
    .await
}

/// `POST /ui/preview`: the schedule fields of the form → its description and next 5 fire
/// times (or the error, with its field).
pub async fn preview(State(st): State<ApiState>, form: FormData) -> Response {
    let default_tz = st.engine().settings().default_timezone;
    let result = schedule_of(&form, &ScheduleSpec::Manual)
        .and_then(|spec| spec.to_schedule().map_err(|e| bad(&e.field, e.message)));
    let schedule = match result {
        Ok(s) => s,
        Err(e) => {
            return Json(serde_json::json!({ "error": e.message, "field": e.field }))
                .into_response()
        }
    };
    if let Err(e) = crate::schedule::validate(&schedule, default_tz) {
        return Json(serde_json::json!({ "error": e.to_string(), "field": "schedule" }))
            .into_response();
    }
    let tz = match &schedule {
        crate::model::Schedule::Cron {
            timezone: Some(z), ..
        } => crate::schedule::parse_timezone(z).unwrap_or(default_tz),
        _ => default_tz,
    };
    let now = Utc::now();
    match super::jobs::next_fires(&schedule, default_tz, now, now, 5) {
        Ok(fires) => Json(serde_json::json!({
            "description": crate::schedule::describe(&schedule, default_tz),
            "next": fires.iter().map(|t| serde_json::json!({
                "iso": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "text": view::in_zone(*t, tz),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => Json(serde_json::json!({ "error": e, "field": "schedule" })).into_response(),
    }
}
